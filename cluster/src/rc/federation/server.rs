//! The answering side: authenticating a remote RC's request, placing the session locally inside
//! the zones both treaties allow, and the signed answer; plus the local API's fallback
//! ([`route_refused`]) that routes a refused placement out over the canopy.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use opengrid_canopy::Refusal;
use opengrid_session::{jurisdiction, Manifest, SessionId};
use serde_json::{json, Value};

use crate::common::http::ApiError;
use crate::common::identity::NodeId;
use crate::rc::admission::Rejection;
use crate::rc::{PlaceError, RcCore};

use super::*;

impl Federation {
    /// Authenticates a received request: well-formed, signer in the peering table, signature,
    /// recipient, freshness, never seen.
    pub fn authenticate(&self, body: &[u8]) -> Result<AdmissionRequest, AuthError> {
        if body.len() > MAX_FEDERATION_BYTES {
            return Err(AuthError::Malformed(format!(
                "{} bytes; the limit is {MAX_FEDERATION_BYTES}",
                body.len()
            )));
        }
        let signed: Signed =
            serde_json::from_slice(body).map_err(|e| AuthError::Malformed(e.to_string()))?;
        let req: AdmissionRequest = serde_json::from_str(&signed.payload)
            .map_err(|e| AuthError::Malformed(format!("payload: {e}")))?;
        if req.request_id.is_empty() || req.request_id.len() > 64 {
            return Err(AuthError::Malformed(
                "request_id must be 1 to 64 bytes".into(),
            ));
        }
        let known = self
            .canopy
            .peering_table()
            .into_iter()
            .any(|e| e.summary.rc_did == req.from_rc);
        if !known {
            return Err(AuthError::UnknownRc(req.from_rc));
        }
        if !signed.verify(REQUEST_DOMAIN, &req.from_rc) {
            return Err(AuthError::BadSignature(req.from_rc));
        }
        if req.to_rc != self.did {
            return Err(AuthError::WrongRecipient(req.to_rc));
        }
        let now = now_ms();
        let skew = self.request_max_skew.as_millis() as u64;
        if req.issued_at_ms.saturating_add(skew) < now
            || req.issued_at_ms > now.saturating_add(skew)
        {
            return Err(AuthError::Stale {
                issued_at_ms: req.issued_at_ms,
                now_ms: now,
            });
        }
        let until = req.issued_at_ms.saturating_add(skew);
        let id = format!("{}/{}", req.from_rc, req.request_id);
        lock(&self.replay).insert(&id, now, until)?;
        Ok(req)
    }

    fn answer(&self, request_id: &str, outcome: Outcome) -> Signed {
        let a = AdmissionAnswer {
            request_id: request_id.to_string(),
            rc: self.did.clone(),
            colony: self.colony.clone(),
            outcome,
        };
        Signed::sign(ANSWER_DOMAIN, &a, &self.key)
    }

    /// The zones of `req` this RC may place the session in: each must be known, allowed by the
    /// manifest, and allowed by this RC's own treaties for the request's origin and data class.
    fn admissible_zones(
        &self,
        req: &AdmissionRequest,
        m: &Manifest,
    ) -> Result<Vec<String>, Box<Outcome>> {
        let refuse = |code: &str, message: String| {
            Box::new(Outcome::Refused {
                code: code.into(),
                message,
            })
        };
        if req.zones.is_empty() || req.zones.len() > 64 {
            return Err(refuse(
                "bad_request",
                "zones must list 1 to 64 jurisdictions".into(),
            ));
        }
        if !is_data_class(&req.data_class) || !jurisdiction::is_known(&req.origin_zone) {
            return Err(refuse(
                "bad_request",
                "invalid data_class or origin_zone".into(),
            ));
        }
        let allowed = &m.placement.jurisdictions;
        let mut ok = Vec::new();
        let mut refusals: Vec<Refusal> = Vec::new();
        for z in &req.zones {
            if !jurisdiction::is_known(z)
                || (!allowed.is_empty() && !jurisdiction::satisfies(z, allowed))
            {
                return Err(refuse(
                    "bad_request",
                    format!("zone {z:?} is not allowed by the manifest ({allowed:?})"),
                ));
            }
            match self
                .treaties
                .may_route(&req.origin_zone, z, &req.data_class)
            {
                Ok(()) => ok.push(z.clone()),
                Err(r) => refusals.push(r),
            }
        }
        if ok.is_empty() {
            let text: Vec<String> = refusals.iter().map(|r| r.to_string()).collect();
            return Err(refuse("forbidden_by_treaty", text.join("; ")));
        }
        Ok(ok)
    }
}

/// `POST /federation/admission`: a remote RC asks this RC to place a session locally.
#[tracing::instrument(skip_all)]
pub async fn admission_handler(
    State(core): State<Arc<RcCore>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Signed>, ApiError> {
    let body = body?;
    let Some(fed) = core.federation().cloned() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "federation_disabled",
            "this RC runs no canopy ([canopy] enabled = false)",
        ));
    };
    let req = match fed.authenticate(&body) {
        Ok(r) => r,
        Err(e) => {
            inc(&fed.counters.inbound_rejected);
            match &e {
                AuthError::UnknownRc(_) => inc(&fed.counters.inbound_unknown_rc),
                AuthError::BadSignature(_) => inc(&fed.counters.inbound_bad_signature),
                AuthError::Replayed(_) | AuthError::Stale { .. } => {
                    inc(&fed.counters.inbound_replayed)
                }
                _ => {}
            }
            tracing::warn!(error = %e, "RC-to-RC admission request refused");
            return Err(ApiError::new(e.status(), e.code(), e.to_string()));
        }
    };
    inc(&fed.counters.inbound_accepted);
    let outcome = place_for_remote(&core, &fed, &req).await;
    if matches!(outcome, Outcome::Placed { .. }) {
        inc(&fed.counters.inbound_placed);
    }
    tracing::info!(from = %req.from_colony, request = %req.request_id, ?outcome, "remote admission answered");
    Ok(Json(fed.answer(&req.request_id, outcome)))
}

/// Imports the agent package `hash` (and its models and assets) from the asking colony's RC
/// through the authenticated federation (ADR 0031): fetched by hash from its `/blobs`, presenting
/// a token signed by this RC's key (the asking RC lets peers in its peering table read blobs),
/// verified, and registered here under the same checks as a push (this colony's
/// `agent_publishers`, compile check), marked as imported from that colony.
async fn import_agent(
    core: &RcCore,
    fed: &Federation,
    req: &AdmissionRequest,
    hash: &str,
) -> Result<(), String> {
    let reg = core
        .agents()
        .ok_or("this RC has no agent registry")?
        .clone();
    if reg.knows(hash) {
        return Ok(());
    }
    let api = fed
        .canopy
        .peering_table()
        .into_iter()
        .find(|e| e.summary.rc_did == req.from_rc)
        .map(|e| e.summary.rc_client_api)
        .ok_or_else(|| format!("{} is not in the peering table", req.from_rc))?;
    let token = crate::common::token::mint_operator(core.identity(), Duration::from_secs(300))
        .map_err(|e| e.to_string())?;
    let src = [crate::common::blobs::Source {
        url: api.clone(),
        token: Some(token),
        kind: "federation",
    }];
    let limits = reg.limits();
    let h = hash.to_string();
    let is_package = move |p: &std::path::Path| -> Result<(), String> {
        let bytes = std::fs::read(p).map_err(|e| e.to_string())?;
        opengrid_wasm::SignedPackage::from_bytes(&bytes, &limits)
            .and_then(|s| s.verify_with(Some(&h), &limits))
            .map(drop)
            .map_err(|e| e.to_string())
    };
    let blobs = reg.blobs();
    let path = blobs
        .fetch_verified(hash, &src, limits.max_package_bytes, &is_package)
        .await
        .map_err(|e| format!("package {hash} from colony {}: {e}", req.from_colony))?;
    let bytes = tokio::fs::read(&path).await.map_err(|e| e.to_string())?;
    let meta = opengrid_wasm::SignedPackage::from_bytes(&bytes, &limits)
        .and_then(|s| s.verify_with(Some(hash), &limits))
        .map_err(|e| e.to_string())?
        .meta()
        .clone();
    for b in meta.models.iter().chain(&meta.assets) {
        blobs
            .fetch(&b.hash, &src, crate::rc::agents::MAX_BLOB_BYTES)
            .await
            .map_err(|e| {
                format!(
                    "{:?} of package {hash} from colony {}: {e}",
                    b.name, req.from_colony
                )
            })?;
        blobs.pin(&b.hash);
    }
    let pushed = reg
        .push_from(bytes, Some(req.from_colony.clone()))
        .await
        .map_err(|e| e.to_string())?;
    // Registered (stored with the registry's packages): the fetched copy is not needed twice.
    blobs.remove(hash);
    tracing::info!(agent = %format!("{}@{}", pushed.name, pushed.version), %hash, from = %req.from_colony, "agent package imported through the federation");
    Ok(())
}

async fn place_for_remote(core: &RcCore, fed: &Federation, req: &AdmissionRequest) -> Outcome {
    let refuse = |code: &str, message: String| Outcome::Refused {
        code: code.into(),
        message,
    };
    let mut m = match Manifest::from_json_str(&req.manifest) {
        Ok(m) => m,
        Err(e) => return refuse("bad_manifest", e.to_string()),
    };
    let sid = match req.session_id.as_deref().map(SessionId::new).transpose() {
        Ok(s) => s,
        Err(e) => return refuse("bad_session_id", e.to_string()),
    };
    let zones = match fed.admissible_zones(req, &m) {
        Ok(z) => z,
        Err(o) => return *o,
    };
    // Narrowed, never widened: the local hard filter then keeps the session inside these zones.
    m.placement.jurisdictions = zones;
    // A pushed agent this colony does not have: imported from the asking colony first.
    if let Some(hash) = m.session.package.clone() {
        if let Err(e) = import_agent(core, fed, req, &hash).await {
            return refuse("agent_unavailable", e);
        }
    }
    // Charged to the asking colony's RC: its own clients' quotas are its business.
    match core
        .place(&m, sid, Some(format!("rc:{}", req.from_colony)))
        .await
    {
        Ok(p) => Outcome::Placed {
            session_id: p.session_id.to_string(),
            node: p.node.to_string(),
            node_name: p.node_name,
            address: p.address,
            epoch: p.epoch.0,
            capability: p.capability,
        },
        Err(PlaceError::Unsatisfiable { why }) => refuse(
            "unsatisfiable",
            if why.is_empty() {
                "no node has joined the colony".into()
            } else {
                why.iter()
                    .map(|(_, n, r)| format!("{n}: {r}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            },
        ),
        Err(e @ PlaceError::AlreadyPlaced { .. }) => refuse("already_placed", e.to_string()),
        Err(e @ PlaceError::Quota { .. }) => refuse("quota_exceeded", e.to_string()),
        Err(e @ PlaceError::Rejoining { .. }) => refuse("rejoining", e.to_string()),
        Err(e) => refuse("placement_failed", e.to_string()),
    }
}

/// The `POST /sessions` fallback when local admission refused `m` (`why`, per local node): route
/// it to another colony, or explain why not. A routed answer has the usual placement fields
/// (`session_id`, `node`, `node_name`, `address`, `epoch`) plus `colony`, `region`, `rc`,
/// `rc_api`, `zones`, `data_class` and `routed: true`.
pub async fn route_refused(
    core: &RcCore,
    m: &Manifest,
    sid: Option<&SessionId>,
    data_class: Option<&String>,
    why: &[(NodeId, String, Rejection)],
) -> Result<Response, ApiError> {
    let local: Vec<Value> = why
        .iter()
        .map(
            |(id, name, r)| json!({"node": id, "name": name, "reason": r.to_string(), "filter": r}),
        )
        .collect();
    let local_text = if why.is_empty() {
        "no node has joined the colony".to_string()
    } else {
        why.iter()
            .map(|(_, n, r)| format!("{n}: {r}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let Some(fed) = core.federation() else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unsatisfiable",
            format!("no node satisfies the manifest: {local_text}"),
        )
        .with("why", json!(local)));
    };
    let dc = fed
        .data_class(data_class.map(String::as_str))
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_data_class", e.to_string()))?;
    match fed.route(m, sid, &dc).await {
        Ok(p) => Ok((
            StatusCode::CREATED,
            Json(serde_json::to_value(p).unwrap_or(Value::Null)),
        )
            .into_response()),
        Err(RouteError::ForbiddenByTreaty { treaties, detail }) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_by_treaty",
            format!(
                "not served locally ({local_text}); routing it across is forbidden by treaty {}: {detail}",
                treaties.join(", ")
            ),
        )
        .with("treaties", json!(treaties))
        .with("data_class", json!(dc))
        .with("colonies", json!(detail.colonies))
        .with("why", json!(local))),
        Err(RouteError::NoCandidate(n)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unsatisfiable",
            format!("no node satisfies the manifest: {local_text}; {n}"),
        )
        .with("colonies", json!(n.colonies))
        .with("why", json!(local))),
        Err(e @ RouteError::AllFailed { .. }) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "remote_placement_failed",
            format!("not served locally ({local_text}); {e}"),
        )
        .with("retryable", json!(true))
        .with("why", json!(local))),
        Err(e @ RouteError::BadDataClass(_)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_data_class",
            e.to_string(),
        )),
    }
}

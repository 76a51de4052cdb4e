//! The RC's client API router: health, metrics, status, session placement, admission probes,
//! lookups and redirects, handover requests, and the federation endpoint.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use opengrid_actors::SessionError;
use serde_json::{json, Value};

use crate::common::access::{Bearer, ClientAddr};
use crate::common::http::{
    count_status, handover_body, not_found_route, parse_manifest, parse_sid, ApiError,
};
use crate::common::v1;
use crate::rc::admission::Decision;
use crate::rc::{DirState, PlaceError, RcCore};

/// The RC's router.
pub fn rc_router(core: Arc<RcCore>) -> Router {
    let limit = core.cfg.max_body.0.min(usize::MAX as u64) as usize;
    let metrics = core.metrics.clone();
    // The client API, at `/v1/…` (ADR 0035) and, for clients of earlier releases, unversioned.
    let api = Router::new()
        .route("/health", get(rc_health))
        .route("/metrics", get(rc_metrics))
        .route("/status", get(rc_status))
        .route("/sessions", post(rc_create))
        .route("/admission/probe", post(rc_probe))
        .route("/sessions/{id}", get(rc_lookup).delete(rc_redirect))
        .route("/sessions/{id}/inputs", post(rc_redirect))
        .route("/sessions/{id}/ws", get(rc_redirect))
        .route("/sessions/{id}/handover", post(rc_handover))
        .route("/group", get(rc_group))
        .route("/group/replicas", post(rc_group_add))
        .route(
            "/group/replicas/{id}",
            axum::routing::delete(rc_group_remove),
        );
    Router::new()
        .nest(v1::PREFIX, api.clone())
        .merge(api)
        .route("/v1/openapi.json", get(crate::openapi::openapi_json))
        .route(
            crate::rc::federation::ADMISSION_PATH,
            post(crate::rc::federation::admission_handler),
        )
        .merge(crate::rc::ui::routes())
        .fallback(|| async { not_found_route() })
        .layer(DefaultBodyLimit::max(limit))
        .merge(crate::rc::agents_api::routes(&core))
        .merge(crate::rc::gateway::routes(&core))
        .layer(axum::middleware::from_fn_with_state(
            core.clone(),
            to_the_leader,
        ))
        .layer(axum::middleware::from_fn_with_state(metrics, count_status))
        .with_state(core)
}

/// Routes a replica of an RC group answers itself, leader or not: its own health, metrics and
/// status (with its view of the group).
fn answered_by_any_replica(path: &str) -> bool {
    let p = path.strip_prefix(v1::PREFIX).unwrap_or(path);
    matches!(p, "/health" | "/metrics" | "/status" | "/openapi.json")
}

/// A replica of an RC group that does not act as the colony's RC (a follower, or a leader not
/// confirmed) sends clients to the leader: `307` to the same path and query there, or `503
/// no_leader` (retryable) while there is none it knows of (ADR 0037).
async fn to_the_leader(
    State(core): State<Arc<RcCore>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(group) = core.group() else {
        return next.run(req).await;
    };
    if core.acting() || answered_by_any_replica(req.uri().path()) {
        return next.run(req).await;
    }
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let leader = group.leader_api().filter(|api| *api != core.api());
    match leader {
        Some(api) => ApiError::new(
            StatusCode::TEMPORARY_REDIRECT,
            "not_leader",
            format!("this RC replica does not lead its group: the leader's API is {api}"),
        )
        .with("location", json!(api))
        .with("url", json!(format!("{api}{path_and_query}")))
        .into_response(),
        None => {
            let mut r = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_leader",
                "the RC group has no leader this replica knows of (an election is under way): retry",
            )
            .into_response();
            r.headers_mut().insert(
                header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
            r
        }
    }
}

/// `GET /v1/health`: whether the RC runs (no token needed).
#[utoipa::path(get, path = "/v1/health", tag = "meta",
    responses((status = 200, description = "The RC's (or, at a node, the node's) health", body = v1::Report)))]
#[tracing::instrument(skip_all)]
pub(crate) async fn rc_health(State(core): State<Arc<RcCore>>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "role": "rc",
        "rc": core.id(),
        "colony": core.cfg.colony,
        "members_alive": core.alive_members(),
        "settlement": core.settlement().map(|s| s.status()),
    }))
}

async fn rc_metrics(State(core): State<Arc<RcCore>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        core.metrics.render(),
    )
        .into_response()
}

async fn rc_status(
    State(core): State<Arc<RcCore>>,
    bearer: Bearer,
) -> Result<Json<Value>, ApiError> {
    core.access.operator(&bearer, "GET /status")?;
    let mut v = serde_json::to_value(core.status()).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        let canopy = core
            .federation()
            .map(|f| f.status_json())
            .unwrap_or_else(|| json!({"enabled": false}));
        m.insert("canopy".into(), canopy);
        if let Some(g) = core.group() {
            m.insert("group".into(), json!(g.view()));
        }
    }
    Ok(Json(v))
}

/// The RC group of this RC, or `404 no_group` for a single RC.
fn group_of(core: &RcCore) -> Result<&Arc<crate::rc::group::RcGroup>, ApiError> {
    core.group().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_group",
            "this RC runs alone (no [group] in its config)",
        )
    })
}

fn group_failed(e: crate::rc::group::GroupError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "group_change_failed",
        e.to_string(),
    )
    .with("retryable", json!(true))
}

/// `GET /v1/group` (operator): the RC group as the leader sees it.
async fn rc_group(
    State(core): State<Arc<RcCore>>,
    bearer: Bearer,
) -> Result<Json<Value>, ApiError> {
    core.access.operator(&bearer, "GET /group")?;
    Ok(Json(json!(group_of(&core)?.view())))
}

/// `POST /v1/group/replicas` (operator) `{"id": 4, "address": "host:port", "did": "did:mycel:…"}`:
/// adds a replica (started with `[group] id = 4`, `listen = address`, `peers = []`) as a learner,
/// then, once it has caught up, as a voter.
async fn rc_group_add(
    State(core): State<Arc<RcCore>>,
    bearer: Bearer,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    core.access.operator(&bearer, "POST /group/replicas")?;
    let group = group_of(&core)?;
    let Json(body) =
        body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    let bad = |what: &str| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", what.to_string());
    let id = body["id"]
        .as_u64()
        .filter(|i| *i > 0)
        .ok_or_else(|| bad("`id`: the new replica's Raft id, an integer from 1"))?;
    let address = body["address"]
        .as_str()
        .filter(|a| a.parse::<std::net::SocketAddr>().is_ok() || a.contains(':'))
        .ok_or_else(|| bad("`address`: the new replica's Raft address host:port"))?
        .to_string();
    let did = body["did"]
        .as_str()
        .and_then(|d| opengrid_session::Did::parse(d).ok())
        .ok_or_else(|| {
            bad("`did`: the new replica's did:mycel identity (`opengrid id --data-dir`)")
        })?;
    group
        .add_replica(id, address, did)
        .await
        .map_err(group_failed)?;
    tracing::info!(id, "RC group: replica added");
    // The nodes learn the new replica's control plane before it can lead them: once it has
    // announced its addresses (it does as soon as it is a member), bounded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !group.replica_addrs().contains_key(&id) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    core.send_group_addrs();
    Ok(Json(json!(group.view())))
}

/// `DELETE /v1/group/replicas/{id}` (operator): removes a replica from the group.
async fn rc_group_remove(
    State(core): State<Arc<RcCore>>,
    bearer: Bearer,
    Path(id): Path<u64>,
) -> Result<Json<Value>, ApiError> {
    core.access.operator(&bearer, "DELETE /group/replicas")?;
    let group = group_of(&core)?;
    group.remove_replica(id).await.map_err(group_failed)?;
    tracing::info!(id, "RC group: replica removed");
    Ok(Json(json!(group.view())))
}

/// `POST /v1/sessions` at the RC: place a new session (or, with `session_id` and its
/// capability, learn where a known one lives / have an orphan placed again).
#[utoipa::path(post, path = "/v1/sessions", tag = "sessions",
    params(("session_id" = Option<String>, Query, description = "A known session's id (needs its capability)")),
    request_body(content = v1::ManifestBody, description = "The manifest (JSON, or TOML with `Content-Type: application/toml`)"),
    responses(
        (status = 201, description = "Placed: where, and the session's capability", body = crate::rc::Placement),
        (status = 307, description = "At a follower of an RC group: `not_leader`; `location` is the leader's API base URL, `url` the same request there", body = v1::ErrorBody),
        (status = 400, description = "Not a manifest (`bad_manifest`, …)", body = v1::ErrorBody),
        (status = 401, description = "`session_id` of a known session without a token, or a bad one", body = v1::ErrorBody),
        (status = 403, description = "`session_id` of a known session with a token that does not open it", body = v1::ErrorBody),
        (status = 409, description = "`already_placed`", body = v1::ErrorBody),
        (status = 422, description = "`unsatisfiable` (with `why`) or `min_copies_unreachable`", body = v1::ErrorBody),
        (status = 429, description = "`quota_exceeded`", body = v1::ErrorBody),
        (status = 503, description = "`placement_failed` or `rejoining` (retryable); at a follower of an RC group `no_leader` (307 `not_leader` sends to the leader)", body = v1::ErrorBody),
    ))]
#[tracing::instrument(skip_all)]
pub(crate) async fn rc_create(
    State(core): State<Arc<RcCore>>,
    Query(q): Query<HashMap<String, String>>,
    bearer: Bearer,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let m = parse_manifest(&headers, &body)?;
    let sid = match q.get("session_id") {
        Some(s) => Some(parse_sid(s)?),
        None => None,
    };
    // A session id is not a key: re-creating a known session (to learn where it is, or to have
    // an orphan restored) needs its capability.
    if let Some(sid) = &sid {
        if core.lookup(sid).is_some() {
            core.access.session(&bearer, sid.as_str())?;
        }
    }
    // Quotas are per client address; operators are not limited.
    let owner = match core.access.is_operator(&bearer) {
        true => None,
        false => Some(addr.map_or_else(|| "unknown".to_string(), |a| a.to_string())),
    };
    match core.place(&m, sid.clone(), owner).await {
        Ok(p) => Ok((
            StatusCode::CREATED,
            Json(serde_json::to_value(p).unwrap_or(Value::Null)),
        )
            .into_response()),
        Err(PlaceError::Unsatisfiable { why }) if core.federation().is_some() => {
            // Routed resolved: the other colony runs the version resolved here (and imports it).
            let m = core.resolve_agent(&m).unwrap_or(m);
            crate::rc::federation::route_refused(&core, &m, sid.as_ref(), q.get("data_class"), &why)
                .await
        }
        Err(PlaceError::Unsatisfiable { why }) => {
            let list: Vec<Value> = why
                .iter()
                .map(|(id, name, r)| json!({"node": id, "name": name, "reason": r.to_string(), "filter": r}))
                .collect();
            let msg = if why.is_empty() {
                "no node has joined the colony".to_string()
            } else {
                format!(
                    "no node satisfies the manifest: {}",
                    why.iter()
                        .map(|(_, n, r)| format!("{n}: {r}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            };
            Err(
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unsatisfiable", msg)
                    .with("why", json!(list)),
            )
        }
        Err(PlaceError::AlreadyPlaced {
            session,
            address,
            epoch,
        }) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_placed",
            format!("session {session} is already placed on {address} (epoch {epoch})"),
        )
        .with("location", json!(address))
        .with("epoch", json!(epoch.0))),
        Err(e @ PlaceError::CopiesUnreachable(_)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "min_copies_unreachable",
            e.to_string(),
        )),
        Err(e @ PlaceError::Quota { .. }) => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "quota_exceeded",
            e.to_string(),
        )),
        Err(PlaceError::Agent(e)) => Err(ApiError::from(e)),
        Err(e @ PlaceError::NodeFailed { .. }) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "placement_failed",
            e.to_string(),
        )
        .with("retryable", json!(true))),
        Err(e @ PlaceError::Rejoining { .. }) => {
            Err(
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "rejoining", e.to_string())
                    .with("retryable", json!(true)),
            )
        }
    }
}

#[tracing::instrument(skip_all)]
async fn rc_probe(
    State(core): State<Arc<RcCore>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body?;
    let m = parse_manifest(&headers, &body)?;
    Ok(Json(match core.probe(&m) {
        Decision::Placed { node, score } => {
            json!({"decision": "placed", "node": node, "score": score})
        }
        Decision::Refused { why } => json!({
            "decision": "refused",
            "why": why.iter().map(|(n, r)| json!({"node": n, "reason": r.to_string()})).collect::<Vec<_>>(),
        }),
    }))
}

/// `GET /v1/sessions/{id}` at the RC: where the session lives (its directory entry; described
/// with the holder's route of the same path in the OpenAPI document).
#[tracing::instrument(skip_all)]
pub(crate) async fn rc_lookup(
    State(core): State<Arc<RcCore>>,
    Path(id): Path<String>,
    bearer: Bearer,
) -> Result<Json<Value>, ApiError> {
    let sid = parse_sid(&id)?;
    core.access.session(&bearer, sid.as_str())?;
    match core.lookup(&sid) {
        Some(e) => Ok(Json(serde_json::to_value(e).unwrap_or(Value::Null))),
        None => Err(ApiError::from(SessionError::NotFound { session: sid })),
    }
}

async fn rc_redirect(
    State(core): State<Arc<RcCore>>,
    Path(id): Path<String>,
    bearer: Bearer,
    req: Request,
) -> ApiError {
    let sid = match parse_sid(&id) {
        Ok(s) => s,
        Err(e) => return e,
    };
    if let Err(e) = core.access.session(&bearer, sid.as_str()) {
        return e;
    }
    match core.lookup(&sid) {
        Some(e) if e.state != DirState::Orphaned => {
            let path = req.uri().path().to_string();
            ApiError::moved(e.address.clone(), &path, e.epoch.0).with("node", json!(e.node))
        }
        Some(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "orphaned",
            format!(
                "session {sid} lost its node (epoch {}); create it again to fail it over",
                e.epoch
            ),
        ),
        None => ApiError::from(SessionError::NotFound { session: sid }),
    }
}

/// `POST /sessions/{id}/handover` at the RC: ask the holder to hand the session over.
#[tracing::instrument(skip_all)]
/// `POST /v1/sessions/{id}/handover` at the RC: ask the holder to hand the session over
/// (described with the holder's route of the same path).
pub(crate) async fn rc_handover(
    State(core): State<Arc<RcCore>>,
    Path(id): Path<String>,
    bearer: Bearer,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<v1::HandoverRequested>), ApiError> {
    let body = body?;
    let sid = parse_sid(&id)?;
    core.access.operator(&bearer, "handover")?;
    let b = handover_body(&body)?;
    match core.request_handover(&sid, b.target) {
        Ok(holder) => Ok((
            StatusCode::ACCEPTED,
            Json(v1::HandoverRequested {
                session_id: sid.to_string(),
                asked: holder.to_string(),
                status: "handover requested".into(),
            }),
        )),
        Err(why) => Err(ApiError::new(StatusCode::CONFLICT, "no_handover", why)),
    }
}

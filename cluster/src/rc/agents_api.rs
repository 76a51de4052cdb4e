//! The RC's agent registry routes (ADR 0030), served at `/agents…` like the rest of the RC's
//! (unversioned) API and also at `/v1/agents…`:
//!
//! | route | who | what |
//! |---|---|---|
//! | `POST /agents` (signed package bytes) | operator | verify, compile-check, store → `{name, version, hash, signer, created}` |
//! | `GET /agents` | operator | `[{name, latest, skills, description}]` |
//! | `GET /agents/{name}` | operator | the latest version and every version |
//! | `GET /agents/{name}/versions` | operator | the versions |
//! | `POST /agents/{name}/{version}/retire` | operator | not chosen for new sessions any more |
//! | `GET /agents/by-hash/{hash}` | operator, or a member node (token signed by its key) | the package bytes |
//! | `GET /agents/{name}/{version}` | operator or member node | `{handler, hash}` |
//! | `GET`/`HEAD /blobs/{hash}` | operator or member node | a package, model or asset (ranges) |
//! | `PUT /blobs/{hash}` (bytes) | operator | upload a model or asset, verified against the hash |
//! | `GET /blobs/{hash}/holders` | operator or member node | member nodes holding it |

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::common::access::Bearer;
use crate::common::http::ApiError;
use crate::common::identity::NodeId;
use crate::rc::agents::{Registry, RegistryError};
use crate::rc::RcCore;

/// The registry's routes (under `/agents` and `/v1/agents`), with the push body limit (the
/// package size limit plus the format's overhead).
pub fn routes(core: &RcCore) -> Router<Arc<RcCore>> {
    let limit = core
        .agents()
        .map(|r| r.max_package_bytes())
        .unwrap_or(96 << 20)
        .saturating_add(64 << 10)
        .min(usize::MAX as u64) as usize;
    let r = || {
        Router::new()
            .route("/", get(list).post(push))
            .route("/by-hash/{hash}", get(by_hash))
            .route("/{name}", get(show))
            .route("/{name}/versions", get(versions))
            .route("/{name}/{version}", get(resolve))
            .route("/{name}/{version}/retire", post(retire))
            .layer(DefaultBodyLimit::max(limit))
    };
    let b = || {
        Router::new()
            .route("/{hash}", get(blob_get).head(blob_get).put(blob_put))
            .route("/{hash}/holders", get(blob_holders))
            .layer(DefaultBodyLimit::disable())
    };
    Router::new()
        .nest("/agents", r())
        .nest("/v1/agents", r())
        .nest("/blobs", b())
        .nest("/v1/blobs", b())
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let (status, code) = e.status();
        ApiError::new(status, code, e.to_string())
    }
}

fn registry(core: &RcCore) -> Result<&Arc<Registry>, ApiError> {
    core.agents().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_registry",
            "this RC has no agent registry (not started by start_rc)",
        )
    })
}

#[tracing::instrument(skip_all)]
async fn push(
    State(core): State<Arc<RcCore>>,
    bearer: Bearer,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    core.access.operator(&bearer, "POST /agents")?;
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "package_too_large",
                format!("the package is over this RC's limit: {}", r.body_text()),
            )
        } else {
            ApiError::from(r)
        }
    })?;
    let pushed = registry(&core)?.push(body.to_vec()).await?;
    // In an RC group the push is acknowledged once the index is replicated (ADR 0037).
    if let Some(g) = core.group() {
        crate::rc::group::replicate_registry(&core, g).await;
    }
    core.keep_warm_pushed(
        &format!("{}@{}", pushed.name, pushed.version),
        &pushed.hash,
        &pushed.default_manifest,
    );
    let status = if pushed.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!(pushed))).into_response())
}

#[tracing::instrument(skip_all)]
async fn list(State(core): State<Arc<RcCore>>, bearer: Bearer) -> Result<Json<Value>, ApiError> {
    core.access.operator(&bearer, "GET /agents")?;
    let agents: Vec<Value> = registry(&core)?
        .list()
        .into_iter()
        .map(|(name, latest)| {
            json!({
                "name": name,
                "latest": latest.as_ref().map(|v| v.version.clone()),
                "hash": latest.as_ref().map(|v| v.hash.clone()),
                "skills": latest.as_ref().map(|v| v.skills.clone()).unwrap_or_default(),
                "description": latest.map(|v| v.description).unwrap_or_default(),
            })
        })
        .collect();
    Ok(Json(json!({ "agents": agents })))
}

#[tracing::instrument(skip_all)]
async fn show(
    State(core): State<Arc<RcCore>>,
    Path(name): Path<String>,
    bearer: Bearer,
) -> Result<Json<Value>, ApiError> {
    core.access.operator(&bearer, "GET /agents/{name}")?;
    let reg = registry(&core)?;
    let versions = reg.versions(&name)?;
    let latest = reg.resolve(&name).ok().map(|r| r.handler);
    Ok(Json(
        json!({"name": name, "latest": latest, "versions": versions}),
    ))
}

#[tracing::instrument(skip_all)]
async fn versions(
    State(core): State<Arc<RcCore>>,
    Path(name): Path<String>,
    bearer: Bearer,
) -> Result<Json<Value>, ApiError> {
    core.access
        .operator(&bearer, "GET /agents/{name}/versions")?;
    let versions = registry(&core)?.versions(&name)?;
    Ok(Json(json!({"name": name, "versions": versions})))
}

#[tracing::instrument(skip_all)]
async fn retire(
    State(core): State<Arc<RcCore>>,
    Path((name, version)): Path<(String, String)>,
    bearer: Bearer,
) -> Result<Json<Value>, ApiError> {
    core.access.operator(&bearer, "retire an agent")?;
    let v = registry(&core)?.retire(&name, &version).await?;
    if let Some(g) = core.group() {
        crate::rc::group::replicate_registry(&core, g).await;
    }
    Ok(Json(json!({"name": name, "version": v})))
}

/// Lets in an operator, or a member node with a token signed by its own key.
fn operator_or_member(core: &RcCore, bearer: &Bearer, what: &str) -> Result<(), ApiError> {
    core.access
        .operator_or_member(bearer, &core.member_ids(), what)
        .map(drop)
}

/// Package bytes by hash: for operators, and for member nodes with a token signed by their own
/// key (`token::mint_operator` with the node's identity; it opens nothing else at the RC).
#[tracing::instrument(skip_all)]
async fn by_hash(
    State(core): State<Arc<RcCore>>,
    Path(hash): Path<String>,
    bearer: Bearer,
) -> Result<Response, ApiError> {
    operator_or_member(&core, &bearer, "GET /agents/by-hash")?;
    let bytes = registry(&core)?.read(&hash).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// `name@version` resolved to its package hash (a handover target that has not loaded the
/// agent fetches it by this hash before it admits the session).
#[tracing::instrument(skip_all)]
async fn resolve(
    State(core): State<Arc<RcCore>>,
    Path((name, version)): Path<(String, String)>,
    bearer: Bearer,
) -> Result<Json<Value>, ApiError> {
    operator_or_member(&core, &bearer, "GET /agents/{name}/{version}")?;
    let r = registry(&core)?.resolve(&format!("{name}@{version}"))?;
    Ok(Json(json!({"handler": r.handler, "hash": r.hash})))
}

/// A package, model or asset by hash, with ranges (ADR 0031).
#[tracing::instrument(skip_all)]
async fn blob_get(
    State(core): State<Arc<RcCore>>,
    Path(hash): Path<String>,
    bearer: Bearer,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    // Member nodes, and the RCs of the peering table (a colony a session was routed to imports
    // the agent it runs through the federation).
    let mut readers = core.member_ids();
    if let Some(fed) = core.federation() {
        readers.extend(
            fed.canopy()
                .peering_table()
                .into_iter()
                .filter_map(|e| NodeId::parse(&e.summary.rc_did.to_string()).ok()),
        );
    }
    core.access
        .operator_or_member(&bearer, &readers, "GET /blobs/{hash}")?;
    let path = registry(&core)?.blob_path(&hash);
    Ok(crate::common::blobs::serve_file(path, &hash, req).await)
}

/// Uploads a model or asset (the body), verified against the hash in the path.
#[tracing::instrument(skip_all)]
async fn blob_put(
    State(core): State<Arc<RcCore>>,
    Path(hash): Path<String>,
    bearer: Bearer,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    core.access.operator(&bearer, "PUT /blobs/{hash}")?;
    let created = registry(&core)?
        .put_blob(&hash, body.into_data_stream())
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({"hash": hash, "created": created}))).into_response())
}

/// The member nodes that hold a blob (fetching nodes try them before the RC).
#[tracing::instrument(skip_all)]
async fn blob_holders(
    State(core): State<Arc<RcCore>>,
    Path(hash): Path<String>,
    bearer: Bearer,
) -> Result<Json<Value>, ApiError> {
    operator_or_member(&core, &bearer, "GET /blobs/{hash}/holders")?;
    if !crate::common::blobs::is_hash(&hash) {
        return Err(crate::common::blobs::BlobError::BadHash(hash).into());
    }
    let holders: Vec<Value> = core
        .blob_holders(&hash)
        .into_iter()
        .map(|(id, api)| json!({"node": id.did(), "api": api}))
        .collect();
    let rc = core.agents().and_then(|r| r.blob_path(&hash)).is_some();
    Ok(Json(json!({"hash": hash, "holders": holders, "rc": rc})))
}

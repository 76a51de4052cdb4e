//! The client API (HTTP + WebSocket, axum) of nodes and of the RC.
//!
//! | route | RC | node |
//! |---|---|---|
//! | `GET /health` | liveness, members | liveness, lease, free capacity |
//! | `GET /metrics` | Prometheus text | Prometheus text |
//! | `GET /status` | members, load, directory | — |
//! | `POST /sessions[?session_id=]` (manifest TOML or JSON) | admit + place → `{session_id, node, address, epoch}` | `moved` to the RC |
//! | `POST /admission/probe` (manifest) | the decision, nothing placed | — |
//! | `GET /sessions/{id}` | directory entry | session info (or `moved`) |
//! | `POST /sessions/{id}/inputs` `{seq, input}` | `moved` to the holder | the reply |
//! | `DELETE /sessions/{id}` | `moved` | close |
//! | `GET /sessions/{id}/ws` | `moved` | WebSocket: text frames `{seq, input}` → replies |
//!
//! Every error is JSON `{code, message, ...}` with a fitting status: malformed body 400, body over
//! the limit 413, unknown session 404, seq gap 409, overload 429, not serving / retry 503. A
//! session that lives elsewhere answers 307 with `{code: "moved", location}` (and a `Location`
//! header); the RC never proxies session traffic.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use opengrid_actors::{Reply, SessionError};
use opengrid_session::{Manifest, Seq, SessionId};
use opentelemetry::KeyValue;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::admission::Decision;
use crate::metrics::Metrics;
use crate::node::NodeCore;
use crate::rc::{DirState, PlaceError, RcCore};

/// A JSON error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    /// `{code, message}` with `status`.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: json!({"code": code, "message": message.into()}),
        }
    }

    /// Adds a field to the error body.
    pub(crate) fn with(mut self, key: &str, v: Value) -> Self {
        if let Value::Object(m) = &mut self.body {
            m.insert(key.to_string(), v);
        }
        self
    }

    /// A `moved` redirect: `location` is the holder's API base URL, the `Location` header the
    /// full URL of the same request there.
    pub fn moved(location: String, path: &str, epoch: u64) -> Self {
        ApiError::new(
            StatusCode::TEMPORARY_REDIRECT,
            "moved",
            format!("the session lives at {location}"),
        )
        .with("location", json!(location))
        .with("url", json!(format!("{location}{path}")))
        .with("epoch", json!(epoch))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(self.body.clone())).into_response();
        if self.status == StatusCode::TEMPORARY_REDIRECT {
            if let Some(loc) = self.body.get("url").and_then(|l| l.as_str()) {
                if let Ok(v) = loc.parse() {
                    r.headers_mut().insert(header::LOCATION, v);
                }
            }
        }
        r
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        let status = r.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "body_too_large"
        } else {
            "bad_body"
        };
        ApiError::new(status, code, r.body_text())
    }
}

/// HTTP status of a session error.
pub fn session_error_status(e: &SessionError) -> StatusCode {
    match e {
        SessionError::Backpressure { .. } => StatusCode::TOO_MANY_REQUESTS,
        SessionError::SeqGap { .. }
        | SessionError::Fenced { .. }
        | SessionError::AlreadyExists { .. } => StatusCode::CONFLICT,
        SessionError::BadInput { .. } | SessionError::UnknownHandler { .. } => {
            StatusCode::BAD_REQUEST
        }
        SessionError::NotFound { .. } => StatusCode::NOT_FOUND,
        SessionError::Moved { .. } => StatusCode::TEMPORARY_REDIRECT,
        SessionError::Stopped { .. } | SessionError::Closed { .. } => StatusCode::GONE,
        SessionError::NotDurable { .. }
        | SessionError::HandlerPanicked { .. }
        | SessionError::Restarting { .. }
        | SessionError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        if let SessionError::Moved {
            session,
            location,
            epoch,
        } = &e
        {
            return ApiError::moved(location.clone(), &format!("/sessions/{session}"), epoch.0);
        }
        let status = session_error_status(&e);
        let mut body = serde_json::to_value(&e).unwrap_or_else(|_| json!({}));
        if let Value::Object(m) = &mut body {
            m.insert("message".into(), json!(e.to_string()));
            m.insert("retryable".into(), json!(e.is_retryable()));
            m.entry("code").or_insert(json!("session_error"));
        }
        ApiError { status, body }
    }
}

fn parse_sid(s: &str) -> Result<SessionId, ApiError> {
    SessionId::new(s)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_session_id", e.to_string()))
}

/// Parses a manifest body: JSON when it starts with `{` or the content type says JSON, else TOML.
pub fn parse_manifest(headers: &HeaderMap, body: &[u8]) -> Result<Manifest, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_manifest",
            format!("body is not UTF-8: {e}"),
        )
    })?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let json = ct.contains("json") || (!ct.contains("toml") && text.trim_start().starts_with('{'));
    let r = if json {
        Manifest::from_json_str(text)
    } else {
        Manifest::from_toml_str(text)
    };
    r.map_err(|e| {
        let fields = e.fields();
        ApiError::new(StatusCode::BAD_REQUEST, "bad_manifest", e.to_string())
            .with("fields", json!(fields))
    })
}

async fn count_status(State(m): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let r = next.run(req).await;
    m.api_requests.add(
        1,
        &[KeyValue::new("status", r.status().as_u16().to_string())],
    );
    r
}

fn not_found_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such route")
}

// ---------------------------------------------------------------------------------------------
// Node

/// The node's router.
pub fn node_router(core: Arc<NodeCore>) -> Router {
    let limit = core.cfg.max_body.0.min(usize::MAX as u64) as usize;
    let metrics = core.metrics.clone();
    Router::new()
        .route("/health", get(node_health))
        .route("/metrics", get(node_metrics))
        .route("/sessions", post(node_create))
        .route("/sessions/{id}", get(node_info).delete(node_close))
        .route("/sessions/{id}/inputs", post(node_input))
        .route("/sessions/{id}/ws", get(node_ws))
        .route("/sessions/{id}/handover", post(node_handover))
        .route("/drain", post(node_drain))
        .fallback(|| async { not_found_route() })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(metrics, count_status))
        .with_state(core)
}

#[tracing::instrument(skip_all)]
async fn node_health(State(core): State<Arc<NodeCore>>) -> Json<Value> {
    let sessions = core.host.len();
    Json(json!({
        "status": "ok",
        "role": "node",
        "node": core.id(),
        "name": core.cfg.name,
        "jurisdiction": core.cfg.jurisdiction,
        "membership": format!("{:?}", core.membership()).to_lowercase(),
        "serving": core.may_serve(),
        "lease_left_ms": core.lease_left().as_millis() as u64,
        "rtt_us": core.rtt().as_micros() as u64,
        "sessions": sessions,
        "capacity": core.cfg.capacity,
        "free": (core.cfg.capacity as usize).saturating_sub(sessions),
        "join_refused": core.last_refusal(),
        "draining": core.mobility().is_some_and(|m| m.draining()),
        "migration": core.spec.migration,
        "accelerator": core.spec.accelerator.to_string(),
        "inference": crate::inference::health_of(core.host.services()),
        "receipts": core.receipts.counters(),
    }))
}

async fn node_metrics(State(core): State<Arc<NodeCore>>) -> Response {
    core.metrics.sessions.record(core.host.len() as u64, &[]);
    let text = core.metrics.render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[tracing::instrument(skip_all, err(Debug))]
async fn node_create(State(core): State<Arc<NodeCore>>) -> Result<Response, ApiError> {
    match core.rc_api() {
        Some(rc) => Err(ApiError::moved(rc, "/sessions", 0)),
        None => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_rc",
            "this node has not joined a colony yet; create sessions at the RC",
        )),
    }
}

/// Resolves a session not hosted here: `moved` if the RC knows a holder, else 404.
async fn elsewhere(core: &NodeCore, sid: &SessionId, path: &str) -> ApiError {
    match core.lookup(sid).await {
        Some((addr, epoch)) if addr != core.spec.api => ApiError::moved(addr, path, epoch),
        // The directory says here but the host has not got it (yet): a handover or restore is
        // landing. Retryable.
        Some(_) if core.host.get(sid).is_none() => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "arriving",
            format!("session {sid} is arriving on this node; retry"),
        )
        .with("retryable", json!(true)),
        _ => ApiError::from(SessionError::NotFound {
            session: sid.clone(),
        }),
    }
}

fn check_serving(core: &NodeCore) -> Result<(), ApiError> {
    if core.may_serve() {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_serving",
            "this node holds no valid lease and serves no session; ask the RC where the session lives",
        )
        .with("retryable", json!(true)))
    }
}

#[tracing::instrument(skip_all, err(Debug))]
async fn node_info(
    State(core): State<Arc<NodeCore>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let sid = parse_sid(&id)?;
    match core.host.get(&sid) {
        Some(s) if matches!(s.status(), opengrid_actors::SessionStatus::Moved { .. }) => {
            match s.status() {
                opengrid_actors::SessionStatus::Moved { location, epoch } => Err(ApiError::moved(
                    location,
                    &format!("/sessions/{sid}"),
                    epoch.0,
                )),
                _ => Err(not_found_route()),
            }
        }
        Some(s) if core.may_serve() => {
            let mut v = serde_json::to_value(s.info()).unwrap_or(Value::Null);
            if let (Value::Object(m), Some(mob)) = (&mut v, core.mobility()) {
                let r: Vec<String> = mob
                    .store
                    .replicas(&sid)
                    .iter()
                    .map(|a| a.to_string())
                    .collect();
                m.insert("replicas".into(), json!(r));
            }
            Ok(Json(v))
        }
        Some(_) => Err(check_serving(&core).err().unwrap_or_else(not_found_route)),
        None => Err(elsewhere(&core, &sid, &format!("/sessions/{sid}")).await),
    }
}

#[tracing::instrument(skip_all, err(Debug))]
async fn node_close(
    State(core): State<Arc<NodeCore>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let sid = parse_sid(&id)?;
    let Some(s) = core.host.get(&sid) else {
        return Err(elsewhere(&core, &sid, &format!("/sessions/{sid}")).await);
    };
    check_serving(&core)?;
    let epoch = s.epoch();
    let host = core.host.clone();
    let sid2 = sid.clone();
    let r = core
        .handlers
        .spawn(async move { host.close(&sid2).await })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    r?;
    core.notify_closed(&sid, epoch);
    Ok(Json(json!({"session_id": sid, "closed": true})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputBody {
    seq: u64,
    input: Value,
}

fn reply_json(r: Reply<Value>) -> Value {
    match r {
        Reply::Processed {
            seq,
            output,
            durable,
        } => match output {
            Ok(v) => json!({"kind": "processed", "seq": seq, "output": v, "durable": durable}),
            Err(e) => json!({"kind": "processed", "seq": seq, "error": e, "durable": durable}),
        },
        Reply::Duplicate { seq, last } => json!({"kind": "duplicate", "seq": seq, "last": last}),
    }
}

/// One input: decode, check, send to the session, record wire bytes.
async fn run_input(core: &NodeCore, sid: &SessionId, body: &[u8]) -> Result<Value, ApiError> {
    let input: InputBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("input body: {e}; expected {{\"seq\": <u64 ≥ 1>, \"input\": <value>}}"),
        )
    })?;
    if input.seq == 0 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_seq",
            "seq starts at 1",
        ));
    }
    let Some(s) = core.host.get(sid) else {
        return Err(elsewhere(core, sid, &format!("/sessions/{sid}/inputs")).await);
    };
    check_serving(core)?;
    let r = s.send_json(Seq(input.seq), input.input).await?;
    let mut out = reply_json(r);
    // Answered by relaying (X2) after a handover: tell the client where the session lives now.
    if let opengrid_actors::SessionStatus::Moved { location, .. } = s.status() {
        if let Value::Object(m) = &mut out {
            m.insert("moved_to".into(), json!(location));
        }
    }
    let out_len = serde_json::to_vec(&out).map(|v| v.len()).unwrap_or(0) as u64;
    s.usage_counters().record_wire(body.len() as u64, out_len);
    core.metrics
        .wire_bytes
        .add(body.len() as u64, &[KeyValue::new("direction", "in")]);
    core.metrics
        .wire_bytes
        .add(out_len, &[KeyValue::new("direction", "out")]);
    Ok(out)
}

#[tracing::instrument(skip_all, err(Debug))]
async fn node_input(
    State(core): State<Arc<NodeCore>>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body?;
    let sid = parse_sid(&id)?;
    run_input(&core, &sid, &body).await.map(Json)
}

async fn node_ws(
    State(core): State<Arc<NodeCore>>,
    Path(id): Path<String>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let sid = parse_sid(&id)?;
    if core.host.get(&sid).is_none() {
        return Err(elsewhere(&core, &sid, &format!("/sessions/{sid}/ws")).await);
    }
    check_serving(&core)?;
    let limit = core.cfg.max_body.0 as usize;
    Ok(ws
        .max_message_size(limit)
        .on_upgrade(move |socket| ws_loop(core, sid, socket)))
}

async fn ws_loop(core: Arc<NodeCore>, sid: SessionId, mut socket: WebSocket) {
    while let Some(Ok(msg)) = socket.recv().await {
        let bytes: Vec<u8> = match msg {
            Message::Text(t) => t.as_str().as_bytes().to_vec(),
            Message::Binary(b) => b.to_vec(),
            Message::Close(_) => break,
            _ => continue,
        };
        let out = match run_input(&core, &sid, &bytes).await {
            Ok(v) => v,
            Err(e) => {
                let mut b = e.body;
                if let Value::Object(m) = &mut b {
                    m.insert("status".into(), json!(e.status.as_u16()));
                }
                b
            }
        };
        if socket
            .send(Message::Text(out.to_string().into()))
            .await
            .is_err()
        {
            break;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RC

/// The RC's router.
pub fn rc_router(core: Arc<RcCore>) -> Router {
    let limit = core.cfg.max_body.0.min(usize::MAX as u64) as usize;
    let metrics = core.metrics.clone();
    Router::new()
        .route("/health", get(rc_health))
        .route("/metrics", get(rc_metrics))
        .route("/status", get(rc_status))
        .route("/sessions", post(rc_create))
        .route("/admission/probe", post(rc_probe))
        .route(
            crate::federation::ADMISSION_PATH,
            post(crate::federation::admission_handler),
        )
        .route("/sessions/{id}", get(rc_lookup).delete(rc_redirect))
        .route("/sessions/{id}/inputs", post(rc_redirect))
        .route("/sessions/{id}/ws", get(rc_redirect))
        .route("/sessions/{id}/handover", post(rc_handover))
        .fallback(|| async { not_found_route() })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(metrics, count_status))
        .with_state(core)
}

#[tracing::instrument(skip_all)]
async fn rc_health(State(core): State<Arc<RcCore>>) -> Json<Value> {
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

async fn rc_status(State(core): State<Arc<RcCore>>) -> Json<Value> {
    let mut v = serde_json::to_value(core.status()).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        let canopy = core
            .federation()
            .map(|f| f.status_json())
            .unwrap_or_else(|| json!({"enabled": false}));
        m.insert("canopy".into(), canopy);
    }
    Json(v)
}

#[tracing::instrument(skip_all, err(Debug))]
async fn rc_create(
    State(core): State<Arc<RcCore>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let m = parse_manifest(&headers, &body)?;
    let sid = match q.get("session_id") {
        Some(s) => Some(parse_sid(s)?),
        None => None,
    };
    match core.place(&m, sid.clone()).await {
        Ok(p) => Ok((
            StatusCode::CREATED,
            Json(serde_json::to_value(p).unwrap_or(Value::Null)),
        )
            .into_response()),
        Err(PlaceError::Unsatisfiable { why }) if core.federation().is_some() => {
            crate::federation::route_refused(&core, &m, sid.as_ref(), q.get("data_class"), &why)
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
        Err(e @ PlaceError::NodeFailed { .. }) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "placement_failed",
            e.to_string(),
        )
        .with("retryable", json!(true))),
    }
}

#[tracing::instrument(skip_all, err(Debug))]
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

#[tracing::instrument(skip_all, err(Debug))]
async fn rc_lookup(
    State(core): State<Arc<RcCore>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let sid = parse_sid(&id)?;
    match core.lookup(&sid) {
        Some(e) => Ok(Json(serde_json::to_value(e).unwrap_or(Value::Null))),
        None => Err(ApiError::from(SessionError::NotFound { session: sid })),
    }
}

async fn rc_redirect(
    State(core): State<Arc<RcCore>>,
    Path(id): Path<String>,
    req: Request,
) -> ApiError {
    let sid = match parse_sid(&id) {
        Ok(s) => s,
        Err(e) => return e,
    };
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

// ---------------------------------------------------------------------------------------------
// Mobility: handover and drain

/// Body of `POST /sessions/{id}/handover` (optional).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HandoverBody {
    /// Target node name or did; the RC picks one when absent.
    #[serde(default)]
    target: Option<String>,
}

fn handover_body(body: &[u8]) -> Result<HandoverBody, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(HandoverBody::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("handover body: {e}; expected {{\"target\": <node name or did>}} or nothing"),
        )
    })
}

fn move_error(e: crate::mobility::MoveError) -> ApiError {
    use crate::mobility::MoveError as M;
    let (status, code) = match &e {
        M::NotHere(_) => (StatusCode::NOT_FOUND, "not_found"),
        M::NotServing => (StatusCode::SERVICE_UNAVAILABLE, "not_serving"),
        M::NoTarget(_) => (StatusCode::CONFLICT, "no_target"),
        M::Handover(opengrid_migration::HandoverError::NeverLive(_)) => {
            (StatusCode::CONFLICT, "never_live")
        }
        M::Handover(_) => (StatusCode::SERVICE_UNAVAILABLE, "handover_aborted"),
        M::NoMobility => (StatusCode::SERVICE_UNAVAILABLE, "no_migration"),
    };
    ApiError::new(status, code, e.to_string()).with("source_serving", json!(true))
}

/// `POST /sessions/{id}/handover`: hand the session over live (make-before-break).
#[tracing::instrument(skip_all, err(Debug))]
async fn node_handover(
    State(core): State<Arc<NodeCore>>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body?;
    let sid = parse_sid(&id)?;
    let b = handover_body(&body)?;
    if core.host.get(&sid).is_none() {
        return Err(elsewhere(&core, &sid, &format!("/sessions/{sid}/handover")).await);
    }
    let r = core.handover(&sid, b.target).await.map_err(move_error)?;
    Ok(Json(serde_json::to_value(r).unwrap_or(Value::Null)))
}

/// `POST /drain`: hand every session off, then report (the node keeps running, serving nothing;
/// stop it afterwards).
#[tracing::instrument(skip_all)]
async fn node_drain(State(core): State<Arc<NodeCore>>) -> Json<Value> {
    let r = core.drain().await;
    Json(serde_json::to_value(r).unwrap_or(Value::Null))
}

/// `POST /sessions/{id}/handover` at the RC: ask the holder to hand the session over.
#[tracing::instrument(skip_all, err(Debug))]
async fn rc_handover(
    State(core): State<Arc<RcCore>>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = body?;
    let sid = parse_sid(&id)?;
    let b = handover_body(&body)?;
    match core.request_handover(&sid, b.target) {
        Ok(holder) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"session_id": sid, "asked": holder, "status": "handover requested"})),
        )),
        Err(why) => Err(ApiError::new(StatusCode::CONFLICT, "no_handover", why)),
    }
}

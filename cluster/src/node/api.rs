//! The node's client API router: health, metrics, sessions (info, inputs, WebSocket, close),
//! handover and drain. Shared pieces are in [`crate::common::http`].

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use opengrid_actors::{Reply, SessionError};
use opengrid_session::{Seq, SessionId};
use opentelemetry::KeyValue;
use serde_json::{json, Value};

use crate::common::access::Bearer;
use crate::common::http::{count_status, handover_body, not_found_route, parse_sid, ApiError};
use crate::common::v1::{self, InputReply, SessionView};
use crate::node::NodeCore;

/// The node's router.
pub fn node_router(core: Arc<NodeCore>) -> Router {
    let limit = core.cfg.max_body.0.min(usize::MAX as u64) as usize;
    let metrics = core.metrics.clone();
    // The client API, at `/v1/…` (ADR 0035) and, for clients of earlier releases, unversioned.
    let api = Router::new()
        .route("/health", get(node_health))
        .route("/metrics", get(node_metrics))
        .route("/sessions", post(node_create).get(node_list))
        .route("/sessions/{id}", get(node_info).delete(node_close))
        .route("/sessions/{id}/inputs", post(node_input))
        .route("/sessions/{id}/ws", get(node_ws))
        .route("/sessions/{id}/calls", post(super::calls::node_call))
        .route(
            "/sessions/{id}/inputs/{seq}/stream",
            get(super::streaming::node_stream),
        )
        .route("/sessions/{id}/handover", post(node_handover))
        .route("/drain", post(node_drain))
        .route("/blobs/{hash}", get(node_blob).head(node_blob));
    Router::new()
        .nest(v1::PREFIX, api.clone())
        .merge(api)
        .route("/v1/openapi.json", get(crate::openapi::openapi_json))
        .route(
            "/ui",
            get(|| async { crate::common::ui::asset("node.html") }),
        )
        .route("/ui/{file}", get(node_ui_file))
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
        "outside_reason": core.outside_reason(),
        "draining": core.mobility().is_some_and(|m| m.draining()),
        "migration": core.spec.migration,
        "accelerator": core.spec.accelerator.to_string(),
        "inference": crate::node::inference::health_of(core.host.services()),
        "receipts": core.receipts.counters(),
    }))
}

/// Most sessions one `GET /sessions` lists (the total is always given).
const LIST_LIMIT: usize = 1000;

/// `GET /sessions`: the sessions this node holds (the node dashboard's table), sorted by id,
/// at most [`LIST_LIMIT`].
async fn node_list(
    State(core): State<Arc<NodeCore>>,
    bearer: Bearer,
) -> Result<Json<Value>, ApiError> {
    core.access.operator(&bearer, "GET /sessions")?;
    let mut ids = core.host.session_ids();
    ids.sort();
    let total = ids.len();
    let sessions: Vec<SessionView> = ids
        .iter()
        .take(LIST_LIMIT)
        .filter_map(|id| {
            let s = core.host.get(id)?;
            Some(SessionView::of(s.info(), replicas_of(&core, id)))
        })
        .collect();
    Ok(Json(
        json!({"total": total, "sessions": sessions, "serving": core.may_serve()}),
    ))
}

async fn node_ui_file(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "rc.html" | "node.html" | "rc.js" => StatusCode::NOT_FOUND.into_response(),
        n => crate::common::ui::asset(n),
    }
}

async fn node_metrics(State(core): State<Arc<NodeCore>>) -> Response {
    core.metrics.sessions.record(core.host.len() as u64, &[]);
    let text = core.metrics.render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[tracing::instrument(skip_all)]
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
pub(super) async fn elsewhere(core: &NodeCore, sid: &SessionId, path: &str) -> ApiError {
    let found = match core.try_lookup(sid).await {
        Ok(f) => f,
        // Not "no such session": the RC is away or slow. The client asks again.
        Err(why) => {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "lookup_failed",
                format!(
                    "session {sid} is not here and the RC could not say where it is: {why}; retry"
                ),
            )
            .with("retryable", json!(true))
        }
    };
    match found {
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

pub(super) fn check_serving(core: &NodeCore) -> Result<(), ApiError> {
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

/// The replica holders of a session this node holds, when it keeps replicas.
fn replicas_of(core: &NodeCore, sid: &SessionId) -> Option<Vec<String>> {
    core.mobility().map(|mob| {
        mob.store
            .replicas(sid)
            .iter()
            .map(|a| a.to_string())
            .collect()
    })
}

/// `GET /v1/sessions/{id}` on the holder: the session's status, seq and usage (at the RC, the
/// same route gives its directory entry: where it lives).
#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "sessions",
    params(("id" = String, Path, description = "The session id")),
    responses(
        (status = 200, description = "At the holder, the session (`SessionView`); at the RC, its directory entry (`DirEntry`)", body = crate::openapi::SessionLookup),
        (status = 307, description = "Another node holds it: `url` / `Location`", body = v1::ErrorBody),
        (status = 401, description = "No or a bad token", body = v1::ErrorBody),
        (status = 403, description = "The token does not open this session", body = v1::ErrorBody),
        (status = 404, description = "No such session", body = v1::ErrorBody),
        (status = 503, description = "Not serving now (retryable)", body = v1::ErrorBody),
    ),
    security(("capability" = [])))]
#[tracing::instrument(skip_all)]
pub(crate) async fn node_info(
    State(core): State<Arc<NodeCore>>,
    Path(id): Path<String>,
    bearer: Bearer,
) -> Result<Json<SessionView>, ApiError> {
    let sid = parse_sid(&id)?;
    core.access.session(&bearer, sid.as_str())?;
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
            Ok(Json(SessionView::of(s.info(), replicas_of(&core, &sid))))
        }
        Some(_) => Err(check_serving(&core).err().unwrap_or_else(not_found_route)),
        None => Err(elsewhere(&core, &sid, &format!("/sessions/{sid}")).await),
    }
}

/// `DELETE /v1/sessions/{id}` on the holder: close the session for good.
#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "sessions",
    params(("id" = String, Path, description = "The session id")),
    responses(
        (status = 200, description = "Closed", body = v1::Closed),
        (status = 307, description = "Another node holds it", body = v1::ErrorBody),
        (status = 401, description = "No or a bad token", body = v1::ErrorBody),
        (status = 403, description = "The token does not open this session", body = v1::ErrorBody),
        (status = 404, description = "No such session", body = v1::ErrorBody),
    ),
    security(("capability" = [])))]
#[tracing::instrument(skip_all)]
pub(crate) async fn node_close(
    State(core): State<Arc<NodeCore>>,
    Path(id): Path<String>,
    bearer: Bearer,
) -> Result<Json<v1::Closed>, ApiError> {
    let sid = parse_sid(&id)?;
    core.access.session(&bearer, sid.as_str())?;
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
    // Its last window is billed now, not lost with the session.
    core.receipts
        .close_window(&sid, s.usage_counters().snapshot());
    core.notify_closed(&sid, epoch);
    Ok(Json(v1::Closed {
        session_id: sid.to_string(),
        closed: true,
    }))
}

fn reply_json(r: Reply<Value>) -> Value {
    serde_json::to_value(InputReply::from(r)).unwrap_or(Value::Null)
}

/// The seq of an input body (checked as [`run_input`] checks it).
pub(super) fn input_seq(body: &[u8]) -> Result<u64, ApiError> {
    let input = parse_input(body)?;
    Ok(input.seq)
}

fn parse_input(body: &[u8]) -> Result<v1::InputRequest, ApiError> {
    let input: v1::InputRequest = serde_json::from_slice(body).map_err(|e| {
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
    Ok(input)
}

/// One input: decode, check, send to the session, record wire bytes.
pub(super) async fn run_input(
    core: &NodeCore,
    sid: &SessionId,
    body: &[u8],
) -> Result<Value, ApiError> {
    let input = parse_input(body)?;
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

/// `POST /v1/sessions/{id}/inputs` on the holder: one input, answered when processed (and as
/// durable as the manifest asks). With `Accept: text/event-stream`, an SSE stream: `chunk`
/// events (id `seq:offset`, data a `ChunkEvent`) as the handler emits them, then one `reply`
/// event (an `InputReply` with `chunks` and `complete`); re-post the same seq with `from` to
/// resume after a cut.
#[utoipa::path(post, path = "/v1/sessions/{id}/inputs", tag = "sessions",
    params(("id" = String, Path, description = "The session id")),
    request_body(content = v1::InputRequest, description = "The input and its seq"),
    responses(
        (status = 200, description = "Processed, or the first answer of a retried seq", content(
            (InputReply = "application/json"),
            (v1::ChunkEvent = "text/event-stream"),
        )),
        (status = 307, description = "Another node holds the session: send it there (`url` / `Location`)", body = v1::ErrorBody),
        (status = 400, description = "Not an input (`bad_json`, `bad_seq`, `bad_input`)", body = v1::ErrorBody),
        (status = 401, description = "No or a bad token", body = v1::ErrorBody),
        (status = 403, description = "The token does not open this session", body = v1::ErrorBody),
        (status = 404, description = "No such session", body = v1::ErrorBody),
        (status = 409, description = "`seq_gap`: a seq past the next one", body = v1::ErrorBody),
        (status = 413, description = "The body is too large", body = v1::ErrorBody),
        (status = 503, description = "Not serving, arriving or unavailable now (`retryable`)", body = v1::ErrorBody),
    ),
    security(("capability" = [])))]
#[tracing::instrument(skip_all)]
pub(crate) async fn node_input(
    State(core): State<Arc<NodeCore>>,
    Path(id): Path<String>,
    bearer: Bearer,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let sid = parse_sid(&id)?;
    core.access.session(&bearer, sid.as_str())?;
    if super::streaming::wants_stream(&headers) {
        return super::streaming::input_stream(core, sid, body.to_vec()).await;
    }
    run_input(&core, &sid, &body)
        .await
        .map(|v| Json(v).into_response())
}

/// `GET /v1/sessions/{id}/ws`: a WebSocket; each text frame an `InputRequest` (with `"stream":
/// true` for chunk frames first, or `{"resume": seq, "from": k}`), each answer an `InputReply`
/// or an `ErrorBody` with its `status`.
#[utoipa::path(get, path = "/v1/sessions/{id}/ws", tag = "sessions",
    params(("id" = String, Path, description = "The session id")),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 307, description = "Another node holds the session", body = v1::ErrorBody),
        (status = 401, description = "No or a bad token", body = v1::ErrorBody),
        (status = 403, description = "The token does not open this session", body = v1::ErrorBody),
    ),
    security(("capability" = [])))]
pub(crate) async fn node_ws(
    State(core): State<Arc<NodeCore>>,
    Path(id): Path<String>,
    bearer: Bearer,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let sid = parse_sid(&id)?;
    // Authorization first: a stranger learns nothing, not even whether the upgrade was well formed.
    core.access.session(&bearer, sid.as_str())?;
    let ws = ws.map_err(|e| ApiError::new(e.status(), "bad_upgrade", e.body_text()))?;
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
    use super::streaming::{pump_input, pump_resume, Frame};
    while let Some(Ok(msg)) = socket.recv().await {
        let bytes: Vec<u8> = match msg {
            Message::Text(t) => t.as_str().as_bytes().to_vec(),
            Message::Binary(b) => b.to_vec(),
            Message::Close(_) => break,
            _ => continue,
        };
        // Streamed (`"stream": true`) and resumed (`"resume": seq, "from": k`) inputs answer
        // with chunk frames, then the reply (ADR 0033).
        let head: Option<Value> = serde_json::from_slice(&bytes).ok();
        let streamed = head
            .as_ref()
            .is_some_and(|v| v.get("stream").and_then(Value::as_bool) == Some(true));
        let resume = head
            .as_ref()
            .and_then(|v| v.get("resume").and_then(Value::as_u64));
        if streamed || resume.is_some() {
            let Some(s) = core.host.get(&sid) else {
                let e = elsewhere(&core, &sid, &format!("/sessions/{sid}/ws")).await;
                let _ = socket
                    .send(Message::Text(ws_error(e).to_string().into()))
                    .await;
                continue;
            };
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Frame>(256);
            let pump = async {
                match resume {
                    Some(seq) => {
                        let from = head
                            .as_ref()
                            .and_then(|v| v.get("from").and_then(Value::as_u64))
                            .unwrap_or(0)
                            .min(opengrid_actors::stream::MAX_CHUNKS as u64);
                        pump_resume(s, seq, from as usize, tx).await
                    }
                    None => match input_seq(&bytes)
                        .and_then(|seq| Ok((seq, super::streaming::stream_from(&bytes)?)))
                    {
                        Ok((seq, from)) => {
                            pump_input(s, seq, from, run_input(&core, &sid, &bytes), tx).await
                        }
                        Err(e) => {
                            let _ = tx.send(Frame::Error(ws_error(e))).await;
                        }
                    },
                }
            };
            let forward = async {
                while let Some(f) = rx.recv().await {
                    if socket
                        .send(Message::Text(f.ws_json().to_string().into()))
                        .await
                        .is_err()
                    {
                        return false;
                    }
                }
                true
            };
            let ((), open) = tokio::join!(pump, forward);
            if !open {
                break;
            }
            continue;
        }
        let out = match run_input(&core, &sid, &bytes).await {
            Ok(v) => v,
            Err(e) => ws_error(e),
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

/// An error as a WebSocket frame: its body with the HTTP status.
pub(super) fn ws_error(e: ApiError) -> Value {
    let mut b = e.body;
    if let Value::Object(m) = &mut b {
        m.insert("status".into(), json!(e.status.as_u16()));
    }
    b
}

fn move_error(e: crate::node::mobility::MoveError) -> ApiError {
    use crate::node::mobility::MoveError as M;
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

/// `POST /v1/sessions/{id}/handover` on the holder: hand the session over live
/// (make-before-break) and report the move.
#[utoipa::path(post, path = "/v1/sessions/{id}/handover", tag = "operators",
    params(("id" = String, Path, description = "The session id")),
    request_body(content = v1::HandoverRequest, description = "Where to (optional)"),
    responses(
        (status = 200, description = "At the holder: moved; where, epoch, blackout", body = v1::Report),
        (status = 202, description = "At the RC: the holder was asked to move it", body = v1::HandoverRequested),
        (status = 307, description = "Another node holds the session", body = v1::ErrorBody),
        (status = 403, description = "Not an operator", body = v1::ErrorBody),
        (status = 409, description = "No target, or the session never went live", body = v1::ErrorBody),
        (status = 503, description = "Aborted; the source keeps serving", body = v1::ErrorBody),
    ),
    security(("operator" = [])))]
#[tracing::instrument(skip_all)]
pub(crate) async fn node_handover(
    State(core): State<Arc<NodeCore>>,
    Path(id): Path<String>,
    bearer: Bearer,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body?;
    let sid = parse_sid(&id)?;
    core.access.operator(&bearer, "handover")?;
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
async fn node_drain(
    State(core): State<Arc<NodeCore>>,
    bearer: Bearer,
) -> Result<Json<Value>, ApiError> {
    core.access.operator(&bearer, "POST /drain")?;
    let r = core.drain().await;
    Ok(Json(serde_json::to_value(r).unwrap_or(Value::Null)))
}

/// A blob this node holds (package, model, asset), with ranges: for the colony's other nodes
/// (a token signed by their own key) and operators (ADR 0031).
#[tracing::instrument(skip_all)]
async fn node_blob(
    State(core): State<Arc<NodeCore>>,
    axum::extract::Path(hash): axum::extract::Path<String>,
    bearer: Bearer,
    req: axum::extract::Request,
) -> Result<axum::response::Response, ApiError> {
    core.access
        .operator_or_member(&bearer, &core.members(), "GET /blobs/{hash}")?;
    let Some(agents) = core.agents.get() else {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "not_found",
            "this node keeps no blobs ([agents] enabled = false)",
        ));
    };
    Ok(crate::common::blobs::serve_blob(agents.blobs(), &hash, req).await)
}

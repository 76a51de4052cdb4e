//! The colony's agents as A2A agents (A2A 1.0, JSON-RPC binding; ADR 0036).
//!
//! - `GET /a2a/{agent}/.well-known/agent-card.json`: the agent's card; `GET
//!   /.well-known/agent-card.json`: the default agent's (`[gateway] default_agent`, else the
//!   first by name).
//! - `POST /a2a/{agent}`: JSON-RPC `SendMessage`, `SendStreamingMessage` (SSE), `GetTask`,
//!   `CancelTask`.
//!
//! A task is a session (task id = session id). A message without `taskId` creates one (its
//! capability is in the task's `metadata.opengrid.capability`); a message with one continues it
//! and needs that capability, or an operator token, as `Authorization: Bearer`. The input is the
//! message's first data part, else its text (parsed as JSON when it is JSON). The reply is an
//! artifact (text part + data part) and the task waits for the next input
//! (`TASK_STATE_INPUT_REQUIRED`); a handler error is the status message of that state.
//! `GetTask` is built from the session's info (it survives handovers and failovers as the
//! session does); `CancelTask` closes the session (`TASK_STATE_CANCELED`). A stream gives the
//! task (`WORKING`), each chunk as an appended artifact update, the reply's artifact, then the
//! status update.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::a2a_wire::{self as wire, RpcError};
use super::{Gateway, GatewayError, Shared, Turn};
use crate::common::access::{Bearer, ClientAddr};
use crate::rc::RcCore;

/// The A2A routes.
pub fn routes(gw: Arc<Gateway>) -> Router<Arc<RcCore>> {
    Router::new()
        .route("/.well-known/agent-card.json", get(root_card))
        .route("/a2a/{agent}/.well-known/agent-card.json", get(agent_card))
        .route("/a2a/{agent}", post(rpc))
        .with_state(gw)
}

fn not_found(what: String) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"code": "not_found", "message": what})),
    )
        .into_response()
}

async fn root_card(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    match gw.default_agent() {
        Some(a) => {
            Json(wire::card(&a, &gw.base_url(&headers), &gw.core.cfg.colony)).into_response()
        }
        None => not_found("this colony serves no agent yet (no alive node, empty registry)".into()),
    }
}

async fn agent_card(
    State(gw): State<Arc<Gateway>>,
    Path(agent): Path<String>,
    headers: HeaderMap,
) -> Response {
    match gw.agent(&agent) {
        Ok(a) => Json(wire::card(&a, &gw.base_url(&headers), &gw.core.cfg.colony)).into_response(),
        Err(e) => not_found(e.to_string()),
    }
}

fn answer(id: &Value, r: Result<Value, RpcError>) -> Response {
    match r {
        Ok(v) => Json(wire::ok(id, v)).into_response(),
        Err(e) => (e.http, Json(wire::err(id, &e))).into_response(),
    }
}

impl From<GatewayError> for RpcError {
    fn from(e: GatewayError) -> Self {
        match e {
            GatewayError::UnknownSession(id) => RpcError::task_not_found(&id),
            GatewayError::UnknownAgent(_) => RpcError::invalid_params(e.to_string()),
            GatewayError::Refused {
                status, ref code, ..
            } => {
                let http = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
                RpcError::invalid_request(e.to_string()).with(json!({"code": code}), http)
            }
            other => RpcError::internal(other.to_string()),
        }
    }
}

/// The JSON-RPC endpoint of one agent.
#[tracing::instrument(skip_all, fields(agent = %agent))]
async fn rpc(
    State(gw): State<Arc<Gateway>>,
    Path(agent): Path<String>,
    bearer: Bearer,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return answer(
                &Value::Null,
                Err(RpcError::parse(format!("invalid JSON: {e}"))),
            )
        }
    };
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    let (method, params) = match envelope(&req) {
        Ok(mp) => mp,
        Err(e) => return answer(&id, Err(e)),
    };
    if let Some(v) = headers.get("a2a-version").and_then(|v| v.to_str().ok()) {
        if !(v.trim() == wire::PROTOCOL_VERSION || v.trim() == "1.0.0" || v.trim().is_empty()) {
            return answer(&id, Err(RpcError::version(v)));
        }
    }
    if gw.agent(&agent).is_err() {
        let e = RpcError::invalid_request(format!("unknown agent {agent:?}"))
            .with(json!({"code": "not_found"}), StatusCode::NOT_FOUND);
        return answer(&id, Err(e));
    }
    let owner = match gw.core.access.is_operator(&bearer) {
        true => None,
        false => Some(addr.map_or_else(|| "unknown".to_string(), |a| a.to_string())),
    };
    let call = Call {
        gw: gw.clone(),
        agent,
        bearer,
        owner,
    };
    match method.as_str() {
        "SendMessage" => answer(&id, call.send(&params).await),
        "SendStreamingMessage" => match call.open_for(&params).await {
            Ok((conv, msg, cap)) => stream(call, id, conv, msg, cap).into_response(),
            Err(e) => answer(&id, Err(e)),
        },
        "GetTask" => answer(&id, call.get(&params).await),
        "CancelTask" => answer(&id, call.cancel(&params).await),
        other => answer(&id, Err(RpcError::method_not_found(other))),
    }
}

/// `(method, params)` of a JSON-RPC 2.0 request.
fn envelope(req: &Value) -> Result<(String, Value), RpcError> {
    let o = req.as_object().ok_or_else(|| {
        RpcError::invalid_request("a JSON-RPC request object is expected (batches are not served)")
    })?;
    if o.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(RpcError::invalid_request(
            "\"jsonrpc\": \"2.0\" is required",
        ));
    }
    match o.get("id") {
        None | Some(Value::String(_)) | Some(Value::Number(_)) | Some(Value::Null) => {}
        Some(_) => {
            return Err(RpcError::invalid_request(
                "\"id\" must be a string or a number",
            ))
        }
    }
    let method = o
        .get("method")
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::invalid_request("\"method\" (a string) is required"))?;
    let params = o.get("params").cloned().unwrap_or_else(|| json!({}));
    if !params.is_object() {
        return Err(RpcError::invalid_params("\"params\" must be an object"));
    }
    Ok((method.to_string(), params))
}

/// One request's caller and agent.
struct Call {
    gw: Arc<Gateway>,
    agent: String,
    bearer: Bearer,
    owner: Option<String>,
}

/// What the opengrid metadata of a task says.
fn meta(agent: &str, session: &str, seq: Option<u64>, capability: Option<&str>) -> Value {
    let mut m = json!({"agent": agent, "session": session});
    if let Some(s) = seq {
        m["seq"] = json!(s);
    }
    if let Some(c) = capability {
        m["capability"] = json!(c);
    }
    m
}

fn task_id_param(params: &Value) -> Result<String, RpcError> {
    params
        .get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| RpcError::invalid_params("params.id (the task id) is required"))
}

/// The task after `turn`.
fn task_after(agent: &str, id: &str, context: &str, turn: &Turn, cap: Option<&str>) -> Value {
    let (artifacts, message) = match &turn.outcome {
        Ok(out) => (vec![wire::artifact(turn.seq, out)], None),
        Err(e) => (vec![], Some(wire::agent_message(id, context, e))),
    };
    let mut m = meta(agent, id, Some(turn.seq), cap);
    if let Err(e) = &turn.outcome {
        m["error"] = json!(e);
    }
    wire::task(
        id,
        context,
        wire::status(wire::INPUT_REQUIRED, message),
        artifacts,
        m,
    )
}

impl Call {
    /// The conversation a message goes to: a new session, or the task it names (authorized).
    async fn open_for(
        &self,
        params: &Value,
    ) -> Result<(Shared, wire::Incoming, Option<String>), RpcError> {
        let msg = wire::incoming(params)?;
        let (conv, cap) = match &msg.task_id {
            Some(t) => {
                self.gw.authorize(&self.bearer, t)?;
                if self.gw.was_closed(t) {
                    return Err(RpcError::unsupported(format!("task {t} is canceled")));
                }
                (self.gw.resume(t, &self.bearer).await?, None)
            }
            None => self.gw.open(&self.agent, self.owner.clone()).await?,
        };
        {
            let mut c = conv.lock().await;
            if c.agent != self.agent {
                return Err(RpcError::invalid_params(format!(
                    "task {} is a task of agent {:?}, not {:?}",
                    c.id(),
                    c.agent,
                    self.agent
                )));
            }
            if msg.context_id.is_some() {
                c.context = msg.context_id.clone();
            }
        }
        Ok((conv, msg, cap))
    }

    async fn send(&self, params: &Value) -> Result<Value, RpcError> {
        let (conv, msg, cap) = self.open_for(params).await?;
        let (id, context) = ids(&conv).await;
        let turn = self.gw.turn(conv, msg.input, None).await?;
        Ok(json!({"task": task_after(&self.agent, &id, &context, &turn, cap.as_deref())}))
    }

    async fn get(&self, params: &Value) -> Result<Value, RpcError> {
        let id = task_id_param(params)?;
        self.gw.authorize(&self.bearer, &id)?;
        if self.gw.was_closed(&id) {
            return Ok(canceled(&self.agent, &id, &id));
        }
        let conv = self.gw.resume(&id, &self.bearer).await?;
        let info = self.gw.info(&conv).await?;
        let (_, context) = ids(&conv).await;
        let last = conv.lock().await.last.clone();
        let seq = info.get("last_seq").and_then(Value::as_u64);
        let mut t = match last {
            Some(turn) => task_after(&self.agent, &id, &context, &turn, None),
            None => wire::task(
                &id,
                &context,
                wire::status(wire::INPUT_REQUIRED, None),
                vec![],
                meta(&self.agent, &id, seq, None),
            ),
        };
        t["metadata"]["opengrid"]["info"] = info;
        Ok(t)
    }

    async fn cancel(&self, params: &Value) -> Result<Value, RpcError> {
        let id = task_id_param(params)?;
        let sid = self.gw.authorize(&self.bearer, &id)?;
        if !self.gw.was_closed(&id) {
            self.gw.close(&sid).await?;
        }
        Ok(canceled(&self.agent, &id, &id))
    }
}

fn canceled(agent: &str, id: &str, context: &str) -> Value {
    wire::task(
        id,
        context,
        wire::status(wire::CANCELED, None),
        vec![],
        meta(agent, id, None, None),
    )
}

/// `(task id, context id)` of a conversation.
async fn ids(conv: &Shared) -> (String, String) {
    let c = conv.lock().await;
    let id = c.id().to_string();
    let context = c.context.clone().unwrap_or_else(|| id.clone());
    (id, context)
}

/// `SendStreamingMessage`: the turn runs in its own task and feeds the SSE stream.
fn stream(
    call: Call,
    rpc_id: Value,
    conv: Shared,
    msg: wire::Incoming,
    cap: Option<String>,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    tokio::spawn(async move {
        let (id, context) = ids(&conv).await;
        let agent = call.agent.clone();
        let send = |v: Value| {
            let _ = tx.send(wire::ok(&rpc_id, v));
        };
        let first = wire::task(
            &id,
            &context,
            wire::status(wire::WORKING, None),
            vec![],
            meta(&agent, &id, None, cap.as_deref()),
        );
        send(json!({ "task": first }));
        let (ctx_tx, mut chunks) = tokio::sync::mpsc::unbounded_channel::<String>();
        let stream_id = format!(
            "stream-{}",
            if msg.message_id.is_empty() {
                wire::now()
            } else {
                msg.message_id.clone()
            }
        );
        let forward = async {
            let mut n = 0u64;
            while let Some(c) = chunks.recv().await {
                let art =
                    json!({"artifactId": stream_id, "name": "stream", "parts": [{"text": c}]});
                send(wire::artifact_update(&id, &context, art, n > 0, false));
                n += 1;
            }
        };
        let (turn, ()) = tokio::join!(call.gw.turn(conv, msg.input, Some(ctx_tx)), forward);
        match turn {
            Ok(turn) => {
                let m = meta(&agent, &id, Some(turn.seq), cap.as_deref());
                let status = match &turn.outcome {
                    Ok(out) => {
                        send(wire::artifact_update(
                            &id,
                            &context,
                            wire::artifact(turn.seq, out),
                            false,
                            true,
                        ));
                        wire::status(wire::INPUT_REQUIRED, None)
                    }
                    Err(e) => wire::status(
                        wire::INPUT_REQUIRED,
                        Some(wire::agent_message(&id, &context, e)),
                    ),
                };
                send(wire::status_update(&id, &context, status, m));
            }
            Err(e) => {
                tracing::warn!(task = %id, error = %e, "A2A streamed turn failed");
                let _ = tx.send(wire::err(&rpc_id, &RpcError::from(e)));
            }
        }
    });
    let events = futures::stream::unfold(rx, |mut rx| async move {
        let v = rx.recv().await?;
        Some((Ok(Event::default().data(v.to_string())), rx))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_are_checked() {
        let ok = envelope(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "t"}}),
        );
        assert_eq!(ok.unwrap().0, "GetTask");
        for bad in [
            json!([]),
            json!({"id": 1, "method": "GetTask"}),
            json!({"jsonrpc": "2.0", "id": {}, "method": "GetTask"}),
            json!({"jsonrpc": "2.0", "id": 1}),
            json!({"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": 3}),
        ] {
            assert!(envelope(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refusals_keep_their_http_status() {
        let e = RpcError::from(GatewayError::Refused {
            status: 403,
            code: "forbidden".into(),
            message: "no".into(),
        });
        assert_eq!((e.code, e.http), (-32600, StatusCode::FORBIDDEN));
        assert_eq!(
            RpcError::from(GatewayError::UnknownSession("s".into())).code,
            -32001
        );
    }
}

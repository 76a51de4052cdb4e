//! Session-to-session calls on the node (ADR 0033): [`NodeCalls`] delivers a handler's
//! `ctx.call` to the callee wherever it lives, and `POST /sessions/{id}/calls` takes calls in.
//!
//! A call is authorized like a client input: the caller names the callee by its **capability**
//! (the bearer token the callee's clients use), so a session can call only the sessions whose
//! capabilities it was given. The caller's node reads the session id from the capability (signed
//! by the colony's RC), refuses a call that would close a cycle (`call_cycle`), and then, until
//! the call's deadline: delivers it in-process when the callee lives on this node, else asks the
//! directory where it lives and posts it there; a redirect (the callee moved), an unavailable
//! holder or a lost connection (the callee's node died: the RC fails the session over) means
//! "ask again". The callee answers a retried call (same key) with the answer it gave, so the
//! handler runs once however often the call is delivered.

use std::sync::{OnceLock, Weak};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use futures::future::BoxFuture;
use opengrid_actors::calls::{check_chain, CallRequest, Calls, MAX_CALL_DEADLINE};
use opengrid_actors::{HandlerError, SessionError};
use opengrid_session::SessionId;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::common::access::Bearer;
use crate::common::http::{parse_sid, ApiError};
use crate::node::NodeCore;

/// Pause between two deliveries of a call whose callee is moving or failing over.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// The body of `POST /sessions/{id}/calls`.
#[derive(Debug, Serialize, Deserialize)]
pub struct CallBody {
    /// The caller's idempotency key.
    pub key: String,
    /// The calling session.
    pub caller: String,
    /// The sessions waiting on the call, oldest first.
    #[serde(default)]
    pub chain: Vec<String>,
    /// The callee's input.
    pub input: Value,
}

/// The node's side of `ctx.call`.
pub struct NodeCalls {
    http: reqwest::Client,
    core: OnceLock<Weak<NodeCore>>,
}

impl NodeCalls {
    /// A caller of other nodes, `timeout` per attempt.
    pub fn new(timeout: Duration) -> Result<NodeCalls, String> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(NodeCalls {
            http,
            core: OnceLock::new(),
        })
    }

    /// Attaches the node, once.
    pub(crate) fn attach(&self, core: Weak<NodeCore>) {
        let _ = self.core.set(core);
    }

    fn core(&self) -> Result<std::sync::Arc<NodeCore>, HandlerError> {
        self.core
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| HandlerError::new("call", "the node is stopping"))
    }

    async fn deliver(&self, req: CallRequest) -> Result<Value, HandlerError> {
        let core = self.core()?;
        let callee = core
            .access
            .capability_session(&req.target)
            .map_err(|e| HandlerError::new("call_unauthorized", format!("call target: {e}")))?;
        check_chain(&req.chain, &callee)?;
        let sid = SessionId::new(callee.clone()).map_err(|e| {
            HandlerError::new(
                "call_unauthorized",
                format!("call target names {callee:?}: {e}"),
            )
        })?;
        let wait = req.deadline.min(MAX_CALL_DEADLINE);
        let deadline = tokio::time::Instant::now() + wait;
        let body = CallBody {
            key: req.key.clone(),
            caller: req.caller.clone(),
            chain: req.chain.clone(),
            input: req.input.clone(),
        };
        let mut last = String::from("no attempt");
        let mut next_at: Option<String> = None;
        while tokio::time::Instant::now() < deadline {
            // In process when the callee lives here.
            if next_at.is_none() {
                if let Some(s) = core.host.get(&sid) {
                    let attempt = s.call_json(
                        body.key.clone(),
                        body.caller.clone(),
                        body.chain.clone(),
                        body.input.clone(),
                    );
                    match tokio::time::timeout_at(deadline, attempt).await {
                        Err(_) => break,
                        Ok(Ok(answer)) => return answer,
                        Ok(Err(e @ SessionError::BadInput { .. })) => {
                            return Err(HandlerError::new("call_bad_input", e.to_string()))
                        }
                        Ok(Err(SessionError::Moved { location, .. })) if !location.is_empty() => {
                            next_at = Some(location);
                            continue;
                        }
                        Ok(Err(e)) => last = e.to_string(),
                    }
                }
            }
            let addr = match next_at.take() {
                Some(a) => Some(a),
                None => core
                    .lookup(&sid)
                    .await
                    .map(|(a, _)| a)
                    .filter(|a| !a.is_empty() && *a != core.spec.api),
            };
            if let Some(addr) = addr {
                let url = format!("{addr}/sessions/{sid}/calls");
                let sent = self
                    .http
                    .post(&url)
                    .bearer_auth(&req.target)
                    .json(&body)
                    .send();
                match tokio::time::timeout_at(deadline, sent).await {
                    Err(_) => break,
                    Ok(Err(e)) => last = format!("{addr}: {e}"),
                    Ok(Ok(r)) => {
                        let status = r.status();
                        let v: Value = r.json().await.unwrap_or(Value::Null);
                        if status.is_success() {
                            return answer_of(&v);
                        }
                        if status == StatusCode::TEMPORARY_REDIRECT {
                            next_at = v
                                .get("location")
                                .and_then(Value::as_str)
                                .map(|l| l.trim_end_matches('/').to_string());
                            continue;
                        }
                        let code = v.get("code").and_then(Value::as_str).unwrap_or("");
                        let message = v.get("message").and_then(Value::as_str).unwrap_or("");
                        let retryable = status == StatusCode::SERVICE_UNAVAILABLE
                            || status == StatusCode::TOO_MANY_REQUESTS
                            || status == StatusCode::NOT_FOUND
                            || status == StatusCode::CONFLICT && code == "fenced"
                            || status == StatusCode::GONE;
                        if !retryable {
                            return Err(HandlerError::new(
                                if status == StatusCode::UNAUTHORIZED
                                    || status == StatusCode::FORBIDDEN
                                {
                                    "call_unauthorized"
                                } else {
                                    "call_failed"
                                },
                                format!("{status} {code}: {message}"),
                            ));
                        }
                        last = format!("{status} {code}: {message}");
                    }
                }
            }
            tokio::time::sleep_until((tokio::time::Instant::now() + RETRY_PAUSE).min(deadline))
                .await;
        }
        Err(HandlerError::new(
            "call_deadline",
            format!("no answer from session {sid} within {wait:?} (last: {last})"),
        ))
    }
}

impl Calls for NodeCalls {
    fn call(&self, req: CallRequest) -> BoxFuture<'_, Result<Value, HandlerError>> {
        Box::pin(self.deliver(req))
    }
}

/// The JSON answer of the calls route: `{"output": …}` or `{"error": {code, message}}`.
fn answer_json(a: Result<Value, HandlerError>) -> Value {
    match a {
        Ok(v) => json!({ "output": v }),
        Err(e) => json!({ "error": e }),
    }
}

fn answer_of(v: &Value) -> Result<Value, HandlerError> {
    if let Some(e) = v.get("error") {
        return Err(serde_json::from_value(e.clone()).unwrap_or_else(|_| {
            HandlerError::new("call_failed", format!("unreadable error answer: {e}"))
        }));
    }
    Ok(v.get("output").cloned().unwrap_or(Value::Null))
}

/// `POST /sessions/{id}/calls`: a call from a session on another node, authorized by the
/// callee's capability.
pub(crate) async fn node_call(
    State(core): State<std::sync::Arc<NodeCore>>,
    Path(id): Path<String>,
    bearer: Bearer,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body?;
    let sid = parse_sid(&id)?;
    core.access.session(&bearer, sid.as_str())?;
    let call: CallBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("call body: {e}; expected {{\"key\", \"caller\", \"chain\", \"input\"}}"),
        )
    })?;
    if call.key.is_empty() || call.key.len() > 512 || call.chain.len() > 64 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_call",
            "a call needs a key of 1..=512 bytes and a chain of at most 64 sessions",
        ));
    }
    if let Err(e) = check_chain(&call.chain, sid.as_str()) {
        return Ok(Json(answer_json(Err(e))));
    }
    let Some(s) = core.host.get(&sid) else {
        return Err(super::api::elsewhere(&core, &sid, &format!("/sessions/{sid}/calls")).await);
    };
    super::api::check_serving(&core)?;
    let a = s
        .call_json(call.key, call.caller, call.chain, call.input)
        .await?;
    Ok(Json(answer_json(a)))
}

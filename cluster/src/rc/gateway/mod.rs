//! The protocol gateway of the RC (ADR 0036): the colony's agents over MCP (`/mcp`, Streamable
//! HTTP, [`mcp`]) and A2A (`/a2a/{agent}`, JSON-RPC 1.0, [`a2a`]).
//!
//! Every agent ([`catalog::agents`]) is an MCP tool and an A2A agent. A conversation is one
//! OpenGrid session: the gateway places it in-process ([`RcCore::place`]) and drives its inputs
//! with the Rust [`Client`] against the RC's own API, which follows handovers, failovers and
//! resumed streams. The gateway numbers the inputs (one [`Conversation`] per session, behind a
//! mutex: one turn at a time); what it keeps in memory is only a cache — a conversation it
//! forgot (restart, eviction) is re-attached from the session's info (`last_seq`).

pub mod a2a;
mod a2a_wire;
pub mod catalog;
pub mod config;
pub mod mcp;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::http::HeaderMap;
use axum::Router;
use opengrid_session::SessionId;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

pub use config::GatewaySection;

use crate::client::{Client, ClientError, Session};
use crate::common::access::Bearer;
use crate::common::http::ApiError;
use crate::rc::{lock, RcCore};

/// Why the gateway could not do something.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No alive node serves it and the registry does not know it.
    #[error("unknown agent {0:?}: no alive node serves it and the registry does not know it")]
    UnknownAgent(String),
    /// The colony does not know the session (never created, or closed).
    #[error("unknown session {0}")]
    UnknownSession(String),
    /// The caller's credentials do not open the session.
    #[error("{code}: {message}")]
    Refused {
        /// 401 or 403.
        status: u16,
        /// `unauthenticated`, `invalid_token`, `forbidden`, `bad_session_id`.
        code: String,
        /// What is missing.
        message: String,
    },
    /// The colony refused to place a session.
    #[error("placement refused: {0}")]
    Placement(String),
    /// The agent's manifest is not valid (a registry agent name the manifest refuses).
    #[error("agent {agent}: invalid manifest: {reason}")]
    Manifest {
        /// The agent.
        agent: String,
        /// Why.
        reason: String,
    },
    /// Delivering the input failed (after the client's retries).
    #[error("session {session}: {source}")]
    Session {
        /// The session.
        session: String,
        /// The client's error.
        #[source]
        source: ClientError,
    },
    /// The turn's task died.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<ApiError> for GatewayError {
    fn from(e: ApiError) -> Self {
        let s = |k: &str| {
            e.body
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        GatewayError::Refused {
            status: e.status.as_u16(),
            code: s("code"),
            message: s("message"),
        }
    }
}

/// One answered input of a conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct Turn {
    /// The input's seq.
    pub seq: u64,
    /// The handler's output, or its error (`code: message`).
    pub outcome: Result<Value, String>,
}

impl Turn {
    /// Reads a reply of [`Session::send`] / [`Session::send_streaming`].
    pub fn of(reply: &Value) -> Turn {
        let seq = reply.get("seq").and_then(Value::as_u64).unwrap_or(0);
        let kind = reply.get("kind").and_then(Value::as_str).unwrap_or("");
        let outcome = if let Some(e) = reply.get("error") {
            Err(error_text(e))
        } else if let Some(o) = reply.get("output") {
            Ok(o.clone())
        } else if kind == "duplicate" {
            Err(format!(
                "input {seq} was already processed (last processed: {}); its output is not available",
                reply.get("last").cloned().unwrap_or(Value::Null)
            ))
        } else {
            Err(format!("unexpected reply: {reply}"))
        };
        Turn { seq, outcome }
    }
}

fn error_text(e: &Value) -> String {
    match (
        e.get("code").and_then(Value::as_str),
        e.get("message").and_then(Value::as_str),
    ) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (None, Some(m)) => m.to_string(),
        _ => e
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| e.to_string()),
    }
}

/// A session the gateway drives: its client handle (which numbers the inputs) and its last turn.
#[derive(Debug)]
pub struct Conversation {
    session: Session,
    /// The agent (handler id or registry name).
    pub agent: String,
    /// The last answered turn (`None` after a re-attach).
    pub last: Option<Turn>,
    /// The A2A context id the client gave (default: the session id).
    pub context: Option<String>,
}

impl Conversation {
    /// The session id.
    pub fn id(&self) -> &str {
        &self.session.id
    }
}

/// A conversation shared by the requests that use it (one turn at a time).
pub type Shared = Arc<tokio::sync::Mutex<Conversation>>;

/// The gateway: the RC core, the client driving sessions, the conversations it knows.
pub struct Gateway {
    core: Arc<RcCore>,
    client: OnceLock<Client>,
    conversations: Mutex<HashMap<String, Shared>>,
    /// Sessions closed through the gateway (A2A `canceled`), until the set is full.
    closed: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gateway({:?})", self.core)
    }
}

/// How long one input may take, retries across a failover included.
const TURN_RETRY: Duration = Duration::from_secs(30);

impl Gateway {
    /// A gateway of `core`.
    pub fn new(core: Arc<RcCore>) -> Arc<Gateway> {
        Arc::new(Gateway {
            core,
            client: OnceLock::new(),
            conversations: Mutex::new(HashMap::new()),
            closed: Mutex::new(HashSet::new()),
        })
    }

    /// The RC core.
    pub fn core(&self) -> &Arc<RcCore> {
        &self.core
    }

    fn cfg(&self) -> &GatewaySection {
        &self.core.cfg.gateway
    }

    /// The client of the RC's own API (its address is known once the listener is bound).
    fn client(&self) -> &Client {
        self.client.get_or_init(|| {
            let mut c = Client::new(self.core.api()).with_timeout(Duration::from_secs(120));
            c.retry_for = TURN_RETRY;
            c
        })
    }

    /// The base URL agent cards advertise: `public_url`, else the request's `Host`, else the
    /// RC's bound address.
    pub fn base_url(&self, headers: &HeaderMap) -> String {
        if !self.cfg().public_url.is_empty() {
            return self.cfg().public_url.trim_end_matches('/').to_string();
        }
        headers
            .get(axum::http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
            .map(|h| format!("http://{h}"))
            .unwrap_or_else(|| self.core.api())
    }

    /// The colony's agents by name.
    pub fn agents(&self) -> std::collections::BTreeMap<String, catalog::Agent> {
        catalog::agents(&self.core)
    }

    /// The agent named `name`.
    pub fn agent(&self, name: &str) -> Result<catalog::Agent, GatewayError> {
        self.agents()
            .remove(name)
            .ok_or_else(|| GatewayError::UnknownAgent(name.to_string()))
    }

    /// The agent of the root agent card: `default_agent`, else the first by name.
    pub fn default_agent(&self) -> Option<catalog::Agent> {
        let mut all = self.agents();
        match self.cfg().default_agent.as_str() {
            "" => all.into_values().next(),
            name => all.remove(name),
        }
    }

    /// Lets in the holder of `session`'s capability (or an operator).
    pub fn authorize(&self, bearer: &Bearer, session: &str) -> Result<SessionId, GatewayError> {
        let sid = crate::common::http::parse_sid(session)?;
        self.core.access.session(bearer, sid.as_str())?;
        Ok(sid)
    }

    /// Places a new session of `agent` (quota owner `owner`; `None`: an operator) and returns
    /// its conversation and capability.
    #[tracing::instrument(skip(self), err)]
    pub async fn open(
        &self,
        agent: &str,
        owner: Option<String>,
    ) -> Result<(Shared, Option<String>), GatewayError> {
        let a = self.agent(agent)?;
        let m = catalog::manifest(&a, &self.cfg().egress_hosts).map_err(|reason| {
            GatewayError::Manifest {
                agent: agent.to_string(),
                reason,
            }
        })?;
        let p = self
            .core
            .place(&m, None, owner)
            .await
            .map_err(|e| GatewayError::Placement(e.to_string()))?;
        let mut session = self
            .client()
            .attach(p.session_id.as_str(), p.capability.as_deref(), 1);
        session.address = p.address.trim_end_matches('/').to_string();
        tracing::info!(session = %p.session_id, agent, node = %p.node_name, "gateway session placed");
        let conv = Conversation {
            session,
            agent: a.name,
            last: None,
            context: None,
        };
        Ok((self.insert(conv), p.capability))
    }

    /// The conversation of an existing session, for a caller `bearer` lets in; re-attached from
    /// the session's info (its `last_seq`) when the gateway does not hold it.
    #[tracing::instrument(skip(self, bearer), err)]
    pub async fn resume(&self, session: &str, bearer: &Bearer) -> Result<Shared, GatewayError> {
        let sid = self.authorize(bearer, session)?;
        if let Some(c) = lock(&self.conversations).get(sid.as_str()) {
            return Ok(c.clone());
        }
        let entry = self
            .core
            .lookup(&sid)
            .ok_or_else(|| GatewayError::UnknownSession(sid.to_string()))?;
        let cap = self.core.capability(&sid);
        let mut probe = self.client().attach(sid.as_str(), cap.as_deref(), 1);
        probe.address = entry.address.trim_end_matches('/').to_string();
        let info = probe.info().await.map_err(|source| GatewayError::Session {
            session: sid.to_string(),
            source,
        })?;
        let last = info.get("last_seq").and_then(Value::as_u64).unwrap_or(0);
        let mut session = self.client().attach(sid.as_str(), cap.as_deref(), last + 1);
        session.address = probe.address;
        tracing::info!(session = %sid, next_seq = last + 1, "gateway conversation re-attached");
        Ok(self.insert(Conversation {
            session,
            agent: catalog::agent_of(&entry.handler).to_string(),
            last: None,
            context: None,
        }))
    }

    /// Keeps `conv` (the one already kept for its session wins); forgets idle conversations
    /// when `max_conversations` is reached.
    fn insert(&self, conv: Conversation) -> Shared {
        let mut all = lock(&self.conversations);
        if all.len() >= self.cfg().max_conversations {
            all.retain(|_, c| Arc::strong_count(c) > 1);
        }
        all.entry(conv.id().to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(conv)))
            .clone()
    }

    /// Sends one input; with `chunks`, streams the reply (each chunk is sent there, in order).
    /// The turn runs in its own task: a caller that goes away does not cut it.
    pub async fn turn(
        &self,
        conv: Shared,
        input: Value,
        chunks: Option<UnboundedSender<String>>,
    ) -> Result<Turn, GatewayError> {
        let task = tokio::spawn(async move {
            let mut c = conv.lock().await;
            let sid = c.id().to_string();
            let reply = match chunks {
                Some(tx) => {
                    c.session
                        .send_streaming(input, move |_, chunk| {
                            let _ = tx.send(chunk.to_string());
                        })
                        .await
                }
                None => c.session.send(input).await,
            };
            let reply = reply.map_err(|source| GatewayError::Session {
                session: sid.clone(),
                source,
            })?;
            let turn = Turn::of(&reply);
            tracing::debug!(session = %sid, seq = turn.seq, ok = turn.outcome.is_ok(), "gateway turn");
            c.last = Some(turn.clone());
            Ok(turn)
        });
        task.await
            .map_err(|e| GatewayError::Internal(format!("turn task: {e}")))?
    }

    /// The session's info from its holder (`last_seq`, status, usage, epoch…).
    pub async fn info(&self, conv: &Shared) -> Result<Value, GatewayError> {
        let mut c = conv.lock().await;
        let sid = SessionId::new(c.id()).map_err(|e| GatewayError::Internal(e.to_string()))?;
        if let Some(e) = self.core.lookup(&sid) {
            c.session.address = e.address.trim_end_matches('/').to_string();
        }
        c.session
            .info()
            .await
            .map_err(|source| GatewayError::Session {
                session: sid.to_string(),
                source,
            })
    }

    /// Closes `session` (the caller was authorized) and forgets its conversation.
    #[tracing::instrument(skip(self), err)]
    pub async fn close(&self, session: &SessionId) -> Result<Value, GatewayError> {
        lock(&self.conversations).remove(session.as_str());
        let entry = self
            .core
            .lookup(session)
            .ok_or_else(|| GatewayError::UnknownSession(session.to_string()))?;
        let cap = self.core.capability(session);
        let mut s = self.client().attach(session.as_str(), cap.as_deref(), 1);
        s.address = entry.address.trim_end_matches('/').to_string();
        let r = s.close().await.map_err(|source| GatewayError::Session {
            session: session.to_string(),
            source,
        })?;
        let mut closed = lock(&self.closed);
        if closed.len() >= self.cfg().max_conversations {
            closed.clear();
        }
        closed.insert(session.to_string());
        Ok(r)
    }

    /// Whether `session` was closed through the gateway (and is still remembered as such).
    pub fn was_closed(&self, session: &str) -> bool {
        lock(&self.closed).contains(session)
    }
}

/// The gateway's routes (none when `[gateway] enabled = false`).
pub fn routes(core: &Arc<RcCore>) -> Router<Arc<RcCore>> {
    if !core.cfg.gateway.enabled {
        return Router::new();
    }
    let gw = Gateway::new(core.clone());
    Router::new()
        .route_service("/mcp", mcp::service(gw.clone()))
        .merge(a2a::routes(gw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replies_become_turns() {
        let t = Turn::of(&json!({"kind": "processed", "seq": 3, "output": 7, "durable": true}));
        assert_eq!(
            t,
            Turn {
                seq: 3,
                outcome: Ok(json!(7))
            }
        );
        let t = Turn::of(&json!({"kind": "processed", "seq": 4,
            "error": {"code": "overflow", "message": "too big"}}));
        assert_eq!(t.outcome, Err("overflow: too big".into()));
        let t = Turn::of(&json!({"kind": "duplicate", "seq": 2, "last": 4}));
        assert!(t.outcome.unwrap_err().contains("already processed"));
        let t = Turn::of(&json!({"kind": "duplicate", "seq": 2, "output": 5}));
        assert_eq!(t.outcome, Ok(json!(5)));
    }
}

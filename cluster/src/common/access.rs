//! Who may call what on the client APIs of the RC and the nodes (ADR 0026).
//!
//! A request proves its right with a bearer token ([`crate::common::token`]), in an
//! `Authorization: Bearer …` header or, where a client cannot set headers (a browser's
//! `EventSource` or WebSocket), an `access_token` query parameter:
//! - a **session capability**, returned by `POST /sessions`, opens that one session: its inputs,
//!   info, WebSocket, close, and re-creating it by id;
//! - an **operator token** opens everything: status, listings, dashboard data, drain, handover,
//!   and any session.
//!
//! | who | RC | node |
//! |---|---|---|
//! | anyone | `GET /health`, `GET /metrics`, `POST /sessions` (new id), `POST /admission/probe`, dashboard assets | `GET /health`, `GET /metrics`, dashboard assets |
//! | holder of the session's capability | lookup, redirects, re-create by id | info, inputs, WebSocket, close |
//! | operator | + `GET /status`, `/ui/events`, `/ui/ledger`, handover, the agent registry (`/agents…`, ADR 0030) | + `GET /sessions`, handover, drain |
//! | member node (token signed by its own key) | `GET /agents/by-hash/{hash}` only | — |
//!
//! Operators of an RC: its own key and its `operators`; of a node: its own key, its RC's, and
//! its `operators`. Capabilities are honoured when signed by the RC (on a node: the RC it joined,
//! or the pinned `rc_id`). A missing token is `401 unauthenticated`; a bad, expired or foreign one
//! `401 invalid_token`; a valid one that does not open the resource `403 forbidden`.
//!
//! A token that verified is remembered by its blake3 hash until it expires ([`VERIFIED_CACHE`]
//! entries at most, forgotten all at once when full or when the trusted keys change), so a
//! session's inputs pay one signature check, not one per input.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};

use crate::common::http::ApiError;
use crate::common::identity::NodeId;
use crate::common::token::{self, now_s, TokenError};

/// Name of the query parameter carrying a token.
pub const QUERY_PARAM: &str = "access_token";

/// The bearer token of a request, if it has one (header first, then `?access_token=`).
#[derive(Clone, Debug, Default)]
pub struct Bearer(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for Bearer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let from_header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(|t| t.trim().to_string());
        let from_query = || {
            parts.uri.query().and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == QUERY_PARAM)
                    .map(|(_, v)| v.into_owned())
            })
        };
        Ok(Bearer(from_header.or_else(from_query)))
    }
}

/// The address a request came from (set per connection by [`crate::common::serve::serve`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientAddr(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// Who a request was let in as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// An operator (its DID).
    Operator(String),
    /// The holder of one session's capability (the session id).
    Holder(String),
    /// A member node of the colony, with a token signed by its own key (its DID): let in only
    /// where nodes serve each other (blobs).
    Member(String),
}

/// Most verified tokens remembered.
pub const VERIFIED_CACHE: usize = 16_384;

/// What a verified token is, remembered until `exp`.
#[derive(Clone, Debug)]
struct Verified {
    /// `Some(session)` for a capability, `None` for an operator token.
    session: Option<String>,
    /// The signer.
    iss: String,
    /// Expiry, seconds since the Unix epoch.
    exp: u64,
}

/// The keys one process honours.
#[derive(Debug)]
pub struct Access {
    operators: RwLock<Vec<NodeId>>,
    issuers: RwLock<Vec<NodeId>>,
    verified: Mutex<HashMap<[u8; 32], Verified>>,
    /// Benchmarks only (`security_off_for_measurement`): everyone is let in as an operator.
    open: bool,
}

/// The caller every request is let in as when security is off for a benchmark.
pub const OPEN_CALLER: &str = "security-off-for-measurement";

fn unauthenticated(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        format!("{what} needs a bearer token (Authorization: Bearer …)"),
    )
}

fn invalid(e: TokenError) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", e.to_string())
}

fn push_unique(v: &RwLock<Vec<NodeId>>, id: NodeId) {
    let mut v = v.write().unwrap_or_else(|p| p.into_inner());
    if !v.contains(&id) {
        v.push(id);
    }
}

impl Access {
    /// Operators `operators` (the process's own key first); capabilities signed by `issuers`.
    pub fn new(operators: Vec<NodeId>, issuers: Vec<NodeId>) -> Self {
        Access {
            operators: RwLock::new(operators),
            issuers: RwLock::new(issuers),
            verified: Mutex::new(HashMap::new()),
            open: false,
        }
    }

    /// Benchmarks only: lets every request in, as an operator, with or without a token (a
    /// config's `security_off_for_measurement`, which needs `dev`).
    pub fn open_for_measurement(mut self) -> Self {
        self.open = true;
        self
    }

    /// Whether security is off ([`Access::open_for_measurement`]).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Also honours `rc`: its capabilities, and it as an operator (a node, once joined).
    pub fn trust_rc(&self, rc: NodeId) {
        push_unique(&self.issuers, rc);
        push_unique(&self.operators, rc);
        self.cache().clear();
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Verified>> {
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A remembered verification of `token`, if it has not expired.
    fn remembered(&self, token: &str) -> Option<Verified> {
        let key = *blake3::hash(token.as_bytes()).as_bytes();
        let mut c = self.cache();
        match c.get(&key) {
            Some(v) if v.exp > now_s() => Some(v.clone()),
            Some(_) => {
                c.remove(&key);
                None
            }
            None => None,
        }
    }

    fn remember(&self, token: &str, v: Verified) {
        let mut c = self.cache();
        if c.len() >= VERIFIED_CACHE {
            c.clear();
        }
        c.insert(*blake3::hash(token.as_bytes()).as_bytes(), v);
    }

    fn verify_operator(&self, t: &str) -> Result<String, TokenError> {
        if let Some(v) = self.remembered(t).filter(|v| v.session.is_none()) {
            return Ok(v.iss);
        }
        let c = token::verify_operator(t, &self.operators())?;
        self.remember(
            t,
            Verified {
                session: None,
                iss: c.iss.clone(),
                exp: c.exp,
            },
        );
        Ok(c.iss)
    }

    /// The operator keys (join tokens are signed by one of them).
    pub fn operator_keys(&self) -> Vec<NodeId> {
        self.operators()
    }

    fn operators(&self) -> Vec<NodeId> {
        self.operators
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn issuers(&self) -> Vec<NodeId> {
        self.issuers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Lets in an operator only; `what` names the resource in the error.
    pub fn operator(&self, bearer: &Bearer, what: &str) -> Result<Caller, ApiError> {
        if self.open {
            return Ok(Caller::Operator(OPEN_CALLER.into()));
        }
        let t = bearer.0.as_deref().ok_or_else(|| unauthenticated(what))?;
        match self.verify_operator(t) {
            Ok(iss) => Ok(Caller::Operator(iss)),
            // A capability is a valid token, just not one that opens this.
            Err(_) if token::verify_session_any(t, &self.issuers()).is_ok() => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("{what} is for operators; a session capability does not open it"),
            )),
            Err(e) => Err(invalid(e)),
        }
    }

    /// Whether `bearer` is a valid operator token here (for limits operators are exempt from).
    pub fn is_operator(&self, bearer: &Bearer) -> bool {
        self.open
            || bearer
                .0
                .as_deref()
                .is_some_and(|t| self.verify_operator(t).is_ok())
    }

    /// Lets in an operator, or a member node of the colony (`members`) presenting an
    /// operator-format token signed by its own key (`token::mint_operator` with the node's
    /// identity). Member tokens are verified every time (never cached with operator tokens: they
    /// open nothing else).
    pub fn operator_or_member(
        &self,
        bearer: &Bearer,
        members: &[NodeId],
        what: &str,
    ) -> Result<Caller, ApiError> {
        if self.open {
            return Ok(Caller::Operator(OPEN_CALLER.into()));
        }
        let t = bearer.0.as_deref().ok_or_else(|| unauthenticated(what))?;
        if let Ok(iss) = self.verify_operator(t) {
            return Ok(Caller::Operator(iss));
        }
        token::verify_operator(t, members)
            .map(|c| Caller::Member(c.iss))
            .map_err(|e| {
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!("{what} needs an operator token or a member node's token: {e}"),
                )
            })
    }

    /// The session a capability is for (checked against the issuers, not yet against any
    /// session): how a session-to-session call names its callee (ADR 0033). With security off
    /// for a benchmark, a bare session id names itself.
    pub fn capability_session(&self, token: &str) -> Result<String, String> {
        if self.open && !token.contains('.') {
            return Ok(token.to_string());
        }
        token::verify_session_any(token, &self.issuers())
            .map(|c| c.sub)
            .map_err(|e| e.to_string())
    }

    /// Lets in the holder of `session`'s capability, or an operator.
    pub fn session(&self, bearer: &Bearer, session: &str) -> Result<Caller, ApiError> {
        if self.open {
            return Ok(Caller::Operator(OPEN_CALLER.into()));
        }
        let what = format!("session {session}");
        let t = bearer.0.as_deref().ok_or_else(|| unauthenticated(&what))?;
        let forbidden = |other: &str| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("the capability is for session {other}, not {session}"),
            )
        };
        if let Some(v) = self.remembered(t) {
            return match v.session {
                Some(s) if s == session => Ok(Caller::Holder(s)),
                Some(other) => Err(forbidden(&other)),
                None => Ok(Caller::Operator(v.iss)),
            };
        }
        match token::verify_session(t, &self.issuers(), session) {
            Ok(c) => {
                self.remember(
                    t,
                    Verified {
                        session: Some(c.sub.clone()),
                        iss: c.iss,
                        exp: c.exp,
                    },
                );
                Ok(Caller::Holder(session.to_string()))
            }
            Err(TokenError::OtherSession(other)) => Err(forbidden(&other)),
            Err(e) => match self.verify_operator(t) {
                Ok(iss) => Ok(Caller::Operator(iss)),
                Err(_) => Err(invalid(e)),
            },
        }
    }
}

/// Parses configured operator DIDs (validated by the config).
pub fn parse_operators(dids: &[String]) -> Vec<NodeId> {
    dids.iter().filter_map(|d| NodeId::parse(d).ok()).collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::common::identity::Identity;

    fn bearer(t: &str) -> Bearer {
        Bearer(Some(t.to_string()))
    }

    #[test]
    fn capabilities_open_their_session_and_operators_open_everything() {
        let (rc, op, stranger) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let a = Access::new(vec![rc.id(), op.id()], vec![rc.id()]);
        let cap = token::mint_session(&rc, "s1", Duration::from_secs(60)).unwrap();
        assert_eq!(
            a.session(&bearer(&cap), "s1").unwrap(),
            Caller::Holder("s1".into())
        );
        let e = a.session(&bearer(&cap), "s2").unwrap_err();
        assert_eq!(
            (e.status, &e.body["code"]),
            (StatusCode::FORBIDDEN, &"forbidden".into())
        );
        let e = a.operator(&bearer(&cap), "status").unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        let ot = token::mint_operator(&op, Duration::from_secs(60)).unwrap();
        assert!(matches!(
            a.operator(&bearer(&ot), "status"),
            Ok(Caller::Operator(_))
        ));
        assert!(matches!(
            a.session(&bearer(&ot), "s9"),
            Ok(Caller::Operator(_))
        ));
        // A stranger's own tokens, and no token at all.
        let forged = token::mint_session(&stranger, "s1", Duration::from_secs(60)).unwrap();
        let e = a.session(&bearer(&forged), "s1").unwrap_err();
        assert_eq!(
            (e.status, &e.body["code"]),
            (StatusCode::UNAUTHORIZED, &"invalid_token".into())
        );
        let self_made = token::mint_operator(&stranger, Duration::from_secs(60)).unwrap();
        assert_eq!(
            a.operator(&bearer(&self_made), "status")
                .unwrap_err()
                .status,
            StatusCode::UNAUTHORIZED
        );
        let e = a.operator(&Bearer(None), "status").unwrap_err();
        assert_eq!(
            (e.status, &e.body["code"]),
            (StatusCode::UNAUTHORIZED, &"unauthenticated".into())
        );
        assert_eq!(
            a.session(&bearer("garbage"), "s1").unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn a_remembered_token_answers_as_the_first_check_did() {
        let (rc, op) = (Identity::generate(), Identity::generate());
        let a = Access::new(vec![rc.id(), op.id()], vec![rc.id()]);
        let cap = token::mint_session(&rc, "s1", Duration::from_secs(60)).unwrap();
        let ot = token::mint_operator(&op, Duration::from_secs(60)).unwrap();
        for _ in 0..2 {
            assert_eq!(
                a.session(&bearer(&cap), "s1").unwrap(),
                Caller::Holder("s1".into())
            );
            assert_eq!(
                a.session(&bearer(&cap), "s2").unwrap_err().status,
                StatusCode::FORBIDDEN
            );
            assert_eq!(
                a.operator(&bearer(&cap), "status").unwrap_err().status,
                StatusCode::FORBIDDEN
            );
            assert!(matches!(
                a.session(&bearer(&ot), "s9"),
                Ok(Caller::Operator(_))
            ));
            assert!(a.is_operator(&bearer(&ot)));
        }
        assert_eq!(a.cache().len(), 2);
        // Expired entries are not answered from memory.
        a.cache().values_mut().for_each(|v| v.exp = 0);
        assert!(a.remembered(&cap).is_none());
        assert!(
            a.session(&bearer(&cap), "s1").is_ok(),
            "verified again while valid"
        );
    }

    #[test]
    fn a_node_honours_its_rc_once_it_trusts_it() {
        let (node, rc) = (Identity::generate(), Identity::generate());
        let a = Access::new(vec![node.id()], vec![]);
        let cap = token::mint_session(&rc, "s1", Duration::from_secs(60)).unwrap();
        let rc_op = token::mint_operator(&rc, Duration::from_secs(60)).unwrap();
        assert!(a.session(&bearer(&cap), "s1").is_err());
        assert!(a.operator(&bearer(&rc_op), "drain").is_err());
        a.trust_rc(rc.id());
        a.trust_rc(rc.id());
        assert!(a.session(&bearer(&cap), "s1").is_ok());
        assert!(a.operator(&bearer(&rc_op), "drain").is_ok());
        let own = token::mint_operator(&node, Duration::from_secs(60)).unwrap();
        assert!(a.operator(&bearer(&own), "drain").is_ok());
    }
}

//! Outbound HTTP from a handler, through the node (ADR 0032): [`SessionContext::fetch`](crate::SessionContext::fetch)
//! is a journaled effect whose request carries an `Idempotency-Key` header (`session:seq:index`,
//! the same on every retry of that effect), sent by the node's [`Egress`] service only to hosts the
//! session's manifest declares (`[egress] hosts`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use opengrid_session::SessionId;
use serde::{Deserialize, Serialize};

/// The header naming a fetch's idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// An HTTP request a handler sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// Absolute `http://` or `https://` URL.
    pub url: String,
    /// Header names and values.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// A `POST` of `body` as JSON.
    pub fn post_json(url: impl Into<String>, body: &serde_json::Value) -> HttpRequest {
        HttpRequest {
            method: "POST".into(),
            url: url.into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }

    /// A `GET`.
    pub fn get(url: impl Into<String>) -> HttpRequest {
        HttpRequest {
            method: "GET".into(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
}

/// The answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header names and values.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value, crate::HandlerError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            crate::HandlerError::new("fetch_body", format!("the answer is not JSON: {e}"))
        })
    }
}

/// A boxed future of an [`Egress`] send.
pub type EgressFuture<'a> = Pin<Box<dyn Future<Output = Result<HttpResponse, String>> + Send + 'a>>;

/// How a node sends a session's HTTP requests (it checks the session's allowed hosts).
pub trait Egress: Send + Sync + 'static {
    /// Sends `req` for `session`; `Err(reason)` when refused or failed before an answer.
    fn send<'a>(&'a self, session: &'a SessionId, req: HttpRequest) -> EgressFuture<'a>;
}

/// The node service handlers reach [`Egress`] through (register with `Services::with`).
#[derive(Clone)]
pub struct EgressService(pub Arc<dyn Egress>);

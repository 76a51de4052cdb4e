//! Durable effects (feature `effects`, interface `opengrid:agent@0.2.0`; ADR 0032, 0034).

use crate::bindings::api::effects as wit;
use crate::bindings::api::types;
use crate::{Ctx, Error, Value};

fn from_wit(e: types::AgentError) -> Error {
    Error::new(e.code, e.message)
}

/// An HTTP request the node sends for the session ([`Ctx::fetch`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// `GET`, `POST`, … (at most 16 bytes).
    pub method: String,
    /// Absolute `http://` or `https://` URL (at most 8 KiB); its host must be among the session
    /// manifest's `[egress] hosts`.
    pub url: String,
    /// Header names and values (at most 128, 64 KiB together).
    pub headers: Vec<(String, String)>,
    /// Body bytes (at most 16 MiB).
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// A `GET`.
    pub fn get(url: impl Into<String>) -> HttpRequest {
        HttpRequest {
            method: "GET".into(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `POST` of `body` as JSON.
    pub fn post_json(url: impl Into<String>, body: &Value) -> HttpRequest {
        HttpRequest {
            method: "POST".into(),
            url: url.into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
        }
    }

    /// The same request with one more header (e.g. `authorization`).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> HttpRequest {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// The answer to a [`HttpRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code (any: a 500 is an answer, not an error).
    pub status: u16,
    /// Header names and values.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as JSON; `Err` with code `fetch_body` when it is not.
    pub fn json(&self) -> Result<Value, Error> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::new("fetch_body", format!("the answer is not JSON: {e}")))
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Durable effects: each result is recorded by the node before anything that depends on it
/// leaves the session, and when the input is handled again (a restart, a failover or handover
/// before it was acknowledged) the recorded result comes back and the effect does not run again.
/// Effects of one input must run in the same order every time (another effect in a recorded
/// place is a `nondeterministic` error). Errors carry the node's code (`fetch`,
/// `nondeterministic`, `too_many_effects`, `effect_not_durable`, …); return them with `?` and the
/// client sees that code.
impl Ctx {
    /// Sends `request` through the node: only to hosts the session's manifest lists in
    /// `[egress] hosts`, redirects not followed, answers up to 16 MiB. The request carries an
    /// `Idempotency-Key` header (`<session>:<seq>:<effect index>`, replacing any the agent set)
    /// that stays the same when a crash cuts the request off and the retry sends it again, so the
    /// remote side can deduplicate. Err code `fetch`: refused or no answer; a recorded error
    /// replays like an answer.
    pub fn fetch(&self, request: &HttpRequest) -> Result<HttpResponse, Error> {
        let r = wit::fetch(&wit::HttpRequest {
            method: request.method.clone(),
            url: request.url.clone(),
            headers: request.headers.clone(),
            body: request.body.clone(),
        })
        .map_err(from_wit)?;
        Ok(HttpResponse {
            status: r.status,
            headers: r.headers,
            body: r.body,
        })
    }

    /// Wall-clock time, milliseconds since the Unix epoch; the same when the input is handled
    /// again (unlike `std::time::SystemTime`, which an agent must not base answers on).
    pub fn now_ms(&self) -> Result<u64, Error> {
        wit::now_ms().map_err(from_wit)
    }

    /// A random number; the same when the input is handled again.
    pub fn random_u64(&self) -> Result<u64, Error> {
        wit::random_u64().map_err(from_wit)
    }
}

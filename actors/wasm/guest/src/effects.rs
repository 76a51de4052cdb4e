//! Durable effects (feature `effects`, interface `opengrid:agent@0.2.0`; ADR 0032, 0033, 0034).

use std::time::Duration;

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

/// When a timer fires ([`Ctx::schedule`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// This long after the scheduling input ran (the same instant when it is handled again).
    After(Duration),
    /// At this wall-clock time, milliseconds since the Unix epoch.
    At(u64),
}

/// Who sent the input being handled ([`Ctx::source`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The session's client, with its seq.
    Client(u64),
    /// A timer the session set ([`Ctx::schedule`]), by id.
    Timer(String),
    /// Another session's [`Ctx::call`], by the calling session.
    Call {
        /// The calling session.
        caller: String,
    },
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

    /// Emits one chunk of the reply to the client input being handled (a token, a line; at most
    /// 1 MiB): the client's stream readers get it at once, before the reply. Returns its offset.
    /// When the input is handled again a chunk already at its offset is not sent again. Inputs
    /// from a timer or a call have no stream: the chunk is dropped. Err code `emit`.
    pub fn emit(&self, chunk: &str) -> Result<u64, Error> {
        wit::emit(chunk).map_err(from_wit)
    }

    /// Sets a timer: `input` (at most 64 KiB of JSON) comes back to [`Agent::handle`](crate::Agent::handle)
    /// once, at `when`, with [`Ctx::source`] `Source::Timer(id)`. Kept with the session's checkpoint:
    /// it moves with a handover, survives a failover, wakes a hibernated session. Set when this
    /// input completes (not if it fails). Returns the timer's id (the same when the input is
    /// handled again). Err codes `schedule`, `too_many_timers`.
    pub fn schedule(&self, when: When, input: &Value) -> Result<String, Error> {
        let when = match when {
            When::After(d) => wit::When::AfterMs(d.as_millis().min(u64::MAX as u128) as u64),
            When::At(ms) => wit::When::AtMs(ms),
        };
        wit::schedule(when, &input.to_string()).map_err(from_wit)
    }

    /// Cancels a timer [`Ctx::schedule`] set; whether it was pending. Takes effect when this
    /// input completes.
    pub fn cancel(&self, timer: &str) -> Result<bool, Error> {
        wit::cancel(timer).map_err(from_wit)
    }

    /// Calls another session and waits for its answer: `target` is its capability (the bearer
    /// token its clients use), `input` its input (at most 1 MiB of JSON). Exactly once at the
    /// callee, however often this input is handled; follows the callee across handovers and
    /// failovers until `deadline` (at most 300 s). Err codes `call`, `call_deadline`,
    /// `call_cycle` (the callee already waits in this call chain), `call_depth`, or the callee's
    /// own error.
    pub fn call(&self, target: &str, input: &Value, deadline: Duration) -> Result<Value, Error> {
        let ms = deadline.as_millis().min(u64::MAX as u128) as u64;
        let answer = wit::call(target, &input.to_string(), ms).map_err(from_wit)?;
        serde_json::from_str(&answer)
            .map_err(|e| Error::new("call", format!("the answer is not JSON: {e}")))
    }

    /// Who sent the input being handled: the client, a timer, another session.
    pub fn source(&self) -> Source {
        match wit::source() {
            Some(wit::InputSource::Client(seq)) => Source::Client(seq),
            Some(wit::InputSource::Timer(id)) => Source::Timer(id),
            Some(wit::InputSource::Call(caller)) => Source::Call { caller },
            // Only in `init`, where no `Ctx` exists.
            None => Source::Client(0),
        }
    }
}

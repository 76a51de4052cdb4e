//! The `effects` imports of `opengrid:agent@0.2.0` (ADR 0034): each one is the session's
//! [`SessionContext`] method of the same name (`fetch`, `now_ms`, `random_u64`: ADR 0032; `emit`,
//! `schedule`, `cancel`, `call`, `source`: ADR 0033), which journals it, so a guest's effects
//! replay exactly like a native handler's. Nothing is journaled here.
//!
//! What a guest hands an import is checked first (sizes, HTTP tokens), and every failure comes
//! back to the guest as an `agent-error` with the node's code: a guest cannot make the node panic
//! through an import. Effects are refused in `init` (`effect_outside_input`): they belong to an
//! input, whose seq keys their journal.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opengrid_actors::calls::MAX_CALL_DEADLINE;
use opengrid_actors::record::MAX_TIMER_INPUT;
use opengrid_actors::{HandlerError, HttpRequest, SessionContext, Source, When};

use crate::host::v0_2::api::effects as wit;
use crate::host::v0_2::api::types::AgentError;
use crate::host::CallState;

/// Longest method name a guest may send.
pub const MAX_METHOD_BYTES: usize = 16;
/// Longest URL a guest may send (it also names the effect in the journal).
pub const MAX_URL_BYTES: usize = 8 << 10;
/// Most headers in one request.
pub const MAX_HEADERS: usize = 128;
/// Header names and values of one request together.
pub const MAX_HEADER_BYTES: usize = 64 << 10;
/// Largest request body: the size of the largest answer the node records.
pub const MAX_REQUEST_BODY_BYTES: usize = opengrid_actors::effects::MAX_EFFECT_RESULT_BYTES;
/// Longest timer id `cancel` takes (ids are idempotency keys: `session:source:index`).
pub const MAX_TIMER_ID_BYTES: usize = 4 << 10;
/// Longest capability `call` takes.
pub const MAX_CALL_TARGET_BYTES: usize = 16 << 10;
/// Largest input of a call.
pub const MAX_CALL_INPUT_BYTES: usize = 1 << 20;

/// How long one call has waited for its durable effects (a model's answer may take a minute): the
/// handler's outer deadline, which bounds guest code and other host calls, is extended by it.
/// Effects carry their own bounds (the node's egress timeout).
#[derive(Debug, Default)]
pub(crate) struct EffectClock {
    state: Mutex<ClockState>,
}

#[derive(Debug, Default)]
struct ClockState {
    /// Effects that finished.
    spent: Duration,
    /// The effect in flight, since when.
    since: Option<Instant>,
}

impl EffectClock {
    fn lock(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An effect starts; it stops when the guard drops (also when the call is cancelled).
    fn enter(&self) -> Waiting<'_> {
        self.lock().since = Some(Instant::now());
        Waiting(self)
    }

    /// Time spent in effects up to `now`, the one in flight included.
    pub(crate) fn spent(&self, now: Instant) -> Duration {
        let s = self.lock();
        s.spent
            + s.since
                .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }
}

struct Waiting<'a>(&'a EffectClock);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        if let Some(t) = s.since.take() {
            s.spent += t.elapsed();
        }
    }
}

fn error(e: HandlerError) -> AgentError {
    AgentError {
        code: e.code,
        message: e.message,
    }
}

fn refused(code: &str, message: String) -> AgentError {
    AgentError {
        code: code.into(),
        message,
    }
}

impl CallState {
    /// The session's context, or the refusal of an effect outside an input.
    fn effect_context(
        &self,
        effect: &str,
    ) -> Result<(SessionContext, Arc<EffectClock>), AgentError> {
        match &self.call.ctx {
            Some(ctx) => Ok((ctx.clone(), self.call.effects.clone())),
            None => Err(refused(
                "effect_outside_input",
                format!("`{effect}` was called in init: effects belong to an input (their results are recorded under its seq); call it from handle"),
            )),
        }
    }
}

/// An HTTP token (RFC 9110 `tchar`s), as methods and header names are.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Checks a guest's request against the bounds above; the egress checks the URL and the host.
fn checked_request(r: wit::HttpRequest) -> Result<HttpRequest, String> {
    if r.method.len() > MAX_METHOD_BYTES || !is_token(&r.method) {
        return Err(format!(
            "method {:?}: an HTTP token of at most {MAX_METHOD_BYTES} bytes",
            r.method.chars().take(32).collect::<String>()
        ));
    }
    if r.url.len() > MAX_URL_BYTES {
        return Err(format!(
            "the url is {} bytes, over {MAX_URL_BYTES}",
            r.url.len()
        ));
    }
    if r.headers.len() > MAX_HEADERS {
        return Err(format!("{} headers, over {MAX_HEADERS}", r.headers.len()));
    }
    let header_bytes: usize = r.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Err(format!(
            "the headers are {header_bytes} bytes, over {MAX_HEADER_BYTES}"
        ));
    }
    for (name, value) in &r.headers {
        if !is_token(name) {
            return Err(format!("header name {name:?} is not an HTTP token"));
        }
        if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(format!("header {name:?}: a control character in its value"));
        }
    }
    if r.body.len() > MAX_REQUEST_BODY_BYTES {
        return Err(format!(
            "the body is {} bytes, over {MAX_REQUEST_BODY_BYTES}",
            r.body.len()
        ));
    }
    Ok(HttpRequest {
        method: r.method,
        url: r.url,
        headers: r.headers,
        body: r.body,
    })
}

impl wit::Host for CallState {
    async fn fetch(&mut self, request: wit::HttpRequest) -> Result<wit::HttpResponse, AgentError> {
        let (ctx, clock) = self.effect_context("fetch")?;
        let request = checked_request(request).map_err(|m| refused("fetch", m))?;
        let _waiting = clock.enter();
        let r = ctx.fetch(request).await.map_err(error)?;
        Ok(wit::HttpResponse {
            status: r.status,
            headers: r.headers,
            body: r.body,
        })
    }

    async fn now_ms(&mut self) -> Result<u64, AgentError> {
        let (ctx, clock) = self.effect_context("now-ms")?;
        let _waiting = clock.enter();
        ctx.now_ms().await.map_err(error)
    }

    async fn random_u64(&mut self) -> Result<u64, AgentError> {
        let (ctx, clock) = self.effect_context("random-u64")?;
        let _waiting = clock.enter();
        ctx.random_u64().await.map_err(error)
    }

    async fn emit(&mut self, chunk: String) -> Result<u64, AgentError> {
        let (ctx, clock) = self.effect_context("emit")?;
        let _waiting = clock.enter();
        ctx.emit(&chunk).await.map_err(error)
    }

    async fn schedule(&mut self, when: wit::When, input: String) -> Result<String, AgentError> {
        let (ctx, clock) = self.effect_context("schedule")?;
        let input = json_input(&input, MAX_TIMER_INPUT, "a timer input")
            .map_err(|m| refused("schedule", m))?;
        let when = match when {
            wit::When::AfterMs(ms) => When::After(Duration::from_millis(ms)),
            wit::When::AtMs(ms) => When::At(ms),
        };
        let _waiting = clock.enter();
        ctx.schedule(when, input).await.map_err(error)
    }

    async fn cancel(&mut self, timer: String) -> Result<bool, AgentError> {
        let (ctx, clock) = self.effect_context("cancel")?;
        if timer.len() > MAX_TIMER_ID_BYTES {
            return Err(refused(
                "cancel",
                format!(
                    "a timer id of {} bytes is over {MAX_TIMER_ID_BYTES}",
                    timer.len()
                ),
            ));
        }
        let _waiting = clock.enter();
        ctx.cancel(&timer).await.map_err(error)
    }

    async fn call(
        &mut self,
        target: String,
        input: String,
        deadline_ms: u64,
    ) -> Result<String, AgentError> {
        let (ctx, clock) = self.effect_context("call")?;
        if target.len() > MAX_CALL_TARGET_BYTES {
            return Err(refused(
                "call",
                format!(
                    "a target of {} bytes is over {MAX_CALL_TARGET_BYTES}",
                    target.len()
                ),
            ));
        }
        let deadline = Duration::from_millis(deadline_ms);
        if deadline > MAX_CALL_DEADLINE {
            return Err(refused(
                "call",
                format!("a deadline of {deadline:?} is over {MAX_CALL_DEADLINE:?}"),
            ));
        }
        let input = json_input(&input, MAX_CALL_INPUT_BYTES, "a call's input")
            .map_err(|m| refused("call", m))?;
        let _waiting = clock.enter();
        let answer = ctx.call(&target, input, deadline).await.map_err(error)?;
        Ok(answer.to_string())
    }

    fn source(&mut self) -> Option<wit::InputSource> {
        let ctx = self.call.ctx.as_ref()?;
        Some(match ctx.source() {
            Source::Client(seq) => wit::InputSource::Client(seq.0),
            Source::Timer(id) => wit::InputSource::Timer(id.clone()),
            Source::Call { caller, .. } => wit::InputSource::Call(caller.clone()),
        })
    }
}

/// JSON text from a guest, bounded before it is parsed.
fn json_input(text: &str, limit: usize, what: &str) -> Result<serde_json::Value, String> {
    if text.len() > limit {
        return Err(format!("{what} of {} bytes is over {limit}", text.len()));
    }
    serde_json::from_str(text).map_err(|e| format!("{what} is not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, headers: Vec<(&str, &str)>, body: usize) -> wit::HttpRequest {
        wit::HttpRequest {
            method: method.into(),
            url: "http://127.0.0.1:1/x".into(),
            headers: headers
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: vec![0; body],
        }
    }

    #[test]
    fn requests_are_bounded_and_well_formed() {
        assert!(checked_request(req("POST", vec![("content-type", "a/b\tc")], 3)).is_ok());
        for bad in [
            req("", vec![], 0),
            req("GET /", vec![], 0),
            req(&"A".repeat(17), vec![], 0),
            req("GET", vec![("bad name", "v")], 0),
            req("GET", vec![("x", "a\r\nInjected: 1")], 0),
            req("GET", vec![("x", "v"); MAX_HEADERS + 1], 0),
            req("GET", vec![("x", &"v".repeat(MAX_HEADER_BYTES))], 0),
            req("GET", vec![], MAX_REQUEST_BODY_BYTES + 1),
        ] {
            let what = format!("{} {:?}", bad.method, bad.headers.first());
            assert!(checked_request(bad).is_err(), "{what}");
        }
        let mut long = req("GET", vec![], 0);
        long.url = format!("http://a/{}", "x".repeat(MAX_URL_BYTES));
        assert!(checked_request(long).is_err());
    }

    #[test]
    fn the_clock_counts_effects_in_flight_and_done() {
        let c = EffectClock::default();
        let t0 = Instant::now();
        assert_eq!(c.spent(t0), Duration::ZERO);
        {
            let _w = c.enter();
            std::thread::sleep(Duration::from_millis(5));
            assert!(c.spent(Instant::now()) >= Duration::from_millis(5));
        }
        let done = c.spent(Instant::now());
        assert!(done >= Duration::from_millis(5));
        assert_eq!(c.spent(Instant::now() + Duration::from_secs(9)), done);
    }
}

//! `tool`: a tool session other sessions call (`ctx.call`, ADR 0033), e.g. the
//! [`assistant`](crate::assistant)'s lookups. It answers a query deterministically and counts the
//! calls it handled, so tests can see that a call ran exactly once.
//!
//! Input: `{"query": "…", "work_ms": 0, "ping": "<url>", "call": "<capability>"}` (`work_ms`: time
//! the lookup takes; `ping`: an OpenAI-compatible API base the tool tells it started, then that
//! the first tell is durable (two journaled
//! `ctx.fetch`, so tests can see a call in progress); `call`: ask that session in turn, with `{"user": query}`, to show that a call back to a
//! session already waiting is refused with `call_cycle`). Output: `{"result": "…", "handled": n}`;
//! `{"status": true}` answers `{"handled": n, "callers": [..]}`.

use opengrid_actors::{HandlerError, SessionContext, SessionHandler, Source};
use opengrid_session::SessionId;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The tool's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolState {
    /// Queries handled.
    pub handled: u64,
    /// The sessions that called it (newest 64).
    pub callers: Vec<String>,
}

/// The tool.
#[derive(Debug, Clone, Copy)]
pub struct Tool;

impl SessionHandler for Tool {
    type State = ToolState;
    type Input = Value;
    type Output = Value;

    fn id(&self) -> &str {
        "tool"
    }

    fn init(&self, _session: &SessionId) -> ToolState {
        ToolState::default()
    }

    async fn handle(
        &self,
        st: &mut ToolState,
        input: Value,
        ctx: &SessionContext,
    ) -> Result<Value, HandlerError> {
        if input["status"].as_bool() == Some(true) {
            return Ok(json!({"handled": st.handled, "callers": st.callers}));
        }
        let q = input["query"]
            .as_str()
            .ok_or_else(|| HandlerError::new("bad_input", "expected {\"query\": \"…\"}"))?;
        if let Some(base) = input["ping"].as_str() {
            // Two tells: the second starts only once the first's result is durable on the
            // session's copies (an effect starts after the ones before it are journaled, ADR
            // 0032), so a watcher that sees the second knows a crash now cannot repeat the first.
            let url = format!("{}/chat/completions", base.trim_end_matches('/'));
            for what in ["started", "working"] {
                let body = json!({"model": "tool", "messages": [{"role": "user", "content": format!("tool {what}: {q}")}]});
                ctx.fetch(opengrid_actors::HttpRequest::post_json(url.clone(), &body))
                    .await?;
            }
        }
        if let Some(ms) = input["work_ms"].as_u64().filter(|ms| *ms > 0) {
            tokio::time::sleep(std::time::Duration::from_millis(ms.min(60_000))).await;
        }
        let nested = match input["call"].as_str() {
            Some(cap) => Some(
                ctx.call(cap, json!({"user": q}), std::time::Duration::from_secs(5))
                    .await?,
            ),
            None => None,
        };
        st.handled += 1;
        if let Source::Call { caller, .. } = ctx.source() {
            st.callers.push(caller.clone());
            if st.callers.len() > 64 {
                st.callers.remove(0);
            }
        }
        let words = q.split_whitespace().count();
        Ok(json!({"result": format!("{words} words"), "handled": st.handled, "nested": nested}))
    }
}

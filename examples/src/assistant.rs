//! `assistant`: a chat assistant whose turns call an OpenAI-compatible chat-completions endpoint
//! through the node (`ctx.fetch`, a journaled effect: ADR 0032). A turn that was cut off after the
//! model answered — the node killed, the session failed over — is answered on the client's retry
//! from the journal, without a second model call; a call cut off mid-way is sent again with the
//! same `Idempotency-Key`, which the endpoint can deduplicate.
//!
//! The endpoint is node config: `ASSISTANT_MODEL_URL` (the API base, e.g.
//! `https://api.openai.com/v1` or `http://127.0.0.1:8080/v1`) and `ASSISTANT_MODEL`
//! (default `gpt-4o-mini`) in the node's environment (not `OPENGRID_*`: those are node config
//! fields); the session's manifest must allow its host in `[egress] hosts`.
//!
//! Input: `{"user": "…", "think_ms": 0}` (`think_ms`: extra time the turn takes after the model
//! answered, to make the window between an effect and the reply visible in tests and demos).
//! Output: `{"answer": "…", "turn": n}`.

use opengrid_actors::{HandlerError, HttpRequest, SessionContext, SessionHandler};
use opengrid_session::SessionId;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `user` or `assistant`.
    pub role: String,
    /// Text.
    pub content: String,
}

/// Most messages kept (older ones are dropped from what the model sees and from the state).
pub const MAX_MESSAGES: usize = 64;

/// The assistant.
#[derive(Debug, Clone)]
pub struct Assistant {
    /// API base URL (`…/v1`), if configured.
    pub base_url: Option<String>,
    /// Model name sent to the endpoint.
    pub model: String,
}

impl Assistant {
    /// Configured from `ASSISTANT_MODEL_URL` and `ASSISTANT_MODEL`.
    pub fn from_env() -> Assistant {
        Assistant {
            base_url: std::env::var("ASSISTANT_MODEL_URL")
                .ok()
                .filter(|u| !u.is_empty()),
            model: std::env::var("ASSISTANT_MODEL").unwrap_or_else(|_| "gpt-4o-mini".into()),
        }
    }
}

impl SessionHandler for Assistant {
    type State = Vec<Message>;
    type Input = Value;
    type Output = Value;

    fn id(&self) -> &str {
        "assistant"
    }

    fn init(&self, _session: &SessionId) -> Vec<Message> {
        Vec::new()
    }

    async fn handle(
        &self,
        messages: &mut Vec<Message>,
        input: Value,
        ctx: &SessionContext,
    ) -> Result<Value, HandlerError> {
        let user = input["user"]
            .as_str()
            .ok_or_else(|| HandlerError::new("bad_input", "expected {\"user\": \"…\"}"))?;
        let base = self.base_url.as_deref().ok_or_else(|| {
            HandlerError::new(
                "no_model_endpoint",
                "this node has no ASSISTANT_MODEL_URL configured",
            )
        })?;
        messages.push(Message {
            role: "user".into(),
            content: user.to_string(),
        });
        let body = json!({"model": self.model, "messages": messages});
        let url = format!("{}/chat/completions", base.trim_end_matches('/'));
        let resp = ctx.fetch(HttpRequest::post_json(url, &body)).await?;
        if resp.status != 200 {
            return Err(HandlerError::new(
                "model",
                format!(
                    "the model endpoint answered {}: {}",
                    resp.status,
                    String::from_utf8_lossy(&resp.body)
                        .chars()
                        .take(300)
                        .collect::<String>()
                ),
            ));
        }
        let answer = resp.json()?["choices"][0]["message"]["content"]
            .as_str()
            .ok_or_else(|| HandlerError::new("model", "no choices[0].message.content"))?
            .to_string();
        if let Some(ms) = input["think_ms"].as_u64().filter(|ms| *ms > 0) {
            tokio::time::sleep(std::time::Duration::from_millis(ms.min(60_000))).await;
        }
        messages.push(Message {
            role: "assistant".into(),
            content: answer.clone(),
        });
        if messages.len() > MAX_MESSAGES {
            let cut = messages.len() - MAX_MESSAGES;
            messages.drain(..cut);
        }
        Ok(json!({"answer": answer, "turn": messages.len() / 2}))
    }
}

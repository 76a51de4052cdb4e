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
//! It uses every durable effect (ADRs 0032, 0033): before the model it asks a **tool session**
//! (`ctx.call`, e.g. the [`tool`](crate::tool) example) when the turn names one, **streams** its
//! answer word by word (`ctx.emit`), and sets a **reminder** (`ctx.schedule`) that comes back as an
//! input later, across handovers, failovers and hibernation; a reminder asks the model again
//! (`fetch`), and its answer is kept in the state.
//!
//! Input, one of:
//! - a turn: `{"user": "…", "tool": "<tool session's capability>", "remind_ms": 0, "think_ms": 0}`
//!   (`tool`, `remind_ms` optional; `think_ms`: extra time the turn takes after the model
//!   answered, to make the window between an effect and the reply visible in tests and demos).
//!   Output: `{"answer": "…", "turn": n, "tool": …, "reminder": "<timer id>"}`.
//! - `{"reminder": "…"}`: what a reminder delivers (the assistant sets it; a client may too).
//! - `{"status": true}`: `{"turns", "reminders": [..], "fired": n}`.

use opengrid_actors::{HandlerError, HttpRequest, SessionContext, SessionHandler, When};
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

/// How long a tool call may take, retries across the tool session's moves included.
pub const TOOL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

/// The assistant's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chat {
    /// The conversation the model sees.
    pub messages: Vec<Message>,
    /// Turns taken.
    pub turns: u64,
    /// What each reminder that fired brought back (the model's answer to it).
    pub reminders: Vec<String>,
}

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
    type State = Chat;
    type Input = Value;
    type Output = Value;

    fn id(&self) -> &str {
        "assistant"
    }

    fn version(&self) -> u32 {
        2
    }

    fn init(&self, _session: &SessionId) -> Chat {
        Chat::default()
    }

    async fn handle(
        &self,
        chat: &mut Chat,
        input: Value,
        ctx: &SessionContext,
    ) -> Result<Value, HandlerError> {
        if input["status"].as_bool() == Some(true) {
            return Ok(json!({
                "turns": chat.turns,
                "reminders": chat.reminders,
                "fired": chat.reminders.len(),
            }));
        }
        if let Some(r) = input["reminder"].as_str() {
            // A reminder fired: ask the model about it (journaled like any turn's call).
            let answer = self
                .ask(
                    ctx,
                    &[Message {
                        role: "user".into(),
                        content: format!("reminder: {r}"),
                    }],
                )
                .await?;
            chat.reminders.push(answer.clone());
            return Ok(json!({"reminder": r, "answer": answer}));
        }
        let user = input["user"].as_str().ok_or_else(|| {
            HandlerError::new(
                "bad_input",
                "expected {\"user\": \"…\"}, {\"reminder\": \"…\"} or {\"status\": true}",
            )
        })?;
        // The tool first (a session-to-session call: exactly once, journaled here).
        let tool = match input["tool"].as_str() {
            Some(cap) => {
                let mut q = json!({"query": user});
                // Test knobs passed to the tool: its work time, a session it calls in turn.
                if let Some(ms) = input["tool_work_ms"].as_u64() {
                    q["work_ms"] = json!(ms);
                }
                if let Some(p) = input["tool_ping"].as_str() {
                    q["ping"] = json!(p);
                }
                if let Some(c) = input["tool_call"].as_str() {
                    q["call"] = json!(c);
                }
                Some(ctx.call(cap, q, TOOL_DEADLINE).await?)
            }
            None => None,
        };
        chat.messages.push(Message {
            role: "user".into(),
            content: match &tool {
                Some(t) => format!("{user}\n(tool: {})", t["result"].as_str().unwrap_or("")),
                None => user.to_string(),
            },
        });
        let answer = self.ask(ctx, &chat.messages).await?;
        if let Some(ms) = input["think_ms"].as_u64().filter(|ms| *ms > 0) {
            tokio::time::sleep(std::time::Duration::from_millis(ms.min(60_000))).await;
        }
        // Stream the answer word by word (the reply carries it whole too).
        for (i, word) in answer.split_inclusive(' ').enumerate() {
            ctx.emit(word).await?;
            if let Some(ms) = input["chunk_ms"]
                .as_u64()
                .filter(|ms| *ms > 0 && i < 10_000)
            {
                tokio::time::sleep(std::time::Duration::from_millis(ms.min(1_000))).await;
            }
        }
        let reminder = match input["remind_ms"].as_u64() {
            Some(ms) => Some(
                ctx.schedule(
                    When::After(std::time::Duration::from_millis(ms)),
                    json!({"reminder": user}),
                )
                .await?,
            ),
            None => None,
        };
        chat.messages.push(Message {
            role: "assistant".into(),
            content: answer.clone(),
        });
        if chat.messages.len() > MAX_MESSAGES {
            let cut = chat.messages.len() - MAX_MESSAGES;
            chat.messages.drain(..cut);
        }
        chat.turns += 1;
        Ok(json!({"answer": answer, "turn": chat.turns, "tool": tool, "reminder": reminder}))
    }
}

impl Assistant {
    /// One chat-completions call through the node (`ctx.fetch`: journaled, idempotency key).
    async fn ask(
        &self,
        ctx: &SessionContext,
        messages: &[Message],
    ) -> Result<String, HandlerError> {
        let base = self.base_url.as_deref().ok_or_else(|| {
            HandlerError::new(
                "no_model_endpoint",
                "this node has no ASSISTANT_MODEL_URL configured",
            )
        })?;
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
        Ok(resp.json()?["choices"][0]["message"]["content"]
            .as_str()
            .ok_or_else(|| HandlerError::new("model", "no choices[0].message.content"))?
            .to_string())
    }
}

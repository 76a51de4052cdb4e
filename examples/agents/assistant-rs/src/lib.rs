//! `assistant-rs`: the `assistant` example (examples/src/assistant.rs) as an agent package. Each
//! turn calls an OpenAI-compatible chat-completions endpoint through the node (`ctx.fetch`, a
//! durable effect: ADR 0032, 0034). A turn cut off after the model answered (the node killed, the
//! session failed over) is answered on the client's retry from the journal, without a second
//! model call; a call cut off mid-way is sent again with the same `Idempotency-Key`.
//!
//! Inputs:
//! - a turn, `{"user": "…", "model_url": "http://127.0.0.1:8080/v1", "model": "gpt-4o-mini",
//!   "think_ms": 0}`: `model_url` (the API base) and `model` are kept in the state from the turn
//!   that gave them; `think_ms` makes the turn take that much longer after the model answered (at
//!   most 10 s), to make the window between the effect and the reply visible in tests and demos.
//!   The session's manifest must list the endpoint's host in `[egress] hosts`. The answer is
//!   streamed word by word (`ctx.emit`) before the reply. Output: `{"answer", "turn", "at"}`.
//! - a delegated turn, `{"user": "…", "delegate": "<capability>"}`: another assistant session
//!   answers (`ctx.call`, exactly once), and its answer is this turn's.
//! - a reminder, `{"remind": "…", "in_ms": n}`: a timer (`ctx.schedule`) puts the text into the
//!   conversation in `n` ms, as a note the model sees in later turns. Output: `{"timer": id}`.
//! - `{"history": true}`: the conversation so far.
//!
//! Each request carries a `seed` drawn with `ctx.random_u64()` and each message the time of
//! `ctx.now_ms()`: both recorded, so a replayed turn sends and keeps the same values.
use opengrid_agent::serde_json::{json, Value};
use opengrid_agent::{export, Agent, Ctx, Error, HttpRequest, Source, When};
use serde::{Deserialize, Serialize};

/// Most messages kept (older ones are dropped from what the model sees and from the state).
const MAX_MESSAGES: usize = 64;
/// Longest `think_ms`.
const MAX_THINK_MS: u64 = 10_000;
/// How long a delegated turn waits for the other session.
const DELEGATE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Message {
    role: String,
    content: String,
    /// Unix ms (`ctx.now_ms()`).
    at: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Conversation {
    model_url: Option<String>,
    model: Option<String>,
    messages: Vec<Message>,
}

impl Conversation {
    fn push(&mut self, role: &str, content: String, at: u64) {
        self.messages.push(Message {
            role: role.into(),
            content,
            at,
        });
        if self.messages.len() > MAX_MESSAGES {
            let cut = self.messages.len() - MAX_MESSAGES;
            self.messages.drain(..cut);
        }
    }
}

struct Assistant;

impl Agent for Assistant {
    type State = Conversation;

    fn init(_session: &str) -> Conversation {
        Conversation::default()
    }

    fn handle(c: &mut Conversation, input: Value, ctx: &Ctx) -> Result<Value, Error> {
        if let (Source::Timer(_), Some(note)) = (ctx.source(), input["reminder"].as_str()) {
            let at = ctx.now_ms()?;
            c.push("user", format!("(reminder) {note}"), at);
            return Ok(json!({"reminded": note}));
        }
        if let Some(note) = input["remind"].as_str() {
            let after = std::time::Duration::from_millis(input["in_ms"].as_u64().unwrap_or(0));
            let id = ctx.schedule(When::After(after), &json!({ "reminder": note }))?;
            return Ok(json!({ "timer": id }));
        }
        if input["history"] == true {
            return Ok(json!({ "messages": c.messages }));
        }
        let user = input["user"]
            .as_str()
            .ok_or_else(|| Error::new("bad_input", "expected {\"user\": \"…\"}"))?;
        if let Some(target) = input["delegate"].as_str() {
            let now = ctx.now_ms()?;
            let theirs = ctx.call(target, &json!({ "user": user }), DELEGATE_DEADLINE)?;
            let answer = theirs["answer"]
                .as_str()
                .ok_or_else(|| Error::new("delegate", format!("no answer in {theirs}")))?
                .to_string();
            c.push("user", user.to_string(), now);
            c.push("assistant", answer.clone(), now);
            return Ok(json!({"answer": answer, "turn": c.messages.len() / 2, "at": now}));
        }
        if let Some(url) = input["model_url"].as_str() {
            c.model_url = Some(url.to_string());
        }
        if let Some(model) = input["model"].as_str() {
            c.model = Some(model.to_string());
        }
        let base = c.model_url.clone().ok_or_else(|| {
            Error::new(
                "no_model_endpoint",
                "give the endpoint once: {\"user\": \"…\", \"model_url\": \"http://host:port/v1\"}",
            )
        })?;
        let now = ctx.now_ms()?;
        c.push("user", user.to_string(), now);
        let seed = ctx.random_u64()? % (1 << 31);
        let messages: Vec<Value> = c
            .messages
            .iter()
            .map(|m| json!({"role": m.role, "content": m.content}))
            .collect();
        let body = json!({
            "model": c.model.as_deref().unwrap_or("gpt-4o-mini"),
            "messages": messages,
            "seed": seed,
        });
        let url = format!("{}/chat/completions", base.trim_end_matches('/'));
        let resp = ctx.fetch(&HttpRequest::post_json(url, &body))?;
        if resp.status != 200 {
            let text: String = resp.text().chars().take(300).collect();
            return Err(Error::new(
                "model",
                format!("the model endpoint answered {}: {text}", resp.status),
            ));
        }
        let answer = resp.json()?["choices"][0]["message"]["content"]
            .as_str()
            .ok_or_else(|| Error::new("model", "no choices[0].message.content"))?
            .to_string();
        // Stream readers see the answer word by word as soon as the model answered (an emit also
        // makes the recorded answer durable first).
        for word in answer.split_inclusive(' ') {
            ctx.emit(word)?;
        }
        if let Some(ms) = input["think_ms"].as_u64().filter(|ms| *ms > 0) {
            // Not an effect: the time a turn takes is not recorded (WASI's clock, the guest
            // suspended meanwhile).
            std::thread::sleep(std::time::Duration::from_millis(ms.min(MAX_THINK_MS)));
        }
        c.push("assistant", answer.clone(), now);
        Ok(json!({"answer": answer, "turn": c.messages.len() / 2, "at": now}))
    }
}

export!(Assistant);

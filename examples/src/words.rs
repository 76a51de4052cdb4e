//! `words`: streams its input back word by word (`ctx.emit`, ADR 0033) and answers how many words
//! it has said in all — the smallest handler with a streamed reply, for the README's client
//! section, the Python client's and the MCP/A2A gateway's tests.
//!
//! Input: a string, or `{"text": "…", "chunk_ms": n}` (`chunk_ms`: a pause after each word, at
//! most 1 s, so a stream can be watched or cut mid-way). Output: `{"words": n, "total": t}`
//! (`n` in this input, `t` in the session so far).

use opengrid_actors::{HandlerError, SessionContext, SessionHandler};
use opengrid_session::SessionId;
use serde_json::{json, Value};

/// Most words one input streams.
const MAX_WORDS: usize = 10_000;

/// The words handler; its state is the words said so far.
#[derive(Debug, Clone, Copy)]
pub struct Words;

impl SessionHandler for Words {
    type State = u64;
    type Input = Value;
    type Output = Value;

    fn id(&self) -> &str {
        "words"
    }

    fn init(&self, _session: &SessionId) -> u64 {
        0
    }

    async fn handle(
        &self,
        total: &mut u64,
        input: Value,
        ctx: &SessionContext,
    ) -> Result<Value, HandlerError> {
        let (text, pause) = match &input {
            Value::String(s) => (s.as_str(), 0),
            v => (
                v["text"].as_str().ok_or_else(|| {
                    HandlerError::new("bad_input", "expected a string or {\"text\": \"…\"}")
                })?,
                v["chunk_ms"].as_u64().unwrap_or(0).min(1_000),
            ),
        };
        let words: Vec<&str> = text.split_inclusive(' ').collect();
        if words.len() > MAX_WORDS {
            return Err(HandlerError::new(
                "bad_input",
                format!("{} words; at most {MAX_WORDS}", words.len()),
            ));
        }
        for w in &words {
            ctx.emit(w).await?;
            if pause > 0 {
                // The `chunk_ms` knob: a word's worth of work, so a stream can be watched or cut
                // mid-way. An async sleep: no thread is blocked; the session is busy with this
                // input meanwhile, as with any handler that takes time (one input at a time).
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            }
        }
        *total += words.len() as u64;
        Ok(json!({"words": words.len(), "total": *total}))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use opengrid_actors::{HostConfig, Reply, Services, SessionHost};
    use opengrid_session::{CheckpointPolicy, Epoch, MemoryCheckpointStore, Seq};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_each_word_counts_them_and_refuses_a_non_text() {
        let host = SessionHost::new(
            Arc::new(MemoryCheckpointStore::new()),
            HostConfig::default(),
            Services::default(),
        )
        .await
        .unwrap();
        let h = host
            .start(
                Arc::new(Words),
                SessionId::new("w").unwrap(),
                Epoch(1),
                CheckpointPolicy::synchronous(),
            )
            .await
            .unwrap();
        let out = |r: Reply<Value>| match r {
            Reply::Processed { output, .. } => output,
            r => panic!("{r:?}"),
        };
        let r = h.send(Seq(1), json!("one two three")).await.unwrap();
        assert_eq!(out(r).unwrap(), json!({"words": 3, "total": 3}));
        let s = h.stream(Seq(1), 0, Duration::ZERO).await.unwrap();
        assert_eq!(s.chunks, vec!["one ", "two ", "three"]);
        let r = h.send(Seq(2), json!({"text": "four five"})).await.unwrap();
        assert_eq!(out(r).unwrap(), json!({"words": 2, "total": 5}));
        let r = h.send(Seq(3), json!({"nope": 1})).await.unwrap();
        assert_eq!(out(r).unwrap_err().code, "bad_input");
        host.shutdown().await;
    }
}

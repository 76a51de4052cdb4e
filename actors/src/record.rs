//! What the runtime keeps of a session beside the handler's state (ADR 0033): where each input
//! source stands (the client's seq, pending timers, answered calls), the completed streamed
//! replies a client may still resume, and the effect journal of the next input. It rides in the
//! checkpoint's opaque runtime field (`Checkpoint::journal`), so it is replicated, handed over and
//! failed over with the state it belongs to.
//!
//! **Steps and sources.** A checkpoint's seq counts the session's *steps*: every input the handler
//! processed, whatever sent it. A client numbers its own inputs (`client_seq`); a timer firing and
//! a call from another session are steps too, deduplicated by their own identity (the timer's id,
//! the caller's idempotency key). A session that only ever sees its client has `step ==
//! client_seq`, and its record is empty: its checkpoints keep format 1, byte for byte.

use std::collections::VecDeque;

use opengrid_session::Seq;
use serde::{Deserialize, Serialize};

use crate::effects::{Entry, Journal};

/// Most pending timers of one session.
pub const MAX_TIMERS: usize = 1024;
/// Answered calls remembered per session (a caller retrying an older call gets `call_forgotten`).
pub const MAX_CALL_ANSWERS: usize = 256;
/// Completed streamed replies kept for resumption.
pub const MAX_STREAMS_KEPT: usize = 16;
/// Bytes of chunks kept for resumption, all kept streams together (the newest always stays).
pub const MAX_STREAM_BYTES: usize = 1 << 20;
/// Largest input a timer may carry.
pub const MAX_TIMER_INPUT: usize = 64 << 10;
/// Largest remembered call answer (a bigger one is answered once, then `call_forgotten`).
pub const MAX_CALL_ANSWER: usize = 256 << 10;

const RECORD_FORMAT: u8 = 2;

/// Who sent an input.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Source {
    /// The session's client, with its seq.
    Client(Seq),
    /// A timer the session set, by id.
    Timer(String),
    /// Another session, by the caller's idempotency key for the call.
    Call {
        /// The caller's key (`caller:source:index`): the same on every retry of the call.
        key: String,
        /// The calling session.
        caller: String,
    },
}

impl Source {
    /// The part of an effect's idempotency key that names the input: the client's seq (as before
    /// timers existed), `t<id>` for a timer, `c<caller's key>` for a call. Independent of the step, so
    /// a retried input sends the same keys even if another source took the step it had.
    pub fn key(&self) -> String {
        match self {
            Source::Client(s) => s.0.to_string(),
            Source::Timer(id) => format!("t{id}"),
            Source::Call { key, .. } => format!("c{key}"),
        }
    }
}

/// A pending timer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timer {
    /// Its id (deterministic: the scheduling input's source key and effect index).
    pub id: String,
    /// When it fires, milliseconds since the Unix epoch.
    pub due_ms: u64,
    /// The input it delivers, JSON.
    pub input: String,
}

/// A call already answered: a retry of it gets the same answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallAnswer {
    /// The caller's key.
    pub key: String,
    /// JSON of the `Result<Value, HandlerError>` the callee's handler gave.
    pub answer: String,
}

/// A streamed reply whose input completed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamDone {
    /// The client seq of the input.
    pub seq: Seq,
    /// Its chunks, in order.
    pub chunks: Vec<String>,
}

/// The runtime's part of a session's checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sys {
    /// The newest client input processed.
    pub client_seq: Seq,
    /// Pending timers (any order; fired earliest first).
    pub timers: Vec<Timer>,
    /// Recently answered calls, oldest first.
    pub calls: VecDeque<CallAnswer>,
    /// Recently completed streamed replies, oldest first.
    pub streams: VecDeque<StreamDone>,
}

impl Sys {
    /// Whether this record says nothing beyond `step` (a client-only session).
    pub fn is_trivial(&self, step: Seq) -> bool {
        self.client_seq == step
            && self.timers.is_empty()
            && self.calls.is_empty()
            && self.streams.is_empty()
    }

    /// The earliest pending timer.
    pub fn next_timer(&self) -> Option<&Timer> {
        self.timers.iter().min_by_key(|t| (t.due_ms, t.id.clone()))
    }

    /// The answer given to call `key`, if remembered.
    pub fn call_answer(&self, key: &str) -> Option<&str> {
        self.calls
            .iter()
            .rev()
            .find(|c| c.key == key)
            .map(|c| c.answer.as_str())
    }

    /// Remembers a call's answer (bounded; answers over [`MAX_CALL_ANSWER`] are not kept).
    pub fn remember_call(&mut self, key: String, answer: String) {
        if answer.len() > MAX_CALL_ANSWER {
            return;
        }
        self.calls.push_back(CallAnswer { key, answer });
        while self.calls.len() > MAX_CALL_ANSWERS {
            self.calls.pop_front();
        }
    }

    /// Keeps a completed stream (bounded by count and bytes; the newest always stays).
    pub fn keep_stream(&mut self, seq: Seq, chunks: Vec<String>) {
        self.streams.retain(|s| s.seq != seq);
        self.streams.push_back(StreamDone { seq, chunks });
        let size = |s: &StreamDone| s.chunks.iter().map(|c| c.len() + 8).sum::<usize>();
        let mut total: usize = self.streams.iter().map(size).sum();
        while self.streams.len() > 1
            && (self.streams.len() > MAX_STREAMS_KEPT || total > MAX_STREAM_BYTES)
        {
            if let Some(s) = self.streams.pop_front() {
                total -= size(&s);
            }
        }
    }
}

/// The effects the next input already ran, and which input they belong to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Its source.
    pub source: Source,
    /// The step it was handled at (the journal is stored with the checkpoint before it).
    pub step: Seq,
    /// The recorded results.
    pub entries: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
struct RecordV2 {
    format: u8,
    sys: Sys,
    pending: Option<Pending>,
}

/// Encodes the runtime record of a checkpoint at `step` (empty when trivial and no journal: the
/// checkpoint keeps format 1).
pub fn encode(step: Seq, sys: &Sys, pending: Option<&Pending>) -> Vec<u8> {
    if pending.is_none() && sys.is_trivial(step) {
        return Vec::new();
    }
    #[derive(Serialize)]
    struct Ref<'a> {
        format: u8,
        sys: &'a Sys,
        pending: Option<&'a Pending>,
    }
    bincode::serde::encode_to_vec(
        Ref {
            format: RECORD_FORMAT,
            sys,
            pending,
        },
        bincode::config::standard(),
    )
    .unwrap_or_default()
}

/// Decodes the runtime record of a checkpoint at `step`. Bytes of the first journal format (ADR
/// 0032: a client-only session's journal) read as that; unreadable bytes as a trivial record (a
/// warning: the next input's effects then run again, with the same idempotency keys).
pub fn decode(step: Seq, bytes: &[u8]) -> (Sys, Option<Pending>) {
    let trivial = Sys {
        client_seq: step,
        ..Default::default()
    };
    match bytes.first() {
        None => (trivial, None),
        Some(1) => {
            let pending = Journal::decode(bytes).map(|j| Pending {
                source: Source::Client(j.seq),
                step: j.seq,
                entries: j.entries,
            });
            (trivial, pending)
        }
        Some(_) => {
            let cfg = bincode::config::standard().with_limit::<{ 1 << 30 }>();
            match bincode::serde::decode_from_slice::<RecordV2, _>(bytes, cfg) {
                Ok((r, n)) if n == bytes.len() && r.format == RECORD_FORMAT => (r.sys, r.pending),
                _ => {
                    tracing::warn!(
                        "unreadable session runtime record ignored (timers and stream history lost)"
                    );
                    (trivial, None)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_only_is_empty_and_round_trips() {
        let sys = Sys {
            client_seq: Seq(4),
            ..Default::default()
        };
        assert!(encode(Seq(4), &sys, None).is_empty());
        assert_eq!(decode(Seq(4), &[]), (sys.clone(), None));
        let mut s2 = sys.clone();
        s2.timers.push(Timer {
            id: "1:0".into(),
            due_ms: 9,
            input: "{}".into(),
        });
        s2.remember_call("k".into(), "1".into());
        s2.keep_stream(Seq(4), vec!["a".into(), "b".into()]);
        let p = Pending {
            source: Source::Timer("x".into()),
            step: Seq(6),
            entries: vec![],
        };
        let b = encode(Seq(5), &s2, Some(&p));
        assert_eq!(decode(Seq(5), &b), (s2, Some(p)));
        // Garbage reads as trivial, never panics.
        assert_eq!(decode(Seq(5), &[2, 200, 1, 1]).0.client_seq, Seq(5));
        assert_eq!(decode(Seq(5), &[7; 40]).1, None);
    }

    #[test]
    fn first_journal_format_still_reads() {
        let j = Journal::new(Seq(3), vec![]);
        let (sys, p) = decode(Seq(2), &j.encode());
        assert_eq!(sys.client_seq, Seq(2));
        assert_eq!(p.unwrap().source, Source::Client(Seq(3)));
    }

    #[test]
    fn bounds_hold() {
        let mut s = Sys::default();
        for i in 0..(MAX_CALL_ANSWERS + 10) {
            s.remember_call(format!("k{i}"), "1".into());
        }
        assert_eq!(s.calls.len(), MAX_CALL_ANSWERS);
        assert!(s.call_answer("k0").is_none());
        assert_eq!(
            s.call_answer(&format!("k{}", MAX_CALL_ANSWERS + 9)),
            Some("1")
        );
        for i in 0..40u64 {
            s.keep_stream(Seq(i), vec!["x".repeat(100_000)]);
        }
        assert!(s.streams.len() <= MAX_STREAMS_KEPT);
        assert_eq!(s.streams.back().unwrap().seq, Seq(39));
        s.remember_call("big".into(), "x".repeat(MAX_CALL_ANSWER + 1));
        assert!(s.call_answer("big").is_none());
    }
}

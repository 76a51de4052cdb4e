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
//! client_seq`, and its record holds only the answers of its newest inputs.
//!
//! **Answers of retried inputs (ADR 0035).** The answers of the newest client inputs are kept
//! ([`MAX_ANSWERS_KEPT`] of them, [`MAX_ANSWER_BYTES`] together, the newest always when it fits),
//! so a retried seq whose reply was lost gets the first processing's answer, on this holder or
//! after a handover or failover. The cost is those bytes in every checkpoint of the session.

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

/// Client answers kept for retries (the retention window, by count).
pub const MAX_ANSWERS_KEPT: usize = 32;
/// Bytes of client answers kept, all together (an answer larger than this is not kept: a retry of
/// it learns that its answer is no longer retained).
pub const MAX_ANSWER_BYTES: usize = 64 << 10;

/// The record's format: 2 had no client answers, 3 has them (both read).
const RECORD_FORMAT: u8 = 3;
const RECORD_FORMAT_V2: u8 = 2;

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
    /// The handler's answer: `{"output": …}` or `{"error": …}`, JSON.
    pub answer: String,
}

/// The answer a client input got: a retry of its seq gets it again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientAnswer {
    /// The client seq of the input.
    pub seq: Seq,
    /// The handler's answer: `{"output": …}` or `{"error": …}`, JSON.
    pub answer: String,
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
    /// The answers of the newest client inputs, oldest first (not in format 2).
    #[serde(skip)]
    pub answers: VecDeque<ClientAnswer>,
}

impl Sys {
    /// Whether this record says nothing beyond `step` (a client-only session).
    pub fn is_trivial(&self, step: Seq) -> bool {
        self.client_seq == step
            && self.timers.is_empty()
            && self.calls.is_empty()
            && self.streams.is_empty()
            && self.answers.is_empty()
    }

    /// The answer client input `seq` got, if still kept (`{"output": …}` or `{"error": …}`).
    pub fn client_answer(&self, seq: Seq) -> Option<&str> {
        self.answers
            .iter()
            .rev()
            .find(|a| a.seq == seq)
            .map(|a| a.answer.as_str())
            .or_else(|| {
                self.streams
                    .iter()
                    .rev()
                    .find(|s| s.seq == seq)
                    .map(|s| s.answer.as_str())
            })
    }

    /// Remembers the answer of client input `seq` (bounded by [`MAX_ANSWERS_KEPT`] and
    /// [`MAX_ANSWER_BYTES`]; the newest stays while it fits alone).
    pub fn remember_answer(&mut self, seq: Seq, answer: String) {
        if answer.len() > MAX_ANSWER_BYTES {
            // Too big to keep: and older answers stay (a retry of this seq is told so).
            return;
        }
        self.answers.push_back(ClientAnswer { seq, answer });
        let mut total: usize = self.answers.iter().map(|a| a.answer.len()).sum();
        while self.answers.len() > MAX_ANSWERS_KEPT || total > MAX_ANSWER_BYTES {
            match self.answers.pop_front() {
                Some(a) => total -= a.answer.len(),
                None => break,
            }
        }
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
    pub fn keep_stream(&mut self, seq: Seq, chunks: Vec<String>, answer: String) {
        self.streams.retain(|s| s.seq != seq);
        self.streams.push_back(StreamDone {
            seq,
            chunks,
            answer,
        });
        let size =
            |s: &StreamDone| s.answer.len() + s.chunks.iter().map(|c| c.len() + 8).sum::<usize>();
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

/// Format 2 (no client answers): still read.
#[derive(Serialize, Deserialize)]
struct RecordV2 {
    format: u8,
    sys: Sys,
    pending: Option<Pending>,
}

#[derive(Deserialize)]
struct RecordV3 {
    format: u8,
    sys: Sys,
    pending: Option<Pending>,
    answers: VecDeque<ClientAnswer>,
}

/// Encodes the runtime record of a checkpoint at `step` (empty when trivial and no journal: the
/// checkpoint keeps format 1; a session that answered a client input has its answers here).
pub fn encode(step: Seq, sys: &Sys, pending: Option<&Pending>) -> Vec<u8> {
    if pending.is_none() && sys.is_trivial(step) {
        return Vec::new();
    }
    #[derive(Serialize)]
    struct Ref<'a> {
        format: u8,
        sys: &'a Sys,
        pending: Option<&'a Pending>,
        answers: &'a VecDeque<ClientAnswer>,
    }
    bincode::serde::encode_to_vec(
        Ref {
            format: RECORD_FORMAT,
            sys,
            pending,
            answers: &sys.answers,
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
        Some(&format) => {
            let cfg = bincode::config::standard().with_limit::<{ 1 << 30 }>();
            let read = match format {
                RECORD_FORMAT_V2 => bincode::serde::decode_from_slice::<RecordV2, _>(bytes, cfg)
                    .ok()
                    .filter(|(r, n)| *n == bytes.len() && r.format == format)
                    .map(|(r, _)| (r.sys, r.pending)),
                RECORD_FORMAT => bincode::serde::decode_from_slice::<RecordV3, _>(bytes, cfg)
                    .ok()
                    .filter(|(r, n)| *n == bytes.len() && r.format == format)
                    .map(|(mut r, _)| {
                        r.sys.answers = r.answers;
                        (r.sys, r.pending)
                    }),
                _ => None,
            };
            match read {
                Some(r) => r,
                None => {
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
        s2.keep_stream(Seq(4), vec!["a".into(), "b".into()], "{}".into());
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
    fn client_answers_round_trip_within_their_window_and_format_2_still_reads() {
        let mut sys = Sys {
            client_seq: Seq(40),
            ..Default::default()
        };
        for i in 1..=40u64 {
            sys.remember_answer(Seq(i), format!("{{\"output\":{i}}}"));
        }
        assert_eq!(sys.answers.len(), MAX_ANSWERS_KEPT);
        assert!(sys.client_answer(Seq(8)).is_none(), "older than the window");
        assert_eq!(sys.client_answer(Seq(40)), Some("{\"output\":40}"));
        let b = encode(Seq(40), &sys, None);
        assert_eq!(b[0], RECORD_FORMAT);
        assert_eq!(decode(Seq(40), &b), (sys.clone(), None));
        // Bytes bound: a big answer pushes the older ones out; one over the bound is not kept.
        sys.remember_answer(Seq(41), "x".repeat(MAX_ANSWER_BYTES - 10));
        assert!(sys.answers.len() <= 2);
        sys.remember_answer(Seq(42), "y".repeat(MAX_ANSWER_BYTES + 1));
        assert!(sys.client_answer(Seq(42)).is_none());
        assert!(sys.client_answer(Seq(41)).is_some());
        // A record written before answers were kept (format 2) reads, with none.
        let mut old = Sys {
            client_seq: Seq(3),
            ..Default::default()
        };
        old.remember_call("k".into(), "1".into());
        let v2 = bincode::serde::encode_to_vec(
            RecordV2 {
                format: RECORD_FORMAT_V2,
                sys: old.clone(),
                pending: None,
            },
            bincode::config::standard(),
        )
        .unwrap();
        assert_eq!(decode(Seq(3), &v2), (old, None));
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
            s.keep_stream(Seq(i), vec!["x".repeat(100_000)], "{}".into());
        }
        assert!(s.streams.len() <= MAX_STREAMS_KEPT);
        assert_eq!(s.streams.back().unwrap().seq, Seq(39));
        s.remember_call("big".into(), "x".repeat(MAX_CALL_ANSWER + 1));
        assert!(s.call_answer("big").is_none());
    }
}

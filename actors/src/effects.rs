//! The effect journal (ADR 0032): results of a handler's side effects, recorded before the
//! handler sees them, so that a retried input replays them instead of running them again.
//!
//! A handler runs an effect with [`SessionContext::run`](crate::SessionContext::run) (or the
//! built-ins [`now_ms`](crate::SessionContext::now_ms), [`random_u64`](crate::SessionContext::random_u64)).
//! Effects of one input are numbered in the order they start. For each one the runtime either
//! returns the recorded result (a replay) or runs it and records the result.
//!
//! **Durable before observable.** A recorded result is written — the journal with the checkpoint
//! of the state the input started from, to the session's replicas under its policy — before
//! anything that may depend on it leaves the session: before the input's next effect starts, and
//! at the latest [`PERSIST_GRACE`] after the effect while the handler keeps running. An input
//! whose handler returns within the grace needs no journal write at all: its own checkpoint (a
//! zero-loss session writes it before the reply) covers the state the result produced. A crash
//! inside that window loses a result nothing outside has seen; the retry runs the effect again,
//! with the same idempotency key. So:
//!
//! - a handler **panic** restarts the session; inputs replayed from the in-memory journal replay
//!   their effects too;
//! - a **crash, kill -9 or failover** of the holder after an effect: the new holder loads the
//!   checkpoint with the journal; the client's retry of the unacknowledged input replays the
//!   recorded effects (the effect itself is not repeated);
//! - an **effect cut off mid-way** (the process died while it ran) is run again on the retry: effects
//!   that leave the node carry an idempotency key derived from (session, seq, effect index) so the
//!   remote side can deduplicate (see `SessionContext::fetch` in the node's egress service).
//!
//! The journal belongs to the input's seq: a retry of that seq replays it. A replayed effect whose
//! name differs from the recorded one (the handler is not deterministic up to its effects) is a
//! `nondeterministic` error. Once the input's own checkpoint is written, the journal is gone
//! (checkpointed state covers it).

use std::sync::{Mutex, OnceLock, Weak};

use opengrid_session::Seq;
use serde::{Deserialize, Serialize};

use crate::handler::HandlerError;

/// How long a recorded result may stay in memory only while the handler keeps computing.
pub const PERSIST_GRACE: std::time::Duration = std::time::Duration::from_millis(2);

/// Most effects one input may run (bounds the journal).
pub const MAX_EFFECTS_PER_INPUT: usize = 4096;
/// Largest recorded result of one effect.
pub const MAX_EFFECT_RESULT_BYTES: usize = 16 << 20;

const JOURNAL_FORMAT: u8 = 1;

/// One recorded effect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// What the handler named it.
    pub name: String,
    /// `bincode` of the effect's `Result<T, HandlerError>`.
    pub result: Vec<u8>,
}

/// The effects the input after a checkpoint already ran: what a checkpoint's `journal` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    format: u8,
    /// The input they belong to.
    pub seq: Seq,
    /// In the order they ran.
    pub entries: Vec<Entry>,
}

impl Journal {
    /// The journal of input `seq`.
    pub fn new(seq: Seq, entries: Vec<Entry>) -> Journal {
        Journal {
            format: JOURNAL_FORMAT,
            seq,
            entries,
        }
    }

    /// Encoded for a checkpoint.
    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard()).unwrap_or_default()
    }

    /// Decoded from a checkpoint's journal bytes (`None` when empty or unreadable: the input
    /// then runs its effects again, with the same idempotency keys).
    pub fn decode(bytes: &[u8]) -> Option<Journal> {
        if bytes.is_empty() {
            return None;
        }
        let cfg = bincode::config::standard().with_limit::<{ 1 << 30 }>();
        match bincode::serde::decode_from_slice::<Journal, _>(bytes, cfg) {
            Ok((j, n)) if n == bytes.len() && j.format == JOURNAL_FORMAT => Some(j),
            Ok(_) => {
                tracing::warn!("effect journal of an unknown format ignored");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "unreadable effect journal ignored");
                None
            }
        }
    }
}

/// Where a session writes its journal when an effect completes.
pub(crate) trait JournalSink: Send + Sync {
    /// Makes `pending` durable with the checkpoint the input started from, if the session has
    /// one (`Ok(false)`: kept in memory only).
    fn persist(&self, pending: &crate::record::Pending) -> Result<bool, String>;
}

#[derive(Default)]
struct Current {
    /// The step being handled.
    seq: Seq,
    /// Who sent its input.
    source: Option<crate::record::Source>,
    /// Recorded results to replay, then those run in this call.
    entries: Vec<Entry>,
    /// Next effect's index.
    cursor: usize,
    active: bool,
    /// Entries not written yet.
    unpersisted: bool,
}

/// One session's effect bookkeeping (in the context every input shares).
#[derive(Default)]
pub(crate) struct Effects {
    current: Mutex<Current>,
    sink: OnceLock<Weak<dyn JournalSink>>,
    /// One journal write at a time.
    io: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the next effect does.
pub(crate) enum Next {
    /// Replay this recorded result.
    Replay(Vec<u8>),
    /// Run it; it is effect number `index` of the input.
    Run { index: usize },
}

impl Effects {
    pub(crate) fn set_sink(&self, sink: Weak<dyn JournalSink>) {
        let _ = self.sink.set(sink);
    }

    /// An input starts: `recorded` are the results of its effects known from before
    /// (`durable`: read from a checkpoint; else kept in memory only, e.g. after a panic).
    pub(crate) fn begin(
        &self,
        seq: Seq,
        source: crate::record::Source,
        recorded: Vec<Entry>,
        durable: bool,
    ) {
        *lock(&self.current) = Current {
            seq,
            source: Some(source),
            unpersisted: !durable && !recorded.is_empty(),
            entries: recorded,
            cursor: 0,
            active: true,
        };
    }

    /// Writes the journal of the input being handled if results in it are not written yet
    /// (`seq`: only if that input is still the one being handled).
    pub(crate) fn flush(&self, seq: Option<Seq>) -> Result<(), HandlerError> {
        let _one = lock(&self.io);
        let (journal, count) = {
            let c = lock(&self.current);
            if !c.active || !c.unpersisted || seq.is_some_and(|s| s != c.seq) {
                return Ok(());
            }
            let Some(source) = c.source.clone() else {
                return Ok(());
            };
            (
                crate::record::Pending {
                    source,
                    step: c.seq,
                    entries: c.entries.clone(),
                },
                c.entries.len(),
            )
        };
        let Some(sink) = self.sink.get().and_then(Weak::upgrade) else {
            return Ok(());
        };
        sink.persist(&journal).map_err(|reason| {
            HandlerError::new(
                "effect_not_durable",
                format!("the results of this input's effects could not be made durable: {reason}"),
            )
        })?;
        let mut c = lock(&self.current);
        if c.active && c.seq == journal.step && c.entries.len() == count {
            c.unpersisted = false;
        }
        Ok(())
    }

    /// The input ended: what its effects recorded (for the in-memory replay journal).
    pub(crate) fn finish(&self) -> Vec<Entry> {
        let mut c = lock(&self.current);
        c.active = false;
        std::mem::take(&mut c.entries)
    }

    /// Whether an input is being handled.
    pub(crate) fn active(&self) -> bool {
        lock(&self.current).active
    }

    /// The next effect of the input being handled.
    pub(crate) fn next(&self, name: &str) -> Result<Next, HandlerError> {
        let mut c = lock(&self.current);
        if !c.active {
            return Err(HandlerError::new(
                "effect_outside_input",
                format!("effect {name:?} outside an input (init, or after handle returned)"),
            ));
        }
        let index = c.cursor;
        if index >= MAX_EFFECTS_PER_INPUT {
            return Err(HandlerError::new(
                "too_many_effects",
                format!("more than {MAX_EFFECTS_PER_INPUT} effects in one input"),
            ));
        }
        c.cursor += 1;
        match c.entries.get(index) {
            Some(e) if e.name == name => Ok(Next::Replay(e.result.clone())),
            Some(e) => Err(HandlerError::new(
                "nondeterministic",
                format!(
                    "effect {index} of input {} is {name:?} on replay but was {:?}: effects must start in the same order for the same input",
                    c.seq, e.name
                ),
            )),
            None => Ok(Next::Run { index }),
        }
    }

    /// Records the result of effect `index` (written by [`flush`](Self::flush): before the next
    /// effect, or after the grace); the input it belongs to.
    pub(crate) fn record(
        &self,
        index: usize,
        name: &str,
        result: Vec<u8>,
    ) -> Result<Seq, HandlerError> {
        if result.len() > MAX_EFFECT_RESULT_BYTES {
            return Err(HandlerError::new(
                "effect_result_too_large",
                format!(
                    "effect {name:?} returned {} bytes, over {MAX_EFFECT_RESULT_BYTES}",
                    result.len()
                ),
            ));
        }
        let mut c = lock(&self.current);
        if !c.active || c.entries.len() != index {
            // Effects ran concurrently and finished out of order: not replayable.
            return Err(HandlerError::new(
                "nondeterministic",
                format!("effect {name:?} (number {index}) finished out of order: run effects one after another"),
            ));
        }
        c.entries.push(Entry {
            name: name.to_string(),
            result,
        });
        c.unpersisted = true;
        Ok(c.seq)
    }
}

/// Encodes an effect's result for the journal.
pub(crate) fn encode_result<T: Serialize>(
    r: &Result<T, HandlerError>,
) -> Result<Vec<u8>, HandlerError> {
    bincode::serde::encode_to_vec(r, bincode::config::standard())
        .map_err(|e| HandlerError::new("effect_encode", e.to_string()))
}

/// Decodes a recorded result.
pub(crate) fn decode_result<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<Result<T, HandlerError>, HandlerError> {
    let cfg = bincode::config::standard().with_limit::<MAX_EFFECT_RESULT_BYTES>();
    match bincode::serde::decode_from_slice(bytes, cfg) {
        Ok((r, n)) if n == bytes.len() => Ok(r),
        Ok(_) => Err(HandlerError::new("effect_decode", "trailing bytes")),
        Err(e) => Err(HandlerError::new(
            "effect_decode",
            format!("the recorded result does not decode as this effect's type: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_round_trip_and_garbage() {
        let j = Journal {
            format: JOURNAL_FORMAT,
            seq: Seq(7),
            entries: vec![Entry {
                name: "fetch".into(),
                result: vec![1, 2, 3],
            }],
        };
        assert_eq!(Journal::decode(&j.encode()), Some(j));
        assert_eq!(Journal::decode(&[]), None);
        assert_eq!(Journal::decode(&[9, 9, 9, 9]), None);
    }

    #[test]
    fn replay_checks_names_and_order() {
        let e = Effects::default();
        assert!(e.next("x").is_err(), "outside an input");
        let src = crate::record::Source::Client(Seq(3));
        e.begin(
            Seq(3),
            src.clone(),
            vec![Entry {
                name: "a".into(),
                result: vec![1],
            }],
            true,
        );
        assert!(matches!(e.next("a"), Ok(Next::Replay(r)) if r == vec![1]));
        let Ok(Next::Run { index: 1 }) = e.next("b") else {
            panic!("b runs")
        };
        e.record(1, "b", vec![2]).unwrap();
        let done = e.finish();
        assert_eq!(done.len(), 2);
        e.begin(Seq(3), src.clone(), done, true);
        match e.next("z") {
            Err(err) => assert_eq!(err.code, "nondeterministic"),
            Ok(_) => panic!("a renamed effect replays"),
        }
        // Out of order completion is refused.
        e.begin(Seq(4), src, vec![], true);
        let (Ok(Next::Run { index: i0 }), Ok(Next::Run { index: i1 })) = (e.next("p"), e.next("q"))
        else {
            panic!()
        };
        assert!(e.record(i1, "q", vec![]).is_err());
        e.record(i0, "p", vec![]).unwrap();
    }
}

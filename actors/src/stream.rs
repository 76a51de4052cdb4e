//! Streamed replies (ADR 0033): chunks a handler emits with
//! [`SessionContext::emit`](crate::SessionContext::emit) while it handles a client input,
//! readable from any offset while the input runs and after it completed.
//!
//! A chunk's offset is its position in the input's stream. The stream of an input that is
//! handled again (a restart after a panic, a retry after a failover) is the same up to the point
//! the handler's recorded effects reach: emits are deterministic given the effect journal, so a
//! chunk already at an offset is not added again, and a reader that resumes from offset `k` gets
//! each chunk once. Completed streams go into the session's runtime record (bounded:
//! [`MAX_STREAMS_KEPT`](crate::record::MAX_STREAMS_KEPT)), so they move with the session and a
//! client resumes on the new holder after a handover.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use opengrid_session::Seq;
use tokio::sync::Notify;

use crate::record::{Sys, MAX_STREAMS_KEPT};

/// Largest chunk.
pub const MAX_CHUNK_BYTES: usize = 1 << 20;
/// Most chunks of one reply.
pub const MAX_CHUNKS: usize = 65_536;

#[derive(Default)]
struct Live {
    chunks: Vec<String>,
    done: bool,
}

/// What a reader gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamRead {
    /// Chunks from the offset asked for.
    pub chunks: Vec<String>,
    /// Whether the input completed (no more chunks).
    pub done: bool,
}

/// The streams of one session's recent client inputs.
#[derive(Default)]
pub struct StreamTable {
    inner: Mutex<BTreeMap<Seq, Live>>,
    changed: Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StreamTable {
    /// Puts chunk `offset` of input `seq`; false when it was there already (a replay).
    pub(crate) fn put(&self, seq: Seq, offset: usize, chunk: &str) -> Result<bool, String> {
        if chunk.len() > MAX_CHUNK_BYTES {
            return Err(format!(
                "a chunk of {} bytes is over {MAX_CHUNK_BYTES}",
                chunk.len()
            ));
        }
        if offset >= MAX_CHUNKS {
            return Err(format!("more than {MAX_CHUNKS} chunks in one reply"));
        }
        let mut g = lock(&self.inner);
        let live = g.entry(seq).or_default();
        let added = if offset < live.chunks.len() {
            false
        } else if offset == live.chunks.len() {
            live.chunks.push(chunk.to_string());
            true
        } else {
            return Err(format!(
                "chunk {offset} of input {seq} after only {}",
                live.chunks.len()
            ));
        };
        live.done = false;
        while g.len() > 2 * MAX_STREAMS_KEPT {
            let Some(first) = g.keys().next().copied() else {
                break;
            };
            g.remove(&first);
        }
        drop(g);
        if added {
            self.changed.notify_waiters();
        }
        Ok(added)
    }

    /// Input `seq` completed: its stream ends (kept in `sys` if it had chunks; a reader of an
    /// input that emitted nothing learns it is done).
    pub(crate) fn finish(&self, seq: Seq, sys: &mut Sys) {
        let mut g = lock(&self.inner);
        let l = g.entry(seq).or_default();
        l.done = true;
        if !l.chunks.is_empty() {
            sys.keep_stream(seq, l.chunks.clone());
        }
        while g.len() > 2 * MAX_STREAMS_KEPT {
            let Some(first) = g.keys().next().copied() else {
                break;
            };
            g.remove(&first);
        }
        drop(g);
        self.changed.notify_waiters();
    }

    /// Loads the completed streams of a record (after a restart, handover or failover).
    pub(crate) fn load(&self, sys: &Sys) {
        let mut g = lock(&self.inner);
        for s in &sys.streams {
            g.insert(
                s.seq,
                Live {
                    chunks: s.chunks.clone(),
                    done: true,
                },
            );
        }
        drop(g);
        self.changed.notify_waiters();
    }

    /// Chunks of input `seq` from `from` as they stand (`None`: no stream known for it).
    pub fn read(&self, seq: Seq, from: usize) -> Option<StreamRead> {
        let g = lock(&self.inner);
        g.get(&seq).map(|l| StreamRead {
            chunks: l
                .chunks
                .get(from..)
                .map(<[String]>::to_vec)
                .unwrap_or_default(),
            done: l.done,
        })
    }

    /// Waits until input `seq` has chunks past `from` or is done, or `wait` passes; then reads.
    pub async fn next(&self, seq: Seq, from: usize, wait: Duration) -> Option<StreamRead> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let r = self.read(seq, from);
            if let Some(r) = &r {
                if r.done || !r.chunks.is_empty() {
                    return Some(r.clone());
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.read(seq, from);
            }
        }
    }

    /// Wakes every reader (the session moved or stopped: they look elsewhere).
    pub fn wake_all(&self) {
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replayed_chunks_are_not_added_twice_and_readers_resume() {
        let t = StreamTable::default();
        assert!(t.put(Seq(1), 0, "a").unwrap());
        assert!(t.put(Seq(1), 1, "b").unwrap());
        // The same input handled again emits the same chunks: none is added twice.
        assert!(!t.put(Seq(1), 0, "a").unwrap());
        assert!(t.put(Seq(1), 5, "x").is_err(), "a gap is refused");
        assert_eq!(
            t.read(Seq(1), 1),
            Some(StreamRead {
                chunks: vec!["b".into()],
                done: false
            })
        );
        let mut sys = Sys::default();
        t.finish(Seq(1), &mut sys);
        assert_eq!(sys.streams[0].chunks, vec!["a", "b"]);
        let other = StreamTable::default();
        other.load(&sys);
        let r = other
            .next(Seq(1), 2, Duration::from_millis(10))
            .await
            .unwrap();
        assert!(r.done && r.chunks.is_empty());
        assert!(other.read(Seq(9), 0).is_none());
        assert!(t.put(Seq(2), 0, &"x".repeat(MAX_CHUNK_BYTES + 1)).is_err());
    }
}

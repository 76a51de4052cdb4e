//! In-memory [`CheckpointStore`]: same rules as the RocksDB store, nothing durable.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::{check_fence, CheckpointInfo, CheckpointStore, StoreError, DEFAULT_RETAIN};
use crate::checkpoint::Checkpoint;
use crate::ids::{Epoch, Seq, SessionId};

#[derive(Default)]
struct Entry {
    /// (epoch, seq) → encoded envelope.
    cps: BTreeMap<(Epoch, Seq), Vec<u8>>,
    fence: Option<Epoch>,
}

/// A [`CheckpointStore`] held in memory. Stores encoded envelopes, so the same integrity checks run
/// on read as with RocksDB.
pub struct MemoryCheckpointStore {
    inner: Mutex<HashMap<SessionId, Entry>>,
    retain: usize,
    corruptions: AtomicU64,
}

impl Default for MemoryCheckpointStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryCheckpointStore {
    /// An empty store keeping [`DEFAULT_RETAIN`] checkpoints per session.
    pub fn new() -> Self {
        Self::with_retain(DEFAULT_RETAIN)
    }

    /// An empty store keeping `retain` (at least 2) checkpoints per session.
    pub fn with_retain(retain: usize) -> Self {
        MemoryCheckpointStore {
            inner: Mutex::new(HashMap::new()),
            retain: retain.max(2),
            corruptions: AtomicU64::new(0),
        }
    }

    /// Test hook: overwrite the stored bytes of one checkpoint (simulates bit rot).
    pub fn tamper(
        &self,
        session: &SessionId,
        epoch: Epoch,
        seq: Seq,
        f: impl FnOnce(&mut Vec<u8>),
    ) -> bool {
        let mut g = self.lock();
        match g
            .get_mut(session)
            .and_then(|e| e.cps.get_mut(&(epoch, seq)))
        {
            Some(b) => {
                f(b);
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Entry>> {
        // A panic while holding the lock cannot leave an Entry half-written (all updates are
        // single inserts/removes), so a poisoned lock is safe to keep using.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn fence_of(e: &Entry) -> Option<(Epoch, Option<Seq>)> {
    let newest = e.cps.keys().next_back().copied();
    let epoch = match (e.fence, newest) {
        (Some(f), Some((ne, _))) => f.max(ne),
        (Some(f), None) => f,
        (None, Some((ne, _))) => ne,
        (None, None) => return None,
    };
    let seq = newest.filter(|(ne, _)| *ne == epoch).map(|(_, s)| s);
    Some((epoch, seq))
}

impl CheckpointStore for MemoryCheckpointStore {
    fn writes_block(&self) -> bool {
        false
    }
    fn put(&self, cp: &Checkpoint) -> Result<(), StoreError> {
        cp.verify().map_err(|source| StoreError::Corrupt {
            session: cp.session_id.clone(),
            source,
        })?;
        let bytes = cp.encode();
        let mut g = self.lock();
        let e = g.entry(cp.session_id.clone()).or_default();
        check_fence(cp, fence_of(e))?;
        if let Some(existing) = e.cps.get(&(cp.epoch, cp.seq)) {
            if *existing == bytes {
                return Ok(());
            }
            if !super::journal_update(existing, cp) {
                return Err(StoreError::Conflict {
                    session: cp.session_id.clone(),
                    epoch: cp.epoch,
                    seq: cp.seq,
                });
            }
        }
        e.cps.insert((cp.epoch, cp.seq), bytes);
        e.fence = Some(e.fence.map_or(cp.epoch, |f| f.max(cp.epoch)));
        while e.cps.len() > self.retain {
            e.cps.pop_first();
        }
        Ok(())
    }

    fn get_latest(&self, session: &SessionId) -> Result<Option<Checkpoint>, StoreError> {
        let g = self.lock();
        let Some(e) = g.get(session) else {
            return Ok(None);
        };
        for bytes in e.cps.values().rev() {
            match Checkpoint::decode(bytes) {
                Ok(cp) => return Ok(Some(cp)),
                Err(err) => {
                    self.corruptions.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(session = %session, error = %err, "skipping corrupt checkpoint");
                }
            }
        }
        Ok(None)
    }

    fn get(&self, session: &SessionId, epoch: Epoch, seq: Seq) -> Result<Checkpoint, StoreError> {
        let g = self.lock();
        let bytes = g
            .get(session)
            .and_then(|e| e.cps.get(&(epoch, seq)))
            .ok_or_else(|| StoreError::NotFound {
                session: session.clone(),
                epoch,
                seq,
            })?;
        Checkpoint::decode(bytes).map_err(|source| {
            self.corruptions.fetch_add(1, Ordering::Relaxed);
            StoreError::Corrupt {
                session: session.clone(),
                source,
            }
        })
    }

    fn list(&self, session: &SessionId) -> Result<Vec<CheckpointInfo>, StoreError> {
        let g = self.lock();
        Ok(g.get(session)
            .map(|e| {
                e.cps
                    .iter()
                    .map(|(&(epoch, seq), b)| CheckpointInfo {
                        epoch,
                        seq,
                        bytes: b.len(),
                        corrupt: Checkpoint::decode(b).err(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    fn delete(&self, session: &SessionId) -> Result<(), StoreError> {
        let mut g = self.lock();
        if let Some(e) = g.get_mut(session) {
            let fence = fence_of(e).map(|(ep, _)| ep);
            e.cps.clear();
            e.fence = fence;
        }
        Ok(())
    }

    fn fence(&self, session: &SessionId, epoch: Epoch) -> Result<(), StoreError> {
        let mut g = self.lock();
        let e = g.entry(session.clone()).or_default();
        e.fence = Some(e.fence.map_or(epoch, |f| f.max(epoch)));
        Ok(())
    }

    fn current_epoch(&self, session: &SessionId) -> Result<Option<Epoch>, StoreError> {
        Ok(self.lock().get(session).and_then(fence_of).map(|(e, _)| e))
    }

    fn sessions(&self) -> Result<Vec<SessionId>, StoreError> {
        let mut v: Vec<_> = self
            .lock()
            .iter()
            .filter(|(_, e)| !e.cps.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        v.sort();
        Ok(v)
    }

    fn corruptions_detected(&self) -> u64 {
        self.corruptions.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::MemoryCheckpointStore;
    use crate::store::conformance;

    #[test]
    fn memory_store_conformance() {
        conformance::run_all(MemoryCheckpointStore::new);
    }
}

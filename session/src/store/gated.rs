//! A store whose `put`s must first pass a gate: fault injection (a failing disk in chaos runs
//! and tests) without re-writing the whole [`CheckpointStore`] delegation each time.

use std::sync::Arc;

use super::{CheckpointInfo, CheckpointStore, StoreError};
use crate::{Checkpoint, Epoch, Seq, SessionId};

/// Decides whether a `put` may reach the wrapped store (`Err`: it fails with that error and
/// nothing is written).
pub type PutGate = Box<dyn Fn(&Checkpoint) -> Result<(), StoreError> + Send + Sync>;

/// Passes every call to `inner`; a `put` first asks the gate.
pub struct GatedStore {
    inner: Arc<dyn CheckpointStore>,
    gate: PutGate,
}

impl GatedStore {
    /// Wraps `inner` behind `gate`.
    pub fn new(
        inner: Arc<dyn CheckpointStore>,
        gate: impl Fn(&Checkpoint) -> Result<(), StoreError> + Send + Sync + 'static,
    ) -> Self {
        GatedStore {
            inner,
            gate: Box::new(gate),
        }
    }
}

impl CheckpointStore for GatedStore {
    fn put(&self, cp: &Checkpoint) -> Result<(), StoreError> {
        (self.gate)(cp)?;
        self.inner.put(cp)
    }
    fn get_latest(&self, s: &SessionId) -> Result<Option<Checkpoint>, StoreError> {
        self.inner.get_latest(s)
    }
    fn get(&self, s: &SessionId, e: Epoch, q: Seq) -> Result<Checkpoint, StoreError> {
        self.inner.get(s, e, q)
    }
    fn list(&self, s: &SessionId) -> Result<Vec<CheckpointInfo>, StoreError> {
        self.inner.list(s)
    }
    fn delete(&self, s: &SessionId) -> Result<(), StoreError> {
        self.inner.delete(s)
    }
    fn fence(&self, s: &SessionId, e: Epoch) -> Result<(), StoreError> {
        self.inner.fence(s, e)
    }
    fn current_epoch(&self, s: &SessionId) -> Result<Option<Epoch>, StoreError> {
        self.inner.current_epoch(s)
    }
    fn sessions(&self) -> Result<Vec<SessionId>, StoreError> {
        self.inner.sessions()
    }
    fn corruptions_detected(&self) -> u64 {
        self.inner.corruptions_detected()
    }
    fn syncs_writes(&self) -> bool {
        self.inner.syncs_writes()
    }
    fn writes_block(&self) -> bool {
        self.inner.writes_block()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryCheckpointStore;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn a_closed_gate_refuses_puts_and_writes_nothing() {
        let closed = Arc::new(AtomicBool::new(false));
        let c = closed.clone();
        let store = GatedStore::new(Arc::new(MemoryCheckpointStore::new()), move |_| {
            if c.load(Ordering::SeqCst) {
                Err(StoreError::Backend("gate closed".into()))
            } else {
                Ok(())
            }
        });
        let id = SessionId::random();
        let cp = |seq| Checkpoint::new(id.clone(), Epoch(1), Seq(seq), "h", 1, vec![seq as u8]);
        store.put(&cp(1)).unwrap();
        closed.store(true, Ordering::SeqCst);
        assert!(store
            .put(&cp(2))
            .unwrap_err()
            .to_string()
            .contains("gate closed"));
        assert_eq!(store.get_latest(&id).unwrap().unwrap().seq, Seq(1));
        closed.store(false, Ordering::SeqCst);
        store.put(&cp(2)).unwrap();
        assert_eq!(store.list(&id).unwrap().len(), 2);
    }
}

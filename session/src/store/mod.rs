//! [`CheckpointStore`]: where checkpoints live, free of any backend.
//!
//! Implementations: `RocksCheckpointStore` (durable; behind the `rocksdb` feature, on by default)
//! and [`MemoryCheckpointStore`] (tests, benches, ephemeral
//! sessions). Both pass the same [`conformance`] suite. The trait, the conformance suite and the
//! in-memory store never depend on a backend, so crates that only need the trait (the handler
//! SDK, `opengrid-actors`) build without RocksDB.
//!
//! Guarantees every implementation gives:
//! - **Fencing.** A write whose epoch is older than the newest epoch stored (or fenced) for the
//!   session is refused with [`StoreError::StaleEpoch`]; within an epoch, a write older than the
//!   newest seq is refused with [`StoreError::StaleSeq`].
//! - **Integrity.** A checkpoint whose hash does not match its content is refused on write
//!   ([`StoreError::Corrupt`]), so a good checkpoint is never replaced by a corrupt one. Bytes that
//!   rot after the write are detected on read: [`CheckpointStore::get`] reports them,
//!   [`CheckpointStore::get_latest`] skips to the newest intact checkpoint and counts the skip.
//! - **History.** The newest `retain` checkpoints per session are kept (at least 2), so a corrupt
//!   newest entry still leaves a previous one readable.

pub mod conformance;
mod gated;
mod memory;
#[cfg(feature = "rocksdb")]
mod rocks;

pub use gated::{GatedStore, PutGate};
pub use memory::MemoryCheckpointStore;
#[cfg(feature = "rocksdb")]
pub use rocks::{RocksCheckpointStore, RocksOptions};

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::ids::{Epoch, Seq, SessionId};

/// Default number of checkpoints kept per session.
pub const DEFAULT_RETAIN: usize = 3;

/// Metadata of one stored checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// Epoch of the writer.
    pub epoch: Epoch,
    /// Last input folded in.
    pub seq: Seq,
    /// Encoded size in bytes.
    pub bytes: usize,
    /// `None` when the stored bytes decode and verify; the error otherwise.
    pub corrupt: Option<CheckpointError>,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Fencing: a newer epoch owns the session.
    #[error(
        "stale epoch for session {session}: write at {attempted} but {current} is current (fenced)"
    )]
    StaleEpoch {
        /// The session.
        session: SessionId,
        /// The epoch of the refused write.
        attempted: Epoch,
        /// The newest stored or fenced epoch.
        current: Epoch,
    },
    /// Within an epoch, an older seq than the newest stored.
    #[error(
        "stale seq for session {session}: write at {attempted} but {current} is stored in {epoch}"
    )]
    StaleSeq {
        /// The session.
        session: SessionId,
        /// Epoch of both writes.
        epoch: Epoch,
        /// Seq of the refused write.
        attempted: Seq,
        /// Newest stored seq.
        current: Seq,
    },
    /// Same (epoch, seq) already stored with different content.
    #[error("conflicting checkpoint for session {session} at {epoch}/{seq}: different content already stored")]
    Conflict {
        /// The session.
        session: SessionId,
        /// Epoch.
        epoch: Epoch,
        /// Seq.
        seq: Seq,
    },
    /// Stored or offered bytes failed verification.
    #[error("corrupt checkpoint for session {session}: {source}")]
    Corrupt {
        /// The session.
        session: SessionId,
        /// What is wrong.
        source: CheckpointError,
    },
    /// No checkpoint at that (epoch, seq).
    #[error("no checkpoint for session {session} at {epoch}/{seq}")]
    NotFound {
        /// The session.
        session: SessionId,
        /// Epoch.
        epoch: Epoch,
        /// Seq.
        seq: Seq,
    },
    /// The backend failed (disk full, I/O error, …). Retryable from the caller's point of view,
    /// but the write did not happen.
    #[error("checkpoint store backend error: {0}")]
    Backend(String),
    /// Fewer copies beyond the holder than the session requires (`migration.min_copies`):
    /// nothing was written locally, so the input this checkpoint covers is not acknowledged.
    #[error("{have} of {need} copies required for session {session}: {reason}")]
    TooFewCopies {
        /// The session.
        session: SessionId,
        /// Copies beyond the holder the write reached (or could reach).
        have: u32,
        /// Copies beyond the holder the session requires.
        need: u32,
        /// Why (e.g. "replica holders down").
        reason: String,
    },
}

/// What a counted write ([`CheckpointStore::put_counted`]) reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PutOutcome {
    /// Copies beyond the holder's own that acknowledged the checkpoint.
    pub copies: u32,
    /// Whether the holder's own copy was synced to disk before the write returned
    /// ([`CheckpointStore::syncs_writes`]).
    pub synced: bool,
}

impl StoreError {
    /// Whether the write was refused because another holder owns the session.
    pub fn is_fenced(&self) -> bool {
        matches!(self, StoreError::StaleEpoch { .. })
    }
}

/// Durable storage of session checkpoints. Implementations must be safe to share between threads.
///
/// Methods are synchronous: a durable write is, by definition, done when it returns. Callers on an
/// async runtime call them from the session's own actor (one writer per session).
pub trait CheckpointStore: Send + Sync + 'static {
    /// Stores `cp` atomically (checkpoint, fence record, pruning of old entries), after checking
    /// its hash and the fencing rules described in the [module docs](self).
    fn put(&self, cp: &Checkpoint) -> Result<(), StoreError>;

    /// The newest intact checkpoint of `session`, skipping (and counting) corrupt entries.
    fn get_latest(&self, session: &SessionId) -> Result<Option<Checkpoint>, StoreError>;

    /// One specific checkpoint; corrupt bytes are reported as [`StoreError::Corrupt`].
    fn get(&self, session: &SessionId, epoch: Epoch, seq: Seq) -> Result<Checkpoint, StoreError>;

    /// All stored checkpoints of `session`, oldest first, each with its integrity status.
    fn list(&self, session: &SessionId) -> Result<Vec<CheckpointInfo>, StoreError>;

    /// Deletes every checkpoint of `session`. The fence record stays, so an old holder still
    /// cannot write after a delete.
    fn delete(&self, session: &SessionId) -> Result<(), StoreError>;

    /// Raises the session's fence to `epoch` without writing a checkpoint (used when a session is
    /// restored elsewhere). Lowering is a no-op.
    fn fence(&self, session: &SessionId, epoch: Epoch) -> Result<(), StoreError>;

    /// The fence (newest epoch stored or fenced) of `session`, if any.
    fn current_epoch(&self, session: &SessionId) -> Result<Option<Epoch>, StoreError>;

    /// Ids of all sessions with at least one stored checkpoint.
    fn sessions(&self) -> Result<Vec<SessionId>, StoreError>;

    /// How many corrupt entries reads have skipped or reported since open.
    fn corruptions_detected(&self) -> u64;

    /// Whether a successful `put` is on stable storage when it returns (RocksDB with `sync`).
    /// A store that does not sync (RocksDB with `fsync = false`) returns `false`, and the session
    /// runtime then never calls an input durable. The default (`true`) suits stores whose writes
    /// are complete when `put` returns (the in-memory store used by tests and single-process
    /// examples, wrappers that delegate this method).
    fn syncs_writes(&self) -> bool {
        true
    }

    /// Whether a write may block the calling thread for long (disk sync, network round trips).
    /// The session runtime moves such writes off its worker (ADR 0039); a store that answers
    /// from memory says `false` and is written in place, which costs a thread hand-off less per
    /// checkpoint (P12: a restart's checkpoints; ADR 0040). The default is the safe `true`.
    fn writes_block(&self) -> bool {
        true
    }

    /// Stores `cp` like [`put`](Self::put), but only if it reaches at least `min_copies` copies
    /// beyond the holder's own, and says how many it reached. A store that keeps no copies beyond
    /// the holder (this default) refuses any `min_copies` above 0 with
    /// [`StoreError::TooFewCopies`] before writing anything; the replicating store overrides it.
    fn put_counted(&self, cp: &Checkpoint, min_copies: u32) -> Result<PutOutcome, StoreError> {
        if min_copies > 0 {
            return Err(StoreError::TooFewCopies {
                session: cp.session_id.clone(),
                have: 0,
                need: min_copies,
                reason: "this store keeps no copies beyond the holder".into(),
            });
        }
        self.put(cp)?;
        Ok(PutOutcome {
            copies: 0,
            synced: self.syncs_writes(),
        })
    }
}

/// The fencing check shared by all implementations: `(fence_epoch, newest_seq_in_that_epoch)`.
/// Whether `new` may replace the valid checkpoint `existing` stored at the same (epoch, seq): only
/// when they differ in the effect journal alone (ADR 0032: the journal of the input after `seq`
/// grows while that input runs; the state at `seq` never changes).
pub(crate) fn journal_update(existing: &[u8], new: &Checkpoint) -> bool {
    match Checkpoint::decode(existing) {
        Ok(old) => {
            old.handler_id == new.handler_id
                && old.handler_version == new.handler_version
                && old.state == new.state
        }
        Err(_) => true,
    }
}

pub(crate) fn check_fence(
    cp: &Checkpoint,
    fence: Option<(Epoch, Option<Seq>)>,
) -> Result<(), StoreError> {
    if let Some((epoch, seq)) = fence {
        if cp.epoch < epoch {
            return Err(StoreError::StaleEpoch {
                session: cp.session_id.clone(),
                attempted: cp.epoch,
                current: epoch,
            });
        }
        if cp.epoch == epoch {
            if let Some(seq) = seq {
                if cp.seq < seq {
                    return Err(StoreError::StaleSeq {
                        session: cp.session_id.clone(),
                        epoch,
                        attempted: cp.seq,
                        current: seq,
                    });
                }
            }
        }
    }
    Ok(())
}

impl<T: CheckpointStore + ?Sized> CheckpointStore for std::sync::Arc<T> {
    fn put(&self, cp: &Checkpoint) -> Result<(), StoreError> {
        (**self).put(cp)
    }
    fn get_latest(&self, s: &SessionId) -> Result<Option<Checkpoint>, StoreError> {
        (**self).get_latest(s)
    }
    fn get(&self, s: &SessionId, e: Epoch, q: Seq) -> Result<Checkpoint, StoreError> {
        (**self).get(s, e, q)
    }
    fn list(&self, s: &SessionId) -> Result<Vec<CheckpointInfo>, StoreError> {
        (**self).list(s)
    }
    fn delete(&self, s: &SessionId) -> Result<(), StoreError> {
        (**self).delete(s)
    }
    fn fence(&self, s: &SessionId, e: Epoch) -> Result<(), StoreError> {
        (**self).fence(s, e)
    }
    fn current_epoch(&self, s: &SessionId) -> Result<Option<Epoch>, StoreError> {
        (**self).current_epoch(s)
    }
    fn sessions(&self) -> Result<Vec<SessionId>, StoreError> {
        (**self).sessions()
    }
    fn corruptions_detected(&self) -> u64 {
        (**self).corruptions_detected()
    }
    fn syncs_writes(&self) -> bool {
        (**self).syncs_writes()
    }
    fn writes_block(&self) -> bool {
        (**self).writes_block()
    }
    fn put_counted(&self, cp: &Checkpoint, min_copies: u32) -> Result<PutOutcome, StoreError> {
        (**self).put_counted(cp, min_copies)
    }
}

//! One conformance suite for every [`CheckpointStore`] implementation.
//!
//! Call [`run_all`] with a factory that returns a fresh, empty store. Each check panics with a
//! message naming the violated guarantee (this module is test support, used by the session crate's
//! own tests and by any crate adding a backend, e.g. checkpoint replicas).

use super::{CheckpointStore, StoreError};
use crate::checkpoint::Checkpoint;
use crate::ids::{Epoch, Seq, SessionId};

fn sid(s: &str) -> SessionId {
    SessionId::new(s).expect("valid test id")
}

fn cp(s: &str, epoch: u64, seq: u64, state: &[u8]) -> Checkpoint {
    Checkpoint::new(
        sid(s),
        Epoch(epoch),
        Seq(seq),
        "conformance",
        1,
        state.to_vec(),
    )
}

/// Runs every check against fresh stores from `make`.
pub fn run_all<S: CheckpointStore>(make: impl Fn() -> S) {
    put_then_get_latest(&make());
    latest_is_highest_epoch_then_seq(&make());
    stale_epoch_is_rejected(&make());
    stale_seq_is_rejected(&make());
    fence_blocks_old_writers(&make());
    corrupt_write_is_rejected_and_keeps_good(&make());
    idempotent_rewrite_and_conflict(&make());
    list_and_retention(&make());
    delete_keeps_fence(&make());
    sessions_are_isolated(&make());
    get_specific_and_not_found(&make());
}

/// A stored checkpoint is returned by `get_latest`.
pub fn put_then_get_latest<S: CheckpointStore>(s: &S) {
    assert!(
        s.get_latest(&sid("a")).unwrap().is_none(),
        "empty store returns None"
    );
    let c = cp("a", 1, 1, b"one");
    s.put(&c).unwrap();
    assert_eq!(
        s.get_latest(&sid("a")).unwrap(),
        Some(c),
        "latest after one put"
    );
}

/// Newest means highest (epoch, seq).
pub fn latest_is_highest_epoch_then_seq<S: CheckpointStore>(s: &S) {
    s.put(&cp("a", 1, 5, b"e1s5")).unwrap();
    s.put(&cp("a", 1, 9, b"e1s9")).unwrap();
    s.put(&cp("a", 2, 3, b"e2s3")).unwrap();
    let l = s.get_latest(&sid("a")).unwrap().unwrap();
    assert_eq!((l.epoch, l.seq), (Epoch(2), Seq(3)), "epoch dominates seq");
    assert_eq!(s.current_epoch(&sid("a")).unwrap(), Some(Epoch(2)));
}

/// Fencing: an older epoch cannot write after a newer one did.
pub fn stale_epoch_is_rejected<S: CheckpointStore>(s: &S) {
    s.put(&cp("a", 3, 1, b"new")).unwrap();
    let err = s.put(&cp("a", 2, 100, b"old holder")).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::StaleEpoch {
                attempted: Epoch(2),
                current: Epoch(3),
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_fenced());
    assert_eq!(
        s.get_latest(&sid("a")).unwrap().unwrap().state,
        b"new",
        "stale write changed nothing"
    );
}

/// Within an epoch, seq never goes back.
pub fn stale_seq_is_rejected<S: CheckpointStore>(s: &S) {
    s.put(&cp("a", 1, 10, b"ten")).unwrap();
    let err = s.put(&cp("a", 1, 9, b"nine")).unwrap_err();
    assert!(matches!(err, StoreError::StaleSeq { .. }), "{err}");
    assert_eq!(s.get_latest(&sid("a")).unwrap().unwrap().seq, Seq(10));
}

/// `fence` raises the epoch without a checkpoint; older writers are refused, the new holder is not.
pub fn fence_blocks_old_writers<S: CheckpointStore>(s: &S) {
    s.put(&cp("a", 1, 1, b"x")).unwrap();
    s.fence(&sid("a"), Epoch(2)).unwrap();
    assert!(s.put(&cp("a", 1, 2, b"y")).unwrap_err().is_fenced());
    s.fence(&sid("a"), Epoch(1)).unwrap(); // lowering is a no-op
    assert_eq!(s.current_epoch(&sid("a")).unwrap(), Some(Epoch(2)));
    s.put(&cp("a", 2, 1, b"z")).unwrap();
    s.fence(&sid("fresh"), Epoch(5)).unwrap();
    assert!(s.put(&cp("fresh", 4, 1, b"")).unwrap_err().is_fenced());
    s.put(&cp("fresh", 5, 1, b"")).unwrap();
}

/// A checkpoint with a bad hash is refused and the previous one stays.
pub fn corrupt_write_is_rejected_and_keeps_good<S: CheckpointStore>(s: &S) {
    let good = cp("a", 1, 1, b"good");
    s.put(&good).unwrap();
    let mut bad = cp("a", 1, 2, b"bad");
    bad.state[0] ^= 1;
    assert!(matches!(s.put(&bad), Err(StoreError::Corrupt { .. })));
    assert_eq!(s.get_latest(&sid("a")).unwrap(), Some(good));
}

/// Rewriting identical content is a no-op; different content at the same point is a conflict.
pub fn idempotent_rewrite_and_conflict<S: CheckpointStore>(s: &S) {
    let c = cp("a", 1, 1, b"same");
    s.put(&c).unwrap();
    s.put(&c).unwrap();
    assert!(matches!(
        s.put(&cp("a", 1, 1, b"other")),
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(s.list(&sid("a")).unwrap().len(), 1);
    // The same state with a (longer) effect journal replaces it: the journal of the next input.
    let j1 = cp("a", 1, 1, b"same").with_journal(b"one effect".to_vec());
    s.put(&j1).unwrap();
    assert_eq!(s.get_latest(&sid("a")).unwrap(), Some(j1));
    let j2 = cp("a", 1, 1, b"same").with_journal(b"two effects".to_vec());
    s.put(&j2).unwrap();
    assert_eq!(s.get_latest(&sid("a")).unwrap(), Some(j2.clone()));
    // Other state at the same point is still a conflict, journal or not.
    assert!(matches!(
        s.put(&cp("a", 1, 1, b"other").with_journal(b"x".to_vec())),
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(s.list(&sid("a")).unwrap().len(), 1);
}

/// `list` is oldest first and history is pruned to the retention, keeping at least two.
pub fn list_and_retention<S: CheckpointStore>(s: &S) {
    for i in 1..=10 {
        s.put(&cp("a", 1, i, &[i as u8])).unwrap();
    }
    let l = s.list(&sid("a")).unwrap();
    assert!(
        l.len() >= 2 && l.len() < 10,
        "retention keeps a bounded history, got {}",
        l.len()
    );
    assert!(
        l.windows(2)
            .all(|w| (w[0].epoch, w[0].seq) < (w[1].epoch, w[1].seq)),
        "oldest first"
    );
    assert_eq!(l.last().unwrap().seq, Seq(10));
    assert!(l.iter().all(|i| i.corrupt.is_none() && i.bytes > 0));
}

/// `delete` removes checkpoints but not the fence.
pub fn delete_keeps_fence<S: CheckpointStore>(s: &S) {
    s.put(&cp("a", 4, 1, b"x")).unwrap();
    s.delete(&sid("a")).unwrap();
    assert!(s.get_latest(&sid("a")).unwrap().is_none());
    assert!(s.list(&sid("a")).unwrap().is_empty());
    assert!(
        s.put(&cp("a", 3, 1, b"old")).unwrap_err().is_fenced(),
        "fence survives delete"
    );
    s.put(&cp("a", 4, 1, b"again")).unwrap();
    s.delete(&sid("never-written")).unwrap();
}

/// Sessions do not see each other's checkpoints, including ids that are prefixes of each other.
pub fn sessions_are_isolated<S: CheckpointStore>(s: &S) {
    s.put(&cp("ab", 1, 1, b"ab")).unwrap();
    s.put(&cp("a", 9, 1, b"a")).unwrap();
    s.put(&cp("abc", 1, 1, b"abc")).unwrap();
    assert_eq!(s.get_latest(&sid("ab")).unwrap().unwrap().state, b"ab");
    assert_eq!(s.get_latest(&sid("a")).unwrap().unwrap().state, b"a");
    assert_eq!(s.list(&sid("ab")).unwrap().len(), 1);
    assert_eq!(s.sessions().unwrap(), vec![sid("a"), sid("ab"), sid("abc")]);
}

/// `get` returns one specific checkpoint or NotFound.
pub fn get_specific_and_not_found<S: CheckpointStore>(s: &S) {
    s.put(&cp("a", 1, 1, b"1")).unwrap();
    s.put(&cp("a", 1, 2, b"2")).unwrap();
    assert_eq!(s.get(&sid("a"), Epoch(1), Seq(1)).unwrap().state, b"1");
    assert!(matches!(
        s.get(&sid("a"), Epoch(1), Seq(7)),
        Err(StoreError::NotFound { .. })
    ));
}

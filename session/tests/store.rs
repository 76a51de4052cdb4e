//! RocksDB checkpoint store: conformance and RocksDB-specific durability checks (needs the
//! `rocksdb` feature, on by default; the in-memory store's conformance run is a unit test).

use std::sync::Arc;

use opengrid_session::store::conformance;
use opengrid_session::*;

fn sid(s: &str) -> SessionId {
    SessionId::new(s).unwrap()
}

#[test]
fn rocks_store_conformance() {
    let dirs = std::sync::Mutex::new(Vec::new());
    conformance::run_all(|| {
        let d = tempfile::tempdir().unwrap();
        let s = RocksCheckpointStore::open(
            d.path(),
            RocksOptions {
                sync: false,
                retain: 3,
            },
        )
        .unwrap();
        dirs.lock().unwrap().push(d);
        s
    });
}

#[test]
fn rocks_store_conformance_with_fsync() {
    let dirs = std::sync::Mutex::new(Vec::new());
    conformance::run_all(|| {
        let d = tempfile::tempdir().unwrap();
        let s = RocksCheckpointStore::open(d.path(), RocksOptions::default()).unwrap();
        dirs.lock().unwrap().push(d);
        s
    });
}

#[test]
fn flipped_byte_on_disk_is_detected_and_previous_still_readable() {
    let d = tempfile::tempdir().unwrap();
    let s = RocksCheckpointStore::open(d.path(), RocksOptions::default()).unwrap();
    let a = sid("sess");
    let c1 = Checkpoint::new(a.clone(), Epoch(1), Seq(1), "h", 1, vec![1; 64]);
    let c2 = Checkpoint::new(a.clone(), Epoch(1), Seq(2), "h", 1, vec![2; 64]);
    s.put(&c1).unwrap();
    s.put(&c2).unwrap();
    // Flip one byte in the middle of the newest value, behind the store's back.
    assert!(s
        .tamper_raw(&a, Epoch(1), Seq(2), |v| {
            let i = v.len() / 2;
            v[i] ^= 0xff;
        })
        .unwrap());
    let err = s.get(&a, Epoch(1), Seq(2)).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert_eq!(
        s.get_latest(&a).unwrap(),
        Some(c1.clone()),
        "falls back to the previous intact checkpoint"
    );
    let list = s.list(&a).unwrap();
    assert!(list[1].corrupt.is_some() && list[0].corrupt.is_none());
    assert!(s.corruptions_detected() >= 2);
    // A fresh write replaces the corrupt newest as the latest.
    let c3 = Checkpoint::new(a.clone(), Epoch(1), Seq(3), "h", 1, vec![3; 64]);
    s.put(&c3).unwrap();
    assert_eq!(s.get_latest(&a).unwrap(), Some(c3));
}

#[test]
fn truncated_value_on_disk_is_detected() {
    let d = tempfile::tempdir().unwrap();
    let s = RocksCheckpointStore::open(d.path(), RocksOptions::default()).unwrap();
    let a = sid("t");
    s.put(&Checkpoint::new(
        a.clone(),
        Epoch(1),
        Seq(1),
        "h",
        1,
        vec![9; 10],
    ))
    .unwrap();
    s.tamper_raw(&a, Epoch(1), Seq(1), |v| v.truncate(v.len() - 3))
        .unwrap();
    assert!(matches!(
        s.get(&a, Epoch(1), Seq(1)),
        Err(StoreError::Corrupt { .. })
    ));
    assert_eq!(s.get_latest(&a).unwrap(), None);
}

#[test]
fn reopen_keeps_checkpoints_and_fences() {
    let d = tempfile::tempdir().unwrap();
    let a = sid("durable");
    {
        let s = RocksCheckpointStore::open(d.path(), RocksOptions::default()).unwrap();
        s.put(&Checkpoint::new(
            a.clone(),
            Epoch(2),
            Seq(7),
            "h",
            1,
            b"state".to_vec(),
        ))
        .unwrap();
        s.fence(&sid("other"), Epoch(9)).unwrap();
    }
    let s = RocksCheckpointStore::open(d.path(), RocksOptions::default()).unwrap();
    let cp = s.get_latest(&a).unwrap().unwrap();
    assert_eq!(
        (cp.epoch, cp.seq, cp.state.as_slice()),
        (Epoch(2), Seq(7), &b"state"[..])
    );
    assert!(s
        .put(&Checkpoint::new(
            a.clone(),
            Epoch(1),
            Seq(8),
            "h",
            1,
            vec![]
        ))
        .unwrap_err()
        .is_fenced());
    assert_eq!(s.current_epoch(&sid("other")).unwrap(), Some(Epoch(9)));
}

/// Data written by a process that exits (no clean shutdown) is still there: a child process writes
/// with fsync and exits immediately; the parent reopens.
#[test]
fn reopen_after_process_exit() {
    let d = tempfile::tempdir().unwrap();
    if let Ok(dir) = std::env::var("OPENGRID_STORE_CHILD_DIR") {
        let s = RocksCheckpointStore::open(&dir, RocksOptions::default()).unwrap();
        s.put(&Checkpoint::new(
            sid("child"),
            Epoch(1),
            Seq(42),
            "h",
            1,
            b"from child".to_vec(),
        ))
        .unwrap();
        std::process::exit(0);
    }
    let exe = std::env::current_exe().unwrap();
    let status = std::process::Command::new(exe)
        .args(["--exact", "reopen_after_process_exit", "--nocapture"])
        .env("OPENGRID_STORE_CHILD_DIR", d.path())
        .status()
        .unwrap();
    assert!(status.success());
    let s = RocksCheckpointStore::open(d.path(), RocksOptions::default()).unwrap();
    let cp = s
        .get_latest(&sid("child"))
        .unwrap()
        .expect("child's write survived its exit");
    assert_eq!(cp.seq, Seq(42));
}

#[test]
fn concurrent_writers_of_two_epochs_never_lower_the_fence() {
    let d = tempfile::tempdir().unwrap();
    let s = Arc::new(
        RocksCheckpointStore::open(
            d.path(),
            RocksOptions {
                sync: false,
                retain: 3,
            },
        )
        .unwrap(),
    );
    let a = sid("race");
    let old = {
        let (s, a) = (s.clone(), a.clone());
        std::thread::spawn(move || {
            let mut fenced = false;
            for i in 1..=500u64 {
                match s.put(&Checkpoint::new(
                    a.clone(),
                    Epoch(1),
                    Seq(i),
                    "h",
                    1,
                    vec![1],
                )) {
                    Ok(()) => assert!(!fenced, "old holder wrote after being fenced"),
                    Err(e) => {
                        assert!(e.is_fenced(), "{e}");
                        fenced = true;
                    }
                }
            }
        })
    };
    s.fence(&a, Epoch(2)).unwrap();
    for i in 1..=100u64 {
        s.put(&Checkpoint::new(
            a.clone(),
            Epoch(2),
            Seq(i),
            "h",
            1,
            vec![2],
        ))
        .unwrap();
    }
    old.join().unwrap();
    assert_eq!(s.current_epoch(&a).unwrap(), Some(Epoch(2)));
    assert_eq!(s.get_latest(&a).unwrap().unwrap().epoch, Epoch(2));
}

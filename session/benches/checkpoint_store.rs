//! Checkpoint write latency: RocksDB with fsync, RocksDB without fsync, in-memory; 4 KiB state.
//! The raw RocksDB `put` of the same bytes (with and without sync) is the baseline in the same run.
//!
//! Run: `cargo bench -p opengrid-session --bench checkpoint_store`

use criterion::{criterion_group, criterion_main, Criterion};
use opengrid_session::*;
use rocksdb::{WriteOptions, DB};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("checkpoint_write_4KiB");
    g.sample_size(30);
    let state = vec![7u8; 4096];
    let id = SessionId::new("bench").unwrap();
    for (name, sync) in [("rocksdb_fsync", true), ("rocksdb_nosync", false)] {
        let dir = tempfile::tempdir().unwrap();
        let store =
            RocksCheckpointStore::open(dir.path(), RocksOptions { sync, retain: 3 }).unwrap();
        let mut seq = 0;
        g.bench_function(format!("store_{name}"), |b| {
            b.iter(|| {
                seq += 1;
                store
                    .put(&Checkpoint::new(
                        id.clone(),
                        Epoch(1),
                        Seq(seq),
                        "h",
                        1,
                        state.clone(),
                    ))
                    .unwrap();
            })
        });
        let rdir = tempfile::tempdir().unwrap();
        let db = DB::open_default(rdir.path()).unwrap();
        let mut w = WriteOptions::default();
        w.set_sync(sync);
        let mut k = 0u64;
        g.bench_function(format!("raw_{name}_put"), |b| {
            b.iter(|| {
                k += 1;
                db.put_opt(k.to_be_bytes(), &state, &w).unwrap();
            })
        });
    }
    let mem = MemoryCheckpointStore::new();
    let mut seq = 0;
    g.bench_function("store_memory", |b| {
        b.iter(|| {
            seq += 1;
            mem.put(&Checkpoint::new(
                id.clone(),
                Epoch(1),
                Seq(seq),
                "h",
                1,
                state.clone(),
            ))
            .unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

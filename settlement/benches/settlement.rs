//! P8 settlement benchmarks.
//!
//! - `ledger_apply/1000_receipts`: one batch of 1 000 co-signed receipts applied to the ledger
//!   state machine (two ed25519 verifies per receipt, splits, exactly-once bookkeeping).
//! - Before the criterion group, one run of `bench_settlement` (3 replicas on 127.0.0.1, real
//!   TCP + RocksDB with fsync) prints its JSON report. `SETTLEMENT_BENCH_RECEIPTS` sets its size.

use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use opengrid_settlement::bench::{bench_settlement, make_receipts, BenchOptions};
use opengrid_settlement::ledger::{LedgerCommand, NodeRegistration, RcRegistration};
use opengrid_settlement::{Account, Batch, Keypair, Ledger, SplitPolicy};

fn ledger_apply(c: &mut Criterion) {
    let node = Keypair::from_seed([1; 32]);
    let rc = Keypair::from_seed([2; 32]);
    let mut base = Ledger::default();
    base.execute(LedgerCommand::RegisterNode(NodeRegistration::new(
        &node,
        SplitPolicy::Interchange,
        Account::new("op").unwrap(),
        vec![],
    )));
    base.execute(LedgerCommand::RegisterRc(RcRegistration::new(
        &rc,
        Account::new("rc").unwrap(),
    )));
    let receipts = make_receipts(&node, &rc, 1_000, 0);
    let batch = Batch {
        rc: rc.did(),
        proposed_at_ms: 10_000,
        part: 0,
        receipts,
    };
    let mut g = c.benchmark_group("ledger_apply");
    g.throughput(Throughput::Elements(1_000));
    g.sample_size(20);
    g.bench_function("1000_receipts", |b| {
        b.iter_batched(
            || (base.clone(), batch.clone()),
            |(mut l, b)| l.execute(LedgerCommand::SubmitBatch(b)),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, ledger_apply);

fn main() {
    let receipts = std::env::var("SETTLEMENT_BENCH_RECEIPTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(bench_settlement(BenchOptions {
        receipts,
        ..BenchOptions::default()
    })) {
        Ok(report) => println!("{}", serde_json::to_string(&report).expect("json")),
        Err(e) => eprintln!("bench_settlement failed: {e}"),
    }
    drop(rt);
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}

//! P8 settlement benchmarks.
//!
//! - `ledger_apply/1000_receipts`: one batch of 1 000 co-signed receipts applied to the ledger
//!   state machine (two ed25519 verifies per receipt, splits, exactly-once bookkeeping).
//! - Before the criterion group, one run of `bench_settlement` (3 replicas on 127.0.0.1, real
//!   TCP + RocksDB with fsync) prints its JSON report. `SETTLEMENT_BENCH_RECEIPTS` sets its size.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use opengrid_settlement::ledger::{
    LedgerCommand, LedgerResponse, NodeRegistration, RcRegistration,
};
use opengrid_settlement::testing::make_receipts;
use opengrid_settlement::{
    start_replica, Account, Batch, Keypair, Ledger, LedgerClient, ReplicaOptions, SettlementError,
    SplitPolicy,
};
use serde::Serialize;

/// Benchmark parameters.
#[derive(Debug, Clone)]
struct BenchOptions {
    /// Receipts to settle in total.
    receipts: usize,
    /// Receipts per batch command.
    batch_size: usize,
    /// Ledger replicas (in this process, real TCP between them).
    replicas: u64,
    /// Where replica data dirs go (a temp dir when `None`).
    dir: Option<PathBuf>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            receipts: 20_000,
            batch_size: 5_000,
            replicas: 3,
            dir: None,
        }
    }
}

/// What the benchmark measured (printed as JSON).
#[derive(Debug, Clone, Serialize)]
struct BenchReport {
    name: String,
    count: u64,
    batches: u64,
    replicas: u64,
    seconds: f64,
    receipts_per_s: f64,
    /// Per-batch commit latency (submit → applied on the leader).
    p50_us: u64,
    p99_us: u64,
    /// Receipts submitted but not settled.
    lost: u64,
    /// Receipts credited more than once (always 0: checked against the ledger totals).
    duplicated: u64,
}

fn ledger_apply(c: &mut Criterion) {
    let node = Keypair::from_seed([1; 32]);
    let rc = Keypair::from_seed([2; 32]);
    let operator = Keypair::from_seed([3; 32]);
    let mut base = Ledger::with_rules(
        Account::protocol(),
        opengrid_settlement::LedgerRules {
            operator: Some(operator.did()),
            ..Default::default()
        },
    );
    base.execute(LedgerCommand::RegisterNode(
        NodeRegistration::new(
            &node,
            SplitPolicy::Interchange,
            Account::new("op").unwrap(),
            vec![],
        )
        .authorize(&operator),
    ));
    base.execute(LedgerCommand::RegisterRc(
        RcRegistration::new(&rc, Account::new("rc").unwrap()).authorize(&operator),
    ));
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

/// One run of the P8 settlement benchmark: receipts/s through a 3-replica ledger on 127.0.0.1,
/// each receipt with two ed25519 verifies (node signature + RC co-signature) on every replica.
async fn bench_settlement(opts: BenchOptions) -> Result<BenchReport, SettlementError> {
    let tmp = tempfile_dir(&opts)?;
    let bench_operator = Keypair::from_seed([13; 32]);
    let mut replicas = Vec::new();
    for id in 1..=opts.replicas {
        let ro = ReplicaOptions {
            snapshot_every: 50,
            rules: opengrid_settlement::LedgerRules {
                operator: Some(bench_operator.did()),
                ..Default::default()
            },
            ..ReplicaOptions::new(
                id,
                Keypair::from_seed([id as u8; 32]),
                "127.0.0.1:0",
                tmp.join(format!("r{id}")),
            )
        };
        replicas.push(start_replica(ro).await?);
    }
    let members: BTreeMap<u64, opengrid_consensus::Node> = replicas
        .iter()
        .map(|r| {
            (
                r.id(),
                opengrid_consensus::Node::new(r.local_addr().to_string(), r.did().clone()),
            )
        })
        .collect();
    replicas[0].initialize(members.clone()).await?;
    replicas[0].wait_for_leader(Duration::from_secs(20)).await?;
    let client = LedgerClient::new(
        members.values().map(|n| n.to_string()).collect(),
        &bench_operator,
    )?;

    let node = Keypair::from_seed([11; 32]);
    let rc = Keypair::from_seed([12; 32]);
    client
        .register_node(
            NodeRegistration::new(
                &node,
                SplitPolicy::Interchange,
                Account::new("node-op")?,
                vec![],
            )
            .authorize(&bench_operator),
        )
        .await?;
    client
        .register_rc(RcRegistration::new(&rc, Account::new("rc-op")?).authorize(&bench_operator))
        .await?;

    let receipts = make_receipts(&node, &rc, opts.receipts, 0);
    let expected_fees: u64 = receipts.iter().map(|r| r.receipt.fee_micros).sum();
    let batches: Vec<Batch> = receipts
        .chunks(opts.batch_size.max(1))
        .enumerate()
        .map(|(i, c)| Batch {
            rc: rc.did(),
            proposed_at_ms: 10_000,
            part: i as u32,
            receipts: c.to_vec(),
        })
        .collect();

    // per-batch commit latency, µs, up to an hour (HdrHistogram, 3 significant digits)
    let mut lat = hdrhistogram::Histogram::<u64>::new_with_max(3_600_000_000, 3)
        .expect("an hour of µs at 3 significant digits is a valid histogram");
    let start = Instant::now();
    let mut settled = 0u64;
    for b in &batches {
        let t = Instant::now();
        match client.submit_batch(b).await? {
            LedgerResponse::Batch { record, .. } => settled += u64::from(record.settled),
            other => return Err(SettlementError::Rejected(format!("{other:?}"))),
        }
        lat.saturating_record(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
    let seconds = start.elapsed().as_secs_f64();

    let summary = client
        .replica_status(&members[&replicas[0].id()].to_string())
        .await?
        .ledger;
    let duplicated = u64::from(summary.total_fees_micros > expected_fees);
    for r in replicas {
        r.shutdown().await?;
    }
    if opts.dir.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(BenchReport {
        name: "settlement_receipts_applied".into(),
        count: settled,
        batches: batches.len() as u64,
        replicas: opts.replicas,
        seconds,
        receipts_per_s: settled as f64 / seconds.max(1e-9),
        p50_us: lat.value_at_quantile(0.5),
        p99_us: lat.value_at_quantile(0.99),
        lost: opts.receipts as u64 - settled,
        duplicated,
    })
}

fn tempfile_dir(opts: &BenchOptions) -> Result<PathBuf, SettlementError> {
    let dir = match &opts.dir {
        Some(d) => d.clone(),
        None => {
            std::env::temp_dir().join(format!("opengrid-settlement-bench-{}", std::process::id()))
        }
    };
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

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

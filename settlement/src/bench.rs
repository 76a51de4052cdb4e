//! P8 benchmark: receipts/s applied through a 3-replica ledger on 127.0.0.1, each receipt with
//! two ed25519 verifies (node signature + RC co-signature) on every replica.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::SettlementError;
use crate::keys::Keypair;
use crate::ledger::{Batch, LedgerResponse, NodeRegistration, RcRegistration};
use crate::receipt::{Receipt, ReceiptId, SignedReceipt, Usage, UsageWindow};
use crate::replica::{start_replica, LedgerClient, ReplicaOptions};
use crate::split::{Account, SplitPolicy};

/// Benchmark parameters.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Receipts to settle in total.
    pub receipts: usize,
    /// Receipts per batch command.
    pub batch_size: usize,
    /// Ledger replicas (in this process, real TCP between them).
    pub replicas: u64,
    /// Where replica data dirs go (a temp dir when `None`).
    pub dir: Option<PathBuf>,
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    pub name: String,
    pub count: u64,
    pub batches: u64,
    pub replicas: u64,
    pub seconds: f64,
    pub receipts_per_s: f64,
    /// Per-batch commit latency (submit → applied on the leader).
    pub p50_us: u64,
    pub p99_us: u64,
    /// Receipts submitted but not settled.
    pub lost: u64,
    /// Receipts credited more than once (always 0: checked against the ledger totals).
    pub duplicated: u64,
}

/// `n` receipts from `node`, routed and co-signed by `rc`, nonces from `first_nonce`.
pub fn make_receipts(
    node: &Keypair,
    rc: &Keypair,
    n: usize,
    first_nonce: u64,
) -> Vec<SignedReceipt> {
    (0..n as u64)
        .map(|i| {
            let nonce = first_nonce + i;
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&nonce.to_be_bytes());
            id[8..].copy_from_slice(&node.verifying_key().to_bytes()[..8]);
            Receipt {
                receipt_id: ReceiptId(id),
                session_id: format!("bench-session-{}", nonce % 1_000),
                node: node.did(),
                rc: rc.did(),
                window: UsageWindow {
                    start_ms: 1_000,
                    end_ms: 2_000,
                },
                usage: Usage {
                    inputs: 10,
                    cpu_ms: 25,
                    bytes: 4_096,
                    tokens: Some(128),
                },
                fee_micros: 1_000 + nonce % 997,
                nonce,
            }
            .sign(node)
            .co_sign(rc)
        })
        .collect()
}

/// Run the P8 settlement benchmark.
pub async fn bench_settlement(opts: BenchOptions) -> Result<BenchReport, SettlementError> {
    let tmp = tempfile_dir(&opts)?;
    let mut replicas = Vec::new();
    for id in 1..=opts.replicas {
        let ro = ReplicaOptions {
            snapshot_every: 50,
            ..ReplicaOptions::new(id, "127.0.0.1:0", tmp.join(format!("r{id}")))
        };
        replicas.push(start_replica(ro).await?);
    }
    let addrs: BTreeMap<u64, String> = replicas
        .iter()
        .map(|r| (r.id(), r.local_addr().to_string()))
        .collect();
    replicas[0].initialize(addrs.clone()).await?;
    replicas[0].wait_for_leader(Duration::from_secs(20)).await?;
    let client = LedgerClient::new(addrs.values().cloned().collect());

    let node = Keypair::from_seed([11; 32]);
    let rc = Keypair::from_seed([12; 32]);
    client
        .register_node(NodeRegistration::new(
            &node,
            SplitPolicy::Interchange,
            Account::new("node-op")?,
            vec![],
        ))
        .await?;
    client
        .register_rc(RcRegistration::new(&rc, Account::new("rc-op")?))
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

    // per-batch commit latency, µs, up to an hour (3 significant digits)
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
        .replica_status(&addrs[&replicas[0].id()])
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

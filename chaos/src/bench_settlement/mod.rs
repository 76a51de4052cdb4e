//! `bench settlement` (P8): the settlement ledger as real processes on 127.0.0.1, against a
//! 3-member etcd cluster started by the bench on the same machine in the same run.
//!
//! What runs:
//! - three `opengrid-chaos ledger replica` child processes (this executable; the same code as
//!   `opengrid ledger replica`): openraft + RocksDB (every log append fsync'd) + the `Ledger`
//!   state machine, talking the consensus TCP transport to each other;
//! - when an `etcd` binary is found (`$OPENGRID_ETCD`, else `PATH`; Debian's `etcd-server`),
//!   three etcd members on 127.0.0.1 with their data dirs in the launcher's temp dir.
//!
//! Phases, each bounded in count and time:
//! 1. **writes**: plain small replicated writes (`--value-bytes`, default 100 B) at
//!    `--concurrency` (default 64) to the ledger group's leader, one persistent connection per
//!    writer (the consensus wire protocol, `ClientWrite`); the same count, concurrency and value
//!    size through etcd's v3 HTTP/JSON gateway (`POST /v3/kv/put`, base64, keep-alive) to the
//!    etcd leader. The ledger's write is an opaque command that the ledger answers as malformed
//!    after it is committed and applied, so it measures the Raft path (propose, fsync'd append on
//!    a majority, commit, apply, reply) and leaves the ledger state unchanged.
//! 2. **receipts**: a node key and an RC key are registered through the group; `--count`
//!    co-signed receipts are submitted in `--batch-size` parts with `--inflight` parts in flight;
//!    every replica checks both ed25519 signatures of every receipt. Receipts/s is applied
//!    receipts over the wall time from the first submit to the last applied reply; p50/p99 are
//!    per-part commit latencies (submit → applied on the leader, reply received).
//! 3. **settle**: one settlement batch of `--settle-receipts` (default 1 M) receipts, proposed as
//!    parts of `--batch-size`. When phase 2's rate says it would not settle within
//!    `--settle-budget-s`, the count is reduced to what fits and the report says so: the figure is
//!    always the measured time for the measured count.
//!
//! Then every replica must hold the same state hash, the ledger's totals must equal the fees of
//! the settled receipts exactly, and none may be lost or counted twice.
//!
//! Rooms: `group` (the replica processes, their leader, the final check), `writes` (phase 1 on
//! the ledger group), `etcd` (the baseline cluster and its writes), `receipts` (phases 2 and 3),
//! `machine` (where the figures come from), `report` (the JSON object and the human summary).

use std::path::Path;
use std::time::{Duration, Instant};

use opengrid_settlement::LedgerClient;
use serde::Serialize;

use crate::bench::BenchError;
use crate::report::Progress;

mod etcd;
mod group;
mod machine;
mod receipts;
mod report;
mod writes;

pub use etcd::find_etcd;
pub use machine::Machine;
pub use report::{
    human, ReceiptsReport, SettleReport, SettlementReport, Targets, VerifyCalibration, WriteStats,
    WritesReport,
};

use etcd::{etcd_version, etcd_writes, EtcdCluster};
use group::{final_check, Check, LedgerGroup};
use receipts::{receipts_phase, settle_phase, Parties, Tally};
use writes::raft_writes;

/// Targets of P8 (BENCHMARKS.md).
pub const TARGET_RECEIPTS_PER_S: f64 = 50_000.0;
/// A 1 M-receipt batch settles within this many seconds.
pub const TARGET_SETTLE_S: f64 = 30.0;
/// The receipt count the settle target names.
pub const TARGET_SETTLE_RECEIPTS: usize = 1_000_000;

/// Knobs of `bench settlement` (flattened into `opengrid-chaos bench`).
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct SettlementArgs {
    /// (settlement) Receipts per batch part.
    #[arg(long, default_value_t = 5_000)]
    pub batch_size: usize,
    /// (settlement) Batch parts in flight at once.
    #[arg(long, default_value_t = 2)]
    pub inflight: usize,
    /// (settlement) Receipts in the one settlement batch whose settle time is measured.
    #[arg(long, default_value_t = TARGET_SETTLE_RECEIPTS)]
    pub settle_receipts: usize,
    /// (settlement) Longest the settle phase may take; the count is reduced to fit (0: no
    /// settle phase).
    #[arg(long, default_value_t = 90)]
    pub settle_budget_s: u64,
    /// (settlement) Plain replicated writes per system (ledger group, etcd).
    #[arg(long, default_value_t = 20_000)]
    pub writes: usize,
    /// (settlement) Concurrent writers per system.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// (settlement) Value size of a plain write, bytes.
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// (settlement) Longest each system's write phase may take, seconds.
    #[arg(long, default_value_t = 60)]
    pub writes_budget_s: u64,
    /// (settlement) Do not start etcd (reported as skipped).
    #[arg(long)]
    pub no_etcd: bool,
}

impl Default for SettlementArgs {
    fn default() -> Self {
        Self {
            batch_size: 5_000,
            inflight: 2,
            settle_receipts: TARGET_SETTLE_RECEIPTS,
            settle_budget_s: 90,
            writes: 20_000,
            concurrency: 64,
            value_bytes: 100,
            writes_budget_s: 60,
            no_etcd: false,
        }
    }
}

fn failed(e: impl std::fmt::Display) -> BenchError {
    BenchError::Failed(e.to_string())
}

/// The knobs of one run, clamped to what the bench accepts.
struct Knobs {
    receipts: usize,
    batch_size: usize,
    writes: usize,
    /// Writes sent before the measured round (not counted).
    warmup: usize,
    concurrency: usize,
    value_bytes: usize,
    writes_budget: Duration,
}

impl Knobs {
    fn new(receipts: usize, cfg: &SettlementArgs) -> Knobs {
        let writes = cfg.writes.clamp(1, 10_000_000);
        Knobs {
            receipts: receipts.clamp(1, 10_000_000),
            batch_size: cfg
                .batch_size
                .clamp(1, opengrid_settlement::ledger::MAX_RECEIPTS_PER_BATCH),
            writes,
            warmup: (writes / 10).clamp(1, 1_000),
            concurrency: cfg.concurrency.clamp(1, 1_024),
            value_bytes: cfg.value_bytes.clamp(1, 1 << 20),
            writes_budget: Duration::from_secs(cfg.writes_budget_s.clamp(1, 3_600)),
        }
    }
}

/// Runs `bench settlement`. `receipts` is the phase-2 count (`--count`, default 100 000).
pub async fn settlement(
    exe: &Path,
    receipts: usize,
    cfg: &SettlementArgs,
    progress: &Progress,
) -> Result<SettlementReport, BenchError> {
    let t0 = Instant::now();
    let k = Knobs::new(receipts, cfg);
    let machine = Machine::detect();
    progress.line(format!(
        "machine: {} cpu(s), {}, {} GiB",
        machine.cpus, machine.cpu_model, machine.mem_gib
    ));

    // ---- the ledger group: writes, receipts, one big batch ----
    let mut group = LedgerGroup::start(exe, 3, progress).await?;
    let result = ledger_phases(&mut group, &k, cfg, progress).await;
    group.shutdown();
    let (raft_w, rec, settle, check) = result?;

    // ---- etcd, same machine, same run ----
    let (etcd_w, etcd_skipped, etcd_version) = etcd_baseline(&k, cfg, progress).await?;

    let throughput_ratio = etcd_w
        .as_ref()
        .map(|e| raft_w.writes_per_s / e.writes_per_s.max(1e-9));
    let p99_ratio = etcd_w
        .as_ref()
        .map(|e| raft_w.p99_us as f64 / (e.p99_us.max(1)) as f64);
    let writes_met = match (throughput_ratio, p99_ratio) {
        (Some(t), Some(p)) => Some(t >= 1.0 && p <= 1.0),
        _ => None,
    };
    let settled_total = rec.count + settle.as_ref().map(|s| s.settled).unwrap_or(0);
    let submitted_total = rec.submitted + settle.as_ref().map(|s| s.count as u64).unwrap_or(0);
    let targets = Targets {
        receipts_per_s: TARGET_RECEIPTS_PER_S,
        receipts_per_s_met: rec.receipts_per_s >= TARGET_RECEIPTS_PER_S,
        settle_1m_s: TARGET_SETTLE_S,
        settle_1m_met: settle
            .as_ref()
            .filter(|s| s.settled >= TARGET_SETTLE_RECEIPTS as u64)
            .map(|s| s.seconds <= TARGET_SETTLE_S),
        writes_vs_etcd_met: writes_met,
    };
    Ok(SettlementReport {
        name: "settlement",
        p50_us: rec.p50_us,
        p99_us: rec.p99_us,
        count: settled_total,
        lost: submitted_total.saturating_sub(check.settled_on_ledger),
        duplicated: check.settled_on_ledger.saturating_sub(submitted_total),
        replicas: "3 `opengrid-chaos ledger replica` processes on 127.0.0.1 (openraft + RocksDB, \
                   fsync on, consensus TCP transport)"
            .into(),
        replicas_agree: check.agree,
        totals_exact: check.totals_exact,
        machine,
        config: cfg.clone(),
        writes: WritesReport {
            concurrency: k.concurrency,
            value_bytes: k.value_bytes,
            requested: k.writes,
            warmup: k.warmup,
            raft: raft_w,
            etcd: etcd_w,
            etcd_skipped,
            etcd_version,
            throughput_ratio: throughput_ratio.map(|r| (r * 100.0).round() / 100.0),
            p99_ratio: p99_ratio.map(|r| (r * 100.0).round() / 100.0),
            target_met: writes_met,
        },
        receipts: rec,
        settle,
        verify: check.verify,
        targets,
        total_s: t0.elapsed().as_secs_f64(),
    })
}

/// Phases 1–3 on the ledger group, then the final cross-replica check.
async fn ledger_phases(
    group: &mut LedgerGroup,
    k: &Knobs,
    cfg: &SettlementArgs,
    progress: &Progress,
) -> Result<(WriteStats, ReceiptsReport, Option<SettleReport>, Check), BenchError> {
    let leader = group.wait_leader(Duration::from_secs(30)).await?;

    // Phase 1: plain writes (on a fresh group, like etcd's).
    raft_writes(
        &leader,
        0,
        k.warmup,
        k.concurrency,
        k.value_bytes,
        k.writes_budget,
    )
    .await;
    let (raft_w, err) = raft_writes(
        &leader,
        k.warmup,
        k.writes,
        k.concurrency,
        k.value_bytes,
        k.writes_budget,
    )
    .await;
    if let Some(e) = err {
        progress.line(format!("ledger: first write error: {e}"));
    }
    progress.line(format!(
        "ledger raft writes: {:.0}/s, p50 {} µs, p99 {} µs",
        raft_w.writes_per_s, raft_w.p50_us, raft_w.p99_us
    ));

    // Phase 2: receipts.
    let leader = group.wait_leader(Duration::from_secs(30)).await?;
    let addrs = group.addrs_leader_first(&leader);
    let client = LedgerClient::with_timeout(
        addrs.clone(),
        Duration::from_secs(30),
        &opengrid_settlement::Keypair::generate(),
    )
    .map_err(|e| BenchError::Failed(e.to_string()))?;
    let parties = Parties::register(&client).await?;
    let verify = parties.calibrate(3);
    progress.line(format!(
        "verify: {:.0}/s on 1 thread, {:.0}/s on all; derived ceiling for 3 replicas here: \
         {:.0} receipts/s",
        verify.verifies_per_s_1_thread,
        verify.verifies_per_s_all_threads,
        verify.derived_ceiling_receipts_per_s
    ));
    let mut tally = Tally::default();
    let rec = receipts_phase(
        &addrs,
        &parties,
        k.receipts,
        k.batch_size,
        cfg.inflight,
        &mut tally,
        progress,
    )
    .await?;

    // Phase 3: one big settlement batch, sized to the budget.
    let settle = settle_phase(
        &addrs,
        &parties,
        rec.receipts_per_s,
        k.batch_size,
        cfg,
        &mut tally,
        progress,
    )
    .await?;

    // Every replica reaches the leader's applied index and the same state; totals exact.
    let check = final_check(group, &addrs, &tally, verify).await?;
    Ok((raft_w, rec, settle, check))
}

/// The etcd baseline (same writes, same machine, same run): its write stats, why it was
/// skipped, and the etcd version.
async fn etcd_baseline(
    k: &Knobs,
    cfg: &SettlementArgs,
    progress: &Progress,
) -> Result<(Option<WriteStats>, Option<String>, Option<String>), BenchError> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(k.concurrency)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(failed)?;
    let etcd_bin = if cfg.no_etcd { None } else { find_etcd() };
    Ok(match (&etcd_bin, cfg.no_etcd) {
        (_, true) => (None, Some("--no-etcd".to_string()), None),
        (None, _) => {
            let why =
                "no etcd binary found (set OPENGRID_ETCD or `apt-get install -y etcd-server`); \
                       etcd baseline skipped"
                    .to_string();
            progress.line(&why);
            eprintln!("opengrid-chaos bench settlement: {why}");
            (None, Some(why), None)
        }
        (Some(bin), _) => {
            let version = etcd_version(bin);
            let cluster = EtcdCluster::start(bin, &http).await?;
            let r = async {
                let leader = cluster.leader(&http).await?;
                progress.line(format!(
                    "etcd: 3 members up ({}), leader {leader}",
                    version.clone().unwrap_or_default()
                ));
                etcd_writes(
                    &http,
                    &leader,
                    0,
                    k.warmup,
                    k.concurrency,
                    k.value_bytes,
                    k.writes_budget,
                )
                .await;
                let (w, err) = etcd_writes(
                    &http,
                    &leader,
                    k.warmup,
                    k.writes,
                    k.concurrency,
                    k.value_bytes,
                    k.writes_budget,
                )
                .await;
                if let Some(e) = err {
                    progress.line(format!("etcd: first write error: {e}"));
                }
                Ok::<_, BenchError>(w)
            }
            .await;
            cluster.shutdown();
            let w = r?;
            progress.line(format!(
                "etcd writes: {:.0}/s, p50 {} µs, p99 {} µs",
                w.writes_per_s, w.p50_us, w.p99_us
            ));
            (Some(w), None, version)
        }
    })
}

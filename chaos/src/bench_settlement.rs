//! `bench settlement` (P8): the settlement ledger as real processes on 127.0.0.1, against a
//! 3-member etcd cluster started by the bench on the same machine in the same run.
//!
//! What runs:
//! - three `opengrid-chaos ledger replica` child processes (this executable; the same code as
//!   `opengrid ledger replica`): openraft + RocksDB (every log append fsync'd) + the [`Ledger`]
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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opengrid_consensus::network::{Connection, RpcRequest, RpcResponse, DEFAULT_MAX_FRAME_BYTES};
use opengrid_consensus::{Client, NodeStatus};
use opengrid_settlement::bench::make_receipts;
use opengrid_settlement::ledger::{NodeRegistration, RcRegistration};
use opengrid_settlement::replica::ReplicaStatus;
use opengrid_settlement::{
    Account, Batch, Keypair, LedgerClient, LedgerResponse, SignedReceipt, SplitPolicy,
};
use serde::Serialize;

use crate::bench::{summarize, BenchError, Summary};
use crate::launcher::{Launcher, ProcSpec, ProcState};
use crate::report::Progress;

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

/// The machine the figures come from.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// Logical CPUs this process may use.
    pub cpus: usize,
    /// `/proc/cpuinfo` model name.
    pub cpu_model: String,
    /// `/proc/meminfo` MemTotal, GiB.
    pub mem_gib: f64,
    /// Kernel release.
    pub kernel: String,
}

impl Machine {
    /// Reads `/proc` (empty fields where it cannot).
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let field = |text: &str, key: &str| {
            text.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default()
        };
        let mem_kib: f64 = field(&meminfo, "MemTotal")
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap_or(0.0);
        Machine {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu_model: field(&cpuinfo, "model name"),
            mem_gib: (mem_kib / (1024.0 * 1024.0) * 10.0).round() / 10.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }
}

/// Plain replicated writes of one system.
#[derive(Clone, Debug, Serialize)]
pub struct WriteStats {
    /// `opengrid-raft` or `etcd`.
    pub system: String,
    /// Writes acknowledged in the measured round.
    pub count: usize,
    /// Writes that failed (error or non-success answer).
    pub errors: usize,
    /// Wall time of the measured round.
    pub seconds: f64,
    /// Acknowledged writes per second.
    pub writes_per_s: f64,
    /// Per-write latency median, µs.
    pub p50_us: u64,
    /// Per-write latency p99, µs.
    pub p99_us: u64,
    /// Worst write, µs.
    pub max_us: u64,
    /// Whether the round stopped on its time budget before `count` writes.
    pub hit_time_budget: bool,
}

/// The write comparison.
#[derive(Clone, Debug, Serialize)]
pub struct WritesReport {
    /// Concurrent writers on each side.
    pub concurrency: usize,
    /// Value bytes per write on each side.
    pub value_bytes: usize,
    /// Writes requested per side (after a warm-up round of `warmup` writes).
    pub requested: usize,
    /// Unmeasured warm-up writes per side.
    pub warmup: usize,
    /// The ledger's Raft group.
    pub raft: WriteStats,
    /// etcd, when it ran.
    pub etcd: Option<WriteStats>,
    /// Why etcd did not run.
    pub etcd_skipped: Option<String>,
    /// `etcd --version`, first line.
    pub etcd_version: Option<String>,
    /// raft writes/s ÷ etcd writes/s.
    pub throughput_ratio: Option<f64>,
    /// raft p99 ÷ etcd p99 (≤ 1 is no worse).
    pub p99_ratio: Option<f64>,
    /// Target: ratio ≥ 1 (issue #6) with p99 no worse.
    pub target_met: Option<bool>,
}

/// Receipts applied through the replicated ledger.
#[derive(Clone, Debug, Serialize)]
pub struct ReceiptsReport {
    /// Receipts settled.
    pub count: u64,
    /// Receipts submitted.
    pub submitted: u64,
    /// Receipts the ledger rejected (none expected).
    pub rejected: u64,
    /// Batch parts.
    pub batches: usize,
    /// Receipts per part.
    pub batch_size: usize,
    /// Parts in flight.
    pub inflight: usize,
    /// First submit → last applied reply.
    pub seconds: f64,
    /// Settled receipts per second.
    pub receipts_per_s: f64,
    /// Per-part commit latency median, µs.
    pub p50_us: u64,
    /// Per-part commit latency p99, µs.
    pub p99_us: u64,
    /// Worst part, µs.
    pub max_us: u64,
    /// Time to generate and sign the receipts (not part of `seconds`).
    pub generate_s: f64,
    /// Encoded bytes of one part.
    pub part_bytes: usize,
    /// Whether the phase stopped on its hard deadline.
    pub hit_deadline: bool,
}

/// One settlement batch of many receipts.
#[derive(Clone, Debug, Serialize)]
pub struct SettleReport {
    /// Receipts asked for (`--settle-receipts`).
    pub requested: usize,
    /// Receipts actually submitted (and timed).
    pub count: usize,
    /// Why fewer than requested, if so.
    pub reduced_because: Option<String>,
    /// Receipts settled.
    pub settled: u64,
    /// Parts.
    pub parts: usize,
    /// First part submitted → last part applied on the leader (committed on a majority).
    pub seconds: f64,
    /// Settled receipts per second in this phase.
    pub receipts_per_s: f64,
    /// Time to generate and sign the receipts (not part of `seconds`).
    pub generate_s: f64,
    /// Whether the phase stopped on its hard deadline (2 × budget).
    pub hit_deadline: bool,
}

/// Signature verification speed measured in this process (context for the receipts figure).
#[derive(Clone, Debug, Serialize)]
pub struct VerifyCalibration {
    /// ed25519 verifies per second on one thread (two per receipt).
    pub verifies_per_s_1_thread: f64,
    /// Verifies per second on all threads.
    pub verifies_per_s_all_threads: f64,
    /// Derived, not measured: all-thread verifies/s ÷ (2 verifies × replicas), the most receipts/s
    /// replicas sharing this machine's cores could check.
    pub derived_ceiling_receipts_per_s: f64,
}

/// `bench settlement` result (one JSON object).
#[derive(Clone, Debug, Serialize)]
pub struct SettlementReport {
    /// `settlement`.
    pub name: &'static str,
    /// Phase 2 per-part commit latency median, µs.
    pub p50_us: u64,
    /// Phase 2 per-part commit latency p99, µs.
    pub p99_us: u64,
    /// Receipts settled in phases 2 and 3.
    pub count: u64,
    /// Receipts submitted but not settled.
    pub lost: u64,
    /// Receipts counted more than once.
    pub duplicated: u64,
    /// How the replicas ran.
    pub replicas: String,
    /// Replicas whose final state hash and totals agree.
    pub replicas_agree: bool,
    /// The ledger's totals equal the settled fees exactly.
    pub totals_exact: bool,
    /// The machine.
    pub machine: Machine,
    /// The knobs.
    pub config: SettlementArgs,
    /// Phase 1.
    pub writes: WritesReport,
    /// Phase 2.
    pub receipts: ReceiptsReport,
    /// Phase 3 (absent with `--settle-budget-s 0`).
    pub settle: Option<SettleReport>,
    /// Verify speed in this process.
    pub verify: VerifyCalibration,
    /// Targets and whether they were met by the measured figures.
    pub targets: Targets,
    /// Whole bench wall time.
    pub total_s: f64,
}

/// P8 targets next to the figures.
#[derive(Clone, Debug, Serialize)]
pub struct Targets {
    /// ≥ 50 k receipts/s.
    pub receipts_per_s: f64,
    /// Met?
    pub receipts_per_s_met: bool,
    /// ≤ 30 s for 1 M receipts.
    pub settle_1m_s: f64,
    /// Met? `None` when fewer than 1 M receipts were settled (not measured).
    pub settle_1m_met: Option<bool>,
    /// Writes ≥ etcd with p99 no worse; `None` when etcd was skipped.
    pub writes_vs_etcd_met: Option<bool>,
}

fn failed(e: impl std::fmt::Display) -> BenchError {
    BenchError::Failed(e.to_string())
}

/// Three ledger replica processes.
struct LedgerGroup {
    launcher: Launcher,
    addrs: BTreeMap<u64, String>,
}

impl LedgerGroup {
    async fn start(exe: &Path, n: u64, progress: &Progress) -> Result<Self, BenchError> {
        let mut launcher = Launcher::new()?;
        // Hold distinct ports together, then release them for the children.
        let listeners = (0..n)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<Vec<_>, _>>()?;
        let addrs: BTreeMap<u64, String> = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| Ok((i as u64 + 1, l.local_addr()?.to_string())))
            .collect::<Result<_, std::io::Error>>()?;
        drop(listeners);
        let peers = addrs
            .iter()
            .map(|(i, a)| format!("{i}={a}"))
            .collect::<Vec<_>>()
            .join(",");
        for (id, addr) in &addrs {
            let name = format!("ledger-{id}");
            let dir = launcher.data_dir(&name)?;
            launcher.spawn(
                ProcSpec::new(&name, exe)
                    .args([
                        "ledger".to_string(),
                        "replica".into(),
                        "--id".into(),
                        id.to_string(),
                        "--addr".into(),
                        addr.clone(),
                        "--data-dir".into(),
                        dir.display().to_string(),
                        "--peers".into(),
                        peers.clone(),
                    ])
                    .env(
                        "RUST_LOG",
                        std::env::var("OPENGRID_REPLICA_LOG").unwrap_or_else(|_| "warn".into()),
                    ),
            )?;
        }
        let mut group = LedgerGroup { launcher, addrs };
        group.wait_leader(Duration::from_secs(30)).await?;
        progress.line(format!(
            "ledger: 3 replica processes up at {:?}",
            group.addrs.values().collect::<Vec<_>>()
        ));
        Ok(group)
    }

    async fn statuses(&self) -> BTreeMap<u64, NodeStatus> {
        let c = Client::new(vec![]).with_timeout(Duration::from_secs(30));
        let mut out = BTreeMap::new();
        for (id, a) in &self.addrs {
            if let Ok(s) = c.status(a).await {
                out.insert(*id, s);
            }
        }
        out
    }

    /// Waits until every replica answers and names the same leader; returns its address.
    async fn wait_leader(&mut self, limit: Duration) -> Result<String, BenchError> {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.statuses().await;
            if s.len() == self.addrs.len() {
                let leaders: Vec<Option<u64>> = s.values().map(|x| x.current_leader).collect();
                if let Some(Some(l)) = leaders.first() {
                    if leaders.iter().all(|x| *x == Some(*l)) {
                        if let Some(a) = self.addrs.get(l) {
                            return Ok(a.clone());
                        }
                    }
                }
            }
            self.check_alive()?;
            if Instant::now() >= deadline {
                return Err(BenchError::NotReady {
                    name: "ledger group".into(),
                    waited: limit,
                    why: format!("no agreed leader; statuses: {s:?}"),
                    logs: self.launcher.root().display().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn check_alive(&mut self) -> Result<(), BenchError> {
        for name in self.launcher.names() {
            let st = self.launcher.state(&name)?;
            if st != ProcState::Running {
                let (_, err) = self.launcher.log_paths(&name);
                let logs = self.launcher.keep_files();
                return Err(BenchError::NotReady {
                    name,
                    waited: Duration::ZERO,
                    why: format!("it is {st:?}; stderr in {}", err.display()),
                    logs: logs.display().to_string(),
                });
            }
        }
        Ok(())
    }

    /// Addresses with the leader first.
    fn addrs_leader_first(&self, leader: &str) -> Vec<String> {
        std::iter::once(leader.to_string())
            .chain(self.addrs.values().filter(|a| *a != leader).cloned())
            .collect()
    }

    fn shutdown(mut self) {
        for name in self.launcher.names() {
            if self.launcher.state(&name).ok() == Some(ProcState::Running) {
                let _ = self.launcher.stop(&name, Duration::from_secs(3));
            }
        }
        self.launcher.shutdown();
    }
}

/// `etcd` from `$OPENGRID_ETCD` or `PATH`.
pub fn find_etcd() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OPENGRID_ETCD") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
}

/// Three etcd members on 127.0.0.1.
struct EtcdCluster {
    launcher: Launcher,
    client_urls: Vec<String>,
}

impl EtcdCluster {
    async fn start(bin: &Path, http: &reqwest::Client) -> Result<Self, BenchError> {
        let mut launcher = Launcher::new()?;
        let listeners = (0..6)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<Vec<_>, _>>()?;
        let ports = listeners
            .iter()
            .map(|l| Ok(l.local_addr()?.port()))
            .collect::<Result<Vec<u16>, std::io::Error>>()?;
        drop(listeners);
        let client_urls: Vec<String> = (0..3)
            .map(|i| format!("http://127.0.0.1:{}", ports[i]))
            .collect();
        let peer_urls: Vec<String> = (0..3)
            .map(|i| format!("http://127.0.0.1:{}", ports[3 + i]))
            .collect();
        let initial = (0..3)
            .map(|i| format!("etcd-{i}={}", peer_urls[i]))
            .collect::<Vec<_>>()
            .join(",");
        for i in 0..3 {
            let name = format!("etcd-{i}");
            let dir = launcher.data_dir(&name)?;
            launcher.spawn(ProcSpec::new(&name, bin).args([
                "--name".to_string(),
                name.clone(),
                "--data-dir".into(),
                dir.join("etcd").display().to_string(),
                "--listen-client-urls".into(),
                client_urls[i].clone(),
                "--advertise-client-urls".into(),
                client_urls[i].clone(),
                "--listen-peer-urls".into(),
                peer_urls[i].clone(),
                "--initial-advertise-peer-urls".into(),
                peer_urls[i].clone(),
                "--initial-cluster".into(),
                initial.clone(),
                "--initial-cluster-token".into(),
                format!("opengrid-bench-{}", std::process::id()),
                "--initial-cluster-state".into(),
                "new".into(),
                "--log-level".into(),
                "warn".into(),
            ]))?;
        }
        let mut c = EtcdCluster {
            launcher,
            client_urls,
        };
        let limit = Duration::from_secs(30);
        let deadline = Instant::now() + limit;
        loop {
            let mut healthy = 0;
            for u in &c.client_urls {
                if let Ok(r) = http.get(format!("{u}/health")).send().await {
                    if r.text().await.unwrap_or_default().contains("true") {
                        healthy += 1;
                    }
                }
            }
            if healthy == c.client_urls.len() {
                return Ok(c);
            }
            for n in c.launcher.names() {
                let st = c.launcher.state(&n)?;
                if st != ProcState::Running {
                    let logs = c.launcher.keep_files().display().to_string();
                    return Err(BenchError::NotReady {
                        name: n,
                        waited: limit,
                        why: format!("it is {st:?}"),
                        logs,
                    });
                }
            }
            if Instant::now() >= deadline {
                let logs = c.launcher.keep_files().display().to_string();
                return Err(BenchError::NotReady {
                    name: "etcd cluster".into(),
                    waited: limit,
                    why: format!("{healthy}/3 members healthy"),
                    logs,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The leader's client URL (from `/v3/maintenance/status` of each member).
    async fn leader(&self, http: &reqwest::Client) -> Result<String, BenchError> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for u in &self.client_urls {
                let Ok(r) = http
                    .post(format!("{u}/v3/maintenance/status"))
                    .body("{}")
                    .send()
                    .await
                else {
                    continue;
                };
                let v: serde_json::Value = match r.json().await {
                    Ok(v) => v,
                    Err(_) => continue,
                };
                let leader = &v["leader"];
                if !leader.is_null() && *leader == v["header"]["member_id"] {
                    return Ok(u.clone());
                }
            }
            if Instant::now() >= deadline {
                return Err(failed("etcd: no member reports itself leader"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn shutdown(mut self) {
        for name in self.launcher.names() {
            if self.launcher.state(&name).ok() == Some(ProcState::Running) {
                let _ = self.launcher.stop(&name, Duration::from_secs(3));
            }
        }
        self.launcher.shutdown();
    }
}

/// `etcd --version`, first line.
fn etcd_version(bin: &Path) -> Option<String> {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(|l| l.trim().to_string())
}

/// Standard base64 (the etcd JSON gateway's encoding of bytes).
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// The `i`-th value of `len` bytes. Its first byte is no ledger command tag, so the ledger
/// answers it as malformed after it is committed (state unchanged).
fn value(i: usize, len: usize) -> Vec<u8> {
    let mut v = vec![0xA5u8; len.max(1)];
    for (k, b) in (i as u64).to_le_bytes().iter().enumerate() {
        if let Some(x) = v.get_mut(k + 1) {
            *x = *b;
        }
    }
    v
}

/// Per-writer outcome.
#[derive(Default)]
struct WriterOut {
    lat: Vec<u64>,
    errors: usize,
    first_error: Option<String>,
}

fn collect(
    system: &str,
    outs: Vec<WriterOut>,
    seconds: f64,
    requested: usize,
) -> (WriteStats, Option<String>) {
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for o in outs {
        lat.extend(o.lat);
        errors += o.errors;
        first_error = first_error.or(o.first_error);
    }
    let count = lat.len();
    let s: Summary = summarize(lat);
    (
        WriteStats {
            system: system.into(),
            count,
            errors,
            seconds,
            writes_per_s: count as f64 / seconds.max(1e-9),
            p50_us: s.p50_us,
            p99_us: s.p99_us,
            max_us: s.max_us,
            hit_time_budget: count + errors < requested,
        },
        first_error,
    )
}

/// `total` writes of `value_bytes` with `concurrency` writers, one persistent consensus
/// connection each, to `leader`.
async fn raft_writes(
    leader: &str,
    first: usize,
    total: usize,
    concurrency: usize,
    value_bytes: usize,
    budget: Duration,
) -> (WriteStats, Option<String>) {
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + budget;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let next = next.clone();
        let leader = leader.to_string();
        tasks.spawn(async move {
            let mut out = WriterOut::default();
            let mut conn = Connection::new(leader, DEFAULT_MAX_FRAME_BYTES);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || Instant::now() >= deadline {
                    break;
                }
                let req = RpcRequest::ClientWrite {
                    command: value(first + i, value_bytes),
                    forward: true,
                };
                let t = Instant::now();
                match conn.request(&req, Duration::from_secs(10)).await {
                    Ok(RpcResponse::Client(Ok(_))) => out.lat.push(t.elapsed().as_micros() as u64),
                    other => {
                        out.errors += 1;
                        if out.first_error.is_none() {
                            out.first_error = Some(format!("{other:?}"));
                        }
                    }
                }
            }
            out
        });
    }
    let outs = tasks.join_all().await;
    collect("opengrid-raft", outs, start.elapsed().as_secs_f64(), total)
}

/// `total` puts of `value_bytes` with `concurrency` writers through etcd's JSON gateway.
async fn etcd_writes(
    http: &reqwest::Client,
    leader: &str,
    first: usize,
    total: usize,
    concurrency: usize,
    value_bytes: usize,
    budget: Duration,
) -> (WriteStats, Option<String>) {
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + budget;
    let start = Instant::now();
    let url = format!("{leader}/v3/kv/put");
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..concurrency.max(1) {
        let next = next.clone();
        let url = url.clone();
        let http = http.clone();
        tasks.spawn(async move {
            let mut out = WriterOut::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || Instant::now() >= deadline {
                    break;
                }
                let body = format!(
                    "{{\"key\":\"{}\",\"value\":\"{}\"}}",
                    base64(format!("bench/{w}/{}", first + i).as_bytes()),
                    base64(&value(first + i, value_bytes))
                );
                let t = Instant::now();
                let r = http.post(&url).body(body).send().await;
                let ok = match r {
                    Ok(r) if r.status().is_success() => match r.bytes().await {
                        Ok(b) if b.windows(8).any(|x| x == b"\"header\"") => Ok(()),
                        Ok(b) => Err(String::from_utf8_lossy(&b).into_owned()),
                        Err(e) => Err(e.to_string()),
                    },
                    Ok(r) => Err(format!("HTTP {}", r.status())),
                    Err(e) => Err(e.to_string()),
                };
                match ok {
                    Ok(()) => out.lat.push(t.elapsed().as_micros() as u64),
                    Err(e) => {
                        out.errors += 1;
                        if out.first_error.is_none() {
                            out.first_error = Some(e);
                        }
                    }
                }
            }
            out
        });
    }
    let outs = tasks.join_all().await;
    collect("etcd", outs, start.elapsed().as_secs_f64(), total)
}

/// `n` co-signed receipts with nonces from `first_nonce`, signed on all cores.
fn generate(node: &Keypair, rc: &Keypair, n: usize, first_nonce: u64) -> Vec<SignedReceipt> {
    let threads = std::thread::available_parallelism()
        .map(|t| t.get())
        .unwrap_or(1)
        .max(1);
    let per = n.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let start = (t * per).min(n);
                let len = per.min(n - start);
                s.spawn(move || make_receipts(node, rc, len, first_nonce + start as u64))
            })
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

fn parts(rc: &Keypair, receipts: Vec<SignedReceipt>, size: usize, first_part: u32) -> Vec<Batch> {
    receipts
        .chunks(size.max(1))
        .enumerate()
        .map(|(i, c)| Batch {
            rc: rc.did(),
            proposed_at_ms: 10_000,
            part: first_part + i as u32,
            receipts: c.to_vec(),
        })
        .collect()
}

/// Outcome of submitting parts.
struct SubmitOut {
    /// Receipts in the parts that were answered.
    submitted: u64,
    /// Fees of those receipts.
    fees_submitted: u64,
    /// Fees the ledger reports as settled.
    fees_settled: u64,
    settled: u64,
    rejected: u64,
    first_rejection: Option<String>,
    lat: Vec<u64>,
    seconds: f64,
    hit_deadline: bool,
}

/// One submitter's tally.
struct PartsDone {
    lat: Vec<u64>,
    submitted: u64,
    fees_submitted: u64,
    fees_settled: u64,
    settled: u64,
    rejected: u64,
    first_rejection: Option<String>,
    hit_deadline: bool,
}

/// Submits `batches` with `inflight` parts in flight; stops taking new parts at `deadline`.
async fn submit_parts(
    addrs: Vec<String>,
    batches: Arc<Vec<Batch>>,
    inflight: usize,
    deadline: Instant,
    progress: &Progress,
    label: &str,
) -> Result<SubmitOut, BenchError> {
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..inflight.max(1) {
        let (next, done, batches, addrs) =
            (next.clone(), done.clone(), batches.clone(), addrs.clone());
        tasks.spawn(async move {
            let client = LedgerClient::with_timeout(addrs, Duration::from_secs(120));
            let mut lat = Vec::new();
            let (mut settled, mut rejected, mut first_rejection) = (0u64, 0u64, None);
            let (mut submitted, mut fees_submitted, mut fees_settled) = (0u64, 0u64, 0u64);
            let mut hit_deadline = false;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= batches.len() {
                    break;
                }
                if Instant::now() >= deadline {
                    hit_deadline = true;
                    break;
                }
                let t = Instant::now();
                match client.submit_batch(&batches[i]).await {
                    Ok(LedgerResponse::Batch { record, .. }) => {
                        lat.push(t.elapsed().as_micros() as u64);
                        submitted += batches[i].receipts.len() as u64;
                        fees_submitted += batches[i]
                            .receipts
                            .iter()
                            .map(|r| r.receipt.fee_micros)
                            .sum::<u64>();
                        fees_settled += record.fees_settled_micros;
                        settled += u64::from(record.settled);
                        rejected += record.rejected.len() as u64;
                        if first_rejection.is_none() {
                            first_rejection = record.rejected.first().map(|r| format!("{r:?}"));
                        }
                    }
                    Ok(other) => return Err(failed(format!("part {i}: {other:?}"))),
                    Err(e) => return Err(failed(format!("part {i}: {e}"))),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(PartsDone {
                lat,
                submitted,
                fees_submitted,
                fees_settled,
                settled,
                rejected,
                first_rejection,
                hit_deadline,
            })
        });
    }
    let total = batches.len();
    let mut out = SubmitOut {
        submitted: 0,
        fees_submitted: 0,
        fees_settled: 0,
        settled: 0,
        rejected: 0,
        first_rejection: None,
        lat: Vec::new(),
        seconds: 0.0,
        hit_deadline: false,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tokio::select! {
            r = tasks.join_next() => match r {
                None => break,
                Some(Ok(Ok(d))) => {
                    out.lat.extend(d.lat);
                    out.submitted += d.submitted;
                    out.fees_submitted += d.fees_submitted;
                    out.fees_settled += d.fees_settled;
                    out.settled += d.settled;
                    out.rejected += d.rejected;
                    out.first_rejection = out.first_rejection.or(d.first_rejection);
                    out.hit_deadline |= d.hit_deadline;
                }
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => return Err(failed(e)),
            },
            _ = tick.tick() => progress.line(format!(
                "{label}: {}/{total} parts applied, {:.0} s",
                done.load(Ordering::Relaxed),
                start.elapsed().as_secs_f64()
            )),
        }
    }
    out.seconds = start.elapsed().as_secs_f64();
    Ok(out)
}

fn calibrate(node: &Keypair, rc: &Keypair, replicas: u64) -> VerifyCalibration {
    let sample = generate(node, rc, 2_000, u64::MAX / 2);
    let check = |r: &SignedReceipt| {
        r.verify(
            &r.receipt.node.verifying_key(),
            &r.receipt.rc.verifying_key(),
        )
        .is_ok()
    };
    let t = Instant::now();
    let ok1 = sample.iter().filter(|r| check(r)).count();
    let one = (2 * ok1) as f64 / t.elapsed().as_secs_f64().max(1e-9);
    let threads = std::thread::available_parallelism()
        .map(|t| t.get())
        .unwrap_or(1);
    let t = Instant::now();
    let okn: usize = std::thread::scope(|s| {
        let hs: Vec<_> = sample
            .chunks(sample.len().div_ceil(threads).max(1))
            .map(|c| s.spawn(move || c.iter().filter(|r| check(r)).count()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    let all = (2 * okn) as f64 / t.elapsed().as_secs_f64().max(1e-9);
    VerifyCalibration {
        verifies_per_s_1_thread: one.round(),
        verifies_per_s_all_threads: all.round(),
        derived_ceiling_receipts_per_s: (all / (2.0 * replicas as f64)).round(),
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
    let receipts = receipts.clamp(1, 10_000_000);
    let batch_size = cfg
        .batch_size
        .clamp(1, opengrid_settlement::ledger::MAX_RECEIPTS_PER_BATCH);
    let writes = cfg.writes.clamp(1, 10_000_000);
    let concurrency = cfg.concurrency.clamp(1, 1_024);
    let value_bytes = cfg.value_bytes.clamp(1, 1 << 20);
    let writes_budget = Duration::from_secs(cfg.writes_budget_s.clamp(1, 3_600));
    let warmup = (writes / 10).clamp(1, 1_000);
    let machine = Machine::detect();
    progress.line(format!(
        "machine: {} cpu(s), {}, {} GiB",
        machine.cpus, machine.cpu_model, machine.mem_gib
    ));

    // ---- the ledger group: writes, receipts, one big batch ----
    let mut group = LedgerGroup::start(exe, 3, progress).await?;
    let result = ledger_phases(
        &mut group,
        receipts,
        batch_size,
        writes,
        warmup,
        concurrency,
        value_bytes,
        writes_budget,
        cfg,
        progress,
    )
    .await;
    group.shutdown();
    let (raft_w, rec, settle, check) = result?;

    // ---- etcd, same machine, same run ----
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(failed)?;
    let etcd_bin = if cfg.no_etcd { None } else { find_etcd() };
    let (etcd_w, etcd_skipped, etcd_version) = match (&etcd_bin, cfg.no_etcd) {
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
                    warmup,
                    concurrency,
                    value_bytes,
                    writes_budget,
                )
                .await;
                let (w, err) = etcd_writes(
                    &http,
                    &leader,
                    warmup,
                    writes,
                    concurrency,
                    value_bytes,
                    writes_budget,
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
    };

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
            concurrency,
            value_bytes,
            requested: writes,
            warmup,
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

/// The final cross-replica check.
struct Check {
    settled_on_ledger: u64,
    agree: bool,
    totals_exact: bool,
    verify: VerifyCalibration,
}

#[allow(clippy::too_many_arguments)]
async fn ledger_phases(
    group: &mut LedgerGroup,
    receipts: usize,
    batch_size: usize,
    writes: usize,
    warmup: usize,
    concurrency: usize,
    value_bytes: usize,
    writes_budget: Duration,
    cfg: &SettlementArgs,
    progress: &Progress,
) -> Result<(WriteStats, ReceiptsReport, Option<SettleReport>, Check), BenchError> {
    let leader = group.wait_leader(Duration::from_secs(30)).await?;

    // Phase 1: plain writes (on a fresh group, like etcd's).
    raft_writes(&leader, 0, warmup, concurrency, value_bytes, writes_budget).await;
    let (raft_w, err) = raft_writes(
        &leader,
        warmup,
        writes,
        concurrency,
        value_bytes,
        writes_budget,
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
    let client = LedgerClient::with_timeout(addrs.clone(), Duration::from_secs(30));
    let node = Keypair::from_seed([41; 32]);
    let rc = Keypair::from_seed([42; 32]);
    let reg = client
        .register_node(NodeRegistration::new(
            &node,
            SplitPolicy::Interchange,
            Account::new("bench-node-op").map_err(failed)?,
            vec![],
        ))
        .await
        .map_err(failed)?;
    if !matches!(reg, LedgerResponse::Registered(_)) {
        return Err(failed(format!("node registration: {reg:?}")));
    }
    let reg = client
        .register_rc(RcRegistration::new(
            &rc,
            Account::new("bench-rc-op").map_err(failed)?,
        ))
        .await
        .map_err(failed)?;
    if !matches!(reg, LedgerResponse::Registered(_)) {
        return Err(failed(format!("rc registration: {reg:?}")));
    }
    let verify = calibrate(&node, &rc, 3);
    progress.line(format!(
        "verify: {:.0}/s on 1 thread, {:.0}/s on all; derived ceiling for 3 replicas here: \
         {:.0} receipts/s",
        verify.verifies_per_s_1_thread,
        verify.verifies_per_s_all_threads,
        verify.derived_ceiling_receipts_per_s
    ));

    let tg = Instant::now();
    let rs = generate(&node, &rc, receipts, 0);
    let batches = parts(&rc, rs, batch_size, 0);
    let generate_s = tg.elapsed().as_secs_f64();
    let part_bytes = opengrid_codec::encode(&opengrid_settlement::LedgerCommand::SubmitBatch(
        batches[0].clone(),
    ))
    .map(|b| b.len())
    .unwrap_or(0);
    progress.line(format!(
        "receipts: {receipts} generated in {generate_s:.1} s, {} parts of {batch_size} \
         ({part_bytes} B each)",
        batches.len()
    ));
    let n_parts = batches.len();
    let out = submit_parts(
        addrs.clone(),
        Arc::new(batches),
        cfg.inflight,
        Instant::now() + Duration::from_secs(600),
        progress,
        "receipts",
    )
    .await?;
    if let Some(r) = &out.first_rejection {
        progress.line(format!("receipts: first rejection {r}"));
    }
    let mut tally = Tally::default();
    tally.add(&out);
    let s = summarize(out.lat);
    let rec = ReceiptsReport {
        count: out.settled,
        submitted: out.submitted,
        rejected: out.rejected,
        batches: n_parts,
        batch_size,
        inflight: cfg.inflight.max(1),
        seconds: out.seconds,
        receipts_per_s: out.settled as f64 / out.seconds.max(1e-9),
        p50_us: s.p50_us,
        p99_us: s.p99_us,
        max_us: s.max_us,
        generate_s,
        part_bytes,
        hit_deadline: out.hit_deadline,
    };
    progress.line(format!(
        "receipts: {} settled in {:.2} s = {:.0}/s; part commit p50 {} µs, p99 {} µs",
        rec.count, rec.seconds, rec.receipts_per_s, rec.p50_us, rec.p99_us
    ));

    // Phase 3: one big settlement batch, sized to the budget.
    let settle = if cfg.settle_budget_s == 0 || cfg.settle_receipts == 0 {
        None
    } else {
        let budget = cfg.settle_budget_s as f64;
        let fits = (rec.receipts_per_s * budget * 0.8) as usize;
        let fits = (fits / batch_size).max(1) * batch_size;
        let requested = cfg.settle_receipts.min(10_000_000);
        let (count, reduced_because) = if requested <= fits {
            (requested, None)
        } else {
            (
                fits,
                Some(format!(
                    "at the {:.0} receipts/s measured above, {requested} receipts would not settle \
                     within --settle-budget-s {budget:.0}; measured the largest multiple of the \
                     part size that fits in 80% of it",
                    rec.receipts_per_s
                )),
            )
        };
        let tg = Instant::now();
        let rs = generate(&node, &rc, count, 1 << 40);
        let batches = parts(&rc, rs, batch_size, 1 << 20);
        let generate_s = tg.elapsed().as_secs_f64();
        progress.line(format!(
            "settle: {count} receipts generated in {generate_s:.1} s; submitting {} parts",
            batches.len()
        ));
        let n_parts = batches.len();
        let out = submit_parts(
            addrs.clone(),
            Arc::new(batches),
            cfg.inflight,
            Instant::now() + Duration::from_secs_f64(budget * 2.0),
            progress,
            "settle",
        )
        .await?;
        tally.add(&out);
        let done_parts = out.lat.len();
        if done_parts < n_parts {
            progress.line(format!(
                "settle: stopped at the deadline after {done_parts}/{n_parts} parts"
            ));
        }
        let r = SettleReport {
            requested,
            count: out.submitted as usize,
            reduced_because,
            settled: out.settled,
            parts: done_parts,
            seconds: out.seconds,
            receipts_per_s: out.settled as f64 / out.seconds.max(1e-9),
            generate_s,
            hit_deadline: out.hit_deadline,
        };
        progress.line(format!(
            "settle: {} receipts settled in {:.2} s ({:.0}/s)",
            r.settled, r.seconds, r.receipts_per_s
        ));
        Some(r)
    };

    // Every replica reaches the leader's applied index and the same state; totals exact.
    let check = final_check(group, &addrs, &tally, verify).await?;
    Ok((raft_w, rec, settle, check))
}

/// What the bench submitted and what the ledger answered, over all receipt phases.
#[derive(Default)]
struct Tally {
    submitted: u64,
    settled: u64,
    fees_submitted: u64,
    fees_settled: u64,
}

impl Tally {
    fn add(&mut self, o: &SubmitOut) {
        self.submitted += o.submitted;
        self.settled += o.settled;
        self.fees_submitted += o.fees_submitted;
        self.fees_settled += o.fees_settled;
    }
}

async fn final_check(
    group: &LedgerGroup,
    addrs: &[String],
    tally: &Tally,
    verify: VerifyCalibration,
) -> Result<Check, BenchError> {
    let client = LedgerClient::with_timeout(addrs.to_vec(), Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut st: BTreeMap<u64, ReplicaStatus> = BTreeMap::new();
        for (id, a) in &group.addrs {
            if let Ok(s) = client.replica_status(a).await {
                st.insert(*id, s);
            }
        }
        let first = st.values().next().cloned();
        if let Some(first) = first {
            let same = st.len() == group.addrs.len()
                && st.values().all(|s| {
                    s.raft.last_applied == first.raft.last_applied
                        && s.raft.state_hash == first.raft.state_hash
                        && s.ledger == first.ledger
                });
            if same || Instant::now() >= deadline {
                let l = &first.ledger;
                // Exact: the ledger holds exactly the answered parts' receipts and fees, and the
                // credits split from them sum to the fees.
                let totals_exact = l.receipts_settled == tally.settled
                    && tally.settled == tally.submitted
                    && l.total_fees_micros == tally.fees_settled
                    && tally.fees_settled == tally.fees_submitted
                    && u128::from(l.total_fees_micros) == l.total_credits_micros;
                return Ok(Check {
                    settled_on_ledger: l.receipts_settled,
                    agree: same,
                    totals_exact,
                    verify,
                });
            }
        } else if Instant::now() >= deadline {
            return Err(failed("no replica answered the final status"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The human summary.
pub fn human(r: &SettlementReport) -> String {
    let mut s = String::new();
    let m = &r.machine;
    s += &format!(
        "P8 settlement — {} cpu(s) {} ({} GiB), {}\n",
        m.cpus, m.cpu_model, m.mem_gib, r.replicas
    );
    let w = &r.writes;
    s += &format!(
        "  plain writes, {} B values, concurrency {}:\n",
        w.value_bytes, w.concurrency
    );
    let line = |x: &WriteStats| {
        format!(
            "    {:<14} {:>8.0} writes/s  p50 {:>7} µs  p99 {:>7} µs  ({} writes, {} errors, {:.2} s)\n",
            x.system, x.writes_per_s, x.p50_us, x.p99_us, x.count, x.errors, x.seconds
        )
    };
    s += &line(&w.raft);
    match (&w.etcd, &w.etcd_skipped) {
        (Some(e), _) => {
            s += &line(e);
            s += &format!(
                "    ratio {:.2}× throughput, p99 ratio {:.2} (target ≥ 1×, p99 no worse: {})\n",
                w.throughput_ratio.unwrap_or(0.0),
                w.p99_ratio.unwrap_or(0.0),
                if w.target_met == Some(true) {
                    "met"
                } else {
                    "not met"
                }
            );
        }
        (None, Some(why)) => s += &format!("    etcd skipped: {why}\n"),
        (None, None) => {}
    }
    let rc = &r.receipts;
    s += &format!(
        "  receipts (2 ed25519 verifies each, on every replica): {:.0}/s (target ≥ {:.0}: {}); \
         {} receipts, parts of {} ({} in flight), part commit p50 {} µs p99 {} µs\n",
        rc.receipts_per_s,
        r.targets.receipts_per_s,
        if r.targets.receipts_per_s_met {
            "met"
        } else {
            "not met"
        },
        rc.count,
        rc.batch_size,
        rc.inflight,
        rc.p50_us,
        rc.p99_us
    );
    s += &format!(
        "    verify speed here: {:.0}/s on 1 thread, {:.0}/s on all; derived ceiling for 3 \
         replicas on this machine {:.0} receipts/s\n",
        r.verify.verifies_per_s_1_thread,
        r.verify.verifies_per_s_all_threads,
        r.verify.derived_ceiling_receipts_per_s
    );
    if let Some(st) = &r.settle {
        s += &format!(
            "  settle one batch: {} receipts in {:.2} s ({:.0}/s); target 1 M in ≤ {:.0} s: {}\n",
            st.settled,
            st.seconds,
            st.receipts_per_s,
            r.targets.settle_1m_s,
            match r.targets.settle_1m_met {
                Some(true) => "met".to_string(),
                Some(false) => "not met".to_string(),
                None => format!("not measured at 1 M (measured {} receipts)", st.count),
            }
        );
        if let Some(why) = &st.reduced_because {
            s += &format!("    reduced: {why}\n");
        }
    }
    s += &format!(
        "  lost {}, duplicated {}, replicas agree {}, totals exact {}; {:.1} s in all\n",
        r.lost, r.duplicated, r.replicas_agree, r.totals_exact, r.total_s
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff, 0xfe, 0xfd, 0x00]), "//79AA==");
    }

    #[test]
    fn plain_write_values_are_no_ledger_command() {
        let v = value(7, 100);
        assert_eq!(v.len(), 100);
        assert_eq!(v[0], 0xA5);
        assert_eq!(v[1], 7);
        assert!(
            opengrid_codec::decode::<opengrid_settlement::LedgerCommand>(
                &v,
                opengrid_codec::MAX_DECODE_BYTES
            )
            .is_err()
        );
    }
}

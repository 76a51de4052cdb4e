//! Colony benches with real `opengrid` processes on 127.0.0.1: one RC and several nodes, driven
//! through their HTTP APIs and the Rust client (`opengrid_cluster::client`), the way
//! `examples/tests/mobility_processes.rs` drives them.
//!
//! - `bench failover` (P3): kill -9 of a node holding `--count` (default 1,000) zero-loss counter
//!   sessions. The victim starts alone (big capacity), every session is placed on it, then three
//!   more nodes join; once every session has a full replica set (k = 2, RC status and the holder's
//!   own view) each session gets one input, the victim is killed, and the RC's `/status` is
//!   polled until every session is `active` on another node. Per-session activation time = kill →
//!   the first poll answer showing it active elsewhere (an upper bound; the poll period is
//!   reported as the resolution). Then every session gets one more input through the client
//!   (which follows the session to its new node): its total must be exactly 2 (`lost`,
//!   `duplicated`), and no session may be served by two nodes (`active_twice`, asked of every
//!   survivor).
//! - `bench handover` (P2): `--count` (default 1,000) planned handovers per state size (4 KiB,
//!   64 KiB, 1 MiB) of one zero-loss `blob` session (`examples/src/blob.rs`: a counter with a
//!   padding blob) between three nodes, while a client sends inputs continuously and checks every
//!   answer (the n-th acknowledged input must answer n). Blackout = the node's own freeze →
//!   target-active figure (`blackout_ms` of the handover report); the client-side input latency
//!   is reported beside it. The floor: loopback TCP round trip (64 B ping-pong) and an HTTP
//!   `GET /health` round trip to a node, both measured in the same run.
//!
//! The `opengrid` binary: `--bin <path>`, else `$OPENGRID_BIN_DIR`, else next to this executable
//! (`cargo build --release -p opengrid-examples -p opengrid-chaos` puts both in the same target
//! directory). Every child runs under a [`Launcher`] (killed on drop, on Ctrl-C, and when this
//! process dies); the colony directory is a temporary one removed at the end unless `--keep`.
//! Every wait is bounded in time and every loop in count.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures::stream::{self, StreamExt};
use opengrid_cluster::client::{Client, ClientError, Session};
use serde::Serialize;
use serde_json::{json, Value};

use crate::bench::{summarize, BenchError, Summary};
use crate::launcher::{find_binary, free_port, Launcher, ProcSpec, ProcState};
use crate::report::Progress;

/// P3 target: every session active elsewhere within this p99 after the kill, µs.
pub const FAILOVER_TARGET_P99_US: u64 = 2_000_000;
/// P2 targets (state bytes, blackout p99 µs).
pub const HANDOVER_TARGETS: [(usize, u64); 2] = [(64 << 10, 5_000), (1 << 20, 25_000)];

const SECRET: &str = "opengrid-colony-bench";
const COUNTER_ZERO_LOSS: &str = "version = 1\n[session]\nhandler = \"counter\"\ncontinuity = \"interactive\"\n[placement]\njurisdictions = [\"EU\"]\n[migration]\ncost = \"cheap\"\nacceptable_loss = \"0s\"\nmax_blackout = \"2s\"\n";
const BLOB_ZERO_LOSS: &str = "version = 1\n[session]\nhandler = \"blob\"\ncontinuity = \"interactive\"\n[placement]\njurisdictions = [\"EU\"]\n[migration]\ncost = \"cheap\"\nacceptable_loss = \"0s\"\nmax_blackout = \"2s\"\n";
/// Most requests in flight while placing / checking many sessions.
const FANOUT: usize = 8;

/// Knobs of the colony benches (`opengrid-chaos bench failover|handover`).
#[derive(Debug, Clone, Args)]
pub struct ColonyArgs {
    /// The `opengrid` binary (default: `$OPENGRID_BIN_DIR/opengrid`, else next to this
    /// executable).
    #[arg(long = "bin", value_name = "PATH")]
    pub bin: Option<PathBuf>,
    /// `bench handover` between two `opengrid-chaos replica-server` processes (session host and
    /// migration server only: the migration layer's own blackout, the floor under the node
    /// figures) instead of `opengrid` nodes.
    #[arg(long)]
    pub replica_servers: bool,
    /// Time budget of each phase in seconds (placement, replication, each handover size, the
    /// wait for failover).
    #[arg(long, default_value_t = 300)]
    pub budget_s: u64,
    /// Nodes write checkpoints without fsync (the node default is fsync on).
    #[arg(long)]
    pub no_fsync: bool,
    /// Keep the colony directory (configs, logs, data) after the run and print its path.
    #[arg(long)]
    pub keep: bool,
    /// Security of the colony (`handover`, `api`): `on` (the product), `off` (dev configs with
    /// `security_off_for_measurement`: plain migration links, no grants, open client API, no
    /// quotas or capabilities; measurement only) or `both` (off and on alternating in
    /// [`crate::bench::OFF_ON_ROUNDS`] rounds of one run, samples pooled: the cost of security).
    #[arg(long, value_enum, default_value = "on")]
    pub security: SecurityArg,
}

/// `--security` of the colony benches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SecurityArg {
    /// The product: everything authenticated, encrypted and authorized.
    On,
    /// Off, for measurement only.
    Off,
    /// Off then on, alternating, in one run.
    Both,
}

impl SecurityArg {
    /// The runs (`true` = security off) and how many rounds `--count` is split into.
    pub fn runs(self) -> (Vec<bool>, usize) {
        crate::bench::off_on_runs(self != SecurityArg::On, self != SecurityArg::Off)
    }
}

fn security_name(off: bool) -> &'static str {
    if off {
        "off"
    } else {
        "on"
    }
}

/// The config lines that turn a colony process's security off (benchmarks only).
const SECURITY_OFF: &str = "dev = true\nsecurity_off_for_measurement = true\n";

impl Default for ColonyArgs {
    fn default() -> Self {
        ColonyArgs {
            bin: None,
            replica_servers: false,
            budget_s: 300,
            no_fsync: false,
            keep: false,
            security: SecurityArg::On,
        }
    }
}

fn failed(e: impl std::fmt::Display) -> BenchError {
    BenchError::Failed(e.to_string())
}

/// The `opengrid` binary: `explicit`, else `$OPENGRID_BIN_DIR` or next to this executable.
pub fn opengrid_bin(explicit: Option<&Path>) -> Result<PathBuf, BenchError> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(failed(format!(
                "--bin {}: no such file (the `opengrid` binary of opengrid-examples)",
                p.display()
            )))
        };
    }
    find_binary("opengrid").map_err(|e| {
        failed(format!(
            "{e}. Build it into the same target directory with `cargo build --release -p \
             opengrid-examples -p opengrid-chaos`, or pass --bin <path to opengrid>"
        ))
    })
}

/// An RC and its nodes, all children of one [`Launcher`].
struct Colony {
    launcher: Launcher,
    bin: PathBuf,
    rc_api: String,
    rc_cluster: u16,
    http: reqwest::Client,
    fsync: bool,
    keep: bool,
    /// Security off (`security_off_for_measurement` in every config).
    security_off: bool,
}

impl Colony {
    async fn start(args: &ColonyArgs, progress: &Progress) -> Result<Colony, BenchError> {
        Self::start_with(args, false, progress).await
    }

    async fn start_with(
        args: &ColonyArgs,
        security_off: bool,
        progress: &Progress,
    ) -> Result<Colony, BenchError> {
        let bin = opengrid_bin(args.bin.as_deref())?;
        let launcher = Launcher::new()?;
        let (api, cluster) = (free_port()?, free_port()?);
        let mut c = Colony {
            rc_api: format!("http://127.0.0.1:{api}"),
            rc_cluster: cluster,
            // The bench acts as the colony's operator (the RC's own key).
            http: opengrid_cluster::common::token::operator_http(
                &launcher.data_dir("rc")?,
                Duration::from_secs(30),
            )
            .map_err(failed)?,
            launcher,
            bin,
            fsync: !args.no_fsync,
            keep: args.keep,
            security_off,
        };
        let cfg = format!(
            "version = 1\n{}data_dir = {:?}\napi_listen = \"127.0.0.1:{api}\"\ncluster_listen = \"127.0.0.1:{cluster}\"\ncolony_secret = \"{SECRET}\"\nplace_timeout = \"10s\"\n",
            if security_off { SECURITY_OFF } else { "" },
            c.launcher.data_dir("rc")?
        );
        c.spawn("rc", "rc", &cfg)?;
        progress.line(format!(
            "colony in {} (binary {})",
            c.launcher.root().display(),
            c.bin.display()
        ));
        Ok(c)
    }

    fn spawn(&mut self, name: &str, role: &str, cfg: &str) -> Result<(), BenchError> {
        let path = self.launcher.root().join(format!("{name}.toml"));
        std::fs::write(&path, cfg).map_err(|e| failed(format!("{}: {e}", path.display())))?;
        self.launcher.spawn(
            ProcSpec::new(name, &self.bin)
                .args([role, "--config", &path.display().to_string()])
                .env(
                    "RUST_LOG",
                    std::env::var("OPENGRID_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
                ),
        )?;
        Ok(())
    }

    fn node(&mut self, name: &str, extra: &str) -> Result<(), BenchError> {
        let cfg = format!(
            "version = 1\n{}name = \"{name}\"\ndata_dir = {:?}\njurisdiction = \"DE\"\napi_listen = \"127.0.0.1:0\"\nrc_cluster = \"127.0.0.1:{}\"\ncolony_secret = \"{SECRET}\"\nfsync = {}\n{extra}\n",
            if self.security_off { SECURITY_OFF } else { "" },
            self.launcher.data_dir(name)?,
            self.rc_cluster,
            self.fsync
        );
        self.spawn(name, "node", &cfg)
    }

    fn kill9(&mut self, name: &str) -> Result<(), BenchError> {
        Ok(self.launcher.kill(name)?)
    }

    fn logs(&self) -> String {
        if self.keep {
            self.launcher.root().display().to_string()
        } else {
            "(removed; rerun with --keep to keep them)".into()
        }
    }

    fn client(&self) -> Client {
        let mut c = Client::new(self.rc_api.clone());
        // As the colony's operator (the RC's own key): lookups of any session.
        if let Some(t) = self.launcher.data_dir("rc").ok().and_then(|d| {
            opengrid_cluster::common::token::operator_token_from_dir(&d, Duration::from_secs(3600))
                .ok()
        }) {
            c = c.with_token(t);
        }
        c.retry_for = Duration::from_secs(60);
        c
    }

    async fn status(&self) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}/status", self.rc_api))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// Every child that should run still runs.
    fn check_alive(&mut self) -> Result<(), BenchError> {
        for name in self.launcher.names() {
            let st = self.launcher.state(&name)?;
            if matches!(st, ProcState::Exited(_)) {
                return Err(failed(format!(
                    "{name} exited ({st:?}); logs in {}",
                    self.logs()
                )));
            }
        }
        Ok(())
    }

    /// Polls `/status` until `cond` holds, at most `within`.
    async fn wait_status(
        &mut self,
        what: &str,
        within: Duration,
        cond: impl Fn(&Value) -> bool,
    ) -> Result<Value, BenchError> {
        let deadline = Instant::now() + within;
        let mut last = Value::Null;
        loop {
            if let Some(st) = self.status().await {
                if cond(&st) {
                    return Ok(st);
                }
                last = st;
            }
            self.check_alive()?;
            if Instant::now() >= deadline {
                let text = last.to_string();
                return Err(failed(format!(
                    "{what}: not within {within:?}; logs in {}; last status: {}",
                    self.logs(),
                    &text[..text.len().min(2000)]
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_alive(&mut self, n: usize) -> Result<Value, BenchError> {
        self.wait_status(
            &format!("{n} members alive"),
            Duration::from_secs(60),
            |st| members(st).iter().filter(|m| m["state"] == "alive").count() == n,
        )
        .await
    }
}

impl Drop for Colony {
    fn drop(&mut self) {
        self.launcher.shutdown();
        if self.keep {
            let p = self.launcher.keep_files();
            eprintln!("colony directory kept: {}", p.display());
        }
    }
}

fn members(st: &Value) -> &[Value] {
    st["members"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn sessions(st: &Value) -> &[Value] {
    st["sessions"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn member_api(st: &Value, name: &str) -> Option<String> {
    members(st)
        .iter()
        .find(|m| m["name"] == name)
        .and_then(|m| m["address"].as_str())
        .map(str::to_string)
}

/// How many replicas the holder of `id` reports (its own view, `GET {holder}/sessions/{id}`).
async fn holder_replicas(http: &reqwest::Client, holder: &str, id: &str) -> usize {
    match http.get(format!("{holder}/sessions/{id}")).send().await {
        Ok(r) => r.json::<Value>().await.unwrap_or(Value::Null)["replicas"]
            .as_array()
            .map(Vec::len)
            .unwrap_or(0),
        Err(_) => 0,
    }
}

/// Sends `1`; returns the total the session answered (or `acked + 1` for a `duplicate` reply,
/// an input processed before whose answer was lost in a move).
async fn send_one(s: &mut Session, acked: i64) -> Result<i64, ClientError> {
    let r = s.send(json!(1)).await?;
    match r["kind"].as_str() {
        Some("processed") => Ok(r["output"].as_i64().unwrap_or(-1)),
        Some("duplicate") => Ok(acked + 1),
        _ => Err(ClientError::Http(format!("unexpected reply {r}"))),
    }
}

/// Result of `bench failover`.
#[derive(Clone, Debug, Serialize)]
pub struct FailoverResult {
    /// `failover_kill9`.
    pub name: &'static str,
    /// Kill → session active elsewhere, median over sessions, µs.
    pub p50_us: u64,
    /// p99 over sessions, µs.
    pub p99_us: u64,
    /// Last session, µs (= kill → every session active elsewhere).
    pub max_us: u64,
    /// Sessions that became active elsewhere.
    pub count: usize,
    /// Kill → every session active elsewhere (`max_us`), ms, for reading.
    pub total_ms: u64,
    /// Kill → first session seen active elsewhere, µs (detection + first restore).
    pub first_us: u64,
    /// Acknowledged inputs missing after the failover (zero-loss sessions: must be 0).
    pub lost: u64,
    /// Inputs applied twice.
    pub duplicated: u64,
    /// Sessions served by more than one surviving node after the failover.
    pub active_twice: usize,
    /// Sessions not active elsewhere within the budget.
    pub not_recovered: usize,
    /// Sessions placed.
    pub sessions: usize,
    /// Of which held by the victim at the kill.
    pub on_victim: usize,
    /// Nodes (victim included).
    pub nodes: usize,
    /// Checkpoint replicas per session.
    pub replicas: usize,
    /// Whether nodes fsync checkpoints.
    pub fsync: bool,
    /// RC `/status` poll period during the wait, median µs (the resolution of the figures).
    pub poll_p50_us: u64,
    /// P3 target for p99, µs.
    pub target_p99_us: u64,
    /// `p99_us <= target_p99_us` and nothing lost, duplicated, active twice or unrecovered.
    pub met: bool,
    /// Placement of all sessions on the victim, ms.
    pub place_ms: u64,
    /// Three nodes joining until every replica set is complete, ms.
    pub replicate_ms: u64,
}

/// `bench failover` (P3).
pub async fn failover(
    args: &ColonyArgs,
    sessions_n: usize,
    progress: &Progress,
) -> Result<FailoverResult, BenchError> {
    let n = sessions_n.clamp(1, 100_000);
    let budget = Duration::from_secs(args.budget_s.clamp(10, 3600));
    let mut c = Colony::start(args, progress).await?;
    let big = format!(
        "capacity = {}\n[hardware]\nmemory = \"128GiB\"",
        n + n / 2 + 16
    );
    c.node("victim", &big)?;
    c.wait_alive(1).await?;
    progress.line(format!("victim alone; placing {n} counter sessions"));

    // 1. Place every session on the victim (the only node).
    let client = c.client();
    let t_place = Instant::now();
    let placed: Vec<Result<Session, ClientError>> = stream::iter(0..n)
        .map(|_| {
            let client = client.clone();
            async move { client.create(COUNTER_ZERO_LOSS, None).await }
        })
        .buffer_unordered(FANOUT)
        .collect()
        .await;
    let mut ss = Vec::with_capacity(n);
    for p in placed {
        ss.push(p.map_err(|e| failed(format!("placing a session: {e}")))?);
    }
    let place_ms = t_place.elapsed().as_millis() as u64;
    progress.line(format!("{n} sessions placed in {place_ms} ms"));

    // 2. Three more nodes; wait until every replica set is complete (RC, then each holder).
    let t_rep = Instant::now();
    for name in ["n1", "n2", "n3"] {
        c.node(name, &big)?;
    }
    c.wait_alive(4).await?;
    progress.line("4 members alive; waiting for full replica sets (k = 2)");
    let st = c
        .wait_status("every replica set complete", budget, |st| {
            let s = sessions(st);
            s.len() == n
                && s.iter()
                    .all(|e| e["replicas"].as_array().map(Vec::len) == Some(2))
        })
        .await?;
    let victim_api =
        member_api(&st, "victim").ok_or_else(|| failed("the victim is not in the RC status"))?;
    let deadline = Instant::now() + budget;
    let ids: Vec<String> = ss.iter().map(|s| s.id.clone()).collect();
    let mut pending = ids.clone();
    for round in 0..10_000u32 {
        let http = c.http.clone();
        let api = victim_api.clone();
        let counts: Vec<(String, usize)> = stream::iter(pending)
            .map(|id| {
                let (http, api) = (http.clone(), api.clone());
                async move {
                    let k = holder_replicas(&http, &api, &id).await;
                    (id, k)
                }
            })
            .buffer_unordered(FANOUT)
            .collect()
            .await;
        pending = counts
            .into_iter()
            .filter(|(_, k)| *k < 2)
            .map(|(id, _)| id)
            .collect();
        if pending.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(failed(format!(
                "{} session(s) still without 2 replicas on the victim after {budget:?} \
                 (round {round}); logs in {}",
                pending.len(),
                c.logs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let replicate_ms = t_rep.elapsed().as_millis() as u64;
    progress.line(format!("replica sets complete in {replicate_ms} ms"));

    // 3. One acknowledged (zero-loss: durable on 2 replicas) input per session.
    let firsts: Vec<(Session, Result<i64, ClientError>)> = stream::iter(ss)
        .map(|mut s| async move {
            let r = send_one(&mut s, 0).await;
            (s, r)
        })
        .buffer_unordered(FANOUT)
        .collect()
        .await;
    let mut ss = Vec::with_capacity(n);
    for (s, r) in firsts {
        match r {
            Ok(1) => ss.push(s),
            Ok(t) => return Err(failed(format!("{}: first input answered {t}", s.id))),
            Err(e) => return Err(failed(format!("{}: first input: {e}", s.id))),
        }
    }
    let st = c
        .status()
        .await
        .ok_or_else(|| failed("RC status unreadable"))?;
    let on_victim = sessions(&st)
        .iter()
        .filter(|e| e["node_name"] == "victim")
        .count();
    progress.line(format!(
        "{n} inputs acknowledged; {on_victim} sessions on the victim; kill -9"
    ));

    // 4. kill -9, then poll the RC until every session is active elsewhere.
    let killed = Instant::now();
    c.kill9("victim")?;
    let mut seen: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut polls = Vec::new();
    let wait_deadline = killed + budget;
    let mut last_report = Instant::now();
    for _ in 0..1_000_000u32 {
        let t = Instant::now();
        let st = c.status().await;
        let at = killed.elapsed().as_micros() as u64;
        polls.push(t.elapsed().as_micros() as u64);
        if let Some(st) = st {
            for e in sessions(&st) {
                if e["state"] == "active" && e["node_name"] != "victim" {
                    if let Some(id) = e["session_id"].as_str() {
                        seen.entry(id.to_string()).or_insert(at);
                    }
                }
            }
        }
        if seen.len() >= n || Instant::now() >= wait_deadline {
            break;
        }
        if last_report.elapsed() >= Duration::from_millis(500) {
            progress.line(format!(
                "{} / {n} active elsewhere after {:?}",
                seen.len(),
                killed.elapsed()
            ));
            last_report = Instant::now();
        }
        c.check_alive()?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let not_recovered = n - seen.len().min(n);
    progress.line(format!(
        "{} / {n} active elsewhere; last at {} ms after the kill",
        seen.len(),
        seen.values().max().copied().unwrap_or(0) / 1000
    ));

    // 5. Nobody active twice: ask every survivor for every session.
    let st = c
        .status()
        .await
        .ok_or_else(|| failed("RC status unreadable"))?;
    let survivors: Vec<String> = ["n1", "n2", "n3"]
        .iter()
        .filter_map(|m| member_api(&st, m))
        .collect();
    let http = c.http.clone();
    let served: Vec<usize> = stream::iter(ids.clone())
        .map(|id| {
            let (http, survivors) = (http.clone(), survivors.clone());
            async move {
                let mut k = 0;
                for api in &survivors {
                    if let Ok(r) = http.get(format!("{api}/sessions/{id}")).send().await {
                        k += usize::from(r.status().as_u16() == 200);
                    }
                }
                k
            }
        })
        .buffer_unordered(FANOUT)
        .collect()
        .await;
    let active_twice = served.iter().filter(|k| **k > 1).count();

    // 6. One more input per session through the client: the total must be exactly 2.
    progress.line("one more input per session through the client");
    let seconds: Vec<(String, Result<i64, ClientError>, u64)> = stream::iter(ss)
        .map(|mut s| async move {
            let r = send_one(&mut s, 1).await;
            (s.id.clone(), r, s.lost)
        })
        .buffer_unordered(FANOUT)
        .collect()
        .await;
    let (mut lost, mut duplicated) = (0u64, 0u64);
    for (id, r, client_lost) in seconds {
        let total = r.map_err(|e| failed(format!("{id}: input after the failover: {e}")))?;
        lost += (2 - total).max(0) as u64 + client_lost;
        duplicated += (total - 2).max(0) as u64;
    }
    let s = summarize(seen.values().copied().collect());
    let poll = summarize(polls);
    let ok = lost == 0 && duplicated == 0 && active_twice == 0 && not_recovered == 0;
    Ok(FailoverResult {
        name: "failover_kill9",
        p50_us: s.p50_us,
        p99_us: s.p99_us,
        max_us: s.max_us,
        count: s.count,
        total_ms: s.max_us / 1000,
        first_us: seen.values().min().copied().unwrap_or(0),
        lost,
        duplicated,
        active_twice,
        not_recovered,
        sessions: n,
        on_victim,
        nodes: 4,
        replicas: 2,
        fsync: c.fsync,
        poll_p50_us: poll.p50_us,
        target_p99_us: FAILOVER_TARGET_P99_US,
        met: ok && s.p99_us <= FAILOVER_TARGET_P99_US,
        place_ms,
        replicate_ms,
    })
}

/// Result of `bench handover` (node processes) for one state size.
#[derive(Clone, Debug, Serialize)]
pub struct ColonyHandoverResult {
    /// `handover_blackout_<size>`.
    pub name: String,
    /// `on`, or `off` (`--security off|both`: measurement only).
    pub security: &'static str,
    /// Blackout (freeze → target active, the node's figure) median, µs.
    pub p50_us: u64,
    /// Blackout p99, µs.
    pub p99_us: u64,
    /// Worst blackout, µs.
    pub max_us: u64,
    /// Handovers completed.
    pub count: usize,
    /// Handovers asked for.
    pub requested: usize,
    /// The source's part of the blackout (freeze → final checkpoint written and replicated),
    /// median µs; the rest is the target's activation.
    pub freeze_p50_us: u64,
    /// Its p99, µs.
    pub freeze_p99_us: u64,
    /// Handovers refused or aborted (the source kept serving; retried).
    pub aborted: usize,
    /// Whole handover (pre-copy included) median, µs.
    pub total_p50_us: u64,
    /// Whole handover p99, µs.
    pub total_p99_us: u64,
    /// Acknowledged inputs missing (answers below the expected total, and at the end).
    pub lost: u64,
    /// Inputs applied twice (answers above the expected total).
    pub duplicated: u64,
    /// Client errors (anything but a followed `moved`).
    pub client_errors: u64,
    /// The first client error, if any.
    pub first_client_error: Option<String>,
    /// The first refused or aborted handover, if any.
    pub first_abort: Option<String>,
    /// Inputs acknowledged during the run.
    pub inputs: u64,
    /// Client input latency (send → acknowledged, zero-loss), median µs.
    pub input_p50_us: u64,
    /// Client input latency p99, µs.
    pub input_p99_us: u64,
    /// Worst client input latency (what a client sees of a handover), µs.
    pub input_max_us: u64,
    /// State bytes moved in the final checkpoint (from the handover reports, median).
    pub state_bytes: usize,
    /// Loopback TCP round trip (64 B ping-pong) in the same run, median µs: the floor.
    pub rtt_p50_us: u64,
    /// Loopback TCP round trip p99, µs.
    pub rtt_p99_us: u64,
    /// HTTP `GET /health` round trip to a node in the same run, median µs.
    pub http_rtt_p50_us: u64,
    /// HTTP round trip p99, µs.
    pub http_rtt_p99_us: u64,
    /// P2 target for the blackout p99, µs (none for 4 KiB).
    pub target_p99_us: Option<u64>,
    /// Within the target (when there is one) with nothing lost, duplicated or failed.
    pub met: bool,
    /// Whether nodes fsync checkpoints.
    pub fsync: bool,
    /// Seconds this size took.
    pub elapsed_s: f64,
    /// Every blackout, µs (to pool rounds; not printed).
    #[serde(skip)]
    pub samples: Vec<u64>,
}

/// Pools rounds of one size and security (`--security both`): blackout percentiles over every
/// sample; counts and violations add up; the rest is the first round's.
pub fn pool_colony_handover(runs: Vec<ColonyHandoverResult>) -> Option<ColonyHandoverResult> {
    let mut acc = crate::bench::fold_runs(runs, |acc, r| {
        acc.samples.extend(r.samples);
        acc.requested += r.requested;
        acc.aborted += r.aborted;
        acc.lost += r.lost;
        acc.duplicated += r.duplicated;
        acc.client_errors += r.client_errors;
        acc.inputs += r.inputs;
        acc.met &= r.met;
        acc.elapsed_s += r.elapsed_s;
    })?;
    let b = summarize(acc.samples.clone());
    (acc.p50_us, acc.p99_us, acc.max_us, acc.count) = (b.p50_us, b.p99_us, b.max_us, b.count);
    acc.met &= acc.target_p99_us.is_none_or(|t| acc.p99_us <= t);
    Some(acc)
}

/// 64-byte ping-pong over loopback TCP, `n` round trips, µs.
fn tcp_rtt(n: usize) -> Result<Summary, BenchError> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let server = std::thread::Builder::new()
        .name("og-bench-echo".into())
        .spawn(move || -> std::io::Result<()> {
            let (mut s, _) = l.accept()?;
            s.set_nodelay(true)?;
            let mut buf = [0u8; 64];
            for _ in 0..n {
                s.read_exact(&mut buf)?;
                s.write_all(&buf)?;
            }
            Ok(())
        })?;
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [7u8; 64];
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        c.write_all(&buf)?;
        c.read_exact(&mut buf)?;
        v.push(t.elapsed().as_micros() as u64);
    }
    drop(c);
    server
        .join()
        .map_err(|_| failed("echo thread panicked"))??;
    Ok(summarize(v))
}

struct InputLoop {
    acked: i64,
    lost: u64,
    duplicated: u64,
    errors: u64,
    first_error: Option<String>,
    latencies: Vec<u64>,
    session: Session,
}

/// Sends `1` continuously until `stop` (bounded by `budget` and a count), checking each answer.
async fn input_loop(session: Session, stop: Arc<AtomicBool>, budget: Duration) -> InputLoop {
    let mut st = InputLoop {
        acked: 0,
        lost: 0,
        duplicated: 0,
        errors: 0,
        first_error: None,
        latencies: Vec::new(),
        session,
    };
    let t0 = Instant::now();
    while !stop.load(Ordering::Acquire) && t0.elapsed() < budget && st.acked < 10_000_000 {
        let t = Instant::now();
        match send_one(&mut st.session, st.acked).await {
            Ok(total) => {
                st.latencies.push(t.elapsed().as_micros() as u64);
                let want = st.acked + 1;
                if total > want {
                    st.duplicated += (total - want) as u64;
                } else if total < want {
                    st.lost += (want - total) as u64;
                }
                st.acked = total.max(0);
            }
            Err(e) => {
                st.errors += 1;
                st.first_error.get_or_insert_with(|| e.to_string());
                if st.errors > 100 {
                    break;
                }
            }
        }
    }
    st
}

fn size_name(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{}MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{}KiB", n >> 10)
    } else {
        format!("{n}B")
    }
}

/// `bench handover` (P2) with `opengrid` node processes: `count` handovers per size.
pub async fn handover(
    args: &ColonyArgs,
    count: usize,
    sizes: &[usize],
    security_off: bool,
    progress: &Progress,
) -> Result<Vec<ColonyHandoverResult>, BenchError> {
    let count = count.clamp(1, 100_000);
    let budget = Duration::from_secs(args.budget_s.clamp(10, 3600));
    let mut c = Colony::start_with(args, security_off, progress).await?;
    let names = ["a", "b", "c"];
    for name in names {
        c.node(name, "capacity = 64\n[hardware]\nmemory = \"128GiB\"")?;
    }
    let st = c.wait_alive(names.len()).await?;
    let node_a = member_api(&st, "a").ok_or_else(|| failed("node a missing from the status"))?;
    // The floor, in the same run: loopback TCP and an HTTP round trip to a node.
    let rtt = tokio::task::spawn_blocking(|| tcp_rtt(2000))
        .await
        .map_err(failed)??;
    let mut http_rtt = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let t = Instant::now();
        let r = c
            .http
            .get(format!("{node_a}/health"))
            .send()
            .await
            .map_err(failed)?;
        r.bytes().await.map_err(failed)?;
        http_rtt.push(t.elapsed().as_micros() as u64);
    }
    let http_rtt = summarize(http_rtt);
    progress.line(format!(
        "floor: loopback TCP p50 {} µs p99 {} µs; HTTP /health p50 {} µs p99 {} µs",
        rtt.p50_us, rtt.p99_us, http_rtt.p50_us, http_rtt.p99_us
    ));
    let client = c.client();
    let mut out = Vec::new();
    for &size in sizes {
        let t_size = Instant::now();
        let mut s = client
            .create(BLOB_ZERO_LOSS, None)
            .await
            .map_err(|e| failed(format!("placing a blob session: {e}")))?;
        let r = s
            .send(json!({ "resize": size }))
            .await
            .map_err(|e| failed(format!("resize to {size} B: {e}")))?;
        if r["output"] != json!(0) {
            return Err(failed(format!("resize answered {r}")));
        }
        let id = s.id.clone();
        let (mut holder, mut holder_api) = (s.placement.node_name.clone(), s.address.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let inputs = tokio::spawn(input_loop(
            s,
            stop.clone(),
            budget + Duration::from_secs(60),
        ));
        let (mut blackouts, mut totals, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
        let mut freezes = Vec::new();
        let mut aborted = Vec::new();
        let deadline = Instant::now() + budget;
        let mut attempts = 0usize;
        while blackouts.len() < count && attempts < count * 2 && Instant::now() < deadline {
            attempts += 1;
            let pos = names.iter().position(|n| *n == holder).unwrap_or(0);
            let target = names[(pos + 1) % names.len()];
            let r = c
                .http
                .post(format!("{holder_api}/sessions/{id}/handover"))
                .body(json!({ "target": target }).to_string())
                .send()
                .await;
            let (status, body) = match r {
                Ok(r) => {
                    let s = r.status().as_u16();
                    (s, r.json::<Value>().await.unwrap_or(Value::Null))
                }
                Err(e) => (0, json!({ "error": e.to_string() })),
            };
            if status == 200 {
                blackouts.push((body["blackout_ms"].as_f64().unwrap_or(0.0) * 1e3) as u64);
                freezes.push((body["freeze_ms"].as_f64().unwrap_or(0.0) * 1e3) as u64);
                totals.push((body["total_ms"].as_f64().unwrap_or(0.0) * 1e3) as u64);
                bytes.push(body["state_bytes"].as_u64().unwrap_or(0));
                holder = body["to"].as_str().unwrap_or(target).to_string();
                if let Some(a) = body["address"].as_str() {
                    holder_api = a.to_string();
                }
            } else {
                aborted.push(format!("{status} {body}"));
                // Where does it live now? Ask the RC.
                if let Ok(v) = client.get(&format!("/sessions/{id}")).await {
                    if let (Some(n), Some(a)) = (v["node_name"].as_str(), v["address"].as_str()) {
                        holder = n.to_string();
                        holder_api = a.to_string();
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let done = blackouts.len();
            if status == 200 && done % 100 == 0 {
                progress.line(format!(
                    "handover {}: {done}/{count} ({} aborted)",
                    size_name(size),
                    aborted.len()
                ));
            }
        }
        stop.store(true, Ordering::Release);
        let mut il = tokio::time::timeout(Duration::from_secs(120), inputs)
            .await
            .map_err(|_| failed("the input client did not stop within 120 s"))?
            .map_err(failed)?;
        // One more input after the last move: the total must be exactly acked + 1.
        match send_one(&mut il.session, il.acked).await {
            Ok(total) => {
                let want = il.acked + 1;
                il.lost += (want - total).max(0) as u64;
                il.duplicated += (total - want).max(0) as u64;
                il.acked = total;
            }
            Err(e) => {
                return Err(failed(format!(
                    "{id}: input after the last handover: {e}; logs in {}",
                    c.logs()
                )))
            }
        }
        il.lost += il.session.lost;
        if !aborted.is_empty() {
            progress.line(format!(
                "{}: {} aborted handover(s), e.g. {}",
                size_name(size),
                aborted.len(),
                aborted[0]
            ));
        }
        let b = summarize(blackouts.clone());
        let tot = summarize(totals);
        let fr = summarize(freezes);
        let inp = summarize(il.latencies);
        bytes.sort_unstable();
        let target = HANDOVER_TARGETS
            .iter()
            .find(|(s, _)| *s == size)
            .map(|(_, t)| *t);
        let clean = il.lost == 0 && il.duplicated == 0 && il.errors == 0 && b.count == count;
        let r = ColonyHandoverResult {
            security: security_name(security_off),
            samples: blackouts,
            name: format!("handover_blackout_{}", size_name(size)),
            p50_us: b.p50_us,
            p99_us: b.p99_us,
            max_us: b.max_us,
            count: b.count,
            requested: count,
            aborted: aborted.len(),
            freeze_p50_us: fr.p50_us,
            freeze_p99_us: fr.p99_us,
            total_p50_us: tot.p50_us,
            total_p99_us: tot.p99_us,
            lost: il.lost,
            duplicated: il.duplicated,
            client_errors: il.errors,
            first_client_error: il.first_error.take(),
            first_abort: aborted.first().cloned(),
            inputs: il.acked.max(0) as u64,
            input_p50_us: inp.p50_us,
            input_p99_us: inp.p99_us,
            input_max_us: inp.max_us,
            state_bytes: bytes.get(bytes.len() / 2).copied().unwrap_or(0) as usize,
            rtt_p50_us: rtt.p50_us,
            rtt_p99_us: rtt.p99_us,
            http_rtt_p50_us: http_rtt.p50_us,
            http_rtt_p99_us: http_rtt.p99_us,
            target_p99_us: target,
            met: clean && target.is_none_or(|t| b.p99_us <= t),
            fsync: c.fsync,
            elapsed_s: (t_size.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        };
        progress.line(format!(
            "{}: blackout p50 {} µs p99 {} µs over {} handovers; {} inputs, lost {}, duplicated {}",
            r.name, r.p50_us, r.p99_us, r.count, r.inputs, r.lost, r.duplicated
        ));
        out.push(r);
        c.check_alive()?;
    }
    Ok(out)
}

const COUNTER_BOUNDED: &str = "version = 1\n[session]\nhandler = \"counter\"\ncontinuity = \"interactive\"\n[placement]\njurisdictions = [\"EU\"]\n[migration]\ncost = \"cheap\"\nacceptable_loss = \"30s\"\nmax_blackout = \"2s\"\n";

/// Sessions sending inputs at once in `bench api`.
pub const API_CLIENTS: usize = 8;

/// Result of `bench api` (one security setting).
#[derive(Clone, Debug, Serialize)]
pub struct ApiResult {
    /// `client_api`.
    pub name: &'static str,
    /// `on`, or `off` (measurement only).
    pub security: &'static str,
    /// `POST /sessions` by a client without credentials (admission, placement, the node's
    /// start, the capability when on), median µs.
    pub admission_p50_us: u64,
    /// Its p99, µs.
    pub admission_p99_us: u64,
    /// Sessions admitted (each closed again).
    pub admissions: usize,
    /// Inputs acknowledged by [`API_CLIENTS`] sessions sending at once (each input one HTTP
    /// request to its node, with its capability when on).
    pub inputs: u64,
    /// Their throughput, inputs/s.
    pub inputs_per_s: f64,
    /// One input's round trip, median µs.
    pub input_p50_us: u64,
    /// Its p99, µs.
    pub input_p99_us: u64,
    /// Acknowledged inputs missing from the sessions' totals.
    pub lost: u64,
    /// Inputs counted twice.
    pub duplicated: u64,
    /// Every admission and input latency, µs (to pool rounds; not printed).
    #[serde(skip)]
    pub samples: (Vec<u64>, Vec<u64>),
    /// Seconds of the input phase (to pool rounds; not printed).
    #[serde(skip)]
    pub input_s: f64,
}

/// `bench api`: the client API end to end on an RC and one node, as a client without
/// credentials uses it: `count` admissions (`POST /sessions` to the RC, then close), then
/// [`API_CLIENTS`] bounded-loss counter sessions each sending `count` inputs at once.
pub async fn api(
    args: &ColonyArgs,
    count: usize,
    security_off: bool,
    progress: &Progress,
) -> Result<ApiResult, BenchError> {
    let count = count.clamp(1, 100_000);
    let budget = Duration::from_secs(args.budget_s.clamp(10, 3600));
    let mut c = Colony::start_with(args, security_off, progress).await?;
    c.node("a", "capacity = 1024\n[hardware]\nmemory = \"128GiB\"")?;
    c.wait_alive(1).await?;
    let mut client = Client::new(c.rc_api.clone());
    client.retry_for = Duration::from_secs(30);
    let deadline = Instant::now() + budget;
    let mut admissions = Vec::with_capacity(count);
    for i in 0..count {
        if Instant::now() > deadline {
            return Err(failed(format!(
                "admission {i}/{count}: over the {budget:?} budget"
            )));
        }
        let t = Instant::now();
        let s = client
            .create(COUNTER_BOUNDED, None)
            .await
            .map_err(|e| failed(format!("admission {i}: {e}; logs in {}", c.logs())))?;
        admissions.push(t.elapsed().as_micros() as u64);
        s.close()
            .await
            .map_err(|e| failed(format!("closing admission {i}: {e}")))?;
        if (i + 1) % 200 == 0 {
            progress.line(format!(
                "api ({}): {}/{count} admissions",
                security_name(security_off),
                i + 1
            ));
        }
    }
    let mut sessions = Vec::with_capacity(API_CLIENTS);
    for _ in 0..API_CLIENTS {
        sessions.push(
            client
                .create(COUNTER_BOUNDED, None)
                .await
                .map_err(|e| failed(format!("placing an input session: {e}")))?,
        );
    }
    let t0 = Instant::now();
    let runs = stream::iter(sessions.into_iter().map(|mut s| async move {
        let mut lat = Vec::with_capacity(count);
        let (mut acked, mut lost, mut dup) = (0i64, 0u64, 0u64);
        for _ in 0..count {
            if Instant::now() > deadline {
                return Err(failed("the input phase ran over its budget"));
            }
            let t = Instant::now();
            let total = send_one(&mut s, acked)
                .await
                .map_err(|e| failed(format!("input to {}: {e}", s.id)))?;
            lat.push(t.elapsed().as_micros() as u64);
            let want = acked + 1;
            lost += (want - total).max(0) as u64;
            dup += (total - want).max(0) as u64;
            acked = total;
        }
        Ok::<_, BenchError>((lat, lost, dup))
    }))
    .buffer_unordered(API_CLIENTS)
    .collect::<Vec<_>>()
    .await;
    let input_s = t0.elapsed().as_secs_f64();
    let (mut lat, mut lost, mut duplicated) = (Vec::new(), 0, 0);
    for r in runs {
        let (l, lo, du) = r?;
        lat.extend(l);
        lost += lo;
        duplicated += du;
    }
    c.check_alive()?;
    let a = summarize(admissions.clone());
    let i = summarize(lat.clone());
    let r = ApiResult {
        name: "client_api",
        security: security_name(security_off),
        admission_p50_us: a.p50_us,
        admission_p99_us: a.p99_us,
        admissions: a.count,
        inputs: i.count as u64,
        inputs_per_s: (i.count as f64 / input_s.max(1e-9) * 10.0).round() / 10.0,
        input_p50_us: i.p50_us,
        input_p99_us: i.p99_us,
        lost,
        duplicated,
        samples: (admissions, lat),
        input_s,
    };
    progress.line(format!(
        "api ({}): admission p50 {} µs p99 {} µs; {} inputs at {}/s, p50 {} µs p99 {} µs",
        r.security,
        r.admission_p50_us,
        r.admission_p99_us,
        r.inputs,
        r.inputs_per_s,
        r.input_p50_us,
        r.input_p99_us
    ));
    Ok(r)
}

/// Pools rounds of `bench api` with one security setting.
pub fn pool_api(runs: Vec<ApiResult>) -> Option<ApiResult> {
    let mut acc = crate::bench::fold_runs(runs, |acc, r| {
        acc.samples.0.extend(r.samples.0);
        acc.samples.1.extend(r.samples.1);
        acc.lost += r.lost;
        acc.duplicated += r.duplicated;
        acc.input_s += r.input_s;
    })?;
    let a = summarize(acc.samples.0.clone());
    let i = summarize(acc.samples.1.clone());
    (acc.admission_p50_us, acc.admission_p99_us, acc.admissions) = (a.p50_us, a.p99_us, a.count);
    (acc.input_p50_us, acc.input_p99_us, acc.inputs) = (i.p50_us, i.p99_us, i.count as u64);
    acc.inputs_per_s = (i.count as f64 / acc.input_s.max(1e-9) * 10.0).round() / 10.0;
    Some(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_bin_names_the_flag() {
        let e = opengrid_bin(Some(Path::new("/nonexistent/opengrid"))).unwrap_err();
        assert!(e.to_string().contains("--bin"), "{e}");
    }

    #[test]
    fn loopback_rtt_is_measured() {
        let s = tcp_rtt(50).unwrap();
        assert_eq!(s.count, 50);
        assert!(s.p50_us <= s.p99_us);
    }

    #[test]
    fn size_names() {
        assert_eq!(size_name(4096), "4KiB");
        assert_eq!(size_name(1 << 20), "1MiB");
    }
}

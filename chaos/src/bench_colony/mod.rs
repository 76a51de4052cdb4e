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
//!   `GET /health` round trip to a node, both measured in the same run. With `--handler
//!   native|wasm|both`: a counter session run by the compiled-in handler or by the `counter-rs`
//!   agent package, both in one colony (`both`: alternating rounds), the wasm/native ratio.
//! - `bench rc-failover`: kill -9 of the RC group's leader `--count` times (default 20) under
//!   load: kill → placements accepted again, failed inputs on existing sessions, leases lost
//!   (see `rc_failover.rs`).
//! - `bench rc-scale`: one RC with `--nodes` simulated nodes heartbeating and `--sessions`
//!   sessions in its directory: heartbeats absorbed, placement p99, memory (see `rc_scale.rs`).
//! - `bench agents`: push → first answer of a new version of a ~2 MiB agent component on nodes
//!   that have never seen it, broken down (push, create with fetch + compile, first input), with a
//!   same-run warm baseline (see `agents.rs`).
//!
//! The `opengrid` binary: `--bin <path>`, else `$OPENGRID_BIN_DIR`, else next to this executable
//! (`cargo build --release -p opengrid-examples -p opengrid-chaos` puts both in the same target
//! directory). Every child runs under a [`Launcher`] (killed on drop, on Ctrl-C, and when this
//! process dies); the colony directory is a temporary one removed at the end unless `--keep`.
//! Every wait is bounded in time and every loop in count.
//!
//! Layout: the colony harness and what the benches share here; one module per bench
//! (`failover`, `handover`, `api`, `agents`).

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
    /// Counter sessions run natively, as a WebAssembly agent (`counter-rs`, pushed by the bench),
    /// or both alternating in one colony: `bench handover` measures their blackout (instead of
    /// the blob sizes), `bench api` their inputs/s through the client API (P13; instead of the
    /// admissions and security settings).
    #[arg(long, value_enum)]
    pub handler: Option<HandlerArg>,
    /// The agent component of `bench agents` (`primes-rs`) or `bench handover|api --handler`
    /// (`counter-rs`) (default: `agents/out/<name>.wasm` of the target directory, as
    /// scripts/build-agents.sh builds it).
    #[arg(long, value_name = "PATH")]
    pub component: Option<PathBuf>,
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
            handler: None,
            component: None,
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

fn size_name(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{}MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{}KiB", n >> 10)
    } else {
        format!("{n}B")
    }
}

mod agents;
mod api;
mod failover;
mod handover;
mod rc_failover;
mod rc_scale;

pub use agents::{agents, AgentsResult, AGENT_COLD_TARGET_P99_US};

pub use api::{api, api_handlers, compare_api_handlers, pool_api, ApiResult, API_CLIENTS};
pub use failover::{failover, FailoverResult};
pub use handover::{
    compare_handlers, handover, handover_handlers, pool_colony_handover, ColonyHandoverResult,
    HandlerArg,
};
pub use rc_failover::{rc_failover, RcFailoverResult, RC_FAILOVER_TARGET_P99_US};
pub use rc_scale::{
    rc_scale, share, slots_due, HeartbeatWindow, LoadMode, RcScaleArgs, RcScaleResult,
    RC_SCALE_PLACE_TARGET_P99_US,
};

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

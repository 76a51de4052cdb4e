//! `opengrid-chaos run <scenario>` against a real colony: one `opengrid rc` and the scenario's
//! `opengrid node` processes on 127.0.0.1, a seeded workload of `counter`/`blob` sessions through
//! the Rust client, the scenario's fault schedule applied to the real processes, and the
//! invariant checkers run over what the workload and the pollers recorded.
//!
//! Faults driven here:
//! - `kill` / `restart` of a node or of the RC (SIGKILL of its process group; restart with the
//!   same config, data dir and ports);
//! - `pause` / `resume` of a node or of the RC (SIGSTOP / SIGCONT);
//! - `partition`, `latency`, `loss`, `bandwidth`, `heal` between a node and the RC: every node's
//!   `rc_cluster` points at its own [`Proxy`] in front of the RC's control-plane port, so its
//!   heartbeats and leases cross the fault (no privileges needed). Links between two nodes or
//!   between the client and a node are refused with a clear error: nodes advertise the addresses
//!   they bind (no advertise-address setting), so a proxy cannot be put on those paths;
//! - `fail-disk` / `restore-disk` of a node, `slow-handler` / `panic-handler` of a session group:
//!   every node runs with the `[faults] control_dir` test hook (`opengrid_cluster::node::faults`), and
//!   the harness creates and removes its control files — `fail-writes` (every checkpoint put of
//!   that node's local store fails with an injected I/O error), `slow-handler` (`<ms>` and the
//!   group's session ids, on every node) and `panic-handler` (every [`PANIC_EVERY`]-th input of
//!   the group's sessions on a node panics in the handler). Handler faults end after their
//!   `duration`;
//! - `fuzz` of a node, the RC or a ledger replica: [`crate::fuzz`] sends malformed bytes, frames
//!   and HTTP requests to every selected listening port (node: API, control plane, migration; RC:
//!   API, control plane; ledger replica: its Raft/client port) for the fault's duration, seeded.
//!   Every process gets fixed ports for this.
//!
//! - ledger replicas: with `[[cluster.ledger]]` the harness runs that many `opengrid ledger
//!   replica` processes (openraft + RocksDB), points the RC's `[settlement]` at them (1 s
//!   interval), gives every node a price and a 500 ms receipt window, and registers the RC's and
//!   every node's key with the operator command (`opengrid ledger register-rc|register-node`)
//!   before any session is placed. They are killed, restarted, paused and resumed like any
//!   process. `ledger-balance` is then checked from outside ([`check_settlement`]) once
//!   settlement is quiet: every live replica holds the same state, credits sum to fees, and
//!   the ledger settled exactly the receipts the RC acknowledged to the nodes, with their fees.
//!
//! Not driven: inference handlers (the workload verifies `counter` and `blob` answers only).
//!
//! Records and checks:
//! - the workload keeps, per session, every input it sent (ordinal, send and answer times, the
//!   counter's answer, the client's `lost` count). The `counter` answer is the number of inputs
//!   the session has applied, so the record proves which inputs the session holds
//!   ([`analyse_session`]): an answer above the count is a double processing, an answer below it
//!   an acknowledged input lost without the client being told. After the run every session gets
//!   one last input (the final state). [`check_inputs`] then applies the manifest's loss bound;
//! - "served by": every 250 ms each running node is asked `GET /sessions/{id}` for every session;
//!   a 200 is that node serving the session at that epoch. [`check_single_active`] finds sessions
//!   served by two nodes at once (beyond one poll period of grace);
//! - the RC directory (`GET /status`, same period): holders and replica holders against each
//!   session's manifest jurisdictions ([`check_jurisdiction`]);
//! - `/health` of every process that should be alive at the end ([`check_health`]; a ledger
//!   replica answers its Raft status instead);
//! - `no-false-downing`: the RC's log must not declare dead a node that no fault touched
//!   ([`false_downings`]).
//!
//! `OPENGRID_CHAOS_BREAK=dedupe` (tests only) makes the workload resend some acknowledged inputs
//! under fresh seqs without recording them — a client whose dedupe is broken. The harness must
//! then report `no-duplicate` violations and exit non-zero (`chaos/tests/colony_run.rs`).
//! `OPENGRID_CHAOS_BREAK=fencing` breaks the nodes instead: every node gets the `ignore-lease`
//! control file and serves without a lease, so a node partitioned from the RC keeps serving the
//! sessions the RC failed over — the harness must report `single-active` violations.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opengrid_cluster::client::{Client, ClientError, Session};
use opengrid_session::Manifest;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::fuzz::{fuzz_port, Pace, Port as FuzzPort, PortKind, PortStats};
use crate::invariants::{
    check_health, check_inputs, check_jurisdiction, check_settlement, check_single_active,
    EventKind, HealthProbe, InputRecord, NodeEvent, Placement, ReplicaTotals, SessionOutcome,
    SettlementSeen, Violation,
};
use crate::launcher::{free_port, Launcher, ProcSpec, ProcState};
use crate::proxy::{LossMode, PartitionMode, Proxy, ProxyConfig, ProxyHandle};
use crate::report::{FaultOutcome, Progress, Report};
use crate::scenario::{FaultAction, Invariant, ProcessKind, Scenario, ScheduledFault};

/// The test-only switch that breaks the workload's dedupe (see the module docs).
pub const BREAK_VAR: &str = "OPENGRID_CHAOS_BREAK";
const SECRET: &str = "opengrid-chaos-colony";
/// Period of the directory and served-by polls.
const POLL: Duration = Duration::from_millis(250);
/// Two nodes may both answer for a session within this long (poll resolution + a handover's
/// freeze → activate window) before it counts as active twice.
const SINGLE_ACTIVE_GRACE_MS: u64 = 1_000;
/// A node partitioned from the RC may serve until its lease runs out (node default 1 s): bounded
/// loss is excused for inputs acknowledged up to this long after the partition began.
const PARTITION_SERVE_MS: u64 = 1_500;
/// Most sessions one run places.
const MAX_SESSIONS: u32 = 2_000;
/// Period of the workload's progress lines.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);
/// Price per input of every node when the scenario has ledger replicas (micro-units).
const PRICE_MICROS: u64 = 1_000;
/// `panic-handler`: every this-many-th input of the target group on a node panics. Per session
/// that is one panic per `PANIC_EVERY / input_rate` seconds, well inside the supervisor's
/// restart intensity (5 restarts in 10 s) at the rates the scenarios use.
const PANIC_EVERY: u64 = 20;
/// Fault control files a node reads (`[faults] control_dir`, opengrid_cluster::node::faults).
const FAIL_WRITES: &str = "fail-writes";
const SLOW_HANDLER: &str = "slow-handler";
const PANIC_HANDLER: &str = "panic-handler";

/// Options of a colony run.
#[derive(Clone, Debug, Default)]
pub struct RunOpts {
    /// The `opengrid` binary.
    pub bin: PathBuf,
    /// Keep the colony directory (configs, logs, data).
    pub keep: bool,
}

/// What the workload does wrong on purpose (`OPENGRID_CHAOS_BREAK`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Break {
    /// Resend every 5th acknowledged input under a fresh seq, unrecorded.
    Dedupe,
    /// Every node serves without a lease (the nodes' `ignore-lease` fault hook): lease fencing
    /// off, so a partitioned node keeps serving what the RC failed over.
    Fencing,
}

impl Break {
    /// Reads [`BREAK_VAR`]; unknown values are ignored with a warning.
    pub fn from_env() -> Option<Break> {
        match std::env::var(BREAK_VAR).ok()?.as_str() {
            "dedupe" => Some(Break::Dedupe),
            "fencing" => Some(Break::Fencing),
            other => {
                tracing::warn!(
                    "{BREAK_VAR}={other:?} is unknown (use \"dedupe\" or \"fencing\"); ignored"
                );
                None
            }
        }
    }
}

/// Why a scenario cannot be driven against a real colony by this build (`None`: it can).
pub fn unsupported(sc: &Scenario) -> Option<String> {
    let procs = sc.processes();
    if sc.cluster.colonies.len() != 1 || sc.cluster.rc.len() != 1 {
        return Some("only one colony with one RC is driven against real processes yet".into());
    }
    for (i, g) in sc.workload.sessions.iter().enumerate() {
        match manifest_text(g) {
            Err(e) => return Some(format!("workload.sessions[{i}]: {e}")),
            Ok(t) => match Manifest::from_toml_str(&t) {
                Ok(m) if matches!(m.session.handler.as_str(), "counter" | "blob") => {}
                Ok(m) => {
                    return Some(format!(
                        "workload.sessions[{i}]: handler {:?}: the workload verifies only \
                         `counter` and `blob` sessions (the answer is the count of applied inputs)",
                        m.session.handler
                    ))
                }
                Err(e) => return Some(format!("workload.sessions[{i}].manifest: {e}")),
            },
        }
    }
    for (i, f) in sc.faults.iter().enumerate() {
        let kind = |t: &str| procs.get(t).copied();
        match f.action {
            FaultAction::Kill | FaultAction::Restart | FaultAction::Pause | FaultAction::Resume => {
                let t = f.target.as_deref().unwrap_or_default();
                if kind(t).is_none() {
                    return Some(format!(
                        "fault[{i}]: {} of {t:?}: no such process",
                        f.action
                    ));
                }
            }
            FaultAction::Partition
            | FaultAction::Latency
            | FaultAction::Loss
            | FaultAction::Bandwidth
            | FaultAction::Heal => {
                let b = f.between.clone().unwrap_or_default();
                let kinds: Vec<_> = b.iter().map(|p| kind(p)).collect();
                if !(kinds.contains(&Some(ProcessKind::Node))
                    && kinds.contains(&Some(ProcessKind::Rc)))
                {
                    return Some(format!(
                        "fault[{i}]: {} between {b:?}: only node <-> RC links go through a proxy \
                         (nodes advertise their own API and migration addresses, so node <-> node \
                         and client <-> node links cannot be proxied without an advertise-address \
                         setting in the node)",
                        f.action
                    ));
                }
            }
            FaultAction::FailDisk | FaultAction::RestoreDisk => {
                let t = f.target.as_deref().unwrap_or_default();
                if kind(t) != Some(ProcessKind::Node) {
                    return Some(format!(
                        "fault[{i}]: {} of {t:?}: only a node's checkpoint store can fail",
                        f.action
                    ));
                }
            }
            // Session groups (validated by the scenario); applied on every node.
            FaultAction::SlowHandler | FaultAction::PanicHandler => {}
            FaultAction::Fuzz => {
                let t = f.target.as_deref().unwrap_or_default();
                if kind(t).is_none() {
                    return Some(format!("fault[{i}]: fuzz of {t:?}: no such process"));
                }
            }
        }
    }
    None
}

fn manifest_text(g: &crate::scenario::SessionGroup) -> Result<String, String> {
    match (&g.manifest, &g.manifest_toml) {
        (_, Some(t)) => Ok(t.clone()),
        (Some(p), None) => {
            std::fs::read_to_string(p).map_err(|e| format!("manifest {}: {e}", p.display()))
        }
        (None, None) => Err("no manifest".into()),
    }
}

/// One input as the workload saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// 1-based position among the inputs this session's workload sent.
    pub ordinal: u64,
    /// Sent (ms from the start of the workload).
    pub sent_ms: u64,
    /// Answered or given up (ms).
    pub done_ms: u64,
    /// The outcome.
    pub outcome: StepOutcome,
    /// The client's `Session::lost` after this input.
    pub lost_after: u64,
    /// The final-state probe after the run.
    pub final_probe: bool,
}

/// How an input ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StepOutcome {
    /// Processed: the counter's answer (the session's applied count).
    Processed(i64),
    /// Answered `duplicate` (processed before, its answer lost in a move).
    Duplicate,
    /// The client gave up retrying; the input stays queued in the client and is replayed first
    /// by the next send.
    TimedOut,
    /// Refused (not retryable): the client dropped it; it may or may not have been applied.
    Failed,
}

/// The record of one session.
#[derive(Clone, Debug, Default)]
pub struct SessionLog {
    /// Session id.
    pub id: String,
    /// Manifest loss bound, ms (0: zero-loss).
    pub loss_bound_ms: u64,
    /// Inputs, in order.
    pub steps: Vec<Step>,
}

/// Reconstructs which inputs a counter session holds from its answers; returns the client
/// records and the session's outcome for [`check_inputs`] (`None`: the final state was never
/// observed), plus the double-processing violations the answers prove.
pub fn analyse_session(
    log: &SessionLog,
) -> (Vec<InputRecord>, Option<SessionOutcome>, Vec<Violation>) {
    let mut records = Vec::new();
    let mut applied: Vec<u64> = Vec::new();
    let mut queued: Vec<u64> = Vec::new();
    let mut maybe: Vec<u64> = Vec::new();
    let mut violations = Vec::new();
    let mut lost = 0u64;
    // Inputs the session applied twice so far (its total runs ahead of the record by this).
    let mut doubled = 0i64;
    for st in &log.steps {
        let acked = matches!(
            st.outcome,
            StepOutcome::Processed(_) | StepOutcome::Duplicate
        );
        records.push(InputRecord {
            session: log.id.clone(),
            seq: st.ordinal,
            sent_ms: st.sent_ms,
            acked_ms: acked.then_some(st.done_ms),
        });
        match st.outcome {
            StepOutcome::TimedOut => queued.push(st.ordinal),
            StepOutcome::Failed => maybe.push(st.ordinal),
            StepOutcome::Processed(_) | StepOutcome::Duplicate => {
                // The client renumbered after the session resumed from an older checkpoint: the
                // newest applied inputs are gone (the loss its manifest may accept).
                let newly_lost = st.lost_after.saturating_sub(lost);
                lost = st.lost_after.max(lost);
                // The client counts every skipped seq as lost, including the seqs of inputs it
                // dropped after a refusal (never applied): only the rest were applied and lost.
                let renumbered = newly_lost.saturating_sub(maybe.len() as u64);
                if newly_lost > 0 {
                    // The skipped seqs are the newest ones: refused inputs older than them were
                    // applied after all (e.g. durable on the replicas a failover restored from
                    // although the holder refused them).
                    let kept = maybe.len().saturating_sub(newly_lost as usize);
                    applied.extend(maybe.drain(..kept));
                    maybe.clear();
                }
                for _ in 0..renumbered {
                    applied.pop();
                }
                // Inputs that timed out were replayed ahead of this one.
                applied.append(&mut queued);
                if let StepOutcome::Processed(total) = st.outcome {
                    let expected = applied.len() as i64 + doubled + 1;
                    if total > expected {
                        let extra = (total - expected) as usize;
                        let explained = extra.min(maybe.len());
                        applied.extend(maybe.drain(..explained));
                        let dup = extra - explained;
                        doubled += dup as i64;
                        if dup > 0 {
                            violations.push(Violation {
                                invariant: Invariant::NoDuplicate,
                                subject: log.id.clone(),
                                detail: format!(
                                    "input #{} answered total {total}, but the workload's record \
                                     accounts for {} applied input(s) before it: {dup} input(s) \
                                     processed twice",
                                    st.ordinal,
                                    expected - 1
                                ),
                                t_ms: Some(st.done_ms),
                            });
                        }
                    } else if total < expected {
                        // Acknowledged inputs gone without the client being told: they become
                        // missing from the outcome and check_inputs judges them.
                        applied.truncate((total - 1 - doubled).max(0) as usize);
                    }
                }
                maybe.clear();
                applied.push(st.ordinal);
            }
        }
    }
    let observed = log
        .steps
        .last()
        .is_some_and(|s| s.final_probe && matches!(s.outcome, StepOutcome::Processed(_)));
    let outcome = observed.then(|| SessionOutcome {
        session: log.id.clone(),
        loss_bound_ms: log.loss_bound_ms,
        applied,
    });
    (records, outcome, violations)
}

/// Recovery after a fault injected at `t_ms`: until every session had an input sent at or after
/// the fault acknowledged (resolution: one input period). `None` if some session never did.
pub fn recovery_ms(logs: &[SessionLog], t_ms: u64) -> Option<u64> {
    let mut worst = 0;
    for l in logs {
        let first = l.steps.iter().find(|s| {
            s.sent_ms >= t_ms
                && matches!(
                    s.outcome,
                    StepOutcome::Processed(_) | StepOutcome::Duplicate
                )
        })?;
        worst = worst.max(first.done_ms - t_ms);
    }
    Some(worst)
}

fn ms_since(t0: Instant) -> u64 {
    t0.elapsed().as_millis() as u64
}

struct Group {
    manifest: String,
    loss_bound_ms: u64,
    allowed: Vec<String>,
    rate: f64,
}

/// Shared between the driver and the pollers.
#[derive(Default)]
struct Observed {
    /// Nodes not to probe now (killed, paused).
    unprobed: BTreeSet<String>,
    /// Node name → API base URL (from the RC's members).
    apis: BTreeMap<String, String>,
    /// Served-by events.
    events: Vec<NodeEvent>,
    /// (session, node) served now, with its epoch.
    serving: BTreeMap<(String, String), u64>,
    /// Placements seen in the directory (first sighting of each (session, node)).
    placements: Vec<Placement>,
    seen_placements: BTreeSet<(String, String)>,
    /// Holder changes seen in the directory.
    holder: BTreeMap<String, (String, u64)>,
    holder_changes: u64,
    polls: u64,
    t0: Option<Instant>,
}

impl Observed {
    fn now_ms(&self) -> u64 {
        self.t0.map(ms_since).unwrap_or(0)
    }
}

fn lock(o: &Mutex<Observed>) -> std::sync::MutexGuard<'_, Observed> {
    o.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `sc` against a real colony and fills `report` (faults, violations, notes, error).
pub async fn run(
    sc: &Scenario,
    seed: u64,
    opts: &RunOpts,
    report: &mut Report,
    progress: &Progress,
) {
    if let Some(why) = unsupported(sc) {
        report.error = Some(format!("cannot run against real processes: {why}"));
        return;
    }
    let mut launcher = match Launcher::new() {
        Ok(l) => l,
        Err(e) => {
            report.error = Some(format!("launcher: {e}"));
            return;
        }
    };
    let r = drive(sc, seed, opts, report, progress, &mut launcher).await;
    if let Err(e) = r {
        report.error = Some(e);
    }
    launcher.shutdown();
    if opts.keep || !report.passed() {
        let p = launcher.keep_files();
        report.notes.push(format!(
            "colony directory (configs, logs) kept: {}",
            p.display()
        ));
    }
}

async fn drive(
    sc: &Scenario,
    seed: u64,
    opts: &RunOpts,
    report: &mut Report,
    progress: &Progress,
    launcher: &mut Launcher,
) -> Result<(), String> {
    let e = |e: crate::launcher::LaunchError| e.to_string();
    let colony = &sc.cluster.colonies[0];
    let rc = &sc.cluster.rc[0];
    // Every port handed out once: `free_port` may return a port it returned before, while the
    // process meant to bind it has not yet.
    let mut used = BTreeSet::new();
    let mut port = || -> Result<u16, String> {
        for _ in 0..100 {
            let p = free_port().map_err(e)?;
            if used.insert(p) {
                return Ok(p);
            }
        }
        Err("no distinct free port in 100 tries".into())
    };
    let (rc_api_port, rc_cluster_port) = (port()?, port()?);
    let rc_api = format!("http://127.0.0.1:{rc_api_port}");
    let rc_cfg = format!(
        "version = 1\ncolony = \"{colony}\"\ndata_dir = {:?}\napi_listen = \"127.0.0.1:{rc_api_port}\"\ncluster_listen = \"127.0.0.1:{rc_cluster_port}\"\ncolony_secret = \"{SECRET}\"\nplace_timeout = \"10s\"\n",
        launcher.data_dir(&rc.name).map_err(e)?
    );
    // Ledger replicas: fixed addresses, the RC settles to them every second.
    let mut ledgers: BTreeMap<String, String> = BTreeMap::new();
    for l in &sc.cluster.ledger {
        ledgers.insert(l.name.clone(), format!("127.0.0.1:{}", port()?));
    }
    let mut rc_cfg = rc_cfg;
    if !ledgers.is_empty() {
        let list: Vec<String> = ledgers.values().map(|a| format!("{a:?}")).collect();
        rc_cfg.push_str(&format!(
            "[settlement]\nledger = [{}]\ninterval = \"1s\"\n",
            list.join(", ")
        ));
    }
    spawn(launcher, &opts.bin, &rc.name, "rc", &rc_cfg)?;
    spawn_ledgers(launcher, &opts.bin, &ledgers)?;
    let mut ports: Vec<FuzzPort> = ledgers
        .iter()
        .filter_map(|(name, addr)| {
            Some(FuzzPort {
                process: name.clone(),
                kind: PortKind::Raft,
                addr: addr.parse().ok()?,
            })
        })
        .collect();
    ports.extend([
        FuzzPort {
            process: rc.name.clone(),
            kind: PortKind::Http,
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], rc_api_port)),
        },
        FuzzPort {
            process: rc.name.clone(),
            kind: PortKind::Control,
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], rc_cluster_port)),
        },
    ]);
    // One proxy per node in front of the RC's control-plane port.
    let mut proxies: BTreeMap<String, (Proxy, ProxyHandle)> = BTreeMap::new();
    let mut controls: BTreeMap<String, PathBuf> = BTreeMap::new();
    let rc_cluster = std::net::SocketAddr::from(([127, 0, 0, 1], rc_cluster_port));
    // Every proxy first: they bind port 0, and must not take a port handed to a node below
    // before that node has bound it.
    let mut started = Vec::new();
    for (i, n) in sc.cluster.node.iter().enumerate() {
        let p = Proxy::start(ProxyConfig::new(
            rc_cluster,
            seed.wrapping_add(i as u64 + 1),
        ))
        .await
        .map_err(|e| format!("proxy for {}: {e}", n.name))?;
        started.push(p);
    }
    for (n, p) in sc.cluster.node.iter().zip(started) {
        let h = p.handle();
        // The node's fault control dir (test hook; opengrid_cluster::node::faults).
        let control = launcher.root().join(format!("{}.faults", n.name));
        std::fs::create_dir_all(&control).map_err(|e| format!("{}: {e}", control.display()))?;
        // Fixed ports (the same after a restart), so the fuzzer knows every listening port.
        let (api, cluster, migration) = (port()?, port()?, port()?);
        let cfg = format!(
            "version = 1\nname = \"{}\"\ncolony = \"{colony}\"\ndata_dir = {:?}\njurisdiction = \"{}\"\napi_listen = \"127.0.0.1:{api}\"\ncluster_listen = \"127.0.0.1:{cluster}\"\nmigration_listen = \"127.0.0.1:{migration}\"\nrc_cluster = \"{}\"\ncolony_secret = \"{SECRET}\"\nfsync = false\ncapacity = {}\nprice_micros_per_input = {PRICE_MICROS}\n[hardware]\nmemory = \"128GiB\"\n[faults]\ncontrol_dir = {:?}\n{}",
            n.name,
            launcher.data_dir(&n.name).map_err(e)?,
            n.jurisdiction,
            p.addr(),
            n.max_sessions,
            control,
            if ledgers.is_empty() {
                ""
            } else {
                "[receipts]\nwindow = \"500ms\"\n"
            }
        );
        let local = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
        for (kind, port) in [
            (PortKind::Http, api),
            (PortKind::Control, cluster),
            (PortKind::Migration, migration),
        ] {
            ports.push(FuzzPort {
                process: n.name.clone(),
                kind,
                addr: local(port),
            });
        }
        controls.insert(n.name.clone(), control);
        spawn(launcher, &opts.bin, &n.name, "node", &cfg)?;
        proxies.insert(n.name.clone(), (p, h));
    }
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let want = sc.cluster.node.len();
    let st = wait_status(&http, &rc_api, launcher, Duration::from_secs(60), |st| {
        members(st).iter().filter(|m| m["state"] == "alive").count() == want
    })
    .await
    .map_err(|w| format!("colony did not come up: {w}"))?;
    let mut node_juris: BTreeMap<String, String> = sc
        .cluster
        .node
        .iter()
        .map(|n| (n.name.clone(), n.jurisdiction.clone()))
        .collect();
    node_juris.insert(rc.name.clone(), String::new());
    progress.line(format!(
        "colony up: {} and {want} node(s) in {}",
        rc.name,
        launcher.root().display()
    ));
    if !ledgers.is_empty() {
        register_keys(sc, launcher, &opts.bin, &ledgers).await?;
        progress.line(format!(
            "ledger: {} replica(s) at {}; the RC's and {want} node key(s) registered",
            ledgers.len(),
            ledgers.values().cloned().collect::<Vec<_>>().join(",")
        ));
    }

    // Sessions.
    let mut groups = Vec::new();
    for g in &sc.workload.sessions {
        let text = manifest_text(g)?;
        let m = Manifest::from_toml_str(&text).map_err(|e| e.to_string())?;
        groups.push((
            g.count.min(MAX_SESSIONS),
            Group {
                manifest: text,
                loss_bound_ms: m.migration.acceptable_loss.0.as_millis() as u64,
                allowed: m.placement.jurisdictions.clone(),
                rate: g.input_rate,
            },
        ));
    }
    let mut client = Client::new(rc_api.clone());
    client.retry_for = Duration::from_secs(20);
    let mut sessions: Vec<(Session, usize)> = Vec::new();
    let mut allowed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut group_ids: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (gi, (count, g)) in groups.iter().enumerate() {
        for _ in 0..*count {
            let s = client
                .create(&g.manifest, None)
                .await
                .map_err(|e| format!("placing a session: {e}"))?;
            allowed.insert(s.id.clone(), g.allowed.clone());
            group_ids
                .entry(sc.workload.sessions[gi].group.clone())
                .or_default()
                .push(s.id.clone());
            sessions.push((s, gi));
        }
    }
    let targets = Targets {
        controls,
        group_ids,
    };
    progress.line(format!("{} session(s) placed", sessions.len()));
    let _ = st;

    // Pollers.
    let t0 = Instant::now();
    let observed = Arc::new(Mutex::new(Observed {
        t0: Some(t0),
        ..Default::default()
    }));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ids: Vec<String> = sessions.iter().map(|(s, _)| s.id.clone()).collect();
    let poller = tokio::spawn(poll_loop(
        http.clone(),
        rc_api.clone(),
        ids.clone(),
        observed.clone(),
        stop.clone(),
        t0,
    ));

    // Workload.
    let wl_end = sc.workload.duration.map(|d| d.0).unwrap_or(sc.duration.0);
    let brk = Break::from_env();
    if let Some(b) = brk {
        progress.line(format!(
            "WARNING: {BREAK_VAR} set: the colony is deliberately broken ({b:?})"
        ));
    }
    if brk == Some(Break::Fencing) {
        for dir in targets.controls.values() {
            write_control(dir, opengrid_cluster::node::faults::IGNORE_LEASE, "")?;
        }
    }
    let mut tasks = Vec::new();
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for (i, (s, gi)) in sessions.into_iter().enumerate() {
        let g = &groups[gi].1;
        let (rate, bound) = (g.rate, g.loss_bound_ms);
        let mut rng = StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let phase: f64 = rng.random();
        tasks.push(tokio::spawn(workload(
            s,
            Pacing {
                rate,
                phase,
                loss_bound_ms: bound,
                t0,
                until: wl_end,
                brk,
                acked: acked.clone(),
            },
        )));
    }
    progress.line(format!(
        "workload running for {:?}; {} fault event(s) scheduled",
        wl_end,
        report.schedule.len()
    ));

    // Faults.
    let mut outcomes = Vec::new();
    let mut failures_ms = Vec::new();
    let mut deaths: BTreeMap<String, u64> = BTreeMap::new();
    // Handler faults run for their duration and have no undo action of their own: their end is
    // scheduled here.
    let fuzz_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut fuzzers: Vec<tokio::task::JoinHandle<PortStats>> = Vec::new();
    let mut events: Vec<(ScheduledFault, bool)> = Vec::new();
    for f in &report.schedule {
        events.push((f.clone(), false));
        if let (FaultAction::SlowHandler | FaultAction::PanicHandler, Some(d)) =
            (f.action, f.duration_ms)
        {
            let mut end = f.clone();
            end.t_ms += d;
            events.push((end, true));
        }
    }
    events.sort_by_key(|(f, _)| f.t_ms);
    for (f, is_end) in events {
        let at = t0 + Duration::from_millis(f.t_ms);
        tokio::time::sleep_until(at.into()).await;
        let now = ms_since(t0);
        if is_end {
            let r = end_handler_fault(&f, &targets);
            progress.line(format!(
                "t+{now}ms end of {} {} {}",
                f.action,
                f.targets.join(","),
                match &r {
                    Ok(()) => "done".to_string(),
                    Err(e) => format!("FAILED: {e}"),
                }
            ));
            if let Err(e) = r {
                report
                    .notes
                    .push(format!("ending {} at t+{now}ms: {e}", f.action));
            }
            continue;
        }
        let r = if f.action == FaultAction::Fuzz {
            start_fuzz(&f, &ports, seed, &fuzz_stop, &mut fuzzers)
        } else {
            inject(&f, launcher, &proxies, &observed, &targets)
        };
        progress.line(format!(
            "t+{now}ms {} {} {}",
            f.action,
            f.targets.join("<->"),
            match &r {
                Ok(()) => "injected".to_string(),
                Err(e) => format!("FAILED: {e}"),
            }
        ));
        match f.action {
            FaultAction::Kill => {
                failures_ms.push(now);
                if targets.controls.contains_key(&f.targets[0]) {
                    deaths.insert(f.targets[0].clone(), now);
                }
            }
            FaultAction::Restart => {
                deaths.remove(&f.targets[0]);
            }
            FaultAction::Pause => failures_ms.push(now),
            FaultAction::Partition | FaultAction::Loss => {
                failures_ms.extend((0..=PARTITION_SERVE_MS / 100).map(|k| now + k * 100));
            }
            _ => {}
        }
        outcomes.push(FaultOutcome {
            fault: f.clone(),
            injected_ms: r.is_ok().then_some(now),
            recovery_ms: None,
            error: r.err(),
        });
    }
    // Long workloads show progress every 30 s until the clients are done (they end by `wl_end`).
    let mut all = std::pin::pin!(futures::future::join_all(tasks));
    let mut ticks =
        tokio::time::interval_at((Instant::now() + PROGRESS_EVERY).into(), PROGRESS_EVERY);
    let done = loop {
        tokio::select! {
            done = &mut all => break done,
            _ = ticks.tick() => progress.line(format!(
                "t+{}s workload: {} input(s) acknowledged so far",
                t0.elapsed().as_secs(),
                acked.load(std::sync::atomic::Ordering::Relaxed)
            )),
        }
    };
    let mut logs = Vec::new();
    for t in done {
        logs.push(t.map_err(|e| format!("workload task: {e}"))?);
    }
    fuzz_stop.store(true, std::sync::atomic::Ordering::Release);
    for f in fuzzers {
        if let Ok(st) = f.await {
            report.notes.push(format!(
                "fuzzed {} {} ({}): {} connection(s), {} byte(s), {} refused at connect, {} answered (HTTP 2xx {}, 4xx {}, 5xx {})",
                st.process, st.kind, st.addr, st.connections, st.bytes_sent, st.connect_failures,
                st.answered, st.http_2xx, st.http_4xx, st.http_5xx
            ));
        }
    }
    // Undo whatever is still in force (a schedule without its undo), then let the colony settle.
    for (name, (_, h)) in &proxies {
        if !h.faults().is_healed() {
            h.heal();
            report
                .notes
                .push(format!("healed {name}<->{} at the end", rc.name));
        }
    }
    for name in launcher.names() {
        if launcher.state(&name).ok() == Some(ProcState::Paused) {
            let _ = launcher.resume(&name);
            lock(&observed).unprobed.remove(&name);
            report.notes.push(format!("resumed {name} at the end"));
        }
    }
    progress.line(format!(
        "workload done: {} input(s) acknowledged; waiting for every session to be active",
        logs.iter()
            .flat_map(|(_, l)| &l.steps)
            .filter(|s| matches!(s.outcome, StepOutcome::Processed(_)))
            .count()
    ));
    let settled = wait_status(&http, &rc_api, launcher, Duration::from_secs(60), |st| {
        let ss = sessions_of(st);
        ss.len() >= ids.len() && ss.iter().all(|e| e["state"] == "active")
    })
    .await;
    if let Err(w) = &settled {
        report
            .notes
            .push(format!("not every session active again within 60 s: {w}"));
    }
    // Final state: one more input per session.
    let mut finals = Vec::new();
    for (s, mut log) in logs {
        finals.push(tokio::spawn(async move {
            let mut s = s;
            let ordinal = log.steps.len() as u64 + 1;
            let sent = ms_since(t0);
            let outcome = send_counted(&mut s).await;
            log.steps.push(Step {
                ordinal,
                sent_ms: sent,
                done_ms: ms_since(t0),
                outcome,
                lost_after: s.lost,
                final_probe: true,
            });
            log
        }));
    }
    let mut logs = Vec::new();
    for f in finals {
        logs.push(f.await.map_err(|e| format!("final probe: {e}"))?);
    }
    let end_ms = ms_since(t0);
    let dump: Vec<Value> = logs
        .iter()
        .map(|l| json!({"session": l.id, "loss_bound_ms": l.loss_bound_ms, "steps": l.steps}))
        .collect();
    let _ = std::fs::write(
        launcher.root().join("workload.json"),
        serde_json::to_string(&dump).unwrap_or_default(),
    );
    stop.store(true, std::sync::atomic::Ordering::Release);
    let _ = poller.await;

    // Recovery times.
    for o in outcomes.iter_mut() {
        if let Some(t) = o.injected_ms {
            o.recovery_ms = recovery_ms(
                &logs
                    .iter()
                    .map(|l| SessionLog {
                        steps: l.steps.iter().filter(|s| !s.final_probe).cloned().collect(),
                        ..l.clone()
                    })
                    .collect::<Vec<_>>(),
                t,
            );
        }
    }
    report.faults = outcomes;

    // Checks.
    let checks: BTreeSet<Invariant> = sc.invariants.check.iter().copied().collect();
    let mut records = Vec::new();
    let mut results = Vec::new();
    let mut dups = Vec::new();
    for l in &logs {
        let (r, o, v) = analyse_session(l);
        records.extend(r);
        results.extend(o);
        dups.extend(v);
    }
    let mut violations: Vec<Violation> = Vec::new();
    let input_v = check_inputs(&records, &results, &failures_ms);
    if checks.contains(&Invariant::NoDuplicate) {
        violations.extend(dups);
    }
    violations.extend(
        input_v
            .into_iter()
            .filter(|v| checks.contains(&v.invariant)),
    );
    let (events, placements, polls, changes) = {
        let o = lock(&observed);
        (
            o.events.clone(),
            o.placements.clone(),
            o.polls,
            o.holder_changes,
        )
    };
    if checks.contains(&Invariant::SingleActive) {
        violations.extend(check_single_active(
            &events,
            &deaths,
            end_ms,
            SINGLE_ACTIVE_GRACE_MS,
        ));
    }
    if checks.contains(&Invariant::Jurisdiction) {
        violations.extend(check_jurisdiction(&placements, &node_juris, &allowed));
    }
    if checks.contains(&Invariant::LedgerBalance) {
        let procs = sc.processes();
        // Node and RC counters start from zero after a restart: the exact count needs them whole.
        let complete = !report.schedule.iter().any(|f| {
            matches!(f.action, FaultAction::Kill | FaultAction::Restart)
                && f.targets.iter().any(|t| {
                    matches!(
                        procs.get(t.as_str()),
                        Some(ProcessKind::Node | ProcessKind::Rc)
                    )
                })
        });
        progress.line("waiting for settlement to go quiet (receipts acknowledged, batched, applied on every replica)");
        let seen = settlement_seen(&http, &rc_api, launcher, &ledgers, complete).await;
        report.notes.push(format!(
            "settlement: {} receipt(s) acknowledged to the nodes ({} µ); replicas {}",
            seen.acked,
            seen.acked_fees,
            seen.replicas
                .iter()
                .map(|r| format!("{} {} receipts {} µ", r.name, r.receipts, r.fees))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        violations.extend(check_settlement(&seen));
    }
    if checks.contains(&Invariant::Health) {
        let probes = health(&http, &rc.name, &rc_api, launcher, &ledgers, t0).await;
        violations.extend(check_health(&probes));
    }
    let lost_bounded: u64 = logs
        .iter()
        .map(|l| l.steps.last().map(|s| s.lost_after).unwrap_or(0))
        .sum();
    let timeouts = logs
        .iter()
        .flat_map(|l| &l.steps)
        .filter(|s| matches!(s.outcome, StepOutcome::TimedOut | StepOutcome::Failed))
        .count();
    report.notes.push(format!(
        "{} session(s), {} input(s) recorded ({} given up by the client and replayed or dropped), \
         {lost_bounded} seq(s) skipped by the client (`Session::lost`: bounded losses and dropped refused inputs), {polls} directory polls, {changes} \
         holder change(s), {} served-by event(s)",
        logs.len(),
        records.len(),
        timeouts,
        events.len()
    ));
    report.notes.push(log_evidence(launcher));
    if checks.contains(&Invariant::NoFalseDowning) {
        let touched: BTreeSet<String> = report
            .schedule
            .iter()
            .filter(|f| {
                !matches!(
                    f.action,
                    FaultAction::SlowHandler | FaultAction::PanicHandler
                )
            })
            .flat_map(|f| f.targets.iter().cloned())
            .collect();
        let rc_log = std::fs::read_to_string(launcher.log_paths(&rc.name).1).unwrap_or_default();
        let downings = false_downings(&rc_log, &touched);
        report.notes.push(format!(
            "no-false-downing: {} node(s) declared dead without a fault on them",
            downings.len()
        ));
        violations.extend(downings);
    }
    violations.truncate(200);
    report.violations = violations;
    Ok(())
}

fn spawn(
    launcher: &mut Launcher,
    bin: &Path,
    name: &str,
    role: &str,
    cfg: &str,
) -> Result<(), String> {
    let path = launcher.root().join(format!("{name}.toml"));
    std::fs::write(&path, cfg).map_err(|e| format!("{}: {e}", path.display()))?;
    launcher
        .spawn(
            ProcSpec::new(name, bin)
                .args([role, "--config", &path.display().to_string()])
                .env(
                    "RUST_LOG",
                    std::env::var("OPENGRID_CHAOS_NODE_LOG")
                        .unwrap_or_else(|_| "info,ractor_cluster=warn,ractor=warn".into()),
                ),
        )
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Starts one seeded fuzzing task per selected port of the fault's target.
fn start_fuzz(
    f: &ScheduledFault,
    ports: &[FuzzPort],
    seed: u64,
    stop: &Arc<std::sync::atomic::AtomicBool>,
    fuzzers: &mut Vec<tokio::task::JoinHandle<PortStats>>,
) -> Result<(), String> {
    let target = f.targets.first().cloned().unwrap_or_default();
    let which = f.params.port.clone().unwrap_or_else(|| "all".into());
    let chosen: Vec<&FuzzPort> = ports
        .iter()
        .filter(|p| p.process == target && (which == "all" || which == p.kind.as_str()))
        .collect();
    if chosen.is_empty() {
        return Err(format!("{target:?} has no {which} port to fuzz"));
    }
    let until = Instant::now() + Duration::from_millis(f.duration_ms.unwrap_or(0));
    for (i, p) in chosen.into_iter().enumerate() {
        let s = seed ^ ((f.source as u64) << 32) ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        fuzzers.push(tokio::spawn(fuzz_port(
            p.clone(),
            s,
            until,
            stop.clone(),
            Pace::default(),
        )));
    }
    Ok(())
}

/// Where the file-driven faults go.
struct Targets {
    /// Node name → its fault control dir.
    controls: BTreeMap<String, PathBuf>,
    /// Session group → its session ids.
    group_ids: BTreeMap<String, Vec<String>>,
}

/// Writes a control file atomically (the node never reads half of it).
fn write_control(dir: &Path, name: &str, text: &str) -> Result<(), String> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(name)).map_err(|e| format!("{}: {e}", dir.display()))
}

fn remove_control(dir: &Path, name: &str) -> Result<(), String> {
    match std::fs::remove_file(dir.join(name)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("{}: {e}", dir.join(name).display()))
        }
        _ => Ok(()),
    }
}

/// The control file of a handler fault: `<value>` then the group's session ids.
fn handler_rule(value: u64, ids: &[String]) -> String {
    let mut t = format!("{value}\n");
    for id in ids {
        t.push_str(id);
        t.push('\n');
    }
    t
}

/// Handler faults apply on every node (a group's sessions may be anywhere, and move).
fn start_handler_fault(f: &ScheduledFault, targets: &Targets) -> Result<(), String> {
    let group = f.targets.first().cloned().unwrap_or_default();
    let ids = targets
        .group_ids
        .get(&group)
        .ok_or_else(|| format!("no session group {group:?}"))?;
    let (file, value) = match f.action {
        FaultAction::SlowHandler => (SLOW_HANDLER, f.params.latency_ms.unwrap_or(0).max(1)),
        _ => (PANIC_HANDLER, PANIC_EVERY),
    };
    let text = handler_rule(value, ids);
    for dir in targets.controls.values() {
        write_control(dir, file, &text)?;
    }
    Ok(())
}

fn end_handler_fault(f: &ScheduledFault, targets: &Targets) -> Result<(), String> {
    let file = match f.action {
        FaultAction::SlowHandler => SLOW_HANDLER,
        _ => PANIC_HANDLER,
    };
    for dir in targets.controls.values() {
        remove_control(dir, file)?;
    }
    Ok(())
}

fn inject(
    f: &ScheduledFault,
    launcher: &mut Launcher,
    proxies: &BTreeMap<String, (Proxy, ProxyHandle)>,
    observed: &Mutex<Observed>,
    targets: &Targets,
) -> Result<(), String> {
    let control = |n: &str| {
        targets
            .controls
            .get(n)
            .ok_or_else(|| format!("{n:?} has no fault control dir (not a node)"))
    };
    let t = f.targets.first().cloned().unwrap_or_default();
    let link = || {
        f.targets
            .iter()
            .find_map(|n| proxies.get(n))
            .map(|(_, h)| h)
            .ok_or_else(|| format!("no proxied link among {:?}", f.targets))
    };
    match f.action {
        FaultAction::Kill => {
            if targets.controls.contains_key(&t) {
                stopped_serving(observed, &t);
            }
            launcher.kill(&t).map_err(|e| e.to_string())
        }
        FaultAction::Restart => {
            launcher.restart(&t).map_err(|e| e.to_string())?;
            lock(observed).unprobed.remove(&t);
            Ok(())
        }
        FaultAction::Pause => {
            if targets.controls.contains_key(&t) {
                stopped_serving(observed, &t);
            }
            launcher.pause(&t).map_err(|e| e.to_string())
        }
        FaultAction::Resume => {
            launcher.resume(&t).map_err(|e| e.to_string())?;
            lock(observed).unprobed.remove(&t);
            Ok(())
        }
        FaultAction::Partition => {
            link()?.partition(f.params.partition.unwrap_or(PartitionMode::Refuse));
            Ok(())
        }
        FaultAction::Latency => {
            link()?.latency(
                Duration::from_millis(f.params.latency_ms.unwrap_or(0)),
                Duration::from_millis(f.params.jitter_ms.unwrap_or(0)),
            );
            Ok(())
        }
        FaultAction::Loss => {
            let (p, m) = f.params.loss.unwrap_or((0.0, LossMode::Drop));
            link()?.loss(p, m);
            Ok(())
        }
        FaultAction::Bandwidth => {
            link()?.bandwidth(f.params.rate);
            Ok(())
        }
        FaultAction::Heal => {
            link()?.heal();
            Ok(())
        }
        FaultAction::FailDisk => write_control(control(&t)?, FAIL_WRITES, ""),
        FaultAction::RestoreDisk => remove_control(control(&t)?, FAIL_WRITES),
        FaultAction::SlowHandler | FaultAction::PanicHandler => start_handler_fault(f, targets),
        other => Err(format!("{other} is not driven against real processes")),
    }
}

/// A node about to be killed or paused processes nothing from now on: its served intervals end
/// here, and it is not probed until it runs again (a stale holder shows when it is probed after
/// a resume or restart).
fn stopped_serving(observed: &Mutex<Observed>, node: &str) {
    let mut o = lock(observed);
    o.unprobed.insert(node.to_string());
    let t = o.now_ms();
    let ended: Vec<(String, u64)> = o
        .serving
        .iter()
        .filter(|((_, n), _)| n == node)
        .map(|((s, _), ep)| (s.clone(), *ep))
        .collect();
    for (s, ep) in ended {
        o.serving.remove(&(s.clone(), node.to_string()));
        o.events.push(ev(&s, node, ep, EventKind::Inactive, t));
    }
}

/// Sends `1`; classifies the answer.
async fn send_counted(s: &mut Session) -> StepOutcome {
    match s.send(json!(1)).await {
        Ok(r) => match r["kind"].as_str() {
            Some("processed") => r["output"]
                .as_i64()
                .map(StepOutcome::Processed)
                .unwrap_or(StepOutcome::Failed),
            Some("duplicate") => StepOutcome::Duplicate,
            _ => StepOutcome::Failed,
        },
        Err(ClientError::Timeout(..)) => StepOutcome::TimedOut,
        Err(_) => StepOutcome::Failed,
    }
}

/// How one session's client sends.
struct Pacing {
    /// Inputs per second.
    rate: f64,
    /// Offset of its ticks, as a fraction of a period.
    phase: f64,
    /// The manifest's loss bound, ms.
    loss_bound_ms: u64,
    t0: Instant,
    /// Sends until `t0 + until`.
    until: Duration,
    brk: Option<Break>,
    /// Inputs acknowledged by all clients (progress lines).
    acked: Arc<std::sync::atomic::AtomicU64>,
}

async fn workload(mut s: Session, p: Pacing) -> (Session, SessionLog) {
    let Pacing {
        rate,
        phase,
        loss_bound_ms,
        t0,
        until,
        brk,
        acked,
    } = p;
    let period = Duration::from_secs_f64(1.0 / rate.max(0.01));
    let max_inputs = (until.as_secs_f64() * rate).ceil() as u64 + 1;
    let mut log = SessionLog {
        id: s.id.clone(),
        loss_bound_ms,
        steps: Vec::new(),
    };
    let mut k = 0u64;
    while (log.steps.len() as u64) < max_inputs {
        let due = period.mul_f64(k as f64 + phase);
        if due >= until {
            break;
        }
        tokio::time::sleep_until((t0 + due).into()).await;
        // Ticks missed while an input was blocked (a failover) are skipped, not bunched.
        k = (k + 1).max((t0.elapsed().as_secs_f64() / period.as_secs_f64()) as u64);
        let sent = ms_since(t0);
        let outcome = send_counted(&mut s).await;
        let ok = matches!(outcome, StepOutcome::Processed(_));
        if ok {
            acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        log.steps.push(Step {
            ordinal: log.steps.len() as u64 + 1,
            sent_ms: sent,
            done_ms: ms_since(t0),
            outcome,
            lost_after: s.lost,
            final_probe: false,
        });
        if brk == Some(Break::Dedupe) && ok && log.steps.len().is_multiple_of(5) {
            // Deliberately broken: the acknowledged input again, under a fresh seq, unrecorded.
            let _ = s.send(json!(1)).await;
        }
    }
    (s, log)
}

fn members(st: &Value) -> &[Value] {
    st["members"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn sessions_of(st: &Value) -> &[Value] {
    st["sessions"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

async fn status(http: &reqwest::Client, rc_api: &str) -> Option<Value> {
    let r = http.get(format!("{rc_api}/status")).send().await.ok()?;
    r.json().await.ok()
}

async fn wait_status(
    http: &reqwest::Client,
    rc_api: &str,
    launcher: &mut Launcher,
    within: Duration,
    cond: impl Fn(&Value) -> bool,
) -> Result<Value, String> {
    let deadline = Instant::now() + within;
    let mut last = Value::Null;
    loop {
        if let Some(st) = status(http, rc_api).await {
            if cond(&st) {
                return Ok(st);
            }
            last = st;
        }
        for name in launcher.names() {
            if let Ok(ProcState::Exited(c)) = launcher.state(&name) {
                return Err(format!("{name} exited ({c:?})"));
            }
        }
        if Instant::now() >= deadline {
            let t = last.to_string();
            return Err(format!(
                "not within {within:?}; last status: {}",
                &t[..t.len().min(1500)]
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn poll_loop(
    http: reqwest::Client,
    rc_api: String,
    ids: Vec<String>,
    observed: Arc<Mutex<Observed>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    t0: Instant,
) {
    let probe = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap_or_default();
    // Bounded: at most one poll per period for a day.
    for _ in 0..(24 * 3600 * 1000 / POLL.as_millis() as u64) {
        if stop.load(std::sync::atomic::Ordering::Acquire) {
            break;
        }
        let next = Instant::now() + POLL;
        if let Some(st) = status(&http, &rc_api).await {
            let t = ms_since(t0);
            let did_name: BTreeMap<String, String> = members(&st)
                .iter()
                .filter_map(|m| {
                    Some((
                        m["node"].as_str()?.to_string(),
                        m["name"].as_str()?.to_string(),
                    ))
                })
                .collect();
            let mut o = lock(&observed);
            o.polls += 1;
            for m in members(&st) {
                if let (Some(n), Some(a)) = (m["name"].as_str(), m["address"].as_str()) {
                    o.apis
                        .insert(n.to_string(), a.trim_end_matches('/').to_string());
                }
            }
            for e in sessions_of(&st) {
                let Some(id) = e["session_id"].as_str() else {
                    continue;
                };
                let mut nodes: Vec<String> = Vec::new();
                if e["state"] == "active" {
                    if let Some(n) = e["node_name"].as_str() {
                        nodes.push(n.to_string());
                        let cur = (n.to_string(), e["epoch"].as_u64().unwrap_or(0));
                        let prev = o.holder.insert(id.to_string(), cur.clone());
                        if prev.is_some_and(|p| p != cur) {
                            o.holder_changes += 1;
                        }
                    }
                }
                for r in e["replicas"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                    if let Some(n) = r.as_str().and_then(|d| did_name.get(d)) {
                        nodes.push(n.clone());
                    }
                }
                for n in nodes {
                    if o.seen_placements.insert((id.to_string(), n.clone())) {
                        o.placements.push(Placement {
                            session: id.to_string(),
                            node: n,
                            t_ms: t,
                        });
                    }
                }
            }
        }
        // Served-by: every probe-able node, every session.
        let targets: Vec<(String, String)> = {
            let o = lock(&observed);
            o.apis
                .iter()
                .filter(|(n, _)| !o.unprobed.contains(*n))
                .map(|(n, a)| (n.clone(), a.clone()))
                .collect()
        };
        for (node, api) in &targets {
            for id in &ids {
                let r = probe.get(format!("{api}/sessions/{id}")).send().await;
                let t = ms_since(t0);
                let epoch = match r {
                    Ok(r) if r.status().as_u16() == 200 => Some(
                        r.json::<Value>().await.unwrap_or(Value::Null)["epoch"]
                            .as_u64()
                            .unwrap_or(0),
                    ),
                    Ok(_) => None,
                    // No answer (node stopped, paused or gone): not evidence either way.
                    Err(_) => continue,
                };
                let mut o = lock(&observed);
                let key = (id.clone(), node.clone());
                let prev = o.serving.get(&key).copied();
                match (prev, epoch) {
                    (None, Some(ep)) => {
                        o.serving.insert(key, ep);
                        o.events.push(ev(id, node, ep, EventKind::Active, t));
                    }
                    (Some(p), Some(ep)) if p != ep => {
                        o.serving.insert(key, ep);
                        o.events.push(ev(id, node, p, EventKind::Inactive, t));
                        o.events.push(ev(id, node, ep, EventKind::Active, t));
                    }
                    (Some(p), None) => {
                        o.serving.remove(&key);
                        o.events.push(ev(id, node, p, EventKind::Inactive, t));
                    }
                    _ => {}
                }
            }
        }
        tokio::time::sleep_until(next.into()).await;
    }
}

fn ev(session: &str, node: &str, epoch: u64, event: EventKind, t_ms: u64) -> NodeEvent {
    NodeEvent {
        session: session.into(),
        node: node.into(),
        epoch,
        event,
        t_ms,
        seq: None,
    }
}

async fn health(
    http: &reqwest::Client,
    rc_name: &str,
    rc_api: &str,
    launcher: &mut Launcher,
    ledgers: &BTreeMap<String, String>,
    t0: Instant,
) -> Vec<HealthProbe> {
    let st = status(http, rc_api).await.unwrap_or(Value::Null);
    let mut apis: BTreeMap<String, String> = members(&st)
        .iter()
        .filter_map(|m| {
            Some((
                m["name"].as_str()?.to_string(),
                m["address"].as_str()?.trim_end_matches('/').to_string(),
            ))
        })
        .collect();
    apis.insert(rc_name.to_string(), rc_api.to_string());
    let mut out = Vec::new();
    for name in launcher.names() {
        let state = launcher.state(&name).ok();
        let alive = !matches!(state, Some(ProcState::Killed));
        let (mut status_code, mut error) = (None, None);
        if let Some(ProcState::Exited(c)) = state {
            error = Some(format!("exited on its own ({c:?})"));
        } else if let (true, Some(addr)) = (alive, ledgers.get(&name)) {
            match replica_totals(&name, addr).await {
                Ok(_) => status_code = Some(200),
                Err(e) => error = Some(format!("ledger replica status: {e}")),
            }
        } else if alive {
            match apis.get(&name) {
                None => error = Some("not in the RC's members (no API address)".into()),
                Some(a) => match http.get(format!("{a}/health")).send().await {
                    Ok(r) => status_code = Some(r.status().as_u16()),
                    Err(e) => error = Some(e.to_string()),
                },
            }
        }
        out.push(HealthProbe {
            process: name,
            alive,
            status: status_code,
            error,
            t_ms: ms_since(t0),
        });
    }
    out
}

/// Starts the ledger replicas (`opengrid ledger replica`), peers numbered 1.. in name order.
fn spawn_ledgers(
    launcher: &mut Launcher,
    bin: &Path,
    ledgers: &BTreeMap<String, String>,
) -> Result<(), String> {
    let peers: Vec<String> = ledgers
        .values()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect();
    for (i, (name, addr)) in ledgers.iter().enumerate() {
        let dir = launcher.data_dir(name).map_err(|e| e.to_string())?;
        launcher
            .spawn(
                ProcSpec::new(name, bin)
                    .args([
                        "ledger".to_string(),
                        "replica".into(),
                        "--id".into(),
                        (i + 1).to_string(),
                        "--addr".into(),
                        addr.clone(),
                        "--data-dir".into(),
                        dir.display().to_string(),
                        "--peers".into(),
                        peers.join(","),
                    ])
                    .env(
                        "RUST_LOG",
                        std::env::var("OPENGRID_CHAOS_NODE_LOG")
                            .unwrap_or_else(|_| "info,openraft=warn".into()),
                    ),
            )
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Registers the RC's and every node's key (interchange split, operator `<name>-op`) with the
/// operator command, as an operator would.
async fn register_keys(
    sc: &Scenario,
    launcher: &Launcher,
    bin: &Path,
    ledgers: &BTreeMap<String, String>,
) -> Result<(), String> {
    use opengrid_cluster::common::identity::KEY_FILE;
    let addr = ledgers.values().cloned().collect::<Vec<_>>().join(",");
    let rc = &sc.cluster.rc[0].name;
    let key = |name: &str| -> Result<String, String> {
        Ok(launcher
            .data_dir(name)
            .map_err(|e| e.to_string())?
            .join(KEY_FILE)
            .display()
            .to_string())
    };
    let mut cmds: Vec<Vec<String>> = vec![vec![
        "ledger".into(),
        "register-rc".into(),
        "--key-file".into(),
        key(rc)?,
        "--operator".into(),
        format!("{rc}-op"),
        "--addr".into(),
        addr.clone(),
    ]];
    for n in &sc.cluster.node {
        cmds.push(vec![
            "ledger".into(),
            "register-node".into(),
            "--key-file".into(),
            key(&n.name)?,
            "--addr".into(),
            addr.clone(),
            "--policy".into(),
            "interchange".into(),
            "--operator".into(),
            format!("{}-op", n.name),
        ]);
    }
    for args in cmds {
        let run = tokio::process::Command::new(bin)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .map_err(|_| {
                format!(
                    "opengrid {} did not finish within 60 s",
                    args[..2].join(" ")
                )
            })?
            .map_err(|e| format!("opengrid {}: {e}", args[..2].join(" ")))?;
        if !out.status.success() {
            return Err(format!(
                "opengrid {} failed: {}",
                args[..4].join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}

/// One replica's ledger totals (its own status, not the leader's).
async fn replica_totals(name: &str, addr: &str) -> Result<ReplicaTotals, String> {
    let client = opengrid_settlement::LedgerClient::with_timeout(
        vec![addr.to_string()],
        Duration::from_secs(2),
    );
    let s = client
        .replica_status(addr)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ReplicaTotals {
        name: name.to_string(),
        receipts: s.ledger.receipts_settled,
        fees: s.ledger.total_fees_micros,
        credits: s.ledger.total_credits_micros,
        state_hash: s
            .ledger
            .state_hash
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    })
}

/// Polls the nodes' receipt counters, the RC's settlement queue and every live replica until
/// settlement is quiet (nothing queued, every replica on the same state, the same figures on
/// three polls in a row) or 60 s passed; returns the last observation.
async fn settlement_seen(
    http: &reqwest::Client,
    rc_api: &str,
    launcher: &mut Launcher,
    ledgers: &BTreeMap<String, String>,
    counters_complete: bool,
) -> SettlementSeen {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last: Option<SettlementSeen> = None;
    let mut same = 0;
    loop {
        let mut seen = SettlementSeen {
            counters_complete,
            ..Default::default()
        };
        let get = |url: String| async move {
            http.get(url).send().await.ok()?.json::<Value>().await.ok()
        };
        let rc = get(format!("{rc_api}/health")).await.unwrap_or(Value::Null);
        let st = get(format!("{rc_api}/status")).await.unwrap_or(Value::Null);
        seen.unsettled += rc["settlement"]["pending"].as_u64().unwrap_or(0);
        seen.rejected = rc["settlement"]["rejected"].as_u64().unwrap_or(0);
        for m in members(&st) {
            let (Some(name), Some(api)) = (m["name"].as_str(), m["address"].as_str()) else {
                continue;
            };
            if launcher.state(name).ok() != Some(ProcState::Running) {
                continue;
            }
            let h = get(format!("{}/health", api.trim_end_matches('/')))
                .await
                .unwrap_or(Value::Null);
            let r = &h["receipts"];
            seen.acked += r["acked"].as_u64().unwrap_or(0);
            seen.acked_fees += r["acked_fees_micros"].as_u64().unwrap_or(0);
            seen.unsettled += r["unacked"].as_u64().unwrap_or(0);
        }
        for (name, addr) in ledgers {
            if launcher.state(name).ok() != Some(ProcState::Running) {
                continue;
            }
            if let Ok(t) = replica_totals(name, addr).await {
                seen.replicas.push(t);
            }
        }
        let live = ledgers
            .keys()
            .filter(|n| launcher.state(n).ok() == Some(ProcState::Running))
            .count();
        let quiet = seen.unsettled == 0
            && seen.replicas.len() == live
            && seen
                .replicas
                .windows(2)
                .all(|w| (w[0].receipts, &w[0].state_hash) == (w[1].receipts, &w[1].state_hash))
            && seen
                .replicas
                .first()
                .is_some_and(|r| r.receipts >= seen.acked);
        same = if quiet && last.as_ref() == Some(&seen) {
            same + 1
        } else {
            0
        };
        last = Some(seen);
        if same >= 2 || Instant::now() >= deadline {
            return last.unwrap_or_default();
        }
        tokio::time::sleep(Duration::from_millis(750)).await;
    }
}

/// Nodes the RC declared dead (its log) although no fault of the schedule touched them.
pub fn false_downings(rc_log: &str, touched: &BTreeSet<String>) -> Vec<Violation> {
    let mut out = Vec::new();
    for line in rc_log.lines().filter(|l| l.contains("node declared dead")) {
        let line = opengrid_cluster::cli::strip_ansi(line);
        let name = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("name="))
            .unwrap_or("?")
            .to_string();
        if touched.contains(&name) {
            continue;
        }
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or("?")
                .to_string()
        };
        out.push(Violation {
            invariant: Invariant::NoFalseDowning,
            subject: name,
            detail: format!(
                "declared dead with no fault on it (phi {}, silent {} ms)",
                field("phi="),
                field("silent_ms=")
            ),
            t_ms: None,
        });
    }
    out
}

/// Counts the mobility lines of every process log (the nodes' own account of the run).
fn log_evidence(launcher: &Launcher) -> String {
    const NEEDLES: [&str; 7] = [
        "lease lost",
        "restored from replicas",
        "handed over",
        "directory switched",
        "fenced",
        "injected handler panic",
        "injected I/O error",
    ];
    let mut parts = Vec::new();
    for name in launcher.names() {
        let text = std::fs::read_to_string(launcher.log_paths(&name).1).unwrap_or_default();
        let counts: Vec<String> = NEEDLES
            .iter()
            .map(|n| (n, text.matches(n).count()))
            .filter(|(_, c)| *c > 0)
            .map(|(n, c)| format!("{n}×{c}"))
            .collect();
        if !counts.is_empty() {
            parts.push(format!("{name}: {}", counts.join(", ")));
        }
    }
    if parts.is_empty() {
        "process logs: no lease loss, restore, handover or fencing logged".into()
    } else {
        format!("process logs: {}", parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(o: u64, outcome: StepOutcome, lost: u64, fin: bool) -> Step {
        Step {
            ordinal: o,
            sent_ms: o * 100,
            done_ms: o * 100 + 5,
            outcome,
            lost_after: lost,
            final_probe: fin,
        }
    }

    fn log(bound: u64, steps: Vec<Step>) -> SessionLog {
        SessionLog {
            id: "s".into(),
            loss_bound_ms: bound,
            steps,
        }
    }

    use StepOutcome::*;

    #[test]
    fn a_node_declared_dead_without_a_fault_is_a_false_downing() {
        let log = "\u{1b}[2m2026-12-01T20:58:48Z\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m opengrid_cluster::rc: node declared dead \u{1b}[3mnode\u{1b}[0m\u{1b}[2m=\u{1b}[0mdid:x \u{1b}[3mname\u{1b}[0m\u{1b}[2m=\u{1b}[0mn1 \u{1b}[3mphi\u{1b}[0m\u{1b}[2m=\u{1b}[0m8.7 \u{1b}[3msilent_ms\u{1b}[0m\u{1b}[2m=\u{1b}[0m471\nINFO node joined name=n1\n";
        let v = false_downings(log, &BTreeSet::new());
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].subject, "n1");
        assert!(v[0].detail.contains("phi 8.7"), "{}", v[0].detail);
        assert!(v[0].detail.contains("silent 471 ms"), "{}", v[0].detail);
        let touched: BTreeSet<String> = ["n1".to_string()].into();
        assert!(false_downings(log, &touched).is_empty());
    }

    #[test]
    fn a_clean_counter_history_has_nothing_to_report() {
        let l = log(
            0,
            vec![
                step(1, Processed(1), 0, false),
                step(2, TimedOut, 0, false),
                step(3, Processed(3), 0, false),
                step(4, Duplicate, 0, false),
                step(5, Processed(5), 0, true),
            ],
        );
        let (r, o, v) = analyse_session(&l);
        assert!(v.is_empty(), "{v:?}");
        let o = o.unwrap();
        assert_eq!(o.applied, vec![1, 2, 3, 4, 5]);
        assert!(check_inputs(&r, &[o], &[]).is_empty());
    }

    #[test]
    fn an_answer_above_the_count_is_a_double_processing() {
        let l = log(
            0,
            vec![
                step(1, Processed(1), 0, false),
                step(2, Processed(3), 0, false),
                step(3, Processed(4), 0, true),
            ],
        );
        let (_, _, v) = analyse_session(&l);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].invariant, Invariant::NoDuplicate);
        // A refused input may have been applied: not a duplicate.
        let l = log(
            0,
            vec![
                step(1, Processed(1), 0, false),
                step(2, Failed, 0, false),
                step(3, Processed(3), 0, true),
            ],
        );
        assert!(analyse_session(&l).2.is_empty());
    }

    #[test]
    fn silent_loss_is_caught_and_bounded_loss_is_judged_by_the_bound() {
        // Zero-loss session answered 2 after 2 acknowledged inputs: one lost silently.
        let l = log(
            0,
            vec![
                step(1, Processed(1), 0, false),
                step(2, Processed(2), 0, false),
                step(3, Processed(2), 0, true),
            ],
        );
        let (r, o, v) = analyse_session(&l);
        assert!(v.is_empty());
        let v = check_inputs(&r, &[o.unwrap()], &[]);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].invariant, Invariant::NoAckedLoss);
        // Bounded session: the client renumbered after losing input 2 (acked at 205 ms).
        let l = log(
            500,
            vec![
                step(1, Processed(1), 0, false),
                step(2, Processed(2), 0, false),
                step(3, Processed(2), 1, true),
            ],
        );
        let (r, o, v) = analyse_session(&l);
        assert!(v.is_empty());
        let o = o.unwrap();
        assert_eq!(o.applied, vec![1, 3]);
        // A failure 100 ms after the ack excuses it; none at all does not.
        assert!(check_inputs(&r, std::slice::from_ref(&o), &[305]).is_empty());
        assert_eq!(check_inputs(&r, &[o], &[]).len(), 1);
        // Refused inputs leave seq holes the client later counts as lost: not a loss.
        let l = log(
            0,
            vec![
                step(1, Processed(1), 0, false),
                step(2, Failed, 0, false),
                step(3, Failed, 0, false),
                step(4, Processed(2), 2, true),
            ],
        );
        let (r, o, v) = analyse_session(&l);
        assert!(v.is_empty(), "{v:?}");
        assert!(check_inputs(&r, &[o.unwrap()], &[]).is_empty());
        // Three refused inputs, the session resumed expecting the 2nd seq of them: the oldest
        // refused one was applied after all (not a double processing), the other two skipped.
        let l = log(
            0,
            vec![
                step(1, Processed(1), 0, false),
                step(2, Failed, 0, false),
                step(3, Failed, 0, false),
                step(4, Failed, 0, false),
                step(5, Processed(3), 2, true),
            ],
        );
        let (r, o, v) = analyse_session(&l);
        assert!(v.is_empty(), "{v:?}");
        let o = o.unwrap();
        assert_eq!(o.applied, vec![1, 2, 5]);
        assert!(check_inputs(&r, &[o], &[]).is_empty());
    }

    #[test]
    fn a_session_without_a_final_answer_is_unaccounted_for() {
        let l = log(
            0,
            vec![step(1, Processed(1), 0, false), step(2, TimedOut, 0, true)],
        );
        let (r, o, _) = analyse_session(&l);
        assert!(o.is_none());
        let v = check_inputs(&r, &[], &[]);
        assert_eq!(v.len(), 1);
        assert!(v[0].detail.contains("never observed"), "{v:?}");
    }

    #[test]
    fn recovery_is_the_slowest_session_back() {
        let a = log(
            0,
            vec![
                step(1, Processed(1), 0, false),
                step(3, Processed(2), 0, false),
            ],
        );
        let b = log(
            0,
            vec![step(2, TimedOut, 0, false), step(5, Processed(2), 0, false)],
        );
        assert_eq!(recovery_ms(&[a.clone(), b.clone()], 150), Some(355));
        assert_eq!(recovery_ms(&[a, b], 600), None);
    }
}

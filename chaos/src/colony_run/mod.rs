//! `opengrid-chaos run <scenario>` against a real colony: one `opengrid rc` (or the colony's RC
//! group) and the scenario's `opengrid node` processes on 127.0.0.1, a seeded workload of `counter`/`blob` sessions through
//! the Rust client, the scenario's fault schedule applied to the real processes, and the
//! invariant checkers run over what the workload and the pollers recorded.
//!
//! RC groups: several `[[cluster.rc]]` of the colony (3 or 5) run as one Raft group, each replica
//! with a `[group]` section (Raft ids 1.. in declaration order, fixed Raft ports), the harness's
//! own operator key in every RC's and node's `operators`, and every node's `rc_cluster` listing
//! one proxy per RC. Only the group's leader serves the directory: the harness finds it through
//! the replicas' `/status` whenever it needs the RC ([`rc_group`]), waiting while there is none.
//!
//! Faults driven here:
//! - `kill` / `restart` of a node or of an RC (SIGKILL of its process group; restart with the
//!   same config, data dir and ports);
//! - `pause` / `resume` of a node or of an RC (SIGSTOP / SIGCONT);
//! - the target `rc-leader`: whichever RC of the group leads when the kill, pause or fuzz fires;
//!   the restart or resume of the same fault entry acts on that process, and the report names it;
//! - `partition`, `latency`, `loss`, `bandwidth`, `heal` between a node and the RC: every node's
//!   `rc_cluster` points at its own [`Proxy`] in front of each RC's control-plane port, so its
//!   heartbeats and leases cross the fault (no privileges needed); with a group the fault applies
//!   to the node's links to every RC of it. Links between two nodes or
//!   between the client and a node are refused with a clear error: nodes advertise the addresses
//!   they bind (no advertise-address setting), so a proxy cannot be put on those paths;
//! - `fail-disk` / `restore-disk` of a node, `slow-handler` / `panic-handler` of a session group:
//!   every node runs with the `[faults] control_dir` test hook (`opengrid_cluster::node::faults`), and
//!   the harness creates and removes its control files — `fail-writes` (every checkpoint put of
//!   that node's local store fails with an injected I/O error), `slow-handler` (`<ms>` and the
//!   group's session ids, on every node) and `panic-handler` (every 20th input of the group's
//!   sessions on a node panics in the handler). Handler faults end after their `duration`;
//! - `fuzz` of a node, an RC or a ledger replica: [`crate::fuzz`] sends malformed bytes, frames
//!   and HTTP requests to every selected listening port (node: API, control plane, migration; RC:
//!   API, control plane, and a group's Raft port; ledger replica: its Raft/client port) for the fault's duration, seeded.
//!   Every process gets fixed ports for this.
//!
//! - ledger replicas: with `[[cluster.ledger]]` the harness runs that many `opengrid ledger
//!   replica` processes (openraft + RocksDB), points the RC's `[settlement]` at them (1 s
//!   interval), gives every node a price and a 500 ms receipt window, and registers every RC's and
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
//! - the RC directory (`GET /status` of the RC or its group's leader, same period): holders and replica holders against each
//!   session's manifest jurisdictions ([`check_jurisdiction`]);
//! - `/health` of every process that should be alive at the end ([`check_health`]; a ledger
//!   replica answers its Raft status instead);
//! - `no-false-downing`: no RC's log may declare dead a node that no fault touched
//!   ([`false_downings`]).
//!
//! `OPENGRID_CHAOS_BREAK=dedupe` (tests only) makes the workload resend some acknowledged inputs
//! under fresh seqs without recording them — a client whose dedupe is broken. The harness must
//! then report `no-duplicate` violations and exit non-zero (`chaos/tests/colony_run.rs`).
//! `OPENGRID_CHAOS_BREAK=fencing` breaks the nodes instead: every node gets the `ignore-lease`
//! control file and serves without a lease, so a node partitioned from the RC keeps serving the
//! sessions the RC failed over — the harness must report `single-active` violations.
//!
//! [`Proxy`]: crate::proxy::Proxy
//! [`check_settlement`]: crate::invariants::check_settlement
//! [`check_inputs`]: crate::invariants::check_inputs
//! [`check_single_active`]: crate::invariants::check_single_active
//! [`check_jurisdiction`]: crate::invariants::check_jurisdiction
//! [`check_health`]: crate::invariants::check_health
//!
//! The workload's client is given every RC of the group, the one that leads when the sessions are
//! placed first: it follows a follower's redirect and moves on from a replica it cannot reach.
//!
//! Rooms: `colony` starts the processes; `rc_group` finds the RC (group) leader; `ledger` runs the ledger replicas and reads settlement;
//! `workload` places the sessions and runs their clients; `faults` applies the schedule;
//! `observe` polls the directory, served-by and health; `record` holds what the workload
//! recorded and what it proves; `checks` judges the invariants. [`run`] drives them in order.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use opengrid_cluster::client::Session;
use opengrid_session::Manifest;
use serde_json::{json, Value};

use crate::launcher::Launcher;
use crate::report::{Progress, Report};
use crate::scenario::{FaultAction, ProcessKind, Scenario};

mod checks;
mod colony;
mod faults;
mod ledger;
mod observe;
mod rc_group;
mod record;
mod workload;

pub use checks::false_downings;
pub use record::{analyse_session, recovery_ms, SessionLog, Step, StepOutcome};

use colony::Colony;
use observe::{sessions_of, wait_status, Observer};
use workload::Placed;

/// The test-only switch that breaks the workload's dedupe (see the module docs).
pub const BREAK_VAR: &str = "OPENGRID_CHAOS_BREAK";

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
    if sc.cluster.colonies.len() != 1 {
        return Some("only one colony is driven against real processes yet".into());
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
        let kind = |t: &str| sc.target_kind(t);
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

fn ms_since(t0: Instant) -> u64 {
    t0.elapsed().as_millis() as u64
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

/// One run in progress: the scenario, its colony, its sessions and what the pollers see. The
/// phases of [`drive`] are methods on it, in the rooms of their concern.
struct Run<'a> {
    sc: &'a Scenario,
    seed: u64,
    launcher: &'a mut Launcher,
    progress: &'a Progress,
    colony: Colony,
    /// Session id → the jurisdictions its manifest allows.
    allowed: BTreeMap<String, Vec<String>>,
    /// Session group → its session ids.
    group_ids: BTreeMap<String, Vec<String>>,
    /// Every placed session's id.
    ids: Vec<String>,
    /// The start of the workload (every `t_ms` counts from here).
    t0: Instant,
    observer: Observer,
}

async fn drive(
    sc: &Scenario,
    seed: u64,
    opts: &RunOpts,
    report: &mut Report,
    progress: &Progress,
    launcher: &mut Launcher,
) -> Result<(), String> {
    let colony = Colony::start(sc, seed, &opts.bin, launcher, progress).await?;
    let leader = colony.rc.leader(Duration::from_secs(30)).await?;
    let placed = Placed::place(sc, &colony.rc.client_addresses(&leader)).await?;
    let through = if colony.rc.is_group() {
        format!(" through the leader {}", leader.name)
    } else {
        String::new()
    };
    progress.line(format!("{} session(s) placed{through}", placed.count()));
    let t0 = Instant::now();
    let ids = placed.ids();
    let observer = Observer::start(&colony.http, colony.rc.clone(), ids.clone(), t0);
    let mut run = Run {
        sc,
        seed,
        launcher,
        progress,
        colony,
        allowed: placed.allowed.clone(),
        group_ids: placed.group_ids.clone(),
        ids,
        t0,
        observer,
    };
    let until = sc.workload.duration.map(|d| d.0).unwrap_or(sc.duration.0);
    let brk = run.break_colony()?;
    let clients = placed.start(seed, t0, until, brk);
    progress.line(format!(
        "workload running for {until:?}; {} fault event(s) scheduled",
        report.schedule.len()
    ));
    let mut applied = run
        .apply_schedule(&report.schedule, &mut report.notes)
        .await;
    let logs = clients.join(progress).await?;
    applied.stop_fuzzers(&mut report.notes).await;
    run.undo_leftovers(&mut report.notes);
    run.wait_all_active(&logs, &mut report.notes).await;
    let logs = workload::final_probes(logs, t0).await?;
    let end_ms = ms_since(t0);
    run.keep_workload(&logs);
    run.observer.stop().await;
    report.faults = applied.take_outcomes(&logs);
    run.judge(report, &logs, &applied, end_ms).await;
    Ok(())
}

impl Run<'_> {
    /// After the workload: waits (60 s at most) until the directory lists every session active.
    async fn wait_all_active(&mut self, logs: &[(Session, SessionLog)], notes: &mut Vec<String>) {
        self.progress.line(format!(
            "workload done: {} input(s) acknowledged; waiting for every session to be active",
            logs.iter()
                .flat_map(|(_, l)| &l.steps)
                .filter(|s| matches!(s.outcome, StepOutcome::Processed(_)))
                .count()
        ));
        let want = self.ids.len();
        let settled = wait_status(
            &self.colony.rc,
            self.launcher,
            Duration::from_secs(60),
            |st| {
                let ss = sessions_of(st);
                ss.len() >= want && ss.iter().all(|e| e["state"] == "active")
            },
        )
        .await;
        if let Err(w) = &settled {
            notes.push(format!("not every session active again within 60 s: {w}"));
        }
    }

    /// Writes every session's record to `workload.json` in the colony directory.
    fn keep_workload(&self, logs: &[SessionLog]) {
        let dump: Vec<Value> = logs
            .iter()
            .map(|l| json!({"session": l.id, "loss_bound_ms": l.loss_bound_ms, "steps": l.steps}))
            .collect();
        let _ = std::fs::write(
            self.launcher.root().join("workload.json"),
            serde_json::to_string(&dump).unwrap_or_default(),
        );
    }
}

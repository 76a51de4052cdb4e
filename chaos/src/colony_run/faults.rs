//! Injecting the scenario's faults into the real processes at their scheduled times, and ending
//! them: SIGKILL / SIGSTOP / SIGCONT and restarts through the [`Launcher`] (`rc-leader` found
//! among the RC group's replicas when the fault fires), the node <-> RC [`Proxy`]s for network
//! faults, the nodes' fault control files (`[faults] control_dir`,
//! `opengrid_cluster::node::faults`) for disk and handler faults, and seeded fuzzers on listening ports.
//!
//! [`Launcher`]: crate::launcher::Launcher
//! [`Proxy`]: crate::proxy::Proxy

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::observe::{lock, stopped_serving};
use super::record::SessionLog;
use super::{ms_since, recovery_ms, Break, Run, BREAK_VAR};
use crate::fuzz::{fuzz_port, Pace, Port as FuzzPort, PortStats};
use crate::launcher::ProcState;
use crate::proxy::{LossMode, PartitionMode};
use crate::report::FaultOutcome;
use crate::scenario::{FaultAction, ScheduledFault, RC_LEADER};

/// A node partitioned from the RC may serve until its lease runs out (node default 1 s): bounded
/// loss is excused for inputs acknowledged up to this long after the partition began.
const PARTITION_SERVE_MS: u64 = 1_500;
/// `panic-handler`: every this-many-th input of the target group on a node panics. Per session
/// that is one panic per `PANIC_EVERY / input_rate` seconds, well inside the supervisor's
/// restart intensity (5 restarts in 10 s) at the rates the scenarios use.
const PANIC_EVERY: u64 = 20;
/// Fault control files a node reads (`[faults] control_dir`, opengrid_cluster::node::faults).
const FAIL_WRITES: &str = "fail-writes";
const SLOW_HANDLER: &str = "slow-handler";
const PANIC_HANDLER: &str = "panic-handler";
/// How long a fault on `rc-leader` waits for the group to have a leader (an election).
const LEADER_WAIT: Duration = Duration::from_secs(10);

/// What applying the schedule left for the report and the checks.
pub(super) struct Applied {
    /// One outcome per scheduled fault, in schedule order.
    outcomes: Vec<FaultOutcome>,
    /// When a failure was in force (ms from the start): bounded loss is excused around these.
    pub failures_ms: Vec<u64>,
    /// Node → when it was killed, for nodes not restarted since.
    pub deaths: BTreeMap<String, u64>,
    fuzz_stop: Arc<AtomicBool>,
    fuzzers: Vec<tokio::task::JoinHandle<PortStats>>,
    /// What each fuzzer did (after [`Applied::stop_fuzzers`]).
    pub fuzz_stats: Vec<PortStats>,
    /// The RC processes `rc-leader` faults hit.
    leader_hits: LeaderHits,
}

/// The processes `rc-leader` faults hit, so that the restart or resume of a fault entry acts on
/// the process its kill or pause hit, not on whichever leads by then.
#[derive(Default)]
struct LeaderHits {
    /// Fault entry (`ScheduledFault::source`) → the process it hit.
    by_source: BTreeMap<usize, String>,
    /// The process the latest `rc-leader` fault hit.
    last: Option<String>,
}

impl LeaderHits {
    fn record(&mut self, source: usize, process: &str) {
        self.by_source.insert(source, process.to_string());
        self.last = Some(process.to_string());
    }

    /// What a restart or resume of `rc-leader` from fault entry `source` acts on: the process
    /// that entry hit, else (a restart of its own entry) the one the latest `rc-leader` fault hit.
    fn undo_target(&self, source: usize) -> Option<&str> {
        self.by_source
            .get(&source)
            .or(self.last.as_ref())
            .map(String::as_str)
    }
}

impl Applied {
    /// Stops the fuzzers still running and notes what each sent.
    pub async fn stop_fuzzers(&mut self, notes: &mut Vec<String>) {
        self.fuzz_stop.store(true, Ordering::Release);
        for f in self.fuzzers.drain(..) {
            if let Ok(st) = f.await {
                notes.push(format!(
                    "fuzzed {} {} ({}): {} connection(s), {} byte(s), {} refused at connect, {} answered (HTTP 2xx {}, 4xx {}, 5xx {}); {} hostile well-formed request(s), {} accepted",
                    st.process, st.kind, st.addr, st.connections, st.bytes_sent, st.connect_failures,
                    st.answered, st.http_2xx, st.http_4xx, st.http_5xx, st.hostile, st.hostile_accepted
                ));
                self.fuzz_stats.push(st);
            }
        }
    }

    /// The fault outcomes with their recovery times measured on the workload's record (the
    /// final probes left out).
    pub fn take_outcomes(&mut self, logs: &[SessionLog]) -> Vec<FaultOutcome> {
        let during: Vec<SessionLog> = logs
            .iter()
            .map(|l| SessionLog {
                steps: l.steps.iter().filter(|s| !s.final_probe).cloned().collect(),
                ..l.clone()
            })
            .collect();
        let mut outcomes = std::mem::take(&mut self.outcomes);
        for o in outcomes.iter_mut() {
            if let Some(t) = o.injected_ms {
                o.recovery_ms = recovery_ms(&during, t);
            }
        }
        outcomes
    }
}

impl Run<'_> {
    /// `OPENGRID_CHAOS_BREAK`: warns, and with `fencing` gives every node the `ignore-lease`
    /// control file.
    pub(super) fn break_colony(&self) -> Result<Option<Break>, String> {
        let brk = Break::from_env();
        if let Some(b) = brk {
            self.progress.line(format!(
                "WARNING: {BREAK_VAR} set: the colony is deliberately broken ({b:?})"
            ));
        }
        if brk == Some(Break::Fencing) {
            for dir in self.colony.controls.values() {
                write_control(dir, opengrid_cluster::node::faults::IGNORE_LEASE, "")?;
            }
        }
        Ok(brk)
    }

    /// Applies `schedule` at its times (from the run's start); handler faults have no undo
    /// action of their own, so their end is scheduled here after their duration. Failures to
    /// inject are recorded in the outcomes, failures to end one in `notes`.
    pub(super) async fn apply_schedule(
        &mut self,
        schedule: &[ScheduledFault],
        notes: &mut Vec<String>,
    ) -> Applied {
        let mut applied = Applied {
            outcomes: Vec::new(),
            failures_ms: Vec::new(),
            deaths: BTreeMap::new(),
            fuzz_stop: Arc::new(AtomicBool::new(false)),
            fuzzers: Vec::new(),
            fuzz_stats: Vec::new(),
            leader_hits: LeaderHits::default(),
        };
        let mut events: Vec<(ScheduledFault, bool)> = Vec::new();
        for f in schedule {
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
            let at = self.t0 + Duration::from_millis(f.t_ms);
            tokio::time::sleep_until(at.into()).await;
            let now = ms_since(self.t0);
            if is_end {
                self.end_handler_fault(&f, now, notes);
            } else {
                self.apply(&f, now, &mut applied).await;
            }
        }
        applied
    }

    fn end_handler_fault(&self, f: &ScheduledFault, now: u64, notes: &mut Vec<String>) {
        let r = end_handler_fault(f, &self.colony.controls);
        self.progress.line(format!(
            "t+{now}ms end of {} {} {}",
            f.action,
            f.targets.join(","),
            match &r {
                Ok(()) => "done".to_string(),
                Err(e) => format!("FAILED: {e}"),
            }
        ));
        if let Err(e) = r {
            notes.push(format!("ending {} at t+{now}ms: {e}", f.action));
        }
    }

    /// The process `rc-leader` names for `f` now: the RC that leads when a kill, pause or fuzz
    /// fires (asked of the replicas, waiting for an election up to [`LEADER_WAIT`]); for a
    /// restart or resume, the process its fault entry's kill or pause hit. `None`: `f` names
    /// its processes itself.
    async fn leader_target(
        &self,
        f: &ScheduledFault,
        hits: &mut LeaderHits,
    ) -> Result<Option<String>, String> {
        if f.targets.first().map(String::as_str) != Some(RC_LEADER) {
            return Ok(None);
        }
        let name = match f.action {
            FaultAction::Restart | FaultAction::Resume => hits
                .undo_target(f.source)
                .map(str::to_string)
                .ok_or_else(|| {
                    format!(
                        "{RC_LEADER}: no earlier fault hit an RC leader to {}",
                        f.action
                    )
                })?,
            _ => self.colony.rc.leader(LEADER_WAIT).await?.name,
        };
        hits.record(f.source, &name);
        Ok(Some(name))
    }

    /// Injects one fault at `now` and records it (and the failure window it opens); a fault on
    /// `rc-leader` is applied to the process that name resolves to now, and its outcome names it.
    async fn apply(&mut self, scheduled: &ScheduledFault, now: u64, applied: &mut Applied) {
        let hit = self
            .leader_target(scheduled, &mut applied.leader_hits)
            .await;
        let mut f = scheduled.clone();
        let mut now = now;
        if let Ok(Some(name)) = &hit {
            f.targets = vec![name.clone()];
            // Finding the leader took time (an election, at worst).
            now = ms_since(self.t0);
        }
        let f = &f;
        let r = if let Err(e) = &hit {
            Err(e.clone())
        } else if f.action == FaultAction::Fuzz {
            start_fuzz(
                f,
                &self.colony.fuzz_ports,
                &self.allowed.keys().cloned().collect::<Vec<_>>(),
                self.seed,
                &applied.fuzz_stop,
                &mut applied.fuzzers,
            )
        } else {
            self.inject(f)
        };
        let hit = hit.ok().flatten();
        let outcome = FaultOutcome {
            fault: scheduled.clone(),
            injected_ms: r.is_ok().then_some(now),
            recovery_ms: None,
            error: r.err(),
            hit,
        };
        self.progress.line(format!(
            "t+{now}ms {} {} {}",
            f.action,
            outcome.targets_label(),
            match &outcome.error {
                None => "injected".to_string(),
                Some(e) => format!("FAILED: {e}"),
            }
        ));
        match f.action {
            FaultAction::Kill => {
                applied.failures_ms.push(now);
                if self.colony.controls.contains_key(&f.targets[0]) {
                    applied.deaths.insert(f.targets[0].clone(), now);
                }
            }
            FaultAction::Restart => {
                applied.deaths.remove(&f.targets[0]);
            }
            FaultAction::Pause => applied.failures_ms.push(now),
            FaultAction::Partition | FaultAction::Loss => {
                applied
                    .failures_ms
                    .extend((0..=PARTITION_SERVE_MS / 100).map(|k| now + k * 100));
            }
            _ => {}
        }
        applied.outcomes.push(outcome);
    }

    fn inject(&mut self, f: &ScheduledFault) -> Result<(), String> {
        let controls = &self.colony.controls;
        let control = |n: &str| {
            controls
                .get(n)
                .ok_or_else(|| format!("{n:?} has no fault control dir (not a node)"))
        };
        let t = f.targets.first().cloned().unwrap_or_default();
        // A node's links to every RC of the group: cut from "the RC" means from all of them.
        let links = |apply: &dyn Fn(&crate::proxy::ProxyHandle)| {
            let links = f
                .targets
                .iter()
                .find_map(|n| self.colony.proxies.get(n))
                .ok_or_else(|| format!("no proxied link among {:?}", f.targets))?;
            for l in links {
                apply(&l.handle);
            }
            Ok(())
        };
        let observed = &self.observer.observed;
        match f.action {
            FaultAction::Kill => {
                if controls.contains_key(&t) {
                    stopped_serving(observed, &t);
                }
                self.launcher.kill(&t).map_err(|e| e.to_string())
            }
            FaultAction::Restart => {
                self.launcher.restart(&t).map_err(|e| e.to_string())?;
                lock(observed).unprobed.remove(&t);
                Ok(())
            }
            FaultAction::Pause => {
                if controls.contains_key(&t) {
                    stopped_serving(observed, &t);
                }
                self.launcher.pause(&t).map_err(|e| e.to_string())
            }
            FaultAction::Resume => {
                self.launcher.resume(&t).map_err(|e| e.to_string())?;
                lock(observed).unprobed.remove(&t);
                Ok(())
            }
            FaultAction::Partition => {
                links(&|h| h.partition(f.params.partition.unwrap_or(PartitionMode::Refuse)))
            }
            FaultAction::Latency => links(&|h| {
                h.latency(
                    Duration::from_millis(f.params.latency_ms.unwrap_or(0)),
                    Duration::from_millis(f.params.jitter_ms.unwrap_or(0)),
                )
            }),
            FaultAction::Loss => {
                let (p, m) = f.params.loss.unwrap_or((0.0, LossMode::Drop));
                links(&|h| h.loss(p, m))
            }
            FaultAction::Bandwidth => links(&|h| h.bandwidth(f.params.rate)),
            FaultAction::Heal => links(&|h| h.heal()),
            FaultAction::FailDisk => write_control(control(&t)?, FAIL_WRITES, ""),
            FaultAction::RestoreDisk => remove_control(control(&t)?, FAIL_WRITES),
            FaultAction::SlowHandler | FaultAction::PanicHandler => {
                start_handler_fault(f, controls, &self.group_ids)
            }
            other => Err(format!("{other} is not driven against real processes")),
        }
    }

    /// Undoes whatever is still in force at the end (a schedule without its undo): heals every
    /// proxied link and resumes every paused process, each with a note.
    pub(super) fn undo_leftovers(&mut self, notes: &mut Vec<String>) {
        for (name, links) in &self.colony.proxies {
            for l in links {
                if !l.handle.faults().is_healed() {
                    l.handle.heal();
                    notes.push(format!("healed {name}<->{} at the end", l.rc));
                }
            }
        }
        for name in self.launcher.names() {
            if self.launcher.state(&name).ok() == Some(ProcState::Paused) {
                let _ = self.launcher.resume(&name);
                lock(&self.observer.observed).unprobed.remove(&name);
                notes.push(format!("resumed {name} at the end"));
            }
        }
    }
}

/// Starts one seeded fuzzing task per selected port of the fault's target.
fn start_fuzz(
    f: &ScheduledFault,
    ports: &[FuzzPort],
    sessions: &[String],
    seed: u64,
    stop: &Arc<AtomicBool>,
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
            sessions.to_vec(),
        )));
    }
    Ok(())
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
fn start_handler_fault(
    f: &ScheduledFault,
    controls: &BTreeMap<String, PathBuf>,
    group_ids: &BTreeMap<String, Vec<String>>,
) -> Result<(), String> {
    let group = f.targets.first().cloned().unwrap_or_default();
    let ids = group_ids
        .get(&group)
        .ok_or_else(|| format!("no session group {group:?}"))?;
    let (file, value) = match f.action {
        FaultAction::SlowHandler => (SLOW_HANDLER, f.params.latency_ms.unwrap_or(0).max(1)),
        _ => (PANIC_HANDLER, PANIC_EVERY),
    };
    let text = handler_rule(value, ids);
    for dir in controls.values() {
        write_control(dir, file, &text)?;
    }
    Ok(())
}

fn end_handler_fault(
    f: &ScheduledFault,
    controls: &BTreeMap<String, PathBuf>,
) -> Result<(), String> {
    let file = match f.action {
        FaultAction::SlowHandler => SLOW_HANDLER,
        _ => PANIC_HANDLER,
    };
    for dir in controls.values() {
        remove_control(dir, file)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_undo_of_an_rc_leader_fault_acts_on_the_process_its_entry_hit() {
        let mut hits = LeaderHits::default();
        assert_eq!(hits.undo_target(0), None);
        hits.record(0, "rc-eu-2");
        // Entry 1 killed the next leader while rc-eu-2 was still down.
        hits.record(1, "rc-eu-3");
        assert_eq!(hits.undo_target(0), Some("rc-eu-2"));
        assert_eq!(hits.undo_target(1), Some("rc-eu-3"));
        // A restart entry of its own: the latest process hit.
        assert_eq!(hits.undo_target(7), Some("rc-eu-3"));
    }
}

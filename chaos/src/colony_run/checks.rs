//! The invariant checks at the end of a run, over what the workload and the pollers recorded
//! and what the processes logged; their violations and notes go into the [`Report`].

use std::collections::BTreeSet;

use super::faults::Applied;
use super::ledger::settlement_seen;
use super::observe::{health, lock};
use super::record::{analyse_session, SessionLog, StepOutcome};
use super::Run;
use crate::invariants::{
    check_health, check_inputs, check_jurisdiction, check_settlement, check_single_active,
    Violation,
};
use crate::launcher::Launcher;
use crate::report::Report;
use crate::scenario::{FaultAction, Invariant, ProcessKind};

/// Two nodes may both answer for a session within this long (poll resolution + a handover's
/// freeze → activate window) before it counts as active twice.
const SINGLE_ACTIVE_GRACE_MS: u64 = 1_000;
/// Most violations one report lists.
const MAX_VIOLATIONS: usize = 200;

impl Run<'_> {
    /// Runs the scenario's checks and fills `report.violations` and its notes. `end_ms`: when
    /// the final probes were answered.
    pub(super) async fn judge(
        &mut self,
        report: &mut Report,
        logs: &[SessionLog],
        applied: &Applied,
        end_ms: u64,
    ) {
        let checks: BTreeSet<Invariant> = self.sc.invariants.check.iter().copied().collect();
        let (mut violations, records) = input_violations(logs, &applied.failures_ms, &checks);
        let (events, placements, polls, changes) = {
            let o = lock(&self.observer.observed);
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
                &applied.deaths,
                end_ms,
                SINGLE_ACTIVE_GRACE_MS,
            ));
        }
        if checks.contains(&Invariant::Jurisdiction) {
            violations.extend(check_jurisdiction(
                &placements,
                &self.colony.node_juris,
                &self.allowed,
            ));
        }
        if checks.contains(&Invariant::LedgerBalance) {
            violations.extend(self.settlement_violations(report).await);
        }
        if checks.contains(&Invariant::Health) {
            let c = &self.colony;
            let probes = health(&c.http, &c.rc, self.launcher, &c.ledgers, self.t0).await;
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
            "{} session(s), {records} input(s) recorded ({} given up by the client and replayed or dropped), \
             {lost_bounded} seq(s) skipped by the client (`Session::lost`: bounded losses and dropped refused inputs), {polls} directory polls, {changes} \
             holder change(s), {} served-by event(s)",
            logs.len(),
            timeouts,
            events.len()
        ));
        report.notes.push(log_evidence(self.launcher));
        let series: Vec<_> = logs.iter().map(SessionLog::series).collect();
        let faults: Vec<(String, u64)> = report
            .faults
            .iter()
            .filter_map(|f| {
                let at = f.injected_ms?;
                Some((
                    format!("{} {}", f.fault.action.as_str(), f.targets_label()),
                    at,
                ))
            })
            .collect();
        let mut faults = faults;
        faults.sort_by_key(|f| f.1);
        let availability = crate::availability::Availability::compute(&series, &faults);
        if checks.contains(&Invariant::Availability) {
            let floor = self
                .sc
                .invariants
                .min_availability
                .unwrap_or(crate::scenario::DEFAULT_MIN_AVAILABILITY);
            if availability.total.ratio < floor {
                violations.push(Violation {
                    invariant: Invariant::Availability,
                    subject: "workload".into(),
                    detail: format!(
                        "{} — below the required {:.1} %",
                        availability.line(),
                        floor * 100.0
                    ),
                    t_ms: None,
                });
            }
        }
        report.availability = Some(availability);
        if checks.contains(&Invariant::NoStrangerAccepted) {
            for st in applied.fuzz_stats.iter().filter(|s| s.hostile_accepted > 0) {
                violations.push(Violation {
                    invariant: Invariant::NoStrangerAccepted,
                    subject: st.process.clone(),
                    detail: format!(
                        "{} of {} hostile request(s) answered 2xx on {} ({}): {:?}",
                        st.hostile_accepted,
                        st.hostile,
                        st.addr,
                        st.kind,
                        st.hostile_accepted_requests
                    ),
                    t_ms: None,
                });
            }
        }
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
            // Every RC of a group: whichever led at the time declared the deaths.
            let rc_log: String = self
                .colony
                .rc
                .replicas()
                .iter()
                .map(|r| {
                    std::fs::read_to_string(self.launcher.log_paths(&r.name).1).unwrap_or_default()
                })
                .collect();
            let downings = false_downings(&rc_log, &touched);
            report.notes.push(format!(
                "no-false-downing: {} node(s) declared dead without a fault on them",
                downings.len()
            ));
            violations.extend(downings);
        }
        violations.truncate(MAX_VIOLATIONS);
        report.violations = violations;
    }

    /// `ledger-balance`: waits for settlement to go quiet, notes what it saw, and checks it.
    async fn settlement_violations(&mut self, report: &mut Report) -> Vec<Violation> {
        // Node and single-RC counters start from zero after a restart: the exact count needs
        // them whole. An RC group keeps its receipt queue in its log (ADR 0037), so losing one
        // of its RCs keeps them whole.
        let sc = self.sc;
        let complete = !report.schedule.iter().any(|f| {
            matches!(f.action, FaultAction::Kill | FaultAction::Restart)
                && f.targets.iter().any(|t| match sc.target_kind(t) {
                    Some(ProcessKind::Node) => true,
                    Some(ProcessKind::Rc) => !sc.in_rc_group(t),
                    _ => false,
                })
        });
        self.progress.line("waiting for settlement to go quiet (receipts acknowledged, batched, applied on every replica)");
        let c = &self.colony;
        let seen = settlement_seen(&c.http, &c.rc, self.launcher, &c.ledgers, complete).await;
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
        check_settlement(&seen)
    }
}

/// `no-duplicate` (from the answers) and the input checks (`no-acked-loss`, loss bounds) the
/// scenario asks for, over every session's record; also returns how many inputs were recorded.
fn input_violations(
    logs: &[SessionLog],
    failures_ms: &[u64],
    checks: &BTreeSet<Invariant>,
) -> (Vec<Violation>, usize) {
    let mut records = Vec::new();
    let mut results = Vec::new();
    let mut dups = Vec::new();
    for l in logs {
        let (r, o, v) = analyse_session(l);
        records.extend(r);
        results.extend(o);
        dups.extend(v);
    }
    let mut violations: Vec<Violation> = Vec::new();
    let input_v = check_inputs(&records, &results, failures_ms);
    if checks.contains(&Invariant::NoDuplicate) {
        violations.extend(dups);
    }
    violations.extend(
        input_v
            .into_iter()
            .filter(|v| checks.contains(&v.invariant)),
    );
    (violations, records.len())
}

/// Nodes the RC declared dead (its log; a group's logs one after the other) although no fault of
/// the schedule touched them.
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
}

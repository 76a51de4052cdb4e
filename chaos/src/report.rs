//! Run reports: a human summary table and JSON, the seed and the exact command that reproduces
//! the run, and the exit code (non-zero on any violation). [`Progress`] prints timestamped lines
//! to stderr during long runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::invariants::Violation;
use crate::percentiles::Percentiles;
use crate::scenario::{FaultAction, Invariant, ScheduledFault};

/// Exit code of a run with no violation.
pub const EXIT_PASS: i32 = 0;
/// Exit code of a run with at least one violation.
pub const EXIT_VIOLATION: i32 = 1;
/// Exit code of a run that could not be carried out (bad scenario, missing binary, …).
pub const EXIT_ERROR: i32 = 2;

/// What happened to one scheduled fault.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultOutcome {
    /// The fault as scheduled.
    pub fault: ScheduledFault,
    /// When it was actually injected (ms from the start), if it was.
    pub injected_ms: Option<u64>,
    /// Time from injection until the system served every session again (ms), if measured.
    pub recovery_ms: Option<u64>,
    /// Why it could not be injected.
    pub error: Option<String>,
    /// The process a [`RC_LEADER`] target named when the fault fired (the RC that led then; for
    /// a restart or resume, the one its kill or pause hit).
    ///
    /// [`RC_LEADER`]: crate::scenario::RC_LEADER
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hit: Option<String>,
}

impl FaultOutcome {
    /// The fault's targets as the report names them: `n1<->rc-eu`, or `rc-leader (rc-eu-2)`
    /// with the process the fault actually hit.
    pub fn targets_label(&self) -> String {
        targets_label(&self.fault, self.hit.as_deref())
    }
}

fn targets_label(f: &ScheduledFault, hit: Option<&str>) -> String {
    let t = f.targets.join("<->");
    match hit {
        Some(h) => format!("{t} ({h})"),
        None => t,
    }
}

/// Recovery-time figures of one fault kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecoveryStats {
    /// Faults of this kind with a measured recovery.
    pub count: usize,
    /// Median, ms.
    pub p50_ms: u64,
    /// 99th percentile, ms.
    pub p99_ms: u64,
    /// Worst, ms.
    pub max_ms: u64,
}

/// The report of one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// The seed used.
    pub seed: u64,
    /// The command that reproduces this run.
    pub reproduce: String,
    /// The expanded fault schedule (same seed ⇒ same schedule).
    pub schedule: Vec<ScheduledFault>,
    /// What happened to each fault.
    pub faults: Vec<FaultOutcome>,
    /// Invariants checked.
    pub checked: Vec<Invariant>,
    /// Violations found.
    pub violations: Vec<Violation>,
    /// Wall time of the run, ms.
    pub duration_ms: u64,
    /// A run-level error (the run could not be completed).
    pub error: Option<String>,
    /// Free-form notes (where logs were kept, …).
    pub notes: Vec<String>,
    /// Inputs offered, acknowledged, refused and not sent, overall and per fault, and the
    /// sessions' longest outages (runs with a workload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability: Option<crate::availability::Availability>,
}

impl Report {
    /// An empty report for `scenario` run with `seed`.
    pub fn new(scenario: &str, seed: u64, reproduce: String) -> Self {
        Report {
            scenario: scenario.into(),
            seed,
            reproduce,
            schedule: Vec::new(),
            faults: Vec::new(),
            checked: Vec::new(),
            violations: Vec::new(),
            duration_ms: 0,
            error: None,
            notes: Vec::new(),
            availability: None,
        }
    }

    /// Whether the run completed with no violation.
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.violations.is_empty()
    }

    /// The process exit code: [`EXIT_PASS`], [`EXIT_VIOLATION`] or [`EXIT_ERROR`].
    pub fn exit_code(&self) -> i32 {
        if !self.violations.is_empty() {
            EXIT_VIOLATION
        } else if self.error.is_some() {
            EXIT_ERROR
        } else {
            EXIT_PASS
        }
    }

    /// Recovery figures per fault action.
    pub fn recovery(&self) -> BTreeMap<FaultAction, RecoveryStats> {
        recovery_of(self.faults.iter())
    }

    /// JSON (pretty), including the recovery figures.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Out<'a> {
            passed: bool,
            exit_code: i32,
            #[serde(flatten)]
            report: &'a Report,
            recovery: BTreeMap<FaultAction, RecoveryStats>,
        }
        serde_json::to_string_pretty(&Out {
            passed: self.passed(),
            exit_code: self.exit_code(),
            report: self,
            recovery: self.recovery(),
        })
        .unwrap_or_else(|e| format!("{{\"error\":\"report serialisation: {e}\"}}"))
    }

    /// The human summary.
    pub fn to_human(&self) -> String {
        let mut s = String::new();
        let verdict = match self.exit_code() {
            EXIT_PASS => "PASS",
            EXIT_VIOLATION => "FAIL (violations)",
            _ => "ERROR",
        };
        let _ = writeln!(
            s,
            "scenario {}  seed {}  {}  ({:.1} s)",
            self.scenario,
            self.seed,
            verdict,
            self.duration_ms as f64 / 1000.0
        );
        let _ = writeln!(s, "reproduce: {}", self.reproduce);
        if let Some(e) = &self.error {
            let _ = writeln!(s, "error: {e}");
        }
        let _ = writeln!(s, "\nfault schedule ({} events):", self.schedule.len());
        let _ = writeln!(
            s,
            "  {:>9}  {:<13} {:<24} {:>11} {:>12}  note",
            "at", "action", "targets", "injected", "recovery"
        );
        let outcomes: BTreeMap<(u64, usize, FaultAction), &FaultOutcome> = self
            .faults
            .iter()
            .map(|f| ((f.fault.t_ms, f.fault.source, f.fault.action), f))
            .collect();
        for f in &self.schedule {
            let o = outcomes.get(&(f.t_ms, f.source, f.action));
            let ms = |x: Option<u64>| x.map(|v| format!("{v}ms")).unwrap_or_else(|| "-".into());
            let _ = writeln!(
                s,
                "  {:>7}ms  {:<13} {:<24} {:>11} {:>12}  {}",
                f.t_ms,
                f.action.as_str(),
                targets_label(f, o.and_then(|o| o.hit.as_deref())),
                ms(o.and_then(|o| o.injected_ms)),
                ms(o.and_then(|o| o.recovery_ms)),
                o.and_then(|o| o.error.clone()).unwrap_or_default()
            );
        }
        let rec = self.recovery();
        if !rec.is_empty() {
            let _ = writeln!(s, "\nrecovery per fault kind:");
            for (a, r) in rec {
                let _ = writeln!(
                    s,
                    "  {:<13} n={:<4} p50 {} ms  p99 {} ms  max {} ms",
                    a.as_str(),
                    r.count,
                    r.p50_ms,
                    r.p99_ms,
                    r.max_ms
                );
            }
        }
        if let Some(a) = &self.availability {
            let _ = writeln!(s, "\navailability: {}", a.line());
            for w in &a.per_fault {
                let _ = writeln!(
                    s,
                    "  after {:<30} t+{:>6}..{:>6}ms  acknowledged {}/{} ({:.1} %), {} refused, {} not sent",
                    w.fault,
                    w.from_ms,
                    w.to_ms,
                    w.counts.acknowledged,
                    w.counts.offered,
                    w.counts.ratio * 100.0,
                    w.counts.refused,
                    w.counts.not_sent
                );
            }
        }
        let names: Vec<String> = self
            .checked
            .iter()
            .map(|i| {
                serde_json::to_value(i)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            })
            .collect();
        let _ = writeln!(s, "\ninvariants checked: {}", names.join(", "));
        if self.violations.is_empty() {
            let _ = writeln!(s, "violations: none");
        } else {
            let _ = writeln!(s, "violations ({}):", self.violations.len());
            for v in &self.violations {
                let _ = writeln!(s, "  {v}");
            }
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        s
    }
}

/// Recovery figures per fault action over `faults` (one run, or a whole suite).
pub fn recovery_of<'a>(
    faults: impl Iterator<Item = &'a FaultOutcome>,
) -> BTreeMap<FaultAction, RecoveryStats> {
    let mut by: BTreeMap<FaultAction, Percentiles> = BTreeMap::new();
    for f in faults {
        if let Some(r) = f.recovery_ms {
            by.entry(f.fault.action).or_default().record(r);
        }
    }
    by.into_iter()
        .map(|(a, p)| {
            (
                a,
                RecoveryStats {
                    count: p.count() as usize,
                    p50_ms: p.p50(),
                    p99_ms: p.p99(),
                    max_ms: p.max(),
                },
            )
        })
        .collect()
}

/// The end of a suite: one line per run, and recovery per fault kind over every run.
#[derive(Clone, Debug, Serialize)]
pub struct SuiteSummary {
    /// Suite name.
    pub suite: String,
    /// Every run passed.
    pub passed: bool,
    /// Per run: scenario, seed, verdict, violations, seconds.
    pub runs: Vec<SuiteRun>,
    /// Recovery per fault kind over all runs.
    pub recovery: BTreeMap<FaultAction, RecoveryStats>,
}

/// One run of a suite.
#[derive(Clone, Debug, Serialize)]
pub struct SuiteRun {
    /// Scenario.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Exit code of the run.
    pub exit_code: i32,
    /// Violations found.
    pub violations: usize,
    /// Duration, ms.
    pub duration_ms: u64,
    /// Reproduce command.
    pub reproduce: String,
    /// Inputs offered / acknowledged and the longest outages (runs with a workload).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub availability: Option<crate::availability::Availability>,
}

impl SuiteSummary {
    /// Summarises `reports` of suite `name`.
    pub fn new(name: &str, reports: &[Report]) -> Self {
        SuiteSummary {
            suite: name.to_string(),
            passed: reports.iter().all(Report::passed),
            runs: reports
                .iter()
                .map(|r| SuiteRun {
                    scenario: r.scenario.clone(),
                    seed: r.seed,
                    exit_code: r.exit_code(),
                    violations: r.violations.len(),
                    duration_ms: r.duration_ms,
                    reproduce: r.reproduce.clone(),
                    availability: r.availability.clone(),
                })
                .collect(),
            recovery: recovery_of(reports.iter().flat_map(|r| r.faults.iter())),
        }
    }

    /// The human table.
    pub fn to_human(&self) -> String {
        let mut s = format!(
            "suite {}: {}\n  {:<16} {:>6}  {:<8} {:>10} {:>9}  {:>22}  {:>17}\n",
            self.suite,
            if self.passed { "PASS" } else { "FAIL" },
            "scenario",
            "seed",
            "result",
            "violations",
            "time",
            "acknowledged/offered",
            "outage p99/max"
        );
        for r in &self.runs {
            let verdict = match r.exit_code {
                EXIT_PASS => "pass",
                EXIT_VIOLATION => "FAIL",
                _ => "ERROR",
            };
            let (acked, outage) = match &r.availability {
                Some(a) => (
                    format!(
                        "{}/{} ({:.1} %)",
                        a.total.acknowledged,
                        a.total.offered,
                        a.total.ratio * 100.0
                    ),
                    format!("{}/{} ms", a.longest_outage.p99_ms, a.longest_outage.max_ms),
                ),
                None => ("-".into(), "-".into()),
            };
            s.push_str(&format!(
                "  {:<16} {:>6}  {:<8} {:>10} {:>8.1}s  {:>22}  {:>17}\n",
                r.scenario,
                r.seed,
                verdict,
                r.violations,
                r.duration_ms as f64 / 1000.0,
                acked,
                outage
            ));
        }
        s.push_str("recovery per fault kind (all runs):\n");
        for (a, st) in &self.recovery {
            s.push_str(&format!(
                "  {:<13} n={:<3} p50 {} ms  p99 {} ms  max {} ms\n",
                a.to_string(),
                st.count,
                st.p50_ms,
                st.p99_ms,
                st.max_ms
            ));
        }
        for r in self.runs.iter().filter(|r| r.exit_code != EXIT_PASS) {
            s.push_str(&format!("reproduce: {}\n", r.reproduce));
        }
        s
    }
}

/// The command line that reproduces a run of `scenario_path` with `seed`.
pub fn reproduce_command(scenario_path: &str, seed: u64, json: bool) -> String {
    format!(
        "opengrid-chaos run {} --seed {seed}{}",
        shell_quote(scenario_path),
        if json { " --json" } else { "" }
    )
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:+,".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Timestamped progress lines on stderr (`[t+  12.3s] …`), silent when `quiet`.
pub struct Progress {
    start: Instant,
    quiet: bool,
}

impl Progress {
    /// Starts the clock.
    pub fn new(quiet: bool) -> Self {
        Progress {
            start: Instant::now(),
            quiet,
        }
    }

    /// Time since start.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Prints one line.
    pub fn line(&self, msg: impl std::fmt::Display) {
        if !self.quiet {
            eprintln!("[t+{:>7.1}s] {msg}", self.start.elapsed().as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::FaultParams;

    fn fault(t: u64, a: FaultAction) -> ScheduledFault {
        ScheduledFault {
            t_ms: t,
            action: a,
            targets: vec!["n1".into()],
            params: FaultParams::default(),
            source: 0,
            duration_ms: None,
        }
    }

    #[test]
    fn a_suite_summary_pools_recovery_over_runs_and_names_the_failures() {
        let outcome = |ms| FaultOutcome {
            fault: fault(100, FaultAction::Kill),
            injected_ms: Some(100),
            recovery_ms: Some(ms),
            error: None,
            hit: None,
        };
        let mut a = Report::new("kill-node", 1, "opengrid-chaos run a.toml --seed 1".into());
        a.faults = vec![outcome(200)];
        let mut b = Report::new("rc-loss", 2, "opengrid-chaos run b.toml --seed 2".into());
        b.faults = vec![outcome(400)];
        let s = SuiteSummary::new("short", &[a.clone(), b.clone()]);
        assert!(s.passed);
        assert_eq!(s.recovery[&FaultAction::Kill].count, 2);
        assert_eq!(s.recovery[&FaultAction::Kill].max_ms, 400);
        let h = s.to_human();
        assert!(
            h.contains("suite short: PASS") && h.contains("rc-loss"),
            "{h}"
        );
        assert!(!h.contains("reproduce:"), "{h}");
        b.violations.push(Violation {
            invariant: Invariant::NoAckedLoss,
            subject: "s".into(),
            detail: "lost".into(),
            t_ms: None,
        });
        let s = SuiteSummary::new("short", &[a, b]);
        assert!(!s.passed);
        assert!(s
            .to_human()
            .contains("reproduce: opengrid-chaos run b.toml --seed 2"));
    }

    #[test]
    fn exit_codes_and_tables() {
        let mut r = Report::new(
            "kill",
            9,
            reproduce_command("chaos/scenarios/kill.toml", 9, false),
        );
        r.schedule = vec![
            fault(100, FaultAction::Kill),
            fault(900, FaultAction::Restart),
        ];
        r.faults = vec![FaultOutcome {
            fault: fault(100, FaultAction::Kill),
            injected_ms: Some(101),
            recovery_ms: Some(850),
            error: None,
            hit: None,
        }];
        r.checked = vec![Invariant::NoAckedLoss];
        assert_eq!(r.exit_code(), EXIT_PASS);
        let h = r.to_human();
        assert!(h.contains("PASS"), "{h}");
        assert!(h.contains("opengrid-chaos run chaos/scenarios/kill.toml --seed 9"));
        assert!(h.contains("850ms"));
        assert!(h.contains("no-acked-loss"));
        assert_eq!(r.recovery()[&FaultAction::Kill].p99_ms, 850);
        r.violations.push(Violation {
            invariant: Invariant::NoAckedLoss,
            subject: "s1".into(),
            detail: "seq 3 lost".into(),
            t_ms: Some(5),
        });
        assert_eq!(r.exit_code(), EXIT_VIOLATION);
        assert!(r.to_human().contains("seq 3 lost"));
        let j: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(j["passed"], false);
        assert_eq!(j["exit_code"], 1);
        assert_eq!(j["seed"], 9);
        assert_eq!(j["recovery"]["kill"]["count"], 1);
        let mut e = Report::new("x", 1, String::new());
        e.error = Some("no node binary".into());
        assert_eq!(e.exit_code(), EXIT_ERROR);
        assert_eq!(shell_quote("a b"), "'a b'");
    }

    #[test]
    fn a_fault_on_the_rc_leader_names_the_process_it_hit() {
        let mut kill = fault(5_000, FaultAction::Kill);
        kill.targets = vec![crate::scenario::RC_LEADER.into()];
        let mut restart = fault(10_000, FaultAction::Restart);
        restart.targets = kill.targets.clone();
        let mut r = Report::new("rc-leader-loss", 3, String::new());
        r.schedule = vec![kill.clone(), restart.clone()];
        r.faults = [kill, restart]
            .into_iter()
            .map(|f| FaultOutcome {
                fault: f,
                injected_ms: Some(1),
                recovery_ms: None,
                error: None,
                hit: Some("rc-eu-2".into()),
            })
            .collect();
        assert_eq!(r.faults[0].targets_label(), "rc-leader (rc-eu-2)");
        let h = r.to_human();
        assert_eq!(h.matches("rc-leader (rc-eu-2)").count(), 2, "{h}");
        let j: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(j["faults"][1]["hit"], "rc-eu-2");
        assert_eq!(j["faults"][1]["fault"]["targets"][0], "rc-leader");
    }
}

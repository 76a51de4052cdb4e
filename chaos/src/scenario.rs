//! Why one file of ~1,210 lines: it is one schema — the scenario format's types, their defaults,
//! the validation that names each field, the expansion of `[[fault]]` entries into the schedule a
//! seed fixes, and the suite file that lists scenarios — which whoever adds a field reads top to
//! bottom and changes in one place (a new fault kind touches its type, its validation and its
//! expansion together; the RC group's rules — group sizes, the `rc-leader` target — went into all
//! three at once); its tests are the `chaos/tests/scenario.rs` binary.
//!
//! Scenario files: versioned TOML describing a cluster, a workload, a fault schedule, the
//! invariants to check and a seed.
//!
//! ```toml
//! version = 1
//! name = "kill-node"
//! seed = 42
//! duration = "40s"
//!
//! [cluster]
//! colonies = ["eu"]
//! [[cluster.rc]]
//! name = "rc-eu"
//! colony = "eu"
//! [[cluster.node]]
//! name = "n1"
//! colony = "eu"
//! jurisdiction = "DE"
//!
//! [workload]
//! duration = "30s"
//! [[workload.sessions]]
//! group = "tutors"
//! count = 20
//! manifest = "../../examples/manifests/tutor.toml"   # relative to the scenario file
//! input_rate = 5.0                                   # inputs/s per session
//! state_size = "4KiB"
//!
//! [[fault]]
//! at = "10s"
//! spread = "2s"           # the real time is at + U[0, spread), drawn from the seed
//! action = "kill"
//! target = "n1"
//!
//! [invariants]
//! check = ["no-acked-loss", "no-duplicate", "single-active", "jurisdiction", "health"]
//! ```
//!
//! Several `[[cluster.rc]]` of one colony are its RC group (1, 3 or 5 RC processes on one Raft
//! log, ADR 0037); a fault's `target = "rc-leader"` names whichever of them leads when it fires.
//!
//! Parsing never panics; every error names the offending field (`fault[2].between`). The same
//! seed always expands to the same [`ScheduledFault`] list.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use opengrid_session::{jurisdiction, ByteSize, HumanDuration, Manifest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::proxy::{LossMode, PartitionMode};

/// The scenario format version this build reads.
pub const SCENARIO_VERSION: u32 = 1;
/// Largest scenario file accepted.
pub const MAX_SCENARIO_BYTES: usize = 1 << 20;
/// Longest scenario run accepted (the long suite runs for hours, not days).
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// A scenario, as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Must equal [`SCENARIO_VERSION`].
    pub version: u32,
    /// Short name (used in reports and file names).
    pub name: String,
    /// What the scenario proves.
    #[serde(default)]
    pub description: String,
    /// Seed of every random choice (fault times, latency jitter, loss, workload values).
    pub seed: u64,
    /// Total run time, faults included.
    pub duration: HumanDuration,
    /// Processes to start.
    pub cluster: ClusterSpec,
    /// The client load.
    #[serde(default)]
    pub workload: WorkloadSpec,
    /// Faults, by offset from the start of the run.
    #[serde(default, rename = "fault")]
    pub faults: Vec<FaultSpec>,
    /// Invariants checked after the run.
    pub invariants: InvariantSpec,
}

/// `[cluster]`
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// Colony names.
    pub colonies: Vec<String>,
    /// Regional coordinators.
    #[serde(default)]
    pub rc: Vec<RcSpec>,
    /// Nodes.
    #[serde(default)]
    pub node: Vec<NodeSpec>,
    /// Ledger replicas.
    #[serde(default)]
    pub ledger: Vec<LedgerSpec>,
}

/// `[[cluster.rc]]`. Several with the same colony are that colony's RC group (ADR 0037): 1, 3 or
/// 5 RC processes replicated with Raft, ids 1.. in declaration order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RcSpec {
    /// Process name.
    pub name: String,
    /// Its colony.
    pub colony: String,
}

/// `[[cluster.node]]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Process name.
    pub name: String,
    /// Its colony.
    pub colony: String,
    /// Where it is (ISO 3166-1 alpha-2 code or zone).
    pub jurisdiction: String,
    /// Session capacity.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: u32,
}

fn default_max_sessions() -> u32 {
    10_000
}

/// `[[cluster.ledger]]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerSpec {
    /// Process name.
    pub name: String,
}

/// `[workload]`
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    /// How long the clients send (from the start); defaults to the scenario's duration.
    #[serde(default)]
    pub duration: Option<HumanDuration>,
    /// Session groups.
    #[serde(default)]
    pub sessions: Vec<SessionGroup>,
}

/// `[[workload.sessions]]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionGroup {
    /// Group name (faults on handlers name it).
    pub group: String,
    /// Sessions in the group.
    pub count: u32,
    /// Manifest file, relative to the scenario file.
    #[serde(default)]
    pub manifest: Option<PathBuf>,
    /// Inline manifest TOML (instead of `manifest`).
    #[serde(default)]
    pub manifest_toml: Option<String>,
    /// Inputs per second per session.
    pub input_rate: f64,
    /// Session state size the handler keeps.
    #[serde(default = "default_state_size")]
    pub state_size: ByteSize,
}

fn default_state_size() -> ByteSize {
    ByteSize(4 << 10)
}

/// What a fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultAction {
    /// SIGKILL a process.
    Kill,
    /// Start a killed process again (same data dir, same ports).
    Restart,
    /// SIGSTOP a process.
    Pause,
    /// SIGCONT a paused process.
    Resume,
    /// Partition the links between two processes (both directions).
    Partition,
    /// Add latency (± jitter) on the links between two processes.
    Latency,
    /// Loss emulation on the links between two processes.
    Loss,
    /// Bandwidth limit on the links between two processes.
    Bandwidth,
    /// Clear every network fault between two processes.
    Heal,
    /// Checkpoint writes on a node fail (injected I/O error).
    FailDisk,
    /// Checkpoint writes on a node work again.
    RestoreDisk,
    /// Inputs of a session group make the handler slow.
    SlowHandler,
    /// Inputs of a session group make the handler panic.
    PanicHandler,
    /// Malformed bytes on a process's listening ports.
    Fuzz,
}

impl FaultAction {
    /// The name used in files and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultAction::Kill => "kill",
            FaultAction::Restart => "restart",
            FaultAction::Pause => "pause",
            FaultAction::Resume => "resume",
            FaultAction::Partition => "partition",
            FaultAction::Latency => "latency",
            FaultAction::Loss => "loss",
            FaultAction::Bandwidth => "bandwidth",
            FaultAction::Heal => "heal",
            FaultAction::FailDisk => "fail-disk",
            FaultAction::RestoreDisk => "restore-disk",
            FaultAction::SlowHandler => "slow-handler",
            FaultAction::PanicHandler => "panic-handler",
            FaultAction::Fuzz => "fuzz",
        }
    }

    fn needs_target(self) -> bool {
        !self.needs_between()
    }

    fn needs_between(self) -> bool {
        matches!(
            self,
            FaultAction::Partition
                | FaultAction::Latency
                | FaultAction::Loss
                | FaultAction::Bandwidth
                | FaultAction::Heal
        )
    }

    /// The action that undoes this one when the fault has a `duration`.
    fn undo(self) -> Option<FaultAction> {
        Some(match self {
            FaultAction::Kill => FaultAction::Restart,
            FaultAction::Pause => FaultAction::Resume,
            FaultAction::Partition
            | FaultAction::Latency
            | FaultAction::Loss
            | FaultAction::Bandwidth => FaultAction::Heal,
            FaultAction::FailDisk => FaultAction::RestoreDisk,
            _ => return None,
        })
    }
}

impl fmt::Display for FaultAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The fault target that names whichever RC of the colony's group leads when the fault fires
/// (kill, pause, fuzz); the `restart`/`resume` of the same fault entry acts on that same process.
/// Reserved: no process may take this name.
pub const RC_LEADER: &str = "rc-leader";

/// Sizes an RC group may have: odd, so a majority survives a split, and at most five.
pub const RC_GROUP_SIZES: &[usize] = &[1, 3, 5];

/// Ports a fuzz fault can aim at.
pub const FUZZ_PORTS: &[&str] = &["all", "http", "control", "migration", "raft"];

/// `[[fault]]` — one flat table; which keys are required depends on `action` (see
/// [`Scenario::validate`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// Offset from the start of the run.
    pub at: HumanDuration,
    /// The real offset is `at + U[0, spread)`, drawn from the seed.
    #[serde(default)]
    pub spread: HumanDuration,
    /// What to do.
    pub action: FaultAction,
    /// The process (kill, restart, pause, resume, fail-disk, restore-disk, fuzz) or session
    /// group (slow-handler, panic-handler).
    #[serde(default)]
    pub target: Option<String>,
    /// The two processes whose links are affected (partition, latency, loss, bandwidth, heal).
    #[serde(default)]
    pub between: Option<Vec<String>>,
    /// How long the fault lasts; its undo (restart, resume, heal, restore-disk) is scheduled
    /// after it. Required for fuzz, slow-handler and panic-handler.
    #[serde(default)]
    pub duration: Option<HumanDuration>,
    /// Partition: `refuse` or `stall`; loss: `drop` or `stall`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Latency: added one-way delay; slow-handler: delay per input.
    #[serde(default)]
    pub latency: Option<HumanDuration>,
    /// Latency: uniform jitter around `latency`.
    #[serde(default)]
    pub jitter: Option<HumanDuration>,
    /// Loss: probability per chunk (0 < p ≤ 1).
    #[serde(default)]
    pub probability: Option<f64>,
    /// Bandwidth: bytes per second.
    #[serde(default)]
    pub rate: Option<ByteSize>,
    /// Fuzz: which ports (`all`, `http`, `control`, `migration`, `raft`).
    #[serde(default)]
    pub port: Option<String>,
}

/// Invariant names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Invariant {
    /// No acknowledged input lost beyond the manifest's bound.
    NoAckedLoss,
    /// No input processed twice.
    NoDuplicate,
    /// No session active on two nodes in overlapping epochs.
    SingleActive,
    /// Placements respect manifest jurisdictions.
    Jurisdiction,
    /// Ledger credits sum to fees; every receipt applied once.
    LedgerBalance,
    /// Every live process answers health.
    Health,
    /// No healthy node declared dead (P4).
    NoFalseDowning,
    /// No hostile well-formed request of the fuzzer (a stranger's or another session's token)
    /// accepted by a client API.
    NoStrangerAccepted,
    /// At least `min_availability` of the inputs the workload offered were acknowledged
    /// ([`crate::availability`]).
    Availability,
}

/// `[invariants]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvariantSpec {
    /// Invariants to check.
    pub check: Vec<Invariant>,
    /// `availability`: the share of offered inputs that must be acknowledged (0..=1; default
    /// [`DEFAULT_MIN_AVAILABILITY`]).
    #[serde(default)]
    pub min_availability: Option<f64>,
}

/// The `availability` invariant's floor when a scenario names none.
pub const DEFAULT_MIN_AVAILABILITY: f64 = 0.99;

/// A scenario file that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// File I/O.
    #[error("scenario {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Too large.
    #[error("scenario is {0} bytes; the limit is {MAX_SCENARIO_BYTES}")]
    TooLarge(usize),
    /// TOML or type error at `field`.
    #[error("scenario field `{field}`: {message}")]
    Parse {
        /// Dotted path of the field.
        field: String,
        /// The parser's message.
        message: String,
    },
    /// Semantically invalid.
    #[error("scenario field `{field}`: {message}")]
    Invalid {
        /// Dotted path of the field.
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl ScenarioError {
    /// The field this error names, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            ScenarioError::Parse { field, .. } | ScenarioError::Invalid { field, .. } => {
                Some(field)
            }
            _ => None,
        }
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// The kind of a process in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProcessKind {
    /// Regional coordinator.
    Rc,
    /// Node.
    Node,
    /// Ledger replica.
    Ledger,
}

impl Scenario {
    /// Parses TOML text (no file-relative checks: manifest paths are resolved by
    /// [`Scenario::load`]) and validates it.
    pub fn from_toml_str(s: &str) -> Result<Scenario, ScenarioError> {
        let sc = Self::parse(s)?;
        sc.validate()?;
        Ok(sc)
    }

    fn parse(s: &str) -> Result<Scenario, ScenarioError> {
        if s.len() > MAX_SCENARIO_BYTES {
            return Err(ScenarioError::TooLarge(s.len()));
        }
        let de = toml::Deserializer::new(s);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            let mut message = inner.message().to_string();
            if let Some(span) = inner.span() {
                let line = s[..span.start.min(s.len())].matches('\n').count() + 1;
                message = format!("{message} (line {line})");
            }
            ScenarioError::Parse {
                field: if field.is_empty() { ".".into() } else { field },
                message,
            }
        })
    }

    /// Reads, parses and validates a scenario file; manifest paths are resolved against its
    /// directory and loaded.
    pub fn load(path: impl AsRef<Path>) -> Result<Scenario, ScenarioError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut sc = Self::parse(&text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for g in sc.workload.sessions.iter_mut() {
            if let Some(m) = &g.manifest {
                if m.is_relative() {
                    g.manifest = Some(base.join(m));
                }
            }
        }
        sc.validate()?;
        for (i, g) in sc.workload.sessions.iter().enumerate() {
            if let Some(m) = &g.manifest {
                Manifest::load(m).map_err(|e| {
                    invalid(
                        format!("workload.sessions[{i}].manifest"),
                        format!("{}: {e}", m.display()),
                    )
                })?;
            }
        }
        Ok(sc)
    }

    /// Every process name with its kind.
    pub fn processes(&self) -> BTreeMap<&str, ProcessKind> {
        let c = &self.cluster;
        c.rc.iter()
            .map(|r| (r.name.as_str(), ProcessKind::Rc))
            .chain(c.node.iter().map(|n| (n.name.as_str(), ProcessKind::Node)))
            .chain(
                c.ledger
                    .iter()
                    .map(|l| (l.name.as_str(), ProcessKind::Ledger)),
            )
            .collect()
    }

    /// The RCs of `colony`, in declaration order: its RC group (one RC: a group of one).
    pub fn rc_group(&self, colony: &str) -> Vec<&RcSpec> {
        self.cluster
            .rc
            .iter()
            .filter(|r| r.colony == colony)
            .collect()
    }

    /// The kind of a fault target: a process's, or [`ProcessKind::Rc`] for [`RC_LEADER`].
    pub fn target_kind(&self, target: &str) -> Option<ProcessKind> {
        if target == RC_LEADER {
            return Some(ProcessKind::Rc);
        }
        self.processes().get(target).copied()
    }

    /// Whether the RC `target` (a name or [`RC_LEADER`]) is one of a group of several, so that
    /// its loss leaves the colony's control plane running.
    pub fn in_rc_group(&self, target: &str) -> bool {
        let colony = if target == RC_LEADER {
            self.cluster.colonies.first()
        } else {
            self.cluster
                .rc
                .iter()
                .find(|r| r.name == target)
                .map(|r| &r.colony)
        };
        colony.is_some_and(|c| self.rc_group(c).len() > 1)
    }

    /// Checks everything that does not need the file system; the first error names its field.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        if self.version != SCENARIO_VERSION {
            return Err(invalid(
                "version",
                format!(
                    "unsupported version {}; this build reads version {SCENARIO_VERSION}",
                    self.version
                ),
            ));
        }
        if !is_name(&self.name) {
            return Err(invalid("name", name_rule(&self.name)));
        }
        if self.duration.is_zero() || self.duration.0 > MAX_DURATION {
            return Err(invalid(
                "duration",
                format!("must be above 0 and at most {MAX_DURATION:?}"),
            ));
        }
        self.validate_cluster()?;
        self.validate_workload()?;
        self.validate_faults()?;
        self.validate_invariants()
    }

    fn validate_cluster(&self) -> Result<(), ScenarioError> {
        let c = &self.cluster;
        if c.colonies.is_empty() {
            return Err(invalid("cluster.colonies", "name at least one colony"));
        }
        let mut colonies = BTreeSet::new();
        for (i, col) in c.colonies.iter().enumerate() {
            if !is_name(col) {
                return Err(invalid(format!("cluster.colonies[{i}]"), name_rule(col)));
            }
            if !colonies.insert(col.as_str()) {
                return Err(invalid(
                    format!("cluster.colonies[{i}]"),
                    format!("colony {col:?} listed twice"),
                ));
            }
        }
        let mut names = BTreeSet::new();
        let mut check_name = |field: String, name: &str| -> Result<(), ScenarioError> {
            if !is_name(name) {
                return Err(invalid(field, name_rule(name)));
            }
            if name == RC_LEADER {
                return Err(invalid(
                    field,
                    format!(
                        "{RC_LEADER:?} is reserved: as a fault target it names the RC that leads \
                         when the fault fires"
                    ),
                ));
            }
            if !names.insert(name.to_string()) {
                return Err(invalid(
                    field,
                    format!("process name {name:?} is used twice"),
                ));
            }
            Ok(())
        };
        let colony_ok = |field: String, col: &str| -> Result<(), ScenarioError> {
            if colonies.contains(col) {
                Ok(())
            } else {
                Err(invalid(
                    field,
                    format!("unknown colony {col:?}; declared: {colonies:?}"),
                ))
            }
        };
        for (i, r) in c.rc.iter().enumerate() {
            check_name(format!("cluster.rc[{i}].name"), &r.name)?;
            colony_ok(format!("cluster.rc[{i}].colony"), &r.colony)?;
        }
        for (i, n) in c.node.iter().enumerate() {
            check_name(format!("cluster.node[{i}].name"), &n.name)?;
            colony_ok(format!("cluster.node[{i}].colony"), &n.colony)?;
            if !jurisdiction::is_known(&n.jurisdiction) {
                return Err(invalid(
                    format!("cluster.node[{i}].jurisdiction"),
                    format!(
                        "unknown jurisdiction {:?} (ISO 3166-1 alpha-2 or EU/EEA)",
                        n.jurisdiction
                    ),
                ));
            }
            if n.max_sessions == 0 {
                return Err(invalid(
                    format!("cluster.node[{i}].max_sessions"),
                    "must be at least 1",
                ));
            }
        }
        for (i, l) in c.ledger.iter().enumerate() {
            check_name(format!("cluster.ledger[{i}].name"), &l.name)?;
        }
        for col in &colonies {
            match self.rc_group(col).len() {
                0 => {
                    return Err(invalid(
                        "cluster.rc",
                        format!("colony {col:?} has no regional coordinator"),
                    ))
                }
                n if !RC_GROUP_SIZES.contains(&n) => {
                    return Err(invalid(
                        "cluster.rc",
                        format!(
                            "colony {col:?} has {n} regional coordinators: its RC group needs \
                             {RC_GROUP_SIZES:?} (an odd number, at most 5, so a majority survives \
                             a split)"
                        ),
                    ))
                }
                _ => {}
            }
        }
        if !c.ledger.is_empty() && c.ledger.len().is_multiple_of(2) {
            return Err(invalid(
                "cluster.ledger",
                format!(
                    "{} ledger replicas: use an odd number so a majority survives a split",
                    c.ledger.len()
                ),
            ));
        }
        Ok(())
    }

    fn validate_workload(&self) -> Result<(), ScenarioError> {
        let w = &self.workload;
        if let Some(d) = w.duration {
            if d.0 > self.duration.0 {
                return Err(invalid(
                    "workload.duration",
                    format!(
                        "{:?} is longer than the scenario's duration {:?}",
                        d.0, self.duration.0
                    ),
                ));
            }
        }
        if !w.sessions.is_empty() && self.cluster.node.is_empty() {
            return Err(invalid(
                "workload.sessions",
                "sessions need at least one cluster.node",
            ));
        }
        let mut groups = BTreeSet::new();
        for (i, g) in w.sessions.iter().enumerate() {
            let f = |k: &str| format!("workload.sessions[{i}].{k}");
            if !is_name(&g.group) {
                return Err(invalid(f("group"), name_rule(&g.group)));
            }
            if !groups.insert(g.group.as_str()) {
                return Err(invalid(
                    f("group"),
                    format!("group {:?} is used twice", g.group),
                ));
            }
            if g.count == 0 || g.count > 1_000_000 {
                return Err(invalid(f("count"), "must be in 1..=1000000"));
            }
            match (&g.manifest, &g.manifest_toml) {
                (None, None) => {
                    return Err(invalid(
                        f("manifest"),
                        "give `manifest` (a path) or `manifest_toml` (inline)",
                    ))
                }
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        f("manifest_toml"),
                        "give either `manifest` or `manifest_toml`, not both",
                    ))
                }
                (None, Some(t)) => {
                    Manifest::from_toml_str(t)
                        .map_err(|e| invalid(f("manifest_toml"), e.to_string()))?;
                }
                (Some(_), None) => {}
            }
            if !(g.input_rate.is_finite() && g.input_rate > 0.0 && g.input_rate <= 100_000.0) {
                return Err(invalid(f("input_rate"), "must be in (0, 100000] inputs/s"));
            }
            if g.state_size.0 > 64 << 20 {
                return Err(invalid(f("state_size"), "at most 64MiB"));
            }
        }
        Ok(())
    }

    fn validate_faults(&self) -> Result<(), ScenarioError> {
        let procs = self.processes();
        let groups: BTreeSet<&str> = self
            .workload
            .sessions
            .iter()
            .map(|g| g.group.as_str())
            .collect();
        for (i, ft) in self.faults.iter().enumerate() {
            let f = |k: &str| format!("fault[{i}].{k}");
            let end = ft.at.0 + ft.spread.0 + ft.duration.map(|d| d.0).unwrap_or_default();
            if end > self.duration.0 {
                return Err(invalid(
                    f("at"),
                    format!(
                        "the fault ends at up to {end:?} (at + spread + duration), after the \
                         scenario's duration {:?}",
                        self.duration.0
                    ),
                ));
            }
            let a = ft.action;
            // Keys that do not belong to this action are refused, so a typo'd schedule is loud.
            let allowed: &[&str] = match a {
                FaultAction::Kill | FaultAction::Pause => &["target", "duration"],
                FaultAction::Restart | FaultAction::Resume | FaultAction::RestoreDisk => {
                    &["target"]
                }
                FaultAction::FailDisk => &["target", "duration"],
                FaultAction::Partition => &["between", "duration", "mode"],
                FaultAction::Latency => &["between", "duration", "latency", "jitter"],
                FaultAction::Loss => &["between", "duration", "probability", "mode"],
                FaultAction::Bandwidth => &["between", "duration", "rate"],
                FaultAction::Heal => &["between"],
                FaultAction::SlowHandler => &["target", "duration", "latency"],
                FaultAction::PanicHandler => &["target", "duration"],
                FaultAction::Fuzz => &["target", "duration", "port"],
            };
            let present = [
                ("target", ft.target.is_some()),
                ("between", ft.between.is_some()),
                ("duration", ft.duration.is_some()),
                ("mode", ft.mode.is_some()),
                ("latency", ft.latency.is_some()),
                ("jitter", ft.jitter.is_some()),
                ("probability", ft.probability.is_some()),
                ("rate", ft.rate.is_some()),
                ("port", ft.port.is_some()),
            ];
            for (k, is) in present {
                if is && !allowed.contains(&k) {
                    return Err(invalid(f(k), format!("`{k}` does not apply to action {a}")));
                }
            }
            if a.needs_target() {
                let Some(t) = &ft.target else {
                    return Err(invalid(f("target"), format!("action {a} needs a target")));
                };
                match a {
                    FaultAction::SlowHandler | FaultAction::PanicHandler => {
                        if !groups.contains(t.as_str()) {
                            return Err(invalid(
                                f("target"),
                                format!("unknown session group {t:?}; declared: {groups:?}"),
                            ));
                        }
                    }
                    FaultAction::FailDisk | FaultAction::RestoreDisk => {
                        if procs.get(t.as_str()) != Some(&ProcessKind::Node) {
                            return Err(invalid(
                                f("target"),
                                format!("{a} needs a node; {t:?} is not a cluster.node"),
                            ));
                        }
                    }
                    _ if t == RC_LEADER => {
                        if self.cluster.colonies.len() != 1 {
                            return Err(invalid(
                                f("target"),
                                format!(
                                    "{RC_LEADER:?} is the leader of the only colony's RC group; \
                                     with {} colonies name the RC",
                                    self.cluster.colonies.len()
                                ),
                            ));
                        }
                    }
                    _ => {
                        if !procs.contains_key(t.as_str()) {
                            return Err(invalid(f("target"), format!("unknown process {t:?}")));
                        }
                    }
                }
            }
            if a.needs_between() {
                let Some(b) = &ft.between else {
                    return Err(invalid(
                        f("between"),
                        format!("action {a} needs `between = [\"p1\", \"p2\"]`"),
                    ));
                };
                if b.len() != 2 || b[0] == b[1] {
                    return Err(invalid(
                        f("between"),
                        "name exactly two different processes",
                    ));
                }
                for p in b {
                    if !procs.contains_key(p.as_str()) {
                        return Err(invalid(f("between"), format!("unknown process {p:?}")));
                    }
                }
            }
            match a {
                FaultAction::Partition => {
                    if let Some(m) = &ft.mode {
                        parse_partition_mode(m).map_err(|e| invalid(f("mode"), e))?;
                    }
                }
                FaultAction::Loss => {
                    if let Some(m) = &ft.mode {
                        parse_loss_mode(m).map_err(|e| invalid(f("mode"), e))?;
                    }
                    match ft.probability {
                        Some(p) if p.is_finite() && p > 0.0 && p <= 1.0 => {}
                        _ => {
                            return Err(invalid(
                                f("probability"),
                                "loss needs a probability in (0, 1]",
                            ))
                        }
                    }
                }
                FaultAction::Latency if ft.latency.is_none_or(|l| l.is_zero()) => {
                    return Err(invalid(f("latency"), "latency needs `latency` above 0"));
                }
                FaultAction::SlowHandler if ft.latency.is_none_or(|l| l.is_zero()) => {
                    return Err(invalid(
                        f("latency"),
                        "slow-handler needs `latency` (delay per input) above 0",
                    ));
                }
                FaultAction::Bandwidth if ft.rate.is_none_or(|r| r.0 == 0) => {
                    return Err(invalid(f("rate"), "bandwidth needs `rate` above 0"));
                }
                FaultAction::Fuzz => {
                    let p = ft.port.as_deref().unwrap_or("all");
                    if !FUZZ_PORTS.contains(&p) {
                        return Err(invalid(
                            f("port"),
                            format!("unknown port {p:?}; use one of {FUZZ_PORTS:?}"),
                        ));
                    }
                }
                _ => {}
            }
            let needs_duration = matches!(
                a,
                FaultAction::Fuzz | FaultAction::SlowHandler | FaultAction::PanicHandler
            );
            match ft.duration {
                None if needs_duration => {
                    return Err(invalid(
                        f("duration"),
                        format!("action {a} needs a duration"),
                    ))
                }
                Some(d) if d.is_zero() => {
                    return Err(invalid(f("duration"), "must be above 0"));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn validate_invariants(&self) -> Result<(), ScenarioError> {
        let c = &self.invariants.check;
        if c.is_empty() {
            return Err(invalid(
                "invariants.check",
                "name at least one invariant to check",
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, inv) in c.iter().enumerate() {
            if !seen.insert(*inv) {
                return Err(invalid(
                    format!("invariants.check[{i}]"),
                    format!("{inv:?} listed twice"),
                ));
            }
            if *inv == Invariant::LedgerBalance && self.cluster.ledger.is_empty() {
                return Err(invalid(
                    format!("invariants.check[{i}]"),
                    "ledger-balance needs cluster.ledger replicas",
                ));
            }
            if matches!(
                inv,
                Invariant::NoAckedLoss
                    | Invariant::NoDuplicate
                    | Invariant::SingleActive
                    | Invariant::Availability
            ) && self.workload.sessions.is_empty()
            {
                return Err(invalid(
                    format!("invariants.check[{i}]"),
                    format!("{inv:?} needs workload.sessions"),
                ));
            }
        }
        if let Some(m) = self.invariants.min_availability {
            if !(0.0..=1.0).contains(&m) {
                return Err(invalid(
                    "invariants.min_availability",
                    format!("{m} is not a share between 0 and 1"),
                ));
            }
            if !c.contains(&Invariant::Availability) {
                return Err(invalid(
                    "invariants.min_availability",
                    "set, but `availability` is not in invariants.check",
                ));
            }
        }
        Ok(())
    }

    /// Expands the fault schedule with `seed`: spreads drawn, undo events added for faults with
    /// a duration, sorted by time (ties keep file order). Same seed ⇒ same schedule.
    pub fn expand(&self, seed: u64) -> Vec<ScheduledFault> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut out = Vec::new();
        for (i, ft) in self.faults.iter().enumerate() {
            // Always draw, so one fault's spread does not shift the others' draws.
            let r: f64 = rng.random();
            let offset = ft.at.0 + ft.spread.0.mul_f64(r);
            // Whole milliseconds: the schedule prints and compares exactly.
            let t_ms = offset.as_millis() as u64;
            let targets = match (&ft.target, &ft.between) {
                (Some(t), _) => vec![t.clone()],
                (None, Some(b)) => b.clone(),
                _ => Vec::new(),
            };
            let params = FaultParams::from_spec(ft);
            out.push(ScheduledFault {
                t_ms,
                action: ft.action,
                targets: targets.clone(),
                params: params.clone(),
                source: i,
                duration_ms: ft.duration.map(|d| d.0.as_millis() as u64),
            });
            if let (Some(d), Some(undo)) = (ft.duration, ft.action.undo()) {
                out.push(ScheduledFault {
                    t_ms: t_ms + d.0.as_millis() as u64,
                    action: undo,
                    targets,
                    params: FaultParams::default(),
                    source: i,
                    duration_ms: None,
                });
            }
        }
        out.sort_by_key(|f| (f.t_ms, f.source));
        out
    }
}

/// A concrete fault at a concrete time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduledFault {
    /// Offset from the start, in milliseconds.
    pub t_ms: u64,
    /// What.
    pub action: FaultAction,
    /// The process, the two processes, or the session group.
    pub targets: Vec<String>,
    /// Parameters.
    pub params: FaultParams,
    /// Index of the `[[fault]]` it came from.
    pub source: usize,
    /// For faults that run for a while on their own (fuzz, handler faults).
    pub duration_ms: Option<u64>,
}

impl fmt::Display for ScheduledFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "t+{:>6}ms {:<13} {}",
            self.t_ms,
            self.action.as_str(),
            self.targets.join(" <-> ")
        )?;
        let p = &self.params;
        if let Some(m) = &p.partition {
            write!(f, " mode={m:?}")?;
        }
        if let Some(l) = p.latency_ms {
            write!(f, " latency={l}ms")?;
        }
        if let Some(j) = p.jitter_ms {
            write!(f, " jitter={j}ms")?;
        }
        if let Some((p, m)) = p.loss {
            write!(f, " p={p} mode={m:?}")?;
        }
        if let Some(r) = p.rate {
            write!(f, " rate={r}B/s")?;
        }
        if let Some(port) = &p.port {
            write!(f, " port={port}")?;
        }
        if let Some(d) = self.duration_ms {
            write!(f, " for={d}ms")?;
        }
        Ok(())
    }
}

/// Parameters of a scheduled fault (only those of its action are set).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultParams {
    /// Partition mode.
    pub partition: Option<PartitionMode>,
    /// Latency (network) or delay per input (slow handler), ms.
    pub latency_ms: Option<u64>,
    /// Jitter, ms.
    pub jitter_ms: Option<u64>,
    /// Loss probability and mode.
    pub loss: Option<(f64, LossMode)>,
    /// Bandwidth, bytes/s.
    pub rate: Option<u64>,
    /// Fuzzed port.
    pub port: Option<String>,
}

impl FaultParams {
    fn from_spec(ft: &FaultSpec) -> Self {
        let ms = |d: Option<HumanDuration>| d.map(|d| d.0.as_millis() as u64);
        let mut p = FaultParams {
            latency_ms: ms(ft.latency),
            jitter_ms: ms(ft.jitter),
            rate: ft.rate.map(|r| r.0),
            ..Default::default()
        };
        match ft.action {
            FaultAction::Partition => {
                p.partition = Some(
                    ft.mode
                        .as_deref()
                        .map(parse_partition_mode)
                        .and_then(Result::ok)
                        .unwrap_or(PartitionMode::Refuse),
                )
            }
            FaultAction::Loss => {
                let m = ft
                    .mode
                    .as_deref()
                    .map(parse_loss_mode)
                    .and_then(Result::ok)
                    .unwrap_or(LossMode::Drop);
                p.loss = Some((ft.probability.unwrap_or(0.0), m));
            }
            FaultAction::Fuzz => p.port = Some(ft.port.clone().unwrap_or_else(|| "all".into())),
            _ => {}
        }
        p
    }
}

fn parse_partition_mode(s: &str) -> Result<PartitionMode, String> {
    match s {
        "refuse" => Ok(PartitionMode::Refuse),
        "stall" => Ok(PartitionMode::Stall),
        _ => Err(format!(
            "unknown partition mode {s:?}; use \"refuse\" or \"stall\""
        )),
    }
}

fn parse_loss_mode(s: &str) -> Result<LossMode, String> {
    match s {
        "drop" => Ok(LossMode::Drop),
        "stall" => Ok(LossMode::Stall),
        _ => Err(format!(
            "unknown loss mode {s:?}; use \"drop\" or \"stall\""
        )),
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn name_rule(s: &str) -> String {
    format!("{s:?} is not a valid name (1-64 of A-Z a-z 0-9 - _)")
}

/// A suite: scenarios run one after the other with fixed seeds (`short-suite.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    /// Must equal [`SCENARIO_VERSION`].
    pub version: u32,
    /// Suite name.
    pub name: String,
    /// Wall-clock budget of the whole suite.
    pub budget: HumanDuration,
    /// The runs.
    #[serde(rename = "run")]
    pub runs: Vec<SuiteRun>,
}

/// `[[run]]` of a suite.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteRun {
    /// Scenario file, relative to the suite file.
    pub scenario: PathBuf,
    /// Seed (overrides the scenario's).
    #[serde(default)]
    pub seed: Option<u64>,
}

impl Suite {
    /// Reads a suite and loads (validates) every scenario it names; returns the suite with
    /// resolved paths and the scenarios.
    pub fn load(path: impl AsRef<Path>) -> Result<(Suite, Vec<Scenario>), ScenarioError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if text.len() > MAX_SCENARIO_BYTES {
            return Err(ScenarioError::TooLarge(text.len()));
        }
        let mut suite: Suite = serde_path_to_error::deserialize(toml::Deserializer::new(&text))
            .map_err(|e| ScenarioError::Parse {
                field: e.path().to_string(),
                message: e.into_inner().message().to_string(),
            })?;
        if suite.version != SCENARIO_VERSION {
            return Err(invalid(
                "version",
                format!("unsupported version {}", suite.version),
            ));
        }
        if suite.runs.is_empty() {
            return Err(invalid("run", "a suite needs at least one [[run]]"));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let mut scenarios = Vec::new();
        for (i, r) in suite.runs.iter_mut().enumerate() {
            if r.scenario.is_relative() {
                r.scenario = base.join(&r.scenario);
            }
            let sc = Scenario::load(&r.scenario).map_err(|e| {
                invalid(
                    format!("run[{i}].scenario"),
                    format!("{}: {e}", r.scenario.display()),
                )
            })?;
            scenarios.push(sc);
        }
        Ok((suite, scenarios))
    }
}

//! The session manifest: the contract between an agent and the infrastructure.
//!
//! A manifest is TOML or JSON, carries a `version`, rejects unknown fields, and is checked by
//! [`Manifest::validate`], which names every bad field and the reason. Everything downstream is
//! derived from it: the [`CheckpointPolicy`](crate::CheckpointPolicy), placement filters, and
//! whether a live handover is allowed.
//!
//! Every field is either obeyed by the runtime or refused: fields that parse but that nothing acts
//! on yet (`session.continuity` other than `interactive`, `session.expected_duration`,
//! `session.state_footprint`, `scaling.warm_up`, `[verification]`) accept only their default, and any
//! other value is a [`FieldErrorKind::NotSupportedYet`] error naming the field.
//!
//! ```
//! use opengrid_session::Manifest;
//! let m = Manifest::from_toml_str(r#"
//! version = 1
//! [session]
//! handler = "tutor"
//! continuity = "interactive"
//! [placement]
//! jurisdictions = ["DE"]
//! [migration]
//! cost = "cheap"
//! acceptable_loss = "0s"
//! max_blackout = "50ms"
//! "#).unwrap();
//! assert!(m.checkpoint_policy().is_synchronous());
//! ```

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::jurisdiction;
use crate::policy::CheckpointPolicy;
use crate::units::{ByteSize, HumanDuration};

/// The manifest format version this build reads and writes.
pub const MANIFEST_VERSION: u32 = 1;

/// Largest manifest file accepted, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;

/// A validated-on-demand session manifest. Construct with [`Manifest::from_toml_str`],
/// [`Manifest::from_json_str`] or [`Manifest::load`], which all validate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format version; must equal [`MANIFEST_VERSION`].
    pub version: u32,
    /// What kind of session this is.
    pub session: SessionSection,
    /// Where the session may run.
    #[serde(default)]
    pub placement: PlacementSection,
    /// How the session may move and how much state it may lose.
    pub migration: MigrationSection,
    /// Demand expectations.
    #[serde(default)]
    pub scaling: ScalingSection,
    /// What must be proven about the session's work.
    #[serde(default)]
    pub verification: VerificationSection,
    /// Where the session's handler may send HTTP requests (`SessionContext::fetch`).
    #[serde(default, skip_serializing_if = "EgressSection::is_empty")]
    pub egress: EgressSection,
    /// Limits of a pushed agent's sandbox (only with `session.agent`).
    #[serde(default, skip_serializing_if = "AgentSection::is_default")]
    pub agent: AgentSection,
}

/// `[agent]`: the sandbox of a pushed agent (ADR 0028), within the node's `[agents]` bounds (a
/// node gives at most its own `max_memory` and `deadline`). Only for sessions naming an `agent`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// Linear memory of the agent's instance (1MiB..=4GiB); default: the node's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<ByteSize>,
    /// Longest run of one input before it is interrupted (10ms..=10m); default: the node's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_deadline: Option<HumanDuration>,
}

impl AgentSection {
    fn is_default(&self) -> bool {
        *self == AgentSection::default()
    }
}

/// `[egress]`: the hosts a session's effects may reach through the node (ADR 0032). Nothing by
/// default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressSection {
    /// `host` (any port) or `host:port`, e.g. `"api.openai.com"`, `"127.0.0.1:8080"`; at most 64.
    #[serde(default)]
    pub hosts: Vec<String>,
}

impl EgressSection {
    fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Whether a request to `host` on `port` is allowed.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        self.hosts.iter().any(|h| match h.rsplit_once(':') {
            Some((hh, p)) if !hh.is_empty() && p.parse::<u16>().is_ok() => {
                hh.eq_ignore_ascii_case(host) && p.parse::<u16>() == Ok(port)
            }
            _ => h.eq_ignore_ascii_case(host),
        })
    }
}

/// `[session]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSection {
    /// Handler (agent) id that serves the session, e.g. `"tutor"`: a handler compiled into the
    /// node. Empty when `agent` names a pushed agent package instead (the RC then sets it to
    /// the agent's `name@version`).
    #[serde(default)]
    pub handler: String,
    /// A pushed agent package (ADR 0030): `"counter"` (the latest version not retired, chosen
    /// when the session is created) or `"counter@0.1.0"` (pinned). Exactly one of `handler` and
    /// `agent` is given by a client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The package hash (blake3 hex) the agent resolved to: set by the RC, which overwrites what a
    /// client puts here; a node fetches and verifies the package by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    /// Continuity model. Only `interactive` is supported yet (the runtime serves every session
    /// turn by turn); `stream` and `batch` are refused.
    pub continuity: Continuity,
    /// Expected session duration. Not supported yet: only the default (30m) is accepted; it
    /// bounds `migration.acceptable_loss`.
    #[serde(default = "default_expected_duration")]
    pub expected_duration: HumanDuration,
    /// Expected state size. Not supported yet: only the default (64KiB) is accepted (admission
    /// reserves `placement.memory`).
    #[serde(default = "default_state_footprint")]
    pub state_footprint: ByteSize,
    /// Idle time after which the session hibernates (checkpointed, actor stopped).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
}

fn default_expected_duration() -> HumanDuration {
    HumanDuration::from_secs(30 * 60)
}
fn default_state_footprint() -> ByteSize {
    ByteSize(64 * 1024)
}
fn default_idle_timeout() -> HumanDuration {
    HumanDuration::from_secs(5 * 60)
}

/// Continuity model of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Continuity {
    /// A continuous stream (audio, video, telemetry).
    Stream,
    /// Turn-by-turn interaction (chat, tutoring).
    Interactive,
    /// Background work with no user waiting on each step.
    Batch,
}

/// `[placement]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementSection {
    /// Jurisdictions the session (and its checkpoint replicas) may live in.
    #[serde(default = "default_jurisdictions")]
    pub jurisdictions: Vec<String>,
    /// Accelerator class required.
    #[serde(default)]
    pub accelerator: AcceleratorClass,
    /// Memory the session needs on its node.
    #[serde(default = "default_memory")]
    pub memory: ByteSize,
    /// Round-trip latency ceiling from the client to the serving node, if any.
    #[serde(default)]
    pub latency_ceiling: Option<HumanDuration>,
    /// Capabilities the serving node must offer (besides the handler itself).
    #[serde(default)]
    pub capabilities: Vec<String>,
}

fn default_jurisdictions() -> Vec<String> {
    Vec::new()
}
fn default_memory() -> ByteSize {
    ByteSize(64 << 20)
}

impl Default for PlacementSection {
    fn default() -> Self {
        Self {
            jurisdictions: default_jurisdictions(),
            accelerator: AcceleratorClass::default(),
            memory: default_memory(),
            latency_ceiling: None,
            capabilities: Vec::new(),
        }
    }
}

/// Accelerator classes, ordered from least to most capable.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum AcceleratorClass {
    /// CPU only.
    #[default]
    None,
    /// A small GPU / NPU (inference of small models).
    GpuSmall,
    /// A large GPU (large-model inference).
    GpuLarge,
}

impl fmt::Display for AcceleratorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AcceleratorClass::None => "none",
            AcceleratorClass::GpuSmall => "gpu-small",
            AcceleratorClass::GpuLarge => "gpu-large",
        })
    }
}

/// `[migration]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationSection {
    /// How costly moving the session is.
    pub cost: MigrationCost,
    /// How much recent state may be lost on node failure: `"0s"` means none.
    pub acceptable_loss: HumanDuration,
    /// Longest acceptable freeze during a live handover (required unless `never-live`).
    #[serde(default)]
    pub max_blackout: Option<HumanDuration>,
    /// Copies of every checkpoint beyond the holder's own that a zero-loss input needs before
    /// it is acknowledged (default 1; `0` = the holder's disk alone; at most
    /// [`MAX_MIN_COPIES`]). Below it, inputs are refused with the reason, never acknowledged
    /// from fewer copies. The colony may raise it (RC `min_copies`).
    #[serde(default = "default_min_copies")]
    pub min_copies: u32,
}

/// Largest `migration.min_copies` (the RC's `replicas` is at most 16 too).
pub const MAX_MIN_COPIES: u32 = 16;

fn default_min_copies() -> u32 {
    1
}

/// Migration cost class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationCost {
    /// Small state; move freely.
    Cheap,
    /// Large state; move only when worth it.
    Costly,
    /// Never hand over live: checkpoint and restart within the loss bound instead.
    NeverLive,
}

/// The handler a node serves when it runs pushed agent packages (ADR 0030): a session that
/// names an `agent` is admitted, here and in other colonies, on nodes serving it.
pub const AGENT_HANDLER: &str = "wasm";

impl Manifest {
    /// The handler a node must serve to host this session: [`AGENT_HANDLER`] for a pushed
    /// agent (the node fetches its package), else `session.handler`.
    pub fn required_handler(&self) -> &str {
        match self.session.agent {
            Some(_) => AGENT_HANDLER,
            None => &self.session.handler,
        }
    }
}

/// `[scaling]`: how many nodes keep a pushed agent warm (its package and models fetched and
/// compiled) ahead of demand (ADR 0031). `warm_up` is not supported yet (default only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingSection {
    /// Peak-to-average demand factor expected (1..=100): the RC keeps the agent warm on
    /// `spike_factor` × the nodes hosting its sessions (at least `warm_nodes`).
    #[serde(default = "default_spike")]
    pub spike_factor: f64,
    /// Nodes that hold the agent warm before its first session (0..=1000; placement and the
    /// manifest's jurisdictions apply).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub warm_nodes: u32,
    /// Time to warm a new instance (models loaded, caches filled).
    #[serde(default)]
    pub warm_up: HumanDuration,
}

fn default_spike() -> f64 {
    1.0
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

impl Default for ScalingSection {
    fn default() -> Self {
        Self {
            spike_factor: 1.0,
            warm_nodes: 0,
            warm_up: HumanDuration::ZERO,
        }
    }
}

/// `[verification]`. Not supported yet: only `proof = "receipt"` (the default) is accepted; every
/// session gets co-signed compute receipts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerificationSection {
    /// What must be proven.
    #[serde(default)]
    pub proof: ProofKind,
    /// For `proof = "domain"`: the domain proof type, e.g. `"mycel.mip.v1"`.
    #[serde(default)]
    pub domain_proof_type: Option<String>,
}

/// Verification requirement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProofKind {
    /// A co-signed compute receipt only.
    #[default]
    Receipt,
    /// Receipt plus a hash-chained transcript of inputs and outputs.
    Transcript,
    /// Receipt plus a domain-specific proof.
    Domain,
}

/// One validation failure: the dotted field path, what kind of failure, and the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path, e.g. `migration.max_blackout`.
    pub field: String,
    /// A bad value, or a value the runtime does not act on yet.
    pub kind: FieldErrorKind,
    /// What is wrong and what would be right.
    pub reason: String,
}

/// Whether a field's value is wrong or merely not supported by this build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldErrorKind {
    /// The value is malformed or contradicts another field.
    Invalid,
    /// The field parses, but no part of the runtime acts on a value other than its default yet;
    /// accepting it would promise something the runtime does not do.
    NotSupportedYet,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            FieldErrorKind::Invalid => write!(f, "{}: {}", self.field, self.reason),
            FieldErrorKind::NotSupportedYet => {
                write!(f, "{}: not supported yet: {}", self.field, self.reason)
            }
        }
    }
}

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The text is not well-formed for its format, has an unknown field, or a value of the wrong
    /// type. `field` is the dotted path where the decoder stopped.
    #[error("manifest {format} parse error at {field}: {message}")]
    Parse {
        /// `toml` or `json`.
        format: &'static str,
        /// Dotted path (`.` when at the top level).
        field: String,
        /// The decoder's message.
        message: String,
    },
    /// Well-formed but semantically invalid; every violation is listed.
    #[error("invalid manifest: {}", join(.0))]
    Invalid(Vec<FieldError>),
    /// The file is larger than [`MAX_MANIFEST_BYTES`].
    #[error("manifest is {len} bytes; the limit is {MAX_MANIFEST_BYTES}")]
    TooLarge {
        /// Size of the rejected input.
        len: usize,
    },
    /// The file could not be read.
    #[error("cannot read manifest {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file extension is neither `.toml` nor `.json`.
    #[error("manifest {0}: unknown extension; use .toml or .json")]
    UnknownFormat(String),
}

fn join(errs: &[FieldError]) -> String {
    errs.iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

impl ManifestError {
    /// The fields this error names (for tests and API error bodies).
    pub fn fields(&self) -> Vec<String> {
        match self {
            ManifestError::Parse { field, .. } => vec![field.clone()],
            ManifestError::Invalid(v) => v.iter().map(|e| e.field.clone()).collect(),
            _ => Vec::new(),
        }
    }
}

fn path_string(p: &serde_path_to_error::Path) -> String {
    let s = p.to_string();
    if s.is_empty() {
        ".".into()
    } else {
        s
    }
}

impl Manifest {
    /// Parses and validates a TOML manifest.
    pub fn from_toml_str(s: &str) -> Result<Manifest, ManifestError> {
        if s.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge { len: s.len() });
        }
        let de = toml::Deserializer::new(s);
        let m: Manifest = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = path_string(e.path());
            let inner = e.into_inner();
            ManifestError::Parse {
                format: "toml",
                field,
                message: inner.message().trim().to_string(),
            }
        })?;
        m.validate()?;
        Ok(m)
    }

    /// Parses and validates a JSON manifest.
    pub fn from_json_str(s: &str) -> Result<Manifest, ManifestError> {
        if s.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge { len: s.len() });
        }
        let mut de = serde_json::Deserializer::from_str(s);
        let m: Manifest = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let field = path_string(e.path());
            ManifestError::Parse {
                format: "json",
                field,
                message: e.into_inner().to_string(),
            }
        })?;
        de.end().map_err(|e| ManifestError::Parse {
            format: "json",
            field: ".".into(),
            message: e.to_string(),
        })?;
        m.validate()?;
        Ok(m)
    }

    /// Reads a `.toml` or `.json` manifest file, parses and validates it.
    pub fn load(path: impl AsRef<Path>) -> Result<Manifest, ManifestError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| ManifestError::Io {
            path: shown.clone(),
            source,
        })?;
        if meta.len() > MAX_MANIFEST_BYTES as u64 {
            return Err(ManifestError::TooLarge {
                len: meta.len() as usize,
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Io {
            path: shown.clone(),
            source,
        })?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Manifest::from_toml_str(&text),
            Some("json") => Manifest::from_json_str(&text),
            _ => Err(ManifestError::UnknownFormat(shown)),
        }
    }

    /// Serialises to TOML.
    pub fn to_toml_string(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# unserialisable manifest: {e}"))
    }

    /// Serialises to JSON.
    pub fn to_json_string(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Checks every semantic rule and returns all violations at once.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let mut errs = Vec::new();
        let mut bad = |field: &str, reason: String| {
            errs.push(FieldError {
                field: field.to_string(),
                kind: FieldErrorKind::Invalid,
                reason,
            })
        };
        if self.version != MANIFEST_VERSION {
            bad(
                "version",
                format!(
                    "unsupported manifest version {}; this build reads version {MANIFEST_VERSION}",
                    self.version
                ),
            );
        }
        let s = &self.session;
        if let Some(agent) = &s.agent {
            if !is_agent_ref(agent) {
                bad(
                    "session.agent",
                    format!("{agent:?} is not an agent: use a package name (1-64 chars of a-z 0-9 -) optionally pinned with @version (e.g. \"counter@0.1.0\")"),
                );
            }
            // A resolved manifest (from the RC) has handler == agent and the package hash.
            let resolved = s.package.is_some() && s.handler == *agent;
            if !s.handler.is_empty() && !resolved {
                bad(
                    "session.handler",
                    "give either `handler` (compiled in) or `agent` (a pushed package), not both"
                        .into(),
                );
            }
        }
        if let Some(p) = &s.package {
            if s.agent.is_none()
                || p.len() != 64
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                bad(
                    "session.package",
                    "set by the RC: the blake3 hash (64 lowercase hex digits) of the package `agent` resolved to".into(),
                );
            }
        }
        if s.agent.is_none() && !is_ident(&s.handler) {
            bad(
                "session.handler",
                format!(
                    "{:?} is not a handler id: use 1-64 chars of a-z 0-9 _ - (e.g. \"tutor\")",
                    s.handler
                ),
            );
        }
        if s.idle_timeout.0 < std::time::Duration::from_millis(10) {
            bad("session.idle_timeout", "must be at least 10ms".into());
        }
        let p = &self.placement;
        if p.jurisdictions.is_empty() {
            bad(
                "placement.jurisdictions",
                "must list at least one jurisdiction (e.g. [\"DE\"] or [\"EU\"])".into(),
            );
        }
        for (i, j) in p.jurisdictions.iter().enumerate() {
            if !jurisdiction::is_known(j) {
                bad(
                    &format!("placement.jurisdictions[{i}]"),
                    format!("unknown jurisdiction code {j:?}; use ISO 3166-1 alpha-2 (\"DE\") or a zone (\"EU\", \"EEA\")"),
                );
            }
            if p.jurisdictions[..i].contains(j) {
                bad(
                    &format!("placement.jurisdictions[{i}]"),
                    format!("{j:?} is listed twice"),
                );
            }
        }
        if p.memory.0 == 0 {
            bad("placement.memory", "must be > 0".into());
        }
        if let Some(l) = p.latency_ceiling {
            if l.is_zero() {
                bad(
                    "placement.latency_ceiling",
                    "must be > 0 (omit it for no ceiling)".into(),
                );
            }
        }
        for (i, c) in p.capabilities.iter().enumerate() {
            if !is_ident(c) {
                bad(
                    &format!("placement.capabilities[{i}]"),
                    format!("{c:?} is not a capability id: use 1-64 chars of a-z 0-9 _ -"),
                );
            }
        }
        let m = &self.migration;
        match (m.cost, m.max_blackout) {
            (MigrationCost::Cheap | MigrationCost::Costly, None) => bad(
                "migration.max_blackout",
                format!(
                    "required when cost = \"{}\" (e.g. \"50ms\")",
                    cost_name(m.cost)
                ),
            ),
            (MigrationCost::Cheap | MigrationCost::Costly, Some(b)) if b.is_zero() => bad(
                "migration.max_blackout",
                format!("must be > 0 when cost = \"{}\"", cost_name(m.cost)),
            ),
            (MigrationCost::NeverLive, Some(_)) => bad(
                "migration.max_blackout",
                "contradicts cost = \"never-live\": a never-live session has no live handover, remove max_blackout".into(),
            ),
            _ => {}
        }
        if !m.acceptable_loss.is_zero() && m.acceptable_loss.0 < std::time::Duration::from_millis(1)
        {
            bad(
                "migration.acceptable_loss",
                "must be \"0s\" or at least 1ms".into(),
            );
        }
        if m.acceptable_loss.0 > s.expected_duration.0 && !s.expected_duration.is_zero() {
            bad(
                "migration.acceptable_loss",
                format!(
                    "{} exceeds session.expected_duration {}: the whole session could be lost",
                    m.acceptable_loss, s.expected_duration
                ),
            );
        }
        if m.min_copies > MAX_MIN_COPIES {
            bad(
                "migration.min_copies",
                format!(
                    "{} is more than {MAX_MIN_COPIES} copies beyond the holder",
                    m.min_copies
                ),
            );
        }
        let a = &self.agent;
        if !a.is_default() && self.session.agent.is_none() {
            bad(
                "agent",
                "only for a session naming a pushed agent (session.agent)".into(),
            );
        }
        if let Some(m) = a.max_memory {
            if m.0 < (1 << 20) || m.0 > (4 << 30) {
                bad("agent.max_memory", format!("{m} is not in 1MiB..=4GiB"));
            }
        }
        if let Some(d) = a.input_deadline {
            if d.0 < std::time::Duration::from_millis(10)
                || d.0 > std::time::Duration::from_secs(600)
            {
                bad("agent.input_deadline", format!("{d} is not in 10ms..=10m"));
            }
        }
        if self.egress.hosts.len() > 64 {
            bad(
                "egress.hosts",
                format!("{} hosts, at most 64", self.egress.hosts.len()),
            );
        }
        for (i, h) in self.egress.hosts.iter().enumerate() {
            let (host, port) = match h.rsplit_once(':') {
                Some((hh, p)) if p.chars().all(|c| c.is_ascii_digit()) => (hh, Some(p)),
                _ => (h.as_str(), None),
            };
            let host_ok = !host.is_empty()
                && host.len() <= 253
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
            let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
            if !host_ok || !port_ok {
                bad(
                    &format!("egress.hosts[{i}]"),
                    format!("{h:?} is not a host or host:port (no scheme, no path)"),
                );
            }
        }
        let sc = &self.scaling;
        if !(1.0..=100.0).contains(&sc.spike_factor) {
            bad(
                "scaling.spike_factor",
                format!("{} is not in 1..=100", sc.spike_factor),
            );
        }
        if sc.warm_nodes > 1000 {
            bad(
                "scaling.warm_nodes",
                format!("{} is over 1000", sc.warm_nodes),
            );
        }
        errs.extend(self.unsupported());
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ManifestError::Invalid(errs))
        }
    }

    /// Fields that parse but that no part of the runtime acts on yet, set to anything but their
    /// default. Refusing them keeps the manifest honest: a field is either obeyed or refused.
    fn unsupported(&self) -> Vec<FieldError> {
        let mut out = Vec::new();
        let mut refuse = |field: &str, reason: String| {
            out.push(FieldError {
                field: field.to_string(),
                kind: FieldErrorKind::NotSupportedYet,
                reason,
            })
        };
        let s = &self.session;
        if s.continuity != Continuity::Interactive {
            refuse(
                "session.continuity",
                format!(
                    "{:?}: the runtime serves every session turn by turn; use \"interactive\"",
                    continuity_name(s.continuity)
                ),
            );
        }
        if s.expected_duration != default_expected_duration() {
            refuse(
                "session.expected_duration",
                format!(
                    "{} is not used for placement or planning; remove it (default {})",
                    s.expected_duration,
                    default_expected_duration()
                ),
            );
        }
        if s.state_footprint != default_state_footprint() {
            refuse(
                "session.state_footprint",
                format!(
                    "{} is not used for admission (placement.memory is); remove it (default {})",
                    s.state_footprint,
                    default_state_footprint()
                ),
            );
        }
        let sc = &self.scaling;
        if !sc.warm_up.is_zero() {
            refuse(
                "scaling.warm_up",
                format!(
                    "{} is not used for placement; remove it (default 0s)",
                    sc.warm_up
                ),
            );
        }
        let v = &self.verification;
        if v.proof != ProofKind::Receipt {
            refuse(
                "verification.proof",
                format!(
                    "{:?}: every session gets a co-signed receipt and nothing more yet; use \"receipt\"",
                    proof_name(v.proof)
                ),
            );
        }
        if let Some(t) = &v.domain_proof_type {
            refuse(
                "verification.domain_proof_type",
                format!("{t:?}: no domain proof is produced yet; remove it"),
            );
        }
        out
    }

    /// The checkpoint policy this manifest implies.
    pub fn checkpoint_policy(&self) -> CheckpointPolicy {
        CheckpointPolicy::from_manifest(self)
    }
}

fn continuity_name(c: Continuity) -> &'static str {
    match c {
        Continuity::Stream => "stream",
        Continuity::Interactive => "interactive",
        Continuity::Batch => "batch",
    }
}

fn proof_name(p: ProofKind) -> &'static str {
    match p {
        ProofKind::Receipt => "receipt",
        ProofKind::Transcript => "transcript",
        ProofKind::Domain => "domain",
    }
}

fn cost_name(c: MigrationCost) -> &'static str {
    match c {
        MigrationCost::Cheap => "cheap",
        MigrationCost::Costly => "costly",
        MigrationCost::NeverLive => "never-live",
    }
}

/// Whether `s` names an agent package: `name` or `name@version` (name: 1-64 chars of a-z 0-9 -;
/// version: 1-64 chars of a-z 0-9 . + -).
pub fn is_agent_ref(s: &str) -> bool {
    let (name, version) = match s.split_once('@') {
        Some((n, v)) => (n, Some(v)),
        None => (s, None),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let version_ok = version.is_none_or(|v| {
        !v.is_empty()
            && v.len() <= 64
            && v.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
    });
    name_ok && version_ok
}

/// Lowercase identifier: 1-64 chars of `a-z 0-9 _ -`.
pub fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const GOOD: &str = r#"
version = 1
[session]
handler = "tutor"
continuity = "interactive"
idle_timeout = "2m"
[placement]
jurisdictions = ["DE", "FR"]
accelerator = "none"
memory = "256MiB"
latency_ceiling = "80ms"
capabilities = ["tutor"]
[migration]
cost = "cheap"
acceptable_loss = "0s"
max_blackout = "50ms"
[scaling]
spike_factor = 1.0
warm_up = "0s"
[verification]
proof = "receipt"
"#;

    #[test]
    fn agent_limits_and_egress_are_checked() {
        let agent = GOOD.replace("handler = \"tutor\"", "agent = \"counter\"");
        let ok = format!("{agent}\n[agent]\nmax_memory = \"32MiB\"\ninput_deadline = \"500ms\"\n[egress]\nhosts = [\"api.example.com\", \"127.0.0.1:8080\"]\n");
        let m = Manifest::from_toml_str(&ok).unwrap();
        assert_eq!(m.agent.max_memory, Some(ByteSize(32 << 20)));
        assert!(m.egress.allows("api.example.com", 443));
        assert!(m.egress.allows("127.0.0.1", 8080));
        assert!(!m.egress.allows("127.0.0.1", 8081));
        assert!(!m.egress.allows("evil.example.com", 443));
        // Round trip through JSON (what the RC sends nodes).
        let back = Manifest::from_json_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
        for (field, text) in [
            (
                "agent",
                format!("{GOOD}\n[agent]\ninput_deadline = \"1s\"\n"),
            ),
            (
                "agent.max_memory",
                format!("{agent}\n[agent]\nmax_memory = \"5GiB\"\n"),
            ),
            (
                "agent.input_deadline",
                format!("{agent}\n[agent]\ninput_deadline = \"1ms\"\n"),
            ),
            (
                "egress.hosts[0]",
                format!("{GOOD}\n[egress]\nhosts = [\"http://x.com/path\"]\n"),
            ),
            (
                "egress.hosts[1]",
                format!("{GOOD}\n[egress]\nhosts = [\"ok.com\", \"a.com:99999\"]\n"),
            ),
        ] {
            let e = Manifest::from_toml_str(&text).unwrap_err();
            assert!(e.fields().contains(&field.to_string()), "{field}: {e}");
        }
    }

    #[test]
    fn good_manifest_parses() {
        let m = Manifest::from_toml_str(GOOD).unwrap();
        assert_eq!(m.session.handler, "tutor");
        assert_eq!(m.placement.memory, ByteSize(256 << 20));
        assert_eq!(
            m.migration.min_copies, 1,
            "one copy beyond the holder by default"
        );
        let none = Manifest::from_toml_str(&GOOD.replace(
            "max_blackout = \"50ms\"",
            "max_blackout = \"50ms\"\nmin_copies = 0",
        ))
        .unwrap();
        assert_eq!(none.migration.min_copies, 0);
        let j = m.to_json_string();
        assert_eq!(Manifest::from_json_str(&j).unwrap(), m);
        assert_eq!(Manifest::from_toml_str(&m.to_toml_string()).unwrap(), m);
    }

    /// Each bad manifest must be refused with an error naming the expected field.
    #[test]
    fn bad_manifests_name_the_field() {
        let cases: Vec<(&str, String)> = vec![
            (
                "session.colour",
                GOOD.replace(
                    "continuity = \"interactive\"",
                    "continuity = \"interactive\"\ncolour = \"red\"",
                ),
            ),
            (
                "session.continuity",
                GOOD.replace("\"interactive\"", "\"telepathic\""),
            ),
            (
                "session.expected_duration",
                GOOD.replace("idle_timeout", "expected_duration = \"-5m\"\nidle_timeout"),
            ),
            ("session.idle_timeout", GOOD.replace("\"2m\"", "\"soon\"")),
            (
                "session.state_footprint",
                GOOD.replace(
                    "idle_timeout",
                    "state_footprint = \"64 parsecs\"\nidle_timeout",
                ),
            ),
            (
                "migration.max_blackout",
                GOOD.replace("max_blackout = \"50ms\"", "max_blackout = \"0s\""),
            ),
            (
                "migration.max_blackout",
                GOOD.replace("cost = \"cheap\"", "cost = \"never-live\""),
            ),
            (
                "migration.max_blackout",
                GOOD.replace("max_blackout = \"50ms\"", ""),
            ),
            (
                "placement.jurisdictions[1]",
                GOOD.replace("\"FR\"", "\"XX\""),
            ),
            (
                "migration.min_copies",
                GOOD.replace(
                    "max_blackout = \"50ms\"",
                    "max_blackout = \"50ms\"\nmin_copies = 17",
                ),
            ),
            (
                "migration.min_copies",
                GOOD.replace(
                    "max_blackout = \"50ms\"",
                    "max_blackout = \"50ms\"\nmin_copies = -1",
                ),
            ),
            (
                "placement.jurisdictions",
                GOOD.replace("[\"DE\", \"FR\"]", "[]"),
            ),
            ("placement.memory", GOOD.replace("\"256MiB\"", "true")),
            (
                "placement.latency_ceiling",
                GOOD.replace("\"80ms\"", "\"0s\""),
            ),
            ("placement.latency_ceiling", GOOD.replace("\"80ms\"", "80")),
            (
                "placement.capabilities[0]",
                GOOD.replace("[\"tutor\"]", "[\"Tutor Bot\"]"),
            ),
            (
                "placement.accelerator",
                GOOD.replace("accelerator = \"none\"", "accelerator = \"quantum\""),
            ),
            ("version", GOOD.replace("version = 1", "version = 7")),
            ("version", GOOD.replace("version = 1", "version = \"one\"")),
            (
                "session.handler",
                GOOD.replace("handler = \"tutor\"", "handler = \"\""),
            ),
            (
                "migration.acceptable_loss",
                GOOD.replace("acceptable_loss = \"0s\"", "acceptable_loss = \"2h\""),
            ),
            ("migration", GOOD.replace("[migration]", "[migrashun]")),
        ];
        assert!(cases.len() >= 10);
        for (field, text) in cases {
            let err = Manifest::from_toml_str(&text).expect_err(field);
            let msg = err.to_string();
            assert!(
                msg.contains(field),
                "expected error naming {field:?}, got: {msg}"
            );
        }
    }

    /// A session may name a pushed agent instead of a handler (ADR 0030); the RC's resolved form
    /// (handler = agent = name@version, package = hash) round-trips; mixes and bad refs are
    /// refused naming the field.
    #[test]
    fn sessions_name_an_agent_or_a_handler() {
        let agent = GOOD.replace("handler = \"tutor\"", "agent = \"counter\"");
        let m = Manifest::from_toml_str(&agent).unwrap();
        assert_eq!(m.session.agent.as_deref(), Some("counter"));
        assert_eq!(m.session.handler, "");
        let pinned = GOOD.replace("handler = \"tutor\"", "agent = \"counter@0.1.0-rc.1\"");
        assert!(Manifest::from_toml_str(&pinned).is_ok());
        let mut resolved = m.clone();
        resolved.session.handler = "counter@0.1.0".into();
        resolved.session.agent = Some("counter@0.1.0".into());
        resolved.session.package = Some("ab".repeat(32));
        let back = Manifest::from_json_str(&resolved.to_json_string()).unwrap();
        assert_eq!(back, resolved);
        let bad = [
            (
                "session.handler",
                GOOD.replace(
                    "handler = \"tutor\"",
                    "handler = \"tutor\"\nagent = \"counter\"",
                ),
            ),
            (
                "session.agent",
                GOOD.replace("handler = \"tutor\"", "agent = \"Counter\""),
            ),
            (
                "session.agent",
                GOOD.replace("handler = \"tutor\"", "agent = \"counter@\""),
            ),
            (
                "session.package",
                GOOD.replace(
                    "handler = \"tutor\"",
                    "agent = \"counter\"\npackage = \"xyz\"",
                ),
            ),
            (
                "session.package",
                GOOD.replace(
                    "handler = \"tutor\"",
                    "handler = \"tutor\"\npackage = \"{}\"",
                )
                .replace("{}", &"ab".repeat(32)),
            ),
            ("session.handler", GOOD.replace("handler = \"tutor\"", "")),
        ];
        for (field, text) in bad {
            let Err(ManifestError::Invalid(errs)) = Manifest::from_toml_str(&text) else {
                panic!("{field}: expected a validation error for {text}");
            };
            assert!(
                errs.iter().any(|e| e.field == field),
                "{field}: got {errs:?}"
            );
        }
    }

    /// Fields nothing acts on yet parse, accept their default, and refuse any other value with a
    /// `NotSupportedYet` error naming the field.
    #[test]
    fn fields_nothing_obeys_refuse_non_default_values() {
        let cases: Vec<(&str, String)> = vec![
            (
                "session.continuity",
                GOOD.replace("\"interactive\"", "\"stream\""),
            ),
            (
                "session.continuity",
                GOOD.replace("\"interactive\"", "\"batch\""),
            ),
            (
                "session.expected_duration",
                GOOD.replace("idle_timeout", "expected_duration = \"45m\"\nidle_timeout"),
            ),
            (
                "session.state_footprint",
                GOOD.replace("idle_timeout", "state_footprint = \"1MiB\"\nidle_timeout"),
            ),
            (
                "scaling.warm_up",
                GOOD.replace("warm_up = \"0s\"", "warm_up = \"2s\""),
            ),
            (
                "verification.proof",
                GOOD.replace("\"receipt\"", "\"transcript\""),
            ),
            (
                "verification.domain_proof_type",
                GOOD.replace(
                    "proof = \"receipt\"",
                    "proof = \"receipt\"\ndomain_proof_type = \"mycel.mip.v1\"",
                ),
            ),
        ];
        for (field, text) in cases {
            let Err(ManifestError::Invalid(errs)) = Manifest::from_toml_str(&text) else {
                panic!("{field}: expected a validation error");
            };
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert_eq!(errs[0].field, field);
            assert_eq!(errs[0].kind, FieldErrorKind::NotSupportedYet);
            assert!(
                errs[0].to_string().contains("not supported yet"),
                "{}",
                errs[0]
            );
        }
        // The defaults, written out, still load.
        let defaults = GOOD.replace(
            "idle_timeout",
            "expected_duration = \"30m\"\nstate_footprint = \"64KiB\"\nidle_timeout",
        );
        Manifest::from_toml_str(&defaults).unwrap();
    }

    #[test]
    fn json_errors_name_the_field() {
        let m = Manifest::from_toml_str(GOOD).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&m.to_json_string()).unwrap();
        v["migration"]["max_blackout"] = serde_json::json!("-1s");
        let e = Manifest::from_json_str(&v.to_string()).unwrap_err();
        assert!(e.to_string().contains("migration.max_blackout"), "{e}");
        assert!(e.to_string().contains("negative"), "{e}");
        let e = Manifest::from_json_str("{\"version\":1} trailing").unwrap_err();
        assert!(matches!(e, ManifestError::Parse { .. }));
    }

    #[test]
    fn all_violations_are_reported() {
        let text = GOOD
            .replace("\"FR\"", "\"XX\"")
            .replace("spike_factor = 1.0", "spike_factor = 0.1")
            .replace("max_blackout = \"50ms\"", "max_blackout = \"0ms\"");
        let e = Manifest::from_toml_str(&text).unwrap_err();
        let fields = e.fields();
        assert_eq!(
            fields,
            vec![
                "placement.jurisdictions[1]",
                "migration.max_blackout",
                "scaling.spike_factor"
            ]
        );
    }

    #[test]
    fn oversized_manifest_refused() {
        let big = format!("{GOOD}\n#{}", "x".repeat(MAX_MANIFEST_BYTES));
        assert!(matches!(
            Manifest::from_toml_str(&big),
            Err(ManifestError::TooLarge { .. })
        ));
    }

    #[test]
    fn load_by_extension() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.toml");
        std::fs::write(&p, GOOD).unwrap();
        assert!(Manifest::load(&p).is_ok());
        let p2 = dir.path().join("m.yaml");
        std::fs::write(&p2, GOOD).unwrap();
        assert!(matches!(
            Manifest::load(&p2),
            Err(ManifestError::UnknownFormat(_))
        ));
        assert!(matches!(
            Manifest::load(dir.path().join("missing.toml")),
            Err(ManifestError::Io { .. })
        ));
    }
}

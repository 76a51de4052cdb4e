//! Versioned TOML configuration of a node ([`NodeConfig`]) and of a routing coordinator
//! ([`RcConfig`]).
//!
//! - Unknown fields are refused (`deny_unknown_fields`), so a typo never silently falls back to
//!   a default.
//! - Every field, nested ones included, can be overridden from the environment as
//!   `OPENGRID_<PATH>` with dots turned into underscores, e.g. `OPENGRID_JURISDICTION=FR`,
//!   `OPENGRID_HARDWARE_CPU_CORES=8`, `OPENGRID_HEARTBEAT_PERIOD=200ms`. The value is read as a
//!   TOML value when it parses as one (numbers, booleans, arrays) and as a string otherwise.
//! - Defaults run on one laptop: 127.0.0.1 addresses, a data dir under the system temp dir.
//! - [`NodeConfig::validate`] / [`RcConfig::validate`] name the bad field and the reason.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use opengrid_session::{jurisdiction, AcceleratorClass, ByteSize, HumanDuration};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The config format version this build reads.
pub const CONFIG_VERSION: u32 = 1;
/// Largest config file accepted.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Default RC client-API address.
pub const DEFAULT_RC_API: &str = "127.0.0.1:7600";
/// Default RC control-plane (ractor_cluster) address.
pub const DEFAULT_RC_CLUSTER: &str = "127.0.0.1:7601";

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// The file is too large.
    #[error("config {path} is {len} bytes; the limit is {MAX_CONFIG_BYTES}")]
    TooLarge {
        /// Path.
        path: PathBuf,
        /// Size.
        len: u64,
    },
    /// Not valid TOML, an unknown field, or a wrong type.
    #[error("config parse error: {0}")]
    Parse(String),
    /// A field value is out of range.
    #[error("config field `{field}`: {reason}")]
    Invalid {
        /// Dotted field path.
        field: String,
        /// What is wrong and what would be right.
        reason: String,
    },
}

fn invalid(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Hardware a node offers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hardware {
    /// CPU cores offered to sessions.
    pub cpu_cores: u32,
    /// Memory offered to sessions.
    pub memory: ByteSize,
    /// Accelerator class.
    pub accelerator: AcceleratorClass,
}

impl Default for Hardware {
    fn default() -> Self {
        Hardware {
            cpu_cores: 2,
            memory: ByteSize(4 << 30),
            accelerator: AcceleratorClass::None,
        }
    }
}

/// Configuration of a node (`opengrid node --config node.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Must be [`CONFIG_VERSION`].
    pub version: u32,
    /// Human-readable node name (logs, status).
    pub name: String,
    /// Colony to join (must match the RC's `colony`).
    pub colony: String,
    /// Where the identity key and checkpoints live.
    pub data_dir: PathBuf,
    /// Where the node is, legally (ISO 3166-1 alpha-2, e.g. `DE`).
    pub jurisdiction: String,
    /// Hardware offered.
    pub hardware: Hardware,
    /// Handler ids served; empty = every handler registered in the binary.
    pub handlers: Vec<String>,
    /// Extra capabilities offered (matched against `placement.capabilities`).
    pub capabilities: Vec<String>,
    /// Price in micro-units per processed input.
    pub price_micros_per_input: u64,
    /// Most sessions hosted at once.
    pub capacity: u32,
    /// Client API (HTTP/WebSocket) listen address; port 0 picks a free one.
    pub api_listen: SocketAddr,
    /// Control-plane (ractor_cluster) listen address of this node; port 0 picks a free one.
    pub cluster_listen: SocketAddr,
    /// The RC's control-plane address.
    pub rc_cluster: String,
    /// The colony secret (ractor_cluster cookie). Keep it out of the file: `OPENGRID_COLONY_SECRET`.
    pub colony_secret: String,
    /// Heartbeat period to the RC.
    pub heartbeat_period: HumanDuration,
    /// Lease length asked of the RC; the node stops serving when its lease runs out.
    pub lease: HumanDuration,
    /// Worker threads of the control-plane runtime.
    pub control_threads: usize,
    /// Worker threads of the handler (inference-plane) runtime.
    pub handler_threads: usize,
    /// Inputs queued per session before 429.
    pub session_queue: usize,
    /// Largest request body accepted by the client API.
    pub max_body: ByteSize,
    /// Sync (fsync) checkpoint writes.
    pub fsync: bool,
    /// Migration server (checkpoint replicas, handover target, X2 forwarding) listen address;
    /// port 0 picks a free one.
    pub migration_listen: SocketAddr,
    /// How long `opengrid drain` / SIGTERM may take to hand every session off before the node
    /// exits anyway (sessions left are checkpointed and fail over).
    pub drain_timeout: HumanDuration,
    /// Handovers run at once while draining.
    pub handover_parallelism: usize,
    /// The inference plane (`[inference]`, see [`crate::inference`]); absent = none.
    pub inference: crate::inference::InferenceConfig,
    /// Compute receipts (`[receipts]`, see [`crate::receipts`]).
    pub receipts: crate::receipts::ReceiptSection,
    /// Fault hooks (`[faults]`, see [`crate::faults`]): a test and chaos-harness hook, off by
    /// default; never set in production.
    pub faults: crate::faults::FaultSection,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            version: CONFIG_VERSION,
            name: "node".into(),
            colony: "local".into(),
            data_dir: std::env::temp_dir().join("opengrid-node"),
            jurisdiction: "DE".into(),
            hardware: Hardware::default(),
            handlers: Vec::new(),
            capabilities: Vec::new(),
            price_micros_per_input: 10,
            capacity: 1000,
            api_listen: "127.0.0.1:7700".parse().expect("literal"),
            cluster_listen: "127.0.0.1:0".parse().expect("literal"),
            rc_cluster: DEFAULT_RC_CLUSTER.into(),
            colony_secret: "opengrid-local-colony".into(),
            heartbeat_period: HumanDuration::from_millis(100),
            lease: HumanDuration::from_secs(1),
            control_threads: 1,
            handler_threads: 2,
            session_queue: 1024,
            max_body: ByteSize(1 << 20),
            fsync: true,
            migration_listen: "127.0.0.1:0".parse().expect("literal"),
            drain_timeout: HumanDuration::from_secs(60),
            handover_parallelism: 8,
            inference: crate::inference::InferenceConfig::default(),
            receipts: crate::receipts::ReceiptSection::default(),
            faults: crate::faults::FaultSection::default(),
        }
    }
}

/// Configuration of a routing coordinator (`opengrid rc --config rc.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RcConfig {
    /// Must be [`CONFIG_VERSION`].
    pub version: u32,
    /// Colony name.
    pub colony: String,
    /// Where the identity key lives.
    pub data_dir: PathBuf,
    /// Client API listen address.
    pub api_listen: SocketAddr,
    /// Control-plane (ractor_cluster `NodeServer`) listen address.
    pub cluster_listen: SocketAddr,
    /// The colony secret (ractor_cluster cookie). `OPENGRID_COLONY_SECRET`.
    pub colony_secret: String,
    /// Expected heartbeat period of nodes (seeds the failure detector).
    pub heartbeat_period: HumanDuration,
    /// Lease granted per heartbeat.
    pub lease: HumanDuration,
    /// The RC re-places a silent node's sessions only after `lease × lease_grace` since the
    /// node's last heartbeat.
    pub lease_grace: f64,
    /// Phi-accrual threshold above which a node is declared dead.
    pub phi_threshold: f64,
    /// Floor of the standard deviation used by the detector.
    pub phi_min_std: HumanDuration,
    /// Heartbeat pause absorbed before phi starts rising (GC pauses, scheduling).
    pub acceptable_pause: HumanDuration,
    /// Worker threads of the control-plane runtime.
    pub control_threads: usize,
    /// How long a placement order may take on the node.
    pub place_timeout: HumanDuration,
    /// Largest request body accepted by the client API.
    pub max_body: ByteSize,
    /// Accepted clock skew of signed join requests.
    pub join_max_skew: HumanDuration,
    /// Checkpoint replicas per session (k), chosen among nodes the manifest allows.
    pub replicas: usize,
    /// Sessions restored at once after a node is declared dead.
    pub failover_parallelism: usize,
    /// Canopy and federation (`[canopy]`, see [`crate::federation::CanopySection`]); off by default.
    pub canopy: crate::federation::CanopySection,
    /// Settlement (`[settlement]`, see [`crate::receipts`]): ledger replicas and interval.
    pub settlement: crate::receipts::SettlementSection,
}

impl Default for RcConfig {
    fn default() -> Self {
        RcConfig {
            version: CONFIG_VERSION,
            colony: "local".into(),
            data_dir: std::env::temp_dir().join("opengrid-rc"),
            api_listen: DEFAULT_RC_API.parse().expect("literal"),
            cluster_listen: DEFAULT_RC_CLUSTER.parse().expect("literal"),
            colony_secret: "opengrid-local-colony".into(),
            heartbeat_period: HumanDuration::from_millis(100),
            lease: HumanDuration::from_secs(1),
            lease_grace: 1.5,
            phi_threshold: 8.0,
            phi_min_std: HumanDuration::from_millis(50),
            acceptable_pause: HumanDuration::from_millis(100),
            control_threads: 1,
            place_timeout: HumanDuration::from_secs(5),
            max_body: ByteSize(1 << 20),
            join_max_skew: HumanDuration::from_secs(60),
            replicas: 2,
            failover_parallelism: 64,
            canopy: crate::federation::CanopySection::default(),
            settlement: crate::receipts::SettlementSection::default(),
        }
    }
}

impl NodeConfig {
    /// Reads a TOML file (if given), applies `OPENGRID_*` overrides, validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let c: NodeConfig = load_with_env(path, &NodeConfig::default(), &env_map())?;
        c.validate()?;
        Ok(c)
    }

    /// Parses TOML text with the given environment overrides, validates.
    pub fn from_toml_with_env(text: &str, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let c: NodeConfig = parse_with_env(text, &NodeConfig::default(), env)?;
        c.validate()?;
        Ok(c)
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_version(self.version)?;
        if !opengrid_session::manifest::is_ident(&self.colony) {
            return Err(invalid("colony", "must be an identifier"));
        }
        if !jurisdiction::is_known(&self.jurisdiction) {
            return Err(invalid(
                "jurisdiction",
                format!(
                    "{:?} is not a known ISO 3166-1 alpha-2 code or zone",
                    self.jurisdiction
                ),
            ));
        }
        if self.hardware.cpu_cores == 0 {
            return Err(invalid("hardware.cpu_cores", "must be at least 1"));
        }
        if self.hardware.memory.0 == 0 {
            return Err(invalid("hardware.memory", "must be more than 0"));
        }
        if self.capacity == 0 {
            return Err(invalid("capacity", "must be at least 1 session"));
        }
        for (i, h) in self.handlers.iter().enumerate() {
            if !opengrid_session::manifest::is_ident(h) {
                return Err(invalid(
                    &format!("handlers[{i}]"),
                    format!("{h:?} is not an identifier"),
                ));
            }
        }
        check_secret(&self.colony_secret)?;
        check_period("heartbeat_period", self.heartbeat_period.0)?;
        if self.lease.0 < self.heartbeat_period.0 * 3 {
            return Err(invalid(
                "lease",
                format!(
                    "{:?} must be at least 3 heartbeat periods ({:?})",
                    self.lease.0,
                    self.heartbeat_period.0 * 3
                ),
            ));
        }
        if self.control_threads == 0 || self.control_threads > 64 {
            return Err(invalid("control_threads", "must be 1..=64"));
        }
        if self.handler_threads == 0 || self.handler_threads > 1024 {
            return Err(invalid("handler_threads", "must be 1..=1024"));
        }
        if self.session_queue == 0 {
            return Err(invalid("session_queue", "must be at least 1"));
        }
        if self.max_body.0 < 1024 {
            return Err(invalid("max_body", "must be at least 1KiB"));
        }
        if self.rc_cluster.trim().is_empty() {
            return Err(invalid("rc_cluster", "must be host:port of the RC"));
        }
        if self.handover_parallelism == 0 || self.handover_parallelism > 256 {
            return Err(invalid("handover_parallelism", "must be 1..=256"));
        }
        if self.drain_timeout.0 < Duration::from_millis(100) {
            return Err(invalid("drain_timeout", "must be at least 100ms"));
        }
        self.inference.validate()?;
        Ok(())
    }
}

impl RcConfig {
    /// Reads a TOML file (if given), applies `OPENGRID_*` overrides, validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let c: RcConfig = load_with_env(path, &RcConfig::default(), &env_map())?;
        c.validate()?;
        Ok(c)
    }

    /// Parses TOML text with the given environment overrides, validates.
    pub fn from_toml_with_env(text: &str, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let c: RcConfig = parse_with_env(text, &RcConfig::default(), env)?;
        c.validate()?;
        Ok(c)
    }

    /// Longest time after a node's last heartbeat before the RC may place its sessions elsewhere.
    pub fn replace_after(&self) -> Duration {
        self.lease.0.mul_f64(self.lease_grace)
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_version(self.version)?;
        if !opengrid_session::manifest::is_ident(&self.colony) {
            return Err(invalid("colony", "must be an identifier"));
        }
        check_secret(&self.colony_secret)?;
        check_period("heartbeat_period", self.heartbeat_period.0)?;
        if self.lease.0 < self.heartbeat_period.0 * 3 {
            return Err(invalid("lease", "must be at least 3 heartbeat periods"));
        }
        if !(self.lease_grace.is_finite() && self.lease_grace >= 1.1 && self.lease_grace <= 10.0) {
            return Err(invalid(
                "lease_grace",
                format!(
                    "{} must be in 1.1..=10 (safety margin over the node's lease)",
                    self.lease_grace
                ),
            ));
        }
        if !(self.phi_threshold.is_finite()
            && self.phi_threshold >= 1.0
            && self.phi_threshold <= 30.0)
        {
            return Err(invalid("phi_threshold", "must be in 1..=30"));
        }
        if self.phi_min_std.0.is_zero() {
            return Err(invalid("phi_min_std", "must be more than 0"));
        }
        if self.control_threads == 0 || self.control_threads > 64 {
            return Err(invalid("control_threads", "must be 1..=64"));
        }
        if self.place_timeout.0 < Duration::from_millis(10) {
            return Err(invalid("place_timeout", "must be at least 10ms"));
        }
        if self.max_body.0 < 1024 {
            return Err(invalid("max_body", "must be at least 1KiB"));
        }
        if self.replicas > 16 {
            return Err(invalid("replicas", "must be 0..=16"));
        }
        if self.failover_parallelism == 0 || self.failover_parallelism > 4096 {
            return Err(invalid("failover_parallelism", "must be 1..=4096"));
        }
        self.canopy.validate()?;
        self.settlement
            .validate()
            .map_err(|(field, reason)| invalid(field, reason))?;
        Ok(())
    }
}

fn check_version(v: u32) -> Result<(), ConfigError> {
    if v != CONFIG_VERSION {
        return Err(invalid(
            "version",
            format!("{v} is not supported; this build reads version {CONFIG_VERSION}"),
        ));
    }
    Ok(())
}

fn check_secret(s: &str) -> Result<(), ConfigError> {
    if s.len() < 8 || s.len() > 256 {
        return Err(invalid("colony_secret", "must be 8..=256 bytes"));
    }
    Ok(())
}

fn check_period(field: &str, d: Duration) -> Result<(), ConfigError> {
    if d < Duration::from_millis(5) || d > Duration::from_secs(60) {
        return Err(invalid(field, format!("{d:?} must be in 5ms..=60s")));
    }
    Ok(())
}

fn env_map() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("OPENGRID_"))
        .collect()
}

fn load_with_env<T: Serialize + DeserializeOwned>(
    path: Option<&Path>,
    defaults: &T,
    env: &[(String, String)],
) -> Result<T, ConfigError> {
    let text = match path {
        None => String::new(),
        Some(p) => {
            let io = |source| ConfigError::Io {
                path: p.to_path_buf(),
                source,
            };
            let len = std::fs::metadata(p).map_err(io)?.len();
            if len > MAX_CONFIG_BYTES {
                return Err(ConfigError::TooLarge {
                    path: p.to_path_buf(),
                    len,
                });
            }
            std::fs::read_to_string(p).map_err(io)?
        }
    };
    parse_with_env(&text, defaults, env)
}

/// Parses `text`, overlays `OPENGRID_<PATH>` variables for every field of `defaults`.
fn parse_with_env<T: Serialize + DeserializeOwned>(
    text: &str,
    defaults: &T,
    env: &[(String, String)],
) -> Result<T, ConfigError> {
    let mut table: toml::Table =
        toml::from_str(text).map_err(|e| ConfigError::Parse(e.message().to_string()))?;
    let shape = toml::Table::try_from(defaults).map_err(|e| ConfigError::Parse(e.to_string()))?;
    let mut paths = Vec::new();
    leaf_paths(&shape, String::new(), &mut paths);
    for path in paths {
        let var = format!("OPENGRID_{}", path.replace('.', "_").to_ascii_uppercase());
        if let Some((_, raw)) = env.iter().find(|(k, _)| *k == var) {
            let value = parse_env_value(raw);
            set_path(&mut table, &path, value);
        }
    }
    T::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Parse(e.to_string()))
}

fn parse_env_value(raw: &str) -> toml::Value {
    let probe = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&probe) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

fn leaf_paths(t: &toml::Table, prefix: String, out: &mut Vec<String>) {
    for (k, v) in t {
        let p = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(inner) => leaf_paths(inner, p, out),
            _ => out.push(p),
        }
    }
}

fn set_path(t: &mut toml::Table, path: &str, v: toml::Value) {
    let mut parts = path.split('.').peekable();
    let mut cur = t;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            cur.insert(part.to_string(), v);
            return;
        }
        let entry = cur
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        match entry {
            toml::Value::Table(inner) => cur = inner,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        NodeConfig::default().validate().unwrap();
        RcConfig::default().validate().unwrap();
        let n = NodeConfig::from_toml_with_env("", &[]).unwrap();
        assert_eq!(n, NodeConfig::default());
    }

    #[test]
    fn unknown_field_refused() {
        let e = NodeConfig::from_toml_with_env("jurisdicton = \"DE\"", &[]).unwrap_err();
        assert!(e.to_string().contains("jurisdicton"), "{e}");
    }

    #[test]
    fn env_overrides_nested_fields() {
        let env = vec![
            ("OPENGRID_JURISDICTION".to_string(), "FR".to_string()),
            ("OPENGRID_HARDWARE_CPU_CORES".to_string(), "8".to_string()),
            ("OPENGRID_HEARTBEAT_PERIOD".to_string(), "50ms".to_string()),
            ("OPENGRID_HANDLERS".to_string(), "[\"tutor\"]".to_string()),
        ];
        let c =
            NodeConfig::from_toml_with_env("jurisdiction = \"DE\"\ncapacity = 7", &env).unwrap();
        assert_eq!(c.jurisdiction, "FR");
        assert_eq!(c.hardware.cpu_cores, 8);
        assert_eq!(c.heartbeat_period.0, Duration::from_millis(50));
        assert_eq!(c.handlers, vec!["tutor".to_string()]);
        assert_eq!(c.capacity, 7);
    }

    #[test]
    fn validate_names_the_field() {
        for (toml, field) in [
            ("version = 2", "version"),
            ("jurisdiction = \"XX\"", "jurisdiction"),
            ("capacity = 0", "capacity"),
            ("colony_secret = \"short\"", "colony_secret"),
            ("lease = \"100ms\"", "lease"),
            ("[hardware]\ncpu_cores = 0", "hardware.cpu_cores"),
        ] {
            match NodeConfig::from_toml_with_env(toml, &[]) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{toml}"),
                other => panic!("{toml}: {other:?}"),
            }
        }
        match RcConfig::from_toml_with_env("phi_threshold = 0.5", &[]) {
            Err(ConfigError::Invalid { field, .. }) => assert_eq!(field, "phi_threshold"),
            other => panic!("{other:?}"),
        }
    }
}

//! Versioned TOML configuration of a node (`opengrid node --config node.toml`); the shared rules
//! (unknown fields refused, `OPENGRID_*` overrides, field-naming validation) are in
//! [`crate::common::config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use opengrid_session::{jurisdiction, AcceleratorClass, ByteSize, HumanDuration};
use serde::{Deserialize, Serialize};

use crate::common::config::{
    check_period, check_secret, check_version, env_map, invalid, load_with_env, parse_with_env,
    ConfigError, ConfigShape, CONFIG_VERSION, DEFAULT_RC_CLUSTER,
};

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

/// How the `node` config appears to the environment overrides.
const SHAPE: ConfigShape = ConfigShape {
    name: "node",
    optional: &[],
};

/// Configuration of a node (`opengrid node --config node.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Must be [`CONFIG_VERSION`].
    pub version: u32,
    /// Development mode (default off): the only way to run with the public development colony
    /// secret (used when `colony_secret` is empty) and the `[faults]` test hooks. Never in production.
    pub dev: bool,
    /// Benchmarks only (default off; needs `dev = true`): security off, so that a bench can
    /// measure its cost against the same build in the same run. Migration links in plain TCP
    /// with claimed DIDs, RC grants not checked, the client API open to anyone (no tokens).
    pub security_off_for_measurement: bool,
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
    /// The largest share (0..=1) of this node's memory one session may reserve, so that one
    /// manifest cannot take the whole node.
    pub max_session_share: f64,
    /// Client API (HTTP/WebSocket) listen address; port 0 picks a free one.
    pub api_listen: SocketAddr,
    /// Control-plane (ractor_cluster) listen address of this node; port 0 picks a free one.
    pub cluster_listen: SocketAddr,
    /// The RC's control-plane address; for an RC group (ADR 0037), every replica's, comma
    /// separated (`host:port,host:port,host:port`): the node keeps a link with each and follows
    /// whichever leads.
    pub rc_cluster: String,
    /// The RC's identity (`did:mycel:…`, `opengrid id --data-dir <rc data dir>`): the node
    /// accepts join acks only from it; for an RC group, every replica's, comma separated.
    /// Empty: the first RC whose signed ack answers a join.
    pub rc_id: String,
    /// The colony secret (ractor_cluster cookie). Keep it out of the file: `OPENGRID_COLONY_SECRET`.
    pub colony_secret: String,
    /// Operator keys (DIDs) besides the node's own and its RC's: their tokens (`opengrid token
    /// operator`) open the node's session list, drain, handover and every session (ADR 0026).
    pub operators: Vec<String>,
    /// A join token from the colony operator (`opengrid token join`), for a colony that admits
    /// by token. Keep it out of the file: `OPENGRID_JOIN_TOKEN`.
    pub join_token: String,
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
    /// Open client-API connections at most; more are closed as they arrive.
    pub max_connections: usize,
    /// A client-API request head (or, on an idle connection, its first byte) must arrive within
    /// this; slower or idle connections are closed.
    pub header_timeout: HumanDuration,
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
    /// The inference plane (`[inference]`, see [`crate::node::inference`]); absent = none.
    pub inference: crate::node::inference::InferenceConfig,
    /// Pushed agent packages (ADR 0030): `[agents]`.
    pub agents: crate::node::agents::AgentsSection,
    /// Compute receipts (`[receipts]`, see [`crate::node::receipts`]).
    pub receipts: crate::node::receipts::ReceiptSection,
    /// Fault hooks (`[faults]`, see [`crate::node::faults`]): a test and chaos-harness hook, off by
    /// default; never set in production.
    pub faults: crate::node::faults::FaultSection,
}

/// The entries of a comma-separated config list (blanks dropped).
pub(crate) fn list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|p| !p.is_empty())
}

impl NodeConfig {
    /// The RC group's control-plane addresses (`rc_cluster`, one or several).
    pub fn rc_addresses(&self) -> Vec<String> {
        list(&self.rc_cluster).map(str::to_string).collect()
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            version: CONFIG_VERSION,
            dev: false,
            security_off_for_measurement: false,
            name: "node".into(),
            colony: "local".into(),
            data_dir: crate::common::config::default_data_dir("node"),
            jurisdiction: "DE".into(),
            hardware: Hardware::default(),
            handlers: Vec::new(),
            capabilities: Vec::new(),
            price_micros_per_input: 10,
            capacity: 1000,
            max_session_share: 0.5,
            api_listen: "127.0.0.1:7700".parse().expect("literal"),
            cluster_listen: "127.0.0.1:0".parse().expect("literal"),
            rc_cluster: DEFAULT_RC_CLUSTER.into(),
            rc_id: String::new(),
            colony_secret: String::new(),
            operators: Vec::new(),
            join_token: String::new(),
            heartbeat_period: HumanDuration::from_millis(100),
            lease: HumanDuration::from_secs(1),
            control_threads: 1,
            handler_threads: 2,
            session_queue: 1024,
            max_body: ByteSize(1 << 20),
            max_connections: crate::common::serve::DEFAULT_MAX_CONNECTIONS,
            header_timeout: HumanDuration(crate::common::serve::DEFAULT_HEADER_TIMEOUT),
            fsync: true,
            migration_listen: "127.0.0.1:0".parse().expect("literal"),
            drain_timeout: HumanDuration::from_secs(60),
            handover_parallelism: 8,
            inference: crate::node::inference::InferenceConfig::default(),
            agents: crate::node::agents::AgentsSection::default(),
            receipts: crate::node::receipts::ReceiptSection::default(),
            faults: crate::node::faults::FaultSection::default(),
        }
    }
}

impl NodeConfig {
    /// Reads a TOML file (if given), applies `OPENGRID_*` overrides, validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let env = env_map();
        let c: NodeConfig = load_with_env(path, &NodeConfig::default(), &env, SHAPE)?;
        c.validate()?;
        c.check_env_hooks(&env)?;
        Ok(c)
    }

    /// Test hooks set in the environment (`OPENGRID_FAULT_HANDOVER_PAUSE`) need `dev = true`.
    pub(crate) fn check_env_hooks(&self, env: &[(String, String)]) -> Result<(), ConfigError> {
        let var = opengrid_migration::fault::PAUSE_VAR;
        if !self.dev && env.iter().any(|(k, v)| k == var && !v.is_empty()) {
            return Err(invalid(
                "dev",
                format!("{var} (a migration test hook) is set: allowed only with dev = true"),
            ));
        }
        Ok(())
    }

    /// Parses TOML text with the given environment overrides, validates.
    pub fn from_toml_with_env(text: &str, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let c: NodeConfig = parse_with_env(text, &NodeConfig::default(), env, SHAPE)?;
        c.validate()?;
        c.check_env_hooks(env)?;
        Ok(c)
    }

    /// The colony secret this config runs with: `colony_secret`, or with `dev = true` and none
    /// set, the public development secret.
    pub fn secret(&self) -> &str {
        crate::common::config::effective_secret(&self.colony_secret, self.dev)
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_version(self.version)?;
        let a = &self.agents;
        if a.max_instances == 0 || a.max_instances > 10_000 {
            return Err(invalid("agents.max_instances", "must be in 1..=10000"));
        }
        if a.warm_instances > a.max_instances {
            return Err(invalid(
                "agents.warm_instances",
                "must be at most agents.max_instances",
            ));
        }
        if a.max_memory.0 < (1 << 20) || a.max_memory.0 > (4 << 30) {
            return Err(invalid("agents.max_memory", "must be in 1MiB..=4GiB"));
        }
        if a.deadline.0 < Duration::from_millis(10) {
            return Err(invalid("agents.deadline", "must be at least 10ms"));
        }
        if a.fetch_timeout.0 < Duration::from_secs(1) {
            return Err(invalid("agents.fetch_timeout", "must be at least 1s"));
        }
        if a.blob_cache.0 < (64 << 20) {
            return Err(invalid("agents.blob_cache", "must be at least 64MiB"));
        }
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
        check_secret(&self.colony_secret, self.dev)?;
        crate::common::config::check_operators(&self.operators)?;
        if !(self.max_session_share > 0.0 && self.max_session_share <= 1.0) {
            return Err(invalid(
                "max_session_share",
                format!("{} must be in (0, 1]", self.max_session_share),
            ));
        }
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
        crate::common::config::serve_limits(self.max_connections, self.header_timeout.0)?;
        for id in list(&self.rc_id) {
            if let Err(e) = crate::common::identity::NodeId::parse(id) {
                return Err(invalid(
                    "rc_id",
                    format!("{id:?} is not a did:mycel identity: {e}"),
                ));
            }
        }
        if list(&self.rc_cluster).next().is_none() {
            return Err(invalid(
                "rc_cluster",
                "must be host:port of the RC (or of every RC group replica, comma separated)",
            ));
        }
        if self.handover_parallelism == 0 || self.handover_parallelism > 256 {
            return Err(invalid("handover_parallelism", "must be 1..=256"));
        }
        if self.drain_timeout.0 < Duration::from_millis(100) {
            return Err(invalid("drain_timeout", "must be at least 100ms"));
        }
        if self.security_off_for_measurement && !self.dev {
            return Err(invalid(
                "security_off_for_measurement",
                "turns authentication, encryption and authorization off for benchmarks: \
                 allowed only with dev = true",
            ));
        }
        if self.faults.enabled() && !self.dev {
            return Err(invalid(
                "faults.control_dir",
                "the fault hooks (failing disk, slow or panicking handlers, ignore-lease) are a \
                 test and chaos-harness hook: allowed only with dev = true",
            ));
        }
        self.inference.validate()?;
        Ok(())
    }
}

impl NodeConfig {
    /// The client-API connection limits (checked by `validate`).
    pub fn serve_limits(&self) -> Result<crate::common::serve::ServeLimits, ConfigError> {
        crate::common::config::serve_limits(self.max_connections, self.header_timeout.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A colony secret from the environment, as operators set it.
    fn secret_env() -> Vec<(String, String)> {
        vec![(
            "OPENGRID_COLONY_SECRET".to_string(),
            "a-colony-secret".to_string(),
        )]
    }

    #[test]
    fn defaults_validate_once_a_secret_or_dev_is_set() {
        let n = NodeConfig::from_toml_with_env("", &secret_env()).unwrap();
        assert_eq!(
            n,
            NodeConfig {
                colony_secret: "a-colony-secret".into(),
                ..NodeConfig::default()
            }
        );
        let d = NodeConfig::from_toml_with_env("dev = true", &[]).unwrap();
        assert_eq!(d.secret(), crate::common::config::DEV_COLONY_SECRET);
    }

    #[test]
    fn without_dev_the_default_secret_and_fault_hooks_are_refused_naming_the_field() {
        for (toml, field, says) in [
            ("", "colony_secret", "not set"),
            (
                "colony_secret = \"opengrid-local-colony\"",
                "colony_secret",
                "public development secret",
            ),
            (
                "colony_secret = \"x-secret-1\"\n[faults]\ncontrol_dir = \"/tmp/f\"",
                "faults.control_dir",
                "dev = true",
            ),
            (
                "colony_secret = \"x-secret-1\"\nsecurity_off_for_measurement = true",
                "security_off_for_measurement",
                "dev = true",
            ),
        ] {
            match NodeConfig::from_toml_with_env(toml, &[]) {
                Err(ConfigError::Invalid { field: f, reason }) => {
                    assert_eq!(f, field, "{toml}");
                    assert!(reason.contains(says), "{toml}: {reason}");
                }
                other => panic!("{toml}: {other:?}"),
            }
        }
        // The same with dev = true: accepted.
        let c = NodeConfig::from_toml_with_env(
            "dev = true\ncolony_secret = \"opengrid-local-colony\"\nsecurity_off_for_measurement = true\n[faults]\ncontrol_dir = \"/tmp/f\"",
            &[],
        )
        .unwrap();
        assert!(c.faults.enabled() && c.security_off_for_measurement);
        // And from the environment (OPENGRID_DEV), as the chaos harness may set it.
        let env = vec![("OPENGRID_DEV".to_string(), "true".to_string())];
        assert!(NodeConfig::from_toml_with_env("", &env).unwrap().dev);
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
        let env = [env, secret_env()].concat();
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
            match NodeConfig::from_toml_with_env(&format!("dev = true\n{toml}"), &[]) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{toml}"),
                other => panic!("{toml}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_misspelt_env_override_is_refused() {
        let env = vec![("OPENGRID_HEARTBEAT_PERIODE".to_string(), "50ms".to_string())];
        match NodeConfig::from_toml_with_env("", &env) {
            Err(ConfigError::UnknownEnv {
                var, suggestion, ..
            }) => {
                assert_eq!(var, "OPENGRID_HEARTBEAT_PERIODE");
                assert_eq!(suggestion.as_deref(), Some("OPENGRID_HEARTBEAT_PERIOD"));
            }
            other => panic!("{other:?}"),
        }
        // An RC field is not a node field.
        let env = vec![("OPENGRID_PHI_THRESHOLD".to_string(), "9".to_string())];
        assert!(matches!(
            NodeConfig::from_toml_with_env("", &env),
            Err(ConfigError::UnknownEnv { .. })
        ));
    }
}

//! Versioned TOML configuration of a routing coordinator (`opengrid rc --config rc.toml`); the
//! shared rules are in [`crate::common::config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use opengrid_session::{ByteSize, HumanDuration};
use serde::{Deserialize, Serialize};

use crate::common::config::{
    check_period, check_secret, check_version, env_map, invalid, load_with_env, parse_with_env,
    ConfigError, ConfigShape, CONFIG_VERSION, DEFAULT_RC_API, DEFAULT_RC_CLUSTER,
};

/// How the `rc` config appears to the environment overrides.
const SHAPE: ConfigShape = ConfigShape {
    name: "rc",
    optional: &["canopy.treaties_file"],
};

/// Configuration of a routing coordinator (`opengrid rc --config rc.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RcConfig {
    /// Must be [`CONFIG_VERSION`].
    pub version: u32,
    /// Development mode (default off): the only way to run with the public development colony
    /// secret (used when `colony_secret` is empty). Never in production.
    pub dev: bool,
    /// Benchmarks only (default off; needs `dev = true`): security off, so that a bench can
    /// measure its cost against the same build in the same run. The client API open to anyone (no
    /// tokens, no quotas), no capabilities minted.
    pub security_off_for_measurement: bool,
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
    /// Operator keys (DIDs) besides the RC's own: their tokens (`opengrid token operator`) open
    /// status, the dashboard's data, handover and every session (ADR 0026).
    pub operators: Vec<String>,
    /// Developer keys (`did:mycel:…`) whose signed agent packages may be pushed (ADR 0030).
    /// Empty: any package with a valid signature (pushing still needs an operator token).
    pub agent_publishers: Vec<String>,
    /// How long a session capability returned by `POST /sessions` stays valid.
    pub capability_ttl: HumanDuration,
    /// Colony membership: the only node DIDs that may join (empty: any node the rest of the
    /// policy admits).
    pub members: Vec<String>,
    /// Colony membership: a node must present a join token signed by this RC's key or one of
    /// `operators` (`opengrid token join`), for this colony, its DID (or any) and its
    /// jurisdiction (ADR 0027).
    pub require_join_token: bool,
    /// Live sessions one client (by address; a peer colony by its RC) may hold; operators are
    /// not limited.
    pub client_max_sessions: usize,
    /// Memory the live sessions of one client may reserve in all (`placement.memory` of each).
    pub client_max_memory: ByteSize,
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
    /// Open client-API connections at most; more are closed as they arrive.
    pub max_connections: usize,
    /// A client-API request head (or, on an idle connection, its first byte) must arrive within
    /// this; slower or idle connections are closed.
    pub header_timeout: HumanDuration,
    /// Accepted clock skew of signed join requests.
    pub join_max_skew: HumanDuration,
    /// Checkpoint replicas per session (k), chosen among nodes the manifest allows.
    pub replicas: usize,
    /// Colony floor of `migration.min_copies`: every session's manifest is raised to at least
    /// this many copies beyond the holder (0: the manifest decides). At most `replicas`.
    pub min_copies: u32,
    /// Sessions restored at once after a node is declared dead.
    pub failover_parallelism: usize,
    /// Canopy and federation (`[canopy]`, see [`crate::rc::federation::CanopySection`]); off by default.
    pub canopy: crate::rc::federation::CanopySection,
    /// Settlement (`[settlement]`, see [`crate::node::receipts`]): ledger replicas and interval.
    pub settlement: crate::rc::settlement::SettlementSection,
    /// The MCP and A2A gateway (`[gateway]`, see [`crate::rc::gateway::GatewaySection`]); on by
    /// default.
    pub gateway: crate::rc::gateway::GatewaySection,
    /// This RC as one replica of the colony's RC group (`[group]`, ADR 0037); empty: a single RC.
    pub group: crate::rc::group::GroupSection,
}

impl Default for RcConfig {
    fn default() -> Self {
        RcConfig {
            version: CONFIG_VERSION,
            dev: false,
            security_off_for_measurement: false,
            colony: "local".into(),
            data_dir: crate::common::config::default_data_dir("rc"),
            api_listen: DEFAULT_RC_API.parse().expect("literal"),
            cluster_listen: DEFAULT_RC_CLUSTER.parse().expect("literal"),
            colony_secret: String::new(),
            operators: Vec::new(),
            agent_publishers: Vec::new(),
            capability_ttl: HumanDuration::from_secs(30 * 24 * 3600),
            members: Vec::new(),
            require_join_token: false,
            client_max_sessions: 10_000,
            client_max_memory: ByteSize(1 << 40),
            heartbeat_period: HumanDuration::from_millis(100),
            lease: HumanDuration::from_secs(1),
            lease_grace: 1.5,
            phi_threshold: 8.0,
            phi_min_std: HumanDuration::from_millis(50),
            acceptable_pause: HumanDuration::from_millis(100),
            control_threads: 1,
            place_timeout: HumanDuration::from_secs(5),
            max_body: ByteSize(1 << 20),
            max_connections: crate::common::serve::DEFAULT_MAX_CONNECTIONS,
            header_timeout: HumanDuration(crate::common::serve::DEFAULT_HEADER_TIMEOUT),
            join_max_skew: HumanDuration::from_secs(60),
            replicas: 2,
            min_copies: 0,
            failover_parallelism: 64,
            canopy: crate::rc::federation::CanopySection::default(),
            settlement: crate::rc::settlement::SettlementSection::default(),
            gateway: crate::rc::gateway::GatewaySection::default(),
            group: crate::rc::group::GroupSection::default(),
        }
    }
}

impl RcConfig {
    /// Reads a TOML file (if given), applies `OPENGRID_*` overrides, validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let c: RcConfig = load_with_env(path, &RcConfig::default(), &env_map(), SHAPE)?;
        c.validate()?;
        Ok(c)
    }

    /// Parses TOML text with the given environment overrides, validates.
    pub fn from_toml_with_env(text: &str, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let c: RcConfig = parse_with_env(text, &RcConfig::default(), env, SHAPE)?;
        c.validate()?;
        Ok(c)
    }

    /// Longest time after a node's last heartbeat before the RC may place its sessions elsewhere.
    pub fn replace_after(&self) -> Duration {
        self.lease.0.mul_f64(self.lease_grace)
    }

    /// The colony secret this config runs with: `colony_secret`, or with `dev = true` and none
    /// set, the public development secret.
    pub fn secret(&self) -> &str {
        crate::common::config::effective_secret(&self.colony_secret, self.dev)
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_version(self.version)?;
        if !opengrid_session::manifest::is_ident(&self.colony) {
            return Err(invalid("colony", "must be an identifier"));
        }
        check_secret(&self.colony_secret, self.dev)?;
        if self.security_off_for_measurement && !self.dev {
            return Err(invalid(
                "security_off_for_measurement",
                "turns client authorization and quotas off for benchmarks: allowed only with \
                 dev = true",
            ));
        }
        crate::common::config::check_operators(&self.operators)?;
        crate::common::config::check_dids("agent_publishers", &self.agent_publishers, 1024)?;
        crate::common::config::check_dids("members", &self.members, usize::MAX)?;
        if self.client_max_sessions == 0 {
            return Err(invalid("client_max_sessions", "must be at least 1"));
        }
        if self.capability_ttl.0 < Duration::from_secs(60) {
            return Err(invalid("capability_ttl", "must be at least 1 minute"));
        }
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
        crate::common::config::serve_limits(self.max_connections, self.header_timeout.0)?;
        self.group
            .validate(self.lease.0)
            .map_err(|(field, reason)| invalid(field, reason))?;
        if self.replicas > 16 {
            return Err(invalid("replicas", "must be 0..=16"));
        }
        if self.min_copies as usize > self.replicas {
            return Err(invalid(
                "min_copies",
                format!(
                    "{} exceeds replicas = {}: no session could ever be acknowledged",
                    self.min_copies, self.replicas
                ),
            ));
        }
        if self.failover_parallelism == 0 || self.failover_parallelism > 4096 {
            return Err(invalid("failover_parallelism", "must be 1..=4096"));
        }
        self.canopy.validate()?;
        self.settlement
            .validate()
            .map_err(|(field, reason)| invalid(field, reason))?;
        self.gateway
            .validate()
            .map_err(|(field, reason)| invalid(field, reason))?;
        Ok(())
    }
}

impl RcConfig {
    /// The client-API connection limits (checked by `validate`).
    pub fn serve_limits(&self) -> Result<crate::common::serve::ServeLimits, ConfigError> {
        crate::common::config::serve_limits(self.max_connections, self.header_timeout.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_once_a_secret_or_dev_is_set() {
        let dev = RcConfig {
            dev: true,
            ..RcConfig::default()
        };
        dev.validate().unwrap();
        assert_eq!(dev.secret(), crate::common::config::DEV_COLONY_SECRET);
        assert_eq!(
            RcConfig::from_toml_with_env("dev = true", &[]).unwrap(),
            dev
        );
        let env = vec![(
            "OPENGRID_COLONY_SECRET".to_string(),
            "a-colony-secret".to_string(),
        )];
        assert_eq!(
            RcConfig::from_toml_with_env("", &env).unwrap().secret(),
            "a-colony-secret"
        );
    }

    #[test]
    fn without_dev_the_default_secret_is_refused_naming_the_field() {
        for toml in ["", "colony_secret = \"opengrid-local-colony\""] {
            match RcConfig::from_toml_with_env(toml, &[]) {
                Err(ConfigError::Invalid { field, reason }) => {
                    assert_eq!(field, "colony_secret", "{toml}");
                    assert!(reason.contains("dev = true"), "{reason}");
                }
                other => panic!("{toml}: {other:?}"),
            }
        }
    }

    #[test]
    fn security_off_needs_dev() {
        match RcConfig::from_toml_with_env(
            "colony_secret = \"x-secret-1\"\nsecurity_off_for_measurement = true",
            &[],
        ) {
            Err(ConfigError::Invalid { field, reason }) => {
                assert_eq!(field, "security_off_for_measurement");
                assert!(reason.contains("dev = true"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let c =
            RcConfig::from_toml_with_env("dev = true\nsecurity_off_for_measurement = true", &[])
                .unwrap();
        assert!(c.security_off_for_measurement);
    }

    #[test]
    fn validate_names_the_field() {
        for (toml, field) in [
            ("phi_threshold = 0.5", "phi_threshold"),
            ("replicas = 1\nmin_copies = 2", "min_copies"),
        ] {
            match RcConfig::from_toml_with_env(&format!("dev = true\n{toml}"), &[]) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{toml}"),
                other => panic!("{toml}: {other:?}"),
            }
        }
    }

    #[test]
    fn optional_fields_take_overrides_and_node_fields_are_refused() {
        let env = vec![(
            "OPENGRID_CANOPY_TREATIES_FILE".to_string(),
            "/etc/opengrid/treaties.toml".to_string(),
        )];
        // The override reaches the field: validation then reads the (missing) file and names it.
        match RcConfig::from_toml_with_env("dev = true", &env) {
            Err(ConfigError::Invalid { field, reason }) => {
                assert_eq!(field, "canopy.treaties_file");
                assert!(reason.contains("/etc/opengrid/treaties.toml"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let env = vec![("OPENGRID_JURISDICTION".to_string(), "FR".to_string())];
        match RcConfig::from_toml_with_env("", &env) {
            Err(ConfigError::UnknownEnv { var, config, .. }) => {
                assert_eq!(var, "OPENGRID_JURISDICTION");
                assert_eq!(config, "rc");
            }
            other => panic!("{other:?}"),
        }
    }
}

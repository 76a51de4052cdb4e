//! `[canopy]` of the RC config: listen address, bootstrap peers, publish interval, expiry, region,
//! zone, trusted RCs, treaties.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use libp2p::Multiaddr;
use opengrid_canopy::{FederationTreaty, Treaties, TreatyError};
use opengrid_session::{jurisdiction, Did, HumanDuration};
use serde::{Deserialize, Serialize};

use crate::common::config::ConfigError;

/// (only same-jurisdiction moves allowed), loopback listen address.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CanopySection {
    /// Run the canopy swarm and route across colonies.
    pub enabled: bool,
    /// libp2p listen multiaddr (`/ip4/127.0.0.1/tcp/0` picks a free loopback port).
    pub listen: String,
    /// Canopy peers (multiaddrs, `/p2p/<peer id>` optional) dialled at start and whenever no
    /// connection is left.
    pub bootstrap: Vec<String>,
    /// How often this RC publishes its summary.
    pub publish_interval: HumanDuration,
    /// A peer's entry expires after this many intervals without a newer summary.
    pub expiry_intervals: u32,
    /// Gossipsub heartbeat.
    pub gossip_heartbeat: HumanDuration,
    /// Region label shown to other colonies.
    pub region: String,
    /// The jurisdiction sessions admitted here originate in: the `from` side of every treaty check,
    /// and what the summary declares while no node has joined.
    pub zone: String,
    /// `did:mycel` ids of the federation's other RCs; summaries from any other key are rejected.
    pub trusted_rcs: Vec<String>,
    /// A treaty file (see [`opengrid_canopy::treaty`]), merged with `treaty`.
    pub treaties_file: Option<PathBuf>,
    /// Inline treaties (`[[canopy.treaty]]`).
    pub treaty: Vec<FederationTreaty>,
    /// Data class of a session whose request names none (`POST /sessions?data_class=`).
    pub default_data_class: String,
    /// Remote colonies asked, at most, per session.
    pub max_candidates: usize,
    /// How long one RC-to-RC admission request may take (remote placement included).
    pub remote_timeout: HumanDuration,
    /// Accepted clock skew (and replay window) of signed admission requests.
    pub request_max_skew: HumanDuration,
}

impl Default for CanopySection {
    fn default() -> Self {
        CanopySection {
            enabled: false,
            listen: "/ip4/127.0.0.1/tcp/0".into(),
            bootstrap: Vec::new(),
            publish_interval: HumanDuration::from_secs(30),
            expiry_intervals: 3,
            gossip_heartbeat: HumanDuration::from_secs(1),
            region: "local".into(),
            zone: "DE".into(),
            trusted_rcs: Vec::new(),
            treaties_file: None,
            treaty: Vec::new(),
            default_data_class: "personal".into(),
            max_candidates: 3,
            remote_timeout: HumanDuration::from_secs(8),
            request_max_skew: HumanDuration::from_secs(30),
        }
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Whether `s` is a data class name (lowercase letters, digits, `-_.`, 1..=64 bytes).
pub fn is_data_class(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

fn treaty_field(prefix: &str, e: TreatyError) -> ConfigError {
    match e {
        TreatyError::Invalid { field, reason } => invalid(format!("{prefix}{field}"), reason),
        TreatyError::Parse { field, message } => invalid(
            format!("{prefix}{field}"),
            format!("parse error: {message}"),
        ),
        other => invalid(prefix.trim_end_matches('.'), other.to_string()),
    }
}

impl CanopySection {
    /// Checks every field (reading the treaty file); the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        self.bootstrap_addrs()?;
        if self.publish_interval.0 < Duration::from_millis(10) {
            return Err(invalid("canopy.publish_interval", "must be at least 10ms"));
        }
        if self.expiry_intervals == 0 || self.expiry_intervals > 1000 {
            return Err(invalid("canopy.expiry_intervals", "must be 1..=1000"));
        }
        if self.gossip_heartbeat.0 < Duration::from_millis(10) {
            return Err(invalid("canopy.gossip_heartbeat", "must be at least 10ms"));
        }
        if self.region.is_empty()
            || self.region.len() > 64
            || self.region.chars().any(char::is_control)
        {
            return Err(invalid("canopy.region", "1 to 64 printable characters"));
        }
        if !jurisdiction::is_known(&self.zone) {
            return Err(invalid(
                "canopy.zone",
                format!(
                    "{:?} is not a known ISO 3166-1 alpha-2 code or zone",
                    self.zone
                ),
            ));
        }
        self.trusted()?;
        self.treaties()?;
        if !is_data_class(&self.default_data_class) {
            return Err(invalid(
                "canopy.default_data_class",
                "lowercase letters, digits, - _ . (1 to 64 bytes)",
            ));
        }
        if self.max_candidates == 0 || self.max_candidates > 16 {
            return Err(invalid("canopy.max_candidates", "must be 1..=16"));
        }
        if self.remote_timeout.0 < Duration::from_millis(10)
            || self.remote_timeout.0 > Duration::from_secs(120)
        {
            return Err(invalid("canopy.remote_timeout", "must be in 10ms..=120s"));
        }
        if self.request_max_skew.0 < Duration::from_secs(1)
            || self.request_max_skew.0 > Duration::from_secs(600)
        {
            return Err(invalid("canopy.request_max_skew", "must be in 1s..=600s"));
        }
        Ok(())
    }

    /// The listen multiaddr.
    pub fn listen_addr(&self) -> Result<Multiaddr, ConfigError> {
        self.listen.parse().map_err(|e| {
            invalid(
                "canopy.listen",
                format!("{:?} is not a multiaddr: {e}", self.listen),
            )
        })
    }

    /// The bootstrap multiaddrs.
    pub fn bootstrap_addrs(&self) -> Result<Vec<Multiaddr>, ConfigError> {
        self.bootstrap
            .iter()
            .enumerate()
            .map(|(i, a)| {
                a.parse().map_err(|e| {
                    invalid(
                        format!("canopy.bootstrap[{i}]"),
                        format!("{a:?} is not a multiaddr: {e}"),
                    )
                })
            })
            .collect()
    }

    /// The trusted RC dids.
    pub fn trusted(&self) -> Result<BTreeSet<Did>, ConfigError> {
        self.trusted_rcs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                Did::parse(d)
                    .map_err(|e| invalid(format!("canopy.trusted_rcs[{i}]"), format!("{d:?}: {e}")))
            })
            .collect()
    }

    /// The treaties in force: the file's, then the inline ones (names unique across both).
    pub fn treaties(&self) -> Result<Treaties, ConfigError> {
        let mut all = match &self.treaties_file {
            Some(p) => Treaties::load(p)
                .map_err(|e| invalid("canopy.treaties_file", format!("{}: {e}", p.display())))?
                .list()
                .to_vec(),
            None => Vec::new(),
        };
        Treaties::new(self.treaty.clone()).map_err(|e| treaty_field("canopy.", e))?;
        all.extend(self.treaty.iter().cloned());
        Treaties::new(all).map_err(|e| match e {
            TreatyError::Invalid { reason, .. } => invalid(
                "canopy.treaty",
                format!("{reason} (across treaties_file and the inline treaties)"),
            ),
            other => invalid("canopy.treaty", other.to_string()),
        })
    }
}

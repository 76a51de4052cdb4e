//! [`CheckpointPolicy`]: how a session's state is made durable, derived from its manifest.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::manifest::{Manifest, MigrationCost};

/// When checkpoints are taken relative to acknowledging inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckpointMode {
    /// Zero acceptable loss: every input is checkpointed durably (and, once replication exists,
    /// on k replicas) *before* it is acknowledged.
    Synchronous,
    /// A loss bound of `max_interval`: inputs are acknowledged after processing and checkpoints are
    /// taken asynchronously at most `max_interval` apart while the state is dirty.
    Periodic {
        /// Longest time between checkpoints of a dirty session.
        max_interval: Duration,
    },
}

/// Durability and mobility rules for one session, derived from its [`Manifest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointPolicy {
    /// Synchronous or periodic checkpoints.
    pub mode: CheckpointMode,
    /// Whether a live (make-before-break) handover is allowed; `false` for `never-live`.
    pub live_handover: bool,
    /// Longest acceptable freeze during a live handover.
    pub max_blackout: Option<Duration>,
    /// Hibernate after this much idle time.
    pub idle_timeout: Duration,
    /// Copies beyond the holder's own every checkpoint of a zero-loss session must reach before
    /// an input is acknowledged (manifest `migration.min_copies`, possibly raised by the colony).
    /// Bounded-loss sessions replicate best-effort and report the copies they reached. `0` in
    /// the test constructors: a bare local store keeps no copies.
    #[serde(default)]
    pub min_copies: u32,
}

impl CheckpointPolicy {
    /// Derives the policy from a (validated) manifest.
    pub fn from_manifest(m: &Manifest) -> Self {
        let mode = if m.migration.acceptable_loss.is_zero() {
            CheckpointMode::Synchronous
        } else {
            CheckpointMode::Periodic {
                max_interval: m.migration.acceptable_loss.0,
            }
        };
        CheckpointPolicy {
            mode,
            live_handover: m.migration.cost != MigrationCost::NeverLive,
            max_blackout: m.migration.max_blackout.map(|d| d.0),
            idle_timeout: m.session.idle_timeout.0,
            min_copies: m.migration.min_copies,
        }
    }

    /// A synchronous policy with live handover allowed (handy for tests and docs).
    pub fn synchronous() -> Self {
        CheckpointPolicy {
            mode: CheckpointMode::Synchronous,
            live_handover: true,
            max_blackout: Some(Duration::from_millis(50)),
            idle_timeout: Duration::from_secs(300),
            min_copies: 0,
        }
    }

    /// A periodic policy with the given loss bound.
    pub fn periodic(max_interval: Duration) -> Self {
        CheckpointPolicy {
            mode: CheckpointMode::Periodic { max_interval },
            ..Self::synchronous()
        }
    }

    /// Whether inputs wait for a durable checkpoint before they are acknowledged.
    pub fn is_synchronous(&self) -> bool {
        matches!(self.mode, CheckpointMode::Synchronous)
    }

    /// The loss bound: zero for synchronous policies.
    pub fn loss_bound(&self) -> Duration {
        match self.mode {
            CheckpointMode::Synchronous => Duration::ZERO,
            CheckpointMode::Periodic { max_interval } => max_interval,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(loss: &str, cost: &str, blackout: Option<&str>) -> Manifest {
        let b = blackout
            .map(|b| format!("max_blackout = \"{b}\""))
            .unwrap_or_default();
        Manifest::from_toml_str(&format!(
            "version = 1\n[session]\nhandler = \"t\"\ncontinuity = \"interactive\"\n[placement]\njurisdictions = [\"DE\"]\n[migration]\ncost = \"{cost}\"\nacceptable_loss = \"{loss}\"\n{b}\n"
        ))
        .unwrap()
    }

    #[test]
    fn zero_loss_is_synchronous() {
        let p = manifest("0s", "cheap", Some("20ms")).checkpoint_policy();
        assert!(p.is_synchronous());
        assert!(p.live_handover);
        assert_eq!(p.max_blackout, Some(Duration::from_millis(20)));
        assert_eq!(p.loss_bound(), Duration::ZERO);
        assert_eq!(p.min_copies, 1, "one copy beyond the holder by default");
    }

    #[test]
    fn loss_bound_is_periodic() {
        let p = manifest("30s", "costly", Some("200ms")).checkpoint_policy();
        assert_eq!(
            p.mode,
            CheckpointMode::Periodic {
                max_interval: Duration::from_secs(30)
            }
        );
        assert_eq!(p.loss_bound(), Duration::from_secs(30));
    }

    #[test]
    fn never_live_forbids_live_handover() {
        let p = manifest("10s", "never-live", None).checkpoint_policy();
        assert!(!p.live_handover);
        assert_eq!(p.max_blackout, None);
    }
}

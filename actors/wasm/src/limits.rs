//! Per-session sandbox limits from the manifest's `[agent]` section (ADR 0028 amendment): a
//! session may ask for less memory or a shorter input deadline than the node's `[agents]`
//! bounds, never more (the node's bound wins).

use std::sync::Arc;
use std::time::Duration;

/// What one session's manifest asks of its agent's sandbox (`None`: the node's bound).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentLimits {
    /// Linear memory of the instance, bytes.
    pub max_memory_bytes: Option<usize>,
    /// Longest run of one input.
    pub deadline: Option<Duration>,
}

impl AgentLimits {
    /// The limits of a manifest's `[agent]` section.
    pub fn of(m: &opengrid_session::Manifest) -> AgentLimits {
        AgentLimits {
            max_memory_bytes: m
                .agent
                .max_memory
                .map(|b| b.0.min(usize::MAX as u64) as usize),
            deadline: m.agent.input_deadline.map(|d| d.0),
        }
    }

    /// Within the node's bounds: the smaller of each.
    pub fn within(self, max_memory_bytes: usize, deadline: Duration) -> (usize, Duration) {
        (
            self.max_memory_bytes
                .map_or(max_memory_bytes, |m| m.min(max_memory_bytes)),
            self.deadline.map_or(deadline, |d| d.min(deadline)),
        )
    }
}

/// Where a node looks a session's limits up.
pub trait LimitsSource: Send + Sync + 'static {
    /// The limits `session`'s manifest asks for (default when unknown).
    fn limits(&self, session: &str) -> AgentLimits;
}

/// The node service [`crate::WasmHandler`] reads session limits through.
#[derive(Clone)]
pub struct LimitsService(pub Arc<dyn LimitsSource>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_bound_wins() {
        let node = (64 << 20, Duration::from_secs(2));
        assert_eq!(AgentLimits::default().within(node.0, node.1), node);
        let asked = AgentLimits {
            max_memory_bytes: Some(16 << 20),
            deadline: Some(Duration::from_secs(10)),
        };
        assert_eq!(
            asked.within(node.0, node.1),
            (16 << 20, Duration::from_secs(2))
        );
    }
}

//! The session lifecycle state machine.
//!
//! ```text
//! Requested → Placed → Active ⇄ Checkpointing
//!                      Active ⇄ Hibernated
//!                      Active → Preparing → Transferring → Frozen → Active (target, epoch + 1)
//!                               (abort at any of these three → Active on the source, same epoch)
//!   any live state → FailedOver → Placed (restored elsewhere, epoch + 1)
//!   any state but Closed → Closed
//! ```
//! Only these transitions are legal; anything else is an [`IllegalTransition`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::Epoch;

/// Where a session is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SessionState {
    /// Asked for; not yet admitted anywhere.
    Requested,
    /// Admitted to a node, actor not yet running.
    Placed,
    /// Serving inputs.
    Active,
    /// Writing a checkpoint (still owns the session).
    Checkpointing,
    /// Idle: checkpointed, actor stopped; wakes on the next input.
    Hibernated,
    /// Handover: target admitted and reserved.
    Preparing,
    /// Handover: state pre-copy while the source serves.
    Transferring,
    /// Handover: source frozen, final delta and buffered inputs in flight.
    Frozen,
    /// The serving node was lost; waiting to be restored from a replica.
    FailedOver,
    /// Ended for good.
    Closed,
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        f.write_str(&s)
    }
}

/// What happens to a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LifecycleEvent {
    /// Admission picked a node (epoch + 1).
    Place,
    /// The actor started serving.
    Activate,
    /// A checkpoint write began.
    BeginCheckpoint,
    /// The checkpoint write finished.
    EndCheckpoint,
    /// Idle timeout: checkpointed and stopped.
    Hibernate,
    /// An input arrived for a hibernated session.
    Wake,
    /// A handover target was admitted and reserved.
    BeginHandover,
    /// Pre-copy started.
    Transfer,
    /// The source froze.
    Freeze,
    /// The target activated (epoch + 1).
    CompleteHandover,
    /// The handover was abandoned before activation; the source keeps serving.
    AbortHandover,
    /// The serving node was declared dead.
    NodeLost,
    /// Restored from a replica on another node (epoch + 1).
    Restore,
    /// Closed by the client or the operator.
    Close,
}

/// A transition the state machine does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("illegal lifecycle transition: {event:?} in state {from}")]
pub struct IllegalTransition {
    /// State before the event.
    pub from: SessionState,
    /// The refused event.
    pub event: LifecycleEvent,
}

/// A session's state plus its epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifecycle {
    state: SessionState,
    epoch: Epoch,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    /// A freshly requested session (epoch 0: never placed).
    pub fn new() -> Self {
        Lifecycle {
            state: SessionState::Requested,
            epoch: Epoch(0),
        }
    }

    /// Current state.
    pub fn state(&self) -> SessionState {
        self.state
    }

    /// Current epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The state `event` leads to from `from`, if legal.
    pub fn next_state(from: SessionState, event: LifecycleEvent) -> Option<SessionState> {
        use LifecycleEvent as E;
        use SessionState as S;
        let live = matches!(
            from,
            S::Active
                | S::Checkpointing
                | S::Hibernated
                | S::Preparing
                | S::Transferring
                | S::Frozen
        );
        Some(match (from, event) {
            (S::Requested, E::Place) => S::Placed,
            (S::Placed, E::Activate) => S::Active,
            (S::Active, E::BeginCheckpoint) => S::Checkpointing,
            (S::Checkpointing, E::EndCheckpoint) => S::Active,
            (S::Active, E::Hibernate) => S::Hibernated,
            (S::Hibernated, E::Wake) => S::Active,
            (S::Active, E::BeginHandover) => S::Preparing,
            (S::Preparing, E::Transfer) => S::Transferring,
            (S::Transferring, E::Freeze) => S::Frozen,
            (S::Frozen, E::CompleteHandover) => S::Active,
            (S::Preparing | S::Transferring | S::Frozen, E::AbortHandover) => S::Active,
            (_, E::NodeLost) if live || from == S::Placed => S::FailedOver,
            (S::FailedOver, E::Restore) => S::Placed,
            (s, E::Close) if s != S::Closed => S::Closed,
            _ => return None,
        })
    }

    /// Applies `event`; on success returns the new state. Placement, handover completion and
    /// restore increase the epoch.
    pub fn apply(&mut self, event: LifecycleEvent) -> Result<SessionState, IllegalTransition> {
        let next = Self::next_state(self.state, event).ok_or(IllegalTransition {
            from: self.state,
            event,
        })?;
        if matches!(
            event,
            LifecycleEvent::Place | LifecycleEvent::CompleteHandover | LifecycleEvent::Restore
        ) {
            self.epoch = self.epoch.next();
        }
        self.state = next;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LifecycleEvent as E;
    use SessionState as S;

    const ALL_STATES: [S; 10] = [
        S::Requested,
        S::Placed,
        S::Active,
        S::Checkpointing,
        S::Hibernated,
        S::Preparing,
        S::Transferring,
        S::Frozen,
        S::FailedOver,
        S::Closed,
    ];
    const ALL_EVENTS: [E; 14] = [
        E::Place,
        E::Activate,
        E::BeginCheckpoint,
        E::EndCheckpoint,
        E::Hibernate,
        E::Wake,
        E::BeginHandover,
        E::Transfer,
        E::Freeze,
        E::CompleteHandover,
        E::AbortHandover,
        E::NodeLost,
        E::Restore,
        E::Close,
    ];

    #[test]
    fn happy_path_with_handover_and_failover() {
        let mut l = Lifecycle::new();
        for e in [E::Place, E::Activate, E::BeginCheckpoint, E::EndCheckpoint] {
            l.apply(e).unwrap();
        }
        assert_eq!(l.epoch(), Epoch(1));
        for e in [
            E::BeginHandover,
            E::Transfer,
            E::Freeze,
            E::CompleteHandover,
        ] {
            l.apply(e).unwrap();
        }
        assert_eq!((l.state(), l.epoch()), (S::Active, Epoch(2)));
        l.apply(E::NodeLost).unwrap();
        l.apply(E::Restore).unwrap();
        l.apply(E::Activate).unwrap();
        assert_eq!((l.state(), l.epoch()), (S::Active, Epoch(3)));
        l.apply(E::Close).unwrap();
        assert_eq!(l.state(), S::Closed);
    }

    #[test]
    fn abort_keeps_epoch() {
        let mut l = Lifecycle::new();
        l.apply(E::Place).unwrap();
        l.apply(E::Activate).unwrap();
        l.apply(E::BeginHandover).unwrap();
        l.apply(E::Transfer).unwrap();
        l.apply(E::Freeze).unwrap();
        l.apply(E::AbortHandover).unwrap();
        assert_eq!((l.state(), l.epoch()), (S::Active, Epoch(1)));
    }

    #[test]
    fn illegal_transitions_are_errors_and_change_nothing() {
        let mut l = Lifecycle::new();
        let err = l.apply(E::Activate).unwrap_err();
        assert_eq!(
            err,
            IllegalTransition {
                from: S::Requested,
                event: E::Activate
            }
        );
        assert_eq!(l.state(), S::Requested);
        l.apply(E::Close).unwrap();
        for e in ALL_EVENTS {
            assert!(l.apply(e).is_err(), "{e:?} after Closed must be illegal");
        }
        let mut l = Lifecycle::new();
        l.apply(E::Place).unwrap();
        l.apply(E::Activate).unwrap();
        assert!(l.apply(E::Freeze).is_err(), "freeze without preparing");
        assert!(l.apply(E::CompleteHandover).is_err());
        assert!(l.apply(E::Restore).is_err());
        assert_eq!(l.epoch(), Epoch(1));
    }

    #[test]
    fn transition_table_is_exactly_as_documented() {
        let mut legal = 0;
        for s in ALL_STATES {
            for e in ALL_EVENTS {
                if Lifecycle::next_state(s, e).is_some() {
                    legal += 1;
                }
            }
        }
        // 11 single edges + 3 aborts + 7 NodeLost sources + 9 Close sources.
        assert_eq!(legal, 30);
    }
}

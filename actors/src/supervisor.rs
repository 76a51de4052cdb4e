//! The node's session supervisor: OTP-style one-for-one restarts with a restart-intensity limit.
//!
//! Every session actor is spawned *by* the supervisor and linked to it, so a handler panic arrives
//! here as `SupervisionEvent::ActorFailed`. The supervisor restarts that session alone from its
//! last checkpoint (its journal is replayed by the new incarnation); beyond `max_restarts` within
//! `within` the session is stopped with a reason callers can read. Other sessions are unaffected.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::session::Slot;

/// Restart-intensity limit: at most `max_restarts` restarts within `within`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartIntensity {
    /// Restarts allowed in the window.
    pub max_restarts: u32,
    /// The sliding window.
    pub within: Duration,
}

impl Default for RestartIntensity {
    /// 5 restarts in 10 s, as in many OTP applications.
    fn default() -> Self {
        RestartIntensity {
            max_restarts: 5,
            within: Duration::from_secs(10),
        }
    }
}

pub(crate) enum SupervisorMsg {
    /// Start (or wake) a session.
    Spawn {
        slot: Arc<dyn Slot>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// How many session actors are alive.
    Count(oneshot::Sender<usize>),
}

impl ractor::Message for SupervisorMsg {}

pub(crate) struct Supervisor;

pub(crate) struct SupervisorState {
    children: HashMap<ActorId, Arc<dyn Slot>>,
}

impl Supervisor {
    /// Spawns until success or until the restart intensity gives up.
    async fn start_child(
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        slot: Arc<dyn Slot>,
    ) -> Result<(), String> {
        loop {
            match slot.clone().spawn(myself.get_cell()).await {
                Ok(cell) => {
                    state.children.insert(cell.get_id(), slot);
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(session = %slot.session_id(), error = %e, "session failed to start");
                    if let Err(reason) = slot.record_restart(&e) {
                        slot.stop_with(reason.clone());
                        return Err(reason);
                    }
                }
            }
        }
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SupervisorState {
            children: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Spawn { slot, reply } => {
                let r = Self::start_child(&myself, state, slot).await;
                let _ = reply.send(r);
            }
            SupervisorMsg::Count(reply) => {
                let _ = reply.send(state.children.len());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                let Some(slot) = state.children.remove(&cell.get_id()) else {
                    return Ok(());
                };
                let cause = err.to_string();
                tracing::warn!(session = %slot.session_id(), %cause, "session actor failed; restarting from last checkpoint");
                if slot.is_closed_or_stopped() {
                    return Ok(());
                }
                match slot.record_restart(&cause) {
                    Ok(()) => {
                        slot.mark_starting();
                        let _ = Self::start_child(&myself, state, slot).await;
                    }
                    Err(reason) => slot.stop_with(reason),
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.children.remove(&cell.get_id());
            }
            _ => {}
        }
        Ok(())
    }
}

pub(crate) async fn spawn_supervisor(
) -> Result<(ActorRef<SupervisorMsg>, ActorCell), ractor::SpawnErr> {
    let (r, _) = Actor::spawn(None, Supervisor, ()).await?;
    let cell = r.get_cell();
    Ok((r, cell))
}

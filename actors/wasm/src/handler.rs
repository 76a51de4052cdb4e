//! [`WasmHandler`]: a loaded agent component as an [`opengrid_actors::SessionHandler`].

use std::sync::Arc;
use std::time::Duration;

use opengrid_actors::{HandlerError, SessionContext, SessionHandler, MAX_STATE_BYTES};
use opengrid_session::SessionId;

use crate::host::CallInfo;
use crate::runtime::{Fault, Handled, LoadedAgent};

/// Largest JSON answer accepted from a guest.
pub const MAX_OUTPUT_BYTES: usize = 16 << 20;

/// A session handler running one agent package. State is the guest's opaque bytes (JSON for the
/// Rust SDK and Python agents), checkpointed as is.
///
/// The state is passed in and the new state comes out of every call, so a trap, a deadline or the
/// memory cap discards the input's changes and the session answers the next input from the state
/// it had. A session's inputs run in its *warm instance* when the runtime kept one (bounded by
/// `RuntimeConfig::warm_instances`, least recently used first out): it is taken out for the call
/// and kept only when the call returned normally and its answer was accepted; after a fault, a
/// guest error or a refused answer it is dropped and the next input starts in a fresh instance.
/// What a guest keeps in its own memory between calls is therefore a cache at best: the state
/// passed in is the truth (see `wit/agent.wit`). Faults come back as [`HandlerError`]s with codes
/// `agent_trap`, `agent_deadline`, `agent_memory` (`agent_instantiate` when the pool is
/// exhausted); a guest's own `agent-error` comes back with the guest's code.
///
/// An empty state means "not initialised": `init` cannot fail in [`SessionHandler`], so when the
/// guest's `init` fails the session starts empty, and the first input runs `init` again and
/// returns its error if it fails again.
pub struct WasmHandler {
    agent: Arc<LoadedAgent>,
}

impl WasmHandler {
    /// A handler for a loaded agent; register it with `SessionHost::register` (id `name@version`).
    pub fn new(agent: Arc<LoadedAgent>) -> Self {
        WasmHandler { agent }
    }

    /// The agent it runs.
    pub fn agent(&self) -> &Arc<LoadedAgent> {
        &self.agent
    }

    /// The guest's `init`, faults and guest errors as a `HandlerError`.
    async fn init_state(&self, call: CallInfo) -> Result<Vec<u8>, HandlerError> {
        match self.agent.call_init(call).await {
            Ok(Ok((state, _))) if state.is_empty() => Err(HandlerError::new(
                "agent_init",
                "the agent's init returned an empty state",
            )),
            Ok(Ok((state, instance))) => {
                self.agent.keep_warm(instance);
                Ok(state)
            }
            Ok(Err(e)) => Err(HandlerError::new(e.code, e.message)),
            Err(fault) => Err(fault_error(&fault)),
        }
    }
}

fn fault_error(fault: &Fault) -> HandlerError {
    HandlerError::new(format!("agent_{}", fault.kind()), fault.to_string())
}

impl SessionHandler for WasmHandler {
    type State = Vec<u8>;
    type Input = serde_json::Value;
    type Output = serde_json::Value;

    fn id(&self) -> &str {
        self.agent.id()
    }

    fn init(&self, session: &SessionId) -> Vec<u8> {
        // `init` is synchronous in SessionHandler; the guest call is bounded by its epoch deadline
        // and awaits nothing but the guest's own yields, so it is driven to completion here.
        let call = CallInfo {
            session_id: session.as_str().to_string(),
            seq: 0,
            ctx: None,
            limits: Default::default(),
            effects: Default::default(),
        };
        match futures::executor::block_on(self.init_state(call)) {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(agent = self.agent.id(), %session, "agent init failed, retried at the first input: {e}");
                Vec::new()
            }
        }
    }

    async fn handle(
        &self,
        state: &mut Vec<u8>,
        input: serde_json::Value,
        ctx: &SessionContext,
    ) -> Result<serde_json::Value, HandlerError> {
        // The session's own `[agent]` limits, when the node offers them.
        let limits = ctx
            .service::<crate::limits::LimitsService>()
            .map(|l| l.0.limits(ctx.session_id().as_str()))
            .unwrap_or_default();
        // Time spent waiting for durable effects, shared by `init` and `handle` of this input.
        let effects = Arc::new(crate::effects::EffectClock::default());
        let call = || CallInfo {
            session_id: ctx.session_id().as_str().to_string(),
            seq: ctx.seq().0,
            ctx: Some(ctx.clone()),
            limits,
            effects: effects.clone(),
        };
        let initial;
        let current: &[u8] = if state.is_empty() {
            // `init` has no input: no effects or inference there, whichever path runs it.
            initial = self
                .init_state(CallInfo {
                    ctx: None,
                    ..call()
                })
                .await?;
            &initial
        } else {
            state
        };
        let input = input.to_string();
        // The epoch deadline interrupts guest code; this bounds host calls (inference, WASI
        // pollables) as well. Time spent waiting for durable effects does not count: they carry
        // their own bounds (the egress timeout), and a model may take a minute to answer.
        let cfg = self.agent.runtime().config();
        let deadline = limits.within(cfg.max_memory_bytes, cfg.deadline).1;
        let outer = deadline * 2 + Duration::from_secs(1);
        let started = tokio::time::Instant::now();
        let result = {
            let mut call_handle = std::pin::pin!(self.agent.call_handle(call(), current, &input));
            loop {
                let until = started + outer + effects.spent(std::time::Instant::now());
                match tokio::time::timeout_at(until, &mut call_handle).await {
                    Ok(r) => break r,
                    // An effect ran (or runs) meanwhile: the bound moved.
                    Err(_)
                        if started + outer + effects.spent(std::time::Instant::now()) > until => {}
                    Err(_) => {
                        let fault = Fault::Deadline(deadline);
                        self.agent.runtime().record_fault(&fault);
                        break Err(fault);
                    }
                }
            }
        };
        match result {
            Ok(Ok(Handled {
                state: new_state,
                output,
                instance,
            })) => {
                if new_state.len() > MAX_STATE_BYTES {
                    return Err(HandlerError::new(
                        "agent_state",
                        format!(
                            "the agent's state is {} bytes, over {MAX_STATE_BYTES}",
                            new_state.len()
                        ),
                    ));
                }
                if output.len() > MAX_OUTPUT_BYTES {
                    return Err(HandlerError::new(
                        "agent_output",
                        format!(
                            "the agent's answer is {} bytes, over {MAX_OUTPUT_BYTES}",
                            output.len()
                        ),
                    ));
                }
                let value = serde_json::from_str(&output).map_err(|e| {
                    HandlerError::new(
                        "agent_output",
                        format!("the agent's answer is not JSON: {e}"),
                    )
                })?;
                *state = new_state;
                self.agent.keep_warm(instance);
                Ok(value)
            }
            Ok(Err(e)) => Err(HandlerError::new(e.code, e.message)),
            Err(fault) => Err(fault_error(&fault)),
        }
    }

    fn encode_state(&self, state: &Vec<u8>) -> Result<Vec<u8>, HandlerError> {
        Ok(state.clone())
    }

    fn decode_state(&self, bytes: &[u8]) -> Result<Vec<u8>, HandlerError> {
        if bytes.len() > MAX_STATE_BYTES {
            return Err(HandlerError::new(
                "state_decode",
                format!("{} bytes, over {MAX_STATE_BYTES}", bytes.len()),
            ));
        }
        Ok(bytes.to_vec())
    }
}

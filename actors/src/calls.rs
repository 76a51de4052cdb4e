//! Session-to-session calls (ADR 0033): what a handler's
//! [`SessionContext::call`](crate::SessionContext::call) hands the node, and the typed errors.
//!
//! The node implements [`Calls`] (it knows the directory and the other nodes) and registers it
//! as the [`CallService`] node service. The callee side is
//! [`DynSession::call_json`](crate::DynSession::call_json): exactly once by the caller's key.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::handler::HandlerError;

/// Longest call chain (A → B → C …).
pub const MAX_CALL_DEPTH: usize = 16;
/// Longest deadline of one call.
pub const MAX_CALL_DEADLINE: Duration = Duration::from_secs(300);

/// One call, as the caller's node sends it.
#[derive(Clone, Debug)]
pub struct CallRequest {
    /// The calling session.
    pub caller: String,
    /// The sessions waiting on this call, oldest first (the caller last).
    pub chain: Vec<String>,
    /// The call's idempotency key (`caller:source:index`): the same on every retry.
    pub key: String,
    /// The callee's capability.
    pub target: String,
    /// Its input, JSON.
    pub input: serde_json::Value,
    /// How long the caller waits, retries included.
    pub deadline: Duration,
}

/// What a node does with calls.
pub trait Calls: Send + Sync + 'static {
    /// Delivers `req` to the callee wherever it lives and returns its handler's answer.
    fn call(&self, req: CallRequest) -> BoxFuture<'_, Result<serde_json::Value, HandlerError>>;
}

/// The node service handlers reach through [`SessionContext::call`](crate::SessionContext::call).
#[derive(Clone)]
pub struct CallService(pub Arc<dyn Calls>);

/// `call_cycle`: the call would come back to a session already waiting in the chain.
pub fn cycle_error(chain: &[String], callee: &str) -> HandlerError {
    HandlerError::new(
        "call_cycle",
        format!(
            "a call to session {callee} would deadlock: it is already waiting in the call chain {}",
            chain.join(" -> ")
        ),
    )
}

/// Checks a call's chain before it is delivered to `callee`.
pub fn check_chain(chain: &[String], callee: &str) -> Result<(), HandlerError> {
    if chain.iter().any(|s| s == callee) {
        return Err(cycle_error(chain, callee));
    }
    if chain.len() >= MAX_CALL_DEPTH {
        return Err(HandlerError::new(
            "call_depth",
            format!(
                "call chain of {} sessions is over {MAX_CALL_DEPTH}",
                chain.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_and_depth_are_refused() {
        let chain = vec!["a".to_string(), "b".to_string()];
        assert_eq!(check_chain(&chain, "a").unwrap_err().code, "call_cycle");
        assert!(check_chain(&chain, "c").is_ok());
        let long: Vec<String> = (0..MAX_CALL_DEPTH).map(|i| i.to_string()).collect();
        assert_eq!(check_chain(&long, "z").unwrap_err().code, "call_depth");
    }
}

//! Errors seen by callers of a session.

use opengrid_session::{Epoch, Seq, SessionId};
use serde::{Deserialize, Serialize};

/// Why an input (or another request) was not accepted by a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum SessionError {
    /// The session's input queue is full; retry later (HTTP 429).
    #[error("session {session} is overloaded: {queued} inputs queued (capacity {capacity}); retry later")]
    Backpressure {
        /// The session.
        session: SessionId,
        /// Inputs queued now.
        queued: usize,
        /// Queue capacity.
        capacity: usize,
    },
    /// The seq skips ahead of the next expected one (HTTP 409).
    #[error("session {session}: input {got} out of order, expected {expected}")]
    SeqGap {
        /// The session.
        session: SessionId,
        /// Next expected seq.
        expected: Seq,
        /// The seq received.
        got: Seq,
    },
    /// The session stopped for good (restart intensity exceeded, fenced, state unreadable).
    #[error("session {session} stopped: {reason}")]
    Stopped {
        /// The session.
        session: SessionId,
        /// Why.
        reason: String,
    },
    /// A newer holder owns the session (after a handover or failover).
    #[error("session {session} is fenced: epoch {ours} superseded by {current}")]
    Fenced {
        /// The session.
        session: SessionId,
        /// This holder's epoch.
        ours: Epoch,
        /// The newer epoch.
        current: Epoch,
    },
    /// The session now lives on another node (HTTP 307 with `location`).
    #[error("session {session} moved to {location} ({epoch})")]
    Moved {
        /// The session.
        session: SessionId,
        /// Client-facing address of the new holder.
        location: String,
        /// The new holder's epoch.
        epoch: Epoch,
    },
    /// The session was closed.
    #[error("session {session} is closed")]
    Closed {
        /// The session.
        session: SessionId,
    },
    /// The session does not exist here.
    #[error("session {session} not found")]
    NotFound {
        /// The session.
        session: SessionId,
    },
    /// A checkpoint could not be made durable; the input was not acknowledged and the session
    /// restarts from its last durable checkpoint. Retry the input.
    #[error(
        "session {session}: checkpoint not durable ({reason}); input {seq} not acknowledged, retry"
    )]
    NotDurable {
        /// The session.
        session: SessionId,
        /// The unacknowledged input.
        seq: Seq,
        /// The store's error.
        reason: String,
    },
    /// A zero-loss input's checkpoint could not reach the copies beyond the holder the session
    /// requires (`migration.min_copies`): the input was not acknowledged (nothing was written on
    /// the holder either) and the session is back at its last acknowledged state. Retry later:
    /// the RC repairs replica sets when nodes return.
    #[error("session {session}: {have} of {need} copies required: {reason}; input {seq} not acknowledged, retry")]
    TooFewCopies {
        /// The session.
        session: SessionId,
        /// The unacknowledged input.
        seq: Seq,
        /// Copies beyond the holder the checkpoint reached (or could reach).
        have: u32,
        /// Copies beyond the holder required.
        need: u32,
        /// Why (e.g. "replica holders down").
        reason: String,
    },
    /// A bounded-loss session's checkpoints have failed for longer than its loss bound: it
    /// refuses new inputs (acknowledging them could lose more than the bound) until a checkpoint
    /// succeeds again. Retry later.
    #[error("session {session}: no checkpoint for {behind_ms} ms, past the loss bound of {bound_ms} ms ({reason}); input {seq} refused until a checkpoint succeeds, retry")]
    CheckpointsBehind {
        /// The session.
        session: SessionId,
        /// The refused input.
        seq: Seq,
        /// How long the oldest acknowledged but not checkpointed input has waited, ms.
        behind_ms: u64,
        /// The loss bound, ms.
        bound_ms: u64,
        /// The last checkpoint failure.
        reason: String,
    },
    /// The handler panicked on this input; the session restarted from its last checkpoint and
    /// the input was not applied. Resending it is safe (it may panic again: after too many
    /// restarts the session stops).
    #[error("session {session}: {reason}; the session restarted from its last checkpoint and input {seq} was not applied")]
    HandlerPanicked {
        /// The session.
        session: SessionId,
        /// The input that panicked.
        seq: Seq,
        /// The panic message.
        reason: String,
    },
    /// The session is restarting; retry the input.
    #[error("session {session} is restarting; retry")]
    Restarting {
        /// The session.
        session: SessionId,
    },
    /// The input's payload could not be decoded for this handler (HTTP 400).
    #[error("session {session}: bad input: {reason}")]
    BadInput {
        /// The session.
        session: SessionId,
        /// Decoder message.
        reason: String,
    },
    /// The session already exists.
    #[error("session {session} already exists")]
    AlreadyExists {
        /// The session.
        session: SessionId,
    },
    /// No handler with that id is registered on this host.
    #[error("no handler {handler:?} registered on this node")]
    UnknownHandler {
        /// The handler id.
        handler: String,
    },
    /// The host is shutting down.
    #[error("session host is shutting down")]
    ShuttingDown,
}

impl SessionError {
    /// Whether retrying the same input later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SessionError::Backpressure { .. }
                | SessionError::NotDurable { .. }
                | SessionError::TooFewCopies { .. }
                | SessionError::CheckpointsBehind { .. }
                | SessionError::Restarting { .. }
                | SessionError::HandlerPanicked { .. }
        )
    }
}

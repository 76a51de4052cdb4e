//! # opengrid-actors
//!
//! Sessions as supervised actors (ractor), the API agent developers implement
//! ([`SessionHandler`]), and the node-side [`SessionHost`].
//!
//! - Each live session is one actor processing seq-numbered inputs in order, dropping duplicates,
//!   acknowledging per its [`CheckpointPolicy`](opengrid_session::CheckpointPolicy) and
//!   checkpointing through a [`CheckpointStore`](opengrid_session::CheckpointStore).
//! - A node-wide supervisor restarts a panicked session from its last checkpoint and replays the
//!   inputs processed since (OTP one-for-one, restart-intensity limited).
//! - Idle sessions hibernate (checkpoint, stop the actor) and wake transparently on input.
//! - Each session meters its usage ([`Usage`]); settlement receipts are built from it.
//! - Queues are bounded: a full queue is [`SessionError::Backpressure`].
//!
//! Plane: inference/handler plane. Handler code runs on the runtime the host was created on,
//! which the node keeps apart from its control-plane runtime.

pub mod error;
pub mod handler;
pub mod host;
pub mod session;
pub mod supervisor;
pub mod usage;

pub use error::SessionError;
pub use handler::{HandlerError, Services, SessionContext, SessionHandler, MAX_STATE_BYTES};
pub use host::{DynSession, HostConfig, Pending, SessionHandle, SessionHost, SessionInfo};
pub use session::{Reply, SessionStatus};
pub use supervisor::RestartIntensity;
pub use usage::{Usage, UsageCounters};

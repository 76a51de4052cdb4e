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
//!
//! ## Metrics
//! OpenTelemetry histograms on the meter in [`HostConfig::meter`] (the node passes its own, so
//! they appear on its `/metrics`); this crate depends on the OpenTelemetry API only. Buckets:
//! [`metrics::SECONDS_BUCKETS`].
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | `opengrid_actors_checkpoint_seconds` | histogram | one checkpoint write: encode the state, put it in the store (replicas included when the store replicates) |
//! | `opengrid_actors_handler_seconds` | histogram | one live handler call, input to output, awaits (e.g. inference) included; replays are not counted |

pub mod error;
pub mod faults;
pub mod handler;
pub mod host;
pub mod metrics;
pub mod session;
pub mod supervisor;
pub mod usage;

pub use error::SessionError;
pub use faults::{FaultHooks, HookRule};
pub use handler::{HandlerError, Services, SessionContext, SessionHandler, MAX_STATE_BYTES};
pub use host::{DynSession, HostConfig, Pending, SessionHandle, SessionHost, SessionInfo};
pub use session::{Forwarder, MovedTo, Reply, SessionStatus};
pub use supervisor::RestartIntensity;
pub use usage::{Usage, UsageCounters};

/// Replaces the default panic hook with one that logs a single `tracing` error line (thread,
/// location, message). Handler panics are expected events in a supervised runtime; the default
/// hook's multi-line output (and backtraces under `RUST_BACKTRACE=1`) would flood node logs.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let loc = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current().name().unwrap_or("?").to_string();
        tracing::error!(%thread, location = %loc, "panic: {msg}");
    }));
}

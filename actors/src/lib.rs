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
//! ## Writing a handler
//! `use opengrid_actors::prelude::*;` brings what a handler author needs: [`SessionHandler`],
//! [`SessionContext`], [`HandlerError`], the ids ([`SessionId`](opengrid_session::SessionId),
//! [`Seq`](opengrid_session::Seq), [`Epoch`](opengrid_session::Epoch)) and
//! [`Manifest`](opengrid_session::Manifest). `examples/handler-only/` is a crate to copy.
//!
//! ## Features
//! - default: the handler SDK and the session host, pure Rust (no RocksDB, no ONNX Runtime, no
//!   libp2p; `scripts/check-sdk-deps.sh` keeps it so). Checkpoints go through the
//!   [`CheckpointStore`](opengrid_session::CheckpointStore) trait; the durable RocksDB store is
//!   `opengrid-session`'s `rocksdb` feature, which the node turns on.
//! - `inference`: `SessionContext::infer` and `has_inference`, the door to the node's
//!   inference plane (`opengrid-runtime-gpu`, ONNX Runtime through `ort`).
//!
//! ## Moving sessions
//! The node's mobility code moves a session through its [`Transfer`] capability
//! ([`SessionHost::transfer`]); handlers never see it.
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

pub mod calls;
pub mod effects;
pub mod egress;
pub mod error;
pub mod faults;
pub mod handler;
pub mod host;
pub mod metrics;
pub mod record;
pub mod session;
pub mod stream;
pub mod supervisor;
pub mod transfer;
pub mod usage;

/// What a handler author needs, in one import: `use opengrid_actors::prelude::*;`.
///
/// ```
/// use opengrid_actors::prelude::*;
///
/// struct Echo;
///
/// impl SessionHandler for Echo {
///     type State = Vec<String>;
///     type Input = String;
///     type Output = usize;
///
///     fn id(&self) -> &str { "echo" }
///
///     fn init(&self, _session: &SessionId) -> Vec<String> { Vec::new() }
///
///     async fn handle(&self, seen: &mut Vec<String>, line: String, ctx: &SessionContext)
///         -> Result<usize, HandlerError>
///     {
///         if line.is_empty() {
///             return Err(HandlerError::new("bad_input", format!("empty line at {}", ctx.seq())));
///         }
///         seen.push(line);
///         Ok(seen.len())
///     }
/// }
/// # let s = Echo.encode_state(&vec!["a".to_string()]).unwrap();
/// # assert_eq!(Echo.decode_state(&s).unwrap(), vec!["a".to_string()]);
/// ```
pub mod prelude {
    pub use crate::error::SessionError;
    pub use crate::handler::{HandlerError, Services, SessionContext, SessionHandler};
    pub use crate::session::Reply;
    pub use opengrid_session::{Epoch, Manifest, Seq, SessionId};
}

pub use calls::{CallRequest, CallService, Calls};
pub use egress::{Egress, EgressService, HttpRequest, HttpResponse};
pub use error::SessionError;
pub use faults::{FaultHooks, HookRule};
pub use handler::{HandlerError, Services, SessionContext, SessionHandler, When, MAX_STATE_BYTES};
pub use host::{DynSession, HostConfig, Pending, SessionHandle, SessionHost, SessionInfo};
pub use record::Source;
pub use session::{Reply, SessionStatus};
pub use stream::{StreamRead, StreamTable};
pub use supervisor::RestartIntensity;
pub use transfer::{MovedTo, Relay, Transfer};
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

//! The Rust SDK of OpenGrid agent packages: implement [`Agent`] and call [`export!`], build with
//! `cargo build --release --target wasm32-wasip2`, and the `.wasm` is a component that exports
//! `opengrid:agent/guest@0.1.0` (ADR 0028), or `@0.2.0` with the feature `effects`.
//!
//! # Interface versions (ADR 0034)
//! - Without features the agent speaks `opengrid:agent@0.1.0`: [`Ctx`] logs, runs inference,
//!   reads assets. Its `agent.toml` declares `interface = "opengrid:agent@0.1.0"`.
//! - With `features = ["effects"]` it speaks `opengrid:agent@0.2.0`, which adds durable effects
//!   (ADR 0032, 0033): `Ctx::fetch`, `now_ms`, `random_u64`, `emit` (streamed replies),
//!   `schedule`/`cancel` (timers), `call` (other sessions), and `source` (who sent the input).
//!   Their results are recorded by the node and replayed when an input is handled again, so
//!   `handle` stays a deterministic function of (state, input, answers from [`Ctx`]). Its `agent.toml` declares
//!   `interface = "opengrid:agent@0.2.0"`; a node refuses a package whose component exports
//!   another version than it declares.
//!
//! ```ignore
//! use opengrid_agent::{export, Agent, Ctx, Error, Value};
//! struct Counter;
//! impl Agent for Counter {
//!     type State = u64;
//!     fn init(_session: &str) -> u64 { 0 }
//!     fn handle(total: &mut u64, input: Value, _ctx: &Ctx) -> Result<Value, Error> {
//!         *total += input.as_u64().ok_or(Error::new("bad_input", "a number"))?;
//!         Ok((*total).into())
//!     }
//! }
//! export!(Counter);
//! ```
//!
//! The state crosses the boundary as JSON bytes (the format Python agents use too), so a node can
//! show it and a package may move between languages without a state migration.

use std::marker::PhantomData;

pub use serde_json::{self, Value};

/// The generated bindings of the interface version the crate is built for (`api`: its imports,
/// `exports_api`: the guest export). Not a stable API: use [`Ctx`].
#[doc(hidden)]
#[cfg(not(feature = "effects"))]
pub mod bindings {
    wit_bindgen::generate!({
        world: "opengrid:agent/agent@0.1.0",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_agent",
        default_bindings_module: "opengrid_agent::bindings",
    });
    pub use self::exports::opengrid::agent0_1_0 as exports_api;
    pub use self::opengrid::agent0_1_0 as api;
}

/// The generated bindings of the interface version the crate is built for (`api`: its imports,
/// `exports_api`: the guest export). Not a stable API: use [`Ctx`].
#[doc(hidden)]
#[cfg(feature = "effects")]
pub mod bindings {
    wit_bindgen::generate!({
        world: "opengrid:agent/agent@0.2.0",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_agent",
        default_bindings_module: "opengrid_agent::bindings",
    });
    pub use self::exports::opengrid::agent0_2_0 as exports_api;
    pub use self::opengrid::agent0_2_0 as api;
}

#[cfg(feature = "effects")]
mod effects;
#[cfg(feature = "effects")]
pub use effects::{HttpRequest, HttpResponse, Source, When};

use bindings::api::host;
use bindings::api::types;
use bindings::exports_api::guest::{Guest, Handled};

/// An error for one input: the client gets `code` and `message`, the session's state stays as it
/// was before the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// Machine-readable, e.g. `bad_input`.
    pub code: String,
    /// Human-readable.
    pub message: String,
}

impl Error {
    /// A new error.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Error {
            code: code.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

/// Severity of a [`Ctx::log`] line.
pub use types::Level;

/// A dense f32 tensor, row-major (the inference plane's currency).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions.
    pub shape: Vec<u64>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

/// What the node offers during one call: logging, inference, the package's assets, where the call
/// is (session, seq), and with the feature `effects` durable effects (`fetch`, `now_ms`,
/// `random_u64`, `emit`, `schedule`, `cancel`, `call`) and the input's `source`.
pub struct Ctx {
    _private: (),
}

impl Ctx {
    /// A log line in the node's log, attributed to this session.
    pub fn log(&self, level: Level, message: &str) {
        host::log(level, message);
    }

    /// Runs `model` (one of the package's `models`) on `input` in the node's inference plane.
    /// Errors come back with code `inference`.
    pub fn infer(&self, model: &str, input: &Tensor) -> Result<Tensor, Error> {
        let t = types::Tensor {
            shape: input.shape.clone(),
            data: input.data.clone(),
        };
        host::infer(model, &t)
            .map(|t| Tensor {
                shape: t.shape,
                data: t.data,
            })
            .map_err(|m| Error::new("inference", m))
    }

    /// The bytes of one of the package's assets, by blake3 hash (hex). Errors: code `asset`.
    pub fn read_asset(&self, hash: &str) -> Result<Vec<u8>, Error> {
        host::read_asset(hash).map_err(|m| Error::new("asset", m))
    }

    /// The session being served.
    pub fn session_id(&self) -> String {
        host::session_id()
    }

    /// The session's step: inputs handled so far, whatever sent them (0 in `init`). For a session
    /// whose inputs all come from its client, the client's seq.
    pub fn seq(&self) -> u64 {
        host::seq()
    }
}

/// An agent: the code of one kind of session.
///
/// The node guarantees: one input at a time per session; each input sees the state the previous
/// successful input left (a failed, trapped or timed-out input leaves it unchanged); after a
/// restart, inputs since the last checkpoint are replayed. The agent guarantees: `handle` is a
/// deterministic function of (state, input, answers from [`Ctx`]).
///
/// **Everything the session must remember goes in `State`.** The node may run a session's
/// inputs one after another in the same instance (a warm instance: statics, `thread_local!`s and
/// the heap survive between its inputs) or each in a fresh one, and switches without notice: after
/// any failed input (trap, deadline, memory cap, or an `Err` from `handle`), a restart, a handover
/// or failover, and when the node needs the slot for another session. Memory outside `State` is
/// therefore at best a cache of something derived from `State` or from the package (a parsed
/// table, a compiled regex) and must never change an answer.
pub trait Agent {
    /// The session's state, stored as JSON between inputs.
    type State: serde::Serialize + serde::de::DeserializeOwned;

    /// The state of a brand-new session (called once per session).
    fn init(session: &str) -> Self::State;

    /// Processes one input and returns the answer; on `Err` the state changes are discarded.
    fn handle(state: &mut Self::State, input: Value, ctx: &Ctx) -> Result<Value, Error>;
}

/// Adapts an [`Agent`] to the generated `Guest` trait; named by [`export!`].
#[doc(hidden)]
pub struct Adapter<A>(PhantomData<A>);

fn to_wit(e: Error) -> types::AgentError {
    types::AgentError {
        code: e.code,
        message: e.message,
    }
}

impl<A: Agent> Guest for Adapter<A> {
    fn init(session: String) -> Result<Vec<u8>, types::AgentError> {
        serde_json::to_vec(&A::init(&session))
            .map_err(|e| to_wit(Error::new("state_encode", e.to_string())))
    }

    fn handle(state: Vec<u8>, input: String) -> Result<Handled, types::AgentError> {
        let mut st: A::State = serde_json::from_slice(&state)
            .map_err(|e| to_wit(Error::new("state_decode", e.to_string())))?;
        let input: Value = serde_json::from_str(&input)
            .map_err(|e| to_wit(Error::new("bad_input", format!("input is not JSON: {e}"))))?;
        let output = A::handle(&mut st, input, &Ctx { _private: () }).map_err(to_wit)?;
        Ok(Handled {
            state: serde_json::to_vec(&st)
                .map_err(|e| to_wit(Error::new("state_encode", e.to_string())))?,
            output: output.to_string(),
        })
    }
}

/// Exports an [`Agent`] as the package's component: `export!(MyAgent);` once, at the crate root.
#[macro_export]
macro_rules! export {
    ($agent:ty) => {
        type __OpengridAgentExport = $crate::Adapter<$agent>;
        $crate::bindings::__export_agent!(__OpengridAgentExport with_types_in $crate::bindings);
    };
}

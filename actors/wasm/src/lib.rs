//! WebAssembly agent packages (ADR 0028): an agent is a signed package (`agent.toml` + one
//! component built against `wit/`, world `opengrid:agent/agent@0.1.0` or `@0.2.0`, the version its
//! `agent.toml` declares: [`InterfaceVersion`], ADR 0034) that a node runs as an ordinary session
//! handler. It sits on the session plane beside native handlers: the session actors, checkpoints
//! and handover see a [`WasmHandler`] like any other `SessionHandler`; its `infer` import goes to
//! the inference plane (feature `inference`), and 0.2.0's `effects` imports (`fetch`, `now-ms`,
//! `random-u64`, `emit`, `schedule`, `cancel`, `call`) are the session's journaled
//! `SessionContext` effects (ADR 0032, 0033).
//!
//! - [`package`]: the canonical package format, its blake3 content hash and ed25519 signature.
//! - [`runtime`]: one wasmtime engine per node (pooling allocator, epoch deadlines, memory caps,
//!   a compile cache on disk per package hash).
//! - [`handler`]: [`WasmHandler`], the state passed in and out of every input, run in the
//!   session's warm instance when there is one; faults never touch the state and drop the instance.
//! - [`effects`]: the `effects` imports and the bounds on what a guest hands them.
//!
//! Guests: the Rust SDK is `actors/wasm/guest` (crate `opengrid-agent`); Python agents build with
//! componentize-py against the same WIT; `scripts/build-agents.sh` builds the examples.
//!
//! # Metrics
//! On [`RuntimeConfig::meter`] (counters named without the suffix; the Prometheus exporter adds
//! `_total`, so these are the exported names):
//! - `opengrid_wasm_faults_total{kind}`: agent calls that faulted; `kind` is `trap`, `deadline`,
//!   `memory` or `instantiate`.
//! - `opengrid_wasm_instances_total{warm}`: instances a call ran in; `warm="true"`: the session's
//!   warm instance was reused, `warm="false"`: a new one was instantiated (also probes).
//! - `opengrid_wasm_warm_evictions_total`: warm instances given up for another (LRU bound, pool
//!   pressure).
//! - `opengrid_wasm_compiles_total`: components compiled (compile-cache misses).
//! - `opengrid_wasm_cache_hits_total`: components loaded from the compile cache.

pub mod effects;
pub mod error;
pub mod handler;
mod host;
pub mod limits;
pub mod package;
pub mod runtime;
mod warm;

pub use error::{PackageError, RuntimeError};
pub use handler::WasmHandler;
pub use package::{
    AgentMeta, Blob, InterfaceVersion, Package, PackageLimits, PackageSource, SignedPackage,
    VerifiedPackage, GUEST_EXPORT, INTERFACE_VERSION,
};
pub use runtime::{Fault, LoadedAgent, Runtime, RuntimeConfig, RuntimeStats};

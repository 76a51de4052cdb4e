//! The host side of the agent worlds: what one call's store holds and the `host` imports of every
//! interface version (ADR 0028, 0034); the `effects` imports of 0.2.0 are in [`crate::effects`].
//! With WASI (no files, network, environment or arguments) they are the only doors a guest has to
//! the outside world.

use std::sync::Arc;

use opengrid_actors::SessionContext;
use wasmtime::component::{HasData, ResourceTable};
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::package::Blob;

/// Bindings of `opengrid:agent@0.1.0` (frozen, `wit/deps/agent-0.1.0`): `host` only.
pub(crate) mod v0_1 {
    wasmtime::component::bindgen!({
        world: "opengrid:agent/agent@0.1.0",
        path: "wit",
        imports: { "opengrid:agent/host.infer": async, "opengrid:agent/host.read-asset": async, default: tracing },
        exports: { default: async },
    });
    pub(crate) use opengrid::agent0_1_0 as api;
}

/// Bindings of `opengrid:agent@0.2.0` (`wit/agent.wit`): `host` and `effects`.
pub(crate) mod v0_2 {
    wasmtime::component::bindgen!({
        world: "opengrid:agent/agent@0.2.0",
        path: "wit",
        imports: {
            "opengrid:agent/host.infer": async,
            "opengrid:agent/host.read-asset": async,
            "opengrid:agent/effects.fetch": async,
            "opengrid:agent/effects.now-ms": async,
            "opengrid:agent/effects.random-u64": async,
            "opengrid:agent/effects.emit": async,
            "opengrid:agent/effects.schedule": async,
            "opengrid:agent/effects.cancel": async,
            "opengrid:agent/effects.call": async,
            default: tracing,
        },
        exports: { default: async },
    });
    pub(crate) use opengrid::agent0_2_0 as api;
}

/// An error the guest returned (`agent-error` of any version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GuestError {
    pub code: String,
    pub message: String,
}

impl From<v0_1::api::types::AgentError> for GuestError {
    fn from(e: v0_1::api::types::AgentError) -> Self {
        GuestError {
            code: e.code,
            message: e.message,
        }
    }
}

impl From<v0_2::api::types::AgentError> for GuestError {
    fn from(e: v0_2::api::types::AgentError) -> Self {
        GuestError {
            code: e.code,
            message: e.message,
        }
    }
}

/// Largest asset a guest may read in one call.
pub const MAX_ASSET_BYTES: u64 = 64 << 20;

/// What a call knows about where it runs.
pub(crate) struct CallInfo {
    pub session_id: String,
    pub seq: u64,
    /// The session's context: inference goes through it. `None` in `init` (no inference there).
    pub ctx: Option<SessionContext>,
    /// What the session's manifest asks of the sandbox (within the runtime's bounds).
    pub limits: crate::limits::AgentLimits,
    /// Time this call spent waiting for durable effects (not counted against its deadline).
    pub effects: Arc<crate::effects::EffectClock>,
}

/// The package's declarations the imports check against.
pub(crate) struct PackageView {
    pub name: String,
    pub models: Vec<Blob>,
    pub assets: Vec<Blob>,
    /// Content-addressed asset files (`<dir>/<blake3 hex>`), when the node has any.
    pub assets_dir: Option<std::path::PathBuf>,
}

/// Memory cap of one instance: all its linear memories together.
pub(crate) struct MemoryCap {
    pub limit: usize,
    pub used: usize,
    /// Set when a grow was refused: a trap after it is a memory fault.
    pub hit: bool,
    pub max_table_elements: usize,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grow = desired.saturating_sub(current);
        if self.used.saturating_add(grow) > self.limit {
            self.hit = true;
            return Ok(false);
        }
        self.used += grow;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.max_table_elements)
    }
}

/// The data of one call's store.
pub(crate) struct CallState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub memory: MemoryCap,
    pub call: CallInfo,
    pub package: Arc<PackageView>,
    /// Epoch ticks this call has run; the deadline callback traps at `deadline_ticks`.
    pub ticks: u64,
    pub deadline_ticks: u64,
    pub deadline_hit: bool,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Marker for the generated `add_to_linker`: host functions get `&mut CallState`.
pub(crate) struct HostData;

impl HasData for HostData {
    type Data<'a> = &'a mut CallState;
}

impl v0_1::api::types::Host for CallState {}
impl v0_2::api::types::Host for CallState {}

/// Severity of a guest's log line, whatever its interface version.
#[derive(Clone, Copy)]
enum Severity {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl CallState {
    fn log_line(&self, level: Severity, message: String) {
        let message: String = message.chars().take(4096).collect();
        let (agent, session, seq) = (&self.package.name, &self.call.session_id, self.call.seq);
        match level {
            Severity::Trace => tracing::trace!(agent, session, seq, "{message}"),
            Severity::Debug => tracing::debug!(agent, session, seq, "{message}"),
            Severity::Info => tracing::info!(agent, session, seq, "{message}"),
            Severity::Warn => tracing::warn!(agent, session, seq, "{message}"),
            Severity::Error => tracing::error!(agent, session, seq, "{message}"),
        }
    }

    /// `host.infer` of any version: shape and data in, shape and data out.
    async fn infer_model(
        &mut self,
        model: String,
        shape: Vec<u64>,
        data: Vec<f32>,
    ) -> Result<(Vec<u64>, Vec<f32>), String> {
        let Some(blob) = self.package.models.iter().find(|m| m.name == model) else {
            return Err(format!("`{model}` is not one of the package's models"));
        };
        let Some(ctx) = self.call.ctx.clone() else {
            return Err("no inference in init".into());
        };
        infer(&ctx, &blob.hash, shape, data).await
    }

    /// `host.read-asset` of any version.
    fn read_asset_bytes(&self, hash: String) -> Result<Vec<u8>, String> {
        if !self.package.assets.iter().any(|a| a.hash == hash) {
            return Err(format!("`{hash}` is not one of the package's assets"));
        }
        let Some(dir) = self.package.assets_dir.clone() else {
            return Err("this node has no asset store".into());
        };
        let path = dir.join(&hash);
        // Local disk, bounded size: read in place (this also works in `init`, outside tokio).
        let size = std::fs::metadata(&path)
            .map_err(|e| format!("asset {hash}: {e}"))?
            .len();
        if size > MAX_ASSET_BYTES {
            return Err(format!(
                "asset {hash} is {size} bytes, over {MAX_ASSET_BYTES}"
            ));
        }
        let bytes = std::fs::read(&path).map_err(|e| format!("asset {hash}: {e}"))?;
        if blake3::hash(&bytes).to_hex().as_str() != hash {
            return Err(format!("asset {hash}: stored bytes do not match the hash"));
        }
        Ok(bytes)
    }
}

/// The `host` interface is the same in every version; each version's generated trait delegates
/// to the methods above.
macro_rules! host_interface {
    ($version:ident) => {
        impl $version::api::host::Host for CallState {
            fn log(&mut self, level: $version::api::types::Level, message: String) {
                use $version::api::types::Level;
                let level = match level {
                    Level::Trace => Severity::Trace,
                    Level::Debug => Severity::Debug,
                    Level::Info => Severity::Info,
                    Level::Warn => Severity::Warn,
                    Level::Error => Severity::Error,
                };
                self.log_line(level, message);
            }

            async fn infer(
                &mut self,
                model: String,
                input: $version::api::types::Tensor,
            ) -> Result<$version::api::types::Tensor, String> {
                let (shape, data) = self.infer_model(model, input.shape, input.data).await?;
                Ok($version::api::types::Tensor { shape, data })
            }

            async fn read_asset(&mut self, hash: String) -> Result<Vec<u8>, String> {
                self.read_asset_bytes(hash)
            }

            fn session_id(&mut self) -> String {
                self.call.session_id.clone()
            }

            fn seq(&mut self) -> u64 {
                self.call.seq
            }
        }
    };
}

host_interface!(v0_1);
host_interface!(v0_2);

#[cfg(feature = "inference")]
async fn infer(
    ctx: &SessionContext,
    hash: &str,
    shape: Vec<u64>,
    data: Vec<f32>,
) -> Result<(Vec<u64>, Vec<f32>), String> {
    use opengrid_runtime_gpu::{ModelId, Tensor as NodeTensor, TensorData};
    let id: ModelId = hash.parse().map_err(|e| format!("{e}"))?;
    let shape: Vec<usize> = shape
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("dimension {d} too large")))
        .collect::<Result<_, _>>()?;
    let t = NodeTensor::f32(shape, data).map_err(|e| e.to_string())?;
    let out = ctx.infer(&id, t).await.map_err(|e| e.message)?;
    match out.data() {
        TensorData::F32(v) => Ok((out.shape().iter().map(|&d| d as u64).collect(), v.clone())),
        TensorData::I64(_) => Err("the model answered int64; agents get f32 tensors".into()),
    }
}

#[cfg(not(feature = "inference"))]
async fn infer(
    _ctx: &SessionContext,
    _hash: &str,
    _shape: Vec<u64>,
    _data: Vec<f32>,
) -> Result<(Vec<u64>, Vec<f32>), String> {
    Err("this node was built without inference (opengrid-wasm feature `inference`)".into())
}

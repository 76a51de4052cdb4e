//! The host side of the agent world: what one call's store holds and the `host` imports, the only
//! door a guest has to the outside world (plus WASI with no files, network, environment or
//! arguments: ADR 0028).

use std::sync::Arc;

use opengrid_actors::SessionContext;
use wasmtime::component::{HasData, ResourceTable};
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::package::Blob;

wasmtime::component::bindgen!({
    world: "agent",
    path: "wit",
    imports: { "opengrid:agent/host.infer": async, "opengrid:agent/host.read-asset": async, default: tracing },
    exports: { default: async },
});

pub use opengrid::agent::types::{Level, Tensor};

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

impl opengrid::agent::types::Host for CallState {}

impl opengrid::agent::host::Host for CallState {
    fn log(&mut self, level: Level, message: String) {
        let message: String = message.chars().take(4096).collect();
        let (agent, session, seq) = (&self.package.name, &self.call.session_id, self.call.seq);
        match level {
            Level::Trace => tracing::trace!(agent, session, seq, "{message}"),
            Level::Debug => tracing::debug!(agent, session, seq, "{message}"),
            Level::Info => tracing::info!(agent, session, seq, "{message}"),
            Level::Warn => tracing::warn!(agent, session, seq, "{message}"),
            Level::Error => tracing::error!(agent, session, seq, "{message}"),
        }
    }

    async fn infer(&mut self, model: String, input: Tensor) -> Result<Tensor, String> {
        let Some(blob) = self.package.models.iter().find(|m| m.name == model) else {
            return Err(format!("`{model}` is not one of the package's models"));
        };
        let Some(ctx) = self.call.ctx.clone() else {
            return Err("no inference in init".into());
        };
        infer(&ctx, &blob.hash, input).await
    }

    async fn read_asset(&mut self, hash: String) -> Result<Vec<u8>, String> {
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

    fn session_id(&mut self) -> String {
        self.call.session_id.clone()
    }

    fn seq(&mut self) -> u64 {
        self.call.seq
    }
}

#[cfg(feature = "inference")]
async fn infer(ctx: &SessionContext, hash: &str, input: Tensor) -> Result<Tensor, String> {
    use opengrid_runtime_gpu::{ModelId, Tensor as NodeTensor, TensorData};
    let id: ModelId = hash.parse().map_err(|e| format!("{e}"))?;
    let shape: Vec<usize> = input
        .shape
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("dimension {d} too large")))
        .collect::<Result<_, _>>()?;
    let t = NodeTensor::f32(shape, input.data).map_err(|e| e.to_string())?;
    let out = ctx.infer(&id, t).await.map_err(|e| e.message)?;
    match out.data() {
        TensorData::F32(v) => Ok(Tensor {
            shape: out.shape().iter().map(|&d| d as u64).collect(),
            data: v.clone(),
        }),
        TensorData::I64(_) => Err("the model answered int64; agents get f32 tensors".into()),
    }
}

#[cfg(not(feature = "inference"))]
async fn infer(_ctx: &SessionContext, _hash: &str, _input: Tensor) -> Result<Tensor, String> {
    Err("this node was built without inference (opengrid-wasm feature `inference`)".into())
}

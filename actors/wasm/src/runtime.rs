//! [`Runtime`]: one wasmtime engine per node. Pooling allocator (bounded instances and memories),
//! epoch interruption driven by a ticker thread (per-input deadlines), a memory cap per instance,
//! components compiled once per package hash and cached on disk, an `InstancePre` per loaded
//! component for fast instantiation, and a bounded set of warm instances, one per session, reused
//! between its inputs (ADR 0028).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use opentelemetry::metrics::{Counter, Meter, MeterProvider as _};
use opentelemetry::KeyValue;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolConcurrencyLimitError, PoolingAllocationConfig,
    Store, UpdateDeadline,
};
use wasmtime_wasi::WasiCtxBuilder;

use crate::error::{PackageError, RuntimeError};
use crate::host::{v0_1, v0_2, CallInfo, CallState, GuestError, HostData, MemoryCap, PackageView};
use crate::package::{InterfaceVersion, PackageLimits, SignedPackage, VerifiedPackage};
use crate::warm::{WarmKey, WarmSet};

/// Settings of a node's wasm runtime (later: per package, from its manifest, within these bounds).
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where compiled components are cached (`<dir>/<hash>.cwasm`); only this runtime writes it.
    pub cache_dir: PathBuf,
    /// Instances alive at once (inputs being processed plus warm instances): the pool's size.
    pub max_instances: u32,
    /// Warm instances kept between inputs, one per session, least recently used first out; each
    /// holds a pool slot. `None`: half of `max_instances`; `Some(0)`: a fresh instance per input.
    /// At most `max_instances`; when the pool runs dry the least recently used one gives way.
    pub warm_instances: Option<u32>,
    /// Linear memory of one instance, all its memories together, bytes.
    pub max_memory_bytes: usize,
    /// Longest run of one input (or `init`) before it is interrupted.
    pub deadline: Duration,
    /// Epoch tick: deadline resolution and how often a running guest yields to other tasks.
    pub epoch_tick: Duration,
    /// Package size limits.
    pub limits: PackageLimits,
    /// Content-addressed asset files for `read-asset` (`<dir>/<blake3 hex>`), if the node has any.
    pub assets_dir: Option<PathBuf>,
    /// Meter for `opengrid_wasm_*` instruments (none: not exported).
    pub meter: Option<Meter>,
}

impl RuntimeConfig {
    /// Defaults that run on one laptop, caching under `cache_dir`.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        RuntimeConfig {
            cache_dir: cache_dir.into(),
            max_instances: 64,
            warm_instances: None,
            max_memory_bytes: 256 << 20,
            deadline: Duration::from_secs(2),
            epoch_tick: Duration::from_millis(10),
            limits: PackageLimits::default(),
            assets_dir: None,
            meter: None,
        }
    }

    /// How many warm instances the runtime keeps: `warm_instances`, or half of `max_instances`.
    pub fn warm_capacity(&self) -> u32 {
        self.warm_instances
            .unwrap_or(self.max_instances / 2)
            .min(self.max_instances)
    }

    fn validate(&self) -> Result<(), RuntimeError> {
        let bad = |field, reason: &str| {
            Err(RuntimeError::InvalidSetting {
                field,
                reason: reason.into(),
            })
        };
        if self.max_instances == 0 || self.max_instances > 10_000 {
            return bad("max_instances", "between 1 and 10000");
        }
        if self.warm_instances.is_some_and(|w| w > self.max_instances) {
            return bad(
                "warm_instances",
                "at most max_instances (a warm instance holds a pool slot)",
            );
        }
        if self.max_memory_bytes < (1 << 20) || self.max_memory_bytes > (4 << 30) {
            return bad("max_memory_bytes", "between 1 MiB and 4 GiB");
        }
        if self.epoch_tick < Duration::from_millis(1) || self.epoch_tick > Duration::from_secs(1) {
            return bad("epoch_tick", "between 1 ms and 1 s");
        }
        if self.deadline < self.epoch_tick {
            return bad("deadline", "at least one epoch tick");
        }
        Ok(())
    }
}

/// Core instances, memories and tables one component may have. A componentize-py agent is
/// several core modules (CPython, libc, the WASI adapter) sharing memory; a Rust agent is one.
const CORE_INSTANCES_PER_COMPONENT: u32 = 32;
const MEMORIES_PER_COMPONENT: u32 = 2;
const TABLES_PER_COMPONENT: u32 = 8;
const TABLE_ELEMENTS: usize = 100_000;

/// Counts of the runtime's work since it started (tests, bench, `/metrics`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeStats {
    /// Components compiled by Cranelift.
    pub compiles: u64,
    /// Components loaded from the disk cache.
    pub cache_hits: u64,
    /// Instances created (a cold start of a call, or a probe).
    pub instances: u64,
    /// Calls served by a session's warm instance instead of a new one.
    pub warm_hits: u64,
    /// Warm instances given up for another (LRU bound, pool pressure, a racing call of the same
    /// session); instances dropped after a fault or a guest error are not counted here.
    pub warm_evictions: u64,
    /// Warm instances kept now.
    pub warm: u64,
    /// Calls that trapped.
    pub traps: u64,
    /// Calls that ran past their deadline.
    pub deadlines: u64,
    /// Calls that hit the memory cap.
    pub memory_faults: u64,
}

/// A fault of a guest call: the input's state change is discarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// The guest trapped (panic, `unreachable`, out-of-bounds access, …).
    #[error("the agent trapped: {0}")]
    Trap(String),
    /// The input ran past its deadline.
    #[error("the agent ran past its deadline of {0:?}")]
    Deadline(Duration),
    /// The instance hit its memory cap.
    #[error("the agent hit its memory cap of {0} bytes")]
    Memory(usize),
    /// No instance could be created (pool exhausted, link failure).
    #[error("the agent could not be instantiated: {0}")]
    Instantiate(String),
}

impl Fault {
    /// The `kind` label and the `HandlerError` code suffix: `trap`, `deadline`, `memory`, `instantiate`.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Trap(_) => "trap",
            Fault::Deadline(_) => "deadline",
            Fault::Memory(_) => "memory",
            Fault::Instantiate(_) => "instantiate",
        }
    }
}

/// What a guest call returns when it does not fault.
pub(crate) type GuestResult<T> = Result<T, GuestError>;

/// Counts read by [`Runtime::stats`] and by the observable instruments at export time (nothing
/// is recorded on the meter per input).
#[derive(Default)]
struct Counts {
    instances: AtomicU64,
    warm_hits: AtomicU64,
    warm_evictions: AtomicU64,
}

struct Metrics {
    faults: Counter<u64>,
    compiles: Counter<u64>,
    cache_hits: Counter<u64>,
}

pub(crate) struct RuntimeInner {
    pub(crate) engine: Engine,
    linker: Linker<CallState>,
    config: RuntimeConfig,
    /// Loaded agents by hash, while something (a registered handler) holds them: a `LoadedAgent`
    /// holds its runtime, so a strong map would keep both alive forever.
    loaded: Mutex<HashMap<String, Weak<LoadedAgent>>>,
    compiles: AtomicU64,
    cache_hits: AtomicU64,
    counts: Arc<Counts>,
    /// Serial numbers of loaded agents (the warm set's keys).
    next_agent: AtomicU64,
    /// Warm instances by (agent, session); see [`crate::warm`].
    warm: Mutex<WarmSet<Instance>>,
    /// Faults by kind: trap, deadline, memory, instantiate.
    faults: [AtomicU64; 4],
    metrics: Metrics,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Release);
    }
}

/// The node's wasm runtime. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<RuntimeInner>,
}

impl Runtime {
    /// Builds the engine, its pool and the epoch ticker thread.
    pub fn new(config: RuntimeConfig) -> Result<Runtime, RuntimeError> {
        config.validate()?;
        std::fs::create_dir_all(&config.cache_dir).map_err(|source| RuntimeError::Cache {
            path: config.cache_dir.clone(),
            source,
        })?;
        let n = config.max_instances;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(n)
            .total_core_instances(n * CORE_INSTANCES_PER_COMPONENT)
            .total_memories(n * MEMORIES_PER_COMPONENT)
            .total_tables(n * TABLES_PER_COMPONENT)
            .total_stacks(n)
            .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(MEMORIES_PER_COMPONENT)
            .max_tables_per_component(TABLES_PER_COMPONENT)
            .table_elements(TABLE_ELEMENTS)
            .max_memory_size(config.max_memory_bytes);
        let mut c = Config::new();
        c.wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&c).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;

        let mut linker = Linker::<CallState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| RuntimeError::Engine(format!("linking WASI: {e:#}")))?;
        // Every interface version side by side: a component links against its own (ADR 0034).
        v0_1::Agent::add_to_linker::<_, HostData>(&mut linker, |s| s)
            .map_err(|e| RuntimeError::Engine(format!("linking agent interface 0.1.0: {e:#}")))?;
        v0_2::Agent::add_to_linker::<_, HostData>(&mut linker, |s| s)
            .map_err(|e| RuntimeError::Engine(format!("linking agent interface 0.2.0: {e:#}")))?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        {
            let (engine, stop, tick) = (engine.clone(), ticker_stop.clone(), config.epoch_tick);
            std::thread::Builder::new()
                .name("wasm-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                })
                .map_err(RuntimeError::Ticker)?;
        }

        let noop;
        let meter = match &config.meter {
            Some(m) => m,
            None => {
                noop = opentelemetry::metrics::NoopMeterProvider::new().meter("opengrid_wasm");
                &noop
            }
        };
        let metrics = Metrics {
            faults: meter
                .u64_counter("opengrid_wasm_faults")
                .with_description("agent calls that trapped, ran past their deadline or hit their memory cap, by kind")
                .build(),
            compiles: meter
                .u64_counter("opengrid_wasm_compiles")
                .with_description("components compiled by Cranelift (cache misses)")
                .build(),
            cache_hits: meter
                .u64_counter("opengrid_wasm_cache_hits")
                .with_description("components loaded from the on-disk compile cache")
                .build(),
        };
        let counts = Arc::new(Counts::default());
        {
            let c = counts.clone();
            let (warm, fresh) = (
                [KeyValue::new("warm", "true")],
                [KeyValue::new("warm", "false")],
            );
            meter
                .u64_observable_counter("opengrid_wasm_instances")
                .with_description("instances calls ran in: warm=\"true\" a session's warm instance reused, warm=\"false\" a new one instantiated")
                .with_callback(move |o| {
                    o.observe(c.warm_hits.load(Ordering::Relaxed), &warm);
                    o.observe(c.instances.load(Ordering::Relaxed), &fresh);
                })
                .build();
            let c = counts.clone();
            meter
                .u64_observable_counter("opengrid_wasm_warm_evictions")
                .with_description("warm instances given up for another (LRU bound, pool pressure)")
                .with_callback(move |o| o.observe(c.warm_evictions.load(Ordering::Relaxed), &[]))
                .build();
        }
        tracing::info!(
            cache = %config.cache_dir.display(),
            max_instances = n,
            warm_instances = config.warm_capacity(),
            max_memory_bytes = config.max_memory_bytes,
            deadline = ?config.deadline,
            "wasm runtime started"
        );
        let warm = Mutex::new(WarmSet::new(config.warm_capacity() as usize));
        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                warm,
                counts,
                next_agent: AtomicU64::new(0),
                engine,
                linker,
                config,
                loaded: Mutex::new(HashMap::new()),
                compiles: AtomicU64::new(0),
                cache_hits: AtomicU64::new(0),
                faults: Default::default(),
                metrics,
                ticker_stop,
            }),
        })
    }

    /// The settings.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// Work counts since start.
    pub fn stats(&self) -> RuntimeStats {
        RuntimeStats {
            compiles: self.inner.compiles.load(Ordering::Relaxed),
            cache_hits: self.inner.cache_hits.load(Ordering::Relaxed),
            instances: self.inner.counts.instances.load(Ordering::Relaxed),
            warm_hits: self.inner.counts.warm_hits.load(Ordering::Relaxed),
            warm_evictions: self.inner.counts.warm_evictions.load(Ordering::Relaxed),
            warm: lock(&self.inner.warm).len() as u64,
            traps: self.inner.faults[0].load(Ordering::Relaxed),
            deadlines: self.inner.faults[1].load(Ordering::Relaxed),
            memory_faults: self.inner.faults[2].load(Ordering::Relaxed),
        }
    }

    /// Decodes, verifies and loads package bytes (see [`load`](Self::load)).
    pub fn load_bytes(
        &self,
        bytes: &[u8],
        expected_hash: Option<&str>,
    ) -> Result<Arc<LoadedAgent>, PackageError> {
        let limits = &self.inner.config.limits;
        let verified =
            SignedPackage::from_bytes(bytes, limits)?.verify_with(expected_hash, limits)?;
        self.load(&verified)
    }

    /// Loads a verified package: from memory if loaded before, else from the disk cache, else
    /// compiles it (blocking: seconds for a Python agent; call from `spawn_blocking` on a busy
    /// runtime). The component must export the `guest` of the interface version its `agent.toml`
    /// declares (`opengrid:agent/guest@0.1.0` or `@0.2.0`) and import nothing but that version's
    /// interfaces and WASI; only then is it cached.
    pub fn load(&self, package: &VerifiedPackage) -> Result<Arc<LoadedAgent>, PackageError> {
        let hash = package.hash().to_string();
        if let Some(a) = lock(&self.inner.loaded).get(&hash).and_then(Weak::upgrade) {
            return Ok(a);
        }
        let inner = &self.inner;
        let version = package.interface();
        let component_bytes = package.component();
        if component_bytes.len() as u64 > inner.config.limits.max_component_bytes {
            return Err(PackageError::Oversized {
                what: "component".into(),
                size: component_bytes.len() as u64,
                limit: inner.config.limits.max_component_bytes,
            });
        }
        // Not a component (a core module, or not wasm at all): it cannot export the interface.
        if !is_component(component_bytes) {
            return Err(PackageError::MissingExport {
                name: version.guest_export().into(),
            });
        }
        let path = inner.config.cache_dir.join(format!("{hash}.cwasm"));
        let (component, from_cache) = match self.load_cached(&path) {
            Some(c) => (c, true),
            None => {
                let started = std::time::Instant::now();
                let c = Component::new(&inner.engine, component_bytes)
                    .map_err(|e| PackageError::Compile(format!("{e:#}")))?;
                tracing::info!(%hash, took = ?started.elapsed(), bytes = component_bytes.len(), "compiled agent component");
                (c, false)
            }
        };
        check_imports(&inner.engine, &component, version)?;
        check_exports(&inner.engine, &component, version)?;
        let instance_pre = inner.linker.instantiate_pre(&component).map_err(|e| {
            PackageError::UnsupportedImport {
                name: format!("{e:#}"),
            }
        })?;
        let export_type = |e: wasmtime::Error| PackageError::ExportType {
            name: version.guest_export().into(),
            reason: format!("{e:#}"),
        };
        let pre = match version {
            InterfaceVersion::V0_1 => {
                Pre::V0_1(v0_1::AgentPre::new(instance_pre).map_err(export_type)?)
            }
            InterfaceVersion::V0_2 => {
                Pre::V0_2(v0_2::AgentPre::new(instance_pre).map_err(export_type)?)
            }
        };
        if from_cache {
            inner.cache_hits.fetch_add(1, Ordering::Relaxed);
            inner.metrics.cache_hits.add(1, &[]);
        } else {
            write_cache(&path, &component)?;
            inner.compiles.fetch_add(1, Ordering::Relaxed);
            inner.metrics.compiles.add(1, &[]);
        }
        let meta = package.meta();
        let agent = Arc::new(LoadedAgent {
            runtime: self.clone(),
            hash: hash.clone(),
            serial: inner.next_agent.fetch_add(1, Ordering::Relaxed),
            id: format!("{}@{}", meta.name, meta.version),
            pre,
            view: Arc::new(PackageView {
                name: meta.name.clone(),
                models: meta.models.clone(),
                assets: meta.assets.clone(),
                assets_dir: inner.config.assets_dir.clone(),
            }),
        });
        let mut loaded = lock(&inner.loaded);
        loaded.retain(|_, a| a.strong_count() > 0);
        loaded.insert(hash, Arc::downgrade(&agent));
        Ok(agent)
    }

    /// A cached compilation, if there is a usable one. A file that does not load (written by
    /// another wasmtime version or configuration, truncated) is ignored and recompiled over.
    fn load_cached(&self, path: &Path) -> Option<Component> {
        match wasmtime::Engine::detect_precompiled_file(path) {
            Ok(Some(wasmtime::Precompiled::Component)) => {}
            Ok(_) => return None,
            Err(e) => {
                if path.exists() {
                    tracing::warn!(path = %path.display(), "unreadable compile cache entry, recompiling: {e:#}");
                }
                return None;
            }
        }
        // SAFETY: the file is in this runtime's own cache directory, written only by
        // `write_cache` from `Component::serialize` (never from a package or the network), and
        // wasmtime checks its engine compatibility hash and refuses a mismatch.
        match unsafe { Component::deserialize_file(&self.inner.engine, path) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), "compile cache entry does not load, recompiling: {e:#}");
                None
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The component-model preamble: `\0asm` and layer 1 (a core module has layer 0).
fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && &bytes[0..4] == b"\0asm" && bytes[6..8] == [1, 0]
}

/// The component exports its declared version's `guest` with `init` and `handle`; another
/// version's `guest` is `WrongInterfaceVersion` (found: what it exports; supported: what it
/// declares).
fn check_exports(
    engine: &Engine,
    component: &Component,
    version: InterfaceVersion,
) -> Result<(), PackageError> {
    let export = version.guest_export();
    let ty = component.component_type();
    let Some(guest) = ty.get_export(engine, export) else {
        let other = ty
            .exports(engine)
            .map(|(name, _)| name)
            .find_map(|name| name.strip_prefix("opengrid:agent/guest@"));
        return Err(match other {
            Some(found) => PackageError::WrongInterfaceVersion {
                found: format!("opengrid:agent@{found}"),
                supported: version.name().into(),
            },
            None => PackageError::MissingExport {
                name: export.into(),
            },
        });
    };
    let wasmtime::component::types::ComponentItem::ComponentInstance(instance) = guest.ty else {
        return Err(PackageError::ExportType {
            name: export.into(),
            reason: "not an instance".into(),
        });
    };
    for func in ["init", "handle"] {
        match instance.get_export(engine, func).map(|e| e.ty) {
            Some(wasmtime::component::types::ComponentItem::ComponentFunc(_)) => {}
            Some(_) => {
                return Err(PackageError::ExportType {
                    name: format!("{export}#{func}"),
                    reason: "not a function".into(),
                })
            }
            None => {
                return Err(PackageError::MissingExport {
                    name: format!("{export}#{func}"),
                })
            }
        }
    }
    Ok(())
}

/// The component imports only WASI and its declared version's interfaces; an agent interface of
/// another version is `WrongInterfaceVersion` (the component was built for another version than
/// its `agent.toml` declares).
fn check_imports(
    engine: &Engine,
    component: &Component,
    version: InterfaceVersion,
) -> Result<(), PackageError> {
    let ty = component.component_type();
    for (name, _) in ty.imports(engine) {
        if let Some((_, other)) = name
            .strip_prefix("opengrid:agent/")
            .and_then(|rest| rest.split_once('@'))
            .filter(|(_, v)| *v != version.number())
        {
            return Err(PackageError::WrongInterfaceVersion {
                found: format!("opengrid:agent@{other}"),
                supported: version.name().into(),
            });
        }
        if !(name.starts_with("wasi:") || version.provides(name)) {
            return Err(PackageError::UnsupportedImport { name: name.into() });
        }
    }
    Ok(())
}

/// Writes the compiled component atomically: a temp file in the same directory, then rename.
fn write_cache(path: &Path, component: &Component) -> Result<(), PackageError> {
    let bytes = component
        .serialize()
        .map_err(|e| PackageError::Compile(format!("serializing: {e:#}")))?;
    let tmp = path.with_extension(format!("cwasm.tmp{}", std::process::id()));
    let io = |source| PackageError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, &bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}

/// A loaded, validated component ready to instantiate (one `InstancePre`, shared by sessions).
pub struct LoadedAgent {
    runtime: Runtime,
    hash: String,
    /// Unique in its runtime: the warm set's key.
    serial: u64,
    id: String,
    pre: Pre,
    view: Arc<PackageView>,
}

/// The instantiation recipe of a loaded component, by the interface version it speaks.
enum Pre {
    V0_1(v0_1::AgentPre<CallState>),
    V0_2(v0_2::AgentPre<CallState>),
}

/// An instance's exports, by interface version.
enum Bindings {
    V0_1(v0_1::Agent),
    V0_2(v0_2::Agent),
}

impl Pre {
    async fn instantiate(&self, store: &mut Store<CallState>) -> wasmtime::Result<Bindings> {
        Ok(match self {
            Pre::V0_1(p) => Bindings::V0_1(p.instantiate_async(store).await?),
            Pre::V0_2(p) => Bindings::V0_2(p.instantiate_async(store).await?),
        })
    }
}

impl Bindings {
    async fn init(
        &self,
        store: &mut Store<CallState>,
        session: &str,
    ) -> wasmtime::Result<GuestResult<Vec<u8>>> {
        Ok(match self {
            Bindings::V0_1(b) => b
                .opengrid_agent0_1_0_guest()
                .call_init(store, session)
                .await?
                .map_err(GuestError::from),
            Bindings::V0_2(b) => b
                .opengrid_agent0_2_0_guest()
                .call_init(store, session)
                .await?
                .map_err(GuestError::from),
        })
    }

    async fn handle(
        &self,
        store: &mut Store<CallState>,
        state: &[u8],
        input: &str,
    ) -> wasmtime::Result<GuestResult<(Vec<u8>, String)>> {
        Ok(match self {
            Bindings::V0_1(b) => b
                .opengrid_agent0_1_0_guest()
                .call_handle(store, state, input)
                .await?
                .map(|h| (h.state, h.output))
                .map_err(GuestError::from),
            Bindings::V0_2(b) => b
                .opengrid_agent0_2_0_guest()
                .call_handle(store, state, input)
                .await?
                .map(|h| (h.state, h.output))
                .map_err(GuestError::from),
        })
    }
}

impl std::fmt::Debug for LoadedAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedAgent")
            .field("id", &self.id)
            .field("hash", &self.hash)
            .finish()
    }
}

impl Drop for LoadedAgent {
    /// Its warm instances go with it (they would only ever be evicted otherwise).
    fn drop(&mut self) {
        let gone = lock(&self.runtime.inner.warm).remove_agent(self.serial);
        drop(gone);
    }
}

/// An instance and its store, ready for one call. After a call that returned normally the caller
/// may hand it back with [`LoadedAgent::keep_warm`]; dropping it frees its pool slot.
pub(crate) struct Instance {
    store: Store<CallState>,
    bindings: Bindings,
    /// Where it is kept warm; `None` for a probe.
    key: Option<WarmKey>,
}

impl Instance {
    /// Readies a warm instance for the next call: its call info, a fresh deadline, the flags of
    /// the last call cleared. Memory already grown stays counted against the cap.
    fn prepare(&mut self, call: CallInfo, cfg: &RuntimeConfig) {
        let (memory, deadline_ticks) = effective(&call.limits, cfg);
        let s = self.store.data_mut();
        s.call = call;
        s.memory.limit = memory;
        s.deadline_ticks = deadline_ticks;
        s.ticks = 0;
        s.deadline_hit = false;
        s.memory.hit = false;
        self.store.set_epoch_deadline(1);
    }
}

/// What the guest's `handle` returned, with the instance it ran in.
pub(crate) struct Handled {
    pub state: Vec<u8>,
    pub output: String,
    pub instance: Instance,
}

impl LoadedAgent {
    /// The package hash.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// `<name>@<version>`: the handler id sessions name.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The runtime it is loaded in.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    fn store(&self, call: CallInfo) -> Store<CallState> {
        let inner = &self.runtime.inner;
        let cfg = &inner.config;
        // WASI with nothing behind it: no preopened directories, no environment, no arguments,
        // no network (every address denied, no name lookup), stdin closed, stdout/stderr dropped.
        let wasi = WasiCtxBuilder::new()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let (memory_limit, deadline_ticks) = effective(&call.limits, cfg);
        let mut store = Store::new(
            &inner.engine,
            CallState {
                wasi,
                table: ResourceTable::new(),
                memory: MemoryCap {
                    limit: memory_limit,
                    used: 0,
                    hit: false,
                    max_table_elements: TABLE_ELEMENTS,
                },
                call,
                package: self.view.clone(),
                ticks: 0,
                deadline_ticks,
                deadline_hit: false,
            },
        );
        store.limiter(|s| &mut s.memory);
        store.set_epoch_deadline(1);
        // Each tick the guest yields to the executor (other sessions run on this thread); at the
        // deadline it traps.
        store.epoch_deadline_callback(|mut cx| {
            let s = cx.data_mut();
            s.ticks += 1;
            if s.ticks >= s.deadline_ticks {
                s.deadline_hit = true;
                return Ok(UpdateDeadline::Interrupt);
            }
            Ok(UpdateDeadline::Yield(1))
        });
        store
    }

    /// A new instance from the pool. When the pool is exhausted and warm instances hold slots,
    /// the least recently used one gives way and instantiation is retried once: every component
    /// fits the per-component limits, so one freed slot is enough for any agent.
    async fn instantiate(&self, call: CallInfo, key: Option<WarmKey>) -> Result<Instance, Fault> {
        let inner = &self.runtime.inner;
        let mut store = self.store(call);
        let first = self.pre.instantiate(&mut store).await;
        let result = match first {
            Err(e) if e.is::<PoolConcurrencyLimitError>() && self.runtime.evict_lru() => {
                // A failed instantiation may leave parts of the instance in its store: start over
                // in a new one so those slots are freed now.
                store = self.store(store.into_data().call);
                self.pre.instantiate(&mut store).await
            }
            r => r,
        };
        let bindings = result.map_err(|e| classify(&store, e, &self.runtime, true))?;
        inner.counts.instances.fetch_add(1, Ordering::Relaxed);
        Ok(Instance {
            store,
            bindings,
            key,
        })
    }

    /// The session's warm instance readied for `call`, or a new one.
    async fn checkout(&self, call: CallInfo) -> Result<Instance, Fault> {
        let inner = &self.runtime.inner;
        let key =
            (!call.session_id.is_empty() && inner.config.warm_capacity() > 0).then(|| WarmKey {
                agent: self.serial,
                session: call.session_id.clone(),
            });
        let warm = key.as_ref().and_then(|k| lock(&inner.warm).take(k));
        match warm {
            Some(mut instance) => {
                instance.key = key;
                instance.prepare(call, &inner.config);
                inner.counts.warm_hits.fetch_add(1, Ordering::Relaxed);
                Ok(instance)
            }
            None => self.instantiate(call, key).await,
        }
    }

    /// Keeps an instance warm for its session's next input. Only for an instance whose last call
    /// returned normally and whose answer was accepted: after a fault or a guest error, drop it.
    pub(crate) fn keep_warm(&self, mut instance: Instance) {
        let Some(key) = instance.key.take() else {
            return;
        };
        // The session's context (and what it holds) is not kept alive by an idle instance.
        instance.store.data_mut().call.ctx = None;
        let inner = &self.runtime.inner;
        let gone = lock(&inner.warm).put(key, instance);
        // A capacity of 0 hands the instance itself back; that is not an eviction.
        if inner.config.warm_capacity() > 0 && !gone.is_empty() {
            let n = gone.len() as u64;
            inner.counts.warm_evictions.fetch_add(n, Ordering::Relaxed);
        }
        drop(gone);
    }

    /// Instantiates once and drops the instance: a health check at load, and what the benchmark
    /// of warm instantiation measures.
    pub async fn probe(&self) -> Result<(), Fault> {
        let call = CallInfo {
            session_id: String::new(),
            seq: 0,
            ctx: None,
            limits: Default::default(),
            effects: Default::default(),
        };
        self.instantiate(call, None).await.map(drop)
    }

    /// Runs the guest's `init` in the session's instance (a new one unless it has a warm one).
    /// On success the instance comes back with the state, for [`keep_warm`](Self::keep_warm).
    pub(crate) async fn call_init(
        &self,
        call: CallInfo,
    ) -> Result<GuestResult<(Vec<u8>, Instance)>, Fault> {
        let session = call.session_id.clone();
        let mut instance = self.checkout(call).await?;
        let r = instance
            .bindings
            .init(&mut instance.store, &session)
            .await
            .map_err(|e| classify(&instance.store, e, &self.runtime, false))?;
        Ok(r.map(|state| (state, instance)))
    }

    /// Runs the guest's `handle` in the session's instance: the state goes in and comes out, so a
    /// fault leaves the caller's copy untouched, and the instance it faulted in is dropped here.
    pub(crate) async fn call_handle(
        &self,
        call: CallInfo,
        state: &[u8],
        input: &str,
    ) -> Result<GuestResult<Handled>, Fault> {
        let mut instance = self.checkout(call).await?;
        let r = instance
            .bindings
            .handle(&mut instance.store, state, input)
            .await
            .map_err(|e| classify(&instance.store, e, &self.runtime, false))?;
        Ok(r.map(|(state, output)| Handled {
            state,
            output,
            instance,
        }))
    }
}

/// The memory cap and the deadline in epoch ticks of a call: the session's limits within the
/// runtime's bounds.
fn effective(limits: &crate::limits::AgentLimits, cfg: &RuntimeConfig) -> (usize, u64) {
    let (memory, deadline) = limits.within(cfg.max_memory_bytes, cfg.deadline);
    let ticks = (deadline.as_nanos() / cfg.epoch_tick.as_nanos().max(1)).max(1) as u64;
    (memory, ticks)
}

/// Names a failed call: the deadline and memory flags the store set win over the trap they
/// caused; otherwise a failed instantiation (pool exhausted) or a trap.
fn classify(
    store: &Store<CallState>,
    e: wasmtime::Error,
    runtime: &Runtime,
    instantiating: bool,
) -> Fault {
    let s = store.data();
    let cfg = &runtime.inner.config;
    let fault = if s.deadline_hit {
        Fault::Deadline(cfg.epoch_tick * s.deadline_ticks.min(u32::MAX as u64) as u32)
    } else if s.memory.hit {
        Fault::Memory(s.memory.limit)
    } else if instantiating {
        Fault::Instantiate(format!("{e:#}"))
    } else {
        Fault::Trap(format!("{e:#}"))
    };
    runtime.record_fault(&fault);
    fault
}

impl Runtime {
    /// Drops the least recently used warm instance, freeing its pool slot; false if none.
    fn evict_lru(&self) -> bool {
        let inner = &self.inner;
        let Some(instance) = lock(&inner.warm).pop_lru() else {
            return false;
        };
        drop(instance);
        inner.counts.warm_evictions.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("pool exhausted: a warm instance gave way");
        true
    }

    pub(crate) fn record_fault(&self, fault: &Fault) {
        let i = match fault {
            Fault::Trap(_) => 0,
            Fault::Deadline(_) => 1,
            Fault::Memory(_) => 2,
            Fault::Instantiate(_) => 3,
        };
        self.inner.faults[i].fetch_add(1, Ordering::Relaxed);
        self.inner
            .metrics
            .faults
            .add(1, &[KeyValue::new("kind", fault.kind())]);
        tracing::warn!(kind = fault.kind(), "agent fault: {fault}");
    }
}

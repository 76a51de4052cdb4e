//! The model pool: registered models, the bounded request queue, the dynamic batcher and the
//! dedicated `og-infer-N` threads that run ONNX Runtime.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::metrics::{Meter, MeterProvider as _};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::device::{self, DevicePreference, DeviceReport, ExecutionProvider};
use crate::error::{InferError, ModelError, RuntimeError};
use crate::metrics::{self, micros, Metrics, MetricsSnapshot};
use crate::model::{self, Dim, ModelId, ModelInfo};
use crate::tensor::{ElementType, Tensor, TensorData};
use crate::usage::{CallerId, InferenceUsage, UsageSink};

/// Configuration of the inference runtime. `Default` runs on one laptop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// `libonnxruntime.so` to load; `None` reads `ORT_DYLIB_PATH`.
    pub dylib_path: Option<PathBuf>,
    /// CUDA when available (`auto`) or always CPU (`cpu`).
    pub device: DevicePreference,
    /// Dedicated inference threads (`og-infer-0..N`). Default: 2.
    pub inference_threads: usize,
    /// ONNX Runtime intra-op threads per run. Default: 1 (parallelism comes from batching and
    /// from `inference_threads`; more would compete with the control plane for cores).
    pub intra_op_threads: usize,
    /// Requests that may wait in the queue; one more is refused with
    /// [`InferError::Backpressure`]. Default: 1024.
    pub queue_capacity: usize,
    /// Most rows (dimension 0) concatenated into one run. Default: 32.
    pub max_batch_rows: usize,
    /// Longest a request waits for others to join its batch. Default: 2 ms.
    #[serde(with = "duration_micros")]
    pub max_wait: Duration,
    /// Largest model file accepted, bytes. Default: 1 GiB.
    pub max_model_bytes: u64,
}

mod duration_micros {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_micros(u64::deserialize(d)?))
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            dylib_path: None,
            device: DevicePreference::Auto,
            inference_threads: 2,
            intra_op_threads: 1,
            queue_capacity: 1024,
            max_batch_rows: 32,
            max_wait: Duration::from_millis(2),
            max_model_bytes: 1 << 30,
        }
    }
}

impl RuntimeConfig {
    /// Checks every field, naming the first bad one.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        let bad = |field, reason: &str| {
            Err(RuntimeError::Config {
                field,
                reason: reason.to_owned(),
            })
        };
        if !(1..=256).contains(&self.inference_threads) {
            return bad("inference_threads", "must be between 1 and 256");
        }
        if !(1..=256).contains(&self.intra_op_threads) {
            return bad("intra_op_threads", "must be between 1 and 256");
        }
        if self.queue_capacity == 0 {
            return bad("queue_capacity", "must be at least 1");
        }
        if !(1..=65_536).contains(&self.max_batch_rows) {
            return bad("max_batch_rows", "must be between 1 and 65536");
        }
        if self.max_wait > Duration::from_secs(1) {
            return bad(
                "max_wait",
                "must be at most 1 s (it adds to every request's latency)",
            );
        }
        if self.max_model_bytes == 0 {
            return bad("max_model_bytes", "must be at least 1");
        }
        Ok(())
    }
}

/// An output together with what producing it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Inference {
    /// The model's output for this request's rows.
    pub output: Tensor,
    /// What it cost.
    pub usage: InferenceUsage,
}

struct LoadedModel {
    info: ModelInfo,
    provider: ExecutionProvider,
    session: Mutex<ort::session::Session>,
}

struct Pending {
    input: Tensor,
    caller: CallerId,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Inference, InferError>>,
}

struct Lane {
    model: Arc<LoadedModel>,
    pending: VecDeque<Pending>,
    rows: usize,
}

#[derive(Default)]
struct Queue {
    lanes: HashMap<ModelId, Lane>,
    len: usize,
    shutdown: bool,
}

struct Shared {
    config: RuntimeConfig,
    device: DeviceReport,
    models: RwLock<HashMap<ModelId, Arc<LoadedModel>>>,
    queue: Mutex<Queue>,
    wake: Condvar,
    depth: AtomicUsize,
    metrics: Metrics,
    sink: Option<Arc<dyn UsageSink>>,
}

impl Shared {
    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The inference plane of a node: ONNX Runtime, the registered models and the threads that run
/// them. Dropping it stops the threads; queued requests then fail with
/// [`InferError::ShuttingDown`].
pub struct InferenceRuntime {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for InferenceRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferenceRuntime")
            .field("device", &self.shared.device)
            .field("threads", &self.threads.len())
            .finish()
    }
}

/// Where a runtime reports besides its callers. `Default` reports nowhere.
#[derive(Clone, Default)]
pub struct Reporting {
    /// Receives every answered request's usage.
    pub usage: Option<Arc<dyn UsageSink>>,
    /// The meter the runtime's instruments are created on (listed in the crate documentation);
    /// its provider's exporter publishes them. `None`: nothing is exported.
    pub meter: Option<Meter>,
}

impl std::fmt::Debug for Reporting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporting")
            .field("usage", &self.usage.is_some())
            .field("meter", &self.meter.is_some())
            .finish()
    }
}

impl InferenceRuntime {
    /// Loads ONNX Runtime, decides the execution provider and starts the inference threads.
    pub fn start(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        Self::start_with(config, Reporting::default())
    }

    /// As [`start`](Self::start), reporting usage and metrics where `reporting` says.
    pub fn start_with(config: RuntimeConfig, reporting: Reporting) -> Result<Self, RuntimeError> {
        config.validate()?;
        let Reporting { usage: sink, meter } = reporting;
        let meter = meter.unwrap_or_else(|| {
            opentelemetry::metrics::NoopMeterProvider::new().meter("opengrid_runtime_gpu")
        });
        let device = device::start_device(
            config.dylib_path.as_deref(),
            config.device,
            config.inference_threads,
        )?;
        tracing::info!(
            provider = device.provider_name,
            ort_version = device.ort_version,
            cpu_reason = device.cpu_reason.as_deref().unwrap_or(""),
            threads = config.inference_threads,
            queue_capacity = config.queue_capacity,
            max_batch_rows = config.max_batch_rows,
            max_wait_us = micros(config.max_wait),
            "inference runtime starting"
        );
        device::publish_report(&device);
        let shared = Arc::new(Shared {
            config,
            device,
            models: RwLock::new(HashMap::new()),
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            depth: AtomicUsize::new(0),
            metrics: Metrics::new(&meter),
            sink,
        });
        let observed = Arc::downgrade(&shared);
        metrics::observe_on(&meter, move || observed.upgrade().map(|s| snapshot(&s)));
        let mut runtime = Self {
            shared: shared.clone(),
            threads: Vec::new(),
        };
        for i in 0..shared.config.inference_threads {
            let name = format!("og-infer-{i}");
            let s = shared.clone();
            let handle = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || worker_loop(&s))
                .map_err(|source| RuntimeError::Spawn { name, source })?;
            runtime.threads.push(handle);
        }
        Ok(runtime)
    }

    /// Registers the model stored at `path` under its content hash `expected`, loading it unless
    /// a model with that hash is already loaded (then the file is not read again).
    ///
    /// Blocking (reads the file and builds an ONNX Runtime session): call it from a blocking
    /// context (`tokio::task::spawn_blocking`), never on the control plane.
    pub fn register_model(
        &self,
        path: impl AsRef<Path>,
        expected: &ModelId,
    ) -> Result<ModelInfo, ModelError> {
        if let Some(m) = self.loaded(expected) {
            return Ok(m.info.clone());
        }
        let path = path.as_ref();
        let bytes = model::read_model_file(path, self.shared.config.max_model_bytes)?;
        let actual = ModelId::of_bytes(&bytes);
        if actual != *expected {
            tracing::warn!(path = %path.display(), %expected, %actual, "model hash mismatch");
            return Err(ModelError::HashMismatch {
                path: path.to_owned(),
                expected: *expected,
                actual,
            });
        }
        self.load(actual, path, &bytes)
    }

    /// Registers the model stored at `path` under the hash of its bytes, whatever they are.
    /// For models the node itself trusts (tests, local demos); assets named by a manifest go
    /// through [`register_model`](Self::register_model).
    pub fn register_model_file(&self, path: impl AsRef<Path>) -> Result<ModelInfo, ModelError> {
        let path = path.as_ref();
        let bytes = model::read_model_file(path, self.shared.config.max_model_bytes)?;
        let id = ModelId::of_bytes(&bytes);
        if let Some(m) = self.loaded(&id) {
            return Ok(m.info.clone());
        }
        self.load(id, path, &bytes)
    }

    fn loaded(&self, id: &ModelId) -> Option<Arc<LoadedModel>> {
        self.shared
            .models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    fn load(&self, id: ModelId, path: &Path, bytes: &[u8]) -> Result<ModelInfo, ModelError> {
        if self.shared.lock_queue().shutdown {
            return Err(ModelError::ShuttingDown);
        }
        let started = Instant::now();
        let (session, provider) = build_session(
            bytes,
            self.shared.device.execution_provider,
            self.shared.config.intra_op_threads,
        )
        .map_err(|reason| {
            tracing::warn!(model = %id, path = %path.display(), %reason, "model failed to load");
            ModelError::Load {
                id,
                path: path.to_owned(),
                reason,
            }
        })?;
        if session.inputs.len() != 1 || session.outputs.len() != 1 {
            return Err(ModelError::Unsupported {
                id,
                reason: format!(
                    "{} inputs and {} outputs; the pool serves models with exactly one of each",
                    session.inputs.len(),
                    session.outputs.len()
                ),
            });
        }
        let input =
            model::spec_from_ort(id, &session.inputs[0].name, &session.inputs[0].input_type)?;
        let output = model::spec_from_ort(
            id,
            &session.outputs[0].name,
            &session.outputs[0].output_type,
        )?;
        let batchable = input.dims[0] == Dim::Dynamic && output.dims[0] == Dim::Dynamic;
        let info = ModelInfo {
            id,
            path: path.to_owned(),
            size_bytes: bytes.len() as u64,
            input,
            output,
            batchable,
        };
        tracing::info!(
            model = %id,
            path = %path.display(),
            provider = provider.ort_name(),
            input = %info.input.shape_text(),
            output = %info.output.shape_text(),
            batchable,
            took_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        let loaded = Arc::new(LoadedModel {
            info: info.clone(),
            provider,
            session: Mutex::new(session),
        });
        let mut models = self
            .shared
            .models
            .write()
            .unwrap_or_else(|e| e.into_inner());
        // Two registrations of the same bytes may race; the first one wins, both see its info.
        let kept = models.entry(id).or_insert(loaded);
        Ok(kept.info.clone())
    }

    /// A cloneable handle for handlers, billed to [`CallerId::unattributed`] until
    /// [`InferenceHandle::for_caller`] names the caller.
    pub fn handle(&self) -> InferenceHandle {
        InferenceHandle {
            shared: self.shared.clone(),
            caller: CallerId::unattributed(),
        }
    }

    /// The device decided at start.
    pub fn device(&self) -> &DeviceReport {
        &self.shared.device
    }

    /// Information on a registered model.
    pub fn model_info(&self, id: &ModelId) -> Option<ModelInfo> {
        self.loaded(id).map(|m| m.info.clone())
    }

    /// All registered models.
    pub fn models(&self) -> Vec<ModelInfo> {
        let models = self.shared.models.read().unwrap_or_else(|e| e.into_inner());
        models.values().map(|m| m.info.clone()).collect()
    }

    /// A copy of every metric now.
    pub fn metrics(&self) -> MetricsSnapshot {
        snapshot(&self.shared)
    }

    /// The configuration the runtime runs with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.shared.config
    }

    /// Stops the threads after their current run; queued requests fail with `ShuttingDown`.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.lock_queue().shutdown = true;
        self.shared.wake.notify_all();
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("an inference thread panicked");
            }
        }
    }
}

impl Drop for InferenceRuntime {
    fn drop(&mut self) {
        self.stop();
    }
}

fn snapshot(shared: &Shared) -> MetricsSnapshot {
    let models = shared
        .models
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .len();
    shared.metrics.snapshot(
        shared.depth.load(Ordering::Relaxed),
        shared.config.queue_capacity,
        models,
        shared.device.execution_provider == ExecutionProvider::Cuda,
    )
}

/// Handler-facing, cloneable access to the pool. Cheap to clone; every clone shares the queue.
#[derive(Clone)]
pub struct InferenceHandle {
    shared: Arc<Shared>,
    caller: CallerId,
}

impl std::fmt::Debug for InferenceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferenceHandle")
            .field("caller", &self.caller)
            .finish()
    }
}

impl InferenceHandle {
    /// A handle whose requests are billed to `caller` (usually the session id).
    pub fn for_caller(&self, caller: CallerId) -> Self {
        Self {
            shared: self.shared.clone(),
            caller,
        }
    }

    /// Who this handle's requests are billed to.
    pub fn caller(&self) -> &CallerId {
        &self.caller
    }

    /// Runs `model` on `input` and returns its output.
    ///
    /// The input is checked against the model's input (element type, rank, fixed dimensions)
    /// before it is queued. Returns [`InferError::Backpressure`] at once when the queue is full.
    /// Never blocks the calling thread; the run happens on an `og-infer-N` thread, possibly
    /// batched with other requests for the same model.
    pub async fn infer(&self, model: &ModelId, input: Tensor) -> Result<Tensor, InferError> {
        self.infer_with_usage(model, input).await.map(|i| i.output)
    }

    /// As [`infer`](Self::infer), also returning what the request cost.
    pub async fn infer_with_usage(
        &self,
        model: &ModelId,
        input: Tensor,
    ) -> Result<Inference, InferError> {
        let rx = self.submit(model, input)?;
        rx.await.map_err(|_| InferError::ShuttingDown)?
    }

    /// Validates and queues a request, returning where its answer will arrive.
    fn submit(
        &self,
        model: &ModelId,
        input: Tensor,
    ) -> Result<oneshot::Receiver<Result<Inference, InferError>>, InferError> {
        let shared = &self.shared;
        let loaded = {
            let models = shared.models.read().unwrap_or_else(|e| e.into_inner());
            models.get(model).cloned()
        };
        let Some(loaded) = loaded else {
            shared
                .metrics
                .rejected_invalid
                .fetch_add(1, Ordering::Relaxed);
            return Err(InferError::UnknownModel(*model));
        };
        if let Err(e) = loaded.info.validate(&input) {
            shared
                .metrics
                .rejected_invalid
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(model = %model, error = %e, "request rejected");
            return Err(e);
        }
        let (tx, rx) = oneshot::channel();
        let wake = {
            let mut q = shared.lock_queue();
            if q.shutdown {
                return Err(InferError::ShuttingDown);
            }
            if q.len >= shared.config.queue_capacity {
                drop(q);
                shared
                    .metrics
                    .rejected_backpressure
                    .fetch_add(1, Ordering::Relaxed);
                return Err(InferError::Backpressure {
                    capacity: shared.config.queue_capacity,
                });
            }
            let rows = input.rows();
            let limit = if loaded.info.batchable {
                shared.config.max_batch_rows
            } else {
                1
            };
            let lane = q.lanes.entry(*model).or_insert_with(|| Lane {
                model: loaded,
                pending: VecDeque::new(),
                rows: 0,
            });
            let was_empty = lane.pending.is_empty();
            lane.pending.push_back(Pending {
                input,
                caller: self.caller.clone(),
                enqueued: Instant::now(),
                reply: tx,
            });
            lane.rows += rows;
            // Wake a thread only when this request changes what the threads wait for: a new
            // head (a new deadline to watch) or a batch that just became full. Joining a lane
            // that already has a head changes neither, and waking a thread per request would
            // cost a context switch each while a batch forms.
            let wake = was_empty || lane.rows >= limit;
            q.len += 1;
            shared.depth.store(q.len, Ordering::Relaxed);
            shared.metrics.observe_depth(q.len);
            wake
        };
        shared.metrics.requests.fetch_add(1, Ordering::Relaxed);
        if wake {
            shared.wake.notify_one();
        }
        Ok(rx)
    }

    /// Information on a registered model.
    pub fn model_info(&self, id: &ModelId) -> Option<ModelInfo> {
        let models = self.shared.models.read().unwrap_or_else(|e| e.into_inner());
        models.get(id).map(|m| m.info.clone())
    }

    /// The device decided at start.
    pub fn device(&self) -> &DeviceReport {
        &self.shared.device
    }

    /// A copy of every metric now.
    pub fn metrics(&self) -> MetricsSnapshot {
        snapshot(&self.shared)
    }
}

/// Requests for one model taken from the queue to run together.
struct Batch {
    model: Arc<LoadedModel>,
    requests: Vec<Pending>,
}

fn worker_loop(shared: &Shared) {
    tracing::debug!("inference thread started");
    while let Some(batch) = next_batch(shared) {
        let model = batch.model.info.id;
        // A panic inside ONNX Runtime bindings must not take the thread (and the node's
        // inference capacity) with it; the requests of that batch are answered with an error
        // when their senders drop.
        if catch_unwind(AssertUnwindSafe(|| run_batch(shared, batch))).is_err() {
            shared.metrics.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%model, "inference run panicked; its requests failed");
        }
    }
    tracing::debug!("inference thread stopped");
}

/// Waits until some lane holds a full batch or its oldest request has waited `max_wait`, and
/// takes that batch. Returns `None` on shutdown, after failing every queued request.
fn next_batch(shared: &Shared) -> Option<Batch> {
    let max_rows = shared.config.max_batch_rows;
    let max_wait = shared.config.max_wait;
    let mut q = shared.lock_queue();
    loop {
        if q.shutdown {
            for lane in q.lanes.values_mut() {
                for p in lane.pending.drain(..) {
                    let _ = p.reply.send(Err(InferError::ShuttingDown));
                }
                lane.rows = 0;
            }
            q.len = 0;
            shared.depth.store(0, Ordering::Relaxed);
            return None;
        }
        let now = Instant::now();
        let mut ready: Option<(ModelId, Instant)> = None;
        let mut next_deadline: Option<Instant> = None;
        for (id, lane) in &q.lanes {
            let Some(head) = lane.pending.front() else {
                continue;
            };
            let limit = if lane.model.info.batchable {
                max_rows
            } else {
                1
            };
            let deadline = head.enqueued + max_wait;
            if lane.rows >= limit || deadline <= now {
                // oldest ready head first, so no model starves another
                if ready.is_none_or(|(_, t)| head.enqueued < t) {
                    ready = Some((*id, head.enqueued));
                }
            } else if next_deadline.is_none_or(|d| deadline < d) {
                next_deadline = Some(deadline);
            }
        }
        if let Some((id, _)) = ready {
            let batch = take_batch(&mut q, &id, max_rows);
            shared.depth.store(q.len, Ordering::Relaxed);
            if q.len > 0 {
                // let an idle thread watch the rest of the queue while this one runs
                shared.wake.notify_one();
            }
            if let Some(batch) = batch {
                return Some(batch);
            }
            continue;
        }
        q = match next_deadline {
            Some(d) => {
                shared
                    .wake
                    .wait_timeout(q, d.saturating_duration_since(now))
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => shared.wake.wait(q).unwrap_or_else(|e| e.into_inner()),
        };
    }
}

/// Pops the head of `id`'s lane and every following request that fits in the same run (same
/// trailing shape, total rows within `max_rows`). Requests whose caller stopped waiting are
/// dropped. Returns `None` if only such abandoned requests were there.
fn take_batch(q: &mut Queue, id: &ModelId, max_rows: usize) -> Option<Batch> {
    let lane = q.lanes.get_mut(id)?;
    let limit = if lane.model.info.batchable {
        max_rows
    } else {
        1
    };
    let mut requests: Vec<Pending> = Vec::new();
    let mut rows = 0usize;
    let mut removed = 0usize;
    while let Some(next) = lane.pending.front() {
        if next.reply.is_closed() {
            let p = lane.pending.pop_front()?;
            lane.rows -= p.input.rows();
            removed += 1;
            continue;
        }
        if let Some(first) = requests.first() {
            let fits = lane.model.info.batchable
                && rows + next.input.rows() <= limit
                && next.input.shape()[1..] == first.input.shape()[1..];
            if !fits {
                break;
            }
        }
        let p = lane.pending.pop_front()?;
        rows += p.input.rows();
        lane.rows -= p.input.rows();
        removed += 1;
        requests.push(p);
        if rows >= limit {
            break;
        }
    }
    let model = lane.model.clone();
    q.len -= removed;
    if requests.is_empty() {
        None
    } else {
        Some(Batch { model, requests })
    }
}

fn run_batch(shared: &Shared, batch: Batch) {
    let Batch { model, requests } = batch;
    let started = Instant::now();
    let waits: Vec<u64> = requests
        .iter()
        .map(|p| micros(started.saturating_duration_since(p.enqueued)))
        .collect();
    for w in &waits {
        shared.metrics.observe_queue_wait(Duration::from_micros(*w));
    }
    let rows: Vec<usize> = requests.iter().map(|p| p.input.rows()).collect();
    let total_rows: usize = rows.iter().sum();
    let result = if requests.len() == 1 {
        run_model(&model, &requests[0].input)
    } else {
        match Tensor::concat_rows(requests.iter().map(|p| &p.input)) {
            Some(input) => run_model(&model, &input),
            None => Err(InferError::Run {
                model: model.info.id,
                reason: "internal: batched requests have different shapes".into(),
            }),
        }
    };
    let took = started.elapsed();
    shared.metrics.observe_run(total_rows, took);
    let split = result.and_then(|out| {
        out.split_rows(&rows).ok_or_else(|| InferError::Output {
            model: model.info.id,
            reason: format!(
                "output `{}` does not have one row per input row ({} input rows)",
                model.info.output.name, total_rows
            ),
        })
    });
    match split {
        Ok(outputs) => {
            let run_us = micros(took);
            let n = requests.len();
            for ((p, output), wait) in requests.into_iter().zip(outputs).zip(waits) {
                let r = p.input.rows();
                let usage = InferenceUsage {
                    caller: p.caller,
                    model: model.info.id,
                    rows: r,
                    batch_rows: total_rows,
                    batch_requests: n,
                    queue_wait_us: wait,
                    run_us,
                    compute_us: run_us.saturating_mul(r as u64) / total_rows.max(1) as u64,
                    provider: model.provider,
                };
                if let Some(sink) = &shared.sink {
                    sink.record(&usage);
                }
                shared.metrics.completed.fetch_add(1, Ordering::Relaxed);
                let _ = p.reply.send(Ok(Inference { output, usage }));
            }
        }
        Err(e) if requests.len() > 1 => {
            // One bad request (e.g. a token id out of range) fails the whole run; run each on
            // its own so only the bad one gets the error.
            tracing::warn!(model = %model.info.id, error = %e, requests = requests.len(),
                "batched run failed; isolating requests");
            for p in requests {
                run_batch(
                    shared,
                    Batch {
                        model: model.clone(),
                        requests: vec![p],
                    },
                );
            }
        }
        Err(e) => {
            shared.metrics.failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(model = %model.info.id, error = %e, "inference failed");
            for p in requests {
                let _ = p.reply.send(Err(e.clone()));
            }
        }
    }
}

/// One ONNX Runtime run of `input` through `model`'s session.
fn run_model(model: &LoadedModel, input: &Tensor) -> Result<Tensor, InferError> {
    let id = model.info.id;
    let run_err = |e: ort::Error| InferError::Run {
        model: id,
        reason: e.to_string(),
    };
    let shape = input.shape().to_vec();
    let value: ort::session::SessionInputValue<'_> = match input.data() {
        TensorData::F32(v) => ort::value::TensorRef::from_array_view((shape, v.as_slice()))
            .map_err(run_err)?
            .into(),
        TensorData::I64(v) => ort::value::TensorRef::from_array_view((shape, v.as_slice()))
            .map_err(run_err)?
            .into(),
    };
    let mut session = model.session.lock().unwrap_or_else(|e| e.into_inner());
    let outputs = session
        .run(vec![(
            std::borrow::Cow::Borrowed(model.info.input.name.as_str()),
            value,
        )])
        .map_err(run_err)?;
    let out = outputs
        .get(model.info.output.name.as_str())
        .ok_or_else(|| InferError::Output {
            model: id,
            reason: format!("no output named `{}`", model.info.output.name),
        })?;
    let out_err = |e: ort::Error| InferError::Output {
        model: id,
        reason: e.to_string(),
    };
    let to_shape = |dims: &[i64]| -> Result<Vec<usize>, InferError> {
        dims.iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| InferError::Output {
                model: id,
                reason: format!("negative dimension in output shape {dims:?}"),
            })
    };
    let tensor = match model.info.output.dtype {
        ElementType::F32 => {
            let (shape, data) = out.try_extract_tensor::<f32>().map_err(out_err)?;
            Tensor::f32(to_shape(shape)?, data.to_vec())
        }
        ElementType::I64 => {
            let (shape, data) = out.try_extract_tensor::<i64>().map_err(out_err)?;
            Tensor::i64(to_shape(shape)?, data.to_vec())
        }
    };
    tensor.map_err(|e| InferError::Output {
        model: id,
        reason: e.to_string(),
    })
}

/// Builds a session on `provider`, falling back to CPU if the CUDA provider fails for this
/// model. Returns the session and the provider it ended up on.
fn build_session(
    bytes: &[u8],
    provider: ExecutionProvider,
    intra_op_threads: usize,
) -> Result<(ort::session::Session, ExecutionProvider), String> {
    let build = |provider: ExecutionProvider| -> Result<ort::session::Session, String> {
        catch_unwind(AssertUnwindSafe(|| {
            use ort::execution_providers::CUDAExecutionProvider;
            use ort::session::builder::GraphOptimizationLevel;
            let mut b = ort::session::Session::builder()?
                .with_optimization_level(GraphOptimizationLevel::Level3)?
                .with_intra_threads(intra_op_threads)?
                .with_inter_threads(1)?
                // idle ONNX Runtime threads must not spin on cores the control plane needs
                .with_intra_op_spinning(false)?
                .with_config_entry("session.inter_op.allow_spinning", "0")?;
            if provider == ExecutionProvider::Cuda {
                b = b.with_execution_providers([CUDAExecutionProvider::default()
                    .build()
                    .error_on_failure()])?;
            }
            b.commit_from_memory(bytes)
        }))
        .map_err(|_| "ONNX Runtime panicked while loading the model".to_owned())?
        .map_err(|e| e.to_string())
    };
    match build(provider) {
        Ok(s) => Ok((s, provider)),
        Err(e) if provider == ExecutionProvider::Cuda => {
            tracing::warn!(error = %e, "CUDA session failed for this model; loading it on CPU");
            build(ExecutionProvider::Cpu).map(|s| (s, ExecutionProvider::Cpu))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_fields_are_checked() {
        RuntimeConfig::default().validate().unwrap();
        let cases: [(&str, RuntimeConfig); 5] = [
            (
                "inference_threads",
                RuntimeConfig {
                    inference_threads: 0,
                    ..Default::default()
                },
            ),
            (
                "queue_capacity",
                RuntimeConfig {
                    queue_capacity: 0,
                    ..Default::default()
                },
            ),
            (
                "max_batch_rows",
                RuntimeConfig {
                    max_batch_rows: 0,
                    ..Default::default()
                },
            ),
            (
                "max_wait",
                RuntimeConfig {
                    max_wait: Duration::from_secs(5),
                    ..Default::default()
                },
            ),
            (
                "intra_op_threads",
                RuntimeConfig {
                    intra_op_threads: 0,
                    ..Default::default()
                },
            ),
        ];
        for (field, config) in cases {
            match config.validate() {
                Err(RuntimeError::Config { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected a config error, got {other:?}"),
            }
        }
    }

    #[test]
    fn config_rejects_unknown_fields() {
        let err = serde_json::from_str::<RuntimeConfig>(r#"{"queue_capacityy": 3}"#).unwrap_err();
        assert!(err.to_string().contains("queue_capacityy"), "{err}");
        let c: RuntimeConfig =
            serde_json::from_str(r#"{"queue_capacity": 3, "max_wait": 500}"#).unwrap();
        assert_eq!(c.queue_capacity, 3);
        assert_eq!(c.max_wait, Duration::from_micros(500));
    }
}

//! # OpenGrid inference plane
//!
//! A session's handler calls models ("the agent's brain"). This crate runs those models with
//! [ONNX Runtime](https://onnxruntime.ai) through `ort`, on **dedicated OS threads**
//! (`og-infer-0..N`) that belong neither to the control plane (health, admission, placement)
//! nor to the handler workers. Control and compute never mix: a node whose inference threads
//! are all busy still answers the control plane at once, because that plane's threads never
//! wait on this crate, and ONNX Runtime is configured not to spin on idle cores.
//!
//! ## How a request flows
//! 1. A handler holds an [`InferenceHandle`] (cloneable; [`InferenceHandle::for_caller`] bills a
//!    session) and calls [`InferenceHandle::infer`] with a [`ModelId`] and a [`Tensor`].
//! 2. The input is checked against the model's input metadata (element type, rank, fixed
//!    dimensions): a mismatch is [`InferError::DtypeMismatch`] / [`InferError::ShapeMismatch`],
//!    before anything is queued.
//! 3. The request joins a **bounded queue** ([`RuntimeConfig::queue_capacity`]). When it is full
//!    the call returns [`InferError::Backpressure`] immediately: memory never grows with load.
//! 4. An inference thread takes requests for the same model as one **dynamic batch**: it runs as
//!    soon as [`RuntimeConfig::max_batch_rows`] rows are waiting, or when the oldest request has
//!    waited [`RuntimeConfig::max_wait`]. Inputs are concatenated along dimension 0, run once,
//!    and the output is split back. If the batched run fails, each request is re-run alone so
//!    only a bad request gets the error.
//! 5. The caller's future resolves with the output; [`InferenceHandle::infer_with_usage`] also
//!    returns the request's [`InferenceUsage`] (queue wait, run time, its share of the run,
//!    batch size), and a [`UsageSink`] (e.g. [`UsageLedger`]) receives every usage record, which
//!    the session layer folds into receipts.
//!
//! ## Models are assets
//! A model is registered by the blake3 hash of its file ([`ModelId`]), the same content address
//! the asset plane uses: [`InferenceRuntime::register_model`] verifies the hash
//! ([`ModelError::HashMismatch`] otherwise) and loads each model once per node. A file ONNX
//! Runtime cannot load is [`ModelError::Load`]; the pool keeps serving the other models.
//! Served models have one input and one output, float32 or int64; a dynamic first dimension
//! makes them batchable.
//!
//! ## Device
//! `libonnxruntime.so` is loaded at run time from `ORT_DYLIB_PATH` (set by
//! `scripts/setup-python.sh`, which installs the `onnxruntime` wheel). The library is checked
//! before `ort` sees it, so a missing or wrong library is a [`RuntimeError`] naming the variable,
//! not a panic. At start the runtime uses the CUDA execution provider if the loaded ONNX Runtime
//! has it and it registers, else the CPU; [`DeviceReport`] (from [`InferenceRuntime::device`] or
//! [`device_report`]) says which and why, for `/health` and metrics.
//!
//! ## Metrics
//! OpenTelemetry instruments on the [`Meter`](opentelemetry::metrics::Meter) passed in
//! [`Reporting::meter`] to [`InferenceRuntime::start_with`]; the node exports them on its
//! Prometheus `/metrics` (and OTLP when enabled). This crate depends on the OpenTelemetry API
//! only, never on an SDK or exporter. Counters and gauges are also readable as a
//! [`MetricsSnapshot`] ([`InferenceRuntime::metrics`]) for `/health` and tests.
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | `opengrid_runtime_gpu_requests_total` | counter | requests accepted into the queue |
//! | `opengrid_runtime_gpu_completed_total` | counter | requests answered with an output |
//! | `opengrid_runtime_gpu_rejected_backpressure_total` | counter | requests refused, queue full |
//! | `opengrid_runtime_gpu_rejected_invalid_total` | counter | requests refused: unknown model, wrong dtype or shape |
//! | `opengrid_runtime_gpu_failed_total` | counter | accepted requests ONNX Runtime failed on |
//! | `opengrid_runtime_gpu_batches_total` | counter | model runs |
//! | `opengrid_runtime_gpu_batch_rows_total` | counter | rows summed over all runs |
//! | `opengrid_runtime_gpu_batch_size_rows` | histogram ([`ROW_BUCKETS`]) | rows per run |
//! | `opengrid_runtime_gpu_inference_seconds` | histogram ([`SECONDS_BUCKETS`]) | wall time of one run |
//! | `opengrid_runtime_gpu_queue_wait_seconds` | histogram ([`SECONDS_BUCKETS`]) | enqueue to start of its run |
//! | `opengrid_runtime_gpu_queue_depth_requests` | gauge | requests queued now |
//! | `opengrid_runtime_gpu_queue_depth_max_requests` | gauge | highest queue depth seen |
//! | `opengrid_runtime_gpu_queue_capacity_requests` | gauge | configured queue bound |
//! | `opengrid_runtime_gpu_models_loaded` | gauge | models registered |
//! | `opengrid_runtime_gpu_cuda_enabled` | gauge | 1 when the CUDA provider is in use |
//!
//! ## Example
//! ```no_run
//! use opengrid_runtime_gpu::{CallerId, InferenceRuntime, ModelId, RuntimeConfig, Tensor};
//!
//! # async fn demo(model_path: &std::path::Path, id: ModelId) -> anyhow::Result<()> {
//! let runtime = InferenceRuntime::start(RuntimeConfig::default())?; // reads ORT_DYLIB_PATH
//! runtime.register_model(model_path, &id)?; // verifies the blake3 hash
//! let infer = runtime.handle().for_caller(CallerId::new("session-42"));
//! let logits = infer.infer(&id, Tensor::f32([1, 16], vec![0.5; 16])?).await?;
//! println!("{:?} on {}", logits.as_f32(), runtime.device().provider_name);
//! # Ok(()) }
//! ```

mod device;
mod error;
mod metrics;
mod model;
mod pool;
mod tensor;
mod usage;

pub use device::{device_report, DevicePreference, DeviceReport, ExecutionProvider};
pub use error::{InferError, ModelError, RuntimeError, TensorError, ORT_DYLIB_PATH_VAR};
pub use metrics::{MetricsSnapshot, ROW_BUCKETS, SECONDS_BUCKETS};
pub use model::{Dim, ModelId, ModelInfo, ParseModelIdError, TensorSpec};
pub use pool::{Inference, InferenceHandle, InferenceRuntime, Reporting, RuntimeConfig};
pub use tensor::{ElementType, Tensor, TensorData};
pub use usage::{CallerId, InferenceUsage, UsageLedger, UsageSink, UsageTotals};

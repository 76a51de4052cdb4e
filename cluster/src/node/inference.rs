//! The node's inference plane: the `[inference]` section of the node config, and
//! [`NodeInference`], the ONNX Runtime model pool (`opengrid-runtime-gpu`) a node starts at boot
//! and hands to its session handlers.
//!
//! # Planes
//! The pool runs models on its own `og-infer-N` OS threads, which belong neither to the control
//! runtime (`og-control-*`: health, heartbeats, admission) nor to the handler runtime
//! (`og-handler-*`: session actors). Models are loaded at start-up on a blocking thread of the
//! handler runtime, never on the control plane. Handlers reach the pool through
//! `SessionContext::infer` (the node registers the pool's `InferenceHandle` and an
//! `Arc<NodeInference>` as [`Services`](opengrid_actors::Services)); a node without an
//! `[inference]` section has no pool, and `ctx.infer` answers a typed `inference` error.
//!
//! # Config
//! ```toml
//! [inference]
//! models_dir = "/var/lib/opengrid/models"  # every *.onnx in it, named by file stem
//! threads = 2                              # og-infer threads
//! queue_capacity = 1024                    # requests queued before backpressure
//! max_batch_rows = 32                      # dynamic batching: rows per run
//! max_wait = "2ms"                         # dynamic batching: longest wait for a batch
//! device = "auto"                          # "auto" (CUDA when present) | "cpu"
//! dylib_path = ""                          # libonnxruntime.so; empty = $ORT_DYLIB_PATH
//!
//! [[inference.models]]                     # a model asset, verified by its blake3 hash
//! name = "intent"
//! path = "/var/lib/opengrid/assets/text_classifier.onnx"
//! blake3 = "5c0f…64 hex digits"
//! ```
//! The section is optional: absent (or naming no model) ⇒ no inference plane. Files in
//! `models_dir` are trusted local files, registered under the hash of their bytes; `models`
//! entries are assets and must match their `blake3`. Relative paths are relative to the node
//! process's working directory. Every field has an `OPENGRID_INFERENCE_<FIELD>` override.
//!
//! # Accelerator
//! The accelerator a node declares to the RC (its `NodeSpec`, used by the admission filter on the
//! manifest's `placement.accelerator`) follows what the pool really runs on: a node whose pool
//! runs on CUDA declares at least `gpu-small`; a node that declares a GPU class in `[hardware]`
//! but whose pool runs on the CPU refuses to start ([`InferenceStartError::AcceleratorUnavailable`])
//! rather than attract sessions it cannot serve.
//!
//! # Reporting
//! `/health` carries `inference` ([`NodeInference::health`]: device, models, queue, counters);
//! `/metrics` carries the pool's `opengrid_runtime_gpu_*` instruments (created on the node's meter,
//! see `opengrid_runtime_gpu`) and two info gauges:
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `opengrid_cluster_inference_device_info{device,provider}` | gauge | 1 for the device the pool runs on (`cpu` / `cuda`) |
//! | `opengrid_cluster_inference_model_info{name,id}` | gauge | 1 per loaded model |

use std::path::{Path, PathBuf};
use std::sync::Arc;

use opengrid_actors::Services;
use opengrid_runtime_gpu::{
    DevicePreference, DeviceReport, ExecutionProvider, InferenceHandle, InferenceRuntime,
    ModelError, ModelId, ModelInfo, ParseModelIdError, Reporting, RuntimeConfig, RuntimeError,
};
use opengrid_session::{AcceleratorClass, HumanDuration};
use opentelemetry::metrics::Meter;
use opentelemetry::KeyValue;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::common::config::ConfigError;

/// Most `*.onnx` files loaded from `models_dir`.
pub const MAX_DIR_MODELS: usize = 256;

/// One model asset named in the config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Name handlers and operators know it by; default: the file stem.
    #[serde(default)]
    pub name: String,
    /// The ONNX file.
    pub path: PathBuf,
    /// Expected blake3 hash of the file (64 hex digits): the asset's content address.
    pub blake3: String,
}

impl ModelEntry {
    /// The configured name, else the file stem.
    pub fn effective_name(&self) -> String {
        if !self.name.is_empty() {
            return self.name.clone();
        }
        stem(&self.path)
    }
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `[inference]` of the node config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceConfig {
    /// Directory whose `*.onnx` files are loaded (trusted local files); empty = none.
    pub models_dir: PathBuf,
    /// Model assets, each verified against its blake3 hash.
    pub models: Vec<ModelEntry>,
    /// Dedicated inference threads (`og-infer-N`).
    pub threads: usize,
    /// Requests queued before callers get a backpressure error.
    pub queue_capacity: usize,
    /// Most rows concatenated into one run (dynamic batching).
    pub max_batch_rows: usize,
    /// Longest a request waits for others to join its batch.
    pub max_wait: HumanDuration,
    /// `auto`: CUDA when the loaded ONNX Runtime has it and a GPU is present; `cpu`: always CPU.
    pub device: DevicePreference,
    /// `libonnxruntime.so`; empty = `$ORT_DYLIB_PATH`.
    pub dylib_path: PathBuf,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        let rt = RuntimeConfig::default();
        InferenceConfig {
            models_dir: PathBuf::new(),
            models: Vec::new(),
            threads: rt.inference_threads,
            queue_capacity: rt.queue_capacity,
            max_batch_rows: rt.max_batch_rows,
            max_wait: HumanDuration(rt.max_wait),
            device: DevicePreference::Auto,
            dylib_path: PathBuf::new(),
        }
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

impl InferenceConfig {
    /// Whether the node runs an inference plane (the section names a model or a models dir).
    pub fn enabled(&self) -> bool {
        !self.models.is_empty() || !self.models_dir.as_os_str().is_empty()
    }

    /// Checks every field; the error names the first bad one (`inference.<field>`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=256).contains(&self.threads) {
            return Err(invalid("inference.threads", "must be 1..=256"));
        }
        if !(1..=1 << 20).contains(&self.queue_capacity) {
            return Err(invalid("inference.queue_capacity", "must be 1..=1048576"));
        }
        if !(1..=65_536).contains(&self.max_batch_rows) {
            return Err(invalid("inference.max_batch_rows", "must be 1..=65536"));
        }
        if self.max_wait.0 > std::time::Duration::from_secs(1) {
            return Err(invalid(
                "inference.max_wait",
                format!(
                    "{:?} must be at most 1s (it adds to every request's latency)",
                    self.max_wait.0
                ),
            ));
        }
        let mut names: Vec<String> = Vec::new();
        for (i, m) in self.models.iter().enumerate() {
            let f = |k: &str| format!("inference.models[{i}].{k}");
            if m.path.as_os_str().is_empty() {
                return Err(invalid(f("path"), "must name an ONNX file"));
            }
            if let Err(e) = m.blake3.parse::<ModelId>() {
                return Err(invalid(f("blake3"), e.to_string()));
            }
            let name = m.effective_name();
            if !opengrid_session::manifest::is_ident(&name) {
                return Err(invalid(
                    f("name"),
                    format!("{name:?} is not an identifier (a-z, 0-9, '_', '-'; set `name`)"),
                ));
            }
            if names.contains(&name) {
                return Err(invalid(f("name"), format!("{name:?} is used twice")));
            }
            names.push(name);
        }
        Ok(())
    }

    fn runtime_config(&self) -> RuntimeConfig {
        RuntimeConfig {
            dylib_path: (!self.dylib_path.as_os_str().is_empty()).then(|| self.dylib_path.clone()),
            device: self.device,
            inference_threads: self.threads,
            queue_capacity: self.queue_capacity,
            max_batch_rows: self.max_batch_rows,
            max_wait: self.max_wait.0,
            ..RuntimeConfig::default()
        }
    }
}

/// Why the inference plane of a node could not start. Fatal: the node does not start.
#[derive(Debug, thiserror::Error)]
pub enum InferenceStartError {
    /// ONNX Runtime could not be loaded or the pool could not start (missing or wrong
    /// `ORT_DYLIB_PATH` / `inference.dylib_path`, thread spawn failure).
    #[error("config section [inference]: {0}")]
    Runtime(#[from] RuntimeError),
    /// `models_dir` cannot be listed.
    #[error("config field `inference.models_dir`: cannot read {path}: {source}")]
    ModelsDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `models_dir` holds no `*.onnx` file, or too many.
    #[error("config field `inference.models_dir`: {path}: {reason}")]
    ModelsDirContent {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A model file is unreadable, corrupt, not the asset its hash names, or not servable.
    #[error("config field `{field}`: {source}")]
    Model {
        /// `inference.models[i]` or `inference.models_dir`.
        field: String,
        /// What the pool said.
        source: ModelError,
    },
    /// A model's `blake3` is not a hash.
    #[error("config field `{field}`: {reason}")]
    BadHash {
        /// `inference.models[i].blake3`.
        field: String,
        /// Why.
        reason: String,
    },
    /// Two models have the same name.
    #[error("config field `{field}`: model name {name:?} is used twice")]
    DuplicateName {
        /// Where the second one comes from.
        field: String,
        /// The name.
        name: String,
    },
    /// The node declares a GPU but the pool runs on the CPU.
    #[error(
        "config field `hardware.accelerator`: declares {declared} but the inference plane runs on \
         the CPU ({reason}); declare \"none\" or fix the CUDA set-up (OPENGRID_ORT_FLAVOUR=gpu)"
    )]
    AcceleratorUnavailable {
        /// The declared class.
        declared: AcceleratorClass,
        /// Why CUDA is not used.
        reason: String,
    },
    /// The service set-up of the binary failed (e.g. a model a handler needs is not loaded).
    #[error("inference services: {0}")]
    Services(String),
}

/// A model the node serves, by name.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CatalogEntry {
    /// Name from the config or the file stem.
    pub name: String,
    /// What the pool knows about it (id, path, shapes).
    pub info: ModelInfo,
}

/// The inference plane of one node: the pool and its model catalogue. Registered in the
/// session host's services as `Arc<NodeInference>` next to the pool's [`InferenceHandle`].
pub struct NodeInference {
    runtime: InferenceRuntime,
    catalog: Vec<CatalogEntry>,
    models_dir: Option<PathBuf>,
}

impl std::fmt::Debug for NodeInference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeInference")
            .field("device", &self.runtime.device().provider_name)
            .field("models", &self.catalog.len())
            .finish()
    }
}

/// Registers extra services built from the node's inference plane (e.g. a classifier that knows
/// its model and tokenizer); linked into the binary next to the handlers.
pub type ServiceSetup = fn(&NodeInference, Services) -> Result<Services, String>;

/// A [`ServiceSetup`] that adds nothing.
pub fn no_services(_: &NodeInference, s: Services) -> Result<Services, String> {
    Ok(s)
}

impl NodeInference {
    /// Loads ONNX Runtime, starts the `og-infer-N` threads and loads every configured model.
    /// Blocking (reads files, builds ONNX Runtime sessions): call it on a blocking thread.
    /// `Ok(None)` when the config names no model. The pool's instruments and the info gauges
    /// are created on `meter`.
    pub fn start(
        cfg: &InferenceConfig,
        meter: &Meter,
    ) -> Result<Option<NodeInference>, InferenceStartError> {
        if !cfg.enabled() {
            return Ok(None);
        }
        let runtime = InferenceRuntime::start_with(
            cfg.runtime_config(),
            Reporting {
                usage: None,
                meter: Some(meter.clone()),
            },
        )?;
        let mut catalog: Vec<CatalogEntry> = Vec::new();
        let mut add =
            |field: String, name: String, info: ModelInfo| -> Result<(), InferenceStartError> {
                if catalog.iter().any(|c| c.name == name) {
                    return Err(InferenceStartError::DuplicateName { field, name });
                }
                catalog.push(CatalogEntry { name, info });
                Ok(())
            };
        for (i, m) in cfg.models.iter().enumerate() {
            let field = format!("inference.models[{i}]");
            let id: ModelId =
                m.blake3
                    .parse()
                    .map_err(|e: ParseModelIdError| InferenceStartError::BadHash {
                        field: format!("{field}.blake3"),
                        reason: e.to_string(),
                    })?;
            let info = runtime.register_model(&m.path, &id).map_err(|source| {
                InferenceStartError::Model {
                    field: field.clone(),
                    source,
                }
            })?;
            add(field, m.effective_name(), info)?;
        }
        let models_dir = if cfg.models_dir.as_os_str().is_empty() {
            None
        } else {
            let dir = &cfg.models_dir;
            let files = onnx_files(dir)?;
            for p in files {
                let info = runtime.register_model_file(&p).map_err(|source| {
                    InferenceStartError::Model {
                        field: "inference.models_dir".into(),
                        source,
                    }
                })?;
                add("inference.models_dir".into(), stem(&p), info)?;
            }
            Some(dir.clone())
        };
        let device = runtime.device();
        tracing::info!(
            device = device.execution_provider.accelerator_class(),
            provider = %device.provider_name,
            ort = %device.ort_version,
            threads = device.inference_threads,
            models = ?catalog.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            "inference plane started"
        );
        let device_info = [
            KeyValue::new("device", device.execution_provider.accelerator_class()),
            KeyValue::new("provider", device.provider_name.to_string()),
        ];
        meter
            .u64_observable_gauge("opengrid_cluster_inference_device_info")
            .with_description("1 for the device the inference pool runs on")
            .with_callback(move |o| o.observe(1, &device_info))
            .build();
        let models: Vec<[KeyValue; 2]> = catalog
            .iter()
            .map(|c| {
                [
                    KeyValue::new("name", c.name.clone()),
                    KeyValue::new("id", c.info.id.to_string()),
                ]
            })
            .collect();
        meter
            .u64_observable_gauge("opengrid_cluster_inference_model_info")
            .with_description("1 per model the inference pool serves")
            .with_callback(move |o| {
                for m in &models {
                    o.observe(1, m);
                }
            })
            .build();
        Ok(Some(NodeInference {
            runtime,
            catalog,
            models_dir,
        }))
    }

    /// The pool.
    pub fn runtime(&self) -> &InferenceRuntime {
        &self.runtime
    }

    /// A handle on the pool (unattributed; the session host attributes it per session).
    pub fn handle(&self) -> InferenceHandle {
        self.runtime.handle()
    }

    /// The device decided at start.
    pub fn device(&self) -> &DeviceReport {
        self.runtime.device()
    }

    /// The models served, in load order.
    pub fn catalog(&self) -> &[CatalogEntry] {
        &self.catalog
    }

    /// A served model by name.
    pub fn model(&self, name: &str) -> Option<&ModelInfo> {
        self.catalog
            .iter()
            .find(|c| c.name == name)
            .map(|c| &c.info)
    }

    /// `models_dir`, when configured (tokenizer files and other side files live there).
    pub fn models_dir(&self) -> Option<&Path> {
        self.models_dir.as_deref()
    }

    /// The accelerator class to declare for placement, given the one the config declares.
    pub fn accelerator(
        &self,
        declared: AcceleratorClass,
    ) -> Result<AcceleratorClass, InferenceStartError> {
        let d = self.device();
        match d.execution_provider {
            ExecutionProvider::Cuda => Ok(declared.max(AcceleratorClass::GpuSmall)),
            ExecutionProvider::Cpu if declared == AcceleratorClass::None => Ok(declared),
            ExecutionProvider::Cpu => Err(InferenceStartError::AcceleratorUnavailable {
                declared,
                reason: d
                    .cpu_reason
                    .clone()
                    .unwrap_or_else(|| "CUDA provider not in use".into()),
            }),
        }
    }

    /// The services handlers get: the pool's handle and this plane.
    pub fn services(
        self: &Arc<Self>,
        setup: ServiceSetup,
    ) -> Result<Services, InferenceStartError> {
        let base = Services::default().with(self.handle()).with(self.clone());
        setup(self, base).map_err(InferenceStartError::Services)
    }

    /// What `/health` reports: device, models, queue and counters. Reads atomics only, never
    /// the pool's queue lock, so it stays fast while the inference threads are saturated.
    pub fn health(&self) -> Value {
        let d = self.device();
        let m = self.runtime.metrics();
        json!({
            "device": d.execution_provider.accelerator_class(),
            "provider": d.provider_name,
            "ort_version": d.ort_version,
            "cpu_reason": d.cpu_reason,
            "threads": d.inference_threads,
            "models": self.catalog.iter().map(|c| json!({
                "name": c.name,
                "id": c.info.id.to_string(),
                "input": c.info.input.shape_text(),
                "output": c.info.output.shape_text(),
                "batchable": c.info.batchable,
            })).collect::<Vec<_>>(),
            "queue_depth": m.queue_depth_requests,
            "queue_capacity": m.queue_capacity_requests,
            "requests_total": m.requests_total,
            "completed_total": m.completed_total,
            "rejected_backpressure_total": m.rejected_backpressure_total,
            "batches_total": m.batches_total,
            "busy_us_total": m.busy_us_total,
        })
    }
}

/// `*.onnx` files of `dir`, sorted.
fn onnx_files(dir: &Path) -> Result<Vec<PathBuf>, InferenceStartError> {
    let rd = std::fs::read_dir(dir).map_err(|source| InferenceStartError::ModelsDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files = Vec::new();
    for e in rd {
        let e = e.map_err(|source| InferenceStartError::ModelsDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let p = e.path();
        if p.extension().is_some_and(|x| x == "onnx") && p.is_file() {
            files.push(p);
            if files.len() > MAX_DIR_MODELS {
                return Err(InferenceStartError::ModelsDirContent {
                    path: dir.to_path_buf(),
                    reason: format!("more than {MAX_DIR_MODELS} *.onnx files"),
                });
            }
        }
    }
    if files.is_empty() {
        return Err(InferenceStartError::ModelsDirContent {
            path: dir.to_path_buf(),
            reason: "no *.onnx file in it".into(),
        });
    }
    files.sort();
    Ok(files)
}

/// The inference part of a node's `/health` (`null` without an inference plane).
pub fn health_of(services: &Services) -> Value {
    services
        .get::<Arc<NodeInference>>()
        .map(|i| i.health())
        .unwrap_or(Value::Null)
}

impl From<InferenceStartError> for crate::common::runtime::StartError {
    fn from(e: InferenceStartError) -> Self {
        crate::common::runtime::StartError::Inference(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::config::NodeConfig;
    use opentelemetry::metrics::{MeterProvider as _, NoopMeterProvider};

    fn noop_meter() -> Meter {
        NoopMeterProvider::new().meter("test")
    }

    fn field_of(toml: &str) -> String {
        match NodeConfig::from_toml_with_env(&format!("dev = true\n{toml}"), &[]) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("{toml}: {other:?}"),
        }
    }

    #[test]
    fn absent_section_means_no_inference() {
        let c = NodeConfig::from_toml_with_env("dev = true", &[]).unwrap();
        assert!(!c.inference.enabled());
        assert!(NodeInference::start(&c.inference, &noop_meter())
            .unwrap()
            .is_none());
    }

    #[test]
    fn validation_names_the_field() {
        let h = "0".repeat(64);
        for (toml, field) in [
            ("[inference]\nthreads = 0", "inference.threads"),
            ("[inference]\nqueue_capacity = 0", "inference.queue_capacity"),
            ("[inference]\nmax_batch_rows = 0", "inference.max_batch_rows"),
            ("[inference]\nmax_wait = \"2s\"", "inference.max_wait"),
            (
                "[[inference.models]]\npath = \"m.onnx\"\nblake3 = \"xyz\"",
                "inference.models[0].blake3",
            ),
            (
                &format!("[[inference.models]]\npath = \"\"\nblake3 = \"{h}\""),
                "inference.models[0].path",
            ),
            (
                &format!("[[inference.models]]\npath = \"a/M x.onnx\"\nblake3 = \"{h}\""),
                "inference.models[0].name",
            ),
            (
                &format!("[[inference.models]]\npath = \"a/m.onnx\"\nblake3 = \"{h}\"\n[[inference.models]]\npath = \"b/m.onnx\"\nblake3 = \"{h}\""),
                "inference.models[1].name",
            ),
        ] {
            assert_eq!(field_of(toml), field, "{toml}");
        }
        let e = NodeConfig::from_toml_with_env("[inference]\nthreds = 2", &[]).unwrap_err();
        assert!(e.to_string().contains("threds"), "{e}");
    }

    #[test]
    fn env_overrides_reach_the_section() {
        let env = vec![
            (
                "OPENGRID_INFERENCE_MODELS_DIR".to_string(),
                "/m".to_string(),
            ),
            ("OPENGRID_INFERENCE_THREADS".to_string(), "3".to_string()),
            (
                "OPENGRID_INFERENCE_MAX_WAIT".to_string(),
                "500us".to_string(),
            ),
            ("OPENGRID_INFERENCE_DEVICE".to_string(), "cpu".to_string()),
        ];
        let c = NodeConfig::from_toml_with_env("dev = true", &env).unwrap();
        assert!(c.inference.enabled());
        assert_eq!(c.inference.models_dir, PathBuf::from("/m"));
        assert_eq!(c.inference.threads, 3);
        assert_eq!(
            c.inference.max_wait.0,
            std::time::Duration::from_micros(500)
        );
        assert_eq!(c.inference.device, DevicePreference::Cpu);
    }

    #[test]
    fn missing_models_dir_is_a_typed_error() {
        let cfg = InferenceConfig {
            models_dir: PathBuf::from("/nonexistent/opengrid-models"),
            ..InferenceConfig::default()
        };
        // Needs no ONNX Runtime when ORT_DYLIB_PATH is unset: that error comes first and names
        // the variable; with it set, the directory error names the field.
        match NodeInference::start(&cfg, &noop_meter()) {
            Err(InferenceStartError::Runtime(e)) => {
                assert!(e.to_string().contains("ORT_DYLIB_PATH"), "{e}")
            }
            Err(InferenceStartError::ModelsDir { path, .. }) => {
                assert_eq!(path, PathBuf::from("/nonexistent/opengrid-models"))
            }
            other => panic!("{other:?}"),
        }
    }
}

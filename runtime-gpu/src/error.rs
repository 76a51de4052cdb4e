//! Typed errors of the inference plane.
//!
//! Three enums, one per phase, so a caller can tell a configuration problem (fatal at start-up)
//! from a model problem (fatal for that model only) from a request problem (that request only;
//! [`InferError::is_retryable`] says whether sending it again later can succeed).

use std::path::PathBuf;

use crate::model::ModelId;
use crate::tensor::ElementType;

/// Name of the environment variable that points at `libonnxruntime.so`.
pub const ORT_DYLIB_PATH_VAR: &str = "ORT_DYLIB_PATH";

/// Starting the inference runtime failed. Fatal: the node cannot serve inference until the
/// configuration is fixed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// `ORT_DYLIB_PATH` is not set and the config names no library.
    #[error(
        "{ORT_DYLIB_PATH_VAR} is not set: it must point at libonnxruntime.so from the onnxruntime \
         Python wheel; run scripts/setup-python.sh and export the lines it prints"
    )]
    DylibPathUnset,
    /// The path does not name a loadable ONNX Runtime library.
    #[error(
        "{ORT_DYLIB_PATH_VAR}={path}: {reason} (run scripts/setup-python.sh and export the \
         ORT_DYLIB_PATH it prints)"
    )]
    DylibInvalid {
        /// The path that was tried.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// The library is an ONNX Runtime older than the C API this build speaks.
    #[error(
        "{ORT_DYLIB_PATH_VAR}={path}: ONNX Runtime {found} is too old, this build needs 1.{needed}.x \
         or newer (scripts/setup-python.sh installs a matching wheel)"
    )]
    DylibVersion {
        /// The path that was loaded.
        path: PathBuf,
        /// Version string the library reported.
        found: String,
        /// Minor version of the C API this build of `ort` uses.
        needed: u32,
    },
    /// ONNX Runtime was already loaded in this process from another file; a process can load
    /// only one.
    #[error(
        "ONNX Runtime is already loaded from {loaded} in this process; cannot also load {requested}"
    )]
    DylibConflict {
        /// The library loaded first.
        loaded: PathBuf,
        /// The library asked for now.
        requested: PathBuf,
    },
    /// ONNX Runtime loaded but refused to create its environment.
    #[error("ONNX Runtime environment could not be created: {0}")]
    Environment(String),
    /// A configuration field is out of range.
    #[error("invalid inference runtime config: field `{field}`: {reason}")]
    Config {
        /// The offending field.
        field: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// The operating system refused to start an inference thread.
    #[error("failed to spawn inference thread {name}: {source}")]
    Spawn {
        /// The thread name (`og-infer-N`).
        name: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Registering a model failed. Only that model is affected; the runtime keeps serving the others.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file could not be read.
    #[error("model file {path}: cannot read: {source}")]
    Read {
        /// The model file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than `RuntimeConfig::max_model_bytes`.
    #[error(
        "model file {path} is {size} bytes, over the limit of {limit} bytes (max_model_bytes)"
    )]
    TooLarge {
        /// The model file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The configured limit.
        limit: u64,
    },
    /// The file's blake3 hash is not the id it was registered under: the asset is corrupt or is
    /// not the model the manifest names.
    #[error("model file {path} has blake3 {actual}, expected {expected}: wrong or corrupt asset")]
    HashMismatch {
        /// The model file.
        path: PathBuf,
        /// The id it was registered under.
        expected: ModelId,
        /// The hash of its bytes.
        actual: ModelId,
    },
    /// ONNX Runtime could not load the file (not an ONNX model, unsupported operator, ...).
    #[error("model {id} ({path}): ONNX Runtime cannot load it: {reason}")]
    Load {
        /// Content hash of the file.
        id: ModelId,
        /// The model file.
        path: PathBuf,
        /// ONNX Runtime's message.
        reason: String,
    },
    /// The model loaded but its signature is one the pool does not serve.
    #[error("model {id}: unsupported signature: {reason}")]
    Unsupported {
        /// Content hash of the file.
        id: ModelId,
        /// What is unsupported.
        reason: String,
    },
    /// The runtime is shutting down.
    #[error("the inference runtime is shutting down")]
    ShuttingDown,
}

/// One inference request failed. Other requests, including those batched with it, are
/// unaffected (a failed batch is re-run request by request to isolate the bad one).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InferError {
    /// The request queue is full. Retryable: back off and send again, or shed load.
    #[error("inference queue full ({capacity} requests queued): backpressure, retry later")]
    Backpressure {
        /// The queue capacity.
        capacity: usize,
    },
    /// No model with this id is registered on this node.
    #[error("model {0} is not registered on this node")]
    UnknownModel(ModelId),
    /// The input's element type is not the model's.
    #[error("model {model} input `{input}`: expected {expected} elements, got {actual}")]
    DtypeMismatch {
        /// The model.
        model: ModelId,
        /// The model's input name.
        input: String,
        /// The model's element type.
        expected: ElementType,
        /// The request's element type.
        actual: ElementType,
    },
    /// The input's shape does not fit the model's input shape.
    #[error("model {model} input `{input}`: expected shape {expected}, got {actual:?}")]
    ShapeMismatch {
        /// The model.
        model: ModelId,
        /// The model's input name.
        input: String,
        /// The model's shape, `?` marking dynamic dimensions.
        expected: String,
        /// The request's shape.
        actual: Vec<usize>,
    },
    /// ONNX Runtime failed while running this request (e.g. an index out of range in the data).
    #[error("model {model}: inference failed: {reason}")]
    Run {
        /// The model.
        model: ModelId,
        /// ONNX Runtime's message.
        reason: String,
    },
    /// The model produced an output the pool cannot hand back (wrong type, or an output whose
    /// first dimension does not follow the batch).
    #[error("model {model}: unusable output: {reason}")]
    Output {
        /// The model.
        model: ModelId,
        /// What was wrong.
        reason: String,
    },
    /// The runtime shut down before the request ran.
    #[error("the inference runtime is shutting down")]
    ShuttingDown,
}

impl InferError {
    /// Whether the same request can succeed if sent again later (only backpressure).
    pub fn is_retryable(&self) -> bool {
        matches!(self, InferError::Backpressure { .. })
    }
}

/// A tensor could not be built from the given shape and data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TensorError {
    /// The number of elements does not match the shape.
    #[error("shape {shape:?} holds {expected} elements, data has {actual}")]
    LengthMismatch {
        /// The shape given.
        shape: Vec<usize>,
        /// Elements the shape holds.
        expected: usize,
        /// Elements given.
        actual: usize,
    },
    /// The shape's element count overflows `usize`.
    #[error("shape {0:?} is too large")]
    Overflow(Vec<usize>),
    /// A tensor needs at least one dimension (the batch).
    #[error("a tensor needs at least one dimension (the batch dimension)")]
    Scalar,
}

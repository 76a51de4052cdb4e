//! Loading ONNX Runtime from `ORT_DYLIB_PATH` and choosing the execution provider.
//!
//! `ort` panics when the library it is pointed at cannot be loaded. The node must not, so the
//! library is opened and checked here first (file exists, is a shared object, exports
//! `OrtGetApiBase`, reports a recent enough version) and only then handed to `ort`.

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{RuntimeError, ORT_DYLIB_PATH_VAR};

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    /// ONNX Runtime's CUDA execution provider on an NVIDIA GPU.
    Cuda,
    /// ONNX Runtime's default CPU execution provider.
    Cpu,
}

impl ExecutionProvider {
    /// ONNX Runtime's name for the provider.
    pub fn ort_name(self) -> &'static str {
        match self {
            ExecutionProvider::Cuda => "CUDAExecutionProvider",
            ExecutionProvider::Cpu => "CPUExecutionProvider",
        }
    }

    /// The accelerator class a node advertises for placement (`cuda` or `cpu`).
    pub fn accelerator_class(self) -> &'static str {
        match self {
            ExecutionProvider::Cuda => "cuda",
            ExecutionProvider::Cpu => "cpu",
        }
    }
}

/// Which provider the runtime may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DevicePreference {
    /// CUDA when the loaded ONNX Runtime has the CUDA provider and it registers; CPU otherwise.
    #[default]
    Auto,
    /// CPU even when CUDA is available.
    Cpu,
}

/// What the node's `/health` and metrics report about the inference device, decided at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceReport {
    /// The provider models are loaded on.
    pub execution_provider: ExecutionProvider,
    /// `ort_name` of the provider, for humans.
    pub provider_name: String,
    /// The ONNX Runtime version string the library reported.
    pub ort_version: String,
    /// The library loaded.
    pub dylib_path: PathBuf,
    /// Whether the loaded ONNX Runtime was built with the CUDA provider.
    pub cuda_compiled_in: bool,
    /// Why CUDA is not used, when it is not.
    pub cpu_reason: Option<String>,
    /// Number of dedicated inference threads (`og-infer-N`).
    pub inference_threads: usize,
}

/// The process-wide ONNX Runtime load. A process can load one library only.
#[derive(Debug, Clone)]
struct OrtLoad {
    path: PathBuf,
    version: String,
    cuda_compiled_in: bool,
    cuda_error: Option<String>,
}

static ORT_LOAD: Mutex<Option<OrtLoad>> = Mutex::new(None);
static LAST_REPORT: Mutex<Option<DeviceReport>> = Mutex::new(None);

/// The device report of the most recently started [`InferenceRuntime`](crate::InferenceRuntime)
/// in this process, or `None` if none has started. For `/health` and metrics.
pub fn device_report() -> Option<DeviceReport> {
    LAST_REPORT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

pub(crate) fn publish_report(report: &DeviceReport) {
    *LAST_REPORT.lock().unwrap_or_else(|e| e.into_inner()) = Some(report.clone());
}

/// Resolves the library path: the config's, else `ORT_DYLIB_PATH`.
pub(crate) fn resolve_dylib_path(configured: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    if let Some(p) = configured {
        return Ok(p.to_owned());
    }
    match std::env::var_os(ORT_DYLIB_PATH_VAR) {
        Some(v) if !v.is_empty() => Ok(PathBuf::from(v)),
        _ => Err(RuntimeError::DylibPathUnset),
    }
}

/// Opens the library and checks it is an ONNX Runtime recent enough for this build.
/// Returns its version string.
pub(crate) fn check_dylib(path: &Path) -> Result<String, RuntimeError> {
    let invalid = |reason: String| RuntimeError::DylibInvalid {
        path: path.to_owned(),
        reason,
    };
    let meta =
        std::fs::metadata(path).map_err(|e| invalid(format!("cannot stat the file: {e}")))?;
    if !meta.is_file() {
        return Err(invalid("not a regular file".into()));
    }
    // SAFETY: loading a shared library runs its initialisers. The path is the operator's
    // configured ONNX Runtime library, which `ort` would load anyway; this only checks it first.
    let lib = unsafe { libloading::Library::new(path) }
        .map_err(|e| invalid(format!("cannot load it as a shared library: {e}")))?;
    type GetApiBase = unsafe extern "C" fn() -> *const ort::sys::OrtApiBase;
    // SAFETY: `OrtGetApiBase` has this signature in every ONNX Runtime release.
    let get_base: libloading::Symbol<GetApiBase> = unsafe { lib.get(b"OrtGetApiBase\0") }
        .map_err(|_| invalid("no `OrtGetApiBase` symbol: not an ONNX Runtime library".into()))?;
    // SAFETY: calling the documented entry point; the result is checked for null.
    let base = unsafe { get_base() };
    if base.is_null() {
        return Err(invalid("`OrtGetApiBase` returned null".into()));
    }
    // SAFETY: `base` is non-null and points at the library's static OrtApiBase; the version
    // string is a static NUL-terminated buffer owned by the library.
    let version = unsafe {
        let s = ((*base).GetVersionString)();
        if s.is_null() {
            return Err(invalid("GetVersionString returned null".into()));
        }
        CStr::from_ptr(s).to_string_lossy().into_owned()
    };
    let minor = version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse::<u32>().ok());
    match minor {
        Some(m) if m >= ort::MINOR_VERSION => {}
        _ => {
            return Err(RuntimeError::DylibVersion {
                path: path.to_owned(),
                found: version,
                needed: ort::MINOR_VERSION,
            })
        }
    }
    // SAFETY: as above; GetApi returns null for unsupported API versions, checked here.
    let api = unsafe { ((*base).GetApi)(ort::sys::ORT_API_VERSION) };
    if api.is_null() {
        return Err(RuntimeError::DylibVersion {
            path: path.to_owned(),
            found: version,
            needed: ort::MINOR_VERSION,
        });
    }
    // Keep the library mapped: `ort` opens the same file next, and unloading ONNX Runtime is
    // not something it supports cleanly.
    std::mem::forget(lib);
    Ok(version)
}

/// Loads ONNX Runtime once per process (checking it first) and probes the CUDA provider.
fn load_ort(path: &Path) -> Result<OrtLoad, RuntimeError> {
    let mut guard = ORT_LOAD.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(loaded) = guard.as_ref() {
        let same = loaded.path == path
            || matches!((loaded.path.canonicalize(), path.canonicalize()), (Ok(a), Ok(b)) if a == b);
        if same {
            return Ok(loaded.clone());
        }
        // Check the new path too, so a bad path is reported as such rather than as a conflict.
        check_dylib(path)?;
        return Err(RuntimeError::DylibConflict {
            loaded: loaded.path.clone(),
            requested: path.to_owned(),
        });
    }
    let version = check_dylib(path)?;
    let committed = std::panic::catch_unwind(|| {
        ort::init_from(path.to_string_lossy().into_owned())
            .with_name("opengrid-inference")
            .with_telemetry(false)
            .commit()
    });
    match committed {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(RuntimeError::Environment(e.to_string())),
        Err(_) => {
            return Err(RuntimeError::Environment(
                "ONNX Runtime panicked while creating its environment".into(),
            ))
        }
    }
    let (cuda_compiled_in, cuda_error) = probe_cuda();
    let load = OrtLoad {
        path: path.to_owned(),
        version,
        cuda_compiled_in,
        cuda_error,
    };
    tracing::info!(
        path = %path.display(),
        version = %load.version,
        cuda_compiled_in,
        cuda_error = load.cuda_error.as_deref().unwrap_or(""),
        "loaded ONNX Runtime"
    );
    *guard = Some(load.clone());
    Ok(load)
}

/// Whether the CUDA provider is compiled in, and if so whether it registers on a session.
fn probe_cuda() -> (bool, Option<String>) {
    use ort::execution_providers::{CUDAExecutionProvider, ExecutionProvider as _};
    let cuda = CUDAExecutionProvider::default();
    match cuda.is_available() {
        Ok(true) => {}
        Ok(false) => {
            return (
                false,
                Some("the loaded ONNX Runtime has no CUDA execution provider".into()),
            )
        }
        Err(e) => {
            return (
                false,
                Some(format!("listing execution providers failed: {e}")),
            )
        }
    }
    let registered = ort::session::Session::builder().and_then(|b| {
        b.with_execution_providers([CUDAExecutionProvider::default().build().error_on_failure()])
    });
    match registered {
        Ok(_) => (true, None),
        Err(e) => (
            true,
            Some(format!("CUDA execution provider did not register: {e}")),
        ),
    }
}

/// Loads ONNX Runtime and decides the provider for a runtime with `preference`.
pub(crate) fn start_device(
    configured: Option<&Path>,
    preference: DevicePreference,
    inference_threads: usize,
) -> Result<DeviceReport, RuntimeError> {
    let path = resolve_dylib_path(configured)?;
    let load = load_ort(&path)?;
    let (provider, cpu_reason) = match (preference, &load.cuda_error) {
        (DevicePreference::Cpu, _) => (ExecutionProvider::Cpu, Some("configured for CPU".into())),
        (DevicePreference::Auto, None) => (ExecutionProvider::Cuda, None),
        (DevicePreference::Auto, Some(reason)) => (ExecutionProvider::Cpu, Some(reason.clone())),
    };
    Ok(DeviceReport {
        execution_provider: provider,
        provider_name: provider.ort_name().to_owned(),
        ort_version: load.version,
        dylib_path: load.path,
        cuda_compiled_in: load.cuda_compiled_in,
        cpu_reason,
        inference_threads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_a_typed_error_naming_the_variable() {
        let err = check_dylib(Path::new("/nonexistent/libonnxruntime.so")).unwrap_err();
        assert!(matches!(err, RuntimeError::DylibInvalid { .. }), "{err:?}");
        assert!(err.to_string().contains(ORT_DYLIB_PATH_VAR), "{err}");
    }

    #[test]
    fn non_library_file_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("libonnxruntime.so");
        std::fs::write(&path, b"not an ELF file").unwrap();
        let err = check_dylib(&path).unwrap_err();
        assert!(matches!(err, RuntimeError::DylibInvalid { .. }), "{err:?}");
    }
}

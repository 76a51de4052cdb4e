//! A missing or wrong ONNX Runtime library is a typed error naming ORT_DYLIB_PATH, never a
//! panic. These tests need neither ORT_DYLIB_PATH nor the generated models.

use opengrid_runtime_gpu::{InferenceRuntime, RuntimeConfig, RuntimeError, ORT_DYLIB_PATH_VAR};

fn start_with(path: Option<&std::path::Path>) -> RuntimeError {
    InferenceRuntime::start(RuntimeConfig {
        dylib_path: path.map(|p| p.to_owned()),
        ..RuntimeConfig::default()
    })
    .expect_err("start must fail")
}

#[test]
fn unset_variable_is_a_typed_error_naming_it() {
    // The only test in this binary that reads the environment.
    std::env::remove_var(ORT_DYLIB_PATH_VAR);
    let err = start_with(None);
    assert!(matches!(err, RuntimeError::DylibPathUnset), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(ORT_DYLIB_PATH_VAR), "{msg}");
    assert!(msg.contains("scripts/setup-python.sh"), "{msg}");
}

#[test]
fn missing_file_is_a_typed_error_naming_the_variable_and_path() {
    let path = std::path::Path::new("/nonexistent/dir/libonnxruntime.so.1.22.1");
    let err = start_with(Some(path));
    assert!(matches!(err, RuntimeError::DylibInvalid { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(ORT_DYLIB_PATH_VAR), "{msg}");
    assert!(
        msg.contains("/nonexistent/dir/libonnxruntime.so.1.22.1"),
        "{msg}"
    );
}

#[test]
fn a_file_that_is_not_a_library_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("libonnxruntime.so");
    std::fs::write(&path, b"\x7fELF but not really").unwrap();
    let err = start_with(Some(&path));
    assert!(matches!(err, RuntimeError::DylibInvalid { .. }), "{err:?}");
}

#[test]
fn a_directory_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = start_with(Some(dir.path()));
    assert!(matches!(err, RuntimeError::DylibInvalid { .. }), "{err:?}");
}

#[test]
fn a_library_without_onnx_runtime_symbols_is_a_typed_error() {
    // Any shared object that is not ONNX Runtime: the C library of this process.
    let libc = [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/libc.so.6",
    ]
    .into_iter()
    .map(std::path::Path::new)
    .find(|p| p.exists())
    .expect("a libc.so.6 to load");
    let err = start_with(Some(libc));
    assert!(matches!(err, RuntimeError::DylibInvalid { .. }), "{err:?}");
    assert!(err.to_string().contains("OrtGetApiBase"), "{err}");
}

#[test]
fn a_bad_config_is_refused_before_anything_loads() {
    let err = InferenceRuntime::start(RuntimeConfig {
        queue_capacity: 0,
        dylib_path: Some("/nonexistent".into()),
        ..RuntimeConfig::default()
    })
    .unwrap_err();
    assert!(
        matches!(
            err,
            RuntimeError::Config {
                field: "queue_capacity",
                ..
            }
        ),
        "{err:?}"
    );
}

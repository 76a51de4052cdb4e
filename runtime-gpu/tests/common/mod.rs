//! Shared set-up for the integration tests: where ONNX Runtime and the generated models are.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::path::PathBuf;
use std::time::{Duration, Instant};

use opengrid_runtime_gpu::{InferenceRuntime, ModelId, ModelInfo, RuntimeConfig, Tensor};

const HOW_TO: &str = "run `eval \"$(scripts/setup-python.sh)\"` from the repository root \
     (it installs the onnxruntime wheel, generates the test models and prints the exports)";

/// `ORT_DYLIB_PATH`, or a failure that says how to get it.
pub fn dylib_path() -> PathBuf {
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!("ORT_DYLIB_PATH is not set: {HOW_TO}"),
    }
}

/// `OPENGRID_MODELS`, or a failure that says how to get it.
pub fn models_dir() -> PathBuf {
    let dir = match std::env::var_os("OPENGRID_MODELS") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!("OPENGRID_MODELS is not set: {HOW_TO}"),
    };
    assert!(
        dir.join("mlp.onnx").is_file(),
        "OPENGRID_MODELS={} has no mlp.onnx: {HOW_TO}",
        dir.display()
    );
    dir
}

/// A config for tests: the library from the environment, CPU unless `OPENGRID_TEST_DEVICE=auto`.
pub fn config() -> RuntimeConfig {
    RuntimeConfig {
        dylib_path: Some(dylib_path()),
        device: match std::env::var("OPENGRID_TEST_DEVICE").as_deref() {
            Ok("auto") => opengrid_runtime_gpu::DevicePreference::Auto,
            _ => opengrid_runtime_gpu::DevicePreference::Cpu,
        },
        ..RuntimeConfig::default()
    }
}

pub fn start(config: RuntimeConfig) -> InferenceRuntime {
    InferenceRuntime::start(config).expect("inference runtime starts")
}

/// Registers `<models>/<name>.onnx` under its hash, as the asset plane would.
pub fn register(runtime: &InferenceRuntime, name: &str) -> ModelInfo {
    let path = models_dir().join(format!("{name}.onnx"));
    let bytes = std::fs::read(&path).expect("model file readable");
    runtime
        .register_model(&path, &ModelId::of_bytes(&bytes))
        .expect("model registers")
}

/// One fixed input and its numpy output.
pub struct Case {
    pub batch: usize,
    pub input: Tensor,
    pub output_shape: Vec<usize>,
    pub output: Vec<f32>,
}

pub struct Reference {
    pub tolerance: f32,
    pub cases: Vec<Case>,
    pub json: serde_json::Value,
}

/// Reads `<models>/<name>.reference.json`, written by scripts/gen_models.py.
pub fn reference(name: &str) -> Reference {
    let path = models_dir().join(format!("{name}.reference.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}: {HOW_TO}", path.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("reference is JSON");
    let shape = |v: &serde_json::Value| -> Vec<usize> {
        v.as_array()
            .expect("shape array")
            .iter()
            .map(|d| d.as_u64().expect("dim") as usize)
            .collect()
    };
    let dtype = json["input_dtype"]
        .as_str()
        .expect("input_dtype")
        .to_owned();
    let cases = json["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            let input_shape = shape(&c["input_shape"]);
            let values = c["input"].as_array().expect("input");
            let input = match dtype.as_str() {
                "float32" => Tensor::f32(
                    input_shape,
                    values
                        .iter()
                        .map(|v| v.as_f64().expect("f") as f32)
                        .collect(),
                ),
                "int64" => Tensor::i64(
                    input_shape,
                    values.iter().map(|v| v.as_i64().expect("i")).collect(),
                ),
                other => panic!("unknown dtype {other}"),
            }
            .expect("reference input is a valid tensor");
            Case {
                batch: c["batch"].as_u64().expect("batch") as usize,
                input,
                output_shape: shape(&c["output_shape"]),
                output: c["output"]
                    .as_array()
                    .expect("output")
                    .iter()
                    .map(|v| v.as_f64().expect("f") as f32)
                    .collect(),
            }
        })
        .collect();
    Reference {
        tolerance: json["tolerance"].as_f64().expect("tolerance") as f32,
        cases,
        json,
    }
}

/// Asserts `got` equals `want` element-wise within `tol` (absolute, scaled for large values).
pub fn assert_close(got: &Tensor, shape: &[usize], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.shape(), shape, "{what}: shape");
    let got = got.as_f32().expect("float32 output");
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let bound = tol * (1.0 + w.abs());
        assert!(
            (g - w).abs() <= bound,
            "{what}: element {i}: got {g}, numpy says {w} (tolerance {bound})"
        );
    }
}

/// Polls `cond` until it holds or `timeout` passes; never sleeps a guess.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

//! The inference plane against real ONNX Runtime and the models from scripts/gen_models.py.
//! Needs ORT_DYLIB_PATH and OPENGRID_MODELS (`eval "$(scripts/setup-python.sh)"`).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_close, config, reference, register, start};
use opengrid_runtime_gpu::{
    device_report, CallerId, ElementType, ExecutionProvider, InferError, InferenceRuntime,
    ModelError, ModelId, Reporting, RuntimeConfig, RuntimeError, Tensor, UsageLedger,
};
use opentelemetry::metrics::MeterProvider as _;

#[tokio::test]
async fn mlp_matches_numpy_at_batch_1_and_batch_8() {
    let runtime = start(config());
    let info = register(&runtime, "mlp");
    assert_eq!(info.input.dtype, ElementType::F32);
    assert!(info.batchable, "dynamic batch dimension: {info:?}");
    let reference = reference("mlp");
    let handle = runtime.handle();
    for case in &reference.cases {
        let out = handle.infer(&info.id, case.input.clone()).await.unwrap();
        assert_close(
            &out,
            &case.output_shape,
            &case.output,
            reference.tolerance,
            &format!("mlp batch {}", case.batch),
        );
    }
}

#[tokio::test]
async fn text_classifier_matches_numpy_and_labels_turns() {
    let runtime = start(config());
    let info = register(&runtime, "text_classifier");
    assert_eq!(info.input.dtype, ElementType::I64);
    let reference = reference("text_classifier");
    let labels: Vec<String> = serde_json::from_value(reference.json["labels"].clone()).unwrap();
    let expected: Vec<String> =
        serde_json::from_value(reference.json["expected_labels"].clone()).unwrap();
    let handle = runtime.handle();
    for case in &reference.cases {
        let out = handle.infer(&info.id, case.input.clone()).await.unwrap();
        assert_close(
            &out,
            &case.output_shape,
            &case.output,
            reference.tolerance,
            &format!("text classifier batch {}", case.batch),
        );
        let logits = out.as_f32().unwrap();
        for (row, want) in logits.chunks(labels.len()).zip(&expected) {
            let best = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
                .unwrap();
            assert_eq!(&labels[best], want);
        }
    }
}

/// Sends every row of the batch-8 reference as its own request, concurrently, and checks the
/// pool ran them as one batch and split the answers back to the right callers.
async fn concurrent_rows_are_batched(name: &str) {
    let runtime = start(RuntimeConfig {
        inference_threads: 1,
        max_batch_rows: 8,
        max_wait: Duration::from_secs(1), // a full batch runs at once; this only bounds a slow CI
        ..config()
    });
    let info = register(&runtime, name);
    let reference = reference(name);
    let case = reference.cases.iter().find(|c| c.batch == 8).unwrap();
    let width = case.output.len() / 8;
    let handle = runtime.handle();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let h = handle.for_caller(CallerId::new(format!("session-{i}")));
        let row = case.input.row(i).unwrap();
        let id = info.id;
        tasks.push(tokio::spawn(
            async move { h.infer_with_usage(&id, row).await },
        ));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let inference = t.await.unwrap().unwrap();
        assert_eq!(
            inference.usage.caller,
            CallerId::new(format!("session-{i}"))
        );
        assert_eq!(
            inference.usage.batch_rows, 8,
            "request {i} ran in a batch of 8"
        );
        assert_eq!(inference.usage.batch_requests, 8);
        assert_eq!(inference.usage.rows, 1);
        assert_close(
            &inference.output,
            &[1, width],
            &case.output[i * width..(i + 1) * width],
            reference.tolerance,
            &format!("{name} row {i} batched"),
        );
    }
    let m = runtime.metrics();
    assert_eq!(m.batches_total, 1);
    assert_eq!(m.batch_rows_total, 8);
    assert_eq!(m.completed_total, 8);
}

#[tokio::test]
async fn concurrent_mlp_requests_are_batched_and_match_numpy() {
    concurrent_rows_are_batched("mlp").await;
}

#[tokio::test]
async fn concurrent_classifier_requests_are_batched_and_match_numpy() {
    concurrent_rows_are_batched("text_classifier").await;
}

#[tokio::test]
async fn wrong_dtype_and_shape_are_typed_errors_and_the_pool_keeps_serving() {
    let runtime = start(config());
    let info = register(&runtime, "mlp");
    let handle = runtime.handle();
    let err = handle
        .infer(&info.id, Tensor::i64([1, 16], vec![0; 16]).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            InferError::DtypeMismatch {
                expected: ElementType::F32,
                actual: ElementType::I64,
                ..
            }
        ),
        "{err:?}"
    );
    let err = handle
        .infer(&info.id, Tensor::f32([1, 15], vec![0.0; 15]).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, InferError::ShapeMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("[?, 16]"), "{err}");
    let err = handle
        .infer(&info.id, Tensor::f32([2, 4, 4], vec![0.0; 32]).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, InferError::ShapeMismatch { .. }), "{err:?}");
    let unknown = ModelId::of_bytes(b"no such model");
    let err = handle
        .infer(&unknown, Tensor::f32([1, 16], vec![0.0; 16]).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err, InferError::UnknownModel(unknown));
    assert!(!err.is_retryable());
    // still serving
    let case = &reference("mlp").cases[0];
    let out = handle.infer(&info.id, case.input.clone()).await.unwrap();
    assert_close(
        &out,
        &case.output_shape,
        &case.output,
        1e-4,
        "after bad requests",
    );
    assert_eq!(runtime.metrics().rejected_invalid_total, 4);
}

#[tokio::test]
async fn bad_model_file_and_wrong_hash_are_typed_errors_and_the_pool_keeps_serving() {
    let runtime = start(config());
    let info = register(&runtime, "mlp");
    let dir = tempfile::tempdir().unwrap();

    let garbage = dir.path().join("garbage.onnx");
    std::fs::write(&garbage, b"this is not a protobuf model \x00\x01\x02").unwrap();
    let err = runtime.register_model_file(&garbage).unwrap_err();
    assert!(matches!(err, ModelError::Load { .. }), "{err:?}");
    assert!(err.to_string().contains("garbage.onnx"), "{err}");

    // a real model cut in half
    let mlp = std::fs::read(common::models_dir().join("mlp.onnx")).unwrap();
    let truncated = dir.path().join("truncated.onnx");
    std::fs::write(&truncated, &mlp[..mlp.len() / 2]).unwrap();
    let err = runtime
        .register_model(&truncated, &ModelId::of_bytes(&mlp[..mlp.len() / 2]))
        .unwrap_err();
    assert!(matches!(err, ModelError::Load { .. }), "{err:?}");

    // right bytes, wrong id: the asset is not the model the manifest names
    let copy = dir.path().join("copy.onnx");
    std::fs::write(&copy, &mlp).unwrap();
    let claimed = ModelId::of_bytes(b"some other model");
    let err = runtime.register_model(&copy, &claimed).unwrap_err();
    match &err {
        ModelError::HashMismatch {
            expected, actual, ..
        } => {
            assert_eq!(*expected, claimed);
            assert_eq!(*actual, info.id);
        }
        other => panic!("expected HashMismatch, got {other:?}"),
    }

    let err = runtime
        .register_model(dir.path().join("missing.onnx"), &claimed)
        .unwrap_err();
    assert!(matches!(err, ModelError::Read { .. }), "{err:?}");

    let small = InferenceRuntime::start(RuntimeConfig {
        max_model_bytes: 16,
        ..config()
    })
    .unwrap();
    let err = small.register_model_file(&copy).unwrap_err();
    assert!(
        matches!(err, ModelError::TooLarge { limit: 16, .. }),
        "{err:?}"
    );

    assert_eq!(
        runtime.models().len(),
        1,
        "failed registrations add nothing"
    );
    let case = &reference("mlp").cases[1];
    let out = runtime
        .handle()
        .infer(&info.id, case.input.clone())
        .await
        .unwrap();
    assert_close(
        &out,
        &case.output_shape,
        &case.output,
        1e-4,
        "after bad models",
    );
}

#[tokio::test]
async fn a_model_is_loaded_once_per_hash() {
    let runtime = start(config());
    let a = register(&runtime, "mlp");
    let b = runtime
        .register_model_file(common::models_dir().join("mlp.onnx"))
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(runtime.metrics().models_loaded, 1);
    // registered under its id, the file is not even read again
    let again = runtime
        .register_model("/nonexistent/path.onnx", &a.id)
        .unwrap();
    assert_eq!(again.id, a.id);
}

#[tokio::test]
async fn a_bad_request_in_a_batch_fails_alone() {
    let runtime = start(RuntimeConfig {
        inference_threads: 1,
        max_batch_rows: 4,
        max_wait: Duration::from_secs(1), // a full batch runs at once; this only bounds a slow CI
        ..config()
    });
    let info = register(&runtime, "text_classifier");
    let reference = reference("text_classifier");
    let case = reference.cases.iter().find(|c| c.batch == 8).unwrap();
    let handle = runtime.handle();
    let mut tasks = Vec::new();
    for i in 0..4 {
        let mut row = case.input.row(i).unwrap().as_i64().unwrap().to_vec();
        if i == 2 {
            row[0] = 1_000_000; // no such token: Gather fails at run time
        }
        let input = Tensor::i64([1, row.len()], row).unwrap();
        let h = handle.clone();
        let id = info.id;
        tasks.push(tokio::spawn(
            async move { h.infer_with_usage(&id, input).await },
        ));
    }
    let width = case.output.len() / 8;
    for (i, t) in tasks.into_iter().enumerate() {
        let result = t.await.unwrap();
        if i == 2 {
            let err = result.unwrap_err();
            assert!(matches!(err, InferError::Run { .. }), "{err:?}");
        } else {
            let inference = result.unwrap();
            assert_close(
                &inference.output,
                &[1, width],
                &case.output[i * width..(i + 1) * width],
                reference.tolerance,
                &format!("row {i} next to a bad row"),
            );
        }
    }
    let m = runtime.metrics();
    assert_eq!(m.failed_total, 1);
    assert_eq!(m.completed_total, 3);
}

#[tokio::test]
async fn a_full_queue_returns_backpressure_at_once_and_stays_bounded() {
    const CAPACITY: usize = 16;
    let runtime = start(RuntimeConfig {
        inference_threads: 1,
        queue_capacity: CAPACITY,
        // the batch can never fill, so nothing runs until the window closes: the queue fills
        max_batch_rows: 1024,
        max_wait: Duration::from_secs(1),
        ..config()
    });
    let info = register(&runtime, "mlp");
    let handle = runtime.handle();
    let input = reference("mlp").cases[0].input.clone();

    let mut accepted = Vec::new();
    let mut rejected = 0usize;
    let mut slowest_rejection = Duration::ZERO;
    for _ in 0..CAPACITY * 10 {
        let h = handle.clone();
        let (id, x) = (info.id, input.clone());
        let task = tokio::spawn(async move { h.infer(&id, x).await });
        // each submission happens on the task's first poll; wait for it to be queued or refused
        let before = runtime.metrics();
        let queued = before.requests_total;
        let refused = before.rejected_backpressure_total;
        let started = Instant::now();
        tokio::task::yield_now().await;
        while runtime.metrics().requests_total == queued
            && runtime.metrics().rejected_backpressure_total == refused
        {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "submission stuck"
            );
            tokio::task::yield_now().await;
        }
        if runtime.metrics().rejected_backpressure_total > refused {
            let err = task.await.unwrap().unwrap_err();
            slowest_rejection = slowest_rejection.max(started.elapsed());
            assert_eq!(err, InferError::Backpressure { capacity: CAPACITY });
            assert!(err.is_retryable());
            rejected += 1;
        } else {
            accepted.push(task);
        }
        assert!(runtime.metrics().queue_depth_requests <= CAPACITY as u64);
    }
    assert_eq!(accepted.len(), CAPACITY, "exactly the capacity was queued");
    assert_eq!(rejected, CAPACITY * 9);
    assert!(
        slowest_rejection < Duration::from_millis(100),
        "backpressure must answer at once, took {slowest_rejection:?}"
    );
    let m = runtime.metrics();
    assert_eq!(m.queue_depth_max_requests, CAPACITY as u64);
    assert_eq!(m.rejected_backpressure_total, (CAPACITY * 9) as u64);

    for t in accepted {
        t.await.unwrap().unwrap();
    }
    // drained: accepting again
    assert_eq!(runtime.metrics().queue_depth_requests, 0);
    handle.infer(&info.id, input).await.unwrap();
}

#[tokio::test]
async fn usage_is_metered_per_caller() {
    let ledger = Arc::new(UsageLedger::new());
    let registry = prometheus::Registry::new();
    let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_reader(
            opentelemetry_prometheus::exporter()
                .with_registry(registry.clone())
                .without_target_info()
                .scope_info_enabled(false)
                .build()
                .unwrap(),
        )
        .build();
    let runtime = InferenceRuntime::start_with(
        config(),
        Reporting {
            usage: Some(ledger.clone()),
            meter: Some(provider.meter("opengrid_runtime_gpu")),
        },
    )
    .unwrap();
    let info = register(&runtime, "mlp");
    let reference = reference("mlp");
    let a = runtime.handle().for_caller(CallerId::new("session-a"));
    let b = runtime.handle().for_caller(CallerId::new("session-b"));
    let mut compute = 0;
    for case in &reference.cases {
        let i = a
            .infer_with_usage(&info.id, case.input.clone())
            .await
            .unwrap();
        assert_eq!(i.usage.rows, case.batch);
        assert_eq!(i.usage.model, info.id);
        assert_eq!(i.usage.provider, runtime.device().execution_provider);
        assert!(i.usage.compute_us <= i.usage.run_us);
        compute += i.usage.compute_us;
    }
    b.infer(&info.id, reference.cases[0].input.clone())
        .await
        .unwrap();
    let totals = ledger.take(&CallerId::new("session-a"));
    assert_eq!(totals.requests, 2);
    assert_eq!(totals.rows, 9);
    assert_eq!(totals.compute_us, compute);
    assert_eq!(totals.max_batch_rows, 8);
    assert_eq!(ledger.get(&CallerId::new("session-b")).requests, 1);
    let m = runtime.metrics();
    assert_eq!(m.completed_total, 3);
    let mut text = Vec::new();
    prometheus::Encoder::encode(
        &prometheus::TextEncoder::new(),
        &registry.gather(),
        &mut text,
    )
    .unwrap();
    let text = String::from_utf8(text).unwrap();
    for line in [
        "opengrid_runtime_gpu_completed_total 3".to_owned(),
        format!(
            "opengrid_runtime_gpu_inference_seconds_count {}",
            m.batches_total
        ),
        "opengrid_runtime_gpu_queue_wait_seconds_count 3".to_owned(),
    ] {
        assert!(text.contains(&line), "`{line}` missing in:\n{text}");
    }
}

#[tokio::test]
async fn device_is_reported_for_health() {
    let runtime = start(config());
    let report = runtime.device().clone();
    assert_eq!(report.dylib_path, common::dylib_path());
    assert!(report.ort_version.starts_with("1."), "{report:?}");
    assert_eq!(report.inference_threads, 2);
    match report.execution_provider {
        ExecutionProvider::Cpu => assert!(report.cpu_reason.is_some()),
        ExecutionProvider::Cuda => assert!(report.cpu_reason.is_none()),
    }
    let global = device_report().expect("a runtime has started");
    assert_eq!(global.dylib_path, report.dylib_path);
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["execution_provider"].is_string());
    assert_eq!(
        runtime.metrics().cuda_enabled,
        report.execution_provider == ExecutionProvider::Cuda
    );
}

#[tokio::test]
async fn a_bad_library_path_does_not_disturb_a_running_runtime() {
    let runtime = start(config());
    let info = register(&runtime, "mlp");
    let err = InferenceRuntime::start(RuntimeConfig {
        dylib_path: Some("/nonexistent/libonnxruntime.so".into()),
        ..config()
    })
    .unwrap_err();
    assert!(matches!(err, RuntimeError::DylibInvalid { .. }), "{err:?}");
    let case = &reference("mlp").cases[0];
    let out = runtime
        .handle()
        .infer(&info.id, case.input.clone())
        .await
        .unwrap();
    assert_close(
        &out,
        &case.output_shape,
        &case.output,
        1e-4,
        "after bad start",
    );
}

#[tokio::test]
async fn shutdown_fails_queued_requests_and_later_calls() {
    let runtime = start(RuntimeConfig {
        inference_threads: 1,
        max_batch_rows: 1024,
        max_wait: Duration::from_secs(1),
        ..config()
    });
    let info = register(&runtime, "mlp");
    let handle = runtime.handle();
    let input = reference("mlp").cases[0].input.clone();
    let (h, x, id) = (handle.clone(), input.clone(), info.id);
    let queued = tokio::spawn(async move { h.infer(&id, x).await });
    let deadline = Instant::now() + Duration::from_secs(5);
    while handle.metrics().queue_depth_requests != 1 {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the request to be queued"
        );
        tokio::task::yield_now().await;
    }
    runtime.shutdown();
    assert_eq!(queued.await.unwrap().unwrap_err(), InferError::ShuttingDown);
    assert_eq!(
        handle.infer(&info.id, input).await.unwrap_err(),
        InferError::ShuttingDown
    );
}

#[test]
fn inference_threads_are_named_and_separate() {
    let runtime = start(RuntimeConfig {
        inference_threads: 3,
        ..config()
    });
    // Thread names are visible in /proc on Linux. A new thread names itself, so poll.
    let names = || -> Vec<String> {
        std::fs::read_dir("/proc/self/task")
            .map(|dir| {
                dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
                    .map(|s| s.trim().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    common::wait_until(Duration::from_secs(5), "og-infer-0..2 to be named", || {
        let names = names();
        (0..3).all(|i| names.iter().any(|n| n == &format!("og-infer-{i}")))
    });
    drop(runtime);
}

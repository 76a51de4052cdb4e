//! The scorer example on a session host with a real inference pool: its statistics equal those
//! computed over every output row of the same model run directly, and a host without a pool
//! answers the typed `inference` error.

use std::path::PathBuf;
use std::sync::Arc;

use opengrid_actors::{HostConfig, Reply, Services, SessionHost};
use opengrid_examples::scorer::{features, ScoreInput, ScoreReply, Scorer};
use opengrid_runtime_gpu::{DevicePreference, InferenceRuntime, ModelId, RuntimeConfig, Tensor};
use opengrid_session::{CheckpointPolicy, Epoch, MemoryCheckpointStore, Seq, SessionId};

fn env_path(var: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(var).unwrap_or_else(|| {
        panic!(
            "{var} is not set: run `eval \"$(scripts/setup-python.sh)\"` (scripts/test.sh does it)"
        )
    }))
}

async fn host(services: Services) -> SessionHost {
    SessionHost::new(
        Arc::new(MemoryCheckpointStore::new()),
        HostConfig::default(),
        services,
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scorer_statistics_match_a_direct_run() {
    let runtime = InferenceRuntime::start(RuntimeConfig {
        dylib_path: Some(env_path("ORT_DYLIB_PATH")),
        device: DevicePreference::Cpu,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let path = env_path("OPENGRID_MODELS").join("mlp.onnx");
    let id = ModelId::of_bytes(&std::fs::read(&path).unwrap());
    runtime.register_model(&path, &id).unwrap();
    let h = host(Services::default().with(runtime.handle())).await;
    let s = h
        .start(
            Arc::new(Scorer),
            SessionId::new("score").unwrap(),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    let mut total = 0u64;
    // 1, 64 and two row counts that are not multiples of the repeat block.
    for (seq, rows) in [(1u64, 1usize), (2, 64), (3, 200), (4, 1000)] {
        let r: ScoreReply = match s
            .send(
                Seq(seq),
                ScoreInput {
                    model: id.to_string(),
                    rows,
                    cols: 16,
                    seed: seq * 11,
                },
            )
            .await
            .unwrap()
        {
            Reply::Processed { output, .. } => output.unwrap(),
            r => panic!("{r:?}"),
        };
        // Reference: the same model on the same rows, every output row reduced.
        let x = Tensor::f32(vec![rows, 16], features(seq * 11, rows, 16)).unwrap();
        let y = runtime.handle().infer(&id, x).await.unwrap();
        let y = y.as_f32().unwrap();
        let mut mean = [0f64; 4];
        let mut argmax = [0u64; 4];
        for row in y.chunks(4) {
            let mut best = 0;
            for (j, v) in row.iter().enumerate() {
                mean[j] += *v as f64 / rows as f64;
                if *v > row[best] {
                    best = j;
                }
            }
            argmax[best] += 1;
        }
        assert_eq!(r.rows, rows);
        assert_eq!(r.argmax, argmax, "rows {rows}");
        for (j, (got, want)) in r.mean.iter().zip(mean).enumerate() {
            assert!(
                (got - want).abs() < 1e-4,
                "rows {rows} column {j}: {got} vs {want}"
            );
        }
        total += rows as u64;
        assert_eq!(r.total_rows, total);
    }
    assert_eq!(s.usage().inference_calls, 4, "each input metered");
    h.shutdown().await;
    runtime.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scorer_without_a_pool_gets_the_typed_error() {
    let h = host(Services::default()).await;
    let s = h
        .start(
            Arc::new(Scorer),
            SessionId::new("nopool").unwrap(),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    let input = |model: String, rows| ScoreInput {
        model,
        rows,
        cols: 16,
        seed: 1,
    };
    let err = |r: Reply<ScoreReply>| match r {
        Reply::Processed { output, .. } => output.unwrap_err(),
        r => panic!("{r:?}"),
    };
    let e = err(s.send(Seq(1), input("0".repeat(64), 4)).await.unwrap());
    assert_eq!(e.code, "inference", "{e}");
    let e = err(s.send(Seq(2), input("not-a-hash".into(), 4)).await.unwrap());
    assert_eq!(e.code, "bad_input", "{e}");
    let e = err(s.send(Seq(3), input("0".repeat(64), 0)).await.unwrap());
    assert_eq!(e.code, "bad_input", "{e}");
    h.shutdown().await;
}

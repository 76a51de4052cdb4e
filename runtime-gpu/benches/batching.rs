//! P10 (BENCHMARKS.md): the inference plane on CPU.
//!
//! * `p10/latency/*`: one request at a time, batch 1: ONNX Runtime called directly (baseline)
//!   vs through the pool (queue, `og-infer` thread hand-off, split back) = per-request overhead.
//! * `p10/throughput/*`: 64 concurrent clients sending 1-row requests, pool with batching off
//!   (`max_batch_rows = 1`) vs on (`max_batch_rows = 32`, `max_wait = 1 ms`).
//! * After criterion, a sustained closed-loop run of both pool modes prints one JSON line each
//!   (`{"name", "p50_us", "p99_us", "count", "throughput_rps", "mean_batch_rows", ...}`) so a script
//!   can compare runs, plus the direct-vs-pool overhead.
//!
//! Needs ORT_DYLIB_PATH and OPENGRID_MODELS: `eval "$(scripts/setup-python.sh)"`, then
//! `cargo bench -p opengrid-runtime-gpu --bench batching`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hdrhistogram::Histogram;
use opengrid_runtime_gpu::{
    DevicePreference, InferenceHandle, InferenceRuntime, ModelId, RuntimeConfig, Tensor,
};

const CLIENTS: usize = 64;
const FEATURES: usize = 16;

fn env_path(var: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!(
            "{var} is not set: run `eval \"$(scripts/setup-python.sh)\"` from the repository root"
        ),
    }
}

fn mlp_path() -> PathBuf {
    env_path("OPENGRID_MODELS").join("mlp.onnx")
}

fn pool(max_batch_rows: usize, max_wait: Duration) -> (InferenceRuntime, ModelId) {
    let runtime = InferenceRuntime::start(RuntimeConfig {
        dylib_path: Some(env_path("ORT_DYLIB_PATH")),
        device: DevicePreference::Cpu,
        inference_threads: 1,
        intra_op_threads: 1,
        queue_capacity: 4096,
        max_batch_rows,
        max_wait,
        ..RuntimeConfig::default()
    })
    .expect("runtime starts");
    let id = runtime
        .register_model_file(mlp_path())
        .expect("mlp registers")
        .id;
    (runtime, id)
}

fn row(i: usize) -> Tensor {
    let data = (0..FEATURES)
        .map(|j| ((i * 31 + j) % 17) as f32 / 17.0)
        .collect();
    Tensor::f32([1, FEATURES], data).expect("valid row")
}

/// The baseline: an ort session driven directly, configured as the pool configures its own.
fn direct_session() -> ort::session::Session {
    ort::session::Session::builder()
        .and_then(|b| b.with_intra_threads(1))
        .and_then(|b| b.with_inter_threads(1))
        .and_then(|b| b.with_intra_op_spinning(false))
        .and_then(|b| b.commit_from_file(mlp_path()))
        .expect("direct session")
}

fn direct_run(session: &mut ort::session::Session, input: &Tensor) -> Vec<f32> {
    let data = input.as_f32().expect("f32");
    let value =
        ort::value::TensorRef::from_array_view((input.shape().to_vec(), data)).expect("tensor");
    let outputs = session.run(ort::inputs!["x" => value]).expect("run");
    let (_, out) = outputs["y"]
        .try_extract_tensor::<f32>()
        .expect("f32 output");
    out.to_vec()
}

/// `CLIENTS` tasks each sending `per_client` requests back to back; returns every latency.
async fn closed_loop(handle: &InferenceHandle, id: ModelId, per_client: usize) -> Vec<Duration> {
    let mut tasks = Vec::with_capacity(CLIENTS);
    for c in 0..CLIENTS {
        let h = handle.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_client);
            for r in 0..per_client {
                let t = Instant::now();
                h.infer(&id, row(c * per_client + r))
                    .await
                    .expect("inference");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::with_capacity(CLIENTS * per_client);
    for t in tasks {
        all.extend(t.await.expect("client task"));
    }
    all
}

fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn bench_latency(c: &mut Criterion) {
    let (runtime, id) = pool(1, Duration::ZERO);
    let handle = runtime.handle();
    let rt = client_runtime();
    let mut session = direct_session();
    let input = row(0);
    let mut g = c.benchmark_group("p10/latency");
    g.throughput(Throughput::Elements(1));
    g.bench_function("direct_ort_batch1", |b| {
        b.iter(|| direct_run(&mut session, &input))
    });
    g.bench_function("pool_batch1", |b| {
        b.iter(|| {
            rt.block_on(handle.infer(&id, input.clone()))
                .expect("inference")
        })
    });
    g.finish();
}

fn bench_throughput(c: &mut Criterion) {
    let rt = client_runtime();
    let mut g = c.benchmark_group("p10/throughput");
    g.throughput(Throughput::Elements((CLIENTS * 4) as u64));
    for (name, max_rows, wait) in [
        ("pool_batch1_c64", 1, Duration::ZERO),
        ("pool_batched32_c64", 32, Duration::from_millis(1)),
    ] {
        let (runtime, id) = pool(max_rows, wait);
        let handle = runtime.handle();
        g.bench_function(name, |b| {
            b.iter(|| rt.block_on(closed_loop(&handle, id, 4)))
        });
    }
    g.finish();
}

/// Nearest-rank quantile `q` (0..=1) of `lat`, µs, to 3 significant digits (HdrHistogram).
fn percentile(lat: &[Duration], q: f64) -> u64 {
    let mut h = Histogram::<u64>::new_with_max(3_600_000_000, 3).expect("valid bounds");
    for d in lat {
        h.saturating_record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }
    h.value_at_quantile(q)
}

/// Sustained runs printed as JSON, for BENCHMARKS.md.
fn report(_c: &mut Criterion) {
    let rt = client_runtime();
    let per_client = 200;
    let mut rps = Vec::new();
    for (name, max_rows, wait) in [
        ("p10_pool_batch1_c64", 1, Duration::ZERO),
        ("p10_pool_batched32_c64", 32, Duration::from_millis(1)),
    ] {
        let (runtime, id) = pool(max_rows, wait);
        let handle = runtime.handle();
        rt.block_on(closed_loop(&handle, id, 10)); // warm up
        let before = runtime.metrics();
        let started = Instant::now();
        let lat = rt.block_on(closed_loop(&handle, id, per_client));
        let took = started.elapsed();
        let after = runtime.metrics();
        let count = lat.len();
        let throughput = count as f64 / took.as_secs_f64();
        rps.push(throughput);
        let runs = after.batches_total - before.batches_total;
        let rows = after.batch_rows_total - before.batch_rows_total;
        println!(
            "{{\"name\":\"{name}\",\"p50_us\":{},\"p99_us\":{},\"count\":{count},\"lost\":0,\"duplicated\":0,\"throughput_rps\":{throughput:.0},\"mean_batch_rows\":{:.2},\"clients\":{CLIENTS},\"device\":\"{}\"}}",
            percentile(&lat, 0.50),
            percentile(&lat, 0.99),
            rows as f64 / runs.max(1) as f64,
            runtime.device().provider_name,
        );
    }
    println!(
        "{{\"name\":\"p10_batching_speedup\",\"throughput_ratio\":{:.2}}}",
        rps[1] / rps[0]
    );

    // per-request overhead of the pool over a direct ort call, sequential batch-1
    let (runtime, id) = pool(1, Duration::ZERO);
    let handle = runtime.handle();
    let mut session = direct_session();
    let input = row(0);
    let n = 20_000;
    let mut direct = Vec::with_capacity(n);
    let mut pooled = Vec::with_capacity(n);
    for _ in 0..1000 {
        direct_run(&mut session, &input);
        rt.block_on(handle.infer(&id, input.clone()))
            .expect("inference");
    }
    for _ in 0..n {
        let t = Instant::now();
        direct_run(&mut session, &input);
        direct.push(t.elapsed());
        let t = Instant::now();
        rt.block_on(handle.infer(&id, input.clone()))
            .expect("inference");
        pooled.push(t.elapsed());
    }
    for (name, lat) in [
        ("p10_direct_ort_batch1", &direct),
        ("p10_pool_batch1_sequential", &pooled),
    ] {
        println!(
            "{{\"name\":\"{name}\",\"p50_us\":{},\"p99_us\":{},\"count\":{},\"lost\":0,\"duplicated\":0}}",
            percentile(lat, 0.50),
            percentile(lat, 0.99),
            lat.len()
        );
    }
    let mean = |v: &[Duration]| v.iter().sum::<Duration>().as_secs_f64() * 1e6 / v.len() as f64;
    println!(
        "{{\"name\":\"p10_pool_overhead\",\"mean_direct_us\":{:.1},\"mean_pool_us\":{:.1},\"overhead_us\":{:.1}}}",
        mean(&direct),
        mean(&pooled),
        mean(&pooled) - mean(&direct)
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_latency, bench_throughput, report
}
criterion_main!(benches);

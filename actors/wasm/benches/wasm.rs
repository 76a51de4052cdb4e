//! WASM agents against native handlers, on the same `SessionHost` path:
//! - `session_input/{native,wasm-rs,wasm-py}`: one counter input through a session (JSON in,
//!   JSON out, synchronous-free periodic checkpoints), a fresh instance per WASM input;
//! - `instantiate/{rs,py}`: warm instantiation (`InstancePre` → instance) from the pool.
//!
//! Besides criterion's estimates it prints inputs/s, the WASM/native ratio and p50/p99 from
//! hdrhistogram over a fixed number of samples.
//!
//! `cargo bench -p opengrid-wasm --bench wasm -- --quick`

#[path = "../tests/common/mod.rs"]
mod common;

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use hdrhistogram::Histogram;
use opengrid_actors::{HandlerError, Reply, SessionContext, SessionHandle, SessionHandler};
use opengrid_session::{CheckpointPolicy, Epoch, Seq, SessionId};
use opengrid_wasm::{LoadedAgent, WasmHandler};
use serde_json::{json, Value};

/// The counter of examples/agents/counter-rs, natively.
struct NativeCounter;

impl SessionHandler for NativeCounter {
    type State = u64;
    type Input = Value;
    type Output = Value;

    fn id(&self) -> &str {
        "native-counter"
    }

    fn init(&self, _: &SessionId) -> u64 {
        0
    }

    async fn handle(
        &self,
        total: &mut u64,
        input: Value,
        _: &SessionContext,
    ) -> Result<Value, HandlerError> {
        *total += input
            .as_u64()
            .ok_or_else(|| HandlerError::new("bad_input", "a number"))?;
        Ok((*total).into())
    }
}

const SAMPLES: u64 = 2000;

struct Setup {
    rt: tokio::runtime::Runtime,
    _cache: tempfile::TempDir,
    rs: Arc<LoadedAgent>,
    py: Arc<LoadedAgent>,
    native: SessionHandle<NativeCounter>,
    wasm_rs: SessionHandle<WasmHandler>,
    wasm_py: SessionHandle<WasmHandler>,
}

fn setup() -> Setup {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let wasm = common::runtime(cache.path());
    let rs = wasm
        .load_bytes(&common::package("counter-rs").to_bytes(), None)
        .unwrap();
    let py = wasm
        .load_bytes(&common::package("counter-py").to_bytes(), None)
        .unwrap();
    let (native, wasm_rs, wasm_py) = rt.block_on(async {
        let host = common::host(common::memory_store()).await;
        let policy = CheckpointPolicy::periodic(Duration::from_secs(60));
        let sid = |s: &str| SessionId::new(s).unwrap();
        (
            host.start(Arc::new(NativeCounter), sid("native"), Epoch(1), policy)
                .await
                .unwrap(),
            host.start(
                Arc::new(WasmHandler::new(rs.clone())),
                sid("wasm-rs"),
                Epoch(1),
                policy,
            )
            .await
            .unwrap(),
            host.start(
                Arc::new(WasmHandler::new(py.clone())),
                sid("wasm-py"),
                Epoch(1),
                policy,
            )
            .await
            .unwrap(),
        )
    });
    Setup {
        rt,
        _cache: cache,
        rs,
        py,
        native,
        wasm_rs,
        wasm_py,
    }
}

async fn one<H: SessionHandler<Input = Value, Output = Value>>(s: &SessionHandle<H>, seq: u64) {
    match s.send(Seq(seq), json!(1)).await.unwrap() {
        Reply::Processed { output, .. } => assert_eq!(output.unwrap(), json!(seq)),
        r => panic!("{r:?}"),
    }
}

/// `SAMPLES` timed calls of `f`: (inputs per second, p50 µs, p99 µs).
fn sample(rt: &tokio::runtime::Runtime, mut f: impl FnMut(u64) -> Duration) -> (f64, u64, u64) {
    let mut h = Histogram::<u64>::new(3).unwrap();
    let started = Instant::now();
    for i in 0..SAMPLES {
        let took = f(i);
        h.record(took.as_nanos() as u64).unwrap();
    }
    let _ = rt;
    let per_s = SAMPLES as f64 / started.elapsed().as_secs_f64();
    (
        per_s,
        h.value_at_quantile(0.5) / 1000,
        h.value_at_quantile(0.99) / 1000,
    )
}

fn benches(c: &mut Criterion) {
    let s = setup();
    let seqs = [Cell::new(0u64), Cell::new(0u64), Cell::new(0u64)];
    let next = |i: usize| {
        seqs[i].set(seqs[i].get() + 1);
        seqs[i].get()
    };

    // Fixed-sample summary first (inputs/s, ratio, percentiles).
    let timed = |i: usize| {
        let seq = next(i);
        let t = Instant::now();
        s.rt.block_on(async {
            match i {
                0 => one(&s.native, seq).await,
                1 => one(&s.wasm_rs, seq).await,
                _ => one(&s.wasm_py, seq).await,
            }
        });
        t.elapsed()
    };
    let native = sample(&s.rt, |_| timed(0));
    let rs = sample(&s.rt, |_| timed(1));
    let py = sample(&s.rt, |_| timed(2));
    let inst = |a: &Arc<LoadedAgent>| {
        sample(&s.rt, |_| {
            let t = Instant::now();
            s.rt.block_on(a.probe()).unwrap();
            t.elapsed()
        })
    };
    let (inst_rs, inst_py) = (inst(&s.rs), inst(&s.py));
    eprintln!("\n== opengrid-wasm summary ({SAMPLES} samples each) ==");
    for (name, (per_s, p50, p99)) in [("native", native), ("wasm-rs", rs), ("wasm-py", py)] {
        eprintln!(
            "session input {name:8}: {per_s:9.0} inputs/s  p50 {p50:6} µs  p99 {p99:6} µs  ({:.3}x native)",
            per_s / native.0
        );
    }
    for (name, (per_s, p50, p99)) in [("rs", inst_rs), ("py", inst_py)] {
        eprintln!("warm instantiate {name}: {per_s:9.0} /s  p50 {p50:6} µs  p99 {p99:6} µs");
    }

    let mut g = c.benchmark_group("session_input");
    g.bench_function("native", |b| {
        b.iter(|| s.rt.block_on(one(&s.native, next(0))))
    });
    g.bench_function("wasm-rs", |b| {
        b.iter(|| s.rt.block_on(one(&s.wasm_rs, next(1))))
    });
    g.bench_function("wasm-py", |b| {
        b.iter(|| s.rt.block_on(one(&s.wasm_py, next(2))))
    });
    g.finish();
    let mut g = c.benchmark_group("instantiate");
    g.bench_function("rs", |b| b.iter(|| s.rt.block_on(s.rs.probe()).unwrap()));
    g.bench_function("py", |b| b.iter(|| s.rt.block_on(s.py.probe()).unwrap()));
    g.finish();
}

criterion_group!(wasm, benches);
criterion_main!(wasm);

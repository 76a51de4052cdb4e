//! WASM agents against native handlers, on the same `SessionHost` path:
//! - `session_input/{native,wasm-rs,wasm-py}`: one counter input through a session (JSON in,
//!   JSON out, periodic checkpoints), each WASM session in its warm instance (the default);
//! - `session_input/{wasm-rs,wasm-py}-fresh`: the same on a runtime without warm instances
//!   (`warm_instances = Some(0)`): a fresh instance per input, as before warm instances;
//! - `instantiate/{rs,py}`: warm instantiation (`InstancePre` → instance) from the pool.
//!
//! The sessions run on a current-thread tokio runtime driven by the bench thread, so an input's
//! time is the CPU cost of the session path and the handler, not thread wake-ups: on a
//! multi-thread runtime the caller parks and is woken per input, and that latency (tens of µs on
//! a loaded VM, varying with how the handler yields) dominated and blurred the WASM/native ratio.
//!
//! Besides criterion's estimates it prints inputs/s, the WASM/native ratio and p50/p99 from
//! hdrhistogram over a fixed number of samples.
//!
//! `cargo bench --workspace --bench wasm -- --quick`

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
    /// Sessions by name: `wasm-rs`, `wasm-py` (warm instances), `wasm-rs-fresh`, `wasm-py-fresh`.
    wasm: Vec<(&'static str, SessionHandle<WasmHandler>)>,
}

fn setup() -> Setup {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let load = |warm: Option<u32>| {
        let wasm = opengrid_wasm::Runtime::new(opengrid_wasm::RuntimeConfig {
            warm_instances: warm,
            ..common::runtime_config(cache.path())
        })
        .unwrap();
        let rs = wasm
            .load_bytes(&common::package("counter-rs").to_bytes(), None)
            .unwrap();
        let py = wasm
            .load_bytes(&common::package("counter-py").to_bytes(), None)
            .unwrap();
        (rs, py)
    };
    let (rs, py) = load(None);
    let (rs_fresh, py_fresh) = load(Some(0));
    let (native, wasm) = rt.block_on(async {
        let host = common::host(common::memory_store()).await;
        let policy = CheckpointPolicy::periodic(Duration::from_secs(60));
        let sid = |s: &str| SessionId::new(s).unwrap();
        let native = host
            .start(Arc::new(NativeCounter), sid("native"), Epoch(1), policy)
            .await
            .unwrap();
        let mut wasm = Vec::new();
        for (name, agent) in [
            ("wasm-rs", &rs),
            ("wasm-py", &py),
            ("wasm-rs-fresh", &rs_fresh),
            ("wasm-py-fresh", &py_fresh),
        ] {
            let s = host
                .start(
                    Arc::new(WasmHandler::new(agent.clone())),
                    sid(name),
                    Epoch(1),
                    policy,
                )
                .await
                .unwrap();
            wasm.push((name, s));
        }
        (native, wasm)
    });
    Setup {
        rt,
        _cache: cache,
        rs,
        py,
        native,
        wasm,
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
    // Next seq per session: native first, then `s.wasm` in order.
    let seqs: Vec<Cell<u64>> = (0..=s.wasm.len()).map(|_| Cell::new(0)).collect();
    let next = |i: usize| {
        seqs[i].set(seqs[i].get() + 1);
        seqs[i].get()
    };
    let input = |i: usize| {
        let seq = next(i);
        s.rt.block_on(async {
            match i {
                0 => one(&s.native, seq).await,
                i => one(&s.wasm[i - 1].1, seq).await,
            }
        })
    };

    // Fixed-sample summary first (inputs/s, ratio, percentiles).
    let timed = |i: usize| {
        let t = Instant::now();
        input(i);
        t.elapsed()
    };
    let native = sample(&s.rt, |_| timed(0));
    let wasm: Vec<_> = (1..=s.wasm.len())
        .map(|i| sample(&s.rt, |_| timed(i)))
        .collect();
    let inst = |a: &Arc<LoadedAgent>| {
        sample(&s.rt, |_| {
            let t = Instant::now();
            s.rt.block_on(a.probe()).unwrap();
            t.elapsed()
        })
    };
    let (inst_rs, inst_py) = (inst(&s.rs), inst(&s.py));
    eprintln!("\n== opengrid-wasm summary ({SAMPLES} samples each) ==");
    let rows: Vec<_> = std::iter::once(("native", native))
        .chain(s.wasm.iter().map(|(n, _)| *n).zip(wasm))
        .collect();
    for &(name, (per_s, p50, p99)) in &rows {
        eprintln!(
            "session input {name:13}: {per_s:9.0} inputs/s  p50 {p50:6} µs  p99 {p99:6} µs  ({:.2}x native cost)",
            native.0 / per_s
        );
    }
    for (name, (per_s, p50, p99)) in [("rs", inst_rs), ("py", inst_py)] {
        eprintln!("warm instantiate {name}: {per_s:9.0} /s  p50 {p50:6} µs  p99 {p99:6} µs");
    }
    // One JSON line per figure on stdout (scripts/bench.sh keeps them).
    for (name, (per_s, p50, p99)) in rows {
        println!(
            "{{\"name\":\"wasm_session_input_{name}\",\"inputs_per_s\":{per_s:.0},\"p50_us\":{p50},\"p99_us\":{p99},\"count\":{SAMPLES},\"cost_vs_native\":{:.3}}}",
            native.0 / per_s
        );
    }
    for (name, (per_s, p50, p99)) in [("rs", inst_rs), ("py", inst_py)] {
        println!(
            "{{\"name\":\"wasm_warm_instantiate_{name}\",\"per_s\":{per_s:.0},\"p50_us\":{p50},\"p99_us\":{p99},\"count\":{SAMPLES}}}"
        );
    }

    let mut g = c.benchmark_group("session_input");
    g.bench_function("native", |b| b.iter(|| input(0)));
    for (i, (name, _)) in s.wasm.iter().enumerate() {
        g.bench_function(*name, |b| b.iter(|| input(i + 1)));
    }
    g.finish();
    let mut g = c.benchmark_group("instantiate");
    g.bench_function("rs", |b| b.iter(|| s.rt.block_on(s.rs.probe()).unwrap()));
    g.bench_function("py", |b| b.iter(|| s.rt.block_on(s.py.probe()).unwrap()));
    g.finish();
}

criterion_group!(wasm, benches);
criterion_main!(wasm);

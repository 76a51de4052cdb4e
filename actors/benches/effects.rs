//! P14 (ADR 0032): what journaling an effect costs.
//! - `run_overhead/{plain,journaled}`: one input through a session whose handler awaits a ready
//!   future directly vs through `ctx.run` (bounded-loss session on an in-memory store: the
//!   journal's own bookkeeping, no I/O);
//! - `zero_loss/{none,one_effect}`: a zero-loss input (checkpoint fsync'd to RocksDB before the
//!   reply) without and with one journaled effect whose handler then returns (the input's own
//!   checkpoint covers the result: no separate journal write), same run;
//! - `zero_loss/effect_then_compute`: the effect, then 5 ms more of handler time (the journal is
//!   written within the grace, in parallel with the handler).
//!
//! - `stream/{first_chunk,whole_reply}`: a zero-loss input whose handler streams 32 chunks, each
//!   after 250 µs of work (a token generator): time to the first chunk a reader sees vs time to
//!   the reply (ADR 0033).
//!
//! Besides criterion's estimates it prints p50/p99 per variant and the ratios from fixed samples.
//!
//! `cargo bench --workspace --bench effects -- --quick`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use hdrhistogram::Histogram;
use opengrid_actors::*;
use opengrid_session::*;

#[derive(Clone, Copy)]
enum Kind {
    Plain,
    Journaled,
    ComputeAfter,
    Stream,
}

/// Chunks of the streamed reply, and the work before each.
const CHUNKS: u64 = 32;
const CHUNK_WORK: Duration = Duration::from_micros(250);

struct H(Kind);

impl SessionHandler for H {
    type State = u64;
    type Input = u64;
    type Output = u64;
    fn id(&self) -> &str {
        match self.0 {
            Kind::Plain => "plain",
            Kind::Journaled => "journaled",
            Kind::ComputeAfter => "compute-after",
            Kind::Stream => "stream",
        }
    }
    fn init(&self, _: &SessionId) -> u64 {
        0
    }
    async fn handle(&self, s: &mut u64, v: u64, ctx: &SessionContext) -> Result<u64, HandlerError> {
        let got = match self.0 {
            Kind::Plain => async { Ok::<u64, HandlerError>(v) }.await?,
            Kind::Journaled => ctx.run("add", async { Ok(v) }).await?,
            Kind::ComputeAfter => {
                let g = ctx.run("add", async { Ok(v) }).await?;
                tokio::time::sleep(Duration::from_millis(5)).await;
                g
            }
            Kind::Stream => {
                for i in 0..CHUNKS {
                    let t = Instant::now();
                    while t.elapsed() < CHUNK_WORK {
                        std::hint::spin_loop();
                    }
                    ctx.emit(&format!("token{i} ")).await?;
                    tokio::task::yield_now().await;
                }
                v
            }
        };
        *s = s.wrapping_add(got);
        Ok(*s)
    }
}

const SAMPLES: u64 = 2000;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

struct Sessions {
    next: std::cell::Cell<u64>,
    s: SessionHandle<H>,
}

impl Sessions {
    fn new(
        rt: &tokio::runtime::Runtime,
        host: &SessionHost,
        kind: Kind,
        policy: CheckpointPolicy,
    ) -> Self {
        let s = rt.block_on(async {
            host.start(Arc::new(H(kind)), SessionId::random(), Epoch(1), policy)
                .await
                .unwrap()
        });
        Sessions {
            next: std::cell::Cell::new(0),
            s,
        }
    }

    /// One streamed input: (time to the first chunk, time to the reply).
    fn streamed(&self, rt: &tokio::runtime::Runtime) -> (Duration, Duration) {
        let seq = self.next.get() + 1;
        self.next.set(seq);
        rt.block_on(async {
            let t = Instant::now();
            let s = self.s.clone();
            let reply = tokio::spawn(async move { s.send(Seq(seq), 1).await });
            let first = self.s.stream(Seq(seq), 0, Duration::from_secs(5)).await;
            let t_first = t.elapsed();
            assert!(first.is_some_and(|r| !r.chunks.is_empty()));
            reply.await.unwrap().unwrap();
            (t_first, t.elapsed())
        })
    }

    fn one(&self, rt: &tokio::runtime::Runtime) {
        let seq = self.next.get() + 1;
        self.next.set(seq);
        rt.block_on(async {
            match self.s.send(Seq(seq), 1).await.unwrap() {
                Reply::Processed { .. } => {}
                r => panic!("{r:?}"),
            }
        });
    }
}

/// p50 and p99 in µs of `n` calls.
fn sample(n: u64, mut f: impl FnMut()) -> (f64, f64) {
    let mut h = Histogram::<u64>::new(3).unwrap();
    for _ in 0..n {
        let t = Instant::now();
        f();
        h.record(t.elapsed().as_nanos() as u64).unwrap();
    }
    (
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
    )
}

fn effects(c: &mut Criterion) {
    let rt = rt();
    // Journal bookkeeping: in memory, bounded-loss.
    let mem = rt.block_on(async {
        SessionHost::new(
            Arc::new(MemoryCheckpointStore::new()),
            HostConfig::default(),
            Services::default(),
        )
        .await
        .unwrap()
    });
    let periodic = CheckpointPolicy::periodic(Duration::from_secs(60));
    let plain = Sessions::new(&rt, &mem, Kind::Plain, periodic);
    let journaled = Sessions::new(&rt, &mem, Kind::Journaled, periodic);
    // Zero-loss on RocksDB with fsync.
    let dir = tempfile::tempdir().unwrap();
    let rocks = rt.block_on(async {
        let store = RocksCheckpointStore::open(dir.path(), RocksOptions::default()).unwrap();
        SessionHost::new(Arc::new(store), HostConfig::default(), Services::default())
            .await
            .unwrap()
    });
    let zl = CheckpointPolicy::synchronous();
    let none = Sessions::new(&rt, &rocks, Kind::Plain, zl);
    let one = Sessions::new(&rt, &rocks, Kind::Journaled, zl);
    let after = Sessions::new(&rt, &rocks, Kind::ComputeAfter, zl);
    let stream = Sessions::new(&rt, &rocks, Kind::Stream, zl);

    let (p_plain, j_plain) = (
        sample(SAMPLES, || plain.one(&rt)),
        sample(SAMPLES, || journaled.one(&rt)),
    );
    let zn = sample(SAMPLES, || none.one(&rt));
    let zo = sample(SAMPLES, || one.one(&rt));
    let za = sample(200, || after.one(&rt));
    let (mut hf, mut hw) = (
        Histogram::<u64>::new(3).unwrap(),
        Histogram::<u64>::new(3).unwrap(),
    );
    for _ in 0..500 {
        let (f, w) = stream.streamed(&rt);
        hf.record(f.as_nanos() as u64).unwrap();
        hw.record(w.as_nanos() as u64).unwrap();
    }
    let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    eprintln!("\n== P14 effects ({SAMPLES} samples; effect_then_compute 200) ==");
    eprintln!(
        "run overhead: plain p50 {:.1} / p99 {:.1} µs, journaled p50 {:.1} / p99 {:.1} µs: +{:.1} µs p50, +{:.1} µs p99",
        p_plain.0, p_plain.1, j_plain.0, j_plain.1, j_plain.0 - p_plain.0, j_plain.1 - p_plain.1
    );
    eprintln!(
        "zero-loss (RocksDB fsync): none p50 {:.0} / p99 {:.0} µs, one effect p50 {:.0} / p99 {:.0} µs: {:.2}x p50, {:.2}x p99",
        zn.0, zn.1, zo.0, zo.1, zo.0 / zn.0, zo.1 / zn.1
    );
    eprintln!(
        "zero-loss, effect then 5 ms of handler: p50 {:.0} / p99 {:.0} µs (5 ms + one checkpoint ≈ {:.0} µs)",
        za.0, za.1, 5000.0 + zn.0
    );

    eprintln!(
        "streamed reply ({CHUNKS} chunks, {CHUNK_WORK:?} of work each, zero-loss): first chunk p50 {:.0} / p99 {:.0} µs, whole reply p50 {:.0} / p99 {:.0} µs: first chunk at {:.3}x of the reply (p50)",
        q(&hf, 0.5), q(&hf, 0.99), q(&hw, 0.5), q(&hw, 0.99), q(&hf, 0.5) / q(&hw, 0.5)
    );

    // The same figures as JSON lines on stdout (scripts/bench.sh keeps them).
    println!(
        "{{\"name\":\"p14_run_overhead\",\"p50_us\":{:.1},\"p99_us\":{:.1},\"baseline_p50_us\":{:.1},\"baseline_p99_us\":{:.1},\"added_p99_us\":{:.1},\"count\":{SAMPLES}}}",
        j_plain.0, j_plain.1, p_plain.0, p_plain.1, j_plain.1 - p_plain.1
    );
    println!(
        "{{\"name\":\"p14_zero_loss_one_effect\",\"p50_us\":{:.0},\"p99_us\":{:.0},\"baseline_p50_us\":{:.0},\"baseline_p99_us\":{:.0},\"ratio_p50\":{:.3},\"ratio_p99\":{:.3},\"count\":{SAMPLES}}}",
        zo.0, zo.1, zn.0, zn.1, zo.0 / zn.0, zo.1 / zn.1
    );
    println!(
        "{{\"name\":\"p14_first_chunk\",\"p50_us\":{:.0},\"p99_us\":{:.0},\"baseline_p50_us\":{:.0},\"baseline_p99_us\":{:.0},\"ratio_p50\":{:.3},\"count\":500}}",
        q(&hf, 0.5), q(&hf, 0.99), q(&hw, 0.5), q(&hw, 0.99), q(&hf, 0.5) / q(&hw, 0.5)
    );
    let mut g = c.benchmark_group("run_overhead");
    g.bench_function("plain", |b| b.iter(|| plain.one(&rt)));
    g.bench_function("journaled", |b| b.iter(|| journaled.one(&rt)));
    g.finish();
    let mut g = c.benchmark_group("zero_loss");
    g.bench_function("none", |b| b.iter(|| none.one(&rt)));
    g.bench_function("one_effect", |b| b.iter(|| one.one(&rt)));
    g.finish();
    let mut g = c.benchmark_group("stream");
    g.bench_function("first_chunk_and_reply", |b| b.iter(|| stream.streamed(&rt)));
    g.finish();
}

criterion_group!(benches, effects);
criterion_main!(benches);

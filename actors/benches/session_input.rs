//! P7: inputs/s through a session actor (seq-numbered, deduplicated, bounded queue) vs raw ractor
//! `cast` to an actor doing the same arithmetic, in the same run; the session actor is measured
//! twice, on a host without instruments and on one whose meter is exported the way a node exports
//! it (OpenTelemetry SDK + Prometheus registry: the per-input handler histogram is recorded for
//! real). P12: restart latency after a handler panic (panic → session serving again from its
//! checkpoint).
//!
//! Run: `cargo bench -p opengrid-actors --bench session_input`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use opengrid_actors::*;
use opengrid_session::*;
use ractor::{Actor, ActorProcessingErr, ActorRef};

struct Sum;

impl SessionHandler for Sum {
    type State = u64;
    type Input = u64;
    type Output = u64;
    fn id(&self) -> &str {
        "sum"
    }
    fn init(&self, _: &SessionId) -> u64 {
        0
    }
    async fn handle(&self, s: &mut u64, v: u64, _: &SessionContext) -> Result<u64, HandlerError> {
        if v == u64::MAX {
            panic!("bench panic");
        }
        *s = s.wrapping_add(v);
        Ok(*s)
    }
}

/// Raw ractor baseline: same arithmetic, same per-message reply channel (a oneshot), no seq.
struct RawSum;
enum RawMsg {
    Add(u64, tokio::sync::oneshot::Sender<u64>),
}
impl ractor::Message for RawMsg {}
impl Actor for RawSum {
    type Msg = RawMsg;
    type State = u64;
    type Arguments = ();
    async fn pre_start(&self, _: ActorRef<RawMsg>, _: ()) -> Result<u64, ActorProcessingErr> {
        Ok(0)
    }
    async fn handle(
        &self,
        _: ActorRef<RawMsg>,
        m: RawMsg,
        s: &mut u64,
    ) -> Result<(), ActorProcessingErr> {
        let RawMsg::Add(v, tx) = m;
        *s = s.wrapping_add(v);
        let _ = tx.send(*s);
        Ok(())
    }
}

const WINDOW: usize = 512;

/// One window of pipelined inputs (seqs after `seq`), then every reply.
async fn submit_window(s: &SessionHandle<Sum>, seq: &mut u64) {
    let mut pending = Vec::with_capacity(WINDOW);
    for _ in 0..WINDOW {
        *seq += 1;
        pending.push(s.submit(Seq(*seq), 1).unwrap());
    }
    for p in pending {
        p.wait().await.unwrap();
    }
}

fn bench_input_path(c: &mut Criterion) {
    // Handler panics are part of this bench (P12); log them as one line, not a backtrace each.
    opengrid_actors::install_panic_hook();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let host = rt.block_on(async {
        SessionHost::new(
            Arc::new(MemoryCheckpointStore::new()),
            HostConfig {
                queue_capacity: WINDOW * 2,
                ..HostConfig::default()
            },
            Services::default(),
        )
        .await
        .unwrap()
    });
    let mut policy = CheckpointPolicy::periodic(Duration::from_secs(3600));
    policy.idle_timeout = Duration::from_secs(3600);
    let s = rt
        .block_on(host.start(
            Arc::new(Sum),
            SessionId::new("bench").unwrap(),
            Epoch(1),
            policy,
        ))
        .unwrap();
    // The node's export path: an SDK provider whose reader is a Prometheus registry.
    let registry = prometheus::Registry::new();
    let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_reader(
            opentelemetry_prometheus::exporter()
                .with_registry(registry.clone())
                .build()
                .unwrap(),
        )
        .build();
    let metered_host = rt.block_on(async {
        use opentelemetry::metrics::MeterProvider as _;
        SessionHost::new(
            Arc::new(MemoryCheckpointStore::new()),
            HostConfig {
                queue_capacity: WINDOW * 2,
                meter: Some(provider.meter("opengrid_actors")),
                ..HostConfig::default()
            },
            Services::default(),
        )
        .await
        .unwrap()
    });
    let metered = rt
        .block_on(metered_host.start(
            Arc::new(Sum),
            SessionId::new("bench-metered").unwrap(),
            Epoch(1),
            policy,
        ))
        .unwrap();
    let (raw, _) = rt.block_on(Actor::spawn(None, RawSum, ())).unwrap();

    let mut g = c.benchmark_group("p7_input_path");
    g.throughput(Throughput::Elements(WINDOW as u64));
    let mut seq = 0u64;
    g.bench_function("session_actor_submit_window512", |b| {
        b.iter(|| rt.block_on(submit_window(&s, &mut seq)))
    });
    let mut metered_seq = 0u64;
    g.bench_function("session_actor_submit_window512_metered", |b| {
        b.iter(|| rt.block_on(submit_window(&metered, &mut metered_seq)))
    });
    assert!(
        registry
            .gather()
            .iter()
            .any(|f| f.name() == "opengrid_actors_handler_seconds"),
        "the metered host exported no handler histogram"
    );
    g.bench_function("raw_ractor_cast_window512", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut pending = Vec::with_capacity(WINDOW);
                for _ in 0..WINDOW {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    raw.cast(RawMsg::Add(1, tx)).unwrap();
                    pending.push(rx);
                }
                for p in pending {
                    p.await.unwrap();
                }
            })
        })
    });
    g.finish();

    // P12: a panicking input, then the next input served from the restarted incarnation.
    let mut g = c.benchmark_group("p12_restart");
    g.sample_size(20);
    let restart_host = rt.block_on(async {
        SessionHost::new(
            Arc::new(MemoryCheckpointStore::new()),
            HostConfig {
                restart: RestartIntensity {
                    max_restarts: u32::MAX,
                    within: Duration::from_millis(1),
                },
                ..HostConfig::default()
            },
            Services::default(),
        )
        .await
        .unwrap()
    });
    let r = rt
        .block_on(restart_host.start(
            Arc::new(Sum),
            SessionId::new("restart").unwrap(),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        ))
        .unwrap();
    let mut rseq = 0u64;
    g.bench_function("panic_to_serving_again", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    rseq += 1;
                    let t = Instant::now();
                    let e = r.send(Seq(rseq), u64::MAX).await.unwrap_err();
                    assert!(matches!(e, SessionError::HandlerPanicked { .. }));
                    r.send(Seq(rseq), 1).await.unwrap();
                    total += t.elapsed();
                }
                total
            })
        })
    });
    g.finish();
    rt.block_on(host.shutdown());
    rt.block_on(restart_host.shutdown());
}

criterion_group!(benches, bench_input_path);
criterion_main!(benches);

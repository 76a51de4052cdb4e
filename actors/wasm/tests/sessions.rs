//! WASM agents as sessions on a real `SessionHost`: the Rust and Python counters answer and
//! survive a checkpoint restore; a hostile agent's loop, memory bomb and trap are contained,
//! leave its state intact, and do not stall other sessions on the same runtime.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use opengrid_actors::{HandlerError, Reply, SessionHandle, SessionHandler};
use opengrid_session::{CheckpointPolicy, CheckpointStore, Epoch, Seq, SessionId};
use opengrid_wasm::WasmHandler;
use serde_json::{json, Value};

fn sid(s: &str) -> SessionId {
    SessionId::new(s).expect("valid session id")
}

async fn send(s: &SessionHandle<WasmHandler>, seq: u64, v: Value) -> Result<Value, HandlerError> {
    match s
        .send(Seq(seq), v)
        .await
        .expect("the session accepts the input")
    {
        Reply::Processed { output, .. } => output,
        r => panic!("seq {seq}: {r:?}"),
    }
}

/// Counts through a session, checks the checkpoint holds the guest's JSON state, restarts the
/// host on the same store and continues from the checkpoint.
async fn counter_survives_restore(agent: &str) {
    let cache = tempfile::tempdir().unwrap();
    let rt = runtime(cache.path());
    let loaded = rt.load_bytes(&package(agent).to_bytes(), None).unwrap();
    let handler = Arc::new(WasmHandler::new(loaded));
    assert_eq!(handler.id(), format!("{agent}@0.1.0"));
    let store = memory_store();
    let id = sid(&format!("{agent}-restore"));
    {
        let host = host(store.clone()).await;
        host.register(handler.clone());
        assert!(host.handler_ids().contains(&format!("{agent}@0.1.0")));
        let s = host
            .start(
                handler.clone(),
                id.clone(),
                Epoch(1),
                CheckpointPolicy::synchronous(),
            )
            .await
            .unwrap();
        assert_eq!(send(&s, 1, json!(5)).await.unwrap(), json!(5));
        assert_eq!(send(&s, 2, json!(7)).await.unwrap(), json!(12));
        let e = send(&s, 3, json!("seven")).await.unwrap_err();
        assert_eq!(e.code, "bad_input", "{e}");
        host.shutdown().await;
    }
    let cp = store.get_latest(&id).unwrap().expect("a checkpoint");
    assert_eq!(cp.seq, Seq(3));
    assert_eq!(handler.decode_state(&cp.state).unwrap(), b"12".to_vec());

    let host = host(store.clone()).await;
    let s = host
        .start(
            handler.clone(),
            id.clone(),
            Epoch(2),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    assert_eq!(send(&s, 4, json!(1)).await.unwrap(), json!(13));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_counter_answers_and_survives_restore() {
    counter_survives_restore("counter-rs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_counter_answers_and_survives_restore() {
    counter_survives_restore("counter-py").await;
}

/// Loop, bomb and trap: each is refused with its code, counted, and the next normal input sees
/// the state of before the fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_faults_are_contained_and_state_survives() {
    let cache = tempfile::tempdir().unwrap();
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
    let rt = opengrid_wasm::Runtime::new(opengrid_wasm::RuntimeConfig {
        max_memory_bytes: 32 << 20,
        deadline: Duration::from_millis(300),
        meter: Some(opentelemetry::metrics::MeterProvider::meter(
            &provider,
            "opengrid_wasm",
        )),
        ..runtime_config(cache.path())
    })
    .unwrap();
    let handler = Arc::new(WasmHandler::new(
        rt.load_bytes(&package("hostile-rs").to_bytes(), None)
            .unwrap(),
    ));
    let host = host(memory_store()).await;
    let s = host
        .start(
            handler,
            sid("hostile"),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    assert_eq!(
        send(&s, 1, json!("hi")).await.unwrap(),
        json!({"echo": "hi", "echoed": 1})
    );
    let (mut seq, mut echoed) = (1, 1);
    for (input, code) in [
        ("loop", "agent_deadline"),
        ("bomb", "agent_memory"),
        ("trap", "agent_trap"),
    ] {
        seq += 1;
        let started = Instant::now();
        let e = send(&s, seq, json!(input)).await.unwrap_err();
        assert_eq!(e.code, code, "{input}: {e}");
        eprintln!("{input}: {code} after {:?}", started.elapsed());
        seq += 1;
        echoed += 1;
        assert_eq!(
            send(&s, seq, json!("again")).await.unwrap(),
            json!({"echo": "again", "echoed": echoed}),
            "state intact after {input}"
        );
    }
    let stats = rt.stats();
    assert_eq!(
        (stats.deadlines, stats.memory_faults, stats.traps),
        (1, 1, 1),
        "{stats:?}"
    );
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    for kind in ["deadline", "memory", "trap"] {
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("opengrid_wasm_faults_total{")
                    && l.contains(&format!("kind=\"{kind}\""))
            })
            .unwrap_or_else(|| panic!("no opengrid_wasm_faults_total{{kind={kind}}} in:\n{text}"));
        assert!(line.ends_with(" 1"), "{line}");
    }
    host.shutdown().await;
}

/// A counter session keeps answering while a hostile session on the same runtime spins until
/// its deadline, again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_sessions_answer_while_a_hostile_one_spins() {
    let cache = tempfile::tempdir().unwrap();
    let rt = opengrid_wasm::Runtime::new(opengrid_wasm::RuntimeConfig {
        deadline: Duration::from_millis(400),
        ..runtime_config(cache.path())
    })
    .unwrap();
    let hostile = Arc::new(WasmHandler::new(
        rt.load_bytes(&package("hostile-rs").to_bytes(), None)
            .unwrap(),
    ));
    let counter = Arc::new(WasmHandler::new(
        rt.load_bytes(&package("counter-rs").to_bytes(), None)
            .unwrap(),
    ));
    let host = host(memory_store()).await;
    let bad = host
        .start(
            hostile,
            sid("spinner"),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    let good = host
        .start(
            counter,
            sid("bystander"),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    let spins = 3u64;
    let spinner = tokio::spawn(async move {
        for seq in 1..=spins {
            let e = send(&bad, seq, json!("loop")).await.unwrap_err();
            assert_eq!(e.code, "agent_deadline");
        }
    });
    let mut latencies = Vec::new();
    let mut seq = 0u64;
    while !spinner.is_finished() {
        seq += 1;
        let started = Instant::now();
        assert_eq!(send(&good, seq, json!(1)).await.unwrap(), json!(seq));
        latencies.push(started.elapsed());
    }
    spinner.await.unwrap();
    latencies.sort();
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    eprintln!(
        "bystander while a session spins: {} inputs, p50 {p50:?}, p99 {p99:?}, max {:?}",
        latencies.len(),
        latencies.last().unwrap()
    );
    // The spinner ran 3 × 400 ms; a bystander blocked behind it would answer a handful of times
    // with 400 ms latencies.
    assert!(latencies.len() > 50, "only {} answers", latencies.len());
    assert!(p99 < Duration::from_millis(100), "p99 {p99:?}");
    host.shutdown().await;
}

/// The host imports as a guest sees them: session id and seq, assets listed in the package (and
/// only those), and inference (absent from this build).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_imports_answer_within_the_package() {
    let cache = tempfile::tempdir().unwrap();
    let assets = tempfile::tempdir().unwrap();
    let hello = blake3::hash(b"hello").to_hex().to_string();
    std::fs::write(assets.path().join(&hello), b"hello").unwrap();
    let unlisted = blake3::hash(b"secret").to_hex().to_string();
    std::fs::write(assets.path().join(&unlisted), b"secret").unwrap();
    let model = blake3::hash(b"model").to_hex().to_string();
    let toml = format!(
        "{}\n[[assets]]\nname = \"greeting\"\nhash = \"{hello}\"\n[[models]]\nname = \"m\"\nhash = \"{model}\"\n",
        agent_toml("hostile-rs")
    );
    let signed = opengrid_wasm::Package::build(
        opengrid_wasm::PackageSource::Parts {
            agent_toml: &toml,
            component: component("hostile-rs"),
        },
        &developer_key(),
    )
    .unwrap();
    let rt = opengrid_wasm::Runtime::new(opengrid_wasm::RuntimeConfig {
        assets_dir: Some(assets.path().to_path_buf()),
        ..runtime_config(cache.path())
    })
    .unwrap();
    let handler = Arc::new(WasmHandler::new(
        rt.load_bytes(&signed.to_bytes(), None).unwrap(),
    ));
    let host = host(memory_store()).await;
    let s = host
        .start(
            handler,
            sid("imports"),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    assert_eq!(
        send(&s, 1, json!("whoami")).await.unwrap(),
        json!({"session": "imports", "seq": 1})
    );
    assert_eq!(
        send(&s, 2, json!({"asset": hello})).await.unwrap(),
        json!("hello")
    );
    let e = send(&s, 3, json!({"asset": unlisted})).await.unwrap_err();
    assert_eq!(e.code, "asset");
    assert!(e.message.contains("not one of the package's assets"), "{e}");
    let e = send(&s, 4, json!({"infer": "unknown"})).await.unwrap_err();
    assert_eq!(e.code, "inference");
    assert!(e.message.contains("not one of the package's models"), "{e}");
    let e = send(&s, 5, json!({"infer": "m"})).await.unwrap_err();
    assert_eq!(e.code, "inference");
    #[cfg(not(feature = "inference"))]
    assert!(e.message.contains("without inference"), "{e}");
    #[cfg(feature = "inference")]
    assert!(e.message.contains("no inference pool"), "{e}");
    host.shutdown().await;
}

/// With the pool full (one instance, held by a spinning input), another session's input is
/// refused with `agent_instantiate` instead of waiting or crashing; once the spinner hits its
/// deadline the slot is free and that session answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_refuses_instead_of_crashing() {
    let cache = tempfile::tempdir().unwrap();
    let rt = opengrid_wasm::Runtime::new(opengrid_wasm::RuntimeConfig {
        max_instances: 1,
        deadline: Duration::from_millis(500),
        ..runtime_config(cache.path())
    })
    .unwrap();
    let handler = Arc::new(WasmHandler::new(
        rt.load_bytes(&package("hostile-rs").to_bytes(), None)
            .unwrap(),
    ));
    let host = host(memory_store()).await;
    let spinner = host
        .start(
            handler.clone(),
            sid("hog"),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    let other = host
        .start(
            handler,
            sid("starved"),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    let before = rt.stats().instances;
    let spinning = tokio::spawn(async move { send(&spinner, 1, json!("loop")).await });
    // Wait (with a deadline) until the spinner holds the pool's only instance.
    let until = Instant::now() + Duration::from_secs(10);
    while rt.stats().instances == before {
        assert!(Instant::now() < until, "the spinner never got its instance");
        tokio::task::yield_now().await;
    }
    let e = send(&other, 1, json!("hi")).await.unwrap_err();
    assert_eq!(e.code, "agent_instantiate", "{e}");
    assert_eq!(spinning.await.unwrap().unwrap_err().code, "agent_deadline");
    assert_eq!(
        send(&other, 2, json!("hi")).await.unwrap(),
        json!({"echo": "hi", "echoed": 1})
    );
    host.shutdown().await;
}

/// A Prometheus registry behind an SDK meter provider, as the node exports metrics.
fn prometheus_meter() -> (
    prometheus::Registry,
    opentelemetry_sdk::metrics::SdkMeterProvider,
    opentelemetry::metrics::Meter,
) {
    let registry = prometheus::Registry::new();
    let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_reader(
            opentelemetry_prometheus::exporter()
                .with_registry(registry.clone())
                .build()
                .unwrap(),
        )
        .build();
    let meter = opentelemetry::metrics::MeterProvider::meter(&provider, "opengrid_wasm");
    (registry, provider, meter)
}

/// The value of the exported sample of `name` that carries `label`.
fn sample_value(registry: &prometheus::Registry, name: &str, label: &str) -> u64 {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .unwrap_or_else(|| panic!("no {name}{{{label}}} in:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// One session's inputs run in one instance: `init` instantiates it, every input after reuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_reuses_its_warm_instance() {
    let cache = tempfile::tempdir().unwrap();
    let (registry, _provider, meter) = prometheus_meter();
    let rt = opengrid_wasm::Runtime::new(opengrid_wasm::RuntimeConfig {
        meter: Some(meter),
        ..runtime_config(cache.path())
    })
    .unwrap();
    assert_eq!(
        rt.config().warm_capacity(),
        8,
        "half of the pool by default"
    );
    let handler = Arc::new(WasmHandler::new(
        rt.load_bytes(&package("counter-rs").to_bytes(), None)
            .unwrap(),
    ));
    let host = host(memory_store()).await;
    let s = host
        .start(
            handler,
            sid("warm"),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    let n = 20u64;
    for seq in 1..=n {
        assert_eq!(send(&s, seq, json!(1)).await.unwrap(), json!(seq));
    }
    let stats = rt.stats();
    assert_eq!(
        (stats.instances, stats.warm_hits, stats.warm),
        (1, n, 1),
        "{stats:?}"
    );
    assert_eq!(
        sample_value(&registry, "opengrid_wasm_instances_total", "warm=\"true\""),
        n
    );
    assert_eq!(
        sample_value(&registry, "opengrid_wasm_instances_total", "warm=\"false\""),
        1
    );
    host.shutdown().await;
}

/// After a trap, a deadline, a memory fault or a guest error the instance is dropped: the next
/// input instantiates a fresh one and sees the state of before the failed input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_fault_the_next_input_starts_fresh_from_the_state() {
    let cache = tempfile::tempdir().unwrap();
    let rt = opengrid_wasm::Runtime::new(opengrid_wasm::RuntimeConfig {
        max_memory_bytes: 32 << 20,
        deadline: Duration::from_millis(300),
        ..runtime_config(cache.path())
    })
    .unwrap();
    let handler = Arc::new(WasmHandler::new(
        rt.load_bytes(&package("hostile-rs").to_bytes(), None)
            .unwrap(),
    ));
    let host = host(memory_store()).await;
    let s = host
        .start(
            handler,
            sid("faulty"),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    assert_eq!(
        send(&s, 1, json!("hi")).await.unwrap(),
        json!({"echo": "hi", "echoed": 1})
    );
    assert_eq!(rt.stats().instances, 1);
    let unknown_asset = blake3::hash(b"nowhere").to_hex().to_string();
    let (mut seq, mut echoed) = (1, 1);
    for (input, code) in [
        (json!("trap"), "agent_trap"),
        (json!("loop"), "agent_deadline"),
        (json!("bomb"), "agent_memory"),
        (json!({ "asset": unknown_asset }), "asset"),
    ] {
        let before = rt.stats();
        seq += 1;
        let e = send(&s, seq, input.clone()).await.unwrap_err();
        assert_eq!(e.code, code, "{input}: {e}");
        let after_fault = rt.stats();
        assert_eq!(after_fault.warm, 0, "{input}: the instance is dropped");
        assert_eq!(
            after_fault.warm_hits,
            before.warm_hits + 1,
            "{input} ran in the warm instance"
        );
        seq += 1;
        echoed += 1;
        assert_eq!(
            send(&s, seq, json!("again")).await.unwrap(),
            json!({"echo": "again", "echoed": echoed}),
            "state of before {input}"
        );
        let after = rt.stats();
        assert_eq!(
            after.instances,
            before.instances + 1,
            "a fresh instance after {input}"
        );
        assert_eq!(after.warm, 1);
    }
    host.shutdown().await;
}

/// More sessions than warm slots: the set stays within its bound, the least recently used
/// instances give way, and every session keeps answering from its own state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_warm_set_stays_within_its_bound() {
    let cache = tempfile::tempdir().unwrap();
    let rt = opengrid_wasm::Runtime::new(opengrid_wasm::RuntimeConfig {
        max_instances: 8,
        warm_instances: Some(2),
        ..runtime_config(cache.path())
    })
    .unwrap();
    let handler = Arc::new(WasmHandler::new(
        rt.load_bytes(&package("counter-rs").to_bytes(), None)
            .unwrap(),
    ));
    let host = host(memory_store()).await;
    let mut sessions = Vec::new();
    for i in 0..5 {
        sessions.push(
            host.start(
                handler.clone(),
                sid(&format!("lru-{i}")),
                Epoch(1),
                CheckpointPolicy::synchronous(),
            )
            .await
            .unwrap(),
        );
        assert!(rt.stats().warm <= 2, "{:?}", rt.stats());
    }
    for round in 1..=3u64 {
        for (i, s) in sessions.iter().enumerate() {
            let add = i as u64 + 1;
            assert_eq!(
                send(s, round, json!(add)).await.unwrap(),
                json!(add * round),
                "session {i}, round {round}"
            );
            assert!(rt.stats().warm <= 2, "{:?}", rt.stats());
        }
    }
    // The last session used is warm: its next input reuses the instance.
    let before = rt.stats();
    assert_eq!(send(&sessions[4], 4, json!(5)).await.unwrap(), json!(20));
    let after = rt.stats();
    assert_eq!(after.warm_hits, before.warm_hits + 1, "{after:?}");
    assert_eq!(after.instances, before.instances, "{after:?}");
    assert_eq!(after.warm, 2);
    assert!(after.warm_evictions >= 3, "{after:?}");
    host.shutdown().await;
}

/// Warm instances filling the whole pool do not lock out new sessions: when instantiation finds
/// the pool exhausted the least recently used warm instance gives way, so sessions far beyond
/// the pool's size all answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_beyond_the_pool_size_answer() {
    let cache = tempfile::tempdir().unwrap();
    let rt = opengrid_wasm::Runtime::new(opengrid_wasm::RuntimeConfig {
        max_instances: 3,
        warm_instances: Some(3),
        ..runtime_config(cache.path())
    })
    .unwrap();
    let handler = Arc::new(WasmHandler::new(
        rt.load_bytes(&package("counter-rs").to_bytes(), None)
            .unwrap(),
    ));
    let host = host(memory_store()).await;
    let mut sessions = Vec::new();
    for i in 0..10 {
        sessions.push(
            host.start(
                handler.clone(),
                sid(&format!("crowd-{i}")),
                Epoch(1),
                CheckpointPolicy::synchronous(),
            )
            .await
            .unwrap(),
        );
    }
    for round in 1..=2u64 {
        for (i, s) in sessions.iter().enumerate() {
            assert_eq!(
                send(s, round, json!(1)).await.unwrap(),
                json!(round),
                "session {i}, round {round}"
            );
        }
    }
    let stats = rt.stats();
    assert_eq!(stats.warm, 3, "{stats:?}");
    assert!(stats.warm_evictions >= 10, "{stats:?}");
    host.shutdown().await;
}

/// A session's `[agent]` limits (here from a node-style `LimitsService`) tighten the runtime's:
/// its loop is cut at its own 100 ms deadline and its memory bomb at its own 8 MiB, while another
/// session of the same agent keeps the runtime's bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_s_own_limits_tighten_the_runtime_s() {
    use opengrid_wasm::limits::{AgentLimits, LimitsService, LimitsSource};
    struct Tight;
    impl LimitsSource for Tight {
        fn limits(&self, session: &str) -> AgentLimits {
            match session {
                "tight" => AgentLimits {
                    max_memory_bytes: Some(8 << 20),
                    deadline: Some(Duration::from_millis(100)),
                },
                // Asking for more than the node allows gets the node's bound.
                _ => AgentLimits {
                    max_memory_bytes: Some(1 << 30),
                    deadline: Some(Duration::from_secs(60)),
                },
            }
        }
    }
    let cache = tempfile::tempdir().unwrap();
    let rt = opengrid_wasm::Runtime::new(opengrid_wasm::RuntimeConfig {
        max_memory_bytes: 32 << 20,
        deadline: Duration::from_millis(600),
        ..runtime_config(cache.path())
    })
    .unwrap();
    let handler = Arc::new(WasmHandler::new(
        rt.load_bytes(&package("hostile-rs").to_bytes(), None)
            .unwrap(),
    ));
    use opengrid_actors::{HostConfig, Services, SessionHost};
    let services = Services::default().with(LimitsService(Arc::new(Tight)));
    let host = SessionHost::new(memory_store(), HostConfig::default(), services)
        .await
        .unwrap();
    let start = |id: &'static str| {
        let (host, handler) = (host.clone(), handler.clone());
        async move {
            host.start(handler, sid(id), Epoch(1), CheckpointPolicy::synchronous())
                .await
                .unwrap()
        }
    };
    let (tight, loose) = (start("tight").await, start("loose").await);
    let timed = |s: SessionHandle<WasmHandler>, seq, input: &'static str| async move {
        let t = Instant::now();
        let e = send(&s, seq, json!(input)).await.unwrap_err();
        (e, t.elapsed())
    };
    let (e, took) = timed(tight.clone(), 1, "loop").await;
    assert_eq!(e.code, "agent_deadline", "{e}");
    assert!(e.message.contains("100ms"), "{e}");
    let (e, took_loose) = timed(loose.clone(), 1, "loop").await;
    assert_eq!(e.code, "agent_deadline", "{e}");
    assert!(e.message.contains("600ms"), "the node's bound wins: {e}");
    eprintln!("loop cut after {took:?} (own 100 ms) and {took_loose:?} (node's 600 ms)");
    let (e, _) = timed(tight, 2, "bomb").await;
    assert_eq!(e.code, "agent_memory", "{e}");
    assert!(e.message.contains(&(8u64 << 20).to_string()), "{e}");
    let (e, _) = timed(loose, 2, "bomb").await;
    assert!(e.message.contains(&(32u64 << 20).to_string()), "{e}");
    host.shutdown().await;
}

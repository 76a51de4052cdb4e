//! P9: time for a summary from one RC to be accepted by every other RC, and gossip bandwidth per RC
//! per interval. 50 RCs in one process over real libp2p (TCP on 127.0.0.1, noise, yamux,
//! gossipsub with strict validation and peer scoring), connected in a sparse mesh.
//!
//! `cargo bench -p opengrid-canopy --bench propagation` runs the full benchmark and prints JSON
//! lines. Without `--bench` (as under `cargo test --benches`) it runs a small smoke version.
//! `CANOPY_BENCH_RCS`, `CANOPY_BENCH_ROUNDS` and `CANOPY_BENCH_INTERVAL_MS` (publish interval of
//! the bandwidth phase, 5000 by default) override the sizes.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use hdrhistogram::Histogram;
use opengrid_canopy::{
    Canopy, CanopyConfig, CanopyError, ColonySummary, HardwareCapacity, PeerEvent, PriceRange,
};
use opengrid_session::{AcceleratorClass, Did};
use tokio::sync::mpsc;

/// Each RC dials this many earlier RCs (the first few dial fewer): a sparse, connected graph.
const DIALS_PER_RC: usize = 3;
/// Publish intervals measured in the bandwidth phase.
const BANDWIDTH_INTERVALS: u32 = 4;
/// A round that has not reached every RC by then counts as lost.
const ROUND_DEADLINE: Duration = Duration::from_secs(5);
/// Bound on setting the network up.
const SETUP_DEADLINE: Duration = Duration::from_secs(120);

fn key(i: usize) -> SigningKey {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    seed[31] = 0xc4;
    SigningKey::from_bytes(&seed)
}

fn summary(i: usize, did: &Did) -> ColonySummary {
    let zones = ["DE", "FR", "US", "JP", "BR"];
    ColonySummary {
        colony_id: format!("colony-{i:02}"),
        region: format!("region-{}", i % 5),
        jurisdictions: vec![zones[i % zones.len()].to_string()],
        hardware: BTreeMap::from([
            (
                AcceleratorClass::None,
                HardwareCapacity {
                    free_slots: 400,
                    free_memory_bytes: 512 << 30,
                    max_node_free_memory_bytes: 32 << 30,
                },
            ),
            (
                AcceleratorClass::GpuSmall,
                HardwareCapacity {
                    free_slots: 40,
                    free_memory_bytes: 64 << 30,
                    max_node_free_memory_bytes: 16 << 30,
                },
            ),
        ]),
        handlers: BTreeMap::from([
            ("tutor".to_string(), 300),
            ("transcriber".to_string(), 100),
            ("vision-inspector".to_string(), 40),
        ]),
        capabilities: BTreeMap::from([("asr".to_string(), 100), ("vision".to_string(), 40)]),
        load_permille: (i * 17 % 1000) as u16,
        price: PriceRange {
            min_micros_per_input: 5,
            max_micros_per_input: 25,
        },
        rc_client_api: format!("http://10.0.{}.1:7700", i),
        rc_control_addr: format!("10.0.{}.1:7701", i),
        rc_did: did.clone(),
        seq: 0,
        issued_at_ms: 0,
    }
}

/// Deterministic xorshift for the dial graph.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

async fn run(n: usize, rounds: usize, interval: Duration) -> Result<(), CanopyError> {
    let dids: Vec<Did> = (0..n)
        .map(|i| Did::from_public_key(&key(i).verifying_key()))
        .collect();
    let trusted: std::collections::BTreeSet<Did> = dids.iter().cloned().collect();
    let setup_started = Instant::now();

    // Start the RCs, each dialing up to DIALS_PER_RC distinct earlier ones (always i - 1, so the
    // graph is connected).
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut rcs: Vec<Canopy> = Vec::with_capacity(n);
    let mut edges = 0usize;
    for i in 0..n {
        let mut targets = Vec::new();
        if i > 0 {
            targets.push(i - 1);
        }
        while targets.len() < DIALS_PER_RC.min(i) {
            let t = (next(&mut rng) % i as u64) as usize;
            if !targets.contains(&t) {
                targets.push(t);
            }
        }
        edges += targets.len();
        let mut config = CanopyConfig::new(key(i));
        config.trusted_rcs = trusted.clone();
        config.publish_interval = interval;
        config.bootstrap = targets.iter().map(|t| rcs[*t].listen_addr()).collect();
        rcs.push(Canopy::start(config).await?);
    }

    // Forward every acceptance, stamped, into one channel.
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Did, u64, Instant)>();
    for (j, rc) in rcs.iter().enumerate() {
        let mut events = rc.subscribe();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(ev) = events.recv().await {
                if let PeerEvent::Accepted { rc_did, seq, .. } = ev {
                    if tx.send((j, rc_did, seq, Instant::now())).is_err() {
                        break;
                    }
                }
            }
        });
    }
    drop(tx);

    // Warm-up: RCs publish until every table is full (gossipsub meshes form over the first
    // heartbeats; a summary published before that may miss some RCs, as a real RC's would until its
    // next interval).
    loop {
        let tables: Vec<Vec<Did>> = rcs
            .iter()
            .map(|rc| {
                rc.peering_table()
                    .into_iter()
                    .map(|e| e.summary.rc_did)
                    .collect()
            })
            .collect();
        let missing: Vec<usize> = (0..n)
            .filter(|i| {
                tables
                    .iter()
                    .enumerate()
                    .any(|(j, t)| j != *i && !t.contains(&dids[*i]))
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        if setup_started.elapsed() > SETUP_DEADLINE {
            eprintln!(
                "setup did not converge within {SETUP_DEADLINE:?}: {} RCs missing",
                missing.len()
            );
            break;
        }
        for i in missing {
            match rcs[i].publish(summary(i, &dids[i])).await {
                Ok(_) | Err(CanopyError::NoPeers) => {}
                Err(e) => return Err(e),
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    while rx.try_recv().is_ok() {}
    eprintln!(
        "{n} RCs up, {edges} dialled links, tables full after {:?}",
        setup_started.elapsed()
    );

    // Latency rounds.
    // µs from publish to the last RC accepting it (HdrHistogram, 3 significant digits)
    let mut latencies = Histogram::<u64>::new_with_max(3_600_000_000, 3).expect("valid bounds");
    let mut lost = 0usize;
    for r in 0..rounds {
        let p = (r * 7) % n;
        let t0 = Instant::now();
        let signed = loop {
            match rcs[p].publish(summary(p, &dids[p])).await {
                Ok(s) => break s,
                Err(CanopyError::NoPeers) if t0.elapsed() < ROUND_DEADLINE => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                Err(e) => return Err(e),
            }
        };
        let seq = signed.summary.seq;
        let mut reached = HashSet::new();
        let mut last = t0;
        let deadline = tokio::time::Instant::from_std(t0 + ROUND_DEADLINE);
        while reached.len() < n - 1 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((j, did, s, at))) => {
                    if did == dids[p] && s == seq && reached.insert(j) {
                        last = last.max(at);
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        if reached.len() == n - 1 {
            latencies.saturating_record(last.duration_since(t0).as_micros() as u64);
        } else {
            lost += 1;
            eprintln!("round {r}: reached {} of {} RCs", reached.len(), n - 1);
        }
    }

    // Bandwidth: every RC publishes every interval; count every byte on every canopy connection.
    let summary_bytes = summary(0, &dids[0]).sign(&key(0)).encode().len();
    // Real RCs start at different times, so their publish timers are spread over the interval;
    // start the providers spread the same way.
    for (i, rc) in rcs.iter().enumerate() {
        let s = summary(i, &dids[i]);
        rc.set_summary_provider(Arc::new(move || Some(s.clone())))
            .await?;
        tokio::time::sleep(interval / n as u32).await;
    }
    let sent = |rcs: &[Canopy]| {
        rcs.iter()
            .map(|rc| rc.metrics().wire_bytes_sent)
            .sum::<u64>()
    };
    let accepted = |rcs: &[Canopy]| rcs.iter().map(|rc| rc.metrics().accepted).sum::<u64>();
    let (sent0, acc0, w0) = (sent(&rcs), accepted(&rcs), Instant::now());
    tokio::time::sleep(interval * BANDWIDTH_INTERVALS).await; // the measurement window itself
    let (sent1, acc1, window) = (sent(&rcs), accepted(&rcs), w0.elapsed());
    let intervals = window.as_secs_f64() / interval.as_secs_f64();
    let per_rc_per_interval = (sent1 - sent0) as f64 / n as f64 / intervals;
    let accepted_per_interval = (acc1 - acc0) as f64 / intervals;

    println!(
        "{{\"name\":\"canopy_propagation_{n}\",\"count\":{},\"p50_us\":{},\"p99_us\":{},\"max_us\":{},\"lost\":{lost},\"rcs\":{n},\"dialled_links\":{edges},\"bytes_per_rc_per_interval\":{:.0},\"interval_ms\":{},\"summary_bytes\":{summary_bytes},\"accepted_per_interval\":{:.0},\"expected_accepted_per_interval\":{}}}",
        latencies.len(),
        latencies.value_at_quantile(0.5),
        latencies.value_at_quantile(0.99),
        latencies.max(),
        per_rc_per_interval,
        interval.as_millis(),
        accepted_per_interval,
        n * (n - 1),
    );
    for rc in rcs {
        rc.shutdown().await;
    }
    Ok(())
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (n, rounds) = if full {
        (env("CANOPY_BENCH_RCS", 50), env("CANOPY_BENCH_ROUNDS", 50))
    } else {
        (env("CANOPY_BENCH_RCS", 6), env("CANOPY_BENCH_ROUNDS", 3))
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let interval_ms = env("CANOPY_BENCH_INTERVAL_MS", if full { 5000 } else { 300 });
    let interval = Duration::from_millis(interval_ms.max(10) as u64);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    if let Err(e) = runtime.block_on(run(n.max(2), rounds.max(1), interval)) {
        eprintln!("canopy propagation bench failed: {e}");
        std::process::exit(1);
    }
}

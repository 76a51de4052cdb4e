//! P5: health + admission probe latency on a node whose handler workers are saturated, vs idle.
//!
//! `cargo bench -p opengrid-cluster --bench isolation` — starts an RC and a node in this process
//! (separate control and handler runtimes, real ractor_cluster link, HTTP on 127.0.0.1), probes
//! `GET /health` on the node and `POST /admission/probe` on the RC, first idle, then while every
//! handler worker busy-loops; prints one JSON line per probe kind and condition.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use opengrid_actors::{HandlerError, SessionContext, SessionHandler, SessionHost};
use opengrid_cluster::node::config::NodeConfig;
use opengrid_cluster::rc::config::RcConfig;
use opengrid_cluster::{start_node, start_rc};
use opengrid_session::SessionId;
use serde_json::json;

/// Busy-waits the number of milliseconds it is given.
struct Spin;
impl SessionHandler for Spin {
    type State = u64;
    type Input = u64;
    type Output = u64;
    fn id(&self) -> &str {
        "spin"
    }
    fn init(&self, _: &SessionId) -> u64 {
        0
    }
    async fn handle(&self, n: &mut u64, ms: u64, _: &SessionContext) -> Result<u64, HandlerError> {
        let end = Instant::now() + Duration::from_millis(ms.min(1000));
        while Instant::now() < end {
            std::hint::spin_loop();
        }
        *n += 1;
        Ok(*n)
    }
}

fn setup(h: &SessionHost) {
    h.register(Arc::new(Spin));
}

const MANIFEST: &str = "version = 1\n[session]\nhandler = \"spin\"\ncontinuity = \"interactive\"\n[placement]\njurisdictions = [\"DE\"]\n[migration]\ncost = \"cheap\"\nacceptable_loss = \"5s\"\nmax_blackout = \"100ms\"\n";

async fn probe(
    http: &reqwest::Client,
    node: &str,
    rc: &str,
    n: usize,
) -> (Histogram<u64>, Histogram<u64>) {
    let hist = || Histogram::<u64>::new_with_max(3_600_000_000, 3).expect("valid bounds");
    let (mut health, mut admit) = (hist(), hist());
    for _ in 0..n {
        let t = Instant::now();
        let r = http
            .get(format!("{node}/health"))
            .send()
            .await
            .expect("health");
        assert!(r.status().is_success());
        let _ = r.bytes().await;
        health.saturating_record(t.elapsed().as_micros() as u64);
        let t = Instant::now();
        let r = http
            .post(format!("{rc}/admission/probe"))
            .header("content-type", "application/toml")
            .body(MANIFEST)
            .send()
            .await
            .expect("probe");
        assert!(r.status().is_success());
        let _ = r.bytes().await;
        admit.saturating_record(t.elapsed().as_micros() as u64);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (health, admit)
}

/// p50, p99 and max of `lat`, µs (HdrHistogram, 3 significant digits).
fn pct(lat: Histogram<u64>) -> (u64, u64, u64) {
    (
        lat.value_at_quantile(0.5),
        lat.value_at_quantile(0.99),
        lat.max(),
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("isolation: bench");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let rc = start_rc(RcConfig {
            data_dir: dir.path().join("rc"),
            api_listen: "127.0.0.1:0".parse().unwrap(),
            cluster_listen: "127.0.0.1:0".parse().unwrap(),
            dev: true,
            ..RcConfig::default()
        })
        .await
        .unwrap();
        let handler_threads = 2;
        let node = start_node(
            NodeConfig {
                data_dir: dir.path().join("node"),
                api_listen: "127.0.0.1:0".parse().unwrap(),
                rc_cluster: rc.cluster_addr().to_string(),
                handler_threads,
                fsync: false,
                dev: true,
                ..NodeConfig::default()
            },
            setup,
        )
        .await
        .unwrap();
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !node.core().may_serve() {
            assert!(Instant::now() < deadline, "node never joined");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let n = 400;
        let (h_idle, a_idle) = probe(&http, &node.api_url(), &rc.api_url(), n).await;
        // Saturate: 2 × handler_threads sessions each fed back-to-back 20 ms spins.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut load = Vec::new();
        for i in 0..(2 * handler_threads) {
            let r = http.post(format!("{}/sessions?session_id=spin-{i}", rc.api_url())).header("content-type", "application/toml").body(MANIFEST).send().await.unwrap();
            assert_eq!(r.status(), 201);
            let placed: serde_json::Value = r.json().await.unwrap();
            let cap = placed["capability"].as_str().unwrap_or_default().to_string();
            let (http, base, stop) = (http.clone(), node.api_url(), stop.clone());
            load.push(tokio::spawn(async move {
                let mut seq = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    seq += 1;
                    let _ = http.post(format!("{base}/sessions/spin-{i}/inputs")).bearer_auth(&cap).json(&json!({"seq": seq, "input": 20})).send().await;
                }
                seq
            }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (h_sat, a_sat) = probe(&http, &node.api_url(), &rc.api_url(), n).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut inputs = 0;
        for l in load {
            inputs += l.await.unwrap_or(0);
        }
        for (name, idle, sat) in [("health", h_idle, h_sat), ("admission_probe", a_idle, a_sat)] {
            let (i50, i99, imax) = pct(idle);
            let (s50, s99, smax) = pct(sat);
            println!(
                "{}",
                json!({"name": format!("isolation/{name}"), "p50_us": s50, "p99_us": s99, "max_us": smax, "count": n,
                    "baseline": {"name": "idle", "p50_us": i50, "p99_us": i99, "max_us": imax},
                    "handler_threads": handler_threads, "spin_inputs_during_run": inputs})
            );
        }
        node.shutdown().await;
        rc.shutdown().await;
    });
}

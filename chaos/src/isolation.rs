//! `bench isolation` (P5): control-plane latency of a node whose inference plane is saturated,
//! against the same probes on the idle node, in the same run.
//!
//! Real processes on 127.0.0.1: one RC and one node, both the `opengrid` binary (found next to
//! this executable or in `$OPENGRID_BIN_DIR`; build it with
//! `cargo build --release -p opengrid-examples --bin opengrid`). The node runs an `[inference]`
//! section loading the models of `$OPENGRID_MODELS` on `$ORT_DYLIB_PATH` (both printed by
//! `scripts/setup-python.sh`).
//!
//! 1. **Idle**: `probes` × (`GET /health` on the node, `POST /admission/probe` on the RC).
//! 2. **Saturated**: `sessions` scorer sessions (`examples/src/scorer.rs`), each driven by one
//!    client that keeps a request of `rows` MLP rows in flight (each request is one `ctx.infer`
//!    run on an `og-infer` thread), bounded by [`IsolationConfig::max_load`] and a request cap;
//!    once inference has started, the same probes run again.
//!
//! The probes run on their own OS thread and single-threaded runtime, so the load clients of this
//! process do not queue them. Saturation is measured, not assumed: the node's
//! `inference.busy_us_total` (sum of run times) over the probe window, divided by
//! `threads × window`, is reported as `inference_busy`. During the whole run a monitor reads the
//! RC's view of the node (state, phi): `declared_dead` must stay false.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use crate::bench::{summarize, BenchError, Summary};
use crate::launcher::{find_binary, free_port, Launcher, ProcSpec, ProcState};
use crate::report::Progress;

/// P5 target: p99 of each probe while saturated, µs.
pub const TARGET_P99_US: u64 = 5_000;
const SECRET: &str = "isolation-bench-colony";

/// Knobs of the bench.
#[derive(Clone, Debug)]
pub struct IsolationConfig {
    /// Probes of each kind per condition.
    pub probes: usize,
    /// Pause between two probe pairs.
    pub gap: Duration,
    /// Scorer sessions, one load client each.
    pub sessions: usize,
    /// MLP rows per scoring request.
    pub rows: usize,
    /// `inference.threads` of the node.
    pub inference_threads: usize,
    /// `handler_threads` of the node.
    pub handler_threads: usize,
    /// Longest the load runs (it stops earlier when the probes are done).
    pub max_load: Duration,
    /// Most requests per load client.
    pub max_requests_per_client: u64,
}

impl Default for IsolationConfig {
    fn default() -> Self {
        IsolationConfig {
            probes: 1000,
            gap: Duration::from_millis(5),
            sessions: 16,
            rows: 65_536,
            inference_threads: 2,
            handler_threads: 2,
            max_load: Duration::from_secs(120),
            max_requests_per_client: 1_000_000,
        }
    }
}

/// One probe kind's result: saturated figures with the idle baseline of the same run.
#[derive(Clone, Debug, Serialize)]
pub struct IsolationResult {
    /// `isolation_node_health` or `isolation_rc_admission_probe`.
    pub name: String,
    /// Saturated median, µs.
    pub p50_us: u64,
    /// Saturated p99, µs.
    pub p99_us: u64,
    /// Saturated worst, µs.
    pub max_us: u64,
    /// Saturated samples.
    pub count: usize,
    /// Idle baseline median, µs.
    pub baseline_idle_p50_us: u64,
    /// Idle baseline p99, µs.
    pub baseline_idle_p99_us: u64,
    /// Idle baseline worst, µs.
    pub baseline_idle_max_us: u64,
    /// P5 target for the saturated p99, µs.
    pub target_p99_us: u64,
    /// Whether the saturated p99 is within the target.
    pub met: bool,
    /// Probes that failed or timed out (5 s), both conditions.
    pub failed: u64,
    /// Share of the inference threads' time spent running models during the saturated probes.
    pub inference_busy: f64,
    /// `inference.threads` of the node.
    pub inference_threads: usize,
    /// Device of the node's inference plane (`cpu` / `cuda`).
    pub device: String,
    /// Scoring requests answered during the run.
    pub load_requests: u64,
    /// Scoring requests that failed (HTTP error, handler error).
    pub load_errors: u64,
    /// Requests the inference queue refused (backpressure).
    pub backpressure: u64,
    /// Whether the RC declared the node dead (or suspect) at any point.
    pub declared_dead: bool,
    /// Highest phi the RC computed for the node.
    pub max_phi: f64,
    /// Scorer sessions / load clients.
    pub sessions: usize,
    /// Rows per scoring request.
    pub rows: usize,
}

fn failed(e: impl std::fmt::Display) -> BenchError {
    BenchError::Failed(e.to_string())
}

fn env_dir(var: &str) -> Result<PathBuf, BenchError> {
    match std::env::var_os(var) {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => Err(failed(format!(
            "{var} is not set: run `eval \"$(scripts/setup-python.sh)\"` first"
        ))),
    }
}

const SCORER_MANIFEST: &str = "version = 1\n[session]\nhandler = \"scorer\"\ncontinuity = \"interactive\"\n[placement]\njurisdictions = [\"DE\"]\n[migration]\ncost = \"cheap\"\nacceptable_loss = \"5s\"\nmax_blackout = \"100ms\"\n";

struct Colony {
    launcher: Launcher,
    rc_api: String,
    node_api: String,
    /// The operator's HTTP client.
    http: reqwest::Client,
}

fn write(path: &Path, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text).map_err(|e| failed(format!("{}: {e}", path.display())))
}

async fn get_json(http: &reqwest::Client, url: &str) -> Option<Value> {
    let r = http
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// Starts the RC and the node, waits until the node is an alive member.
async fn start_colony(cfg: &IsolationConfig, progress: &Progress) -> Result<Colony, BenchError> {
    let bin = find_binary("opengrid")?;
    let models = env_dir("OPENGRID_MODELS")?;
    env_dir("ORT_DYLIB_PATH")?;
    if !models.join("mlp.onnx").is_file() {
        return Err(failed(format!(
            "OPENGRID_MODELS={} has no mlp.onnx (run scripts/setup-python.sh)",
            models.display()
        )));
    }
    let mut launcher = Launcher::new()?;
    // The bench acts as the colony's operator (the RC's own key, made before it starts): its
    // token opens /status and every session.
    let http = opengrid_cluster::common::token::operator_http(
        &launcher.data_dir("rc")?,
        Duration::from_secs(30),
    )
    .map_err(failed)?;
    let http = &http;
    let (rc_api, rc_cluster, node_api) = (free_port()?, free_port()?, free_port()?);
    let rc_cfg = launcher.root().join("rc.toml");
    write(
        &rc_cfg,
        &format!(
            "version = 1\ndata_dir = {:?}\napi_listen = \"127.0.0.1:{rc_api}\"\ncluster_listen = \"127.0.0.1:{rc_cluster}\"\ncolony_secret = \"{SECRET}\"\n",
            launcher.data_dir("rc")?
        ),
    )?;
    let node_cfg = launcher.root().join("node.toml");
    write(
        &node_cfg,
        &format!(
            "version = 1\nname = \"busy\"\ndata_dir = {:?}\njurisdiction = \"DE\"\napi_listen = \"127.0.0.1:{node_api}\"\nrc_cluster = \"127.0.0.1:{rc_cluster}\"\ncolony_secret = \"{SECRET}\"\nfsync = false\nhandler_threads = {}\ncapacity = {}\n[inference]\nmodels_dir = {:?}\nthreads = {}\n",
            launcher.data_dir("node")?,
            cfg.handler_threads,
            cfg.sessions.max(1) + 16,
            models,
            cfg.inference_threads,
        ),
    )?;
    for (name, role, path) in [("rc", "rc", &rc_cfg), ("node", "node", &node_cfg)] {
        launcher.spawn(
            ProcSpec::new(name, &bin)
                .args([role, "--config", &path.display().to_string()])
                .env("RUST_LOG", "warn"),
        )?;
    }
    let (rc_api, node_api) = (
        format!("http://127.0.0.1:{rc_api}"),
        format!("http://127.0.0.1:{node_api}"),
    );
    let limit = Duration::from_secs(60);
    let deadline = Instant::now() + limit;
    loop {
        if let Some(m) = member(http, &rc_api).await {
            if m["state"] == "alive" {
                break;
            }
        }
        for name in ["rc", "node"] {
            let st = launcher.state(name)?;
            if st != ProcState::Running {
                return Err(BenchError::NotReady {
                    name: name.into(),
                    waited: limit,
                    why: format!("it is {st:?}"),
                    logs: launcher.keep_files().join(name).display().to_string(),
                });
            }
        }
        if Instant::now() > deadline {
            return Err(BenchError::NotReady {
                name: "node".into(),
                waited: limit,
                why: "not an alive member of the RC".into(),
                logs: launcher.keep_files().join("node").display().to_string(),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    progress.line(format!("rc {rc_api} and node {node_api} up"));
    Ok(Colony {
        launcher,
        rc_api,
        node_api,
        http: http.clone(),
    })
}

/// The RC's view of the node (`/status` member `busy`).
async fn member(http: &reqwest::Client, rc: &str) -> Option<Value> {
    let st = get_json(http, &format!("{rc}/status")).await?;
    st["members"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == "busy")
        .cloned()
}

struct Probes {
    health: Vec<u64>,
    admit: Vec<u64>,
    failed: u64,
}

/// `n` probe pairs on a dedicated OS thread with its own single-threaded runtime.
fn probe(node: &str, rc: &str, n: usize, gap: Duration) -> Result<Probes, BenchError> {
    let (node, rc) = (node.to_string(), rc.to_string());
    let t = std::thread::Builder::new()
        .name("og-bench-probe".into())
        .spawn(move || -> Result<Probes, String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let http = reqwest::Client::new();
                let timeout = Duration::from_secs(5);
                let mut p = Probes {
                    health: Vec::with_capacity(n),
                    admit: Vec::with_capacity(n),
                    failed: 0,
                };
                for _ in 0..n {
                    let t = Instant::now();
                    let ok = match http
                        .get(format!("{node}/health"))
                        .timeout(timeout)
                        .send()
                        .await
                    {
                        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    p.health.push(t.elapsed().as_micros() as u64);
                    p.failed += u64::from(!ok);
                    let t = Instant::now();
                    let ok = match http
                        .post(format!("{rc}/admission/probe"))
                        .header("content-type", "application/toml")
                        .body(SCORER_MANIFEST)
                        .timeout(timeout)
                        .send()
                        .await
                    {
                        Ok(r) => {
                            r.status().is_success()
                                && r.json::<Value>()
                                    .await
                                    .is_ok_and(|v| v["decision"] == "placed")
                        }
                        Err(_) => false,
                    };
                    p.admit.push(t.elapsed().as_micros() as u64);
                    p.failed += u64::from(!ok);
                    tokio::time::sleep(gap).await;
                }
                Ok(p)
            })
        })
        .map_err(BenchError::Io)?;
    t.join()
        .map_err(|_| failed("probe thread panicked"))?
        .map_err(failed)
}

#[derive(Default)]
struct LoadCounters {
    ok: AtomicU64,
    errors: AtomicU64,
    backpressure: AtomicU64,
}

/// Runs the bench; returns one result per probe kind.
pub async fn isolation(
    cfg: &IsolationConfig,
    progress: &Progress,
) -> Result<Vec<IsolationResult>, BenchError> {
    let colony = start_colony(cfg, progress).await?;
    let http = colony.http.clone();
    let (rc, node) = (colony.rc_api.clone(), colony.node_api.clone());
    let health0 = get_json(&http, &format!("{node}/health"))
        .await
        .ok_or_else(|| failed("node /health unreadable"))?;
    let device = health0["inference"]["device"]
        .as_str()
        .ok_or_else(|| failed(format!("node has no inference plane: {health0}")))?
        .to_string();
    let mlp = health0["inference"]["models"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["name"] == "mlp"))
        .and_then(|m| m["id"].as_str())
        .ok_or_else(|| failed(format!("node serves no `mlp` model: {health0}")))?
        .to_string();
    // Sessions first, so placement work is not in either window.
    for i in 0..cfg.sessions {
        let r = http
            .post(format!("{rc}/sessions?session_id=score-{i}"))
            .header("content-type", "application/toml")
            .body(SCORER_MANIFEST)
            .send()
            .await
            .map_err(failed)?;
        if r.status().as_u16() != 201 {
            return Err(failed(format!(
                "placing score-{i}: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            )));
        }
    }
    // Monitor: the RC's view of the node during the whole run.
    let stop_monitor = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (http, rc, stop) = (http.clone(), rc.clone(), stop_monitor.clone());
        tokio::spawn(async move {
            let (mut dead, mut max_phi) = (false, 0f64);
            while !stop.load(Ordering::Relaxed) {
                if let Some(m) = member(&http, &rc).await {
                    dead |= m["state"] != "alive";
                    max_phi = max_phi.max(m["phi"].as_f64().unwrap_or(0.0));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (dead, max_phi)
        })
    };

    progress.line(format!("idle: {} probe pairs", cfg.probes));
    let idle = {
        let (node, rc, n, gap) = (node.clone(), rc.clone(), cfg.probes, cfg.gap);
        tokio::task::spawn_blocking(move || probe(&node, &rc, n, gap))
            .await
            .map_err(failed)??
    };

    // Load: one client per session, one request in flight each.
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(LoadCounters::default());
    let load_deadline = Instant::now() + cfg.max_load;
    let load_http = http.clone();
    let mut load = Vec::new();
    for i in 0..cfg.sessions {
        let (http, node, mlp, stop, c) = (
            load_http.clone(),
            node.clone(),
            mlp.clone(),
            stop.clone(),
            counters.clone(),
        );
        let (rows, max) = (cfg.rows, cfg.max_requests_per_client);
        load.push(tokio::spawn(async move {
            for seq in 1..=max {
                if stop.load(Ordering::Relaxed) || Instant::now() >= load_deadline {
                    break;
                }
                let r = http
                    .post(format!("{node}/sessions/score-{i}/inputs"))
                    .json(&json!({"seq": seq, "input": {"model": mlp, "rows": rows, "seed": seq}}))
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await;
                let v = match r {
                    Ok(r) => r.json::<Value>().await.ok(),
                    Err(_) => None,
                };
                match v {
                    Some(v) if v["output"]["rows"] == rows => {
                        c.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(v)
                        if v["error"]["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("backpressure")) =>
                    {
                        c.backpressure.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        c.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // Wait until the inference plane is running the load (every client answered at least once
    // on average), bounded.
    let warm_deadline = Instant::now() + Duration::from_secs(30);
    while counters.ok.load(Ordering::Relaxed) < cfg.sessions as u64 {
        if Instant::now() > warm_deadline {
            stop.store(true, Ordering::Relaxed);
            return Err(failed(format!(
                "the scoring load never ran ({} answered, {} errors)",
                counters.ok.load(Ordering::Relaxed),
                counters.errors.load(Ordering::Relaxed)
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let busy_of = |h: &Value| h["inference"]["busy_us_total"].as_u64().unwrap_or(0);
    let before = get_json(&http, &format!("{node}/health"))
        .await
        .ok_or_else(|| failed("node /health unreadable"))?;
    let window = Instant::now();
    progress.line(format!(
        "saturated: {} probe pairs while {} clients score {} rows per request",
        cfg.probes, cfg.sessions, cfg.rows
    ));
    let saturated = {
        let (node, rc, n, gap) = (node.clone(), rc.clone(), cfg.probes, cfg.gap);
        tokio::task::spawn_blocking(move || probe(&node, &rc, n, gap))
            .await
            .map_err(failed)??
    };
    let window = window.elapsed();
    let after = get_json(&http, &format!("{node}/health"))
        .await
        .ok_or_else(|| failed("node /health unreadable"))?;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        let _ = tokio::time::timeout(Duration::from_secs(60), l).await;
    }
    stop_monitor.store(true, Ordering::Relaxed);
    let (declared_dead, max_phi) = monitor.await.map_err(failed)?;
    let inference_busy = busy_of(&after).saturating_sub(busy_of(&before)) as f64
        / (cfg.inference_threads as f64 * window.as_micros().max(1) as f64);
    let fails = idle.failed + saturated.failed;
    let make = |name: &str, sat: Summary, base: Summary| IsolationResult {
        name: name.into(),
        p50_us: sat.p50_us,
        p99_us: sat.p99_us,
        max_us: sat.max_us,
        count: sat.count,
        baseline_idle_p50_us: base.p50_us,
        baseline_idle_p99_us: base.p99_us,
        baseline_idle_max_us: base.max_us,
        target_p99_us: TARGET_P99_US,
        met: sat.p99_us <= TARGET_P99_US,
        failed: fails,
        inference_busy: (inference_busy * 1000.0).round() / 1000.0,
        inference_threads: cfg.inference_threads,
        device: device.clone(),
        load_requests: counters.ok.load(Ordering::Relaxed),
        load_errors: counters.errors.load(Ordering::Relaxed),
        backpressure: counters.backpressure.load(Ordering::Relaxed),
        declared_dead,
        max_phi: (max_phi * 100.0).round() / 100.0,
        sessions: cfg.sessions,
        rows: cfg.rows,
    };
    let out = vec![
        make(
            "isolation_node_health",
            summarize(saturated.health),
            summarize(idle.health),
        ),
        make(
            "isolation_rc_admission_probe",
            summarize(saturated.admit),
            summarize(idle.admit),
        ),
    ];
    drop(colony.launcher);
    Ok(out)
}

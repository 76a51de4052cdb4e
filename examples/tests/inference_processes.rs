//! The inference plane in real node processes: the `opengrid` binary as one RC and a node with
//! an `[inference]` section on 127.0.0.1.
//!
//! - the tutor classifies each turn's intent inside the node process (`ctx.infer`);
//! - with every inference thread saturated by scorer sessions, the node still answers `/health`
//!   and the RC never declares it dead;
//! - a node without `[inference]` answers `ctx.infer` with the typed `inference` error;
//! - a bad model file, a wrong hash or a missing `ORT_DYLIB_PATH` stop the node at start with an
//!   error naming the file / variable.
//!
//! Needs `ORT_DYLIB_PATH` and `OPENGRID_MODELS` (`eval "$(scripts/setup-python.sh)"`;
//! `scripts/test.sh` does it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_opengrid");
const SECRET: &str = "inference-test-secret";
const HOW_TO: &str = "run `eval \"$(scripts/setup-python.sh)\"` (scripts/test.sh does it)";

fn env_path(var: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!("{var} is not set: {HOW_TO}"),
    }
}

fn models_dir() -> PathBuf {
    let d = env_path("OPENGRID_MODELS");
    assert!(
        d.join("mlp.onnx").is_file() && d.join("text_classifier.onnx").is_file(),
        "OPENGRID_MODELS={} lacks the generated models: {HOW_TO}",
        d.display()
    );
    d
}

fn blake3_hex(p: &Path) -> String {
    blake3::hash(&std::fs::read(p).unwrap())
        .to_hex()
        .to_string()
}

/// A child process killed (SIGKILL) on drop.
struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    opengrid_cluster::common::serve::free_local_port().unwrap()
}

fn command(dir: &Path, name: &str, role: &str, cfg: &str) -> Command {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, cfg).unwrap();
    let mut c = Command::new(BIN);
    c.args([role, "--config", path.to_str().unwrap()])
        .env("RUST_LOG", "info,ractor_cluster=warn,ractor=warn")
        .stdin(Stdio::null());
    c
}

fn spawn(dir: &Path, name: &str, role: &str, cfg: &str) -> Proc {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = command(dir, name, role, cfg)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Proc { child }
}

struct Colony {
    dir: tempfile::TempDir,
    rc_api: String,
    rc_cluster: u16,
    procs: Vec<Proc>,
    http: reqwest::Client,
}

impl Colony {
    fn start() -> Colony {
        let dir = tempfile::tempdir().unwrap();
        // The test acts as the colony's operator (the RC's own key, made before it starts).
        let http = opengrid_cluster::common::token::operator_http(
            &dir.path().join("rc-data"),
            Duration::from_secs(60),
        )
        .unwrap();
        let (api, cluster) = (free_port(), free_port());
        let rc = spawn(
            dir.path(),
            "rc",
            "rc",
            &format!(
                "version = 1\ndata_dir = {:?}\napi_listen = \"127.0.0.1:{api}\"\ncluster_listen = \"127.0.0.1:{cluster}\"\ncolony_secret = \"{SECRET}\"\n",
                dir.path().join("rc-data")
            ),
        );
        Colony {
            rc_api: format!("http://127.0.0.1:{api}"),
            rc_cluster: cluster,
            procs: vec![rc],
            dir,
            http,
        }
    }

    fn node_config(&self, name: &str, extra: &str) -> String {
        format!(
            "version = 1\nname = \"{name}\"\ndata_dir = {:?}\njurisdiction = \"DE\"\napi_listen = \"127.0.0.1:0\"\nrc_cluster = \"127.0.0.1:{}\"\ncolony_secret = \"{SECRET}\"\nfsync = false\n{extra}\n",
            self.dir.path().join(format!("{name}-data")),
            self.rc_cluster
        )
    }

    fn node(&mut self, name: &str, extra: &str) {
        let cfg = self.node_config(name, extra);
        let p = spawn(self.dir.path(), name, "node", &cfg);
        self.procs.push(p);
    }

    async fn status(&self) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}/status", self.rc_api))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    async fn member(&self, name: &str) -> Option<Value> {
        let st = self.status().await?;
        st["members"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == name)
            .cloned()
    }

    /// Waits (deadline 60 s: a debug node loads ONNX Runtime first) until `name` is alive.
    async fn wait_alive(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(m) = self.member(name).await {
                if m["state"] == "alive" {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{name} not alive; logs in {}",
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn place(&self, handler: &str, id: &str) -> String {
        let manifest = format!("version = 1\n[session]\nhandler = \"{handler}\"\ncontinuity = \"interactive\"\n[placement]\njurisdictions = [\"DE\"]\n[migration]\ncost = \"cheap\"\nacceptable_loss = \"5s\"\nmax_blackout = \"100ms\"\n");
        let r = self
            .http
            .post(format!("{}/sessions?session_id={id}", self.rc_api))
            .header("content-type", "application/toml")
            .body(manifest)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        assert_eq!(status, 201, "{v}");
        v["address"].as_str().unwrap().to_string()
    }

    async fn input(&self, base: &str, id: &str, seq: u64, input: Value) -> Value {
        let r = self
            .http
            .post(format!("{base}/sessions/{id}/inputs"))
            .json(&json!({"seq": seq, "input": input}))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "input {seq} to {id}");
        r.json().await.unwrap()
    }

    async fn health(&self, base: &str) -> Value {
        let r = self
            .http
            .get(format!("{base}/health"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }
}

fn inference_section(threads: usize) -> String {
    format!(
        "[inference]\nmodels_dir = {:?}\nthreads = {threads}\ndevice = \"cpu\"\n",
        models_dir()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tutor_classifies_intents_in_a_node_process() {
    let mut c = Colony::start();
    c.node("brain", &inference_section(2));
    c.wait_alive("brain").await;
    let base = c.place("tutor", "intent-1").await;
    let h = c.health(&base).await;
    assert_eq!(h["inference"]["device"], "cpu", "{h}");
    assert_eq!(h["accelerator"], "none", "{h}");
    let names: Vec<&str> = h["inference"]["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mlp", "text_classifier"], "{h}");

    // Placement follows the declared accelerator: this CPU node is refused for a GPU manifest.
    let gpu = "version = 1\n[session]\nhandler = \"tutor\"\ncontinuity = \"interactive\"\n[placement]\njurisdictions = [\"DE\"]\naccelerator = \"gpu-small\"\n[migration]\ncost = \"cheap\"\nacceptable_loss = \"5s\"\nmax_blackout = \"100ms\"\n";
    let probe: Value = c
        .http
        .post(format!("{}/admission/probe", c.rc_api))
        .header("content-type", "application/toml")
        .body(gpu)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(probe["decision"], "refused", "{probe}");
    assert!(probe.to_string().contains("accelerator"), "{probe}");

    let desc: Value = serde_json::from_str(
        &std::fs::read_to_string(models_dir().join("text_classifier.reference.json")).unwrap(),
    )
    .unwrap();
    let sentences = desc["sentences"].as_array().unwrap();
    let expected = desc["expected_labels"].as_array().unwrap();
    for (i, (s, want)) in sentences.iter().zip(expected).enumerate() {
        let r = c
            .input(&base, "intent-1", i as u64 + 1, json!({"text": s}))
            .await;
        assert_eq!(r["output"]["intent"], *want, "sentence {s}: {r}");
    }
    let h = c.health(&base).await;
    assert_eq!(
        h["inference"]["completed_total"].as_u64(),
        Some(sentences.len() as u64),
        "one inference per turn, in this node process: {h}"
    );
    let metrics = c
        .http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "opengrid_cluster_inference_device_info{device=\"cpu\"",
        "opengrid_runtime_gpu_inference_seconds_bucket{le=\"0.001\"}",
    ] {
        assert!(metrics.contains(needle), "{needle} missing from /metrics");
    }
    // labels are sorted by name (id before name)
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("opengrid_cluster_inference_model_info{")
                && l.contains("name=\"text_classifier\"")),
        "model info missing from /metrics:\n{metrics}"
    );
    let completed = format!(
        "\nopengrid_runtime_gpu_completed_total {}\n",
        sentences.len()
    );
    assert!(
        metrics.contains(&completed),
        "{completed} missing from /metrics:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_with_saturated_inference_answers_health_and_stays_alive() {
    let mut c = Colony::start();
    c.node("busy", &inference_section(2));
    c.wait_alive("busy").await;
    let mlp = blake3_hex(&models_dir().join("mlp.onnx"));
    const SESSIONS: usize = 8;
    const ROWS: usize = 65_536;
    let mut base = String::new();
    for i in 0..SESSIONS {
        base = c.place("scorer", &format!("load-{i}")).await;
    }
    let before = c.health(&base).await["inference"].clone();
    // 8 clients, each with one scoring request of ROWS rows in flight, for at most 5 s and at
    // most 5,000 requests each: more work than the 2 inference threads can run.
    let started = Instant::now();
    let until = started + Duration::from_secs(5);
    let mut load = Vec::new();
    for i in 0..SESSIONS {
        let (http, base, mlp) = (c.http.clone(), base.clone(), mlp.clone());
        load.push(tokio::spawn(async move {
            let mut ok = 0u64;
            for seq in 1..=5_000u64 {
                if Instant::now() >= until {
                    break;
                }
                let r = http
                    .post(format!("{base}/sessions/load-{i}/inputs"))
                    .json(&json!({"seq": seq, "input": {"model": mlp, "rows": ROWS, "seed": seq}}))
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await;
                if let Ok(r) = r {
                    if let Ok(v) = r.json::<Value>().await {
                        if v["output"]["rows"] == ROWS {
                            ok += 1;
                        }
                    }
                }
            }
            ok
        }));
    }
    // Meanwhile: /health must answer within a generous deadline (debug build, 2 shared cores),
    // and the RC must keep the node alive.
    let deadline = Duration::from_secs(1);
    let mut worst = Duration::ZERO;
    let mut max_phi: f64 = 0.0;
    let mut probes = 0;
    while Instant::now() < until {
        let t = Instant::now();
        let r = c
            .http
            .get(format!("{base}/health"))
            .timeout(deadline)
            .send()
            .await
            .unwrap_or_else(|e| panic!("/health did not answer within {deadline:?}: {e}"));
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await;
        worst = worst.max(t.elapsed());
        let m = c.member("busy").await.expect("member listed");
        assert_eq!(m["state"], "alive", "saturated node declared dead: {m}");
        max_phi = max_phi.max(m["phi"].as_f64().unwrap_or(0.0));
        probes += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut answered = 0;
    for l in load {
        answered += l.await.unwrap();
    }
    let wall = started.elapsed();
    let after = c.health(&base).await["inference"].clone();
    let busy_us =
        after["busy_us_total"].as_u64().unwrap() - before["busy_us_total"].as_u64().unwrap();
    let busy = busy_us as f64 / (2.0 * wall.as_micros() as f64);
    eprintln!(
        "saturated inference: {answered} requests answered, inference threads busy {:.0}%, \
         {probes} health probes, worst {worst:?}, max phi {max_phi:.2}",
        busy * 100.0
    );
    assert!(answered >= SESSIONS as u64, "the load did not run: {after}");
    assert!(
        busy >= 0.5,
        "inference threads were not loaded (busy {:.0}%): the test measured nothing",
        busy * 100.0
    );
    assert!(probes >= 10, "too few health probes: {probes}");
    assert!(worst < deadline);
    assert_eq!(c.member("busy").await.unwrap()["state"], "alive");
    assert_eq!(after["rejected_backpressure_total"], 0, "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_without_inference_answers_a_typed_error() {
    let mut c = Colony::start();
    c.node("plain", "");
    c.wait_alive("plain").await;
    let base = c.place("scorer", "no-pool").await;
    let h = c.health(&base).await;
    assert_eq!(h["inference"], Value::Null, "{h}");
    let mlp = blake3_hex(&models_dir().join("mlp.onnx"));
    let r = c
        .input(
            &base,
            "no-pool",
            1,
            json!({"model": mlp, "rows": 4, "seed": 1}),
        )
        .await;
    assert_eq!(r["error"]["code"], "inference", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("[inference]"),
        "{r}"
    );
    // The tutor still works, without intents.
    let base = c.place("tutor", "no-pool-tutor").await;
    let r = c
        .input(&base, "no-pool-tutor", 1, json!({"text": "hello"}))
        .await;
    assert!(r["output"]["say"].is_string(), "{r}");
    assert!(r["output"].get("intent").is_none(), "{r}");
}

/// Runs `opengrid node` with `extra` config and `env` changes; it must exit (not serve) with an
/// error on stderr containing every `needle`.
fn assert_start_fails(extra: &str, env: &[(&str, Option<&str>)], needles: &[&str]) {
    let c = Colony {
        dir: tempfile::tempdir().unwrap(),
        rc_api: String::new(),
        rc_cluster: free_port(),
        procs: Vec::new(),
        http: reqwest::Client::new(),
    };
    let cfg = c.node_config("bad", extra);
    let mut cmd = command(c.dir.path(), "bad", "node", &cfg);
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("node with {extra:?} kept running instead of refusing to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{n:?} missing from:\n{stderr}");
    }
}

#[test]
fn bad_inference_setup_stops_the_node_with_a_typed_error() {
    let models = models_dir();
    let mlp = models.join("mlp.onnx");
    let tmp = tempfile::tempdir().unwrap();
    // A file that is not an ONNX model, registered under its own (right) hash.
    let junk = tmp.path().join("junk.onnx");
    std::fs::write(&junk, b"not an onnx model").unwrap();
    assert_start_fails(
        &format!(
            "[[inference.models]]\npath = {junk:?}\nblake3 = \"{}\"\n",
            blake3_hex(&junk)
        ),
        &[],
        &["inference.models[0]", "junk.onnx", "cannot load"],
    );
    // The right file under the wrong hash: not the asset the config names.
    let wrong = "0".repeat(64);
    assert_start_fails(
        &format!("[[inference.models]]\npath = {mlp:?}\nblake3 = \"{wrong}\"\n"),
        &[],
        &["inference.models[0]", "mlp.onnx", "expected"],
    );
    // No ONNX Runtime library.
    assert_start_fails(
        &format!("[inference]\nmodels_dir = {models:?}\n"),
        &[("ORT_DYLIB_PATH", None)],
        &["ORT_DYLIB_PATH"],
    );
    // A GPU declared while the inference plane runs on the CPU.
    assert_start_fails(
        &format!("[hardware]\naccelerator = \"gpu-small\"\n[inference]\nmodels_dir = {models:?}\ndevice = \"cpu\"\n"),
        &[],
        &["hardware.accelerator", "gpu-small"],
    );
    // A bad config field is named before anything starts.
    assert_start_fails("[inference]\nthreads = 0\n", &[], &["inference.threads"]);
}

/// A node whose migration port is taken refuses to start with an error naming the address (it
/// used to panic: "Cannot drop a runtime in a context where blocking is not allowed").
#[test]
fn a_taken_migration_port_is_a_typed_start_error_not_a_panic() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    assert_start_fails(
        &format!("migration_listen = \"{addr}\"\n"),
        &[],
        &["migration server", &addr],
    );
}

/// A migration test hook in a production process's environment is refused at start, naming
/// `dev` (it would let a handover stall on purpose).
#[test]
fn a_test_hook_in_the_environment_needs_dev() {
    assert_start_fails(
        "",
        &[("OPENGRID_FAULT_HANDOVER_PAUSE", Some("transfer:1000"))],
        &["dev", "OPENGRID_FAULT_HANDOVER_PAUSE", "dev = true"],
    );
}

//! Multi-process colony tests: the real `opengrid` binary as one RC and several node processes on
//! 127.0.0.1 (kill -9, SIGSTOP, CPU saturation, the demo).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_opengrid");
const SECRET: &str = "process-test-secret";

/// A child process killed (SIGKILL) on drop.
struct Proc {
    name: String,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        signal(self.child.id(), libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child we own and have not reaped.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

fn free_port() -> u16 {
    opengrid_cluster::common::serve::free_local_port().unwrap()
}

fn spawn(dir: &Path, name: &str, role: &str, cfg: String) -> Proc {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, cfg).unwrap();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = Command::new(BIN)
        .args([role, "--config", path.to_str().unwrap()])
        .env("RUST_LOG", "info,ractor_cluster=warn,ractor=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Proc {
        name: name.into(),
        child,
    }
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
        let api = free_port();
        let cluster = free_port();
        let rc = spawn(
            dir.path(),
            "rc",
            "rc",
            format!(
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

    fn node(&mut self, name: &str, jurisdiction: &str, extra: &str) {
        let cfg = format!(
            "version = 1\nname = \"{name}\"\ndata_dir = {:?}\njurisdiction = \"{jurisdiction}\"\napi_listen = \"127.0.0.1:0\"\nrc_cluster = \"127.0.0.1:{}\"\ncolony_secret = \"{SECRET}\"\nfsync = false\n{extra}\n",
            self.dir.path().join(format!("{name}-data")),
            self.rc_cluster
        );
        let p = spawn(self.dir.path(), name, "node", cfg);
        self.procs.push(p);
    }

    fn proc(&mut self, name: &str) -> &mut Proc {
        self.procs.iter_mut().find(|p| p.name == name).unwrap()
    }

    async fn status(&self) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}/status", self.rc_api))
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

    async fn wait_alive(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.status().await {
                let alive = st["members"]
                    .as_array()
                    .map(|m| m.iter().filter(|x| x["state"] == "alive").count())
                    .unwrap_or(0);
                if alive == n {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{n} members not alive; logs in {}",
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn place(&self, manifest: &str, id: &str) -> Value {
        let r = self
            .http
            .post(format!("{}/sessions?session_id={id}", self.rc_api))
            .header("content-type", "application/toml")
            .body(manifest.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        assert_eq!(status, 201, "{v}");
        v
    }

    async fn input(&self, base: &str, id: &str, seq: u64, text: &str) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{base}/sessions/{id}/inputs"))
            .json(&json!({"seq": seq, "input": {"text": text}}))
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }
}

const TUTOR_DE: &str = "version = 1\n[session]\nhandler = \"tutor\"\ncontinuity = \"interactive\"\n[placement]\njurisdictions = [\"DE\"]\n[migration]\ncost = \"cheap\"\nacceptable_loss = \"0s\"\nmax_blackout = \"50ms\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_is_declared_dead_within_the_bound() {
    let mut c = Colony::start();
    c.node("a", "DE", "");
    c.node("b", "DE", "");
    c.wait_alive(2).await;
    let killed = Instant::now();
    let _ = c.proc("a").child.kill();
    let _ = c.proc("a").child.wait();
    // Bound: phi 8 (~0.5 s) and at the latest lease × grace = 1.5 s after the last heartbeat.
    let bound = Duration::from_millis(1500);
    loop {
        if let Some(m) = c.member("a").await {
            if m["state"] == "dead" {
                break;
            }
        }
        assert!(
            killed.elapsed() < bound + Duration::from_millis(300),
            "not declared dead within {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = killed.elapsed();
    eprintln!("node killed → declared dead in {took:?}");
    assert!(took <= bound + Duration::from_millis(300));
    assert_eq!(c.member("b").await.unwrap()["state"], "alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_node_stops_serving_before_the_rc_places_again() {
    let mut c = Colony::start();
    c.node("a", "DE", "");
    c.node("b", "DE", "");
    c.wait_alive(2).await;
    let p = c.place(TUTOR_DE, "paused-1").await;
    let holder_api = p["address"].as_str().unwrap().to_string();
    let holder = p["node_name"].as_str().unwrap().to_string();
    let other = if holder == "a" { "b" } else { "a" };
    let (s, v) = c.input(&holder_api, "paused-1", 1, "score").await;
    assert_eq!(s, 200, "{v}");

    let pid = c.proc(&holder).child.id();
    signal(pid, libc::SIGSTOP);
    let stopped = Instant::now();
    // The RC restores the session elsewhere (epoch 2, from its replicas) only after the lease
    // grace.
    let (restored_after, new_api) = loop {
        let st = c.status().await.unwrap();
        let e = st["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["session_id"] == "paused-1")
            .cloned()
            .unwrap();
        if e["state"] == "active" && e["epoch"] == 2 {
            assert_eq!(e["node_name"], other);
            break (
                stopped.elapsed(),
                e["address"].as_str().unwrap().to_string(),
            );
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "session never restored: {st}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        restored_after >= Duration::from_millis(1000),
        "restored after only {restored_after:?}"
    );
    let orphaned_after = restored_after;
    // The paused node wakes up: its lease is over, it must not serve the session.
    signal(pid, libc::SIGCONT);
    for seq in 2..6 {
        let (s, v) = c.input(&holder_api, "paused-1", seq, "score").await;
        assert_ne!(
            s, 200,
            "old holder served input {seq} after losing its lease: {v}"
        );
        assert!(matches!(s, 503 | 307 | 404), "{s} {v}");
    }
    // Eventually it rejoins and redirects clients to the new holder.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = c.input(&holder_api, "paused-1", 2, "score").await;
        assert_ne!(s, 200, "{v}");
        if s == 307 {
            assert_eq!(v["location"], new_api.as_str());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "old holder never redirected: {s} {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The new holder continues from the replicated checkpoint: input 1 is already in it. Until
    // the RC has repaired its replica set with the node that came back (the only other DE
    // node), its zero-loss inputs are refused: never acknowledged from the holder's disk alone.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = c.input(&new_api, "paused-1", 2, "score").await;
        if s == 200 {
            assert_eq!(v["copies"], 1, "{v}");
            break;
        }
        assert_eq!(
            (s, v["code"].as_str()),
            (503, Some("too_few_copies")),
            "{v}"
        );
        assert!(Instant::now() < deadline, "replica set never repaired: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("paused node: session re-placeable after {orphaned_after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_node_is_not_declared_dead() {
    let mut c = Colony::start();
    c.node("busy", "DE", "handler_threads = 2");
    c.wait_alive(1).await;
    let mut apis = Vec::new();
    for i in 0..4 {
        let p = c.place(TUTOR_DE, &format!("busy-{i}")).await;
        apis.push(p["address"].as_str().unwrap().to_string());
    }
    let base = apis[0].clone();
    // 4 sessions × back-to-back 250 ms busy loops on 2 handler threads for ~4 s.
    let until = Instant::now() + Duration::from_secs(4);
    let mut load = Vec::new();
    for i in 0..4 {
        let http = c.http.clone();
        let base = base.clone();
        load.push(tokio::spawn(async move {
            let mut seq = 0;
            while Instant::now() < until {
                seq += 1;
                let _ = http
                    .post(format!("{base}/sessions/busy-{i}/inputs"))
                    .json(&json!({"seq": seq, "input": {"text": "!slow 250"}}))
                    .timeout(Duration::from_secs(20))
                    .send()
                    .await;
            }
        }));
    }
    let mut max_phi: f64 = 0.0;
    let mut worst_health = Duration::ZERO;
    while Instant::now() < until {
        let m = c.member("busy").await.unwrap();
        assert_eq!(m["state"], "alive", "saturated node declared dead: {m}");
        max_phi = max_phi.max(m["phi"].as_f64().unwrap_or(0.0));
        let t = Instant::now();
        let h = c.http.get(format!("{base}/health")).send().await.unwrap();
        assert_eq!(h.status(), 200);
        worst_health = worst_health.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for l in load {
        let _ = l.await;
    }
    eprintln!("saturated: max phi {max_phi:.2}, worst /health {worst_health:?}");
    assert_eq!(c.member("busy").await.unwrap()["state"], "alive");
}

#[test]
fn demo_exits_zero_and_leaves_no_process() {
    let out = Command::new(env!("CARGO_BIN_EXE_opengrid-colony-demo"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("Summary"), "{stdout}");
    assert!(stdout.contains("routed across the canopy"), "{stdout}");
    assert!(stdout.contains("eu-jp-no-health"), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.contains("processes ["))
        .expect("pid line");
    let pids: Vec<i32> = line[line.find('[').unwrap() + 1..line.find(']').unwrap()]
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    // Colony demo: 1 RC + 3 nodes; colony demo-jp: 1 RC + 1 node.
    assert_eq!(pids.len(), 6, "{line}");
    for pid in pids {
        // SAFETY: signal 0 only checks for existence.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "process {pid} left behind by the demo");
    }
}

//! The RC group against real `opengrid` processes (ADR 0037): three RC replicas on one Raft log,
//! three nodes that know every replica, clients that know every replica.
//!
//! - kill -9 of the leader under load: no node loses its lease (sessions not being moved see no
//!   refusal), a new leader takes office with the whole directory, placements resume, the killed
//!   replica restarted rejoins as a follower;
//! - SIGSTOP of the leader for longer than a lease: the same, and the paused leader, resumed,
//!   steps down without acting on what it held (it declares no node dead, places nothing).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{step, Colony, GroupRc};
use opengrid_cluster::client::Client;
use opengrid_cluster::common::token::operator_token_from_dir;
use serde_json::Value;

const ZERO_LOSS: &str = r#"{"version":1,"session":{"handler":"counter","continuity":"interactive"},"placement":{"jurisdictions":["DE"]},"migration":{"cost":"cheap","acceptable_loss":"0s","max_blackout":"200ms"}}"#;

/// A client given every replica of the group.
fn group_client(c: &Colony) -> Client {
    let t = operator_token_from_dir(&c.rc_data(), Duration::from_secs(3600)).unwrap();
    let mut client = Client::new(c.group_apis())
        .with_token(t)
        .with_timeout(Duration::from_secs(10));
    client.retry_for = Duration::from_secs(30);
    client
}

async fn status(c: &Colony, rc: &GroupRc) -> Value {
    match c
        .http
        .get(format!("{}/status", rc.api))
        .timeout(Duration::from_millis(500))
        .send()
        .await
    {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// Waits until the leader's directory lists `n` active sessions and `m` alive members.
async fn wait_leader_sees(c: &Colony, sessions: usize, members: usize) -> (GroupRc, Value) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let leader = c.leader(Duration::from_secs(30)).await;
        let st = status(c, &leader).await;
        let active = st["sessions"]
            .as_array()
            .map_or(0, |s| s.iter().filter(|e| e["state"] == "active").count());
        let alive = st["members"]
            .as_array()
            .map_or(0, |m| m.iter().filter(|m| m["state"] == "alive").count());
        if active == sessions && alive == members {
            return (leader, st);
        }
        assert!(
            Instant::now() < deadline,
            "the leader never saw {sessions} active sessions and {members} alive members; logs in {}\nlast: {st}",
            c.dir.path().display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The nodes' `opengrid_cluster_lease_lost_total`, summed over the members `st` lists.
async fn leases_lost(c: &Colony, st: &Value) -> u64 {
    let mut lost = 0.0;
    for m in st["members"].as_array().into_iter().flatten() {
        let api = m["address"].as_str().unwrap_or_default();
        let text = common::metrics_text(&c.http, api).await;
        assert!(!text.is_empty(), "no /metrics from {api}");
        lost += common::metric_sum(&text, "opengrid_cluster_lease_lost_total");
    }
    lost as u64
}

/// Sessions stepped round-robin in the background until `stop`: (acknowledged, failed).
fn load(
    mut sessions: Vec<(opengrid_cluster::client::Session, u64)>,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Vec<(opengrid_cluster::client::Session, u64)>> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Acquire) {
            for (s, n) in sessions.iter_mut() {
                match step(s, *n).await {
                    Ok(next) => {
                        *n = next;
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("input to {} failed: {e}", s.id);
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        sessions
    })
}

async fn colony_with_sessions(
    n: usize,
) -> (
    Colony,
    Client,
    Vec<(opengrid_cluster::client::Session, u64)>,
) {
    let mut c = Colony::start_group(3);
    for name in ["n1", "n2", "n3"] {
        c.node(name, "DE");
    }
    wait_leader_sees(&c, 0, 3).await;
    let client = group_client(&c);
    let mut sessions = Vec::new();
    for _ in 0..n {
        let mut s = client.create(ZERO_LOSS, None).await.unwrap();
        let mut acked = 0;
        for _ in 0..2 {
            acked = step(&mut s, acked).await.unwrap();
        }
        sessions.push((s, acked));
    }
    (c, client, sessions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_rc_leader_fails_no_input_and_placements_resume() {
    let (mut c, client, sessions) = colony_with_sessions(6).await;
    let (old, st) = wait_leader_sees(&c, 6, 3).await;
    let lost_before = leases_lost(&c, &st).await;

    let (stop, acked, failed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let running = load(sessions, stop.clone(), acked.clone(), failed.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    eprintln!("killing the leader {}", old.name);
    let killed = Instant::now();
    c.kill9(&old.name);
    // A new placement succeeds once a new leader is in office (the client finds it).
    let placed = client.create(ZERO_LOSS, None).await.unwrap();
    let resumed = killed.elapsed();
    eprintln!(
        "placements resumed {resumed:?} after the kill ({})",
        placed.id
    );
    let new = c.leader(Duration::from_secs(10)).await;
    assert_ne!(new.name, old.name, "a new replica leads");
    // Keep the load running a while under the new leader.
    let before = acked.load(Ordering::Relaxed);
    let until = Instant::now() + Duration::from_secs(15);
    while acked.load(Ordering::Relaxed) < before + 60 {
        assert!(
            Instant::now() < until,
            "the load stalled under the new leader"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Release);
    let sessions = running.await.unwrap();
    eprintln!(
        "acknowledged {} inputs, {} failed",
        acked.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no input failed");

    // The new leader has every session (the six and the one placed after the kill) and every
    // node; no node lost its lease.
    let (_, st) = wait_leader_sees(&c, 7, 3).await;
    assert_eq!(
        leases_lost(&c, &st).await,
        lost_before,
        "no node lost its lease"
    );
    for (s, _) in &sessions {
        assert!(
            st["sessions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["session_id"] == s.id.as_str()),
            "{} in the new leader's directory",
            s.id
        );
    }

    // The killed replica, restarted, follows the new leader.
    c.spawn(&old.name, "rc", old.cfg.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let g = status(&c, &old).await["group"].clone();
        if g["role"] == "follower" && g["leader_api"] == new.api.as_str() {
            break;
        }
        assert!(Instant::now() < deadline, "restarted replica: {g}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And a follower sends clients to the leader.
    let r = c
        .http
        .post(format!("{}/v1/sessions", old.api))
        .header("content-type", "application/json")
        .body(ZERO_LOSS)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 307);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "not_leader");
    assert_eq!(body["location"], new.api.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_steps_down_without_acting_on_stale_state() {
    let (c, _client, sessions) = colony_with_sessions(4).await;
    let (old, st) = wait_leader_sees(&c, 4, 3).await;
    let lost_before = leases_lost(&c, &st).await;
    let pid = c
        .procs
        .iter()
        .find(|p| p.name == old.name)
        .unwrap()
        .child
        .id()
        .to_string();
    let (stop, acked, failed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let running = load(sessions, stop.clone(), acked.clone(), failed.clone());

    eprintln!("pausing the leader {} (pid {pid}) for 3 s", old.name);
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    // SIGSTOP takes effect asynchronously: a /status asked before every thread stopped is still
    // answered "acting". Wait (with a deadline) until the kernel reports the process stopped.
    let stopped_by = std::time::Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
        st.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('T'))
    }) {
        assert!(
            std::time::Instant::now() < stopped_by,
            "rc {pid} not stopped within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let new = c.leader(Duration::from_secs(10)).await;
    assert_ne!(new.name, old.name);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log_len = std::fs::metadata(c.dir.path().join(format!("{}.log", old.name)))
        .unwrap()
        .len() as usize;
    assert!(std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());

    // Resumed, it steps down.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let g = status(&c, &old).await["group"].clone();
        if g["role"] == "follower" && g["acting"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "resumed replica: {g}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = acked.load(Ordering::Relaxed);
    let until = Instant::now() + Duration::from_secs(15);
    while acked.load(Ordering::Relaxed) < before + 40 {
        assert!(Instant::now() < until, "the load stalled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Release);
    running.await.unwrap();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no input failed");
    let (leader, st) = wait_leader_sees(&c, 4, 3).await;
    assert_eq!(leader.name, new.name);
    assert_eq!(
        leases_lost(&c, &st).await,
        lost_before,
        "no node lost its lease"
    );
    // What the paused leader logged after it resumed: no node declared dead, no session
    // orphaned or placed (it acted on nothing it held while paused).
    let log = std::fs::read_to_string(c.dir.path().join(format!("{}.log", old.name))).unwrap();
    let after = &log[log_len.min(log.len())..];
    for stale in [
        "node declared dead",
        "lease grace over",
        "session placed",
        "session restored",
        "directory switched",
    ] {
        assert!(
            !after.contains(stale),
            "the resumed leader acted on stale state ({stale:?}):\n{after}"
        );
    }
    assert!(
        after.contains("left office"),
        "the resumed leader says it left office:\n{after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_adds_and_removes_replicas() {
    let (mut c, client, mut sessions) = colony_with_sessions(1).await;
    let (leader, _) = wait_leader_sees(&c, 1, 3).await;

    // A fourth replica, started to join (no peers), then added by the operator.
    let data = c.dir.path().join("rc4-data");
    let did = opengrid_cluster::common::identity::Identity::load_or_create(&data)
        .unwrap()
        .id()
        .did();
    let (api, cluster, raft) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let cfg = format!(
        "version = 1\ndata_dir = {data:?}\napi_listen = \"127.0.0.1:{api}\"\ncluster_listen = \"127.0.0.1:{cluster}\"\ncolony_secret = \"{}\"\n[group]\nid = 4\nlisten = \"127.0.0.1:{raft}\"\npeers = []\n",
        common::SECRET
    );
    c.spawn("rc4", "rc", cfg);
    let key = c.rc_data();
    let apis = c.group_apis();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(common::BIN)
            .arg("rc-group")
            .args(args)
            .args(["--rc", &apis, "--key", key.to_str().unwrap()])
            .output()
            .unwrap();
        eprintln!(
            "opengrid rc-group {args:?}: {}\n{}{}",
            out.status,
            common::stdout(&out),
            common::stderr(&out)
        );
        out
    };
    let raft_addr = format!("127.0.0.1:{raft}");
    let out = cli(&["add", "--id", "4", "--address", &raft_addr, "--did", &did]);
    assert!(out.status.success());
    let rc4 = GroupRc {
        name: "rc4".into(),
        api: format!("http://127.0.0.1:{api}"),
        cluster,
        cfg: String::new(),
    };
    c.group.push(rc4.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let g = status(&c, &rc4).await["group"].clone();
        let voters = g["replicas"].as_array().map_or(0, Vec::len);
        if g["role"] == "follower" && voters == 4 && g["leader"].is_u64() {
            break;
        }
        assert!(Instant::now() < deadline, "rc4 never became a voter: {g}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The leader is removed: another takes office with the whole directory.
    let leader_id: String = leader.name.trim_start_matches("rc").to_string();
    let out = cli(&["remove", "--id", &leader_id]);
    assert!(out.status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let new = loop {
        let l = c.leader(Duration::from_secs(30)).await;
        if l.name != leader.name {
            break l;
        }
        assert!(Instant::now() < deadline, "the removed leader still leads");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let st = status(&c, &new).await;
    assert_eq!(
        st["group"]["replicas"].as_array().map(Vec::len),
        Some(3),
        "{st}"
    );
    c.kill9(&leader.name);
    // The session keeps its state; placements go on.
    let (s, n) = &mut sessions[0];
    *n = step(s, *n).await.unwrap();
    client.create(ZERO_LOSS, None).await.unwrap();
    let out = cli(&["status"]);
    assert!(out.status.success());
    assert!(
        common::stdout(&out).contains("leader"),
        "{}",
        common::stdout(&out)
    );
}

/// An agent pushed to the group's leader reaches every replica (index through the Raft log, the
/// package fetched from the leader by hash); after the leader's kill its sessions are placed by
/// the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_agent_survives_the_leader() {
    let rs_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("agents/counter-rs");
    if !rs_dir.join("agent.wasm").is_file() {
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-agents.sh");
        let ok = std::process::Command::new("bash")
            .arg(&script)
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "{} failed; run it by hand", script.display());
    }
    let mut c = Colony::start_group(3);
    for name in ["n1", "n2"] {
        c.node(name, "DE");
    }
    let (old, _) = wait_leader_sees(&c, 0, 2).await;
    let (key, _) = c.developer_key();
    let out = std::process::Command::new(common::BIN)
        .args(["agent", "push", rs_dir.to_str().unwrap(), "--developer-key"])
        .arg(&key)
        .args([
            "--rc",
            &c.group_apis(),
            "--key",
            c.rc_data().to_str().unwrap(),
        ])
        .env_remove("OPENGRID_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success(), "push: {}", common::stderr(&out));
    let hash = common::stdout(&out)
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_string();
    assert_eq!(hash.len(), 64, "{}", common::stdout(&out));
    // Every replica holds the package.
    let deadline = Instant::now() + Duration::from_secs(60);
    for r in &c.group {
        let file = c
            .dir
            .path()
            .join(format!("{}-data/agents/{hash}.ogap", r.name));
        while !file.is_file() {
            assert!(
                Instant::now() < deadline,
                "{} never got the package",
                r.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    c.kill9(&old.name);
    let client = group_client(&c);
    let manifest = "version = 1\n[session]\nagent = \"counter-rs\"\ncontinuity = \"interactive\"\n[placement]\njurisdictions = [\"EU\"]\n[migration]\ncost = \"cheap\"\nacceptable_loss = \"0s\"\nmax_blackout = \"2s\"\n";
    let mut client = client.with_timeout(Duration::from_secs(120));
    client.retry_for = Duration::from_secs(60);
    let mut s = client.create(manifest, None).await.unwrap();
    let mut n = 0;
    for _ in 0..3 {
        n = step(&mut s, n).await.unwrap();
    }
    let new = c.leader(Duration::from_secs(10)).await;
    assert_ne!(new.name, old.name);
}

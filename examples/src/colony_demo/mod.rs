//! `opengrid-colony-demo`: a local grid of real `opengrid` processes — two colonies (DE/FR and
//! JP) whose RCs gossip over the canopy, three ledger replicas — sessions placed by jurisdiction,
//! one routed across the canopy, a live handover, a drain, settlement, and a clean shutdown.
//!
//! The `opengrid` binary is found beside this one (both are built by `cargo build -p
//! opengrid-examples --bins`).

mod ledger;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use opengrid_cluster::cli::{field, print_canopy, print_status, shutdown_signal, strip_ansi};
use opengrid_cluster::client::{Client, Session};
use opengrid_cluster::common::identity::Identity;
use serde_json::{json, Value};

const DEMO_MANIFEST_DE: &str = r#"version = 1
[session]
handler = "tutor"
continuity = "interactive"
[placement]
jurisdictions = ["DE"]
capabilities = ["tutor"]
[migration]
cost = "cheap"
acceptable_loss = "0s"
max_blackout = "50ms"
"#;

const DEMO_MANIFEST_FR: &str = r#"version = 1
[session]
handler = "tutor"
continuity = "interactive"
[placement]
jurisdictions = ["FR"]
[migration]
cost = "cheap"
acceptable_loss = "5s"
max_blackout = "100ms"
"#;

const DEMO_MANIFEST_JP: &str = r#"version = 1
[session]
handler = "tutor"
continuity = "interactive"
[placement]
jurisdictions = ["JP"]
[migration]
cost = "cheap"
acceptable_loss = "5s"
max_blackout = "100ms"
"#;

/// Child processes, stopped (SIGTERM, then SIGKILL after a grace period) when dropped.
#[derive(Default)]
pub struct Children {
    procs: Vec<(String, Child)>,
    logs: std::collections::HashMap<String, PathBuf>,
}

impl Children {
    /// Spawns `exe args…`, stderr to `log`.
    pub fn spawn(
        &mut self,
        name: &str,
        exe: &Path,
        args: &[&str],
        log: &Path,
    ) -> anyhow::Result<()> {
        self.logs.insert(name.to_string(), log.to_path_buf());
        let log =
            std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info,ractor_cluster=warn,ractor=warn");
        }
        let child = cmd.spawn().with_context(|| format!("spawn {name}"))?;
        self.procs.push((name.to_string(), child));
        Ok(())
    }

    /// Process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|(_, c)| c.id()).collect()
    }

    /// Sends SIGTERM to all, waits up to `grace`, kills what is left; returns `(name, how it
    /// ended)` where `Ok(())` is a clean exit.
    pub fn stop_all(&mut self, grace: Duration) -> Vec<(String, Result<(), String>)> {
        for (_, c) in &self.procs {
            terminate(c.id());
        }
        let deadline = Instant::now() + grace;
        let mut out = Vec::new();
        for (name, mut c) in self.procs.drain(..) {
            let clean = loop {
                match c.try_wait() {
                    Ok(Some(st)) if st.success() => break Ok(()),
                    Ok(Some(st)) => {
                        break Err(format!(
                            "exited with {st}{}",
                            self.logs
                                .get(&name)
                                .and_then(|p| last_line(p))
                                .map(|l| format!(" (its log ends: {l})"))
                                .unwrap_or_default()
                        ))
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break Err(format!("killed after {grace:?}"));
                    }
                }
            };
            out.push((name, clean));
        }
        out
    }
}

/// The last non-empty line of a log file, without colour codes, at most 300 characters.
fn last_line(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    Some(strip_ansi(line).chars().take(300).collect())
}

impl Drop for Children {
    fn drop(&mut self) {
        if !self.procs.is_empty() {
            self.stop_all(Duration::from_secs(3));
        }
    }
}

fn terminate(pid: u32) {
    #[cfg(unix)]
    // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}

/// A free 127.0.0.1 port ([`opengrid_cluster::common::serve::free_local_port`]).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(opengrid_cluster::common::serve::free_local_port()?)
}

async fn wait_for<F: Fn(&Value) -> bool>(
    client: &Client,
    path: &str,
    within: Duration,
    f: F,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        match client.get(path).await {
            Ok(v) if f(&v) => return Ok(v),
            Ok(v) => last = v.to_string(),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("condition on {path} not met within {within:?}; last: {last}")
}

/// Runs the demo; `keep` keeps the temp dir (logs, data) afterwards.
pub async fn run(keep: bool) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("opengrid-demo-")
        .tempdir()?;
    let root = dir.path().to_path_buf();
    let exe = opengrid_binary()?;
    let mut children = Children::default();
    let r = tokio::select! {
        r = demo_body(&root, &exe, &mut children) => r,
        _ = shutdown_signal() => Err(anyhow::anyhow!("interrupted")),
    };
    let stopped = children.stop_all(Duration::from_secs(5));
    let all_clean = stopped.iter().all(|(_, c)| c.is_ok());
    println!("\n== Shutdown");
    for (name, how) in &stopped {
        match how {
            Ok(()) => println!("  {name:<6} stopped cleanly"),
            Err(e) => println!("  {name:<6} {e}"),
        }
    }
    if keep {
        let kept = dir.keep();
        println!("  logs and data kept in {}", kept.display());
    }
    r?;
    if !all_clean {
        bail!("a process did not stop cleanly");
    }
    println!(
        "\nDone: two colonies (DE/FR and JP), sessions placed by jurisdiction, one routed across the canopy, no process left behind."
    );
    Ok(())
}

async fn demo_body(root: &Path, exe: &Path, children: &mut Children) -> anyhow::Result<()> {
    let rc_api = free_port()?;
    let rc_cluster = free_port()?;
    let secret = format!("demo-{:016x}", rand::random::<u64>());
    // The second colony (Tokyo): its own RC and node; the two RCs gossip over the canopy.
    let jp_api = free_port()?;
    let jp_cluster = free_port()?;
    let canopy_port = free_port()?;
    let jp_secret = format!("demo-jp-{:016x}", rand::random::<u64>());
    let de_rc = Identity::load_or_create(&root.join("rc"))?;
    let de_did = de_rc.id().did();
    // The demo's operator is the RC's own key: its token opens /status, handover and drain on the
    // RC and on its nodes (ADR 0026).
    let operator =
        opengrid_cluster::common::token::mint_operator(&de_rc, Duration::from_secs(3600))?;
    let jp_did = Identity::load_or_create(&root.join("rc-jp"))?.id().did();
    let rc_cfg = format!(
        "version = 1\ncolony = \"demo\"\ndata_dir = {:?}\napi_listen = \"127.0.0.1:{rc_api}\"\ncluster_listen = \"127.0.0.1:{rc_cluster}\"\ncolony_secret = \"{secret}\"\n{}",
        root.join("rc").display().to_string(),
        demo_canopy(
            &format!("/ip4/127.0.0.1/tcp/{canopy_port}"),
            None,
            "eu-central",
            "DE",
            &jp_did
        ),
    );
    std::fs::write(root.join("rc.toml"), rc_cfg)?;
    let ledger = ledger::DemoLedger::new(root)?;
    ledger.configure_rc(&root.join("rc.toml"))?;
    let jp_cfg = format!(
        "version = 1\ncolony = \"demo-jp\"\ndata_dir = {:?}\napi_listen = \"127.0.0.1:{jp_api}\"\ncluster_listen = \"127.0.0.1:{jp_cluster}\"\ncolony_secret = \"{jp_secret}\"\n{}",
        root.join("rc-jp").display().to_string(),
        demo_canopy(
            "/ip4/127.0.0.1/tcp/0",
            Some(&format!("/ip4/127.0.0.1/tcp/{canopy_port}")),
            "ap-northeast",
            "JP",
            &de_did
        ),
    );
    std::fs::write(root.join("rc-jp.toml"), jp_cfg)?;
    println!("OpenGrid local colony demo (temp dir {})", root.display());
    println!("\n== Starting colony demo (1 RC and 3 nodes, DE/FR) and colony demo-jp (1 RC and 1 node, JP)");
    children.spawn(
        "rc-jp",
        exe,
        &[
            "rc",
            "--config",
            &root.join("rc-jp.toml").display().to_string(),
        ],
        &root.join("rc-jp.log"),
    )?;
    let tokyo = format!(
        "version = 1\nname = \"tokyo\"\ncolony = \"demo-jp\"\ndata_dir = {:?}\njurisdiction = \"JP\"\napi_listen = \"127.0.0.1:0\"\nrc_cluster = \"127.0.0.1:{jp_cluster}\"\ncolony_secret = \"{jp_secret}\"\ncapacity = 8\nhandler_threads = 1\n",
        root.join("tokyo").display().to_string()
    );
    std::fs::write(root.join("tokyo.toml"), tokyo)?;
    children.spawn(
        "tokyo",
        exe,
        &[
            "node",
            "--config",
            &root.join("tokyo.toml").display().to_string(),
        ],
        &root.join("tokyo.log"),
    )?;
    children.spawn(
        "rc",
        exe,
        &[
            "rc",
            "--config",
            &root.join("rc.toml").display().to_string(),
        ],
        &root.join("rc.log"),
    )?;
    let nodes = [("berlin", "DE"), ("munich", "DE"), ("paris", "FR")];
    for (name, j) in nodes {
        let cfg = format!(
            "version = 1\nname = \"{name}\"\ncolony = \"demo\"\ndata_dir = {:?}\njurisdiction = \"{j}\"\napi_listen = \"127.0.0.1:0\"\nrc_cluster = \"127.0.0.1:{rc_cluster}\"\ncolony_secret = \"{secret}\"\ncapacity = 8\nhandler_threads = 1\n",
            root.join(name).display().to_string()
        );
        let path = root.join(format!("{name}.toml"));
        std::fs::write(&path, cfg)?;
        ledger.configure_node(&path, name)?;
        children.spawn(
            name,
            exe,
            &["node", "--config", &path.display().to_string()],
            &root.join(format!("{name}.log")),
        )?;
    }
    let client = Client::new(format!("http://127.0.0.1:{rc_api}")).with_token(operator.clone());
    let t = Instant::now();
    let status = wait_for(&client, "/status", Duration::from_secs(30), |v| {
        v.get("members")
            .and_then(|m| m.as_array())
            .is_some_and(|m| {
                m.iter()
                    .filter(|x| x.get("state").and_then(|s| s.as_str()) == Some("alive"))
                    .count()
                    == 3
            })
    })
    .await?;
    println!(
        "  colony formed in {:?}: processes {:?}",
        t.elapsed(),
        children.pids()
    );
    print_status(&status);
    ledger.start(exe, children).await?;

    println!("\n== Placing tutor sessions");
    let mut sessions = Vec::new();
    for (label, m) in [
        ("DE, zero loss", DEMO_MANIFEST_DE),
        ("DE, zero loss", DEMO_MANIFEST_DE),
        ("FR, 5 s loss", DEMO_MANIFEST_FR),
    ] {
        let s = client
            .create(m, None)
            .await
            .with_context(|| format!("place {label}"))?;
        println!(
            "  {:<36} [{label}] → {} ({}) epoch {}",
            s.id, s.placement.node_name, s.address, s.placement.epoch
        );
        sessions.push((label, s));
    }
    let routed = demo_route_across(&client, rc_api).await?;

    println!("\n== Talking to them through the client API (directly to the serving node)");
    let mut rows = Vec::new();
    for (label, s) in sessions.iter_mut() {
        let mut last = String::new();
        let mut question = String::new();
        for turn in 0..4 {
            let text = if turn == 0 {
                "score".to_string()
            } else {
                answer_for(&question)
            };
            let r = s.send(json!({ "text": text })).await?;
            let out = r.get("output").cloned().unwrap_or(Value::Null);
            last = s_of(&out, "say");
            question = s_of(&out, "question");
            if turn < 2 {
                println!(
                    "  {} student: {text:<6} tutor: {last} {question}",
                    &s.id[..10.min(s.id.len())]
                );
            }
        }
        let info = s.info().await?;
        rows.push((
            s.id.clone(),
            label.to_string(),
            s.placement.node_name.clone(),
            field(&info, "last_seq"),
            info.get("usage")
                .map(|u| field(u, "bytes_in"))
                .unwrap_or_default(),
            last,
        ));
    }
    // The RC answers `moved` for session traffic: it supervises, it does not proxy.
    let redirected = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?
        .post(format!(
            "http://127.0.0.1:{rc_api}/sessions/{}/inputs",
            sessions[0].1.id
        ))
        .bearer_auth(sessions[0].1.capability.clone().unwrap_or_default())
        .json(&json!({"seq": 99, "input": {"text": "hi"}}))
        .send()
        .await?;
    println!(
        "  an input sent to the RC instead gets {} (moved to the node)",
        redirected.status()
    );

    println!("\n== Summary");
    println!(
        "  {:<36} {:<14} {:<7} {:>5} {:>8}  last tutor line",
        "session", "manifest", "node", "turns", "bytes_in"
    );
    for (id, label, node, turns, bytes, last) in &rows {
        println!("  {id:<36} {label:<14} {node:<7} {turns:>5} {bytes:>8}  {last}");
    }
    let served: Vec<&Session> = sessions.iter().map(|(_, s)| s).collect();
    ledger.report(&served).await?;
    println!("\n== Live handover (make-before-break): the first session moves to another DE node");
    {
        let (_, s) = &mut sessions[0];
        let from = s.address.clone();
        let before = field(&s.info().await?, "last_seq");
        let r: Value = reqwest::Client::new()
            .post(format!("{from}/sessions/{}/handover", s.id))
            .bearer_auth(&operator)
            .send()
            .await?
            .json()
            .await?;
        anyhow::ensure!(r.get("epoch").is_some(), "handover failed: {r}");
        println!(
            "  {} {} → {} ({}), epoch {}, blackout {:.1} ms, total {:.1} ms",
            &s.id[..10.min(s.id.len())],
            s.placement.node_name,
            field(&r, "to"),
            field(&r, "address"),
            field(&r, "epoch"),
            r.get("blackout_ms").and_then(|v| v.as_f64()).unwrap_or(0.0),
            r.get("total_ms").and_then(|v| v.as_f64()).unwrap_or(0.0),
        );
        let reply = s.send(json!({ "text": "score" })).await?;
        let after = field(&s.info().await?, "last_seq");
        println!(
            "  the client followed `moved` to {}: inputs before {before}, now {after}; tutor: {}",
            s.address,
            s_of(reply.get("output").unwrap_or(&Value::Null), "say")
        );
        anyhow::ensure!(s.address != from, "the session did not move");
    }

    for (_, s) in sessions {
        s.close().await?;
    }
    routed.close().await?;
    let status = client.get("/status").await?;
    print_status(&status);
    Ok(())
}

/// The `[canopy]` section of a demo RC: 1 s summaries, the other RC trusted, and the treaties of
/// the demo federation (EU → JP: public data may be routed, health data may not).
fn demo_canopy(
    listen: &str,
    bootstrap: Option<&str>,
    region: &str,
    zone: &str,
    peer: &str,
) -> String {
    let bootstrap = bootstrap
        .map(|b| format!("[{b:?}]"))
        .unwrap_or_else(|| "[]".into());
    format!(
        "[canopy]\nenabled = true\nlisten = {listen:?}\nbootstrap = {bootstrap}\npublish_interval = \"1s\"\ngossip_heartbeat = \"200ms\"\nregion = {region:?}\nzone = {zone:?}\ntrusted_rcs = [{peer:?}]\ndefault_data_class = \"public\"\n\
         [[canopy.treaty]]\nname = \"eu-jp-public\"\nfrom_zone = \"EU\"\nto_zone = \"JP\"\nroute = true\nreplicate = false\ndata_classes = [\"public\"]\n\
         [[canopy.treaty]]\nname = \"eu-jp-no-health\"\nfrom_zone = \"EU\"\nto_zone = \"JP\"\nroute = false\nreplicate = false\ndata_classes = [\"health\"]\n"
    )
}

/// A JP-only manifest cannot be served in colony `demo`: it is routed across the canopy to
/// `demo-jp`, and the client talks to the Tokyo node directly. With health data, the treaty
/// `eu-jp-no-health` forbids it.
async fn demo_route_across(client: &Client, rc_api: u16) -> anyhow::Result<Session> {
    println!("\n== A session that cannot be served locally (JP only)");
    let t = Instant::now();
    let peers = wait_for(client, "/status", Duration::from_secs(30), |v| {
        v["canopy"]["peers"].as_array().is_some_and(|p| {
            p.iter()
                .any(|x| x["colony"] == "demo-jp" && x["free_slots"].as_u64().unwrap_or(0) > 0)
        })
    })
    .await?;
    println!(
        "  colony demo-jp appeared in the peering table after {:?} (signed summary over libp2p gossipsub)",
        t.elapsed()
    );
    print_canopy(&peers);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let url = format!("http://127.0.0.1:{rc_api}/sessions");
    let t = Instant::now();
    // Peering is learnt separately on each side: until demo-jp has heard this RC's own summary it
    // refuses its signed request (401 unknown_rc), which this RC answers 503 retryable.
    let deadline = t + Duration::from_secs(30);
    let (code, body) = loop {
        let r = http
            .post(&url)
            .header("content-type", "application/toml")
            .body(DEMO_MANIFEST_JP)
            .send()
            .await?;
        let (code, body): (u16, Value) = (r.status().as_u16(), r.json().await?);
        if code == 503 && body["retryable"] == Value::Bool(true) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        break (code, body);
    };
    if code != 201 || body["routed"] != Value::Bool(true) {
        bail!("JP manifest was not routed across: {code} {body}");
    }
    println!(
        "  routed across the canopy in {:?}: colony {} ({}) placed it on {} ({}) — the RC-to-RC request was signed by this RC and verified by theirs",
        t.elapsed(),
        field(&body, "colony"),
        field(&body, "region"),
        field(&body, "node_name"),
        field(&body, "address"),
    );
    let id = field(&body, "session_id");
    // The session's home is now demo-jp's RC; the client follows its `moved` to the node.
    let mut s = Client::new(field(&body, "rc_api")).attach(&id, body["capability"].as_str(), 1);
    let mut question = String::new();
    for turn in 0..2 {
        let text = if turn == 0 {
            "score".to_string()
        } else {
            answer_for(&question)
        };
        let out = s.send(json!({ "text": text })).await?;
        let out = out.get("output").cloned().unwrap_or(Value::Null);
        question = s_of(&out, "question");
        println!(
            "  {} (tokyo) student: {text:<6} tutor: {} {question}",
            &id[..10.min(id.len())],
            s_of(&out, "say")
        );
    }
    let r = http
        .post(format!("{url}?data_class=health"))
        .header("content-type", "application/toml")
        .body(DEMO_MANIFEST_JP)
        .send()
        .await?;
    let (code, body): (u16, Value) = (r.status().as_u16(), r.json().await?);
    if code != 403 {
        bail!("health data was not refused by treaty: {code} {body}");
    }
    println!(
        "  the same manifest with health data is refused ({code}): {}",
        field(&body, "message")
    );
    Ok(s)
}

fn s_of(v: &Value, k: &str) -> String {
    v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string()
}

/// Solves "What is a + b?"-style questions (the demo student is always right).
fn answer_for(question: &str) -> String {
    let nums: Vec<i64> = question
        .split(|c: char| !(c.is_ascii_digit() || c == '-'))
        .filter_map(|t| t.parse().ok())
        .collect();
    let op = question
        .chars()
        .find(|c| matches!(c, '+' | '×' | '*' | '-'));
    match (nums.as_slice(), op) {
        ([a, b, ..], Some('+')) => (a + b).to_string(),
        ([a, b, ..], Some('×' | '*')) => (a * b).to_string(),
        ([a, b, ..], Some('-')) => (a - b).to_string(),
        _ => "hint".to_string(),
    }
}

/// The `opengrid` binary beside this executable.
fn opengrid_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locate this executable")?;
    let exe = me.with_file_name(format!("opengrid{}", std::env::consts::EXE_SUFFIX));
    if !exe.is_file() {
        bail!(
            "{} not found: build it with `cargo build -p opengrid-examples --bins`",
            exe.display()
        );
    }
    Ok(exe)
}

//! The `opengrid` command line: `node`, `rc`, `status`, `id`, `demo`.
//!
//! The binary itself lives at the top of the workspace (it links the handlers it serves; see
//! `docs/adr/0003-binary-location.md`) and is one call: [`main_with`]`(setup)`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use crate::client::Client;
use crate::config::{NodeConfig, RcConfig};
use crate::identity::Identity;
use crate::server::{start_node, start_rc, HandlerSetup};

/// OpenGrid: session-native runtime for AI agents.
#[derive(Debug, Parser)]
#[command(name = "opengrid", version, about)]
pub struct Opts {
    /// JSON log lines (also `OPENGRID_LOG_JSON=1`). Filter with `RUST_LOG`.
    #[arg(long, global = true, env = "OPENGRID_LOG_JSON")]
    pub log_json: bool,
    /// What to run.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run a node.
    Node {
        /// Node config (TOML). Without it: defaults + `OPENGRID_*` env.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run a routing coordinator.
    Rc {
        /// RC config (TOML). Without it: defaults + `OPENGRID_*` env.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Show colony members, load and sessions.
    Status {
        /// RC client-API base URL.
        #[arg(long, default_value = "http://127.0.0.1:7600")]
        rc: String,
        /// Raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print this data dir's identity (creating the key on first use).
    Id {
        /// Data dir holding `identity.key`.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Start a local colony (1 RC + 3 node processes), place and talk to tutor sessions, stop.
    Demo {
        /// Keep the temp dir (logs, data) afterwards.
        #[arg(long)]
        keep: bool,
    },
    /// The settlement ledger: run a replica, query balances and status, register keys
    /// (same commands as `opengrid-ledger`).
    Ledger {
        #[command(subcommand)]
        cmd: opengrid_settlement::cli::LedgerCmd,
    },
}

/// Initialises `tracing`: `RUST_LOG` overrides `default`; JSON lines when asked.
pub fn init_logging(json: bool, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        b.json().try_init()
    } else {
        b.try_init()
    };
}

/// Runs the `opengrid` command line with the handlers `setup` registers.
pub fn main_with(setup: HandlerSetup) -> ExitCode {
    let opts = Opts::parse();
    let quiet = matches!(
        opts.cmd,
        Cmd::Status { .. } | Cmd::Id { .. } | Cmd::Demo { .. }
    );
    init_logging(
        opts.log_json,
        if quiet {
            "warn"
        } else {
            "info,ractor_cluster=warn,ractor=warn"
        },
    );
    opengrid_actors::install_panic_hook();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the main runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(opts.cmd, setup)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run(cmd: Cmd, setup: HandlerSetup) -> anyhow::Result<()> {
    match cmd {
        Cmd::Node { config } => {
            let cfg = NodeConfig::load(config.as_deref()).context("node config")?;
            let node = start_node(cfg, setup).await.context("start node")?;
            println!("node {} api {}", node.core().id(), node.api_url());
            shutdown_signal().await;
            tracing::info!("shutting down");
            node.shutdown().await;
            Ok(())
        }
        Cmd::Rc { config } => {
            let cfg = RcConfig::load(config.as_deref()).context("rc config")?;
            let rc = start_rc(cfg).await.context("start rc")?;
            println!(
                "rc {} api {} cluster {}",
                rc.core().id(),
                rc.api_url(),
                rc.cluster_addr()
            );
            shutdown_signal().await;
            tracing::info!("shutting down");
            rc.shutdown().await;
            Ok(())
        }
        Cmd::Status { rc, json } => {
            let v = Client::new(rc)
                .get("/status")
                .await
                .context("query the RC")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_status(&v);
            }
            Ok(())
        }
        Cmd::Id { data_dir } => {
            let id = Identity::load_or_create(&data_dir)?;
            println!("{}", id.id());
            Ok(())
        }
        Cmd::Demo { keep } => demo(keep).await,
        Cmd::Ledger { cmd } => opengrid_settlement::cli::run(cmd).await,
    }
}

fn field(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(x) => x.to_string(),
        None => String::new(),
    }
}

fn print_status(v: &Value) {
    println!("colony {}  rc {}", field(v, "colony"), field(v, "rc"));
    println!("  node     jur state  sessions   rtt_us    phi  api");
    for m in v
        .get("members")
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
    {
        println!(
            "  {:<8} {:<3} {:<6} {:>4}/{:<3} {:>8} {:>6.2}  {}",
            field(m, "name"),
            field(m, "jurisdiction"),
            field(m, "state"),
            field(m, "sessions"),
            field(m, "capacity"),
            field(m, "rtt_us"),
            m.get("phi").and_then(|p| p.as_f64()).unwrap_or(0.0),
            field(m, "address"),
        );
    }
    let sessions = v
        .get("sessions")
        .and_then(|m| m.as_array())
        .cloned()
        .unwrap_or_default();
    println!("  {} sessions in the directory", sessions.len());
    for e in sessions {
        println!(
            "    {:<20} on {:<8} epoch {:<3} {}",
            field(&e, "session_id"),
            field(&e, "node_name"),
            field(&e, "epoch"),
            field(&e, "state")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// demo

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
                    Ok(Some(st)) => break Err(format!("exited with {st}")),
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

/// A free 127.0.0.1 port.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
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

async fn demo(keep: bool) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("opengrid-demo-")
        .tempdir()?;
    let root = dir.path().to_path_buf();
    let exe = std::env::current_exe().context("locate the opengrid binary")?;
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
        "\nDone: one RC and three nodes, sessions placed by jurisdiction, no process left behind."
    );
    Ok(())
}

async fn demo_body(root: &Path, exe: &Path, children: &mut Children) -> anyhow::Result<()> {
    let rc_api = free_port()?;
    let rc_cluster = free_port()?;
    let secret = format!("demo-{:016x}", rand::random::<u64>());
    let rc_cfg = format!(
        "version = 1\ncolony = \"demo\"\ndata_dir = {:?}\napi_listen = \"127.0.0.1:{rc_api}\"\ncluster_listen = \"127.0.0.1:{rc_cluster}\"\ncolony_secret = \"{secret}\"\n",
        root.join("rc").display().to_string()
    );
    std::fs::write(root.join("rc.toml"), rc_cfg)?;
    println!("OpenGrid local colony demo (temp dir {})", root.display());
    println!("\n== Starting 1 RC and 3 nodes");
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
        children.spawn(
            name,
            exe,
            &["node", "--config", &path.display().to_string()],
            &root.join(format!("{name}.log")),
        )?;
    }
    let client = Client::new(format!("http://127.0.0.1:{rc_api}"));
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
    match client.create(DEMO_MANIFEST_JP, None).await {
        Err(e) => println!("  a JP-only manifest is refused: {e}"),
        Ok(s) => bail!("JP manifest was placed on {}", s.placement.node_name),
    }

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
    for (_, s) in sessions {
        s.close().await?;
    }
    let status = client.get("/status").await?;
    print_status(&status);
    Ok(())
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

//! The `opengrid` command line: `node`, `rc`, `status`, `drain`, `id`, `ledger`, and for
//! packaging `init` (commented configs, [`crate::init`]), `completions` and `man`.
//!
//! The binary itself lives at the top of the workspace (it links the handlers it serves; see
//! `docs/adr/0003-binary-location.md`) and is one call: [`main_with`]`(setup)`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::client::Client;
use crate::common::identity::Identity;
use crate::node::config::NodeConfig;
use crate::node::server::{start_node_with, HandlerSetup};
use crate::rc::config::RcConfig;
use crate::rc::server::start_rc;

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
    /// Show colony members, load and sessions (needs an operator key or token).
    Status {
        /// RC client-API base URL.
        #[arg(long, default_value = "http://127.0.0.1:7600")]
        rc: String,
        /// Raw JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        auth: OperatorAuth,
    },
    /// The colony's RC group (ADR 0037): show it, add a replica, remove one (operator).
    #[command(subcommand)]
    RcGroup(RcGroupCmd),
    /// Drain a node for maintenance: hand every session off (live handover; never-live
    /// sessions restart elsewhere), then print the report. Stop the node afterwards.
    Drain {
        /// The node: its client-API base URL, or its name (looked up at the RC).
        node: String,
        /// RC client-API base URL (to look a node name up).
        #[arg(long, default_value = "http://127.0.0.1:7600")]
        rc: String,
        #[command(flatten)]
        auth: OperatorAuth,
    },
    /// Mint a token: `token operator --key <data dir>` prints a short-lived operator token for
    /// `Authorization: Bearer …` (curl, the dashboard's sign-in).
    Token {
        #[command(subcommand)]
        kind: TokenCmd,
    },
    /// Agent packages: `agent keygen`, `agent push <dir>`, `agent list|show|versions|retire`
    /// (ADR 0030).
    Agent {
        #[command(subcommand)]
        cmd: crate::agent_cli::AgentCmd,
    },
    /// Print this data dir's identity (creating the key on first use).
    Id {
        /// Data dir holding `identity.key`.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// The settlement ledger: run a replica, query balances and status, register keys
    /// (same commands as `opengrid-ledger`).
    Ledger {
        #[command(subcommand)]
        cmd: opengrid_settlement::cli::LedgerCmd,
    },
    /// Write a commented config with every field at its default (`init node --name b ...`).
    Init {
        #[command(subcommand)]
        kind: crate::init::InitCmd,
    },
    /// Print a shell completion script: `opengrid completions bash > /etc/bash_completion.d/opengrid`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the `/v1` client API's OpenAPI 3.1 document (as served at `/v1/openapi.json`;
    /// committed as `docs/openapi.json`).
    Openapi,
    /// Print the man page (roff), or write one page per command into `--dir`.
    Man {
        /// Write `opengrid.1` and `opengrid-<command>.1` pages into this directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// How an operator command proves it is an operator (ADR 0026).
#[derive(Debug, Clone, clap::Args)]
pub struct OperatorAuth {
    /// Data dir holding the operator's `identity.key` (an RC's or node's own data dir works on
    /// its host; any other key must be listed in `operators`).
    #[arg(long, env = "OPENGRID_OPERATOR_KEY_DIR")]
    pub key: Option<PathBuf>,
    /// An operator token instead of a key (`opengrid token operator`).
    #[arg(
        long,
        env = "OPENGRID_TOKEN",
        hide_env_values = true,
        conflicts_with = "key"
    )]
    pub token: Option<String>,
}

impl OperatorAuth {
    /// The token to send: the given one, or one minted from the key (valid 10 minutes).
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(t) = &self.token {
            return Ok(Some(t.clone()));
        }
        match &self.key {
            Some(dir) => Ok(Some(crate::common::token::operator_token_from_dir(
                dir,
                std::time::Duration::from_secs(600),
            )?)),
            None => Ok(None),
        }
    }

    pub(crate) fn client(&self, rc: &str) -> anyhow::Result<Client> {
        let c = Client::new(rc.to_string());
        Ok(match self.token()? {
            Some(t) => c.with_token(t),
            None => c,
        })
    }
}

/// `opengrid rc-group …`.
#[derive(Debug, Subcommand)]
pub enum RcGroupCmd {
    /// The replicas, who leads, the term.
    Status {
        /// Any replica's client-API base URL (several, comma separated, are tried in turn).
        #[arg(long, default_value = "http://127.0.0.1:7600")]
        rc: String,
        /// Raw JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        auth: OperatorAuth,
    },
    /// Add a replica: start it first with `[group] id = ID`, `listen = ADDRESS` and `peers = []`
    /// (and the colony's other settings); it joins as a learner, catches up, then votes.
    Add {
        /// Its Raft id (unused in the group).
        #[arg(long)]
        id: u64,
        /// Its Raft address host:port (its `[group] listen`).
        #[arg(long)]
        address: String,
        /// Its identity (`opengrid id --data-dir <its data dir>`).
        #[arg(long)]
        did: String,
        /// Any replica's client-API base URL.
        #[arg(long, default_value = "http://127.0.0.1:7600")]
        rc: String,
        #[command(flatten)]
        auth: OperatorAuth,
    },
    /// Remove a replica from the group (stop its process afterwards).
    Remove {
        /// Its Raft id.
        #[arg(long)]
        id: u64,
        /// Any replica's client-API base URL.
        #[arg(long, default_value = "http://127.0.0.1:7600")]
        rc: String,
        #[command(flatten)]
        auth: OperatorAuth,
    },
}

/// A 401 from an operator route: say how to give credentials.
pub(crate) fn operator_hint(e: crate::client::ClientError) -> anyhow::Error {
    match &e {
        crate::client::ClientError::Api { status: 401, .. } => anyhow::anyhow!(
            "{e} (operator routes need --key <operator data dir> or --token; see `opengrid token operator`)"
        ),
        _ => anyhow::Error::new(e),
    }
}

/// Tokens `opengrid token` mints.
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// An operator token signed by the key in `--key` (valid for `--valid`).
    Operator {
        /// Data dir holding the operator's `identity.key`.
        #[arg(long)]
        key: PathBuf,
        /// How long the token is valid (`10m`, `1h`).
        #[arg(long, default_value = "10m")]
        valid: humantime::Duration,
    },
    /// A join token for a colony that admits by token (`require_join_token`), signed by the key
    /// in `--key` (the RC's own, or one of its `operators`): give it to the node as
    /// `OPENGRID_JOIN_TOKEN`.
    Join {
        /// Data dir holding the colony operator's `identity.key`.
        #[arg(long)]
        key: PathBuf,
        /// The colony.
        #[arg(long)]
        colony: String,
        /// Only this node (its did:mycel, `opengrid id`); without it, any node.
        #[arg(long)]
        node: Option<String>,
        /// Jurisdictions the node may declare (repeat; none: any).
        #[arg(long = "jurisdiction")]
        jurisdictions: Vec<String>,
        /// How long the token may be used to join.
        #[arg(long, default_value = "24h")]
        valid: humantime::Duration,
    },
}

/// The clap command of `opengrid` (for completions and man pages).
pub fn command() -> clap::Command {
    <Opts as clap::CommandFactory>::command()
}

/// The completion script of `opengrid` for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    let mut cmd = command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "opengrid", &mut out);
    out
}

/// The man page (roff) of `cmd`.
pub fn man_page(cmd: clap::Command) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut out)?;
    Ok(out)
}

/// Every man page of `opengrid`: `(file name, roff)` for the command and each subcommand,
/// nested ones included (`opengrid-ledger-replica.1`).
pub fn man_pages() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    fn walk(cmd: &clap::Command, out: &mut Vec<(String, Vec<u8>)>) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            walk(sub, out)?;
        }
        // After `build`, a subcommand's display name is `opengrid-ledger-replica`.
        let man = clap_mangen::Man::new(cmd.clone());
        let mut page = Vec::new();
        man.render(&mut page)?;
        out.push((man.get_filename(), page));
        Ok(())
    }
    let mut cmd = command();
    cmd.build();
    let mut out = Vec::new();
    walk(&cmd, &mut out)?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// `opengrid man`: the top page on standard output, or every page into `dir`.
fn run_man(dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    use std::io::Write;
    match dir {
        None => {
            std::io::stdout().write_all(&man_page(command())?)?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
            for (name, page) in man_pages()? {
                let path = dir.join(&name);
                std::fs::write(&path, page).with_context(|| format!("write {}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// Whether log lines on standard error may carry terminal colours: only on a terminal, and not
/// when `NO_COLOR` is set (<https://no-color.org>). Logs redirected to a file or journald stay
/// plain text.
pub fn log_colours() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Initialises `tracing`: `RUST_LOG` overrides `default`; JSON lines when asked; colours only on
/// a terminal ([`log_colours`]).
pub fn init_logging(json: bool, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(log_colours())
        .with_writer(std::io::stderr);
    let _ = if json {
        b.json().try_init()
    } else {
        b.try_init()
    };
}

/// Runs the `opengrid` command line with the handlers `setup` registers.
pub fn main_with(setup: HandlerSetup) -> ExitCode {
    main_with_services(setup, crate::node::inference::no_services)
}

/// As [`main_with`], with `services` adding handler services built from a node's inference plane
/// (see [`crate::node::inference::ServiceSetup`]).
pub fn main_with_services(
    setup: HandlerSetup,
    services: crate::node::inference::ServiceSetup,
) -> ExitCode {
    let opts = Opts::parse();
    let quiet = matches!(
        opts.cmd,
        Cmd::Status { .. }
            | Cmd::Id { .. }
            | Cmd::Init { .. }
            | Cmd::Completions { .. }
            | Cmd::Openapi
            | Cmd::Man { .. }
    );
    init_logging(
        opts.log_json,
        if quiet {
            "warn"
        } else {
            "info,ractor_cluster=warn,ractor=warn,openraft=warn"
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
    match rt.block_on(run(opts.cmd, setup, services)) {
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

async fn run(
    cmd: Cmd,
    setup: HandlerSetup,
    services: crate::node::inference::ServiceSetup,
) -> anyhow::Result<()> {
    match cmd {
        Cmd::Node { config } => {
            let cfg = NodeConfig::load(config.as_deref()).context("node config")?;
            let node = start_node_with(cfg, setup, services)
                .await
                .context("start node")?;
            println!("node {} api {}", node.core().id(), node.api_url());
            shutdown_signal().await;
            // SIGTERM / Ctrl-C: hand every session off before exiting.
            tracing::info!("shutting down: draining first");
            let report = node.core().drain().await;
            println!(
                "drained: {} handed over, {} restarted elsewhere, {} left (in {} ms)",
                report.handed_over, report.restarted, report.remaining, report.took_ms
            );
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
        Cmd::Status { rc, json, auth } => {
            let mut v = auth
                .client(&rc)?
                .get("/status")
                .await
                .map_err(operator_hint)
                .context("query the RC")?;
            // A follower of an RC group knows only the group: the colony is the leader's.
            let leader = v["group"]
                .as_object()
                .filter(|g| g.get("acting").and_then(|a| a.as_bool()) != Some(true))
                .and_then(|g| g.get("leader_api"))
                .and_then(|a| a.as_str())
                .map(str::to_string);
            if let Some(api) = leader {
                v = auth
                    .client(&api)?
                    .get("/status")
                    .await
                    .map_err(operator_hint)
                    .with_context(|| format!("query the RC group's leader at {api}"))?;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_status(&v);
                println!("dashboard: {}/ui", rc.trim_end_matches('/'));
            }
            Ok(())
        }
        Cmd::RcGroup(cmd) => {
            let (v, json) = match cmd {
                RcGroupCmd::Status { rc, json, auth } => (
                    auth.client(&rc)?
                        .get("/v1/group")
                        .await
                        .map_err(operator_hint)
                        .context("query the RC group")?,
                    json,
                ),
                RcGroupCmd::Add {
                    id,
                    address,
                    did,
                    rc,
                    auth,
                } => (
                    auth.client(&rc)?
                        .request_json(
                            reqwest::Method::POST,
                            "/v1/group/replicas",
                            Some(serde_json::json!({"id": id, "address": address, "did": did})),
                        )
                        .await
                        .map_err(operator_hint)
                        .with_context(|| format!("add replica {id}"))?,
                    false,
                ),
                RcGroupCmd::Remove { id, rc, auth } => (
                    auth.client(&rc)?
                        .request_json(
                            reqwest::Method::DELETE,
                            &format!("/v1/group/replicas/{id}"),
                            None,
                        )
                        .await
                        .map_err(operator_hint)
                        .with_context(|| format!("remove replica {id}"))?,
                    false,
                ),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", format_group(&v));
            }
            Ok(())
        }
        Cmd::Agent { cmd } => crate::agent_cli::run(cmd).await,
        Cmd::Drain { node, rc, auth } => {
            let token = auth.token()?;
            let api = if node.starts_with("http://") || node.starts_with("https://") {
                node
            } else {
                let st = auth
                    .client(&rc)?
                    .get("/status")
                    .await
                    .map_err(operator_hint)
                    .context("query the RC")?;
                st.get("members")
                    .and_then(|m| m.as_array())
                    .and_then(|ms| {
                        ms.iter().find(|m| {
                            m.get("name").and_then(|n| n.as_str()) == Some(node.as_str())
                                || m.get("node").and_then(|n| n.as_str()) == Some(node.as_str())
                        })
                    })
                    .and_then(|m| m.get("address").and_then(|a| a.as_str()))
                    .map(str::to_string)
                    .ok_or_else(|| anyhow::anyhow!("no member named {node:?} at the RC"))?
            };
            println!("draining {api} …");
            let mut req = reqwest::Client::new().post(format!("{api}/drain"));
            if let Some(t) = &token {
                req = req.bearer_auth(t);
            }
            let r = req.send().await.context("POST /drain")?;
            let status = r.status();
            let v: Value = r.json().await.context("drain report")?;
            if !status.is_success() {
                anyhow::bail!(
                    "{status}: {}{}",
                    field(&v, "message"),
                    if status.as_u16() == 401 {
                        " (give --key <operator data dir> or --token)"
                    } else {
                        ""
                    }
                );
            }
            println!("{}", serde_json::to_string_pretty(&v)?);
            let left = v.get("remaining").and_then(|x| x.as_u64()).unwrap_or(0);
            if left > 0 {
                anyhow::bail!("{left} sessions could not leave the node");
            }
            Ok(())
        }
        Cmd::Token {
            kind: TokenCmd::Operator { key, valid },
        } => {
            println!(
                "{}",
                crate::common::token::operator_token_from_dir(&key, valid.into())?
            );
            Ok(())
        }
        Cmd::Token {
            kind:
                TokenCmd::Join {
                    key,
                    colony,
                    node,
                    jurisdictions,
                    valid,
                },
        } => {
            let id = Identity::load_or_create(&key)
                .with_context(|| format!("operator key in {}", key.display()))?;
            let node = node
                .as_deref()
                .map(crate::common::identity::NodeId::parse)
                .transpose()
                .context("--node")?;
            println!(
                "{}",
                crate::common::token::mint_join(
                    &id,
                    &colony,
                    node.as_ref(),
                    &jurisdictions,
                    valid.into()
                )?
            );
            Ok(())
        }
        Cmd::Id { data_dir } => {
            let id = Identity::load_or_create(&data_dir)?;
            println!("{}", id.id());
            Ok(())
        }
        Cmd::Ledger { cmd } => opengrid_settlement::cli::run(cmd).await,
        Cmd::Init { kind } => Ok(crate::init::run(&kind)?),
        Cmd::Completions { shell } => {
            use std::io::Write;
            std::io::stdout().write_all(&completions(shell))?;
            Ok(())
        }
        Cmd::Man { dir } => run_man(dir.as_deref()),
        Cmd::Openapi => {
            print!("{}", crate::openapi::openapi_json_text());
            Ok(())
        }
    }
}

/// The string (or number, as text) at `k` of a JSON object; empty when absent.
pub fn field(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(x) => x.to_string(),
        None => String::new(),
    }
}

/// Prints the RC's `/status` as `opengrid status` does.
pub fn print_status(v: &Value) {
    print!("{}", format_status(v));
    print_canopy(v);
}

/// The RC group as `/status` shows it (ADR 0037): the term, who leads, every replica.
fn format_group(g: &Value) -> String {
    let leader = g.get("leader").and_then(|l| l.as_u64());
    let mut out = format!(
        "rc group  term {}  this replica {} ({}{})  leader {}\n",
        field(g, "term"),
        field(g, "id"),
        field(g, "role"),
        if g.get("acting").and_then(|a| a.as_bool()) == Some(true) {
            ", in office"
        } else {
            ""
        },
        leader
            .map(|l| l.to_string())
            .unwrap_or_else(|| "none (election)".into()),
    );
    let mut t = table(&["replica", "", "raft", "api", "control plane"]);
    for r in g
        .get("replicas")
        .and_then(|r| r.as_array())
        .into_iter()
        .flatten()
    {
        let id = r.get("id").and_then(|i| i.as_u64());
        t.add_row(vec![
            field(r, "id"),
            if id.is_some() && id == leader {
                "leader".into()
            } else {
                String::new()
            },
            field(r, "address"),
            field(r, "api"),
            field(r, "cluster"),
        ]);
    }
    out.push_str(&t.to_string());
    out.push('\n');
    out
}

fn table(header: &[&str]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING)
        .set_header(header.to_vec());
    t
}

/// Phi as a column: two decimals, or `>999` for a node long silent.
fn phi_cell(m: &Value) -> String {
    match m.get("phi").and_then(|p| p.as_f64()) {
        Some(p) if p > 999.0 => ">999".into(),
        Some(p) => format!("{p:.2}"),
        None => "-".into(),
    }
}

/// Milliseconds as a short age: `80ms`, `4.2s`, `3m10s`.
fn age(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1_000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// The members and sessions of the RC's `/status` as aligned tables (columns sized to their
/// longest cell, so long names and ids keep the layout).
pub fn format_status(v: &Value) -> String {
    let mut out = format!("colony {}  rc {}\n", field(v, "colony"), field(v, "rc"));
    if let Some(g) = v.get("group").filter(|g| g.is_object()) {
        out.push_str(&format_group(g));
    }
    let mut t = table(&[
        "node",
        "jur",
        "state",
        "sessions",
        "rtt_us",
        "phi",
        "last seen",
        "api",
    ]);
    for m in v
        .get("members")
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
    {
        t.add_row(vec![
            field(m, "name"),
            field(m, "jurisdiction"),
            field(m, "state"),
            format!("{}/{}", field(m, "sessions"), field(m, "capacity")),
            field(m, "rtt_us"),
            phi_cell(m),
            m.get("last_heartbeat_ms")
                .and_then(|x| x.as_u64())
                .map(|ms| format!("{} ago", age(ms)))
                .unwrap_or_default(),
            field(m, "address"),
        ]);
    }
    out.push_str(&t.to_string());
    out.push('\n');
    let sessions = v
        .get("sessions")
        .and_then(|m| m.as_array())
        .cloned()
        .unwrap_or_default();
    out.push_str(&format!("{} sessions in the directory\n", sessions.len()));
    if !sessions.is_empty() {
        let mut t = table(&["session", "holder", "epoch", "state", "replicas", "waiting"]);
        for e in &sessions {
            let replicas = e
                .get("replicas")
                .and_then(|r| r.as_array())
                .map(|r| r.len())
                .unwrap_or(0);
            t.add_row(vec![
                field(e, "session_id"),
                field(e, "node_name"),
                field(e, "epoch"),
                field(e, "state"),
                replicas.to_string(),
                field(e, "waiting"),
            ]);
        }
        out.push_str(&t.to_string());
        out.push('\n');
    }
    out
}

/// The canopy part of `/status`: this RC's zone and its peering table.
pub fn print_canopy(v: &Value) {
    let c = &v["canopy"];
    if c["enabled"] != Value::Bool(true) {
        return;
    }
    let peers = c["peers"].as_array().cloned().unwrap_or_default();
    println!(
        "  canopy: region {} zone {}  {} peer colonies  treaties {}",
        field(c, "region"),
        field(c, "zone"),
        peers.len(),
        c["treaties"]
            .as_array()
            .map(|t| t
                .iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(","))
            .unwrap_or_default(),
    );
    if !peers.is_empty() {
        println!(
            "    {:<16} {:<12} {:<12} {:>6} {:>6} {:>7}  rc api",
            "colony", "region", "jur", "free", "load‰", "age_ms"
        );
    }
    for p in peers {
        let jur = p["jurisdictions"]
            .as_array()
            .map(|j| {
                j.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        println!(
            "    {:<16} {:<12} {:<12} {:>6} {:>6} {:>7}  {}",
            field(&p, "colony"),
            field(&p, "region"),
            jur,
            field(&p, "free_slots"),
            field(&p, "load_permille"),
            field(&p, "age_ms"),
            field(&p, "rc_api"),
        );
    }
    let routed = c["routed_out"].as_array().cloned().unwrap_or_default();
    if !routed.is_empty() {
        println!("  {} sessions routed to other colonies", routed.len());
        for r in routed {
            println!(
                "    {:<36} -> {} ({}) on {}",
                field(&r, "session_id"),
                field(&r, "colony"),
                field(&r, "region"),
                field(&r, "node_name")
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// logs

/// `s` without terminal colour codes (ESC … letter), as the processes' `tracing` logs write them.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|d| d.is_ascii_alphabetic());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_columns_hold_long_names_and_dead_nodes() {
        let v = json!({
            "colony": "c1", "rc": "did:mycel:rc",
            "members": [
                {"name": "a", "jurisdiction": "DE", "state": "alive", "sessions": 3, "capacity": 100,
                 "rtt_us": 120, "phi": 0.42, "last_heartbeat_ms": 80, "address": "http://127.0.0.1:1"},
                {"name": "a-very-long-node-name-from-a-stranger", "jurisdiction": "FR", "state": "dead",
                 "sessions": 0, "capacity": 100, "rtt_us": 130, "phi": 18_000.0,
                 "last_heartbeat_ms": 190_000, "address": "http://127.0.0.1:2"},
            ],
            "sessions": [{"session_id": "s-1", "node_name": "a", "epoch": 2, "state": "active",
                          "replicas": ["x", "y"]}],
        });
        let text = format_status(&v);
        let lines: Vec<&str> = text.lines().collect();
        // Every member row starts its `state` column at the same offset as the header.
        let header = lines
            .iter()
            .find(|l| l.contains("state") && l.contains("node"))
            .unwrap();
        let col = header.find("state").unwrap();
        for name in ["alive", "dead"] {
            let row = lines.iter().find(|l| l.contains(name)).unwrap();
            assert_eq!(row.find(name), Some(col), "{text}");
        }
        assert!(
            text.contains(">999") && text.contains("3m10s ago"),
            "{text}"
        );
        assert!(text.contains("1 sessions in the directory"), "{text}");
        assert!(text.contains("s-1"), "{text}");
    }

    #[test]
    fn ages_read_well() {
        assert_eq!(age(80), "80ms");
        assert_eq!(age(4_200), "4.2s");
        assert_eq!(age(190_000), "3m10s");
    }

    const SUBCOMMANDS: &[&str] = &[
        "node",
        "rc",
        "status",
        "drain",
        "id",
        "ledger",
        "init",
        "completions",
        "man",
    ];

    #[test]
    fn the_cli_definition_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn completions_name_every_subcommand_in_every_shell() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
            clap_complete::Shell::Elvish,
            clap_complete::Shell::PowerShell,
        ] {
            let text = String::from_utf8(completions(shell)).unwrap();
            for sub in SUBCOMMANDS {
                assert!(text.contains(sub), "{shell}: no `{sub}`");
            }
            // Nested: `opengrid ledger replica --config`, `opengrid init node --name`.
            assert!(text.contains("replica"), "{shell}");
            assert!(text.contains("--name"), "{shell}");
        }
    }

    #[test]
    fn the_man_page_names_every_subcommand() {
        let top = String::from_utf8(man_page(command()).unwrap()).unwrap();
        assert!(
            top.starts_with(".ie") || top.contains(".TH opengrid"),
            "{top}"
        );
        for sub in SUBCOMMANDS {
            assert!(top.contains(sub), "no `{sub}` in the man page");
        }
        let pages = man_pages().unwrap();
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        for want in [
            "opengrid.1",
            "opengrid-node.1",
            "opengrid-init-node.1",
            "opengrid-ledger-replica.1",
            "opengrid-man.1",
        ] {
            assert!(names.contains(&want), "{want} not in {names:?}");
        }
        let replica = &pages
            .iter()
            .find(|(n, _)| n == "opengrid-ledger-replica.1")
            .unwrap()
            .1;
        let replica = String::from_utf8_lossy(replica);
        assert!(
            replica.contains("opengrid\\-ledger\\-replica")
                || replica.contains("opengrid-ledger-replica"),
            "{replica}"
        );
        assert!(replica.contains("config"), "{replica}");
    }
}

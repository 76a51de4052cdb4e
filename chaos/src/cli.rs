//! The `opengrid-chaos` command line (the binary is a thin wrapper around [`run`]).

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::bench::{self, BenchError};
use crate::launcher::{self, LaunchError};
use crate::proxy::{LossMode, PartitionMode, Proxy, ProxyConfig, ProxyHandle};
use crate::report::{reproduce_command, Progress, Report, EXIT_ERROR, EXIT_PASS};
use crate::scenario::{Scenario, ScenarioError, Suite};

/// Chaos harness for OpenGrid: inject real faults into real processes, check that nothing is lost.
#[derive(Debug, Parser)]
#[command(name = "opengrid-chaos", version, about)]
pub struct Opts {
    /// No progress lines on stderr.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// What to do.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run one scenario against real processes and check its invariants.
    Run(RunArgs),
    /// Run the scenario suite (`--short` for CI, `--long` for operators).
    Suite(SuiteArgs),
    /// Validate a scenario (or suite) file and print its expanded fault schedule.
    Validate {
        /// The scenario or suite file.
        scenario: PathBuf,
        /// Seed for the expansion (default: the file's).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// A standalone fault-injecting TCP proxy; faults are changed by commands on stdin
    /// (`partition refuse|stall`, `latency <ms> [jitter-ms]`, `loss <p> drop|stall`,
    /// `bandwidth <bytes/s>`, `heal`, `stats`).
    Proxy(ProxyArgs),
    /// Benchmarks with real processes on 127.0.0.1 (JSON output).
    Bench(BenchArgs),
    /// (internal) The session host + migration server process of the layer benches
    /// (`bench checkpoint`, `bench handover --replica-servers`).
    #[command(hide = true)]
    ReplicaServer {
        /// RocksDB directory.
        #[arg(long)]
        dir: PathBuf,
        /// Migration listen address.
        #[arg(long, default_value = "127.0.0.1:0")]
        addr: SocketAddr,
        /// Control listen address.
        #[arg(long, default_value = "127.0.0.1:0")]
        control: SocketAddr,
        /// Where to write the bound addresses once listening.
        #[arg(long)]
        ready_file: Option<PathBuf>,
        /// Plain-TCP migration links (`bench … --links plaintext`: measurement only).
        #[arg(long)]
        plaintext_links: bool,
    },
    /// (internal) A settlement ledger replica and its tools (`opengrid ledger …`), for
    /// `bench settlement`.
    #[command(hide = true)]
    Ledger {
        /// The ledger subcommand.
        #[command(subcommand)]
        cmd: opengrid_settlement::cli::LedgerCmd,
    },
    /// (internal) Spawn `n` long-sleeping children, write their pids, wait (launcher tests).
    #[command(hide = true)]
    SpawnChildren {
        /// How many.
        #[arg(long, default_value_t = 3)]
        n: usize,
        /// Where to write the pids (one per line), atomically, once all run.
        #[arg(long)]
        pid_file: PathBuf,
    },
}

/// `run` arguments.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The scenario file.
    pub scenario: PathBuf,
    /// Seed (default: the scenario's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// JSON report on stdout.
    #[arg(long)]
    pub json: bool,
    /// Where the colony comes from (`--bin`, `--keep`).
    #[command(flatten)]
    pub colony: ColonyRunArgs,
}

/// The colony a scenario runs against.
#[derive(Debug, Clone, Args)]
pub struct ColonyRunArgs {
    /// The `opengrid` binary (default: next to this executable, or `$OPENGRID_BIN_DIR`).
    #[arg(long = "bin", value_name = "PATH")]
    pub bin: Option<PathBuf>,
    /// Keep the colony directory (configs, logs, data) and print its path; it is always kept
    /// when a run fails.
    #[arg(long)]
    pub keep: bool,
}

/// `suite` arguments.
#[derive(Debug, Args)]
pub struct SuiteArgs {
    /// The CI suite (chaos/scenarios/short-suite.toml).
    #[arg(long, conflicts_with = "long")]
    pub short: bool,
    /// The operators' suite (chaos/scenarios/long-suite.toml).
    #[arg(long)]
    pub long: bool,
    /// Suite file instead of the built-in ones.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// JSON reports on stdout.
    #[arg(long)]
    pub json: bool,
    /// Where the colony comes from (`--bin`, `--keep`).
    #[command(flatten)]
    pub colony: ColonyRunArgs,
}

/// `proxy` arguments.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Forward to this address.
    #[arg(long)]
    pub target: SocketAddr,
    /// Listen here.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Seed of jitter and loss.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Initial added latency, ms.
    #[arg(long)]
    pub latency_ms: Option<u64>,
    /// Initial jitter, ms.
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u64,
    /// Initial loss probability per chunk.
    #[arg(long)]
    pub loss: Option<f64>,
    /// Loss mode.
    #[arg(long, value_enum, default_value_t = LossArg::Drop)]
    pub loss_mode: LossArg,
    /// Initial bandwidth limit, bytes/s.
    #[arg(long)]
    pub bandwidth: Option<u64>,
    /// Start partitioned.
    #[arg(long, value_enum)]
    pub partition: Option<PartitionArg>,
}

/// Loss mode on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LossArg {
    /// Reset the connection.
    Drop,
    /// Stall the connection.
    Stall,
}

/// Partition mode on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PartitionArg {
    /// Reset new connections.
    Refuse,
    /// Hold new connections.
    Stall,
}

/// `bench` arguments.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which bench.
    #[arg(value_enum)]
    pub kind: BenchKind,
    /// JSON only on stdout (progress still goes to stderr unless --quiet).
    #[arg(long)]
    pub json: bool,
    /// Samples (inputs for checkpoint, handovers per size for handover, probe pairs per
    /// condition for isolation, sessions on the killed node for failover).
    #[arg(long)]
    pub count: Option<usize>,
    /// State size in bytes (checkpoint).
    #[arg(long, default_value_t = 1024)]
    pub state_bytes: usize,
    /// Migration links of the layer benches (`checkpoint`, `handover --replica-servers`):
    /// `tls` (the product's), `plaintext` (security off: measurement only) or `both` (off
    /// then on, in the same run, for the ratio).
    #[arg(long, value_enum, default_value = "tls")]
    pub links: LinksArg,
    /// Settlement bench knobs (`--count` sets its receipts phase).
    #[command(flatten)]
    pub settlement: crate::bench_settlement::SettlementArgs,
    /// Colony bench knobs (`failover`, `handover`): `--bin`, budget, fsync.
    #[command(flatten)]
    pub colony: crate::bench_colony::ColonyArgs,
    /// `bench rc-scale` knobs (`--count`: placements in the baseline and in the window).
    #[command(flatten)]
    pub rc_scale: crate::bench_colony::RcScaleArgs,
}

/// Which links the layer benches use.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LinksArg {
    /// Mutual TLS with did:mycel certificates (the product).
    Tls,
    /// Plain TCP, claimed DIDs (security off, measurement only).
    Plaintext,
    /// Plaintext, then TLS, in one run.
    Both,
}

impl LinksArg {
    /// The runs, in order (`true` = plaintext), and how many rounds they are split into.
    pub fn runs(self) -> (Vec<bool>, usize) {
        bench::off_on_runs(self != LinksArg::Tls, self != LinksArg::Plaintext)
    }
}

/// Bench names.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum BenchKind {
    /// P2: planned handover blackout.
    Handover,
    /// P3: failover after kill -9 of a node.
    Failover,
    /// P11: zero-loss checkpoint ack with k = 2.
    Checkpoint,
    /// P5: control-plane isolation.
    Isolation,
    /// P8: settlement throughput.
    Settlement,
    /// The client API end to end (admission, input throughput), `--security both` for the
    /// cost of security; `--handler both`: inputs/s of native vs WebAssembly counter sessions
    /// (P13).
    Api,
    /// Agent packages: push → first answer of a ~2 MiB component on cold nodes.
    Agents,
    /// The RC group: kill -9 of its leader `--count` times (default 20) under load →
    /// placements accepted again, failed inputs on existing sessions (ADR 0037).
    RcFailover,
    /// P15: one RC with `--nodes` (10,000) simulated nodes heartbeating and `--sessions`
    /// (1,000,000) sessions in its directory: heartbeats absorbed, placement p99, memory.
    RcScale,
}

/// Errors of the command line.
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// Bad scenario.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// Launch failure.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// Bench failure.
    #[error(transparent)]
    Bench(#[from] BenchError),
    /// I/O.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Replica server failure.
    #[error(transparent)]
    ReplicaServer(#[from] crate::replica_server::ReplicaServerError),
    /// Bad proxy command.
    #[error("{0}")]
    Usage(String),
}

/// Runs the command line; returns the process exit code.
pub async fn run(opts: Opts) -> Result<i32, ChaosError> {
    let progress = Progress::new(opts.quiet);
    match opts.cmd {
        Cmd::Validate { scenario, seed } => validate(&scenario, seed),
        Cmd::Run(a) => {
            let r = run_scenario(&a.scenario, a.seed, a.json, &a.colony, &progress).await?;
            print_report(&r, a.json);
            Ok(r.exit_code())
        }
        Cmd::Suite(a) => {
            let file = match (a.file, a.long) {
                (Some(f), _) => f,
                (None, true) => scenarios_dir().join("long-suite.toml"),
                (None, false) => scenarios_dir().join("short-suite.toml"),
            };
            let (suite, scenarios) = Suite::load(&file)?;
            progress.line(format!(
                "suite {}: {} scenario(s), budget {:?}",
                suite.name,
                scenarios.len(),
                suite.budget.0
            ));
            let mut worst = EXIT_PASS;
            let mut reports = Vec::new();
            for r in &suite.runs {
                let rep = run_scenario(&r.scenario, r.seed, a.json, &a.colony, &progress).await?;
                print_report(&rep, a.json);
                worst = worst.max(rep.exit_code());
                reports.push(rep);
            }
            let summary = crate::report::SuiteSummary::new(&suite.name, &reports);
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&summary).unwrap_or_default()
                );
            } else {
                println!("{}", summary.to_human());
            }
            Ok(worst)
        }
        Cmd::Proxy(a) => proxy(a, &progress).await,
        Cmd::Bench(a) => bench_cmd(a, &progress).await,
        Cmd::ReplicaServer {
            dir,
            addr,
            control,
            ready_file,
            plaintext_links,
        } => {
            crate::replica_server::serve_forever(dir, addr, control, ready_file, plaintext_links)
                .await?;
            Ok(EXIT_PASS)
        }
        Cmd::Ledger { cmd } => {
            opengrid_settlement::cli::run(cmd)
                .await
                .map_err(|e| BenchError::Failed(format!("ledger: {e:#}")))?;
            Ok(EXIT_PASS)
        }
        Cmd::SpawnChildren { n, pid_file } => spawn_children(n, &pid_file).await,
    }
}

/// `chaos/scenarios` of this source tree (or `$OPENGRID_CHAOS_SCENARIOS`).
pub fn scenarios_dir() -> PathBuf {
    std::env::var_os("OPENGRID_CHAOS_SCENARIOS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios"))
}

fn validate(path: &Path, seed: Option<u64>) -> Result<i32, ChaosError> {
    let is_suite = std::fs::read_to_string(path)
        .map(|t| t.lines().any(|l| l.trim_start().starts_with("[[run]]")))
        .unwrap_or(false);
    if is_suite {
        let (suite, scenarios) = Suite::load(path)?;
        println!(
            "ok: suite {} with {} scenario(s), budget {:?}",
            suite.name,
            scenarios.len(),
            suite.budget.0
        );
        for (r, sc) in suite.runs.iter().zip(&scenarios) {
            println!(
                "  {} (seed {}): {} fault event(s)",
                sc.name,
                r.seed.unwrap_or(sc.seed),
                sc.expand(r.seed.unwrap_or(sc.seed)).len()
            );
        }
        return Ok(EXIT_PASS);
    }
    let sc = Scenario::load(path)?;
    let seed = seed.unwrap_or(sc.seed);
    let sched = sc.expand(seed);
    println!(
        "ok: scenario {} ({} processes, {} session group(s), {} fault event(s), seed {seed})",
        sc.name,
        sc.processes().len(),
        sc.workload.sessions.len(),
        sched.len()
    );
    for f in sched {
        println!("  {f}");
    }
    Ok(EXIT_PASS)
}

/// Loads a scenario, expands its schedule and runs it against a real colony
/// ([`crate::colony_run`]). Without the `opengrid` binary, or for a scenario this build cannot
/// drive, the report carries the error (exit code 2) and the expanded schedule.
pub async fn run_scenario(
    path: &Path,
    seed: Option<u64>,
    json: bool,
    colony: &ColonyRunArgs,
    progress: &Progress,
) -> Result<Report, ChaosError> {
    let sc = Scenario::load(path)?;
    let seed = seed.unwrap_or(sc.seed);
    let mut report = Report::new(
        &sc.name,
        seed,
        reproduce_command(&path.display().to_string(), seed, json),
    );
    if let Some(b) = &colony.bin {
        report
            .reproduce
            .push_str(&format!(" --bin {}", b.display()));
    }
    if let Ok(b) = std::env::var(crate::colony_run::BREAK_VAR) {
        report.reproduce = format!("{}={b} {}", crate::colony_run::BREAK_VAR, report.reproduce);
    }
    report.schedule = sc.expand(seed);
    report.checked = sc.invariants.check.clone();
    progress.line(format!(
        "scenario {} seed {seed}: {} fault event(s)",
        sc.name,
        report.schedule.len()
    ));
    let started = std::time::Instant::now();
    match crate::bench_colony::opengrid_bin(colony.bin.as_deref()) {
        Err(e) => report.error = Some(format!("cannot run against real nodes: {e}")),
        Ok(bin) => {
            let opts = crate::colony_run::RunOpts {
                bin,
                keep: colony.keep,
            };
            crate::colony_run::run(&sc, seed, &opts, &mut report, progress).await;
        }
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

fn print_report(r: &Report, json: bool) {
    if json {
        println!("{}", r.to_json());
    } else {
        println!("{}", r.to_human());
    }
}

async fn bench_cmd(a: BenchArgs, progress: &Progress) -> Result<i32, ChaosError> {
    let exe = bench::self_exe()?;
    match a.kind {
        BenchKind::Checkpoint => {
            let mut code = EXIT_PASS;
            let (runs, rounds) = a.links.runs();
            let each = a.count.unwrap_or(2000).div_ceil(rounds);
            let mut done: Vec<bench::CheckpointResult> = Vec::new();
            for plaintext in runs {
                done.push(bench::checkpoint(&exe, each, a.state_bytes, plaintext, progress).await?);
            }
            for links in ["plaintext", "tls"] {
                let mine = done.iter().filter(|r| r.links == links).cloned().collect();
                if let Some(r) = bench::pool_checkpoint(mine) {
                    println!("{}", serde_json::to_string(&r).unwrap_or_default());
                    if r.lost != 0 || r.duplicated != 0 {
                        code = crate::report::EXIT_VIOLATION;
                    }
                }
            }
            Ok(code)
        }
        BenchKind::Handover if !a.colony.replica_servers && a.colony.handler.is_some() => {
            let (runs, rounds) = a
                .colony
                .handler
                .unwrap_or(crate::bench_colony::HandlerArg::Both)
                .runs();
            let each = a.count.unwrap_or(200).div_ceil(rounds);
            let done =
                crate::bench_colony::handover_handlers(&a.colony, each, &runs, progress).await?;
            let pool = |handler: &str| {
                crate::bench_colony::pool_colony_handover(
                    done.iter()
                        .filter(|r| r.handler == handler)
                        .cloned()
                        .collect(),
                )
            };
            let native = pool("native");
            let mut wasm = pool("wasm");
            if let (Some(n), Some(w)) = (&native, &mut wasm) {
                crate::bench_colony::compare_handlers(n, w);
                progress.line(format!(
                    "wasm vs native blackout: p50 {} vs {} µs ({}x), p99 {} vs {} µs ({}x)",
                    w.p50_us,
                    n.p50_us,
                    w.ratio_p50.unwrap_or(0.0),
                    w.p99_us,
                    n.p99_us,
                    w.ratio_p99.unwrap_or(0.0)
                ));
            }
            let mut code = EXIT_PASS;
            for r in native.iter().chain(wasm.iter()) {
                println!("{}", serde_json::to_string(r).unwrap_or_default());
                if r.lost != 0 || r.duplicated != 0 || r.client_errors != 0 {
                    code = crate::report::EXIT_VIOLATION;
                }
            }
            Ok(code)
        }
        BenchKind::Agents => {
            let r = crate::bench_colony::agents(&a.colony, a.count.unwrap_or(10), progress).await?;
            println!("{}", serde_json::to_string(&r).unwrap_or_default());
            Ok(EXIT_PASS)
        }
        BenchKind::Handover if !a.colony.replica_servers => {
            let (runs, rounds) = a.colony.security.runs();
            let each = a.count.unwrap_or(1000).div_ceil(rounds);
            let mut done = Vec::new();
            for off in runs {
                done.extend(
                    crate::bench_colony::handover(
                        &a.colony,
                        each,
                        &[4 << 10, 64 << 10, 1 << 20],
                        off,
                        progress,
                    )
                    .await?,
                );
            }
            let mut code = EXIT_PASS;
            for security in ["off", "on"] {
                for size in ["4KiB", "64KiB", "1MiB"] {
                    let name = format!("handover_blackout_{size}");
                    let mine = done
                        .iter()
                        .filter(|r| r.security == security && r.name == name)
                        .cloned()
                        .collect();
                    if let Some(r) = crate::bench_colony::pool_colony_handover(mine) {
                        println!("{}", serde_json::to_string(&r).unwrap_or_default());
                        if r.lost != 0 || r.duplicated != 0 || r.client_errors != 0 {
                            code = crate::report::EXIT_VIOLATION;
                        }
                    }
                }
            }
            Ok(code)
        }
        BenchKind::Api if a.colony.handler.is_some() => {
            if a.colony.security == crate::bench_colony::SecurityArg::Both {
                return Err(ChaosError::Bench(bench::BenchError::Failed(
                    "bench api: --handler takes --security on or off, not both".into(),
                )));
            }
            let (runs, rounds) = a
                .colony
                .handler
                .unwrap_or(crate::bench_colony::HandlerArg::Both)
                .runs();
            let each = a.count.unwrap_or(1000).div_ceil(rounds);
            let done = crate::bench_colony::api_handlers(&a.colony, each, &runs, progress).await?;
            let pool = |handler: &str| {
                crate::bench_colony::pool_api(
                    done.iter()
                        .filter(|r| r.handler == handler)
                        .cloned()
                        .collect(),
                )
            };
            let native = pool("native");
            let mut wasm = pool("wasm");
            if let (Some(n), Some(w)) = (&native, &mut wasm) {
                crate::bench_colony::compare_api_handlers(n, w);
                progress.line(format!(
                    "wasm vs native inputs: {} vs {}/s (cost {}x), node CPU {:?} vs {:?} µs per input ({:?}x), p50 {} vs {} µs ({}x), p99 {} vs {} µs ({}x)",
                    w.inputs_per_s,
                    n.inputs_per_s,
                    w.cost_ratio.unwrap_or(0.0),
                    w.node_cpu_us_per_input,
                    n.node_cpu_us_per_input,
                    w.cpu_ratio,
                    w.input_p50_us,
                    n.input_p50_us,
                    w.ratio_p50.unwrap_or(0.0),
                    w.input_p99_us,
                    n.input_p99_us,
                    w.ratio_p99.unwrap_or(0.0)
                ));
            }
            let mut code = EXIT_PASS;
            for r in native.iter().chain(wasm.iter()) {
                println!("{}", serde_json::to_string(r).unwrap_or_default());
                if r.lost != 0 || r.duplicated != 0 {
                    code = crate::report::EXIT_VIOLATION;
                }
            }
            Ok(code)
        }
        BenchKind::Api => {
            let (runs, rounds) = a.colony.security.runs();
            let each = a.count.unwrap_or(1000).div_ceil(rounds);
            let mut done = Vec::new();
            for off in runs {
                done.push(crate::bench_colony::api(&a.colony, each, off, progress).await?);
            }
            let mut code = EXIT_PASS;
            for security in ["off", "on"] {
                let mine = done
                    .iter()
                    .filter(|r| r.security == security)
                    .cloned()
                    .collect();
                if let Some(r) = crate::bench_colony::pool_api(mine) {
                    println!("{}", serde_json::to_string(&r).unwrap_or_default());
                    if r.lost != 0 || r.duplicated != 0 {
                        code = crate::report::EXIT_VIOLATION;
                    }
                }
            }
            Ok(code)
        }
        BenchKind::RcFailover => {
            let r = crate::bench_colony::rc_failover(&a.colony, a.count.unwrap_or(20), progress)
                .await?;
            println!("{}", serde_json::to_string(&r).unwrap_or_default());
            Ok(if r.failed_inputs == 0 && r.wrong_answers == 0 {
                EXIT_PASS
            } else {
                crate::report::EXIT_VIOLATION
            })
        }
        BenchKind::RcScale => {
            let r = crate::bench_colony::rc_scale(
                &a.colony,
                &a.rc_scale,
                a.count.unwrap_or(500),
                progress,
            )
            .await?;
            println!("{}", serde_json::to_string(&r).unwrap_or_default());
            Ok(if r.false_downings == 0 {
                EXIT_PASS
            } else {
                crate::report::EXIT_VIOLATION
            })
        }
        BenchKind::Failover => {
            let r =
                crate::bench_colony::failover(&a.colony, a.count.unwrap_or(1000), progress).await?;
            println!("{}", serde_json::to_string(&r).unwrap_or_default());
            Ok(
                if r.lost == 0 && r.duplicated == 0 && r.active_twice == 0 && r.not_recovered == 0 {
                    EXIT_PASS
                } else {
                    crate::report::EXIT_VIOLATION
                },
            )
        }
        BenchKind::Handover => {
            let mut code = EXIT_PASS;
            let (runs, rounds) = a.links.runs();
            let each = a.count.unwrap_or(200).div_ceil(rounds);
            let mut done: Vec<bench::HandoverResult> = Vec::new();
            for plaintext in runs {
                done.extend(
                    bench::handover(
                        &exe,
                        each,
                        &[4 << 10, 64 << 10, 1 << 20],
                        plaintext,
                        progress,
                    )
                    .await?,
                );
            }
            for links in ["plaintext", "tls"] {
                for size in ["4KiB", "64KiB", "1MiB"] {
                    let name = format!("handover_blackout_{size}");
                    let mine = done
                        .iter()
                        .filter(|r| r.links == links && r.name == name)
                        .cloned()
                        .collect();
                    if let Some(r) = bench::pool_handover(mine) {
                        println!("{}", serde_json::to_string(&r).unwrap_or_default());
                        if r.lost != 0 || r.duplicated != 0 {
                            code = crate::report::EXIT_VIOLATION;
                        }
                    }
                }
            }
            Ok(code)
        }
        BenchKind::Isolation => {
            let cfg = crate::isolation::IsolationConfig {
                probes: a.count.unwrap_or(1000).clamp(1, 1_000_000),
                ..Default::default()
            };
            let rs = crate::isolation::isolation(&cfg, progress).await?;
            let mut code = EXIT_PASS;
            for r in rs {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
                if r.declared_dead || r.failed > 0 {
                    code = crate::report::EXIT_VIOLATION;
                }
            }
            Ok(code)
        }
        BenchKind::Settlement => {
            let r = crate::bench_settlement::settlement(
                &exe,
                a.count.unwrap_or(100_000),
                &a.settlement,
                progress,
            )
            .await?;
            if a.json {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                print!("{}", crate::bench_settlement::human(&r));
            }
            Ok(
                if r.lost == 0 && r.duplicated == 0 && r.replicas_agree && r.totals_exact {
                    EXIT_PASS
                } else {
                    crate::report::EXIT_VIOLATION
                },
            )
        }
    }
}

/// Applies one stdin command to a proxy; returns the line to print.
pub fn proxy_command(h: &ProxyHandle, line: &str) -> Result<String, String> {
    let w: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| -> Result<f64, String> {
        w.get(i)
            .ok_or_else(|| format!("missing argument {i}"))?
            .parse::<f64>()
            .map_err(|e| format!("argument {i}: {e}"))
    };
    match w.as_slice() {
        [] => Ok(String::new()),
        ["partition", m] => {
            h.partition(match *m {
                "refuse" => PartitionMode::Refuse,
                "stall" => PartitionMode::Stall,
                _ => return Err("partition refuse|stall".into()),
            });
            Ok(format!("faults {:?}", h.faults()))
        }
        ["latency", ..] => {
            let l = num(1)?;
            let j = if w.len() > 2 { num(2)? } else { 0.0 };
            if !(l >= 0.0 && j >= 0.0 && l < 3.6e6 && j < 3.6e6) {
                return Err("latency <ms> [jitter-ms], 0 ≤ ms < 3600000".into());
            }
            h.latency(
                Duration::from_secs_f64(l / 1000.0),
                Duration::from_secs_f64(j / 1000.0),
            );
            Ok(format!("faults {:?}", h.faults()))
        }
        ["loss", _, m] => {
            let p = num(1)?;
            if !(0.0..=1.0).contains(&p) {
                return Err("loss <p in 0..=1> drop|stall".into());
            }
            h.loss(
                p,
                match *m {
                    "drop" => LossMode::Drop,
                    "stall" => LossMode::Stall,
                    _ => return Err("loss <p> drop|stall".into()),
                },
            );
            Ok(format!("faults {:?}", h.faults()))
        }
        ["bandwidth", "off"] => {
            h.bandwidth(None);
            Ok(format!("faults {:?}", h.faults()))
        }
        ["bandwidth", _] => {
            let b = num(1)?;
            if !(1.0..1e13).contains(&b) {
                return Err("bandwidth <bytes/s ≥ 1>|off".into());
            }
            h.bandwidth(Some(b as u64));
            Ok(format!("faults {:?}", h.faults()))
        }
        ["heal"] => {
            h.heal();
            Ok("healed".into())
        }
        ["stats"] => Ok(serde_json::to_string(&h.stats()).unwrap_or_default()),
        _ => Err(format!(
            "unknown command {line:?}; use partition refuse|stall, latency <ms> [jitter-ms], \
             loss <p> drop|stall, bandwidth <bytes/s>|off, heal, stats"
        )),
    }
}

async fn proxy(a: ProxyArgs, progress: &Progress) -> Result<i32, ChaosError> {
    let mut cfg = ProxyConfig::new(a.target, a.seed);
    cfg.listen = a.listen;
    let p = Proxy::start(cfg).await?;
    let h = p.handle();
    if let Some(l) = a.latency_ms {
        h.latency(Duration::from_millis(l), Duration::from_millis(a.jitter_ms));
    }
    if let Some(pr) = a.loss {
        h.loss(
            pr,
            match a.loss_mode {
                LossArg::Drop => LossMode::Drop,
                LossArg::Stall => LossMode::Stall,
            },
        );
    }
    if let Some(b) = a.bandwidth {
        h.bandwidth(Some(b));
    }
    if let Some(m) = a.partition {
        h.partition(match m {
            PartitionArg::Refuse => PartitionMode::Refuse,
            PartitionArg::Stall => PartitionMode::Stall,
        });
    }
    println!("listening {} -> {}", p.addr(), a.target);
    progress.line(format!("faults {:?}", h.faults()));
    // stdin commands on a blocking thread; EOF leaves the proxy running until Ctrl-C.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    let mut stdin_open = true;
    loop {
        tokio::select! {
            line = rx.recv(), if stdin_open => match line {
                Some(l) => match proxy_command(&h, &l) {
                    Ok(s) if s.is_empty() => {}
                    Ok(s) => println!("{s}"),
                    Err(e) => println!("error: {e}"),
                },
                None => stdin_open = false,
            },
            _ = tokio::signal::ctrl_c() => {
                println!("{}", serde_json::to_string(&h.stats()).unwrap_or_default());
                return Ok(EXIT_PASS);
            }
        }
    }
}

async fn spawn_children(n: usize, pid_file: &Path) -> Result<i32, ChaosError> {
    if n > 64 {
        return Err(ChaosError::Usage("at most 64 children".into()));
    }
    let mut l = launcher::Launcher::new()?;
    let mut pids = String::new();
    for i in 0..n {
        let pid = l.spawn(
            launcher::ProcSpec::new(format!("child-{i}"), "/bin/sh")
                .args(["-c", "exec sleep 3600"]),
        )?;
        pids.push_str(&format!("{pid}\n"));
    }
    let tmp = pid_file.with_extension("tmp");
    std::fs::write(&tmp, pids)?;
    std::fs::rename(&tmp, pid_file)?;
    // Wait for Ctrl-C/SIGTERM (handled by install_signal_cleanup in the binary), bounded.
    tokio::time::sleep(Duration::from_secs(600)).await;
    drop(l);
    Ok(EXIT_ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn proxy_commands_apply_and_bad_ones_are_refused() {
        let p = Proxy::start(ProxyConfig::new("127.0.0.1:9".parse().unwrap(), 1))
            .await
            .unwrap();
        let h = p.handle();
        proxy_command(&h, "latency 20 5").unwrap();
        assert_eq!(h.faults().latency, Duration::from_millis(20));
        assert_eq!(h.faults().jitter, Duration::from_millis(5));
        proxy_command(&h, "loss 0.25 stall").unwrap();
        assert_eq!(h.faults().loss.unwrap().mode, LossMode::Stall);
        proxy_command(&h, "bandwidth 1000").unwrap();
        assert_eq!(h.faults().bandwidth, Some(1000));
        proxy_command(&h, "partition stall").unwrap();
        assert_eq!(h.faults().partition, Some(PartitionMode::Stall));
        assert!(proxy_command(&h, "stats").unwrap().contains("bytes_up"));
        proxy_command(&h, "heal").unwrap();
        assert!(h.faults().is_healed());
        for bad in [
            "loss 2 drop",
            "loss x drop",
            "latency -1",
            "partition up",
            "bandwidth 0",
            "frob",
        ] {
            assert!(proxy_command(&h, bad).is_err(), "{bad}");
        }
        assert!(h.faults().is_healed());
    }
}

//! Starting the colony of one run on 127.0.0.1: the RC, the ledger replicas, one [`Proxy`] per
//! node in front of the RC's control-plane port, the nodes (each with its fault control dir and
//! fixed ports, the same after a restart, so the fuzzer knows every listening port), and the
//! wait until every node is a live member.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ledger::{register_keys, spawn_ledgers};
use super::observe::{members, wait_status};
use crate::fuzz::{Port as FuzzPort, PortKind};
use crate::launcher::{free_port, LaunchError, Launcher, ProcSpec};
use crate::proxy::{Proxy, ProxyConfig, ProxyHandle};
use crate::report::Progress;
use crate::scenario::{NodeSpec, Scenario};

/// The colony secret of every process of a run.
const SECRET: &str = "opengrid-chaos-colony";
/// Price per input of every node when the scenario has ledger replicas (micro-units).
const PRICE_MICROS: u64 = 1_000;

/// The colony of one run: where its processes listen, and the levers the faults pull.
pub(super) struct Colony {
    /// The RC's process name.
    pub rc_name: String,
    /// The RC's client API base URL.
    pub rc_api: String,
    /// The harness's HTTP client (no redirects, 5 s timeout).
    pub http: reqwest::Client,
    /// Ledger replica name → its Raft/client address.
    pub ledgers: BTreeMap<String, String>,
    /// Node name → the proxy between that node and the RC's control-plane port.
    pub proxies: BTreeMap<String, (Proxy, ProxyHandle)>,
    /// Every listening port of every process (the `fuzz` fault's targets).
    pub fuzz_ports: Vec<FuzzPort>,
    /// Node name → its fault control dir (`[faults] control_dir`).
    pub controls: BTreeMap<String, PathBuf>,
    /// Process name → jurisdiction (the RC: none), for `jurisdiction`.
    pub node_juris: BTreeMap<String, String>,
}

/// Hands out every port once: [`free_port`] may return a port it returned before, while the
/// process meant to bind it has not yet.
#[derive(Default)]
struct Ports {
    used: BTreeSet<u16>,
}

impl Ports {
    fn next(&mut self) -> Result<u16, String> {
        for _ in 0..100 {
            let p = free_port().map_err(|e| e.to_string())?;
            if self.used.insert(p) {
                return Ok(p);
            }
        }
        Err("no distinct free port in 100 tries".into())
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Colony {
    /// Starts the RC, the ledger replicas and the nodes of `sc`, waits until every node is an
    /// alive member, and registers the keys with the ledger when there is one.
    pub async fn start(
        sc: &Scenario,
        seed: u64,
        bin: &Path,
        launcher: &mut Launcher,
        progress: &Progress,
    ) -> Result<Colony, String> {
        let mut ports = Ports::default();
        let rc = &sc.cluster.rc[0];
        let (rc_api_port, rc_cluster_port) = (ports.next()?, ports.next()?);
        // Ledger replicas: fixed addresses, the RC settles to them every second.
        let mut ledgers: BTreeMap<String, String> = BTreeMap::new();
        for l in &sc.cluster.ledger {
            ledgers.insert(l.name.clone(), format!("127.0.0.1:{}", ports.next()?));
        }
        let rc_cfg = rc_config(
            sc,
            &launcher.data_dir(&rc.name).map_err(le)?,
            rc_api_port,
            rc_cluster_port,
            &ledgers,
        );
        spawn(launcher, bin, &rc.name, "rc", &rc_cfg)?;
        spawn_ledgers(launcher, bin, &ledgers)?;
        let mut colony = Colony {
            rc_name: rc.name.clone(),
            rc_api: format!("http://127.0.0.1:{rc_api_port}"),
            // The harness acts as the colony's operator (the RC's own key).
            http: opengrid_cluster::common::token::operator_http(
                &launcher.data_dir(&rc.name).map_err(le)?,
                Duration::from_secs(5),
            )
            .map_err(|e| e.to_string())?,
            fuzz_ports: ledgers
                .iter()
                .filter_map(|(name, addr)| {
                    Some(FuzzPort {
                        process: name.clone(),
                        kind: PortKind::Raft,
                        addr: addr.parse().ok()?,
                    })
                })
                .collect(),
            ledgers,
            proxies: BTreeMap::new(),
            controls: BTreeMap::new(),
            node_juris: sc
                .cluster
                .node
                .iter()
                .map(|n| (n.name.clone(), n.jurisdiction.clone()))
                .chain([(rc.name.clone(), String::new())])
                .collect(),
        };
        colony.fuzz_ports.extend([
            FuzzPort {
                process: rc.name.clone(),
                kind: PortKind::Http,
                addr: local(rc_api_port),
            },
            FuzzPort {
                process: rc.name.clone(),
                kind: PortKind::Control,
                addr: local(rc_cluster_port),
            },
        ]);
        colony
            .start_nodes(sc, seed, bin, launcher, &mut ports, local(rc_cluster_port))
            .await?;
        let want = sc.cluster.node.len();
        wait_status(
            &colony.http,
            &colony.rc_api,
            launcher,
            Duration::from_secs(60),
            |st| members(st).iter().filter(|m| m["state"] == "alive").count() == want,
        )
        .await
        .map_err(|w| format!("colony did not come up: {w}"))?;
        progress.line(format!(
            "colony up: {} and {want} node(s) in {}",
            rc.name,
            launcher.root().display()
        ));
        if !colony.ledgers.is_empty() {
            register_keys(sc, launcher, bin, &colony.ledgers).await?;
            progress.line(format!(
                "ledger: {} replica(s) at {}; the RC's and {want} node key(s) registered",
                colony.ledgers.len(),
                colony
                    .ledgers
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        Ok(colony)
    }

    /// One proxy per node in front of the RC's control-plane port, then the nodes behind them.
    async fn start_nodes(
        &mut self,
        sc: &Scenario,
        seed: u64,
        bin: &Path,
        launcher: &mut Launcher,
        ports: &mut Ports,
        rc_cluster: SocketAddr,
    ) -> Result<(), String> {
        // Every proxy first: they bind port 0, and must not take a port handed to a node below
        // before that node has bound it.
        let mut started = Vec::new();
        for (i, n) in sc.cluster.node.iter().enumerate() {
            let p = Proxy::start(ProxyConfig::new(
                rc_cluster,
                seed.wrapping_add(i as u64 + 1),
            ))
            .await
            .map_err(|e| format!("proxy for {}: {e}", n.name))?;
            started.push(p);
        }
        for (n, p) in sc.cluster.node.iter().zip(started) {
            let h = p.handle();
            // The node's fault control dir (test hook; opengrid_cluster::node::faults).
            let control = launcher.root().join(format!("{}.faults", n.name));
            std::fs::create_dir_all(&control).map_err(|e| format!("{}: {e}", control.display()))?;
            let listen = NodePorts {
                api: ports.next()?,
                cluster: ports.next()?,
                migration: ports.next()?,
            };
            let cfg = node_config(
                sc,
                n,
                &launcher.data_dir(&n.name).map_err(le)?,
                &listen,
                p.addr(),
                &control,
                !self.ledgers.is_empty(),
            );
            for (kind, port) in [
                (PortKind::Http, listen.api),
                (PortKind::Control, listen.cluster),
                (PortKind::Migration, listen.migration),
            ] {
                self.fuzz_ports.push(FuzzPort {
                    process: n.name.clone(),
                    kind,
                    addr: local(port),
                });
            }
            self.controls.insert(n.name.clone(), control);
            spawn(launcher, bin, &n.name, "node", &cfg)?;
            self.proxies.insert(n.name.clone(), (p, h));
        }
        Ok(())
    }
}

fn le(e: LaunchError) -> String {
    e.to_string()
}

/// The RC's config; with ledger replicas, its `[settlement]` points at them (1 s interval).
fn rc_config(
    sc: &Scenario,
    data_dir: &Path,
    api: u16,
    cluster: u16,
    ledgers: &BTreeMap<String, String>,
) -> String {
    let colony = &sc.cluster.colonies[0];
    let mut cfg = format!(
        "version = 1\ncolony = \"{colony}\"\ndata_dir = {data_dir:?}\napi_listen = \"127.0.0.1:{api}\"\ncluster_listen = \"127.0.0.1:{cluster}\"\ncolony_secret = \"{SECRET}\"\nplace_timeout = \"10s\"\n",
    );
    if !ledgers.is_empty() {
        let list: Vec<String> = ledgers.values().map(|a| format!("{a:?}")).collect();
        cfg.push_str(&format!(
            "[settlement]\nledger = [{}]\ninterval = \"1s\"\n",
            list.join(", ")
        ));
    }
    cfg
}

/// The fixed listening ports of one node.
struct NodePorts {
    api: u16,
    cluster: u16,
    migration: u16,
}

/// A node's config: its `rc_cluster` is its proxy, its `[faults] control_dir` the harness's
/// levers (allowed only with `dev = true`, which it sets); with ledger replicas it prices inputs
/// and sends receipts every 500 ms.
fn node_config(
    sc: &Scenario,
    n: &NodeSpec,
    data_dir: &Path,
    listen: &NodePorts,
    rc_link: SocketAddr,
    control: &Path,
    receipts: bool,
) -> String {
    let colony = &sc.cluster.colonies[0];
    let NodePorts {
        api,
        cluster,
        migration,
    } = listen;
    format!(
        "version = 1\ndev = true\nname = \"{}\"\ncolony = \"{colony}\"\ndata_dir = {data_dir:?}\njurisdiction = \"{}\"\napi_listen = \"127.0.0.1:{api}\"\ncluster_listen = \"127.0.0.1:{cluster}\"\nmigration_listen = \"127.0.0.1:{migration}\"\nrc_cluster = \"{rc_link}\"\ncolony_secret = \"{SECRET}\"\nfsync = false\ncapacity = {}\nprice_micros_per_input = {PRICE_MICROS}\n[hardware]\nmemory = \"128GiB\"\n[faults]\ncontrol_dir = {control:?}\n{}",
        n.name,
        n.jurisdiction,
        n.max_sessions,
        if receipts {
            "[receipts]\nwindow = \"500ms\"\n"
        } else {
            ""
        }
    )
}

fn spawn(
    launcher: &mut Launcher,
    bin: &Path,
    name: &str,
    role: &str,
    cfg: &str,
) -> Result<(), String> {
    let path = launcher.root().join(format!("{name}.toml"));
    std::fs::write(&path, cfg).map_err(|e| format!("{}: {e}", path.display()))?;
    launcher
        .spawn(
            ProcSpec::new(name, bin)
                .args([role, "--config", &path.display().to_string()])
                .env(
                    "RUST_LOG",
                    std::env::var("OPENGRID_CHAOS_NODE_LOG")
                        .unwrap_or_else(|_| "info,ractor_cluster=warn,ractor=warn".into()),
                ),
        )
        .map_err(|e| e.to_string())?;
    Ok(())
}

//! Starting the colony of one run on 127.0.0.1: the RC (or the colony's RC group, each replica
//! with its `[group]` section), the ledger replicas, one [`Proxy`] per (node, RC) pair in front of
//! that RC's control-plane port, the nodes (each with its fault control dir and fixed ports, the
//! same after a restart, so the fuzzer knows every listening port), and the wait until every node
//! is a live member.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use opengrid_cluster::common::identity::Identity;

use super::ledger::{register_keys, spawn_ledgers};
use super::observe::{members, wait_status};
use super::rc_group::{GroupView, RcGroup, RcReplica};
use crate::fuzz::{Port as FuzzPort, PortKind};
use crate::launcher::{free_port, LaunchError, Launcher, ProcSpec};
use crate::proxy::{Proxy, ProxyConfig, ProxyHandle};
use crate::report::Progress;
use crate::scenario::{NodeSpec, Scenario};

/// The colony secret of every process of a run.
const SECRET: &str = "opengrid-chaos-colony";
/// Price per input of every node when the scenario has ledger replicas (micro-units).
const PRICE_MICROS: u64 = 1_000;
/// The harness's operator key when the RC is a group (each replica has its own key; every RC
/// and node lists this one in `operators`). A single RC's own key serves instead.
const OPERATOR: &str = "colony-operator";

/// The colony of one run: where its processes listen, and the levers the faults pull.
pub(super) struct Colony {
    /// The colony's RC (one process or its RC group) and where its leader is.
    pub rc: RcGroup,
    /// The harness's HTTP client (no redirects, 5 s timeout), the colony's operator.
    pub http: reqwest::Client,
    /// Ledger replica name → its Raft/client address.
    pub ledgers: BTreeMap<String, String>,
    /// Node name → its links to the RCs, one per RC in group order.
    pub proxies: BTreeMap<String, Vec<RcLink>>,
    /// Every listening port of every process (the `fuzz` fault's targets).
    pub fuzz_ports: Vec<FuzzPort>,
    /// Node name → its fault control dir (`[faults] control_dir`).
    pub controls: BTreeMap<String, PathBuf>,
    /// Process name → jurisdiction (the RCs: none), for `jurisdiction`.
    pub node_juris: BTreeMap<String, String>,
}

/// The proxy between one node and one RC's control-plane port.
pub(super) struct RcLink {
    /// The RC's process name.
    pub rc: String,
    /// Kept alive for the run.
    _proxy: Proxy,
    /// Its fault levers.
    pub handle: ProxyHandle,
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

/// The fixed listening ports of one RC; `raft` only in a group.
struct RcPorts {
    api: u16,
    cluster: u16,
    raft: Option<u16>,
}

/// One replica's `[group]` section: its Raft id, its Raft port, and every replica's peer entry
/// (`<id>=<DID>@<address>`).
struct GroupSection {
    id: u64,
    listen: u16,
    peers: Vec<String>,
}

impl Colony {
    /// Starts the RC (or RC group), the ledger replicas and the nodes of `sc`, waits until every
    /// node is an alive member, and registers the keys with the ledger when there is one.
    pub async fn start(
        sc: &Scenario,
        seed: u64,
        bin: &Path,
        launcher: &mut Launcher,
        progress: &Progress,
    ) -> Result<Colony, String> {
        let mut ports = Ports::default();
        let rcs = sc.rc_group(&sc.cluster.colonies[0]);
        let group = rcs.len() > 1;
        let mut rc_ports = Vec::new();
        for _ in &rcs {
            rc_ports.push(RcPorts {
                api: ports.next()?,
                cluster: ports.next()?,
                raft: if group { Some(ports.next()?) } else { None },
            });
        }
        // Ledger replicas: fixed addresses, the RC settles to them every second.
        let mut ledgers: BTreeMap<String, String> = BTreeMap::new();
        for l in &sc.cluster.ledger {
            ledgers.insert(l.name.clone(), format!("127.0.0.1:{}", ports.next()?));
        }
        // A group: every replica's key is made first (each peer entry names its DID), and the
        // harness's own operator key, listed by every RC and node.
        let (peers, operators) = if group {
            let mut peers = Vec::new();
            for (i, (r, p)) in rcs.iter().zip(&rc_ports).enumerate() {
                let did = identity_did(&launcher.data_dir(&r.name).map_err(le)?)
                    .map_err(|e| format!("RC {} key: {e}", r.name))?;
                peers.push(format!(
                    "{}={did}@127.0.0.1:{}",
                    i + 1,
                    p.raft.unwrap_or_default()
                ));
            }
            let op = identity_did(&launcher.data_dir(OPERATOR).map_err(le)?)
                .map_err(|e| format!("operator key: {e}"))?;
            (peers, vec![op])
        } else {
            (Vec::new(), Vec::new())
        };
        for (i, (r, p)) in rcs.iter().zip(&rc_ports).enumerate() {
            let section = p.raft.map(|listen| GroupSection {
                id: i as u64 + 1,
                listen,
                peers: peers.clone(),
            });
            let cfg = rc_config(
                sc,
                &launcher.data_dir(&r.name).map_err(le)?,
                p,
                &ledgers,
                &operators,
                section.as_ref(),
            );
            spawn(launcher, bin, &r.name, "rc", &cfg)?;
        }
        spawn_ledgers(launcher, bin, &ledgers)?;
        // The harness acts as the colony's operator: a single RC's own key, or the group's
        // operator key.
        let operator_dir = launcher
            .data_dir(if group { OPERATOR } else { &rcs[0].name })
            .map_err(le)?;
        let http =
            opengrid_cluster::common::token::operator_http(&operator_dir, Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
        let replicas = rcs
            .iter()
            .zip(&rc_ports)
            .map(|(r, p)| RcReplica {
                name: r.name.clone(),
                api: format!("http://127.0.0.1:{}", p.api),
            })
            .collect();
        let mut colony = Colony {
            rc: RcGroup::new(http.clone(), replicas),
            http,
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
                .chain(rcs.iter().map(|r| (r.name.clone(), String::new())))
                .collect(),
        };
        for (r, p) in rcs.iter().zip(&rc_ports) {
            let raft = p.raft.map(|port| (PortKind::Raft, port));
            for (kind, port) in [(PortKind::Http, p.api), (PortKind::Control, p.cluster)]
                .into_iter()
                .chain(raft)
            {
                colony.fuzz_ports.push(FuzzPort {
                    process: r.name.clone(),
                    kind,
                    addr: local(port),
                });
            }
        }
        let rc_links: Vec<(String, SocketAddr)> = rcs
            .iter()
            .zip(&rc_ports)
            .map(|(r, p)| (r.name.clone(), local(p.cluster)))
            .collect();
        colony
            .start_nodes(sc, seed, bin, launcher, &mut ports, &rc_links, &operators)
            .await?;
        let want = sc.cluster.node.len();
        let st = wait_status(&colony.rc, launcher, Duration::from_secs(60), |st| {
            members(st).iter().filter(|m| m["state"] == "alive").count() == want
        })
        .await
        .map_err(|w| format!("colony did not come up: {w}"))?;
        let rc_line = if group {
            format!(
                "RC group {} (leader {})",
                rcs.iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                GroupView::of(&st)
                    .and_then(|v| colony.rc.name_of(v.id))
                    .unwrap_or("?")
            )
        } else {
            rcs[0].name.clone()
        };
        progress.line(format!(
            "colony up: {rc_line} and {want} node(s) in {}",
            launcher.root().display()
        ));
        if !colony.ledgers.is_empty() {
            register_keys(sc, launcher, bin, &colony.ledgers).await?;
            progress.line(format!(
                "ledger: {} replica(s) at {}; the RC{} and {want} node key(s) registered",
                colony.ledgers.len(),
                colony
                    .ledgers
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(","),
                if group { "s'" } else { "'s" }
            ));
        }
        Ok(colony)
    }

    /// One proxy per (node, RC) pair in front of that RC's control-plane port, then the nodes
    /// behind them (each lists its proxies in `rc_cluster`, in group order).
    #[allow(clippy::too_many_arguments)]
    async fn start_nodes(
        &mut self,
        sc: &Scenario,
        seed: u64,
        bin: &Path,
        launcher: &mut Launcher,
        ports: &mut Ports,
        rc_links: &[(String, SocketAddr)],
        operators: &[String],
    ) -> Result<(), String> {
        // Every proxy first: they bind port 0, and must not take a port handed to a node below
        // before that node has bound it. Seeds: the first RC's links as with a single RC.
        let nodes = sc.cluster.node.len();
        let mut started: Vec<Vec<RcLink>> = Vec::new();
        for (i, n) in sc.cluster.node.iter().enumerate() {
            let mut links = Vec::new();
            for (j, (rc, addr)) in rc_links.iter().enumerate() {
                let p = Proxy::start(ProxyConfig::new(
                    *addr,
                    seed.wrapping_add((j * nodes + i) as u64 + 1),
                ))
                .await
                .map_err(|e| format!("proxy for {}<->{rc}: {e}", n.name))?;
                links.push(RcLink {
                    rc: rc.clone(),
                    handle: p.handle(),
                    _proxy: p,
                });
            }
            started.push(links);
        }
        for (n, links) in sc.cluster.node.iter().zip(started) {
            // The node's fault control dir (test hook; opengrid_cluster::node::faults).
            let control = launcher.root().join(format!("{}.faults", n.name));
            std::fs::create_dir_all(&control).map_err(|e| format!("{}: {e}", control.display()))?;
            let listen = NodePorts {
                api: ports.next()?,
                cluster: ports.next()?,
                migration: ports.next()?,
            };
            let via: Vec<SocketAddr> = links.iter().map(|l| l.handle.addr()).collect();
            let cfg = node_config(
                sc,
                n,
                &launcher.data_dir(&n.name).map_err(le)?,
                &listen,
                &NodeLinks {
                    rc_cluster: &via,
                    operators,
                },
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
            self.proxies.insert(n.name.clone(), links);
        }
        Ok(())
    }
}

/// The DID of the identity key in `dir` (created if missing), as the process using that data
/// dir will present it.
fn identity_did(dir: &Path) -> Result<String, String> {
    Ok(Identity::load_or_create(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .id()
        .did())
}

fn le(e: LaunchError) -> String {
    e.to_string()
}

/// An RC's config; with ledger replicas, its `[settlement]` points at them (1 s interval). A
/// replica of a group also gets `operators` (the harness's key) and its `[group]` section; a
/// single RC neither.
fn rc_config(
    sc: &Scenario,
    data_dir: &Path,
    ports: &RcPorts,
    ledgers: &BTreeMap<String, String>,
    operators: &[String],
    group: Option<&GroupSection>,
) -> String {
    let colony = &sc.cluster.colonies[0];
    let RcPorts { api, cluster, .. } = ports;
    let mut cfg = format!(
        "version = 1\ncolony = \"{colony}\"\ndata_dir = {data_dir:?}\napi_listen = \"127.0.0.1:{api}\"\ncluster_listen = \"127.0.0.1:{cluster}\"\ncolony_secret = \"{SECRET}\"\nplace_timeout = \"10s\"\n",
    );
    if !operators.is_empty() {
        cfg.push_str(&format!("operators = [{}]\n", quoted(operators)));
    }
    if !ledgers.is_empty() {
        let list: Vec<String> = ledgers.values().cloned().collect();
        cfg.push_str(&format!(
            "[settlement]\nledger = [{}]\ninterval = \"1s\"\n",
            quoted(&list)
        ));
    }
    if let Some(g) = group {
        cfg.push_str(&format!(
            "[group]\nid = {}\nlisten = \"127.0.0.1:{}\"\npeers = [{}]\n",
            g.id,
            g.listen,
            quoted(&g.peers)
        ));
    }
    cfg
}

/// `"a", "b"`: strings as the items of a TOML array.
fn quoted(items: &[String]) -> String {
    items
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The fixed listening ports of one node.
struct NodePorts {
    api: u16,
    cluster: u16,
    migration: u16,
}

/// How a node reaches its RC: its proxy per RC (one: a single RC), and the operator keys it
/// honours besides its RC's (an RC group's harness key).
struct NodeLinks<'a> {
    rc_cluster: &'a [SocketAddr],
    operators: &'a [String],
}

/// A node's config: its `rc_cluster` lists its proxies (one per RC, comma separated), its
/// `[faults] control_dir` the harness's levers (allowed only with `dev = true`, which it sets);
/// with ledger replicas it prices inputs and sends receipts every 500 ms.
fn node_config(
    sc: &Scenario,
    n: &NodeSpec,
    data_dir: &Path,
    listen: &NodePorts,
    links: &NodeLinks<'_>,
    control: &Path,
    receipts: bool,
) -> String {
    let colony = &sc.cluster.colonies[0];
    let NodePorts {
        api,
        cluster,
        migration,
    } = listen;
    let rc_cluster = links
        .rc_cluster
        .iter()
        .map(SocketAddr::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let operators = if links.operators.is_empty() {
        String::new()
    } else {
        format!("operators = [{}]\n", quoted(links.operators))
    };
    format!(
        "version = 1\ndev = true\nname = \"{}\"\ncolony = \"{colony}\"\ndata_dir = {data_dir:?}\njurisdiction = \"{}\"\napi_listen = \"127.0.0.1:{api}\"\ncluster_listen = \"127.0.0.1:{cluster}\"\nmigration_listen = \"127.0.0.1:{migration}\"\nrc_cluster = \"{rc_cluster}\"\ncolony_secret = \"{SECRET}\"\n{operators}fsync = false\ncapacity = {}\nprice_micros_per_input = {PRICE_MICROS}\n[hardware]\nmemory = \"128GiB\"\n[faults]\ncontrol_dir = {control:?}\n{}",
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
                    std::env::var("OPENGRID_CHAOS_NODE_LOG").unwrap_or_else(|_| {
                        "info,ractor_cluster=warn,ractor=warn,openraft=warn".into()
                    }),
                ),
        )
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(rcs: usize) -> Scenario {
        let rc: String = (1..=rcs)
            .map(|i| format!("[[cluster.rc]]\nname = \"rc-eu-{i}\"\ncolony = \"eu\"\n"))
            .collect();
        Scenario::from_toml_str(&format!(
            "version = 1\nname = \"g\"\nseed = 1\nduration = \"10s\"\n[cluster]\ncolonies = [\"eu\"]\n{rc}[[cluster.node]]\nname = \"n1\"\ncolony = \"eu\"\njurisdiction = \"DE\"\nmax_sessions = 5\n[invariants]\ncheck = [\"health\"]\n"
        ))
        .unwrap()
    }

    fn ledgers() -> BTreeMap<String, String> {
        [("ledger-1".to_string(), "127.0.0.1:7700".to_string())].into()
    }

    const SINGLE_RC: &str = "version = 1\ncolony = \"eu\"\ndata_dir = \"/run/rc-eu-1/data\"\napi_listen = \"127.0.0.1:7601\"\ncluster_listen = \"127.0.0.1:7602\"\ncolony_secret = \"opengrid-chaos-colony\"\nplace_timeout = \"10s\"\n[settlement]\nledger = [\"127.0.0.1:7700\"]\ninterval = \"1s\"\n";

    #[test]
    fn a_single_rc_config_has_no_group() {
        let ports = RcPorts {
            api: 7601,
            cluster: 7602,
            raft: None,
        };
        let cfg = rc_config(
            &scenario(1),
            Path::new("/run/rc-eu-1/data"),
            &ports,
            &ledgers(),
            &[],
            None,
        );
        assert_eq!(cfg, SINGLE_RC);
    }

    #[test]
    fn a_group_replica_gets_its_group_section_and_the_operator() {
        let peers: Vec<String> = (1..=3)
            .map(|i| format!("{i}=did:mycel:z{i}@127.0.0.1:761{i}"))
            .collect();
        let ports = RcPorts {
            api: 7601,
            cluster: 7602,
            raft: Some(7612),
        };
        let cfg = rc_config(
            &scenario(3),
            Path::new("/run/rc-eu-1/data"),
            &ports,
            &ledgers(),
            &["did:mycel:zop".to_string()],
            Some(&GroupSection {
                id: 2,
                listen: 7612,
                peers: peers.clone(),
            }),
        );
        let t: toml::Table = cfg.parse().unwrap_or_else(|e| panic!("{e}\n{cfg}"));
        assert_eq!(t["colony"].as_str(), Some("eu"));
        assert_eq!(
            t["operators"].as_array().unwrap()[0].as_str(),
            Some("did:mycel:zop")
        );
        assert_eq!(
            t["settlement"]["ledger"].as_array().unwrap()[0].as_str(),
            Some("127.0.0.1:7700")
        );
        let g = t["group"].as_table().unwrap();
        assert_eq!(g["id"].as_integer(), Some(2));
        assert_eq!(g["listen"].as_str(), Some("127.0.0.1:7612"));
        let got: Vec<&str> = g["peers"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p.as_str())
            .collect();
        assert_eq!(got, peers);
        assert_eq!(got[0], "1=did:mycel:z1@127.0.0.1:7611");
    }

    #[test]
    fn the_cluster_reads_a_group_replica_and_its_node_as_configured() {
        use opengrid_cluster::node::config::NodeConfig;
        use opengrid_cluster::rc::config::RcConfig;
        let dids: Vec<String> = (0..4).map(|_| Identity::generate().id().did()).collect();
        let peers: Vec<String> = (1..=3)
            .map(|i| format!("{i}={}@127.0.0.1:761{i}", dids[i - 1]))
            .collect();
        let ops = [dids[3].clone()];
        let cfg = rc_config(
            &scenario(3),
            Path::new("/run/rc-eu-3/data"),
            &RcPorts {
                api: 7603,
                cluster: 7623,
                raft: Some(7613),
            },
            &ledgers(),
            &ops,
            Some(&GroupSection {
                id: 3,
                listen: 7613,
                peers: peers.clone(),
            }),
        );
        let rc = RcConfig::from_toml_with_env(&cfg, &[]).unwrap_or_else(|e| panic!("{e}\n{cfg}"));
        assert_eq!(rc.group.id, 3);
        assert_eq!(rc.group.listen, "127.0.0.1:7613");
        assert_eq!(rc.group.peers, peers);
        assert_eq!(rc.operators, ops);
        let links = [local(9001), local(9002), local(9003)];
        let cfg = node(
            &scenario(3),
            &NodeLinks {
                rc_cluster: &links,
                operators: &ops,
            },
        );
        let n = NodeConfig::from_toml_with_env(&cfg, &[]).unwrap_or_else(|e| panic!("{e}\n{cfg}"));
        assert_eq!(
            n.rc_addresses(),
            ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
        );
        assert_eq!(n.operators, ops);
    }

    const SINGLE_NODE: &str = "version = 1\ndev = true\nname = \"n1\"\ncolony = \"eu\"\ndata_dir = \"/run/n1/data\"\njurisdiction = \"DE\"\napi_listen = \"127.0.0.1:7801\"\ncluster_listen = \"127.0.0.1:7802\"\nmigration_listen = \"127.0.0.1:7803\"\nrc_cluster = \"127.0.0.1:9001\"\ncolony_secret = \"opengrid-chaos-colony\"\nfsync = false\ncapacity = 5\nprice_micros_per_input = 1000\n[hardware]\nmemory = \"128GiB\"\n[faults]\ncontrol_dir = \"/run/n1.faults\"\n[receipts]\nwindow = \"500ms\"\n";

    fn node(sc: &Scenario, links: &NodeLinks<'_>) -> String {
        node_config(
            sc,
            &sc.cluster.node[0],
            Path::new("/run/n1/data"),
            &NodePorts {
                api: 7801,
                cluster: 7802,
                migration: 7803,
            },
            links,
            Path::new("/run/n1.faults"),
            true,
        )
    }

    #[test]
    fn a_node_lists_one_proxy_per_rc() {
        let one = [local(9001)];
        let single = node(
            &scenario(1),
            &NodeLinks {
                rc_cluster: &one,
                operators: &[],
            },
        );
        assert_eq!(single, SINGLE_NODE);
        let three = [local(9001), local(9002), local(9003)];
        let ops = ["did:mycel:zop".to_string()];
        let cfg = node(
            &scenario(3),
            &NodeLinks {
                rc_cluster: &three,
                operators: &ops,
            },
        );
        let t: toml::Table = cfg.parse().unwrap_or_else(|e| panic!("{e}\n{cfg}"));
        assert_eq!(
            t["rc_cluster"].as_str(),
            Some("127.0.0.1:9001,127.0.0.1:9002,127.0.0.1:9003")
        );
        assert_eq!(
            t["operators"].as_array().unwrap()[0].as_str(),
            Some("did:mycel:zop")
        );
        assert_eq!(t["faults"]["control_dir"].as_str(), Some("/run/n1.faults"));
    }
}

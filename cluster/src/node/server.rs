//! Starting and stopping a node: control and handler runtimes, `NodeServer`, node agent,
//! checkpoint store, migration server, inference plane and client API.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opengrid_actors::{HostConfig, Services, SessionHost};
use opengrid_session::{CheckpointStore, RocksCheckpointStore, RocksOptions};
use ractor::{Actor, ActorRef};
use ractor_cluster::NodeServerMessage;
use tokio::runtime::Runtime;
use tokio::sync::watch;

use crate::common::identity::Identity;
use crate::common::metrics::Metrics;
use crate::common::runtime::{
    lock_data_dir, runtime, short, spawn_node_server, DataDirLock, LinkWatch, StartError,
};
use crate::common::spec::NodeSpec;
use crate::common::wire::NodeMsg;
use crate::node::api;
use crate::node::config::NodeConfig;
use crate::node::{NodeAgent, NodeCore};

/// Registers the handlers a node serves on its host (linked into the binary).
pub type HandlerSetup = fn(&SessionHost);

/// A running node.
pub struct NodeHandle {
    core: Arc<NodeCore>,
    api: SocketAddr,
    stop: watch::Sender<bool>,
    server: ActorRef<NodeServerMessage>,
    agent: ActorRef<NodeMsg>,
    control: Option<Runtime>,
    handlers: Option<Runtime>,
    /// Held while the process runs, dropped last (see [`DataDirLock`]).
    _data_dir: DataDirLock,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeHandle({}, api {})", self.core.id(), self.api)
    }
}

impl NodeHandle {
    /// The core.
    pub fn core(&self) -> &Arc<NodeCore> {
        &self.core
    }
    /// Client-API address.
    pub fn api_addr(&self) -> SocketAddr {
        self.api
    }
    /// Client-API base URL.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api)
    }
    /// The handler runtime (benchmarks saturate it).
    pub fn handler_runtime(&self) -> Option<tokio::runtime::Handle> {
        self.handlers.as_ref().map(|r| r.handle().clone())
    }
    /// Stops the node: closes the API, checkpoints and releases every session, stops both
    /// runtimes and waits for their threads, so the checkpoint store is closed when this returns.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let host = self.core.host.clone();
        if let Some(h) = &self.handlers {
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                h.spawn(async move { host.shutdown().await }),
            )
            .await;
        }
        self.agent.stop(None);
        self.server.stop(None);
        if let Some(m) = self.core.mobility() {
            m.stop();
        }
        let (control, handlers) = (self.control.take(), self.handlers.take());
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(rt) = control {
                rt.shutdown_timeout(Duration::from_secs(2));
            }
            if let Some(rt) = handlers {
                rt.shutdown_timeout(Duration::from_secs(2));
            }
        })
        .await;
    }
    fn stop_now(&mut self) {
        let _ = self.stop.send(true);
        self.agent.stop(None);
        self.server.stop(None);
        if let Some(rt) = self.control.take() {
            rt.shutdown_background();
        }
        if let Some(rt) = self.handlers.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Starts a node: handler runtime with its [`SessionHost`] (handlers registered by `setup`),
/// control runtime with the node agent, the link to the RC and the client API.
pub async fn start_node(cfg: NodeConfig, setup: HandlerSetup) -> Result<NodeHandle, StartError> {
    start_node_with(cfg, setup, crate::node::inference::no_services).await
}

/// As [`start_node`], with `services` adding handler services built from the node's inference
/// plane (called only when the config has an `[inference]` section).
pub async fn start_node_with(
    cfg: NodeConfig,
    setup: HandlerSetup,
    services: crate::node::inference::ServiceSetup,
) -> Result<NodeHandle, StartError> {
    cfg.validate()?;
    // The migration test hook runs only in a development process (ADR 0022).
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k == opengrid_migration::fault::PAUSE_VAR)
        .collect();
    cfg.check_env_hooks(&env)?;
    if cfg.dev {
        opengrid_migration::fault::allow();
    }
    let data_dir_lock = lock_data_dir(&cfg.data_dir)?;
    let identity = Identity::load_or_create(&cfg.data_dir)?;
    let handlers = runtime("handler", cfg.handler_threads)?;
    let control = match runtime("control", cfg.control_threads) {
        Ok(r) => r,
        Err(e) => {
            handlers.shutdown_background();
            return Err(e);
        }
    };
    let result = boot_node(cfg, identity, setup, services, &handlers, &control).await;
    match result {
        Ok((core, api, stop, server, agent)) => Ok(NodeHandle {
            core,
            api,
            stop,
            server,
            agent,
            control: Some(control),
            handlers: Some(handlers),
            _data_dir: data_dir_lock,
        }),
        Err(e) => {
            control.shutdown_background();
            handlers.shutdown_background();
            Err(e)
        }
    }
}

type Booted = (
    Arc<NodeCore>,
    SocketAddr,
    watch::Sender<bool>,
    ActorRef<NodeServerMessage>,
    ActorRef<NodeMsg>,
);

async fn boot_node(
    cfg: NodeConfig,
    identity: Identity,
    setup: HandlerSetup,
    service_setup: crate::node::inference::ServiceSetup,
    handlers: &Runtime,
    control: &Runtime,
) -> Result<Booted, StartError> {
    // Inference plane: ONNX Runtime and the models load on a blocking thread of the handler
    // runtime; the pool then runs on its own og-infer threads (never on the control runtime).
    let metrics = Arc::new(Metrics::new("node"));
    let icfg = cfg.inference.clone();
    let inference_meter = metrics.meter("opengrid_runtime_gpu");
    let inference = handlers
        .spawn_blocking(move || {
            crate::node::inference::NodeInference::start(&icfg, &inference_meter)
        })
        .await
        .map_err(|e| StartError::Spawn(e.to_string()))??
        .map(Arc::new);
    let (services, accelerator) = match &inference {
        Some(inf) => (
            inf.services(service_setup)?,
            inf.accelerator(cfg.hardware.accelerator)?,
        ),
        None => (Services::default(), cfg.hardware.accelerator),
    };
    // Handlers' outbound HTTP (`ctx.fetch`), to the hosts each session's manifest allows.
    let egress = Arc::new(
        crate::node::egress::NodeEgress::new(std::time::Duration::from_secs(30))
            .map_err(|e| StartError::Spawn(format!("egress: {e}")))?,
    );
    let limits = Arc::new(crate::node::agents::NodeLimits::default());
    // Handlers' calls to other sessions (`ctx.call`), through the directory.
    let calls = Arc::new(
        crate::node::calls::NodeCalls::new(std::time::Duration::from_secs(30))
            .map_err(|e| StartError::Spawn(format!("calls: {e}")))?,
    );
    let services = services
        .with(opengrid_actors::EgressService(egress.clone()))
        .with(opengrid_actors::CallService(calls.clone()))
        .with(opengrid_wasm::limits::LimitsService(limits.clone()));
    let store_path = cfg.data_dir.join("checkpoints");
    // Test/chaos hook, off unless `[faults] control_dir` is set (crate::node::faults).
    let faults = if cfg.faults.enabled() {
        Some(
            crate::node::faults::FaultControl::start(cfg.faults.control_dir.clone())
                .map_err(|e| StartError::Spawn(format!("fault hooks: {e}")))?,
        )
    } else {
        None
    };
    let fault_control = faults.clone();
    let host_cfg = HostConfig {
        queue_capacity: cfg.session_queue,
        faults: faults.as_ref().map(|f| f.hooks()),
        meter: Some(metrics.meter("opengrid_actors")),
        ..HostConfig::default()
    };
    let replication_meter = metrics.meter("opengrid_migration");
    let fsync = cfg.fsync;
    let links = crate::node::mobility::links(&identity, cfg.security_off_for_measurement)
        .map_err(|e| StartError::Spawn(format!("migration links: {e}")))?;
    let link = links.0.clone();
    let host = handlers
        .spawn(async move {
            let store = RocksCheckpointStore::open(
                &store_path,
                RocksOptions {
                    sync: fsync,
                    ..RocksOptions::default()
                },
            )
            .map_err(|e| StartError::Store {
                path: store_path.display().to_string(),
                reason: e.to_string(),
            })?;
            let mut local = Arc::new(store) as Arc<dyn CheckpointStore>;
            if let Some(f) = faults {
                local = Arc::new(crate::node::faults::faulty_store(local, f));
            }
            let replicated =
                crate::node::mobility::replicated(local.clone(), replication_meter, link.clone());
            SessionHost::new(
                replicated.clone() as Arc<dyn CheckpointStore>,
                host_cfg,
                services,
            )
            .await
            .map(|h| (h, local, replicated))
            .map_err(|e| StartError::Spawn(format!("session host: {e}")))
        })
        .await
        .map_err(|e| StartError::Spawn(e.to_string()))??;
    let (host, local, replicated) = host;
    let mobility = crate::node::mobility::NodeMobility::start(
        &cfg,
        host.clone(),
        local,
        replicated,
        links,
        metrics.meter("opengrid_migration"),
    )
    .map_err(|source| StartError::Bind {
        addr: cfg.migration_listen,
        what: "migration server",
        source,
    })?;
    setup(&host);
    let registered = host.handler_ids();
    let served = if cfg.handlers.is_empty() {
        registered.clone()
    } else {
        for h in &cfg.handlers {
            if !registered.contains(h) {
                return Err(StartError::UnknownHandler {
                    handler: h.clone(),
                    registered,
                });
            }
        }
        cfg.handlers.clone()
    };
    let mut served = served;
    let agents = if cfg.agents.enabled {
        let a = crate::node::agents::NodeAgents::start(
            &cfg.data_dir,
            &cfg.agents,
            Some(metrics.meter("opengrid_wasm")),
            inference.clone(),
        )
        .map_err(|e| StartError::Spawn(format!("agents: {e}")))?;
        if !served
            .iter()
            .any(|h| h == crate::common::spec::WASM_HANDLER)
        {
            served.push(crate::common::spec::WASM_HANDLER.to_string());
        }
        Some(Arc::new(a))
    } else {
        None
    };
    let handler_handle = handlers.handle().clone();
    let cluster_listen = cfg.cluster_listen;
    control
        .spawn(async move {
            let listener = tokio::net::TcpListener::bind(cfg.api_listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: cfg.api_listen,
                    what: "client API",
                    source,
                })?;
            let api = listener.local_addr().map_err(|source| StartError::Bind {
                addr: cfg.api_listen,
                what: "client API",
                source,
            })?;
            let spec = NodeSpec {
                id: identity.id(),
                name: cfg.name.clone(),
                jurisdiction: cfg.jurisdiction.clone(),
                accelerator,
                cpu_cores: cfg.hardware.cpu_cores,
                memory: cfg.hardware.memory.0,
                handlers: served,
                capabilities: cfg.capabilities.clone(),
                price_micros_per_input: cfg.price_micros_per_input,
                capacity: cfg.capacity,
                max_session_memory: (cfg.hardware.memory.0 as f64 * cfg.max_session_share) as u64,
                api: format!("http://{api}"),
                migration: mobility.addr().to_string(),
            };
            let name = format!("node-{}", short(&identity.id().did()));
            let core = Arc::new(NodeCore::new(
                cfg.clone(),
                identity,
                spec,
                host,
                handler_handle,
                metrics,
            ));
            mobility.attach(&core);
            egress.attach(Arc::downgrade(&core));
            calls.attach(Arc::downgrade(&core));
            limits.attach(Arc::downgrade(&core));
            let _ = core.mobility.set(mobility);
            if let Some(a) = agents {
                let _ = core.agents.set(a);
            }
            if let Some(f) = fault_control {
                let _ = core.faults.set(f);
            }
            let weak = Arc::downgrade(&core);
            let watch = LinkWatch {
                on_up: Box::new(move |peer, up| {
                    if let Some(c) = weak.upgrade() {
                        let mut links = crate::node::lock(&c.rc_links);
                        if up {
                            links.insert(peer.to_string());
                        } else {
                            links.remove(peer);
                        }
                        c.link_up.store(!links.is_empty(), Ordering::Release);
                    }
                }),
                authenticated: Default::default(),
                metrics: core.metrics.clone(),
                role: "node",
            };
            let server = spawn_node_server(cluster_listen, cfg.secret().to_string(), name, watch).await?;
            let (agent, _) = Actor::spawn(None, NodeAgent { core: core.clone() }, ())
                .await
                .map_err(|e| StartError::Spawn(format!("node agent: {e}")))?;
            let (stop, stop_rx) = watch::channel(false);
            // Link keeper: (re)connects to every RC (`rc_cluster`: one, or each replica of an RC
            // group) this node has no link with.
            let (c3, s3, mut rx3) = (core.clone(), server.clone(), stop_rx.clone());
            tokio::spawn(async move {
                loop {
                    for rc in &c3.rc_addresses() {
                        if c3.rc_linked(rc) {
                            continue;
                        }
                        let r = ractor_cluster::client_connect(&s3, rc.as_str()).await;
                        if let Err(e) = &r {
                            tracing::debug!(rc = %rc, "cannot reach the RC: {e}");
                        }
                        c3.join_watch.note_connect(r.map_err(|e| e.to_string()));
                    }
                    c3.say_membership(Instant::now());
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = rx3.wait_for(|s| *s) => break,
                    }
                }
            });
            let router = api::node_router(core.clone());
            let mut rx = stop_rx;
            let (limits, refused) = (core.cfg.serve_limits()?, core.metrics.connections_refused.clone());
            tokio::spawn(crate::common::serve::serve(listener, router, limits, refused, async move {
                let _ = rx.wait_for(|s| *s).await;
            }));
            tracing::info!(node = %core.id(), name = %core.cfg.name, api = %api, jurisdiction = %core.cfg.jurisdiction, rc = %core.cfg.rc_cluster, "node started");
            Ok::<_, StartError>((core, api, stop, server, agent))
        })
        .await
        .map_err(|e| StartError::Spawn(e.to_string()))?
}

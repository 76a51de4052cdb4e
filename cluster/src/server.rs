//! Starting and stopping a node or an RC: runtimes, the ractor_cluster `NodeServer`, the control
//! actors and the client API.
//!
//! # Threads
//! - `og-control-*`: the control-plane runtime (membership, heartbeats, lease watchdog, admission,
//!   directory, client API, health). Small (1 worker by default) and never runs handler code.
//! - `og-handler-*` (nodes only): the handler runtime; the [`SessionHost`] and every session actor
//!   live here. Saturating it does not delay the control plane except through the OS scheduler.
//!
//! One process may host several nodes and an RC (tests do): each has its own runtimes and
//! `NodeServer`; control actors find each other through ractor's process-wide pg groups,
//! preferring a member in the same process (see `docs/adr/0004-failure-detection.md`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opengrid_actors::{HostConfig, Services, SessionHost};
use opengrid_session::{CheckpointStore, RocksCheckpointStore, RocksOptions};
use opentelemetry::KeyValue;
use ractor::{Actor, ActorRef};
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{NodeEventSubscription, NodeServer, NodeServerMessage};
use tokio::runtime::Runtime;
use tokio::sync::watch;

use crate::admission::NodeSpec;
use crate::api;
use crate::config::{NodeConfig, RcConfig};
use crate::identity::{Identity, IdentityError};
use crate::metrics::Metrics;
use crate::node::{NodeAgent, NodeCore};
use crate::rc::{RcActor, RcCore};
use crate::wire::{NodeMsg, RcMsg};

/// Registers the handlers a node serves on its host (linked into the binary).
pub type HandlerSetup = fn(&SessionHost);

/// Why a node or RC could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Identity key problem.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A runtime could not be built.
    #[error("cannot build the {which} runtime: {source}")]
    Runtime {
        /// Which.
        which: &'static str,
        /// Error.
        source: std::io::Error,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Which listener.
        what: &'static str,
        /// Error.
        source: std::io::Error,
    },
    /// The checkpoint store could not be opened.
    #[error("checkpoint store at {path}: {reason}")]
    Store {
        /// Path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A configured handler is not linked into this binary.
    #[error("config field `handlers`: {handler:?} is not registered in this binary (registered: {registered:?})")]
    UnknownHandler {
        /// The handler.
        handler: String,
        /// What is registered.
        registered: Vec<String>,
    },
    /// An actor failed to spawn, or a startup task died.
    #[error("startup failed: {0}")]
    Spawn(String),
    /// The inference plane (`[inference]`) could not start: ONNX Runtime library, model files,
    /// declared accelerator.
    #[error(transparent)]
    Inference(#[from] crate::inference::InferenceStartError),
}

fn runtime(which: &'static str, threads: usize) -> Result<Runtime, StartError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(format!("og-{which}"))
        .enable_all()
        .build()
        .map_err(|source| StartError::Runtime { which, source })
}

/// Picks a free port for `addr` when it asks for port 0 (ractor_cluster does not report the port
/// its listener bound).
fn concrete(addr: SocketAddr) -> Result<SocketAddr, StartError> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    let l = std::net::TcpListener::bind(addr).map_err(|source| StartError::Bind {
        addr,
        what: "control plane",
        source,
    })?;
    l.local_addr().map_err(|source| StartError::Bind {
        addr,
        what: "control plane",
        source,
    })
}

/// Waits until something accepts TCP connections on `addr`.
async fn wait_listening(addr: SocketAddr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// Tracks ractor_cluster sessions: flags the link as up when authenticated and ready, logs
/// connections that closed before authenticating (wrong colony secret).
struct LinkWatch {
    on_up: Box<dyn Fn(bool) + Send + Sync>,
    authenticated: Arc<Mutex<HashSet<u64>>>,
    metrics: Arc<Metrics>,
    role: &'static str,
}

impl NodeEventSubscription for LinkWatch {
    fn node_session_opened(&self, ses: NodeServerSessionInformation) {
        tracing::debug!(peer = %ses.peer_addr, "control-plane connection opened");
    }
    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        let was_auth = self
            .authenticated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ses.node_id);
        if was_auth {
            tracing::info!(peer = %ses.peer_addr, "control-plane link closed");
            (self.on_up)(false);
        } else {
            tracing::warn!(
                peer = %ses.peer_addr,
                role = self.role,
                "control-plane connection refused before authentication (wrong colony secret?)"
            );
            self.metrics
                .join_refused
                .add(1, &[KeyValue::new("reason", "cookie")]);
        }
    }
    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        self.authenticated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ses.node_id);
        tracing::info!(peer = %ses.peer_addr, "control-plane link authenticated");
    }
    fn node_session_ready(&self, _ses: NodeServerSessionInformation) {
        (self.on_up)(true);
    }
}

async fn spawn_node_server(
    listen: SocketAddr,
    cookie: String,
    name: String,
    watch: LinkWatch,
) -> Result<ActorRef<NodeServerMessage>, StartError> {
    let server = NodeServer::new(
        listen.port(),
        cookie,
        name,
        listen.ip().to_string(),
        None,
        Some(NodeConnectionMode::Isolated),
    )
    .with_listen_addr(listen.ip())
    .with_max_inbound_frame_size(2 * crate::wire::MAX_WIRE_BYTES as u64);
    let (server, _) = Actor::spawn(None, server, ())
        .await
        .map_err(|e| StartError::Spawn(format!("NodeServer: {e}")))?;
    server
        .cast(NodeServerMessage::SubscribeToEvents {
            id: "opengrid-link".into(),
            subscription: Box::new(watch),
        })
        .map_err(|e| StartError::Spawn(format!("NodeServer subscription: {e}")))?;
    Ok(server)
}

fn short(did: &str) -> String {
    did.chars()
        .rev()
        .take(10)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect()
}

// ---------------------------------------------------------------------------------------------

/// A running RC.
pub struct RcHandle {
    core: Arc<RcCore>,
    api: SocketAddr,
    cluster: SocketAddr,
    stop: watch::Sender<bool>,
    server: ActorRef<NodeServerMessage>,
    actor: ActorRef<RcMsg>,
    control: Option<Runtime>,
}

impl std::fmt::Debug for RcHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RcHandle({}, api {})", self.core.id(), self.api)
    }
}

impl RcHandle {
    /// The core (status, directory, admission).
    pub fn core(&self) -> &Arc<RcCore> {
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
    /// Control-plane address (give it to nodes as `rc_cluster`).
    pub fn cluster_addr(&self) -> SocketAddr {
        self.cluster
    }
    /// Stops the RC and waits for its control threads.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        self.actor.stop(None);
        self.server.stop(None);
        if let Some(rt) = self.control.take() {
            let _ =
                tokio::task::spawn_blocking(move || rt.shutdown_timeout(Duration::from_secs(2)))
                    .await;
        }
    }
    fn stop_now(&mut self) {
        let _ = self.stop.send(true);
        self.actor.stop(None);
        self.server.stop(None);
        if let Some(rt) = self.control.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for RcHandle {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Starts an RC: control runtime, `NodeServer` (colony secret as cookie), RC actor, client API.
pub async fn start_rc(cfg: RcConfig) -> Result<RcHandle, StartError> {
    let identity = Identity::load_or_create(&cfg.data_dir)?;
    let control = runtime("control", cfg.control_threads)?;
    let cluster = concrete(cfg.cluster_listen)?;
    let (stop, stop_rx) = watch::channel(false);
    let name = format!("rc-{}", short(&identity.id().did()));
    let core = Arc::new(RcCore::new(cfg.clone(), identity));
    let c2 = core.clone();
    let started = control
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
            c2.set_api(format!("http://{api}"));
            if c2.cfg.canopy.enabled {
                crate::federation::start(&c2, api)
                    .await
                    .map_err(|e| StartError::Spawn(format!("canopy: {e}")))?;
            }
            let watch = LinkWatch {
                on_up: Box::new(|_| {}),
                authenticated: Default::default(),
                metrics: c2.metrics.clone(),
                role: "rc",
            };
            let server = spawn_node_server(cluster, cfg.colony_secret.clone(), name, watch).await?;
            let (actor, _) = Actor::spawn(None, RcActor { core: c2.clone() }, ())
                .await
                .map_err(|e| StartError::Spawn(format!("RC actor: {e}")))?;
            let router = api::rc_router(c2.clone());
            let mut rx = stop_rx;
            tokio::spawn(async move {
                let r = axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = rx.wait_for(|s| *s).await;
                    })
                    .await;
                if let Err(e) = r {
                    tracing::error!("RC client API stopped: {e}");
                }
            });
            if !wait_listening(cluster, Duration::from_secs(5)).await {
                return Err(StartError::Spawn(format!("control plane not listening on {cluster}")));
            }
            tracing::info!(rc = %c2.id(), api = %api, cluster = %cluster, colony = %c2.cfg.colony, "RC started");
            Ok::<_, StartError>((api, server, actor))
        })
        .await
        .map_err(|e| StartError::Spawn(e.to_string()));
    let (api, server, actor) = match started {
        Ok(Ok(v)) => v,
        Ok(Err(e)) | Err(e) => {
            control.shutdown_background();
            return Err(e);
        }
    };
    Ok(RcHandle {
        core,
        api,
        cluster,
        stop,
        server,
        actor,
        control: Some(control),
    })
}

// ---------------------------------------------------------------------------------------------

/// A running node.
pub struct NodeHandle {
    core: Arc<NodeCore>,
    api: SocketAddr,
    stop: watch::Sender<bool>,
    server: ActorRef<NodeServerMessage>,
    agent: ActorRef<NodeMsg>,
    control: Option<Runtime>,
    handlers: Option<Runtime>,
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
    start_node_with(cfg, setup, crate::inference::no_services).await
}

/// As [`start_node`], with `services` adding handler services built from the node's inference
/// plane (called only when the config has an `[inference]` section).
pub async fn start_node_with(
    cfg: NodeConfig,
    setup: HandlerSetup,
    services: crate::inference::ServiceSetup,
) -> Result<NodeHandle, StartError> {
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
    service_setup: crate::inference::ServiceSetup,
    handlers: &Runtime,
    control: &Runtime,
) -> Result<Booted, StartError> {
    // Inference plane: ONNX Runtime and the models load on a blocking thread of the handler
    // runtime; the pool then runs on its own og-infer threads (never on the control runtime).
    let metrics = Arc::new(Metrics::new("node"));
    let icfg = cfg.inference.clone();
    let inference_meter = metrics.meter("opengrid_runtime_gpu");
    let inference = handlers
        .spawn_blocking(move || crate::inference::NodeInference::start(&icfg, &inference_meter))
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
    let store_path = cfg.data_dir.join("checkpoints");
    // Test/chaos hook, off unless `[faults] control_dir` is set (crate::faults).
    let faults = if cfg.faults.enabled() {
        Some(
            crate::faults::FaultControl::start(cfg.faults.control_dir.clone())
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
                local = Arc::new(crate::faults::faulty_store(local, f));
            }
            let replicated = crate::mobility::replicated(local.clone(), replication_meter);
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
    let mobility = crate::mobility::NodeMobility::start(&cfg, host.clone(), local, replicated)
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
            let _ = core.mobility.set(mobility);
            if let Some(f) = fault_control {
                let _ = core.faults.set(f);
            }
            let weak = Arc::downgrade(&core);
            let watch = LinkWatch {
                on_up: Box::new(move |up| {
                    if let Some(c) = weak.upgrade() {
                        c.link_up.store(up, Ordering::Release);
                    }
                }),
                authenticated: Default::default(),
                metrics: core.metrics.clone(),
                role: "node",
            };
            let server = spawn_node_server(cluster_listen, cfg.colony_secret.clone(), name, watch).await?;
            let (agent, _) = Actor::spawn(None, NodeAgent { core: core.clone() }, ())
                .await
                .map_err(|e| StartError::Spawn(format!("node agent: {e}")))?;
            let (stop, stop_rx) = watch::channel(false);
            // Link keeper: (re)connects to the RC while the link is down.
            let (c3, s3, mut rx3) = (core.clone(), server.clone(), stop_rx.clone());
            tokio::spawn(async move {
                loop {
                    if !c3.link_up.load(Ordering::Acquire) {
                        if let Err(e) = ractor_cluster::client_connect(&s3, c3.cfg.rc_cluster.as_str()).await {
                            tracing::debug!(rc = %c3.cfg.rc_cluster, "cannot reach the RC: {e}");
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = rx3.wait_for(|s| *s) => break,
                    }
                }
            });
            let router = api::node_router(core.clone());
            let mut rx = stop_rx;
            tokio::spawn(async move {
                let r = axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = rx.wait_for(|s| *s).await;
                    })
                    .await;
                if let Err(e) = r {
                    tracing::error!("node client API stopped: {e}");
                }
            });
            tracing::info!(node = %core.id(), name = %core.cfg.name, api = %api, jurisdiction = %core.cfg.jurisdiction, rc = %core.cfg.rc_cluster, "node started");
            Ok::<_, StartError>((core, api, stop, server, agent))
        })
        .await
        .map_err(|e| StartError::Spawn(e.to_string()))?
}

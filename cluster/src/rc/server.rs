//! Starting and stopping an RC: its control runtime, `NodeServer`, RC actor, canopy and client API.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use ractor_cluster::NodeServerMessage;
use tokio::runtime::Runtime;
use tokio::sync::watch;

use crate::common::identity::Identity;
use crate::common::runtime::{
    concrete, lock_data_dir, runtime, short, spawn_node_server, wait_listening, DataDirLock,
    LinkWatch, StartError,
};
use crate::common::wire::RcMsg;
use crate::rc::api;
use crate::rc::config::RcConfig;
use crate::rc::{RcActor, RcCore};

/// A running RC.
pub struct RcHandle {
    core: Arc<RcCore>,
    api: SocketAddr,
    cluster: SocketAddr,
    stop: watch::Sender<bool>,
    server: ActorRef<NodeServerMessage>,
    actor: ActorRef<RcMsg>,
    control: Option<Runtime>,
    /// Held while the process runs, dropped last (see [`DataDirLock`]).
    _data_dir: DataDirLock,
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
        self.core.events.close();
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
        self.core.events.close();
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
    let data_dir_lock = lock_data_dir(&cfg.data_dir)?;
    let identity = Identity::load_or_create(&cfg.data_dir)?;
    let control = runtime("control", cfg.control_threads)?;
    let cluster = concrete(cfg.cluster_listen)?;
    let (stop, stop_rx) = watch::channel(false);
    let name = format!("rc-{}", short(&identity.id().did()));
    let key = identity.signing_key();
    let core = Arc::new(RcCore::new(cfg.clone(), identity));
    core.set_self();
    if !cfg.group.enabled() {
        // A single RC keeps its directory in its data dir; a group replica in the group's log.
        core.open_directory(&cfg.data_dir)
            .map_err(|e| StartError::Spawn(format!("directory: {e}")))?;
    }
    let registry = crate::rc::agents::Registry::open(&cfg.data_dir, cfg.agent_publishers.clone())
        .map_err(|e| StartError::Spawn(format!("agent registry: {e}")))?;
    let registry = Arc::new(registry);
    registry.instrument(&core.metrics.meter("opengrid_agents"));
    core.set_agents(registry);
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
            if c2.cfg.group.enabled() {
                let group = crate::rc::group::RcGroup::start(&c2.cfg.group, key, &c2.cfg.data_dir)
                    .await
                    .map_err(|e| StartError::Spawn(e.to_string()))?;
                let _ = c2.group.set(group.clone());
                if let Some(s) = c2.settlement() {
                    // Settled (or finally rejected) receipts leave the replicated queue.
                    let g = Arc::downgrade(&group);
                    s.set_on_settled(Arc::new(move |ids| {
                        let Some(g) = g.upgrade() else { return };
                        let deletes = ids
                            .iter()
                            .map(|id| (crate::rc::settlement::queue_key(id), None))
                            .collect();
                        tokio::spawn(async move {
                            if let Err(e) = g.write(deletes).await {
                                tracing::warn!(error = %e, "settled receipts not removed from the replicated queue (the next leader resubmits them; the ledger refuses them as duplicates)");
                            }
                        });
                    }));
                }
                let advertise = match c2.cfg.group.advertise.trim() {
                    "" if cluster.ip().is_unspecified() => String::new(),
                    "" => cluster.to_string(),
                    a => a.to_string(),
                };
                let addrs = crate::rc::group::ReplicaAddrs {
                    id: group.id(),
                    api: format!("http://{api}"),
                    cluster: advertise,
                    did: c2.id().did(),
                };
                // Followers send clients to the leader's API: every replica writes its own.
                tokio::spawn(async move {
                    if let Err(e) = group.announce(addrs, Duration::from_secs(3600)).await {
                        tracing::error!(error = %e, "this RC replica's addresses were not announced to its group");
                    }
                });
            }
            if c2.cfg.canopy.enabled {
                crate::rc::federation::start(&c2, api)
                    .await
                    .map_err(|e| StartError::Spawn(format!("canopy: {e}")))?;
            }
            let watch = LinkWatch {
                on_up: Box::new(|_, _| {}),
                authenticated: Default::default(),
                metrics: c2.metrics.clone(),
                role: "rc",
            };
            let server = spawn_node_server(cluster, cfg.secret().to_string(), name, watch).await?;
            let (actor, _) = Actor::spawn(None, RcActor { core: c2.clone() }, ())
                .await
                .map_err(|e| StartError::Spawn(format!("RC actor: {e}")))?;
            let router = api::rc_router(c2.clone());
            let mut rx = stop_rx;
            let (limits, refused) = (c2.cfg.serve_limits()?, c2.metrics.connections_refused.clone());
            tokio::spawn(crate::common::serve::serve(listener, router, limits, refused, async move {
                let _ = rx.wait_for(|s| *s).await;
            }));
            if !wait_listening(cluster, Duration::from_secs(5)).await {
                return Err(StartError::Spawn(format!("control plane not listening on {cluster}")));
            }
            tracing::info!(rc = %c2.id(), api = %api, cluster = %cluster, colony = %c2.cfg.colony, dashboard = %format!("http://{api}/ui"), "RC started");
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
        _data_dir: data_dir_lock,
    })
}

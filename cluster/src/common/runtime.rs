//! What starting a node ([`crate::node::server`]) and an RC ([`crate::rc::server`]) share: the
//! start error, runtimes, the ractor_cluster `NodeServer` and its link watch.
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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use ractor::{Actor, ActorRef};
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{NodeEventSubscription, NodeServer, NodeServerMessage};
use tokio::runtime::Runtime;

use crate::common::identity::IdentityError;
use crate::common::metrics::Metrics;

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
    #[error("cannot listen on {addr} ({what}): {source}{}", bind_hint(source))]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Which listener.
        what: &'static str,
        /// Error.
        source: std::io::Error,
    },
    /// Another running process holds this data dir.
    #[error(
        "data_dir {path} is in use by another running opengrid process (it holds {lock}): give \
         each node and RC on a host its own `data_dir` (e.g. `opengrid init node --name NAME`)"
    )]
    DataDirInUse {
        /// The data dir.
        path: String,
        /// The lock file.
        lock: String,
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
    /// The config does not hold (a config built in code, not loaded and validated).
    #[error(transparent)]
    Config(#[from] crate::common::config::ConfigError),
    /// An actor failed to spawn, or a startup task died.
    #[error("startup failed: {0}")]
    Spawn(String),
    /// The inference plane (`[inference]`) could not start: ONNX Runtime library, model files,    /// The inference plane (`[inference]`) could not start: ONNX Runtime library, model files,
    /// declared accelerator.
    #[error("inference plane: {0}")]
    Inference(#[source] Box<dyn std::error::Error + Send + Sync>),
}

fn bind_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        " (another process, perhaps a second node or RC on this host, has this port: give each \
         its own `api_listen` / `cluster_listen` / `migration_listen`, or port 0 for any free port)"
    } else {
        ""
    }
}

/// An exclusive lock on a data dir, held while the node or RC runs (released when dropped or
/// when the process dies), so two processes never share an identity and checkpoint store.
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

/// Creates `dir` if needed and takes its lock (`<dir>/opengrid.lock`).
pub(crate) fn lock_data_dir(dir: &std::path::Path) -> Result<DataDirLock, StartError> {
    let store = |reason: String| StartError::Store {
        path: dir.display().to_string(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| store(format!("cannot create the data dir: {e}")))?;
    let path = dir.join("opengrid.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| store(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(DataDirLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartError::DataDirInUse {
            path: dir.display().to_string(),
            lock: path.display().to_string(),
        }),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(store(format!("cannot lock {}: {e}", path.display())))
        }
    }
}

pub(crate) fn runtime(which: &'static str, threads: usize) -> Result<Runtime, StartError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(format!("og-{which}"))
        .enable_all()
        .build()
        .map_err(|source| StartError::Runtime { which, source })
}

/// Picks a free port for `addr` when it asks for port 0 (ractor_cluster does not report the port
/// its listener bound).
pub(crate) fn concrete(addr: SocketAddr) -> Result<SocketAddr, StartError> {
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
pub(crate) async fn wait_listening(addr: SocketAddr, within: Duration) -> bool {
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
/// connections that named themselves and closed before authenticating (wrong colony secret); a
/// connection that closes without a word (a readiness probe, a scan) is only a debug line.
/// Told a control-plane link's peer address and whether it came up or closed.
pub(crate) type OnLink = Box<dyn Fn(&str, bool) + Send + Sync>;

pub(crate) struct LinkWatch {
    /// Called with the peer's address when a link is ready (`true`) or an authenticated one
    /// closed (`false`).
    pub(crate) on_up: OnLink,
    pub(crate) authenticated: Arc<Mutex<HashSet<u64>>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) role: &'static str,
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
            (self.on_up)(&ses.peer_addr, false);
        } else if ses.peer_name.is_none() {
            // Closed before the peer even named itself: a readiness probe (our own
            // `wait_listening`), a load balancer's health check or a port scan; no join was tried.
            tracing::debug!(peer = %ses.peer_addr, "control-plane connection closed before the handshake");
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
    fn node_session_ready(&self, ses: NodeServerSessionInformation) {
        (self.on_up)(&ses.peer_addr, true);
    }
}

pub(crate) async fn spawn_node_server(
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
    .with_max_inbound_frame_size(2 * crate::common::wire::MAX_WIRE_BYTES as u64);
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

pub(crate) fn short(did: &str) -> String {
    did.chars()
        .rev()
        .take(10)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect()
}

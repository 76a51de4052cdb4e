//! Session mobility on a node: checkpoint replication to the replica set the RC chose, live
//! handover (make-before-break, `migration::handover`), restore after a failover, and drain.
//!
//! - Every node runs a [`MigrationServer`] on its own `og-migrate` runtime (replica writes,
//!   handover target steps, X2 forwarding), never on the control runtime.
//! - The session host writes through a [`ReplicatedStore`]: a checkpoint is durable only once
//!   every replica in the session's set (k, chosen by the RC within the manifest's allowed
//!   jurisdictions) has it, then locally.
//! - **Handover** (`POST /sessions/{id}/handover`, drain, RC rebalancing): the node asks its RC
//!   for a target ([`ToRc::PlanHandover`]), then drives the steps; the target reports
//!   [`ToRc::Activated`] and the RC switches its directory. Clients of the old holder get their
//!   answers relayed (X2), then `moved`.
//! - **Restore** (failover, never-live restart): the RC names the replica holders of the earlier
//!   epoch; the node installs the newest checkpoint among them and its own store, re-writes it
//!   under the new epoch to the new replica set *and* the old holders (so a paused old holder is
//!   fenced before the session serves again), then starts the session.
//! - **Drain** (`opengrid drain`, SIGTERM): no new placements; live sessions are handed over,
//!   never-live ones are checkpointed and restarted elsewhere by the RC; the node exits when none
//!   is left or the drain timeout passes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use opengrid_actors::{SessionHost, SessionStatus};
use opengrid_migration::wire::{Request, Response};
use opengrid_migration::{
    AdmitIncoming, GrantPolicy, HandoverError, HandoverOptions, HandoverReport, MigrationServer,
    Peer, RcKey, ReplicatedStore, ReplicationConfig, Security,
};
use opengrid_session::{Checkpoint, CheckpointStore, Epoch, SessionId};
use serde::Serialize;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

use crate::common::identity::{Identity, NodeId};
use crate::common::wire::{HandoverTarget, ToRc};
use crate::node::config::NodeConfig;
use crate::node::NodeCore;
use opengrid_link::{AllowList, Link, LinkIdentity};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The migration clients of one peer address and the index of the next to use.
type PeerSet = (Vec<Arc<Peer>>, usize);

/// Migration clients (connections) a node keeps per peer address.
pub const PEERS_PER_ADDR: usize = 4;

/// How long the old holder keeps relaying inputs (X2) after a handover before it forgets the
/// session; later clients are redirected through the RC directory.
pub const FORWARD_FOR: Duration = Duration::from_secs(10);

/// Why a handover asked of this node did not happen.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    /// Not hosted here (or already moved).
    #[error("session {0} is not served by this node")]
    NotHere(SessionId),
    /// The node holds no lease.
    #[error("this node holds no valid lease")]
    NotServing,
    /// The RC found no target.
    #[error("no handover target: {0}")]
    NoTarget(String),
    /// The steps failed; the source keeps serving.
    #[error(transparent)]
    Handover(#[from] HandoverError),
    /// Mobility is not running on this node.
    #[error("migration server not running")]
    NoMobility,
}

/// What a completed handover reports to the API.
#[derive(Debug, Clone, Serialize)]
pub struct MoveReport {
    /// Session.
    pub session_id: SessionId,
    /// Target node name.
    pub to: String,
    /// Target client API.
    pub address: String,
    /// New epoch.
    pub epoch: Epoch,
    /// Freeze → target active, ms.
    pub blackout_ms: f64,
    /// Of which freeze → final checkpoint written on the source, ms (the rest: activation).
    pub freeze_ms: f64,
    /// Whole handover, ms.
    pub total_ms: f64,
    /// Pre-copy rounds.
    pub precopy_rounds: u32,
    /// Bytes of state moved in the final checkpoint.
    pub state_bytes: usize,
}

impl MoveReport {
    fn new(t: &HandoverTarget, r: &HandoverReport) -> Self {
        MoveReport {
            session_id: r.session.clone(),
            to: t.name.clone(),
            address: t.api.clone(),
            epoch: r.epoch,
            blackout_ms: r.blackout.as_secs_f64() * 1e3,
            freeze_ms: r.freeze.as_secs_f64() * 1e3,
            total_ms: r.total.as_secs_f64() * 1e3,
            precopy_rounds: r.precopy_rounds,
            state_bytes: r.state_bytes,
        }
    }
}

/// Outcome of a drain.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DrainReport {
    /// Sessions handed over live.
    pub handed_over: usize,
    /// Never-live sessions checkpointed and restarted elsewhere by the RC.
    pub restarted: usize,
    /// Sessions that could not leave (left checkpointed; they fail over).
    pub failed: Vec<(String, String)>,
    /// Sessions still hosted when the drain ended.
    pub remaining: usize,
    /// Duration, ms.
    pub took_ms: u64,
}

/// Longest an incoming handover's `Prepare` waits for a pushed agent to load here (the source's
/// request timeout is 5 s).
const AGENT_LOAD_AT_PREPARE: Duration = Duration::from_secs(3);

/// Incoming handovers: admission by handler and capacity, replica set and RC notification.
struct Incoming {
    host: SessionHost,
    store: Arc<ReplicatedStore>,
    capacity: usize,
    draining: Arc<AtomicBool>,
    core: OnceLock<Weak<NodeCore>>,
}

impl AdmitIncoming for Incoming {
    fn ready<'a>(
        &'a self,
        session: &'a SessionId,
        handler: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            if self.host.handler_ids().iter().any(|h| h == handler) || !handler.contains('@') {
                return;
            }
            let Some(core) = self.core.get().and_then(Weak::upgrade) else {
                return;
            };
            let Some(agents) = core.agents.get().cloned() else {
                return;
            };
            // A pushed agent this node has not loaded: fetch and load it now, before the freeze.
            // A slow load (a large package, a compile) goes on in the background and this
            // handover is refused; a retry finds the agent loaded.
            let (host, handler_id, from) =
                (self.host.clone(), handler.to_string(), core.fetch_from());
            let load =
                tokio::spawn(async move { agents.ensure_by_id(&host, &handler_id, &from).await });
            match tokio::time::timeout(AGENT_LOAD_AT_PREPARE, load).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => {
                    tracing::warn!(%session, %handler, error = %e, "agent not loaded for an incoming handover")
                }
                Ok(Err(e)) => {
                    tracing::warn!(%session, %handler, error = %e, "agent load task failed")
                }
                Err(_) => {
                    tracing::info!(%session, %handler, "agent still loading: this handover is refused, a retry will find it")
                }
            }
        })
    }

    fn admit(&self, _session: &SessionId, handler: &str) -> Result<(), String> {
        if self.draining.load(Ordering::Acquire) {
            return Err("node is draining".into());
        }
        if !self.host.handler_ids().iter().any(|h| h == handler) {
            return Err(format!("handler {handler:?} is not served by this node"));
        }
        if self.host.len() >= self.capacity {
            return Err(format!("node full ({} sessions)", self.capacity));
        }
        match self.core.get().and_then(Weak::upgrade) {
            Some(c) if c.may_serve() => Ok(()),
            _ => Err("node holds no lease".into()),
        }
    }

    fn prepared(
        &self,
        session: &SessionId,
        replicas: &[SocketAddr],
        grant: Option<&opengrid_migration::SignedGrant>,
    ) {
        let (store, peers) = (self.store.clone(), replicas.to_vec());
        let (session, grant) = (session.clone(), grant.cloned());
        tokio::task::spawn_blocking(move || store.warm(&session, &peers, grant.as_ref()));
    }

    fn activating(
        &self,
        session: &SessionId,
        replicas: &[SocketAddr],
        grant: Option<&opengrid_migration::SignedGrant>,
    ) {
        self.store.set_replicas(session, replicas.to_vec());
        if let Some(g) = grant {
            self.store.set_grant(session, g.clone());
        }
    }

    fn activated(&self, session: &SessionId, epoch: Epoch) {
        if let Some(c) = self.core.get().and_then(Weak::upgrade) {
            c.metrics.handovers_in.add(1, &[]);
            c.send_to_rc(ToRc::Activated {
                node: c.id(),
                session: session.to_string(),
                epoch: epoch.0,
            });
        }
    }
}

/// The node's mobility machinery.
pub struct NodeMobility {
    /// The replicated store the session host writes through.
    pub store: Arc<ReplicatedStore>,
    /// The node's own RocksDB store (replicas of other nodes' sessions land here too).
    pub local: Arc<dyn CheckpointStore>,
    server: MigrationServer,
    /// This node's authenticated links to other nodes' migration servers (ADR 0023).
    link: Link,
    /// Who may be on the other side of those links: the colony's nodes, as the RC last listed
    /// them ([`crate::common::wire::ToNode::Members`]).
    members: Arc<AllowList>,
    /// The RC whose grants the migration server requires (known from the join).
    rc: RcKey,
    /// Migration clients per peer address (and the next to use): reused, so a TLS handshake is
    /// paid per connection, not per seed, restore or handover.
    peers: Mutex<HashMap<SocketAddr, PeerSet>>,
    incoming: Arc<Incoming>,
    runtime: Mutex<Option<Runtime>>,
    draining: Arc<AtomicBool>,
    plans: Mutex<HashMap<u64, oneshot::Sender<Result<HandoverTarget, String>>>>,
    next_plan: AtomicU64,
    drain_report: Mutex<Option<DrainReport>>,
}

impl std::fmt::Debug for NodeMobility {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeMobility({})", self.server.addr())
    }
}

/// The node's migration links for `identity`: they admit exactly the DIDs in the returned
/// allow-list, empty until the RC lists the colony's members.
/// With `security_off` (a dev config's `security_off_for_measurement`) they are plain TCP.
pub fn links(
    identity: &Identity,
    security_off: bool,
) -> Result<(Link, Arc<AllowList>), opengrid_link::LinkError> {
    let members = Arc::new(AllowList::new([]));
    let link = if security_off {
        Link::plaintext_for_measurement(
            opengrid_session::Did::from_public_key(&identity.signing_key().verifying_key()),
            members.clone(),
        )
    } else {
        Link::new(
            &LinkIdentity::from_signing_key(&identity.signing_key())?,
            members.clone(),
        )?
    };
    Ok((link, members))
}

/// Builds the replicated store around a node's local store (every replica in a session's set
/// must acknowledge: the RC sizes the set), its instruments on `meter`, its replicas reached
/// over `link`.
pub fn replicated(
    local: Arc<dyn CheckpointStore>,
    meter: opentelemetry::metrics::Meter,
    link: Link,
) -> Arc<ReplicatedStore> {
    Arc::new(ReplicatedStore::new(
        local,
        ReplicationConfig {
            k: usize::MAX,
            timeout: Duration::from_secs(2),
            meter: Some(meter),
        },
        link,
    ))
}

impl NodeMobility {
    /// Starts the `og-migrate` runtime and the migration server (over `link`, which admits the
    /// DIDs in `members`: see [`links`]; session requests need the RC's grants, refusals counted
    /// on `meter`).
    pub fn start(
        cfg: &NodeConfig,
        host: SessionHost,
        local: Arc<dyn CheckpointStore>,
        store: Arc<ReplicatedStore>,
        (link, members): (Link, Arc<AllowList>),
        meter: opentelemetry::metrics::Meter,
    ) -> std::io::Result<Arc<Self>> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("og-migrate")
            .enable_all()
            .build()?;
        let draining = Arc::new(AtomicBool::new(false));
        let incoming = Arc::new(Incoming {
            host: host.clone(),
            store: store.clone(),
            capacity: cfg.capacity as usize,
            draining: draining.clone(),
            core: OnceLock::new(),
        });
        let rc = RcKey::new();
        let security = Security {
            link: link.clone(),
            grants: if cfg.security_off_for_measurement {
                GrantPolicy::LinkOnly
            } else {
                GrantPolicy::RcSigned(rc.clone())
            },
            meter: Some(meter),
        };
        let (addr, l2, i2) = (cfg.migration_listen, local.clone(), incoming.clone());
        let server = std::thread::scope(|s| {
            s.spawn(|| {
                rt.block_on(async move {
                    MigrationServer::bind(addr, host, l2, i2 as Arc<dyn AdmitIncoming>, security)
                        .await
                })
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("migration server start panicked")))
        });
        let server = match server {
            Ok(s) => s,
            Err(e) => {
                // Called from async start-up code: dropping a runtime here would panic
                // ("Cannot drop a runtime in a context where blocking is not allowed").
                rt.shutdown_background();
                return Err(e);
            }
        };
        Ok(Arc::new(NodeMobility {
            store,
            local,
            server,
            link,
            members,
            rc,
            peers: Mutex::new(HashMap::new()),
            incoming,
            runtime: Mutex::new(Some(rt)),
            draining,
            plans: Mutex::new(HashMap::new()),
            next_plan: AtomicU64::new(1),
            drain_report: Mutex::new(None),
        }))
    }

    /// Ties the mobility to its node (RC notifications, lease checks).
    pub fn attach(&self, core: &Arc<NodeCore>) {
        let _ = self.incoming.core.set(Arc::downgrade(core));
    }

    /// The colony's nodes as the RC lists them: the only DIDs admitted on migration links
    /// (new handshakes; open links stay).
    pub fn set_members(&self, nodes: &[NodeId]) {
        self.members.replace(nodes.iter().map(|n| n.did_value()));
        tracing::debug!(members = nodes.len(), "migration link members updated");
    }

    /// Admits one more member's migration links ([`crate::common::wire::ToNode::MembersJoined`]).
    pub fn add_member(&self, node: &NodeId) {
        self.members.insert(node.did_value());
        tracing::debug!(member = %node, "migration link member added");
    }

    /// A client of the migration server at `addr`: one of at most [`PEERS_PER_ADDR`] kept per
    /// address, used in turn (each serves one request at a time). Bounding them bounds the TLS
    /// handshakes a burst of seeds, restores or handovers costs (a colony join repairs the
    /// replica sets of every session at once).
    fn peer_for(&self, addr: SocketAddr) -> Arc<Peer> {
        let mut pool = lock(&self.peers);
        let (peers, next) = pool.entry(addr).or_default();
        if peers.len() < PEERS_PER_ADDR {
            let p = Peer::new(addr, self.link.clone(), Duration::from_secs(5));
            peers.push(p.clone());
            return p;
        }
        *next = next.wrapping_add(1);
        peers[*next % peers.len()].clone()
    }

    /// One request to the migration server at `addr` within `budget`, on a pooled client.
    async fn call(
        &self,
        addr: SocketAddr,
        req: &Request,
        budget: Duration,
    ) -> Result<Response, String> {
        self.peer_for(addr)
            .call_within(req, budget)
            .await
            .map_err(|e| e.to_string())
    }

    /// The RC whose grants this node's migration server accepts.
    pub fn set_rc(&self, rc: &NodeId) {
        self.rc.set(rc.did_value());
    }

    /// The migration server's address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Whether the node is draining.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The last drain's report.
    pub fn last_drain(&self) -> Option<DrainReport> {
        lock(&self.drain_report).clone()
    }

    /// Stops the migration server and its runtime (without waiting).
    pub fn stop(&self) {
        self.server.shutdown();
        if let Some(rt) = lock(&self.runtime).take() {
            rt.shutdown_background();
        }
    }

    /// A new replica set for a hosted session: members new to the set get the newest checkpoint
    /// now (an idle session may not write another for a long time), then the set is switched.
    pub async fn change_replicas(&self, sid: &SessionId, replicas: &[String]) {
        let new = addrs(replicas);
        let old = self.store.replicas(sid);
        let fresh: Vec<SocketAddr> = new.iter().filter(|a| !old.contains(a)).copied().collect();
        // Switch first: every checkpoint from now on reaches the new set; then seed it with the
        // newest one (an older seed arriving after a newer write is ignored by the replica).
        self.store.set_replicas(sid, new);
        if !fresh.is_empty() {
            if let Ok(Some(cp)) = self.local.get_latest(sid) {
                let frame = cp.encode();
                let writes = fresh.iter().map(|a| {
                    let req = Request::Replicate {
                        checkpoint: frame.clone(),
                        grant: self.store.grant(sid),
                    };
                    async move { (*a, self.call(*a, &req, Duration::from_secs(2)).await) }
                });
                for (a, r) in futures::future::join_all(writes).await {
                    if !matches!(r, Ok(Response::Ok)) {
                        tracing::warn!(session = %sid, replica = %a, "seeding a new replica failed; it gets the next checkpoint");
                    }
                }
            }
        }
        tracing::debug!(session = %sid, replicas = ?replicas, "replica set changed");
    }

    pub(crate) fn on_plan(&self, req: u64, plan: Result<HandoverTarget, String>) {
        if let Some(tx) = lock(&self.plans).remove(&req) {
            let _ = tx.send(plan);
        }
    }
}

impl Drop for NodeMobility {
    fn drop(&mut self) {
        self.stop();
    }
}

fn addrs(list: &[String]) -> Vec<SocketAddr> {
    list.iter().filter_map(|a| a.parse().ok()).collect()
}

impl NodeCore {
    /// The mobility machinery (set at start).
    pub fn mobility(&self) -> Option<&Arc<NodeMobility>> {
        self.mobility.get()
    }

    async fn plan_handover(
        &self,
        sid: &SessionId,
        target: Option<String>,
    ) -> Result<HandoverTarget, MoveError> {
        let mob = self.mobility().ok_or(MoveError::NoMobility)?;
        let req = mob.next_plan.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&mob.plans).insert(req, tx);
        if !self.send_to_rc(ToRc::PlanHandover {
            node: self.id(),
            req,
            session: sid.to_string(),
            target,
        }) {
            lock(&mob.plans).remove(&req);
            return Err(MoveError::NoTarget("the RC is not reachable".into()));
        }
        match tokio::time::timeout(Duration::from_secs(3), rx).await {
            Ok(Ok(Ok(t))) => Ok(t),
            Ok(Ok(Err(why))) => Err(MoveError::NoTarget(why)),
            _ => {
                lock(&mob.plans).remove(&req);
                Err(MoveError::NoTarget("the RC did not answer in 3s".into()))
            }
        }
    }

    /// Hands `sid` over live to the node the RC picks (or `target`, a node name or did, if it
    /// passes admission). The session keeps serving here if anything fails before activation.
    pub async fn handover(
        self: &Arc<Self>,
        sid: &SessionId,
        target: Option<String>,
    ) -> Result<MoveReport, MoveError> {
        let mob = self.mobility().ok_or(MoveError::NoMobility)?.clone();
        let s = self
            .host
            .get(sid)
            .ok_or_else(|| MoveError::NotHere(sid.clone()))?;
        if matches!(
            s.status(),
            SessionStatus::Moved { .. } | SessionStatus::Closed | SessionStatus::Stopped { .. }
        ) {
            return Err(MoveError::NotHere(sid.clone()));
        }
        if !self.may_serve() {
            return Err(MoveError::NotServing);
        }
        if !s.policy().live_handover {
            return Err(MoveError::Handover(HandoverError::NeverLive(sid.clone())));
        }
        let plan = self.plan_handover(sid, target).await?;
        let peer_addr: SocketAddr = plan.migration.parse().map_err(|e| {
            MoveError::NoTarget(format!("bad migration address {:?}: {e}", plan.migration))
        })?;
        // Its own connection: the activation's blackout budget never waits behind another
        // session's request (the handshake is paid at `prepare`, before the freeze).
        let peer = Peer::new(peer_addr, mob.link.clone(), Duration::from_secs(5));
        let opts = HandoverOptions {
            location: plan.api.clone(),
            target_replicas: addrs(&plan.replicas),
            grant: plan.grant.clone(),
            ..HandoverOptions::default()
        };
        let (host, store, sid2) = (
            self.host.clone(),
            mob.store.clone() as Arc<dyn CheckpointStore>,
            sid.clone(),
        );
        let started = Instant::now();
        let r =
            self.handlers
                .spawn(async move {
                    opengrid_migration::handover(&host, &store, &sid2, &peer, &opts).await
                })
                .await
                .map_err(|e| MoveError::NoTarget(format!("handover task failed: {e}")))?;
        match r {
            Ok(report) => {
                self.metrics
                    .handovers
                    .add(1, &[opentelemetry::KeyValue::new("outcome", "completed")]);
                self.metrics
                    .handover_blackout_seconds
                    .record(report.blackout.as_secs_f64(), &[]);
                tracing::info!(session = %sid, to = %plan.name, epoch = %report.epoch,
                    blackout_us = report.blackout.as_micros() as u64,
                    total_ms = started.elapsed().as_millis() as u64, "handed over");
                // Its usage here since the last window end is billed now (the target bills
                // from here on).
                self.receipts
                    .close_window(sid, s.usage_counters().snapshot());
                self.forget_later(sid.clone());
                Ok(MoveReport::new(&plan, &report))
            }
            Err(e) => {
                self.metrics
                    .handovers
                    .add(1, &[opentelemetry::KeyValue::new("outcome", "aborted")]);
                tracing::warn!(session = %sid, to = %plan.name, error = %e, "handover aborted");
                Err(MoveError::Handover(e))
            }
        }
    }

    /// After a handover: keep relaying for [`FORWARD_FOR`], then forget the session here (the
    /// release ends the relaying).
    fn forget_later(self: &Arc<Self>, sid: SessionId) {
        let host = self.host.clone();
        self.handlers.spawn(async move {
            tokio::time::sleep(FORWARD_FOR).await;
            if let Some(s) = host.get(&sid) {
                if matches!(s.status(), SessionStatus::Moved { .. }) {
                    let _ = host.release(&sid).await;
                }
            }
        });
    }

    /// Sessions still served here (not moved, closed or stopped).
    pub fn serving_sessions(&self) -> Vec<SessionId> {
        self.host
            .session_ids()
            .into_iter()
            .filter(|id| {
                self.host.get(id).is_some_and(|s| {
                    !matches!(
                        s.status(),
                        SessionStatus::Moved { .. }
                            | SessionStatus::Closed
                            | SessionStatus::Stopped { .. }
                    )
                })
            })
            .collect()
    }

    /// Drains the node: nothing new is placed here; live sessions are handed over, never-live
    /// ones checkpointed and restarted elsewhere. Returns when no session is left or after the
    /// configured drain timeout.
    pub async fn drain(self: &Arc<Self>) -> DrainReport {
        let t0 = Instant::now();
        let Some(mob) = self.mobility().cloned() else {
            return DrainReport::default();
        };
        mob.draining.store(true, Ordering::Release);
        self.send_to_rc(ToRc::Draining { node: self.id() });
        let deadline = t0 + self.cfg.drain_timeout.0;
        tracing::info!(sessions = self.serving_sessions().len(), "draining");
        let mut report = DrainReport::default();
        let mut failures: HashMap<SessionId, (u32, String)> = HashMap::new();
        let sem = Arc::new(tokio::sync::Semaphore::new(self.cfg.handover_parallelism));
        while Instant::now() < deadline {
            let left: Vec<SessionId> = self
                .serving_sessions()
                .into_iter()
                .filter(|s| failures.get(s).is_none_or(|(n, _)| *n < 5))
                .collect();
            if left.is_empty() {
                break;
            }
            let mut tasks = tokio::task::JoinSet::new();
            for sid in left {
                let (me, sem) = (self.clone(), sem.clone());
                tasks.spawn(async move {
                    let _permit = sem.acquire_owned().await;
                    let r = me.leave(&sid).await;
                    (sid, r)
                });
            }
            while let Some(j) = tasks.join_next().await {
                let Ok((sid, r)) = j else { continue };
                match r {
                    Ok(true) => report.handed_over += 1,
                    Ok(false) => report.restarted += 1,
                    Err(e) => {
                        let f = failures.entry(sid).or_insert((0, String::new()));
                        f.0 += 1;
                        f.1 = e.to_string();
                    }
                }
            }
            if !self.serving_sessions().is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let remaining = self.serving_sessions();
        report.failed = failures
            .into_iter()
            .filter(|(s, _)| remaining.contains(s))
            .map(|(s, (_, why))| (s.to_string(), why))
            .collect();
        report.remaining = remaining.len();
        report.took_ms = t0.elapsed().as_millis() as u64;
        tracing::info!(
            handed_over = report.handed_over,
            restarted = report.restarted,
            remaining = report.remaining,
            took_ms = report.took_ms,
            "drain finished"
        );
        *lock(&mob.drain_report) = Some(report.clone());
        report
    }

    /// One session leaves: live handover (`Ok(true)`), or checkpoint + restart elsewhere for
    /// never-live sessions (`Ok(false)`).
    async fn leave(self: &Arc<Self>, sid: &SessionId) -> Result<bool, MoveError> {
        let s = self
            .host
            .get(sid)
            .ok_or_else(|| MoveError::NotHere(sid.clone()))?;
        if s.policy().live_handover {
            return self.handover(sid, None).await.map(|_| true);
        }
        let epoch = s.epoch();
        let host = self.host.clone();
        let sid2 = sid.clone();
        let r = self
            .handlers
            .spawn(async move { host.release(&sid2).await })
            .await
            .map_err(|e| MoveError::NoTarget(format!("release task failed: {e}")))?;
        match r {
            Ok(_) => {
                self.receipts
                    .close_window(sid, s.usage_counters().snapshot());
                self.send_to_rc(ToRc::Released {
                    node: self.id(),
                    session: sid.to_string(),
                    epoch: epoch.0,
                });
                Ok(false)
            }
            Err(e) => Err(MoveError::NoTarget(format!("release: {e}"))),
        }
    }

    /// Before a session starts here: point its checkpoints at `replicas`; when `restore_from`
    /// is set (failover or restart), install the newest checkpoint found among those holders and
    /// the local store, re-written with `epoch` to the new replicas and the old holders so that
    /// the earlier epoch is fenced everywhere before the session serves.
    pub(crate) async fn prepare_start(
        &self,
        sid: &SessionId,
        epoch: Epoch,
        replicas: &[String],
        restore_from: &[String],
    ) -> Result<(), String> {
        let Some(mob) = self.mobility().cloned() else {
            return Ok(());
        };
        let replica_addrs = addrs(replicas);
        mob.store.set_replicas(sid, replica_addrs.clone());
        if restore_from.is_empty() {
            return Ok(());
        }
        let me = mob.addr();
        let holders: Vec<SocketAddr> = addrs(restore_from)
            .into_iter()
            .filter(|a| *a != me)
            .collect();
        let mut newest: Option<Checkpoint> = mob.local.get_latest(sid).ok().flatten();
        let mut reached = 0usize;
        let fetches = holders.iter().map(|a| {
            let req = Request::Latest {
                session: sid.clone(),
                grant: mob.store.grant(sid),
            };
            let mob = &mob;
            async move { (*a, mob.call(*a, &req, Duration::from_secs(2)).await) }
        });
        for (a, r) in futures::future::join_all(fetches).await {
            match r {
                Ok(Response::Checkpoint { checkpoint }) => {
                    reached += 1;
                    if let Some(cp) = checkpoint.and_then(|b| Checkpoint::decode(&b).ok()) {
                        if newest.as_ref().is_none_or(|n| cp.supersedes(n)) {
                            newest = Some(cp);
                        }
                    }
                }
                other => {
                    tracing::warn!(holder = %a, answer = ?other.map(|_| ()), "replica holder not reachable for restore")
                }
            }
        }
        let Some(cp) = newest else {
            return Err(format!(
                "no checkpoint of {sid} found locally or on {} of {} replica holders; refusing to start it empty",
                reached,
                holders.len()
            ));
        };
        if cp.epoch >= epoch {
            return Err(format!(
                "newest checkpoint of {sid} has epoch {} ≥ the restore epoch {epoch}",
                cp.epoch
            ));
        }
        let bumped = cp.restamped(epoch);
        // Fence the earlier epoch on every holder we can reach (new replicas + old holders).
        let mut fence_set: Vec<SocketAddr> = replica_addrs.clone();
        for h in holders {
            if !fence_set.contains(&h) {
                fence_set.push(h);
            }
        }
        let frame = bumped.encode();
        let writes = fence_set.iter().map(|a| {
            let req = Request::Replicate {
                checkpoint: frame.clone(),
                grant: mob.store.grant(sid),
            };
            let mob = &mob;
            async move { (*a, mob.call(*a, &req, Duration::from_secs(2)).await) }
        });
        let mut acks = 0;
        for (a, r) in futures::future::join_all(writes).await {
            match r {
                Ok(Response::Ok) => acks += 1,
                Ok(Response::Fenced { current }) => {
                    return Err(format!("{a} holds a newer epoch {current} of {sid}"))
                }
                other => {
                    tracing::warn!(holder = %a, answer = ?other.map(|_| ()), "could not fence an earlier holder")
                }
            }
        }
        // An fsync'd write: off the runtime that runs this task (the control runtime), so that
        // a thousand restores at once neither delay heartbeats nor queue behind each other's
        // sync (concurrent writes share one WAL sync).
        let local = mob.local.clone();
        tokio::task::spawn_blocking(move || local.put(&bumped))
            .await
            .map_err(|e| format!("local checkpoint store: write task: {e}"))?
            .map_err(|e| format!("local checkpoint store: {e}"))?;
        tracing::info!(session = %sid, %epoch, seq = %cp.seq, from_epoch = %cp.epoch, fenced = acks, "restored from replicas");
        Ok(())
    }
}

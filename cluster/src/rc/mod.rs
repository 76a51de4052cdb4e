//! The routing coordinator (RC) of a colony: membership (signed joins over an authenticated
//! ractor_cluster link), failure detection (phi-accrual + leases), admission, placement orders and
//! the session directory. Runs entirely on the control-plane runtime. Its rooms:
//!
//! - [`config`]: `rc.toml`; [`server`]: `start_rc`; [`api`]: the RC's client API router;
//! - [`control`]: the control plane — sealed messages from nodes, joins and their link keys,
//!   heartbeats and leases, failure detection; [`events`] and [`ui`]: the dashboard's feed;
//! - [`admission`]: the in-memory node table, filters and scoring; [`mobility`]: replica sets,
//!   failover, handover requests, reconciliation of holding reports;
//! - [`federation`]: canopy gossip, treaties and cross-colony routing; [`settlement`]:
//!   co-signing, batching and settling compute receipts; [`group`]: the RC group (ADR 0037) —
//!   the Raft replica, office, and what it replicates; [`directory`]: the directory and its
//!   durable records.
//!
//! Why this file (~1,035 lines before its tests) stays one piece: it is the RC's core — the
//! types every room shares ([`RcCore`], `RcState`, [`DirEntry`], `Member`), the placement
//! path (`place`: admission, quota, start order, directory entry) and the status view. Each
//! piece reads and writes `RcState` under one lock in one order; the rooms above already took
//! what has its own concern (control, mobility, settlement, group). Moving `place` into its own
//! room is the next split when it grows again.
//!
//! The RC never names the node's code ([`crate::node`]): both speak [`crate::common::wire`].

pub mod admission;
pub mod agents;
pub mod agents_api;
pub mod api;
pub mod config;
pub mod control;
pub mod directory;
pub mod events;
pub mod federation;
pub mod gateway;
pub mod group;
pub mod mobility;
pub mod server;
pub mod settlement;
pub mod ui;
pub mod warm;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use opengrid_session::{Epoch, Manifest, SessionId};
use opentelemetry::KeyValue;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::common::failure::PhiDetector;
use crate::common::identity::{Identity, NodeId};
use crate::common::metrics::Metrics;
use crate::common::throttle::Throttle;
use crate::common::wire::{self, pick, NodeMsg, RcLocal, RcMsg, ToNode};
use crate::rc::admission::{Colony, Decision, Rejection, Requirements};
use crate::rc::config::RcConfig;
use crate::rc::events::ColonyEvent;

/// Where a session lives, per the directory.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct DirEntry {
    /// Session id.
    #[schema(value_type = String)]
    pub session_id: SessionId,
    /// Holder.
    #[schema(value_type = String)]
    pub node: NodeId,
    /// Holder's name.
    pub node_name: String,
    /// Holder's client API.
    pub address: String,
    /// Placement epoch.
    #[schema(value_type = u64)]
    pub epoch: Epoch,
    /// Handler id.
    pub handler: String,
    /// Memory reserved.
    pub memory: u64,
    /// State.
    pub state: DirState,
    /// Checkpoint replica holders (k, within the manifest's allowed jurisdictions).
    #[schema(value_type = Vec<String>)]
    pub replicas: Vec<NodeId>,
    /// Why an orphaned session is not placed again yet (e.g. no surviving node in an allowed
    /// jurisdiction).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// Who created it (the client's address; `None` for an operator, a peer RC's placement or a
    /// session learnt from a node's report): what its quota is charged to.
    #[serde(rename = "client", skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The manifest (failover and handover placement need it); shown as its loss bound,
    /// `acceptable_loss` (`"0s"`: zero loss).
    #[serde(
        rename = "acceptable_loss",
        serialize_with = "serialize_loss",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub manifest: Option<Arc<Manifest>>,
}

fn serialize_loss<S: serde::Serializer>(
    m: &Option<Arc<Manifest>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match m {
        Some(m) => s.serialize_str(&m.migration.acceptable_loss.to_string()),
        None => s.serialize_none(),
    }
}

/// Directory state of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DirState {
    /// Placement order sent, not yet confirmed.
    Starting,
    /// Active on its node.
    Active,
    /// Its node lost its lease (and the grace passed): it may be placed again with epoch + 1.
    Orphaned,
}

/// A member as shown by `opengrid status`.
#[derive(Clone, Debug, Serialize)]
pub struct MemberStatus {
    /// Id.
    pub node: NodeId,
    /// Name.
    pub name: String,
    /// Jurisdiction.
    pub jurisdiction: String,
    /// API.
    pub address: String,
    /// `alive` | `joining` (joined; placeable once the other members were told, at the RC's
    /// next tick) | `draining` | `dead`.
    pub state: &'static str,
    /// Sessions: as its last heartbeat said while alive; once dead, those the directory still
    /// places on it (none once they failed over).
    pub sessions: u32,
    /// Capacity.
    pub capacity: u32,
    /// RTT, µs.
    pub rtt_us: u64,
    /// Current phi.
    pub phi: f64,
    /// Ms since the last heartbeat.
    pub last_heartbeat_ms: u64,
}

/// A directory entry as `/status` shows it, with its replica coverage.
#[derive(Clone, Debug, Serialize)]
pub struct SessionView {
    /// The entry.
    #[serde(flatten)]
    pub entry: DirEntry,
    /// Copies beyond the holder the session requires (manifest `migration.min_copies`, raised to
    /// the colony floor).
    pub min_copies: u32,
    /// Alive replica holders in its set.
    pub alive_replicas: usize,
    /// Fewer alive replica holders than `min_copies`: a zero-loss session refuses inputs (and a
    /// bounded-loss one answers `durable: false`) until the RC repairs its set.
    pub below_min_copies: bool,
    /// Fewer alive replica holders than the colony's k (`replicas`).
    pub below_k: bool,
    /// For a pushed agent's session (`handler` is then `wasm`, what admission matched): the
    /// agent it runs, `name@version`, and its package hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The agent's package hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
}

/// Colony status.
#[derive(Clone, Debug, Serialize)]
pub struct ColonyStatus {
    /// Colony name.
    pub colony: String,
    /// RC id.
    pub rc: NodeId,
    /// Members.
    pub members: Vec<MemberStatus>,
    /// Directory.
    pub sessions: Vec<SessionView>,
}

pub(crate) struct Member {
    pub(crate) name: String,
    detector: PhiDetector,
    pub(crate) last_recv: Instant,
    pub(crate) alive: bool,
    /// Blobs the node last reported holding ([`ToRc::Blobs`]; ADR 0031).
    pub(crate) blobs: std::collections::HashSet<String>,
    /// Read back from the directory's durable copy at the RC's start, not heard from since: not
    /// judged by phi (one sample says nothing), only by the lease grace.
    pub(crate) restored: bool,
    /// When its sessions were last orphaned after its lease grace ran out: once at the grace's
    /// end, then every [`crate::rc::control::EXPIRED_RECHECK`] (an entry that reached it since,
    /// e.g. a restore it answered just before dying); a member that comes back is a new `Member`.
    pub(crate) expired: Option<Instant>,
}

/// The DIDs of the RC group's voters named in `[group] peers` (none for a single RC).
fn group_dids(cfg: &RcConfig) -> Vec<NodeId> {
    if !cfg.group.enabled() {
        return Vec::new();
    }
    opengrid_consensus::RaftNodeConfig::parse_peers(&cfg.group.peers.join(","))
        .map(|peers| {
            peers
                .values()
                .filter_map(|n| n.did.as_ref())
                .filter_map(|d| NodeId::parse(&d.to_string()).ok())
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) struct RcState {
    pub(crate) colony: Colony,
    pub(crate) members: HashMap<NodeId, Member>,
    pub(crate) directory: crate::rc::directory::Directory,
    /// Per client (directory `owner`): live sessions and memory they reserve (quotas).
    pub(crate) usage: HashMap<String, (u32, u64)>,
    /// Session mobility bookkeeping (failover, handover plans, drains).
    pub(crate) mob: crate::rc::mobility::MobilityState,
    /// Members new to the colony whose join the others have not been told yet
    /// ([`RcCore::announce_members`]); not placeable until then.
    pub(crate) unannounced: std::collections::HashSet<NodeId>,
    /// When the last announcement went out (at most one per heartbeat period).
    pub(crate) announced_at: Option<Instant>,
}

impl RcState {
    /// Empty tables (a new RC, or a group replica that is not in office).
    pub(crate) fn fresh() -> RcState {
        RcState {
            colony: Colony::new(),
            members: HashMap::new(),
            directory: Default::default(),
            usage: HashMap::new(),
            mob: Default::default(),
            unannounced: Default::default(),
            announced_at: None,
        }
    }
}

/// Why a placement did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// No node satisfies the manifest.
    #[error("no node satisfies the manifest ({} nodes considered)", why.len())]
    Unsatisfiable {
        /// Per node, why.
        why: Vec<(NodeId, String, Rejection)>,
    },
    /// The session id is already active.
    #[error("session {session} is already placed on {address} (epoch {epoch})")]
    AlreadyPlaced {
        /// Session.
        session: SessionId,
        /// Holder API.
        address: String,
        /// Epoch.
        epoch: Epoch,
    },
    /// A zero-loss session needs more copies beyond its holder than the colony keeps.
    #[error(transparent)]
    CopiesUnreachable(#[from] CopiesUnreachable),
    /// The client already holds its quota of sessions or reserved memory (`client_max_sessions`,
    /// `client_max_memory`).
    #[error("quota exceeded for client {client}: {what}")]
    Quota {
        /// The client (its address).
        client: String,
        /// Which limit, with the numbers.
        what: String,
    },
    /// The manifest's `agent` does not resolve in the registry.
    #[error(transparent)]
    Agent(#[from] crate::rc::agents::RegistryError),
    /// No node can take it now, but members this RC inherited (it just took office, or
    /// restarted) have not rejoined yet and may: retry shortly.
    #[error("{waiting} member(s) of the colony have not rejoined this RC yet (it took office moments ago): retry")]
    Rejoining {
        /// Members not rejoined yet.
        waiting: usize,
    },
    /// The chosen node failed to start it or did not answer in time.
    #[error("node {node} could not start the session: {reason}")]
    NodeFailed {
        /// Node.
        node: NodeId,
        /// Why.
        reason: String,
    },
}

/// A zero-loss manifest needs more copies beyond its holder than the colony keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("migration.min_copies = {need} but this colony keeps {replicas} replicas per session (RC `replicas`): no input could ever be acknowledged")]
pub struct CopiesUnreachable {
    /// Copies required (manifest, raised to the colony floor).
    pub need: u32,
    /// The colony's k.
    pub replicas: usize,
}

/// Charges a new session of `memory` bytes to `owner`'s quota usage.
pub(crate) fn charge(usage: &mut HashMap<String, (u32, u64)>, owner: Option<&str>, memory: u64) {
    if let Some(o) = owner {
        let u = usage.entry(o.to_string()).or_default();
        u.0 = u.0.saturating_add(1);
        u.1 = u.1.saturating_add(memory);
    }
}

/// Gives a closed session's share of `owner`'s quota back.
pub(crate) fn release(usage: &mut HashMap<String, (u32, u64)>, owner: Option<&str>, memory: u64) {
    if let Some(o) = owner {
        if let Some(u) = usage.get_mut(o) {
            u.0 = u.0.saturating_sub(1);
            u.1 = u.1.saturating_sub(memory);
            if u.0 == 0 {
                usage.remove(o);
            }
        }
    }
}

/// A successful placement.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Placement {
    /// Session id.
    #[schema(value_type = String)]
    pub session_id: SessionId,
    /// Node id.
    #[schema(value_type = String)]
    pub node: NodeId,
    /// Node name.
    pub node_name: String,
    /// Node client API base URL.
    pub address: String,
    /// Epoch.
    #[schema(value_type = u64)]
    pub epoch: Epoch,
    /// The session's capability (a token signed by this RC): inputs, info, streaming and close
    /// need it (ADR 0026).
    pub capability: Option<String>,
}

/// The RC's shared state.
pub struct RcCore {
    /// Config.
    pub cfg: RcConfig,
    identity: Identity,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    pub(crate) state: Mutex<RcState>,
    /// The directory's durable copy, when the RC keeps one ([`RcCore::open_directory`]).
    pub(crate) directory_store: OnceLock<crate::rc::directory::DirectoryStore>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Option<String>>>>,
    next_req: AtomicU64,
    api: OnceLock<String>,
    federation: OnceLock<Arc<crate::rc::federation::Federation>>,
    /// Receipt co-signing and settlement, when `[settlement] ledger` is set.
    settlement: Option<Arc<crate::rc::settlement::Settler>>,
    /// "Fewer eligible replica holders than k" holds on every repair tick while a holder is
    /// missing: logged at most every 30 s.
    pub(crate) replica_shortfall_log: Throttle,
    /// The live event feed (`GET /ui/events`).
    pub events: crate::rc::events::EventFeed,
    /// Agent packages ordered onto nodes ahead of demand and not reported held yet.
    pub(crate) warming: crate::rc::warm::Warming,
    /// Control links with joined nodes ([`crate::common::seal`]).
    links: Mutex<HashMap<NodeId, crate::common::seal::Link>>,
    /// Refused control messages, logged at most every 10 s.
    refused_log: Throttle,
    /// Who may call what on the client API.
    pub access: crate::common::access::Access,
    /// The colony's agent registry (set once at start, ADR 0030).
    agents: OnceLock<Arc<crate::rc::agents::Registry>>,
    /// This RC's replica of the colony's RC group, when it runs as one (`[group]`, ADR 0037).
    pub(crate) group: OnceLock<Arc<crate::rc::group::RcGroup>>,
    /// This core itself, for work it hands to tasks (set by [`crate::rc::server::start_rc`]).
    this: OnceLock<std::sync::Weak<RcCore>>,
}

impl std::fmt::Debug for RcCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RcCore({})", self.identity.id())
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn node_ref(id: &NodeId) -> Option<ActorRef<NodeMsg>> {
    pick(ractor::pg::get_scoped_members(
        &wire::PG_SCOPE.to_string(),
        &wire::pg_node(id),
    ))
}

impl RcCore {
    /// A new RC core.
    pub fn new(cfg: RcConfig, identity: Identity) -> Self {
        let settlement = crate::rc::settlement::Settler::new(&cfg.settlement, &identity);
        let mut operators = vec![identity.id()];
        operators.extend(crate::common::access::parse_operators(&cfg.operators));
        // Every replica of the RC group issues capabilities and operator tokens: whichever leads
        // honours those its predecessors signed.
        let mut issuers = vec![identity.id()];
        for id in group_dids(&cfg) {
            if !issuers.contains(&id) {
                issuers.push(id);
                operators.push(id);
            }
        }
        let mut access = crate::common::access::Access::new(operators, issuers);
        if cfg.security_off_for_measurement {
            tracing::warn!("SECURITY OFF (security_off_for_measurement): open client API, no quotas, no capabilities; benchmarks only");
            access = access.open_for_measurement();
        }
        RcCore {
            cfg,
            identity,
            metrics: Arc::new(Metrics::new("rc")),
            state: Mutex::new(RcState::fresh()),
            directory_store: OnceLock::new(),
            pending: Mutex::new(HashMap::new()),
            next_req: AtomicU64::new(1),
            api: OnceLock::new(),
            federation: OnceLock::new(),
            settlement,
            replica_shortfall_log: Throttle::new(Duration::from_secs(30)),
            events: Default::default(),
            warming: Default::default(),
            links: Mutex::new(HashMap::new()),
            refused_log: Throttle::new(Duration::from_secs(10)),
            access,
            agents: OnceLock::new(),
            group: OnceLock::new(),
            this: OnceLock::new(),
        }
    }

    /// Remembers the `Arc` this core lives in (tasks it spawns hold it weakly).
    pub(crate) fn set_self(self: &Arc<Self>) {
        let _ = self.this.set(Arc::downgrade(self));
    }

    /// The `Arc` this core lives in, while it does.
    pub(crate) fn self_arc(&self) -> Option<Arc<RcCore>> {
        self.this.get().and_then(std::sync::Weak::upgrade)
    }

    /// Whether this RC acts as the colony's RC now: always for a single RC; for a replica of an
    /// RC group, while it leads and a quorum confirmed it within the election timeout
    /// ([`crate::rc::group`]). Nothing is granted, placed or declared dead otherwise.
    pub fn acting(&self) -> bool {
        self.group.get().is_none_or(|g| g.acting())
    }

    /// This RC's replica of the RC group, when it runs as one.
    pub fn group(&self) -> Option<&Arc<crate::rc::group::RcGroup>> {
        self.group.get()
    }

    /// An operator token signed by this RC's own key, valid for `valid` (for an embedding
    /// application or test acting as the colony's operator; `None`, logged, if signing failed).
    pub fn operator_token(&self, valid: Duration) -> Option<String> {
        crate::common::token::mint_operator(&self.identity, valid)
            .inspect_err(|e| tracing::error!(error = %e, "operator token not minted"))
            .ok()
    }

    /// A fresh capability of `session`, signed by this RC (`None`, logged, if signing failed).
    pub fn capability(&self, session: &SessionId) -> Option<String> {
        if self.cfg.security_off_for_measurement {
            return None;
        }
        crate::common::token::mint_session(
            &self.identity,
            session.as_str(),
            self.cfg.capability_ttl.0,
        )
        .inspect_err(|e| tracing::error!(%session, error = %e, "capability not minted"))
        .ok()
    }

    /// The RC's id.
    pub fn id(&self) -> NodeId {
        self.identity.id()
    }

    /// Sets the client-API base URL (once the listener is bound).
    pub fn set_api(&self, url: String) {
        let _ = self.api.set(url);
    }

    /// The client-API base URL.
    pub fn api(&self) -> String {
        self.api.get().cloned().unwrap_or_default()
    }

    /// Receipt co-signing and settlement, when `[settlement] ledger` is set.
    pub fn settlement(&self) -> Option<&Arc<crate::rc::settlement::Settler>> {
        self.settlement.as_ref()
    }

    /// The canopy and cross-colony routing, when `[canopy] enabled`.
    pub fn federation(&self) -> Option<&Arc<crate::rc::federation::Federation>> {
        self.federation.get()
    }

    /// The agent registry, once opened at start.
    pub fn agents(&self) -> Option<&Arc<crate::rc::agents::Registry>> {
        self.agents.get()
    }

    /// Attaches the agent registry (once, at start).
    pub fn set_agents(&self, r: Arc<crate::rc::agents::Registry>) {
        let _ = self.agents.set(r);
    }

    /// The alive colony members (nodes fetch agent packages with tokens signed by
    /// their own key).
    /// Alive members holding blob `hash`: (node, its client API).
    pub fn blob_holders(&self, hash: &str) -> Vec<(NodeId, String)> {
        let st = lock(&self.state);
        st.members
            .iter()
            .filter(|(_, m)| m.alive && m.blobs.contains(hash))
            .filter_map(|(id, _)| Some((*id, st.colony.get(id)?.spec.api.clone())))
            .collect()
    }

    pub fn member_ids(&self) -> Vec<NodeId> {
        lock(&self.state)
            .members
            .iter()
            .filter(|(_, m)| m.alive)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Attaches the federation (once, at start).
    pub(crate) fn set_federation(&self, f: Arc<crate::rc::federation::Federation>) {
        let _ = self.federation.set(f);
    }

    /// The RC's identity (its key also signs canopy summaries and RC-to-RC requests).
    pub(crate) fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Runs `f` on the admission table under its lock (keep `f` short: it blocks admission).
    pub fn with_colony<R>(&self, f: impl FnOnce(&Colony) -> R) -> R {
        f(&lock(&self.state).colony)
    }

    /// Admission only (no placement): what the RC would decide for `m` now.
    pub fn probe(&self, m: &Manifest) -> Decision {
        let req = Requirements::from_manifest(m);
        let t = Instant::now();
        let d = lock(&self.state).colony.admit(&req);
        self.metrics
            .admission_seconds
            .record(t.elapsed().as_secs_f64(), &[]);
        d
    }

    /// `m` as this colony enforces it: `migration.min_copies` raised to the RC's floor
    /// (`min_copies`). A zero-loss session that needs more copies than the colony keeps
    /// (`replicas`) is refused: none of its inputs could ever be acknowledged.
    pub fn colony_policy(&self, m: &Manifest) -> Result<Manifest, CopiesUnreachable> {
        let mut m = m.clone();
        m.migration.min_copies = m.migration.min_copies.max(self.cfg.min_copies);
        if m.migration.acceptable_loss.is_zero()
            && m.migration.min_copies as usize > self.cfg.replicas
        {
            return Err(CopiesUnreachable {
                need: m.migration.min_copies,
                replicas: self.cfg.replicas,
            });
        }
        Ok(m)
    }

    /// `m` with its `agent` resolved (ADR 0030): `handler` and `agent` set to the concrete
    /// `name@version` (the latest not retired, unless pinned) and `package` to its hash.
    pub fn resolve_agent(
        &self,
        m: &Manifest,
    ) -> Result<Manifest, crate::rc::agents::RegistryError> {
        let Some(agent) = &m.session.agent else {
            return Ok(m.clone());
        };
        let reg = self.agents().ok_or_else(|| {
            crate::rc::agents::RegistryError::UnknownAgent(format!(
                "{agent} (this RC has no registry)"
            ))
        })?;
        let r = reg.resolve(agent)?;
        let mut m = m.clone();
        m.session.handler = r.handler.clone();
        m.session.agent = Some(r.handler);
        m.session.package = Some(r.hash);
        Ok(m)
    }

    /// Asks `nodes` to fetch and load `m`'s agent package ahead of need (their likely failover
    /// and handover targets); nothing for a compiled-in handler.
    pub(crate) fn prefetch(&self, m: &Manifest, nodes: &[NodeId]) {
        let Some(hash) = &m.session.package else {
            return;
        };
        for n in nodes {
            let order = ToNode::Prefetch {
                handler: m.session.handler.clone(),
                hash: hash.clone(),
            };
            if let Err(e) = self.send_node(n, order) {
                tracing::debug!(node = %n, error = %e, "prefetch order not sent");
            }
        }
    }

    /// Admits and places a session, waiting for the node to start it.
    pub async fn place(
        &self,
        m: &Manifest,
        session: Option<SessionId>,
        owner: Option<String>,
    ) -> Result<Placement, PlaceError> {
        let m = &self.colony_policy(&self.resolve_agent(m)?)?;
        let req = Requirements::from_manifest(m);
        let sid = session.unwrap_or_else(SessionId::random);
        let prefetch_to: Vec<NodeId>;
        let (node, name, api, epoch, replica_addrs) = {
            let mut st = lock(&self.state);
            let epoch = Epoch(1);
            if let Some(o) = &owner {
                let (n, mem) = st.usage.get(o).copied().unwrap_or_default();
                let what = if n as usize >= self.cfg.client_max_sessions {
                    Some(format!(
                        "{n} live sessions, at most {}",
                        self.cfg.client_max_sessions
                    ))
                } else if mem.saturating_add(req.memory) > self.cfg.client_max_memory.0 {
                    Some(format!(
                        "{mem} B reserved + {} B asked > {} B (client_max_memory)",
                        req.memory, self.cfg.client_max_memory.0
                    ))
                } else {
                    None
                };
                if let Some(what) = what {
                    self.metrics
                        .placements
                        .add(1, &[KeyValue::new("outcome", "quota")]);
                    return Err(PlaceError::Quota {
                        client: o.clone(),
                        what,
                    });
                }
            }
            if let Some(e) = st.directory.get(&sid) {
                // An orphaned session is restored from its replicas by the failover loop, never
                // placed again empty.
                return Err(PlaceError::AlreadyPlaced {
                    session: sid,
                    address: e.address.clone(),
                    epoch: e.epoch,
                });
            }
            let t = Instant::now();
            let warm = crate::rc::warm::holders(&st, m.session.package.as_deref());
            let decision = st.colony.admit_preferring(&req, &warm);
            self.metrics
                .admission_seconds
                .record(t.elapsed().as_secs_f64(), &[]);
            let node = match decision {
                Decision::Placed { node, .. } => node,
                Decision::Refused { why } => {
                    self.metrics
                        .placements
                        .add(1, &[KeyValue::new("outcome", "refused")]);
                    let why = why
                        .into_iter()
                        .map(|(id, r)| {
                            let name = st
                                .colony
                                .get(&id)
                                .map(|n| n.spec.name.clone())
                                .unwrap_or_default();
                            (id, name, r)
                        })
                        .collect();
                    // Members inherited from the directory (a new leader, a restarted RC) count
                    // as alive but are placeable only once they rejoin: a refusal is not final
                    // until they have, or the lease grace has passed.
                    let waiting = st
                        .members
                        .values()
                        .filter(|m| m.restored && m.alive)
                        .count();
                    if waiting > 0 {
                        return Err(PlaceError::Rejoining { waiting });
                    }
                    return Err(PlaceError::Unsatisfiable { why });
                }
            };
            let rec = st
                .colony
                .get(&node)
                .map(|r| (r.spec.name.clone(), r.spec.api.clone()));
            let (name, api) = rec.unwrap_or_default();
            let replicas = self.choose_replicas(&st, m, &node, &[]);
            let replica_addrs = crate::rc::mobility::migration_addrs(&st, &replicas);
            prefetch_to = replicas.clone();
            st.colony.note_placing(&node, &req.handler, req.memory);
            st.directory.insert(
                sid.clone(),
                DirEntry {
                    session_id: sid.clone(),
                    node,
                    node_name: name.clone(),
                    address: api.clone(),
                    epoch,
                    handler: req.handler.clone(),
                    memory: req.memory,
                    owner: owner.clone(),
                    state: DirState::Starting,
                    replicas,
                    waiting: None,
                    manifest: Some(Arc::new(m.clone())),
                },
            );
            charge(&mut st.usage, owner.as_deref(), req.memory);
            (node, name, api, epoch, replica_addrs)
        };
        let result = self
            .order_start(&node, &sid, epoch, m, replica_addrs, Vec::new())
            .await;
        // After the holder's start (which it does not slow down), outside the state lock.
        if result.is_ok() {
            self.prefetch(m, &prefetch_to);
            self.keep_warm(m);
        }
        let mut st = lock(&self.state);
        st.colony.note_start_answered(&node);
        match result {
            Ok(()) => {
                if let Some(e) = st.directory.get_mut(&sid) {
                    e.state = DirState::Active;
                }
                self.metrics.sessions.record(st.directory.len() as u64, &[]);
                self.metrics
                    .placements
                    .add(1, &[KeyValue::new("outcome", "placed")]);
                tracing::info!(session = %sid, node = %node, %name, %epoch, "session placed");
                self.events.publish(ColonyEvent::SessionPlaced {
                    session: sid.to_string(),
                    node: name.clone(),
                    epoch: epoch.0,
                });
                let capability = self.capability(&sid);
                Ok(Placement {
                    session_id: sid,
                    node,
                    node_name: name,
                    address: api,
                    epoch,
                    capability,
                })
            }
            Err(reason) => {
                if st
                    .directory
                    .get(&sid)
                    .is_some_and(|e| e.node == node && e.epoch == epoch)
                {
                    if let Some(e) = st.directory.remove(&sid) {
                        release(&mut st.usage, e.owner.as_deref(), e.memory);
                    }
                }
                st.colony.note_closed(&node, req.memory);
                st.colony.note_failed(&node);
                self.metrics
                    .placements
                    .add(1, &[KeyValue::new("outcome", "failed")]);
                tracing::warn!(session = %sid, node = %node, %reason, "placement failed");
                Err(PlaceError::NodeFailed { node, reason })
            }
        }
    }

    pub(crate) async fn order_start(
        &self,
        node: &NodeId,
        sid: &SessionId,
        epoch: Epoch,
        m: &Manifest,
        replicas: Vec<String>,
        restore_from: Vec<String>,
    ) -> Result<(), String> {
        let grant = {
            let st = lock(&self.state);
            let (r, f) = (
                crate::rc::mobility::dids_of_addrs(&st, &replicas),
                crate::rc::mobility::dids_of_addrs(&st, &restore_from),
            );
            drop(st);
            self.sign_grant(sid, epoch, node, r, f)
        };
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(req, tx);
        let sent = self.send_node(
            node,
            ToNode::Start {
                req,
                session: sid.to_string(),
                epoch: epoch.0,
                manifest: m.to_json_string(),
                replicas,
                restore_from,
                grant,
            },
        );
        if let Err(e) = sent {
            lock(&self.pending).remove(&req);
            return Err(format!("cannot send placement order: {e}"));
        }
        match tokio::time::timeout(self.cfg.place_timeout.0, rx).await {
            Ok(Ok(None)) => Ok(()),
            Ok(Ok(Some(err))) => Err(err),
            Ok(Err(_)) => Err("placement order dropped".into()),
            Err(_) => {
                lock(&self.pending).remove(&req);
                Err(format!("no answer within {:?}", self.cfg.place_timeout.0))
            }
        }
    }

    /// The directory entry of a session.
    pub fn lookup(&self, sid: &SessionId) -> Option<DirEntry> {
        lock(&self.state).directory.get(sid).cloned()
    }

    /// Colony status.
    pub fn status(&self) -> ColonyStatus {
        let now = Instant::now();
        let st = lock(&self.state);
        // What the directory still places on each node: a dead node's heartbeat count is stale,
        // its directory count falls to 0 as its sessions fail over.
        let mut placed: HashMap<NodeId, u32> = HashMap::new();
        for e in st.directory.values() {
            if e.state != DirState::Orphaned {
                *placed.entry(e.node).or_default() += 1;
            }
        }
        let members = st
            .colony
            .nodes()
            .into_iter()
            .map(|r| {
                let m = st.members.get(&r.spec.id);
                MemberStatus {
                    node: r.spec.id,
                    name: r.spec.name.clone(),
                    jurisdiction: r.spec.jurisdiction.clone(),
                    address: r.spec.api.clone(),
                    state: if st.mob.draining.contains(&r.spec.id) {
                        "draining"
                    } else if st.unannounced.contains(&r.spec.id) {
                        "joining"
                    } else if r.alive {
                        "alive"
                    } else {
                        "dead"
                    },
                    sessions: if r.alive {
                        r.sessions
                    } else {
                        placed.get(&r.spec.id).copied().unwrap_or(0)
                    },
                    capacity: r.spec.capacity,
                    rtt_us: r.rtt_us,
                    phi: m.map(|m| m.detector.phi(now)).unwrap_or(0.0),
                    last_heartbeat_ms: m
                        .map(|m| now.saturating_duration_since(m.last_recv).as_millis() as u64)
                        .unwrap_or(0),
                }
            })
            .collect();
        let mut sessions: Vec<SessionView> = st
            .directory
            .values()
            .map(|e| {
                let (min_copies, alive_replicas, below_min_copies, below_k) = self.coverage(&st, e);
                let m = e.manifest.as_deref();
                SessionView {
                    entry: e.clone(),
                    min_copies,
                    alive_replicas,
                    below_min_copies,
                    below_k,
                    agent: m.and_then(|m| m.session.agent.clone()),
                    package: m.and_then(|m| m.session.package.clone()),
                }
            })
            .collect();
        sessions.sort_by(|a, b| a.entry.session_id.cmp(&b.entry.session_id));
        ColonyStatus {
            colony: self.cfg.colony.clone(),
            rc: self.id(),
            members,
            sessions,
        }
    }

    /// Replica coverage of an entry: `(min_copies, alive replica holders, below min_copies,
    /// below k)`. Only active sessions count as below.
    pub(crate) fn coverage(&self, st: &RcState, e: &DirEntry) -> (u32, usize, bool, bool) {
        let min = e
            .manifest
            .as_ref()
            .map(|m| m.migration.min_copies.max(self.cfg.min_copies))
            .unwrap_or(self.cfg.min_copies);
        let alive = e
            .replicas
            .iter()
            .filter(|r| st.members.get(r).is_some_and(|m| m.alive))
            .count();
        let active = e.state == DirState::Active;
        (
            min,
            alive,
            active && alive < min as usize,
            active && alive < self.cfg.replicas,
        )
    }

    /// Number of alive members.
    /// (Those whose join the others were not told yet, [`Self::announce_members`], excluded.)
    pub fn alive_members(&self) -> usize {
        let st = lock(&self.state);
        st.members
            .iter()
            .filter(|(id, m)| m.alive && !st.unannounced.contains(id))
            .count()
    }
}

/// The RC's control-plane endpoint actor (member of pg group [`wire::pg_rc`]).
pub struct RcActor {
    /// Shared core.
    pub core: Arc<RcCore>,
}

impl Actor for RcActor {
    type Msg = RcMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, myself: ActorRef<RcMsg>, _: ()) -> Result<(), ActorProcessingErr> {
        let period = (self.core.cfg.heartbeat_period.0 / 4).max(Duration::from_millis(5));
        if let Some(group) = self.core.group().cloned() {
            // A replica of an RC group joins the pg group only while it is in office.
            tokio::spawn(crate::rc::group::keep_office(
                self.core.clone(),
                group,
                myself.get_cell(),
            ));
        } else {
            ractor::pg::join_scoped(
                wire::PG_SCOPE.to_string(),
                wire::pg_rc(&self.core.cfg.colony, self.core.cfg.secret()),
                vec![myself.get_cell()],
            );
        }
        if let Some(s) = self.core.settlement() {
            s.spawn();
        }
        myself.send_interval(period, || RcMsg::Local(RcLocal::Tick));
        // The directory's durable copy is written off the actor (disk I/O never delays a
        // heartbeat), one batch at a time.
        if self.core.directory_store.get().is_some() {
            let core = self.core.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(period);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    let c = core.clone();
                    if tokio::task::spawn_blocking(move || c.persist_directory())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<RcMsg>,
        msg: RcMsg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RcMsg::Wire(w) => self.core.on_sealed(*w),
            // Out of office (or unconfirmed), a group replica declares nothing and moves nothing.
            RcMsg::Local(RcLocal::Tick) if self.core.acting() => {
                self.core.tick(Instant::now());
                crate::rc::mobility::tick(&self.core, Instant::now());
            }
            RcMsg::Local(RcLocal::Tick) => {}
        }
        Ok(())
    }
}

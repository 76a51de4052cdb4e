//! The routing coordinator (RC) of a colony: membership (signed joins over an authenticated
//! ractor_cluster link), failure detection (phi-accrual + leases), admission, placement orders and
//! the session directory. Runs entirely on the control-plane runtime. Its rooms:
//!
//! - [`config`]: `rc.toml`; [`server`]: `start_rc`; [`api`]: the RC's client API router;
//! - [`admission`]: the in-memory node table, filters and scoring; [`mobility`]: replica sets,
//!   failover, handover requests, reconciliation of holding reports;
//! - [`federation`]: canopy gossip, treaties and cross-colony routing; [`settlement`]:
//!   co-signing, batching and settling compute receipts.
//!
//! The RC never names the node's code ([`crate::node`]): both speak [`crate::common::wire`].

pub mod admission;
pub mod api;
pub mod config;
pub mod events;
pub mod federation;
pub mod mobility;
pub mod server;
pub mod settlement;
pub mod ui;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use opengrid_session::{Epoch, Manifest, SessionId};
use opentelemetry::KeyValue;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::common::failure::{PhiConfig, PhiDetector};
use crate::common::identity::{Identity, NodeId};
use crate::common::metrics::Metrics;
use crate::common::throttle::Throttle;
use crate::common::wire::{self, pick, NodeMsg, RcLocal, RcMsg, ToNode, ToRc};
use crate::rc::admission::{Colony, Decision, Rejection, Requirements};
use crate::rc::config::RcConfig;
use crate::rc::events::ColonyEvent;

/// Where a session lives, per the directory.
#[derive(Clone, Debug, Serialize)]
pub struct DirEntry {
    /// Session id.
    pub session_id: SessionId,
    /// Holder.
    pub node: NodeId,
    /// Holder's name.
    pub node_name: String,
    /// Holder's client API.
    pub address: String,
    /// Placement epoch.
    pub epoch: Epoch,
    /// Handler id.
    pub handler: String,
    /// Memory reserved.
    pub memory: u64,
    /// State.
    pub state: DirState,
    /// Checkpoint replica holders (k, within the manifest's allowed jurisdictions).
    pub replicas: Vec<NodeId>,
    /// Why an orphaned session is not placed again yet (e.g. no surviving node in an allowed
    /// jurisdiction).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// The manifest (failover and handover placement need it); shown as its loss bound,
    /// `acceptable_loss` (`"0s"`: zero loss).
    #[serde(
        rename = "acceptable_loss",
        serialize_with = "serialize_loss",
        skip_serializing_if = "Option::is_none"
    )]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
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
    /// `alive` | `dead`.
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
}

pub(crate) struct RcState {
    pub(crate) colony: Colony,
    pub(crate) members: HashMap<NodeId, Member>,
    pub(crate) directory: HashMap<SessionId, DirEntry>,
    /// Session mobility bookkeeping (failover, handover plans, drains).
    pub(crate) mob: crate::rc::mobility::MobilityState,
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

/// A successful placement.
#[derive(Clone, Debug, Serialize)]
pub struct Placement {
    /// Session id.
    pub session_id: SessionId,
    /// Node id.
    pub node: NodeId,
    /// Node name.
    pub node_name: String,
    /// Node client API base URL.
    pub address: String,
    /// Epoch.
    pub epoch: Epoch,
}

/// The RC's shared state.
pub struct RcCore {
    /// Config.
    pub cfg: RcConfig,
    identity: Identity,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    pub(crate) state: Mutex<RcState>,
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
    /// Control links with joined nodes ([`crate::common::seal`]).
    links: Mutex<HashMap<NodeId, crate::common::seal::Link>>,
    /// Refused control messages, logged at most every 10 s.
    refused_log: Throttle,
}

impl std::fmt::Debug for RcCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RcCore({})", self.identity.id())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
        RcCore {
            cfg,
            identity,
            metrics: Arc::new(Metrics::new("rc")),
            state: Mutex::new(RcState {
                colony: Colony::new(),
                members: HashMap::new(),
                directory: HashMap::new(),
                mob: Default::default(),
            }),
            pending: Mutex::new(HashMap::new()),
            next_req: AtomicU64::new(1),
            api: OnceLock::new(),
            federation: OnceLock::new(),
            settlement,
            replica_shortfall_log: Throttle::new(Duration::from_secs(30)),
            events: Default::default(),
            links: Mutex::new(HashMap::new()),
            refused_log: Throttle::new(Duration::from_secs(10)),
        }
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

    fn phi_config(&self) -> PhiConfig {
        PhiConfig {
            threshold: self.cfg.phi_threshold,
            window: 200,
            min_std: self.cfg.phi_min_std.0,
            acceptable_pause: self.cfg.acceptable_pause.0,
            first_interval: self.cfg.heartbeat_period.0,
        }
    }

    /// Sends `msg` to a node: MAC-sealed on its control link, or — for a join ack or an
    /// eviction of a node without a link — signed by this RC's identity.
    pub(crate) fn send_node(&self, node: &NodeId, msg: ToNode) -> Result<(), String> {
        let r = node_ref(node).ok_or_else(|| "node agent not reachable".to_string())?;
        let mut links = lock(&self.links);
        let sealed = match (links.get_mut(node), &msg) {
            (_, ToNode::JoinAck { .. }) | (None, ToNode::Evicted { .. }) => {
                crate::common::seal::sign(&self.identity, node, wire::unix_ms(), msg)
            }
            (Some(link), _) => link.seal(self.id(), msg),
            (None, _) => return Err(format!("no control link with {node}")),
        };
        // Sent under the lock: counters go out in order.
        r.cast(NodeMsg::wire(sealed)).map_err(|e| e.to_string())
    }

    /// Handles one sealed control-plane message: checks its seal and that its claimed sender is
    /// the authenticated one, then [`Self::on_message`]. Refusals are counted
    /// (`opengrid_cluster_control_refused_total{reason}`); a node without a link is told to join.
    pub fn on_sealed(&self, s: crate::common::seal::Sealed<ToRc>) {
        use crate::common::seal::{Seal, SealError};
        let checked = match (&s.seal, &s.msg) {
            (Seal::None, ToRc::Join(j)) => match wire::decode::<wire::JoinBody>(&j.body) {
                Ok(b) if b.spec.id == s.from => Ok(()),
                Ok(b) => Err(SealError::WrongSender {
                    authenticated: b.spec.id.did(),
                    claimed: s.from.did(),
                }),
                // Undecodable: `on_join` refuses and counts it.
                Err(_) => Ok(()),
            },
            (Seal::Mac { .. }, _) => match lock(&self.links).get_mut(&s.from) {
                Some(link) => link.open(&s),
                None => Err(SealError::NoLink(s.from.did())),
            },
            _ => Err(SealError::NotAllowed("only a join may be unsealed")),
        }
        .and_then(|()| match s.msg.claimed_sender() {
            Some(c) if c != s.from => Err(SealError::WrongSender {
                authenticated: s.from.did(),
                claimed: c.did(),
            }),
            _ => Ok(()),
        });
        if let Err(e) = checked {
            self.metrics
                .control_refused
                .add(1, &[KeyValue::new("reason", e.reason())]);
            if let Some(repeats) = self.refused_log.allow(Instant::now()) {
                tracing::warn!(from = %s.from, error = %e, repeats, "control message refused");
            }
            // A heartbeat from a node we have no link with (this RC restarted): tell it to join
            // again, signed, so that it does not wait for its lease to run out.
            if matches!(e, SealError::NoLink(_)) && matches!(s.msg, ToRc::Heartbeat { .. }) {
                let _ = self.send_node(
                    &s.from,
                    ToNode::Evicted {
                        reason: "no control link with this RC: join again".into(),
                    },
                );
            }
            return;
        }
        self.on_message(s.msg);
    }

    /// Handles one control-plane message (already authenticated: [`Self::on_sealed`]).
    pub fn on_message(&self, msg: ToRc) {
        match msg {
            ToRc::Join(req) => self.on_join(req),
            ToRc::Heartbeat {
                node,
                seq,
                sessions,
                rtt_us,
                warm,
            } => self.on_heartbeat(node, seq, sessions, rtt_us, warm),
            ToRc::Started { req, error, .. } => {
                if let Some(tx) = lock(&self.pending).remove(&req) {
                    let _ = tx.send(error);
                }
            }
            ToRc::Closed {
                node,
                session,
                epoch,
            } => {
                let Ok(sid) = SessionId::new(session) else {
                    return;
                };
                if let Some(s) = &self.settlement {
                    s.session_closed(&node, sid.as_str());
                }
                let mut st = lock(&self.state);
                let matches = st
                    .directory
                    .get(&sid)
                    .is_some_and(|e| e.node == node && e.epoch.0 == epoch);
                if matches {
                    if let Some(e) = st.directory.remove(&sid) {
                        st.colony.note_closed(&node, e.memory);
                        self.events.publish(ColonyEvent::SessionClosed {
                            session: sid.to_string(),
                            node: e.node_name,
                        });
                    }
                }
                self.metrics.sessions.record(st.directory.len() as u64, &[]);
            }
            ToRc::Receipts { node, receipts } => {
                let ack = match &self.settlement {
                    Some(s) => {
                        let price = lock(&self.state)
                            .colony
                            .get(&node)
                            .map(|r| r.spec.price_micros_per_input);
                        s.on_receipts(&node, price, receipts)
                    }
                    None => ToNode::ReceiptsAck {
                        accepted: Vec::new(),
                        refused: Vec::new(),
                    },
                };
                let _ = self.send_node(&node, ack);
            }
            ToRc::Activated {
                node,
                session,
                epoch,
            } => self.on_activated(node, &session, epoch),
            ToRc::PlanHandover {
                node,
                req,
                session,
                target,
            } => self.on_plan_handover(node, req, &session, target),
            ToRc::Draining { node } => self.on_draining(node),
            ToRc::Released {
                node,
                session,
                epoch,
            } => self.on_released(node, &session, epoch),
            ToRc::ReplicaTrouble { node, peers } => self.on_replica_trouble(node, &peers),
            ToRc::Holding {
                node,
                report,
                rejoin,
                part,
                parts,
                sessions,
            } => self.on_holding(node, report, rejoin, part, parts, sessions),
            ToRc::Lookup { node, req, session } => {
                let location = SessionId::new(session).ok().and_then(|sid| {
                    let st = lock(&self.state);
                    st.directory
                        .get(&sid)
                        .filter(|e| e.state != DirState::Orphaned)
                        .map(|e| (e.address.clone(), e.epoch.0))
                });
                let _ = self.send_node(&node, ToNode::LookupReply { req, location });
            }
        }
    }

    fn on_join(&self, req: wire::JoinRequest) {
        let body = match req.verify(
            &self.cfg.colony,
            wire::unix_ms(),
            self.cfg.join_max_skew.0.as_millis() as u64,
        ) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "join refused");
                self.metrics
                    .join_refused
                    .add(1, &[KeyValue::new("reason", join_reason(&e))]);
                // Tell the claimed node, if we can find it (the claim is unverified: a refusal
                // only, signed by the RC, so nobody else can forge one).
                if let Ok(b) = wire::decode::<wire::JoinBody>(&req.body) {
                    let _ = self.send_node(
                        &b.spec.id,
                        ToNode::JoinAck {
                            refused: Some(e.to_string()),
                            rc_api: self.api(),
                            rc: self.id(),
                            nonce: b.nonce,
                            kx: None,
                        },
                    );
                }
                return;
            }
        };
        let spec = body.spec;
        let id = spec.id;
        // The control link with this node: the key from the join's and our X25519 halves.
        let offer = crate::common::seal::KeyOffer::new();
        let key = match offer.link_key(
            &body.kx,
            &id,
            &self.id(),
            &body.kx,
            &offer.public,
            body.nonce,
        ) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(node = %id, error = %e, "join refused");
                self.metrics
                    .join_refused
                    .add(1, &[KeyValue::new("reason", "key_exchange")]);
                return;
            }
        };
        lock(&self.links).insert(id, crate::common::seal::Link::new(key, id));
        {
            let mut st = lock(&self.state);
            // What the directory places on a (re)joining node is settled by its holding report
            // (`crate::node` "Reconciliation"): kept if it still holds it, orphaned (and
            // restored from its replicas by the failover loop) if it came back without it.
            st.mob.draining.remove(&id);
            let mut detector = PhiDetector::new(self.phi_config());
            let now = Instant::now();
            detector.heartbeat(now);
            st.members.insert(
                id,
                Member {
                    name: spec.name.clone(),
                    detector,
                    last_recv: now,
                    alive: true,
                },
            );
            tracing::info!(node = %id, name = %spec.name, jurisdiction = %spec.jurisdiction, api = %spec.api, "node joined");
            self.events.publish(ColonyEvent::NodeJoined {
                name: spec.name.clone(),
                jurisdiction: spec.jurisdiction.clone(),
            });
            st.colony.upsert(spec);
            let alive = st.members.values().filter(|m| m.alive).count();
            self.metrics.members.record(alive as u64, &[]);
        }
        let ack = ToNode::JoinAck {
            refused: None,
            rc_api: self.api(),
            rc: self.id(),
            nonce: body.nonce,
            kx: Some(offer.public),
        };
        if let Err(e) = self.send_node(&id, ack) {
            tracing::warn!(node = %id, error = %e, "joined node has no reachable agent yet");
        }
        self.send_members();
    }

    /// Tells every live member who the colony's nodes are: the peers their migration links
    /// admit (ADR 0023). Sent after every join, so a joining node and the nodes already there
    /// admit each other before the RC places anything that makes them talk.
    fn send_members(&self) {
        let (nodes, alive): (Vec<NodeId>, Vec<NodeId>) = {
            let st = lock(&self.state);
            let mut nodes: Vec<NodeId> = st.members.keys().copied().collect();
            nodes.sort();
            let alive = st
                .members
                .iter()
                .filter(|(_, m)| m.alive)
                .map(|(id, _)| *id)
                .collect();
            (nodes, alive)
        };
        for id in alive {
            let _ = self.send_node(
                &id,
                ToNode::Members {
                    nodes: nodes.clone(),
                },
            );
        }
    }

    fn on_heartbeat(&self, node: NodeId, seq: u64, sessions: u32, rtt_us: u64, warm: Vec<String>) {
        self.metrics.heartbeats.add(1, &[self.metrics.role()]);
        let reply = {
            let mut st = lock(&self.state);
            match st.members.get_mut(&node) {
                Some(m) if m.alive => {
                    let now = Instant::now();
                    m.detector.heartbeat(now);
                    m.last_recv = now;
                    st.colony.update_load(&node, sessions, rtt_us, warm);
                    ToNode::Lease {
                        seq,
                        lease_ms: self.cfg.lease.0.as_millis() as u64,
                    }
                }
                Some(_) => ToNode::Evicted {
                    reason: "declared dead by the RC; join again".into(),
                },
                None => ToNode::Evicted {
                    reason: "not a member; join first".into(),
                },
            }
        };
        let _ = self.send_node(&node, reply);
    }

    /// Failure-detector tick: declares silent nodes dead and orphans their sessions once the lease
    /// grace has passed.
    pub fn tick(&self, now: Instant) {
        let replace_after = self.cfg.replace_after();
        let mut st = lock(&self.state);
        let mut newly_dead = Vec::new();
        let mut expired = Vec::new();
        for (id, m) in st.members.iter_mut() {
            let silent = now.saturating_duration_since(m.last_recv);
            if m.alive && (m.detector.is_dead(now) || silent >= replace_after) {
                m.alive = false;
                newly_dead.push((*id, m.name.clone(), m.detector.phi(now), silent));
            }
            if !m.alive && silent >= replace_after {
                expired.push(*id);
            }
        }
        for (id, name, phi, silent) in &newly_dead {
            tracing::warn!(node = %id, %name, phi, silent_ms = silent.as_millis() as u64, "node declared dead");
            st.colony.set_alive(id, false);
            self.metrics.declared_dead.add(1, &[]);
            self.events.publish(ColonyEvent::NodeDead {
                name: name.clone(),
                silent_ms: silent.as_millis() as u64,
            });
        }
        for id in expired {
            for e in st.directory.values_mut() {
                if e.node == id && e.state != DirState::Orphaned {
                    tracing::warn!(session = %e.session_id, node = %id, "lease grace over: session may be placed again");
                    e.state = DirState::Orphaned;
                    self.events.publish(ColonyEvent::SessionOrphaned {
                        session: e.session_id.to_string(),
                        node: e.node_name.clone(),
                    });
                }
            }
        }
        if !newly_dead.is_empty() {
            let alive = st.members.values().filter(|m| m.alive).count();
            self.metrics.members.record(alive as u64, &[]);
        }
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

    /// Admits and places a session, waiting for the node to start it.
    pub async fn place(
        &self,
        m: &Manifest,
        session: Option<SessionId>,
    ) -> Result<Placement, PlaceError> {
        let m = &self.colony_policy(m)?;
        let req = Requirements::from_manifest(m);
        let sid = session.unwrap_or_else(SessionId::random);
        let (node, name, api, epoch, replica_addrs) = {
            let mut st = lock(&self.state);
            let epoch = Epoch(1);
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
            let decision = st.colony.admit(&req);
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
                    state: DirState::Starting,
                    replicas,
                    waiting: None,
                    manifest: Some(Arc::new(m.clone())),
                },
            );
            (node, name, api, epoch, replica_addrs)
        };
        let result = self
            .order_start(&node, &sid, epoch, m, replica_addrs, Vec::new())
            .await;
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
                Ok(Placement {
                    session_id: sid,
                    node,
                    node_name: name,
                    address: api,
                    epoch,
                })
            }
            Err(reason) => {
                if st
                    .directory
                    .get(&sid)
                    .is_some_and(|e| e.node == node && e.epoch == epoch)
                {
                    st.directory.remove(&sid);
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
                SessionView {
                    entry: e.clone(),
                    min_copies,
                    alive_replicas,
                    below_min_copies,
                    below_k,
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
    pub fn alive_members(&self) -> usize {
        lock(&self.state)
            .members
            .values()
            .filter(|m| m.alive)
            .count()
    }
}

fn join_reason(e: &wire::JoinError) -> &'static str {
    match e {
        wire::JoinError::Decode(_) => "decode",
        wire::JoinError::Signature(_) => "signature",
        wire::JoinError::WrongColony { .. } => "colony",
        wire::JoinError::Stale { .. } => "stale",
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
        ractor::pg::join_scoped(
            wire::PG_SCOPE.to_string(),
            wire::pg_rc(&self.core.cfg.colony, self.core.cfg.secret()),
            vec![myself.get_cell()],
        );
        if let Some(s) = self.core.settlement() {
            s.spawn();
        }
        let period = (self.core.cfg.heartbeat_period.0 / 4).max(Duration::from_millis(5));
        myself.send_interval(period, || RcMsg::Local(RcLocal::Tick));
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
            RcMsg::Local(RcLocal::Tick) => {
                self.core.tick(Instant::now());
                crate::rc::mobility::tick(&self.core, Instant::now());
            }
        }
        Ok(())
    }
}

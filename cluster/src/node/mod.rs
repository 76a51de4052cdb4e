//! The node: what an operator runs on a box to host sessions. This module is the node agent (the
//! node side of the control plane: joining the colony, heartbeats, the lease watchdog and
//! placement orders), on the control-plane runtime; session work is handed to the handler
//! runtime. Its rooms:
//!
//! - [`config`]: `node.toml`; [`server`]: `start_node` (runtimes, stores, listeners);
//! - [`api`]: the node's client API router; [`mobility`]: handover, drain, failover restores and
//!   checkpoint replication (migration server); [`receipts`]: signing usage receipts;
//! - [`inference`]: the ONNX Runtime model pool wired into handlers; [`faults`]: test hooks;
//! - [`agents`]: pushed agent packages, the blob store and what the node keeps per session for
//!   them (manifests, `[agent]` limits, blob reports); [`egress`]: sessions' outbound HTTP;
//! - `reconcile`: the holding report after a (re)join and its ack (below).
//!
//! Why this file (~1,000 lines before its tests) stays one piece: it is the node agent's one
//! actor and the state its handler reads under one lock order — membership, the lease, the
//! control link, the members its migration links admit — and the `handle` match over
//! [`ToNode`] that dispatches to the rooms above. Each arm that grew a concern of its own already
//! left (reconcile, mobility, agents, receipts); what remains is the protocol's state machine,
//! which reads best in one place. The next to leave, when it grows: the join/lease half (`tick`,
//! `send_join`, the lease watchdog) into a `membership` room.
//!
//! The node never names the RC's code ([`crate::rc`]): both speak [`crate::common::wire`].
//!
//! # Lease loss and reconciliation
//! A node whose lease runs out (RC unreachable, partitioned, declared dead, or the RC itself
//! restarted) stops serving at once — every input and info request is refused `503
//! not_serving` — but it **keeps its sessions** (ADR 0010): dropping them would lose every session
//! of a colony whose RC restarts, because a restarted RC starts with an empty directory.
//! After it joins again the node sends [`ToRc::Holding`] with `rejoin` (session, epoch, handler,
//! manifest, replica set of each session it holds) and serves nothing until the RC answers
//! [`ToNode::HoldingAck`]: the RC adopts what its directory does not know, keeps what it places
//! here at the same epoch, and names the ones placed elsewhere or at a newer epoch (a failover
//! happened meanwhile), which the node releases before it serves again. Entries the directory
//! places here that the report does not list (the node restarted empty) are orphaned and fail
//! over. While serving, the node repeats the report (without `rejoin`) every
//! [`REPORT_EVERY`] heartbeats, so a lost [`ToRc::Activated`] or any other directory drift is
//! repaired within a second.

pub mod agents;
pub mod api;
pub mod calls;
pub mod config;
pub mod egress;
pub mod faults;
pub mod inference;
pub mod join_watch;
pub mod mobility;
pub mod receipts;
mod reconcile;
pub mod server;
pub mod streaming;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opengrid_actors::SessionHost;
use opengrid_session::{Epoch, Manifest, SessionId};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::common::failure::Lease;
use crate::common::identity::{Identity, NodeId};
use crate::common::metrics::Metrics;
use crate::common::seal::{Seal, SealError, Sealed};
use crate::common::spec::NodeSpec;

use crate::common::wire::{self, JoinBody, JoinRequest, NodeLocal, NodeMsg, RcMsg, ToNode, ToRc};
use crate::node::config::NodeConfig;

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a looked-up session lives: `(api, epoch)`.
type LookupReply = oneshot::Sender<Option<(String, u64)>>;

/// A signed message from the RC (join ack, eviction) older or newer than this is refused.
pub const SIGNED_MAX_SKEW_MS: u64 = 30_000;

/// Membership state of this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Membership {
    /// Not joined (no authenticated link yet, refused, or evicted).
    Outside,
    /// Join sent, waiting for the answer.
    Joining,
    /// Joined; serving while the lease holds.
    Member,
}

/// The node's shared state.
pub struct NodeCore {
    /// Config.
    pub cfg: NodeConfig,
    identity: Identity,
    /// Declared spec (sent in the join).
    pub spec: NodeSpec,
    /// The session host (handler runtime).
    pub host: SessionHost,
    /// Handle of the handler runtime.
    pub handlers: Handle,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    lease: Mutex<Lease>,
    membership: Mutex<Membership>,
    /// Set by the ractor_cluster subscription when the link to the RC is authenticated.
    pub(crate) link_up: AtomicBool,
    /// The RC control-plane addresses (`rc_cluster`) this node has a ractor_cluster link with.
    pub(crate) rc_links: Mutex<std::collections::HashSet<String>>,
    /// The RC group's replicas as the leader last listed them ([`ToNode::RcGroup`]): linked
    /// besides `rc_cluster`.
    pub(crate) group_rcs: Mutex<Vec<String>>,
    hb_seq: AtomicU64,
    sent: Mutex<HashMap<u64, Instant>>,
    /// Path RTT to the RC: the minimum of the last [`RTT_WINDOW`] heartbeat round trips.
    rtt_us: AtomicU64,
    rtt_samples: Mutex<std::collections::VecDeque<u64>>,
    next_req: AtomicU64,
    lookups: Mutex<HashMap<u64, LookupReply>>,
    rc_api: Mutex<Option<String>>,
    last_refusal: Mutex<Option<String>>,
    joining_since: Mutex<Option<Instant>>,
    /// Replication, handover, restore, drain (set once at start).
    pub(crate) mobility: std::sync::OnceLock<Arc<crate::node::mobility::NodeMobility>>,
    /// Compute receipts of this node's sessions (see [`crate::node::receipts`]).
    pub receipts: crate::node::receipts::ReceiptEmitter,
    /// The RC has answered the holding report sent after the last (re)join.
    reconciled: AtomicBool,
    /// Number of the holding report awaiting its ack (0: none).
    pending_report: AtomicU64,
    /// Manifests (JSON) of the sessions held here, for the holding report.
    manifests: Mutex<HashMap<SessionId, String>>,
    /// When replica trouble was last reported to the RC.
    trouble_sent: Mutex<Option<Instant>>,
    /// Fault hooks (`[faults] control_dir`, tests and chaos runs only).
    pub(crate) faults: std::sync::OnceLock<Arc<crate::node::faults::FaultControl>>,
    /// Why the node is outside the colony, said in the log and `/health`.
    pub(crate) join_watch: crate::node::join_watch::JoinWatch,
    /// The control link with the RC (set by an accepted join ack).
    link: Mutex<Option<crate::common::seal::Link>>,
    /// The pending join's nonce and key offer.
    offer: Mutex<Option<(u64, crate::common::seal::KeyOffer)>>,
    /// The RCs this node trusts (`rc_id`: one, or every replica of an RC group); empty: not
    /// pinned.
    rc_pin: Vec<NodeId>,
    /// Who may call what on the client API (its RC is trusted once joined).
    pub access: crate::common::access::Access,
    /// Pushed agent packages (`[agents] enabled`; set once at start).
    pub(crate) agents: std::sync::OnceLock<Arc<crate::node::agents::NodeAgents>>,
    /// The colony's member nodes ([`ToNode::Members`]).
    members: Mutex<Vec<NodeId>>,
    /// Signalled when a session's manifest arrives (a fetch right after a handover waits for it).
    pub(crate) manifest_arrived: tokio::sync::Notify,
    /// The `[agent]` sandbox limits of hosted sessions' manifests (read per agent input).
    agent_limits: std::sync::RwLock<HashMap<SessionId, opengrid_wasm::limits::AgentLimits>>,
    /// The blob-store generation last reported to the RC ([`ToRc::Blobs`]); 0 after a (re)join.
    blobs_reported: AtomicU64,
}

impl std::fmt::Debug for NodeCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeCore({})", self.identity.id())
    }
}

impl NodeCore {
    /// A new core, exporting `metrics` (created before the inference plane and the session host,
    /// whose instruments live on its meter).
    pub fn new(
        cfg: NodeConfig,
        identity: Identity,
        spec: NodeSpec,
        host: SessionHost,
        handlers: Handle,
        metrics: Arc<Metrics>,
    ) -> Self {
        let receipts = crate::node::receipts::ReceiptEmitter::new(
            &identity,
            cfg.receipts.window.0,
            spec.price_micros_per_input,
        );
        // Validated by the config (empty: not pinned).
        let rc_pin: Vec<NodeId> = crate::node::config::list(&cfg.rc_id)
            .filter_map(|d| NodeId::parse(d).ok())
            .collect();
        let mut operators = vec![identity.id()];
        operators.extend(crate::common::access::parse_operators(&cfg.operators));
        let mut access = crate::common::access::Access::new(operators, vec![]);
        if cfg.security_off_for_measurement {
            tracing::warn!("SECURITY OFF (security_off_for_measurement): open client API, plain migration links; benchmarks only");
            access = access.open_for_measurement();
        }
        for rc in &rc_pin {
            access.trust_rc(*rc);
        }
        NodeCore {
            cfg,
            identity,
            spec,
            host,
            handlers,
            metrics,
            lease: Mutex::new(Lease::none()),
            membership: Mutex::new(Membership::Outside),
            link_up: AtomicBool::new(false),
            rc_links: Mutex::new(std::collections::HashSet::new()),
            group_rcs: Mutex::new(Vec::new()),
            hb_seq: AtomicU64::new(0),
            sent: Mutex::new(HashMap::new()),
            rtt_us: AtomicU64::new(0),
            rtt_samples: Mutex::new(std::collections::VecDeque::with_capacity(RTT_WINDOW)),
            next_req: AtomicU64::new(1),
            lookups: Mutex::new(HashMap::new()),
            rc_api: Mutex::new(None),
            last_refusal: Mutex::new(None),
            joining_since: Mutex::new(None),
            mobility: std::sync::OnceLock::new(),
            receipts,
            reconciled: AtomicBool::new(false),
            pending_report: AtomicU64::new(0),
            manifests: Mutex::new(HashMap::new()),
            faults: std::sync::OnceLock::new(),
            trouble_sent: Mutex::new(None),
            join_watch: Default::default(),
            link: Mutex::new(None),
            offer: Mutex::new(None),
            rc_pin,
            access,
            agents: std::sync::OnceLock::new(),
            members: Mutex::new(Vec::new()),
            manifest_arrived: tokio::sync::Notify::new(),
            agent_limits: Default::default(),
            blobs_reported: AtomicU64::new(0),
        }
    }

    /// Keeps the RC's grant of `session` for its replica writes and restores.
    fn set_grant(&self, session: &str, grant: Option<opengrid_migration::SignedGrant>) {
        if let (Some(g), Some(m), Ok(sid)) =
            (grant, self.mobility(), SessionId::new(session.to_string()))
        {
            m.store.set_grant(&sid, g);
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.identity.id()
    }

    /// Whether this node has a control-plane link with the RC at `addr` (an `rc_cluster`
    /// entry: compared by the socket address it resolves to, as the link reports its peer).
    pub(crate) fn rc_linked(&self, addr: &str) -> bool {
        use std::net::ToSocketAddrs;
        let links = lock(&self.rc_links);
        if links.contains(addr) {
            return true;
        }
        addr.to_socket_addrs()
            .map(|mut it| it.any(|a| links.contains(&a.to_string())))
            .unwrap_or(false)
    }

    /// Every RC control-plane address to keep a link with: `rc_cluster`, and the RC group's
    /// replicas the leader listed.
    pub(crate) fn rc_addresses(&self) -> Vec<String> {
        let mut all = self.cfg.rc_addresses();
        let learned = lock(&self.group_rcs);
        // Only when the group has more replicas than `rc_cluster` names (one was added since):
        // the configured addresses may be proxies or names the replicas do not know themselves
        // by, and stay the way to reach the replicas they name.
        if learned.len() <= all.len() {
            return all;
        }
        for a in learned.iter() {
            if !all.contains(a) {
                all.push(a.clone());
            }
        }
        all
    }

    /// Membership state.
    pub fn membership(&self) -> Membership {
        *lock(&self.membership)
    }

    /// Whether this node may serve sessions now: it holds a valid lease and the RC has answered
    /// its holding report since it (re)joined.
    pub fn may_serve(&self) -> bool {
        // Not only a member: a node joining a new leader of its RC group keeps the lease it
        // holds ([`Self::follow_new_rc`]); a fence revokes it.
        (self.reconciled.load(Ordering::Acquire) && lock(&self.lease).valid(Instant::now()))
            || self.faults.get().is_some_and(|f| f.ignores_lease())
    }

    /// Time left on the lease.
    pub fn lease_left(&self) -> Duration {
        lock(&self.lease)
            .until()
            .map(|u| u.saturating_duration_since(Instant::now()))
            .unwrap_or_default()
    }

    /// The RC's client API, once joined.
    pub fn rc_api(&self) -> Option<String> {
        lock(&self.rc_api).clone()
    }

    /// The last join refusal, if any.
    pub fn last_refusal(&self) -> Option<String> {
        lock(&self.last_refusal).clone()
    }

    /// Why this node is not a member now (`None` when it is).
    pub fn outside_reason(&self) -> Option<String> {
        if self.membership() == Membership::Member {
            return None;
        }
        Some(crate::node::join_watch::outside_reason(&self.join_facts()))
    }

    pub(crate) fn join_facts(&self) -> crate::node::join_watch::JoinFacts {
        crate::node::join_watch::JoinFacts {
            rc: self.cfg.rc_cluster.clone(),
            connect_error: self.join_watch.connect_error(),
            link_up: self.link_up.load(Ordering::Acquire),
            refusal: self.last_refusal(),
        }
    }

    /// Logs why the node is outside, a few seconds after it left (or never joined) and then at a
    /// bounded rate; and once when it joins again after that.
    pub(crate) fn say_membership(&self, now: Instant) {
        use crate::node::join_watch::Say;
        match self
            .join_watch
            .observe(now, self.membership() == Membership::Member, || {
                self.join_facts()
            }) {
            Say::Nothing => {}
            Say::Outside {
                reason,
                outside_for,
                repeats,
            } => tracing::warn!(
                outside_s = outside_for.as_secs(),
                repeats,
                "not a member of colony {:?}: {reason}",
                self.cfg.colony
            ),
            Say::Joined { after } => tracing::info!(
                after_ms = after.as_millis() as u64,
                "joined the colony after being outside"
            ),
        }
    }

    /// Measured RTT to the RC.
    pub fn rtt(&self) -> Duration {
        Duration::from_micros(self.rtt_us.load(Ordering::Relaxed))
    }

    /// Sends a control-plane message to the RC (false when no RC is reachable).
    pub(crate) fn send_to_rc(&self, m: ToRc) -> bool {
        self.send_rc(m)
    }

    /// Sends to the RC: a join unsealed (it is signed), everything else MAC-sealed on the
    /// control link ([`crate::common::seal`]); nothing but a join is sent without a link.
    fn send_rc(&self, m: ToRc) -> bool {
        let group = wire::pg_rc(&self.cfg.colony, self.cfg.secret());
        // Normally one RC is in the group: the single RC, or the leader of an RC group. Right
        // after a leader change a deposed leader that is paused may still be listed beside the
        // new one; every one listed gets the message (the one this node has no link with
        // answers with a signed eviction, which points this node at it).
        // In one process (tests, embedded colonies) the RC is also listed once more per
        // control-plane connection looping back to it: the local actor alone is the RC then.
        let cells = ractor::pg::get_scoped_members(&wire::PG_SCOPE.to_string(), &group);
        let local = cells.iter().any(|c| c.get_id().is_local());
        let rcs: Vec<ractor::ActorRef<RcMsg>> = cells
            .into_iter()
            .filter(|c| !local || c.get_id().is_local())
            .map(ractor::ActorRef::from)
            .collect();
        if rcs.is_empty() {
            return false;
        }
        if matches!(m, ToRc::Join(_)) {
            let s = Sealed::in_clear(self.id(), Seal::None, m);
            let mut sent = false;
            for r in &rcs {
                sent |= r.cast(RcMsg::wire(s.clone())).is_ok();
            }
            return sent;
        }
        // Sealed and sent under the lock: counters go out in order.
        let mut link = lock(&self.link);
        match link.as_mut() {
            Some(l) => {
                let sealed = l.seal(self.id(), m);
                let mut sent = false;
                for r in &rcs {
                    sent |= r.cast(RcMsg::wire(sealed.clone())).is_ok();
                }
                sent
            }
            None => false,
        }
    }

    /// Handles one sealed message from the RC: a MAC-sealed one on the control link, or a signed
    /// join ack (for the pending join; it sets up the link) or eviction; anything else is refused
    /// and counted (`opengrid_cluster_control_refused_total{reason}`).
    pub fn on_sealed(self: &Arc<Self>, s: Sealed<ToNode>) {
        let from = s.from;
        let checked = match &s.seal {
            Seal::Aead { .. } => match lock(&self.link).as_mut() {
                Some(l) => l.open(s),
                None => Err(SealError::NoLink(from.did())),
            },
            Seal::Sig { .. } => {
                let checked = self.check_signed(&s);
                checked.and(match s.payload {
                    crate::common::seal::Payload::Clear(m) => Ok(m),
                    crate::common::seal::Payload::Encrypted(_) => Err(SealError::NotAllowed(
                        "a signed message must be in the clear",
                    )),
                })
            }
            Seal::None => Err(SealError::NotAllowed("unsealed message from the RC")),
        };
        match checked {
            Ok(ToNode::Rejoin { reason }) => self.follow_new_rc(&from, &reason),
            Ok(msg) => self.on_message(msg),
            Err(e) => {
                self.metrics
                    .control_refused
                    .add(1, &[opentelemetry::KeyValue::new("reason", e.reason())]);
                tracing::debug!(%from, error = %e, "control message refused");
            }
        }
    }

    /// A signed [`ToNode::Rejoin`] from an RC of the colony that has no link with this node: a
    /// new leader of the RC group took office, or the RC restarted (ADR 0037). The node joins it
    /// *keeping its lease* — that RC declares nobody dead before every lease granted before it
    /// took office has run out — so its sessions keep serving; the new lease then extends it.
    fn follow_new_rc(&self, rc: &NodeId, reason: &str) {
        {
            let mut m = lock(&self.membership);
            if *m == Membership::Joining {
                return;
            }
            *m = Membership::Outside;
        }
        tracing::info!(rc = %rc, %reason, "another RC of the colony leads: joining it, lease kept");
        // At once, not at the next tick: the lease keeps running meanwhile.
        self.send_join(Instant::now());
    }

    fn check_signed(&self, s: &Sealed<ToNode>) -> Result<(), SealError> {
        crate::common::seal::verify_signed(s, &self.id(), wire::unix_ms(), SIGNED_MAX_SKEW_MS)?;
        if !self.rc_pin.is_empty() && !self.rc_pin.contains(&s.from) {
            return Err(SealError::UntrustedRc {
                got: s.from.did(),
                want: self
                    .rc_pin
                    .iter()
                    .map(NodeId::did)
                    .collect::<Vec<_>>()
                    .join(","),
            });
        }
        match s.clear().ok_or(SealError::NotAllowed(
            "a signed message must be in the clear",
        ))? {
            ToNode::JoinAck {
                nonce, kx, refused, ..
            } => {
                let mut offer = lock(&self.offer);
                let Some((pending, o)) = offer.as_ref() else {
                    return Err(SealError::NotAllowed("a join ack without a pending join"));
                };
                if pending != nonce {
                    return Err(SealError::NotAllowed("a join ack for another join"));
                }
                if refused.is_none() {
                    let Some(kx) = kx else {
                        return Err(SealError::NotAllowed("an accepting join ack without a key"));
                    };
                    let key = o.link_key(kx, &self.id(), &s.from, &o.public, kx, *nonce)?;
                    *lock(&self.link) = Some(crate::common::seal::Link::new(key, s.from));
                    *offer = None;
                }
                Ok(())
            }
            ToNode::Evicted { .. } => match lock(&self.link).as_ref() {
                // An eviction from the RC we are linked to, or before any link.
                Some(l) if l.peer != s.from => Err(SealError::NoLink(s.from.did())),
                _ => Ok(()),
            },
            // From any RC of the colony (its signature checked above): join it, lease kept.
            ToNode::Rejoin { .. } => Ok(()),
            _ => Err(SealError::NotAllowed(
                "only a join ack, an eviction or a rejoin may come signed",
            )),
        }
    }

    /// Periodic work: join when outside, heartbeat when a member, enforce the lease.
    pub fn tick(self: &Arc<Self>) {
        let now = Instant::now();
        let state = self.membership();
        match state {
            Membership::Outside => {
                if self.link_up.load(Ordering::Acquire) {
                    self.send_join(now);
                }
            }
            Membership::Joining => {
                // No answer (lost, or the RC has not seen our agent yet): try again.
                let since = *lock(&self.joining_since);
                if since.is_none_or(|t| now.saturating_duration_since(t) > Duration::from_secs(1)) {
                    *lock(&self.membership) = Membership::Outside;
                }
            }
            Membership::Member => {
                let seq = self.hb_seq.fetch_add(1, Ordering::Relaxed) + 1;
                if self.pending_report.load(Ordering::Acquire) != 0 {
                    // The rejoin report or its ack was lost: send it again.
                    self.send_holding(true);
                } else if self.reconciled.load(Ordering::Acquire)
                    && seq.is_multiple_of(REPORT_EVERY)
                {
                    self.send_holding(false);
                }
                {
                    let mut sent = lock(&self.sent);
                    sent.insert(seq, now);
                    if sent.len() > 256 {
                        sent.retain(|s, _| *s + 128 > seq);
                    }
                }
                let mut warm: Vec<String> = Vec::new();
                for id in self.host.session_ids() {
                    if let Some(s) = self.host.get(&id) {
                        let h = s.handler_id().to_string();
                        if !warm.contains(&h) {
                            warm.push(h);
                        }
                    }
                }
                let ok = self.send_rc(ToRc::Heartbeat {
                    node: self.id(),
                    seq,
                    sessions: self.host.len() as u32,
                    rtt_us: self.rtt_us.load(Ordering::Relaxed),
                    warm,
                });
                if ok {
                    self.metrics.heartbeats.add(1, &[self.metrics.role()]);
                }
                let usage = self.host.session_ids().into_iter().filter_map(|id| {
                    let u = self.host.get(&id)?.usage_counters().snapshot();
                    Some((id, u))
                });
                for m in self.receipts.tick(now, usage) {
                    self.send_rc(m);
                }
                self.report_replica_trouble(now);
                self.report_blobs();
            }
        }
        // Lease watchdog: a member whose lease ran out stops serving before the RC may re-place.
        let expired = {
            let l = lock(&self.lease);
            l.until().is_some_and(|u| now >= u)
        };
        if expired {
            self.fence("lease expired");
        }
    }

    /// Tells the RC (at most once per [`TROUBLE_REPORT_EVERY`]) which replica holders failed
    /// the last [`TROUBLE_AFTER`] replica writes in a row.
    fn report_replica_trouble(&self, now: Instant) {
        let Some(m) = self.mobility() else {
            return;
        };
        let peers = m.store.troubled_peers(TROUBLE_AFTER);
        if peers.is_empty() {
            return;
        }
        let mut last = lock(&self.trouble_sent);
        if last.is_some_and(|t| now.saturating_duration_since(t) < TROUBLE_REPORT_EVERY) {
            return;
        }
        *last = Some(now);
        tracing::warn!(peers = ?peers, "replica holders failing: asking the RC to move replica sets off them");
        self.send_rc(ToRc::ReplicaTrouble {
            node: self.id(),
            peers: peers.iter().map(|a| a.to_string()).collect(),
        });
    }

    fn send_join(&self, now: Instant) {
        let offer = crate::common::seal::KeyOffer::new();
        let body = JoinBody {
            colony: self.cfg.colony.clone(),
            spec: self.spec.clone(),
            unix_ms: wire::unix_ms(),
            nonce: rand::random(),
            kx: offer.public,
            join_token: Some(self.cfg.join_token.clone()).filter(|t| !t.is_empty()),
        };
        *lock(&self.offer) = Some((body.nonce, offer));
        let req = JoinRequest::sign(&self.identity, &body);
        if self.send_rc(ToRc::Join(req)) {
            *lock(&self.membership) = Membership::Joining;
            *lock(&self.joining_since) = Some(now);
            tracing::debug!("join sent");
        }
    }

    /// Stops serving: drops the lease and goes back to joining. Sessions are kept, serving
    /// nothing, until the RC answers the holding report sent after the next join (module docs).
    pub fn fence(&self, reason: &str) {
        {
            let mut l = lock(&self.lease);
            if l.until().is_none() && self.membership() == Membership::Outside {
                return;
            }
            l.revoke();
        }
        *lock(&self.membership) = Membership::Outside;
        self.reconciled.store(false, Ordering::Release);
        self.pending_report.store(0, Ordering::Release);
        self.blobs_reported.store(0, Ordering::Release);
        tracing::warn!(
            reason,
            sessions = self.host.len(),
            "lease lost: stopped serving; sessions kept until the RC confirms them"
        );
        self.metrics.lease_lost.add(1, &[]);
    }

    /// Handles one control-plane message from the RC.
    pub fn on_message(self: &Arc<Self>, msg: ToNode) {
        match msg {
            ToNode::JoinAck {
                refused,
                rc_api,
                rc,
                ..
            } => match refused {
                None => {
                    tracing::info!(rc = %rc, rc_api = %rc_api, "joined colony");
                    self.access.trust_rc(rc);
                    *lock(&self.rc_api) = Some(rc_api);
                    if let Some(m) = self.mobility() {
                        m.set_rc(&rc);
                    }
                    self.receipts.set_rc(&rc);
                    *lock(&self.last_refusal) = None;
                    *lock(&self.membership) = Membership::Member;
                    // A (re)joined RC may know nothing of our blobs: report them again.
                    self.blobs_reported.store(0, Ordering::Release);
                    if self.mobility().is_some_and(|m| m.draining()) {
                        // A rejoin (the RC evicted us, or restarted) clears what the RC knew:
                        // say again that nothing new may be placed here.
                        self.send_to_rc(ToRc::Draining { node: self.id() });
                    }
                    if !self.reconciled.load(Ordering::Acquire) {
                        // The report also tells the RC what this node no longer holds (it
                        // restarted empty): it is sent even when empty, until acknowledged.
                        // Holding nothing, there is nothing to reconcile before serving.
                        let empty = self.host.is_empty();
                        self.send_holding(true);
                        if empty {
                            self.reconciled.store(true, Ordering::Release);
                        }
                    }
                    // First heartbeat right away: it brings the first lease.
                    self.tick();
                }
                Some(why) => {
                    tracing::error!(rc = %rc, reason = %why, "join refused");
                    *lock(&self.last_refusal) = Some(why);
                    *lock(&self.membership) = Membership::Outside;
                }
            },
            ToNode::Lease { seq, lease_ms } => {
                let sent = lock(&self.sent).remove(&seq);
                if let Some(sent) = sent {
                    let now = Instant::now();
                    let sample = now.saturating_duration_since(sent).as_micros() as u64;
                    self.rtt_us
                        .store(windowed_min(&self.rtt_samples, sample), Ordering::Relaxed);
                    if self.membership() == Membership::Member {
                        lock(&self.lease).grant(sent, Duration::from_millis(lease_ms));
                    }
                }
            }
            ToNode::Evicted { reason } => {
                tracing::warn!(%reason, "evicted by the RC");
                self.fence(&reason);
            }
            ToNode::Start {
                req,
                session,
                epoch,
                manifest,
                replicas,
                restore_from,
                grant,
            } => {
                self.set_grant(&session, grant);
                let me = self.clone();
                tokio::spawn(async move {
                    let error = me
                        .start_session(&session, epoch, &manifest, &replicas, &restore_from)
                        .await
                        .err();
                    me.send_rc(ToRc::Started {
                        node: me.id(),
                        req,
                        error,
                    });
                });
            }
            ToNode::ReceiptsAck { accepted, refused } => {
                self.receipts.on_ack(&accepted, &refused);
            }
            ToNode::Replicas {
                session,
                replicas,
                grant,
            } => {
                self.set_grant(&session, grant);
                if let (Some(m), Ok(sid)) = (self.mobility().cloned(), SessionId::new(session)) {
                    tokio::spawn(async move { m.change_replicas(&sid, &replicas).await });
                }
            }
            ToNode::HandoverPlan { req, plan } => {
                if let Some(m) = self.mobility() {
                    m.on_plan(req, plan);
                }
            }
            ToNode::Handover { session, target } => {
                if let Ok(sid) = SessionId::new(session) {
                    let me = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = me.handover(&sid, target).await {
                            tracing::warn!(session = %sid, error = %e, "handover asked by the RC did not happen");
                        }
                    });
                }
            }
            ToNode::HoldingAck { report, drop } => self.on_holding_ack(report, drop),
            ToNode::Rejoin { reason } => {
                let peer = lock(&self.link).as_ref().map(|l| l.peer);
                if let Some(peer) = peer {
                    self.follow_new_rc(&peer, &reason);
                }
            }
            ToNode::RcGroup { cluster } => {
                let mut known = lock(&self.group_rcs);
                if *known != cluster {
                    tracing::info!(rcs = ?cluster, "the RC group's replicas");
                    *known = cluster.into_iter().take(16).collect();
                }
            }
            ToNode::Members { keys } => {
                // Sorted by key bytes, as `NodeId`'s order; a key that is no point is skipped.
                let mut nodes: Vec<NodeId> = keys
                    .iter()
                    .filter_map(|k| NodeId::from_public_key(k).ok())
                    .collect();
                nodes.sort();
                nodes.dedup();
                *lock(&self.members) = nodes.clone();
                if let Some(m) = self.mobility() {
                    m.set_members(&nodes);
                }
            }
            ToNode::MembersJoined { keys } => {
                let nodes = keys
                    .iter()
                    .take(crate::common::wire::MAX_MEMBERS_JOINED)
                    .filter_map(|k| NodeId::from_public_key(k).ok());
                for node in nodes {
                    {
                        // Sorted as the RC sends the whole list; only the RC adds (sealed link).
                        let mut members = lock(&self.members);
                        match members.binary_search(&node) {
                            Ok(_) => continue,
                            Err(at) => members.insert(at, node),
                        }
                    }
                    if let Some(m) = self.mobility() {
                        m.add_member(&node);
                    }
                }
            }
            ToNode::Prefetch { handler, hash } => {
                let Some(agents) = self.agents.get().cloned() else {
                    return;
                };
                let me = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = agents
                        .ensure(&me.host, &handler, &hash, &me.fetch_from())
                        .await
                    {
                        tracing::warn!(error = %e, "agent prefetch failed");
                    }
                });
            }
            ToNode::Manifest { session, manifest } => {
                if let Ok(sid) = SessionId::new(session) {
                    if self.host.get(&sid).is_some() {
                        self.keep_manifest(sid, manifest);
                    }
                }
            }
            ToNode::LookupReply { req, location } => {
                if let Some(tx) = lock(&self.lookups).remove(&req) {
                    let _ = tx.send(location);
                }
            }
        }
    }

    async fn start_session(
        &self,
        session: &str,
        epoch: u64,
        manifest: &str,
        replicas: &[String],
        restore_from: &[String],
    ) -> Result<(), String> {
        // Right after joining, the first lease is one heartbeat round trip away.
        let deadline = Instant::now() + Duration::from_millis(500);
        while !self.may_serve() {
            if Instant::now() >= deadline || self.membership() != Membership::Member {
                return Err("node holds no lease".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if self.mobility().is_some_and(|m| m.draining()) {
            // The RC may not have heard (or may have forgotten, across a rejoin) that we drain.
            return Err("node is draining".into());
        }
        let sid = SessionId::new(session).map_err(|e| e.to_string())?;
        let m = Manifest::from_json_str(manifest).map_err(|e| e.to_string())?;
        match (&m.session.package, self.agents.get()) {
            (Some(hash), Some(agents)) => {
                agents
                    .ensure(&self.host, &m.session.handler, hash, &self.fetch_from())
                    .await
                    .map_err(|e| e.to_string())?;
            }
            (Some(_), None) => {
                return Err(format!(
                    "agent {:?}: this node does not run agent packages ([agents] enabled = false)",
                    m.session.handler
                ))
            }
            (None, _) if !self.spec.handlers.contains(&m.session.handler) => {
                return Err(format!("handler {:?} not served here", m.session.handler));
            }
            (None, _) => {}
        }
        if self.host.len() >= self.cfg.capacity as usize {
            return Err(format!("node full ({} sessions)", self.host.len()));
        }
        if let Some(old) = self.host.get(&sid) {
            use opengrid_actors::SessionStatus as St;
            if matches!(
                old.status(),
                St::Moved { .. } | St::Stopped { .. } | St::Closed
            ) || old.epoch().0 < epoch
            {
                // A former incarnation (moved away, fenced, or kept through a lease loss while
                // a failover gave it a newer epoch): it is coming back here. Releasing it also
                // ends its relaying to the holder it moved to.
                let _ = self.host.release(&sid).await;
            }
        }
        self.prepare_start(&sid, Epoch(epoch), replicas, restore_from)
            .await?;
        self.keep_manifest(sid.clone(), manifest.to_string());
        let host = self.host.clone();
        let handler = m.session.handler.clone();
        let policy = m.checkpoint_policy();
        let r = self
            .handlers
            .spawn(async move {
                host.start_dyn(&handler, sid, Epoch(epoch), policy)
                    .await
                    .map(|_| ())
            })
            .await;
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("start task failed: {e}")),
        }
    }

    /// Asks the RC where a session lives: `(api, epoch)`.
    pub async fn lookup(&self, sid: &SessionId) -> Option<(String, u64)> {
        self.try_lookup(sid).await.ok().flatten()
    }

    /// [`lookup`](Self::lookup), telling "the RC does not know it" (`Ok(None)`) from "the RC did
    /// not answer" (`Err`: no link, or no answer within 1 s — a retryable condition, not a
    /// missing session).
    pub async fn try_lookup(&self, sid: &SessionId) -> Result<Option<(String, u64)>, String> {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.lookups).insert(req, tx);
        if !self.send_rc(ToRc::Lookup {
            node: self.id(),
            req,
            session: sid.to_string(),
        }) {
            lock(&self.lookups).remove(&req);
            return Err("no link to the RC".into());
        }
        match tokio::time::timeout(Duration::from_secs(1), rx).await {
            Ok(Ok(l)) => Ok(l),
            _ => {
                lock(&self.lookups).remove(&req);
                Err("the RC did not answer the lookup within 1 s".into())
            }
        }
    }

    /// Tells the RC a session left this node.
    pub fn notify_closed(&self, sid: &SessionId, epoch: Epoch) {
        self.send_rc(ToRc::Closed {
            node: self.id(),
            session: sid.to_string(),
            epoch: epoch.0,
        });
    }
}

/// The node's control-plane endpoint actor (member of pg group `og.node.<did>`).
pub struct NodeAgent {
    /// Shared core.
    pub core: Arc<NodeCore>,
}

impl Actor for NodeAgent {
    type Msg = NodeMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, myself: ActorRef<NodeMsg>, _: ()) -> Result<(), ActorProcessingErr> {
        ractor::pg::join_scoped(
            wire::PG_SCOPE.to_string(),
            wire::pg_node(&self.core.id()),
            vec![myself.get_cell()],
        );
        myself.send_interval(self.core.cfg.heartbeat_period.0, || {
            NodeMsg::Local(NodeLocal::Tick)
        });
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<NodeMsg>,
        msg: NodeMsg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeMsg::Wire(w) => self.core.on_sealed(*w),
            NodeMsg::Local(NodeLocal::Tick) => self.core.tick(),
        }
        Ok(())
    }
}

/// Consecutive failed replica writes to one holder before the node reports it to the RC.
pub const TROUBLE_AFTER: u32 = 3;
/// Most one replica-trouble report per this period.
pub const TROUBLE_REPORT_EVERY: Duration = Duration::from_secs(1);

/// A serving node repeats its holding report every this many heartbeats (100 ms: 1 s).
pub const REPORT_EVERY: u64 = 10;

/// Heartbeat round trips the reported RTT is the minimum of (100 ms heartbeats: 1.6 s).
pub const RTT_WINDOW: usize = 16;

/// Adds `sample` to the window and returns the window's minimum. Scheduling and queueing delays
/// only ever add to a round trip, so the minimum over a short window is the path's RTT (as TCP's
/// and BBR's min-RTT filters use it); the last sample alone made admission scores jump by tens of
/// milliseconds on a loaded machine.
fn windowed_min(window: &Mutex<std::collections::VecDeque<u64>>, sample: u64) -> u64 {
    let mut w = lock(window);
    if w.len() == RTT_WINDOW {
        w.pop_front();
    }
    w.push_back(sample);
    w.iter().copied().min().unwrap_or(sample)
}

#[cfg(test)]
mod rtt_tests {
    use super::*;

    #[test]
    fn rtt_is_the_minimum_of_the_recent_window() {
        let w = Mutex::new(std::collections::VecDeque::new());
        assert_eq!(windowed_min(&w, 500), 500);
        assert_eq!(
            windowed_min(&w, 30_000),
            500,
            "a scheduling spike is ignored"
        );
        assert_eq!(windowed_min(&w, 300), 300);
        for _ in 0..RTT_WINDOW {
            windowed_min(&w, 2_000);
        }
        assert_eq!(windowed_min(&w, 2_000), 2_000, "old minima age out");
    }
}

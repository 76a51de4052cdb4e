//! A running Raft replica ([`RaftNode`]): storage + transport + RPC server. The client of the
//! group for processes that are not replicas is [`crate::client::Client`] (re-exported here).
//!
//! The RPC server accepts only authenticated links (`opengrid-link`): every connection starts
//! with a mutual TLS 1.3 handshake in which the peer proves its did:mycel key. Client requests
//! (propose, read, status, admin) are served to any authenticated peer (their payloads carry
//! their own signatures where it matters); Raft RPCs only to the member whose id they claim
//! ([`crate::auth`]). The server holds at most `max_connections` connections, gives a handshake
//! `handshake_timeout` and closes a connection that sends no request for `idle_timeout`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use futures::{SinkExt, StreamExt};
use opengrid_link::{Link, LinkIdentity, ServerStream};
use opengrid_session::Did;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{EntryPayload, Membership, SnapshotPolicy};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

pub use crate::client::Client;

use crate::application::Application;
use crate::auth::{
    AdminAuthorizer, AdminRequest, RaftSenderCheck, RefusalReason, Refusals, SenderRefused,
};
use crate::error::ConsensusError;
use crate::network::{
    server_codec, Connection, LinkNetworkFactory, NodeStatus, RpcRequest, RpcResponse, WireError,
    DEFAULT_MAX_FRAME_BYTES,
};
use crate::store::{open_db, LogStore, StateMachineStore};
use crate::types::{Command, Node, NodeId, Raft, RaftMetrics};

/// Default `max_connections` of a replica's RPC server.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// Default `idle_timeout`: a connection that sends no request for this long is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `handshake_timeout` of the TLS handshake on an accepted connection.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How to run one replica.
#[derive(Debug, Clone)]
pub struct RaftNodeConfig {
    /// Stable node id (persisted implicitly: reuse it with the same `data_dir`).
    pub id: NodeId,
    /// This replica's identity key: its links prove its DID, which is its DID as a member.
    pub key: SigningKey,
    /// `host:port` to listen on and to advertise to peers (port 0 picks a free port).
    pub addr: String,
    /// RocksDB directory for log, vote and snapshots.
    pub data_dir: PathBuf,
    /// Initial voters (id → address and DID), this node included or not. When non-empty and this
    /// node is among them, a fresh node initializes the cluster with exactly these voters
    /// (idempotent on every member). Every other voter needs its DID; this node's own entry may
    /// leave it out (it is this node's key's). Empty: join later as a learner.
    pub peers: BTreeMap<NodeId, Node>,
    /// Leader heartbeat interval.
    pub heartbeat: Duration,
    /// Election timeout range; a follower that hears nothing for a random time in it campaigns.
    pub election_timeout: (Duration, Duration),
    /// Build a snapshot (and purge older logs) every this many applied entries.
    pub snapshot_every: u64,
    /// Largest frame accepted or sent on the transport.
    pub max_frame_bytes: usize,
    /// How long a client request waits for a reply from another replica.
    pub request_timeout: Duration,
    /// Checks every admin request (add learner, change membership) before it is served; `None`
    /// serves them unchecked (plain groups; the settlement ledger always sets one).
    pub admin_authorizer: Option<Arc<dyn AdminAuthorizer>>,
    /// Serve client requests (writes, reads, status) and admin requests only to the group's own
    /// members (a peer whose link proved the DID of a node of the current membership): for
    /// groups whose application trusts every command it is given (the RC group). `false`: any
    /// authenticated peer may propose (the ledger checks each command's signatures itself).
    pub members_only: bool,
    /// How often replication retries a member it could not reach (500 ms by default, openraft's
    /// own). Well under the election timeout for a group that must not let a restarted member
    /// campaign before the leader has reached it.
    pub retry_unreachable: Duration,
    /// Open connections at most on the RPC server; more are closed as they arrive (and counted,
    /// `too_many_connections`).
    pub max_connections: usize,
    /// Longest wait for the TLS handshake of an accepted connection.
    pub handshake_timeout: Duration,
    /// A connection that sends no request for this long is closed.
    pub idle_timeout: Duration,
}

impl RaftNodeConfig {
    /// Defaults that suit a laptop or a 2-core CI box, for the replica `id` whose identity is
    /// `key`.
    pub fn new(
        id: NodeId,
        key: SigningKey,
        addr: impl Into<String>,
        data_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            id,
            key,
            addr: addr.into(),
            data_dir: data_dir.into(),
            peers: BTreeMap::new(),
            // openraft bounds each AppendEntries RPC by the heartbeat interval, so it must cover
            // sending + fsyncing a ~2 MiB request on a busy 2-core box.
            heartbeat: Duration::from_millis(250),
            election_timeout: (Duration::from_millis(1000), Duration::from_millis(2000)),
            snapshot_every: 5_000,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            request_timeout: Duration::from_secs(10),
            admin_authorizer: None,
            members_only: false,
            retry_unreachable: crate::network::DEFAULT_RETRY_UNREACHABLE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }

    /// This replica's DID (its key's).
    pub fn did(&self) -> Did {
        Did::from_public_key(&self.key.verifying_key())
    }

    /// Parse `1=did:mycel:z…@127.0.0.1:5001,2=did:mycel:z…@127.0.0.1:5002` into a peer map (a
    /// replica's own entry may be `ID=HOST:PORT`; see [`RaftNodeConfig::peers`]).
    pub fn parse_peers(s: &str) -> Result<BTreeMap<NodeId, Node>, ConsensusError> {
        let mut out = BTreeMap::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (id, addr) = part.split_once('=').ok_or_else(|| {
                ConsensusError::Config(format!("peer `{part}`: expected `ID=DID@HOST:PORT`"))
            })?;
            let id: NodeId = id.trim().parse().map_err(|_| {
                ConsensusError::Config(format!("peer `{part}`: id `{id}` is not an integer"))
            })?;
            let node = Node::parse(addr)
                .map_err(|e| ConsensusError::Config(format!("peer `{part}`: {e}")))?;
            if out.insert(id, node).is_some() {
                return Err(ConsensusError::Config(format!("peer id {id} listed twice")));
            }
        }
        Ok(out)
    }

    /// The initial voters with this replica's own DID filled in; every voter must have one.
    fn initial_members(
        &self,
        local_addr: SocketAddr,
    ) -> Result<BTreeMap<NodeId, Node>, ConsensusError> {
        let me = self.did();
        let mut members = self.peers.clone();
        for (id, node) in members.iter_mut() {
            if *id == self.id {
                if node.did.as_ref().is_some_and(|d| *d != me) {
                    return Err(ConsensusError::Config(format!(
                        "peer {id} is this replica, whose key is {me}, not {}",
                        node
                    )));
                }
                *node = Node::new(local_addr.to_string(), me.clone());
            } else if node.did.is_none() {
                return Err(ConsensusError::Config(format!(
                    "peer {id} ({}) has no DID: write it as `{id}=DID@{}`",
                    node.addr, node.addr
                )));
            }
        }
        Ok(members)
    }

    fn raft_config(&self) -> Result<openraft::Config, ConsensusError> {
        let ms = |d: Duration| d.as_millis() as u64;
        if self.election_timeout.0 <= self.heartbeat {
            return Err(ConsensusError::Config(
                "election_timeout minimum must exceed the heartbeat interval".into(),
            ));
        }
        if self.snapshot_every == 0 {
            return Err(ConsensusError::Config(
                "snapshot_every must be at least 1".into(),
            ));
        }
        openraft::Config {
            cluster_name: "opengrid".into(),
            heartbeat_interval: ms(self.heartbeat),
            election_timeout_min: ms(self.election_timeout.0),
            election_timeout_max: ms(self.election_timeout.1),
            install_snapshot_timeout: 10_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: 100,
            purge_batch_size: 256,
            max_payload_entries: 64,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ConsensusError::Config(e.to_string()))
    }
}

struct Inner<A> {
    id: NodeId,
    raft: Raft,
    sm: StateMachineStore<A>,
    max_frame: usize,
    request_timeout: Duration,
    authorizer: Option<Arc<dyn AdminAuthorizer>>,
    /// Client and admin requests only from members ([`RaftNodeConfig::members_only`]).
    members_only: bool,
    /// This replica's links (server and client side).
    link: Link,
    /// Who may send Raft RPCs here.
    senders: RaftSenderCheck,
    /// Refused requests and connections, by reason.
    refusals: Refusals,
    max_connections: usize,
    idle_timeout: Duration,
}

/// One running replica of a Raft group whose state machine is the application `A`.
pub struct RaftNode<A: Application> {
    inner: Arc<Inner<A>>,
    local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

impl<A: Application> RaftNode<A> {
    /// Open storage under `config.data_dir` (restoring the last snapshot), bind the RPC listener,
    /// start Raft, and initialize the cluster when `config.peers` names this node.
    pub async fn start(config: RaftNodeConfig, app: A) -> Result<Self, ConsensusError> {
        let raft_config = Arc::new(config.raft_config()?);
        std::fs::create_dir_all(&config.data_dir)?;
        let db = open_db(&config.data_dir).map_err(|source| ConsensusError::OpenDb {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        let log = LogStore::new(db.clone());
        let sm = StateMachineStore::open(db, app)?;
        let identity = LinkIdentity::from_signing_key(&config.key)?;
        // Any authenticated peer may connect (clients included); what it may ask is decided per
        // request from its DID.
        let link = Link::new(&identity, Arc::new(|_: &Did| true))?
            .with_handshake_timeout(config.handshake_timeout);
        let listener = TcpListener::bind(&config.addr).await?;
        let local_addr = listener.local_addr()?;
        let members = if config.peers.contains_key(&config.id) {
            Some(config.initial_members(local_addr)?)
        } else {
            None
        };
        let raft = Raft::new(
            config.id,
            raft_config,
            LinkNetworkFactory::new(link.clone(), config.max_frame_bytes)
                .with_retry_unreachable(config.retry_unreachable),
            log,
            sm.clone(),
        )
        .await
        .map_err(|e| ConsensusError::Raft(e.to_string()))?;
        let inner = Arc::new(Inner {
            id: config.id,
            raft,
            sm,
            max_frame: config.max_frame_bytes,
            request_timeout: config.request_timeout,
            authorizer: config.admin_authorizer.clone(),
            members_only: config.members_only,
            senders: RaftSenderCheck::new(config.id, identity.did().clone()),
            link,
            refusals: Refusals::default(),
            max_connections: config.max_connections.max(1),
            idle_timeout: config.idle_timeout,
        });
        let (stop, stop_rx) = watch::channel(false);
        let server = tokio::spawn(serve(listener, inner.clone(), stop_rx));
        let node = Self {
            inner,
            local_addr,
            stop,
            server,
        };
        tracing::info!(id = config.id, addr = %local_addr, did = %identity.did(), "raft replica started");

        if let Some(members) = members {
            node.initialize(members).await?;
        }
        Ok(node)
    }

    /// This replica's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// This replica's DID (what its links prove).
    pub fn did(&self) -> &Did {
        self.inner.link.did()
    }

    /// The address the RPC server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The underlying openraft handle (for waits and advanced control).
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// Initialize a fresh cluster with these voters. A no-op when this node already has state.
    pub async fn initialize(&self, members: BTreeMap<NodeId, Node>) -> Result<(), ConsensusError> {
        if let Some((id, _)) = members.iter().find(|(_, n)| n.did.is_none()) {
            return Err(ConsensusError::Config(format!("member {id} has no DID")));
        }
        match self.inner.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(ConsensusError::Raft(e.to_string())),
        }
    }

    /// Propose `command`; returns the application's response once committed and applied.
    /// Forwards to the leader when this replica is not it.
    pub async fn client_write(&self, command: Vec<u8>) -> Result<Vec<u8>, ConsensusError> {
        self.wait_for_leader(self.inner.request_timeout).await?;
        self.inner.write(command, true).await
    }

    /// A linearizable read: confirmed by the leader, answered after its state machine caught up.
    pub async fn read(&self, query: Vec<u8>) -> Result<Vec<u8>, ConsensusError> {
        self.wait_for_leader(self.inner.request_timeout).await?;
        self.inner.read(query, true).await
    }

    /// Read this replica's local state (may lag the leader).
    pub fn local_read(&self, query: &[u8]) -> Vec<u8> {
        self.inner.sm.query(query)
    }

    /// Latest Raft metrics of this replica.
    pub fn metrics(&self) -> RaftMetrics {
        self.inner.raft.metrics().borrow().clone()
    }

    /// This replica's status (role, leader, applied index, state hash).
    pub fn status(&self) -> NodeStatus {
        self.inner.status()
    }

    /// Add a learner at `addr` that proves `did` (forwarded to the leader); returns once it is
    /// caught up. Without authorization: refused when this replica (or the leader) has an admin
    /// authorizer.
    pub async fn add_learner(
        &self,
        id: NodeId,
        addr: String,
        did: Did,
    ) -> Result<(), ConsensusError> {
        self.add_learner_with_auth(id, addr, did, Vec::new()).await
    }

    /// [`RaftNode::add_learner`] carrying `auth` for the replicas' admin authorizer.
    pub async fn add_learner_with_auth(
        &self,
        id: NodeId,
        addr: String,
        did: Did,
        auth: Vec<u8>,
    ) -> Result<(), ConsensusError> {
        self.inner
            .admin(
                RpcRequest::AddLearner {
                    id,
                    addr,
                    did,
                    auth,
                },
                true,
            )
            .await
            .map(|_| ())
    }

    /// Make exactly `voters` the voting members (learners among them are promoted, voters not
    /// among them are removed). Without authorization, like [`RaftNode::add_learner`].
    pub async fn change_membership(&self, voters: BTreeSet<NodeId>) -> Result<(), ConsensusError> {
        self.change_membership_with_auth(voters, Vec::new()).await
    }

    /// [`RaftNode::change_membership`] carrying `auth` for the replicas' admin authorizer.
    pub async fn change_membership_with_auth(
        &self,
        voters: BTreeSet<NodeId>,
        auth: Vec<u8>,
    ) -> Result<(), ConsensusError> {
        self.inner
            .admin(RpcRequest::ChangeMembership { voters, auth }, true)
            .await
            .map(|_| ())
    }

    /// Requests this replica refused so far: Raft RPCs from senders outside the membership or
    /// over a link of another DID, and admin requests its authorizer refused.
    pub fn refused_requests(&self) -> u64 {
        self.inner.refusals.requests()
    }

    /// What this replica refused, by reason (`opengrid_consensus_refused_total{reason}`).
    pub fn refusals(&self) -> &Refusals {
        &self.inner.refusals
    }

    /// Remove `id` from the voters and from the cluster.
    pub async fn remove_node(&self, id: NodeId) -> Result<(), ConsensusError> {
        let voters: BTreeSet<NodeId> = self
            .metrics()
            .membership_config
            .membership()
            .voter_ids()
            .filter(|v| *v != id)
            .collect();
        self.change_membership(voters).await
    }

    /// Wait until this replica knows a leader, up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, ConsensusError> {
        let mut rx = self.inner.raft.metrics();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(l) = rx.borrow().current_leader {
                return Ok(l);
            }
            tokio::time::timeout_at(deadline, rx.changed())
                .await
                .map_err(|_| ConsensusError::Timeout("waiting for a leader".into()))?
                .map_err(|_| ConsensusError::Raft("raft stopped".into()))?;
        }
    }

    /// Stop Raft and the RPC server; the data dir can then be reopened.
    pub async fn shutdown(self) -> Result<(), ConsensusError> {
        let _ = self.stop.send(true);
        let res = self
            .inner
            .raft
            .shutdown()
            .await
            .map_err(|e| ConsensusError::Raft(e.to_string()));
        let _ = self.server.await;
        res
    }
}

impl<A: Application> Inner<A> {
    fn status(&self) -> NodeStatus {
        let m = self.raft.metrics().borrow().clone();
        let (state_hash, last_applied) = self.sm.state_hash();
        let membership = m.membership_config.membership();
        NodeStatus {
            id: self.id,
            state: format!("{:?}", m.state),
            current_term: m.current_term,
            current_leader: m.current_leader,
            last_log_index: m.last_log_index,
            last_applied,
            voters: membership.voter_ids().collect(),
            nodes: membership
                .nodes()
                .map(|(id, n)| (*id, n.to_string()))
                .collect(),
            state_hash,
        }
    }

    fn leader_node(&self, leader: Option<NodeId>) -> Option<Node> {
        let leader = leader?;
        let m = self.raft.metrics().borrow().clone();
        m.membership_config.membership().get_node(&leader).cloned()
    }

    /// Hands `req` to the leader, over a link that must reach the leader's DID.
    async fn forward(
        &self,
        leader_id: Option<NodeId>,
        leader: Option<Node>,
        req: RpcRequest,
    ) -> Result<Vec<u8>, ConsensusError> {
        let Some(node) = leader.filter(|n| n.did.is_some()) else {
            return Err(ConsensusError::NotLeader {
                leader_id,
                leader_addr: None,
            });
        };
        let mut conn = Connection::new(self.link.clone(), &node, self.max_frame);
        match conn.request(&req, self.request_timeout).await? {
            RpcResponse::Client(Ok(bytes)) => Ok(bytes),
            RpcResponse::Client(Err(WireError::ForwardToLeader {
                leader_id,
                leader_addr,
            })) => Err(ConsensusError::NotLeader {
                leader_id,
                leader_addr,
            }),
            RpcResponse::Client(Err(WireError::Failed(m))) => Err(ConsensusError::Remote(m)),
            RpcResponse::Client(Err(WireError::Unauthorized(m))) => {
                Err(ConsensusError::Unauthorized(m))
            }
            RpcResponse::Client(Err(WireError::NotAMember { sender })) => {
                Err(ConsensusError::NotAMember(sender))
            }
            RpcResponse::Client(Err(WireError::PeerMismatch { sender, peer })) => {
                Err(ConsensusError::PeerMismatch { sender, peer })
            }
            other => Err(ConsensusError::Protocol(format!(
                "unexpected response {other:?}"
            ))),
        }
    }

    /// Serves a Raft RPC only when `peer` is the member the request claims to come from (see
    /// [`crate::auth`]).
    fn check_sender(
        &self,
        kind: &'static str,
        sender: Option<NodeId>,
        peer: &Did,
        carried: Option<&Membership<NodeId, Node>>,
    ) -> Result<(), WireError> {
        let refusal = {
            let rx = self.raft.metrics();
            let m = rx.borrow();
            self.senders
                .check(m.membership_config.membership(), sender, peer, carried)
        };
        let Err(refusal) = refusal else {
            return Ok(());
        };
        let (reason, answer) = match &refusal {
            SenderRefused::NotAMember => {
                (RefusalReason::NotAMember, WireError::NotAMember { sender })
            }
            SenderRefused::PeerMismatch { .. } => (
                RefusalReason::PeerMismatch,
                WireError::PeerMismatch {
                    sender,
                    peer: peer.to_string(),
                },
            ),
        };
        let total = self.refusals.count(reason);
        // Logged at the 1st, 2nd, 4th, 8th… refusal: a flood cannot fill the disk with logs.
        if total.is_power_of_two() {
            tracing::warn!(
                kind,
                ?sender,
                %peer,
                reason = reason.label(),
                refused_total = total,
                "refused a raft rpc"
            );
        }
        Err(answer)
    }

    /// Whether `peer` is the DID of a node of this replica's current membership.
    fn is_member_did(&self, peer: &Did) -> bool {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let found = m
            .membership()
            .nodes()
            .any(|(_, n)| n.did.as_ref() == Some(peer));
        found
    }

    fn authorize(&self, req: &RpcRequest) -> Result<(), ConsensusError> {
        let Some(authorizer) = &self.authorizer else {
            return Ok(());
        };
        let (admin, auth) = match req {
            RpcRequest::AddLearner {
                id,
                addr,
                did,
                auth,
            } => (
                AdminRequest::AddLearner {
                    id: *id,
                    addr: addr.clone(),
                    did: did.clone(),
                },
                auth,
            ),
            RpcRequest::ChangeMembership { voters, auth } => (
                AdminRequest::ChangeMembership {
                    voters: voters.clone(),
                },
                auth,
            ),
            _ => return Ok(()),
        };
        authorizer.authorize(&admin, auth).map_err(|reason| {
            self.refusals.count(RefusalReason::Unauthorized);
            tracing::warn!(request = ?admin, %reason, "refused an admin request");
            ConsensusError::Unauthorized(reason)
        })
    }

    async fn write(&self, command: Vec<u8>, forward: bool) -> Result<Vec<u8>, ConsensusError> {
        let leader = self.raft.metrics().borrow().current_leader;
        if forward && leader.is_some() && leader != Some(self.id) {
            // Known follower: hand the command to the leader, which will not forward it again,
            // so a stale hint costs the caller one retry, never a loop.
            let node = self.leader_node(leader);
            return self
                .forward(
                    leader,
                    node,
                    RpcRequest::ClientWrite {
                        command,
                        forward: false,
                    },
                )
                .await;
        }
        // Leader (or leader unknown yet): propose locally. Keep a copy for a possible hand-over
        // only when this replica is not known to lead.
        let spare = (forward && leader != Some(self.id)).then(|| command.clone());
        // The application's admission work (e.g. signature checks), once, here.
        let command = tokio::task::spawn_blocking(move || A::prepare(command))
            .await
            .map_err(|e| ConsensusError::Raft(format!("prepare task failed: {e}")))?;
        match self.raft.client_write(Command(command)).await {
            Ok(r) => Ok(r.data.0),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                let node = f.leader_node.or_else(|| self.leader_node(f.leader_id));
                match spare {
                    Some(command) if node.is_some() => {
                        self.forward(
                            f.leader_id,
                            node,
                            RpcRequest::ClientWrite {
                                command,
                                forward: false,
                            },
                        )
                        .await
                    }
                    _ => Err(ConsensusError::NotLeader {
                        leader_id: f.leader_id,
                        leader_addr: node.map(|n| n.addr),
                    }),
                }
            }
            Err(e) => Err(ConsensusError::Raft(e.to_string())),
        }
    }

    async fn read(&self, query: Vec<u8>, forward: bool) -> Result<Vec<u8>, ConsensusError> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(self.sm.query(&query)),
            Err(e) => match e.forward_to_leader() {
                Some(f) => {
                    let node = f
                        .leader_node
                        .clone()
                        .or_else(|| self.leader_node(f.leader_id));
                    if !forward {
                        return Err(ConsensusError::NotLeader {
                            leader_id: f.leader_id,
                            leader_addr: node.map(|n| n.addr),
                        });
                    }
                    self.forward(
                        f.leader_id,
                        node,
                        RpcRequest::Read {
                            query,
                            forward: false,
                        },
                    )
                    .await
                }
                None => Err(ConsensusError::Raft(e.to_string())),
            },
        }
    }

    async fn admin(&self, req: RpcRequest, forward: bool) -> Result<Vec<u8>, ConsensusError> {
        // A membership change is two log entries (joint, then uniform); a new change proposed
        // while the previous one's second entry is uncommitted is refused as `InProgress`. That
        // is transient: retry for a bounded time (100 × 20 ms) instead of failing the operator.
        self.authorize(&req)?;
        let mut attempts = 0u32;
        let res = loop {
            let r = match &req {
                RpcRequest::AddLearner { id, addr, did, .. } => self
                    .raft
                    .add_learner(*id, Node::new(addr.clone(), did.clone()), true)
                    .await
                    .map(|_| ()),
                RpcRequest::ChangeMembership { voters, .. } => self
                    .raft
                    .change_membership(voters.clone(), false)
                    .await
                    .map(|_| ()),
                other => {
                    return Err(ConsensusError::Protocol(format!(
                        "not an admin request: {other:?}"
                    )))
                }
            };
            match &r {
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    openraft::error::ChangeMembershipError::InProgress(_),
                ))) if attempts < 100 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => break r,
            }
        };
        match res {
            Ok(()) => Ok(Vec::new()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                let node = f.leader_node.or_else(|| self.leader_node(f.leader_id));
                if !forward {
                    return Err(ConsensusError::NotLeader {
                        leader_id: f.leader_id,
                        leader_addr: node.map(|n| n.addr),
                    });
                }
                self.forward_admin(f.leader_id, node, req).await
            }
            Err(e) => Err(ConsensusError::Raft(e.to_string())),
        }
    }

    async fn forward_admin(
        &self,
        leader_id: Option<NodeId>,
        leader: Option<Node>,
        req: RpcRequest,
    ) -> Result<Vec<u8>, ConsensusError> {
        // Admin requests carry no forward flag: the receiving leader serves them itself through
        // `dispatch`, which never forwards admin requests a second time.
        self.forward(leader_id, leader, req).await
    }

    /// Serves one request from the authenticated `peer`.
    async fn dispatch(&self, req: RpcRequest, peer: &Did) -> RpcResponse {
        let client = |r: Result<Vec<u8>, ConsensusError>| {
            RpcResponse::Client(r.map_err(|e| match e {
                ConsensusError::NotLeader {
                    leader_id,
                    leader_addr,
                } => WireError::ForwardToLeader {
                    leader_id,
                    leader_addr,
                },
                ConsensusError::Unauthorized(m) => WireError::Unauthorized(m),
                ConsensusError::NotAMember(sender) => WireError::NotAMember { sender },
                ConsensusError::PeerMismatch { sender, peer } => {
                    WireError::PeerMismatch { sender, peer }
                }
                other => WireError::Failed(other.to_string()),
            }))
        };
        match req {
            RpcRequest::AppendEntries(r) => {
                let sender = r.vote.leader_id().voted_for();
                let carried = r.entries.iter().rev().find_map(|e| match &e.payload {
                    EntryPayload::Membership(m) => Some(m),
                    _ => None,
                });
                if let Err(e) = self.check_sender("append_entries", sender, peer, carried) {
                    return RpcResponse::Client(Err(e));
                }
                RpcResponse::AppendEntries(self.raft.append_entries(r).await)
            }
            RpcRequest::Vote(r) => {
                let sender = r.vote.leader_id().voted_for();
                if let Err(e) = self.check_sender("vote", sender, peer, None) {
                    return RpcResponse::Client(Err(e));
                }
                RpcResponse::Vote(self.raft.vote(r).await)
            }
            RpcRequest::InstallSnapshot(r) => {
                let sender = r.vote.leader_id().voted_for();
                let carried = r.meta.last_membership.membership();
                if let Err(e) = self.check_sender("install_snapshot", sender, peer, Some(carried)) {
                    return RpcResponse::Client(Err(e));
                }
                RpcResponse::InstallSnapshot(self.raft.install_snapshot(r).await)
            }
            RpcRequest::ClientWrite { .. }
            | RpcRequest::Read { .. }
            | RpcRequest::LocalRead { .. }
            | RpcRequest::Status
            | RpcRequest::AddLearner { .. }
            | RpcRequest::ChangeMembership { .. }
                if self.members_only && !self.is_member_did(peer) =>
            {
                self.refusals.count(RefusalReason::NotAMember);
                tracing::warn!(%peer, "refused a request from a peer that is not a member of this group");
                client(Err(ConsensusError::Unauthorized(format!(
                    "{peer} is not a member of this group"
                ))))
            }
            RpcRequest::ClientWrite { command, forward } => {
                client(self.write(command, forward).await)
            }
            RpcRequest::Read { query, forward } => client(self.read(query, forward).await),
            RpcRequest::LocalRead { query } => client(Ok(self.sm.query(&query))),
            RpcRequest::Status => RpcResponse::Status(self.status()),
            req @ (RpcRequest::AddLearner { .. } | RpcRequest::ChangeMembership { .. }) => {
                client(self.admin(req, false).await)
            }
        }
    }
}

async fn serve<A: Application>(
    listener: TcpListener,
    inner: Arc<Inner<A>>,
    mut stop: watch::Receiver<bool>,
) {
    // Each accepted connection is served on its own; requests on one connection are handled in
    // order. openraft opens several connections to a peer (replication, snapshot streaming, vote
    // rounds, leadership confirmations), so RPCs of different connections may interleave: Raft
    // does not need them ordered across connections (a late AppendEntries of the current leader
    // only re-asserts entries the follower already has, one of an older term is refused by the
    // vote check). See docs/adr/0006-raft-transport.md.
    let slots = Arc::new(Semaphore::new(inner.max_connections));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        let total = inner.refusals.count(RefusalReason::TooManyConnections);
                        if total.is_power_of_two() {
                            tracing::warn!(%peer, max = inner.max_connections, refused_total = total, "connection refused: too many open connections");
                        }
                        drop(stream);
                        continue;
                    };
                    let inner = inner.clone();
                    conns.spawn(async move {
                        if let Err(e) = handle_connection(stream, inner).await {
                            tracing::debug!(%peer, error = %e, "connection closed with error");
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    conns.shutdown().await;
}

#[tracing::instrument(level = "trace", skip_all, err(level = "debug"))]
async fn handle_connection<A: Application>(
    stream: TcpStream,
    inner: Arc<Inner<A>>,
) -> Result<(), ConsensusError> {
    stream.set_nodelay(true)?;
    // The handshake is bounded by the link's handshake timeout; plain TCP or a broken client
    // gets no frame answered.
    let (tls, peer): (ServerStream<TcpStream>, Did) = match inner.link.accept(stream).await {
        Ok(x) => x,
        Err(e) => {
            inner.refusals.count(RefusalReason::Handshake);
            return Err(e.into());
        }
    };
    let mut conn = server_codec(inner.max_frame).framed(tls);
    loop {
        let next = match tokio::time::timeout(inner.idle_timeout, conn.next()).await {
            Ok(next) => next,
            Err(_) => {
                inner.refusals.count(RefusalReason::Idle);
                tracing::debug!(%peer, "closing an idle connection");
                return Ok(());
            }
        };
        let Some(req) = next else {
            return Ok(());
        };
        let resp = inner.dispatch(req?, &peer).await;
        conn.send(&resp).await?;
    }
}

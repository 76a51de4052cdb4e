//! The RC group (ADR 0037): several RC processes of one colony that keep the colony's hard state —
//! the directory, its members, the group's own replicas' addresses — in one Raft log
//! (`opengrid-consensus`: openraft on RocksDB over authenticated links), so that losing the
//! leader, or any minority, loses nothing and the colony keeps serving.
//!
//! - Every replica runs the whole RC; only the **leader** acts. It joins the colony's pg group
//!   (nodes address the RC through it, [`crate::common::wire::pg_rc`]), answers joins and
//!   heartbeats, places, fails over and settles. Followers stay out of the pg group and redirect
//!   their client API to the leader ([`crate::rc::api`]).
//! - The leader **acts only while confirmed**: every [`CONFIRM_EVERY`] it asks a quorum whether
//!   it still leads (`ensure_linearizable`), and it grants leases, places and declares nodes dead
//!   only within `election_timeout` of the last confirmation. A leader that was paused (SIGSTOP)
//!   past that finds its confirmation stale when it resumes, acts on nothing it had queued, fails
//!   to confirm (a newer term leads) and steps down.
//! - **Taking office**: the new leader reads the directory and members from its state machine,
//!   which holds every change its predecessor committed, and treats every member as alive until
//!   `lease × lease_grace` has passed without a heartbeat: a lease the old leader granted may still
//!   run, so nothing is re-placed before it has ended (fencing stays exact). Nodes find the new
//!   leader in the pg group, are told by it to join again (they have no control link with it),
//!   and do so *without* dropping their lease ([`crate::node`]): sessions that are not being
//!   moved see no refusal.
//! - The leader replicates the directory's changes every tick (a quarter of a heartbeat period),
//!   as one Raft entry. Changes made in the tick before a leader dies are repaired by the nodes'
//!   holding reports, as after a single RC's restart ([`crate::rc::directory`]).
//!
//! The state machine ([`GroupApp`]) is a key/value map changed by batches of puts and deletes;
//! the keys are those of the directory's durable copy (`s/<session>`, `m/<node>`) plus
//! `r/<raft id>` for each replica's client API and control-plane address (written by the replica
//! itself when it starts, so followers can send clients to the leader).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opengrid_consensus::{Application, RaftNode, RaftNodeConfig, RestoreError};
use serde::{Deserialize, Serialize};

use opengrid_session::HumanDuration;

/// How often the leader confirms with a quorum that it still leads.
pub const CONFIRM_EVERY: Duration = Duration::from_millis(25);

/// Key prefix of a replica's addresses in the state machine.
pub(crate) const REPLICA: &[u8] = b"r/";
/// Key of the agent registry's index in the state machine (its packages are fetched by hash).
pub(crate) const REGISTRY_INDEX: &[u8] = b"a/index";
/// How many office ticks between two checks of a follower's registry against the group's.
const REGISTRY_EVERY: u32 = 40;

/// `[group]` section of the RC config: this RC as one replica of the colony's RC group. Empty
/// (`id = 0`): a single RC, as before.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupSection {
    /// This replica's Raft id (1..); 0: no group.
    pub id: u64,
    /// Its Raft RPC address, `host:port`.
    pub listen: String,
    /// The group's voters: `ID=DID@HOST:PORT` (this replica's own entry may be `ID=HOST:PORT`).
    /// Every replica lists the same voters; the first start of each initializes the group
    /// (idempotent). Empty: this replica joins an existing group, added by an operator
    /// (`opengrid rc-group add`).
    pub peers: Vec<String>,
    /// The control-plane address nodes reach this replica at (`host:port`), told to nodes so
    /// that a replica added later can lead them; empty: `cluster_listen`, unless it binds every
    /// interface (then nodes learn nothing: list every replica in their `rc_cluster`).
    pub advertise: String,
    /// Raft heartbeat interval of the leader.
    pub heartbeat: HumanDuration,
    /// Election timeout `t`: openraft's range is `t..2t`, and a follower that had a leader
    /// waits the leader's lease (`2t`) on top, so a dead leader is replaced after `3t..4t`
    /// (plus the confirmation round). At most a quarter of the lease, so that nodes renew with
    /// the new leader before their lease ends.
    pub election_timeout: HumanDuration,
}

impl Default for GroupSection {
    fn default() -> Self {
        GroupSection {
            id: 0,
            listen: String::new(),
            peers: Vec::new(),
            advertise: String::new(),
            heartbeat: HumanDuration::from_millis(30),
            election_timeout: HumanDuration::from_millis(100),
        }
    }
}

impl GroupSection {
    /// Whether this RC runs as a replica of a group.
    pub fn enabled(&self) -> bool {
        self.id != 0
    }

    /// Checks the section against the lease; `Err((field, reason))`.
    pub fn validate(&self, lease: Duration) -> Result<(), (&'static str, String)> {
        if !self.enabled() {
            if !self.peers.is_empty() || !self.listen.is_empty() {
                return Err((
                    "group.id",
                    "set this replica's id (1..) to run a group".into(),
                ));
            }
            return Ok(());
        }
        if self.listen.trim().is_empty() {
            return Err((
                "group.listen",
                "must be this replica's Raft address host:port".into(),
            ));
        }
        let peers = RaftNodeConfig::parse_peers(&self.peers.join(","))
            .map_err(|e| ("group.peers", e.to_string()))?;
        // No peers: a replica that joins an existing group (`opengrid rc-group add`).
        if !peers.is_empty() && !peers.contains_key(&self.id) {
            return Err((
                "group.peers",
                format!("must list this replica (id {}) among the voters", self.id),
            ));
        }
        if !peers.is_empty() && (peers.len() % 2 == 0 || peers.len() > 7) {
            return Err((
                "group.peers",
                format!("{} voters: a group has 1, 3, 5 or 7", peers.len()),
            ));
        }
        if self.heartbeat.0.is_zero() || self.heartbeat.0 * 3 > self.election_timeout.0 {
            return Err((
                "group.heartbeat",
                "must be above zero and at most a third of group.election_timeout".into(),
            ));
        }
        if self.election_timeout.0 * 4 > lease {
            return Err((
                "group.election_timeout",
                format!(
                    "{:?} is more than a quarter of the lease ({lease:?}): a dead leader is \
                     replaced after 3-4 election timeouts, nodes would lose their leases first",
                    self.election_timeout.0
                ),
            ));
        }
        Ok(())
    }
}

/// Errors of the RC group.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// The Raft replica failed.
    #[error("RC group: {0}")]
    Consensus(#[from] opengrid_consensus::ConsensusError),
    /// A batch could not be encoded.
    #[error("RC group: encoding a batch: {0}")]
    Encode(String),
    /// A membership change was refused.
    #[error("RC group: {0}")]
    Membership(String),
}

/// One change of the replicated map: a put (`Some`) or a delete (`None`).
pub type Change = (Vec<u8>, Option<Vec<u8>>);

/// The group's state machine: a map changed by batches.
#[derive(Debug, Default, Clone)]
pub struct GroupApp {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl GroupApp {
    fn entries(&self, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.map
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl Application for GroupApp {
    fn apply(&mut self, command: &[u8]) -> Vec<u8> {
        match opengrid_codec::decode::<Vec<Change>>(command, opengrid_codec::MAX_DECODE_BYTES) {
            Ok(batch) => {
                for (k, v) in batch {
                    match v {
                        Some(v) => self.map.insert(k, v),
                        None => self.map.remove(&k),
                    };
                }
                vec![1]
            }
            // Undecodable commands change nothing (a replica never panics on bytes).
            Err(_) => vec![0],
        }
    }

    fn query(&self, query: &[u8]) -> Vec<u8> {
        opengrid_codec::encode(&self.entries(query)).unwrap_or_default()
    }

    fn snapshot(&self) -> Vec<u8> {
        let all: Vec<(&Vec<u8>, &Vec<u8>)> = self.map.iter().collect();
        opengrid_codec::encode(&all).unwrap_or_default()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        let all: Vec<(Vec<u8>, Vec<u8>)> = opengrid_codec::decode(snapshot, usize::MAX)
            .map_err(|e| RestoreError(e.to_string()))?;
        self.map = all.into_iter().collect();
        Ok(())
    }

    fn state_hash(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        for (k, v) in &self.map {
            h.update(&(k.len() as u64).to_le_bytes());
            h.update(k);
            h.update(&(v.len() as u64).to_le_bytes());
            h.update(v);
        }
        *h.finalize().as_bytes()
    }
}

/// A replica's addresses, as it wrote them into the group's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicaAddrs {
    /// Raft id.
    pub id: u64,
    /// Client API base URL.
    pub api: String,
    /// Control-plane address (nodes' `rc_cluster`).
    pub cluster: String,
    /// Its DID.
    pub did: String,
}

/// This replica's view of the group, for `/status`.
#[derive(Clone, Debug, Serialize)]
pub struct GroupView {
    /// This replica's Raft id.
    pub id: u64,
    /// `leader` | `follower` | `candidate` | `learner` | `shutdown`.
    pub role: &'static str,
    /// Whether this replica acts as the colony's RC now (leader, confirmed by a quorum).
    pub acting: bool,
    /// The leader's id, when known.
    pub leader: Option<u64>,
    /// The leader's client API, when known.
    pub leader_api: Option<String>,
    /// Current term.
    pub term: u64,
    /// Last log index applied here.
    pub applied: Option<u64>,
    /// The voters, with their addresses.
    pub replicas: Vec<ReplicaView>,
}

/// One voter, for `/status`.
#[derive(Clone, Debug, Serialize)]
pub struct ReplicaView {
    /// Raft id.
    pub id: u64,
    /// Raft address.
    pub address: String,
    /// Client API (once the replica has announced it).
    pub api: Option<String>,
    /// Control-plane address (once announced).
    pub cluster: Option<String>,
}

/// One replica of the colony's RC group.
pub struct RcGroup {
    node: RaftNode<GroupApp>,
    /// When a quorum last confirmed this replica as leader (the instant the check started).
    confirmed: Mutex<Option<Instant>>,
    /// How long a confirmation lets the leader act: the election timeout, the least time before
    /// another replica may campaign.
    fresh_for: Duration,
    /// The leader's tables are loaded into the RC (it took office and has not stepped down).
    pub(crate) in_office: AtomicBool,
}

impl std::fmt::Debug for RcGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RcGroup({})", self.node.id())
    }
}

impl RcGroup {
    /// Starts this replica (Raft log and state machine under `<data_dir>/group`) and initializes
    /// the group with its voters on first start.
    pub async fn start(
        section: &GroupSection,
        key: ed25519_dalek::SigningKey,
        data_dir: &Path,
    ) -> Result<Arc<RcGroup>, GroupError> {
        let mut cfg = RaftNodeConfig::new(
            section.id,
            key,
            section.listen.clone(),
            data_dir.join("group"),
        );
        cfg.peers = RaftNodeConfig::parse_peers(&section.peers.join(","))?;
        cfg.heartbeat = section.heartbeat.0;
        cfg.election_timeout = (section.election_timeout.0, section.election_timeout.0 * 2);
        cfg.request_timeout = Duration::from_secs(2);
        // The state machine trusts every batch: only the group's replicas may propose.
        cfg.members_only = true;
        // A restarted replica hears from the leader before its election timer fires.
        cfg.retry_unreachable = section.heartbeat.0;
        let node = RaftNode::start(cfg, GroupApp::default()).await?;
        Ok(Arc::new(RcGroup {
            node,
            confirmed: Mutex::new(None),
            fresh_for: section.election_timeout.0,
            in_office: AtomicBool::new(false),
        }))
    }

    /// This replica's Raft id.
    pub fn id(&self) -> u64 {
        self.node.id()
    }

    /// Whether this replica acts as the colony's RC now: it took office and a quorum confirmed
    /// its leadership within the election timeout.
    pub fn acting(&self) -> bool {
        self.in_office.load(Ordering::Acquire) && self.confirmed_fresh()
    }

    fn confirmed_fresh(&self) -> bool {
        crate::rc::lock(&self.confirmed).is_some_and(|t| t.elapsed() < self.fresh_for)
    }

    /// Whether this replica's Raft node has stopped (removed from the group, or fatal).
    pub fn stopped(&self) -> bool {
        self.node.metrics().state == openraft::ServerState::Shutdown
    }

    /// Whether openraft believes this replica leads (unconfirmed).
    pub fn believes_leader(&self) -> bool {
        let m = self.node.metrics();
        m.current_leader == Some(self.node.id())
    }

    /// Whether a quorum acknowledged this replica as leader recently; records the instant it
    /// did. `false` when it does not lead.
    ///
    /// Read from openraft's own record of the leader's last quorum acknowledgement (heartbeats
    /// included), in a metrics report made *after* this call began: a report cut before (say,
    /// before the process was paused) would make a stale leader look fresh. The report is
    /// provoked by a round trip through the Raft core. `started − millis_since_quorum_ack` is then
    /// no later than the real acknowledgement: the confirmation errs on the old side.
    pub async fn confirm(&self) -> bool {
        let raft = self.node.raft();
        let mut rx = raft.metrics();
        rx.borrow_and_update();
        let started = Instant::now();
        let fresh = async {
            raft.with_raft_state(|_| ()).await.ok()?;
            rx.changed().await.ok()?;
            let m = rx.borrow().clone();
            if m.current_leader != Some(self.node.id()) || m.state != openraft::ServerState::Leader
            {
                return None;
            }
            started.checked_sub(Duration::from_millis(m.millis_since_quorum_ack?))
        };
        let at = tokio::time::timeout(self.fresh_for, fresh)
            .await
            .ok()
            .flatten();
        let mut confirmed = crate::rc::lock(&self.confirmed);
        *confirmed = at;
        at.is_some_and(|t| t.elapsed() < self.fresh_for)
    }

    /// Commits a batch of changes (on the leader; forwarded otherwise).
    pub async fn write(&self, batch: Vec<Change>) -> Result<(), GroupError> {
        let cmd = opengrid_codec::encode(&batch).map_err(|e| GroupError::Encode(e.to_string()))?;
        self.node.client_write(cmd).await?;
        Ok(())
    }

    /// This replica's copy of every entry under `prefix` (current once [`Self::confirm`]
    /// succeeded: the check waits until the state machine applied what the leader committed).
    pub fn entries(&self, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        opengrid_codec::decode(&self.node.local_read(prefix), usize::MAX).unwrap_or_default()
    }

    /// The replicas' announced addresses.
    pub fn replica_addrs(&self) -> BTreeMap<u64, ReplicaAddrs> {
        self.entries(REPLICA)
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice::<ReplicaAddrs>(&v).ok())
            .map(|a| (a.id, a))
            .collect()
    }

    /// Writes this replica's addresses into the group's state (retried until it is committed or
    /// `deadline` passes).
    pub async fn announce(
        &self,
        addrs: ReplicaAddrs,
        deadline: Duration,
    ) -> Result<(), GroupError> {
        let key = [REPLICA, addrs.id.to_string().as_bytes()].concat();
        let value = serde_json::to_vec(&addrs).map_err(|e| GroupError::Encode(e.to_string()))?;
        let until = Instant::now() + deadline;
        loop {
            match self.write(vec![(key.clone(), Some(value.clone()))]).await {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= until => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "RC group: announcing this replica, retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// The current leader's client API, when known.
    pub fn leader_api(&self) -> Option<String> {
        let leader = self.node.metrics().current_leader?;
        self.replica_addrs().get(&leader).map(|a| a.api.clone())
    }

    /// This replica's view of the group.
    pub fn view(&self) -> GroupView {
        use openraft::ServerState;
        let m = self.node.metrics();
        let addrs = self.replica_addrs();
        let replicas = m
            .membership_config
            .nodes()
            .map(|(id, n)| ReplicaView {
                id: *id,
                address: n.addr.clone(),
                api: addrs.get(id).map(|a| a.api.clone()),
                cluster: addrs.get(id).map(|a| a.cluster.clone()),
            })
            .collect();
        GroupView {
            id: self.node.id(),
            role: match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            },
            acting: self.acting(),
            leader: m.current_leader,
            leader_api: m
                .current_leader
                .and_then(|l| addrs.get(&l).map(|a| a.api.clone())),
            term: m.current_term,
            applied: m.last_applied.map(|l| l.index),
            replicas,
        }
    }

    /// Adds a replica to the group (on the leader): as a learner first, which returns once it
    /// has caught up with the log, then as a voter (joint consensus, openraft). The new replica
    /// runs with `[group] id = <id>`, its `listen` = `address` and `peers = []`.
    pub async fn add_replica(
        &self,
        id: u64,
        address: String,
        did: opengrid_session::Did,
    ) -> Result<(), GroupError> {
        let mut voters = self.voters();
        if voters.contains(&id) {
            return Ok(());
        }
        self.node.add_learner(id, address, did).await?;
        voters.insert(id);
        self.node.change_membership(voters).await?;
        Ok(())
    }

    /// Removes a replica from the voters and from the group (on the leader). Refused for the
    /// last voter.
    pub async fn remove_replica(&self, id: u64) -> Result<(), GroupError> {
        let voters = self.voters();
        if !voters.contains(&id) {
            return Ok(());
        }
        if voters.len() == 1 {
            return Err(GroupError::Membership(
                "the last voter of the RC group cannot be removed".into(),
            ));
        }
        self.node.remove_node(id).await?;
        if id == self.node.id() {
            // A leader that removed itself would go on leading a group it is no longer part of
            // (openraft 0.9 keeps it leader): it stops its replica, the others elect a leader
            // among themselves; the process serves nothing as the colony's RC from now on.
            tracing::warn!(id, "this replica was removed from the RC group: its Raft replica stops; stop the process");
            let _ = self.node.raft().shutdown().await;
        }
        Ok(())
    }

    /// The voters' ids.
    pub fn voters(&self) -> std::collections::BTreeSet<u64> {
        self.node
            .metrics()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// The DIDs of every member (voters and learners) of the current membership.
    pub fn member_dids(&self) -> Vec<String> {
        self.node
            .metrics()
            .membership_config
            .membership()
            .nodes()
            .filter_map(|(_, n)| n.did.as_ref().map(|d| d.to_string()))
            .collect()
    }

    /// Stops the replica.
    pub async fn shutdown(&self) {
        let _ = self.node.raft().shutdown().await;
    }
}

/// Keeps this replica's office: confirms its leadership every [`CONFIRM_EVERY`]; takes office
/// (loads the tables from the group's state, joins the colony's pg group so nodes find it) once
/// a quorum confirms it leads; replicates the directory's changes while in office; leaves office
/// (forgets the tables, leaves the pg group) once it no longer leads, or could not confirm for
/// twice the election timeout. Runs until the RC's control runtime stops.
pub(crate) async fn keep_office(
    core: Arc<crate::rc::RcCore>,
    group: Arc<RcGroup>,
    actor: ractor::ActorCell,
) {
    use crate::common::wire;
    let pg = wire::pg_rc(&core.cfg.colony, core.cfg.secret());
    let mut every = tokio::time::interval(CONFIRM_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_ok = Instant::now();
    let mut trusted: std::collections::HashSet<String> = Default::default();
    let mut tick: u32 = 0;
    let mut addrs_sent: Vec<String> = Vec::new();
    loop {
        every.tick().await;
        if group.stopped() {
            if group.in_office.swap(false, Ordering::AcqRel) {
                ractor::pg::leave_scoped(
                    wire::PG_SCOPE.to_string(),
                    pg.clone(),
                    vec![actor.clone()],
                );
                core.leave_office();
            }
            tracing::warn!(
                id = group.id(),
                "this replica's Raft node stopped: it no longer takes part in the RC group"
            );
            return;
        }
        // Replicas added since the start issue capabilities and tokens when they lead.
        for did in group.member_dids() {
            if trusted.insert(did.clone()) {
                if let Ok(id) = crate::common::identity::NodeId::parse(&did) {
                    core.access.trust_rc(id);
                }
            }
        }
        let ok = group.confirm().await;
        let in_office = group.in_office.load(Ordering::Acquire);
        tick = tick.wrapping_add(1);
        if !ok && tick.is_multiple_of(REGISTRY_EVERY) {
            follow_registry(&core, &group).await;
        }
        if ok {
            last_ok = Instant::now();
            if !in_office {
                core.take_office(&group);
                group.in_office.store(true, Ordering::Release);
                ractor::pg::join_scoped(
                    wire::PG_SCOPE.to_string(),
                    pg.clone(),
                    vec![actor.clone()],
                );
                core.metrics.rc_leader_changes.add(1, &[]);
                tracing::info!(
                    id = group.id(),
                    "took office: this replica is the colony's RC"
                );
            } else {
                core.replicate_directory(&group).await;
                if tick.is_multiple_of(REGISTRY_EVERY) {
                    replicate_registry(&core, &group).await;
                    // Nodes learn replicas added since they started.
                    let addrs = core.group_cluster_addrs().unwrap_or_default();
                    if addrs != addrs_sent {
                        core.send_group_addrs();
                        addrs_sent = addrs;
                    }
                }
            }
        } else if in_office && (!group.believes_leader() || last_ok.elapsed() > group.fresh_for * 2)
        {
            group.in_office.store(false, Ordering::Release);
            ractor::pg::leave_scoped(wire::PG_SCOPE.to_string(), pg.clone(), vec![actor.clone()]);
            core.leave_office();
            tracing::warn!(
                id = group.id(),
                leader = ?group.node.metrics().current_leader,
                "left office: this replica no longer leads the RC group"
            );
        }
    }
}

/// Writes the agent registry's index into the group's state when it changed (the leader, after
/// a push or a retirement, and every [`REGISTRY_EVERY`] ticks).
pub(crate) async fn replicate_registry(core: &crate::rc::RcCore, group: &RcGroup) {
    let Some(registry) = core.agents() else {
        return;
    };
    let index = registry.index_bytes();
    let replicated = group
        .entries(REGISTRY_INDEX)
        .into_iter()
        .find(|(k, _)| k == REGISTRY_INDEX)
        .map(|(_, v)| v);
    if replicated.as_deref() == Some(index.as_slice()) {
        return;
    }
    if let Err(e) = group
        .write(vec![(REGISTRY_INDEX.to_vec(), Some(index))])
        .await
    {
        tracing::warn!(error = %e, "agent registry index not replicated");
    }
}

/// A follower brings its agent registry to the group's: fetches the packages it lacks from the
/// leader (`GET /blobs/{hash}`, as an operator: the replicas honour each other's tokens), stores
/// them (verified against their hash; compiled once, by the leader that accepted them) and takes
/// the group's index.
async fn follow_registry(core: &crate::rc::RcCore, group: &RcGroup) {
    let Some(registry) = core.agents().cloned() else {
        return;
    };
    let Some((_, index)) = group
        .entries(REGISTRY_INDEX)
        .into_iter()
        .find(|(k, _)| k == REGISTRY_INDEX)
    else {
        return;
    };
    if index == registry.index_bytes() {
        return;
    }
    let missing = match registry.missing_packages(&index) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "the RC group's agent registry index does not read");
            return;
        }
    };
    if !missing.is_empty() {
        let (Some(leader), Some(token)) = (
            group.leader_api(),
            core.operator_token(Duration::from_secs(300)),
        ) else {
            return;
        };
        let http = match reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(h) => h,
            Err(_) => return,
        };
        for hash in missing {
            let got = async {
                let r = http
                    .get(format!("{leader}/blobs/{hash}"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if !r.status().is_success() {
                    return Err(format!("{}", r.status()));
                }
                let bytes = r.bytes().await.map_err(|e| e.to_string())?;
                registry
                    .store_replicated(&hash, &bytes)
                    .map_err(|e| e.to_string())
            }
            .await;
            if let Err(e) = got {
                tracing::warn!(%hash, %leader, error = %e, "agent package not fetched from the RC group's leader; retrying later");
                return;
            }
        }
    }
    match registry.adopt_index(&index).await {
        Ok(true) => tracing::info!("agent registry brought to the RC group's"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "agent registry index not adopted"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(changes: &[(&str, Option<&str>)]) -> Vec<u8> {
        let b: Vec<Change> = changes
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec())))
            .collect();
        opengrid_codec::encode(&b).unwrap()
    }

    #[test]
    fn batches_put_and_delete_and_prefix_reads_see_only_their_prefix() {
        let mut app = GroupApp::default();
        assert_eq!(
            app.apply(&batch(&[
                ("s/a", Some("1")),
                ("s/b", Some("2")),
                ("m/x", Some("3"))
            ])),
            vec![1]
        );
        assert_eq!(
            app.apply(&batch(&[("s/a", None), ("s/c", Some("4"))])),
            vec![1]
        );
        let s: Vec<(Vec<u8>, Vec<u8>)> =
            opengrid_codec::decode(&app.query(b"s/"), usize::MAX).unwrap();
        let keys: Vec<&[u8]> = s.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(keys, vec![b"s/b".as_slice(), b"s/c"]);
        // Hostile bytes change nothing and do not panic.
        let before = app.state_hash();
        assert_eq!(app.apply(b"\xff\xff\xff\xff garbage"), vec![0]);
        assert_eq!(app.state_hash(), before);
    }

    #[test]
    fn a_snapshot_restores_the_same_state() {
        let mut app = GroupApp::default();
        app.apply(&batch(&[("s/a", Some("1")), ("r/1", Some("{}"))]));
        let mut other = GroupApp::default();
        other.restore(&app.snapshot()).unwrap();
        assert_eq!(other.state_hash(), app.state_hash());
        assert!(other.restore(b"not a snapshot").is_err());
    }

    #[test]
    fn the_section_names_what_is_wrong() {
        let lease = Duration::from_secs(1);
        assert!(GroupSection::default().validate(lease).is_ok());
        let mut s = GroupSection {
            id: 1,
            listen: "127.0.0.1:7611".into(),
            peers: vec!["1=127.0.0.1:7611".into()],
            ..Default::default()
        };
        assert!(s.validate(lease).is_ok());
        s.peers.push("2=127.0.0.1:7612".into());
        assert_eq!(s.validate(lease).unwrap_err().0, "group.peers");
        s.peers = vec!["2=127.0.0.1:7612".into()];
        assert_eq!(s.validate(lease).unwrap_err().0, "group.peers");
        s.peers = vec!["1=127.0.0.1:7611".into()];
        s.election_timeout = HumanDuration::from_millis(300);
        assert_eq!(s.validate(lease).unwrap_err().0, "group.election_timeout");
        let stray = GroupSection {
            peers: vec!["1=127.0.0.1:7611".into()],
            ..Default::default()
        };
        assert_eq!(stray.validate(lease).unwrap_err().0, "group.id");
    }
}

//! The RC's control plane: sealed messages from nodes ([`crate::common::seal`]: checked, then
//! dispatched), joins (signature, colony, link key, members list), heartbeats answered with
//! leases, and the failure-detector tick that declares silent nodes dead and orphans their
//! sessions once the lease grace has passed.

use std::time::Instant;

use opengrid_session::SessionId;
use opentelemetry::KeyValue;

use crate::common::failure::{PhiConfig, PhiDetector};
use crate::common::identity::NodeId;
use crate::common::wire::{self, NodeMsg, ToNode, ToRc};
use crate::rc::events::ColonyEvent;
use crate::rc::{lock, node_ref, DirState, Member, RcCore};

/// How often the sessions of a member whose lease grace ran out are looked at again (the first
/// time is at the grace's end; see `Member::expired`).
pub const EXPIRED_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

impl RcCore {
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
            (_, ToNode::JoinAck { .. } | ToNode::Rejoin { .. })
            | (None, ToNode::Evicted { .. }) => {
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
        use crate::common::seal::Payload;
        if !self.acting() {
            // A group replica out of office (or a leader whose confirmation is stale: it was
            // paused) acts on nothing; nodes find the leader in the pg group.
            self.metrics
                .control_refused
                .add(1, &[KeyValue::new("reason", "not_leader")]);
            return;
        }
        use crate::common::seal::{Seal, SealError};
        let from = s.from;
        let checked = match (&s.seal, s.payload) {
            (Seal::None, Payload::Clear(ToRc::Join(j))) => {
                match wire::decode::<wire::JoinBody>(&j.body) {
                    Ok(b) if b.spec.id != from => Err(SealError::WrongSender {
                        authenticated: b.spec.id.did(),
                        claimed: from.did(),
                    }),
                    // Undecodable: `on_join` refuses and counts it.
                    _ => Ok(ToRc::Join(j)),
                }
            }
            (Seal::Aead { ctr }, payload) => match lock(&self.links).get_mut(&from) {
                Some(link) => link.open(crate::common::seal::Sealed {
                    from,
                    seal: Seal::Aead { ctr: *ctr },
                    payload,
                }),
                None => Err(SealError::NoLink(from.did())),
            },
            _ => Err(SealError::NotAllowed("only a join may be unsealed")),
        }
        .and_then(|msg| match msg.claimed_sender() {
            Some(c) if c != from => Err(SealError::WrongSender {
                authenticated: from.did(),
                claimed: c.did(),
            }),
            _ => Ok(msg),
        });
        match checked {
            Ok(msg) => self.on_message(msg),
            Err(e) => {
                self.metrics
                    .control_refused
                    .add(1, &[KeyValue::new("reason", e.reason())]);
                if let Some(repeats) = self.refused_log.allow(Instant::now()) {
                    tracing::warn!(%from, error = %e, repeats, "control message refused");
                }
                // A link message from a node we have no link with (this RC restarted, or took
                // office in its group): tell it to join again, signed, keeping its lease, so that
                // it neither waits for its lease to run out nor stops serving.
                if matches!(e, SealError::NoLink(_)) {
                    let _ = self.send_node(
                        &from,
                        ToNode::Rejoin {
                            reason: "no control link with this RC: join it".into(),
                        },
                    );
                }
            }
        }
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
                        crate::rc::release(&mut st.usage, e.owner.as_deref(), e.memory);
                        self.events.publish(ColonyEvent::SessionClosed {
                            session: sid.to_string(),
                            node: e.node_name,
                        });
                    }
                }
                self.metrics.sessions.record(st.directory.len() as u64, &[]);
            }
            ToRc::Receipts { node, receipts } => {
                let (ack, queued) = match &self.settlement {
                    Some(s) => {
                        let price = lock(&self.state)
                            .colony
                            .get(&node)
                            .map(|r| r.spec.price_micros_per_input);
                        s.on_receipts_queued(&node, price, receipts)
                    }
                    None => (
                        ToNode::ReceiptsAck {
                            accepted: Vec::new(),
                            refused: Vec::new(),
                        },
                        Vec::new(),
                    ),
                };
                match self.group().cloned() {
                    // A replica of an RC group acknowledges co-signed receipts once they are in
                    // the group's replicated queue: a leader killed before settling them leaves
                    // them to its successor (ADR 0037).
                    Some(group) if !queued.is_empty() => {
                        let core = self.self_arc();
                        tokio::spawn(async move {
                            let records = queued
                                .iter()
                                .filter_map(|r| {
                                    let v = opengrid_codec::encode(r).ok()?;
                                    Some((
                                        crate::rc::settlement::queue_key(&r.receipt.receipt_id),
                                        Some(v),
                                    ))
                                })
                                .collect();
                            match group.write(records).await {
                                Ok(()) => {
                                    if let Some(core) = core {
                                        let _ = core.send_node(&node, ack);
                                    }
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, receipts = queued.len(), "co-signed receipts not replicated: not acknowledged (the node resends them)")
                                }
                            }
                        });
                    }
                    _ => {
                        let _ = self.send_node(&node, ack);
                    }
                }
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
            ToRc::Blobs { node, have } => {
                let mut st = lock(&self.state);
                if let Some(m) = st.members.get_mut(&node) {
                    m.blobs = have
                        .into_iter()
                        .take(crate::common::wire::MAX_BLOBS_REPORTED)
                        .filter(|h| crate::common::blobs::is_hash(h))
                        .collect();
                }
            }
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

    /// The colony's membership policy (ADR 0027): `members` allowlist, join tokens.
    fn admit(&self, body: wire::JoinBody) -> Result<wire::JoinBody, wire::JoinError> {
        let id = body.spec.id;
        if !self.cfg.members.is_empty() && !self.cfg.members.contains(&id.did()) {
            return Err(wire::JoinError::NotAdmitted(format!(
                "{id} is not in this colony's members"
            )));
        }
        if self.cfg.require_join_token {
            let Some(t) = &body.join_token else {
                return Err(wire::JoinError::NotAdmitted(
                    "this colony admits nodes by join token: set join_token \
                     (OPENGRID_JOIN_TOKEN) to one from `opengrid token join`"
                        .into(),
                ));
            };
            crate::common::token::verify_join(
                t,
                &self.access.operator_keys(),
                &self.cfg.colony,
                &id,
                &body.spec.jurisdiction,
            )
            .map_err(|e| wire::JoinError::NotAdmitted(e.to_string()))?;
        }
        Ok(body)
    }

    fn on_join(&self, req: wire::JoinRequest) {
        let body = match req
            .verify(
                &self.cfg.colony,
                wire::unix_ms(),
                self.cfg.join_max_skew.0.as_millis() as u64,
            )
            .and_then(|b| self.admit(b))
        {
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
            let new_member = st
                .members
                .insert(id, self.new_member(&spec.name, Instant::now(), false))
                .is_none();
            tracing::info!(node = %id, name = %spec.name, jurisdiction = %spec.jurisdiction, api = %spec.api, "node joined");
            self.events.publish(ColonyEvent::NodeJoined {
                name: spec.name.clone(),
                jurisdiction: spec.jurisdiction.clone(),
            });
            st.directory.member_joined(spec.clone());
            st.colony.upsert(spec);
            if new_member {
                // Placeable once every member admits its migration links: at the next tick's
                // announcement (`announce_members`), not before.
                st.colony.set_alive(&id, false);
                st.unannounced.insert(id);
            }
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
        self.send_members(id);
    }

    /// Tells who the colony's nodes are — the peers migration links admit (ADR 0023) — before
    /// the RC places anything that makes them talk: the joining node gets the whole list (and
    /// the RC group's addresses) at once; the others learn of a node new to the colony at the
    /// next tick ([`Self::announce_members`]).
    fn send_members(&self, joined: NodeId) {
        let keys: Vec<[u8; 32]> = {
            let st = lock(&self.state);
            let mut keys: Vec<[u8; 32]> = st.members.keys().map(NodeId::public_key).collect();
            keys.sort_unstable();
            keys
        };
        let _ = self.send_node(&joined, ToNode::Members { keys });
        if let Some(cluster) = self.group_cluster_addrs() {
            let _ = self.send_node(&joined, ToNode::RcGroup { cluster });
        }
    }

    /// Tells every live member which nodes joined the colony since the last call, in one
    /// [`ToNode::MembersJoined`] (ADR 0042), and makes those nodes placeable — only now, so that
    /// no order names a node its peers' migration links would refuse. Called by the tick at most
    /// once per heartbeat period: a join storm of N nodes over T s costs members × T / period
    /// messages, not N × members (issue #20: 10,000 simulated nodes never settled while each
    /// join was announced to every member at once).
    pub(crate) fn announce_members(&self) {
        let (batch, alive) = {
            let mut st = lock(&self.state);
            if st.unannounced.is_empty() {
                return;
            }
            let batch: Vec<NodeId> = std::mem::take(&mut st.unannounced).into_iter().collect();
            for id in &batch {
                // Declared dead (or left) meanwhile: it comes back through a join of its own.
                if st.members.get(id).is_some_and(|m| m.alive) && !st.mob.draining.contains(id) {
                    st.colony.set_alive(id, true);
                }
            }
            let alive: Vec<NodeId> = st
                .members
                .iter()
                .filter(|(_, m)| m.alive)
                .map(|(id, _)| *id)
                .collect();
            (batch, alive)
        };
        for chunk in batch.chunks(wire::MAX_MEMBERS_JOINED) {
            for id in &alive {
                let _ = self.send_node(
                    id,
                    ToNode::MembersJoined {
                        keys: chunk.iter().map(NodeId::public_key).collect(),
                    },
                );
            }
        }
    }

    /// The control-plane addresses of the RC group's replicas, as they announced them.
    pub(crate) fn group_cluster_addrs(&self) -> Option<Vec<String>> {
        let g = self.group()?;
        Some(
            g.replica_addrs()
                .values()
                .map(|a| a.cluster.clone())
                .filter(|c| !c.is_empty())
                .collect(),
        )
    }

    /// Tells every alive member the RC group's control-plane addresses (the group changed).
    pub(crate) fn send_group_addrs(&self) {
        let Some(cluster) = self.group_cluster_addrs() else {
            return;
        };
        let alive: Vec<NodeId> = lock(&self.state)
            .members
            .iter()
            .filter(|(_, m)| m.alive)
            .map(|(id, _)| *id)
            .collect();
        for id in alive {
            let _ = self.send_node(
                &id,
                ToNode::RcGroup {
                    cluster: cluster.clone(),
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
        let due = {
            let mut st = lock(&self.state);
            let due = !st.unannounced.is_empty()
                && st.announced_at.is_none_or(|t| {
                    now.saturating_duration_since(t) >= self.cfg.heartbeat_period.0
                });
            if due {
                st.announced_at = Some(now);
            }
            due
        };
        if due {
            self.announce_members();
        }
        let replace_after = self.cfg.replace_after();
        let mut st = lock(&self.state);
        let mut newly_dead = Vec::new();
        let mut expired = Vec::new();
        for (id, m) in st.members.iter_mut() {
            let silent = now.saturating_duration_since(m.last_recv);
            let phi_dead = !m.restored && m.detector.is_dead(now);
            if m.alive && (phi_dead || silent >= replace_after) {
                m.alive = false;
                newly_dead.push((*id, m.name.clone(), m.detector.phi(now), silent));
            }
            // Once per death: its sessions are orphaned, then the failover loop (through the
            // directory's orphan index) owns them; scanning them again every tick cost the RC
            // its control thread when thousands of members had died (issue #20, P15).
            if !m.alive
                && silent >= replace_after
                && m.expired
                    .is_none_or(|t| now.saturating_duration_since(t) >= EXPIRED_RECHECK)
            {
                m.expired = Some(now);
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
            st.directory.update_held_by(
                &id,
                |e| e.state != DirState::Orphaned,
                |e| {
                    tracing::warn!(session = %e.session_id, node = %id, "lease grace over: session may be placed again");
                    e.state = DirState::Orphaned;
                    self.events.publish(ColonyEvent::SessionOrphaned {
                        session: e.session_id.to_string(),
                        node: e.node_name.clone(),
                    });
                },
            );
        }
        if !newly_dead.is_empty() {
            let alive = st.members.values().filter(|m| m.alive).count();
            self.metrics.members.record(alive as u64, &[]);
        }
    }
}

impl RcCore {
    /// A member heard from at `now` (alive; `restored`: read back from the durable directory).
    fn new_member(&self, name: &str, now: Instant, restored: bool) -> Member {
        let mut detector = PhiDetector::new(self.phi_config());
        detector.heartbeat(now);
        Member {
            name: name.to_string(),
            detector,
            last_recv: now,
            alive: true,
            blobs: Default::default(),
            restored,
            expired: None,
        }
    }

    /// Opens the directory's durable copy under `data_dir` and loads it (ADR 0037): the entries,
    /// and the members they were placed on, which count as alive (not placeable) from now until
    /// they rejoin — or are declared dead by the failure detector, their sessions then failed
    /// over from their replicas.
    pub fn open_directory(
        &self,
        data_dir: &std::path::Path,
    ) -> Result<(), crate::rc::directory::DirectoryStoreError> {
        let store = crate::rc::directory::DirectoryStore::open(data_dir)?;
        let (entries, members) = store.load();
        self.load_tables(entries, members, "the data dir");
        let _ = self.directory_store.set(store);
        Ok(())
    }

    /// Loads directory entries and the members they were placed on into the (empty) tables. The
    /// members count as alive, judged by the lease grace only (not phi), until they rejoin: a
    /// lease granted before may still run.
    fn load_tables(
        &self,
        entries: Vec<crate::rc::DirEntry>,
        members: Vec<crate::common::spec::NodeSpec>,
        from: &str,
    ) {
        let now = Instant::now();
        let mut st = lock(&self.state);
        for spec in &members {
            let id = spec.id;
            st.members
                .insert(id, self.new_member(&spec.name, now, true));
            st.colony.upsert(spec.clone());
            // Known, but placeable only once it has rejoined (a start order needs its link).
            st.colony.set_alive(&id, false);
        }
        for e in &entries {
            if let Some(owner) = &e.owner {
                let u = st.usage.entry(owner.clone()).or_default();
                u.0 += 1;
                u.1 += e.memory;
            }
        }
        tracing::info!(
            sessions = entries.len(),
            members = members.len(),
            "directory loaded from {from}"
        );
        st.directory.load(entries);
        self.metrics.sessions.record(st.directory.len() as u64, &[]);
    }

    /// A replica of the RC group takes office (it leads, and a quorum confirmed it, so its state
    /// machine holds every change its predecessors committed): the tables are loaded from the
    /// group's state.
    pub(crate) fn take_office(&self, group: &crate::rc::group::RcGroup) {
        use crate::rc::directory::{parse_records, ENTRY, MEMBER};
        let records = group
            .entries(ENTRY)
            .into_iter()
            .chain(group.entries(MEMBER));
        let (entries, members) = parse_records(records);
        self.clear_tables();
        self.load_tables(entries, members, "the RC group's state");
        if let Some(s) = &self.settlement {
            let queued = group
                .entries(crate::rc::settlement::QUEUED)
                .into_iter()
                .filter_map(|(_, v)| {
                    opengrid_codec::decode::<opengrid_settlement::SignedReceipt>(
                        &v,
                        opengrid_codec::MAX_DECODE_BYTES,
                    )
                    .ok()
                })
                .collect();
            s.inherit(queued);
        }
        self.events
            .publish(ColonyEvent::RcLeader { id: group.id() });
        // Every member it inherited is told at once (signed: it has no link with this replica
        // yet) to join it, rather than at its next heartbeat: its lease keeps running meanwhile.
        let members: Vec<NodeId> = lock(&self.state).members.keys().copied().collect();
        for id in members {
            let _ = self.send_node(
                &id,
                ToNode::Rejoin {
                    reason: "a new leader of the RC group took office: join it".into(),
                },
            );
        }
    }

    /// A replica of the RC group leaves office (deposed, or unable to confirm its leadership):
    /// it forgets its tables and control links; the next leader has them from the log.
    pub(crate) fn leave_office(&self) {
        self.clear_tables();
        if let Some(s) = &self.settlement {
            s.reset();
        }
    }

    fn clear_tables(&self) {
        *lock(&self.state) = crate::rc::RcState::fresh();
        lock(&self.links).clear();
        // Placements waiting for a node's answer fail (their senders dropped).
        lock(&self.pending).clear();
    }

    /// Replicates the directory's changes since the last call through the RC group (every tick,
    /// on the leader in office). A batch that does not commit (the leader was deposed meanwhile)
    /// is dropped: the next leader repairs it from the nodes' holding reports.
    pub(crate) async fn replicate_directory(&self, group: &crate::rc::group::RcGroup) {
        let records = {
            let (entries, members) = lock(&self.state).directory.take_changes();
            if entries.is_empty() && members.is_empty() {
                return;
            }
            crate::rc::directory::change_records(&entries, &members)
        };
        let n = records.len();
        if let Err(e) = group.write(records).await {
            tracing::warn!(error = %e, changes = n, "directory changes not replicated");
        }
    }

    /// Writes the directory's changes since the last call to its durable copy (every tick).
    pub(crate) fn persist_directory(&self) {
        let Some(store) = self.directory_store.get() else {
            return;
        };
        let (entries, members) = lock(&self.state).directory.take_changes();
        if entries.is_empty() && members.is_empty() {
            return;
        }
        if let Err(e) = store.write(&entries, &members) {
            tracing::error!(error = %e, changes = entries.len(), "directory changes not written");
        }
    }
}

fn join_reason(e: &wire::JoinError) -> &'static str {
    match e {
        wire::JoinError::Decode(_) => "decode",
        wire::JoinError::Signature(_) => "signature",
        wire::JoinError::WrongColony { .. } => "colony",
        wire::JoinError::Stale { .. } => "stale",
        wire::JoinError::NotAdmitted(_) => "policy",
    }
}

//! The RC's side of session mobility: replica sets, handover targets, failover, drain,
//! rebalancing. Decisions are made under the RC's state lock from its live tables; orders go to
//! nodes over the control plane.
//!
//! # Failover
//! When a node is declared dead and its lease grace has passed, its directory entries become
//! `orphaned`. Each orphaned session is restored, epoch + 1, on the best node that passes the
//! manifest's hard filters, preferring a node that already holds its replica; the node pulls the
//! newest checkpoint from the surviving holders (`restore_from`) and fences the earlier epoch on
//! them before serving. A session with no surviving holder of its state, or no eligible node
//! (e.g. its only allowed jurisdiction has no survivor), **waits**, with the reason in its
//! directory entry (`waiting`) — it never starts empty and never moves abroad.
//!
//! # Replica sets
//! k = `replicas` (config) holders besides the primary, among alive, non-draining nodes whose
//! jurisdiction the manifest allows and, with canopy treaties configured, that the treaties let
//! hold replicas from the primary's zone ([`crate::rc::federation::may_hold_replica`]). Nodes that
//! could also serve the session are preferred (failover lands there), then the least loaded.
//! Fewer eligible nodes than k ⇒ a smaller set (logged; shown in status).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opengrid_session::{jurisdiction, Epoch, Manifest, SessionId};
use opentelemetry::KeyValue;

use crate::common::identity::NodeId;
use crate::common::wire::{HandoverTarget, Held, ToNode};
use crate::rc::admission::Requirements;
use crate::rc::events::ColonyEvent;
use crate::rc::{DirState, RcCore, RcState};

/// What a holding report's entry leads to.
enum Verdict {
    Keep,
    Adopt,
    Drop,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Mobility bookkeeping kept in the RC state.
#[derive(Default)]
pub struct MobilityState {
    /// Nodes draining: nothing new is placed there.
    pub draining: HashSet<NodeId>,
    /// Sessions being restored now.
    pub restoring: HashSet<SessionId>,
    /// Earliest next restore attempt per waiting session.
    pub next_try: HashMap<SessionId, Instant>,
    /// Handover plans handed out: session → (target, its replica set).
    pub plans: HashMap<SessionId, (NodeId, Vec<NodeId>, Instant)>,
    /// Last rebalancing order per node.
    pub last_rebalance: HashMap<NodeId, Instant>,
    /// Restores in flight.
    pub in_flight: usize,
    /// Last replica-repair scan.
    pub last_repair: Option<Instant>,
    /// Holding reports arriving in parts: node → (report, parts, parts received, sessions).
    pub reports: HashMap<NodeId, PartialReport>,
    /// Nodes a primary reported failing its replica writes: not chosen for replica sets, and
    /// repaired out of the sets holding them, until the instant.
    pub suspect: HashMap<NodeId, Instant>,
}

/// How long a node reported failing replica writes is kept out of replica sets.
pub const SUSPECT_FOR: Duration = Duration::from_secs(10);

/// A holding report of which not every part has arrived yet.
pub struct PartialReport {
    report: u64,
    parts: u32,
    got: HashSet<u32>,
    held: Vec<Held>,
}

/// Migration-server addresses of `ids` (unknown nodes skipped).
pub(crate) fn migration_addrs(st: &RcState, ids: &[NodeId]) -> Vec<String> {
    ids.iter()
        .filter_map(|id| st.colony.get(id).map(|r| r.spec.migration.clone()))
        .filter(|a| !a.is_empty())
        .collect()
}

/// The DIDs of the nodes whose migration servers are `addrs` (unknown ones skipped).
pub(crate) fn dids_of_addrs(st: &RcState, addrs: &[String]) -> Vec<opengrid_session::Did> {
    st.colony
        .nodes()
        .into_iter()
        .filter(|r| addrs.contains(&r.spec.migration))
        .map(|r| r.spec.id.did_value())
        .collect()
}

/// Retry period of a waiting restore.
const RETRY: Duration = Duration::from_millis(500);

impl RcCore {
    /// Signs the grant of `sid` at `epoch` to `holder` (ADR 0023, `opengrid_migration::grant`).
    pub(crate) fn sign_grant(
        &self,
        sid: &SessionId,
        epoch: Epoch,
        holder: &NodeId,
        replicas: Vec<opengrid_session::Did>,
        sources: Vec<opengrid_session::Did>,
    ) -> Option<opengrid_migration::SignedGrant> {
        let grant = opengrid_migration::Grant {
            session: sid.clone(),
            epoch,
            holder: holder.did_value(),
            replicas,
            sources,
        };
        opengrid_migration::SignedGrant::sign(grant, |m| self.identity().sign(m))
            .inspect_err(|e| tracing::error!(session = %sid, error = %e, "cannot sign a grant"))
            .ok()
    }

    fn alive(st: &RcState, id: &NodeId) -> bool {
        st.members.get(id).is_some_and(|m| m.alive)
            && !st.mob.draining.contains(id)
            && st
                .mob
                .suspect
                .get(id)
                .is_none_or(|until| Instant::now() >= *until)
    }

    /// A primary's report that replica writes to `peers` (migration addresses) keep failing.
    pub(crate) fn on_replica_trouble(&self, node: NodeId, peers: &[String]) {
        let mut st = lock(&self.state);
        if !st.members.get(&node).is_some_and(|m| m.alive) {
            return;
        }
        let until = Instant::now() + SUSPECT_FOR;
        let ids: Vec<(NodeId, String)> = st
            .colony
            .nodes()
            .into_iter()
            .filter(|r| peers.contains(&r.spec.migration) && r.spec.id != node)
            .map(|r| (r.spec.id, r.spec.name.clone()))
            .collect();
        for (id, name) in ids {
            let fresh = st.mob.suspect.get(&id).is_none_or(|u| Instant::now() >= *u);
            st.mob.suspect.insert(id, until);
            if fresh {
                tracing::warn!(node = %id, %name, "replica writes to this node fail: replica sets move off it for a while");
                self.metrics.replica_suspects.add(1, &[]);
            }
        }
        // Force a repair scan on the next tick.
        st.mob.last_repair = None;
    }

    /// Chooses up to k replica holders for a session whose primary is `primary`.
    pub(crate) fn choose_replicas(
        &self,
        st: &RcState,
        m: &Manifest,
        primary: &NodeId,
        keep: &[NodeId],
    ) -> Vec<NodeId> {
        let k = self.cfg.replicas;
        if k == 0 {
            return Vec::new();
        }
        let req = Requirements::from_manifest(m);
        let from_zone = st
            .colony
            .get(primary)
            .map(|r| r.spec.jurisdiction.clone())
            .unwrap_or_default();
        let fed = self.federation();
        let allowed = |j: &str| -> bool {
            match fed {
                Some(f) => {
                    let class = f.data_class(None).unwrap_or_else(|_| "personal".into());
                    crate::rc::federation::may_hold_replica(
                        &m.placement.jurisdictions,
                        &from_zone,
                        f.treaties(),
                        &class,
                        j,
                    )
                    .is_ok()
                }
                None => {
                    m.placement.jurisdictions.is_empty()
                        || jurisdiction::satisfies(j, &m.placement.jurisdictions)
                }
            }
        };
        let mut out: Vec<NodeId> = keep
            .iter()
            .filter(|id| *id != primary && Self::alive(st, id))
            .copied()
            .take(k)
            .collect();
        let mut cands: Vec<(bool, u64, NodeId)> = st
            .colony
            .nodes()
            .into_iter()
            .filter(|r| {
                r.spec.id != *primary
                    && !out.contains(&r.spec.id)
                    && r.alive
                    && Self::alive(st, &r.spec.id)
                    && !r.spec.migration.is_empty()
                    && allowed(&r.spec.jurisdiction)
            })
            .map(|r| {
                let could_serve = r.check(&req).is_none();
                (!could_serve, r.score(&req.handler), r.spec.id)
            })
            .collect();
        cands.sort_by_key(|a| (a.0, a.1, a.2.did()));
        for (_, _, id) in cands {
            if out.len() >= k {
                break;
            }
            out.push(id);
        }
        if out.len() < k {
            if let Some(suppressed) = self.replica_shortfall_log.allow(Instant::now()) {
                tracing::warn!(
                    have = out.len(),
                    want = k,
                    suppressed,
                    "fewer eligible replica holders than k (logged at most every 30 s; `suppressed` \
                     counts the repeats since the last line)"
                );
            }
        }
        out
    }

    /// A holder asks where to hand `session` over.
    pub(crate) fn on_plan_handover(
        &self,
        node: NodeId,
        req: u64,
        session: &str,
        target: Option<String>,
    ) {
        let plan = self.plan_handover(node, session, target);
        if let Err(why) = &plan {
            tracing::info!(%session, %why, "no handover target");
        }
        let _ = self.send_node(&node, ToNode::HandoverPlan { req, plan });
    }

    fn plan_handover(
        &self,
        node: NodeId,
        session: &str,
        target: Option<String>,
    ) -> Result<HandoverTarget, String> {
        let sid = SessionId::new(session).map_err(|e| e.to_string())?;
        let mut st = lock(&self.state);
        let (m, cur_replicas, epoch) = match st.directory.get(&sid) {
            Some(e) if e.node == node && e.state == DirState::Active => (
                e.manifest
                    .clone()
                    .ok_or_else(|| format!("no manifest on record for {sid}"))?,
                e.replicas.clone(),
                e.epoch,
            ),
            Some(e) => {
                return Err(format!(
                    "the directory has {sid} on {} ({:?}), not on the asking node",
                    e.node_name, e.state
                ))
            }
            None => return Err(format!("{sid} is not in the directory")),
        };
        let req = Requirements::from_manifest(&m);
        let chosen = match &target {
            Some(t) => {
                let rec = st
                    .colony
                    .nodes()
                    .into_iter()
                    .find(|r| r.spec.name == *t || r.spec.id.did() == *t)
                    .ok_or_else(|| format!("no member named {t:?}"))?;
                if rec.spec.id == node {
                    return Err(format!("{t:?} already holds {sid}"));
                }
                if st.mob.draining.contains(&rec.spec.id) {
                    return Err(format!("{t:?} is draining"));
                }
                if let Some(why) = rec.check(&req) {
                    return Err(format!("{t:?} does not satisfy the manifest: {why}"));
                }
                rec.spec.id
            }
            None => st
                .colony
                .admit_where(&req, |r| {
                    r.spec.id != node
                        && !st.mob.draining.contains(&r.spec.id)
                        && !r.spec.migration.is_empty()
                })
                .ok_or_else(|| {
                    "no other node satisfies the manifest (jurisdiction, hardware, handler, capacity)"
                        .to_string()
                })?,
        };
        // The source keeps its replicas if it can; it does not replicate to itself.
        let mut keep: Vec<NodeId> = cur_replicas.into_iter().filter(|r| *r != chosen).collect();
        keep.push(node);
        let replicas = self.choose_replicas(&st, &m, &chosen, &keep);
        let rec = st.colony.get(&chosen).ok_or("target vanished")?;
        let grant = self.sign_grant(
            &sid,
            epoch.next(),
            &chosen,
            replicas.iter().map(NodeId::did_value).collect(),
            vec![node.did_value()],
        );
        let plan = HandoverTarget {
            node: chosen,
            name: rec.spec.name.clone(),
            api: rec.spec.api.clone(),
            migration: rec.spec.migration.clone(),
            replicas: migration_addrs(&st, &replicas),
            grant,
        };
        st.mob
            .plans
            .retain(|_, p| p.2.elapsed() < Duration::from_secs(60));
        st.mob.plans.insert(sid, (chosen, replicas, Instant::now()));
        Ok(plan)
    }

    /// A session is active on `node` with `epoch` (handover target): switch the directory.
    pub(crate) fn on_activated(&self, node: NodeId, session: &str, epoch: u64) {
        let Ok(sid) = SessionId::new(session) else {
            return;
        };
        let mut st = lock(&self.state);
        let Some(e) = st.directory.get(&sid) else {
            return;
        };
        if e.epoch.0 >= epoch {
            return;
        }
        let (old, memory, handler, from) =
            (e.node, e.memory, e.handler.clone(), e.node_name.clone());
        let replicas = match st.mob.plans.remove(&sid) {
            Some((t, r, _)) if t == node => r,
            _ => Vec::new(),
        };
        let Some((name, api)) = st
            .colony
            .get(&node)
            .map(|r| (r.spec.name.clone(), r.spec.api.clone()))
        else {
            return;
        };
        st.colony.note_closed(&old, memory);
        st.colony.note_placed(&node, &handler, memory);
        if let Some(e) = st.directory.get_mut(&sid) {
            e.node = node;
            e.node_name = name.clone();
            e.address = api;
            e.epoch = Epoch(epoch);
            e.state = DirState::Active;
            e.waiting = None;
            e.replicas = replicas;
        }
        tracing::info!(session = %sid, to = %name, epoch, "directory switched (handover)");
        self.events.publish(ColonyEvent::SessionMoved {
            session: sid.to_string(),
            from,
            to: name.clone(),
            epoch,
            how: "handover",
            took_ms: None,
        });
        let manifest = st
            .directory
            .get(&sid)
            .and_then(|e| e.manifest.as_ref().map(|m| m.to_json_string()));
        drop(st);
        if let Some(manifest) = manifest {
            let _ = self.send_node(
                &node,
                ToNode::Manifest {
                    session: sid.to_string(),
                    manifest,
                },
            );
        }
    }

    /// A node's holding report (`crate::node` "Reconciliation"): adopts the sessions the
    /// directory does not know (a restarted RC) or knows at an older epoch (a lost
    /// `Activated`), keeps the ones it places there, and answers with the ones placed elsewhere
    /// or at a newer epoch, which the node drops. After a rejoin, directory entries active on
    /// the node that the report does not list are orphaned (the node came back without them).
    pub(crate) fn on_holding(
        &self,
        node: NodeId,
        report: u64,
        rejoin: bool,
        part: u32,
        parts: u32,
        held: Vec<Held>,
    ) {
        if parts == 0 || part >= parts || parts > crate::common::wire::MAX_HOLDING_PARTS {
            tracing::warn!(%node, part, parts, "malformed holding report part ignored");
            return;
        }
        let held = if parts == 1 {
            held
        } else {
            let mut st = lock(&self.state);
            if !st.members.get(&node).is_some_and(|m| m.alive) {
                return;
            }
            let p = st.mob.reports.entry(node).or_insert_with(|| PartialReport {
                report,
                parts,
                got: HashSet::new(),
                held: Vec::new(),
            });
            if p.report != report || p.parts != parts {
                // A newer report (or a resend under a new number) replaces an unfinished one.
                *p = PartialReport {
                    report,
                    parts,
                    got: HashSet::new(),
                    held: Vec::new(),
                };
            }
            if p.got.insert(part) {
                p.held.extend(held);
            }
            if (p.got.len() as u32) < parts {
                return;
            }
            st.mob
                .reports
                .remove(&node)
                .map(|p| p.held)
                .unwrap_or_default()
        };
        // Not (or no longer) a member: it joins again and reports again.
        let Some((drop, elsewhere)) = self.reconcile_all(node, rejoin, held) else {
            return;
        };
        // Former holders of what was adopted at a newer epoch stop at once (not at their next
        // report): e.g. a restarted RC that adopted a stale copy from the first report.
        for (old, session, epoch) in elsewhere {
            let _ = self.send_node(
                &old,
                ToNode::HoldingAck {
                    report: 0,
                    drop: vec![(session, epoch)],
                },
            );
        }
        if !rejoin && drop.is_empty() {
            return;
        }
        let _ = self.send_node(
            &node,
            ToNode::HoldingAck {
                report: if rejoin { report } else { 0 },
                drop,
            },
        );
    }

    /// [`Self::reconcile_all`] without the drops for other nodes.
    #[cfg(test)]
    pub(crate) fn reconcile(
        &self,
        node: NodeId,
        rejoin: bool,
        held: Vec<Held>,
    ) -> Option<Vec<(String, u64)>> {
        self.reconcile_all(node, rejoin, held).map(|(d, _)| d)
    }

    /// The directory side of [`Self::on_holding`]: returns the `(session, epoch)` the node must
    /// drop and, for sessions adopted away from another holder, `(that node, session, its
    /// epoch)`; `None` when `node` is not an alive member.
    #[allow(clippy::type_complexity)]
    pub(crate) fn reconcile_all(
        &self,
        node: NodeId,
        rejoin: bool,
        held: Vec<Held>,
    ) -> Option<(Vec<(String, u64)>, Vec<(NodeId, String, u64)>)> {
        let mut drop = Vec::new();
        let mut elsewhere = Vec::new();
        {
            let mut st = lock(&self.state);
            if !st.members.get(&node).is_some_and(|m| m.alive) {
                return None;
            }
            let (name, api) = st
                .colony
                .get(&node)
                .map(|r| (r.spec.name.clone(), r.spec.api.clone()))?;
            let mut listed = HashSet::new();
            let mut parsed: HashMap<String, Option<Arc<Manifest>>> = HashMap::new();
            for h in held {
                let Ok(sid) = SessionId::new(h.session.clone()) else {
                    continue;
                };
                if rejoin {
                    // Only a rejoin report orphans what it does not list.
                    listed.insert(sid.clone());
                }
                let epoch = Epoch(h.epoch);
                let restoring = st.mob.restoring.contains(&sid);
                let verdict = match st.directory.get(&sid) {
                    None => Verdict::Adopt,
                    Some(e) if e.node == node && e.epoch == epoch => {
                        if e.state == DirState::Orphaned && restoring {
                            Verdict::Drop
                        } else {
                            Verdict::Keep
                        }
                    }
                    Some(e) if epoch > e.epoch && e.state != DirState::Starting && !restoring => {
                        Verdict::Adopt
                    }
                    Some(_) => Verdict::Drop,
                };
                match verdict {
                    Verdict::Keep => {
                        if let Some(e) = st.directory.get_mut(&sid) {
                            if e.state == DirState::Orphaned {
                                tracing::info!(session = %sid, node = %name, %epoch, "session kept by its holder through a lease loss: active again");
                                e.state = DirState::Active;
                                e.waiting = None;
                                st.mob.next_try.remove(&sid);
                            }
                        }
                    }
                    Verdict::Drop => drop.push((h.session, h.epoch)),
                    Verdict::Adopt => {
                        // One parse (and one shared copy) per distinct manifest in the report: a
                        // node's sessions of one agent carry the same one.
                        let manifest = h
                            .manifest
                            .as_deref()
                            .and_then(|j| match parsed.get(j) {
                                Some(m) => m.clone(),
                                None => {
                                    let m = Manifest::from_json_str(j).ok().map(Arc::new);
                                    parsed.insert(j.to_string(), m.clone());
                                    m
                                }
                            })
                            .or_else(|| st.directory.get(&sid).and_then(|e| e.manifest.clone()));
                        let memory = manifest
                            .as_ref()
                            .map(|m| Requirements::from_manifest(m).memory)
                            .unwrap_or(0);
                        // Replica holders by migration address: the colony's own index (one
                        // lookup per replica, not a map of the colony per report).
                        let replicas: Vec<NodeId> = h
                            .replicas
                            .iter()
                            .filter_map(|a| st.colony.by_migration(a))
                            .collect();
                        let before = st.directory.get(&sid).map(|e| (e.node, e.memory, e.epoch));
                        if let Some((old, mem, old_epoch)) = before {
                            st.colony.note_closed(&old, mem);
                            if old != node {
                                elsewhere.push((old, h.session.clone(), old_epoch.0));
                            }
                        }
                        st.colony.note_placed(&node, &h.handler, memory);
                        if st.mob.plans.get(&sid).is_some_and(|p| p.0 == node) {
                            st.mob.plans.remove(&sid);
                        }
                        tracing::info!(session = %sid, node = %name, %epoch, known_before = before.is_some(), "session adopted from its holder's report");
                        self.metrics.sessions_adopted.add(1, &[]);
                        st.directory.insert(
                            sid.clone(),
                            crate::rc::DirEntry {
                                session_id: sid.clone(),
                                node,
                                node_name: name.clone(),
                                address: api.clone(),
                                epoch,
                                handler: h.handler,
                                memory,
                                state: DirState::Active,
                                replicas,
                                owner: None,
                                waiting: None,
                                manifest,
                            },
                        );
                        st.mob.next_try.remove(&sid);
                    }
                }
            }
            if rejoin {
                st.directory.update_held_by(
                    &node,
                    |e| e.state == DirState::Active && !listed.contains(&e.session_id),
                    |e| {
                        tracing::warn!(session = %e.session_id, node = %name, "its holder rejoined without it: session may be placed again");
                        e.state = DirState::Orphaned;
                    },
                );
            }
            self.metrics.sessions.record(st.directory.len() as u64, &[]);
        }
        Some((drop, elsewhere))
    }

    /// A node starts draining.
    pub(crate) fn on_draining(&self, node: NodeId) {
        let mut st = lock(&self.state);
        st.mob.draining.insert(node);
        st.colony.set_alive(&node, false);
        let name = st
            .members
            .get(&node)
            .map(|m| m.name.clone())
            .unwrap_or_default();
        tracing::info!(%node, %name, "node draining: no new placements");
        self.events.publish(ColonyEvent::NodeDraining { name });
    }

    /// A never-live session was checkpointed and stopped on `node`: restart it elsewhere.
    pub(crate) fn on_released(&self, node: NodeId, session: &str, epoch: u64) {
        let Ok(sid) = SessionId::new(session) else {
            return;
        };
        let mut st = lock(&self.state);
        let memory = match st.directory.get_mut(&sid) {
            Some(e) if e.node == node && e.epoch.0 == epoch => {
                e.state = DirState::Orphaned;
                e.waiting = None;
                e.memory
            }
            _ => return,
        };
        st.colony.note_closed(&node, memory);
        st.mob.next_try.remove(&sid);
    }

    /// Asks the holder of `sid` to hand it over (to `target`, if named).
    pub fn request_handover(
        &self,
        sid: &SessionId,
        target: Option<String>,
    ) -> Result<String, String> {
        let st = lock(&self.state);
        let e = st
            .directory
            .get(sid)
            .ok_or_else(|| format!("{sid} is not in the directory"))?;
        if e.state != DirState::Active {
            return Err(format!("{sid} is {:?}, not active", e.state));
        }
        let (holder, name) = (e.node, e.node_name.clone());
        drop(st);
        self.send_node(
            &holder,
            ToNode::Handover {
                session: sid.to_string(),
                target,
            },
        )?;
        Ok(name)
    }
}

/// How often the replica-repair pass scans the whole directory: every 250 ms, and no more often
/// than one scan per [`REPAIR_SCAN_NS_PER_ENTRY`]-per-entry budget allows (the scan holds the
/// RC's state lock: at 1 M entries, ~100 ms of it every 5 s instead of every 250 ms, so the
/// heartbeats behind it do not wait; ADR 0042). Orphaned sessions do not wait for it: the
/// failover loop finds them through the directory's orphan index every tick.
pub fn repair_every(entries: usize) -> Duration {
    Duration::from_millis(250).max(Duration::from_nanos(
        (entries as u64).saturating_mul(REPAIR_SCAN_NS_PER_ENTRY),
    ))
}

/// See [`repair_every`]: 5 µs of period per directory entry (the scan is ~0.1 µs per entry, so
/// it takes ≤ 2 % of the control thread).
pub const REPAIR_SCAN_NS_PER_ENTRY: u64 = 5_000;

/// Periodic mobility work: restore orphaned sessions, repair replica sets that lost a holder,
/// rebalance overloaded nodes.
pub fn tick(core: &Arc<RcCore>, now: Instant) {
    let mut todo = Vec::new();
    let mut repairs = Vec::new();
    let mut prefetches = Vec::new();
    let mut rebalance = Vec::new();
    {
        let mut st = lock(&core.state);
        let budget = core
            .cfg
            .failover_parallelism
            .saturating_sub(st.mob.in_flight);
        let RcState { directory, mob, .. } = &mut *st;
        let orphans: Vec<SessionId> = directory.orphaned_where(budget, |s| {
            !mob.restoring.contains(s) && mob.next_try.get(s).is_none_or(|t| now >= *t)
        });
        for sid in orphans {
            st.mob.restoring.insert(sid.clone());
            st.mob.in_flight += 1;
            todo.push(sid);
        }
        // Replica repair (at most every 250 ms): active sessions whose replica set lost a member
        // or is smaller than k (nodes joined since it was placed).
        st.mob.suspect.retain(|_, until| now < *until);
        let dead: HashSet<NodeId> = st
            .members
            .iter()
            .filter(|(_, m)| !m.alive)
            .map(|(id, _)| *id)
            .chain(st.mob.draining.iter().copied())
            .chain(st.mob.suspect.keys().copied())
            .collect();
        let k = core.cfg.replicas;
        if st
            .mob
            .last_repair
            .is_none_or(|t| now.saturating_duration_since(t) >= repair_every(st.directory.len()))
        {
            st.mob.last_repair = Some(now);
            let (mut below_k, mut below_min) = (0u64, 0u64);
            for e in st.directory.values() {
                let (_, _, min, k) = core.coverage(&st, e);
                below_min += u64::from(min);
                below_k += u64::from(k);
            }
            core.metrics.sessions_below_k.record(below_k, &[]);
            core.metrics
                .sessions_below_min_copies
                .record(below_min, &[]);
            let broken: Vec<SessionId> = st
                .directory
                .values()
                .filter(|e| {
                    e.state == DirState::Active
                        && (e.replicas.len() < k || e.replicas.iter().any(|r| dead.contains(r)))
                })
                .map(|e| e.session_id.clone())
                .take(1024)
                .collect();
            for sid in broken {
                let Some(e) = st.directory.get(&sid) else {
                    continue;
                };
                let (holder, m, keep) = (
                    e.node,
                    e.manifest.clone(),
                    e.replicas
                        .iter()
                        .filter(|r| !dead.contains(r))
                        .copied()
                        .collect::<Vec<_>>(),
                );
                let Some(m) = m else { continue };
                let set = core.choose_replicas(&st, &m, &holder, &keep);
                if st.directory.get(&sid).is_some_and(|e| e.replicas == set) {
                    continue;
                }
                let addrs = migration_addrs(&st, &set);
                let grant = st.directory.get(&sid).and_then(|e| {
                    core.sign_grant(
                        &sid,
                        e.epoch,
                        &holder,
                        set.iter().map(NodeId::did_value).collect(),
                        vec![],
                    )
                });
                prefetches.push((m.clone(), set.clone()));
                if let Some(e) = st.directory.get_mut(&sid) {
                    e.replicas = set;
                }
                repairs.push((holder, sid, addrs, grant));
            }
        }
        // Rebalancing: a node at ≥ 90 % of its capacity hands one session to a node under 50 %,
        // at most once a second per node.
        let nodes: Vec<(NodeId, u32, u32)> = st
            .colony
            .nodes()
            .into_iter()
            .filter(|r| r.alive)
            .map(|r| (r.spec.id, r.sessions, r.spec.capacity))
            .collect();
        let has_room = nodes.iter().any(|(_, s, c)| (*s as u64) * 2 < *c as u64);
        if has_room {
            for (id, s, c) in &nodes {
                if (*s as u64) * 10 >= (*c as u64) * 9
                    && st
                        .mob
                        .last_rebalance
                        .get(id)
                        .is_none_or(|t| now.saturating_duration_since(*t) >= Duration::from_secs(1))
                {
                    let pick = st
                        .directory
                        .values()
                        .find(|e| {
                            e.node == *id
                                && e.state == DirState::Active
                                && e.manifest
                                    .as_ref()
                                    .is_some_and(|m| m.checkpoint_policy().live_handover)
                        })
                        .map(|e| e.session_id.clone());
                    if let Some(sid) = pick {
                        st.mob.last_rebalance.insert(*id, now);
                        rebalance.push((*id, sid));
                    }
                }
            }
        }
    }
    // New replica holders of agent sessions fetch the package ahead of a failover.
    for (m, nodes) in prefetches {
        core.prefetch(&m, &nodes);
    }
    for (holder, sid, addrs, grant) in repairs {
        let _ = core.send_node(
            &holder,
            ToNode::Replicas {
                session: sid.to_string(),
                replicas: addrs,
                grant,
            },
        );
    }
    for (node, sid) in rebalance {
        tracing::info!(%node, session = %sid, "rebalancing: node over 90% of its capacity");
        let _ = core.send_node(
            &node,
            ToNode::Handover {
                session: sid.to_string(),
                target: None,
            },
        );
    }
    for sid in todo {
        let c = core.clone();
        tokio::spawn(async move {
            restore(&c, &sid).await;
            let mut st = lock(&c.state);
            st.mob.restoring.remove(&sid);
            st.mob.in_flight = st.mob.in_flight.saturating_sub(1);
        });
    }
}

/// Restores one orphaned session (failover, never-live restart).
async fn restore(core: &Arc<RcCore>, sid: &SessionId) {
    let t0 = Instant::now();
    let plan = {
        let mut st = lock(&core.state);
        let Some(e) = st.directory.get(sid) else {
            return;
        };
        if e.state != DirState::Orphaned {
            return;
        }
        let Some(m) = e.manifest.clone() else {
            return;
        };
        let req = Requirements::from_manifest(&m);
        // Holders of its state: the replicas and the old holder, when alive.
        let mut holders: Vec<NodeId> = e.replicas.clone();
        if !holders.contains(&e.node) {
            holders.push(e.node);
        }
        let alive_holders: Vec<NodeId> = holders
            .iter()
            .filter(|h| st.members.get(h).is_some_and(|m| m.alive))
            .copied()
            .collect();
        let (old_epoch, memory) = (e.epoch, e.memory);
        let why_wait = |st: &RcState, why: String| -> Option<String> {
            let _ = st;
            Some(why)
        };
        let mut wait = None;
        if alive_holders.is_empty() {
            wait = why_wait(
                &st,
                "no surviving node holds its checkpoints (replicas and holder are down); waiting for one to return".into(),
            );
        }
        let target = if wait.is_none() {
            let prefer = st.colony.admit_where(&req, |r| {
                alive_holders.contains(&r.spec.id)
                    && !st.mob.draining.contains(&r.spec.id)
                    && !r.spec.migration.is_empty()
            });
            let any = || {
                st.colony.admit_where(&req, |r| {
                    !st.mob.draining.contains(&r.spec.id) && !r.spec.migration.is_empty()
                })
            };
            match prefer.or_else(any) {
                Some(t) => Some(t),
                None => {
                    let mut why: Vec<String> = st
                        .colony
                        .nodes()
                        .into_iter()
                        .map(|r| {
                            let reason = if st.mob.draining.contains(&r.spec.id) {
                                "draining".to_string()
                            } else {
                                r.check(&req)
                                    .map(|x| x.to_string())
                                    .unwrap_or_else(|| "no migration server".into())
                            };
                            format!("{}: {reason}", r.spec.name)
                        })
                        .collect();
                    why.sort();
                    wait = Some(format!(
                        "no eligible node (allowed jurisdictions {:?}): {}",
                        m.placement.jurisdictions,
                        why.join("; ")
                    ));
                    None
                }
            }
        } else {
            None
        };
        match (target, wait) {
            (Some(target), _) => {
                let epoch = old_epoch.next();
                let keep: Vec<NodeId> = alive_holders
                    .iter()
                    .filter(|h| **h != target)
                    .copied()
                    .collect();
                let replicas = core.choose_replicas(&st, &m, &target, &keep);
                let replica_addrs = migration_addrs(&st, &replicas);
                let restore_from = migration_addrs(&st, &alive_holders);
                let Some((name, api)) = st
                    .colony
                    .get(&target)
                    .map(|r| (r.spec.name.clone(), r.spec.api.clone()))
                else {
                    return;
                };
                let from = st
                    .directory
                    .get(sid)
                    .map(|e| e.node_name.clone())
                    .unwrap_or_default();
                st.colony.note_placing(&target, &req.handler, memory);
                if let Some(e) = st.directory.get_mut(sid) {
                    e.node = target;
                    e.node_name = name.clone();
                    e.address = api;
                    e.epoch = epoch;
                    e.state = DirState::Starting;
                    e.replicas = replicas;
                    e.waiting = None;
                }
                st.mob.next_try.remove(sid);
                (
                    target,
                    name,
                    epoch,
                    m,
                    replica_addrs,
                    restore_from,
                    memory,
                    from,
                )
            }
            (None, why) => {
                let why = why.unwrap_or_default();
                let changed = st
                    .directory
                    .get(sid)
                    .is_some_and(|e| e.waiting.as_deref() != Some(why.as_str()));
                if changed {
                    tracing::warn!(session = %sid, reason = %why, "session waits for an eligible node");
                    core.events.publish(ColonyEvent::SessionWaiting {
                        session: sid.to_string(),
                        reason: why.clone(),
                    });
                }
                if let Some(e) = st.directory.get_mut(sid) {
                    e.waiting = Some(why);
                }
                st.mob.next_try.insert(sid.clone(), Instant::now() + RETRY);
                core.metrics
                    .failovers
                    .add(1, &[KeyValue::new("outcome", "waiting")]);
                return;
            }
        }
    };
    let (target, name, epoch, m, replicas, restore_from, memory, from) = plan;
    let r = core
        .order_start(&target, sid, epoch, &m, replicas, restore_from)
        .await;
    let mut st = lock(&core.state);
    st.colony.note_start_answered(&target);
    match r {
        Ok(()) => {
            if let Some(e) = st.directory.get_mut(sid) {
                if e.node == target && e.epoch == epoch {
                    e.state = DirState::Active;
                }
            }
            core.metrics
                .failovers
                .add(1, &[KeyValue::new("outcome", "restored")]);
            tracing::info!(session = %sid, to = %name, %epoch, took_ms = t0.elapsed().as_millis() as u64, "session restored");
            core.events.publish(ColonyEvent::SessionMoved {
                session: sid.to_string(),
                from,
                to: name.clone(),
                epoch: epoch.0,
                how: "failover",
                took_ms: Some(t0.elapsed().as_millis() as u64),
            });
        }
        Err(reason) => {
            st.colony.note_closed(&target, memory);
            if let Some(e) = st.directory.get_mut(sid) {
                if e.node == target && e.epoch == epoch {
                    // The epoch number is burned; the next attempt takes epoch + 1 again.
                    e.state = DirState::Orphaned;
                    e.waiting = Some(format!("restore on {name} failed: {reason}"));
                }
            }
            st.mob.next_try.insert(sid.clone(), Instant::now() + RETRY);
            core.metrics
                .failovers
                .add(1, &[KeyValue::new("outcome", "failed")]);
            tracing::warn!(session = %sid, to = %name, %reason, "restore failed; will retry");
        }
    }
}

#[cfg(test)]
mod reconcile_tests;

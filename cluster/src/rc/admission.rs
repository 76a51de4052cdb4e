//! RC admission: pick the node for a session from an in-memory table of the colony. Pure (no I/O,
//! no clock): the RC feeds it joins, heartbeats and placements, and asks it for decisions.
//!
//! # Rules
//! 1. **Hard filters** (never relaxed, even under overload): node alive; jurisdiction satisfies
//!    the manifest's allowed list ([`jurisdiction::satisfies`]); accelerator class ≥ required;
//!    free memory ≥ required; serves the handler and offers every capability asked; measured RTT
//!    ≤ the manifest's latency ceiling; free session capacity.
//! 2. **Score** (lower is better; weights in [`weights`]): load (sessions / capacity, up to
//!    1,000,000: it dominates, so sessions spread), RTT (2 per µs), price (1 per micro-unit), a
//!    node not hosting the handler yet (500: 0.05 % load, a tie-break), failed placements (the
//!    failure share × 1,000,000, a fresh node credited 20 successes). A WebAssembly agent's
//!    compile cost is [`COLD_PENALTY`] on top (10 % load), [`Colony::admit_preferring`].
//! 3. **Tie-break**: the node id (bytes of its public key), so equal tables give equal answers.
//!
//! A refusal lists every node with the first filter it failed ([`Decision::Refused`]).
//!
//! # Speed
//! Nodes are indexed in buckets keyed by (handler, jurisdiction, accelerator class); each bucket
//! keeps its members ordered by score key. A decision visits only buckets whose handler,
//! jurisdiction and accelerator qualify and walks each from its best member until one passes
//! the per-node filters (memory, capabilities, RTT, capacity): usually the first. Full nodes
//! leave their buckets. Updates (heartbeat, placement) re-key a node in O(handlers × log n).
//! [`Colony::admit_naive`] is the full scan used as the benchmark baseline and as the oracle in
//! tests.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use opengrid_session::{jurisdiction, AcceleratorClass, Manifest};
use serde::{Deserialize, Serialize};

use crate::common::identity::NodeId;
pub use crate::common::spec::NodeSpec;

/// What a node that must fetch and compile a session's agent first costs in score terms (as
/// much as 10 % more load): [`Colony::admit_preferring`].
pub const COLD_PENALTY: u64 = 100_000;

/// The score's weights (lower is better; see [`NodeRecord::score`]). One unit is a millionth of a
/// node's capacity in load: a node at half its capacity scores 500,000 for load.
pub mod weights {
    /// A node's load: its sessions over its capacity, times this (0 … 1,000,000).
    pub const LOAD: u64 = 1_000_000;
    /// Per µs of measured RTT to the RC (a 1 ms RTT weighs as much as 0.2 % load).
    pub const RTT_PER_US: u64 = 2;
    /// Per micro-unit of price per input.
    pub const PRICE_PER_MICRO: u64 = 1;
    /// A node not hosting sessions of the handler yet: 0.05 % load, half a session on a node of
    /// capacity 1,000. A tie-break between equally loaded nodes, not a reason to pile sessions on
    /// one (a native handler is in every node's binary; a WebAssembly agent's compile cost is
    /// [`super::COLD_PENALTY`]).
    pub const COLD_HANDLER: u64 = 500;
    /// A node whose placements all failed (its failure share × this: 100 % failures weigh as
    /// much as a full node).
    pub const FAILURES: u64 = 1_000_000;
    /// Successes a node is credited before its first placement.
    pub const TRACK_PRIOR: u64 = 20;
}

/// What the placement needs, derived from a manifest.
#[derive(Clone, Debug, PartialEq)]
pub struct Requirements {
    /// Handler id.
    pub handler: String,
    /// Allowed jurisdictions (empty = anywhere).
    pub jurisdictions: Vec<String>,
    /// Minimum accelerator class.
    pub accelerator: AcceleratorClass,
    /// Memory needed, bytes.
    pub memory: u64,
    /// RTT ceiling, microseconds.
    pub latency_ceiling_us: Option<u64>,
    /// Capabilities needed.
    pub capabilities: Vec<String>,
}

impl Requirements {
    /// The placement requirements of a manifest.
    pub fn from_manifest(m: &Manifest) -> Self {
        let mut caps: Vec<String> = m
            .placement
            .capabilities
            .iter()
            .filter(|c| **c != m.session.handler)
            .cloned()
            .collect();
        caps.sort();
        caps.dedup();
        Requirements {
            // A pushed agent runs on any node that runs agent packages (it fetches the package).
            handler: m.required_handler().to_string(),
            jurisdictions: m.placement.jurisdictions.clone(),
            accelerator: m.placement.accelerator,
            memory: m.placement.memory.0,
            latency_ceiling_us: m
                .placement
                .latency_ceiling
                .map(|d| d.0.as_micros().min(u64::MAX as u128) as u64),
            capabilities: caps,
        }
    }
}

/// Why a node was not chosen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "filter", rename_all = "snake_case")]
pub enum Rejection {
    /// The node is suspected or declared dead.
    NotAlive,
    /// Its jurisdiction is not allowed.
    Jurisdiction {
        /// The node's.
        node: String,
        /// Allowed.
        allowed: Vec<String>,
    },
    /// Its accelerator is weaker than required.
    Accelerator {
        /// The node's.
        node: AcceleratorClass,
        /// Required.
        required: AcceleratorClass,
    },
    /// Not enough free memory.
    Memory {
        /// Free bytes.
        free: u64,
        /// Required bytes.
        required: u64,
    },
    /// The session would reserve more than the node lets one session reserve.
    ReservationCap {
        /// Required bytes.
        required: u64,
        /// The node's cap, bytes.
        cap: u64,
    },
    /// The handler is not served there.
    Handler {
        /// The handler.
        handler: String,
    },
    /// A capability is missing.
    Capability {
        /// The first missing capability.
        missing: String,
    },
    /// Measured RTT above the ceiling.
    Latency {
        /// Measured RTT, µs.
        rtt_us: u64,
        /// Ceiling, µs.
        ceiling_us: u64,
    },
    /// No free session slot.
    Capacity {
        /// Sessions hosted.
        sessions: u32,
        /// Capacity.
        capacity: u32,
    },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::NotAlive => write!(f, "node is not alive"),
            Rejection::Jurisdiction { node, allowed } => {
                write!(f, "jurisdiction {node} not in {allowed:?}")
            }
            Rejection::Accelerator { node, required } => {
                write!(f, "accelerator {node} < required {required}")
            }
            Rejection::Memory { free, required } => {
                write!(f, "free memory {free} B < required {required} B")
            }
            Rejection::ReservationCap { required, cap } => write!(
                f,
                "reserves {required} B, more than one session may reserve here ({cap} B)"
            ),
            Rejection::Handler { handler } => write!(f, "does not serve handler {handler:?}"),
            Rejection::Capability { missing } => write!(f, "lacks capability {missing:?}"),
            Rejection::Latency { rtt_us, ceiling_us } => {
                write!(f, "rtt {rtt_us} µs > ceiling {ceiling_us} µs")
            }
            Rejection::Capacity { sessions, capacity } => {
                write!(f, "full: {sessions}/{capacity} sessions")
            }
        }
    }
}

/// The outcome of admission.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Place the session on `node`.
    Placed {
        /// The node.
        node: NodeId,
        /// Its score key (lower is better).
        score: u64,
    },
    /// No node fits; every node with the reason it was rejected (sorted by node id).
    Refused {
        /// Per node: the first filter it failed.
        why: Vec<(NodeId, Rejection)>,
    },
}

/// Live state of one node in the table.
#[derive(Clone, Debug)]
pub struct NodeRecord {
    /// What it declared.
    pub spec: NodeSpec,
    /// Alive per the failure detector.
    pub alive: bool,
    /// Sessions hosted (heartbeat, plus placements since).
    pub sessions: u32,
    /// Memory reserved by placed sessions.
    pub reserved_memory: u64,
    /// Measured RTT RC↔node, µs.
    pub rtt_us: u64,
    /// Handlers with at least one session hosted (warm).
    pub warm: Vec<String>,
    /// Successful placements.
    pub ok: u64,
    /// Failed placements.
    pub failed: u64,
    /// Start orders sent and not answered yet: a heartbeat the node sent before it started them
    /// does not count them, so they are added to every heartbeat's session count until the
    /// node answers ([`Colony::note_placing`], [`Colony::note_start_answered`]).
    pub starting: u32,
    key: [u8; 32],
}

impl NodeRecord {
    fn free_memory(&self) -> u64 {
        self.spec.memory.saturating_sub(self.reserved_memory)
    }

    fn has_room(&self) -> bool {
        self.sessions < self.spec.capacity
    }

    /// Score for a session of `handler` (lower is better): the sum of the weighted terms the
    /// module docs list ([`weights`]). Load dominates, so a colony's sessions spread over its
    /// eligible nodes; the rest break near-ties.
    pub fn score(&self, handler: &str) -> u64 {
        use weights::*;
        let load = (self.sessions as u64 * LOAD) / self.spec.capacity.max(1) as u64;
        let rtt = self.rtt_us.min(1_000_000) * RTT_PER_US;
        let price = self.spec.price_micros_per_input.min(1_000_000) * PRICE_PER_MICRO;
        let warm = if self.warm.iter().any(|h| h == handler) {
            0
        } else {
            COLD_HANDLER
        };
        // The share of failed placements, with a prior of TRACK_PRIOR successes: a fresh node
        // counts as reliable, and volume earns nothing (a prior that rated fresh nodes at 50 %
        // failures made every node with history look better than an empty one, so a fresh
        // colony piled sessions onto whichever node got the first ones).
        let track = (FAILURES * self.failed) / (self.ok + self.failed + TRACK_PRIOR);
        load + rtt + price + warm + track
    }

    /// First filter this node fails for `req`, if any.
    pub fn check(&self, req: &Requirements) -> Option<Rejection> {
        if !self.alive {
            return Some(Rejection::NotAlive);
        }
        if !req.jurisdictions.is_empty()
            && !jurisdiction::satisfies(&self.spec.jurisdiction, &req.jurisdictions)
        {
            return Some(Rejection::Jurisdiction {
                node: self.spec.jurisdiction.clone(),
                allowed: req.jurisdictions.clone(),
            });
        }
        if self.spec.accelerator < req.accelerator {
            return Some(Rejection::Accelerator {
                node: self.spec.accelerator,
                required: req.accelerator,
            });
        }
        if !self.spec.handlers.contains(&req.handler) {
            return Some(Rejection::Handler {
                handler: req.handler.clone(),
            });
        }
        self.check_node_local(req)
    }

    /// The filters not covered by bucket membership.
    fn check_node_local(&self, req: &Requirements) -> Option<Rejection> {
        if let Some(missing) = req
            .capabilities
            .iter()
            .find(|c| !self.spec.capabilities.contains(c) && !self.spec.handlers.contains(c))
        {
            return Some(Rejection::Capability {
                missing: missing.clone(),
            });
        }
        if self.free_memory() < req.memory {
            return Some(Rejection::Memory {
                free: self.free_memory(),
                required: req.memory,
            });
        }
        if self.spec.max_session_memory > 0 && req.memory > self.spec.max_session_memory {
            return Some(Rejection::ReservationCap {
                required: req.memory,
                cap: self.spec.max_session_memory,
            });
        }
        if let Some(c) = req.latency_ceiling_us {
            if self.rtt_us > c {
                return Some(Rejection::Latency {
                    rtt_us: self.rtt_us,
                    ceiling_us: c,
                });
            }
        }
        if !self.has_room() {
            return Some(Rejection::Capacity {
                sessions: self.sessions,
                capacity: self.spec.capacity,
            });
        }
        None
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct BucketKey {
    jurisdiction: String,
    accelerator: AcceleratorClass,
}

#[derive(Default, Debug)]
struct Bucket {
    members: BTreeSet<(u64, [u8; 32], u32)>,
    /// Zone memberships of the bucket's jurisdiction, computed once with
    /// [`jurisdiction::satisfies`] (the decision path must not re-scan member lists).
    in_eu: bool,
    in_eea: bool,
}

impl Bucket {
    fn for_jurisdiction(j: &str) -> Self {
        Bucket {
            members: BTreeSet::new(),
            in_eu: jurisdiction::satisfies(j, &["EU".to_string()]),
            in_eea: jurisdiction::satisfies(j, &["EEA".to_string()]),
        }
    }

    /// Same answer as `jurisdiction::satisfies(j, allowed)`, using the cached zone flags.
    fn allows(&self, j: &str, allowed: &[String]) -> bool {
        allowed.iter().any(|a| {
            a == j
                || match a.as_str() {
                    "EU" => self.in_eu,
                    "EEA" => self.in_eea,
                    // A country admits only itself (checked above).
                    c if c.len() == 2 => false,
                    other => jurisdiction::satisfies(j, std::slice::from_ref(&other.to_string())),
                }
        })
    }
}

/// The RC's table of the colony's nodes.
#[derive(Default, Debug)]
pub struct Colony {
    nodes: Vec<Option<NodeRecord>>,
    index: HashMap<NodeId, u32>,
    /// handler → bucket key → bucket
    buckets: HashMap<String, Vec<(BucketKey, Bucket)>>,
    /// Per-node: score key currently indexed per handler (to remove it).
    indexed: HashMap<u32, Vec<(String, u64)>>,
    /// Migration address → node (replica sets in holding reports name holders by it).
    by_migration: HashMap<String, NodeId>,
}

impl Colony {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of nodes known (alive or not).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no node is known.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// A node's record.
    pub fn get(&self, id: &NodeId) -> Option<&NodeRecord> {
        let i = *self.index.get(id)?;
        self.nodes[i as usize].as_ref()
    }

    /// Every node, sorted by id.
    pub fn nodes(&self) -> Vec<&NodeRecord> {
        let mut v: Vec<_> = self.nodes.iter().flatten().collect();
        v.sort_by_key(|r| r.key);
        v
    }

    /// Adds a node (or replaces its declaration), alive, with no sessions.
    pub fn upsert(&mut self, spec: NodeSpec) {
        let key = spec.id.public_key();
        let rec = NodeRecord {
            spec,
            alive: true,
            sessions: 0,
            reserved_memory: 0,
            rtt_us: 0,
            warm: Vec::new(),
            ok: 0,
            failed: 0,
            starting: 0,
            key,
        };
        let id = rec.spec.id;
        self.by_migration.insert(rec.spec.migration.clone(), id);
        let i = match self.index.get(&id) {
            Some(&i) => {
                self.unindex(i);
                let old = self.nodes[i as usize].take();
                if let Some(old) = &old {
                    if old.spec.migration != rec.spec.migration
                        && self.by_migration.get(&old.spec.migration) == Some(&id)
                    {
                        self.by_migration.remove(&old.spec.migration);
                    }
                }
                let mut rec = rec;
                if let Some(old) = old {
                    rec.ok = old.ok;
                    rec.failed = old.failed;
                }
                self.nodes[i as usize] = Some(rec);
                i
            }
            None => {
                let i = self.nodes.len() as u32;
                self.nodes.push(Some(rec));
                self.index.insert(id, i);
                i
            }
        };
        self.reindex(i);
    }

    /// Forgets a node.
    pub fn remove(&mut self, id: &NodeId) {
        if let Some(i) = self.index.remove(id) {
            self.unindex(i);
            if let Some(old) = self.nodes[i as usize].take() {
                if self.by_migration.get(&old.spec.migration) == Some(id) {
                    self.by_migration.remove(&old.spec.migration);
                }
            }
        }
    }

    /// The node whose migration endpoint is `addr`.
    pub fn by_migration(&self, addr: &str) -> Option<NodeId> {
        self.by_migration.get(addr).copied()
    }

    /// Applies a node's heartbeat report.
    pub fn update_load(&mut self, id: &NodeId, sessions: u32, rtt_us: u64, warm: Vec<String>) {
        // Unchanged (a settled colony's usual heartbeat): nothing to re-score or re-index.
        if self.get(id).is_some_and(|r| {
            r.sessions == sessions.saturating_add(r.starting)
                && r.rtt_us == rtt_us
                && r.warm == warm
        }) {
            return;
        }
        self.modify(id, |r| {
            r.sessions = sessions.saturating_add(r.starting);
            r.rtt_us = rtt_us;
            r.warm = warm;
        });
    }

    /// Marks a node alive or not (dead nodes leave every bucket).
    pub fn set_alive(&mut self, id: &NodeId, alive: bool) {
        self.modify(id, |r| r.alive = alive);
    }

    /// Records a placement on `id` (one more session, memory reserved, handler warm).
    pub fn note_placed(&mut self, id: &NodeId, handler: &str, memory: u64) {
        self.modify(id, |r| {
            r.sessions = r.sessions.saturating_add(1);
            r.reserved_memory = r.reserved_memory.saturating_add(memory);
            r.ok += 1;
            if !r.warm.iter().any(|h| h == handler) {
                r.warm.push(handler.to_string());
            }
        });
    }

    /// Records a start order sent to `id` ([`note_placed`](Self::note_placed), and the session
    /// counts on top of heartbeats until [`note_start_answered`](Self::note_start_answered)).
    pub fn note_placing(&mut self, id: &NodeId, handler: &str, memory: u64) {
        self.note_placed(id, handler, memory);
        self.modify(id, |r| r.starting = r.starting.saturating_add(1));
    }

    /// The node answered a start order (either way; on failure also call
    /// [`note_closed`](Self::note_closed)).
    pub fn note_start_answered(&mut self, id: &NodeId) {
        self.modify(id, |r| r.starting = r.starting.saturating_sub(1));
    }

    /// Records a failed placement order on `id` (route feedback).
    pub fn note_failed(&mut self, id: &NodeId) {
        self.modify(id, |r| r.failed += 1);
    }

    /// Records a session leaving `id`.
    pub fn note_closed(&mut self, id: &NodeId, memory: u64) {
        self.modify(id, |r| {
            r.sessions = r.sessions.saturating_sub(1);
            r.reserved_memory = r.reserved_memory.saturating_sub(memory);
        });
    }

    fn modify(&mut self, id: &NodeId, f: impl FnOnce(&mut NodeRecord)) {
        let Some(&i) = self.index.get(id) else {
            return;
        };
        self.unindex(i);
        if let Some(r) = self.nodes[i as usize].as_mut() {
            f(r);
        }
        self.reindex(i);
    }

    fn unindex(&mut self, i: u32) {
        let Some(entries) = self.indexed.remove(&i) else {
            return;
        };
        let Some(rec) = self.nodes[i as usize].as_ref() else {
            return;
        };
        let bk = BucketKey {
            jurisdiction: rec.spec.jurisdiction.clone(),
            accelerator: rec.spec.accelerator,
        };
        for (h, score) in entries {
            if let Some(list) = self.buckets.get_mut(&h) {
                if let Some((_, b)) = list.iter_mut().find(|(k, _)| *k == bk) {
                    b.members.remove(&(score, rec.key, i));
                }
            }
        }
    }

    fn reindex(&mut self, i: u32) {
        let Some(rec) = self.nodes[i as usize].as_ref() else {
            return;
        };
        if !rec.alive || !rec.has_room() {
            return;
        }
        let bk = BucketKey {
            jurisdiction: rec.spec.jurisdiction.clone(),
            accelerator: rec.spec.accelerator,
        };
        let mut entries = Vec::with_capacity(rec.spec.handlers.len());
        for h in &rec.spec.handlers {
            let score = rec.score(h);
            let list = self.buckets.entry(h.clone()).or_default();
            let b = match list.iter().position(|(k, _)| *k == bk) {
                Some(p) => &mut list[p].1,
                None => {
                    list.push((bk.clone(), Bucket::for_jurisdiction(&bk.jurisdiction)));
                    &mut list.last_mut().expect("just pushed").1
                }
            };
            b.members.insert((score, rec.key, i));
            entries.push((h.clone(), score));
        }
        self.indexed.insert(i, entries);
    }

    /// Picks the node for a session needing `req` (indexed path).
    pub fn admit(&self, req: &Requirements) -> Decision {
        let mut best: Option<(u64, [u8; 32], u32)> = None;
        if let Some(list) = self.buckets.get(&req.handler) {
            for (bk, bucket) in list {
                if bk.accelerator < req.accelerator
                    || (!req.jurisdictions.is_empty()
                        && !bucket.allows(&bk.jurisdiction, &req.jurisdictions))
                {
                    continue;
                }
                for entry in bucket.members.iter() {
                    if let Some(b) = &best {
                        if entry >= b {
                            break;
                        }
                    }
                    let Some(rec) = self.nodes[entry.2 as usize].as_ref() else {
                        continue;
                    };
                    if rec.check_node_local(req).is_none() {
                        best = Some(*entry);
                        break;
                    }
                }
            }
        }
        match best {
            Some((score, _, i)) => match self.nodes[i as usize].as_ref() {
                Some(rec) => Decision::Placed {
                    node: rec.spec.id,
                    score,
                },
                None => self.explain(req),
            },
            None => self.explain(req),
        }
    }

    /// [`admit`](Self::admit), preferring `warm` nodes (they hold the session's agent package
    /// already): the best warm node that passes every filter wins unless the overall best beats
    /// it by more than [`COLD_PENALTY`] (a cold node fetches and compiles the agent first).
    pub fn admit_preferring(&self, req: &Requirements, warm: &[NodeId]) -> Decision {
        let d = self.admit(req);
        let Decision::Placed { node, score } = &d else {
            return d;
        };
        if warm.is_empty() || warm.contains(node) {
            return d;
        }
        let best_warm = warm
            .iter()
            .filter_map(|id| self.get(id))
            .filter(|r| r.check(req).is_none())
            .map(|r| (r.score(&req.handler), r.key, r.spec.id))
            .min_by_key(|(s, k, _)| (*s, *k));
        match best_warm {
            Some((s, _, id)) if s < score.saturating_add(COLD_PENALTY) => {
                Decision::Placed { node: id, score: s }
            }
            _ => d,
        }
    }

    /// Up to `n` nodes that pass `req`'s filters, best score first, skipping `except` (where to
    /// pre-position an agent package).
    pub fn best_nodes(&self, req: &Requirements, n: usize, except: &[NodeId]) -> Vec<NodeId> {
        let mut v: Vec<(u64, [u8; 32], NodeId)> = self
            .nodes
            .iter()
            .flatten()
            .filter(|r| !except.contains(&r.spec.id) && r.check(req).is_none())
            .map(|r| (r.score(&req.handler), r.key, r.spec.id))
            .collect();
        v.sort_by_key(|(s, k, _)| (*s, *k));
        v.into_iter().take(n).map(|(_, _, id)| id).collect()
    }

    /// Picks the node by scanning every node (baseline and test oracle). Same answer as
    /// [`Colony::admit`].
    pub fn admit_naive(&self, req: &Requirements) -> Decision {
        let mut best: Option<(u64, [u8; 32], NodeId)> = None;
        for rec in self.nodes.iter().flatten() {
            if rec.check(req).is_some() {
                continue;
            }
            let k = (rec.score(&req.handler), rec.key, rec.spec.id);
            if best.as_ref().is_none_or(|b| (k.0, k.1) < (b.0, b.1)) {
                best = Some(k);
            }
        }
        match best {
            Some((score, _, node)) => Decision::Placed { node, score },
            None => self.explain(req),
        }
    }

    /// Best node passing every filter and `extra` (full scan; used for handover targets and
    /// failover, where the candidate set is restricted).
    pub fn admit_where(
        &self,
        req: &Requirements,
        extra: impl Fn(&NodeRecord) -> bool,
    ) -> Option<NodeId> {
        self.nodes
            .iter()
            .flatten()
            .filter(|r| r.check(req).is_none() && extra(r))
            .min_by_key(|r| (r.score(&req.handler), r.key))
            .map(|r| r.spec.id)
    }

    /// Every node with its first failed filter (empty when the colony is empty).
    pub fn explain(&self, req: &Requirements) -> Decision {
        let why = self
            .nodes()
            .into_iter()
            .map(|r| {
                (
                    r.spec.id,
                    r.check(req).unwrap_or(Rejection::Capacity {
                        sessions: r.sessions,
                        capacity: r.spec.capacity,
                    }),
                )
            })
            .collect();
        Decision::Refused { why }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::identity::Identity;
    use proptest::prelude::*;

    pub(crate) fn spec(j: &str, acc: AcceleratorClass, handlers: &[&str], cap: u32) -> NodeSpec {
        NodeSpec {
            id: Identity::generate().id(),
            name: "n".into(),
            jurisdiction: j.into(),
            accelerator: acc,
            cpu_cores: 4,
            memory: 8 << 30,
            handlers: handlers.iter().map(|s| s.to_string()).collect(),
            capabilities: vec![],
            price_micros_per_input: 10,
            capacity: cap,
            max_session_memory: 0,
            api: "http://127.0.0.1:1".into(),
            migration: "127.0.0.1:1".into(),
        }
    }

    fn req(h: &str, j: &[&str], acc: AcceleratorClass) -> Requirements {
        Requirements {
            handler: h.into(),
            jurisdictions: j.iter().map(|s| s.to_string()).collect(),
            accelerator: acc,
            memory: 64 << 20,
            latency_ceiling_us: None,
            capabilities: vec![],
        }
    }

    /// A node holding the agent's package wins over a cold one unless the cold one is better by
    /// more than the cold penalty; `best_nodes` ranks the eligible ones and skips the listed.
    #[test]
    fn warm_nodes_are_preferred_within_the_cold_penalty() {
        let mut c = Colony::new();
        let (a, b, x) = (
            spec("DE", AcceleratorClass::None, &["wasm"], 100),
            spec("DE", AcceleratorClass::None, &["wasm"], 100),
            spec("US", AcceleratorClass::None, &["wasm"], 100),
        );
        for s in [&a, &b, &x] {
            c.upsert(s.clone());
        }
        let r = req("wasm", &["DE"], AcceleratorClass::None);
        // b is warm and carries 5 % more load than a: still chosen.
        c.update_load(&b.id, 5, 500, vec![]);
        c.update_load(&a.id, 0, 500, vec![]);
        let Decision::Placed { node, .. } = c.admit_preferring(&r, &[b.id]) else {
            panic!("not placed")
        };
        assert_eq!(node, b.id);
        // 30 % more load outweighs being warm.
        c.update_load(&b.id, 30, 500, vec![]);
        let Decision::Placed { node, .. } = c.admit_preferring(&r, &[b.id]) else {
            panic!("not placed")
        };
        assert_eq!(node, a.id);
        // A warm node outside the manifest's jurisdictions is never chosen.
        let Decision::Placed { node, .. } = c.admit_preferring(&r, &[x.id]) else {
            panic!("not placed")
        };
        assert_ne!(node, x.id);
        assert_eq!(c.best_nodes(&r, 5, &[]), vec![a.id, b.id]);
        assert_eq!(c.best_nodes(&r, 5, &[a.id]), vec![b.id]);
        assert!(c.best_nodes(&r, 0, &[]).is_empty());
    }

    /// Two sessions placed back to back on two equal nodes land on different nodes, even when a
    /// heartbeat the first node sent before it started its session arrives in between, and one
    /// successful placement does not outweigh a session's worth of load.
    #[test]
    fn back_to_back_placements_spread_despite_a_stale_heartbeat() {
        let mut c = Colony::new();
        let a = spec("DE", AcceleratorClass::None, &["tutor"], 8);
        let b = spec("DE", AcceleratorClass::None, &["tutor"], 8);
        c.upsert(a.clone());
        c.upsert(b.clone());
        let r = req("tutor", &["DE"], AcceleratorClass::None);
        let Decision::Placed { node: first, .. } = c.admit(&r) else {
            panic!("not placed")
        };
        c.note_placing(&first, "tutor", r.memory);
        // The first node's heartbeat from before the start: no sessions, nothing warm.
        c.update_load(&first, 0, 500, vec![]);
        let Decision::Placed { node: second, .. } = c.admit(&r) else {
            panic!("not placed")
        };
        assert_ne!(first, second, "both sessions on one node");
        // Started: the next heartbeat reports it, and nothing is counted twice.
        c.note_start_answered(&first);
        c.update_load(&first, 1, 500, vec!["tutor".into()]);
        assert_eq!(c.get(&first).map(|r| r.sessions), Some(1));
    }

    /// A fresh colony spreads its sessions over the eligible nodes (no node takes more than its
    /// share plus one while any other has room), heartbeats included.
    #[test]
    fn a_colony_s_sessions_spread_over_its_nodes() {
        let mut c = Colony::new();
        let nodes: Vec<NodeSpec> = (0..5)
            .map(|_| spec("DE", AcceleratorClass::None, &["counter", "tutor"], 1000))
            .collect();
        for n in &nodes {
            c.upsert(n.clone());
            c.update_load(&n.id, 0, 300, vec![]);
        }
        let mut r = req("counter", &["DE"], AcceleratorClass::None);
        r.memory = 1 << 20;
        let mut placed: HashMap<NodeId, u32> = HashMap::new();
        for i in 0..1000u32 {
            let Decision::Placed { node, .. } = c.admit(&r) else {
                panic!("session {i} not placed")
            };
            c.note_placing(&node, "counter", r.memory);
            c.note_start_answered(&node);
            *placed.entry(node).or_default() += 1;
            // Every 50 placements, heartbeats (with the load they count) arrive.
            if i % 50 == 49 {
                for n in &nodes {
                    let k = placed.get(&n.id).copied().unwrap_or(0);
                    c.update_load(&n.id, k, 300, vec!["counter".into()]);
                }
            }
        }
        let counts: Vec<u32> = nodes
            .iter()
            .map(|n| placed.get(&n.id).copied().unwrap_or(0))
            .collect();
        assert!(
            counts.iter().all(|&k| (199..=201).contains(&k)),
            "1000 sessions over 5 nodes: {counts:?}"
        );
        // A node with a record of failures gets fewer; a fresh node joining gets the next ones.
        let fresh = spec("DE", AcceleratorClass::None, &["counter"], 1000);
        c.upsert(fresh.clone());
        for _ in 0..50 {
            let Decision::Placed { node, .. } = c.admit(&r) else {
                panic!("not placed")
            };
            assert_eq!(node, fresh.id, "the empty node takes new sessions first");
            c.note_placing(&node, "counter", r.memory);
            c.note_start_answered(&node);
        }
    }

    #[test]
    fn filters_and_explanation() {
        let mut c = Colony::new();
        let de = spec("DE", AcceleratorClass::None, &["tutor"], 2);
        let fr_gpu = spec("FR", AcceleratorClass::GpuLarge, &["tutor"], 2);
        let us = spec("US", AcceleratorClass::GpuSmall, &["tutor", "counter"], 2);
        for s in [&de, &fr_gpu, &us] {
            c.upsert(s.clone());
        }
        let d = c.admit(&req("tutor", &["DE"], AcceleratorClass::None));
        assert!(matches!(d, Decision::Placed { node, .. } if node == de.id));
        let d = c.admit(&req("tutor", &["EU"], AcceleratorClass::GpuSmall));
        assert!(matches!(d, Decision::Placed { node, .. } if node == fr_gpu.id));
        let d = c.admit(&req("counter", &[], AcceleratorClass::None));
        assert!(matches!(d, Decision::Placed { node, .. } if node == us.id));
        match c.admit(&req("tutor", &["JP"], AcceleratorClass::None)) {
            Decision::Refused { why } => {
                assert_eq!(why.len(), 3);
                assert!(why
                    .iter()
                    .all(|(_, r)| matches!(r, Rejection::Jurisdiction { .. })));
            }
            d => panic!("{d:?}"),
        }
        // Capacity: two placements fill DE.
        c.note_placed(&de.id, "tutor", 1);
        c.note_placed(&de.id, "tutor", 1);
        match c.admit(&req("tutor", &["DE"], AcceleratorClass::None)) {
            Decision::Refused { why } => assert!(why
                .iter()
                .any(|(n, r)| *n == de.id && matches!(r, Rejection::Capacity { .. }))),
            d => panic!("{d:?}"),
        }
        c.set_alive(&fr_gpu.id, false);
        match c.admit(&req("tutor", &["FR"], AcceleratorClass::None)) {
            Decision::Refused { why } => assert!(why
                .iter()
                .any(|(n, r)| *n == fr_gpu.id && *r == Rejection::NotAlive)),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn latency_and_capability_filters() {
        let mut c = Colony::new();
        let mut far = spec("DE", AcceleratorClass::None, &["tutor"], 10);
        far.capabilities = vec!["speech".into()];
        let near = spec("DE", AcceleratorClass::None, &["tutor"], 10);
        c.upsert(far.clone());
        c.upsert(near.clone());
        c.update_load(&far.id, 0, 90_000, vec![]);
        c.update_load(&near.id, 0, 1_000, vec![]);
        let mut r = req("tutor", &["DE"], AcceleratorClass::None);
        r.capabilities = vec!["speech".into()];
        assert!(matches!(c.admit(&r), Decision::Placed { node, .. } if node == far.id));
        r.latency_ceiling_us = Some(80_000);
        match c.admit(&r) {
            Decision::Refused { why } => {
                assert!(why
                    .iter()
                    .any(|(n, x)| *n == far.id && matches!(x, Rejection::Latency { .. })));
                assert!(why
                    .iter()
                    .any(|(n, x)| *n == near.id && matches!(x, Rejection::Capability { .. })));
            }
            d => panic!("{d:?}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The indexed path gives the same answer as the full scan.
        #[test]
        fn indexed_equals_naive(seed in any::<u64>(), n in 1usize..60, ops in prop::collection::vec((0usize..60, 0u8..4), 0..40)) {
            use rand::{Rng, SeedableRng};
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let js = ["DE", "FR", "US", "NL"];
            let hs = ["tutor", "counter", "chat"];
            let accs = [AcceleratorClass::None, AcceleratorClass::GpuSmall, AcceleratorClass::GpuLarge];
            let mut c = Colony::new();
            let mut ids = Vec::new();
            for _ in 0..n {
                let mut s = spec(js[rng.random_range(0..4)], accs[rng.random_range(0..3)], &[hs[rng.random_range(0..3)]], rng.random_range(1..4));
                s.price_micros_per_input = rng.random_range(0..5);
                ids.push(s.id);
                c.upsert(s);
            }
            for (k, op) in ops {
                let id = ids[k % ids.len()];
                match op {
                    0 => c.note_placed(&id, hs[k % 3], 1 << 20),
                    1 => c.update_load(&id, (k % 3) as u32, (k as u64) * 1000, vec![]),
                    2 => c.set_alive(&id, k % 2 == 0),
                    _ => c.note_closed(&id, 1 << 20),
                }
            }
            for h in hs {
                for j in [vec![], vec!["EU".to_string()], vec!["US".to_string()], vec!["EEA".to_string()], vec!["FR".to_string(), "US".to_string()]] {
                    for a in accs {
                        let r = Requirements { handler: h.into(), jurisdictions: j.clone(), accelerator: a, memory: 1 << 20, latency_ceiling_us: Some(30_000), capabilities: vec![] };
                        prop_assert_eq!(c.admit(&r), c.admit_naive(&r));
                    }
                }
            }
        }
    }
}

//! Invariant checkers: pure functions over the records a run leaves behind. Each returns every
//! [`Violation`] it finds, with enough detail to debug (session, seq, node, epoch, times).
//!
//! Records:
//! - the workload client's own log of inputs sent and acknowledged ([`InputRecord`]);
//! - each session's final observed state: the seqs it applied, in order ([`SessionOutcome`]);
//! - the nodes' event logs, JSON lines ([`NodeEvent`]);
//! - placements and manifest jurisdictions ([`Placement`]);
//! - the ledger replicas' applied receipts ([`AppliedReceipt`]);
//! - health probes of every process still alive ([`HealthProbe`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use opengrid_session::jurisdiction;
use serde::{Deserialize, Serialize};

use crate::scenario::Invariant;

/// One broken invariant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// Which invariant.
    pub invariant: Invariant,
    /// The session, process or receipt concerned.
    pub subject: String,
    /// What happened, with the numbers.
    pub detail: String,
    /// When (ms from the start of the run), if known.
    pub t_ms: Option<u64>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{:?}] {}: {}",
            self.invariant, self.subject, self.detail
        )?;
        if let Some(t) = self.t_ms {
            write!(f, " (t+{t}ms)")?;
        }
        Ok(())
    }
}

fn v(inv: Invariant, subject: impl Into<String>, detail: String, t_ms: Option<u64>) -> Violation {
    Violation {
        invariant: inv,
        subject: subject.into(),
        detail,
        t_ms,
    }
}

/// One input as the workload client saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRecord {
    /// The session.
    pub session: String,
    /// Its seq.
    pub seq: u64,
    /// When it was first sent (ms).
    pub sent_ms: u64,
    /// When it was acknowledged (ms), if it was.
    pub acked_ms: Option<u64>,
}

/// What a session's final state says it applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionOutcome {
    /// The session.
    pub session: String,
    /// Its manifest's acceptable loss (0 for zero-loss), ms.
    pub loss_bound_ms: u64,
    /// Seqs applied, in order, as recorded in the final state.
    pub applied: Vec<u64>,
}

/// "No acknowledged input lost beyond the manifest bound" and "no input processed twice".
///
/// An acknowledged input missing from the final state is allowed only for a session with a
/// non-zero bound, when a state-losing failure (`failures_ms`: kill times of holders) happened
/// within the bound after its acknowledgement. A seq applied twice, or applied but never sent,
/// is always a violation. A session the client used but whose final state was never observed is
/// reported too (its inputs cannot be accounted for).
pub fn check_inputs(
    inputs: &[InputRecord],
    outcomes: &[SessionOutcome],
    failures_ms: &[u64],
) -> Vec<Violation> {
    let mut out = Vec::new();
    let by_session: HashMap<&str, &SessionOutcome> =
        outcomes.iter().map(|o| (o.session.as_str(), o)).collect();
    let mut sent: HashMap<&str, BTreeMap<u64, &InputRecord>> = HashMap::new();
    for r in inputs {
        sent.entry(r.session.as_str()).or_default().insert(r.seq, r);
    }
    for o in outcomes {
        let mut seen = BTreeSet::new();
        let s = sent.get(o.session.as_str());
        for (i, seq) in o.applied.iter().enumerate() {
            if !seen.insert(*seq) {
                out.push(v(
                    Invariant::NoDuplicate,
                    &o.session,
                    format!("seq {seq} applied twice (again at position {i} of the final state)"),
                    None,
                ));
            }
            if s.is_none_or(|m| !m.contains_key(seq)) {
                out.push(v(
                    Invariant::NoDuplicate,
                    &o.session,
                    format!("seq {seq} applied but never sent by the client"),
                    None,
                ));
            }
        }
    }
    let mut sessions: Vec<&&str> = sent.keys().collect();
    sessions.sort();
    for session in sessions {
        let records = &sent[*session];
        let Some(o) = by_session.get(*session) else {
            out.push(v(
                Invariant::NoAckedLoss,
                *session,
                format!(
                    "final state never observed; {} acknowledged input(s) unaccounted for",
                    records.values().filter(|r| r.acked_ms.is_some()).count()
                ),
                None,
            ));
            continue;
        };
        let applied: BTreeSet<u64> = o.applied.iter().copied().collect();
        for r in records.values() {
            let Some(acked) = r.acked_ms else { continue };
            if applied.contains(&r.seq) {
                continue;
            }
            let excused = o.loss_bound_ms > 0
                && failures_ms
                    .iter()
                    .any(|f| *f >= acked && *f - acked <= o.loss_bound_ms);
            if !excused {
                let why = if o.loss_bound_ms == 0 {
                    "the manifest allows no loss".to_string()
                } else {
                    format!(
                        "no failure within the {} ms bound after the ack (failures at {:?} ms)",
                        o.loss_bound_ms, failures_ms
                    )
                };
                out.push(v(
                    Invariant::NoAckedLoss,
                    *session,
                    format!(
                        "seq {} acknowledged at t+{acked}ms is missing from the final state; {why}",
                        r.seq
                    ),
                    Some(acked),
                ));
            }
        }
    }
    out
}

/// What a node logged about a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// The node started serving the session.
    Active,
    /// The node stopped serving it (froze, moved, released, fenced).
    Inactive,
    /// The node processed an input of the session.
    Processed,
}

/// One line of a node's event log (JSON lines).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEvent {
    /// The session.
    pub session: String,
    /// The node.
    pub node: String,
    /// The holder epoch.
    pub epoch: u64,
    /// What happened.
    pub event: EventKind,
    /// When (ms).
    pub t_ms: u64,
    /// The input's seq (for `processed`).
    #[serde(default)]
    pub seq: Option<u64>,
}

/// Parses JSON lines of [`NodeEvent`]; blank lines are skipped, bad lines are returned with
/// their 1-based line numbers.
pub fn parse_node_events(text: &str) -> (Vec<NodeEvent>, Vec<(usize, String)>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<NodeEvent>(line) {
            Ok(e) => ok.push(e),
            Err(e) => bad.push((i + 1, e.to_string())),
        }
    }
    (ok, bad)
}

#[derive(Clone, Debug)]
struct Interval {
    node: String,
    epoch: u64,
    from: u64,
    to: u64,
}

/// "No session active on two nodes in overlapping epochs".
///
/// Active intervals are built per (session, node, epoch) from `active`/`inactive` events; an
/// interval without `inactive` ends when its node died (`deaths_ms`, kill times) or at `end_ms`.
/// Violations: the same epoch active on two nodes; two nodes active at once for longer than
/// `grace_ms`; a node processing an input with an epoch older than one already active elsewhere
/// (an unfenced stale holder).
pub fn check_single_active(
    events: &[NodeEvent],
    deaths_ms: &BTreeMap<String, u64>,
    end_ms: u64,
    grace_ms: u64,
) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut evs: Vec<&NodeEvent> = events.iter().collect();
    evs.sort_by_key(|e| (e.t_ms, e.event != EventKind::Inactive));
    let mut open: BTreeMap<(String, String, u64), u64> = BTreeMap::new();
    let mut intervals: BTreeMap<String, Vec<Interval>> = BTreeMap::new();
    let close = |node: &str, from: u64| {
        let death = deaths_ms
            .get(node)
            .copied()
            .filter(|d| *d >= from)
            .unwrap_or(end_ms);
        death.min(end_ms).max(from)
    };
    for e in &evs {
        let key = (e.session.clone(), e.node.clone(), e.epoch);
        match e.event {
            EventKind::Active => {
                open.entry(key).or_insert(e.t_ms);
            }
            EventKind::Inactive => {
                if let Some(from) = open.remove(&key) {
                    intervals
                        .entry(e.session.clone())
                        .or_default()
                        .push(Interval {
                            node: e.node.clone(),
                            epoch: e.epoch,
                            from,
                            to: e.t_ms.min(close(&e.node, from)),
                        });
                }
            }
            EventKind::Processed => {}
        }
    }
    for ((session, node, epoch), from) in open {
        let to = close(&node, from);
        intervals.entry(session).or_default().push(Interval {
            node,
            epoch,
            from,
            to,
        });
    }
    for (session, ivs) in &intervals {
        for (i, a) in ivs.iter().enumerate() {
            for b in &ivs[i + 1..] {
                if a.node == b.node {
                    continue;
                }
                if a.epoch == b.epoch {
                    out.push(v(
                        Invariant::SingleActive,
                        session,
                        format!(
                            "epoch {} active on both {} (t+{}..{}ms) and {} (t+{}..{}ms)",
                            a.epoch, a.node, a.from, a.to, b.node, b.from, b.to
                        ),
                        Some(a.from.max(b.from)),
                    ));
                    continue;
                }
                let lo = a.from.max(b.from);
                let hi = a.to.min(b.to);
                if hi > lo && hi - lo > grace_ms {
                    out.push(v(
                        Invariant::SingleActive,
                        session,
                        format!(
                            "active on {} (epoch {}, t+{}..{}ms) and {} (epoch {}, t+{}..{}ms) \
                             at once for {} ms (grace {} ms)",
                            a.node,
                            a.epoch,
                            a.from,
                            a.to,
                            b.node,
                            b.epoch,
                            b.from,
                            b.to,
                            hi - lo,
                            grace_ms
                        ),
                        Some(lo),
                    ));
                }
            }
        }
    }
    // Stale holders processing after a newer epoch went active elsewhere.
    let mut newest_active: HashMap<&str, Vec<(u64, u64, &str)>> = HashMap::new();
    for e in &evs {
        if e.event == EventKind::Active {
            newest_active.entry(e.session.as_str()).or_default().push((
                e.t_ms,
                e.epoch,
                e.node.as_str(),
            ));
        }
    }
    for e in &evs {
        if e.event != EventKind::Processed {
            continue;
        }
        if let Some(acts) = newest_active.get(e.session.as_str()) {
            if let Some((t, ep, n)) = acts
                .iter()
                .find(|(t, ep, n)| *t + grace_ms < e.t_ms && *ep > e.epoch && *n != e.node)
            {
                out.push(v(
                    Invariant::SingleActive,
                    &e.session,
                    format!(
                        "{} processed seq {:?} with epoch {} at t+{}ms although epoch {ep} was \
                         active on {n} since t+{t}ms (stale holder not fenced)",
                        e.node, e.seq, e.epoch, e.t_ms
                    ),
                    Some(e.t_ms),
                ));
            }
        }
    }
    out
}

/// A session placed on a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The session.
    pub session: String,
    /// The node it was placed on (activated there or had a replica there).
    pub node: String,
    /// When (ms).
    pub t_ms: u64,
}

/// "Never violate jurisdiction": every placement's node satisfies the session's allowed list
/// (an empty list allows anywhere).
pub fn check_jurisdiction(
    placements: &[Placement],
    node_jurisdiction: &BTreeMap<String, String>,
    allowed: &BTreeMap<String, Vec<String>>,
) -> Vec<Violation> {
    let mut out = Vec::new();
    for p in placements {
        let Some(j) = node_jurisdiction.get(&p.node) else {
            out.push(v(
                Invariant::Jurisdiction,
                &p.session,
                format!("placed on unknown node {}", p.node),
                Some(p.t_ms),
            ));
            continue;
        };
        let Some(a) = allowed.get(&p.session) else {
            out.push(v(
                Invariant::Jurisdiction,
                &p.session,
                format!("placed on {} ({j}) but its manifest is unknown", p.node),
                Some(p.t_ms),
            ));
            continue;
        };
        if !a.is_empty() && !jurisdiction::satisfies(j, a) {
            out.push(v(
                Invariant::Jurisdiction,
                &p.session,
                format!("placed on {} in {j}; manifest allows only {a:?}", p.node),
                Some(p.t_ms),
            ));
        }
    }
    out
}

/// A receipt as applied by one ledger replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedReceipt {
    /// Receipt id.
    pub id: String,
    /// Fee charged (smallest unit).
    pub fee: u64,
    /// Credits paid out for it: (account, amount).
    pub credits: Vec<(String, u64)>,
}

/// A receipt the workload submitted and saw acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmittedReceipt {
    /// Receipt id.
    pub id: String,
    /// Fee.
    pub fee: u64,
}

/// "Ledger credits sum to fees, every receipt applied once": per replica, each receipt's
/// credits sum to its fee, no receipt is applied twice, every acknowledged receipt is applied
/// with the fee it was submitted with; across replicas, every applied log is a prefix of the
/// longest one (replicas never diverge).
pub fn check_ledger(
    acknowledged: &[SubmittedReceipt],
    replicas: &BTreeMap<String, Vec<AppliedReceipt>>,
) -> Vec<Violation> {
    let mut out = Vec::new();
    let inv = Invariant::LedgerBalance;
    for (name, log) in replicas {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, r) in log.iter().enumerate() {
            if let Some(first) = seen.insert(r.id.as_str(), i) {
                out.push(v(
                    inv,
                    &r.id,
                    format!("applied twice on {name} (positions {first} and {i})"),
                    None,
                ));
            }
            let sum: u128 = r.credits.iter().map(|(_, a)| *a as u128).sum();
            if sum != r.fee as u128 {
                out.push(v(
                    inv,
                    &r.id,
                    format!(
                        "on {name}: credits sum to {sum} but the fee is {} ({:?})",
                        r.fee, r.credits
                    ),
                    None,
                ));
            }
        }
        let by_id: HashMap<&str, &AppliedReceipt> =
            log.iter().map(|r| (r.id.as_str(), r)).collect();
        for a in acknowledged {
            match by_id.get(a.id.as_str()) {
                None => out.push(v(
                    inv,
                    &a.id,
                    format!("acknowledged to the client but not applied on {name}"),
                    None,
                )),
                Some(r) if r.fee != a.fee => out.push(v(
                    inv,
                    &a.id,
                    format!(
                        "submitted with fee {} but applied on {name} with {}",
                        a.fee, r.fee
                    ),
                    None,
                )),
                Some(_) => {}
            }
        }
    }
    if let Some((longest_name, longest)) = replicas.iter().max_by_key(|(_, l)| l.len()) {
        for (name, log) in replicas {
            if let Some(i) = log.iter().zip(longest.iter()).position(|(a, b)| a != b) {
                out.push(v(
                    inv,
                    &log[i].id,
                    format!(
                        "replicas diverge at position {i}: {name} applied {:?}, {longest_name} \
                         applied {:?}",
                        log[i].id, longest[i].id
                    ),
                    None,
                ));
            }
        }
    }
    out
}

/// A ledger replica's totals as it reported them at the end of a colony run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaTotals {
    /// Process name.
    pub name: String,
    /// Receipts settled.
    pub receipts: u64,
    /// Σ fees of settled receipts.
    pub fees: u64,
    /// Σ credited balances.
    pub credits: u128,
    /// State hash (hex).
    pub state_hash: String,
}

/// What a colony run saw of settlement at its end: each live ledger replica's totals, the
/// receipts the RC acknowledged to the nodes (the nodes' own counters) and the RC's count of
/// receipts the ledger rejected.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementSeen {
    /// Live replicas' totals (replicas that did not answer are absent).
    pub replicas: Vec<ReplicaTotals>,
    /// Σ receipts the RC acknowledged to the nodes (co-signed and queued).
    pub acked: u64,
    /// Σ fees of those receipts.
    pub acked_fees: u64,
    /// Receipts still waiting on the nodes for an RC acknowledgement, and on the RC for a batch.
    pub unsettled: u64,
    /// Receipts the ledger rejected (RC counter).
    pub rejected: u64,
    /// Whether the node and RC counters cover the whole run (no node or RC restarted): only then
    /// must the ledger's count equal theirs exactly.
    pub counters_complete: bool,
}

/// "Ledger credits sum to fees, every receipt applied once" from outside the ledger: every live
/// replica holds the same state; on each, credits sum to fees; and (when the counters cover the
/// run) the ledger settled exactly the receipts the RC acknowledged to the nodes, with their
/// fees — fewer is an acknowledged receipt lost, more is a receipt applied twice.
pub fn check_settlement(seen: &SettlementSeen) -> Vec<Violation> {
    let inv = Invariant::LedgerBalance;
    let mut out = Vec::new();
    if seen.replicas.is_empty() {
        out.push(v(
            inv,
            "ledger",
            "no ledger replica answered at the end".into(),
            None,
        ));
        return out;
    }
    for r in &seen.replicas {
        if r.credits != r.fees as u128 {
            out.push(v(
                inv,
                &r.name,
                format!(
                    "credits sum to {} but the settled fees are {}",
                    r.credits, r.fees
                ),
                None,
            ));
        }
    }
    let first = &seen.replicas[0];
    for r in &seen.replicas[1..] {
        if (r.receipts, r.fees, &r.state_hash) != (first.receipts, first.fees, &first.state_hash) {
            out.push(v(
                inv,
                &r.name,
                format!(
                    "replicas diverge: {} has {} receipts, {} µ, state {}; {} has {} receipts, \
                     {} µ, state {}",
                    r.name,
                    r.receipts,
                    r.fees,
                    r.state_hash,
                    first.name,
                    first.receipts,
                    first.fees,
                    first.state_hash
                ),
                None,
            ));
        }
    }
    if seen.rejected > 0 {
        out.push(v(
            inv,
            "rc",
            format!("the ledger rejected {} co-signed receipt(s)", seen.rejected),
            None,
        ));
    }
    if seen.unsettled > 0 {
        out.push(v(
            inv,
            "settlement",
            format!(
                "{} receipt(s) never settled (still queued at the end)",
                seen.unsettled
            ),
            None,
        ));
    }
    if seen.counters_complete {
        if first.receipts < seen.acked {
            out.push(v(
                inv,
                "ledger",
                format!(
                    "{} receipt(s) acknowledged to the nodes were never settled ({} acknowledged, \
                     {} settled)",
                    seen.acked - first.receipts,
                    seen.acked,
                    first.receipts
                ),
                None,
            ));
        } else if first.receipts > seen.acked {
            out.push(v(
                inv,
                "ledger",
                format!(
                    "{} settled receipts but only {} acknowledged: a receipt was applied twice",
                    first.receipts, seen.acked
                ),
                None,
            ));
        }
        if first.fees != seen.acked_fees {
            out.push(v(
                inv,
                "ledger",
                format!(
                    "settled fees {} µ differ from the fees of the acknowledged receipts {} µ",
                    first.fees, seen.acked_fees
                ),
                None,
            ));
        }
    }
    out
}

/// One health probe of a process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthProbe {
    /// The process.
    pub process: String,
    /// Whether the launcher believes it is alive (not killed, not exited, not paused).
    pub alive: bool,
    /// HTTP status of `/health`, if it answered.
    pub status: Option<u16>,
    /// The error, if it did not.
    pub error: Option<String>,
    /// When (ms).
    pub t_ms: u64,
}

/// "Every live process answers /health" (with 2xx). A process that exited by itself when it
/// should be alive is the launcher's business and shows up as `alive` with an error.
pub fn check_health(probes: &[HealthProbe]) -> Vec<Violation> {
    probes
        .iter()
        .filter(|p| p.alive && !p.status.is_some_and(|s| (200..300).contains(&s)))
        .map(|p| {
            v(
                Invariant::Health,
                &p.process,
                match (p.status, &p.error) {
                    (Some(s), _) => format!("/health answered {s}"),
                    (None, Some(e)) => format!("/health did not answer: {e}"),
                    (None, None) => "/health did not answer".into(),
                },
                Some(p.t_ms),
            )
        })
        .collect()
}

/// A node declared dead by an RC, and whether the harness had actually killed or paused it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Downing {
    /// The node.
    pub node: String,
    /// When it was declared dead (ms).
    pub t_ms: u64,
}

/// "No healthy node declared dead" (P4): every downing must follow a fault on that node
/// (kill, pause, partition) that was in force within `window_ms` before it.
pub fn check_false_downings(
    downings: &[Downing],
    faults_on_node_ms: &BTreeMap<String, Vec<(u64, u64)>>,
    window_ms: u64,
) -> Vec<Violation> {
    downings
        .iter()
        .filter(|d| {
            !faults_on_node_ms.get(&d.node).is_some_and(|spans| {
                spans
                    .iter()
                    .any(|(from, to)| d.t_ms >= *from && d.t_ms <= to.saturating_add(window_ms))
            })
        })
        .map(|d| {
            v(
                Invariant::NoFalseDowning,
                &d.node,
                format!(
                    "declared dead at t+{}ms with no fault injected on it",
                    d.t_ms
                ),
                Some(d.t_ms),
            )
        })
        .collect()
}

#[cfg(test)]
mod settlement_tests;
#[cfg(test)]
mod tests;

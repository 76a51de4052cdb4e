//! Compute receipts, the RC side: co-signing, batching and settling on the ledger.
//!
//! See [`crate::node::receipts`] for the node side and the whole flow.
//!
//! Before co-signing, the RC checks the amount and the window of every receipt:
//! - the fee must equal the usage's inputs × the node's declared `price_micros_per_input` (from
//!   its join spec), exactly as the node computes it;
//! - the window must be the next unbilled one of that session on that node: it starts no earlier
//!   than the end of the last window this RC co-signed for it (the last window of each session
//!   is tracked, bounded: closed sessions are forgotten, and at most [`MAX_TRACKED_SESSIONS`]
//!   sessions, least recently billed evicted first, none older than [`SESSION_TRACK_TTL`]).
//!
//! Refusals are counted and answered with the reason. The queue of co-signed receipts is bounded
//! (`[settlement] max_pending`): beyond it new receipts are neither accepted nor refused, which
//! the node reads as "retry later" (they stay unacknowledged there and are resent).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opengrid_settlement::batcher::{run_batcher, BatchSink, Batcher, SystemClock};
use opengrid_settlement::ledger::MAX_RECEIPTS_PER_BATCH;
use opengrid_settlement::{
    Batch, Did, Keypair, LedgerClient, LedgerResponse, ReceiptId, SettlementError, SignedReceipt,
};
use serde::{Deserialize, Serialize};

use crate::common::identity::{Identity, NodeId};
use crate::common::receipts::{did, keypair, MAX_RECEIPTS_PER_MESSAGE};
use crate::common::wire::ToNode;
use opengrid_session::HumanDuration;

/// Receipt ids an RC remembers to drop resends it already queued.
const RECENT_IDS: usize = 200_000;
/// Most sessions whose last billed window an RC tracks.
pub const MAX_TRACKED_SESSIONS: usize = 100_000;
/// A session not billed for this long is forgotten.
pub const SESSION_TRACK_TTL: Duration = Duration::from_secs(24 * 3600);
/// How far past the RC's clock a receipt's window may end.
pub const MAX_WINDOW_SKEW_MS: u64 = 5 * 60 * 1000;

/// `[settlement]` section of the RC config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SettlementSection {
    /// Ledger replica addresses (`host:port`). Empty: the RC does not settle, and refuses
    /// receipts (nodes keep them).
    pub ledger: Vec<String>,
    /// One batch proposal per interval.
    pub interval: HumanDuration,
    /// Most receipts per batch; an interval with more is proposed as several parts.
    pub max_per_batch: usize,
    /// Most co-signed receipts waiting for the next interval; beyond it new receipts are left
    /// unacknowledged (the node resends them later).
    pub max_pending: usize,
}

impl Default for SettlementSection {
    fn default() -> Self {
        SettlementSection {
            ledger: Vec::new(),
            interval: HumanDuration::from_secs(3600),
            max_per_batch: 10_000,
            max_pending: 100_000,
        }
    }
}

impl SettlementSection {
    /// Checks the section; `Err((field, reason))`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.interval.0.is_zero() {
            return Err(("settlement.interval", "must be greater than zero".into()));
        }
        if self.max_per_batch == 0 || self.max_per_batch > MAX_RECEIPTS_PER_BATCH {
            return Err((
                "settlement.max_per_batch",
                format!("must be between 1 and {MAX_RECEIPTS_PER_BATCH}"),
            ));
        }
        if self.max_pending == 0 {
            return Err(("settlement.max_pending", "must be at least 1".into()));
        }
        if let Some(a) = self.ledger.iter().find(|a| !a.contains(':')) {
            return Err(("settlement.ledger", format!("{a:?} is not host:port")));
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counters of an RC's settlement.
#[derive(Debug, Default)]
pub struct SettlerCounters {
    /// Receipts co-signed and queued.
    pub co_signed: AtomicU64,
    /// Receipts refused (bad signature, wrong RC, wrong sender, wrong fee, window billed).
    pub refused: AtomicU64,
    /// Of those, refused for a fee that is not inputs × the node's price.
    pub refused_fee: AtomicU64,
    /// Of those, refused for a window that is not the session's next unbilled one.
    pub refused_window: AtomicU64,
    /// Receipts left unacknowledged for the node to resend (queue full, node price unknown).
    pub deferred: AtomicU64,
    /// Batches the ledger answered (applied or replayed).
    pub batches: AtomicU64,
    /// Receipts the ledger settled.
    pub settled: AtomicU64,
    /// Receipts the ledger rejected.
    pub rejected: AtomicU64,
    /// Fees settled, micro-units.
    pub fees_settled_micros: AtomicU64,
}

/// A snapshot of [`SettlerCounters`] plus the queue length.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SettlerStatus {
    /// Receipts co-signed and queued.
    pub co_signed: u64,
    /// Receipts refused.
    pub refused: u64,
    /// Of those, for a wrong fee.
    pub refused_fee: u64,
    /// Of those, for a window already billed.
    pub refused_window: u64,
    /// Receipts left for the node to resend (queue full or node price unknown).
    pub deferred: u64,
    /// Receipts waiting for the next settlement interval.
    pub pending: u64,
    /// Batches answered by the ledger.
    pub batches: u64,
    /// Receipts settled.
    pub settled: u64,
    /// Receipts rejected by the ledger.
    pub rejected: u64,
    /// Fees settled, micro-units.
    pub fees_settled_micros: u64,
}

/// Key prefix of a co-signed receipt in the RC group's replicated queue.
pub const QUEUED: &[u8] = b"q/";

/// The replicated queue's key of a receipt.
pub fn queue_key(id: &ReceiptId) -> Vec<u8> {
    let hex: String = id.0.iter().map(|b| format!("{b:02x}")).collect();
    [QUEUED, hex.as_bytes()].concat()
}

/// Told the ids of every receipt of a batch the ledger answered (settled or rejected: final
/// either way), so a replicated queue can forget them.
pub type OnSettled = Arc<dyn Fn(Vec<ReceiptId>) + Send + Sync>;

struct LedgerSink {
    client: LedgerClient,
    counters: Arc<SettlerCounters>,
    on_settled: Option<OnSettled>,
}

impl BatchSink for LedgerSink {
    async fn submit(&self, batch: &Batch) -> Result<LedgerResponse, SettlementError> {
        let resp = self.client.submit_batch(batch).await?;
        match &resp {
            LedgerResponse::Batch {
                batch_id,
                replayed,
                record,
            } => {
                // A replayed answer carries the record of the first application: count it only
                // if this RC never saw that batch answered (a reply lost before a leader change).
                self.counters.batches.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .settled
                    .fetch_add(u64::from(record.settled), Ordering::Relaxed);
                self.counters
                    .rejected
                    .fetch_add(u64::from(record.rejected_total), Ordering::Relaxed);
                self.counters
                    .fees_settled_micros
                    .fetch_add(record.fees_settled_micros, Ordering::Relaxed);
                tracing::info!(%batch_id, replayed, settled = record.settled, rejected = record.rejected_total, fees = record.fees_settled_micros, "batch settled");
                for r in record.rejected.iter().take(8) {
                    tracing::warn!(rejection = ?r, "ledger rejected a receipt");
                }
                if let Some(f) = &self.on_settled {
                    f(batch
                        .receipts
                        .iter()
                        .map(|r| r.receipt.receipt_id)
                        .collect());
                }
            }
            other => tracing::warn!(response = ?other, "ledger refused a batch"),
        }
        Ok(resp)
    }
}

/// The last window co-signed for one (node, session).
#[derive(Debug, Clone, Copy)]
struct BilledWindow {
    start_ms: u64,
    end_ms: u64,
    touched: std::time::Instant,
    generation: u64,
}

/// Last co-signed window per (node, session), bounded (see the module doc).
#[derive(Debug, Default)]
struct BillingTracker {
    last: HashMap<(NodeId, String), BilledWindow>,
    /// (key, generation) in billing order; stale generations are skipped on eviction.
    order: VecDeque<((NodeId, String), u64)>,
    generation: u64,
}

impl BillingTracker {
    /// Why `(start, end)` is not the next unbilled window of `key`, if it is not.
    fn check(&self, key: &(NodeId, String), start_ms: u64, end_ms: u64) -> Result<(), String> {
        match self.last.get(key) {
            Some(b) if start_ms < b.end_ms || (start_ms, end_ms) == (b.start_ms, b.end_ms) => {
                Err(format!(
                    "window {start_ms}..{end_ms} ms of session {} was already billed (billed until {} ms)",
                    key.1, b.end_ms
                ))
            }
            _ => Ok(()),
        }
    }

    fn record(
        &mut self,
        key: (NodeId, String),
        start_ms: u64,
        end_ms: u64,
        now: std::time::Instant,
    ) {
        self.generation += 1;
        let generation = self.generation;
        self.last.insert(
            key.clone(),
            BilledWindow {
                start_ms,
                end_ms,
                touched: now,
                generation,
            },
        );
        self.order.push_back((key, generation));
        self.evict(now);
    }

    fn forget(&mut self, key: &(NodeId, String)) {
        self.last.remove(key);
    }

    /// Drops entries beyond the cap or the TTL, least recently billed first; every step pops
    /// one queue element, so it ends.
    fn evict(&mut self, now: std::time::Instant) {
        while let Some((key, generation)) = self.order.front().cloned() {
            let live = self.last.get(&key).filter(|b| b.generation == generation);
            let Some(b) = live else {
                self.order.pop_front();
                continue;
            };
            let expired = now.saturating_duration_since(b.touched) > SESSION_TRACK_TTL;
            if !expired && self.last.len() <= MAX_TRACKED_SESSIONS {
                break;
            }
            self.order.pop_front();
            self.last.remove(&key);
        }
    }

    fn len(&self) -> usize {
        self.last.len()
    }
}

/// RC side: checks amounts and windows, verifies, co-signs and batches receipts, and proposes
/// one batch per interval.
pub struct Settler {
    rc: Did,
    /// The RC's identity, which its ledger links prove.
    key: Keypair,
    batcher: Arc<Mutex<Batcher>>,
    billing: Mutex<BillingTracker>,
    recent: Mutex<(HashSet<ReceiptId>, VecDeque<ReceiptId>)>,
    counters: Arc<SettlerCounters>,
    cfg: SettlementSection,
    started: Mutex<Option<tokio::sync::watch::Sender<bool>>>,
    on_settled: std::sync::OnceLock<OnSettled>,
}

impl std::fmt::Debug for Settler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Settler({})", self.rc)
    }
}

impl Settler {
    /// A settler for the RC `identity`; `None` when no ledger is configured.
    pub fn new(cfg: &SettlementSection, identity: &Identity) -> Option<Arc<Self>> {
        if cfg.ledger.is_empty() {
            return None;
        }
        let key = keypair(identity);
        Some(Arc::new(Settler {
            rc: key.did(),
            key: key.clone(),
            batcher: Arc::new(Mutex::new(Batcher::new(key, cfg.max_per_batch))),
            billing: Mutex::new(BillingTracker::default()),
            recent: Mutex::new((HashSet::new(), VecDeque::new())),
            counters: Arc::new(SettlerCounters::default()),
            cfg: cfg.clone(),
            started: Mutex::new(None),
            on_settled: std::sync::OnceLock::new(),
        }))
    }

    /// Starts the settlement loop on the current tokio runtime (once; later calls do nothing).
    /// It stops when the settler is dropped.
    pub fn spawn(&self) {
        let mut started = lock(&self.started);
        if started.is_some() {
            return;
        }
        // The RC connects to the ledger with its own identity key.
        let client = match LedgerClient::with_timeout(
            self.cfg.ledger.clone(),
            // One attempt round per interval at most, never more than 30 s.
            self.cfg
                .interval
                .0
                .clamp(Duration::from_secs(2), Duration::from_secs(30)),
            &self.key,
        ) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, ledger = ?self.cfg.ledger, "settlement not started: bad ledger client");
                return;
            }
        };
        let (tx, rx) = tokio::sync::watch::channel(false);
        *started = Some(tx);
        let sink = LedgerSink {
            client,
            counters: self.counters.clone(),
            on_settled: self.on_settled.get().cloned(),
        };
        tracing::info!(ledger = ?self.cfg.ledger, interval = ?self.cfg.interval.0, "settlement started");
        tokio::spawn(run_batcher(
            self.batcher.clone(),
            Arc::new(SystemClock),
            self.cfg.interval.0,
            sink,
            rx,
        ));
    }

    /// The ledger as the dashboard shows it: this RC's settlement counters, each replica's Raft
    /// state and totals (its own, possibly lagging, view) and the largest balances. Every ledger
    /// call is bounded by `within`; a replica that does not answer is shown with its error.
    pub async fn ledger_view(&self, within: Duration) -> serde_json::Value {
        use serde_json::json;
        let client = match LedgerClient::with_timeout(self.cfg.ledger.clone(), within, &self.key) {
            Ok(c) => c,
            Err(e) => return json!({"error": e.to_string()}),
        };
        let mut replicas = Vec::new();
        for addr in &self.cfg.ledger {
            let r = tokio::time::timeout(within, client.replica_status(addr)).await;
            replicas.push(match r {
                Ok(Ok(st)) => json!({
                    "addr": addr,
                    "id": st.raft.id,
                    "state": st.raft.state,
                    "term": st.raft.current_term,
                    "leader": st.raft.current_leader,
                    "last_log_index": st.raft.last_log_index,
                    "voters": st.raft.voters,
                    "receipts_settled": st.ledger.receipts_settled,
                    "batches": st.ledger.batches,
                    "accounts": st.ledger.accounts,
                    "total_fees_micros": st.ledger.total_fees_micros,
                    "state_hash": st.ledger.state_hash.iter().take(6).map(|b| format!("{b:02x}")).collect::<String>(),
                }),
                Ok(Err(e)) => json!({"addr": addr, "error": e.to_string()}),
                Err(_) => json!({"addr": addr, "error": format!("no answer within {within:?}")}),
            });
        }
        let balances = match tokio::time::timeout(within, client.top_balances(20)).await {
            Ok(Ok(b)) => json!(b
                .into_iter()
                .map(|(a, micros)| json!({"account": a.0, "micros": micros}))
                .collect::<Vec<_>>()),
            Ok(Err(e)) => json!({"error": e.to_string()}),
            Err(_) => json!({"error": format!("no answer within {within:?}")}),
        };
        json!({
            "enabled": true,
            "settler": self.status(),
            "interval_ms": self.cfg.interval.0.as_millis() as u64,
            "replicas": replicas,
            "balances": balances,
        })
    }

    /// Status for operators and tests.
    pub fn status(&self) -> SettlerStatus {
        let c = &self.counters;
        SettlerStatus {
            co_signed: c.co_signed.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            refused_fee: c.refused_fee.load(Ordering::Relaxed),
            refused_window: c.refused_window.load(Ordering::Relaxed),
            deferred: c.deferred.load(Ordering::Relaxed),
            pending: lock(&self.batcher).pending() as u64,
            batches: c.batches.load(Ordering::Relaxed),
            settled: c.settled.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            fees_settled_micros: c.fees_settled_micros.load(Ordering::Relaxed),
        }
    }

    /// Calls `f` with the ids of every batch the ledger answers (before [`Settler::spawn`]).
    pub fn set_on_settled(&self, f: OnSettled) {
        let _ = self.on_settled.set(f);
    }

    /// A new leader of the RC group took office: it settles the receipts its predecessors
    /// co-signed and did not see settled (from the group's replicated queue), first, in their
    /// order, and remembers them — so a node resending one (re-signed for this RC, same id) is
    /// acknowledged without a second copy, and each one's window counts as co-signed.
    pub fn inherit(&self, mut queued: Vec<SignedReceipt>) {
        self.reset();
        // Each session's windows in order (the ledger bills a session's windows in order).
        queued.sort_by_key(|r| (r.receipt.window.start_ms, r.receipt.window.end_ms));
        let now = std::time::Instant::now();
        let n = queued.len();
        for r in queued {
            let id = r.receipt.receipt_id;
            if let Ok(node) = NodeId::parse(&r.receipt.node.to_string()) {
                let key = (node, r.receipt.session_id.clone());
                lock(&self.billing).record(
                    key,
                    r.receipt.window.start_ms,
                    r.receipt.window.end_ms,
                    now,
                );
            }
            self.remember(id);
            lock(&self.batcher).requeue(r);
        }
        if n > 0 {
            tracing::info!(
                receipts = n,
                "inherited the RC group's queue of co-signed receipts"
            );
        }
    }

    /// Forgets the queue and what was co-signed (this replica left office: its successor
    /// settles the replicated queue).
    pub fn reset(&self) {
        lock(&self.batcher).clear();
        *lock(&self.billing) = BillingTracker::default();
        *lock(&self.recent) = (HashSet::new(), VecDeque::new());
    }

    /// Handles [`ToRc::Receipts`] from `from`, whose declared price per input is `price`
    /// (`None`: the node has not joined this RC); returns the acknowledgement to send back.
    /// Receipts in neither list of the acknowledgement are deferred: the node resends them.
    pub fn on_receipts(
        &self,
        from: &NodeId,
        price: Option<u64>,
        receipts: Vec<SignedReceipt>,
    ) -> ToNode {
        self.on_receipts_queued(from, price, receipts).0
    }

    /// [`Settler::on_receipts`], with the receipts it co-signed and queued now (a replica of an
    /// RC group replicates them before the acknowledgement is sent).
    pub fn on_receipts_queued(
        &self,
        from: &NodeId,
        price: Option<u64>,
        receipts: Vec<SignedReceipt>,
    ) -> (ToNode, Vec<SignedReceipt>) {
        let mut queued = Vec::new();
        let sender = did(from);
        let mut accepted = Vec::new();
        let mut refused = Vec::new();
        let (mut refused_fee, mut refused_window, mut deferred) = (0u64, 0u64, 0u64);
        let now_ms = crate::common::wire::unix_ms();
        let mut receipts: Vec<SignedReceipt> = receipts
            .into_iter()
            .take(MAX_RECEIPTS_PER_MESSAGE)
            .collect();
        // A session's windows in order, whatever order the node sent them in.
        receipts.sort_by_key(|r| (r.receipt.window.start_ms, r.receipt.window.end_ms));
        for r in receipts {
            let id = r.receipt.receipt_id;
            if r.receipt.node != sender {
                refused.push((id, format!("sent by {sender}, not by its node")));
                continue;
            }
            if lock(&self.recent).0.contains(&id) {
                // A resend of a receipt already queued (our acknowledgement was lost).
                accepted.push(id);
                continue;
            }
            let Some(price) = price else {
                deferred += 1;
                continue;
            };
            if lock(&self.batcher).pending() >= self.cfg.max_pending {
                deferred += 1;
                continue;
            }
            let rc = &r.receipt;
            let expected = rc.usage.inputs.checked_mul(price);
            if expected != Some(rc.fee_micros) {
                refused_fee += 1;
                refused.push((
                    id,
                    match expected {
                        Some(fee) => format!(
                            "fee {} µ is not {} inputs × {price} µ = {fee} µ",
                            rc.fee_micros, rc.usage.inputs
                        ),
                        None => format!(
                            "{} inputs × {price} µ overflows; fee {} µ refused",
                            rc.usage.inputs, rc.fee_micros
                        ),
                    },
                ));
                continue;
            }
            if rc.window.start_ms > rc.window.end_ms
                || rc.window.end_ms > now_ms.saturating_add(MAX_WINDOW_SKEW_MS)
            {
                refused_window += 1;
                refused.push((
                    id,
                    format!(
                        "window {}..{} ms is invalid or ends in the future",
                        rc.window.start_ms, rc.window.end_ms
                    ),
                ));
                continue;
            }
            let key = (*from, rc.session_id.clone());
            let (start_ms, end_ms) = (rc.window.start_ms, rc.window.end_ms);
            if let Err(why) = lock(&self.billing).check(&key, start_ms, end_ms) {
                refused_window += 1;
                refused.push((id, why));
                continue;
            }
            match lock(&self.batcher).add_signed(r) {
                Ok(signed) => {
                    queued.push(signed);
                    self.remember(id);
                    lock(&self.billing).record(key, start_ms, end_ms, std::time::Instant::now());
                    accepted.push(id);
                }
                Err(e) => refused.push((id, e.to_string())),
            }
        }
        let c = &self.counters;
        c.co_signed
            .fetch_add(accepted.len() as u64, Ordering::Relaxed);
        c.refused.fetch_add(refused.len() as u64, Ordering::Relaxed);
        c.refused_fee.fetch_add(refused_fee, Ordering::Relaxed);
        c.refused_window
            .fetch_add(refused_window, Ordering::Relaxed);
        c.deferred.fetch_add(deferred, Ordering::Relaxed);
        if !refused.is_empty() {
            tracing::warn!(node = %from, refused = refused.len(), first = %refused[0].1, "receipts refused");
        }
        if deferred > 0 {
            tracing::info!(node = %from, deferred, "receipts deferred (queue full or node price unknown); the node resends them");
        }
        (ToNode::ReceiptsAck { accepted, refused }, queued)
    }

    /// A session closed on `node`: its billing window is no longer tracked.
    pub fn session_closed(&self, node: &NodeId, session: &str) {
        lock(&self.billing).forget(&(*node, session.to_string()));
    }

    /// Sessions whose last billed window is tracked (bounded by [`MAX_TRACKED_SESSIONS`]).
    pub fn tracked_sessions(&self) -> usize {
        lock(&self.billing).len()
    }

    fn remember(&self, id: ReceiptId) {
        let mut g = lock(&self.recent);
        let (set, order) = &mut *g;
        if set.insert(id) {
            order.push_back(id);
        }
        while order.len() > RECENT_IDS {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
    }
}

#[cfg(test)]
#[path = "settlement_tests.rs"]
mod tests;

#[cfg(test)]
impl Settler {
    /// Cuts the queued receipts into batches now (what the interval timer does).
    pub(crate) fn cut_now(&self) -> Vec<Batch> {
        lock(&self.batcher).cut(crate::common::wire::unix_ms())
    }
}

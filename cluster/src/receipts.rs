//! Compute receipts between a node, its RC and the settlement ledger.
//!
//! **Plane: control.** Everything here runs on the control-plane runtimes of the node and the RC;
//! it only reads the sessions' lock-free usage counters.
//!
//! - **Node** ([`ReceiptEmitter`]): every usage window (`[receipts] window`, 60 s by default) the
//!   node reads each live session's usage ([`opengrid_actors::Usage`]), and for every session that
//!   did work in the window builds one [`Receipt`] (fee = inputs × the node's
//!   `price_micros_per_input`), signs it with the node's ed25519 identity and sends it to its RC
//!   over the control plane ([`ToRc::Receipts`]). Receipts stay queued on the node until the RC
//!   acknowledges them ([`ToNode::ReceiptsAck`]); unacknowledged ones are re-sent every heartbeat
//!   tick (the ledger applies each receipt id and node nonce at most once, so a resend never
//!   double-counts). Nonces are `max(previous + 1, unix µs)`, unique across restarts.
//! - **RC** ([`Settler`]): checks that the sender is the receipt's node and that the receipt names
//!   this RC, verifies the node signature, co-signs, and queues the receipt in a
//!   [`opengrid_settlement::batcher::Batcher`]. Every settlement interval (`[settlement] interval`,
//!   hourly by default, seconds in tests) the queued receipts are cut into batches and proposed to
//!   the ledger replicas (`[settlement] ledger`) with [`LedgerClient`]. A batch whose submission
//!   fails is retried with the same bytes, hence the same batch id, so a retry after a leader
//!   change is answered `replayed` instead of being applied twice.
//!
//! Node keys and split policies are registered on the ledger by an operator
//! (`opengrid ledger register-node --key-file <node data_dir>/identity.key …`), never by the RC.
//!
//! Known limits: usage of a session closed between two window ends is not receipted; receipts
//! acknowledged by an RC that dies before the next settlement interval are lost with it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opengrid_actors::Usage as SessionUsage;
use opengrid_session::SessionId;
use opengrid_settlement::batcher::{run_batcher, BatchSink, Batcher, SystemClock};
use opengrid_settlement::ledger::MAX_RECEIPTS_PER_BATCH;
use opengrid_settlement::{
    Batch, Did, Keypair, LedgerClient, LedgerResponse, Receipt, ReceiptId, SettlementError,
    SignedReceipt, Usage, UsageWindow,
};
use serde::{Deserialize, Serialize};

use crate::identity::{Identity, NodeId};
use crate::wire::{ToNode, ToRc};
use opengrid_session::HumanDuration;

/// Most receipts in one control-plane message (keeps it far below [`crate::wire::MAX_WIRE_BYTES`];
/// a receipt is ~300 bytes encoded).
pub const MAX_RECEIPTS_PER_MESSAGE: usize = 512;
/// Most receipts a node keeps waiting for an acknowledgement; the oldest are dropped beyond it
/// (logged), so an unreachable RC cannot grow a node's memory without bound.
pub const MAX_UNACKED_RECEIPTS: usize = 100_000;
/// Receipt ids an RC remembers to drop resends it already queued.
const RECENT_IDS: usize = 200_000;

/// `[receipts]` section of the node config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiptSection {
    /// Usage window: one receipt per session per window in which the session did work.
    pub window: HumanDuration,
}

impl Default for ReceiptSection {
    fn default() -> Self {
        ReceiptSection {
            window: HumanDuration::from_secs(60),
        }
    }
}

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
}

impl Default for SettlementSection {
    fn default() -> Self {
        SettlementSection {
            ledger: Vec::new(),
            interval: HumanDuration::from_secs(3600),
            max_per_batch: 10_000,
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
        if let Some(a) = self.ledger.iter().find(|a| !a.contains(':')) {
            return Err(("settlement.ledger", format!("{a:?} is not host:port")));
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The settlement keypair of a node or RC identity (same ed25519 key).
pub fn keypair(identity: &Identity) -> Keypair {
    Keypair::from_seed(identity.signing_key().to_bytes())
}

/// The settlement DID of a node id.
pub fn did(id: &NodeId) -> Did {
    Did::parse(&id.did()).unwrap_or_else(|_| unreachable!("NodeId::did is a valid did:mycel"))
}

/// Settlement usage of a session's metered usage in one window.
pub fn settlement_usage(u: &SessionUsage) -> Usage {
    Usage {
        inputs: u.inputs,
        cpu_ms: (u.handler_busy_us.saturating_add(u.inference_us)) / 1000,
        bytes: u.bytes_in.saturating_add(u.bytes_out),
        tokens: None,
    }
}

struct EmitterState {
    rc: Option<Did>,
    window_start_ms: u64,
    window_started: Instant,
    /// Usage of each live session at the start of the current window.
    last: HashMap<SessionId, SessionUsage>,
    unacked: BTreeMap<ReceiptId, SignedReceipt>,
    /// Order of `unacked` (oldest first), for the bound.
    order: VecDeque<ReceiptId>,
    last_nonce: u64,
}

/// Counters of a node's receipts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EmitterCounters {
    /// Receipts signed.
    pub signed: u64,
    /// Receipts the RC acknowledged (co-signed and queued).
    pub acked: u64,
    /// Receipts the RC refused (with a reason, logged).
    pub refused: u64,
    /// Receipts waiting for an acknowledgement.
    pub unacked: u64,
    /// Σ fees of the receipts the RC acknowledged, micro-units.
    pub acked_fees_micros: u64,
}

/// Node side: cuts one signed receipt per session per usage window and keeps it until the RC
/// acknowledges it.
pub struct ReceiptEmitter {
    key: Keypair,
    node: NodeId,
    window: Duration,
    price_micros_per_input: u64,
    state: Mutex<EmitterState>,
    signed: AtomicU64,
    acked: AtomicU64,
    acked_fees: AtomicU64,
    refused: AtomicU64,
}

impl ReceiptEmitter {
    /// An emitter signing with `identity`, cutting windows of `window`.
    pub fn new(identity: &Identity, window: Duration, price_micros_per_input: u64) -> Self {
        ReceiptEmitter {
            key: keypair(identity),
            node: identity.id(),
            window: window.max(Duration::from_millis(10)),
            price_micros_per_input,
            state: Mutex::new(EmitterState {
                rc: None,
                window_start_ms: crate::wire::unix_ms(),
                window_started: Instant::now(),
                last: HashMap::new(),
                unacked: BTreeMap::new(),
                order: VecDeque::new(),
                last_nonce: 0,
            }),
            signed: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            acked_fees: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// The RC that routes this node's sessions (from the join acknowledgement).
    pub fn set_rc(&self, rc: &NodeId) {
        lock(&self.state).rc = Some(did(rc));
    }

    /// Counters.
    pub fn counters(&self) -> EmitterCounters {
        EmitterCounters {
            signed: self.signed.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            unacked: lock(&self.state).unacked.len() as u64,
            acked_fees_micros: self.acked_fees.load(Ordering::Relaxed),
        }
    }

    /// Heartbeat-tick work: when the window has ended, receipt every session that did work in it
    /// (`sessions` = live sessions and their usage now); then return the messages to send to the
    /// RC (every receipt not yet acknowledged, in bounded chunks).
    pub fn tick(
        &self,
        now: Instant,
        sessions: impl IntoIterator<Item = (SessionId, SessionUsage)>,
    ) -> Vec<ToRc> {
        let mut st = lock(&self.state);
        let Some(rc) = st.rc.clone() else {
            return Vec::new();
        };
        if now.saturating_duration_since(st.window_started) >= self.window {
            let end_ms = crate::wire::unix_ms().max(st.window_start_ms);
            let window = UsageWindow {
                start_ms: st.window_start_ms,
                end_ms,
            };
            let mut next_last = HashMap::new();
            for (sid, usage) in sessions {
                let before = st.last.get(&sid).copied().unwrap_or_default();
                let delta = usage.since(&before);
                next_last.insert(sid.clone(), usage);
                if delta.inputs == 0 && delta.bytes_in == 0 && delta.handler_busy_us == 0 {
                    continue;
                }
                let nonce = st
                    .last_nonce
                    .saturating_add(1)
                    .max(crate::wire::unix_ms().saturating_mul(1000));
                st.last_nonce = nonce;
                let receipt = Receipt {
                    receipt_id: ReceiptId::random(),
                    session_id: sid.to_string(),
                    node: self.key.did(),
                    rc: rc.clone(),
                    window,
                    usage: settlement_usage(&delta),
                    fee_micros: delta.inputs.saturating_mul(self.price_micros_per_input),
                    nonce,
                };
                let signed = receipt.sign(&self.key);
                let id = signed.receipt.receipt_id;
                st.unacked.insert(id, signed);
                st.order.push_back(id);
                self.signed.fetch_add(1, Ordering::Relaxed);
            }
            st.last = next_last;
            st.window_start_ms = end_ms;
            st.window_started = now;
            while st.unacked.len() > MAX_UNACKED_RECEIPTS {
                match st.order.pop_front() {
                    Some(old) => {
                        if st.unacked.remove(&old).is_some() {
                            tracing::warn!(receipt = %old, "dropping an unacknowledged receipt (queue full)");
                        }
                    }
                    None => break,
                }
            }
        }
        let pending: Vec<SignedReceipt> = st.unacked.values().cloned().collect();
        drop(st);
        pending
            .chunks(MAX_RECEIPTS_PER_MESSAGE)
            .map(|c| ToRc::Receipts {
                node: self.node,
                receipts: c.to_vec(),
            })
            .collect()
    }

    /// The RC's acknowledgement: accepted receipts are done, refused ones are dropped (logged).
    pub fn on_ack(&self, accepted: &[ReceiptId], refused: &[(ReceiptId, String)]) {
        let mut st = lock(&self.state);
        for id in accepted {
            if let Some(r) = st.unacked.remove(id) {
                self.acked.fetch_add(1, Ordering::Relaxed);
                self.acked_fees
                    .fetch_add(r.receipt.fee_micros, Ordering::Relaxed);
            }
        }
        for (id, why) in refused {
            if st.unacked.remove(id).is_some() {
                self.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(receipt = %id, reason = %why, "RC refused a receipt");
            }
        }
        if st.order.len() > 2 * st.unacked.len() + 1024 {
            let keep: HashSet<ReceiptId> = st.unacked.keys().copied().collect();
            st.order.retain(|id| keep.contains(id));
        }
    }
}

/// Counters of an RC's settlement.
#[derive(Debug, Default)]
pub struct SettlerCounters {
    /// Receipts co-signed and queued.
    pub co_signed: AtomicU64,
    /// Receipts refused (bad signature, wrong RC, wrong sender).
    pub refused: AtomicU64,
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

struct LedgerSink {
    client: LedgerClient,
    counters: Arc<SettlerCounters>,
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
                    .fetch_add(record.rejected.len() as u64, Ordering::Relaxed);
                self.counters
                    .fees_settled_micros
                    .fetch_add(record.fees_settled_micros, Ordering::Relaxed);
                tracing::info!(%batch_id, replayed, settled = record.settled, rejected = record.rejected.len(), fees = record.fees_settled_micros, "batch settled");
                for r in record.rejected.iter().take(8) {
                    tracing::warn!(rejection = ?r, "ledger rejected a receipt");
                }
            }
            other => tracing::warn!(response = ?other, "ledger refused a batch"),
        }
        Ok(resp)
    }
}

/// RC side: verifies, co-signs and batches receipts, and proposes one batch per interval.
pub struct Settler {
    rc: Did,
    batcher: Arc<Mutex<Batcher>>,
    recent: Mutex<(HashSet<ReceiptId>, VecDeque<ReceiptId>)>,
    counters: Arc<SettlerCounters>,
    cfg: SettlementSection,
    started: Mutex<Option<tokio::sync::watch::Sender<bool>>>,
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
            batcher: Arc::new(Mutex::new(Batcher::new(key, cfg.max_per_batch))),
            recent: Mutex::new((HashSet::new(), VecDeque::new())),
            counters: Arc::new(SettlerCounters::default()),
            cfg: cfg.clone(),
            started: Mutex::new(None),
        }))
    }

    /// Starts the settlement loop on the current tokio runtime (once; later calls do nothing).
    /// It stops when the settler is dropped.
    pub fn spawn(&self) {
        let mut started = lock(&self.started);
        if started.is_some() {
            return;
        }
        let (tx, rx) = tokio::sync::watch::channel(false);
        *started = Some(tx);
        let sink = LedgerSink {
            client: LedgerClient::with_timeout(
                self.cfg.ledger.clone(),
                // One attempt round per interval at most, never more than 30 s.
                self.cfg
                    .interval
                    .0
                    .clamp(Duration::from_secs(2), Duration::from_secs(30)),
            ),
            counters: self.counters.clone(),
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

    /// Status for operators and tests.
    pub fn status(&self) -> SettlerStatus {
        let c = &self.counters;
        SettlerStatus {
            co_signed: c.co_signed.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            pending: lock(&self.batcher).pending() as u64,
            batches: c.batches.load(Ordering::Relaxed),
            settled: c.settled.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            fees_settled_micros: c.fees_settled_micros.load(Ordering::Relaxed),
        }
    }

    /// Handles [`ToRc::Receipts`] from `from`; returns the acknowledgement to send back.
    pub fn on_receipts(&self, from: &NodeId, receipts: Vec<SignedReceipt>) -> ToNode {
        let sender = did(from);
        let mut accepted = Vec::new();
        let mut refused = Vec::new();
        for r in receipts.into_iter().take(MAX_RECEIPTS_PER_MESSAGE) {
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
            match lock(&self.batcher).add(r) {
                Ok(()) => {
                    self.remember(id);
                    accepted.push(id);
                }
                Err(e) => refused.push((id, e.to_string())),
            }
        }
        self.counters
            .co_signed
            .fetch_add(accepted.len() as u64, Ordering::Relaxed);
        self.counters
            .refused
            .fetch_add(refused.len() as u64, Ordering::Relaxed);
        if !refused.is_empty() {
            tracing::warn!(node = %from, refused = refused.len(), first = %refused[0].1, "receipts refused");
        }
        ToNode::ReceiptsAck { accepted, refused }
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
mod tests {
    use super::*;

    fn usage(inputs: u64) -> SessionUsage {
        SessionUsage {
            inputs,
            bytes_in: inputs * 10,
            handler_busy_us: inputs * 1500,
            ..Default::default()
        }
    }

    fn receipts_of(msgs: Vec<ToRc>) -> Vec<SignedReceipt> {
        msgs.into_iter()
            .flat_map(|m| match m {
                ToRc::Receipts { receipts, .. } => receipts,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn one_receipt_per_active_session_per_window_cosigned_by_the_rc() {
        let node = Identity::generate();
        let rc = Identity::generate();
        let e = ReceiptEmitter::new(&node, Duration::from_millis(10), 7);
        let s1 = SessionId::random();
        let s2 = SessionId::random();
        let t0 = Instant::now();
        // No RC known yet: nothing is cut.
        assert!(e.tick(t0, vec![(s1.clone(), usage(3))]).is_empty());
        e.set_rc(&rc.id());
        // Window not over yet: nothing new.
        assert!(e.tick(t0, vec![(s1.clone(), usage(3))]).is_empty());
        let t1 = t0 + Duration::from_millis(20);
        let rs = receipts_of(e.tick(t1, vec![(s1.clone(), usage(3)), (s2.clone(), usage(0))]));
        assert_eq!(rs.len(), 1, "idle sessions get no receipt");
        assert_eq!(rs[0].receipt.fee_micros, 21);
        assert_eq!(rs[0].receipt.usage.inputs, 3);
        assert_eq!(rs[0].receipt.usage.cpu_ms, 4);
        // Unacknowledged: resent at the next tick, with nothing new in the window.
        let t2 = t1 + Duration::from_millis(20);
        let again = receipts_of(e.tick(t2, vec![(s1.clone(), usage(3))]));
        assert_eq!(again, rs);

        let settler = Settler::new(
            &SettlementSection {
                ledger: vec!["127.0.0.1:1".into()],
                ..Default::default()
            },
            &rc,
        )
        .unwrap();
        // Only the node itself may hand in its receipts.
        let ToNode::ReceiptsAck { accepted, refused } =
            settler.on_receipts(&Identity::generate().id(), again.clone())
        else {
            panic!()
        };
        assert!(accepted.is_empty());
        assert_eq!(refused.len(), 1);
        // A tampered receipt is refused, a good one co-signed.
        let mut bad = again[0].clone();
        bad.receipt.fee_micros += 1;
        let ToNode::ReceiptsAck { accepted, refused } =
            settler.on_receipts(&node.id(), vec![bad, again[0].clone()])
        else {
            panic!()
        };
        assert_eq!(accepted, vec![again[0].receipt.receipt_id]);
        assert_eq!(refused.len(), 1);
        // A resend after a lost ack is acknowledged again but queued once.
        settler.on_receipts(&node.id(), again.clone());
        assert_eq!(settler.status().pending, 1);
        let batch = lock(&settler.batcher).cut(crate::wire::unix_ms());
        batch[0].receipts[0]
            .verify(
                &did(&node.id()).verifying_key(),
                &did(&rc.id()).verifying_key(),
            )
            .unwrap();
        e.on_ack(&accepted, &[]);
        assert_eq!(e.counters().unacked, 0);
        assert_eq!(e.counters().acked, 1);
        // Next window: only the new usage is receipted, with a fresh, larger nonce.
        let t3 = t2 + Duration::from_millis(20);
        let next = receipts_of(e.tick(t3, vec![(s1, usage(5))]));
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].receipt.usage.inputs, 2);
        assert!(next[0].receipt.nonce > rs[0].receipt.nonce);
        assert!(next[0].receipt.window.start_ms >= rs[0].receipt.window.end_ms);
    }

    #[test]
    fn settlement_section_validation_names_the_field() {
        let mut s = SettlementSection::default();
        assert!(s.validate().is_ok());
        s.interval = HumanDuration::from_millis(0);
        assert_eq!(s.validate().unwrap_err().0, "settlement.interval");
        s = SettlementSection {
            ledger: vec!["nohost".into()],
            ..Default::default()
        };
        assert_eq!(s.validate().unwrap_err().0, "settlement.ledger");
    }
}

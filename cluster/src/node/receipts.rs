//! Compute receipts, the node side: signing one receipt per session per usage window.
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
//!   tick, oldest first (the ledger applies each receipt id and node nonce at most once, so a
//!   resend never double-counts). An acknowledgement that neither accepts nor refuses a receipt
//!   (the RC's queue is full) leaves it queued here for a later resend. Nonces are `max(previous + 1, unix µs)`, unique across restarts.
//! - **RC** ([`Settler`]): checks that the sender is the receipt's node and that the receipt names
//!   this RC, that the fee is the usage's inputs × the node's declared price and that the window
//!   is the session's next unbilled one, verifies the node signature, co-signs, and queues the receipt in a
//!   [`opengrid_settlement::batcher::Batcher`]. Every settlement interval (`[settlement] interval`,
//!   hourly by default, seconds in tests) the queued receipts are cut into batches and proposed to
//!   the ledger replicas (`[settlement] ledger`) with [`LedgerClient`]. A batch whose submission
//!   fails is retried with the same bytes, hence the same batch id, so a retry after a leader
//!   change is answered `replayed` instead of being applied twice.
//!
//! Node keys and split policies are registered on the ledger by an operator
//! (`opengrid ledger register-node --key-file <node data_dir>/identity.key …`), never by the RC.
//!
//! A session that leaves the node between two window ends — closed, or handed over to another
//! node — is receipted at once for its usage since the last window end
//! ([`ReceiptEmitter::close_window`]), so its last window is billed too.
//!
//! Known limit: receipts acknowledged by an RC that dies before the next settlement interval are
//! lost with it (ADR 0037 makes the queue replicated).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use opengrid_actors::Usage as SessionUsage;
use opengrid_session::SessionId;
use opengrid_settlement::{Did, Keypair, Receipt, ReceiptId, SignedReceipt, Usage, UsageWindow};
use serde::{Deserialize, Serialize};

use crate::common::identity::{Identity, NodeId};
use crate::common::receipts::{did, keypair, MAX_RECEIPTS_PER_MESSAGE};
use crate::common::wire::ToRc;
use opengrid_session::HumanDuration;

/// Most receipts a node keeps waiting for an acknowledgement; the oldest are dropped beyond it
/// (logged), so an unreachable RC cannot grow a node's memory without bound.
pub const MAX_UNACKED_RECEIPTS: usize = 100_000;

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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
    /// Sessions receipted when they left ([`ReceiptEmitter::close_window`]): not receipted again
    /// while the host still lists them (a moved session stays to relay).
    closed: HashSet<SessionId>,
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

/// The end of a window that started at `start_ms`: now, and never before `start_ms + 1` — a
/// window cut in the same millisecond as the one before it is not the same window (the RC would
/// refuse it as already billed).
fn window_end(start_ms: u64) -> u64 {
    crate::common::wire::unix_ms().max(start_ms.saturating_add(1))
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
                window_start_ms: crate::common::wire::unix_ms(),
                window_started: Instant::now(),
                last: HashMap::new(),
                closed: HashSet::new(),
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
        let rc = did(rc);
        let mut st = lock(&self.state);
        if st.rc.as_ref() != Some(&rc) {
            // Another RC of the colony's group leads now: the receipts no RC acknowledged yet
            // are signed again for it, with the same ids, windows and nonces. If the old leader
            // had queued one (its replicated queue survives it), the new leader knows the id and
            // acknowledges it without a second copy; the ledger settles each id once.
            let mut resigned = 0;
            for r in st.unacked.values_mut() {
                if r.receipt.rc != rc {
                    let mut receipt = r.receipt.clone();
                    receipt.rc = rc.clone();
                    *r = receipt.sign(&self.key);
                    resigned += 1;
                }
            }
            if resigned > 0 {
                tracing::info!(receipts = resigned, rc = %rc, "unacknowledged receipts signed again for the RC that leads now");
            }
        }
        st.rc = Some(rc);
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
            let end_ms = window_end(st.window_start_ms);
            let window = UsageWindow {
                start_ms: st.window_start_ms,
                end_ms,
            };
            let mut next_last = HashMap::new();
            let mut still_closed = HashSet::new();
            for (sid, usage) in sessions {
                if st.closed.contains(&sid) {
                    still_closed.insert(sid);
                    continue;
                }
                let before = st.last.get(&sid).copied().unwrap_or_default();
                next_last.insert(sid.clone(), usage);
                self.cut(&mut st, &rc, &sid, window, usage.since(&before));
            }
            st.last = next_last;
            st.closed = still_closed;
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
        // In the order they were cut, so every session's windows reach the RC in order (the RC
        // co-signs only a session's next unbilled window).
        let pending: Vec<SignedReceipt> = st
            .order
            .iter()
            .filter_map(|id| st.unacked.get(id))
            .cloned()
            .collect();
        drop(st);
        pending
            .chunks(MAX_RECEIPTS_PER_MESSAGE)
            .map(|c| ToRc::Receipts {
                node: self.node,
                receipts: c.to_vec(),
            })
            .collect()
    }

    /// Session `sid` left this node (closed, or handed over): receipt its usage since the last
    /// window end now (`usage`: its counters as it left), over the window from that end until now.
    /// Later ticks skip it while the host still lists it.
    pub fn close_window(&self, sid: &SessionId, usage: SessionUsage) {
        let mut st = lock(&self.state);
        if st.closed.contains(sid) {
            return;
        }
        st.closed.insert(sid.clone());
        let before = st.last.remove(sid).unwrap_or_default();
        let Some(rc) = st.rc.clone() else {
            return;
        };
        let window = UsageWindow {
            start_ms: st.window_start_ms,
            end_ms: window_end(st.window_start_ms),
        };
        self.cut(&mut st, &rc, sid, window, usage.since(&before));
    }

    /// Signs and queues the receipt of `delta` (nothing when the session did no work).
    fn cut(
        &self,
        st: &mut EmitterState,
        rc: &Did,
        sid: &SessionId,
        window: UsageWindow,
        delta: SessionUsage,
    ) {
        if delta.inputs == 0 && delta.bytes_in == 0 && delta.handler_busy_us == 0 {
            return;
        }
        let nonce = st
            .last_nonce
            .saturating_add(1)
            .max(crate::common::wire::unix_ms().saturating_mul(1000));
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

    /// The RC's acknowledgement: accepted receipts are done, refused ones are dropped (logged);
    /// receipts in neither list (the RC's queue was full) stay and are resent at the next tick.
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

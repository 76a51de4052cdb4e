//! The RC side of settlement: verify a node-signed receipt, co-sign it, collect co-signed
//! receipts, and cut one batch per settlement interval.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::SettlementError;
use crate::keys::Keypair;
use crate::ledger::{Batch, LedgerResponse, MAX_RECEIPTS_PER_BATCH};
use crate::receipt::{SignedReceipt, VerifyError};

/// Milliseconds since the Unix epoch. Batches are stamped from a clock so tests drive time.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock set by hand (tests).
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    pub fn new(ms: u64) -> Self {
        Self(ms.into())
    }
    pub fn set(&self, ms: u64) {
        self.0.store(ms, std::sync::atomic::Ordering::SeqCst)
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Why the RC refuses to co-sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoSignError {
    #[error("receipt names RC {0}, not this RC")]
    NotRoutedHere(String),
    #[error(transparent)]
    Verify(#[from] VerifyError),
}

/// Collects co-signed receipts and cuts batches.
pub struct Batcher {
    rc: Keypair,
    pending: Vec<SignedReceipt>,
    max_per_batch: usize,
}

impl Batcher {
    /// A batcher for the RC holding `rc`; batches hold at most `max_per_batch` receipts.
    pub fn new(rc: Keypair, max_per_batch: usize) -> Self {
        Self {
            rc,
            pending: Vec::new(),
            max_per_batch: max_per_batch.clamp(1, MAX_RECEIPTS_PER_BATCH),
        }
    }

    /// Verify the node's signature (key from the node DID) and co-sign.
    pub fn co_sign(&self, receipt: SignedReceipt) -> Result<SignedReceipt, CoSignError> {
        if receipt.receipt.rc != self.rc.did() {
            return Err(CoSignError::NotRoutedHere(receipt.receipt.rc.to_string()));
        }
        receipt.verify_node(&receipt.receipt.node.verifying_key())?;
        Ok(receipt.co_sign(&self.rc))
    }

    /// Co-sign and queue a node-signed receipt for the next batch.
    pub fn add(&mut self, receipt: SignedReceipt) -> Result<(), CoSignError> {
        self.add_signed(receipt).map(|_| ())
    }

    /// [`Batcher::add`], returning the co-signed receipt queued (to be kept durably elsewhere,
    /// e.g. by a replicated log, before the node is told it was accepted).
    pub fn add_signed(&mut self, receipt: SignedReceipt) -> Result<SignedReceipt, CoSignError> {
        let signed = self.co_sign(receipt)?;
        self.pending.push(signed.clone());
        Ok(signed)
    }

    /// Queues a receipt another coordinator already co-signed (a predecessor in a replicated
    /// group, whose queue this one inherited). The ledger checks both signatures.
    pub fn requeue(&mut self, co_signed: SignedReceipt) {
        self.pending.push(co_signed);
    }

    /// Drops everything pending (this coordinator stopped settling; a successor has the queue).
    pub fn clear(&mut self) {
        self.pending.clear();
    }

    /// Receipts waiting for the next cut.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Cut everything pending into batches stamped `now_ms` (empty when nothing is pending).
    pub fn cut(&mut self, now_ms: u64) -> Vec<Batch> {
        let pending = std::mem::take(&mut self.pending);
        pending
            .chunks(self.max_per_batch)
            .enumerate()
            .map(|(part, c)| Batch {
                rc: self.rc.did(),
                proposed_at_ms: now_ms,
                part: part as u32,
                receipts: c.to_vec(),
            })
            .collect()
    }
}

/// Where batches go (the ledger through Raft, in production).
pub trait BatchSink: Send + Sync {
    /// Submit one batch; implementations retry transient failures with the same batch (same id).
    fn submit(
        &self,
        batch: &Batch,
    ) -> impl std::future::Future<Output = Result<LedgerResponse, SettlementError>> + Send;
}

/// Cut and submit one batch per `interval` until `stop` fires; a batch that fails to submit is
/// retried (same bytes, same id) at the next tick before newer receipts are cut.
pub async fn run_batcher<S: BatchSink, C: Clock>(
    batcher: Arc<Mutex<Batcher>>,
    clock: Arc<C>,
    interval: Duration,
    sink: S,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut unsent: Vec<Batch> = Vec::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = ticker.tick() => {}
        }
        if unsent.is_empty() {
            let now = clock.now_ms();
            unsent = batcher.lock().unwrap_or_else(|p| p.into_inner()).cut(now);
        }
        while let Some(batch) = unsent.first() {
            match sink.submit(batch).await {
                Ok(resp) => {
                    tracing::info!(batch_id = %batch.id(), ?resp, "batch submitted");
                    unsent.remove(0);
                }
                Err(e) => {
                    tracing::warn!(batch_id = %batch.id(), error = %e, "batch submit failed; will retry");
                    break;
                }
            }
        }
    }
}

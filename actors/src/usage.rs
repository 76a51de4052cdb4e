//! Per-session usage metering; settlement receipts are built from these figures.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

/// Live counters of one session (lock-free, updated by the session actor).
#[derive(Debug, Default)]
pub struct UsageCounters {
    pub(crate) inputs: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) handler_busy_ns: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    pub(crate) checkpoints: AtomicU64,
    pub(crate) checkpoint_bytes: AtomicU64,
    pub(crate) restarts: AtomicU64,
    pub(crate) inference_us: AtomicU64,
    pub(crate) inference_calls: AtomicU64,
}

/// A point-in-time copy of a session's usage.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Inputs processed (duplicates excluded).
    pub inputs: u64,
    /// Duplicate inputs dropped.
    pub duplicates: u64,
    /// Time spent inside handler polls, in microseconds (CPU time for non-blocking handlers).
    pub handler_busy_us: u64,
    /// Input bytes received over the wire.
    pub bytes_in: u64,
    /// Output bytes sent over the wire.
    pub bytes_out: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Bytes of checkpoints written.
    pub checkpoint_bytes: u64,
    /// Supervisor restarts.
    pub restarts: u64,
    /// Inference time attributed to the session, in microseconds.
    pub inference_us: u64,
    /// Inference calls made by the session.
    pub inference_calls: u64,
}

impl UsageCounters {
    /// Copies the counters.
    pub fn snapshot(&self) -> Usage {
        Usage {
            inputs: self.inputs.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            handler_busy_us: self.handler_busy_ns.load(Relaxed) / 1000,
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            checkpoints: self.checkpoints.load(Relaxed),
            checkpoint_bytes: self.checkpoint_bytes.load(Relaxed),
            restarts: self.restarts.load(Relaxed),
            inference_us: self.inference_us.load(Relaxed),
            inference_calls: self.inference_calls.load(Relaxed),
        }
    }

    /// Records wire bytes of one exchange (called by the client API layer).
    pub fn record_wire(&self, bytes_in: u64, bytes_out: u64) {
        self.bytes_in.fetch_add(bytes_in, Relaxed);
        self.bytes_out.fetch_add(bytes_out, Relaxed);
    }

    /// Records one inference call attributed to the session.
    pub fn record_inference(&self, micros: u64) {
        self.inference_us.fetch_add(micros, Relaxed);
        self.inference_calls.fetch_add(1, Relaxed);
    }
}

impl Usage {
    /// Usage accrued between `earlier` and `self` (for per-window receipts).
    pub fn since(&self, earlier: &Usage) -> Usage {
        Usage {
            inputs: self.inputs.saturating_sub(earlier.inputs),
            duplicates: self.duplicates.saturating_sub(earlier.duplicates),
            handler_busy_us: self.handler_busy_us.saturating_sub(earlier.handler_busy_us),
            bytes_in: self.bytes_in.saturating_sub(earlier.bytes_in),
            bytes_out: self.bytes_out.saturating_sub(earlier.bytes_out),
            checkpoints: self.checkpoints.saturating_sub(earlier.checkpoints),
            checkpoint_bytes: self
                .checkpoint_bytes
                .saturating_sub(earlier.checkpoint_bytes),
            restarts: self.restarts.saturating_sub(earlier.restarts),
            inference_us: self.inference_us.saturating_sub(earlier.inference_us),
            inference_calls: self.inference_calls.saturating_sub(earlier.inference_calls),
        }
    }
}

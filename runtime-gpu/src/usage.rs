//! Metering: what each request cost, attributed to the caller (a session), for receipts.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::device::ExecutionProvider;
use crate::model::ModelId;

/// Who a request is billed to; usually the session id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub struct CallerId(Arc<str>);

impl From<String> for CallerId {
    fn from(s: String) -> Self {
        Self(s.into())
    }
}

impl From<CallerId> for String {
    fn from(c: CallerId) -> String {
        c.0.to_string()
    }
}

impl CallerId {
    /// A caller named `id`.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    /// The caller of requests made without one.
    pub fn unattributed() -> Self {
        Self(Arc::from("unattributed"))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CallerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CallerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CallerId({})", self.0)
    }
}

/// The cost of one answered request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferenceUsage {
    /// Who asked.
    pub caller: CallerId,
    /// Which model ran.
    pub model: ModelId,
    /// Rows (dimension 0) of this request.
    pub rows: usize,
    /// Rows of the run this request was part of (its batch size).
    pub batch_rows: usize,
    /// Requests in that run.
    pub batch_requests: usize,
    /// Time from enqueue to the start of the run, µs.
    pub queue_wait_us: u64,
    /// Wall time of the whole run, µs.
    pub run_us: u64,
    /// This request's share of the run: `run_us * rows / batch_rows`, µs. What receipts bill.
    pub compute_us: u64,
    /// Where it ran.
    pub provider: ExecutionProvider,
}

/// Receives the usage of every answered request.
///
/// The runtime guarantees: `record` is called exactly once per request answered with an
/// output, on an inference thread, before the caller's future resolves.
/// The implementer must guarantee: `record` is cheap and never blocks (it runs on the inference
/// thread between two model runs); hand the record to a channel or an aggregate, do not do I/O.
pub trait UsageSink: Send + Sync + 'static {
    /// Records one request's usage.
    fn record(&self, usage: &InferenceUsage);
}

/// Usage summed per caller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageTotals {
    /// Requests answered.
    pub requests: u64,
    /// Rows answered.
    pub rows: u64,
    /// Sum of `compute_us`.
    pub compute_us: u64,
    /// Sum of `queue_wait_us`.
    pub queue_wait_us: u64,
    /// Largest batch (in rows) any of the caller's requests ran in.
    pub max_batch_rows: u64,
}

/// A [`UsageSink`] that sums usage per caller in memory; the session layer drains a caller's
/// totals with [`UsageLedger::take`] when it builds a receipt.
#[derive(Debug, Default)]
pub struct UsageLedger {
    totals: Mutex<HashMap<CallerId, UsageTotals>>,
}

impl UsageLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// The caller's totals so far, without resetting them.
    pub fn get(&self, caller: &CallerId) -> UsageTotals {
        self.lock().get(caller).cloned().unwrap_or_default()
    }

    /// The caller's totals so far, resetting them to zero.
    pub fn take(&self, caller: &CallerId) -> UsageTotals {
        self.lock().remove(caller).unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CallerId, UsageTotals>> {
        self.totals.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl UsageSink for UsageLedger {
    fn record(&self, usage: &InferenceUsage) {
        let mut totals = self.lock();
        let t = totals.entry(usage.caller.clone()).or_default();
        t.requests += 1;
        t.rows += usage.rows as u64;
        t.compute_us += usage.compute_us;
        t.queue_wait_us += usage.queue_wait_us;
        t.max_batch_rows = t.max_batch_rows.max(usage.batch_rows as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_sums_per_caller_and_take_resets() {
        let ledger = UsageLedger::new();
        let a = CallerId::new("session-a");
        let usage = |caller: &CallerId, rows, batch_rows| InferenceUsage {
            caller: caller.clone(),
            model: ModelId::of_bytes(b"m"),
            rows,
            batch_rows,
            batch_requests: 2,
            queue_wait_us: 10,
            run_us: 100,
            compute_us: 50,
            provider: ExecutionProvider::Cpu,
        };
        ledger.record(&usage(&a, 1, 2));
        ledger.record(&usage(&a, 3, 8));
        ledger.record(&usage(&CallerId::new("b"), 1, 1));
        let t = ledger.take(&a);
        assert_eq!(t.requests, 2);
        assert_eq!(t.rows, 4);
        assert_eq!(t.compute_us, 100);
        assert_eq!(t.max_batch_rows, 8);
        assert_eq!(ledger.get(&a), UsageTotals::default());
        assert_eq!(ledger.get(&CallerId::new("b")).requests, 1);
    }
}

//! Phase 1, plain replicated writes: the values written, the ledger group's writers (one
//! persistent consensus connection each, `ClientWrite`) and the tally both systems share.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opengrid_consensus::network::{
    client_link, Connection, RpcRequest, RpcResponse, DEFAULT_MAX_FRAME_BYTES,
};
use opengrid_consensus::Node;

use super::report::WriteStats;
use crate::bench::{summarize, Summary};

/// The `i`-th value of `len` bytes. Its first byte is no ledger command tag, so the ledger
/// answers it as malformed after it is committed (state unchanged).
pub(super) fn value(i: usize, len: usize) -> Vec<u8> {
    let mut v = vec![0xA5u8; len.max(1)];
    for (k, b) in (i as u64).to_le_bytes().iter().enumerate() {
        if let Some(x) = v.get_mut(k + 1) {
            *x = *b;
        }
    }
    v
}

/// Per-writer outcome.
#[derive(Default)]
pub(super) struct WriterOut {
    /// Latency of every acknowledged write, µs.
    pub lat: Vec<u64>,
    /// Writes that failed.
    pub errors: usize,
    /// The first failure, as seen.
    pub first_error: Option<String>,
}

/// Folds the writers' outcomes into one system's [`WriteStats`] (and its first error).
pub(super) fn collect(
    system: &str,
    outs: Vec<WriterOut>,
    seconds: f64,
    requested: usize,
) -> (WriteStats, Option<String>) {
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for o in outs {
        lat.extend(o.lat);
        errors += o.errors;
        first_error = first_error.or(o.first_error);
    }
    let count = lat.len();
    let s: Summary = summarize(lat);
    (
        WriteStats {
            system: system.into(),
            count,
            errors,
            seconds,
            writes_per_s: count as f64 / seconds.max(1e-9),
            p50_us: s.p50_us,
            p99_us: s.p99_us,
            max_us: s.max_us,
            hit_time_budget: count + errors < requested,
        },
        first_error,
    )
}

/// `total` writes of `value_bytes` with `concurrency` writers, one persistent consensus
/// connection each, to `leader`.
pub(super) async fn raft_writes(
    leader: &str,
    first: usize,
    total: usize,
    concurrency: usize,
    value_bytes: usize,
    budget: Duration,
) -> (WriteStats, Option<String>) {
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + budget;
    let start = Instant::now();
    let link = match client_link(opengrid_settlement::Keypair::generate().signing_key()) {
        Ok(l) => l,
        Err(e) => {
            let out = WriterOut {
                errors: 1,
                first_error: Some(format!("link: {e}")),
                ..WriterOut::default()
            };
            return collect(
                "opengrid-raft",
                vec![out],
                start.elapsed().as_secs_f64(),
                total,
            );
        }
    };
    let leader = Node {
        addr: leader.to_string(),
        did: None,
    };
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let next = next.clone();
        let (link, leader) = (link.clone(), leader.clone());
        tasks.spawn(async move {
            let mut out = WriterOut::default();
            let mut conn = Connection::new(link, &leader, DEFAULT_MAX_FRAME_BYTES);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || Instant::now() >= deadline {
                    break;
                }
                let req = RpcRequest::ClientWrite {
                    command: value(first + i, value_bytes),
                    forward: true,
                };
                let t = Instant::now();
                match conn.request(&req, Duration::from_secs(10)).await {
                    Ok(RpcResponse::Client(Ok(_))) => out.lat.push(t.elapsed().as_micros() as u64),
                    other => {
                        out.errors += 1;
                        if out.first_error.is_none() {
                            out.first_error = Some(format!("{other:?}"));
                        }
                    }
                }
            }
            out
        });
    }
    let outs = tasks.join_all().await;
    collect("opengrid-raft", outs, start.elapsed().as_secs_f64(), total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_write_values_are_no_ledger_command() {
        let v = value(7, 100);
        assert_eq!(v.len(), 100);
        assert_eq!(v[0], 0xA5);
        assert_eq!(v[1], 7);
        assert!(
            opengrid_codec::decode::<opengrid_settlement::LedgerCommand>(
                &v,
                opengrid_codec::MAX_DECODE_BYTES
            )
            .is_err()
        );
    }
}

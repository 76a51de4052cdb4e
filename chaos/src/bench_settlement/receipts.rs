//! Phases 2 and 3, receipts: the bench's node and RC keys registered through the group,
//! co-signed receipts generated on all cores and submitted in parts with a few in flight, one
//! big settlement batch sized to its budget, and the verify-speed calibration beside them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opengrid_settlement::ledger::{NodeRegistration, RcRegistration};
use opengrid_settlement::testing::make_receipts;
use opengrid_settlement::{
    Account, Batch, Keypair, LedgerClient, LedgerResponse, SignedReceipt, SplitPolicy,
};

use super::failed;
use super::report::{ReceiptsReport, SettleReport, VerifyCalibration};
use super::SettlementArgs;
use crate::bench::{summarize, BenchError};
use crate::report::Progress;

/// The bench's ledger operator (a fixed key: the bench's replicas are configured with its DID).
pub(super) fn bench_operator() -> Keypair {
    Keypair::from_seed([40; 32])
}

/// The node and the RC whose receipts the bench settles, both registered with the ledger.
pub(super) struct Parties {
    node: Keypair,
    rc: Keypair,
}

impl Parties {
    /// Registers the bench's node (interchange split) and RC through `client`.
    pub async fn register(client: &LedgerClient) -> Result<Parties, BenchError> {
        let node = Keypair::from_seed([41; 32]);
        let rc = Keypair::from_seed([42; 32]);
        let reg = client
            .register_node(
                NodeRegistration::new(
                    &node,
                    SplitPolicy::Interchange,
                    Account::new("bench-node-op").map_err(failed)?,
                    vec![],
                )
                .authorize(&bench_operator()),
            )
            .await
            .map_err(failed)?;
        if !matches!(reg, LedgerResponse::Registered(_)) {
            return Err(failed(format!("node registration: {reg:?}")));
        }
        let reg = client
            .register_rc(
                RcRegistration::new(&rc, Account::new("bench-rc-op").map_err(failed)?)
                    .authorize(&bench_operator()),
            )
            .await
            .map_err(failed)?;
        if !matches!(reg, LedgerResponse::Registered(_)) {
            return Err(failed(format!("rc registration: {reg:?}")));
        }
        Ok(Parties { node, rc })
    }

    /// Verify speed in this process, one thread and all, for `replicas` co-located replicas.
    pub fn calibrate(&self, replicas: u64) -> VerifyCalibration {
        calibrate(&self.node, &self.rc, replicas)
    }
}

/// Phase 2: `receipts` receipts in parts of `batch_size`, `inflight` parts in flight, to the
/// group at `addrs` (leader first).
pub(super) async fn receipts_phase(
    addrs: &[String],
    parties: &Parties,
    receipts: usize,
    batch_size: usize,
    inflight: usize,
    tally: &mut Tally,
    progress: &Progress,
) -> Result<ReceiptsReport, BenchError> {
    let Parties { node, rc } = parties;
    let tg = Instant::now();
    let rs = generate(node, rc, receipts, 0);
    let batches = parts(rc, rs, batch_size, 0);
    let generate_s = tg.elapsed().as_secs_f64();
    let part_bytes = opengrid_codec::encode(&opengrid_settlement::LedgerCommand::SubmitBatch(
        batches[0].clone(),
    ))
    .map(|b| b.len())
    .unwrap_or(0);
    progress.line(format!(
        "receipts: {receipts} generated in {generate_s:.1} s, {} parts of {batch_size} \
         ({part_bytes} B each)",
        batches.len()
    ));
    let n_parts = batches.len();
    let out = submit_parts(
        addrs.to_vec(),
        Arc::new(batches),
        inflight,
        Instant::now() + Duration::from_secs(600),
        progress,
        "receipts",
    )
    .await?;
    if let Some(r) = &out.first_rejection {
        progress.line(format!("receipts: first rejection {r}"));
    }
    tally.add(&out);
    let s = summarize(out.lat);
    let rec = ReceiptsReport {
        count: out.settled,
        submitted: out.submitted,
        rejected: out.rejected,
        batches: n_parts,
        batch_size,
        inflight: inflight.max(1),
        seconds: out.seconds,
        receipts_per_s: out.settled as f64 / out.seconds.max(1e-9),
        p50_us: s.p50_us,
        p99_us: s.p99_us,
        max_us: s.max_us,
        generate_s,
        part_bytes,
        hit_deadline: out.hit_deadline,
    };
    progress.line(format!(
        "receipts: {} settled in {:.2} s = {:.0}/s; part commit p50 {} µs, p99 {} µs",
        rec.count, rec.seconds, rec.receipts_per_s, rec.p50_us, rec.p99_us
    ));
    Ok(rec)
}

/// Phase 3: one big settlement batch (`--settle-receipts`), reduced to what fits in 80 % of
/// `--settle-budget-s` at the phase-2 rate `receipts_per_s`; `None` when switched off.
pub(super) async fn settle_phase(
    addrs: &[String],
    parties: &Parties,
    receipts_per_s: f64,
    batch_size: usize,
    cfg: &SettlementArgs,
    tally: &mut Tally,
    progress: &Progress,
) -> Result<Option<SettleReport>, BenchError> {
    if cfg.settle_budget_s == 0 || cfg.settle_receipts == 0 {
        return Ok(None);
    }
    let Parties { node, rc } = parties;
    let budget = cfg.settle_budget_s as f64;
    let fits = (receipts_per_s * budget * 0.8) as usize;
    let fits = (fits / batch_size).max(1) * batch_size;
    let requested = cfg.settle_receipts.min(10_000_000);
    let (count, reduced_because) = if requested <= fits {
        (requested, None)
    } else {
        (
            fits,
            Some(format!(
                "at the {receipts_per_s:.0} receipts/s measured above, {requested} receipts would \
                 not settle within --settle-budget-s {budget:.0}; measured the largest multiple \
                 of the part size that fits in 80% of it"
            )),
        )
    };
    let tg = Instant::now();
    let rs = generate(node, rc, count, 1 << 40);
    let batches = parts(rc, rs, batch_size, 1 << 20);
    let generate_s = tg.elapsed().as_secs_f64();
    progress.line(format!(
        "settle: {count} receipts generated in {generate_s:.1} s; submitting {} parts",
        batches.len()
    ));
    let n_parts = batches.len();
    let out = submit_parts(
        addrs.to_vec(),
        Arc::new(batches),
        cfg.inflight,
        Instant::now() + Duration::from_secs_f64(budget * 2.0),
        progress,
        "settle",
    )
    .await?;
    tally.add(&out);
    let done_parts = out.lat.len();
    if done_parts < n_parts {
        progress.line(format!(
            "settle: stopped at the deadline after {done_parts}/{n_parts} parts"
        ));
    }
    let r = SettleReport {
        requested,
        count: out.submitted as usize,
        reduced_because,
        settled: out.settled,
        parts: done_parts,
        seconds: out.seconds,
        receipts_per_s: out.settled as f64 / out.seconds.max(1e-9),
        generate_s,
        hit_deadline: out.hit_deadline,
    };
    progress.line(format!(
        "settle: {} receipts settled in {:.2} s ({:.0}/s)",
        r.settled, r.seconds, r.receipts_per_s
    ));
    Ok(Some(r))
}

/// `n` co-signed receipts with nonces from `first_nonce`, signed on all cores.
fn generate(node: &Keypair, rc: &Keypair, n: usize, first_nonce: u64) -> Vec<SignedReceipt> {
    let threads = std::thread::available_parallelism()
        .map(|t| t.get())
        .unwrap_or(1)
        .max(1);
    let per = n.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let start = (t * per).min(n);
                let len = per.min(n - start);
                s.spawn(move || make_receipts(node, rc, len, first_nonce + start as u64))
            })
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// `receipts` as ledger batch parts of `size`, numbered from `first_part`.
fn parts(rc: &Keypair, receipts: Vec<SignedReceipt>, size: usize, first_part: u32) -> Vec<Batch> {
    receipts
        .chunks(size.max(1))
        .enumerate()
        .map(|(i, c)| Batch {
            rc: rc.did(),
            proposed_at_ms: 10_000,
            part: first_part + i as u32,
            receipts: c.to_vec(),
        })
        .collect()
}

/// Outcome of submitting parts.
struct SubmitOut {
    /// Receipts in the parts that were answered.
    submitted: u64,
    /// Fees of those receipts.
    fees_submitted: u64,
    /// Fees the ledger reports as settled.
    fees_settled: u64,
    settled: u64,
    rejected: u64,
    first_rejection: Option<String>,
    lat: Vec<u64>,
    seconds: f64,
    hit_deadline: bool,
}

/// One submitter's tally.
struct PartsDone {
    lat: Vec<u64>,
    submitted: u64,
    fees_submitted: u64,
    fees_settled: u64,
    settled: u64,
    rejected: u64,
    first_rejection: Option<String>,
    hit_deadline: bool,
}

/// Submits `batches` with `inflight` parts in flight; stops taking new parts at `deadline`.
async fn submit_parts(
    addrs: Vec<String>,
    batches: Arc<Vec<Batch>>,
    inflight: usize,
    deadline: Instant,
    progress: &Progress,
    label: &str,
) -> Result<SubmitOut, BenchError> {
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..inflight.max(1) {
        let (next, done, batches, addrs) =
            (next.clone(), done.clone(), batches.clone(), addrs.clone());
        tasks.spawn(async move {
            let client =
                LedgerClient::with_timeout(addrs, Duration::from_secs(120), &Keypair::generate())
                    .map_err(failed)?;
            let mut lat = Vec::new();
            let (mut settled, mut rejected, mut first_rejection) = (0u64, 0u64, None);
            let (mut submitted, mut fees_submitted, mut fees_settled) = (0u64, 0u64, 0u64);
            let mut hit_deadline = false;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= batches.len() {
                    break;
                }
                if Instant::now() >= deadline {
                    hit_deadline = true;
                    break;
                }
                let t = Instant::now();
                match client.submit_batch(&batches[i]).await {
                    Ok(LedgerResponse::Batch { record, .. }) => {
                        lat.push(t.elapsed().as_micros() as u64);
                        submitted += batches[i].receipts.len() as u64;
                        fees_submitted += batches[i]
                            .receipts
                            .iter()
                            .map(|r| r.receipt.fee_micros)
                            .sum::<u64>();
                        fees_settled += record.fees_settled_micros;
                        settled += u64::from(record.settled);
                        rejected += record.rejected.len() as u64;
                        if first_rejection.is_none() {
                            first_rejection = record.rejected.first().map(|r| format!("{r:?}"));
                        }
                    }
                    Ok(other) => return Err(failed(format!("part {i}: {other:?}"))),
                    Err(e) => return Err(failed(format!("part {i}: {e}"))),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(PartsDone {
                lat,
                submitted,
                fees_submitted,
                fees_settled,
                settled,
                rejected,
                first_rejection,
                hit_deadline,
            })
        });
    }
    let total = batches.len();
    let mut out = SubmitOut {
        submitted: 0,
        fees_submitted: 0,
        fees_settled: 0,
        settled: 0,
        rejected: 0,
        first_rejection: None,
        lat: Vec::new(),
        seconds: 0.0,
        hit_deadline: false,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tokio::select! {
            r = tasks.join_next() => match r {
                None => break,
                Some(Ok(Ok(d))) => {
                    out.lat.extend(d.lat);
                    out.submitted += d.submitted;
                    out.fees_submitted += d.fees_submitted;
                    out.fees_settled += d.fees_settled;
                    out.settled += d.settled;
                    out.rejected += d.rejected;
                    out.first_rejection = out.first_rejection.or(d.first_rejection);
                    out.hit_deadline |= d.hit_deadline;
                }
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => return Err(failed(e)),
            },
            _ = tick.tick() => progress.line(format!(
                "{label}: {}/{total} parts applied, {:.0} s",
                done.load(Ordering::Relaxed),
                start.elapsed().as_secs_f64()
            )),
        }
    }
    out.seconds = start.elapsed().as_secs_f64();
    Ok(out)
}

/// Verify speed of `sample` receipts' two signatures, on one thread and on all, and the
/// receipts/s ceiling it implies for `replicas` replicas sharing this machine.
fn calibrate(node: &Keypair, rc: &Keypair, replicas: u64) -> VerifyCalibration {
    let sample = generate(node, rc, 2_000, u64::MAX / 2);
    let check = |r: &SignedReceipt| {
        r.verify(
            &r.receipt.node.verifying_key(),
            &r.receipt.rc.verifying_key(),
        )
        .is_ok()
    };
    let t = Instant::now();
    let ok1 = sample.iter().filter(|r| check(r)).count();
    let one = (2 * ok1) as f64 / t.elapsed().as_secs_f64().max(1e-9);
    let threads = std::thread::available_parallelism()
        .map(|t| t.get())
        .unwrap_or(1);
    let t = Instant::now();
    let okn: usize = std::thread::scope(|s| {
        let hs: Vec<_> = sample
            .chunks(sample.len().div_ceil(threads).max(1))
            .map(|c| s.spawn(move || c.iter().filter(|r| check(r)).count()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    let all = (2 * okn) as f64 / t.elapsed().as_secs_f64().max(1e-9);
    VerifyCalibration {
        verifies_per_s_1_thread: one.round(),
        verifies_per_s_all_threads: all.round(),
        derived_ceiling_receipts_per_s: (all / (2.0 * replicas as f64)).round(),
    }
}

#[derive(Default)]
pub(super) struct Tally {
    /// Receipts in the parts that were answered.
    pub submitted: u64,
    /// Receipts the ledger answered as settled.
    pub settled: u64,
    /// Fees of the submitted receipts.
    pub fees_submitted: u64,
    /// Fees the ledger answered as settled.
    pub fees_settled: u64,
}

impl Tally {
    fn add(&mut self, o: &SubmitOut) {
        self.submitted += o.submitted;
        self.settled += o.settled;
        self.fees_submitted += o.fees_submitted;
        self.fees_settled += o.fees_settled;
    }
}

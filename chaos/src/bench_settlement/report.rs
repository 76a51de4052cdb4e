//! What `bench settlement` reports: the JSON object ([`SettlementReport`] and its parts) and the
//! human summary ([`human`]).

use serde::Serialize;

use super::machine::Machine;
use super::SettlementArgs;

/// Plain replicated writes of one system.
#[derive(Clone, Debug, Serialize)]
pub struct WriteStats {
    /// `opengrid-raft` or `etcd`.
    pub system: String,
    /// Writes acknowledged in the measured round.
    pub count: usize,
    /// Writes that failed (error or non-success answer).
    pub errors: usize,
    /// Wall time of the measured round.
    pub seconds: f64,
    /// Acknowledged writes per second.
    pub writes_per_s: f64,
    /// Per-write latency median, µs.
    pub p50_us: u64,
    /// Per-write latency p99, µs.
    pub p99_us: u64,
    /// Worst write, µs.
    pub max_us: u64,
    /// Whether the round stopped on its time budget before `count` writes.
    pub hit_time_budget: bool,
}

/// The write comparison.
#[derive(Clone, Debug, Serialize)]
pub struct WritesReport {
    /// Concurrent writers on each side.
    pub concurrency: usize,
    /// Value bytes per write on each side.
    pub value_bytes: usize,
    /// Writes requested per side (after a warm-up round of `warmup` writes).
    pub requested: usize,
    /// Unmeasured warm-up writes per side.
    pub warmup: usize,
    /// The ledger's Raft group.
    pub raft: WriteStats,
    /// etcd, when it ran.
    pub etcd: Option<WriteStats>,
    /// Why etcd did not run.
    pub etcd_skipped: Option<String>,
    /// `etcd --version`, first line.
    pub etcd_version: Option<String>,
    /// raft writes/s ÷ etcd writes/s.
    pub throughput_ratio: Option<f64>,
    /// raft p99 ÷ etcd p99 (≤ 1 is no worse).
    pub p99_ratio: Option<f64>,
    /// Target: ratio ≥ 1 (issue #6) with p99 no worse.
    pub target_met: Option<bool>,
}

/// Receipts applied through the replicated ledger.
#[derive(Clone, Debug, Serialize)]
pub struct ReceiptsReport {
    /// Receipts settled.
    pub count: u64,
    /// Receipts submitted.
    pub submitted: u64,
    /// Receipts the ledger rejected (none expected).
    pub rejected: u64,
    /// Batch parts.
    pub batches: usize,
    /// Receipts per part.
    pub batch_size: usize,
    /// Parts in flight.
    pub inflight: usize,
    /// First submit → last applied reply.
    pub seconds: f64,
    /// Settled receipts per second.
    pub receipts_per_s: f64,
    /// Per-part commit latency median, µs.
    pub p50_us: u64,
    /// Per-part commit latency p99, µs.
    pub p99_us: u64,
    /// Worst part, µs.
    pub max_us: u64,
    /// Time to generate and sign the receipts (not part of `seconds`).
    pub generate_s: f64,
    /// Encoded bytes of one part.
    pub part_bytes: usize,
    /// Whether the phase stopped on its hard deadline.
    pub hit_deadline: bool,
}

/// One settlement batch of many receipts.
#[derive(Clone, Debug, Serialize)]
pub struct SettleReport {
    /// Receipts asked for (`--settle-receipts`).
    pub requested: usize,
    /// Receipts actually submitted (and timed).
    pub count: usize,
    /// Why fewer than requested, if so.
    pub reduced_because: Option<String>,
    /// Receipts settled.
    pub settled: u64,
    /// Parts.
    pub parts: usize,
    /// First part submitted → last part applied on the leader (committed on a majority).
    pub seconds: f64,
    /// Settled receipts per second in this phase.
    pub receipts_per_s: f64,
    /// Time to generate and sign the receipts (not part of `seconds`).
    pub generate_s: f64,
    /// Whether the phase stopped on its hard deadline (2 × budget).
    pub hit_deadline: bool,
}

/// Signature verification speed measured in this process (context for the receipts figure).
#[derive(Clone, Debug, Serialize)]
pub struct VerifyCalibration {
    /// ed25519 verifies per second on one thread (two per receipt).
    pub verifies_per_s_1_thread: f64,
    /// Verifies per second on all threads.
    pub verifies_per_s_all_threads: f64,
    /// Derived, not measured: all-thread verifies/s ÷ (2 verifies × replicas), the most receipts/s
    /// replicas sharing this machine's cores could check.
    pub derived_ceiling_receipts_per_s: f64,
}

/// `bench settlement` result (one JSON object).
#[derive(Clone, Debug, Serialize)]
pub struct SettlementReport {
    /// `settlement`.
    pub name: &'static str,
    /// Phase 2 per-part commit latency median, µs.
    pub p50_us: u64,
    /// Phase 2 per-part commit latency p99, µs.
    pub p99_us: u64,
    /// Receipts settled in phases 2 and 3.
    pub count: u64,
    /// Receipts submitted but not settled.
    pub lost: u64,
    /// Receipts counted more than once.
    pub duplicated: u64,
    /// How the replicas ran.
    pub replicas: String,
    /// Replicas whose final state hash and totals agree.
    pub replicas_agree: bool,
    /// The ledger's totals equal the settled fees exactly.
    pub totals_exact: bool,
    /// The machine.
    pub machine: Machine,
    /// The knobs.
    pub config: SettlementArgs,
    /// Phase 1.
    pub writes: WritesReport,
    /// Phase 2.
    pub receipts: ReceiptsReport,
    /// Phase 3 (absent with `--settle-budget-s 0`).
    pub settle: Option<SettleReport>,
    /// Verify speed in this process.
    pub verify: VerifyCalibration,
    /// Targets and whether they were met by the measured figures.
    pub targets: Targets,
    /// Whole bench wall time.
    pub total_s: f64,
}

/// P8 targets next to the figures.
#[derive(Clone, Debug, Serialize)]
pub struct Targets {
    /// ≥ 50 k receipts/s.
    pub receipts_per_s: f64,
    /// Met?
    pub receipts_per_s_met: bool,
    /// ≤ 30 s for 1 M receipts.
    pub settle_1m_s: f64,
    /// Met? `None` when fewer than 1 M receipts were settled (not measured).
    pub settle_1m_met: Option<bool>,
    /// Writes ≥ etcd with p99 no worse; `None` when etcd was skipped.
    pub writes_vs_etcd_met: Option<bool>,
}

/// The human summary.
pub fn human(r: &SettlementReport) -> String {
    let mut s = String::new();
    let m = &r.machine;
    s += &format!(
        "P8 settlement — {} cpu(s) {} ({} GiB), {}\n",
        m.cpus, m.cpu_model, m.mem_gib, r.replicas
    );
    let w = &r.writes;
    s += &format!(
        "  plain writes, {} B values, concurrency {}:\n",
        w.value_bytes, w.concurrency
    );
    let line = |x: &WriteStats| {
        format!(
            "    {:<14} {:>8.0} writes/s  p50 {:>7} µs  p99 {:>7} µs  ({} writes, {} errors, {:.2} s)\n",
            x.system, x.writes_per_s, x.p50_us, x.p99_us, x.count, x.errors, x.seconds
        )
    };
    s += &line(&w.raft);
    match (&w.etcd, &w.etcd_skipped) {
        (Some(e), _) => {
            s += &line(e);
            s += &format!(
                "    ratio {:.2}× throughput, p99 ratio {:.2} (target ≥ 1×, p99 no worse: {})\n",
                w.throughput_ratio.unwrap_or(0.0),
                w.p99_ratio.unwrap_or(0.0),
                if w.target_met == Some(true) {
                    "met"
                } else {
                    "not met"
                }
            );
        }
        (None, Some(why)) => s += &format!("    etcd skipped: {why}\n"),
        (None, None) => {}
    }
    let rc = &r.receipts;
    s += &format!(
        "  receipts (2 ed25519 verifies each, on every replica): {:.0}/s (target ≥ {:.0}: {}); \
         {} receipts, parts of {} ({} in flight), part commit p50 {} µs p99 {} µs\n",
        rc.receipts_per_s,
        r.targets.receipts_per_s,
        if r.targets.receipts_per_s_met {
            "met"
        } else {
            "not met"
        },
        rc.count,
        rc.batch_size,
        rc.inflight,
        rc.p50_us,
        rc.p99_us
    );
    s += &format!(
        "    verify speed here: {:.0}/s on 1 thread, {:.0}/s on all; derived ceiling for 3 \
         replicas on this machine {:.0} receipts/s\n",
        r.verify.verifies_per_s_1_thread,
        r.verify.verifies_per_s_all_threads,
        r.verify.derived_ceiling_receipts_per_s
    );
    if let Some(st) = &r.settle {
        s += &format!(
            "  settle one batch: {} receipts in {:.2} s ({:.0}/s); target 1 M in ≤ {:.0} s: {}\n",
            st.settled,
            st.seconds,
            st.receipts_per_s,
            r.targets.settle_1m_s,
            match r.targets.settle_1m_met {
                Some(true) => "met".to_string(),
                Some(false) => "not met".to_string(),
                None => format!("not measured at 1 M (measured {} receipts)", st.count),
            }
        );
        if let Some(why) = &st.reduced_because {
            s += &format!("    reduced: {why}\n");
        }
    }
    s += &format!(
        "  lost {}, duplicated {}, replicas agree {}, totals exact {}; {:.1} s in all\n",
        r.lost, r.duplicated, r.replicas_agree, r.totals_exact, r.total_s
    );
    s
}

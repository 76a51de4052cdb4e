//! Availability as the workload's clients saw it: of the inputs the workload **offered** (one
//! per tick of each session's pacing, whether or not its client could send it), how many were
//! **acknowledged**, **refused** (sent, then given up or refused) or **not sent** (the client was
//! still blocked on an earlier input), overall and in the window after each fault; and each
//! session's **longest client-visible outage**: the longest time its client waited without an
//! acknowledgement (from sending an input until an input of it was acknowledged). Recovery time
//! (until every session answered once after a fault) hides outages that start later; this does
//! not. [`crate::scenario::Invariant::Availability`] makes a floor a scenario can require.

use serde::{Deserialize, Serialize};

use crate::percentiles::Percentiles;

/// One session's inputs as its client saw them, with its pacing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    /// Period between ticks, ms.
    pub period_ms: f64,
    /// Offset of the first tick, as a fraction of a period.
    pub phase: f64,
    /// The workload offered inputs until this time, ms.
    pub until_ms: u64,
    /// `(sent_ms, done_ms, acknowledged)` per input sent, in order.
    pub steps: Vec<(u64, u64, bool)>,
}

impl Series {
    /// Ticks (inputs offered) in `[from_ms, to_ms)`.
    pub fn offered(&self, from_ms: u64, to_ms: u64) -> u64 {
        if self.period_ms <= 0.0 {
            return 0;
        }
        let to = to_ms.min(self.until_ms) as f64;
        let from = from_ms as f64;
        if to <= from {
            return 0;
        }
        // Tick k is at period * (k + phase): count k ≥ 0 with from ≤ t_k < to.
        let first = ((from / self.period_ms) - self.phase).ceil().max(0.0);
        let end = ((to / self.period_ms) - self.phase).ceil().max(0.0);
        (end - first).max(0.0) as u64
    }

    /// The longest time the client waited without an acknowledgement, ms: from sending an input
    /// (the first of a run of unacknowledged ones) until an input was acknowledged, or the end of
    /// the workload if none was.
    pub fn longest_outage_ms(&self) -> u64 {
        let mut worst = 0;
        let mut waiting_since: Option<u64> = None;
        for &(sent, done, acked) in &self.steps {
            let since = *waiting_since.get_or_insert(sent);
            if acked {
                worst = worst.max(done.saturating_sub(since));
                waiting_since = None;
            }
        }
        if let (Some(since), Some(&(_, done, _))) = (waiting_since, self.steps.last()) {
            worst = worst.max(done.max(self.until_ms).saturating_sub(since));
        }
        worst
    }
}

/// Inputs offered and what became of them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Ticks of the sessions' pacing in the window.
    pub offered: u64,
    /// Sent in the window and acknowledged.
    pub acknowledged: u64,
    /// Sent in the window and not acknowledged (refused, or given up after retrying).
    pub refused: u64,
    /// Offered but never sent: the client was blocked on an earlier input.
    pub not_sent: u64,
    /// `acknowledged / offered` (1 when nothing was offered).
    pub ratio: f64,
}

impl Counts {
    fn of(series: &[Series], from_ms: u64, to_ms: u64) -> Counts {
        let mut c = Counts::default();
        for s in series {
            c.offered += s.offered(from_ms, to_ms);
            for &(sent, _, acked) in &s.steps {
                if sent >= from_ms && sent < to_ms && sent < s.until_ms {
                    if acked {
                        c.acknowledged += 1;
                    } else {
                        c.refused += 1;
                    }
                }
            }
        }
        // A send scheduled at a tick can start a little after it: never count more sent than
        // offered.
        let sent = (c.acknowledged + c.refused).min(c.offered);
        c.acknowledged = c.acknowledged.min(c.offered);
        c.refused = sent - c.acknowledged;
        c.not_sent = c.offered - sent;
        c.ratio = if c.offered == 0 {
            1.0
        } else {
            c.acknowledged as f64 / c.offered as f64
        };
        c
    }
}

/// The window after one fault.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultWindow {
    /// The fault (`action targets`).
    pub fault: String,
    /// From its injection, ms.
    pub from_ms: u64,
    /// To the next fault's injection or the end of the workload, ms.
    pub to_ms: u64,
    /// What became of the inputs offered in the window.
    #[serde(flatten)]
    pub counts: Counts,
}

/// Sessions' longest client-visible outages.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Outages {
    /// Median over the sessions, ms.
    pub p50_ms: u64,
    /// 99th percentile, ms.
    pub p99_ms: u64,
    /// Worst, ms.
    pub max_ms: u64,
}

/// A run's availability.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Availability {
    /// Over the whole workload.
    #[serde(flatten)]
    pub total: Counts,
    /// Each session's longest outage, over the sessions.
    pub longest_outage: Outages,
    /// Per fault injected.
    pub per_fault: Vec<FaultWindow>,
}

impl Availability {
    /// Computes it from the sessions' series and the faults' `(label, injected_ms)`, in time
    /// order.
    pub fn compute(series: &[Series], faults: &[(String, u64)]) -> Availability {
        let end = series.iter().map(|s| s.until_ms).max().unwrap_or(0);
        let total = Counts::of(series, 0, end);
        let p = Percentiles::of(series.iter().map(Series::longest_outage_ms));
        let mut per_fault = Vec::new();
        for (i, (label, at)) in faults.iter().enumerate() {
            let to = faults
                .get(i + 1)
                .map(|(_, t)| *t)
                .unwrap_or(end)
                .clamp(*at, end.max(*at));
            per_fault.push(FaultWindow {
                fault: label.clone(),
                from_ms: *at,
                to_ms: to,
                counts: Counts::of(series, *at, to),
            });
        }
        Availability {
            total,
            longest_outage: Outages {
                p50_ms: p.percentile(50.0),
                p99_ms: p.percentile(99.0),
                max_ms: p.max(),
            },
            per_fault,
        }
    }

    /// One line for a report: `acknowledged 965/1350 (71.5 %), 40 refused, 345 not sent;
    /// longest outage p50 … p99 … max …`.
    pub fn line(&self) -> String {
        let t = &self.total;
        format!(
            "acknowledged {}/{} offered ({:.1} %), {} refused, {} not sent; longest outage per \
             session p50 {} ms, p99 {} ms, max {} ms",
            t.acknowledged,
            t.offered,
            t.ratio * 100.0,
            t.refused,
            t.not_sent,
            self.longest_outage.p50_ms,
            self.longest_outage.p99_ms,
            self.longest_outage.max_ms
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paced(period_ms: f64, until_ms: u64, steps: Vec<(u64, u64, bool)>) -> Series {
        Series {
            period_ms,
            phase: 0.0,
            until_ms,
            steps,
        }
    }

    #[test]
    fn offered_counts_the_ticks_of_a_window() {
        let s = paced(100.0, 1000, vec![]);
        assert_eq!(s.offered(0, 1000), 10);
        assert_eq!(s.offered(0, 5000), 10, "nothing past the workload's end");
        assert_eq!(s.offered(250, 550), 3, "ticks at 300, 400, 500");
        assert_eq!(s.offered(500, 500), 0);
        let half = Series {
            phase: 0.5,
            ..paced(100.0, 1000, vec![])
        };
        assert_eq!(half.offered(0, 1000), 10, "ticks at 50 … 950");
        assert_eq!(half.offered(0, 60), 1);
    }

    #[test]
    fn a_blocked_client_shows_as_not_sent_and_as_an_outage() {
        // Ticks every 100 ms for 1 s; inputs at 0 and 100 answered at once; the one at 200
        // blocked until 700 (a failover); then on time again.
        let steps = vec![
            (0, 5, true),
            (100, 105, true),
            (200, 700, true),
            (700, 705, true),
            (800, 805, true),
            (900, 905, true),
        ];
        let s = paced(100.0, 1000, steps);
        assert_eq!(s.longest_outage_ms(), 500);
        let a = Availability::compute(&[s], &[("kill n1".into(), 150)]);
        assert_eq!(
            (a.total.offered, a.total.acknowledged, a.total.not_sent),
            (10, 6, 4)
        );
        assert!((a.total.ratio - 0.6).abs() < 1e-9);
        let w = &a.per_fault[0];
        assert_eq!((w.from_ms, w.to_ms), (150, 1000));
        assert_eq!((w.counts.offered, w.counts.acknowledged), (8, 4));
        assert_eq!(a.longest_outage.max_ms, 500);
    }

    #[test]
    fn refusals_count_and_an_unanswered_tail_runs_to_the_end() {
        let steps = vec![(0, 5, true), (100, 400, false), (400, 900, false)];
        let s = paced(100.0, 1000, steps);
        assert_eq!(s.longest_outage_ms(), 900, "waiting from 100 to the end");
        let a = Availability::compute(&[s], &[]);
        assert_eq!((a.total.acknowledged, a.total.refused), (1, 2));
        assert_eq!(a.total.not_sent, 7);
        assert!(a.line().contains("1/10 offered (10.0 %)"), "{}", a.line());
    }

    #[test]
    fn nothing_offered_is_fully_available() {
        let a = Availability::compute(&[], &[("pause n1".into(), 0)]);
        assert_eq!(a.total.ratio, 1.0);
        assert_eq!(a.per_fault[0].counts.ratio, 1.0);
    }
}

//! What the workload records per session, and what that record proves: [`analyse_session`]
//! reconstructs which inputs a counter session holds from its answers (double processing,
//! silent loss), [`recovery_ms`] how long after a fault every session was served again.

use serde::{Deserialize, Serialize};

use crate::invariants::{InputRecord, SessionOutcome, Violation};
use crate::scenario::Invariant;

/// One input as the workload saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// 1-based position among the inputs this session's workload sent.
    pub ordinal: u64,
    /// Sent (ms from the start of the workload).
    pub sent_ms: u64,
    /// Answered or given up (ms).
    pub done_ms: u64,
    /// The outcome.
    pub outcome: StepOutcome,
    /// The client's `Session::lost` after this input.
    pub lost_after: u64,
    /// The final-state probe after the run.
    pub final_probe: bool,
}

/// How an input ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StepOutcome {
    /// Processed: the counter's answer (the session's applied count).
    Processed(i64),
    /// Answered `duplicate` (processed before, its answer lost in a move).
    Duplicate,
    /// The client gave up retrying; the input stays queued in the client and is replayed first
    /// by the next send.
    TimedOut,
    /// Refused (not retryable): the client dropped it; it may or may not have been applied.
    Failed,
}

/// The record of one session.
#[derive(Clone, Debug, Default)]
pub struct SessionLog {
    /// Session id.
    pub id: String,
    /// Manifest loss bound, ms (0: zero-loss).
    pub loss_bound_ms: u64,
    /// Inputs, in order.
    pub steps: Vec<Step>,
    /// Its client's pacing: ms between ticks, the first tick's offset (a fraction of a period)
    /// and when it stopped offering inputs (ms from the start).
    pub period_ms: f64,
    /// See `period_ms`.
    pub phase: f64,
    /// See `period_ms`.
    pub until_ms: u64,
}

impl SessionLog {
    /// What its client saw, for availability ([`crate::availability`]): final probes left out.
    pub fn series(&self) -> crate::availability::Series {
        crate::availability::Series {
            period_ms: self.period_ms,
            phase: self.phase,
            until_ms: self.until_ms,
            steps: self
                .steps
                .iter()
                .filter(|s| !s.final_probe)
                .map(|s| {
                    (
                        s.sent_ms,
                        s.done_ms,
                        matches!(
                            s.outcome,
                            StepOutcome::Processed(_) | StepOutcome::Duplicate
                        ),
                    )
                })
                .collect(),
        }
    }
}

/// Reconstructs which inputs a counter session holds from its answers; returns the client
/// records and the session's outcome for [`check_inputs`] (`None`: the final state was never
/// observed), plus the double-processing violations the answers prove.
///
/// [`check_inputs`]: crate::invariants::check_inputs
pub fn analyse_session(
    log: &SessionLog,
) -> (Vec<InputRecord>, Option<SessionOutcome>, Vec<Violation>) {
    let mut records = Vec::new();
    let mut applied: Vec<u64> = Vec::new();
    let mut queued: Vec<u64> = Vec::new();
    let mut maybe: Vec<u64> = Vec::new();
    let mut violations = Vec::new();
    let mut lost = 0u64;
    // Inputs the session applied twice so far (its total runs ahead of the record by this).
    let mut doubled = 0i64;
    for st in &log.steps {
        let acked = matches!(
            st.outcome,
            StepOutcome::Processed(_) | StepOutcome::Duplicate
        );
        records.push(InputRecord {
            session: log.id.clone(),
            seq: st.ordinal,
            sent_ms: st.sent_ms,
            acked_ms: acked.then_some(st.done_ms),
        });
        match st.outcome {
            StepOutcome::TimedOut => queued.push(st.ordinal),
            StepOutcome::Failed => maybe.push(st.ordinal),
            StepOutcome::Processed(_) | StepOutcome::Duplicate => {
                // The client renumbered after the session resumed from an older checkpoint: the
                // newest applied inputs are gone (the loss its manifest may accept).
                let newly_lost = st.lost_after.saturating_sub(lost);
                lost = st.lost_after.max(lost);
                // The client counts every skipped seq as lost, including the seqs of inputs it
                // dropped after a refusal (never applied): only the rest were applied and lost.
                let renumbered = newly_lost.saturating_sub(maybe.len() as u64);
                if newly_lost > 0 {
                    // The skipped seqs are the newest ones: refused inputs older than them were
                    // applied after all (e.g. durable on the replicas a failover restored from
                    // although the holder refused them).
                    let kept = maybe.len().saturating_sub(newly_lost as usize);
                    applied.extend(maybe.drain(..kept));
                    maybe.clear();
                }
                for _ in 0..renumbered {
                    applied.pop();
                }
                // Inputs that timed out were replayed ahead of this one.
                applied.append(&mut queued);
                if let StepOutcome::Processed(total) = st.outcome {
                    let expected = applied.len() as i64 + doubled + 1;
                    if total > expected {
                        let extra = (total - expected) as usize;
                        let explained = extra.min(maybe.len());
                        applied.extend(maybe.drain(..explained));
                        let dup = extra - explained;
                        doubled += dup as i64;
                        if dup > 0 {
                            violations.push(Violation {
                                invariant: Invariant::NoDuplicate,
                                subject: log.id.clone(),
                                detail: format!(
                                    "input #{} answered total {total}, but the workload's record \
                                     accounts for {} applied input(s) before it: {dup} input(s) \
                                     processed twice",
                                    st.ordinal,
                                    expected - 1
                                ),
                                t_ms: Some(st.done_ms),
                            });
                        }
                    } else if total < expected {
                        // Acknowledged inputs gone without the client being told: they become
                        // missing from the outcome and check_inputs judges them.
                        applied.truncate((total - 1 - doubled).max(0) as usize);
                    }
                }
                maybe.clear();
                applied.push(st.ordinal);
            }
        }
    }
    let observed = log
        .steps
        .last()
        .is_some_and(|s| s.final_probe && matches!(s.outcome, StepOutcome::Processed(_)));
    let outcome = observed.then(|| SessionOutcome {
        session: log.id.clone(),
        loss_bound_ms: log.loss_bound_ms,
        applied,
    });
    (records, outcome, violations)
}

/// Recovery after a fault injected at `t_ms`: until every session had an input sent at or after
/// the fault acknowledged (resolution: one input period). `None` if some session never did.
pub fn recovery_ms(logs: &[SessionLog], t_ms: u64) -> Option<u64> {
    let mut worst = 0;
    for l in logs {
        let first = l.steps.iter().find(|s| {
            s.sent_ms >= t_ms
                && matches!(
                    s.outcome,
                    StepOutcome::Processed(_) | StepOutcome::Duplicate
                )
        })?;
        worst = worst.max(first.done_ms - t_ms);
    }
    Some(worst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invariants::check_inputs;

    fn step(o: u64, outcome: StepOutcome, lost: u64, fin: bool) -> Step {
        Step {
            ordinal: o,
            sent_ms: o * 100,
            done_ms: o * 100 + 5,
            outcome,
            lost_after: lost,
            final_probe: fin,
        }
    }

    fn log(bound: u64, steps: Vec<Step>) -> SessionLog {
        SessionLog {
            id: "s".into(),
            loss_bound_ms: bound,
            steps,
            ..Default::default()
        }
    }

    use StepOutcome::*;

    #[test]
    fn a_clean_counter_history_has_nothing_to_report() {
        let l = log(
            0,
            vec![
                step(1, Processed(1), 0, false),
                step(2, TimedOut, 0, false),
                step(3, Processed(3), 0, false),
                step(4, Duplicate, 0, false),
                step(5, Processed(5), 0, true),
            ],
        );
        let (r, o, v) = analyse_session(&l);
        assert!(v.is_empty(), "{v:?}");
        let o = o.unwrap();
        assert_eq!(o.applied, vec![1, 2, 3, 4, 5]);
        assert!(check_inputs(&r, &[o], &[]).is_empty());
    }

    #[test]
    fn an_answer_above_the_count_is_a_double_processing() {
        let l = log(
            0,
            vec![
                step(1, Processed(1), 0, false),
                step(2, Processed(3), 0, false),
                step(3, Processed(4), 0, true),
            ],
        );
        let (_, _, v) = analyse_session(&l);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].invariant, Invariant::NoDuplicate);
        // A refused input may have been applied: not a duplicate.
        let l = log(
            0,
            vec![
                step(1, Processed(1), 0, false),
                step(2, Failed, 0, false),
                step(3, Processed(3), 0, true),
            ],
        );
        assert!(analyse_session(&l).2.is_empty());
    }

    #[test]
    fn silent_loss_is_caught_and_bounded_loss_is_judged_by_the_bound() {
        // Zero-loss session answered 2 after 2 acknowledged inputs: one lost silently.
        let l = log(
            0,
            vec![
                step(1, Processed(1), 0, false),
                step(2, Processed(2), 0, false),
                step(3, Processed(2), 0, true),
            ],
        );
        let (r, o, v) = analyse_session(&l);
        assert!(v.is_empty());
        let v = check_inputs(&r, &[o.unwrap()], &[]);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].invariant, Invariant::NoAckedLoss);
        // Bounded session: the client renumbered after losing input 2 (acked at 205 ms).
        let l = log(
            500,
            vec![
                step(1, Processed(1), 0, false),
                step(2, Processed(2), 0, false),
                step(3, Processed(2), 1, true),
            ],
        );
        let (r, o, v) = analyse_session(&l);
        assert!(v.is_empty());
        let o = o.unwrap();
        assert_eq!(o.applied, vec![1, 3]);
        // A failure 100 ms after the ack excuses it; none at all does not.
        assert!(check_inputs(&r, std::slice::from_ref(&o), &[305]).is_empty());
        assert_eq!(check_inputs(&r, &[o], &[]).len(), 1);
        // Refused inputs leave seq holes the client later counts as lost: not a loss.
        let l = log(
            0,
            vec![
                step(1, Processed(1), 0, false),
                step(2, Failed, 0, false),
                step(3, Failed, 0, false),
                step(4, Processed(2), 2, true),
            ],
        );
        let (r, o, v) = analyse_session(&l);
        assert!(v.is_empty(), "{v:?}");
        assert!(check_inputs(&r, &[o.unwrap()], &[]).is_empty());
        // Three refused inputs, the session resumed expecting the 2nd seq of them: the oldest
        // refused one was applied after all (not a double processing), the other two skipped.
        let l = log(
            0,
            vec![
                step(1, Processed(1), 0, false),
                step(2, Failed, 0, false),
                step(3, Failed, 0, false),
                step(4, Failed, 0, false),
                step(5, Processed(3), 2, true),
            ],
        );
        let (r, o, v) = analyse_session(&l);
        assert!(v.is_empty(), "{v:?}");
        let o = o.unwrap();
        assert_eq!(o.applied, vec![1, 2, 5]);
        assert!(check_inputs(&r, &[o], &[]).is_empty());
    }

    #[test]
    fn a_session_without_a_final_answer_is_unaccounted_for() {
        let l = log(
            0,
            vec![step(1, Processed(1), 0, false), step(2, TimedOut, 0, true)],
        );
        let (r, o, _) = analyse_session(&l);
        assert!(o.is_none());
        let v = check_inputs(&r, &[], &[]);
        assert_eq!(v.len(), 1);
        assert!(v[0].detail.contains("never observed"), "{v:?}");
    }

    #[test]
    fn recovery_is_the_slowest_session_back() {
        let a = log(
            0,
            vec![
                step(1, Processed(1), 0, false),
                step(3, Processed(2), 0, false),
            ],
        );
        let b = log(
            0,
            vec![step(2, TimedOut, 0, false), step(5, Processed(2), 0, false)],
        );
        assert_eq!(recovery_ms(&[a.clone(), b.clone()], 150), Some(355));
        assert_eq!(recovery_ms(&[a, b], 600), None);
    }
}

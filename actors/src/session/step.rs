//! One step of a session: the handler on one input from one source ([`run_handler`]), the
//! runtime record's changes ([`ActorState::commit`]) and making it durable as the policy says
//! ([`ActorState::settle`]); the timer alarm. The actor ([`super::actor`]) decides which step runs
//! when.

use super::*;

pub(crate) struct ActorState<H: SessionHandler> {
    pub(super) shared: Arc<Shared<H>>,
    pub(super) state: H::State,
    /// The newest step processed (any source).
    pub(super) last_seq: Seq,
    pub(super) checkpointed_seq: Seq,
    pub(super) dirty_since: Option<Instant>,
    pub(super) last_activity: Instant,
    pub(super) timer: Option<tokio::task::JoinHandle<()>>,
    /// What the newest successful checkpoint reached.
    pub(super) last_outcome: PutOutcome,
    /// Why the newest checkpoint attempt failed (cleared by a successful one).
    pub(super) last_failure: Option<String>,
    /// Effects the next input of one source already ran (from a checkpoint's journal, or an
    /// input that panicked): replayed when that input is retried.
    pub(super) pending: Option<Pending>,
    /// Whether `pending` was read from a checkpoint (else: kept in memory after a panic).
    pub(super) pending_durable: bool,
    /// The runtime record: where each source stands, timers, answered calls, kept streams.
    pub(super) sys: Sys,
    /// Wakes the actor when its earliest timer is due: (due, task).
    pub(super) alarm: Option<(u64, tokio::task::JoinHandle<()>)>,
}

/// Whether a handler call is a live input or the replay of a journaled one after a restart.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Call {
    Live,
    Replay,
}

/// Most timers fired in one go (queued inputs get their turn in between).
pub(super) const MAX_FIRES_PER_WAKE: usize = 64;

/// Runs the handler on one input, measuring busy time (time inside polls). A panic is caught and
/// returned as `Err(message)` so the caller can answer the client before the actor fails. Live
/// calls go through the host's fault hooks first, if it has any ([`crate::faults`]).
async fn run_handler<H: SessionHandler>(
    shared: &Shared<H>,
    state: &mut H::State,
    seq: Seq,
    source: &Source,
    input: H::Input,
    call: Call,
) -> Result<Result<H::Output, HandlerError>, String> {
    use futures::FutureExt;
    let ctx = shared.ctx(seq, source.clone());
    let injected = match (&shared.faults, call) {
        (Some(f), Call::Live) => f.decide(shared.id.as_str()),
        _ => Default::default(),
    };
    if let Some(d) = injected.delay {
        tokio::time::sleep(d).await;
    }
    let mut busy = Duration::ZERO;
    let started = Instant::now();
    let out = {
        let handler = &shared.handler;
        let mut fut = std::pin::pin!(async move {
            if injected.panic {
                panic!("injected handler panic (fault hook) at {seq}");
            }
            handler.handle(state, input, &ctx).await
        });
        std::panic::AssertUnwindSafe(std::future::poll_fn(|cx| {
            let t = Instant::now();
            let r = fut.as_mut().poll(cx);
            busy += t.elapsed();
            r
        }))
        .catch_unwind()
        .await
    };
    shared
        .usage
        .handler_busy_ns
        .fetch_add(busy.as_nanos() as u64, Ordering::Relaxed);
    if matches!(call, Call::Live) {
        shared.metrics.observe_handler(started.elapsed());
    }
    out.map_err(|payload| {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_string());
        format!("handler panicked at {seq}: {msg}")
    })
}

/// How a processed step ended up, durability-wise.
pub(super) enum Settled {
    /// Acknowledge it with this durability.
    Acked {
        durable: bool,
        copies: u32,
        not_durable: Option<String>,
    },
    /// Not durable: answer this error; the session went back to its newest stored checkpoint.
    Refused(SessionError),
    /// This holder is fenced: answer this error; the session stopped.
    Fenced(SessionError),
}

/// What a step did.
type Ran<O> = (
    Result<Result<O, HandlerError>, String>,
    Vec<crate::effects::Entry>,
);

impl<H: SessionHandler> ActorState<H> {
    pub(super) fn checkpoint(&mut self) -> Result<Seq, SessionError> {
        if self.checkpointed_seq == self.last_seq && self.dirty_since.is_none() {
            return Ok(self.last_seq);
        }
        match self
            .shared
            .write_checkpoint(&self.state, self.last_seq, &self.sys)
        {
            Ok(outcome) => {
                self.last_outcome = outcome;
                self.last_failure = None;
            }
            Err(e) => {
                self.last_failure = Some(e.to_string());
                return Err(e);
            }
        }
        self.checkpointed_seq = self.last_seq;
        self.dirty_since = None;
        lock(&self.shared.journal).retain(|(s, _, _, _)| *s > self.last_seq);
        Ok(self.last_seq)
    }

    /// The recorded effects of `source`'s input, if the pending journal is its.
    pub(super) fn take_pending(&mut self, source: &Source) -> (Vec<crate::effects::Entry>, bool) {
        match self.pending.take() {
            Some(p) if &p.source == source => (p.entries, self.pending_durable),
            other => {
                self.pending = other;
                (Vec::new(), true)
            }
        }
    }

    /// Runs one step: the handler on `input` from `source`, then (unless it panicked) the
    /// runtime record's changes. Returns what the handler did and the effects it recorded.
    pub(super) async fn step(
        &mut self,
        source: &Source,
        chain: Vec<String>,
        input: H::Input,
        call: Call,
        recorded: Vec<crate::effects::Entry>,
        durable: bool,
    ) -> Ran<H::Output> {
        let sh = self.shared.clone();
        let step = self.last_seq.next();
        sh.ctx_base.begin_turn(
            source.clone(),
            chain,
            self.sys.timers.iter().map(|t| t.id.clone()).collect(),
        );
        sh.ctx_base
            .effects
            .begin(step, source.clone(), recorded, durable);
        let ran = run_handler(&sh, &mut self.state, step, source, input, call).await;
        let effects = sh.ctx_base.effects.finish();
        let ops = sh.ctx_base.end_turn();
        if let Ok(out) = &ran {
            self.commit(step, source, out, ops);
        }
        (ran, effects)
    }

    /// The runtime record after step `step` from `source` completed with `output`.
    pub(super) fn commit(
        &mut self,
        step: Seq,
        source: &Source,
        output: &Result<H::Output, HandlerError>,
        ops: Vec<TimerOp>,
    ) {
        self.last_seq = step;
        match source {
            Source::Client(seq) => {
                self.sys.client_seq = *seq;
                let answer = match output {
                    Ok(o) => serde_json::json!({ "output": o }),
                    Err(e) => serde_json::json!({ "error": e }),
                };
                let answer = answer.to_string();
                self.shared
                    .ctx_base
                    .streams
                    .finish(*seq, answer.clone(), &mut self.sys);
                self.sys.remember_answer(*seq, answer);
                self.shared.last_seq.store(seq.0, Ordering::Release);
            }
            Source::Timer(id) => self.sys.timers.retain(|t| &t.id != id),
            Source::Call { key, .. } => {
                let answer: Result<serde_json::Value, HandlerError> = match output {
                    Ok(o) => Ok(serde_json::to_value(o).unwrap_or(serde_json::Value::Null)),
                    Err(e) => Err(e.clone()),
                };
                self.sys.remember_call(
                    key.clone(),
                    serde_json::to_string(&answer).unwrap_or_default(),
                );
            }
        }
        for op in ops {
            match op {
                TimerOp::Add(t) => {
                    if self.sys.timers.iter().any(|x| x.id == t.id) {
                        continue;
                    }
                    if self.sys.timers.len() >= crate::record::MAX_TIMERS {
                        tracing::warn!(session = %self.shared.id, timer = %t.id, "timer dropped: too many pending");
                        continue;
                    }
                    self.sys.timers.push(t);
                }
                TimerOp::Cancel(id) => self.sys.timers.retain(|t| t.id != id),
            }
        }
    }

    /// Makes a processed step durable as the policy says (`journaled`: what a periodic session
    /// replays after a restart). `Err`: restart the session.
    pub(super) fn settle(
        &mut self,
        myself: &ActorRef<SessionMsg<H>>,
        journaled: Option<Journaled<H>>,
    ) -> Result<Settled, ActorProcessingErr> {
        let sh = self.shared.clone();
        match sh.policy.mode {
            CheckpointMode::Synchronous => match self.checkpoint() {
                Ok(_) => {
                    let (durable, not_durable) = durability(&sh.policy, self.last_outcome);
                    Ok(Settled::Acked {
                        durable,
                        copies: self.last_outcome.copies,
                        not_durable,
                    })
                }
                Err(e @ SessionError::Fenced { .. }) => {
                    sh.stop_with(e.to_string());
                    myself.stop(Some("fenced".into()));
                    Ok(Settled::Fenced(e))
                }
                Err(e) => {
                    // Not durable: do not acknowledge, and drop the in-memory state that
                    // includes the input by going back to the newest stored checkpoint. A
                    // failing store is not a handler crash: reloading in place does not count
                    // against the restart intensity, so a disk that fails for a while (every
                    // retry refused) does not stop the session for good.
                    match sh.load() {
                        Ok(Some((seq, state, sys, stored))) => {
                            self.state = state;
                            self.last_seq = seq;
                            self.checkpointed_seq = seq;
                            self.dirty_since = None;
                            sh.last_seq.store(sys.client_seq.0, Ordering::Release);
                            self.sys = sys;
                            // The input's effects, if stored: its retry replays them.
                            self.pending = stored;
                            self.pending_durable = true;
                            Ok(Settled::Refused(e))
                        }
                        // Unreadable too: restart (counted) from whatever can be read.
                        _ => Err(e.to_string().into()),
                    }
                }
            },
            CheckpointMode::Periodic { max_interval } => {
                let len = {
                    let mut j = lock(&sh.journal);
                    if let Some(i) = journaled {
                        j.push(i);
                    }
                    j.len()
                };
                let since = *self.dirty_since.get_or_insert_with(Instant::now);
                let mut covered = None;
                if since.elapsed() >= checkpoint_due(max_interval) || len >= MAX_JOURNAL {
                    match self.checkpoint() {
                        Ok(_) => covered = Some(self.last_outcome),
                        Err(e @ SessionError::Fenced { .. }) => {
                            sh.stop_with(e.to_string());
                            myself.stop(Some("fenced".into()));
                            return Ok(Settled::Fenced(e));
                        }
                        Err(e) => {
                            tracing::warn!(session = %sh.id, error = %e, "periodic checkpoint failed; will retry")
                        }
                    }
                }
                Ok(match covered {
                    Some(o) => {
                        let (durable, not_durable) = durability(&sh.policy, o);
                        Settled::Acked {
                            durable,
                            copies: o.copies,
                            not_durable,
                        }
                    }
                    None => Settled::Acked {
                        durable: false,
                        copies: 0,
                        not_durable: Some(format!(
                            "not checkpointed yet: bounded-loss session, checkpoints within {max_interval:?}"
                        )),
                    },
                })
            }
        }
    }

    /// What a periodic session keeps to replay this step after a restart.
    pub(super) fn journaled(
        &self,
        source: &Source,
        input: &H::Input,
    ) -> Option<(Source, H::Input)> {
        match self.shared.policy.mode {
            CheckpointMode::Periodic { .. } => Some((source.clone(), input.clone())),
            CheckpointMode::Synchronous => None,
        }
    }

    /// A bounded-loss session whose checkpoints have failed for longer than its loss bound
    /// acknowledges nothing more until one succeeds: tries once now. `Err`: the error to answer.
    pub(super) fn catch_up(
        &mut self,
        myself: &ActorRef<SessionMsg<H>>,
    ) -> Result<(), SessionError> {
        let sh = self.shared.clone();
        if let (CheckpointMode::Periodic { max_interval }, Some(since)) =
            (sh.policy.mode, self.dirty_since)
        {
            if since.elapsed() >= max_interval {
                match self.checkpoint() {
                    Ok(_) => {}
                    Err(e @ SessionError::Fenced { .. }) => {
                        sh.stop_with(e.to_string());
                        myself.stop(Some("fenced".into()));
                        return Err(e);
                    }
                    Err(e) => {
                        return Err(SessionError::CheckpointsBehind {
                            session: sh.id.clone(),
                            seq: self.last_seq.next(),
                            behind_ms: since.elapsed().as_millis() as u64,
                            bound_ms: max_interval.as_millis() as u64,
                            reason: e.to_string(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs a live step from `source` and settles it. `Ok(None)`: it panicked (the error to
    /// answer is in the `Err` of the outer result: the actor fails).
    pub(super) async fn live(
        &mut self,
        myself: &ActorRef<SessionMsg<H>>,
        source: Source,
        chain: Vec<String>,
        input: H::Input,
    ) -> Result<(Result<H::Output, HandlerError>, Settled), String> {
        let keep = self.journaled(&source, &input);
        let (recorded, durable) = self.take_pending(&source);
        let step = self.last_seq.next();
        let (ran, effects) = self
            .step(&source, chain, input, Call::Live, recorded, durable)
            .await;
        let output = match ran {
            Ok(o) => o,
            Err(reason) => {
                // The incarnation that retries this input replays its effects.
                if !effects.is_empty() {
                    *lock(&self.shared.inflight) = Some(Pending {
                        source,
                        step,
                        entries: effects,
                    });
                }
                return Err(reason);
            }
        };
        self.shared.usage.inputs.fetch_add(1, Ordering::Relaxed);
        let journaled = keep.map(|(s, i)| (step, s, i, effects));
        let settled = self.settle(myself, journaled).map_err(|e| e.to_string())?;
        self.arm(myself);
        Ok((output, settled))
    }

    /// Arms the alarm for the earliest timer (re-arms only when it changed).
    pub(super) fn arm(&mut self, myself: &ActorRef<SessionMsg<H>>) {
        let next = self.sys.next_timer().map(|t| t.due_ms);
        if let (Some(due), Some((at, _))) = (next, &self.alarm) {
            if *at == due {
                return;
            }
        }
        if let Some((_, h)) = self.alarm.take() {
            h.abort();
        }
        if let Some(due) = next {
            self.alarm = Some((due, alarm(myself.clone(), due)));
        }
    }
}

/// A task that sends `Fire` to `me` at `due` (Unix ms).
pub(super) fn alarm<H: SessionHandler>(
    me: ActorRef<SessionMsg<H>>,
    due: u64,
) -> tokio::task::JoinHandle<()> {
    let wait = Duration::from_millis(due.saturating_sub(crate::handler::now_ms()));
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        let _ = me.cast(SessionMsg::Fire);
    })
}

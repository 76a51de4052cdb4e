//! The session actor (one per live session) and the state it shares with its handle.

use std::collections::VecDeque;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use opengrid_session::{
    Checkpoint, CheckpointMode, CheckpointPolicy, CheckpointStore, Epoch, PutOutcome, Seq,
    SessionId, StoreError,
};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Notify};

use crate::error::SessionError;
use crate::handler::{HandlerError, SessionContext, SessionHandler, TimerOp};
use crate::record::{Pending, Source, Sys};
use crate::supervisor::RestartIntensity;
use crate::transfer::{MovedTo, Relay};
use crate::usage::UsageCounters;

/// Journal length at which a periodic-policy session checkpoints early (bounds replay memory).
pub const MAX_JOURNAL: usize = 10_000;

/// The answer to one input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply<O> {
    /// The input was processed; `output` is the handler's answer (or its error).
    Processed {
        /// The input's seq.
        seq: Seq,
        /// Handler output or handler error.
        output: Result<O, HandlerError>,
        /// Whether the state including this input is durable: checkpointed, synced on the holder,
        /// and on at least the session's `min_copies` copies beyond it. Always true for an
        /// acknowledged zero-loss input unless the holder does not sync (`fsync = false`).
        durable: bool,
        /// Copies beyond the holder's own of the checkpoint that covers this input (0 when it
        /// is not checkpointed yet).
        #[serde(default)]
        copies: u32,
        /// Why `durable` is false, when it is.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        not_durable: Option<String>,
    },
    /// The seq was already processed; nothing happened.
    Duplicate {
        /// The input's seq.
        seq: Seq,
        /// The newest processed seq.
        last: Seq,
    },
}

impl<O> Reply<O> {
    /// The seq this reply answers.
    pub fn seq(&self) -> Seq {
        match self {
            Reply::Processed { seq, .. } | Reply::Duplicate { seq, .. } => *seq,
        }
    }

    /// Maps the output type.
    pub fn map<P>(self, f: impl FnOnce(O) -> P) -> Reply<P> {
        match self {
            Reply::Processed {
                seq,
                output,
                durable,
                copies,
                not_durable,
            } => Reply::Processed {
                seq,
                output: output.map(f),
                durable,
                copies,
                not_durable,
            },
            Reply::Duplicate { seq, last } => Reply::Duplicate { seq, last },
        }
    }
}

type ReplyTx<O> = oneshot::Sender<Result<Reply<O>, SessionError>>;

/// Where a call's answer goes: the callee handler's answer (JSON) or why there is none.
pub(crate) type CallTx =
    oneshot::Sender<Result<Result<serde_json::Value, HandlerError>, SessionError>>;

/// Messages of the session actor.
pub enum SessionMsg<H: SessionHandler> {
    /// A client input.
    Input {
        /// Its seq.
        seq: Seq,
        /// Payload.
        input: H::Input,
        /// Where the answer goes.
        reply: ReplyTx<H::Output>,
    },
    /// A call from another session (ADR 0033): exactly once by `key`.
    Call {
        /// The caller's idempotency key for the call.
        key: String,
        /// The calling session.
        caller: String,
        /// The sessions waiting on it, oldest first.
        chain: Vec<String>,
        /// Payload.
        input: H::Input,
        /// Where the answer goes.
        reply: CallTx,
    },
    /// A timer the session set may be due.
    Fire,
    /// Timer: periodic checkpoint and idle check.
    Tick,
    /// Write a checkpoint now; answers the seq it covers.
    Checkpoint(oneshot::Sender<Result<Seq, SessionError>>),
    /// Checkpoint and hibernate now (if nothing is queued).
    Hibernate(oneshot::Sender<bool>),
    /// End the session for good (its checkpoints are deleted; the fence stays).
    Close(oneshot::Sender<()>),
    /// Stop serving without deleting anything (host shutdown, release after a transfer).
    Release(oneshot::Sender<Result<Seq, SessionError>>),
}

impl<H: SessionHandler> ractor::Message for SessionMsg<H> {}

/// Where a session is, as its handle sees it.
pub(crate) enum Status<H: SessionHandler> {
    Running(ActorRef<SessionMsg<H>>),
    /// Suspended by a [`Transfer`](crate::Transfer): the actor drains what is queued; new inputs
    /// wait.
    Suspended(ActorRef<SessionMsg<H>>),
    /// Lives elsewhere now: inputs go through the relay to the new holder, or are redirected.
    Moved(MovedTo, Option<Arc<dyn Relay>>),
    Starting,
    Hibernated,
    Stopped(String),
    Closed,
}

/// Public view of a session's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum SessionStatus {
    /// Serving.
    Running,
    /// Suspended while the session moves to another node: inputs wait.
    Frozen,
    /// Handed over to another node.
    Moved {
        /// Client-facing address of the new holder.
        location: String,
        /// The new holder's epoch.
        epoch: Epoch,
    },
    /// Being (re)started.
    Starting,
    /// Checkpointed and idle; wakes on input.
    Hibernated,
    /// Stopped for good, with the reason.
    Stopped {
        /// Why.
        reason: String,
    },
    /// Closed by request.
    Closed,
}

/// An input processed since the last checkpoint, with its effects' results (replayed after a
/// restart).
pub(crate) type Journaled<H> = (
    Seq,
    crate::record::Source,
    <H as SessionHandler>::Input,
    Vec<crate::effects::Entry>,
);

/// What [`Shared::load`] finds: the checkpoint's step and state, the runtime record, and the
/// effect journal of the input after it.
pub(crate) type Loaded<H> = (
    Seq,
    <H as SessionHandler>::State,
    crate::record::Sys,
    Option<crate::record::Pending>,
);

/// State shared between a session's handle, its actor incarnations and the supervisor.
pub(crate) struct Shared<H: SessionHandler> {
    pub id: SessionId,
    pub handler: Arc<H>,
    pub policy: CheckpointPolicy,
    pub epoch: AtomicU64,
    pub store: Arc<dyn CheckpointStore>,
    pub usage: Arc<UsageCounters>,
    pub ctx_base: Arc<crate::handler::ContextBase>,
    pub queued: AtomicUsize,
    pub capacity: usize,
    pub status: Mutex<Status<H>>,
    pub changed: Notify,
    /// Inputs processed since the last checkpoint (periodic policy), with the results of their
    /// effects, replayed after a restart.
    pub journal: Mutex<Vec<Journaled<H>>>,
    /// The effects an input that panicked had run, for the incarnation that retries it.
    pub inflight: Mutex<Option<crate::record::Pending>>,
    /// The newest checkpoint written or loaded: the base an in-flight input's effect journal is
    /// stored with (ADR 0032).
    pub last_cp: Mutex<Option<Arc<Checkpoint>>>,
    pub restarts: Mutex<VecDeque<Instant>>,
    pub intensity: RestartIntensity,
    /// The newest client seq processed (what clients number from).
    pub last_seq: AtomicU64,
    pub tick: Duration,
    pub supervisor: ActorRef<crate::supervisor::SupervisorMsg>,
    /// Fault hooks (tests and chaos only), consulted for live inputs.
    pub faults: Option<Arc<crate::faults::FaultHooks>>,
    /// The host's instruments.
    pub metrics: Arc<crate::metrics::ActorMetrics>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<H: SessionHandler> Shared<H> {
    pub fn epoch(&self) -> Epoch {
        Epoch(self.epoch.load(Ordering::Acquire))
    }

    pub fn status(&self) -> SessionStatus {
        match &*lock(&self.status) {
            Status::Running(_) => SessionStatus::Running,
            Status::Suspended(_) => SessionStatus::Frozen,
            Status::Moved(m, _) => SessionStatus::Moved {
                location: m.location.clone(),
                epoch: m.epoch,
            },
            Status::Starting => SessionStatus::Starting,
            Status::Hibernated => SessionStatus::Hibernated,
            Status::Stopped(r) => SessionStatus::Stopped { reason: r.clone() },
            Status::Closed => SessionStatus::Closed,
        }
    }

    pub fn set_status(&self, s: Status<H>) {
        *lock(&self.status) = s;
        self.changed.notify_waiters();
    }

    pub fn stop_with(&self, reason: String) {
        let mut g = lock(&self.status);
        if !matches!(*g, Status::Closed) {
            tracing::error!(session = %self.id, %reason, "session stopped");
            *g = Status::Stopped(reason);
        }
        drop(g);
        self.changed.notify_waiters();
    }

    pub fn stopped_error(&self) -> Option<SessionError> {
        match &*lock(&self.status) {
            Status::Stopped(reason) => Some(SessionError::Stopped {
                session: self.id.clone(),
                reason: reason.clone(),
            }),
            Status::Closed => Some(SessionError::Closed {
                session: self.id.clone(),
            }),
            Status::Moved(m, None) => Some(SessionError::Moved {
                session: self.id.clone(),
                location: m.location.clone(),
                epoch: m.epoch,
            }),
            _ => None,
        }
    }

    /// Records a restart; `Err(reason)` when the intensity limit is exceeded.
    pub fn record_restart(&self, cause: &str) -> Result<(), String> {
        self.usage.restarts.fetch_add(1, Ordering::Relaxed);
        let mut r = lock(&self.restarts);
        let now = Instant::now();
        while r
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.intensity.within)
        {
            r.pop_front();
        }
        r.push_back(now);
        if r.len() > self.intensity.max_restarts as usize {
            Err(format!(
                "restart intensity exceeded: {} restarts within {:?} (limit {}); last failure: {cause}",
                r.len(),
                self.intensity.within,
                self.intensity.max_restarts
            ))
        } else {
            Ok(())
        }
    }

    fn ctx(&self, seq: Seq, source: crate::record::Source) -> SessionContext {
        SessionContext::new(self.ctx_base.clone(), self.epoch(), seq, source)
    }

    /// Writes a checkpoint of `state` and the runtime record `sys` at step `seq`; a zero-loss
    /// session's write must reach its `min_copies` copies beyond the holder.
    fn write_checkpoint(
        &self,
        state: &H::State,
        seq: Seq,
        sys: &crate::record::Sys,
    ) -> Result<PutOutcome, SessionError> {
        let started = Instant::now();
        let bytes = self
            .handler
            .encode_state(state)
            .map_err(|e| SessionError::NotDurable {
                session: self.id.clone(),
                seq,
                reason: e.to_string(),
            })?;
        let cp = Checkpoint::new(
            self.id.clone(),
            self.epoch(),
            seq,
            self.handler.id(),
            self.handler.version(),
            bytes,
        )
        .with_journal(crate::record::encode(seq, sys, None));
        self.put_with_copies(cp, started, seq)
    }

    /// Writes `cp` with the copies the policy asks for.
    fn put_with_copies(
        &self,
        cp: Checkpoint,
        started: Instant,
        seq: Seq,
    ) -> Result<PutOutcome, SessionError> {
        let min_copies = if self.policy.is_synchronous() {
            self.policy.min_copies
        } else {
            0
        };
        match self.store.put_counted(&cp, min_copies) {
            Ok(outcome) => {
                self.metrics.observe_checkpoint(started.elapsed());
                self.usage.checkpoints.fetch_add(1, Ordering::Relaxed);
                self.usage
                    .checkpoint_bytes
                    .fetch_add(cp.state.len() as u64, Ordering::Relaxed);
                *lock(&self.last_cp) = Some(Arc::new(cp));
                Ok(outcome)
            }
            Err(StoreError::TooFewCopies {
                have, need, reason, ..
            }) => Err(SessionError::TooFewCopies {
                session: self.id.clone(),
                seq,
                have,
                need,
                reason,
            }),
            Err(StoreError::StaleEpoch { current, .. }) => Err(SessionError::Fenced {
                session: self.id.clone(),
                ours: self.epoch(),
                current,
            }),
            Err(e) => Err(SessionError::NotDurable {
                session: self.id.clone(),
                seq,
                reason: e.to_string(),
            }),
        }
    }

    /// Loads the newest checkpoint (or `None`), checking handler identity and fencing; with the
    /// effect journal of the input after it, if it holds one.
    pub fn load(&self) -> Result<Option<Loaded<H>>, String> {
        let cp = self
            .store
            .get_latest(&self.id)
            .map_err(|e| format!("cannot read checkpoint: {e}"))?;
        let Some(cp) = cp else { return Ok(None) };
        if cp.handler_id != self.handler.id() || cp.handler_version != self.handler.version() {
            return Err(format!(
                "checkpoint was written by handler {}@{}, this node runs {}@{}",
                cp.handler_id,
                cp.handler_version,
                self.handler.id(),
                self.handler.version()
            ));
        }
        if cp.epoch > self.epoch() {
            return Err(format!(
                "fenced: checkpoint epoch {} is newer than ours {}",
                cp.epoch,
                self.epoch()
            ));
        }
        let state = self
            .handler
            .decode_state(&cp.state)
            .map_err(|e| format!("checkpoint state unreadable: {e}"))?;
        let (sys, pending) = crate::record::decode(cp.seq, &cp.journal);
        let pending = pending.filter(|p| p.step == cp.seq.next());
        let seq = cp.seq;
        *lock(&self.last_cp) = Some(Arc::new(cp));
        Ok(Some((seq, state, sys, pending)))
    }
}

impl<H: SessionHandler> crate::effects::JournalSink for Shared<H> {
    fn persist(&self, journal: &crate::record::Pending) -> Result<bool, String> {
        let Some(base) = lock(&self.last_cp).clone() else {
            return Ok(false);
        };
        if base.seq.next() != journal.step {
            // Inputs since the stored state are not durable themselves (bounded-loss session
            // between checkpoints): the journal stays in memory with them.
            return Ok(false);
        }
        let cp = Checkpoint::new(
            self.id.clone(),
            self.epoch(),
            base.seq,
            self.handler.id(),
            self.handler.version(),
            base.state.clone(),
        )
        .with_journal(crate::record::encode(
            base.seq,
            &crate::record::decode(base.seq, &base.journal).0,
            Some(journal),
        ));
        let min_copies = if self.policy.is_synchronous() {
            self.policy.min_copies
        } else {
            0
        };
        let r = self
            .store
            .put_counted(&cp, min_copies)
            .map(|_| true)
            .map_err(|e| e.to_string());
        tracing::debug!(session = %self.id, step = %journal.step, effects = journal.entries.len(), ok = r.is_ok(), "effect journal written");
        r
    }
}

/// When a bounded-loss session checkpoints: half its loss bound after the first input not yet
/// checkpointed. The other half covers the tick that notices (an eighth of the bound at most)
/// and the replicated write itself, so an acknowledged input is durable within the bound. (At
/// the full bound, a crash right after the due time lost inputs acknowledged a little more than
/// the bound earlier: found by the chaos suite's kill-node scenario.)
pub(crate) fn checkpoint_due(max_interval: Duration) -> Duration {
    max_interval / 2
}

/// Whether an input covered by a checkpoint with `outcome` counts as durable under `policy`,
/// and if not, why.
fn durability(policy: &CheckpointPolicy, outcome: PutOutcome) -> (bool, Option<String>) {
    if !outcome.synced {
        (
            false,
            Some(
                "this node writes checkpoints without fsync (fsync = false): a power failure can lose them"
                    .into(),
            ),
        )
    } else if outcome.copies < policy.min_copies {
        (
            false,
            Some(format!(
                "{} of {} copies beyond the holder",
                outcome.copies, policy.min_copies
            )),
        )
    } else {
        (true, None)
    }
}

/// The session actor. Generic over the handler; one incarnation per (re)start.
pub(crate) struct SessionActor<H>(PhantomData<fn() -> H>);

impl<H> SessionActor<H> {
    pub fn new() -> Self {
        SessionActor(PhantomData)
    }
}

pub(crate) struct ActorState<H: SessionHandler> {
    shared: Arc<Shared<H>>,
    state: H::State,
    /// The newest step processed (any source).
    last_seq: Seq,
    checkpointed_seq: Seq,
    dirty_since: Option<Instant>,
    last_activity: Instant,
    timer: Option<tokio::task::JoinHandle<()>>,
    /// What the newest successful checkpoint reached.
    last_outcome: PutOutcome,
    /// Why the newest checkpoint attempt failed (cleared by a successful one).
    last_failure: Option<String>,
    /// Effects the next input of one source already ran (from a checkpoint's journal, or an
    /// input that panicked): replayed when that input is retried.
    pending: Option<Pending>,
    /// Whether `pending` was read from a checkpoint (else: kept in memory after a panic).
    pending_durable: bool,
    /// The runtime record: where each source stands, timers, answered calls, kept streams.
    sys: Sys,
    /// Wakes the actor when its earliest timer is due: (due, task).
    alarm: Option<(u64, tokio::task::JoinHandle<()>)>,
}

/// Whether a handler call is a live input or the replay of a journaled one after a restart.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    Live,
    Replay,
}

/// Most timers fired in one go (queued inputs get their turn in between).
const MAX_FIRES_PER_WAKE: usize = 64;

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
enum Settled {
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
    fn checkpoint(&mut self) -> Result<Seq, SessionError> {
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
    fn take_pending(&mut self, source: &Source) -> (Vec<crate::effects::Entry>, bool) {
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
    async fn step(
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
    fn commit(
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
                self.shared.ctx_base.streams.finish(*seq, &mut self.sys);
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
    fn settle(
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
    fn journaled(&self, source: &Source, input: &H::Input) -> Option<(Source, H::Input)> {
        match self.shared.policy.mode {
            CheckpointMode::Periodic { .. } => Some((source.clone(), input.clone())),
            CheckpointMode::Synchronous => None,
        }
    }

    /// A bounded-loss session whose checkpoints have failed for longer than its loss bound
    /// acknowledges nothing more until one succeeds: tries once now. `Err`: the error to answer.
    fn catch_up(&mut self, myself: &ActorRef<SessionMsg<H>>) -> Result<(), SessionError> {
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
    async fn live(
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
    fn arm(&mut self, myself: &ActorRef<SessionMsg<H>>) {
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
fn alarm<H: SessionHandler>(me: ActorRef<SessionMsg<H>>, due: u64) -> tokio::task::JoinHandle<()> {
    let wait = Duration::from_millis(due.saturating_sub(crate::handler::now_ms()));
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        let _ = me.cast(SessionMsg::Fire);
    })
}

impl<H: SessionHandler> Actor for SessionActor<H> {
    type Msg = SessionMsg<H>;
    type State = ActorState<H>;
    type Arguments = Arc<Shared<H>>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        shared: Arc<Shared<H>>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let (last_seq, state, sys, stored) = match shared.load()? {
            Some(x) => x,
            None => return Err(format!("no checkpoint found for session {}", shared.id).into()),
        };
        shared.ctx_base.streams.load(&sys);
        shared.last_seq.store(sys.client_seq.0, Ordering::Release);
        let timer = Some(myself.send_interval(shared.tick, || SessionMsg::Tick));
        let mut st = ActorState {
            shared: shared.clone(),
            state,
            last_seq,
            checkpointed_seq: last_seq,
            dirty_since: None,
            last_activity: Instant::now(),
            timer,
            last_outcome: PutOutcome {
                copies: 0,
                synced: true,
            },
            last_failure: None,
            pending: None,
            pending_durable: true,
            sys,
            alarm: None,
        };
        // Replay inputs processed after the checkpoint (at-least-once at the handler), with the
        // results their effects recorded (the effects are not run again).
        let journal: Vec<Journaled<H>> = lock(&shared.journal)
            .iter()
            .filter(|(s, _, _, _)| *s > last_seq)
            .cloned()
            .collect();
        for (seq, source, input, effects) in journal {
            if seq != st.last_seq.next() {
                return Err(
                    format!("journal gap: expected {} got {}", st.last_seq.next(), seq).into(),
                );
            }
            let (ran, _) = st
                .step(&source, Vec::new(), input, Call::Replay, effects, true)
                .await;
            let _ = ran?;
        }
        // The effects of the input after these: from one that panicked here, else stored.
        let inflight = lock(&shared.inflight).take();
        st.pending_durable = inflight.is_none();
        st.pending = inflight
            .or(stored)
            .filter(|j| j.step == st.last_seq.next() || !matches!(j.source, Source::Client(_)));
        if let Some(j) = &st.pending {
            tracing::info!(session = %shared.id, source = ?j.source, effects = j.entries.len(), "effects recorded for the next input: its retry replays them");
        }
        shared
            .last_seq
            .store(st.sys.client_seq.0, Ordering::Release);
        st.dirty_since = (st.last_seq > st.checkpointed_seq).then(Instant::now);
        st.arm(&myself);
        Ok(st)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = st.timer.take() {
            t.abort();
        }
        if let Some((_, a)) = st.alarm.take() {
            a.abort();
        }
        st.shared.ctx_base.streams.wake_all();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SessionMsg::Input { seq, input, reply } => {
                st.shared.queued.fetch_sub(1, Ordering::AcqRel);
                st.last_activity = Instant::now();
                let sh = st.shared.clone();
                let last = st.sys.client_seq;
                if seq <= last {
                    sh.usage.duplicates.fetch_add(1, Ordering::Relaxed);
                    let _ = reply.send(Ok(Reply::Duplicate { seq, last }));
                    return Ok(());
                }
                if seq != last.next() {
                    let _ = reply.send(Err(SessionError::SeqGap {
                        session: sh.id.clone(),
                        expected: last.next(),
                        got: seq,
                    }));
                    return Ok(());
                }
                if let Err(e) = st.catch_up(&myself) {
                    let _ = reply.send(Err(e));
                    return Ok(());
                }
                match st
                    .live(&myself, Source::Client(seq), Vec::new(), input)
                    .await
                {
                    Ok((
                        output,
                        Settled::Acked {
                            durable,
                            copies,
                            not_durable,
                        },
                    )) => {
                        let _ = reply.send(Ok(Reply::Processed {
                            seq,
                            output,
                            durable,
                            copies,
                            not_durable,
                        }));
                    }
                    Ok((_, Settled::Refused(e) | Settled::Fenced(e))) => {
                        let _ = reply.send(Err(e));
                    }
                    Err(reason) => {
                        // The state may be half-updated: answer, then fail so the supervisor
                        // restarts from the last checkpoint (plus journal replay).
                        let _ = reply.send(Err(SessionError::HandlerPanicked {
                            session: sh.id.clone(),
                            seq,
                            reason: reason.clone(),
                        }));
                        return Err(reason.into());
                    }
                }
            }
            SessionMsg::Call {
                key,
                caller,
                chain,
                input,
                reply,
            } => {
                st.shared.queued.fetch_sub(1, Ordering::AcqRel);
                st.last_activity = Instant::now();
                let sh = st.shared.clone();
                if let Some(answer) = st.sys.call_answer(&key) {
                    // A retry of a call already answered: the same answer, nothing runs.
                    sh.usage.duplicates.fetch_add(1, Ordering::Relaxed);
                    let a = serde_json::from_str(answer).unwrap_or_else(|e| {
                        Err(HandlerError::new("call_forgotten", e.to_string()))
                    });
                    let _ = reply.send(Ok(a));
                    return Ok(());
                }
                if let Err(e) = crate::calls::check_chain(&chain, sh.id.as_str()) {
                    let _ = reply.send(Ok(Err(e)));
                    return Ok(());
                }
                if let Err(e) = st.catch_up(&myself) {
                    let _ = reply.send(Err(e));
                    return Ok(());
                }
                let step = st.last_seq.next();
                match st
                    .live(&myself, Source::Call { key, caller }, chain, input)
                    .await
                {
                    Ok((output, Settled::Acked { .. })) => {
                        let _ = reply.send(Ok(output
                            .map(|o| serde_json::to_value(o).unwrap_or(serde_json::Value::Null))));
                    }
                    Ok((_, Settled::Refused(e) | Settled::Fenced(e))) => {
                        let _ = reply.send(Err(e));
                    }
                    Err(reason) => {
                        let _ = reply.send(Err(SessionError::HandlerPanicked {
                            session: sh.id.clone(),
                            seq: step,
                            reason: reason.clone(),
                        }));
                        return Err(reason.into());
                    }
                }
            }
            SessionMsg::Fire => {
                st.alarm = None;
                // Only a serving holder fires: a frozen one (a handover in progress) leaves its
                // timers to whichever holder the session has after it.
                if !matches!(*lock(&st.shared.status), Status::Running(_)) {
                    st.alarm = Some((0, {
                        let me = myself.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            let _ = me.cast(SessionMsg::Fire);
                        })
                    }));
                    return Ok(());
                }
                st.last_activity = Instant::now();
                for _ in 0..MAX_FIRES_PER_WAKE {
                    let now = crate::handler::now_ms();
                    let Some(t) = st.sys.next_timer().filter(|t| t.due_ms <= now).cloned() else {
                        break;
                    };
                    let input: H::Input = match serde_json::from_str(&t.input) {
                        Ok(i) => i,
                        Err(e) => {
                            tracing::warn!(session = %st.shared.id, timer = %t.id, error = %e, "timer dropped: its input does not decode as the handler's input type");
                            st.sys.timers.retain(|x| x.id != t.id);
                            st.dirty_since.get_or_insert_with(Instant::now);
                            continue;
                        }
                    };
                    if st.catch_up(&myself).is_err() {
                        break;
                    }
                    match st
                        .live(&myself, Source::Timer(t.id.clone()), Vec::new(), input)
                        .await
                    {
                        Ok((output, Settled::Acked { .. })) => {
                            if let Err(e) = output {
                                tracing::info!(session = %st.shared.id, timer = %t.id, error = %e, "timer input answered with an error");
                            }
                            tracing::debug!(session = %st.shared.id, timer = %t.id, "timer fired");
                        }
                        Ok((_, Settled::Refused(_))) => break,
                        Ok((_, Settled::Fenced(_))) => return Ok(()),
                        Err(reason) => return Err(reason.into()),
                    }
                }
                st.arm(&myself);
                if st.alarm.is_none() && st.dirty_since.is_some() {
                    // A dropped timer is a change of the record: keep it.
                    let _ = st.checkpoint();
                }
            }
            SessionMsg::Tick => {
                let sh = st.shared.clone();
                if let (CheckpointMode::Periodic { max_interval }, Some(since)) =
                    (sh.policy.mode, st.dirty_since)
                {
                    if since.elapsed() >= checkpoint_due(max_interval) {
                        match st.checkpoint() {
                            Ok(_) => {}
                            Err(e @ SessionError::Fenced { .. }) => {
                                sh.stop_with(e.to_string());
                                myself.stop(Some("fenced".into()));
                                return Ok(());
                            }
                            Err(e) => {
                                tracing::warn!(session = %sh.id, error = %e, "periodic checkpoint failed; will retry")
                            }
                        }
                    }
                }
                if st.last_activity.elapsed() >= sh.policy.idle_timeout
                    && sh.queued.load(Ordering::Acquire) == 0
                {
                    try_hibernate(&myself, st);
                }
            }
            SessionMsg::Checkpoint(reply) => {
                let r = st.checkpoint();
                if let Err(e @ SessionError::Fenced { .. }) = &r {
                    st.shared.stop_with(e.to_string());
                    myself.stop(Some("fenced".into()));
                }
                let _ = reply.send(r);
            }
            SessionMsg::Hibernate(reply) => {
                let _ = reply.send(try_hibernate(&myself, st));
            }
            SessionMsg::Close(reply) => {
                let sh = st.shared.clone();
                sh.set_status(Status::Closed);
                if let Err(e) = sh.store.delete(&sh.id) {
                    tracing::warn!(session = %sh.id, error = %e, "could not delete checkpoints of closed session");
                }
                lock(&sh.journal).clear();
                myself.stop(Some("closed".into()));
                let _ = reply.send(());
            }
            SessionMsg::Release(reply) => {
                let r = st.checkpoint();
                if r.is_ok() {
                    {
                        let mut g = lock(&st.shared.status);
                        if matches!(*g, Status::Running(_) | Status::Suspended(_)) {
                            *g = Status::Hibernated;
                        }
                    }
                    st.shared.changed.notify_waiters();
                    myself.stop(Some("released".into()));
                }
                let _ = reply.send(r);
            }
        }
        Ok(())
    }
}

/// Checkpoints and stops the actor if no input is queued. Returns whether it hibernated. A
/// session with a pending timer is woken for it.
fn try_hibernate<H: SessionHandler>(
    myself: &ActorRef<SessionMsg<H>>,
    st: &mut ActorState<H>,
) -> bool {
    if st.checkpoint().is_err() {
        return false;
    }
    let sh = &st.shared;
    {
        let mut g = lock(&sh.status);
        // Senders increment `queued` under this lock, so no input can slip in after the check.
        if sh.queued.load(Ordering::Acquire) != 0 || !matches!(*g, Status::Running(_)) {
            return false;
        }
        *g = Status::Hibernated;
    }
    sh.changed.notify_waiters();
    tracing::debug!(session = %sh.id, seq = %st.last_seq, "hibernated");
    if let Some(t) = st.sys.next_timer() {
        let wait = Duration::from_millis(t.due_ms.saturating_sub(crate::handler::now_ms()));
        let shared = sh.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            wake_for_timer(shared).await;
        });
    }
    myself.stop(Some("hibernated".into()));
    true
}

/// Wakes a hibernated session whose timer is due (its actor fires it when it starts).
async fn wake_for_timer<H: SessionHandler>(shared: Arc<Shared<H>>) {
    let wake = {
        let mut g = lock(&shared.status);
        if matches!(*g, Status::Hibernated) {
            *g = Status::Starting;
            true
        } else {
            false
        }
    };
    if wake {
        tracing::debug!(session = %shared.id, "woken for a timer");
        if crate::host::spawn_via(&shared.supervisor, shared.clone())
            .await
            .is_err()
            && matches!(shared.status(), SessionStatus::Starting)
        {
            shared.set_status(Status::Hibernated);
        }
    }
}

/// The supervisor's type-erased view of a session.
pub(crate) trait Slot: Send + Sync + 'static {
    fn session_id(&self) -> &SessionId;
    /// Spawns a new incarnation linked to `supervisor`; on success the session is Running.
    fn spawn(
        self: Arc<Self>,
        supervisor: ActorCell,
    ) -> BoxFuture<'static, Result<ActorCell, String>>;
    fn record_restart(&self, cause: &str) -> Result<(), String>;
    fn mark_starting(&self);
    fn stop_with(&self, reason: String);
    fn is_closed_or_stopped(&self) -> bool;
}

impl<H: SessionHandler> Slot for Shared<H> {
    fn session_id(&self) -> &SessionId {
        &self.id
    }

    fn spawn(
        self: Arc<Self>,
        supervisor: ActorCell,
    ) -> BoxFuture<'static, Result<ActorCell, String>> {
        Box::pin(async move {
            let (actor, _join) =
                Actor::spawn_linked(None, SessionActor::<H>::new(), self.clone(), supervisor)
                    .await
                    .map_err(|e| e.to_string())?;
            self.queued.store(0, Ordering::Release);
            let cell = actor.get_cell();
            self.set_status(Status::Running(actor));
            Ok(cell)
        })
    }

    fn record_restart(&self, cause: &str) -> Result<(), String> {
        Shared::record_restart(self, cause)
    }

    fn mark_starting(&self) {
        let mut g = lock(&self.status);
        if matches!(*g, Status::Running(_) | Status::Suspended(_)) {
            *g = Status::Starting;
        }
    }

    fn stop_with(&self, reason: String) {
        Shared::stop_with(self, reason)
    }

    fn is_closed_or_stopped(&self) -> bool {
        matches!(
            *lock(&self.status),
            Status::Closed | Status::Stopped(_) | Status::Moved(..)
        )
    }
}

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
use crate::handler::{HandlerError, SessionContext, SessionHandler};
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
    <H as SessionHandler>::Input,
    Vec<crate::effects::Entry>,
);

/// What [`Shared::load`] finds: the checkpoint's seq and state, and the effect journal of the
/// input after it.
pub(crate) type Loaded<H> = (
    Seq,
    <H as SessionHandler>::State,
    Option<crate::effects::Journal>,
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
    pub inflight: Mutex<Option<crate::effects::Journal>>,
    /// The newest checkpoint written or loaded: the base an in-flight input's effect journal is
    /// stored with (ADR 0032).
    pub last_cp: Mutex<Option<Arc<Checkpoint>>>,
    pub restarts: Mutex<VecDeque<Instant>>,
    pub intensity: RestartIntensity,
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

    fn ctx(&self, seq: Seq) -> SessionContext {
        SessionContext::new(self.ctx_base.clone(), self.epoch(), seq)
    }

    /// Writes a checkpoint of `state` at `seq`; a zero-loss session's write must reach its
    /// `min_copies` copies beyond the holder.
    fn write_checkpoint(&self, state: &H::State, seq: Seq) -> Result<PutOutcome, SessionError> {
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
        );
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
        let journal =
            crate::effects::Journal::decode(&cp.journal).filter(|j| j.seq == cp.seq.next());
        let seq = cp.seq;
        *lock(&self.last_cp) = Some(Arc::new(cp));
        Ok(Some((seq, state, journal)))
    }
}

impl<H: SessionHandler> crate::effects::JournalSink for Shared<H> {
    fn persist(&self, journal: &crate::effects::Journal) -> Result<bool, String> {
        let Some(base) = lock(&self.last_cp).clone() else {
            return Ok(false);
        };
        if base.seq.next() != journal.seq {
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
        .with_journal(journal.encode());
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
        tracing::debug!(session = %self.id, seq = %journal.seq, effects = journal.entries.len(), ok = r.is_ok(), "effect journal written");
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
    last_seq: Seq,
    checkpointed_seq: Seq,
    dirty_since: Option<Instant>,
    last_activity: Instant,
    timer: Option<tokio::task::JoinHandle<()>>,
    /// What the newest successful checkpoint reached.
    last_outcome: PutOutcome,
    /// Why the newest checkpoint attempt failed (cleared by a successful one).
    last_failure: Option<String>,
    /// Effects the next input already ran (from a checkpoint's journal, or an input that
    /// panicked): replayed when that input is retried.
    pending: Option<crate::effects::Journal>,
    /// Whether `pending` was read from a checkpoint (else: kept in memory after a panic).
    pending_durable: bool,
}

/// Whether a handler call is a client's input or the replay of a journaled one after a restart.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    Live,
    Replay,
}

/// Runs the handler on one input, measuring busy time (time inside polls). A panic is caught and
/// returned as `Err(message)` so the caller can answer the client before the actor fails. Live
/// calls go through the host's fault hooks first, if it has any ([`crate::faults`]).
async fn run_handler<H: SessionHandler>(
    shared: &Shared<H>,
    state: &mut H::State,
    seq: Seq,
    input: H::Input,
    call: Call,
) -> Result<Result<H::Output, HandlerError>, String> {
    use futures::FutureExt;
    let ctx = shared.ctx(seq);
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

impl<H: SessionHandler> ActorState<H> {
    fn checkpoint(&mut self) -> Result<Seq, SessionError> {
        if self.checkpointed_seq == self.last_seq && self.dirty_since.is_none() {
            return Ok(self.last_seq);
        }
        match self.shared.write_checkpoint(&self.state, self.last_seq) {
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
        lock(&self.shared.journal).retain(|(s, _, _)| *s > self.last_seq);
        Ok(self.last_seq)
    }
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
        let (mut last_seq, mut state, stored) = match shared.load()? {
            Some(x) => x,
            None => return Err(format!("no checkpoint found for session {}", shared.id).into()),
        };
        let checkpointed_seq = last_seq;
        // Replay inputs processed after the checkpoint (at-least-once at the handler), with the
        // results their effects recorded (the effects are not run again).
        let journal: Vec<Journaled<H>> = lock(&shared.journal)
            .iter()
            .filter(|(s, _, _)| *s > last_seq)
            .cloned()
            .collect();
        for (seq, input, effects) in journal {
            if seq != last_seq.next() {
                return Err(
                    format!("journal gap: expected {} got {}", last_seq.next(), seq).into(),
                );
            }
            shared.ctx_base.effects.begin(seq, effects, true);
            let _ = run_handler(&shared, &mut state, seq, input, Call::Replay).await?;
            shared.ctx_base.effects.finish();
            last_seq = seq;
        }
        // The effects of the input after these: from one that panicked here, else stored.
        let inflight = lock(&shared.inflight).take();
        let pending_durable = inflight.is_none();
        let pending = inflight.or(stored).filter(|j| j.seq == last_seq.next());
        if let Some(j) = &pending {
            tracing::info!(session = %shared.id, seq = %j.seq, effects = j.entries.len(), "effects recorded for the next input: its retry replays them");
        }
        shared.last_seq.store(last_seq.0, Ordering::Release);
        let dirty_since = (last_seq > checkpointed_seq).then(Instant::now);
        let timer = Some(myself.send_interval(shared.tick, || SessionMsg::Tick));
        Ok(ActorState {
            shared,
            state,
            last_seq,
            checkpointed_seq,
            dirty_since,
            last_activity: Instant::now(),
            timer,
            last_outcome: PutOutcome {
                copies: 0,
                synced: true,
            },
            last_failure: None,
            pending,
            pending_durable,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = st.timer.take() {
            t.abort();
        }
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
                if seq <= st.last_seq {
                    sh.usage.duplicates.fetch_add(1, Ordering::Relaxed);
                    let _ = reply.send(Ok(Reply::Duplicate {
                        seq,
                        last: st.last_seq,
                    }));
                    return Ok(());
                }
                if seq != st.last_seq.next() {
                    let _ = reply.send(Err(SessionError::SeqGap {
                        session: sh.id.clone(),
                        expected: st.last_seq.next(),
                        got: seq,
                    }));
                    return Ok(());
                }
                // A bounded-loss session whose checkpoints have failed for longer than its loss
                // bound acknowledges nothing more until one succeeds: try once now.
                if let (CheckpointMode::Periodic { max_interval }, Some(since)) =
                    (sh.policy.mode, st.dirty_since)
                {
                    if since.elapsed() >= max_interval {
                        match st.checkpoint() {
                            Ok(_) => {}
                            Err(e @ SessionError::Fenced { .. }) => {
                                let _ = reply.send(Err(e.clone()));
                                sh.stop_with(e.to_string());
                                myself.stop(Some("fenced".into()));
                                return Ok(());
                            }
                            Err(e) => {
                                let _ = reply.send(Err(SessionError::CheckpointsBehind {
                                    session: sh.id.clone(),
                                    seq,
                                    behind_ms: since.elapsed().as_millis() as u64,
                                    bound_ms: max_interval.as_millis() as u64,
                                    reason: e.to_string(),
                                }));
                                return Ok(());
                            }
                        }
                    }
                }
                let journaled = match sh.policy.mode {
                    CheckpointMode::Periodic { .. } => Some(input.clone()),
                    CheckpointMode::Synchronous => None,
                };
                let (recorded, durable) = match st.pending.take() {
                    Some(j) if j.seq == seq => (j.entries, st.pending_durable),
                    other => {
                        st.pending = other;
                        (Vec::new(), true)
                    }
                };
                sh.ctx_base.effects.begin(seq, recorded, durable);
                let ran = run_handler(&sh, &mut st.state, seq, input, Call::Live).await;
                let effects = sh.ctx_base.effects.finish();
                let output = match ran {
                    Ok(o) => o,
                    Err(reason) => {
                        // The incarnation that retries this input replays its effects.
                        if !effects.is_empty() {
                            *lock(&sh.inflight) = Some(crate::effects::Journal::new(seq, effects));
                        }
                        // The state may be half-updated: answer, then fail so the supervisor
                        // restarts from the last checkpoint (plus journal replay).
                        let _ = reply.send(Err(SessionError::HandlerPanicked {
                            session: sh.id.clone(),
                            seq,
                            reason: reason.clone(),
                        }));
                        return Err(reason.into());
                    }
                };
                st.last_seq = seq;
                sh.last_seq.store(seq.0, Ordering::Release);
                sh.usage.inputs.fetch_add(1, Ordering::Relaxed);
                match sh.policy.mode {
                    CheckpointMode::Synchronous => match st.checkpoint() {
                        Ok(_) => {
                            let (durable, not_durable) = durability(&sh.policy, st.last_outcome);
                            let _ = reply.send(Ok(Reply::Processed {
                                seq,
                                output,
                                durable,
                                copies: st.last_outcome.copies,
                                not_durable,
                            }));
                        }
                        Err(e @ SessionError::Fenced { .. }) => {
                            let _ = reply.send(Err(e.clone()));
                            sh.stop_with(e.to_string());
                            myself.stop(Some("fenced".into()));
                        }
                        Err(e) => {
                            // Not durable: do not acknowledge, and drop the in-memory state that
                            // includes the input by going back to the newest stored checkpoint.
                            // A failing store is not a handler crash: reloading in place does not
                            // count against the restart intensity, so a disk that fails for a
                            // while (every retry refused) does not stop the session for good.
                            let _ = reply.send(Err(e.clone()));
                            match sh.load() {
                                Ok(Some((seq, state, stored))) => {
                                    st.state = state;
                                    st.last_seq = seq;
                                    st.checkpointed_seq = seq;
                                    st.dirty_since = None;
                                    // The input's effects, if stored: its retry replays them.
                                    st.pending = stored;
                                    st.pending_durable = true;
                                    sh.last_seq.store(seq.0, Ordering::Release);
                                }
                                // Unreadable too: restart (counted) from whatever can be read.
                                _ => return Err(e.to_string().into()),
                            }
                        }
                    },
                    CheckpointMode::Periodic { max_interval } => {
                        let len = {
                            let mut j = lock(&sh.journal);
                            if let Some(i) = journaled {
                                j.push((seq, i, effects));
                            }
                            j.len()
                        };
                        let since = *st.dirty_since.get_or_insert_with(Instant::now);
                        let mut covered = None;
                        if since.elapsed() >= checkpoint_due(max_interval) || len >= MAX_JOURNAL {
                            match st.checkpoint() {
                                Ok(_) => covered = Some(st.last_outcome),
                                Err(e @ SessionError::Fenced { .. }) => {
                                    let _ = reply.send(Err(e.clone()));
                                    sh.stop_with(e.to_string());
                                    myself.stop(Some("fenced".into()));
                                    return Ok(());
                                }
                                Err(e) => {
                                    tracing::warn!(session = %sh.id, error = %e, "periodic checkpoint failed; will retry")
                                }
                            }
                        }
                        let (durable, copies, not_durable) = match covered {
                            Some(o) => {
                                let (d, why) = durability(&sh.policy, o);
                                (d, o.copies, why)
                            }
                            None => (
                                false,
                                0,
                                Some(format!(
                                    "not checkpointed yet: bounded-loss session, checkpoints within {max_interval:?}"
                                )),
                            ),
                        };
                        let _ = reply.send(Ok(Reply::Processed {
                            seq,
                            output,
                            durable,
                            copies,
                            not_durable,
                        }));
                    }
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

/// Checkpoints and stops the actor if no input is queued. Returns whether it hibernated.
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
    myself.stop(Some("hibernated".into()));
    true
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

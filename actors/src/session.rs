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
        /// The answer the first processing gave, while the session keeps it (the newest
        /// [`crate::record::MAX_ANSWERS_KEPT`] inputs, ADR 0035); `None` once forgotten.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        original: Option<Result<O, HandlerError>>,
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
            Reply::Duplicate {
                seq,
                last,
                original,
            } => Reply::Duplicate {
                seq,
                last,
                original: original.map(|o| o.map(f)),
            },
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
        match blocking_io(self.store.writes_block(), || {
            self.store.put_counted(&cp, min_copies)
        }) {
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
        let r = blocking_io(self.store.writes_block(), || {
            self.store.put_counted(&cp, min_copies)
        })
        .map(|_| true)
        .map_err(|e| e.to_string());
        tracing::debug!(session = %self.id, step = %journal.step, effects = journal.entries.len(), ok = r.is_ok(), "effect journal written");
        r
    }
}

/// Runs a checkpoint write (fsync, replica round trips: blocking I/O) so that it holds no
/// runtime worker: on a multi-thread runtime the worker's other tasks move to another thread
/// while it runs (`block_in_place`), so a replica holder that stalls stalls only the sessions
/// that write to it, not every session sharing the handler runtime (issue #20, item 2). The
/// session itself still waits for its write (its inputs stay in order). On a current-thread
/// runtime (benches, some tests), or for a store whose writes do not block (`blocks` =
/// [`CheckpointStore::writes_block`]: the in-memory store), it runs in place.
pub(crate) fn blocking_io<T>(blocks: bool, f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) if blocks => tokio::task::block_in_place(f),
        _ => f(),
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

mod actor;
mod step;

pub(crate) use actor::SessionActor;

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

//! [`SessionHost`]: the node-side container of sessions, and the handles callers use.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use opengrid_session::{
    Checkpoint, CheckpointMode, CheckpointPolicy, CheckpointStore, Epoch, Seq, SessionId,
    StoreError,
};
use opentelemetry::metrics::Meter;
use ractor::ActorRef;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::error::SessionError;
use crate::handler::{ContextBase, HandlerError, Services, SessionHandler};
use crate::metrics::ActorMetrics;
use crate::session::{Reply, SessionMsg, SessionStatus, Shared, Slot, Status};
use crate::supervisor::{spawn_supervisor, RestartIntensity, SupervisorMsg};
use crate::transfer::{MovedTo, Relay, Transfer};
use crate::usage::{Usage, UsageCounters};
#[cfg(feature = "inference")]
use opengrid_runtime_gpu::{CallerId, InferenceHandle};

/// Host-wide settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostConfig {
    /// Inputs queued per session before callers get [`SessionError::Backpressure`].
    pub queue_capacity: usize,
    /// Restart-intensity limit per session.
    pub restart: RestartIntensity,
    /// Longest timer period of a session (checkpoint/idle checks); shorter when the manifest's
    /// loss bound or idle timeout needs it.
    pub max_tick: Duration,
    /// Fault hooks around the handler (tests and the chaos harness only; `None` in production):
    /// see [`crate::faults`].
    #[serde(skip)]
    pub faults: Option<Arc<crate::faults::FaultHooks>>,
    /// The meter the host's instruments are created on (listed in the crate documentation); its
    /// provider's exporter publishes them. `None`: nothing is exported.
    #[serde(skip)]
    pub meter: Option<Meter>,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            queue_capacity: 1024,
            restart: RestartIntensity::default(),
            max_tick: Duration::from_secs(1),
            faults: None,
            meter: None,
        }
    }
}

/// Everything a caller can learn about a session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The session.
    pub session_id: SessionId,
    /// Handler id.
    pub handler: String,
    /// Holder epoch.
    pub epoch: Epoch,
    /// Status.
    #[serde(flatten)]
    pub status: SessionStatus,
    /// Newest processed seq.
    pub last_seq: Seq,
    /// Usage so far.
    pub usage: Usage,
    /// Checkpoint policy.
    pub policy: CheckpointPolicy,
}

struct HostInner {
    store: Arc<dyn CheckpointStore>,
    supervisor: ActorRef<SupervisorMsg>,
    sessions: RwLock<HashMap<SessionId, Arc<dyn Hosted>>>,
    handlers: RwLock<HashMap<String, Arc<dyn HandlerFactory>>>,
    config: HostConfig,
    services: Services,
    metrics: Arc<ActorMetrics>,
    shutting_down: std::sync::atomic::AtomicBool,
}

/// The sessions of one node, their supervisor and their checkpoint store. Cheap to clone.
#[derive(Clone)]
pub struct SessionHost {
    inner: Arc<HostInner>,
}

impl SessionHost {
    /// Starts a host (and its supervisor actor) on the current tokio runtime.
    pub async fn new(
        store: Arc<dyn CheckpointStore>,
        config: HostConfig,
        services: Services,
    ) -> Result<Self, SessionError> {
        let (supervisor, _) = spawn_supervisor()
            .await
            .map_err(|_| SessionError::ShuttingDown)?;
        Ok(SessionHost {
            inner: Arc::new(HostInner {
                store,
                supervisor,
                sessions: RwLock::new(HashMap::new()),
                handlers: RwLock::new(HashMap::new()),
                metrics: Arc::new(ActorMetrics::new(config.meter.as_ref())),
                config,
                services,
                shutting_down: Default::default(),
            }),
        })
    }

    /// The checkpoint store.
    pub fn store(&self) -> &Arc<dyn CheckpointStore> {
        &self.inner.store
    }

    /// The node services every session's handler sees (e.g. the inference pool).
    pub fn services(&self) -> &Services {
        &self.inner.services
    }

    /// Registers a handler so sessions can be started by handler id ([`SessionHost::start_dyn`]).
    pub fn register<H: SessionHandler>(&self, handler: Arc<H>) {
        let id = handler.id().to_string();
        write(&self.inner.handlers).insert(id, Arc::new(Factory(handler)));
    }

    /// Registered handler ids.
    pub fn handler_ids(&self) -> Vec<String> {
        let mut v: Vec<_> = read(&self.inner.handlers).keys().cloned().collect();
        v.sort();
        v
    }

    /// Starts a session with a typed handler.
    ///
    /// If the store holds no checkpoint of `id`, the handler's `init` state is checkpointed at
    /// seq 0 (so `init` runs once per session, never after a restart). If it holds one (the session
    /// is resumed here after a handover, failover or node restart), the session continues from it;
    /// `epoch` must not be older than the stored one.
    pub async fn start<H: SessionHandler>(
        &self,
        handler: Arc<H>,
        id: SessionId,
        epoch: Epoch,
        policy: CheckpointPolicy,
    ) -> Result<SessionHandle<H>, SessionError> {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Err(SessionError::ShuttingDown);
        }
        if read(&self.inner.sessions).contains_key(&id) {
            return Err(SessionError::AlreadyExists { session: id });
        }
        let tick = tick_for(&policy, self.inner.config.max_tick);
        let usage = Arc::new(UsageCounters::default());
        let ctx_base = Arc::new(ContextBase {
            session_id: id.clone(),
            services: self.inner.services.clone(),
            #[cfg(feature = "inference")]
            usage: usage.clone(),
            #[cfg(feature = "inference")]
            inference: self
                .inner
                .services
                .get::<InferenceHandle>()
                .map(|h| h.for_caller(CallerId::new(id.as_str()))),
            effects: Default::default(),
            streams: Default::default(),
            turn: Default::default(),
        });
        let shared = Arc::new(Shared {
            id: id.clone(),
            handler: handler.clone(),
            policy,
            epoch: AtomicU64::new(epoch.0),
            store: self.inner.store.clone(),
            usage,
            ctx_base,
            queued: AtomicUsize::new(0),
            capacity: self.inner.config.queue_capacity.max(1),
            status: Mutex::new(Status::Starting),
            changed: Default::default(),
            journal: Mutex::new(Vec::new()),
            inflight: Mutex::new(None),
            last_cp: Mutex::new(None),
            restarts: Mutex::new(Default::default()),
            intensity: self.inner.config.restart,
            last_seq: AtomicU64::new(0),
            tick,
            supervisor: self.inner.supervisor.clone(),
            faults: self.inner.config.faults.clone(),
            metrics: self.inner.metrics.clone(),
        });
        {
            let sink: std::sync::Weak<dyn crate::effects::JournalSink> =
                Arc::downgrade(&(shared.clone() as Arc<dyn crate::effects::JournalSink>));
            shared.ctx_base.effects.set_sink(sink);
        }
        let store_err = |e: StoreError| match e {
            StoreError::StaleEpoch { current, .. } => SessionError::Fenced {
                session: id.clone(),
                ours: epoch,
                current,
            },
            e => SessionError::Stopped {
                session: id.clone(),
                reason: format!("checkpoint store: {e}"),
            },
        };
        match self.inner.store.get_latest(&id).map_err(store_err)? {
            None => {
                let state = handler.init(&id);
                let bytes = handler
                    .encode_state(&state)
                    .map_err(|e| SessionError::Stopped {
                        session: id.clone(),
                        reason: format!("cannot encode initial state: {e}"),
                    })?;
                let cp = Checkpoint::new(
                    id.clone(),
                    epoch,
                    Seq(0),
                    handler.id(),
                    handler.version(),
                    bytes,
                );
                self.inner.store.put(&cp).map_err(store_err)?;
            }
            Some(cp) => {
                if cp.epoch > epoch {
                    return Err(SessionError::Fenced {
                        session: id,
                        ours: epoch,
                        current: cp.epoch,
                    });
                }
                self.inner.store.fence(&id, epoch).map_err(store_err)?;
            }
        }
        spawn_via(&self.inner.supervisor, shared.clone()).await?;
        let handle = SessionHandle { shared };
        let inserted = {
            let mut g = write(&self.inner.sessions);
            if g.contains_key(&id) {
                false
            } else {
                g.insert(id.clone(), Arc::new(handle.clone()));
                true
            }
        };
        if !inserted {
            let _ = handle.release().await;
            return Err(SessionError::AlreadyExists { session: id });
        }
        Ok(handle)
    }

    /// Starts a session with a registered handler, by handler id.
    pub async fn start_dyn(
        &self,
        handler_id: &str,
        id: SessionId,
        epoch: Epoch,
        policy: CheckpointPolicy,
    ) -> Result<Arc<dyn DynSession>, SessionError> {
        let f = read(&self.inner.handlers)
            .get(handler_id)
            .cloned()
            .ok_or_else(|| SessionError::UnknownHandler {
                handler: handler_id.to_string(),
            })?;
        f.start(self.clone(), id, epoch, policy).await
    }

    /// The session with this id, if hosted here.
    pub fn get(&self, id: &SessionId) -> Option<Arc<dyn DynSession>> {
        read(&self.inner.sessions)
            .get(id)
            .map(|s| s.clone() as Arc<dyn DynSession>)
    }

    /// The [`Transfer`] capability of the session with this id, if hosted here: how the node's
    /// mobility code moves it to another holder.
    pub fn transfer(&self, id: &SessionId) -> Option<Arc<dyn Transfer>> {
        read(&self.inner.sessions)
            .get(id)
            .map(|s| s.clone() as Arc<dyn Transfer>)
    }

    /// Ids of all sessions hosted here (any status).
    pub fn session_ids(&self) -> Vec<SessionId> {
        read(&self.inner.sessions).keys().cloned().collect()
    }

    /// Number of sessions hosted here.
    pub fn len(&self) -> usize {
        read(&self.inner.sessions).len()
    }

    /// Whether no session is hosted here.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of session actors currently alive (not hibernated).
    pub async fn live_actors(&self) -> usize {
        let (tx, rx) = oneshot::channel();
        if self
            .inner
            .supervisor
            .cast(SupervisorMsg::Count(tx))
            .is_err()
        {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    /// Closes a session and forgets it.
    pub async fn close(&self, id: &SessionId) -> Result<(), SessionError> {
        let s = self.get(id).ok_or_else(|| SessionError::NotFound {
            session: id.clone(),
        })?;
        s.close().await?;
        write(&self.inner.sessions).remove(id);
        Ok(())
    }

    /// Stops serving a session here without deleting its checkpoints (after a transfer or when
    /// fenced) and forgets it. A session that moved away stops relaying inputs to its new holder:
    /// later inputs through an old handle are answered with [`SessionError::Moved`].
    pub async fn release(&self, id: &SessionId) -> Result<Seq, SessionError> {
        let s = self.get(id).ok_or_else(|| SessionError::NotFound {
            session: id.clone(),
        })?;
        let r = s.release().await;
        write(&self.inner.sessions).remove(id);
        r
    }

    /// Checkpoints and stops every session (their state stays in the store), then the supervisor.
    pub async fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
        let all: Vec<_> = write(&self.inner.sessions)
            .drain()
            .map(|(_, s)| s)
            .collect();
        for s in all {
            let _ = s.release().await;
        }
        // Wait (bounded) until every session actor has exited, so their state — and the
        // checkpoint store they hold — is dropped when this returns.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.live_actors().await > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let _ = self
            .inner
            .supervisor
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await;
    }
}

fn tick_for(policy: &CheckpointPolicy, max_tick: Duration) -> Duration {
    let mut t = max_tick.min(policy.idle_timeout / 4);
    if let CheckpointMode::Periodic { max_interval } = policy.mode {
        t = t.min(max_interval / 8);
    }
    t.max(Duration::from_millis(5))
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}
fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) async fn spawn_via<H: SessionHandler>(
    sup: &ActorRef<SupervisorMsg>,
    shared: Arc<Shared<H>>,
) -> Result<(), SessionError> {
    let (tx, rx) = oneshot::channel();
    let id = shared.id.clone();
    sup.cast(SupervisorMsg::Spawn {
        slot: shared as Arc<dyn Slot>,
        reply: tx,
    })
    .map_err(|_| SessionError::ShuttingDown)?;
    match rx.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(reason)) => Err(SessionError::Stopped {
            session: id,
            reason,
        }),
        Err(_) => Err(SessionError::ShuttingDown),
    }
}

/// A pending answer to one submitted input.
pub struct Pending<O> {
    rx: oneshot::Receiver<Result<Reply<O>, SessionError>>,
    session: SessionId,
}

impl<O> Pending<O> {
    /// Waits for the answer. If the actor died before answering, the error is
    /// [`SessionError::Restarting`]: resubmit the same seq (duplicates are dropped).
    pub async fn wait(self) -> Result<Reply<O>, SessionError> {
        match self.rx.await {
            Ok(r) => r,
            Err(_) => Err(SessionError::Restarting {
                session: self.session,
            }),
        }
    }
}

/// A typed handle on one session. Cheap to clone; survives restarts and hibernation.
pub struct SessionHandle<H: SessionHandler> {
    shared: Arc<Shared<H>>,
}

impl<H: SessionHandler> Clone for SessionHandle<H> {
    fn clone(&self) -> Self {
        SessionHandle {
            shared: self.shared.clone(),
        }
    }
}

enum Route<T> {
    /// Cast to the running actor (under the status lock: see [`SessionHandle::route`]).
    Sent(T),
    Wait,
    Wake,
    Relay(Arc<dyn Relay>),
}

/// Bound on transparent retries inside [`SessionHandle::send`].
const MAX_ATTEMPTS: usize = 64;

impl<H: SessionHandler> SessionHandle<H> {
    /// The session id.
    pub fn id(&self) -> &SessionId {
        &self.shared.id
    }

    /// This holder's epoch.
    pub fn epoch(&self) -> Epoch {
        self.shared.epoch()
    }

    /// Current status.
    pub fn status(&self) -> SessionStatus {
        self.shared.status()
    }

    /// Usage so far.
    pub fn usage(&self) -> Usage {
        self.shared.usage.snapshot()
    }

    /// Live usage counters (for wire-byte accounting by the API layer).
    pub fn usage_counters(&self) -> &UsageCounters {
        &self.shared.usage
    }

    /// Newest processed seq.
    pub fn last_seq(&self) -> Seq {
        Seq(self.shared.last_seq.load(Ordering::Acquire))
    }

    /// Decides where an input goes and, when the actor is running, casts it there (incrementing
    /// `queued`).
    ///
    /// The cast happens while the status lock is held: [`Transfer::suspend`] switches the status
    /// to `Suspended` under the same lock before it casts its final `Checkpoint`, so every input
    /// cast to the actor is ahead of that checkpoint in the mailbox and none can be processed
    /// (and acknowledged) after it. Casting after releasing the lock let an input slip in behind
    /// the final checkpoint: acknowledged on the source, missing on the target.
    fn route(&self, seq: Seq, input: H::Input) -> Result<Route<Pending<H::Output>>, SessionError> {
        self.route_with(|a| self.cast(a, seq, input))
    }

    /// [`route`](Self::route) with what is cast to a running actor given by `send`.
    fn route_with<T>(
        &self,
        send: impl FnOnce(&ActorRef<SessionMsg<H>>) -> Result<T, SessionError>,
    ) -> Result<Route<T>, SessionError> {
        let sh = &self.shared;
        let mut g = lock(&sh.status);
        match &*g {
            Status::Running(a) => {
                let q = sh.queued.load(Ordering::Acquire);
                if q >= sh.capacity {
                    return Err(SessionError::Backpressure {
                        session: sh.id.clone(),
                        queued: q,
                        capacity: sh.capacity,
                    });
                }
                sh.queued.fetch_add(1, Ordering::AcqRel);
                let a = a.clone();
                // A closed mailbox: the actor just died and its supervisor restarts it.
                Ok(send(&a).map_or(Route::Wait, Route::Sent))
            }
            Status::Starting | Status::Suspended(_) => Ok(Route::Wait),
            Status::Moved(m, relay) => match relay {
                Some(r) => Ok(Route::Relay(r.clone())),
                None => Err(SessionError::Moved {
                    session: sh.id.clone(),
                    location: m.location.clone(),
                    epoch: m.epoch,
                }),
            },
            Status::Hibernated => {
                *g = Status::Starting;
                Ok(Route::Wake)
            }
            Status::Stopped(reason) => Err(SessionError::Stopped {
                session: sh.id.clone(),
                reason: reason.clone(),
            }),
            Status::Closed => Err(SessionError::Closed {
                session: sh.id.clone(),
            }),
        }
    }

    /// Queues one input without waiting for its answer (pipelining). Fails fast with
    /// [`SessionError::Restarting`] if the session is not running right now (see
    /// [`send`](Self::send) for the path that wakes and retries).
    pub fn submit(&self, seq: Seq, input: H::Input) -> Result<Pending<H::Output>, SessionError> {
        match self.route(seq, input)? {
            Route::Sent(p) => Ok(p),
            Route::Wait | Route::Relay(_) => Err(SessionError::Restarting {
                session: self.shared.id.clone(),
            }),
            Route::Wake => {
                // Undo: leave it hibernated for `send` to wake.
                self.shared.set_status(Status::Hibernated);
                Err(SessionError::Restarting {
                    session: self.shared.id.clone(),
                })
            }
        }
    }

    fn cast(
        &self,
        a: &ActorRef<SessionMsg<H>>,
        seq: Seq,
        input: H::Input,
    ) -> Result<Pending<H::Output>, SessionError> {
        let (tx, rx) = oneshot::channel();
        if a.cast(SessionMsg::Input {
            seq,
            input,
            reply: tx,
        })
        .is_err()
        {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(SessionError::Restarting {
                session: self.shared.id.clone(),
            });
        }
        Ok(Pending {
            rx,
            session: self.shared.id.clone(),
        })
    }

    /// Sends one input and waits for its answer, waking a hibernated session and retrying
    /// transparently across restarts (safe: duplicates are dropped by seq).
    pub async fn send(&self, seq: Seq, input: H::Input) -> Result<Reply<H::Output>, SessionError> {
        let sh = &self.shared;
        for _ in 0..MAX_ATTEMPTS {
            let notified = sh.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.route(seq, input.clone())? {
                Route::Sent(p) => match p.wait().await {
                    Err(SessionError::Restarting { .. }) => {
                        wait_change(notified).await;
                    }
                    other => return other,
                },
                Route::Wait => wait_change(notified).await,
                Route::Relay(r) => {
                    let json =
                        serde_json::to_value(&input).map_err(|e| SessionError::BadInput {
                            session: sh.id.clone(),
                            reason: e.to_string(),
                        })?;
                    let reply = r.relay(&sh.id, seq, json).await?;
                    return match reply {
                        Reply::Processed {
                            seq,
                            output,
                            durable,
                            copies,
                            not_durable,
                        } => Ok(Reply::Processed {
                            seq,
                            output: match output {
                                Ok(v) => Ok(serde_json::from_value(v).map_err(|e| {
                                    SessionError::BadInput {
                                        session: sh.id.clone(),
                                        reason: format!("relayed output: {e}"),
                                    }
                                })?),
                                Err(e) => Err(e),
                            },
                            durable,
                            copies,
                            not_durable,
                        }),
                        Reply::Duplicate { seq, last } => Ok(Reply::Duplicate { seq, last }),
                    };
                }
                Route::Wake => {
                    self.wake().await?;
                }
            }
            if let Some(e) = sh.stopped_error() {
                return Err(e);
            }
        }
        Err(SessionError::Restarting {
            session: sh.id.clone(),
        })
    }

    /// Delivers a call from another session (ADR 0033) and waits for the callee's answer:
    /// exactly once by `key` (a retry of an answered call gets the same answer, nothing runs).
    /// Wakes a hibernated session and waits through restarts; a session that moved answers
    /// [`SessionError::Moved`] (the caller's node follows it through the directory).
    pub async fn call(
        &self,
        key: String,
        caller: String,
        chain: Vec<String>,
        input: H::Input,
    ) -> Result<Result<serde_json::Value, HandlerError>, SessionError> {
        let sh = &self.shared;
        for _ in 0..MAX_ATTEMPTS {
            let notified = sh.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let routed = self.route_with(|a| {
                let (tx, rx) = oneshot::channel();
                a.cast(SessionMsg::Call {
                    key: key.clone(),
                    caller: caller.clone(),
                    chain: chain.clone(),
                    input: input.clone(),
                    reply: tx,
                })
                .map_err(|_| {
                    sh.queued.fetch_sub(1, Ordering::AcqRel);
                    SessionError::Restarting {
                        session: sh.id.clone(),
                    }
                })?;
                Ok(rx)
            })?;
            match routed {
                Route::Sent(rx) => match rx.await {
                    Ok(Err(SessionError::Restarting { .. })) | Err(_) => {
                        wait_change(notified).await
                    }
                    Ok(other) => return other,
                },
                Route::Wait => wait_change(notified).await,
                Route::Relay(_) => {
                    let (location, epoch) = match sh.status() {
                        SessionStatus::Moved { location, epoch } => (location, epoch),
                        _ => (String::new(), sh.epoch()),
                    };
                    return Err(SessionError::Moved {
                        session: sh.id.clone(),
                        location,
                        epoch,
                    });
                }
                Route::Wake => self.wake().await?,
            }
            if let Some(e) = sh.stopped_error() {
                return Err(e);
            }
        }
        Err(SessionError::Restarting {
            session: sh.id.clone(),
        })
    }

    /// The streamed reply of client input `seq` from chunk `from` (ADR 0033): waits up to `wait`
    /// for chunks past `from` or the end. `None`: this holder knows no stream of that input.
    pub async fn stream(&self, seq: Seq, from: usize, wait: Duration) -> Option<crate::StreamRead> {
        self.shared.ctx_base.streams.next(seq, from, wait).await
    }

    async fn wake(&self) -> Result<(), SessionError> {
        let r = spawn_via(&self.shared.supervisor, self.shared.clone()).await;
        if r.is_err() && matches!(self.shared.status(), SessionStatus::Starting) {
            self.shared.set_status(Status::Hibernated);
        }
        r
    }

    /// Writes a checkpoint now; returns the seq it covers.
    pub async fn checkpoint_now(&self) -> Result<Seq, SessionError> {
        self.request(SessionMsg::Checkpoint).await?
    }

    /// Checkpoints and hibernates the session now if nothing is queued; returns whether it did.
    pub async fn hibernate_now(&self) -> Result<bool, SessionError> {
        self.request(SessionMsg::Hibernate).await
    }

    /// Closes the session: its checkpoints are deleted (the fence stays).
    pub async fn close(&self) -> Result<(), SessionError> {
        match self.request(SessionMsg::Close).await {
            Ok(()) => Ok(()),
            Err(SessionError::NotFound { .. }) => {
                // Not running (hibernated or stopped): close directly.
                self.shared.set_status(Status::Closed);
                self.shared
                    .store
                    .delete(&self.shared.id)
                    .map_err(|e| SessionError::Stopped {
                        session: self.shared.id.clone(),
                        reason: e.to_string(),
                    })
            }
            Err(e) => Err(e),
        }
    }

    /// Checkpoints and stops serving without deleting anything; returns the seq checkpointed. A
    /// session that moved away stops relaying: later inputs get [`SessionError::Moved`].
    pub async fn release(&self) -> Result<Seq, SessionError> {
        self.end_relay();
        match self.request(SessionMsg::Release).await {
            Err(SessionError::NotFound { .. }) => Ok(self.last_seq()),
            r => r?,
        }
    }

    /// Sends a control request to the running actor (`NotFound` when none is running).
    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> SessionMsg<H>,
    ) -> Result<T, SessionError> {
        let actor = match &*lock(&self.shared.status) {
            Status::Running(a) => a.clone(),
            _ => {
                return Err(SessionError::NotFound {
                    session: self.shared.id.clone(),
                })
            }
        };
        let (tx, rx) = oneshot::channel();
        actor.cast(make(tx)).map_err(|_| SessionError::Restarting {
            session: self.shared.id.clone(),
        })?;
        rx.await.map_err(|_| SessionError::Restarting {
            session: self.shared.id.clone(),
        })
    }

    /// See [`Transfer::suspend`].
    async fn suspend(&self) -> Result<Seq, SessionError> {
        let wake = {
            let mut g = lock(&self.shared.status);
            if matches!(*g, Status::Hibernated) {
                *g = Status::Starting;
                true
            } else {
                false
            }
        };
        if wake {
            self.wake().await?;
        }
        let actor = {
            let mut g = lock(&self.shared.status);
            match &*g {
                Status::Running(a) => {
                    let a = a.clone();
                    *g = Status::Suspended(a.clone());
                    a
                }
                Status::Suspended(a) => a.clone(),
                _ => {
                    drop(g);
                    return Err(self
                        .shared
                        .stopped_error()
                        .unwrap_or(SessionError::Restarting {
                            session: self.shared.id.clone(),
                        }));
                }
            }
        };
        self.shared.changed.notify_waiters();
        let (tx, rx) = oneshot::channel();
        actor
            .cast(SessionMsg::Checkpoint(tx))
            .map_err(|_| SessionError::Restarting {
                session: self.shared.id.clone(),
            })?;
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(SessionError::Restarting {
                session: self.shared.id.clone(),
            }),
        }
    }

    /// See [`Transfer::resume`].
    fn resume(&self) {
        let mut g = lock(&self.shared.status);
        if let Status::Suspended(a) = &*g {
            *g = Status::Running(a.clone());
        }
        drop(g);
        self.shared.changed.notify_waiters();
    }

    /// See [`Transfer::complete`].
    async fn complete(&self, to: MovedTo, relay: Option<Arc<dyn Relay>>) {
        let actor = {
            let mut g = lock(&self.shared.status);
            match std::mem::replace(&mut *g, Status::Moved(to, relay)) {
                Status::Running(a) | Status::Suspended(a) => Some(a),
                _ => None,
            }
        };
        self.shared.changed.notify_waiters();
        if let Some(a) = actor {
            let (tx, rx) = oneshot::channel();
            if a.cast(SessionMsg::Release(tx)).is_ok() {
                let _ = rx.await;
            }
        }
    }

    /// A moved session stops relaying; later inputs get [`SessionError::Moved`].
    fn end_relay(&self) {
        let mut g = lock(&self.shared.status);
        if let Status::Moved(_, relay @ Some(_)) = &mut *g {
            *relay = None;
            drop(g);
            self.shared.changed.notify_waiters();
        }
    }

    /// The checkpoint policy.
    pub fn policy(&self) -> CheckpointPolicy {
        self.shared.policy
    }

    /// A full description.
    pub fn info(&self) -> SessionInfo {
        SessionInfo {
            session_id: self.shared.id.clone(),
            handler: self.shared.handler.id().to_string(),
            epoch: self.epoch(),
            status: self.status(),
            last_seq: self.last_seq(),
            usage: self.usage(),
            policy: self.shared.policy,
        }
    }
}

async fn wait_change(notified: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>) {
    // Bounded: a notification can race with the check that preceded it.
    let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
}

/// A session seen through JSON, independent of its handler type (for the node's client API).
pub trait DynSession: Send + Sync + 'static {
    /// The session id.
    fn id(&self) -> &SessionId;
    /// Handler id.
    fn handler_id(&self) -> &str;
    /// Holder epoch.
    fn epoch(&self) -> Epoch;
    /// Full description.
    fn info(&self) -> SessionInfo;
    /// Current status.
    fn status(&self) -> SessionStatus;
    /// Live usage counters.
    fn usage_counters(&self) -> &UsageCounters;
    /// Sends a JSON input; the payload is decoded into the handler's input type.
    fn send_json(
        &self,
        seq: Seq,
        input: serde_json::Value,
    ) -> BoxFuture<'_, Result<Reply<serde_json::Value>, SessionError>>;
    /// Delivers a call from another session: see [`SessionHandle::call`]. The input is decoded
    /// into the handler's input type.
    fn call_json(
        &self,
        key: String,
        caller: String,
        chain: Vec<String>,
        input: serde_json::Value,
    ) -> BoxFuture<'_, Result<Result<serde_json::Value, HandlerError>, SessionError>>;
    /// A streamed reply: see [`SessionHandle::stream`].
    fn stream(
        &self,
        seq: Seq,
        from: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Option<crate::StreamRead>>;
    /// Checkpoints now.
    fn checkpoint_now(&self) -> BoxFuture<'_, Result<Seq, SessionError>>;
    /// Hibernates now if idle.
    fn hibernate_now(&self) -> BoxFuture<'_, Result<bool, SessionError>>;
    /// Closes the session.
    fn close(&self) -> BoxFuture<'_, Result<(), SessionError>>;
    /// Releases the session (checkpoint, stop, keep state).
    fn release(&self) -> BoxFuture<'_, Result<Seq, SessionError>>;
    /// Checkpoint policy.
    fn policy(&self) -> CheckpointPolicy;
}

impl<H: SessionHandler> DynSession for SessionHandle<H> {
    fn id(&self) -> &SessionId {
        SessionHandle::id(self)
    }
    fn handler_id(&self) -> &str {
        self.shared.handler.id()
    }
    fn epoch(&self) -> Epoch {
        SessionHandle::epoch(self)
    }
    fn info(&self) -> SessionInfo {
        SessionHandle::info(self)
    }
    fn status(&self) -> SessionStatus {
        SessionHandle::status(self)
    }
    fn usage_counters(&self) -> &UsageCounters {
        &self.shared.usage
    }
    fn send_json(
        &self,
        seq: Seq,
        input: serde_json::Value,
    ) -> BoxFuture<'_, Result<Reply<serde_json::Value>, SessionError>> {
        Box::pin(async move {
            let input: H::Input =
                serde_json::from_value(input).map_err(|e| SessionError::BadInput {
                    session: self.shared.id.clone(),
                    reason: e.to_string(),
                })?;
            let reply = self.send(seq, input).await?;
            Ok(reply.map(|o| serde_json::to_value(o).unwrap_or(serde_json::Value::Null)))
        })
    }
    fn call_json(
        &self,
        key: String,
        caller: String,
        chain: Vec<String>,
        input: serde_json::Value,
    ) -> BoxFuture<'_, Result<Result<serde_json::Value, HandlerError>, SessionError>> {
        Box::pin(async move {
            let input: H::Input =
                serde_json::from_value(input).map_err(|e| SessionError::BadInput {
                    session: self.shared.id.clone(),
                    reason: e.to_string(),
                })?;
            self.call(key, caller, chain, input).await
        })
    }
    fn stream(
        &self,
        seq: Seq,
        from: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Option<crate::StreamRead>> {
        Box::pin(SessionHandle::stream(self, seq, from, wait))
    }
    fn checkpoint_now(&self) -> BoxFuture<'_, Result<Seq, SessionError>> {
        Box::pin(SessionHandle::checkpoint_now(self))
    }
    fn hibernate_now(&self) -> BoxFuture<'_, Result<bool, SessionError>> {
        Box::pin(SessionHandle::hibernate_now(self))
    }
    fn close(&self) -> BoxFuture<'_, Result<(), SessionError>> {
        Box::pin(SessionHandle::close(self))
    }
    fn release(&self) -> BoxFuture<'_, Result<Seq, SessionError>> {
        Box::pin(SessionHandle::release(self))
    }
    fn policy(&self) -> CheckpointPolicy {
        SessionHandle::policy(self)
    }
}

impl<H: SessionHandler> Transfer for SessionHandle<H> {
    fn suspend(&self) -> BoxFuture<'_, Result<Seq, SessionError>> {
        Box::pin(SessionHandle::suspend(self))
    }
    fn resume(&self) {
        SessionHandle::resume(self)
    }
    fn complete(&self, to: MovedTo, relay: Option<Arc<dyn Relay>>) -> BoxFuture<'_, ()> {
        Box::pin(SessionHandle::complete(self, to, relay))
    }
}

/// What the host keeps per session: the client-facing view and the transfer capability of one
/// handle.
trait Hosted: DynSession + Transfer {}

impl<T: DynSession + Transfer> Hosted for T {}

trait HandlerFactory: Send + Sync {
    fn start(
        &self,
        host: SessionHost,
        id: SessionId,
        epoch: Epoch,
        policy: CheckpointPolicy,
    ) -> BoxFuture<'static, Result<Arc<dyn DynSession>, SessionError>>;
}

struct Factory<H>(Arc<H>);

impl<H: SessionHandler> HandlerFactory for Factory<H> {
    fn start(
        &self,
        host: SessionHost,
        id: SessionId,
        epoch: Epoch,
        policy: CheckpointPolicy,
    ) -> BoxFuture<'static, Result<Arc<dyn DynSession>, SessionError>> {
        let h = self.0.clone();
        Box::pin(async move {
            let handle = host.start(h, id, epoch, policy).await?;
            Ok(Arc::new(handle) as Arc<dyn DynSession>)
        })
    }
}

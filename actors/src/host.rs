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
                crate::session::blocking_io(self.inner.store.writes_block(), || {
                    self.inner.store.put(&cp)
                })
                .map_err(store_err)?;
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

mod erased;
mod handle;

pub use erased::DynSession;
use erased::{Factory, HandlerFactory, Hosted};
pub use handle::{Pending, SessionHandle};

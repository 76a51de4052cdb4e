//! [`SessionHandle`]: how callers reach one session — inputs (routed to the running actor,
//! waiting through restarts, waking a hibernated one, relayed after a move), calls, streams,
//! control requests, and the [`Transfer`] steps of a handover.

use super::*;

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
    pub(super) shared: Arc<Shared<H>>,
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
                        Reply::Duplicate {
                            seq,
                            last,
                            original,
                        } => Ok(Reply::Duplicate {
                            seq,
                            last,
                            original: original.and_then(|o| match o {
                                Ok(v) => serde_json::from_value(v).ok().map(Ok),
                                Err(e) => Some(Err(e)),
                            }),
                        }),
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
    pub(super) async fn suspend(&self) -> Result<Seq, SessionError> {
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
    pub(super) fn resume(&self) {
        let mut g = lock(&self.shared.status);
        if let Status::Suspended(a) = &*g {
            *g = Status::Running(a.clone());
        }
        drop(g);
        self.shared.changed.notify_waiters();
    }

    /// See [`Transfer::complete`].
    pub(super) async fn complete(&self, to: MovedTo, relay: Option<Arc<dyn Relay>>) {
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

//! The host's type-erased views of a session: [`DynSession`] (JSON in and out, for the node's
//! client API) and the handler factories that start sessions by handler id.

use super::*;

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
pub(super) trait Hosted: DynSession + Transfer {}

impl<T: DynSession + Transfer> Hosted for T {}

pub(super) trait HandlerFactory: Send + Sync {
    fn start(
        &self,
        host: SessionHost,
        id: SessionId,
        epoch: Epoch,
        policy: CheckpointPolicy,
    ) -> BoxFuture<'static, Result<Arc<dyn DynSession>, SessionError>>;
}

pub(super) struct Factory<H>(pub(super) Arc<H>);

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

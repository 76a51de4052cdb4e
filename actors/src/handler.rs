//! The [`SessionHandler`] trait: what an agent developer writes.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

#[cfg(feature = "inference")]
use opengrid_runtime_gpu::{InferenceHandle, ModelId, Tensor};
use opengrid_session::{Epoch, Seq, SessionId};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest encoded handler state accepted by the default state codec (256 MiB).
pub const MAX_STATE_BYTES: usize = 256 << 20;

/// An error a handler returns for one input. The input counts as processed (its seq is consumed)
/// and the error is sent to the client; the session keeps running. Panic instead if the state may
/// be inconsistent: the supervisor then restarts the session from its last checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{code}: {message}")]
pub struct HandlerError {
    /// Machine-readable code, e.g. `"bad_input"`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

impl HandlerError {
    /// A new error.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        HandlerError {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// What every input of one session shares (built once per session, not per input).
pub(crate) struct ContextBase {
    pub session_id: SessionId,
    pub services: Services,
    /// Where inference compute time is metered.
    #[cfg(feature = "inference")]
    pub usage: Arc<crate::usage::UsageCounters>,
    /// The node's inference pool, attributed to this session, when the host has one.
    #[cfg(feature = "inference")]
    pub inference: Option<InferenceHandle>,
    /// The effect journal of the input being handled (ADR 0032).
    pub effects: crate::effects::Effects,
    /// Streamed replies of recent client inputs (ADR 0033).
    pub streams: crate::stream::StreamTable,
    /// What the input being handled did besides its state: timers set and cancelled, chunks.
    pub turn: std::sync::Mutex<Turn>,
}

/// When a timer fires: [`SessionContext::schedule`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// This long after the scheduling input ran (journaled: the same instant on replay).
    After(std::time::Duration),
    /// At this wall-clock time, milliseconds since the Unix epoch.
    At(u64),
}

/// A change to the session's timers, applied when the input that made it completes.
#[derive(Clone, Debug)]
pub(crate) enum TimerOp {
    Add(crate::record::Timer),
    Cancel(String),
}

/// The bookkeeping of the input being handled (besides its effect journal).
#[derive(Default)]
pub(crate) struct Turn {
    /// Who sent the input.
    pub source: Option<crate::record::Source>,
    /// The sessions whose calls led here (the call chain), oldest first.
    pub chain: Vec<String>,
    /// Next chunk's offset.
    pub next_chunk: usize,
    /// Timers the session has (ids), before this input's own changes.
    pub timers: Vec<String>,
    /// This input's timer changes.
    pub ops: Vec<TimerOp>,
}

impl ContextBase {
    pub(crate) fn begin_turn(
        &self,
        source: crate::record::Source,
        chain: Vec<String>,
        timers: Vec<String>,
    ) {
        *self.turn.lock().unwrap_or_else(|p| p.into_inner()) = Turn {
            source: Some(source),
            chain,
            next_chunk: 0,
            timers,
            ops: Vec::new(),
        };
    }

    /// The input ended: its timer changes.
    pub(crate) fn end_turn(&self) -> Vec<TimerOp> {
        let mut t = self.turn.lock().unwrap_or_else(|p| p.into_inner());
        t.source = None;
        std::mem::take(&mut t.ops)
    }

    fn turn(&self) -> std::sync::MutexGuard<'_, Turn> {
        self.turn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the runtime tells a handler about the input being processed, plus node services.
#[derive(Clone)]
pub struct SessionContext {
    base: Arc<ContextBase>,
    epoch: Epoch,
    seq: Seq,
    source: Arc<crate::record::Source>,
}

impl SessionContext {
    pub(crate) fn new(
        base: Arc<ContextBase>,
        epoch: Epoch,
        seq: Seq,
        source: crate::record::Source,
    ) -> Self {
        SessionContext {
            base,
            epoch,
            seq,
            source: Arc::new(source),
        }
    }

    /// Who sent the input being handled: the client (with its seq), a timer the session set, or
    /// another session's call.
    pub fn source(&self) -> &crate::record::Source {
        &self.source
    }

    /// The session being served.
    pub fn session_id(&self) -> &SessionId {
        &self.base.session_id
    }

    /// The placement epoch of this holder.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The step being processed: the session's count of inputs handled, whatever sent them (0
    /// in `init`). For a session that gets inputs from its client only, the client's seq.
    pub fn seq(&self) -> Seq {
        self.seq
    }

    /// Runs a side effect **at most once per input** as far as anything outside the session can
    /// tell (ADR 0032): the first time, `effect` runs and its result (success or error) is
    /// recorded; it is made durable (for a zero-loss session: on the session's replicas) before
    /// the input's next effect starts or its reply leaves, and within
    /// [`PERSIST_GRACE`](crate::effects::PERSIST_GRACE) while the handler keeps running. When the
    /// input is handled again (a restart after a panic, a failover or node restart before the
    /// input was acknowledged) the recorded result is returned and `effect` does not run. Effects of one input must start in the same order
    /// each time and one after another (not concurrently); `name` is checked on replay.
    ///
    /// An effect cut off by a crash while it ran is run again on the retry: give the outside
    /// world the key of [`SessionContext::run_keyed`] so it can deduplicate.
    pub async fn run<T, F>(&self, name: &str, effect: F) -> Result<T, HandlerError>
    where
        T: Serialize + DeserializeOwned,
        F: Future<Output = Result<T, HandlerError>>,
    {
        self.run_keyed(name, |_| effect).await
    }

    /// [`run`](Self::run), handing `effect` its idempotency key: `session:seq:index`, the same
    /// every time this effect of this input runs (on any node, in any epoch).
    pub async fn run_keyed<T, F, Fut>(&self, name: &str, effect: F) -> Result<T, HandlerError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Result<T, HandlerError>>,
    {
        use crate::effects::{decode_result, encode_result, Next};
        match self.base.effects.next(name)? {
            Next::Replay(bytes) => decode_result(&bytes)?,
            Next::Run { index } => {
                // Results of earlier effects may be what this one sends: durable first.
                self.base.effects.flush(None)?;
                let key = format!("{}:{}:{index}", self.base.session_id, self.source.key());
                let r = effect(key).await;
                let bytes = encode_result(&r)?;
                let seq = self.base.effects.record(index, name, bytes)?;
                // Durable within the grace while the handler keeps running (a reply or the
                // next effect comes first otherwise).
                let base = self.base.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(crate::effects::PERSIST_GRACE).await;
                    let _ = tokio::task::spawn_blocking(move || {
                        if let Err(e) = base.effects.flush(Some(seq)) {
                            tracing::warn!(session = %base.session_id, error = %e, "effect journal not written");
                        }
                    })
                    .await;
                });
                r
            }
        }
    }

    /// Sends an HTTP request through the node as a journaled effect (ADR 0032): at most once per
    /// input as far as the recorded result goes, with an `Idempotency-Key` header
    /// (`session:seq:index`) that stays the same if a crash cuts the request off and the retry
    /// sends it again, so the remote side can deduplicate. The node sends only to hosts the
    /// session's manifest lists in `[egress] hosts`; refusals and transport failures come back as
    /// a [`HandlerError`] with code `fetch` (and are recorded like any result).
    pub async fn fetch(
        &self,
        req: crate::egress::HttpRequest,
    ) -> Result<crate::egress::HttpResponse, HandlerError> {
        let egress = self
            .service::<crate::egress::EgressService>()
            .map(|e| e.0.clone())
            .ok_or_else(|| HandlerError::new("fetch", "this node offers no egress"))?;
        let name = format!("fetch {} {}", req.method, req.url);
        let session = self.base.session_id.clone();
        self.run_keyed(&name, |key| async move {
            let mut req = req;
            req.headers
                .retain(|(k, _)| !k.eq_ignore_ascii_case(crate::egress::IDEMPOTENCY_HEADER));
            req.headers
                .push((crate::egress::IDEMPOTENCY_HEADER.to_string(), key));
            egress
                .send(&session, req)
                .await
                .map_err(|e| HandlerError::new("fetch", e))
        })
        .await
    }

    /// Emits one chunk of the reply to the client input being handled (a token, a line): readers
    /// of the input's stream (SSE, WebSocket, the Rust client) get it at once, before the reply.
    /// Returns its offset in the stream. Chunks are deterministic given the recorded effects:
    /// when the input is handled again, a chunk already at its offset is not sent again, so a
    /// reader resuming from an offset gets each chunk once (ADR 0033). Results of earlier effects
    /// are made durable first (a chunk may show them). For inputs that are not a client's (a
    /// timer, a call) there is no stream: the chunk is counted and dropped.
    pub async fn emit(&self, chunk: &str) -> Result<u64, HandlerError> {
        if !self.base.effects.active() {
            return Err(HandlerError::new("emit", "emit outside an input"));
        }
        self.base.effects.flush(None)?;
        let (offset, seq) = {
            let mut t = self.base.turn();
            let o = t.next_chunk;
            t.next_chunk += 1;
            let seq = match t.source {
                Some(crate::record::Source::Client(s)) => Some(s),
                _ => None,
            };
            (o, seq)
        };
        if let Some(seq) = seq {
            self.base
                .streams
                .put(seq, offset, chunk)
                .map_err(|e| HandlerError::new("emit", e))?;
        }
        Ok(offset as u64)
    }

    /// Sets a timer: `input` (JSON of the handler's input type) is delivered to the session once,
    /// at `when` (ADR 0033). The timer is stored with the session's checkpoint, so it moves with a
    /// handover, survives a failover and wakes a hibernated session; it fires exactly once as
    /// far as the state goes (a firing whose step was not made durable fires again, and its
    /// effects replay with the same idempotency keys). Returns the timer's id (the same when the
    /// input is handled again). The timer is set when the input completes without a panic.
    pub async fn schedule(
        &self,
        when: When,
        input: serde_json::Value,
    ) -> Result<String, HandlerError> {
        let input = serde_json::to_string(&input)
            .map_err(|e| HandlerError::new("schedule", e.to_string()))?;
        if input.len() > crate::record::MAX_TIMER_INPUT {
            return Err(HandlerError::new(
                "schedule",
                format!(
                    "a timer input of {} bytes is over {}",
                    input.len(),
                    crate::record::MAX_TIMER_INPUT
                ),
            ));
        }
        {
            let t = self.base.turn();
            let adds = t
                .ops
                .iter()
                .filter(|o| matches!(o, TimerOp::Add(_)))
                .count();
            if t.timers.len() + adds >= crate::record::MAX_TIMERS {
                return Err(HandlerError::new(
                    "too_many_timers",
                    format!(
                        "the session has {} timers pending (at most {})",
                        t.timers.len() + adds,
                        crate::record::MAX_TIMERS
                    ),
                ));
            }
        }
        let (id, due_ms): (String, u64) = self
            .run_keyed("schedule", |key| async move {
                let due = match when {
                    When::At(ms) => ms,
                    When::After(d) => now_ms().saturating_add(d.as_millis() as u64),
                };
                Ok((key, due))
            })
            .await?;
        self.base
            .turn()
            .ops
            .push(TimerOp::Add(crate::record::Timer {
                id: id.clone(),
                due_ms,
                input,
            }));
        Ok(id)
    }

    /// Cancels a timer set by [`schedule`](Self::schedule); returns whether it was pending
    /// (journaled). Takes effect when the input completes.
    pub async fn cancel(&self, timer: &str) -> Result<bool, HandlerError> {
        let pending = {
            let t = self.base.turn();
            let mut p = t.timers.iter().any(|id| id == timer);
            for op in &t.ops {
                match op {
                    TimerOp::Add(x) if x.id == timer => p = true,
                    TimerOp::Cancel(id) if id == timer => p = false,
                    _ => {}
                }
            }
            p
        };
        let was = self.run("cancel", async move { Ok(pending) }).await?;
        self.base
            .turn()
            .ops
            .push(TimerOp::Cancel(timer.to_string()));
        Ok(was)
    }

    /// Calls another session (ADR 0033): `target` is that session's capability (the bearer
    /// token its clients use: calls are authorized like inputs), `input` JSON of its input type.
    /// Journaled here; exactly once at the callee, which deduplicates by this call's idempotency
    /// key and answers a retry with the answer it gave. The call goes through the directory to
    /// wherever the callee lives and follows it across handovers and failovers until `deadline`
    /// (typed error `call_deadline` after it). A call that would come back to a session already
    /// waiting in the chain (A → B → A) is refused with `call_cycle`, never a deadlock.
    pub async fn call(
        &self,
        target: &str,
        input: serde_json::Value,
        deadline: std::time::Duration,
    ) -> Result<serde_json::Value, HandlerError> {
        let calls = self
            .service::<crate::calls::CallService>()
            .map(|c| c.0.clone())
            .ok_or_else(|| HandlerError::new("call", "this node offers no session calls"))?;
        let mut chain = self.base.turn().chain.clone();
        chain.push(self.base.session_id.to_string());
        let caller = self.base.session_id.to_string();
        let target = target.to_string();
        self.run_keyed("call", |key| async move {
            calls
                .call(crate::calls::CallRequest {
                    caller,
                    chain,
                    key,
                    target,
                    input,
                    deadline,
                })
                .await
        })
        .await
    }

    /// Wall-clock time, milliseconds since the Unix epoch, journaled: the same value when the
    /// input is handled again.
    pub async fn now_ms(&self) -> Result<u64, HandlerError> {
        self.run("now", async { Ok(now_ms()) }).await
    }

    /// A random number, journaled: the same value when the input is handled again.
    pub async fn random_u64(&self) -> Result<u64, HandlerError> {
        self.run("random", async { Ok(rand::random::<u64>()) })
            .await
    }

    /// A node service registered on the host (e.g. a tokenizer, a model catalogue), by type.
    pub fn service<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.base.services.get::<T>()
    }

    /// Whether this node has an inference pool. (Feature `inference`.)
    #[cfg(feature = "inference")]
    pub fn has_inference(&self) -> bool {
        self.base.inference.is_some()
    }

    /// Runs `model` on `input` in the node's inference plane (dedicated threads, batched with
    /// other sessions' requests) and returns the output. The compute time is metered into this
    /// session's usage. Errors (no pool on this node, unknown model, wrong shape/dtype,
    /// backpressure) come back as a [`HandlerError`] with code `inference`. (Feature `inference`:
    /// it links the inference plane, `opengrid-runtime-gpu`, into the handler crate.)
    #[cfg(feature = "inference")]
    pub async fn infer(&self, model: &ModelId, input: Tensor) -> Result<Tensor, HandlerError> {
        let h = self.base.inference.as_ref().ok_or_else(|| {
            HandlerError::new(
                "inference",
                "this node has no inference pool (node config: [inference])",
            )
        })?;
        let out = h
            .infer_with_usage(model, input)
            .await
            .map_err(|e| HandlerError::new("inference", e.to_string()))?;
        self.base.usage.record_inference(out.usage.compute_us);
        Ok(out.output)
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Node services handed to handlers through [`SessionContext::service`]: a small type map.
#[derive(Clone, Default)]
pub struct Services {
    map: Arc<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
}

impl Services {
    /// Adds (or replaces) a service; returns the new set.
    pub fn with<T: Any + Send + Sync>(mut self, service: T) -> Self {
        let mut m: HashMap<_, _> = (*self.map).clone();
        m.insert(
            TypeId::of::<T>(),
            Arc::new(service) as Arc<dyn Any + Send + Sync>,
        );
        self.map = Arc::new(m);
        self
    }

    /// Looks a service up by type.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.map
            .get(&TypeId::of::<T>())
            .and_then(|s| s.downcast_ref::<T>())
    }
}

/// A session handler: the code of one kind of agent session.
///
/// Required: [`id`](Self::id), [`init`](Self::init), [`handle`](Self::handle). State is
/// (de)serialised with serde; the default codec is bincode 2 — override
/// [`encode_state`](Self::encode_state)/[`decode_state`](Self::decode_state) for self-describing
/// types such as `serde_json::Value`.
///
/// # What the runtime guarantees
/// - **One input at a time.** `handle` is never called concurrently for one session; inputs arrive
///   in sequence-number order, each exactly once per incarnation of the session.
/// - **Deduplication.** An input whose seq was already processed is answered as a duplicate and
///   never reaches `handle`.
/// - **Restart with replay.** If `handle` panics, the session restarts from its last checkpoint
///   and inputs processed since that checkpoint are replayed through `handle` (at-least-once at
///   the handler, exactly-once as seen by the state), then the input that panicked is retried by
///   the caller. Handlers must therefore be deterministic functions of (state, input) and must not
///   perform external side effects they cannot repeat.
/// - **Durability per manifest.** With zero acceptable loss, an input is acknowledged only after
///   the state that includes it is durable; otherwise checkpoints are taken at most the loss
///   bound apart.
///
/// # What the handler guarantees
/// - `handle` does not block the thread for long (use `.await` for I/O and inference).
/// - `encode_state` and `decode_state` round-trip.
///
/// ```
/// use opengrid_actors::{HandlerError, SessionContext, SessionHandler};
/// use opengrid_session::SessionId;
///
/// struct Counter;
///
/// impl SessionHandler for Counter {
///     type State = u64;
///     type Input = u64;
///     type Output = u64;
///
///     fn id(&self) -> &str { "counter" }
///
///     fn init(&self, _session: &SessionId) -> u64 { 0 }
///
///     async fn handle(&self, total: &mut u64, add: u64, _ctx: &SessionContext)
///         -> Result<u64, HandlerError>
///     {
///         *total += add;
///         Ok(*total)
///     }
/// }
/// # let s = Counter.encode_state(&41).unwrap();
/// # assert_eq!(Counter.decode_state(&s).unwrap(), 41);
/// ```
pub trait SessionHandler: Send + Sync + 'static {
    /// The session's state, checkpointed per the manifest.
    type State: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// One client input.
    type Input: Serialize + DeserializeOwned + Clone + Send + Sync + 'static;
    /// The answer to one input.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// Handler id; matches `session.handler` in manifests (e.g. `"tutor"`).
    fn id(&self) -> &str;

    /// Version of the state format; stored in checkpoints. Bump it when `State` changes shape.
    fn version(&self) -> u32 {
        1
    }

    /// The state of a brand-new session. Called once per session, never after a restart.
    fn init(&self, session: &SessionId) -> Self::State;

    /// Processes one input and returns the answer. See the trait docs for the guarantees.
    fn handle(
        &self,
        state: &mut Self::State,
        input: Self::Input,
        ctx: &SessionContext,
    ) -> impl Future<Output = Result<Self::Output, HandlerError>> + Send;

    /// Serialises the state for a checkpoint (default: bincode 2).
    fn encode_state(&self, state: &Self::State) -> Result<Vec<u8>, HandlerError> {
        bincode::serde::encode_to_vec(state, bincode::config::standard())
            .map_err(|e| HandlerError::new("state_encode", e.to_string()))
    }

    /// Restores the state from checkpoint bytes (default: bincode 2, size-limited).
    fn decode_state(&self, bytes: &[u8]) -> Result<Self::State, HandlerError> {
        let cfg = bincode::config::standard().with_limit::<MAX_STATE_BYTES>();
        match bincode::serde::decode_from_slice(bytes, cfg) {
            Ok((s, n)) if n == bytes.len() => Ok(s),
            Ok((_, n)) => Err(HandlerError::new(
                "state_decode",
                format!("{} trailing bytes after state", bytes.len() - n),
            )),
            Err(e) => Err(HandlerError::new("state_decode", e.to_string())),
        }
    }
}

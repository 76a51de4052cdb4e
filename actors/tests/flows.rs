//! Timers, streamed replies and session-to-session calls in one process (ADR 0033): a timer fires
//! once, across a failover to another host and while its session hibernates; a streamed reply's
//! chunks are not repeated by a panic's retry and move with the session; a call runs once per
//! key, a cycle is refused, and a call's answer survives the callee's restart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use opengrid_actors::*;
use opengrid_session::*;
use serde_json::{json, Value};

/// Counts what it handles; input JSON:
/// `{"set": ms}` schedules `{"fired": true}`; `{"fired": true}` counts a firing;
/// `{"stream": n, "panic_once": bool}` emits n chunks; `{"call": target, "input": …}` calls;
/// `{"echo": x}` answers x (counting calls it gets).
#[derive(Default)]
struct Flow {
    fired: Arc<AtomicU64>,
    echoed: Arc<AtomicU64>,
    panicked: Mutex<std::collections::HashSet<String>>,
}

impl SessionHandler for Flow {
    type State = u64;
    type Input = Value;
    type Output = Value;

    fn id(&self) -> &str {
        "flow"
    }

    fn init(&self, _: &SessionId) -> u64 {
        0
    }

    async fn handle(
        &self,
        fired: &mut u64,
        input: Value,
        ctx: &SessionContext,
    ) -> Result<Value, HandlerError> {
        if let Some(ms) = input["set"].as_u64() {
            let id = ctx
                .schedule(
                    When::After(Duration::from_millis(ms)),
                    json!({"fired": true}),
                )
                .await?;
            return Ok(json!(id));
        }
        if input["fired"].as_bool() == Some(true) {
            assert!(matches!(ctx.source(), Source::Timer(_)), "a timer's input");
            *fired += 1;
            self.fired.fetch_add(1, Ordering::SeqCst);
            return Ok(json!(*fired));
        }
        if let Some(n) = input["stream"].as_u64() {
            for i in 0..n {
                ctx.emit(&format!("c{i} ")).await?;
                if i == n / 2
                    && input["panic_once"].as_bool() == Some(true)
                    && self.panicked.lock().unwrap().insert(format!(
                        "{}:{}",
                        ctx.session_id(),
                        ctx.seq()
                    ))
                {
                    panic!("mid-stream");
                }
            }
            return Ok(json!(n));
        }
        if let Some(t) = input["call"].as_str() {
            return ctx
                .call(t, input["input"].clone(), Duration::from_secs(5))
                .await;
        }
        if input.get("echo").is_some() {
            self.echoed.fetch_add(1, Ordering::SeqCst);
            return Ok(input["echo"].clone());
        }
        Ok(json!(*fired))
    }
}

/// Calls delivered to sessions of one host by session id (what a node does, minus the network).
struct LocalCalls(Mutex<Option<SessionHost>>);

impl Calls for LocalCalls {
    fn call(&self, req: CallRequest) -> BoxFuture<'_, Result<Value, HandlerError>> {
        Box::pin(async move {
            opengrid_actors::calls::check_chain(&req.chain, &req.target)?;
            let host = self.0.lock().unwrap().clone().expect("host set");
            let s = host
                .get(&SessionId::new(req.target.clone()).unwrap())
                .ok_or_else(|| HandlerError::new("call_failed", "no such session"))?;
            s.call_json(req.key, req.caller, req.chain, req.input)
                .await
                .map_err(|e| HandlerError::new("call_failed", e.to_string()))?
        })
    }
}

async fn host_with(store: Arc<dyn CheckpointStore>, calls: Option<Arc<LocalCalls>>) -> SessionHost {
    let mut services = Services::default();
    if let Some(c) = calls {
        services = services.with(CallService(c));
    }
    SessionHost::new(store, HostConfig::default(), services)
        .await
        .unwrap()
}

fn output(r: Result<Reply<Value>, SessionError>) -> Value {
    match r {
        Ok(Reply::Processed { output, .. }) => output.unwrap(),
        other => panic!("{other:?}"),
    }
}

async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "{what} within 10 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_fires_once_across_a_failover_and_while_hibernated() {
    let store = Arc::new(MemoryCheckpointStore::new());
    let h = Arc::new(Flow::default());
    let id = SessionId::new("t").unwrap();
    let a = host_with(store.clone(), None).await;
    let s = a
        .start(
            h.clone(),
            id.clone(),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    let timer = output(s.send(Seq(1), json!({"set": 400})).await);
    assert_eq!(timer, json!("t:1:0"), "deterministic id");
    // The holder is gone before the timer is due (its host stops: nothing fires there); another
    // host takes over from the shared store with a newer epoch.
    a.shutdown().await;
    assert_eq!(h.fired.load(Ordering::SeqCst), 0);
    let b = host_with(store.clone(), None).await;
    let s = b
        .start(
            h.clone(),
            id.clone(),
            Epoch(2),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    wait_for("the timer fired on the new holder", || {
        h.fired.load(Ordering::SeqCst) == 1
    })
    .await;
    // The firing was a step (the client's numbering is untouched) and is not repeated.
    assert_eq!(output(s.send(Seq(2), json!({"get": true})).await), json!(1));
    let cp = store.get_latest(&id).unwrap().unwrap();
    assert_eq!(cp.seq, Seq(3), "two client inputs and one timer step");

    // Hibernated: the session sleeps, the timer wakes it.
    let _ = output(s.send(Seq(3), json!({"set": 300})).await);
    assert!(s.hibernate_now().await.unwrap());
    assert_eq!(s.status(), SessionStatus::Hibernated);
    wait_for("the timer woke the hibernated session", || {
        h.fired.load(Ordering::SeqCst) == 2
    })
    .await;
    assert_eq!(output(s.send(Seq(4), json!({"get": true})).await), json!(2));
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_not_repeated_by_a_retry_and_moves_with_the_session() {
    let store = Arc::new(MemoryCheckpointStore::new());
    let h = Arc::new(Flow::default());
    let id = SessionId::new("s").unwrap();
    let a = host_with(store.clone(), None).await;
    let s = a
        .start(
            h.clone(),
            id.clone(),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    // Panics halfway through the first time: the retry emits the same chunks, none twice.
    assert!(matches!(
        s.send(Seq(1), json!({"stream": 6, "panic_once": true}))
            .await,
        Err(SessionError::HandlerPanicked { .. })
    ));
    assert_eq!(
        output(
            s.send(Seq(1), json!({"stream": 6, "panic_once": true}))
                .await
        ),
        json!(6)
    );
    let r = s.stream(Seq(1), 0, Duration::ZERO).await.unwrap();
    assert!(r.done);
    assert_eq!(
        r.chunks,
        (0..6).map(|i| format!("c{i} ")).collect::<Vec<_>>()
    );
    assert_eq!(r.answer, Some(json!({"output": 6})));
    // Another holder (handover or failover) has the completed stream from the checkpoint.
    a.shutdown().await;
    let b = host_with(store.clone(), None).await;
    let s2 = b
        .start(
            h.clone(),
            id.clone(),
            Epoch(2),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    let r = s2.stream(Seq(1), 4, Duration::ZERO).await.unwrap();
    assert_eq!(r.chunks, vec!["c4 ", "c5 "]);
    assert!(r.done);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_runs_once_per_key_and_a_cycle_is_refused() {
    let store = Arc::new(MemoryCheckpointStore::new());
    let h = Arc::new(Flow::default());
    let calls = Arc::new(LocalCalls(Mutex::new(None)));
    let host = host_with(store.clone(), Some(calls.clone())).await;
    *calls.0.lock().unwrap() = Some(host.clone());
    let pol = CheckpointPolicy::synchronous();
    let a = host
        .start(h.clone(), SessionId::new("a").unwrap(), Epoch(1), pol)
        .await
        .unwrap();
    let b = host
        .start(h.clone(), SessionId::new("b").unwrap(), Epoch(1), pol)
        .await
        .unwrap();
    assert_eq!(
        output(
            a.send(Seq(1), json!({"call": "b", "input": {"echo": 7}}))
                .await
        ),
        json!(7)
    );
    assert_eq!(h.echoed.load(Ordering::SeqCst), 1);
    // The same call delivered again (a retry after a lost answer): the same answer, no run.
    let again = b
        .call(
            "a:1:0".into(),
            "a".into(),
            vec!["a".into()],
            json!({"echo": 9}),
        )
        .await
        .unwrap();
    assert_eq!(again, Ok(json!(7)));
    assert_eq!(h.echoed.load(Ordering::SeqCst), 1);
    // The answer is remembered across a restart of the callee (it is in its checkpoint).
    b.release().await.unwrap();
    let again = b
        .call(
            "a:1:0".into(),
            "a".into(),
            vec!["a".into()],
            json!({"echo": 9}),
        )
        .await
        .unwrap();
    assert_eq!(again, Ok(json!(7)));
    assert_eq!(h.echoed.load(Ordering::SeqCst), 1);
    // A → B → A: refused, not a deadlock.
    let r = output(
        a.send(
            Seq(2),
            json!({"call": "b", "input": {"call": "a", "input": {"echo": 1}}}),
        )
        .await
        .map(|r| match r {
            Reply::Processed {
                output,
                seq,
                durable,
                copies,
                not_durable,
            } => Reply::Processed {
                output: Ok(match output {
                    Ok(v) => v,
                    Err(e) => json!({"code": e.code}),
                }),
                seq,
                durable,
                copies,
                not_durable,
            },
            d => d,
        }),
    );
    assert_eq!(r, json!({"code": "call_cycle"}));
    host.shutdown().await;
}

//! The effect journal (ADR 0032): an effect runs at most once per input across a handler panic,
//! a failover to another host (the holder stuck or gone after the effect) and a failed durable
//! write; built-in `now_ms`/`random_u64` replay the same values; keys are stable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opengrid_actors::*;
use opengrid_session::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// One effect, answer its result.
    Once,
    /// One effect, then panic the first time.
    PanicAfter,
    /// One effect, then never finish the first time (the holder is stuck; another takes over).
    HangAfter,
    /// A random number and the time, then panic the first time.
    RandomThenPanic,
}

/// Counts effect runs; answers the effect's result plus the state.
#[derive(Default)]
struct Effectful {
    /// Effects actually run (the outside world's view).
    ran: Arc<AtomicU64>,
    /// Idempotency keys the effects were given.
    keys: Arc<Mutex<Vec<String>>>,
    /// Values seen by the handler, per call.
    seen: Arc<Mutex<Vec<(u64, u64)>>>,
    /// Inputs that already misbehaved once.
    tripped: Mutex<std::collections::HashSet<u64>>,
}

impl SessionHandler for Effectful {
    type State = u64;
    type Input = Mode;
    type Output = u64;

    fn id(&self) -> &str {
        "effectful"
    }

    fn init(&self, _: &SessionId) -> u64 {
        0
    }

    async fn handle(
        &self,
        total: &mut u64,
        mode: Mode,
        ctx: &SessionContext,
    ) -> Result<u64, HandlerError> {
        let first = self.tripped.lock().unwrap().insert(ctx.seq().0);
        let v = match mode {
            Mode::RandomThenPanic => {
                let r = ctx.random_u64().await?;
                let t = ctx.now_ms().await?;
                self.seen.lock().unwrap().push((r, t));
                if first {
                    panic!("after random");
                }
                r % 1000
            }
            _ => {
                let (ran, keys) = (self.ran.clone(), self.keys.clone());
                ctx.run_keyed("call", |key| async move {
                    keys.lock().unwrap().push(key);
                    Ok(ran.fetch_add(1, Ordering::SeqCst) + 100)
                })
                .await?
            }
        };
        match (mode, first) {
            (Mode::PanicAfter, true) => panic!("after the effect"),
            (Mode::HangAfter, true) => std::future::pending::<()>().await,
            _ => {}
        }
        *total += v;
        Ok(*total)
    }
}

async fn host(store: Arc<dyn CheckpointStore>) -> SessionHost {
    SessionHost::new(store, HostConfig::default(), Services::default())
        .await
        .unwrap()
}

fn processed(r: Result<Reply<u64>, SessionError>) -> u64 {
    match r {
        Ok(Reply::Processed { output, .. }) => output.unwrap(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_effect_is_not_repeated_after_a_panic() {
    for policy in [
        CheckpointPolicy::synchronous(),
        CheckpointPolicy::periodic(Duration::from_secs(60)),
    ] {
        let store = Arc::new(MemoryCheckpointStore::new());
        let h = Arc::new(Effectful::default());
        let host = host(store).await;
        let s = host
            .start(h.clone(), SessionId::new("p").unwrap(), Epoch(1), policy)
            .await
            .unwrap();
        assert_eq!(processed(s.send(Seq(1), Mode::Once).await), 100);
        // Panics after its effect: the client's retry replays the recorded result.
        assert!(matches!(
            s.send(Seq(2), Mode::PanicAfter).await,
            Err(SessionError::HandlerPanicked { .. })
        ));
        assert_eq!(processed(s.send(Seq(2), Mode::PanicAfter).await), 100 + 101);
        assert_eq!(
            h.ran.load(Ordering::SeqCst),
            2,
            "{policy:?}: one run per input"
        );
        // A later input runs its own effect.
        assert_eq!(processed(s.send(Seq(3), Mode::Once).await), 201 + 102);
        assert_eq!(
            *h.keys.lock().unwrap(),
            vec!["p:1:0", "p:2:0", "p:3:0"],
            "keys are session:seq:index"
        );
        host.shutdown().await;
    }
}

/// The holder is stuck after the effect (as good as killed: it never answers); another host takes
/// the session over with a newer epoch from the shared store — what a failover does with the
/// replicas — and the client's retry of the unacknowledged input gets the recorded result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_effect_is_not_repeated_after_a_failover() {
    let store = Arc::new(MemoryCheckpointStore::new());
    let h = Arc::new(Effectful::default());
    let a = host(store.clone()).await;
    let id = SessionId::new("f").unwrap();
    let s = a
        .start(
            h.clone(),
            id.clone(),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    assert_eq!(processed(s.send(Seq(1), Mode::Once).await), 100);
    let stuck = tokio::spawn({
        let s = s.clone();
        async move { s.send(Seq(2), Mode::HangAfter).await }
    });
    // Wait until the effect ran (and was journaled) on the stuck holder.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h.ran.load(Ordering::SeqCst) < 2 {
        assert!(std::time::Instant::now() < deadline, "effect never ran");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The handler keeps running after the effect: the journal is written within the grace.
    loop {
        let latest = store.get_latest(&id).unwrap().unwrap();
        assert_eq!(latest.seq, Seq(1));
        // The runtime record also keeps the answers of recent inputs: wait for the pending
        // input's journal in it.
        if opengrid_actors::record::decode(latest.seq, &latest.journal)
            .1
            .is_some()
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "journal never written"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Failover: a new holder, epoch 2, same store.
    let b = host(store.clone()).await;
    let s2 = b
        .start(
            h.clone(),
            id.clone(),
            Epoch(2),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    assert_eq!(processed(s2.send(Seq(2), Mode::HangAfter).await), 100 + 101);
    assert_eq!(
        h.ran.load(Ordering::SeqCst),
        2,
        "the effect did not run again"
    );
    // Its checkpoint covers the input: the journal is gone (the answers stay, for retries).
    let latest = store.get_latest(&id).unwrap().unwrap();
    let (sys, pending) = opengrid_actors::record::decode(latest.seq, &latest.journal);
    assert_eq!((latest.seq, pending.is_none()), (Seq(2), true));
    assert!(sys.client_answer(Seq(2)).is_some(), "the answer is kept");
    stuck.abort();
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn now_and_random_replay_the_same_values() {
    let store = Arc::new(MemoryCheckpointStore::new());
    let h = Arc::new(Effectful::default());
    let host = host(store).await;
    let s = host
        .start(
            h.clone(),
            SessionId::new("r").unwrap(),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    assert!(s.send(Seq(1), Mode::RandomThenPanic).await.is_err());
    let out = processed(s.send(Seq(1), Mode::RandomThenPanic).await);
    let seen = h.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0], seen[1],
        "the retry saw the recorded random number and time"
    );
    assert_eq!(out, seen[0].0 % 1000);
    host.shutdown().await;
}

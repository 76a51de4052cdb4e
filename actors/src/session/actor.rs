//! The session actor: its messages (client inputs, calls, timer firings, checkpoint, hibernate,
//! close, release) in mailbox order, each input as one step ([`super::step`]).

use super::step::{ActorState, Call, Settled, MAX_FIRES_PER_WAKE};
use super::*;

/// The session actor. Generic over the handler; one incarnation per (re)start.
pub(crate) struct SessionActor<H>(PhantomData<fn() -> H>);

impl<H> SessionActor<H> {
    pub fn new() -> Self {
        SessionActor(PhantomData)
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
        // Kept while its input is still to come (it is found by its source, whatever step the
        // input lands on).
        st.pending = inflight.or(stored).filter(|j| match &j.source {
            Source::Client(s) => *s > st.sys.client_seq,
            Source::Timer(id) => st.sys.timers.iter().any(|t| &t.id == id),
            Source::Call { key, .. } => st.sys.call_answer(key).is_none(),
        });
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
                    let original = st.sys.client_answer(seq).and_then(decode_answer::<H>);
                    let _ = reply.send(Ok(Reply::Duplicate {
                        seq,
                        last,
                        original,
                    }));
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
                    // Try again when the status changes (the handover resumes this holder, or it
                    // completes and the release stops this actor, alarm and all).
                    st.alarm = Some((0, {
                        let me = myself.clone();
                        let shared = st.shared.clone();
                        tokio::spawn(async move {
                            let changed = shared.changed.notified();
                            tokio::pin!(changed);
                            changed.as_mut().enable();
                            if !matches!(*lock(&shared.status), Status::Running(_)) {
                                // Bounded: a change between the check above and `enable`.
                                let _ = tokio::time::timeout(Duration::from_secs(1), changed).await;
                            }
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

/// A kept answer (`{"output": …}` or `{"error": …}`) as the handler's result; `None` (and a
/// warning) when it no longer reads as this handler's output.
fn decode_answer<H: SessionHandler>(answer: &str) -> Option<Result<H::Output, HandlerError>> {
    let mut v: serde_json::Value = serde_json::from_str(answer).ok()?;
    let r = if let Some(e) = v.get_mut("error") {
        serde_json::from_value::<HandlerError>(e.take()).map(Err)
    } else {
        let o = v.get_mut("output").map(serde_json::Value::take)?;
        serde_json::from_value::<H::Output>(o).map(Ok)
    };
    r.map_err(
        |e| tracing::warn!(error = %e, "a kept answer does not read as this handler's output"),
    )
    .ok()
}

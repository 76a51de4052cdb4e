//! `bench failover` (P3): kill -9 of a node holding many zero-loss sessions.

use super::*;

/// Result of `bench failover`.
#[derive(Clone, Debug, Serialize)]
pub struct FailoverResult {
    /// `failover_kill9`.
    pub name: &'static str,
    /// Kill → session active elsewhere, median over sessions, µs.
    pub p50_us: u64,
    /// p99 over sessions, µs.
    pub p99_us: u64,
    /// Last session, µs (= kill → every session active elsewhere).
    pub max_us: u64,
    /// Sessions that became active elsewhere.
    pub count: usize,
    /// Kill → every session active elsewhere (`max_us`), ms, for reading.
    pub total_ms: u64,
    /// Kill → first session seen active elsewhere, µs (detection + first restore).
    pub first_us: u64,
    /// Acknowledged inputs missing after the failover (zero-loss sessions: must be 0).
    pub lost: u64,
    /// Inputs applied twice.
    pub duplicated: u64,
    /// Sessions served by more than one surviving node after the failover.
    pub active_twice: usize,
    /// Sessions not active elsewhere within the budget.
    pub not_recovered: usize,
    /// Sessions placed.
    pub sessions: usize,
    /// Of which held by the victim at the kill.
    pub on_victim: usize,
    /// Nodes (victim included).
    pub nodes: usize,
    /// Checkpoint replicas per session.
    pub replicas: usize,
    /// Whether nodes fsync checkpoints.
    pub fsync: bool,
    /// RC `/status` request time during the wait, median µs (the safety net's resolution; the
    /// figures come from the RC's event stream, to the microsecond, when it kept up).
    pub poll_p50_us: u64,
    /// P3 target for p99, µs.
    pub target_p99_us: u64,
    /// `p99_us <= target_p99_us` and nothing lost, duplicated, active twice or unrecovered.
    pub met: bool,
    /// Placement of all sessions on the victim, ms.
    pub place_ms: u64,
    /// Three nodes joining until every replica set is complete, ms.
    pub replicate_ms: u64,
}

/// `bench failover` (P3).
pub async fn failover(
    args: &ColonyArgs,
    sessions_n: usize,
    progress: &Progress,
) -> Result<FailoverResult, BenchError> {
    let n = sessions_n.clamp(1, 100_000);
    let budget = Duration::from_secs(args.budget_s.clamp(10, 3600));
    let mut c = Colony::start(args, progress).await?;
    let big = format!(
        "capacity = {}\n[hardware]\nmemory = \"128GiB\"",
        n + n / 2 + 16
    );
    c.node("victim", &big)?;
    c.wait_alive(1).await?;
    progress.line(format!("victim alone; placing {n} counter sessions"));

    // 1. Place every session on the victim (the only node).
    let client = c.client();
    let t_place = Instant::now();
    let placed: Vec<Result<Session, ClientError>> = stream::iter(0..n)
        .map(|_| {
            let client = client.clone();
            async move { client.create(COUNTER_ZERO_LOSS, None).await }
        })
        .buffer_unordered(FANOUT)
        .collect()
        .await;
    let mut ss = Vec::with_capacity(n);
    for p in placed {
        ss.push(p.map_err(|e| failed(format!("placing a session: {e}")))?);
    }
    let place_ms = t_place.elapsed().as_millis() as u64;
    progress.line(format!("{n} sessions placed in {place_ms} ms"));

    // 2. Three more nodes; wait until every replica set is complete (RC, then each holder).
    let t_rep = Instant::now();
    for name in ["n1", "n2", "n3"] {
        c.node(name, &big)?;
    }
    c.wait_alive(4).await?;
    progress.line("4 members alive; waiting for full replica sets (k = 2)");
    let st = c
        .wait_status("every replica set complete", budget, |st| {
            let s = sessions(st);
            s.len() == n
                && s.iter()
                    .all(|e| e["replicas"].as_array().map(Vec::len) == Some(2))
        })
        .await?;
    let victim_api =
        member_api(&st, "victim").ok_or_else(|| failed("the victim is not in the RC status"))?;
    let deadline = Instant::now() + budget;
    let ids: Vec<String> = ss.iter().map(|s| s.id.clone()).collect();
    let mut pending = ids.clone();
    for round in 0..10_000u32 {
        let http = c.http.clone();
        let api = victim_api.clone();
        let counts: Vec<(String, usize)> = stream::iter(pending)
            .map(|id| {
                let (http, api) = (http.clone(), api.clone());
                async move {
                    let k = holder_replicas(&http, &api, &id).await;
                    (id, k)
                }
            })
            .buffer_unordered(FANOUT)
            .collect()
            .await;
        pending = counts
            .into_iter()
            .filter(|(_, k)| *k < 2)
            .map(|(id, _)| id)
            .collect();
        if pending.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(failed(format!(
                "{} session(s) still without 2 replicas on the victim after {budget:?} \
                 (round {round}); logs in {}",
                pending.len(),
                c.logs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let replicate_ms = t_rep.elapsed().as_millis() as u64;
    progress.line(format!("replica sets complete in {replicate_ms} ms"));

    // 3. One acknowledged (zero-loss: durable on 2 replicas) input per session.
    let firsts: Vec<(Session, Result<i64, ClientError>)> = stream::iter(ss)
        .map(|mut s| async move {
            let r = send_one(&mut s, 0).await;
            (s, r)
        })
        .buffer_unordered(FANOUT)
        .collect()
        .await;
    let mut ss = Vec::with_capacity(n);
    for (s, r) in firsts {
        match r {
            Ok(1) => ss.push(s),
            Ok(t) => return Err(failed(format!("{}: first input answered {t}", s.id))),
            Err(e) => return Err(failed(format!("{}: first input: {e}", s.id))),
        }
    }
    let st = c
        .status()
        .await
        .ok_or_else(|| failed("RC status unreadable"))?;
    let on_victim = sessions(&st)
        .iter()
        .filter(|e| e["node_name"] == "victim")
        .count();
    progress.line(format!(
        "{n} inputs acknowledged; {on_victim} sessions on the victim; kill -9"
    ));

    // 4. kill -9, then watch the RC until every session is active elsewhere: its event stream
    //    (`/ui/events`: a `session_moved` event is published when the directory entry turns
    //    active on the new holder) gives each session's time; `/status`, polled every 200 ms,
    //    is the safety net for events the stream skipped (a lagging subscriber gets a resync).
    //    Polling `/status` alone (a 1,000-entry JSON document every few ms) kept one RC core
    //    busy and slowed the very restores it timed.
    let moved = watch_failovers(&c).await;
    let killed = Instant::now();
    c.kill9("victim")?;
    let mut seen: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut polls = Vec::new();
    let wait_deadline = killed + budget;
    let mut last_report = Instant::now();
    let mut last_poll: Option<Instant> = None;
    for _ in 0..1_000_000u32 {
        for (id, at) in lock_moved(&moved).iter() {
            let at = at.saturating_duration_since(killed).as_micros() as u64;
            let e = seen.entry(id.clone()).or_insert(at);
            *e = (*e).min(at);
        }
        if last_poll.is_none_or(|t| t.elapsed() >= Duration::from_millis(200)) {
            let t = Instant::now();
            last_poll = Some(t);
            let st = c.status().await;
            let at = killed.elapsed().as_micros() as u64;
            polls.push(t.elapsed().as_micros() as u64);
            if let Some(st) = st {
                for e in sessions(&st) {
                    if e["state"] == "active" && e["node_name"] != "victim" {
                        if let Some(id) = e["session_id"].as_str() {
                            seen.entry(id.to_string()).or_insert(at);
                        }
                    }
                }
            }
        }
        if seen.len() >= n || Instant::now() >= wait_deadline {
            break;
        }
        if last_report.elapsed() >= Duration::from_millis(500) {
            progress.line(format!(
                "{} / {n} active elsewhere after {:?}",
                seen.len(),
                killed.elapsed()
            ));
            last_report = Instant::now();
        }
        c.check_alive()?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    moved.1.abort();
    let not_recovered = n - seen.len().min(n);
    progress.line(format!(
        "{} / {n} active elsewhere; last at {} ms after the kill",
        seen.len(),
        seen.values().max().copied().unwrap_or(0) / 1000
    ));

    // 5. Nobody active twice: ask every survivor for every session.
    let st = c
        .status()
        .await
        .ok_or_else(|| failed("RC status unreadable"))?;
    let survivors: Vec<String> = ["n1", "n2", "n3"]
        .iter()
        .filter_map(|m| member_api(&st, m))
        .collect();
    let http = c.http.clone();
    let served: Vec<usize> = stream::iter(ids.clone())
        .map(|id| {
            let (http, survivors) = (http.clone(), survivors.clone());
            async move {
                let mut k = 0;
                for api in &survivors {
                    if let Ok(r) = http.get(format!("{api}/sessions/{id}")).send().await {
                        k += usize::from(r.status().as_u16() == 200);
                    }
                }
                k
            }
        })
        .buffer_unordered(FANOUT)
        .collect()
        .await;
    let active_twice = served.iter().filter(|k| **k > 1).count();

    // 6. One more input per session through the client: the total must be exactly 2.
    progress.line("one more input per session through the client");
    let seconds: Vec<(String, Result<i64, ClientError>, u64)> = stream::iter(ss)
        .map(|mut s| async move {
            let r = send_one(&mut s, 1).await;
            (s.id.clone(), r, s.lost)
        })
        .buffer_unordered(FANOUT)
        .collect()
        .await;
    let (mut lost, mut duplicated) = (0u64, 0u64);
    for (id, r, client_lost) in seconds {
        let total = r.map_err(|e| failed(format!("{id}: input after the failover: {e}")))?;
        lost += (2 - total).max(0) as u64 + client_lost;
        duplicated += (total - 2).max(0) as u64;
    }
    let s = summarize(seen.values().copied().collect());
    let poll = summarize(polls);
    let ok = lost == 0 && duplicated == 0 && active_twice == 0 && not_recovered == 0;
    Ok(FailoverResult {
        name: "failover_kill9",
        p50_us: s.p50_us,
        p99_us: s.p99_us,
        max_us: s.max_us,
        count: s.count,
        total_ms: s.max_us / 1000,
        first_us: seen.values().min().copied().unwrap_or(0),
        lost,
        duplicated,
        active_twice,
        not_recovered,
        sessions: n,
        on_victim,
        nodes: 4,
        replicas: 2,
        fsync: c.fsync,
        poll_p50_us: poll.p50_us,
        target_p99_us: FAILOVER_TARGET_P99_US,
        met: ok && s.p99_us <= FAILOVER_TARGET_P99_US,
        place_ms,
        replicate_ms,
    })
}

/// When each session was reported moved by a failover, as the RC's event stream says.
type Moved = Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>>;

fn lock_moved(
    m: &(Moved, tokio::task::JoinHandle<()>),
) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Instant>> {
    m.0.lock().unwrap_or_else(|p| p.into_inner())
}

/// Subscribes to the RC's event stream (as the colony's operator) and records the arrival of
/// each `session_moved` event of a failover; returns once the stream answered, so that no
/// event after the caller's next step is missed. A stream that cannot be opened records
/// nothing (the `/status` poll then times every session).
async fn watch_failovers(c: &Colony) -> (Moved, tokio::task::JoinHandle<()>) {
    let moved: Moved = Arc::default();
    let resp = c
        .http
        .get(format!("{}/ui/events", c.rc_api))
        .timeout(Duration::from_secs(3600))
        .send()
        .await
        .ok()
        .filter(|r| r.status().is_success());
    let m = moved.clone();
    let task = tokio::spawn(async move {
        let Some(resp) = resp else { return };
        let mut body = resp.bytes_stream();
        let mut buf = Vec::new();
        while let Some(Ok(chunk)) = body.next().await {
            let now = Instant::now();
            buf.extend_from_slice(&chunk);
            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                let Some(data) = line.strip_prefix(b"data:") else {
                    continue;
                };
                let Ok(v) = serde_json::from_slice::<Value>(data) else {
                    continue;
                };
                if v["kind"] == "session_moved" && v["how"] == "failover" {
                    if let Some(id) = v["session"].as_str() {
                        m.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(id.to_string())
                            .or_insert(now);
                    }
                }
            }
        }
    });
    (moved, task)
}

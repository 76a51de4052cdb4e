//! `bench rc-scale`'s loading of the RC's directory through the adoption path (`--load
//! report`, ADR 0042), and the wait for the first node to be placeable. Split from
//! `rc_scale.rs` along that concern: it only hands simulated nodes their sessions and watches the
//! RC's counters; the node protocol it drives stays in the parent (`SimNode::send_holding`).

use super::*;

/// Waits until the RC counts a node placeable (announced to the colony at its next tick:
/// `/health`'s `members_alive`), within 30 s.
pub(super) async fn wait_placeable(rc: &Rc) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alive = match rc.http.get(format!("{}/health", rc.api)).send().await {
            Ok(r) => r
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v["members_alive"].as_u64())
                .unwrap_or(0),
            Err(_) => 0,
        };
        if alive >= 1 {
            break;
        }
        if Instant::now() >= deadline {
            return Err(failed("the first node was not placeable within 30 s"));
        }
        // Poll interval: ends when the RC counts the node alive, or at the 30 s deadline.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Node `i`'s share of `sessions` over `n` nodes (the first `sessions % n` get one more).
pub fn share(sessions: usize, n: usize, i: usize) -> usize {
    sessions / n.max(1) + usize::from(i < sessions % n.max(1))
}

/// Sessions per holding-report wave while loading by reports.
const REPORT_WAVE: usize = 5_000;

/// Loads the directory through the RC's adoption path: every simulated node takes its share of
/// the sessions (epoch 1, the two next nodes as its replica set) and sends its rejoin holding
/// report; waves of [`REPORT_WAVE`] sessions, each waited for on the RC's
/// `opengrid_cluster_sessions_adopted_total` (with progress) before the next. Returns the
/// sessions the RC adopted within `budget`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn load_by_reports(
    launcher: &mut Launcher,
    rc: &Rc,
    pid: u32,
    (sessions, rate): (usize, u64),
    nodes: &Arc<Vec<Arc<SimNode>>>,
    shared: &Arc<Shared>,
    budget: Duration,
    progress: &Progress,
) -> Result<usize, BenchError> {
    let t = Instant::now();
    let n = nodes.len();
    let adopted = |text: &str| metric_sum(text, "opengrid_cluster_sessions_adopted_total", None);
    let base = adopted(&rc.metrics().await) as usize;
    let mut sent = 0usize;
    let mut last_line = Instant::now();
    let (mut last_got, mut last_move) = (0usize, Instant::now());
    const STALL: Duration = Duration::from_secs(30);
    let mut i = 0usize;
    while i < n && t.elapsed() < budget {
        // Pacing: the next wave no earlier than the rate allows (a rate, not a guess).
        if rate > 0 {
            tokio::time::sleep_until(
                (t + Duration::from_secs_f64(sent as f64 / rate as f64)).into(),
            )
            .await;
        }
        // One wave: nodes until REPORT_WAVE sessions.
        let mut wave = 0usize;
        while i < n && wave < REPORT_WAVE {
            let node = &nodes[i];
            let k = share(sessions, n, i);
            let mut st = node.lock();
            // Added to what it holds (the baseline's placements on the first node stay).
            st.held.extend((0..k).map(|j| Held {
                session: format!("rcs-{i}-{j}"),
                epoch: 1,
                handler: "counter".into(),
                manifest: None,
                replicas: vec![
                    nodes[(i + 1) % n].spec.migration.clone(),
                    nodes[(i + 2) % n].spec.migration.clone(),
                ],
            }));
            // Not joined: its join ack sends the rejoin report (as a node's does).
            if st.link.is_some() && k > 0 {
                node.send_holding(&mut st, shared, true);
            }
            wave += k;
            i += 1;
        }
        sent += wave;
        // Waits for the wave (the RC's count), a poll with the load budget as deadline.
        loop {
            let got = adopted(&rc.metrics().await).saturating_sub(base as u64) as usize;
            if last_line.elapsed() >= Duration::from_secs(10) || got >= sessions {
                last_line = Instant::now();
                progress.line(format!(
                    "rc-scale: {got}/{sessions} sessions adopted from holding reports, {:.0}/s, RC RSS {} MiB, {} joined",
                    got as f64 / t.elapsed().as_secs_f64(),
                    rss_kib(pid, "VmRSS:") >> 10,
                    shared.joined.load(Ordering::Relaxed)
                ));
            }
            if got > last_got {
                (last_got, last_move) = (got, Instant::now());
            }
            // A wave whose last reports went nowhere (a node evicted meanwhile reports again
            // when it rejoins): the next wave goes out after 30 s without progress.
            if got >= sent || t.elapsed() >= budget || last_move.elapsed() > STALL {
                break;
            }
            if let ProcState::Exited(st) = launcher.state("rc")? {
                return Err(failed(format!("the RC exited while loading ({st:?})")));
            }
            // Poll interval: ends when the wave is adopted or at the load budget.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok((adopted(&rc.metrics().await) as usize).saturating_sub(base))
}

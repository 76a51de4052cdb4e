//! `bench handover` (P2) on node processes: planned handovers under continuous input, of blob
//! sessions by state size, or (`--handler`) of a counter run natively vs as a WebAssembly agent.

use super::*;

/// Result of `bench handover` (node processes) for one state size.
#[derive(Clone, Debug, Serialize)]
pub struct ColonyHandoverResult {
    /// `handover_blackout_<size>`.
    pub name: String,
    /// `on`, or `off` (`--security off|both`: measurement only).
    pub security: &'static str,
    /// Who runs the session: `native` (compiled in) or `wasm` (an agent package).
    pub handler: &'static str,
    /// Blackout (freeze → target active, the node's figure) median, µs.
    pub p50_us: u64,
    /// Blackout p99, µs.
    pub p99_us: u64,
    /// Worst blackout, µs.
    pub max_us: u64,
    /// Handovers completed.
    pub count: usize,
    /// Handovers asked for.
    pub requested: usize,
    /// The source's part of the blackout (freeze → final checkpoint written and replicated),
    /// median µs; the rest is the target's activation.
    pub freeze_p50_us: u64,
    /// Its p99, µs.
    pub freeze_p99_us: u64,
    /// Handovers refused or aborted (the source kept serving; retried).
    pub aborted: usize,
    /// Whole handover (pre-copy included) median, µs.
    pub total_p50_us: u64,
    /// Whole handover p99, µs.
    pub total_p99_us: u64,
    /// Acknowledged inputs missing (answers below the expected total, and at the end).
    pub lost: u64,
    /// Inputs applied twice (answers above the expected total).
    pub duplicated: u64,
    /// Client errors (anything but a followed `moved`).
    pub client_errors: u64,
    /// The first client error, if any.
    pub first_client_error: Option<String>,
    /// The first refused or aborted handover, if any.
    pub first_abort: Option<String>,
    /// Inputs acknowledged during the run.
    pub inputs: u64,
    /// Client input latency (send → acknowledged, zero-loss), median µs.
    pub input_p50_us: u64,
    /// Client input latency p99, µs.
    pub input_p99_us: u64,
    /// Worst client input latency (what a client sees of a handover), µs.
    pub input_max_us: u64,
    /// State bytes moved in the final checkpoint (from the handover reports, median).
    pub state_bytes: usize,
    /// Loopback TCP round trip (64 B ping-pong) in the same run, median µs: the floor.
    pub rtt_p50_us: u64,
    /// Loopback TCP round trip p99, µs.
    pub rtt_p99_us: u64,
    /// HTTP `GET /health` round trip to a node in the same run, median µs.
    pub http_rtt_p50_us: u64,
    /// HTTP round trip p99, µs.
    pub http_rtt_p99_us: u64,
    /// P2 target for the blackout p99, µs (none for 4 KiB).
    pub target_p99_us: Option<u64>,
    /// Within the target (when there is one) with nothing lost, duplicated or failed.
    pub met: bool,
    /// `--handler both`, the wasm result: the native blackout of the same run, median µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_p50_us: Option<u64>,
    /// Its p99, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_p99_us: Option<u64>,
    /// Wasm over native blackout at the median.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_p50: Option<f64>,
    /// Wasm over native blackout at p99.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_p99: Option<f64>,
    /// Whether nodes fsync checkpoints.
    pub fsync: bool,
    /// Seconds this size took.
    pub elapsed_s: f64,
    /// Every blackout, µs (to pool rounds; not printed).
    #[serde(skip)]
    pub samples: Vec<u64>,
}

/// Pools rounds of one size and security (`--security both`): blackout percentiles over every
/// sample; counts and violations add up; the rest is the first round's.
pub fn pool_colony_handover(runs: Vec<ColonyHandoverResult>) -> Option<ColonyHandoverResult> {
    let mut acc = crate::bench::fold_runs(runs, |acc, r| {
        acc.samples.extend(r.samples);
        acc.requested += r.requested;
        acc.aborted += r.aborted;
        acc.lost += r.lost;
        acc.duplicated += r.duplicated;
        acc.client_errors += r.client_errors;
        acc.inputs += r.inputs;
        acc.met &= r.met;
        acc.elapsed_s += r.elapsed_s;
    })?;
    let b = summarize(acc.samples.clone());
    (acc.p50_us, acc.p99_us, acc.max_us, acc.count) = (b.p50_us, b.p99_us, b.max_us, b.count);
    acc.met &= acc.target_p99_us.is_none_or(|t| acc.p99_us <= t);
    acc.elapsed_s = (acc.elapsed_s * 10.0).round() / 10.0;
    Some(acc)
}

struct InputLoop {
    acked: i64,
    lost: u64,
    duplicated: u64,
    errors: u64,
    first_error: Option<String>,
    latencies: Vec<u64>,
    session: Session,
}

/// Sends `1` continuously until `stop` (bounded by `budget` and a count), checking each answer.
async fn input_loop(session: Session, stop: Arc<AtomicBool>, budget: Duration) -> InputLoop {
    let mut st = InputLoop {
        acked: 0,
        lost: 0,
        duplicated: 0,
        errors: 0,
        first_error: None,
        latencies: Vec::new(),
        session,
    };
    let t0 = Instant::now();
    while !stop.load(Ordering::Acquire) && t0.elapsed() < budget && st.acked < 10_000_000 {
        let t = Instant::now();
        match send_one(&mut st.session, st.acked).await {
            Ok(total) => {
                st.latencies.push(t.elapsed().as_micros() as u64);
                let want = st.acked + 1;
                if total > want {
                    st.duplicated += (total - want) as u64;
                } else if total < want {
                    st.lost += (want - total) as u64;
                }
                st.acked = total.max(0);
            }
            Err(e) => {
                st.errors += 1;
                st.first_error.get_or_insert_with(|| e.to_string());
                if st.errors > 100 {
                    break;
                }
            }
        }
    }
    st
}

/// What [`measure`] saw of one session's handovers.
struct Measured {
    blackouts: Vec<u64>,
    freezes: Vec<u64>,
    totals: Vec<u64>,
    bytes: Vec<u64>,
    aborted: Vec<String>,
    il: InputLoop,
}

/// `count` planned handovers of session `s` round the nodes `names` while a client sends inputs
/// continuously; the first `warmup` successful handovers are not recorded (every node has
/// served the session once: an agent is loaded everywhere). Bounded by `budget` and by twice as
/// many attempts as handovers.
#[allow(clippy::too_many_arguments)]
async fn measure(
    c: &Colony,
    client: &Client,
    s: Session,
    names: &[&str],
    count: usize,
    warmup: usize,
    budget: Duration,
    label: &str,
    progress: &Progress,
) -> Result<Measured, BenchError> {
    let id = s.id.clone();
    let (mut holder, mut holder_api) = (s.placement.node_name.clone(), s.address.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let inputs = tokio::spawn(input_loop(
        s,
        stop.clone(),
        budget + Duration::from_secs(60),
    ));
    let (mut blackouts, mut totals, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
    let mut freezes = Vec::new();
    let mut aborted = Vec::new();
    let deadline = Instant::now() + budget;
    let (mut attempts, mut warm) = (0usize, 0usize);
    while blackouts.len() < count
        && attempts < (count + warmup) * 2 + 50 * warmup
        && Instant::now() < deadline
    {
        attempts += 1;
        let pos = names.iter().position(|n| *n == holder).unwrap_or(0);
        let target = names[(pos + 1) % names.len()];
        let r = c
            .http
            .post(format!("{holder_api}/sessions/{id}/handover"))
            .body(json!({ "target": target }).to_string())
            .send()
            .await;
        let (status, body) = match r {
            Ok(r) => {
                let s = r.status().as_u16();
                (s, r.json::<Value>().await.unwrap_or(Value::Null))
            }
            Err(e) => (0, json!({ "error": e.to_string() })),
        };
        if status == 200 {
            holder = body["to"].as_str().unwrap_or(target).to_string();
            if let Some(a) = body["address"].as_str() {
                holder_api = a.to_string();
            }
            if warm < warmup {
                warm += 1;
                continue;
            }
            blackouts.push((body["blackout_ms"].as_f64().unwrap_or(0.0) * 1e3) as u64);
            freezes.push((body["freeze_ms"].as_f64().unwrap_or(0.0) * 1e3) as u64);
            totals.push((body["total_ms"].as_f64().unwrap_or(0.0) * 1e3) as u64);
            bytes.push(body["state_bytes"].as_u64().unwrap_or(0));
        } else {
            if warm >= warmup {
                aborted.push(format!("{status} {body}"));
            }
            // Where does it live now? Ask the RC.
            if let Ok(v) = client.get(&format!("/sessions/{id}")).await {
                if let (Some(n), Some(a)) = (v["node_name"].as_str(), v["address"].as_str()) {
                    holder = n.to_string();
                    holder_api = a.to_string();
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let done = blackouts.len();
        if status == 200 && done > 0 && done % 100 == 0 {
            progress.line(format!(
                "handover {label}: {done}/{count} ({} aborted)",
                aborted.len()
            ));
        }
    }
    stop.store(true, Ordering::Release);
    let mut il = tokio::time::timeout(Duration::from_secs(120), inputs)
        .await
        .map_err(|_| failed("the input client did not stop within 120 s"))?
        .map_err(failed)?;
    // One more input after the last move: the total must be exactly acked + 1.
    match send_one(&mut il.session, il.acked).await {
        Ok(total) => {
            let want = il.acked + 1;
            il.lost += (want - total).max(0) as u64;
            il.duplicated += (total - want).max(0) as u64;
            il.acked = total;
        }
        Err(e) => {
            return Err(failed(format!(
                "{id}: input after the last handover: {e}; logs in {}",
                c.logs()
            )))
        }
    }
    il.lost += il.session.lost;
    if !aborted.is_empty() {
        progress.line(format!(
            "{label}: {} aborted handover(s), e.g. {}",
            aborted.len(),
            aborted[0]
        ));
    }
    Ok(Measured {
        blackouts,
        freezes,
        totals,
        bytes,
        aborted,
        il,
    })
}

/// The floor of a run: loopback TCP and HTTP `/health` round trips to `node_api`.
async fn floor(
    c: &Colony,
    node_api: &str,
    progress: &Progress,
) -> Result<(Summary, Summary), BenchError> {
    let rtt = tokio::task::spawn_blocking(|| tcp_rtt(2000))
        .await
        .map_err(failed)??;
    let mut http_rtt = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let t = Instant::now();
        let r = c
            .http
            .get(format!("{node_api}/health"))
            .send()
            .await
            .map_err(failed)?;
        r.bytes().await.map_err(failed)?;
        http_rtt.push(t.elapsed().as_micros() as u64);
    }
    let http_rtt = summarize(http_rtt);
    progress.line(format!(
        "floor: loopback TCP p50 {} µs p99 {} µs; HTTP /health p50 {} µs p99 {} µs",
        rtt.p50_us, rtt.p99_us, http_rtt.p50_us, http_rtt.p99_us
    ));
    Ok((rtt, http_rtt))
}

/// What is fixed for every result of one run.
struct RunInfo<'a> {
    security: &'static str,
    handler: &'static str,
    rtt: &'a Summary,
    http_rtt: &'a Summary,
    fsync: bool,
}

fn result(
    name: String,
    run: &RunInfo<'_>,
    mut m: Measured,
    count: usize,
    target: Option<u64>,
    elapsed: Duration,
) -> ColonyHandoverResult {
    let b = summarize(m.blackouts.clone());
    let tot = summarize(m.totals);
    let fr = summarize(m.freezes);
    let inp = summarize(std::mem::take(&mut m.il.latencies));
    m.bytes.sort_unstable();
    let il = &mut m.il;
    let clean = il.lost == 0 && il.duplicated == 0 && il.errors == 0 && b.count == count;
    ColonyHandoverResult {
        security: run.security,
        handler: run.handler,
        samples: m.blackouts,
        name,
        p50_us: b.p50_us,
        p99_us: b.p99_us,
        max_us: b.max_us,
        count: b.count,
        requested: count,
        aborted: m.aborted.len(),
        freeze_p50_us: fr.p50_us,
        freeze_p99_us: fr.p99_us,
        total_p50_us: tot.p50_us,
        total_p99_us: tot.p99_us,
        lost: il.lost,
        duplicated: il.duplicated,
        client_errors: il.errors,
        first_client_error: il.first_error.take(),
        first_abort: m.aborted.first().cloned(),
        inputs: il.acked.max(0) as u64,
        input_p50_us: inp.p50_us,
        input_p99_us: inp.p99_us,
        input_max_us: inp.max_us,
        state_bytes: m.bytes.get(m.bytes.len() / 2).copied().unwrap_or(0) as usize,
        rtt_p50_us: run.rtt.p50_us,
        rtt_p99_us: run.rtt.p99_us,
        http_rtt_p50_us: run.http_rtt.p50_us,
        http_rtt_p99_us: run.http_rtt.p99_us,
        target_p99_us: target,
        met: clean && target.is_none_or(|t| b.p99_us <= t),
        baseline_p50_us: None,
        baseline_p99_us: None,
        ratio_p50: None,
        ratio_p99: None,
        fsync: run.fsync,
        elapsed_s: (elapsed.as_secs_f64() * 10.0).round() / 10.0,
    }
}

/// `bench handover` (P2) with `opengrid` node processes: `count` handovers per size.
pub async fn handover(
    args: &ColonyArgs,
    count: usize,
    sizes: &[usize],
    security_off: bool,
    progress: &Progress,
) -> Result<Vec<ColonyHandoverResult>, BenchError> {
    let count = count.clamp(1, 100_000);
    let budget = Duration::from_secs(args.budget_s.clamp(10, 3600));
    let mut c = Colony::start_with(args, security_off, progress).await?;
    let names = ["a", "b", "c"];
    for name in names {
        c.node(name, "capacity = 64\n[hardware]\nmemory = \"128GiB\"")?;
    }
    let st = c.wait_alive(names.len()).await?;
    let node_a = member_api(&st, "a").ok_or_else(|| failed("node a missing from the status"))?;
    // The floor, in the same run: loopback TCP and an HTTP round trip to a node.
    let (rtt, http_rtt) = floor(&c, &node_a, progress).await?;
    let run = RunInfo {
        security: security_name(security_off),
        handler: "native",
        rtt: &rtt,
        http_rtt: &http_rtt,
        fsync: c.fsync,
    };
    let client = c.client();
    let mut out = Vec::new();
    for &size in sizes {
        let t_size = Instant::now();
        let mut s = client
            .create(BLOB_ZERO_LOSS, None)
            .await
            .map_err(|e| failed(format!("placing a blob session: {e}")))?;
        let r = s
            .send(json!({ "resize": size }))
            .await
            .map_err(|e| failed(format!("resize to {size} B: {e}")))?;
        if r["output"] != json!(0) {
            return Err(failed(format!("resize answered {r}")));
        }
        let m = measure(
            &c,
            &client,
            s,
            &names,
            count,
            0,
            budget,
            &size_name(size),
            progress,
        )
        .await?;
        let target = HANDOVER_TARGETS
            .iter()
            .find(|(s, _)| *s == size)
            .map(|(_, t)| *t);
        let r = result(
            format!("handover_blackout_{}", size_name(size)),
            &run,
            m,
            count,
            target,
            t_size.elapsed(),
        );
        progress.line(format!(
            "{}: blackout p50 {} µs p99 {} µs over {} handovers; {} inputs, lost {}, duplicated {}",
            r.name, r.p50_us, r.p99_us, r.count, r.inputs, r.lost, r.duplicated
        ));
        out.push(r);
        c.check_alive()?;
    }
    Ok(out)
}

/// `--handler` of `bench handover`: the blackout of a counter session run by a native handler
/// (`counter`, compiled into the node), by a WebAssembly agent (`counter-rs`, pushed by the
/// bench), or both alternating in one colony.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HandlerArg {
    /// The compiled-in counter.
    Native,
    /// The counter-rs agent package (ADR 0028).
    Wasm,
    /// Native and wasm alternating in [`crate::bench::OFF_ON_ROUNDS`] rounds, samples pooled.
    Both,
}

impl HandlerArg {
    /// The runs in order (`true` = wasm; native first) and how many rounds `--count` is split
    /// into.
    pub fn runs(self) -> (Vec<bool>, usize) {
        // `off_on_runs` puts its first setting first: here that is native.
        let (runs, rounds) =
            crate::bench::off_on_runs(self != HandlerArg::Wasm, self != HandlerArg::Native);
        (runs.into_iter().map(|native| !native).collect(), rounds)
    }
}

/// `bench handover --handler …`: one colony (RC + 3 nodes); `counter-rs` pushed once; for each
/// run (`true` = wasm) a new zero-loss counter session of that kind gets `count` handovers
/// round the three nodes (after one warm-up lap, not recorded) under continuous input.
pub async fn handover_handlers(
    args: &ColonyArgs,
    count: usize,
    runs: &[bool],
    progress: &Progress,
) -> Result<Vec<ColonyHandoverResult>, BenchError> {
    let count = count.clamp(1, 100_000);
    let budget = Duration::from_secs(args.budget_s.clamp(10, 3600));
    let security_off = args.security == SecurityArg::Off;
    let mut c = Colony::start_with(args, security_off, progress).await?;
    let path = super::agents::agent_component(args.component.as_deref(), &c.bin, "counter-rs")?;
    let component = std::fs::read(&path).map_err(|e| failed(format!("{}: {e}", path.display())))?;
    let names = ["a", "b", "c"];
    for name in names {
        c.node(name, "capacity = 64\n[hardware]\nmemory = \"128GiB\"")?;
    }
    let st = c.wait_alive(names.len()).await?;
    let node_a = member_api(&st, "a").ok_or_else(|| failed("node a missing from the status"))?;
    let key = super::agents::developer_key();
    let pushed = c
        .push_agent(super::agents::package(
            "counter-rs",
            "0.1.0",
            &component,
            &key,
        )?)
        .await?;
    progress.line(format!("pushed counter-rs: {pushed}"));
    let (rtt, http_rtt) = floor(&c, &node_a, progress).await?;
    let client = c.client();
    let mut out = Vec::new();
    for &wasm in runs {
        let t = Instant::now();
        let handler = if wasm { "wasm" } else { "native" };
        let manifest = if wasm {
            super::agents::agent_manifest("counter-rs")
        } else {
            COUNTER_ZERO_LOSS.to_string()
        };
        let s = client
            .create(&manifest, None)
            .await
            .map_err(|e| failed(format!("placing a {handler} counter session: {e}")))?;
        let label = format!("counter ({handler})");
        let m = measure(
            &c,
            &client,
            s,
            &names,
            count,
            names.len(),
            budget,
            &label,
            progress,
        )
        .await?;
        let run = RunInfo {
            security: security_name(security_off),
            handler,
            rtt: &rtt,
            http_rtt: &http_rtt,
            fsync: c.fsync,
        };
        let r = result(
            format!("handover_blackout_counter_{handler}"),
            &run,
            m,
            count,
            None,
            t.elapsed(),
        );
        progress.line(format!(
            "{}: blackout p50 {} µs p99 {} µs over {} handovers; {} inputs, lost {}, duplicated {}",
            r.name, r.p50_us, r.p99_us, r.count, r.inputs, r.lost, r.duplicated
        ));
        out.push(r);
        c.check_alive()?;
    }
    Ok(out)
}

/// Sets the wasm result's baseline (the native one of the same run) and ratios.
pub fn compare_handlers(native: &ColonyHandoverResult, wasm: &mut ColonyHandoverResult) {
    wasm.baseline_p50_us = Some(native.p50_us);
    wasm.baseline_p99_us = Some(native.p99_us);
    wasm.ratio_p50 = Some(super::agents::ratio(wasm.p50_us, native.p50_us));
    wasm.ratio_p99 = Some(super::agents::ratio(wasm.p99_us, native.p99_us));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_runs_alternate_native_first() {
        assert_eq!(HandlerArg::Native.runs(), (vec![false], 1));
        assert_eq!(HandlerArg::Wasm.runs(), (vec![true], 1));
        let (runs, rounds) = HandlerArg::Both.runs();
        assert_eq!(rounds, crate::bench::OFF_ON_ROUNDS);
        assert_eq!(runs.len(), 2 * rounds);
        assert!(runs.chunks(2).all(|p| p == [false, true]), "{runs:?}");
    }
}

//! `bench api`: the client API end to end (admission, input throughput), security on and off;
//! with `--handler`, the input throughput of counter sessions run by the native handler vs the
//! `counter-rs` WebAssembly agent in one colony (P13).

use super::*;

/// A bounded-loss counter session: run by the native `counter` handler, or (`wasm`) by the
/// `counter-rs` agent. The two manifests differ in that one line only.
fn counter_bounded(wasm: bool) -> String {
    let runner = if wasm {
        "agent = \"counter-rs\""
    } else {
        "handler = \"counter\""
    };
    format!("version = 1\n[session]\n{runner}\ncontinuity = \"interactive\"\n[placement]\njurisdictions = [\"EU\"]\n[migration]\ncost = \"cheap\"\nacceptable_loss = \"30s\"\nmax_blackout = \"2s\"\n")
}

/// Unrecorded inputs each session gets before `--handler` measures it (its instance warm, its
/// connection open).
const HANDLER_WARMUP: usize = 20;

/// Sessions sending inputs at once in `bench api`.
pub const API_CLIENTS: usize = 8;

/// Result of `bench api` (one security setting).
#[derive(Clone, Debug, Serialize)]
pub struct ApiResult {
    /// `client_api`.
    pub name: &'static str,
    /// `on`, or `off` (measurement only).
    pub security: &'static str,
    /// Who runs the input sessions: `native` (the compiled-in `counter`) or `wasm` (the
    /// `counter-rs` agent, `--handler`).
    pub handler: &'static str,
    /// `POST /sessions` by a client without credentials (admission, placement, the node's
    /// start, the capability when on), median µs.
    pub admission_p50_us: u64,
    /// Its p99, µs.
    pub admission_p99_us: u64,
    /// Sessions admitted (each closed again).
    pub admissions: usize,
    /// Inputs acknowledged by [`API_CLIENTS`] sessions sending at once (each input one HTTP
    /// request to its node, with its capability when on).
    pub inputs: u64,
    /// Their throughput, inputs/s.
    pub inputs_per_s: f64,
    /// One input's round trip, median µs.
    pub input_p50_us: u64,
    /// Its p99, µs.
    pub input_p99_us: u64,
    /// Acknowledged inputs missing from the sessions' totals.
    pub lost: u64,
    /// Inputs counted twice.
    pub duplicated: u64,
    /// `--handler`: CPU time (user + system) of the node process during the timed inputs,
    /// divided by the inputs, µs: what one input costs the node (the client's CPU and the other
    /// load of the machine excluded, which inputs/s is not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_cpu_us_per_input: Option<f64>,
    /// `--handler both`, the wasm result: the native node CPU per input of the same run, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_node_cpu_us_per_input: Option<f64>,
    /// Wasm over native node CPU per input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_ratio: Option<f64>,
    /// `--handler both`, the wasm result: the native inputs/s of the same run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_inputs_per_s: Option<f64>,
    /// Its input latency, median µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_input_p50_us: Option<u64>,
    /// Its p99, µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_input_p99_us: Option<u64>,
    /// Cost of an input, wasm over native: native inputs/s ÷ wasm inputs/s (P13: ≤ 1.5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_ratio: Option<f64>,
    /// Wasm over native input latency at the median.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_p50: Option<f64>,
    /// Wasm over native input latency at p99.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_p99: Option<f64>,
    /// Every admission and input latency, µs (to pool rounds; not printed).
    #[serde(skip)]
    pub samples: (Vec<u64>, Vec<u64>),
    /// Seconds of the input phase (to pool rounds; not printed).
    #[serde(skip)]
    pub input_s: f64,
    /// The node's CPU seconds in the input phase, when measured (to pool rounds; not printed).
    #[serde(skip)]
    pub node_cpu_s: Option<f64>,
}

/// CPU time (user + system) of process `pid` so far, seconds; `None` where `/proc` cannot say.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after the last ')': state is
    // field 3, utime 14 and stime 15 (clock ticks).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks as f64 / hz as f64)
}

/// `bench api`: the client API end to end on an RC and one node, as a client without
/// credentials uses it: `count` admissions (`POST /sessions` to the RC, then close), then
/// [`API_CLIENTS`] bounded-loss counter sessions each sending `count` inputs at once.
pub async fn api(
    args: &ColonyArgs,
    count: usize,
    security_off: bool,
    progress: &Progress,
) -> Result<ApiResult, BenchError> {
    let count = count.clamp(1, 100_000);
    let budget = Duration::from_secs(args.budget_s.clamp(10, 3600));
    let mut c = Colony::start_with(args, security_off, progress).await?;
    c.node("a", "capacity = 1024\n[hardware]\nmemory = \"128GiB\"")?;
    c.wait_alive(1).await?;
    let mut client = Client::new(c.rc_api.clone());
    client.retry_for = Duration::from_secs(30);
    let deadline = Instant::now() + budget;
    let mut admissions = Vec::with_capacity(count);
    for i in 0..count {
        if Instant::now() > deadline {
            return Err(failed(format!(
                "admission {i}/{count}: over the {budget:?} budget"
            )));
        }
        let t = Instant::now();
        let s = client
            .create(&counter_bounded(false), None)
            .await
            .map_err(|e| failed(format!("admission {i}: {e}; logs in {}", c.logs())))?;
        admissions.push(t.elapsed().as_micros() as u64);
        s.close()
            .await
            .map_err(|e| failed(format!("closing admission {i}: {e}")))?;
        if (i + 1) % 200 == 0 {
            progress.line(format!(
                "api ({}): {}/{count} admissions",
                security_name(security_off),
                i + 1
            ));
        }
    }
    let mut sessions = Vec::with_capacity(API_CLIENTS);
    for _ in 0..API_CLIENTS {
        sessions.push(
            client
                .create(&counter_bounded(false), None)
                .await
                .map_err(|e| failed(format!("placing an input session: {e}")))?,
        );
    }
    let inputs = input_phase(sessions, count, 0, deadline, None).await?;
    c.check_alive()?;
    let r = result(security_name(security_off), "native", admissions, inputs);
    progress.line(format!(
        "api ({}): admission p50 {} µs p99 {} µs; {} inputs at {}/s, p50 {} µs p99 {} µs",
        r.security,
        r.admission_p50_us,
        r.admission_p99_us,
        r.inputs,
        r.inputs_per_s,
        r.input_p50_us,
        r.input_p99_us
    ));
    Ok(r)
}

/// What the input phase saw: every latency (µs), lost and duplicated inputs, its seconds.
struct Inputs {
    latencies: Vec<u64>,
    lost: u64,
    duplicated: u64,
    seconds: f64,
    /// CPU seconds of the measured process during the timed inputs.
    cpu_s: Option<f64>,
}

/// The sessions send at once, each `warmup` unrecorded inputs and then `count` timed ones, one
/// HTTP request per input; every answer is checked against the session's running total.
async fn input_phase(
    sessions: Vec<Session>,
    count: usize,
    warmup: usize,
    deadline: Instant,
    cpu_of: Option<u32>,
) -> Result<Inputs, BenchError> {
    let mut warm = Vec::with_capacity(sessions.len());
    let runs = stream::iter(sessions.into_iter().map(|mut s| async move {
        let mut acked = 0i64;
        for _ in 0..warmup {
            acked = send_one(&mut s, acked)
                .await
                .map_err(|e| failed(format!("warm-up input to {}: {e}", s.id)))?;
        }
        if acked != warmup as i64 {
            return Err(failed(format!(
                "{}: {acked} after {warmup} warm-up inputs",
                s.id
            )));
        }
        Ok::<_, BenchError>((s, acked))
    }))
    .buffer_unordered(API_CLIENTS)
    .collect::<Vec<_>>()
    .await;
    for r in runs {
        warm.push(r?);
    }
    let cpu0 = cpu_of.and_then(cpu_seconds);
    let t0 = Instant::now();
    let runs = stream::iter(warm.into_iter().map(|(mut s, mut acked)| async move {
        let mut lat = Vec::with_capacity(count);
        let (mut lost, mut dup) = (0u64, 0u64);
        for _ in 0..count {
            if Instant::now() > deadline {
                return Err(failed("the input phase ran over its budget"));
            }
            let t = Instant::now();
            let total = send_one(&mut s, acked)
                .await
                .map_err(|e| failed(format!("input to {}: {e}", s.id)))?;
            lat.push(t.elapsed().as_micros() as u64);
            let want = acked + 1;
            lost += (want - total).max(0) as u64;
            dup += (total - want).max(0) as u64;
            acked = total;
        }
        Ok::<_, BenchError>((lat, lost, dup, s))
    }))
    .buffer_unordered(API_CLIENTS)
    .collect::<Vec<_>>()
    .await;
    let seconds = t0.elapsed().as_secs_f64();
    let cpu_s = match (cpu0, cpu_of.and_then(cpu_seconds)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let mut out = Inputs {
        latencies: Vec::new(),
        lost: 0,
        duplicated: 0,
        seconds,
        cpu_s,
    };
    let mut done = Vec::with_capacity(runs.len());
    for r in runs {
        let (l, lo, du, s) = r?;
        out.latencies.extend(l);
        out.lost += lo;
        out.duplicated += du;
        done.push(s);
    }
    // Closed after the clock stopped: the next round's sessions have the node to themselves.
    for s in done {
        let id = s.id.clone();
        s.close()
            .await
            .map_err(|e| failed(format!("closing {id}: {e}")))?;
    }
    Ok(out)
}

fn result(
    security: &'static str,
    handler: &'static str,
    admissions: Vec<u64>,
    inputs: Inputs,
) -> ApiResult {
    let a = summarize(admissions.clone());
    let i = summarize(inputs.latencies.clone());
    ApiResult {
        name: "client_api",
        security,
        handler,
        admission_p50_us: a.p50_us,
        admission_p99_us: a.p99_us,
        admissions: a.count,
        inputs: i.count as u64,
        inputs_per_s: (i.count as f64 / inputs.seconds.max(1e-9) * 10.0).round() / 10.0,
        input_p50_us: i.p50_us,
        input_p99_us: i.p99_us,
        lost: inputs.lost,
        duplicated: inputs.duplicated,
        node_cpu_us_per_input: inputs.cpu_s.map(|s| per_input_us(s, i.count)),
        baseline_node_cpu_us_per_input: None,
        cpu_ratio: None,
        baseline_inputs_per_s: None,
        baseline_input_p50_us: None,
        baseline_input_p99_us: None,
        cost_ratio: None,
        ratio_p50: None,
        ratio_p99: None,
        samples: (admissions, inputs.latencies),
        input_s: inputs.seconds,
        node_cpu_s: inputs.cpu_s,
    }
}

/// CPU seconds per input, µs, to 0.1 µs.
fn per_input_us(cpu_s: f64, inputs: usize) -> f64 {
    (cpu_s * 1e6 / inputs.max(1) as f64 * 10.0).round() / 10.0
}

/// `bench api --handler …` (P13): one colony (RC + one node, security per `--security on|off`);
/// `counter-rs` pushed once; for each run (`true` = wasm) [`API_CLIENTS`] new bounded-loss
/// counter sessions of that kind (manifests identical but for `handler`/`agent`) each send
/// [`HANDLER_WARMUP`] unrecorded inputs, then `count` timed ones at once, one HTTP request per
/// input, as a client without credentials; then they are closed. No admissions are measured.
pub async fn api_handlers(
    args: &ColonyArgs,
    count: usize,
    runs: &[bool],
    progress: &Progress,
) -> Result<Vec<ApiResult>, BenchError> {
    let count = count.clamp(1, 100_000);
    let budget = Duration::from_secs(args.budget_s.clamp(10, 3600));
    let security_off = args.security == SecurityArg::Off;
    let mut c = Colony::start_with(args, security_off, progress).await?;
    let path = super::agents::agent_component(args.component.as_deref(), &c.bin, "counter-rs")?;
    let component = std::fs::read(&path).map_err(|e| failed(format!("{}: {e}", path.display())))?;
    c.node("a", "capacity = 1024\n[hardware]\nmemory = \"128GiB\"")?;
    c.wait_alive(1).await?;
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
    let mut client = Client::new(c.rc_api.clone());
    client.retry_for = Duration::from_secs(30);
    let mut out = Vec::new();
    for &wasm in runs {
        let handler = if wasm { "wasm" } else { "native" };
        let deadline = Instant::now() + budget;
        let mut sessions = Vec::with_capacity(API_CLIENTS);
        for _ in 0..API_CLIENTS {
            sessions.push(
                client
                    .create(&counter_bounded(wasm), None)
                    .await
                    .map_err(|e| {
                        failed(format!(
                            "placing a {handler} counter session: {e}; logs in {}",
                            c.logs()
                        ))
                    })?,
            );
        }
        let pid = c.launcher.pid("a")?;
        let inputs = input_phase(sessions, count, HANDLER_WARMUP, deadline, pid).await?;
        c.check_alive()?;
        let r = result(security_name(security_off), handler, Vec::new(), inputs);
        progress.line(format!(
            "api ({}, {handler}): {} inputs at {}/s, p50 {} µs p99 {} µs, node CPU {:?} µs per input; lost {}, duplicated {}",
            r.security,
            r.inputs,
            r.inputs_per_s,
            r.input_p50_us,
            r.input_p99_us,
            r.node_cpu_us_per_input,
            r.lost,
            r.duplicated
        ));
        out.push(r);
    }
    Ok(out)
}

/// Sets the wasm result's baseline (the native one of the same run) and ratios.
pub fn compare_api_handlers(native: &ApiResult, wasm: &mut ApiResult) {
    wasm.baseline_inputs_per_s = Some(native.inputs_per_s);
    wasm.baseline_input_p50_us = Some(native.input_p50_us);
    wasm.baseline_input_p99_us = Some(native.input_p99_us);
    wasm.cost_ratio = Some(if wasm.inputs_per_s > 0.0 {
        (native.inputs_per_s / wasm.inputs_per_s * 100.0).round() / 100.0
    } else {
        0.0
    });
    if let (Some(w), Some(n)) = (wasm.node_cpu_us_per_input, native.node_cpu_us_per_input) {
        wasm.baseline_node_cpu_us_per_input = Some(n);
        wasm.cpu_ratio = Some(if n > 0.0 {
            (w / n * 100.0).round() / 100.0
        } else {
            0.0
        });
    }
    wasm.ratio_p50 = Some(super::agents::ratio(wasm.input_p50_us, native.input_p50_us));
    wasm.ratio_p99 = Some(super::agents::ratio(wasm.input_p99_us, native.input_p99_us));
}

/// Pools rounds of `bench api` with one security setting (or one handler).
pub fn pool_api(runs: Vec<ApiResult>) -> Option<ApiResult> {
    let mut acc = crate::bench::fold_runs(runs, |acc, r| {
        acc.samples.0.extend(r.samples.0);
        acc.samples.1.extend(r.samples.1);
        acc.lost += r.lost;
        acc.duplicated += r.duplicated;
        acc.input_s += r.input_s;
        acc.node_cpu_s = match (acc.node_cpu_s, r.node_cpu_s) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
    })?;
    let a = summarize(acc.samples.0.clone());
    let i = summarize(acc.samples.1.clone());
    (acc.admission_p50_us, acc.admission_p99_us, acc.admissions) = (a.p50_us, a.p99_us, a.count);
    (acc.input_p50_us, acc.input_p99_us, acc.inputs) = (i.p50_us, i.p99_us, i.count as u64);
    acc.inputs_per_s = (i.count as f64 / acc.input_s.max(1e-9) * 10.0).round() / 10.0;
    acc.node_cpu_us_per_input = acc.node_cpu_s.map(|s| per_input_us(s, i.count));
    Some(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_differ_only_in_who_runs_the_session() {
        let (n, w) = (counter_bounded(false), counter_bounded(true));
        let diff: Vec<(&str, &str)> = n.lines().zip(w.lines()).filter(|(a, b)| a != b).collect();
        assert_eq!(
            diff,
            vec![("handler = \"counter\"", "agent = \"counter-rs\"")]
        );
        assert_eq!(n.lines().count(), w.lines().count());
    }

    #[test]
    fn this_process_has_cpu_time() {
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(cpu_seconds(std::process::id()).is_some());
    }

    #[test]
    fn the_wasm_result_carries_the_native_baseline() {
        let inputs = |per_s: f64, cpu: f64| Inputs {
            latencies: vec![100, 200],
            lost: 0,
            duplicated: 0,
            seconds: 2.0 / per_s,
            cpu_s: Some(cpu),
        };
        let native = result("on", "native", Vec::new(), inputs(1000.0, 0.0001));
        let mut wasm = result("on", "wasm", Vec::new(), inputs(500.0, 0.00015));
        compare_api_handlers(&native, &mut wasm);
        assert_eq!(wasm.baseline_inputs_per_s, Some(1000.0));
        assert_eq!(wasm.cost_ratio, Some(2.0));
        assert_eq!(native.node_cpu_us_per_input, Some(50.0));
        assert_eq!(wasm.node_cpu_us_per_input, Some(75.0));
        assert_eq!(wasm.cpu_ratio, Some(1.5));
        assert_eq!(wasm.ratio_p50, Some(1.0));
    }
}

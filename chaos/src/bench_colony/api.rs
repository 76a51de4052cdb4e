//! `bench api`: the client API end to end (admission, input throughput), security on and off.

use super::*;

const COUNTER_BOUNDED: &str = "version = 1\n[session]\nhandler = \"counter\"\ncontinuity = \"interactive\"\n[placement]\njurisdictions = [\"EU\"]\n[migration]\ncost = \"cheap\"\nacceptable_loss = \"30s\"\nmax_blackout = \"2s\"\n";

/// Sessions sending inputs at once in `bench api`.
pub const API_CLIENTS: usize = 8;

/// Result of `bench api` (one security setting).
#[derive(Clone, Debug, Serialize)]
pub struct ApiResult {
    /// `client_api`.
    pub name: &'static str,
    /// `on`, or `off` (measurement only).
    pub security: &'static str,
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
    /// Every admission and input latency, µs (to pool rounds; not printed).
    #[serde(skip)]
    pub samples: (Vec<u64>, Vec<u64>),
    /// Seconds of the input phase (to pool rounds; not printed).
    #[serde(skip)]
    pub input_s: f64,
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
            .create(COUNTER_BOUNDED, None)
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
                .create(COUNTER_BOUNDED, None)
                .await
                .map_err(|e| failed(format!("placing an input session: {e}")))?,
        );
    }
    let t0 = Instant::now();
    let runs = stream::iter(sessions.into_iter().map(|mut s| async move {
        let mut lat = Vec::with_capacity(count);
        let (mut acked, mut lost, mut dup) = (0i64, 0u64, 0u64);
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
        Ok::<_, BenchError>((lat, lost, dup))
    }))
    .buffer_unordered(API_CLIENTS)
    .collect::<Vec<_>>()
    .await;
    let input_s = t0.elapsed().as_secs_f64();
    let (mut lat, mut lost, mut duplicated) = (Vec::new(), 0, 0);
    for r in runs {
        let (l, lo, du) = r?;
        lat.extend(l);
        lost += lo;
        duplicated += du;
    }
    c.check_alive()?;
    let a = summarize(admissions.clone());
    let i = summarize(lat.clone());
    let r = ApiResult {
        name: "client_api",
        security: security_name(security_off),
        admission_p50_us: a.p50_us,
        admission_p99_us: a.p99_us,
        admissions: a.count,
        inputs: i.count as u64,
        inputs_per_s: (i.count as f64 / input_s.max(1e-9) * 10.0).round() / 10.0,
        input_p50_us: i.p50_us,
        input_p99_us: i.p99_us,
        lost,
        duplicated,
        samples: (admissions, lat),
        input_s,
    };
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

/// Pools rounds of `bench api` with one security setting.
pub fn pool_api(runs: Vec<ApiResult>) -> Option<ApiResult> {
    let mut acc = crate::bench::fold_runs(runs, |acc, r| {
        acc.samples.0.extend(r.samples.0);
        acc.samples.1.extend(r.samples.1);
        acc.lost += r.lost;
        acc.duplicated += r.duplicated;
        acc.input_s += r.input_s;
    })?;
    let a = summarize(acc.samples.0.clone());
    let i = summarize(acc.samples.1.clone());
    (acc.admission_p50_us, acc.admission_p99_us, acc.admissions) = (a.p50_us, a.p99_us, a.count);
    (acc.input_p50_us, acc.input_p99_us, acc.inputs) = (i.p50_us, i.p99_us, i.count as u64);
    acc.inputs_per_s = (i.count as f64 / acc.input_s.max(1e-9) * 10.0).round() / 10.0;
    Some(acc)
}

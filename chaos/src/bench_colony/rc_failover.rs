//! `bench rc-failover` (ADR 0037): kill -9 of the RC group's leader, `--count` times (default
//! 20), under load. A colony of three RC replicas (one Raft group) and three nodes; six zero-loss
//! counter sessions get inputs continuously through the Rust client (which knows every replica)
//! and every answer is checked (the n-th acknowledged input must answer n). Per kill: the leader
//! is found (`/status` → `group.acting`), killed, and a new session is placed through the client
//! at once: kill → placement accepted is the figure ("placements resume"); the baseline, in the
//! same run, is one placement with a healthy leader. The killed replica is
//! restarted with its data dir and the next kill waits until it follows the new leader. At the
//! end: inputs that failed (the client gave up, or a wrong answer) on the existing sessions —
//! target 0 — and leases the nodes lost (`opengrid_cluster_lease_lost_total`, target 0).

use super::*;

/// Target: placements accepted again within this p99 after a leader kill, µs.
pub const RC_FAILOVER_TARGET_P99_US: u64 = 1_000_000;

/// Result of `bench rc-failover`.
#[derive(Clone, Debug, Serialize)]
pub struct RcFailoverResult {
    /// `rc_leader_kill`.
    pub name: &'static str,
    /// Leader kills.
    pub kills: usize,
    /// Kill → a new placement accepted: median, µs.
    pub resume_p50_us: u64,
    /// p99, µs.
    pub resume_p99_us: u64,
    /// Worst, µs.
    pub resume_max_us: u64,
    /// Baseline, same run: one placement with a healthy leader, median µs.
    pub place_p50_us: u64,
    /// Baseline p99, µs.
    pub place_p99_us: u64,
    /// Inputs the existing sessions acknowledged during the run.
    pub acknowledged: u64,
    /// Inputs that failed on the existing sessions (target 0).
    pub failed_inputs: u64,
    /// Answers that did not match the count (a lost or repeated input; must be 0).
    pub wrong_answers: u64,
    /// Leases the nodes lost during the run (target 0: sessions kept serving).
    pub leases_lost: u64,
    /// RC replicas.
    pub replicas: usize,
    /// Sessions under load.
    pub sessions: usize,
    /// Target p99, µs.
    pub target_p99_us: u64,
    /// `resume_p99_us <= target`, no failed input, no wrong answer, no lease lost.
    pub met: bool,
}

/// One RC replica of the bench colony.
struct Replica {
    name: String,
    api: String,
}

/// `bench rc-failover`.
pub async fn rc_failover(
    args: &ColonyArgs,
    kills: usize,
    progress: &Progress,
) -> Result<RcFailoverResult, BenchError> {
    let kills = kills.clamp(1, 1000);
    let budget = Duration::from_secs(args.budget_s.clamp(10, 3600));
    let bin = opengrid_bin(args.bin.as_deref())?;
    let mut launcher = Launcher::new()?;
    if args.keep {
        launcher.keep_files();
    }
    let log = std::env::var("OPENGRID_BENCH_LOG").unwrap_or_else(|_| "warn".into());
    let spawn = |launcher: &mut Launcher, name: &str, role: &str, cfg: &str| {
        let path = launcher.root().join(format!("{name}.toml"));
        std::fs::write(&path, cfg).map_err(|e| failed(format!("{}: {e}", path.display())))?;
        launcher.spawn(
            ProcSpec::new(name, &bin)
                .args([role, "--config", &path.display().to_string()])
                .env("RUST_LOG", log.clone()),
        )?;
        Ok::<_, BenchError>(())
    };

    // Three replicas: each one's key first, so every peer entry names its DID.
    let mut peers = Vec::new();
    let mut ports = Vec::new();
    for i in 1..=3u64 {
        let dir = launcher.data_dir(&format!("rc{i}"))?;
        let did = opengrid_cluster::common::identity::Identity::load_or_create(&dir)
            .map_err(failed)?
            .id()
            .did();
        let (api, cluster, raft) = (free_port()?, free_port()?, free_port()?);
        peers.push(format!("\"{i}={did}@127.0.0.1:{raft}\""));
        ports.push((i, dir, api, cluster, raft));
    }
    let mut replicas = Vec::new();
    let mut rc_cluster = Vec::new();
    for (i, dir, api, cluster, raft) in &ports {
        let cfg = format!(
            "version = 1\ndata_dir = {dir:?}\napi_listen = \"127.0.0.1:{api}\"\ncluster_listen = \"127.0.0.1:{cluster}\"\ncolony_secret = \"{SECRET}\"\nplace_timeout = \"10s\"\n[group]\nid = {i}\nlisten = \"127.0.0.1:{raft}\"\npeers = [{}]\n",
            peers.join(", ")
        );
        let name = format!("rc{i}");
        spawn(&mut launcher, &name, "rc", &cfg)?;
        replicas.push(Replica {
            name,
            api: format!("http://127.0.0.1:{api}"),
        });
        rc_cluster.push(format!("127.0.0.1:{cluster}"));
    }
    for n in ["n1", "n2", "n3"] {
        let cfg = format!(
            "version = 1\nname = \"{n}\"\ndata_dir = {:?}\njurisdiction = \"DE\"\napi_listen = \"127.0.0.1:0\"\nrc_cluster = \"{}\"\ncolony_secret = \"{SECRET}\"\nfsync = {}\n",
            launcher.data_dir(n)?,
            rc_cluster.join(","),
            !args.no_fsync
        );
        spawn(&mut launcher, n, "node", &cfg)?;
    }
    progress.line(format!(
        "colony of 3 RC replicas and 3 nodes in {}",
        launcher.root().display()
    ));
    let rc1 = launcher.data_dir("rc1")?;
    let http = opengrid_cluster::common::token::operator_http(&rc1, Duration::from_secs(5))
        .map_err(failed)?;
    let token = opengrid_cluster::common::token::operator_token_from_dir(
        &rc1,
        Duration::from_secs(24 * 3600),
    )
    .map_err(failed)?;
    let apis: Vec<String> = replicas.iter().map(|r| r.api.clone()).collect();
    let mut client = Client::new(apis.join(",")).with_token(token);
    client.retry_for = Duration::from_secs(30);

    let leader = |http: reqwest::Client, apis: Vec<String>| async move {
        for (i, api) in apis.iter().enumerate() {
            let Ok(r) = http
                .get(format!("{api}/status"))
                .timeout(Duration::from_millis(500))
                .send()
                .await
            else {
                continue;
            };
            let st: Value = r.json().await.unwrap_or(Value::Null);
            if st["group"]["acting"] == true {
                return Some((i, st));
            }
        }
        None
    };
    // Up: a leader in office that sees three alive members.
    let deadline = Instant::now() + budget;
    loop {
        if let Some((_, st)) = leader(http.clone(), apis.clone()).await {
            let alive = st["members"]
                .as_array()
                .map_or(0, |m| m.iter().filter(|m| m["state"] == "alive").count());
            if alive == 3 {
                break;
            }
        }
        if Instant::now() >= deadline {
            return Err(failed("the RC group and its nodes did not come up"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    const SESSIONS: usize = 6;
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        let s = client
            .create(COUNTER_ZERO_LOSS, None)
            .await
            .map_err(failed)?;
        sessions.push((s, 0u64));
    }
    // Baseline: placements with a healthy leader (each session closed again).
    let mut base = Vec::new();
    for _ in 0..kills.max(20) {
        let t = Instant::now();
        let s = client
            .create(COUNTER_ZERO_LOSS, None)
            .await
            .map_err(failed)?;
        base.push(t.elapsed().as_micros() as u64);
        let _ = s.close().await;
    }
    let base = summarize(base);
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new([
        std::sync::atomic::AtomicU64::new(0),
        std::sync::atomic::AtomicU64::new(0),
        std::sync::atomic::AtomicU64::new(0),
    ]);
    let load = {
        let (stop, counters) = (stop.clone(), counters.clone());
        tokio::spawn(async move {
            // Bounded: at most 10 million inputs, and until `stop`.
            for _ in 0..10_000_000u64 {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                for (s, acked) in sessions.iter_mut() {
                    match s.send(json!(1)).await {
                        Ok(r) if r["kind"] == "processed" || r["kind"] == "duplicate" => {
                            *acked += 1;
                            let ok =
                                r["kind"] == "duplicate" || r["output"].as_u64() == Some(*acked);
                            let i = if ok { 0 } else { 2 };
                            counters[i].fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) | Err(_) => {
                            counters[1].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        })
    };

    let mut resume = Vec::with_capacity(kills);
    for k in 0..kills {
        let deadline = Instant::now() + budget;
        let i = loop {
            if let Some((i, _)) = leader(http.clone(), apis.clone()).await {
                break i;
            }
            if Instant::now() >= deadline {
                return Err(failed("no leader in office before a kill"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let victim = &replicas[i];
        launcher.kill(&victim.name)?;
        let t0 = Instant::now();
        let placed = client.create(COUNTER_ZERO_LOSS, None).await.map_err(|e| {
            failed(format!(
                "kill {}: no placement after the leader kill: {e}",
                k + 1
            ))
        })?;
        let us = t0.elapsed().as_micros() as u64;
        resume.push(us);
        let _ = placed.close().await;
        launcher.restart(&victim.name)?;
        // The restarted replica follows the new leader before the next kill.
        let deadline = Instant::now() + budget;
        loop {
            let st: Value = match http
                .get(format!("{}/status", victim.api))
                .timeout(Duration::from_millis(500))
                .send()
                .await
            {
                Ok(r) => r.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            // Caught up: it has applied what the leader had when it took office (a replica far
            // behind would campaign with a short log the moment the leader dies, and delay the
            // election: openraft 0.9 has no pre-vote).
            let leader_applied = match leader(http.clone(), apis.clone()).await {
                Some((_, l)) => l["group"]["applied"].as_u64(),
                None => None,
            };
            if st["group"]["role"] == "follower"
                && st["group"]["leader"].is_u64()
                && leader_applied.is_some()
                && st["group"]["applied"].as_u64() >= leader_applied
            {
                // And a moment to settle, as between real failures.
                tokio::time::sleep(Duration::from_millis(500)).await;
                break;
            }
            if Instant::now() >= deadline {
                return Err(failed(format!(
                    "{} did not rejoin its group after its restart",
                    victim.name
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        progress.line(format!(
            "kill {}/{kills}: {} killed, placements accepted again after {:.0} ms",
            k + 1,
            victim.name,
            us as f64 / 1000.0
        ));
    }
    // A last stretch of load under the last leader, then the counts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Release);
    let _ = load.await;
    let mut leases_lost = 0u64;
    if let Some((_, st)) = leader(http.clone(), apis.clone()).await {
        for m in st["members"].as_array().into_iter().flatten() {
            let api = m["address"].as_str().unwrap_or_default();
            let text = match http.get(format!("{api}/metrics")).send().await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            leases_lost += text
                .lines()
                .filter(|l| l.starts_with("opengrid_cluster_lease_lost_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64;
        }
    }
    let s = summarize(resume);
    let (acknowledged, failed_inputs, wrong_answers) = (
        counters[0].load(Ordering::Relaxed),
        counters[1].load(Ordering::Relaxed),
        counters[2].load(Ordering::Relaxed),
    );
    if args.keep {
        progress.line(format!("logs kept in {}", launcher.root().display()));
    }
    launcher.shutdown();
    Ok(RcFailoverResult {
        name: "rc_leader_kill",
        kills,
        resume_p50_us: s.p50_us,
        resume_p99_us: s.p99_us,
        resume_max_us: s.max_us,
        place_p50_us: base.p50_us,
        place_p99_us: base.p99_us,
        acknowledged,
        failed_inputs,
        wrong_answers,
        leases_lost,
        replicas: 3,
        sessions: SESSIONS,
        target_p99_us: RC_FAILOVER_TARGET_P99_US,
        met: s.p99_us <= RC_FAILOVER_TARGET_P99_US
            && failed_inputs == 0
            && wrong_answers == 0
            && leases_lost == 0,
    })
}

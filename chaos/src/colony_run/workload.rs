//! The seeded client workload: placing the scenario's sessions through the RC, one paced client
//! per session recording every input it sends ([`SessionLog`]), progress lines while it runs,
//! and the final-state probe (one last input per session) once the colony has settled.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opengrid_cluster::client::{Client, ClientError, Session};
use opengrid_session::Manifest;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::record::{SessionLog, Step, StepOutcome};
use super::{manifest_text, ms_since, Break};
use crate::report::Progress;
use crate::scenario::Scenario;

/// Most sessions one run places.
const MAX_SESSIONS: u32 = 2_000;
/// Period of the workload's progress lines.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// One session group of the scenario, as its clients send.
struct Group {
    manifest: String,
    loss_bound_ms: u64,
    allowed: Vec<String>,
    rate: f64,
}

/// The sessions a run placed.
pub(super) struct Placed {
    /// Each session with the index of its group.
    sessions: Vec<(Session, usize)>,
    groups: Vec<Group>,
    /// Session id → the jurisdictions its manifest allows.
    pub allowed: BTreeMap<String, Vec<String>>,
    /// Session group → its session ids.
    pub group_ids: BTreeMap<String, Vec<String>>,
}

impl Placed {
    /// Places every session of the scenario's groups (at most [`MAX_SESSIONS`] per group)
    /// through the RC at `rc_api`.
    pub async fn place(sc: &Scenario, rc_api: &str) -> Result<Placed, String> {
        let mut groups = Vec::new();
        let mut counts = Vec::new();
        for g in &sc.workload.sessions {
            let text = manifest_text(g)?;
            let m = Manifest::from_toml_str(&text).map_err(|e| e.to_string())?;
            counts.push(g.count.min(MAX_SESSIONS));
            groups.push(Group {
                manifest: text,
                loss_bound_ms: m.migration.acceptable_loss.0.as_millis() as u64,
                allowed: m.placement.jurisdictions.clone(),
                rate: g.input_rate,
            });
        }
        let mut client = Client::new(rc_api.to_string());
        client.retry_for = Duration::from_secs(20);
        let mut placed = Placed {
            sessions: Vec::new(),
            groups: Vec::new(),
            allowed: BTreeMap::new(),
            group_ids: BTreeMap::new(),
        };
        for (gi, (count, g)) in counts.into_iter().zip(&groups).enumerate() {
            for _ in 0..count {
                let s = client
                    .create(&g.manifest, None)
                    .await
                    .map_err(|e| format!("placing a session: {e}"))?;
                placed.allowed.insert(s.id.clone(), g.allowed.clone());
                placed
                    .group_ids
                    .entry(sc.workload.sessions[gi].group.clone())
                    .or_default()
                    .push(s.id.clone());
                placed.sessions.push((s, gi));
            }
        }
        placed.groups = groups;
        Ok(placed)
    }

    /// Every placed session's id, in placement order.
    pub fn ids(&self) -> Vec<String> {
        self.sessions.iter().map(|(s, _)| s.id.clone()).collect()
    }

    /// How many sessions were placed.
    pub fn count(&self) -> usize {
        self.sessions.len()
    }

    /// Starts one client per session, sending at its group's rate with a seeded phase from
    /// `t0` until `t0 + until`.
    pub fn start(self, seed: u64, t0: Instant, until: Duration, brk: Option<Break>) -> Clients {
        let acked = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for (i, (s, gi)) in self.sessions.into_iter().enumerate() {
            let g = &self.groups[gi];
            let mut rng =
                StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let phase: f64 = rng.random();
            tasks.push(tokio::spawn(workload(
                s,
                Pacing {
                    rate: g.rate,
                    phase,
                    loss_bound_ms: g.loss_bound_ms,
                    t0,
                    until,
                    brk,
                    acked: acked.clone(),
                },
            )));
        }
        Clients { tasks, acked, t0 }
    }
}

/// The running clients of a run.
pub(super) struct Clients {
    tasks: Vec<tokio::task::JoinHandle<(Session, SessionLog)>>,
    /// Inputs acknowledged by all clients so far.
    acked: Arc<AtomicU64>,
    t0: Instant,
}

impl Clients {
    /// Waits until every client is done (they end by the workload's end); long workloads show
    /// progress every [`PROGRESS_EVERY`].
    pub async fn join(self, progress: &Progress) -> Result<Vec<(Session, SessionLog)>, String> {
        let mut all = std::pin::pin!(futures::future::join_all(self.tasks));
        let mut ticks =
            tokio::time::interval_at((Instant::now() + PROGRESS_EVERY).into(), PROGRESS_EVERY);
        let done = loop {
            tokio::select! {
                done = &mut all => break done,
                _ = ticks.tick() => progress.line(format!(
                    "t+{}s workload: {} input(s) acknowledged so far",
                    self.t0.elapsed().as_secs(),
                    self.acked.load(Ordering::Relaxed)
                )),
            }
        };
        let mut logs = Vec::new();
        for t in done {
            logs.push(t.map_err(|e| format!("workload task: {e}"))?);
        }
        Ok(logs)
    }
}

/// Final state: one more input per session, recorded as its final probe.
pub(super) async fn final_probes(
    logs: Vec<(Session, SessionLog)>,
    t0: Instant,
) -> Result<Vec<SessionLog>, String> {
    let mut finals = Vec::new();
    for (s, mut log) in logs {
        finals.push(tokio::spawn(async move {
            let mut s = s;
            let ordinal = log.steps.len() as u64 + 1;
            let sent = ms_since(t0);
            let outcome = send_counted(&mut s).await;
            log.steps.push(Step {
                ordinal,
                sent_ms: sent,
                done_ms: ms_since(t0),
                outcome,
                lost_after: s.lost,
                final_probe: true,
            });
            log
        }));
    }
    let mut logs = Vec::new();
    for f in finals {
        logs.push(f.await.map_err(|e| format!("final probe: {e}"))?);
    }
    Ok(logs)
}

/// Sends `1`; classifies the answer.
async fn send_counted(s: &mut Session) -> StepOutcome {
    match s.send(json!(1)).await {
        Ok(r) => match r["kind"].as_str() {
            Some("processed") => r["output"]
                .as_i64()
                .map(StepOutcome::Processed)
                .unwrap_or(StepOutcome::Failed),
            Some("duplicate") => StepOutcome::Duplicate,
            _ => StepOutcome::Failed,
        },
        Err(ClientError::Timeout(..)) => StepOutcome::TimedOut,
        Err(_) => StepOutcome::Failed,
    }
}

/// How one session's client sends.
struct Pacing {
    /// Inputs per second.
    rate: f64,
    /// Offset of its ticks, as a fraction of a period.
    phase: f64,
    /// The manifest's loss bound, ms.
    loss_bound_ms: u64,
    t0: Instant,
    /// Sends until `t0 + until`.
    until: Duration,
    brk: Option<Break>,
    /// Inputs acknowledged by all clients (progress lines).
    acked: Arc<AtomicU64>,
}

/// One session's client: sends `1` on every tick of its pacing and records the answers.
async fn workload(mut s: Session, p: Pacing) -> (Session, SessionLog) {
    let Pacing {
        rate,
        phase,
        loss_bound_ms,
        t0,
        until,
        brk,
        acked,
    } = p;
    let period = Duration::from_secs_f64(1.0 / rate.max(0.01));
    let max_inputs = (until.as_secs_f64() * rate).ceil() as u64 + 1;
    let mut log = SessionLog {
        id: s.id.clone(),
        loss_bound_ms,
        steps: Vec::new(),
        period_ms: period.as_secs_f64() * 1000.0,
        phase,
        until_ms: until.as_millis() as u64,
    };
    let mut k = 0u64;
    while (log.steps.len() as u64) < max_inputs {
        let due = period.mul_f64(k as f64 + phase);
        if due >= until {
            break;
        }
        tokio::time::sleep_until((t0 + due).into()).await;
        // Ticks missed while an input was blocked (a failover) are skipped, not bunched.
        k = (k + 1).max((t0.elapsed().as_secs_f64() / period.as_secs_f64()) as u64);
        let sent = ms_since(t0);
        let outcome = send_counted(&mut s).await;
        let ok = matches!(outcome, StepOutcome::Processed(_));
        if ok {
            acked.fetch_add(1, Ordering::Relaxed);
        }
        log.steps.push(Step {
            ordinal: log.steps.len() as u64 + 1,
            sent_ms: sent,
            done_ms: ms_since(t0),
            outcome,
            lost_after: s.lost,
            final_probe: false,
        });
        if brk == Some(Break::Dedupe) && ok && log.steps.len().is_multiple_of(5) {
            // Deliberately broken: the acknowledged input again, under a fresh seq, unrecorded.
            let _ = s.send(json!(1)).await;
        }
    }
    (s, log)
}

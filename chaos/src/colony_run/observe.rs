//! What the harness sees of the colony while it runs: the RC's directory (`GET /status` of the
//! RC, or of its group's current leader) and,
//! every [`POLL`], which node answers for which session (`GET /sessions/{id}` on every running
//! node: the served-by events `single-active` is checked on); the end-of-run `/health` probes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::ledger::replica_totals;
use super::ms_since;
use super::rc_group::RcGroup;
use crate::invariants::{EventKind, HealthProbe, NodeEvent, Placement};
use crate::launcher::{Launcher, ProcState};

/// Period of the directory and served-by polls.
const POLL: Duration = Duration::from_millis(250);

/// Shared between the driver and the pollers.
#[derive(Default)]
pub(super) struct Observed {
    /// Nodes not to probe now (killed, paused).
    pub unprobed: BTreeSet<String>,
    /// Node name → API base URL (from the RC's members).
    apis: BTreeMap<String, String>,
    /// Served-by events.
    pub events: Vec<NodeEvent>,
    /// (session, node) served now, with its epoch.
    serving: BTreeMap<(String, String), u64>,
    /// Placements seen in the directory (first sighting of each (session, node)).
    pub placements: Vec<Placement>,
    seen_placements: BTreeSet<(String, String)>,
    /// Holder changes seen in the directory.
    holder: BTreeMap<String, (String, u64)>,
    pub holder_changes: u64,
    pub polls: u64,
    t0: Option<Instant>,
}

impl Observed {
    fn now_ms(&self) -> u64 {
        self.t0.map(ms_since).unwrap_or(0)
    }
}

pub(super) fn lock(o: &Mutex<Observed>) -> std::sync::MutexGuard<'_, Observed> {
    o.lock().unwrap_or_else(|p| p.into_inner())
}

/// The pollers of one run: the directory and served-by poll loop, and what it recorded.
pub(super) struct Observer {
    /// Shared with the fault driver (which stops probing killed and paused nodes).
    pub observed: Arc<Mutex<Observed>>,
    stop: Arc<AtomicBool>,
    poller: tokio::task::JoinHandle<()>,
}

impl Observer {
    /// Starts polling the RC (its leader) and every member node, with the operator client
    /// `http`, for the sessions `ids`, times from `t0`.
    pub fn start(http: &reqwest::Client, rc: RcGroup, ids: Vec<String>, t0: Instant) -> Self {
        let observed = Arc::new(Mutex::new(Observed {
            t0: Some(t0),
            ..Default::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let poller = tokio::spawn(poll_loop(
            http.clone(),
            rc,
            ids,
            observed.clone(),
            stop.clone(),
            t0,
        ));
        Observer {
            observed,
            stop,
            poller,
        }
    }

    /// Stops the poll loop and waits for its last round.
    pub async fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = (&mut self.poller).await;
    }
}

/// A node about to be killed or paused processes nothing from now on: its served intervals end
/// here, and it is not probed until it runs again (a stale holder shows when it is probed after
/// a resume or restart).
pub(super) fn stopped_serving(observed: &Mutex<Observed>, node: &str) {
    let mut o = lock(observed);
    o.unprobed.insert(node.to_string());
    let t = o.now_ms();
    let ended: Vec<(String, u64)> = o
        .serving
        .iter()
        .filter(|((_, n), _)| n == node)
        .map(|((s, _), ep)| (s.clone(), *ep))
        .collect();
    for (s, ep) in ended {
        o.serving.remove(&(s.clone(), node.to_string()));
        o.events.push(ev(&s, node, ep, EventKind::Inactive, t));
    }
}

pub(super) fn members(st: &Value) -> &[Value] {
    st["members"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

pub(super) fn sessions_of(st: &Value) -> &[Value] {
    st["sessions"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// Polls the RC's (its leader's) `/status` until `cond` holds on it, `within` at most; fails
/// early when a process exits on its own.
pub(super) async fn wait_status(
    rc: &RcGroup,
    launcher: &mut Launcher,
    within: Duration,
    cond: impl Fn(&Value) -> bool,
) -> Result<Value, String> {
    let deadline = Instant::now() + within;
    let mut last = Value::Null;
    loop {
        if let Some(st) = rc.status().await {
            if cond(&st) {
                return Ok(st);
            }
            last = st;
        }
        for name in launcher.names() {
            if let Ok(ProcState::Exited(c)) = launcher.state(&name) {
                return Err(format!("{name} exited ({c:?})"));
            }
        }
        if Instant::now() >= deadline {
            let t = last.to_string();
            return Err(format!(
                "not within {within:?}; last status: {}",
                &t[..t.len().min(1500)]
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn poll_loop(
    probe: reqwest::Client,
    rc: RcGroup,
    ids: Vec<String>,
    observed: Arc<Mutex<Observed>>,
    stop: Arc<AtomicBool>,
    t0: Instant,
) {
    // `probe`: the colony's operator client (its token opens every session), each probe bounded
    // to 500 ms.
    // Bounded: at most one poll per period for a day.
    for _ in 0..(24 * 3600 * 1000 / POLL.as_millis() as u64) {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let next = Instant::now() + POLL;
        if let Some(st) = rc.status().await {
            let t = ms_since(t0);
            let did_name: BTreeMap<String, String> = members(&st)
                .iter()
                .filter_map(|m| {
                    Some((
                        m["node"].as_str()?.to_string(),
                        m["name"].as_str()?.to_string(),
                    ))
                })
                .collect();
            let mut o = lock(&observed);
            o.polls += 1;
            for m in members(&st) {
                if let (Some(n), Some(a)) = (m["name"].as_str(), m["address"].as_str()) {
                    o.apis
                        .insert(n.to_string(), a.trim_end_matches('/').to_string());
                }
            }
            for e in sessions_of(&st) {
                let Some(id) = e["session_id"].as_str() else {
                    continue;
                };
                let mut nodes: Vec<String> = Vec::new();
                if e["state"] == "active" {
                    if let Some(n) = e["node_name"].as_str() {
                        nodes.push(n.to_string());
                        let cur = (n.to_string(), e["epoch"].as_u64().unwrap_or(0));
                        let prev = o.holder.insert(id.to_string(), cur.clone());
                        if prev.is_some_and(|p| p != cur) {
                            o.holder_changes += 1;
                        }
                    }
                }
                for r in e["replicas"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                    if let Some(n) = r.as_str().and_then(|d| did_name.get(d)) {
                        nodes.push(n.clone());
                    }
                }
                for n in nodes {
                    if o.seen_placements.insert((id.to_string(), n.clone())) {
                        o.placements.push(Placement {
                            session: id.to_string(),
                            node: n,
                            t_ms: t,
                        });
                    }
                }
            }
        }
        // Served-by: every probe-able node, every session.
        let targets: Vec<(String, String)> = {
            let o = lock(&observed);
            o.apis
                .iter()
                .filter(|(n, _)| !o.unprobed.contains(*n))
                .map(|(n, a)| (n.clone(), a.clone()))
                .collect()
        };
        for (node, api) in &targets {
            for id in &ids {
                let r = probe
                    .get(format!("{api}/sessions/{id}"))
                    .timeout(Duration::from_millis(500))
                    .send()
                    .await;
                let t = ms_since(t0);
                let epoch = match r {
                    Ok(r) if r.status().as_u16() == 200 => Some(
                        r.json::<Value>().await.unwrap_or(Value::Null)["epoch"]
                            .as_u64()
                            .unwrap_or(0),
                    ),
                    Ok(_) => None,
                    // No answer (node stopped, paused or gone): not evidence either way.
                    Err(_) => continue,
                };
                let mut o = lock(&observed);
                let key = (id.clone(), node.clone());
                let prev = o.serving.get(&key).copied();
                match (prev, epoch) {
                    (None, Some(ep)) => {
                        o.serving.insert(key, ep);
                        o.events.push(ev(id, node, ep, EventKind::Active, t));
                    }
                    (Some(p), Some(ep)) if p != ep => {
                        o.serving.insert(key, ep);
                        o.events.push(ev(id, node, p, EventKind::Inactive, t));
                        o.events.push(ev(id, node, ep, EventKind::Active, t));
                    }
                    (Some(p), None) => {
                        o.serving.remove(&key);
                        o.events.push(ev(id, node, p, EventKind::Inactive, t));
                    }
                    _ => {}
                }
            }
        }
        tokio::time::sleep_until(next.into()).await;
    }
}

fn ev(session: &str, node: &str, epoch: u64, event: EventKind, t_ms: u64) -> NodeEvent {
    NodeEvent {
        session: session.into(),
        node: node.into(),
        epoch,
        event,
        t_ms,
        seq: None,
    }
}

/// `/health` of every process the launcher started (a ledger replica: its Raft status); node
/// addresses from the RC leader's members, every RC of a group at its own API.
pub(super) async fn health(
    http: &reqwest::Client,
    rc: &RcGroup,
    launcher: &mut Launcher,
    ledgers: &BTreeMap<String, String>,
    t0: Instant,
) -> Vec<HealthProbe> {
    let st = rc
        .status_within(Duration::from_secs(10))
        .await
        .unwrap_or(Value::Null);
    let mut apis: BTreeMap<String, String> = members(&st)
        .iter()
        .filter_map(|m| {
            Some((
                m["name"].as_str()?.to_string(),
                m["address"].as_str()?.trim_end_matches('/').to_string(),
            ))
        })
        .collect();
    for r in rc.replicas() {
        apis.insert(r.name.clone(), r.api.clone());
    }
    let mut out = Vec::new();
    for name in launcher.names() {
        let state = launcher.state(&name).ok();
        let alive = !matches!(state, Some(ProcState::Killed));
        let (mut status_code, mut error) = (None, None);
        if let Some(ProcState::Exited(c)) = state {
            error = Some(format!("exited on its own ({c:?})"));
        } else if let (true, Some(addr)) = (alive, ledgers.get(&name)) {
            match replica_totals(&name, addr).await {
                Ok(_) => status_code = Some(200),
                Err(e) => error = Some(format!("ledger replica status: {e}")),
            }
        } else if alive {
            match apis.get(&name) {
                None => error = Some("not in the RC's members (no API address)".into()),
                Some(a) => match http.get(format!("{a}/health")).send().await {
                    Ok(r) => status_code = Some(r.status().as_u16()),
                    Err(e) => error = Some(e.to_string()),
                },
            }
        }
        out.push(HealthProbe {
            process: name,
            alive,
            status: status_code,
            error,
            t_ms: ms_since(t0),
        });
    }
    out
}

//! Why this file (~1,230 lines before its tests; the directory's loading by holding reports is in
//! `rc_scale/load.rs`) stays one piece otherwise: it is one bench whose parts
//! share one state — the simulated node (identity, link key, the protocol of `cluster/src/node`
//! re-enacted), the actor the RC finds in its pg group, the counters both update, and the phases
//! (start, join, load, measure) that read those counters. Split by phase, every file would import
//! the same `Shared` and `SimNode`; the protocol half is the only candidate for its own module and
//! goes there when a second bench simulates nodes. Its waits: every `sleep` below is either the
//! poll interval of a loop that ends on a condition or a deadline (the RC answering, every node
//! joined) or the pacing of a rate (placements spread over the window) — none is inside an actor.
//!
//! `bench rc-scale` (issue #20 item 5, ADR 0041): one real RC process (`opengrid rc`, security
//! on) with `--nodes` (default 10,000) simulated nodes heartbeating and `--sessions` (default
//! 1,000,000) sessions in its directory.
//!
//! # How nodes are simulated
//! This process is the nodes. It runs one ractor_cluster `NodeServer` with the colony secret as
//! its cookie, opens one control-plane connection to the RC, and hosts one actor per simulated
//! node in that node's pg group (`og.node.<did>`), exactly where the RC looks for a node's agent.
//! Each simulated node has its own ed25519 identity, sends its own signed join with its own
//! X25519 half, derives its own link key from the RC's signed join ack (whose signature it
//! checks), and seals every later message (heartbeats, holding reports, answers to start orders)
//! on that link — the protocol of `cluster/src/node`, re-enacted message by message, nothing of
//! the RC's checks bypassed. What differs from 10,000 node processes: one TCP connection carries
//! every node's messages (the RC's per-connection cost is not measured), and sealed messages
//! over [`SKIP_OPEN_BYTES`] (the colony's member list, sent to every member after every join) are
//! counted, not decrypted, to leave the CPU to the RC; at most [`JOINS_IN_FLIGHT`] joins are
//! unanswered at once and an unanswered one is sent again after [`JOIN_RETRY`] (a node sends it
//! again after 1 s: on a slow RC that retry storms — every retry is a new join the RC verifies,
//! links and announces to every member — and the bench measures the RC's join cost, not that).
//!
//! # Phases
//! 1. The RC alone: resident memory (`VmRSS` of `/proc/<pid>/status`).
//! 2. Baseline: one simulated node, an empty directory: `--count` placements one at a time
//!    (`POST /v1/sessions` as the colony's operator), p50/p99 at the client.
//! 3. Joins of the other nodes (at most [`JOINS_IN_FLIGHT`] unanswered), within
//!    `--join-budget-s`; every joined node heartbeats every `--heartbeat-ms` from then on, paced
//!    round-robin, and reports the sessions it holds every [`REPORT_EVERY`] heartbeats as a node
//!    does. Each start order is answered `Started` by the node it names.
//! 4. Loading the directory, within `--load-budget-s`, with progress: `--load report` (the
//!    default) gives every node its share of `--sessions` and sends its rejoin holding report
//!    (manifests included), which the RC adopts — the path by which a restarted RC rebuilds its
//!    directory — in waves of [`REPORT_WAVE`] sessions; `--load place` places them through the
//!    same API as the baseline ([`LOAD_FANOUT`] in flight, batches of [`LOAD_BATCH`]).
//! 5. Measurement, `--measure-s`: heartbeats sent / answered with a lease / counted by the RC
//!    (`opengrid_cluster_heartbeats_total{role="rc"}`) per second against the target
//!    (nodes / period); heartbeat → lease round trip (the lag); `--count` placements paced over
//!    the window, p50/p99. Over the whole run: nodes the RC declared dead
//!    (`opengrid_cluster_nodes_declared_dead_total`) or evicted while they heartbeated — every one
//!    is a false downing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Mutex;

use opengrid_cluster::common::identity::{Identity, NodeId};
use opengrid_cluster::common::seal::{self, KeyOffer, Link, Payload, Seal, Sealed};
use opengrid_cluster::common::spec::NodeSpec;
use opengrid_cluster::common::wire::{
    self, Held, JoinBody, JoinRequest, NodeMsg, RcMsg, ToNode, ToRc, PG_SCOPE,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::*;
use crate::percentiles::Percentiles;

mod load;
use load::load_by_reports;
pub use load::share;

/// P15 target: placement p99 with the colony loaded, µs.
pub const RC_SCALE_PLACE_TARGET_P99_US: u64 = 10_000;
/// Unanswered joins at most.
pub const JOINS_IN_FLIGHT: usize = 16;
/// An unanswered join is sent again after this (a node waits 1 s; see the module docs).
pub const JOIN_RETRY: Duration = Duration::from_secs(10);
/// Placements in flight while loading the directory.
pub const LOAD_FANOUT: usize = 32;
/// Placements per progress line while loading.
pub const LOAD_BATCH: usize = 10_000;
/// A node repeats its holding report every this many heartbeats (as `cluster/src/node`).
pub const REPORT_EVERY: u64 = 10;
/// Sealed messages to a simulated node larger than this are counted, not decrypted (member
/// lists: 32 B per member).
pub const SKIP_OPEN_BYTES: usize = 16 << 10;
/// Nodes the pacer looks at for joins per tick at most.
const JOIN_SCAN: usize = 4096;
/// The pacer's period.
const PACE: Duration = Duration::from_millis(2);
const MANIFEST: &str = "version = 1\n[session]\nhandler = \"counter\"\ncontinuity = \"interactive\"\n[placement]\njurisdictions = [\"EU\"]\n[migration]\ncost = \"cheap\"\nacceptable_loss = \"0s\"\nmax_blackout = \"2s\"\n";

/// Knobs of `bench rc-scale`.
#[derive(Debug, Clone, Args)]
pub struct RcScaleArgs {
    /// Simulated nodes (`bench rc-scale`).
    #[arg(long, default_value_t = 10_000)]
    pub nodes: usize,
    /// Sessions loaded into the RC's directory (`bench rc-scale`).
    #[arg(long, default_value_t = 1_000_000)]
    pub sessions: usize,
    /// Heartbeat period of every simulated node, ms (the node default: 100).
    #[arg(long, default_value_t = 100)]
    pub heartbeat_ms: u64,
    /// Length of the measurement window, s (`bench rc-scale`).
    #[arg(long, default_value_t = 30)]
    pub measure_s: u64,
    /// Time allowed for the joins, s; the bench goes on with the nodes joined by then.
    #[arg(long, default_value_t = 900)]
    pub join_budget_s: u64,
    /// Time allowed for loading the directory, s; the bench goes on with what was loaded.
    #[arg(long, default_value_t = 1800)]
    pub load_budget_s: u64,
    /// New nodes allowed to join per second (0: as fast as the RC answers). Every join is
    /// announced to every member (32 B per member and join, ADR 0042): an unpaced storm of
    /// 10,000 joins backs up the one connection all simulated nodes share.
    #[arg(long, default_value_t = 200)]
    pub join_rate: u64,
    /// Sessions reported for adoption per second at most with `--load report` (0: a wave as
    /// soon as the last one is adopted). Adoption runs on the RC's control thread: unpaced, it
    /// delays heartbeats behind it.
    #[arg(long, default_value_t = 10_000)]
    pub load_rate: u64,
    /// How the directory is loaded: `report` (each node holds its share of the sessions and
    /// reports them in its rejoin holding report; the RC adopts them, as a restarted RC rebuilds
    /// its directory) or `place` (`POST /v1/sessions`, one placement each: ~500/s on 2 cores).
    #[arg(long, value_enum, default_value_t = LoadMode::Report)]
    pub load: LoadMode,
}

/// How `bench rc-scale` fills the RC's directory (`--load`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadMode {
    /// Held by the simulated nodes, adopted from their holding reports.
    Report,
    /// Placed through the client API.
    Place,
}

impl Default for RcScaleArgs {
    fn default() -> Self {
        RcScaleArgs {
            nodes: 10_000,
            sessions: 1_000_000,
            heartbeat_ms: 100,
            measure_s: 30,
            join_budget_s: 900,
            load_budget_s: 1800,
            load: LoadMode::Report,
            join_rate: 200,
            load_rate: 10_000,
        }
    }
}

/// Result of `bench rc-scale`.
#[derive(Clone, Debug, Serialize)]
pub struct RcScaleResult {
    /// `rc_scale`.
    pub name: &'static str,
    /// How the nodes were simulated.
    pub mode: &'static str,
    /// Simulated nodes asked for.
    pub nodes: usize,
    /// Nodes that joined (within the join budget).
    pub nodes_joined: usize,
    /// Join phase, ms (from the first join after the baseline to the last ack or the budget).
    pub join_ms: u64,
    /// Joins per second over the join phase.
    pub joins_per_s: f64,
    /// `[joined, ms since the join phase began]` at each quarter.
    pub join_curve: Vec<(usize, u64)>,
    /// Member-list messages received (the RC sends every member the list after every join).
    pub member_lists: u64,
    /// Bytes of member-list messages received.
    pub member_list_bytes: u64,
    /// Sessions asked for.
    pub sessions: usize,
    /// Sessions placed into the directory by the load phase.
    pub sessions_loaded: usize,
    /// Placements that failed while loading.
    pub load_failed: u64,
    /// Load phase, ms.
    pub load_ms: u64,
    /// Placements per second while loading.
    pub load_per_s: f64,
    /// How the directory was loaded.
    pub load_mode: LoadMode,
    /// Heartbeat period, ms.
    pub heartbeat_ms: u64,
    /// Target heartbeat rate: joined nodes / period, per s.
    pub target_hb_per_s: f64,
    /// Measurement window, s.
    pub measure_s: f64,
    /// Heartbeats this harness sent per second in the window.
    pub sent_hb_per_s: f64,
    /// Heartbeats the RC counted per second in the window (`heartbeats_total{role="rc"}`).
    pub rc_hb_per_s: f64,
    /// Heartbeats answered with a lease per second in the window.
    pub leased_hb_per_s: f64,
    /// Heartbeat slots the pacer could not send in the window (this harness fell behind).
    pub harness_skipped: u64,
    /// Heartbeat → lease round trip in the window, p50 µs.
    pub lease_rtt_p50_us: u64,
    /// p99 µs.
    pub lease_rtt_p99_us: u64,
    /// Worst µs.
    pub lease_rtt_max_us: u64,
    /// Heartbeats with no lease back by the end of the window.
    pub unanswered_hb: u64,
    /// Nodes declared dead by the RC over the run (all of them heartbeated: false downings).
    pub declared_dead: u64,
    /// Evictions the simulated nodes received over the run.
    pub evictions: u64,
    /// Control messages the RC refused over the run (`control_refused_total`).
    pub control_refused: u64,
    /// `declared_dead + evictions`.
    pub false_downings: u64,
    /// The RC kept up: it counted ≥ 99 % of the target rate and answered ≥ 99 % of what it got.
    pub kept_up: bool,
    /// Baseline (one node, empty directory, no load): placements.
    pub base_place_count: u64,
    /// Baseline placement p50 µs.
    pub base_place_p50_us: u64,
    /// Baseline p99 µs.
    pub base_place_p99_us: u64,
    /// Placements during the measurement window.
    pub place_count: u64,
    /// Failed placements during the window.
    pub place_failed: u64,
    /// Placement p50 µs under load.
    pub place_p50_us: u64,
    /// p99 µs.
    pub place_p99_us: u64,
    /// Worst µs.
    pub place_max_us: u64,
    /// RC resident memory, KiB: alone, after the baseline, after the joins, after the load, at
    /// the end.
    pub rss_idle_kib: u64,
    /// After the baseline.
    pub rss_base_kib: u64,
    /// After the joins.
    pub rss_joined_kib: u64,
    /// After the load.
    pub rss_loaded_kib: u64,
    /// At the end.
    pub rss_end_kib: u64,
    /// Peak (`VmHWM`).
    pub rss_peak_kib: u64,
    /// (rss_loaded − rss_joined) / sessions_loaded.
    pub bytes_per_session: u64,
    /// (rss_joined − rss_base) / (nodes_joined − 1).
    pub bytes_per_node: u64,
    /// The RC's data dir on disk at the end (its durable directory copy), bytes.
    pub rc_disk_bytes: u64,
    /// Target p99 µs.
    pub target_place_p99_us: u64,
    /// Every node joined, every session loaded, kept up, 0 false downings, p99 ≤ target.
    pub met: bool,
}

/// Heartbeat accounting of one window (pure: unit-tested).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HeartbeatWindow {
    /// Joined nodes.
    pub nodes: usize,
    /// Period, ms.
    pub period_ms: u64,
    /// Window, s.
    pub secs: f64,
    /// Sent by the harness.
    pub sent: u64,
    /// Counted by the RC.
    pub rc_counted: u64,
    /// Answered with a lease.
    pub leased: u64,
}

impl HeartbeatWindow {
    /// Target rate: every node once per period.
    pub fn target_per_s(&self) -> f64 {
        if self.period_ms == 0 {
            return 0.0;
        }
        self.nodes as f64 * 1000.0 / self.period_ms as f64
    }

    fn rate(&self, n: u64) -> f64 {
        if self.secs <= 0.0 {
            0.0
        } else {
            n as f64 / self.secs
        }
    }

    /// Sent per s.
    pub fn sent_per_s(&self) -> f64 {
        self.rate(self.sent)
    }

    /// Counted by the RC per s.
    pub fn rc_per_s(&self) -> f64 {
        self.rate(self.rc_counted)
    }

    /// Leased per s.
    pub fn leased_per_s(&self) -> f64 {
        self.rate(self.leased)
    }

    /// The RC counted ≥ 99 % of the target rate and answered ≥ 99 % of what it counted.
    pub fn kept_up(&self) -> bool {
        let target = self.target_per_s();
        target > 0.0
            && self.rc_per_s() >= 0.99 * target
            && self.leased as f64 >= 0.99 * self.rc_counted as f64
    }
}

/// How many round-robin heartbeat slots are due `elapsed` after the pacer started at `per_s`
/// (pure: unit-tested).
pub fn slots_due(elapsed: Duration, per_s: f64) -> u64 {
    (elapsed.as_secs_f64() * per_s).floor() as u64
}

/// What every simulated node shares: counters and the RC's actor.
#[derive(Default)]
struct Shared {
    rc: Mutex<Option<ActorRef<RcMsg>>>,
    joined: AtomicUsize,
    hb_sent: AtomicU64,
    leased: AtomicU64,
    evictions: AtomicU64,
    refused_joins: AtomicU64,
    starts: AtomicU64,
    member_lists: AtomicU64,
    member_list_bytes: AtomicU64,
    undecryptable: AtomicU64,
    /// Heartbeat → lease µs, in the measurement window only.
    rtt: Mutex<Percentiles>,
    measuring: AtomicBool,
    /// The sessions' manifest as a node reports it (JSON).
    manifest_json: String,
}

impl Shared {
    fn rc(&self) -> Option<ActorRef<RcMsg>> {
        let mut g = self.rc.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            let cells = ractor::pg::get_scoped_members(
                &PG_SCOPE.to_string(),
                &wire::pg_rc("local", SECRET),
            );
            *g = cells.into_iter().next().map(ActorRef::from);
        }
        g.clone()
    }
}

#[derive(Default)]
struct SimState {
    offer: Option<(u64, KeyOffer)>,
    join_sent: Option<Instant>,
    link: Option<Link>,
    seq: u64,
    sent: VecDeque<(u64, Instant)>,
    held: Vec<Held>,
    report: u64,
}

/// One simulated node.
struct SimNode {
    identity: Identity,
    id: NodeId,
    spec: NodeSpec,
    st: Mutex<SimState>,
}

impl SimNode {
    fn new(i: usize) -> SimNode {
        let identity = Identity::generate();
        let id = identity.id();
        // Unique, never dialled: the RC names them in replica sets only.
        let migration = format!(
            "127.{}.{}.{}:9",
            1 + (i >> 16) % 250,
            (i >> 8) & 255,
            i & 255
        );
        let spec = NodeSpec {
            id,
            name: format!("sim{i}"),
            jurisdiction: "DE".into(),
            accelerator: opengrid_session::AcceleratorClass::None,
            cpu_cores: 8,
            memory: 1 << 40,
            handlers: vec!["counter".into()],
            capabilities: vec![],
            price_micros_per_input: 1,
            capacity: 100_000,
            max_session_memory: 0,
            api: format!("http://{migration}"),
            migration,
        };
        SimNode {
            identity,
            id,
            spec,
            st: Mutex::new(SimState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends a signed join (a fresh key offer each time).
    fn join(&self, sh: &Shared) {
        let Some(rc) = sh.rc() else { return };
        let offer = KeyOffer::new();
        let body = JoinBody {
            colony: "local".into(),
            spec: self.spec.clone(),
            unix_ms: wire::unix_ms(),
            nonce: rand::random(),
            kx: offer.public,
            join_token: None,
        };
        {
            let mut st = self.lock();
            st.offer = Some((body.nonce, offer));
            st.join_sent = Some(Instant::now());
        }
        let req = JoinRequest::sign(&self.identity, &body);
        let _ = rc.cast(RcMsg::wire(Sealed::in_clear(
            self.id,
            Seal::None,
            ToRc::Join(req),
        )));
    }

    /// Seals `m` on the link and sends it; false without a link.
    fn send(&self, st: &mut SimState, sh: &Shared, m: ToRc) -> bool {
        let (Some(link), Some(rc)) = (st.link.as_mut(), sh.rc()) else {
            return false;
        };
        rc.cast(RcMsg::wire(link.seal(self.id, m))).is_ok()
    }

    fn send_holding(&self, st: &mut SimState, sh: &Shared, rejoin: bool) {
        st.report += 1;
        // As a node: manifests in the rejoin report only (the RC adopts from it).
        let held = st
            .held
            .iter()
            .map(|h| Held {
                manifest: rejoin.then(|| sh.manifest_json.clone()),
                ..h.clone()
            })
            .collect();
        let parts = wire::holding_parts(held);
        let n = parts.len() as u32;
        for (i, sessions) in parts.into_iter().enumerate() {
            let m = ToRc::Holding {
                node: self.id,
                report: st.report,
                rejoin,
                part: i as u32,
                parts: n,
                sessions,
            };
            self.send(st, sh, m);
        }
    }

    /// One heartbeat (and the periodic holding report); false when not joined.
    fn heartbeat(&self, sh: &Shared) -> bool {
        let mut st = self.lock();
        if st.link.is_none() {
            return false;
        }
        st.seq += 1;
        let seq = st.seq;
        st.sent.push_back((seq, Instant::now()));
        while st.sent.len() > 64 {
            st.sent.pop_front();
        }
        if seq.is_multiple_of(REPORT_EVERY) {
            self.send_holding(&mut st, sh, false);
        }
        let m = ToRc::Heartbeat {
            node: self.id,
            seq,
            sessions: st.held.len() as u32,
            rtt_us: 0,
            warm: if st.held.is_empty() {
                Vec::new()
            } else {
                vec!["counter".into()]
            },
        };
        let ok = self.send(&mut st, sh, m);
        if ok {
            sh.hb_sent.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// A message from the RC, as `cluster/src/node` checks it.
    fn on_sealed(&self, s: Sealed<ToNode>, sh: &Shared) {
        let mut st = self.lock();
        let msg = match (&s.seal, &s.payload) {
            (Seal::Sig { .. }, _) => {
                if seal::verify_signed(&s, &self.id, wire::unix_ms(), 60_000).is_err() {
                    sh.undecryptable.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                match s.payload {
                    Payload::Clear(m) => m,
                    Payload::Encrypted(_) => return,
                }
            }
            (Seal::Aead { .. }, Payload::Encrypted(ct)) if ct.len() > SKIP_OPEN_BYTES => {
                sh.member_lists.fetch_add(1, Ordering::Relaxed);
                sh.member_list_bytes
                    .fetch_add(ct.len() as u64, Ordering::Relaxed);
                return;
            }
            _ => match st.link.as_mut().map(|l| l.open(s)) {
                Some(Ok(m)) => m,
                _ => {
                    sh.undecryptable.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
        };
        match msg {
            ToNode::JoinAck {
                refused,
                rc,
                nonce,
                kx,
                ..
            } => {
                let offer = match st.offer.take() {
                    Some((n, o)) if n == nonce => o,
                    other => {
                        st.offer = other;
                        return;
                    }
                };
                let (None, Some(rc_kx)) = (refused, kx) else {
                    sh.refused_joins.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let Ok(key) = offer.link_key(&rc_kx, &self.id, &rc, &offer.public, &rc_kx, nonce)
                else {
                    sh.refused_joins.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let fresh = st.link.is_none();
                st.link = Some(Link::new(key, rc));
                st.join_sent = None;
                if fresh {
                    sh.joined.fetch_add(1, Ordering::Relaxed);
                }
                // As a node: the rejoin holding report first (it holds nothing yet).
                self.send_holding(&mut st, sh, true);
            }
            ToNode::Lease { seq, .. } => {
                sh.leased.fetch_add(1, Ordering::Relaxed);
                while let Some(&(s0, t)) = st.sent.front() {
                    if s0 > seq {
                        break;
                    }
                    st.sent.pop_front();
                    if s0 == seq && sh.measuring.load(Ordering::Relaxed) {
                        let us = t.elapsed().as_micros() as u64;
                        sh.rtt.lock().unwrap_or_else(|p| p.into_inner()).record(us);
                    }
                }
            }
            ToNode::Start {
                req,
                session,
                epoch,
                replicas,
                ..
            } => {
                sh.starts.fetch_add(1, Ordering::Relaxed);
                st.held.push(Held {
                    session,
                    epoch,
                    handler: "counter".into(),
                    manifest: None,
                    replicas,
                });
                let m = ToRc::Started {
                    node: self.id,
                    req,
                    error: None,
                };
                self.send(&mut st, sh, m);
            }
            ToNode::HoldingAck { drop, .. } => {
                st.held
                    .retain(|h| !drop.iter().any(|(s, _)| *s == h.session));
            }
            ToNode::Evicted { .. } | ToNode::Rejoin { .. } => {
                sh.evictions.fetch_add(1, Ordering::Relaxed);
                if st.link.take().is_some() {
                    sh.joined.fetch_sub(1, Ordering::Relaxed);
                }
            }
            ToNode::Members { .. } | ToNode::MembersJoined { .. } => {
                sh.member_lists.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// The actor the RC finds in a simulated node's pg group.
struct SimAgent {
    node: Arc<SimNode>,
    shared: Arc<Shared>,
}

impl Actor for SimAgent {
    type Msg = NodeMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, myself: ActorRef<NodeMsg>, _: ()) -> Result<(), ActorProcessingErr> {
        ractor::pg::join_scoped(
            PG_SCOPE.to_string(),
            wire::pg_node(&self.node.id),
            vec![myself.get_cell()],
        );
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<NodeMsg>,
        msg: NodeMsg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        if let NodeMsg::Wire(w) = msg {
            self.node.on_sealed(*w, &self.shared);
        }
        Ok(())
    }
}

/// The pacer: every joined node heartbeats once per period, round robin; the first `allowed`
/// nodes that are not joined (re)join, at most [`JOINS_IN_FLIGHT`] unanswered.
async fn pace(
    nodes: Arc<Vec<Arc<SimNode>>>,
    sh: Arc<Shared>,
    period: Duration,
    allowed: Arc<AtomicUsize>,
    skipped: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let n = nodes.len();
    let per_s = n as f64 / period.as_secs_f64();
    let start = Instant::now();
    let mut done = 0u64;
    let mut next = 0usize;
    let mut tick = tokio::time::interval(PACE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut join_cursor = 0usize;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let due = slots_due(start.elapsed(), per_s);
        // More than one period behind: those slots are skipped (counted), not sent in a burst.
        if due > done + n as u64 {
            skipped.fetch_add(due - done - n as u64, Ordering::Relaxed);
            done = due - n as u64;
        }
        while done < due {
            nodes[next].heartbeat(&sh);
            next = (next + 1) % n;
            done += 1;
        }
        // Joins: bounded in flight; a join unanswered for JOIN_RETRY is sent again.
        let limit = allowed.load(Ordering::Relaxed).min(n);
        if sh.joined.load(Ordering::Relaxed) >= limit {
            tokio::task::yield_now().await;
            continue;
        }
        let mut in_flight = 0usize;
        let mut scanned = 0usize;
        while scanned < limit.min(JOIN_SCAN) && in_flight < JOINS_IN_FLIGHT {
            let i = join_cursor % limit;
            join_cursor += 1;
            scanned += 1;
            let node = &nodes[i];
            let pending = {
                let st = node.lock();
                if st.link.is_some() {
                    continue;
                }
                st.join_sent
            };
            match pending {
                Some(t) if t.elapsed() < JOIN_RETRY => in_flight += 1,
                _ => {
                    node.join(&sh);
                    in_flight += 1;
                }
            }
        }
        tokio::task::yield_now().await;
    }
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn dir_bytes(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Sum of a counter's samples in Prometheus text (`name` then `{` or a space).
fn metric_sum(text: &str, name: &str, label: Option<&str>) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
                && label.is_none_or(|lb| l.contains(lb))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

struct Rc {
    api: String,
    http: reqwest::Client,
}

impl Rc {
    async fn metrics(&self) -> String {
        match self.http.get(format!("{}/metrics", self.api)).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// One placement; µs at the client, or why it failed.
    async fn place(&self) -> Result<u64, String> {
        let t = Instant::now();
        let r = self
            .http
            .post(format!("{}/v1/sessions", self.api))
            .header("content-type", "application/toml")
            .body(MANIFEST)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status();
        let _ = r.bytes().await;
        if status.as_u16() == 201 {
            Ok(t.elapsed().as_micros() as u64)
        } else {
            Err(format!("HTTP {status}"))
        }
    }
}

/// Waits until `cond` holds, at most `within`; checks the RC is alive meanwhile.
async fn wait_for(
    launcher: &mut Launcher,
    what: &str,
    within: Duration,
    cond: impl Fn() -> bool,
) -> Result<(), BenchError> {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return Ok(());
        }
        if let ProcState::Exited(st) = launcher.state("rc")? {
            return Err(failed(format!(
                "the RC exited ({st:?}) while waiting: {what}"
            )));
        }
        if Instant::now() >= deadline {
            return Err(failed(format!("{what}: not within {within:?}")));
        }
        // Poll interval of a wait that ends on its condition or its deadline (checked above).
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `bench rc-scale`.
pub async fn rc_scale(
    args: &ColonyArgs,
    sc: &RcScaleArgs,
    probes: usize,
    progress: &Progress,
) -> Result<RcScaleResult, BenchError> {
    let n = sc.nodes.clamp(1, 100_000);
    let sessions = sc.sessions.min(10_000_000);
    let probes = probes.clamp(1, 100_000);
    let period = Duration::from_millis(sc.heartbeat_ms.clamp(10, 10_000));
    let bin = opengrid_bin(args.bin.as_deref())?;
    let mut launcher = Launcher::new()?;
    if args.keep {
        launcher.keep_files();
    }
    let (api_port, cluster_port) = (free_port()?, free_port()?);
    let rc_dir = launcher.data_dir("rc")?;
    let cfg = format!(
        "version = 1\ndata_dir = {rc_dir:?}\napi_listen = \"127.0.0.1:{api_port}\"\ncluster_listen = \"127.0.0.1:{cluster_port}\"\ncolony_secret = \"{SECRET}\"\nplace_timeout = \"10s\"\nheartbeat_period = \"{}ms\"\nlease = \"{}ms\"\nphi_min_std = \"{}ms\"\nacceptable_pause = \"{}ms\"\n",
        period.as_millis(),
        // The defaults' ratios (100 ms heartbeats: 1 s lease, phi's 50 ms least deviation and
        // 100 ms acceptable pause) at any period: at 1 s heartbeats with the 100 ms defaults, a
        // heartbeat 0.4 s late is a downing while the lease still has 9 s to run.
        10 * period.as_millis(),
        period.as_millis() / 2,
        period.as_millis()
    );
    let path = launcher.root().join("rc.toml");
    std::fs::write(&path, cfg).map_err(|e| failed(format!("{}: {e}", path.display())))?;
    launcher.spawn(
        ProcSpec::new("rc", &bin)
            .args(["rc", "--config", &path.display().to_string()])
            .env(
                "RUST_LOG",
                std::env::var("OPENGRID_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            ),
    )?;
    let pid = launcher
        .pid("rc")?
        .ok_or_else(|| failed("the RC has no pid"))?;
    let rc = Rc {
        api: format!("http://127.0.0.1:{api_port}"),
        // As the colony's operator (the RC's own key): no per-client quota.
        http: opengrid_cluster::common::token::operator_http(&rc_dir, Duration::from_secs(30))
            .map_err(failed)?,
    };
    progress.line(format!(
        "rc-scale: RC pid {pid} in {} (binary {}); {n} nodes, {sessions} sessions, heartbeat {} ms",
        launcher.root().display(),
        bin.display(),
        period.as_millis()
    ));
    // The RC answers.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = rc.http.get(format!("{}/health", rc.api)).send().await {
            if r.status().is_success() {
                break;
            }
        }
        if let ProcState::Exited(st) = launcher.state("rc")? {
            return Err(failed(format!("the RC exited at start ({st:?})")));
        }
        if Instant::now() >= deadline {
            return Err(failed("the RC did not answer /health within 60 s"));
        }
        // Poll interval: the loop ends when the RC answers /health or at its 60 s deadline.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_idle = rss_kib(pid, "VmRSS:");

    // The nodes' side: one NodeServer, one connection to the RC.
    let harness_port = free_port()?;
    let server = ractor_cluster::NodeServer::new(
        harness_port,
        SECRET.into(),
        format!("rc-scale-harness-{}", std::process::id()),
        "127.0.0.1".into(),
        None,
        Some(ractor_cluster::node::NodeConnectionMode::Isolated),
    )
    .with_listen_addr("127.0.0.1".parse().map_err(failed)?)
    .with_max_inbound_frame_size(2 * wire::MAX_WIRE_BYTES as u64);
    let (server, server_task) = Actor::spawn(None, server, ())
        .await
        .map_err(|e| failed(format!("NodeServer: {e}")))?;
    ractor_cluster::client_connect(&server, format!("127.0.0.1:{cluster_port}"))
        .await
        .map_err(|e| failed(format!("connect to the RC: {e}")))?;
    let manifest = opengrid_session::Manifest::from_toml_str(MANIFEST)
        .map_err(|e| failed(format!("the bench's manifest: {e}")))?;
    let shared = Arc::new(Shared {
        manifest_json: manifest.to_json_string(),
        ..Shared::default()
    });
    let sh = shared.clone();
    wait_for(
        &mut launcher,
        "the RC's actor seen over the link",
        Duration::from_secs(30),
        || sh.rc().is_some(),
    )
    .await?;

    progress.line(format!(
        "rc-scale: {n} simulated nodes (identities, actors)"
    ));
    let mut nodes = Vec::with_capacity(n);
    let mut agents = Vec::with_capacity(n);
    for i in 0..n {
        let node = Arc::new(SimNode::new(i));
        let (a, _) = Actor::spawn(
            None,
            SimAgent {
                node: node.clone(),
                shared: shared.clone(),
            },
            (),
        )
        .await
        .map_err(|e| failed(format!("node actor: {e}")))?;
        agents.push(a);
        nodes.push(node);
    }
    let nodes = Arc::new(nodes);
    let allowed = Arc::new(AtomicUsize::new(1));
    let skipped = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let pacer = tokio::spawn(pace(
        nodes.clone(),
        shared.clone(),
        period,
        allowed.clone(),
        skipped.clone(),
        stop.clone(),
    ));
    let result = run_phases(
        &mut launcher,
        &rc,
        pid,
        &rc_dir,
        (n, sessions, probes, period),
        sc,
        (&shared, &nodes, &allowed, &skipped),
        rss_idle,
        progress,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let _ = pacer.await;
    for a in agents {
        a.stop(None);
    }
    server.stop(None);
    let _ = server_task.await;
    launcher.shutdown();
    if args.keep {
        eprintln!("colony directory kept: {}", launcher.root().display());
    }
    result
}

type Sim<'a> = (
    &'a Arc<Shared>,
    &'a Arc<Vec<Arc<SimNode>>>,
    &'a Arc<AtomicUsize>,
    &'a Arc<AtomicU64>,
);

#[allow(clippy::too_many_arguments)]
async fn run_phases(
    launcher: &mut Launcher,
    rc: &Rc,
    pid: u32,
    rc_dir: &Path,
    (n, sessions, probes, period): (usize, usize, usize, Duration),
    sc: &RcScaleArgs,
    (shared, nodes, allowed, skipped): Sim<'_>,
    rss_idle: u64,
    progress: &Progress,
) -> Result<RcScaleResult, BenchError> {
    // Baseline: one node, an empty directory.
    let sh = shared.clone();
    wait_for(
        launcher,
        "the first node joined",
        Duration::from_secs(60),
        || sh.joined.load(Ordering::Relaxed) >= 1,
    )
    .await?;
    load::wait_placeable(rc).await?;
    let mut base = Percentiles::new();
    for _ in 0..probes {
        base.record(
            rc.place()
                .await
                .map_err(|e| failed(format!("baseline placement: {e}")))?,
        );
    }
    progress.line(format!(
        "rc-scale: baseline (1 node, empty directory) placement p50 {} / p99 {} µs",
        base.percentile(50.0),
        base.percentile(99.0)
    ));
    let rss_base = rss_kib(pid, "VmRSS:");

    // Joins.
    let t_join = Instant::now();
    let join_budget = Duration::from_secs(sc.join_budget_s.clamp(1, 24 * 3600));
    let pace_joins = |elapsed: Duration| {
        if sc.join_rate == 0 {
            n
        } else {
            n.min(1 + (sc.join_rate as f64 * elapsed.as_secs_f64()) as usize)
        }
    };
    allowed.store(pace_joins(Duration::ZERO), Ordering::Relaxed);
    let mut curve = Vec::new();
    let mut next_mark = 1;
    let mut last_line = Instant::now();
    loop {
        let j = shared.joined.load(Ordering::Relaxed);
        while next_mark <= 4 && j >= n * next_mark / 4 {
            curve.push((j, t_join.elapsed().as_millis() as u64));
            next_mark += 1;
        }
        if j >= n || t_join.elapsed() >= join_budget {
            break;
        }
        allowed.store(pace_joins(t_join.elapsed()), Ordering::Relaxed);
        if let ProcState::Exited(st) = launcher.state("rc")? {
            return Err(failed(format!("the RC exited during the joins ({st:?})")));
        }
        if last_line.elapsed() >= Duration::from_secs(10) {
            last_line = Instant::now();
            progress.line(format!(
                "rc-scale: {j}/{n} joined after {:.1} s (member lists received: {}, RC RSS {} MiB)",
                t_join.elapsed().as_secs_f64(),
                shared.member_lists.load(Ordering::Relaxed),
                rss_kib(pid, "VmRSS:") >> 10
            ));
        }
        // Poll interval of the join wait (ends when every node joined or at the join budget).
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let join_ms = t_join.elapsed().as_millis() as u64;
    let joined = shared.joined.load(Ordering::Relaxed);
    allowed.store(n, Ordering::Relaxed);
    if joined < n {
        // The rest keep trying (as nodes do, and evicted ones rejoin); the bench goes on.
        progress.line(format!(
            "rc-scale: join budget spent: {joined}/{n} joined in {join_ms} ms; going on with them"
        ));
    } else {
        progress.line(format!("rc-scale: {n} nodes joined in {join_ms} ms"));
    }
    let rss_joined = rss_kib(pid, "VmRSS:");

    // Load the directory.
    let t_load = Instant::now();
    let load_budget = Duration::from_secs(sc.load_budget_s.clamp(1, 24 * 3600));
    let mut loaded = 0usize;
    let mut load_failed = 0u64;
    if sc.load == LoadMode::Report {
        loaded = load_by_reports(
            launcher,
            rc,
            pid,
            (sessions, sc.load_rate),
            nodes,
            shared,
            load_budget,
            progress,
        )
        .await?;
    }
    while sc.load == LoadMode::Place && loaded < sessions && t_load.elapsed() < load_budget {
        let batch = LOAD_BATCH.min(sessions - loaded);
        let results: Vec<Result<u64, String>> = stream::iter(0..batch)
            .map(|_| rc.place())
            .buffer_unordered(LOAD_FANOUT)
            .collect()
            .await;
        let bad = results.iter().filter(|r| r.is_err()).count();
        if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
            progress.line(format!(
                "rc-scale: {bad} placements failed in a batch, e.g. {e}"
            ));
        }
        load_failed += bad as u64;
        loaded += batch - bad;
        if let ProcState::Exited(st) = launcher.state("rc")? {
            return Err(failed(format!("the RC exited while loading ({st:?})")));
        }
        if bad == batch {
            return Err(failed("a whole batch of placements failed while loading"));
        }
        progress.line(format!(
            "rc-scale: {loaded}/{sessions} sessions loaded, {:.0}/s, RC RSS {} MiB, {} joined",
            loaded as f64 / t_load.elapsed().as_secs_f64(),
            rss_kib(pid, "VmRSS:") >> 10,
            shared.joined.load(Ordering::Relaxed)
        ));
    }
    let load_ms = t_load.elapsed().as_millis() as u64;
    let rss_loaded = rss_kib(pid, "VmRSS:");

    // Measure.
    let measure = Duration::from_secs(sc.measure_s.clamp(1, 3600));
    progress.line(format!("rc-scale: measuring for {} s", measure.as_secs()));
    let before = rc.metrics().await;
    let (sent0, leased0, skip0) = (
        shared.hb_sent.load(Ordering::Relaxed),
        shared.leased.load(Ordering::Relaxed),
        skipped.load(Ordering::Relaxed),
    );
    shared.measuring.store(true, Ordering::Relaxed);
    let t_measure = Instant::now();
    let mut place = Percentiles::new();
    let mut place_failed = 0u64;
    let gap = measure.div_f64(probes as f64);
    for i in 0..probes {
        let at = t_measure + gap.mul_f64(i as f64);
        // Pacing: placements spread evenly over the measurement window (a rate, not a guess).
        tokio::time::sleep_until(at.into()).await;
        match rc.place().await {
            Ok(us) => place.record(us),
            Err(_) => place_failed += 1,
        }
        if t_measure.elapsed() >= measure * 2 {
            break;
        }
    }
    // The measurement window's end: heartbeats are counted over exactly this span.
    tokio::time::sleep_until((t_measure + measure).into()).await;
    let secs = t_measure.elapsed().as_secs_f64();
    let after = rc.metrics().await;
    shared.measuring.store(false, Ordering::Relaxed);
    let hb_rc = |t: &str| metric_sum(t, "opengrid_cluster_heartbeats_total", Some("role=\"rc\""));
    let window = HeartbeatWindow {
        nodes: shared.joined.load(Ordering::Relaxed),
        period_ms: period.as_millis() as u64,
        secs,
        sent: shared.hb_sent.load(Ordering::Relaxed) - sent0,
        rc_counted: hb_rc(&after).saturating_sub(hb_rc(&before)),
        leased: shared.leased.load(Ordering::Relaxed) - leased0,
    };
    let unanswered: u64 = nodes.iter().map(|n| n.lock().sent.len() as u64).sum();
    let declared_dead = metric_sum(&after, "opengrid_cluster_nodes_declared_dead_total", None);
    let control_refused = metric_sum(&after, "opengrid_cluster_control_refused_total", None);
    let evictions = shared.evictions.load(Ordering::Relaxed);
    let rss_end = rss_kib(pid, "VmRSS:");
    let rtt = shared.rtt.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let false_downings = declared_dead + evictions;
    let kept_up = window.kept_up();
    let place_p99 = place.percentile(99.0);
    progress.line(format!(
        "rc-scale: heartbeats target {:.0}/s, sent {:.0}/s, RC counted {:.0}/s, leased {:.0}/s; lease rtt p99 {} µs; placement p50 {} / p99 {} µs; false downings {false_downings}",
        window.target_per_s(),
        window.sent_per_s(),
        window.rc_per_s(),
        window.leased_per_s(),
        rtt.percentile(99.0),
        place.percentile(50.0),
        place_p99
    ));
    let sessions_loaded = loaded;
    Ok(RcScaleResult {
        name: "rc_scale",
        mode: "real RC process (security on); simulated nodes in this process, each with its own identity, signed join and sealed control link, over one ractor_cluster connection",
        nodes: n,
        nodes_joined: joined,
        join_ms,
        joins_per_s: joined.saturating_sub(1) as f64 / (join_ms.max(1) as f64 / 1000.0),
        join_curve: curve,
        member_lists: shared.member_lists.load(Ordering::Relaxed),
        member_list_bytes: shared.member_list_bytes.load(Ordering::Relaxed),
        sessions,
        sessions_loaded,
        load_failed,
        load_ms,
        load_per_s: sessions_loaded as f64 / (load_ms.max(1) as f64 / 1000.0),
        load_mode: sc.load,
        heartbeat_ms: period.as_millis() as u64,
        target_hb_per_s: window.target_per_s(),
        measure_s: secs,
        sent_hb_per_s: window.sent_per_s(),
        rc_hb_per_s: window.rc_per_s(),
        leased_hb_per_s: window.leased_per_s(),
        harness_skipped: skipped.load(Ordering::Relaxed) - skip0,
        lease_rtt_p50_us: rtt.percentile(50.0),
        lease_rtt_p99_us: rtt.percentile(99.0),
        lease_rtt_max_us: rtt.max(),
        unanswered_hb: unanswered,
        declared_dead,
        evictions,
        control_refused,
        false_downings,
        kept_up,
        base_place_count: base.count(),
        base_place_p50_us: base.percentile(50.0),
        base_place_p99_us: base.percentile(99.0),
        place_count: place.count(),
        place_failed,
        place_p50_us: place.percentile(50.0),
        place_p99_us: place_p99,
        place_max_us: place.max(),
        rss_idle_kib: rss_idle,
        rss_base_kib: rss_base,
        rss_joined_kib: rss_joined,
        rss_loaded_kib: rss_loaded,
        rss_end_kib: rss_end,
        rss_peak_kib: rss_kib(pid, "VmHWM:"),
        bytes_per_session: (rss_loaded.saturating_sub(rss_joined) * 1024)
            / sessions_loaded.max(1) as u64,
        bytes_per_node: (rss_joined.saturating_sub(rss_base) * 1024)
            / joined.saturating_sub(1).max(1) as u64,
        rc_disk_bytes: dir_bytes(rc_dir),
        target_place_p99_us: RC_SCALE_PLACE_TARGET_P99_US,
        met: joined == n
            && sessions_loaded == sessions
            && kept_up
            && false_downings == 0
            && place_failed == 0
            && place.count() > 0
            && place_p99 <= RC_SCALE_PLACE_TARGET_P99_US,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_to_the_sessions() {
        for (sessions, n) in [(1_000_000, 10_000), (20_000, 1_000), (7, 3), (2, 5), (0, 4)] {
            let total: usize = (0..n).map(|i| share(sessions, n, i)).sum();
            assert_eq!(total, sessions, "{sessions} over {n}");
            assert!((0..n).all(|i| share(sessions, n, i) <= sessions / n + 1));
        }
    }

    #[test]
    fn slots_follow_the_rate() {
        assert_eq!(slots_due(Duration::ZERO, 100_000.0), 0);
        assert_eq!(slots_due(Duration::from_millis(10), 100_000.0), 1000);
        assert_eq!(slots_due(Duration::from_secs(2), 10.0), 20);
        assert_eq!(slots_due(Duration::from_micros(99), 10_000.0), 0);
    }

    #[test]
    fn a_window_that_kept_up() {
        let w = HeartbeatWindow {
            nodes: 10_000,
            period_ms: 100,
            secs: 10.0,
            sent: 1_000_000,
            rc_counted: 995_000,
            leased: 994_000,
        };
        assert_eq!(w.target_per_s(), 100_000.0);
        assert_eq!(w.rc_per_s(), 99_500.0);
        assert!(w.kept_up());
    }

    #[test]
    fn a_window_that_fell_behind_or_left_heartbeats_unanswered() {
        let behind = HeartbeatWindow {
            nodes: 10_000,
            period_ms: 100,
            secs: 10.0,
            sent: 1_000_000,
            rc_counted: 700_000,
            leased: 700_000,
        };
        assert!(!behind.kept_up());
        let unanswered = HeartbeatWindow {
            leased: 900_000,
            rc_counted: 1_000_000,
            ..behind
        };
        assert!(!unanswered.kept_up());
        assert!(!HeartbeatWindow::default().kept_up());
    }

    #[test]
    fn metric_sums_match_names_and_labels() {
        let text = "# TYPE x counter\nopengrid_cluster_heartbeats_total{role=\"rc\"} 12\nopengrid_cluster_heartbeats_total{role=\"node\"} 5\nopengrid_cluster_heartbeats_totalx 9\nopengrid_cluster_nodes_declared_dead_total 2\n";
        assert_eq!(
            metric_sum(
                text,
                "opengrid_cluster_heartbeats_total",
                Some("role=\"rc\"")
            ),
            12
        );
        assert_eq!(
            metric_sum(text, "opengrid_cluster_heartbeats_total", None),
            17
        );
        assert_eq!(
            metric_sum(text, "opengrid_cluster_nodes_declared_dead_total", None),
            2
        );
    }

    #[test]
    fn simulated_nodes_have_distinct_addresses() {
        let a = SimNode::new(1);
        let b = SimNode::new(257);
        let c = SimNode::new(65_537);
        assert_ne!(a.spec.migration, b.spec.migration);
        assert_ne!(a.spec.migration, c.spec.migration);
        assert_ne!(a.id, b.id);
    }
}

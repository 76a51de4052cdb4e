//! The canopy node of one RC: a libp2p swarm (TCP + noise + yamux, gossipsub, identify) on its own
//! tokio task, and a handle that talks to it over channels.
//!
//! Reads that the RC needs on its admission path ([`Canopy::peering_table`], [`Canopy::metrics`])
//! never wait for the swarm: the task publishes the table into shared memory, so a cross-colony
//! routing decision reads a snapshot and nothing in the hot path waits for gossip.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use futures::StreamExt;
use libp2p::gossipsub::{
    self, IdentTopic, MessageAcceptance, MessageAuthenticity, MessageId, PeerScoreParams,
    PeerScoreThresholds, TopicHash, TopicScoreParams, ValidationMode,
};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, Multiaddr, PeerId, Swarm};
use opengrid_session::Did;
use opentelemetry::metrics::{Histogram, Meter, MeterProvider as _};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::identity::keypair_from_signing_key;
use crate::metrics::{self, CanopyMetrics, Counters};
use crate::summary::{ColonySummary, SignedSummary, MAX_SUMMARY_BYTES};
use crate::table::{Admission, PeerEntry, PeeringTable, Rejection};
use crate::{transport, CanopyError};

/// Default gossipsub topic.
pub const DEFAULT_TOPIC: &str = "opengrid/canopy/colony-summaries/v1";
/// Identify protocol version string.
pub const PROTOCOL_VERSION: &str = "/opengrid/canopy/1.0.0";

/// Builds the summary to publish; called on the canopy task once per interval, so it must be cheap
/// and must not block (read a snapshot of the RC's table). `rc_did`, `seq` and `issued_at_ms` are
/// overwritten by the canopy. `None`: nothing this interval (an RC that does not speak for its
/// colony now, e.g. a follower of its RC group).
pub type SummaryProvider = Arc<dyn Fn() -> Option<ColonySummary> + Send + Sync>;

/// Configuration of one RC's canopy node.
#[derive(Clone)]
pub struct CanopyConfig {
    /// The RC's ed25519 key: its did, its libp2p identity and its summary signing key.
    pub signing_key: SigningKey,
    /// Where to listen (`/ip4/127.0.0.1/tcp/0` by default).
    pub listen_addr: Multiaddr,
    /// Canopy peers to dial at start and again whenever this node has no connection left.
    pub bootstrap: Vec<Multiaddr>,
    /// Gossipsub topic of the federation.
    pub topic: String,
    /// How often the summary provider is published (30 s by default).
    pub publish_interval: Duration,
    /// A peering entry expires after this many intervals without a newer summary (3 by default).
    pub expiry_intervals: u32,
    /// The federation's RC keys; summaries signed by any other key are rejected as unknown.
    pub trusted_rcs: BTreeSet<Did>,
    /// Largest summary message accepted or published, bytes (64 KiB by default).
    pub max_message_bytes: usize,
    /// How far ahead of the local clock a summary's `issued_at_ms` may be (30 s by default).
    pub max_clock_skew: Duration,
    /// Gossipsub heartbeat (mesh maintenance, lazy gossip): 1 s by default.
    pub gossip_heartbeat: Duration,
    /// The meter the canopy's instruments are created on (see the crate's Metrics section); its
    /// provider's exporter publishes them. `None` (the default): nothing is exported.
    pub meter: Option<Meter>,
}

impl fmt::Debug for CanopyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CanopyConfig")
            .field(
                "rc_did",
                &Did::from_public_key(&self.signing_key.verifying_key()),
            )
            .field("listen_addr", &self.listen_addr)
            .field("bootstrap", &self.bootstrap)
            .field("topic", &self.topic)
            .field("publish_interval", &self.publish_interval)
            .field("expiry_intervals", &self.expiry_intervals)
            .field("trusted_rcs", &self.trusted_rcs.len())
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_clock_skew", &self.max_clock_skew)
            .field("gossip_heartbeat", &self.gossip_heartbeat)
            .field("meter", &self.meter.is_some())
            .finish_non_exhaustive()
    }
}

impl CanopyConfig {
    /// Defaults that run on one laptop: listen on a free loopback port, 30 s interval, expiry
    /// after 3 intervals, 64 KiB messages, no bootstrap peers, and only this RC trusted.
    pub fn new(signing_key: SigningKey) -> Self {
        let me = Did::from_public_key(&signing_key.verifying_key());
        Self {
            signing_key,
            listen_addr: Multiaddr::empty()
                .with(Protocol::Ip4(Ipv4Addr::LOCALHOST))
                .with(Protocol::Tcp(0)),
            bootstrap: Vec::new(),
            topic: DEFAULT_TOPIC.to_string(),
            publish_interval: Duration::from_secs(30),
            expiry_intervals: 3,
            trusted_rcs: BTreeSet::from([me]),
            max_message_bytes: 64 * 1024,
            max_clock_skew: Duration::from_secs(30),
            gossip_heartbeat: Duration::from_secs(1),
            meter: None,
        }
    }

    /// This RC's did.
    pub fn did(&self) -> Did {
        Did::from_public_key(&self.signing_key.verifying_key())
    }

    /// How long a peering entry lives without a newer summary.
    pub fn expiry(&self) -> Duration {
        self.publish_interval * self.expiry_intervals
    }

    /// Checks every field; the error names the field.
    pub fn validate(&self) -> Result<(), CanopyError> {
        let bad = |field: &'static str, reason: String| Err(CanopyError::Config { field, reason });
        if self.topic.is_empty() || self.topic.len() > 128 {
            return bad("topic", "1 to 128 characters".into());
        }
        if self.publish_interval < Duration::from_millis(10) {
            return bad(
                "publish_interval",
                format!("{:?} is below 10ms", self.publish_interval),
            );
        }
        if self.expiry_intervals == 0 {
            return bad("expiry_intervals", "must be at least 1".into());
        }
        if !(1024..=MAX_SUMMARY_BYTES).contains(&self.max_message_bytes) {
            return bad(
                "max_message_bytes",
                format!("must be between 1024 and {MAX_SUMMARY_BYTES}"),
            );
        }
        if self.gossip_heartbeat < Duration::from_millis(10) {
            return bad("gossip_heartbeat", "must be at least 10ms".into());
        }
        Ok(())
    }
}

/// A change in the peering table, for components that react to it (and for the benchmark).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerEvent {
    /// A summary was accepted.
    Accepted {
        /// The RC.
        rc_did: Did,
        /// Its colony.
        colony_id: String,
        /// The accepted sequence number.
        seq: u64,
    },
    /// An entry expired.
    Expired {
        /// The RC that went silent.
        rc_did: Did,
    },
}

#[derive(NetworkBehaviour)]
#[behaviour(prelude = "libp2p::swarm::derive_prelude")]
struct Behaviour {
    gossipsub: gossipsub::Behaviour,
    identify: identify::Behaviour,
    /// Bounds on connections, so a flood of dials cannot exhaust the RC (see [`LIMITS`]).
    limits: libp2p::connection_limits::Behaviour,
}

/// Connection bounds of a canopy endpoint: (pending incoming, established incoming, per peer).
/// A canopy peers with tens of RCs; these leave room for that and refuse floods.
pub const LIMITS: (u32, u32, u32) = (64, 512, 4);

/// The least time a connected peer gets to announce the topic before it is dropped (three publish
/// intervals when those are longer).
const SUBSCRIBE_GRACE_MIN: Duration = Duration::from_secs(2);

fn connection_limits() -> libp2p::connection_limits::Behaviour {
    let (pending, incoming, per_peer) = LIMITS;
    libp2p::connection_limits::Behaviour::new(
        libp2p::connection_limits::ConnectionLimits::default()
            .with_max_pending_incoming(Some(pending))
            .with_max_established_incoming(Some(incoming))
            .with_max_established_per_peer(Some(per_peer)),
    )
}

enum Command {
    Publish(
        Box<ColonySummary>,
        oneshot::Sender<Result<SignedSummary, CanopyError>>,
    ),
    PublishRaw(Vec<u8>, oneshot::Sender<Result<(), CanopyError>>),
    SetProvider(SummaryProvider),
    Dial(Multiaddr, oneshot::Sender<Result<(), CanopyError>>),
    PeerScore(PeerId, oneshot::Sender<Option<f64>>),
    ConnectedPeers(oneshot::Sender<Vec<PeerId>>),
    Shutdown,
}

struct Shared {
    table: Mutex<PeeringTable>,
    counters: Arc<Counters>,
}

impl Shared {
    fn snapshot(&self) -> CanopyMetrics {
        let entries = self
            .table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .live(Instant::now()) as u64;
        self.counters.snapshot(entries)
    }
}

/// Handle to a running canopy node. Dropping it stops the node; [`Canopy::shutdown`] also waits
/// for the swarm to close.
pub struct Canopy {
    did: Did,
    peer_id: PeerId,
    listen_addr: Multiaddr,
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    events: broadcast::Sender<PeerEvent>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for Canopy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Canopy")
            .field("did", &self.did)
            .field("listen_addr", &self.listen_addr)
            .finish_non_exhaustive()
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64)
        .unwrap_or(0)
}

fn message_id(m: &gossipsub::Message) -> MessageId {
    // Content-addressed: the same summary bytes are the same message whoever relays them.
    MessageId::from(blake3::hash(&m.data).as_bytes()[..20].to_vec())
}

fn score_params(topic: TopicHash) -> (PeerScoreParams, PeerScoreThresholds) {
    let mut params = PeerScoreParams {
        // Several RCs of one operator may share a host; loopback peers are local processes.
        ip_colocation_factor_whitelist: HashSet::from([
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]),
        ..PeerScoreParams::default()
    };
    params.topics.insert(
        topic,
        TopicScoreParams {
            topic_weight: 1.0,
            // P1: a little credit for staying in the mesh (at most +3).
            time_in_mesh_weight: 0.01,
            time_in_mesh_quantum: Duration::from_secs(1),
            time_in_mesh_cap: 300.0,
            // P2: credit for delivering summaries first (at most +10).
            first_message_deliveries_weight: 1.0,
            first_message_deliveries_decay: 0.9,
            first_message_deliveries_cap: 10.0,
            // P3/P3b off: one summary per RC per interval is a quiet topic, so a mesh peer that
            // delivers little is normal, not a fault.
            mesh_message_deliveries_weight: 0.0,
            mesh_message_deliveries_decay: 0.5,
            mesh_message_deliveries_cap: 100.0,
            mesh_message_deliveries_threshold: 1.0,
            mesh_message_deliveries_window: Duration::from_millis(10),
            mesh_message_deliveries_activation: Duration::from_secs(30),
            mesh_failure_penalty_weight: 0.0,
            mesh_failure_penalty_decay: 0.5,
            // P4: each invalid summary (forged, unknown key, malformed) costs the square of the
            // count times 10: three put a peer under the graylist threshold (-80). Decays by 1 %
            // per second (half-life about 70 s).
            invalid_message_deliveries_weight: -10.0,
            invalid_message_deliveries_decay: 0.99,
        },
    );
    let thresholds = PeerScoreThresholds {
        gossip_threshold: -10.0,
        publish_threshold: -50.0,
        graylist_threshold: -80.0,
        accept_px_threshold: 10.0,
        opportunistic_graft_threshold: 2.0,
    };
    (params, thresholds)
}

impl Canopy {
    /// Starts the swarm: listens, subscribes to the topic, dials the bootstrap peers, and returns
    /// once the listen address is known. Must be called inside a tokio runtime (the RC's control
    /// runtime); the swarm runs on a task of that runtime.
    #[tracing::instrument(skip_all, err, fields(topic = %config.topic))]
    pub async fn start(config: CanopyConfig) -> Result<Canopy, CanopyError> {
        config.validate()?;
        let did = config.did();
        let keypair = keypair_from_signing_key(&config.signing_key)?;
        let peer_id = keypair.public().to_peer_id();
        let counters = Arc::new(Counters::default());
        let topic = IdentTopic::new(config.topic.clone());

        let gossip_config = gossipsub::ConfigBuilder::default()
            .validation_mode(ValidationMode::Strict)
            .validate_messages()
            .message_id_fn(message_id)
            .heartbeat_interval(config.gossip_heartbeat)
            // Room for gossipsub's own envelope (author, seqno, signature, topic).
            .max_transmit_size(config.max_message_bytes + 1024)
            .build()
            .map_err(|e| CanopyError::Transport(format!("gossipsub config: {e}")))?;
        let mut gossipsub =
            gossipsub::Behaviour::new(MessageAuthenticity::Signed(keypair.clone()), gossip_config)
                .map_err(|e| CanopyError::Transport(format!("gossipsub: {e}")))?;
        let (params, thresholds) = score_params(topic.hash());
        gossipsub
            .with_peer_score(params, thresholds)
            .map_err(|e| CanopyError::Transport(format!("peer scoring: {e}")))?;
        gossipsub
            .subscribe(&topic)
            .map_err(|e| CanopyError::Transport(format!("subscribe: {e}")))?;
        let identify = identify::Behaviour::new(
            identify::Config::new(PROTOCOL_VERSION.to_string(), keypair.public())
                .with_agent_version(format!("opengrid-canopy/{}", env!("CARGO_PKG_VERSION"))),
        );

        let transport = transport::build(&keypair, counters.clone())?;
        let mut swarm = Swarm::new(
            transport,
            Behaviour {
                gossipsub,
                identify,
                limits: connection_limits(),
            },
            peer_id,
            libp2p::swarm::Config::with_tokio_executor()
                .with_idle_connection_timeout(Duration::from_secs(60)),
        );
        swarm
            .listen_on(config.listen_addr.clone())
            .map_err(|e| CanopyError::Listen(format!("{}: {e}", config.listen_addr)))?;
        let listen_addr = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::NewListenAddr { address, .. } => return Ok(address),
                    SwarmEvent::ListenerError { error, .. } => {
                        return Err(CanopyError::Listen(error.to_string()))
                    }
                    SwarmEvent::ListenerClosed { reason, .. } => {
                        return Err(CanopyError::Listen(format!("listener closed: {reason:?}")))
                    }
                    _ => {}
                }
            }
        })
        .await
        .map_err(|_| CanopyError::Listen("no listen address within 10s".into()))??
        .with(Protocol::P2p(peer_id));

        for addr in &config.bootstrap {
            if let Err(e) = swarm.dial(addr.clone()) {
                tracing::warn!(%addr, error = %e, "canopy bootstrap dial failed");
            }
        }

        let shared = Arc::new(Shared {
            table: Mutex::new(PeeringTable::new(Some(did.clone()), config.expiry())),
            counters,
        });
        let meter = config.meter.clone().unwrap_or_else(|| {
            opentelemetry::metrics::NoopMeterProvider::new().meter("opengrid_canopy")
        });
        let observed = Arc::downgrade(&shared);
        let propagation = metrics::export(&meter, move || observed.upgrade().map(|s| s.snapshot()));
        let (events, _) = broadcast::channel(4096);
        let (tx, rx) = mpsc::channel(256);
        let runner = Runner {
            propagation,
            swarm,
            topic,
            shared: shared.clone(),
            admission: Admission {
                trusted: config.trusted_rcs.clone(),
                max_message_bytes: config.max_message_bytes,
            },
            did: did.clone(),
            last_seq: 0,
            provider: None,
            events: events.clone(),
            unsubscribed_since: HashMap::new(),
            config,
        };
        tracing::info!(%did, %listen_addr, "canopy started");
        let task = tokio::spawn(runner.run(rx));
        Ok(Canopy {
            did,
            peer_id,
            listen_addr,
            commands: tx,
            shared,
            events,
            task: Some(task),
        })
    }

    /// This RC's did.
    pub fn did(&self) -> &Did {
        &self.did
    }

    /// This RC's libp2p peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The address other RCs dial, with `/p2p/<peer id>`.
    pub fn listen_addr(&self) -> Multiaddr {
        self.listen_addr.clone()
    }

    /// Live remote colonies, sorted by colony id. Never waits for the network.
    pub fn peering_table(&self) -> Vec<PeerEntry> {
        self.shared
            .table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot(Instant::now())
    }

    /// Counter snapshot.
    pub fn metrics(&self) -> CanopyMetrics {
        self.shared.snapshot()
    }

    /// Accepted and expired summaries as they happen. A receiver that lags more than 4096 events
    /// behind loses the oldest ones.
    pub fn subscribe(&self) -> broadcast::Receiver<PeerEvent> {
        self.events.subscribe()
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, CanopyError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| CanopyError::Stopped)?;
        rx.await.map_err(|_| CanopyError::Stopped)
    }

    /// Signs and publishes `summary` now, with this RC's did, the next sequence number and the
    /// current time filled in. Fails with [`CanopyError::NoPeers`] while no canopy peer is
    /// subscribed yet.
    pub async fn publish(&self, summary: ColonySummary) -> Result<SignedSummary, CanopyError> {
        self.ask(|tx| Command::Publish(Box::new(summary), tx))
            .await?
    }

    /// Lower-level: publishes `bytes` on the topic as they are. Receivers validate them like any
    /// summary; tools and tests use this to inject crafted messages.
    pub async fn publish_raw(&self, bytes: Vec<u8>) -> Result<(), CanopyError> {
        self.ask(|tx| Command::PublishRaw(bytes, tx)).await?
    }

    /// Publishes `provider()` every interval from now on (the first one at once), replacing any
    /// previous provider.
    pub async fn set_summary_provider(&self, provider: SummaryProvider) -> Result<(), CanopyError> {
        self.commands
            .send(Command::SetProvider(provider))
            .await
            .map_err(|_| CanopyError::Stopped)
    }

    /// Dials another canopy peer.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), CanopyError> {
        self.ask(|tx| Command::Dial(addr, tx)).await?
    }

    /// Gossipsub score of a connected peer, as this node sees it.
    pub async fn peer_score(&self, peer: PeerId) -> Result<Option<f64>, CanopyError> {
        self.ask(|tx| Command::PeerScore(peer, tx)).await
    }

    /// Peers connected now.
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, CanopyError> {
        self.ask(Command::ConnectedPeers).await
    }

    /// Stops the swarm and waits for its task to end (connections are closed).
    pub async fn shutdown(mut self) {
        let _ = self.commands.send(Command::Shutdown).await;
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "canopy task ended abnormally");
            }
        }
    }
}

struct Runner {
    propagation: Histogram<f64>,
    swarm: Swarm<Behaviour>,
    topic: IdentTopic,
    shared: Arc<Shared>,
    admission: Admission,
    did: Did,
    last_seq: u64,
    provider: Option<SummaryProvider>,
    events: broadcast::Sender<PeerEvent>,
    /// When each connected peer's first connection was established, until it has told us it is
    /// subscribed to the topic (see [`Runner::drop_silent_peers`]).
    unsubscribed_since: HashMap<PeerId, Instant>,
    config: CanopyConfig,
}

impl Runner {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        // The first tick is one interval out: start() already dialled the bootstrap peers, and a
        // provider publishes at once when it is set.
        let every = self.config.publish_interval;
        let mut publish_tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        publish_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let sweep_every = (self.config.publish_interval / 4).max(Duration::from_millis(10));
        let mut sweep_tick = tokio::time::interval(sweep_every);
        sweep_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                cmd = commands.recv() => match cmd {
                    None | Some(Command::Shutdown) => break,
                    Some(cmd) => self.on_command(cmd),
                },
                _ = publish_tick.tick() => self.on_publish_tick(),
                _ = sweep_tick.tick() => self.on_sweep(),
            }
        }
        tracing::info!(did = %self.did, "canopy stopped");
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Publish(summary, reply) => {
                let _ = reply.send(self.publish_summary(*summary));
            }
            Command::PublishRaw(bytes, reply) => {
                let _ = reply.send(self.publish_bytes(bytes));
            }
            Command::SetProvider(p) => {
                let summary = p();
                self.provider = Some(p);
                if let Some(summary) = summary {
                    if let Err(e) = self.publish_summary(summary) {
                        tracing::debug!(error = %e, "first periodic summary not published");
                    }
                }
            }
            Command::Dial(addr, reply) => {
                let _ = reply.send(
                    self.swarm
                        .dial(addr.clone())
                        .map_err(|e| CanopyError::Dial(format!("{addr}: {e}"))),
                );
            }
            Command::PeerScore(peer, reply) => {
                let _ = reply.send(self.swarm.behaviour().gossipsub.peer_score(&peer));
            }
            Command::ConnectedPeers(reply) => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::Shutdown => {}
        }
    }

    fn publish_summary(
        &mut self,
        mut summary: ColonySummary,
    ) -> Result<SignedSummary, CanopyError> {
        let now_ms = now_unix_ms();
        // Seq starts from the wall clock, so a restarted RC (which persists nothing) still
        // publishes above everything it published before.
        let seq = now_ms.max(self.last_seq + 1);
        summary.rc_did = self.did.clone();
        summary.seq = seq;
        summary.issued_at_ms = now_ms;
        summary.validate().map_err(CanopyError::Invalid)?;
        let signed = summary.sign(&self.config.signing_key);
        let bytes = signed.encode();
        if bytes.len() > self.config.max_message_bytes {
            return Err(CanopyError::TooLarge {
                len: bytes.len(),
                limit: self.config.max_message_bytes,
            });
        }
        self.last_seq = seq;
        self.publish_bytes(bytes)?;
        tracing::debug!(seq, "canopy summary published");
        Ok(signed)
    }

    fn publish_bytes(&mut self, bytes: Vec<u8>) -> Result<(), CanopyError> {
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.topic.clone(), bytes)
        {
            Ok(_) => {
                Counters::inc(&self.shared.counters.published);
                Ok(())
            }
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => Err(CanopyError::NoPeers),
            Err(e) => Err(CanopyError::Publish(e.to_string())),
        }
    }

    fn on_publish_tick(&mut self) {
        if let Some(summary) = self.provider.clone().and_then(|p| p()) {
            match self.publish_summary(summary) {
                Ok(_) => {}
                Err(CanopyError::NoPeers) => tracing::debug!("no canopy peer to publish to yet"),
                Err(e) => tracing::warn!(error = %e, "periodic canopy summary not published"),
            }
        }
        if self.swarm.connected_peers().next().is_none() {
            for addr in self.config.bootstrap.clone() {
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    tracing::debug!(%addr, error = %e, "canopy redial failed");
                }
            }
        }
    }

    /// gossipsub tells a peer our subscriptions only on the *first* connection to it. A peer that
    /// restarts with the same key (an RC restart) dials us again before we have noticed its old
    /// connection close: for us that is a second connection to a known peer, so we never
    /// re-announce, and the restarted peer believes nobody is subscribed (`NoPeers`) for good.
    /// A peer that has been connected for a grace period without ever announcing the topic is
    /// therefore disconnected; both sides forget it, and the redial is a first connection again.
    fn drop_silent_peers(&mut self, now: Instant) {
        let grace = (self.config.publish_interval * 3).max(SUBSCRIBE_GRACE_MIN);
        let subscribed: HashSet<PeerId> = self
            .swarm
            .behaviour()
            .gossipsub
            .all_peers()
            .filter(|(_, topics)| topics.contains(&&self.topic.hash()))
            .map(|(p, _)| *p)
            .collect();
        self.unsubscribed_since
            .retain(|p, _| !subscribed.contains(p));
        let silent: Vec<PeerId> = self
            .unsubscribed_since
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= grace)
            .map(|(p, _)| *p)
            .collect();
        for peer in silent {
            self.unsubscribed_since.remove(&peer);
            tracing::info!(%peer, ?grace, "canopy peer never announced the topic; reconnecting");
            Counters::inc(&self.shared.counters.silent_disconnects);
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    fn on_sweep(&mut self) {
        self.drop_silent_peers(Instant::now());
        let gone = self
            .shared
            .table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sweep(Instant::now());
        for did in gone {
            tracing::info!(rc = %did, "canopy peer expired");
            Counters::inc(&self.shared.counters.expired);
            let _ = self.events.send(PeerEvent::Expired { rc_did: did });
        }
    }

    fn on_message(&mut self, data: &[u8]) -> Result<(), Rejection> {
        let signed = self.admission.authenticate(data)?;
        let issued_at_ms = signed.summary.issued_at_ms;
        let event = PeerEvent::Accepted {
            rc_did: signed.summary.rc_did.clone(),
            colony_id: signed.summary.colony_id.clone(),
            seq: signed.summary.seq,
        };
        self.shared
            .table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(
                signed,
                Instant::now(),
                now_unix_ms(),
                self.config.max_clock_skew,
            )?;
        // Clocks of different RCs: a summary from a clock ahead of ours counts as 0 s.
        let age_ms = now_unix_ms().saturating_sub(issued_at_ms);
        self.propagation.record(age_ms as f64 / 1000.0, &[]);
        let _ = self.events.send(event);
        Ok(())
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                let c = self.shared.counters.clone();
                Counters::inc(&c.received);
                let verdict = self.on_message(&message.data);
                let acceptance = match &verdict {
                    Ok(()) => {
                        Counters::inc(&c.accepted);
                        MessageAcceptance::Accept
                    }
                    Err(r) => {
                        Counters::inc(match r {
                            Rejection::Malformed(_) => &c.rejected_malformed,
                            Rejection::UnknownKey(_) => &c.rejected_unknown_key,
                            Rejection::BadSignature(_) => &c.rejected_bad_signature,
                            Rejection::Replay { .. } | Rejection::OutOfWindow { .. } => {
                                &c.rejected_replay_or_stale
                            }
                        });
                        if r.is_penalised() {
                            tracing::warn!(source = %propagation_source, reason = %r, "canopy summary rejected");
                            MessageAcceptance::Reject
                        } else {
                            tracing::debug!(source = %propagation_source, reason = %r, "canopy summary ignored");
                            MessageAcceptance::Ignore
                        }
                    }
                };
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::SlowPeer {
                peer_id,
                failed_messages,
            })) => {
                tracing::warn!(peer = %peer_id, failed = ?failed_messages, "slow canopy peer: gossip messages dropped");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(other)) => {
                tracing::trace!(event = ?other, "gossipsub");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                tracing::debug!(peer = %peer_id, agent = %info.agent_version, "identified canopy peer");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(_)) => {}
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                ..
            } => {
                self.update_connected();
                if num_established.get() == 1 {
                    self.unsubscribed_since.insert(peer_id, Instant::now());
                }
                tracing::debug!(peer = %peer_id, "canopy connection established");
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                cause,
                num_established,
                ..
            } => {
                self.update_connected();
                if num_established == 0 {
                    self.unsubscribed_since.remove(&peer_id);
                }
                tracing::debug!(peer = %peer_id, cause = ?cause, "canopy connection closed");
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, error = %error, "canopy dial failed");
            }
            _ => {}
        }
    }

    fn update_connected(&self) {
        let n = self.swarm.connected_peers().count() as u64;
        self.shared
            .counters
            .connected_peers
            .store(n, Ordering::Relaxed);
    }
}

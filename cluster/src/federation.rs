//! Federation: the RC's side of the canopy, and cross-colony routing.
//!
//! **Plane: control.** Runs on the RC's control runtime; never touches session traffic.
//!
//! - [`CanopySection`]: the `[canopy]` section of the RC config (listen address, bootstrap peers,
//!   publish interval, expiry, region, zone, trusted RCs, treaties).
//! - [`start`]: runs the canopy swarm ([`opengrid_canopy::Canopy`]) with the RC's own ed25519
//!   identity as its libp2p key (peer id ↔ `did:mycel`), publishing a [`ColonySummary`] built from
//!   the RC's live admission table ([`colony_summary`]) every interval.
//! - [`Federation::route`]: when local admission refuses a manifest, picks candidate colonies from
//!   a snapshot of the peering table ([`opengrid_canopy::candidates`], filtered by treaties for the
//!   session's data class) and asks each remote RC in turn with a **signed RC-to-RC admission
//!   request** (`POST /federation/admission`). Nothing here waits for gossip.
//! - [`admission_handler`]: the receiving side. The request must be signed by an RC whose verified
//!   summary is in this RC's peering table, addressed to this RC, fresh, and never seen before; the
//!   session is then placed **locally only** (never forwarded again), inside the zones the asking
//!   RC narrowed it to and that this RC's own treaties also allow. The answer is signed by this
//!   RC, and the asking RC verifies it against the key of the summary it chose.
//! - [`may_hold_replica`]: the pure rule checkpoint replica placement consults.
//!
//! # Wire
//! Request and answer are JSON `{payload, signature}`: `payload` is the JSON text of an
//! [`AdmissionRequest`] / [`AdmissionAnswer`], `signature` the base58 ed25519 signature over
//! [`REQUEST_DOMAIN`] / [`ANSWER_DOMAIN`] ‖ the payload bytes. Domain separation keeps these
//! signatures apart from joins, summaries and receipts made with the same key. Refusals of an
//! unauthenticated request are plain JSON errors with status 401 (`unknown_rc`, `bad_signature`,
//! `wrong_recipient`, `stale_request`, `replayed_request`) or 400 (`bad_request`).
//!
//! # Counters
//! Shown in the RC's `/status` under `canopy.federation` (see [`FederationCounters`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ed25519_dalek::{Signer, SigningKey};
use libp2p::Multiaddr;
use opengrid_canopy::{
    candidates, Canopy, CanopyConfig, CanopyError, ColonySummary, FederationTreaty,
    HardwareCapacity, NoCandidate, PeerEntry, PriceRange, Refusal, Treaties, TreatyError,
};
use opengrid_session::{jurisdiction, Did, HumanDuration, Manifest, SessionId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::admission::{Colony, Rejection};
use crate::api::ApiError;
use crate::config::ConfigError;
use crate::identity::NodeId;
use crate::rc::{PlaceError, RcCore};

/// Path of the RC-to-RC admission endpoint on the RC's API.
pub const ADMISSION_PATH: &str = "/federation/admission";
/// Signature domain of an admission request.
pub const REQUEST_DOMAIN: &[u8] = b"opengrid/federation/admission-request/v1\0";
/// Signature domain of an admission answer.
pub const ANSWER_DOMAIN: &[u8] = b"opengrid/federation/admission-answer/v1\0";
/// Largest request or answer accepted, bytes.
pub const MAX_FEDERATION_BYTES: usize = 256 * 1024;
/// Most request ids remembered for replay protection.
pub const MAX_REPLAY_ENTRIES: usize = 65_536;
/// Recently routed-out sessions kept for `/status`.
const ROUTED_KEPT: usize = 64;

// ---------------------------------------------------------------------------------------------
// Config

/// `[canopy]` of the RC config. Defaults keep a single-colony RC working: canopy off, no treaties
/// (only same-jurisdiction moves allowed), loopback listen address.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CanopySection {
    /// Run the canopy swarm and route across colonies.
    pub enabled: bool,
    /// libp2p listen multiaddr (`/ip4/127.0.0.1/tcp/0` picks a free loopback port).
    pub listen: String,
    /// Canopy peers (multiaddrs, `/p2p/<peer id>` optional) dialled at start and whenever no
    /// connection is left.
    pub bootstrap: Vec<String>,
    /// How often this RC publishes its summary.
    pub publish_interval: HumanDuration,
    /// A peer's entry expires after this many intervals without a newer summary.
    pub expiry_intervals: u32,
    /// Gossipsub heartbeat.
    pub gossip_heartbeat: HumanDuration,
    /// Region label shown to other colonies.
    pub region: String,
    /// The jurisdiction sessions admitted here originate in: the `from` side of every treaty check,
    /// and what the summary declares while no node has joined.
    pub zone: String,
    /// `did:mycel` ids of the federation's other RCs; summaries from any other key are rejected.
    pub trusted_rcs: Vec<String>,
    /// A treaty file (see [`opengrid_canopy::treaty`]), merged with `treaty`.
    pub treaties_file: Option<PathBuf>,
    /// Inline treaties (`[[canopy.treaty]]`).
    pub treaty: Vec<FederationTreaty>,
    /// Data class of a session whose request names none (`POST /sessions?data_class=`).
    pub default_data_class: String,
    /// Remote colonies asked, at most, per session.
    pub max_candidates: usize,
    /// How long one RC-to-RC admission request may take (remote placement included).
    pub remote_timeout: HumanDuration,
    /// Accepted clock skew (and replay window) of signed admission requests.
    pub request_max_skew: HumanDuration,
}

impl Default for CanopySection {
    fn default() -> Self {
        CanopySection {
            enabled: false,
            listen: "/ip4/127.0.0.1/tcp/0".into(),
            bootstrap: Vec::new(),
            publish_interval: HumanDuration::from_secs(30),
            expiry_intervals: 3,
            gossip_heartbeat: HumanDuration::from_secs(1),
            region: "local".into(),
            zone: "DE".into(),
            trusted_rcs: Vec::new(),
            treaties_file: None,
            treaty: Vec::new(),
            default_data_class: "personal".into(),
            max_candidates: 3,
            remote_timeout: HumanDuration::from_secs(8),
            request_max_skew: HumanDuration::from_secs(30),
        }
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Whether `s` is a data class name (lowercase letters, digits, `-_.`, 1..=64 bytes).
pub fn is_data_class(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

fn treaty_field(prefix: &str, e: TreatyError) -> ConfigError {
    match e {
        TreatyError::Invalid { field, reason } => invalid(format!("{prefix}{field}"), reason),
        TreatyError::Parse { field, message } => invalid(
            format!("{prefix}{field}"),
            format!("parse error: {message}"),
        ),
        other => invalid(prefix.trim_end_matches('.'), other.to_string()),
    }
}

impl CanopySection {
    /// Checks every field (reading the treaty file); the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        self.bootstrap_addrs()?;
        if self.publish_interval.0 < Duration::from_millis(10) {
            return Err(invalid("canopy.publish_interval", "must be at least 10ms"));
        }
        if self.expiry_intervals == 0 || self.expiry_intervals > 1000 {
            return Err(invalid("canopy.expiry_intervals", "must be 1..=1000"));
        }
        if self.gossip_heartbeat.0 < Duration::from_millis(10) {
            return Err(invalid("canopy.gossip_heartbeat", "must be at least 10ms"));
        }
        if self.region.is_empty()
            || self.region.len() > 64
            || self.region.chars().any(char::is_control)
        {
            return Err(invalid("canopy.region", "1 to 64 printable characters"));
        }
        if !jurisdiction::is_known(&self.zone) {
            return Err(invalid(
                "canopy.zone",
                format!(
                    "{:?} is not a known ISO 3166-1 alpha-2 code or zone",
                    self.zone
                ),
            ));
        }
        self.trusted()?;
        self.treaties()?;
        if !is_data_class(&self.default_data_class) {
            return Err(invalid(
                "canopy.default_data_class",
                "lowercase letters, digits, - _ . (1 to 64 bytes)",
            ));
        }
        if self.max_candidates == 0 || self.max_candidates > 16 {
            return Err(invalid("canopy.max_candidates", "must be 1..=16"));
        }
        if self.remote_timeout.0 < Duration::from_millis(10)
            || self.remote_timeout.0 > Duration::from_secs(120)
        {
            return Err(invalid("canopy.remote_timeout", "must be in 10ms..=120s"));
        }
        if self.request_max_skew.0 < Duration::from_secs(1)
            || self.request_max_skew.0 > Duration::from_secs(600)
        {
            return Err(invalid("canopy.request_max_skew", "must be in 1s..=600s"));
        }
        Ok(())
    }

    /// The listen multiaddr.
    pub fn listen_addr(&self) -> Result<Multiaddr, ConfigError> {
        self.listen.parse().map_err(|e| {
            invalid(
                "canopy.listen",
                format!("{:?} is not a multiaddr: {e}", self.listen),
            )
        })
    }

    /// The bootstrap multiaddrs.
    pub fn bootstrap_addrs(&self) -> Result<Vec<Multiaddr>, ConfigError> {
        self.bootstrap
            .iter()
            .enumerate()
            .map(|(i, a)| {
                a.parse().map_err(|e| {
                    invalid(
                        format!("canopy.bootstrap[{i}]"),
                        format!("{a:?} is not a multiaddr: {e}"),
                    )
                })
            })
            .collect()
    }

    /// The trusted RC dids.
    pub fn trusted(&self) -> Result<BTreeSet<Did>, ConfigError> {
        self.trusted_rcs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                Did::parse(d)
                    .map_err(|e| invalid(format!("canopy.trusted_rcs[{i}]"), format!("{d:?}: {e}")))
            })
            .collect()
    }

    /// The treaties in force: the file's, then the inline ones (names unique across both).
    pub fn treaties(&self) -> Result<Treaties, ConfigError> {
        let mut all = match &self.treaties_file {
            Some(p) => Treaties::load(p)
                .map_err(|e| invalid("canopy.treaties_file", format!("{}: {e}", p.display())))?
                .list()
                .to_vec(),
            None => Vec::new(),
        };
        Treaties::new(self.treaty.clone()).map_err(|e| treaty_field("canopy.", e))?;
        all.extend(self.treaty.iter().cloned());
        Treaties::new(all).map_err(|e| match e {
            TreatyError::Invalid { reason, .. } => invalid(
                "canopy.treaty",
                format!("{reason} (across treaties_file and the inline treaties)"),
            ),
            other => invalid("canopy.treaty", other.to_string()),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Checkpoint replicas

/// Why a node may not hold a checkpoint replica of a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReplicaRefusal {
    /// The holder's jurisdiction is not one the manifest allows.
    #[error("jurisdiction {holder} is not in the manifest's allowed {allowed:?}")]
    Jurisdiction {
        /// The holder's jurisdiction.
        holder: String,
        /// The manifest's allowed jurisdictions.
        allowed: Vec<String>,
    },
    /// A treaty forbids (or none allows) replicating into the holder's jurisdiction.
    #[error("{0}")]
    Treaty(Refusal),
}

/// May a node in `holder_jurisdiction` hold a checkpoint replica of a session whose manifest
/// allows `allowed` (empty = anywhere), whose primary runs in `from_zone`, for data of
/// `data_class`? Both the manifest and the treaties must allow it (the manifest is never widened;
/// within one jurisdiction no treaty is needed). Pure: no I/O, no clock.
pub fn may_hold_replica(
    allowed: &[String],
    from_zone: &str,
    treaties: &Treaties,
    data_class: &str,
    holder_jurisdiction: &str,
) -> Result<(), ReplicaRefusal> {
    if !allowed.is_empty() && !jurisdiction::satisfies(holder_jurisdiction, allowed) {
        return Err(ReplicaRefusal::Jurisdiction {
            holder: holder_jurisdiction.to_string(),
            allowed: allowed.to_vec(),
        });
    }
    treaties
        .may_replicate(from_zone, holder_jurisdiction, data_class)
        .map_err(ReplicaRefusal::Treaty)
}

// ---------------------------------------------------------------------------------------------
// Summary from the admission table

/// What a colony summary says about the RC itself.
#[derive(Clone, Debug)]
pub struct SummaryHeader {
    /// Colony id.
    pub colony_id: String,
    /// Region label.
    pub region: String,
    /// Jurisdiction declared while no node is alive.
    pub zone: String,
    /// The RC's did.
    pub rc_did: Did,
    /// Client-API base URL.
    pub rc_client_api: String,
    /// Where other RCs send admission requests (`host:port` of the RC API).
    pub rc_control_addr: String,
}

/// The colony's summary from the RC's live admission table: free slots, free memory and largest
/// free memory on one node by accelerator class; free slots by handler and capability; load;
/// price range; jurisdictions of alive nodes. `seq` and `issued_at_ms` are left for the canopy.
pub fn colony_summary(h: &SummaryHeader, colony: &Colony) -> ColonySummary {
    use opengrid_canopy::summary::{MAX_JURISDICTIONS, MAX_MAP_ENTRIES};
    let mut hardware: BTreeMap<_, HardwareCapacity> = BTreeMap::new();
    let mut handlers: BTreeMap<String, u32> = BTreeMap::new();
    let mut capabilities: BTreeMap<String, u32> = BTreeMap::new();
    let mut jurisdictions = BTreeSet::new();
    let (mut sessions, mut capacity) = (0u64, 0u64);
    let mut price: Option<(u64, u64)> = None;
    for r in colony.nodes().into_iter().filter(|r| r.alive) {
        let s = &r.spec;
        if jurisdiction::is_known(&s.jurisdiction) {
            jurisdictions.insert(s.jurisdiction.clone());
        }
        sessions += u64::from(r.sessions.min(s.capacity));
        capacity += u64::from(s.capacity);
        price = Some(match price {
            None => (s.price_micros_per_input, s.price_micros_per_input),
            Some((lo, hi)) => (
                lo.min(s.price_micros_per_input),
                hi.max(s.price_micros_per_input),
            ),
        });
        let free = s.capacity.saturating_sub(r.sessions);
        let hw = hardware.entry(s.accelerator).or_default();
        if free == 0 {
            continue;
        }
        let free_mem = s.memory.saturating_sub(r.reserved_memory);
        hw.free_slots = hw.free_slots.saturating_add(free);
        hw.free_memory_bytes = hw.free_memory_bytes.saturating_add(free_mem);
        hw.max_node_free_memory_bytes = hw.max_node_free_memory_bytes.max(free_mem);
        for name in &s.handlers {
            let e = handlers.entry(name.clone()).or_default();
            *e = e.saturating_add(free);
        }
        for name in &s.capabilities {
            let e = capabilities.entry(name.clone()).or_default();
            *e = e.saturating_add(free);
        }
    }
    let mut jurisdictions: Vec<String> =
        jurisdictions.into_iter().take(MAX_JURISDICTIONS).collect();
    if jurisdictions.is_empty() {
        jurisdictions.push(h.zone.clone());
    }
    let keep = |m: BTreeMap<String, u32>| -> BTreeMap<String, u32> {
        m.into_iter()
            .filter(|(k, _)| !k.is_empty() && k.len() <= 64)
            .take(MAX_MAP_ENTRIES)
            .collect()
    };
    // No capacity at all reads as fully loaded.
    let load_permille = (sessions * 1000)
        .checked_div(capacity)
        .map_or(1000, |l| l.min(1000) as u16);
    let (lo, hi) = price.unwrap_or((0, 0));
    ColonySummary {
        colony_id: h.colony_id.clone(),
        region: h.region.clone(),
        jurisdictions,
        hardware,
        handlers: keep(handlers),
        capabilities: keep(capabilities),
        load_permille,
        price: PriceRange {
            min_micros_per_input: lo,
            max_micros_per_input: hi,
        },
        rc_client_api: h.rc_client_api.clone(),
        rc_control_addr: h.rc_control_addr.clone(),
        rc_did: h.rc_did.clone(),
        seq: 0,
        issued_at_ms: 0,
    }
}

// ---------------------------------------------------------------------------------------------
// Wire

/// A signed payload (request or answer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    /// JSON text of the payload.
    pub payload: String,
    /// base58 ed25519 signature over the domain ‖ payload bytes.
    pub signature: String,
}

impl Signed {
    /// Signs `payload` (serialised to JSON) under `domain`.
    pub fn sign<T: Serialize>(domain: &[u8], payload: &T, key: &SigningKey) -> Signed {
        let payload = serde_json::to_string(payload).unwrap_or_default();
        let mut msg = domain.to_vec();
        msg.extend_from_slice(payload.as_bytes());
        Signed {
            signature: bs58::encode(key.sign(&msg).to_bytes()).into_string(),
            payload,
        }
    }

    /// Whether the signature verifies against `signer` under `domain`.
    pub fn verify(&self, domain: &[u8], signer: &Did) -> bool {
        let Ok(sig) = bs58::decode(&self.signature).into_vec() else {
            return false;
        };
        let Ok(sig) = ed25519_dalek::Signature::from_slice(&sig) else {
            return false;
        };
        let mut msg = domain.to_vec();
        msg.extend_from_slice(self.payload.as_bytes());
        signer.verifying_key().verify_strict(&msg, &sig).is_ok()
    }
}

/// An RC-to-RC admission request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionRequest {
    /// Unique per request (replay protection); 1 to 64 bytes.
    pub request_id: String,
    /// The asking RC.
    pub from_rc: Did,
    /// The asking RC's colony.
    pub from_colony: String,
    /// The RC asked (a request for another RC is refused).
    pub to_rc: Did,
    /// When the request was signed, unix ms.
    pub issued_at_ms: u64,
    /// The jurisdiction the session originates in (treaty `from` side).
    pub origin_zone: String,
    /// Data class of the session.
    pub data_class: String,
    /// Jurisdictions the session may be placed in there (manifest ∩ asking RC's treaties).
    pub zones: Vec<String>,
    /// Session id asked for, if any.
    pub session_id: Option<String>,
    /// The manifest, JSON.
    pub manifest: String,
}

/// The outcome of a remote admission.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case", deny_unknown_fields)]
pub enum Outcome {
    /// Placed on one of the remote colony's nodes.
    Placed {
        /// Session id.
        session_id: String,
        /// Node did.
        node: String,
        /// Node name.
        node_name: String,
        /// Node client-API base URL.
        address: String,
        /// Epoch.
        epoch: u64,
    },
    /// Not placed.
    Refused {
        /// Error code (`unsatisfiable`, `forbidden_by_treaty`, `bad_manifest`, ...).
        code: String,
        /// Why.
        message: String,
    },
}

/// The remote RC's signed answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionAnswer {
    /// The request answered.
    pub request_id: String,
    /// The answering RC.
    pub rc: Did,
    /// Its colony.
    pub colony: String,
    /// What happened.
    pub outcome: Outcome,
}

fn now_ms() -> u64 {
    crate::wire::unix_ms()
}

fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

// ---------------------------------------------------------------------------------------------
// Receiving side

/// Why an RC-to-RC request was not authenticated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not a well-formed signed request.
    #[error("malformed admission request: {0}")]
    Malformed(String),
    /// The signer has no verified summary in this RC's peering table.
    #[error("RC {0} is not in this RC's peering table (unknown or expired)")]
    UnknownRc(Did),
    /// The signature does not verify against the claimed RC's key.
    #[error("bad signature on an admission request claiming RC {0}")]
    BadSignature(Did),
    /// Addressed to another RC.
    #[error("admission request addressed to {0}, not to this RC")]
    WrongRecipient(Did),
    /// Issued outside the accepted window.
    #[error("stale admission request: issued at {issued_at_ms} ms, now {now_ms} ms")]
    Stale {
        /// Issue time.
        issued_at_ms: u64,
        /// This RC's clock.
        now_ms: u64,
    },
    /// Its request id was seen before.
    #[error("replayed admission request {0}")]
    Replayed(String),
    /// The replay cache is full of live entries (retry later).
    #[error("too many admission requests in the replay window; retry later")]
    Busy,
}

impl AuthError {
    /// Metric/error code.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Malformed(_) => "bad_request",
            AuthError::UnknownRc(_) => "unknown_rc",
            AuthError::BadSignature(_) => "bad_signature",
            AuthError::WrongRecipient(_) => "wrong_recipient",
            AuthError::Stale { .. } => "stale_request",
            AuthError::Replayed(_) => "replayed_request",
            AuthError::Busy => "busy",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            AuthError::Malformed(_) => StatusCode::BAD_REQUEST,
            AuthError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

/// Request ids seen within the replay window.
#[derive(Debug, Default)]
struct ReplayCache {
    seen: HashMap<String, u64>,
    order: VecDeque<(u64, String)>,
}

impl ReplayCache {
    /// Records `id` valid until `until_ms`; false if it was already there.
    fn insert(&mut self, id: &str, now_ms: u64, until_ms: u64) -> Result<(), AuthError> {
        while let Some((t, _)) = self.order.front() {
            if *t > now_ms {
                break;
            }
            if let Some((_, old)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        if self.seen.contains_key(id) {
            return Err(AuthError::Replayed(id.to_string()));
        }
        if self.seen.len() >= MAX_REPLAY_ENTRIES {
            return Err(AuthError::Busy);
        }
        self.seen.insert(id.to_string(), until_ms);
        // Entries expire in insertion order only approximately (skewed issue times); the deque is
        // ordered by insertion, so an entry may outlive its time slightly. Never shorter.
        let until = self
            .order
            .back()
            .map_or(until_ms, |(t, _)| (*t).max(until_ms));
        self.order.push_back((until, id.to_string()));
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The running federation

/// Counters of cross-colony routing (shown in `/status`).
#[derive(Debug, Default)]
pub struct FederationCounters {
    /// Admission requests sent to remote RCs.
    pub requests_sent: AtomicU64,
    /// Sessions placed in a remote colony.
    pub routed_out: AtomicU64,
    /// Remote attempts that failed (refused, unreachable, unauthenticated answer).
    pub remote_failures: AtomicU64,
    /// Sessions refused because a treaty closed the only usable border.
    pub refused_by_treaty: AtomicU64,
    /// Sessions refused because no remote colony could take them.
    pub refused_no_candidate: AtomicU64,
    /// Authenticated requests received.
    pub inbound_accepted: AtomicU64,
    /// Sessions placed here for another colony.
    pub inbound_placed: AtomicU64,
    /// Requests received and refused before placement (any authentication failure).
    pub inbound_rejected: AtomicU64,
    /// ... of which: signer not in the peering table.
    pub inbound_unknown_rc: AtomicU64,
    /// ... of which: bad signature.
    pub inbound_bad_signature: AtomicU64,
    /// ... of which: replayed or stale.
    pub inbound_replayed: AtomicU64,
}

impl FederationCounters {
    fn json(&self) -> Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "requests_sent": g(&self.requests_sent),
            "routed_out": g(&self.routed_out),
            "remote_failures": g(&self.remote_failures),
            "refused_by_treaty": g(&self.refused_by_treaty),
            "refused_no_candidate": g(&self.refused_no_candidate),
            "inbound_accepted": g(&self.inbound_accepted),
            "inbound_placed": g(&self.inbound_placed),
            "inbound_rejected": g(&self.inbound_rejected),
            "inbound_unknown_rc": g(&self.inbound_unknown_rc),
            "inbound_bad_signature": g(&self.inbound_bad_signature),
            "inbound_replayed": g(&self.inbound_replayed),
        })
    }
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A session placed in another colony.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RemotePlacement {
    /// Session id.
    pub session_id: String,
    /// Node did.
    pub node: String,
    /// Node name.
    pub node_name: String,
    /// Node client-API base URL (the client talks to it directly).
    pub address: String,
    /// Epoch.
    pub epoch: u64,
    /// The colony that placed it.
    pub colony: String,
    /// Its region.
    pub region: String,
    /// Its RC.
    pub rc: Did,
    /// Its RC's client API.
    pub rc_api: String,
    /// Zones the session was allowed into there.
    pub zones: Vec<String>,
    /// The data class the treaties were checked for.
    pub data_class: String,
    /// Always true (distinguishes a routed placement in the answer).
    pub routed: bool,
}

/// Why a session refused locally could not be routed across.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The data class is not a valid name.
    #[error("data_class {0:?} is not a data class (lowercase letters, digits, - _ .)")]
    BadDataClass(String),
    /// Treaties close the border to every colony that would otherwise qualify.
    #[error("refused by treaty {}: {detail}", .treaties.join(", "))]
    ForbiddenByTreaty {
        /// The treaties that forbid it.
        treaties: Vec<String>,
        /// Per-colony reasons.
        detail: NoCandidate,
    },
    /// No remote colony qualifies.
    #[error("{0}")]
    NoCandidate(NoCandidate),
    /// Candidates existed but none placed the session.
    #[error("every candidate colony failed: {}", .attempts.iter().map(|(c, e)| format!("{c}: {e}")).collect::<Vec<_>>().join("; "))]
    AllFailed {
        /// Per colony tried: what went wrong.
        attempts: Vec<(String, String)>,
    },
}

/// Why the federation could not start.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// A `[canopy]` field is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The canopy swarm did not start.
    #[error("canopy: {0}")]
    Canopy(#[from] CanopyError),
    /// The HTTP client could not be built.
    #[error("federation http client: {0}")]
    Http(String),
}

/// The canopy and cross-colony routing of one RC.
pub struct Federation {
    canopy: Canopy,
    key: SigningKey,
    did: Did,
    colony: String,
    region: String,
    zone: String,
    treaties: Treaties,
    default_data_class: String,
    max_candidates: usize,
    request_max_skew: Duration,
    http: reqwest::Client,
    replay: Mutex<ReplayCache>,
    routed: Mutex<VecDeque<RemotePlacement>>,
    /// Counters.
    pub counters: FederationCounters,
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation")
            .field("did", &self.did)
            .field("colony", &self.colony)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts the canopy of `core` (whose client API listens on `api`) and attaches it to the core.
/// Must run on the RC's control runtime. The canopy key is the RC's identity key.
pub async fn start(
    core: &Arc<RcCore>,
    api: SocketAddr,
) -> Result<Arc<Federation>, FederationError> {
    let c = &core.cfg.canopy;
    c.validate()?;
    let key = core.identity().signing_key();
    let did = Did::from_public_key(&key.verifying_key());
    let mut cfg = CanopyConfig::new(key.clone());
    cfg.listen_addr = c.listen_addr()?;
    cfg.bootstrap = c.bootstrap_addrs()?;
    cfg.publish_interval = c.publish_interval.0;
    cfg.expiry_intervals = c.expiry_intervals;
    cfg.gossip_heartbeat = c.gossip_heartbeat.0;
    cfg.trusted_rcs.extend(c.trusted()?);
    cfg.meter = Some(core.metrics.meter("opengrid_canopy"));
    let canopy = Canopy::start(cfg).await?;
    let header = SummaryHeader {
        colony_id: core.cfg.colony.clone(),
        region: c.region.clone(),
        zone: c.zone.clone(),
        rc_did: did.clone(),
        rc_client_api: format!("http://{api}"),
        rc_control_addr: api.to_string(),
    };
    let weak: Weak<RcCore> = Arc::downgrade(core);
    let h2 = header.clone();
    canopy
        .set_summary_provider(Arc::new(move || match weak.upgrade() {
            Some(core) => core.with_colony(|colony| colony_summary(&h2, colony)),
            None => colony_summary(&h2, &Colony::new()),
        }))
        .await?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(c.remote_timeout.0)
        .build()
        .map_err(|e| FederationError::Http(e.to_string()))?;
    let fed = Arc::new(Federation {
        key,
        did,
        colony: core.cfg.colony.clone(),
        region: c.region.clone(),
        zone: c.zone.clone(),
        treaties: c.treaties()?,
        default_data_class: c.default_data_class.clone(),
        max_candidates: c.max_candidates,
        request_max_skew: c.request_max_skew.0,
        http,
        replay: Mutex::new(ReplayCache::default()),
        routed: Mutex::new(VecDeque::new()),
        counters: FederationCounters::default(),
        canopy,
    });
    tracing::info!(
        did = %fed.did,
        peer_id = %fed.canopy.peer_id(),
        canopy = %fed.canopy.listen_addr(),
        region = %fed.region,
        zone = %fed.zone,
        treaties = fed.treaties.list().len(),
        "canopy started"
    );
    core.set_federation(fed.clone());
    Ok(fed)
}

impl Federation {
    /// The canopy node.
    pub fn canopy(&self) -> &Canopy {
        &self.canopy
    }

    /// The treaties in force.
    pub fn treaties(&self) -> &Treaties {
        &self.treaties
    }

    /// This RC's zone (treaty `from` side).
    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// The data class of a request naming `asked` (or none).
    pub fn data_class(&self, asked: Option<&str>) -> Result<String, RouteError> {
        match asked {
            None => Ok(self.default_data_class.clone()),
            Some(c) if is_data_class(c) => Ok(c.to_string()),
            Some(c) => Err(RouteError::BadDataClass(c.to_string())),
        }
    }

    /// Peering table and counters, for `/status`.
    pub fn status_json(&self) -> Value {
        let peers: Vec<Value> = self
            .canopy
            .peering_table()
            .iter()
            .map(|e| {
                let s = &e.summary;
                let free: u64 = s.hardware.values().map(|h| u64::from(h.free_slots)).sum();
                json!({
                    "colony": s.colony_id,
                    "region": s.region,
                    "jurisdictions": s.jurisdictions,
                    "rc": s.rc_did,
                    "rc_api": s.rc_client_api,
                    "free_slots": free,
                    "hardware": s.hardware,
                    "handlers": s.handlers,
                    "load_permille": s.load_permille,
                    "price": s.price,
                    "seq": s.seq,
                    "age_ms": e.age_ms,
                    "expires_in_ms": e.expires_in_ms,
                })
            })
            .collect();
        let metrics: BTreeMap<&str, u64> = self.canopy.metrics().named().into_iter().collect();
        let routed: Vec<RemotePlacement> = lock(&self.routed).iter().cloned().collect();
        json!({
            "enabled": true,
            "did": self.did,
            "peer_id": self.canopy.peer_id().to_string(),
            "listen": self.canopy.listen_addr().to_string(),
            "region": self.region,
            "zone": self.zone,
            "treaties": self.treaties.list().iter().map(|t| &t.name).collect::<Vec<_>>(),
            "peers": peers,
            "metrics": metrics,
            "federation": self.counters.json(),
            "routed_out": routed,
        })
    }

    /// Routes a session refused locally: candidates from the peering table snapshot (treaties
    /// applied for `data_class`), then a signed admission request to each in turn until one places
    /// it. Never waits for gossip.
    #[tracing::instrument(skip_all, fields(handler = %m.session.handler, data_class = tracing::field::Empty))]
    pub async fn route(
        &self,
        m: &Manifest,
        session: Option<&SessionId>,
        data_class: &str,
    ) -> Result<RemotePlacement, RouteError> {
        if !is_data_class(data_class) {
            return Err(RouteError::BadDataClass(data_class.to_string()));
        }
        tracing::Span::current().record("data_class", data_class);
        let table = self.canopy.peering_table();
        let found = match candidates(&table, m, &self.zone, &self.treaties, data_class) {
            Ok(c) => c,
            Err(none) => {
                let treaties = none.blocking_treaties();
                return Err(if treaties.is_empty() {
                    inc(&self.counters.refused_no_candidate);
                    RouteError::NoCandidate(none)
                } else {
                    inc(&self.counters.refused_by_treaty);
                    tracing::info!(?treaties, "session refused by treaty");
                    RouteError::ForbiddenByTreaty {
                        treaties,
                        detail: none,
                    }
                });
            }
        };
        let mut attempts = Vec::new();
        for cand in found.into_iter().take(self.max_candidates) {
            let colony = cand.entry.summary.colony_id.clone();
            match self
                .ask(&cand.entry, m, session, data_class, &cand.zones)
                .await
            {
                Ok(p) => {
                    inc(&self.counters.routed_out);
                    tracing::info!(session = %p.session_id, %colony, node = %p.node_name, "session routed to another colony");
                    let mut r = lock(&self.routed);
                    if r.len() >= ROUTED_KEPT {
                        r.pop_front();
                    }
                    r.push_back(p.clone());
                    return Ok(p);
                }
                Err(e) => {
                    inc(&self.counters.remote_failures);
                    tracing::warn!(%colony, error = %e, "remote admission failed");
                    attempts.push((colony, e));
                }
            }
        }
        Err(RouteError::AllFailed { attempts })
    }

    /// Builds and signs an admission request for `to`.
    pub fn request(
        &self,
        to: &Did,
        m: &Manifest,
        session: Option<&SessionId>,
        data_class: &str,
        zones: &[String],
    ) -> (AdmissionRequest, Signed) {
        let req = AdmissionRequest {
            request_id: new_request_id(),
            from_rc: self.did.clone(),
            from_colony: self.colony.clone(),
            to_rc: to.clone(),
            issued_at_ms: now_ms(),
            origin_zone: self.zone.clone(),
            data_class: data_class.to_string(),
            zones: zones.to_vec(),
            session_id: session.map(|s| s.to_string()),
            manifest: m.to_json_string(),
        };
        let signed = Signed::sign(REQUEST_DOMAIN, &req, &self.key);
        (req, signed)
    }

    async fn ask(
        &self,
        peer: &PeerEntry,
        m: &Manifest,
        session: Option<&SessionId>,
        data_class: &str,
        zones: &[String],
    ) -> Result<RemotePlacement, String> {
        let s = &peer.summary;
        let (req, signed) = self.request(&s.rc_did, m, session, data_class, zones);
        inc(&self.counters.requests_sent);
        let url = format!("http://{}{ADMISSION_PATH}", s.rc_control_addr);
        let resp = self
            .http
            .post(&url)
            .json(&signed)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| format!("{url}: {e}"))?;
        if bytes.len() > MAX_FEDERATION_BYTES {
            return Err(format!("answer of {} bytes is over the limit", bytes.len()));
        }
        if !status.is_success() {
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(format!(
                "{status} {}: {}",
                body["code"].as_str().unwrap_or(""),
                body["message"].as_str().unwrap_or("")
            ));
        }
        let answer: Signed =
            serde_json::from_slice(&bytes).map_err(|e| format!("undecodable answer: {e}"))?;
        if !answer.verify(ANSWER_DOMAIN, &s.rc_did) {
            return Err(format!("answer not signed by {}", s.rc_did));
        }
        let a: AdmissionAnswer = serde_json::from_str(&answer.payload)
            .map_err(|e| format!("undecodable answer: {e}"))?;
        if a.request_id != req.request_id || a.rc != s.rc_did {
            return Err("answer does not match the request".into());
        }
        match a.outcome {
            Outcome::Placed {
                session_id,
                node,
                node_name,
                address,
                epoch,
            } => Ok(RemotePlacement {
                session_id,
                node,
                node_name,
                address,
                epoch,
                colony: s.colony_id.clone(),
                region: s.region.clone(),
                rc: s.rc_did.clone(),
                rc_api: s.rc_client_api.clone(),
                zones: zones.to_vec(),
                data_class: data_class.to_string(),
                routed: true,
            }),
            Outcome::Refused { code, message } => Err(format!("refused ({code}): {message}")),
        }
    }

    /// Authenticates a received request: well-formed, signer in the peering table, signature,
    /// recipient, freshness, never seen.
    pub fn authenticate(&self, body: &[u8]) -> Result<AdmissionRequest, AuthError> {
        if body.len() > MAX_FEDERATION_BYTES {
            return Err(AuthError::Malformed(format!(
                "{} bytes; the limit is {MAX_FEDERATION_BYTES}",
                body.len()
            )));
        }
        let signed: Signed =
            serde_json::from_slice(body).map_err(|e| AuthError::Malformed(e.to_string()))?;
        let req: AdmissionRequest = serde_json::from_str(&signed.payload)
            .map_err(|e| AuthError::Malformed(format!("payload: {e}")))?;
        if req.request_id.is_empty() || req.request_id.len() > 64 {
            return Err(AuthError::Malformed(
                "request_id must be 1 to 64 bytes".into(),
            ));
        }
        let known = self
            .canopy
            .peering_table()
            .into_iter()
            .any(|e| e.summary.rc_did == req.from_rc);
        if !known {
            return Err(AuthError::UnknownRc(req.from_rc));
        }
        if !signed.verify(REQUEST_DOMAIN, &req.from_rc) {
            return Err(AuthError::BadSignature(req.from_rc));
        }
        if req.to_rc != self.did {
            return Err(AuthError::WrongRecipient(req.to_rc));
        }
        let now = now_ms();
        let skew = self.request_max_skew.as_millis() as u64;
        if req.issued_at_ms.saturating_add(skew) < now
            || req.issued_at_ms > now.saturating_add(skew)
        {
            return Err(AuthError::Stale {
                issued_at_ms: req.issued_at_ms,
                now_ms: now,
            });
        }
        let until = req.issued_at_ms.saturating_add(skew);
        let id = format!("{}/{}", req.from_rc, req.request_id);
        lock(&self.replay).insert(&id, now, until)?;
        Ok(req)
    }

    fn answer(&self, request_id: &str, outcome: Outcome) -> Signed {
        let a = AdmissionAnswer {
            request_id: request_id.to_string(),
            rc: self.did.clone(),
            colony: self.colony.clone(),
            outcome,
        };
        Signed::sign(ANSWER_DOMAIN, &a, &self.key)
    }

    /// The zones of `req` this RC may place the session in: each must be known, allowed by the
    /// manifest, and allowed by this RC's own treaties for the request's origin and data class.
    fn admissible_zones(
        &self,
        req: &AdmissionRequest,
        m: &Manifest,
    ) -> Result<Vec<String>, Outcome> {
        let refuse = |code: &str, message: String| Outcome::Refused {
            code: code.into(),
            message,
        };
        if req.zones.is_empty() || req.zones.len() > 64 {
            return Err(refuse(
                "bad_request",
                "zones must list 1 to 64 jurisdictions".into(),
            ));
        }
        if !is_data_class(&req.data_class) || !jurisdiction::is_known(&req.origin_zone) {
            return Err(refuse(
                "bad_request",
                "invalid data_class or origin_zone".into(),
            ));
        }
        let allowed = &m.placement.jurisdictions;
        let mut ok = Vec::new();
        let mut refusals: Vec<Refusal> = Vec::new();
        for z in &req.zones {
            if !jurisdiction::is_known(z)
                || (!allowed.is_empty() && !jurisdiction::satisfies(z, allowed))
            {
                return Err(refuse(
                    "bad_request",
                    format!("zone {z:?} is not allowed by the manifest ({allowed:?})"),
                ));
            }
            match self
                .treaties
                .may_route(&req.origin_zone, z, &req.data_class)
            {
                Ok(()) => ok.push(z.clone()),
                Err(r) => refusals.push(r),
            }
        }
        if ok.is_empty() {
            let text: Vec<String> = refusals.iter().map(|r| r.to_string()).collect();
            return Err(refuse("forbidden_by_treaty", text.join("; ")));
        }
        Ok(ok)
    }
}

/// `POST /federation/admission`: a remote RC asks this RC to place a session locally.
#[tracing::instrument(skip_all, err(Debug))]
pub async fn admission_handler(
    State(core): State<Arc<RcCore>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Signed>, ApiError> {
    let body = body?;
    let Some(fed) = core.federation().cloned() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "federation_disabled",
            "this RC runs no canopy ([canopy] enabled = false)",
        ));
    };
    let req = match fed.authenticate(&body) {
        Ok(r) => r,
        Err(e) => {
            inc(&fed.counters.inbound_rejected);
            match &e {
                AuthError::UnknownRc(_) => inc(&fed.counters.inbound_unknown_rc),
                AuthError::BadSignature(_) => inc(&fed.counters.inbound_bad_signature),
                AuthError::Replayed(_) | AuthError::Stale { .. } => {
                    inc(&fed.counters.inbound_replayed)
                }
                _ => {}
            }
            tracing::warn!(error = %e, "RC-to-RC admission request refused");
            return Err(ApiError::new(e.status(), e.code(), e.to_string()));
        }
    };
    inc(&fed.counters.inbound_accepted);
    let outcome = place_for_remote(&core, &fed, &req).await;
    if matches!(outcome, Outcome::Placed { .. }) {
        inc(&fed.counters.inbound_placed);
    }
    tracing::info!(from = %req.from_colony, request = %req.request_id, ?outcome, "remote admission answered");
    Ok(Json(fed.answer(&req.request_id, outcome)))
}

async fn place_for_remote(core: &RcCore, fed: &Federation, req: &AdmissionRequest) -> Outcome {
    let refuse = |code: &str, message: String| Outcome::Refused {
        code: code.into(),
        message,
    };
    let mut m = match Manifest::from_json_str(&req.manifest) {
        Ok(m) => m,
        Err(e) => return refuse("bad_manifest", e.to_string()),
    };
    let sid = match req.session_id.as_deref().map(SessionId::new).transpose() {
        Ok(s) => s,
        Err(e) => return refuse("bad_session_id", e.to_string()),
    };
    let zones = match fed.admissible_zones(req, &m) {
        Ok(z) => z,
        Err(o) => return o,
    };
    // Narrowed, never widened: the local hard filter then keeps the session inside these zones.
    m.placement.jurisdictions = zones;
    match core.place(&m, sid).await {
        Ok(p) => Outcome::Placed {
            session_id: p.session_id.to_string(),
            node: p.node.to_string(),
            node_name: p.node_name,
            address: p.address,
            epoch: p.epoch.0,
        },
        Err(PlaceError::Unsatisfiable { why }) => refuse(
            "unsatisfiable",
            if why.is_empty() {
                "no node has joined the colony".into()
            } else {
                why.iter()
                    .map(|(_, n, r)| format!("{n}: {r}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            },
        ),
        Err(e @ PlaceError::AlreadyPlaced { .. }) => refuse("already_placed", e.to_string()),
        Err(e) => refuse("placement_failed", e.to_string()),
    }
}

/// The `POST /sessions` fallback when local admission refused `m` (`why`, per local node): route
/// it to another colony, or explain why not. A routed answer has the usual placement fields
/// (`session_id`, `node`, `node_name`, `address`, `epoch`) plus `colony`, `region`, `rc`,
/// `rc_api`, `zones`, `data_class` and `routed: true`.
pub async fn route_refused(
    core: &RcCore,
    m: &Manifest,
    sid: Option<&SessionId>,
    data_class: Option<&String>,
    why: &[(NodeId, String, Rejection)],
) -> Result<Response, ApiError> {
    let local: Vec<Value> = why
        .iter()
        .map(
            |(id, name, r)| json!({"node": id, "name": name, "reason": r.to_string(), "filter": r}),
        )
        .collect();
    let local_text = if why.is_empty() {
        "no node has joined the colony".to_string()
    } else {
        why.iter()
            .map(|(_, n, r)| format!("{n}: {r}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let Some(fed) = core.federation() else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unsatisfiable",
            format!("no node satisfies the manifest: {local_text}"),
        )
        .with("why", json!(local)));
    };
    let dc = fed
        .data_class(data_class.map(String::as_str))
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_data_class", e.to_string()))?;
    match fed.route(m, sid, &dc).await {
        Ok(p) => Ok((
            StatusCode::CREATED,
            Json(serde_json::to_value(p).unwrap_or(Value::Null)),
        )
            .into_response()),
        Err(RouteError::ForbiddenByTreaty { treaties, detail }) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_by_treaty",
            format!(
                "not served locally ({local_text}); routing it across is forbidden by treaty {}: {detail}",
                treaties.join(", ")
            ),
        )
        .with("treaties", json!(treaties))
        .with("data_class", json!(dc))
        .with("colonies", json!(detail.colonies))
        .with("why", json!(local))),
        Err(RouteError::NoCandidate(n)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unsatisfiable",
            format!("no node satisfies the manifest: {local_text}; {n}"),
        )
        .with("colonies", json!(n.colonies))
        .with("why", json!(local))),
        Err(e @ RouteError::AllFailed { .. }) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "remote_placement_failed",
            format!("not served locally ({local_text}); {e}"),
        )
        .with("retryable", json!(true))
        .with("why", json!(local))),
        Err(e @ RouteError::BadDataClass(_)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_data_class",
            e.to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::NodeSpec;
    use crate::identity::Identity;
    use opengrid_session::AcceleratorClass;

    fn treaties() -> Treaties {
        Treaties::new(vec![
            FederationTreaty {
                name: "eu-internal".into(),
                from_zone: "EU".into(),
                to_zone: "EU".into(),
                route: true,
                replicate: true,
                data_classes: vec!["*".into()],
            },
            FederationTreaty {
                name: "de-us-no-personal".into(),
                from_zone: "DE".into(),
                to_zone: "US".into(),
                route: false,
                replicate: false,
                data_classes: vec!["personal".into()],
            },
        ])
        .unwrap()
    }

    #[test]
    fn replica_rule_needs_manifest_and_treaty() {
        let t = treaties();
        let eu = vec!["EU".to_string()];
        may_hold_replica(&eu, "DE", &t, "personal", "FR").unwrap();
        may_hold_replica(&eu, "DE", &t, "personal", "DE").unwrap();
        assert!(matches!(
            may_hold_replica(&eu, "DE", &t, "personal", "US"),
            Err(ReplicaRefusal::Jurisdiction { .. })
        ));
        let any: Vec<String> = Vec::new();
        let err = may_hold_replica(&any, "DE", &t, "personal", "US").unwrap_err();
        assert!(err.to_string().contains("de-us-no-personal"), "{err}");
        // Same jurisdiction needs no treaty; an uncovered border is refused.
        may_hold_replica(&any, "JP", &Treaties::none(), "x", "JP").unwrap();
        assert!(may_hold_replica(&any, "JP", &Treaties::none(), "x", "KR").is_err());
    }

    fn spec(name: &str, j: &str, acc: AcceleratorClass, cap: u32, price: u64) -> NodeSpec {
        NodeSpec {
            id: Identity::generate().id(),
            name: name.into(),
            jurisdiction: j.into(),
            accelerator: acc,
            cpu_cores: 2,
            memory: 8 << 30,
            handlers: vec!["tutor".into()],
            capabilities: vec!["vision".into()],
            price_micros_per_input: price,
            capacity: cap,
            api: format!("http://{name}"),
            migration: "127.0.0.1:1".into(),
        }
    }

    fn header() -> SummaryHeader {
        SummaryHeader {
            colony_id: "c".into(),
            region: "eu".into(),
            zone: "FR".into(),
            rc_did: Did::from_public_key(&SigningKey::from_bytes(&[1; 32]).verifying_key()),
            rc_client_api: "http://127.0.0.1:1".into(),
            rc_control_addr: "127.0.0.1:1".into(),
        }
    }

    #[test]
    fn summary_reflects_the_admission_table() {
        let empty = colony_summary(&header(), &Colony::new());
        assert_eq!(empty.jurisdictions, ["FR"]);
        assert_eq!(empty.load_permille, 1000);
        assert!(empty.hardware.is_empty());
        empty.validate().unwrap();

        let mut c = Colony::new();
        let a = spec("a", "DE", AcceleratorClass::None, 4, 5);
        let b = spec("b", "AT", AcceleratorClass::GpuSmall, 2, 9);
        let (ida, idb) = (a.id, b.id);
        c.upsert(a);
        c.upsert(b);
        c.note_placed(&ida, "tutor", 1 << 30);
        c.note_placed(&idb, "tutor", 1 << 30);
        c.note_placed(&idb, "tutor", 1 << 30);
        let s = colony_summary(&header(), &c);
        s.validate().unwrap();
        assert_eq!(s.jurisdictions, ["AT", "DE"]);
        assert_eq!(s.load_permille, 500);
        assert_eq!(s.price.min_micros_per_input, 5);
        assert_eq!(s.price.max_micros_per_input, 9);
        assert_eq!(s.hardware[&AcceleratorClass::None].free_slots, 3);
        assert_eq!(
            s.hardware[&AcceleratorClass::None].max_node_free_memory_bytes,
            7 << 30
        );
        // The full GPU node is listed with no free slot.
        assert_eq!(s.hardware[&AcceleratorClass::GpuSmall].free_slots, 0);
        assert_eq!(s.handlers["tutor"], 3);
        assert_eq!(s.capabilities["vision"], 3);
        // Dead nodes leave the summary.
        c.set_alive(&ida, false);
        let s = colony_summary(&header(), &c);
        assert_eq!(s.jurisdictions, ["AT"]);
        assert_eq!(s.handlers.get("tutor").copied().unwrap_or(0), 0);
    }

    #[test]
    fn signed_payload_round_trip_and_tamper() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let did = Did::from_public_key(&key.verifying_key());
        let s = Signed::sign(REQUEST_DOMAIN, &json!({"a": 1}), &key);
        assert!(s.verify(REQUEST_DOMAIN, &did));
        assert!(!s.verify(ANSWER_DOMAIN, &did), "domain separated");
        let mut t = s.clone();
        t.payload = "{\"a\":2}".into();
        assert!(!t.verify(REQUEST_DOMAIN, &did));
        let mut t = s.clone();
        t.signature = "not-base58-0OIl".into();
        assert!(!t.verify(REQUEST_DOMAIN, &did));
        let other = Did::from_public_key(&SigningKey::from_bytes(&[8; 32]).verifying_key());
        assert!(!s.verify(REQUEST_DOMAIN, &other));
    }

    #[test]
    fn replay_cache_refuses_repeats_until_expiry() {
        let mut c = ReplayCache::default();
        c.insert("a", 1000, 2000).unwrap();
        assert!(matches!(
            c.insert("a", 1500, 2500),
            Err(AuthError::Replayed(_))
        ));
        c.insert("b", 1500, 2500).unwrap();
        // After its window, "a" is forgotten (and would be refused as stale anyway).
        c.insert("a", 2001, 3000).unwrap();
        assert!(c.seen.len() <= 2);
    }

    #[test]
    fn canopy_section_in_rc_toml_with_env_overrides() {
        use crate::config::RcConfig;
        let toml = r#"
[canopy]
enabled = true
zone = "FR"
publish_interval = "2s"
bootstrap = ["/ip4/127.0.0.1/tcp/4001"]
[[canopy.treaty]]
name = "fr-de"
from_zone = "FR"
to_zone = "DE"
route = true
replicate = false
data_classes = ["*"]
"#;
        let env = vec![
            ("OPENGRID_CANOPY_REGION".to_string(), "eu-west".to_string()),
            (
                "OPENGRID_CANOPY_EXPIRY_INTERVALS".to_string(),
                "5".to_string(),
            ),
        ];
        let c = RcConfig::from_toml_with_env(toml, &env).unwrap();
        assert!(c.canopy.enabled);
        assert_eq!(c.canopy.region, "eu-west");
        assert_eq!(c.canopy.expiry_intervals, 5);
        assert_eq!(c.canopy.publish_interval.0, Duration::from_secs(2));
        assert_eq!(c.canopy.treaties().unwrap().list()[0].name, "fr-de");
        // Defaults: canopy off, still valid.
        assert!(
            !RcConfig::from_toml_with_env("", &[])
                .unwrap()
                .canopy
                .enabled
        );
        // Unknown fields are refused; bad values name the dotted field.
        let e = RcConfig::from_toml_with_env("[canopy]\nzoen = \"FR\"", &[]).unwrap_err();
        assert!(e.to_string().contains("zoen"), "{e}");
        match RcConfig::from_toml_with_env("[canopy]\nzone = \"XX\"", &[]) {
            Err(ConfigError::Invalid { field, .. }) => assert_eq!(field, "canopy.zone"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn config_validation_names_the_field() {
        let ok = CanopySection::default();
        ok.validate().unwrap();
        let cases: Vec<(CanopySection, &str)> = vec![
            (
                CanopySection {
                    listen: "nope".into(),
                    ..ok.clone()
                },
                "canopy.listen",
            ),
            (
                CanopySection {
                    bootstrap: vec!["/ip4/127.0.0.1/tcp/1".into(), "x".into()],
                    ..ok.clone()
                },
                "canopy.bootstrap[1]",
            ),
            (
                CanopySection {
                    zone: "XX".into(),
                    ..ok.clone()
                },
                "canopy.zone",
            ),
            (
                CanopySection {
                    trusted_rcs: vec!["did:mycel:nope".into()],
                    ..ok.clone()
                },
                "canopy.trusted_rcs[0]",
            ),
            (
                CanopySection {
                    expiry_intervals: 0,
                    ..ok.clone()
                },
                "canopy.expiry_intervals",
            ),
            (
                CanopySection {
                    default_data_class: "Personal".into(),
                    ..ok.clone()
                },
                "canopy.default_data_class",
            ),
            (
                CanopySection {
                    treaties_file: Some("/nonexistent/treaties.toml".into()),
                    ..ok.clone()
                },
                "canopy.treaties_file",
            ),
            (
                CanopySection {
                    treaty: vec![FederationTreaty {
                        name: "t".into(),
                        from_zone: "DE".into(),
                        to_zone: "XX".into(),
                        route: true,
                        replicate: false,
                        data_classes: vec!["*".into()],
                    }],
                    ..ok.clone()
                },
                "canopy.treaty[0].to_zone",
            ),
        ];
        for (c, field) in cases {
            match c.validate() {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}

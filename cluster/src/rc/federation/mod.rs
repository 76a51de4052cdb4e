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

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use opengrid_canopy::{candidates, Canopy, CanopyConfig, CanopyError, NoCandidate, Treaties};
use opengrid_session::{Did, Manifest, SessionId};
use serde::Serialize;
use serde_json::{json, Value};

use crate::common::config::ConfigError;
use crate::rc::admission::Colony;
use crate::rc::RcCore;

mod client;
mod config;
mod envelope;
mod replay;
mod server;
mod summary;
#[cfg(test)]
mod tests;

pub use config::{is_data_class, CanopySection};
use envelope::{new_request_id, now_ms};
pub use envelope::{AdmissionAnswer, AdmissionRequest, AuthError, Outcome, Signed};
use replay::ReplayCache;
pub use server::{admission_handler, route_refused};
pub use summary::{colony_summary, may_hold_replica, ReplicaRefusal, SummaryHeader};

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
    /// The session's capability, signed by the placing (remote) RC, whose nodes honour it.
    pub capability: Option<String>,
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
            // Only the replica in office speaks for the colony (ADR 0037): a follower of the RC
            // group publishes nothing; the new leader publishes from its first interval on.
            Some(core) if core.acting() => {
                Some(core.with_colony(|colony| colony_summary(&h2, colony)))
            }
            Some(_) => None,
            None => Some(colony_summary(&h2, &Colony::new())),
        }))
        .await?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(c.remote_timeout.0)
        .pool_idle_timeout(crate::common::serve::CLIENT_POOL_IDLE)
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
}

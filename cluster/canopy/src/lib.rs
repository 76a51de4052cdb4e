//! # opengrid-canopy
//!
//! The canopy layer of OpenGrid: how routing coordinators (RCs) of different colonies learn about
//! each other's capacity, and which of them a session may be routed to.
//!
//! **Plane: control.** Nothing here touches session inputs or inference; the canopy runs on the
//! RC's control-plane runtime, and nothing in the admission hot path waits for gossip (the RC reads
//! a snapshot of the peering table).
//!
//! - [`Canopy`]: a libp2p swarm (TCP + noise + yamux, gossipsub, identify) whose identity is the
//!   RC's ed25519 key, so a [`PeerId`](libp2p::PeerId) and a `did:mycel` id name the same RC
//!   ([`did_of_peer`], [`peer_of_did`]). It publishes this RC's signed [`ColonySummary`] every
//!   interval (30 s by default) and keeps a [`PeeringTable`] of everyone else's, with expiry.
//! - [`ColonySummary`] / [`SignedSummary`] (the seed's `ColonyDescriptor`): colony id, region,
//!   jurisdictions, free capacity by hardware class and by handler/capability, load, price range,
//!   the RC's client API and control addresses and did, a sequence number and an issue time;
//!   domain-separated bincode bytes signed by the RC key.
//! - Acceptance ([`table`]): decode within a size limit → trusted RC → signature → newer sequence
//!   number and fresh issue time. Gossipsub runs in strict mode with application validation:
//!   rejected summaries are not forwarded, and forged, unknown-key or malformed ones lower the
//!   sender's peer score (three put it on the graylist).
//! - [`Treaties`] ([`treaty`]): federation treaties saying which zones may route sessions to, or
//!   replicate checkpoints into, which other zones for which data classes; refusals name the treaty.
//! - [`candidates`] ([`select`]): remote colonies that may serve a manifest, best first, or an
//!   explained refusal. The RC-to-RC admission request itself is the cluster crate's.
//!
//! Design notes and numbers: `docs/adr/0008-canopy-gossip.md`.
//!
//! ## Metrics
//! Per RC, as OpenTelemetry instruments on the meter given in [`CanopyConfig::meter`] (the RC's
//! own provider: its `/metrics` and OTLP export); the counters and gauges are also in
//! [`Canopy::metrics`] ([`CanopyMetrics::named`], the RC's `/status`). This crate depends on the
//! OpenTelemetry API only.
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | `opengrid_canopy_published_total` | counter | own summaries published |
//! | `opengrid_canopy_received_total` | counter | summary messages validated |
//! | `opengrid_canopy_accepted_total` | counter | summaries entered in the peering table |
//! | `opengrid_canopy_rejected_bad_signature_total` | counter | signature does not verify |
//! | `opengrid_canopy_rejected_replay_or_stale_total` | counter | seq not newer, or issued outside the window |
//! | `opengrid_canopy_rejected_unknown_key_total` | counter | RC not in the trusted set |
//! | `opengrid_canopy_rejected_malformed_total` | counter | undecodable / oversized / out of range |
//! | `opengrid_canopy_expired_total` | counter | peering entries of silent RCs removed |
//! | `opengrid_canopy_silent_disconnects_total` | counter | peers dropped for never announcing the topic (restarted under the same key) |
//! | `opengrid_canopy_wire_sent_bytes_total` | counter | bytes written on canopy TCP connections |
//! | `opengrid_canopy_wire_received_bytes_total` | counter | bytes read on canopy TCP connections |
//! | `opengrid_canopy_connected_peers` | gauge | connected canopy peers |
//! | `opengrid_canopy_peering_entries` | gauge | live peering-table entries |
//! | `opengrid_canopy_propagation_seconds` | histogram ([`metrics::PROPAGATION_BUCKETS`]) | accepted summaries: issue (origin RC's clock) to acceptance here |

pub mod canopy;
pub mod identity;
pub mod metrics;
pub mod select;
pub mod summary;
pub mod table;
mod transport;
pub mod treaty;

pub use canopy::{Canopy, CanopyConfig, PeerEvent, SummaryProvider, DEFAULT_TOPIC};
pub use identity::{did_of_peer, keypair_from_signing_key, peer_of_did};
pub use metrics::CanopyMetrics;
pub use select::{candidates, Candidate, ColonyReason, ColonyRefusal, NoCandidate};
pub use summary::{ColonySummary, DecodeError, HardwareCapacity, PriceRange, SignedSummary};
pub use table::{Admission, PeerEntry, PeeringTable, Rejection};
pub use treaty::{Action, FederationTreaty, Refusal, RefusalReason, Treaties, TreatyError};

/// Errors of the canopy node.
#[derive(Debug, thiserror::Error)]
pub enum CanopyError {
    /// A configuration field is invalid.
    #[error("invalid canopy config field {field}: {reason}")]
    Config {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The signing key cannot be used as a libp2p identity.
    #[error("canopy key: {0}")]
    Key(String),
    /// Building the transport or the gossip behaviour failed.
    #[error("canopy transport: {0}")]
    Transport(String),
    /// Cannot listen on the configured address.
    #[error("canopy cannot listen: {0}")]
    Listen(String),
    /// A dial was refused before it started (bad address, no transport for it).
    #[error("canopy dial: {0}")]
    Dial(String),
    /// No canopy peer is subscribed yet; retry after connecting (retryable).
    #[error("no canopy peer is subscribed to the topic yet")]
    NoPeers,
    /// Gossipsub refused to publish.
    #[error("canopy publish: {0}")]
    Publish(String),
    /// The summary to publish is invalid.
    #[error("summary not published: {0}")]
    Invalid(summary::DecodeError),
    /// The signed summary exceeds the configured message size.
    #[error("summary is {len} bytes, above the {limit}-byte message limit")]
    TooLarge {
        /// Encoded size.
        len: usize,
        /// Limit.
        limit: usize,
    },
    /// The canopy task has stopped.
    #[error("the canopy node has stopped")]
    Stopped,
}

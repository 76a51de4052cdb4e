//! # opengrid-migration
//!
//! Sessions move between nodes like a mobile call, and survive node loss.
//!
//! - [`replica::ReplicatedStore`]: every checkpoint reaches k peers (in jurisdictions the
//!   manifest allows — the RC chooses the replica set) before it is durable locally; replicas
//!   enforce epoch fencing.
//! - [`server::MigrationServer`]: a node's endpoint for replica writes, handover target steps and
//!   X2 forwarding (length-prefixed bincode frames over TCP, size-limited, see [`wire`]).
//! - [`handover::handover`]: make-before-break handover from the source side, abortable at every
//!   step before activation; [`handover::restore`]: failover from a replica.
//!
//! Plane: control (handover coordination) carrying state (checkpoints). Triggers (drain, load,
//! latency, failure detection) and the directory switch live in the cluster crate.
//!
//! ## Metrics
//! An OpenTelemetry histogram on the meter in [`ReplicationConfig::meter`] (the node passes its
//! own, so it appears on its `/metrics`); this crate depends on the OpenTelemetry API only.
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | `opengrid_migration_replication_seconds` | histogram ([`replica::REPLICATION_BUCKETS`]) | one checkpoint's replication round to its replica set (every answer read, failures included) |
//! | `opengrid_migration_refused_total{reason}` | counter | requests refused by the migration server's authorization ([`grant`]): `no_rc`, `no_grant`, `bad_signature`, `wrong_session`, `wrong_epoch`, `not_holder`, `not_designated`, `not_source` |

pub mod fault;
pub mod grant;
pub mod handover;
pub mod replica;
pub mod server;
pub mod wire;

pub use grant::{Grant, GrantError, GrantPolicy, RcKey, SignedGrant, VerifiedGrants};
pub use handover::{
    handover, restore, HandoverError, HandoverOptions, HandoverReport, Peer, PeerRelay,
};
pub use replica::{ReplicatedStore, ReplicationConfig};
pub use server::{AdmitIncoming, CapacityAdmission, MigrationServer, Security};

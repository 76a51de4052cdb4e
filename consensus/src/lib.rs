//! # opengrid-consensus
//!
//! Raft plumbing for OpenGrid's control plane: an [openraft] 0.9 group whose log, vote and
//! snapshots live in RocksDB, whose replicas talk over authenticated, encrypted links
//! (`opengrid-link`: mutual TLS 1.3 with did:mycel keys, ADR 0025), and whose state machine is any
//! deterministic [`Application`]. This crate knows nothing of money: the settlement ledger plugs
//! in through [`Application`] from the `settlement` crate.
//!
//! Where it fits: control plane only (CPU, never queued behind inference). Throughput-sensitive
//! work is batched by the application (one settlement batch per interval), so Raft carries few,
//! large commands.
//!
//! - [`store`]: [`store::LogStore`] (`RaftLogStorage`) and [`store::StateMachineStore`]
//!   (`RaftStateMachine`) over one RocksDB per replica; passes openraft's storage `Suite`.
//! - [`network`]: the RPC wire types in the shared frame format of `opengrid-codec`
//!   (length-delimited bincode 2 frames with a size limit); openraft's
//!   `RaftNetwork`/`RaftNetworkFactory` over links that must reach each member's DID. Log
//!   entries, snapshots and application commands are encoded with the same crate's size-limited
//!   value codec. Each member ([`Node`]) is an address and a DID.
//! - [`RaftNode`]: start a replica (`start`), propose (`client_write`, forwarded to the leader),
//!   read (`read` linearizable, `local_read`), membership (`initialize`, `add_learner`,
//!   `change_membership`, `remove_node`), `metrics`, `status`, `shutdown`.
//! - [`Client`]: for processes that are not replicas; follows leader redirects.
//! - [`auth`]: the admin-request authorization hook ([`AdminAuthorizer`]) and the refusal of Raft
//!   RPCs whose claimed sender is not a member or not the member the link authenticated.
//!
//! A replica restarted on its data dir restores the last snapshot, re-applies committed log
//! entries after it, and catches up from the leader (log entries, or a snapshot when the leader
//! has purged what it needs).
//!
//! Metrics: openraft's [`RaftMetrics`] via [`RaftNode::metrics`], and one counter of its own,
//! read with [`RaftNode::refusals`] (lock-free counters; the process that embeds the replica
//! exports them):
//!
//! | metric | kind | what |
//! |---|---|---|
//! | `opengrid_consensus_refused_total{reason}` | counter | requests and connections a replica refused: `not_a_member`, `peer_mismatch` (a Raft RPC claiming a member over a link of another DID), `unauthorized` (admin), `too_many_connections`, `handshake` (plain TCP, failed TLS), `idle` (no request within `idle_timeout`) |

pub mod application;
pub mod auth;
pub mod client;
pub mod error;
pub mod network;
pub mod node;
pub mod store;
pub mod types;

pub use application::{Application, KvApplication, RestoreError};
pub use auth::{AdminAuthorizer, AdminRequest, RefusalReason, Refusals};
pub use client::Client;
pub use error::ConsensusError;
pub use network::{NodeStatus, WireError};
pub use node::{RaftNode, RaftNodeConfig};
pub use types::{Command, LogId, Node, NodeId, RaftMetrics, Response, TypeConfig};

//! # opengrid-cluster
//!
//! The OpenGrid node and routing coordinator (RC): what runs in the `opengrid` binary.
//!
//! - [`identity`]: ed25519 key per node/RC, `did:mycel:z…` ids, signatures.
//! - [`config`]: versioned TOML configs with `OPENGRID_*` env overrides.
//! - [`admission`]: the RC's in-memory node table, hard filters, scoring, explainable decisions.
//! - [`failure`]: phi-accrual failure detector and leases.
//! - [`wire`], [`rc`], [`node`]: the control plane over ractor_cluster (colony secret as cookie,
//!   signed joins, heartbeats carrying load, leases, placement orders, session directory).
//! - [`api`]: the client API (axum HTTP + WebSocket) of nodes and RC; [`client`]: a Rust client
//!   that follows `moved` and replays unacknowledged inputs.
//! - [`server`]: `start_rc` / `start_node` (many can run in one process, for tests);
//!   [`cli`]: the `opengrid` command line (`node`, `rc`, `status`, `id`, `demo`).
//! - [`receipts`]: compute receipts — nodes sign one per session per usage window, the RC
//!   co-signs, batches and settles them on the Raft-replicated ledger every interval.
//! - [`metrics`]: `/metrics` instruments (`opengrid_cluster_*`).
//! - [`federation`]: the RC's canopy (libp2p gossip of signed colony summaries, peering table),
//!   treaties, and cross-colony routing by signed RC-to-RC admission requests.
//! - [`inference`]: the node's `[inference]` config and its ONNX Runtime model pool
//!   (`og-infer-*` threads, neither control nor handler runtime), wired into session handlers.
//! - [`faults`]: the node's `[faults] control_dir` test/chaos hook (failing checkpoint writes,
//!   slow and panicking handlers, switched by files); off by default.
//!
//! Planes: everything here is the **control plane** and runs on its own runtime
//! (`og-control-*` threads); session handlers run on the node's handler runtime
//! (`og-handler-*`). Session traffic goes client → node directly; the RC never proxies it.

pub mod admission;
pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod failure;
pub mod faults;
pub mod federation;
pub mod identity;
pub mod inference;
pub mod ledger_demo;
pub mod metrics;
pub mod mobility;
pub mod node;
pub mod rc;
pub mod rc_mobility;
pub mod receipts;
pub mod server;
pub mod wire;

pub use server::{
    start_node, start_node_with, start_rc, HandlerSetup, NodeHandle, RcHandle, StartError,
};

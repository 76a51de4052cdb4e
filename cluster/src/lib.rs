//! # opengrid-cluster
//!
//! The OpenGrid node and routing coordinator (RC): what runs in the `opengrid` binary. Three
//! rooms with one-way arrows (`node → common ← rc`; neither side names the other, checked by the
//! `layering` test below):
//!
//! - [`common`]: what both sides share — identities (`did:mycel`), the control-plane wire
//!   (ractor_cluster messages, signed joins), the node declaration, phi-accrual failure detection
//!   and leases, config rules (`OPENGRID_*` overrides), the client API's error type, metrics, and
//!   start-up plumbing.
//! - [`node`]: the node agent, its config, client API router, mobility (handover, drain,
//!   failover restores, checkpoint replication), receipt signing, inference plane and fault hooks;
//!   `node::server::start_node`.
//! - [`rc`]: the routing coordinator — membership, admission, placement, the session directory,
//!   replica sets and failover, federation over the canopy, settlement of receipts;
//!   `rc::server::start_rc`.
//!
//! Above both: [`client`] (a Rust client that follows `moved` and replays unacknowledged inputs)
//! and [`cli`] (the `opengrid` command line: `node`, `rc`, `status`, `id`, `ledger`, `init`,
//! `completions`, `man`), with [`init`] (the commented config templates of `opengrid init`).
//!
//! Planes: everything here is the **control plane** and runs on its own runtime
//! (`og-control-*` threads); session handlers run on the node's handler runtime
//! (`og-handler-*`). Session traffic goes client → node directly; the RC never proxies it.

pub mod agent_cli;
pub mod cli;
pub mod client;
pub mod common;
pub mod init;
pub mod node;
pub mod openapi;
pub mod rc;

#[cfg(test)]
mod layering;
#[cfg(test)]
mod receipt_flow_tests;

pub use common::runtime::StartError;
pub use node::server::{start_node, start_node_with, HandlerSetup, NodeHandle};
pub use rc::server::{start_rc, RcHandle};

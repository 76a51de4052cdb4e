//! What a node declares when it joins: its [`NodeSpec`], carried in the signed join and kept in
//! the RC's admission table.

use opengrid_session::AcceleratorClass;
use serde::{Deserialize, Serialize};

use crate::common::identity::NodeId;

/// The handler a node lists in [`NodeSpec::handlers`] when it runs pushed agent packages
/// (ADR 0030): sessions naming an `agent` are admitted on such nodes, which fetch the package.
pub const WASM_HANDLER: &str = opengrid_session::AGENT_HANDLER;

/// What a node declares when it joins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// The node.
    pub id: NodeId,
    /// Human-readable name.
    pub name: String,
    /// Jurisdiction code.
    pub jurisdiction: String,
    /// Accelerator class.
    pub accelerator: AcceleratorClass,
    /// CPU cores offered.
    pub cpu_cores: u32,
    /// Memory offered, bytes.
    pub memory: u64,
    /// Handlers served.
    pub handlers: Vec<String>,
    /// Extra capabilities.
    pub capabilities: Vec<String>,
    /// Price, micro-units per input.
    pub price_micros_per_input: u64,
    /// Most sessions at once.
    pub capacity: u32,
    /// Most memory one session may reserve here, bytes (the node's `max_session_share` of its
    /// memory; 0: no cap).
    pub max_session_memory: u64,
    /// Client API base URL, e.g. `http://127.0.0.1:7700`.
    pub api: String,
    /// Migration server (`host:port`): checkpoint replicas, handover target, X2 forwarding.
    pub migration: String,
}

//! The one openraft type configuration used by every OpenGrid Raft group.
//!
//! Application commands and responses are opaque bytes: the consensus layer orders and replicates
//! them, the [`Application`](crate::Application) plugged into the state machine gives them meaning.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// Raft node id. Stable across restarts; chosen by the operator.
pub type NodeId = u64;

/// What the cluster knows about a member: its RPC address (`host:port`).
pub type Node = openraft::BasicNode;

/// An opaque, application-defined command carried in a Raft log entry.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command(pub Vec<u8>);

/// The application's answer to one applied command (opaque bytes; empty for blank/membership
/// entries).
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Response(pub Vec<u8>);

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Command({} bytes)", self.0.len())
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Command({} bytes)", self.0.len())
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Response({} bytes)", self.0.len())
    }
}

openraft::declare_raft_types!(
    /// OpenGrid's Raft type configuration: opaque byte commands, `u64` node ids, address-only
    /// nodes, in-memory snapshot buffers.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A Raft log entry of this type config.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id of this type config.
pub type LogId = openraft::LogId<NodeId>;
/// A vote of this type config.
pub type Vote = openraft::Vote<NodeId>;
/// Storage errors of this type config.
pub type StorageError = openraft::StorageError<NodeId>;
/// The raft handle of this type config.
pub type Raft = openraft::Raft<TypeConfig>;
/// Membership as stored in the state machine.
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
/// Snapshot metadata of this type config.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
/// Metrics of this type config.
pub type RaftMetrics = openraft::RaftMetrics<NodeId, Node>;

//! The one openraft type configuration used by every OpenGrid Raft group.
//!
//! Application commands and responses are opaque bytes: the consensus layer orders and replicates
//! them, the [`Application`](crate::Application) plugged into the state machine gives them meaning.

use std::fmt;
use std::io::Cursor;

use opengrid_session::Did;
use serde::{Deserialize, Serialize};

/// Raft node id. Stable across restarts; chosen by the operator.
pub type NodeId = u64;

/// What the cluster knows about a member: its RPC address (`host:port`) and its identity, the
/// `did:mycel` whose key it must prove on every link (ADR 0025). Replicated in the membership
/// entries of the log and in snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// `host:port` of its RPC server.
    pub addr: String,
    /// Its identity. `None` only in `Default` (which openraft requires): a member without a DID
    /// can be neither reached nor heard, since every link needs one.
    pub did: Option<Did>,
}

impl Node {
    /// A member at `addr` proving `did`.
    pub fn new(addr: impl Into<String>, did: Did) -> Self {
        Node {
            addr: addr.into(),
            did: Some(did),
        }
    }

    /// Parses `DID@HOST:PORT` (the DID pinned) or `HOST:PORT` (no DID: the peer's identity is
    /// not checked beyond the link's handshake, for clients only).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        match s.rsplit_once('@') {
            Some((did, addr)) => {
                let did = did
                    .parse::<Did>()
                    .map_err(|e| format!("`{did}` is not a did:mycel DID ({e})"))?;
                if addr.is_empty() {
                    return Err(format!("`{s}`: empty address"));
                }
                Ok(Node::new(addr, did))
            }
            None if s.is_empty() => Err("empty address".into()),
            None => Ok(Node {
                addr: s.to_string(),
                did: None,
            }),
        }
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.did {
            Some(d) => write!(f, "{d}@{}", self.addr),
            None => f.write_str(&self.addr),
        }
    }
}

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
    /// OpenGrid's Raft type configuration: opaque byte commands, `u64` node ids, nodes named by
    /// address and DID, in-memory snapshot buffers.
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

//! Errors of the consensus crate.

use crate::types::NodeId;

/// What went wrong in a consensus operation. `is_retryable` separates transient conditions
/// (no leader yet, peer unreachable, timeout) from fatal ones.
#[derive(Debug, thiserror::Error)]
pub enum ConsensusError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("codec: {0}")]
    Codec(#[from] opengrid_codec::CodecError),
    #[error("frame: {0}")]
    Frame(#[from] opengrid_codec::FrameError),
    #[error("connection closed by peer")]
    ConnectionClosed,
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("opening the replica database at {path}: {source}")]
    OpenDb {
        path: String,
        source: rocksdb::Error,
    },
    #[error("not the leader (leader: {leader_id:?} at {leader_addr:?}); retry there")]
    NotLeader {
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    #[error("raft: {0}")]
    Raft(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("remote replica failed the request: {0}")]
    Remote(String),
    /// An admin request was refused by the authorizer (here or at the replica that served it).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// A Raft RPC from a sender outside the group's membership was refused.
    #[error("refused: sender {0:?} is not a member of the group")]
    NotAMember(Option<NodeId>),
}

impl ConsensusError {
    /// Whether retrying the same request later (possibly at another replica) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Frame(e) => e.is_connection_loss(),
            Self::Io(_) | Self::ConnectionClosed | Self::Timeout(_) | Self::NotLeader { .. } => {
                true
            }
            _ => false,
        }
    }
}

impl From<crate::types::StorageError> for ConsensusError {
    fn from(e: crate::types::StorageError) -> Self {
        Self::Storage(e.to_string())
    }
}

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
    /// The link to a replica could not be made (refused handshake, unexpected DID, timeout).
    #[error("link: {0}")]
    Link(#[from] opengrid_link::LinkError),
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
    /// A Raft RPC claiming member `sender` came over a link authenticated as another DID.
    #[error("refused: the link is authenticated as {peer}, which is not member {sender:?}")]
    PeerMismatch {
        sender: Option<NodeId>,
        peer: String,
    },
}

impl ConsensusError {
    /// Whether retrying the same request later (possibly at another replica) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Frame(e) => e.is_connection_loss(),
            // A replica restarting or a connection cut mid-handshake (a refused certificate looks
            // the same from here); an unexpected DID is not transient.
            Self::Link(
                opengrid_link::LinkError::Timeout(_) | opengrid_link::LinkError::Handshake(_),
            ) => true,
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

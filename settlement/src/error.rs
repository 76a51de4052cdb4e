//! Errors of the settlement crate.

/// A settlement operation failed (transport, codec, key files, or the ledger said no).
#[derive(Debug, thiserror::Error)]
pub enum SettlementError {
    #[error("consensus: {0}")]
    Consensus(#[from] opengrid_consensus::ConsensusError),
    #[error("codec: {0}")]
    Codec(#[from] opengrid_codec::CodecError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    KeyFile(#[from] opengrid_session::KeyFileError),
    #[error("the ledger rejected the request: {0}")]
    Rejected(String),
    #[error("unexpected ledger answer: {0}")]
    UnexpectedAnswer(String),
    #[error("policy: {0}")]
    Policy(#[from] crate::split::PolicyError),
    #[error("invalid argument: {0}")]
    Invalid(String),
}

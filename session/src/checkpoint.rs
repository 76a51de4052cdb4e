//! The [`Checkpoint`] envelope and its byte format.
//!
//! ```text
//! byte 0      format version: 1 (no journal) or 2 (with the effect journal, ADR 0032)
//! bytes 1..   bincode 2 (standard config, varint) of the fields below (v1 without `journal`)
//! ```
//! A checkpoint without a journal is written in format 1, byte for byte as before, so builds
//! that read only format 1 still read every session that records no effects.
//! The body carries a blake3 hash over a domain-separated encoding of every other field, so a
//! flipped bit anywhere (state, seq, epoch, ids) is detected. Decoding is bounded by
//! [`MAX_CHECKPOINT_BYTES`] and never panics on arbitrary input.

use serde::{Deserialize, Serialize};

use crate::ids::{Epoch, Seq, SessionId};

/// The envelope format of a checkpoint without an effect journal.
pub const CHECKPOINT_FORMAT_VERSION: u8 = 1;
/// The envelope format of a checkpoint carrying an effect journal.
pub const CHECKPOINT_FORMAT_JOURNAL: u8 = 2;

/// Largest encoded checkpoint accepted (state plus header): 1 GiB + 64 KiB.
pub const MAX_CHECKPOINT_BYTES: usize = (1 << 30) + (64 << 10);

const HASH_DOMAIN: &[u8] = b"opengrid.checkpoint.v1\0";

/// A versioned, self-verifying snapshot of one session's state.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Whose state this is.
    pub session_id: SessionId,
    /// Placement epoch of the writer.
    pub epoch: Epoch,
    /// Last input folded into `state`.
    pub seq: Seq,
    /// Handler that produced the state.
    pub handler_id: String,
    /// Version of that handler's state format.
    pub handler_version: u32,
    /// Opaque handler state.
    #[serde(with = "serde_bytes")]
    pub state: Vec<u8>,
    /// blake3 over every other field.
    pub hash: [u8; 32],
    /// The runtime's effect journal for the input after `seq` (opaque here; empty when none):
    /// results of effects that input already ran, so a retry after a crash, failover or
    /// handover replays them instead of running them again (ADR 0032).
    #[serde(with = "serde_bytes", default)]
    pub journal: Vec<u8>,
}

/// Format 1: a checkpoint without the journal field.
#[derive(Serialize, Deserialize)]
struct CheckpointV1 {
    session_id: SessionId,
    epoch: Epoch,
    seq: Seq,
    handler_id: String,
    handler_version: u32,
    #[serde(with = "serde_bytes")]
    state: Vec<u8>,
    hash: [u8; 32],
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("session_id", &self.session_id)
            .field("epoch", &self.epoch)
            .field("seq", &self.seq)
            .field(
                "handler",
                &format_args!("{}@{}", self.handler_id, self.handler_version),
            )
            .field("state_len", &self.state.len())
            .finish()
    }
}

/// Why bytes are not a valid checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// Zero bytes.
    #[error("checkpoint is empty")]
    Empty,
    /// Larger than [`MAX_CHECKPOINT_BYTES`].
    #[error("checkpoint is {len} bytes; the limit is {MAX_CHECKPOINT_BYTES}")]
    TooLarge {
        /// Encoded length.
        len: usize,
    },
    /// A format version this build cannot read.
    #[error("checkpoint format version {0} is not supported (this build reads {CHECKPOINT_FORMAT_VERSION})")]
    UnsupportedVersion(u8),
    /// The body does not decode (truncated or garbled).
    #[error("checkpoint body is malformed: {0}")]
    Malformed(String),
    /// Bytes left after the body.
    #[error("checkpoint has {0} trailing bytes after the body")]
    TrailingBytes(usize),
    /// The stored hash does not match the content.
    #[error(
        "checkpoint hash mismatch for session {session} at {epoch}/{seq}: content was altered"
    )]
    HashMismatch {
        /// Session named in the (untrusted) body.
        session: String,
        /// Epoch named in the body.
        epoch: Epoch,
        /// Seq named in the body.
        seq: Seq,
    },
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_CHECKPOINT_BYTES>()
}

impl Checkpoint {
    /// Builds a checkpoint and computes its hash.
    pub fn new(
        session_id: SessionId,
        epoch: Epoch,
        seq: Seq,
        handler_id: impl Into<String>,
        handler_version: u32,
        state: Vec<u8>,
    ) -> Self {
        let mut cp = Checkpoint {
            session_id,
            epoch,
            seq,
            handler_id: handler_id.into(),
            handler_version,
            state,
            hash: [0; 32],
            journal: Vec::new(),
        };
        cp.hash = cp.compute_hash();
        cp
    }

    /// The same content under `epoch` (a failover or handover writes the state under the new
    /// holder's epoch), effect journal included.
    pub fn restamped(&self, epoch: Epoch) -> Checkpoint {
        Checkpoint::new(
            self.session_id.clone(),
            epoch,
            self.seq,
            self.handler_id.clone(),
            self.handler_version,
            self.state.clone(),
        )
        .with_journal(self.journal.clone())
    }

    /// Whether this checkpoint is newer than `other` of the same session: a later (epoch, seq),
    /// or the same one with a longer effect journal (the journal of the input after `seq` only
    /// grows while that input runs; copies of it on different replicas may lag).
    pub fn supersedes(&self, other: &Checkpoint) -> bool {
        (self.epoch, self.seq, self.journal.len()) > (other.epoch, other.seq, other.journal.len())
    }

    /// [`Checkpoint::new`] with an effect journal (see [`Checkpoint::journal`]).
    pub fn with_journal(mut self, journal: Vec<u8>) -> Self {
        self.journal = journal;
        self.hash = self.compute_hash();
        self
    }

    /// The hash the content should have.
    pub fn compute_hash(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(HASH_DOMAIN);
        let sid = self.session_id.as_str().as_bytes();
        h.update(&(sid.len() as u64).to_le_bytes());
        h.update(sid);
        h.update(&self.epoch.0.to_le_bytes());
        h.update(&self.seq.0.to_le_bytes());
        h.update(&(self.handler_id.len() as u64).to_le_bytes());
        h.update(self.handler_id.as_bytes());
        h.update(&self.handler_version.to_le_bytes());
        h.update(&(self.state.len() as u64).to_le_bytes());
        h.update(&self.state);
        // Absent in format 1: an empty journal hashes as format 1 did.
        if !self.journal.is_empty() {
            h.update(b"journal\0");
            h.update(&(self.journal.len() as u64).to_le_bytes());
            h.update(&self.journal);
        }
        *h.finalize().as_bytes()
    }

    /// Whether the stored hash matches the content.
    pub fn verify(&self) -> Result<(), CheckpointError> {
        if self.compute_hash() == self.hash {
            Ok(())
        } else {
            Err(CheckpointError::HashMismatch {
                session: self.session_id.to_string(),
                epoch: self.epoch,
                seq: self.seq,
            })
        }
    }

    /// Encodes as `version byte ‖ bincode body` (format 1 without a journal, 2 with one).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.state.len() + self.journal.len() + 96);
        // Encoding into a Vec cannot fail for these types except by exceeding the limit, which
        // `Checkpoint::new` callers cannot reach without a >1 GiB state; report it as empty body.
        let r = if self.journal.is_empty() {
            out.push(CHECKPOINT_FORMAT_VERSION);
            let v1 = CheckpointV1 {
                session_id: self.session_id.clone(),
                epoch: self.epoch,
                seq: self.seq,
                handler_id: self.handler_id.clone(),
                handler_version: self.handler_version,
                state: Vec::new(),
                hash: self.hash,
            };
            // The state is written in place of v1's empty one without a copy: same layout.
            encode_v1_borrowed(&v1, &self.state, &mut out)
        } else {
            out.push(CHECKPOINT_FORMAT_JOURNAL);
            bincode::serde::encode_into_std_write(self, &mut out, config()).map(drop)
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "checkpoint encoding failed");
        }
        out
    }

    /// Decodes and verifies bytes produced by [`Checkpoint::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
        let (&version, body) = bytes.split_first().ok_or(CheckpointError::Empty)?;
        if bytes.len() > MAX_CHECKPOINT_BYTES {
            return Err(CheckpointError::TooLarge { len: bytes.len() });
        }
        let (cp, used): (Checkpoint, usize) = match version {
            CHECKPOINT_FORMAT_VERSION => {
                let (v1, used): (CheckpointV1, usize) =
                    bincode::serde::decode_from_slice(body, config())
                        .map_err(|e| CheckpointError::Malformed(e.to_string()))?;
                let cp = Checkpoint {
                    session_id: v1.session_id,
                    epoch: v1.epoch,
                    seq: v1.seq,
                    handler_id: v1.handler_id,
                    handler_version: v1.handler_version,
                    state: v1.state,
                    hash: v1.hash,
                    journal: Vec::new(),
                };
                (cp, used)
            }
            CHECKPOINT_FORMAT_JOURNAL => {
                let (cp, used): (Checkpoint, usize) =
                    bincode::serde::decode_from_slice(body, config())
                        .map_err(|e| CheckpointError::Malformed(e.to_string()))?;
                if cp.journal.is_empty() {
                    // Format 2 always carries a journal; without one it would be written as 1.
                    return Err(CheckpointError::Malformed(
                        "format 2 with an empty journal".into(),
                    ));
                }
                (cp, used)
            }
            v => return Err(CheckpointError::UnsupportedVersion(v)),
        };
        if used != body.len() {
            return Err(CheckpointError::TrailingBytes(body.len() - used));
        }
        cp.verify()?;
        Ok(cp)
    }
}

/// Writes `v1` with `state` as its state field, without copying the state into `v1`.
fn encode_v1_borrowed(
    v1: &CheckpointV1,
    state: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), bincode::error::EncodeError> {
    #[derive(Serialize)]
    struct Borrowed<'a> {
        session_id: &'a SessionId,
        epoch: Epoch,
        seq: Seq,
        handler_id: &'a str,
        handler_version: u32,
        #[serde(with = "serde_bytes")]
        state: &'a [u8],
        hash: [u8; 32],
    }
    let b = Borrowed {
        session_id: &v1.session_id,
        epoch: v1.epoch,
        seq: v1.seq,
        handler_id: &v1.handler_id,
        handler_version: v1.handler_version,
        state,
        hash: v1.hash,
    };
    bincode::serde::encode_into_std_write(&b, out, config()).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(state: Vec<u8>) -> Checkpoint {
        Checkpoint::new(
            SessionId::new("s-1").unwrap(),
            Epoch(3),
            Seq(42),
            "tutor",
            2,
            state,
        )
    }

    #[test]
    fn round_trip() {
        let cp = sample(b"hello".to_vec());
        let bytes = cp.encode();
        assert_eq!(bytes[0], CHECKPOINT_FORMAT_VERSION);
        assert_eq!(Checkpoint::decode(&bytes).unwrap(), cp);
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let cp = sample((0..200u8).collect());
        let bytes = cp.encode();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(Checkpoint::decode(&b).is_err(), "flip at {i} undetected");
        }
    }

    #[test]
    fn truncations_are_errors() {
        let bytes = sample(vec![7; 100]).encode();
        for n in 0..bytes.len() {
            assert!(Checkpoint::decode(&bytes[..n]).is_err(), "truncated to {n}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(
            Checkpoint::decode(&extra),
            Err(CheckpointError::TrailingBytes(1))
        );
    }

    #[test]
    fn a_journal_goes_in_format_2_and_an_empty_one_keeps_format_1() {
        let plain = sample(b"st".to_vec());
        let with = sample(b"st".to_vec()).with_journal(b"effects".to_vec());
        assert_eq!(plain.encode()[0], CHECKPOINT_FORMAT_VERSION);
        assert_eq!(with.encode()[0], CHECKPOINT_FORMAT_JOURNAL);
        assert_eq!(Checkpoint::decode(&with.encode()).unwrap(), with);
        assert_ne!(plain.hash, with.hash, "the journal is hashed");
        // Dropping the journal from a format-2 body is detected.
        let mut forged = with.clone();
        forged.journal.clear();
        assert!(forged.verify().is_err());
        for i in 0..with.encode().len() {
            let mut b = with.encode();
            b[i] ^= 0x40;
            assert!(Checkpoint::decode(&b).is_err(), "flip at {i} undetected");
        }
    }

    /// Bytes of format 1 as the build before the journal wrote them still decode.
    #[test]
    fn format_1_bytes_are_unchanged() {
        let cp = sample(b"hello".to_vec());
        let v1 = CheckpointV1 {
            session_id: cp.session_id.clone(),
            epoch: cp.epoch,
            seq: cp.seq,
            handler_id: cp.handler_id.clone(),
            handler_version: cp.handler_version,
            state: cp.state.clone(),
            hash: cp.hash,
        };
        let mut old = vec![1u8];
        bincode::serde::encode_into_std_write(&v1, &mut old, config()).unwrap();
        assert_eq!(cp.encode(), old);
        assert_eq!(Checkpoint::decode(&old).unwrap(), cp);
    }

    #[test]
    fn version_and_empty() {
        assert_eq!(Checkpoint::decode(&[]), Err(CheckpointError::Empty));
        let mut b = sample(vec![]).encode();
        b[0] = 9;
        assert_eq!(
            Checkpoint::decode(&b),
            Err(CheckpointError::UnsupportedVersion(9))
        );
    }

    #[test]
    fn huge_length_prefix_does_not_allocate() {
        // version 1, then a session-id string claiming u64::MAX bytes.
        let mut b = vec![1u8, 0xfd];
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            Checkpoint::decode(&b),
            Err(CheckpointError::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Checkpoint::decode(&bytes);
        }

        #[test]
        fn decode_of_mutated_valid_never_panics(state in proptest::collection::vec(any::<u8>(), 0..64),
                                                 idx in any::<usize>(), val in any::<u8>()) {
            let mut b = sample(state).encode();
            let i = idx % b.len();
            b[i] = val;
            if let Ok(cp) = Checkpoint::decode(&b) {
                prop_assert!(cp.verify().is_ok());
            }
        }

        #[test]
        fn round_trips(state in proptest::collection::vec(any::<u8>(), 0..2048), epoch in any::<u64>(), seq in any::<u64>()) {
            let cp = Checkpoint::new(SessionId::new("p").unwrap(), Epoch(epoch), Seq(seq), "h", 1, state);
            prop_assert_eq!(Checkpoint::decode(&cp.encode()).unwrap(), cp);
        }
    }
}

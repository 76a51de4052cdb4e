//! The node-to-node migration protocol: length-prefixed bincode 2 frames over TCP.
//!
//! ```text
//! frame = u32 BE length ‖ version byte ‖ bincode(Request | Response)
//! ```
//! Every frame is size-checked before allocation ([`MAX_FRAME`]); a malformed frame closes the
//! connection with a typed error, never a panic.

use opengrid_session::{CheckpointPolicy, Epoch, Seq, SessionId};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Protocol version carried in every frame.
pub const WIRE_VERSION: u8 = 1;
/// Largest frame accepted (a 1 MiB state plus envelope fits many times over).
pub const MAX_FRAME: usize = 64 << 20;

/// A request from one node to another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Store this encoded checkpoint as a replica (fencing applies).
    Replicate {
        /// Encoded [`opengrid_session::Checkpoint`].
        checkpoint: Vec<u8>,
    },
    /// Handover step 1: admit and reserve a session that will arrive with `epoch`.
    Prepare {
        /// The session.
        session: SessionId,
        /// Its handler id.
        handler: String,
        /// Its checkpoint policy.
        policy: CheckpointPolicy,
        /// The epoch it will have here.
        epoch: Epoch,
        /// Replica set the session will use on the target (chosen by the RC).
        replicas: Vec<std::net::SocketAddr>,
    },
    /// Handover step 2: pre-copy (possibly repeated).
    Transfer {
        /// The session.
        session: SessionId,
        /// Encoded checkpoint.
        checkpoint: Vec<u8>,
    },
    /// Handover step 4: final checkpoint; activate with `epoch`.
    Activate {
        /// The session.
        session: SessionId,
        /// Encoded final checkpoint.
        checkpoint: Vec<u8>,
        /// The new epoch.
        epoch: Epoch,
    },
    /// Abandon a prepared handover (to `epoch`).
    Abort {
        /// The session.
        session: SessionId,
        /// The epoch the handover would have activated.
        epoch: Epoch,
    },
    /// X2 forwarding: an input that reached the old holder.
    Forward {
        /// The session.
        session: SessionId,
        /// Input seq.
        seq: Seq,
        /// Input JSON text.
        input: String,
    },
    /// The newest checkpoint held here for `session`, if any.
    Latest {
        /// The session.
        session: SessionId,
    },
    /// Liveness.
    Ping,
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    /// Done.
    Ok,
    /// Prepared (reservation held).
    Ready,
    /// Activated with this epoch.
    Activated {
        /// The epoch now serving.
        epoch: Epoch,
    },
    /// The target already activated; an abort is too late.
    AlreadyActive {
        /// The epoch serving.
        epoch: Epoch,
    },
    /// Refused, with the reason.
    Refused {
        /// Why.
        reason: String,
    },
    /// A replica write was fenced.
    Fenced {
        /// The epoch that owns the session.
        current: Epoch,
    },
    /// Forwarded input's answer: JSON of `Result<Reply<Value>, SessionError>`.
    Forwarded {
        /// JSON text.
        json: String,
    },
    /// Answer to [`Request::Latest`].
    Checkpoint {
        /// Encoded checkpoint, if any.
        checkpoint: Option<Vec<u8>>,
    },
    /// Liveness.
    Pong,
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Socket error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Length over [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    /// Unknown protocol version.
    #[error("unsupported wire version {0} (this node speaks {WIRE_VERSION})")]
    Version(u8),
    /// Body does not decode.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// Empty frame.
    #[error("empty frame")]
    Empty,
}

fn cfg() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// Encodes a message as one frame.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, WireError> {
    let body = bincode::serde::encode_to_vec(msg, cfg())
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    if body.len() + 1 > MAX_FRAME {
        return Err(WireError::TooLarge(body.len() + 1));
    }
    let mut out = Vec::with_capacity(body.len() + 5);
    out.extend_from_slice(&((body.len() + 1) as u32).to_be_bytes());
    out.push(WIRE_VERSION);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a frame body (after the length prefix).
pub fn decode<T: for<'de> Deserialize<'de>>(frame: &[u8]) -> Result<T, WireError> {
    let (&v, body) = frame.split_first().ok_or(WireError::Empty)?;
    if v != WIRE_VERSION {
        return Err(WireError::Version(v));
    }
    let (msg, used) = bincode::serde::decode_from_slice(body, cfg())
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(WireError::Malformed(format!(
            "{} trailing bytes",
            body.len() - used
        )));
    }
    Ok(msg)
}

/// Reads one frame from an async stream.
pub async fn read_frame<R: AsyncReadExt + Unpin, T: for<'de> Deserialize<'de>>(
    r: &mut R,
) -> Result<T, WireError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    decode(&buf)
}

/// Writes one frame to an async stream.
pub async fn write_frame<W: AsyncWriteExt + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), WireError> {
    let bytes = encode(msg)?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame from a blocking stream (used by the synchronous replication path).
pub fn read_frame_blocking<R: std::io::Read, T: for<'de> Deserialize<'de>>(
    r: &mut R,
) -> Result<T, WireError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    decode(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let r = Request::Forward {
            session: SessionId::new("s").unwrap(),
            seq: Seq(3),
            input: "{\"text\":\"hi\"}".into(),
        };
        let f = encode(&r).unwrap();
        let back: Request = decode(&f[4..]).unwrap();
        assert!(matches!(back, Request::Forward { seq: Seq(3), .. }));
        assert!(matches!(decode::<Request>(&[]), Err(WireError::Empty)));
        assert!(matches!(
            decode::<Request>(&[9, 0]),
            Err(WireError::Version(9))
        ));
        for n in 0..f.len() - 4 {
            let _ = decode::<Request>(&f[4..4 + n]);
        }
        let mut x = 12345u64;
        for _ in 0..2000 {
            let len = (x % 64) as usize;
            let mut v = vec![WIRE_VERSION];
            for _ in 0..len {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                v.push((x >> 33) as u8);
            }
            let _ = decode::<Request>(&v);
            let _ = decode::<Response>(&v);
        }
    }
}

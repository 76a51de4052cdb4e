//! The node-to-node migration protocol: [`Request`]/[`Response`] in the shared frame format of
//! [`opengrid_codec::frame`]:
//!
//! ```text
//! frame = u32 BE length ‖ WIRE_VERSION ‖ bincode(Request | Response)
//! ```
//! Every frame is size-checked from its prefix ([`MAX_FRAME`]); a malformed frame closes the
//! connection with a typed [`FrameError`](opengrid_codec::FrameError), never a panic.

use opengrid_codec::FrameCodec;
use opengrid_session::{CheckpointPolicy, Epoch, Seq, SessionId};
use serde::{Deserialize, Serialize};

use crate::grant::SignedGrant;

/// Protocol version carried in every frame (2: RC-signed grants, `Unauthorized`).
pub const WIRE_VERSION: u8 = 2;
/// Largest frame accepted (a 1 MiB state plus envelope fits many times over).
pub const MAX_FRAME: usize = 64 << 20;

/// A request from one node to another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Store this encoded checkpoint as a replica (fencing applies).
    Replicate {
        /// Encoded [`opengrid_session::Checkpoint`].
        #[serde(with = "serde_bytes")]
        checkpoint: Vec<u8>,
        /// The RC's grant for the checkpoint's session and epoch, naming the sender as holder
        /// and the receiver as a replica or source ([`crate::grant`]).
        grant: Option<SignedGrant>,
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
        /// The RC's grant for `epoch`, naming the receiver as holder and the sender as source.
        grant: Option<SignedGrant>,
    },
    /// Handover step 2: pre-copy (possibly repeated).
    Transfer {
        /// The session.
        session: SessionId,
        /// Encoded checkpoint.
        #[serde(with = "serde_bytes")]
        checkpoint: Vec<u8>,
    },
    /// Handover step 4: final checkpoint; activate with `epoch`.
    Activate {
        /// The session.
        session: SessionId,
        /// Encoded final checkpoint.
        #[serde(with = "serde_bytes")]
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
        /// The RC's grant naming the sender as holder and the receiver as a replica or source.
        grant: Option<SignedGrant>,
    },
    /// Liveness.
    Ping,
    /// A holder-to-be shows a replica its grant ahead of the first write (a handover target,
    /// at `Prepare`): the replica checks it as it would a `Replicate`'s and remembers it, so
    /// the first write of the new epoch — inside the blackout — finds it verified.
    Present {
        /// The session.
        session: SessionId,
        /// The RC's grant naming the sender as holder and the receiver as a replica or source.
        grant: Option<SignedGrant>,
    },
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
        #[serde(with = "serde_bytes")]
        checkpoint: Option<Vec<u8>>,
    },
    /// Liveness.
    Pong,
    /// The peer may not do this on this session (no or a wrong grant, not the designated peer).
    Unauthorized {
        /// Why.
        reason: String,
    },
}

/// The client side of the protocol: sends [`Request`]s, receives [`Response`]s.
pub type ClientCodec = FrameCodec<Request, Response>;
/// The server side: receives [`Request`]s, answers [`Response`]s.
pub type ServerCodec = FrameCodec<Response, Request>;

/// A codec for the client side (handover peers, replication).
pub fn client_codec() -> ClientCodec {
    FrameCodec::new(WIRE_VERSION, MAX_FRAME)
}

/// A codec for the server side (the migration server).
pub fn server_codec() -> ServerCodec {
    FrameCodec::new(WIRE_VERSION, MAX_FRAME)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use opengrid_codec::FrameError;
    use tokio_util::codec::Decoder;

    #[test]
    fn round_trip_and_hostile_frames() {
        let r = Request::Forward {
            session: SessionId::new("s").unwrap(),
            seq: Seq(3),
            input: "{\"text\":\"hi\"}".into(),
        };
        let f = client_codec().encode_frame(&r).unwrap();
        let back = server_codec()
            .read_blocking(&mut std::io::Cursor::new(f.as_bytes().to_vec()))
            .unwrap();
        assert!(matches!(back, Request::Forward { seq: Seq(3), .. }));
        // Another version of the protocol is refused by name.
        let mut other = f.as_bytes().to_vec();
        other[4] = WIRE_VERSION + 1;
        assert!(matches!(
            server_codec().decode(&mut BytesMut::from(&other[..])),
            Err(FrameError::Version { .. })
        ));
        // Every prefix of a frame is incomplete, never a panic.
        for n in 0..f.len() {
            let mut buf = BytesMut::from(&f.as_bytes()[..n]);
            assert!(server_codec().decode(&mut buf).unwrap().is_none());
        }
        // Random bodies of the right version: typed errors or messages, never a panic.
        let mut x = 12345u64;
        for _ in 0..2000 {
            let len = (x % 64) as usize;
            let mut body = vec![WIRE_VERSION];
            for _ in 0..len {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                body.push((x >> 33) as u8);
            }
            let mut frame = BytesMut::from(&(body.len() as u32).to_be_bytes()[..]);
            frame.extend_from_slice(&body);
            let _ = server_codec().decode(&mut frame.clone());
            let _ = client_codec().decode(&mut frame);
        }
    }
}

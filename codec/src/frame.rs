//! Length-delimited frames: the one wire format of every node-to-node TCP protocol.
//!
//! ```text
//! frame = u32 BE length ‖ version u8 ‖ bincode 2 body        (length counts version + body)
//! ```
//! Framing is tokio-util's [`LengthDelimitedCodec`] (4-byte big-endian length); [`FrameCodec`]
//! adds the protocol's version byte, the bincode body of a typed message and the limits:
//!
//! - a length over the protocol's `max_frame` is refused as [`FrameError::TooLarge`] as soon as
//!   the 4 length bytes are in, before any buffer grows for the body;
//! - a connection that ends inside a frame is [`FrameError::Truncated`], not a silent end;
//! - a body that does not decode is [`FrameError::Codec`] naming the expected type; a wrong
//!   version byte is [`FrameError::Version`].
//!
//! Async code wraps a socket with [`FrameCodec::framed`] and uses it as a `Stream` of incoming
//! messages and a `Sink` of outgoing ones (`futures::{StreamExt, SinkExt}`); blocking code uses
//! [`FrameCodec::read_blocking`] and writes [`Frame`]s from [`FrameCodec::encode_frame`], which
//! run the very same decoder and encoder.

use std::marker::PhantomData;

use bytes::{Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::codec::{Decoder, Encoder, Framed, LengthDelimitedCodec};

use crate::value::{self, CodecError};

/// Bytes of the length prefix.
pub const HEADER_BYTES: usize = 4;

/// Largest `max_frame` a codec accepts: what the 4-byte length prefix and the value decoder's
/// ceiling both allow.
pub const MAX_FRAME_LIMIT: usize = value::MAX_DECODE_BYTES;

/// Bytes a blocking read asks the socket for at a time, so a peer announcing a large frame and
/// then sending nothing makes this side allocate no more than this.
const READ_CHUNK: usize = 64 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A frame's length is over the protocol's limit (refused before reading its body).
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The announced (or encoded) frame length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The connection ended inside a frame.
    #[error("connection closed after {received} of {expected} bytes of a frame")]
    Truncated {
        /// Bytes of the frame (length prefix included) that arrived.
        received: usize,
        /// Bytes the frame needed as far as known (the length prefix, or prefix plus body).
        expected: usize,
    },
    /// The connection ended before a frame began (blocking reads; a stream just ends).
    #[error("connection closed before a frame")]
    Closed,
    /// A frame without even its version byte.
    #[error("empty frame (no version byte)")]
    Empty,
    /// The peer speaks another version of the protocol.
    #[error("unsupported wire version {got} (this node speaks {expected})")]
    Version {
        /// The version byte received.
        got: u8,
        /// This node's version.
        expected: u8,
    },
    /// The body did not encode or decode (names the type).
    #[error(transparent)]
    Codec(#[from] CodecError),
}

impl FrameError {
    /// Whether the connection itself failed or ended (retry on a new one), as opposed to the
    /// peer sending something this node refuses.
    pub fn is_connection_loss(&self) -> bool {
        matches!(self, Self::Io(_) | Self::Truncated { .. } | Self::Closed)
    }
}

/// One encoded frame of `M`, length prefix included: encode once, send on many connections or
/// measure before sending.
pub struct Frame<M> {
    bytes: Bytes,
    _msg: PhantomData<fn(M)>,
}

impl<M> Frame<M> {
    /// The bytes on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Length on the wire, prefix included.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Never true: a frame holds at least its prefix and version byte.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl<M> Clone for Frame<M> {
    fn clone(&self) -> Self {
        Self {
            bytes: self.bytes.clone(),
            _msg: PhantomData,
        }
    }
}

impl<M> std::fmt::Debug for Frame<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frame({} bytes)", self.bytes.len())
    }
}

/// The codec of one side of one protocol: sends `Out`, receives `In`. A client of a
/// request/response protocol is `FrameCodec<Request, Response>`, its server
/// `FrameCodec<Response, Request>`.
pub struct FrameCodec<Out, In> {
    frames: LengthDelimitedCodec,
    version: u8,
    max_frame: usize,
    /// Length of the frame whose prefix the inner codec has consumed and whose body is pending.
    pending: Option<usize>,
    _msg: PhantomData<fn(Out) -> In>,
}

impl<Out, In> std::fmt::Debug for FrameCodec<Out, In> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameCodec")
            .field("version", &self.version)
            .field("max_frame", &self.max_frame)
            .finish()
    }
}

impl<Out, In> Clone for FrameCodec<Out, In> {
    /// A fresh codec with the same protocol settings (no partially read frame).
    fn clone(&self) -> Self {
        Self::new(self.version, self.max_frame)
    }
}

impl<Out, In> FrameCodec<Out, In> {
    /// A codec for protocol `version` refusing frames over `max_frame` bytes (version byte and
    /// body; at most [`MAX_FRAME_LIMIT`], larger values are clamped to it).
    pub fn new(version: u8, max_frame: usize) -> Self {
        let max_frame = max_frame.min(MAX_FRAME_LIMIT);
        let frames = LengthDelimitedCodec::builder()
            .length_field_length(HEADER_BYTES)
            .big_endian()
            .max_frame_length(max_frame)
            .new_codec();
        Self {
            frames,
            version,
            max_frame,
            pending: None,
            _msg: PhantomData,
        }
    }

    /// The frame limit.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Wraps an async byte stream (a `TcpStream`) into a `Stream` of `In` and a `Sink` of `Out`.
    pub fn framed<S>(self, io: S) -> Framed<S, Self>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
    {
        Framed::new(io, self)
    }
}

impl<Out: Serialize, In> FrameCodec<Out, In> {
    /// Encodes `msg` as one complete frame.
    pub fn encode_frame(&mut self, msg: &Out) -> Result<Frame<Out>, FrameError> {
        let mut dst = BytesMut::new();
        self.encode(msg, &mut dst)?;
        Ok(Frame {
            bytes: dst.freeze(),
            _msg: PhantomData,
        })
    }
}

impl<Out, In: DeserializeOwned> FrameCodec<Out, In> {
    /// Reads exactly one frame from a blocking reader (for synchronous paths such as checkpoint
    /// replication) with the same decoder the async side uses. Never reads past the frame.
    pub fn read_blocking<R: std::io::Read>(&mut self, r: &mut R) -> Result<In, FrameError> {
        self.pending = None;
        let mut buf = BytesMut::with_capacity(HEADER_BYTES);
        loop {
            if let Some(msg) = self.decode(&mut buf)? {
                return Ok(msg);
            }
            // What the frame still lacks: the rest of its prefix, or the rest of its body.
            let missing = match self.pending {
                Some(len) => len - buf.len(),
                None => HEADER_BYTES - buf.len(),
            };
            let start = buf.len();
            buf.resize(start + missing.min(READ_CHUNK), 0);
            let n = loop {
                match r.read(&mut buf[start..]) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    other => break other?,
                }
            };
            buf.truncate(start + n);
            if n == 0 {
                return match self.decode_eof(&mut buf)? {
                    Some(msg) => Ok(msg),
                    None => Err(FrameError::Closed),
                };
            }
        }
    }

    fn decode_body(&self, frame: &[u8]) -> Result<In, FrameError> {
        let (&version, body) = frame.split_first().ok_or(FrameError::Empty)?;
        if version != self.version {
            return Err(FrameError::Version {
                got: version,
                expected: self.version,
            });
        }
        Ok(value::decode(body, self.max_frame)?)
    }
}

impl<Out, In: DeserializeOwned> Decoder for FrameCodec<Out, In> {
    type Item = In;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
        if self.pending.is_none() {
            if let Some(prefix) = src.get(..HEADER_BYTES) {
                let mut be = [0u8; HEADER_BYTES];
                be.copy_from_slice(prefix);
                let len = u32::from_be_bytes(be) as usize;
                if len > self.max_frame {
                    return Err(FrameError::TooLarge {
                        len,
                        limit: self.max_frame,
                    });
                }
                // The inner codec consumes the prefix now, whether or not the body is complete.
                self.pending = Some(len);
            }
        }
        match self.frames.decode(src)? {
            Some(frame) => {
                self.pending = None;
                self.decode_body(&frame).map(Some)
            }
            None => Ok(None),
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<In>, FrameError> {
        if let Some(msg) = self.decode(buf)? {
            return Ok(Some(msg));
        }
        match self.pending {
            None if buf.is_empty() => Ok(None),
            None => Err(FrameError::Truncated {
                received: buf.len(),
                expected: HEADER_BYTES,
            }),
            Some(len) => Err(FrameError::Truncated {
                received: HEADER_BYTES + buf.len(),
                expected: HEADER_BYTES + len,
            }),
        }
    }
}

impl<Out: Serialize, In> Encoder<&Out> for FrameCodec<Out, In> {
    type Error = FrameError;

    fn encode(&mut self, msg: &Out, dst: &mut BytesMut) -> Result<(), FrameError> {
        let mut payload = BytesMut::new();
        payload.extend_from_slice(&[self.version]);
        value::encode_into(msg, &mut payload)?;
        if payload.len() > self.max_frame {
            return Err(FrameError::TooLarge {
                len: payload.len(),
                limit: self.max_frame,
            });
        }
        self.frames.encode(payload.freeze(), dst)?;
        Ok(())
    }
}

impl<Out, In> Encoder<Frame<Out>> for FrameCodec<Out, In> {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame<Out>, dst: &mut BytesMut) -> Result<(), FrameError> {
        let body = frame.len().saturating_sub(HEADER_BYTES);
        if body > self.max_frame {
            return Err(FrameError::TooLarge {
                len: body,
                limit: self.max_frame,
            });
        }
        dst.extend_from_slice(frame.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{SinkExt, StreamExt};
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Msg {
        Ping,
        Text(String),
        Blob(Vec<u8>),
    }

    const V: u8 = 3;

    fn codec() -> FrameCodec<Msg, Msg> {
        FrameCodec::new(V, 1024)
    }

    fn frame_of(m: &Msg) -> Vec<u8> {
        codec().encode_frame(m).unwrap().as_bytes().to_vec()
    }

    #[test]
    fn wire_layout_is_length_version_body() {
        let f = frame_of(&Msg::Text("hi".into()));
        let body = value::encode(&Msg::Text("hi".into())).unwrap();
        assert_eq!(&f[..4], &((body.len() + 1) as u32).to_be_bytes());
        assert_eq!(f[4], V);
        assert_eq!(&f[5..], &body[..]);
    }

    #[test]
    fn round_trips_byte_by_byte_and_back_to_back() {
        let msgs = [
            Msg::Ping,
            Msg::Text("x".repeat(300)),
            Msg::Blob(vec![7; 900]),
        ];
        let mut wire = Vec::new();
        for m in &msgs {
            wire.extend(frame_of(m));
        }
        // Fed one byte at a time.
        let mut c = codec();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in &wire {
            buf.extend_from_slice(&[*b]);
            while let Some(m) = c.decode(&mut buf).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, msgs);
        // All at once.
        let mut buf = BytesMut::from(&wire[..]);
        let mut c = codec();
        let all: Vec<Msg> = std::iter::from_fn(|| c.decode(&mut buf).unwrap()).collect();
        assert_eq!(all, msgs);
        // Blocking reads take one frame each and never read past it.
        let mut r = std::io::Cursor::new(wire.clone());
        for m in &msgs {
            assert_eq!(&codec().read_blocking(&mut r).unwrap(), m);
        }
        assert!(matches!(
            codec().read_blocking(&mut r),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn oversized_length_prefix_is_refused_without_allocating() {
        for len in [1025u32, 1 << 30, u32::MAX] {
            let mut buf = BytesMut::with_capacity(8);
            buf.extend_from_slice(&len.to_be_bytes());
            buf.extend_from_slice(&[V, 0, 0]);
            let cap = buf.capacity();
            match codec().decode(&mut buf) {
                Err(FrameError::TooLarge {
                    len: l,
                    limit: 1024,
                }) => assert_eq!(l, len as usize),
                other => panic!("expected TooLarge, got {other:?}"),
            }
            assert_eq!(buf.capacity(), cap, "no buffer grew for the body");
            let mut r = std::io::Cursor::new(buf.to_vec());
            assert!(matches!(
                codec().read_blocking(&mut r),
                Err(FrameError::TooLarge { .. })
            ));
            // Only the prefix was read from the socket.
            assert_eq!(r.position(), 4);
        }
        // The sender refuses to build one too.
        assert!(matches!(
            codec().encode_frame(&Msg::Blob(vec![0; 2000])),
            Err(FrameError::TooLarge { limit: 1024, .. })
        ));
        let big = FrameCodec::<Msg, Msg>::new(V, 4096)
            .encode_frame(&Msg::Blob(vec![0; 2000]))
            .unwrap();
        assert!(matches!(
            codec().encode(big, &mut BytesMut::new()),
            Err(FrameError::TooLarge { limit: 1024, .. })
        ));
    }

    #[test]
    fn truncated_frames_are_typed() {
        let f = frame_of(&Msg::Text("hello".into()));
        for cut in 1..f.len() {
            let mut buf = BytesMut::from(&f[..cut]);
            let mut c = codec();
            assert!(c.decode(&mut buf).unwrap().is_none());
            match c.decode_eof(&mut buf) {
                Err(FrameError::Truncated { received, expected }) => {
                    assert_eq!(received, cut, "cut {cut}");
                    assert_eq!(expected, if cut < 4 { 4 } else { f.len() });
                }
                other => panic!("cut {cut}: expected Truncated, got {other:?}"),
            }
            let mut r = std::io::Cursor::new(f[..cut].to_vec());
            assert!(matches!(
                codec().read_blocking(&mut r),
                Err(FrameError::Truncated { .. })
            ));
        }
        assert!(codec().decode_eof(&mut BytesMut::new()).unwrap().is_none());
    }

    #[test]
    fn garbage_payloads_are_typed_errors() {
        let with_body = |body: &[u8]| {
            let mut v = ((body.len()) as u32).to_be_bytes().to_vec();
            v.extend_from_slice(body);
            BytesMut::from(&v[..])
        };
        assert!(matches!(
            codec().decode(&mut with_body(&[])),
            Err(FrameError::Empty)
        ));
        assert!(matches!(
            codec().decode(&mut with_body(&[9, 0])),
            Err(FrameError::Version {
                got: 9,
                expected: V
            })
        ));
        match codec().decode(&mut with_body(&[V, 0xff, 0xff, 0xff])) {
            Err(FrameError::Codec(e @ CodecError::Decode { .. })) => {
                assert!(e.to_string().contains("Msg"), "names the type: {e}")
            }
            other => panic!("expected a decode error, got {other:?}"),
        }
        // A valid message followed by junk inside the same frame.
        let mut body = vec![V];
        body.extend(value::encode(&Msg::Ping).unwrap());
        body.push(0);
        assert!(matches!(
            codec().decode(&mut with_body(&body)),
            Err(FrameError::Codec(CodecError::Trailing { trailing: 1, .. }))
        ));
    }

    #[tokio::test]
    async fn framed_socket_request_response() {
        let (a, b) = tokio::io::duplex(64);
        let mut client = FrameCodec::<Msg, Msg>::new(V, 4096).framed(a);
        let mut server = FrameCodec::<Msg, Msg>::new(V, 4096).framed(b);
        let srv = tokio::spawn(async move {
            while let Some(m) = server.next().await {
                let m = m.unwrap();
                server.send(&m).await.unwrap();
            }
        });
        for m in [Msg::Ping, Msg::Blob(vec![1; 3000])] {
            client.send(&m).await.unwrap();
            assert_eq!(client.next().await.unwrap().unwrap(), m);
        }
        // A pre-encoded frame goes out unchanged.
        let f = client
            .codec_mut()
            .encode_frame(&Msg::Text("pre".into()))
            .unwrap();
        client.send(f).await.unwrap();
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Msg::Text("pre".into())
        );
        drop(client);
        srv.await.unwrap();
    }

    #[tokio::test]
    async fn a_stream_ending_inside_a_frame_is_truncated() {
        use tokio::io::AsyncWriteExt;
        let (mut a, b) = tokio::io::duplex(64);
        let f = frame_of(&Msg::Text("hello".into()));
        a.write_all(&f[..f.len() - 1]).await.unwrap();
        drop(a);
        let mut server = codec().framed(b);
        assert!(matches!(
            server.next().await,
            Some(Err(FrameError::Truncated { .. }))
        ));
    }

    proptest::proptest! {
        /// Arbitrary bytes on the wire never panic the decoder, async or blocking.
        #[test]
        fn hostile_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut c = codec();
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = c.decode(&mut buf) {}
            let _ = codec().decode_eof(&mut BytesMut::from(&bytes[..]));
            let _ = codec().read_blocking(&mut std::io::Cursor::new(bytes));
        }
    }
}

//! # opengrid-codec
//!
//! One codec for everything OpenGrid puts on a wire or in a record, so each format is defined
//! once:
//!
//! - [`value`]: bincode 2 values with a size limit, no trailing bytes, and errors naming the type
//!   ([`encode`], [`decode`], [`CodecError`]). Raft log entries, snapshots, ledger commands and
//!   every frame body use it.
//! - [`frame`]: length-delimited frames for every node-to-node TCP protocol (the Raft transport,
//!   the migration protocol): tokio-util's `LengthDelimitedCodec` plus a protocol version byte,
//!   a typed bincode body and a maximum frame size ([`FrameCodec`], [`FrameError`]). The async
//!   side is a `tokio_util::codec::Framed` socket; the blocking side
//!   ([`FrameCodec::read_blocking`]) runs the same decoder.
//!
//! Nothing from the network reaches an allocation unchecked: a frame longer than its protocol's
//! limit is refused from its 4-byte prefix, and value decoding refuses length claims beyond
//! [`MAX_DECODE_BYTES`]. See `docs/adr/0011-one-framing-codec.md`.
//!
//! Plane: control (it carries Raft and handover traffic; it never touches inference data).

pub mod frame;
pub mod value;

pub use frame::{Frame, FrameCodec, FrameError, HEADER_BYTES, MAX_FRAME_LIMIT};
pub use tokio_util::codec::Framed;
pub use value::{decode, encode, encode_into, CodecError, MAX_DECODE_BYTES};

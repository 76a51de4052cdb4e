//! Size-limited bincode 2 values: the encoding of frame bodies, Raft log entries, snapshots and
//! state-machine commands.
//!
//! Encoding is bincode 2's standard configuration (varint integers, little endian). Decoding
//! refuses inputs over a caller-given limit before touching them, trailing bytes after the
//! value, and length claims beyond [`MAX_DECODE_BYTES`]; every error names the Rust type that
//! failed.

use bytes::BufMut;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Hard ceiling on any single value decoded with this crate (a frame body, a log entry, a
/// snapshot); callers pass a tighter limit per use.
pub const MAX_DECODE_BYTES: usize = 256 * 1024 * 1024;

/// Encoding or decoding a value failed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The value could not be encoded (a serde error in its `Serialize`).
    #[error("encoding a {ty} failed: {reason}")]
    Encode {
        /// The Rust type.
        ty: &'static str,
        /// bincode's message.
        reason: String,
    },
    /// The bytes are not a valid encoding of the type.
    #[error("decoding a {ty} failed: {reason}")]
    Decode {
        /// The Rust type expected.
        ty: &'static str,
        /// bincode's message.
        reason: String,
    },
    /// The input is over the caller's limit; it was not decoded.
    #[error("a {ty} of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The Rust type expected.
        ty: &'static str,
        /// Input length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A valid value was followed by more bytes.
    #[error("{trailing} trailing bytes after a decoded {ty}")]
    Trailing {
        /// The Rust type decoded.
        ty: &'static str,
        /// How many bytes were left over.
        trailing: usize,
    },
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_DECODE_BYTES>()
}

/// Encodes `value` with bincode 2.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| CodecError::Encode {
        ty: std::any::type_name::<T>(),
        reason: e.to_string(),
    })
}

/// Appends the bincode 2 encoding of `value` to `dst`.
pub fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    dst: &mut bytes::BytesMut,
) -> Result<(), CodecError> {
    let mut w = dst.writer();
    bincode::serde::encode_into_std_write(value, &mut w, config())
        .map(|_| ())
        .map_err(|e| CodecError::Encode {
            ty: std::any::type_name::<T>(),
            reason: e.to_string(),
        })
}

/// Decodes a `T` from exactly `bytes` (no trailing bytes), refusing inputs over `limit` bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CodecError> {
    let ty = std::any::type_name::<T>();
    if bytes.len() > limit {
        return Err(CodecError::TooLarge {
            ty,
            len: bytes.len(),
            limit,
        });
    }
    let (value, read) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(|e| CodecError::Decode {
            ty,
            reason: e.to_string(),
        })?;
    if read != bytes.len() {
        return Err(CodecError::Trailing {
            ty,
            trailing: bytes.len() - read,
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_typed_refusals() {
        let v: Vec<u64> = vec![1, 2, 3];
        let bytes = encode(&v).unwrap();
        let back: Vec<u64> = decode(&bytes, 1024).unwrap();
        assert_eq!(v, back);
        let mut into = bytes::BytesMut::new();
        encode_into(&v, &mut into).unwrap();
        assert_eq!(&into[..], &bytes[..]);
        assert!(matches!(
            decode::<Vec<u64>>(&bytes, 2),
            Err(CodecError::TooLarge {
                len: 4,
                limit: 2,
                ..
            })
        ));
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            decode::<Vec<u64>>(&long, 1024),
            Err(CodecError::Trailing { trailing: 1, .. })
        ));
        // A length prefix claiming far more elements than present fails, it does not allocate.
        let evil = [0xfc, 0xff, 0xff, 0xff, 0x7f];
        match decode::<Vec<u64>>(&evil, 1024) {
            Err(e @ CodecError::Decode { .. }) => {
                assert!(e.to_string().contains("Vec<u64>"), "names the type: {e}")
            }
            other => panic!("expected a decode error, got {other:?}"),
        }
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = decode::<Vec<String>>(&bytes, 1 << 20);
            let _ = decode::<(u64, Option<Vec<u8>>, std::collections::BTreeMap<String, u32>)>(&bytes, 1 << 20);
        }
    }
}

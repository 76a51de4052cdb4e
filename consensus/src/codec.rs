//! Fallible, size-limited bincode 2 encoding shared by the wire protocol and on-disk records.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Upper bound on any single value decoded by this crate (a frame, a log entry, a snapshot record).
pub const MAX_DECODE_BYTES: usize = 256 * 1024 * 1024;

/// Encoding or decoding failed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("encode failed: {0}")]
    Encode(String),
    #[error("decode failed: {0}")]
    Decode(String),
    #[error("value of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    #[error("{trailing} trailing bytes after a decoded value")]
    Trailing { trailing: usize },
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_DECODE_BYTES>()
}

/// Encode `value` with bincode 2 (standard config, varint integers).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decode a value from exactly `bytes` (no trailing garbage), refusing inputs over `limit` bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CodecError> {
    if bytes.len() > limit {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    let (value, read) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if read != bytes.len() {
        return Err(CodecError::Trailing {
            trailing: bytes.len() - read,
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_rejects_garbage() {
        let v: Vec<u64> = vec![1, 2, 3];
        let bytes = encode(&v).unwrap();
        let back: Vec<u64> = decode(&bytes, 1024).unwrap();
        assert_eq!(v, back);
        assert!(matches!(
            decode::<Vec<u64>>(&bytes, 2),
            Err(CodecError::TooLarge { .. })
        ));
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            decode::<Vec<u64>>(&long, 1024),
            Err(CodecError::Trailing { .. })
        ));
        // A length prefix claiming far more elements than present must fail, not allocate/panic.
        let evil = [0xfc, 0xff, 0xff, 0xff, 0x7f];
        assert!(decode::<Vec<u64>>(&evil, 1024).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = decode::<crate::types::Entry>(&bytes, 1 << 20);
            let _ = decode::<crate::network::RpcRequest>(&bytes, 1 << 20);
        }
    }
}

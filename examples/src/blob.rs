//! `blob`: a counter whose state carries a padding blob of configurable size, so benches can move
//! sessions of a chosen state size (`opengrid-chaos bench handover`).
//!
//! Inputs are either a number, added to the total (the answer is the new total, as with
//! `counter`), or `{"resize": <bytes>}`, which sets the padding to that many pseudo-random
//! (incompressible) bytes and answers the unchanged total.

use opengrid_actors::{HandlerError, SessionContext, SessionHandler};
use opengrid_session::SessionId;
use serde::{Deserialize, Serialize};

/// Largest padding a `resize` input may ask for.
pub const MAX_BLOB_BYTES: usize = 64 << 20;

/// The state: a running total and the padding.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlobState {
    /// Sum of the numeric inputs.
    pub total: i64,
    /// Padding bytes (pseudo-random).
    pub pad: Vec<u8>,
}

/// One input of the `blob` handler.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum BlobInput {
    /// Add to the total.
    Add(i64),
    /// Set the padding size in bytes.
    Resize {
        /// New padding size.
        resize: usize,
    },
}

/// The `blob` handler.
#[derive(Debug, Default, Clone, Copy)]
pub struct Blob;

/// `n` pseudo-random bytes (xorshift64*, fixed seed).
fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let w = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        let take = (n - v.len()).min(8);
        v.extend_from_slice(&w[..take]);
    }
    v
}

impl SessionHandler for Blob {
    type State = BlobState;
    type Input = BlobInput;
    type Output = i64;

    fn id(&self) -> &str {
        "blob"
    }

    fn init(&self, _session: &SessionId) -> BlobState {
        BlobState::default()
    }

    async fn handle(
        &self,
        st: &mut BlobState,
        input: BlobInput,
        _ctx: &SessionContext,
    ) -> Result<i64, HandlerError> {
        match input {
            BlobInput::Add(add) => {
                st.total = st.total.checked_add(add).ok_or_else(|| {
                    HandlerError::new("overflow", format!("{} + {add} overflows i64", st.total))
                })?;
            }
            BlobInput::Resize { resize } => {
                if resize > MAX_BLOB_BYTES {
                    return Err(HandlerError::new(
                        "too_large",
                        format!("resize {resize} > {MAX_BLOB_BYTES} bytes"),
                    ));
                }
                st.pad = noise(resize);
            }
        }
        Ok(st.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_parse_and_noise_has_the_size() {
        let a: BlobInput = serde_json::from_str("3").unwrap();
        assert_eq!(a, BlobInput::Add(3));
        let r: BlobInput = serde_json::from_str(r#"{"resize": 4096}"#).unwrap();
        assert_eq!(r, BlobInput::Resize { resize: 4096 });
        assert_eq!(noise(4097).len(), 4097);
        assert_ne!(noise(64)[..8], noise(64)[8..16]);
    }

    #[test]
    fn state_size_follows_resize() {
        let h = Blob;
        let st = BlobState {
            total: 7,
            pad: noise(65_536),
        };
        let bytes = h.encode_state(&st).unwrap();
        assert!(bytes.len() >= 65_536 && bytes.len() < 65_536 + 32);
        assert_eq!(h.decode_state(&bytes).unwrap(), st);
    }
}

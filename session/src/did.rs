//! `did:mycel` identifiers: `did:mycel:z` + base58btc(multicodec `ed25519-pub` (0xed 0x01) ‖
//! 32-byte public key). The same shape as `did:key`, under the Mycel method name.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The method prefix.
pub const PREFIX: &str = "did:mycel:";
/// Multicodec varint for an ed25519 public key.
const MULTICODEC_ED25519_PUB: [u8; 2] = [0xed, 0x01];
/// Longest accepted DID string (defends decoders against huge inputs).
pub const MAX_DID_LEN: usize = 128;

/// Why a string is not a valid `did:mycel` identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DidError {
    #[error("a DID is at most {MAX_DID_LEN} characters, got {0}")]
    TooLong(usize),
    #[error("expected the prefix `did:mycel:`")]
    MissingPrefix,
    #[error("expected a multibase base58btc key starting with `z`")]
    NotBase58btc,
    #[error("invalid base58btc: {0}")]
    InvalidBase58(String),
    #[error("expected multicodec ed25519-pub (0xed01)")]
    WrongMulticodec,
    #[error("expected a 32-byte ed25519 key, got {0} bytes")]
    WrongKeyLength(usize),
    #[error("not a valid ed25519 public key")]
    InvalidKey,
}

/// A node's or RC's printable identity; always holds a valid ed25519 public key.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Did {
    text: String,
    key: [u8; 32],
}

impl Did {
    /// The DID of a public key.
    ///
    /// Base58 is quadratic in the length and a process meets few keys (its colony's nodes,
    /// RCs, clients) many times — the RC names a node in every directory entry, grant and
    /// event: the strings are kept in a small bounded cache (a profile of 1,000 failovers
    /// showed 30 % of the RC's control thread in `bs58::encode`; issue #20).
    pub fn from_public_key(key: &ed25519_dalek::VerifyingKey) -> Self {
        const CACHED: usize = 65_536;
        static CACHE: std::sync::LazyLock<
            std::sync::Mutex<std::collections::HashMap<[u8; 32], String>>,
        > = std::sync::LazyLock::new(Default::default);
        let k = key.to_bytes();
        let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(text) = cache.get(&k) {
            return Self {
                text: text.clone(),
                key: k,
            };
        }
        let mut bytes = Vec::with_capacity(34);
        bytes.extend_from_slice(&MULTICODEC_ED25519_PUB);
        bytes.extend_from_slice(&k);
        let text = format!("{PREFIX}z{}", bs58::encode(bytes).into_string());
        if cache.len() >= CACHED {
            cache.clear();
        }
        cache.insert(k, text.clone());
        Self { text, key: k }
    }

    /// Parse and validate a DID string.
    pub fn parse(s: &str) -> Result<Self, DidError> {
        if s.len() > MAX_DID_LEN {
            return Err(DidError::TooLong(s.len()));
        }
        let rest = s.strip_prefix(PREFIX).ok_or(DidError::MissingPrefix)?;
        let b58 = rest.strip_prefix('z').ok_or(DidError::NotBase58btc)?;
        let bytes = bs58::decode(b58)
            .into_vec()
            .map_err(|e| DidError::InvalidBase58(e.to_string()))?;
        let key = bytes
            .strip_prefix(&MULTICODEC_ED25519_PUB[..])
            .ok_or(DidError::WrongMulticodec)?;
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| DidError::WrongKeyLength(key.len()))?;
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&key).map_err(|_| DidError::InvalidKey)?;
        let canonical = Self::from_public_key(&vk);
        // base58 has a single encoding per byte string, so this holds for every valid input.
        debug_assert_eq!(canonical.text, s);
        Ok(canonical)
    }

    /// The ed25519 public key bytes.
    pub fn public_key_bytes(&self) -> [u8; 32] {
        self.key
    }

    /// The ed25519 verifying key.
    pub fn verifying_key(&self) -> ed25519_dalek::VerifyingKey {
        ed25519_dalek::VerifyingKey::from_bytes(&self.key).expect("validated at construction")
    }

    /// The printable form.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Did {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Did {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Did {
    type Err = DidError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Did {
    type Error = DidError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Did> for String {
    fn from(d: Did) -> Self {
        d.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cached_encoding_is_the_encoding_past_the_cache_bound() {
        // More keys than the cache holds (it is cleared when full), each asked for twice: every
        // answer round-trips through `parse` to its own key.
        for (round, keys) in [(0, 66_000u32), (1, 1_000)] {
            for i in 0..keys {
                let mut seed = [0u8; 32];
                seed[..4].copy_from_slice(&i.to_le_bytes());
                let vk = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
                let did = Did::from_public_key(&vk);
                assert_eq!(
                    Did::parse(did.as_str()).unwrap().public_key_bytes(),
                    vk.to_bytes(),
                    "round {round} key {i}"
                );
            }
        }
    }

    #[test]
    fn roundtrip_and_typed_errors() {
        let k = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let did = Did::from_public_key(&k.verifying_key());
        assert!(did.as_str().starts_with("did:mycel:z6Mk"), "{did}");
        assert_eq!(Did::parse(did.as_str()).unwrap(), did);
        assert_eq!(did.public_key_bytes(), k.verifying_key().to_bytes());
        assert_eq!(Did::parse("did:key:z6Mk"), Err(DidError::MissingPrefix));
        assert_eq!(Did::parse("did:mycel:f00"), Err(DidError::NotBase58btc));
        assert!(matches!(
            Did::parse("did:mycel:z0OIl"),
            Err(DidError::InvalidBase58(_))
        ));
        let wrong_codec = format!(
            "did:mycel:z{}",
            bs58::encode([[0x12u8, 0x00].as_slice(), &[1; 32]].concat()).into_string()
        );
        assert_eq!(Did::parse(&wrong_codec), Err(DidError::WrongMulticodec));
        let short = format!(
            "did:mycel:z{}",
            bs58::encode([0xedu8, 0x01, 1, 2]).into_string()
        );
        assert_eq!(Did::parse(&short), Err(DidError::WrongKeyLength(2)));
        assert!(matches!(
            Did::parse(&"x".repeat(500)),
            Err(DidError::TooLong(500))
        ));
        let json = serde_json::to_string(&did).unwrap();
        assert_eq!(serde_json::from_str::<Did>(&json).unwrap(), did);
        assert!(serde_json::from_str::<Did>("\"did:mycel:zzz\"").is_err());
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = Did::parse(&s);
            let _ = Did::parse(&format!("did:mycel:z{s}"));
        }
    }
}

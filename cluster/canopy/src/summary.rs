//! The colony summary (the seed's `ColonyDescriptor`) an RC publishes on the canopy, its canonical
//! bytes, its signature, and the bounded decoder every received message goes through.
//!
//! Wire format (bincode 2, standard config, via serde): `SignedSummary { summary, signature }`
//! where `signature = ed25519(rc key, DOMAIN ‖ canonical(summary))` and `canonical` is the bincode
//! encoding of the summary (maps are `BTreeMap`s, so the encoding is unique for a value). The
//! receiver re-encodes the decoded summary to verify, so two encodings of the same summary can never
//! carry two different meanings.

use std::collections::BTreeMap;

use ed25519_dalek::{Signer, SigningKey};
use opengrid_session::{jurisdiction, AcceleratorClass, Did};
use serde::{Deserialize, Serialize};

/// Domain separator prefixed to the canonical bytes before signing, so a summary signature can
/// never be replayed as a receipt or join signature made with the same key (and vice versa).
pub const DOMAIN: &[u8] = b"opengrid/canopy/colony-summary/v1\0";

/// Longest id-like string in a summary (colony id, region, map keys).
pub const MAX_NAME_LEN: usize = 64;
/// Longest address string in a summary.
pub const MAX_ADDR_LEN: usize = 256;
/// Most jurisdictions one colony may declare.
pub const MAX_JURISDICTIONS: usize = 64;
/// Most entries in each capacity map.
pub const MAX_MAP_ENTRIES: usize = 256;
/// Hard ceiling on an encoded signed summary, whatever the configured limit.
pub const MAX_SUMMARY_BYTES: usize = 256 * 1024;

/// Free capacity of one hardware class in a colony.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardwareCapacity {
    /// Sessions that can still be admitted on nodes of this class.
    pub free_slots: u32,
    /// Free memory summed over nodes of this class, bytes.
    pub free_memory_bytes: u64,
    /// Largest free memory on a single node of this class, bytes (a session needs it on one node).
    pub max_node_free_memory_bytes: u64,
}

/// Price range of a colony's nodes, in micro-units per processed input (the unit of the cluster's
/// node price).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceRange {
    /// Cheapest node.
    pub min_micros_per_input: u64,
    /// Most expensive node.
    pub max_micros_per_input: u64,
}

/// What an RC tells the canopy about its colony (the seed's `ColonyDescriptor`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColonySummary {
    /// Colony id, unique in the federation (e.g. `"eu-west-1"`).
    pub colony_id: String,
    /// Region label (e.g. `"eu-west"`).
    pub region: String,
    /// Jurisdictions the colony's nodes are located in (codes known to
    /// [`opengrid_session::jurisdiction`]).
    pub jurisdictions: Vec<String>,
    /// Free capacity by accelerator class.
    pub hardware: BTreeMap<AcceleratorClass, HardwareCapacity>,
    /// Free session slots by handler id (nodes that run the handler).
    pub handlers: BTreeMap<String, u32>,
    /// Free session slots by capability.
    pub capabilities: BTreeMap<String, u32>,
    /// Colony load in permille (0 = idle, 1000 = full); an integer so ordering is total.
    pub load_permille: u16,
    /// Price range.
    pub price: PriceRange,
    /// The RC's client API (where a client is sent), e.g. `http://10.0.0.1:7700`.
    pub rc_client_api: String,
    /// The RC's control address (where another RC sends an admission request).
    pub rc_control_addr: String,
    /// The RC's identity; the summary is signed by this key.
    pub rc_did: Did,
    /// Strictly increasing per RC; receivers drop anything not newer than what they have seen.
    pub seq: u64,
    /// When the RC issued the summary, unix milliseconds.
    pub issued_at_ms: u64,
}

/// A summary and the RC's signature over [`DOMAIN`] ‖ its canonical bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedSummary {
    /// The summary.
    pub summary: ColonySummary,
    /// ed25519 signature by `summary.rc_did`.
    pub signature: [u8; 64],
}

/// Wire shape (serde cannot derive for `[u8; 64]`).
#[derive(Serialize, Deserialize)]
struct Wire {
    summary: ColonySummary,
    signature: Vec<u8>,
}

/// Why bytes are not a well-formed signed summary. Never a panic.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Larger than the receiver's limit.
    #[error("summary is {len} bytes; the limit is {limit}")]
    TooLarge {
        /// Received size.
        len: usize,
        /// Limit in force.
        limit: usize,
    },
    /// Not valid bincode for a signed summary (includes invalid DIDs and unknown enum values).
    #[error("undecodable summary: {0}")]
    Bincode(String),
    /// Bytes left over after the summary.
    #[error("{0} trailing bytes after the summary")]
    Trailing(usize),
    /// A field is out of its allowed range.
    #[error("invalid summary field {field}: {reason}")]
    Field {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

fn field(field: &'static str, reason: impl Into<String>) -> DecodeError {
    DecodeError::Field {
        field,
        reason: reason.into(),
    }
}

impl ColonySummary {
    /// Checks every field's range; a summary failing this is never signed or accepted.
    pub fn validate(&self) -> Result<(), DecodeError> {
        check_name("colony_id", &self.colony_id)?;
        check_name("region", &self.region)?;
        if self.jurisdictions.is_empty() {
            return Err(field("jurisdictions", "a colony serves at least one"));
        }
        if self.jurisdictions.len() > MAX_JURISDICTIONS {
            return Err(field(
                "jurisdictions",
                format!("at most {MAX_JURISDICTIONS}"),
            ));
        }
        if let Some(j) = self
            .jurisdictions
            .iter()
            .find(|j| !jurisdiction::is_known(j))
        {
            return Err(field(
                "jurisdictions",
                format!("unknown jurisdiction {j:?}"),
            ));
        }
        if self.hardware.len() > MAX_MAP_ENTRIES {
            return Err(field("hardware", format!("at most {MAX_MAP_ENTRIES}")));
        }
        for (name, map) in [
            ("handlers", &self.handlers),
            ("capabilities", &self.capabilities),
        ] {
            if map.len() > MAX_MAP_ENTRIES {
                return Err(field(name, format!("at most {MAX_MAP_ENTRIES} entries")));
            }
            for k in map.keys() {
                check_name(name, k)?;
            }
        }
        if self.load_permille > 1000 {
            return Err(field(
                "load_permille",
                format!("{} is above 1000", self.load_permille),
            ));
        }
        if self.price.min_micros_per_input > self.price.max_micros_per_input {
            return Err(field("price", "min is above max"));
        }
        for (name, a) in [
            ("rc_client_api", &self.rc_client_api),
            ("rc_control_addr", &self.rc_control_addr),
        ] {
            if a.is_empty() || a.len() > MAX_ADDR_LEN {
                return Err(field(name, format!("1 to {MAX_ADDR_LEN} characters")));
            }
        }
        Ok(())
    }

    /// Load as a fraction in `0..=1`.
    pub fn load(&self) -> f64 {
        f64::from(self.load_permille) / 1000.0
    }

    /// The canonical bytes of this summary (what is signed, after [`DOMAIN`]).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard())
            .expect("encoding plain data into a Vec cannot fail")
    }

    fn signing_input(&self) -> Vec<u8> {
        let mut v = DOMAIN.to_vec();
        v.extend_from_slice(&self.canonical_bytes());
        v
    }

    /// Signs with `key`. The caller keeps `rc_did` equal to `key`'s DID, or receivers reject the
    /// summary as badly signed.
    pub fn sign(self, key: &SigningKey) -> SignedSummary {
        let signature = key.sign(&self.signing_input()).to_bytes();
        SignedSummary {
            summary: self,
            signature,
        }
    }
}

fn check_name(name: &'static str, s: &str) -> Result<(), DecodeError> {
    if s.is_empty() || s.len() > MAX_NAME_LEN {
        return Err(field(name, format!("1 to {MAX_NAME_LEN} bytes")));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(field(name, "control characters are not allowed"));
    }
    Ok(())
}

impl SignedSummary {
    /// Verifies the signature against the summary's own `rc_did`.
    pub fn verify(&self) -> Result<(), ed25519_dalek::SignatureError> {
        let sig = ed25519_dalek::Signature::from_bytes(&self.signature);
        self.summary
            .rc_did
            .verifying_key()
            .verify_strict(&self.summary.signing_input(), &sig)
    }

    /// Wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        let wire = Wire {
            summary: self.summary.clone(),
            signature: self.signature.to_vec(),
        };
        bincode::serde::encode_to_vec(&wire, bincode::config::standard())
            .expect("encoding plain data into a Vec cannot fail")
    }

    /// Decodes wire bytes of at most `limit` bytes (capped at [`MAX_SUMMARY_BYTES`]) and checks the
    /// field ranges. Does not verify the signature (see [`SignedSummary::verify`]).
    pub fn decode(bytes: &[u8], limit: usize) -> Result<SignedSummary, DecodeError> {
        let limit = limit.min(MAX_SUMMARY_BYTES);
        if bytes.len() > limit {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                limit,
            });
        }
        let config = bincode::config::standard().with_limit::<MAX_SUMMARY_BYTES>();
        let (wire, used): (Wire, usize) = bincode::serde::decode_from_slice(bytes, config)
            .map_err(|e| DecodeError::Bincode(e.to_string()))?;
        if used != bytes.len() {
            return Err(DecodeError::Trailing(bytes.len() - used));
        }
        let signature: [u8; 64] = wire.signature.as_slice().try_into().map_err(|_| {
            field(
                "signature",
                format!("{} bytes, not 64", wire.signature.len()),
            )
        })?;
        wire.summary.validate()?;
        Ok(SignedSummary {
            summary: wire.summary,
            signature,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    pub(crate) fn did(seed: u8) -> Did {
        Did::from_public_key(&key(seed).verifying_key())
    }

    pub(crate) fn sample(seed: u8, seq: u64) -> ColonySummary {
        ColonySummary {
            colony_id: format!("colony-{seed}"),
            region: "eu-west".into(),
            jurisdictions: vec!["DE".into()],
            hardware: BTreeMap::from([(
                AcceleratorClass::None,
                HardwareCapacity {
                    free_slots: 10,
                    free_memory_bytes: 10 << 30,
                    max_node_free_memory_bytes: 4 << 30,
                },
            )]),
            handlers: BTreeMap::from([("tutor".to_string(), 10)]),
            capabilities: BTreeMap::new(),
            load_permille: 250,
            price: PriceRange {
                min_micros_per_input: 5,
                max_micros_per_input: 20,
            },
            rc_client_api: "http://127.0.0.1:7700".into(),
            rc_control_addr: "127.0.0.1:7701".into(),
            rc_did: did(seed),
            seq,
            issued_at_ms: 1_700_000_000_000 + seq,
        }
    }

    #[test]
    fn sign_encode_decode_verify() {
        let signed = sample(1, 7).sign(&key(1));
        let bytes = signed.encode();
        let back = SignedSummary::decode(&bytes, 64 * 1024).unwrap();
        assert_eq!(back, signed);
        back.verify().unwrap();
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let signed = sample(1, 7).sign(&key(1));
        let mut tampered = signed.clone();
        tampered.summary.load_permille = 0;
        assert!(tampered.verify().is_err());
        let mut wrong_key = sample(1, 7).sign(&key(2));
        assert!(wrong_key.verify().is_err());
        wrong_key.summary.rc_did = did(2);
        assert!(wrong_key.verify().is_err(), "signature covers rc_did");
    }

    #[test]
    fn domain_separation() {
        let s = sample(1, 7);
        let plain = key(1).sign(&s.canonical_bytes()).to_bytes();
        let forged = SignedSummary {
            summary: s,
            signature: plain,
        };
        assert!(forged.verify().is_err());
    }

    #[test]
    fn decoder_limits_and_field_checks() {
        let bytes = sample(1, 7).sign(&key(1)).encode();
        assert!(matches!(
            SignedSummary::decode(&bytes, 10),
            Err(DecodeError::TooLarge { .. })
        ));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(
            SignedSummary::decode(&trailing, 1 << 16),
            Err(DecodeError::Trailing(1))
        );
        assert!(matches!(
            SignedSummary::decode(&bytes[..bytes.len() - 3], 1 << 16),
            Err(DecodeError::Bincode(_))
        ));
        let mut bad = sample(1, 7);
        bad.load_permille = 1001;
        let err = SignedSummary::decode(&bad.sign(&key(1)).encode(), 1 << 16).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::Field {
                    field: "load_permille",
                    ..
                }
            ),
            "{err}"
        );
        let mut bad = sample(1, 7);
        bad.jurisdictions = vec!["XX".into()];
        let err = SignedSummary::decode(&bad.sign(&key(1)).encode(), 1 << 16).unwrap_err();
        assert!(err.to_string().contains("jurisdictions"), "{err}");
    }

    #[test]
    fn summary_json_is_readable() {
        let json = serde_json::to_string(&sample(1, 7)).unwrap();
        assert!(json.contains("\"none\""), "{json}");
        let back: ColonySummary = serde_json::from_str(&json).unwrap();
        assert_eq!(back, sample(1, 7));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let _ = SignedSummary::decode(&bytes, 64 * 1024);
        }

        #[test]
        fn decoding_mutated_summaries_never_panics(
            idx in 0usize..4096,
            val in proptest::num::u8::ANY,
            cut in 0usize..4096,
        ) {
            let mut bytes = sample(3, 99).sign(&key(3)).encode();
            let n = bytes.len();
            bytes[idx % n] = val;
            bytes.truncate(cut.max(1).min(n));
            if let Ok(s) = SignedSummary::decode(&bytes, 64 * 1024) {
                let _ = s.verify();
            }
        }
    }
}

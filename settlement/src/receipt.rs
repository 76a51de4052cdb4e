//! Compute receipts (CR): a session's usage for one window, signed by the serving node and
//! co-signed by the routing coordinator (RC) that routed the session.
//!
//! Canonical bytes = `b"opengrid/compute-receipt/v1\0"` ‖ bincode 2 (standard config, fixed-width
//! little-endian integers) of the [`Receipt`] fields in declaration order. The receipt digest
//! (its `ReceiptRef`) is blake3 of the canonical bytes. The node signs
//! `b"opengrid/receipt-node-sig/v1\0" ‖ digest`; the RC co-signs
//! `b"opengrid/receipt-rc-cosig/v1\0" ‖ digest ‖ node signature`, so a co-signature vouches for
//! exactly one node-signed receipt.

use std::fmt;

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::did::Did;
use crate::keys::Keypair;

const DOMAIN_RECEIPT: &[u8] = b"opengrid/compute-receipt/v1\0";
const DOMAIN_NODE_SIG: &[u8] = b"opengrid/receipt-node-sig/v1\0";
const DOMAIN_RC_SIG: &[u8] = b"opengrid/receipt-rc-cosig/v1\0";
/// Longest accepted session id, in bytes.
pub const MAX_SESSION_ID_LEN: usize = 128;

/// A receipt's unique id (chosen by the node, e.g. random).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReceiptId(pub [u8; 16]);

impl ReceiptId {
    /// A random id.
    pub fn random() -> Self {
        Self(rand::random())
    }
}

impl fmt::Debug for ReceiptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for ReceiptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Usage measured for one window (from the actors' usage metering).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Session inputs processed.
    pub inputs: u64,
    /// CPU time, milliseconds.
    pub cpu_ms: u64,
    /// Bytes in + out.
    pub bytes: u64,
    /// Model tokens, when the handler knows them.
    pub tokens: Option<u64>,
}

/// The usage window, milliseconds since the Unix epoch, `start_ms <= end_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UsageWindow {
    pub start_ms: u64,
    pub end_ms: u64,
}

/// A compute receipt's fields (what gets signed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub receipt_id: ReceiptId,
    pub session_id: String,
    /// The serving node.
    pub node: Did,
    /// The routing coordinator that routed the session.
    pub rc: Did,
    pub window: UsageWindow,
    pub usage: Usage,
    /// Fee in integer micro-units.
    pub fee_micros: u64,
    /// Per-node unique number; a reused (node, nonce) pair is a replay.
    pub nonce: u64,
}

fn canonical_config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_fixed_int_encoding()
        .with_little_endian()
}

impl Receipt {
    /// The canonical signed bytes (domain prefix ‖ fixed-order bincode).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = DOMAIN_RECEIPT.to_vec();
        // Encoding a plain struct of integers and strings into a Vec cannot fail.
        let body = bincode::serde::encode_to_vec(self, canonical_config()).unwrap_or_default();
        out.extend_from_slice(&body);
        out
    }

    /// blake3 of the canonical bytes: the receipt's `ReceiptRef`.
    pub fn digest(&self) -> [u8; 32] {
        *blake3::hash(&self.canonical_bytes()).as_bytes()
    }

    /// Node side: sign the receipt with the serving node's key.
    pub fn sign(self, node_key: &Keypair) -> SignedReceipt {
        let digest = self.digest();
        let node_sig = Sig(node_key.sign(&node_message(&digest)));
        SignedReceipt {
            receipt: self,
            digest,
            node_sig,
            rc_sig: None,
        }
    }
}

fn node_message(digest: &[u8; 32]) -> Vec<u8> {
    [DOMAIN_NODE_SIG, digest.as_slice()].concat()
}

fn rc_message(digest: &[u8; 32], node_sig: &Sig) -> Vec<u8> {
    [DOMAIN_RC_SIG, digest.as_slice(), node_sig.0.as_slice()].concat()
}

/// A 64-byte ed25519 signature (serialized as bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sig(pub [u8; 64]);

impl fmt::Debug for Sig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sig(")?;
        self.0[..4].iter().try_for_each(|b| write!(f, "{b:02x}"))?;
        write!(f, "…)")
    }
}

impl Serialize for Sig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Sig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Sig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Sig, E> {
                v.try_into()
                    .map(Sig)
                    .map_err(|_| E::invalid_length(v.len(), &self))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Sig, E> {
                self.visit_bytes(&v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Sig, A::Error> {
                let mut out = [0u8; 64];
                for (i, b) in out.iter_mut().enumerate() {
                    *b = seq
                        .next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                if seq.next_element::<u8>()?.is_some() {
                    return Err(serde::de::Error::invalid_length(65, &self));
                }
                Ok(Sig(out))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Which signature failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Signer {
    Node,
    Rc,
}

/// Why a signed receipt does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum VerifyError {
    #[error("a field was changed after signing (digest mismatch)")]
    TamperedField,
    #[error("forged {0:?} signature")]
    ForgedSignature(Signer),
    #[error("missing RC co-signature")]
    MissingCoSignature,
}

/// A receipt with its digest, the node's signature and (once co-signed) the RC's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedReceipt {
    pub receipt: Receipt,
    /// blake3 of the canonical bytes at signing time.
    pub digest: [u8; 32],
    pub node_sig: Sig,
    pub rc_sig: Option<Sig>,
}

impl SignedReceipt {
    /// RC side: co-sign (after [`SignedReceipt::verify_node`]).
    pub fn co_sign(mut self, rc_key: &Keypair) -> Self {
        self.rc_sig = Some(Sig(rc_key.sign(&rc_message(&self.digest, &self.node_sig))));
        self
    }

    /// Check the digest and the node signature against `node_key`.
    pub fn verify_node(&self, node_key: &VerifyingKey) -> Result<(), VerifyError> {
        if self.receipt.digest() != self.digest {
            return Err(VerifyError::TamperedField);
        }
        node_key
            .verify_strict(
                &node_message(&self.digest),
                &Signature::from_bytes(&self.node_sig.0),
            )
            .map_err(|_| VerifyError::ForgedSignature(Signer::Node))
    }

    /// Check digest, node signature and RC co-signature.
    pub fn verify(
        &self,
        node_key: &VerifyingKey,
        rc_key: &VerifyingKey,
    ) -> Result<(), VerifyError> {
        self.verify_node(node_key)?;
        let rc_sig = self
            .rc_sig
            .as_ref()
            .ok_or(VerifyError::MissingCoSignature)?;
        rc_key
            .verify_strict(
                &rc_message(&self.digest, &self.node_sig),
                &Signature::from_bytes(&rc_sig.0),
            )
            .map_err(|_| VerifyError::ForgedSignature(Signer::Rc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(node: &Keypair, rc: &Keypair, nonce: u64) -> Receipt {
        Receipt {
            receipt_id: ReceiptId([nonce as u8; 16]),
            session_id: "s-1".into(),
            node: node.did(),
            rc: rc.did(),
            window: UsageWindow {
                start_ms: 1_000,
                end_ms: 2_000,
            },
            usage: Usage {
                inputs: 3,
                cpu_ms: 40,
                bytes: 500,
                tokens: Some(7),
            },
            fee_micros: 1_234,
            nonce,
        }
    }

    #[test]
    fn sign_cosign_verify_and_detect_tampering() {
        let node = Keypair::from_seed([1; 32]);
        let rc = Keypair::from_seed([2; 32]);
        let signed = sample(&node, &rc, 1).sign(&node);
        assert_eq!(
            signed.verify(&node.verifying_key(), &rc.verifying_key()),
            Err(VerifyError::MissingCoSignature)
        );
        let signed = signed.co_sign(&rc);
        signed
            .verify(&node.verifying_key(), &rc.verifying_key())
            .unwrap();
        let mut t = signed.clone();
        t.receipt.fee_micros += 1;
        assert_eq!(
            t.verify(&node.verifying_key(), &rc.verifying_key()),
            Err(VerifyError::TamperedField)
        );
        let other = Keypair::from_seed([3; 32]);
        assert_eq!(
            signed.verify(&other.verifying_key(), &rc.verifying_key()),
            Err(VerifyError::ForgedSignature(Signer::Node))
        );
        assert_eq!(
            signed.verify(&node.verifying_key(), &other.verifying_key()),
            Err(VerifyError::ForgedSignature(Signer::Rc))
        );
        // Canonical bytes are stable and start with the domain prefix.
        let r = sample(&node, &rc, 1);
        assert!(r.canonical_bytes().starts_with(DOMAIN_RECEIPT));
        assert_eq!(r.canonical_bytes(), r.clone().canonical_bytes());
        // Serde round trip (bincode and JSON) keeps signatures.
        let bytes = opengrid_codec::encode(&signed).unwrap();
        let back: SignedReceipt = opengrid_codec::decode(&bytes, 1 << 20).unwrap();
        assert_eq!(back, signed);
        let json = serde_json::to_string(&signed).unwrap();
        assert_eq!(
            serde_json::from_str::<SignedReceipt>(&json).unwrap(),
            signed
        );
    }
}

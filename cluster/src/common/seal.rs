//! Control-plane message protection: after a join, every message between a node and the RC is
//! encrypted and authenticated (ChaCha20-Poly1305) under a key only those two hold, so a message's
//! claimed sender is the peer that holds the key — a colony-secret holder cannot heartbeat for a
//! dead node, adopt another node's sessions, or forge a lease, a start order or an eviction — and
//! nobody on the wire reads loads, session ids or manifests.
//!
//! # The link key
//! The node's signed join ([`crate::common::wire::JoinRequest`]) carries a fresh X25519 public
//! key; the RC answers with its own in a join ack signed by the RC's identity key (and bound to the
//! recipient, the join's nonce and the time). Both sides derive
//! `key = blake3::derive_key(KEY_CONTEXT, shared ‖ node id ‖ rc id ‖ node kx ‖ rc kx ‖ nonce)`.
//! A node configured with `rc_id` accepts only that RC's ack; otherwise it links to the RC whose
//! signed ack answers its join (the key exchange still keeps a passive observer out).
//!
//! # Sealed messages
//! [`Seal::Aead`]: a counter, and the message encrypted with ChaCha20-Poly1305 under the sender's
//! direction key (`blake3::derive_key(DIRECTION_CONTEXT, link key ‖ sender)`, so the two
//! directions never share a key and nonce), nonce = the counter, associated data = sender ‖
//! counter. The receiver decrypts (which authenticates) and checks that the counter is above the
//! last one it accepted (no replay).
//! [`Seal::Sig`]: an ed25519 signature by the sender's identity over the recipient, the time and the
//! message — for the few RC → node messages sent without a link (the join ack, an eviction of a
//! node the RC has no link to); these travel in the clear ([`Payload::Clear`]): they hold only
//! public keys, a nonce and a refusal reason. [`Seal::None`]: only a join request, which is signed
//! itself.

use chacha20poly1305::aead::{Aead, KeyInit, Payload as AeadPayload};
use chacha20poly1305::ChaCha20Poly1305;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::common::identity::{Identity, NodeId};
use crate::common::wire::{decode, encode};

const KEY_CONTEXT: &str = "opengrid 2026-12 control-plane link key v1";
const DIRECTION_CONTEXT: &str = "opengrid 2026-12 control-plane direction key v1";
const AAD_DOMAIN: &[u8] = b"opengrid-control-aead-v1\0";
const SIG_DOMAIN: &[u8] = b"opengrid-control-sig-v1\0";

/// How a control message is authenticated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Seal {
    /// Unauthenticated: accepted only for a (self-signed) join request.
    None,
    /// Encrypted and authenticated under the sender's direction key, with a per-direction
    /// counter (also the nonce).
    Aead {
        /// Strictly increasing per link and direction.
        ctr: u64,
    },
    /// ed25519 signature by the sender's identity over the recipient, `unix_ms` and the message.
    Sig {
        /// When it was signed (freshness window).
        unix_ms: u64,
        /// The signature.
        sig: Vec<u8>,
    },
}

/// A control message's body: in the clear (a join, a signed message) or encrypted on a link.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Payload<T> {
    /// The message itself.
    Clear(T),
    /// ChaCha20-Poly1305 ciphertext (with its tag) of the encoded message (as bytes: one copy,
    /// not a serde call per byte).
    Encrypted(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// A control message with its sender and seal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sealed<T> {
    /// Claimed sender.
    pub from: NodeId,
    /// Its authentication.
    pub seal: Seal,
    /// The message.
    pub payload: Payload<T>,
}

impl<T> Sealed<T> {
    /// The message, when it travels in the clear.
    pub fn clear(&self) -> Option<&T> {
        match &self.payload {
            Payload::Clear(m) => Some(m),
            Payload::Encrypted(_) => None,
        }
    }

    /// A message in the clear with `seal`.
    pub fn in_clear(from: NodeId, seal: Seal, msg: T) -> Self {
        Sealed {
            from,
            seal,
            payload: Payload::Clear(msg),
        }
    }
}

/// Why a sealed message was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// No link with the sender (it never joined, or the link was replaced).
    #[error("no control link with {0}")]
    NoLink(String),
    /// The message does not decrypt under the link key (forged, altered, or another key).
    #[error("a message from {0} does not authenticate under its link key")]
    BadMac(String),
    /// It decrypted but is not a message of this kind.
    #[error("undecodable message from {from}: {why}")]
    Malformed {
        /// Sender.
        from: String,
        /// Why.
        why: String,
    },
    /// A counter at or below the last accepted one.
    #[error("replayed message from {from}: counter {ctr} <= {last}")]
    Replay {
        /// Sender.
        from: String,
        /// Counter.
        ctr: u64,
        /// Last accepted.
        last: u64,
    },
    /// The signature does not verify.
    #[error("bad signature from {0}")]
    BadSignature(String),
    /// A signed message outside the freshness window.
    #[error("signed message from {from} is {skew_ms} ms old or early (limit {limit_ms} ms)")]
    Stale {
        /// Sender.
        from: String,
        /// Distance from now.
        skew_ms: u64,
        /// Limit.
        limit_ms: u64,
    },
    /// The message names another sender than the one authenticated.
    #[error("message from {authenticated} claims to be from {claimed}")]
    WrongSender {
        /// Authenticated.
        authenticated: String,
        /// Claimed inside the message.
        claimed: String,
    },
    /// Not a message this seal may carry (e.g. an unsealed heartbeat).
    #[error("{0}")]
    NotAllowed(&'static str),
    /// The key exchange produced a low-order (all-zero) shared secret.
    #[error("key exchange with {0} is not contributory")]
    WeakKey(String),
    /// Not from the RC this node is configured to trust (`rc_id`).
    #[error("{got} is not the configured RC {want}")]
    UntrustedRc {
        /// Sender.
        got: String,
        /// Configured.
        want: String,
    },
}

impl SealError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SealError::NoLink(_) => "no_link",
            SealError::BadMac(_) => "bad_mac",
            SealError::Malformed { .. } => "malformed",
            SealError::Replay { .. } => "replay",
            SealError::BadSignature(_) => "bad_signature",
            SealError::Stale { .. } => "stale",
            SealError::WrongSender { .. } => "wrong_sender",
            SealError::NotAllowed(_) => "not_allowed",
            SealError::WeakKey(_) => "weak_key",
            SealError::UntrustedRc { .. } => "untrusted_rc",
        }
    }
}

/// One side's ephemeral X25519 key for a join.
pub struct KeyOffer {
    secret: StaticSecret,
    /// Its public half (sent in the join or the ack).
    pub public: [u8; 32],
}

impl std::fmt::Debug for KeyOffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyOffer({:02x?}…)", &self.public[..4])
    }
}

impl KeyOffer {
    /// A fresh key.
    pub fn new() -> Self {
        let secret = StaticSecret::from(rand::random::<[u8; 32]>());
        let public = PublicKey::from(&secret).to_bytes();
        KeyOffer { secret, public }
    }

    /// The link key with the peer whose public half is `theirs`. `node_kx` / `rc_kx` are the
    /// two public halves in their roles (one of them is `self.public`).
    pub fn link_key(
        &self,
        theirs: &[u8; 32],
        node: &NodeId,
        rc: &NodeId,
        node_kx: &[u8; 32],
        rc_kx: &[u8; 32],
        nonce: u64,
    ) -> Result<[u8; 32], SealError> {
        let shared = self.secret.diffie_hellman(&PublicKey::from(*theirs));
        if !shared.was_contributory() {
            return Err(SealError::WeakKey(node.did()));
        }
        let mut material = Vec::with_capacity(32 * 5 + 8);
        material.extend_from_slice(shared.as_bytes());
        material.extend_from_slice(&node.public_key());
        material.extend_from_slice(&rc.public_key());
        material.extend_from_slice(node_kx);
        material.extend_from_slice(rc_kx);
        material.extend_from_slice(&nonce.to_le_bytes());
        Ok(blake3::derive_key(KEY_CONTEXT, &material))
    }
}

impl Default for KeyOffer {
    fn default() -> Self {
        Self::new()
    }
}

/// One side of a control link: the key, the peer, and both directions' counters.
#[derive(Clone)]
pub struct Link {
    key: [u8; 32],
    /// The peer.
    pub peer: NodeId,
    sent: u64,
    seen: u64,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Link({}, sent {}, seen {})",
            self.peer, self.sent, self.seen
        )
    }
}

fn direction_key(key: &[u8; 32], sender: &NodeId) -> ChaCha20Poly1305 {
    let mut material = key.to_vec();
    material.extend_from_slice(&sender.public_key());
    ChaCha20Poly1305::new(&blake3::derive_key(DIRECTION_CONTEXT, &material).into())
}

fn nonce(ctr: u64) -> chacha20poly1305::Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&ctr.to_be_bytes());
    n.into()
}

fn aad(from: &NodeId, ctr: u64) -> Vec<u8> {
    let mut a = AAD_DOMAIN.to_vec();
    a.extend_from_slice(&from.public_key());
    a.extend_from_slice(&ctr.to_le_bytes());
    a
}

impl Link {
    /// A link with `peer` under `key`.
    pub fn new(key: [u8; 32], peer: NodeId) -> Self {
        Link {
            key,
            peer,
            sent: 0,
            seen: 0,
        }
    }

    /// Encrypts `msg` from `me` with the next counter.
    pub fn seal<T: Serialize>(&mut self, me: NodeId, msg: T) -> Sealed<T> {
        self.sent += 1;
        let ctr = self.sent;
        let plain = encode(&msg);
        let ct = direction_key(&self.key, &me)
            .encrypt(
                &nonce(ctr),
                AeadPayload {
                    msg: &plain,
                    aad: &aad(&me, ctr),
                },
            )
            // ChaCha20-Poly1305 fails only past 256 GiB in one message; a control message is
            // bounded by the transport's frame limit far below that. An empty body then fails to
            // authenticate at the peer, which counts it.
            .unwrap_or_default();
        Sealed {
            from: me,
            seal: Seal::Aead { ctr },
            payload: Payload::Encrypted(ct),
        }
    }

    /// Decrypts a message from the peer (which authenticates it) and checks its counter is above
    /// the last accepted one.
    pub fn open<T: DeserializeOwned>(&mut self, s: Sealed<T>) -> Result<T, SealError> {
        let (Seal::Aead { ctr }, Payload::Encrypted(ct)) = (&s.seal, &s.payload) else {
            return Err(SealError::NotAllowed("not an encrypted link message"));
        };
        if s.from != self.peer {
            return Err(SealError::NoLink(s.from.did()));
        }
        let plain = direction_key(&self.key, &s.from)
            .decrypt(
                &nonce(*ctr),
                AeadPayload {
                    msg: ct,
                    aad: &aad(&s.from, *ctr),
                },
            )
            .map_err(|_| SealError::BadMac(s.from.did()))?;
        if *ctr <= self.seen {
            return Err(SealError::Replay {
                from: s.from.did(),
                ctr: *ctr,
                last: self.seen,
            });
        }
        let msg = decode(&plain).map_err(|why| SealError::Malformed {
            from: s.from.did(),
            why,
        })?;
        self.seen = *ctr;
        Ok(msg)
    }
}

fn signed_bytes<T: Serialize>(to: &NodeId, unix_ms: u64, msg: &T) -> Vec<u8> {
    let mut m = SIG_DOMAIN.to_vec();
    m.extend_from_slice(&to.public_key());
    m.extend_from_slice(&unix_ms.to_le_bytes());
    m.extend_from_slice(&encode(msg));
    m
}

/// Signs `msg` from `me` for the recipient `to` (no link needed).
pub fn sign<T: Serialize>(me: &Identity, to: &NodeId, unix_ms: u64, msg: T) -> Sealed<T> {
    let sig = me.sign(&signed_bytes(to, unix_ms, &msg)).to_vec();
    Sealed::in_clear(me.id(), Seal::Sig { unix_ms, sig }, msg)
}

/// Checks a signed message addressed to `me`, signed within `max_skew_ms` of `now_ms`.
pub fn verify_signed<T: Serialize>(
    s: &Sealed<T>,
    me: &NodeId,
    now_ms: u64,
    max_skew_ms: u64,
) -> Result<(), SealError> {
    let (Seal::Sig { unix_ms, sig }, Some(msg)) = (&s.seal, s.clear()) else {
        return Err(SealError::NotAllowed("not a signed message"));
    };
    s.from
        .verify(&signed_bytes(me, *unix_ms, msg), sig)
        .map_err(|_| SealError::BadSignature(s.from.did()))?;
    let skew = now_ms.abs_diff(*unix_ms);
    if skew > max_skew_ms {
        return Err(SealError::Stale {
            from: s.from.did(),
            skew_ms: skew,
            limit_ms: max_skew_ms,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linked() -> (Identity, Identity, Link, Link) {
        let (node, rc) = (Identity::generate(), Identity::generate());
        let (a, b) = (KeyOffer::new(), KeyOffer::new());
        let k1 = a
            .link_key(&b.public, &node.id(), &rc.id(), &a.public, &b.public, 7)
            .unwrap();
        let k2 = b
            .link_key(&a.public, &node.id(), &rc.id(), &a.public, &b.public, 7)
            .unwrap();
        assert_eq!(k1, k2, "both sides derive the same key");
        let (at_node, at_rc) = (Link::new(k1, rc.id()), Link::new(k2, node.id()));
        (node, rc, at_node, at_rc)
    }

    #[test]
    fn sealed_messages_verify_once_and_in_order() {
        let (node, _rc, mut at_node, mut at_rc) = linked();
        let m1 = at_node.seal(node.id(), "heartbeat 1".to_string());
        let m2 = at_node.seal(node.id(), "heartbeat 2".to_string());
        // Nothing of the message is on the wire in the clear.
        let wire = encode(&m1);
        assert!(
            !wire.windows(9).any(|w| w == b"heartbeat"),
            "plaintext on the wire"
        );
        assert_eq!(at_rc.open(m1.clone()).unwrap(), "heartbeat 1");
        assert_eq!(at_rc.open(m2.clone()).unwrap(), "heartbeat 2");
        // Replay, and an older one after a newer one.
        assert!(matches!(at_rc.open(m2), Err(SealError::Replay { .. })));
        assert!(matches!(at_rc.open(m1), Err(SealError::Replay { .. })));
        // The other direction has its own key and counter: the RC's first message opens too.
        let back = at_rc.seal(_rc.id(), "lease".to_string());
        assert_eq!(at_node.open(back).unwrap(), "lease");
    }

    #[test]
    fn tampering_or_another_sender_fails() {
        let (node, _rc, mut at_node, mut at_rc) = linked();
        let mut m = at_node.seal(node.id(), "heartbeat".to_string());
        if let Payload::Encrypted(ct) = &mut m.payload {
            ct[0] ^= 1;
        }
        assert!(matches!(at_rc.open(m), Err(SealError::BadMac(_))));
        // The counter is authenticated too: the same ciphertext under another counter fails.
        let mut m = at_node.seal(node.id(), "heartbeat".to_string());
        m.seal = Seal::Aead { ctr: 99 };
        assert!(matches!(at_rc.open(m), Err(SealError::BadMac(_))));
        // A stranger with its own key, claiming to be the node.
        let stranger = Identity::generate();
        let (x, y) = (KeyOffer::new(), KeyOffer::new());
        let k = x
            .link_key(
                &y.public,
                &stranger.id(),
                &stranger.id(),
                &x.public,
                &y.public,
                1,
            )
            .unwrap();
        let mut forged = Link::new(k, stranger.id()).seal(node.id(), "heartbeat".to_string());
        assert!(matches!(
            at_rc.open(forged.clone()),
            Err(SealError::BadMac(_))
        ));
        forged.from = stranger.id();
        assert!(matches!(at_rc.open(forged), Err(SealError::NoLink(_))));
        // A clear message (unsealed, or claiming a link seal) is not accepted on a link.
        let unsealed = Sealed::in_clear(node.id(), Seal::None, "x".to_string());
        assert!(matches!(
            at_rc.open(unsealed),
            Err(SealError::NotAllowed(_))
        ));
        let clear = Sealed::in_clear(node.id(), Seal::Aead { ctr: 5 }, "x".to_string());
        assert!(matches!(at_rc.open(clear), Err(SealError::NotAllowed(_))));
    }

    #[test]
    fn signed_messages_bind_recipient_and_time() {
        let (rc, node, other) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let now = 1_000_000;
        let s = sign(&rc, &node.id(), now, "evicted".to_string());
        verify_signed(&s, &node.id(), now + 10, 5_000).unwrap();
        // Replayed to another node, too old, or altered: refused.
        assert!(matches!(
            verify_signed(&s, &other.id(), now, 5_000),
            Err(SealError::BadSignature(_))
        ));
        assert!(matches!(
            verify_signed(&s, &node.id(), now + 60_000, 5_000),
            Err(SealError::Stale { .. })
        ));
        let mut t = s.clone();
        t.payload = Payload::Clear("welcome".into());
        assert!(matches!(
            verify_signed(&t, &node.id(), now, 5_000),
            Err(SealError::BadSignature(_))
        ));
    }

    #[test]
    fn a_low_order_public_key_is_refused() {
        let a = KeyOffer::new();
        let id = Identity::generate().id();
        let zero = [0u8; 32];
        assert!(matches!(
            a.link_key(&zero, &id, &id, &a.public, &zero, 1),
            Err(SealError::WeakKey(_))
        ));
    }
}

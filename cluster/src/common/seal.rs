//! Control-plane message authentication: after a join, every message between a node and the RC
//! carries a MAC under a key only those two hold, so a message's claimed sender is the peer that
//! holds the key — a colony-secret holder cannot heartbeat for a dead node, adopt another node's
//! sessions, or forge a lease, a start order or an eviction.
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
//! [`Seal::Mac`]: a counter and `blake3::keyed_hash(key, MAC_DOMAIN ‖ sender ‖ counter ‖ message)`;
//! the receiver checks the tag and that the counter is above the last one it accepted (no replay).
//! [`Seal::Sig`]: an ed25519 signature by the sender's identity over the recipient, the time and the
//! message — for the few RC → node messages sent without a link (the join ack, an eviction of a
//! node the RC has no link to). [`Seal::None`]: only a join request, which is signed itself.

use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::common::identity::{Identity, NodeId};
use crate::common::wire::encode;

const KEY_CONTEXT: &str = "opengrid 2026-12 control-plane link key v1";
const MAC_DOMAIN: &[u8] = b"opengrid-control-mac-v1\0";
const SIG_DOMAIN: &[u8] = b"opengrid-control-sig-v1\0";

/// How a control message is authenticated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Seal {
    /// Unauthenticated: accepted only for a (self-signed) join request.
    None,
    /// MAC under the link key, with a per-direction counter.
    Mac {
        /// Strictly increasing per link and direction.
        ctr: u64,
        /// `blake3::keyed_hash(key, MAC_DOMAIN ‖ sender ‖ ctr ‖ message)`.
        tag: [u8; 32],
    },
    /// ed25519 signature by the sender's identity over the recipient, `unix_ms` and the message.
    Sig {
        /// When it was signed (freshness window).
        unix_ms: u64,
        /// The signature.
        sig: Vec<u8>,
    },
}

/// A control message with its sender and seal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sealed<T> {
    /// Claimed sender.
    pub from: NodeId,
    /// Its authentication.
    pub seal: Seal,
    /// The message.
    pub msg: T,
}

/// Why a sealed message was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// No link with the sender (it never joined, or the link was replaced).
    #[error("no control link with {0}")]
    NoLink(String),
    /// The MAC does not verify.
    #[error("bad MAC from {0}")]
    BadMac(String),
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

fn tag(key: &[u8; 32], from: &NodeId, ctr: u64, body: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(MAC_DOMAIN);
    h.update(&from.public_key());
    h.update(&ctr.to_le_bytes());
    h.update(body);
    *h.finalize().as_bytes()
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

    /// Seals `msg` from `me` with the next counter.
    pub fn seal<T: Serialize>(&mut self, me: NodeId, msg: T) -> Sealed<T> {
        self.sent += 1;
        let t = tag(&self.key, &me, self.sent, &encode(&msg));
        Sealed {
            from: me,
            seal: Seal::Mac {
                ctr: self.sent,
                tag: t,
            },
            msg,
        }
    }

    /// Checks a MAC-sealed message from the peer (tag, counter above the last accepted).
    pub fn open<T: Serialize>(&mut self, s: &Sealed<T>) -> Result<(), SealError> {
        let Seal::Mac { ctr, tag: got } = &s.seal else {
            return Err(SealError::NotAllowed("not a MAC-sealed message"));
        };
        if s.from != self.peer {
            return Err(SealError::NoLink(s.from.did()));
        }
        let want = tag(&self.key, &s.from, *ctr, &encode(&s.msg));
        if !constant_time_eq(&want, got) {
            return Err(SealError::BadMac(s.from.did()));
        }
        if *ctr <= self.seen {
            return Err(SealError::Replay {
                from: s.from.did(),
                ctr: *ctr,
                last: self.seen,
            });
        }
        self.seen = *ctr;
        Ok(())
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    // blake3's Hash comparison is constant-time.
    blake3::Hash::from_bytes(*a) == blake3::Hash::from_bytes(*b)
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
    Sealed {
        from: me.id(),
        seal: Seal::Sig { unix_ms, sig },
        msg,
    }
}

/// Checks a signed message addressed to `me`, signed within `max_skew_ms` of `now_ms`.
pub fn verify_signed<T: Serialize>(
    s: &Sealed<T>,
    me: &NodeId,
    now_ms: u64,
    max_skew_ms: u64,
) -> Result<(), SealError> {
    let Seal::Sig { unix_ms, sig } = &s.seal else {
        return Err(SealError::NotAllowed("not a signed message"));
    };
    s.from
        .verify(&signed_bytes(me, *unix_ms, &s.msg), sig)
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
        at_rc.open(&m1).unwrap();
        at_rc.open(&m2).unwrap();
        // Replay, and an older one after a newer one.
        assert!(matches!(at_rc.open(&m2), Err(SealError::Replay { .. })));
        assert!(matches!(at_rc.open(&m1), Err(SealError::Replay { .. })));
    }

    #[test]
    fn tampering_or_another_sender_fails() {
        let (node, _rc, mut at_node, mut at_rc) = linked();
        let mut m = at_node.seal(node.id(), "heartbeat".to_string());
        m.msg = "heartbeat for someone else".into();
        assert!(matches!(at_rc.open(&m), Err(SealError::BadMac(_))));
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
        assert!(matches!(at_rc.open(&forged), Err(SealError::BadMac(_))));
        forged.from = stranger.id();
        assert!(matches!(at_rc.open(&forged), Err(SealError::NoLink(_))));
        // An unsealed or signed message is not accepted on a link.
        let unsealed = Sealed {
            from: node.id(),
            seal: Seal::None,
            msg: "x".to_string(),
        };
        assert!(matches!(
            at_rc.open(&unsealed),
            Err(SealError::NotAllowed(_))
        ));
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
        t.msg = "welcome".into();
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

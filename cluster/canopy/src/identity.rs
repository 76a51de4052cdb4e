//! One key, three names: the RC's ed25519 key is its `did:mycel` id, its libp2p [`PeerId`] and the
//! key that signs its colony summaries.
//!
//! A libp2p ed25519 peer id embeds the public key itself (identity multihash over the protobuf
//! encoding), so the mapping is lossless in both directions and needs no lookup table.

use libp2p::identity::{ed25519, Keypair, PublicKey};
use libp2p::PeerId;
use opengrid_session::Did;

use crate::CanopyError;

/// The libp2p keypair of an RC, built from the same ed25519 secret that signs its summaries.
pub fn keypair_from_signing_key(key: &ed25519_dalek::SigningKey) -> Result<Keypair, CanopyError> {
    let mut secret = key.to_bytes();
    // `ed25519_from_bytes` zeroizes the buffer it is given.
    Keypair::ed25519_from_bytes(&mut secret).map_err(|e| CanopyError::Key(e.to_string()))
}

/// The libp2p peer id of the RC named by `did`.
pub fn peer_of_did(did: &Did) -> PeerId {
    let pk = ed25519::PublicKey::try_from_bytes(&did.public_key_bytes())
        .expect("a Did always holds a valid ed25519 public key");
    PublicKey::from(pk).to_peer_id()
}

/// The `did:mycel` id of a peer, if its peer id embeds an ed25519 key (every canopy peer's does;
/// peers with hashed RSA/secp256k1 ids, or any other key type, give `None`).
pub fn did_of_peer(peer: &PeerId) -> Option<Did> {
    let mh = multihash_of(peer);
    // Only the identity multihash (code 0x00) carries the key itself.
    if mh.0 != 0x00 {
        return None;
    }
    let public = PublicKey::try_decode_protobuf(mh.1).ok()?;
    let ed = public.try_into_ed25519().ok()?;
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&ed.to_bytes()).ok()?;
    Some(Did::from_public_key(&vk))
}

/// `(code, digest)` of a peer id's multihash.
fn multihash_of(peer: &PeerId) -> (u64, &[u8]) {
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    (mh.code(), mh.digest())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_id_and_did_map_both_ways() {
        for seed in 0u8..8 {
            let sk = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
            let did = Did::from_public_key(&sk.verifying_key());
            let kp = keypair_from_signing_key(&sk).unwrap();
            let peer = kp.public().to_peer_id();
            assert_eq!(peer_of_did(&did), peer, "seed {seed}");
            assert_eq!(did_of_peer(&peer), Some(did), "seed {seed}");
        }
    }

    #[test]
    fn libp2p_signatures_verify_with_the_did_key() {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
        let kp = keypair_from_signing_key(&sk).unwrap();
        let sig = kp.sign(b"hello").unwrap();
        let did = Did::from_public_key(&sk.verifying_key());
        let sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
        did.verifying_key()
            .verify_strict(b"hello", &sig)
            .expect("same key");
    }

    #[test]
    fn non_ed25519_peer_has_no_did() {
        // A peer id that is a sha256 multihash (as RSA keys produce) embeds no key.
        let random = PeerId::random();
        assert_eq!(did_of_peer(&random), None);
    }
}

//! RC-signed grants: who may act on a session's checkpoints, at which epoch.
//!
//! The RC signs a [`Grant`] each time it places, hands over or fails over a session, or changes
//! its replica set: the session, its epoch, the **holder** (the node serving it with that epoch),
//! the **replicas** it writes to, and the **sources** (the old holders a restore reads from and
//! fences, or the current holder a handover comes from). The holder presents the grant in its
//! `Replicate`, `Latest` and `Prepare` requests; the receiving node verifies the RC's signature
//! (it knows the RC's DID from the join), that the authenticated link peer is the grant's holder
//! (for `Prepare`: one of its sources), that itself is designated (a replica or source; for
//! `Prepare`: the holder-to-be), and that the epoch is the grant's. `Transfer`, `Activate` and
//! `Abort` are bound to the peer that prepared, `Forward` to the peer that activated.
//!
//! A grant does not expire by time: its epoch bounds its life. Once a newer epoch is written
//! anywhere, replicas refuse the older one (fencing), so an old grant can no longer write; a
//! replica set change at the same epoch gets a new grant, and the old one only names peers the
//! same legitimate holder already wrote to.

use std::sync::{Arc, RwLock};

use opengrid_session::{Did, Epoch, SessionId};
use serde::{Deserialize, Serialize};

/// Domain separation of grant signatures.
pub const GRANT_CONTEXT: &[u8] = b"opengrid-migration-grant-v1\0";

/// What the RC allows for one session at one epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The session.
    pub session: SessionId,
    /// The epoch the holder serves it with.
    pub epoch: Epoch,
    /// The node serving (or, for a handover, about to serve) the session with `epoch`.
    pub holder: Did,
    /// Its replica set.
    pub replicas: Vec<Did>,
    /// Failover: the earlier holders it restores from (and fences); handover: the current
    /// holder handing the session over.
    pub sources: Vec<Did>,
}

impl Grant {
    /// The bytes the RC signs: [`GRANT_CONTEXT`] ‖ bincode(grant).
    pub fn signing_bytes(&self) -> Result<Vec<u8>, GrantError> {
        let body = opengrid_codec::encode(self).map_err(|e| GrantError::Encode(e.to_string()))?;
        let mut out = Vec::with_capacity(GRANT_CONTEXT.len() + body.len());
        out.extend_from_slice(GRANT_CONTEXT);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Whether `did` is designated to receive the holder's writes and reads.
    pub fn designates(&self, did: &Did) -> bool {
        self.replicas.contains(did) || self.sources.contains(did)
    }
}

/// A grant with the RC's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedGrant {
    /// The grant.
    pub grant: Grant,
    /// ed25519 signature by the RC over [`Grant::signing_bytes`].
    pub signature: Vec<u8>,
}

impl SignedGrant {
    /// Signs `grant` with `sign` (the RC's identity key).
    pub fn sign(grant: Grant, sign: impl FnOnce(&[u8]) -> [u8; 64]) -> Result<Self, GrantError> {
        let signature = sign(&grant.signing_bytes()?).to_vec();
        Ok(SignedGrant { grant, signature })
    }

    /// The grant, if `rc` signed it (strict ed25519 verification).
    pub fn verify(&self, rc: &Did) -> Result<&Grant, GrantError> {
        let sig: [u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| GrantError::BadSignature)?;
        rc.verifying_key()
            .verify_strict(
                &self.grant.signing_bytes()?,
                &ed25519_dalek::Signature::from_bytes(&sig),
            )
            .map_err(|_| GrantError::BadSignature)?;
        Ok(&self.grant)
    }
}

/// Grants already verified, by signature: a holder presents the same grant with every replica
/// write, so each replica pays the ed25519 verification once per grant, not once per
/// checkpoint. A hit needs the same signature, the same grant and the same RC; anything else is
/// verified afresh. Bounded: when full it starts over.
#[derive(Default)]
pub struct VerifiedGrants {
    seen: std::sync::Mutex<std::collections::HashMap<Vec<u8>, (Did, Grant)>>,
}

/// Most grants [`VerifiedGrants`] remembers.
pub const VERIFIED_GRANTS_CAP: usize = 8192;

impl VerifiedGrants {
    /// As [`SignedGrant::verify`], from the cache when this exact grant was verified before.
    pub fn verify<'g>(&self, sg: &'g SignedGrant, rc: &Did) -> Result<&'g Grant, GrantError> {
        {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((who, g)) = seen.get(&sg.signature) {
                if who == rc && *g == sg.grant {
                    return Ok(&sg.grant);
                }
            }
        }
        sg.verify(rc)?;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= VERIFIED_GRANTS_CAP {
            seen.clear();
        }
        seen.insert(sg.signature.clone(), (rc.clone(), sg.grant.clone()));
        Ok(&sg.grant)
    }

    /// How many grants are remembered.
    pub fn len(&self) -> usize {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a grant could not be made or checked.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// The grant could not be encoded.
    #[error("encoding the grant: {0}")]
    Encode(String),
    /// The signature is not the RC's over this grant.
    #[error("the grant is not signed by the RC")]
    BadSignature,
}

/// Which session requests a migration server accepts from an authenticated peer.
#[derive(Clone, Debug)]
pub enum GrantPolicy {
    /// Session requests need a grant signed by this RC ([`RcKey`]; until it is known, they are
    /// refused). What nodes run.
    RcSigned(RcKey),
    /// No grants: every peer the link admits may act on every session. Only for harnesses
    /// without an RC (the layer benches, the one-host demo, tests); never a node's default.
    LinkOnly,
}

/// The RC's DID as a node learns it (from its join), shared with its migration server.
#[derive(Clone, Debug, Default)]
pub struct RcKey(Arc<RwLock<Vec<Did>>>);

/// RCs remembered at most by an [`RcKey`] (an RC group has 1–7 replicas).
const MAX_RCS: usize = 8;

impl RcKey {
    /// Unknown yet.
    pub fn new() -> Self {
        RcKey::default()
    }

    /// The RC is `did` from now on. Grants signed by the RCs known before stay valid (the
    /// replicas of an RC group take office in turn, ADR 0037): the newest [`MAX_RCS`] are kept.
    pub fn set(&self, did: Did) {
        let mut v = self.0.write().unwrap_or_else(|p| p.into_inner());
        v.retain(|d| *d != did);
        v.insert(0, did);
        v.truncate(MAX_RCS);
    }

    /// The current RC's DID, if known.
    pub fn get(&self) -> Option<Did> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .first()
            .cloned()
    }

    /// Every RC whose grants are accepted, the current one first.
    pub fn all(&self) -> Vec<Did> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn did(k: &SigningKey) -> Did {
        Did::from_public_key(&k.verifying_key())
    }

    #[test]
    fn a_grant_verifies_only_for_its_signer_and_contents() {
        let rc = SigningKey::from_bytes(&[1; 32]);
        let other = SigningKey::from_bytes(&[2; 32]);
        let g = Grant {
            session: SessionId::new("s").unwrap(),
            epoch: Epoch(3),
            holder: did(&SigningKey::from_bytes(&[3; 32])),
            replicas: vec![did(&SigningKey::from_bytes(&[4; 32]))],
            sources: vec![],
        };
        let signed = SignedGrant::sign(g.clone(), |m| rc.sign(m).to_bytes()).unwrap();
        assert_eq!(signed.verify(&did(&rc)).unwrap(), &g);
        assert!(matches!(
            signed.verify(&did(&other)),
            Err(GrantError::BadSignature)
        ));
        // Any change of the contents breaks the signature (an epoch jump here).
        let mut jumped = signed.clone();
        jumped.grant.epoch = Epoch(u64::MAX);
        assert!(jumped.verify(&did(&rc)).is_err());
        let mut short = signed.clone();
        short.signature.pop();
        assert!(short.verify(&did(&rc)).is_err());
        assert!(g.designates(&g.replicas[0]) && !g.designates(&g.holder));
    }

    #[test]
    fn the_verified_grant_cache_answers_only_for_the_same_grant_and_signer() {
        let rc = SigningKey::from_bytes(&[1; 32]);
        let other = SigningKey::from_bytes(&[2; 32]);
        let g = Grant {
            session: SessionId::new("s").unwrap(),
            epoch: Epoch(3),
            holder: did(&SigningKey::from_bytes(&[3; 32])),
            replicas: vec![did(&SigningKey::from_bytes(&[4; 32]))],
            sources: vec![],
        };
        let signed = SignedGrant::sign(g.clone(), |m| rc.sign(m).to_bytes()).unwrap();
        let cache = VerifiedGrants::default();
        assert_eq!(cache.verify(&signed, &did(&rc)).unwrap(), &g);
        assert_eq!(cache.len(), 1);
        // A hit for the same grant and signer.
        assert_eq!(cache.verify(&signed, &did(&rc)).unwrap(), &g);
        // The cached signature with other contents, or for another signer, is verified afresh
        // (and refused), never answered from the cache.
        let mut jumped = signed.clone();
        jumped.grant.epoch = Epoch(u64::MAX);
        assert!(matches!(
            cache.verify(&jumped, &did(&rc)),
            Err(GrantError::BadSignature)
        ));
        let mut other_holder = signed.clone();
        other_holder.grant.holder = did(&other);
        assert!(cache.verify(&other_holder, &did(&rc)).is_err());
        assert!(matches!(
            cache.verify(&signed, &did(&other)),
            Err(GrantError::BadSignature)
        ));
        assert_eq!(cache.len(), 1, "refused grants are not remembered");
    }
}

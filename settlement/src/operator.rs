//! The ledger operator's key: who may register nodes and RCs and change the replica group.
//!
//! Replicas are configured with the operator's DID (`operator` in the ledger config, `--operator`
//! on the command line). Every node or RC registration and every membership change (add a
//! learner, change the voters) must carry an [`OperatorAuth`]: an ed25519 signature by the
//! operator's key over the exact request, a random 128-bit nonce and the signing time.
//!
//! - Registrations are ledger commands: the state machine verifies the signature against the
//!   configured DID and records every nonce it accepted, so a registration can never be applied
//!   twice (a replayed old registration cannot roll back a newer policy). No clock is read there,
//!   so replay stays deterministic.
//! - Membership changes are served by the replica itself ([`OperatorAdminAuthorizer`], plugged
//!   into `opengrid_consensus` as its `AdminAuthorizer`): the signature must verify, the signing
//!   time must be within [`ADMIN_AUTH_MAX_SKEW`] of the replica's clock, and the nonce must not
//!   have been seen in that time (a bounded cache). The client signs every attempt afresh.
//!
//! `opengrid ledger keygen --key-file operator.key` creates the key and prints its DID.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use opengrid_consensus::{AdminAuthorizer, AdminRequest};
use serde::{Deserialize, Serialize};

use crate::did::Did;
use crate::keys::Keypair;
use crate::receipt::Sig;

const DOMAIN_OPERATOR: &[u8] = b"opengrid/ledger-operator-auth/v1\0";
/// How far an admin request's signing time may be from the replica's clock.
pub const ADMIN_AUTH_MAX_SKEW: Duration = Duration::from_secs(120);
/// Most admin nonces a replica remembers (older ones have expired by then in any normal use).
pub const MAX_REMEMBERED_ADMIN_NONCES: usize = 10_000;

/// Why an operator authorization was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum OperatorAuthError {
    /// The replica has no operator configured, so nothing can be authorized.
    #[error("no ledger operator is configured on this replica")]
    NotConfigured,
    /// The request carries no operator signature.
    #[error("missing the ledger operator's signature")]
    Missing,
    /// The authorization bytes do not decode.
    #[error("malformed operator authorization: {0}")]
    Malformed(String),
    /// The signature is not the configured operator's over this request.
    #[error("not signed by the ledger operator {operator}")]
    ForgedSignature {
        /// The configured operator.
        operator: String,
    },
    /// Signed too long ago or in the future.
    #[error("operator authorization signed at {issued_at_ms} ms, now is {now_ms} ms (at most {max_skew_ms} ms apart)")]
    Stale {
        /// Signing time, ms since the epoch.
        issued_at_ms: u64,
        /// The replica's clock.
        now_ms: u64,
        /// The allowed distance.
        max_skew_ms: u64,
    },
    /// The nonce was already used (a replay).
    #[error("operator authorization nonce already used (replay)")]
    Replayed,
}

/// The ledger operator's signature over one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorAuth {
    /// Signing time, ms since the epoch (checked by replicas for admin requests).
    pub issued_at_ms: u64,
    /// Random, used once.
    pub nonce: [u8; 16],
    /// ed25519 over the domain, the request bytes, the time and the nonce.
    pub signature: Sig,
}

fn message(body: &[u8], issued_at_ms: u64, nonce: &[u8; 16]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN_OPERATOR.len() + body.len() + 24);
    m.extend_from_slice(DOMAIN_OPERATOR);
    m.extend_from_slice(&(body.len() as u64).to_le_bytes());
    m.extend_from_slice(body);
    m.extend_from_slice(&issued_at_ms.to_le_bytes());
    m.extend_from_slice(nonce);
    m
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl OperatorAuth {
    /// Sign `body` (the request's canonical bytes) with the operator's key, now, fresh nonce.
    pub fn sign(operator: &Keypair, body: &[u8]) -> Self {
        Self::sign_at(operator, body, now_ms(), rand::random())
    }

    /// Sign with a given time and nonce (tests).
    pub fn sign_at(operator: &Keypair, body: &[u8], issued_at_ms: u64, nonce: [u8; 16]) -> Self {
        Self {
            issued_at_ms,
            nonce,
            signature: Sig(operator.sign(&message(body, issued_at_ms, &nonce))),
        }
    }

    /// Check the signature over `body` against `operator`'s key (time and nonce not checked).
    pub fn verify(&self, operator: &Did, body: &[u8]) -> Result<(), OperatorAuthError> {
        operator
            .verifying_key()
            .verify_strict(
                &message(body, self.issued_at_ms, &self.nonce),
                &ed25519_dalek::Signature::from_bytes(&self.signature.0),
            )
            .map_err(|_| OperatorAuthError::ForgedSignature {
                operator: operator.to_string(),
            })
    }
}

/// The authorization bytes an operator attaches to an admin request (for
/// `opengrid_consensus::Client::add_learner_with` and friends).
pub fn admin_auth(operator: &Keypair, request: &AdminRequest) -> Vec<u8> {
    opengrid_codec::encode(&OperatorAuth::sign(operator, &request.signing_bytes()))
        .unwrap_or_default()
}

#[derive(Debug, Default)]
struct SeenNonces {
    set: HashSet<[u8; 16]>,
    /// (expiry ms, nonce), oldest first.
    order: VecDeque<(u64, [u8; 16])>,
}

/// A replica's check of admin requests: signed by the operator, fresh, nonce not seen.
#[derive(Debug)]
pub struct OperatorAdminAuthorizer {
    operator: Option<Did>,
    max_skew: Duration,
    seen: Mutex<SeenNonces>,
    clock: fn() -> u64,
}

impl OperatorAdminAuthorizer {
    /// Authorizes requests signed by `operator` (`None`: refuses every admin request).
    pub fn new(operator: Option<Did>) -> Self {
        Self {
            operator,
            max_skew: ADMIN_AUTH_MAX_SKEW,
            seen: Mutex::new(SeenNonces::default()),
            clock: now_ms,
        }
    }

    /// The check itself, typed.
    pub fn check(&self, request: &AdminRequest, auth: &[u8]) -> Result<(), OperatorAuthError> {
        let operator = self
            .operator
            .as_ref()
            .ok_or(OperatorAuthError::NotConfigured)?;
        if auth.is_empty() {
            return Err(OperatorAuthError::Missing);
        }
        let a: OperatorAuth = opengrid_codec::decode(auth, 4096)
            .map_err(|e| OperatorAuthError::Malformed(e.to_string()))?;
        a.verify(operator, &request.signing_bytes())?;
        let now = (self.clock)();
        let skew = self.max_skew.as_millis() as u64;
        if a.issued_at_ms.abs_diff(now) > skew {
            return Err(OperatorAuthError::Stale {
                issued_at_ms: a.issued_at_ms,
                now_ms: now,
                max_skew_ms: skew,
            });
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let SeenNonces { set, order } = &mut *seen;
        while let Some(&(expiry, n)) = order.front() {
            if expiry >= now && order.len() < MAX_REMEMBERED_ADMIN_NONCES {
                break;
            }
            order.pop_front();
            set.remove(&n);
        }
        if !set.insert(a.nonce) {
            return Err(OperatorAuthError::Replayed);
        }
        // Remembered until the request could no longer pass the time check.
        order.push_back((a.issued_at_ms.saturating_add(skew), a.nonce));
        Ok(())
    }
}

impl AdminAuthorizer for OperatorAdminAuthorizer {
    fn authorize(&self, request: &AdminRequest, auth: &[u8]) -> Result<(), String> {
        self.check(request, auth).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn req() -> AdminRequest {
        AdminRequest::ChangeMembership {
            voters: BTreeSet::from([1, 2, 9]),
        }
    }

    #[test]
    fn admin_requests_need_a_fresh_operator_signature_used_once() {
        let op = Keypair::from_seed([7; 32]);
        let auth = OperatorAdminAuthorizer::new(Some(op.did()));
        assert_eq!(auth.check(&req(), &[]), Err(OperatorAuthError::Missing));
        assert!(matches!(
            auth.check(&req(), b"junk"),
            Err(OperatorAuthError::Malformed(_))
        ));
        let stranger = Keypair::from_seed([8; 32]);
        assert!(matches!(
            auth.check(&req(), &admin_auth(&stranger, &req())),
            Err(OperatorAuthError::ForgedSignature { .. })
        ));
        // Signed for another request.
        let other = AdminRequest::AddLearner {
            id: 9,
            addr: "127.0.0.1:1".into(),
            did: Keypair::from_seed([9; 32]).did(),
        };
        assert!(matches!(
            auth.check(&req(), &admin_auth(&op, &other)),
            Err(OperatorAuthError::ForgedSignature { .. })
        ));
        let good = admin_auth(&op, &req());
        assert_eq!(auth.check(&req(), &good), Ok(()));
        assert_eq!(auth.check(&req(), &good), Err(OperatorAuthError::Replayed));
        // Old signatures are refused whatever their nonce.
        let old = OperatorAuth::sign_at(&op, &req().signing_bytes(), now_ms() - 600_000, [1; 16]);
        assert!(matches!(
            auth.check(&req(), &opengrid_codec::encode(&old).unwrap()),
            Err(OperatorAuthError::Stale { .. })
        ));
        let none = OperatorAdminAuthorizer::new(None);
        assert_eq!(
            none.check(&req(), &admin_auth(&op, &req())),
            Err(OperatorAuthError::NotConfigured)
        );
    }

    #[test]
    fn the_nonce_cache_is_bounded() {
        let op = Keypair::from_seed([7; 32]);
        let auth = OperatorAdminAuthorizer::new(Some(op.did()));
        for _ in 0..MAX_REMEMBERED_ADMIN_NONCES + 50 {
            assert_eq!(auth.check(&req(), &admin_auth(&op, &req())), Ok(()));
        }
        let seen = auth.seen.lock().unwrap();
        assert!(seen.order.len() <= MAX_REMEMBERED_ADMIN_NONCES);
        assert_eq!(seen.order.len(), seen.set.len());
    }
}

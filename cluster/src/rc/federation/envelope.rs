//! The signed RC-to-RC wire: [`Signed`] `{payload, signature}` envelopes around
//! [`AdmissionRequest`] / [`AdmissionAnswer`], and why an unauthenticated request is refused
//! ([`AuthError`]).

use axum::http::StatusCode;
use ed25519_dalek::{Signer, SigningKey};
use opengrid_session::Did;
use serde::{Deserialize, Serialize};

/// A signed payload (request or answer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    /// JSON text of the payload.
    pub payload: String,
    /// base58 ed25519 signature over the domain ‖ payload bytes.
    pub signature: String,
}

impl Signed {
    /// Signs `payload` (serialised to JSON) under `domain`.
    pub fn sign<T: Serialize>(domain: &[u8], payload: &T, key: &SigningKey) -> Signed {
        let payload = serde_json::to_string(payload).unwrap_or_default();
        let mut msg = domain.to_vec();
        msg.extend_from_slice(payload.as_bytes());
        Signed {
            signature: bs58::encode(key.sign(&msg).to_bytes()).into_string(),
            payload,
        }
    }

    /// Whether the signature verifies against `signer` under `domain`.
    pub fn verify(&self, domain: &[u8], signer: &Did) -> bool {
        let Ok(sig) = bs58::decode(&self.signature).into_vec() else {
            return false;
        };
        let Ok(sig) = ed25519_dalek::Signature::from_slice(&sig) else {
            return false;
        };
        let mut msg = domain.to_vec();
        msg.extend_from_slice(self.payload.as_bytes());
        signer.verifying_key().verify_strict(&msg, &sig).is_ok()
    }
}

/// An RC-to-RC admission request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionRequest {
    /// Unique per request (replay protection); 1 to 64 bytes.
    pub request_id: String,
    /// The asking RC.
    pub from_rc: Did,
    /// The asking RC's colony.
    pub from_colony: String,
    /// The RC asked (a request for another RC is refused).
    pub to_rc: Did,
    /// When the request was signed, unix ms.
    pub issued_at_ms: u64,
    /// The jurisdiction the session originates in (treaty `from` side).
    pub origin_zone: String,
    /// Data class of the session.
    pub data_class: String,
    /// Jurisdictions the session may be placed in there (manifest ∩ asking RC's treaties).
    pub zones: Vec<String>,
    /// Session id asked for, if any.
    pub session_id: Option<String>,
    /// The manifest, JSON.
    pub manifest: String,
}

/// The outcome of a remote admission.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case", deny_unknown_fields)]
pub enum Outcome {
    /// Placed on one of the remote colony's nodes.
    Placed {
        /// Session id.
        session_id: String,
        /// Node did.
        node: String,
        /// Node name.
        node_name: String,
        /// Node client-API base URL.
        address: String,
        /// Epoch.
        epoch: u64,
        /// The session's capability, signed by the placing RC (ADR 0026).
        #[serde(default)]
        capability: Option<String>,
    },
    /// Not placed.
    Refused {
        /// Error code (`unsatisfiable`, `forbidden_by_treaty`, `bad_manifest`, ...).
        code: String,
        /// Why.
        message: String,
    },
}

/// The remote RC's signed answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionAnswer {
    /// The request answered.
    pub request_id: String,
    /// The answering RC.
    pub rc: Did,
    /// Its colony.
    pub colony: String,
    /// What happened.
    pub outcome: Outcome,
}

pub(super) fn now_ms() -> u64 {
    crate::common::wire::unix_ms()
}

pub(super) fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

// ---------------------------------------------------------------------------------------------
// Receiving side

/// Why an RC-to-RC request was not authenticated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not a well-formed signed request.
    #[error("malformed admission request: {0}")]
    Malformed(String),
    /// The signer has no verified summary in this RC's peering table.
    #[error("RC {0} is not in this RC's peering table (unknown or expired)")]
    UnknownRc(Did),
    /// The signature does not verify against the claimed RC's key.
    #[error("bad signature on an admission request claiming RC {0}")]
    BadSignature(Did),
    /// Addressed to another RC.
    #[error("admission request addressed to {0}, not to this RC")]
    WrongRecipient(Did),
    /// Issued outside the accepted window.
    #[error("stale admission request: issued at {issued_at_ms} ms, now {now_ms} ms")]
    Stale {
        /// Issue time.
        issued_at_ms: u64,
        /// This RC's clock.
        now_ms: u64,
    },
    /// Its request id was seen before.
    #[error("replayed admission request {0}")]
    Replayed(String),
    /// The replay cache is full of live entries (retry later).
    #[error("too many admission requests in the replay window; retry later")]
    Busy,
}

impl AuthError {
    /// Metric/error code.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Malformed(_) => "bad_request",
            AuthError::UnknownRc(_) => "unknown_rc",
            AuthError::BadSignature(_) => "bad_signature",
            AuthError::WrongRecipient(_) => "wrong_recipient",
            AuthError::Stale { .. } => "stale_request",
            AuthError::Replayed(_) => "replayed_request",
            AuthError::Busy => "busy",
        }
    }

    pub(super) fn status(&self) -> StatusCode {
        match self {
            AuthError::Malformed(_) => StatusCode::BAD_REQUEST,
            AuthError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

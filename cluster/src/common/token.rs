//! Signed tokens: JSON Web Tokens (RFC 7519) signed with EdDSA by did:mycel keys, through the
//! `jsonwebtoken` crate with a crypto provider on this workspace's ed25519-dalek (one crypto
//! stack; no RSA or NIST curves compiled in). Only `EdDSA` tokens are accepted.
//!
//! Three kinds, told apart by their audience and `kind` claim (a token of one kind is never
//! accepted as another):
//! - **Session capabilities** (`aud = opengrid/session`): the RC that placed a session signs
//!   `{iss: RC, sub: session id, exp}` and returns it from `POST /sessions`; inputs, info,
//!   streaming and close of that session need it (ADR 0026).
//! - **Operator tokens** (`aud = opengrid/operator`): an operator key (the process's own, its RC's
//!   on a node, or one listed in `operators`) signs `{iss: operator, sub: operator, exp}`, short
//!   lived; status, listing, drain, handover and other people's sessions need one.
//!   `opengrid token operator` mints one.
//! - **Join tokens** (`aud = <colony>`): the colony operator signs `{iss, sub: node DID or "*",
//!   jur: allowed jurisdictions, exp}`; a node presents it in its signed join.

use std::sync::Once;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::common::identity::{Identity, NodeId};

/// RFC 8410 PKCS#8 v1 prefix of an Ed25519 private key (followed by the 32-byte seed).
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// Most operators a verifier tries.
pub const MAX_OPERATORS: usize = 16;
/// Longest token accepted.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// Why a token was not minted or not accepted.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Malformed, badly signed, expired, for another colony or audience.
    #[error("token refused: {0}")]
    Invalid(String),
    /// Signed by nobody this RC accepts as an operator.
    #[error("token is not signed by a colony operator of this RC")]
    UnknownIssuer,
    /// A capability of another session.
    #[error("the capability is for session {0}, not this one")]
    OtherSession(String),
    /// For another node.
    #[error("token is for node {0}, not this one")]
    OtherNode(String),
    /// The node declares a jurisdiction the token does not allow.
    #[error("token allows jurisdictions {allowed:?}, the node declares {declared:?}")]
    Jurisdiction {
        /// Allowed.
        allowed: Vec<String>,
        /// Declared.
        declared: String,
    },
}

/// Audience of session capabilities.
pub const SESSION_AUDIENCE: &str = "opengrid/session";
/// Audience of operator tokens.
pub const OPERATOR_AUDIENCE: &str = "opengrid/operator";

/// What a session capability or an operator token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The signer's DID (the RC for a capability, the operator for an operator token).
    pub iss: String,
    /// [`SESSION_AUDIENCE`] or [`OPERATOR_AUDIENCE`].
    pub aud: String,
    /// The session id (capability) or the operator's DID (operator token).
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// `session` or `operator`.
    pub kind: String,
}

/// What a join token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinClaims {
    /// The operator's DID.
    pub iss: String,
    /// The colony.
    pub aud: String,
    /// The node's DID, or `*` for any node.
    pub sub: String,
    /// Jurisdictions the node may declare (empty: any).
    #[serde(default)]
    pub jur: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Always `join`.
    pub kind: String,
}

struct EdSigner(SigningKey);
impl signature::Signer<Vec<u8>> for EdSigner {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        Ok(self.0.sign(msg).to_bytes().to_vec())
    }
}
impl JwtSigner for EdSigner {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

struct EdVerifier(VerifyingKey);
impl signature::Verifier<Vec<u8>> for EdVerifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        let sig = Signature::from_slice(sig)?;
        self.0.verify_strict(msg, &sig)
    }
}
impl JwtVerifier for EdVerifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

fn bad_key() -> jsonwebtoken::errors::Error {
    jsonwebtoken::errors::ErrorKind::InvalidEddsaKey.into()
}

fn signer(alg: &Algorithm, key: &EncodingKey) -> jsonwebtoken::errors::Result<Box<dyn JwtSigner>> {
    if *alg != Algorithm::EdDSA {
        return Err(jsonwebtoken::errors::ErrorKind::InvalidAlgorithm.into());
    }
    let der = key.as_bytes();
    let seed = der
        .strip_prefix(&ED25519_PKCS8_PREFIX[..])
        .and_then(|s| <[u8; 32]>::try_from(s).ok())
        .ok_or_else(bad_key)?;
    Ok(Box::new(EdSigner(SigningKey::from_bytes(&seed))))
}

fn verifier(
    alg: &Algorithm,
    key: &DecodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    if *alg != Algorithm::EdDSA {
        return Err(jsonwebtoken::errors::ErrorKind::InvalidAlgorithm.into());
    }
    let bytes = key.try_get_as_bytes()?;
    let pk = <[u8; 32]>::try_from(bytes).map_err(|_| bad_key())?;
    Ok(Box::new(EdVerifier(
        VerifyingKey::from_bytes(&pk).map_err(|_| bad_key())?,
    )))
}

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: signer,
    verifier_factory: verifier,
    key_utils: KeyUtils::new_unimplemented(),
};

fn provider() {
    static INSTALL: Once = Once::new();
    // Another install (none in this workspace) would leave its provider, which refuses nothing
    // we need: ours is only ever EdDSA.
    INSTALL.call_once(|| {
        let _ = PROVIDER.install_default();
    });
}

fn encoding_key(id: &Identity) -> EncodingKey {
    let mut der = ED25519_PKCS8_PREFIX.to_vec();
    der.extend_from_slice(&id.signing_key().to_bytes());
    EncodingKey::from_ed_der(&der)
}

fn decoding_key(id: &NodeId) -> Result<DecodingKey, TokenError> {
    use base64::Engine as _;
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.public_key());
    DecodingKey::from_ed_components(&x).map_err(|e| TokenError::Invalid(e.to_string()))
}

/// Seconds since the Unix epoch (token clocks).
pub(crate) fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn mint<C: Serialize>(signer: &Identity, claims: &C) -> Result<String, TokenError> {
    provider();
    jsonwebtoken::encode(
        &Header::new(Algorithm::EdDSA),
        claims,
        &encoding_key(signer),
    )
    .map_err(|e| TokenError::Invalid(e.to_string()))
}

/// Decodes `token` as signed by one of `issuers` (tried in order, at most [`MAX_OPERATORS`]) for
/// `audience`, with an expiry. The claims' `kind` is the caller's to check.
fn decode_by_any<C: serde::de::DeserializeOwned>(
    token: &str,
    issuers: &[NodeId],
    audience: &str,
) -> Result<C, TokenError> {
    provider();
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::Invalid(format!(
            "{} bytes, at most {MAX_TOKEN_BYTES}",
            token.len()
        )));
    }
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    v.leeway = 30;
    let mut last = TokenError::UnknownIssuer;
    for issuer in issuers.iter().take(MAX_OPERATORS) {
        v.set_issuer(&[issuer.did()]);
        match jsonwebtoken::decode::<C>(token, &decoding_key(issuer)?, &v) {
            Ok(t) => return Ok(t.claims),
            Err(e) => {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    // Not this issuer's signature: try the next one.
                    K::InvalidSignature | K::InvalidIssuer => {}
                    _ => last = TokenError::Invalid(e.to_string()),
                }
            }
        }
    }
    Err(last)
}

fn access_claims(
    signer: &Identity,
    aud: &str,
    sub: String,
    kind: &str,
    valid: Duration,
) -> AccessClaims {
    let iat = now_s();
    AccessClaims {
        iss: signer.id().did(),
        aud: aud.into(),
        sub,
        exp: iat.saturating_add(valid.as_secs().max(1)),
        iat,
        kind: kind.into(),
    }
}

/// Mints the capability of `session`, signed by the RC that placed it, valid for `valid`.
pub fn mint_session(rc: &Identity, session: &str, valid: Duration) -> Result<String, TokenError> {
    mint(
        rc,
        &access_claims(rc, SESSION_AUDIENCE, session.into(), "session", valid),
    )
}

/// Checks a session capability: signed by one of `issuers` (RCs), for `session`, not expired.
pub fn verify_session(
    token: &str,
    issuers: &[NodeId],
    session: &str,
) -> Result<AccessClaims, TokenError> {
    let c: AccessClaims = decode_by_any(token, issuers, SESSION_AUDIENCE)?;
    if c.kind != "session" {
        return Err(TokenError::Invalid(format!(
            "a {:?} token, not a session capability",
            c.kind
        )));
    }
    if c.sub != session {
        return Err(TokenError::OtherSession(c.sub));
    }
    Ok(c)
}

/// Checks that `token` is a valid capability of some session (which one is not asked).
pub fn verify_session_any(token: &str, issuers: &[NodeId]) -> Result<AccessClaims, TokenError> {
    let c: AccessClaims = decode_by_any(token, issuers, SESSION_AUDIENCE)?;
    if c.kind != "session" {
        return Err(TokenError::Invalid(format!(
            "a {:?} token, not a session capability",
            c.kind
        )));
    }
    Ok(c)
}

/// Mints an operator token signed by `operator`, valid for `valid` (keep it short: minutes).
pub fn mint_operator(operator: &Identity, valid: Duration) -> Result<String, TokenError> {
    mint(
        operator,
        &access_claims(
            operator,
            OPERATOR_AUDIENCE,
            operator.id().did(),
            "operator",
            valid,
        ),
    )
}

/// An operator token signed by the key in data dir `dir` (created there on first use; its DID is
/// then `opengrid id --data-dir <dir>`), valid for `valid`.
pub fn operator_token_from_dir(
    dir: &std::path::Path,
    valid: Duration,
) -> Result<String, TokenError> {
    let id = Identity::load_or_create(dir)
        .map_err(|e| TokenError::Invalid(format!("operator key in {}: {e}", dir.display())))?;
    mint_operator(&id, valid)
}

/// An HTTP client (no automatic redirects, `timeout` per request) that sends an operator token
/// minted from the key in `dir` on every request: for launchers and tests acting as the colony's
/// operator (pass the RC's data dir before starting the RC).
pub fn operator_http(
    dir: &std::path::Path,
    timeout: Duration,
) -> Result<reqwest::Client, TokenError> {
    let t = operator_token_from_dir(dir, Duration::from_secs(24 * 3600))?;
    let mut h = reqwest::header::HeaderMap::new();
    let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))
        .map_err(|e| TokenError::Invalid(e.to_string()))?;
    v.set_sensitive(true);
    h.insert(reqwest::header::AUTHORIZATION, v);
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .default_headers(h)
        .build()
        .map_err(|e| TokenError::Invalid(e.to_string()))
}

/// Checks an operator token: signed by one of `operators`, not expired.
pub fn verify_operator(token: &str, operators: &[NodeId]) -> Result<AccessClaims, TokenError> {
    let c: AccessClaims = decode_by_any(token, operators, OPERATOR_AUDIENCE)?;
    if c.kind != "operator" || c.sub != c.iss {
        return Err(TokenError::Invalid(format!(
            "a {:?} token, not an operator token",
            c.kind
        )));
    }
    Ok(c)
}

/// Mints a join token for `colony`, valid for `valid`, for one node (or any with `None`), allowing
/// `jurisdictions` (empty: any).
pub fn mint_join(
    operator: &Identity,
    colony: &str,
    node: Option<&NodeId>,
    jurisdictions: &[String],
    valid: Duration,
) -> Result<String, TokenError> {
    let iat = now_s();
    let claims = JoinClaims {
        iss: operator.id().did(),
        aud: colony.to_string(),
        sub: node.map(|n| n.did()).unwrap_or_else(|| "*".into()),
        jur: jurisdictions.to_vec(),
        exp: iat.saturating_add(valid.as_secs().max(1)),
        iat,
        kind: "join".into(),
    };
    mint(operator, &claims)
}

/// Checks a join token: signed by one of `operators`, for `colony`, not expired, for `node` (or
/// any node), allowing `jurisdiction`.
pub fn verify_join(
    token: &str,
    operators: &[NodeId],
    colony: &str,
    node: &NodeId,
    jurisdiction: &str,
) -> Result<JoinClaims, TokenError> {
    let c: JoinClaims = decode_by_any(token, operators, colony)?;
    if c.kind != "join" {
        return Err(TokenError::Invalid(format!(
            "a {:?} token, not a join token",
            c.kind
        )));
    }
    if c.sub != "*" && c.sub != node.did() {
        return Err(TokenError::OtherNode(c.sub));
    }
    if !c.jur.is_empty() && !c.jur.iter().any(|j| j == jurisdiction) {
        return Err(TokenError::Jurisdiction {
            allowed: c.jur,
            declared: jurisdiction.to_string(),
        });
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_token_admits_its_node_in_its_jurisdictions_only() {
        let (op, node, other) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let ops = [op.id()];
        let t = mint_join(
            &op,
            "eu",
            Some(&node.id()),
            &["DE".into()],
            Duration::from_secs(60),
        )
        .unwrap();
        let c = verify_join(&t, &ops, "eu", &node.id(), "DE").unwrap();
        assert_eq!((c.iss, c.sub), (op.id().did(), node.id().did()));
        assert!(matches!(
            verify_join(&t, &ops, "eu", &other.id(), "DE"),
            Err(TokenError::OtherNode(_))
        ));
        assert!(matches!(
            verify_join(&t, &ops, "eu", &node.id(), "FR"),
            Err(TokenError::Jurisdiction { .. })
        ));
        assert!(matches!(
            verify_join(&t, &ops, "us", &node.id(), "DE"),
            Err(TokenError::Invalid(_))
        ));
        // An open token: any node, any jurisdiction.
        let any = mint_join(&op, "eu", None, &[], Duration::from_secs(60)).unwrap();
        verify_join(&any, &ops, "eu", &other.id(), "FR").unwrap();
    }

    #[test]
    fn forged_tampered_and_foreign_tokens_are_refused() {
        let (op, stranger, node) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let ops = [op.id()];
        // Signed by a stranger (self-declared operator).
        let t = mint_join(&stranger, "eu", None, &[], Duration::from_secs(60)).unwrap();
        assert!(matches!(
            verify_join(&t, &ops, "eu", &node.id(), "DE"),
            Err(TokenError::UnknownIssuer)
        ));
        // Claims changed after signing.
        let t = mint_join(
            &op,
            "eu",
            Some(&node.id()),
            &["DE".into()],
            Duration::from_secs(60),
        )
        .unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = String::from_utf8(b64.decode(parts[1]).unwrap())
            .unwrap()
            .replace("\"DE\"", "\"FR\"");
        let forged = format!("{}.{}.{}", parts[0], b64.encode(claims), parts[2]);
        assert!(verify_join(&forged, &ops, "eu", &node.id(), "FR").is_err());
        // alg "none" and garbage.
        let none = format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            parts[1]
        );
        assert!(verify_join(&none, &ops, "eu", &node.id(), "DE").is_err());
        assert!(verify_join("not a token", &ops, "eu", &node.id(), "DE").is_err());
        assert!(verify_join(
            &"a".repeat(MAX_TOKEN_BYTES + 1),
            &ops,
            "eu",
            &node.id(),
            "DE"
        )
        .is_err());
    }

    #[test]
    fn a_capability_opens_its_session_only_and_no_kind_passes_for_another() {
        let (rc, other_rc, op) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let cap = mint_session(&rc, "s1", Duration::from_secs(60)).unwrap();
        assert_eq!(verify_session(&cap, &[rc.id()], "s1").unwrap().sub, "s1");
        assert!(
            matches!(verify_session(&cap, &[rc.id()], "s2"), Err(TokenError::OtherSession(s)) if s == "s1")
        );
        assert!(matches!(
            verify_session(&cap, &[other_rc.id()], "s1"),
            Err(TokenError::UnknownIssuer)
        ));
        // A capability is no operator token, an operator token no capability, a join token neither.
        assert!(verify_operator(&cap, &[rc.id()]).is_err());
        let ot = mint_operator(&op, Duration::from_secs(60)).unwrap();
        assert_eq!(
            verify_operator(&ot, &[rc.id(), op.id()]).unwrap().iss,
            op.id().did()
        );
        assert!(verify_operator(&ot, &[rc.id()]).is_err());
        assert!(verify_session(&ot, &[op.id()], &op.id().did()).is_err());
        let join = mint_join(&op, OPERATOR_AUDIENCE, None, &[], Duration::from_secs(60)).unwrap();
        assert!(verify_operator(&join, &[op.id()]).is_err());
    }

    #[test]
    fn expired_tokens_are_refused() {
        let (op, node) = (Identity::generate(), Identity::generate());
        provider();
        let claims = JoinClaims {
            iss: op.id().did(),
            aud: "eu".into(),
            sub: "*".into(),
            jur: vec![],
            exp: now_s() - 3600,
            iat: now_s() - 7200,
            kind: "join".into(),
        };
        let t = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &encoding_key(&op))
            .unwrap();
        let e = verify_join(&t, &[op.id()], "eu", &node.id(), "DE").unwrap_err();
        assert!(e.to_string().contains("xpired"), "{e}");
    }
}

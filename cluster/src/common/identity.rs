//! Node and RC identity: one ed25519 key per process role, created on first start and kept in
//! `<data_dir>/identity.key` (mode 0600). The printable id is a DID:
//! `did:mycel:z` + base58btc(multicodec `0xed 0x01` ‖ 32-byte public key), the multibase form
//! used by `did:key`. The same key signs the colony join request and, later, receipts and canopy
//! summaries.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// DID method prefix of OpenGrid ids.
pub const DID_PREFIX: &str = "did:mycel:";
/// File name of the key inside a data dir.
pub const KEY_FILE: &str = "identity.key";

/// Why an id, key file or signature was refused.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The string does not start with `did:mycel:`.
    #[error("{0:?} is not a did:mycel id (expected prefix {DID_PREFIX})")]
    NotMycel(String),
    /// The multibase part does not use base58btc (`z`).
    #[error("{0:?}: multibase prefix must be 'z' (base58btc)")]
    BadMultibase(String),
    /// The base58 text does not decode.
    #[error("{id:?}: base58 decode failed: {reason}")]
    Base58 {
        /// The id.
        id: String,
        /// Decoder message.
        reason: String,
    },
    /// Decoded bytes are not multicodec ed25519-pub + 32 bytes.
    #[error("{0:?}: not an ed25519 public key (multicodec 0xed01 + 32 bytes expected)")]
    NotEd25519(String),
    /// The 32 bytes are not a valid curve point.
    #[error("{0:?}: invalid ed25519 public key")]
    BadKey(String),
    /// A signature does not verify for the id.
    #[error("signature does not verify for {0}")]
    BadSignature(String),
    /// The key file could not be loaded or created (I/O, corrupt, insecure mode).
    #[error("identity {0}")]
    KeyFile(#[from] opengrid_session::KeyFileError),
}

/// A public identity: an ed25519 verifying key shown as `did:mycel:z…`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId(VerifyingKey);

impl NodeId {
    /// The DID string (encoding shared with every crate: [`opengrid_session::Did`]).
    pub fn did(&self) -> String {
        opengrid_session::Did::from_public_key(&self.0)
            .as_str()
            .to_string()
    }

    /// Parses and checks a `did:mycel:z…` id.
    ///
    /// Every control message naming a node carries its DID, and checking one decodes base58 and
    /// decompresses a curve point (~10 µs): ids parsed once are kept in a bounded cache (an RC
    /// absorbing 10 k heartbeats/s spent 16 % of its control thread decompressing the same few
    /// keys again; issue #20). Only ids that parsed are kept; the cache is cleared when full.
    pub fn parse(s: &str) -> Result<Self, IdentityError> {
        const CACHED: usize = 65_536;
        static CACHE: std::sync::LazyLock<
            std::sync::Mutex<std::collections::HashMap<String, NodeId>>,
        > = std::sync::LazyLock::new(Default::default);
        if let Some(id) = CACHE.lock().unwrap_or_else(|p| p.into_inner()).get(s) {
            return Ok(*id);
        }
        let id = Self::parse_uncached(s)?;
        let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHED {
            cache.clear();
        }
        cache.insert(s.to_string(), id);
        Ok(id)
    }

    fn parse_uncached(s: &str) -> Result<Self, IdentityError> {
        use opengrid_session::DidError as E;
        opengrid_session::Did::parse(s)
            .map(|d| NodeId(d.verifying_key()))
            .map_err(|e| match e {
                E::MissingPrefix => IdentityError::NotMycel(s.to_string()),
                E::NotBase58btc => IdentityError::BadMultibase(s.to_string()),
                E::InvalidBase58(reason) => IdentityError::Base58 {
                    id: s.to_string(),
                    reason,
                },
                E::InvalidKey => IdentityError::BadKey(s.to_string()),
                E::TooLong(_) | E::WrongMulticodec | E::WrongKeyLength(_) => {
                    IdentityError::NotEd25519(s.to_string())
                }
            })
    }

    /// Verifies `sig` over `msg` (strict: rejects malleable and small-order forms).
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), IdentityError> {
        let sig: [u8; 64] = sig
            .try_into()
            .map_err(|_| IdentityError::BadSignature(self.did()))?;
        self.0
            .verify_strict(msg, &Signature::from_bytes(&sig))
            .map_err(|_| IdentityError::BadSignature(self.did()))
    }

    /// The DID as the shared typed value ([`opengrid_session::Did`]).
    pub fn did_value(&self) -> opengrid_session::Did {
        opengrid_session::Did::from_public_key(&self.0)
    }

    /// The raw public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The id of a raw public key ([`Self::public_key`]); a key that is not a valid ed25519
    /// point is refused.
    pub fn from_public_key(key: &[u8; 32]) -> Result<Self, IdentityError> {
        VerifyingKey::from_bytes(key)
            .map(NodeId)
            .map_err(|_| IdentityError::BadKey(format!("{} key bytes", key.len())))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.did())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.did())
    }
}

impl FromStr for NodeId {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeId::parse(s)
    }
}

impl PartialOrd for NodeId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for NodeId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.as_bytes().cmp(other.0.as_bytes())
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.did())
    }
}
impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        NodeId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A private identity (the signing key). Never printed.
pub struct Identity {
    key: SigningKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.id())
    }
}

impl Identity {
    /// A fresh random identity (not persisted).
    pub fn generate() -> Self {
        let seed: [u8; 32] = rand::random();
        Identity {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// Loads `<dir>/identity.key`, creating it (mode 0600) on first start; the shared key-file
    /// loader ([`opengrid_session::keyfile`]) refuses a key readable by group/others or corrupt.
    pub fn load_or_create(dir: &Path) -> Result<Self, IdentityError> {
        let path = dir.join(KEY_FILE);
        let (key, origin) = opengrid_session::keyfile::load_or_create(&path)?;
        let id = Identity { key };
        if origin == opengrid_session::keyfile::Origin::Created {
            tracing::info!(path = %path.display(), did = %id.id(), "created identity");
        }
        Ok(id)
    }

    /// The public id.
    pub fn id(&self) -> NodeId {
        NodeId(self.key.verifying_key())
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }

    /// The ed25519 signing key (the RC's canopy uses it as its libp2p identity).
    pub(crate) fn signing_key(&self) -> SigningKey {
        self.key.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn did_round_trip_and_persistence() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        let b = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.id(), b.id());
        let did = a.id().did();
        assert!(did.starts_with("did:mycel:z6Mk"), "{did}");
        assert_eq!(NodeId::parse(&did).unwrap(), a.id());
        // Cached now: the same answer, and a near miss of a cached id is still checked.
        assert_eq!(NodeId::parse(&did).unwrap(), a.id());
        let mut near = did.clone();
        near.push('1');
        assert!(NodeId::parse(&near).is_err(), "{near}");
        assert!(NodeId::parse(&did[..did.len() - 1]).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let m = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o600);
        }
        let sig = a.sign(b"hello");
        a.id().verify(b"hello", &sig).unwrap();
        assert!(a.id().verify(b"hellp", &sig).is_err());
        assert!(Identity::generate().id().verify(b"hello", &sig).is_err());
    }

    #[test]
    fn raw_keys_round_trip_and_a_key_that_is_no_point_is_refused() {
        let id = Identity::generate().id();
        assert_eq!(NodeId::from_public_key(&id.public_key()).unwrap(), id);
        // y = 2 is not the y-coordinate of any point on the curve: no key.
        let mut bad = [0u8; 32];
        bad[0] = 2;
        assert!(matches!(
            NodeId::from_public_key(&bad),
            Err(IdentityError::BadKey(_))
        ));
    }

    #[test]
    fn parse_errors_are_typed() {
        assert!(matches!(
            NodeId::parse("did:key:z6Mk"),
            Err(IdentityError::NotMycel(_))
        ));
        assert!(matches!(
            NodeId::parse("did:mycel:f00"),
            Err(IdentityError::BadMultibase(_))
        ));
        assert!(matches!(
            NodeId::parse("did:mycel:z0OIl"),
            Err(IdentityError::Base58 { .. })
        ));
        assert!(matches!(
            NodeId::parse("did:mycel:z2222"),
            Err(IdentityError::NotEd25519(_))
        ));
    }

    #[test]
    fn insecure_or_corrupt_key_file_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(KEY_FILE);
        std::fs::write(&p, b"short").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(
                Identity::load_or_create(dir.path()),
                Err(IdentityError::KeyFile(
                    opengrid_session::KeyFileError::InsecureMode { .. }
                ))
            ));
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert!(matches!(
            Identity::load_or_create(dir.path()),
            Err(IdentityError::KeyFile(
                opengrid_session::KeyFileError::Corrupt { .. }
            ))
        ));
    }
}

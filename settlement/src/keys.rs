//! Ed25519 keypairs for nodes and RCs, persisted by the shared key-file loader
//! ([`opengrid_session::keyfile`]).

use std::path::Path;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use opengrid_session::keyfile;

use crate::did::Did;
use crate::error::SettlementError;

/// A node's or RC's signing identity.
#[derive(Clone)]
pub struct Keypair {
    signing: SigningKey,
}

impl std::fmt::Debug for Keypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keypair({})", self.did())
    }
}

impl Keypair {
    /// A fresh random keypair (32 random bytes from the OS-seeded thread RNG).
    pub fn generate() -> Self {
        Self::from_seed(rand::random::<[u8; 32]>())
    }

    /// The keypair of a 32-byte secret seed (deterministic; for tests and key files).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// Loads the key file at `path`, or creates it (mode 0600 from the start) when absent, with
    /// the shared loader ([`opengrid_session::keyfile`]): a node/RC `identity.key` works as well,
    /// so an operator registers a node with the very key it signs receipts with. A key file
    /// readable by group/others, or of the wrong size or magic, is refused.
    pub fn load_or_create(path: &Path) -> Result<Self, SettlementError> {
        let (signing, _) = keyfile::load_or_create(path)?;
        Ok(Self { signing })
    }

    /// Loads an existing key file (refused when absent, insecure or corrupt): for keys that
    /// must not be created by accident, such as the ledger operator's.
    pub fn load(path: &Path) -> Result<Self, SettlementError> {
        Ok(Self {
            signing: keyfile::load(path)?,
        })
    }

    /// The public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// The printable identity.
    pub fn did(&self) -> Did {
        Did::from_public_key(&self.verifying_key())
    }

    /// The ed25519 signing key (for the links this identity connects with).
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    /// Sign `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn reads_raw_seeds_and_node_identity_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let private =
            |p: &Path| std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let raw = dir.path().join("raw.key");
        std::fs::write(&raw, [7u8; 32]).unwrap();
        private(&raw);
        let ident = dir.path().join("identity.key");
        let mut bytes = keyfile::KEY_FILE_MAGIC.to_vec();
        bytes.extend_from_slice(&[7u8; 32]);
        std::fs::write(&ident, bytes).unwrap();
        private(&ident);
        let a = Keypair::load_or_create(&raw).unwrap();
        let b = Keypair::load_or_create(&ident).unwrap();
        assert_eq!(a.did(), b.did());
        assert_eq!(a.did(), Keypair::from_seed([7u8; 32]).did());
        let bad = dir.path().join("bad.key");
        std::fs::write(&bad, [1u8; 39]).unwrap();
        private(&bad);
        assert!(matches!(
            Keypair::load_or_create(&bad),
            Err(SettlementError::KeyFile(
                opengrid_session::KeyFileError::Corrupt { .. }
            ))
        ));
        // A fresh key is created private and loads back as the same identity.
        let new = dir.path().join("new.key");
        let c = Keypair::load_or_create(&new).unwrap();
        assert_eq!(
            std::fs::metadata(&new).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(Keypair::load_or_create(&new).unwrap().did(), c.did());
        std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Keypair::load_or_create(&new),
            Err(SettlementError::KeyFile(
                opengrid_session::KeyFileError::InsecureMode { .. }
            ))
        ));
    }
}

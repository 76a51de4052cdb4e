//! Ed25519 keypairs for nodes and RCs, persisted as a 32-byte seed file.

use std::path::Path;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::did::Did;
use crate::error::SettlementError;

/// Magic of the node identity key file (`OGKEY`, version 1) followed by the 32-byte seed.
pub const IDENTITY_FILE_MAGIC: &[u8; 8] = b"OGKEY\x00\x00\x01";

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

    /// Load the 32-byte seed at `path`, or create it (mode 0600 on unix) when absent.
    pub fn load_or_create(path: &Path) -> Result<Self, SettlementError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                // A node/RC identity file (`<data_dir>/identity.key`, written by `opengrid node`
                // and `opengrid rc`) is the same seed behind an 8-byte magic: accept it, so an
                // operator registers a node with the very key it signs receipts with.
                let seed_bytes = match bytes.strip_prefix(IDENTITY_FILE_MAGIC.as_slice()) {
                    Some(rest) => rest,
                    None => bytes.as_slice(),
                };
                let seed: [u8; 32] = seed_bytes.try_into().map_err(|_| {
                    SettlementError::Key(format!(
                        "{}: expected a 32-byte seed or a 40-byte node identity file, found {} bytes",
                        path.display(),
                        bytes.len()
                    ))
                })?;
                Ok(Self::from_seed(seed))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let kp = Self::generate();
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(path, kp.signing.to_bytes())?;
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
                }
                Ok(kp)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// The printable identity.
    pub fn did(&self) -> Did {
        Did::from_public_key(&self.verifying_key())
    }

    /// Sign `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_raw_seeds_and_node_identity_files() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw.key");
        std::fs::write(&raw, [7u8; 32]).unwrap();
        let ident = dir.path().join("identity.key");
        let mut bytes = IDENTITY_FILE_MAGIC.to_vec();
        bytes.extend_from_slice(&[7u8; 32]);
        std::fs::write(&ident, bytes).unwrap();
        let a = Keypair::load_or_create(&raw).unwrap();
        let b = Keypair::load_or_create(&ident).unwrap();
        assert_eq!(a.did(), b.did());
        assert_eq!(a.did(), Keypair::from_seed([7u8; 32]).did());
        let bad = dir.path().join("bad.key");
        std::fs::write(&bad, [1u8; 39]).unwrap();
        assert!(matches!(
            Keypair::load_or_create(&bad),
            Err(SettlementError::Key(_))
        ));
    }
}

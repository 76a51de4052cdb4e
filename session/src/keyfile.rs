//! Ed25519 key files: the one loader every node, RC and settlement tool uses.
//!
//! ```text
//! file = "OGKEY" 0x00 0x00 0x01 ‖ 32-byte ed25519 seed        (40 bytes, mode 0600)
//! ```
//! A bare 32-byte seed (the format settlement tools wrote before) is read as well; new files are
//! always written in the tagged form.
//!
//! - **Created private.** A new key is written to a temporary file in the same directory that is
//!   opened with mode 0600 from its first byte (never chmod after the fact), fsynced, then linked
//!   to its final name with `link(2)`, which fails instead of replacing an existing file, and the
//!   directory is fsynced. A reader never sees a partial key, and two processes creating the same
//!   key file at once end up with one key: the loser of the race reads the winner's file.
//! - **Checked on load.** A key file readable or writable by group or others is refused with
//!   [`KeyFileError::InsecureMode`] naming the path and mode; a file of the wrong size or magic
//!   with [`KeyFileError::Corrupt`]. The mode is checked on the open file, so the bytes read are
//!   the bytes whose mode was checked.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;

/// The 8-byte tag in front of the seed (`OGKEY`, format version 1).
pub const KEY_FILE_MAGIC: &[u8; 8] = b"OGKEY\x00\x00\x01";
/// Size of a key file in the tagged format.
pub const KEY_FILE_LEN: usize = KEY_FILE_MAGIC.len() + SEED_LEN;
const SEED_LEN: usize = 32;

/// Why a key file could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading or writing the file (or its directory) failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// [`create`] found a file at the path; an existing key is never replaced.
    #[error("key file {0} already exists; refusing to overwrite it")]
    Exists(PathBuf),
    /// The file is not a key file.
    #[error("key file {path} is corrupt ({reason}); move it away to create a new key")]
    Corrupt {
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The file is accessible to group or others.
    #[error("key file {path} has mode {mode:03o}; it must be 0600 (chmod 600 {path})")]
    InsecureMode {
        /// The path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// Whether [`load_or_create`] found the key or made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The file existed.
    Loaded,
    /// This call created it.
    Created,
}

/// Reads the key at `path`, refusing insecure permissions and malformed contents.
pub fn load(path: &Path) -> Result<SigningKey, KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::InsecureMode {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    let corrupt = |reason: String| KeyFileError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    if !meta.is_file() {
        return Err(corrupt("not a regular file".into()));
    }
    // Read at most one byte more than the largest valid file: a huge file is refused by size,
    // never read into memory.
    let mut bytes = Vec::with_capacity(KEY_FILE_LEN + 1);
    file.take(KEY_FILE_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    let seed = match bytes.len() {
        KEY_FILE_LEN => bytes
            .strip_prefix(KEY_FILE_MAGIC.as_slice())
            .ok_or_else(|| corrupt("wrong magic; expected an OGKEY v1 file".into()))?,
        SEED_LEN => bytes.as_slice(),
        n => {
            return Err(corrupt(format!(
                "{n} bytes; expected {KEY_FILE_LEN} (tagged) or {SEED_LEN} (bare seed)"
            )))
        }
    };
    let seed: [u8; SEED_LEN] = seed
        .try_into()
        .map_err(|_| corrupt("seed is not 32 bytes".into()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Creates a new random key at `path` (mode 0600 from the start), creating missing parent
/// directories; refuses with [`KeyFileError::Exists`] when a file is already there.
pub fn create(path: &Path) -> Result<SigningKey, KeyFileError> {
    let key = SigningKey::from_bytes(&rand::random::<[u8; SEED_LEN]>());
    let mut bytes = Vec::with_capacity(KEY_FILE_LEN);
    bytes.extend_from_slice(KEY_FILE_MAGIC);
    bytes.extend_from_slice(&key.to_bytes());
    write_new_private(path, &bytes)?;
    Ok(key)
}

/// Loads the key at `path`, or creates it when there is none. Safe to call from several
/// processes at once: exactly one creates the file and all return the same key.
pub fn load_or_create(path: &Path) -> Result<(SigningKey, Origin), KeyFileError> {
    match load(path) {
        Ok(k) => Ok((k, Origin::Loaded)),
        Err(KeyFileError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            match create(path) {
                Ok(k) => Ok((k, Origin::Created)),
                // Another process created it between our load and our create: use theirs.
                Err(KeyFileError::Exists(_)) => Ok((load(path)?, Origin::Loaded)),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Writes `bytes` to a fresh private temp file beside `path`, then links it to `path` without
/// ever replacing an existing file.
fn write_new_private(path: &Path, bytes: &[u8]) -> Result<(), KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let name = path
        .file_name()
        .ok_or_else(|| KeyFileError::Corrupt {
            path: path.to_path_buf(),
            reason: "the path names no file".into(),
        })?
        .to_string_lossy();
    let tmp = dir.join(format!(
        ".{name}.{}.{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let written = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::hard_link(&tmp, path)
    })();
    // The temp name is gone whether or not the link succeeded; the key lives on under `path`.
    let _ = std::fs::remove_file(&tmp);
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(KeyFileError::Exists(path.to_path_buf()))
        }
        Err(e) => return Err(io(e)),
    }
    // Make the new directory entry durable.
    #[cfg(unix)]
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[cfg(unix)]
    fn set_mode(p: &Path, m: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }

    #[test]
    fn creates_a_private_tagged_file_and_loads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/identity.key");
        let (a, origin) = load_or_create(&p).unwrap();
        assert_eq!(origin, Origin::Created);
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(bytes.len(), KEY_FILE_LEN);
        assert_eq!(&bytes[..8], KEY_FILE_MAGIC);
        #[cfg(unix)]
        assert_eq!(mode(&p), 0o600);
        let (b, origin) = load_or_create(&p).unwrap();
        assert_eq!(origin, Origin::Loaded);
        assert_eq!(a.to_bytes(), b.to_bytes());
        // No temp file is left behind.
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("identity.key")]);
    }

    #[test]
    fn create_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let a = create(&p).unwrap();
        assert!(matches!(create(&p), Err(KeyFileError::Exists(ref q)) if q == &p));
        assert_eq!(load(&p).unwrap().to_bytes(), a.to_bytes());
    }

    #[cfg(unix)]
    #[test]
    fn refuses_a_key_readable_by_others_naming_path_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        create(&p).unwrap();
        for m in [0o644, 0o640, 0o604, 0o660] {
            set_mode(&p, m);
            match load_or_create(&p) {
                Err(e @ KeyFileError::InsecureMode { .. }) => {
                    let KeyFileError::InsecureMode { ref path, mode } = e else {
                        unreachable!()
                    };
                    assert_eq!((path.as_path(), mode), (p.as_path(), m));
                    let msg = e.to_string();
                    assert!(msg.contains(&format!("{m:03o}")), "{msg}");
                    assert!(msg.contains(&p.display().to_string()), "{msg}");
                }
                other => panic!("mode {m:o}: expected InsecureMode, got {other:?}"),
            }
        }
        set_mode(&p, 0o400);
        load(&p).unwrap();
    }

    #[test]
    fn refuses_corrupt_or_short_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut wrong_magic = b"NOTAKEY!".to_vec();
        wrong_magic.extend_from_slice(&[7; 32]);
        let cases: [(&str, Vec<u8>); 5] = [
            ("empty", vec![]),
            ("short", b"short".to_vec()),
            ("one-short", [1u8; 39].to_vec()),
            ("wrong-magic", wrong_magic),
            ("huge", vec![0u8; 1 << 20]),
        ];
        for (name, bytes) in cases {
            let p = dir.path().join(name);
            std::fs::write(&p, &bytes).unwrap();
            #[cfg(unix)]
            set_mode(&p, 0o600);
            assert!(
                matches!(load_or_create(&p), Err(KeyFileError::Corrupt { ref path, .. }) if path == &p),
                "{name}"
            );
            // Still there, untouched: a corrupt key is never replaced by a new one.
            assert_eq!(std::fs::read(&p).unwrap(), bytes, "{name}");
        }
        let d = dir.path().join("a-dir");
        std::fs::create_dir(&d).unwrap();
        #[cfg(unix)]
        set_mode(&d, 0o700);
        assert!(load(&d).is_err());
    }

    #[test]
    fn reads_bare_seeds() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("raw.key");
        std::fs::write(&p, [7u8; 32]).unwrap();
        #[cfg(unix)]
        set_mode(&p, 0o600);
        assert_eq!(load(&p).unwrap().to_bytes(), [7u8; 32]);
    }

    #[test]
    fn concurrent_creators_agree_on_one_key() {
        for round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("identity.key");
            let barrier = std::sync::Barrier::new(8);
            let keys: Vec<(SigningKey, Origin)> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            load_or_create(&p).unwrap()
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let created = keys.iter().filter(|(_, o)| *o == Origin::Created).count();
            assert_eq!(created, 1, "round {round}: exactly one creator");
            assert!(
                keys.iter()
                    .all(|(k, _)| k.to_bytes() == keys[0].0.to_bytes()),
                "round {round}: every caller returns the same key"
            );
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        }
    }
}

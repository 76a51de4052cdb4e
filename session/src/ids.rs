//! Identifiers: [`SessionId`], [`Epoch`], [`Seq`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest accepted session id, in bytes.
pub const MAX_SESSION_ID_LEN: usize = 128;

/// A stable session identifier: 1..=128 bytes of `[A-Za-z0-9._:-]`.
///
/// The restricted alphabet keeps ids safe as RocksDB key prefixes (no NUL), URL path segments and
/// log fields.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SessionId(String);

/// Why a string is not a valid [`SessionId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionIdError {
    /// The id is empty.
    #[error("session id is empty")]
    Empty,
    /// The id is longer than [`MAX_SESSION_ID_LEN`].
    #[error("session id is {len} bytes, the limit is {MAX_SESSION_ID_LEN}")]
    TooLong {
        /// Length of the rejected id.
        len: usize,
    },
    /// The id contains a character outside `[A-Za-z0-9._:-]`.
    #[error("session id contains {ch:?} at byte {at}; allowed: A-Z a-z 0-9 . _ : -")]
    BadChar {
        /// The offending character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
}

impl SessionId {
    /// Validates and wraps `s`.
    pub fn new(s: impl Into<String>) -> Result<Self, SessionIdError> {
        let s = s.into();
        if s.is_empty() {
            return Err(SessionIdError::Empty);
        }
        if s.len() > MAX_SESSION_ID_LEN {
            return Err(SessionIdError::TooLong { len: s.len() });
        }
        if let Some((at, ch)) = s
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
        {
            return Err(SessionIdError::BadChar { ch, at });
        }
        Ok(Self(s))
    }

    /// A fresh random id (`s-` + 32 hex chars), for callers that do not bring their own.
    pub fn random() -> Self {
        let mut seed = [0u8; 16];
        fill_random(&mut seed);
        let mut s = String::with_capacity(34);
        s.push_str("s-");
        for b in seed {
            s.push_str(&format!("{b:02x}"));
        }
        Self(s)
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Fills `buf` from the OS entropy source, falling back to a time/address mix when it is
/// unavailable (ids need uniqueness, not secrecy).
fn fill_random(buf: &mut [u8]) {
    use std::io::Read;
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        if f.read_exact(buf).is_ok() {
            return;
        }
    }
    let h = blake3::hash(
        format!(
            "{:?}{:?}{}",
            std::time::SystemTime::now(),
            std::thread::current().id(),
            buf.as_ptr() as usize
        )
        .as_bytes(),
    );
    for (d, s) in buf.iter_mut().zip(h.as_bytes().iter().cycle()) {
        *d = *s;
    }
}

impl<'de> Deserialize<'de> for SessionId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SessionId::new(s).map_err(serde::de::Error::custom)
    }
}

impl FromStr for SessionId {
    type Err = SessionIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SessionId::new(s)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.0)
    }
}

/// Placement generation of a session. It increases on every placement (first placement, handover,
/// failover); only the holder of the current epoch may process input or write checkpoints.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The epoch of the next placement.
    pub fn next(self) -> Epoch {
        Epoch(self.0.saturating_add(1))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e{}", self.0)
    }
}

/// Sequence number of a client input within a session. Inputs are numbered from 1; `Seq(0)` means
/// "nothing processed yet".
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    /// The sequence number that follows this one.
    pub fn next(self) -> Seq {
        Seq(self.0.saturating_add(1))
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_id_validation() {
        assert!(SessionId::new("tutor-1").is_ok());
        assert_eq!(SessionId::new(""), Err(SessionIdError::Empty));
        assert!(matches!(
            SessionId::new("a/b"),
            Err(SessionIdError::BadChar { ch: '/', at: 1 })
        ));
        assert!(matches!(
            SessionId::new("a\0b"),
            Err(SessionIdError::BadChar { .. })
        ));
        assert!(matches!(
            SessionId::new("x".repeat(129)),
            Err(SessionIdError::TooLong { len: 129 })
        ));
        let r = SessionId::random();
        assert!(SessionId::new(r.as_str()).is_ok());
        assert_ne!(SessionId::random(), SessionId::random());
    }

    #[test]
    fn session_id_deserialize_validates() {
        let e = serde_json::from_str::<SessionId>("\"bad id\"").unwrap_err();
        assert!(e.to_string().contains("session id contains"), "{e}");
    }
}

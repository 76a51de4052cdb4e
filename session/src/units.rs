//! Human-readable durations (`"250ms"`, `"30s"`, `"1h 30m"`) and byte sizes (`"64KiB"`, `"1MiB"`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration written the human way in manifests and config files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// Zero.
    pub const ZERO: HumanDuration = HumanDuration(Duration::ZERO);

    /// From whole milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        HumanDuration(Duration::from_millis(ms))
    }

    /// From whole seconds.
    pub const fn from_secs(s: u64) -> Self {
        HumanDuration(Duration::from_secs(s))
    }

    /// Whether this is exactly zero.
    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }
}

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// A leading minus sign.
    #[error("invalid duration {0:?}: durations cannot be negative")]
    Negative(String),
    /// Anything humantime cannot read.
    #[error("invalid duration {input:?}: {reason} (examples: \"250ms\", \"30s\", \"5m\", \"0s\")")]
    Unparsable {
        /// The rejected text.
        input: String,
        /// The parser's explanation.
        reason: String,
    },
}

impl FromStr for HumanDuration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.starts_with('-') {
            return Err(DurationError::Negative(s.to_string()));
        }
        if t == "0" {
            return Ok(HumanDuration::ZERO);
        }
        humantime::parse_duration(t)
            .map(HumanDuration)
            .map_err(|e| DurationError::Unparsable {
                input: s.to_string(),
                reason: e.to_string(),
            })
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            return f.write_str("0s");
        }
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"250ms\" or \"30s\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "invalid duration {v}: a bare number has no unit; write e.g. \"{v}s\" or \"{v}ms\""
                )))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                self.visit_i64(v as i64)
            }
        }
        d.deserialize_any(V)
    }
}

/// A byte count written the human way (`"4KiB"`, `"64 KiB"`, `"1MiB"`, `"512MB"`, `"100"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

/// Why a byte size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid byte size {input:?}: {reason} (examples: \"4KiB\", \"64MiB\", \"1GB\")")]
pub struct ByteSizeError {
    /// The rejected text.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for ByteSize {
    type Err = ByteSizeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| ByteSizeError {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let t = s.trim();
        if t.starts_with('-') {
            return Err(err("sizes cannot be negative"));
        }
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        if num.is_empty() {
            return Err(err("expected a number first"));
        }
        let n: u64 = num.parse().map_err(|_| err("number too large"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            _ => {
                return Err(err(
                    "unknown unit; use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB",
                ))
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| err("value overflows 64 bits"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, m) in [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ] {
            if n >= m && n.is_multiple_of(m) {
                return write!(f, "{}{}", n / m, unit);
            }
        }
        write!(f, "{n}B")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte size such as \"64KiB\" or a non-negative integer")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v).map(ByteSize).map_err(|_| {
                    E::custom(format!("invalid byte size {v}: sizes cannot be negative"))
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            "250ms".parse::<HumanDuration>().unwrap(),
            HumanDuration::from_millis(250)
        );
        assert_eq!(
            "30s".parse::<HumanDuration>().unwrap(),
            HumanDuration::from_secs(30)
        );
        assert_eq!("0".parse::<HumanDuration>().unwrap(), HumanDuration::ZERO);
        assert!(matches!(
            "-5s".parse::<HumanDuration>(),
            Err(DurationError::Negative(_))
        ));
        assert!(matches!(
            "soon".parse::<HumanDuration>(),
            Err(DurationError::Unparsable { .. })
        ));
        for d in ["250ms", "30s", "1h 30m", "0s", "2days"] {
            let h: HumanDuration = d.parse().unwrap();
            assert_eq!(h.to_string().parse::<HumanDuration>().unwrap(), h, "{d}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!("64KiB".parse::<ByteSize>().unwrap(), ByteSize(65536));
        assert_eq!("1 MiB".parse::<ByteSize>().unwrap(), ByteSize(1 << 20));
        assert_eq!("100".parse::<ByteSize>().unwrap(), ByteSize(100));
        assert!("-1KiB".parse::<ByteSize>().is_err());
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert!("99999999999TiB".parse::<ByteSize>().is_err());
        for s in [0u64, 1, 1024, 65536, 1 << 30, 1234567] {
            assert_eq!(
                ByteSize(s).to_string().parse::<ByteSize>().unwrap(),
                ByteSize(s)
            );
        }
    }
}

//! Federation treaties: which zones may route sessions to, or replicate checkpoints into, which other
//! zones, and for which data classes. Pure logic, consulted by cross-colony routing and by replica
//! placement.
//!
//! ```toml
//! version = 1
//!
//! [[treaty]]
//! name = "eu-to-us-public"
//! from_zone = "EU"          # a jurisdiction code; a zone (EU, EEA) covers its members
//! to_zone = "US"
//! route = true              # sessions may be placed across this border
//! replicate = false         # checkpoint replicas may not
//! data_classes = ["public"] # "*" covers every data class
//! ```
//!
//! Rules (sovereignty first):
//! - Within one jurisdiction (`from == to`) everything is allowed; no treaty is needed.
//! - Treaties are directional: `DE → US` says nothing about `US → DE`.
//! - A treaty *covers* a move when `from` lies in its `from_zone`, `to` in its `to_zone`, and it
//!   lists the data class (or `"*"`).
//! - If any covering treaty says `false` for the action, the move is refused and that treaty is
//!   named, even if another covering treaty says `true` (an explicit "no" always wins).
//! - Otherwise a covering treaty saying `true` allows it; with none, the move is refused as
//!   uncovered (default deny).

use std::fmt;
use std::path::Path;

use opengrid_session::jurisdiction;
use serde::{Deserialize, Serialize};

/// Treaty file format version.
pub const TREATY_VERSION: u32 = 1;
/// Largest treaty file accepted, bytes.
pub const MAX_TREATY_BYTES: usize = 256 * 1024;
/// The data class wildcard.
pub const ANY_DATA_CLASS: &str = "*";

/// One treaty (the seed's `FederationTreaty`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationTreaty {
    /// Unique name, shown in refusals.
    pub name: String,
    /// Zone the session or data comes from.
    pub from_zone: String,
    /// Zone it would go to.
    pub to_zone: String,
    /// Whether sessions may be routed (placed) from `from_zone` into `to_zone`.
    pub route: bool,
    /// Whether checkpoint replicas may be stored from `from_zone` into `to_zone`.
    pub replicate: bool,
    /// Data classes the treaty speaks for (`"*"` for all).
    pub data_classes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TreatyFile {
    version: u32,
    #[serde(default)]
    treaty: Vec<FederationTreaty>,
}

/// What crosses the border.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Placing a session.
    Route,
    /// Storing a checkpoint replica.
    Replicate,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Route => "routing",
            Action::Replicate => "replicating",
        })
    }
}

/// Why a move across zones is refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RefusalReason {
    /// A covering treaty says no.
    Forbidden {
        /// Its name.
        treaty: String,
    },
    /// Treaties cover the two zones, but none lists this data class.
    DataClassNotCovered {
        /// The treaties that cover the zones.
        treaties: Vec<String>,
    },
    /// No treaty covers the two zones.
    NoTreaty,
}

/// A refused cross-zone move, explained.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// What was asked.
    pub action: Action,
    /// From.
    pub from_zone: String,
    /// To.
    pub to_zone: String,
    /// Data class.
    pub data_class: String,
    /// Why not.
    pub reason: RefusalReason,
}

impl Refusal {
    /// The treaty that forbids the move, if one does.
    pub fn treaty(&self) -> Option<&str> {
        match &self.reason {
            RefusalReason::Forbidden { treaty } => Some(treaty),
            _ => None,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Refusal {
            action,
            from_zone,
            to_zone,
            data_class,
            reason,
        } = self;
        write!(
            f,
            "{action} {from_zone} -> {to_zone} for data class {data_class:?} "
        )?;
        match reason {
            RefusalReason::Forbidden { treaty } => write!(f, "is forbidden by treaty {treaty:?}"),
            RefusalReason::DataClassNotCovered { treaties } => write!(
                f,
                "is not allowed: treaties {treaties:?} cover these zones but not this data class"
            ),
            RefusalReason::NoTreaty => write!(f, "is not allowed: no treaty covers it"),
        }
    }
}

impl std::error::Error for Refusal {}

/// Why a treaty file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TreatyError {
    /// Not well-formed TOML, an unknown field, or a wrong type; `field` is where it stopped.
    #[error("treaty file parse error at {field}: {message}")]
    Parse {
        /// Dotted path.
        field: String,
        /// Decoder message.
        message: String,
    },
    /// Well-formed but invalid.
    #[error("invalid treaty file: {field}: {reason}")]
    Invalid {
        /// Dotted path, e.g. `treaty[1].to_zone`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// Larger than [`MAX_TREATY_BYTES`].
    #[error("treaty file is {0} bytes; the limit is {MAX_TREATY_BYTES}")]
    TooLarge(usize),
    /// Unreadable file.
    #[error("cannot read treaty file {path}: {source}")]
    Io {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// The treaties in force for this RC.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Treaties {
    treaties: Vec<FederationTreaty>,
}

fn invalid(field: String, reason: impl Into<String>) -> TreatyError {
    TreatyError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn valid_data_class(s: &str) -> bool {
    s == ANY_DATA_CLASS
        || (!s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)))
}

impl Treaties {
    /// No treaties: only same-jurisdiction moves are allowed.
    pub fn none() -> Self {
        Self::default()
    }

    /// Validates and wraps a list of treaties.
    pub fn new(treaties: Vec<FederationTreaty>) -> Result<Self, TreatyError> {
        let mut names = std::collections::BTreeSet::new();
        for (i, t) in treaties.iter().enumerate() {
            let at = |f: &str| format!("treaty[{i}].{f}");
            if t.name.is_empty() || t.name.len() > 64 || t.name.chars().any(char::is_control) {
                return Err(invalid(at("name"), "1 to 64 printable characters"));
            }
            if !names.insert(t.name.as_str()) {
                return Err(invalid(at("name"), format!("duplicate name {:?}", t.name)));
            }
            for (f, z) in [("from_zone", &t.from_zone), ("to_zone", &t.to_zone)] {
                if !jurisdiction::is_known(z) {
                    return Err(invalid(
                        at(f),
                        format!("unknown jurisdiction {z:?} (use an ISO 3166-1 alpha-2 code, EU or EEA)"),
                    ));
                }
            }
            if t.data_classes.is_empty() {
                return Err(invalid(
                    at("data_classes"),
                    "list at least one data class, or \"*\" for all",
                ));
            }
            if let Some(bad) = t.data_classes.iter().find(|c| !valid_data_class(c)) {
                return Err(invalid(
                    at("data_classes"),
                    format!("{bad:?} is not a data class (lowercase letters, digits, - _ .)"),
                ));
            }
        }
        Ok(Self { treaties })
    }

    /// Parses and validates a treaty file.
    pub fn from_toml_str(s: &str) -> Result<Self, TreatyError> {
        if s.len() > MAX_TREATY_BYTES {
            return Err(TreatyError::TooLarge(s.len()));
        }
        let de = toml::Deserializer::new(s);
        let file: TreatyFile = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            TreatyError::Parse {
                field: if field.is_empty() { ".".into() } else { field },
                message: e.into_inner().message().trim().to_string(),
            }
        })?;
        if file.version != TREATY_VERSION {
            return Err(invalid(
                "version".into(),
                format!(
                    "this build reads version {TREATY_VERSION}, got {}",
                    file.version
                ),
            ));
        }
        Self::new(file.treaty)
    }

    /// Reads a treaty file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, TreatyError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| TreatyError::Io {
            path: shown.clone(),
            source,
        })?;
        if meta.len() > MAX_TREATY_BYTES as u64 {
            return Err(TreatyError::TooLarge(meta.len() as usize));
        }
        let text = std::fs::read_to_string(path).map_err(|source| TreatyError::Io {
            path: shown,
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// The treaties.
    pub fn list(&self) -> &[FederationTreaty] {
        &self.treaties
    }

    /// May a session with data of `data_class` be placed from `from_zone` into `to_zone`?
    pub fn may_route(
        &self,
        from_zone: &str,
        to_zone: &str,
        data_class: &str,
    ) -> Result<(), Refusal> {
        self.check(Action::Route, from_zone, to_zone, data_class)
    }

    /// May a checkpoint replica of `data_class` be stored from `from_zone` into `to_zone`?
    pub fn may_replicate(
        &self,
        from_zone: &str,
        to_zone: &str,
        data_class: &str,
    ) -> Result<(), Refusal> {
        self.check(Action::Replicate, from_zone, to_zone, data_class)
    }

    /// The decision for `action`.
    pub fn check(
        &self,
        action: Action,
        from_zone: &str,
        to_zone: &str,
        data_class: &str,
    ) -> Result<(), Refusal> {
        if from_zone == to_zone {
            return Ok(());
        }
        let refuse = |reason| Refusal {
            action,
            from_zone: from_zone.to_string(),
            to_zone: to_zone.to_string(),
            data_class: data_class.to_string(),
            reason,
        };
        let zones: Vec<&FederationTreaty> = self
            .treaties
            .iter()
            .filter(|t| {
                jurisdiction::satisfies(from_zone, std::slice::from_ref(&t.from_zone))
                    && jurisdiction::satisfies(to_zone, std::slice::from_ref(&t.to_zone))
            })
            .collect();
        let covering: Vec<&FederationTreaty> = zones
            .iter()
            .copied()
            .filter(|t| {
                t.data_classes
                    .iter()
                    .any(|c| c == data_class || c == ANY_DATA_CLASS)
            })
            .collect();
        let allows = |t: &FederationTreaty| match action {
            Action::Route => t.route,
            Action::Replicate => t.replicate,
        };
        if let Some(no) = covering.iter().find(|t| !allows(t)) {
            return Err(refuse(RefusalReason::Forbidden {
                treaty: no.name.clone(),
            }));
        }
        if covering.iter().any(|t| allows(t)) {
            return Ok(());
        }
        if zones.is_empty() {
            Err(refuse(RefusalReason::NoTreaty))
        } else {
            Err(refuse(RefusalReason::DataClassNotCovered {
                treaties: zones.iter().map(|t| t.name.clone()).collect(),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
version = 1

[[treaty]]
name = "eu-us-public"
from_zone = "EU"
to_zone = "US"
route = true
replicate = false
data_classes = ["public", "telemetry"]

[[treaty]]
name = "de-us-no-health"
from_zone = "DE"
to_zone = "US"
route = false
replicate = false
data_classes = ["health"]

[[treaty]]
name = "eu-internal"
from_zone = "EU"
to_zone = "EU"
route = true
replicate = true
data_classes = ["*"]
"#;

    #[test]
    fn same_zone_is_always_allowed() {
        let t = Treaties::none();
        t.may_route("DE", "DE", "health").unwrap();
        t.may_replicate("US", "US", "anything").unwrap();
        let r = t.may_route("DE", "FR", "public").unwrap_err();
        assert_eq!(r.reason, RefusalReason::NoTreaty);
        assert!(r.to_string().contains("no treaty covers it"), "{r}");
    }

    #[test]
    fn treaties_decide_and_refusals_name_them() {
        let t = Treaties::from_toml_str(FILE).unwrap();
        assert_eq!(t.list().len(), 3);
        t.may_route("DE", "US", "public").unwrap();
        t.may_route("FR", "US", "telemetry").unwrap();
        // Route allowed, replicate not: named.
        let r = t.may_replicate("DE", "US", "public").unwrap_err();
        assert_eq!(r.treaty(), Some("eu-us-public"));
        assert!(r.to_string().contains("\"eu-us-public\""), "{r}");
        // Explicit no for health.
        let r = t.may_route("DE", "US", "health").unwrap_err();
        assert_eq!(r.treaty(), Some("de-us-no-health"));
        assert!(
            r.to_string()
                .contains("routing DE -> US for data class \"health\" is forbidden by treaty \"de-us-no-health\""),
            "{r}"
        );
        // From FR the health treaty does not apply, and eu-us-public does not list health.
        let r = t.may_route("FR", "US", "health").unwrap_err();
        assert_eq!(
            r.reason,
            RefusalReason::DataClassNotCovered {
                treaties: vec!["eu-us-public".into()]
            }
        );
        // Directional: nothing covers US -> DE.
        assert_eq!(
            t.may_route("US", "DE", "public").unwrap_err().reason,
            RefusalReason::NoTreaty
        );
        // Zone treaty with wildcard.
        t.may_replicate("DE", "FR", "health").unwrap();
        // A zone code as the target is not a member country: EU -> US treaty does not cover CH.
        assert_eq!(
            t.may_route("DE", "CH", "public").unwrap_err().reason,
            RefusalReason::NoTreaty
        );
    }

    #[test]
    fn explicit_no_wins_over_a_broader_yes() {
        let t = Treaties::new(vec![
            FederationTreaty {
                name: "eu-us-all".into(),
                from_zone: "EU".into(),
                to_zone: "US".into(),
                route: true,
                replicate: true,
                data_classes: vec!["*".into()],
            },
            FederationTreaty {
                name: "de-us-never".into(),
                from_zone: "DE".into(),
                to_zone: "US".into(),
                route: false,
                replicate: false,
                data_classes: vec!["*".into()],
            },
        ])
        .unwrap();
        assert_eq!(
            t.may_route("DE", "US", "public").unwrap_err().treaty(),
            Some("de-us-never")
        );
        t.may_route("FR", "US", "public").unwrap();
    }

    #[test]
    fn validation_names_the_field() {
        let err = Treaties::from_toml_str(&FILE.replace(
            "to_zone = \"US\"\nroute = true",
            "to_zone = \"USA\"\nroute = true",
        ))
        .unwrap_err();
        assert!(err.to_string().contains("treaty[0].to_zone"), "{err}");
        let err =
            Treaties::from_toml_str(&FILE.replace("route = false", "route = false\ncolour = 1"))
                .unwrap_err();
        match &err {
            TreatyError::Parse { field, message } => {
                assert!(field.starts_with("treaty"), "{field}");
                assert!(message.contains("colour"), "{message}");
            }
            other => panic!("expected a parse error, got {other}"),
        }
        let err = Treaties::from_toml_str(&FILE.replace("[\"health\"]", "[]")).unwrap_err();
        assert!(err.to_string().contains("treaty[1].data_classes"), "{err}");
        let err = Treaties::from_toml_str(&FILE.replace("\"eu-internal\"", "\"eu-us-public\""))
            .unwrap_err();
        assert!(err.to_string().contains("treaty[2].name"), "{err}");
        let err = Treaties::from_toml_str("version = 2").unwrap_err();
        assert!(err.to_string().contains("version"), "{err}");
        let err = Treaties::from_toml_str(&FILE.replace("\"public\", \"telemetry\"", "\"Public\""))
            .unwrap_err();
        assert!(err.to_string().contains("treaty[0].data_classes"), "{err}");
        let err = Treaties::from_toml_str("version = 1\n[[treaty]]\nname = \"x\"").unwrap_err();
        assert!(matches!(err, TreatyError::Parse { .. }), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(s in "\\PC{0,300}") {
            let _ = Treaties::from_toml_str(&s);
        }
    }
}

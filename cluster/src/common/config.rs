//! What the node config ([`crate::node::config::NodeConfig`]) and the RC config
//! ([`crate::rc::config::RcConfig`]) share: versioning, errors, size limit, environment overrides.
//!
//! - Unknown fields are refused (`deny_unknown_fields`), so a typo never silently falls back to
//!   a default.
//! - Every field, nested ones included, can be overridden from the environment as
//!   `OPENGRID_<PATH>` with dots turned into underscores, e.g. `OPENGRID_JURISDICTION=FR`,
//!   `OPENGRID_HARDWARE_CPU_CORES=8`, `OPENGRID_HEARTBEAT_PERIOD=200ms`. The value is read as a
//!   TOML value when it parses as one (numbers, booleans, arrays) and as a string otherwise.
//! - Defaults run on one laptop: 127.0.0.1 addresses, a data dir under the system temp dir.
//! - `NodeConfig::validate` / `RcConfig::validate` name the bad field and the reason.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The config format version this build reads.
pub const CONFIG_VERSION: u32 = 1;
/// Largest config file accepted.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Default RC client-API address.
pub const DEFAULT_RC_API: &str = "127.0.0.1:7600";
/// Default RC control-plane (ractor_cluster) address.
pub const DEFAULT_RC_CLUSTER: &str = "127.0.0.1:7601";

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// The file is too large.
    #[error("config {path} is {len} bytes; the limit is {MAX_CONFIG_BYTES}")]
    TooLarge {
        /// Path.
        path: PathBuf,
        /// Size.
        len: u64,
    },
    /// Not valid TOML, an unknown field, or a wrong type.
    #[error("config parse error: {0}")]
    Parse(String),
    /// A field value is out of range.
    #[error("config field `{field}`: {reason}")]
    Invalid {
        /// Dotted field path.
        field: String,
        /// What is wrong and what would be right.
        reason: String,
    },
    /// An `OPENGRID_*` environment variable that is neither a field of this config nor one of
    /// [`OTHER_VARS`] / [`TOOL_PREFIXES`]: most likely a misspelt override, which would otherwise
    /// be silently ignored.
    #[error("environment variable {var} is not a field of the {config} config{}", suggestion.as_ref().map(|s| format!(" (did you mean {s}?)")).unwrap_or_default())]
    UnknownEnv {
        /// The variable.
        var: String,
        /// Which config was loaded (`node`, `rc`).
        config: &'static str,
        /// The closest known override, when one is close.
        suggestion: Option<String>,
    },
}

/// `OPENGRID_*` variables that are not config overrides, with what reads them. A process refuses
/// any other `OPENGRID_*` variable that is not a field of its config.
pub const OTHER_VARS: &[(&str, &str)] = &[
    ("OPENGRID_LOG_JSON", "`opengrid --log-json`"),
    (
        "OPENGRID_OPERATOR_KEY_DIR",
        "`opengrid status|drain --key` (the operator's data dir)",
    ),
    ("OPENGRID_TOKEN", "`opengrid status|drain --token`"),
    ("OPENGRID_OTLP_ENDPOINT", "OTLP metrics export (opt-in)"),
    (
        "OPENGRID_MODELS",
        "test models dir (scripts/setup-python.sh)",
    ),
    (
        "OPENGRID_ORT_FLAVOUR",
        "ONNX Runtime wheel flavour (scripts/setup-python.sh)",
    ),
    ("OPENGRID_VENV", "Python venv (scripts/setup-python.sh)"),
    (
        "OPENGRID_FAULT_HANDOVER_PAUSE",
        "migration fault hook (process tests)",
    ),
    ("OPENGRID_LEDGER_ID", "`opengrid ledger replica --id`"),
    ("OPENGRID_LEDGER_ADDR", "`opengrid ledger replica --addr`"),
    (
        "OPENGRID_LEDGER_DATA_DIR",
        "`opengrid ledger replica --data-dir`",
    ),
    ("OPENGRID_LEDGER_PEERS", "`opengrid ledger replica --peers`"),
    ("OPENGRID_BIN_DIR", "opengrid-chaos: where the binaries are"),
    (
        "OPENGRID_ETCD",
        "opengrid-chaos bench settlement: etcd binary",
    ),
    (
        "OPENGRID_REPLICA_LOG",
        "ledger replica logs of benches and tests",
    ),
    ("OPENGRID_DENSITY_N", "actors density bench"),
    ("OPENGRID_STORE_CHILD_DIR", "checkpoint store crash test"),
];

/// Prefixes of variables read by scripts and tools, never config fields.
pub const TOOL_PREFIXES: &[&str] = &[
    "OPENGRID_CHAOS_",
    "OPENGRID_TEST_",
    "OPENGRID_BENCH_",
    "OPENGRID_SKIP_",
];

/// Checks every `OPENGRID_*` variable of `env` against the overrides `known` of the `config`.
fn check_env_vars(
    env: &[(String, String)],
    known: &[String],
    config: &'static str,
) -> Result<(), ConfigError> {
    for (var, _) in env {
        if !var.starts_with("OPENGRID_")
            || known.contains(var)
            || OTHER_VARS.iter().any(|(v, _)| v == var)
            || TOOL_PREFIXES.iter().any(|p| var.starts_with(p))
        {
            continue;
        }
        let suggestion = known
            .iter()
            .map(|k| (strsim::levenshtein(k, var), k))
            .filter(|(d, _)| *d <= 3)
            .min()
            .map(|(_, k)| k.clone());
        return Err(ConfigError::UnknownEnv {
            var: var.clone(),
            config,
            suggestion,
        });
    }
    Ok(())
}

/// The override variable of a dotted field path: `hardware.cpu_cores` → `OPENGRID_HARDWARE_CPU_CORES`.
pub fn env_var_of(path: &str) -> String {
    format!("OPENGRID_{}", path.replace('.', "_").to_ascii_uppercase())
}

/// The default data dir of a node or RC (`role`): per user (see
/// [`opengrid_session::dirs::default_data_dir`]).
pub fn default_data_dir(role: &str) -> PathBuf {
    opengrid_session::dirs::default_data_dir(role)
}

pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_string(),
        reason: reason.into(),
    }
}

pub(crate) fn check_version(v: u32) -> Result<(), ConfigError> {
    if v != CONFIG_VERSION {
        return Err(invalid(
            "version",
            format!("{v} is not supported; this build reads version {CONFIG_VERSION}"),
        ));
    }
    Ok(())
}

/// The public development colony secret: used by a `dev = true` config that sets none, and
/// refused in any config without `dev = true` (everyone knows it).
pub const DEV_COLONY_SECRET: &str = "opengrid-local-colony";

/// The secret a config runs with: its own, or with `dev = true` and none set, the public
/// development secret.
pub(crate) fn effective_secret(s: &str, dev: bool) -> &str {
    if s.is_empty() && dev {
        DEV_COLONY_SECRET
    } else {
        s
    }
}

/// Operator keys: each a did:mycel, at most [`crate::common::token::MAX_OPERATORS`] - 2 (the
/// process's own key and, on a node, its RC's are operators too).
pub(crate) fn check_operators(dids: &[String]) -> Result<(), ConfigError> {
    check_dids("operators", dids, crate::common::token::MAX_OPERATORS - 2)
}

/// A list of did:mycel in config field `field`, at most `most`.
pub(crate) fn check_dids(field: &str, dids: &[String], most: usize) -> Result<(), ConfigError> {
    if dids.len() > most {
        return Err(invalid(
            field,
            format!("{} keys, at most {most}", dids.len()),
        ));
    }
    for d in dids {
        crate::common::identity::NodeId::parse(d)
            .map_err(|e| invalid(field, format!("{d:?}: {e}")))?;
    }
    Ok(())
}

/// The colony secret rules: set (8..=256 bytes), and not the public development secret unless
/// `dev = true`.
pub(crate) fn check_secret(s: &str, dev: bool) -> Result<(), ConfigError> {
    if s.is_empty() && !dev {
        return Err(invalid(
            "colony_secret",
            "not set: give the RC and every node the same secret of 8..=256 bytes \
             (OPENGRID_COLONY_SECRET=...), or set dev = true on a development colony to use the \
             public development secret",
        ));
    }
    if s == DEV_COLONY_SECRET && !dev {
        return Err(invalid(
            "colony_secret",
            format!(
                "{DEV_COLONY_SECRET:?} is the public development secret: choose your own \
                 (OPENGRID_COLONY_SECRET=...), or set dev = true on a development colony"
            ),
        ));
    }
    let s = effective_secret(s, dev);
    if s.len() < 8 || s.len() > 256 {
        return Err(invalid("colony_secret", "must be 8..=256 bytes"));
    }
    Ok(())
}

/// The client-API connection limits of a node or RC config: 1..=1,000,000 connections, a
/// header timeout of at least 100 ms; the one rule for both.
pub(crate) fn serve_limits(
    max_connections: usize,
    header_timeout: Duration,
) -> Result<crate::common::serve::ServeLimits, ConfigError> {
    if max_connections == 0 || max_connections > 1_000_000 {
        return Err(invalid("max_connections", "must be 1..=1000000"));
    }
    if header_timeout < Duration::from_millis(100) {
        return Err(invalid("header_timeout", "must be at least 100ms"));
    }
    Ok(crate::common::serve::ServeLimits {
        max_connections,
        header_timeout,
    })
}

pub(crate) fn check_period(field: &str, d: Duration) -> Result<(), ConfigError> {
    if d < Duration::from_millis(5) || d > Duration::from_secs(60) {
        return Err(invalid(field, format!("{d:?} must be in 5ms..=60s")));
    }
    Ok(())
}

pub(crate) fn env_map() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("OPENGRID_"))
        .collect()
}

pub(crate) fn load_with_env<T: Serialize + DeserializeOwned>(
    path: Option<&Path>,
    defaults: &T,
    env: &[(String, String)],
    shape_of: ConfigShape,
) -> Result<T, ConfigError> {
    let text = match path {
        None => String::new(),
        Some(p) => {
            let io = |source| ConfigError::Io {
                path: p.to_path_buf(),
                source,
            };
            let len = std::fs::metadata(p).map_err(io)?.len();
            if len > MAX_CONFIG_BYTES {
                return Err(ConfigError::TooLarge {
                    path: p.to_path_buf(),
                    len,
                });
            }
            std::fs::read_to_string(p).map_err(io)?
        }
    };
    parse_with_env(&text, defaults, env, shape_of)
}

/// Parses `text`, overlays `OPENGRID_<PATH>` variables for every field of `defaults`.
/// Which config is parsed: its name in errors and the dotted paths of its `Option` fields.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConfigShape {
    /// `node` or `rc`.
    pub name: &'static str,
    /// Dotted paths of `Option` fields (absent from the defaults' shape).
    pub optional: &'static [&'static str],
}

/// `shape_of.optional` names the dotted paths of `Option` fields (absent from the defaults' shape); every
/// other `OPENGRID_*` variable that is no field is refused ([`ConfigError::UnknownEnv`]).
pub(crate) fn parse_with_env<T: Serialize + DeserializeOwned>(
    text: &str,
    defaults: &T,
    env: &[(String, String)],
    shape_of: ConfigShape,
) -> Result<T, ConfigError> {
    let mut table: toml::Table =
        toml::from_str(text).map_err(|e| ConfigError::Parse(e.message().to_string()))?;
    let shape = toml::Table::try_from(defaults).map_err(|e| ConfigError::Parse(e.to_string()))?;
    let mut paths = Vec::new();
    leaf_paths(&shape, String::new(), &mut paths);
    paths.extend(shape_of.optional.iter().map(|p| p.to_string()));
    let known: Vec<String> = paths.iter().map(|p| env_var_of(p)).collect();
    check_env_vars(env, &known, shape_of.name)?;
    for (path, var) in paths.iter().zip(&known) {
        if let Some((_, raw)) = env.iter().find(|(k, _)| k == var) {
            let value = parse_env_value(raw);
            set_path(&mut table, path, value);
        }
    }
    T::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Parse(e.to_string()))
}

fn parse_env_value(raw: &str) -> toml::Value {
    let probe = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&probe) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

fn leaf_paths(t: &toml::Table, prefix: String, out: &mut Vec<String>) {
    for (k, v) in t {
        let p = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(inner) => leaf_paths(inner, p, out),
            _ => out.push(p),
        }
    }
}

fn set_path(t: &mut toml::Table, path: &str, v: toml::Value) {
    let mut parts = path.split('.').peekable();
    let mut cur = t;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            cur.insert(part.to_string(), v);
            return;
        }
        let entry = cur
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        match entry {
            toml::Value::Table(inner) => cur = inner,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_var_names_follow_the_dotted_path() {
        assert_eq!(
            env_var_of("hardware.cpu_cores"),
            "OPENGRID_HARDWARE_CPU_CORES"
        );
        assert_eq!(env_var_of("lease"), "OPENGRID_LEASE");
    }

    #[test]
    fn a_misspelt_override_is_refused_with_its_name_and_the_closest_field() {
        let known = vec![env_var_of("jurisdiction"), env_var_of("capacity")];
        let e =
            check_env_vars(&env(&[("OPENGRID_JURISDICTON", "FR")]), &known, "node").unwrap_err();
        match &e {
            ConfigError::UnknownEnv {
                var, suggestion, ..
            } => {
                assert_eq!(var, "OPENGRID_JURISDICTON");
                assert_eq!(suggestion.as_deref(), Some("OPENGRID_JURISDICTION"));
            }
            other => panic!("{other:?}"),
        }
        let text = e.to_string();
        assert!(
            text.contains("OPENGRID_JURISDICTON") && text.contains("node config"),
            "{text}"
        );
        // Far from every field: no suggestion, still refused.
        match check_env_vars(&env(&[("OPENGRID_ZZZZZZZZZZZZ", "1")]), &known, "rc") {
            Err(ConfigError::UnknownEnv {
                suggestion: None, ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fields_process_vars_tool_prefixes_and_other_variables_pass() {
        let known = vec![env_var_of("capacity")];
        check_env_vars(
            &env(&[
                ("OPENGRID_CAPACITY", "3"),
                ("OPENGRID_LOG_JSON", "1"),
                ("OPENGRID_OPERATOR_KEY_DIR", "/var/lib/opengrid/rc"),
                ("OPENGRID_MODELS", "/m"),
                ("OPENGRID_CHAOS_BREAK", "dedupe"),
                ("OPENGRID_TEST_SEED", "7"),
                ("PATH", "/bin"),
            ]),
            &known,
            "node",
        )
        .unwrap();
    }
}

//! Versioned TOML configuration of a ledger replica (`opengrid ledger replica --config
//! ledger.toml`): the same fields as the command-line flags, which still work and override the
//! file. Unknown fields are refused with their name, so a typo never falls back to a default.
//!
//! `opengrid init ledger` writes a commented file with every field at its default
//! (`opengrid_cluster::init`).

use std::path::{Path, PathBuf};

use opengrid_consensus::{NodeId, RaftNodeConfig};
use serde::{Deserialize, Serialize};

use crate::did::Did;
use crate::keys::Keypair;
use crate::ledger::{LedgerRules, DEFAULT_MAX_FEE_MICROS, DEFAULT_MAX_REJECTIONS};
use crate::replica::ReplicaOptions;
use crate::split::Account;

/// The ledger config format version this build reads.
pub const LEDGER_CONFIG_VERSION: u32 = 1;
/// Largest ledger config file accepted.
pub const MAX_LEDGER_CONFIG_BYTES: u64 = 1 << 20;

/// Why a ledger config was refused.
#[derive(Debug, thiserror::Error)]
pub enum LedgerConfigError {
    /// The file could not be read.
    #[error("cannot read ledger config {path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// The file is too large.
    #[error("ledger config {path} is {len} bytes; the limit is {MAX_LEDGER_CONFIG_BYTES}")]
    TooLarge {
        /// Path.
        path: PathBuf,
        /// Size.
        len: u64,
    },
    /// Not valid TOML, an unknown field (named in the message), or a wrong type.
    #[error("ledger config parse error: {0}")]
    Parse(String),
    /// A field value is out of range.
    #[error("ledger config field `{field}`: {reason}")]
    Invalid {
        /// Field name.
        field: &'static str,
        /// What is wrong and what would be right.
        reason: String,
    },
}

/// Configuration of one ledger replica.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// Must be [`LEDGER_CONFIG_VERSION`].
    pub version: u32,
    /// Raft id of this replica (unique in the group, at least 1).
    pub id: NodeId,
    /// Listen (and advertised) address, `host:port`.
    pub addr: String,
    /// Where the Raft log, the ledger state and snapshots live.
    pub data_dir: PathBuf,
    /// The replica's identity key file (created 0600 when absent): its DID is the replica's
    /// identity in the group, proved on every link. Empty: `<data_dir>/identity.key`.
    pub key_file: PathBuf,
    /// Initial voters, each `ID=DID@HOST:PORT` (`opengrid ledger keygen --key-file` prints a
    /// replica's DID); this replica's own entry may be `ID=HOST:PORT`. Empty: join later as a
    /// learner.
    pub peers: Vec<String>,
    /// Snapshot every this many applied entries.
    pub snapshot_every: u64,
    /// Account credited with the protocol share of every settled fee.
    pub protocol_account: String,
    /// The ledger operator's DID (`did:mycel:z…`, printed by `opengrid ledger keygen`): its key
    /// authorizes node/RC registrations and membership changes. Empty: none is configured and
    /// every registration and membership change is refused.
    pub operator: String,
    /// Largest fee one receipt may carry, micro-units (same on every replica).
    pub max_fee_micros: u64,
    /// Rejections kept in the ledger's rejection log (same on every replica).
    pub max_rejections: usize,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            version: LEDGER_CONFIG_VERSION,
            id: 1,
            addr: "127.0.0.1:7801".into(),
            data_dir: opengrid_session::dirs::default_data_dir("ledger"),
            key_file: PathBuf::new(),
            peers: Vec::new(),
            snapshot_every: 1_000,
            protocol_account: Account::protocol().0,
            operator: String::new(),
            max_fee_micros: DEFAULT_MAX_FEE_MICROS,
            max_rejections: DEFAULT_MAX_REJECTIONS,
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> LedgerConfigError {
    LedgerConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl LedgerConfig {
    /// Reads a TOML file (defaults when `None`) without validating: flags may still override
    /// fields; call [`LedgerConfig::validate`] (or [`LedgerConfig::replica_options`]) after.
    pub fn load(path: Option<&Path>) -> Result<Self, LedgerConfigError> {
        let Some(p) = path else {
            return Ok(LedgerConfig::default());
        };
        let io = |source| LedgerConfigError::Io {
            path: p.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(p).map_err(io)?.len();
        if len > MAX_LEDGER_CONFIG_BYTES {
            return Err(LedgerConfigError::TooLarge {
                path: p.to_path_buf(),
                len,
            });
        }
        Self::parse(&std::fs::read_to_string(p).map_err(io)?)
    }

    /// Parses TOML text (missing fields take their defaults) without validating.
    pub fn parse(text: &str) -> Result<Self, LedgerConfigError> {
        toml::from_str(text).map_err(|e| LedgerConfigError::Parse(e.to_string()))
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, LedgerConfigError> {
        let c = Self::parse(text)?;
        c.validate()?;
        Ok(c)
    }

    /// The peers as the `--peers` flag writes them: `1=host:port,2=host:port`.
    pub fn peers_flag(&self) -> String {
        self.peers.join(",")
    }

    /// Sets the peers from the `--peers` flag's form (comma separated, blanks dropped).
    pub fn set_peers_flag(&mut self, flag: &str) {
        self.peers = flag
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
    }

    /// The identity key file: `key_file`, or `<data_dir>/identity.key` when it is empty.
    pub fn key_file(&self) -> PathBuf {
        if self.key_file.as_os_str().is_empty() {
            self.data_dir.join("identity.key")
        } else {
            self.key_file.clone()
        }
    }

    /// Checks every field; the error names the first bad one. Reads no file (the key file is
    /// loaded by [`LedgerConfig::replica_options`]).
    pub fn validate(&self) -> Result<(), LedgerConfigError> {
        self.checked().map(|_| ())
    }

    /// The validated options of the replica this config describes, with its identity key loaded
    /// from [`LedgerConfig::key_file`] (created when absent).
    pub fn replica_options(&self) -> Result<ReplicaOptions, LedgerConfigError> {
        let checked = self.checked()?;
        let path = self.key_file();
        let key = Keypair::load_or_create(&path).map_err(|e| {
            invalid(
                "key_file",
                format!("cannot load or create {}: {e}", path.display()),
            )
        })?;
        if let Some(own) = checked.peers.get(&self.id).and_then(|n| n.did.as_ref()) {
            if *own != key.did() {
                return Err(invalid(
                    "peers",
                    format!(
                        "this replica's entry names {own}, but its key ({}) is {}",
                        path.display(),
                        key.did()
                    ),
                ));
            }
        }
        Ok(ReplicaOptions { key, ..checked })
    }

    /// Every check but the key's; the options carry a placeholder key.
    fn checked(&self) -> Result<ReplicaOptions, LedgerConfigError> {
        if self.version != LEDGER_CONFIG_VERSION {
            return Err(invalid(
                "version",
                format!(
                    "{} is not supported; this build reads version {LEDGER_CONFIG_VERSION}",
                    self.version
                ),
            ));
        }
        if self.id == 0 {
            return Err(invalid("id", "must be at least 1"));
        }
        if !self.addr.contains(':') {
            return Err(invalid("addr", format!("{:?} is not host:port", self.addr)));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        let peers = RaftNodeConfig::parse_peers(&self.peers_flag())
            .map_err(|e| invalid("peers", e.to_string()))?;
        if let Some((id, node)) = peers
            .iter()
            .find(|(id, n)| **id != self.id && n.did.is_none())
        {
            return Err(invalid(
                "peers",
                format!(
                    "peer {id} ({}) has no DID: write `{id}=DID@{}` (`opengrid ledger keygen \
                     --key-file` on its key file prints its DID)",
                    node.addr, node.addr
                ),
            ));
        }
        if self.snapshot_every == 0 {
            return Err(invalid("snapshot_every", "must be at least 1"));
        }
        let protocol_account = Account::new(self.protocol_account.clone())
            .map_err(|e| invalid("protocol_account", e.to_string()))?;
        let operator = if self.operator.trim().is_empty() {
            None
        } else {
            Some(self.operator.trim().parse::<Did>().map_err(|e| {
                invalid(
                    "operator",
                    format!(
                        "{:?} is not a did:mycel DID ({e}); `opengrid ledger keygen --key-file operator.key` prints one",
                        self.operator
                    ),
                )
            })?)
        };
        if self.max_fee_micros == 0 {
            return Err(invalid("max_fee_micros", "must be at least 1"));
        }
        if self.max_rejections == 0 {
            return Err(invalid("max_rejections", "must be at least 1"));
        }
        Ok(ReplicaOptions {
            peers,
            protocol_account,
            rules: LedgerRules {
                operator,
                max_fee_micros: self.max_fee_micros,
                max_rejections: self.max_rejections,
            },
            snapshot_every: self.snapshot_every,
            ..ReplicaOptions::new(
                self.id,
                Keypair::from_seed([0; 32]),
                self.addr.clone(),
                self.data_dir.clone(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_text_is_the_defaults_and_they_validate() {
        assert_eq!(
            LedgerConfig::from_toml("").unwrap(),
            LedgerConfig::default()
        );
        let dir = tempfile::tempdir().unwrap();
        let c = LedgerConfig {
            data_dir: dir.path().to_path_buf(),
            ..LedgerConfig::default()
        };
        let o = c.replica_options().unwrap();
        assert_eq!(o.snapshot_every, 1_000);
        assert_eq!(o.protocol_account, Account::protocol());
        // The identity key was created in the data dir and is loaded again next time.
        assert_eq!(c.key_file(), dir.path().join("identity.key"));
        assert_eq!(c.replica_options().unwrap().key.did(), o.key.did());
    }

    #[test]
    fn peers_other_than_this_replica_need_their_did() {
        let dir = tempfile::tempdir().unwrap();
        let other = crate::keys::Keypair::from_seed([5; 32]).did();
        let mut c = LedgerConfig {
            data_dir: dir.path().to_path_buf(),
            ..LedgerConfig::default()
        };
        c.set_peers_flag("1=127.0.0.1:7801,2=127.0.0.1:7802");
        match c.validate() {
            Err(LedgerConfigError::Invalid {
                field: "peers",
                reason,
            }) => {
                assert!(reason.contains("peer 2"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        c.set_peers_flag(&format!("1=127.0.0.1:7801,2={other}@127.0.0.1:7802"));
        let o = c.replica_options().unwrap();
        assert_eq!(o.peers[&2].did, Some(other.clone()));
        // This replica's own entry must name its own key when it names one.
        c.set_peers_flag(&format!("1={other}@127.0.0.1:7801"));
        assert!(matches!(
            c.replica_options(),
            Err(LedgerConfigError::Invalid { field: "peers", .. })
        ));
    }

    #[test]
    fn a_full_file_becomes_replica_options() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("r2.key");
        let (d1, d3) = (
            crate::keys::Keypair::from_seed([1; 32]).did(),
            crate::keys::Keypair::from_seed([3; 32]).did(),
        );
        let c = LedgerConfig::from_toml(&format!(
            r#"
            version = 1
            id = 2
            addr = "127.0.0.1:7802"
            data_dir = "/var/lib/opengrid/ledger-2"
            key_file = "{}"
            peers = ["1={d1}@127.0.0.1:7801", "2=127.0.0.1:7802", "3={d3}@127.0.0.1:7803"]
            snapshot_every = 50
            protocol_account = "treasury"
            "#,
            key_file.display()
        ))
        .unwrap();
        let o = c.replica_options().unwrap();
        assert_eq!(o.key.did(), Keypair::load(&key_file).unwrap().did());
        assert_eq!(o.id, 2);
        assert_eq!(o.addr, "127.0.0.1:7802");
        assert_eq!(o.data_dir, PathBuf::from("/var/lib/opengrid/ledger-2"));
        assert_eq!(o.peers.len(), 3);
        assert_eq!(o.peers[&3].addr, "127.0.0.1:7803");
        assert_eq!(o.peers[&3].did, Some(d3));
        assert_eq!(o.snapshot_every, 50);
        assert_eq!(o.protocol_account.0, "treasury");
        assert_eq!(o.rules.operator, None);
        let op = crate::keys::Keypair::from_seed([3; 32]).did();
        let c = LedgerConfig::from_toml(&format!(
            "operator = \"{op}\"\nmax_fee_micros = 5\nmax_rejections = 7\nkey_file = \"{}\"",
            key_file.display()
        ))
        .unwrap();
        let o = c.replica_options().unwrap();
        assert_eq!(o.rules.operator, Some(op));
        assert_eq!((o.rules.max_fee_micros, o.rules.max_rejections), (5, 7));
    }

    #[test]
    fn an_unknown_field_is_refused_by_name() {
        let e = LedgerConfig::from_toml("snapshot_evry = 5").unwrap_err();
        assert!(matches!(e, LedgerConfigError::Parse(_)), "{e:?}");
        assert!(e.to_string().contains("snapshot_evry"), "{e}");
    }

    #[test]
    fn bad_values_name_the_field() {
        for (text, field) in [
            ("version = 2", "version"),
            ("id = 0", "id"),
            ("addr = \"nowhere\"", "addr"),
            ("data_dir = \"\"", "data_dir"),
            ("peers = [\"one\"]", "peers"),
            ("snapshot_every = 0", "snapshot_every"),
            ("protocol_account = \"has space\"", "protocol_account"),
            ("operator = \"did:web:nope\"", "operator"),
            ("max_fee_micros = 0", "max_fee_micros"),
            ("max_rejections = 0", "max_rejections"),
        ] {
            match LedgerConfig::from_toml(text) {
                Err(LedgerConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_peers_flag_round_trips() {
        let mut c = LedgerConfig::default();
        c.set_peers_flag(" 1=127.0.0.1:7801, ,2=127.0.0.1:7802 ");
        assert_eq!(c.peers, vec!["1=127.0.0.1:7801", "2=127.0.0.1:7802"]);
        assert_eq!(c.peers_flag(), "1=127.0.0.1:7801,2=127.0.0.1:7802");
        c.set_peers_flag("");
        assert!(c.peers.is_empty());
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = LedgerConfig::load(Some(Path::new("/nonexistent/ledger.toml"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ledger.toml"), "{e}");
    }
}

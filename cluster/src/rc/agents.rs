//! The colony's agent registry (ADR 0030): signed agent packages pushed by operators, stored
//! content-addressed under `<data_dir>/agents/<hash>.ogap`, indexed by name and version in
//! `<data_dir>/agents/index.json`. Both are written atomically (temp file, rename), so the
//! registry survives an RC restart or crash as it was after the last completed push or retire.
//!
//! A push is verified before anything is stored: decode within the package limits, signature,
//! metadata, the signer among `agent_publishers` (when the list is not empty), and a compile
//! check in the RC's own wasm runtime (the component must be an agent: exports, imports).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use opengrid_wasm::{PackageError, PackageLimits, Runtime, RuntimeConfig, SignedPackage};

use crate::common::blobs::BlobStore;
use serde::{Deserialize, Serialize};

/// One version of an agent, as the index keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentVersion {
    /// Semantic version.
    pub version: String,
    /// Package hash (blake3 of the canonical body, hex).
    pub hash: String,
    /// Skills, for the capability index.
    pub skills: Vec<String>,
    /// One-line description.
    pub description: String,
    /// Who signed it (`did:mycel:…`).
    pub signer: String,
    /// Package size, bytes.
    pub size: u64,
    /// When it was pushed, seconds since the Unix epoch.
    pub pushed_at: u64,
    /// Retired versions are not chosen for new sessions; live sessions keep them.
    pub retired: bool,
    /// The colony it was imported from for a session routed here (ADR 0031), if it was not
    /// pushed to this colony.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_from: Option<String>,
}

/// The index file's shape.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Index {
    /// Format of this file.
    format: u32,
    /// name → versions, oldest push first.
    agents: BTreeMap<String, Vec<AgentVersion>>,
}

const INDEX_FORMAT: u32 = 1;

/// What a push did.
#[derive(Clone, Debug, Serialize)]
pub struct Pushed {
    /// Agent name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Package hash.
    pub hash: String,
    /// Signer DID.
    pub signer: String,
    /// `false` when the same package was pushed before (idempotent).
    pub created: bool,
    /// The package's default manifest (pre-positioning reads its `[scaling]`).
    #[serde(skip)]
    pub default_manifest: serde_json::Value,
}

/// An agent resolved for a new session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// `name@version`: the handler id nodes register it under.
    pub handler: String,
    /// Package hash.
    pub hash: String,
}

/// Why the registry refused something.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The package did not decode, verify or compile.
    #[error("package refused: {0}")]
    Package(#[from] PackageError),
    /// The signer is not among the RC's `agent_publishers`.
    #[error(
        "the package is signed by {signer}, which is not among this colony's agent_publishers"
    )]
    Publisher {
        /// Who signed it.
        signer: String,
    },
    /// `name@version` exists with other bytes.
    #[error("{name}@{version} was pushed before with hash {existing}; this package hashes to {pushed}: push a new version")]
    VersionExists {
        /// Agent.
        name: String,
        /// Version.
        version: String,
        /// Hash stored.
        existing: String,
        /// Hash pushed.
        pushed: String,
    },
    /// No such agent (or version).
    #[error("no agent {0} in this colony's registry (opengrid agent list)")]
    UnknownAgent(String),
    /// Every version of the agent is retired.
    #[error("every version of agent {0} is retired: pin one (agent = \"{0}@<version>\") or push a new one")]
    AllRetired(String),
    /// No package with this hash.
    #[error("no package with hash {0}")]
    UnknownHash(String),
    /// The agent reference or hash is malformed.
    #[error("{0}")]
    BadRef(String),
    /// Reading or writing the registry's files failed.
    #[error("agent registry {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Models or assets the package names are not on this RC: upload them first
    /// (`opengrid agent push` does, from the files `agent.toml` names).
    #[error("the package names blobs this RC does not hold: {}; upload them first (PUT /blobs/{{hash}}; `opengrid agent push` uploads the files agent.toml names)", .0.join(", "))]
    MissingBlobs(Vec<String>),
    /// A blob upload was refused.
    #[error(transparent)]
    Blob(#[from] crate::common::blobs::BlobError),
    /// The index file does not parse.
    #[error("agent registry index {path} is damaged: {reason}")]
    Index {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl RegistryError {
    /// The HTTP status and error code of this refusal.
    pub fn status(&self) -> (axum::http::StatusCode, &'static str) {
        use axum::http::StatusCode;
        match self {
            RegistryError::Package(PackageError::Oversized { .. }) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "package_too_large")
            }
            RegistryError::Package(PackageError::BadSignature { .. }) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "bad_signature")
            }
            RegistryError::Package(_) => (StatusCode::UNPROCESSABLE_ENTITY, "bad_package"),
            RegistryError::Publisher { .. } => (StatusCode::FORBIDDEN, "publisher_not_allowed"),
            RegistryError::VersionExists { .. } => (StatusCode::CONFLICT, "version_exists"),
            RegistryError::UnknownAgent(_) | RegistryError::UnknownHash(_) => {
                (StatusCode::NOT_FOUND, "unknown_agent")
            }
            RegistryError::AllRetired(_) => (StatusCode::UNPROCESSABLE_ENTITY, "agent_retired"),
            RegistryError::BadRef(_) => (StatusCode::BAD_REQUEST, "bad_agent"),
            RegistryError::MissingBlobs(_) => (StatusCode::UNPROCESSABLE_ENTITY, "missing_blobs"),
            RegistryError::Blob(b) => b.status(),
            RegistryError::Io { .. } | RegistryError::Index { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "registry_io")
            }
        }
    }

    /// The error code ([`status`](Self::status)'s second half).
    pub fn code(&self) -> &'static str {
        self.status().1
    }
}

/// The registry.
pub struct Registry {
    dir: PathBuf,
    index: Mutex<Index>,
    /// Serialises pushes and retires (stored bytes and index stay consistent).
    write: tokio::sync::Mutex<()>,
    publishers: Vec<String>,
    limits: PackageLimits,
    runtime: Runtime,
    /// Models and assets uploaded for packages (`<data_dir>/blobs`), all pinned: the RC is the
    /// colony's source of last resort and never evicts.
    blobs: BlobStore,
    /// `opengrid_agent_pushes{result}`, once instrumented.
    pushes: std::sync::OnceLock<opentelemetry::metrics::Counter<u64>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Registry({})", self.dir.display())
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory, synced, renamed.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io(dir))?;
    tmp.write_all(bytes).map_err(io(path))?;
    tmp.as_file().sync_all().map_err(io(path))?;
    tmp.persist(path).map_err(|e| RegistryError::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

pub use crate::common::blobs::is_hash;

/// Largest model or asset uploaded to the RC.
pub const MAX_BLOB_BYTES: u64 = 8 << 30;

/// Reads an index (`index.json`'s bytes).
fn parse_index(bytes: &[u8]) -> Result<Index, RegistryError> {
    let index: Index = serde_json::from_slice(bytes).map_err(|e| RegistryError::Index {
        path: PathBuf::from("<replicated index>"),
        reason: e.to_string(),
    })?;
    if index.format != INDEX_FORMAT {
        return Err(RegistryError::Index {
            path: PathBuf::from("<replicated index>"),
            reason: format!("format {} (this RC reads {INDEX_FORMAT})", index.format),
        });
    }
    Ok(index)
}

impl Registry {
    /// Opens (or creates) the registry under `<data_dir>/agents`, with a compile-check runtime
    /// caching under `<data_dir>/agents/cache`.
    pub fn open(data_dir: &Path, publishers: Vec<String>) -> Result<Registry, RegistryError> {
        let dir = data_dir.join("agents");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join("index.json");
        let index = match std::fs::read(&path) {
            Ok(bytes) => {
                let index: Index =
                    serde_json::from_slice(&bytes).map_err(|e| RegistryError::Index {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                if index.format != INDEX_FORMAT {
                    return Err(RegistryError::Index {
                        path,
                        reason: format!("format {} (this RC reads {INDEX_FORMAT})", index.format),
                    });
                }
                index
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Index {
                format: INDEX_FORMAT,
                agents: BTreeMap::new(),
            },
            Err(e) => return Err(io(&path)(e)),
        };
        // The RC only compile-checks: a small pool.
        let config = RuntimeConfig {
            max_instances: 2,
            ..RuntimeConfig::new(dir.join("cache"))
        };
        let runtime = Runtime::new(config).map_err(|e| RegistryError::Io {
            path: dir.join("cache"),
            source: std::io::Error::other(e.to_string()),
        })?;
        let blobs = BlobStore::open(
            data_dir.join("blobs"),
            u64::MAX,
            None,
            std::time::Duration::from_secs(60),
        )?;
        for h in blobs.list() {
            blobs.pin(&h);
        }
        tracing::info!(dir = %dir.display(), agents = index.agents.len(), blobs = blobs.stats().count, "agent registry opened");
        Ok(Registry {
            pushes: std::sync::OnceLock::new(),
            blobs,
            dir,
            index: Mutex::new(index),
            write: tokio::sync::Mutex::new(()),
            publishers,
            limits: PackageLimits::default(),
            runtime,
        })
    }

    /// Exports the registry's metrics on `meter`: `opengrid_agents` (agents),
    /// `opengrid_agent_versions` (versions, retired ones too), `opengrid_agent_package_bytes`,
    /// `opengrid_agent_pushes{result}` (`created`, `unchanged`, or the refusal's code) and the
    /// RC's blob store (`opengrid_rc_blobs_bytes`, `opengrid_rc_blobs`).
    pub fn instrument(self: &std::sync::Arc<Self>, meter: &opentelemetry::metrics::Meter) {
        let _ = self.pushes.set(
            meter
                .u64_counter("opengrid_agent_pushes")
                .with_description("agent package pushes (and imports), by result")
                .build(),
        );
        let gauge = |name: &'static str, what: &'static str, f: fn(&Registry) -> u64| {
            let r = std::sync::Arc::downgrade(self);
            let _ = meter
                .u64_observable_gauge(name)
                .with_description(what)
                .with_callback(move |o| {
                    if let Some(r) = r.upgrade() {
                        o.observe(f(&r), &[]);
                    }
                })
                .build();
        };
        gauge("opengrid_agents", "agents in the colony's registry", |r| {
            r.index().agents.len() as u64
        });
        gauge(
            "opengrid_agent_versions",
            "agent versions in the registry, retired ones included",
            |r| r.index().agents.values().map(|v| v.len() as u64).sum(),
        );
        gauge(
            "opengrid_agent_package_bytes",
            "bytes of the registry's packages",
            |r| r.index().agents.values().flatten().map(|v| v.size).sum(),
        );
        gauge(
            "opengrid_rc_blobs_bytes",
            "bytes of uploaded models and assets",
            |r| r.blobs.stats().bytes,
        );
        gauge("opengrid_rc_blobs", "uploaded models and assets", |r| {
            r.blobs.stats().count
        });
    }

    fn count_push(&self, result: &'static str) {
        if let Some(c) = self.pushes.get() {
            c.add(1, &[opentelemetry::KeyValue::new("result", result)]);
        }
    }

    /// The largest package accepted, bytes (the push endpoint's body limit).
    pub fn max_package_bytes(&self) -> u64 {
        self.limits.max_package_bytes
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn package_path(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}.ogap"))
    }

    fn save_index(&self) -> Result<(), RegistryError> {
        let bytes = serde_json::to_vec_pretty(&*self.index()).unwrap_or_default();
        write_atomic(&self.dir.join("index.json"), &bytes)
    }

    /// The index as stored (`index.json`): what the RC group replicates (ADR 0037).
    pub fn index_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&*self.index()).unwrap_or_default()
    }

    /// The package hashes `index` (an [`Registry::index_bytes`] of another replica) names that
    /// this registry does not hold; `Err` when it is not an index.
    pub fn missing_packages(&self, index: &[u8]) -> Result<Vec<String>, RegistryError> {
        let other = parse_index(index)?;
        Ok(other
            .agents
            .values()
            .flatten()
            .map(|v| v.hash.clone())
            .filter(|h| !self.package_path(h).is_file())
            .collect())
    }

    /// Stores a package another replica of the RC group accepted (and compile-checked): checked
    /// to decode, verify and hash to `hash`; not compiled again.
    pub fn store_replicated(&self, hash: &str, bytes: &[u8]) -> Result<(), RegistryError> {
        let limits = self.limits;
        let verified = SignedPackage::from_bytes(bytes, &limits)?.verify_with(None, &limits)?;
        if verified.hash() != hash {
            return Err(RegistryError::BadRef(format!(
                "the package fetched for {hash} hashes to {}",
                verified.hash()
            )));
        }
        write_atomic(&self.package_path(hash), bytes)
    }

    /// Takes another replica's index as this registry's, once every package it names is held
    /// ([`Registry::store_replicated`]); `Ok(false)` while some are missing.
    pub async fn adopt_index(&self, index: &[u8]) -> Result<bool, RegistryError> {
        if !self.missing_packages(index)?.is_empty() {
            return Ok(false);
        }
        let other = parse_index(index)?;
        let _w = self.write.lock().await;
        *self.index() = other;
        self.save_index()?;
        Ok(true)
    }

    /// Verifies, compile-checks and stores a package; idempotent for the same bytes.
    pub async fn push(&self, bytes: Vec<u8>) -> Result<Pushed, RegistryError> {
        self.push_from(bytes, None).await
    }

    /// [`push`](Self::push), recording the colony a package was imported from (`None`: pushed
    /// here). The same checks apply: this colony's `agent_publishers` decide whose code runs.
    pub async fn push_from(
        &self,
        bytes: Vec<u8>,
        imported_from: Option<String>,
    ) -> Result<Pushed, RegistryError> {
        let r = self.push_checked(bytes, imported_from).await;
        self.count_push(match &r {
            Ok(p) if p.created => "created",
            Ok(_) => "unchanged",
            Err(e) => e.code(),
        });
        r
    }

    async fn push_checked(
        &self,
        bytes: Vec<u8>,
        imported_from: Option<String>,
    ) -> Result<Pushed, RegistryError> {
        let limits = self.limits;
        let verified = SignedPackage::from_bytes(&bytes, &limits)?.verify_with(None, &limits)?;
        let signer = verified.signer().to_string();
        if !self.publishers.is_empty() && !self.publishers.contains(&signer) {
            return Err(RegistryError::Publisher { signer });
        }
        let meta = verified.meta().clone();
        let (name, version, hash) = (
            meta.name.clone(),
            meta.version.to_string(),
            verified.hash().to_string(),
        );
        let missing = crate::common::blobs::missing(
            &self.blobs,
            meta.models
                .iter()
                .chain(&meta.assets)
                .map(|b| b.hash.as_str()),
        );
        if !missing.is_empty() {
            return Err(RegistryError::MissingBlobs(missing));
        }
        let _w = self.write.lock().await;
        if let Some(v) = self.find(&name, &version) {
            if v.hash == hash {
                return Ok(Pushed {
                    name,
                    version,
                    hash,
                    signer,
                    created: false,
                    default_manifest: meta.manifest.clone(),
                });
            }
            return Err(RegistryError::VersionExists {
                name,
                version,
                existing: v.hash,
                pushed: hash,
            });
        }
        // Compile check (blocking: seconds for a Python agent).
        let runtime = self.runtime.clone();
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || runtime.load(&verified).map(|_| ()))
            .await
            .map_err(|e| PackageError::Compile(format!("compile task failed: {e}")))??;
        tracing::info!(%name, %version, %hash, took_ms = started.elapsed().as_millis() as u64, "agent package compiles");
        write_atomic(&self.package_path(&hash), &bytes)?;
        let entry = AgentVersion {
            version: version.clone(),
            hash: hash.clone(),
            skills: meta.skills.clone(),
            description: meta.description.clone(),
            signer: signer.clone(),
            size: bytes.len() as u64,
            pushed_at: now_s(),
            retired: false,
            imported_from,
        };
        self.index()
            .agents
            .entry(name.clone())
            .or_default()
            .push(entry);
        if let Err(e) = self.save_index() {
            // Keep memory as the disk says.
            if let Some(vs) = self.index().agents.get_mut(&name) {
                vs.retain(|v| v.hash != hash);
            }
            return Err(e);
        }
        tracing::info!(%name, %version, %hash, %signer, "agent pushed");
        Ok(Pushed {
            name,
            version,
            hash,
            signer,
            created: true,
            default_manifest: meta.manifest,
        })
    }

    fn find(&self, name: &str, version: &str) -> Option<AgentVersion> {
        self.index()
            .agents
            .get(name)
            .and_then(|vs| vs.iter().find(|v| v.version == version).cloned())
    }

    /// Every agent: name, latest version (not retired, by semver), skills.
    pub fn list(&self) -> Vec<(String, Option<AgentVersion>)> {
        self.index()
            .agents
            .iter()
            .map(|(n, vs)| (n.clone(), latest(vs).cloned()))
            .collect()
    }

    /// The versions of `name`, oldest push first.
    pub fn versions(&self, name: &str) -> Result<Vec<AgentVersion>, RegistryError> {
        self.index()
            .agents
            .get(name)
            .cloned()
            .ok_or_else(|| RegistryError::UnknownAgent(name.to_string()))
    }

    /// Retires `name@version` (idempotent).
    pub async fn retire(&self, name: &str, version: &str) -> Result<AgentVersion, RegistryError> {
        let _w = self.write.lock().await;
        let (before, after) = {
            let mut index = self.index();
            let v = index
                .agents
                .get_mut(name)
                .and_then(|vs| vs.iter_mut().find(|v| v.version == version))
                .ok_or_else(|| RegistryError::UnknownAgent(format!("{name}@{version}")))?;
            let before = v.retired;
            v.retired = true;
            (before, v.clone())
        };
        if !before {
            if let Err(e) = self.save_index() {
                if let Some(v) = self
                    .index()
                    .agents
                    .get_mut(name)
                    .and_then(|vs| vs.iter_mut().find(|v| v.version == version))
                {
                    v.retired = false;
                }
                return Err(e);
            }
            tracing::info!(%name, %version, "agent version retired");
        }
        Ok(after)
    }

    /// Resolves `name` (latest version not retired) or `name@version` (pinned, retired or not:
    /// a live session keeps its version across failover and re-creation).
    pub fn resolve(&self, agent: &str) -> Result<Resolved, RegistryError> {
        let index = self.index();
        let (name, pinned) = match agent.split_once('@') {
            Some((n, v)) => (n, Some(v)),
            None => (agent, None),
        };
        let vs = index
            .agents
            .get(name)
            .ok_or_else(|| RegistryError::UnknownAgent(name.to_string()))?;
        let v = match pinned {
            Some(p) => vs
                .iter()
                .find(|v| v.version == p)
                .ok_or_else(|| RegistryError::UnknownAgent(agent.to_string()))?,
            None => latest(vs).ok_or_else(|| RegistryError::AllRetired(name.to_string()))?,
        };
        Ok(Resolved {
            handler: format!("{name}@{}", v.version),
            hash: v.hash.clone(),
        })
    }

    /// Whether a package with `hash` is registered here.
    pub fn knows(&self, hash: &str) -> bool {
        self.index()
            .agents
            .values()
            .any(|vs| vs.iter().any(|v| v.hash == hash))
    }

    /// The RC's blob store (uploaded models and assets).
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// The package limits pushes are held to.
    pub fn limits(&self) -> PackageLimits {
        self.limits
    }

    /// The file of a blob this RC serves: a registered package, or an uploaded model or asset.
    pub fn blob_path(&self, hash: &str) -> Option<PathBuf> {
        if !is_hash(hash) {
            return None;
        }
        let known = self
            .index()
            .agents
            .values()
            .any(|vs| vs.iter().any(|v| v.hash == hash));
        if known {
            return Some(self.package_path(hash));
        }
        self.blobs.path(hash)
    }

    /// Stores an uploaded model or asset (verified against `hash`); `true` when new.
    pub async fn put_blob<S, E>(&self, hash: &str, body: S) -> Result<bool, RegistryError>
    where
        S: futures::Stream<Item = Result<axum::body::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let created = self.blobs.put_stream(hash, body, MAX_BLOB_BYTES).await?;
        if created {
            self.blobs.pin(hash);
            tracing::info!(%hash, "blob uploaded");
        }
        Ok(created)
    }

    /// The stored bytes of the package with `hash`.
    pub async fn read(&self, hash: &str) -> Result<Vec<u8>, RegistryError> {
        if !is_hash(hash) {
            return Err(RegistryError::BadRef(format!(
                "{hash:?} is not a package hash (64 lowercase hex digits)"
            )));
        }
        let known = self
            .index()
            .agents
            .values()
            .any(|vs| vs.iter().any(|v| v.hash == hash));
        if !known {
            return Err(RegistryError::UnknownHash(hash.to_string()));
        }
        let path = self.package_path(hash);
        tokio::fs::read(&path).await.map_err(io(&path))
    }
}

/// The newest version not retired, by semantic version.
fn latest(vs: &[AgentVersion]) -> Option<&AgentVersion> {
    vs.iter()
        .filter(|v| !v.retired)
        .max_by(|a, b| match (parse(&a.version), parse(&b.version)) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => a.version.cmp(&b.version),
        })
}

fn parse(v: &str) -> Option<Vec<u64>> {
    let core = v.split(['-', '+']).next()?;
    core.split('.').map(|p| p.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(version: &str, retired: bool) -> AgentVersion {
        AgentVersion {
            version: version.into(),
            hash: format!("{version:0>64}"),
            skills: vec![],
            description: String::new(),
            signer: String::new(),
            size: 0,
            pushed_at: 0,
            retired,
            imported_from: None,
        }
    }

    #[test]
    fn the_latest_version_is_the_highest_not_retired() {
        let vs = [v("0.9.0", false), v("0.10.0", false), v("1.0.0", true)];
        assert_eq!(latest(&vs).map(|v| v.version.as_str()), Some("0.10.0"));
        assert!(latest(&[v("1.0.0", true)]).is_none());
    }

    #[tokio::test]
    async fn refused_pushes_store_nothing_and_the_index_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path(), vec![]).unwrap();
        // Not a package at all, then a signed package around bytes that are no component.
        assert!(matches!(
            reg.push(b"hello".to_vec()).await,
            Err(RegistryError::Package(PackageError::Malformed(_)))
        ));
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let junk = opengrid_wasm::Package::build(
            opengrid_wasm::PackageSource::Parts {
                agent_toml:
                    "name = \"junk\"\nversion = \"0.1.0\"\ninterface = \"opengrid:agent@0.1.0\"\n",
                component: b"\0asm\x0d\0\x01\0".to_vec(),
            },
            &key,
        )
        .unwrap();
        let e = reg.push(junk.to_bytes()).await.unwrap_err();
        assert!(matches!(e, RegistryError::Package(_)), "{e}");
        // A publisher list refuses other signers before anything is compiled.
        let strict = Registry::open(
            &dir.path().join("strict"),
            vec!["did:mycel:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK".into()],
        )
        .unwrap();
        assert!(matches!(
            strict.push(junk.to_bytes()).await,
            Err(RegistryError::Publisher { .. })
        ));
        let stored: Vec<_> = std::fs::read_dir(dir.path().join("agents"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".ogap"))
            .collect();
        assert!(stored.is_empty());
        assert!(matches!(
            reg.resolve("junk"),
            Err(RegistryError::UnknownAgent(_))
        ));
        // An index written by an earlier run is read back.
        reg.index()
            .agents
            .insert("a".into(), vec![v("0.1.0", false)]);
        reg.save_index().unwrap();
        drop(reg);
        let again = Registry::open(dir.path(), vec![]).unwrap();
        assert_eq!(again.resolve("a").unwrap().handler, "a@0.1.0");
        assert!(matches!(
            again.read(&"0".repeat(63)).await,
            Err(RegistryError::BadRef(_))
        ));
    }
}

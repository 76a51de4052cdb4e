//! Pushed agent packages on a node (ADR 0030, 0031): the node-wide wasm runtime (compiled
//! components cached in `<data_dir>/agents/cache`), and the node's blob store
//! (`<data_dir>/blobs`, [`crate::common::blobs`]) that holds packages, models and assets by hash.
//! When a session names an agent the node has not loaded, the package and then its models and
//! assets are fetched by hash from the nodes that hold them (the RC names them) or from the RC,
//! chunked, resumable and verified.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use opengrid_actors::SessionHost;
use opengrid_session::ByteSize;
use opengrid_session::HumanDuration;
use opengrid_wasm::{Runtime, RuntimeConfig, SignedPackage, WasmHandler};

use crate::common::blobs::{BlobStore, Source};
use crate::common::identity::NodeId;
use crate::common::wire::{self, ToRc};
use crate::node::lock;
use opengrid_session::{Manifest, SessionId};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;

/// `[agents]` of `node.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsSection {
    /// Run pushed agent packages (the node then serves handler `wasm` in its join).
    pub enabled: bool,
    /// Agent inputs running at once (wasm instance pool size).
    pub max_instances: u32,
    /// Instances kept warm between inputs, one per recently active session (0 = a fresh
    /// instance per input); at most `max_instances`.
    pub warm_instances: u32,
    /// Linear memory of one agent instance.
    pub max_memory: ByteSize,
    /// Longest run of one input before it is interrupted.
    pub deadline: HumanDuration,
    /// Longest single request of a fetch (one chunk of a package, model or asset).
    pub fetch_timeout: HumanDuration,
    /// Bound of the blob store (packages, models, assets); least recently used blobs that no
    /// loaded agent reads at run time are evicted beyond it.
    pub blob_cache: ByteSize,
}

impl Default for AgentsSection {
    fn default() -> Self {
        AgentsSection {
            enabled: true,
            max_instances: 64,
            warm_instances: 32,
            max_memory: ByteSize(256 << 20),
            deadline: HumanDuration::from_secs(2),
            fetch_timeout: HumanDuration::from_secs(60),
            blob_cache: ByteSize(8 << 30),
        }
    }
}

/// Why a node could not make an agent runnable.
#[derive(Debug, thiserror::Error)]
pub enum AgentFetchError {
    /// The node has not joined an RC yet.
    #[error("agent {handler}: no RC to fetch package {hash} from (not joined)")]
    NoRc {
        /// `name@version`.
        handler: String,
        /// Package hash.
        hash: String,
    },
    /// The RC did not deliver the package.
    #[error("agent {handler}: fetching package {hash} from {url}: {reason}")]
    Fetch {
        /// `name@version`.
        handler: String,
        /// Package hash.
        hash: String,
        /// URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The package is not what was asked for, or does not verify or load.
    #[error("agent {handler}: package {hash} refused: {source}")]
    Package {
        /// `name@version`.
        handler: String,
        /// Package hash.
        hash: String,
        /// Why.
        source: opengrid_wasm::PackageError,
    },
    /// The package is another agent than the manifest names.
    #[error("package {hash} is {found}, not {handler}")]
    WrongAgent {
        /// `name@version` asked for.
        handler: String,
        /// Package hash.
        hash: String,
        /// `name@version` in the package.
        found: String,
    },
    /// A model or asset of the package could not be made available.
    #[error("agent {handler}: {what} {hash}: {source}")]
    Blob {
        /// `name@version`.
        handler: String,
        /// `model "name"` or `asset "name"`.
        what: String,
        /// Its hash.
        hash: String,
        /// Why.
        source: crate::common::blobs::BlobError,
    },
    /// The package cache.
    #[error("agent package cache {path}: {reason}")]
    Cache {
        /// File.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The node's agent runtime and package cache.
pub struct NodeAgents {
    /// Built on the first agent (its instance pool reserves address space and it runs an epoch
    /// ticker thread: nodes that never run an agent do not pay for it).
    runtime: std::sync::Mutex<Option<Runtime>>,
    config: RuntimeConfig,
    dir: PathBuf,
    blobs: BlobStore,
    http: reqwest::Client,
    /// The node's inference plane, where fetched models are registered.
    inference: Option<Arc<crate::node::inference::NodeInference>>,
    /// One fetch-and-load at a time (two sessions of a new agent fetch it once).
    loading: tokio::sync::Mutex<()>,
}

/// Where and as whom a node fetches: the RC's API and the node's own token.
#[derive(Clone, Debug, Default)]
pub struct FetchFrom {
    /// The RC's client API (`None` before the node joined).
    pub rc_api: Option<String>,
    /// An operator-format token signed by the node's own key.
    pub token: Option<String>,
    /// The node's own DID (never a source of its own fetches).
    pub me: String,
}

impl std::fmt::Debug for NodeAgents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeAgents({})", self.dir.display())
    }
}

impl NodeAgents {
    /// The runtime and cache under `<data_dir>/agents`, the blob store in `<data_dir>/blobs`;
    /// `opengrid_wasm_*` and `opengrid_blobs_*` metrics on `meter`.
    pub fn start(
        data_dir: &Path,
        s: &AgentsSection,
        meter: Option<opentelemetry::metrics::Meter>,
        inference: Option<Arc<crate::node::inference::NodeInference>>,
    ) -> Result<NodeAgents, String> {
        let dir = data_dir.join("agents");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let blobs = BlobStore::open(
            data_dir.join("blobs"),
            s.blob_cache.0,
            meter.as_ref(),
            s.fetch_timeout.0,
        )
        .map_err(|e| e.to_string())?;
        let config = RuntimeConfig {
            max_instances: s.max_instances,
            warm_instances: Some(s.warm_instances),
            max_memory_bytes: s.max_memory.0.min(usize::MAX as u64) as usize,
            deadline: s.deadline.0,
            assets_dir: Some(blobs.dir().to_path_buf()),
            meter,
            ..RuntimeConfig::new(dir.join("cache"))
        };
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(s.fetch_timeout.0)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(NodeAgents {
            runtime: std::sync::Mutex::new(None),
            config,
            dir,
            blobs,
            http,
            inference,
            loading: tokio::sync::Mutex::new(()),
        })
    }

    /// The node's blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// Makes `handler` (`name@version`, package `hash`) runnable on `host`: the package from
    /// the blob store or fetched by hash (from holders the RC names, then the RC), verified
    /// against `hash` and its signature, loaded (compiled once per hash) and checked to be the
    /// `name@version` asked for; then its models and assets fetched the same way (assets pinned:
    /// the agent reads them while it runs; models registered with the inference plane).
    pub async fn ensure(
        &self,
        host: &SessionHost,
        handler: &str,
        hash: &str,
        from: &FetchFrom,
    ) -> Result<(), AgentFetchError> {
        if host.handler_ids().iter().any(|h| h == handler) {
            return Ok(());
        }
        let _one = self.loading.lock().await;
        if host.handler_ids().iter().any(|h| h == handler) {
            return Ok(());
        }
        let refused = |source| AgentFetchError::Package {
            handler: handler.to_string(),
            hash: hash.to_string(),
            source,
        };
        if !crate::common::blobs::is_hash(hash) {
            return Err(refused(opengrid_wasm::PackageError::Malformed(format!(
                "{hash:?} is not a package hash"
            ))));
        }
        let runtime = self.runtime().map_err(|e| AgentFetchError::Cache {
            path: self.config.cache_dir.clone(),
            reason: e.to_string(),
        })?;
        let started = std::time::Instant::now();
        let limits = self.config.limits;
        let verify = |bytes: Vec<u8>| {
            let h = hash.to_string();
            async move {
                tokio::task::spawn_blocking(move || {
                    SignedPackage::from_bytes(&bytes, &limits)?.verify_with(Some(&h), &limits)
                })
                .await
                .map_err(|e| opengrid_wasm::PackageError::Compile(e.to_string()))?
            }
        };
        // The local copy first; one that does not verify (damaged) is fetched again.
        let cached = match self.blobs.read_unverified(hash) {
            Ok(Some(b)) => match verify(b).await {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(%hash, error = %e, "stored agent package refused: fetching it again");
                    self.blobs.remove(hash);
                    None
                }
            },
            _ => None,
        };
        let fetched = cached.is_none();
        let package = match cached {
            Some(p) => p,
            None => {
                // A package is named by the hash of its signed body, not of its bytes.
                let h = hash.to_string();
                let is_package = move |p: &Path| -> Result<(), String> {
                    let bytes = std::fs::read(p).map_err(|e| e.to_string())?;
                    SignedPackage::from_bytes(&bytes, &limits)
                        .and_then(|s| s.verify_with(Some(&h), &limits))
                        .map(drop)
                        .map_err(|e| e.to_string())
                };
                let path = self
                    .fetch_blob(hash, limits.max_package_bytes, from, &is_package)
                    .await
                    .map_err(|e| match e {
                        FetchBlobError::NoRc => AgentFetchError::NoRc {
                            handler: handler.to_string(),
                            hash: hash.to_string(),
                        },
                        FetchBlobError::Blob(source) => AgentFetchError::Fetch {
                            handler: handler.to_string(),
                            hash: hash.to_string(),
                            url: from.rc_api.clone().unwrap_or_default(),
                            reason: source.to_string(),
                        },
                    })?;
                let bytes = tokio::fs::read(&path)
                    .await
                    .map_err(|e| AgentFetchError::Cache {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                match verify(bytes).await {
                    Ok(p) => p,
                    Err(e) => {
                        self.blobs.remove(hash);
                        return Err(refused(e));
                    }
                }
            }
        };
        let meta = package.meta().clone();
        let found = format!("{}@{}", meta.name, meta.version);
        if found != handler {
            return Err(AgentFetchError::WrongAgent {
                handler: handler.to_string(),
                hash: hash.to_string(),
                found,
            });
        }
        // Models and assets by hash, before the agent can run.
        let blob_limit = self.blobs.stats().max_bytes;
        for (what, list) in [("model", &meta.models), ("asset", &meta.assets)] {
            for b in list {
                let fail = |source| AgentFetchError::Blob {
                    handler: handler.to_string(),
                    what: format!("{what} {:?}", b.name),
                    hash: b.hash.clone(),
                    source,
                };
                let by_bytes = |p: &Path| crate::common::blobs::verify_file(p, &b.hash);
                let path = match self.fetch_blob(&b.hash, blob_limit, from, &by_bytes).await {
                    Ok(p) => p,
                    Err(FetchBlobError::Blob(e)) => return Err(fail(e)),
                    Err(FetchBlobError::NoRc) => {
                        return Err(AgentFetchError::NoRc {
                            handler: handler.to_string(),
                            hash: b.hash.clone(),
                        })
                    }
                };
                if what == "asset" {
                    self.blobs.pin(&b.hash);
                } else if let Some(inf) = self.inference.clone() {
                    let id = b.hash.clone();
                    let registered = tokio::task::spawn_blocking(move || {
                        let id: opengrid_runtime_gpu::ModelId =
                            id.parse().map_err(|e| format!("{e}"))?;
                        inf.runtime()
                            .register_model(&path, &id)
                            .map_err(|e| e.to_string())
                    })
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r);
                    if let Err(reason) = registered {
                        tracing::warn!(%handler, model = %b.name, %reason, "model not registered with the inference plane");
                    }
                }
            }
        }
        let agent = {
            let runtime = runtime.clone();
            tokio::task::spawn_blocking(move || runtime.load(&package))
                .await
                .map_err(|e| refused(opengrid_wasm::PackageError::Compile(e.to_string())))?
                .map_err(refused)?
        };
        host.register(Arc::new(WasmHandler::new(agent)));
        tracing::info!(%handler, %hash, fetched, took_ms = started.elapsed().as_millis() as u64, "agent loaded");
        Ok(())
    }

    /// [`ensure`](Self::ensure) for `handler` (`name@version`) by name: the RC resolves it to
    /// its package hash (a handover target that has not run the agent).
    pub async fn ensure_by_id(
        &self,
        host: &SessionHost,
        handler: &str,
        from: &FetchFrom,
    ) -> Result<(), AgentFetchError> {
        if host.handler_ids().iter().any(|h| h == handler) {
            return Ok(());
        }
        let (name, version) = handler.split_once('@').unwrap_or((handler, ""));
        let rc = from.rc_api.clone().ok_or_else(|| AgentFetchError::NoRc {
            handler: handler.to_string(),
            hash: String::new(),
        })?;
        let url = format!("{rc}/agents/{name}/{version}");
        let fail = |reason: String| AgentFetchError::Fetch {
            handler: handler.to_string(),
            hash: String::new(),
            url: url.clone(),
            reason,
        };
        let mut req = self.http.get(&url).timeout(Duration::from_secs(5));
        if let Some(t) = &from.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| fail(e.to_string()))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return Err(fail(format!(
                "{status}: {}",
                body.chars().take(300).collect::<String>()
            )));
        }
        let v: serde_json::Value = resp.json().await.map_err(|e| fail(e.to_string()))?;
        let hash = v["hash"]
            .as_str()
            .ok_or_else(|| fail(format!("no hash in {v}")))?
            .to_string();
        self.ensure(host, handler, &hash, from).await
    }

    /// The blob from the store, or fetched from the nodes the RC says hold it (a few, in random
    /// order) and then the RC itself.
    async fn fetch_blob(
        &self,
        hash: &str,
        limit: u64,
        from: &FetchFrom,
        verify: &(dyn Fn(&Path) -> Result<(), String> + Sync),
    ) -> Result<PathBuf, FetchBlobError> {
        if let Some(p) = self.blobs.path(hash) {
            return Ok(p);
        }
        let rc = from.rc_api.clone().ok_or(FetchBlobError::NoRc)?;
        let mut sources = self.holders(&rc, hash, from).await;
        sources.push(Source {
            url: rc,
            token: from.token.clone(),
            kind: "rc",
        });
        self.blobs
            .fetch_verified(hash, &sources, limit, verify)
            .await
            .map_err(FetchBlobError::Blob)
    }

    /// Other nodes holding `hash`, as the RC knows them (none when it does not answer).
    async fn holders(&self, rc: &str, hash: &str, from: &FetchFrom) -> Vec<Source> {
        use rand::seq::SliceRandom;
        let url = format!("{rc}/blobs/{hash}/holders");
        let mut req = self.http.get(&url).timeout(Duration::from_secs(5));
        if let Some(t) = &from.token {
            req = req.bearer_auth(t);
        }
        let v: serde_json::Value = match req.send().await {
            Ok(r) if r.status().is_success() => r.json().await.unwrap_or_default(),
            Ok(r) => {
                tracing::debug!(%url, status = %r.status(), "no holders from the RC");
                return Vec::new();
            }
            Err(e) => {
                tracing::debug!(%url, error = %e, "no holders from the RC");
                return Vec::new();
            }
        };
        let mut peers: Vec<Source> = v["holders"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|h| h["node"].as_str() != Some(from.me.as_str()))
            .filter_map(|h| h["api"].as_str())
            .map(|api| Source {
                url: api.to_string(),
                token: from.token.clone(),
                kind: "peer",
            })
            .collect();
        peers.shuffle(&mut rand::rng());
        peers.truncate(MAX_PEER_SOURCES);
        peers
    }

    /// The runtime, built on first use.
    fn runtime(&self) -> Result<Runtime, opengrid_wasm::RuntimeError> {
        let mut r = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rt) = r.as_ref() {
            return Ok(rt.clone());
        }
        let rt = Runtime::new(self.config.clone())?;
        *r = Some(rt.clone());
        Ok(rt)
    }
}

/// Why a blob could not be fetched.
enum FetchBlobError {
    /// Not joined: no RC to ask.
    NoRc,
    /// Every source failed.
    Blob(crate::common::blobs::BlobError),
}

/// Most other nodes tried for one blob before the RC.
const MAX_PEER_SOURCES: usize = 3;

/// The sessions' `[agent]` limits, as the node keeps them from their manifests: the
/// [`opengrid_wasm::limits::LimitsSource`] agent handlers read per input.
#[derive(Default)]
pub struct NodeLimits {
    core: std::sync::OnceLock<std::sync::Weak<crate::node::NodeCore>>,
}

impl NodeLimits {
    /// Attaches the node, once.
    pub(crate) fn attach(&self, core: std::sync::Weak<crate::node::NodeCore>) {
        let _ = self.core.set(core);
    }
}

impl opengrid_wasm::limits::LimitsSource for NodeLimits {
    fn limits(&self, session: &str) -> opengrid_wasm::limits::AgentLimits {
        self.core
            .get()
            .and_then(std::sync::Weak::upgrade)
            .map(|c| c.agent_limits(session))
            .unwrap_or_default()
    }
}

/// What the node keeps per session for its agents and blobs: where it fetches from, the
/// manifests it holds, their `[agent]` limits, the colony's members, the blob inventory report.
impl crate::node::NodeCore {
    /// Where and as whom this node fetches blobs: its RC, its own short-lived token.
    pub(crate) fn fetch_from(&self) -> crate::node::agents::FetchFrom {
        crate::node::agents::FetchFrom {
            rc_api: self.rc_api(),
            token: crate::common::token::mint_operator(
                &self.identity,
                crate::node::agents::FETCH_TOKEN_TTL,
            )
            .ok(),
            me: self.identity.id().did(),
        }
    }

    /// The manifest (JSON) this node holds for `session`, if any.
    pub fn manifest_of(&self, session: &SessionId) -> Option<String> {
        lock(&self.manifests).get(session).cloned()
    }

    /// Keeps `session`'s manifest (JSON) and what the node reads of it per input.
    pub(super) fn keep_manifest(&self, session: SessionId, manifest: String) {
        match Manifest::from_json_str(&manifest) {
            Ok(m) if m.session.agent.is_some() => {
                self.agent_limits
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(session.clone(), opengrid_wasm::limits::AgentLimits::of(&m));
            }
            _ => {}
        }
        lock(&self.manifests).insert(session, manifest);
        self.manifest_arrived.notify_waiters();
    }

    /// The `[agent]` limits of `session`'s manifest (default when none or unknown).
    pub fn agent_limits(&self, session: &str) -> opengrid_wasm::limits::AgentLimits {
        let Ok(sid) = SessionId::new(session) else {
            return Default::default();
        };
        self.agent_limits
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&sid)
            .copied()
            .unwrap_or_default()
    }

    /// The colony's member nodes, as the RC last said (peers whose own tokens open `/blobs`).
    pub fn members(&self) -> Vec<NodeId> {
        lock(&self.members).clone()
    }

    /// Tells the RC which blobs this node holds when that changed since the last report (and
    /// after every (re)join): the RC names holders to fetching nodes and prefers warm nodes.
    pub(super) fn report_blobs(&self) {
        let Some(agents) = self.agents.get() else {
            return;
        };
        let generation = agents.blobs().generation();
        if self.blobs_reported.load(Ordering::Acquire) == generation {
            return;
        }
        let mut have = agents.blobs().list();
        have.truncate(wire::MAX_BLOBS_REPORTED);
        if self.send_rc(ToRc::Blobs {
            node: self.id(),
            have,
        }) {
            self.blobs_reported.store(generation, Ordering::Release);
        }
    }
}

/// How long a node's own fetch token is valid.
pub const FETCH_TOKEN_TTL: Duration = Duration::from_secs(300);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_damaged_cached_package_is_dropped_and_fetched_again() {
        let dir = tempfile::tempdir().unwrap();
        let agents = NodeAgents::start(dir.path(), &AgentsSection::default(), None, None).unwrap();
        let store = Arc::new(opengrid_session::MemoryCheckpointStore::new());
        let host = SessionHost::new(
            store,
            opengrid_actors::HostConfig::default(),
            opengrid_actors::Services::default(),
        )
        .await
        .unwrap();
        let damaged = b"OGAP damaged";
        let hash = agents.blobs().put(damaged).unwrap();
        let cached = dir.path().join("blobs").join(&hash);
        assert!(cached.exists());
        // Not joined: the fetch has nowhere to go, and the damaged copy is gone.
        let e = agents
            .ensure(&host, "counter@0.1.0", &hash, &FetchFrom::default())
            .await
            .unwrap_err();
        assert!(matches!(e, AgentFetchError::NoRc { .. }), "{e}");
        assert!(!cached.exists());
        assert!(!host.handler_ids().iter().any(|h| h == "counter@0.1.0"));
        // A malformed hash is refused before any I/O.
        let e = agents
            .ensure(
                &host,
                "counter@0.1.0",
                "../../etc/passwd",
                &FetchFrom::default(),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, AgentFetchError::Package { .. }), "{e}");
    }
}

//! Pushed agent packages on a node (ADR 0030): the node-wide wasm runtime, the package cache
//! (`<data_dir>/agents/<hash>.ogap`, compiled components in `<data_dir>/agents/cache`) and the
//! fetch of a package from the RC by hash when a session names an agent the node has not run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use opengrid_actors::SessionHost;
use opengrid_session::ByteSize;
use opengrid_session::HumanDuration;
use opengrid_wasm::{Runtime, RuntimeConfig, WasmHandler};
use serde::{Deserialize, Serialize};

/// `[agents]` of `node.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsSection {
    /// Run pushed agent packages (the node then serves handler `wasm` in its join).
    pub enabled: bool,
    /// Agent inputs running at once (wasm instance pool size).
    pub max_instances: u32,
    /// Linear memory of one agent instance.
    pub max_memory: ByteSize,
    /// Longest run of one input before it is interrupted.
    pub deadline: HumanDuration,
    /// Longest fetch of a package from the RC.
    pub fetch_timeout: HumanDuration,
}

impl Default for AgentsSection {
    fn default() -> Self {
        AgentsSection {
            enabled: true,
            max_instances: 64,
            max_memory: ByteSize(256 << 20),
            deadline: HumanDuration::from_secs(2),
            fetch_timeout: HumanDuration::from_secs(60),
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
    http: reqwest::Client,
    /// One fetch-and-load at a time (two sessions of a new agent fetch it once).
    loading: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for NodeAgents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeAgents({})", self.dir.display())
    }
}

impl NodeAgents {
    /// The runtime and cache under `<data_dir>/agents`; `opengrid_wasm_*` metrics on `meter`.
    pub fn start(
        data_dir: &Path,
        s: &AgentsSection,
        meter: Option<opentelemetry::metrics::Meter>,
    ) -> Result<NodeAgents, String> {
        let dir = data_dir.join("agents");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let config = RuntimeConfig {
            max_instances: s.max_instances,
            max_memory_bytes: s.max_memory.0.min(usize::MAX as u64) as usize,
            deadline: s.deadline.0,
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
            http,
            loading: tokio::sync::Mutex::new(()),
        })
    }

    /// Makes `handler` (`name@version`, package `hash`) runnable on `host`: from memory, the
    /// package cache, or fetched from the RC at `rc_api` with `token` (the node's own), verified
    /// against `hash`, cached, loaded (compiled once per hash) and registered.
    pub async fn ensure(
        &self,
        host: &SessionHost,
        handler: &str,
        hash: &str,
        rc_api: Option<String>,
        token: Option<String>,
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
        if !crate::node::agents::is_hash(hash) {
            return Err(refused(opengrid_wasm::PackageError::Malformed(format!(
                "{hash:?} is not a package hash"
            ))));
        }
        let path = self.dir.join(format!("{hash}.ogap"));
        let runtime = self.runtime().map_err(|e| AgentFetchError::Cache {
            path: self.config.cache_dir.clone(),
            reason: e.to_string(),
        })?;
        let started = std::time::Instant::now();
        let load = |bytes: Vec<u8>| {
            let (runtime, h) = (runtime.clone(), hash.to_string());
            async move {
                tokio::task::spawn_blocking(move || {
                    let agent = runtime.load_bytes(&bytes, Some(&h))?;
                    Ok::<_, opengrid_wasm::PackageError>((agent, bytes))
                })
                .await
                .map_err(|e| opengrid_wasm::PackageError::Compile(e.to_string()))?
            }
        };
        // The local copy first; one that does not verify (damaged) is fetched again.
        let cached = match tokio::fs::read(&path).await {
            Ok(b) => match load(b).await {
                Ok(loaded) => Some(loaded),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cached agent package refused: fetching it again");
                    let _ = tokio::fs::remove_file(&path).await;
                    None
                }
            },
            Err(_) => None,
        };
        let fetched = cached.is_none();
        let loaded = match cached {
            Some(l) => l,
            None => {
                let bytes = self.fetch(handler, hash, rc_api, token).await?;
                load(bytes).await.map_err(refused)?
            }
        };
        let (agent, bytes) = loaded;
        if agent.id() != handler {
            return Err(AgentFetchError::WrongAgent {
                handler: handler.to_string(),
                hash: hash.to_string(),
                found: agent.id().to_string(),
            });
        }
        if fetched {
            write_atomic(&path, &bytes).map_err(|reason| AgentFetchError::Cache {
                path: path.clone(),
                reason,
            })?;
        }
        host.register(Arc::new(WasmHandler::new(agent)));
        tracing::info!(%handler, %hash, fetched, took_ms = started.elapsed().as_millis() as u64, "agent loaded");
        Ok(())
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

    async fn fetch(
        &self,
        handler: &str,
        hash: &str,
        rc_api: Option<String>,
        token: Option<String>,
    ) -> Result<Vec<u8>, AgentFetchError> {
        let rc = rc_api.ok_or_else(|| AgentFetchError::NoRc {
            handler: handler.to_string(),
            hash: hash.to_string(),
        })?;
        let url = format!("{rc}/agents/by-hash/{hash}");
        let fail = |reason: String| AgentFetchError::Fetch {
            handler: handler.to_string(),
            hash: hash.to_string(),
            url: url.clone(),
            reason,
        };
        let mut req = self.http.get(&url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let mut resp = req.send().await.map_err(|e| fail(e.to_string()))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return Err(fail(format!("{status}: {}", truncate(&body, 300))));
        }
        let limit = self.config.limits.max_package_bytes;
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| fail(e.to_string()))? {
            if (bytes.len() + chunk.len()) as u64 > limit {
                return Err(fail(format!("over the package limit of {limit} bytes")));
            }
            bytes.extend_from_slice(&chunk);
        }
        tracing::info!(%handler, %hash, bytes = bytes.len(), "agent package fetched from the RC");
        Ok(bytes)
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Whether `h` looks like a package hash (64 lowercase hex digits).
pub fn is_hash(h: &str) -> bool {
    h.len() == 64
        && h.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| e.to_string())?;
    tmp.write_all(bytes).map_err(|e| e.to_string())?;
    tmp.as_file().sync_all().map_err(|e| e.to_string())?;
    tmp.persist(path).map_err(|e| e.error.to_string())?;
    Ok(())
}

/// How long a node's own fetch token is valid.
pub const FETCH_TOKEN_TTL: Duration = Duration::from_secs(300);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_damaged_cached_package_is_dropped_and_fetched_again() {
        let dir = tempfile::tempdir().unwrap();
        let agents = NodeAgents::start(dir.path(), &AgentsSection::default(), None).unwrap();
        let store = Arc::new(opengrid_session::MemoryCheckpointStore::new());
        let host = SessionHost::new(
            store,
            opengrid_actors::HostConfig::default(),
            opengrid_actors::Services::default(),
        )
        .await
        .unwrap();
        let hash = "ab".repeat(32);
        let cached = dir.path().join("agents").join(format!("{hash}.ogap"));
        std::fs::write(&cached, b"OGAP damaged").unwrap();
        // Not joined: the fetch has nowhere to go, and the damaged copy is gone.
        let e = agents
            .ensure(&host, "counter@0.1.0", &hash, None, None)
            .await
            .unwrap_err();
        assert!(matches!(e, AgentFetchError::NoRc { .. }), "{e}");
        assert!(!cached.exists());
        assert!(!host.handler_ids().iter().any(|h| h == "counter@0.1.0"));
        // A malformed hash is refused before any I/O.
        let e = agents
            .ensure(&host, "counter@0.1.0", "../../etc/passwd", None, None)
            .await
            .unwrap_err();
        assert!(matches!(e, AgentFetchError::Package { .. }), "{e}");
    }
}

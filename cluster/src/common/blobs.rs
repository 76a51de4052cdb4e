//! The asset plane's content-addressed blob store (ADR 0031), one per node and one per RC: agent
//! packages, models and assets, each a file `<dir>/<blake3 hex>`.
//!
//! - **Fetch from any holder**: [`BlobStore::fetch`] downloads a blob in chunks of
//!   [`CHUNK_BYTES`] with HTTP range requests (`GET {source}/blobs/{hash}`), from the first source
//!   that answers, moving to the next one on any error. Bytes arrive in `<hash>.part`; a fetch cut
//!   off (an error, a holder killed, this process restarted) resumes from the part's length, from
//!   whichever source answers next. The whole blob is checked against its hash before it is
//!   renamed into place (a part that does not verify is deleted and fetched again from zero).
//! - **Bounded**: the store keeps at most `max_bytes`; adding a blob evicts the least recently
//!   used unpinned ones first. Blobs read while sessions run (an agent's assets) are pinned;
//!   packages and models are read once at load and may be evicted (fetched again when needed).
//! - **Concurrent fetches of one hash** share one download.
//! - **Metrics** (`opengrid_blobs_*`): bytes and count held, fetched bytes by source kind,
//!   fetches by result, evictions, requests served.
//!
//! Serving is [`serve_blob`]: `tower-http`'s `ServeFile` behind the caller's authorization, so
//! ranges, `HEAD` and conditional requests follow RFC 9110.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::metrics::{Counter, Meter, MeterProvider as _};
use opentelemetry::KeyValue;

/// Bytes asked per range request.
pub const CHUNK_BYTES: u64 = 1 << 20;
/// Rounds over the sources before a fetch gives up (each round tries every source).
const FETCH_ROUNDS: u32 = 3;

/// Where a blob may be fetched from: a node or RC HTTP API base URL and the token to present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// `http://host:port` (the blob is at `{url}/blobs/{hash}`).
    pub url: String,
    /// Bearer token, if the source asks for one.
    pub token: Option<String>,
    /// `peer` (another node), `rc` (the colony's RC) or `federation` (another colony's RC): the
    /// metrics label.
    pub kind: &'static str,
}

/// Why the store refused or could not do something.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// Not 64 lowercase hex digits.
    #[error("{0:?} is not a blob hash (64 lowercase hex digits of blake3)")]
    BadHash(String),
    /// Over the size limit of what is asked.
    #[error("blob {hash} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// Blob.
        hash: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The store cannot make room: pinned blobs fill it.
    #[error("blob {hash} ({size} bytes) does not fit: the store holds {pinned} pinned bytes of max {max}")]
    Full {
        /// Blob.
        hash: String,
        /// Its size.
        size: u64,
        /// Bytes pinned.
        pinned: u64,
        /// The store's bound.
        max: u64,
    },
    /// The bytes are not the blob named (they hash to something else; for an agent package:
    /// its body hash or signature does not verify).
    #[error("blob {hash}: {reason}")]
    Integrity {
        /// Expected.
        hash: String,
        /// What the check found.
        reason: String,
    },
    /// No source delivered it.
    #[error("blob {hash}: no source delivered it ({})", .tried.join("; "))]
    Fetch {
        /// Blob.
        hash: String,
        /// `source: why` for each try.
        tried: Vec<String>,
    },
    /// The store's files.
    #[error("blob store {path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
}

/// Whether `h` is a blob hash: 64 lowercase hex digits.
pub fn is_hash(h: &str) -> bool {
    h.len() == 64
        && h.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_hash(h: &str) -> Result<(), BlobError> {
    if is_hash(h) {
        Ok(())
    } else {
        Err(BlobError::BadHash(h.chars().take(80).collect()))
    }
}

/// Counts since the store opened (tests, `/status`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BlobStats {
    /// Blobs held.
    pub count: u64,
    /// Bytes held.
    pub bytes: u64,
    /// Bytes of pinned blobs.
    pub pinned_bytes: u64,
    /// The bound.
    pub max_bytes: u64,
    /// Fetches completed.
    pub fetched: u64,
    /// Bytes downloaded (all sources).
    pub fetched_bytes: u64,
    /// Fetches that resumed a part left by an earlier try.
    pub resumed: u64,
    /// Blobs evicted.
    pub evictions: u64,
}

struct Entry {
    size: u64,
    /// Logical clock of the last use (LRU).
    used: u64,
}

#[derive(Default)]
struct Index {
    blobs: HashMap<String, Entry>,
    total: u64,
    clock: u64,
    pins: HashMap<String, u32>,
}

impl Index {
    fn touch(&mut self, hash: &str) -> bool {
        self.clock += 1;
        let c = self.clock;
        match self.blobs.get_mut(hash) {
            Some(e) => {
                e.used = c;
                true
            }
            None => false,
        }
    }

    fn pinned_bytes(&self) -> u64 {
        self.pins
            .keys()
            .filter_map(|h| self.blobs.get(h))
            .map(|e| e.size)
            .sum()
    }
}

struct Metrics {
    fetched_bytes: Counter<u64>,
    fetches: Counter<u64>,
    evictions: Counter<u64>,
    served: Counter<u64>,
}

/// A content-addressed, bounded blob store. Cheap to clone.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
    /// One download per hash at a time.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    http: reqwest::Client,
    metrics: Metrics,
    fetched: AtomicU64,
    fetched_bytes: AtomicU64,
    resumed: AtomicU64,
    evictions: AtomicU64,
    /// Bumped on every change of the set held (nodes report their inventory when it moves).
    generation: AtomicU64,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlobStore({})", self.inner.dir.display())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl BlobStore {
    /// Opens (creating) the store in `dir`, bounded by `max_bytes`; indexes the blobs there
    /// (least recently modified first in the LRU order), removes stray temp files and keeps
    /// parts for resumption. Instruments `opengrid_blobs_*` on `meter`.
    pub fn open(
        dir: impl Into<PathBuf>,
        max_bytes: u64,
        meter: Option<&Meter>,
        request_timeout: Duration,
    ) -> Result<BlobStore, BlobError> {
        let dir = dir.into();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BlobError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut found: Vec<(std::time::SystemTime, String, u64)> = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let e = e.map_err(io(&dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(meta) = e.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            if is_hash(&name) {
                let mtime = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                found.push((mtime, name, meta.len()));
            } else if name.ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        found.sort();
        let mut index = Index::default();
        for (_, hash, size) in found {
            index.clock += 1;
            index.total += size;
            index.blobs.insert(
                hash,
                Entry {
                    size,
                    used: index.clock,
                },
            );
        }
        let noop;
        let meter = match meter {
            Some(m) => m,
            None => {
                noop = opentelemetry::metrics::NoopMeterProvider::new().meter("opengrid_blobs");
                &noop
            }
        };
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(request_timeout)
            .build()
            .map_err(|e| BlobError::Io {
                path: dir.clone(),
                source: std::io::Error::other(e),
            })?;
        let store = BlobStore {
            inner: Arc::new(Inner {
                dir,
                max_bytes,
                index: Mutex::new(index),
                fetching: Mutex::new(HashMap::new()),
                http,
                metrics: Metrics {
                    fetched_bytes: meter
                        .u64_counter("opengrid_blobs_fetched_bytes")
                        .with_description(
                            "blob bytes downloaded, by source kind (peer, rc, federation)",
                        )
                        .build(),
                    fetches: meter
                        .u64_counter("opengrid_blobs_fetches")
                        .with_description("blob fetches, by result (ok, failed, integrity)")
                        .build(),
                    evictions: meter
                        .u64_counter("opengrid_blobs_evictions")
                        .with_description("blobs evicted to stay within the store's bound")
                        .build(),
                    served: meter
                        .u64_counter("opengrid_blobs_served_requests")
                        .with_description("blob requests served to peers")
                        .build(),
                },
                fetched: AtomicU64::new(0),
                fetched_bytes: AtomicU64::new(0),
                resumed: AtomicU64::new(0),
                evictions: AtomicU64::new(0),
                generation: AtomicU64::new(1),
            }),
        };
        {
            let s = store.clone();
            let _ = meter
                .u64_observable_gauge("opengrid_blobs_bytes")
                .with_description("bytes held in the blob store")
                .with_callback(move |o| o.observe(s.stats().bytes, &[]))
                .build();
            let s = store.clone();
            let _ = meter
                .u64_observable_gauge("opengrid_blobs_count")
                .with_description("blobs held in the blob store")
                .with_callback(move |o| o.observe(s.stats().count, &[]))
                .build();
        }
        Ok(store)
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn file(&self, hash: &str) -> PathBuf {
        self.inner.dir.join(hash)
    }

    /// Whether the blob is held.
    pub fn has(&self, hash: &str) -> bool {
        lock(&self.inner.index).blobs.contains_key(hash)
    }

    /// The blob's file if held (counts as a use for the LRU order).
    pub fn path(&self, hash: &str) -> Option<PathBuf> {
        if !is_hash(hash) {
            return None;
        }
        lock(&self.inner.index).touch(hash).then(|| self.file(hash))
    }

    /// The blob's bytes if held, unchecked (an agent package is checked by its own verification).
    pub fn read_unverified(&self, hash: &str) -> Result<Option<Vec<u8>>, BlobError> {
        let Some(path) = self.path(hash) else {
            return Ok(None);
        };
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.forget(hash);
                Ok(None)
            }
            Err(source) => Err(BlobError::Io { path, source }),
        }
    }

    /// The blob's bytes if held, checked against the hash (a damaged file is removed).
    pub fn read(&self, hash: &str) -> Result<Option<Vec<u8>>, BlobError> {
        let Some(path) = self.path(hash) else {
            return Ok(None);
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.forget(hash);
                return Ok(None);
            }
            Err(source) => return Err(BlobError::Io { path, source }),
        };
        let actual = blake3::hash(&bytes).to_hex().to_string();
        if actual != hash {
            tracing::warn!(%hash, %actual, "damaged blob removed");
            self.remove(hash);
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    /// Every hash held.
    pub fn list(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.inner.index).blobs.keys().cloned().collect();
        v.sort();
        v
    }

    /// Changes with every blob added or removed.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// Keeps `hash` from eviction until as many [`unpin`](Self::unpin)s.
    pub fn pin(&self, hash: &str) {
        *lock(&self.inner.index)
            .pins
            .entry(hash.to_string())
            .or_default() += 1;
    }

    /// Undoes one [`pin`](Self::pin).
    pub fn unpin(&self, hash: &str) {
        let mut ix = lock(&self.inner.index);
        if let Some(n) = ix.pins.get_mut(hash) {
            *n -= 1;
            if *n == 0 {
                ix.pins.remove(hash);
            }
        }
    }

    /// Counts.
    pub fn stats(&self) -> BlobStats {
        let ix = lock(&self.inner.index);
        let i = &self.inner;
        BlobStats {
            count: ix.blobs.len() as u64,
            bytes: ix.total,
            pinned_bytes: ix.pinned_bytes(),
            max_bytes: i.max_bytes,
            fetched: i.fetched.load(Ordering::Relaxed),
            fetched_bytes: i.fetched_bytes.load(Ordering::Relaxed),
            resumed: i.resumed.load(Ordering::Relaxed),
            evictions: i.evictions.load(Ordering::Relaxed),
        }
    }

    /// Removes a blob (no-op when absent).
    pub fn remove(&self, hash: &str) {
        if !is_hash(hash) {
            return;
        }
        let _ = std::fs::remove_file(self.file(hash));
        self.forget(hash);
    }

    fn forget(&self, hash: &str) {
        let mut ix = lock(&self.inner.index);
        if let Some(e) = ix.blobs.remove(hash) {
            ix.total -= e.size;
            self.inner.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Stores `bytes` (hash computed), evicting as needed; returns the hash.
    pub fn put(&self, bytes: &[u8]) -> Result<String, BlobError> {
        let hash = blake3::hash(bytes).to_hex().to_string();
        if self.path(&hash).is_some() {
            return Ok(hash);
        }
        let tmp = self
            .inner
            .dir
            .join(format!("{hash}.{}.tmp", std::process::id()));
        let io = |source| BlobError::Io {
            path: tmp.clone(),
            source,
        };
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        self.admit(&hash, &tmp, bytes.len() as u64)?;
        Ok(hash)
    }

    /// Stores the file at `tmp` (in this store's directory, already verified to hash to `hash`)
    /// as `hash`: makes room (LRU, unpinned), renames it into place. On refusal `tmp` is removed.
    fn admit(&self, hash: &str, tmp: &Path, size: u64) -> Result<(), BlobError> {
        let mut victims = Vec::new();
        {
            let mut ix = lock(&self.inner.index);
            if ix.blobs.contains_key(hash) {
                drop(ix);
                let _ = std::fs::remove_file(tmp);
                return Ok(());
            }
            let max = self.inner.max_bytes;
            if size > max {
                drop(ix);
                let _ = std::fs::remove_file(tmp);
                return Err(BlobError::TooLarge {
                    hash: hash.into(),
                    size,
                    limit: max,
                });
            }
            let mut order: Vec<(u64, String, u64)> = ix
                .blobs
                .iter()
                .filter(|(h, _)| !ix.pins.contains_key(*h))
                .map(|(h, e)| (e.used, h.clone(), e.size))
                .collect();
            order.sort();
            let mut total = ix.total;
            let mut order = order.into_iter();
            while total + size > max {
                match order.next() {
                    Some((_, h, s)) => {
                        total -= s;
                        victims.push(h);
                    }
                    None => {
                        let pinned = ix.pinned_bytes();
                        drop(ix);
                        let _ = std::fs::remove_file(tmp);
                        return Err(BlobError::Full {
                            hash: hash.into(),
                            size,
                            pinned,
                            max,
                        });
                    }
                }
            }
            for h in &victims {
                if let Some(e) = ix.blobs.remove(h) {
                    ix.total -= e.size;
                }
            }
            let path = self.file(hash);
            if let Err(source) = std::fs::rename(tmp, &path) {
                let _ = std::fs::remove_file(tmp);
                return Err(BlobError::Io { path, source });
            }
            ix.clock += 1;
            let used = ix.clock;
            ix.blobs.insert(hash.to_string(), Entry { size, used });
            ix.total += size;
            self.inner.generation.fetch_add(1, Ordering::AcqRel);
        }
        for h in victims {
            let _ = std::fs::remove_file(self.file(&h));
            self.inner.evictions.fetch_add(1, Ordering::Relaxed);
            self.inner.metrics.evictions.add(1, &[]);
            tracing::info!(hash = %h, "blob evicted (least recently used)");
        }
        if let Ok(d) = std::fs::File::open(&self.inner.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Makes the blob available locally: held already, or downloaded from `sources` in order
    /// (chunked, resumable, checked to hash to its name; see the module docs). `limit` bounds
    /// its size.
    pub async fn fetch(
        &self,
        hash: &str,
        sources: &[Source],
        limit: u64,
    ) -> Result<PathBuf, BlobError> {
        self.fetch_verified(hash, sources, limit, &|p: &Path| verify_file(p, hash))
            .await
    }

    /// [`fetch`](Self::fetch) with the integrity check `verify` (`Err(reason)`) instead of
    /// blake3 of the bytes: an agent package is named by the hash of its signed body.
    pub async fn fetch_verified(
        &self,
        hash: &str,
        sources: &[Source],
        limit: u64,
        verify: &(dyn Fn(&Path) -> Result<(), String> + Sync),
    ) -> Result<PathBuf, BlobError> {
        check_hash(hash)?;
        if let Some(p) = self.path(hash) {
            return Ok(p);
        }
        let gate = lock(&self.inner.fetching)
            .entry(hash.to_string())
            .or_default()
            .clone();
        let _one = gate.lock().await;
        let r = self.fetch_locked(hash, sources, limit, verify).await;
        lock(&self.inner.fetching).remove(hash);
        let result = match &r {
            Ok(_) => "ok",
            Err(BlobError::Integrity { .. }) => "integrity",
            Err(_) => "failed",
        };
        self.inner
            .metrics
            .fetches
            .add(1, &[KeyValue::new("result", result)]);
        r
    }

    async fn fetch_locked(
        &self,
        hash: &str,
        sources: &[Source],
        limit: u64,
        verify: &(dyn Fn(&Path) -> Result<(), String> + Sync),
    ) -> Result<PathBuf, BlobError> {
        if let Some(p) = self.path(hash) {
            return Ok(p);
        }
        let part = self.inner.dir.join(format!("{hash}.part"));
        let mut tried = Vec::new();
        let mut bad_bytes: Option<String> = None;
        if std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) > 0 {
            self.inner.resumed.fetch_add(1, Ordering::Relaxed);
        }
        for round in 0..FETCH_ROUNDS {
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(100 << round)).await;
            }
            for src in sources {
                match self.download(hash, src, &part, limit).await {
                    Ok(size) => match verify(&part) {
                        Ok(()) => {
                            self.admit(hash, &part, size)?;
                            self.inner.fetched.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(%hash, size, source = %src.url, "blob fetched");
                            return Ok(self.file(hash));
                        }
                        Err(reason) => {
                            let _ = std::fs::remove_file(&part);
                            tracing::warn!(%hash, %reason, source = %src.url, "fetched blob is not what its name says");
                            tried.push(format!("{}: {reason}", src.url));
                            bad_bytes = Some(reason);
                        }
                    },
                    Err(e @ BlobError::TooLarge { .. }) => {
                        let _ = std::fs::remove_file(&part);
                        return Err(e);
                    }
                    Err(e) => {
                        tracing::debug!(%hash, source = %src.url, error = %e, "blob source failed, next one");
                        tried.push(format!("{}: {e}", src.url));
                    }
                }
            }
            if bad_bytes.is_some() {
                break;
            }
        }
        match bad_bytes {
            Some(reason) => Err(BlobError::Integrity {
                hash: hash.into(),
                reason,
            }),
            None => Err(BlobError::Fetch {
                hash: hash.into(),
                tried,
            }),
        }
    }

    /// Downloads the rest of `hash` from `src` into `part`, chunk by chunk; the blob's size.
    async fn download(
        &self,
        hash: &str,
        src: &Source,
        part: &Path,
        limit: u64,
    ) -> Result<u64, BlobError> {
        let io = |source| BlobError::Io {
            path: part.to_path_buf(),
            source,
        };
        let fail = |reason: String| BlobError::Fetch {
            hash: hash.into(),
            tried: vec![reason],
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(part)
            .map_err(io)?;
        let mut offset = file.metadata().map_err(io)?.len();
        let url = format!("{}/blobs/{hash}", src.url.trim_end_matches('/'));
        loop {
            let end = offset + CHUNK_BYTES - 1;
            let mut req = self
                .inner
                .http
                .get(&url)
                .header(reqwest::header::RANGE, format!("bytes={offset}-{end}"));
            if let Some(t) = &src.token {
                req = req.bearer_auth(t);
            }
            let mut resp = req.send().await.map_err(|e| fail(e.to_string()))?;
            let status = resp.status().as_u16();
            let total = match status {
                206 => content_range_total(resp.headers())
                    .ok_or_else(|| fail("206 without a usable Content-Range".into()))?,
                200 => {
                    // The source ignored the range: start over with the whole body.
                    file.set_len(0).map_err(io)?;
                    offset = 0;
                    resp.content_length()
                        .ok_or_else(|| fail("200 without a length".into()))?
                }
                416 => {
                    // Asked past the end: the part holds at least the whole blob.
                    let total = content_range_total(resp.headers()).unwrap_or(offset);
                    if offset >= total {
                        file.set_len(total).map_err(io)?;
                        file.sync_all().map_err(io)?;
                        return Ok(total);
                    }
                    return Err(fail(format!("416 at offset {offset} of {total}")));
                }
                _ => {
                    let body = resp.text().await.unwrap_or_default();
                    return Err(fail(format!(
                        "HTTP {status}: {}",
                        body.chars().take(200).collect::<String>()
                    )));
                }
            };
            if total > limit {
                return Err(BlobError::TooLarge {
                    hash: hash.into(),
                    size: total,
                    limit,
                });
            }
            let mut got = 0u64;
            while let Some(chunk) = resp.chunk().await.map_err(|e| fail(e.to_string()))? {
                if offset + got + chunk.len() as u64 > total {
                    return Err(fail(format!("more bytes than the {total} announced")));
                }
                file.write_all(&chunk).map_err(io)?;
                got += chunk.len() as u64;
                self.inner
                    .fetched_bytes
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                self.inner
                    .metrics
                    .fetched_bytes
                    .add(chunk.len() as u64, &[KeyValue::new("source", src.kind)]);
            }
            offset += got;
            if offset >= total {
                file.sync_all().map_err(io)?;
                return Ok(total);
            }
            if got == 0 {
                return Err(fail(format!("empty answer at offset {offset} of {total}")));
            }
        }
    }

    /// Stores a blob arriving as a body stream (an upload), hashing while writing; refused
    /// unless it hashes to `hash` and stays within `limit`.
    pub async fn put_stream<S, E>(
        &self,
        hash: &str,
        mut body: S,
        limit: u64,
    ) -> Result<bool, BlobError>
    where
        S: futures::Stream<Item = Result<axum::body::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        use futures::StreamExt;
        check_hash(hash)?;
        if self.path(hash).is_some() {
            return Ok(false);
        }
        let tmp = self.inner.dir.join(format!(
            "{hash}.up{}.tmp",
            UPLOADS.fetch_add(1, Ordering::Relaxed)
        ));
        let io = |source| BlobError::Io {
            path: tmp.clone(),
            source,
        };
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        let r: Result<(), BlobError> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| BlobError::Fetch {
                    hash: hash.into(),
                    tried: vec![format!("upload: {e}")],
                })?;
                size += chunk.len() as u64;
                if size > limit {
                    return Err(BlobError::TooLarge {
                        hash: hash.into(),
                        size,
                        limit,
                    });
                }
                hasher.update(&chunk);
                f.write_all(&chunk).map_err(io)?;
            }
            f.sync_all().map_err(io)?;
            Ok(())
        }
        .await;
        if let Err(e) = r {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let actual = hasher.finalize().to_hex().to_string();
        if actual != hash {
            let _ = std::fs::remove_file(&tmp);
            return Err(BlobError::Integrity {
                hash: hash.into(),
                reason: format!("the bytes hash to {actual}"),
            });
        }
        self.admit(hash, &tmp, size)?;
        Ok(true)
    }

    /// Counts one request served to a peer.
    pub fn note_served(&self) {
        self.inner.metrics.served.add(1, &[]);
    }
}

static UPLOADS: AtomicU64 = AtomicU64::new(0);

/// The total of a `Content-Range: bytes a-b/total` (or `bytes */total`) header.
fn content_range_total(h: &reqwest::header::HeaderMap) -> Option<u64> {
    let v = h.get(reqwest::header::CONTENT_RANGE)?.to_str().ok()?;
    v.rsplit('/').next()?.trim().parse().ok()
}

/// `Ok` when the file hashes to `hash`; else what it hashes to.
pub fn verify_file(path: &Path, hash: &str) -> Result<(), String> {
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = f.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let actual = h.finalize().to_hex().to_string();
    if actual == hash {
        Ok(())
    } else {
        Err(format!("the bytes hash to {actual}"))
    }
}

/// Serves a held blob for `GET`/`HEAD /blobs/{hash}` (ranges, conditional requests) once the
/// caller is authorized; `404` when not held.
pub async fn serve_blob(
    store: &BlobStore,
    hash: &str,
    req: axum::extract::Request,
) -> axum::response::Response {
    let path = store.path(hash);
    if path.is_some() {
        store.note_served();
    }
    serve_file(path, hash, req).await
}

/// Serves the file of blob `hash` (`None`: `404 not_found`) with `tower-http`'s `ServeFile`.
pub async fn serve_file(
    path: Option<PathBuf>,
    hash: &str,
    req: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use tower::ServiceExt;
    let Some(path) = path else {
        return crate::common::http::ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "not_found",
            format!("no blob {} here", hash.chars().take(80).collect::<String>()),
        )
        .into_response();
    };
    match tower_http::services::ServeFile::new(path)
        .oneshot(req)
        .await
    {
        Ok(r) => r.into_response(),
        Err(e) => crate::common::http::ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "io",
            e.to_string(),
        )
        .into_response(),
    }
}

impl BlobError {
    /// HTTP status and error code of this refusal.
    pub fn status(&self) -> (axum::http::StatusCode, &'static str) {
        use axum::http::StatusCode as S;
        match self {
            BlobError::BadHash(_) => (S::BAD_REQUEST, "bad_hash"),
            BlobError::TooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "blob_too_large"),
            BlobError::Integrity { .. } => (S::UNPROCESSABLE_ENTITY, "blob_mismatch"),
            BlobError::Full { .. } => (S::INSUFFICIENT_STORAGE, "blob_store_full"),
            BlobError::Fetch { .. } => (S::BAD_GATEWAY, "blob_unavailable"),
            BlobError::Io { .. } => (S::INTERNAL_SERVER_ERROR, "blob_io"),
        }
    }
}

impl From<BlobError> for crate::common::http::ApiError {
    fn from(e: BlobError) -> Self {
        let (status, code) = e.status();
        crate::common::http::ApiError::new(status, code, e.to_string())
    }
}

/// Hashes that are referenced but not held, in order (for a fetch plan).
pub fn missing<'a>(store: &BlobStore, hashes: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut seen = HashSet::new();
    hashes
        .into_iter()
        .filter(|h| seen.insert(*h) && !store.has(h))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path, max: u64) -> BlobStore {
        BlobStore::open(dir, max, None, Duration::from_secs(5)).unwrap()
    }

    #[test]
    fn put_read_and_reopen() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path(), 1 << 20);
        let h = s.put(b"hello").unwrap();
        assert_eq!(h, blake3::hash(b"hello").to_hex().to_string());
        assert_eq!(s.read(&h).unwrap().unwrap(), b"hello");
        assert_eq!(s.stats().bytes, 5);
        let s2 = store(d.path(), 1 << 20);
        assert!(s2.has(&h));
        assert_eq!(s2.stats().count, 1);
    }

    #[test]
    fn damaged_blob_is_removed_on_read() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path(), 1 << 20);
        let h = s.put(b"hello").unwrap();
        std::fs::write(d.path().join(&h), b"jello").unwrap();
        assert!(s.read(&h).unwrap().is_none());
        assert!(!s.has(&h));
    }

    #[test]
    fn lru_eviction_skips_pinned_and_refuses_when_pins_fill_it() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path(), 30);
        let a = s.put(&[1u8; 10]).unwrap();
        let b = s.put(&[2u8; 10]).unwrap();
        let c = s.put(&[3u8; 10]).unwrap();
        s.pin(&a);
        s.path(&b); // b used after c: c is the least recently used unpinned one
        let e = s.put(&[4u8; 10]).unwrap();
        assert!(s.has(&a) && s.has(&b) && s.has(&e));
        assert!(!s.has(&c), "c evicted");
        assert!(!d.path().join(&c).exists());
        assert_eq!(s.stats().evictions, 1);
        s.pin(&b);
        s.pin(&e);
        match s.put(&[5u8; 10]) {
            Err(BlobError::Full { pinned, max, .. }) => assert_eq!((pinned, max), (30, 30)),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.stats().bytes, 30);
        match s.put(&[6u8; 31]) {
            Err(BlobError::TooLarge { size: 31, .. }) => {}
            other => panic!("{other:?}"),
        }
        s.unpin(&b);
        s.put(&[5u8; 10]).unwrap();
        assert!(!s.has(&b));
    }

    #[test]
    fn hostile_hashes_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path(), 1 << 20);
        for h in ["../../etc/passwd", "", &"A".repeat(64), &"0".repeat(63)] {
            assert!(s.path(h).is_none());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            match rt.block_on(s.fetch(h, &[], 10)) {
                Err(BlobError::BadHash(_)) => {}
                other => panic!("{h:?}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn upload_is_verified() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path(), 1 << 20);
        let h = blake3::hash(b"abc").to_hex().to_string();
        let body = |b: &'static [u8]| {
            futures::stream::iter(vec![Ok::<_, std::io::Error>(
                axum::body::Bytes::from_static(b),
            )])
        };
        match s.put_stream(&h, body(b"abd"), 100).await {
            Err(BlobError::Integrity { .. }) => {}
            other => panic!("{other:?}"),
        }
        match s.put_stream(&h, body(b"abc"), 2).await {
            Err(BlobError::TooLarge { .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(s.put_stream(&h, body(b"abc"), 100).await.unwrap());
        assert!(!s.put_stream(&h, body(b"abc"), 100).await.unwrap());
        let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temp files left");
    }

    /// An HTTP source serving `store`'s blobs; after `fail_after` range requests every request
    /// fails with 503 (a holder that dies mid-transfer).
    async fn source(store: BlobStore, fail_after: usize) -> (String, Arc<AtomicU64>) {
        use axum::extract::{Path as P, State};
        let seen = Arc::new(AtomicU64::new(0));
        let app = axum::Router::new()
            .route(
                "/blobs/{hash}",
                axum::routing::get(
                    move |State((s, seen)): State<(BlobStore, Arc<AtomicU64>)>,
                          P(h): P<String>,
                          req: axum::extract::Request| async move {
                        if seen.fetch_add(1, Ordering::SeqCst) as usize >= fail_after {
                            return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
                        }
                        serve_blob(&s, &h, req).await
                    },
                ),
            )
            .with_state((store, seen.clone()));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        (url, seen)
    }
    use axum::response::IntoResponse;

    fn src(url: &str) -> Source {
        Source {
            url: url.into(),
            token: None,
            kind: "peer",
        }
    }

    #[tokio::test]
    async fn fetch_is_chunked_resumes_on_another_holder_and_verifies() {
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let blob: Vec<u8> = (0..(CHUNK_BYTES * 3 + 123))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let holder1 = store(a.path(), 64 << 20);
        let hash = holder1.put(&blob).unwrap();
        let holder2 = store(b.path(), 64 << 20);
        holder2.put(&blob).unwrap();
        // The first holder dies after two chunks; the second delivers the rest.
        let (u1, seen1) = source(holder1, 2).await;
        let (u2, seen2) = source(holder2, usize::MAX).await;
        let me = store(c.path(), 64 << 20);
        let p = me
            .fetch(&hash, &[src(&u1), src(&u2)], 64 << 20)
            .await
            .unwrap();
        assert_eq!(std::fs::read(p).unwrap(), blob);
        assert_eq!(
            seen1.load(Ordering::SeqCst),
            3,
            "two chunks and the failed third"
        );
        assert_eq!(
            seen2.load(Ordering::SeqCst),
            2,
            "the remaining two chunks only"
        );
        assert_eq!(
            me.stats().fetched_bytes,
            blob.len() as u64,
            "no byte fetched twice"
        );
        assert!(!c.path().join(format!("{hash}.part")).exists());
        // Held now: no request at all.
        me.fetch(&hash, &[src(&u1)], 64 << 20).await.unwrap();
        assert_eq!(seen1.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn fetch_resumes_a_part_left_by_a_restart() {
        let (a, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let blob: Vec<u8> = (0..(CHUNK_BYTES * 2 + 5)).map(|i| (i % 13) as u8).collect();
        let holder = store(a.path(), 64 << 20);
        let hash = holder.put(&blob).unwrap();
        let (u, _) = source(holder, usize::MAX).await;
        // A part from before a restart: the first chunk.
        std::fs::write(
            c.path().join(format!("{hash}.part")),
            &blob[..CHUNK_BYTES as usize],
        )
        .unwrap();
        let me = store(c.path(), 64 << 20);
        me.fetch(&hash, &[src(&u)], 64 << 20).await.unwrap();
        let st = me.stats();
        assert_eq!(
            (st.resumed, st.fetched_bytes),
            (1, blob.len() as u64 - CHUNK_BYTES)
        );
        assert_eq!(me.read(&hash).unwrap().unwrap(), blob);
    }

    #[tokio::test]
    async fn a_source_serving_other_bytes_is_refused_and_limits_hold() {
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let liar = store(a.path(), 1 << 20);
        let real = liar.put(b"the real bytes").unwrap();
        // The liar holds other bytes under the real name.
        std::fs::write(a.path().join(&real), b"something else!").unwrap();
        let (u, _) = source(liar, usize::MAX).await;
        let me = store(c.path(), 1 << 20);
        match me.fetch(&real, &[src(&u)], 1 << 20).await {
            Err(BlobError::Integrity { hash, reason }) => {
                assert_eq!(hash, real);
                assert!(
                    reason.contains(blake3::hash(b"something else!").to_hex().as_str()),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(!me.has(&real));
        assert!(
            std::fs::read_dir(c.path()).unwrap().next().is_none(),
            "nothing stored"
        );
        // Over the caller's limit: refused before the body is read.
        let big = store(b.path(), 1 << 20);
        let h = big.put(&[9u8; 5000]).unwrap();
        let (u, _) = source(big, usize::MAX).await;
        match me.fetch(&h, &[src(&u)], 4096).await {
            Err(BlobError::TooLarge {
                size: 5000,
                limit: 4096,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        // Nobody has it.
        match me
            .fetch(blake3::hash(b"x").to_hex().as_str(), &[src(&u)], 10)
            .await
        {
            Err(BlobError::Fetch { tried, .. }) => assert!(tried[0].contains("404"), "{tried:?}"),
            other => panic!("{other:?}"),
        }
    }
}

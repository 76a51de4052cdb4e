//! RocksDB-backed [`CheckpointStore`].
//!
//! Layout (column families):
//! - `checkpoints`: `session_id ‖ 0x00 ‖ epoch (u64 BE) ‖ seq (u64 BE)` → encoded envelope.
//!   Session ids never contain NUL, so `session_id ‖ 0x00` is an exact prefix and keys of one
//!   session sort by (epoch, seq).
//! - `fences`: `session_id` → `epoch (u64 BE) ‖ flag (u8) ‖ seq (u64 BE) ‖ n ‖ n × (epoch, seq)`: the newest epoch stored
//!   or fenced, when a checkpoint of that epoch exists its newest seq, and the retained keys.
//!
//! Every put is one `WriteBatch` (checkpoint + fence + pruning), written with `sync` when the store
//! was opened with [`RocksOptions::sync`], and serialised per session by a striped lock so that
//! fencing checks and writes cannot interleave.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, WriteOptions, DB};

use super::{check_fence, CheckpointInfo, CheckpointStore, StoreError, DEFAULT_RETAIN};
use crate::checkpoint::Checkpoint;
use crate::ids::{Epoch, Seq, SessionId};

const CF_CHECKPOINTS: &str = "checkpoints";
const CF_FENCES: &str = "fences";
const STRIPES: usize = 64;

/// One stored checkpoint as read from disk: its (epoch, seq), full key and raw value.
type RawEntry = ((Epoch, Seq), Vec<u8>, Vec<u8>);

/// Options of a [`RocksCheckpointStore`].
#[derive(Clone, Debug)]
pub struct RocksOptions {
    /// fsync every write before `put` returns (required for zero-loss sessions).
    pub sync: bool,
    /// Checkpoints kept per session (at least 2).
    pub retain: usize,
}

impl Default for RocksOptions {
    fn default() -> Self {
        RocksOptions {
            sync: true,
            retain: DEFAULT_RETAIN,
        }
    }
}

/// A durable [`CheckpointStore`] on RocksDB.
pub struct RocksCheckpointStore {
    db: DB,
    opts: RocksOptions,
    stripes: Vec<Mutex<()>>,
    corruptions: AtomicU64,
}

fn backend(e: rocksdb::Error) -> StoreError {
    StoreError::Backend(e.into_string())
}

fn prefix(session: &SessionId) -> Vec<u8> {
    let mut k = Vec::with_capacity(session.as_str().len() + 1);
    k.extend_from_slice(session.as_str().as_bytes());
    k.push(0);
    k
}

fn key(session: &SessionId, epoch: Epoch, seq: Seq) -> Vec<u8> {
    let mut k = prefix(session);
    k.extend_from_slice(&epoch.0.to_be_bytes());
    k.extend_from_slice(&seq.0.to_be_bytes());
    k
}

/// The per-session record in the `fences` column family: the fence (newest epoch stored or
/// fenced, and the newest seq in that epoch) plus the keys of the retained checkpoints, oldest
/// first. Keeping the keys here means puts and reads never iterate the checkpoint keyspace, whose
/// pruned entries leave tombstones that would make prefix scans slower with every write.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FenceRec {
    epoch: Epoch,
    seq: Option<Seq>,
    keys: Vec<(Epoch, Seq)>,
}

/// Most retained keys a fence record may list (bounds decoding).
const MAX_RETAINED: usize = 255;

fn encode_fence(r: &FenceRec) -> Vec<u8> {
    let mut v = Vec::with_capacity(18 + 16 * r.keys.len());
    v.extend_from_slice(&r.epoch.0.to_be_bytes());
    match r.seq {
        Some(s) => {
            v.push(1);
            v.extend_from_slice(&s.0.to_be_bytes());
        }
        None => {
            v.push(0);
            v.extend_from_slice(&[0; 8]);
        }
    }
    v.push(r.keys.len().min(MAX_RETAINED) as u8);
    for (e, s) in r.keys.iter().take(MAX_RETAINED) {
        v.extend_from_slice(&e.0.to_be_bytes());
        v.extend_from_slice(&s.0.to_be_bytes());
    }
    v
}

fn decode_fence(session: &SessionId, v: &[u8]) -> Result<FenceRec, StoreError> {
    let corrupt = || {
        StoreError::Backend(format!(
            "corrupt fence record for session {session} ({} bytes)",
            v.len()
        ))
    };
    if v.len() < 18 || v[8] > 1 {
        return Err(corrupt());
    }
    let n = v[17] as usize;
    if v.len() != 18 + 16 * n {
        return Err(corrupt());
    }
    let u = |b: &[u8]| {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        u64::from_be_bytes(a)
    };
    let keys = (0..n)
        .map(|i| {
            let o = 18 + 16 * i;
            (Epoch(u(&v[o..o + 8])), Seq(u(&v[o + 8..o + 16])))
        })
        .collect();
    Ok(FenceRec {
        epoch: Epoch(u(&v[..8])),
        seq: (v[8] == 1).then_some(Seq(u(&v[9..17]))),
        keys,
    })
}

impl RocksCheckpointStore {
    /// Opens (creating if needed) a store at `path`.
    pub fn open(path: impl AsRef<Path>, opts: RocksOptions) -> Result<Self, StoreError> {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        let cfs = [CF_CHECKPOINTS, CF_FENCES]
            .into_iter()
            .map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        let db = DB::open_cf_descriptors(&db_opts, path, cfs).map_err(backend)?;
        Ok(RocksCheckpointStore {
            db,
            opts: RocksOptions {
                retain: opts.retain.max(2),
                ..opts
            },
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            corruptions: AtomicU64::new(0),
        })
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| StoreError::Backend(format!("column family {name} missing")))
    }

    fn stripe(&self, session: &SessionId) -> std::sync::MutexGuard<'_, ()> {
        let h = blake3::hash(session.as_str().as_bytes());
        let i = h.as_bytes()[0] as usize % STRIPES;
        self.stripes[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write_opts(&self) -> WriteOptions {
        let mut w = WriteOptions::default();
        w.set_sync(self.opts.sync);
        w
    }

    fn read_fence(&self, session: &SessionId) -> Result<Option<FenceRec>, StoreError> {
        let cf = self.cf(CF_FENCES)?;
        match self
            .db
            .get_cf(cf, session.as_str().as_bytes())
            .map_err(backend)?
        {
            Some(v) => decode_fence(session, &v).map(Some),
            None => Ok(None),
        }
    }

    /// Keys and raw values of a session's retained checkpoints, oldest first (point lookups of
    /// the keys listed in its fence record).
    fn raw_entries(&self, session: &SessionId) -> Result<Vec<RawEntry>, StoreError> {
        let Some(rec) = self.read_fence(session)? else {
            return Ok(Vec::new());
        };
        let cf = self.cf(CF_CHECKPOINTS)?;
        let keys: Vec<Vec<u8>> = rec.keys.iter().map(|(e, q)| key(session, *e, *q)).collect();
        let values = self
            .db
            .multi_get_cf(keys.iter().map(|k| (cf, k.as_slice())));
        let mut out = Vec::with_capacity(keys.len());
        for ((es, k), v) in rec.keys.iter().zip(keys).zip(values) {
            match v.map_err(backend)? {
                Some(v) => out.push((*es, k, v)),
                None => {
                    self.corruptions.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(session = %session, epoch = %es.0, seq = %es.1, "retained checkpoint missing on disk");
                }
            }
        }
        Ok(out)
    }

    /// Test and chaos hook: overwrite the stored bytes of one checkpoint without any checks
    /// (simulates bit rot on disk).
    pub fn tamper_raw(
        &self,
        session: &SessionId,
        epoch: Epoch,
        seq: Seq,
        f: impl FnOnce(&mut Vec<u8>),
    ) -> Result<bool, StoreError> {
        let cf = self.cf(CF_CHECKPOINTS)?;
        let k = key(session, epoch, seq);
        let Some(mut v) = self.db.get_cf(cf, &k).map_err(backend)? else {
            return Ok(false);
        };
        f(&mut v);
        self.db.put_cf(cf, &k, v).map_err(backend)?;
        Ok(true)
    }
}

impl CheckpointStore for RocksCheckpointStore {
    fn put(&self, cp: &Checkpoint) -> Result<(), StoreError> {
        cp.verify().map_err(|source| StoreError::Corrupt {
            session: cp.session_id.clone(),
            source,
        })?;
        let bytes = cp.encode();
        let _g = self.stripe(&cp.session_id);
        let rec = self.read_fence(&cp.session_id)?;
        check_fence(cp, rec.as_ref().map(|r| (r.epoch, r.seq)))?;
        let cf_cp = self.cf(CF_CHECKPOINTS)?;
        let cf_f = self.cf(CF_FENCES)?;
        let k = key(&cp.session_id, cp.epoch, cp.seq);
        if let Some(existing) = self.db.get_cf(cf_cp, &k).map_err(backend)? {
            if existing == bytes {
                return Ok(());
            }
            if !super::journal_update(&existing, cp) {
                return Err(StoreError::Conflict {
                    session: cp.session_id.clone(),
                    epoch: cp.epoch,
                    seq: cp.seq,
                });
            }
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(cf_cp, &k, &bytes);
        let mut keys = rec.map(|r| r.keys).unwrap_or_default();
        if !keys.contains(&(cp.epoch, cp.seq)) {
            keys.push((cp.epoch, cp.seq));
            keys.sort();
        }
        while keys.len() > self.opts.retain {
            let (e, q) = keys.remove(0);
            batch.delete_cf(cf_cp, key(&cp.session_id, e, q));
        }
        let rec = FenceRec {
            epoch: cp.epoch,
            seq: Some(cp.seq),
            keys,
        };
        batch.put_cf(cf_f, cp.session_id.as_str().as_bytes(), encode_fence(&rec));
        self.db
            .write_opt(batch, &self.write_opts())
            .map_err(backend)
    }

    fn get_latest(&self, session: &SessionId) -> Result<Option<Checkpoint>, StoreError> {
        for (_, _, v) in self.raw_entries(session)?.into_iter().rev() {
            match Checkpoint::decode(&v) {
                Ok(cp) if &cp.session_id == session => return Ok(Some(cp)),
                Ok(cp) => {
                    self.corruptions.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(session = %session, found = %cp.session_id, "checkpoint stored under the wrong session; skipping");
                }
                Err(err) => {
                    self.corruptions.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(session = %session, error = %err, "skipping corrupt checkpoint");
                }
            }
        }
        Ok(None)
    }

    fn get(&self, session: &SessionId, epoch: Epoch, seq: Seq) -> Result<Checkpoint, StoreError> {
        let cf = self.cf(CF_CHECKPOINTS)?;
        let v = self
            .db
            .get_cf(cf, key(session, epoch, seq))
            .map_err(backend)?
            .ok_or_else(|| StoreError::NotFound {
                session: session.clone(),
                epoch,
                seq,
            })?;
        Checkpoint::decode(&v).map_err(|source| {
            self.corruptions.fetch_add(1, Ordering::Relaxed);
            StoreError::Corrupt {
                session: session.clone(),
                source,
            }
        })
    }

    fn list(&self, session: &SessionId) -> Result<Vec<CheckpointInfo>, StoreError> {
        Ok(self
            .raw_entries(session)?
            .into_iter()
            .map(|((epoch, seq), _, v)| CheckpointInfo {
                epoch,
                seq,
                bytes: v.len(),
                corrupt: Checkpoint::decode(&v).err(),
            })
            .collect())
    }

    fn delete(&self, session: &SessionId) -> Result<(), StoreError> {
        let _g = self.stripe(session);
        let cf = self.cf(CF_CHECKPOINTS)?;
        let mut batch = WriteBatch::default();
        for (_, k, _) in self.raw_entries(session)? {
            batch.delete_cf(cf, k);
        }
        // Keep the fence epoch but forget the seq: a later write in the same epoch may start anew.
        if let Some(r) = self.read_fence(session)? {
            let rec = FenceRec {
                epoch: r.epoch,
                seq: None,
                keys: Vec::new(),
            };
            batch.put_cf(
                self.cf(CF_FENCES)?,
                session.as_str().as_bytes(),
                encode_fence(&rec),
            );
        }
        self.db
            .write_opt(batch, &self.write_opts())
            .map_err(backend)
    }

    fn fence(&self, session: &SessionId, epoch: Epoch) -> Result<(), StoreError> {
        let _g = self.stripe(session);
        match self.read_fence(session)? {
            Some(r) if r.epoch >= epoch => Ok(()),
            r => {
                let rec = FenceRec {
                    epoch,
                    seq: None,
                    keys: r.map(|r| r.keys).unwrap_or_default(),
                };
                let mut batch = WriteBatch::default();
                batch.put_cf(
                    self.cf(CF_FENCES)?,
                    session.as_str().as_bytes(),
                    encode_fence(&rec),
                );
                self.db
                    .write_opt(batch, &self.write_opts())
                    .map_err(backend)
            }
        }
    }

    fn current_epoch(&self, session: &SessionId) -> Result<Option<Epoch>, StoreError> {
        Ok(self.read_fence(session)?.map(|r| r.epoch))
    }

    fn sessions(&self) -> Result<Vec<SessionId>, StoreError> {
        // Fence records are never deleted, so this scan sees no tombstones.
        let cf = self.cf(CF_FENCES)?;
        let mut out: Vec<SessionId> = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item.map_err(backend)?;
            let Ok(s) = std::str::from_utf8(&k) else {
                continue;
            };
            let Ok(id) = SessionId::new(s) else { continue };
            if decode_fence(&id, &v).is_ok_and(|r| !r.keys.is_empty()) {
                out.push(id);
            }
        }
        Ok(out)
    }

    fn corruptions_detected(&self) -> u64 {
        self.corruptions.load(Ordering::Relaxed)
    }
    fn syncs_writes(&self) -> bool {
        self.opts.sync
    }
}

//! RocksDB-backed [`CheckpointStore`].
//!
//! Layout (column families):
//! - `checkpoints`: `session_id ‖ 0x00 ‖ epoch (u64 BE) ‖ seq (u64 BE)` → encoded envelope.
//!   Session ids never contain NUL, so `session_id ‖ 0x00` is an exact prefix and keys of one
//!   session sort by (epoch, seq).
//! - `fences`: `session_id` → `epoch (u64 BE) ‖ flag (u8) ‖ seq (u64 BE)`: the newest epoch stored
//!   or fenced and, when a checkpoint of that epoch exists, its newest seq.
//!
//! Every put is one `WriteBatch` (checkpoint + fence + pruning), written with `sync` when the store
//! was opened with [`RocksOptions::sync`], and serialised per session by a striped lock so that
//! fencing checks and writes cannot interleave.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};

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

fn parse_key_suffix(suffix: &[u8]) -> Option<(Epoch, Seq)> {
    if suffix.len() != 16 {
        return None;
    }
    let e = u64::from_be_bytes(suffix[..8].try_into().ok()?);
    let s = u64::from_be_bytes(suffix[8..].try_into().ok()?);
    Some((Epoch(e), Seq(s)))
}

fn encode_fence(epoch: Epoch, seq: Option<Seq>) -> [u8; 17] {
    let mut v = [0u8; 17];
    v[..8].copy_from_slice(&epoch.0.to_be_bytes());
    if let Some(s) = seq {
        v[8] = 1;
        v[9..].copy_from_slice(&s.0.to_be_bytes());
    }
    v
}

fn decode_fence(session: &SessionId, v: &[u8]) -> Result<(Epoch, Option<Seq>), StoreError> {
    if v.len() != 17 || v[8] > 1 {
        return Err(StoreError::Backend(format!(
            "corrupt fence record for session {session} ({} bytes)",
            v.len()
        )));
    }
    let mut e = [0u8; 8];
    e.copy_from_slice(&v[..8]);
    let mut s = [0u8; 8];
    s.copy_from_slice(&v[9..]);
    Ok((
        Epoch(u64::from_be_bytes(e)),
        (v[8] == 1).then_some(Seq(u64::from_be_bytes(s))),
    ))
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

    fn read_fence(&self, session: &SessionId) -> Result<Option<(Epoch, Option<Seq>)>, StoreError> {
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

    /// Keys and raw values of a session's checkpoints, oldest first.
    fn raw_entries(&self, session: &SessionId) -> Result<Vec<RawEntry>, StoreError> {
        let cf = self.cf(CF_CHECKPOINTS)?;
        let p = prefix(session);
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&p, Direction::Forward))
        {
            let (k, v) = item.map_err(backend)?;
            if !k.starts_with(&p) {
                break;
            }
            match parse_key_suffix(&k[p.len()..]) {
                Some(es) => out.push((es, k.to_vec(), v.to_vec())),
                None => {
                    self.corruptions.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(session = %session, "skipping checkpoint with malformed key");
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
        check_fence(cp, self.read_fence(&cp.session_id)?)?;
        let cf_cp = self.cf(CF_CHECKPOINTS)?;
        let cf_f = self.cf(CF_FENCES)?;
        let k = key(&cp.session_id, cp.epoch, cp.seq);
        if let Some(existing) = self.db.get_cf(cf_cp, &k).map_err(backend)? {
            if existing == bytes {
                return Ok(());
            }
            if Checkpoint::decode(&existing).is_ok() {
                return Err(StoreError::Conflict {
                    session: cp.session_id.clone(),
                    epoch: cp.epoch,
                    seq: cp.seq,
                });
            }
        }
        let mut batch = WriteBatch::default();
        batch.put_cf(cf_cp, &k, &bytes);
        batch.put_cf(
            cf_f,
            cp.session_id.as_str().as_bytes(),
            encode_fence(cp.epoch, Some(cp.seq)),
        );
        let entries = self.raw_entries(&cp.session_id)?;
        let total = entries.len()
            + usize::from(!entries.iter().any(|(es, _, _)| *es == (cp.epoch, cp.seq)));
        for (_, old_key, _) in entries.iter().take(total.saturating_sub(self.opts.retain)) {
            batch.delete_cf(cf_cp, old_key);
        }
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
        if let Some((e, _)) = self.read_fence(session)? {
            batch.put_cf(
                self.cf(CF_FENCES)?,
                session.as_str().as_bytes(),
                encode_fence(e, None),
            );
        }
        self.db
            .write_opt(batch, &self.write_opts())
            .map_err(backend)
    }

    fn fence(&self, session: &SessionId, epoch: Epoch) -> Result<(), StoreError> {
        let _g = self.stripe(session);
        match self.read_fence(session)? {
            Some((cur, _)) if cur >= epoch => Ok(()),
            _ => {
                let mut batch = WriteBatch::default();
                batch.put_cf(
                    self.cf(CF_FENCES)?,
                    session.as_str().as_bytes(),
                    encode_fence(epoch, None),
                );
                self.db
                    .write_opt(batch, &self.write_opts())
                    .map_err(backend)
            }
        }
    }

    fn current_epoch(&self, session: &SessionId) -> Result<Option<Epoch>, StoreError> {
        Ok(self.read_fence(session)?.map(|(e, _)| e))
    }

    fn sessions(&self) -> Result<Vec<SessionId>, StoreError> {
        let cf = self.cf(CF_CHECKPOINTS)?;
        let mut out: Vec<SessionId> = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, _) = item.map_err(backend)?;
            let Some(nul) = k.iter().position(|&b| b == 0) else {
                continue;
            };
            let Ok(s) = std::str::from_utf8(&k[..nul]) else {
                continue;
            };
            if out.last().map(|l| l.as_str()) != Some(s) {
                if let Ok(id) = SessionId::new(s) {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }

    fn corruptions_detected(&self) -> u64 {
        self.corruptions.load(Ordering::Relaxed)
    }
}

//! RocksDB-backed Raft storage: the log store ([`LogStore`], openraft `RaftLogStorage`) and the
//! state-machine store ([`StateMachineStore`], openraft `RaftStateMachine`) with persistent
//! snapshots.
//!
//! Layout of one replica's RocksDB (one database per data dir, three column families):
//! - `log`: key = log index as 8 big-endian bytes, value = bincode [`Entry`].
//! - `meta`: `vote`, `last_purged`, `committed` (bincode values).
//! - `snapshot`: `current` = bincode `(SnapshotMeta, application snapshot bytes)`.
//!
//! Durability: every append, vote, truncate and purge is a synced (fsync) write batch. The state
//! machine is *persistent-snapshot* style (openraft docs, `RaftStateMachine::apply`): `apply` keeps
//! the application in memory, a built or installed snapshot is persisted, and on restart the
//! application is restored from the last snapshot; openraft then re-applies the committed log
//! entries after it (the committed log id is saved, so a lone restarted replica re-applies them
//! before it hears from a leader).

// openraft's trait methods return its `StorageError` (224 bytes) by value; helpers follow suit.
#![allow(clippy::result_large_err)]
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, StorageIOError,
};
use rocksdb::{ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::application::Application;
use crate::types::{
    Entry, LogId, Response, SnapshotMeta, StorageError, StoredMembership, TypeConfig, Vote,
};
use opengrid_codec::{self as codec, MAX_DECODE_BYTES};

const CF_LOG: &str = "log";
const CF_META: &str = "meta";
const CF_SNAPSHOT: &str = "snapshot";
const KEY_VOTE: &[u8] = b"vote";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_SNAPSHOT: &[u8] = b"current";

/// Open (or create) the replica database under `dir`.
pub fn open_db(dir: &Path) -> Result<Arc<DB>, rocksdb::Error> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let cfs = [CF_LOG, CF_META, CF_SNAPSHOT]
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    Ok(Arc::new(DB::open_cf_descriptors(&opts, dir, cfs)?))
}

fn sync_opts() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_index(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// A column family created at open; a missing one (foreign or damaged database) is a storage
/// error, not a panic.
fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a rocksdb::ColumnFamily, StorageError> {
    db.cf_handle(name).ok_or_else(|| {
        io_err(
            ErrorSubject::Store,
            ErrorVerb::Read,
            std::io::Error::other(format!("column family `{name}` missing from the database")),
        )
    })
}

fn io_err(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

fn get_meta<T: DeserializeOwned>(db: &DB, key: &[u8]) -> Result<Option<T>, StorageError> {
    let cf = cf(db, CF_META)?;
    let bytes = db
        .get_cf(&cf, key)
        .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))?;
    match bytes {
        None => Ok(None),
        Some(b) => codec::decode(&b, MAX_DECODE_BYTES)
            .map(Some)
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e)),
    }
}

fn put_meta<T: Serialize>(db: &DB, key: &[u8], value: &T) -> Result<(), StorageError> {
    let cf = cf(db, CF_META)?;
    let bytes =
        codec::encode(value).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
    db.put_cf_opt(&cf, key, bytes, &sync_opts())
        .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))
}

/// The Raft log and vote, stored in RocksDB. Cloning shares the database (the clone is the
/// log reader handed to replication tasks).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
}

impl LogStore {
    /// A log store over an opened replica database.
    pub fn new(db: Arc<DB>) -> Self {
        Self { db }
    }

    fn last_entry(&self) -> Result<Option<Entry>, StorageError> {
        let cf = cf(&self.db, CF_LOG)?;
        let mut it = self.db.iterator_cf(&cf, rocksdb::IteratorMode::End);
        match it.next() {
            None => Ok(None),
            Some(Err(e)) => Err(io_err(ErrorSubject::Logs, ErrorVerb::Read, e)),
            Some(Ok((_, v))) => codec::decode(&v, MAX_DECODE_BYTES)
                .map(Some)
                .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e)),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let cf = cf(&self.db, CF_LOG)?;
        let mode = rocksdb::IteratorMode::From(&index_key(start), rocksdb::Direction::Forward);
        let mut out = Vec::new();
        for item in self.db.iterator_cf(&cf, mode) {
            let (k, v) = item.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            let Some(index) = key_index(&k) else {
                return Err(
                    StorageIOError::read_logs(AnyError::error("log key is not 8 bytes")).into(),
                );
            };
            if !range.contains(&index) {
                break;
            }
            let entry: Entry = codec::decode(&v, MAX_DECODE_BYTES)
                .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            out.push(entry);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = get_meta(&self.db, KEY_LAST_PURGED)?;
        let last_log_id = match self.last_entry()? {
            Some(e) => Some(e.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        put_meta(&self.db, KEY_VOTE, vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        get_meta(&self.db, KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        put_meta(&self.db, KEY_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(get_meta::<Option<LogId>>(&self.db, KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = cf(&self.db, CF_LOG)?;
        let mut batch = WriteBatch::default();
        for entry in entries {
            let bytes = codec::encode(&entry)
                .map_err(|e| io_err(ErrorSubject::Log(entry.log_id), ErrorVerb::Write, e))?;
            batch.put_cf(&cf, index_key(entry.log_id.index), bytes);
        }
        // The write is synced before the callback: entries are readable on return and durable
        // when the callback fires (both at once here).
        let res = self.db.write_opt(batch, &sync_opts());
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(io_err(ErrorSubject::Logs, ErrorVerb::Write, e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "truncate log since");
        let cf = cf(&self.db, CF_LOG)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(&cf, index_key(log_id.index), index_key(u64::MAX));
        batch.delete_cf(&cf, index_key(u64::MAX));
        self.db
            .write_opt(batch, &sync_opts())
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(%log_id, "purge log up to");
        // Record the purge point first: a crash between the two writes leaves extra entries,
        // never a hole.
        put_meta(&self.db, KEY_LAST_PURGED, &log_id)?;
        let cf = cf(&self.db, CF_LOG)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(&cf, index_key(0), index_key(log_id.index.saturating_add(1)));
        if log_id.index == u64::MAX {
            batch.delete_cf(&cf, index_key(u64::MAX));
        }
        self.db
            .write_opt(batch, &sync_opts())
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

/// In-memory state of the state machine; guarded by one lock.
struct SmState<A> {
    app: A,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
}

struct SmShared<A> {
    db: Arc<DB>,
    state: RwLock<SmState<A>>,
    snapshot_seq: AtomicU64,
}

/// The Raft state machine: an [`Application`] plus the last applied log id and membership, with
/// snapshots persisted in RocksDB. Cloning shares the same state (a clone is the snapshot
/// builder, and the [`crate::RaftNode`] keeps one for reads).
pub struct StateMachineStore<A> {
    shared: Arc<SmShared<A>>,
}

impl<A> Clone for StateMachineStore<A> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

type StoredSnapshot = (SnapshotMeta, Vec<u8>);

impl<A: Application> StateMachineStore<A> {
    /// A state machine over an opened replica database. When the database holds a snapshot, the
    /// application is restored from it.
    pub fn open(db: Arc<DB>, mut app: A) -> Result<Self, StorageError> {
        let stored = read_snapshot(&db)?;
        let (last_applied, last_membership) = match stored {
            Some((meta, data)) => {
                app.restore(&data).map_err(|e| {
                    StorageError::from(StorageIOError::read_snapshot(
                        Some(meta.signature()),
                        AnyError::new(&e),
                    ))
                })?;
                (meta.last_log_id, meta.last_membership)
            }
            None => (None, StoredMembership::default()),
        };
        Ok(Self {
            shared: Arc::new(SmShared {
                db,
                state: RwLock::new(SmState {
                    app,
                    last_applied,
                    last_membership,
                }),
                snapshot_seq: AtomicU64::new(0),
            }),
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, SmState<A>> {
        self.shared.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, SmState<A>> {
        self.shared.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Answer a query from this replica's current (possibly stale) state.
    pub fn query(&self, query: &[u8]) -> Vec<u8> {
        self.read().app.query(query)
    }

    /// This replica's application state hash and last applied log id, read atomically.
    pub fn state_hash(&self) -> ([u8; 32], Option<LogId>) {
        let s = self.read();
        (s.app.state_hash(), s.last_applied)
    }

    /// The last applied log id.
    pub fn last_applied(&self) -> Option<LogId> {
        self.read().last_applied
    }

    fn apply_entries(&self, entries: Vec<Entry>) -> Vec<Response> {
        let mut st = self.write();
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            st.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => out.push(Response::default()),
                EntryPayload::Normal(cmd) => out.push(Response(st.app.apply(&cmd.0))),
                EntryPayload::Membership(m) => {
                    st.last_membership = StoredMembership::new(Some(entry.log_id), m);
                    out.push(Response::default());
                }
            }
        }
        out
    }
}

fn read_snapshot(db: &DB) -> Result<Option<StoredSnapshot>, StorageError> {
    let cf = cf(db, CF_SNAPSHOT)?;
    let bytes = db
        .get_cf(&cf, KEY_SNAPSHOT)
        .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
    match bytes {
        None => Ok(None),
        Some(b) => codec::decode(&b, MAX_DECODE_BYTES)
            .map(Some)
            .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e)),
    }
}

fn write_snapshot(db: &DB, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
    let cf = cf(db, CF_SNAPSHOT)?;
    let bytes = codec::encode(&(meta, data)).map_err(|e| {
        io_err(
            ErrorSubject::Snapshot(Some(meta.signature())),
            ErrorVerb::Write,
            e,
        )
    })?;
    db.put_cf_opt(&cf, KEY_SNAPSHOT, bytes, &sync_opts())
        .map_err(|e| {
            io_err(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
                e,
            )
        })
}

/// Run CPU-heavy application work without starving other tasks of a multi-thread runtime.
fn heavy<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

impl<A: Application> RaftSnapshotBuilder<TypeConfig> for StateMachineStore<A> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (data, last_applied, last_membership) = heavy(|| {
            let st = self.read();
            (
                st.app.snapshot(),
                st.last_applied,
                st.last_membership.clone(),
            )
        });
        let seq = self.shared.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, seq),
            None => format!("none-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership,
            snapshot_id,
        };
        write_snapshot(&self.shared.db, &meta, &data)?;
        tracing::info!(snapshot = %meta, bytes = data.len(), "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl<A: Application> RaftStateMachine<TypeConfig> for StateMachineStore<A> {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let st = self.read();
        Ok((st.last_applied, st.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        Ok(heavy(|| self.apply_entries(entries)))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        heavy(|| {
            let mut st = self.write();
            st.app.restore(&data).map_err(|e| {
                StorageError::from(StorageIOError::read_snapshot(
                    Some(meta.signature()),
                    AnyError::new(&e),
                ))
            })?;
            st.last_applied = meta.last_log_id;
            st.last_membership = meta.last_membership.clone();
            Ok::<(), StorageError>(())
        })?;
        write_snapshot(&self.shared.db, meta, &data)?;
        tracing::info!(snapshot = %meta, bytes = data.len(), "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(
            read_snapshot(&self.shared.db)?.map(|(meta, data)| Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::application::KvApplication;

    struct RocksBuilder;

    impl
        openraft::testing::StoreBuilder<
            TypeConfig,
            LogStore,
            StateMachineStore<KvApplication>,
            tempfile::TempDir,
        > for RocksBuilder
    {
        async fn build(
            &self,
        ) -> Result<
            (
                tempfile::TempDir,
                LogStore,
                StateMachineStore<KvApplication>,
            ),
            StorageError,
        > {
            let dir = tempfile::tempdir()
                .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
            let db = open_db(dir.path())
                .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
            let sm = StateMachineStore::open(db.clone(), KvApplication::default())?;
            Ok((dir, LogStore::new(db), sm))
        }
    }

    /// openraft's storage conformance suite against the RocksDB log + state machine.
    #[test]
    fn openraft_storage_suite() -> Result<(), StorageError> {
        openraft::testing::Suite::test_all(RocksBuilder)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn state_machine_restores_from_persisted_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        let mut sm = StateMachineStore::open(db.clone(), KvApplication::default()).unwrap();
        let entry = Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 0), 1),
            payload: EntryPayload::Normal(crate::types::Command(KvApplication::set_command(
                b"a", b"1",
            ))),
        };
        sm.apply(vec![entry]).await.unwrap();
        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let (hash, _) = sm.state_hash();
        drop(sm);
        let sm2 = StateMachineStore::open(db, KvApplication::default()).unwrap();
        assert_eq!(sm2.state_hash(), (hash, snap.meta.last_log_id));
        assert_eq!(
            KvApplication::decode_answer(&sm2.query(b"a")),
            Some(b"1".to_vec())
        );
    }

    #[test]
    fn corrupt_log_entry_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        let cf = db.cf_handle(CF_LOG).unwrap();
        db.put_cf(&cf, index_key(3), b"\xff\xff\xff garbage")
            .unwrap();
        let mut store = LogStore::new(db);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(rt.block_on(store.get_log_state()).is_err());
        assert!(rt.block_on(store.try_get_log_entries(0..10)).is_err());
    }
}

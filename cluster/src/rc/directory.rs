//! The RC's session directory and its durable copy (ADR 0037, phase a): every change to an entry,
//! and every member that joins, is written to a RocksDB database in the RC's data dir
//! (`<data_dir>/directory`) at the RC's next tick (a quarter of a heartbeat period), so an RC that
//! restarts — after kill -9 too: RocksDB's write-ahead log survives the process — finds the
//! sessions and the members it placed them on. A member that does not come back is declared dead
//! by the failure detector as usual and its sessions are restored from their replicas by the
//! failover loop; a member that does rejoins and reconciles with its holding report.
//!
//! Changes not yet written when the RC dies (at most one tick's) are repaired by the nodes'
//! holding reports after they rejoin: a live session the directory lost is adopted. This is the
//! RC's own memory across its restart; the replicated state machine of the RC group replaces it.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use opengrid_session::{Epoch, Manifest, SessionId};
use serde::{Deserialize, Serialize};

use crate::common::identity::NodeId;
use crate::common::spec::NodeSpec;
use crate::rc::{DirEntry, DirState};

/// The directory: entries by session, with the sessions and members changed since the last
/// [`take_changes`](Directory::take_changes).
#[derive(Default)]
pub struct Directory {
    map: HashMap<SessionId, DirEntry>,
    dirty: HashSet<SessionId>,
    joined: Vec<NodeSpec>,
}

impl Directory {
    /// The entry of `sid`.
    pub fn get(&self, sid: &SessionId) -> Option<&DirEntry> {
        self.map.get(sid)
    }

    /// The entry of `sid`, to change (noted for the durable copy).
    pub fn get_mut(&mut self, sid: &SessionId) -> Option<&mut DirEntry> {
        let e = self.map.get_mut(sid)?;
        self.dirty.insert(sid.clone());
        Some(e)
    }

    /// Adds or replaces an entry.
    pub fn insert(&mut self, sid: SessionId, e: DirEntry) -> Option<DirEntry> {
        self.dirty.insert(sid.clone());
        self.map.insert(sid, e)
    }

    /// Removes an entry.
    pub fn remove(&mut self, sid: &SessionId) -> Option<DirEntry> {
        let e = self.map.remove(sid)?;
        self.dirty.insert(sid.clone());
        Some(e)
    }

    /// Entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every entry.
    pub fn values(&self) -> impl Iterator<Item = &DirEntry> {
        self.map.values()
    }

    /// Changes with `f` the entries `pred` selects (only those are noted for the durable copy,
    /// so orphaning one node's sessions rewrites those, not the whole directory).
    pub fn update_where(
        &mut self,
        mut pred: impl FnMut(&DirEntry) -> bool,
        mut f: impl FnMut(&mut DirEntry),
    ) {
        for (sid, e) in self.map.iter_mut() {
            if pred(e) {
                self.dirty.insert(sid.clone());
                f(e);
            }
        }
    }

    /// A member joined (its spec is kept with the directory).
    pub fn member_joined(&mut self, spec: NodeSpec) {
        self.joined.push(spec);
    }

    /// What changed since the last call: entries to write (`None`: deleted) and members joined.
    pub fn take_changes(&mut self) -> (Vec<(SessionId, Option<Stored>)>, Vec<NodeSpec>) {
        let dirty = std::mem::take(&mut self.dirty);
        let entries = dirty
            .into_iter()
            .map(|sid| {
                let v = self.map.get(&sid).map(Stored::of);
                (sid, v)
            })
            .collect();
        (entries, std::mem::take(&mut self.joined))
    }

    /// Loads entries read back from the durable copy (not noted as changed).
    pub fn load(&mut self, entries: impl IntoIterator<Item = DirEntry>) {
        for e in entries {
            self.map.insert(e.session_id.clone(), e);
        }
    }
}

/// A directory entry as written (JSON: the manifest is part of it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    session_id: SessionId,
    node: String,
    node_name: String,
    address: String,
    epoch: u64,
    handler: String,
    memory: u64,
    state: StoredState,
    replicas: Vec<String>,
    owner: Option<String>,
    manifest: Option<Manifest>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum StoredState {
    Starting,
    Active,
    Orphaned,
}

impl Stored {
    fn of(e: &DirEntry) -> Stored {
        Stored {
            session_id: e.session_id.clone(),
            node: e.node.did(),
            node_name: e.node_name.clone(),
            address: e.address.clone(),
            epoch: e.epoch.0,
            handler: e.handler.clone(),
            memory: e.memory,
            state: match e.state {
                DirState::Starting => StoredState::Starting,
                DirState::Active => StoredState::Active,
                DirState::Orphaned => StoredState::Orphaned,
            },
            replicas: e.replicas.iter().map(NodeId::did).collect(),
            owner: e.owner.clone(),
            manifest: e.manifest.as_deref().cloned(),
        }
    }

    fn entry(self) -> Result<DirEntry, String> {
        let node = NodeId::parse(&self.node).map_err(|e| format!("node {}: {e}", self.node))?;
        let replicas = self
            .replicas
            .iter()
            .map(|d| NodeId::parse(d).map_err(|e| format!("replica {d}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DirEntry {
            session_id: self.session_id,
            node,
            node_name: self.node_name,
            address: self.address,
            epoch: Epoch(self.epoch),
            handler: self.handler,
            memory: self.memory,
            // A session still starting when the RC died is settled by its node's holding
            // report (adopted) or, if the node does not come back, failed over like the rest.
            state: match self.state {
                StoredState::Orphaned => DirState::Orphaned,
                StoredState::Starting | StoredState::Active => DirState::Active,
            },
            replicas,
            waiting: None,
            owner: self.owner,
            manifest: self.manifest.map(Arc::new),
        })
    }
}

/// Why the durable directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryStoreError {
    /// RocksDB.
    #[error("directory store {path}: {source}")]
    Db {
        /// The database.
        path: String,
        /// Why.
        source: rocksdb::Error,
    },
}

/// Key prefix of a directory entry.
pub const ENTRY: &[u8] = b"s/";
/// Key prefix of a member.
pub const MEMBER: &[u8] = b"m/";

/// The durable copy: `s/<session>` → [`Stored`] JSON, `m/<did>` → the member's [`NodeSpec`] JSON.
pub struct DirectoryStore {
    db: rocksdb::DB,
    path: String,
}

fn key(prefix: &[u8], id: &str) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

impl DirectoryStore {
    /// Opens (or creates) the store under `data_dir/directory`.
    pub fn open(data_dir: &Path) -> Result<DirectoryStore, DirectoryStoreError> {
        let path = data_dir.join("directory");
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        let db = rocksdb::DB::open(&opts, &path).map_err(|source| DirectoryStoreError::Db {
            path: path.display().to_string(),
            source,
        })?;
        Ok(DirectoryStore {
            db,
            path: path.display().to_string(),
        })
    }

    /// Everything stored: the entries and the members. Records that do not read are skipped
    /// with a warning (the nodes' holding reports repair what they described).
    pub fn load(&self) -> (Vec<DirEntry>, Vec<NodeSpec>) {
        parse_records(
            self.db
                .iterator(rocksdb::IteratorMode::Start)
                .filter_map(Result::ok)
                .map(|(k, v)| (k.to_vec(), v.to_vec())),
        )
    }

    /// Writes a batch of changes (not synced: the write-ahead log survives a killed process).
    pub fn write(
        &self,
        entries: &[(SessionId, Option<Stored>)],
        members: &[NodeSpec],
    ) -> Result<(), DirectoryStoreError> {
        let mut b = rocksdb::WriteBatch::default();
        for (k, v) in change_records(entries, members) {
            match v {
                Some(bytes) => b.put(k, bytes),
                None => b.delete(k),
            }
        }
        self.db.write(b).map_err(|source| DirectoryStoreError::Db {
            path: self.path.clone(),
            source,
        })
    }
}

/// The records of a set of changes: `s/<session>` → its entry (or a delete), `m/<node DID>` → a
/// member's spec. The same records serve the local store and the RC group's state machine.
pub fn change_records(
    entries: &[(SessionId, Option<Stored>)],
    members: &[NodeSpec],
) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let mut out = Vec::with_capacity(entries.len() + members.len());
    for (sid, v) in entries {
        out.push((
            key(ENTRY, sid.as_str()),
            v.as_ref().and_then(|s| serde_json::to_vec(s).ok()),
        ));
    }
    for m in members {
        if let Ok(bytes) = serde_json::to_vec(m) {
            out.push((key(MEMBER, &m.id.did()), Some(bytes)));
        }
    }
    out
}

/// Reads directory entries and members back from their records; an unreadable record is skipped
/// (and logged), never fatal.
pub fn parse_records(
    records: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
) -> (Vec<DirEntry>, Vec<NodeSpec>) {
    let (mut entries, mut members) = (Vec::new(), Vec::new());
    for (k, v) in records {
        if k.starts_with(ENTRY) {
            match serde_json::from_slice::<Stored>(&v)
                .map_err(|e| e.to_string())
                .and_then(Stored::entry)
            {
                Ok(e) => entries.push(e),
                Err(e) => {
                    tracing::warn!(key = %String::from_utf8_lossy(&k), error = %e, "unreadable directory entry skipped")
                }
            }
        } else if k.starts_with(MEMBER) {
            match serde_json::from_slice::<NodeSpec>(&v) {
                Ok(s) => members.push(s),
                Err(e) => {
                    tracing::warn!(key = %String::from_utf8_lossy(&k), error = %e, "unreadable member skipped")
                }
            }
        }
    }
    (entries, members)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::identity::Identity;

    fn entry(sid: &SessionId, node: NodeId, epoch: u64) -> DirEntry {
        DirEntry {
            session_id: sid.clone(),
            node,
            node_name: "n1".into(),
            address: "http://127.0.0.1:1".into(),
            epoch: Epoch(epoch),
            handler: "counter".into(),
            memory: 64 << 20,
            state: DirState::Active,
            replicas: vec![Identity::generate().id()],
            waiting: None,
            owner: Some("127.0.0.1".into()),
            manifest: Some(Arc::new(
                Manifest::from_json_str(
                    r#"{"version":1,"session":{"handler":"counter","continuity":"interactive"},"placement":{"jurisdictions":["DE"]},"migration":{"cost":"cheap","acceptable_loss":"0s","max_blackout":"200ms"}}"#,
                )
                .unwrap(),
            )),
        }
    }

    #[test]
    fn changes_reach_the_store_and_read_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let node = Identity::generate().id();
        let (a, b) = (SessionId::random(), SessionId::random());
        let mut d = Directory::default();
        d.insert(a.clone(), entry(&a, node, 1));
        d.insert(b.clone(), entry(&b, node, 1));
        d.get_mut(&a).unwrap().epoch = Epoch(2);
        let spec = NodeSpec {
            id: node,
            name: "n1".into(),
            jurisdiction: "DE".into(),
            accelerator: opengrid_session::AcceleratorClass::None,
            cpu_cores: 2,
            memory: 8 << 30,
            handlers: vec!["counter".into()],
            capabilities: vec![],
            price_micros_per_input: 1,
            capacity: 10,
            max_session_memory: 0,
            api: "http://127.0.0.1:1".into(),
            migration: "127.0.0.1:2".into(),
        };
        d.member_joined(spec.clone());
        {
            let store = DirectoryStore::open(dir.path()).unwrap();
            let (entries, members) = d.take_changes();
            store.write(&entries, &members).unwrap();
            d.remove(&b);
            let (entries, members) = d.take_changes();
            assert_eq!(entries.len(), 1);
            store.write(&entries, &members).unwrap();
            assert!(d.take_changes().0.is_empty(), "nothing changed since");
        }
        let store = DirectoryStore::open(dir.path()).unwrap();
        let (entries, members) = store.load();
        assert_eq!(members, vec![spec]);
        assert_eq!(entries.len(), 1, "the removed entry is gone");
        let e = &entries[0];
        assert_eq!((&e.session_id, e.epoch, e.node), (&a, Epoch(2), node));
        assert_eq!(e.manifest, entry(&a, node, 2).manifest, "with its manifest");
    }

    #[test]
    fn a_garbled_record_is_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirectoryStore::open(dir.path()).unwrap();
        store.db.put(b"s/x", b"not json").unwrap();
        store.db.put(b"m/y", b"{").unwrap();
        let (entries, members) = store.load();
        assert!(entries.is_empty() && members.is_empty());
    }
}

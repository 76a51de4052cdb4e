//! Checkpoint replication: a [`CheckpointStore`] that makes every checkpoint durable on k peers
//! before it is durable locally.
//!
//! Order matters for zero-loss sessions: replicas first (in parallel), then the local store.
//! If fewer than k replicas acknowledge, nothing is written locally and the put fails, so the
//! session answers `NotDurable`, restarts from its last durable checkpoint, and never acknowledges
//! an input that is not on k replicas. Replicas enforce epoch fencing with their own stores: a
//! holder whose epoch was superseded gets `StaleEpoch` back and stops.

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use opengrid_session::{
    Checkpoint, CheckpointInfo, CheckpointStore, Epoch, Seq, SessionId, StoreError,
};

use crate::wire::{client_codec, Request, Response};

/// Replication settings.
#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    /// Replicas each checkpoint must reach before the put succeeds.
    pub k: usize,
    /// Per-replica I/O timeout.
    pub timeout: Duration,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            k: 2,
            timeout: Duration::from_secs(2),
        }
    }
}

/// A local store plus synchronous replication to each session's replica set.
pub struct ReplicatedStore {
    local: Arc<dyn CheckpointStore>,
    cfg: ReplicationConfig,
    /// Replica set per session (chosen by the RC within the session's allowed jurisdictions).
    sets: RwLock<HashMap<SessionId, Vec<SocketAddr>>>,
    conns: Mutex<HashMap<SocketAddr, TcpStream>>,
    /// Consecutive failed replica writes per peer (reset by a successful one).
    failures: Mutex<HashMap<SocketAddr, u32>>,
}

impl ReplicatedStore {
    /// Wraps `local`.
    pub fn new(local: Arc<dyn CheckpointStore>, cfg: ReplicationConfig) -> Self {
        ReplicatedStore {
            local,
            cfg,
            sets: RwLock::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Peers still in some replica set whose last `at_least` replica writes all failed
    /// (unreachable, refusing, or failing their own disk): the node tells the RC, which moves
    /// replica sets off them.
    pub fn troubled_peers(&self, at_least: u32) -> Vec<SocketAddr> {
        let in_use: std::collections::HashSet<SocketAddr> = self
            .sets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .flatten()
            .copied()
            .collect();
        let f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<SocketAddr> = f
            .iter()
            .filter(|(a, n)| **n >= at_least.max(1) && in_use.contains(a))
            .map(|(a, _)| *a)
            .collect();
        out.sort();
        out
    }

    fn note_outcome(&self, peer: SocketAddr, ok: bool) {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            f.remove(&peer);
        } else {
            let n = f.entry(peer).or_insert(0);
            *n = n.saturating_add(1);
        }
    }

    /// The local store.
    pub fn local(&self) -> &Arc<dyn CheckpointStore> {
        &self.local
    }

    /// Sets the replica set of `session` (its migration-server addresses). Sessions without a set
    /// are stored locally only.
    pub fn set_replicas(&self, session: &SessionId, peers: Vec<SocketAddr>) {
        self.sets
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session.clone(), peers);
    }

    /// The replica set of `session`.
    pub fn replicas(&self, session: &SessionId) -> Vec<SocketAddr> {
        self.sets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(session)
            .cloned()
            .unwrap_or_default()
    }

    fn connect(&self, peer: SocketAddr) -> std::io::Result<TcpStream> {
        let s = TcpStream::connect_timeout(&peer, self.cfg.timeout)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(self.cfg.timeout))?;
        s.set_write_timeout(Some(self.cfg.timeout))?;
        Ok(s)
    }

    /// Sends one frame to every peer, then reads every answer (writes overlap across peers).
    fn replicate(
        &self,
        cp: &Checkpoint,
        peers: &[SocketAddr],
    ) -> Vec<(SocketAddr, Result<Response, String>)> {
        let frame = match client_codec().encode_frame(&Request::Replicate {
            checkpoint: cp.encode(),
        }) {
            Ok(f) => f,
            Err(e) => return peers.iter().map(|p| (*p, Err(e.to_string()))).collect(),
        };
        let mut streams: Vec<(SocketAddr, Result<TcpStream, String>)> = {
            let mut pool = self.conns.lock().unwrap_or_else(|p| p.into_inner());
            peers
                .iter()
                .map(|p| {
                    let s = match pool.remove(p) {
                        Some(s) => Ok(s),
                        None => self.connect(*p).map_err(|e| e.to_string()),
                    };
                    (*p, s)
                })
                .collect()
        };
        for (_, s) in streams.iter_mut() {
            if let Ok(st) = s {
                if let Err(e) = st.write_all(frame.as_bytes()) {
                    *s = Err(e.to_string());
                }
            }
        }
        let mut out = Vec::with_capacity(peers.len());
        for (p, s) in streams {
            match s {
                Ok(mut st) => match client_codec().read_blocking(&mut st) {
                    Ok(r) => {
                        self.conns
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(p, st);
                        out.push((p, Ok(r)));
                    }
                    Err(e) => out.push((p, Err(e.to_string()))),
                },
                Err(e) => out.push((p, Err(e))),
            }
        }
        out
    }
}

impl CheckpointStore for ReplicatedStore {
    fn put(&self, cp: &Checkpoint) -> Result<(), StoreError> {
        let peers = self.replicas(&cp.session_id);
        if !peers.is_empty() {
            let need = self.cfg.k.min(peers.len());
            let mut acks = 0;
            let mut errors = Vec::new();
            for (p, r) in self.replicate(cp, &peers) {
                self.note_outcome(
                    p,
                    matches!(r, Ok(Response::Ok) | Ok(Response::Fenced { .. })),
                );
                match r {
                    Ok(Response::Ok) => acks += 1,
                    Ok(Response::Fenced { current }) => {
                        return Err(StoreError::StaleEpoch {
                            session: cp.session_id.clone(),
                            attempted: cp.epoch,
                            current,
                        })
                    }
                    Ok(other) => errors.push(format!("{p}: {other:?}")),
                    Err(e) => errors.push(format!("{p}: {e}")),
                }
            }
            if acks < need {
                return Err(StoreError::Backend(format!(
                    "replication: {acks} of {need} replicas acknowledged ({})",
                    errors.join("; ")
                )));
            }
        }
        self.local.put(cp)
    }
    fn get_latest(&self, s: &SessionId) -> Result<Option<Checkpoint>, StoreError> {
        self.local.get_latest(s)
    }
    fn get(&self, s: &SessionId, e: Epoch, q: Seq) -> Result<Checkpoint, StoreError> {
        self.local.get(s, e, q)
    }
    fn list(&self, s: &SessionId) -> Result<Vec<CheckpointInfo>, StoreError> {
        self.local.list(s)
    }
    fn delete(&self, s: &SessionId) -> Result<(), StoreError> {
        self.local.delete(s)
    }
    fn fence(&self, s: &SessionId, e: Epoch) -> Result<(), StoreError> {
        self.local.fence(s, e)
    }
    fn current_epoch(&self, s: &SessionId) -> Result<Option<Epoch>, StoreError> {
        self.local.current_epoch(s)
    }
    fn sessions(&self) -> Result<Vec<SessionId>, StoreError> {
        self.local.sessions()
    }
    fn corruptions_detected(&self) -> u64 {
        self.local.corruptions_detected()
    }
}

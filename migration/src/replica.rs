//! Checkpoint replication: a [`CheckpointStore`] that makes every checkpoint durable on k peers
//! before it is durable locally.
//!
//! Order matters for zero-loss sessions: replicas first (in parallel), then the local store.
//! If fewer than k replicas acknowledge, nothing is written locally and the put fails, so the
//! session answers `NotDurable`, restarts from its last durable checkpoint, and never acknowledges
//! an input that is not on k replicas. [`CheckpointStore::put_counted`] adds a floor: a session
//! whose replica set (or whose acknowledging replicas) number fewer than its `min_copies` is
//! refused with [`StoreError::TooFewCopies`] ("1 of 2 copies required: …") — never acknowledged
//! from the holder's disk alone — and a successful write says how many copies it reached. Replicas enforce epoch fencing with their own stores: a
//! holder whose epoch was superseded gets `StaleEpoch` back and stops.

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};

use opengrid_link::{BlockingStream, Link};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use opengrid_session::{
    Checkpoint, CheckpointInfo, CheckpointStore, Epoch, PutOutcome, Seq, SessionId, StoreError,
};
use opentelemetry::metrics::{Histogram, Meter, MeterProvider as _};

use crate::grant::SignedGrant;
use crate::wire::{client_codec, Request, Response};

/// Bucket bounds of `opengrid_migration_replication_seconds` (50 µs … 10 s): a loopback round
/// trip is tens of µs, a replica that times out takes [`ReplicationConfig::timeout`].
pub const REPLICATION_BUCKETS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Most idle replication connections kept per replica holder.
pub const IDLE_PER_PEER: usize = 16;

/// Replication settings.
#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    /// Replicas each checkpoint must reach before the put succeeds.
    pub k: usize,
    /// Per-replica I/O timeout.
    pub timeout: Duration,
    /// The meter `opengrid_migration_replication_seconds` is created on (its provider's exporter
    /// publishes it). `None`: nothing is exported.
    pub meter: Option<Meter>,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            k: 2,
            timeout: Duration::from_secs(2),
            meter: None,
        }
    }
}

/// A local store plus synchronous replication to each session's replica set.
pub struct ReplicatedStore {
    local: Arc<dyn CheckpointStore>,
    cfg: ReplicationConfig,
    /// Replica set per session (chosen by the RC within the session's allowed jurisdictions).
    sets: RwLock<HashMap<SessionId, Vec<SocketAddr>>>,
    /// The RC's grant per session, sent with its replica writes.
    grants: RwLock<HashMap<SessionId, SignedGrant>>,
    /// Authenticated links to the replica holders (kept open: one handshake per connection).
    link: Link,
    /// Idle connections per replica holder (at most [`IDLE_PER_PEER`] each): sessions
    /// replicating at once each take one, so connections (and their handshakes) are reused
    /// rather than replaced.
    conns: Mutex<HashMap<SocketAddr, Vec<BlockingStream>>>,
    /// Consecutive failed replica writes per peer (reset by a successful one).
    failures: Mutex<HashMap<SocketAddr, u32>>,
    /// One replication round: send to every replica of the set, read every answer.
    replication_seconds: Histogram<f64>,
}

impl ReplicatedStore {
    /// Wraps `local`; replicas are reached over `link` (each must prove a DID its policy allows).
    pub fn new(local: Arc<dyn CheckpointStore>, cfg: ReplicationConfig, link: Link) -> Self {
        let meter = cfg.meter.clone().unwrap_or_else(|| {
            opentelemetry::metrics::NoopMeterProvider::new().meter("opengrid_migration")
        });
        let replication_seconds = meter
            .f64_histogram("opengrid_migration_replication")
            .with_unit("s")
            .with_description(
                "one checkpoint's replication round: sent to its replica set, every answer read",
            )
            .with_boundaries(REPLICATION_BUCKETS.to_vec())
            .build();
        ReplicatedStore {
            local,
            cfg,
            sets: RwLock::new(HashMap::new()),
            grants: RwLock::new(HashMap::new()),
            link,
            conns: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            replication_seconds,
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

    /// Sets the RC's grant for `session` (sent with every replica write; replicas of a node
    /// that checks grants refuse writes without one).
    pub fn set_grant(&self, session: &SessionId, grant: SignedGrant) {
        self.grants
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session.clone(), grant);
    }

    /// The grant of `session`, if any.
    pub fn grant(&self, session: &SessionId) -> Option<SignedGrant> {
        self.grants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(session)
            .cloned()
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

    /// Readies `peers` for `session`'s first write (blocking: call it off the async runtime):
    /// opens a link to each that has none idle, and presents `grant` ([`Request::Present`]) so
    /// each replica has verified it. A session about to start here (a handover target)
    /// replicates to them at once, inside the blackout: that write then pays neither a TCP and
    /// TLS handshake nor a signature check. Failures are left to that write, which reports them.
    pub fn warm(&self, session: &SessionId, peers: &[SocketAddr], grant: Option<&SignedGrant>) {
        let frame = grant.and_then(|g| {
            client_codec()
                .encode_frame(&Request::Present {
                    session: session.clone(),
                    grant: Some(g.clone()),
                })
                .ok()
        });
        for p in peers {
            let idle = {
                let mut pool = self.conns.lock().unwrap_or_else(|p| p.into_inner());
                pool.get_mut(p).and_then(Vec::pop)
            };
            let st = match idle {
                Some(st) => st,
                None => match self.connect(*p) {
                    Ok(st) => st,
                    Err(e) => {
                        tracing::debug!(peer = %p, error = %e, "warming a replica link failed");
                        continue;
                    }
                },
            };
            let mut st = st;
            if let Some(f) = &frame {
                let shown = st
                    .write_all(f.as_bytes())
                    .and_then(|()| st.flush())
                    .map_err(|e| e.to_string())
                    .and_then(|()| {
                        client_codec()
                            .read_blocking(&mut st)
                            .map_err(|e| e.to_string())
                    });
                match shown {
                    Ok(Response::Ok) => {}
                    Ok(other) => {
                        // Refused (stale grant, not designated): the write will say so.
                        tracing::debug!(peer = %p, answer = ?other, "grant not accepted ahead");
                    }
                    Err(e) => {
                        tracing::debug!(peer = %p, error = %e, "presenting the grant failed");
                        continue;
                    }
                }
            }
            let mut pool = self.conns.lock().unwrap_or_else(|p| p.into_inner());
            let idle = pool.entry(*p).or_default();
            if idle.len() < IDLE_PER_PEER {
                idle.push(st);
            }
        }
    }

    /// Idle links kept open to `peer`.
    pub fn idle_links(&self, peer: SocketAddr) -> usize {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer)
            .map_or(0, Vec::len)
    }

    fn connect(&self, peer: SocketAddr) -> Result<BlockingStream, String> {
        let s = TcpStream::connect_timeout(&peer, self.cfg.timeout).map_err(|e| e.to_string())?;
        let setup = || -> std::io::Result<()> {
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(self.cfg.timeout))?;
            s.set_write_timeout(Some(self.cfg.timeout))
        };
        setup().map_err(|e| e.to_string())?;
        self.link
            .connect_blocking(s, None)
            .map(|(tls, _)| tls)
            .map_err(|e| format!("link: {e}"))
    }

    /// Sends one frame to every peer, then reads every answer (writes overlap across peers).
    fn replicate(
        &self,
        cp: &Checkpoint,
        peers: &[SocketAddr],
    ) -> Vec<(SocketAddr, Result<Response, String>)> {
        let frame = match client_codec().encode_frame(&Request::Replicate {
            checkpoint: cp.encode(),
            grant: self.grant(&cp.session_id),
        }) {
            Ok(f) => f,
            Err(e) => return peers.iter().map(|p| (*p, Err(e.to_string()))).collect(),
        };
        let idle: Vec<Option<BlockingStream>> = {
            let mut pool = self.conns.lock().unwrap_or_else(|p| p.into_inner());
            peers
                .iter()
                .map(|p| pool.get_mut(p).and_then(Vec::pop))
                .collect()
        };
        // New connections (and their handshakes) are made outside the pool's lock.
        let mut streams: Vec<(SocketAddr, Result<BlockingStream, String>)> = peers
            .iter()
            .zip(idle)
            .map(|(p, s)| (*p, s.map_or_else(|| self.connect(*p), Ok)))
            .collect();
        for (_, s) in streams.iter_mut() {
            if let Ok(st) = s {
                if let Err(e) = st.write_all(frame.as_bytes()).and_then(|()| st.flush()) {
                    *s = Err(e.to_string());
                }
            }
        }
        let mut out = Vec::with_capacity(peers.len());
        for (p, s) in streams {
            match s {
                Ok(mut st) => match client_codec().read_blocking(&mut st) {
                    Ok(r) => {
                        let mut pool = self.conns.lock().unwrap_or_else(|p| p.into_inner());
                        let idle = pool.entry(p).or_default();
                        if idle.len() < IDLE_PER_PEER {
                            idle.push(st);
                        }
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
        self.put_counted(cp, 0).map(|_| ())
    }
    /// Replicas first (every member of the session's set must acknowledge, and at least
    /// `min_copies` of them), then the local store. A set smaller than `min_copies` is refused
    /// before anything is sent, so nothing is written anywhere.
    fn put_counted(&self, cp: &Checkpoint, min_copies: u32) -> Result<PutOutcome, StoreError> {
        let peers = self.replicas(&cp.session_id);
        let min = min_copies as usize;
        if peers.len() < min {
            return Err(StoreError::TooFewCopies {
                session: cp.session_id.clone(),
                have: peers.len() as u32,
                need: min_copies,
                reason: if peers.is_empty() {
                    "no replica holder assigned: replica holders down or none eligible".into()
                } else {
                    "replica holders down or not eligible: the replica set is smaller".into()
                },
            });
        }
        let mut acks = 0usize;
        if !peers.is_empty() {
            let need = self.cfg.k.min(peers.len()).max(min);
            let mut errors = Vec::new();
            let started = Instant::now();
            let answers = self.replicate(cp, &peers);
            self.replication_seconds
                .record(started.elapsed().as_secs_f64(), &[]);
            for (p, r) in answers {
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
                    Ok(Response::Unauthorized { reason }) => {
                        errors.push(format!("{p}: unauthorized: {reason}"))
                    }
                    Ok(other) => errors.push(format!("{p}: {other:?}")),
                    Err(e) => errors.push(format!("{p}: {e}")),
                }
            }
            if acks < min {
                return Err(StoreError::TooFewCopies {
                    session: cp.session_id.clone(),
                    have: acks as u32,
                    need: min_copies,
                    reason: format!("replica holders down ({})", errors.join("; ")),
                });
            }
            if acks < need {
                return Err(StoreError::Backend(format!(
                    "replication: {acks} of {need} replicas acknowledged ({})",
                    errors.join("; ")
                )));
            }
        }
        self.local.put(cp)?;
        Ok(PutOutcome {
            copies: acks as u32,
            synced: self.local.syncs_writes(),
        })
    }
    fn syncs_writes(&self) -> bool {
        self.local.syncs_writes()
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

#[cfg(test)]
mod tests {
    use super::*;
    use opengrid_session::MemoryCheckpointStore;
    use opentelemetry_sdk::metrics::SdkMeterProvider;
    use prometheus::{Encoder, Registry, TextEncoder};

    /// Links of a holder and a replica that allow each other.
    pub(crate) fn link_pair() -> (Link, Link) {
        use opengrid_link::{AllowList, LinkIdentity};
        let a =
            LinkIdentity::from_signing_key(&ed25519_dalek::SigningKey::from_bytes(&rand::random()))
                .unwrap();
        let b =
            LinkIdentity::from_signing_key(&ed25519_dalek::SigningKey::from_bytes(&rand::random()))
                .unwrap();
        let la = Link::new(&a, Arc::new(AllowList::new([b.did().clone()]))).unwrap();
        let lb = Link::new(&b, Arc::new(AllowList::new([a.did().clone()]))).unwrap();
        (la, lb)
    }

    /// A replica that acknowledges `n` replica writes on one (authenticated) connection.
    fn acking_replica(link: Link, n: usize) -> (SocketAddr, std::thread::JoinHandle<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let (mut sock, _) = link.accept_blocking(sock).unwrap();
            let mut codec = crate::wire::server_codec();
            for _ in 0..n {
                let req = codec.read_blocking(&mut sock).unwrap();
                assert!(matches!(req, Request::Replicate { .. }));
                let ok = codec.encode_frame(&Response::Ok).unwrap();
                sock.write_all(ok.as_bytes()).unwrap();
                sock.flush().unwrap();
            }
        });
        (addr, t)
    }

    /// A store, and the link a replica of it accepts with.
    fn store() -> (ReplicatedStore, Link) {
        let (holder, replica) = link_pair();
        let store = ReplicatedStore::new(
            Arc::new(MemoryCheckpointStore::new()),
            ReplicationConfig {
                k: usize::MAX,
                timeout: Duration::from_millis(500),
                meter: None,
            },
            holder,
        );
        (store, replica)
    }

    fn too_few(r: Result<PutOutcome, StoreError>) -> (u32, u32, String) {
        match r {
            Err(StoreError::TooFewCopies {
                have, need, reason, ..
            }) => (have, need, reason),
            other => panic!("expected TooFewCopies, got {other:?}"),
        }
    }

    #[test]
    fn fewer_replica_holders_than_min_copies_is_refused_and_nothing_is_written() {
        let (store, replica_link) = store();
        let id = SessionId::new("m").unwrap();
        let cp = |seq| Checkpoint::new(id.clone(), Epoch(1), Seq(seq), "h", 1, vec![seq as u8]);
        // No replica holder at all: never durable from the local disk alone.
        let (have, need, why) = too_few(store.put_counted(&cp(1), 1));
        assert_eq!((have, need), (0, 1));
        assert!(why.contains("no replica holder"), "{why}");
        assert!(store.local().get_latest(&id).unwrap().is_none());
        // One holder, two required: refused before anything is sent (the replica would panic
        // on an unexpected frame only if it accepted; it is never even connected to).
        let (replica, t) = acking_replica(replica_link, 1);
        store.set_replicas(&id, vec![replica]);
        let (have, need, _) = too_few(store.put_counted(&cp(1), 2));
        assert_eq!((have, need), (1, 2));
        assert!(store.local().get_latest(&id).unwrap().is_none());
        // One holder, one required: acknowledged with copies = 1.
        let out = store.put_counted(&cp(1), 1).unwrap();
        assert_eq!(
            out,
            PutOutcome {
                copies: 1,
                synced: true
            }
        );
        assert_eq!(store.local().get_latest(&id).unwrap().unwrap().seq, Seq(1));
        t.join().unwrap();
        // min_copies 0 with no holder: the holder's disk alone, copies = 0.
        let lone = SessionId::new("lone").unwrap();
        let cp0 = Checkpoint::new(lone.clone(), Epoch(1), Seq(1), "h", 1, vec![1]);
        assert_eq!(store.put_counted(&cp0, 0).unwrap().copies, 0);
    }

    #[test]
    fn a_replica_holder_that_is_down_leaves_the_write_below_min_copies() {
        let (store, _) = store();
        let id = SessionId::new("d").unwrap();
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        store.set_replicas(&id, vec![dead]);
        let cp = Checkpoint::new(id.clone(), Epoch(1), Seq(1), "h", 1, vec![1]);
        let (have, need, why) = too_few(store.put_counted(&cp, 1));
        assert_eq!((have, need), (0, 1));
        assert!(why.contains("replica holders down"), "{why}");
        assert!(store.local().get_latest(&id).unwrap().is_none());
        assert_eq!(store.troubled_peers(1), vec![dead]);
    }

    #[test]
    fn replication_rounds_are_exported_in_seconds() {
        let registry = Registry::new();
        let provider = SdkMeterProvider::builder()
            .with_reader(
                opentelemetry_prometheus::exporter()
                    .with_registry(registry.clone())
                    .without_target_info()
                    .scope_info_enabled(false)
                    .build()
                    .unwrap(),
            )
            .build();
        let (holder, replica) = link_pair();
        let store = ReplicatedStore::new(
            Arc::new(MemoryCheckpointStore::new()),
            ReplicationConfig {
                k: 1,
                meter: Some(provider.meter("opengrid_migration")),
                ..ReplicationConfig::default()
            },
            holder,
        );
        let id = SessionId::new("r").unwrap();
        // a session without replicas is stored locally only: no replication round
        let cp = |seq| Checkpoint::new(id.clone(), Epoch(1), Seq(seq), "h", 1, vec![1, 2, 3]);
        store.put(&cp(1)).unwrap();
        let (replica, t) = acking_replica(replica, 2);
        store.set_replicas(&id, vec![replica]);
        store.put(&cp(2)).unwrap();
        store.put(&cp(3)).unwrap();
        t.join().unwrap();
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut buf)
            .unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(
            text.contains("\nopengrid_migration_replication_seconds_count 2\n"),
            "{text}"
        );
        // second-valued buckets: a loopback round is well under 10 s, and 0.0005 is a bound
        assert!(
            text.contains("opengrid_migration_replication_seconds_bucket{le=\"10\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("opengrid_migration_replication_seconds_bucket{le=\"0.0005\"}"),
            "{text}"
        );
    }
}

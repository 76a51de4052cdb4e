//! `opengrid-chaos replica-server`: the process of the layer benches ([`crate::bench`]: `bench
//! checkpoint` (P11) and `bench handover --replica-servers` (P2's floor)) — the session and
//! migration layers of a node without the rest of it: a [`SessionHost`] over a RocksDB store
//! (fsync on) wrapped in a [`ReplicatedStore`], a [`MigrationServer`] (replica writes, handover
//! target steps, forwarding), and a JSON-lines control port the bench drives (start a session,
//! send inputs, hand a session over, read its state, ping). No client API, RC, lease or
//! directory: what it measures is the cost of those layers alone, which the `opengrid` node
//! benches ([`crate::bench_colony`]) build on.
//!
//! Control protocol: one JSON object per line each way, over TCP on 127.0.0.1.
//! Requests: [`Control`]; answers: [`ControlReply`]. Lines longer than
//! [`MAX_CONTROL_LINE`] close the connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opengrid_actors::{
    HandlerError, HostConfig, Reply, Services, SessionContext, SessionError, SessionHandler,
    SessionHost,
};
use opengrid_migration::{
    handover, CapacityAdmission, HandoverOptions, MigrationServer, Peer, ReplicatedStore,
    ReplicationConfig,
};
use opengrid_session::{
    CheckpointPolicy, CheckpointStore, Epoch, RocksCheckpointStore, RocksOptions, Seq, SessionId,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Longest control line accepted.
pub const MAX_CONTROL_LINE: usize = 64 << 10;
/// Handler id of the bench handler.
pub const FOLD_HANDLER: &str = "chaos-fold";

/// State of the bench handler: a running hash of (seq, value), the count of inputs applied, the
/// last seq, and padding to the requested state size.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FoldState {
    /// Running hash.
    pub hash: u64,
    /// Inputs applied.
    pub n: u64,
    /// Last seq applied.
    pub last: u64,
    /// Padding (state size).
    pub pad: Vec<u8>,
}

/// The hash step of the bench handler; clients compute the same reference.
pub fn fold(h: u64, seq: u64, v: u64) -> u64 {
    (h ^ v.wrapping_add(seq << 32)).wrapping_mul(0x100_0000_01b3)
}

/// The bench handler: folds each `u64` input into the state.
#[derive(Default)]
pub struct Fold {
    pads: Mutex<HashMap<SessionId, usize>>,
}

impl Fold {
    /// Sets the state padding of `id` (read when its state is first created).
    pub fn set_pad(&self, id: &SessionId, bytes: usize) {
        self.pads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), bytes);
    }
}

impl SessionHandler for Fold {
    type State = FoldState;
    type Input = u64;
    type Output = u64;
    fn id(&self) -> &str {
        FOLD_HANDLER
    }
    fn init(&self, s: &SessionId) -> FoldState {
        let pad = self
            .pads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(s)
            .copied()
            .unwrap_or(0);
        FoldState {
            pad: vec![0x5a; pad],
            ..Default::default()
        }
    }
    async fn handle(
        &self,
        st: &mut FoldState,
        v: u64,
        ctx: &SessionContext,
    ) -> Result<u64, HandlerError> {
        st.hash = fold(st.hash, ctx.seq().0, v);
        st.n += 1;
        st.last = ctx.seq().0;
        Ok(st.hash)
    }
}

/// A control request.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Control {
    /// Liveness (also the loopback RTT floor).
    Ping,
    /// Starts a session with epoch 1.
    Start {
        /// Session id.
        session: String,
        /// Padding bytes in its state.
        state_bytes: usize,
        /// Zero-loss (synchronous checkpoints) or a 1 s bound.
        zero_loss: bool,
        /// Blackout budget for handovers, ms.
        max_blackout_ms: u64,
    },
    /// Sets the replica set of a session (migration addresses of other replica servers).
    Replicas {
        /// Session id.
        session: String,
        /// Peers.
        peers: Vec<SocketAddr>,
    },
    /// One input.
    Input {
        /// Session id.
        session: String,
        /// Seq.
        seq: u64,
        /// Value.
        value: u64,
    },
    /// Hands the session over to the replica server whose migration port is `target`.
    Handover {
        /// Session id.
        session: String,
        /// Target migration address.
        target: SocketAddr,
    },
    /// The DIDs admitted on this server's migration links (replaces the set; the harness sends
    /// every fleet member's and its own once all are up).
    Allow {
        /// `did:mycel:` ids.
        dids: Vec<String>,
    },
    /// Stops the (moved) session here.
    Release {
        /// Session id.
        session: String,
    },
    /// Checkpoints the session and reads its state back from the local store.
    State {
        /// Session id.
        session: String,
    },
}

/// A control answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ControlReply {
    /// Success.
    pub ok: bool,
    /// The session moved (follow to the other server).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub moved: bool,
    /// Retry later (restarting, backpressure, frozen).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry: bool,
    /// The input was a duplicate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    /// Handler output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<u64>,
    /// Handover blackout, µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blackout_us: Option<u64>,
    /// Epoch after a handover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// State (for `state`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateView>,
    /// Error text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What `state` returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateView {
    /// Running hash.
    pub hash: u64,
    /// Inputs applied.
    pub n: u64,
    /// Last seq.
    pub last: u64,
    /// State bytes.
    pub bytes: usize,
}

fn err(e: impl std::fmt::Display) -> ControlReply {
    ControlReply {
        error: Some(e.to_string()),
        ..Default::default()
    }
}

/// Why the replica server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaServerError {
    /// Store.
    #[error("store: {0}")]
    Store(#[from] opengrid_session::StoreError),
    /// Actors.
    #[error("session host: {0}")]
    Host(#[from] SessionError),
    /// Socket or file.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The migration links (identity certificate, TLS configuration).
    #[error("migration link: {0}")]
    Link(#[from] opengrid_link::LinkError),
}

/// A running replica server (in this process).
pub struct ReplicaServer {
    /// Migration address.
    pub migration: SocketAddr,
    /// The DID its migration links prove (a fresh key per process).
    pub did: opengrid_session::Did,
    /// Control address.
    pub control: SocketAddr,
    host: SessionHost,
    server: MigrationServer,
    task: tokio::task::JoinHandle<()>,
}

struct Ctx {
    host: SessionHost,
    store: Arc<ReplicatedStore>,
    local: Arc<dyn CheckpointStore>,
    fold: Arc<Fold>,
    migration: SocketAddr,
    link: opengrid_link::Link,
    members: Arc<opengrid_link::AllowList>,
    peers: Mutex<HashMap<SocketAddr, Arc<Peer>>>,
}

impl ReplicaServer {
    /// Opens the store in `dir` and binds both ports.
    pub async fn start(
        dir: &Path,
        migration: SocketAddr,
        control: SocketAddr,
        plaintext_links: bool,
    ) -> Result<ReplicaServer, ReplicaServerError> {
        let local: Arc<dyn CheckpointStore> = Arc::new(RocksCheckpointStore::open(
            dir,
            RocksOptions {
                sync: true,
                retain: 2,
            },
        )?);
        let identity = opengrid_link::LinkIdentity::from_signing_key(
            &ed25519_dalek::SigningKey::from_bytes(&rand::random()),
        )?;
        let members = Arc::new(opengrid_link::AllowList::new([]));
        // `bench … --links plaintext|both` measures the links' cost: plain TCP, claimed DIDs.
        let link = if plaintext_links {
            opengrid_link::Link::plaintext_for_measurement(identity.did().clone(), members.clone())
        } else {
            opengrid_link::Link::new(&identity, members.clone())?
        };
        let store = Arc::new(ReplicatedStore::new(
            local.clone(),
            ReplicationConfig::default(),
            link.clone(),
        ));
        let host = SessionHost::new(
            store.clone() as Arc<dyn CheckpointStore>,
            HostConfig::default(),
            Services::default(),
        )
        .await?;
        let fold = Arc::new(Fold::default());
        host.register(fold.clone());
        let admit = Arc::new(CapacityAdmission {
            host: host.clone(),
            max_sessions: 100_000,
        });
        let server = MigrationServer::bind(
            migration,
            host.clone(),
            local.clone(),
            admit,
            // The layer benches run no RC: the fleet's link policy is the only check.
            opengrid_migration::Security {
                link: link.clone(),
                grants: opengrid_migration::GrantPolicy::LinkOnly,
                meter: None,
            },
        )
        .await?;
        let listener = TcpListener::bind(control).await?;
        let control = listener.local_addr()?;
        let ctx = Arc::new(Ctx {
            host: host.clone(),
            store,
            local,
            fold,
            migration: server.addr(),
            link,
            members,
            peers: Mutex::new(HashMap::new()),
        });
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let _ = sock.set_nodelay(true);
                tokio::spawn(serve_control(ctx.clone(), sock));
            }
        });
        Ok(ReplicaServer {
            migration: server.addr(),
            did: identity.did().clone(),
            control,
            host,
            server,
            task,
        })
    }

    /// Stops serving.
    pub async fn shutdown(self) {
        self.task.abort();
        self.server.shutdown();
        self.host.shutdown().await;
    }
}

async fn serve_control(ctx: Arc<Ctx>, sock: TcpStream) {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    loop {
        line.clear();
        let n = match (&mut r)
            .take(MAX_CONTROL_LINE as u64 + 1)
            .read_line(&mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let reply = if n > MAX_CONTROL_LINE || !line.ends_with('\n') {
            let _ = w
                .write_all(b"{\"ok\":false,\"error\":\"line too long\"}\n")
                .await;
            return;
        } else {
            match serde_json::from_str::<Control>(&line) {
                Ok(c) => handle(&ctx, c).await,
                Err(e) => err(format!("bad request: {e}")),
            }
        };
        let mut out = serde_json::to_vec(&reply).unwrap_or_else(|_| b"{}".to_vec());
        out.push(b'\n');
        if w.write_all(&out).await.is_err() {
            return;
        }
    }
}

fn sid(s: &str) -> Result<SessionId, ControlReply> {
    SessionId::new(s).map_err(err)
}

async fn handle(ctx: &Ctx, c: Control) -> ControlReply {
    let ok = ControlReply {
        ok: true,
        ..Default::default()
    };
    match c {
        Control::Ping => ok,
        Control::Allow { dids } => {
            let mut parsed = Vec::with_capacity(dids.len());
            for d in &dids {
                match opengrid_session::Did::parse(d) {
                    Ok(d) => parsed.push(d),
                    Err(e) => return err(format!("{d:?}: {e}")),
                }
            }
            ctx.members.replace(parsed);
            ok
        }
        Control::Start {
            session,
            state_bytes,
            zero_loss,
            max_blackout_ms,
        } => {
            let id = match sid(&session) {
                Ok(i) => i,
                Err(e) => return e,
            };
            ctx.fold.set_pad(&id, state_bytes);
            let mut policy = if zero_loss {
                CheckpointPolicy::synchronous()
            } else {
                CheckpointPolicy::periodic(Duration::from_secs(1))
            };
            policy.max_blackout = Some(Duration::from_millis(max_blackout_ms));
            match ctx.host.start_dyn(FOLD_HANDLER, id, Epoch(1), policy).await {
                Ok(_) => ok,
                Err(e) => err(e),
            }
        }
        Control::Replicas { session, peers } => match sid(&session) {
            Ok(id) => {
                ctx.store.set_replicas(&id, peers);
                ok
            }
            Err(e) => e,
        },
        Control::Input {
            session,
            seq,
            value,
        } => {
            let id = match sid(&session) {
                Ok(i) => i,
                Err(e) => return e,
            };
            let Some(s) = ctx.host.get(&id) else {
                return ControlReply {
                    moved: true,
                    error: Some(format!("session {id} not here")),
                    ..Default::default()
                };
            };
            match s.send_json(Seq(seq), serde_json::json!(value)).await {
                Ok(Reply::Processed { output: Ok(o), .. }) => ControlReply {
                    output: o.as_u64(),
                    ..ok
                },
                Ok(Reply::Processed { output: Err(e), .. }) => err(format!("handler: {e:?}")),
                Ok(Reply::Duplicate { .. }) => ControlReply {
                    duplicate: true,
                    ..ok
                },
                Err(SessionError::Moved { .. }) => ControlReply {
                    moved: true,
                    ..Default::default()
                },
                Err(e) if e.is_retryable() => ControlReply {
                    retry: true,
                    error: Some(e.to_string()),
                    ..Default::default()
                },
                Err(e) => err(e),
            }
        }
        Control::Handover { session, target } => {
            let id = match sid(&session) {
                Ok(i) => i,
                Err(e) => return e,
            };
            let peer = ctx
                .peers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(target)
                .or_insert_with(|| Peer::new(target, ctx.link.clone(), Duration::from_secs(5)))
                .clone();
            let store = ctx.store.clone() as Arc<dyn CheckpointStore>;
            let opts = HandoverOptions {
                location: target.to_string(),
                ..Default::default()
            };
            match handover(&ctx.host, &store, &id, &peer, &opts).await {
                Ok(r) => ControlReply {
                    blackout_us: Some(r.blackout.as_micros() as u64),
                    epoch: Some(r.epoch.0),
                    ..ok
                },
                Err(e) => err(e),
            }
        }
        Control::Release { session } => {
            let id = match sid(&session) {
                Ok(i) => i,
                Err(e) => return e,
            };
            match ctx.host.release(&id).await {
                Ok(_) => ok,
                Err(e) => err(e),
            }
        }
        Control::State { session } => {
            let id = match sid(&session) {
                Ok(i) => i,
                Err(e) => return e,
            };
            if let Some(s) = ctx.host.get(&id) {
                if let Err(e) = s.checkpoint_now().await {
                    return err(e);
                }
            }
            match ctx.local.get_latest(&id) {
                Ok(Some(cp)) => match ctx.fold.decode_state(&cp.state) {
                    Ok(st) => ControlReply {
                        state: Some(StateView {
                            hash: st.hash,
                            n: st.n,
                            last: st.last,
                            bytes: cp.state.len(),
                        }),
                        ..ok
                    },
                    Err(e) => err(format!("state decode: {e:?}")),
                },
                Ok(None) => err(format!("no checkpoint of {id} at {}", ctx.migration)),
                Err(e) => err(e),
            }
        }
    }
}

/// Runs a replica server until killed; writes `migration=<addr>\ncontrol=<addr>\ndid=<did>\n` to
/// `ready_file` (atomically) once both ports listen.
pub async fn serve_forever(
    dir: PathBuf,
    migration: SocketAddr,
    control: SocketAddr,
    ready_file: Option<PathBuf>,
    plaintext_links: bool,
) -> Result<(), ReplicaServerError> {
    std::fs::create_dir_all(&dir)?;
    let s = ReplicaServer::start(&dir, migration, control, plaintext_links).await?;
    let text = format!(
        "migration={}\ncontrol={}\ndid={}\n",
        s.migration, s.control, s.did
    );
    match ready_file {
        Some(f) => {
            let tmp = f.with_extension("tmp");
            std::fs::write(&tmp, &text)?;
            std::fs::rename(&tmp, &f)?;
        }
        None => print!("{text}"),
    }
    std::future::pending::<()>().await;
    Ok(())
}

/// A client of a replica server's control port (one request at a time).
pub struct ControlClient {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
    line: String,
}

impl ControlClient {
    /// Connects.
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        Ok(ControlClient {
            r: BufReader::new(r),
            w,
            line: String::new(),
        })
    }

    /// One request, one answer.
    pub async fn call(&mut self, c: &Control) -> std::io::Result<ControlReply> {
        let mut out = serde_json::to_vec(c).map_err(std::io::Error::other)?;
        out.push(b'\n');
        self.w.write_all(&out).await?;
        self.line.clear();
        let n = (&mut self.r)
            .take(MAX_CONTROL_LINE as u64 + 1)
            .read_line(&mut self.line)
            .await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "control connection closed",
            ));
        }
        serde_json::from_str(&self.line).map_err(std::io::Error::other)
    }
}

//! The migration server of a node: replica writes, handover target steps, X2 forwarding.
//!
//! Every connection is a mutually authenticated TLS 1.3 link ([`opengrid_link`]): the peer
//! proves the key of its `did:mycel` and must be allowed by the server's [`Link`] policy (the
//! node's colony members) before a single frame is read; the peer's DID is known to every
//! request's handling. Session requests are then authorized by RC-signed grants
//! ([`crate::grant`], [`GrantPolicy`]); a refusal answers [`Response::Unauthorized`], is counted
//! in `opengrid_migration_refused_total{reason}` and logged (warn, at most once a second per
//! reason).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use opengrid_actors::SessionHost;
use opengrid_codec::FrameError;
use opengrid_link::{Link, ServerStream};
use opengrid_session::{
    Checkpoint, CheckpointPolicy, CheckpointStore, Did, Epoch, SessionId, StoreError,
};
use opentelemetry::metrics::{Counter, Meter, MeterProvider as _};
use opentelemetry::KeyValue;
use tokio::net::{TcpListener, TcpStream};

use crate::grant::{Grant, GrantPolicy, SignedGrant, VerifiedGrants};
use crate::wire::{server_codec, Request, Response};

/// How a migration server authenticates and authorizes its peers.
#[derive(Clone, Debug)]
pub struct Security {
    /// The links connections are served over (who may connect at all).
    pub link: Link,
    /// Which session requests an admitted peer may make.
    pub grants: GrantPolicy,
    /// Meter of `opengrid_migration_refused_total` (`None`: not exported).
    pub meter: Option<Meter>,
}

/// How long a prepared (reserved) handover waits for activation before it is dropped.
pub const RESERVATION_TTL: Duration = Duration::from_secs(30);

struct Prepared {
    handler: String,
    policy: CheckpointPolicy,
    epoch: Epoch,
    replicas: Vec<SocketAddr>,
    /// The peer that prepared: only it may transfer, activate or abort.
    source: Did,
    grant: Option<SignedGrant>,
    at: Instant,
}

/// Admission rule the node applies to incoming handovers (capacity, handler served).
pub trait AdmitIncoming: Send + Sync + 'static {
    /// Called at `Prepare`, before [`admit`](Self::admit): a chance to make `handler` runnable
    /// here (e.g. fetch and load a pushed agent the node has not run) before the handover's
    /// freeze. Bounded by the implementation; `admit` decides afterwards. Default: nothing.
    fn ready<'a>(
        &'a self,
        _session: &'a SessionId,
        _handler: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async {})
    }

    /// `Err(reason)` to refuse.
    fn admit(&self, session: &SessionId, handler: &str) -> Result<(), String>;

    /// Called when a handover to this node is prepared, with the replica set the session will
    /// write to once it is active here: the node opens its links to them now, so the
    /// activation (inside the blackout) finds them open.
    fn prepared(
        &self,
        _session: &SessionId,
        _replicas: &[SocketAddr],
        _grant: Option<&SignedGrant>,
    ) {
    }

    /// Called right before an incoming session starts here with the replica set the source
    /// passed on and the RC's grant for the new epoch (the node points its replicated store at
    /// them).
    fn activating(
        &self,
        _session: &SessionId,
        _replicas: &[SocketAddr],
        _grant: Option<&SignedGrant>,
    ) {
    }

    /// Called once an incoming session is active here with `epoch` (the node tells its RC).
    fn activated(&self, _session: &SessionId, _epoch: Epoch) {}
}

/// Admits any registered handler while the host holds fewer than `max_sessions`.
pub struct CapacityAdmission {
    /// The node's session host.
    pub host: SessionHost,
    /// Capacity.
    pub max_sessions: usize,
}

impl AdmitIncoming for CapacityAdmission {
    fn admit(&self, _session: &SessionId, handler: &str) -> Result<(), String> {
        if !self.host.handler_ids().iter().any(|h| h == handler) {
            return Err(format!("handler {handler:?} is not served by this node"));
        }
        if self.host.len() >= self.max_sessions {
            return Err(format!("node full ({} sessions)", self.max_sessions));
        }
        Ok(())
    }
}

struct Inner {
    me: Did,
    grants: GrantPolicy,
    /// Grants verified before (each replica write carries its session's grant).
    verified: VerifiedGrants,
    refused: Counter<u64>,
    /// Last warn per refusal reason (the log is throttled to one a second per reason).
    refusal_logged: Mutex<HashMap<&'static str, Instant>>,
    /// The peer that last prepared a handover of each session here: only it may transfer,
    /// activate or abort (kept after activation, so that its late abort or retried activation
    /// gets the truthful answer).
    handover_source: Mutex<HashMap<SessionId, Did>>,
    /// The peer each session was activated from (the old holder relaying X2 inputs).
    activated_from: Mutex<HashMap<SessionId, Did>>,
    host: SessionHost,
    local: Arc<dyn CheckpointStore>,
    admit: Arc<dyn AdmitIncoming>,
    prepared: Mutex<HashMap<SessionId, Prepared>>,
    activated: Mutex<HashMap<SessionId, Epoch>>,
    /// Activation decided (start under way) vs aborted, decided under one lock so an abort and
    /// an activation never both win.
    decisions: Mutex<Decisions>,
}

#[derive(Default)]
struct Decisions {
    committing: HashMap<SessionId, Epoch>,
    aborted: HashMap<(SessionId, Epoch), Instant>,
}

/// A running migration server.
#[derive(Clone)]
pub struct MigrationServer {
    addr: SocketAddr,
    task: Arc<tokio::task::JoinHandle<()>>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl MigrationServer {
    /// Binds `addr` and serves on the current tokio runtime. `local` is the node's own store
    /// (replica writes and pre-copies land there, never re-replicated). Connections are served
    /// over `link` (only the peers its policy allows get past the handshake).
    pub async fn bind(
        addr: SocketAddr,
        host: SessionHost,
        local: Arc<dyn CheckpointStore>,
        admit: Arc<dyn AdmitIncoming>,
        security: Security,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let Security {
            link,
            grants,
            meter,
        } = security;
        let meter = meter.unwrap_or_else(|| {
            opentelemetry::metrics::NoopMeterProvider::new().meter("opengrid_migration")
        });
        let refused = meter
            .u64_counter("opengrid_migration_refused")
            .with_description("migration requests refused by grant authorization, by reason")
            .build();
        let inner = Arc::new(Inner {
            me: link.did().clone(),
            grants,
            refused,
            refusal_logged: Mutex::new(HashMap::new()),
            handover_source: Mutex::new(HashMap::new()),
            activated_from: Mutex::new(HashMap::new()),
            host,
            local,
            admit,
            prepared: Mutex::new(HashMap::new()),
            activated: Mutex::new(HashMap::new()),
            decisions: Mutex::new(Decisions::default()),
            verified: VerifiedGrants::default(),
        });
        let i2 = inner;
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let c2 = conns.clone();
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((sock, peer)) => {
                        let _ = sock.set_nodelay(true);
                        let i = i2.clone();
                        let link = link.clone();
                        let h = tokio::spawn(async move {
                            let (tls, did) = match link.accept(sock).await {
                                Ok(x) => x,
                                Err(e) => {
                                    tracing::debug!(%peer, error = %e, "migration link refused");
                                    return;
                                }
                            };
                            if let Err(e) = serve(i, tls, &did).await {
                                tracing::debug!(%peer, %did, error = %e, "migration connection closed");
                            }
                        });
                        let mut c = lock(&c2);
                        c.retain(|h| !h.is_finished());
                        c.push(h.abort_handle());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "migration accept failed");
                        tokio::task::yield_now().await;
                    }
                }
            }
        });
        Ok(MigrationServer {
            addr,
            task: Arc::new(task),
            conns,
        })
    }

    /// Bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and drops every open connection (as a dying node would).
    pub fn shutdown(&self) {
        self.task.abort();
        for h in lock(&self.conns).drain(..) {
            h.abort();
        }
    }
}

async fn serve(
    inner: Arc<Inner>,
    sock: ServerStream<TcpStream>,
    peer: &Did,
) -> Result<(), FrameError> {
    let mut conn = server_codec().framed(sock);
    while let Some(req) = conn.next().await {
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                // Tell the peer what was wrong, then close: framing is lost.
                let _ = conn
                    .send(&Response::Refused {
                        reason: e.to_string(),
                    })
                    .await;
                return Err(e);
            }
        };
        let resp = handle(&inner, req, peer).await;
        conn.send(&resp).await?;
    }
    Ok(())
}

/// A refused request: the metric label and the text for the peer.
struct Refusal {
    reason: &'static str,
    detail: String,
}

fn refuse(reason: &'static str, detail: impl Into<String>) -> Refusal {
    Refusal {
        reason,
        detail: detail.into(),
    }
}

impl Inner {
    /// The verified grant of a request, when the policy asks for one (`None` under
    /// [`GrantPolicy::LinkOnly`]).
    fn grant<'g>(&self, grant: &'g Option<SignedGrant>) -> Result<Option<&'g Grant>, Refusal> {
        let GrantPolicy::RcSigned(rc) = &self.grants else {
            return Ok(None);
        };
        let rcs = rc.all();
        if rcs.is_empty() {
            return Err(refuse("no_rc", "this node does not know its RC yet"));
        }
        let g = grant
            .as_ref()
            .ok_or_else(|| refuse("no_grant", "a grant from the RC is required"))?;
        // The current RC first; a grant from an earlier leader of the RC group stays valid.
        let mut last = None;
        for rc in &rcs {
            match self.verified.verify(g, rc) {
                Ok(g) => return Ok(Some(g)),
                Err(e) => last = Some(e),
            }
        }
        Err(refuse(
            "bad_signature",
            last.map(|e| e.to_string()).unwrap_or_default(),
        ))
    }

    /// A holder's request (replicate, latest): `peer` is the grant's holder, this node is one
    /// of its replicas or sources, for `session` at `epoch` (when the request names one).
    fn check_holder(
        &self,
        peer: &Did,
        grant: &Option<SignedGrant>,
        session: &SessionId,
        epoch: Option<Epoch>,
    ) -> Result<(), Refusal> {
        let Some(g) = self.grant(grant)? else {
            return Ok(());
        };
        if g.session != *session {
            return Err(refuse(
                "wrong_session",
                format!("the grant is for {}, not {session}", g.session),
            ));
        }
        if let Some(e) = epoch {
            if g.epoch != e {
                return Err(refuse(
                    "wrong_epoch",
                    format!("the grant is for epoch {}, not {e}", g.epoch),
                ));
            }
        }
        if g.holder != *peer {
            return Err(refuse(
                "not_holder",
                format!("{peer} is not the holder of {session} at {}", g.epoch),
            ));
        }
        if !g.designates(&self.me) {
            return Err(refuse(
                "not_designated",
                format!("this node is not designated for {session} at {}", g.epoch),
            ));
        }
        Ok(())
    }

    /// A handover's first step: this node is the grant's holder-to-be, `peer` its source.
    fn check_prepare(
        &self,
        peer: &Did,
        grant: &Option<SignedGrant>,
        session: &SessionId,
        epoch: Epoch,
    ) -> Result<(), Refusal> {
        let Some(g) = self.grant(grant)? else {
            return Ok(());
        };
        if g.session != *session {
            return Err(refuse(
                "wrong_session",
                format!("the grant is for {}, not {session}", g.session),
            ));
        }
        if g.epoch != epoch {
            return Err(refuse(
                "wrong_epoch",
                format!("the grant is for epoch {}, not {epoch}", g.epoch),
            ));
        }
        if g.holder != self.me {
            return Err(refuse(
                "not_designated",
                format!("this node is not the target of {session} at {epoch}"),
            ));
        }
        if !g.sources.contains(peer) {
            return Err(refuse(
                "not_source",
                format!("{peer} is not the holder handing {session} over"),
            ));
        }
        Ok(())
    }

    /// Transfer / activate / abort: only the peer that prepared.
    fn check_preparer(&self, peer: &Did, session: &SessionId) -> Result<(), Refusal> {
        match lock(&self.handover_source).get(session) {
            Some(src) if src == peer => Ok(()),
            Some(_) => Err(refuse(
                "not_source",
                format!("{session} was prepared by another peer"),
            )),
            None => Err(refuse(
                "not_source",
                format!("no handover of {session} was prepared by {peer}"),
            )),
        }
    }

    /// Forward: only the peer the session was activated from.
    fn check_forwarder(&self, peer: &Did, session: &SessionId) -> Result<(), Refusal> {
        match lock(&self.activated_from).get(session) {
            Some(src) if src == peer => Ok(()),
            _ => Err(refuse(
                "not_source",
                format!("{peer} did not hand {session} over to this node"),
            )),
        }
    }

    /// Counts and (throttled) logs a refusal; the answer to send.
    fn refused(&self, peer: &Did, req: &'static str, r: Refusal) -> Response {
        self.refused.add(1, &[KeyValue::new("reason", r.reason)]);
        let now = Instant::now();
        let log = {
            let mut l = lock(&self.refusal_logged);
            match l.get(r.reason) {
                Some(t) if now.saturating_duration_since(*t) < Duration::from_secs(1) => false,
                _ => {
                    l.insert(r.reason, now);
                    true
                }
            }
        };
        if log {
            tracing::warn!(%peer, req, reason = r.reason, detail = %r.detail, "migration request refused (further ones this second are only counted)");
        } else {
            tracing::debug!(%peer, req, reason = r.reason, detail = %r.detail, "migration request refused");
        }
        Response::Unauthorized { reason: r.detail }
    }
}

/// Authorizes `req` from `peer`; `Err` is the answer to send instead of handling it.
fn authorize(inner: &Inner, peer: &Did, req: &Request) -> Result<(), Response> {
    let r = match req {
        Request::Ping => Ok(()),
        Request::Replicate { checkpoint, grant } => match Checkpoint::decode(checkpoint) {
            Ok(cp) => inner.check_holder(peer, grant, &cp.session_id, Some(cp.epoch)),
            // Undecodable: handled (refused) as before, nothing is written.
            Err(_) => Ok(()),
        },
        Request::Latest { session, grant } | Request::Present { session, grant } => {
            inner.check_holder(peer, grant, session, None)
        }
        Request::Prepare {
            session,
            epoch,
            grant,
            ..
        } => inner.check_prepare(peer, grant, session, *epoch),
        Request::Transfer { session, .. }
        | Request::Activate { session, .. }
        | Request::Abort { session, .. } => inner.check_preparer(peer, session),
        Request::Forward { session, .. } => inner.check_forwarder(peer, session),
    };
    r.map_err(|refusal| inner.refused(peer, req_name(req), refusal))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes `cp` to the local store on a blocking-pool thread (an fsync'd write), so that the
/// server's one `og-migrate` worker keeps reading and answering other connections meanwhile and
/// concurrent writes share one WAL sync (RocksDB's write groups) instead of queueing behind
/// each other's fsync (issue #20: failover restores and replica writes were bound by this).
/// A write of the same session is serialized by the store itself (its per-session stripes).
async fn put_tolerant(local: &Arc<dyn CheckpointStore>, cp: Checkpoint) -> Response {
    put_tolerant_keep(local, cp).await.0
}

/// [`put_tolerant`], handing the checkpoint back (`None` only if the write task died).
async fn put_tolerant_keep(
    local: &Arc<dyn CheckpointStore>,
    cp: Checkpoint,
) -> (Response, Option<Checkpoint>) {
    let local = local.clone();
    let put = tokio::task::spawn_blocking(move || {
        let r = local.put(&cp);
        (r, cp)
    })
    .await;
    let (put, cp) = match put {
        Ok((r, cp)) => (r, Some(cp)),
        Err(e) => (
            Err(StoreError::Backend(format!("checkpoint write task: {e}"))),
            None,
        ),
    };
    let answer = match put {
        Ok(()) | Err(StoreError::StaleSeq { .. }) => Response::Ok,
        Err(StoreError::StaleEpoch { current, .. }) => Response::Fenced { current },
        Err(e) => Response::Refused {
            reason: e.to_string(),
        },
    };
    (answer, cp)
}

#[tracing::instrument(skip_all, fields(req = req_name(&req), peer = %peer))]
async fn handle(inner: &Inner, req: Request, peer: &Did) -> Response {
    if let Err(refused) = authorize(inner, peer, &req) {
        return refused;
    }
    match req {
        Request::Ping => Response::Pong,
        // Checked (and the grant remembered) by `authorize`.
        Request::Present { .. } => Response::Ok,
        Request::Replicate { checkpoint, .. } => match Checkpoint::decode(&checkpoint) {
            Ok(cp) => put_tolerant(&inner.local, cp).await,
            Err(e) => Response::Refused {
                reason: format!("replica: {e}"),
            },
        },
        Request::Prepare {
            session,
            handler,
            policy,
            epoch,
            replicas,
            grant,
        } => {
            if let Some(s) = inner.host.get(&session) {
                use opengrid_actors::SessionStatus as St;
                if matches!(
                    s.status(),
                    St::Moved { .. } | St::Stopped { .. } | St::Closed
                ) {
                    // A former incarnation (moved away, or fenced): it is coming back here.
                    // Releasing it also ends its relaying to the holder it moved to.
                    let _ = inner.host.release(&session).await;
                } else {
                    return Response::Refused {
                        reason: format!("session {session} already hosted here"),
                    };
                }
            }
            if let Ok(Some(cur)) = inner.local.current_epoch(&session) {
                if cur >= epoch {
                    return Response::Fenced { current: cur };
                }
            }
            inner.admit.ready(&session, &handler).await;
            if let Err(reason) = inner.admit.admit(&session, &handler) {
                return Response::Refused { reason };
            }
            lock(&inner.handover_source).insert(session.clone(), peer.clone());
            inner.admit.prepared(&session, &replicas, grant.as_ref());
            let mut p = lock(&inner.prepared);
            p.retain(|_, v| v.at.elapsed() < RESERVATION_TTL);
            p.insert(
                session,
                Prepared {
                    handler,
                    policy,
                    epoch,
                    replicas,
                    source: peer.clone(),
                    grant,
                    at: Instant::now(),
                },
            );
            Response::Ready
        }
        Request::Transfer {
            session,
            checkpoint,
        } => {
            if !lock(&inner.prepared).contains_key(&session) {
                return Response::Refused {
                    reason: format!("no prepared handover for {session}"),
                };
            }
            crate::fault::pause("transfer").await;
            match Checkpoint::decode(&checkpoint) {
                Ok(cp) if cp.session_id == session => put_tolerant(&inner.local, cp).await,
                Ok(cp) => Response::Refused {
                    reason: format!("checkpoint is for {}", cp.session_id),
                },
                Err(e) => Response::Refused {
                    reason: e.to_string(),
                },
            }
        }
        Request::Activate {
            session,
            checkpoint,
            epoch,
        } => {
            if lock(&inner.activated).get(&session) == Some(&epoch) {
                return Response::AlreadyActive { epoch };
            }
            let Some(prep) = lock(&inner.prepared).remove(&session) else {
                return Response::Refused {
                    reason: format!("no prepared handover for {session}"),
                };
            };
            if prep.epoch != epoch {
                return Response::Refused {
                    reason: format!("prepared for {} not {}", prep.epoch, epoch),
                };
            }
            let cp = match Checkpoint::decode(&checkpoint) {
                Ok(cp) if cp.session_id == session => cp,
                Ok(_) => {
                    return Response::Refused {
                        reason: "checkpoint for another session".into(),
                    }
                }
                Err(e) => {
                    return Response::Refused {
                        reason: e.to_string(),
                    }
                }
            };
            crate::fault::pause("activate").await;
            let cp = match put_tolerant_keep(&inner.local, cp).await {
                (Response::Ok, Some(cp)) => cp,
                (Response::Ok, None) => {
                    return Response::Refused {
                        reason: "checkpoint write task failed".into(),
                    }
                }
                (other, _) => return other,
            };
            {
                let mut d = lock(&inner.decisions);
                if d.aborted.remove(&(session.clone(), epoch)).is_some() {
                    return Response::Refused {
                        reason: format!("handover of {session} to {epoch} was aborted"),
                    };
                }
                d.committing.insert(session.clone(), epoch);
            }
            inner
                .admit
                .activating(&session, &prep.replicas, prep.grant.as_ref());
            // The state under the new epoch, written before serving: the new replica set (and
            // this node) hold it and refuse the old epoch from now on.
            let bumped = cp.restamped(epoch);
            let store = inner.host.store().clone();
            let wrote = tokio::task::spawn_blocking(move || store.put(&bumped)).await;
            let r = match wrote {
                Ok(Ok(())) | Ok(Err(StoreError::StaleSeq { .. })) => {
                    inner
                        .host
                        .start_dyn(&prep.handler, session.clone(), epoch, prep.policy)
                        .await
                }
                Ok(Err(e)) => Err(opengrid_actors::SessionError::Stopped {
                    session: session.clone(),
                    reason: format!("writing the new epoch's checkpoint: {e}"),
                }),
                Err(e) => Err(opengrid_actors::SessionError::Stopped {
                    session: session.clone(),
                    reason: format!("checkpoint task: {e}"),
                }),
            };
            let resp = match r {
                Ok(_) => {
                    lock(&inner.activated).insert(session.clone(), epoch);
                    lock(&inner.activated_from).insert(session.clone(), prep.source.clone());
                    inner.admit.activated(&session, epoch);
                    Response::Activated { epoch }
                }
                Err(e) => Response::Refused {
                    reason: format!("activation failed: {e}"),
                },
            };
            lock(&inner.decisions).committing.remove(&session);
            resp
        }
        Request::Abort { session, epoch } => {
            if lock(&inner.activated).get(&session) == Some(&epoch) {
                return Response::AlreadyActive { epoch };
            }
            let committing = {
                let mut d = lock(&inner.decisions);
                if d.committing.get(&session) == Some(&epoch) {
                    true
                } else {
                    d.aborted.retain(|_, at| at.elapsed() < RESERVATION_TTL);
                    d.aborted.insert((session.clone(), epoch), Instant::now());
                    false
                }
            };
            if committing {
                // Too late to abort: the start is under way; answer with its outcome.
                let deadline = Instant::now() + Duration::from_secs(10);
                while lock(&inner.decisions).committing.get(&session) == Some(&epoch)
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                if lock(&inner.activated).get(&session) == Some(&epoch) {
                    return Response::AlreadyActive { epoch };
                }
            }
            lock(&inner.prepared).remove(&session);
            Response::Ok
        }
        Request::Forward {
            session,
            seq,
            input,
        } => {
            let result = match inner.host.get(&session) {
                None => Err(opengrid_actors::SessionError::NotFound { session }),
                Some(s) => match serde_json::from_str(&input) {
                    Ok(v) => s.send_json(seq, v).await,
                    Err(e) => Err(opengrid_actors::SessionError::BadInput {
                        session,
                        reason: e.to_string(),
                    }),
                },
            };
            Response::Forwarded {
                json: serde_json::to_string(&result)
                    .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")),
            }
        }
        Request::Latest { session, .. } => match inner.local.get_latest(&session) {
            Ok(cp) => Response::Checkpoint {
                checkpoint: cp.map(|c| c.encode()),
            },
            Err(e) => Response::Refused {
                reason: e.to_string(),
            },
        },
    }
}

fn req_name(r: &Request) -> &'static str {
    match r {
        Request::Replicate { .. } => "replicate",
        Request::Prepare { .. } => "prepare",
        Request::Transfer { .. } => "transfer",
        Request::Activate { .. } => "activate",
        Request::Abort { .. } => "abort",
        Request::Forward { .. } => "forward",
        Request::Latest { .. } => "latest",
        Request::Ping => "ping",
        Request::Present { .. } => "present",
    }
}

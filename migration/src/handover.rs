//! Planned handover (make-before-break) from the source node's side, and failover restore.
//!
//! Steps (ARCHITECTURE.md, modelled on LTE X2 handover and live VM pre-copy), driven through the
//! session's [`Transfer`] capability (`suspend` / `resume` / `complete`) from the host:
//! 1. **prepare** — the target admits and reserves the session;
//! 2. **pre-copy** — checkpoints are copied while the source keeps serving, repeated while the
//!    session moves on (deltas for large state);
//! 3. **freeze** — the source stops taking inputs, drains what is queued, writes a final
//!    checkpoint; inputs arriving now wait;
//! 4. **activate** — the target installs the final checkpoint and starts the session with
//!    epoch + 1; the source marks the session moved and relays the waiting inputs (and any that
//!    still arrive) to the target (X2 data forwarding), so clients see answers, then `moved`;
//! 5. **release** — the source's actor stops; its stale-epoch checkpoints are fenced everywhere.
//!
//! Any failure before 4 (target refuses, dies, times out, the network cuts) aborts: the source is
//! unfrozen and keeps serving with its epoch; nothing is lost. An activation reply that misses the
//! blackout budget triggers an abort whose answer tells the truth (`AlreadyActive` means the
//! target won the race and the handover completed), so a session is never active twice.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use opengrid_actors::{DynSession, MovedTo, Relay, Reply, SessionError, SessionHost, Transfer};
use opengrid_codec::{FrameError, Framed};
use opengrid_link::{ClientStream, Link};
use opengrid_session::{Checkpoint, CheckpointStore, Epoch, Seq, SessionId};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::wire::{client_codec, ClientCodec, Request, Response};

/// Why a handover did not complete. The source is serving again in every case.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The session is not hosted here.
    #[error("session {0} is not hosted on this node")]
    NotHere(SessionId),
    /// The manifest forbids live handover (`cost = "never-live"`).
    #[error("session {0} is never-live: it is checkpointed and restarted instead of handed over")]
    NeverLive(SessionId),
    /// Aborted at `step`; the source keeps serving.
    #[error("handover of {session} aborted at {step}: {reason}; the source keeps serving")]
    Aborted {
        /// The session.
        session: SessionId,
        /// prepare | pre-copy | freeze | activate.
        step: &'static str,
        /// Why.
        reason: String,
    },
}

/// What a completed handover measured.
#[derive(Debug, Clone, Serialize)]
pub struct HandoverReport {
    /// The session.
    pub session: SessionId,
    /// Epoch now serving on the target.
    pub epoch: Epoch,
    /// Freeze → target active.
    pub blackout: Duration,
    /// Its first part, on the source: freeze → final checkpoint written (and replicated). The
    /// rest is the activation on the target.
    pub freeze: Duration,
    /// Trigger → source released.
    pub total: Duration,
    /// Pre-copy rounds.
    pub precopy_rounds: u32,
    /// Bytes of the final checkpoint.
    pub state_bytes: usize,
    /// Seq covered by the final checkpoint.
    pub final_seq: Seq,
}

/// A connection to a peer's migration server (one in-flight request at a time; reconnects),
/// over an authenticated link: the server must prove a DID the [`Link`] policy allows.
pub struct Peer {
    addr: SocketAddr,
    link: Link,
    conn: Mutex<Option<Framed<ClientStream<TcpStream>, ClientCodec>>>,
    timeout: Duration,
}

impl Peer {
    /// A peer at `addr`, reached over `link` (connects lazily; the connection is kept, so the
    /// handshake is paid once per connection, not per request).
    pub fn new(addr: SocketAddr, link: Link, timeout: Duration) -> Arc<Self> {
        Arc::new(Peer {
            addr,
            link,
            conn: Mutex::new(None),
            timeout,
        })
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends a request and waits (bounded by the timeout) for the answer.
    pub async fn call(&self, req: &Request) -> Result<Response, FrameError> {
        self.call_within(req, self.timeout).await
    }

    /// As [`call`](Self::call) with an explicit time budget.
    pub async fn call_within(
        &self,
        req: &Request,
        budget: Duration,
    ) -> Result<Response, FrameError> {
        let mut g = self.conn.lock().await;
        // The connection is taken out for the exchange and put back only after a complete
        // request/response pair: a failed or abandoned exchange drops it, so a late answer is
        // never read as the answer to the next request.
        let conn = g.take();
        let fut = async {
            let mut conn = match conn {
                Some(c) => c,
                None => {
                    let s = TcpStream::connect(self.addr).await?;
                    s.set_nodelay(true)?;
                    let (tls, _did) = self.link.connect(s, None).await.map_err(|e| {
                        FrameError::Io(std::io::Error::new(
                            std::io::ErrorKind::PermissionDenied,
                            format!("migration link to {}: {e}", self.addr),
                        ))
                    })?;
                    client_codec().framed(tls)
                }
            };
            conn.send(req).await?;
            let resp = conn.next().await.ok_or(FrameError::Closed)??;
            Ok((conn, resp))
        };
        match tokio::time::timeout(budget, fut).await {
            Ok(Ok((conn, resp))) => {
                *g = Some(conn);
                Ok(resp)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(FrameError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer from {} within {budget:?}", self.addr),
            ))),
        }
    }
}

/// Relays inputs that reach the old holder to the new one (X2 data forwarding), through the new
/// holder's migration server.
pub struct PeerRelay {
    /// The new holder's migration server.
    pub peer: Arc<Peer>,
}

impl Relay for PeerRelay {
    fn relay(
        &self,
        session: &SessionId,
        seq: Seq,
        input: serde_json::Value,
    ) -> BoxFuture<'static, Result<Reply<serde_json::Value>, SessionError>> {
        let peer = self.peer.clone();
        let session = session.clone();
        Box::pin(async move {
            let req = Request::Forward {
                session: session.clone(),
                seq,
                input: input.to_string(),
            };
            match peer.call(&req).await {
                Ok(Response::Forwarded { json }) => {
                    serde_json::from_str::<Result<Reply<serde_json::Value>, SessionError>>(&json)
                        .unwrap_or_else(|e| {
                            Err(SessionError::BadInput {
                                session,
                                reason: format!("forwarded answer: {e}"),
                            })
                        })
                }
                Ok(other) => Err(SessionError::Restarting {
                    session: session.clone(),
                })
                .inspect_err(|_| tracing::warn!(?other, %session, "unexpected forward answer")),
                Err(e) => {
                    tracing::warn!(error = %e, %session, "forwarding failed");
                    Err(SessionError::Restarting { session })
                }
            }
        })
    }
}

/// Options of one handover.
#[derive(Clone, Debug)]
pub struct HandoverOptions {
    /// Client-facing address of the target (for `moved`).
    pub location: String,
    /// Most pre-copy rounds.
    pub max_precopy_rounds: u32,
    /// Blackout budget when the manifest has none.
    pub default_max_blackout: Duration,
    /// Budget of each non-blackout step.
    pub step_timeout: Duration,
    /// Replica set of the session on the target (its migration servers).
    pub target_replicas: Vec<SocketAddr>,
    /// The RC's grant of the new epoch to the target (presented in `Prepare`).
    pub grant: Option<crate::grant::SignedGrant>,
}

impl Default for HandoverOptions {
    fn default() -> Self {
        HandoverOptions {
            location: String::new(),
            max_precopy_rounds: 3,
            default_max_blackout: Duration::from_millis(500),
            step_timeout: Duration::from_secs(5),
            target_replicas: Vec::new(),
            grant: None,
        }
    }
}

fn refusal(r: Result<Response, FrameError>) -> String {
    match r {
        Ok(Response::Refused { reason }) => reason,
        Ok(Response::Fenced { current }) => format!("fenced by {current}"),
        Ok(Response::Unauthorized { reason }) => format!("unauthorized: {reason}"),
        Ok(other) => format!("unexpected answer {other:?}"),
        Err(e) => e.to_string(),
    }
}

/// Hands `session` (hosted on `host`, checkpointed in `store`) over to the node whose migration
/// server is `target`.
pub async fn handover(
    host: &SessionHost,
    store: &Arc<dyn CheckpointStore>,
    session: &SessionId,
    target: &Arc<Peer>,
    opts: &HandoverOptions,
) -> Result<HandoverReport, HandoverError> {
    let t0 = Instant::now();
    let not_here = || HandoverError::NotHere(session.clone());
    let s: Arc<dyn DynSession> = host.get(session).ok_or_else(not_here)?;
    let transfer: Arc<dyn Transfer> = host.transfer(session).ok_or_else(not_here)?;
    let policy = s.policy();
    if !policy.live_handover {
        return Err(HandoverError::NeverLive(session.clone()));
    }
    let new_epoch = s.epoch().next();
    let abort = |step: &'static str, reason: String| HandoverError::Aborted {
        session: session.clone(),
        step,
        reason,
    };
    // 1. prepare
    let r = target
        .call_within(
            &Request::Prepare {
                session: session.clone(),
                handler: s.handler_id().to_string(),
                policy,
                epoch: new_epoch,
                replicas: opts.target_replicas.clone(),
                grant: opts.grant.clone(),
            },
            opts.step_timeout,
        )
        .await;
    if !matches!(r, Ok(Response::Ready)) {
        return Err(abort("prepare", refusal(r)));
    }
    let abort_target = || async {
        let _ = target
            .call_within(
                &Request::Abort {
                    session: session.clone(),
                    epoch: new_epoch,
                },
                opts.step_timeout,
            )
            .await;
    };
    // 2. pre-copy while serving
    let mut rounds = 0;
    let mut copied = None;
    while rounds < opts.max_precopy_rounds {
        let seq = match s.checkpoint_now().await {
            Ok(q) => q,
            // Hibernated (no actor running): its newest checkpoint is already in the store.
            Err(SessionError::NotFound { .. })
                if store.get_latest(session).ok().flatten().is_some() =>
            {
                store
                    .get_latest(session)
                    .ok()
                    .flatten()
                    .map(|c| c.seq)
                    .unwrap_or_default()
            }
            Err(e) => {
                abort_target().await;
                return Err(abort("pre-copy", e.to_string()));
            }
        };
        if copied == Some(seq) {
            break;
        }
        let cp = match store.get_latest(session) {
            Ok(Some(cp)) => cp,
            other => {
                abort_target().await;
                return Err(abort("pre-copy", format!("no local checkpoint: {other:?}")));
            }
        };
        let r = target
            .call_within(
                &Request::Transfer {
                    session: session.clone(),
                    checkpoint: cp.encode(),
                },
                opts.step_timeout,
            )
            .await;
        if !matches!(r, Ok(Response::Ok)) {
            abort_target().await;
            return Err(abort("pre-copy", refusal(r)));
        }
        copied = Some(seq);
        rounds += 1;
    }
    // 3. freeze
    let t_freeze = Instant::now();
    let final_seq = match transfer.suspend().await {
        Ok(q) => q,
        Err(e) => {
            transfer.resume();
            abort_target().await;
            return Err(abort("freeze", e.to_string()));
        }
    };
    let cp: Checkpoint = match store.get_latest(session) {
        Ok(Some(cp)) if cp.seq == final_seq => cp,
        other => {
            transfer.resume();
            abort_target().await;
            return Err(abort(
                "freeze",
                format!(
                    "final checkpoint missing: froze at {final_seq} (epoch {}), newest stored: {other:?}",
                    s.epoch()
                ),
            ));
        }
    };
    let state_bytes = cp.state.len();
    let freeze = t_freeze.elapsed();
    crate::fault::pause("freeze").await;
    // 4. activate within the blackout budget
    let budget = policy
        .max_blackout
        .unwrap_or(opts.default_max_blackout)
        .saturating_sub(t_freeze.elapsed());
    let r = target
        .call_within(
            &Request::Activate {
                session: session.clone(),
                checkpoint: cp.encode(),
                epoch: new_epoch,
            },
            budget,
        )
        .await;
    let activated = match r {
        Ok(Response::Activated { epoch }) => Some(epoch),
        other => {
            // Too late or refused: abort, and believe the target's answer about who is active.
            match target
                .call_within(&Request::Abort { session: session.clone(), epoch: new_epoch }, opts.step_timeout)
                .await
            {
                Ok(Response::AlreadyActive { epoch }) => Some(epoch),
                Ok(Response::Ok) => None,
                // Target unreachable: it may have activated. Stay frozen would block clients;
                // the target cannot have activated without the Activate request having arrived,
                // and if it did, the replicas fence this (older) epoch on its next checkpoint.
                _ => None,
            }
            .or_else(|| {
                tracing::warn!(%session, answer = %refusal(other), "activation failed; source resumes");
                None
            })
        }
    };
    let Some(epoch) = activated else {
        transfer.resume();
        return Err(abort(
            "activate",
            format!(
                "target did not activate within the {:?} blackout budget",
                policy.max_blackout.unwrap_or(opts.default_max_blackout)
            ),
        ));
    };
    let blackout = t_freeze.elapsed();
    // 5. redirect + forward, release
    transfer
        .complete(
            MovedTo {
                location: opts.location.clone(),
                epoch,
            },
            Some(Arc::new(PeerRelay {
                peer: target.clone(),
            })),
        )
        .await;
    Ok(HandoverReport {
        session: session.clone(),
        epoch,
        blackout,
        freeze,
        total: t0.elapsed(),
        precopy_rounds: rounds,
        state_bytes,
        final_seq,
    })
}

/// Failover: restores `session` on this node from the newest checkpoint in its local store (a
/// replica), with `epoch` (the RC's new epoch, above every epoch seen). The old holder is fenced
/// by the replicas from then on.
pub async fn restore(
    host: &SessionHost,
    session: &SessionId,
    handler: &str,
    epoch: Epoch,
    policy: opengrid_session::CheckpointPolicy,
) -> Result<Arc<dyn DynSession>, SessionError> {
    host.start_dyn(handler, session.clone(), epoch, policy)
        .await
}

//! The HTTP server loop of the node and RC client APIs, with the limits `axum::serve` does not
//! set: a cap on open connections (beyond it a new connection is closed at once and counted), and
//! a header-read timeout that also closes connections that send nothing — a fresh idle one, or a
//! keep-alive one between requests — so idle or slow-header ("slowloris") connections cannot hold
//! the server's sockets. Upgraded connections (WebSocket) and long responses (server-sent events)
//! are not cut: the timeout covers reading a request's head only.
//!
//! Shutdown stops accepting, asks every open connection to finish its request, and waits at most
//! [`SHUTDOWN_GRACE`] for them.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use opentelemetry::metrics::Counter;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// Idle pooled connections are dropped by this crate's HTTP clients after this, well before a
/// server's default `header_timeout` (30 s) closes them, so a client never sends a request on a
/// connection the server is closing.
pub const CLIENT_POOL_IDLE: Duration = Duration::from_secs(15);

/// Default `max_connections` of a node or RC.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default `header_timeout` of a node or RC.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a stopping server waits for open connections to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Connection limits of one HTTP server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServeLimits {
    /// Open connections at most; more are closed as they arrive.
    pub max_connections: usize,
    /// A request head (or, on an idle connection, its first byte) must arrive within this.
    pub header_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown` resolves. `refused` counts connections closed
/// because `max_connections` were open.
///
/// HTTP/1.1 only, through hyper's HTTP/1 connection directly: the clients of this API speak it,
/// and hyper-util's protocol detection reads the first bytes with no timeout (an idle connection
/// would sit there forever).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    refused: Counter<u64>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let refused_log = crate::common::throttle::Throttle::new(Duration::from_secs(30));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refused.add(1, &[]);
            if let Some(held) = refused_log.allow(std::time::Instant::now()) {
                tracing::warn!(%peer, max = limits.max_connections, repeats = held, "connection refused: too many open connections");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Handlers see the peer's address (`ConnectInfo`): per-client quotas.
        let svc = TowerToHyperService::new(tower::ServiceExt::map_request(
            router.clone(),
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                req
            },
        ));
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .with_upgrades();
        let mut stop = stop_rx.clone();
        conns.spawn(async move {
            tokio::pin!(conn);
            let done = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = async { let _ = stop.wait_for(|s| *s).await; } => None,
            };
            let r = match done {
                Some(r) => r,
                None => {
                    // Finish the request in flight, then close.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!("connections still open after the shutdown grace; dropping them");
        conns.abort_all();
    }
}

/// Ports [`free_local_port`] picks from: below Linux's default ephemeral range (32768..=60999),
/// so no process binding port 0 (or dialling out) is handed the same port in the meantime.
pub const PICKED_PORTS: std::ops::RangeInclusive<u16> = 20_000..=32_000;

/// A 127.0.0.1 TCP port that was free a moment ago, for launchers that must write a port into a
/// config before the process that listens on it starts (the demo, the chaos harness, tests).
/// Random in [`PICKED_PORTS`], checked by binding it; after 200 taken ports, an ephemeral one.
pub fn free_local_port() -> std::io::Result<u16> {
    for _ in 0..200 {
        let p = rand::random_range(PICKED_PORTS);
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return Ok(p);
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

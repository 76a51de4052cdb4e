//! A fault-injecting TCP proxy: one instance per directed link (the connections process A opens
//! to process B's listening port). It wraps the real transport (STYLE.md habit 9): bytes flow
//! through real sockets on 127.0.0.1 and the faults are applied to them, no privileges needed.
//!
//! Faults, changed at run time through a [`ProxyHandle`]:
//! - **partition** — new connections are refused (closed at once with a reset) or stalled (held,
//!   not connected to the target, until healed); existing connections are cut with a reset;
//! - **latency + jitter** — every chunk is delivered `latency ± jitter` after it was read (a delay
//!   line, so throughput is kept and order is preserved; the jitter comes from a seeded RNG);
//! - **loss** — with probability `p` per chunk the connection is dropped (reset), or stalled
//!   until the fault is lifted (a byte stream cannot lose bytes and stay correct, so loss on TCP
//!   shows up to the application as exactly these two things);
//! - **bandwidth** — a token bucket per direction, shared by the link's connections (bytes/s);
//! - **heal** — clears every fault; stalled connections resume, new ones connect.
//!
//! Every buffer is bounded: chunks of at most [`ProxyConfig::chunk`] bytes, at most
//! [`ProxyConfig::delay_line`] chunks in flight per direction, at most
//! [`ProxyConfig::max_held`] held (stalled) connections. Bytes and faults are counted in
//! [`ProxyStats`].

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// How a partition treats new connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartitionMode {
    /// Accept and reset at once (the peer sees "connection reset").
    Refuse,
    /// Accept and hold without connecting to the target until healed (the peer sees a hang).
    Stall,
}

/// What a lost chunk does to its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossMode {
    /// Reset the connection.
    Drop,
    /// Stop forwarding on this connection until the loss fault is lifted.
    Stall,
}

/// Loss emulation on a byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Loss {
    /// Probability per chunk, 0..=1.
    pub p: f64,
    /// What happens on a loss.
    pub mode: LossMode,
}

/// The faults currently applied to a link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Faults {
    /// Partitioned, and how.
    pub partition: Option<PartitionMode>,
    /// Added one-way delay per chunk.
    pub latency: Duration,
    /// Uniform jitter around `latency` (never below zero).
    pub jitter: Duration,
    /// Loss emulation.
    pub loss: Option<Loss>,
    /// Bytes per second per direction.
    pub bandwidth: Option<u64>,
}

impl Faults {
    /// No fault at all.
    pub fn is_healed(&self) -> bool {
        *self == Faults::default()
    }
}

/// Proxy settings.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Where to listen (default `127.0.0.1:0`).
    pub listen: SocketAddr,
    /// Where to forward.
    pub target: SocketAddr,
    /// Seed of the jitter and loss RNG (each connection derives its own stream from it).
    pub seed: u64,
    /// Largest chunk read at once.
    pub chunk: usize,
    /// Chunks in flight per direction of a connection (the delay line's bound).
    pub delay_line: usize,
    /// Connections held during a stall partition; more are refused.
    pub max_held: usize,
    /// Connect timeout towards the target.
    pub connect_timeout: Duration,
}

impl ProxyConfig {
    /// Defaults for a link to `target`.
    pub fn new(target: SocketAddr, seed: u64) -> Self {
        ProxyConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            target,
            seed,
            chunk: 16 << 10,
            delay_line: 64,
            max_held: 256,
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// Counters of one proxy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyStats {
    /// Connections accepted from clients.
    pub accepted: u64,
    /// Connections currently open (both sides connected).
    pub open: u64,
    /// Connections refused by a partition (or by the held-connection bound).
    pub refused: u64,
    /// Connections held by a stall partition so far.
    pub held: u64,
    /// Open connections cut by a partition.
    pub cut: u64,
    /// Connections dropped by loss emulation.
    pub loss_drops: u64,
    /// Connections stalled by loss emulation.
    pub loss_stalls: u64,
    /// Connections that could not reach the target.
    pub target_failures: u64,
    /// Bytes client → target.
    pub bytes_up: u64,
    /// Bytes target → client.
    pub bytes_down: u64,
    /// Chunks that waited for bandwidth tokens.
    pub throttled_chunks: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    open: AtomicU64,
    refused: AtomicU64,
    held: AtomicU64,
    cut: AtomicU64,
    loss_drops: AtomicU64,
    loss_stalls: AtomicU64,
    target_failures: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    throttled_chunks: AtomicU64,
}

/// A token bucket: `rate` bytes/s with bursts up to `burst` bytes. Pure over the given clock.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at time `now`.
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        let rate = rate.max(1) as f64;
        let burst = (burst.max(1)) as f64;
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Its rate in bytes/s.
    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    /// Takes `n` bytes at time `now`; returns how long the caller must wait before sending them
    /// (the bucket goes into debt, so consecutive callers queue up behind each other).
    pub fn take(&mut self, n: usize, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

struct Shared {
    cfg: ProxyConfig,
    faults: Mutex<Faults>,
    changed: watch::Sender<u64>,
    counters: Counters,
    held_now: AtomicUsize,
    next_conn: AtomicU64,
    /// Token buckets per direction (up, down); rebuilt when the rate changes.
    buckets: [Mutex<Option<TokenBucket>>; 2],
}

impl Shared {
    fn faults(&self) -> Faults {
        *self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Controls a running proxy; cheap to clone.
#[derive(Clone)]
pub struct ProxyHandle {
    shared: Arc<Shared>,
}

impl ProxyHandle {
    fn update(&self, f: impl FnOnce(&mut Faults)) {
        {
            let mut g = self.shared.faults.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut g);
        }
        self.shared.changed.send_modify(|g| *g += 1);
    }

    /// Partitions the link: new connections refused or stalled, open ones cut.
    pub fn partition(&self, mode: PartitionMode) {
        self.update(|f| f.partition = Some(mode));
    }

    /// Adds `latency ± jitter` to every chunk.
    pub fn latency(&self, latency: Duration, jitter: Duration) {
        self.update(|f| {
            f.latency = latency;
            f.jitter = jitter;
        });
    }

    /// Loss emulation with probability `p` (clamped to 0..=1) per chunk.
    pub fn loss(&self, p: f64, mode: LossMode) {
        let p = if p.is_finite() {
            p.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.update(|f| f.loss = Some(Loss { p, mode }));
    }

    /// Limits each direction to `bytes_per_s` (None: unlimited).
    pub fn bandwidth(&self, bytes_per_s: Option<u64>) {
        self.update(|f| f.bandwidth = bytes_per_s.map(|b| b.max(1)));
    }

    /// Replaces every fault at once.
    pub fn set(&self, faults: Faults) {
        self.update(|f| *f = faults);
    }

    /// Clears every fault.
    pub fn heal(&self) {
        self.update(|f| *f = Faults::default());
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.shared.faults()
    }

    /// Counters so far.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProxyStats {
            accepted: l(&c.accepted),
            open: l(&c.open),
            refused: l(&c.refused),
            held: l(&c.held),
            cut: l(&c.cut),
            loss_drops: l(&c.loss_drops),
            loss_stalls: l(&c.loss_stalls),
            target_failures: l(&c.target_failures),
            bytes_up: l(&c.bytes_up),
            bytes_down: l(&c.bytes_down),
            throttled_chunks: l(&c.throttled_chunks),
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.shared.cfg.listen
    }

    /// The address the proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.shared.cfg.target
    }
}

/// A running proxy. Dropping it stops accepting and closes every connection it carries.
pub struct Proxy {
    handle: ProxyHandle,
    task: tokio::task::JoinHandle<()>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    /// Binds and starts forwarding on the current tokio runtime.
    pub async fn start(mut cfg: ProxyConfig) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(cfg.listen).await?;
        cfg.listen = listener.local_addr()?;
        cfg.chunk = cfg.chunk.max(1);
        cfg.delay_line = cfg.delay_line.max(1);
        let (changed, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            cfg,
            faults: Mutex::new(Faults::default()),
            changed,
            counters: Counters::default(),
            held_now: AtomicUsize::new(0),
            next_conn: AtomicU64::new(0),
            buckets: [Mutex::new(None), Mutex::new(None)],
        });
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let s2 = shared.clone();
        let c2 = conns.clone();
        let task = tokio::spawn(async move {
            loop {
                let (sock, _) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "proxy accept failed");
                        // Out of descriptors and the like: back off briefly instead of spinning.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                s2.counters.accepted.fetch_add(1, Ordering::Relaxed);
                let id = s2.next_conn.fetch_add(1, Ordering::Relaxed);
                let h = tokio::spawn(connection(s2.clone(), sock, id));
                let mut c = c2.lock().unwrap_or_else(|p| p.into_inner());
                c.retain(|h| !h.is_finished());
                c.push(h.abort_handle());
            }
        });
        Ok(Proxy {
            handle: ProxyHandle { shared },
            task,
            conns,
        })
    }

    /// The control handle.
    pub fn handle(&self) -> ProxyHandle {
        self.handle.clone()
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.handle.addr()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        for h in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            h.abort();
        }
    }
}

fn reset(sock: TcpStream) {
    let _ = sock.set_zero_linger();
    drop(sock);
}

/// Waits until the faults satisfy `ok` (checked now and after every change).
async fn wait_for(rx: &mut watch::Receiver<u64>, shared: &Shared, ok: impl Fn(&Faults) -> bool) {
    loop {
        if ok(&shared.faults()) {
            return;
        }
        if rx.changed().await.is_err() {
            // The proxy is gone; park forever (the task is aborted with it).
            std::future::pending::<()>().await;
        }
    }
}

enum End {
    /// Loss emulation dropped the connection.
    Dropped,
    /// A socket error or the peer reset.
    Io,
}

async fn connection(shared: Arc<Shared>, client: TcpStream, id: u64) {
    let _ = client.set_nodelay(true);
    let mut rx = shared.changed.subscribe();
    match shared.faults().partition {
        Some(PartitionMode::Refuse) => {
            shared.counters.refused.fetch_add(1, Ordering::Relaxed);
            reset(client);
            return;
        }
        Some(PartitionMode::Stall) => {
            if shared.held_now.fetch_add(1, Ordering::AcqRel) >= shared.cfg.max_held {
                shared.held_now.fetch_sub(1, Ordering::AcqRel);
                shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                reset(client);
                return;
            }
            shared.counters.held.fetch_add(1, Ordering::Relaxed);
            wait_for(&mut rx, &shared, |f| f.partition.is_none()).await;
            shared.held_now.fetch_sub(1, Ordering::AcqRel);
        }
        None => {}
    }
    let target = match tokio::time::timeout(
        shared.cfg.connect_timeout,
        TcpStream::connect(shared.cfg.target),
    )
    .await
    {
        Ok(Ok(t)) => t,
        _ => {
            shared
                .counters
                .target_failures
                .fetch_add(1, Ordering::Relaxed);
            reset(client);
            return;
        }
    };
    let _ = target.set_nodelay(true);
    shared.counters.open.fetch_add(1, Ordering::Relaxed);
    let fds = [client.as_raw_fd(), target.as_raw_fd()];
    let (cr, cw) = client.into_split();
    let (tr, tw) = target.into_split();
    let seed = shared.cfg.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let up = pump(shared.clone(), cr, tw, 0, StdRng::seed_from_u64(seed), fds);
    let down = pump(shared.clone(), tr, cw, 1, StdRng::seed_from_u64(!seed), fds);
    let both = async { tokio::try_join!(up, down) };
    tokio::pin!(both);
    let mut rx2 = shared.changed.subscribe();
    let partitioned = wait_for(&mut rx2, &shared, |f| f.partition.is_some());
    let outcome = tokio::select! {
        r = &mut both => r.map(|_| ()),
        _ = partitioned => {
            // Both sockets are still owned by `both`: reset them rather than close politely.
            zero_linger(fds);
            shared.counters.cut.fetch_add(1, Ordering::Relaxed);
            Err(End::Io)
        }
    };
    if let Err(End::Dropped) = outcome {
        shared.counters.loss_drops.fetch_add(1, Ordering::Relaxed);
    }
    shared.counters.open.fetch_sub(1, Ordering::Relaxed);
}

/// Makes the next close of both sockets a reset (RST) instead of an orderly FIN.
/// Callers guarantee the descriptors are still owned by live sockets of this connection.
fn zero_linger(fds: [RawFd; 2]) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    for fd in fds {
        // SAFETY: `fd` belongs to a socket that is alive for the duration of this call (see
        // callers); setsockopt only reads `l`, whose size is passed.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&l as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    }
}

/// One direction of a connection: a reader feeding a bounded delay line, a writer draining it at
/// each chunk's due time, under the link's bandwidth limit.
async fn pump(
    shared: Arc<Shared>,
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    dir: usize,
    mut rng: StdRng,
    fds: [RawFd; 2],
) -> Result<(), End> {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(shared.cfg.delay_line);
    let s_read = shared.clone();
    let reader = async move {
        let mut changes = s_read.changed.subscribe();
        let mut last_due = Instant::now();
        loop {
            let mut buf = vec![0u8; s_read.cfg.chunk];
            let n = match from.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(_) => return Err(End::Io),
            };
            buf.truncate(n);
            let f = s_read.faults();
            if let Some(loss) = f.loss {
                if loss.p > 0.0 && rng.random::<f64>() < loss.p {
                    match loss.mode {
                        LossMode::Drop => {
                            // Both sockets are alive: `from` here, the other three in the
                            // sibling futures that are joined with this one.
                            zero_linger(fds);
                            return Err(End::Dropped);
                        }
                        LossMode::Stall => {
                            s_read.counters.loss_stalls.fetch_add(1, Ordering::Relaxed);
                            wait_for(&mut changes, &s_read, |f| f.loss.is_none()).await;
                        }
                    }
                }
            }
            let f = s_read.faults();
            let delay = jittered(f.latency, f.jitter, &mut rng);
            // Keep byte order: a chunk is never due before the previous one.
            let due = (Instant::now() + delay).max(last_due);
            last_due = due;
            if tx.send((due, buf)).await.is_err() {
                return Err(End::Io);
            }
        }
    };
    let s_write = shared;
    let writer = async move {
        while let Some((due, buf)) = rx.recv().await {
            tokio::time::sleep_until(due.into()).await;
            let limit = s_write.faults().bandwidth;
            let wait = {
                let mut b = s_write.buckets[dir]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                match limit {
                    None => {
                        *b = None;
                        Duration::ZERO
                    }
                    Some(rate) => {
                        let now = Instant::now();
                        if b.as_ref().map(|b| b.rate()) != Some(rate) {
                            // Burst: 1/20 s worth of bytes, at least one chunk.
                            let burst = (rate / 20).max(s_write.cfg.chunk as u64);
                            *b = Some(TokenBucket::new(rate, burst, now));
                        }
                        b.as_mut()
                            .map(|b| b.take(buf.len(), now))
                            .unwrap_or_default()
                    }
                }
            };
            if !wait.is_zero() {
                s_write
                    .counters
                    .throttled_chunks
                    .fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(wait).await;
            }
            if to.write_all(&buf).await.is_err() {
                return Err(End::Io);
            }
            let c = if dir == 0 {
                &s_write.counters.bytes_up
            } else {
                &s_write.counters.bytes_down
            };
            c.fetch_add(buf.len() as u64, Ordering::Relaxed);
        }
        // Reader saw EOF: pass the half-close on.
        let _ = to.shutdown().await;
        Ok(())
    };
    tokio::try_join!(reader, writer).map(|_| ())
}

/// `latency ± jitter`, uniform, never negative.
pub fn jittered(latency: Duration, jitter: Duration, rng: &mut impl Rng) -> Duration {
    if jitter.is_zero() {
        return latency;
    }
    let j = jitter.as_secs_f64();
    let d = latency.as_secs_f64() + rng.random_range(-j..=j);
    Duration::from_secs_f64(d.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_allows_burst_then_paces_at_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 100, t0);
        assert_eq!(b.take(100, t0), Duration::ZERO);
        // 100 bytes more need 0.1 s at 1000 B/s.
        let w = b.take(100, t0);
        assert!((w.as_secs_f64() - 0.1).abs() < 1e-9, "{w:?}");
        // After 0.2 s the debt is repaid and 100 tokens are back (capped at burst).
        let w = b.take(100, t0 + Duration::from_millis(300));
        assert_eq!(w, Duration::ZERO);
        // A clock going backwards never mints tokens.
        let w = b.take(100, t0);
        assert!(w > Duration::ZERO);
    }

    #[test]
    fn jitter_stays_in_range_and_is_seeded() {
        let seed = 7;
        eprintln!("seed {seed}");
        let mut a = StdRng::seed_from_u64(seed);
        let mut b = StdRng::seed_from_u64(seed);
        for _ in 0..1000 {
            let x = jittered(Duration::from_millis(10), Duration::from_millis(3), &mut a);
            assert!(x >= Duration::from_millis(7) && x <= Duration::from_millis(13));
            assert_eq!(
                x,
                jittered(Duration::from_millis(10), Duration::from_millis(3), &mut b)
            );
        }
        let x = jittered(Duration::from_millis(1), Duration::from_millis(5), &mut a);
        assert!(x <= Duration::from_millis(6));
    }
}

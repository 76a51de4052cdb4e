//! The fault-injecting proxy against a real echo server on 127.0.0.1: each fault kind has its
//! effect asserted (and heal restores service). Conditions are awaited with deadlines.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use opengrid_chaos::percentiles::Percentiles;
use opengrid_chaos::proxy::{LossMode, PartitionMode, Proxy, ProxyConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SEED: u64 = 0x5eed;

/// An echo server; returns its address (the task lives as long as the runtime).
async fn echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    a
}

async fn proxy_to(target: SocketAddr) -> Proxy {
    eprintln!("proxy seed {SEED}");
    Proxy::start(ProxyConfig::new(target, SEED)).await.unwrap()
}

/// One round trip of `n` bytes; returns its duration.
async fn round_trip(s: &mut TcpStream, n: usize) -> std::io::Result<Duration> {
    let msg = vec![0xabu8; n];
    let mut back = vec![0u8; n];
    let t = Instant::now();
    s.write_all(&msg).await?;
    s.read_exact(&mut back).await?;
    assert_eq!(back, msg);
    Ok(t.elapsed())
}

async fn median_rtt(addr: SocketAddr, rounds: usize) -> Duration {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut rtt_us = Percentiles::new();
    for _ in 0..rounds {
        rtt_us.record(round_trip(&mut s, 64).await.unwrap().as_micros() as u64);
    }
    Duration::from_micros(rtt_us.p50())
}

/// Polls `f` until it is true or the deadline passes.
async fn eventually(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether a connection through the proxy echoes within `limit`.
async fn echoes_within(addr: SocketAddr, limit: Duration) -> bool {
    let f = async {
        let mut s = TcpStream::connect(addr).await?;
        round_trip(&mut s, 16).await
    };
    matches!(tokio::time::timeout(limit, f).await, Ok(Ok(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_bytes_through_and_counts_them() {
    let p = proxy_to(echo().await).await;
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    for n in [1, 1000, 100_000] {
        round_trip(&mut s, n).await.unwrap();
    }
    let h = p.handle();
    let total = 101_001;
    eventually("byte counters", Duration::from_secs(5), async || {
        let st = h.stats();
        st.bytes_up == total && st.bytes_down == total
    })
    .await;
    assert_eq!(h.stats().accepted, 1);
    assert!(h.faults().is_healed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_is_added_in_both_directions_within_tolerance() {
    let target = echo().await;
    let p = proxy_to(target).await;
    let base = median_rtt(p.addr(), 20).await;
    let h = p.handle();
    h.latency(Duration::from_millis(30), Duration::ZERO);
    let slow = median_rtt(p.addr(), 10).await;
    // 30 ms each way: +60 ms, with generous slack for a loaded 2-core machine.
    let added = slow.saturating_sub(base);
    eprintln!("base {base:?} with latency {slow:?} added {added:?}");
    assert!(added >= Duration::from_millis(58), "added {added:?}");
    assert!(added <= Duration::from_millis(60 + 80), "added {added:?}");
    // Jitter stays inside latency ± jitter per direction.
    h.latency(Duration::from_millis(20), Duration::from_millis(10));
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    for _ in 0..10 {
        let rtt = round_trip(&mut s, 64).await.unwrap();
        assert!(rtt >= Duration::from_millis(19), "{rtt:?}");
        assert!(rtt <= Duration::from_millis(60 + 80), "{rtt:?}");
    }
    h.heal();
    let healed = median_rtt(p.addr(), 20).await;
    assert!(healed < Duration::from_millis(15), "healed rtt {healed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_partition_cuts_open_connections_and_blocks_new_ones_until_healed() {
    let p = proxy_to(echo().await).await;
    let h = p.handle();
    let mut open = TcpStream::connect(p.addr()).await.unwrap();
    round_trip(&mut open, 10).await.unwrap();
    h.partition(PartitionMode::Refuse);
    // The open connection is cut: a read ends (EOF or reset) within the deadline.
    let mut buf = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(5), open.read(&mut buf))
        .await
        .expect("the cut connection must not hang");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    // New connections are reset at once (the reset may already fail the connect).
    let attempt = async {
        let mut s = TcpStream::connect(p.addr()).await?;
        round_trip(&mut s, 10).await
    };
    let r = tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .expect("a refused connection must not hang");
    assert!(r.is_err());
    eventually(
        "cut and refused counted",
        Duration::from_secs(5),
        async || {
            let st = h.stats();
            st.cut == 1 && st.refused >= 1
        },
    )
    .await;
    h.heal();
    assert!(echoes_within(p.addr(), Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_partition_holds_new_connections_and_releases_them_on_heal() {
    let p = proxy_to(echo().await).await;
    let h = p.handle();
    h.partition(PartitionMode::Stall);
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(b"held").await.unwrap();
    eventually("connection held", Duration::from_secs(5), async || {
        h.stats().held == 1
    })
    .await;
    // While partitioned nothing comes back (the connection is held, not connected).
    let mut buf = [0u8; 4];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut buf))
            .await
            .is_err(),
        "bytes crossed a stalled partition"
    );
    h.heal();
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("held connection released on heal")
        .unwrap();
    assert_eq!(&buf, b"held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_limit_caps_throughput() {
    let p = proxy_to(echo().await).await;
    let h = p.handle();
    let n = 512 << 10;
    let pump = async |addr: SocketAddr| {
        let s = TcpStream::connect(addr).await.unwrap();
        let (mut r, mut w) = s.into_split();
        let t = Instant::now();
        let writer = tokio::spawn(async move {
            w.write_all(&vec![1u8; n]).await.unwrap();
            w
        });
        let mut got = vec![0u8; n];
        r.read_exact(&mut got).await.unwrap();
        let _w = writer.await.unwrap();
        t.elapsed()
    };
    let free = tokio::time::timeout(Duration::from_secs(20), pump(p.addr()))
        .await
        .unwrap();
    let rate = 256u64 << 10;
    h.bandwidth(Some(rate));
    let limited = tokio::time::timeout(Duration::from_secs(30), pump(p.addr()))
        .await
        .unwrap();
    let bps = n as f64 / limited.as_secs_f64();
    eprintln!("unlimited {free:?}, limited {limited:?} = {bps:.0} B/s (limit {rate})");
    // Each direction is limited to 256 KiB/s: 512 KiB takes about 2 s (minus one burst).
    assert!(
        bps <= rate as f64 * 1.15,
        "{bps:.0} B/s over the {rate} B/s limit"
    );
    assert!(bps >= rate as f64 * 0.5, "{bps:.0} B/s far under the limit");
    assert!(h.stats().throttled_chunks > 0);
    h.heal();
    let healed = tokio::time::timeout(Duration::from_secs(20), pump(p.addr()))
        .await
        .unwrap();
    assert!(
        healed < limited / 2,
        "healed {healed:?} vs limited {limited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_drops_or_stalls_connections_and_heal_restores() {
    let p = proxy_to(echo().await).await;
    let h = p.handle();
    // p = 1, drop: the first chunk resets the connection.
    h.loss(1.0, LossMode::Drop);
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), round_trip(&mut s, 10))
        .await
        .expect("a dropped connection must not hang");
    assert!(r.is_err());
    eventually("loss drop counted", Duration::from_secs(5), async || {
        h.stats().loss_drops == 1
    })
    .await;
    // p = 1, stall: bytes are held until the fault is lifted, then delivered in order.
    h.loss(1.0, LossMode::Stall);
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(b"abcd").await.unwrap();
    let mut buf = [0u8; 4];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut buf))
            .await
            .is_err(),
        "bytes crossed a stalled link"
    );
    assert_eq!(h.stats().loss_stalls, 1);
    h.heal();
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("stalled connection resumes on heal")
        .unwrap();
    assert_eq!(&buf, b"abcd");
    // Partial loss with a fixed seed: some of 200 connections drop, not all.
    h.loss(0.3, LossMode::Drop);
    let mut ok = 0;
    for _ in 0..200 {
        if echoes_within(p.addr(), Duration::from_secs(5)).await {
            ok += 1;
        }
    }
    eprintln!("{ok}/200 connections survived p=0.3 per chunk (seed {SEED})");
    assert!((60..=190).contains(&ok), "{ok}");
    h.heal();
    assert!(echoes_within(p.addr(), Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_proxy_closes_its_connections() {
    let p = proxy_to(echo().await).await;
    let mut s = TcpStream::connect(p.addr()).await.unwrap();
    round_trip(&mut s, 8).await.unwrap();
    let addr = p.addr();
    drop(p);
    let mut buf = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("connection closed when the proxy is dropped");
    assert!(matches!(r, Ok(0) | Err(_)));
    eventually("listener closed", Duration::from_secs(5), async || {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
}

//! Canopy over real libp2p (TCP on 127.0.0.1, noise, yamux, gossipsub), several swarms in one
//! process. Every wait polls a condition with a deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use libp2p::Multiaddr;
use opengrid_canopy::{
    Canopy, CanopyConfig, CanopyError, ColonySummary, HardwareCapacity, PeerEntry, PriceRange,
};
use opengrid_session::{AcceleratorClass, Did};

const INTERVAL: Duration = Duration::from_millis(200);
const EXPIRY_INTERVALS: u32 = 3;
const DEADLINE: Duration = Duration::from_secs(20);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn did(seed: u8) -> Did {
    Did::from_public_key(&key(seed).verifying_key())
}

fn config(seed: u8, trusted: &[u8], bootstrap: &[Multiaddr]) -> CanopyConfig {
    let mut c = CanopyConfig::new(key(seed));
    c.bootstrap = bootstrap.to_vec();
    c.publish_interval = INTERVAL;
    c.expiry_intervals = EXPIRY_INTERVALS;
    c.gossip_heartbeat = Duration::from_millis(100);
    c.trusted_rcs = trusted.iter().map(|s| did(*s)).collect();
    c
}

fn summary(seed: u8, colony: &str, zone: &str) -> ColonySummary {
    ColonySummary {
        colony_id: colony.into(),
        region: format!("region-{zone}"),
        jurisdictions: vec![zone.into()],
        hardware: BTreeMap::from([(
            AcceleratorClass::None,
            HardwareCapacity {
                free_slots: 8,
                free_memory_bytes: 8 << 30,
                max_node_free_memory_bytes: 2 << 30,
            },
        )]),
        handlers: BTreeMap::from([("tutor".to_string(), 8)]),
        capabilities: BTreeMap::new(),
        load_permille: 100 * u16::from(seed),
        price: PriceRange {
            min_micros_per_input: 1,
            max_micros_per_input: 3,
        },
        rc_client_api: format!("http://127.0.0.1:{}", 7000 + u16::from(seed)),
        rc_control_addr: format!("127.0.0.1:{}", 7100 + u16::from(seed)),
        rc_did: did(seed),
        seq: 0,
        issued_at_ms: 0,
    }
}

async fn start_colony(seed: u8, trusted: &[u8], bootstrap: &[Multiaddr], zone: &str) -> Canopy {
    let canopy = Canopy::start(config(seed, trusted, bootstrap))
        .await
        .expect("canopy starts");
    let s = summary(seed, &format!("colony-{seed}"), zone);
    canopy
        .set_summary_provider(Arc::new(move || Some(s.clone())))
        .await
        .expect("provider set");
    canopy
}

async fn wait_for<F, Fut>(what: &str, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn colonies(table: &[PeerEntry]) -> BTreeSet<String> {
    table.iter().map(|e| e.summary.colony_id.clone()).collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// A — B — C in a line: C's summaries reach A only through B's forwarding.
async fn three_colonies() -> (Canopy, Canopy, Canopy) {
    let trusted = [1, 2, 3];
    let a = start_colony(1, &trusted, &[], "DE").await;
    let b = start_colony(2, &trusted, &[a.listen_addr()], "FR").await;
    let c = start_colony(3, &trusted, &[b.listen_addr()], "US").await;
    wait_for("every colony in every peering table", || async {
        colonies(&a.peering_table()) == set(&["colony-2", "colony-3"])
            && colonies(&b.peering_table()) == set(&["colony-1", "colony-3"])
            && colonies(&c.peering_table()) == set(&["colony-1", "colony-2"])
    })
    .await;
    (a, b, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summaries_propagate_to_all_colonies() {
    init_tracing();
    let (a, b, c) = three_colonies().await;
    let entry = a
        .peering_table()
        .into_iter()
        .find(|e| e.summary.colony_id == "colony-3")
        .unwrap();
    // What the cluster needs to ask the remote RC directly.
    assert_eq!(entry.rc_did(), &did(3));
    assert_eq!(entry.summary.rc_control_addr, "127.0.0.1:7103");
    assert_eq!(entry.summary.rc_client_api, "http://127.0.0.1:7003");
    assert_eq!(entry.peer_id(), c.peer_id());
    assert_eq!(opengrid_canopy::did_of_peer(&c.peer_id()), Some(did(3)));
    entry
        .signed()
        .verify()
        .expect("entries keep a verifiable signature");
    // Sequence numbers keep increasing at the receivers.
    let first = entry.summary.seq;
    wait_for("a newer summary of colony-3 at A", || async {
        a.peering_table()
            .iter()
            .any(|e| e.summary.colony_id == "colony-3" && e.summary.seq > first)
    })
    .await;
    for (name, canopy) in [("A", &a), ("B", &b), ("C", &c)] {
        let m = canopy.metrics();
        assert!(m.published >= 1, "{name}: {m:?}");
        assert!(m.accepted >= 2, "{name}: {m:?}");
        assert_eq!(m.rejected(), 0, "{name}: {m:?}");
        assert_eq!(m.peering_entries, 2, "{name}: {m:?}");
        assert!(
            m.wire_bytes_sent > 0 && m.wire_bytes_received > 0,
            "{name}: {m:?}"
        );
    }
    for canopy in [a, b, c] {
        canopy.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_unknown_and_malformed_summaries_are_rejected() {
    init_tracing();
    let (a, b, c) = three_colonies().await;
    // The injector: a fourth swarm, connected to A only, publishing crafted bytes.
    let d = Canopy::start(config(4, &[1, 2, 3], &[a.listen_addr()]))
        .await
        .unwrap();
    let forged = {
        // Claims colony 1's RC, signed by some other key.
        let mut s = summary(1, "colony-1", "DE");
        s.seq = u64::MAX / 2;
        s.issued_at_ms = now_ms();
        let mut signed = s.sign(&key(9));
        signed.summary.rc_did = did(1);
        signed.encode()
    };
    let stale = {
        // Validly signed by B, but older than what A already accepted from B.
        let at_a = a
            .peering_table()
            .into_iter()
            .find(|e| e.summary.colony_id == "colony-2")
            .unwrap();
        let mut s = summary(2, "colony-2", "FR");
        s.load_permille = 0;
        s.seq = at_a.summary.seq - 1;
        s.issued_at_ms = now_ms();
        s.sign(&key(2)).encode()
    };
    let unknown = {
        // Validly signed by a key the federation does not know.
        let mut s = summary(9, "colony-9", "DE");
        s.seq = 1;
        s.issued_at_ms = now_ms();
        s.sign(&key(9)).encode()
    };
    let malformed = b"\x07definitely not a colony summary".to_vec();

    // The first publish waits until D sees A's subscription.
    wait_for("the injector to reach A", || async {
        match d.publish_raw(forged.clone()).await {
            Ok(()) => true,
            Err(CanopyError::NoPeers) => false,
            Err(e) => panic!("publish_raw: {e}"),
        }
    })
    .await;
    wait_for("A to reject the forged summary", || async {
        a.metrics().rejected_bad_signature == 1
    })
    .await;
    d.publish_raw(stale).await.unwrap();
    wait_for("A to drop the stale summary", || async {
        a.metrics().rejected_replay_or_stale == 1
    })
    .await;
    d.publish_raw(unknown).await.unwrap();
    wait_for("A to reject the unknown-key summary", || async {
        a.metrics().rejected_unknown_key == 1
    })
    .await;
    d.publish_raw(malformed).await.unwrap();
    wait_for("A to reject the malformed summary", || async {
        a.metrics().rejected_malformed == 1
    })
    .await;
    let m = a.metrics();
    assert_eq!(
        (
            m.rejected_bad_signature,
            m.rejected_replay_or_stale,
            m.rejected_unknown_key,
            m.rejected_malformed
        ),
        (1, 1, 1, 1),
        "{m:?}"
    );
    // The peering table still holds the genuine entries, unchanged by the crafted ones.
    let table = a.peering_table();
    assert_eq!(colonies(&table), set(&["colony-2", "colony-3"]));
    let b_entry = table
        .iter()
        .find(|e| e.summary.colony_id == "colony-2")
        .unwrap();
    assert_ne!(
        b_entry.summary.load_permille, 0,
        "stale summary not applied"
    );
    assert!(table.iter().all(|e| e.summary.seq < u64::MAX / 2));

    // Rejected messages are not forwarded: B and C (reachable from D only through A) never saw
    // them, while A's genuine summaries keep flowing to them.
    let seq_at = |canopy: &Canopy| {
        canopy
            .peering_table()
            .into_iter()
            .find(|e| e.summary.colony_id == "colony-1")
            .map(|e| e.summary.seq)
            .unwrap_or(0)
    };
    let (b0, c0) = (seq_at(&b), seq_at(&c));
    wait_for("two more rounds of A's summaries at B and C", || async {
        seq_at(&b) > b0 + 1 && seq_at(&c) > c0 + 1
    })
    .await;
    assert_eq!(b.metrics().rejected(), 0, "{:?}", b.metrics());
    assert_eq!(c.metrics().rejected(), 0, "{:?}", c.metrics());

    // The injector's peer score at A dropped below zero (three penalised messages).
    let score = a
        .peer_score(d.peer_id())
        .await
        .unwrap()
        .expect("D is scored");
    eprintln!("injector score at A: {score}");
    assert!(score < 0.0, "injector score at A: {score}");
    let honest = a
        .peer_score(b.peer_id())
        .await
        .unwrap()
        .expect("B is scored");
    assert!(honest >= 0.0, "honest score at A: {honest}");

    for canopy in [a, b, c, d] {
        canopy.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_colony_leaves_every_peering_table_within_the_expiry_bound() {
    init_tracing();
    let (a, b, c) = three_colonies().await;
    let mut events = a.subscribe();
    let expiry = INTERVAL * EXPIRY_INTERVALS;
    let silent_since = Instant::now();
    c.shutdown().await;
    wait_for("colony-3 to leave A's and B's tables", || async {
        !colonies(&a.peering_table()).contains("colony-3")
            && !colonies(&b.peering_table()).contains("colony-3")
    })
    .await;
    let elapsed = silent_since.elapsed();
    eprintln!("colony-3 left every table {elapsed:?} after going silent (expiry {expiry:?})");
    // The last summary was accepted at most one interval before C went silent (plus delivery),
    // so entries vanish at most `expiry` after that; allow scheduling slack on a loaded machine.
    let bound = expiry + INTERVAL;
    assert!(
        elapsed <= bound,
        "colony-3 left after {elapsed:?}, bound {bound:?}"
    );
    // The others are unaffected.
    assert_eq!(colonies(&a.peering_table()), set(&["colony-2"]));
    assert_eq!(colonies(&b.peering_table()), set(&["colony-1"]));
    // The sweep removes it, counts it and announces it.
    wait_for("the sweep to count the expiry", || async {
        a.metrics().expired == 1 && b.metrics().expired == 1
    })
    .await;
    loop {
        match events.try_recv() {
            Ok(opengrid_canopy::PeerEvent::Expired { rc_did }) => {
                assert_eq!(rc_did, did(3));
                break;
            }
            Ok(_) => continue,
            Err(e) => panic!("no expiry event: {e}"),
        }
    }
    for canopy in [a, b] {
        canopy.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_rc_keeps_increasing_its_sequence_numbers() {
    init_tracing();
    let a = start_colony(1, &[1, 2], &[], "DE").await;
    let b = Canopy::start(config(2, &[1, 2], &[a.listen_addr()]))
        .await
        .unwrap();
    let seq_at_b = |b: &Canopy| {
        b.peering_table()
            .into_iter()
            .find(|e| e.summary.colony_id == "colony-1")
            .map(|e| e.summary.seq)
    };
    wait_for("A's summary at B", || async { seq_at_b(&b).is_some() }).await;
    let before = seq_at_b(&b).unwrap();
    a.shutdown().await;
    // Same key, new process state, new port; it dials B this time.
    let a2 = start_colony(1, &[1, 2], &[b.listen_addr()], "DE").await;
    wait_for("the restarted RC's summary at B", || async {
        seq_at_b(&b).is_some_and(|s| s > before)
    })
    .await;
    assert_eq!(b.metrics().rejected(), 0, "{:?}", b.metrics());
    for canopy in [a2, b] {
        canopy.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_are_typed() {
    init_tracing();
    let mut bad = config(1, &[1], &[]);
    bad.expiry_intervals = 0;
    match Canopy::start(bad).await {
        Err(CanopyError::Config { field, .. }) => assert_eq!(field, "expiry_intervals"),
        other => panic!("expected a config error, got {other:?}"),
    }
    let alone = Canopy::start(config(1, &[1], &[])).await.unwrap();
    assert!(matches!(
        alone.publish(summary(1, "colony-1", "DE")).await,
        Err(CanopyError::NoPeers)
    ));
    let mut invalid = summary(1, "colony-1", "DE");
    invalid.jurisdictions = vec!["XX".into()];
    assert!(matches!(
        alone.publish(invalid).await,
        Err(CanopyError::Invalid(_))
    ));
    alone.shutdown().await;
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

//! Three in-process replicas over real authenticated links (TLS over TCP) on 127.0.0.1 with
//! RocksDB storage: replication, forwarding, leader loss, restart from disk, snapshot install,
//! membership changes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use opengrid_consensus::{Client, KvApplication, Node, NodeId, RaftNode, RaftNodeConfig};

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn config(id: NodeId, addr: &str, dir: &std::path::Path) -> RaftNodeConfig {
    let mut c = RaftNodeConfig::new(id, key(id as u8), addr, dir.join(format!("n{id}")));
    c.snapshot_every = 10;
    c
}

async fn eventually<F: FnMut() -> bool>(what: &str, timeout: Duration, mut cond: F) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn get(node: &RaftNode<KvApplication>, key: &str) -> Option<Vec<u8>> {
    KvApplication::decode_answer(&node.local_read(key.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_fail_over_restart_and_change_membership() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: BTreeMap<NodeId, RaftNode<KvApplication>> = BTreeMap::new();
    for id in 1..=3 {
        let n = RaftNode::start(
            config(id, "127.0.0.1:0", dir.path()),
            KvApplication::default(),
        )
        .await
        .unwrap();
        nodes.insert(id, n);
    }
    let members: BTreeMap<NodeId, Node> = nodes
        .iter()
        .map(|(id, n)| (*id, Node::new(n.local_addr().to_string(), n.did().clone())))
        .collect();
    nodes[&1].initialize(members).await.unwrap();
    let leader = nodes[&1]
        .wait_for_leader(Duration::from_secs(10))
        .await
        .unwrap();

    // Writes through a follower are forwarded to the leader.
    let follower = *nodes.keys().find(|id| **id != leader).unwrap();
    for i in 0..25 {
        nodes[&follower]
            .client_write(KvApplication::set_command(
                format!("k{i}").as_bytes(),
                b"v1",
            ))
            .await
            .unwrap();
    }
    let read = nodes[&follower].read(b"k24".to_vec()).await.unwrap();
    assert_eq!(KvApplication::decode_answer(&read), Some(b"v1".to_vec()));
    eventually("all replicas applied k24", Duration::from_secs(10), || {
        nodes.values().all(|n| get(n, "k24").is_some())
    })
    .await;
    // Snapshots were built (snapshot_every = 10) and logs purged.
    eventually("leader built a snapshot", Duration::from_secs(10), || {
        nodes[&leader].metrics().snapshot.is_some()
    })
    .await;

    // Lose the leader; the others elect a new one and keep accepting writes.
    let old_leader = leader;
    let old_addr = nodes[&old_leader].local_addr().to_string();
    nodes.remove(&old_leader).unwrap().shutdown().await.unwrap();
    let survivor = *nodes.keys().next().unwrap();
    eventually("new leader elected", Duration::from_secs(15), || {
        nodes[&survivor]
            .metrics()
            .current_leader
            .is_some_and(|l| l != old_leader)
    })
    .await;
    let mut client = Client::new(
        nodes
            .values()
            .map(|n| Node::new(n.local_addr().to_string(), n.did().clone()).to_string())
            .collect(),
        &key(77),
    )
    .unwrap();
    for i in 25..40 {
        client
            .write(KvApplication::set_command(
                format!("k{i}").as_bytes(),
                b"v2",
            ))
            .await
            .unwrap();
    }

    // Restart the old leader from its data dir on its old address: it catches up.
    let restarted = RaftNode::start(
        config(old_leader, &old_addr, dir.path()),
        KvApplication::default(),
    )
    .await
    .unwrap();
    nodes.insert(old_leader, restarted);
    eventually(
        "restarted replica caught up with equal state hash",
        Duration::from_secs(20),
        || {
            let s: Vec<_> = nodes.values().map(|n| n.status()).collect();
            s.iter()
                .all(|x| x.last_applied == s[0].last_applied && x.state_hash == s[0].state_hash)
                && get(&nodes[&old_leader], "k39") == Some(b"v2".to_vec())
        },
    )
    .await;

    // Membership: a fresh node joins as a learner (via snapshot, logs were purged), is promoted,
    // then removed.
    let n4 = RaftNode::start(
        config(4, "127.0.0.1:0", dir.path()),
        KvApplication::default(),
    )
    .await
    .unwrap();
    let (n4_addr, n4_did) = (n4.local_addr().to_string(), n4.did().clone());
    nodes.insert(4, n4);
    nodes[&survivor]
        .add_learner(4, n4_addr, n4_did)
        .await
        .unwrap();
    eventually("learner has the data", Duration::from_secs(20), || {
        get(&nodes[&4], "k39").is_some()
    })
    .await;
    nodes[&survivor]
        .change_membership(BTreeSet::from([1, 2, 3, 4]))
        .await
        .unwrap();
    eventually("node 4 is a voter", Duration::from_secs(10), || {
        nodes[&4]
            .metrics()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == 4)
    })
    .await;
    nodes[&survivor].remove_node(4).await.unwrap();
    eventually("node 4 removed", Duration::from_secs(10), || {
        nodes[&survivor].status().voters == vec![1, 2, 3]
            && !nodes[&survivor]
                .status()
                .nodes
                .iter()
                .any(|(id, _)| *id == 4)
    })
    .await;

    for (_, n) in nodes {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_garbage_frames_are_refused_without_panic() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(1, "127.0.0.1:0", dir.path());
    c.max_frame_bytes = 1024;
    let node = RaftNode::start(c, KvApplication::default()).await.unwrap();
    // Oversized length prefix: the server closes the connection.
    let mut s = tokio::net::TcpStream::connect(node.local_addr())
        .await
        .unwrap();
    s.write_all(&(1u32 << 30).to_be_bytes()).await.unwrap();
    // Plain TCP never gets past the handshake: at most a TLS alert, then the connection closes.
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    while let Ok(n @ 1..) = s.read(&mut buf).await {
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.len() < 16, "plain TCP got an answer: {got:?}");
    // Over an authenticated link: an oversized length prefix and a garbage payload close it.
    let link = opengrid_consensus::network::client_link(&key(50)).unwrap();
    for bytes in [
        (1u32 << 30).to_be_bytes().to_vec(),
        [&4u32.to_be_bytes()[..], &[0xff; 4]].concat(),
    ] {
        let tcp = tokio::net::TcpStream::connect(node.local_addr())
            .await
            .unwrap();
        let (mut tls, did) = link.connect(tcp, Some(node.did())).await.unwrap();
        assert_eq!(&did, node.did());
        tls.write_all(&bytes).await.unwrap();
        tls.flush().await.unwrap();
        assert!(matches!(tls.read(&mut buf).await, Ok(0) | Err(_)));
    }
    // The node still serves.
    let client = Client::new(vec![node.local_addr().to_string()], &key(51)).unwrap();
    assert_eq!(
        client
            .status(&node.local_addr().to_string())
            .await
            .unwrap()
            .id,
        1
    );
    node.shutdown().await.unwrap();
}

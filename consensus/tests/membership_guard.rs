//! Who may change the group, against three in-process replicas over real authenticated links
//! (TLS over TCP) on 127.0.0.1: plain TCP gets no frame answered; admin requests (add learner,
//! change membership) without the authorizer's consent are refused with `Unauthorized` and change
//! nothing; Raft RPCs (AppendEntries, InstallSnapshot, Vote) from an id outside the membership
//! are refused with `NotAMember`, and those claiming a member's id over a link authenticated as
//! another DID (a stranger's key, or another member's) with `PeerMismatch`, even with a higher
//! term, counted by reason, and move no replica's term, log, membership or data; an authorized
//! change is served and the honest group keeps replicating.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use opengrid_consensus::network::{client_link, Connection, RpcRequest, RpcResponse};
use opengrid_consensus::{
    AdminAuthorizer, AdminRequest, Client, ConsensusError, KvApplication, Node, NodeId, RaftNode,
    RaftNodeConfig, RefusalReason, WireError,
};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{CommittedLeaderId, LogId, SnapshotMeta, StoredMembership, Vote};

/// Serves an admin request only when its authorization is exactly the right token (a stand-in
/// for the ledger's operator signature, which `opengrid-settlement` tests end to end).
#[derive(Debug)]
struct Token;

const TOKEN: &[u8] = b"operator-approved";

impl AdminAuthorizer for Token {
    fn authorize(&self, _request: &AdminRequest, auth: &[u8]) -> Result<(), String> {
        if auth == TOKEN {
            Ok(())
        } else {
            Err("wrong token".into())
        }
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_cannot_change_or_feed_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: BTreeMap<NodeId, RaftNode<KvApplication>> = BTreeMap::new();
    for id in 1..=3 {
        let mut c = RaftNodeConfig::new(
            id,
            key(id as u8),
            "127.0.0.1:0",
            dir.path().join(format!("n{id}")),
        );
        c.admin_authorizer = Some(Arc::new(Token));
        nodes.insert(
            id,
            RaftNode::start(c, KvApplication::default()).await.unwrap(),
        );
    }
    let members: BTreeMap<NodeId, Node> = nodes
        .iter()
        .map(|(id, n)| (*id, Node::new(n.local_addr().to_string(), n.did().clone())))
        .collect();
    nodes[&1].initialize(members.clone()).await.unwrap();
    nodes[&1]
        .wait_for_leader(Duration::from_secs(10))
        .await
        .unwrap();
    nodes[&1]
        .client_write(KvApplication::set_command(b"k", b"v"))
        .await
        .unwrap();
    eventually(
        "every replica applied the write",
        Duration::from_secs(10),
        || {
            nodes
                .values()
                .all(|n| KvApplication::decode_answer(&n.local_read(b"k")) == Some(b"v".to_vec()))
        },
    )
    .await;
    let voters = BTreeSet::from([1, 2, 3]);
    let term_before: Vec<u64> = nodes.values().map(|n| n.status().current_term).collect();
    let logs_before: Vec<_> = nodes
        .values()
        .map(|n| (n.status().last_log_index, n.status().state_hash))
        .collect();

    // Admin requests without (or with a wrong) authorization: refused at once, typed.
    let mut client = Client::new(members.values().map(|n| n.to_string()).collect(), &key(60))
        .unwrap()
        .with_timeout(Duration::from_secs(10));
    let client_did = client.did().clone();
    let e = client
        .add_learner(99, "127.0.0.1:9".into(), client_did)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ConsensusError::Unauthorized(ref m) if m.contains("wrong token")),
        "{e}"
    );
    let e = client
        .change_membership_with(BTreeSet::from([1, 2]), |_| b"guess".to_vec())
        .await
        .unwrap_err();
    assert!(matches!(e, ConsensusError::Unauthorized(_)), "{e}");
    // The in-process API is held to the same rule.
    let e = nodes[&2]
        .change_membership(BTreeSet::from([2]))
        .await
        .unwrap_err();
    assert!(matches!(e, ConsensusError::Unauthorized(_)), "{e}");

    // Raw Raft RPCs from id 99 (not a member), with a far higher term.
    let vote = Vote::new_committed(term_before.iter().max().unwrap() + 100, 99);
    let stranger = client_link(&key(99)).unwrap();
    for (id, member) in &members {
        let mut conn = Connection::new(stranger.clone(), member, 1 << 20);
        for req in evil_rpcs(99, vote.leader_id().term) {
            let kind = format!("{req:?}").chars().take(20).collect::<String>();
            match conn.request(&req, Duration::from_secs(5)).await.unwrap() {
                RpcResponse::Client(Err(WireError::NotAMember { sender: Some(99) })) => {}
                other => panic!("replica {id}: {kind}… from a non-member answered {other:?}"),
            }
        }
    }
    let refused: u64 = nodes.values().map(|n| n.refused_requests()).sum();
    assert!(refused >= 9 + 3, "refused {refused}");

    // Impersonation: well-formed Raft RPCs claiming member 1 (and member 3 towards member 1),
    // over links that prove a stranger's key, or member 2's own key. Refused as PeerMismatch.
    let member2 = client_link(&key(2)).unwrap();
    for (id, target) in &members {
        let claimed = if *id == 1 { 3 } else { 1 };
        for (who, link) in [("stranger", &stranger), ("member 2", &member2)] {
            let mut conn = Connection::new(link.clone(), target, 1 << 20);
            for req in evil_rpcs(claimed, vote.leader_id().term) {
                let kind = format!("{req:?}").chars().take(20).collect::<String>();
                match conn.request(&req, Duration::from_secs(5)).await.unwrap() {
                    RpcResponse::Client(Err(WireError::PeerMismatch {
                        sender: Some(s),
                        peer,
                    })) if s == claimed && peer == link.did().to_string() => {}
                    other => panic!(
                        "replica {id}: {kind}… from {who} claiming member {claimed} answered \
                         {other:?}"
                    ),
                }
            }
        }
    }
    let mismatches: u64 = nodes
        .values()
        .map(|n| n.refusals().get(RefusalReason::PeerMismatch))
        .sum();
    assert_eq!(mismatches, 3 * 2 * 3, "peer_mismatch refusals");
    assert!(nodes[&1]
        .refusals()
        .by_reason()
        .contains(&("peer_mismatch", 6)));

    // Plain TCP gets no frame answered (at most a TLS alert), and is counted.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&members[&1].addr)
            .await
            .unwrap();
        s.write_all(&[0, 0, 0, 2, 2, 0]).await.unwrap();
        let (mut buf, mut got) = ([0u8; 64], Vec::new());
        while let Ok(n @ 1..) = s.read(&mut buf).await {
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.len() < 16, "plain TCP got an answer: {got:?}");
        eventually(
            "the plain connection counted",
            Duration::from_secs(10),
            || nodes[&1].refusals().get(RefusalReason::Handshake) >= 1,
        )
        .await;
    }

    // Nothing moved: same log and state, same voters, terms not raised by the stranger, data
    // intact.
    let logs_after: Vec<_> = nodes
        .values()
        .map(|n| (n.status().last_log_index, n.status().state_hash))
        .collect();
    assert_eq!(logs_after, logs_before, "a refused rpc moved a log");
    for n in nodes.values() {
        let s = n.status();
        assert_eq!(
            s.voters,
            voters.iter().copied().collect::<Vec<_>>(),
            "{s:?}"
        );
        assert!(s.nodes.iter().all(|(id, _)| *id != 99), "{s:?}");
        assert!(s.current_term < vote.leader_id().term, "{s:?}");
        assert_eq!(
            KvApplication::decode_answer(&n.local_read(b"k")),
            Some(b"v".to_vec())
        );
    }

    // The authorized operator is served (a no-op change to the same voters).
    client
        .change_membership_with(voters.clone(), |_| TOKEN.to_vec())
        .await
        .unwrap();
    nodes[&1]
        .client_write(KvApplication::set_command(b"k2", b"v2"))
        .await
        .unwrap();
    eventually("every replica applied k2", Duration::from_secs(10), || {
        nodes
            .values()
            .all(|n| KvApplication::decode_answer(&n.local_read(b"k2")) == Some(b"v2".to_vec()))
    })
    .await;
    for (_, n) in nodes {
        n.shutdown().await.unwrap();
    }
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// Well-formed AppendEntries, InstallSnapshot and Vote claiming to come from `sender`, with
/// term `term`, that would overwrite the log and the state if they were served.
fn evil_rpcs(sender: NodeId, term: u64) -> Vec<RpcRequest> {
    let vote = Vote::new_committed(term, sender);
    let evil_log = LogId::new(CommittedLeaderId::new(term, sender), 1_000);
    vec![
        RpcRequest::AppendEntries(AppendEntriesRequest {
            vote,
            prev_log_id: None,
            entries: vec![],
            leader_commit: Some(evil_log),
        }),
        RpcRequest::InstallSnapshot(InstallSnapshotRequest {
            vote,
            meta: SnapshotMeta {
                last_log_id: Some(evil_log),
                last_membership: StoredMembership::default(),
                snapshot_id: "rewrite-balances".into(),
            },
            offset: 0,
            data: b"attacker state".to_vec(),
            done: true,
        }),
        RpcRequest::Vote(VoteRequest {
            vote: Vote::new(term, sender),
            last_log_id: Some(evil_log),
        }),
    ]
}

/// A group whose application trusts every command (`members_only`): a stranger's writes and
/// reads are refused (`Unauthorized`, counted as `not_a_member`) and change nothing; the members'
/// own writes, forwarded from a follower too, are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_only_group_serves_no_stranger() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: BTreeMap<NodeId, RaftNode<KvApplication>> = BTreeMap::new();
    for id in 1..=3 {
        let mut c = RaftNodeConfig::new(
            id,
            key(id as u8 + 100),
            "127.0.0.1:0",
            dir.path().join(format!("n{id}")),
        );
        c.members_only = true;
        nodes.insert(
            id,
            RaftNode::start(c, KvApplication::default()).await.unwrap(),
        );
    }
    let members: BTreeMap<NodeId, Node> = nodes
        .iter()
        .map(|(id, n)| (*id, Node::new(n.local_addr().to_string(), n.did().clone())))
        .collect();
    nodes[&1].initialize(members.clone()).await.unwrap();
    let leader = nodes[&1]
        .wait_for_leader(Duration::from_secs(10))
        .await
        .unwrap();
    let follower = members.keys().copied().find(|id| *id != leader).unwrap();
    // A member's write through a follower is forwarded to the leader and served.
    nodes[&follower]
        .client_write(KvApplication::set_command(b"k", b"v"))
        .await
        .unwrap();
    let hash_before = nodes[&leader].status().state_hash;

    let mut stranger = Client::new(members.values().map(|n| n.to_string()).collect(), &key(61))
        .unwrap()
        .with_timeout(Duration::from_secs(5));
    let e = stranger
        .write(KvApplication::set_command(b"k", b"evil"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ConsensusError::Unauthorized(ref m) if m.contains("not a member")),
        "{e}"
    );
    let e = stranger.read(b"k".to_vec()).await.unwrap_err();
    assert!(matches!(e, ConsensusError::Unauthorized(_)), "{e}");
    let refused: u64 = nodes
        .values()
        .map(|n| n.refusals().get(RefusalReason::NotAMember))
        .sum();
    assert!(refused >= 2, "not_a_member refusals: {refused}");
    assert_eq!(
        nodes[&leader].status().state_hash,
        hash_before,
        "nothing changed"
    );
    assert_eq!(
        KvApplication::decode_answer(&nodes[&leader].local_read(b"k")),
        Some(b"v".to_vec())
    );
    for (_, n) in nodes {
        n.shutdown().await.unwrap();
    }
}

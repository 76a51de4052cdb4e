//! Who may change the group, against three in-process replicas over real TCP on 127.0.0.1:
//! admin requests (add learner, change membership) without the authorizer's consent are refused
//! with `Unauthorized` and change nothing; Raft RPCs (AppendEntries, InstallSnapshot, Vote) from
//! an id outside the membership are refused with `NotAMember`, even with a higher term, and do
//! not move any replica's term; an authorized change is served.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use opengrid_consensus::network::{Connection, RpcRequest, RpcResponse};
use opengrid_consensus::{
    AdminAuthorizer, AdminRequest, Client, ConsensusError, KvApplication, NodeId, RaftNode,
    RaftNodeConfig, WireError,
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
        let mut c = RaftNodeConfig::new(id, "127.0.0.1:0", dir.path().join(format!("n{id}")));
        c.admin_authorizer = Some(Arc::new(Token));
        nodes.insert(
            id,
            RaftNode::start(c, KvApplication::default()).await.unwrap(),
        );
    }
    let addrs: BTreeMap<NodeId, String> = nodes
        .iter()
        .map(|(id, n)| (*id, n.local_addr().to_string()))
        .collect();
    nodes[&1].initialize(addrs.clone()).await.unwrap();
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

    // Admin requests without (or with a wrong) authorization: refused at once, typed.
    let mut client =
        Client::new(addrs.values().cloned().collect()).with_timeout(Duration::from_secs(10));
    let e = client
        .add_learner(99, "127.0.0.1:9".into())
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
    let evil_log = LogId::new(CommittedLeaderId::new(vote.leader_id().term, 99), 1_000);
    for (id, addr) in &addrs {
        let mut conn = Connection::new(addr.clone(), 1 << 20);
        let requests = vec![
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
                vote: Vote::new(vote.leader_id().term, 99),
                last_log_id: Some(evil_log),
            }),
        ];
        for req in requests {
            let kind = format!("{req:?}").chars().take(20).collect::<String>();
            match conn.request(&req, Duration::from_secs(5)).await.unwrap() {
                RpcResponse::Client(Err(WireError::NotAMember { sender: Some(99) })) => {}
                other => panic!("replica {id}: {kind}… from a non-member answered {other:?}"),
            }
        }
    }
    let refused: u64 = nodes.values().map(|n| n.refused_requests()).sum();
    assert!(refused >= 9 + 3, "refused {refused}");

    // Nothing moved: same voters, terms not raised by the stranger, data intact.
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
    for (_, n) in nodes {
        n.shutdown().await.unwrap();
    }
}

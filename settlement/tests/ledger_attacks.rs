//! The ledger attacks of issue #15 against three `opengrid-ledger replica` processes on
//! 127.0.0.1, each refused with a typed reason, the balances checked from outside afterwards:
//! - self-registration of a node and an RC (no ledger operator signature);
//! - a co-signed receipt with `fee_micros = u64::MAX - total` (it used to be credited and make
//!   every later receipt fail with `FeeOverflow`);
//! - the same session window billed twice under a new receipt id;
//! - `AddLearner` + `ChangeMembership` without the operator's key (raw consensus client, and the
//!   CLI with a stranger's key file).
//!
//! Children are killed when the test ends (guard `Drop`) and exit on their own if this process
//! dies (stdin EOF).

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use opengrid_consensus::ConsensusError;
use opengrid_settlement::ledger::{
    NodeRegistration, RcRegistration, RegistrationError, DEFAULT_MAX_FEE_MICROS,
};
use opengrid_settlement::replica::ReplicaStatus;
use opengrid_settlement::{
    Account, Batch, Keypair, LedgerClient, LedgerResponse, OperatorAuthError, Receipt, ReceiptId,
    RejectReason, SettlementError, SignedReceipt, SplitPolicy, Usage, UsageWindow,
};

const BIN: &str = env!("CARGO_BIN_EXE_opengrid-ledger");

struct Group {
    dir: tempfile::TempDir,
    addrs: BTreeMap<u64, String>,
    children: Vec<Child>,
}

impl Group {
    fn start(operator: &Keypair) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let listeners: Vec<_> = (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let addrs: BTreeMap<u64, String> = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| (i as u64 + 1, l.local_addr().unwrap().to_string()))
            .collect();
        drop(listeners);
        // Every replica's key lives in its data dir (made here first, so that peers name DIDs).
        let peers: Vec<String> = addrs
            .iter()
            .map(|(i, a)| {
                opengrid_settlement::peer_entry(*i, a, &dir.path().join(format!("data-{i}")))
                    .unwrap()
            })
            .collect();
        let mut children = Vec::new();
        for (id, addr) in &addrs {
            let log = std::fs::File::create(dir.path().join(format!("replica-{id}.log"))).unwrap();
            children.push(
                Command::new(BIN)
                    .args(["replica", "--id", &id.to_string(), "--addr", addr])
                    .arg("--data-dir")
                    .arg(dir.path().join(format!("data-{id}")))
                    .args(["--peers", &peers.join(","), "--exit-on-stdin-eof"])
                    .args(["--operator", &operator.did().to_string()])
                    .env("RUST_LOG", "info,openraft=warn")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .unwrap(),
            );
        }
        Group {
            dir,
            addrs,
            children,
        }
    }

    fn addr_list(&self) -> Vec<String> {
        self.addrs.values().cloned().collect()
    }

    async fn statuses(&self, client: &LedgerClient) -> Vec<ReplicaStatus> {
        let mut out = Vec::new();
        for a in self.addrs.values() {
            if let Ok(s) = client.replica_status(a).await {
                out.push(s);
            }
        }
        out
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for id in self.addrs.keys() {
                let p = self.dir.path().join(format!("replica-{id}.log"));
                let text = std::fs::read_to_string(p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                eprintln!(
                    "--- replica {id} (last lines, newest first)\n{}",
                    tail.join("\n")
                );
            }
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn receipt(node: &Keypair, rc: &Keypair, n: u8, window: (u64, u64), fee: u64) -> SignedReceipt {
    Receipt {
        receipt_id: ReceiptId([n; 16]),
        session_id: "victim-session".into(),
        node: node.did(),
        rc: rc.did(),
        window: UsageWindow {
            start_ms: window.0,
            end_ms: window.1,
        },
        usage: Usage {
            inputs: 1,
            cpu_ms: 1,
            bytes: 1,
            tokens: None,
        },
        fee_micros: fee,
        nonce: u64::from(n),
    }
    .sign(node)
    .co_sign(rc)
}

fn batch(rc: &Keypair, part: u32, receipts: Vec<SignedReceipt>) -> Batch {
    Batch {
        rc: rc.did(),
        proposed_at_ms: 1_000_000,
        part,
        receipts,
    }
}

/// Submits `b`; returns (settled, rejection reasons).
async fn submit(client: &LedgerClient, b: &Batch) -> (u32, Vec<RejectReason>) {
    match client.submit_batch(b).await.unwrap() {
        LedgerResponse::Batch { record, .. } => (
            record.settled,
            record.rejected.into_iter().map(|r| r.reason).collect(),
        ),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_attacks_are_refused_and_balances_stay_intact() {
    let operator = Keypair::from_seed([90; 32]);
    let group = Group::start(&operator);
    let client =
        LedgerClient::with_timeout(group.addr_list(), Duration::from_secs(60), &operator).unwrap();
    let node = Keypair::from_seed([91; 32]);
    let rc = Keypair::from_seed([92; 32]);
    let node_reg = || {
        NodeRegistration::new(
            &node,
            SplitPolicy::Interchange,
            Account::new("node-op").unwrap(),
            vec![],
        )
    };
    let rc_reg = || RcRegistration::new(&rc, Account::new("rc-op").unwrap());

    // Self-registration, as the attacker did: refused, typed.
    let missing = LedgerResponse::RegistrationRejected(RegistrationError::Operator(
        OperatorAuthError::Missing,
    ));
    assert_eq!(client.register_node(node_reg()).await.unwrap(), missing);
    assert_eq!(client.register_rc(rc_reg()).await.unwrap(), missing);
    let r = client
        .register_node(node_reg().authorize(&Keypair::from_seed([93; 32])))
        .await
        .unwrap();
    assert!(
        matches!(
            r,
            LedgerResponse::RegistrationRejected(RegistrationError::Operator(
                OperatorAuthError::ForgedSignature { .. }
            ))
        ),
        "{r:?}"
    );
    // The operator registers them.
    assert_eq!(
        client
            .register_node(node_reg().authorize(&operator))
            .await
            .unwrap(),
        LedgerResponse::Registered(node.did())
    );
    assert_eq!(
        client
            .register_rc(rc_reg().authorize(&operator))
            .await
            .unwrap(),
        LedgerResponse::Registered(rc.did())
    );

    // An honest receipt settles.
    assert_eq!(
        submit(
            &client,
            &batch(&rc, 0, vec![receipt(&node, &rc, 1, (1_000, 2_000), 1_000)])
        )
        .await,
        (1, vec![])
    );
    let before = client.top_balances(100).await.unwrap();

    // The minting receipt: u64::MAX - total.
    let total = 1_000;
    let (settled, reasons) = submit(
        &client,
        &batch(
            &rc,
            1,
            vec![receipt(&node, &rc, 2, (2_000, 3_000), u64::MAX - total)],
        ),
    )
    .await;
    assert_eq!(settled, 0);
    assert_eq!(
        reasons,
        vec![RejectReason::FeeOverCap {
            fee_micros: u64::MAX - total,
            cap_micros: DEFAULT_MAX_FEE_MICROS
        }]
    );
    // The same window billed again under a new id (and a new nonce).
    let (settled, reasons) = submit(
        &client,
        &batch(&rc, 2, vec![receipt(&node, &rc, 3, (1_000, 2_000), 1_000)]),
    )
    .await;
    assert_eq!(settled, 0);
    assert!(
        matches!(
            reasons[..],
            [RejectReason::WindowAlreadyBilled {
                billed_until_ms: 2_000,
                ..
            }]
        ),
        "{reasons:?}"
    );
    assert_eq!(
        client.top_balances(100).await.unwrap(),
        before,
        "balances moved"
    );

    // Membership changes without the operator's key: refused, typed, nothing changes.
    let stranger = Keypair::from_seed([94; 32]);
    let mut raw = opengrid_consensus::Client::new(group.addr_list(), stranger.signing_key())
        .unwrap()
        .with_timeout(Duration::from_secs(30));
    let e = raw
        .add_learner(99, "127.0.0.1:9".into(), stranger.did())
        .await
        .unwrap_err();
    assert!(
        matches!(e, ConsensusError::Unauthorized(ref m) if m.contains("missing the ledger operator's signature")),
        "{e}"
    );
    let e = raw
        .change_membership(BTreeSet::from([1, 2]))
        .await
        .unwrap_err();
    assert!(matches!(e, ConsensusError::Unauthorized(_)), "{e}");
    let e = client
        .change_membership(BTreeSet::from([1, 2]), &stranger)
        .await
        .unwrap_err();
    assert!(
        matches!(e, SettlementError::Consensus(ConsensusError::Unauthorized(ref m)) if m.contains("not signed by the ledger operator")),
        "{e}"
    );
    // The same through the CLI, with a stranger's key file: a non-zero exit naming why.
    let stranger_file = group.dir.path().join("stranger.key");
    Keypair::load_or_create(&stranger_file).unwrap();
    let out = Command::new(BIN)
        .args([
            "change-membership",
            "--voters",
            "1,2",
            "--operator-key-file",
        ])
        .arg(&stranger_file)
        .args(["--addr", &group.addr_list().join(",")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not signed by the ledger operator"),
        "{stderr}"
    );

    // The operator's own change is served (the same voters: a no-op that proves the path).
    client
        .change_membership(BTreeSet::from([1, 2, 3]), &operator)
        .await
        .unwrap();

    // An honest receipt after all of it settles; every replica agrees on everything.
    assert_eq!(
        submit(
            &client,
            &batch(&rc, 3, vec![receipt(&node, &rc, 4, (2_000, 3_000), 500)])
        )
        .await,
        (1, vec![])
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let agreed = loop {
        let s = group.statuses(&client).await;
        if s.len() == 3
            && s.iter()
                .all(|x| x.ledger == s[0].ledger && x.raft.voters == s[0].raft.voters)
        {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replicas never agreed: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let l = &agreed[0].ledger;
    assert_eq!(agreed[0].raft.voters, vec![1, 2, 3]);
    assert_eq!(l.total_fees_micros, 1_500);
    assert_eq!(l.total_credits_micros, 1_500);
    assert_eq!(l.receipts_settled, 2);
    assert_eq!((l.nodes, l.rcs), (1, 1));
    assert_eq!(l.rejections_total, 2);
    let balances = client.top_balances(100).await.unwrap();
    assert_eq!(
        balances.iter().map(|(_, b)| *b).sum::<u64>(),
        1_500,
        "{balances:?}"
    );
}

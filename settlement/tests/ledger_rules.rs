//! Ledger rules on the state machine itself: exact splits, exactly-once, idempotent batches, and
//! one test per rejection reason (each asserts the reason and that no balance changed).

use std::collections::BTreeMap;

use opengrid_consensus::Application;
use opengrid_settlement::batcher::{Batcher, CoSignError};
use opengrid_settlement::ledger::{
    BatchRecord, LedgerCommand, LedgerQuery, NodeRegistration, QueryAnswer, RcRegistration,
    ReceiptStatus, RegistrationError,
};
use opengrid_settlement::receipt::{Sig, Signer, VerifyError};
use opengrid_settlement::{
    Account, Batch, Keypair, Ledger, LedgerResponse, Receipt, ReceiptId, RejectReason,
    SignedReceipt, SplitPolicy, Usage, UsageWindow,
};

struct World {
    ledger: Ledger,
    node: Keypair,
    rc: Keypair,
}

fn acct(s: &str) -> Account {
    Account::new(s).unwrap()
}

fn world() -> World {
    let mut ledger = Ledger::default();
    let node = Keypair::from_seed([1; 32]);
    let rc = Keypair::from_seed([2; 32]);
    let r = ledger.execute(LedgerCommand::RegisterNode(NodeRegistration::new(
        &node,
        SplitPolicy::Interchange,
        acct("node-op"),
        vec![],
    )));
    assert_eq!(r, LedgerResponse::Registered(node.did()));
    let r = ledger.execute(LedgerCommand::RegisterRc(RcRegistration::new(
        &rc,
        acct("rc-op"),
    )));
    assert_eq!(r, LedgerResponse::Registered(rc.did()));
    World { ledger, node, rc }
}

fn receipt(w: &World, nonce: u64, fee: u64) -> Receipt {
    Receipt {
        receipt_id: ReceiptId([nonce as u8; 16]),
        session_id: format!("session-{nonce}"),
        node: w.node.did(),
        rc: w.rc.did(),
        window: UsageWindow {
            start_ms: 1_000,
            end_ms: 2_000,
        },
        usage: Usage {
            inputs: 1,
            cpu_ms: 2,
            bytes: 3,
            tokens: None,
        },
        fee_micros: fee,
        nonce,
    }
}

fn signed(w: &World, r: Receipt) -> SignedReceipt {
    r.sign(&w.node).co_sign(&w.rc)
}

fn batch(w: &World, receipts: Vec<SignedReceipt>) -> Batch {
    Batch {
        rc: w.rc.did(),
        proposed_at_ms: 10_000,
        part: 0,
        receipts,
    }
}

impl World {
    fn submit(&mut self, b: Batch) -> BatchRecord {
        let w = self;
        match w.ledger.execute(LedgerCommand::SubmitBatch(b)) {
            LedgerResponse::Batch { record, .. } => record,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Submit one receipt that must be rejected; assert the reason and that nothing changed.
    fn assert_rejected(&mut self, r: SignedReceipt, expected: RejectReason) {
        let w = self;
        let before: BTreeMap<Account, u64> = w.ledger.balances().clone();
        let totals_before = w.ledger.summary();
        let id = r.receipt.receipt_id;
        let settled_before = matches!(w.ledger.receipt_status(&id), ReceiptStatus::Settled { .. });
        let b = batch(w, vec![r]);
        let rec = w.submit(b);
        assert_eq!(rec.settled, 0);
        assert_eq!(rec.rejected.len(), 1);
        assert_eq!(rec.rejected[0].reason, expected);
        assert_eq!(w.ledger.balances(), &before, "balances changed");
        let after = w.ledger.summary();
        assert_eq!(after.total_fees_micros, totals_before.total_fees_micros);
        assert_eq!(after.receipts_settled, totals_before.receipts_settled);
        if !settled_before {
            assert_eq!(
                w.ledger.receipt_status(&id),
                ReceiptStatus::NotSettled {
                    last_rejection: Some(expected)
                }
            );
        }
    }
}

#[test]
fn valid_receipts_settle_exactly_with_interchange_split() {
    let mut w = world();
    let r = signed(&w, receipt(&w, 1, 1_000_001));
    let id = r.receipt.receipt_id;
    let rec = w.submit(batch(&w, vec![r]));
    assert_eq!((rec.settled, rec.fees_settled_micros), (1, 1_000_001));
    // 75 % / 15 % / 10 % of 1 000 001: floors 750 000 / 150 000 / 100 000, leftover 1 goes to the
    // largest fractional part (node-op: .75).
    assert_eq!(w.ledger.balance(&acct("node-op")), 750_001);
    assert_eq!(w.ledger.balance(&acct("rc-op")), 150_000);
    assert_eq!(w.ledger.balance(&acct("protocol")), 100_000);
    // The dashboard's view: largest first, capped.
    assert_eq!(
        w.ledger.top_balances(2),
        vec![(acct("node-op"), 750_001), (acct("rc-op"), 150_000)]
    );
    assert_eq!(w.ledger.top_balances(u16::MAX).len(), 3);
    let s = w.ledger.summary();
    assert_eq!(s.total_credits_micros, u128::from(s.total_fees_micros));
    assert!(matches!(
        w.ledger.receipt_status(&id),
        ReceiptStatus::Settled { index: 0, .. }
    ));
}

#[test]
fn nodeco_owners_are_paid_pro_rata() {
    let mut w = world();
    let reg = NodeRegistration::new(
        &w.node,
        SplitPolicy::NodeCo,
        acct("node-op"),
        vec![(acct("alice"), 3), (acct("bob"), 1)],
    );
    assert_eq!(
        w.ledger.execute(LedgerCommand::RegisterNode(reg)),
        LedgerResponse::Registered(w.node.did())
    );
    w.submit(batch(&w, vec![signed(&w, receipt(&w, 1, 1_000))]));
    assert_eq!(w.ledger.balance(&acct("alice")), 525);
    assert_eq!(w.ledger.balance(&acct("bob")), 175);
    assert_eq!(w.ledger.balance(&acct("node-op")), 200);
    assert_eq!(w.ledger.balance(&acct("protocol")), 100);
    assert_eq!(w.ledger.balance(&acct("rc-op")), 0);
}

#[test]
fn resubmitted_batch_is_idempotent() {
    let mut w = world();
    let b = batch(
        &w,
        vec![
            signed(&w, receipt(&w, 1, 500)),
            signed(&w, receipt(&w, 2, 700)),
        ],
    );
    let first = w.ledger.execute(LedgerCommand::SubmitBatch(b.clone()));
    let hash = w.ledger.state_hash();
    let second = w.ledger.execute(LedgerCommand::SubmitBatch(b.clone()));
    let (
        LedgerResponse::Batch {
            replayed: false,
            record: r1,
            batch_id: id1,
        },
        LedgerResponse::Batch {
            replayed: true,
            record: r2,
            batch_id: id2,
        },
    ) = (first, second)
    else {
        panic!("unexpected responses");
    };
    assert_eq!((r1, id1), (r2, id2));
    assert_eq!(id1, b.id());
    assert_eq!(
        w.ledger.state_hash(),
        hash,
        "a replayed batch changed state"
    );
    assert_eq!(w.ledger.summary().total_fees_micros, 1_200);
}

#[test]
fn reject_forged_node_signature() {
    let mut w = world();
    let mut r = signed(&w, receipt(&w, 1, 100));
    r.node_sig = Sig(Keypair::from_seed([9; 32]).sign(b"something else"));
    let r = r.co_sign(&w.rc); // a valid co-signature over the forged node signature
    w.assert_rejected(r, RejectReason::ForgedSignature(Signer::Node));
}

#[test]
fn reject_forged_rc_signature() {
    let mut w = world();
    let r = receipt(&w, 1, 100)
        .sign(&w.node)
        .co_sign(&Keypair::from_seed([9; 32]));
    w.assert_rejected(r, RejectReason::ForgedSignature(Signer::Rc));
}

#[test]
fn reject_missing_co_signature() {
    let mut w = world();
    let r = receipt(&w, 1, 100).sign(&w.node);
    w.assert_rejected(r, RejectReason::MissingCoSignature);
}

#[test]
fn reject_tampered_field() {
    let mut w = world();
    let mut r = signed(&w, receipt(&w, 1, 100));
    r.receipt.fee_micros = 1_000_000;
    w.assert_rejected(r, RejectReason::TamperedField);
    let mut r = signed(&w, receipt(&w, 2, 100));
    r.receipt.usage.cpu_ms += 1;
    w.assert_rejected(r, RejectReason::TamperedField);
}

#[test]
fn reject_duplicate_receipt() {
    let mut w = world();
    let r = signed(&w, receipt(&w, 1, 100));
    w.submit(batch(&w, vec![r.clone()]));
    // Same receipt in a different batch (different proposal time → different batch id).
    let before = w.ledger.balances().clone();
    let b = Batch {
        proposed_at_ms: 20_000,
        ..batch(&w, vec![r.clone()])
    };
    let rec = w.submit(b);
    assert_eq!(
        rec.rejected[0].reason,
        RejectReason::DuplicateReceipt(r.receipt.receipt_id)
    );
    assert_eq!(w.ledger.balances(), &before);
    // Twice in one batch: the second copy is rejected.
    let r2 = signed(&w, receipt(&w, 2, 100));
    let rec = w.submit(batch(&w, vec![r2.clone(), r2.clone()]));
    assert_eq!(rec.settled, 1);
    assert_eq!(
        rec.rejected[0].reason,
        RejectReason::DuplicateReceipt(r2.receipt.receipt_id)
    );
    assert_eq!(w.ledger.summary().total_fees_micros, 200);
}

#[test]
fn reject_replayed_nonce() {
    let mut w = world();
    w.submit(batch(&w, vec![signed(&w, receipt(&w, 1, 100))]));
    // A new receipt id, validly signed, reusing nonce 1.
    let mut r = receipt(&w, 1, 100);
    r.receipt_id = ReceiptId([0xaa; 16]);
    w.assert_rejected(signed(&w, r), RejectReason::ReplayedNonce { nonce: 1 });
}

#[test]
fn reject_unknown_node_and_unknown_rc() {
    let mut w = world();
    let stranger = Keypair::from_seed([7; 32]);
    let mut r = receipt(&w, 1, 100);
    r.node = stranger.did();
    let r = r.sign(&stranger).co_sign(&w.rc);
    w.assert_rejected(r, RejectReason::UnknownNode(stranger.did()));
    let mut r = receipt(&w, 2, 100);
    r.rc = stranger.did();
    let r = r.sign(&w.node).co_sign(&stranger);
    w.assert_rejected(r, RejectReason::UnknownRc(stranger.did()));
}

#[test]
fn reject_window_in_the_future() {
    let mut w = world();
    let mut r = receipt(&w, 1, 100);
    r.window = UsageWindow {
        start_ms: 9_000,
        end_ms: 10_001,
    };
    w.assert_rejected(
        signed(&w, r),
        RejectReason::WindowInFuture {
            end_ms: 10_001,
            proposed_at_ms: 10_000,
        },
    );
    let mut r = receipt(&w, 2, 100);
    r.window = UsageWindow {
        start_ms: 5_000,
        end_ms: 4_000,
    };
    w.assert_rejected(signed(&w, r), RejectReason::InvalidWindow);
}

#[test]
fn reject_fee_overflow() {
    let mut w = world();
    let big = u64::MAX - 10;
    w.submit(batch(&w, vec![signed(&w, receipt(&w, 1, big))]));
    assert_eq!(w.ledger.summary().total_fees_micros, big);
    w.assert_rejected(signed(&w, receipt(&w, 2, big)), RejectReason::FeeOverflow);
    // A small one still fits the total (10 units left) and settles.
    let rec = w.submit(batch(&w, vec![signed(&w, receipt(&w, 3, 10))]));
    assert_eq!(rec.settled, 1);
    let s = w.ledger.summary();
    assert_eq!(s.total_credits_micros, u128::from(s.total_fees_micros));
}

#[test]
fn registration_requires_proof_of_possession_and_valid_policy() {
    let mut w = world();
    let other = Keypair::from_seed([5; 32]);
    // Someone else's node, signed by the wrong key.
    let mut reg = NodeRegistration::new(&other, SplitPolicy::Interchange, acct("thief"), vec![]);
    reg.did = w.node.did();
    reg.pubkey = w.node.verifying_key().to_bytes();
    assert_eq!(
        w.ledger.execute(LedgerCommand::RegisterNode(reg)),
        LedgerResponse::RegistrationRejected(RegistrationError::BadSignature)
    );
    let mut reg = NodeRegistration::new(&other, SplitPolicy::Interchange, acct("x"), vec![]);
    reg.pubkey = w.node.verifying_key().to_bytes();
    assert_eq!(
        w.ledger.execute(LedgerCommand::RegisterNode(reg)),
        LedgerResponse::RegistrationRejected(RegistrationError::DidKeyMismatch)
    );
    let reg = NodeRegistration::new(&other, SplitPolicy::NodeCo, acct("x"), vec![]);
    assert!(matches!(
        w.ledger.execute(LedgerCommand::RegisterNode(reg)),
        LedgerResponse::RegistrationRejected(RegistrationError::Policy(_))
    ));
}

#[test]
fn malformed_commands_and_queries_do_not_panic_or_change_state() {
    let mut w = world();
    let hash = w.ledger.state_hash();
    let resp = w.ledger.apply(b"\x02\xff\xff\xff\xff\xff");
    let resp: LedgerResponse = opengrid_codec::decode(&resp, 1 << 20).unwrap();
    assert!(matches!(resp, LedgerResponse::Malformed(_)));
    let ans: QueryAnswer = opengrid_codec::decode(&w.ledger.query(b"\x09"), 1 << 20).unwrap();
    assert!(matches!(ans, QueryAnswer::Malformed(_)));
    assert_eq!(w.ledger.state_hash(), hash);
    let q = opengrid_codec::encode(&LedgerQuery::Balance(acct("nobody"))).unwrap();
    let ans: QueryAnswer = opengrid_codec::decode(&w.ledger.query(&q), 1 << 20).unwrap();
    assert_eq!(ans, QueryAnswer::Balance(0));
}

#[test]
fn snapshot_restore_reproduces_state_hash() {
    let mut w = world();
    w.submit(batch(&w, vec![signed(&w, receipt(&w, 1, 100))]));
    let mut other = Ledger::default();
    other.restore(&w.ledger.snapshot()).unwrap();
    assert_eq!(other.state_hash(), w.ledger.state_hash());
    assert!(other.restore(b"not a snapshot").is_err());
}

#[test]
fn batcher_verifies_before_co_signing_and_cuts_batches() {
    let w = world();
    let mut b = Batcher::new(w.rc.clone(), 2);
    for n in 0..5 {
        b.add(receipt(&w, n, 10).sign(&w.node)).unwrap();
    }
    let mut forged = receipt(&w, 9, 10).sign(&w.node);
    forged.receipt.fee_micros = 99;
    assert_eq!(
        b.add(forged),
        Err(CoSignError::Verify(VerifyError::TamperedField))
    );
    let mut elsewhere = receipt(&w, 10, 10);
    elsewhere.rc = Keypair::from_seed([8; 32]).did();
    assert!(matches!(
        b.add(elsewhere.sign(&w.node)),
        Err(CoSignError::NotRoutedHere(_))
    ));
    let batches = b.cut(10_000);
    assert_eq!(
        batches.iter().map(|x| x.receipts.len()).collect::<Vec<_>>(),
        vec![2, 2, 1]
    );
    assert_eq!(b.pending(), 0);
    assert!(b.cut(10_001).is_empty());
    let ids: std::collections::BTreeSet<_> = batches.iter().map(|x| x.id()).collect();
    assert_eq!(ids.len(), 3, "batch ids are distinct per part");
    let mut ledger = w.ledger.clone();
    for batch in batches {
        ledger.execute(LedgerCommand::SubmitBatch(batch));
    }
    assert_eq!(ledger.summary().receipts_settled, 5);
}

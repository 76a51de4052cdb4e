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
use opengrid_settlement::OperatorAuthError;
use opengrid_settlement::{
    Account, Batch, Keypair, Ledger, LedgerResponse, LedgerRules, Receipt, ReceiptId, RejectReason,
    SignedReceipt, SplitPolicy, Usage, UsageWindow,
};

struct World {
    ledger: Ledger,
    node: Keypair,
    rc: Keypair,
}

/// The ledger operator of every test world.
fn operator() -> Keypair {
    Keypair::from_seed([9; 32])
}

fn ledger_with(rules: LedgerRules) -> Ledger {
    Ledger::with_rules(
        Account::protocol(),
        LedgerRules {
            operator: Some(operator().did()),
            ..rules
        },
    )
}

fn acct(s: &str) -> Account {
    Account::new(s).unwrap()
}

fn world() -> World {
    world_with(LedgerRules::default())
}

fn world_with(rules: LedgerRules) -> World {
    let mut ledger = ledger_with(rules);
    let node = Keypair::from_seed([1; 32]);
    let rc = Keypair::from_seed([2; 32]);
    let r = ledger.execute(LedgerCommand::RegisterNode(
        NodeRegistration::new(&node, SplitPolicy::Interchange, acct("node-op"), vec![])
            .authorize(&operator()),
    ));
    assert_eq!(r, LedgerResponse::Registered(node.did()));
    let r = ledger.execute(LedgerCommand::RegisterRc(
        RcRegistration::new(&rc, acct("rc-op")).authorize(&operator()),
    ));
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
    )
    .authorize(&operator());
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
    // No fee cap here: the overflow check itself is under test.
    let mut w = world_with(LedgerRules {
        max_fee_micros: u64::MAX,
        ..LedgerRules::default()
    });
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
    let reg = NodeRegistration::new(&other, SplitPolicy::NodeCo, acct("x"), vec![])
        .authorize(&operator());
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
    let mut other = ledger_with(LedgerRules::default());
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

// ---- Amount and authorization rules (trust boundary) ----

#[test]
fn the_same_window_billed_again_under_a_new_id_is_refused() {
    let mut w = world();
    let first = receipt(&w, 1, 500);
    w.submit(batch(&w, vec![signed(&w, first.clone())]));
    // Same node, session and window; new receipt id and nonce.
    let mut again = first.clone();
    again.receipt_id = ReceiptId([0xee; 16]);
    again.nonce = 1_000;
    let reason = RejectReason::WindowAlreadyBilled {
        session_id: first.session_id.clone(),
        start_ms: 1_000,
        end_ms: 2_000,
        billed_until_ms: 2_000,
    };
    w.assert_rejected(signed(&w, again.clone()), reason);
    // An overlapping window is refused too.
    let mut overlap = again.clone();
    overlap.receipt_id = ReceiptId([0xef; 16]);
    overlap.nonce = 1_001;
    overlap.window = UsageWindow {
        start_ms: 1_500,
        end_ms: 2_500,
    };
    let rec = w.submit(batch(&w, vec![signed(&w, overlap)]));
    assert!(matches!(
        rec.rejected[0].reason,
        RejectReason::WindowAlreadyBilled { .. }
    ));
    // The next window of the session settles.
    let mut next = again;
    next.receipt_id = ReceiptId([0xf0; 16]);
    next.nonce = 1_002;
    next.window = UsageWindow {
        start_ms: 2_000,
        end_ms: 3_000,
    };
    let rec = w.submit(batch(&w, vec![signed(&w, next)]));
    assert_eq!(rec.settled, 1, "{rec:?}");
    assert_eq!(w.ledger.summary().total_fees_micros, 1_000);
}

#[test]
fn a_fee_over_the_cap_is_refused_and_honest_receipts_still_settle() {
    let mut w = world();
    w.submit(batch(&w, vec![signed(&w, receipt(&w, 1, 1_000))]));
    let total = w.ledger.summary().total_fees_micros;
    // The attack of the issue: a fee of u64::MAX - total would fill the ledger's total.
    let cap = opengrid_settlement::ledger::DEFAULT_MAX_FEE_MICROS;
    w.assert_rejected(
        signed(&w, receipt(&w, 2, u64::MAX - total)),
        RejectReason::FeeOverCap {
            fee_micros: u64::MAX - total,
            cap_micros: cap,
        },
    );
    w.assert_rejected(
        signed(&w, receipt(&w, 3, cap + 1)),
        RejectReason::FeeOverCap {
            fee_micros: cap + 1,
            cap_micros: cap,
        },
    );
    let rec = w.submit(batch(&w, vec![signed(&w, receipt(&w, 4, cap))]));
    assert_eq!(rec.settled, 1, "a fee at the cap settles");
    let rec = w.submit(batch(&w, vec![signed(&w, receipt(&w, 5, 700))]));
    assert_eq!(rec.settled, 1, "an honest receipt after the attack settles");
    let s = w.ledger.summary();
    assert_eq!(s.total_fees_micros, 1_000 + cap + 700);
    assert_eq!(s.total_credits_micros, u128::from(s.total_fees_micros));
}

#[test]
fn an_overflowing_fee_is_refused_alone_and_does_not_poison_later_receipts() {
    // No cap (u64::MAX): the overflow check itself must hold.
    let mut w = world_with(LedgerRules {
        max_fee_micros: u64::MAX,
        ..LedgerRules::default()
    });
    w.submit(batch(&w, vec![signed(&w, receipt(&w, 1, 1_000))]));
    w.assert_rejected(
        signed(&w, receipt(&w, 2, u64::MAX)),
        RejectReason::FeeOverflow,
    );
    let rec = w.submit(batch(
        &w,
        vec![
            signed(&w, receipt(&w, 3, u64::MAX - 999)),
            signed(&w, receipt(&w, 4, 250)),
        ],
    ));
    assert_eq!(rec.settled, 1, "{rec:?}");
    assert_eq!(rec.rejected[0].reason, RejectReason::FeeOverflow);
    let s = w.ledger.summary();
    assert_eq!(s.total_fees_micros, 1_250);
    assert_eq!(s.total_credits_micros, 1_250);
    let sum: u128 = w.ledger.balances().values().map(|b| u128::from(*b)).sum();
    assert_eq!(sum, 1_250);
}

#[test]
fn registrations_need_the_ledger_operators_signature_once() {
    let mut w = world();
    let node = Keypair::from_seed([31; 32]);
    let reg = || NodeRegistration::new(&node, SplitPolicy::Interchange, acct("n-op"), vec![]);
    let refused = |e| LedgerResponse::RegistrationRejected(RegistrationError::Operator(e));
    let hash = w.ledger.state_hash();
    // Self-registration (the attack of the issue): no operator signature.
    assert_eq!(
        w.ledger.execute(LedgerCommand::RegisterNode(reg())),
        refused(OperatorAuthError::Missing)
    );
    // Signed by someone else.
    let stranger = Keypair::from_seed([32; 32]);
    assert_eq!(
        w.ledger
            .execute(LedgerCommand::RegisterNode(reg().authorize(&stranger))),
        refused(OperatorAuthError::ForgedSignature {
            operator: operator().did().to_string()
        })
    );
    // The operator's signature over another registration does not carry over.
    let mut moved = reg().authorize(&operator());
    moved.operator = acct("thief");
    let moved = NodeRegistration {
        signature: NodeRegistration::new(&node, SplitPolicy::Interchange, acct("thief"), vec![])
            .signature,
        ..moved
    };
    assert!(matches!(
        w.ledger.execute(LedgerCommand::RegisterNode(moved)),
        LedgerResponse::RegistrationRejected(RegistrationError::Operator(
            OperatorAuthError::ForgedSignature { .. }
        ))
    ));
    let rc = Keypair::from_seed([33; 32]);
    assert_eq!(
        w.ledger
            .execute(LedgerCommand::RegisterRc(RcRegistration::new(
                &rc,
                acct("r-op")
            ))),
        refused(OperatorAuthError::Missing)
    );
    assert_eq!(
        w.ledger.state_hash(),
        hash,
        "a refused registration changed state"
    );
    assert_eq!(w.ledger.summary().nodes, 1);
    // Authorized: registered; the same authorization replayed later is refused.
    let good = reg().authorize(&operator());
    assert_eq!(
        w.ledger.execute(LedgerCommand::RegisterNode(good.clone())),
        LedgerResponse::Registered(node.did())
    );
    assert_eq!(
        w.ledger.execute(LedgerCommand::RegisterNode(good)),
        refused(OperatorAuthError::Replayed)
    );
    // A ledger with no operator configured refuses every registration.
    let mut closed = Ledger::default();
    assert_eq!(
        closed.execute(LedgerCommand::RegisterNode(reg().authorize(&operator()))),
        refused(OperatorAuthError::NotConfigured)
    );
}

#[test]
fn the_rejection_log_is_bounded_and_counts_everything() {
    let mut w = world_with(LedgerRules {
        max_rejections: 5,
        ..LedgerRules::default()
    });
    let forged = |w: &World, n: u64| {
        let mut r = signed(w, receipt(w, n, 10));
        r.rc_sig = None;
        r
    };
    for n in 1..=20u64 {
        w.submit(batch(&w, vec![forged(&w, n)]));
    }
    let s = w.ledger.summary();
    assert_eq!((s.rejections_total, s.rejections_kept), (20, 5));
    // The oldest rejections left the log; the newest are there.
    assert_eq!(
        w.ledger.receipt_status(&ReceiptId([1; 16])),
        ReceiptStatus::NotSettled {
            last_rejection: None
        }
    );
    assert_eq!(
        w.ledger.receipt_status(&ReceiptId([20; 16])),
        ReceiptStatus::NotSettled {
            last_rejection: Some(RejectReason::MissingCoSignature)
        }
    );
    // A big all-bad batch stores a bounded list in its record but counts every rejection.
    let many: Vec<SignedReceipt> = (100..300u64).map(|n| forged(&w, n)).collect();
    let rec = w.submit(batch(&w, many));
    assert_eq!(rec.rejected_total, 200);
    assert_eq!(
        rec.rejected.len(),
        opengrid_settlement::ledger::MAX_STORED_BATCH_REJECTIONS
    );
    assert_eq!(w.ledger.summary().rejections_kept, 5);
    assert_eq!(w.ledger.summary().rejections_total, 220);
    // A receipt that settles after a rejection leaves the log.
    let ok = signed(&w, receipt(&w, 299, 10));
    assert_eq!(w.submit(batch(&w, vec![ok])).settled, 1);
    assert_eq!(w.ledger.summary().rejections_kept, 4);
}

/// Signatures are checked once, by the leader admitting a batch (`Ledger::prepare`), and the
/// outcome travels in the log: a replica applying `SubmitVerified` rejects what the leader found
/// forged, and a client that sends its own `SubmitVerified` claiming every signature good is not
/// believed — the leader checks the batch afresh.
#[test]
fn signatures_are_checked_once_at_admission_and_a_client_s_claim_is_not_trusted() {
    let mut w = world();
    let good = signed(&w, receipt(&w, 1, 100));
    let mut forged = signed(&w, receipt(&w, 2, 100));
    forged.node_sig = Sig(Keypair::from_seed([9; 32]).sign(b"something else"));
    let forged = forged.co_sign(&w.rc);
    let b = batch(&w, vec![good, forged]);
    let lie = LedgerCommand::SubmitVerified {
        batch: b.clone(),
        checks: vec![None, None],
    };
    let bytes = opengrid_codec::encode(&lie).unwrap();
    let prepared = Ledger::prepare(bytes);
    match opengrid_codec::decode::<LedgerCommand>(&prepared, usize::MAX).unwrap() {
        LedgerCommand::SubmitVerified { checks, .. } => assert_eq!(
            checks,
            vec![None, Some(VerifyError::ForgedSignature(Signer::Node))],
            "the leader's own check replaces the client's claim"
        ),
        other => panic!("prepared into {other:?}"),
    }
    let answer: LedgerResponse =
        opengrid_codec::decode(&w.ledger.apply(&prepared), usize::MAX).unwrap();
    match answer {
        LedgerResponse::Batch { record, .. } => {
            assert_eq!(record.settled, 1);
            assert_eq!(record.rejected.len(), 1);
            assert_eq!(
                record.rejected[0].reason,
                RejectReason::ForgedSignature(Signer::Node)
            );
        }
        other => panic!("{other:?}"),
    }
    // Anything else passes through untouched.
    let reg = opengrid_codec::encode(&LedgerCommand::RegisterRc(
        RcRegistration::new(&Keypair::from_seed([3; 32]), acct("x")).authorize(&operator()),
    ))
    .unwrap();
    assert_eq!(Ledger::prepare(reg.clone()), reg);
}

//! The RC's co-sign checks: the fee is inputs × the node's price, the window is the session's
//! next unbilled one, the queue is bounded (beyond it receipts stay with the node and are
//! resent), and the per-session tracking is bounded.

use std::time::{Duration, Instant};

use opengrid_settlement::{Receipt, ReceiptId, SignedReceipt, Usage, UsageWindow};

use super::*;
use crate::common::identity::Identity;
use crate::common::receipts::keypair;

const PRICE: u64 = 7;

struct Fixture {
    node: Identity,
    settler: Arc<Settler>,
}

fn fixture(max_pending: usize) -> Fixture {
    let rc = Identity::generate();
    let settler = Settler::new(
        &SettlementSection {
            ledger: vec!["127.0.0.1:1".into()],
            max_pending,
            ..Default::default()
        },
        &rc,
    )
    .unwrap();
    Fixture {
        node: Identity::generate(),
        settler,
    }
}

impl Fixture {
    fn receipt(
        &self,
        session: &str,
        start_ms: u64,
        end_ms: u64,
        inputs: u64,
        fee: u64,
    ) -> SignedReceipt {
        Receipt {
            receipt_id: ReceiptId::random(),
            session_id: session.into(),
            node: did(&self.node.id()),
            rc: self.settler.rc.clone(),
            window: UsageWindow { start_ms, end_ms },
            usage: Usage {
                inputs,
                cpu_ms: 1,
                bytes: 10,
                tokens: None,
            },
            fee_micros: fee,
            nonce: rand::random(),
        }
        .sign(&keypair(&self.node))
    }

    /// (accepted, refused reasons) of one message.
    fn send(&self, rs: Vec<SignedReceipt>) -> (Vec<ReceiptId>, Vec<(ReceiptId, String)>) {
        match self.settler.on_receipts(&self.node.id(), Some(PRICE), rs) {
            ToNode::ReceiptsAck { accepted, refused } => (accepted, refused),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn a_fee_that_is_not_inputs_times_price_is_refused_with_the_reason() {
    let f = fixture(100);
    let good = f.receipt("s", 1_000, 2_000, 3, 3 * PRICE);
    let over = f.receipt("t", 1_000, 2_000, 3, 3 * PRICE + 1);
    let huge = f.receipt("u", 1_000, 2_000, 1, u64::MAX);
    let overflow = f.receipt("v", 1_000, 2_000, u64::MAX / 2, u64::MAX);
    let (accepted, refused) = f.send(vec![good.clone(), over.clone(), huge, overflow]);
    assert_eq!(accepted, vec![good.receipt.receipt_id]);
    assert_eq!(refused.len(), 3, "{refused:?}");
    let why = &refused
        .iter()
        .find(|(id, _)| *id == over.receipt.receipt_id)
        .unwrap()
        .1;
    assert!(why.contains("is not 3 inputs × 7 µ = 21 µ"), "{why}");
    assert!(
        refused.iter().any(|(_, w)| w.contains("overflows")),
        "{refused:?}"
    );
    let st = f.settler.status();
    assert_eq!(
        (st.co_signed, st.refused, st.refused_fee, st.pending),
        (1, 3, 3, 1)
    );
}

#[test]
fn only_the_next_unbilled_window_of_a_session_is_co_signed() {
    let f = fixture(100);
    let w1 = f.receipt("s", 1_000, 2_000, 1, PRICE);
    assert_eq!(f.send(vec![w1.clone()]).0.len(), 1);
    // The same window again under a new id, and an overlapping one: refused.
    let again = f.receipt("s", 1_000, 2_000, 1, PRICE);
    let overlap = f.receipt("s", 1_500, 2_500, 1, PRICE);
    let (accepted, refused) = f.send(vec![again, overlap]);
    assert!(accepted.is_empty());
    assert_eq!(refused.len(), 2);
    assert!(
        refused.iter().all(|(_, w)| w.contains("already billed")),
        "{refused:?}"
    );
    // A resend of the receipt already queued is acknowledged again, not refused.
    assert_eq!(f.send(vec![w1.clone()]).0, vec![w1.receipt.receipt_id]);
    // Later windows, sent out of order in one message, are taken in window order.
    let w3 = f.receipt("s", 3_000, 4_000, 2, 2 * PRICE);
    let w2 = f.receipt("s", 2_000, 3_000, 1, PRICE);
    let (accepted, refused) = f.send(vec![w3.clone(), w2.clone()]);
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(accepted, vec![w2.receipt.receipt_id, w3.receipt.receipt_id]);
    // Another session, and a window ending far in the future, are judged on their own.
    let other = f.receipt("t", 1_000, 2_000, 1, PRICE);
    let future = f.receipt(
        "u",
        1_000,
        crate::common::wire::unix_ms() + 3_600_000,
        1,
        PRICE,
    );
    let (accepted, refused) = f.send(vec![other.clone(), future]);
    assert_eq!(accepted, vec![other.receipt.receipt_id]);
    assert!(refused[0].1.contains("future"), "{refused:?}");
    assert_eq!(f.settler.status().refused_window, 3);
    // A closed session is forgotten (the ledger still refuses a second bill of a window).
    assert_eq!(f.settler.tracked_sessions(), 2);
    f.settler.session_closed(&f.node.id(), "s");
    assert_eq!(f.settler.tracked_sessions(), 1);
}

#[test]
fn receipts_of_a_node_whose_price_is_unknown_are_deferred() {
    let f = fixture(100);
    let r = f.receipt("s", 1_000, 2_000, 1, PRICE);
    let ToNode::ReceiptsAck { accepted, refused } =
        f.settler.on_receipts(&f.node.id(), None, vec![r])
    else {
        panic!()
    };
    assert!(accepted.is_empty() && refused.is_empty());
    assert_eq!(f.settler.status().deferred, 1);
}

#[test]
fn session_tracking_is_bounded_by_count_and_age() {
    let node = Identity::generate().id();
    let mut t = BillingTracker::default();
    let now = Instant::now();
    for i in 0..MAX_TRACKED_SESSIONS + 10 {
        t.record((node, format!("s{i}")), 0, 1, now);
    }
    assert_eq!(t.len(), MAX_TRACKED_SESSIONS);
    // The least recently billed left first.
    assert!(t.check(&(node, "s0".into()), 0, 1).is_ok());
    assert!(t
        .check(&(node, format!("s{}", MAX_TRACKED_SESSIONS + 9)), 0, 1)
        .is_err());
    assert!(t.order.len() <= MAX_TRACKED_SESSIONS + 10);
    // A day later, one new bill evicts every stale entry.
    t.record(
        (node, "late".into()),
        0,
        1,
        now + SESSION_TRACK_TTL + Duration::from_secs(1),
    );
    assert_eq!(t.len(), 1);
    assert_eq!(t.order.len(), 1);
}

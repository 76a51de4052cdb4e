//! The settlement checker: replicas agree, credits equal fees, exactly the acknowledged receipts.

use super::*;

fn rep(name: &str, receipts: u64, fees: u64, hash: &str) -> ReplicaTotals {
    ReplicaTotals {
        name: name.into(),
        receipts,
        fees,
        credits: fees as u128,
        state_hash: hash.into(),
    }
}

fn seen(replicas: Vec<ReplicaTotals>, acked: u64, fees: u64) -> SettlementSeen {
    SettlementSeen {
        replicas,
        acked,
        acked_fees: fees,
        unsettled: 0,
        rejected: 0,
        counters_complete: true,
    }
}

#[test]
fn agreeing_replicas_that_settled_every_acknowledged_receipt_pass() {
    let s = seen(
        vec![rep("l1", 10, 500, "ab"), rep("l2", 10, 500, "ab")],
        10,
        500,
    );
    assert!(check_settlement(&s).is_empty());
}

#[test]
fn each_way_settlement_can_go_wrong_is_reported() {
    let lost = seen(vec![rep("l1", 9, 450, "ab")], 10, 500);
    assert!(check_settlement(&lost)[0].detail.contains("never settled"));
    let twice = seen(vec![rep("l1", 11, 550, "ab")], 10, 500);
    assert!(check_settlement(&twice)[0].detail.contains("applied twice"));
    let diverged = seen(
        vec![rep("l1", 10, 500, "ab"), rep("l2", 10, 500, "cd")],
        10,
        500,
    );
    assert!(check_settlement(&diverged)[0].detail.contains("diverge"));
    let mut unbalanced = seen(vec![rep("l1", 10, 500, "ab")], 10, 500);
    unbalanced.replicas[0].credits = 499;
    assert!(check_settlement(&unbalanced)[0]
        .detail
        .contains("credits sum"));
    let mut queued = seen(vec![rep("l1", 10, 500, "ab")], 10, 500);
    queued.unsettled = 3;
    assert!(check_settlement(&queued)[0]
        .detail
        .contains("never settled"));
    assert!(!check_settlement(&seen(vec![], 0, 0)).is_empty());
    // Without complete counters (a node restarted) only the ledger's own checks apply.
    let mut partial = seen(vec![rep("l1", 12, 600, "ab")], 10, 500);
    partial.counters_complete = false;
    assert!(check_settlement(&partial).is_empty());
}

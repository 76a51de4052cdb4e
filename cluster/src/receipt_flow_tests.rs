//! The receipt flow across both sides: a node's emitter signs, the RC's settler co-signs.

mod tests {
    use std::time::{Duration, Instant};

    use opengrid_actors::Usage as SessionUsage;
    use opengrid_session::{HumanDuration, SessionId};
    use opengrid_settlement::SignedReceipt;

    use crate::common::identity::Identity;
    use crate::common::receipts::did;
    use crate::common::wire::{ToNode, ToRc};
    use crate::node::receipts::*;
    use crate::rc::settlement::*;

    fn usage(inputs: u64) -> SessionUsage {
        SessionUsage {
            inputs,
            bytes_in: inputs * 10,
            handler_busy_us: inputs * 1500,
            ..Default::default()
        }
    }

    fn receipts_of(msgs: Vec<ToRc>) -> Vec<SignedReceipt> {
        msgs.into_iter()
            .flat_map(|m| match m {
                ToRc::Receipts { receipts, .. } => receipts,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn one_receipt_per_active_session_per_window_cosigned_by_the_rc() {
        let node = Identity::generate();
        let rc = Identity::generate();
        let e = ReceiptEmitter::new(&node, Duration::from_millis(10), 7);
        let s1 = SessionId::random();
        let s2 = SessionId::random();
        let t0 = Instant::now();
        // No RC known yet: nothing is cut.
        assert!(e.tick(t0, vec![(s1.clone(), usage(3))]).is_empty());
        e.set_rc(&rc.id());
        // Window not over yet: nothing new.
        assert!(e.tick(t0, vec![(s1.clone(), usage(3))]).is_empty());
        let t1 = t0 + Duration::from_millis(20);
        let rs = receipts_of(e.tick(t1, vec![(s1.clone(), usage(3)), (s2.clone(), usage(0))]));
        assert_eq!(rs.len(), 1, "idle sessions get no receipt");
        assert_eq!(rs[0].receipt.fee_micros, 21);
        assert_eq!(rs[0].receipt.usage.inputs, 3);
        assert_eq!(rs[0].receipt.usage.cpu_ms, 4);
        // Unacknowledged: resent at the next tick, with nothing new in the window.
        let t2 = t1 + Duration::from_millis(20);
        let again = receipts_of(e.tick(t2, vec![(s1.clone(), usage(3))]));
        assert_eq!(again, rs);

        let settler = Settler::new(
            &SettlementSection {
                ledger: vec!["127.0.0.1:1".into()],
                ..Default::default()
            },
            &rc,
        )
        .unwrap();
        // Only the node itself may hand in its receipts.
        let ToNode::ReceiptsAck { accepted, refused } =
            settler.on_receipts(&Identity::generate().id(), Some(7), again.clone())
        else {
            panic!()
        };
        assert!(accepted.is_empty());
        assert_eq!(refused.len(), 1);
        // A tampered receipt is refused, a good one co-signed.
        let mut bad = again[0].clone();
        bad.receipt.fee_micros += 1;
        let ToNode::ReceiptsAck { accepted, refused } =
            settler.on_receipts(&node.id(), Some(7), vec![bad, again[0].clone()])
        else {
            panic!()
        };
        assert_eq!(accepted, vec![again[0].receipt.receipt_id]);
        assert_eq!(refused.len(), 1);
        // A resend after a lost ack is acknowledged again but queued once.
        settler.on_receipts(&node.id(), Some(7), again.clone());
        assert_eq!(settler.status().pending, 1);
        let batch = settler.cut_now();
        batch[0].receipts[0]
            .verify(
                &did(&node.id()).verifying_key(),
                &did(&rc.id()).verifying_key(),
            )
            .unwrap();
        e.on_ack(&accepted, &[]);
        assert_eq!(e.counters().unacked, 0);
        assert_eq!(e.counters().acked, 1);
        // Next window: only the new usage is receipted, with a fresh, larger nonce.
        let t3 = t2 + Duration::from_millis(20);
        let next = receipts_of(e.tick(t3, vec![(s1, usage(5))]));
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].receipt.usage.inputs, 2);
        assert!(next[0].receipt.nonce > rs[0].receipt.nonce);
        assert!(next[0].receipt.window.start_ms >= rs[0].receipt.window.end_ms);
    }

    /// A session that leaves between two window ends (closed, handed over) is receipted at once
    /// for its usage since the last window end, once, and the RC co-signs that last window.
    #[test]
    fn a_session_leaving_mid_window_gets_its_last_window_receipted_once() {
        let node = Identity::generate();
        let rc = Identity::generate();
        let e = ReceiptEmitter::new(&node, Duration::from_millis(10), 2);
        e.set_rc(&rc.id());
        let (s1, s2) = (SessionId::random(), SessionId::random());
        let t0 = Instant::now();
        let first = receipts_of(e.tick(
            t0 + Duration::from_millis(20),
            vec![(s1.clone(), usage(3)), (s2.clone(), usage(1))],
        ));
        assert_eq!(first.len(), 2);
        // s1 does 4 more inputs, then is closed before the window ends.
        e.close_window(&s1, usage(7));
        e.close_window(&s1, usage(7));
        let settler = Settler::new(
            &SettlementSection {
                ledger: vec!["127.0.0.1:1".into()],
                ..Default::default()
            },
            &rc,
        )
        .unwrap();
        // The next tick still lists s1 (a moved session stays to relay): no second receipt.
        let t1 = t0 + Duration::from_millis(40);
        let all = receipts_of(e.tick(t1, vec![(s1.clone(), usage(9)), (s2.clone(), usage(2))]));
        let of = |s: &SessionId| -> Vec<SignedReceipt> {
            all.iter()
                .filter(|r| r.receipt.session_id == s.to_string())
                .cloned()
                .collect()
        };
        let s1r = of(&s1);
        assert_eq!(s1r.len(), 2, "its first window and its last: {s1r:?}");
        assert_eq!(
            s1r[1].receipt.usage.inputs, 4,
            "the usage since the last window end"
        );
        assert_eq!(s1r[1].receipt.fee_micros, 8);
        assert_eq!(s1r[1].receipt.window.start_ms, s1r[0].receipt.window.end_ms);
        assert_eq!(of(&s2).len(), 2);
        // The RC co-signs every one of them: the last window is the session's next unbilled one.
        let ToNode::ReceiptsAck { accepted, refused } =
            settler.on_receipts(&node.id(), Some(2), all.clone())
        else {
            panic!()
        };
        assert!(refused.is_empty(), "{refused:?}");
        assert_eq!(accepted.len(), all.len());
    }

    #[test]
    fn settlement_section_validation_names_the_field() {
        let mut s = SettlementSection::default();
        assert!(s.validate().is_ok());
        s.interval = HumanDuration::from_millis(0);
        assert_eq!(s.validate().unwrap_err().0, "settlement.interval");
        s = SettlementSection {
            ledger: vec!["nohost".into()],
            ..Default::default()
        };
        assert_eq!(s.validate().unwrap_err().0, "settlement.ledger");
    }

    /// The RC's bounded queue (beyond `max_pending` receipts are deferred): the node keeps a
    /// deferred receipt and resends it, and it is accepted once the queue has room.
    #[test]
    fn a_full_queue_defers_receipts_which_the_node_keeps_and_resends() {
        const PRICE: u64 = 7;
        let (node, rc) = (Identity::generate(), Identity::generate());
        let settler = Settler::new(
            &SettlementSection {
                ledger: vec!["127.0.0.1:1".into()],
                max_pending: 2,
                ..Default::default()
            },
            &rc,
        )
        .unwrap();
        let send = |rs: Vec<SignedReceipt>| match settler.on_receipts(&node.id(), Some(PRICE), rs) {
            ToNode::ReceiptsAck { accepted, refused } => (accepted, refused),
            other => panic!("unexpected {other:?}"),
        };
        let e = ReceiptEmitter::new(&node, Duration::from_millis(10), PRICE);
        e.set_rc(&rc.id());
        let sessions: Vec<_> = (0..3).map(|_| SessionId::random()).collect();
        // An idle session's usage is all zero: the first tick cuts nothing even when the
        // machine is slow enough for the 10 ms window to have ended by then.
        let usage = |inputs: u64| opengrid_actors::Usage {
            inputs,
            bytes_in: inputs.min(1),
            handler_busy_us: inputs.min(1),
            ..Default::default()
        };
        let t0 = Instant::now();
        e.tick(
            t0,
            sessions
                .iter()
                .map(|s| (s.clone(), usage(0)))
                .collect::<Vec<_>>(),
        );
        let msgs = e.tick(
            t0 + Duration::from_millis(20),
            sessions
                .iter()
                .map(|s| (s.clone(), usage(2)))
                .collect::<Vec<_>>(),
        );
        let receipts: Vec<SignedReceipt> = msgs
            .into_iter()
            .flat_map(|m| match m {
                ToRc::Receipts { receipts, .. } => receipts,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(receipts.len(), 3);
        let (accepted, refused) = send(receipts);
        assert_eq!(
            (accepted.len(), refused.len()),
            (2, 0),
            "queue of 2: one deferred"
        );
        assert_eq!(settler.status().deferred, 1);
        e.on_ack(&accepted, &refused);
        let c = e.counters();
        assert_eq!(
            (c.acked, c.refused, c.unacked),
            (2, 0, 1),
            "the deferred receipt stays on the node"
        );
        // The next interval empties the queue; the node's resend is then accepted.
        assert_eq!(
            settler
                .cut_now()
                .iter()
                .map(|b| b.receipts.len())
                .sum::<usize>(),
            2
        );
        let resend: Vec<SignedReceipt> = e
            .tick(t0 + Duration::from_millis(25), Vec::new())
            .into_iter()
            .flat_map(|m| match m {
                ToRc::Receipts { receipts, .. } => receipts,
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(resend.len(), 1);
        let (accepted, refused) = send(resend);
        assert_eq!((accepted.len(), refused.len()), (1, 0));
        e.on_ack(&accepted, &refused);
        assert_eq!(e.counters().unacked, 0);
    }
}

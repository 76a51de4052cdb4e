//! Each checker on clean histories and on the violation it exists to catch.

use super::*;

fn rec(s: &str, seq: u64, sent: u64, acked: Option<u64>) -> InputRecord {
    InputRecord {
        session: s.into(),
        seq,
        sent_ms: sent,
        acked_ms: acked,
    }
}

fn out(s: &str, bound: u64, applied: &[u64]) -> SessionOutcome {
    SessionOutcome {
        session: s.into(),
        loss_bound_ms: bound,
        applied: applied.to_vec(),
    }
}

#[test]
fn clean_history_passes() {
    let inputs = vec![
        rec("a", 1, 0, Some(5)),
        rec("a", 2, 10, Some(15)),
        rec("a", 3, 20, None),
    ];
    // Unacknowledged seq 3 may or may not be applied.
    assert!(check_inputs(&inputs, &[out("a", 0, &[1, 2])], &[]).is_empty());
    assert!(check_inputs(&inputs, &[out("a", 0, &[1, 2, 3])], &[]).is_empty());
}

#[test]
fn zero_loss_session_losing_an_acked_input_is_caught() {
    let inputs = vec![rec("a", 1, 0, Some(5)), rec("a", 2, 10, Some(15))];
    let v = check_inputs(&inputs, &[out("a", 0, &[1])], &[20]);
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].invariant, Invariant::NoAckedLoss);
    assert!(v[0].detail.contains("seq 2") && v[0].detail.contains("no loss"));
    assert_eq!(v[0].t_ms, Some(15));
}

#[test]
fn bounded_loss_is_excused_only_near_a_failure() {
    let inputs = vec![rec("b", 1, 0, Some(5)), rec("b", 2, 100, Some(105))];
    // Failure 50 ms after the ack of seq 2, bound 100 ms: excused.
    assert!(check_inputs(&inputs, &[out("b", 100, &[1])], &[155]).is_empty());
    // Failure 500 ms later: not excused.
    let v = check_inputs(&inputs, &[out("b", 100, &[1])], &[605]);
    assert_eq!(v.len(), 1);
    assert!(v[0].detail.contains("100 ms bound"), "{}", v[0].detail);
    // No failure at all: not excused.
    assert_eq!(check_inputs(&inputs, &[out("b", 100, &[1])], &[]).len(), 1);
}

#[test]
fn duplicates_phantoms_and_unobserved_sessions_are_caught() {
    let inputs = vec![rec("a", 1, 0, Some(1)), rec("a", 2, 2, Some(3))];
    let v = check_inputs(&inputs, &[out("a", 0, &[1, 2, 2, 9])], &[]);
    let kinds: Vec<_> = v.iter().map(|x| (x.invariant, x.detail.clone())).collect();
    assert_eq!(v.len(), 2, "{kinds:?}");
    assert!(v.iter().any(|x| x.detail.contains("seq 2 applied twice")));
    assert!(v
        .iter()
        .any(|x| x.detail.contains("seq 9 applied but never sent")));
    let v = check_inputs(&inputs, &[], &[]);
    assert_eq!(v.len(), 1);
    assert!(v[0].detail.contains("never observed"));
}

fn ev(s: &str, n: &str, epoch: u64, kind: EventKind, t: u64) -> NodeEvent {
    NodeEvent {
        session: s.into(),
        node: n.into(),
        epoch,
        event: kind,
        t_ms: t,
        seq: None,
    }
}

#[test]
fn handover_and_failover_histories_pass() {
    use EventKind::*;
    let events = vec![
        ev("s", "n1", 1, Active, 0),
        ev("s", "n1", 1, Inactive, 100),
        ev("s", "n2", 2, Active, 101),
        // n2 killed at 200, n3 takes over at 300 with epoch 3.
        ev("s", "n3", 3, Active, 300),
    ];
    let deaths = BTreeMap::from([("n2".to_string(), 200)]);
    assert!(check_single_active(&events, &deaths, 1000, 0).is_empty());
}

#[test]
fn overlapping_holders_are_caught_with_details() {
    use EventKind::*;
    let events = vec![
        ev("s", "n1", 1, Active, 0),
        ev("s", "n2", 2, Active, 50),
        ev("s", "n1", 1, Inactive, 120),
    ];
    let v = check_single_active(&events, &BTreeMap::new(), 1000, 10);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].detail.contains("for 70 ms"), "{}", v[0].detail);
    assert_eq!(v[0].t_ms, Some(50));
    // Within the grace: allowed.
    assert!(check_single_active(&events, &BTreeMap::new(), 1000, 100).is_empty());
    // Same epoch on two nodes: always a violation.
    let same = vec![ev("s", "n1", 4, Active, 0), ev("s", "n2", 4, Active, 500)];
    let v = check_single_active(&same, &BTreeMap::from([("n1".into(), 400)]), 1000, 0);
    assert_eq!(v.len(), 1);
    assert!(v[0].detail.contains("epoch 4 active on both"));
}

#[test]
fn unfenced_stale_holder_processing_is_caught() {
    use EventKind::*;
    let mut p = ev("s", "n1", 1, Processed, 600);
    p.seq = Some(42);
    let events = vec![
        ev("s", "n1", 1, Active, 0),
        ev("s", "n1", 1, Inactive, 100),
        ev("s", "n2", 2, Active, 500),
        p,
    ];
    let v = check_single_active(&events, &BTreeMap::new(), 1000, 0);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].detail.contains("stale holder"));
    assert!(v[0].detail.contains("Some(42)"));
}

#[test]
fn node_event_lines_parse_and_bad_lines_are_reported() {
    let text = r#"{"session":"s","node":"n1","epoch":1,"event":"active","t_ms":3}

{"session":"s","node":"n1","epoch":1,"event":"processed","t_ms":4,"seq":1}
not json
{"session":"s","node":"n1","epoch":1,"event":"exploded","t_ms":5}"#;
    let (ok, bad) = parse_node_events(text);
    assert_eq!(ok.len(), 2);
    assert_eq!(ok[1].seq, Some(1));
    assert_eq!(bad.iter().map(|b| b.0).collect::<Vec<_>>(), vec![4, 5]);
}

#[test]
fn jurisdiction_violations_are_caught() {
    let nodes = BTreeMap::from([
        ("de1".to_string(), "DE".to_string()),
        ("us1".to_string(), "US".to_string()),
    ]);
    let allowed = BTreeMap::from([
        ("eu-only".to_string(), vec!["EU".to_string()]),
        ("anywhere".to_string(), vec![]),
    ]);
    let p = |s: &str, n: &str| Placement {
        session: s.into(),
        node: n.into(),
        t_ms: 7,
    };
    let ok = [p("eu-only", "de1"), p("anywhere", "us1")];
    assert!(check_jurisdiction(&ok, &nodes, &allowed).is_empty());
    let bad = [p("eu-only", "us1"), p("ghost", "de1"), p("eu-only", "xx")];
    let v = check_jurisdiction(&bad, &nodes, &allowed);
    assert_eq!(v.len(), 3, "{v:?}");
    assert!(v[0].detail.contains("in US; manifest allows only [\"EU\"]"));
    assert!(v[1].detail.contains("manifest is unknown"));
    assert!(v[2].detail.contains("unknown node xx"));
}

fn receipt(id: &str, fee: u64, credits: &[(&str, u64)]) -> AppliedReceipt {
    AppliedReceipt {
        id: id.into(),
        fee,
        credits: credits.iter().map(|(a, b)| (a.to_string(), *b)).collect(),
    }
}

#[test]
fn ledger_checks_balance_once_and_agreement() {
    let good = vec![
        receipt("r1", 100, &[("node", 90), ("rc", 10)]),
        receipt("r2", 7, &[("node", 7)]),
    ];
    let acked = vec![
        SubmittedReceipt {
            id: "r1".into(),
            fee: 100,
        },
        SubmittedReceipt {
            id: "r2".into(),
            fee: 7,
        },
    ];
    let reps = BTreeMap::from([
        ("l1".to_string(), good.clone()),
        ("l2".to_string(), good[..1].to_vec()),
    ]);
    // l2 lags (a prefix) but misses the acknowledged r2: reported for l2 only.
    let v = check_ledger(&acked, &reps);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].detail.contains("not applied on l2"));
    let bad = vec![
        receipt("r1", 100, &[("node", 90), ("rc", 9)]),
        receipt("r2", 7, &[("node", 7)]),
        receipt("r2", 7, &[("node", 7)]),
    ];
    let other = vec![receipt("r2", 7, &[("node", 7)])];
    let reps = BTreeMap::from([("l1".to_string(), bad), ("l2".to_string(), other)]);
    let v = check_ledger(&acked, &reps);
    let d: Vec<&str> = v.iter().map(|x| x.detail.as_str()).collect();
    assert!(
        d.iter()
            .any(|x| x.contains("credits sum to 99 but the fee is 100")),
        "{d:?}"
    );
    assert!(d.iter().any(|x| x.contains("applied twice on l1")), "{d:?}");
    assert!(
        d.iter()
            .any(|x| x.contains("replicas diverge at position 0")),
        "{d:?}"
    );
    assert!(d
        .iter()
        .any(|x| x.contains("r1") || x.contains("not applied on l2")));
}

#[test]
fn health_and_false_downings() {
    let probes = vec![
        HealthProbe {
            process: "n1".into(),
            alive: true,
            status: Some(200),
            error: None,
            t_ms: 1,
        },
        HealthProbe {
            process: "n2".into(),
            alive: false,
            status: None,
            error: Some("killed".into()),
            t_ms: 1,
        },
        HealthProbe {
            process: "n3".into(),
            alive: true,
            status: None,
            error: Some("connection refused".into()),
            t_ms: 2,
        },
        HealthProbe {
            process: "n4".into(),
            alive: true,
            status: Some(503),
            error: None,
            t_ms: 2,
        },
    ];
    let v = check_health(&probes);
    assert_eq!(
        v.iter().map(|x| x.subject.as_str()).collect::<Vec<_>>(),
        vec!["n3", "n4"]
    );
    assert!(v[0].detail.contains("connection refused"));
    let faults = BTreeMap::from([("n1".to_string(), vec![(1000, 5000)])]);
    let d = |n: &str, t| Downing {
        node: n.into(),
        t_ms: t,
    };
    let v = check_false_downings(&[d("n1", 3000), d("n1", 9000), d("n2", 10)], &faults, 2000);
    assert_eq!(v.len(), 2);
    assert_eq!((v[0].subject.as_str(), v[0].t_ms), ("n1", Some(9000)));
    assert_eq!(v[1].subject, "n2");
}

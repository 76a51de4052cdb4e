//! Reconciliation of holding reports, replica trouble and failover choices, on an RC core
//! without a network.

use super::*;
use crate::common::identity::Identity;
use crate::common::spec::NodeSpec;
use crate::common::wire::{JoinBody, JoinRequest};
use crate::rc::config::RcConfig;
use crate::rc::DirEntry;
use opengrid_session::AcceleratorClass;

const M: &str = r#"
version = 1
[session]
handler = "counter"
continuity = "interactive"
[placement]
jurisdictions = ["EU"]
[migration]
cost = "cheap"
acceptable_loss = "0s"
max_blackout = "2s"
"#;

fn spec(id: &Identity, name: &str, port: u16) -> NodeSpec {
    NodeSpec {
        id: id.id(),
        name: name.into(),
        jurisdiction: "DE".into(),
        accelerator: AcceleratorClass::None,
        cpu_cores: 4,
        memory: 8 << 30,
        handlers: vec!["counter".into()],
        capabilities: vec![],
        price_micros_per_input: 10,
        capacity: 100,
        max_session_memory: 0,
        api: format!("http://127.0.0.1:{port}"),
        migration: format!("127.0.0.1:{}", port + 1),
    }
}

/// An RC with two joined members `a` and `b`.
/// Joins one node per `(name, api port)` (migration server on port + 1) with signed joins.
fn join(core: &RcCore, nodes: &[(&str, u16)]) -> Vec<NodeId> {
    let mut ids = Vec::new();
    for (name, port) in nodes {
        let id = Identity::generate();
        let body = JoinBody {
            colony: core.cfg.colony.clone(),
            spec: spec(&id, name, *port),
            unix_ms: crate::common::wire::unix_ms(),
            nonce: rand::random(),
            kx: crate::common::seal::KeyOffer::new().public,
            join_token: None,
        };
        core.on_message(crate::common::wire::ToRc::Join(JoinRequest::sign(
            &id, &body,
        )));
        ids.push(id.id());
    }
    // The others are told at the RC's tick; until then the new ones are not placeable.
    assert_eq!(core.alive_members(), 0);
    core.announce_members();
    assert_eq!(core.alive_members(), nodes.len());
    ids
}

fn rc() -> (RcCore, NodeId, NodeId) {
    let core = RcCore::new(RcConfig::default(), Identity::generate());
    let ids = join(&core, &[("a", 7100), ("b", 7200)]);
    (core, ids[0], ids[1])
}

fn held(session: &str, epoch: u64, replicas: &[&str]) -> Held {
    Held {
        session: session.into(),
        epoch,
        handler: "counter".into(),
        manifest: Some(Manifest::from_toml_str(M).unwrap().to_json_string()),
        replicas: replicas.iter().map(|s| s.to_string()).collect(),
    }
}

fn place(core: &RcCore, sid: &str, node: NodeId, epoch: u64, state: DirState) {
    let sid = SessionId::new(sid).unwrap();
    lock(&core.state).directory.insert(
        sid.clone(),
        DirEntry {
            session_id: sid,
            node,
            node_name: String::new(),
            address: String::new(),
            epoch: Epoch(epoch),
            handler: "counter".into(),
            memory: 0,
            state,
            replicas: vec![],
            owner: None,
            waiting: None,
            manifest: None,
        },
    );
}

fn entry(core: &RcCore, sid: &str) -> Option<DirEntry> {
    core.lookup(&SessionId::new(sid).unwrap())
}

#[test]
fn a_restarted_rc_adopts_what_its_nodes_report() {
    let (core, a, b) = rc();
    // `b`'s migration server is 127.0.0.1:7201; an unknown replica address is skipped.
    let drop = core
        .reconcile(
            a,
            true,
            vec![held("s1", 3, &["127.0.0.1:7201", "127.0.0.1:9"])],
        )
        .unwrap();
    assert!(drop.is_empty());
    let e = entry(&core, "s1").expect("adopted");
    assert_eq!((e.node, e.epoch, e.state), (a, Epoch(3), DirState::Active));
    assert_eq!(e.replicas, vec![b]);
    assert!(e.manifest.is_some(), "the manifest travels with the report");
    assert_eq!(e.address, "http://127.0.0.1:7100");
}

#[test]
fn the_higher_epoch_wins_between_two_reports() {
    let (core, a, b) = rc();
    assert!(core
        .reconcile(a, true, vec![held("s", 2, &[])])
        .unwrap()
        .is_empty());
    // A newer epoch elsewhere (a lost activation, or a failover): adopted there, and the
    // former holder is told to drop its copy at once.
    let (drop, elsewhere) = core
        .reconcile_all(b, true, vec![held("s", 3, &[])])
        .unwrap();
    assert!(drop.is_empty());
    assert_eq!(elsewhere, vec![(a, "s".to_string(), 2)]);
    assert_eq!(entry(&core, "s").unwrap().node, b);
    // The stale holder's next report is told to drop it; the directory does not move back.
    let drop = core.reconcile(a, false, vec![held("s", 2, &[])]).unwrap();
    assert_eq!(drop, vec![("s".to_string(), 2)]);
    assert_eq!(entry(&core, "s").unwrap().epoch, Epoch(3));
    // The same epoch on another node is never adopted either.
    let drop = core.reconcile(a, false, vec![held("s", 3, &[])]).unwrap();
    assert_eq!(drop, vec![("s".to_string(), 3)]);
    assert_eq!(entry(&core, "s").unwrap().node, b);
}

#[test]
fn a_kept_session_is_active_again_unless_a_restore_is_in_flight() {
    let (core, a, _) = rc();
    place(&core, "kept", a, 1, DirState::Orphaned);
    place(&core, "moving", a, 1, DirState::Orphaned);
    lock(&core.state)
        .mob
        .restoring
        .insert(SessionId::new("moving").unwrap());
    let drop = core
        .reconcile(a, true, vec![held("kept", 1, &[]), held("moving", 1, &[])])
        .unwrap();
    assert_eq!(drop, vec![("moving".to_string(), 1)]);
    assert_eq!(entry(&core, "kept").unwrap().state, DirState::Active);
    assert_eq!(entry(&core, "moving").unwrap().state, DirState::Orphaned);
}

#[test]
fn only_a_rejoin_report_orphans_what_it_does_not_list() {
    let (core, a, b) = rc();
    place(&core, "gone", a, 1, DirState::Active);
    place(&core, "starting", a, 1, DirState::Starting);
    place(&core, "other", b, 1, DirState::Active);
    core.reconcile(a, false, vec![]).unwrap();
    assert_eq!(entry(&core, "gone").unwrap().state, DirState::Active);
    core.reconcile(a, true, vec![]).unwrap();
    assert_eq!(entry(&core, "gone").unwrap().state, DirState::Orphaned);
    assert_eq!(
        entry(&core, "starting").unwrap().state,
        DirState::Starting,
        "a start in flight is not orphaned"
    );
    assert_eq!(entry(&core, "other").unwrap().state, DirState::Active);
}

#[test]
fn a_report_in_parts_is_acted_on_once_every_part_arrived() {
    let (core, a, _) = rc();
    place(&core, "gone", a, 1, DirState::Active);
    let many: Vec<Held> = (0..600).map(|i| held(&format!("s{i}"), 1, &[])).collect();
    let parts = crate::common::wire::holding_parts(many);
    assert!(parts.len() > 1, "600 manifests fit one part?");
    let n = parts.len() as u32;
    for (i, p) in parts.into_iter().enumerate() {
        // The last part first: nothing happens until all have arrived.
        core.on_holding(a, 9, true, n - 1 - i as u32, n, p);
        if i + 1 < n as usize {
            assert_eq!(entry(&core, "gone").unwrap().state, DirState::Active);
            assert_eq!(lock(&core.state).directory.len(), 1, "acted on part {i}");
        }
    }
    assert!(entry(&core, "s0").is_some() && entry(&core, "s599").is_some());
    assert_eq!(entry(&core, "gone").unwrap().state, DirState::Orphaned);
    // Malformed part numbers are ignored.
    core.on_holding(a, 10, true, 3, 2, vec![held("x", 1, &[])]);
    assert!(entry(&core, "x").is_none());
}

#[test]
fn replica_trouble_moves_replica_sets_off_the_failing_holder() {
    let core = RcCore::new(
        RcConfig {
            replicas: 1,
            ..RcConfig::default()
        },
        Identity::generate(),
    );
    let ids = join(&core, &[("a", 7300), ("b", 7400), ("c", 7500)]);
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    // `s` lives on a with its replica on b.
    core.reconcile(a, true, vec![held("s", 1, &["127.0.0.1:7401"])])
        .unwrap();
    assert_eq!(entry(&core, "s").unwrap().replicas, vec![b]);
    // A non-member's report and one naming the sender itself change nothing.
    core.on_replica_trouble(Identity::generate().id(), &["127.0.0.1:7401".into()]);
    core.on_replica_trouble(b, &["127.0.0.1:7401".into()]);
    assert!(lock(&core.state).mob.suspect.is_empty());
    // a reports that writes to b fail: the next repair scan moves the replica to c.
    core.on_replica_trouble(a, &["127.0.0.1:7401".into()]);
    let core = Arc::new(core);
    tick(&core, Instant::now());
    assert_eq!(entry(&core, "s").unwrap().replicas, vec![c]);
    // b is not chosen again while suspect, even for a new set.
    let m = Manifest::from_toml_str(M).unwrap();
    let st = lock(&core.state);
    assert_eq!(core.choose_replicas(&st, &m, &a, &[b]), vec![c]);
}

#[test]
fn reports_from_non_members_change_nothing() {
    let (core, _, _) = rc();
    let stranger = Identity::generate().id();
    assert!(core
        .reconcile(stranger, true, vec![held("x", 1, &[])])
        .is_none());
    assert!(entry(&core, "x").is_none());
    // Malformed session ids are skipped.
    let (core, a, _) = rc();
    assert!(core
        .reconcile(a, true, vec![held("", 1, &[])])
        .unwrap()
        .is_empty());
    assert!(lock(&core.state).directory.is_empty());
}

//! Handover, abort, replication and failover between two nodes (two session hosts with their own
//! RocksDB stores and migration servers) over real TCP on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use opengrid_actors::*;
use opengrid_migration::*;
use opengrid_session::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
struct Acc {
    hash: u64,
    n: u64,
    pad: Vec<u8>,
}

struct Folder {
    pad: usize,
}

impl SessionHandler for Folder {
    type State = Acc;
    type Input = u64;
    type Output = u64;
    fn id(&self) -> &str {
        "folder"
    }
    fn init(&self, _: &SessionId) -> Acc {
        Acc {
            pad: vec![7; self.pad],
            ..Default::default()
        }
    }
    async fn handle(
        &self,
        st: &mut Acc,
        v: u64,
        ctx: &SessionContext,
    ) -> Result<u64, HandlerError> {
        st.hash = fold(st.hash, ctx.seq().0, v);
        st.n += 1;
        Ok(st.hash)
    }
}

fn fold(h: u64, seq: u64, v: u64) -> u64 {
    (h ^ v.wrapping_add(seq << 32)).wrapping_mul(0x100_0000_01b3)
}

/// The DIDs allowed on this test colony's links (every node's, and the test driver's).
fn colony() -> &'static Arc<opengrid_link::AllowList> {
    static C: std::sync::OnceLock<Arc<opengrid_link::AllowList>> = std::sync::OnceLock::new();
    C.get_or_init(|| Arc::new(opengrid_link::AllowList::new([])))
}

/// A fresh identity admitted to the test colony, and its links.
fn member_link() -> opengrid_link::Link {
    let id = opengrid_link::LinkIdentity::from_signing_key(&ed25519_dalek::SigningKey::from_bytes(
        &rand::random(),
    ))
    .unwrap();
    colony().insert(id.did().clone());
    opengrid_link::Link::new(&id, colony().clone()).unwrap()
}

/// The test driver's link (it plays the source of handovers it drives from outside a node).
fn driver_link() -> &'static opengrid_link::Link {
    static L: std::sync::OnceLock<opengrid_link::Link> = std::sync::OnceLock::new();
    L.get_or_init(member_link)
}

struct Node {
    host: SessionHost,
    local: Arc<dyn CheckpointStore>,
    store: Arc<ReplicatedStore>,
    server: MigrationServer,
    did: Did,
    link: opengrid_link::Link,
    _dir: tempfile::TempDir,
}

async fn node(handlers: bool) -> Node {
    node_with(handlers, GrantPolicy::LinkOnly, None).await
}

/// An admission that also points the replicated store at the incoming session's replicas and
/// grant (what a node does).
struct Granted {
    cap: CapacityAdmission,
    store: Arc<ReplicatedStore>,
}

impl AdmitIncoming for Granted {
    fn admit(&self, session: &SessionId, handler: &str) -> Result<(), String> {
        self.cap.admit(session, handler)
    }
    fn prepared(&self, session: &SessionId, replicas: &[SocketAddr], grant: Option<&SignedGrant>) {
        let (store, peers) = (self.store.clone(), replicas.to_vec());
        let (session, grant) = (session.clone(), grant.cloned());
        tokio::task::spawn_blocking(move || store.warm(&session, &peers, grant.as_ref()));
    }
    fn activating(
        &self,
        session: &SessionId,
        replicas: &[SocketAddr],
        grant: Option<&SignedGrant>,
    ) {
        self.store.set_replicas(session, replicas.to_vec());
        if let Some(g) = grant {
            self.store.set_grant(session, g.clone());
        }
    }
}

async fn node_with(
    handlers: bool,
    grants: GrantPolicy,
    meter: Option<opentelemetry::metrics::Meter>,
) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let local: Arc<dyn CheckpointStore> = Arc::new(
        RocksCheckpointStore::open(
            dir.path(),
            RocksOptions {
                sync: true,
                retain: 3,
            },
        )
        .unwrap(),
    );
    let link = member_link();
    let store = Arc::new(ReplicatedStore::new(
        local.clone(),
        ReplicationConfig::default(),
        link.clone(),
    ));
    let host = SessionHost::new(
        store.clone() as Arc<dyn CheckpointStore>,
        HostConfig::default(),
        Services::default(),
    )
    .await
    .unwrap();
    if handlers {
        host.register(Arc::new(Folder { pad: 0 }));
    }
    let admit = Arc::new(Granted {
        cap: CapacityAdmission {
            host: host.clone(),
            max_sessions: 10_000,
        },
        store: store.clone(),
    });
    let did = link.did().clone();
    let server = MigrationServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        host.clone(),
        local.clone(),
        admit,
        Security {
            link: link.clone(),
            grants,
            meter,
        },
    )
    .await
    .unwrap();
    Node {
        host,
        local,
        store,
        server,
        did,
        link,
        _dir: dir,
    }
}

fn sid(s: &str) -> SessionId {
    SessionId::new(s).unwrap()
}

fn peer(a: SocketAddr) -> Arc<Peer> {
    Peer::new(a, driver_link().clone(), Duration::from_secs(5))
}

/// A client that keeps its unacknowledged input and follows `moved` to the other node.
async fn send_following(nodes: &[&Node], at: &mut usize, id: &SessionId, seq: u64, v: u64) -> u64 {
    for _ in 0..100 {
        let Some(s) = nodes[*at].host.get(id) else {
            *at = 1 - *at;
            continue;
        };
        match s.send_json(Seq(seq), serde_json::json!(v)).await {
            Ok(Reply::Processed { output: Ok(o), .. }) => return o.as_u64().unwrap(),
            Ok(r) => panic!("unexpected {r:?} for seq {seq}"),
            Err(SessionError::Moved { .. }) => *at = 1 - *at,
            Err(e) if e.is_retryable() => {}
            Err(e) => panic!("seq {seq}: {e}"),
        }
    }
    panic!("seq {seq} never acknowledged")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_handovers_under_input_lose_and_duplicate_nothing() {
    let a = node(true).await;
    let b = node(true).await;
    let id = sid("ping-pong");
    a.host
        .start_dyn(
            "folder",
            id.clone(),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    let nodes = [&a, &b];
    let peers = [peer(a.server.addr()), peer(b.server.addr())];
    let client_nodes = [&a, &b];
    let mut reference = 0u64;
    let mut at = 0usize;
    let mut seq = 0u64;
    let mut holder = 0usize;
    let mut worst = Duration::ZERO;
    let n = 1000;
    for i in 0..n {
        // A few inputs between handovers, and one racing each handover.
        for _ in 0..2 {
            seq += 1;
            reference = fold(reference, seq, seq * 7);
            assert_eq!(
                send_following(&client_nodes, &mut at, &id, seq, seq * 7).await,
                reference
            );
        }
        seq += 1;
        let racing_seq = seq;
        let src = nodes[holder];
        let target = peers[1 - holder].clone();
        let h = tokio::spawn({
            let host = src.host.clone();
            let store = src.store.clone() as Arc<dyn CheckpointStore>;
            let id = id.clone();
            async move {
                let opts = HandoverOptions {
                    location: format!("node-{}", 1 - holder),
                    ..Default::default()
                };
                handover(&host, &store, &id, &target, &opts).await
            }
        });
        reference = fold(reference, racing_seq, racing_seq * 7);
        assert_eq!(
            send_following(&client_nodes, &mut at, &id, racing_seq, racing_seq * 7).await,
            reference
        );
        let report = h
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("handover {i}: {e}"));
        worst = worst.max(report.blackout);
        assert_eq!(report.epoch, Epoch(i as u64 + 2));
        // The old holder forgets the session after the transition.
        src.host.release(&id).await.ok();
        holder = 1 - holder;
    }
    let s = nodes[holder].host.get(&id).unwrap();
    s.checkpoint_now().await.unwrap();
    let cp = nodes[holder].local.get_latest(&id).unwrap().unwrap();
    let st: Acc = Folder { pad: 0 }.decode_state(&cp.state).unwrap();
    assert_eq!(st.n, seq, "every input applied exactly once");
    assert_eq!(st.hash, reference);
    eprintln!("{n} handovers, worst blackout {worst:?}");
    a.host.shutdown().await;
    b.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_or_dead_target_leaves_the_source_serving() {
    let a = node(true).await;
    let no_handler = node(false).await;
    let id = sid("stay");
    let s = a
        .host
        .start_dyn(
            "folder",
            id.clone(),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    s.send_json(Seq(1), serde_json::json!(1)).await.unwrap();
    // Target refuses at prepare (handler not served there).
    let e = handover(
        &a.host,
        &(a.store.clone() as Arc<dyn CheckpointStore>),
        &id,
        &peer(no_handler.server.addr()),
        &HandoverOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            e,
            HandoverError::Aborted {
                step: "prepare",
                ..
            }
        ),
        "{e}"
    );
    s.send_json(Seq(2), serde_json::json!(2)).await.unwrap();
    // Target dead (nothing listens there): aborted, source serving, epoch unchanged.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let e = handover(
        &a.host,
        &(a.store.clone() as Arc<dyn CheckpointStore>),
        &id,
        &peer(dead),
        &HandoverOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, HandoverError::Aborted { .. }), "{e}");
    assert_eq!(s.epoch(), Epoch(1));
    assert!(matches!(
        s.send_json(Seq(3), serde_json::json!(3)).await.unwrap(),
        Reply::Processed { .. }
    ));
    // Target dies between prepare and activation: the server stops after prepare.
    let b = node(true).await;
    let pb = peer(b.server.addr());
    pb.call(&opengrid_migration::wire::Request::Ping)
        .await
        .unwrap();
    b.server.shutdown();
    drop(b);
    let e = handover(
        &a.host,
        &(a.store.clone() as Arc<dyn CheckpointStore>),
        &id,
        &pb,
        &HandoverOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, HandoverError::Aborted { .. }), "{e}");
    assert!(matches!(
        s.send_json(Seq(4), serde_json::json!(4)).await.unwrap(),
        Reply::Processed { .. }
    ));
    assert_eq!(s.info().last_seq, Seq(4));
    a.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_live_sessions_are_not_handed_over() {
    let a = node(true).await;
    let b = node(true).await;
    let id = sid("nl");
    let mut p = CheckpointPolicy::periodic(Duration::from_secs(1));
    p.live_handover = false;
    a.host
        .start_dyn("folder", id.clone(), Epoch(1), p)
        .await
        .unwrap();
    let e = handover(
        &a.host,
        &(a.store.clone() as Arc<dyn CheckpointStore>),
        &id,
        &peer(b.server.addr()),
        &HandoverOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, HandoverError::NeverLive(_)));
    a.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_loss_failover_from_replica_and_old_holder_is_fenced() {
    let a = node(true).await;
    let b = node(true).await;
    let c = node(true).await;
    let id = sid("z");
    a.store
        .set_replicas(&id, vec![b.server.addr(), c.server.addr()]);
    let s = a
        .host
        .start_dyn(
            "folder",
            id.clone(),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    let mut reference = 0;
    for seq in 1..=50u64 {
        reference = fold(reference, seq, seq);
        s.send_json(Seq(seq), serde_json::json!(seq)).await.unwrap();
        // Acknowledged ⇒ on both replicas.
        for r in [&b, &c] {
            assert_eq!(
                r.local.get_latest(&id).unwrap().unwrap().seq,
                Seq(seq),
                "acked input {seq} not on a replica"
            );
        }
    }
    // Node A is declared dead; B restores from its replica with epoch 2, replicating to C.
    b.store.set_replicas(&id, vec![c.server.addr()]);
    let restored = restore(
        &b.host,
        &id,
        "folder",
        Epoch(2),
        CheckpointPolicy::synchronous(),
    )
    .await
    .unwrap();
    match restored
        .send_json(Seq(51), serde_json::json!(51))
        .await
        .unwrap()
    {
        Reply::Processed { output, .. } => {
            assert_eq!(output.unwrap(), serde_json::json!(fold(reference, 51, 51)))
        }
        r => panic!("{r:?}"),
    }
    // A was only paused (not dead): its next input must not be acknowledged, and nothing it
    // writes reaches the replicas.
    let e = s
        .send_json(Seq(51), serde_json::json!(999))
        .await
        .unwrap_err();
    assert!(matches!(e, SessionError::Fenced { .. }), "{e}");
    assert_eq!(c.local.get_latest(&id).unwrap().unwrap().epoch, Epoch(2));
    a.host.shutdown().await;
    b.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_below_k_is_not_acknowledged() {
    let a = node(true).await;
    let b = node(true).await;
    let id = sid("k");
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    a.store.set_replicas(&id, vec![b.server.addr(), dead]);
    // Starting writes the seq-0 checkpoint: it cannot reach k = 2 replicas.
    let e = a
        .host
        .start_dyn(
            "folder",
            id.clone(),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await;
    assert!(
        e.is_err(),
        "a session whose checkpoint cannot reach k replicas must not start"
    );
    a.host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn warming_opens_one_link_per_replica_and_tolerates_dead_ones() {
    let a = node(true).await;
    let b = node(true).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (to_b, store) = (b.server.addr(), a.store.clone());
    assert_eq!(store.idle_links(to_b), 0);
    let s = store.clone();
    let w = sid("warm");
    tokio::task::spawn_blocking(move || {
        s.warm(&w, &[to_b, dead], None);
        s.warm(&w, &[to_b], None);
    })
    .await
    .unwrap();
    assert_eq!(store.idle_links(to_b), 1, "one link, not one per warm-up");
    assert_eq!(store.idle_links(dead), 0);
    // The warmed link is the one the first replica write uses (no second handshake).
    let id = sid("warm");
    store.set_replicas(&id, vec![to_b]);
    a.host
        .start_dyn(
            "folder",
            id.clone(),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    assert_eq!(store.idle_links(to_b), 1);
    assert!(b.local.get_latest(&id).unwrap().is_some());
    a.host.shutdown().await;
}

/// A link of a key that is not a colony member (its own policy would accept the colony).
fn stranger_link() -> opengrid_link::Link {
    let id = opengrid_link::LinkIdentity::from_signing_key(&ed25519_dalek::SigningKey::from_bytes(
        &rand::random(),
    ))
    .unwrap();
    opengrid_link::Link::new(&id, colony().clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_and_plain_tcp_get_nothing_from_the_migration_port() {
    use opengrid_migration::wire::{Request, Response};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = node(true).await;
    let b = node(true).await;
    let id = sid("victim");
    a.store.set_replicas(&id, vec![b.server.addr()]);
    let s = a
        .host
        .start_dyn(
            "folder",
            id.clone(),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    for q in 1..=3 {
        s.send_json(Seq(q), serde_json::json!(q)).await.unwrap();
    }
    let before = b.local.get_latest(&id).unwrap().unwrap();
    assert_eq!((before.epoch, before.seq), (Epoch(1), Seq(3)));

    // A stranger's key: refused at the handshake, whatever it asks.
    let stranger = Peer::new(b.server.addr(), stranger_link(), Duration::from_secs(5));
    let mut poison = before.clone();
    poison.epoch = Epoch(u64::MAX);
    let attacks = [
        Request::Latest {
            session: id.clone(),
            grant: None,
        },
        Request::Replicate {
            checkpoint: poison.encode(),
            grant: None,
        },
        Request::Prepare {
            session: id.clone(),
            handler: "folder".into(),
            policy: CheckpointPolicy::synchronous(),
            epoch: Epoch(u64::MAX),
            replicas: vec![],
            grant: None,
        },
        Request::Activate {
            session: id.clone(),
            checkpoint: poison.encode(),
            epoch: Epoch(u64::MAX),
        },
        Request::Forward {
            session: id.clone(),
            seq: Seq(4),
            input: "4".into(),
        },
    ];
    for req in &attacks {
        let r = stranger.call(req).await;
        assert!(r.is_err(), "a stranger got {r:?} for {req:?}");
    }
    // Plain TCP: a well-formed frame gets no answer frame (the server wants a TLS handshake).
    let mut plain = tokio::net::TcpStream::connect(b.server.addr())
        .await
        .unwrap();
    let frame = opengrid_migration::wire::client_codec()
        .encode_frame(&Request::Latest {
            session: id.clone(),
            grant: None,
        })
        .unwrap();
    plain.write_all(frame.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut got)).await;
    let answer = opengrid_migration::wire::client_codec()
        .read_blocking(&mut std::io::Cursor::new(got.clone()));
    assert!(
        !matches!(answer, Ok(Response::Checkpoint { .. })),
        "plain TCP read a checkpoint"
    );
    // Nothing changed: same checkpoint on the replica, the session serves and replicates.
    let after = b.local.get_latest(&id).unwrap().unwrap();
    assert_eq!((after.epoch, after.seq), (Epoch(1), Seq(3)));
    assert_eq!(b.local.current_epoch(&id).unwrap(), Some(Epoch(1)));
    assert!(b.host.get(&id).is_none());
    s.send_json(Seq(4), serde_json::json!(4)).await.unwrap();
    assert_eq!(b.local.get_latest(&id).unwrap().unwrap().seq, Seq(4));
    // A member gets an answer on the same port.
    let member = peer(b.server.addr());
    assert!(matches!(
        member
            .call(&Request::Latest {
                session: id.clone(),
                grant: None,
            })
            .await,
        Ok(Response::Checkpoint {
            checkpoint: Some(_)
        })
    ));
    a.host.shutdown().await;
    b.host.shutdown().await;
}

/// With RC-signed grants, a colony member that the RC did not designate can neither read,
/// poison, prepare, activate nor forward a session; the designated holder replicates and hands
/// over as before; every refusal is typed and counted by reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_authorize_every_session_request() {
    use ed25519_dalek::Signer;
    use opengrid_migration::wire::{Request, Response};
    use opentelemetry::metrics::MeterProvider as _;
    let registry = prometheus::Registry::new();
    let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_reader(
            opentelemetry_prometheus::exporter()
                .with_registry(registry.clone())
                .without_target_info()
                .scope_info_enabled(false)
                .build()
                .unwrap(),
        )
        .build();
    let rc = ed25519_dalek::SigningKey::from_bytes(&rand::random());
    let rc_key = RcKey::new();
    rc_key.set(Did::from_public_key(&rc.verifying_key()));
    let policy = || GrantPolicy::RcSigned(rc_key.clone());
    let a = node_with(true, policy(), None).await;
    let b = node_with(true, policy(), Some(provider.meter("opengrid_migration"))).await;
    let c = node_with(true, policy(), None).await;
    let sign = |g: Grant| SignedGrant::sign(g, |m| rc.sign(m).to_bytes()).unwrap();
    let id = sid("granted");
    let held = sign(Grant {
        session: id.clone(),
        epoch: Epoch(1),
        holder: a.did.clone(),
        replicas: vec![b.did.clone()],
        sources: vec![],
    });
    // Without its grant the holder's replica write is refused: the session cannot start.
    a.store.set_replicas(&id, vec![b.server.addr()]);
    let e = a
        .host
        .start_dyn(
            "folder",
            id.clone(),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await;
    assert!(e.is_err(), "started without a grant");
    a.store.set_grant(&id, held.clone());
    let s = a
        .host
        .start_dyn(
            "folder",
            id.clone(),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    let mut reference = 0;
    for q in 1..=3u64 {
        reference = fold(reference, q, q);
        s.send_json(Seq(q), serde_json::json!(q)).await.unwrap();
    }
    assert_eq!(b.local.get_latest(&id).unwrap().unwrap().seq, Seq(3));

    // c is a colony member (its link is admitted) but not designated for the session.
    let from_c = Peer::new(b.server.addr(), c.link.clone(), Duration::from_secs(5));
    let at = |epoch| {
        let cp = b.local.get_latest(&id).unwrap().unwrap();
        Checkpoint::new(
            id.clone(),
            epoch,
            cp.seq,
            cp.handler_id.clone(),
            cp.handler_version,
            cp.state.clone(),
        )
    };
    let poison = at(Epoch(u64::MAX));
    let forged = SignedGrant::sign(
        Grant {
            epoch: Epoch(u64::MAX),
            holder: c.did.clone(),
            ..held.grant.clone()
        },
        |m| {
            ed25519_dalek::SigningKey::from_bytes(&[9; 32])
                .sign(m)
                .to_bytes()
        },
    )
    .unwrap();
    let to_b = sign(Grant {
        session: id.clone(),
        epoch: Epoch(2),
        holder: b.did.clone(),
        replicas: vec![],
        sources: vec![a.did.clone()],
    });
    let unauthorized = |r: Result<Response, _>, what: &str| match r {
        Ok(Response::Unauthorized { reason }) => reason,
        other => panic!("{what}: expected Unauthorized, got {other:?}"),
    };
    let r = unauthorized(
        from_c
            .call(&Request::Latest {
                session: id.clone(),
                grant: None,
            })
            .await,
        "latest without a grant",
    );
    assert!(r.contains("grant"), "{r}");
    let r = unauthorized(
        from_c
            .call(&Request::Latest {
                session: id.clone(),
                grant: Some(held.clone()),
            })
            .await,
        "latest with the holder's grant",
    );
    assert!(r.contains("not the holder"), "{r}");
    // Presenting a grant ahead of a write is checked like the write: c may not show a's grant,
    // nor a forged one; a shows its own and b accepts it.
    let r = unauthorized(
        from_c
            .call(&Request::Present {
                session: id.clone(),
                grant: Some(held.clone()),
            })
            .await,
        "present another holder's grant",
    );
    assert!(r.contains("not the holder"), "{r}");
    let r = unauthorized(
        from_c
            .call(&Request::Present {
                session: id.clone(),
                grant: Some(forged.clone()),
            })
            .await,
        "present a forged grant",
    );
    assert!(r.contains("signed"), "{r}");
    let from_a = Peer::new(b.server.addr(), a.link.clone(), Duration::from_secs(5));
    assert!(matches!(
        from_a
            .call(&Request::Present {
                session: id.clone(),
                grant: Some(held.clone()),
            })
            .await,
        Ok(Response::Ok)
    ));
    let r = unauthorized(
        from_c
            .call(&Request::Replicate {
                checkpoint: poison.encode(),
                grant: Some(forged.clone()),
            })
            .await,
        "replicate at u64::MAX with a forged grant",
    );
    assert!(r.contains("not signed by the RC"), "{r}");
    let r = unauthorized(
        from_c
            .call(&Request::Replicate {
                checkpoint: poison.encode(),
                grant: Some(held.clone()),
            })
            .await,
        "replicate at u64::MAX with the holder's grant",
    );
    assert!(r.contains("epoch"), "{r}");
    let r = unauthorized(
        from_c
            .call(&Request::Prepare {
                session: id.clone(),
                handler: "folder".into(),
                policy: CheckpointPolicy::synchronous(),
                epoch: Epoch(2),
                replicas: vec![],
                grant: Some(to_b.clone()),
            })
            .await,
        "prepare by a peer that is not the source",
    );
    assert!(r.contains("not the holder handing"), "{r}");
    // Even the holder cannot jump the epoch past its grant.
    let from_a = Peer::new(b.server.addr(), a.link.clone(), Duration::from_secs(5));
    let jumped = at(Epoch(u64::MAX));
    unauthorized(
        from_a
            .call(&Request::Replicate {
                checkpoint: jumped.encode(),
                grant: Some(held.clone()),
            })
            .await,
        "the holder jumping its epoch",
    );
    // Nothing changed on b: same epoch, same checkpoint.
    let kept = b.local.get_latest(&id).unwrap().unwrap();
    assert_eq!((kept.epoch, kept.seq), (Epoch(1), Seq(3)));
    assert_eq!(b.local.current_epoch(&id).unwrap(), Some(Epoch(1)));

    // The holder prepares an honest handover to b; c cannot activate or forward into it.
    let r = from_a
        .call(&Request::Prepare {
            session: id.clone(),
            handler: "folder".into(),
            policy: CheckpointPolicy::synchronous(),
            epoch: Epoch(2),
            replicas: vec![],
            grant: Some(to_b.clone()),
        })
        .await;
    assert!(matches!(r, Ok(Response::Ready)), "{r:?}");
    unauthorized(
        from_c
            .call(&Request::Activate {
                session: id.clone(),
                checkpoint: poison.encode(),
                epoch: Epoch(2),
            })
            .await,
        "activate by a peer that did not prepare",
    );
    unauthorized(
        from_c
            .call(&Request::Forward {
                session: id.clone(),
                seq: Seq(4),
                input: "4".into(),
            })
            .await,
        "forward by a peer that did not hand the session over",
    );
    // (No abort here: an aborted epoch is refused activation for a while, by design.)

    // The honest handover with the RC's grant completes; inputs keep their order.
    let report = handover(
        &a.host,
        &(a.store.clone() as Arc<dyn CheckpointStore>),
        &id,
        &Peer::new(b.server.addr(), a.link.clone(), Duration::from_secs(5)),
        &HandoverOptions {
            grant: Some(to_b.clone()),
            ..HandoverOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(report.epoch, Epoch(2));
    let moved = b.host.get(&id).unwrap();
    reference = fold(reference, 4, 4);
    match moved.send_json(Seq(4), serde_json::json!(4)).await.unwrap() {
        Reply::Processed { output, .. } => {
            assert_eq!(output.unwrap(), serde_json::json!(reference))
        }
        r => panic!("{r:?}"),
    }
    // Refusals are counted by reason on b's meter.
    use prometheus::Encoder as _;
    let mut buf = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .unwrap();
    let text = String::from_utf8(buf).unwrap();
    for reason in [
        "no_grant",
        "not_holder",
        "bad_signature",
        "wrong_epoch",
        "not_source",
    ] {
        assert!(
            text.contains(&format!(
                "opengrid_migration_refused_total{{reason=\"{reason}\"}}"
            )),
            "{reason} not counted:\n{text}"
        );
    }
    a.host.shutdown().await;
    b.host.shutdown().await;
    c.host.shutdown().await;
}

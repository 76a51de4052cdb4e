//! In-process colony tests: one RC and several nodes started with `start_rc` / `start_node` in
//! this process, talking over real ractor_cluster links and HTTP on 127.0.0.1.

mod support;
use std::time::{Duration, Instant};
use support::{node_config, rc_config, setup};

use opengrid_cluster::client::{Client, ClientError};
use opengrid_cluster::node::config::NodeConfig;
use opengrid_cluster::{start_node, start_rc, NodeHandle};
use opengrid_session::{AcceleratorClass, ByteSize, HumanDuration};
use serde_json::{json, Value};

async fn wait_members(client: &Client, n: usize, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let v = client.get("/status").await.expect("status");
        let alive = v["members"]
            .as_array()
            .map(|m| m.iter().filter(|x| x["state"] == "alive").count())
            .unwrap_or(0);
        if alive == n {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} alive members, status: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of the unlabelled sample `name` in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn manifest(handler: &str, jurisdictions: &[&str], accelerator: &str, extra: &str) -> String {
    format!(
        "version = 1\n[session]\nhandler = \"{handler}\"\ncontinuity = \"interactive\"\n[placement]\njurisdictions = {jurisdictions:?}\naccelerator = \"{accelerator}\"\n{extra}\n[migration]\ncost = \"cheap\"\nacceptable_loss = \"5s\"\nmax_blackout = \"100ms\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_respects_filters_on_five_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "colony-secret-1";
    let rc = start_rc(rc_config(dir.path(), secret)).await.unwrap();
    let specs = [
        ("de-cpu", "DE", AcceleratorClass::None, vec!["echo"]),
        ("de-gpu", "DE", AcceleratorClass::GpuLarge, vec!["echo"]),
        (
            "fr-cpu",
            "FR",
            AcceleratorClass::None,
            vec!["echo", "adder"],
        ),
        (
            "us-gpu",
            "US",
            AcceleratorClass::GpuSmall,
            vec!["echo", "adder"],
        ),
        ("nl-small", "NL", AcceleratorClass::None, vec!["echo"]),
    ];
    let mut nodes: Vec<NodeHandle> = Vec::new();
    for (name, j, acc, handlers) in &specs {
        let mut c = node_config(dir.path(), &rc, name, j, secret);
        c.hardware.accelerator = *acc;
        c.handlers = handlers.iter().map(|h| h.to_string()).collect();
        if *name == "nl-small" {
            c.hardware.memory = ByteSize(32 << 20);
        }
        nodes.push(start_node(c, setup).await.unwrap());
    }
    let client = support::operator_client(&rc);
    wait_members(&client, 5, Duration::from_secs(20)).await;
    let name_of = |addr: &str| {
        nodes
            .iter()
            .zip(specs.iter())
            .find(|(n, _)| n.api_url() == addr)
            .map(|(_, s)| s.0)
            .unwrap_or("?")
    };

    // Jurisdiction: only DE nodes; GPU: only de-gpu.
    let s = client
        .create(&manifest("echo", &["DE"], "gpu-large", ""), None)
        .await
        .unwrap();
    assert_eq!(name_of(&s.address), "de-gpu");
    for _ in 0..3 {
        let s = client
            .create(&manifest("echo", &["DE"], "none", ""), None)
            .await
            .unwrap();
        assert!(name_of(&s.address).starts_with("de-"), "{}", s.address);
    }
    // EU zone admits FR/NL/DE but the handler `adder` is only in FR (and US, outside the EU).
    let s = client
        .create(&manifest("adder", &["EU"], "none", ""), None)
        .await
        .unwrap();
    assert_eq!(name_of(&s.address), "fr-cpu");
    // gpu-small with adder, in any of four countries: only us-gpu qualifies.
    let s = client
        .create(
            &manifest("adder", &["US", "DE", "FR", "NL"], "gpu-small", ""),
            None,
        )
        .await
        .unwrap();
    assert_eq!(name_of(&s.address), "us-gpu");
    // Memory: nl-small has 32 MiB, the manifest asks 64 MiB (default): never NL.
    let r = client
        .create(&manifest("echo", &["NL"], "none", ""), None)
        .await;
    match r {
        Err(ClientError::Api {
            status: 422, body, ..
        }) => {
            let why = body["why"].as_array().unwrap();
            assert_eq!(why.len(), 5, "{body}");
            let nl = why.iter().find(|w| w["name"] == "nl-small").unwrap();
            assert_eq!(nl["filter"]["filter"], "memory", "{nl}");
            let de = why.iter().find(|w| w["name"] == "de-cpu").unwrap();
            assert_eq!(de["filter"]["filter"], "jurisdiction", "{de}");
        }
        other => panic!("expected 422, got {other:?}"),
    }
    // Unsatisfiable: JP.
    match client
        .create(&manifest("echo", &["JP"], "none", ""), None)
        .await
    {
        Err(ClientError::Api {
            status: 422,
            code,
            message,
            ..
        }) => {
            assert_eq!(code, "unsatisfiable");
            assert!(message.contains("jurisdiction"), "{message}");
        }
        other => panic!("expected 422, got {other:?}"),
    }
    // The directory knows every placed session.
    let st = client.get("/status").await.unwrap();
    assert_eq!(st["sessions"].as_array().unwrap().len(), 6, "{st}");
    for n in nodes {
        n.shutdown().await;
    }
    rc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_colony_secret_cannot_join() {
    let dir = tempfile::tempdir().unwrap();
    let rc = start_rc(rc_config(dir.path(), "the-right-secret"))
        .await
        .unwrap();
    let good = start_node(
        node_config(dir.path(), &rc, "good", "DE", "the-right-secret"),
        setup,
    )
    .await
    .unwrap();
    let client = support::operator_client(&rc);
    wait_members(&client, 1, Duration::from_secs(20)).await;
    // Nothing has been refused yet: the RC's own readiness probe of its control port (a
    // connection that closes before the handshake) is not a refused join.
    let before = reqwest::get(format!("{}/metrics", rc.api_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !before.contains("opengrid_cluster_join_refused_total"),
        "{before}"
    );
    let bad = start_node(
        node_config(dir.path(), &rc, "bad", "DE", "a-wrong-secret!"),
        setup,
    )
    .await
    .unwrap();
    // Give the bad node several connection attempts (one per second), then check it is outside.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let st = client.get("/status").await.unwrap();
        let names: Vec<_> = st["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].clone())
            .collect();
        assert_eq!(names, vec![json!("good")], "{st}");
        assert!(!bad.core().may_serve());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = reqwest::get(format!("{}/metrics", rc.api_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("opengrid_cluster_join_refused_total"),
        "{metrics}"
    );
    // The bad node says why it is outside, in `/health` (and its log).
    let why = wait_outside_reason(&bad.api_url(), "colony_secret").await;
    assert!(why.contains(&rc.cluster_addr().to_string()), "{why}");
    assert_eq!(good.core().outside_reason(), None);
    good.shutdown().await;
    bad.shutdown().await;
    rc.shutdown().await;
}

/// Waits (up to 10 s) until the node's `/health` names why it is outside, containing `needle`.
async fn wait_outside_reason(api: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let h: Value = reqwest::get(format!("{api}/health"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(r) = h["outside_reason"].as_str().filter(|r| r.contains(needle)) {
            return r.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no outside_reason with {needle:?}: {h}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_rc_cluster_is_wrong_says_so() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let node = start_node(
        NodeConfig {
            name: "lost".into(),
            data_dir: dir.path().join("lost"),
            jurisdiction: "DE".into(),
            api_listen: "127.0.0.1:0".parse().unwrap(),
            rc_cluster: dead.to_string(),
            colony_secret: "some-colony-secret".into(),
            handler_threads: 1,
            fsync: false,
            ..NodeConfig::default()
        },
        setup,
    )
    .await
    .unwrap();
    let why = wait_outside_reason(&node.api_url(), "cannot reach").await;
    assert!(
        why.contains("rc_cluster") && why.contains(&dead.to_string()),
        "{why}"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_data_dir_or_port_are_refused_with_the_field_to_change() {
    let dir = tempfile::tempdir().unwrap();
    let rc = start_rc(rc_config(dir.path(), "colony-secret-3"))
        .await
        .unwrap();
    let first = start_node(
        node_config(dir.path(), &rc, "a", "DE", "colony-secret-3"),
        setup,
    )
    .await
    .unwrap();
    // Same data dir (same name here): refused before it touches the identity or the store.
    let e = start_node(
        node_config(dir.path(), &rc, "a", "DE", "colony-secret-3"),
        setup,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("in use by another running opengrid process") && e.contains("data_dir"),
        "{e}"
    );
    // Same client-API port: the error names the fields to change.
    let mut nc = node_config(dir.path(), &rc, "b", "DE", "colony-secret-3");
    nc.api_listen = first.api_addr();
    let e = start_node(nc, setup).await.unwrap_err().to_string();
    assert!(
        e.contains("api_listen") && e.contains(&first.api_addr().to_string()),
        "{e}"
    );
    // Same for the RC's data dir.
    let e = start_rc(rc_config(dir.path(), "colony-secret-3"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("in use"), "{e}");
    // The lock goes with the process (here: the handle): the dir is usable again.
    first.shutdown().await;
    let again = start_node(
        node_config(dir.path(), &rc, "a", "DE", "colony-secret-3"),
        setup,
    )
    .await
    .unwrap();
    again.shutdown().await;
    rc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_control_messages_are_refused_and_a_dead_node_stays_dead() {
    use opengrid_cluster::common::identity::Identity;
    use opengrid_cluster::common::seal::{Payload, Seal, Sealed};
    use opengrid_cluster::common::wire::{self, RcMsg, ToRc};
    let dir = tempfile::tempdir().unwrap();
    let secret = "colony-secret-5";
    let rc = start_rc(rc_config(dir.path(), secret)).await.unwrap();
    let victim = start_node(node_config(dir.path(), &rc, "victim", "DE", secret), setup)
        .await
        .unwrap();
    let client = support::operator_client(&rc);
    wait_members(&client, 1, Duration::from_secs(20)).await;
    let victim_id = victim.core().id();
    // Someone holding the colony secret (here: in the same process) reaches the RC actor.
    let rc_actor = || {
        let cells = ractor::pg::get_scoped_members(
            &wire::PG_SCOPE.to_string(),
            &wire::pg_rc("local", secret),
        );
        ractor::ActorRef::<RcMsg>::from(cells.into_iter().next().expect("the RC actor"))
    };
    let heartbeat = |seq| ToRc::Heartbeat {
        node: victim_id,
        seq,
        sessions: 0,
        rtt_us: 1,
        warm: vec![],
    };
    // Unsealed, MAC-sealed with a made-up tag, and a stranger's join sent in the victim's name.
    rc_actor()
        .cast(RcMsg::wire(Sealed::in_clear(
            victim_id,
            Seal::None,
            heartbeat(1),
        )))
        .unwrap();
    rc_actor()
        .cast(RcMsg::wire(Sealed::<ToRc> {
            from: victim_id,
            seal: Seal::Aead { ctr: u64::MAX },
            payload: Payload::Encrypted(vec![7; 64]),
        }))
        .unwrap();
    let stranger = Identity::generate();
    rc_actor()
        .cast(RcMsg::wire(Sealed::<ToRc> {
            from: stranger.id(),
            seal: Seal::Aead { ctr: 1 },
            payload: Payload::Encrypted(opengrid_cluster::common::wire::encode(&heartbeat(3))),
        }))
        .unwrap();
    let refused = |m: &str, reason: &str| {
        m.lines()
            .filter(|l| {
                l.starts_with("opengrid_cluster_control_refused_total")
                    && l.contains(&format!("reason=\"{reason}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = reqwest::get(format!("{}/metrics", rc.api_url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if refused(&m, "not_allowed") >= 1.0
            && refused(&m, "bad_mac") >= 1.0
            && refused(&m, "no_link") >= 1.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "forged messages not all refused: {m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The victim dies; forged heartbeats in its name (every 50 ms) do not keep it alive.
    victim.shutdown().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seq = 10;
    loop {
        seq += 1;
        let _ = rc_actor().cast(RcMsg::wire(Sealed::in_clear(
            victim_id,
            Seal::None,
            heartbeat(seq),
        )));
        let st = client.get("/status").await.unwrap();
        if st["members"][0]["state"] == "dead" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a dead node kept alive by forged heartbeats: {st}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rc.shutdown().await;
}

/// Reads until EOF or error; `true` when the peer closed the connection within `within`.
async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_slow_and_excess_connections_are_closed() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = rc_config(dir.path(), "colony-secret-4");
    cfg.max_connections = 8;
    cfg.header_timeout = HumanDuration::from_millis(400);
    let rc = start_rc(cfg).await.unwrap();
    let addr = rc.api_addr();
    // Eight connections that send nothing, and one that sends half a request head (slowloris).
    let mut idle = Vec::new();
    for _ in 0..7 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Wait until the server holds all eight, then one more is closed on arrival.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut refused = false;
    while !refused && Instant::now() < deadline {
        let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
        refused = closed_within(&mut extra, Duration::from_millis(100)).await;
    }
    assert!(refused, "a ninth connection was kept open");
    // The idle and the slow ones are closed after the header timeout (not kept forever).
    for s in idle.iter_mut().chain(std::iter::once(&mut slow)) {
        assert!(
            closed_within(s, Duration::from_secs(5)).await,
            "an idle connection was kept open"
        );
    }
    // Then the server answers again, and counted the refusal.
    let client = support::operator_client(&rc);
    let metrics = {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match reqwest::get(format!("{}/metrics", rc.api_url())).await {
                Ok(r) => break r.text().await.unwrap(),
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "RC does not answer after the idle connections closed: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };
    assert!(
        sample(&metrics, "opengrid_cluster_connections_refused_total").unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );
    assert_eq!(client.get("/health").await.unwrap()["status"], "ok");
    rc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_api_round_trip_and_malformed_requests() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "colony-secret-2";
    let mut rcc = rc_config(dir.path(), secret);
    rcc.max_body = ByteSize(16 << 10);
    let rc = start_rc(rcc).await.unwrap();
    let mut nc = node_config(dir.path(), &rc, "n1", "DE", secret);
    nc.max_body = ByteSize(16 << 10);
    nc.lease = HumanDuration::from_secs(1);
    let node = start_node(nc, setup).await.unwrap();
    let client = support::operator_client(&rc);
    wait_members(&client, 1, Duration::from_secs(20)).await;

    // Round trip through the client library.
    let mut s = client
        .create(&manifest("echo", &["DE"], "none", ""), Some("round-trip-1"))
        .await
        .unwrap();
    assert_eq!(s.address, node.api_url());
    for i in 1..=3 {
        let r = s.send(json!({"i": i})).await.unwrap();
        assert_eq!(r["kind"], "processed");
        assert_eq!(r["output"]["turn"], i);
    }
    let info = s.info().await.unwrap();
    assert_eq!(info["last_seq"], 3);
    assert!(info["usage"]["bytes_in"].as_u64().unwrap() > 0, "{info}");

    // The node's /metrics carries the session actors' histograms, recorded on the node's meter:
    // three live handler calls, and the session's checkpoints (the first one at creation).
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let text = reqwest::get(format!("{}/metrics", node.api_url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if sample(&text, "opengrid_actors_checkpoint_seconds_count").is_some_and(|n| n >= 1.0) {
            break text;
        }
        assert!(Instant::now() < deadline, "no checkpoint recorded:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        sample(&metrics, "opengrid_actors_handler_seconds_count"),
        Some(3.0),
        "{metrics}"
    );
    assert!(
        metrics.contains("opengrid_actors_handler_seconds_bucket{le=\"0.001\"}"),
        "second-valued buckets: {metrics}"
    );

    // A client that starts at the RC for inputs is redirected (`moved`) and follows.
    // One connection per request: a connection the server closed after a 413 is never reused.
    let raw = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let op = support::operator_token(&rc);
    let r = raw
        .post(format!("{}/sessions/round-trip-1/inputs", rc.api_url()))
        .bearer_auth(s.capability.as_deref().expect("a capability"))
        .json(&json!({"seq": 4, "input": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 307);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "moved");
    assert_eq!(body["location"], node.api_url());

    // 20 malformed or refused requests, each with its status and code.
    let n = node.api_url();
    let rcu = rc.api_url();
    let big = "x".repeat(64 << 10);
    let cases: Vec<(&str, String, Option<String>, u16, &str)> = vec![
        (
            "POST",
            format!("{n}/sessions/round-trip-1/inputs"),
            Some("{not json".into()),
            400,
            "bad_json",
        ),
        (
            "POST",
            format!("{n}/sessions/round-trip-1/inputs"),
            Some("[]".into()),
            400,
            "bad_json",
        ),
        (
            "POST",
            format!("{n}/sessions/round-trip-1/inputs"),
            Some(r#"{"seq":"one","input":1}"#.into()),
            400,
            "bad_json",
        ),
        (
            "POST",
            format!("{n}/sessions/round-trip-1/inputs"),
            Some(r#"{"seq":-1,"input":1}"#.into()),
            400,
            "bad_json",
        ),
        (
            "POST",
            format!("{n}/sessions/round-trip-1/inputs"),
            Some(r#"{"input":1}"#.into()),
            400,
            "bad_json",
        ),
        (
            "POST",
            format!("{n}/sessions/round-trip-1/inputs"),
            Some(r#"{"seq":4,"input":1,"extra":2}"#.into()),
            400,
            "bad_json",
        ),
        (
            "POST",
            format!("{n}/sessions/round-trip-1/inputs"),
            Some(r#"{"seq":0,"input":1}"#.into()),
            400,
            "bad_seq",
        ),
        (
            "POST",
            format!("{n}/sessions/round-trip-1/inputs"),
            Some(format!(r#"{{"seq":4,"input":"{big}"}}"#)),
            413,
            "body_too_large",
        ),
        (
            "POST",
            format!("{n}/sessions/round-trip-1/inputs"),
            Some(r#"{"seq":9,"input":1}"#.into()),
            409,
            "seq_gap",
        ),
        (
            "POST",
            format!("{n}/sessions/round-trip-1/inputs"),
            Some(r#"{"seq":2,"input":1}"#.into()),
            200,
            "",
        ),
        (
            "POST",
            format!("{n}/sessions/no-such-session/inputs"),
            Some(r#"{"seq":1,"input":1}"#.into()),
            404,
            "not_found",
        ),
        (
            "POST",
            format!("{n}/sessions/bad%20id/inputs"),
            Some(r#"{"seq":1,"input":1}"#.into()),
            400,
            "bad_session_id",
        ),
        (
            "GET",
            format!("{n}/sessions/no-such-session"),
            None,
            404,
            "not_found",
        ),
        (
            "DELETE",
            format!("{n}/sessions/no-such-session"),
            None,
            404,
            "not_found",
        ),
        ("GET", format!("{n}/nope"), None, 404, "no_route"),
        (
            "POST",
            format!("{rcu}/sessions"),
            Some("not = [valid".into()),
            400,
            "bad_manifest",
        ),
        (
            "POST",
            format!("{rcu}/sessions"),
            Some(r#"{"version": 1}"#.into()),
            400,
            "bad_manifest",
        ),
        (
            "POST",
            format!("{rcu}/sessions"),
            Some(manifest("echo", &["DE"], "none", "").replace("version = 1", "version = 9")),
            400,
            "bad_manifest",
        ),
        (
            "POST",
            format!("{rcu}/sessions?session_id=round-trip-1"),
            Some(manifest("echo", &["DE"], "none", "")),
            409,
            "already_placed",
        ),
        (
            "POST",
            format!("{rcu}/sessions"),
            Some(manifest("nosuch", &["DE"], "none", "")),
            422,
            "unsatisfiable",
        ),
        (
            "GET",
            format!("{rcu}/sessions/unknown-one"),
            None,
            404,
            "not_found",
        ),
    ];
    assert!(cases.len() >= 20);
    for (method, url, body, status, code) in &cases {
        // A body over the limit is answered (413) before it is read in full; the server then
        // closes the connection and the client may see a reset instead of the answer. Retry
        // those transport errors a few times.
        let mut attempts = 0;
        let r = loop {
            let mut req = match *method {
                "POST" => raw.post(url),
                "DELETE" => raw.delete(url),
                _ => raw.get(url),
            }
            .bearer_auth(&op);
            if let Some(b) = body {
                req = req
                    .header("content-type", "application/octet-stream")
                    .body(b.clone());
            }
            match req.send().await {
                Ok(r) => break r,
                Err(e) if *status == 413 && attempts < 10 => {
                    attempts += 1;
                    eprintln!("transport error on the oversized body (retrying): {e}");
                }
                Err(e) => panic!("{method} {url}: {e}"),
            }
        };
        let got = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(got, *status, "{method} {url}: {text}");
        if !code.is_empty() {
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("{method} {url}: not JSON: {text}"));
            assert_eq!(v["code"], *code, "{method} {url}: {text}");
            assert!(
                v["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{text}"
            );
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["kind"], "duplicate", "{text}");
        }
    }
    // The node keeps serving.
    let r = s.send(json!("still here")).await.unwrap();
    assert_eq!(r["output"]["turn"], 4);
    let h: Value = reqwest::get(format!("{n}/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["serving"], true, "{h}");
    // A client that only knows the RC follows `moved` to the node.
    let mut again = client.attach("round-trip-1", None, 5);
    let r = again.send(json!("via the rc")).await.unwrap();
    assert_eq!(r["output"]["turn"], 5, "{r}");
    assert_eq!(again.moves, 1);
    assert_eq!(again.address, node.api_url());
    assert_eq!(again.unacked(), 0);

    // WebSocket: replies per frame, errors as JSON frames, the socket stays open.
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    // A browser cannot give a WebSocket headers: the capability may come as `access_token`.
    let ws_url = format!(
        "{}/sessions/round-trip-1/ws?access_token={}",
        node.api_url().replace("http://", "ws://"),
        s.capability.as_deref().unwrap()
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    ws.send(Message::text(r#"{"seq": 6, "input": "over ws"}"#))
        .await
        .unwrap();
    let reply: Value = match ws.next().await.unwrap().unwrap() {
        Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
        m => panic!("{m:?}"),
    };
    assert_eq!(reply["output"]["turn"], 6, "{reply}");
    ws.send(Message::text("{oops")).await.unwrap();
    let err: Value = match ws.next().await.unwrap().unwrap() {
        Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
        m => panic!("{m:?}"),
    };
    assert_eq!(err["code"], "bad_json");
    assert_eq!(err["status"], 400);
    ws.send(Message::text(r#"{"seq": 6, "input": "dup"}"#))
        .await
        .unwrap();
    let dup: Value = match ws.next().await.unwrap().unwrap() {
        Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
        m => panic!("{m:?}"),
    };
    assert_eq!(dup["kind"], "duplicate", "{dup}");
    let _ = ws.close(None).await;
    let mut s = client.attach("round-trip-1", None, 7);
    s.address = node.api_url();

    s.close().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.get("/sessions/round-trip-1").await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "directory entry not removed after close"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.shutdown().await;
    rc.shutdown().await;
}

/// A create refused `429 quota_exceeded`, saying `why`.
fn over_quota(r: Result<opengrid_cluster::client::Session, ClientError>, why: &str) {
    match r {
        Err(ClientError::Api {
            status,
            code,
            message,
            ..
        }) => {
            assert_eq!(
                (status, code.as_str()),
                (429, "quota_exceeded"),
                "{message}"
            );
            assert!(message.contains(why), "{message}");
        }
        other => panic!("expected quota_exceeded ({why}): {other:?}"),
    }
}

/// One client cannot take the colony: its live sessions and their reserved memory are capped
/// (`client_max_sessions`, `client_max_memory`; operators are not limited), and no session may
/// reserve more than a node's `max_session_share` of its memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_bound_what_one_client_and_one_session_may_take() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "quota-secret-1";
    let mut rcc = rc_config(dir.path(), secret);
    rcc.client_max_sessions = 2;
    rcc.client_max_memory = ByteSize(192 << 20);
    let rc = start_rc(rcc).await.unwrap();
    let mut nc = node_config(dir.path(), &rc, "n1", "DE", secret);
    nc.hardware.memory = ByteSize(1 << 30);
    let node = start_node(nc, setup).await.unwrap();
    let op = support::operator_client(&rc);
    wait_members(&op, 1, Duration::from_secs(20)).await;
    let anon = Client::new(rc.api_url());
    let with_memory =
        |mib: u64| manifest("echo", &["DE"], "none", &format!("memory = \"{mib}MiB\""));
    // One session may reserve at most half of the 1 GiB node: refused at admission, with why
    // (even for an operator, whom quotas do not limit).
    match op.create(&with_memory(600), None).await {
        Err(ClientError::Api { status, body, .. }) => {
            assert_eq!(status, 422, "{body}");
            assert_eq!(
                body["why"][0]["filter"]["filter"], "reservation_cap",
                "{body}"
            );
        }
        other => panic!("a 600 MiB session on a 1 GiB node must be refused: {other:?}"),
    }
    // Memory quota: 128 + 128 MiB > 192 MiB.
    let a = anon.create(&with_memory(128), None).await.unwrap();
    over_quota(
        anon.create(&with_memory(128), None).await,
        "client_max_memory",
    );
    // Session quota: two live sessions at most.
    let b = anon.create(&with_memory(16), None).await.unwrap();
    over_quota(anon.create(&with_memory(16), None).await, "2 live sessions");
    // The operator is not limited; the client's own status shows in the directory.
    let c = op.create(&with_memory(16), None).await.unwrap();
    let st = op.get("/status").await.unwrap();
    let clients: Vec<&Value> = st["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["client"])
        .collect();
    assert_eq!(
        clients.iter().filter(|c| **c == "127.0.0.1").count(),
        2,
        "{st}"
    );
    // Closing gives the quota back.
    a.close().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let d = loop {
        match anon.create(&with_memory(16), None).await {
            Ok(d) => break d,
            Err(e) => assert!(Instant::now() < deadline, "quota not given back: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for s in [b, c, d] {
        s.close().await.unwrap();
    }
    node.shutdown().await;
    rc.shutdown().await;
}

/// Colony membership by policy (ADR 0027): a colony that admits by join token refuses a node
/// with none, with one for another node, for another jurisdiction or signed by a stranger — each
/// told why — and admits the node whose token the colony operator signed; a `members` allowlist
/// refuses every other key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_nodes_the_membership_policy_admits_join() {
    use opengrid_cluster::common::identity::Identity;
    use opengrid_cluster::common::token::mint_join;
    let dir = tempfile::tempdir().unwrap();
    let secret = "membership-secret-1";
    let mut rcc = rc_config(dir.path(), secret);
    rcc.require_join_token = true;
    let rc = start_rc(rcc).await.unwrap();
    // The colony operator is the RC's own key here.
    let op = Identity::load_or_create(&dir.path().join("rc")).unwrap();
    let stranger = Identity::generate();
    let day = Duration::from_secs(86_400);
    // The node's key exists before it starts, so a token can name it.
    let good = Identity::load_or_create(&dir.path().join("good")).unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        ("no-token", String::new(), "join token"),
        (
            "other-node",
            mint_join(&op, "local", Some(&stranger.id()), &[], day).unwrap(),
            "is for node",
        ),
        (
            "other-zone",
            mint_join(&op, "local", None, &["FR".into()], day).unwrap(),
            "jurisdictions",
        ),
        (
            "stranger-signed",
            mint_join(&stranger, "local", None, &[], day).unwrap(),
            "not signed by a colony operator",
        ),
        (
            "other-colony",
            mint_join(&op, "elsewhere", None, &[], day).unwrap(),
            "token refused",
        ),
    ];
    let http = reqwest::Client::new();
    let mut refused = Vec::new();
    for (name, token, why) in &cases {
        let mut nc = node_config(dir.path(), &rc, name, "DE", secret);
        nc.join_token = token.clone();
        let node = start_node(nc, setup).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let h: Value = http
                .get(format!("{}/health", node.api_url()))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let r = h["join_refused"].as_str().unwrap_or_default().to_string();
            if r.contains(why) {
                assert!(r.contains("not admitted"), "{name}: {r}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: expected a refusal with {why:?}: {h}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        refused.push(node);
    }
    let op_client = support::operator_client(&rc);
    let st = op_client.get("/status").await.unwrap();
    assert_eq!(st["members"].as_array().unwrap().len(), 0, "{st}");
    // The right token, for this node and DE: admitted.
    let mut nc = node_config(dir.path(), &rc, "good", "DE", secret);
    nc.join_token = mint_join(&op, "local", Some(&good.id()), &["DE".into()], day).unwrap();
    let ok = start_node(nc, setup).await.unwrap();
    wait_members(&op_client, 1, Duration::from_secs(20)).await;
    let m = rc.core().metrics.render();
    assert!(
        m.lines()
            .any(|l| l.starts_with("opengrid_cluster_join_refused_total")
                && l.contains("reason=\"policy\"")),
        "policy refusals counted: {m}"
    );
    for n in refused {
        n.shutdown().await;
    }
    ok.shutdown().await;
    rc.shutdown().await;

    // An allowlist: only the listed key joins.
    let dir = tempfile::tempdir().unwrap();
    let listed = Identity::load_or_create(&dir.path().join("listed")).unwrap();
    let mut rcc = rc_config(dir.path(), secret);
    rcc.members = vec![listed.id().did()];
    let rc = start_rc(rcc).await.unwrap();
    let other = start_node(
        node_config(dir.path(), &rc, "unlisted", "DE", secret),
        setup,
    )
    .await
    .unwrap();
    let listed = start_node(node_config(dir.path(), &rc, "listed", "DE", secret), setup)
        .await
        .unwrap();
    let op_client = support::operator_client(&rc);
    wait_members(&op_client, 1, Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !other
        .core()
        .last_refusal()
        .is_some_and(|r| r.contains("is not in this colony's members"))
    {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            other.core().last_refusal()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let st = op_client.get("/status").await.unwrap();
    assert_eq!(st["members"][0]["name"], "listed", "{st}");
    other.shutdown().await;
    listed.shutdown().await;
    rc.shutdown().await;
}

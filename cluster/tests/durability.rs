//! Honest durability, in-process (one RC and several nodes started with `start_rc` /
//! `start_node` in this process, real ractor_cluster links and HTTP on 127.0.0.1):
//! - with one of three nodes dead, a zero-loss session requiring 2 copies beyond its holder is
//!   refused with the reason, one requiring 1 is acknowledged with `copies: 1`; the RC shows
//!   the session below its copies in `/status` and `/metrics`, and repairs its replica set when
//!   the node returns;
//! - a node with `fsync = false` never answers `durable: true`;
//! - a manifest needing more copies than the colony keeps is refused at admission.

mod support;
use std::time::{Duration, Instant};
use support::{rc_config, setup};

use opengrid_cluster::client::{Client, ClientError, Durability};
use opengrid_cluster::node::config::NodeConfig;
use opengrid_cluster::{start_node, start_rc, RcHandle};
use serde_json::{json, Value};

/// A node in DE with `fsync` as given.
fn node_config(
    dir: &std::path::Path,
    rc: &RcHandle,
    name: &str,
    secret: &str,
    fsync: bool,
) -> NodeConfig {
    NodeConfig {
        fsync,
        ..support::node_config(dir, rc, name, "DE", secret)
    }
}

fn zero_loss(min_copies: u32) -> String {
    format!(
        "version = 1\n[session]\nhandler = \"adder\"\ncontinuity = \"interactive\"\n[placement]\njurisdictions = [\"DE\"]\n[migration]\ncost = \"cheap\"\nacceptable_loss = \"0s\"\nmax_blackout = \"100ms\"\nmin_copies = {min_copies}\n"
    )
}

/// Waits until `/status` satisfies `ok`, returning it.
async fn wait_status(client: &Client, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = client.get("/status").await.expect("status");
        if ok(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn alive(v: &Value) -> usize {
    v["members"]
        .as_array()
        .map(|m| m.iter().filter(|x| x["state"] == "alive").count())
        .unwrap_or(0)
}

fn session<'a>(v: &'a Value, id: &str) -> &'a Value {
    v["sessions"]
        .as_array()
        .and_then(|s| s.iter().find(|x| x["session_id"] == id))
        .unwrap_or(&Value::Null)
}

/// A raw HTTP client and the operator token it sends.
struct Http(reqwest::Client, String);

/// One raw input (no client retries): `(HTTP status, body)`.
async fn input(http: &Http, address: &str, id: &str, seq: u64, x: i64) -> (u16, Value) {
    let r = http
        .0
        .post(format!("{address}/sessions/{id}/inputs"))
        .bearer_auth(&http.1)
        .json(&json!({"seq": seq, "input": x}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// The value of the unlabelled sample `name` in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_of_three_nodes_dead_zero_loss_inputs_get_only_the_copies_they_require() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "durability-secret-copies";
    let rc = start_rc(rc_config(dir.path(), secret)).await.unwrap();
    let client = support::operator_client(&rc);
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        nodes.push(
            start_node(node_config(dir.path(), &rc, name, secret, true), setup)
                .await
                .unwrap(),
        );
    }
    wait_status(&client, "3 alive members", |v| alive(v) == 3).await;
    // Node c dies; the RC notices.
    let c = nodes.pop().unwrap();
    c.shutdown().await;
    wait_status(&client, "c declared dead", |v| alive(v) == 2).await;

    // More copies than the colony keeps (k = 2): refused at admission, never placed.
    match client.create(&zero_loss(3), Some("three-copies")).await {
        Err(ClientError::Api { status, body, .. }) => {
            assert_eq!(status, 422, "{body}");
            assert_eq!(body["code"], "min_copies_unreachable", "{body}");
        }
        other => panic!("min_copies 3 > replicas 2 must be refused: {other:?}"),
    }

    let http = Http(reqwest::Client::new(), support::operator_token(&rc));
    // min_copies 2: only one other node is alive, so every input is refused with the reason.
    let two = client
        .create(&zero_loss(2), Some("two-copies"))
        .await
        .unwrap();
    let (code, body) = input(&http, &two.address, &two.id, 1, 5).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["code"], "too_few_copies", "{body}");
    assert_eq!(
        (body["have"].as_u64(), body["need"].as_u64()),
        (Some(1), Some(2))
    );
    let msg = body["message"].as_str().unwrap_or_default();
    assert!(msg.contains("1 of 2 copies required"), "{msg}");
    // Refused again: the refused input was not applied.
    let (code, body) = input(&http, &two.address, &two.id, 1, 5).await;
    assert_eq!((code, body["code"].as_str()), (503, Some("too_few_copies")));

    // min_copies 1: acknowledged, durable, with the one copy it got.
    let one = client
        .create(&zero_loss(1), Some("one-copy"))
        .await
        .unwrap();
    let (code, body) = input(&http, &one.address, &one.id, 1, 7).await;
    assert_eq!(code, 200, "{body}");
    let d = Durability::of(&body).unwrap();
    assert_eq!(
        (d.durable, d.copies, d.not_durable.as_deref()),
        (true, 1, None),
        "{body}"
    );
    assert_eq!(body["output"], 7);

    // The RC shows the session below its copies, per session and as a gauge.
    let st = wait_status(&client, "two-copies below min_copies", |v| {
        session(v, "two-copies")["below_min_copies"] == true
    })
    .await;
    let s = session(&st, "two-copies");
    assert_eq!(s["min_copies"], 2, "{s}");
    assert_eq!(s["alive_replicas"], 1, "{s}");
    assert_eq!(session(&st, "one-copy")["below_min_copies"], false);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = reqwest::get(format!("{}/metrics", rc.api_url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if sample(&text, "opengrid_cluster_sessions_below_min_copies") == Some(1.0) {
            assert!(
                sample(&text, "opengrid_cluster_sessions_below_k").is_some_and(|n| n >= 2.0),
                "{text}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no below-min-copies gauge:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Node c returns: the RC's repair loop fills the replica set, and the refused input is
    // acknowledged with both copies.
    nodes.push(
        start_node(node_config(dir.path(), &rc, "c", secret, true), setup)
            .await
            .unwrap(),
    );
    wait_status(&client, "two-copies repaired", |v| {
        alive(v) == 3 && session(v, "two-copies")["below_min_copies"] == false
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let (code, body) = input(&http, &two.address, &two.id, 1, 5).await;
        if code == 200 {
            break body;
        }
        assert_eq!(body["code"], "too_few_copies", "{body}");
        assert!(Instant::now() < deadline, "never repaired: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let d = Durability::of(&body).unwrap();
    assert_eq!((d.durable, d.copies), (true, 2), "{body}");
    assert_eq!(body["output"], 5);

    for n in nodes {
        n.shutdown().await;
    }
    rc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_fsync_never_answers_durable() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "durability-secret-fsync";
    let rc = start_rc(rc_config(dir.path(), secret)).await.unwrap();
    let client = support::operator_client(&rc);
    let mut nodes = Vec::new();
    for name in ["a", "b"] {
        nodes.push(
            start_node(node_config(dir.path(), &rc, name, secret, false), setup)
                .await
                .unwrap(),
        );
    }
    wait_status(&client, "2 alive members", |v| alive(v) == 2).await;
    let mut s = client
        .create(&zero_loss(1), Some("no-fsync"))
        .await
        .unwrap();
    for i in 1..=3 {
        let r = s.send(json!(i)).await.unwrap();
        let d = Durability::of(&r).unwrap();
        assert!(!d.durable, "fsync = false answered durable: {r}");
        assert_eq!(d.copies, 1, "{r}");
        let why = d.not_durable.unwrap_or_default();
        assert!(why.contains("fsync = false"), "{why}");
    }
    for n in nodes {
        n.shutdown().await;
    }
    rc.shutdown().await;
}

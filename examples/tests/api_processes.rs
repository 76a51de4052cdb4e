//! The `/v1` client API against real `opengrid` processes (ADR 0035): the OpenAPI document the RC
//! and the nodes serve is the committed one; the unversioned routes of earlier releases still
//! answer; redirects name `/v1` routes; a retried seq gets its first answer, on the holder, after
//! a live handover and after a kill -9 failover (the answers ride in the checkpoint).

mod common;

use std::time::{Duration, Instant};

use common::Colony;
use serde_json::{json, Value};

const COUNTER_ZERO_LOSS: &str = r#"{"version":1,"session":{"handler":"counter","continuity":"interactive"},"placement":{"jurisdictions":["DE"]},"migration":{"cost":"cheap","acceptable_loss":"0s","max_blackout":"200ms"}}"#;

/// `POST {base}/v1/sessions/{id}/inputs` with `seq` and `input` as the session's client.
async fn input(c: &Colony, base: &str, id: &str, cap: &str, seq: u64, v: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/sessions/{id}/inputs"))
        .bearer_auth(cap)
        .json(&json!({"seq": seq, "input": v}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let _ = c;
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The holder's address once the directory names a node other than `not` (a failover), with a
/// deadline.
async fn holder_other_than(c: &Colony, id: &str, not: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let e = c.entry(id).await;
        if e["state"] == "active" && e["node_name"].as_str().is_some_and(|n| n != not) {
            return e["address"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no failover of {id} within 60 s: {e}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_seq_gets_its_first_answer_across_handover_and_failover() {
    let mut c = Colony::start();
    for n in ["n1", "n2", "n3"] {
        c.node(n, "DE");
    }
    c.wait_alive(3).await;

    // The document served is the committed one, at the RC and at a node.
    let committed = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json"),
    )
    .unwrap();
    let http = reqwest::Client::new();
    let served = http
        .get(format!("{}/v1/openapi.json", c.rc_api))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(served, committed, "the RC serves the committed document");

    // Create at /v1; the unversioned route still works for old clients.
    let r = http
        .post(format!("{}/v1/sessions", c.rc_api))
        .header("content-type", "application/json")
        .body(COUNTER_ZERO_LOSS)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let p: Value = r.json().await.unwrap();
    let (id, cap) = (
        p["session_id"].as_str().unwrap().to_string(),
        p["capability"].as_str().unwrap().to_string(),
    );
    let node_doc = http
        .get(format!(
            "{}/v1/openapi.json",
            p["address"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(node_doc, committed, "a node serves the committed document");

    let base = p["address"].as_str().unwrap().to_string();
    let mut answers = Vec::new();
    for seq in 1..=5u64 {
        let (st, r) = input(&c, &base, &id, &cap, seq, json!(seq * 10)).await;
        assert_eq!((st, r["kind"].as_str()), (200, Some("processed")), "{r}");
        answers.push(r["output"].clone());
    }
    let old = reqwest::Client::new()
        .post(format!("{base}/sessions/{id}/inputs"))
        .bearer_auth(&cap)
        .json(&json!({"seq": 6, "input": 60}))
        .send()
        .await
        .unwrap();
    assert_eq!(old.status().as_u16(), 200, "the unversioned route answers");
    answers.push(old.json::<Value>().await.unwrap()["output"].clone());

    // A retry on the holder: the first answer, not a second processing.
    let (st, r) = input(&c, &base, &id, &cap, 4, json!(999)).await;
    assert_eq!(st, 200);
    assert_eq!(r["kind"], "duplicate", "{r}");
    assert_eq!(
        (r["retained"].as_bool(), &r["output"]),
        (Some(true), &answers[3]),
        "{r}"
    );

    // After a live handover: the old holder redirects to the new one's /v1 route, which answers
    // the retry with the first answer.
    let from = c.entry(&id).await["node_name"]
        .as_str()
        .unwrap()
        .to_string();
    c.handover(&id).await;
    let (st, r) = input(&c, &base, &id, &cap, 5, json!(999)).await;
    match st {
        307 => {
            let url = r["url"].as_str().unwrap();
            assert!(url.ends_with(&format!("/v1/sessions/{id}/inputs")), "{r}");
            let to = r["location"].as_str().unwrap().to_string();
            let (st, r) = input(&c, &to, &id, &cap, 5, json!(999)).await;
            assert_eq!(st, 200, "{r}");
            assert_eq!(r["output"], answers[4], "{r}");
        }
        // Relayed by the old holder while it still forwards (X2): the same answer.
        200 => assert_eq!(r["output"], answers[4], "{r}"),
        _ => panic!("after the handover: {st} {r}"),
    }
    assert_ne!(
        c.entry(&id).await["node_name"].as_str(),
        Some(from.as_str())
    );

    // After kill -9 of the holder: the failover's holder restored the answers from the replicated
    // checkpoint.
    let holder = c.entry(&id).await["node_name"]
        .as_str()
        .unwrap()
        .to_string();
    c.kill9(&holder);
    let base = holder_other_than(&c, &id, &holder).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let r = loop {
        let (st, r) = input(&c, &base, &id, &cap, 6, json!(999)).await;
        if st == 200 {
            break r;
        }
        assert!(Instant::now() < deadline, "retry after failover: {st} {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(r["kind"], "duplicate", "{r}");
    assert_eq!(r["output"], answers[5], "{r}");
    // And the session goes on where it was: 10+20+…+60 = 210, plus 70.
    let (st, r) = input(&c, &base, &id, &cap, 7, json!(70)).await;
    assert_eq!((st, &r["output"]), (200, &json!(280)), "{r}");
}

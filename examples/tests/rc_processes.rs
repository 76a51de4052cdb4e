//! The RC's loss against real `opengrid` processes (ADR 0037): a double fault — the RC killed,
//! and while it is down the node holding sessions killed too; the RC restarted with its data dir
//! — leaves no session forgotten: the restarted RC reads its directory back, the dead holder is
//! declared dead and its sessions are restored from their replicas, the other nodes' sessions
//! are reconciled, and nothing acknowledged is lost.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{step, Colony};
use serde_json::Value;

const ZERO_LOSS: &str = r#"{"version":1,"session":{"handler":"counter","continuity":"interactive"},"placement":{"jurisdictions":["DE"]},"migration":{"cost":"cheap","acceptable_loss":"0s","max_blackout":"200ms"}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_double_fault_forgets_no_session() {
    let mut c = Colony::start();
    for n in ["n1", "n2", "n3", "n4"] {
        c.node(n, "DE");
    }
    c.wait_alive(4).await;
    let client = c.client();
    let mut sessions = Vec::new();
    for _ in 0..12 {
        let mut s = client.create(ZERO_LOSS, None).await.unwrap();
        let mut acked = 0;
        for _ in 0..3 {
            acked = step(&mut s, acked).await.unwrap();
        }
        sessions.push((s, acked));
    }
    // The node holding the most sessions is the one that dies while the RC is away.
    let mut on: HashMap<String, usize> = HashMap::new();
    for (s, _) in &sessions {
        *on.entry(
            c.entry(&s.id).await["node_name"]
                .as_str()
                .unwrap()
                .to_string(),
        )
        .or_default() += 1;
    }
    let (victim, held) = on.iter().max_by_key(|(_, n)| **n).unwrap();
    let victim = victim.clone();
    eprintln!("sessions per node: {on:?}; {victim} dies with {held} while the RC is down");

    c.kill9("rc");
    c.kill9(&victim);
    c.spawn("rc", "rc", c.rc_cfg.clone());

    // Every session active again on a live node, within a deadline.
    let ids: Vec<String> = sessions.iter().map(|(s, _)| s.id.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let st = c.get("/status").await;
        let active = |id: &str| {
            st["sessions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e: &Value| {
                    e["session_id"] == id
                        && e["state"] == "active"
                        && e["node_name"] != victim.as_str()
                })
        };
        if ids.iter().all(|id| active(id)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every session is active again on a live node within 90 s; logs in {}\nstatus: {st}",
            c.dir.path().display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing acknowledged is lost: each session's next input answers its count + 1.
    for (s, acked) in sessions.iter_mut() {
        *acked = step(s, *acked).await.unwrap_or_else(|e| {
            panic!(
                "session {} after the double fault: {e}; logs in {}",
                s.id,
                c.dir.path().display()
            )
        });
        assert_eq!(*acked, 4);
    }
}

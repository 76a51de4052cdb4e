//! `opengrid ledger …`: the node binary runs and queries ledger replicas (same commands as
//! `opengrid-ledger`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn opengrid() -> Command {
    Command::new(env!("CARGO_BIN_EXE_opengrid"))
}

#[test]
fn keygen_is_idempotent_and_prints_a_did() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("ledger.key");
    let run = || {
        let out = opengrid()
            .args(["ledger", "keygen", "--key-file"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let first = run();
    assert!(first.starts_with("did:mycel:z"), "{first}");
    assert_eq!(run(), first, "the key file is reused, not replaced");
}

#[test]
fn single_replica_serves_status_and_exits_with_its_parent() {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let mut replica = opengrid()
        .args([
            "ledger",
            "replica",
            "--id",
            "1",
            "--addr",
            &addr,
            "--exit-on-stdin-eof",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--peers", &format!("1={addr}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let out = opengrid()
            .args(["ledger", "status", "--addr", &addr])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() && text.contains("\"state\":\"Leader\"") {
            break text;
        }
        assert!(Instant::now() < deadline, "replica never answered status");
        std::thread::sleep(Duration::from_millis(100));
    };
    let v: serde_json::Value = serde_json::from_str(status.lines().next().unwrap()).unwrap();
    assert_eq!(v["raft"]["voters"], serde_json::json!([1]), "{status}");
    assert_eq!(v["ledger"]["total_fees_micros"], 0, "{status}");
    assert_eq!(v["ledger"]["total_credits_micros"], 0, "{status}");
    // Closing stdin ends the replica (its parent owns its lifetime).
    drop(replica.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = replica.try_wait().unwrap() {
            assert!(st.success(), "replica exit status {st}");
            break;
        }
        if Instant::now() > deadline {
            let _ = replica.kill();
            panic!("replica did not exit after stdin closed");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

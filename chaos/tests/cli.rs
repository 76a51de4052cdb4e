//! The `opengrid-chaos` binary end to end: validate, run (schedule + reproduce line + exit code),
//! and the process benches with replica-server children on 127.0.0.1.

use std::process::Command;

fn chaos(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_opengrid-chaos"))
        .args(args)
        .env("OPENGRID_BIN_DIR", "/nonexistent")
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

fn scenario(name: &str) -> String {
    format!("{}/scenarios/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn validate_prints_the_schedule_and_names_bad_fields() {
    let (code, out, _) = chaos(&["validate", &scenario("partition.toml"), "--seed", "5"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("partition") && out.contains("heal"), "{out}");
    let (_, again, _) = chaos(&["validate", &scenario("partition.toml"), "--seed", "5"]);
    assert_eq!(out, again, "same seed, same schedule");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(scenario("kill-node.toml"))
        .unwrap()
        .replace("target = \"n1\"", "target = \"n7\"");
    std::fs::write(&bad, text).unwrap();
    let (code, _, err) = chaos(&["validate", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("fault[0].target") && err.contains("n7"),
        "{err}"
    );
    let (code, out, _) = chaos(&["validate", &scenario("short-suite.toml")]);
    assert_eq!(code, 0);
    assert!(out.contains("suite short"), "{out}");
}

#[test]
fn run_without_the_node_binary_reports_an_error_with_schedule_and_reproduce_line() {
    let (code, out, _) = chaos(&[
        "run",
        &scenario("kill-node.toml"),
        "--seed",
        "9",
        "--json",
        "--bin",
        "/nonexistent/opengrid",
    ]);
    assert_eq!(code, 2, "{out}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["seed"], 9);
    assert_eq!(j["passed"], false);
    assert!(j["reproduce"]
        .as_str()
        .unwrap()
        .ends_with("--seed 9 --json --bin /nonexistent/opengrid"));
    assert_eq!(j["schedule"][0]["action"], "kill");
    assert!(j["error"].as_str().unwrap().contains("opengrid"));
}

#[test]
fn bench_checkpoint_and_handover_run_with_real_replica_processes() {
    // Security off, then on, in one run (the ratio BENCHMARKS.md records).
    let (code, out, err) = chaos(&[
        "bench",
        "checkpoint",
        "--json",
        "--count",
        "40",
        "--links",
        "both",
        "-q",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let runs: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(runs.len(), 2, "{out}");
    assert_eq!(runs[0]["links"], "plaintext");
    assert_eq!(runs[1]["links"], "tls");
    for j in &runs {
        assert_eq!(j["name"], "checkpoint_zero_loss_k2");
        assert_eq!(j["count"], 40);
        assert_eq!(j["lost"], 0);
        assert_eq!(j["duplicated"], 0);
        assert!(j["p99_us"].as_u64().unwrap() >= j["p50_us"].as_u64().unwrap());
        assert!(j["baseline_local_fsync_p50_us"].as_u64().unwrap() > 0);
    }
    // The two-replica-server harness (`--replica-servers`): 3 inputs race each handover. The
    // default `bench handover` runs `opengrid` node processes (chaos/tests/bench_colony.rs).
    let (code, out, err) = chaos(&[
        "bench",
        "handover",
        "--replica-servers",
        "--json",
        "--count",
        "4",
        "--links",
        "plaintext",
        "-q",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for l in &lines {
        assert_eq!(l["count"], 4);
        assert_eq!(l["lost"], 0);
        assert_eq!(l["duplicated"], 0);
        assert_eq!(l["inputs"], 12);
        assert_eq!(l["links"], "plaintext");
    }
    assert_eq!(lines[2]["name"], "handover_blackout_1MiB");
}

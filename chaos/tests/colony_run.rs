//! `opengrid-chaos run` against a real colony (an `opengrid` RC and three nodes), end to end:
//! a clean run passes, and a deliberately broken workload (`OPENGRID_CHAOS_BREAK=dedupe`: some
//! acknowledged inputs resent under fresh seqs, unrecorded) is caught — the report names
//! `no-duplicate` violations and the exit code is 1; so is a colony whose nodes serve without a
//! lease (`OPENGRID_CHAOS_BREAK=fencing`, the nodes' `ignore-lease` fault hook) under a partition
//! — `single-active` violations. This proves the checkers can fail.
//!
//! Needs the `opengrid` binary (package opengrid-examples) in the same target directory:
//! `scripts/test.sh` builds the whole workspace first; alone, run
//! `cargo build -p opengrid-examples --bin opengrid` before this test.

mod common;

use std::process::Command;
use std::time::Duration;

const SCENARIO: &str = r#"version = 1
name = "tiny-latency"
seed = 7
duration = "6s"

[cluster]
colonies = ["eu"]
[[cluster.rc]]
name = "rc"
colony = "eu"
[[cluster.node]]
name = "n1"
colony = "eu"
jurisdiction = "DE"
[[cluster.node]]
name = "n2"
colony = "eu"
jurisdiction = "DE"
[[cluster.node]]
name = "n3"
colony = "eu"
jurisdiction = "DE"

[workload]
duration = "5s"
[[workload.sessions]]
group = "zero-loss"
count = 3
input_rate = 10.0
manifest_toml = """
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
"""

[[fault]]
at = "1s"
spread = "1s"
action = "latency"
between = ["n1", "rc"]
latency = "20ms"
jitter = "5ms"
duration = "2s"

[invariants]
check = ["no-acked-loss", "no-duplicate", "single-active", "jurisdiction", "health"]
"#;

/// Each node in turn partitioned from its RC for 3 s: whichever holds sessions (placement may
/// pile them on one node) has them failed over to the others while it is cut off.
fn partition_scenario() -> String {
    let head = SCENARIO.replace("tiny-latency", "tiny-partitions");
    let cut = head.find("[[fault]]").unwrap();
    let mut s = head[..cut]
        .replace("duration = \"6s\"", "duration = \"14s\"")
        .replace(
            "duration = \"5s\"\n[[workload",
            "duration = \"13s\"\n[[workload",
        )
        .replace("count = 3", "count = 6");
    for (i, node) in ["n1", "n2", "n3"].iter().enumerate() {
        s.push_str(&format!(
            "[[fault]]\nat = \"{}s\"\naction = \"partition\"\nbetween = [\"{node}\", \"rc\"]\nduration = \"3s\"\n\n",
            1 + 4 * i
        ));
    }
    s.push_str("[invariants]\ncheck = [\"single-active\", \"health\"]\n");
    s
}

/// Runs `opengrid-chaos run <tiny scenario> --json`; returns (exit code, stdout, stderr).
fn run(break_mode: Option<&str>) -> (i32, String, String) {
    run_scenario(SCENARIO, break_mode)
}

fn run_scenario(scenario: &str, break_mode: Option<&str>) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.toml");
    std::fs::write(&path, scenario).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_opengrid-chaos"));
    cmd.arg("run")
        .arg(&path)
        .arg("--json")
        .arg("--bin")
        .arg(common::opengrid_bin())
        // A failing run keeps its colony directory for the operator to read: here it lands in
        // (and goes with) this test's temporary directory.
        .env("TMPDIR", dir.path())
        .env_remove("OPENGRID_CHAOS_BREAK");
    if let Some(b) = break_mode {
        cmd.env("OPENGRID_CHAOS_BREAK", b);
    }
    let (status, out, err) =
        common::run_with_deadline(&mut cmd, Duration::from_secs(90), "opengrid-chaos run");
    (status.code().unwrap_or(-1), out, err)
}

#[test]
fn a_clean_run_passes_and_a_broken_dedupe_is_caught() {
    let (code, out, err) = run(None);
    assert_eq!(code, 0, "clean run failed:\n{out}\n{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["passed"], true, "{out}");
    assert_eq!(j["faults"][0]["fault"]["action"], "latency");
    assert!(j["faults"][0]["injected_ms"].as_u64().is_some(), "{out}");
    assert!(j["reproduce"].as_str().unwrap().contains("--seed 7"));

    let (code, out, err) = run(Some("dedupe"));
    assert_eq!(code, 1, "broken run not caught:\n{out}\n{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["passed"], false);
    let v = j["violations"].as_array().unwrap();
    assert!(
        v.iter().any(|v| v["invariant"] == "no-duplicate"),
        "no no-duplicate violation: {out}"
    );
    assert!(j["reproduce"]
        .as_str()
        .unwrap()
        .starts_with("OPENGRID_CHAOS_BREAK=dedupe "));
}

#[test]
fn a_node_serving_without_a_lease_is_caught() {
    let sc = partition_scenario();
    let (code, out, err) = run_scenario(&sc, Some("fencing"));
    assert_eq!(code, 1, "broken fencing not caught:\n{sc}\n{out}\n{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    let v = j["violations"].as_array().unwrap();
    assert!(
        v.iter().any(|v| v["invariant"] == "single-active"),
        "no single-active violation: {out}"
    );
    assert!(j["reproduce"]
        .as_str()
        .unwrap()
        .starts_with("OPENGRID_CHAOS_BREAK=fencing "));
}

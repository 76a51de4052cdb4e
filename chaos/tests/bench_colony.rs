//! `opengrid-chaos bench failover --json` end to end with a tiny colony: an `opengrid` RC and four
//! node processes, 20 zero-loss sessions on the node that is killed with -9. Checks the JSON:
//! every session active elsewhere, nothing lost, duplicated or active twice.
//!
//! Needs the `opengrid` binary (package opengrid-examples) in the same target directory:
//! `scripts/test.sh` builds the whole workspace first (`cargo build --workspace --all-targets`);
//! alone, run `cargo build -p opengrid-examples --bin opengrid` before this test.

mod common;

use std::process::Command;
use std::time::Duration;

#[test]
fn bench_failover_moves_every_session_and_loses_nothing() {
    let bin = common::opengrid_bin();
    let (status, out, err) = common::run_with_deadline(
        Command::new(env!("CARGO_BIN_EXE_opengrid-chaos"))
            .args([
                "bench",
                "failover",
                "--json",
                "--count",
                "20",
                "--budget-s",
                "40",
            ])
            .arg("--bin")
            .arg(&bin),
        Duration::from_secs(60),
        "bench failover",
    );
    assert!(
        status.success(),
        "exit {status}\nstdout:\n{out}\nstderr:\n{err}"
    );
    let line = out.lines().last().unwrap_or_default();
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {out}\n{err}"));
    assert_eq!(v["name"], "failover_kill9", "{v}");
    assert_eq!(v["lost"], 0, "{v}");
    assert_eq!(v["duplicated"], 0, "{v}");
    assert_eq!(v["active_twice"], 0, "{v}");
    assert_eq!(v["not_recovered"], 0, "{v}");
    assert_eq!(v["count"], 20, "{v}");
    assert_eq!(v["on_victim"], 20, "{v}");
    let (p50, p99) = (v["p50_us"].as_u64().unwrap(), v["p99_us"].as_u64().unwrap());
    assert!(p50 > 0 && p50 <= p99, "{v}");
    // Progress went to stderr; the colony left no process and no directory behind.
    assert!(err.contains("kill -9"), "{err}");
    let dir = err
        .lines()
        .find_map(|l| l.split("colony in ").nth(1))
        .and_then(|r| r.split(' ').next())
        .unwrap_or_else(|| panic!("no colony directory in the progress: {err}"));
    assert!(!std::path::Path::new(dir).exists(), "{dir} left behind");
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        assert!(
            !cmd.contains(dir),
            "stray process {:?}: {cmd}",
            e.file_name()
        );
    }
}

#[test]
fn a_missing_opengrid_binary_names_the_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_opengrid-chaos"))
        .args(["bench", "failover", "--json", "--count", "1"])
        .args(["--bin", "/nonexistent/opengrid"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--bin"), "{err}");
}

/// `bench api --security both`: the same colony with security off (dev configs, measurement
/// only) and on, alternating; a client without credentials gets its sessions in both (on: with
/// the capability the RC returns), nothing lost.
#[test]
fn bench_api_measures_the_client_api_with_security_off_and_on() {
    let bin = common::opengrid_bin();
    let (status, out, err) = common::run_with_deadline(
        Command::new(env!("CARGO_BIN_EXE_opengrid-chaos"))
            .args([
                "bench",
                "api",
                "--json",
                "--count",
                "6",
                "--security",
                "both",
            ])
            .args(["--budget-s", "40"])
            .arg("--bin")
            .arg(&bin),
        Duration::from_secs(90),
        "bench api",
    );
    assert!(
        status.success(),
        "exit {status}\nstdout:\n{out}\nstderr:\n{err}"
    );
    let runs: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(runs.len(), 2, "{out}");
    assert_eq!(runs[0]["security"], "off");
    assert_eq!(runs[1]["security"], "on");
    for v in &runs {
        assert_eq!(v["name"], "client_api", "{v}");
        assert_eq!(v["admissions"], 8, "{v}");
        assert_eq!(v["inputs"], 8 * 8, "{v}");
        assert_eq!(v["lost"], 0, "{v}");
        assert_eq!(v["duplicated"], 0, "{v}");
        assert!(v["inputs_per_s"].as_f64().unwrap() > 0.0, "{v}");
    }
    // Both settings ran (progress on stderr).
    assert!(
        err.contains("api (off)") && err.contains("api (on)"),
        "{err}"
    );
}

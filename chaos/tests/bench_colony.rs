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

/// The example components (`scripts/build-agents.sh`) in `<target>/agents/out`, built if missing.
fn agents_out(bin: &std::path::Path) -> std::path::PathBuf {
    let out = bin
        .parent()
        .and_then(|d| d.parent())
        .expect("the binary lives in <target>/<profile>")
        .join("agents")
        .join("out");
    if !["primes-rs", "counter-rs"]
        .iter()
        .all(|a| out.join(format!("{a}.wasm")).is_file())
    {
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-agents.sh");
        let target = out.parent().and_then(|d| d.parent()).unwrap();
        let status = Command::new("bash")
            .arg(&script)
            .env("CARGO_TARGET_DIR", target)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            status.success(),
            "{} failed; run it by hand",
            script.display()
        );
    }
    out
}

/// `bench agents`: two fresh versions of the ~2 MiB primes agent, each pushed and answered on
/// nodes that never saw it, with the warm baseline; every phase measured.
#[test]
fn bench_agents_pushes_new_versions_and_answers_cold() {
    let bin = common::opengrid_bin();
    let out_dir = agents_out(&bin);
    let (status, out, err) = common::run_with_deadline(
        Command::new(env!("CARGO_BIN_EXE_opengrid-chaos"))
            .args([
                "bench",
                "agents",
                "--json",
                "--count",
                "2",
                "--budget-s",
                "100",
            ])
            .arg("--bin")
            .arg(&bin)
            .arg("--component")
            .arg(out_dir.join("primes-rs.wasm")),
        Duration::from_secs(240),
        "bench agents",
    );
    assert!(
        status.success(),
        "exit {status}\nstdout:\n{out}\nstderr:\n{err}"
    );
    let line = out.lines().last().unwrap_or_default();
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {out}\n{err}"));
    assert_eq!(v["name"], "agent_push_first_answer", "{v}");
    assert_eq!(v["count"], 2, "{v}");
    assert!(
        v["component_bytes"].as_u64().unwrap() > 3 << 19,
        "about 2 MiB: {v}"
    );
    for field in [
        "p50_us",
        "push_p50_us",
        "create_p50_us",
        "first_input_p50_us",
        "warm_p50_us",
    ] {
        assert!(v[field].as_u64().unwrap() > 0, "{field}: {v}");
    }
    assert!(v["p50_us"].as_u64() <= v["p99_us"].as_u64(), "{v}");
    assert!(err.contains("primes-rs@1.0.1: first answer"), "{err}");
}

/// `bench handover --handler both`: native and wasm counter sessions handed over in one colony,
/// alternating; both answer every input exactly once, the wasm result carries the native
/// baseline and the ratios.
#[test]
fn bench_handover_compares_a_wasm_session_with_a_native_one() {
    let bin = common::opengrid_bin();
    let out_dir = agents_out(&bin);
    let (status, out, err) = common::run_with_deadline(
        Command::new(env!("CARGO_BIN_EXE_opengrid-chaos"))
            .args([
                "bench",
                "handover",
                "--handler",
                "both",
                "--json",
                "--count",
                "8",
            ])
            .args(["--budget-s", "60"])
            .arg("--bin")
            .arg(&bin)
            .arg("--component")
            .arg(out_dir.join("counter-rs.wasm")),
        Duration::from_secs(240),
        "bench handover --handler both",
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
    assert_eq!(runs[0]["name"], "handover_blackout_counter_native");
    assert_eq!(runs[1]["name"], "handover_blackout_counter_wasm");
    for v in &runs {
        assert_eq!(v["count"], 8, "{v}");
        assert_eq!(v["lost"], 0, "{v}");
        assert_eq!(v["duplicated"], 0, "{v}");
        assert_eq!(v["client_errors"], 0, "{v}");
        assert!(v["p50_us"].as_u64().unwrap() > 0, "{v}");
    }
    assert_eq!(runs[1]["baseline_p50_us"], runs[0]["p50_us"], "{}", runs[1]);
    assert!(runs[1]["ratio_p50"].as_f64().unwrap() > 0.0, "{}", runs[1]);
    assert!(err.contains("wasm vs native blackout"), "{err}");
}

/// `bench api --handler both` (P13): counter sessions run by the native handler and by the
/// `counter-rs` agent in one colony, alternating; every input answered exactly once through the
/// client API, the wasm result carries the native baseline and the cost ratio.
#[test]
fn bench_api_compares_wasm_sessions_with_native_ones() {
    let bin = common::opengrid_bin();
    let out_dir = agents_out(&bin);
    let (status, out, err) = common::run_with_deadline(
        Command::new(env!("CARGO_BIN_EXE_opengrid-chaos"))
            .args([
                "bench",
                "api",
                "--handler",
                "both",
                "--json",
                "--count",
                "8",
            ])
            .args(["--budget-s", "60"])
            .arg("--bin")
            .arg(&bin)
            .arg("--component")
            .arg(out_dir.join("counter-rs.wasm")),
        Duration::from_secs(240),
        "bench api --handler both",
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
    assert_eq!(runs[0]["handler"], "native");
    assert_eq!(runs[1]["handler"], "wasm");
    for v in &runs {
        assert_eq!(v["name"], "client_api", "{v}");
        assert_eq!(v["security"], "on", "{v}");
        assert_eq!(v["admissions"], 0, "{v}");
        // 8 inputs per session, split over the alternating rounds, every session.
        let rounds = 4;
        assert_eq!(v["inputs"], 8 * 8usize.div_ceil(rounds) * rounds, "{v}");
        assert_eq!(v["lost"], 0, "{v}");
        assert_eq!(v["duplicated"], 0, "{v}");
        assert!(v["inputs_per_s"].as_f64().unwrap() > 0.0, "{v}");
        assert!(v["input_p50_us"].as_u64().unwrap() > 0, "{v}");
        // The node's CPU over the timed inputs (Linux /proc); 0 possible at tick resolution.
        assert!(v["node_cpu_us_per_input"].as_f64().unwrap() >= 0.0, "{v}");
    }
    assert_eq!(
        runs[1]["baseline_node_cpu_us_per_input"], runs[0]["node_cpu_us_per_input"],
        "{}",
        runs[1]
    );
    assert_eq!(
        runs[1]["baseline_inputs_per_s"], runs[0]["inputs_per_s"],
        "{}",
        runs[1]
    );
    assert!(runs[1]["cost_ratio"].as_f64().unwrap() > 0.0, "{}", runs[1]);
    assert!(
        err.contains("api (on, native)") && err.contains("api (on, wasm)"),
        "{err}"
    );
    assert!(err.contains("wasm vs native inputs"), "{err}");
}

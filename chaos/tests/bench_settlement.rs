//! `opengrid-chaos bench settlement --json` end to end with tiny counts: three ledger replica
//! processes, plain writes, receipts, one small settlement batch, and the etcd baseline when an
//! `etcd` binary is installed (reported as skipped otherwise). Prints one valid JSON object.

mod common;

use std::process::Command;
use std::time::Duration;

#[test]
fn bench_settlement_runs_and_prints_valid_json() {
    let (status, out, err) = common::run_with_deadline(
        Command::new(env!("CARGO_BIN_EXE_opengrid-chaos")).args([
            "bench",
            "settlement",
            "--json",
            "--quiet",
            "--count",
            "200",
            "--batch-size",
            "50",
            "--settle-receipts",
            "100",
            "--settle-budget-s",
            "20",
            "--writes",
            "200",
            "--concurrency",
            "8",
            "--writes-budget-s",
            "10",
        ]),
        Duration::from_secs(90),
        "bench settlement",
    );
    assert!(
        status.success(),
        "exit {status:?}\nstdout: {out}\nstderr: {err}"
    );
    let j: serde_json::Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {out}\nstderr: {err}"));
    assert_eq!(j["name"], "settlement");
    assert_eq!(j["count"], 300, "{j}");
    assert_eq!(j["lost"], 0);
    assert_eq!(j["duplicated"], 0);
    assert_eq!(j["replicas_agree"], true, "{j}");
    assert_eq!(j["totals_exact"], true, "{j}");
    assert_eq!(j["receipts"]["count"], 200);
    assert_eq!(j["receipts"]["batches"], 4);
    assert_eq!(j["settle"]["settled"], 100);
    assert!(j["receipts"]["receipts_per_s"].as_f64().unwrap() > 0.0);
    assert!(j["p99_us"].as_u64().unwrap() >= j["p50_us"].as_u64().unwrap());
    assert_eq!(j["writes"]["raft"]["count"], 200, "{j}");
    assert_eq!(j["writes"]["raft"]["errors"], 0);
    assert!(j["machine"]["cpus"].as_u64().unwrap() >= 1);
    // etcd ran (same count) or was skipped with a reason.
    match j["writes"]["etcd"].as_object() {
        Some(e) => {
            assert_eq!(e["count"], 200, "{j}");
            assert!(j["writes"]["throughput_ratio"].as_f64().unwrap() > 0.0);
        }
        None => assert!(j["writes"]["etcd_skipped"].is_string(), "{j}"),
    }
}

//! End to end settlement through real processes: `opengrid-colony-demo` runs the RCs, nodes and
//! three `opengrid ledger replica` processes on 127.0.0.1, registers keys and split policies with the
//! operator command, serves sessions, and prints the ledger's balances. Nodes sign one receipt per
//! session per usage window, the RC co-signs and batches them (the ledger rejects receipts
//! without a valid RC co-signature, so every settled receipt was co-signed), and the batch is
//! settled through Raft. This test checks the printed figures: fees equal inputs × price, the
//! balances sum to the fees exactly, and no ledger replica is left behind.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_opengrid-colony-demo");

fn number_after(line: &str, key: &str) -> u64 {
    let rest = &line[line
        .find(key)
        .unwrap_or_else(|| panic!("{key:?} in {line:?}"))
        + key.len()..];
    rest.trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("number after {key:?} in {line:?}"))
}

#[test]
fn demo_settles_cosigned_receipts_and_balances_sum_to_fees() {
    let out = Command::new(BIN).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let settled = lines
        .iter()
        .find(|l| l.contains("settled ") && l.contains(" receipts in "))
        .unwrap_or_else(|| panic!("no settlement line\n{stdout}"));
    let receipts = number_after(settled, "settled ");
    let batches = number_after(settled, "receipts in ");
    let fees = number_after(settled, "fees ");
    let expected = number_after(settled, "(expected ");
    // Three sessions served with four inputs each: at least one receipt per session.
    assert!(receipts >= 3, "{settled}");
    assert!(batches >= 1, "{settled}");
    assert!(fees > 0, "{settled}");
    assert_eq!(fees, expected, "{settled}");

    let start = lines
        .iter()
        .position(|l| l.trim_start().starts_with("account"))
        .expect("balance table");
    let mut sum_of_rows = 0u64;
    let mut printed_sum = None;
    for l in &lines[start + 1..] {
        let mut parts = l.split_whitespace();
        let (Some(name), Some(v), None) = (parts.next(), parts.next(), parts.next()) else {
            break;
        };
        let Ok(v) = v.parse::<u64>() else { break };
        if name == "sum" {
            printed_sum = Some(v);
            break;
        }
        sum_of_rows += v;
    }
    assert_eq!(printed_sum, Some(fees), "{stdout}");
    assert_eq!(sum_of_rows, fees, "balances must sum to the fees\n{stdout}");
    // Each split party was credited (interchange, NodeCo and custom policies, RC, protocol).
    for account in ["munich-op", "alice", "bob", "paris-op", "rc-op", "protocol"] {
        let row = lines[start + 1..]
            .iter()
            .find(|l| l.split_whitespace().next() == Some(account))
            .unwrap_or_else(|| panic!("{account} row\n{stdout}"));
        assert!(number_after(row, account) > 0, "{row}");
    }

    let line = lines
        .iter()
        .find(|l| l.contains("ledger replicas ["))
        .expect("ledger pid line");
    let pids: Vec<i32> = line[line.find('[').unwrap() + 1..line.find(']').unwrap()]
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    assert_eq!(pids.len(), 3, "{line}");
    for pid in pids {
        // SAFETY: signal 0 only checks for existence.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "ledger replica {pid} left behind by the demo");
    }
}

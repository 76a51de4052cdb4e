//! The ledger replicas of a run with `[[cluster.ledger]]`: starting them (`opengrid ledger
//! replica`), registering every RC's and every node's key with the operator command, and reading
//! settlement from outside once it is quiet (for `ledger-balance`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::observe::members;
use super::rc_group::RcGroup;
use crate::invariants::{ReplicaTotals, SettlementSeen};
use crate::launcher::{Launcher, ProcSpec, ProcState};
use crate::scenario::Scenario;

/// Starts the ledger replicas (`opengrid ledger replica`), peers numbered 1.. in name order.
pub(super) fn spawn_ledgers(
    launcher: &mut Launcher,
    bin: &Path,
    ledgers: &BTreeMap<String, String>,
) -> Result<(), String> {
    // Each replica's identity key is made in its data dir first, so that every peer entry names
    // its DID.
    let peers: Vec<String> = ledgers
        .iter()
        .enumerate()
        .map(|(i, (name, a))| {
            let dir = launcher.data_dir(name).map_err(|e| e.to_string())?;
            opengrid_settlement::peer_entry(i as u64 + 1, a, &dir)
                .map_err(|e| format!("ledger replica {name} key: {e}"))
        })
        .collect::<Result<_, String>>()?;
    let operator = opengrid_settlement::Keypair::load_or_create(&operator_key(launcher)?)
        .map_err(|e| format!("ledger operator key: {e}"))?
        .did()
        .to_string();
    for (i, (name, addr)) in ledgers.iter().enumerate() {
        let dir = launcher.data_dir(name).map_err(|e| e.to_string())?;
        launcher
            .spawn(
                ProcSpec::new(name, bin)
                    .args([
                        "ledger".to_string(),
                        "replica".into(),
                        "--id".into(),
                        (i + 1).to_string(),
                        "--addr".into(),
                        addr.clone(),
                        "--data-dir".into(),
                        dir.display().to_string(),
                        "--peers".into(),
                        peers.join(","),
                        "--operator".into(),
                        operator.clone(),
                    ])
                    .env(
                        "RUST_LOG",
                        std::env::var("OPENGRID_CHAOS_NODE_LOG")
                            .unwrap_or_else(|_| "info,openraft=warn".into()),
                    ),
            )
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The ledger operator's key file of a run (created by [`spawn_ledgers`] in the run's data root).
fn operator_key(launcher: &Launcher) -> Result<std::path::PathBuf, String> {
    let dir = launcher
        .data_dir("ledger-operator")
        .map_err(|e| e.to_string())?;
    Ok(dir.join("operator.key"))
}

/// Registers every RC's (each of a group's) and every node's key (interchange split, operator
/// `<name>-op`) with the operator command, authorized by the run's ledger operator key, as an operator would.
pub(super) async fn register_keys(
    sc: &Scenario,
    launcher: &Launcher,
    bin: &Path,
    ledgers: &BTreeMap<String, String>,
) -> Result<(), String> {
    use opengrid_cluster::common::identity::KEY_FILE;
    let addr = ledgers.values().cloned().collect::<Vec<_>>().join(",");
    let op_key = operator_key(launcher)?.display().to_string();
    let key = |name: &str| -> Result<String, String> {
        Ok(launcher
            .data_dir(name)
            .map_err(|e| e.to_string())?
            .join(KEY_FILE)
            .display()
            .to_string())
    };
    // Every RC of a group: whichever leads co-signs the receipts.
    let mut cmds: Vec<Vec<String>> = Vec::new();
    for rc in sc.cluster.rc.iter().map(|r| &r.name) {
        cmds.push(vec![
            "ledger".into(),
            "register-rc".into(),
            "--key-file".into(),
            key(rc)?,
            "--operator".into(),
            format!("{rc}-op"),
            "--addr".into(),
            addr.clone(),
            "--operator-key-file".into(),
            op_key.clone(),
        ]);
    }
    for n in &sc.cluster.node {
        cmds.push(vec![
            "ledger".into(),
            "register-node".into(),
            "--key-file".into(),
            key(&n.name)?,
            "--addr".into(),
            addr.clone(),
            "--policy".into(),
            "interchange".into(),
            "--operator".into(),
            format!("{}-op", n.name),
            "--operator-key-file".into(),
            op_key.clone(),
        ]);
    }
    for args in cmds {
        let run = tokio::process::Command::new(bin)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .map_err(|_| {
                format!(
                    "opengrid {} did not finish within 60 s",
                    args[..2].join(" ")
                )
            })?
            .map_err(|e| format!("opengrid {}: {e}", args[..2].join(" ")))?;
        if !out.status.success() {
            return Err(format!(
                "opengrid {} failed: {}",
                args[..4].join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}

/// One replica's ledger totals (its own status, not the leader's).
pub(super) async fn replica_totals(name: &str, addr: &str) -> Result<ReplicaTotals, String> {
    let client = opengrid_settlement::LedgerClient::with_timeout(
        vec![addr.to_string()],
        Duration::from_secs(2),
        &opengrid_settlement::Keypair::generate(),
    )
    .map_err(|e| e.to_string())?;
    let s = client
        .replica_status(addr)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ReplicaTotals {
        name: name.to_string(),
        receipts: s.ledger.receipts_settled,
        fees: s.ledger.total_fees_micros,
        credits: s.ledger.total_credits_micros,
        state_hash: s
            .ledger
            .state_hash
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    })
}

/// Polls the nodes' receipt counters, the RC leader's settlement queue and every live replica
/// until settlement is quiet (the leader answers, nothing queued, every replica on the same
/// state, the same figures on three polls in a row) or 60 s passed; returns the last observation.
pub(super) async fn settlement_seen(
    http: &reqwest::Client,
    rc: &RcGroup,
    launcher: &mut Launcher,
    ledgers: &BTreeMap<String, String>,
    counters_complete: bool,
) -> SettlementSeen {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last: Option<SettlementSeen> = None;
    let mut same = 0;
    loop {
        let mut seen = SettlementSeen {
            counters_complete,
            ..Default::default()
        };
        let get = |url: String| async move {
            http.get(url).send().await.ok()?.json::<Value>().await.ok()
        };
        // The leader settles (a group's followers queue nothing of their own).
        let (health, st) = match rc.current().await {
            Some((leader, st)) => (
                get(format!("{}/health", leader.api))
                    .await
                    .unwrap_or(Value::Null),
                st,
            ),
            None => (Value::Null, Value::Null),
        };
        seen.unsettled += health["settlement"]["pending"].as_u64().unwrap_or(0);
        seen.rejected = health["settlement"]["rejected"].as_u64().unwrap_or(0);
        for m in members(&st) {
            let (Some(name), Some(api)) = (m["name"].as_str(), m["address"].as_str()) else {
                continue;
            };
            if launcher.state(name).ok() != Some(ProcState::Running) {
                continue;
            }
            let h = get(format!("{}/health", api.trim_end_matches('/')))
                .await
                .unwrap_or(Value::Null);
            let r = &h["receipts"];
            seen.acked += r["acked"].as_u64().unwrap_or(0);
            seen.acked_fees += r["acked_fees_micros"].as_u64().unwrap_or(0);
            seen.unsettled += r["unacked"].as_u64().unwrap_or(0);
        }
        for (name, addr) in ledgers {
            if launcher.state(name).ok() != Some(ProcState::Running) {
                continue;
            }
            if let Ok(t) = replica_totals(name, addr).await {
                seen.replicas.push(t);
            }
        }
        let live = ledgers
            .keys()
            .filter(|n| launcher.state(n).ok() == Some(ProcState::Running))
            .count();
        let quiet = !health.is_null()
            && seen.unsettled == 0
            && seen.replicas.len() == live
            && seen
                .replicas
                .windows(2)
                .all(|w| (w[0].receipts, &w[0].state_hash) == (w[1].receipts, &w[1].state_hash))
            && seen
                .replicas
                .first()
                .is_some_and(|r| r.receipts >= seen.acked);
        same = if quiet && last.as_ref() == Some(&seen) {
            same + 1
        } else {
            0
        };
        last = Some(seen);
        if same >= 2 || Instant::now() >= deadline {
            return last.unwrap_or_default();
        }
        tokio::time::sleep(Duration::from_millis(750)).await;
    }
}

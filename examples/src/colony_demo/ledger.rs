//! The settlement part of the colony demo: three ledger replicas as processes, the node and RC
//! keys with their split policies registered by the operator command
//! (`opengrid ledger register-node|register-rc`), and, once the sessions were served, the ledger's
//! balances per account — which sum to the fees of the settled receipts.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use opengrid_settlement::{Account, Keypair, LedgerClient};

use opengrid_cluster::client::Session;

use super::{free_port, Children};

/// Demo nodes: name, price per input (micro-units), `register-node` policy arguments.
const NODES: &[(&str, u64, &[&str])] = &[
    (
        "berlin",
        2_500,
        &["--policy", "interchange", "--operator", "berlin-op"],
    ),
    (
        "munich",
        2_000,
        &[
            "--policy",
            "nodeco",
            "--operator",
            "munich-op",
            "--owner",
            "alice=3",
            "--owner",
            "bob=1",
        ],
    ),
    (
        "paris",
        3_000,
        &[
            "--policy",
            "custom:8000,1500,500,0",
            "--operator",
            "paris-op",
        ],
    ),
];
/// Accounts shown after settlement.
const ACCOUNTS: &[&str] = &[
    "berlin-op",
    "munich-op",
    "alice",
    "bob",
    "paris-op",
    "rc-op",
    "protocol",
];

/// Three ledger replicas for the demo colony.
pub struct DemoLedger {
    root: PathBuf,
    addrs: Vec<String>,
}

impl DemoLedger {
    /// Picks the replicas' addresses (nothing runs yet).
    pub fn new(root: &Path) -> anyhow::Result<Self> {
        let addrs = (0..3)
            .map(|_| Ok(format!("127.0.0.1:{}", free_port()?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(DemoLedger {
            root: root.to_path_buf(),
            addrs,
        })
    }

    /// Adds `[settlement]` (these replicas, a 1 s interval) to the RC config file.
    pub fn configure_rc(&self, path: &Path) -> anyhow::Result<()> {
        let mut text = std::fs::read_to_string(path)?;
        let list: Vec<String> = self.addrs.iter().map(|a| format!("{a:?}")).collect();
        text.push_str(&format!(
            "\n[settlement]\nledger = [{}]\ninterval = \"1s\"\n",
            list.join(", ")
        ));
        std::fs::write(path, text)?;
        Ok(())
    }

    /// Sets the node's price and a 500 ms receipt window in its config file.
    pub fn configure_node(&self, path: &Path, name: &str) -> anyhow::Result<()> {
        let Some((_, price, _)) = NODES.iter().find(|(n, _, _)| *n == name) else {
            return Ok(());
        };
        let text = std::fs::read_to_string(path)?;
        std::fs::write(
            path,
            format!("price_micros_per_input = {price}\n{text}\n[receipts]\nwindow = \"500ms\"\n"),
        )?;
        Ok(())
    }

    /// Starts the replicas and registers the RC's and the nodes' keys and split policies with
    /// the operator command (run after the nodes created their identity keys).
    pub async fn start(&self, exe: &Path, children: &mut Children) -> anyhow::Result<()> {
        println!("\n== Settlement ledger: 3 Raft replicas, keys and split policies registered");
        // Each replica's identity key is made in its data dir first, so that every peer entry
        // names its DID (`ID=DID@HOST:PORT`).
        let peers: Vec<String> = self
            .addrs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let dir = self.root.join(format!("ledger-{}", i + 1));
                opengrid_settlement::peer_entry(i as u64 + 1, a, &dir)
            })
            .collect::<Result<_, _>>()?;
        // The ledger operator's key (created in the demo's data dir) authorizes registrations and
        // membership changes; the replicas know its DID.
        let operator_key = self.root.join("ledger-operator.key");
        let operator = Keypair::load_or_create(&operator_key)?.did().to_string();
        println!(
            "  ledger operator {operator} (key {})",
            operator_key.display()
        );
        let before = children.pids().len();
        for (i, addr) in self.addrs.iter().enumerate() {
            let id = (i + 1).to_string();
            let dir = self.root.join(format!("ledger-{id}"));
            children.spawn(
                &format!("ledger-{id}"),
                exe,
                &[
                    "ledger",
                    "replica",
                    "--id",
                    &id,
                    "--addr",
                    addr,
                    "--data-dir",
                    &dir.display().to_string(),
                    "--peers",
                    &peers.join(","),
                    "--operator",
                    &operator,
                ],
                &self.root.join(format!("ledger-{id}.log")),
            )?;
        }
        println!(
            "  ledger replicas {:?} at {}",
            &children.pids()[before..],
            self.addrs.join(",")
        );
        let addr = self.addrs.join(",");
        let rc_key = self
            .root
            .join("rc")
            .join(opengrid_cluster::common::identity::KEY_FILE);
        let mut cmds: Vec<(String, Vec<String>)> = vec![(
            "rc".into(),
            [
                "ledger",
                "register-rc",
                "--key-file",
                &rc_key.display().to_string(),
                "--operator",
                "rc-op",
                "--addr",
                &addr,
                "--operator-key-file",
                &operator_key.display().to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        )];
        for (name, price, policy) in NODES {
            let key = self
                .root
                .join(name)
                .join(opengrid_cluster::common::identity::KEY_FILE);
            let mut args: Vec<String> = [
                "ledger",
                "register-node",
                "--key-file",
                &key.display().to_string(),
                "--addr",
                &addr,
                "--operator-key-file",
                &operator_key.display().to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(policy.iter().map(|s| s.to_string()));
            cmds.push((format!("{name} ({price} µ/input, {})", policy[1]), args));
        }
        for (what, args) in cmds {
            let out = tokio::process::Command::new(exe)
                .args(&args)
                .stdin(std::process::Stdio::null())
                .output()
                .await
                .with_context(|| format!("run opengrid {}", args.join(" ")))?;
            if !out.status.success() {
                bail!(
                    "opengrid {} failed: {}",
                    args[..2].join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            println!(
                "  registered {what}: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(())
    }

    /// Waits until the ledger settled the receipts of `sessions` (fee = inputs × the serving
    /// node's price), then prints each account's balance and checks that they sum to the fees.
    pub async fn report(&self, sessions: &[&Session]) -> anyhow::Result<()> {
        println!("\n== Settlement: receipts signed by the nodes, co-signed and batched by the RC");
        let mut expected: u64 = 0;
        for s in sessions {
            let info = s.info().await?;
            let inputs = info["usage"]["inputs"].as_u64().unwrap_or(0);
            let price = NODES
                .iter()
                .find(|(n, _, _)| *n == s.placement.node_name)
                .map(|(_, p, _)| *p)
                .unwrap_or(0);
            expected += inputs * price;
        }
        let client = LedgerClient::with_timeout(
            self.addrs.clone(),
            Duration::from_secs(10),
            &Keypair::generate(),
        )?;
        let t = Instant::now();
        let deadline = t + Duration::from_secs(60);
        let summary = loop {
            let mut last = None;
            for a in &self.addrs {
                if let Ok(s) = client.replica_status(a).await {
                    if s.ledger.total_fees_micros >= expected {
                        last = Some(s.ledger);
                        break;
                    }
                }
            }
            if let Some(s) = last {
                break s;
            }
            if Instant::now() > deadline {
                bail!("the ledger did not settle {expected} µ of fees within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        println!(
            "  settled {} receipts in {} batches after {:?}; fees {} µ (expected {expected} µ from inputs × price)",
            summary.receipts_settled,
            summary.batches,
            t.elapsed(),
            summary.total_fees_micros
        );
        let mut sum: u64 = 0;
        println!("  {:<10} {:>12}", "account", "balance µ");
        for name in ACCOUNTS {
            let b = client.balance(&Account::new(*name)?).await?;
            sum += b;
            println!("  {name:<10} {b:>12}");
        }
        println!("  {:<10} {:>12}", "sum", sum);
        if sum != summary.total_fees_micros || summary.total_fees_micros != expected {
            bail!(
                "balances sum to {sum} µ, settled fees are {} µ, expected {expected} µ",
                summary.total_fees_micros
            );
        }
        println!("  balances sum to the fees exactly: {sum} µ");
        Ok(())
    }
}

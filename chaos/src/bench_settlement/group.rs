//! The ledger group under test: three `opengrid-chaos ledger replica` child processes (the same
//! code as `opengrid ledger replica`), their agreed leader, and the final cross-replica check.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use opengrid_consensus::{Client, NodeStatus};
use opengrid_settlement::replica::ReplicaStatus;
use opengrid_settlement::LedgerClient;

use super::failed;
use super::receipts::Tally;
use super::report::VerifyCalibration;
use crate::bench::BenchError;
use crate::launcher::{Launcher, ProcSpec, ProcState};
use crate::report::Progress;

/// Three ledger replica processes.
pub(super) struct LedgerGroup {
    launcher: Launcher,
    addrs: BTreeMap<u64, String>,
}

impl LedgerGroup {
    /// Starts `n` replicas of `exe` on distinct ports and waits for their leader.
    pub async fn start(exe: &Path, n: u64, progress: &Progress) -> Result<Self, BenchError> {
        let mut launcher = Launcher::new()?;
        // Hold distinct ports together, then release them for the children.
        let listeners = (0..n)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<Vec<_>, _>>()?;
        let addrs: BTreeMap<u64, String> = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| Ok((i as u64 + 1, l.local_addr()?.to_string())))
            .collect::<Result<_, std::io::Error>>()?;
        drop(listeners);
        // Each replica's identity key is made in its data dir first, so that every peer entry
        // names its DID.
        let mut dirs = BTreeMap::new();
        let mut peers = Vec::new();
        for (id, addr) in &addrs {
            let dir = launcher.data_dir(&format!("ledger-{id}"))?;
            peers.push(
                opengrid_settlement::peer_entry(*id, addr, &dir)
                    .map_err(|e| BenchError::Failed(format!("replica {id} key: {e}")))?,
            );
            dirs.insert(*id, dir);
        }
        let peers = peers.join(",");
        for (id, addr) in &addrs {
            let name = format!("ledger-{id}");
            let dir = &dirs[id];
            launcher.spawn(
                ProcSpec::new(&name, exe)
                    .args([
                        "ledger".to_string(),
                        "replica".into(),
                        "--id".into(),
                        id.to_string(),
                        "--addr".into(),
                        addr.clone(),
                        "--data-dir".into(),
                        dir.display().to_string(),
                        "--peers".into(),
                        peers.clone(),
                        "--operator".into(),
                        super::receipts::bench_operator().did().to_string(),
                    ])
                    .env(
                        "RUST_LOG",
                        std::env::var("OPENGRID_REPLICA_LOG").unwrap_or_else(|_| "warn".into()),
                    ),
            )?;
        }
        let mut group = LedgerGroup { launcher, addrs };
        group.wait_leader(Duration::from_secs(30)).await?;
        progress.line(format!(
            "ledger: 3 replica processes up at {:?}",
            group.addrs.values().collect::<Vec<_>>()
        ));
        Ok(group)
    }

    /// Raft status of every replica that answers.
    async fn statuses(&self) -> BTreeMap<u64, NodeStatus> {
        let Ok(c) = Client::new(
            vec![],
            opengrid_settlement::Keypair::generate().signing_key(),
        ) else {
            return BTreeMap::new();
        };
        let c = c.with_timeout(Duration::from_secs(30));
        let mut out = BTreeMap::new();
        for (id, a) in &self.addrs {
            if let Ok(s) = c.status(a).await {
                out.insert(*id, s);
            }
        }
        out
    }

    /// Waits until every replica answers and names the same leader; returns its address.
    pub async fn wait_leader(&mut self, limit: Duration) -> Result<String, BenchError> {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.statuses().await;
            if s.len() == self.addrs.len() {
                let leaders: Vec<Option<u64>> = s.values().map(|x| x.current_leader).collect();
                if let Some(Some(l)) = leaders.first() {
                    if leaders.iter().all(|x| *x == Some(*l)) {
                        if let Some(a) = self.addrs.get(l) {
                            return Ok(a.clone());
                        }
                    }
                }
            }
            self.check_alive()?;
            if Instant::now() >= deadline {
                return Err(BenchError::NotReady {
                    name: "ledger group".into(),
                    waited: limit,
                    why: format!("no agreed leader; statuses: {s:?}"),
                    logs: self.launcher.root().display().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Fails when a replica is no longer running (its logs are kept).
    fn check_alive(&mut self) -> Result<(), BenchError> {
        for name in self.launcher.names() {
            let st = self.launcher.state(&name)?;
            if st != ProcState::Running {
                let (_, err) = self.launcher.log_paths(&name);
                let logs = self.launcher.keep_files();
                return Err(BenchError::NotReady {
                    name,
                    waited: Duration::ZERO,
                    why: format!("it is {st:?}; stderr in {}", err.display()),
                    logs: logs.display().to_string(),
                });
            }
        }
        Ok(())
    }

    /// Addresses with the leader first.
    pub fn addrs_leader_first(&self, leader: &str) -> Vec<String> {
        std::iter::once(leader.to_string())
            .chain(self.addrs.values().filter(|a| *a != leader).cloned())
            .collect()
    }

    /// Stops every replica still running.
    pub fn shutdown(mut self) {
        for name in self.launcher.names() {
            if self.launcher.state(&name).ok() == Some(ProcState::Running) {
                let _ = self.launcher.stop(&name, Duration::from_secs(3));
            }
        }
        self.launcher.shutdown();
    }
}

/// The final cross-replica check.
pub(super) struct Check {
    /// Receipts the ledger holds as settled.
    pub settled_on_ledger: u64,
    /// Every replica on the same applied index, state hash and ledger summary.
    pub agree: bool,
    /// The ledger's totals equal what the bench submitted and was answered, exactly.
    pub totals_exact: bool,
    /// The verify-speed calibration, carried to the report.
    pub verify: VerifyCalibration,
}

/// Waits (120 s at most) until every replica reaches the same applied index and state, then
/// compares the ledger's totals with `tally`.
pub(super) async fn final_check(
    group: &LedgerGroup,
    addrs: &[String],
    tally: &Tally,
    verify: VerifyCalibration,
) -> Result<Check, BenchError> {
    let client = LedgerClient::with_timeout(
        addrs.to_vec(),
        Duration::from_secs(60),
        &opengrid_settlement::Keypair::generate(),
    )
    .map_err(|e| BenchError::Failed(e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut st: BTreeMap<u64, ReplicaStatus> = BTreeMap::new();
        for (id, a) in &group.addrs {
            if let Ok(s) = client.replica_status(a).await {
                st.insert(*id, s);
            }
        }
        let first = st.values().next().cloned();
        if let Some(first) = first {
            let same = st.len() == group.addrs.len()
                && st.values().all(|s| {
                    s.raft.last_applied == first.raft.last_applied
                        && s.raft.state_hash == first.raft.state_hash
                        && s.ledger == first.ledger
                });
            if same || Instant::now() >= deadline {
                let l = &first.ledger;
                // Exact: the ledger holds exactly the answered parts' receipts and fees, and the
                // credits split from them sum to the fees.
                let totals_exact = l.receipts_settled == tally.settled
                    && tally.settled == tally.submitted
                    && l.total_fees_micros == tally.fees_settled
                    && tally.fees_settled == tally.fees_submitted
                    && u128::from(l.total_fees_micros) == l.total_credits_micros;
                return Ok(Check {
                    settled_on_ledger: l.receipts_settled,
                    agree: same,
                    totals_exact,
                    verify,
                });
            }
        } else if Instant::now() >= deadline {
            return Err(failed("no replica answered the final status"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

//! Benches that need real processes on 127.0.0.1, each printing JSON
//! (`{"name":…,"p50_us":…,"p99_us":…,"count":…,"lost":…,"duplicated":…}` plus its baseline).
//!
//! These are the layer benches: they measure the session and migration layers on their own, below
//! the node. The processes are `opengrid-chaos replica-server` children (see
//! [`crate::replica_server`]): real processes with their own RocksDB stores (fsync on) and
//! migration servers, talking the node-to-node migration protocol, with no client API, RC,
//! leases or directory in the path. Their figures are the floor under the same measurements on
//! `opengrid` node processes ([`crate::bench_colony`]: `bench handover` by default, `bench
//! failover`), which add the node's HTTP API, the RC's directory and the client's retries.
//!
//! - `checkpoint` (P11): zero-loss input acknowledgement with k = 2 replicas — every ack waits
//!   for two replica processes' fsync'd writes and the local one — against one local fsync'd
//!   RocksDB write of the same size, in the same run.
//! - `handover` (P2): planned handover blackout (freeze → target active) between two replica
//!   server processes for 4 KiB, 64 KiB and 1 MiB states under client input, with lost and
//!   duplicated inputs counted, against the loopback round trip measured in the same run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opengrid_actors::{HostConfig, Reply, Services, SessionHandler, SessionHost};
use opengrid_migration::wire::{Request, Response};
use opengrid_migration::{Peer, ReplicatedStore, ReplicationConfig};
use opengrid_session::{
    Checkpoint, CheckpointPolicy, CheckpointStore, Epoch, RocksCheckpointStore, RocksOptions, Seq,
    SessionId, StoreError,
};
use serde::Serialize;

use crate::launcher::{LaunchError, Launcher, ProcSpec, ProcState};
use crate::replica_server::{fold, Control, ControlClient, ControlReply, Fold, FOLD_HANDLER};
use crate::report::Progress;

/// Why a bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Launching the child processes failed.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// A child did not come up in time.
    #[error("{name} did not become ready within {waited:?}: {why}; logs in {logs}")]
    NotReady {
        /// The child.
        name: String,
        /// How long we waited.
        waited: Duration,
        /// What we saw.
        why: String,
        /// Its log directory.
        logs: String,
    },
    /// Store or session failure in the bench process.
    #[error("{0}")]
    Failed(String),
    /// Control-port I/O.
    #[error("control: {0}")]
    Io(#[from] std::io::Error),
    /// The bench needs the cluster node binary.
    #[error(
        "bench {0} needs the cluster node binary `opengrid` driven through its HTTP API, which \
         this harness does not drive yet"
    )]
    NeedsCluster(String),
}

fn failed(e: impl std::fmt::Display) -> BenchError {
    BenchError::Failed(e.to_string())
}

/// Latency summary in microseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Worst.
    pub max_us: u64,
    /// Samples.
    pub count: usize,
}

/// Summarises samples (µs) with [`Percentiles`](crate::percentiles::Percentiles).
pub fn summarize(v: Vec<u64>) -> Summary {
    let p = crate::percentiles::Percentiles::of(v);
    Summary {
        p50_us: p.p50(),
        p99_us: p.p99(),
        max_us: p.max(),
        count: p.count() as usize,
    }
}

/// Two (or more) `replica-server` children of this executable.
pub struct ReplicaFleet {
    /// The launcher owning them (kills them on drop).
    pub launcher: Launcher,
    /// (migration, control) addresses, in start order.
    pub addrs: Vec<(SocketAddr, SocketAddr)>,
    /// The bench's own migration links (admitted by every replica server, admitting them).
    pub link: opengrid_link::Link,
}

impl ReplicaFleet {
    /// Starts `n` replica servers from `exe` (normally `std::env::current_exe()`).
    pub async fn start(exe: &Path, n: usize, plaintext: bool) -> Result<ReplicaFleet, BenchError> {
        let mut launcher = Launcher::new()?;
        let mut addrs = Vec::new();
        let mut dids = Vec::new();
        for i in 0..n {
            let name = format!("replica-{i}");
            let dir = launcher.data_dir(&name)?;
            let ready = launcher.root().join(&name).join("ready");
            launcher.spawn(
                ProcSpec::new(&name, exe).args(
                    [
                        "replica-server".to_string(),
                        "--dir".into(),
                        dir.display().to_string(),
                        "--addr".into(),
                        "127.0.0.1:0".into(),
                        "--control".into(),
                        "127.0.0.1:0".into(),
                        "--ready-file".into(),
                        ready.display().to_string(),
                    ]
                    .into_iter()
                    .chain(plaintext.then(|| "--plaintext-links".to_string())),
                ),
            )?;
            addrs.push(wait_ready(&mut launcher, &name, &ready).await?);
            dids.push(ready_did(&ready)?);
        }
        // The fleet and the bench admit each other on their migration links, nobody else.
        let me = opengrid_link::LinkIdentity::from_signing_key(
            &ed25519_dalek::SigningKey::from_bytes(&rand::random()),
        )
        .map_err(failed)?;
        let allowed = Arc::new(opengrid_link::AllowList::new(dids.iter().cloned()));
        let link = if plaintext {
            opengrid_link::Link::plaintext_for_measurement(me.did().clone(), allowed)
        } else {
            opengrid_link::Link::new(&me, allowed).map_err(failed)?
        };
        let allow: Vec<String> = dids
            .iter()
            .chain([me.did()])
            .map(|d| d.to_string())
            .collect();
        for (_, control) in &addrs {
            let r = ControlClient::connect(*control)
                .await?
                .call(&Control::Allow {
                    dids: allow.clone(),
                })
                .await?;
            if !r.ok {
                return Err(failed(format!("allow on {control}: {:?}", r.error)));
            }
        }
        Ok(ReplicaFleet {
            launcher,
            addrs,
            link,
        })
    }
}

/// The `did=` line of a ready file.
fn ready_did(ready: &Path) -> Result<opengrid_session::Did, BenchError> {
    let text = std::fs::read_to_string(ready)?;
    let did = text
        .lines()
        .find_map(|l| l.strip_prefix("did="))
        .ok_or_else(|| failed(format!("{}: no did= line", ready.display())))?;
    opengrid_session::Did::parse(did).map_err(failed)
}

async fn wait_ready(
    launcher: &mut Launcher,
    name: &str,
    ready: &Path,
) -> Result<(SocketAddr, SocketAddr), BenchError> {
    let limit = Duration::from_secs(30);
    let deadline = Instant::now() + limit;
    let not_ready = |why: String, l: &Launcher| BenchError::NotReady {
        name: name.into(),
        waited: limit,
        why,
        logs: l.root().join(name).display().to_string(),
    };
    loop {
        if let Ok(text) = std::fs::read_to_string(ready) {
            let get = |k: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .and_then(|v| v.parse::<SocketAddr>().ok())
            };
            if let (Some(m), Some(c)) = (get("migration="), get("control=")) {
                return Ok((m, c));
            }
        }
        let st = launcher.state(name)?;
        if st != ProcState::Running {
            return Err(not_ready(format!("it is {st:?}"), launcher));
        }
        if Instant::now() >= deadline {
            return Err(not_ready("no ready file".into(), launcher));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Result of `bench checkpoint`.
#[derive(Clone, Debug, Serialize)]
pub struct CheckpointResult {
    /// Bench name.
    pub name: &'static str,
    /// Migration links: `tls` or `plaintext` (security off, measurement only).
    pub links: &'static str,
    /// Ack latency median, µs.
    pub p50_us: u64,
    /// Ack latency p99, µs.
    pub p99_us: u64,
    /// Inputs measured.
    pub count: usize,
    /// Acknowledged inputs missing from a replica's newest checkpoint.
    pub lost: u64,
    /// Inputs applied more than once.
    pub duplicated: u64,
    /// Baseline: one local fsync'd RocksDB checkpoint write, median µs.
    pub baseline_local_fsync_p50_us: u64,
    /// Baseline p99, µs.
    pub baseline_local_fsync_p99_us: u64,
    /// Second baseline: `k + 1` fsync'd RocksDB writes at once (one per store, as the holder and
    /// its replicas write on one machine here), until the last is done, median µs: what the disk
    /// itself allows for one zero-loss ack when every copy shares it.
    pub baseline_concurrent_fsyncs_p50_us: u64,
    /// Second baseline p99, µs.
    pub baseline_concurrent_fsyncs_p99_us: u64,
    /// Replicas per checkpoint.
    pub k: usize,
    /// Bytes of session state.
    pub state_bytes: usize,
    /// Worst ack, µs.
    pub max_us: u64,
    /// Every ack latency, µs (to pool interleaved runs; not printed).
    #[serde(skip)]
    pub samples: Vec<u64>,
}

fn links_name(plaintext: bool) -> &'static str {
    if plaintext {
        "plaintext"
    } else {
        "tls"
    }
}

/// `bench checkpoint`: zero-loss ack latency with k = 2 replica processes vs one local fsync.
pub async fn checkpoint(
    exe: &Path,
    count: usize,
    state_bytes: usize,
    plaintext: bool,
    progress: &Progress,
) -> Result<CheckpointResult, BenchError> {
    let count = count.clamp(1, 1_000_000);
    let fleet = ReplicaFleet::start(exe, 2, plaintext).await?;
    progress.line(format!(
        "replica servers up: {:?}",
        fleet.addrs.iter().map(|a| a.0).collect::<Vec<_>>()
    ));
    let tmp = tempfile::tempdir().map_err(failed)?;
    let local: Arc<dyn CheckpointStore> = Arc::new(
        RocksCheckpointStore::open(
            tmp.path().join("local"),
            RocksOptions {
                sync: true,
                retain: 2,
            },
        )
        .map_err(failed)?,
    );
    let store = Arc::new(ReplicatedStore::new(
        local.clone(),
        ReplicationConfig {
            k: 2,
            timeout: Duration::from_secs(5),
            ..ReplicationConfig::default()
        },
        fleet.link.clone(),
    ));
    let host = SessionHost::new(
        store.clone() as Arc<dyn CheckpointStore>,
        HostConfig::default(),
        Services::default(),
    )
    .await
    .map_err(failed)?;
    let handler = Arc::new(Fold::default());
    host.register(handler.clone());
    let id = SessionId::new("bench-checkpoint").map_err(failed)?;
    let peers: Vec<SocketAddr> = fleet.addrs.iter().map(|a| a.0).collect();
    store.set_replicas(&id, peers.clone());
    handler.set_pad(&id, state_bytes);
    let s = host
        .start_dyn(
            FOLD_HANDLER,
            id.clone(),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await
        .map_err(failed)?;
    let warmup = 50u64.min(count as u64);
    let total = warmup + count as u64;
    let mut reference = 0u64;
    let mut samples = Vec::with_capacity(count);
    let deadline = Instant::now() + Duration::from_secs(600);
    for seq in 1..=total {
        if Instant::now() > deadline {
            return Err(failed("bench checkpoint exceeded 600 s"));
        }
        let v = seq.wrapping_mul(0x9E37_79B9);
        reference = fold(reference, seq, v);
        let t = Instant::now();
        let r = s
            .send_json(Seq(seq), serde_json::json!(v))
            .await
            .map_err(failed)?;
        let el = t.elapsed();
        match r {
            Reply::Processed {
                output: Ok(o),
                durable: true,
                ..
            } if o.as_u64() == Some(reference) => {}
            other => return Err(failed(format!("seq {seq}: unexpected reply {other:?}"))),
        }
        if seq > warmup {
            samples.push(el.as_micros() as u64);
        }
        if seq % 1000 == 0 {
            progress.line(format!("checkpoint: {seq}/{total} inputs acknowledged"));
        }
    }
    // Every replica must hold the newest state: n == total, hash == reference.
    let mut lost = 0u64;
    let mut duplicated = 0u64;
    for p in &peers {
        let peer = Peer::new(*p, fleet.link.clone(), Duration::from_secs(5));
        let r = peer
            .call(&Request::Latest {
                session: id.clone(),
                grant: None,
            })
            .await
            .map_err(failed)?;
        let Response::Checkpoint {
            checkpoint: Some(bytes),
        } = r
        else {
            return Err(failed(format!("replica {p} has no checkpoint: {r:?}")));
        };
        let cp = Checkpoint::decode(&bytes).map_err(failed)?;
        let st = handler
            .decode_state(&cp.state)
            .map_err(|e| failed(format!("{e:?}")))?;
        lost = lost.max(total.saturating_sub(st.n));
        duplicated = duplicated.max(st.n.saturating_sub(total));
        if st.n == total && st.hash != reference {
            return Err(failed(format!(
                "replica {p}: state hash differs from the reference"
            )));
        }
    }
    host.shutdown().await;
    // Baselines, same run, same checkpoint size: one local fsync'd RocksDB write, then the
    // holder's and both replicas' writes at once on this one disk.
    let open = |name: &str| {
        RocksCheckpointStore::open(
            tmp.path().join(name),
            RocksOptions {
                sync: true,
                retain: 2,
            },
        )
        .map_err(failed)
    };
    let bid = SessionId::new("bench-baseline").map_err(failed)?;
    let state = vec![0x5au8; state_bytes + 32];
    let base = timed_puts(&[open("baseline")?], &bid, &state, total, warmup)?;
    let three = [
        open("baseline-0")?,
        open("baseline-1")?,
        open("baseline-2")?,
    ];
    let together = timed_puts(&three, &bid, &state, total, warmup)?;
    let a = summarize(samples.clone());
    let b = summarize(base);
    let c = summarize(together);
    drop(fleet);
    Ok(CheckpointResult {
        name: "checkpoint_zero_loss_k2",
        links: links_name(plaintext),
        p50_us: a.p50_us,
        p99_us: a.p99_us,
        count: a.count,
        lost,
        duplicated,
        baseline_local_fsync_p50_us: b.p50_us,
        baseline_local_fsync_p99_us: b.p99_us,
        baseline_concurrent_fsyncs_p50_us: c.p50_us,
        baseline_concurrent_fsyncs_p99_us: c.p99_us,
        k: 2,
        state_bytes,
        max_us: a.max_us,
        samples,
    })
}

/// Result of `bench handover` for one state size.
#[derive(Clone, Debug, Serialize)]
pub struct HandoverResult {
    /// Bench name (`handover_blackout_<size>`).
    pub name: String,
    /// Migration links: `tls` or `plaintext` (security off, measurement only).
    pub links: &'static str,
    /// Blackout median, µs.
    pub p50_us: u64,
    /// Blackout p99, µs.
    pub p99_us: u64,
    /// Worst blackout, µs.
    pub max_us: u64,
    /// Handovers completed.
    pub count: usize,
    /// Acknowledged inputs missing from the final state.
    pub lost: u64,
    /// Inputs applied more than once.
    pub duplicated: u64,
    /// Inputs sent (all acknowledged).
    pub inputs: u64,
    /// State bytes.
    pub state_bytes: usize,
    /// Loopback round trip to a replica server in the same run (the floor), median µs.
    pub rtt_p50_us: u64,
    /// Loopback RTT p99, µs.
    pub rtt_p99_us: u64,
    /// Every blackout, µs (to pool interleaved runs; not printed).
    #[serde(skip)]
    pub samples: Vec<u64>,
}

/// Sends one input, following `moved` between the two servers; bounded retries.
async fn send_following(
    clients: &mut [ControlClient; 2],
    at: &mut usize,
    session: &str,
    seq: u64,
    value: u64,
) -> Result<ControlReply, BenchError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for _ in 0..10_000 {
        let r = clients[*at]
            .call(&Control::Input {
                session: session.into(),
                seq,
                value,
            })
            .await?;
        if r.ok {
            return Ok(r);
        }
        if r.moved {
            *at = 1 - *at;
        } else if !r.retry {
            return Err(failed(format!("seq {seq}: {:?}", r.error)));
        }
        if Instant::now() > deadline {
            break;
        }
        if r.retry {
            tokio::task::yield_now().await;
        }
    }
    Err(failed(format!("seq {seq} was never acknowledged")))
}

/// `bench handover`: `count` handovers per state size between two replica-server processes.
pub async fn handover(
    exe: &Path,
    count: usize,
    sizes: &[usize],
    plaintext: bool,
    progress: &Progress,
) -> Result<Vec<HandoverResult>, BenchError> {
    let count = count.clamp(1, 100_000);
    let fleet = ReplicaFleet::start(exe, 2, plaintext).await?;
    let mig = [fleet.addrs[0].0, fleet.addrs[1].0];
    let ctl = [fleet.addrs[0].1, fleet.addrs[1].1];
    let connect2 = || async {
        Ok::<_, std::io::Error>([
            ControlClient::connect(ctl[0]).await?,
            ControlClient::connect(ctl[1]).await?,
        ])
    };
    let mut input_clients = connect2().await?;
    let mut ctrl = connect2().await?;
    // Loopback RTT floor: ping on the control port.
    let mut rtt = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let t = Instant::now();
        ctrl[0].call(&Control::Ping).await?;
        rtt.push(t.elapsed().as_micros() as u64);
    }
    let rtt = summarize(rtt);
    let mut out = Vec::new();
    for &size in sizes {
        let session = format!("handover-{size}");
        let r = ctrl[0]
            .call(&Control::Start {
                session: session.clone(),
                state_bytes: size,
                zero_loss: true,
                max_blackout_ms: 5_000,
            })
            .await?;
        if !r.ok {
            return Err(failed(format!("start {session}: {:?}", r.error)));
        }
        let mut holder = 0usize;
        let mut at = 0usize;
        let mut seq = 0u64;
        let mut reference = 0u64;
        let mut blackouts = Vec::with_capacity(count);
        let deadline = Instant::now() + Duration::from_secs(900);
        for i in 0..count {
            if Instant::now() > deadline {
                return Err(failed(format!(
                    "handover bench for {size} B exceeded 900 s"
                )));
            }
            for _ in 0..2 {
                seq += 1;
                reference = fold(reference, seq, seq * 7);
                let r = send_following(&mut input_clients, &mut at, &session, seq, seq * 7).await?;
                if r.output != Some(reference) {
                    return Err(failed(format!(
                        "seq {seq}: output {:?} != reference {reference}",
                        r.output
                    )));
                }
            }
            // One input races each handover.
            seq += 1;
            reference = fold(reference, seq, seq * 7);
            let req = Control::Handover {
                session: session.clone(),
                target: mig[1 - holder],
            };
            let (h, r) = {
                let hand = ctrl[holder].call(&req);
                let inp = send_following(&mut input_clients, &mut at, &session, seq, seq * 7);
                tokio::join!(hand, inp)
            };
            let h = h?;
            let r = r?;
            if r.output != Some(reference) {
                return Err(failed(format!(
                    "racing seq {seq}: output {:?} != reference {reference}",
                    r.output
                )));
            }
            if !h.ok {
                return Err(failed(format!("handover {i} of {size} B: {:?}", h.error)));
            }
            blackouts.push(h.blackout_us.unwrap_or(0));
            let rel = ctrl[holder]
                .call(&Control::Release {
                    session: session.clone(),
                })
                .await?;
            if !rel.ok {
                return Err(failed(format!(
                    "release after handover {i}: {:?}",
                    rel.error
                )));
            }
            holder = 1 - holder;
            if (i + 1) % 50 == 0 {
                progress.line(format!("handover {size} B: {}/{count}", i + 1));
            }
        }
        let st = ctrl[holder]
            .call(&Control::State {
                session: session.clone(),
            })
            .await?;
        let Some(view) = st.state else {
            return Err(failed(format!("state of {session}: {:?}", st.error)));
        };
        let lost = seq.saturating_sub(view.n);
        let duplicated = view.n.saturating_sub(seq);
        if lost == 0 && duplicated == 0 && view.hash != reference {
            return Err(failed(format!(
                "{session}: final state differs from the reference"
            )));
        }
        let b = summarize(blackouts.clone());
        out.push(HandoverResult {
            samples: blackouts,
            links: links_name(plaintext),
            name: format!("handover_blackout_{}", size_name(size)),
            p50_us: b.p50_us,
            p99_us: b.p99_us,
            max_us: b.max_us,
            count: b.count,
            lost,
            duplicated,
            inputs: seq,
            state_bytes: view.bytes,
            rtt_p50_us: rtt.p50_us,
            rtt_p99_us: rtt.p99_us,
        });
    }
    drop(fleet);
    Ok(out)
}

/// Writes checkpoints `1..=total` of `state` to every store of `stores` at once (one thread per
/// store when there are several) and returns, per checkpoint after the first `warmup`, the µs
/// until the last store's write returned.
fn timed_puts(
    stores: &[RocksCheckpointStore],
    sid: &SessionId,
    state: &[u8],
    total: u64,
    warmup: u64,
) -> Result<Vec<u64>, BenchError> {
    let mut out = Vec::with_capacity(total.saturating_sub(warmup) as usize);
    for seq in 1..=total {
        let cp = Checkpoint::new(
            sid.clone(),
            Epoch(1),
            Seq(seq),
            FOLD_HANDLER,
            1,
            state.to_vec(),
        );
        let t = Instant::now();
        match stores {
            [one] => one.put(&cp).map_err(failed)?,
            many => std::thread::scope(|sc| {
                let writes: Vec<_> = many.iter().map(|st| sc.spawn(|| st.put(&cp))).collect();
                writes
                    .into_iter()
                    .map(|w| {
                        w.join()
                            .unwrap_or_else(|_| Err(StoreError::Backend("panicked".into())))
                    })
                    .collect::<Result<Vec<()>, _>>()
            })
            .map(|_| ())
            .map_err(failed)?,
        }
        if seq > warmup {
            out.push(t.elapsed().as_micros() as u64);
        }
    }
    Ok(out)
}

/// Rounds of an off-vs-on comparison (`--links both`, `--security both`): off and on alternate
/// this many times within one run, each round a share of `--count`, so that load drifting
/// during the run hits both alike; samples are pooled per setting.
pub const OFF_ON_ROUNDS: usize = 4;

/// The runs of an off-vs-on bench (`true` = security off) and how many rounds `--count` is
/// split into: only off, only on, or both alternating ([`OFF_ON_ROUNDS`]).
pub fn off_on_runs(off: bool, on: bool) -> (Vec<bool>, usize) {
    match (off, on) {
        (true, true) => (
            std::iter::repeat_n([true, false], OFF_ON_ROUNDS)
                .flatten()
                .collect(),
            OFF_ON_ROUNDS,
        ),
        (true, false) => (vec![true], 1),
        _ => (vec![false], 1),
    }
}

/// Folds the later runs of one setting into the first (`merge`); `None` for no runs.
pub fn fold_runs<T>(runs: Vec<T>, mut merge: impl FnMut(&mut T, T)) -> Option<T> {
    let mut it = runs.into_iter();
    let mut acc = it.next()?;
    for r in it {
        merge(&mut acc, r);
    }
    Some(acc)
}

/// Pools runs of one bench made in interleaved rounds (`--links both`): samples, counts and
/// violations add up, percentiles are over every sample, the floor is the worst run's.
pub fn pool_handover(runs: Vec<HandoverResult>) -> Option<HandoverResult> {
    let mut acc = fold_runs(runs, |acc, r| {
        acc.samples.extend(r.samples);
        acc.lost += r.lost;
        acc.duplicated += r.duplicated;
        acc.inputs += r.inputs;
        acc.rtt_p50_us = acc.rtt_p50_us.max(r.rtt_p50_us);
        acc.rtt_p99_us = acc.rtt_p99_us.max(r.rtt_p99_us);
    })?;
    let b = summarize(acc.samples.clone());
    (acc.p50_us, acc.p99_us, acc.max_us, acc.count) = (b.p50_us, b.p99_us, b.max_us, b.count);
    Some(acc)
}

/// As [`pool_handover`] for `bench checkpoint` runs (the fsync baseline: the worst run's).
pub fn pool_checkpoint(runs: Vec<CheckpointResult>) -> Option<CheckpointResult> {
    let mut acc = fold_runs(runs, |acc, r| {
        acc.samples.extend(r.samples);
        acc.lost += r.lost;
        acc.duplicated += r.duplicated;
        acc.baseline_local_fsync_p50_us = acc
            .baseline_local_fsync_p50_us
            .max(r.baseline_local_fsync_p50_us);
        acc.baseline_local_fsync_p99_us = acc
            .baseline_local_fsync_p99_us
            .max(r.baseline_local_fsync_p99_us);
        acc.baseline_concurrent_fsyncs_p50_us = acc
            .baseline_concurrent_fsyncs_p50_us
            .max(r.baseline_concurrent_fsyncs_p50_us);
        acc.baseline_concurrent_fsyncs_p99_us = acc
            .baseline_concurrent_fsyncs_p99_us
            .max(r.baseline_concurrent_fsyncs_p99_us);
    })?;
    let a = summarize(acc.samples.clone());
    (acc.p50_us, acc.p99_us, acc.max_us, acc.count) = (a.p50_us, a.p99_us, a.max_us, a.count);
    Some(acc)
}

fn size_name(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{}MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{}KiB", n >> 10)
    } else {
        format!("{n}B")
    }
}

/// The executable to launch replica servers from: this one.
pub fn self_exe() -> Result<PathBuf, BenchError> {
    std::env::current_exe().map_err(BenchError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_and_names() {
        let s = summarize((1..=1000).rev().collect());
        assert_eq!(
            (s.p50_us, s.p99_us, s.max_us, s.count),
            (500, 990, 1000, 1000)
        );
        assert_eq!(size_name(4096), "4KiB");
        assert_eq!(size_name(1 << 20), "1MiB");
        assert_eq!(size_name(100), "100B");
    }
}

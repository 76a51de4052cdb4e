//! P6: resident bytes per idle (hibernated) session and wake-from-hibernation latency, vs one
//! idle raw ractor actor per session in the same run. Prints JSON lines.
//!
//! Run: `cargo bench -p opengrid-actors --bench density` (N from `OPENGRID_DENSITY_N`,
//! default 100000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use opengrid_actors::*;
use opengrid_session::*;
use ractor::{Actor, ActorProcessingErr, ActorRef};

struct Tiny;
impl SessionHandler for Tiny {
    type State = u32;
    type Input = u32;
    type Output = u32;
    fn id(&self) -> &str {
        "tiny"
    }
    fn init(&self, _: &SessionId) -> u32 {
        0
    }
    async fn handle(&self, s: &mut u32, v: u32, _: &SessionContext) -> Result<u32, HandlerError> {
        *s = s.wrapping_add(v);
        Ok(*s)
    }
}

struct Idle;
impl Actor for Idle {
    type Msg = ();
    type State = ();
    type Arguments = ();
    async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("density: benchmark");
        return;
    }
    let n: usize = std::env::var("OPENGRID_DENSITY_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let store = Arc::new(RocksCheckpointStore::open(dir.path(), RocksOptions { sync: false, retain: 2 }).unwrap());
        let host = SessionHost::new(store, HostConfig::default(), Services::default()).await.unwrap();
        let mut policy = CheckpointPolicy::periodic(Duration::from_secs(60));
        policy.idle_timeout = Duration::from_secs(3600);
        let handler = Arc::new(Tiny);
        let before = rss_bytes();
        let t = Instant::now();
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let h = host.start(handler.clone(), SessionId::new(format!("s{i}")).unwrap(), Epoch(1), policy).await.unwrap();
            assert!(h.hibernate_now().await.unwrap());
            handles.push(h);
            if i % 20_000 == 0 && i > 0 {
                eprintln!("density: {i}/{n} sessions created and hibernated");
            }
        }
        let created = t.elapsed();
        while host.live_actors().await > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let after = rss_bytes();
        let per_session = (after.saturating_sub(before)) as f64 / n as f64;
        // Wake latency: first input to a hibernated session, answered.
        let mut wake = Histogram::<u64>::new_with_max(60_000_000_000, 3).expect("valid bounds");
        for h in handles.iter().take(1000) {
            let t = Instant::now();
            h.send(Seq(1), 1).await.unwrap();
            wake.saturating_record(t.elapsed().as_nanos() as u64);
        }
        let wp50 = wake.value_at_quantile(0.5) as f64 / 1e3;
        let wp99 = wake.value_at_quantile(0.99) as f64 / 1e3;
        // Baseline: one idle raw ractor actor per session.
        let before_raw = rss_bytes();
        let mut raws = Vec::with_capacity(n);
        for _ in 0..n {
            raws.push(Actor::spawn(None, Idle, ()).await.unwrap().0);
        }
        let raw_per = (rss_bytes().saturating_sub(before_raw)) as f64 / n as f64;
        println!(
            "{{\"name\":\"density_hibernated_session\",\"count\":{n},\"resident_bytes_per_session\":{per_session:.0},\"raw_ractor_idle_actor_bytes\":{raw_per:.0},\"create_and_hibernate_s\":{:.2}}}",
            created.as_secs_f64()
        );
        println!("{{\"name\":\"wake_from_hibernation\",\"count\":{},\"p50_us\":{wp50:.1},\"p99_us\":{wp99:.1}}}", wake.len());
        for r in raws {
            r.stop(None);
        }
        host.shutdown().await;
    });
}

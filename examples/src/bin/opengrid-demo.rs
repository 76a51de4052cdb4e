//! Local demo: tutor sessions on one host with a RocksDB checkpoint store.
//!
//! Shows manifest → checkpoint policy, a conversation, a handler crash restarted from its last
//! checkpoint with nothing lost, hibernation and wake-up, and per-session usage.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use opengrid_actors::{HostConfig, Reply, Services, SessionHandle, SessionHost};
use opengrid_examples::intent::IntentClassifier;
use opengrid_examples::tutor::{solve, Tutor, TutorInput};
use opengrid_examples::{counter::Counter, manifest_path};
use opengrid_migration::{handover, CapacityAdmission, HandoverOptions, MigrationServer, Peer};
use opengrid_runtime_gpu::{InferenceRuntime, RuntimeConfig};
use opengrid_session::{
    CheckpointStore, Epoch, Manifest, RocksCheckpointStore, RocksOptions, Seq, SessionId,
};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    opengrid_cluster::cli::init_logging(false, "warn");
    opengrid_actors::install_panic_hook();
    let dir = tempfile_dir()?;
    println!("OpenGrid local demo — checkpoint store: {}", dir.display());
    let store = Arc::new(
        RocksCheckpointStore::open(&dir, RocksOptions::default()).context("open RocksDB")?,
    );
    // Inference plane: when ONNX Runtime and the generated models are available (scripts/demo.sh
    // sets them up), the tutor classifies each student turn's intent through `ctx.infer`.
    let (services, runtime) = inference_services();
    let host = SessionHost::new(
        store.clone() as Arc<dyn CheckpointStore>,
        HostConfig::default(),
        services,
    )
    .await
    .context("start session host")?;
    host.register(Arc::new(Tutor));
    host.register(Arc::new(Counter));

    println!("\n== Manifests");
    let strict = Manifest::load(manifest_path("tutor.toml"))?;
    let relaxed = Manifest::load(manifest_path("tutor-relaxed.toml"))?;
    for (name, m) in [("tutor.toml", &strict), ("tutor-relaxed.toml", &relaxed)] {
        let p = m.checkpoint_policy();
        println!(
            "  {name:<20} jurisdictions {:?}, loss bound {:?} → {}",
            m.placement.jurisdictions,
            p.loss_bound(),
            if p.is_synchronous() {
                "durable checkpoint before every ack"
            } else {
                "async checkpoints"
            }
        );
    }
    let bad = strict
        .to_toml_string()
        .replace("max_blackout = \"50ms\"", "max_blackout = \"0s\"");
    if let Err(e) = Manifest::from_toml_str(&bad) {
        println!("  a bad manifest is refused: {e}");
    }

    println!("\n== Three tutoring sessions");
    let mut sessions = Vec::new();
    for (i, m) in [&strict, &relaxed, &strict].into_iter().enumerate() {
        let id = SessionId::new(format!("tutor-{}", i + 1))?;
        let s = host
            .start(Arc::new(Tutor), id, Epoch(1), m.checkpoint_policy())
            .await?;
        sessions.push(s);
    }
    let mut seqs = vec![0u64; sessions.len()];
    let mut questions = vec![String::new(); sessions.len()];
    for round in 0..6 {
        for (i, s) in sessions.iter().enumerate() {
            // A student who is right most of the time, wrong every fourth turn.
            let text = if round == 0 {
                "score".to_string()
            } else {
                let ans = solve(&questions[i]).unwrap_or(0);
                if (round + i) % 4 == 3 {
                    (ans + 1).to_string()
                } else {
                    ans.to_string()
                }
            };
            let reply = talk(s, &mut seqs[i], &text).await?;
            if i == 0 {
                println!(
                    "  [{}] student: {text:<6} tutor: {} {}",
                    s.id(),
                    reply.0,
                    reply.1
                );
            }
            questions[i] = reply.1;
            if round == 5 && i == 0 {
                for text in ["why does the formula work ?", "thanks see you later"] {
                    let r = talk(s, &mut seqs[i], text).await?;
                    let intent = r.2.map(|i| format!("(intent: {i})")).unwrap_or_default();
                    println!("  [{}] student: {text}  tutor: {} {intent}", s.id(), r.0);
                }
            }
        }
    }

    println!("\n== Crash: tutor-1's handler panics");
    let s = &sessions[0];
    let before = s.last_seq();
    seqs[0] += 1;
    match s.send(Seq(seqs[0]), TutorInput::new("!crash")).await {
        Err(e) => println!("  the client got: {e}"),
        Ok(_) => println!("  unexpected: the crash input was answered"),
    }
    let t = Instant::now();
    seqs[0] -= 1; // the crashing input was not applied: its seq is reused
    let r = talk(s, &mut seqs[0], "score").await?;
    println!(
        "  supervisor restarted it from its checkpoint in {:?}; restarts so far {}; turns before the crash {} — tutor says: {}",
        t.elapsed(),
        s.usage().restarts,
        before,
        r.0
    );

    println!("\n== Hibernation");
    let s = &sessions[1];
    let hibernated = s.hibernate_now().await?;
    println!(
        "  tutor-2 hibernated: {hibernated} (status {:?}, live actors {})",
        s.status(),
        host.live_actors().await
    );
    let t = Instant::now();
    let ans = solve(&questions[1]).unwrap_or(0).to_string();
    let r = talk(s, &mut seqs[1], &ans).await?;
    println!("  next input woke it in {:?}: {}", t.elapsed(), r.0);

    println!("\n== Live handover: tutor-3 moves to a second node over TCP");
    let dir_b = tempfile_dir()?.join("node-b");
    std::fs::create_dir_all(&dir_b)?;
    let store_b: Arc<dyn CheckpointStore> =
        Arc::new(RocksCheckpointStore::open(&dir_b, RocksOptions::default())?);
    let host_b =
        SessionHost::new(store_b.clone(), HostConfig::default(), Services::default()).await?;
    host_b.register(Arc::new(Tutor));
    let admit = Arc::new(CapacityAdmission {
        host: host_b.clone(),
        max_sessions: 100,
    });
    // The two nodes' migration links: mutual TLS, each admitting only the other's DID.
    let (link_a, link_b) = {
        use opengrid_link::{AllowList, Link, LinkIdentity};
        let key = || ed25519_dalek::SigningKey::from_bytes(&rand::random());
        let (a, b) = (
            LinkIdentity::from_signing_key(&key())?,
            LinkIdentity::from_signing_key(&key())?,
        );
        (
            Link::new(&a, Arc::new(AllowList::new([b.did().clone()])))?,
            Link::new(&b, Arc::new(AllowList::new([a.did().clone()])))?,
        )
    };
    let server_b = MigrationServer::bind(
        "127.0.0.1:0".parse()?,
        host_b.clone(),
        store_b.clone(),
        admit,
        // One host, no RC: the two links admitting each other are the only check.
        opengrid_migration::Security {
            link: link_b,
            grants: opengrid_migration::GrantPolicy::LinkOnly,
            meter: None,
        },
    )
    .await?;
    let s3 = &sessions[2];
    let before = s3.last_seq();
    // A student keeps talking while the session moves (make-before-break).
    let question = questions[2].clone();
    let talker = {
        let s3 = s3.clone();
        let seq = seqs[2] + 1;
        tokio::spawn(async move {
            let ans = solve(&question).unwrap_or(0).to_string();
            s3.send(Seq(seq), TutorInput::new(ans)).await
        })
    };
    let report = handover(
        &host,
        &(store.clone() as Arc<dyn CheckpointStore>),
        s3.id(),
        &Peer::new(server_b.addr(), link_a, Duration::from_secs(5)),
        &HandoverOptions {
            location: format!("migration://{}", server_b.addr()),
            ..Default::default()
        },
    )
    .await?;
    seqs[2] += 1;
    let raced = talker.await?;
    println!(
        "  handed over at {} to epoch {} in {:?} total, blackout {:?} ({} state bytes, {} pre-copy round(s))",
        report.final_seq, report.epoch, report.total, report.blackout, report.state_bytes, report.precopy_rounds
    );
    match raced {
        Ok(Reply::Processed { output: Ok(r), .. }) => {
            println!(
                "  an input sent while the session was moving was answered without error: {}",
                r.say
            )
        }
        other => println!("  the input sent during the handover: {other:?}"),
    }
    println!("  old node now answers: {:?}", s3.status());
    let on_b = host_b.get(s3.id()).context("session on node B")?;
    seqs[2] += 1;
    let r = on_b
        .send_json(Seq(seqs[2]), serde_json::json!({"text": "score"}))
        .await?;
    if let Reply::Processed { output: Ok(v), .. } = r {
        println!(
            "  node B continues the conversation (turns before: {before}): {}",
            v["say"].as_str().unwrap_or("")
        );
    }
    host_b.shutdown().await;
    server_b.shutdown();

    println!("\n== Summary");
    println!(
        "  {:<9} {:>5} {:>8} {:>11} {:>8} {:>9} {:>9}",
        "session", "turns", "restarts", "checkpoints", "busy_us", "cp_bytes", "infer_us"
    );
    for s in &sessions {
        let u = s.usage();
        println!(
            "  {:<9} {:>5} {:>8} {:>11} {:>8} {:>9} {:>9}",
            s.id().as_str(),
            s.last_seq().0,
            u.restarts,
            u.checkpoints,
            u.handler_busy_us,
            u.checkpoint_bytes,
            u.inference_us
        );
        let cp = store.get_latest(s.id())?.context("checkpoint present")?;
        anyhow::ensure!(cp.seq <= s.last_seq(), "checkpoint ahead of the session");
    }
    host.shutdown().await;
    if let Some(rt) = runtime {
        rt.shutdown();
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "\nDone: every session kept its state through the crash, the hibernation and the handover."
    );
    Ok(())
}

async fn talk(
    s: &SessionHandle<Tutor>,
    seq: &mut u64,
    text: &str,
) -> anyhow::Result<(String, String, Option<String>)> {
    *seq += 1;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match s.send(Seq(*seq), TutorInput::new(text)).await {
            Ok(Reply::Processed { output: Ok(r), .. }) => return Ok((r.say, r.question, r.intent)),
            Ok(Reply::Processed { output: Err(e), .. }) => {
                return Ok((format!("(error: {e})"), String::new(), None))
            }
            Ok(Reply::Duplicate { .. }) => anyhow::bail!("seq {} reported duplicate", seq),
            Err(e) if e.is_retryable() && Instant::now() < deadline => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("opengrid-demo-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn inference_services() -> (Services, Option<InferenceRuntime>) {
    let (Some(dylib), Some(models)) = (
        std::env::var_os("ORT_DYLIB_PATH"),
        std::env::var_os("OPENGRID_MODELS"),
    ) else {
        println!("(inference plane off: ORT_DYLIB_PATH / OPENGRID_MODELS not set)");
        return (Services::default(), None);
    };
    let cfg = RuntimeConfig {
        dylib_path: Some(dylib.into()),
        ..RuntimeConfig::default()
    };
    match InferenceRuntime::start(cfg) {
        Ok(rt) => match IntentClassifier::load(&rt, std::path::Path::new(&models)) {
            Ok(c) => {
                println!(
                    "Inference plane: {}, intent classifier loaded",
                    rt.device().provider_name
                );
                (Services::default().with(rt.handle()).with(c), Some(rt))
            }
            Err(e) => {
                println!("(intent classifier not loaded: {e})");
                (Services::default(), Some(rt))
            }
        },
        Err(e) => {
            println!("(inference plane off: {e})");
            (Services::default(), None)
        }
    }
}

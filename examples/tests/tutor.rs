//! The tutor example end to end on a session host: conversation, restart, and intent
//! classification through the node's inference plane (`ctx.infer`).

use std::path::PathBuf;
use std::sync::Arc;

use opengrid_actors::{HostConfig, Reply, Services, SessionError, SessionHost};
use opengrid_examples::intent::IntentClassifier;
use opengrid_examples::tutor::{solve, Tutor, TutorInput, TutorReply};
use opengrid_runtime_gpu::{DevicePreference, InferenceRuntime, RuntimeConfig};
use opengrid_session::{CheckpointPolicy, Epoch, MemoryCheckpointStore, Seq, SessionId};

fn env_path(var: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(var).unwrap_or_else(|| {
        panic!(
            "{var} is not set: run `eval \"$(scripts/setup-python.sh)\"` (scripts/test.sh does it)"
        )
    }))
}

async fn say(h: &opengrid_actors::SessionHandle<Tutor>, seq: u64, text: &str) -> TutorReply {
    match h.send(Seq(seq), TutorInput::new(text)).await.unwrap() {
        Reply::Processed { output, .. } => output.unwrap(),
        r => panic!("{r:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tutor_conversation_survives_a_crash() {
    let host = SessionHost::new(
        Arc::new(MemoryCheckpointStore::new()),
        HostConfig::default(),
        Services::default(),
    )
    .await
    .unwrap();
    let h = host
        .start(
            Arc::new(Tutor),
            SessionId::new("t").unwrap(),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    let mut r = say(&h, 1, "score").await;
    assert_eq!(r.intent, None, "no inference pool on this host");
    for seq in 2..=10 {
        let ans = solve(&r.question).unwrap();
        r = say(&h, seq, &ans.to_string()).await;
        assert!(r.say.starts_with("Right"), "{r:?}");
    }
    assert_eq!(r.correct, 9);
    assert!(r.level > 1, "streaks raise the level");
    let e = h
        .send(Seq(11), TutorInput::new("!crash"))
        .await
        .unwrap_err();
    assert!(matches!(e, SessionError::HandlerPanicked { .. }));
    let after = say(&h, 11, "score").await;
    assert_eq!(after.correct, 9, "state restored from the checkpoint");
    assert_eq!(
        after.question, r.question,
        "same open question after the restart"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tutor_classifies_intents_through_the_inference_plane() {
    let runtime = InferenceRuntime::start(RuntimeConfig {
        dylib_path: Some(env_path("ORT_DYLIB_PATH")),
        device: DevicePreference::Cpu,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let models = env_path("OPENGRID_MODELS");
    let classifier = IntentClassifier::load(&runtime, &models).unwrap();
    let desc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(models.join("text_classifier.reference.json")).unwrap(),
    )
    .unwrap();
    let services = Services::default().with(runtime.handle()).with(classifier);
    let host = SessionHost::new(
        Arc::new(MemoryCheckpointStore::new()),
        HostConfig::default(),
        services,
    )
    .await
    .unwrap();
    let h = host
        .start(
            Arc::new(Tutor),
            SessionId::new("ti").unwrap(),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    let sentences = desc["sentences"].as_array().unwrap();
    let expected = desc["expected_labels"].as_array().unwrap();
    for (i, (s, want)) in sentences.iter().zip(expected).enumerate() {
        let r = say(&h, i as u64 + 1, s.as_str().unwrap()).await;
        assert_eq!(r.intent.as_deref(), want.as_str(), "sentence {s}");
    }
    let u = h.usage();
    assert_eq!(
        u.inference_calls,
        sentences.len() as u64,
        "each turn metered"
    );
    host.shutdown().await;
    runtime.shutdown();
}

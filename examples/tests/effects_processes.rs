//! Durable effects with real processes (ADR 0032): the `assistant` example calls a local
//! OpenAI-compatible endpoint (this test's HTTP server, which answers deterministically and counts
//! requests per `Idempotency-Key`) through `ctx.fetch`. The holder is killed with -9 after the
//! model answered and before the reply: after failover the client's retry is answered from the
//! journal and the endpoint saw exactly one request for that turn. The same across a live handover
//! taken while a turn is in progress. Egress outside the manifest's `[egress] hosts` is refused.
//! The same for the assistant as a WebAssembly agent package (`examples/agents/assistant-rs`,
//! `opengrid:agent@0.2.0`, ADR 0034), pushed to the RC: one request per idempotency key across a
//! kill -9 of its holder.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{stderr, stdout, Colony};
use serde_json::{json, Value};

/// The model endpoint: `POST /v1/chat/completions` answers `echo: <last user message>` and counts
/// requests per idempotency key.
async fn model_server() -> (String, Arc<Mutex<HashMap<String, u32>>>) {
    let counts: Arc<Mutex<HashMap<String, u32>>> = Default::default();
    let app = axum::Router::new()
        .route(
            "/v1/chat/completions",
            axum::routing::post(
                |axum::extract::State(c): axum::extract::State<Arc<Mutex<HashMap<String, u32>>>>,
                 headers: axum::http::HeaderMap,
                 axum::Json(body): axum::Json<Value>| async move {
                    let key = headers
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("none")
                        .to_string();
                    *c.lock().unwrap().entry(key).or_default() += 1;
                    let last = body["messages"]
                        .as_array()
                        .and_then(|m| m.last())
                        .and_then(|m| m["content"].as_str())
                        .unwrap_or_default()
                        .to_string();
                    axum::Json(json!({
                        "choices": [{"message": {"role": "assistant", "content": format!("echo: {last}")}}]
                    }))
                },
            ),
        )
        .with_state(counts.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    (format!("127.0.0.1:{}", addr.port()), counts)
}

/// Three nodes whose `assistant` asks the model server at `host`, alive, and an operator client.
async fn colony_with_model(host: &str) -> (Colony, opengrid_cluster::client::Client) {
    let url = format!("http://{host}/v1");
    let mut c = Colony::start();
    for n in ["n1", "n2", "n3"] {
        c.node_env(n, "DE", &[("ASSISTANT_MODEL_URL", url.as_str())]);
    }
    c.wait_alive(3).await;
    let client = c.client();
    (c, client)
}

fn manifest(egress: &str) -> String {
    format!("version = 1\n[session]\nhandler = \"assistant\"\ncontinuity = \"interactive\"\n[placement]\njurisdictions = [\"EU\"]\n[migration]\ncost = \"cheap\"\nacceptable_loss = \"0s\"\nmax_blackout = \"2s\"\n[egress]\nhosts = [\"{egress}\"]\n")
}

async fn wait_count(counts: &Mutex<HashMap<String, u32>>, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while counts.lock().unwrap().get(key).copied().unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the model never saw {key}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_effect_is_not_repeated_across_kill_9_and_handover() {
    let (host, counts) = model_server().await;
    let (mut c, client) = colony_with_model(&host).await;
    let mut s = client.create(&manifest(&host), None).await.unwrap();
    let id = s.id.clone();
    let r = s.send(json!({"user": "hello"})).await.unwrap();
    assert_eq!(r["output"]["answer"], "echo: hello", "{r}");
    let seen = counts.lock().unwrap().clone();
    assert_eq!(seen.get(&format!("{id}:1:0")), Some(&1), "{seen:?}");

    // Turn 2: the model answers, the turn then takes 3 s; kill -9 the holder in between.
    let holder = c.entry(&id).await["node_name"]
        .as_str()
        .unwrap()
        .to_string();
    let turn = tokio::spawn(async move {
        let r = s
            .send(json!({"user": "are you there", "think_ms": 3000}))
            .await;
        (s, r)
    });
    wait_count(&counts, &format!("{id}:2:0")).await;
    c.kill9(&holder);
    let (mut s, r) = turn.await.unwrap();
    let r = r.unwrap();
    assert_eq!(r["kind"], "processed", "{r}");
    assert_eq!(r["output"]["answer"], "echo: are you there", "{r}");
    let e = c.entry(&id).await;
    assert_ne!(
        e["node_name"].as_str(),
        Some(holder.as_str()),
        "failed over: {e}"
    );
    let seen = counts.lock().unwrap().clone();
    assert_eq!(
        seen.get(&format!("{id}:2:0")),
        Some(&1),
        "the model saw the turn once: {seen:?}"
    );

    // Turn 3: a live handover while the turn is in progress (after the model answered).
    let turn = tokio::spawn(async move {
        let r = s.send(json!({"user": "still?", "think_ms": 1500})).await;
        (s, r)
    });
    wait_count(&counts, &format!("{id}:3:0")).await;
    let from = c.entry(&id).await["node_name"].clone();
    c.handover(&id).await;
    let (mut s, r) = turn.await.unwrap();
    let r = r.unwrap();
    assert_eq!(r["output"]["answer"], "echo: still?", "{r}");
    assert_ne!(c.entry(&id).await["node_name"], from, "handed over");
    let seen = counts.lock().unwrap().clone();
    assert_eq!(seen.get(&format!("{id}:3:0")), Some(&1), "{seen:?}");
    let r = s.send(json!({"user": "bye"})).await.unwrap();
    assert_eq!(
        r["output"]["turn"], 4,
        "the transcript kept every turn: {r}"
    );

    // Egress is only to the manifest's hosts: a session allowing another host cannot reach it.
    let mut other = client.create(&manifest("127.0.0.1:1"), None).await.unwrap();
    let r = other.send(json!({"user": "hi"})).await.unwrap();
    assert_eq!(r["error"]["code"], "fetch", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not among"),
        "{r}"
    );
    let seen = counts.lock().unwrap().clone();
    assert_eq!(
        seen.values().sum::<u32>(),
        4,
        "one request per turn: {seen:?}"
    );
}

fn manifest_idle(egress: &str, idle: &str) -> String {
    manifest(egress).replace(
        "continuity = \"interactive\"\n",
        &format!("continuity = \"interactive\"\nidle_timeout = \"{idle}\"\n"),
    )
}

fn tool_manifest(egress: &str) -> String {
    manifest(egress).replace("handler = \"assistant\"", "handler = \"tool\"")
}

async fn status_of(s: &mut opengrid_cluster::client::Session) -> Value {
    let r = s.send(json!({"status": true})).await.unwrap();
    r["output"].clone()
}

/// A reminder (`ctx.schedule`) fires exactly once while its session is hibernated (the node wakes
/// it), and exactly once across a kill -9 of its holder (the new holder fires it): the model saw
/// one request per reminder and the state holds one answer per reminder.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_timer_fires_once_while_hibernated_and_across_failover() {
    let (host, counts) = model_server().await;
    let (mut c, client) = colony_with_model(&host).await;

    // 1. Hibernated: the session sleeps after 200 ms idle; the reminder is due in 3 s.
    let mut s = client
        .create(&manifest_idle(&host, "200ms"), None)
        .await
        .unwrap();
    let id = s.id.clone();
    let r = s
        .send(json!({"user": "water the plants", "remind_ms": 3000}))
        .await
        .unwrap();
    let timer = r["output"]["reminder"].as_str().unwrap().to_string();
    assert_eq!(timer, format!("{id}:1:1"), "{r}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info = s.info().await.unwrap();
        if info["status"] == "hibernated" {
            break;
        }
        assert!(Instant::now() < deadline, "never hibernated: {info}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let key = format!("{id}:t{timer}:0");
    wait_count(&counts, &key).await;
    let st = status_of(&mut s).await;
    assert_eq!(st["fired"], 1, "{st}");
    assert_eq!(st["reminders"][0], "echo: reminder: water the plants");

    // 2. Failover: the holder is killed before the reminder is due; the new holder fires it.
    let mut s = client.create(&manifest(&host), None).await.unwrap();
    let id = s.id.clone();
    let r = s
        .send(json!({"user": "call mum", "remind_ms": 6000}))
        .await
        .unwrap();
    let timer = r["output"]["reminder"].as_str().unwrap().to_string();
    let holder = c.entry(&id).await["node_name"]
        .as_str()
        .unwrap()
        .to_string();
    c.kill9(&holder);
    let key = format!("{id}:t{timer}:0");
    wait_count(&counts, &key).await;
    let st = status_of(&mut s).await;
    assert_eq!(st["fired"], 1, "{st}");
    assert_ne!(
        c.entry(&id).await["node_name"].as_str(),
        Some(holder.as_str()),
        "failed over"
    );
    // Nothing fires twice later either: give a second firing every chance (a later input is
    // handled after any due timer's step), then count.
    let st = status_of(&mut s).await;
    assert_eq!(st["fired"], 1, "{st}");
    let seen = counts.lock().unwrap().clone();
    for (k, n) in &seen {
        assert_eq!(*n, 1, "one request per idempotency key: {k} {seen:?}");
    }
}

/// 1,000 streamed replies while handovers move the session back and forth: the client gets every
/// chunk of every reply once, in order (it resumes from its offset on the new holder).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streamed_replies_lose_and_repeat_nothing_across_racing_handovers() {
    let (host, _counts) = model_server().await;
    let (c, client) = colony_with_model(&host).await;
    let mut s = client.create(&manifest(&host), None).await.unwrap();
    let id = s.id.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mover = {
        let stop = stop.clone();
        let c = Arc::new(c);
        let c2 = c.clone();
        let id = id.clone();
        (
            tokio::spawn(async move {
                let mut moves = 0u32;
                // Bounded: at most 200 handovers.
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && moves < 200 {
                    c2.handover(&id).await;
                    moves += 1;
                }
                moves
            }),
            c,
        )
    };
    const N: usize = 1000;
    let (mut lost, mut repeated) = (0usize, 0usize);
    for i in 0..N {
        let text = format!("turn {i} of the stream test with several words");
        let mut got: Vec<(u64, String)> = Vec::new();
        let r = s
            .send_streaming(json!({"user": text}), |o, c| got.push((o, c.to_string())))
            .await
            .unwrap_or_else(|e| panic!("turn {i}: {e}"));
        let answer = r["output"]["answer"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert_eq!(answer, format!("echo: {text}"), "turn {i}: {r}");
        let want: Vec<&str> = answer.split_inclusive(' ').collect();
        for (k, (o, _)) in got.iter().enumerate() {
            if *o != k as u64 {
                repeated += 1;
            }
        }
        lost += want.len().saturating_sub(got.len());
        repeated += got.len().saturating_sub(want.len());
        let joined: String = got.iter().map(|(_, c)| c.as_str()).collect();
        assert_eq!(joined, answer, "turn {i}: chunks {got:?}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (task, c) = mover;
    let moves = task.await.unwrap();
    eprintln!("{N} streamed replies, {moves} handovers, client followed {} moves: lost {lost}, repeated {repeated}", s.moves);
    assert_eq!((lost, repeated), (0, 0));
    assert!(moves >= 3, "handovers raced the streams: {moves}");
    drop(c);
}

/// Session-to-session calls with real processes: the assistant calls a tool session on another
/// node (exactly once: the tool counted one query and knows its caller); a call that would come
/// back to the waiting assistant is refused with `call_cycle`; a call whose callee's node is
/// killed with -9 mid-call follows the callee through its failover and is answered within the
/// deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_are_exactly_once_cycles_are_refused_and_a_dead_callee_fails_over() {
    let (host, counts) = model_server().await;
    let url = format!("http://{host}/v1");
    let (mut c, client) = colony_with_model(&host).await;
    let mut a = client.create(&manifest(&host), None).await.unwrap();
    let mut t = client.create(&tool_manifest(&host), None).await.unwrap();
    let a_cap = a.capability.clone().unwrap_or_else(|| a.id.clone());
    let t_cap = t.capability.clone().unwrap_or_else(|| t.id.clone());
    // The tool on another node than the assistant.
    let a_node = c.entry(&a.id).await["node_name"]
        .as_str()
        .unwrap()
        .to_string();
    if c.entry(&t.id).await["node_name"].as_str() == Some(a_node.as_str()) {
        c.handover(&t.id).await;
    }

    let r = a
        .send(json!({"user": "count these four words", "tool": t_cap}))
        .await
        .unwrap();
    assert_eq!(r["output"]["tool"]["result"], "4 words", "{r}");
    let st = status_of(&mut t).await;
    assert_eq!(st["handled"], 1, "the tool ran once: {st}");
    assert_eq!(st["callers"], json!([a.id.clone()]), "{st}");

    // The new routes refuse a stranger (no credential: 401) and a party beyond its rights
    // (another session's capability: 403): a call into the tool, and a stream of its input 1.
    let t_addr = c.entry(&t.id).await["address"]
        .as_str()
        .unwrap()
        .to_string();
    let http = reqwest::Client::new();
    let call =
        json!({"key": "forged:1:0", "caller": a.id.clone(), "chain": [], "input": {"query": "x"}});
    let url_call = format!("{t_addr}/sessions/{}/calls", t.id);
    let url_stream = format!("{t_addr}/sessions/{}/inputs/1/stream", t.id);
    let r = http.post(&url_call).json(&call).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401, "a call without a credential");
    let r = http
        .post(&url_call)
        .bearer_auth(&a_cap)
        .json(&call)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        403,
        "a call with another session's capability"
    );
    let r = http.get(&url_stream).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401, "a stream without a credential");
    let r = http
        .get(&url_stream)
        .bearer_auth(&a_cap)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        403,
        "a stream with another session's capability"
    );
    let st = status_of(&mut t).await;
    assert_eq!(st["handled"], 1, "nothing refused ran: {st}");

    // A cycle: the assistant asks the tool, which asks the assistant back.
    let r = a
        .send(json!({"user": "loop", "tool": t_cap, "tool_call": a_cap}))
        .await
        .unwrap();
    assert_eq!(r["error"]["code"], "call_cycle", "{r}");

    // The callee's node dies mid-call: the call follows the tool to its new holder.
    let t_node = c.entry(&t.id).await["node_name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(t_node, a_node);
    let a_id = a.id.clone();
    let turn = tokio::spawn(async move {
        let r = a
            .send(json!({"user": "slow lookup please", "tool": t_cap, "tool_work_ms": 2000, "tool_ping": url}))
            .await;
        (a, r)
    });
    // The tool tells the model server it started (a journaled fetch keyed by the call), then a
    // second time, which it starts only once the first's result is durable on its copies: kill
    // its node once the second is seen — while the tool works, after the first is journaled.
    let ping = format!("{}:c{a_id}:3:0:0", t.id);
    wait_count(&counts, &format!("{}:c{a_id}:3:0:1", t.id)).await;
    c.kill9(&t_node);
    let started = Instant::now();
    let (_a, r) = turn.await.unwrap();
    let r = r.unwrap();
    assert_eq!(r["output"]["tool"]["result"], "3 words", "{r}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "answered within the call's deadline"
    );
    assert_ne!(
        c.entry(&t.id).await["node_name"].as_str(),
        Some(t_node.as_str()),
        "the tool failed over"
    );
    let st = status_of(&mut t).await;
    assert_eq!(st["handled"], 2, "each call that completed ran once: {st}");
    assert_eq!(
        counts.lock().unwrap().get(&ping),
        Some(&1),
        "the callee's own effect was not repeated by its failover"
    );
}

/// A zero-loss session of the `assistant-rs` agent package allowed to reach `egress`.
fn agent_manifest(egress: &str) -> String {
    format!("version = 1\n[session]\nagent = \"assistant-rs\"\ncontinuity = \"interactive\"\n[placement]\njurisdictions = [\"EU\"]\n[migration]\ncost = \"cheap\"\nacceptable_loss = \"0s\"\nmax_blackout = \"2s\"\n[egress]\nhosts = [\"{egress}\"]\n")
}

/// `examples/agents/assistant-rs`, its component built (scripts/build-agents.sh) if missing.
fn assistant_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("examples/agents/assistant-rs");
    if !dir.join("agent.wasm").is_file() {
        let script = root.join("scripts/build-agents.sh");
        let status = Command::new("bash")
            .arg(&script)
            .stdout(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            status.success(),
            "{} failed; run it by hand",
            script.display()
        );
    }
    dir
}

/// The assistant as a WASM agent: its effects are the node's (egress, journal); a kill -9 of the
/// holder after the model answered does not make the model see the turn twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wasm_agent_s_effect_is_not_repeated_across_kill_9() {
    let dir = assistant_dir();
    let (host, counts) = model_server().await;
    let url = format!("http://{host}/v1");
    let mut c = Colony::start();
    for n in ["n1", "n2", "n3"] {
        c.node(n, "DE");
    }
    c.wait_alive(3).await;
    let (key, _) = c.developer_key();
    let out = c.agent_cli(&[
        "push",
        dir.to_str().unwrap(),
        "--developer-key",
        key.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "push assistant-rs: {}", stderr(&out));
    assert!(
        stdout(&out).starts_with("assistant-rs@0.1.0 "),
        "{}",
        stdout(&out)
    );
    let client = c.client();
    let mut s = client.create(&agent_manifest(&host), None).await.unwrap();
    let id = s.id.clone();
    let r = s
        .send(json!({"user": "hello", "model_url": url}))
        .await
        .unwrap();
    assert_eq!(r["output"]["answer"], "echo: hello", "{r}");
    // Effects 0 and 1 are the time and the seed; the model request is effect 2.
    let seen = counts.lock().unwrap().clone();
    assert_eq!(seen.get(&format!("{id}:1:2")), Some(&1), "{seen:?}");

    // Turn 2: the model answers, the turn then takes 3 s; kill -9 the holder in between.
    let holder = c.entry(&id).await["node_name"]
        .as_str()
        .unwrap()
        .to_string();
    // Streamed: the agent emits the model's answer word by word before it thinks for 3 s, and
    // an emit first makes the recorded answer durable on the session's copies (ADR 0032: durable
    // before observable). The first chunk is the sign that a kill -9 now lands after the effect
    // is journaled, not inside its durability window.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let turn = tokio::spawn(async move {
        let r = s
            .send_streaming(
                json!({"user": "are you there", "think_ms": 3000}),
                move |_, chunk| {
                    let _ = tx.send(chunk.to_string());
                },
            )
            .await;
        (s, r)
    });
    let first = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("no streamed chunk within 60 s")
        .expect("the stream ended without a chunk");
    assert_eq!(first, "echo: ");
    assert_eq!(counts.lock().unwrap().get(&format!("{id}:2:2")), Some(&1));
    c.kill9(&holder);
    let (mut s, r) = turn.await.unwrap();
    let r = r.unwrap();
    assert_eq!(r["kind"], "processed", "{r}");
    assert_eq!(r["output"]["answer"], "echo: are you there", "{r}");
    let e = c.entry(&id).await;
    assert_ne!(
        e["node_name"].as_str(),
        Some(holder.as_str()),
        "failed over: {e}"
    );
    let seen = counts.lock().unwrap().clone();
    assert_eq!(
        seen.get(&format!("{id}:2:2")),
        Some(&1),
        "the model saw the turn once: {seen:?}"
    );
    let r = s.send(json!({"user": "bye"})).await.unwrap();
    assert_eq!(
        r["output"]["turn"], 3,
        "the conversation kept every turn: {r}"
    );

    // Egress is only to the manifest's hosts, for agents too.
    let mut other = client
        .create(&agent_manifest("127.0.0.1:1"), None)
        .await
        .unwrap();
    let r = other
        .send(json!({"user": "hi", "model_url": url}))
        .await
        .unwrap();
    assert_eq!(r["error"]["code"], "fetch", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not among"),
        "{r}"
    );
    let seen = counts.lock().unwrap().clone();
    assert_eq!(
        seen.values().sum::<u32>(),
        3,
        "one request per turn: {seen:?}"
    );
}

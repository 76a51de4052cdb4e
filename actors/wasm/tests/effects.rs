//! Durable effects of WASM agents (`opengrid:agent@0.2.0`, ADR 0032, 0034) on a real
//! `SessionHost`, real wasmtime and real HTTP on 127.0.0.1: a guest's fetch reaches the server
//! with its idempotency key; a trap after an effect sends it once; a failover after the effects
//! replays their recorded results (the same time and random number, one request per key);
//! effects are refused in `init`; hostile requests get typed errors; streamed chunks, timers and
//! session-to-session calls reach their destinations; Rust and Python guests alike, next to a 0.1.0
//! agent.
//!
//! The egress is [`LocalEgress`]: the node's egress policy (`cluster::node::egress::NodeEgress`,
//! which needs a running node and is run by examples/tests/effects_processes.rs) over a real HTTP
//! client — only the manifest's `[egress] hosts`, no redirects, answers bounded. Calls go through
//! [`LocalCalls`]: the node's routing for sessions on one host, delivering to the callee's real
//! `DynSession::call_json`.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures::future::BoxFuture;
use opengrid_actors::egress::EgressFuture;
use opengrid_actors::{
    CallRequest, CallService, Calls, DynSession, Egress, EgressService, HandlerError, HttpRequest,
    HttpResponse, Reply, Services, SessionHandle,
};
use opengrid_session::manifest::EgressSection;
use opengrid_session::{CheckpointPolicy, CheckpointStore, Epoch, Seq, SessionId};
use opengrid_wasm::WasmHandler;
use serde_json::{json, Value};

/// What the test server saw, by `Idempotency-Key`.
#[derive(Default)]
struct Seen {
    counts: HashMap<String, u32>,
    bodies: HashMap<String, String>,
}

type Shared = Arc<Mutex<Seen>>;

/// Records a request; its key and how many times that key came.
fn record(seen: &Shared, headers: &axum::http::HeaderMap, body: &[u8]) -> (String, u32) {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_string();
    let mut s = seen.lock().unwrap();
    let n = {
        let c = s.counts.entry(key.clone()).or_default();
        *c += 1;
        *c
    };
    s.bodies
        .insert(key.clone(), String::from_utf8_lossy(body).into_owned());
    (key, n)
}

/// A local HTTP server: `/echo` answers `{"key", "n", "body"}`; `/hang` never answers the first
/// request of a key (the holder is stuck in the effect), and answers like `/echo` afterwards;
/// `/slow` answers after 2.5 s; `/v1/chat/completions` answers `echo: <last message>` like an OpenAI-compatible endpoint.
async fn server() -> (String, Shared) {
    use axum::extract::State;
    use axum::http::HeaderMap;
    let seen: Shared = Default::default();
    let echo = |State(seen): State<Shared>, headers: HeaderMap, body: axum::body::Bytes| async move {
        let (key, n) = record(&seen, &headers, &body);
        axum::Json(json!({"key": key, "n": n, "body": String::from_utf8_lossy(&body)}))
    };
    let hang = |State(seen): State<Shared>, headers: HeaderMap, body: axum::body::Bytes| async move {
        let (key, n) = record(&seen, &headers, &body);
        if n == 1 {
            std::future::pending::<()>().await;
        }
        axum::Json(json!({"key": key, "n": n}))
    };
    let chat = |State(seen): State<Shared>, headers: HeaderMap, body: axum::body::Bytes| async move {
        record(&seen, &headers, &body);
        let req: Value = serde_json::from_slice(&body).unwrap_or_default();
        let last = req["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_string();
        axum::Json(json!({
            "choices": [{"message": {"role": "assistant", "content": format!("echo: {last}")}}]
        }))
    };
    // Answers after 2.5 s: longer than the test runtime's outer deadline (2 × 500 ms + 1 s).
    let slow = |State(seen): State<Shared>, headers: HeaderMap, body: axum::body::Bytes| async move {
        let (key, n) = record(&seen, &headers, &body);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        axum::Json(json!({"key": key, "n": n}))
    };
    let app = axum::Router::new()
        .route("/echo", axum::routing::any(echo))
        .route("/slow", axum::routing::any(slow))
        .route("/hang", axum::routing::any(hang))
        .route("/v1/chat/completions", axum::routing::post(chat))
        .with_state(seen.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    (format!("127.0.0.1:{}", addr.port()), seen)
}

fn count(seen: &Shared, key: &str) -> u32 {
    seen.lock().unwrap().counts.get(key).copied().unwrap_or(0)
}

/// Waits until the server saw `key`, with a deadline.
async fn wait_for_key(seen: &Shared, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(seen, key) == 0 {
        assert!(Instant::now() < deadline, "the server never saw {key}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The node's egress policy over a real HTTP client (see the module doc).
struct LocalEgress {
    http: reqwest::Client,
    allowed: EgressSection,
}

impl LocalEgress {
    fn services(hosts: &[&str]) -> Services {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let allowed = EgressSection {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
        };
        Services::default().with(EgressService(Arc::new(LocalEgress { http, allowed })))
    }

    async fn send_checked(&self, req: HttpRequest) -> Result<HttpResponse, String> {
        let url = reqwest::Url::parse(&req.url).map_err(|e| format!("url {:?}: {e}", req.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("url {:?}: only http and https", req.url));
        }
        let host = url
            .host_str()
            .ok_or_else(|| format!("url {:?} has no host", req.url))?;
        let port = url.port_or_known_default().unwrap_or(80);
        if !self.allowed.allows(host, port) {
            return Err(format!(
                "{host}:{port} is not among the session's [egress] hosts"
            ));
        }
        let method = reqwest::Method::from_bytes(req.method.as_bytes())
            .map_err(|_| format!("method {:?}", req.method))?;
        let mut r = self.http.request(method, url);
        for (k, v) in &req.headers {
            r = r.header(k, v);
        }
        let mut resp = r.body(req.body).send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let limit = opengrid_actors::effects::MAX_EFFECT_RESULT_BYTES - 64 * 1024;
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > limit {
                return Err(format!("the answer is over {limit} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}

impl Egress for LocalEgress {
    fn send<'a>(&'a self, _session: &'a SessionId, req: HttpRequest) -> EgressFuture<'a> {
        Box::pin(self.send_checked(req))
    }
}

/// Calls to sessions of one host, by session id as capability (see the module doc).
#[derive(Default)]
struct LocalCalls {
    sessions: Mutex<HashMap<String, Arc<dyn DynSession>>>,
}

impl Calls for LocalCalls {
    fn call(&self, req: CallRequest) -> BoxFuture<'_, Result<Value, HandlerError>> {
        Box::pin(async move {
            opengrid_actors::calls::check_chain(&req.chain, &req.target)?;
            let callee = self.sessions.lock().unwrap().get(&req.target).cloned();
            let callee = callee.ok_or_else(|| HandlerError::new("call", "no such session"))?;
            let answer = callee.call_json(req.key, req.caller, req.chain, req.input);
            match tokio::time::timeout(req.deadline, answer).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(HandlerError::new("call", e.to_string())),
                Err(_) => Err(HandlerError::new("call_deadline", "no answer in time")),
            }
        })
    }
}

fn sid(s: &str) -> SessionId {
    SessionId::new(s).expect("valid session id")
}

async fn send(s: &SessionHandle<WasmHandler>, seq: u64, v: Value) -> Result<Value, HandlerError> {
    match s
        .send(Seq(seq), v)
        .await
        .expect("the session accepts the input")
    {
        Reply::Processed { output, .. } => output,
        r => panic!("seq {seq}: {r:?}"),
    }
}

/// An agent of the examples as a 0.2.0 package, on `rt`.
fn effects_agent(rt: &opengrid_wasm::Runtime, agent: &str) -> Arc<WasmHandler> {
    let bytes = package_declaring(agent, "opengrid:agent@0.2.0").to_bytes();
    Arc::new(WasmHandler::new(rt.load_bytes(&bytes, None).unwrap()))
}

/// The `ok` of step `i` of an effects-rs answer (panics with the answer on an `err`).
fn ok(out: &Value, i: usize) -> &Value {
    out["results"][i]
        .get("ok")
        .unwrap_or_else(|| panic!("step {i} failed: {out}"))
}

/// The `err` of step `i` of an effects-rs answer: (code, message).
fn err(out: &Value, i: usize) -> (String, String) {
    let e = &out["results"][i]["err"];
    assert!(e.is_object(), "step {i} did not fail: {out}");
    (
        e["code"].as_str().unwrap().to_string(),
        e["message"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_reaches_the_server_with_its_idempotency_key() {
    let (addr, seen) = server().await;
    let cache = tempfile::tempdir().unwrap();
    let rt = runtime(cache.path());
    let effects = effects_agent(&rt, "effects-rs");
    // A 0.1.0 agent on the same runtime and host.
    let counter = Arc::new(WasmHandler::new(
        rt.load_bytes(&package("counter-rs").to_bytes(), None)
            .unwrap(),
    ));
    let host = host_with(memory_store(), LocalEgress::services(&[&addr])).await;
    let policy = CheckpointPolicy::synchronous();
    let s = host
        .start(effects, sid("fx"), Epoch(1), policy)
        .await
        .unwrap();
    let c = host
        .start(counter, sid("count"), Epoch(1), policy)
        .await
        .unwrap();
    let url = format!("http://{addr}/echo");
    let out = send(
        &s,
        1,
        json!({"steps": [
            "now",
            "random",
            {"fetch": {"url": url, "headers": [["Idempotency-Key", "forged"], ["x-agent", "effects-rs"]]}},
            "state",
        ]}),
    )
    .await
    .unwrap();
    let (now, random) = (ok(&out, 0).clone(), ok(&out, 1).clone());
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(now.as_u64().unwrap().abs_diff(now_ms) < 60_000, "{out}");
    assert!(random.is_u64(), "{out}");
    let fetched = ok(&out, 2);
    assert_eq!(fetched["status"], 200, "{out}");
    let answer: Value = serde_json::from_str(fetched["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        answer["key"], "fx:1:2",
        "the node's key (session:seq:index) replaced the agent's"
    );
    assert_eq!(answer["n"], 1);
    // The body the agent sent: what it saw before the request.
    let sent: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent, json!([{"ok": now}, {"ok": random}]));
    let init_now = ok(&out, 3)["init_now"].as_str().unwrap();
    assert!(
        init_now.starts_with("effect_outside_input: `now-ms` was called in init"),
        "effects are refused in init: {init_now}"
    );
    assert_eq!(out["inputs"], 1);
    assert_eq!(count(&seen, "forged"), 0);
    // The 0.1.0 agent answers beside it.
    assert_eq!(send(&c, 1, json!(5)).await.unwrap(), json!(5));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_after_an_effect_keeps_the_state_and_sends_once() {
    let (addr, seen) = server().await;
    let cache = tempfile::tempdir().unwrap();
    let rt = runtime(cache.path());
    let host = host_with(memory_store(), LocalEgress::services(&[&addr])).await;
    let s = host
        .start(
            effects_agent(&rt, "effects-rs"),
            sid("tr"),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    let url = format!("http://{addr}/echo");
    let e = send(&s, 1, json!({"steps": [{"fetch": {"url": url}}, "trap"]}))
        .await
        .unwrap_err();
    assert_eq!(e.code, "agent_trap", "{e}");
    assert_eq!(count(&seen, "tr:1:0"), 1);
    let out = send(&s, 2, json!({"steps": [{"fetch": {"url": url}}, "state"]}))
        .await
        .unwrap();
    assert_eq!(ok(&out, 1)["inputs"], 0, "the trapped input left no trace");
    assert_eq!(out["inputs"], 1);
    assert_eq!(count(&seen, "tr:2:0"), 1);
    host.shutdown().await;
}

/// The holder is stuck in its fourth effect, a request the server does not answer (as good as
/// killed); another host takes the session over with a newer epoch from the shared store — what
/// a failover does with the replicas — and the client's retry of the input gets the recorded
/// random number, time and answer; only the request that was cut off is sent again, with the
/// same key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_after_the_effects_replays_their_results() {
    let (addr, seen) = server().await;
    let cache = tempfile::tempdir().unwrap();
    let rt = runtime(cache.path());
    let handler = effects_agent(&rt, "effects-rs");
    let services = LocalEgress::services(&[&addr]);
    let store = memory_store();
    let id = sid("fo");
    let a = host_with(store.clone(), services.clone()).await;
    let s = a
        .start(
            handler.clone(),
            id.clone(),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    assert_eq!(
        send(&s, 1, json!({"steps": ["now"]})).await.unwrap()["inputs"],
        1
    );
    let input = json!({"steps": [
        "random",
        "now",
        {"fetch": {"url": format!("http://{addr}/echo")}},
        {"fetch": {"url": format!("http://{addr}/hang")}},
    ]});
    let stuck = tokio::spawn({
        let (s, input) = (s.clone(), input.clone());
        async move { send(&s, 2, input).await }
    });
    // The fourth effect started: the first three are durable (written before it starts).
    wait_for_key(&seen, "fo:2:3").await;
    let latest = store.get_latest(&id).unwrap().unwrap();
    assert_eq!(latest.seq, Seq(1));
    assert!(
        opengrid_actors::record::decode(latest.seq, &latest.journal)
            .1
            .is_some(),
        "the journal is written"
    );

    let b = host_with(store.clone(), services).await;
    let s2 = b
        .start(
            handler,
            id.clone(),
            Epoch(2),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    let out = send(&s2, 2, input).await.unwrap();
    // What the first holder sent in its request: the random number and time it saw.
    let first_saw: Value = serde_json::from_str(&seen.lock().unwrap().bodies["fo:2:2"]).unwrap();
    assert_eq!(
        first_saw,
        json!([{"ok": ok(&out, 0)}, {"ok": ok(&out, 1)}]),
        "the retry saw the recorded random number and time: {out}"
    );
    let echo: Value = serde_json::from_str(ok(&out, 2)["body"].as_str().unwrap()).unwrap();
    assert_eq!(echo["n"], 1, "the recorded answer: {out}");
    assert_eq!(
        count(&seen, "fo:2:2"),
        1,
        "the completed request was not sent again"
    );
    assert_eq!(
        count(&seen, "fo:2:3"),
        2,
        "the request cut off was sent again, with the same key"
    );
    assert_eq!(ok(&out, 3)["status"], 200);
    assert_eq!(out["inputs"], 2);
    // Its checkpoint covers the input: the journal is gone (the answers stay, for retries).
    let latest = store.get_latest(&id).unwrap().unwrap();
    let pending = opengrid_actors::record::decode(latest.seq, &latest.journal).1;
    assert_eq!((latest.seq, pending.is_none()), (Seq(2), true));
    stuck.abort();
    b.shutdown().await;
}

/// Time spent waiting for an effect does not count against the input's deadline (a model may
/// take a minute); the guest's own time does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_effect_does_not_run_the_input_out_of_time() {
    let (addr, seen) = server().await;
    let cache = tempfile::tempdir().unwrap();
    let rt = runtime(cache.path());
    let host = host_with(memory_store(), LocalEgress::services(&[&addr])).await;
    let s = host
        .start(
            effects_agent(&rt, "effects-rs"),
            sid("sl"),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    let out = send(
        &s,
        1,
        json!({"steps": [{"fetch": {"url": format!("http://{addr}/slow")}}]}),
    )
    .await
    .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(2500));
    assert_eq!(ok(&out, 0)["status"], 200, "{out}");
    assert_eq!(count(&seen, "sl:1:0"), 1);
    host.shutdown().await;
}

/// Effects replayed in another order than recorded are refused, not misattributed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_in_another_order_is_nondeterministic() {
    let (addr, seen) = server().await;
    let cache = tempfile::tempdir().unwrap();
    let rt = runtime(cache.path());
    let handler = effects_agent(&rt, "effects-rs");
    let services = LocalEgress::services(&[&addr]);
    let store = memory_store();
    let id = sid("nd");
    let a = host_with(store.clone(), services.clone()).await;
    let s = a
        .start(
            handler.clone(),
            id.clone(),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    send(&s, 1, json!({"steps": []})).await.unwrap();
    let stuck = tokio::spawn({
        let s = s.clone();
        let input = json!({"steps": ["now", {"fetch": {"url": format!("http://{addr}/hang")}}]});
        async move { send(&s, 2, input).await }
    });
    wait_for_key(&seen, "nd:2:1").await;
    let b = host_with(store.clone(), services).await;
    let s2 = b
        .start(handler, id, Epoch(2), CheckpointPolicy::synchronous())
        .await
        .unwrap();
    let out = send(&s2, 2, json!({"steps": ["random"]})).await.unwrap();
    let (code, message) = err(&out, 0);
    assert_eq!(code, "nondeterministic", "{message}");
    stuck.abort();
    b.shutdown().await;
}

/// What a guest hands the imports cannot hurt the node: malformed, oversized or forbidden
/// requests come back as typed errors (code `fetch`), nothing reaches the server, and the session
/// keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_typed_errors() {
    let (addr, seen) = server().await;
    let cache = tempfile::tempdir().unwrap();
    let rt = runtime(cache.path());
    let host = host_with(memory_store(), LocalEgress::services(&[&addr])).await;
    let s = host
        .start(
            effects_agent(&rt, "effects-rs"),
            sid("hx"),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    let echo = format!("http://{addr}/echo");
    let many: Vec<Value> = (0..129).map(|i| json!([format!("x-{i}"), "v"])).collect();
    let cases = [
        (json!({"url": "not a url"}), "url \"not a url\""),
        (
            json!({"url": format!("ftp://{addr}/x")}),
            "only http and https",
        ),
        (json!({"url": "http://example.invalid/x"}), "not among"),
        (json!({"url": "http://127.0.0.1:1/x"}), "not among"),
        (json!({"url": echo, "method": "GET /"}), "method"),
        (json!({"url": echo, "method": ""}), "method"),
        (
            json!({"url": echo, "headers": [["x", "a\r\nInjected: 1"]]}),
            "control character",
        ),
        (
            json!({"url": echo, "headers": [["bad name", "v"]]}),
            "header name",
        ),
        (json!({"url": echo, "headers": many}), "129 headers"),
        (
            json!({"url": format!("{echo}?{}", "x".repeat(9000))}),
            "the url is",
        ),
        (
            json!({"url": echo, "body_len": (16 << 20) + 1}),
            "the body is",
        ),
    ];
    let steps: Vec<Value> = cases.iter().map(|(f, _)| json!({"fetch": f})).collect();
    let out = send(&s, 1, json!({ "steps": steps })).await.unwrap();
    for (i, (_, expected)) in cases.iter().enumerate() {
        let (code, message) = err(&out, i);
        assert_eq!(code, "fetch", "case {i}: {message}");
        assert!(
            message.contains(expected),
            "case {i}: {message:?} does not say {expected:?}"
        );
    }
    assert!(
        seen.lock().unwrap().counts.is_empty(),
        "nothing reached the server"
    );
    // An error returned as the agent's own keeps the node's code; the state stays.
    let e = send(
        &s,
        2,
        json!({"steps": [{"fetch": {"url": "http://example.invalid/"}}], "propagate": true}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, "fetch", "{e}");
    let out = send(&s, 3, json!({"steps": ["state"]})).await.unwrap();
    assert_eq!(ok(&out, 0)["inputs"], 1);
    // A session with no egress at all.
    let bare = common::host(memory_store()).await;
    let s = bare
        .start(
            effects_agent(&rt, "effects-rs"),
            sid("bare"),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    let out = send(&s, 1, json!({"steps": [{"fetch": {"url": echo}}, "now"]}))
        .await
        .unwrap();
    assert_eq!(err(&out, 0).0, "fetch");
    assert!(ok(&out, 1).is_u64(), "other effects still run: {out}");
    bare.shutdown().await;
    host.shutdown().await;
}

/// A Python agent calls the same imports through componentize-py's bindings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_agent_calls_the_effects() {
    let (addr, seen) = server().await;
    let cache = tempfile::tempdir().unwrap();
    let rt = runtime(cache.path());
    let host = host_with(memory_store(), LocalEgress::services(&[&addr])).await;
    let s = host
        .start(
            effects_agent(&rt, "effects-py"),
            sid("py"),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    let out = send(&s, 1, json!({"url": format!("http://{addr}/echo")}))
        .await
        .unwrap();
    assert_eq!(out["status"], 200, "{out}");
    let answer: Value = serde_json::from_str(out["body"].as_str().unwrap()).unwrap();
    assert_eq!(answer["key"], "py:1:2", "{out}");
    let sent: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        sent,
        json!({"now": out["now"], "random": out["random"], "source": {"client": 1}})
    );
    assert!(
        out["init_now"]
            .as_str()
            .unwrap()
            .starts_with("effect_outside_input"),
        "{out}"
    );
    assert_eq!(count(&seen, "py:1:2"), 1);
    let e = send(&s, 2, json!({"url": "http://example.invalid/"}))
        .await
        .unwrap_err();
    assert_eq!(e.code, "fetch", "{e}");
    assert!(e.message.contains("not among"), "{e}");
    let out = send(&s, 3, json!({"emit": ["a", "b"]})).await.unwrap();
    assert_eq!(
        (&out["inputs"], &out["offsets"], &out["source"]),
        (&json!(2), &json!([0, 1]), &json!({"client": 3})),
        "{out}"
    );
    let stream = s.stream(Seq(3), 0, Duration::from_secs(5)).await.unwrap();
    assert_eq!(stream.chunks, vec!["a", "b"]);
    // A timer brings `{}` back; the input it sends counts, with the timer as its source.
    let out = send(&s, 4, json!({"after_ms": 10})).await.unwrap();
    assert!(out["timer"].is_string(), "{out}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seq = 4;
    loop {
        seq += 1;
        let out = send(&s, seq, json!({})).await.unwrap();
        // Client inputs so far: 2 (seq 1 failed), 3, 4, and the polls; the timer's adds one.
        if out["inputs"].as_u64() == Some(seq) {
            break;
        }
        assert!(Instant::now() < deadline, "the timer never fired: {out}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    host.shutdown().await;
}

/// The assistant example: turns call a chat-completions endpoint, one request per turn, with the
/// conversation so far, a recorded seed, and the endpoint given once; the answer is streamed word
/// by word; a reminder comes back through a timer; a turn delegated to another assistant session
/// is answered by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_assistant_calls_its_model_once_per_turn() {
    let (addr, seen) = server().await;
    let cache = tempfile::tempdir().unwrap();
    let rt = runtime(cache.path());
    let calls = Arc::new(LocalCalls::default());
    let services = LocalEgress::services(&[&addr]).with(CallService(calls.clone()));
    let host = host_with(memory_store(), services).await;
    let assistant = effects_agent(&rt, "assistant-rs");
    let policy = CheckpointPolicy::synchronous();
    let s = host
        .start(assistant.clone(), sid("as"), Epoch(1), policy)
        .await
        .unwrap();
    let e = send(&s, 1, json!({"user": "hello"})).await.unwrap_err();
    assert_eq!(e.code, "no_model_endpoint", "{e}");
    let model_url = format!("http://{addr}/v1");
    let out = send(
        &s,
        2,
        json!({"user": "hello there", "model_url": model_url}),
    )
    .await
    .unwrap();
    assert_eq!(out["answer"], "echo: hello there", "{out}");
    assert_eq!(out["turn"], 1);
    let stream = s.stream(Seq(2), 0, Duration::from_secs(5)).await.unwrap();
    assert_eq!(stream.chunks, vec!["echo: ", "hello ", "there"]);
    let out = send(&s, 3, json!({"user": "again"})).await.unwrap();
    assert_eq!(
        (out["answer"].as_str(), out["turn"].as_u64()),
        (Some("echo: again"), Some(2))
    );
    // Effects 0 and 1 are the time and the seed; the request is effect 2.
    assert_eq!((count(&seen, "as:2:2"), count(&seen, "as:3:2")), (1, 1));
    let sent: Value = serde_json::from_str(&seen.lock().unwrap().bodies["as:3:2"]).unwrap();
    assert_eq!(sent["messages"].as_array().unwrap().len(), 3, "{sent}");
    assert!(sent["seed"].is_u64(), "{sent}");

    // A reminder comes back through a timer and joins the conversation.
    let out = send(&s, 4, json!({"remind": "water the plants", "in_ms": 20}))
        .await
        .unwrap();
    assert!(out["timer"].is_string(), "{out}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seq = 4;
    loop {
        seq += 1;
        let h = send(&s, seq, json!({"history": true})).await.unwrap();
        let last = h["messages"].as_array().unwrap().last().unwrap().clone();
        if last["content"] == "(reminder) water the plants" {
            break;
        }
        assert!(Instant::now() < deadline, "the reminder never came: {h}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // A turn delegated to another assistant session.
    let other = host
        .start(assistant, sid("as2"), Epoch(1), policy)
        .await
        .unwrap();
    send(&other, 1, json!({"user": "hi", "model_url": model_url}))
        .await
        .unwrap();
    calls
        .sessions
        .lock()
        .unwrap()
        .insert("as2".into(), Arc::new(other));
    seq += 1;
    let out = send(&s, seq, json!({"user": "what now?", "delegate": "as2"}))
        .await
        .unwrap();
    assert_eq!(out["answer"], "echo: what now?", "{out}");
    host.shutdown().await;
}

/// Streamed chunks reach the input's stream, a call reaches another session (a 0.1.0 agent) and
/// answers, a timer fires with its input and knows it came from the timer, a cancelled one does
/// not fire; oversized or out-of-range arguments get typed errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_calls_and_timers_reach_their_destinations() {
    let (addr, seen) = server().await;
    let cache = tempfile::tempdir().unwrap();
    let rt = runtime(cache.path());
    let calls = Arc::new(LocalCalls::default());
    let services = LocalEgress::services(&[&addr]).with(CallService(calls.clone()));
    let host = host_with(memory_store(), services).await;
    let policy = CheckpointPolicy::synchronous();
    let s = host
        .start(
            effects_agent(&rt, "effects-rs"),
            sid("cl"),
            Epoch(1),
            policy,
        )
        .await
        .unwrap();
    let counter = Arc::new(WasmHandler::new(
        rt.load_bytes(&package("counter-rs").to_bytes(), None)
            .unwrap(),
    ));
    let total = host
        .start(counter, sid("total"), Epoch(1), policy)
        .await
        .unwrap();
    calls
        .sessions
        .lock()
        .unwrap()
        .insert("total".into(), Arc::new(total.clone()));

    let out = send(
        &s,
        1,
        json!({"steps": [
            {"emit": "a"},
            {"emit": "b"},
            {"call": {"target": "total", "input": 5}},
            {"call": {"target": "total", "input": 2}},
            "source",
        ]}),
    )
    .await
    .unwrap();
    assert_eq!(
        (0..5).map(|i| ok(&out, i).clone()).collect::<Vec<_>>(),
        vec![json!(0), json!(1), json!(5), json!(7), json!({"client": 1})],
        "{out}"
    );
    let stream = s.stream(Seq(1), 0, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (stream.chunks, stream.done),
        (vec!["a".to_string(), "b".to_string()], true)
    );

    // Two timers; the second is cancelled by the next input.
    let fired = json!({"steps": ["source", {"fetch": {"url": format!("http://{addr}/echo")}}]});
    let out = send(
        &s,
        2,
        json!({"steps": [
            {"schedule": {"after_ms": 50, "input": fired}},
            {"schedule": {"after_ms": 600_000, "input": fired}},
        ]}),
    )
    .await
    .unwrap();
    let (first, second) = (
        ok(&out, 0).as_str().unwrap().to_string(),
        ok(&out, 1).as_str().unwrap().to_string(),
    );
    let out = send(
        &s,
        3,
        json!({"steps": [{"cancel": second}, {"cancel": second}, {"cancel": "nope"}]}),
    )
    .await
    .unwrap();
    assert_eq!(
        (ok(&out, 0), ok(&out, 1), ok(&out, 2)),
        (&json!(true), &json!(false), &json!(false)),
        "{out}"
    );
    // The first timer's input runs: its fetch (effect 0 of the timer's input) reaches the server
    // with what the agent saw before it, the timer as its source.
    let key = format!("cl:t{first}:0");
    wait_for_key(&seen, &key).await;
    let sent: Value = serde_json::from_str(&seen.lock().unwrap().bodies[&key]).unwrap();
    assert_eq!(sent, json!([{"ok": {"timer": first}}]));
    assert_eq!(count(&seen, &format!("cl:t{second}:0")), 0, "cancelled");

    // Arguments over the bounds.
    let out = send(
        &s,
        4,
        json!({"steps": [
            {"emit": "x".repeat((1 << 20) + 1)},
            {"schedule": {"after_ms": 1, "input": "x".repeat(64 << 10)}},
            {"call": {"target": "total", "input": 1, "deadline_ms": 301_000}},
            {"call": {"target": "x".repeat(17 << 10), "input": 1}},
            {"cancel": "x".repeat(5 << 10)},
        ]}),
    )
    .await
    .unwrap();
    for (i, code, says) in [
        (0, "emit", "over"),
        (1, "schedule", "over"),
        (2, "call", "deadline"),
        (3, "call", "target"),
        (4, "cancel", "timer id"),
    ] {
        let (c, m) = err(&out, i);
        assert_eq!(c, code, "step {i}: {m}");
        assert!(m.contains(says), "step {i}: {m:?} does not say {says:?}");
    }
    // The callee was called twice, exactly.
    assert_eq!(send(&total, 1, json!(0)).await.unwrap(), json!(7));
    host.shutdown().await;

    // A node without session calls.
    let bare = common::host(memory_store()).await;
    let s = bare
        .start(
            effects_agent(&rt, "effects-rs"),
            sid("alone"),
            Epoch(1),
            CheckpointPolicy::synchronous(),
        )
        .await
        .unwrap();
    let out = send(
        &s,
        1,
        json!({"steps": [{"call": {"target": "total", "input": 1}}]}),
    )
    .await
    .unwrap();
    let (code, message) = err(&out, 0);
    assert_eq!(code, "call", "{message}");
    bare.shutdown().await;
}

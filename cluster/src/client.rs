//! A small Rust client of the session API.
//!
//! [`Client::create`] asks the RC to place a session and returns a [`Session`] bound to the
//! serving node. [`Session::send`] numbers inputs, keeps every unacknowledged one, and:
//! - on `moved` (307) switches to the new node and replays the unacknowledged inputs in order;
//! - on a retryable error (429, 503: overloaded, restarting, node lost its lease) or a network
//!   error, asks the RC where the session lives now and retries until a deadline;
//! - never resends an acknowledged input; a retried one is answered with its first answer
//!   (`kind: duplicate`, `output`; ADR 0035), nothing runs twice.
//!
//! Authorization (ADR 0026): a [`Session`] sends its capability (returned by the placement) as a
//! bearer token on every request; a client made [`Client::with_token`] (an operator token) sends
//! that on its own requests (`/status`, lookups) and for sessions that have no capability.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use serde::Deserialize;
use serde_json::Value;

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Error code.
        code: String,
        /// Message.
        message: String,
        /// Full body.
        body: Value,
    },
    /// Network or protocol failure.
    #[error("http: {0}")]
    Http(String),
    /// Gave up retrying.
    #[error("gave up after {0:?}: {1}")]
    Timeout(Duration, String),
}

impl From<reqwest::Error> for ClientError {
    fn from(e: reqwest::Error) -> Self {
        ClientError::Http(e.to_string())
    }
}

/// Where a session was placed.
#[derive(Clone, Debug, Deserialize)]
pub struct Placement {
    /// Session id.
    pub session_id: String,
    /// Node DID.
    pub node: String,
    /// Node name.
    pub node_name: String,
    /// Node API base URL.
    pub address: String,
    /// Epoch.
    pub epoch: u64,
    /// The session's capability: the bearer token its requests need.
    #[serde(default)]
    pub capability: Option<String>,
}

/// The durability part of a `processed` reply (`{kind, seq, output|error, durable, copies,
/// not_durable?}`): read it with [`Durability::of`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Durability {
    /// The input's seq.
    pub seq: u64,
    /// Whether the state including the input is durable (synced and on at least the session's
    /// `min_copies` copies beyond the holder).
    pub durable: bool,
    /// Copies beyond the holder's own of the checkpoint covering the input.
    #[serde(default)]
    pub copies: u32,
    /// Why `durable` is false, when it is.
    #[serde(default)]
    pub not_durable: Option<String>,
}

impl Durability {
    /// Reads it from a reply of [`Session::send`]; `None` for a reply that is not `processed`.
    pub fn of(reply: &Value) -> Option<Self> {
        if reply.get("kind").and_then(Value::as_str) != Some("processed") {
            return None;
        }
        serde_json::from_value(reply.clone()).ok()
    }
}

/// A client of one colony.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    rc: String,
    /// Every RC of the colony's RC group (`rc` first); requests for the RC go to the one last
    /// found leading.
    rcs: std::sync::Arc<Vec<String>>,
    /// Index in `rcs` of the RC requests go to.
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Operator token sent on the client's own requests (and for sessions without a capability).
    token: Option<String>,
    /// How long one input may be retried.
    pub retry_for: Duration,
}

fn bearer(rb: reqwest::RequestBuilder, token: Option<&str>) -> reqwest::RequestBuilder {
    match token {
        Some(t) => rb.bearer_auth(t),
        None => rb,
    }
}

async fn answer(r: reqwest::Response) -> Result<Value, ClientError> {
    let status = r.status().as_u16();
    let text = r.text().await?;
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if (200..300).contains(&status) {
        return Ok(body);
    }
    Err(ClientError::Api {
        status,
        code: body
            .get("code")
            .and_then(|c| c.as_str())
            .unwrap_or("")
            .to_string(),
        message: body
            .get("message")
            .and_then(|c| c.as_str())
            .unwrap_or("")
            .to_string(),
        body,
    })
}

impl Client {
    /// A client of the RC at `rc` (base URL, e.g. `http://127.0.0.1:7600`); for an RC group
    /// (ADR 0037), every replica's, comma separated: requests for the RC follow a follower's
    /// `not_leader` redirect, and move to the next replica while one is unreachable or has no
    /// leader, until [`Client::retry_for`] has passed.
    pub fn new(rc: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .pool_idle_timeout(crate::common::serve::CLIENT_POOL_IDLE)
            .build()
            .unwrap_or_default();
        let rc: String = rc.into();
        let rcs: Vec<String> = rc
            .split(',')
            .map(|r| r.trim().trim_end_matches('/').to_string())
            .filter(|r| !r.is_empty())
            .collect();
        Client {
            http,
            rc: rcs.first().cloned().unwrap_or_default(),
            rcs: std::sync::Arc::new(rcs),
            current: Default::default(),
            token: None,
            retry_for: Duration::from_secs(10),
        }
    }

    /// The same client with `timeout` per request instead of 10 s (creating a session of an
    /// agent a node has not run yet waits for its fetch and compile: seconds for Python).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .pool_idle_timeout(crate::common::serve::CLIENT_POOL_IDLE)
            .build()
            .unwrap_or_default();
        self
    }

    /// The same client sending `token` (an operator token, `opengrid token operator`).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// GET a JSON document from the RC (e.g. `/status`, which needs an operator token).
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.get_as(path, self.token.as_deref()).await
    }

    async fn get_as(&self, path: &str, token: Option<&str>) -> Result<Value, ClientError> {
        self.to_rc(|base| bearer(self.http.get(format!("{base}{path}")), token))
            .await
    }

    /// Whether the RC at `base` accepts connections (its `/health` answers within 500 ms).
    async fn reachable(&self, base: &str) -> bool {
        self.http
            .get(format!("{base}/health"))
            .timeout(Duration::from_millis(500))
            .send()
            .await
            .is_ok()
    }

    /// The RC requests go to now.
    fn rc_base(&self) -> String {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        self.rcs
            .get(i % self.rcs.len().max(1))
            .cloned()
            .unwrap_or_else(|| self.rc.clone())
    }

    /// Sends a request for the RC (`build` makes it for a base URL) and reads its answer. With
    /// an RC group: a follower's `307 not_leader` is followed to the leader it names; an RC that
    /// cannot be connected to (nothing was sent) or has no leader (`503 no_leader`) is left for
    /// the next, until `retry_for` has passed. Nothing is sent twice that an RC may have acted
    /// on.
    async fn to_rc(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<Value, ClientError> {
        use std::sync::atomic::Ordering;
        let deadline = std::time::Instant::now() + self.retry_for;
        let mut base = self.rc_base();
        loop {
            let last_try = std::time::Instant::now() >= deadline;
            let alone = self.rcs.len() < 2;
            let next = |base: &str| {
                let i = self.rcs.iter().position(|r| r == base).map_or(0, |i| i + 1);
                self.current.store(i % self.rcs.len(), Ordering::Relaxed);
                self.rc_base()
            };
            let r = match build(&base).send().await {
                Err(e) if e.is_connect() && !last_try && !alone => {
                    base = next(&base);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                // A kept-alive connection to an RC that died under it: the request may have
                // reached it, but that RC no longer exists (its successor has what it
                // committed). Only when it is really gone: a live RC's error is the answer.
                Err(e) if !last_try && !alone && !self.reachable(&base).await => {
                    tracing::debug!(rc = %base, error = %e, "the RC went away: trying the next");
                    base = next(&base);
                    continue;
                }
                Err(e) => return Err(e.into()),
                Ok(r) => r,
            };
            match answer(r).await {
                Err(ClientError::Api {
                    status: 307,
                    code,
                    body,
                    ..
                }) if code == "not_leader" && !last_try => {
                    let leader = body["location"].as_str().unwrap_or_default();
                    match self.rcs.iter().position(|r| r == leader) {
                        Some(i) => {
                            self.current.store(i, Ordering::Relaxed);
                            base = leader.to_string();
                        }
                        // A leader this client was not given: follow it there.
                        None if leader.starts_with("http") => base = leader.to_string(),
                        None => base = next(&base),
                    }
                }
                Err(ClientError::Api {
                    status: 503, code, ..
                }) if code == "no_leader" && !last_try => {
                    base = next(&base);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                // A new leader whose members have not rejoined it yet (nothing was placed).
                Err(ClientError::Api {
                    status: 503, code, ..
                }) if code == "rejoining" && std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    /// Sends `body` (JSON, or nothing) with `method` to `path` at the RC; the JSON answer.
    pub async fn request_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        self.to_rc(|base| {
            let rb = bearer(
                self.http.request(method.clone(), format!("{base}{path}")),
                self.token.as_deref(),
            );
            match &body {
                Some(b) => rb.json(b),
                None => rb,
            }
        })
        .await
    }

    /// POST `body` (raw bytes, e.g. a signed agent package) to the RC; waits up to `timeout`
    /// (a push compile-checks the package at the RC: seconds for a Python agent).
    pub async fn post_bytes(
        &self,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        self.send_bytes(reqwest::Method::POST, path, body, timeout)
            .await
    }

    /// Sends `body` (`application/octet-stream`) with `method` to `path`; the JSON answer.
    pub async fn send_bytes(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        self.to_rc(|base| {
            bearer(
                self.http.request(method.clone(), format!("{base}{path}")),
                self.token.as_deref(),
            )
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .timeout(timeout)
            .body(body.clone())
        })
        .await
    }

    /// Places a session from a manifest (TOML or JSON text).
    pub async fn create(
        &self,
        manifest: &str,
        session_id: Option<&str>,
    ) -> Result<Session, ClientError> {
        let query = session_id
            .map(|id| format!("?session_id={id}"))
            .unwrap_or_default();
        let ct = if manifest.trim_start().starts_with('{') {
            "application/json"
        } else {
            "application/toml"
        };
        let body = self
            .to_rc(|base| {
                bearer(
                    self.http.post(format!("{base}/v1/sessions{query}")),
                    self.token.as_deref(),
                )
                .header("content-type", ct)
                .body(manifest.to_string())
            })
            .await?;
        let p: Placement =
            serde_json::from_value(body).map_err(|e| ClientError::Http(e.to_string()))?;
        Ok(Session {
            client: self.clone(),
            id: p.session_id.clone(),
            address: p.address.clone(),
            capability: p.capability.clone(),
            placement: p,
            next_seq: 1,
            unacked: VecDeque::new(),
            moves: 0,
            lost: 0,
        })
    }

    /// A handle on an existing session, starting at the RC (the first input is answered `moved`
    /// and followed); `capability` is the session's (or `None` with an operator token);
    /// `next_seq` is the seq of the next input to send.
    pub fn attach(&self, id: &str, capability: Option<&str>, next_seq: u64) -> Session {
        Session {
            client: self.clone(),
            id: id.to_string(),
            address: self.rc_base(),
            capability: capability.map(str::to_string),
            placement: Placement {
                session_id: id.to_string(),
                node: String::new(),
                node_name: String::new(),
                address: self.rc_base(),
                epoch: 0,
                capability: capability.map(str::to_string),
            },
            next_seq: next_seq.max(1),
            unacked: VecDeque::new(),
            moves: 0,
            lost: 0,
        }
    }

    /// Where the RC says a session lives: `(address, epoch)` (with the client's operator token).
    pub async fn locate(&self, id: &str) -> Result<(String, u64), ClientError> {
        self.locate_as(id, self.token.as_deref()).await
    }

    async fn locate_as(&self, id: &str, token: Option<&str>) -> Result<(String, u64), ClientError> {
        let v = self.get_as(&format!("/v1/sessions/{id}"), token).await?;
        let addr = v
            .get("address")
            .and_then(|a| a.as_str())
            .unwrap_or_default()
            .to_string();
        let epoch = v.get("epoch").and_then(|a| a.as_u64()).unwrap_or(0);
        Ok((addr, epoch))
    }
}

/// A fenced or stopped holder is not the session's current holder (a failover superseded its
/// epoch): the input was not acknowledged there, so the client asks the RC where the session
/// lives now and replays there by seq.
fn stale_holder(e: &ClientError) -> bool {
    matches!(e, ClientError::Api { status: 409, code, .. } if code == "fenced")
        || matches!(e, ClientError::Api { status: 410, .. })
}

/// A session seen from the client.
#[derive(Debug)]
pub struct Session {
    client: Client,
    /// Session id.
    pub id: String,
    /// Current node API base URL.
    pub address: String,
    /// The session's capability (bearer token of its requests).
    pub capability: Option<String>,
    /// The placement answer.
    pub placement: Placement,
    next_seq: u64,
    unacked: VecDeque<(u64, Value)>,
    /// How many `moved` redirects were followed.
    pub moves: u32,
    /// Acknowledged inputs the session lost when it was restored from an older checkpoint
    /// (bounded-loss sessions after a failover; within the manifest's bound).
    pub lost: u64,
}

impl Session {
    /// The token this session's requests carry: its capability, else the client's.
    fn token(&self) -> Option<&str> {
        self.capability.as_deref().or(self.client.token.as_deref())
    }

    /// Inputs sent but not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// Sends one input; returns the reply (`{kind, seq, output|error, durable, copies,
    /// not_durable?}`; [`Durability::of`] reads the durability fields).
    pub async fn send(&mut self, input: Value) -> Result<Value, ClientError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.unacked.push_back((seq, input));
        self.drive(seq).await
    }

    /// Delivers the unacknowledged inputs up to `seq` in order; the reply to `seq`.
    async fn drive(&mut self, mut seq: u64) -> Result<Value, ClientError> {
        let deadline = Instant::now() + self.client.retry_for;
        let mut last_err = String::new();
        'outer: while Instant::now() < deadline {
            // Replay everything unacknowledged, oldest first, up to `seq`.
            let pending: Vec<(u64, Value)> = self
                .unacked
                .iter()
                .filter(|(u, _)| *u <= seq)
                .cloned()
                .collect();
            for (s, v) in pending {
                let url = format!("{}/v1/sessions/{}/inputs", self.address, self.id);
                let r = bearer(self.client.http.post(url), self.token())
                    .json(&serde_json::json!({"seq": s, "input": v}))
                    .send()
                    .await;
                let r = match r {
                    Ok(r) => answer(r).await,
                    Err(e) => Err(ClientError::from(e)),
                };
                match r {
                    Ok(reply) => {
                        while self.unacked.front().is_some_and(|(u, _)| *u <= s) {
                            self.unacked.pop_front();
                        }
                        // Relayed by the old holder after a handover: go to the new one next.
                        if let Some(loc) = reply.get("moved_to").and_then(|l| l.as_str()) {
                            self.address = loc.trim_end_matches('/').to_string();
                            self.moves += 1;
                        }
                        if s == seq {
                            return Ok(reply);
                        }
                    }
                    Err(ClientError::Api {
                        status: 307, body, ..
                    }) => {
                        if let Some(loc) = body.get("location").and_then(|l| l.as_str()) {
                            self.address = loc.trim_end_matches('/').to_string();
                            self.moves += 1;
                        }
                        continue 'outer;
                    }
                    Err(ClientError::Api {
                        status,
                        ref message,
                        ..
                    }) if status == 429 || status == 503 => {
                        last_err = format!("{status}: {message}");
                        self.relocate().await;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue 'outer;
                    }
                    Err(ClientError::Api {
                        status: 409,
                        ref body,
                        ..
                    }) if body.get("code").and_then(|c| c.as_str()) == Some("seq_gap")
                        && body
                            .get("expected")
                            .and_then(|e| e.as_u64())
                            .is_some_and(|e| e >= 1 && e < s) =>
                    {
                        // The session was restored from a checkpoint older than inputs we had
                        // acknowledged (a bounded-loss session after a failover: the loss its
                        // manifest accepts). Renumber what is unacknowledged from where the
                        // session stands, and count the loss.
                        let expected = body["expected"].as_u64().unwrap_or(1);
                        let shift = s - expected;
                        self.lost += shift;
                        for (u, _) in self.unacked.iter_mut() {
                            *u -= shift;
                        }
                        self.next_seq -= shift;
                        seq -= shift;
                        tracing::warn!(session = %self.id, lost = shift, "session resumed from an older checkpoint (within its loss bound)");
                        continue 'outer;
                    }
                    // A fenced or stopped holder is not the session's current holder (its
                    // epoch was superseded by a failover): the input was not acknowledged there,
                    // so ask the RC where the session lives now and replay there by seq.
                    Err(e) if stale_holder(&e) => {
                        let before = self.address.clone();
                        self.relocate().await;
                        if self.address == before {
                            self.unacked.retain(|(u, _)| *u != s);
                            return Err(e);
                        }
                        continue 'outer;
                    }
                    Err(ClientError::Http(m)) => {
                        last_err = m;
                        self.relocate().await;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue 'outer;
                    }
                    Err(e) => {
                        // Not retryable: the input is dropped from the replay queue.
                        self.unacked.retain(|(u, _)| *u != s);
                        return Err(e);
                    }
                }
            }
        }
        Err(ClientError::Timeout(self.client.retry_for, last_err))
    }

    /// Sends one input and streams its reply (ADR 0033): `on_chunk(offset, chunk)` is called
    /// once per chunk, in order, then the reply is returned (as [`send`](Self::send) returns it,
    /// plus `chunks`, the stream's length). Across a handover, a failover or a cut connection the
    /// client sends the input again (the session drops the duplicate) from the chunk it reached,
    /// on wherever the session lives now: no chunk is lost or given twice. Older inputs not yet
    /// acknowledged are delivered first.
    pub async fn send_streaming(
        &mut self,
        input: Value,
        mut on_chunk: impl FnMut(u64, &str),
    ) -> Result<Value, ClientError> {
        use futures::StreamExt;
        if let Some(&(last, _)) = self.unacked.back() {
            // Older inputs first, the usual way (their replies were already given up on).
            let pending = self.unacked.len();
            if pending > 0 {
                let _ = self.drive(last).await?;
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.unacked.push_back((seq, input.clone()));
        let deadline = Instant::now() + self.client.retry_for;
        let mut from: u64 = 0;
        let mut last_err = String::new();
        while Instant::now() < deadline {
            let url = format!("{}/v1/sessions/{}/inputs", self.address, self.id);
            let sent = bearer(self.client.http.post(url), self.token())
                .header(reqwest::header::ACCEPT, "text/event-stream")
                .timeout(self.client.retry_for)
                .json(&serde_json::json!({"seq": seq, "input": input, "from": from}))
                .send()
                .await;
            let r = match sent {
                Ok(r) => r,
                Err(e) => {
                    last_err = e.to_string();
                    self.relocate().await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if !r.status().is_success() {
                match answer(r).await {
                    Err(ClientError::Api {
                        status: 307, body, ..
                    }) => {
                        if let Some(loc) = body.get("location").and_then(|l| l.as_str()) {
                            self.address = loc.trim_end_matches('/').to_string();
                            self.moves += 1;
                        }
                    }
                    Err(ClientError::Api {
                        status, message, ..
                    }) if status == 429 || status == 503 => {
                        last_err = format!("{status}: {message}");
                        self.relocate().await;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) if stale_holder(&e) => {
                        last_err = e.to_string();
                        self.relocate().await;
                    }
                    Err(e) => {
                        self.unacked.retain(|(u, _)| *u != seq);
                        return Err(e);
                    }
                    Ok(v) => last_err = format!("unexpected answer {v}"),
                }
                continue;
            }
            let mut events = r.bytes_stream().eventsource();
            let mut follow: Option<String> = None;
            while let Some(ev) = events.next().await {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => {
                        last_err = format!("stream cut: {e}");
                        break;
                    }
                };
                let data: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
                match ev.event.as_str() {
                    "chunk" => {
                        let offset = data.get("offset").and_then(Value::as_u64);
                        let chunk = data.get("chunk").and_then(Value::as_str);
                        match (offset, chunk) {
                            (Some(o), Some(c)) if o == from => {
                                on_chunk(o, c);
                                from += 1;
                            }
                            // Sent again after a resume: already given.
                            (Some(o), Some(_)) if o < from => {}
                            _ => {
                                last_err = format!("chunk out of order: {data}");
                                break;
                            }
                        }
                    }
                    "reply" => {
                        let chunks = data.get("chunks").and_then(Value::as_u64).unwrap_or(from);
                        let complete = data
                            .get("complete")
                            .and_then(Value::as_bool)
                            .unwrap_or(true);
                        let kind = data.get("kind").and_then(Value::as_str);
                        // A duplicate whose stream no node keeps any more (it emitted nothing,
                        // or it is older than the streams kept): as `send` answers it.
                        let finished = kind == Some("duplicate") && data.get("moved_to").is_none();
                        if finished || kind == Some("processed") && complete && chunks <= from {
                            self.unacked.retain(|(u, _)| *u != seq);
                            return Ok(data);
                        }
                        // Answered elsewhere (relayed after a handover) or a duplicate whose
                        // stream this node lacks: resume where the session lives now.
                        follow = data
                            .get("moved_to")
                            .and_then(Value::as_str)
                            .map(|l| l.trim_end_matches('/').to_string());
                        last_err = format!("incomplete stream: {data}");
                        break;
                    }
                    "error" => {
                        let status = data.get("status").and_then(Value::as_u64).unwrap_or(0);
                        let code = data.get("code").and_then(Value::as_str).unwrap_or("");
                        if status == 307 {
                            follow = data
                                .get("location")
                                .and_then(Value::as_str)
                                .map(|l| l.trim_end_matches('/').to_string());
                        } else if !(status == 429 || status >= 500 || code == "fenced") {
                            self.unacked.retain(|(u, _)| *u != seq);
                            return Err(ClientError::Api {
                                status: status as u16,
                                code: code.to_string(),
                                message: data
                                    .get("message")
                                    .and_then(Value::as_str)
                                    .unwrap_or("")
                                    .to_string(),
                                body: data,
                            });
                        }
                        last_err = format!("stream error: {data}");
                        break;
                    }
                    _ => {}
                }
            }
            match follow {
                Some(loc) if loc != self.address => {
                    self.address = loc;
                    self.moves += 1;
                }
                _ => {
                    self.relocate().await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        Err(ClientError::Timeout(self.client.retry_for, last_err))
    }

    async fn relocate(&mut self) {
        if let Ok((addr, _)) = self.client.locate_as(&self.id, self.token()).await {
            if !addr.is_empty() && addr != self.address {
                self.address = addr;
                self.moves += 1;
            }
        }
    }

    /// Session info from the serving node.
    pub async fn info(&self) -> Result<Value, ClientError> {
        let mut at = self.address.clone();
        for _ in 0..3 {
            let r = answer(
                bearer(
                    self.client
                        .http
                        .get(format!("{at}/v1/sessions/{}", self.id)),
                    self.token(),
                )
                .send()
                .await?,
            )
            .await;
            match r {
                Err(ClientError::Api {
                    status: 307, body, ..
                }) => match body.get("location").and_then(|l| l.as_str()) {
                    Some(loc) => at = loc.trim_end_matches('/').to_string(),
                    None => return Err(ClientError::Http("307 without a location".into())),
                },
                other => return other,
            }
        }
        Err(ClientError::Http("too many redirects".into()))
    }

    /// Closes the session.
    pub async fn close(self) -> Result<Value, ClientError> {
        answer(
            bearer(
                self.client
                    .http
                    .delete(format!("{}/v1/sessions/{}", self.address, self.id)),
                self.token(),
            )
            .send()
            .await?,
        )
        .await
    }
}

//! Malformed input on listening ports, from outside (the `fuzz` fault of a colony run).
//!
//! For the fault's duration, one seeded task per port opens short TCP connections and sends one
//! malformed thing each, then reads (and drops) whatever comes back:
//! - on every port: random bytes, and length-prefixed frames with a wrong length (huge, zero,
//!   longer than the bytes that follow, in both byte orders and widths) — the framing of the
//!   control plane (ractor_cluster) and of the migration server;
//! - on HTTP ports, in addition: garbage request lines and headers, a `Content-Length` larger
//!   than the body, bodies that are not JSON or JSON of the wrong shape, oversized bodies, for the
//!   API's POST routes. Paths name session ids that do not exist (`s-fuzz-…`) and never the
//!   routes that would legitimately change state when a request happens to be well formed
//!   (`/drain`, `…/handover`, `DELETE`), so a fuzzed colony is expected to keep every session and
//!   every acknowledged input: "no state corrupted" is then checked by the run's invariants.
//!
//! - on HTTP ports, also **hostile but well-formed** requests ([`Hostile`]) at the run's real
//!   sessions: inputs at stale and far-future seqs, info, close, re-create by id, handover, drain
//!   and status — with no token, a capability or operator token a stranger signed, or a token
//!   for another session. Every one must be refused (401/403); any 2xx is counted
//!   (`hostile_accepted`) and makes the run fail its `no-stranger-accepted` invariant. These *do*
//!   name the state-changing routes: refusing them is what is being tested.
//!
//! Connections are paced ([`Pace`]) so the fuzzer tests the decoders, not the machine's CPU.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What speaks on a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PortKind {
    /// The HTTP client API (node or RC).
    Http,
    /// The control plane (ractor_cluster node server).
    Control,
    /// The node's migration server.
    Migration,
    /// A ledger replica's Raft/client port (length-prefixed bincode frames).
    Raft,
}

impl PortKind {
    /// The scenario's `port` name.
    pub fn as_str(self) -> &'static str {
        match self {
            PortKind::Http => "http",
            PortKind::Control => "control",
            PortKind::Migration => "migration",
            PortKind::Raft => "raft",
        }
    }
}

/// One port to fuzz.
#[derive(Clone, Debug)]
pub struct Port {
    /// Process name.
    pub process: String,
    /// What speaks there.
    pub kind: PortKind,
    /// Where.
    pub addr: SocketAddr,
}

/// Pacing of one port's task.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// Pause between two connections.
    pub gap: Duration,
    /// Longest wait for a connect, a write, or the answer.
    pub io_timeout: Duration,
}

impl Default for Pace {
    fn default() -> Self {
        Pace {
            gap: Duration::from_millis(20),
            io_timeout: Duration::from_millis(300),
        }
    }
}

/// What one port's task did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PortStats {
    /// Process name.
    pub process: String,
    /// Port kind.
    pub kind: String,
    /// Address.
    pub addr: String,
    /// Connections opened.
    pub connections: u64,
    /// Connections refused or timed out at connect (the port not answering).
    pub connect_failures: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Connections on which something came back (an error answer, typically).
    pub answered: u64,
    /// HTTP answers by class (2xx, 4xx, 5xx).
    pub http_2xx: u64,
    /// See `http_2xx`.
    pub http_4xx: u64,
    /// See `http_2xx`.
    pub http_5xx: u64,
    /// Hostile well-formed requests sent ([`Hostile`]).
    pub hostile: u64,
    /// Hostile requests answered 2xx: each is a stranger let in.
    pub hostile_accepted: u64,
    /// The first few accepted hostile requests (their request line and token kind).
    pub hostile_accepted_requests: Vec<String>,
}

/// Well-formed requests from a stranger at the run's real sessions: the tokens are minted once
/// per port task with a key nobody trusts (and, for the other-session case, for another id).
pub struct Hostile {
    ids: Vec<String>,
    /// `(kind, token)`: `none`, `stranger-capability` (per id, same index), `stranger-operator`,
    /// `garbage`.
    stranger_op: String,
    stranger_caps: Vec<String>,
}

impl Hostile {
    /// Tokens for `ids` (at most 16 are targeted), signed by a fresh key.
    pub fn new(ids: &[String]) -> Self {
        use opengrid_cluster::common::identity::Identity;
        use opengrid_cluster::common::token;
        let ids: Vec<String> = ids.iter().take(16).cloned().collect();
        let stranger = Identity::generate();
        let day = Duration::from_secs(86_400);
        Hostile {
            stranger_caps: ids
                .iter()
                .map(|id| token::mint_session(&stranger, id, day).unwrap_or_default())
                .collect(),
            stranger_op: token::mint_operator(&stranger, day).unwrap_or_default(),
            ids,
        }
    }

    /// One hostile request, and a label for the report.
    pub fn request(&self, rng: &mut StdRng) -> Option<(Vec<u8>, String)> {
        if self.ids.is_empty() {
            return None;
        }
        let i = rng.random_range(0..self.ids.len());
        let id = &self.ids[i];
        let (token_kind, token) = match rng.random_range(0..4) {
            0 => ("none", None),
            1 => ("stranger-capability", Some(self.stranger_caps[i].clone())),
            2 => ("stranger-operator", Some(self.stranger_op.clone())),
            // A stranger's capability for another session (the one next to it).
            _ => (
                "stranger-capability-other-session",
                Some(self.stranger_caps[(i + 1) % self.stranger_caps.len()].clone()),
            ),
        };
        let seq = if rng.random_bool(0.5) {
            1
        } else {
            1u64 << rng.random_range(20..63)
        };
        let input = format!("{{\"seq\": {seq}, \"input\": 1}}");
        let manifest = "version = 1\n[session]\nhandler = \"counter\"\n";
        let (method, path, ct, body) = match rng.random_range(0..7) {
            0 => (
                "POST",
                format!("/sessions/{id}/inputs"),
                "application/json",
                input,
            ),
            1 => ("GET", format!("/sessions/{id}"), "", String::new()),
            2 => ("DELETE", format!("/sessions/{id}"), "", String::new()),
            3 => (
                "POST",
                format!("/sessions?session_id={id}"),
                "application/toml",
                manifest.to_string(),
            ),
            4 => (
                "POST",
                format!("/sessions/{id}/handover"),
                "application/json",
                "{}".into(),
            ),
            5 => ("POST", "/drain".to_string(), "", String::new()),
            _ => ("GET", "/status".to_string(), "", String::new()),
        };
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        if let Some(t) = token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if !ct.is_empty() {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let label = format!("{method} {path} ({token_kind})");
        let mut v = head.into_bytes();
        v.extend(body.into_bytes());
        Some((v, label))
    }
}

/// Picks one malformed payload for a port of `kind`.
pub fn payload(rng: &mut StdRng, kind: PortKind) -> Vec<u8> {
    let framed = 4;
    let http = if kind == PortKind::Http { 6 } else { 0 };
    match rng.random_range(0..framed + http) {
        0 => random_bytes(rng, 1..4096),
        1 => {
            // A huge length, then a little.
            let n = u64::MAX - rng.random_range(0..16u64);
            let mut v = bad_len(rng, n);
            v.extend(random_bytes(rng, 0..64));
            v
        }
        2 => {
            // A plausible length, fewer bytes than it says (truncated frame).
            let n = rng.random_range(16..1 << 20);
            let mut v = bad_len(rng, n);
            v.extend(random_bytes(rng, 0..(n as usize).min(512)));
            v
        }
        3 => {
            // Many tiny or zero-length frames.
            let mut v = Vec::new();
            for _ in 0..rng.random_range(1..64) {
                let n = rng.random_range(0..4u64);
                v.extend(bad_len(rng, n));
                v.extend(random_bytes(rng, n as usize..n as usize + 1));
            }
            v
        }
        k => http_payload(rng, k - framed),
    }
}

fn random_bytes(rng: &mut StdRng, len: std::ops::Range<usize>) -> Vec<u8> {
    let n = if len.is_empty() {
        len.start
    } else {
        rng.random_range(len)
    };
    (0..n).map(|_| rng.random()).collect()
}

/// `n` as a length prefix of a random width and byte order.
fn bad_len(rng: &mut StdRng, n: u64) -> Vec<u8> {
    match rng.random_range(0..4) {
        0 => (n as u32).to_be_bytes().to_vec(),
        1 => (n as u32).to_le_bytes().to_vec(),
        2 => n.to_be_bytes().to_vec(),
        _ => n.to_le_bytes().to_vec(),
    }
}

/// Routes whose malformed requests are sent (POST bodies are never valid for them).
const POST_PATHS: &[&str] = &[
    "/sessions",
    "/sessions/s-fuzz-0/inputs",
    "/admission/probe",
    "/sessions/%ff%fe/inputs",
];
const GET_PATHS: &[&str] = &[
    "/sessions/s-fuzz-1",
    "/sessions/..%2f..%2fetc/inputs",
    "/status?x=%zz",
    "/sessions/s-fuzz-2/ws",
];

/// Bodies that are not a valid request for any route.
fn bad_body(rng: &mut StdRng) -> Vec<u8> {
    let fixed: &[&[u8]] = &[
        b"{",
        b"{\"seq\": ",
        b"{\"seq\": -1, \"input\": }",
        b"{\"seq\": \"one\", \"input\": 1}",
        b"{\"seq\": 18446744073709551616, \"input\": 1}",
        b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
        b"{\"manifest\": 7}",
        b"{\"manifest\": \"version = \\\"x\"}",
        b"null",
        b"\xff\xfe\x00\x01",
        b"{\"a\":\"\\ud800\"}",
    ];
    match rng.random_range(0..4) {
        0 => fixed[rng.random_range(0..fixed.len())].to_vec(),
        1 => {
            // Deep nesting.
            let d = rng.random_range(100..5000);
            let mut v = vec![b'['; d];
            v.extend(std::iter::repeat_n(b']', rng.random_range(0..d)));
            v
        }
        2 => random_bytes(rng, 0..2048),
        _ => {
            // A valid-looking object, cut short.
            let s = format!(
                "{{\"seq\": {}, \"input\": {{\"x\": \"{}\"",
                rng.random::<u32>(),
                "a".repeat(rng.random_range(0..256))
            );
            s.into_bytes()
        }
    }
}

fn http_payload(rng: &mut StdRng, k: u32) -> Vec<u8> {
    let post = POST_PATHS[rng.random_range(0..POST_PATHS.len())];
    let get = GET_PATHS[rng.random_range(0..GET_PATHS.len())];
    match k {
        0 => {
            let b = bad_body(rng);
            let mut v = format!(
                "POST {post} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                b.len()
            )
            .into_bytes();
            v.extend(b);
            v
        }
        1 => {
            // Content-Length promises more than is sent.
            let b = bad_body(rng);
            let mut v = format!(
                "POST {post} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                b.len() + rng.random_range(1..1_000_000)
            )
            .into_bytes();
            v.extend(b);
            v
        }
        2 => {
            // Oversized (above any sane body limit) declared length.
            format!(
                "POST {post} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{{",
                rng.random_range(1u64 << 31..u64::MAX)
            )
            .into_bytes()
        }
        3 => {
            // Broken chunked encoding.
            format!(
                "POST {post} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\nzz\r\n{{\r\nffffffffffffffff\r\n"
            )
            .into_bytes()
        }
        4 => {
            // Garbage request line or headers.
            let mut v = match rng.random_range(0..4) {
                0 => b"GET\r\n\r\n".to_vec(),
                1 => format!("GET {get} HTTP/9.9\r\n\r\n").into_bytes(),
                2 => {
                    let mut h = format!("GET {get} HTTP/1.1\r\n").into_bytes();
                    h.extend(random_bytes(rng, 1..512));
                    h.extend(b"\r\n\r\n");
                    h
                }
                _ => format!(
                    "GET {get} HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                    "b".repeat(rng.random_range(10_000..200_000))
                )
                .into_bytes(),
            };
            v.extend(random_bytes(rng, 0..32));
            v
        }
        _ => {
            // A websocket upgrade that then sends garbage frames.
            let mut v = b"GET /sessions/s-fuzz-3/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".to_vec();
            v.extend(random_bytes(rng, 1..1024));
            v
        }
    }
}

/// Fuzzes `port` until `stop` or `until`; returns what it did. On HTTP ports one connection in
/// four carries a hostile well-formed request at one of `sessions` (the run's real ones).
pub async fn fuzz_port(
    port: Port,
    seed: u64,
    until: Instant,
    stop: Arc<AtomicBool>,
    pace: Pace,
    sessions: Vec<String>,
) -> PortStats {
    let mut rng = StdRng::seed_from_u64(seed);
    let hostile = (port.kind == PortKind::Http).then(|| Hostile::new(&sessions));
    let mut st = PortStats {
        process: port.process.clone(),
        kind: port.kind.as_str().into(),
        addr: port.addr.to_string(),
        ..Default::default()
    };
    let sent = AtomicU64::new(0);
    while Instant::now() < until && !stop.load(Ordering::Acquire) {
        let h = match &hostile {
            Some(h) if rng.random_range(0..4) == 0 => h.request(&mut rng),
            _ => None,
        };
        let (p, label) = match h {
            Some((p, label)) => {
                st.hostile += 1;
                (p, Some(label))
            }
            None => (payload(&mut rng, port.kind), None),
        };
        st.connections += 1;
        let conn = tokio::time::timeout(pace.io_timeout, TcpStream::connect(port.addr)).await;
        let mut s = match conn {
            Ok(Ok(s)) => s,
            _ => {
                st.connect_failures += 1;
                tokio::time::sleep(pace.gap).await;
                continue;
            }
        };
        if let Ok(Ok(())) = tokio::time::timeout(pace.io_timeout, s.write_all(&p)).await {
            sent.fetch_add(p.len() as u64, Ordering::Relaxed);
        }
        let mut buf = vec![0u8; 16 << 10];
        if let Ok(Ok(n)) = tokio::time::timeout(pace.io_timeout, s.read(&mut buf)).await {
            if n > 0 {
                st.answered += 1;
                if port.kind == PortKind::Http && buf[..n].starts_with(b"HTTP/1.") && n >= 12 {
                    match buf[9] {
                        b'2' => st.http_2xx += 1,
                        b'4' => st.http_4xx += 1,
                        b'5' => st.http_5xx += 1,
                        _ => {}
                    }
                    if let (Some(l), b'2') = (&label, buf[9]) {
                        st.hostile_accepted += 1;
                        if st.hostile_accepted_requests.len() < 8 {
                            st.hostile_accepted_requests.push(l.clone());
                        }
                    }
                }
            }
        }
        drop(s);
        tokio::time::sleep(pace.gap).await;
    }
    st.bytes_sent = sent.load(Ordering::Relaxed);
    st
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_requests_are_well_formed_and_carry_no_trusted_token() {
        let ids: Vec<String> = (0..3).map(|i| format!("s-{i}")).collect();
        let h = Hostile::new(&ids);
        let mut r = StdRng::seed_from_u64(9);
        let mut kinds = std::collections::BTreeSet::new();
        for _ in 0..300 {
            let (req, label) = h.request(&mut r).unwrap();
            let text = String::from_utf8(req).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(len, body.len(), "{head}");
            kinds.insert(label.split_whitespace().next().unwrap().to_string());
        }
        assert_eq!(kinds.len(), 3, "GET, POST and DELETE: {kinds:?}");
        assert!(Hostile::new(&[]).request(&mut r).is_none());
    }

    #[test]
    fn payloads_are_seeded_and_never_name_state_changing_routes() {
        let gen = |seed| {
            let mut r = StdRng::seed_from_u64(seed);
            (0..500)
                .map(|_| payload(&mut r, PortKind::Http))
                .collect::<Vec<_>>()
        };
        let a = gen(1);
        assert_eq!(a, gen(1), "same seed, same payloads");
        assert_ne!(a, gen(2));
        for p in &a {
            let head = String::from_utf8_lossy(&p[..p.len().min(64)]).to_string();
            assert!(!head.contains("/drain"), "{head}");
            assert!(!head.contains("/handover"), "{head}");
            assert!(!head.starts_with("DELETE"), "{head}");
        }
        // Framed ports get only framed or random payloads (no HTTP).
        let mut r = StdRng::seed_from_u64(3);
        for _ in 0..200 {
            let p = payload(&mut r, PortKind::Control);
            assert!(!p.starts_with(b"POST ") && !p.starts_with(b"GET "));
        }
    }

    #[test]
    fn no_fuzzed_body_is_a_valid_input() {
        let mut r = StdRng::seed_from_u64(9);
        for _ in 0..2000 {
            let b = bad_body(&mut r);
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b) {
                let valid_input =
                    v.get("seq").and_then(|s| s.as_u64()).is_some() && v.get("input").is_some();
                assert!(!valid_input, "{v}");
            }
        }
    }

    #[tokio::test]
    async fn fuzzing_a_listener_sends_and_counts() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 1024];
                    let _ = s.read(&mut b).await;
                    let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
                });
            }
        });
        let st = fuzz_port(
            Port {
                process: "p".into(),
                kind: PortKind::Http,
                addr,
            },
            5,
            Instant::now() + Duration::from_millis(300),
            Arc::new(AtomicBool::new(false)),
            Pace {
                gap: Duration::from_millis(5),
                io_timeout: Duration::from_millis(200),
            },
            Vec::new(),
        )
        .await;
        assert!(st.connections >= 3, "{st:?}");
        assert_eq!(st.connect_failures, 0, "{st:?}");
        assert!(st.http_4xx >= 1, "{st:?}");
        assert!(st.bytes_sent > 0);
    }

    /// A server that lets everyone in: the hostile requests are counted as accepted (what makes
    /// a run fail `no-stranger-accepted`).
    #[tokio::test]
    async fn a_server_that_accepts_strangers_is_caught() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 4096];
                    let _ = s.read(&mut b).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await;
                });
            }
        });
        let st = fuzz_port(
            Port {
                process: "p".into(),
                kind: PortKind::Http,
                addr,
            },
            7,
            Instant::now() + Duration::from_millis(600),
            Arc::new(AtomicBool::new(false)),
            Pace {
                gap: Duration::from_millis(2),
                io_timeout: Duration::from_millis(200),
            },
            vec!["s-victim".into()],
        )
        .await;
        assert!(st.hostile >= 1, "{st:?}");
        assert_eq!(st.hostile_accepted, st.hostile, "{st:?}");
        assert!(!st.hostile_accepted_requests.is_empty());
    }
}

//! The etcd baseline: three etcd members on 127.0.0.1 started by the bench (`$OPENGRID_ETCD`,
//! else `etcd` on `PATH`), their leader, and the same plain writes as the ledger group's through
//! etcd's v3 HTTP/JSON gateway (`POST /v3/kv/put`, keys and values in standard base64,
//! keep-alive connections of one shared [`reqwest::Client`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};

use super::failed;
use super::report::WriteStats;
use super::writes::{collect, value, WriterOut};
use crate::bench::BenchError;
use crate::launcher::{Launcher, ProcSpec, ProcState};

/// `etcd` from `$OPENGRID_ETCD` or `PATH`.
pub fn find_etcd() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OPENGRID_ETCD") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
}

/// Three etcd members on 127.0.0.1.
pub(super) struct EtcdCluster {
    launcher: Launcher,
    client_urls: Vec<String>,
}

impl EtcdCluster {
    /// Starts three members with fresh data dirs and waits (30 s at most) until all are healthy.
    pub async fn start(bin: &Path, http: &reqwest::Client) -> Result<Self, BenchError> {
        let mut launcher = Launcher::new()?;
        let listeners = (0..6)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<Vec<_>, _>>()?;
        let ports = listeners
            .iter()
            .map(|l| Ok(l.local_addr()?.port()))
            .collect::<Result<Vec<u16>, std::io::Error>>()?;
        drop(listeners);
        let client_urls: Vec<String> = (0..3)
            .map(|i| format!("http://127.0.0.1:{}", ports[i]))
            .collect();
        let peer_urls: Vec<String> = (0..3)
            .map(|i| format!("http://127.0.0.1:{}", ports[3 + i]))
            .collect();
        let initial = (0..3)
            .map(|i| format!("etcd-{i}={}", peer_urls[i]))
            .collect::<Vec<_>>()
            .join(",");
        for i in 0..3 {
            let name = format!("etcd-{i}");
            let dir = launcher.data_dir(&name)?;
            launcher.spawn(ProcSpec::new(&name, bin).args([
                "--name".to_string(),
                name.clone(),
                "--data-dir".into(),
                dir.join("etcd").display().to_string(),
                "--listen-client-urls".into(),
                client_urls[i].clone(),
                "--advertise-client-urls".into(),
                client_urls[i].clone(),
                "--listen-peer-urls".into(),
                peer_urls[i].clone(),
                "--initial-advertise-peer-urls".into(),
                peer_urls[i].clone(),
                "--initial-cluster".into(),
                initial.clone(),
                "--initial-cluster-token".into(),
                format!("opengrid-bench-{}", std::process::id()),
                "--initial-cluster-state".into(),
                "new".into(),
                "--log-level".into(),
                "warn".into(),
            ]))?;
        }
        let mut c = EtcdCluster {
            launcher,
            client_urls,
        };
        let limit = Duration::from_secs(30);
        let deadline = Instant::now() + limit;
        loop {
            let mut healthy = 0;
            for u in &c.client_urls {
                if let Ok(r) = http.get(format!("{u}/health")).send().await {
                    // `{"health":"true","reason":""}`
                    if r.json::<Value>().await.is_ok_and(|h| h["health"] == "true") {
                        healthy += 1;
                    }
                }
            }
            if healthy == c.client_urls.len() {
                return Ok(c);
            }
            for n in c.launcher.names() {
                let st = c.launcher.state(&n)?;
                if st != ProcState::Running {
                    let logs = c.launcher.keep_files().display().to_string();
                    return Err(BenchError::NotReady {
                        name: n,
                        waited: limit,
                        why: format!("it is {st:?}"),
                        logs,
                    });
                }
            }
            if Instant::now() >= deadline {
                let logs = c.launcher.keep_files().display().to_string();
                return Err(BenchError::NotReady {
                    name: "etcd cluster".into(),
                    waited: limit,
                    why: format!("{healthy}/3 members healthy"),
                    logs,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The leader's client URL (from `/v3/maintenance/status` of each member).
    pub async fn leader(&self, http: &reqwest::Client) -> Result<String, BenchError> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for u in &self.client_urls {
                let Ok(r) = http
                    .post(format!("{u}/v3/maintenance/status"))
                    .json(&json!({}))
                    .send()
                    .await
                else {
                    continue;
                };
                let v: Value = match r.json().await {
                    Ok(v) => v,
                    Err(_) => continue,
                };
                let leader = &v["leader"];
                if !leader.is_null() && *leader == v["header"]["member_id"] {
                    return Ok(u.clone());
                }
            }
            if Instant::now() >= deadline {
                return Err(failed("etcd: no member reports itself leader"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops every member.
    pub fn shutdown(mut self) {
        for name in self.launcher.names() {
            if self.launcher.state(&name).ok() == Some(ProcState::Running) {
                let _ = self.launcher.stop(&name, Duration::from_secs(3));
            }
        }
        self.launcher.shutdown();
    }
}

/// `etcd --version`, first line.
pub(super) fn etcd_version(bin: &Path) -> Option<String> {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(|l| l.trim().to_string())
}

/// The body of one `PUT` through the JSON gateway: key and value in standard base64.
fn put_body(key: &[u8], value: &[u8]) -> Value {
    json!({ "key": STANDARD.encode(key), "value": STANDARD.encode(value) })
}

/// `total` puts of `value_bytes` with `concurrency` writers through etcd's JSON gateway.
pub(super) async fn etcd_writes(
    http: &reqwest::Client,
    leader: &str,
    first: usize,
    total: usize,
    concurrency: usize,
    value_bytes: usize,
    budget: Duration,
) -> (WriteStats, Option<String>) {
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + budget;
    let start = Instant::now();
    let url = format!("{leader}/v3/kv/put");
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..concurrency.max(1) {
        let next = next.clone();
        let url = url.clone();
        let http = http.clone();
        tasks.spawn(async move {
            let mut out = WriterOut::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || Instant::now() >= deadline {
                    break;
                }
                let body = put_body(
                    format!("bench/{w}/{}", first + i).as_bytes(),
                    &value(first + i, value_bytes),
                );
                let t = Instant::now();
                match put(&http, &url, &body).await {
                    Ok(()) => out.lat.push(t.elapsed().as_micros() as u64),
                    Err(e) => {
                        out.errors += 1;
                        if out.first_error.is_none() {
                            out.first_error = Some(e);
                        }
                    }
                }
            }
            out
        });
    }
    let outs = tasks.join_all().await;
    collect("etcd", outs, start.elapsed().as_secs_f64(), total)
}

/// One put; an answer without a response `header` is a failure (its text is the error).
async fn put(http: &reqwest::Client, url: &str, body: &Value) -> Result<(), String> {
    let r = http
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("HTTP {}", r.status()));
    }
    let answer: Value = r.json().await.map_err(|e| e.to_string())?;
    if answer.get("header").is_some() {
        Ok(())
    } else {
        Err(answer.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_bodies_carry_key_and_value_in_standard_base64() {
        let b = put_body(b"bench/0/7", &[0xff, 0xfe, 0xfd, 0x00]);
        assert_eq!(b["key"], "YmVuY2gvMC83");
        assert_eq!(b["value"], "//79AA==");
        assert_eq!(
            put_body(b"f", b"fo"),
            json!({"key": "Zg==", "value": "Zm8="})
        );
    }
}

//! The harness of the process tests: an RC and nodes as real `opengrid` processes on
//! 127.0.0.1, each with its own data dir and log in one temp dir (kept with
//! `OPENGRID_TEST_KEEP=1`), waits with deadlines, kill -9, handovers, the operator's client.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use opengrid_cluster::client::{Client, ClientError, Session};
use opengrid_cluster::common::token::{operator_http, operator_token_from_dir};
use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_opengrid");
pub const SECRET: &str = "process-test-secret";

pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    opengrid_cluster::common::serve::free_local_port().unwrap()
}

pub struct Colony {
    pub dir: tempfile::TempDir,
    pub rc_api: String,
    pub rc_cluster: u16,
    pub rc_cfg: String,
    pub procs: Vec<Proc>,
    pub http: reqwest::Client,
    /// With an RC group ([`Colony::start_group`]): each replica's process name, client API,
    /// control-plane port and config.
    pub group: Vec<GroupRc>,
}

/// One replica of an RC group started by [`Colony::start_group`].
#[derive(Clone, Debug)]
pub struct GroupRc {
    pub name: String,
    pub api: String,
    pub cluster: u16,
    pub cfg: String,
}

impl Colony {
    pub fn start() -> Colony {
        let keep = std::env::var_os("OPENGRID_TEST_KEEP").is_some();
        let dir = tempfile::Builder::new()
            .prefix("og-agents-")
            .disable_cleanup(keep)
            .tempdir()
            .unwrap();
        if keep {
            eprintln!("colony dir: {}", dir.path().display());
        }
        let (api, cluster) = (free_port(), free_port());
        // The first session of an agent on a node fetches and compiles it (seconds for Python).
        let rc_cfg = format!(
            "version = 1\ndata_dir = {:?}\napi_listen = \"127.0.0.1:{api}\"\ncluster_listen = \"127.0.0.1:{cluster}\"\ncolony_secret = \"{SECRET}\"\nplace_timeout = \"120s\"\n",
            dir.path().join("rc-data")
        );
        let http = operator_http(&dir.path().join("rc-data"), Duration::from_secs(300)).unwrap();
        let mut c = Colony {
            rc_api: format!("http://127.0.0.1:{api}"),
            rc_cluster: cluster,
            rc_cfg: rc_cfg.clone(),
            procs: Vec::new(),
            dir,
            http,
            group: Vec::new(),
        };
        c.spawn("rc", "rc", rc_cfg);
        c
    }

    /// A colony whose RC is a group of `n` replicas (`rc1`..), Raft-replicated (ADR 0037). The
    /// operator key is `rc1`'s (every replica honours every replica's tokens); `rc_api` is
    /// `rc1`'s API — use [`Colony::leader`] to find who leads.
    pub fn start_group(n: usize) -> Colony {
        let keep = std::env::var_os("OPENGRID_TEST_KEEP").is_some();
        let dir = tempfile::Builder::new()
            .prefix("og-group-")
            .disable_cleanup(keep)
            .tempdir()
            .unwrap();
        if keep {
            eprintln!("colony dir: {}", dir.path().display());
        }
        let mut peers = Vec::new();
        let mut ports = Vec::new();
        for i in 1..=n {
            let data = dir.path().join(format!("rc{i}-data"));
            let did = opengrid_cluster::common::identity::Identity::load_or_create(&data)
                .unwrap()
                .id()
                .did();
            let (api, cluster, raft) = (free_port(), free_port(), free_port());
            peers.push(format!("\"{i}={did}@127.0.0.1:{raft}\""));
            ports.push((i, data, api, cluster, raft));
        }
        let mut group = Vec::new();
        for (i, data, api, cluster, raft) in &ports {
            let cfg = format!(
                "version = 1\ndata_dir = {data:?}\napi_listen = \"127.0.0.1:{api}\"\ncluster_listen = \"127.0.0.1:{cluster}\"\ncolony_secret = \"{SECRET}\"\nplace_timeout = \"30s\"\n[group]\nid = {i}\nlisten = \"127.0.0.1:{raft}\"\npeers = [{}]\n",
                peers.join(", ")
            );
            group.push(GroupRc {
                name: format!("rc{i}"),
                api: format!("http://127.0.0.1:{api}"),
                cluster: *cluster,
                cfg,
            });
        }
        let http = operator_http(&dir.path().join("rc1-data"), Duration::from_secs(300)).unwrap();
        let mut c = Colony {
            rc_api: group[0].api.clone(),
            rc_cluster: group[0].cluster,
            rc_cfg: group[0].cfg.clone(),
            procs: Vec::new(),
            dir,
            http,
            group: group.clone(),
        };
        for r in &group {
            c.spawn(&r.name, "rc", r.cfg.clone());
        }
        c
    }

    /// The RC group's replicas' APIs, comma separated (what a client is given).
    pub fn group_apis(&self) -> String {
        self.group
            .iter()
            .map(|r| r.api.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The replica of the RC group in office now (its `/status` says so), within `within`.
    pub async fn leader(&self, within: Duration) -> GroupRc {
        let deadline = Instant::now() + within;
        loop {
            for r in &self.group {
                // A short timeout: a paused replica does not answer.
                let st = match self
                    .http
                    .get(format!("{}/status", r.api))
                    .timeout(Duration::from_millis(500))
                    .send()
                    .await
                {
                    Ok(resp) => resp.json::<Value>().await.unwrap_or(Value::Null),
                    Err(_) => continue,
                };
                if st["group"]["acting"] == true {
                    return r.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "no RC group leader within {within:?}; logs in {}",
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn spawn(&mut self, name: &str, role: &str, cfg: String) {
        self.spawn_env(name, role, cfg, &[]);
    }

    /// [`spawn`](Self::spawn) with extra environment variables.
    pub fn spawn_env(&mut self, name: &str, role: &str, cfg: String, env: &[(&str, &str)]) {
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, cfg).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .unwrap();
        let child = Command::new(BIN)
            .args([role, "--config", path.to_str().unwrap()])
            .env(
                "RUST_LOG",
                "info,ractor_cluster=warn,ractor=warn,openraft=warn",
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.procs.retain(|p| p.name != name);
        self.procs.push(Proc {
            name: name.into(),
            child,
        });
    }

    pub fn node(&mut self, name: &str, jurisdiction: &str) {
        self.node_env(name, jurisdiction, &[]);
    }

    /// A node process with extra environment variables.
    pub fn node_env(&mut self, name: &str, jurisdiction: &str, env: &[(&str, &str)]) {
        let rc_cluster = if self.group.is_empty() {
            format!("127.0.0.1:{}", self.rc_cluster)
        } else {
            self.group
                .iter()
                .map(|r| format!("127.0.0.1:{}", r.cluster))
                .collect::<Vec<_>>()
                .join(",")
        };
        let cfg = format!(
            "version = 1\nname = \"{name}\"\ndata_dir = {:?}\njurisdiction = \"{jurisdiction}\"\napi_listen = \"127.0.0.1:0\"\nrc_cluster = \"{rc_cluster}\"\ncolony_secret = \"{SECRET}\"\nfsync = false\n",
            self.dir.path().join(format!("{name}-data")),
        );
        self.spawn_env(name, "node", cfg, env);
    }

    pub fn kill9(&mut self, name: &str) {
        let p = self.procs.iter_mut().find(|p| p.name == name).unwrap();
        let _ = p.child.kill();
        let _ = p.child.wait();
    }

    pub fn rc_data(&self) -> PathBuf {
        if self.group.is_empty() {
            self.dir.path().join("rc-data")
        } else {
            self.dir.path().join("rc1-data")
        }
    }

    /// `opengrid agent ARGS --rc … --key <rc data dir>` (the test is the colony's operator).
    pub fn agent_cli(&self, args: &[&str]) -> Output {
        let out = Command::new(BIN)
            .arg("agent")
            .args(args)
            .args([
                "--rc",
                &self.rc_api,
                "--key",
                self.rc_data().to_str().unwrap(),
            ])
            .env_remove("OPENGRID_TOKEN")
            .output()
            .unwrap();
        eprintln!(
            "opengrid agent {args:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub async fn get(&self, path: &str) -> Value {
        match self.http.get(format!("{}{path}", self.rc_api)).send().await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    pub async fn wait(&self, what: &str, within: Duration, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let st = self.get("/status").await;
            if cond(&st) {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}; logs in {}\nlast status: {st}",
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_alive(&self, n: usize) {
        self.wait(
            &format!("{n} members alive"),
            Duration::from_secs(60),
            |st| {
                st["members"]
                    .as_array()
                    .is_some_and(|m| m.iter().filter(|m| m["state"] == "alive").count() == n)
            },
        )
        .await;
    }

    pub fn client(&self) -> Client {
        let t = operator_token_from_dir(&self.rc_data(), Duration::from_secs(3600)).unwrap();
        let mut c = Client::new(self.rc_api.clone())
            .with_token(t)
            .with_timeout(Duration::from_secs(150));
        c.retry_for = Duration::from_secs(120);
        c
    }

    pub async fn entry(&self, id: &str) -> Value {
        let st = self.get("/status").await;
        st["sessions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["session_id"] == id)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// `POST {holder}/sessions/{id}/handover` until the target admits it (it refuses until it
    /// has loaded the agent, prefetched as a replica holder), with a deadline.
    pub async fn handover(&self, id: &str) {
        self.handover_to(id, None).await
    }

    /// [`handover`](Self::handover) to the node named `target` (any the RC picks: `None`).
    pub async fn handover_to(&self, id: &str, target: Option<&str>) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let holder = self.entry(id).await["address"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let mut req = self.http.post(format!("{holder}/sessions/{id}/handover"));
            if let Some(t) = target {
                req = req.json(&json!({ "target": t }));
            }
            let r = req.send().await.unwrap();
            let (status, body) = (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or_default(),
            );
            if status == 200 {
                eprintln!("handover of {id}: {body}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no handover of {id} to {target:?} within 120s: {status} {body}; logs in {}",
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `opengrid agent keygen --out <dir>/dev.key`: the developer key's path and DID.
    pub fn developer_key(&self) -> (PathBuf, String) {
        let key = self.dir.path().join("dev.key");
        let out = Command::new(BIN)
            .args(["agent", "keygen", "--out", key.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "keygen: {}", stderr(&out));
        let did = stdout(&out).trim().to_string();
        assert!(did.starts_with("did:mycel:"), "{did}");
        (key, did)
    }

    /// The stored package files of the registry.
    pub fn stored(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.rc_data().join("agents"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".ogap"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// `GET {api}/metrics` (Prometheus text; empty when it does not answer).
pub async fn metrics_text(http: &reqwest::Client, api: &str) -> String {
    match http.get(format!("{api}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The sum of every sample of the metric `name` (all label sets) in Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Sends `1` and checks the total: returns the new acknowledged count.
pub async fn step(s: &mut Session, acked: u64) -> Result<u64, ClientError> {
    let r = s.send(json!(1)).await?;
    match r["kind"].as_str() {
        Some("processed") => {
            let total = r["output"].as_i64().unwrap_or(-1);
            assert_eq!(
                total,
                acked as i64 + 1,
                "session {}: answer {r} after {acked} acknowledged inputs",
                s.id
            );
            Ok(acked + 1)
        }
        Some("duplicate") => Ok(acked + 1),
        _ => panic!("unexpected reply {r}"),
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

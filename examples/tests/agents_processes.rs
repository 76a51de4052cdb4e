//! Pushed agent packages with real processes (ADR 0030): the `opengrid` binary as one RC and
//! three nodes on 127.0.0.1 that have never seen the packages. The example counters (Rust and
//! Python) are pushed with `opengrid agent push`, sessions are created by agent name, the nodes
//! fetch the packages from the RC, and the sessions keep their state through a kill -9 of their
//! holder. Bad packages are refused at push with nothing stored; list, versions and retire behave;
//! an RC restart keeps the registry.
//!
//! Every input is `1`: the answer to the n-th acknowledged input must be n.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{stderr, stdout, step, Colony};
use opengrid_cluster::client::ClientError;
use opengrid_cluster::common::token::operator_token_from_dir;
use serde_json::{json, Value};

/// A zero-loss session of `agent` (acknowledged once a replica holds it).
fn manifest(agent: &str) -> String {
    format!("version = 1\n[session]\nagent = \"{agent}\"\ncontinuity = \"interactive\"\n[placement]\njurisdictions = [\"EU\"]\n[migration]\ncost = \"cheap\"\nacceptable_loss = \"0s\"\nmax_blackout = \"2s\"\n")
}

/// The example agents' directories, their components built (scripts/build-agents.sh) if missing.
fn agent_dirs() -> (PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let rs = root.join("examples/agents/counter-rs");
    let py = root.join("examples/agents/counter-py");
    if !rs.join("agent.wasm").is_file() || !py.join("agent.wasm").is_file() {
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
    (rs, py)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushed_agents_run_fail_over_and_survive_an_rc_restart() {
    let (rs_dir, py_dir) = agent_dirs();
    let mut c = Colony::start();
    for (n, j) in [("n1", "DE"), ("n2", "DE"), ("n3", "FR")] {
        c.node(n, j);
    }
    c.wait_alive(3).await;

    // A developer key, then push both counters.
    let (key, dev_did) = c.developer_key();
    let key_s = key.to_str().unwrap();
    let push = |dir: &Path| c.agent_cli(&["push", dir.to_str().unwrap(), "--developer-key", key_s]);
    let out = push(&rs_dir);
    assert!(out.status.success(), "push counter-rs: {}", stderr(&out));
    let line = stdout(&out);
    let rs_hash = line
        .trim()
        .strip_prefix("counter-rs@0.1.0 ")
        .unwrap_or_else(|| panic!("push prints name@version hash: {line}"))
        .to_string();
    assert_eq!(rs_hash.len(), 64, "{line}");
    let again = push(&rs_dir);
    assert!(again.status.success() && stdout(&again).contains("already pushed"));
    let out = push(&py_dir);
    assert!(out.status.success(), "push counter-py: {}", stderr(&out));
    assert_eq!(c.stored().len(), 2, "two packages stored");

    // Bad packages are refused at push, nothing stored.
    let dev = opengrid_session::keyfile::load(&key).unwrap();
    let good = opengrid_wasm::Package::build(opengrid_wasm::PackageSource::Dir(&rs_dir), &dev)
        .unwrap()
        .to_bytes();
    let mut tampered = good.clone();
    let at = tampered.len() - 100;
    tampered[at] ^= 0x55;
    let r = c
        .http
        .post(format!("{}/agents", c.rc_api))
        .body(tampered)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("bad_signature")),
        "{body}"
    );
    // Not an agent: a package around bytes that are no component.
    let junk_dir = c.dir.path().join("junk");
    std::fs::create_dir_all(&junk_dir).unwrap();
    std::fs::write(
        junk_dir.join("agent.toml"),
        "name = \"junk\"\nversion = \"0.1.0\"\ninterface = \"opengrid:agent@0.1.0\"\n",
    )
    .unwrap();
    std::fs::write(junk_dir.join("agent.wasm"), b"\0asm but not really").unwrap();
    let out = push(&junk_dir);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("bad_package"),
        "a clear refusal: {}",
        stderr(&out)
    );
    // Same name and version, other contents: 409.
    let toml = std::fs::read_to_string(rs_dir.join("agent.toml"))
        .unwrap()
        .replace("adds each input", "sums each input");
    let other = opengrid_wasm::Package::build(
        opengrid_wasm::PackageSource::Parts {
            agent_toml: &toml,
            component: std::fs::read(rs_dir.join("agent.wasm")).unwrap(),
        },
        &dev,
    )
    .unwrap()
    .to_bytes();
    let r = c
        .http
        .post(format!("{}/v1/agents", c.rc_api))
        .body(other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    assert_eq!(c.stored().len(), 2, "nothing stored for refused pushes");
    // Without an operator token: 401.
    let r = reqwest::Client::new()
        .post(format!("{}/agents", c.rc_api))
        .body(good)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // Package bytes by hash: a member node's own token opens them, a stranger's does not.
    let by_hash = format!("{}/agents/by-hash/{rs_hash}", c.rc_api);
    let node_token =
        operator_token_from_dir(&c.dir.path().join("n2-data"), Duration::from_secs(60)).unwrap();
    let r = reqwest::Client::new()
        .get(&by_hash)
        .bearer_auth(node_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let fetched = r.bytes().await.unwrap();
    let limits = opengrid_wasm::PackageLimits::default();
    let pkg = opengrid_wasm::SignedPackage::from_bytes(&fetched, &limits).unwrap();
    assert_eq!(pkg.hash(), rs_hash, "the package asked for");
    let stranger =
        operator_token_from_dir(&c.dir.path().join("stranger"), Duration::from_secs(60)).unwrap();
    let r = reqwest::Client::new()
        .get(&by_hash)
        .bearer_auth(&stranger)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403, "a stranger fetches nothing");
    let r = reqwest::Client::new()
        .get(format!("{}/agents", c.rc_api))
        .bearer_auth(&stranger)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "a stranger lists nothing");

    // Sessions by agent name: the nodes fetch the packages.
    let client = c.client();
    let mut rs = client.create(&manifest("counter-rs"), None).await.unwrap();
    let mut py = client.create(&manifest("counter-py"), None).await.unwrap();
    let (mut rs_acked, mut py_acked) = (0, 0);
    for _ in 0..5 {
        rs_acked = step(&mut rs, rs_acked).await.unwrap();
        py_acked = step(&mut py, py_acked).await.unwrap();
    }
    let e = c.entry(&rs.id).await;
    assert_eq!(e["handler"], "wasm", "{e}");
    assert_eq!(
        e["agent"], "counter-rs@0.1.0",
        "/status names the agent: {e}"
    );
    assert_eq!(e["package"], json!(rs_hash), "{e}");

    // A live handover keeps the state: the replica holders prefetched the package, so once
    // it is loaded there the target admits the session (until then it refuses and the
    // session stays where it is).
    let from = e["node_name"].as_str().unwrap().to_string();
    c.handover(&rs.id).await;
    for _ in 0..3 {
        rs_acked = step(&mut rs, rs_acked).await.unwrap();
    }
    let e = c.entry(&rs.id).await;
    assert_ne!(
        e["node_name"].as_str(),
        Some(from.as_str()),
        "handed over: {e}"
    );
    // The Python one too (an 18 MB package the replica holders compiled).
    let py_from = c.entry(&py.id).await["node_name"].clone();
    c.handover(&py.id).await;
    for _ in 0..2 {
        py_acked = step(&mut py, py_acked).await.unwrap();
    }
    assert_ne!(c.entry(&py.id).await["node_name"], py_from);

    // kill -9 of the Rust session's holder: failover restores it elsewhere, state kept.
    let holder = e["node_name"].as_str().unwrap().to_string();
    c.kill9(&holder);
    let t0 = Instant::now();
    for _ in 0..3 {
        rs_acked = step(&mut rs, rs_acked).await.unwrap();
    }
    eprintln!("failover of {} from {holder}: {:?}", rs.id, t0.elapsed());
    let e = c.entry(&rs.id).await;
    assert_ne!(e["node_name"].as_str(), Some(holder.as_str()), "{e}");
    for _ in 0..2 {
        py_acked = step(&mut py, py_acked).await.unwrap();
    }

    // list / versions / retire.
    let out = c.agent_cli(&["list"]);
    let listed = stdout(&out);
    assert!(listed.contains("counter-rs\t0.1.0\tcount"), "{listed}");
    assert!(listed.contains("counter-py\t0.1.0\tcount"), "{listed}");
    let out = c.agent_cli(&["retire", "counter-py", "0.1.0"]);
    assert!(out.status.success());
    let out = c.agent_cli(&["versions", "counter-py"]);
    assert!(stdout(&out).contains("retired"), "{}", stdout(&out));
    let refused = client.create(&manifest("counter-py"), None).await;
    assert!(
        matches!(&refused, Err(ClientError::Api { code, .. }) if code == "agent_retired"),
        "{:?}",
        refused.err()
    );
    // The live session keeps its version.
    py_acked = step(&mut py, py_acked).await.unwrap();
    let unknown = client.create(&manifest("nobody"), None).await;
    assert!(
        matches!(&unknown, Err(ClientError::Api { status: 404, .. })),
        "{:?}",
        unknown.err()
    );

    // The registry survives an RC restart.
    c.kill9("rc");
    let cfg = c.rc_cfg.clone();
    c.spawn("rc", "rc", cfg);
    let deadline = Instant::now() + Duration::from_secs(60);
    let v = loop {
        let v = c.get("/agents").await;
        if v["agents"].is_array() {
            break v;
        }
        assert!(Instant::now() < deadline, "RC not back: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let names: Vec<(&str, &Value)> = v["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["name"].as_str().unwrap(), &a["latest"]))
        .collect();
    assert_eq!(
        names,
        vec![
            ("counter-py", &Value::Null),
            ("counter-rs", &json!("0.1.0"))
        ],
        "{v}"
    );
    let show = c.get("/agents/counter-rs").await;
    assert_eq!(show["versions"][0]["hash"], json!(rs_hash), "{show}");
    assert_eq!(show["versions"][0]["signer"], json!(dev_did), "{show}");
    let _ = (rs_acked, py_acked);
}

/// The asset plane (ADR 0031) with real processes: a package with an asset file is pushed (the
/// CLI uploads the asset first; a package naming a blob the RC lacks is refused), the package's
/// `[scaling] warm_nodes` puts it on both nodes before any session, and a node that joins later
/// and never held it takes a live handover: it fetches package and asset at `Prepare` from the
/// nodes that hold them (range requests, verified), not from the RC. Blobs are served to member
/// nodes and operators only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn assets_are_prepositioned_and_a_cold_node_fetches_from_holders() {
    let (rs_dir, _) = agent_dirs();
    let mut c = Colony::start();
    for n in ["n1", "n2"] {
        c.node(n, "DE");
    }
    c.wait_alive(2).await;

    // counter-rs with an asset file and two warm nodes in its default manifest.
    let pkg = c.dir.path().join("counter-assets");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::copy(rs_dir.join("agent.wasm"), pkg.join("agent.wasm")).unwrap();
    let notes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(pkg.join("notes.bin"), &notes).unwrap();
    let asset_hash = blake3::hash(&notes).to_hex().to_string();
    let toml = std::fs::read_to_string(rs_dir.join("agent.toml")).unwrap();
    std::fs::write(
        pkg.join("agent.toml"),
        format!("{toml}\n[[assets]]\nname = \"notes\"\nfile = \"notes.bin\"\n\n[manifest.scaling]\nwarm_nodes = 2\n"),
    )
    .unwrap();
    let (key, _) = c.developer_key();

    // A package naming a blob the RC does not hold: refused, nothing stored.
    let ghost = c.dir.path().join("ghost");
    std::fs::create_dir_all(&ghost).unwrap();
    std::fs::copy(rs_dir.join("agent.wasm"), ghost.join("agent.wasm")).unwrap();
    std::fs::write(
        ghost.join("agent.toml"),
        format!(
            "{}\n[[assets]]\nname = \"x\"\nhash = \"{}\"\n",
            toml.replace("version = \"0.1.0\"", "version = \"0.0.9\""),
            "ab".repeat(32)
        ),
    )
    .unwrap();
    let out = c.agent_cli(&[
        "push",
        ghost.to_str().unwrap(),
        "--developer-key",
        key.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("missing_blobs"), "{}", stderr(&out));
    assert!(c.stored().is_empty(), "nothing stored: {:?}", c.stored());

    let out = c.agent_cli(&[
        "push",
        pkg.to_str().unwrap(),
        "--developer-key",
        key.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "push: {}", stderr(&out));
    assert!(
        stderr(&out).contains(&asset_hash),
        "the asset was uploaded: {}",
        stderr(&out)
    );
    let pkg_hash = stdout(&out).trim().rsplit(' ').next().unwrap().to_string();
    assert!(c.rc_data().join("blobs").join(&asset_hash).is_file());
    // The RC counts pushes by result and reports its registry and blobs.
    let m = c
        .http
        .get(format!("{}/metrics", c.rc_api))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "opengrid_agent_pushes_total{result=\"created\"",
        "opengrid_agent_pushes_total{result=\"missing_blobs\"",
        "opengrid_agents ",
        "opengrid_rc_blobs_bytes ",
    ] {
        assert!(
            m.lines().any(|l| l.starts_with(line)),
            "{line} in the RC's /metrics:\n{m}"
        );
    }

    // Pre-positioned on both nodes before any session: package and asset.
    let root = c.dir.path().to_path_buf();
    let held = |node: &str, h: &str| root.join(format!("{node}-data/blobs/{h}")).is_file();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !["n1", "n2"]
        .iter()
        .all(|n| held(n, &pkg_hash) && held(n, &asset_hash))
    {
        assert!(
            Instant::now() < deadline,
            "not pre-positioned within 120 s; logs in {}",
            c.dir.path().display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The RC learns who holds it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = c.get(&format!("/blobs/{asset_hash}/holders")).await;
        if v["holders"].as_array().is_some_and(|h| h.len() == 2) {
            assert_eq!(v["rc"], json!(true), "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "holders not reported: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Blobs are for members and operators.
    let n1_api = c.get("/status").await["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "n1")
        .unwrap()["address"]
        .as_str()
        .unwrap()
        .to_string();
    let url = format!("{n1_api}/blobs/{asset_hash}");
    let anon = reqwest::get(&url).await.unwrap();
    assert_eq!(anon.status().as_u16(), 401);
    let stranger = opengrid_cluster::common::identity::Identity::generate();
    let t =
        opengrid_cluster::common::token::mint_operator(&stranger, Duration::from_secs(60)).unwrap();
    let r = reqwest::Client::new()
        .get(&url)
        .bearer_auth(t)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        403,
        "a stranger's own token opens nothing"
    );
    let r = c
        .http
        .get(&url)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 206);
    assert_eq!(&r.bytes().await.unwrap()[..], &notes[10..20]);

    // A session, then a node that never held the package joins and takes it over live.
    let client = c.client();
    let mut s = client.create(&manifest("counter-rs"), None).await.unwrap();
    let mut acked = 0;
    for _ in 0..3 {
        acked = step(&mut s, acked).await.unwrap();
    }
    c.node("n3", "DE");
    c.wait_alive(3).await;
    assert!(!held("n3", &pkg_hash));
    c.handover_to(&s.id, Some("n3")).await;
    // The directory follows the activation (a control message after the handover's answer).
    let id = s.id.clone();
    c.wait("the directory names n3", Duration::from_secs(30), |st| {
        st["sessions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["session_id"] == id.as_str() && e["node_name"] == "n3")
    })
    .await;
    for _ in 0..3 {
        acked = step(&mut s, acked).await.unwrap();
    }
    assert!(held("n3", &pkg_hash) && held("n3", &asset_hash));
    // n3 fetched from its peers: every byte from the holders, none from the RC.
    let n3_api = c.entry(&s.id).await["address"]
        .as_str()
        .unwrap()
        .to_string();
    let metrics = c
        .http
        .get(format!("{n3_api}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let fetched = |source: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("opengrid_blobs_fetched_bytes")
                    && l.contains(&format!("source=\"{source}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    assert!(
        fetched("peer") >= notes.len() as u64,
        "fetched from peers: {}\n{metrics}",
        fetched("peer")
    );
    assert_eq!(fetched("rc"), 0, "nothing from the RC");
}

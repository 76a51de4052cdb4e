//! Federation tests: three colonies (RC + node each) in this process, their RCs gossiping signed
//! summaries over real libp2p (TCP on 127.0.0.1), cross-colony routing by signed RC-to-RC admission
//! requests over HTTP on 127.0.0.1. Every wait polls a condition with a deadline.

mod support;
use std::time::{Duration, Instant};
use support::setup;

use ed25519_dalek::SigningKey;
use opengrid_canopy::FederationTreaty;
use opengrid_cluster::common::identity::Identity;
use opengrid_cluster::node::config::NodeConfig;
use opengrid_cluster::rc::config::RcConfig;
use opengrid_cluster::rc::federation::{
    AdmissionAnswer, AdmissionRequest, CanopySection, Outcome, Signed, ADMISSION_PATH,
    ANSWER_DOMAIN, REQUEST_DOMAIN,
};
use opengrid_cluster::{start_node, start_rc, NodeHandle, RcHandle};
use opengrid_session::{Did, HumanDuration, Manifest};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(30);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn treaties() -> Vec<FederationTreaty> {
    let t = |name: &str, from: &str, to: &str, route: bool, classes: &[&str]| FederationTreaty {
        name: name.into(),
        from_zone: from.into(),
        to_zone: to.into(),
        route,
        replicate: false,
        data_classes: classes.iter().map(|c| c.to_string()).collect(),
    };
    vec![
        t("eu-internal", "EU", "EU", true, &["*"]),
        t("de-us-personal-closed", "DE", "US", false, &["personal"]),
        t("de-us-public", "DE", "US", true, &["public"]),
    ]
}

struct Member {
    /// Short name (`de`, `fr`, `us`).
    short: &'static str,
    /// Colony id (unique per test: ractor's pg groups are process-wide).
    colony: String,
    rc: RcHandle,
    _node: NodeHandle,
    node_api: String,
    did: Did,
}

struct Federation {
    _dir: tempfile::TempDir,
    members: Vec<Member>,
    http: reqwest::Client,
}

fn did_of(dir: &std::path::Path) -> Did {
    let id = Identity::load_or_create(dir).unwrap();
    Did::parse(&id.id().did()).unwrap()
}

/// Boots `<tag>_de` (DE, serves only `adder`), `<tag>_fr` (FR, `echo`) and `<tag>_us` (US,
/// `echo`); every RC trusts the other two; fr and us bootstrap from de's canopy address.
async fn boot(tag: &str) -> Federation {
    boot_with(tag, |_, _| {}).await
}

/// [`boot`], with `tweak(short, config)` applied to each node's config.
async fn boot_with(tag: &str, tweak: impl Fn(&str, &mut NodeConfig)) -> Federation {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let colonies = [
        ("de", "eu-central", "DE", "adder"),
        ("fr", "eu-west", "FR", "echo"),
        ("us", "us-east", "US", "echo"),
    ];
    let dids: Vec<Did> = colonies
        .iter()
        .map(|(short, ..)| did_of(&dir.path().join(format!("{short}-rc"))))
        .collect();
    let mut members = Vec::new();
    let mut bootstrap: Vec<String> = Vec::new();
    for (i, (short, region, zone, handler)) in colonies.iter().enumerate() {
        let colony = format!("{tag}_{short}");
        let secret = format!("{colony}-secret");
        let rc_cfg = RcConfig {
            colony: colony.clone(),
            data_dir: dir.path().join(format!("{short}-rc")),
            api_listen: "127.0.0.1:0".parse().unwrap(),
            cluster_listen: "127.0.0.1:0".parse().unwrap(),
            colony_secret: secret.clone(),
            canopy: CanopySection {
                enabled: true,
                bootstrap: bootstrap.clone(),
                publish_interval: HumanDuration::from_millis(200),
                expiry_intervals: 10,
                gossip_heartbeat: HumanDuration::from_millis(100),
                region: region.to_string(),
                zone: zone.to_string(),
                trusted_rcs: dids
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, d)| d.to_string())
                    .collect(),
                treaty: treaties(),
                ..CanopySection::default()
            },
            ..RcConfig::default()
        };
        let rc = start_rc(rc_cfg).await.expect("rc starts");
        let fed = rc.core().federation().expect("canopy enabled").clone();
        if bootstrap.is_empty() {
            bootstrap.push(fed.canopy().listen_addr().to_string());
        }
        let node_cfg = NodeConfig {
            name: format!("{zone}-node").to_lowercase(),
            colony: colony.clone(),
            data_dir: dir.path().join(format!("{short}-node")),
            jurisdiction: zone.to_string(),
            api_listen: "127.0.0.1:0".parse().unwrap(),
            rc_cluster: rc.cluster_addr().to_string(),
            colony_secret: secret,
            handlers: vec![handler.to_string()],
            handler_threads: 1,
            fsync: false,
            ..NodeConfig::default()
        };
        let mut node_cfg = node_cfg;
        tweak(short, &mut node_cfg);
        let node = start_node(node_cfg, setup).await.expect("node starts");
        members.push(Member {
            short,
            colony,
            node_api: node.api_url(),
            rc,
            _node: node,
            did: dids[i].clone(),
        });
    }
    let f = Federation {
        _dir: dir,
        members,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    };
    // Every RC's peering table lists the other two colonies, each with its node's capacity.
    let deadline = Instant::now() + DEADLINE;
    for m in &f.members {
        loop {
            let st = f.status(m).await;
            let peers = st["canopy"]["peers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let ready = peers.len() == 2
                && peers.iter().all(|p| {
                    p["free_slots"].as_u64().unwrap_or(0) > 0
                        && p["handlers"].as_object().is_some_and(|h| !h.is_empty())
                });
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: peering table not complete: {st}",
                m.colony
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    f
}

impl Federation {
    /// Stops every node, then every RC: their RocksDB stores close before the test binary exits
    /// (a store still open at process exit races RocksDB's static destructors: "pthread lock:
    /// Invalid argument", SIGABRT after the tests passed).
    async fn shutdown(self) {
        let mut rcs = Vec::new();
        for m in self.members {
            m._node.shutdown().await;
            rcs.push(m.rc);
        }
        for rc in rcs {
            rc.shutdown().await;
        }
    }

    fn member(&self, short: &str) -> &Member {
        self.members.iter().find(|m| m.short == short).unwrap()
    }

    async fn status(&self, m: &Member) -> Value {
        self.http
            .get(format!("{}/status", m.rc.api_url()))
            .bearer_auth(support::operator_token(&m.rc))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn create(&self, at: &str, manifest: &str, query: &str) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/sessions{query}", self.member(at).rc.api_url()))
            .header("content-type", "application/toml")
            .body(manifest.to_string())
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    async fn admission(&self, at: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{ADMISSION_PATH}", self.member(at).rc.api_url()))
            .json(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }
}

fn manifest(handler: &str, jurisdictions: &[&str]) -> String {
    format!(
        "version = 1\n[session]\nhandler = \"{handler}\"\ncontinuity = \"interactive\"\n[placement]\njurisdictions = {jurisdictions:?}\n[migration]\ncost = \"cheap\"\nacceptable_loss = \"5s\"\nmax_blackout = \"100ms\"\n"
    )
}

fn counter(st: &Value, name: &str) -> u64 {
    st["canopy"]["federation"][name].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_route_across_colonies_within_treaties() {
    let f = boot("route").await;
    let (de, fr, us) = (f.member("de"), f.member("fr"), f.member("us"));

    // The peering table in /status names colony, region, jurisdictions, load and age.
    let st = f.status(de).await;
    let peers = st["canopy"]["peers"].as_array().unwrap();
    let fr_peer = peers
        .iter()
        .find(|p| p["colony"] == json!(fr.colony))
        .unwrap();
    assert_eq!(fr_peer["region"], "eu-west");
    assert_eq!(fr_peer["jurisdictions"], json!(["FR"]));
    assert_eq!(fr_peer["rc"], json!(fr.did.to_string()));
    assert!(fr_peer["age_ms"].is_u64() && fr_peer["load_permille"].is_u64());

    // The canopy counters of /status are on the RC's /metrics too, with the propagation
    // histogram of the summaries it accepted (the peers above).
    let metrics = f
        .http
        .get(format!("{}/metrics", de.rc.api_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "opengrid_canopy_accepted_total",
        "opengrid_canopy_wire_sent_bytes_total",
        "opengrid_canopy_connected_peers",
        "opengrid_canopy_peering_entries",
        "opengrid_canopy_propagation_seconds_count",
    ] {
        assert!(metrics.contains(name), "{name} missing in:\n{metrics}");
    }

    // 1. `echo` is not served in colony-de; within the EU only colony-fr has it.
    let (code, body) = f.create("de", &manifest("echo", &["EU"]), "").await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["routed"], true, "{body}");
    assert_eq!(body["colony"], json!(fr.colony), "{body}");
    assert_eq!(body["address"], json!(fr.node_api), "{body}");
    assert_eq!(body["zones"], json!(["FR"]));
    let sid = body["session_id"].as_str().unwrap().to_string();
    // The client talks to the remote node directly.
    let r: Value = f
        .http
        .post(format!("{}/sessions/{sid}/inputs", fr.node_api))
        // The capability the remote RC signed, passed through by this one: its node honours it.
        .bearer_auth(
            body["capability"]
                .as_str()
                .expect("a capability from the remote RC"),
        )
        .json(&json!({"seq": 1, "input": {"hello": "fr"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["output"]["echo"]["hello"], "fr", "{r}");
    // colony-fr's directory holds it; colony-de records that it routed it out.
    let fr_st = f.status(fr).await;
    assert!(
        fr_st["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["session_id"] == json!(sid)),
        "{fr_st}"
    );
    assert_eq!(counter(&fr_st, "inbound_placed"), 1);
    let de_st = f.status(de).await;
    assert_eq!(counter(&de_st, "routed_out"), 1);
    assert_eq!(de_st["canopy"]["routed_out"][0]["session_id"], json!(sid));

    // 2. Public data may cross DE -> US ("de-us-public"): placed in colony-us.
    let (code, body) = f
        .create("de", &manifest("echo", &["US"]), "?data_class=public")
        .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["colony"], json!(us.colony), "{body}");
    assert_eq!(body["address"], json!(us.node_api), "{body}");

    // 3. Personal data (the default class) may not: the only free `echo` capacity the manifest
    //    allows is in the US, and the refusal names the treaty. Nothing is placed there.
    let us_before = f.status(us).await["sessions"].as_array().unwrap().len();
    let (code, body) = f.create("de", &manifest("echo", &["DE", "US"]), "").await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["code"], "forbidden_by_treaty", "{body}");
    assert_eq!(body["treaties"], json!(["de-us-personal-closed"]), "{body}");
    let msg = body["message"].as_str().unwrap();
    assert!(msg.contains("de-us-personal-closed"), "{msg}");
    let us_st = f.status(us).await;
    assert_eq!(us_st["sessions"].as_array().unwrap().len(), us_before);
    assert_eq!(counter(&f.status(de).await, "refused_by_treaty"), 1);

    // 4. A manifest no colony can serve is refused with every colony's reason.
    let (code, body) = f.create("de", &manifest("echo", &["JP"]), "").await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["colonies"].as_array().unwrap().len(), 2, "{body}");

    // 5. Local admission still comes first: `adder` in DE stays in colony-de.
    let (code, body) = f.create("de", &manifest("adder", &["DE"]), "").await;
    assert_eq!(code, 201, "{body}");
    assert!(body.get("routed").is_none(), "{body}");
    assert_eq!(body["address"], json!(de.node_api));

    // 6. Latency of a routed placement (peering-table lookup, signed request, remote admission and
    //    node start, signed answer) next to a local one. Printed for BENCHMARKS.md.
    let mut local = Vec::new();
    let mut routed = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let (code, body) = f.create("de", &manifest("adder", &["DE"]), "").await;
        local.push(t.elapsed());
        assert_eq!(code, 201, "{body}");
        let t = Instant::now();
        let (code, body) = f.create("de", &manifest("echo", &["EU"]), "").await;
        routed.push(t.elapsed());
        assert_eq!((code, &body["colony"]), (201, &json!(fr.colony)), "{body}");
    }
    local.sort();
    routed.sort();
    eprintln!(
        "placement via HTTP on 127.0.0.1, 20 each: local p50 {:?} max {:?}; routed across colonies p50 {:?} max {:?}",
        local[10], local[19], routed[10], routed[19]
    );
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_rc_requests_are_refused() {
    let f = boot("forged").await;
    let (de, fr, us) = (f.member("de"), f.member("fr"), f.member("us"));
    let de_fed = de.rc.core().federation().unwrap().clone();
    let m = Manifest::from_toml_str(&manifest("echo", &["EU"])).unwrap();
    let zones = vec!["FR".to_string()];

    // A genuine request from colony-de is placed, and the answer is signed by colony-fr.
    let (req, signed) = de_fed.request(&fr.did, &m, None, "personal", &zones);
    let (code, body) = f.admission("fr", &json!(signed)).await;
    assert_eq!(code, 200, "{body}");
    let answer: Signed = serde_json::from_value(body).unwrap();
    assert!(answer.verify(ANSWER_DOMAIN, &fr.did));
    assert!(!answer.verify(ANSWER_DOMAIN, &de.did));
    let a: AdmissionAnswer = serde_json::from_str(&answer.payload).unwrap();
    assert_eq!(a.request_id, req.request_id);
    assert!(matches!(a.outcome, Outcome::Placed { .. }), "{a:?}");

    // Replayed verbatim: refused.
    let (code, body) = f.admission("fr", &json!(signed)).await;
    assert_eq!(
        (code, body["code"].as_str()),
        (401, Some("replayed_request")),
        "{body}"
    );

    // Tampered (zones widened to US after signing): the signature no longer verifies.
    let mut tampered: AdmissionRequest = serde_json::from_str(&signed.payload).unwrap();
    tampered.zones = vec!["US".into()];
    tampered.request_id = "fresh-id".into();
    let forged = Signed {
        payload: serde_json::to_string(&tampered).unwrap(),
        signature: signed.signature.clone(),
    };
    let (code, body) = f.admission("fr", &json!(forged)).await;
    assert_eq!(
        (code, body["code"].as_str()),
        (401, Some("bad_signature")),
        "{body}"
    );

    // Claims colony-de but signed by another key.
    let mallory = SigningKey::from_bytes(&rand_seed());
    let (mut req, _) = de_fed.request(&fr.did, &m, None, "personal", &zones);
    req.request_id = "mallory-1".into();
    let forged = Signed::sign(REQUEST_DOMAIN, &req, &mallory);
    let (code, body) = f.admission("fr", &json!(forged)).await;
    assert_eq!(
        (code, body["code"].as_str()),
        (401, Some("bad_signature")),
        "{body}"
    );

    // Signed by a key no colony knows (a well-formed request from a stranger).
    let mallory_did = Did::from_public_key(&mallory.verifying_key());
    req.from_rc = mallory_did;
    req.request_id = "mallory-2".into();
    let stranger = Signed::sign(REQUEST_DOMAIN, &req, &mallory);
    let (code, body) = f.admission("fr", &json!(stranger)).await;
    assert_eq!(
        (code, body["code"].as_str()),
        (401, Some("unknown_rc")),
        "{body}"
    );

    // A genuine request for colony-us presented to colony-fr.
    let (_, for_us) = de_fed.request(&us.did, &m, None, "personal", &zones);
    let (code, body) = f.admission("fr", &json!(for_us)).await;
    assert_eq!(
        (code, body["code"].as_str()),
        (401, Some("wrong_recipient")),
        "{body}"
    );

    // Garbage.
    let (code, body) = f
        .admission("fr", &json!({"payload": "{", "signature": ""}))
        .await;
    assert_eq!(
        (code, body["code"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );

    // A genuine request whose zones the manifest does not allow is refused by the receiver, and
    // the session is not placed.
    let (_, widened) = de_fed.request(&us.did, &m, None, "public", &["US".to_string()]);
    let (code, body) = f.admission("us", &json!(widened)).await;
    assert_eq!(code, 200, "{body}");
    let a: AdmissionAnswer =
        serde_json::from_str(&serde_json::from_value::<Signed>(body).unwrap().payload).unwrap();
    assert!(
        matches!(&a.outcome, Outcome::Refused { code, .. } if code == "bad_request"),
        "{a:?}"
    );

    // Only one session was placed in colony-fr; the refusals were counted.
    let st = f.status(fr).await;
    assert_eq!(st["sessions"].as_array().unwrap().len(), 1, "{st}");
    assert_eq!(counter(&st, "inbound_placed"), 1);
    assert_eq!(counter(&st, "inbound_bad_signature"), 2);
    assert_eq!(counter(&st, "inbound_unknown_rc"), 1);
    assert_eq!(counter(&st, "inbound_replayed"), 1);
    assert_eq!(counter(&st, "inbound_rejected"), 6);
    assert_eq!(counter(&f.status(us).await, "inbound_placed"), 0);
    f.shutdown().await;
}

fn rand_seed() -> [u8; 32] {
    let mut s = [0u8; 32];
    for (i, b) in s.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(7);
    }
    s
}

/// A pushed agent follows a session routed to another colony (ADR 0031): colony-de has the agent
/// in its registry but no node that runs agents, so the session is routed to colony-fr, whose RC
/// imports the package from colony-de's RC through the federation (a token signed by its own key,
/// honoured because colony-fr is in colony-de's peering table), registers it as imported, and its
/// node fetches it and answers. A stranger's token reads no blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_agent_follows_a_routed_session_to_another_colony() {
    let f = boot_with("agents", |short, cfg| {
        cfg.agents.enabled = short != "de";
    })
    .await;
    let (de, fr) = (f.member("de"), f.member("fr"));
    // Push counter-rs to colony-de.
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/agents/counter-rs");
    if !dir.join("agent.wasm").is_file() {
        let script = dir.join("../../../scripts/build-agents.sh");
        assert!(std::process::Command::new("bash")
            .arg(&script)
            .status()
            .unwrap()
            .success());
    }
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let package = opengrid_wasm::Package::from_dir(&dir).unwrap().sign(&key);
    let hash = package.hash();
    let r = f
        .http
        .post(format!("{}/agents", de.rc.api_url()))
        .bearer_auth(support::operator_token(&de.rc))
        .timeout(Duration::from_secs(120))
        .body(package.to_bytes())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
    // A stranger reads no blob of colony-de.
    let stranger = Identity::generate();
    let t =
        opengrid_cluster::common::token::mint_operator(&stranger, Duration::from_secs(60)).unwrap();
    let r = f
        .http
        .get(format!("{}/blobs/{hash}", de.rc.api_url()))
        .bearer_auth(t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    let m = "version = 1\n[session]\nagent = \"counter-rs\"\ncontinuity = \"interactive\"\n[placement]\njurisdictions = [\"EU\"]\n[migration]\ncost = \"cheap\"\nacceptable_loss = \"5s\"\nmax_blackout = \"100ms\"\n";
    let r = f
        .http
        .post(format!("{}/sessions", de.rc.api_url()))
        .header("content-type", "application/toml")
        .timeout(Duration::from_secs(120))
        .body(m)
        .send()
        .await
        .unwrap();
    let (code, body): (u16, Value) = (r.status().as_u16(), r.json().await.unwrap());
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["routed"], true, "{body}");
    assert_eq!(body["colony"], json!(fr.colony), "{body}");
    let sid = body["session_id"].as_str().unwrap().to_string();
    for seq in 1..=3u64 {
        let r: Value = f
            .http
            .post(format!("{}/sessions/{sid}/inputs", fr.node_api))
            .bearer_auth(body["capability"].as_str().unwrap())
            .timeout(Duration::from_secs(60))
            .json(&json!({"seq": seq, "input": 2}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["output"], json!(2 * seq), "{r}");
    }
    // colony-fr's registry lists it as imported from colony-de.
    let v: Value = f
        .http
        .get(format!("{}/agents/counter-rs", fr.rc.api_url()))
        .bearer_auth(support::operator_token(&fr.rc))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["versions"][0]["hash"], json!(hash), "{v}");
    assert_eq!(v["versions"][0]["imported_from"], json!(de.colony), "{v}");
    f.shutdown().await;
}

//! The cost of security on the node's and RC's hot paths (issue #15), each with its "off"
//! baseline measured in the same run:
//! - client API: checking a session capability on every request — the first time (an ed25519
//!   JWT verification) and then from the verified-token cache — against one HTTP request round
//!   trip on 127.0.0.1 (axum + reqwest, the path every input takes);
//! - control plane: sealing and opening a heartbeat (ChaCha20-Poly1305 under the link key)
//!   against encoding and decoding it in the clear (what the control plane did before).
//!
//! `cargo bench --workspace --bench security` (criterion).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use opengrid_cluster::common::access::{Access, Bearer};
use opengrid_cluster::common::identity::Identity;
use opengrid_cluster::common::seal::{KeyOffer, Link, Sealed};
use opengrid_cluster::common::token;
use opengrid_cluster::common::wire::{self, ToRc};

fn client_api(c: &mut Criterion) {
    let rc = Identity::generate();
    let cap = token::mint_session(&rc, "s-bench", Duration::from_secs(3600)).unwrap();
    let access = Access::new(vec![rc.id()], vec![rc.id()]);
    let bearer = Bearer(Some(cap.clone()));
    access.session(&bearer, "s-bench").unwrap();
    let mut g = c.benchmark_group("security/client_api");
    g.bench_function("capability_first_check", |b| {
        b.iter(|| token::verify_session(black_box(&cap), &[rc.id()], "s-bench").unwrap())
    });
    g.bench_function("capability_cached_check", |b| {
        b.iter(|| access.session(black_box(&bearer), "s-bench").unwrap())
    });
    // Baseline: one HTTP request round trip on 127.0.0.1 (what every input costs anyway).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let url = rt.block_on(async {
        let app = axum::Router::new().route("/x", axum::routing::post(|| async { "ok" }));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        format!("http://{addr}/x")
    });
    let http = reqwest::Client::new();
    g.bench_function("baseline_http_round_trip", |b| {
        b.iter(|| {
            rt.block_on(async {
                http.post(&url)
                    .body("{\"seq\":1,\"input\":1}")
                    .send()
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap()
            })
        })
    });
    g.finish();
}

fn control_plane(c: &mut Criterion) {
    let (node, rcid) = (Identity::generate(), Identity::generate());
    let (a, b) = (KeyOffer::new(), KeyOffer::new());
    let k = a
        .link_key(&b.public, &node.id(), &rcid.id(), &a.public, &b.public, 1)
        .unwrap();
    let (mut at_node, mut at_rc) = (Link::new(k, rcid.id()), Link::new(k, node.id()));
    let hb = ToRc::Heartbeat {
        node: node.id(),
        seq: 1,
        sessions: 40,
        rtt_us: 250,
        warm: vec!["tutor".into(), "counter".into()],
    };
    let mut g = c.benchmark_group("security/control_plane");
    g.bench_function("heartbeat_sealed_and_opened", |bch| {
        bch.iter(|| {
            let s: Sealed<ToRc> = at_node.seal(node.id(), black_box(hb.clone()));
            at_rc.open(s).unwrap()
        })
    });
    g.bench_function("baseline_heartbeat_encoded_and_decoded", |bch| {
        bch.iter(|| {
            let bytes = wire::encode(&black_box(hb.clone()));
            wire::decode::<ToRc>(&bytes).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, client_api, control_plane);
criterion_main!(benches);

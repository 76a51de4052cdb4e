//! P1: admission latency at 1k/10k/100k nodes, indexed vs naive full scan (same run).
//!
//! `cargo bench -p opengrid-cluster --bench admission` — criterion groups plus one JSON line per
//! (size, path) with p50/p99 of individually timed decisions.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use hdrhistogram::Histogram;
use opengrid_cluster::common::identity::Identity;
use opengrid_cluster::rc::admission::{Colony, NodeSpec, Requirements};
use opengrid_session::AcceleratorClass;
use rand::{Rng, SeedableRng};

const JURISDICTIONS: &[&str] = &[
    "DE", "FR", "NL", "IT", "ES", "PL", "SE", "AT", "BE", "US", "GB", "JP",
];
const HANDLERS: &[&str] = &["tutor", "counter", "chat", "vision", "speech"];
const ACCS: &[AcceleratorClass] = &[
    AcceleratorClass::None,
    AcceleratorClass::GpuSmall,
    AcceleratorClass::GpuLarge,
];

fn colony(n: usize, seed: u64) -> Colony {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut c = Colony::new();
    for _ in 0..n {
        let mut handlers: Vec<String> = HANDLERS
            .iter()
            .filter(|_| rng.random_bool(0.4))
            .map(|s| s.to_string())
            .collect();
        if handlers.is_empty() {
            handlers.push("tutor".into());
        }
        let spec = NodeSpec {
            id: Identity::generate().id(),
            name: String::new(),
            jurisdiction: JURISDICTIONS[rng.random_range(0..JURISDICTIONS.len())].into(),
            accelerator: ACCS[rng.random_range(0..3)],
            cpu_cores: 8,
            memory: rng.random_range(1..64u64) << 30,
            handlers,
            capabilities: if rng.random_bool(0.3) {
                vec!["speech-io".into()]
            } else {
                vec![]
            },
            price_micros_per_input: rng.random_range(1..100),
            capacity: rng.random_range(10..1000),
            max_session_memory: 0,
            api: String::new(),
            migration: String::new(),
        };
        let id = spec.id;
        c.upsert(spec);
        let cap = c.get(&id).map(|r| r.spec.capacity).unwrap_or(1);
        c.update_load(
            &id,
            rng.random_range(0..=cap),
            rng.random_range(200..80_000),
            vec![],
        );
    }
    c
}

fn requirements() -> Vec<Requirements> {
    let mut v = Vec::new();
    for (i, h) in HANDLERS.iter().enumerate() {
        for j in [
            vec!["DE".to_string()],
            vec!["EU".to_string()],
            vec![],
            vec!["US".to_string(), "GB".to_string()],
        ] {
            v.push(Requirements {
                handler: h.to_string(),
                jurisdictions: j,
                accelerator: ACCS[i % 3],
                memory: 512 << 20,
                latency_ceiling_us: if i % 2 == 0 { Some(50_000) } else { None },
                capabilities: if i == 4 {
                    vec!["speech-io".into()]
                } else {
                    vec![]
                },
            });
        }
    }
    v
}

/// p50 and p99 of one admission decision, µs (recorded in ns, HdrHistogram at 3 significant
/// digits).
fn percentiles(c: &Colony, reqs: &[Requirements], naive: bool, iters: usize) -> (f64, f64) {
    let mut t = Histogram::<u64>::new_with_max(60_000_000_000, 3).expect("valid bounds");
    for i in 0..iters {
        let r = &reqs[i % reqs.len()];
        let s = Instant::now();
        let d = if naive { c.admit_naive(r) } else { c.admit(r) };
        t.saturating_record(s.elapsed().as_nanos() as u64);
        black_box(d);
    }
    let us = |q: f64| t.value_at_quantile(q) as f64 / 1000.0;
    (us(0.5), us(0.99))
}

fn bench(cr: &mut Criterion) {
    let reqs = requirements();
    let mut g = cr.benchmark_group("admission");
    for n in [1_000usize, 10_000, 100_000] {
        let c = colony(n, 42);
        // Same decisions on both paths.
        for r in &reqs {
            assert_eq!(c.admit(r), c.admit_naive(r));
        }
        let iters = if n >= 100_000 { 2_000 } else { 20_000 };
        let (p50, p99) = percentiles(&c, &reqs, false, iters);
        let (b50, b99) = percentiles(&c, &reqs, true, if n >= 100_000 { 200 } else { 2_000 });
        println!(
            "{}",
            serde_json::json!({"name": format!("admission/indexed/{n}"), "p50_us": p50, "p99_us": p99, "count": iters,
                "baseline": {"name": format!("admission/naive/{n}"), "p50_us": b50, "p99_us": b99}, "ratio_p99": b99 / p99})
        );
        let mut k = 0usize;
        g.bench_with_input(BenchmarkId::new("indexed", n), &n, |b, _| {
            b.iter(|| {
                k += 1;
                black_box(c.admit(&reqs[k % reqs.len()]))
            })
        });
        g.bench_with_input(BenchmarkId::new("naive", n), &n, |b, _| {
            b.iter(|| {
                k += 1;
                black_box(c.admit_naive(&reqs[k % reqs.len()]))
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = bench
}
criterion_main!(benches);

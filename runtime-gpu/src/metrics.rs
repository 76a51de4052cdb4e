//! Metrics of the inference plane. Counters and gauges are atomics, read by
//! `InferenceRuntime::metrics` into a [`MetricsSnapshot`] and observed by OpenTelemetry callbacks
//! on the [`Meter`] given in [`Reporting`](crate::Reporting); the histograms are OpenTelemetry
//! instruments recorded where the work happens. The exporter (Prometheus `/metrics`, OTLP) belongs
//! to whoever owns the meter's provider. The names and their meaning are listed in the crate
//! documentation.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use opentelemetry::metrics::{Histogram, Meter};
use serde::{Deserialize, Serialize};

/// Bucket bounds of the time histograms, in seconds (50 µs … 10 s).
pub const SECONDS_BUCKETS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];
/// Bucket bounds of the batch-size histogram, in rows.
pub const ROW_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// The instruments and counters of one runtime.
pub(crate) struct Metrics {
    pub(crate) requests: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) rejected_backpressure: AtomicU64,
    pub(crate) rejected_invalid: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) batch_rows: AtomicU64,
    pub(crate) busy_us: AtomicU64,
    pub(crate) queue_depth_max: AtomicU64,
    batch_size: Histogram<u64>,
    inference_seconds: Histogram<f64>,
    queue_wait_seconds: Histogram<f64>,
}

impl Metrics {
    /// Counters at zero and the histograms created on `meter`.
    pub(crate) fn new(meter: &Meter) -> Self {
        Self {
            requests: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            rejected_backpressure: AtomicU64::new(0),
            rejected_invalid: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            batch_rows: AtomicU64::new(0),
            busy_us: AtomicU64::new(0),
            queue_depth_max: AtomicU64::new(0),
            batch_size: meter
                .u64_histogram("opengrid_runtime_gpu_batch_size_rows")
                .with_description("rows per model run")
                .with_boundaries(ROW_BUCKETS.to_vec())
                .build(),
            inference_seconds: meter
                .f64_histogram("opengrid_runtime_gpu_inference")
                .with_unit("s")
                .with_description("wall time of one model run")
                .with_boundaries(SECONDS_BUCKETS.to_vec())
                .build(),
            queue_wait_seconds: meter
                .f64_histogram("opengrid_runtime_gpu_queue_wait")
                .with_unit("s")
                .with_description("time a request waited from enqueue to the start of its run")
                .with_boundaries(SECONDS_BUCKETS.to_vec())
                .build(),
        }
    }

    pub(crate) fn observe_depth(&self, depth: usize) {
        self.queue_depth_max.fetch_max(depth as u64, Relaxed);
    }

    pub(crate) fn observe_queue_wait(&self, waited: Duration) {
        self.queue_wait_seconds.record(waited.as_secs_f64(), &[]);
    }

    pub(crate) fn observe_run(&self, rows: usize, took: Duration) {
        self.batches.fetch_add(1, Relaxed);
        self.batch_rows.fetch_add(rows as u64, Relaxed);
        self.busy_us.fetch_add(micros(took), Relaxed);
        self.batch_size.record(rows as u64, &[]);
        self.inference_seconds.record(took.as_secs_f64(), &[]);
    }

    pub(crate) fn snapshot(
        &self,
        queue_depth: usize,
        queue_capacity: usize,
        models_loaded: usize,
        cuda_enabled: bool,
    ) -> MetricsSnapshot {
        MetricsSnapshot {
            requests_total: self.requests.load(Relaxed),
            completed_total: self.completed.load(Relaxed),
            rejected_backpressure_total: self.rejected_backpressure.load(Relaxed),
            rejected_invalid_total: self.rejected_invalid.load(Relaxed),
            failed_total: self.failed.load(Relaxed),
            batches_total: self.batches.load(Relaxed),
            batch_rows_total: self.batch_rows.load(Relaxed),
            busy_us_total: self.busy_us.load(Relaxed),
            queue_depth_requests: queue_depth as u64,
            queue_depth_max_requests: self.queue_depth_max.load(Relaxed),
            queue_capacity_requests: queue_capacity as u64,
            models_loaded: models_loaded as u64,
            cuda_enabled,
        }
    }
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Registers the counters and gauges on `meter` as observable instruments; each scrape calls
/// `read`, which returns `None` once the runtime is gone (then nothing is observed).
pub(crate) fn observe_on(
    meter: &Meter,
    read: impl Fn() -> Option<MetricsSnapshot> + Clone + Send + Sync + 'static,
) {
    type Field = fn(&MetricsSnapshot) -> u64;
    let counters: [(&'static str, &'static str, Field); 7] = [
        ("requests", "requests accepted into the queue", |m| {
            m.requests_total
        }),
        ("completed", "requests answered with an output", |m| {
            m.completed_total
        }),
        (
            "rejected_backpressure",
            "requests refused, queue full",
            |m| m.rejected_backpressure_total,
        ),
        (
            "rejected_invalid",
            "requests refused: unknown model, wrong dtype or shape",
            |m| m.rejected_invalid_total,
        ),
        ("failed", "accepted requests ONNX Runtime failed on", |m| {
            m.failed_total
        }),
        ("batches", "model runs", |m| m.batches_total),
        ("batch_rows", "rows summed over all runs", |m| {
            m.batch_rows_total
        }),
    ];
    for (what, description, field) in counters {
        let read = read.clone();
        meter
            .u64_observable_counter(format!("opengrid_runtime_gpu_{what}"))
            .with_description(description)
            .with_callback(move |o| {
                if let Some(m) = read() {
                    o.observe(field(&m), &[]);
                }
            })
            .build();
    }
    let gauges: [(&'static str, &'static str, Field); 5] = [
        ("queue_depth_requests", "requests queued now", |m| {
            m.queue_depth_requests
        }),
        (
            "queue_depth_max_requests",
            "highest queue depth seen",
            |m| m.queue_depth_max_requests,
        ),
        ("queue_capacity_requests", "configured queue bound", |m| {
            m.queue_capacity_requests
        }),
        ("models_loaded", "models registered", |m| m.models_loaded),
        (
            "cuda_enabled",
            "1 when the CUDA execution provider is in use",
            |m| u64::from(m.cuda_enabled),
        ),
    ];
    for (what, description, field) in gauges {
        let read = read.clone();
        meter
            .u64_observable_gauge(format!("opengrid_runtime_gpu_{what}"))
            .with_description(description)
            .with_callback(move |o| {
                if let Some(m) = read() {
                    o.observe(field(&m), &[]);
                }
            })
            .build();
    }
}

/// A copy of the counters and gauges at one instant, each documented with the name it is
/// exported under (histograms are exported only, never copied here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// `opengrid_runtime_gpu_requests_total`
    pub requests_total: u64,
    /// `opengrid_runtime_gpu_completed_total`
    pub completed_total: u64,
    /// `opengrid_runtime_gpu_rejected_backpressure_total`
    pub rejected_backpressure_total: u64,
    /// `opengrid_runtime_gpu_rejected_invalid_total`
    pub rejected_invalid_total: u64,
    /// `opengrid_runtime_gpu_failed_total`
    pub failed_total: u64,
    /// `opengrid_runtime_gpu_batches_total`
    pub batches_total: u64,
    /// `opengrid_runtime_gpu_batch_rows_total`
    pub batch_rows_total: u64,
    /// Time spent in model runs, µs: `opengrid_runtime_gpu_inference_seconds_sum` × 10⁶.
    pub busy_us_total: u64,
    /// `opengrid_runtime_gpu_queue_depth_requests`
    pub queue_depth_requests: u64,
    /// `opengrid_runtime_gpu_queue_depth_max_requests`
    pub queue_depth_max_requests: u64,
    /// `opengrid_runtime_gpu_queue_capacity_requests`
    pub queue_capacity_requests: u64,
    /// `opengrid_runtime_gpu_models_loaded`
    pub models_loaded: u64,
    /// `opengrid_runtime_gpu_cuda_enabled` (1 when true)
    pub cuda_enabled: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::SdkMeterProvider;
    use prometheus::{Encoder, Registry, TextEncoder};
    use std::sync::{Arc, Weak};

    /// A meter exported to a fresh Prometheus registry, the way the node sets it up.
    fn prometheus_meter() -> (SdkMeterProvider, Registry, Meter) {
        let registry = Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .scope_info_enabled(false)
            .build()
            .unwrap();
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        let meter = provider.meter("opengrid_runtime_gpu");
        (provider, registry, meter)
    }

    fn render(registry: &Registry) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut buf)
            .unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn every_metric_is_exported_under_its_documented_name() {
        let (_provider, registry, meter) = prometheus_meter();
        let m = Arc::new(Metrics::new(&meter));
        let weak: Weak<Metrics> = Arc::downgrade(&m);
        observe_on(&meter, move || {
            weak.upgrade().map(|m| m.snapshot(1, 8, 2, false))
        });
        m.requests.fetch_add(3, Relaxed);
        m.observe_run(4, Duration::from_micros(300));
        m.observe_queue_wait(Duration::from_millis(3));
        let text = render(&registry);
        for line in [
            "opengrid_runtime_gpu_requests_total 3",
            "opengrid_runtime_gpu_completed_total 0",
            "opengrid_runtime_gpu_rejected_backpressure_total 0",
            "opengrid_runtime_gpu_rejected_invalid_total 0",
            "opengrid_runtime_gpu_failed_total 0",
            "opengrid_runtime_gpu_batches_total 1",
            "opengrid_runtime_gpu_batch_rows_total 4",
            "opengrid_runtime_gpu_batch_size_rows_bucket{le=\"4\"} 1",
            "opengrid_runtime_gpu_batch_size_rows_bucket{le=\"2\"} 0",
            "opengrid_runtime_gpu_inference_seconds_sum 0.0003",
            "opengrid_runtime_gpu_inference_seconds_bucket{le=\"0.0005\"} 1",
            // 3 ms lands in the 5 ms bucket, not below it and not in a millisecond-valued one
            "opengrid_runtime_gpu_queue_wait_seconds_bucket{le=\"0.0025\"} 0",
            "opengrid_runtime_gpu_queue_wait_seconds_bucket{le=\"0.005\"} 1",
            "opengrid_runtime_gpu_queue_depth_requests 1",
            "opengrid_runtime_gpu_queue_depth_max_requests 0",
            "opengrid_runtime_gpu_queue_capacity_requests 8",
            "opengrid_runtime_gpu_models_loaded 2",
            "opengrid_runtime_gpu_cuda_enabled 0",
        ] {
            assert!(text.contains(line), "`{line}` missing in:\n{text}");
        }
        drop(m);
        let text = render(&registry);
        assert!(
            !text.contains("\nopengrid_runtime_gpu_requests_total "),
            "a dropped runtime is no longer observed:\n{text}"
        );
    }
}

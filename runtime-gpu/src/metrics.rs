//! Metrics of the inference plane: plain atomics copied into a [`MetricsSnapshot`] by
//! `InferenceRuntime::metrics` and exported by the cluster crate. The names and their meaning
//! are listed in the crate documentation.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Upper bounds of the time histograms, in microseconds (last bucket is +Inf).
pub const TIME_BUCKETS_US: [u64; 14] = [
    50,
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    1_000_000,
    u64::MAX,
];
/// Upper bounds of the batch-size histogram, in rows (last bucket is +Inf).
pub const ROW_BUCKETS: [u64; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, u64::MAX];

/// A fixed-bucket histogram of atomics.
#[derive(Debug)]
pub(crate) struct Histogram<const N: usize> {
    bounds: &'static [u64; N],
    counts: [AtomicU64; N],
    sum: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    const fn new(bounds: &'static [u64; N]) -> Self {
        Self {
            bounds,
            counts: [const { AtomicU64::new(0) }; N],
            sum: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, v: u64) {
        let i = self.bounds.iter().position(|&b| v <= b).unwrap_or(N - 1);
        self.counts[i].fetch_add(1, Relaxed);
        self.sum.fetch_add(v, Relaxed);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds.to_vec(),
            counts: self.counts.iter().map(|c| c.load(Relaxed)).collect(),
            sum: self.sum.load(Relaxed),
        }
    }
}

/// A point-in-time copy of a histogram: per-bucket (not cumulative) counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistogramSnapshot {
    /// Inclusive upper bound of each bucket; `u64::MAX` is +Inf.
    pub bounds: Vec<u64>,
    /// Observations per bucket.
    pub counts: Vec<u64>,
    /// Sum of all observations (µs for time histograms, rows for sizes).
    pub sum: u64,
}

impl HistogramSnapshot {
    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Upper bound of the bucket holding quantile `q` (0..=1); `None` when empty.
    pub fn quantile_upper_bound(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            seen += c;
            if seen >= rank {
                return Some(*b);
            }
        }
        self.bounds.last().copied()
    }
}

#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) requests: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) rejected_backpressure: AtomicU64,
    pub(crate) rejected_invalid: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) batch_rows: AtomicU64,
    pub(crate) queue_depth_max: AtomicU64,
    pub(crate) batch_size: Histogram<10>,
    pub(crate) inference_us: Histogram<14>,
    pub(crate) queue_wait_us: Histogram<14>,
}

impl Metrics {
    pub(crate) const fn new() -> Self {
        Self {
            requests: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            rejected_backpressure: AtomicU64::new(0),
            rejected_invalid: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            batch_rows: AtomicU64::new(0),
            queue_depth_max: AtomicU64::new(0),
            batch_size: Histogram::new(&ROW_BUCKETS),
            inference_us: Histogram::new(&TIME_BUCKETS_US),
            queue_wait_us: Histogram::new(&TIME_BUCKETS_US),
        }
    }

    pub(crate) fn observe_depth(&self, depth: usize) {
        self.queue_depth_max.fetch_max(depth as u64, Relaxed);
    }

    pub(crate) fn observe_run(&self, rows: usize, took: Duration) {
        self.batches.fetch_add(1, Relaxed);
        self.batch_rows.fetch_add(rows as u64, Relaxed);
        self.batch_size.observe(rows as u64);
        self.inference_us.observe(micros(took));
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
            batch_size_rows: self.batch_size.snapshot(),
            inference_seconds: self.inference_us.snapshot(),
            queue_wait_seconds: self.queue_wait_us.snapshot(),
            queue_depth_requests: queue_depth as u64,
            queue_depth_max_requests: self.queue_depth_max.load(Relaxed),
            queue_capacity_requests: queue_capacity as u64,
            models_loaded_total: models_loaded as u64,
            cuda_enabled_bool: u64::from(cuda_enabled),
        }
    }
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A copy of every metric at one instant. Field names are the metric names without the
/// `opengrid_runtime_gpu_` prefix; time histograms hold microseconds.
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
    /// `opengrid_runtime_gpu_batch_size_rows`
    pub batch_size_rows: HistogramSnapshot,
    /// `opengrid_runtime_gpu_inference_seconds` (buckets and sum in µs)
    pub inference_seconds: HistogramSnapshot,
    /// `opengrid_runtime_gpu_queue_wait_seconds` (buckets and sum in µs)
    pub queue_wait_seconds: HistogramSnapshot,
    /// `opengrid_runtime_gpu_queue_depth_requests`
    pub queue_depth_requests: u64,
    /// `opengrid_runtime_gpu_queue_depth_max_requests`
    pub queue_depth_max_requests: u64,
    /// `opengrid_runtime_gpu_queue_capacity_requests`
    pub queue_capacity_requests: u64,
    /// `opengrid_runtime_gpu_models_loaded_total`
    pub models_loaded_total: u64,
    /// `opengrid_runtime_gpu_cuda_enabled_bool`
    pub cuda_enabled_bool: u64,
}

impl MetricsSnapshot {
    /// Prometheus text exposition of every metric (time histograms converted to seconds).
    pub fn prometheus_text(&self) -> String {
        let mut out = String::new();
        let p = "opengrid_runtime_gpu_";
        let counters = [
            ("requests_total", self.requests_total),
            ("completed_total", self.completed_total),
            (
                "rejected_backpressure_total",
                self.rejected_backpressure_total,
            ),
            ("rejected_invalid_total", self.rejected_invalid_total),
            ("failed_total", self.failed_total),
            ("batches_total", self.batches_total),
            ("batch_rows_total", self.batch_rows_total),
        ];
        for (name, v) in counters {
            let _ = writeln!(out, "# TYPE {p}{name} counter\n{p}{name} {v}");
        }
        let gauges = [
            ("queue_depth_requests", self.queue_depth_requests),
            ("queue_depth_max_requests", self.queue_depth_max_requests),
            ("queue_capacity_requests", self.queue_capacity_requests),
            ("models_loaded_total", self.models_loaded_total),
            ("cuda_enabled_bool", self.cuda_enabled_bool),
        ];
        for (name, v) in gauges {
            let _ = writeln!(out, "# TYPE {p}{name} gauge\n{p}{name} {v}");
        }
        let histograms = [
            ("batch_size_rows", &self.batch_size_rows, 1.0),
            ("inference_seconds", &self.inference_seconds, 1e6),
            ("queue_wait_seconds", &self.queue_wait_seconds, 1e6),
        ];
        for (name, h, scale) in histograms {
            let _ = writeln!(out, "# TYPE {p}{name} histogram");
            let mut cumulative = 0;
            for (b, c) in h.bounds.iter().zip(&h.counts) {
                cumulative += c;
                let le = if *b == u64::MAX {
                    "+Inf".to_owned()
                } else {
                    format!("{}", *b as f64 / scale)
                };
                let _ = writeln!(out, "{p}{name}_bucket{{le=\"{le}\"}} {cumulative}");
            }
            let _ = writeln!(out, "{p}{name}_sum {}", h.sum as f64 / scale);
            let _ = writeln!(out, "{p}{name}_count {}", h.count());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_quantiles() {
        let h: Histogram<10> = Histogram::new(&ROW_BUCKETS);
        for v in [1, 1, 3, 8, 1000] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 5);
        assert_eq!(s.sum, 1013);
        assert_eq!(s.counts[0], 2);
        assert_eq!(s.quantile_upper_bound(0.5), Some(4));
        assert_eq!(s.quantile_upper_bound(1.0), Some(u64::MAX));
    }

    #[test]
    fn prometheus_text_names_every_metric() {
        let m = Metrics::new();
        m.observe_run(4, Duration::from_micros(300));
        let text = m.snapshot(1, 8, 2, false).prometheus_text();
        for name in [
            "requests_total",
            "completed_total",
            "rejected_backpressure_total",
            "rejected_invalid_total",
            "failed_total",
            "batches_total 1",
            "batch_rows_total 4",
            "batch_size_rows_bucket",
            "inference_seconds_sum 0.0003",
            "queue_wait_seconds_count 0",
            "queue_depth_requests 1",
            "queue_depth_max_requests",
            "queue_capacity_requests 8",
            "models_loaded_total 2",
            "cuda_enabled_bool 0",
        ] {
            assert!(
                text.contains(&format!("opengrid_runtime_gpu_{name}")),
                "{name} missing"
            );
        }
    }
}

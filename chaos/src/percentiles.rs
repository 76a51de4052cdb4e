//! Percentiles of latency samples, the one way every chaos report and bench computes p50 / p99 /
//! max: an [HdrHistogram](https://hdrhistogram.github.io/HdrHistogram/) at 3 significant digits
//! (exact below 2048, within 0.1 % above), with nearest-rank quantiles and the exact maximum.

use hdrhistogram::Histogram;

/// Samples in one unit (µs or ms, the caller's), summarised by nearest-rank percentiles.
#[derive(Clone, Debug)]
pub struct Percentiles {
    histogram: Histogram<u64>,
    max: u64,
}

impl Default for Percentiles {
    fn default() -> Self {
        Self::new()
    }
}

impl Percentiles {
    /// No samples yet.
    pub fn new() -> Self {
        Self {
            histogram: Histogram::new(3).expect("3 significant digits is in hdrhistogram's range"),
            max: 0,
        }
    }

    /// Every value of `samples`.
    pub fn of(samples: impl IntoIterator<Item = u64>) -> Self {
        let mut p = Self::new();
        for v in samples {
            p.record(v);
        }
        p
    }

    /// Adds one sample. The histogram grows to hold it; a value beyond what it can ever hold
    /// (above 2⁶² or so) counts as its largest value, and [`max`](Self::max) stays exact.
    pub fn record(&mut self, value: u64) {
        if self.histogram.record(value).is_err() {
            self.histogram.saturating_record(value);
        }
        self.max = self.max.max(value);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// Nearest-rank percentile `p` (0..=100): the smallest sample at or above which `p` % of
    /// the samples lie, to 3 significant digits, never above the maximum; 0 without samples.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.count() == 0 {
            return 0;
        }
        self.histogram
            .value_at_quantile((p / 100.0).clamp(0.0, 1.0))
            .min(self.max)
    }

    /// Median.
    pub fn p50(&self) -> u64 {
        self.percentile(50.0)
    }

    /// 99th percentile.
    pub fn p99(&self) -> u64 {
        self.percentile(99.0)
    }

    /// The largest sample, exactly; 0 without samples.
    pub fn max(&self) -> u64 {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_on_small_values_is_exact() {
        let p = Percentiles::of(1..=100);
        assert_eq!((p.p50(), p.p99(), p.max(), p.count()), (50, 99, 100, 100));
        assert_eq!(p.percentile(100.0), 100);
        assert_eq!(p.percentile(1.0), 1);
        let one = Percentiles::of([7]);
        assert_eq!((one.p50(), one.p99(), one.max()), (7, 7, 7));
        // order does not matter
        let p = Percentiles::of((1..=1000).rev());
        assert_eq!((p.p50(), p.p99(), p.max()), (500, 990, 1000));
    }

    #[test]
    fn no_samples_reads_zero() {
        let p = Percentiles::new();
        assert_eq!((p.p50(), p.p99(), p.max(), p.count()), (0, 0, 0, 0));
    }

    #[test]
    fn large_values_within_a_thousandth_and_max_exact() {
        // 1..=100_000 µs: p50 is 50_000, p99 is 99_000 to 3 significant digits
        let p = Percentiles::of(1..=100_000);
        let close = |got: u64, want: u64| got.abs_diff(want) * 1000 <= want;
        assert!(close(p.p50(), 50_000), "{}", p.p50());
        assert!(close(p.p99(), 99_000), "{}", p.p99());
        assert_eq!(p.max(), 100_000);
        // a lone outlier is the max exactly, and the p99 of 1000 samples ignores it
        let mut q = Percentiles::of(std::iter::repeat_n(10, 999));
        q.record(123_457);
        assert_eq!((q.p99(), q.max()), (10, 123_457));
        assert_eq!(q.percentile(100.0), 123_457);
    }

    #[test]
    fn out_of_range_values_do_not_panic() {
        let mut p = Percentiles::new();
        p.record(u64::MAX);
        p.record(0);
        assert_eq!(p.count(), 2);
        assert_eq!(p.max(), u64::MAX);
    }
}

//! Failure detection: a phi-accrual detector (Hayashibara et al., as in Akka/Cassandra) per node,
//! and the lease arithmetic that keeps a session from ever being active in two places.
//!
//! Pure: every method takes the current time, so tests drive virtual time. See
//! `docs/adr/0004-failure-detection.md` for the numbers.
//!
//! # Lease rule
//! The node stamps each heartbeat with its own send time `t_send`; when the RC answers with a lease
//! of length `L`, the node may serve until `t_send + L` (its own monotonic clock). The RC received
//! that heartbeat at `t_recv > t_send` and may place the node's sessions elsewhere only after
//! `t_recv + L × grace` with `grace > 1`. Since `t_send < t_recv`, the node's lease always ends
//! first, by at least `L × (grace − 1)`, which covers clock-rate drift and the node's watchdog
//! period.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Phi-accrual parameters.
#[derive(Clone, Copy, Debug)]
pub struct PhiConfig {
    /// Suspicion level at which a node is declared dead.
    pub threshold: f64,
    /// Heartbeat intervals remembered.
    pub window: usize,
    /// Floor of the standard deviation.
    pub min_std: Duration,
    /// Pause tolerated on top of the mean interval.
    pub acceptable_pause: Duration,
    /// Interval assumed before any sample.
    pub first_interval: Duration,
}

impl Default for PhiConfig {
    fn default() -> Self {
        PhiConfig {
            threshold: 8.0,
            window: 200,
            min_std: Duration::from_millis(50),
            acceptable_pause: Duration::from_millis(100),
            first_interval: Duration::from_millis(100),
        }
    }
}

/// Phi-accrual failure detector for one peer.
#[derive(Clone, Debug)]
pub struct PhiDetector {
    cfg: PhiConfig,
    intervals: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
    last: Option<Instant>,
}

impl PhiDetector {
    /// A detector that has seen no heartbeat.
    pub fn new(cfg: PhiConfig) -> Self {
        let mut d = PhiDetector {
            cfg,
            intervals: VecDeque::with_capacity(cfg.window),
            sum: 0.0,
            sum_sq: 0.0,
            last: None,
        };
        // Seed with the expected interval (mean m, std m/4) as Akka does.
        let m = cfg.first_interval.as_secs_f64() * 1000.0;
        d.push(m - m / 4.0);
        d.push(m + m / 4.0);
        d
    }

    fn push(&mut self, ms: f64) {
        if self.intervals.len() == self.cfg.window {
            if let Some(old) = self.intervals.pop_front() {
                self.sum -= old;
                self.sum_sq -= old * old;
            }
        }
        self.intervals.push_back(ms);
        self.sum += ms;
        self.sum_sq += ms * ms;
    }

    /// Records a heartbeat arrival.
    pub fn heartbeat(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let ms = now.saturating_duration_since(last).as_secs_f64() * 1000.0;
            self.push(ms);
        }
        self.last = Some(now);
    }

    /// Time of the last heartbeat.
    pub fn last(&self) -> Option<Instant> {
        self.last
    }

    /// Current suspicion level (0 before the first heartbeat).
    pub fn phi(&self, now: Instant) -> f64 {
        let Some(last) = self.last else {
            return 0.0;
        };
        let n = self.intervals.len().max(1) as f64;
        let mean = self.sum / n + self.cfg.acceptable_pause.as_secs_f64() * 1000.0;
        let var = (self.sum_sq / n - (self.sum / n).powi(2)).max(0.0);
        let std = var.sqrt().max(self.cfg.min_std.as_secs_f64() * 1000.0);
        let elapsed = now.saturating_duration_since(last).as_secs_f64() * 1000.0;
        // Logistic approximation of the normal CDF tail (Akka's PhiAccrualFailureDetector).
        let y = (elapsed - mean) / std;
        let k = y * (1.5976 + 0.070566 * y * y);
        let e = (-k).exp();
        if elapsed > mean {
            // -log10(e / (1 + e)), written so that a long silence (e underflows to 0) gives a
            // large finite phi rather than infinity (which JSON cannot carry).
            k / std::f64::consts::LN_10 + e.ln_1p() / std::f64::consts::LN_10
        } else {
            -(1.0 - 1.0 / (1.0 + e)).log10()
        }
    }

    /// Whether phi is at or above the threshold.
    pub fn is_dead(&self, now: Instant) -> bool {
        self.phi(now) >= self.cfg.threshold
    }
}

/// The node's view of its lease.
#[derive(Clone, Copy, Debug, Default)]
pub struct Lease {
    until: Option<Instant>,
}

impl Lease {
    /// No lease: the node must not serve.
    pub fn none() -> Self {
        Lease { until: None }
    }

    /// Applies a grant answering a heartbeat the node sent at `sent`; keeps the later expiry.
    pub fn grant(&mut self, sent: Instant, length: Duration) {
        let until = sent + length;
        if self.until.is_none_or(|u| until > u) {
            self.until = Some(until);
        }
    }

    /// Whether the node may serve at `now`.
    pub fn valid(&self, now: Instant) -> bool {
        self.until.is_some_and(|u| now < u)
    }

    /// Drops the lease (after it expired, or on shutdown).
    pub fn revoke(&mut self) {
        self.until = None;
    }

    /// Expiry, if any.
    pub fn until(&self) -> Option<Instant> {
        self.until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_heartbeats_stay_low_and_silence_rises() {
        let mut d = PhiDetector::new(PhiConfig::default());
        let t0 = Instant::now();
        for i in 0..100 {
            d.heartbeat(t0 + Duration::from_millis(100 * i));
        }
        let last = t0 + Duration::from_millis(9900);
        assert!(d.phi(last + Duration::from_millis(100)) < 1.0);
        // A silence of an hour is a large, finite phi (JSON has no infinity), growing with time.
        let hour = d.phi(last + Duration::from_secs(3600));
        let day = d.phi(last + Duration::from_secs(86_400));
        assert!(hour.is_finite() && day.is_finite(), "{hour} {day}");
        assert!(day > hour && hour > 1e3, "{hour} {day}");
        assert!(!d.is_dead(last + Duration::from_millis(300)));
        // Killed node: dead well within the 1.5 s lease grace.
        let mut dead_at = None;
        for ms in (0..3000).step_by(10) {
            if d.is_dead(last + Duration::from_millis(ms)) {
                dead_at = Some(ms);
                break;
            }
        }
        let dead_at = dead_at.expect("declared dead");
        assert!((300..=1000).contains(&dead_at), "{dead_at} ms");
    }

    #[test]
    fn jittery_heartbeats_are_tolerated() {
        // A node whose heartbeats jitter by ±60 ms (CPU-saturated box) is not declared dead.
        let mut d = PhiDetector::new(PhiConfig::default());
        let t0 = Instant::now();
        let mut t = t0;
        for i in 0..200u64 {
            t += Duration::from_millis(if i % 3 == 0 { 160 } else { 70 });
            d.heartbeat(t);
            assert!(!d.is_dead(t + Duration::from_millis(250)), "i={i}");
        }
    }

    #[test]
    fn lease_ends_before_rc_may_replace() {
        let mut l = Lease::none();
        let sent = Instant::now();
        assert!(!l.valid(sent));
        l.grant(sent, Duration::from_secs(1));
        let recv = sent + Duration::from_millis(3);
        let rc_may_replace = recv + Duration::from_secs(1).mul_f64(1.5);
        assert!(l.valid(sent + Duration::from_millis(999)));
        assert!(!l.valid(sent + Duration::from_secs(1)));
        assert!(l.until().unwrap() + Duration::from_millis(500) <= rc_may_replace);
        // An older grant arriving late never shortens or extends beyond the newest.
        l.grant(sent - Duration::from_millis(500), Duration::from_secs(1));
        assert_eq!(l.until().unwrap(), sent + Duration::from_secs(1));
    }
}

//! A log-line throttle: a condition that holds on every tick (a replica set short of k while a node
//! is down) is logged once per interval with how many repeats were suppressed, instead of on every
//! tick forever.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Allows one line per `every`, counting the ones it holds back.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    state: Mutex<ThrottleState>,
}

#[derive(Debug, Default)]
struct ThrottleState {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// At most one line per `every`.
    pub fn new(every: Duration) -> Self {
        Throttle {
            every,
            state: Mutex::new(ThrottleState::default()),
        }
    }

    /// `Some(n)` when a line may be written at `now` (`n` lines were held back since the last
    /// one); `None` when this one is held back (and counted).
    pub fn allow(&self, now: Instant) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match st.last {
            Some(t) if now.saturating_duration_since(t) < self.every => {
                st.suppressed += 1;
                None
            }
            _ => {
                st.last = Some(now);
                Some(std::mem::take(&mut st.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_held_back_count() {
        let t = Throttle::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert_eq!(t.allow(t0), Some(0));
        // Four times a second for ten seconds: all held back.
        for i in 1..=40u64 {
            assert_eq!(t.allow(t0 + Duration::from_millis(250 * i)), None);
        }
        // The next line after the interval reports the 40 it held back, then counts afresh.
        assert_eq!(t.allow(t0 + Duration::from_secs(30)), Some(40));
        assert_eq!(t.allow(t0 + Duration::from_secs(31)), None);
        assert_eq!(t.allow(t0 + Duration::from_secs(61)), Some(1));
    }
}

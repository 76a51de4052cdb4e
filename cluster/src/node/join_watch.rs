//! Why a node is not (yet) a member, said where an operator looks: a node whose `rc_cluster` is
//! wrong, whose colony secret does not match, or whose join the RC refuses logs the reason a few
//! seconds after it starts and then at a bounded rate, and `/health` carries it as
//! `outside_reason` — instead of "node started" followed by silence.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::common::throttle::Throttle;

/// How long a node may be outside before it says why (a join normally takes milliseconds).
pub const SAY_AFTER: Duration = Duration::from_secs(3);
/// At most one warning per this interval while the node stays outside.
pub const SAY_EVERY: Duration = Duration::from_secs(10);

/// What the node knows about its link and join, for [`outside_reason`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinFacts {
    /// The RC's control-plane address (`rc_cluster`).
    pub rc: String,
    /// The last connection attempt's error, if it failed.
    pub connect_error: Option<String>,
    /// The control-plane link to the RC is authenticated.
    pub link_up: bool,
    /// The RC's last refusal of our join.
    pub refusal: Option<String>,
}

/// One sentence naming why the node is outside the colony.
pub fn outside_reason(f: &JoinFacts) -> String {
    if let Some(r) = &f.refusal {
        return format!("the RC at {} refused the join: {r}", f.rc);
    }
    if let Some(e) = &f.connect_error {
        return format!(
            "cannot reach the RC's control plane at {} (config field `rc_cluster`): {e}",
            f.rc
        );
    }
    if !f.link_up {
        return format!(
            "connected to {} but the control-plane handshake failed: check that `colony_secret` \
             matches the RC's and that `rc_cluster` is the RC's cluster address, not its API",
            f.rc
        );
    }
    format!(
        "linked to the RC at {}, waiting for its answer to the join",
        f.rc
    )
}

/// Tracks how long the node has been outside and when to say so again.
#[derive(Debug)]
pub struct JoinWatch {
    outside_since: Mutex<Option<Instant>>,
    connect_error: Mutex<Option<String>>,
    said: Mutex<bool>,
    throttle: Throttle,
}

impl Default for JoinWatch {
    fn default() -> Self {
        JoinWatch {
            outside_since: Mutex::new(None),
            connect_error: Mutex::new(None),
            said: Mutex::new(false),
            throttle: Throttle::new(SAY_EVERY),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What [`JoinWatch::observe`] asks the caller to log.
#[derive(Debug, PartialEq, Eq)]
pub enum Say {
    /// Nothing now.
    Nothing,
    /// Still outside after `outside_for`: warn with the reason (`repeats` lines held back).
    Outside {
        /// Why.
        reason: String,
        /// How long the node has been outside.
        outside_for: Duration,
        /// Warnings held back since the last one.
        repeats: u64,
    },
    /// A member again after having warned.
    Joined {
        /// How long the node was outside.
        after: Duration,
    },
}

impl JoinWatch {
    /// Records the result of the last connection attempt to the RC.
    pub fn note_connect(&self, result: Result<(), String>) {
        *lock(&self.connect_error) = result.err();
    }

    /// The last connection error, if the last attempt failed.
    pub fn connect_error(&self) -> Option<String> {
        lock(&self.connect_error).clone()
    }

    /// Called periodically with whether the node is a member: what to log now.
    pub fn observe(&self, now: Instant, member: bool, facts: impl FnOnce() -> JoinFacts) -> Say {
        let mut since = lock(&self.outside_since);
        if member {
            let was = since.take();
            let mut said = lock(&self.said);
            if std::mem::take(&mut *said) {
                if let Some(t) = was {
                    return Say::Joined {
                        after: now.saturating_duration_since(t),
                    };
                }
            }
            return Say::Nothing;
        }
        let t0 = *since.get_or_insert(now);
        let outside_for = now.saturating_duration_since(t0);
        if outside_for < SAY_AFTER {
            return Say::Nothing;
        }
        match self.throttle.allow(now) {
            Some(repeats) => {
                *lock(&self.said) = true;
                Say::Outside {
                    reason: outside_reason(&facts()),
                    outside_for,
                    repeats,
                }
            }
            None => Say::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(connect_error: Option<&str>, link_up: bool, refusal: Option<&str>) -> JoinFacts {
        JoinFacts {
            rc: "127.0.0.1:7601".into(),
            connect_error: connect_error.map(str::to_string),
            link_up,
            refusal: refusal.map(str::to_string),
        }
    }

    #[test]
    fn the_reason_names_what_to_check() {
        let r = outside_reason(&facts(
            Some("Connection refused (os error 111)"),
            false,
            None,
        ));
        assert!(
            r.contains("rc_cluster") && r.contains("127.0.0.1:7601") && r.contains("refused"),
            "{r}"
        );
        let r = outside_reason(&facts(None, false, None));
        assert!(r.contains("colony_secret"), "{r}");
        let r = outside_reason(&facts(None, true, Some("wrong colony: eu, expected us")));
        assert!(r.contains("refused the join: wrong colony"), "{r}");
        let r = outside_reason(&facts(None, true, None));
        assert!(r.contains("waiting"), "{r}");
    }

    #[test]
    fn says_so_after_a_few_seconds_then_at_a_bounded_rate_then_once_joined() {
        let w = JoinWatch::default();
        let t0 = Instant::now();
        let f = || facts(Some("Connection refused"), false, None);
        // Quiet for the first seconds (a join normally takes milliseconds).
        for i in 0..6 {
            assert_eq!(
                w.observe(t0 + Duration::from_millis(500 * i), false, f),
                Say::Nothing
            );
        }
        let first = w.observe(t0 + SAY_AFTER, false, f);
        assert!(
            matches!(&first, Say::Outside { outside_for, repeats: 0, reason } if *outside_for == SAY_AFTER && reason.contains("rc_cluster")),
            "{first:?}"
        );
        // Once a second for a while: one line per SAY_EVERY, with the count held back.
        let mut lines = 0;
        let mut held = 0;
        for s in 1..=30u64 {
            if let Say::Outside { repeats, .. } =
                w.observe(t0 + SAY_AFTER + Duration::from_secs(s), false, f)
            {
                lines += 1;
                held += repeats;
            }
        }
        assert_eq!(lines, 3, "30 s at one warning per {SAY_EVERY:?}");
        assert_eq!(held, 27);
        // Joined: one line saying so, then quiet.
        let t = t0 + Duration::from_secs(40);
        assert!(
            matches!(w.observe(t, true, f), Say::Joined { after } if after == Duration::from_secs(40))
        );
        assert_eq!(w.observe(t + Duration::from_secs(1), true, f), Say::Nothing);
    }

    #[test]
    fn a_quick_join_says_nothing() {
        let w = JoinWatch::default();
        let t0 = Instant::now();
        let f = || facts(None, true, None);
        assert_eq!(w.observe(t0, false, f), Say::Nothing);
        assert_eq!(
            w.observe(t0 + Duration::from_millis(200), true, f),
            Say::Nothing
        );
    }
}

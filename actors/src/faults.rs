//! Fault hooks around the real handler — **for tests and the chaos harness only**.
//!
//! A host created with [`HostConfig::faults`](crate::HostConfig::faults) set consults its
//! [`FaultHooks`] before every live input (never during journal replay after a restart): the
//! input can be delayed (a slow handler) and every N-th matching input can panic inside the
//! handler's future (a buggy handler), so the runtime's own machinery — `catch_unwind`,
//! `HandlerPanicked`, the supervisor's restart from the last checkpoint — is what gets exercised.
//! With no rule set the cost is one relaxed atomic load per input.
//!
//! The node wires these to files in its `[faults] control_dir` (`opengrid-cluster`'s `faults`
//! module); `opengrid-chaos run` writes those files.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

/// One injected fault: its parameter and the sessions it applies to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HookRule {
    /// Slow handler: delay per input, ms. Panicking handler: every `value`-th matching input
    /// panics (1 = every one).
    pub value: u64,
    /// Session ids the rule applies to; `None` = every session of the host.
    pub sessions: Option<BTreeSet<String>>,
}

impl HookRule {
    fn matches(&self, session: &str) -> bool {
        self.sessions.as_ref().is_none_or(|s| s.contains(session))
    }
}

/// What the hooks decided for one input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Injection {
    /// Wait this long before running the handler.
    pub delay: Option<Duration>,
    /// Panic inside the handler's future instead of running it.
    pub panic: bool,
}

/// Host-wide fault hooks (see the module docs). Shared between the host and whoever drives
/// them; every method takes `&self`.
#[derive(Debug, Default)]
pub struct FaultHooks {
    armed: AtomicBool,
    slow: RwLock<Option<HookRule>>,
    panic: RwLock<Option<HookRule>>,
    /// Inputs that matched the panic rule so far.
    panic_calls: AtomicU64,
    injected_panics: AtomicU64,
    delayed: AtomicU64,
}

fn read<T: Clone>(l: &RwLock<T>) -> T {
    l.read().unwrap_or_else(|p| p.into_inner()).clone()
}

impl FaultHooks {
    /// No rule set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets (or clears, with `None`) the slow-handler rule.
    pub fn set_slow(&self, rule: Option<HookRule>) {
        *self.slow.write().unwrap_or_else(|p| p.into_inner()) = rule.filter(|r| r.value > 0);
        self.rearm();
    }

    /// Sets (or clears, with `None`) the panicking-handler rule; the call count restarts.
    pub fn set_panic(&self, rule: Option<HookRule>) {
        *self.panic.write().unwrap_or_else(|p| p.into_inner()) = rule.filter(|r| r.value > 0);
        self.panic_calls.store(0, Ordering::Relaxed);
        self.rearm();
    }

    /// The current slow-handler rule.
    pub fn slow(&self) -> Option<HookRule> {
        read(&self.slow)
    }

    /// The current panicking-handler rule.
    pub fn panic_rule(&self) -> Option<HookRule> {
        read(&self.panic)
    }

    /// Panics injected so far.
    pub fn injected_panics(&self) -> u64 {
        self.injected_panics.load(Ordering::Relaxed)
    }

    /// Inputs delayed so far.
    pub fn delayed_inputs(&self) -> u64 {
        self.delayed.load(Ordering::Relaxed)
    }

    fn rearm(&self) {
        let on = read(&self.slow).is_some() || read(&self.panic).is_some();
        self.armed.store(on, Ordering::Release);
    }

    /// Decides for one live input of `session`.
    pub fn decide(&self, session: &str) -> Injection {
        if !self.armed.load(Ordering::Acquire) {
            return Injection::default();
        }
        let mut out = Injection::default();
        if let Some(r) = read(&self.slow).filter(|r| r.matches(session)) {
            out.delay = Some(Duration::from_millis(r.value));
            self.delayed.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(r) = read(&self.panic).filter(|r| r.matches(session)) {
            let n = self.panic_calls.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_multiple_of(r.value) {
                out.panic = true;
                self.injected_panics.fetch_add(1, Ordering::Relaxed);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only(ids: &[&str], value: u64) -> Option<HookRule> {
        Some(HookRule {
            value,
            sessions: Some(ids.iter().map(|s| s.to_string()).collect()),
        })
    }

    #[test]
    fn unarmed_hooks_inject_nothing() {
        let h = FaultHooks::new();
        assert_eq!(h.decide("a"), Injection::default());
        h.set_slow(Some(HookRule {
            value: 0,
            sessions: None,
        }));
        assert_eq!(
            h.decide("a"),
            Injection::default(),
            "a zero delay is no rule"
        );
    }

    #[test]
    fn slow_rule_delays_only_its_sessions() {
        let h = FaultHooks::new();
        h.set_slow(only(&["a"], 200));
        assert_eq!(h.decide("a").delay, Some(Duration::from_millis(200)));
        assert_eq!(h.decide("b").delay, None);
        h.set_slow(None);
        assert_eq!(h.decide("a"), Injection::default());
        assert_eq!(h.delayed_inputs(), 1);
    }

    #[test]
    fn every_nth_matching_input_panics() {
        let h = FaultHooks::new();
        h.set_panic(only(&["a", "b"], 3));
        let got: Vec<bool> = ["a", "c", "b", "a", "c", "a", "b", "b", "a"]
            .iter()
            .map(|s| h.decide(s).panic)
            .collect();
        // Matching inputs: a b a a b b a → the 3rd and 6th panic.
        assert_eq!(
            got,
            [false, false, false, true, false, false, false, true, false]
        );
        assert_eq!(h.injected_panics(), 2);
        h.set_panic(None);
        assert!(!h.decide("a").panic);
    }
}

//! Replay protection: request ids seen within the freshness window, bounded.

use std::collections::{HashMap, VecDeque};

use super::*;

/// Request ids seen within the replay window.
#[derive(Debug, Default)]
pub(super) struct ReplayCache {
    pub(super) seen: HashMap<String, u64>,
    order: VecDeque<(u64, String)>,
}

impl ReplayCache {
    /// Records `id` valid until `until_ms`; false if it was already there.
    pub(super) fn insert(&mut self, id: &str, now_ms: u64, until_ms: u64) -> Result<(), AuthError> {
        while let Some((t, _)) = self.order.front() {
            if *t > now_ms {
                break;
            }
            if let Some((_, old)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        if self.seen.contains_key(id) {
            return Err(AuthError::Replayed(id.to_string()));
        }
        if self.seen.len() >= MAX_REPLAY_ENTRIES {
            return Err(AuthError::Busy);
        }
        self.seen.insert(id.to_string(), until_ms);
        // Entries expire in insertion order only approximately (skewed issue times); the deque is
        // ordered by insertion, so an entry may outlive its time slightly. Never shorter.
        let until = self
            .order
            .back()
            .map_or(until_ms, |(t, _)| (*t).max(until_ms));
        self.order.push_back((until, id.to_string()));
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The running federation

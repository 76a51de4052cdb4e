//! [`WarmSet`]: the warm instances a runtime keeps between inputs, one per (agent, session),
//! least recently used first out.
//!
//! A warm instance holds a pool slot (its core instances and memories), so the set is bounded
//! (`RuntimeConfig::warm_instances`, at most the pool's size) and gives up its least recently
//! used entry when the pool runs dry. An entry is *taken* out for the duration of a call (no lock
//! is held across the guest call) and *put* back only after a call that returned normally; after a
//! fault or a guest error the caller drops it, so the next input starts from a fresh instance.

use std::collections::HashMap;

/// Which warm instance: the loaded agent (its serial number in the runtime) and the session it
/// serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct WarmKey {
    pub agent: u64,
    pub session: String,
}

/// A bounded LRU map of warm instances. Generic over the instance so its order logic is tested
/// without wasmtime. Taking and putting back an instance (the path of every input) are one hash
/// map operation each; only giving one up for another looks for the least recently used entry,
/// a scan of at most the capacity, and that happens when an input is about to instantiate anyway.
pub(crate) struct WarmSet<V> {
    capacity: usize,
    /// Use counter: a larger stamp is more recent.
    clock: u64,
    by_key: HashMap<WarmKey, (u64, V)>,
}

impl<V> WarmSet<V> {
    pub fn new(capacity: usize) -> Self {
        WarmSet {
            capacity,
            clock: 0,
            by_key: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Takes the warm instance of `key` out of the set, if there is one.
    pub fn take(&mut self, key: &WarmKey) -> Option<V> {
        self.by_key.remove(key).map(|(_, v)| v)
    }

    /// Puts an instance (back) as the most recently used. Returns what has to go: an older
    /// instance of the same key (two calls of one session raced) and the least recently used ones
    /// beyond the capacity, or `v` itself when the capacity is 0. The caller drops them outside
    /// its lock (dropping an instance resets its pool slot).
    pub fn put(&mut self, key: WarmKey, v: V) -> Vec<V> {
        if self.capacity == 0 {
            return vec![v];
        }
        let mut out = Vec::new();
        // One hash operation on the path of every input: insert, then trim. The entry just put
        // has the newest stamp, so it is never the one trimmed (capacity ≥ 1).
        self.clock += 1;
        if let Some((_, old)) = self.by_key.insert(key, (self.clock, v)) {
            out.push(old);
        }
        while self.by_key.len() > self.capacity {
            match self.pop_lru() {
                Some(v) => out.push(v),
                None => break,
            }
        }
        out
    }

    /// Takes the least recently used instance out (pool pressure).
    pub fn pop_lru(&mut self) -> Option<V> {
        let key = self
            .by_key
            .iter()
            .min_by_key(|(_, (stamp, _))| *stamp)
            .map(|(k, _)| k.clone())?;
        self.take(&key)
    }

    /// Takes every instance of one agent out (its package was unloaded).
    pub fn remove_agent(&mut self, agent: u64) -> Vec<V> {
        let keys: Vec<WarmKey> = self
            .by_key
            .keys()
            .filter(|k| k.agent == agent)
            .cloned()
            .collect();
        keys.iter().filter_map(|k| self.take(k)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(session: &str) -> WarmKey {
        WarmKey {
            agent: 1,
            session: session.into(),
        }
    }

    #[test]
    fn least_recently_used_goes_first() {
        let mut set = WarmSet::new(2);
        assert!(set.put(key("a"), 1).is_empty());
        assert!(set.put(key("b"), 2).is_empty());
        // `a` is used again: `b` is now the oldest.
        let a = set.take(&key("a")).unwrap();
        assert!(set.put(key("a"), a).is_empty());
        assert_eq!(set.put(key("c"), 3), vec![2]);
        assert_eq!(set.len(), 2);
        assert_eq!(set.take(&key("b")), None);
        assert_eq!(set.pop_lru(), Some(1));
        assert_eq!(set.pop_lru(), Some(3));
        assert_eq!(set.pop_lru(), None);
    }

    #[test]
    fn a_second_instance_of_a_key_replaces_the_first() {
        let mut set = WarmSet::new(4);
        assert!(set.put(key("a"), 1).is_empty());
        assert_eq!(set.put(key("a"), 2), vec![1]);
        assert_eq!(set.len(), 1);
        assert_eq!(set.take(&key("a")), Some(2));
        assert_eq!(set.len(), 0);
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let mut set = WarmSet::new(0);
        assert_eq!(set.put(key("a"), 1), vec![1]);
        assert_eq!(set.len(), 0);
    }

    #[test]
    fn removing_an_agent_keeps_the_others() {
        let mut set = WarmSet::new(4);
        set.put(key("a"), 1);
        set.put(
            WarmKey {
                agent: 2,
                session: "a".into(),
            },
            2,
        );
        set.put(key("b"), 3);
        let mut gone = set.remove_agent(1);
        gone.sort();
        assert_eq!(gone, vec![1, 3]);
        assert_eq!(set.len(), 1);
        assert_eq!(set.pop_lru(), Some(2));
    }
}

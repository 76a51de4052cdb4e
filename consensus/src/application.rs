//! The pluggable replicated application: what the Raft state machine applies.

/// Restoring an application from snapshot bytes failed.
#[derive(Debug, thiserror::Error)]
#[error("application snapshot rejected: {0}")]
pub struct RestoreError(pub String);

/// A deterministic application replicated by Raft.
///
/// The consensus layer guarantees that every replica calls [`Application::apply`] with the same
/// committed commands in the same order, exactly once per log entry of a given replica's history
/// (after a restart, commands after the last snapshot are applied again onto the restored
/// snapshot, so the resulting state is identical).
///
/// The implementer must guarantee:
/// - `apply` is deterministic: same state + same command ⇒ same new state and same response, on
///   every machine (no wall clock, no randomness, no iteration over hash maps).
/// - `apply` never panics on malformed commands: commands are bytes from clients; reject them in
///   the response instead.
/// - `snapshot` followed by `restore` on a fresh instance yields an instance with the same
///   `state_hash` that answers every later command identically.
pub trait Application: Send + Sync + 'static {
    /// Apply one committed command and return the response handed back to the proposer.
    fn apply(&mut self, command: &[u8]) -> Vec<u8>;

    /// Runs once per command, on the replica that proposes it (the leader), before it enters
    /// the log, off the async runtime and outside the state machine's lock: it may check the
    /// command and annotate it (verify its signatures once, so that every replica applying it
    /// need not). It sees the client's bytes: any annotation in them is untrusted and must be
    /// recomputed. The default passes the command through.
    fn prepare(command: Vec<u8>) -> Vec<u8>
    where
        Self: Sized,
    {
        command
    }

    /// Answer a read-only query against the current state.
    fn query(&self, query: &[u8]) -> Vec<u8>;

    /// Serialize the complete state.
    fn snapshot(&self) -> Vec<u8>;

    /// Replace the complete state with one produced by [`Application::snapshot`].
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError>;

    /// A digest of the complete state; equal on replicas that applied the same commands.
    fn state_hash(&self) -> [u8; 32];
}

/// A replicated key/value map: the smallest useful [`Application`], used by the storage
/// conformance suite and by the replicated-write throughput benchmark.
///
/// Commands are bincode `(key, value)` pairs; a query is a key and answers the bincode
/// `Option<value>`.
#[derive(Debug, Default, Clone)]
pub struct KvApplication {
    map: std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
}

impl KvApplication {
    /// Encode a `set key = value` command.
    pub fn set_command(key: &[u8], value: &[u8]) -> Vec<u8> {
        opengrid_codec::encode(&(key, value)).unwrap_or_default()
    }

    /// Decode the answer to a query.
    pub fn decode_answer(bytes: &[u8]) -> Option<Vec<u8>> {
        opengrid_codec::decode::<Option<Vec<u8>>>(bytes, opengrid_codec::MAX_DECODE_BYTES)
            .ok()
            .flatten()
    }
}

impl Application for KvApplication {
    fn apply(&mut self, command: &[u8]) -> Vec<u8> {
        match opengrid_codec::decode::<(Vec<u8>, Vec<u8>)>(
            command,
            opengrid_codec::MAX_DECODE_BYTES,
        ) {
            Ok((k, v)) => {
                let prev = self.map.insert(k, v);
                opengrid_codec::encode(&prev).unwrap_or_default()
            }
            Err(_) => Vec::new(),
        }
    }

    fn query(&self, query: &[u8]) -> Vec<u8> {
        opengrid_codec::encode(&self.map.get(query)).unwrap_or_default()
    }

    fn snapshot(&self) -> Vec<u8> {
        opengrid_codec::encode(&self.map).unwrap_or_default()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        self.map = opengrid_codec::decode(snapshot, opengrid_codec::MAX_DECODE_BYTES)
            .map_err(|e| RestoreError(e.to_string()))?;
        Ok(())
    }

    fn state_hash(&self) -> [u8; 32] {
        *blake3::hash(&self.snapshot()).as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_snapshot_restore_keeps_hash() {
        let mut a = KvApplication::default();
        a.apply(&KvApplication::set_command(b"k", b"v"));
        assert_eq!(
            KvApplication::decode_answer(&a.query(b"k")),
            Some(b"v".to_vec())
        );
        let mut b = KvApplication::default();
        b.restore(&a.snapshot()).unwrap();
        assert_eq!(a.state_hash(), b.state_hash());
        assert!(b.restore(b"\xff\xff").is_err());
        assert!(a.apply(b"garbage").is_empty());
    }
}

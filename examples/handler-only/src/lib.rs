//! A handler-only crate: the `notes` handler keeps a session's notes and answers how many it
//! holds. It depends on `opengrid-actors` without default features, so it builds without
//! RocksDB, ONNX Runtime or libp2p; the node that serves it brings those.
//!
//! The test below runs the handler on a local [`SessionHost`](opengrid_actors::SessionHost) over
//! the in-memory checkpoint store: no node, no disk.

use opengrid_actors::prelude::*;
use serde::{Deserialize, Serialize};

/// Longest note accepted, in bytes.
pub const MAX_NOTE_BYTES: usize = 4096;

/// What a client sends.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum NotesInput {
    /// Keep a note.
    Add(String),
    /// Forget every note.
    Clear,
}

/// The notes of one session.
pub struct Notes;

impl SessionHandler for Notes {
    type State = Vec<String>;
    type Input = NotesInput;
    type Output = usize;

    fn id(&self) -> &str {
        "notes"
    }

    fn init(&self, _session: &SessionId) -> Vec<String> {
        Vec::new()
    }

    async fn handle(
        &self,
        notes: &mut Vec<String>,
        input: NotesInput,
        ctx: &SessionContext,
    ) -> Result<usize, HandlerError> {
        match input {
            NotesInput::Add(note) if note.len() > MAX_NOTE_BYTES => Err(HandlerError::new(
                "bad_input",
                format!(
                    "note at {} is {} bytes; at most {MAX_NOTE_BYTES}",
                    ctx.seq(),
                    note.len()
                ),
            )),
            NotesInput::Add(note) => {
                notes.push(note);
                Ok(notes.len())
            }
            NotesInput::Clear => {
                notes.clear();
                Ok(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use opengrid_actors::{HostConfig, SessionHost};
    use opengrid_session::{CheckpointPolicy, CheckpointStore, MemoryCheckpointStore};

    use super::*;

    #[tokio::test]
    async fn notes_are_kept_checkpointed_and_refused_when_too_long() {
        let store = Arc::new(MemoryCheckpointStore::new());
        let host = SessionHost::new(store.clone(), HostConfig::default(), Services::default())
            .await
            .unwrap();
        let id = SessionId::new("alice").unwrap();
        let s = host
            .start(
                Arc::new(Notes),
                id.clone(),
                Epoch(1),
                CheckpointPolicy::synchronous(),
            )
            .await
            .unwrap();
        let answer = |r: Reply<usize>| match r {
            Reply::Processed { output, .. } => output,
            other => panic!("{other:?}"),
        };
        let add = |n: &str| NotesInput::Add(n.to_string());
        assert_eq!(answer(s.send(Seq(1), add("a")).await.unwrap()), Ok(1));
        assert_eq!(answer(s.send(Seq(2), add("b")).await.unwrap()), Ok(2));
        let long = "x".repeat(MAX_NOTE_BYTES + 1);
        let refused = answer(s.send(Seq(3), NotesInput::Add(long)).await.unwrap());
        assert_eq!(refused.unwrap_err().code, "bad_input");
        // Synchronous policy: the acknowledged state is in the store.
        let cp = store.get_latest(&id).unwrap().unwrap();
        assert_eq!(cp.seq, Seq(3));
        assert_eq!(Notes.decode_state(&cp.state).unwrap(), vec!["a", "b"]);
        assert_eq!(
            answer(s.send(Seq(4), NotesInput::Clear).await.unwrap()),
            Ok(0)
        );
        host.shutdown().await;
    }
}

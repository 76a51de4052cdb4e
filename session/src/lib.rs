//! # opengrid-session
//!
//! The lowest crate of OpenGrid: the vocabulary every other crate speaks about a session.
//!
//! - [`Manifest`]: the contract between an agent and the infrastructure (TOML/JSON, versioned,
//!   validated with errors naming the field).
//! - [`SessionId`], [`Epoch`], [`Seq`].
//! - [`CheckpointPolicy`]: what the manifest implies for durability (zero loss ⇒ synchronous
//!   checkpoint before ack; a loss bound ⇒ periodic asynchronous checkpoints; `never-live` ⇒ no live
//!   handover).
//! - [`Checkpoint`]: the versioned, hashed envelope of a session's state (bincode 2).
//! - [`CheckpointStore`] with a RocksDB and an in-memory implementation passing one
//!   [conformance suite](store::conformance), including epoch fencing.
//!
//! Features: `rocksdb` (default) adds `RocksCheckpointStore`, the durable store, and compiles
//! RocksDB (C++). Without it the crate is pure Rust: the store trait, its conformance suite and the
//! in-memory store stay, which is all the handler SDK (`opengrid-actors`) needs.
//!
//! - [`Did`]: the printable identity of nodes and RCs (`did:mycel:z…`, an ed25519 key), and
//!   [`keyfile`]: the one loader of ed25519 key files (created 0600 atomically, permissions checked
//!   on load).
//!
//! Plane: control (placement inputs) and state (checkpoints). No networking, no actors here.

pub mod checkpoint;
pub mod did;
pub mod dirs;
pub mod ids;
pub mod jurisdiction;
pub mod keyfile;
pub mod manifest;
pub mod policy;
pub mod store;
pub mod units;

pub use checkpoint::{
    Checkpoint, CheckpointError, CHECKPOINT_FORMAT_VERSION, MAX_CHECKPOINT_BYTES,
};
pub use did::{Did, DidError};
pub use ids::{Epoch, Seq, SessionId, SessionIdError};
pub use keyfile::KeyFileError;
pub use manifest::{
    AcceleratorClass, Continuity, FieldError, FieldErrorKind, Manifest, ManifestError,
    MigrationCost, ProofKind, AGENT_HANDLER, MANIFEST_VERSION,
};
pub use policy::{CheckpointMode, CheckpointPolicy};
pub use store::{
    CheckpointInfo, CheckpointStore, GatedStore, MemoryCheckpointStore, PutGate, PutOutcome,
    StoreError,
};
#[cfg(feature = "rocksdb")]
pub use store::{RocksCheckpointStore, RocksOptions};
pub use units::{ByteSize, HumanDuration};

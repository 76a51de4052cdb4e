//! # opengrid-settlement
//!
//! What every node earned, settled exactly. A serving node emits one compute receipt (CR) per
//! session per usage window and signs it (ed25519); the routing coordinator (RC) that routed the
//! session verifies and co-signs it; the RC's [`Batcher`](batcher::Batcher) proposes one batch
//! per settlement interval to the Raft-replicated [`Ledger`], which verifies both
//! signatures against registered keys, applies every receipt exactly once and credits accounts by
//! the node's split policy in integer micro-units (credits always sum to the fee; see [`split`]).
//!
//! Where it fits: control plane only. Receipts are small and batched, so the ledger sees one Raft
//! command per batch. This crate uses `opengrid-consensus` for replication and knows nothing of
//! TCP itself.
//!
//! - [`did`]: `did:mycel:z…` identifiers (ed25519 multicodec, base58btc).
//! - [`receipt`]: [`Receipt`], canonical bytes, node signature, RC co-signature.
//! - [`split`]: interchange / NodeCo / custom policies; the largest-remainder rule.
//! - [`ledger`]: commands, rejection reasons, queries, the state machine.
//! - [`operator`]: the ledger operator's key, which authorizes registrations and membership
//!   changes.
//! - [`batcher`]: RC-side co-signing, batching, periodic submission.
//! - [`replica`]: run a replica ([`replica::start_replica`]), talk to the group
//!   ([`replica::LedgerClient`]); the `opengrid-ledger` binary wraps these. A replica's identity
//!   in the group is its key file's DID, proved on every link of its port (mutual TLS 1.3,
//!   `opengrid-link`, ADR 0025); clients connect with their own key.
//!
//! Benches live in `benches/` (P8 there and in `opengrid-chaos bench settlement`); the receipt
//! generator they and the tests share is `testing`, behind the `testing` feature.
//!
//! Metrics: none yet beyond the ledger summary (`status`): settled receipts, batches, total fees
//! and total credits (which must be equal).

pub mod batcher;
pub mod cli;
pub mod config;
pub mod did;
pub mod error;
pub mod keys;
pub mod ledger;
pub mod operator;
pub mod receipt;
pub mod replica;
pub mod split;
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod testing;

pub use config::{LedgerConfig, LedgerConfigError};
pub use did::{Did, DidError};
pub use error::SettlementError;
pub use keys::Keypair;
pub use ledger::{
    Batch, BatchId, Ledger, LedgerCommand, LedgerResponse, LedgerRules, RejectReason,
};
pub use operator::{OperatorAuth, OperatorAuthError};
pub use receipt::{Receipt, ReceiptId, SignedReceipt, Usage, UsageWindow};
pub use replica::{peer_entry, start_replica, LedgerClient, ReplicaOptions};
pub use split::{Account, Bps, SplitPolicy};

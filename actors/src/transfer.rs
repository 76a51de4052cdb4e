//! [`Transfer`]: the capability a node uses to move one of its sessions to another holder.
//!
//! Handlers never see it: a handler's state is simply checkpointed and continued elsewhere (see
//! [`SessionHandler`](crate::SessionHandler)). The node's mobility code (the `opengrid-migration`
//! crate) obtains it from [`SessionHost::transfer`](crate::SessionHost::transfer) and drives the
//! protocol with three calls; how those calls fit a make-before-break protocol is that crate's
//! business, not this one's.
//!
//! - [`suspend`](Transfer::suspend): inputs stop reaching the handler and wait; what was queued
//!   is processed and covered by a checkpoint whose seq is returned.
//! - [`resume`](Transfer::resume): the session serves again where it is (same epoch).
//! - [`complete`](Transfer::complete): the session now lives elsewhere ([`MovedTo`]); inputs that
//!   still reach this node go through a [`Relay`] to the new holder, or are answered with
//!   [`SessionError::Moved`]. Releasing the session from the host
//!   ([`SessionHost::release`](crate::SessionHost::release)) ends the relaying.

use std::sync::Arc;

use futures::future::BoxFuture;
use opengrid_session::{Epoch, Seq, SessionId};
use serde::{Deserialize, Serialize};

use crate::error::SessionError;
use crate::session::Reply;

/// Where a session went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedTo {
    /// Client-facing address of the new holder (for `moved` redirects).
    pub location: String,
    /// The new holder's epoch.
    pub epoch: Epoch,
}

/// Carries an input that reached a session's old holder to its new holder and brings the answer
/// back, so clients see answers while they learn the new location.
pub trait Relay: Send + Sync + 'static {
    /// Sends `input` (JSON) with `seq` to the new holder of `session`. An error that says
    /// nothing about the input (the new holder is unreachable) should be retryable
    /// ([`SessionError::Restarting`]): the caller resends the same seq and duplicates are dropped.
    fn relay(
        &self,
        session: &SessionId,
        seq: Seq,
        input: serde_json::Value,
    ) -> BoxFuture<'static, Result<Reply<serde_json::Value>, SessionError>>;
}

/// A session's transfer capability (see the [module docs](self)).
///
/// What the host guarantees:
/// - After [`suspend`](Self::suspend) returns `Ok(seq)`, no input is processed (hence
///   acknowledged) past `seq` until [`resume`](Self::resume), and the store's newest checkpoint
///   of the session covers exactly `seq`. Calling `suspend` again while suspended returns the same
///   seq. A hibernated session is woken first.
/// - Inputs sent while suspended wait (they are not refused); after `resume` they are processed
///   here, after [`complete`](Self::complete) they are relayed or redirected.
/// - `complete` stops the local actor; the checkpoints stay in the store, fenced by the new epoch
///   once the new holder writes.
///
/// What the caller must guarantee: the new holder has installed the checkpoint covering the
/// suspended seq before `complete` (otherwise acknowledged inputs are lost), and a failed
/// transfer ends with `resume` (otherwise the session's inputs wait forever).
pub trait Transfer: Send + Sync + 'static {
    /// Stops processing new inputs and checkpoints what was processed; returns the seq covered.
    fn suspend(&self) -> BoxFuture<'_, Result<Seq, SessionError>>;

    /// Serves again here with the same epoch. No-op unless suspended.
    fn resume(&self);

    /// The session now lives at `to`. Inputs that reach this node are relayed through `relay`
    /// (if any) or answered with [`SessionError::Moved`]; the local actor stops.
    fn complete(&self, to: MovedTo, relay: Option<Arc<dyn Relay>>) -> BoxFuture<'_, ()>;
}

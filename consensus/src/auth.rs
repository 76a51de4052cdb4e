//! Who may change a group: the admin-request authorization hook and the member check on Raft
//! RPCs.
//!
//! - **Admin requests** ([`AdminRequest`]: add a learner, change the voters) carry opaque
//!   authorization bytes. A replica whose [`RaftNodeConfig::admin_authorizer`] is set hands the
//!   request and those bytes to its [`AdminAuthorizer`] before acting on it (the settlement ledger
//!   checks a signature by the ledger operator's key, fresh and never seen before); a refusal is
//!   answered [`WireError::Unauthorized`] with the authorizer's reason. Without an authorizer
//!   (plain consensus groups such as the key/value test application) admin requests are served
//!   as before.
//! - **Raft RPCs** (AppendEntries, InstallSnapshot, Vote) whose sender id (the leader or candidate
//!   of the request's vote) is not a member of this replica's current membership are refused with
//!   [`WireError::NotAMember`] and counted, so a process outside the group cannot push log entries
//!   or a snapshot into it under a new id. A replica that has no membership yet (a fresh learner
//!   waiting to be added) accepts its first leader. This is an application-level check: it does
//!   not authenticate that the sender really is that member (transport authentication does).
//!
//! [`RaftNodeConfig::admin_authorizer`]: crate::RaftNodeConfig::admin_authorizer
//! [`WireError::Unauthorized`]: crate::WireError::Unauthorized
//! [`WireError::NotAMember`]: crate::WireError::NotAMember

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

const DOMAIN_ADMIN: &[u8] = b"opengrid/raft-admin/v1\0";

/// A membership change, as an authorizer sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Add `id` at `addr` as a learner.
    AddLearner {
        /// The new learner's Raft id.
        id: NodeId,
        /// Its RPC address.
        addr: String,
    },
    /// Make exactly `voters` the voting members.
    ChangeMembership {
        /// The new voter set.
        voters: BTreeSet<NodeId>,
    },
}

impl AdminRequest {
    /// Canonical bytes naming exactly this request (a domain prefix and the bincode encoding),
    /// for authorizers that sign or MAC it.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let body = opengrid_codec::encode(self).unwrap_or_default();
        [DOMAIN_ADMIN, body.as_slice()].concat()
    }
}

/// Decides whether an admin request may be served.
pub trait AdminAuthorizer: std::fmt::Debug + Send + Sync + 'static {
    /// `Ok` to serve `request`; `Err(reason)` to refuse it. `auth` is what the caller attached
    /// (empty when it attached nothing). Called on the replica that executes the request, once
    /// per attempt.
    fn authorize(&self, request: &AdminRequest, auth: &[u8]) -> Result<(), String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_bytes_name_the_request() {
        let a = AdminRequest::AddLearner {
            id: 4,
            addr: "127.0.0.1:1".into(),
        };
        let b = AdminRequest::AddLearner {
            id: 5,
            addr: "127.0.0.1:1".into(),
        };
        let c = AdminRequest::ChangeMembership {
            voters: BTreeSet::from([1, 2]),
        };
        assert!(a.signing_bytes().starts_with(DOMAIN_ADMIN));
        assert_ne!(a.signing_bytes(), b.signing_bytes());
        assert_ne!(a.signing_bytes(), c.signing_bytes());
        assert_eq!(a.signing_bytes(), a.clone().signing_bytes());
    }
}

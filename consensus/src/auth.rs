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
//! - **Raft RPCs** (AppendEntries, InstallSnapshot, Vote) arrive over an authenticated link
//!   (`opengrid-link`, ADR 0025): the server knows the DID that proved its key in the handshake.
//!   A Raft RPC is served only when the id it claims to come from (the leader or candidate of
//!   the request's vote) is a member of this replica's current (possibly joint) membership
//!   ([`WireError::NotAMember`] otherwise) **and** that member's DID is the authenticated peer's
//!   ([`WireError::PeerMismatch`] otherwise): a stranger cannot speak for a member, and a member
//!   cannot speak for another. A replica with no membership yet (a fresh learner waiting to be
//!   added) accepts its first leader, but only as that leader's DID: when the request carries a
//!   membership (log entries or a snapshot), the claimed id must be in it under the peer's DID
//!   and this replica must be in it under its own DID (the DID the AddLearner request declared);
//!   the first DID heard for an id is pinned until the replica has a membership of its own.
//!   Refusals are counted by reason ([`Refusals`]).
//!
//! [`RaftNodeConfig::admin_authorizer`]: crate::RaftNodeConfig::admin_authorizer
//! [`WireError::Unauthorized`]: crate::WireError::Unauthorized
//! [`WireError::NotAMember`]: crate::WireError::NotAMember
//! [`WireError::PeerMismatch`]: crate::WireError::PeerMismatch

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use opengrid_session::Did;
use openraft::Membership;
use serde::{Deserialize, Serialize};

use crate::types::{Node, NodeId};

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
        /// Its identity: the DID it must prove on every link.
        did: Did,
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

/// Why a replica refused a request or a connection: the `reason` label of
/// `opengrid_consensus_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// A Raft RPC whose claimed sender is not a member.
    NotAMember,
    /// A Raft RPC whose claimed sender is a member, but the link proved another DID.
    PeerMismatch,
    /// An admin request the [`AdminAuthorizer`] refused.
    Unauthorized,
    /// A connection closed at once because `max_connections` were open.
    TooManyConnections,
    /// A connection whose TLS handshake failed or timed out (plain TCP, a broken client).
    Handshake,
    /// A connection closed after `idle_timeout` without a request.
    Idle,
}

impl RefusalReason {
    /// Every reason, in label order.
    pub const ALL: [RefusalReason; 6] = [
        RefusalReason::NotAMember,
        RefusalReason::PeerMismatch,
        RefusalReason::Unauthorized,
        RefusalReason::TooManyConnections,
        RefusalReason::Handshake,
        RefusalReason::Idle,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            RefusalReason::NotAMember => "not_a_member",
            RefusalReason::PeerMismatch => "peer_mismatch",
            RefusalReason::Unauthorized => "unauthorized",
            RefusalReason::TooManyConnections => "too_many_connections",
            RefusalReason::Handshake => "handshake",
            RefusalReason::Idle => "idle",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// `opengrid_consensus_refused_total{reason}`: what one replica refused, by reason (lock-free
/// counters; read them with [`Refusals::get`] or [`Refusals::by_reason`]).
#[derive(Debug, Default)]
pub struct Refusals {
    counts: [AtomicU64; 6],
}

impl Refusals {
    /// Counts one refusal; returns the new count of that reason.
    pub fn count(&self, reason: RefusalReason) -> u64 {
        self.counts[reason.index()].fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Refusals of `reason` so far.
    pub fn get(&self, reason: RefusalReason) -> u64 {
        self.counts[reason.index()].load(Ordering::Relaxed)
    }

    /// Refused requests (not connections): non-members, mismatched peers, unauthorized admin.
    pub fn requests(&self) -> u64 {
        [
            RefusalReason::NotAMember,
            RefusalReason::PeerMismatch,
            RefusalReason::Unauthorized,
        ]
        .into_iter()
        .map(|r| self.get(r))
        .sum()
    }

    /// Every reason's label and count.
    pub fn by_reason(&self) -> Vec<(&'static str, u64)> {
        RefusalReason::ALL
            .into_iter()
            .map(|r| (r.label(), self.get(r)))
            .collect()
    }
}

/// Why a Raft RPC's sender was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SenderRefused {
    NotAMember,
    PeerMismatch { member: Option<Did> },
}

/// Decides whether a Raft RPC claiming to come from `claimed` may be served, given the link's
/// authenticated `peer` (see the module docs).
#[derive(Debug)]
pub(crate) struct RaftSenderCheck {
    me: NodeId,
    my_did: Did,
    /// While this replica has no membership: the first DID heard for each leader id.
    first_heard: Mutex<BTreeMap<NodeId, Did>>,
}

impl RaftSenderCheck {
    pub(crate) fn new(me: NodeId, my_did: Did) -> Self {
        RaftSenderCheck {
            me,
            my_did,
            first_heard: Mutex::new(BTreeMap::new()),
        }
    }

    /// `current`: this replica's effective membership; `carried`: a membership the request
    /// brings (in its log entries or its snapshot), checked only while `current` is empty.
    pub(crate) fn check(
        &self,
        current: &Membership<NodeId, Node>,
        claimed: Option<NodeId>,
        peer: &Did,
        carried: Option<&Membership<NodeId, Node>>,
    ) -> Result<(), SenderRefused> {
        let Some(claimed) = claimed else {
            return Err(SenderRefused::NotAMember);
        };
        if current.nodes().next().is_some() {
            self.first_heard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            return match current.get_node(&claimed) {
                None => Err(SenderRefused::NotAMember),
                Some(n) if n.did.as_ref() == Some(peer) => Ok(()),
                Some(n) => Err(SenderRefused::PeerMismatch {
                    member: n.did.clone(),
                }),
            };
        }
        // A fresh learner: its first leader, as the group declared it.
        if let Some(m) = carried {
            match m.get_node(&claimed) {
                None => return Err(SenderRefused::NotAMember),
                Some(n) if n.did.as_ref() != Some(peer) => {
                    return Err(SenderRefused::PeerMismatch {
                        member: n.did.clone(),
                    })
                }
                Some(_) => {}
            }
            // The group must have declared this replica under this replica's key.
            if m.get_node(&self.me)
                .is_some_and(|n| n.did.as_ref() != Some(&self.my_did))
            {
                return Err(SenderRefused::PeerMismatch {
                    member: Some(peer.clone()),
                });
            }
        }
        let mut heard = self.first_heard.lock().unwrap_or_else(|p| p.into_inner());
        match heard.get(&claimed) {
            Some(did) if did != peer => Err(SenderRefused::PeerMismatch {
                member: Some(did.clone()),
            }),
            Some(_) => Ok(()),
            None => {
                // Bounded: a stranger cycling ids cannot grow the map without limit.
                if heard.len() >= 64 {
                    heard.clear();
                }
                heard.insert(claimed, peer.clone());
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_bytes_name_the_request() {
        let one = did(1);
        let a = AdminRequest::AddLearner {
            id: 4,
            addr: "127.0.0.1:1".into(),
            did: one.clone(),
        };
        let b = AdminRequest::AddLearner {
            id: 5,
            addr: "127.0.0.1:1".into(),
            did: one.clone(),
        };
        let c = AdminRequest::ChangeMembership {
            voters: BTreeSet::from([1, 2]),
        };
        assert!(a.signing_bytes().starts_with(DOMAIN_ADMIN));
        assert_ne!(a.signing_bytes(), b.signing_bytes());
        assert_ne!(a.signing_bytes(), c.signing_bytes());
        assert_eq!(a.signing_bytes(), a.clone().signing_bytes());
        let other_did = AdminRequest::AddLearner {
            id: 4,
            addr: "127.0.0.1:1".into(),
            did: did(2),
        };
        assert_ne!(a.signing_bytes(), other_did.signing_bytes());
    }

    pub(super) fn did(seed: u8) -> Did {
        Did::from_public_key(&ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key())
    }

    fn members(ids: &[(NodeId, u8)]) -> Membership<NodeId, Node> {
        let nodes: BTreeMap<NodeId, Node> = ids
            .iter()
            .map(|(id, seed)| (*id, Node::new(format!("127.0.0.1:{id}"), did(*seed))))
            .collect();
        let voters = nodes.keys().copied().collect::<BTreeSet<_>>();
        Membership::new(vec![voters], nodes)
    }

    #[test]
    fn a_member_is_heard_only_under_its_own_did() {
        let check = RaftSenderCheck::new(3, did(3));
        let m = members(&[(1, 1), (2, 2), (3, 3)]);
        assert_eq!(check.check(&m, Some(1), &did(1), None), Ok(()));
        // A stranger claiming member 1, and member 2 claiming member 1.
        for peer in [did(9), did(2)] {
            assert_eq!(
                check.check(&m, Some(1), &peer, None),
                Err(SenderRefused::PeerMismatch {
                    member: Some(did(1))
                })
            );
        }
        assert_eq!(
            check.check(&m, Some(7), &did(7), None),
            Err(SenderRefused::NotAMember)
        );
        assert_eq!(
            check.check(&m, None, &did(1), None),
            Err(SenderRefused::NotAMember)
        );
    }

    #[test]
    fn a_fresh_learner_accepts_its_first_leader_as_declared() {
        let empty = Membership::<NodeId, Node>::new(vec![], BTreeMap::new());
        let check = RaftSenderCheck::new(4, did(4));
        let declared = members(&[(1, 1), (2, 2), (4, 4)]);
        // The membership the leader brings must name it under the peer's DID…
        assert_eq!(
            check.check(&empty, Some(1), &did(9), Some(&declared)),
            Err(SenderRefused::PeerMismatch {
                member: Some(did(1))
            })
        );
        // …and this learner under its own.
        let wrong_me = members(&[(1, 1), (4, 8)]);
        assert!(check
            .check(&empty, Some(1), &did(1), Some(&wrong_me))
            .is_err());
        assert_eq!(
            check.check(&empty, Some(1), &did(1), Some(&declared)),
            Ok(())
        );
        // The first DID heard for an id is pinned while the learner has no membership.
        assert_eq!(check.check(&empty, Some(1), &did(1), None), Ok(()));
        assert!(matches!(
            check.check(&empty, Some(1), &did(9), None),
            Err(SenderRefused::PeerMismatch { .. })
        ));
    }
}

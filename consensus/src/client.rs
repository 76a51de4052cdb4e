//! [`Client`]: a client of a Raft group for processes that are not replicas (CLIs, RCs proposing
//! settlement batches): leader redirects, retries until a deadline, every connection an
//! authenticated link.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use opengrid_link::Link;
use opengrid_session::Did;

use crate::auth::AdminRequest;
use crate::error::ConsensusError;
use crate::network::{
    Connection, NodeStatus, RpcRequest, RpcResponse, WireError, DEFAULT_MAX_FRAME_BYTES,
};
use crate::types::{Node, NodeId};

/// A client of a Raft group for processes that are not replicas. Follows leader redirects and
/// retries transient failures until its deadline.
///
/// Writes are at-least-once: a write whose reply was lost may be retried and applied again, so
/// commands sent through it must be idempotent (settlement batches carry a content id).
///
/// Every connection is a link proving the client's own key. A replica address written
/// `DID@HOST:PORT` must prove that DID; a bare `HOST:PORT` accepts whichever authenticated
/// replica answers there (encrypted, but not pinned: give DIDs where a man in the middle
/// matters). Leader redirects to a listed address keep that address's DID.
pub struct Client {
    replicas: Vec<Node>,
    link: Link,
    leader_hint: Option<String>,
    max_frame: usize,
    timeout: Duration,
    attempt_timeout: Duration,
}

impl Client {
    /// A client that may contact any of `addrs` (`DID@HOST:PORT` or `HOST:PORT`), connecting
    /// with the identity `key`.
    pub fn new(addrs: Vec<String>, key: &SigningKey) -> Result<Self, ConsensusError> {
        Self::with_link(addrs, crate::network::client_link(key)?)
    }

    /// As [`Client::new`] over an existing link (its policy decides which replicas are
    /// acceptable).
    pub fn with_link(addrs: Vec<String>, link: Link) -> Result<Self, ConsensusError> {
        let replicas = addrs
            .iter()
            .map(|a| {
                Node::parse(a)
                    .map_err(|e| ConsensusError::Config(format!("replica address `{a}`: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            replicas,
            link,
            leader_hint: None,
            max_frame: DEFAULT_MAX_FRAME_BYTES,
            attempt_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(20),
        })
    }

    /// The DID this client proves.
    pub fn did(&self) -> &Did {
        self.link.did()
    }

    /// `addr` as a replica to reach: its DID when given, or when `addr` is a listed replica's.
    fn replica(&self, addr: &str) -> Result<Node, ConsensusError> {
        let node = Node::parse(addr)
            .map_err(|e| ConsensusError::Config(format!("replica address `{addr}`: {e}")))?;
        if node.did.is_some() {
            return Ok(node);
        }
        Ok(self
            .replicas
            .iter()
            .find(|r| r.addr == node.addr)
            .cloned()
            .unwrap_or(node))
    }

    /// Longest wait for one replica's answer before trying the next (default 10 s). Writes
    /// retried after it may be proposed twice: commands must be idempotent.
    pub fn with_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// Overall deadline per operation (retries included).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Propose a command; returns the application's response.
    pub async fn write(&mut self, command: Vec<u8>) -> Result<Vec<u8>, ConsensusError> {
        self.retrying(|| RpcRequest::ClientWrite {
            command: command.clone(),
            forward: true,
        })
        .await
    }

    /// A linearizable read.
    pub async fn read(&mut self, query: Vec<u8>) -> Result<Vec<u8>, ConsensusError> {
        self.retrying(|| RpcRequest::Read {
            query: query.clone(),
            forward: true,
        })
        .await
    }

    /// Add a learner at `addr` proving `did` to the cluster (no authorization attached).
    pub async fn add_learner(
        &mut self,
        id: NodeId,
        addr: String,
        did: Did,
    ) -> Result<(), ConsensusError> {
        self.add_learner_with(id, addr, did, |_| Vec::new()).await
    }

    /// Add a learner; `authorize` makes the authorization bytes for each attempt (so a
    /// one-time nonce is fresh on every retry).
    pub async fn add_learner_with(
        &mut self,
        id: NodeId,
        addr: String,
        did: Did,
        authorize: impl Fn(&AdminRequest) -> Vec<u8>,
    ) -> Result<(), ConsensusError> {
        let req = AdminRequest::AddLearner {
            id,
            addr: addr.clone(),
            did: did.clone(),
        };
        self.retrying(|| RpcRequest::AddLearner {
            id,
            addr: addr.clone(),
            did: did.clone(),
            auth: authorize(&req),
        })
        .await
        .map(|_| ())
    }

    /// Set the voters (no authorization attached).
    pub async fn change_membership(
        &mut self,
        voters: BTreeSet<NodeId>,
    ) -> Result<(), ConsensusError> {
        self.change_membership_with(voters, |_| Vec::new()).await
    }

    /// Set the voters; `authorize` as for [`Client::add_learner_with`].
    pub async fn change_membership_with(
        &mut self,
        voters: BTreeSet<NodeId>,
        authorize: impl Fn(&AdminRequest) -> Vec<u8>,
    ) -> Result<(), ConsensusError> {
        let req = AdminRequest::ChangeMembership {
            voters: voters.clone(),
        };
        self.retrying(|| RpcRequest::ChangeMembership {
            voters: voters.clone(),
            auth: authorize(&req),
        })
        .await
        .map(|_| ())
    }

    /// One replica's status.
    pub async fn status(&self, addr: &str) -> Result<NodeStatus, ConsensusError> {
        let mut conn = Connection::new(self.link.clone(), &self.replica(addr)?, self.max_frame);
        match conn.request(&RpcRequest::Status, self.timeout).await? {
            RpcResponse::Status(s) => Ok(s),
            other => Err(ConsensusError::Protocol(format!(
                "unexpected response {other:?}"
            ))),
        }
    }

    /// Query one replica's local state.
    pub async fn local_read(&self, addr: &str, query: Vec<u8>) -> Result<Vec<u8>, ConsensusError> {
        let mut conn = Connection::new(self.link.clone(), &self.replica(addr)?, self.max_frame);
        match conn
            .request(&RpcRequest::LocalRead { query }, self.timeout)
            .await?
        {
            RpcResponse::Client(Ok(b)) => Ok(b),
            RpcResponse::Client(Err(e)) => Err(ConsensusError::Remote(e.to_string())),
            other => Err(ConsensusError::Protocol(format!(
                "unexpected response {other:?}"
            ))),
        }
    }

    async fn retrying(&mut self, make: impl Fn() -> RpcRequest) -> Result<Vec<u8>, ConsensusError> {
        let deadline = Instant::now() + self.timeout;
        let mut attempt = 0usize;
        let mut last_err = ConsensusError::Timeout("no replica answered".into());
        while Instant::now() < deadline {
            let node = match self.leader_hint.take() {
                Some(a) => self.replica(&a)?,
                None if self.replicas.is_empty() => {
                    return Err(ConsensusError::Config("client has no addresses".into()))
                }
                None => self.replicas[attempt % self.replicas.len()].clone(),
            };
            let addr = node.addr.clone();
            attempt += 1;
            // Bound each attempt so one stuck replica cannot use up the whole deadline.
            let remaining = deadline
                .saturating_duration_since(Instant::now())
                .min(self.attempt_timeout);
            let mut conn = Connection::new(self.link.clone(), &node, self.max_frame);
            match conn.request(&make(), remaining).await {
                Ok(RpcResponse::Client(Ok(bytes))) => {
                    self.leader_hint = Some(addr);
                    return Ok(bytes);
                }
                Ok(RpcResponse::Client(Err(WireError::ForwardToLeader {
                    leader_id,
                    leader_addr,
                }))) => {
                    self.leader_hint = leader_addr.clone();
                    last_err = ConsensusError::NotLeader {
                        leader_id,
                        leader_addr,
                    };
                }
                Ok(RpcResponse::Client(Err(WireError::Failed(m)))) => {
                    // Raft-level failures during elections/membership changes are transient.
                    last_err = ConsensusError::Remote(m);
                }
                Ok(RpcResponse::Client(Err(WireError::Unauthorized(m)))) => {
                    return Err(ConsensusError::Unauthorized(m));
                }
                Ok(RpcResponse::Client(Err(WireError::NotAMember { sender }))) => {
                    return Err(ConsensusError::NotAMember(sender));
                }
                Ok(RpcResponse::Client(Err(WireError::PeerMismatch { sender, peer }))) => {
                    return Err(ConsensusError::PeerMismatch { sender, peer });
                }
                Ok(other) => {
                    return Err(ConsensusError::Protocol(format!(
                        "unexpected response {other:?}"
                    )))
                }
                Err(e) if e.is_retryable() => last_err = e,
                Err(e) => return Err(e),
            }
            // Back off a little between rounds over all replicas (elections take ~1 s).
            if attempt.is_multiple_of(self.replicas.len().max(1)) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Err(last_err)
    }
}

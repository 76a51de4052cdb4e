//! Raft transport over authenticated links: [`RpcRequest`]/[`RpcResponse`] in the shared frame
//! format of [`opengrid_codec::frame`] (4-byte big-endian length, [`RAFT_WIRE_VERSION`], bincode 2
//! body) with a size limit, inside mutual TLS 1.3 ([`opengrid_link`]): each side proves its
//! did:mycel key in the handshake, and a client names the DID it expects the replica to have.
//!
//! A connection carries one request at a time (request, then response). Peers keep one
//! connection per target and reconnect after any error or after [`CLIENT_MAX_IDLE`] unused (well
//! before a replica's idle timeout closes it). Oversized or undecodable frames close the
//! connection; they never panic. See `docs/adr/0006-raft-transport.md`,
//! `docs/adr/0011-one-framing-codec.md` and `docs/adr/0025-ledger-links.md`.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use opengrid_codec::{Frame, FrameCodec, FrameError, Framed};
use opengrid_link::{ClientStream, Link};
use opengrid_session::Did;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

use crate::error::ConsensusError;
use crate::types::{LogId, Node, NodeId, TypeConfig};

/// Default upper bound on one frame (request or response), in bytes.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// Version byte of the Raft transport's frames (2: members carry their DID, links are TLS).
pub const RAFT_WIRE_VERSION: u8 = 2;

/// A client connection unused for this long is reopened before its next request, so that it
/// never sends on a connection a replica is closing for idleness (the replicas' default
/// `idle_timeout` is 60 s).
pub const CLIENT_MAX_IDLE: Duration = Duration::from_secs(15);

/// A client's side of the transport: sends requests, receives responses.
pub type ClientCodec = FrameCodec<RpcRequest, RpcResponse>;
/// A replica's side of the transport: receives requests, answers responses.
pub type ServerCodec = FrameCodec<RpcResponse, RpcRequest>;

/// A client codec refusing frames over `max_frame` bytes.
pub fn client_codec(max_frame: usize) -> ClientCodec {
    FrameCodec::new(RAFT_WIRE_VERSION, max_frame)
}

/// A server codec refusing frames over `max_frame` bytes.
pub fn server_codec(max_frame: usize) -> ServerCodec {
    FrameCodec::new(RAFT_WIRE_VERSION, max_frame)
}

/// A request on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcRequest {
    /// Raft: replicate entries / heartbeat.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Raft: request a vote.
    Vote(VoteRequest<NodeId>),
    /// Raft: one chunk of a snapshot.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// Client: propose a command. With `forward`, a follower forwards it to the leader.
    ClientWrite { command: Vec<u8>, forward: bool },
    /// Client: a linearizable read (served by the leader). With `forward`, a follower forwards.
    Read { query: Vec<u8>, forward: bool },
    /// Client: a read of this replica's local state (may be stale).
    LocalRead { query: Vec<u8> },
    /// Client: this replica's status.
    Status,
    /// Admin: add a learner (forwarded to the leader). `auth`: the caller's authorization,
    /// checked by the replica's [`AdminAuthorizer`](crate::auth::AdminAuthorizer) when it has one.
    AddLearner {
        id: NodeId,
        addr: String,
        /// The DID the learner must prove on its links.
        did: Did,
        auth: Vec<u8>,
    },
    /// Admin: set the voter set (forwarded to the leader); `auth` as for `AddLearner`.
    ChangeMembership {
        voters: BTreeSet<NodeId>,
        auth: Vec<u8>,
    },
}

/// A response on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcResponse {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    /// Answer to client and admin requests: the application's response bytes.
    Client(Result<Vec<u8>, WireError>),
    Status(NodeStatus),
}

/// An error carried back to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WireError {
    /// This replica is not the leader; retry at `leader_addr` when known.
    #[error("not the leader; leader is {leader_id:?} at {leader_addr:?}")]
    ForwardToLeader {
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    /// The request failed on the replica.
    #[error("{0}")]
    Failed(String),
    /// An admin request was refused by the replica's authorizer (the reason says why).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// A Raft RPC whose sender is not a member of the group was refused.
    #[error("refused: sender {sender:?} is not a member of this group")]
    NotAMember { sender: Option<NodeId> },
    /// A Raft RPC claiming to come from member `sender` arrived over a link authenticated as
    /// another DID (`peer`), and was refused.
    #[error("refused: the link is authenticated as {peer}, which is not member {sender:?}")]
    PeerMismatch {
        sender: Option<NodeId>,
        peer: String,
    },
}

/// A replica's view of itself, for operators and tests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: NodeId,
    /// `Leader`, `Follower`, `Candidate`, `Learner` or `Shutdown`.
    pub state: String,
    pub current_term: u64,
    pub current_leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<LogId>,
    /// Voters of the effective membership.
    pub voters: Vec<NodeId>,
    /// All members (voters and learners) with their addresses.
    pub nodes: Vec<(NodeId, String)>,
    /// The application's state hash at `last_applied`.
    pub state_hash: [u8; 32],
}

/// Links for a process that connects as `key` to any authenticated replica (which replica it
/// must be is named per connection, [`Connection::new`]); replicas accept the same from anyone
/// and decide per request.
pub fn client_link(key: &ed25519_dalek::SigningKey) -> Result<Link, ConsensusError> {
    Ok(Link::new(
        &opengrid_link::LinkIdentity::from_signing_key(key)?,
        std::sync::Arc::new(|_: &Did| true),
    )?)
}

/// An open link to a replica, framed.
type Stream = Framed<ClientStream<TcpStream>, ClientCodec>;

/// One request/response exchange on an open connection.
async fn call(conn: &mut Stream, req: Frame<RpcRequest>) -> Result<RpcResponse, ConsensusError> {
    conn.send(req).await?;
    Ok(conn
        .next()
        .await
        .ok_or(ConsensusError::ConnectionClosed)??)
}

/// A link to one replica, opened lazily (TCP, then the TLS handshake with this process's
/// identity) and reopened after errors.
pub struct Connection {
    addr: String,
    expect: Option<Did>,
    link: Link,
    stream: Option<(Stream, tokio::time::Instant)>,
    codec: ClientCodec,
    connect_timeout: Duration,
}

impl Connection {
    /// A connection to `node` (not opened yet) over `link`: the replica must prove `node.did`
    /// (any DID when `None`, for clients given bare addresses).
    pub fn new(link: Link, node: &Node, max_frame: usize) -> Self {
        Self {
            addr: node.addr.clone(),
            expect: node.did.clone(),
            link,
            stream: None,
            codec: client_codec(max_frame),
            connect_timeout: Duration::from_secs(2),
        }
    }

    /// The peer address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Encodes `req` as a frame of this connection's protocol (to measure or reuse it).
    pub fn encode(&mut self, req: &RpcRequest) -> Result<Frame<RpcRequest>, ConsensusError> {
        Ok(self.codec.encode_frame(req)?)
    }

    /// Send `req` and wait up to `timeout` for the response.
    pub async fn request(
        &mut self,
        req: &RpcRequest,
        timeout: Duration,
    ) -> Result<RpcResponse, ConsensusError> {
        let frame = self.encode(req)?;
        self.request_frame(frame, timeout).await
    }

    async fn open(&self) -> Result<Stream, ConsensusError> {
        let connect = async {
            let s = TcpStream::connect(&self.addr).await?;
            s.set_nodelay(true)?;
            let (tls, _) = self.link.connect(s, self.expect.as_ref()).await?;
            Ok::<_, ConsensusError>(tls)
        };
        let tls = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| ConsensusError::Timeout(format!("connect to {}", self.addr)))??;
        Ok(self.codec.clone().framed(tls))
    }

    /// Send an already encoded request and wait up to `timeout` for the response.
    pub async fn request_frame(
        &mut self,
        frame: Frame<RpcRequest>,
        timeout: Duration,
    ) -> Result<RpcResponse, ConsensusError> {
        // The stream is taken out for the exchange and put back only after a complete
        // request/response pair. This future may be dropped at any await point (openraft wraps
        // every RPC in its own timeout, shorter than ours): a dropped exchange then drops the
        // stream with it, so the next request never reads the abandoned request's late response
        // as its own. (Reusing the stream here paired a stale `Success` with a newer
        // AppendEntries, and the leader believed the follower held entries it never received.)
        let now = tokio::time::Instant::now();
        let mut stream = match self.stream.take() {
            Some((s, used)) if now.duration_since(used) < CLIENT_MAX_IDLE => s,
            _ => self.open().await?,
        };
        let res = tokio::time::timeout(timeout, call(&mut stream, frame)).await;
        match res {
            Ok(Ok(resp)) => {
                self.stream = Some((stream, tokio::time::Instant::now()));
                Ok(resp)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ConsensusError::Timeout(format!("rpc to {}", self.addr))),
        }
    }
}

/// Creates one [`PeerClient`] per replication target, each a link that must reach the target's
/// DID.
#[derive(Clone)]
pub struct LinkNetworkFactory {
    link: Link,
    max_frame: usize,
    retry_unreachable: Duration,
}

impl LinkNetworkFactory {
    /// A factory whose connections go over `link` and refuse frames above `max_frame` bytes.
    pub fn new(link: Link, max_frame: usize) -> Self {
        Self {
            link,
            max_frame,
            retry_unreachable: DEFAULT_RETRY_UNREACHABLE,
        }
    }

    /// The same factory retrying an unreachable peer every `every` (openraft's default: 500 ms).
    pub fn with_retry_unreachable(mut self, every: Duration) -> Self {
        self.retry_unreachable = every;
        self
    }
}

/// How often replication retries a peer it could not reach (openraft's default).
pub const DEFAULT_RETRY_UNREACHABLE: Duration = Duration::from_millis(500);

impl RaftNetworkFactory<TypeConfig> for LinkNetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Self::Network {
        PeerClient {
            target,
            conn: Connection::new(self.link.clone(), node, self.max_frame),
            retry_unreachable: self.retry_unreachable,
        }
    }
}

/// Soft cap on one AppendEntries request: above it (with more than one entry) openraft is asked
/// to send fewer entries per RPC.
pub const MAX_APPEND_BYTES: usize = 2 * 1024 * 1024;

/// openraft's client side of the RPCs to one peer.
pub struct PeerClient {
    target: NodeId,
    conn: Connection,
    retry_unreachable: Duration,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, Node, RaftError<NodeId, E>>;

impl PeerClient {
    async fn send<E: std::error::Error>(
        &mut self,
        req: RpcRequest,
        option: &RPCOption,
        entries: u64,
    ) -> Result<RpcResponse, RpcErr<E>> {
        if self.conn.expect.is_none() {
            // Members are always declared with a DID; never talk Raft to an unpinned peer.
            let e = ConsensusError::Config(format!("member {} has no DID", self.target));
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        }
        let frame = self
            .conn
            .encode(&req)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        // openraft gives an AppendEntries RPC one heartbeat interval; keep each request small
        // enough to be sent, appended and fsynced in that time by asking for fewer entries.
        let budget = MAX_APPEND_BYTES.min(self.conn.codec.max_frame());
        if entries > 1 && frame.len() > budget {
            let hint = (u128::from(entries) * budget as u128 / frame.len() as u128).max(1) as u64;
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        match self.conn.request_frame(frame, option.hard_ttl()).await {
            Ok(r) => Ok(r),
            Err(
                e @ (ConsensusError::Io(_)
                | ConsensusError::Link(_)
                | ConsensusError::Frame(FrameError::Io(_) | FrameError::Truncated { .. })),
            ) if self.conn.stream.is_none() => {
                tracing::debug!(target = self.target, addr = self.conn.addr(), error = %e, "peer unreachable");
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }

    fn unexpected<E: std::error::Error>(&self, resp: &RpcResponse) -> RpcErr<E> {
        let e = ConsensusError::Protocol(format!(
            "unexpected response kind from {}: {resp:?}",
            self.target
        ));
        RPCError::Network(NetworkError::new(&e))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    /// A peer that could not be reached is retried every `retry_unreachable`: a replica that
    /// restarts hears from the leader before its own election timer fires (a replica that
    /// campaigns when it restarts deposes a healthy leader: openraft 0.9 has no pre-vote).
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(self.retry_unreachable))
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let n = rpc.entries.len() as u64;
        match self
            .send(RpcRequest::AppendEntries(rpc), &option, n)
            .await?
        {
            RpcResponse::AppendEntries(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        match self
            .send(RpcRequest::InstallSnapshot(rpc), &option, 0)
            .await?
        {
            RpcResponse::InstallSnapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        match self.send(RpcRequest::Vote(rpc), &option, 0).await? {
            RpcResponse::Vote(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(&other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opengrid_link::LinkIdentity;
    use std::sync::Arc;
    use tokio::net::TcpListener;

    pub(crate) fn link(seed: u8) -> Link {
        let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        Link::new(
            &LinkIdentity::from_signing_key(&key).unwrap(),
            Arc::new(|_: &Did| true),
        )
        .unwrap()
    }

    /// openraft drops an RPC future when its own timeout fires; the late response to that request
    /// must never be read as the response to the next one on the same `Connection`.
    #[tokio::test]
    async fn abandoned_request_never_answers_the_next_one() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server_link = link(1);
        let server_did = server_link.did().clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let server_link = server_link.clone();
                tokio::spawn(async move {
                    let Ok((s, _)) = server_link.accept(s).await else {
                        return;
                    };
                    let mut s = server_codec(1 << 20).framed(s);
                    while let Some(Ok(req)) = s.next().await {
                        let RpcRequest::LocalRead { query } = req else {
                            return;
                        };
                        if query == [1] {
                            // The slow answer the caller gives up on.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        if s.send(&RpcResponse::Client(Ok(query))).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let mut conn = Connection::new(link(2), &Node::new(addr, server_did), 1 << 20);
        let read = |n: u8| RpcRequest::LocalRead { query: vec![n] };
        // Warm the connection up, then abandon a request mid-flight (future dropped).
        let r = conn
            .request(&read(0), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(matches!(r, RpcResponse::Client(Ok(ref q)) if q == &[0]));
        let abandoned = tokio::time::timeout(
            Duration::from_millis(50),
            conn.request(&read(1), Duration::from_secs(5)),
        )
        .await;
        assert!(
            abandoned.is_err(),
            "the slow request should have been abandoned"
        );
        for n in 2..5u8 {
            match conn
                .request(&read(n), Duration::from_secs(5))
                .await
                .unwrap()
            {
                RpcResponse::Client(Ok(q)) => {
                    assert_eq!(q, vec![n], "response paired with the wrong request")
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        server.abort();
    }

    proptest::proptest! {
        /// Hostile bytes on a replica's port: typed errors or messages, never a panic.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            use tokio_util::codec::Decoder;
            let _ = opengrid_codec::decode::<crate::types::Entry>(&bytes, 1 << 20);
            let _ = opengrid_codec::decode::<RpcRequest>(&bytes, 1 << 20);
            let mut framed = bytes::BytesMut::from(&(bytes.len() as u32 + 1).to_be_bytes()[..]);
            framed.extend_from_slice(&[RAFT_WIRE_VERSION]);
            framed.extend_from_slice(&bytes);
            let _ = server_codec(1 << 20).decode(&mut framed);
        }
    }
}

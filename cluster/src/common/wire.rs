//! Control-plane messages between nodes and the RC, carried by ractor_cluster.
//!
//! Each actor message type has a `Wire` variant that crosses the network (bincode 2, size-limited
//! decode; an undecodable frame is dropped by ractor and never panics) and `Local` variants that
//! never leave the process.

use std::time::{SystemTime, UNIX_EPOCH};

use ractor::message::{BoxedDowncastErr, SerializedMessage};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::common::identity::{Identity, IdentityError, NodeId};
use crate::common::seal::Sealed;
use crate::common::spec::NodeSpec;

/// Largest control-plane message decoded.
pub const MAX_WIRE_BYTES: usize = 1 << 20;
/// pg scope of OpenGrid control-plane actors.
pub const PG_SCOPE: &str = "opengrid";
/// pg group of the RC of a colony: `og.rc.<colony>.<first 8 bytes of blake3(secret), hex>`, so
/// that several colonies (and tests) can share a process and a node never addresses the RC of
/// another colony.
pub fn pg_rc(colony: &str, secret: &str) -> String {
    let h = blake3::hash(secret.as_bytes());
    let hex: String = h.as_bytes()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("og.rc.{colony}.{hex}")
}
/// Prefers a member in this process, else a remote one.
pub(crate) fn pick<M: ractor::Message>(
    cells: Vec<ractor::ActorCell>,
) -> Option<ractor::ActorRef<M>> {
    let local = cells.iter().find(|c| c.get_id().is_local()).cloned();
    local
        .or_else(|| cells.into_iter().next())
        .map(ractor::ActorRef::from)
}

/// Domain separator of signed join requests.
const JOIN_DOMAIN: &[u8] = b"opengrid-join-v1\0";

/// pg group of one node's agent.
pub fn pg_node(id: &NodeId) -> String {
    format!("og.node.{}", id.did())
}

/// The body of a join request (signed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JoinBody {
    /// Colony the node means to join.
    pub colony: String,
    /// The node's declaration (its `id` is the signer).
    pub spec: NodeSpec,
    /// Wall-clock time of the request, ms since the Unix epoch (replay window).
    pub unix_ms: u64,
    /// Random nonce.
    pub nonce: u64,
    /// The node's ephemeral X25519 public key for this join's control link
    /// ([`crate::common::seal`]).
    pub kx: [u8; 32],
    /// A join token signed by a colony operator (`opengrid token join`), when the colony admits
    /// by token (ADR 0027).
    pub join_token: Option<String>,
}

/// A join request: body + ed25519 signature by the node's identity key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// Encoded [`JoinBody`].
    pub body: Vec<u8>,
    /// Signature over `JOIN_DOMAIN ‖ body`.
    pub signature: Vec<u8>,
}

/// Why a join was refused.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The body does not decode.
    #[error("join body does not decode: {0}")]
    Decode(String),
    /// The signature does not verify for the claimed id.
    #[error("join signature invalid: {0}")]
    Signature(#[from] IdentityError),
    /// Another colony.
    #[error("join names colony {got:?}, this RC serves {want:?}")]
    WrongColony {
        /// Named.
        got: String,
        /// Served.
        want: String,
    },
    /// Timestamp outside the accepted window.
    #[error("join timestamp is {skew_ms} ms away from the RC clock (limit {limit_ms} ms)")]
    Stale {
        /// Distance.
        skew_ms: u64,
        /// Limit.
        limit_ms: u64,
    },
    /// The colony's membership policy does not admit this node (not in `members`, no or a bad
    /// join token).
    #[error("not admitted to the colony: {0}")]
    NotAdmitted(String),
}

impl JoinRequest {
    /// Signs a join body.
    pub fn sign(identity: &Identity, body: &JoinBody) -> Self {
        let bytes = encode(body);
        let mut msg = JOIN_DOMAIN.to_vec();
        msg.extend_from_slice(&bytes);
        JoinRequest {
            body: bytes,
            signature: identity.sign(&msg).to_vec(),
        }
    }

    /// Decodes and verifies: signature by `spec.id`, colony, timestamp within `max_skew_ms`.
    pub fn verify(
        &self,
        colony: &str,
        now_unix_ms: u64,
        max_skew_ms: u64,
    ) -> Result<JoinBody, JoinError> {
        let body: JoinBody = decode(&self.body).map_err(JoinError::Decode)?;
        let mut msg = JOIN_DOMAIN.to_vec();
        msg.extend_from_slice(&self.body);
        body.spec.id.verify(&msg, &self.signature)?;
        if body.colony != colony {
            return Err(JoinError::WrongColony {
                got: body.colony,
                want: colony.to_string(),
            });
        }
        let skew = now_unix_ms.abs_diff(body.unix_ms);
        if skew > max_skew_ms {
            return Err(JoinError::Stale {
                skew_ms: skew,
                limit_ms: max_skew_ms,
            });
        }
        Ok(body)
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl ToRc {
    /// The sender a message claims (every message but a join names it; a join's signer is its
    /// `spec.id`, checked by [`JoinRequest::verify`]).
    pub fn claimed_sender(&self) -> Option<NodeId> {
        match self {
            ToRc::Join(_) => None,
            ToRc::Heartbeat { node, .. }
            | ToRc::Started { node, .. }
            | ToRc::Closed { node, .. }
            | ToRc::Receipts { node, .. }
            | ToRc::Lookup { node, .. }
            | ToRc::Activated { node, .. }
            | ToRc::PlanHandover { node, .. }
            | ToRc::Draining { node }
            | ToRc::Holding { node, .. }
            | ToRc::ReplicaTrouble { node, .. }
            | ToRc::Released { node, .. }
            | ToRc::Blobs { node, .. } => Some(*node),
        }
    }
}

/// Node → RC.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToRc {
    /// Join the colony.
    Join(JoinRequest),
    /// Periodic heartbeat carrying load.
    Heartbeat {
        /// Sender.
        node: NodeId,
        /// Heartbeat number (echoed in the lease grant).
        seq: u64,
        /// Sessions hosted.
        sessions: u32,
        /// Last measured RTT to the RC, µs.
        rtt_us: u64,
        /// Handlers with live sessions.
        warm: Vec<String>,
    },
    /// Answer to [`ToNode::Start`].
    Started {
        /// Sender.
        node: NodeId,
        /// Request id.
        req: u64,
        /// Error text when the session could not start.
        error: Option<String>,
    },
    /// A session was closed (or released) on the node.
    Closed {
        /// Sender.
        node: NodeId,
        /// Session.
        session: String,
        /// Epoch of the holder.
        epoch: u64,
    },
    /// Signed compute receipts of this node's sessions (see [`crate::node::receipts`]); at most
    /// [`crate::common::receipts::MAX_RECEIPTS_PER_MESSAGE`] per message.
    Receipts {
        /// Sender (must be every receipt's node).
        node: NodeId,
        /// Receipts signed by the node.
        receipts: Vec<opengrid_settlement::SignedReceipt>,
    },
    /// Where does this session live?
    Lookup {
        /// Sender.
        node: NodeId,
        /// Request id.
        req: u64,
        /// Session.
        session: String,
    },
    /// A session became active here with `epoch` (handover target after activation): the RC
    /// switches its directory entry if `epoch` is newer.
    Activated {
        /// Sender (the new holder).
        node: NodeId,
        /// Session.
        session: String,
        /// Its epoch here.
        epoch: u64,
    },
    /// The holder wants to hand `session` over: pick a target (the named one, if any).
    PlanHandover {
        /// Sender (the holder).
        node: NodeId,
        /// Request id.
        req: u64,
        /// Session.
        session: String,
        /// Wanted target: node name or did (must pass admission).
        target: Option<String>,
    },
    /// The node is draining: place nothing new here.
    Draining {
        /// Sender.
        node: NodeId,
    },
    /// The sessions this node holds (see `crate::node` "Reconciliation"). `rejoin`: sent after
    /// a (re)join, before the node serves again — the RC answers [`ToNode::HoldingAck`] with the
    /// ones it must drop, and orphans its directory entries on this node that are not listed.
    /// Without `rejoin` (every second while serving) it only repairs directory drift.
    Holding {
        /// Sender.
        node: NodeId,
        /// Report number (echoed in the ack).
        report: u64,
        /// After a (re)join.
        rejoin: bool,
        /// This message's part (0-based) of the report, which is cut in `parts` messages of
        /// at most [`HOLDING_PART_BYTES`] each; the RC acts once it has every part.
        part: u32,
        /// Parts of the report.
        parts: u32,
        /// The sessions held (this part).
        sessions: Vec<Held>,
    },
    /// Replica holders (migration servers) whose last replica writes from this node all failed:
    /// the RC stops choosing them for replica sets for a while and repairs the sets that hold
    /// them (a failing disk or a cut replication link there must not block zero-loss sessions
    /// elsewhere).
    ReplicaTrouble {
        /// Sender.
        node: NodeId,
        /// The troubled holders' migration addresses.
        peers: Vec<String>,
    },
    /// A session was checkpointed and stopped here so that the RC restarts it elsewhere
    /// (never-live sessions when draining): restore it, epoch + 1, from its replicas.
    Released {
        /// Sender.
        node: NodeId,
        /// Session.
        session: String,
        /// Epoch it had here.
        epoch: u64,
    },
    /// The blobs (packages, models, assets) this node holds, whole, when the set changed and
    /// after every (re)join (ADR 0031): the RC names holders to fetching nodes and places agent
    /// sessions on warm nodes first. At most [`MAX_BLOBS_REPORTED`] hashes.
    Blobs {
        /// Sender.
        node: NodeId,
        /// Hashes held (64 hex digits each).
        have: Vec<String>,
    },
}

/// Most blob hashes in one [`ToRc::Blobs`] report (about 280 KiB).
pub const MAX_BLOBS_REPORTED: usize = 4096;

/// Most bytes of sessions in one [`ToRc::Holding`] part (well below [`MAX_WIRE_BYTES`]).
pub const HOLDING_PART_BYTES: usize = 256 * 1024;
/// Most new members named by one [`ToNode::MembersJoined`] (the RC sends more in several; a
/// node reads no more of one message).
pub const MAX_MEMBERS_JOINED: usize = 8192;
/// Most parts of one holding report (a node holding more is refused its report whole and logs it).
pub const MAX_HOLDING_PARTS: u32 = 1024;

/// Cuts `held` into report parts of at most [`HOLDING_PART_BYTES`] (estimated) each; always at
/// least one part, possibly empty.
pub fn holding_parts(held: Vec<Held>) -> Vec<Vec<Held>> {
    let mut parts = vec![Vec::new()];
    let mut bytes = 0usize;
    for h in held {
        let size = 64
            + h.session.len()
            + h.handler.len()
            + h.manifest.as_ref().map_or(0, String::len)
            + h.replicas.iter().map(|r| r.len() + 8).sum::<usize>();
        if bytes + size > HOLDING_PART_BYTES && !parts.last().is_some_and(Vec::is_empty) {
            parts.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(p) = parts.last_mut() {
            p.push(h);
        }
    }
    parts
}

/// One session a node holds, as reported in [`ToRc::Holding`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Held {
    /// Session id.
    pub session: String,
    /// Its epoch on the node.
    pub epoch: u64,
    /// Handler id.
    pub handler: String,
    /// The manifest (JSON), when the node knows it.
    pub manifest: Option<String>,
    /// Its replica set (migration servers, `host:port`).
    pub replicas: Vec<String>,
}

/// RC → node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToNode {
    /// Answer to a join.
    JoinAck {
        /// Refusal reason, if refused.
        refused: Option<String>,
        /// The RC's client-API base URL.
        rc_api: String,
        /// The RC's id.
        rc: NodeId,
        /// The join's nonce (an ack answers one join).
        nonce: u64,
        /// The RC's ephemeral X25519 public key (when accepted): with the join's, the link key.
        kx: Option<[u8; 32]>,
    },
    /// Lease grant answering heartbeat `seq`.
    Lease {
        /// Heartbeat echoed.
        seq: u64,
        /// Lease length, ms, counted from the heartbeat's send time.
        lease_ms: u64,
    },
    /// The RC has declared this node dead: stop serving and join again.
    Evicted {
        /// Why.
        reason: String,
    },
    /// Start (or resume) a session.
    Start {
        /// Request id.
        req: u64,
        /// Session id.
        session: String,
        /// Placement epoch.
        epoch: u64,
        /// The manifest (JSON).
        manifest: String,
        /// Replica set (migration servers, `host:port`) chosen by the RC.
        replicas: Vec<String>,
        /// Failover: migration servers holding replicas of an earlier epoch; the node installs
        /// the newest checkpoint among them (and its own) before it starts the session.
        restore_from: Vec<String>,
        /// The RC's grant: this node holds the session at `epoch`, writing to `replicas` and
        /// restoring from `restore_from` (ADR 0023).
        grant: Option<opengrid_migration::SignedGrant>,
    },
    /// The replica set of a hosted session changed (a replica holder died).
    Replicas {
        /// Session.
        session: String,
        /// New replica set.
        replicas: Vec<String>,
        /// The RC's grant for the new set.
        grant: Option<opengrid_migration::SignedGrant>,
    },
    /// Answer to [`ToRc::PlanHandover`].
    HandoverPlan {
        /// Request id.
        req: u64,
        /// The target, or why there is none.
        plan: Result<HandoverTarget, String>,
    },
    /// The RC asks the holder to hand `session` over (rebalancing, or an operator at the RC).
    Handover {
        /// Session.
        session: String,
        /// Wanted target, if any.
        target: Option<String>,
    },
    /// Answer to [`ToRc::Receipts`]: co-signed and queued for settlement, or refused.
    ReceiptsAck {
        /// Receipts accepted.
        accepted: Vec<opengrid_settlement::ReceiptId>,
        /// Receipts refused, with the reason.
        refused: Vec<(opengrid_settlement::ReceiptId, String)>,
    },
    /// Answer to [`ToRc::Holding`]: `(session, epoch)` held here that the directory places
    /// elsewhere or at a newer epoch — stop them without serving.
    HoldingAck {
        /// Report echoed.
        report: u64,
        /// Sessions to drop.
        drop: Vec<(String, u64)>,
    },
    /// Fetch and load a pushed agent package ahead of need (ADR 0030): sent to the replica
    /// holders of an agent session, its likely failover and handover targets. Not answered.
    Prefetch {
        /// `name@version`.
        handler: String,
        /// Package hash.
        hash: String,
    },
    /// The manifest of a session that became active here by a handover (so that the node can
    /// report it to a restarted RC).
    Manifest {
        /// Session.
        session: String,
        /// Manifest (JSON).
        manifest: String,
    },
    /// Answer to a lookup.
    LookupReply {
        /// Request id.
        req: u64,
        /// `(api base URL, epoch)` of the holder, if placed.
        location: Option<(String, u64)>,
    },
    /// The colony's nodes (sent to a node when it joins): the only peers a node's migration
    /// links admit (ADR 0023). Replaces the node's list.
    Members {
        /// Every member node, as its raw public key ([`NodeId::public_key`]): 32 bytes each
        /// instead of a ~56-byte DID string formatted per id (issue #20: at 10,000 members the
        /// list sent to each joiner dominated the RC's profile).
        keys: Vec<[u8; 32]>,
    },
    /// Nodes new to the colony, added to the list of [`ToNode::Members`]: sent to every live
    /// member at the RC's first tick after they joined, one message for all who joined since
    /// the last (a join storm of N nodes costs N × ticks messages, not N²).
    MembersJoined {
        /// The new members' raw public keys (as in [`ToNode::Members`]).
        keys: Vec<[u8; 32]>,
    },
    /// Signed by an RC this node has no control link with now (a leader of the RC group that
    /// took office, or an RC that restarted): join it, *keeping the lease* the node holds — the
    /// RC treats every member it inherited as alive until `lease × lease_grace` has passed, so no
    /// lease granted before can be outrun (ADR 0037). Unlike [`ToNode::Evicted`], nothing is
    /// fenced.
    Rejoin {
        /// Why.
        reason: String,
    },
    /// The control-plane addresses of every replica of the colony's RC group (sent after a join
    /// and when the group changes): the node keeps a link with each, besides its `rc_cluster`,
    /// so a replica added later can lead it.
    RcGroup {
        /// `host:port` of each replica's control plane.
        cluster: Vec<String>,
    },
}

/// Where a handover goes, as chosen by the RC.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HandoverTarget {
    /// Target node.
    pub node: NodeId,
    /// Its name.
    pub name: String,
    /// Its client API base URL (for `moved`).
    pub api: String,
    /// Its migration server.
    pub migration: String,
    /// Replica set the session will use there.
    pub replicas: Vec<String>,
    /// The RC's grant of the next epoch to the target, the asking holder as its source.
    pub grant: Option<opengrid_migration::SignedGrant>,
}

/// Encodes with bincode 2.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).unwrap_or_default()
}

/// Decodes with bincode 2, size-limited, refusing trailing bytes.
pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    if b.len() > MAX_WIRE_BYTES {
        return Err(format!("{} bytes exceeds {MAX_WIRE_BYTES}", b.len()));
    }
    let cfg = bincode::config::standard().with_limit::<MAX_WIRE_BYTES>();
    match bincode::serde::decode_from_slice(b, cfg) {
        Ok((v, n)) if n == b.len() => Ok(v),
        Ok((_, n)) => Err(format!("{} trailing bytes", b.len() - n)),
        Err(e) => Err(e.to_string()),
    }
}

macro_rules! wire_message {
    ($msg:ident, $wire:ty, $local:ty) => {
        /// Actor message: a network message (sealed, [`crate::common::seal`]) or a local-only one.
        pub enum $msg {
            /// Crossed (or may cross) the network.
            Wire(Box<Sealed<$wire>>),
            /// Never leaves the process.
            Local($local),
        }

        impl $msg {
            /// Wraps a sealed network message.
            pub fn wire(w: Sealed<$wire>) -> Self {
                $msg::Wire(Box::new(w))
            }
        }

        impl ractor::Message for $msg {
            fn serializable() -> bool {
                true
            }
            fn serialize(self) -> Result<SerializedMessage, BoxedDowncastErr> {
                match self {
                    $msg::Wire(w) => Ok(SerializedMessage::Cast {
                        variant: "w".into(),
                        args: encode(&*w),
                        metadata: None,
                    }),
                    $msg::Local(_) => Err(BoxedDowncastErr),
                }
            }
            fn deserialize(m: SerializedMessage) -> Result<Self, BoxedDowncastErr> {
                match m {
                    SerializedMessage::Cast { variant, args, .. } if variant == "w" => {
                        decode(&args).map(|w| $msg::Wire(Box::new(w))).map_err(|e| {
                            tracing::warn!("dropping undecodable control message: {e}");
                            BoxedDowncastErr
                        })
                    }
                    _ => Err(BoxedDowncastErr),
                }
            }
        }
    };
}

/// Local messages of the RC actor.
#[derive(Debug)]
pub enum RcLocal {
    /// Failure-detector tick.
    Tick,
}

/// Local messages of the node agent.
#[derive(Debug)]
pub enum NodeLocal {
    /// Heartbeat/lease tick.
    Tick,
}

wire_message!(RcMsg, ToRc, RcLocal);
wire_message!(NodeMsg, ToNode, NodeLocal);

#[cfg(test)]
mod tests {
    use super::*;
    use opengrid_session::AcceleratorClass;

    fn body(id: &Identity) -> JoinBody {
        JoinBody {
            colony: "local".into(),
            spec: NodeSpec {
                id: id.id(),
                name: "a".into(),
                jurisdiction: "DE".into(),
                accelerator: AcceleratorClass::None,
                cpu_cores: 2,
                memory: 1 << 30,
                handlers: vec!["tutor".into()],
                capabilities: vec![],
                price_micros_per_input: 1,
                capacity: 10,
                max_session_memory: 0,
                api: "http://127.0.0.1:1".into(),
                migration: "127.0.0.1:2".into(),
            },
            unix_ms: 1_000_000,
            nonce: 7,
            kx: [9; 32],
            join_token: None,
        }
    }

    #[test]
    fn join_signature_checks() {
        let id = Identity::generate();
        let req = JoinRequest::sign(&id, &body(&id));
        assert!(req.verify("local", 1_000_500, 60_000).is_ok());
        assert!(matches!(
            req.verify("other", 1_000_500, 60_000),
            Err(JoinError::WrongColony { .. })
        ));
        assert!(matches!(
            req.verify("local", 2_000_000, 60_000),
            Err(JoinError::Stale { .. })
        ));
        // Claiming another node's id: the signature is by `id`, the body names `other`.
        let other = Identity::generate();
        let forged = JoinRequest {
            body: encode(&body(&other)),
            signature: req.signature.clone(),
        };
        assert!(matches!(
            forged.verify("local", 1_000_000, 60_000),
            Err(JoinError::Signature(_))
        ));
        let mut tampered = req.clone();
        let last = tampered.body.len() - 1;
        tampered.body[last] ^= 1;
        assert!(tampered.verify("local", 1_000_000, 60_000).is_err());
        assert!(matches!(
            JoinRequest {
                body: vec![0xff; 3],
                signature: vec![]
            }
            .verify("local", 0, 1),
            Err(JoinError::Decode(_))
        ));
    }

    #[test]
    fn wire_round_trip_and_garbage() {
        let m = ToNode::Lease {
            seq: 3,
            lease_ms: 1000,
        };
        let b = encode(&m);
        assert_eq!(decode::<ToNode>(&b).unwrap(), m);
        assert!(decode::<ToNode>(&[0xff, 0xff, 0xff]).is_err());
        let mut long = b.clone();
        long.push(0);
        assert!(decode::<ToNode>(&long).is_err());
    }
}

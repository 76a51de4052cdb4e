//! What a node and its RC share about compute receipts: the message limits and the settlement
//! identities of control-plane keys. The node side is [`crate::node::receipts`], the RC side
//! [`crate::rc::settlement`].

use opengrid_settlement::{Did, Keypair};

use crate::common::identity::{Identity, NodeId};

/// Most receipts in one control-plane message (keeps it far below [`crate::common::wire::MAX_WIRE_BYTES`];
/// a receipt is ~300 bytes encoded).
pub const MAX_RECEIPTS_PER_MESSAGE: usize = 512;

/// The settlement keypair of a node or RC identity (same ed25519 key).
pub fn keypair(identity: &Identity) -> Keypair {
    Keypair::from_seed(identity.signing_key().to_bytes())
}

/// The settlement DID of a node id.
pub fn did(id: &NodeId) -> Did {
    Did::parse(&id.did()).unwrap_or_else(|_| unreachable!("NodeId::did is a valid did:mycel"))
}

//! `did:mycel` identifiers: defined once in the lowest crate (`opengrid-session`) and shared by
//! the node, the canopy and the ledger.

pub use opengrid_session::did::*;

//! What the node ([`crate::node`]) and the RC ([`crate::rc`]) share, below both: identities, the
//! control-plane wire, the node declaration, failure detection, config rules, the client API's
//! error type, metrics and start-up plumbing. Nothing here names either side.

pub mod access;
pub mod blobs;
pub mod config;
pub mod failure;
pub mod http;
pub mod identity;
pub mod metrics;
pub mod receipts;
pub mod runtime;
pub mod seal;
pub mod serve;
pub mod spec;
pub mod throttle;
pub mod token;
pub mod ui;
pub mod v1;
pub mod wire;

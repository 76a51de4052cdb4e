//! What the in-process colony tests (`colony.rs`, `durability.rs`, `federation.rs`) share: two
//! handlers, their registration, and RC / node configs on 127.0.0.1 with ephemeral ports.
#![allow(dead_code)] // each test binary uses a different part

use std::sync::Arc;

use opengrid_actors::{HandlerError, SessionContext, SessionHandler, SessionHost};
use opengrid_cluster::node::config::NodeConfig;
use opengrid_cluster::rc::config::RcConfig;
use opengrid_cluster::RcHandle;
use opengrid_session::SessionId;
use serde_json::{json, Value};

/// Echoes its input and counts turns.
pub struct Echo;
impl SessionHandler for Echo {
    type State = u64;
    type Input = Value;
    type Output = Value;
    fn id(&self) -> &str {
        "echo"
    }
    fn init(&self, _: &SessionId) -> u64 {
        0
    }
    async fn handle(
        &self,
        n: &mut u64,
        input: Value,
        _: &SessionContext,
    ) -> Result<Value, HandlerError> {
        *n += 1;
        Ok(json!({"turn": *n, "echo": input}))
    }
}

/// Adds integers.
pub struct Adder;
impl SessionHandler for Adder {
    type State = i64;
    type Input = i64;
    type Output = i64;
    fn id(&self) -> &str {
        "adder"
    }
    fn init(&self, _: &SessionId) -> i64 {
        0
    }
    async fn handle(&self, t: &mut i64, x: i64, _: &SessionContext) -> Result<i64, HandlerError> {
        *t = t.saturating_add(x);
        Ok(*t)
    }
}

/// Registers [`Echo`] and [`Adder`].
pub fn setup(host: &SessionHost) {
    host.register(Arc::new(Echo));
    host.register(Arc::new(Adder));
}

/// An RC in `dir/rc` on ephemeral ports.
pub fn rc_config(dir: &std::path::Path, secret: &str) -> RcConfig {
    RcConfig {
        data_dir: dir.join("rc"),
        api_listen: "127.0.0.1:0".parse().unwrap(),
        cluster_listen: "127.0.0.1:0".parse().unwrap(),
        colony_secret: secret.into(),
        ..RcConfig::default()
    }
}

/// A node `name` in jurisdiction `j`, data in `dir/name`, one handler thread, no fsync.
pub fn node_config(
    dir: &std::path::Path,
    rc: &RcHandle,
    name: &str,
    j: &str,
    secret: &str,
) -> NodeConfig {
    NodeConfig {
        name: name.into(),
        data_dir: dir.join(name),
        jurisdiction: j.into(),
        api_listen: "127.0.0.1:0".parse().unwrap(),
        rc_cluster: rc.cluster_addr().to_string(),
        colony_secret: secret.into(),
        handler_threads: 1,
        fsync: false,
        ..NodeConfig::default()
    }
}

/// A client of `rc` acting as the colony's operator (a token signed by the RC's own key), so it
/// may read `/status` and reach any session (ADR 0026).
pub fn operator_client(rc: &RcHandle) -> opengrid_cluster::client::Client {
    opengrid_cluster::client::Client::new(rc.api_url()).with_token(operator_token(rc))
}

/// An operator token of `rc` (signed by its own key, valid an hour).
pub fn operator_token(rc: &RcHandle) -> String {
    rc.core()
        .operator_token(std::time::Duration::from_secs(3600))
        .expect("operator token")
}

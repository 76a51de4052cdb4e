//! Running ledger replicas (consensus `RaftNode` + [`Ledger`]) and talking to them.
//!
//! A replica's Raft identity is its key: the links of its port (Raft RPCs and client requests,
//! mutual TLS 1.3, `opengrid-link`) prove the DID of [`ReplicaOptions::key`], and the group knows
//! each member by id, address and that DID. [`LedgerClient`]s connect with their own key (an RC's
//! or a node's identity, the operator's, or a throwaway one for read-only tools).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use opengrid_codec::{self as codec, MAX_DECODE_BYTES};
use opengrid_consensus::{Client, Node, NodeId, NodeStatus, RaftNode, RaftNodeConfig};
use serde::{Deserialize, Serialize};

use crate::batcher::BatchSink;
use crate::did::Did;
use crate::error::SettlementError;
use crate::keys::Keypair;
use crate::ledger::{
    Batch, BatchId, BatchRecord, Ledger, LedgerCommand, LedgerQuery, LedgerResponse, LedgerRules,
    LedgerSummary, NodeRegistration, QueryAnswer, RcRegistration, ReceiptStatus,
};
use crate::operator::{admin_auth, OperatorAdminAuthorizer};
use crate::receipt::ReceiptId;
use crate::split::Account;

/// How to run one ledger replica.
#[derive(Debug, Clone)]
pub struct ReplicaOptions {
    pub id: NodeId,
    /// The replica's identity key: its DID is its identity as a group member.
    pub key: Keypair,
    /// Listen (and advertised) address, `host:port`.
    pub addr: String,
    pub data_dir: PathBuf,
    /// Initial voters (`id → addr and DID`); see [`RaftNodeConfig::peers`].
    pub peers: BTreeMap<NodeId, Node>,
    /// Account credited with the protocol share.
    pub protocol_account: Account,
    /// The ledger's rules: operator DID (authorizes registrations and membership changes), fee
    /// cap, rejection log length. Must be the same on every replica.
    pub rules: LedgerRules,
    /// Snapshot every this many applied entries.
    pub snapshot_every: u64,
}

impl ReplicaOptions {
    /// Options with defaults for everything but identity and placement.
    pub fn new(
        id: NodeId,
        key: Keypair,
        addr: impl Into<String>,
        data_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            id,
            key,
            addr: addr.into(),
            data_dir: data_dir.into(),
            peers: BTreeMap::new(),
            protocol_account: Account::protocol(),
            rules: LedgerRules::default(),
            snapshot_every: 1_000,
        }
    }
}

/// A running ledger replica.
pub type LedgerReplica = RaftNode<Ledger>;

/// Start a ledger replica (opens or creates its data dir, joins/initializes the group). Admin
/// requests (add learner, change membership) are served only when signed by the configured
/// operator ([`OperatorAdminAuthorizer`]); without an operator they are all refused.
pub async fn start_replica(opts: ReplicaOptions) -> Result<LedgerReplica, SettlementError> {
    let mut cfg = RaftNodeConfig::new(
        opts.id,
        opts.key.signing_key().clone(),
        opts.addr,
        opts.data_dir,
    );
    cfg.peers = opts.peers;
    cfg.snapshot_every = opts.snapshot_every;
    match &opts.rules.operator {
        Some(op) => tracing::info!(operator = %op, "ledger operator configured"),
        None => tracing::warn!(
            "no ledger operator configured: every registration and membership change is refused \
             (set `operator` in the ledger config or --operator)"
        ),
    }
    cfg.admin_authorizer = Some(std::sync::Arc::new(OperatorAdminAuthorizer::new(
        opts.rules.operator.clone(),
    )));
    Ok(RaftNode::start(cfg, Ledger::with_rules(opts.protocol_account, opts.rules)).await?)
}

/// For harnesses that start replica processes: loads (or creates) the key a replica with data dir
/// `data_dir` will use by default (`<data_dir>/identity.key`) and returns its `--peers` entry,
/// `ID=DID@ADDR`.
pub fn peer_entry(
    id: NodeId,
    addr: &str,
    data_dir: &std::path::Path,
) -> Result<String, SettlementError> {
    std::fs::create_dir_all(data_dir)?;
    let key = Keypair::load_or_create(&data_dir.join("identity.key"))?;
    Ok(format!("{id}={}", Node::new(addr, key.did())))
}

/// Run a replica until `shutdown` resolves, then stop it cleanly.
pub async fn run_replica(
    opts: ReplicaOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), SettlementError> {
    let node = start_replica(opts).await?;
    shutdown.await;
    node.shutdown().await?;
    Ok(())
}

/// One replica's status plus its ledger totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub raft: NodeStatus,
    pub ledger: LedgerSummary,
}

/// A client of the ledger group (for RCs, operators and the CLI). Follows leader redirects;
/// resubmitting a batch is safe (batch ids make it idempotent). Connects with `key` (its links
/// prove that DID); replica addresses are `DID@HOST:PORT` (pinned) or `HOST:PORT`.
pub struct LedgerClient {
    client: tokio::sync::Mutex<Client>,
}

impl LedgerClient {
    /// A client that may contact any of `addrs`, connecting as `key`.
    pub fn new(addrs: Vec<String>, key: &Keypair) -> Result<Self, SettlementError> {
        Ok(Self {
            client: tokio::sync::Mutex::new(Client::new(addrs, key.signing_key())?),
        })
    }

    /// A client with an overall per-operation deadline.
    pub fn with_timeout(
        addrs: Vec<String>,
        timeout: Duration,
        key: &Keypair,
    ) -> Result<Self, SettlementError> {
        Ok(Self {
            client: tokio::sync::Mutex::new(
                Client::new(addrs, key.signing_key())?.with_timeout(timeout),
            ),
        })
    }

    /// Replicate a command and return the ledger's response.
    pub async fn command(&self, cmd: &LedgerCommand) -> Result<LedgerResponse, SettlementError> {
        let bytes = codec::encode(cmd)?;
        let resp = self.client.lock().await.write(bytes).await?;
        Ok(codec::decode(&resp, MAX_DECODE_BYTES)?)
    }

    /// Register (or re-register) a node.
    pub async fn register_node(
        &self,
        reg: NodeRegistration,
    ) -> Result<LedgerResponse, SettlementError> {
        self.command(&LedgerCommand::RegisterNode(reg)).await
    }

    /// Register (or re-register) an RC.
    pub async fn register_rc(
        &self,
        reg: RcRegistration,
    ) -> Result<LedgerResponse, SettlementError> {
        self.command(&LedgerCommand::RegisterRc(reg)).await
    }

    /// Add replica `id` at `addr`, whose key is `did`, as a learner, authorized by the ledger
    /// operator's key (each attempt signed afresh).
    pub async fn add_learner(
        &self,
        id: NodeId,
        addr: String,
        did: Did,
        operator: &Keypair,
    ) -> Result<(), SettlementError> {
        Ok(self
            .client
            .lock()
            .await
            .add_learner_with(id, addr, did, |req| admin_auth(operator, req))
            .await?)
    }

    /// Make exactly `voters` the voting replicas, authorized by the ledger operator's key.
    pub async fn change_membership(
        &self,
        voters: std::collections::BTreeSet<NodeId>,
        operator: &Keypair,
    ) -> Result<(), SettlementError> {
        Ok(self
            .client
            .lock()
            .await
            .change_membership_with(voters, |req| admin_auth(operator, req))
            .await?)
    }

    /// Submit a batch (idempotent).
    pub async fn submit_batch(&self, batch: &Batch) -> Result<LedgerResponse, SettlementError> {
        self.command(&LedgerCommand::SubmitBatch(batch.clone()))
            .await
    }

    /// A linearizable query.
    pub async fn query(&self, q: &LedgerQuery) -> Result<QueryAnswer, SettlementError> {
        let bytes = codec::encode(q)?;
        let resp = self.client.lock().await.read(bytes).await?;
        Ok(codec::decode(&resp, MAX_DECODE_BYTES)?)
    }

    /// An account's balance (linearizable).
    pub async fn balance(&self, account: &Account) -> Result<u64, SettlementError> {
        match self.query(&LedgerQuery::Balance(account.clone())).await? {
            QueryAnswer::Balance(b) => Ok(b),
            other => Err(SettlementError::UnexpectedAnswer(format!("{other:?}"))),
        }
    }

    /// The `n` largest balances, largest first (linearizable; at most 100).
    pub async fn top_balances(&self, n: u16) -> Result<Vec<(Account, u64)>, SettlementError> {
        match self.query(&LedgerQuery::TopBalances(n)).await? {
            QueryAnswer::Balances(b) => Ok(b),
            other => Err(SettlementError::UnexpectedAnswer(format!("{other:?}"))),
        }
    }

    /// A receipt's status (linearizable).
    pub async fn receipt_status(&self, id: ReceiptId) -> Result<ReceiptStatus, SettlementError> {
        match self.query(&LedgerQuery::Receipt(id)).await? {
            QueryAnswer::Receipt(s) => Ok(s),
            other => Err(SettlementError::UnexpectedAnswer(format!("{other:?}"))),
        }
    }

    /// A batch's record (linearizable).
    pub async fn batch_status(&self, id: BatchId) -> Result<Option<BatchRecord>, SettlementError> {
        match self.query(&LedgerQuery::Batch(id)).await? {
            QueryAnswer::Batch(s) => Ok(s),
            other => Err(SettlementError::UnexpectedAnswer(format!("{other:?}"))),
        }
    }

    /// One replica's own status and ledger totals (its local, possibly lagging, view).
    pub async fn replica_status(&self, addr: &str) -> Result<ReplicaStatus, SettlementError> {
        let client = self.client.lock().await;
        let raft = client.status(addr).await?;
        let bytes = client
            .local_read(addr, codec::encode(&LedgerQuery::Summary)?)
            .await?;
        match codec::decode(&bytes, MAX_DECODE_BYTES)? {
            QueryAnswer::Summary(ledger) => Ok(ReplicaStatus { raft, ledger }),
            other => Err(SettlementError::UnexpectedAnswer(format!("{other:?}"))),
        }
    }
}

impl BatchSink for LedgerClient {
    async fn submit(&self, batch: &Batch) -> Result<LedgerResponse, SettlementError> {
        self.submit_batch(batch).await
    }
}

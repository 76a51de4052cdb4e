//! The settlement ledger: a deterministic state machine replicated by Raft (it implements
//! `opengrid_consensus::Application`).
//!
//! Commands ([`LedgerCommand`]): register a node (key, split policy, operator, owners), register
//! an RC — both signed by the registered key *and* authorized by the ledger operator's key
//! ([`crate::operator`]) — and submit a batch of co-signed receipts. Every receipt of a batch is checked on its own;
//! valid ones are applied exactly once, invalid ones are rejected with a [`RejectReason`] and
//! change nothing. A batch is identified by the blake3 of its contents ([`Batch::id`]); submitting
//! the same batch again (a retry after a leader change) returns the recorded outcome and changes
//! nothing.
//!
//! Amount rules ([`LedgerRules`]): a fee above the per-receipt cap is refused; a receipt whose
//! usage window starts before the end of the last window billed for the same (node, session) is
//! refused whatever its receipt id (a window is billed once); a fee that would overflow a
//! balance or the total is refused alone and changes nothing. The rejection log keeps the last
//! [`LedgerRules::max_rejections`] rejections (counts of all are kept), and a batch record keeps
//! at most [`MAX_STORED_BATCH_REJECTIONS`] of its rejections. Status answers are O(1): totals
//! are kept as the state changes and the state hash is a hash chain over the state-changing
//! commands (kept in the snapshot).

use std::collections::{BTreeMap, BTreeSet};

use opengrid_codec::{self as codec, MAX_DECODE_BYTES};
use opengrid_consensus::{Application, RestoreError};
use serde::{Deserialize, Serialize};

use crate::did::Did;
use crate::keys::Keypair;
use crate::operator::{OperatorAuth, OperatorAuthError};
use crate::receipt::{ReceiptId, Sig, SignedReceipt, Signer, VerifyError, MAX_SESSION_ID_LEN};
use crate::split::{self, Account, PolicyError, SplitPolicy};

const DOMAIN_BATCH: &[u8] = b"opengrid/settlement-batch/v1\0";
const DOMAIN_REGISTER_NODE: &[u8] = b"opengrid/register-node/v1\0";
const DOMAIN_REGISTER_RC: &[u8] = b"opengrid/register-rc/v1\0";
const DOMAIN_STATE_CHAIN: &[u8] = b"opengrid/ledger-state-chain/v1\0";
/// Most receipts in one batch command (bigger settlement intervals are cut into several batches).
pub const MAX_RECEIPTS_PER_BATCH: usize = 100_000;
/// Default cap on one receipt's fee: 10^12 µ (one million units).
pub const DEFAULT_MAX_FEE_MICROS: u64 = 1_000_000_000_000;
/// Default length of the rejection log.
pub const DEFAULT_MAX_REJECTIONS: usize = 10_000;
/// Most rejections a stored batch record lists (its `rejected_total` counts all).
pub const MAX_STORED_BATCH_REJECTIONS: usize = 64;

/// The ledger's configured rules. They are configuration, not replicated state: every replica
/// of a group must run with the same rules (as with the protocol account), or their states
/// diverge (visible as different state hashes in `status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRules {
    /// The ledger operator, whose key authorizes registrations. `None`: every registration is
    /// refused ([`OperatorAuthError::NotConfigured`]).
    pub operator: Option<Did>,
    /// Largest fee one receipt may carry, micro-units.
    pub max_fee_micros: u64,
    /// Rejections kept in the log (oldest dropped first; counts are kept for all).
    pub max_rejections: usize,
}

impl Default for LedgerRules {
    fn default() -> Self {
        Self {
            operator: None,
            max_fee_micros: DEFAULT_MAX_FEE_MICROS,
            max_rejections: DEFAULT_MAX_REJECTIONS,
        }
    }
}

/// A batch id: blake3 of the batch's canonical contents.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BatchId(pub [u8; 32]);

impl std::fmt::Display for BatchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for BatchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for BatchId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_hex::<32>(s).map(Self)
    }
}

pub(crate) fn parse_hex<const N: usize>(s: &str) -> Result<[u8; N], String> {
    if s.len() != 2 * N || !s.is_ascii() {
        return Err(format!("expected {} hex digits", 2 * N));
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)
            .map_err(|_| format!("`{s}` is not hex"))?;
    }
    Ok(out)
}

/// Receipts an RC proposes for one settlement interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The proposing RC.
    pub rc: Did,
    /// Proposal time (ms since the epoch, from the RC's clock). Receipts whose window ends after
    /// it are rejected; the ledger never reads a wall clock, so replay is deterministic.
    pub proposed_at_ms: u64,
    /// Sequence number of this batch within the proposal (an interval may be cut into several).
    pub part: u32,
    pub receipts: Vec<SignedReceipt>,
}

impl Batch {
    /// blake3 over the domain prefix and the bincode encoding of the whole batch.
    pub fn id(&self) -> BatchId {
        let mut h = blake3::Hasher::new();
        h.update(DOMAIN_BATCH);
        h.update(&codec::encode(self).unwrap_or_default());
        BatchId(*h.finalize().as_bytes())
    }
}

/// A node registration; `signature` is the node key's signature over the other fields (proof of
/// possession), so nobody can register someone else's node to their own accounts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRegistration {
    pub did: Did,
    pub pubkey: [u8; 32],
    pub policy: SplitPolicy,
    pub operator: Account,
    pub owners: Vec<(Account, u64)>,
    pub signature: Sig,
    /// The ledger operator's authorization of this registration ([`NodeRegistration::authorize`]).
    pub operator_auth: Option<OperatorAuth>,
}

impl NodeRegistration {
    fn message(
        did: &Did,
        pubkey: &[u8; 32],
        policy: &SplitPolicy,
        operator: &Account,
        owners: &[(Account, u64)],
    ) -> Vec<u8> {
        let body = codec::encode(&(did, pubkey, policy, operator, owners)).unwrap_or_default();
        [DOMAIN_REGISTER_NODE, body.as_slice()].concat()
    }

    /// A registration signed by the node's key.
    pub fn new(
        node: &Keypair,
        policy: SplitPolicy,
        operator: Account,
        owners: Vec<(Account, u64)>,
    ) -> Self {
        let did = node.did();
        let pubkey = node.verifying_key().to_bytes();
        let signature = Sig(node.sign(&Self::message(&did, &pubkey, &policy, &operator, &owners)));
        Self {
            did,
            pubkey,
            policy,
            operator,
            owners,
            signature,
            operator_auth: None,
        }
    }

    /// What the ledger operator signs: the registration's signed message and the node's
    /// signature.
    pub fn operator_body(&self) -> Vec<u8> {
        let mut b = Self::message(
            &self.did,
            &self.pubkey,
            &self.policy,
            &self.operator,
            &self.owners,
        );
        b.extend_from_slice(&self.signature.0);
        b
    }

    /// This registration, authorized by the ledger operator's key.
    pub fn authorize(mut self, ledger_operator: &Keypair) -> Self {
        self.operator_auth = Some(OperatorAuth::sign(ledger_operator, &self.operator_body()));
        self
    }
}

/// An RC registration, signed by the RC's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RcRegistration {
    pub did: Did,
    pub pubkey: [u8; 32],
    /// The routing operator's account (credited the routing share).
    pub operator: Account,
    pub signature: Sig,
    /// The ledger operator's authorization of this registration ([`RcRegistration::authorize`]).
    pub operator_auth: Option<OperatorAuth>,
}

impl RcRegistration {
    fn message(did: &Did, pubkey: &[u8; 32], operator: &Account) -> Vec<u8> {
        let body = codec::encode(&(did, pubkey, operator)).unwrap_or_default();
        [DOMAIN_REGISTER_RC, body.as_slice()].concat()
    }

    /// A registration signed by the RC's key.
    pub fn new(rc: &Keypair, operator: Account) -> Self {
        let did = rc.did();
        let pubkey = rc.verifying_key().to_bytes();
        let signature = Sig(rc.sign(&Self::message(&did, &pubkey, &operator)));
        Self {
            did,
            pubkey,
            operator,
            signature,
            operator_auth: None,
        }
    }

    /// What the ledger operator signs: the registration's signed message and the RC's
    /// signature.
    pub fn operator_body(&self) -> Vec<u8> {
        let mut b = Self::message(&self.did, &self.pubkey, &self.operator);
        b.extend_from_slice(&self.signature.0);
        b
    }

    /// This registration, authorized by the ledger operator's key.
    pub fn authorize(mut self, ledger_operator: &Keypair) -> Self {
        self.operator_auth = Some(OperatorAuth::sign(ledger_operator, &self.operator_body()));
        self
    }
}

/// A ledger command (the bytes Raft replicates).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerCommand {
    RegisterNode(NodeRegistration),
    RegisterRc(RcRegistration),
    SubmitBatch(Batch),
    /// A batch whose signatures the leader checked when it admitted it into the log
    /// ([`Ledger::prepare`]): `checks[i]` is receipt `i`'s outcome. Replicas apply it without
    /// checking the signatures again (each is checked once, not once per replica); every
    /// receipt's signatures stay in the log for anyone to check later. A client's own
    /// `SubmitVerified` is never trusted: the leader checks its batch afresh.
    SubmitVerified {
        batch: Batch,
        checks: Vec<Option<VerifyError>>,
    },
}

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RegistrationError {
    #[error("the public key does not match the DID")]
    DidKeyMismatch,
    #[error("the registration is not signed by the registered key")]
    BadSignature,
    #[error("invalid policy: {0}")]
    Policy(#[from] PolicyError),
    /// Not authorized by the ledger operator (missing, forged or replayed authorization).
    #[error("not authorized by the ledger operator: {0}")]
    Operator(OperatorAuthError),
}

/// Why one receipt was not counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RejectReason {
    #[error("forged {0:?} signature")]
    ForgedSignature(Signer),
    #[error("missing RC co-signature")]
    MissingCoSignature,
    #[error("a field was changed after signing")]
    TamperedField,
    #[error("receipt {0} was already settled")]
    DuplicateReceipt(ReceiptId),
    #[error("nonce {nonce} of this node was already used (replay)")]
    ReplayedNonce { nonce: u64 },
    #[error("unknown node {0}")]
    UnknownNode(Did),
    #[error("unknown RC {0}")]
    UnknownRc(Did),
    #[error("usage window ends at {end_ms}, after the batch proposal time {proposed_at_ms}")]
    WindowInFuture { end_ms: u64, proposed_at_ms: u64 },
    #[error("usage window starts after it ends")]
    InvalidWindow,
    #[error("fee would overflow a balance or the ledger total")]
    FeeOverflow,
    #[error("fee {fee_micros} µ is over the per-receipt cap of {cap_micros} µ")]
    FeeOverCap { fee_micros: u64, cap_micros: u64 },
    #[error("session {session_id}: window {start_ms}..{end_ms} ms was already billed (billed until {billed_until_ms} ms)")]
    WindowAlreadyBilled {
        session_id: String,
        start_ms: u64,
        end_ms: u64,
        billed_until_ms: u64,
    },
    #[error("malformed receipt: {0}")]
    Malformed(String),
}

impl From<VerifyError> for RejectReason {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::TamperedField => Self::TamperedField,
            VerifyError::ForgedSignature(s) => Self::ForgedSignature(s),
            VerifyError::MissingCoSignature => Self::MissingCoSignature,
        }
    }
}

/// Why a whole batch was refused (nothing in it applied).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum BatchError {
    #[error("batch has {0} receipts, more than {MAX_RECEIPTS_PER_BATCH}")]
    TooLarge(usize),
}

/// One rejected receipt of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub index: u32,
    pub receipt_id: ReceiptId,
    pub reason: RejectReason,
}

/// What a batch did, recorded under its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub rc: Did,
    pub proposed_at_ms: u64,
    pub receipts: u32,
    pub settled: u32,
    pub fees_settled_micros: u64,
    /// The first [`MAX_STORED_BATCH_REJECTIONS`] rejections.
    pub rejected: Vec<Rejection>,
    /// How many receipts of the batch were rejected (all of them, listed or not).
    pub rejected_total: u32,
}

/// The answer to one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerResponse {
    Registered(Did),
    RegistrationRejected(RegistrationError),
    /// The batch was applied now (`replayed == false`) or earlier (`replayed == true`, nothing
    /// changed this time).
    Batch {
        batch_id: BatchId,
        replayed: bool,
        record: BatchRecord,
    },
    BatchRejected {
        batch_id: BatchId,
        reason: BatchError,
    },
    /// The command bytes did not decode.
    Malformed(String),
}

/// Where a receipt stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReceiptStatus {
    Settled {
        batch_id: BatchId,
        index: u32,
    },
    /// Never settled; the most recent rejection, if any.
    NotSettled {
        last_rejection: Option<RejectReason>,
    },
}

/// A read-only question to the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerQuery {
    Balance(Account),
    Receipt(ReceiptId),
    Batch(BatchId),
    Summary,
    /// The largest balances, largest first (at most [`MAX_TOP_BALANCES`]), for dashboards.
    TopBalances(u16),
}

/// The most balances one [`LedgerQuery::TopBalances`] returns.
pub const MAX_TOP_BALANCES: u16 = 100;

/// Ledger-wide totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerSummary {
    pub nodes: u64,
    pub rcs: u64,
    pub accounts: u64,
    pub receipts_settled: u64,
    pub batches: u64,
    /// Σ fees of settled receipts.
    pub total_fees_micros: u64,
    /// Σ balances; always equals `total_fees_micros`.
    pub total_credits_micros: u128,
    /// Receipts rejected so far (all of them).
    pub rejections_total: u64,
    /// Rejections still in the log (the most recent ones).
    pub rejections_kept: u64,
    pub state_hash: [u8; 32],
}

/// The answer to a query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryAnswer {
    Balance(u64),
    Receipt(ReceiptStatus),
    Batch(Option<BatchRecord>),
    Summary(LedgerSummary),
    Malformed(String),
    /// Accounts and balances (µ), largest first.
    Balances(Vec<(Account, u64)>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct NodeRecord {
    policy: SplitPolicy,
    operator: Account,
    owners: Vec<(Account, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SettledRef {
    batch_id: BatchId,
    index: u32,
}

/// The last window billed for one (node, session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Billed {
    start_ms: u64,
    end_ms: u64,
}

/// The compact key of a (node, session) pair: blake3 of the node's key and the session id.
fn billed_key(node: &Did, session_id: &str) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"opengrid/ledger-billed/v1\0");
    h.update(&node.public_key_bytes());
    h.update(session_id.as_bytes());
    *h.finalize().as_bytes()
}

/// The complete replicated state (serialized as the snapshot; BTreeMaps keep it canonical).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
struct LedgerState {
    protocol: Option<Account>,
    nodes: BTreeMap<Did, NodeRecord>,
    rcs: BTreeMap<Did, Account>,
    balances: BTreeMap<Account, u64>,
    settled: BTreeMap<ReceiptId, SettledRef>,
    used_nonces: BTreeSet<([u8; 32], u64)>,
    /// The rejection log: receipt → (sequence number, latest reason).
    rejections: BTreeMap<ReceiptId, (u64, RejectReason)>,
    /// The log's order: sequence number → receipt (oldest first).
    rejection_order: BTreeMap<u64, ReceiptId>,
    rejection_seq: u64,
    rejections_total: u64,
    batches: BTreeMap<BatchId, BatchRecord>,
    total_fees: u64,
    total_credits: u128,
    /// Last window billed per (node, session), keyed by [`billed_key`].
    billed: BTreeMap<[u8; 32], Billed>,
    /// Operator-authorization nonces already used by registrations.
    operator_nonces: BTreeSet<[u8; 16]>,
    /// Hash chain over the state-changing commands (the state hash).
    chain: [u8; 32],
}

/// The ledger state machine.
#[derive(Debug, Clone)]
pub struct Ledger {
    state: LedgerState,
    protocol: Account,
    rules: LedgerRules,
    verify_threads: usize,
}

impl Default for Ledger {
    fn default() -> Self {
        Self::new(Account::protocol())
    }
}

impl Ledger {
    /// An empty ledger crediting the protocol share to `protocol`, with the default rules and no
    /// operator (registrations are refused until one is configured: see [`Ledger::with_rules`]).
    pub fn new(protocol: Account) -> Self {
        Self::with_rules(protocol, LedgerRules::default())
    }

    /// An empty ledger with these rules.
    pub fn with_rules(protocol: Account, rules: LedgerRules) -> Self {
        let verify_threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8);
        Self {
            state: LedgerState {
                protocol: Some(protocol.clone()),
                ..Default::default()
            },
            protocol,
            rules,
            verify_threads,
        }
    }

    /// The rules this ledger applies.
    pub fn rules(&self) -> &LedgerRules {
        &self.rules
    }

    /// Apply a typed command.
    pub fn execute(&mut self, cmd: LedgerCommand) -> LedgerResponse {
        let registration = match &cmd {
            LedgerCommand::SubmitBatch(_) | LedgerCommand::SubmitVerified { .. } => None,
            other => Some(codec::encode(other).unwrap_or_default()),
        };
        let resp = match cmd {
            LedgerCommand::RegisterNode(r) => match self.register_node(r) {
                Ok(did) => LedgerResponse::Registered(did),
                Err(e) => LedgerResponse::RegistrationRejected(e),
            },
            LedgerCommand::RegisterRc(r) => match self.register_rc(r) {
                Ok(did) => LedgerResponse::Registered(did),
                Err(e) => LedgerResponse::RegistrationRejected(e),
            },
            LedgerCommand::SubmitBatch(b) => self.submit_batch(b, None),
            LedgerCommand::SubmitVerified { batch, checks } => {
                let checks = (checks.len() == batch.receipts.len()).then_some(checks);
                self.submit_batch(batch, checks)
            }
        };
        let changed = matches!(
            resp,
            LedgerResponse::Registered(_)
                | LedgerResponse::Batch {
                    replayed: false,
                    ..
                }
        );
        if changed {
            let mut h = blake3::Hasher::new();
            h.update(DOMAIN_STATE_CHAIN);
            h.update(&self.state.chain);
            if let Some(r) = &registration {
                h.update(r);
            }
            h.update(&codec::encode(&resp).unwrap_or_default());
            self.state.chain = *h.finalize().as_bytes();
        }
        resp
    }

    /// Answer a typed query.
    pub fn answer(&self, q: &LedgerQuery) -> QueryAnswer {
        match q {
            LedgerQuery::Balance(a) => QueryAnswer::Balance(self.balance(a)),
            LedgerQuery::Receipt(id) => QueryAnswer::Receipt(self.receipt_status(id)),
            LedgerQuery::Batch(id) => QueryAnswer::Batch(self.state.batches.get(id).cloned()),
            LedgerQuery::Summary => QueryAnswer::Summary(self.summary()),
            LedgerQuery::TopBalances(n) => QueryAnswer::Balances(self.top_balances(*n)),
        }
    }

    /// An account's balance in micro-units.
    pub fn balance(&self, a: &Account) -> u64 {
        self.state.balances.get(a).copied().unwrap_or(0)
    }

    /// The `n` largest balances (capped at [`MAX_TOP_BALANCES`]), largest first, ties by name.
    pub fn top_balances(&self, n: u16) -> Vec<(Account, u64)> {
        let mut all: Vec<(Account, u64)> = self
            .state
            .balances
            .iter()
            .map(|(a, b)| (a.clone(), *b))
            .collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(usize::from(n.min(MAX_TOP_BALANCES)));
        all
    }

    /// All balances.
    pub fn balances(&self) -> &BTreeMap<Account, u64> {
        &self.state.balances
    }

    /// A receipt's status.
    pub fn receipt_status(&self, id: &ReceiptId) -> ReceiptStatus {
        match self.state.settled.get(id) {
            Some(s) => ReceiptStatus::Settled {
                batch_id: s.batch_id,
                index: s.index,
            },
            None => ReceiptStatus::NotSettled {
                last_rejection: self.state.rejections.get(id).map(|(_, r)| r.clone()),
            },
        }
    }

    /// A batch's record.
    pub fn batch(&self, id: &BatchId) -> Option<&BatchRecord> {
        self.state.batches.get(id)
    }

    /// Totals and the state hash, in O(1) (kept as the state changes; no scan).
    pub fn summary(&self) -> LedgerSummary {
        LedgerSummary {
            nodes: self.state.nodes.len() as u64,
            rcs: self.state.rcs.len() as u64,
            accounts: self.state.balances.len() as u64,
            receipts_settled: self.state.settled.len() as u64,
            batches: self.state.batches.len() as u64,
            total_fees_micros: self.state.total_fees,
            total_credits_micros: self.state.total_credits,
            rejections_total: self.state.rejections_total,
            rejections_kept: self.state.rejections.len() as u64,
            state_hash: self.state_hash(),
        }
    }

    /// Checks the operator's authorization of a registration whose signed body is `body`, and
    /// consumes its nonce (call only when everything else about the registration is valid).
    fn check_operator(
        &self,
        auth: Option<&OperatorAuth>,
        body: &[u8],
    ) -> Result<[u8; 16], RegistrationError> {
        let operator = self
            .rules
            .operator
            .as_ref()
            .ok_or(RegistrationError::Operator(
                OperatorAuthError::NotConfigured,
            ))?;
        let auth = auth.ok_or(RegistrationError::Operator(OperatorAuthError::Missing))?;
        auth.verify(operator, body)
            .map_err(RegistrationError::Operator)?;
        if self.state.operator_nonces.contains(&auth.nonce) {
            return Err(RegistrationError::Operator(OperatorAuthError::Replayed));
        }
        Ok(auth.nonce)
    }

    fn register_node(&mut self, r: NodeRegistration) -> Result<Did, RegistrationError> {
        if r.did.public_key_bytes() != r.pubkey {
            return Err(RegistrationError::DidKeyMismatch);
        }
        let msg = NodeRegistration::message(&r.did, &r.pubkey, &r.policy, &r.operator, &r.owners);
        r.did
            .verifying_key()
            .verify_strict(&msg, &ed25519_dalek::Signature::from_bytes(&r.signature.0))
            .map_err(|_| RegistrationError::BadSignature)?;
        let nonce = self.check_operator(r.operator_auth.as_ref(), &r.operator_body())?;
        r.policy.validate(&r.operator, &r.owners)?;
        self.state.operator_nonces.insert(nonce);
        tracing::info!(node = %r.did, policy = ?r.policy, "node registered");
        self.state.nodes.insert(
            r.did.clone(),
            NodeRecord {
                policy: r.policy,
                operator: r.operator,
                owners: r.owners,
            },
        );
        Ok(r.did)
    }

    fn register_rc(&mut self, r: RcRegistration) -> Result<Did, RegistrationError> {
        if r.did.public_key_bytes() != r.pubkey {
            return Err(RegistrationError::DidKeyMismatch);
        }
        let msg = RcRegistration::message(&r.did, &r.pubkey, &r.operator);
        r.did
            .verifying_key()
            .verify_strict(&msg, &ed25519_dalek::Signature::from_bytes(&r.signature.0))
            .map_err(|_| RegistrationError::BadSignature)?;
        let nonce = self.check_operator(r.operator_auth.as_ref(), &r.operator_body())?;
        Account::new(r.operator.0.clone()).map_err(RegistrationError::Policy)?;
        self.state.operator_nonces.insert(nonce);
        tracing::info!(rc = %r.did, "rc registered");
        self.state.rcs.insert(r.did.clone(), r.operator);
        Ok(r.did)
    }

    /// Signature checks for every receipt, spread over threads ([`verify_receipts`]).
    fn verify_all(&self, receipts: &[SignedReceipt]) -> Vec<Result<(), VerifyError>> {
        verify_receipts(receipts, self.verify_threads)
    }

    /// Applies a batch; `checks`: its receipts' signature outcomes as the leader found them when
    /// it admitted the batch (`None`: checked here).
    fn submit_batch(
        &mut self,
        batch: Batch,
        checks: Option<Vec<Option<VerifyError>>>,
    ) -> LedgerResponse {
        let batch_id = batch.id();
        if let Some(record) = self.state.batches.get(&batch_id) {
            return LedgerResponse::Batch {
                batch_id,
                replayed: true,
                record: record.clone(),
            };
        }
        if batch.receipts.len() > MAX_RECEIPTS_PER_BATCH {
            return LedgerResponse::BatchRejected {
                batch_id,
                reason: BatchError::TooLarge(batch.receipts.len()),
            };
        }
        let sigs: Vec<Result<(), VerifyError>> = match checks {
            Some(c) => c.into_iter().map(|e| e.map_or(Ok(()), Err)).collect(),
            None => self.verify_all(&batch.receipts),
        };
        let mut record = BatchRecord {
            rc: batch.rc.clone(),
            proposed_at_ms: batch.proposed_at_ms,
            receipts: batch.receipts.len() as u32,
            settled: 0,
            fees_settled_micros: 0,
            rejected: Vec::new(),
            rejected_total: 0,
        };
        for (i, (r, sig)) in batch.receipts.iter().zip(sigs).enumerate() {
            let index = i as u32;
            match self.settle_one(r, sig, batch.proposed_at_ms, batch_id, index) {
                Ok(()) => {
                    record.settled += 1;
                    record.fees_settled_micros = record
                        .fees_settled_micros
                        .saturating_add(r.receipt.fee_micros);
                    self.forget_rejection(&r.receipt.receipt_id);
                }
                Err(reason) => {
                    tracing::debug!(receipt = %r.receipt.receipt_id, %reason, "receipt rejected");
                    self.state.rejections_total += 1;
                    record.rejected_total = record.rejected_total.saturating_add(1);
                    if self.state.settled.contains_key(&r.receipt.receipt_id) {
                        // Keep a settled receipt's status; the rejection is in the batch record.
                    } else {
                        self.log_rejection(r.receipt.receipt_id, reason.clone());
                    }
                    if record.rejected.len() < MAX_STORED_BATCH_REJECTIONS {
                        record.rejected.push(Rejection {
                            index,
                            receipt_id: r.receipt.receipt_id,
                            reason,
                        });
                    }
                }
            }
        }
        tracing::info!(%batch_id, settled = record.settled, rejected = record.rejected.len(), "batch applied");
        self.state.batches.insert(batch_id, record.clone());
        LedgerResponse::Batch {
            batch_id,
            replayed: false,
            record,
        }
    }

    /// Records a rejection in the bounded log (the oldest entry leaves when it is full).
    fn log_rejection(&mut self, id: ReceiptId, reason: RejectReason) {
        let st = &mut self.state;
        let seq = st.rejection_seq;
        st.rejection_seq += 1;
        if let Some((old_seq, _)) = st.rejections.insert(id, (seq, reason)) {
            st.rejection_order.remove(&old_seq);
        }
        st.rejection_order.insert(seq, id);
        while st.rejections.len() > self.rules.max_rejections {
            let Some((_, oldest)) = st.rejection_order.pop_first() else {
                break;
            };
            st.rejections.remove(&oldest);
        }
    }

    fn forget_rejection(&mut self, id: &ReceiptId) {
        if let Some((seq, _)) = self.state.rejections.remove(id) {
            self.state.rejection_order.remove(&seq);
        }
    }

    fn settle_one(
        &mut self,
        sr: &SignedReceipt,
        sig: Result<(), VerifyError>,
        proposed_at_ms: u64,
        batch_id: BatchId,
        index: u32,
    ) -> Result<(), RejectReason> {
        let r = &sr.receipt;
        if r.session_id.len() > MAX_SESSION_ID_LEN {
            return Err(RejectReason::Malformed(format!(
                "session id longer than {MAX_SESSION_ID_LEN} bytes"
            )));
        }
        if r.window.start_ms > r.window.end_ms {
            return Err(RejectReason::InvalidWindow);
        }
        let node = self
            .state
            .nodes
            .get(&r.node)
            .ok_or_else(|| RejectReason::UnknownNode(r.node.clone()))?;
        let routing = self
            .state
            .rcs
            .get(&r.rc)
            .ok_or_else(|| RejectReason::UnknownRc(r.rc.clone()))?;
        sig?;
        if r.window.end_ms > proposed_at_ms {
            return Err(RejectReason::WindowInFuture {
                end_ms: r.window.end_ms,
                proposed_at_ms,
            });
        }
        if self.state.settled.contains_key(&r.receipt_id) {
            return Err(RejectReason::DuplicateReceipt(r.receipt_id));
        }
        let nonce_key = (r.node.public_key_bytes(), r.nonce);
        if self.state.used_nonces.contains(&nonce_key) {
            return Err(RejectReason::ReplayedNonce { nonce: r.nonce });
        }
        if r.fee_micros > self.rules.max_fee_micros {
            return Err(RejectReason::FeeOverCap {
                fee_micros: r.fee_micros,
                cap_micros: self.rules.max_fee_micros,
            });
        }
        let billed_key = billed_key(&r.node, &r.session_id);
        if let Some(b) = self.state.billed.get(&billed_key) {
            let same = (b.start_ms, b.end_ms) == (r.window.start_ms, r.window.end_ms);
            if r.window.start_ms < b.end_ms || same {
                return Err(RejectReason::WindowAlreadyBilled {
                    session_id: r.session_id.clone(),
                    start_ms: r.window.start_ms,
                    end_ms: r.window.end_ms,
                    billed_until_ms: b.end_ms,
                });
            }
        }
        let weights = split::weights(
            &node.policy,
            &node.operator,
            routing,
            &self.protocol,
            &node.owners,
        );
        let credits = split::split(r.fee_micros, &weights);
        // Check every addition before changing anything: a receipt applies fully or not at all.
        let total = self
            .state
            .total_fees
            .checked_add(r.fee_micros)
            .ok_or(RejectReason::FeeOverflow)?;
        for (acct, c) in &credits {
            self.balance(acct)
                .checked_add(*c)
                .ok_or(RejectReason::FeeOverflow)?;
        }
        let credits_total = self
            .state
            .total_credits
            .checked_add(u128::from(r.fee_micros))
            .ok_or(RejectReason::FeeOverflow)?;
        for (acct, c) in credits {
            *self.state.balances.entry(acct).or_default() += c;
        }
        self.state.total_fees = total;
        self.state.total_credits = credits_total;
        self.state.billed.insert(
            billed_key,
            Billed {
                start_ms: r.window.start_ms,
                end_ms: r.window.end_ms,
            },
        );
        self.state.used_nonces.insert(nonce_key);
        self.state
            .settled
            .insert(r.receipt_id, SettledRef { batch_id, index });
        Ok(())
    }
}

/// Signature checks for every receipt (pure: the keys come from the DIDs, which registration ties
/// to the registered keys), spread over `threads`.
pub fn verify_receipts(receipts: &[SignedReceipt], threads: usize) -> Vec<Result<(), VerifyError>> {
    let check = |r: &SignedReceipt| {
        r.verify(
            &r.receipt.node.verifying_key(),
            &r.receipt.rc.verifying_key(),
        )
    };
    let threads = threads.max(1);
    if threads == 1 || receipts.len() < 256 {
        return receipts.iter().map(check).collect();
    }
    let chunk = receipts.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = receipts
            .chunks(chunk)
            .map(|c| s.spawn(move || c.iter().map(check).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

impl Application for Ledger {
    /// A submitted batch's signatures are checked here, once, on the leader as it admits the
    /// batch (outside the state machine's lock), and carried in the log as `SubmitVerified`;
    /// everything else passes through.
    fn prepare(command: Vec<u8>) -> Vec<u8> {
        let batch = match codec::decode::<LedgerCommand>(&command, MAX_DECODE_BYTES) {
            Ok(LedgerCommand::SubmitBatch(b)) => b,
            // A client's annotation is not trusted: checked afresh.
            Ok(LedgerCommand::SubmitVerified { batch, .. }) => batch,
            _ => return command,
        };
        if batch.receipts.len() > MAX_RECEIPTS_PER_BATCH {
            // Refused as too large by `apply`; nothing to check.
            return codec::encode(&LedgerCommand::SubmitBatch(batch)).unwrap_or(command);
        }
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let checks = verify_receipts(&batch.receipts, threads)
            .into_iter()
            .map(Result::err)
            .collect();
        codec::encode(&LedgerCommand::SubmitVerified { batch, checks }).unwrap_or(command)
    }

    fn apply(&mut self, command: &[u8]) -> Vec<u8> {
        let resp = match codec::decode::<LedgerCommand>(command, MAX_DECODE_BYTES) {
            Ok(cmd) => self.execute(cmd),
            Err(e) => LedgerResponse::Malformed(e.to_string()),
        };
        codec::encode(&resp).unwrap_or_default()
    }

    fn query(&self, query: &[u8]) -> Vec<u8> {
        let ans = match codec::decode::<LedgerQuery>(query, MAX_DECODE_BYTES) {
            Ok(q) => self.answer(&q),
            Err(e) => QueryAnswer::Malformed(e.to_string()),
        };
        codec::encode(&ans).unwrap_or_default()
    }

    fn snapshot(&self) -> Vec<u8> {
        codec::encode(&self.state).unwrap_or_default()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        let state: LedgerState =
            codec::decode(snapshot, MAX_DECODE_BYTES).map_err(|e| RestoreError(e.to_string()))?;
        if let Some(p) = &state.protocol {
            self.protocol = p.clone();
        }
        self.state = state;
        Ok(())
    }

    /// The hash chain over every state-changing command applied (O(1); replicas that applied
    /// the same commands agree, and a snapshot carries it).
    fn state_hash(&self) -> [u8; 32] {
        self.state.chain
    }
}

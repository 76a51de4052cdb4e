//! `opengrid init rc | node | ledger`: commented TOML configs with every field at its default.
//!
//! One place per config: each config has a [`Template`] here — a one-line comment per field
//! (what it is, units, allowed values), keyed by the field's dotted path. The *values* are never
//! written by hand: they are the serialized real defaults ([`NodeConfig::default`],
//! [`RcConfig::default`], [`LedgerConfig::default`]) with the `init` flags applied, so a changed
//! default shows up in the next `opengrid init` by itself. The tests below fail when a field has
//! no comment (adding a field without documenting it), when a comment names no field, and when
//! the output does not load back into exactly the config it was rendered from. The committed
//! samples in `deploy/config/` are `opengrid init` output (their second line names the command;
//! a test re-runs it and compares bytes). See `docs/adr/0019-packaging.md`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use opengrid_settlement::LedgerConfig;
use serde::Serialize;

use crate::node::config::NodeConfig;
use crate::rc::config::RcConfig;

/// Why `opengrid init` wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A template does not fit its config (a field without a comment, a comment without a
    /// field, a key out of order). A bug in this build, caught by the tests.
    #[error("config template for {kind}: {reason}")]
    Template {
        /// `node`, `rc` or `ledger`.
        kind: &'static str,
        /// What does not fit.
        reason: String,
    },
    /// The rendered config does not load back (e.g. a flag value the loader refuses).
    #[error("the {kind} config would be refused: {reason}")]
    Refused {
        /// `node`, `rc` or `ledger`.
        kind: &'static str,
        /// The loader's error.
        reason: String,
    },
    /// `--out` names an existing file and `--force` was not given.
    #[error("{0} exists; pass --force to overwrite it")]
    Exists(PathBuf),
    /// The output file could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
}

/// The comments of one config: what `opengrid init <kind>` writes around the default values.
#[derive(Debug)]
pub struct Template {
    /// `node`, `rc` or `ledger`.
    pub kind: &'static str,
    /// Header lines (without `# `), before the line naming the `init` command.
    pub header: &'static [&'static str],
    /// `(dotted path, one-line comment)` for every field, in output order: top-level fields
    /// first, then each section (`[name]`, its own entry) followed by its fields.
    pub fields: &'static [(&'static str, &'static str)],
    /// `(dotted path, example TOML value)` of optional fields, unset by default: written as a
    /// commented-out line.
    pub unset: &'static [(&'static str, &'static str)],
}

/// `opengrid init node`.
pub const NODE: Template = Template {
    kind: "node",
    header: &[
        "OpenGrid node config: `opengrid node --config node.toml`.",
    ],
    fields: &[
        ("version", "Config format version; this build reads 1."),
        ("dev", "Development colony (true/false): public dev secret, [faults] hooks; never in production."),
        ("security_off_for_measurement", "Benchmarks only, needs dev: plain migration links, no grants, open client API."),
        ("name", "Node name shown in logs and `opengrid status`; unique in the colony."),
        ("colony", "Colony to join; must equal the RC's `colony` (identifier: a-z 0-9 _ -)."),
        ("data_dir", "Identity key (identity.key) and RocksDB checkpoints; created if missing."),
        ("jurisdiction", "Where the node is, legally: ISO 3166-1 alpha-2 code (DE, FR, US) or zone (EU)."),
        ("handlers", "Handler ids served, e.g. [\"tutor\"]; [] = every handler linked into the binary."),
        ("capabilities", "Extra capabilities offered, matched against a manifest's placement.capabilities."),
        ("price_micros_per_input", "Price per processed input, in micro-units of the settlement currency."),
        ("capacity", "Most sessions hosted at once (at least 1)."),
        ("api_listen", "Client API (HTTP/WebSocket) listen address host:port; port 0 picks a free one."),
        ("cluster_listen", "Control-plane listen address host:port (to the RC); port 0 picks a free one."),
        ("migration_listen", "Migration listen address host:port (replicas, handover, forwarding); port 0 = free."),
        ("rc_cluster", "The RC's control-plane address host:port (the RC's `cluster_listen`); for an RC group every replica's, comma separated."),
        ("rc_id", "The RC's identity (did:mycel:..., `opengrid id --data-dir <rc data dir>`); for an RC group every replica's, comma separated; join acks from any other RC are refused. Empty: the first RC whose signed ack answers."),
        ("colony_secret", "Colony secret, 8..=256 bytes, same on RC and nodes; set OPENGRID_COLONY_SECRET instead (\"\" = unset: refused unless dev = true)."),
        ("max_session_share", "The largest share (0..=1) of this node's memory one session may reserve."),
        ("join_token", "Join token from the colony operator (`opengrid token join`) for a colony that admits by token; set OPENGRID_JOIN_TOKEN instead."),
        ("operators", "Operator keys (did:mycel) besides this node's own and its RC's: their tokens (`opengrid token operator`) open the session list, drain, handover and every session."),
        ("heartbeat_period", "Heartbeat period to the RC, 5ms..=60s."),
        ("lease", "Lease asked of the RC, at least 3 heartbeat periods; serving stops when it runs out."),
        ("control_threads", "Worker threads of the control-plane runtime, 1..=64."),
        ("handler_threads", "Worker threads running session handlers, 1..=1024."),
        ("session_queue", "Inputs queued per session before the API answers 429 (at least 1)."),
        ("max_body", "Largest client-API request body, at least 1KiB (e.g. \"1MiB\")."),
        ("max_connections", "Open client-API connections at most (1..=1000000); more are closed as they arrive."),
        ("header_timeout", "A client-API request head (or an idle connection's first byte) must arrive within this (>= 100ms); slower or idle connections are closed."),
        ("fsync", "fsync checkpoint writes (true/false); false risks loss on power failure."),
        ("drain_timeout", "Longest a drain (SIGTERM, `opengrid drain`) may take before exiting, at least 100ms."),
        ("handover_parallelism", "Handovers run at once while draining, 1..=256."),
        ("hardware", "Hardware offered to sessions."),
        ("hardware.cpu_cores", "CPU cores offered (at least 1)."),
        ("hardware.memory", "Memory offered, e.g. \"4GiB\" (more than 0)."),
        ("hardware.accelerator", "Accelerator class: \"none\", \"gpu-small\" or \"gpu-large\"."),
        ("inference", "Inference plane (ONNX Runtime); off while models_dir and models are both empty."),
        ("inference.models_dir", "Directory whose *.onnx files are loaded (trusted local files); \"\" = none."),
        ("inference.models", "Model assets checked by hash: [[inference.models]] with path, blake3 (64 hex), name."),
        ("inference.threads", "Dedicated inference threads, 1..=256."),
        ("inference.queue_capacity", "Requests queued before callers get backpressure, 1..=1048576."),
        ("inference.max_batch_rows", "Most rows batched into one run, 1..=65536."),
        ("inference.max_wait", "Longest a request waits for others to join its batch, at most 1s."),
        ("inference.device", "\"auto\" (CUDA when present, else CPU) or \"cpu\"."),
        ("inference.dylib_path", "libonnxruntime.so to load; \"\" = $ORT_DYLIB_PATH."),
        ("agents", "Pushed agent packages (ADR 0030, 0031): fetched by hash from holders or the RC into <data_dir>/blobs, compiled under <data_dir>/agents."),
        ("agents.enabled", "Run pushed agents (true/false); the node then serves handler \"wasm\"."),
        ("agents.max_instances", "Agent inputs running at once (wasm instance pool), 1..=10000."),
        ("agents.warm_instances", "Instances kept warm between inputs, one per recently active session (0 = fresh per input), at most max_instances."),
        ("agents.max_memory", "Linear memory of one agent instance, 1MiB..=4GiB."),
        ("agents.deadline", "Longest run of one agent input before it is interrupted."),
        ("agents.fetch_timeout", "Longest single request of a blob fetch (one chunk of a package, model or asset)."),
        ("agents.blob_cache", "Bound of the blob store <data_dir>/blobs (packages, models, assets); least recently used evicted beyond it, at least 64MiB."),
        ("receipts", "Compute receipts."),
        ("receipts.window", "Usage window: one receipt per session per window in which it did work."),
        ("faults", "Fault hooks for tests and the chaos harness; never set in production."),
        ("faults.control_dir", "Directory of fault control files; \"\" = no hooks (the default)."),
    ],
    unset: &[],
};

/// `opengrid init rc`.
pub const RC: Template = Template {
    kind: "rc",
    header: &[
        "OpenGrid routing coordinator (RC) config: `opengrid rc --config rc.toml`.",
    ],
    fields: &[
        ("version", "Config format version; this build reads 1."),
        ("dev", "Development colony (true/false): allows the public dev secret; never in production."),
        ("security_off_for_measurement", "Benchmarks only, needs dev: open client API, no quotas, no capabilities."),
        ("colony", "Colony name; nodes join with the same `colony` (identifier: a-z 0-9 _ -)."),
        ("data_dir", "Where the RC's identity key (identity.key) lives; created if missing."),
        ("api_listen", "Client API (HTTP) listen address host:port: sessions, status, health, metrics."),
        ("cluster_listen", "Control-plane listen address host:port; nodes' `rc_cluster` points here."),
        ("colony_secret", "Colony secret, 8..=256 bytes, same on RC and nodes; set OPENGRID_COLONY_SECRET instead (\"\" = unset: refused unless dev = true)."),
        ("operators", "Operator keys (did:mycel) besides the RC's own: their tokens (`opengrid token operator`) open status, the dashboard's data, handover and every session."),
        ("agent_publishers", "Developer keys (did:mycel, `opengrid agent keygen`) whose agent packages may be pushed; [] = any valid signature (pushing always needs an operator token)."),
        ("capability_ttl", "How long a session capability returned by POST /sessions stays valid."),
        ("members", "Colony membership: the only node DIDs that may join (empty: any node the rest of the policy admits)."),
        ("require_join_token", "Colony membership: nodes must present a join token signed by this RC or an operator (`opengrid token join`)."),
        ("client_max_sessions", "Live sessions one client (by address; a peer colony by its RC) may hold; operators are not limited."),
        ("client_max_memory", "Memory the live sessions of one client may reserve in all."),
        ("heartbeat_period", "Expected node heartbeat period (seeds the failure detector), 5ms..=60s."),
        ("lease", "Lease granted per heartbeat, at least 3 heartbeat periods."),
        ("lease_grace", "A silent node's sessions move only after lease x lease_grace, 1.1..=10."),
        ("phi_threshold", "Phi-accrual suspicion above which a node is declared dead, 1..=30."),
        ("phi_min_std", "Floor of the heartbeat-interval standard deviation of the detector (more than 0)."),
        ("acceptable_pause", "Heartbeat pause absorbed before phi starts rising (GC, scheduling)."),
        ("control_threads", "Worker threads of the control-plane runtime, 1..=64."),
        ("place_timeout", "Longest a placement order may take on the node, at least 10ms."),
        ("max_body", "Largest client-API request body, at least 1KiB (e.g. \"1MiB\")."),
        ("max_connections", "Open client-API connections at most (1..=1000000); more are closed as they arrive."),
        ("header_timeout", "A client-API request head (or an idle connection's first byte) must arrive within this (>= 100ms); slower or idle connections are closed."),
        ("join_max_skew", "Accepted clock skew of signed node join requests."),
        ("replicas", "Checkpoint replicas per session (k), 0..=16, inside the manifest's jurisdictions."),
        ("min_copies", "Colony floor of a manifest's migration.min_copies (copies before a zero-loss ack), <= replicas."),
        ("failover_parallelism", "Sessions restored at once after a node is declared dead, 1..=4096."),
        ("canopy", "Canopy gossip and federation with other colonies; off by default."),
        ("canopy.enabled", "Run the canopy swarm and route refused sessions to other colonies (true/false)."),
        ("canopy.listen", "libp2p listen multiaddr; /ip4/127.0.0.1/tcp/0 picks a free loopback port."),
        ("canopy.bootstrap", "Canopy peers to dial (multiaddrs, /p2p/<peer id> optional)."),
        ("canopy.publish_interval", "How often this RC publishes its summary, at least 10ms."),
        ("canopy.expiry_intervals", "A peer's entry expires after this many intervals without news, 1..=1000."),
        ("canopy.gossip_heartbeat", "Gossipsub heartbeat, at least 10ms."),
        ("canopy.region", "Region label shown to other colonies, 1..=64 printable characters."),
        ("canopy.zone", "Jurisdiction sessions admitted here originate in (ISO 3166-1 alpha-2 or zone)."),
        ("canopy.trusted_rcs", "did:mycel ids of the federation's other RCs; other summaries are rejected."),
        ("canopy.treaties_file", "Treaty file merged with the inline [[canopy.treaty]] entries; unset = none."),
        ("canopy.treaty", "Inline treaties: [[canopy.treaty]] tables (see opengrid_canopy::treaty)."),
        ("canopy.default_data_class", "Data class of a session whose request names none (a-z 0-9 - _ .)."),
        ("canopy.max_candidates", "Remote colonies asked, at most, per session, 1..=16."),
        ("canopy.remote_timeout", "Longest one RC-to-RC admission request may take, 10ms..=120s."),
        ("canopy.request_max_skew", "Accepted clock skew of signed admission requests, 1s..=600s."),
        ("settlement", "Settlement of compute receipts on the ledger."),
        ("settlement.ledger", "Ledger replica addresses host:port; [] = no settlement (nodes keep receipts)."),
        ("settlement.interval", "One batch proposal per interval (more than 0)."),
        ("settlement.max_per_batch", "Most receipts per batch; more are proposed in several parts."),
        ("settlement.max_pending", "Most co-signed receipts queued for the next interval; beyond it nodes keep theirs and resend later."),
        ("gateway", "The colony's agents over MCP (/mcp) and A2A (/a2a/{agent}) on this API (docs/protocols.md)."),
        ("gateway.enabled", "Serve /mcp, /a2a/... and the agent cards (true/false)."),
        ("gateway.default_agent", "Agent whose card is served at /.well-known/agent-card.json; \"\" = the first by name."),
        ("gateway.public_url", "Base URL the agent cards advertise; \"\" = the request's Host, else the bound address."),
        ("gateway.allowed_hosts", "Host header values /mcp accepts (DNS-rebinding protection); [] = any."),
        ("gateway.egress_hosts", "[egress] hosts of the sessions the gateway creates; [] = none."),
        ("gateway.max_conversations", "Gateway-driven sessions kept in memory at most; idle ones beyond it are re-attached on use."),
        ("group", "This RC as one replica of the colony's RC group (Raft-replicated directory, leases and receipt queue; ADR 0037); id = 0: a single RC."),
        ("group.id", "This replica's Raft id, 1.. (0 = no group)."),
        ("group.listen", "This replica's Raft address host:port (peers reach it here)."),
        ("group.peers", "The voters, each \"ID=DID@HOST:PORT\" (`opengrid id --data-dir` prints a DID; this replica's own may be \"ID=HOST:PORT\"): 1, 3, 5 or 7; the same list on every replica. Nodes list every replica's cluster_listen in rc_cluster."),
        ("group.advertise", "host:port nodes reach this replica's control plane at, told to nodes so a replica added later can lead them; \"\" = cluster_listen unless it binds every interface."),
        ("group.heartbeat", "Raft heartbeat of the leader, at most a third of group.election_timeout."),
        ("group.election_timeout", "A dead leader is replaced after 3-4x this; at most a quarter of the lease, so nodes renew with the new leader before their lease ends."),
    ],
    unset: &[("canopy.treaties_file", "\"/etc/opengrid/treaties.toml\"")],
};

/// `opengrid init ledger`.
pub const LEDGER: Template = Template {
    kind: "ledger",
    header: &[
        "OpenGrid settlement ledger replica config: `opengrid ledger replica --config ledger.toml`.",
    ],
    fields: &[
        ("version", "Config format version; this build reads 1."),
        ("id", "Raft id of this replica, at least 1, unique in the group."),
        ("addr", "Listen (and advertised) address host:port of this replica."),
        ("data_dir", "Raft log, ledger state and snapshots; created if missing."),
        ("key_file", "This replica's identity key file (created 0600 if missing); its DID is its identity in the group, proved on every link. \"\" = <data_dir>/identity.key."),
        ("peers", "Initial voters, each \"ID=DID@HOST:PORT\" (this replica's own entry may be \"ID=HOST:PORT\"); [] = join later as learner."),
        ("snapshot_every", "Snapshot every this many applied entries (at least 1)."),
        ("protocol_account", "Account credited with the protocol share of every fee (printable, no spaces)."),
        ("operator", "Ledger operator's DID (`opengrid ledger keygen --key-file operator.key` prints it); its key authorizes registrations and membership changes. \"\" = none: all of them are refused."),
        ("max_fee_micros", "Largest fee one receipt may carry, micro-units (the same on every replica)."),
        ("max_rejections", "Rejected receipts kept in the ledger's rejection log, oldest dropped first (the same on every replica)."),
    ],
    unset: &[],
};

/// Header lines shared by every kind, after the line naming the command.
const COMMON_HEADER: &[&str] = &[
    "Every field is shown with its default value; delete what you do not change.",
    "Unknown fields are refused. Durations: \"250ms\", \"30s\", \"2m\"; sizes: \"64KiB\", \"4GiB\".",
];

/// Header lines of the node and RC configs (their environment overrides).
const ENV_HEADER: &[&str] = &[
    "Any field can be overridden from the environment as OPENGRID_<PATH> (dots become",
    "underscores), e.g. OPENGRID_COLONY_SECRET=..., OPENGRID_HARDWARE_CPU_CORES=8.",
];

/// Header lines of the ledger config (its flags).
const LEDGER_HEADER: &[&str] = &[
    "Flags of `opengrid ledger replica` (--id, --addr, --data-dir, --peers, ...) override the file.",
];

/// `opengrid init`: which config to write.
#[derive(Debug, Subcommand)]
pub enum InitCmd {
    /// Write a commented routing-coordinator config (`opengrid rc --config`).
    Rc {
        /// Fields to set.
        #[command(flatten)]
        set: RcInit,
        /// Where to write.
        #[command(flatten)]
        out: InitOut,
    },
    /// Write a commented node config (`opengrid node --config`).
    Node {
        /// Fields to set.
        #[command(flatten)]
        set: NodeInit,
        /// Where to write.
        #[command(flatten)]
        out: InitOut,
    },
    /// Write a commented ledger replica config (`opengrid ledger replica --config`).
    Ledger {
        /// Fields to set.
        #[command(flatten)]
        set: LedgerInit,
        /// Where to write.
        #[command(flatten)]
        out: InitOut,
    },
}

/// Where `opengrid init` writes.
#[derive(Debug, Default, Args)]
pub struct InitOut {
    /// Write to this file instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Overwrite `--out` if it exists.
    #[arg(long, requires = "out")]
    pub force: bool,
}

/// Fields `opengrid init rc` sets instead of their defaults.
#[derive(Debug, Default, Args)]
pub struct RcInit {
    /// `colony`.
    #[arg(long)]
    pub colony: Option<String>,
    /// `data_dir`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// `api_listen`, host:port.
    #[arg(long)]
    pub api_addr: Option<SocketAddr>,
    /// `cluster_listen`, host:port.
    #[arg(long)]
    pub cluster_addr: Option<SocketAddr>,
    /// `dev = true`: a development colony (the public development secret is accepted).
    #[arg(long)]
    pub dev: bool,
}

/// Fields `opengrid init node` sets instead of their defaults: enough for several nodes on one
/// host (`--name b --api-addr 127.0.0.1:7701 --data-dir …`).
#[derive(Debug, Default, Args)]
pub struct NodeInit {
    /// `name`.
    #[arg(long)]
    pub name: Option<String>,
    /// `colony`.
    #[arg(long)]
    pub colony: Option<String>,
    /// `data_dir`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// `jurisdiction`.
    #[arg(long)]
    pub jurisdiction: Option<String>,
    /// `api_listen`, host:port.
    #[arg(long)]
    pub api_addr: Option<SocketAddr>,
    /// `cluster_listen`, host:port.
    #[arg(long)]
    pub cluster_addr: Option<SocketAddr>,
    /// `migration_listen`, host:port.
    #[arg(long)]
    pub migration_addr: Option<SocketAddr>,
    /// `rc_cluster`: the RC's control-plane address, host:port.
    #[arg(long)]
    pub rc_cluster: Option<String>,
    /// `dev = true`: a development node (public development secret, `[faults]` hooks allowed).
    #[arg(long)]
    pub dev: bool,
}

/// Fields `opengrid init ledger` sets instead of their defaults.
#[derive(Debug, Default, Args)]
pub struct LedgerInit {
    /// `id`.
    #[arg(long)]
    pub id: Option<u64>,
    /// `addr`, host:port.
    #[arg(long)]
    pub addr: Option<String>,
    /// `data_dir`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// `peers`, as `1=host:port,2=host:port,3=host:port`.
    #[arg(long)]
    pub peers: Option<String>,
}

/// Flags as `(flag, value)`, for the header line that names the command.
type Flags = Vec<(&'static str, String)>;

fn push<T: ToString>(flags: &mut Flags, flag: &'static str, v: &Option<T>) {
    if let Some(v) = v {
        flags.push((flag, v.to_string()));
    }
}

fn push_path(flags: &mut Flags, flag: &'static str, v: &Option<PathBuf>) {
    if let Some(v) = v {
        flags.push((flag, v.display().to_string()));
    }
}

impl RcInit {
    fn apply(&self, c: &mut RcConfig) -> Flags {
        let mut f = Flags::new();
        if let Some(v) = &self.colony {
            c.colony = v.clone();
        }
        if let Some(v) = &self.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = self.api_addr {
            c.api_listen = v;
        }
        if let Some(v) = self.cluster_addr {
            c.cluster_listen = v;
        }
        push(&mut f, "--colony", &self.colony);
        push_path(&mut f, "--data-dir", &self.data_dir);
        push(&mut f, "--api-addr", &self.api_addr);
        push(&mut f, "--cluster-addr", &self.cluster_addr);
        if self.dev {
            c.dev = true;
            f.push(("--dev", String::new()));
        }
        f
    }
}

impl NodeInit {
    fn apply(&self, c: &mut NodeConfig) -> Flags {
        let mut f = Flags::new();
        if let Some(v) = &self.name {
            c.name = v.clone();
        }
        if let Some(v) = &self.colony {
            c.colony = v.clone();
        }
        if let Some(v) = &self.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = &self.jurisdiction {
            c.jurisdiction = v.clone();
        }
        if let Some(v) = self.api_addr {
            c.api_listen = v;
        }
        if let Some(v) = self.cluster_addr {
            c.cluster_listen = v;
        }
        if let Some(v) = self.migration_addr {
            c.migration_listen = v;
        }
        if let Some(v) = &self.rc_cluster {
            c.rc_cluster = v.clone();
        }
        push(&mut f, "--name", &self.name);
        push(&mut f, "--colony", &self.colony);
        push_path(&mut f, "--data-dir", &self.data_dir);
        push(&mut f, "--jurisdiction", &self.jurisdiction);
        push(&mut f, "--api-addr", &self.api_addr);
        push(&mut f, "--cluster-addr", &self.cluster_addr);
        push(&mut f, "--migration-addr", &self.migration_addr);
        push(&mut f, "--rc-cluster", &self.rc_cluster);
        if self.dev {
            c.dev = true;
            f.push(("--dev", String::new()));
        }
        f
    }
}

impl LedgerInit {
    fn apply(&self, c: &mut LedgerConfig) -> Flags {
        let mut f = Flags::new();
        if let Some(v) = self.id {
            c.id = v;
        }
        if let Some(v) = &self.addr {
            c.addr = v.clone();
        }
        if let Some(v) = &self.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = &self.peers {
            c.set_peers_flag(v);
        }
        push(&mut f, "--id", &self.id);
        push(&mut f, "--addr", &self.addr);
        push_path(&mut f, "--data-dir", &self.data_dir);
        push(&mut f, "--peers", &self.peers);
        f
    }
}

/// A word as a POSIX shell reads it back: bare when safe, else single-quoted.
fn shell_word(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./:=,@+%".contains(&b));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn command_line(kind: &str, flags: &Flags) -> String {
    let mut s = format!("opengrid init {kind}");
    for (flag, v) in flags {
        s.push(' ');
        s.push_str(flag);
        // A switch (`--dev`) has no value.
        if !v.is_empty() {
            s.push(' ');
            s.push_str(&shell_word(v));
        }
    }
    s
}

/// The environment a written node or RC config is checked with: the file leaves
/// `colony_secret` unset (operators set `OPENGRID_COLONY_SECRET`), so outside dev mode the check
/// supplies a stand-in secret the way the environment will.
fn secret_from_env(dev: bool) -> Vec<(String, String)> {
    if dev {
        Vec::new()
    } else {
        vec![(
            "OPENGRID_COLONY_SECRET".to_string(),
            "stand-in-colony-secret".to_string(),
        )]
    }
}

/// The config `cmd` describes, rendered as commented TOML, checked to load back into exactly
/// that config with the real loader.
pub fn render_cmd(cmd: &InitCmd) -> Result<String, InitError> {
    match cmd {
        InitCmd::Rc { set, .. } => {
            let mut c = RcConfig::default();
            let flags = set.apply(&mut c);
            let text = render(&RC, &command_line("rc", &flags), &c)?;
            let back =
                RcConfig::from_toml_with_env(&text, &secret_from_env(c.dev)).map(|b| RcConfig {
                    colony_secret: c.colony_secret.clone(),
                    ..b
                });
            check_loads(RC.kind, &c, back)?;
            Ok(text)
        }
        InitCmd::Node { set, .. } => {
            let mut c = NodeConfig::default();
            let flags = set.apply(&mut c);
            let text = render(&NODE, &command_line("node", &flags), &c)?;
            let back = NodeConfig::from_toml_with_env(&text, &secret_from_env(c.dev)).map(|b| {
                NodeConfig {
                    colony_secret: c.colony_secret.clone(),
                    ..b
                }
            });
            check_loads(NODE.kind, &c, back)?;
            Ok(text)
        }
        InitCmd::Ledger { set, .. } => {
            let mut c = LedgerConfig::default();
            let flags = set.apply(&mut c);
            let text = render(&LEDGER, &command_line("ledger", &flags), &c)?;
            let back = LedgerConfig::from_toml(&text).map_err(|e| InitError::Refused {
                kind: LEDGER.kind,
                reason: e.to_string(),
            });
            check_loads(LEDGER.kind, &c, back)?;
            Ok(text)
        }
    }
}

fn check_loads<T: PartialEq + std::fmt::Debug, E: std::fmt::Display>(
    kind: &'static str,
    want: &T,
    got: Result<T, E>,
) -> Result<(), InitError> {
    let got = got.map_err(|e| InitError::Refused {
        kind,
        reason: e.to_string(),
    })?;
    if &got != want {
        return Err(InitError::Template {
            kind,
            reason: format!("the output loads as {got:?}, not {want:?}"),
        });
    }
    Ok(())
}

/// Runs `opengrid init`: the config on standard output, or in `--out` (refusing to overwrite an
/// existing file without `--force`).
pub fn run(cmd: &InitCmd) -> Result<(), InitError> {
    let text = render_cmd(cmd)?;
    let out = match cmd {
        InitCmd::Rc { out, .. } | InitCmd::Node { out, .. } | InitCmd::Ledger { out, .. } => out,
    };
    match &out.out {
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(|source| InitError::Io {
                    path: PathBuf::from("<stdout>"),
                    source,
                })
        }
        Some(path) => write_file(path, &text, out.force),
    }
}

fn write_file(path: &std::path::Path, text: &str, force: bool) -> Result<(), InitError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            InitError::Exists(path.to_path_buf())
        } else {
            InitError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|source| InitError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// `value` as commented TOML: the template's header, the line naming `command`, then every
/// field of `value` in the template's order with its comment above it.
pub fn render<T: Serialize>(t: &Template, command: &str, value: &T) -> Result<String, InitError> {
    let bad = |reason: String| InitError::Template {
        kind: t.kind,
        reason,
    };
    let table = toml::Table::try_from(value).map_err(|e| bad(format!("serialize: {e}")))?;
    check_coverage(t, &table).map_err(bad)?;
    let kind_header = if t.kind == LEDGER.kind {
        LEDGER_HEADER
    } else {
        ENV_HEADER
    };
    let mut out = String::new();
    for line in t.header {
        out.push_str(&format!("# {line}\n"));
    }
    out.push_str(&format!("# Written by `{command}`.\n"));
    for line in COMMON_HEADER.iter().chain(kind_header) {
        out.push_str(&format!("# {line}\n"));
    }
    // The table whose keys are being written ("" = top level).
    let mut section = String::new();
    for (path, doc) in t.fields {
        let (parent, key) = match path.rsplit_once('.') {
            Some((p, k)) => (p, k),
            None => ("", *path),
        };
        match lookup(&table, path) {
            Some(toml::Value::Table(_)) => {
                if !parent.is_empty() {
                    return Err(bad(format!("nested section `{path}` is not supported")));
                }
                out.push_str(&format!("\n# {doc}\n[{path}]\n"));
                section = path.to_string();
            }
            found => {
                if parent != section {
                    return Err(bad(format!(
                        "`{path}` comes after section [{section}]: list top-level fields first \
                         and each section's fields right after it"
                    )));
                }
                out.push_str(&format!("\n# {doc}\n"));
                match found {
                    Some(v) => out.push_str(&format!("{key} = {v}\n")),
                    None => {
                        let example = t
                            .unset
                            .iter()
                            .find(|(p, _)| p == path)
                            .map(|(_, e)| *e)
                            .ok_or_else(|| {
                                bad(format!("`{path}` is unset and has no example in `unset`"))
                            })?;
                        out.push_str(&format!("# {key} = {example}\n"));
                    }
                }
            }
        }
    }
    Ok(out)
}

fn lookup<'a>(t: &'a toml::Table, path: &str) -> Option<&'a toml::Value> {
    let mut parts = path.split('.');
    let mut cur = t.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_table()?.get(p)?;
    }
    Some(cur)
}

/// Every dotted path of `t`: tables and their leaves.
fn all_paths(t: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in t {
        let p = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if let toml::Value::Table(inner) = v {
            all_paths(inner, &p, out);
        }
        out.push(p);
    }
}

/// Every key of the serialized config has a comment, and every comment a key (or an `unset`
/// example); no path is documented twice.
fn check_coverage(t: &Template, table: &toml::Table) -> Result<(), String> {
    let mut keys = Vec::new();
    all_paths(table, "", &mut keys);
    let documented: Vec<&str> = t.fields.iter().map(|(p, _)| *p).collect();
    if let Some(k) = keys.iter().find(|k| !documented.contains(&k.as_str())) {
        return Err(format!(
            "field `{k}` has no comment: add it to the template in cluster/src/init.rs"
        ));
    }
    for (i, p) in documented.iter().enumerate() {
        if documented[..i].contains(p) {
            return Err(format!("`{p}` is documented twice"));
        }
        let unset = t.unset.iter().any(|(u, _)| u == p);
        if !keys.iter().any(|k| k == p) && !unset {
            return Err(format!("`{p}` is documented but is no field of the config"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn node() -> InitCmd {
        InitCmd::Node {
            set: NodeInit::default(),
            out: InitOut::default(),
        }
    }
    fn rc() -> InitCmd {
        InitCmd::Rc {
            set: RcInit::default(),
            out: InitOut::default(),
        }
    }
    fn ledger() -> InitCmd {
        InitCmd::Ledger {
            set: LedgerInit::default(),
            out: InitOut::default(),
        }
    }

    fn keys_of<T: Serialize>(v: &T) -> Vec<String> {
        let mut keys = Vec::new();
        all_paths(&toml::Table::try_from(v).unwrap(), "", &mut keys);
        keys
    }

    #[test]
    fn each_template_parses_with_the_real_loader_into_exactly_the_defaults() {
        // The secret comes from the environment (the file leaves it unset).
        let env = secret_from_env(false);
        let text = render_cmd(&node()).unwrap();
        assert_eq!(
            NodeConfig::from_toml_with_env(&text, &env).unwrap(),
            NodeConfig {
                colony_secret: "stand-in-colony-secret".into(),
                ..NodeConfig::default()
            }
        );
        let text = render_cmd(&rc()).unwrap();
        assert_eq!(
            RcConfig::from_toml_with_env(&text, &env).unwrap(),
            RcConfig {
                colony_secret: "stand-in-colony-secret".into(),
                ..RcConfig::default()
            }
        );
        // Without one, the written config is refused naming the field.
        match RcConfig::from_toml_with_env(&text, &[]) {
            Err(crate::common::config::ConfigError::Invalid { field, .. }) => {
                assert_eq!(field, "colony_secret")
            }
            other => panic!("{other:?}"),
        }
        let text = render_cmd(&ledger()).unwrap();
        assert_eq!(
            LedgerConfig::from_toml(&text).unwrap(),
            LedgerConfig::default()
        );
    }

    /// Every key of the serialized default appears in the output as `key = …` (or, unset,
    /// `# key = …`) right under a comment, in its section.
    fn assert_mentions_every_field<T: Serialize>(text: &str, default: &T, t: &Template) {
        let parsed: toml::Table = text.parse().unwrap();
        for k in keys_of(default) {
            assert!(lookup(&parsed, &k).is_some(), "{}: `{k}` missing", t.kind);
        }
        let lines: Vec<&str> = text.lines().collect();
        for (path, _) in t.fields {
            let key = path.rsplit('.').next().unwrap();
            let pos = lines
                .iter()
                .position(|l| {
                    l.starts_with(&format!("{key} = "))
                        || l.starts_with(&format!("# {key} = "))
                        || *l == format!("[{path}]")
                })
                .unwrap_or_else(|| panic!("{}: no line for `{path}`", t.kind));
            assert!(
                pos > 0 && lines[pos - 1].starts_with("# "),
                "{}: `{path}` has no comment above it",
                t.kind
            );
        }
    }

    #[test]
    fn each_template_mentions_every_field_of_its_config() {
        assert_mentions_every_field(&render_cmd(&node()).unwrap(), &NodeConfig::default(), &NODE);
        assert_mentions_every_field(&render_cmd(&rc()).unwrap(), &RcConfig::default(), &RC);
        assert_mentions_every_field(
            &render_cmd(&ledger()).unwrap(),
            &LedgerConfig::default(),
            &LEDGER,
        );
        // The optional field unset by default is still shown, commented out.
        assert!(render_cmd(&rc())
            .unwrap()
            .contains("\n# treaties_file = \"/etc/opengrid/treaties.toml\"\n"));
    }

    #[test]
    fn a_field_without_a_comment_fails_the_coverage_check() {
        const SHORT: Template = Template {
            kind: "ledger",
            header: &[],
            fields: &[("version", "v"), ("id", "i")],
            unset: &[],
        };
        match render(&SHORT, "x", &LedgerConfig::default()) {
            Err(InitError::Template { reason, .. }) => {
                assert!(reason.contains("`addr` has no comment"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        const EXTRA: Template = Template {
            kind: "ledger",
            header: &[],
            fields: &[
                ("version", "v"),
                ("id", "i"),
                ("addr", "a"),
                ("data_dir", "d"),
                ("key_file", "k"),
                ("peers", "p"),
                ("snapshot_every", "s"),
                ("protocol_account", "p"),
                ("operator", "o"),
                ("max_fee_micros", "m"),
                ("max_rejections", "r"),
                ("gone", "g"),
            ],
            unset: &[],
        };
        match render(&EXTRA, "x", &LedgerConfig::default()) {
            Err(InitError::Template { reason, .. }) => {
                assert!(reason.contains("`gone` is documented"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flags_set_fields_and_are_named_in_the_header() {
        let cmd = crate::cli::Opts::try_parse_from([
            "opengrid",
            "init",
            "node",
            "--name",
            "b",
            "--api-addr",
            "127.0.0.1:7701",
            "--data-dir",
            "/srv/og b",
        ])
        .unwrap();
        let crate::cli::Cmd::Init { kind } = cmd.cmd else {
            panic!("not init")
        };
        let text = render_cmd(&kind).unwrap();
        let c = NodeConfig::from_toml_with_env(&text, &secret_from_env(false)).unwrap();
        assert_eq!(c.name, "b");
        assert_eq!(c.api_listen.port(), 7701);
        assert_eq!(c.data_dir, PathBuf::from("/srv/og b"));
        assert!(
            text.contains(
                "`opengrid init node --name b --data-dir '/srv/og b' --api-addr 127.0.0.1:7701`"
            ),
            "{text}"
        );
    }

    #[test]
    fn dev_flag_writes_a_development_config_that_loads_without_a_secret() {
        for (kind, cmd) in [
            (
                "node",
                InitCmd::Node {
                    set: NodeInit {
                        dev: true,
                        ..NodeInit::default()
                    },
                    out: InitOut::default(),
                },
            ),
            (
                "rc",
                InitCmd::Rc {
                    set: RcInit {
                        dev: true,
                        ..RcInit::default()
                    },
                    out: InitOut::default(),
                },
            ),
        ] {
            let text = render_cmd(&cmd).unwrap();
            assert!(
                text.contains(&format!("`opengrid init {kind} --dev`")),
                "{text}"
            );
            assert!(text.contains("\ndev = true\n"), "{text}");
            let secret = match kind {
                "node" => NodeConfig::from_toml_with_env(&text, &[])
                    .unwrap()
                    .secret()
                    .to_string(),
                _ => RcConfig::from_toml_with_env(&text, &[])
                    .unwrap()
                    .secret()
                    .to_string(),
            };
            assert_eq!(secret, crate::common::config::DEV_COLONY_SECRET);
        }
    }

    #[test]
    fn a_flag_value_the_loader_refuses_is_refused_by_init() {
        let cmd = InitCmd::Node {
            set: NodeInit {
                jurisdiction: Some("XX".into()),
                ..NodeInit::default()
            },
            out: InitOut::default(),
        };
        match render_cmd(&cmd) {
            Err(InitError::Refused { kind, reason }) => {
                assert_eq!(kind, "node");
                assert!(reason.contains("jurisdiction"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn out_refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rc.toml");
        let cmd = |force| InitCmd::Rc {
            set: RcInit::default(),
            out: InitOut {
                out: Some(path.clone()),
                force,
            },
        };
        run(&cmd(false)).unwrap();
        let first = std::fs::read_to_string(&path).unwrap();
        assert_eq!(first, render_cmd(&rc()).unwrap());
        std::fs::write(&path, "edited").unwrap();
        match run(&cmd(false)) {
            Err(e @ InitError::Exists(_)) => {
                assert!(e.to_string().contains("--force"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "edited");
        run(&cmd(true)).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), first);
    }

    /// The committed samples are `opengrid init` output: each names its command on line 2.
    #[test]
    fn committed_samples_equal_init_output() {
        for (name, sample) in [
            ("rc", include_str!("../../deploy/config/rc.toml")),
            ("node", include_str!("../../deploy/config/node.toml")),
            ("ledger", include_str!("../../deploy/config/ledger.toml")),
        ] {
            let line = sample
                .lines()
                .find_map(|l| l.strip_prefix("# Written by `"))
                .and_then(|l| l.strip_suffix("`."))
                .unwrap_or_else(|| panic!("deploy/config/{name}.toml names no init command"));
            let words: Vec<&str> = line.split(' ').collect();
            let opts = crate::cli::Opts::try_parse_from(&words).unwrap();
            let crate::cli::Cmd::Init { kind } = opts.cmd else {
                panic!("{line}")
            };
            let fresh = render_cmd(&kind).unwrap();
            assert!(
                fresh == sample,
                "deploy/config/{name}.toml differs from `{line}`: regenerate it with \
                 `{line} --out deploy/config/{name}.toml --force`"
            );
        }
    }

    #[test]
    fn shell_words_round_trip_simple_values_and_quote_others() {
        assert_eq!(shell_word("127.0.0.1:7700"), "127.0.0.1:7700");
        assert_eq!(
            shell_word("/var/lib/opengrid/node"),
            "/var/lib/opengrid/node"
        );
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word(""), "''");
    }
}

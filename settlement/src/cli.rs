//! The `opengrid-ledger` command line (clap). The main `opengrid` binary can embed [`LedgerCmd`]
//! as its `ledger` subcommand and call [`run`].
//!
//! Every command reaches the replicas over authenticated links: registrations and membership
//! changes connect with the operator's key, read-only commands with a throwaway key (replicas
//! serve client requests to any authenticated peer). `--addr` takes `DID@HOST:PORT` to pin a
//! replica's identity, or `HOST:PORT`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use opengrid_consensus::NodeId;

use crate::config::LedgerConfig;
use crate::keys::Keypair;
use crate::ledger::{BatchId, LedgerResponse, NodeRegistration, RcRegistration};
use crate::receipt::ReceiptId;
use crate::replica::{run_replica, LedgerClient};
use crate::split::{Account, SplitPolicy};

/// Settlement ledger: run a replica, query balances and status, register nodes and RCs.
#[derive(Debug, Parser)]
#[command(name = "opengrid-ledger", version)]
pub struct Opts {
    #[command(subcommand)]
    pub cmd: LedgerCmd,
}

/// Ledger subcommands.
#[derive(Debug, Subcommand)]
pub enum LedgerCmd {
    /// Run a ledger replica until SIGINT/SIGTERM (or stdin EOF with --exit-on-stdin-eof).
    ///
    /// Fields come from `--config` (defaults without it); each flag given overrides the file.
    Replica {
        /// Replica config (TOML; `opengrid init ledger` writes one). Flags override its fields.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Raft id of this replica (unique in the group).
        #[arg(long, env = "OPENGRID_LEDGER_ID")]
        id: Option<NodeId>,
        /// Listen address, host:port.
        #[arg(long, env = "OPENGRID_LEDGER_ADDR")]
        addr: Option<String>,
        /// Raft log, ledger state and snapshots.
        #[arg(long, env = "OPENGRID_LEDGER_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// The replica's identity key file (created when absent; default
        /// `<data-dir>/identity.key`): its DID is the replica's identity in the group.
        #[arg(long, env = "OPENGRID_LEDGER_KEY_FILE")]
        key_file: Option<PathBuf>,
        /// Initial voters: `1=DID@host:port,2=DID@host:port,3=DID@host:port` (this replica's own
        /// entry may leave its DID out; empty: join later as learner).
        #[arg(long, env = "OPENGRID_LEDGER_PEERS")]
        peers: Option<String>,
        /// Snapshot every this many applied entries (default 1000).
        #[arg(long)]
        snapshot_every: Option<u64>,
        /// Account credited with the protocol share (default `protocol`).
        #[arg(long)]
        protocol_account: Option<String>,
        /// The ledger operator's DID (`opengrid ledger keygen` prints it): its key authorizes
        /// registrations and membership changes. Without one, all of them are refused.
        #[arg(long, env = "OPENGRID_LEDGER_OPERATOR")]
        operator: Option<String>,
        /// Exit when standard input closes (lets a parent process own the replica's lifetime).
        #[arg(long)]
        exit_on_stdin_eof: bool,
    },
    /// Print an account's balance in micro-units.
    Balance {
        account: String,
        /// Replica addresses, comma separated.
        #[arg(long, value_delimiter = ',')]
        addr: Vec<String>,
    },
    /// Print each replica's status and ledger totals as JSON lines.
    Status {
        #[arg(long, value_delimiter = ',')]
        addr: Vec<String>,
    },
    /// Print a receipt's status.
    Receipt {
        /// 32 hex digits.
        id: String,
        #[arg(long, value_delimiter = ',')]
        addr: Vec<String>,
    },
    /// Print a batch's record.
    Batch {
        /// 64 hex digits.
        id: String,
        #[arg(long, value_delimiter = ',')]
        addr: Vec<String>,
    },
    /// Create a key file (if absent) and print its DID.
    Keygen {
        #[arg(long)]
        key_file: PathBuf,
    },
    /// Register a node's key and split policy (signed with the node's key, authorized by the
    /// ledger operator's key).
    RegisterNode {
        #[arg(long)]
        key_file: PathBuf,
        /// The ledger operator's key file (must exist; `keygen` creates one).
        #[arg(long)]
        operator_key_file: PathBuf,
        /// interchange | nodeco | custom:NODE_OP,ROUTING_OP,PROTOCOL,OWNERS (basis points)
        #[arg(long, default_value = "interchange")]
        policy: String,
        #[arg(long)]
        operator: String,
        /// Owner share, `ACCOUNT=SHARES`; repeat for each owner.
        #[arg(long = "owner")]
        owners: Vec<String>,
        #[arg(long, value_delimiter = ',')]
        addr: Vec<String>,
    },
    /// Register an RC's key and routing operator account (signed with the RC's key, authorized
    /// by the ledger operator's key).
    RegisterRc {
        #[arg(long)]
        key_file: PathBuf,
        /// The ledger operator's key file (must exist).
        #[arg(long)]
        operator_key_file: PathBuf,
        #[arg(long)]
        operator: String,
        #[arg(long, value_delimiter = ',')]
        addr: Vec<String>,
    },
    /// Add a replica to the group as a learner (authorized by the ledger operator's key).
    AddLearner {
        /// Raft id of the new replica.
        #[arg(long)]
        id: NodeId,
        /// Its address, host:port.
        #[arg(long)]
        learner_addr: String,
        /// Its DID (`keygen --key-file` on its key file prints it): the key it must prove.
        #[arg(long)]
        learner_did: String,
        /// The ledger operator's key file (must exist).
        #[arg(long)]
        operator_key_file: PathBuf,
        #[arg(long, value_delimiter = ',')]
        addr: Vec<String>,
    },
    /// Make exactly these replicas the voters (authorized by the ledger operator's key).
    ChangeMembership {
        /// Raft ids, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        voters: Vec<NodeId>,
        /// The ledger operator's key file (must exist).
        #[arg(long)]
        operator_key_file: PathBuf,
        #[arg(long, value_delimiter = ',')]
        addr: Vec<String>,
    },
}

/// A client connecting as `key`, or as a throwaway key for read-only commands.
fn client(addr: Vec<String>, key: Option<&Keypair>) -> anyhow::Result<LedgerClient> {
    anyhow::ensure!(
        !addr.is_empty(),
        "--addr: give at least one replica address"
    );
    let throwaway;
    let key = match key {
        Some(k) => k,
        None => {
            throwaway = Keypair::generate();
            &throwaway
        }
    };
    Ok(LedgerClient::with_timeout(
        addr,
        Duration::from_secs(15),
        key,
    )?)
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(v)?);
    Ok(())
}

async fn shutdown_signal(exit_on_stdin_eof: bool) {
    let stdin_eof = async {
        if exit_on_stdin_eof {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 64];
            let mut stdin = tokio::io::stdin();
            while let Ok(n) = stdin.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        } else {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        #[cfg(unix)]
        {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        }
        #[cfg(not(unix))]
        std::future::pending::<()>().await;
    };
    tokio::select! {
        _ = stdin_eof => tracing::info!("stdin closed; stopping"),
        _ = term => tracing::info!("SIGTERM; stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT; stopping"),
    }
}

/// Prints a registration answer; a refused registration is an error (non-zero exit) naming why.
fn registered(resp: LedgerResponse) -> anyhow::Result<()> {
    print_json(&resp)?;
    match resp {
        LedgerResponse::RegistrationRejected(e) => anyhow::bail!("registration refused: {e}"),
        _ => Ok(()),
    }
}

/// Run one ledger subcommand.
pub async fn run(cmd: LedgerCmd) -> anyhow::Result<()> {
    match cmd {
        LedgerCmd::Replica {
            config,
            id,
            addr,
            data_dir,
            key_file,
            peers,
            snapshot_every,
            protocol_account,
            operator,
            exit_on_stdin_eof,
        } => {
            let mut cfg = LedgerConfig::load(config.as_deref())?;
            if let Some(id) = id {
                cfg.id = id;
            }
            if let Some(addr) = addr {
                cfg.addr = addr;
            }
            if let Some(d) = data_dir {
                cfg.data_dir = d;
            }
            if let Some(k) = key_file {
                cfg.key_file = k;
            }
            if let Some(p) = peers {
                cfg.set_peers_flag(&p);
            }
            if let Some(n) = snapshot_every {
                cfg.snapshot_every = n;
            }
            if let Some(a) = protocol_account {
                cfg.protocol_account = a;
            }
            if let Some(o) = operator {
                cfg.operator = o;
            }
            let opts = cfg.replica_options()?;
            run_replica(opts, shutdown_signal(exit_on_stdin_eof)).await?;
        }
        LedgerCmd::Balance { account, addr } => {
            let b = client(addr, None)?.balance(&Account::new(account)?).await?;
            println!("{b}");
        }
        LedgerCmd::Status { addr } => {
            let c = client(addr.clone(), None)?;
            for a in &addr {
                match c.replica_status(a).await {
                    Ok(s) => print_json(&s)?,
                    Err(e) => {
                        print_json(&serde_json::json!({ "addr": a, "error": e.to_string() }))?
                    }
                }
            }
        }
        LedgerCmd::Receipt { id, addr } => {
            let id = ReceiptId(crate::ledger::parse_hex::<16>(&id).map_err(anyhow::Error::msg)?);
            print_json(&client(addr, None)?.receipt_status(id).await?)?;
        }
        LedgerCmd::Batch { id, addr } => {
            let id: BatchId = id.parse().map_err(anyhow::Error::msg)?;
            print_json(&client(addr, None)?.batch_status(id).await?)?;
        }
        LedgerCmd::Keygen { key_file } => {
            println!("{}", Keypair::load_or_create(&key_file)?.did());
        }
        LedgerCmd::RegisterNode {
            key_file,
            operator_key_file,
            policy,
            operator,
            owners,
            addr,
        } => {
            let key = Keypair::load_or_create(&key_file)?;
            let policy = SplitPolicy::parse(&policy).map_err(anyhow::Error::msg)?;
            let owners = owners
                .iter()
                .map(|o| {
                    let (a, s) = o
                        .split_once('=')
                        .ok_or_else(|| anyhow::anyhow!("--owner `{o}`: expected ACCOUNT=SHARES"))?;
                    Ok((
                        Account::new(a)?,
                        s.parse::<u64>().map_err(|_| {
                            anyhow::anyhow!("--owner `{o}`: shares must be an integer")
                        })?,
                    ))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let ledger_op = Keypair::load(&operator_key_file)?;
            let reg = NodeRegistration::new(&key, policy, Account::new(operator)?, owners)
                .authorize(&ledger_op);
            registered(client(addr, Some(&ledger_op))?.register_node(reg).await?)?;
        }
        LedgerCmd::RegisterRc {
            key_file,
            operator_key_file,
            operator,
            addr,
        } => {
            let key = Keypair::load_or_create(&key_file)?;
            let ledger_op = Keypair::load(&operator_key_file)?;
            let reg = RcRegistration::new(&key, Account::new(operator)?).authorize(&ledger_op);
            registered(client(addr, Some(&ledger_op))?.register_rc(reg).await?)?;
        }
        LedgerCmd::AddLearner {
            id,
            learner_addr,
            learner_did,
            operator_key_file,
            addr,
        } => {
            let ledger_op = Keypair::load(&operator_key_file)?;
            let did: crate::did::Did = learner_did
                .parse()
                .map_err(|e| anyhow::anyhow!("--learner-did `{learner_did}`: {e}"))?;
            client(addr, Some(&ledger_op))?
                .add_learner(id, learner_addr.clone(), did, &ledger_op)
                .await?;
            print_json(&serde_json::json!({ "learner_added": id, "addr": learner_addr }))?;
        }
        LedgerCmd::ChangeMembership {
            voters,
            operator_key_file,
            addr,
        } => {
            let ledger_op = Keypair::load(&operator_key_file)?;
            let voters: std::collections::BTreeSet<NodeId> = voters.into_iter().collect();
            client(addr, Some(&ledger_op))?
                .change_membership(voters.clone(), &ledger_op)
                .await?;
            print_json(&serde_json::json!({ "voters": voters }))?;
        }
    }
    Ok(())
}

//! `opengrid agent …`: developer keys, building, signing and pushing agent packages, and the
//! RC's registry (ADR 0030).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use serde_json::Value;

use crate::cli::{field, operator_hint, OperatorAuth};

/// How long a push may take (the RC compile-checks the package).
const PUSH_TIMEOUT: Duration = Duration::from_secs(300);

/// `opengrid agent` subcommands.
#[derive(Debug, Subcommand)]
pub enum AgentCmd {
    /// Create a developer signing key (ed25519, file mode 0600) and print its DID (list it in
    /// the RC's `agent_publishers` to restrict who may publish).
    Keygen {
        /// Key file to create (refused if it exists).
        #[arg(long)]
        out: PathBuf,
    },
    /// Build a package from a directory (`agent.toml` + the component it names), sign it with
    /// the developer key and push it to the RC; prints name, version and hash.
    Push {
        /// The agent directory.
        dir: PathBuf,
        /// The developer key file (`opengrid agent keygen`).
        #[arg(long, env = "OPENGRID_DEVELOPER_KEY")]
        developer_key: PathBuf,
        /// RC client-API base URL.
        #[arg(long, default_value = "http://127.0.0.1:7600")]
        rc: String,
        #[command(flatten)]
        auth: OperatorAuth,
    },
    /// The colony's agents: name, latest version, skills.
    List {
        /// RC client-API base URL.
        #[arg(long, default_value = "http://127.0.0.1:7600")]
        rc: String,
        /// Raw JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        auth: OperatorAuth,
    },
    /// One agent: latest version and every version (JSON).
    Show {
        /// Agent name.
        name: String,
        /// RC client-API base URL.
        #[arg(long, default_value = "http://127.0.0.1:7600")]
        rc: String,
        #[command(flatten)]
        auth: OperatorAuth,
    },
    /// One agent's versions.
    Versions {
        /// Agent name.
        name: String,
        /// RC client-API base URL.
        #[arg(long, default_value = "http://127.0.0.1:7600")]
        rc: String,
        /// Raw JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        auth: OperatorAuth,
    },
    /// Retire a version: new sessions no longer get it; live sessions keep it.
    Retire {
        /// Agent name.
        name: String,
        /// Version.
        version: String,
        /// RC client-API base URL.
        #[arg(long, default_value = "http://127.0.0.1:7600")]
        rc: String,
        #[command(flatten)]
        auth: OperatorAuth,
    },
}

/// Runs one `opengrid agent` command.
pub async fn run(cmd: AgentCmd) -> anyhow::Result<()> {
    match cmd {
        AgentCmd::Keygen { out } => {
            let key = opengrid_session::keyfile::create(&out)
                .with_context(|| format!("create {}", out.display()))?;
            let did = opengrid_session::Did::from_public_key(&key.verifying_key());
            println!("{did}");
            Ok(())
        }
        AgentCmd::Push {
            dir,
            developer_key,
            rc,
            auth,
        } => {
            let key = opengrid_session::keyfile::load(&developer_key)
                .with_context(|| format!("developer key {}", developer_key.display()))?;
            let package = opengrid_wasm::Package::from_dir(&dir)
                .with_context(|| format!("build the package from {}", dir.display()))?;
            let client = auth.client(&rc)?;
            // Models and assets first: the RC refuses a package whose blobs it lacks.
            for (hash, path) in &package.files {
                let bytes = tokio::fs::read(path)
                    .await
                    .with_context(|| format!("read {}", path.display()))?;
                let v = client
                    .send_bytes(
                        reqwest::Method::PUT,
                        &format!("/blobs/{hash}"),
                        bytes,
                        PUSH_TIMEOUT,
                    )
                    .await
                    .map_err(operator_hint)
                    .with_context(|| format!("upload {}", path.display()))?;
                eprintln!(
                    "{} {hash}{}",
                    path.display(),
                    if v.get("created") == Some(&Value::Bool(false)) {
                        " (already uploaded)"
                    } else {
                        " uploaded"
                    }
                );
            }
            let package = package.sign(&key);
            let v = client
                .post_bytes("/agents", package.to_bytes(), PUSH_TIMEOUT)
                .await
                .map_err(operator_hint)
                .context("push")?;
            println!(
                "{}@{} {}{}",
                field(&v, "name"),
                field(&v, "version"),
                field(&v, "hash"),
                if v.get("created") == Some(&Value::Bool(false)) {
                    " (already pushed)"
                } else {
                    ""
                }
            );
            Ok(())
        }
        AgentCmd::List { rc, json, auth } => {
            let v = auth
                .client(&rc)?
                .get("/agents")
                .await
                .map_err(operator_hint)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            for a in v["agents"].as_array().into_iter().flatten() {
                let skills: Vec<&str> = a["skills"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                println!(
                    "{}\t{}\t{}",
                    field(a, "name"),
                    a["latest"].as_str().unwrap_or("(all retired)"),
                    skills.join(",")
                );
            }
            Ok(())
        }
        AgentCmd::Show { name, rc, auth } => {
            let v = auth
                .client(&rc)?
                .get(&format!("/agents/{name}"))
                .await
                .map_err(operator_hint)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        AgentCmd::Versions {
            name,
            rc,
            json,
            auth,
        } => {
            let v = auth
                .client(&rc)?
                .get(&format!("/agents/{name}/versions"))
                .await
                .map_err(operator_hint)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            for x in v["versions"].as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\t{}",
                    field(x, "version"),
                    field(x, "hash"),
                    if x["retired"] == Value::Bool(true) {
                        "retired"
                    } else {
                        "live"
                    }
                );
            }
            Ok(())
        }
        AgentCmd::Retire {
            name,
            version,
            rc,
            auth,
        } => {
            auth.client(&rc)?
                .post_bytes(
                    &format!("/agents/{name}/{version}/retire"),
                    Vec::new(),
                    Duration::from_secs(30),
                )
                .await
                .map_err(operator_hint)?;
            println!("{name}@{version} retired");
            Ok(())
        }
    }
}

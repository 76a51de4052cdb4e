//! `opengrid-ledger`: thin wrapper over `opengrid_settlement::cli`.

use std::io::IsTerminal;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr)
        .init();
    let opts = opengrid_settlement::cli::Opts::parse();
    opengrid_settlement::cli::run(opts.cmd).await
}

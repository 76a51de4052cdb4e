//! `opengrid-chaos`: see the `opengrid_chaos` library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let opts = opengrid_chaos::Opts::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("opengrid-chaos: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result: anyhow::Result<i32> = rt.block_on(async {
        opengrid_chaos::launcher::install_signal_cleanup()?;
        Ok(opengrid_chaos::run(opts).await?)
    });
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("opengrid-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

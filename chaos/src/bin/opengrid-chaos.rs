//! `opengrid-chaos`: see the `opengrid_chaos` library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let opts = opengrid_chaos::Opts::parse();
    opengrid_cluster::cli::init_logging(false, "warn");
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

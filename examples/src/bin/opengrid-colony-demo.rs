//! `opengrid-colony-demo [--keep]`: a local grid of real `opengrid` processes (see
//! `opengrid_examples::colony_demo`).

use std::process::ExitCode;

fn main() -> ExitCode {
    let keep = match std::env::args().skip(1).collect::<Vec<_>>().as_slice() {
        [] => false,
        [k] if k == "--keep" => true,
        other => {
            eprintln!("usage: opengrid-colony-demo [--keep]   (got {other:?})");
            return ExitCode::from(2);
        }
    };
    opengrid_cluster::cli::init_logging(false, "warn");
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(opengrid_examples::colony_demo::run(keep)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

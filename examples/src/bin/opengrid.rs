//! The `opengrid` binary: the node/RC command line of `opengrid-cluster` with the example
//! handlers linked in (see docs/adr/0003-binary-location.md).

use std::process::ExitCode;
use std::sync::Arc;

use opengrid_examples::{counter::Counter, tutor::Tutor};

fn main() -> ExitCode {
    opengrid_cluster::cli::main_with(|host| {
        host.register(Arc::new(Tutor));
        host.register(Arc::new(Counter));
    })
}

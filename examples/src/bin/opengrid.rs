//! The `opengrid` binary: the node/RC command line of `opengrid-cluster` with the example
//! handlers linked in (see docs/adr/0003-binary-location.md), and the services they take from a
//! node's inference plane (the tutor's intent classifier).

use std::process::ExitCode;

fn main() -> ExitCode {
    opengrid_cluster::cli::main_with_services(
        opengrid_examples::register_handlers,
        opengrid_examples::node_services,
    )
}

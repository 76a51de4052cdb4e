//! # opengrid-chaos
//!
//! The chaos harness: proves on a real cluster that nothing is lost when things break.
//!
//! - [`proxy`]: a fault-injecting TCP proxy placed on every directed link between processes
//!   (partition, latency + jitter, loss, bandwidth), no privileges needed;
//! - [`scenario`]: versioned TOML scenario files and their seeded, deterministic fault schedule;
//! - [`launcher`]: starts, kills (-9), pauses and resumes child processes, captures their logs,
//!   and never leaves a stray process behind;
//! - [`invariants`]: pure checkers over the records a run produces;
//! - [`report`]: the human table and the JSON report, with the command that reproduces the run;
//! - [`percentiles`]: p50 / p99 / max of latency samples (HdrHistogram), for reports and benches;
//! - [`colony_run`]: `run <scenario>` / `suite` against a real colony (`opengrid` RC + nodes),
//!   with a seeded workload of counter sessions and the checkers over what it recorded (a folder:
//!   starting the colony, workload, faults, observation, records, checks, ledger);
//! - [`fuzz`]: malformed bytes, frames and HTTP requests on listening ports (the `fuzz` fault);
//! - [`bench`](mod@bench): the layer benches (`bench checkpoint`, `bench handover
//!   --replica-servers`), run against [`replica_server`] children (SessionHost + RocksDB +
//!   MigrationServer processes, no node API or RC: the floor under the node figures);
//!   [`isolation`] (`bench isolation`) runs the `opengrid` RC and node binaries;
//!   [`bench_colony`] (`bench failover`, and `bench handover` by default) runs an `opengrid`
//!   RC and nodes and drives them through the client API;
//!   [`bench_settlement`] (`bench settlement`) runs three ledger replica processes and, when
//!   installed, a 3-member etcd cluster as the baseline (a folder: ledger group, writes, etcd,
//!   receipts, machine, report).
//!
//! Plane: none of its own — it drives the other planes from outside, through binaries and ports.

pub mod availability;
pub mod bench;
pub mod bench_colony;
pub mod bench_settlement;
pub mod cli;
pub mod colony_run;
pub mod fuzz;
pub mod invariants;
pub mod isolation;
pub mod launcher;
pub mod percentiles;
pub mod proxy;
pub mod replica_server;
pub mod report;
pub mod scenario;

pub use cli::{run, Opts};

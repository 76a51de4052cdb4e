#!/usr/bin/env bash
# Runs the OpenGrid demo from a fresh machine: installs what it needs (idempotent), builds, runs.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/env.sh
source scripts/env.sh
og_setup
og_log "building the demo (first build compiles RocksDB: ~15-25 min on 2 cores)"
cargo build -p opengrid-examples --bin opengrid-demo
RUST_BACKTRACE=0 "$CARGO_TARGET_DIR/debug/opengrid-demo" "$@"

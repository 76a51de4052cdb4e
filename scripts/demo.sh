#!/usr/bin/env bash
# Runs the OpenGrid demo from a fresh machine: installs what it needs (idempotent), builds, runs.
#  1. `opengrid-colony-demo`: a local colony — one RC and three node processes on 127.0.0.1 — places tutor
#     sessions by jurisdiction and talks to them through the client API.
#  2. `opengrid-demo`: a handler crash restarted from its checkpoint, hibernation, and a live
#     handover of a session between two nodes over TCP (make-before-break, X2 forwarding).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/env.sh
scripts/install-deps.sh build
source scripts/env.sh
og_setup
og_log "building (first build compiles RocksDB: ~15-25 min on 2 cores)"
cargo build -p opengrid-examples --bins
export RUST_BACKTRACE=0
"$CARGO_TARGET_DIR/debug/opengrid-colony-demo"
echo
"$CARGO_TARGET_DIR/debug/opengrid-demo"

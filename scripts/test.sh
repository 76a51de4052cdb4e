#!/usr/bin/env bash
# Runs the whole test suite from a fresh machine: installs what it needs (idempotent), builds the
# workspace once (debug profile only), runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/env.sh
source scripts/env.sh
og_setup
og_log "building workspace (first build compiles RocksDB: ~15-25 min on 2 cores; later builds are incremental)"
cargo build --workspace --all-targets
args=()
for a in "$@"; do
  case "$a" in
    # Accepted for old invocations: the 3-process ledger test always runs now.
    --ledger-processes) ;;
    *) args+=("$a") ;;
  esac
done
og_log "running tests"
RUST_BACKTRACE=0 cargo test --workspace --no-fail-fast "${args[@]}"

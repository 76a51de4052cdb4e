#!/usr/bin/env bash
# Runs the whole test suite from a fresh machine: installs what it needs (idempotent), builds the
# workspace once (debug profile only), runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh build test
# shellcheck source=scripts/env.sh
source scripts/env.sh
og_setup
og_log "building workspace (first build compiles RocksDB: ~15-25 min on 2 cores; later builds are incremental)"
cargo build --workspace --all-targets
# The example agents as WebAssembly components (Rust via the guest SDK, Python via
# componentize-py; ADR 0028): the wasm runtime's tests and the agent process tests load them.
og_log "building the example agents (scripts/build-agents.sh)"
scripts/build-agents.sh >/dev/null
# The handler SDK (opengrid-actors) must build without RocksDB, ort and libp2p (ADR 0012).
scripts/check-sdk-deps.sh
# Operator packaging: systemd units verified, config samples = `opengrid init` output (ADR 0019).
scripts/check-packaging.sh "${CARGO_TARGET_DIR:-target}/debug/opengrid"
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
# The handler-only example builds on the SDK alone (its own workspace and Cargo.lock; ADR 0012).
og_log "testing examples/handler-only (opengrid-actors without default features)"
(cd examples/handler-only && cargo test --locked)
bin_dir="${CARGO_TARGET_DIR:-target}/debug"
# The Python client (clients/python) and the MCP/A2A gateway with the official client SDKs, against
# real `opengrid` processes, and the rows of scripts/bench.sh; one pytest run per suite.
for suite in clients/python/tests tests/protocols tests/bench; do
  og_log "pytest $suite"
  OPENGRID_BIN="$bin_dir/opengrid" "$OPENGRID_VENV/bin/python" -m pytest -q -p no:cacheprovider "$suite"
done
# The dashboard in a real browser (Debian's headless chromium + chromedriver, selenium from the
# venv) against a real colony; screenshots and process logs in artifacts/dashboard/.
# OPENGRID_SKIP_BROWSER=1 skips it.
if [ "${OPENGRID_SKIP_BROWSER:-0}" != "1" ]; then
  og_log "browser test of the dashboard (tests/browser/dashboard.py)"
  "$OPENGRID_VENV/bin/python" tests/browser/dashboard.py --bin "$bin_dir/opengrid"
fi
# The operator tarball (debug build: CI builds one profile) and the README quick start run
# verbatim from it: RC + 3 nodes, a session, an input. OPENGRID_SKIP_PACKAGING=1 skips it.
if [ "${OPENGRID_SKIP_PACKAGING:-0}" != "1" ]; then
  og_log "packaging the debug build and running the operator quick start from the tarball"
  tarball="$(scripts/release.sh --profile debug | tail -n 1)"
  scripts/operator-smoke.sh "$tarball"
fi
# The chaos short suite against real `opengrid` processes (fixed seeds, well under 5 min).
# OPENGRID_SKIP_CHAOS=1 skips it (e.g. while iterating on one crate).
if [ "${OPENGRID_SKIP_CHAOS:-0}" != "1" ]; then
  og_log "running the chaos short suite (opengrid-chaos suite --short)"
  "$bin_dir/opengrid-chaos" suite --short --bin "$bin_dir/opengrid"
fi

#!/usr/bin/env bash
# Builds the example agent packages' components (ADR 0028), idempotently:
#   counter-rs, hostile-rs, primes-rs
#                           Rust agents (actors/wasm/guest SDK), cargo --release --target wasm32-wasip2
#                           in $CARGO_TARGET_DIR/agents (their own workspaces, excluded from the node's);
#   counter-py              examples/agents/counter-py/app.py through componentize-py (from the venv
#                           scripts/setup-python.sh manages; this script runs it, which is idempotent).
# The components are copied to $CARGO_TARGET_DIR/agents/out/{counter-rs,hostile-rs,primes-rs,counter-py}.wasm;
# their paths are printed on stdout, one a line (everything else goes to stderr).
#
# Environment:
#   CARGO_TARGET_DIR   build dir (default: ~/.cache/opengrid-target, as scripts/env.sh)
#   OPENGRID_VENV      the Python venv (default: set by scripts/setup-python.sh)
set -euo pipefail

log() { printf 'build-agents: %s\n' "$*" >&2; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$HOME/.cache/opengrid-target}/agents"
out="$target/out"
wit="$root/actors/wasm/wit"
mkdir -p "$out"

# 1. The Rust target.
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx wasm32-wasip2; then
  log "adding the wasm32-wasip2 target"
  rustup target add wasm32-wasip2 >&2
fi

# 2. Rust agents (cargo is incremental: a no-op when nothing changed).
for agent in counter-rs hostile-rs primes-rs; do
  log "building $agent"
  (cd "$root/examples/agents/$agent" \
    && CARGO_TARGET_DIR="$target" cargo build --quiet --release --locked --target wasm32-wasip2 >&2)
  cp -f "$target/wasm32-wasip2/release/${agent//-/_}.wasm" "$out/$agent.wasm.tmp"
  mv -f "$out/$agent.wasm.tmp" "$out/$agent.wasm"
done

# 3. The Python agent (rebuilt only when its sources, the WIT or componentize-py changed).
exports="$(bash "$root/scripts/setup-python.sh")"
eval "$exports"
componentize="$OPENGRID_VENV/bin/componentize-py"
if [[ ! -x "$componentize" ]]; then
  log "componentize-py not found at $componentize (scripts/setup-python.sh installs it)"
  exit 1
fi
py_src="$root/examples/agents/counter-py"
stamp_now="$( (cat "$py_src"/*.py "$wit"/*.wit; "$componentize" --version) | sha256sum | cut -d' ' -f1)"
stamp="$out/counter-py.stamp"
if [[ -s "$out/counter-py.wasm" && "$(cat "$stamp" 2>/dev/null || true)" == "$stamp_now" ]]; then
  log "counter-py up to date"
else
  log "building counter-py with $("$componentize" --version)"
  "$componentize" -d "$wit" -w agent componentize -p "$py_src" app -o "$out/counter-py.wasm.tmp" >&2
  mv -f "$out/counter-py.wasm.tmp" "$out/counter-py.wasm"
  printf '%s' "$stamp_now" >"$stamp"
fi

# 4. Each pushable example gets its component as agent.wasm beside its agent.toml (gitignored),
#    so `opengrid agent push examples/agents/<agent>` finds it (ADR 0030).
for agent in counter-rs primes-rs counter-py; do
  cp -f "$out/$agent.wasm" "$root/examples/agents/$agent/agent.wasm.tmp"
  mv -f "$root/examples/agents/$agent/agent.wasm.tmp" "$root/examples/agents/$agent/agent.wasm"
done

for agent in counter-rs hostile-rs primes-rs counter-py; do
  printf '%s\n' "$out/$agent.wasm"
done

#!/usr/bin/env bash
# Builds the example agent packages' components (ADR 0028), idempotently:
#   counter-rs, hostile-rs, primes-rs, effects-rs, assistant-rs
#                           Rust agents (actors/wasm/guest SDK), cargo --release --target wasm32-wasip2
#                           in $CARGO_TARGET_DIR/agents (their own workspaces, excluded from the node's);
#                           effects-rs and assistant-rs speak opengrid:agent@0.2.0 (SDK feature
#                           `effects`), the others 0.1.0 (ADR 0034);
#   counter-py, effects-py  examples/agents/<agent>/app.py through componentize-py (from the venv
#                           scripts/setup-python.sh manages; this script runs it, which is idempotent),
#                           against the world of the version the agent's agent.toml declares:
#                           counter-py `opengrid:agent/agent@0.1.0`, effects-py `opengrid:agent/agent@0.2.0`.
# The components are copied to $CARGO_TARGET_DIR/agents/out/<agent>.wasm; their paths are printed
# on stdout, one a line (everything else goes to stderr).
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
rust_agents=(counter-rs hostile-rs primes-rs effects-rs assistant-rs)
py_agents=(counter-py effects-py)
for agent in "${rust_agents[@]}"; do
  log "building $agent"
  (cd "$root/examples/agents/$agent" \
    && CARGO_TARGET_DIR="$target" cargo build --quiet --release --locked --target wasm32-wasip2 >&2)
  cp -f "$target/wasm32-wasip2/release/${agent//-/_}.wasm" "$out/$agent.wasm.tmp"
  mv -f "$out/$agent.wasm.tmp" "$out/$agent.wasm"
done

# 3. The Python agents (each rebuilt only when its sources, the WIT or componentize-py changed),
#    against the world of the interface version its agent.toml declares.
exports="$(bash "$root/scripts/setup-python.sh")"
eval "$exports"
componentize="$OPENGRID_VENV/bin/componentize-py"
if [[ ! -x "$componentize" ]]; then
  log "componentize-py not found at $componentize (scripts/setup-python.sh installs it)"
  exit 1
fi
for agent in "${py_agents[@]}"; do
  py_src="$root/examples/agents/$agent"
  version="$(sed -n 's/^interface = "opengrid:agent@\([0-9.]*\)"$/\1/p' "$py_src/agent.toml")"
  if [[ -z "$version" ]]; then
    log "$py_src/agent.toml declares no interface = \"opengrid:agent@<version>\""
    exit 1
  fi
  world="opengrid:agent/agent@$version"
  stamp_now="$( (cat "$py_src"/*.py; find "$wit" -name '*.wit' | sort | xargs cat; echo "$world"; "$componentize" --version) | sha256sum | cut -d' ' -f1)"
  stamp="$out/$agent.stamp"
  if [[ -s "$out/$agent.wasm" && "$(cat "$stamp" 2>/dev/null || true)" == "$stamp_now" ]]; then
    log "$agent up to date"
  else
    log "building $agent ($world) with $("$componentize" --version)"
    "$componentize" -d "$wit" -w "$world" componentize -p "$py_src" app -o "$out/$agent.wasm.tmp" >&2
    mv -f "$out/$agent.wasm.tmp" "$out/$agent.wasm"
    printf '%s' "$stamp_now" >"$stamp"
  fi
done

# 4. Each pushable example gets its component as agent.wasm beside its agent.toml (gitignored),
#    so `opengrid agent push examples/agents/<agent>` finds it (ADR 0030).
for agent in counter-rs primes-rs assistant-rs counter-py; do
  cp -f "$out/$agent.wasm" "$root/examples/agents/$agent/agent.wasm.tmp"
  mv -f "$root/examples/agents/$agent/agent.wasm.tmp" "$root/examples/agents/$agent/agent.wasm"
done

for agent in "${rust_agents[@]}" "${py_agents[@]}"; do
  printf '%s\n' "$out/$agent.wasm"
done

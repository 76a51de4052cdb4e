# Sourced by scripts/demo.sh, scripts/test.sh and .ci/run: sets up the Rust components and the
# Python venv (user-level, idempotent) and exports the environment. Safe to source many times.
# System packages: scripts/install-deps.sh.
#
#   CARGO_TARGET_DIR  persistent build dir outside the clone (default: ~/.cache/opengrid-target),
#                     so later runs and CI build incrementally.
#   OPENGRID_SKIP_APT=1   skip the system-package check (machines where packages are managed
#                         elsewhere). Packages are installed by scripts/install-deps.sh only.

og_log() { printf '\033[1m[opengrid]\033[0m %s\n' "$*" >&2; }

og_setup() {
  local root
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/opengrid-target}"
  export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
  mkdir -p "$CARGO_TARGET_DIR"

  # 1. System packages are installed by scripts/install-deps.sh (test.sh and demo.sh call it);
  #    here only a check, so a build never installs anything behind the caller's back.
  if [ "${OPENGRID_SKIP_APT:-0}" != 1 ] && command -v dpkg >/dev/null \
    && ! dpkg -s libclang-dev >/dev/null 2>&1; then
    og_log "libclang-dev is missing (RocksDB's bindgen needs it): run scripts/install-deps.sh"
    return 1
  fi

  # 2. Rust: the machine's toolchain plus rustfmt and clippy.
  if ! command -v cargo >/dev/null; then
    og_log "cargo not found: install Rust (https://rustup.rs) first"; return 1
  fi
  if command -v rustup >/dev/null; then
    rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt >&2 || true
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy >&2 || true
  fi

  # 3. ONNX Runtime (inference plane): a venv with the onnxruntime wheel provides the dylib;
  #    the test models are generated locally, nothing is downloaded at run time.
  if [ -x "$root/scripts/setup-python.sh" ] || [ -f "$root/scripts/setup-python.sh" ]; then
    local exports
    exports="$(bash "$root/scripts/setup-python.sh")" || { og_log "python/onnxruntime setup failed"; return 1; }
    eval "$exports"
  fi
  og_log "target dir: $CARGO_TARGET_DIR"
}

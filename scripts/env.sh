# Sourced by scripts/demo.sh and scripts/test.sh: installs what the build needs, idempotently, and
# exports the environment. Safe to source many times.
#
#   CARGO_TARGET_DIR  persistent build dir outside the clone (default: ~/.cache/opengrid-target),
#                     so later runs and CI build incrementally.
#   OPENGRID_SKIP_APT=1   skip the apt step (machines where system packages are managed elsewhere).
#   OPENGRID_BENCH_DEPS=1 also install what the benches compare against (Debian's etcd-server and
#                         etcd-client for `opengrid-chaos bench settlement`); off for tests.

og_log() { printf '\033[1m[opengrid]\033[0m %s\n' "$*" >&2; }

og_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }

og_setup() {
  local root
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/opengrid-target}"
  export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
  mkdir -p "$CARGO_TARGET_DIR"

  # 1. System packages: libclang for rocksdb's bindgen, a C++ compiler for RocksDB itself,
  #    python3-venv for the ONNX Runtime wheel.
  if [ "${OPENGRID_SKIP_APT:-0}" != 1 ]; then
    local missing=""
    for p in libclang-dev clang g++ python3-venv; do
      dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
      og_log "installing system packages:$missing"
      og_root apt-get update -qq >&2
      # shellcheck disable=SC2086
      DEBIAN_FRONTEND=noninteractive og_root apt-get install -y -qq $missing >&2
    fi
  fi

  # 1b. Optional bench baselines (never for the test command): etcd 3-member cluster for P8.
  if [ "${OPENGRID_SKIP_APT:-0}" != 1 ] && [ "${OPENGRID_BENCH_DEPS:-0}" = 1 ] \
    && ! command -v etcd >/dev/null; then
    og_log "installing bench baselines: etcd-server etcd-client"
    og_root apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive og_root apt-get install -y -qq etcd-server etcd-client >&2 \
      || og_log "etcd install failed; bench settlement will report etcd as skipped"
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

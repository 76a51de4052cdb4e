#!/usr/bin/env bash
# Installs the Debian packages OpenGrid needs, and nothing else — the one script that touches the
# system. scripts/test.sh and scripts/demo.sh call it before they build; a plain build (cargo,
# scripts/release.sh) never installs anything.
#
#   scripts/install-deps.sh [build] [test] [bench]    (default: build)
#     build  libclang-dev clang g++ (RocksDB and its bindgen), python3-venv (ONNX Runtime venv)
#     test   chromium chromium-driver (the dashboard's browser test), curl jq (the operator
#            quick start, run verbatim from the tarball)
#     bench  etcd-server etcd-client (the settlement bench's baseline)
#
# Idempotent: installs only what is missing, and says what and why. As root it runs apt-get
# directly; otherwise it uses `sudo -n` (never a password prompt in the middle of a run) and, when
# that is not possible, stops with the exact command to run. OPENGRID_SKIP_APT=1 skips it all
# (machines whose packages are managed elsewhere).
set -euo pipefail

log() { printf '\033[1m[opengrid]\033[0m %s\n' "$*" >&2; }

if [ "${OPENGRID_SKIP_APT:-0}" = 1 ]; then
  exit 0
fi
if ! command -v dpkg >/dev/null || ! command -v apt-get >/dev/null; then
  log "not a Debian system: install the equivalents of the packages listed in $0 yourself"
  exit 0
fi

sets=("$@")
[ ${#sets[@]} -eq 0 ] && sets=(build)
wanted=()
for s in "${sets[@]}"; do
  case "$s" in
    build) wanted+=(libclang-dev clang g++ python3-venv) ;;
    test) wanted+=(chromium chromium-driver curl jq) ;;
    bench) wanted+=(etcd-server etcd-client) ;;
    *) log "unknown package set '$s' (build, test, bench)"; exit 2 ;;
  esac
done

missing=()
for p in "${wanted[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ]; then
  as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  log "missing Debian packages: ${missing[*]}"
  log "install them with:  sudo apt-get install -y ${missing[*]}   (then run this again)"
  exit 1
fi
log "installing Debian packages (${sets[*]}): ${missing[*]}"
"${as_root[@]}" apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq "${missing[@]}" >&2

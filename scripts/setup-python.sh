#!/usr/bin/env bash
# Sets up the Python side of the inference plane, idempotently:
#   1. a virtualenv at ${OPENGRID_VENV:-$HOME/.cache/opengrid-venv} with pinned onnxruntime, onnx,
#      numpy, selenium (the dashboard's browser test) and componentize-py (Python agent packages,
#      scripts/build-agents.sh, ADR 0028);
#   2. the small ONNX test/demo models and their numpy reference outputs in
#      ${OPENGRID_MODELS:-$HOME/.cache/opengrid-models} (regenerated only when missing or when
#      scripts/gen_models.py changed);
#   3. prints `export ORT_DYLIB_PATH=...` and `export OPENGRID_MODELS=...` on stdout.
#
# Everything else goes to stderr, so callers can do:   eval "$(scripts/setup-python.sh)"
#
# Environment:
#   OPENGRID_VENV        where the venv lives            (default: $HOME/.cache/opengrid-venv)
#   OPENGRID_MODELS      where the models are written    (default: $HOME/.cache/opengrid-models)
#   OPENGRID_ORT_FLAVOUR cpu | gpu: which wheel provides libonnxruntime.so (default: cpu). `gpu`
#                        installs onnxruntime-gpu, whose CUDA execution provider the runtime uses
#                        when a GPU and the CUDA libraries are present.
#   PYTHON               interpreter used to create the venv (default: python3)
set -euo pipefail

log() { printf 'setup-python: %s\n' "$*" >&2; }

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${OPENGRID_VENV:-$HOME/.cache/opengrid-venv}"
models="${OPENGRID_MODELS:-$HOME/.cache/opengrid-models}"
flavour="${OPENGRID_ORT_FLAVOUR:-cpu}"
python="${PYTHON:-python3}"

# ort 2.0.0-rc.10 speaks the ONNX Runtime 1.22 C API; keep the wheel on the same minor version.
ORT_VERSION="1.22.1"
ONNX_VERSION="1.18.0"
NUMPY_VERSION="2.2.6"
# The dashboard's browser test drives Debian's chromium through its chromedriver (no browser
# download: the driver path is given explicitly, so Selenium Manager never runs).
SELENIUM_VERSION="4.50.0"
# Python agents become components with componentize-py (its 0.25 line targets the component model
# wasmtime 48 runs; ADR 0028).
COMPONENTIZE_PY_VERSION="0.25.0"
# The protocol tests drive the colony with the official client SDKs (MCP, A2A) and test the
# Python client (clients/python, installed editable below) with pytest.
MCP_VERSION="2.3.0"
A2A_VERSION="1.3.0"
PYTEST_VERSION="8.4.2"
HTTPX_SSE_VERSION="0.4.3"
JSONSCHEMA_VERSION="4.25.1"

case "$flavour" in
  cpu) ort_pkg="onnxruntime==${ORT_VERSION}" ;;
  gpu) ort_pkg="onnxruntime-gpu==${ORT_VERSION}" ;;
  *) log "OPENGRID_ORT_FLAVOUR must be 'cpu' or 'gpu', got '$flavour'"; exit 2 ;;
esac
requirements="${ort_pkg} onnx==${ONNX_VERSION} numpy==${NUMPY_VERSION} selenium==${SELENIUM_VERSION} componentize-py==${COMPONENTIZE_PY_VERSION} mcp==${MCP_VERSION} a2a-sdk==${A2A_VERSION} pytest==${PYTEST_VERSION} httpx-sse==${HTTPX_SSE_VERSION} jsonschema==${JSONSCHEMA_VERSION}"

# 1. venv + pinned packages (re-installed only when the pin set changes).
if [[ ! -x "$venv/bin/python" ]]; then
  log "creating venv at $venv"
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv"
fi
stamp="$venv/.opengrid-requirements"
if [[ "$(cat "$stamp" 2>/dev/null || true)" != "$requirements" ]]; then
  log "installing $requirements"
  # The two wheels ship the same module; never keep both.
  if [[ "$flavour" == gpu ]]; then other=onnxruntime; else other=onnxruntime-gpu; fi
  "$venv/bin/python" -m pip uninstall -q -y "$other" >/dev/null 2>&1 || true
  # shellcheck disable=SC2086 # word splitting of the requirement list is intended
  "$venv/bin/python" -m pip install -q --disable-pip-version-check $requirements >&2
  printf '%s' "$requirements" >"$stamp"
else
  log "venv up to date ($requirements)"
fi

# The Python client from this checkout, editable (re-installed when its pyproject changes or the
# checkout moved).
client="$here/../clients/python"
client_stamp="$venv/.opengrid-client"
client_id="$(cd "$client" && pwd) $(sha256sum "$client/pyproject.toml" | cut -d' ' -f1)"
if [[ "$(cat "$client_stamp" 2>/dev/null || true)" != "$client_id" ]]; then
  log "installing the Python client (clients/python, editable)"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e "$client" >&2
  printf '%s' "$client_id" >"$client_stamp"
fi

# 2. models + references (regenerated when missing or when the generator changed).
gen="$here/gen_models.py"
gen_hash="$(sha256sum "$gen" | cut -d' ' -f1)"
model_stamp="$models/.gen_models.sha256"
need_gen=0
if [[ "$(cat "$model_stamp" 2>/dev/null || true)" != "$gen_hash" ]]; then
  need_gen=1
else
  for f in mlp.onnx mlp.reference.json text_classifier.onnx text_classifier.reference.json; do
    [[ -s "$models/$f" ]] || need_gen=1
  done
fi
if [[ "$need_gen" == 1 ]]; then
  log "generating models into $models"
  mkdir -p "$models"
  "$venv/bin/python" "$gen" --out "$models" >&2
  printf '%s' "$gen_hash" >"$model_stamp"
else
  log "models up to date in $models"
fi

# 3. locate the runtime library shipped inside the wheel.
dylib=""
for candidate in "$venv"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*; do
  if [[ -f "$candidate" ]]; then dylib="$candidate"; break; fi
done
if [[ -z "$dylib" ]]; then
  log "libonnxruntime.so not found under $venv/lib/python3*/site-packages/onnxruntime/capi/"
  exit 1
fi

printf 'export ORT_DYLIB_PATH=%q\n' "$dylib"
printf 'export OPENGRID_MODELS=%q\n' "$models"
printf 'export OPENGRID_VENV=%q\n' "$venv"

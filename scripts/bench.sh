#!/usr/bin/env bash
# Every P-row of BENCHMARKS.md in one pass (issue #20, ADR 0040): builds the release profile once,
# runs each row's bench with its same-run baseline, keeps each bench's JSON and log, and writes
# the table rows (scripts/bench_rows.py) to <out>/rows.md. Nothing here asserts a time: the rows
# say met / not met against the targets.
#
#   scripts/bench.sh [--out DIR] [--only P2,P8,...] [--skip P4,...] [--quick] [--etcd]
#                    [--profile P3,P8,...] [--no-build]
#
#   --out DIR      results (default: bench-results/<UTC date-time>, git-ignored)
#   --only/--skip  rows to run / leave out (P1 … P15, RCHA for the RC group's failover;
#                  P4-saturate: the 10-minute part of P4)
#   --quick        small counts: checks that every bench runs (minutes), not figures to record
#   --etcd         install Debian's etcd (scripts/install-deps.sh bench) for P8's baseline; without
#                  it P8 runs etcd when one is on PATH and reports it as skipped otherwise
#   --profile ROWS after the measured pass, run those rows again under `perf record -a` and keep
#                  the hottest symbols per process (<out>/profiles/<row>.txt): the "why" of a miss
#   --no-build     use the release binaries already built
#
# A quiet machine matters (these are 2-core VMs): the load average before each row is recorded
# in <out>/meta.json next to the commit and the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"

out="" only="" skip="" quick=0 etcd=0 profile="" build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    --skip) skip="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    --etcd) etcd=1; shift ;;
    --profile) profile="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

if [ "$etcd" = 1 ]; then scripts/install-deps.sh build bench; else scripts/install-deps.sh build; fi
# shellcheck source=scripts/env.sh
source scripts/env.sh
og_setup
eval "$(scripts/setup-python.sh)"

out="${out:-$root/bench-results/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out/json" "$out/log" "$out/bin"
rel="$CARGO_TARGET_DIR/release"

wanted() { # row → whether it runs
  local r="$1"
  if [ -n "$only" ] && [[ ",$only," != *",$r,"* ]]; then return 1; fi
  if [ -n "$skip" ] && [[ ",$skip," == *",$r,"* ]]; then return 1; fi
  return 0
}

if [ "$build" = 1 ]; then
  og_log "building release once (binaries, benches, example agents)"
  cargo build --release -p opengrid-examples -p opengrid-chaos --bins
  cargo bench --workspace --no-run
  scripts/build-agents.sh >/dev/null
fi
# Private copies: another build in the same target dir cannot swap a binary under a running bench.
cp "$rel/opengrid" "$rel/opengrid-chaos" "$out/bin/"
chaos="$out/bin/opengrid-chaos"
export OPENGRID_BIN_DIR="$out/bin"

# Counts: the issue's (full) or a smoke run (--quick).
if [ "$quick" = 1 ]; then
  n_handover=20 n_failover=100 n_checkpoint=200 n_isolation=200 n_api=4000 n_rcf=2
  n_density=20000 settle_args=(--count 10000 --settle-receipts 10000 --writes 2000)
  crit=(-- --quick) rcscale_args=(--nodes 500 --sessions 20000) saturate=0
else
  n_handover=1000 n_failover=1000 n_checkpoint=2000 n_isolation=2000 n_api=40000 n_rcf=20
  n_density=1000000 settle_args=(--count 100000 --settle-receipts 1000000 --settle-budget-s 120 --writes 20000)
  crit=() rcscale_args=(--nodes 10000 --sessions 1000000 --heartbeat-ms 1000 --load-rate 10000) saturate=1
fi
etcd_args=()
if ! command -v etcd >/dev/null && [ -z "${OPENGRID_ETCD:-}" ]; then etcd_args=(--no-etcd); fi

meta_rows=()
# run ROW NAME COMMAND…: stdout (JSON documents, criterion's text between) → json/ROW-NAME.out,
# stderr (progress) → log/ROW-NAME.log.
run() {
  local row="$1" name="$2"; shift 2
  local load; load="$(cut -d' ' -f1-3 /proc/loadavg)"
  og_log "$row $name (load $load): $*"
  local t0; t0=$(date +%s)
  local rc=0
  "$@" > "$out/json/$row-$name.out" 2> "$out/log/$row-$name.log" || rc=$?
  local took=$(( $(date +%s) - t0 ))
  meta_rows+=("{\"row\":\"$row\",\"bench\":\"$name\",\"load_before\":\"$load\",\"seconds\":$took,\"exit\":$rc}")
  if [ "$rc" != 0 ]; then og_log "$row $name failed (exit $rc): see $out/log/$row-$name.log"; fi
}
# Criterion's own estimates of a bench's groups, kept next to the JSON.
keep_criterion() {
  local row="$1"; shift
  for g in "$@"; do
    [ -d "$CARGO_TARGET_DIR/criterion/$g" ] && mkdir -p "$out/criterion" \
      && cp -r "$CARGO_TARGET_DIR/criterion/$g" "$out/criterion/" || true
  done
}
cbench() { cargo bench --workspace --bench "$@" ${crit[@]+"${crit[@]}"}; }

started="$(date -u +%FT%TZ)"
commit="$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo -dirty)"
wanted P1 && run P1 admission cbench admission
wanted P2 && run P2 handover "$chaos" bench handover --json --count "$n_handover" --budget-s 900
wanted P3 && run P3 failover "$chaos" bench failover --json --count "$n_failover"
if wanted P4; then
  run P4 suite "$chaos" suite --short --json --bin "$out/bin/opengrid"
  if [ "$saturate" = 1 ] && wanted P4-saturate; then
    run P4 saturate "$chaos" run chaos/scenarios/saturate.toml --json --bin "$out/bin/opengrid"
  fi
fi
if wanted P5; then
  run P5 isolation cbench isolation
  run P5 inference "$chaos" bench isolation --json --count "$n_isolation"
fi
wanted P6 && run P6 density env OPENGRID_DENSITY_N="$n_density" cargo bench --workspace --bench density
if wanted P7 || wanted P12; then
  run P7 session_input cbench session_input
  keep_criterion P7 p7_input_path p12_restart
fi
wanted P8 && run P8 settlement "$chaos" bench settlement --json "${settle_args[@]}" ${etcd_args[@]+"${etcd_args[@]}"}
wanted P9 && run P9 propagation cbench propagation
wanted P10 && run P10 batching cbench batching
wanted P11 && run P11 checkpoint "$chaos" bench checkpoint --json --count "$n_checkpoint"
if wanted P13; then
  run P13 api "$chaos" bench api --handler both --json --count "$n_api"
  run P13 agents "$chaos" bench agents --json
  run P13 handover "$chaos" bench handover --handler both --json --count "$(( n_handover / 5 ))"
  run P13 wasm cbench wasm
  keep_criterion P13 session_input instantiate
fi
wanted P14 && run P14 effects cbench effects
wanted P15 && run P15 rc-scale "$chaos" bench rc-scale --json "${rcscale_args[@]}"
wanted RCHA && run RCHA rc-failover "$chaos" bench rc-failover --json --count "$n_rcf"

# Profiles of the rows asked for (a second, instrumented run: its figures are not recorded).
for row in ${profile//,/ }; do
  mkdir -p "$out/profiles"
  case "$row" in
    P2) cmd=("$chaos" bench handover --json --count 100) ;;
    P3) cmd=("$chaos" bench failover --json --count "$n_failover") ;;
    P8) cmd=("$chaos" bench settlement --json --count 50000 --settle-receipts 0 --writes 20000 --no-etcd) ;;
    P11) cmd=("$chaos" bench checkpoint --json --count "$n_checkpoint") ;;
    P15) cmd=("$chaos" bench rc-scale --json "${rcscale_args[@]}") ;;
    P7) cmd=(cargo bench --workspace --bench session_input -- --quick p7_input_path) ;;
    *) og_log "no profile recipe for $row"; continue ;;
  esac
  og_log "profiling $row: perf record -a -g (${cmd[*]})"
  perf record -a -g -F 499 -o "$out/profiles/$row.data" -- "${cmd[@]}" \
    > "$out/profiles/$row.json" 2> "$out/profiles/$row.log" || true
  perf report -i "$out/profiles/$row.data" --no-children --sort comm --stdio -g none 2>/dev/null \
    | grep -v '^#' | grep -v '^$' | head -20 > "$out/profiles/$row.txt" || true
  { echo; echo "## hottest symbols"; perf report -i "$out/profiles/$row.data" --no-children \
      --sort comm,dso,sym --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -60; } \
    >> "$out/profiles/$row.txt" || true
  rm -f "$out/profiles/$row.data"
done

{
  printf '{"started":"%s","finished":"%s","commit":"%s","quick":%s,"machine":"%s","cpus":%s,"rows":[' \
    "$started" "$(date -u +%FT%TZ)" "$commit" \
    "$([ "$quick" = 1 ] && echo true || echo false)" \
    "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')" "$(nproc)"
  (IFS=,; printf '%s' "${meta_rows[*]}")
  printf ']}\n'
} > "$out/meta.json"
"$OPENGRID_VENV/bin/python" scripts/bench_rows.py "$out" > "$out/rows.md"
og_log "results in $out (rows: $out/rows.md)"
cat "$out/rows.md"

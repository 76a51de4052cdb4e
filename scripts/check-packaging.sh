#!/usr/bin/env bash
# Checks the operator packaging (ADR 0019) against a built `opengrid` binary:
#   1. every systemd unit in deploy/systemd/ passes `systemd-analyze verify` with no message at
#      all (verify exits 0 on many mistakes — an unknown key, a bad value — and only prints them),
#      on a copy whose ExecStart points at the built binary (verify needs it to exist);
#   2. each unit's ReadWritePaths is the data_dir of the sample config it runs;
#   3. each committed sample in deploy/config/ is byte-equal to the `opengrid init` command its
#      header names;
#   4. `opengrid completions` and `opengrid man` produce output naming the subcommands.
#
# Usage: scripts/check-packaging.sh [path/to/opengrid]   (default: $CARGO_TARGET_DIR/debug/opengrid)
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-${CARGO_TARGET_DIR:-target}/debug/opengrid}"
bin="$(realpath "$bin")"
[ -x "$bin" ] || { echo "check-packaging: $bin is not an executable (build it first)" >&2; exit 1; }

tmp="$(mktemp -d -t opengrid-pkgcheck.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
fail=0
say() { printf '[check-packaging] %s\n' "$*" >&2; }
bad() { say "FAIL: $*"; fail=1; }

# 1. systemd units.
units=(deploy/systemd/*.service)
[ "${#units[@]}" -ge 3 ] || bad "expected at least 3 units in deploy/systemd, found ${#units[@]}"
if command -v systemd-analyze >/dev/null; then
  for u in "${units[@]}"; do
    grep -q '^ExecStart=/usr/local/bin/opengrid ' "$u" || bad "$u: ExecStart does not run /usr/local/bin/opengrid"
    sed "s#/usr/local/bin/opengrid#$bin#g" "$u" > "$tmp/$(basename "$u")"
  done
  for u in "${units[@]}"; do
    name="$(basename "$u")"
    # A template is verified as one instance of it (the template file beside it).
    case "$name" in *@.service) name="${name%@.service}@check.service" ;; esac
    if ! out="$(cd "$tmp" && systemd-analyze verify --man=no "$tmp/$name" 2>&1)"; then
      bad "$u: systemd-analyze verify failed:"$'\n'"$out"
    elif [ -n "$out" ]; then
      bad "$u: systemd-analyze verify reported:"$'\n'"$out"
    fi
  done
else
  say "systemd-analyze not found: unit verification skipped"
fi

# 2. Units and samples agree on the state dir.
for kind in rc node; do
  dir="$(sed -n 's/^data_dir = "\(.*\)"$/\1/p' "deploy/config/$kind.toml")"
  grep -qx "ReadWritePaths=$dir" "deploy/systemd/opengrid-$kind.service" \
    || bad "deploy/systemd/opengrid-$kind.service: ReadWritePaths is not $dir (data_dir of deploy/config/$kind.toml)"
done
grep -qx 'ReadWritePaths=/var/lib/opengrid/ledger-%i' 'deploy/systemd/opengrid-ledger@.service' \
  && grep -qx 'data_dir = "/var/lib/opengrid/ledger-1"' deploy/config/ledger.toml \
  || bad "opengrid-ledger@.service and deploy/config/ledger.toml disagree on the state dir"

# 3. Samples are `opengrid init` output.
for sample in deploy/config/*.toml; do
  cmd="$(sed -n 's/^# Written by `\(opengrid init .*\)`\.$/\1/p' "$sample")"
  if [ -z "$cmd" ]; then bad "$sample: no '# Written by \`opengrid init ...\`.' line"; continue; fi
  read -r -a words <<<"$cmd"
  if ! "$bin" "${words[@]:1}" > "$tmp/fresh.toml"; then
    bad "$sample: \`$cmd\` failed"
  elif ! diff -u "$sample" "$tmp/fresh.toml" >&2; then
    bad "$sample differs from \`$cmd\` (regenerate: $cmd --out $sample --force)"
  fi
done

# 4. Completions and man pages.
for shell in bash zsh fish elvish powershell; do
  out="$("$bin" completions "$shell")"
  for sub in node rc status drain init ledger; do
    grep -q -- "$sub" <<<"$out" || bad "completions $shell: no '$sub'"
  done
done
"$bin" man --dir "$tmp/man"
for page in opengrid.1 opengrid-node.1 opengrid-rc.1 opengrid-init.1 opengrid-ledger-replica.1; do
  [ -s "$tmp/man/$page" ] || bad "opengrid man --dir: no $page"
done

if [ "$fail" != 0 ]; then say "packaging check failed"; exit 1; fi
say "ok: ${#units[@]} units verified, samples equal init output, completions and man pages"

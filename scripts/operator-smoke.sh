#!/usr/bin/env bash
# Runs the operator quick start from a release tarball, verbatim, and checks it from outside:
#   1. unpacks <tarball> into a temp dir;
#   2. extracts the one fenced bash block between `<!-- operator-quickstart:begin -->` and
#      `<!-- operator-quickstart:end -->` from the tarball's README-operator.md (README.md's
#      operator section) and runs it in the unpacked folder (its own process group, 180 s limit);
#   3. checks with the tarball's own `opengrid status` that 3 members are alive, that the RC's
#      directory holds the session, and that the session answered the block's input (and answers
#      one more input from here with the right total);
#   4. stops every process the block started (SIGTERM to the group, SIGKILL after 30 s).
# Logs of the RC and nodes are printed when a check fails.
#
# Usage: scripts/operator-smoke.sh dist/opengrid-<version>-<arch>-linux.tar.gz
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: scripts/operator-smoke.sh <tarball>" >&2; exit 2; }
tarball="$(realpath "$1")"
[ -f "$tarball" ] || { echo "operator-smoke: no such tarball: $1" >&2; exit 2; }
for tool in curl jq tar timeout; do
  command -v "$tool" >/dev/null || { echo "operator-smoke: needs $tool" >&2; exit 2; }
done
say() { printf '[operator-smoke] %s\n' "$*" >&2; }

work="$(mktemp -d -t opengrid-smoke.XXXXXX)"
group=""
ok=0
cleanup() {
  if [ -n "$group" ]; then
    kill -TERM -- "-$group" 2>/dev/null || true
    # Nodes drain on SIGTERM; wait for the group to be gone (at most 30 s), then SIGKILL it.
    for _ in $(seq 150); do kill -0 -- "-$group" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$group" 2>/dev/null || true
  fi
  if [ "$ok" != 1 ]; then
    for f in "$work"/quickstart.out "$root"/colony/*.log; do
      [ -f "$f" ] || continue
      say "---- $f (last 40 lines)"
      tail -n 40 "$f" >&2
    done
  fi
  rm -rf "$work"
}
root="$work/none"
trap cleanup EXIT

tar -xzf "$tarball" -C "$work"
dirs=("$work"/opengrid-*-linux)
[ "${#dirs[@]}" -eq 1 ] && [ -d "${dirs[0]}" ] || { say "the tarball holds no single opengrid-*-linux folder"; exit 1; }
root="${dirs[0]}"
for f in bin/opengrid bin/opengrid-chaos README-operator.md config/rc.toml config/node.toml \
  config/ledger.toml systemd/opengrid-node.service completions/opengrid.bash man/man1/opengrid.1; do
  [ -e "$root/$f" ] || { say "the tarball lacks $f"; exit 1; }
done

# The quick-start block: exactly one ```bash fence between the markers.
awk '/<!-- operator-quickstart:begin -->/{f=1; next} /<!-- operator-quickstart:end -->/{f=0} f' \
  "$root/README-operator.md" > "$work/marked.md"
[ "$(grep -c '^```' "$work/marked.md")" = 2 ] && [ "$(head -n 1 "$work/marked.md")" = '```bash' ] \
  || { say "README-operator.md: expected one \`\`\`bash block between the quick-start markers"; exit 1; }
sed '1d;$d' "$work/marked.md" > "$work/quickstart.sh"
[ -s "$work/quickstart.sh" ] || { say "the quick-start block is empty"; exit 1; }

# The block uses the default ports; say so plainly when something else holds one.
for port in 7600 7601 7700 7701 7702; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    say "port $port is in use on 127.0.0.1: stop what holds it (the quick start uses 7600-7601, 7700-7702)"
    exit 1
  fi
done

say "running the README quick start in $root"
set -m   # the block runs in its own process group: the cleanup stops everything it started
(cd "$root" && exec timeout 180 bash -euo pipefail "$work/quickstart.sh" < /dev/null > "$work/quickstart.out" 2>&1) &
group=$!
set +m
if ! wait "$group"; then
  say "the quick-start block failed"
  exit 1
fi
cat "$work/quickstart.out" >&2

og="$root/bin/opengrid"
status="$("$og" status --rc http://127.0.0.1:7600 --key "$root/colony/rc" --json)"
alive="$(jq '[.members[] | select(.state == "alive")] | length' <<<"$status")"
[ "$alive" = 3 ] || { say "expected 3 alive members, the RC reports $alive: $status"; exit 1; }
session="$(jq -r .session_id "$root/colony/session.json")"
node="$(jq -r .address "$root/colony/session.json")"
jq -e --arg s "$session" '[.sessions[] | select(.session_id == $s)] | length == 1' <<<"$status" >/dev/null \
  || { say "session $session is not in the RC's directory: $status"; exit 1; }
grep -q '"output":5' "$work/quickstart.out" \
  || { say "the block's input got no answer with output 5"; exit 1; }
cap="$(jq -r .capability "$root/colony/session.json")"
reply="$(curl -sS --fail-with-body -X POST "$node/v1/sessions/$session/inputs" -H "authorization: Bearer $cap" \
  -H 'content-type: application/json' -d '{"seq": 2, "input": 7}')"
[ "$(jq '.output' <<<"$reply")" = 12 ] \
  || { say "the second input should total 12: $reply"; exit 1; }
ok=1
say "ok: 3 members alive, session $session on $node answered (5, then 12)"

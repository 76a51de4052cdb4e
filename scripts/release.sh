#!/usr/bin/env bash
# Builds the operator tarball (ADR 0019):
#   dist/opengrid-<version>-<arch>-linux.tar.gz, one top-level folder opengrid-<version>-<arch>-linux/
#   holding bin/opengrid, bin/opengrid-chaos, systemd/ (units), sysusers.d/, config/ (commented
#   samples = `opengrid init` output), completions/, man/man1/, manifests/ (examples),
#   README-operator.md (README.md's operator sections) and LICENSE when the repository has one.
#
# Usage: scripts/release.sh [--profile release|debug]   (default: release; CI packages the debug
# build it already has). Prints the tarball's path on the last line of standard output.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="${2:-}"; shift 2 || { echo "--profile needs a value" >&2; exit 2; } ;;
    --profile=*) profile="${1#*=}"; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "release.sh: unknown argument $1 (usage: scripts/release.sh [--profile release|debug])" >&2; exit 2 ;;
  esac
done
case "$profile" in
  release) cargo_flags=(--release) ;;
  debug) cargo_flags=() ;;
  *) echo "release.sh: --profile must be release or debug, not '$profile'" >&2; exit 2 ;;
esac

# shellcheck source=scripts/env.sh
source scripts/env.sh
og_setup
# The whole workspace's binaries, as scripts/test.sh builds them: building one package alone
# re-resolves features and rebuilds RocksDB.
og_log "building the binaries ($profile)"
cargo build --workspace --bins "${cargo_flags[@]}" >&2
out_dir="$CARGO_TARGET_DIR/$profile"
for b in opengrid opengrid-chaos; do
  [ -x "$out_dir/$b" ] || { og_log "no $out_dir/$b after the build"; exit 1; }
done

version="$("$out_dir/opengrid" --version | awk '{print $2}')"
arch="$(uname -m)"
name="opengrid-$version-$arch-linux"
stage_root="$(mktemp -d -t opengrid-release.XXXXXX)"
trap 'rm -rf "$stage_root"' EXIT
stage="$stage_root/$name"
mkdir -p "$stage"/{bin,systemd,sysusers.d,config,completions,man/man1,manifests}

install -m 0755 "$out_dir/opengrid" "$out_dir/opengrid-chaos" "$stage/bin/"
install -m 0644 deploy/systemd/*.service "$stage/systemd/"
install -m 0644 deploy/sysusers.d/opengrid.conf "$stage/sysusers.d/"
install -m 0644 deploy/config/*.toml "$stage/config/"
install -m 0644 examples/manifests/* "$stage/manifests/"
og=("$stage/bin/opengrid")
"${og[@]}" completions bash > "$stage/completions/opengrid.bash"
"${og[@]}" completions zsh > "$stage/completions/_opengrid"
"${og[@]}" completions fish > "$stage/completions/opengrid.fish"
"${og[@]}" completions elvish > "$stage/completions/opengrid.elv"
"${og[@]}" completions powershell > "$stage/completions/opengrid.ps1"
"${og[@]}" man --dir "$stage/man/man1"

# The operator guide: README.md from "## For operators" up to the next section that is not an
# operator one ("## For SREs").
{
  printf '# OpenGrid %s: operator guide\n\n' "$version"
  printf 'From the OpenGrid README; paths below are relative to this folder.\n\n'
  awk '/^## For operators/{f=1} /^## For SREs/{f=0} f' README.md
} > "$stage/README-operator.md"
grep -q 'operator-quickstart:begin' "$stage/README-operator.md" \
  || { og_log "README.md has no operator quick start block"; exit 1; }
[ -f LICENSE ] && install -m 0644 LICENSE "$stage/"

mkdir -p dist
tarball="dist/$name.tar.gz"
# Reproducible: sorted names, no owners, the commit's time as every file's time.
mtime="$(git log -1 --format=%ct 2>/dev/null || date +%s)"
tar -C "$stage_root" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$mtime" \
  -czf "$tarball.tmp" "$name"
mv "$tarball.tmp" "$tarball"
og_log "wrote $tarball ($(du -h "$tarball" | cut -f1))"
echo "$tarball"

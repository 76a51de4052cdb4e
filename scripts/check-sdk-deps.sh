#!/usr/bin/env bash
# The handler SDK stays slim: `opengrid-actors` (with its default features and with none) must not
# pull RocksDB, ONNX Runtime (ort) or libp2p into an agent developer's build (ADR 0012). Fails
# naming the forbidden crate and the path that brings it in.
set -euo pipefail
cd "$(dirname "$0")/.."
forbidden='^(rocksdb|librocksdb-sys|ort|ort-sys|libp2p|libp2p-[a-z0-9-]+) '
status=0
for mode in "--no-default-features" ""; do
  # shellcheck disable=SC2086
  deps="$(cargo tree -p opengrid-actors -e normal $mode --prefix none --format '{p}' --locked)"
  bad="$(grep -oE "$forbidden" <<<"$deps" | sort -u || true)"
  for crate in $bad; do
    echo "check-sdk-deps: opengrid-actors ${mode:-(default features)} depends on forbidden crate '$crate':" >&2
    # shellcheck disable=SC2086
    cargo tree -p opengrid-actors -e normal $mode --locked -i "$crate" >&2 || true
    status=1
  done
done
if [ "$status" = 0 ]; then
  echo "check-sdk-deps: opengrid-actors builds without rocksdb, ort and libp2p"
fi
exit "$status"

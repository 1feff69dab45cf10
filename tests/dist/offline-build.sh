#!/usr/bin/env bash
# Checks scripts/vendor.sh: its archive builds with `cargo build --release --offline` in a
# network namespace with no network at all and an empty CARGO_HOME, and the binaries run.
# Run as root (unshare -n). Cleans up its temporary directories.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
work=$(mktemp -d /tmp/warp-offline.XXXXXX)
trap 'rm -rf "$work"' EXIT
log() { echo "[offline-build] $*"; }
printed=$("$repo/scripts/vendor.sh" "$work/out" 2>"$work/vendor.log") || { cat "$work/vendor.log"; exit 1; }
archive=${printed%%$'\n'*}
log "archive $(du -h "$archive" | cut -f1) at $archive"
tar -xzf "$archive" -C "$work"
src=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'warp-*' | head -n1)
mkdir -p "$work/cargo-home"
# An empty CARGO_HOME (no registry cache) and no network: only vendor/ can satisfy the build.
(cd "$src" && unshare -n env CARGO_HOME="$work/cargo-home" CARGO_NET_OFFLINE=true \
    cargo build --release --offline --quiet -p warp-job -p warp-worker)
"$src/target/release/warp-controller" --version
"$src/target/release/warp-worker" --version
log "PASS: built offline from the vendored archive with an empty CARGO_HOME and no network"

#!/usr/bin/env bash
# Checks scripts/dist.sh: the binaries need no glibc symbol newer than 2.17 and run. Installs
# zig (PyPI ziglang) and cargo-zigbuild (crates.io) when missing.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
work=$(mktemp -d /tmp/warp-dist.XXXXXX)
trap 'rm -rf "$work"' EXIT
log() { echo "[glibc-check] $*"; }
python3 -c 'import ziglang' 2>/dev/null || pip install -q ziglang
command -v cargo-zigbuild >/dev/null 2>&1 || cargo install --locked --quiet cargo-zigbuild
printed=$("$repo/scripts/dist.sh" "$work/out")
echo "$printed" | sed 's/^/[glibc-check]   /'
archive=${printed%%$'\n'*}
tar -xzf "$archive" -C "$work"
dir=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'warp-*' | head -n1)
for b in "$dir"/bin/*; do
    max=$(objdump -T "$b" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n1)
    [ "$(printf '%s\n2.17\n' "$max" | sort -V | tail -n1)" = 2.17 ] \
        || { log "FAIL: $(basename "$b") needs glibc $max (> 2.17)"; exit 1; }
    "$b" --version >/dev/null || { log "FAIL: $(basename "$b") does not run"; exit 1; }
    log "$(basename "$b"): highest glibc symbol $max, runs"
done
[ -x "$dir/scripts/launch-workers.sh" ] || { log "FAIL: launch-workers.sh missing from the archive"; exit 1; }
[ -x "$dir/scripts/make-cert.sh" ] || { log "FAIL: make-cert.sh missing from the archive"; exit 1; }
log "PASS: portable binaries need glibc <= 2.17"

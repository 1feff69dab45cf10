#!/usr/bin/env bash
# Cross-check warp-kernels' MRC I/O against mrcfile (the field's reference reader):
#   1. the example writes float32/float16/int16 files; mrcfile checks mode, shape, voxel size,
#      values (float16: numpy's round-to-nearest-even, within half precision), header stats;
#   2. mrcfile writes modes 0, 1, 2, 6, 12 (and big-endian files); the example reads them and
#      its mode, shape, voxel size and values must match mrcfile's exactly.
# Exits non-zero on any mismatch; prints one PASS line on success.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
py="${PYTHON:-python3}"

if ! "$py" -c 'import mrcfile, numpy' 2>/dev/null; then
    "$py" -m pip install -q mrcfile numpy
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir "$work/ours" "$work/ref"

cd "$root"
cargo build -q -p warp-kernels --example mrc_roundtrip
bin="$root/target/debug/examples/mrc_roundtrip"

"$bin" write "$work/ours"
"$py" "$here/check_mrc.py" check-ours "$work/ours"

"$py" "$here/check_mrc.py" write-ref "$work/ref"
"$bin" read "$work/ref" > "$work/read.jsonl"
"$py" "$here/check_mrc.py" check-read "$work/ref" < "$work/read.jsonl"

echo "PASS mrc-roundtrip: mrcfile $("$py" -c 'import mrcfile; print(mrcfile.__version__)') read 3 warp-kernels files (modes 2, 12, 1) and warp-kernels read $(wc -l < "$work/read.jsonl") mrcfile files (modes 0, 1, 2, 6, 12, big-endian) identically"

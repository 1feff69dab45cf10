#!/usr/bin/env bash
# dist.sh OUTDIR: portable x86-64 Linux binaries in OUTDIR/warp-VERSION-x86_64-linux.tar.gz,
# linked against glibc 2.17 symbols (CentOS 7 era, so they run on any newer distribution) with
# cargo-zigbuild. They stay dynamically linked to glibc, so a later GPU build can still load the
# CUDA driver (libcuda.so) at run time.
#
# Needs: zig and cargo-zigbuild (pip install ziglang && cargo install --locked cargo-zigbuild).
# WARP_DIST_GLIBC=2.28 targets another glibc floor.
#
# The archive holds bin/warp-controller, bin/warp-worker, scripts/ (launch-workers.sh, make-cert.sh and the
# SLURM/PBS templates, which find ../bin/warp-worker), README.md and docs/hpc.md.
#
# A fully static build is the CPU-only variant (dlopen of the CUDA driver cannot work from a
# static musl binary): rustup target add x86_64-unknown-linux-musl &&
# cargo build --profile dist --target x86_64-unknown-linux-musl -p warp-job -p warp-worker
set -euo pipefail
if [ $# -ne 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    [ $# -eq 1 ] && exit 0 || exit 2
fi
out=$1
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
glibc=${WARP_DIST_GLIBC:-2.17}
if ! command -v cargo-zigbuild >/dev/null 2>&1; then
    echo "dist.sh: cargo-zigbuild not found; install it with: pip install ziglang && cargo install --locked cargo-zigbuild" >&2
    exit 1
fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n1)
name=warp-$version-x86_64-linux
target=x86_64-unknown-linux-gnu
rustup target add "$target" >/dev/null 2>&1 || true
(cd "$repo" && cargo zigbuild --quiet --profile dist --target "$target.$glibc" -p warp-job -p warp-worker)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/$name/bin" "$stage/$name/docs" "$out"
cp "$repo/target/$target/dist/warp-controller" "$repo/target/$target/dist/warp-worker" "$stage/$name/bin/"
(cd "$repo" && cp -r --parents scripts/launch-workers.sh scripts/make-cert.sh scripts/slurm scripts/pbs README.md docs/hpc.md "$stage/$name/")
archive=$(cd "$out" && pwd)/$name.tar.gz
tar -czf "$archive" -C "$stage" "$name"
echo "$archive"
for b in "$stage/$name"/bin/*; do
    max=$(objdump -T "$b" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n1)
    echo "$(basename "$b"): needs glibc $max"
done

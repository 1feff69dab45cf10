#!/usr/bin/env bash
# vendor.sh OUTDIR: write OUTDIR/warp-VERSION-src.tar.gz, the project's sources with every
# dependency vendored, for building on a machine with no registry access (air-gapped clusters):
#
#   tar xzf warp-VERSION-src.tar.gz && cd warp-VERSION && cargo build --release --offline
#
# The archive holds the tracked files of this checkout (committed or not), vendor/ from
# `cargo vendor`, and .cargo/config.toml pointing cargo at vendor/. Needs registry access once,
# here. Prints the archive's path and SHA-256.
set -euo pipefail
if [ $# -ne 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    [ $# -eq 1 ] && exit 0 || exit 2
fi
out=$1
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/Cargo.toml" | head -n1)
name=warp-$version
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$out" "$stage/$name/.cargo"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$stage/$name")
(cd "$stage/$name" && cargo vendor --locked --versioned-dirs vendor > .cargo/config.toml)
# Builds from the archive must not reach for a registry even when asked to.
printf '\n[net]\noffline = true\n' >> "$stage/$name/.cargo/config.toml"
archive=$(cd "$out" && pwd)/$name-src.tar.gz
tar -czf "$archive" -C "$stage" "$name"
echo "$archive"
sha256sum "$archive" | cut -d' ' -f1

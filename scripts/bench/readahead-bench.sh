#!/usr/bin/env bash
# readahead-bench.sh: what reading the next movie ahead saves when movies come from disk
# rather than the page cache (issue 4: "the next movie read while the current one is
# processed").
#
#   scripts/bench/readahead-bench.sh             # from anywhere; a few minutes
#   SIZE=4096 FRAMES=40 scripts/bench/readahead-bench.sh
#
# Steps:
#   1. cargo build --release -p warp-job -p warp-worker --bins
#   2. simulates COUNT distinct SIZE×SIZE×FRAMES movies (separate files: hard links would
#      share their cached pages)
#   3. checks that evicting a file from the page cache works here (posix_fadvise DONTNEED,
#      no root needed): one cold and one warm read of a movie with their rates
#   4. ROUNDS times, alternating: evict every movie, then `warp-controller preprocess
#      --workers 1` with the read-ahead on, and again with --no-read-ahead; wall time of the
#      job and the load time of movies 2..COUNT (the ones the read-ahead can help) from each
#      movie's JSON record
#   5. prints medians over the rounds and the on/off ratios; removes everything unless KEEP=1
#
# Environment (defaults): BENCH_DIR (/tmp/warp-readahead-bench), SIZE (2048), FRAMES (24),
# COUNT (4), ROUNDS (3), KEEP (0).
set -euo pipefail
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit 0
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BENCH_DIR=${BENCH_DIR:-/tmp/warp-readahead-bench}
SIZE=${SIZE:-2048}
FRAMES=${FRAMES:-24}
COUNT=${COUNT:-4}
ROUNDS=${ROUNDS:-3}
KEEP=${KEEP:-0}
CTRL="$ROOT/target/release/warp-controller"

die() { echo "readahead-bench: $*" >&2; exit 1; }
case "$BENCH_DIR" in
    "" | / ) die "BENCH_DIR must be a directory of its own, got '$BENCH_DIR'" ;;
esac
[ "$COUNT" -ge 2 ] || die "COUNT must be at least 2"
command -v python3 >/dev/null || die "python3 is needed (page cache eviction, JSON)"

cleanup() {
    local rc=$?
    if [ "$KEEP" != 1 ]; then
        rm -rf "$BENCH_DIR"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== build"
(cd "$ROOT" && cargo build --release -q -p warp-job -p warp-worker --bins)

rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
echo "== simulate $COUNT movies of ${SIZE}x${SIZE}x${FRAMES}"
"$CTRL" simulate --output "$BENCH_DIR/sim" --count "$COUNT" --size "$SIZE" \
    --frames "$FRAMES" --seed 3 --overwrite >/dev/null

evict() {
    python3 - "$@" <<'EOF'
import os, sys
for p in sys.argv[1:]:
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
EOF
}
read_rate() {
    python3 - "$1" <<'EOF'
import os, sys, time
p = sys.argv[1]
t = time.perf_counter()
with open(p, 'rb', buffering=0) as f:
    while f.read(8 << 20):
        pass
dt = time.perf_counter() - t
print(f"{os.path.getsize(p) / dt / 2**20:.0f} MiB/s ({dt * 1e3:.0f} ms)")
EOF
}

MOVIES=("$BENCH_DIR"/sim/*.mrc)
FIRST=${MOVIES[0]}
echo "== page cache check on $(basename "$FIRST") ($(($(stat -c %s "$FIRST") >> 20)) MiB)"
evict "$FIRST"
echo "cold read: $(read_rate "$FIRST")"
echo "warm read: $(read_rate "$FIRST")"

RESULTS="$BENCH_DIR/results.txt"
: >"$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
    for mode in on off; do
        out="$BENCH_DIR/out-$mode-$round"
        flag=()
        [ "$mode" = off ] && flag=(--no-read-ahead)
        evict "${MOVIES[@]}"
        t0=$(date +%s.%N)
        "$CTRL" preprocess --input "$BENCH_DIR/sim/*.mrc" --output "$out" --workers 1 \
            --dose-per-frame 1 "${flag[@]}" >"$out.log" 2>&1 || die "job failed: see $out.log"
        t1=$(date +%s.%N)
        python3 - "$out" "$mode" "$t0" "$t1" >>"$RESULTS" <<'EOF'
import glob, json, os, statistics, sys
out, mode, t0, t1 = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
recs = sorted(glob.glob(os.path.join(out, "sim_*.json")))
loads = [json.load(open(r))["timings_ms"]["load"] for r in recs[1:]]
print(mode, f"{t1 - t0:.3f}", f"{statistics.median(loads):.1f}")
EOF
        tail -n 1 "$RESULTS" | awk -v r="$round" '{printf "round %s read-ahead %-3s: job %6.2f s, median load of movies 2.. %8.1f ms\n", r, $1, $2, $3}'
    done
done

python3 - "$RESULTS" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
med = lambda mode, i: statistics.median(float(r[i]) for r in rows if r[0] == mode)
on_job, off_job = med("on", 1), med("off", 1)
on_load, off_load = med("on", 2), med("off", 2)
print("== medians over", len(rows) // 2, "rounds")
print(f"job wall time:            read-ahead on {on_job:7.2f} s   off {off_job:7.2f} s   on/off {on_job / off_job:.3f}")
print(f"load of movies 2..:       read-ahead on {on_load:7.1f} ms  off {off_load:7.1f} ms  on/off {on_load / off_load:.3f}")
EOF

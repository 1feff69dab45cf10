#!/usr/bin/env bash
# eer-bench.sh: EER decoding and grouping against the motion stage (issue 13, part 2).
#
#   scripts/bench/eer-bench.sh            # from anywhere; takes several minutes
#
# Steps:
#   1. cargo build --release -p warp-job -p warp-worker --bins
#   2. simulates one SIZE×SIZE×FRAMES movie twice from the same seed (1 Å/px, 1 e⁻/Å² per
#      frame, so 1 e⁻/px per frame): as int16 MRC, and as EER with each frame spread over GROUP
#      raw frames (FRAMES × GROUP raw frames; 1 e⁻/px per GROUP of them)
#   3. `warp-controller preprocess --workers 1` on each, REPEAT times, alternating (the EER one
#      with --eer-groups GROUP); each run's timings_ms from the movie's JSON record
#   4. prints the median load (read, decode and group, gain, FFTs) and motion times of each,
#      as JSON
#
# Environment (defaults): BENCH_DIR (/tmp/warp-eer-bench), SIZE (4096), FRAMES (40), GROUP (25),
# REPEAT (3), KEEP (0: the movies and outputs are removed at the end).
set -euo pipefail
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit 0
fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BENCH_DIR=${BENCH_DIR:-/tmp/warp-eer-bench}
SIZE=${SIZE:-4096}
FRAMES=${FRAMES:-40}
GROUP=${GROUP:-25}
REPEAT=${REPEAT:-3}
KEEP=${KEEP:-0}
case "$BENCH_DIR" in
    "" | / ) echo "eer-bench: BENCH_DIR must be a directory of its own" >&2; exit 1 ;;
esac
cleanup() { [ "$KEEP" = 1 ] || rm -rf "$BENCH_DIR"; }
trap cleanup EXIT

(cd "$ROOT" && cargo build --release -q -p warp-job -p warp-worker --bins)
WC="$ROOT/target/release/warp-controller"
rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
sim=(--count 1 --size "$SIZE" --frames "$FRAMES" --angpix 1 --dose-per-frame 1)
"$WC" simulate --output "$BENCH_DIR/mrc" "${sim[@]}" >/dev/null 2>&1
"$WC" simulate --output "$BENCH_DIR/eer" "${sim[@]}" --eer-groups "$GROUP" >/dev/null 2>&1
mrc_mb=$(du -m "$BENCH_DIR/mrc/sim_0001.mrc" | cut -f1)
eer_mb=$(du -m "$BENCH_DIR/eer/sim_0001.eer" | cut -f1)

for i in $(seq 1 "$REPEAT"); do
    for f in mrc eer; do
        extra=()
        [ "$f" = eer ] && extra=(--eer-groups "$GROUP")
        out="$BENCH_DIR/out-$f-$i"
        "$WC" preprocess --input "$BENCH_DIR/$f/*.$f" --output "$out" --workers 1 \
            --angpix 1 --dose-per-frame 1 --no-state-dir "${extra[@]}" >/dev/null 2>"$BENCH_DIR/$f-$i.log"
    done
done

python3 - "$BENCH_DIR" "$REPEAT" "$SIZE" "$FRAMES" "$GROUP" "$mrc_mb" "$eer_mb" <<'EOF'
import json, statistics, sys
d, repeat, size, frames, group, mrc_mb, eer_mb = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:])
t = {f: [json.load(open(f"{d}/out-{f}-{i}/sim_0001.json"))["timings_ms"] for i in range(1, repeat + 1)]
     for f in ("mrc", "eer")}
med = lambda f, k: statistics.median(x[k] for x in t[f])
print(json.dumps({
    "movie": f"{size}x{size}, {frames} frames; EER: {frames * group} raw frames, groups of {group}",
    "file_mb": {"mrc": mrc_mb, "eer": eer_mb},
    "load_ms_median": {"mrc": med("mrc", "load"), "eer": med("eer", "load")},
    "motion_ms_median": {"mrc": med("mrc", "motion"), "eer": med("eer", "motion")},
    "eer_load_over_motion": med("eer", "load") / med("eer", "motion"),
    "runs": repeat,
}, indent=2))
EOF

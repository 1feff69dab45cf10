#!/usr/bin/env bash
# preprocess-bench.sh: CPU performance benchmark of the preprocessing pipeline (issue 3).
#
#   scripts/bench/preprocess-bench.sh            # from anywhere; takes several minutes
#   KEEP=1 BENCH_DIR=/scratch/wb scripts/bench/preprocess-bench.sh
#
# Steps:
#   1. cargo build --release -p warp-job -p warp-worker --examples --bins
#   2. simulates one SIZE×SIZE×FRAMES movie (int16 MRC, 0.834 Å/px, 1 e⁻/Å² per frame) with
#      `warp-controller simulate`
#   3. single process: target/release/examples/bench_pipeline --repeat REPEAT on it (the
#      worker's pipeline stage by stage, its FFT floor, VmHWM against the float32 movie size),
#      RAYON_NUM_THREADS unset (rayon uses every core)
#   4. throughput: COPIES hardlinks of the movie, `warp-controller preprocess --workers WORKERS`
#      under /usr/bin/time -v; movies/hour, max RSS, and the RSS of the controller and of each
#      worker sampled with ps every 0.5 s (workers are separate processes)
#   5. prints a summary; removes the movie and the outputs unless KEEP=1
#
# Environment (defaults): BENCH_DIR (/tmp/warp-bench), SIZE (4096), FRAMES (40), REPEAT (3),
# COPIES (4), WORKERS (2), KEEP (0). Logs stay in BENCH_DIR/logs.
set -euo pipefail
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit 0
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BENCH_DIR=${BENCH_DIR:-/tmp/warp-bench}
SIZE=${SIZE:-4096}
FRAMES=${FRAMES:-40}
REPEAT=${REPEAT:-3}
COPIES=${COPIES:-4}
WORKERS=${WORKERS:-2}
KEEP=${KEEP:-0}
ANGPIX=0.834
DOSE=1.0

die() { echo "preprocess-bench: $*" >&2; exit 1; }
case "$BENCH_DIR" in
    "" | / ) die "BENCH_DIR must be a directory of its own, got '$BENCH_DIR'" ;;
esac
[ -x /usr/bin/time ] || die "/usr/bin/time (GNU time) is needed for the throughput run"

SIM="$BENCH_DIR/sim"
TP="$BENCH_DIR/throughput"
LOGS="$BENCH_DIR/logs"
CTRL="$ROOT/target/release/warp-controller"
BENCH="$ROOT/target/release/examples/bench_pipeline"
SAMPLER_PID=""
TIME_PID=""

cleanup() {
    local rc=$? ctrl
    if [ -n "$TIME_PID" ] && kill -0 "$TIME_PID" 2>/dev/null; then
        # Interrupted mid-run: stop the controller (it stops its workers); time then exits.
        ctrl=$(pgrep -P "$TIME_PID" || true)
        [ -n "$ctrl" ] && kill -TERM $ctrl 2>/dev/null || true
        wait "$TIME_PID" 2>/dev/null || true
    fi
    if [ -n "$SAMPLER_PID" ]; then
        kill "$SAMPLER_PID" 2>/dev/null || true
        wait "$SAMPLER_PID" 2>/dev/null || true
    fi
    if [ "$KEEP" = 1 ]; then
        echo "KEEP=1: left $SIM and $TP in place"
    else
        rm -rf -- "$SIM" "$TP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$LOGS"
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

log "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
# The commit the binaries are built from (captured now: the build is next).
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo ' + uncommitted changes')"
log "commit $COMMIT"

# 1. Build.
log "building release binaries and examples"
(cd "$ROOT" && cargo build --release -p warp-job -p warp-worker --examples --bins)

# 2. Simulate.
rm -rf -- "$SIM"
log "simulating one ${SIZE}×${SIZE}×${FRAMES} int16 movie into $SIM"
t0=$(now)
"$CTRL" simulate --output "$SIM" --count 1 --size "$SIZE" --frames "$FRAMES" \
    --angpix "$ANGPIX" --dose-per-frame "$DOSE" >"$LOGS/simulate.log" 2>&1 \
    || { cat "$LOGS/simulate.log" >&2; die "simulate failed"; }
MOVIE="$SIM/sim_0001.mrc"
[ -f "$MOVIE" ] || die "simulate wrote no $MOVIE"
log "simulated in $(elapsed "$t0" "$(now)") s: $(du -h "$MOVIE" | cut -f1)"

# 3. Single-process pipeline vs FFT floor.
log "bench_pipeline --repeat $REPEAT (RAYON_NUM_THREADS unset)"
env -u RAYON_NUM_THREADS "$BENCH" "$MOVIE" --angpix "$ANGPIX" --dose "$DOSE" --repeat "$REPEAT" \
    | tee "$LOGS/bench_pipeline.log"
BENCH_JSON=$(tail -n 1 "$LOGS/bench_pipeline.log")

# 4. Throughput with local workers.
rm -rf -- "$TP"
mkdir -p "$TP/in"
for i in $(seq -w 1 "$COPIES"); do
    ln "$MOVIE" "$TP/in/movie_$i.mrc" 2>/dev/null || cp "$MOVIE" "$TP/in/movie_$i.mrc"
done

# Samples "epoch_s pid comm rss_kib" for the controller (child of /usr/bin/time) and its
# children (the workers) until /usr/bin/time exits.
sample_rss() {
    local root=$1 ctrl kids
    while kill -0 "$root" 2>/dev/null; do
        ctrl=$(pgrep -P "$root" | head -n 1 || true)
        if [ -n "$ctrl" ]; then
            kids=$(pgrep -P "$ctrl" | paste -sd, - || true)
            ps -o pid=,comm=,rss= -p "$ctrl${kids:+,$kids}" 2>/dev/null \
                | awk -v t="$(date +%s.%N)" '{ print t, $1, $2, $3 }' || true
        fi
        sleep 0.5
    done
}

log "throughput: $COPIES movies, $WORKERS local workers (RAYON_NUM_THREADS unset in each)"
t0=$(now)
env -u RAYON_NUM_THREADS /usr/bin/time -v -o "$LOGS/time.txt" \
    "$CTRL" preprocess --input "$TP/in/*.mrc" --output "$TP/out" --workers "$WORKERS" \
    --dose-per-frame "$DOSE" --angpix "$ANGPIX" >"$LOGS/preprocess.log" 2>&1 &
TIME_PID=$!
sample_rss "$TIME_PID" >"$LOGS/rss.txt" &
SAMPLER_PID=$!
rc=0
wait "$TIME_PID" || rc=$?
t1=$(now)
TIME_PID=""
wait "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=""
if [ "$rc" != 0 ]; then
    tail -n 30 "$LOGS/preprocess.log" >&2
    die "warp-controller preprocess exited $rc (log: $LOGS/preprocess.log)"
fi
WALL=$(elapsed "$t0" "$t1")
DONE=$(find "$TP/out" -maxdepth 1 -name 'movie_*.json' | wc -l)
[ "$DONE" = "$COPIES" ] || log "WARNING: $DONE of $COPIES movies have a result"

MAXRSS_KIB=$(sed -n 's/^\s*Maximum resident set size (kbytes): //p' "$LOGS/time.txt")
TIME_WALL=$(sed -n 's/^\s*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$LOGS/time.txt")
# Per sample: controller RSS, sum over workers; then maxima, and each worker's own maximum.
RSS_SUMMARY=$(awk '
    $3 == "warp-controller" { c[$1] = $4; if ($4 > cmax) cmax = $4 }
    $3 == "warp-worker"     { w[$1] += $4; if ($4 > pmax[$2]) pmax[$2] = $4 }
    END {
        for (t in w) { if (w[t] > wsum) wsum = w[t]; if (w[t] + c[t] > all) all = w[t] + c[t] }
        n = 0; per = ""
        for (p in pmax) { per = per sprintf("%s%.2f", n++ ? ", " : "", pmax[p] / 1048576) }
        printf "controller %.1f MiB; workers each max [%s] GiB; workers together max %.2f GiB; all max %.2f GiB",
            cmax / 1024, per, wsum / 1048576, all / 1048576
    }' "$LOGS/rss.txt")

# 5. Summary.
echo
echo "================ preprocess-bench summary ================"
echo "machine:   $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p')"
echo "commit:    $COMMIT (built at the start of this run)"
echo "movie:     ${SIZE}×${SIZE}×${FRAMES} int16, $ANGPIX Å/px, $DOSE e⁻/Å²/frame"
echo "$BENCH_JSON" | jq -r '
    "single process (\(.rayon_threads) rayon threads), median of \(.repeat):",
    (. as $r | ["load", "motion", "export", "ctf", "thumbnail"][]
        | "  \(.): \($r.stages_wall_ms_median[.] / 1000 | . * 100 | round / 100) s (\($r.stages_wall_ms_median[.] / $r.pipeline_ms_median * 100 | round) %)"),
    "  pipeline total: \(.pipeline_ms_median / 1000 | . * 100 | round / 100) s",
    "  FFT floor:      \(.floor_ms_median / 1000 | . * 100 | round / 100) s (forward \(.floor_forward_ms_median / 1000 | . * 100 | round / 100) + inverse \(.floor_inverse_ms_median / 1000 | . * 100 | round / 100))",
    "  ratio pipeline/floor: \(.ratio_median | . * 100 | round / 100)",
    "  VmHWM \(.vm_hwm_bytes / 1073741824 | . * 100 | round / 100) GiB vs float32 movie \(.movie_f32_bytes / 1073741824 | . * 100 | round / 100) GiB: ratio \(.memory_ratio | . * 100 | round / 100)",
    "  ideal throughput of one process on the whole machine: \(3600000 / .pipeline_ms_median | round) movies/hour"
' 2>/dev/null || echo "  (jq missing: see the JSON line in $LOGS/bench_pipeline.log)"
echo "throughput ($WORKERS workers, $COPIES movies):"
awk -v n="$DONE" -v s="$WALL" 'BEGIN { printf "  wall %.1f s (time -v: %s) -> %.1f movies/hour\n", s, "'"$TIME_WALL"'", n * 3600 / s }'
echo "  time -v maximum resident set size: $(awk -v k="$MAXRSS_KIB" 'BEGIN { printf "%.2f GiB", k / 1048576 }')" \
    "(the largest of the controller and the workers it reaped, not a sum)"
echo "  sampled RSS: $RSS_SUMMARY"
if command -v jq >/dev/null; then
    echo "  per movie (worker's stage ms, from OUT/<name>.json):"
    for f in "$TP"/out/movie_*.json; do
        [ -f "$f" ] || continue
        jq -r --arg n "$(basename "$f" .json)" \
            '"    \($n) on \(.worker): " + ([.timings_ms | to_entries[] | "\(.key) \(.value | round)"] | join(", "))' "$f"
    done
fi
echo "logs: $LOGS"

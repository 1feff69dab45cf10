#!/usr/bin/env bash
# gpu-check.sh: the GPU checks of issue 4, on a machine with an NVIDIA GPU and no Rust toolchain,
# from x86-64 binaries built elsewhere. Prints a summary; exits non-zero if a check fails.
#
#   # where Rust is:
#   cargo build --release -p warp-job -p warp-worker -p warp-kernels --bins --examples
#   # on the GPU machine, in a copy of the repository with target/release carried over:
#   scripts/gpu-check.sh            # BIN=target/release by default; about 3-5 minutes
#
# Steps: nvidia-smi; the parity checks (examples/gpu_parity --require-gpu, 1024² × 24 and
# 4096² × 8); the 4096² × 40 benchmark through the worker's own pipeline with --backend cuda and,
# for the speed-up, --backend cpu on the same machine; one worker per GPU through `preprocess`.
# cuFFT is looked up in LD_LIBRARY_PATH, then in Python's nvidia-cufft wheels (CuPy/PyTorch).
# The speed targets are printed beside the numbers, not enforced: the exit status says whether
# every step ran and every parity tolerance held. A failing step does not stop the later ones
# (one run on a borrowed GPU should tell all), except that nothing is benchmarked without the
# simulated movie; the summary lists the failed steps and the script then exits 1. Logs go to
# LOGS (default $OUT when set, as on the device tool, else the work directory).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
WORK=${WORK:-$(mktemp -d /tmp/warp-gpu-check.XXXXXX)}
LOGS=${LOGS:-${OUT:-$WORK}}
mkdir -p "$LOGS"
log() { echo "[gpu-check $(date +%T)] $*"; }
FAILED=()
# step NAME LOG CMD...: runs CMD, its output shown and kept in LOGS/LOG; a failure is recorded.
step() {
    local name=$1 out=$2
    shift 2
    if "$@" 2>&1 | tee "$LOGS/$out"; then
        return 0
    fi
    log "FAILED: $name (see $LOGS/$out)"
    FAILED+=("$name")
}
for b in warp-controller warp-worker examples/gpu_parity examples/bench_pipeline; do
    [ -x "$BIN/$b" ] || { echo "gpu-check: $BIN/$b missing: build with cargo build --release -p warp-job -p warp-worker -p warp-kernels --bins --examples" >&2; exit 2; }
done
if ! ldconfig -p 2>/dev/null | grep -q 'libcufft\.so' ; then
    d=$(python3 - <<'PY' 2>/dev/null || true
import glob, os, site
for base in site.getsitepackages() + [site.getusersitepackages()]:
    for p in glob.glob(os.path.join(base, "nvidia", "cufft", "lib", "libcufft.so*")):
        print(os.path.dirname(p)); raise SystemExit
PY
)
    [ -n "$d" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" && log "cuFFT from $d"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

log "parity 1024² × 24"
step "parity 1024" parity-1024.log "$BIN/examples/gpu_parity" --require-gpu --size 1024 --frames 24
if grep -q '^SKIP:' "$LOGS/parity-1024.log"; then
    log "no usable GPU, nothing else can run: $(grep '^SKIP:' "$LOGS/parity-1024.log")"
    exit 1
fi
log "parity 4096² × 8"
step "parity 4096" parity-4096.log "$BIN/examples/gpu_parity" --require-gpu --size 4096 --frames 8

log "simulating one 4096² × 40 movie"
step "simulate" simulate.log "$BIN/warp-controller" simulate --output "$WORK/sim" --count 1 \
    --size 4096 --frames 40 --angpix 0.834 --dose-per-frame 1
M=$WORK/sim/sim_0001.mrc
if [ ! -f "$M" ]; then
    log "no movie to benchmark: the simulation failed (see $LOGS/simulate.log)"
    exit 1
fi
log "pipeline, --backend cuda"
step "bench cuda" bench-cuda.log "$BIN/examples/bench_pipeline" "$M" --angpix 0.834 --dose 1 --repeat 3 --backend cuda
log "pipeline, --backend cpu on 2 threads (the 2-core CPU path of docs/benchmarks.md)"
step "bench cpu" bench-cpu.log env RAYON_NUM_THREADS=2 "$BIN/examples/bench_pipeline" "$M" --angpix 0.834 --dose 1 --repeat 1 --backend cpu

log "throughput: preprocess, one worker per GPU, 4 movies"
mkdir -p "$WORK/in"
for i in 1 2 3 4; do ln -f "$M" "$WORK/in/movie_$i.mrc"; done
n_gpu=$( (nvidia-smi -L 2>/dev/null || true) | wc -l)
[ "$n_gpu" -ge 1 ] || n_gpu=1
devices=$(seq -s, 0 $((n_gpu - 1)))
start=$(date +%s.%N)
step "throughput" preprocess.log "$BIN/warp-controller" preprocess --input "$WORK/in/*.mrc" \
    --output "$WORK/out" --devices "$devices" --backend cuda --angpix 0.834 --dose-per-frame 1
end=$(date +%s.%N)
python3 - "$start" "$end" "$n_gpu" "$LOGS" <<'PY' || FAILED+=("summary")
import json, os, sys
s, e, n, logs = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def last_json(name):
    path = os.path.join(logs, name)
    if not os.path.exists(path):
        return None
    for line in reversed(open(path).read().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return None
cuda, cpu = last_json("bench-cuda.log"), last_json("bench-cpu.log")
par = [last_json(f"parity-{s}.log") for s in (1024, 4096)]
print("================ gpu-check summary ================")
ok = all(p is not None and p["gpu_parity"] for p in par)
print(f"parity: {'PASS' if ok else 'FAIL'}")
for p in par:
    if p is None:
        print("  (no result: the run failed before its summary; see its log)")
        continue
    for c in p["checks"]:
        print(f"  {c['check']:<46} {c['value']:.3e} (limit {c['limit']:.0e})")
if cuda:
    st = cuda["stages_wall_ms_median"]
    core = st["motion"] + st["ctf"] + st["export"]
    print(f"4096² × 40, cuda: load {st['load']:.0f} ms, motion {st['motion']:.0f}, export {st['export']:.0f}, "
          f"ctf {st['ctf']:.0f}; motion+CTF+export {core/1e3:.2f} s (target <= 2 s)")
else:
    print("4096² × 40, cuda: no result")
if cuda and cpu:
    print(f"pipeline: cuda {cuda['pipeline_ms_median']/1e3:.2f} s, cpu {cpu['pipeline_ms_median']/1e3:.2f} s "
          f"on {cpu['rayon_threads']} threads: {cpu['pipeline_ms_median']/cuda['pipeline_ms_median']:.1f}x (target >= 20x)")
print(f"throughput: 4 movies in {e - s:.1f} s on {n} GPU(s): {4 * 3600 / (e - s):.0f} movies/hour")
PY
if [ ${#FAILED[@]} -gt 0 ]; then
    log "failed steps: ${FAILED[*]}; logs in $LOGS"
    exit 1
fi
log "all steps passed; logs in $LOGS"

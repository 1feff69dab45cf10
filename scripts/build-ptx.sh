#!/usr/bin/env bash
# build-ptx.sh: compiles kernels/cuda/warp.cu to the committed kernels/ptx/warp.ptx, with no GPU
# and no CUDA toolkit, using NVIDIA's NVRTC from a pinned PyPI wheel, then checks that ptxas (same
# wheel family) assembles it for every supported GPU architecture.
#
#   scripts/build-ptx.sh            # regenerate kernels/ptx/warp.ptx (commit it)
#   scripts/build-ptx.sh --check    # CI: fail unless the committed PTX matches the sources
#
# Pinned: NVRTC 11.8.89 writes PTX ISA 7.8 for compute_75, which any driver from CUDA 11.8 on
# (Linux driver R520 or newer) can load and JIT for sm_75 .. sm_90 (Turing to Hopper). A newer
# NVRTC would write a newer ISA and drop those drivers. Wheels go to $TOOLS (cached).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SRC=$ROOT/kernels/cuda/warp.cu
PTX=$ROOT/kernels/ptx/warp.ptx
ARCH=compute_75
NVRTC_WHEEL=nvidia-cuda-nvrtc-cu11==11.8.89
NVCC_WHEEL=nvidia-cuda-nvcc-cu11==11.8.89
TOOLS=${TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/warp-cuda-wheels-11.8.89}
SM_LIST="sm_75 sm_80 sm_86 sm_89 sm_90"

check=0
[ "${1:-}" = "--check" ] && check=1

if [ ! -d "$TOOLS/nvidia/cuda_nvrtc" ] || [ ! -d "$TOOLS/nvidia/cuda_nvcc" ]; then
    python3 -m pip install -q --no-deps --target "$TOOLS" "$NVRTC_WHEEL" "$NVCC_WHEEL"
fi
NVRTC=$(ls "$TOOLS"/nvidia/cuda_nvrtc/lib/libnvrtc.so.* | head -n1)
PTXAS=$TOOLS/nvidia/cuda_nvcc/bin/ptxas
[ -x "$PTXAS" ] || { echo "build-ptx: ptxas not found in $NVCC_WHEEL ($PTXAS)" >&2; exit 1; }

out=$(mktemp)
trap 'rm -f "$out"' EXIT
python3 - "$NVRTC" "$SRC" "$out" "$ARCH" <<'PY'
import ctypes, sys
lib_path, src, out, arch = sys.argv[1:]
lib = ctypes.CDLL(lib_path)
prog = ctypes.c_void_p()
code = open(src, "rb").read()
# The program name is fixed so the PTX does not depend on where the checkout lives.
assert lib.nvrtcCreateProgram(ctypes.byref(prog), code, b"warp.cu", 0, None, None) == 0
opts = [f"--gpu-architecture={arch}".encode(), b"-default-device", b"--std=c++14"]
rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
n = ctypes.c_size_t()
lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
log = ctypes.create_string_buffer(n.value)
lib.nvrtcGetProgramLog(prog, log)
if log.value.strip():
    print(log.value.decode(), file=sys.stderr)
if rc != 0:
    sys.exit(f"build-ptx: NVRTC failed ({rc})")
lib.nvrtcGetPTXSize(prog, ctypes.byref(n))
ptx = ctypes.create_string_buffer(n.value)
lib.nvrtcGetPTX(prog, ptx)
open(out, "wb").write(ptx.value)
PY
for sm in $SM_LIST; do
    "$PTXAS" -arch="$sm" "$out" -o /dev/null || { echo "build-ptx: ptxas rejects the PTX for $sm" >&2; exit 1; }
done
entries=$(grep -c '^\.visible \.entry' "$out")
version=$(grep -m1 '^\.version' "$out")
if [ "$check" = 1 ]; then
    if ! cmp -s "$out" "$PTX"; then
        echo "build-ptx: kernels/ptx/warp.ptx does not match kernels/cuda/warp.cu; run scripts/build-ptx.sh and commit" >&2
        diff <(head -c 2000 "$PTX") <(head -c 2000 "$out") | head -20 >&2 || true
        exit 1
    fi
    echo "PASS build-ptx: committed PTX matches the sources ($version, $entries kernels); ptxas assembles it for $SM_LIST"
else
    cp "$out" "$PTX"
    echo "wrote $PTX ($version, $entries kernels); ptxas assembles it for $SM_LIST"
fi

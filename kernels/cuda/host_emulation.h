// Runs the kernels of warp.cu on the CPU, one (block, thread) after another, so their arithmetic
// can be tested against the Rust reference code on machines without a GPU
// (kernels/tests/cuda_kernels_on_host.rs). Only what warp.cu uses is emulated: no kernel in it
// synchronises threads or shares memory, so sequential execution is exact.
#pragma once
#include <cmath>
#include <cstddef>

#define __global__
#define __device__
#define __forceinline__ inline

struct uint3_ { unsigned x, y, z; };
struct dim3_ { unsigned x, y, z; };
static uint3_ blockIdx, threadIdx;
static dim3_ blockDim, gridDim;

struct float2 { float x, y; };
static inline float2 make_float2(float x, float y) { return float2{x, y}; }
static inline void sincospi(double x, double* s, double* c) {
    *s = std::sin(M_PI * x);
    *c = std::cos(M_PI * x);
}
using std::hypot;
using std::round;
using std::sin;
using std::sqrt;

// Runs `body` for every thread of a grid × block launch, as the device would (in some order).
template <class F>
static void host_launch(dim3_ grid, dim3_ block, F body) {
    gridDim = grid;
    blockDim = block;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx)
                for (unsigned tz = 0; tz < block.z; ++tz)
                    for (unsigned ty = 0; ty < block.y; ++ty)
                        for (unsigned tx = 0; tx < block.x; ++tx) {
                            blockIdx = uint3_{bx, by, bz};
                            threadIdx = uint3_{tx, ty, tz};
                            body();
                        }
}

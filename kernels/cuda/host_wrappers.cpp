// Host entry points for the kernels of warp.cu under host_emulation.h, launched with the same
// grid shapes as kernels/src/backend/cuda/mod.rs (cfg_1d: 256 threads per block; cfg_2d: 128
// along x, one block per row). Built only by kernels/tests/cuda_kernels_on_host.rs.
#include "host_emulation.h"
#include "warp.cu"

static dim3_ cfg_1d(int n) { return dim3_{(unsigned)((n + 255) / 256), 1, 1}; }
static dim3_ cfg_2d(int w, int h) { return dim3_{(unsigned)((w + 127) / 128), (unsigned)h, 1}; }
static const dim3_ B1{256, 1, 1}, B2{128, 1, 1};

extern "C" {
void host_gain_multiply(float* frame, const float* gain, int n) {
    host_launch(cfg_1d(n), B1, [&] { warp_gain_multiply(frame, gain, n); });
}
void host_defects_fill(float* frame, const int* target, const int* start, const int* count,
                       const int* from, int n_fix, float fallback) {
    host_launch(cfg_1d(n_fix), B1,
                [&] { warp_defects_fill(frame, target, start, count, from, n_fix, fallback); });
}
void host_crop_spectrum(const float2* in, int nxh, int ny, float2* out, int new_nxh, int new_ny,
                        float scale) {
    host_launch(cfg_2d(new_nxh, new_ny), B2,
                [&] { warp_crop_spectrum(in, nxh, ny, out, new_nxh, new_ny, scale); });
}
void host_shift_spectrum(float2* spec, int nx, int ny, float dx, float dy) {
    host_launch(cfg_2d(nx / 2 + 1, ny), B2, [&] { warp_shift_spectrum(spec, nx, ny, dx, dy); });
}
void host_cc_product(const float2* a, const float2* sum, const float* w, float2* out, int n) {
    host_launch(cfg_1d(n), B1, [&] { warp_cc_product(a, sum, w, out, n); });
}
void host_add_spectrum(float2* acc, const float2* a, int n) {
    host_launch(cfg_1d(n), B1, [&] { warp_add_spectrum(acc, a, n); });
}
void host_peak_window(const float* map, int nx, int ny, int rx, int ry, float* out) {
    host_launch(cfg_2d(2 * rx + 1, 2 * ry + 1), B2,
                [&] { warp_peak_window(map, nx, ny, rx, ry, out); });
}
void host_accumulate(const float2* spec, int nx, int ny, float sx, float sy, const float* weights,
                     int n_bins, int n_frames, int frame, double inv_dk, double pixel_size,
                     float2* avg, float2* weighted, float2* half) {
    host_launch(cfg_2d(nx / 2 + 1, ny), B2, [&] {
        warp_accumulate(spec, nx, ny, sx, sy, weights, n_bins, n_frames, frame, inv_dk,
                        pixel_size, avg, weighted, half);
    });
}
void host_tiles_prepare(const float* img, int nx, const int* origins, const float* mean,
                        const float* taper, int w, float* tiles, int n_tiles) {
    host_launch(dim3_{(unsigned)((w + 127) / 128), (unsigned)w, (unsigned)n_tiles}, B2,
                [&] { warp_tiles_prepare(img, nx, origins, mean, taper, w, tiles); });
}
void host_power_accumulate(const float2* spec, int n_per_tile, int n_tiles, double* acc) {
    host_launch(cfg_1d(n_per_tile), B1,
                [&] { warp_power_accumulate(spec, n_per_tile, n_tiles, acc); });
}
void host_ctf_score_1d(const double* ks, const double* sub, const double* env, int n_rings,
                       const double* defocus_a, int n_defocus, double c2, double c4, double chi0,
                       double* scores) {
    host_launch(cfg_1d(n_defocus), B1, [&] {
        warp_ctf_score_1d(ks, sub, env, n_rings, defocus_a, n_defocus, c2, c4, chi0, scores);
    });
}
}

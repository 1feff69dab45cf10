// CUDA kernels of the GPU backend (issue 4). Each kernel is the per-pixel or reduction step of
// one operation whose reference implementation is the CPU code named beside it; parity tests
// compare the two. Spectra use the half-complex layout of kernels/src/fft.rs: an nx × ny real
// image has nxh = nx/2 + 1 columns and ny rows, element (i, j) at j·nxh + i, row j holding the
// y frequency signed_freq(j, ny). FFTs are cuFFT's (R2C forward unnormalised, C2R inverse
// unnormalised: the host scales like Fft2d::inverse).
//
// Compiled to PTX by scripts/build-ptx.sh (NVRTC, no GPU needed); the PTX is committed under
// kernels/ptx/ and embedded in the binaries.

extern "C" {

// fft.rs signed_freq: the Nyquist bin of an even size is negative (−n/2).
__device__ __forceinline__ int signed_freq(int j, int n) { return j < (n + 1) / 2 ? j : j - n; }

// gain.rs GainRef::correct, first half: frame *= gain.
__global__ void warp_gain_multiply(float* frame, const float* gain, int n) {
    int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k < n) frame[k] *= gain[k];
}

// gain.rs GainRef::correct, second half: each defect pixel target[d] becomes the mean of its good
// neighbours from[start[d] .. start[d] + count[d]], or `fallback` (the mean of all good pixels,
// computed by the host) when it has none. Neighbours are never defects, so the order is free.
__global__ void warp_defects_fill(float* frame, const int* target, const int* start,
                                  const int* count, const int* from, int n_fix, float fallback) {
    int d = blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= n_fix) return;
    int c = count[d];
    float v = fallback;
    if (c > 0) {
        double s = 0.0;
        for (int q = 0; q < c; ++q) s += (double)frame[from[start[d] + q]];
        v = (float)(s / c);
    }
    frame[target[d]] = v;
}

// fft.rs crop_spectrum: keep x frequencies 0..new_nx/2 and y frequencies -new_ny/2..new_ny/2-1
// (the new Nyquist row takes the old -new_ny/2 row), scaled by `scale`.
__global__ void warp_crop_spectrum(const float2* in, int nxh, int ny, float2* out, int new_nxh,
                                   int new_ny, float scale) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int jn = blockIdx.y;
    if (i >= new_nxh || jn >= new_ny) return;
    int f = signed_freq(jn, new_ny);
    int j = f >= 0 ? f : ny + f;
    float2 v = in[(size_t)j * nxh + i];
    out[(size_t)jn * new_nxh + i] = make_float2(v.x * scale, v.y * scale);
}

// fft.rs shift_spectrum: multiply by exp(-2πi(fx·dx/nx + fy·dy/ny)); Nyquist row and column of
// even sizes set to zero.
__global__ void warp_shift_spectrum(float2* spec, int nx, int ny, float dx, float dy) {
    int nxh = nx / 2 + 1;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int j = blockIdx.y;
    if (i >= nxh || j >= ny) return;
    size_t k = (size_t)j * nxh + i;
    if (((ny & 1) == 0 && j == ny / 2) || ((nx & 1) == 0 && i == nx / 2)) {
        spec[k] = make_float2(0.f, 0.f);
        return;
    }
    // sincospi(x) = (sin πx, cos πx): phase/π = -2(fx·dx/nx + fy·dy/ny).
    double t = -2.0 * ((double)i * dx / nx + (double)signed_freq(j, ny) * dy / ny);
    double s, c;
    sincospi(t, &s, &c);
    float2 v = spec[k];
    spec[k] = make_float2((float)(v.x * c - v.y * s), (float)(v.x * s + v.y * c));
}

// motion.rs align_spectra: out = a · conj(sum − a) · w (the leave-one-out cross-power spectrum,
// band-limited and B-factor weighted).
__global__ void warp_cc_product(const float2* a, const float2* sum, const float* w, float2* out,
                                int n) {
    int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= n) return;
    float2 x = a[k];
    float2 r = make_float2(sum[k].x - x.x, sum[k].y - x.y);
    float wk = w[k];
    out[k] = make_float2((x.x * r.x + x.y * r.y) * wk, (x.y * r.x - x.x * r.y) * wk);
}

// Sum of spectra: acc += a (motion.rs, the all-frame sum of the aligned spectra).
__global__ void warp_add_spectrum(float2* acc, const float2* a, int n) {
    int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= n) return;
    acc[k] = make_float2(acc[k].x + a[k].x, acc[k].y + a[k].y);
}

// motion.rs find_peak input: copies the (2·rx+1) × (2·ry+1) window of the periodic correlation
// map around the origin, row-major, shift (-rx, -ry) first, so the host searches and refines the
// peak on a few hundred values instead of downloading the map.
__global__ void warp_peak_window(const float* map, int nx, int ny, int rx, int ry, float* out) {
    int wx = 2 * rx + 1, wy = 2 * ry + 1;
    int u = blockIdx.x * blockDim.x + threadIdx.x;
    int v = blockIdx.y;
    if (u >= wx || v >= wy) return;
    int x = ((u - rx) % nx + nx) % nx;
    int y = ((v - ry) % ny + ny) % ny;
    out[v * wx + u] = map[(size_t)y * nx + x];
}

// movie.rs accumulate, one frame: t = spec · exp(+2πi(fx·sx/nx + fy·sy/ny)) (displacing the
// frame by −shift); avg += t; with dose weighting (weights != 0) weighted += t·w(|k|, frame) and
// half += t·w, else half += t (half may be null). The weight of frame f at |k| = b·dk is
// weights[b·n_frames + f], b = round(|k|/dk) clamped to the table. Nyquist row/column skipped
// (left at zero).
__global__ void warp_accumulate(const float2* spec, int nx, int ny, float sx, float sy,
                                const float* weights, int n_bins, int n_frames, int frame,
                                double inv_dk, double pixel_size, float2* avg, float2* weighted,
                                float2* half) {
    int nxh = nx / 2 + 1;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int j = blockIdx.y;
    if (i >= nxh || j >= ny) return;
    if (((ny & 1) == 0 && j == ny / 2) || ((nx & 1) == 0 && i == nx / 2)) return;
    size_t k = (size_t)j * nxh + i;
    int fy = signed_freq(j, ny);
    double t = 2.0 * ((double)i * sx / nx + (double)fy * sy / ny);
    double s, c;
    sincospi(t, &s, &c);
    float2 v = spec[k];
    float2 r = make_float2((float)(v.x * c - v.y * s), (float)(v.x * s + v.y * c));
    avg[k] = make_float2(avg[k].x + r.x, avg[k].y + r.y);
    float w = 1.f;
    if (weights != 0) {
        double kx = (double)i / (nx * pixel_size);
        double ky = (double)fy / (ny * pixel_size);
        // round(): half away from zero, as f64::round in movie.rs WeightTable::row.
        int b = (int)round(hypot(kx, ky) * inv_dk);
        if (b > n_bins - 1) b = n_bins - 1;
        w = weights[(size_t)b * n_frames + frame];
        weighted[k] = make_float2(weighted[k].x + r.x * w, weighted[k].y + r.y * w);
    }
    if (half != 0) half[k] = make_float2(half[k].x + r.x * w, half[k].y + r.y * w);
}

// Scales a spectrum in place (averages: 1/n; inverse FFT normalisation is the host's).
__global__ void warp_scale_spectrum(float2* a, int n, float s) {
    int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k < n) a[k] = make_float2(a[k].x * s, a[k].y * s);
}

// Scales a real image in place (C2R normalisation 1/(nx·ny)).
__global__ void warp_scale_real(float* a, int n, float s) {
    int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k < n) a[k] *= s;
}

// ctf_fit.rs power_spectrum, tile preparation: tiles[t] = (image tile at origin t − mean[t]) ·
// taper[x] · taper[y], for a batch of tiles (blockIdx.z = tile). Origins come in pairs (x0, y0).
__global__ void warp_tiles_prepare(const float* img, int nx, const int* origins, const float* mean,
                                   const float* taper, int w, float* tiles) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y;
    int t = blockIdx.z;
    if (x >= w || y >= w) return;
    int x0 = origins[2 * t], y0 = origins[2 * t + 1];
    float v = img[(size_t)(y0 + y) * nx + x0 + x];
    tiles[(size_t)t * w * w + (size_t)y * w + x] = (v - mean[t]) * taper[x] * taper[y];
}

// ctf_fit.rs power_spectrum, accumulation: acc[k] += Σ over the batch's tile spectra |F|².
__global__ void warp_power_accumulate(const float2* spec, int n_per_tile, int n_tiles,
                                      double* acc) {
    int k = blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= n_per_tile) return;
    double s = 0.0;
    for (int t = 0; t < n_tiles; ++t) {
        float2 v = spec[(size_t)t * n_per_tile + k];
        s += (double)v.x * v.x + (double)v.y * v.y;
    }
    acc[k] += s;
}

// ctf_fit.rs search_1d, the grid of the defocus search: for each candidate defocus
// defocus_a[d] (Å), the Pearson correlation over the rings between sub[r] (the background-
// subtracted radial profile at |k| = ks[r]) and env[r]·sin²χ, with
// χ = c2·k²·Δf − c4·k⁴ + chi0 (ctf_fit.rs Optics::chi: c2 = πλ, c4 = π/2·Cs·λ³, chi0 = the
// amplitude-contrast phase plus π·phase shift). scores[d] receives the correlation (0 when
// undefined). Not wired into the fit yet: the CPU search costs milliseconds.
__global__ void warp_ctf_score_1d(const double* ks, const double* sub, const double* env,
                                  int n_rings, const double* defocus_a, int n_defocus, double c2,
                                  double c4, double chi0, double* scores) {
    int d = blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= n_defocus) return;
    double df = defocus_a[d];
    double n = 0, sx = 0, sy = 0, sxx = 0, syy = 0, sxy = 0;
    for (int r = 0; r < n_rings; ++r) {
        double k2 = ks[r] * ks[r];
        double s = sin(c2 * k2 * df - c4 * k2 * k2 + chi0);
        double x = sub[r], y = env[r] * s * s;
        n += 1; sx += x; sy += y; sxx += x * x; syy += y * y; sxy += x * y;
    }
    double cxy = sxy - sx * sy / n, cxx = sxx - sx * sx / n, cyy = syy - sy * sy / n;
    scores[d] = (n < 2 || cxx <= 0 || cyy <= 0) ? 0.0 : cxy / sqrt(cxx * cyy);
}

}  // extern "C"

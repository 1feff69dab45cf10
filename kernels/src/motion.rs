//! Beam-induced motion estimation: whole-frame (global) and patch-wise (local) shifts of a
//! movie's frames.
//!
//! **Convention** (DESIGN.md §6): the shift of a frame is the displacement of the specimen
//! content in that frame, +x toward increasing column, +y toward increasing row, in input
//! pixels, with mean over frames zero. Undoing it means displacing the frame by `−shift`
//! (e.g. [`crate::fft::shift_spectrum`] with `(−dx, −dy)`).
//!
//! **Method** (global). Iterative frame-to-reference alignment by Fourier cross-correlation,
//! in the spirit of MotionCor2 (Zheng et al., "MotionCor2: anisotropic correction of
//! beam-induced motion for improved cryo-electron microscopy", Nature Methods 14, 331–332,
//! 2017) and of Warp's frequency range and B-factor defaults (Tegunov & Cramer, "Real-time
//! cryo-electron microscopy data preprocessing with Warp", Nature Methods 16, 1146–1152,
//! 2019):
//!
//! 1. Every frame is Fourier-cropped ([`crate::fft::fourier_crop`]) to a working grid whose
//!    pixel is about a quarter of the high-resolution limit (`range_max_a/4`, never finer than
//!    the input), so the band-limited cross-correlation map is sampled about twice above its
//!    Nyquist rate; the spectra are computed once.
//! 2. Each iteration undoes the current shifts with phase ramps
//!    ([`crate::fft::shift_spectrum`]), sums the frames, and cross-correlates every frame with
//!    the sum of all *other* frames (leave-one-out reference, so the frame's own shot noise
//!    does not correlate with itself at zero shift and pull the estimate toward zero). The
//!    cross-power spectrum is weighted by `W(k) = exp(B·k²/4)` inside the band
//!    `1/range_min_a ≤ |k| ≤ 1/range_max_a` (zero outside; `B < 0` is a low-pass).
//! 3. The peak of the real-space correlation map (searched within `max_shift_px`) is refined
//!    to sub-pixel precision by a three-point parabola along each axis; the result is the
//!    residual displacement of the frame's content relative to its reference and is added to
//!    the frame's shift, scaled by `(n−1)/n` (the reference excludes the frame, so the
//!    measured residual overstates the residual relative to the all-frame mean by `n/(n−1)`;
//!    without the factor two frames would oscillate). Parabola bias shrinks with the residual, so iterating converges to
//!    the symmetric peak.
//! 4. The updated shifts are regularised (`trajectory`): by default smoothed with the
//!    Whittaker smoother of third differences of [`crate::smooth`], whose strength Mallows'
//!    `C_p` chooses from the round's measurements and their variance, which the round
//!    estimates from the cross-power spectra ([`shift_variance`]; pooled over frames and
//!    axes): precise measurements keep a fast start and jitter, noisy ones are smoothed more.
//!    Local patches, where that estimate is not used (`align_stack`), use restricted maximum
//!    likelihood instead. Or the shifts are replaced by their least-squares polynomial over
//!    frame index (the quartic was the default until it was found to underfit fast starts:
//!    docs/benchmarks.md); or kept per frame. Then the mean over frames is removed.
//! 5. Iteration stops when the largest per-frame change is below `tolerance_px` or after
//!    `iterations` rounds.
//!
//! **Local motion** ([`estimate_local`]): the frames are first aligned with the global
//! shifts, then cut into an automatic grid of overlapping square patches (edges tapered with a
//! raised cosine), and each patch stack is aligned with the same estimator; a patch's shifts
//! are the global shifts plus its residual.
//!
//! Alignment uses periodic phase ramps: content wrapping across the image edge and
//! fixed-pattern noise (which sits at zero shift in every frame) are not modelled.

use rustfft::num_complex::{Complex32, Complex64};

use rayon::prelude::*;

use crate::fft::{Fft2d, FftPool, crop_spectrum, shift_spectrum, signed_freq};

/// Settings of the motion estimator; the defaults follow Warp (500 → 10 Å, B = −500 Å²), with
/// the trajectory smoothed by a strength chosen from the data (module docs, step 4).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MotionOptions {
    /// Low-resolution limit in Å: frequencies below `1/range_min_a` are ignored.
    pub range_min_a: f64,
    /// High-resolution limit in Å: frequencies above `1/range_max_a` are ignored.
    pub range_max_a: f64,
    /// B-factor in Å² of the weight `exp(B·k²/4)` on the cross-power spectrum.
    pub bfactor_a2: f64,
    /// Largest number of alignment rounds.
    pub iterations: usize,
    /// Stop once the largest per-frame shift change (input pixels) is below this.
    pub tolerance_px: f64,
    /// Largest residual shift searched per round, in input pixels (limited to a quarter of the
    /// image).
    pub max_shift_px: f64,
    /// How the per-frame shifts are regularised after every round.
    pub trajectory: Trajectory,
}

/// The regulariser of the per-frame shifts (module docs, step 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trajectory {
    /// Per-frame shifts as measured.
    PerFrame,
    /// The least-squares polynomial of this degree over frame index (ignored when there are
    /// not more frames than coefficients).
    Polynomial(usize),
    /// The Whittaker smoother of third differences with its strength chosen from the
    /// measurements and their estimated variance ([`crate::smooth`]); above
    /// [`crate::smooth::MAX_FRAMES`] frames a quartic polynomial, below five frames (too few
    /// to penalise a third difference of) the per-frame shifts.
    Smoothed,
}

impl Default for MotionOptions {
    fn default() -> MotionOptions {
        MotionOptions {
            range_min_a: 500.0,
            range_max_a: 10.0,
            bfactor_a2: -500.0,
            iterations: 20,
            tolerance_px: 0.01,
            max_shift_px: 40.0,
            trajectory: Trajectory::Smoothed,
        }
    }
}

/// Whole-frame motion of a movie.
#[derive(Debug, Clone, PartialEq)]
pub struct MotionResult {
    /// Per-frame shift `[x, y]` in input pixels (convention in the module docs), mean zero.
    pub shifts_px: Vec<[f32; 2]>,
    /// The same in Å (`shifts_px × pixel size`).
    pub shifts_a: Vec<[f32; 2]>,
    /// Alignment rounds run.
    pub iterations: usize,
    /// Largest per-frame shift change in the last round, input pixels.
    pub final_update_px: f64,
}

impl MotionResult {
    /// The result for `shifts_px` (input pixels) at `pixel_size_a`, with `shifts_a` derived.
    pub fn new(
        shifts_px: Vec<[f32; 2]>,
        pixel_size_a: f64,
        iterations: usize,
        final_update_px: f64,
    ) -> MotionResult {
        let p = pixel_size_a as f32;
        MotionResult {
            shifts_a: shifts_px.iter().map(|s| [s[0] * p, s[1] * p]).collect(),
            shifts_px,
            iterations,
            final_update_px,
        }
    }
}

/// Patch-wise motion of a movie on a `grid_x × grid_y` grid.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalMotion {
    /// Patches along x.
    pub grid_x: usize,
    /// Patches along y.
    pub grid_y: usize,
    /// Side of the square patches, input pixels.
    pub patch_px: usize,
    /// Centre `[x, y]` of each patch in input pixels, x fastest (`iy·grid_x + ix`).
    pub patch_centres: Vec<[f32; 2]>,
    /// Per patch (same order), per frame: total shift `[x, y]` in input pixels (global plus
    /// the patch's residual), mean over frames zero.
    pub shifts_px: Vec<Vec<[f32; 2]>>,
}

/// Estimates the whole-frame shifts of `frames` (each `nx × ny`, x fastest) with pixel size
/// `pixel_size_a` Å; see the module docs for the method.
///
/// # Panics
/// If a frame's length is not `nx·ny`, a size is zero, or the pixel size or the resolution
/// limits are not positive.
pub fn estimate_global(
    frames: &[Vec<f32>],
    nx: usize,
    ny: usize,
    pixel_size_a: f64,
    opts: &MotionOptions,
) -> MotionResult {
    estimate_global_spectra(&frame_spectra(frames, nx, ny), nx, ny, pixel_size_a, opts)
}

/// [`estimate_global`] from the frames' full-size half-complex spectra ([`Fft2d::forward`] of
/// each frame), as [`crate::movie::Movie`] holds them: no full-size transform is repeated.
///
/// # Panics
/// As [`estimate_global`], or if a spectrum's length is not `(nx/2+1)·ny`.
pub fn estimate_global_spectra(
    spectra: &[Vec<Complex32>],
    nx: usize,
    ny: usize,
    pixel_size_a: f64,
    opts: &MotionOptions,
) -> MotionResult {
    let setup = align_setup(nx, ny, pixel_size_a, opts);
    let cropped = crop_spectra(spectra, nx, ny, setup.cx, setup.cy);
    let (shifts_px, iterations, final_update_px) =
        align_spectra(&cropped, nx, ny, &setup, opts, true);
    MotionResult::new(shifts_px, pixel_size_a, iterations, final_update_px)
}

/// The working grid `(cx, cy)` of the estimator for an `nx × ny` movie: pixels of about a
/// quarter of `range_max_a` (module docs, step 1), never finer than the input.
pub fn working_grid(
    nx: usize,
    ny: usize,
    pixel_size_a: f64,
    opts: &MotionOptions,
) -> (usize, usize) {
    assert!(
        pixel_size_a > 0.0 && opts.range_max_a > 0.0 && opts.range_min_a > 0.0,
        "motion: pixel size and resolution limits must be positive"
    );
    let target = opts.range_max_a / 4.0;
    (
        working_size(nx, pixel_size_a, target),
        working_size(ny, pixel_size_a, target),
    )
}

/// Full-size spectra of `frames`, in parallel.
fn frame_spectra(frames: &[Vec<f32>], nx: usize, ny: usize) -> Vec<Vec<Complex32>> {
    for f in frames {
        assert_eq!(f.len(), nx * ny, "motion: frame length");
    }
    let pool = FftPool::new(nx, ny);
    frames
        .par_iter()
        .map(|f| pool.with(|fft| fft.forward(f)))
        .collect()
}

/// Each spectrum cropped to `cx × cy` (a copy when the size is unchanged), in parallel.
pub fn crop_spectra(
    spectra: &[Vec<Complex32>],
    nx: usize,
    ny: usize,
    cx: usize,
    cy: usize,
) -> Vec<Vec<Complex32>> {
    spectra
        .par_iter()
        .map(|s| {
            assert_eq!(s.len(), (nx / 2 + 1) * ny, "motion: spectrum length");
            if cx == nx && cy == ny {
                s.clone()
            } else {
                crop_spectrum(s, nx, ny, cx, cy)
            }
        })
        .collect()
}

/// Estimates patch-wise motion on top of `global` (from [`estimate_global`] on the same
/// frames). The grid is automatic: patches of `patch_px` (rounded down to even, at most the
/// smaller image side), `round(n/patch_px)` of them along each axis (at least one), centres
/// evenly spread so the outer patches touch the edges.
///
/// # Panics
/// As [`estimate_global`], or if `global` has a different number of frames or `patch_px < 16`.
pub fn estimate_local(
    frames: &[Vec<f32>],
    nx: usize,
    ny: usize,
    pixel_size_a: f64,
    global: &MotionResult,
    patch_px: usize,
    opts: &MotionOptions,
) -> LocalMotion {
    let spectra = frame_spectra(frames, nx, ny);
    estimate_local_spectra(&spectra, nx, ny, pixel_size_a, global, patch_px, opts)
}

/// [`estimate_local`] from the frames' full-size spectra (see [`estimate_global_spectra`]).
///
/// The globally aligned frames are formed on the estimator's working grid
/// ([`working_grid`]), which holds every frequency the estimator uses, so the patches cost a
/// fraction of the movie's memory; patch positions and shifts are reported in input pixels.
///
/// # Panics
/// As [`estimate_local`].
pub fn estimate_local_spectra(
    spectra: &[Vec<Complex32>],
    nx: usize,
    ny: usize,
    pixel_size_a: f64,
    global: &MotionResult,
    patch_px: usize,
    opts: &MotionOptions,
) -> LocalMotion {
    assert_eq!(global.shifts_px.len(), spectra.len(), "motion: frame count");
    assert!(patch_px >= 16, "motion: patch size {patch_px} too small");
    let patch = patch_px.min(nx).min(ny) & !1;
    let grid = |n: usize| ((n as f64 / patch as f64).round() as usize).max(1);
    let (grid_x, grid_y) = (grid(nx), grid(ny));
    let origin = |n: usize, g: usize, i: usize| {
        if g == 1 {
            (n - patch) as f64 / 2.0
        } else {
            ((n - patch) as f64 * i as f64 / (g - 1) as f64).round()
        }
    };

    // Globally aligned frames on the working grid, and the patch side on it.
    let (cx, cy) = working_grid(nx, ny, pixel_size_a, opts);
    let (sx, sy) = (cx as f64 / nx as f64, cy as f64 / ny as f64);
    let pool = FftPool::new(cx, cy);
    let aligned: Vec<Vec<f32>> = spectra
        .par_iter()
        .zip(&global.shifts_px)
        .map(|(spec, s)| {
            let mut small = if cx == nx && cy == ny {
                spec.clone()
            } else {
                crop_spectrum(spec, nx, ny, cx, cy)
            };
            shift_spectrum(&mut small, cx, cy, -s[0] as f64 * sx, -s[1] as f64 * sy);
            pool.with(|fft| fft.inverse(&small))
        })
        .collect();
    let cpatch = (((patch as f64 * sx.min(sy)).round() as usize) & !1)
        .max(16)
        .min(cx.min(cy) & !1);
    let work_px = pixel_size_a / sx.min(sy);

    let taper = taper_1d(cpatch);
    let mut patch_centres = Vec::with_capacity(grid_x * grid_y);
    let mut origins = Vec::with_capacity(grid_x * grid_y);
    for iy in 0..grid_y {
        let y0 = origin(ny, grid_y, iy);
        for ix in 0..grid_x {
            let x0 = origin(nx, grid_x, ix);
            patch_centres.push([
                (x0 + patch as f64 / 2.0) as f32,
                (y0 + patch as f64 / 2.0) as f32,
            ]);
            // The patch on the working grid, centred where the full-size patch is.
            let place = |c: f64, s: f64, n: usize| {
                ((c * s - cpatch as f64 / 2.0).round().max(0.0) as usize).min(n - cpatch)
            };
            origins.push((
                place(x0 + patch as f64 / 2.0, sx, cx),
                place(y0 + patch as f64 / 2.0, sy, cy),
            ));
        }
    }
    let shifts_px = origins
        .par_iter()
        .map(|&(x0, y0)| {
            let stack: Vec<Vec<f32>> = aligned
                .iter()
                .map(|img| cut_patch(img, cx, x0, y0, cpatch, &taper))
                .collect();
            let (residual, _, _) = align_stack(&stack, cpatch, cpatch, work_px, opts);
            global
                .shifts_px
                .iter()
                .zip(&residual)
                .map(|(g, r)| [g[0] + r[0] / sx as f32, g[1] + r[1] / sy as f32])
                .collect()
        })
        .collect();
    LocalMotion {
        grid_x,
        grid_y,
        patch_px: patch,
        patch_centres,
        shifts_px,
    }
}

/// Raised-cosine edge taper over 1/8 of the side at each end.
fn taper_1d(n: usize) -> Vec<f32> {
    let w = (n / 8).max(1);
    (0..n)
        .map(|i| {
            let d = i.min(n - 1 - i);
            if d >= w {
                1.0
            } else {
                let t = (d as f64 + 0.5) / w as f64;
                (0.5 - 0.5 * (std::f64::consts::PI * t).cos()) as f32
            }
        })
        .collect()
}

/// The `n × n` patch at `(x0, y0)`, mean removed, edges tapered.
fn cut_patch(img: &[f32], nx: usize, x0: usize, y0: usize, n: usize, taper: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * n);
    for y in y0..y0 + n {
        out.extend_from_slice(&img[y * nx + x0..y * nx + x0 + n]);
    }
    let mean = out.iter().map(|&v| v as f64).sum::<f64>() / out.len() as f64;
    for (y, row) in out.chunks_mut(n).enumerate() {
        for (x, v) in row.iter_mut().enumerate() {
            *v = (*v - mean as f32) * taper[x] * taper[y];
        }
    }
    out
}

/// Smallest even size whose pixel is at most `target_px_a`, capped at the largest even size
/// not above `n` (and `n` itself when it is even).
fn working_size(n: usize, pixel_size_a: f64, target_px_a: f64) -> usize {
    let want = (n as f64 * pixel_size_a / target_px_a).ceil() as usize;
    let want = want.div_ceil(2) * 2;
    want.clamp(2, (n & !1).max(2)).min(n)
}

/// Core estimator on a stack of local patches: returns (shifts in input pixels with mean
/// zero, rounds, last update). The smoother chooses its strength without a noise estimate
/// ([`CpuCorrelation::without_noise_estimate`]): on tapered patches the variance formula of
/// [`shift_variance`] falls short of the measured scatter (0.81–1.00 of it on 256- and
/// 512-pixel patches of 1024² movies aligned at the truth, against 0.95 on whole frames; the
/// taper correlates neighbouring frequencies, which the formula takes as independent), and
/// `C_p` given too little noise follows it (one 12-frame patch: 0.25 px against 0.07 px).
fn align_stack(
    frames: &[Vec<f32>],
    nx: usize,
    ny: usize,
    pixel_size_a: f64,
    opts: &MotionOptions,
) -> (Vec<[f32; 2]>, usize, f64) {
    assert!(nx > 0 && ny > 0, "motion: empty size {nx}×{ny}");
    let setup = align_setup(nx, ny, pixel_size_a, opts);
    let (cx, cy) = (setup.cx, setup.cy);
    let mut fft = Fft2d::new(nx, ny);
    let cropped: Vec<Vec<Complex32>> = frames
        .iter()
        .map(|f| {
            assert_eq!(f.len(), nx * ny, "motion: frame length");
            let s = fft.forward(f);
            if cx == nx && cy == ny {
                s
            } else {
                crop_spectrum(&s, nx, ny, cx, cy)
            }
        })
        .collect();
    align_spectra(&cropped, nx, ny, &setup, opts, false)
}

/// What one alignment round needs besides the spectra: the working grid, the band-limited
/// B-factor weight on it, the search radius and the window of the correlation map that holds
/// every candidate peak and its neighbours ([`align_setup`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AlignSetup {
    /// Working grid width.
    pub cx: usize,
    /// Working grid height.
    pub cy: usize,
    /// `(cx/2+1)·cy` weights `exp(B·k²/4)` inside the band, 0 outside.
    pub weight: Vec<f32>,
    /// Search radius along x, working pixels.
    pub rx: f64,
    /// Search radius along y, working pixels.
    pub ry: f64,
    /// Half-width of the map window a [`CorrelationEngine`] returns: `floor(rx) + 1`.
    pub hx: usize,
    /// Half-height of the window: `floor(ry) + 1`.
    pub hy: usize,
}

/// The setup of the estimator for an `nx × ny` movie with pixel size `pixel_size_a`.
pub fn align_setup(nx: usize, ny: usize, pixel_size_a: f64, opts: &MotionOptions) -> AlignSetup {
    let (cx, cy) = working_grid(nx, ny, pixel_size_a, opts);
    let (sx, sy) = (cx as f64 / nx as f64, cy as f64 / ny as f64);
    // Band-limited B-factor weight; physical frequencies are unchanged by the crop.
    let cxh = cx / 2 + 1;
    let (k_lo, k_hi) = (1.0 / opts.range_min_a, 1.0 / opts.range_max_a);
    let mut weight = vec![0.0f32; cxh * cy];
    for j in 0..cy {
        let ky = signed_freq(j, cy) as f64 / (ny as f64 * pixel_size_a);
        for i in 0..cxh {
            let kx = i as f64 / (nx as f64 * pixel_size_a);
            let k2 = kx * kx + ky * ky;
            let k = k2.sqrt();
            if k >= k_lo && k <= k_hi {
                weight[j * cxh + i] = (opts.bfactor_a2 * k2 / 4.0).exp() as f32;
            }
        }
    }
    // Search radius in working pixels.
    let rx = (opts.max_shift_px * sx).min(cx as f64 / 4.0).max(1.0);
    let ry = (opts.max_shift_px * sy).min(cy as f64 / 4.0).max(1.0);
    AlignSetup {
        cx,
        cy,
        weight,
        rx,
        ry,
        hx: rx.floor() as usize + 1,
        hy: ry.floor() as usize + 1,
    }
}

/// The per-frame work of one alignment round (module docs, step 2), on the CPU
/// ([`CpuCorrelation`]) or a GPU: undo the current shifts with phase ramps, sum the frames,
/// cross-correlate every frame with the sum of the others under the weight, and return for
/// each frame the `(2·hx+1) × (2·hy+1)` window of its correlation map around zero shift
/// (row-major, offset `(−hx, −hy)` first; any positive scale). The rest of the estimator
/// ([`align_with`]) is shared, so both give the same shifts up to rounding.
pub trait CorrelationEngine {
    /// Why a round failed: a device error for a GPU engine; [`std::convert::Infallible`] for
    /// the CPU's.
    type Error;

    /// One round for `shifts` (working pixels, per frame).
    fn round(&mut self, shifts: &[[f64; 2]]) -> Result<Vec<Vec<f32>>, Self::Error>;

    /// After a [`round`](CorrelationEngine::round) whose maps put frame `f`'s peak at
    /// `deltas[f]` (working pixels), each measurement's variance along x and y (working
    /// pixels²) estimated from that round's cross-power spectra ([`shift_variance`]), or `None`
    /// where the engine does not estimate it (the smoother then chooses its strength without
    /// it: [`crate::smooth::Whittaker::smooth`]).
    fn shift_variances(
        &mut self,
        deltas: &[[f64; 2]],
    ) -> Result<Option<Vec<[f64; 2]>>, Self::Error> {
        let _ = deltas;
        Ok(None)
    }
}

/// The variance (x, y; working pixels²) of the shift measured from one frame's cross-power
/// spectrum `p = a·conj(r)` under the band weight `w`, where the map peaked at `delta`:
/// `frame` is `a`, the frame's spectrum aligned at the round's shifts, and `sum` that of all
/// frames, so the reference is `r = sum − a` (half-complex, `(cx/2+1)·cy`).
///
/// The measured shift `δ̂` is where the gradient of the map `c(x) = Σ w·p·e^{2πik·x}` vanishes;
/// linearised about the peak, `δ̂x − δx = −Σ w·kx·Im p′ / (2π·Σ w·kx²·Re p′)` with
/// `p′ = p·e^{2πik·δ}` the spectrum with the peak's shift undone. There the signal `|S|²` is
/// real, so `Im p′` is noise alone (shot noise of the frame and of the reference, half of it
/// in the imaginary part), independent between frequencies, and its square estimates its
/// variance: `var δ̂x ≈ Σ w²·kx²·(Im p′)² / (2π·Σ w·kx²·Re p′)²` (and the same along y), the sums
/// over the whole plane (each half-complex column but the self-conjugate ones stands for a
/// pair of equal terms). `NaN` where the curvature is not positive (no peak to speak of; the
/// pooled estimate is then not finite and the smoother does without it).
pub fn shift_variance(
    frame: &[Complex32],
    sum: &[Complex32],
    w: &[f32],
    cx: usize,
    cy: usize,
    delta: [f64; 2],
) -> [f64; 2] {
    let cxh = cx / 2 + 1;
    let tau = 2.0 * std::f64::consts::PI;
    // e^{2πi·kx·δx} per column and e^{2πi·ky·δy} per row.
    let col: Vec<Complex64> = (0..cxh)
        .map(|i| Complex64::from_polar(1.0, tau * i as f64 / cx as f64 * delta[0]))
        .collect();
    let mut num = [0.0f64; 2];
    let mut den = [0.0f64; 2];
    for j in 0..cy {
        let ky = signed_freq(j, cy) as f64 / cy as f64;
        let row = Complex64::from_polar(1.0, tau * ky * delta[1]);
        for i in 0..cxh {
            let wk = f64::from(w[j * cxh + i]);
            if wk == 0.0 {
                continue;
            }
            let k = j * cxh + i;
            let v = frame[k] * (sum[k] - frame[k]).conj();
            let q = Complex64::new(f64::from(v.re), f64::from(v.im)) * col[i] * row;
            let kx = i as f64 / cx as f64;
            // A pair of equal terms (4 in the variance, 2 in the curvature) or a
            // self-conjugate column (column 0, and the Nyquist column of an even width).
            let (nw, dw) = if i == 0 || 2 * i == cx {
                (2.0, 1.0)
            } else {
                (4.0, 2.0)
            };
            let im2 = q.im * q.im * wk * wk;
            num[0] += nw * im2 * kx * kx;
            num[1] += nw * im2 * ky * ky;
            den[0] += dw * wk * kx * kx * q.re;
            den[1] += dw * wk * ky * ky * q.re;
        }
    }
    std::array::from_fn(|a| {
        if den[a] > 0.0 {
            num[a] / (tau * den[a]).powi(2)
        } else {
            f64::NAN
        }
    })
}

/// The CPU [`CorrelationEngine`]: rayon over frames, one FFT plan per thread.
pub struct CpuCorrelation<'a> {
    spectra: &'a [Vec<Complex32>],
    setup: &'a AlignSetup,
    aligned: Vec<Vec<Complex32>>,
    sum: Vec<Complex32>,
    pool: FftPool,
    /// Whether [`CorrelationEngine::shift_variances`] estimates the measurements' variance.
    noise_estimate: bool,
}

impl<'a> CpuCorrelation<'a> {
    /// An engine over `spectra` cropped to the setup's working grid.
    pub fn new(spectra: &'a [Vec<Complex32>], setup: &'a AlignSetup) -> CpuCorrelation<'a> {
        let n = (setup.cx / 2 + 1) * setup.cy;
        CpuCorrelation {
            spectra,
            setup,
            aligned: vec![vec![Complex32::new(0.0, 0.0); n]; spectra.len()],
            sum: vec![Complex32::new(0.0, 0.0); n],
            pool: FftPool::new(setup.cx, setup.cy),
            noise_estimate: true,
        }
    }

    /// The same engine answering `None` to [`CorrelationEngine::shift_variances`].
    pub fn without_noise_estimate(self) -> CpuCorrelation<'a> {
        CpuCorrelation {
            noise_estimate: false,
            ..self
        }
    }
}

impl CorrelationEngine for CpuCorrelation<'_> {
    type Error = std::convert::Infallible;

    fn round(&mut self, shifts: &[[f64; 2]]) -> Result<Vec<Vec<f32>>, Self::Error> {
        let (cx, cy) = (self.setup.cx, self.setup.cy);
        self.sum.fill(Complex32::new(0.0, 0.0));
        self.aligned
            .par_iter_mut()
            .zip(self.spectra)
            .zip(shifts)
            .for_each(|((a, s), sh)| {
                a.copy_from_slice(s);
                shift_spectrum(a, cx, cy, -sh[0], -sh[1]);
            });
        for a in &self.aligned {
            for (t, v) in self.sum.iter_mut().zip(a.iter()) {
                *t += *v;
            }
        }
        let (sum, weight, pool) = (&self.sum, &self.setup.weight, &self.pool);
        let (hx, hy) = (self.setup.hx, self.setup.hy);
        Ok(self
            .aligned
            .par_iter()
            .map(|a| {
                let cc: Vec<Complex32> = a
                    .iter()
                    .zip(sum)
                    .zip(weight)
                    .map(|((v, t), w)| *v * (*t - *v).conj() * *w)
                    .collect();
                let map = pool.with(|fft| fft.inverse(&cc));
                peak_window(&map, cx, cy, hx, hy)
            })
            .collect())
    }

    fn shift_variances(
        &mut self,
        deltas: &[[f64; 2]],
    ) -> Result<Option<Vec<[f64; 2]>>, Self::Error> {
        if !self.noise_estimate {
            return Ok(None);
        }
        let (cx, cy) = (self.setup.cx, self.setup.cy);
        let (sum, weight) = (&self.sum, &self.setup.weight);
        Ok(Some(
            self.aligned
                .par_iter()
                .zip(deltas)
                .map(|(a, d)| shift_variance(a, sum, weight, cx, cy, *d))
                .collect(),
        ))
    }
}

/// The `(2·hx+1) × (2·hy+1)` window of the periodic `map` around the origin (what the GPU
/// kernel `warp_peak_window` computes).
pub fn peak_window(map: &[f32], nx: usize, ny: usize, hx: usize, hy: usize) -> Vec<f32> {
    let (wx, wy) = (2 * hx + 1, 2 * hy + 1);
    let mut out = Vec::with_capacity(wx * wy);
    for v in 0..wy {
        let y = (v as i64 - hy as i64).rem_euclid(ny as i64) as usize;
        for u in 0..wx {
            let x = (u as i64 - hx as i64).rem_euclid(nx as i64) as usize;
            out.push(map[y * nx + x]);
        }
    }
    out
}

/// What the estimator's rounds give: the shifts in input pixels (mean zero), the number of
/// rounds, and the last round's largest update (input pixels).
pub type Alignment = (Vec<[f32; 2]>, usize, f64);

/// Runs the estimator's rounds (module docs, steps 2–5) with `engine` doing the per-frame work,
/// for `nf` frames of an `nx × ny` movie; returns (shifts in input pixels with mean zero,
/// rounds, last update), or the engine's first error (the rounds stop there).
pub fn align_with<E: CorrelationEngine + ?Sized>(
    engine: &mut E,
    nf: usize,
    nx: usize,
    ny: usize,
    setup: &AlignSetup,
    opts: &MotionOptions,
) -> Result<Alignment, E::Error> {
    if nf < 2 {
        return Ok((vec![[0.0, 0.0]; nf], 0, 0.0));
    }
    let (sx, sy) = (setup.cx as f64 / nx as f64, setup.cy as f64 / ny as f64);
    let mut shifts = vec![[0.0f64; 2]; nf];
    let mut rounds = 0;
    let mut last_update = 0.0;
    let whittaker = match opts.trajectory {
        Trajectory::Smoothed => crate::smooth::Whittaker::for_frames(nf, crate::smooth::ORDER),
        _ => None,
    };
    while rounds < opts.iterations.max(1) {
        rounds += 1;
        let working: Vec<[f64; 2]> = shifts.iter().map(|s| [s[0] * sx, s[1] * sy]).collect();
        let windows = engine.round(&working)?;
        let mut updated = shifts.clone();
        // Against the mean of the other frames a frame's measured residual is n/(n−1) times
        // its residual relative to the mean of all frames (for residuals with mean zero).
        let gain = (nf - 1) as f64 / nf as f64;
        let deltas: Vec<[f64; 2]> = windows.iter().map(|w| find_peak(w, setup).into()).collect();
        for (up, d) in updated.iter_mut().zip(&deltas) {
            up[0] += gain * d[0] / sx;
            up[1] += gain * d[1] / sy;
        }
        match (opts.trajectory, &whittaker) {
            (Trajectory::PerFrame, _) => {}
            (Trajectory::Polynomial(deg), _) => smooth_polynomial(&mut updated, deg),
            (Trajectory::Smoothed, Some(w)) => {
                // The measurements' variance in input pixels², pooled over frames and axes.
                let noise = engine.shift_variances(&deltas)?.and_then(|v| {
                    let total: f64 = v.iter().map(|[x, y]| x / (sx * sx) + y / (sy * sy)).sum();
                    let mean = gain * gain * total / (2 * v.len()) as f64;
                    (mean.is_finite() && mean > 0.0).then_some(mean)
                });
                w.smooth(&mut updated, noise);
            }
            (Trajectory::Smoothed, None) if nf > crate::smooth::MAX_FRAMES => {
                smooth_polynomial(&mut updated, 4)
            }
            (Trajectory::Smoothed, None) => {}
        }
        remove_mean(&mut updated);
        last_update = shifts
            .iter()
            .zip(&updated)
            .map(|(a, b)| (a[0] - b[0]).hypot(a[1] - b[1]))
            .fold(0.0, f64::max);
        shifts = updated;
        if last_update < opts.tolerance_px {
            break;
        }
    }
    let out = shifts.iter().map(|s| [s[0] as f32, s[1] as f32]).collect();
    Ok((out, rounds, last_update))
}

/// Core estimator on the frames' spectra already cropped to the working grid of an `nx × ny`
/// movie (CPU engine), with or without the engine's noise estimate
/// ([`CpuCorrelation::without_noise_estimate`]).
fn align_spectra(
    spectra: &[Vec<Complex32>],
    nx: usize,
    ny: usize,
    setup: &AlignSetup,
    opts: &MotionOptions,
    noise_estimate: bool,
) -> Alignment {
    let mut engine = CpuCorrelation::new(spectra, setup);
    if !noise_estimate {
        engine = engine.without_noise_estimate();
    }
    match align_with(&mut engine, spectra.len(), nx, ny, setup, opts) {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

fn remove_mean(shifts: &mut [[f64; 2]]) {
    let n = shifts.len() as f64;
    for axis in 0..2 {
        let m = shifts.iter().map(|s| s[axis]).sum::<f64>() / n;
        for s in shifts.iter_mut() {
            s[axis] -= m;
        }
    }
}

/// Sub-pixel location `(dx, dy)` of the maximum of a correlation map, given its window around
/// the origin ([`peak_window`]), searched within `|dx| ≤ rx`, `|dy| ≤ ry` and refined by a
/// three-point parabola along each axis (the window's margin holds the neighbours).
fn find_peak(window: &[f32], setup: &AlignSetup) -> (f64, f64) {
    let (hx, hy) = (setup.hx, setup.hy);
    let wx = 2 * hx + 1;
    let mut best = (hx, hy, f32::NEG_INFINITY);
    for v in 0..2 * hy + 1 {
        let fy = v as f64 - hy as f64;
        if fy.abs() > setup.ry {
            continue;
        }
        for u in 0..wx {
            let fx = u as f64 - hx as f64;
            if fx.abs() > setup.rx {
                continue;
            }
            let val = window[v * wx + u];
            if val > best.2 {
                best = (u, v, val);
            }
        }
    }
    let (u, v, c) = best;
    let at = |uu: usize, vv: usize| window[vv * wx + uu] as f64;
    let parabola = |l: f64, c: f64, r: f64| {
        let den = l - 2.0 * c + r;
        if den < 0.0 {
            (0.5 * (l - r) / den).clamp(-1.0, 1.0)
        } else {
            0.0
        }
    };
    let c = c as f64;
    // |u − hx| ≤ rx < hx, so u ± 1 is inside the window.
    let ox = if setup.cx >= 3 {
        parabola(at(u - 1, v), c, at(u + 1, v))
    } else {
        0.0
    };
    let oy = if setup.cy >= 3 {
        parabola(at(u, v - 1), c, at(u, v + 1))
    } else {
        0.0
    };
    (u as f64 - hx as f64 + ox, v as f64 - hy as f64 + oy)
}

/// Replaces each axis of `shifts` by its least-squares polynomial of degree `deg` over frame
/// index (Legendre basis on [−1, 1], normal equations); no-op unless there are more frames
/// than coefficients.
fn smooth_polynomial(shifts: &mut [[f64; 2]], deg: usize) {
    let n = shifts.len();
    let m = deg + 1;
    if n <= m {
        return;
    }
    let basis = |t: f64| {
        let mut p = vec![1.0; m];
        if m > 1 {
            p[1] = t;
        }
        for k in 2..m {
            let kf = k as f64;
            p[k] = ((2.0 * kf - 1.0) * t * p[k - 1] - (kf - 1.0) * p[k - 2]) / kf;
        }
        p
    };
    let rows: Vec<Vec<f64>> = (0..n)
        .map(|f| basis(2.0 * f as f64 / (n - 1) as f64 - 1.0))
        .collect();
    for axis in 0..2 {
        // Augmented normal matrix [AᵀA | Aᵀb].
        let mut a = vec![vec![0.0; m + 1]; m];
        for (row, s) in rows.iter().zip(shifts.iter()) {
            for r in 0..m {
                for c in 0..m {
                    a[r][c] += row[r] * row[c];
                }
                a[r][m] += row[r] * s[axis];
            }
        }
        // Gaussian elimination with partial pivoting.
        for col in 0..m {
            let piv = (col..m)
                .max_by(|&x, &y| a[x][col].abs().total_cmp(&a[y][col].abs()))
                .unwrap_or(col);
            a.swap(col, piv);
            let d = a[col][col];
            if d.abs() < 1e-12 {
                return;
            }
            let pivot_row = a[col].clone();
            for (r, row) in a.iter_mut().enumerate() {
                if r != col {
                    let f = row[col] / d;
                    for (v, p) in row.iter_mut().zip(&pivot_row).skip(col) {
                        *v -= f * p;
                    }
                }
            }
        }
        let coef: Vec<f64> = (0..m).map(|r| a[r][m] / a[r][r]).collect();
        for (row, s) in rows.iter().zip(shifts.iter_mut()) {
            s[axis] = row.iter().zip(&coef).map(|(b, c)| b * c).sum();
        }
    }
}

#[cfg(test)]
#[path = "motion_tests.rs"]
mod tests;

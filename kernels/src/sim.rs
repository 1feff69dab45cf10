//! Synthetic movies with known truth, for testing motion correction and CTF estimation.
//!
//! The model, frame by frame:
//!
//! 1. **Specimen.** A weak-phase object `φ(x, y)`: a sum of isotropic Gaussian blobs (random
//!    centres, widths 1.5–4 px and signed heights), wrapped periodically, then shifted and
//!    scaled to zero mean and unit standard deviation.
//! 2. **Imaging.** Weak-phase approximation: the exit wave `exp(iσφ) ≈ 1 + iσφ` gives the
//!    intensity `I = 1 + ε·F⁻¹[CTF(k)·Φ(k)]`, with `CTF = −sin χ` from [`crate::ctf`] and `ε`
//!    ([`WEAK_PHASE_CONTRAST`]) absorbing the factor `2σ`; no envelope, no B-factor. Because `φ`
//!    has zero mean, the mean of `I` is exactly 1. Values below 0 (never reached at the
//!    default contrast) are clamped to 0.
//! 3. **Motion.** Whole-frame shifts along a smooth random trajectory (a fast initial
//!    exponential settle plus linear drift plus a gentle curve), with mean over frames zero and
//!    largest magnitude exactly `max_shift_px`. The shift of a frame is the displacement of
//!    the specimen content in that frame (DESIGN.md §6): +x toward increasing column, +y toward
//!    increasing row; applied as a Fourier phase ramp ([`crate::fft::shift_spectrum`],
//!    periodic wrap, Nyquist row/column zeroed). [`SimPath::Hard`] instead follows a fast
//!    start that decelerates along a curve, with a per-frame random walk on top
//!    ([`hard_trajectory`]).
//! 4. **Counting.** Each pixel's count is Poisson with mean `dose_per_px_per_frame·I`.
//!
//! Random numbers come from [`SplitMix64`] (Steele, Lea & Flood, "Fast splittable
//! pseudorandom number generators", OOPSLA 2014); Poisson variates from [`poisson`] (Knuth's
//! multiplication method below mean 30, Hörmann's PTRS transformed rejection above).
//! Everything is a deterministic function of `seed`.

use rustfft::num_complex::Complex32;

use crate::ctf::{Ctf, ctf_2d};
use crate::fft::{Fft2d, shift_spectrum};

/// `ε` of the weak-phase image `I = 1 + ε·(CTF ⊗ φ)` for a unit-variance specimen `φ`.
pub const WEAK_PHASE_CONTRAST: f64 = 0.1;

/// Mean below which [`poisson`] uses Knuth's method (and above which PTRS).
pub const POISSON_KNUTH_MAX: f64 = 30.0;

/// Parameters of a synthetic movie.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimParams {
    /// Width in pixels.
    pub nx: usize,
    /// Height in pixels.
    pub ny: usize,
    /// Number of frames.
    pub frames: usize,
    /// Pixel size in Å; overrides `ctf.pixel_size_a` (the truth records this value).
    pub pixel_size_a: f64,
    /// Mean electron count per pixel per frame.
    pub dose_per_px_per_frame: f64,
    /// The CTF applied to every frame.
    pub ctf: Ctf,
    /// Seed; equal parameters give identical movies.
    pub seed: u64,
    /// Largest whole-frame shift magnitude in pixels (after the mean is removed).
    pub max_shift_px: f64,
    /// The kind of path the frames follow.
    pub path: SimPath,
}

/// The kind of whole-frame trajectory of a synthetic movie.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum SimPath {
    /// [`trajectory`]: a smooth random path.
    #[default]
    Smooth,
    /// [`hard_trajectory`]: what beam-induced motion of real movies looks like at its worst
    /// for a smooth model: a fast start that decelerates along a curve, with a random walk of
    /// `jitter_px` (standard deviation per frame and axis) on top.
    Hard {
        /// Per-frame random-walk step, pixels.
        jitter_px: f64,
    },
}

/// What the simulation put in.
#[derive(Debug, Clone, PartialEq)]
pub struct SimTruth {
    /// Per-frame shift `[x, y]` in pixels (DESIGN.md §6 convention; mean zero).
    pub shifts_px: Vec<[f32; 2]>,
    /// The CTF used, with `pixel_size_a` set to the movie's pixel size.
    pub ctf: Ctf,
}

/// A synthetic movie: frames of counts (`nx × ny`, x fastest) and the truth behind them.
#[derive(Debug, Clone, PartialEq)]
pub struct SimMovie {
    /// One `nx·ny` image of (integer-valued) counts per frame.
    pub frames: Vec<Vec<f32>>,
    /// Shifts and CTF used.
    pub truth: SimTruth,
}

/// SplitMix64 pseudorandom generator: a 64-bit counter stepped by the golden-ratio constant
/// and passed through a bijective mixing function. Small, fast, seedable, not cryptographic.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in the open interval (0, 1), 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal variate (Box–Muller, one of the pair).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// `ln k!`: exact sum below 10, Stirling's series (to `k⁻⁵`) above.
fn ln_factorial(k: f64) -> f64 {
    if k < 10.0 {
        (2..=k as u64).map(|i| (i as f64).ln()).sum()
    } else {
        let (k2, k3) = (k * k, k * k * k);
        k * k.ln() - k + 0.5 * (std::f64::consts::TAU * k).ln() + 1.0 / (12.0 * k)
            - 1.0 / (360.0 * k3)
            + 1.0 / (1260.0 * k3 * k2)
    }
}

/// A Poisson variate with mean `mean` (≤ 0 or non-finite gives 0).
///
/// Below [`POISSON_KNUTH_MAX`]: Knuth's method (multiply uniforms until the product drops
/// below `e^−mean`). Above: PTRS, the transformed rejection with squeeze of W. Hörmann, "The
/// transformed rejection method for generating Poisson random variables", Insurance:
/// Mathematics and Economics 12 (1993) 39–45, which is exact for means ≥ 10.
pub fn poisson(rng: &mut SplitMix64, mean: f64) -> u64 {
    if mean.is_nan() || mean <= 0.0 || mean.is_infinite() {
        return 0;
    }
    if mean < POISSON_KNUTH_MAX {
        let limit = (-mean).exp();
        let mut k = 0u64;
        let mut p = rng.uniform();
        while p > limit {
            k += 1;
            p *= rng.uniform();
        }
        return k;
    }
    let smu = mean.sqrt();
    let b = 0.931 + 2.53 * smu;
    let a = -0.059 + 0.02483 * b;
    let inv_alpha = 1.1239 + 1.1328 / (b - 3.4);
    let vr = 0.9277 - 3.6224 / (b - 2.0);
    let ln_mean = mean.ln();
    loop {
        let u = rng.uniform() - 0.5;
        let v = rng.uniform();
        let us = 0.5 - u.abs();
        let k = ((2.0 * a / us + b) * u + mean + 0.43).floor();
        if us >= 0.07 && v <= vr {
            return k as u64;
        }
        if k < 0.0 || (us < 0.013 && v > us) {
            continue;
        }
        let lhs = (v * inv_alpha / (a / (us * us) + b)).ln();
        if lhs <= -mean + k * ln_mean - ln_factorial(k) {
            return k as u64;
        }
    }
}

/// A zero-mean, unit-variance weak-phase specimen on an `nx × ny` periodic grid: about one
/// Gaussian blob per 64 pixels, widths σ ∈ [1.5, 4] px, heights uniform in [−1, 1].
pub fn specimen(nx: usize, ny: usize, rng: &mut SplitMix64) -> Vec<f32> {
    let mut img = vec![0.0f64; nx * ny];
    let n_blobs = (nx * ny / 64).max(1);
    for _ in 0..n_blobs {
        let cx = rng.uniform() * nx as f64;
        let cy = rng.uniform() * ny as f64;
        let sigma = 1.5 + 2.5 * rng.uniform();
        let height = 2.0 * rng.uniform() - 1.0;
        let r = (4.0 * sigma).ceil() as i64;
        let inv = 1.0 / (2.0 * sigma * sigma);
        for oy in -r..=r {
            let py = cy.floor() as i64 + oy;
            let dy = py as f64 - cy;
            let y = py.rem_euclid(ny as i64) as usize;
            for ox in -r..=r {
                let px = cx.floor() as i64 + ox;
                let dx = px as f64 - cx;
                let x = px.rem_euclid(nx as i64) as usize;
                img[y * nx + x] += height * (-(dx * dx + dy * dy) * inv).exp();
            }
        }
    }
    let n = img.len() as f64;
    let mean = img.iter().sum::<f64>() / n;
    let var = img.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let scale = if var > 0.0 { 1.0 / var.sqrt() } else { 0.0 };
    img.iter().map(|v| ((v - mean) * scale) as f32).collect()
}

/// A smooth random trajectory of `frames` shifts `[x, y]` in pixels with mean zero and largest
/// magnitude `max_shift_px` (all zero for fewer than two frames or a zero maximum).
///
/// Each axis is `c₁(1 − e^{−4t}) + c₂·t + c₃·sin(πt)`, `t = f/(frames−1)`, `cᵢ` uniform in
/// [−1, 1]; then the mean is removed and the whole path scaled.
pub fn trajectory(frames: usize, max_shift_px: f64, rng: &mut SplitMix64) -> Vec<[f32; 2]> {
    if frames < 2 || max_shift_px.is_nan() || max_shift_px <= 0.0 {
        return vec![[0.0, 0.0]; frames];
    }
    let c: Vec<f64> = (0..6).map(|_| 2.0 * rng.uniform() - 1.0).collect();
    let path: Vec<[f64; 2]> = (0..frames)
        .map(|f| {
            let t = f as f64 / (frames - 1) as f64;
            let basis = [1.0 - (-4.0 * t).exp(), t, (std::f64::consts::PI * t).sin()];
            let ax = |o: usize| (0..3).map(|i| c[o + i] * basis[i]).sum::<f64>();
            [ax(0), ax(3)]
        })
        .collect();
    let n = frames as f64;
    let mx = path.iter().map(|p| p[0]).sum::<f64>() / n;
    let my = path.iter().map(|p| p[1]).sum::<f64>() / n;
    let peak = path
        .iter()
        .map(|p| (p[0] - mx).hypot(p[1] - my))
        .fold(0.0, f64::max);
    let scale = if peak > 0.0 { max_shift_px / peak } else { 0.0 };
    path.iter()
        .map(|p| [((p[0] - mx) * scale) as f32, ((p[1] - my) * scale) as f32])
        .collect()
}

/// A hard random trajectory of `frames` shifts (see [`SimPath::Hard`]): the specimen travels
/// a path whose progress is `p(t) = (1 − e^{−t/τ}) / (1 − e^{−1/τ})` (`t = f/(frames−1)`,
/// τ uniform in [0.12, 0.3]: a tenth to a third of the path in the first tenth of the
/// exposure), turning steadily by κ over it (|κ| uniform in [0.6, 1.6] rad, either sense,
/// starting direction uniform); scaled so its largest magnitude after the mean is removed is
/// `max_shift_px`; then a Gaussian random walk of `jitter_px` per frame and axis is added
/// (not scaled) and the mean removed again.
pub fn hard_trajectory(
    frames: usize,
    max_shift_px: f64,
    jitter_px: f64,
    rng: &mut SplitMix64,
) -> Vec<[f32; 2]> {
    if frames < 2 || max_shift_px.is_nan() || max_shift_px <= 0.0 {
        return vec![[0.0, 0.0]; frames];
    }
    let tau = 0.12 + 0.18 * rng.uniform();
    let kappa = (0.6 + rng.uniform()) * if rng.uniform() < 0.5 { -1.0 } else { 1.0 };
    let theta0 = 2.0 * std::f64::consts::PI * rng.uniform();
    let progress = |t: f64| (1.0 - (-t / tau).exp()) / (1.0 - (-1.0 / tau).exp());
    // The path integrated finely between frames (the direction turns with the progress).
    let mut path = vec![[0.0f64; 2]; frames];
    let sub = 16;
    for f in 1..frames {
        let mut p = path[f - 1];
        for k in 0..sub {
            let t0 = (f - 1) as f64 + k as f64 / sub as f64;
            let t1 = t0 + 1.0 / sub as f64;
            let n1 = (frames - 1) as f64;
            let (a, b) = (progress(t0 / n1), progress(t1 / n1));
            let dir = theta0 + kappa * 0.5 * (a + b);
            p[0] += (b - a) * dir.cos();
            p[1] += (b - a) * dir.sin();
        }
        path[f] = p;
    }
    let centre = |path: &mut Vec<[f64; 2]>| {
        let n = path.len() as f64;
        let mx = path.iter().map(|p| p[0]).sum::<f64>() / n;
        let my = path.iter().map(|p| p[1]).sum::<f64>() / n;
        for p in path.iter_mut() {
            p[0] -= mx;
            p[1] -= my;
        }
    };
    centre(&mut path);
    let peak = path.iter().map(|p| p[0].hypot(p[1])).fold(0.0, f64::max);
    let scale = if peak > 0.0 { max_shift_px / peak } else { 0.0 };
    let mut walk = [0.0f64; 2];
    for (f, p) in path.iter_mut().enumerate() {
        if f > 0 {
            walk[0] += jitter_px * rng.normal();
            walk[1] += jitter_px * rng.normal();
        }
        p[0] = p[0] * scale + walk[0];
        p[1] = p[1] * scale + walk[1];
    }
    centre(&mut path);
    path.iter().map(|p| [p[0] as f32, p[1] as f32]).collect()
}

/// What every frame starts from: the CTF (with the movie's pixel size), the spectrum of
/// `ε·CTF ⊗ φ` on the movie's grid, the whole-frame shifts, and the random stream after them.
struct Imaged {
    ctf: Ctf,
    spec: Vec<Complex32>,
    shifts: Vec<[f32; 2]>,
    rng: SplitMix64,
    fft: Fft2d,
}

fn imaged(params: &SimParams) -> Imaged {
    let (nx, ny) = (params.nx, params.ny);
    assert!(nx > 0 && ny > 0 && params.frames > 0, "sim: empty movie");
    let mut ctf = params.ctf;
    ctf.pixel_size_a = params.pixel_size_a;
    let mut rng = SplitMix64::new(params.seed);
    let phase = specimen(nx, ny, &mut rng);
    let shifts = match params.path {
        SimPath::Smooth => trajectory(params.frames, params.max_shift_px, &mut rng),
        SimPath::Hard { jitter_px } => {
            hard_trajectory(params.frames, params.max_shift_px, jitter_px, &mut rng)
        }
    };
    let mut fft = Fft2d::new(nx, ny);
    let mut spec = fft.forward(&phase);
    let eps = WEAK_PHASE_CONTRAST as f32;
    for (s, c) in spec.iter_mut().zip(ctf_2d(&ctf, nx, ny)) {
        *s *= c * eps;
    }
    Imaged {
        ctf,
        spec,
        shifts,
        rng,
        fft,
    }
}

/// The noise-free expected counts of every frame (`dose·I`, see the module docs) and the
/// truth; [`simulate`] draws Poisson counts from exactly these.
///
/// # Panics
/// If `nx`, `ny` or `frames` is zero.
pub fn expected_frames(params: &SimParams) -> (Vec<Vec<f32>>, SimTruth) {
    let (nx, ny) = (params.nx, params.ny);
    let Imaged {
        ctf,
        spec,
        shifts,
        mut fft,
        ..
    } = imaged(params);
    let dose = params.dose_per_px_per_frame as f32;
    let mut work = vec![Complex32::new(0.0, 0.0); spec.len()];
    let frames = shifts
        .iter()
        .map(|s| {
            work.copy_from_slice(&spec);
            shift_spectrum(&mut work, nx, ny, s[0] as f64, s[1] as f64);
            let mut img = fft.inverse(&work);
            for v in &mut img {
                *v = dose * (1.0 + *v).max(0.0);
            }
            img
        })
        .collect();
    (
        frames,
        SimTruth {
            shifts_px: shifts,
            ctf,
        },
    )
}

/// A synthetic movie: [`expected_frames`] with Poisson counts drawn per pixel (from a stream
/// seeded independently of the specimen's, so the truth does not depend on the noise).
///
/// # Panics
/// If `nx`, `ny` or `frames` is zero.
pub fn simulate(params: &SimParams) -> SimMovie {
    let (mut frames, truth) = expected_frames(params);
    let mut rng = SplitMix64::new(params.seed ^ 0x5DEE_CE66_D1CE_5EED);
    for frame in &mut frames {
        for v in frame.iter_mut() {
            *v = poisson(&mut rng, *v as f64) as f32;
        }
    }
    SimMovie { frames, truth }
}

/// A smooth field of local motion on top of the whole-frame shifts (see
/// [`simulate_local`]): the specimen at `(x, y)` is displaced in frame `f` by
/// `global[f] + L(x, y)·g[f]`, `L` a smooth random field, `g` rising from 0 with the
/// whole-frame path's progress (centred over frames).
#[derive(Debug, Clone, PartialEq)]
pub struct LocalField {
    /// Width of the movie, px.
    pub nx: usize,
    /// Height, px.
    pub ny: usize,
    /// The whole-frame shifts (mean zero).
    pub global: Vec<[f32; 2]>,
    /// `L`'s coefficients: `Lx = a₀u + a₁v + a₂uv`, `Ly = a₃u + a₄v + a₅(u² − ⅓)`, with
    /// `u = 2x/nx − 1`, `v = 2y/ny − 1`.
    pub coeffs: [f64; 6],
    /// Time profile per frame, mean zero.
    pub profile: Vec<f64>,
}

impl LocalField {
    /// The local part `L(x, y)` (px, at the end of the exposure relative to its start).
    pub fn field(&self, x: f64, y: f64) -> [f64; 2] {
        let u = 2.0 * x / self.nx as f64 - 1.0;
        let v = 2.0 * y / self.ny as f64 - 1.0;
        let a = &self.coeffs;
        [
            a[0] * u + a[1] * v + a[2] * u * v,
            a[3] * u + a[4] * v + a[5] * (u * u - 1.0 / 3.0),
        ]
    }

    /// The true displacement of the content at `(x, y)` in frame `f`, px.
    pub fn shift_at(&self, x: f64, y: f64, f: usize) -> [f64; 2] {
        let l = self.field(x, y);
        let g = self.profile[f];
        [
            f64::from(self.global[f][0]) + l[0] * g,
            f64::from(self.global[f][1]) + l[1] * g,
        ]
    }
}

/// A movie with local motion: [`simulate`]'s model, but every frame is the noise-free image
/// sampled at the positions `(x, y) − shift_at(x, y, f)` ([`LocalField`]) instead of shifted
/// as a whole. The image is evaluated on a grid twice as fine (the band-limited image
/// interpolated exactly in Fourier space) and sampled bilinearly there (periodic wrap). The
/// field's coefficients are uniform in `[−field_px, field_px]`, so the local part reaches a
/// few `field_px` at the corners; its time profile follows the path's progress
/// (`1 − e^{−4t}`). The truth's `shifts_px` are the whole-frame part.
///
/// # Panics
/// If `nx`, `ny` or `frames` is zero.
pub fn simulate_local(params: &SimParams, field_px: f64) -> (SimMovie, LocalField) {
    let (nx, ny) = (params.nx, params.ny);
    let Imaged {
        ctf,
        spec,
        shifts: global,
        mut rng,
        ..
    } = imaged(params);
    let coeffs = std::array::from_fn(|_| field_px * (2.0 * rng.uniform() - 1.0));
    let nf = params.frames;
    let raw: Vec<f64> = (0..nf)
        .map(|f| 1.0 - (-4.0 * f as f64 / (nf.max(2) - 1) as f64).exp())
        .collect();
    let mean = raw.iter().sum::<f64>() / nf as f64;
    let field = LocalField {
        nx,
        ny,
        global,
        coeffs,
        profile: raw.iter().map(|g| g - mean).collect(),
    };

    // The image I − 1 = ε·CTF ⊗ φ on the 2× grid.
    let (fx, fy) = (2 * nx, 2 * ny);
    let (h, fh) = (nx / 2 + 1, fx / 2 + 1);
    let mut fine_spec = vec![Complex32::new(0.0, 0.0); fh * fy];
    for j in 0..ny {
        let sj = j as i64 - if j > ny / 2 { ny as i64 } else { 0 };
        if 2 * sj.unsigned_abs() as usize >= ny {
            continue; // the Nyquist row
        }
        let tj = sj.rem_euclid(fy as i64) as usize;
        for i in 0..h.min(nx / 2 + usize::from(nx % 2 == 1)) {
            fine_spec[tj * fh + i] = spec[j * h + i] * 4.0;
        }
    }
    let fine = Fft2d::new(fx, fy).inverse(&fine_spec);
    let dose = params.dose_per_px_per_frame as f32;
    let sample = |x: f64, y: f64| -> f32 {
        // Bilinear on the 2× grid, periodic.
        let (gx, gy) = (2.0 * x, 2.0 * y);
        let (x0, y0) = (gx.floor(), gy.floor());
        let (tx, ty) = ((gx - x0) as f32, (gy - y0) as f32);
        let wrap = |v: f64, n: usize| (v as i64).rem_euclid(n as i64) as usize;
        let (xa, xb) = (wrap(x0, fx), wrap(x0 + 1.0, fx));
        let (ya, yb) = (wrap(y0, fy), wrap(y0 + 1.0, fy));
        let at = |xx: usize, yy: usize| fine[yy * fx + xx];
        (1.0 - ty) * ((1.0 - tx) * at(xa, ya) + tx * at(xb, ya))
            + ty * ((1.0 - tx) * at(xa, yb) + tx * at(xb, yb))
    };
    let mut noise = SplitMix64::new(params.seed ^ 0x5DEE_CE66_D1CE_5EED);
    let frames = (0..nf)
        .map(|f| {
            let mut img = vec![0.0f32; nx * ny];
            for y in 0..ny {
                for x in 0..nx {
                    let d = field.shift_at(x as f64, y as f64, f);
                    let v = dose * (1.0 + sample(x as f64 - d[0], y as f64 - d[1])).max(0.0);
                    img[y * nx + x] = poisson(&mut noise, f64::from(v)) as f32;
                }
            }
            img
        })
        .collect();
    let movie = SimMovie {
        frames,
        truth: SimTruth {
            shifts_px: field.global.clone(),
            ctf,
        },
    };
    (movie, field)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctf::radial_average;

    fn params(nx: usize, ny: usize, frames: usize) -> SimParams {
        SimParams {
            nx,
            ny,
            frames,
            pixel_size_a: 1.0,
            dose_per_px_per_frame: 2.0,
            ctf: Ctf {
                voltage_kv: 300.0,
                cs_mm: 2.7,
                amplitude_contrast: 0.07,
                pixel_size_a: 0.0,
                defocus_u_um: 1.5,
                defocus_v_um: 1.5,
                astig_angle_deg: 0.0,
                phase_shift_pi: 0.0,
            },
            seed: 42,
            max_shift_px: 3.0,
            path: crate::sim::SimPath::Smooth,
        }
    }

    #[test]
    fn poisson_moments() {
        let mut rng = SplitMix64::new(7);
        for &mean in &[0.3, 2.0, 12.0, 29.5, 30.5, 80.0, 1000.0] {
            let n = 40_000;
            let xs: Vec<f64> = (0..n).map(|_| poisson(&mut rng, mean) as f64).collect();
            let m = xs.iter().sum::<f64>() / n as f64;
            let var = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1) as f64;
            let se = (mean / n as f64).sqrt();
            assert!((m - mean).abs() < 5.0 * se, "mean {mean}: {m}");
            assert!((var / mean - 1.0).abs() < 0.05, "mean {mean}: var {var}");
        }
        assert_eq!(poisson(&mut rng, 0.0), 0);
        assert_eq!(poisson(&mut rng, f64::NAN), 0);
    }

    #[test]
    fn ln_factorial_matches_exact() {
        let mut exact = 0.0f64;
        for k in 1..60u64 {
            exact += (k as f64).ln();
            assert!(
                (ln_factorial(k as f64) - exact).abs() < 1e-10 * exact.max(1.0),
                "{k}"
            );
        }
    }

    #[test]
    fn deterministic_by_seed() {
        let p = params(32, 24, 3);
        let a = simulate(&p);
        assert_eq!(a, simulate(&p));
        let b = simulate(&SimParams { seed: 43, ..p });
        assert_ne!(a.frames, b.frames);
        assert_ne!(a.truth.shifts_px, b.truth.shifts_px);
        assert_eq!(a.truth.ctf.pixel_size_a, 1.0);
    }

    #[test]
    fn mean_counts_match_dose() {
        let p = params(64, 64, 4);
        let m = simulate(&p);
        assert_eq!(m.frames.len(), 4);
        let all: Vec<f32> = m.frames.concat();
        assert!(all.iter().all(|v| *v >= 0.0 && v.fract() == 0.0));
        let mean = all.iter().map(|&v| v as f64).sum::<f64>() / all.len() as f64;
        assert!((mean - 2.0).abs() < 0.05, "{mean}");
        // The expected image has mean exactly the dose.
        let (exp, _) = expected_frames(&p);
        let em = exp[0].iter().map(|&v| v as f64).sum::<f64>() / exp[0].len() as f64;
        assert!((em - 2.0).abs() < 1e-4, "{em}");
    }

    #[test]
    fn trajectory_is_centred_and_bounded() {
        let mut rng = SplitMix64::new(3);
        let t = trajectory(30, 5.0, &mut rng);
        let mx: f64 = t.iter().map(|s| s[0] as f64).sum::<f64>() / 30.0;
        let my: f64 = t.iter().map(|s| s[1] as f64).sum::<f64>() / 30.0;
        assert!(mx.abs() < 1e-5 && my.abs() < 1e-5);
        let peak = t
            .iter()
            .map(|s| (s[0] as f64).hypot(s[1] as f64))
            .fold(0.0, f64::max);
        assert!((peak - 5.0).abs() < 1e-5);
        assert_eq!(trajectory(1, 5.0, &mut rng), vec![[0.0, 0.0]]);
    }

    /// Shift `d` maximising `Σₓ a(x)·b(x + d)`: integer peak of the FFT cross-correlation, then
    /// a fine search of its band-limited (DFT) interpolation.
    fn cc_shift(a: &[f32], b: &[f32], nx: usize, ny: usize) -> (f64, f64) {
        let mut fft = Fft2d::new(nx, ny);
        let centre = |v: &[f32]| {
            let m = v.iter().sum::<f32>() / v.len() as f32;
            v.iter().map(|x| x - m).collect::<Vec<f32>>()
        };
        let fa = fft.forward(&centre(a));
        let fb = fft.forward(&centre(b));
        let p: Vec<Complex32> = fa.iter().zip(&fb).map(|(x, y)| y * x.conj()).collect();
        let cc = fft.inverse(&p);
        let best = (0..cc.len()).fold(0, |bi, i| if cc[i] > cc[bi] { i } else { bi });
        let wrap = |v: usize, n: usize| crate::fft::signed_freq(v, n) as f64;
        let (mut dx, mut dy) = (wrap(best % nx, nx), wrap(best / nx, ny));
        let nxh = nx / 2 + 1;
        let eval = |dx: f64, dy: f64| {
            let mut s = 0.0f64;
            for j in 0..ny {
                let fy = crate::fft::signed_freq(j, ny) as f64 / ny as f64;
                for i in 0..nxh {
                    let w = if i == 0 || (nx.is_multiple_of(2) && i == nx / 2) {
                        1.0
                    } else {
                        2.0
                    };
                    let ph = std::f64::consts::TAU * (i as f64 / nx as f64 * dx + fy * dy);
                    let c = p[j * nxh + i];
                    s += w * (c.re as f64 * ph.cos() - c.im as f64 * ph.sin());
                }
            }
            s
        };
        for &(range, step) in &[(0.6, 0.05), (0.06, 0.005), (0.006, 0.0005)] {
            let n = (range / step) as i64;
            let (cx, cy) = (dx, dy);
            let mut best_v = f64::NEG_INFINITY;
            for iy in -n..=n {
                for ix in -n..=n {
                    let (x, y) = (cx + ix as f64 * step, cy + iy as f64 * step);
                    let v = eval(x, y);
                    if v > best_v {
                        best_v = v;
                        (dx, dy) = (x, y);
                    }
                }
            }
        }
        (dx, dy)
    }

    #[test]
    fn shifts_are_applied_as_content_displacement() {
        let p = params(64, 64, 8);
        let (frames, truth) = expected_frames(&p);
        let s = &truth.shifts_px;
        let (a, b) = (0, 7);
        let want = ((s[b][0] - s[a][0]) as f64, (s[b][1] - s[a][1]) as f64);
        assert!(
            want.0.hypot(want.1) > 1.0,
            "trajectory too short to test: {want:?}"
        );
        let got = cc_shift(&frames[a], &frames[b], 64, 64);
        assert!(
            (got.0 - want.0).abs() < 0.05 && (got.1 - want.1).abs() < 0.05,
            "got {got:?}, want {want:?}"
        );
    }

    #[test]
    fn power_spectrum_zero_where_ctf_predicts() {
        let (n, bins) = (256, 128);
        let p = SimParams {
            max_shift_px: 0.0,
            path: crate::sim::SimPath::Smooth,
            ..params(n, n, 1)
        };
        let (frames, truth) = expected_frames(&p);
        let mean = frames[0].iter().sum::<f32>() / (n * n) as f32;
        let centred: Vec<f32> = frames[0].iter().map(|v| v - mean).collect();
        let spec = Fft2d::new(n, n).forward(&centred);
        let power: Vec<f32> = spec.iter().map(|c| c.norm_sqr()).collect();
        let ra = radial_average(&power, n, n, bins);
        let df = truth.ctf.defocus_u_um * 1e4;
        let k1 = truth.ctf.zero_k(df, 1).unwrap();
        let k2 = truth.ctf.zero_k(df, 2).unwrap();
        // Ring b is centred on (b + ½)/(2·bins) 1/Å at 1 Å/px.
        let to_bin = |k: f64| k * 2.0 * bins as f64 - 0.5;
        let (lo, hi) = (to_bin(0.6 * k1) as usize, to_bin(0.5 * (k1 + k2)) as usize);
        let b = (lo..=hi).fold(lo, |m, i| if ra[i] < ra[m] { i } else { m });
        assert!(b > lo && b < hi);
        // Parabola through the minimum ring and its neighbours.
        let (y0, y1, y2) = (ra[b - 1] as f64, ra[b] as f64, ra[b + 1] as f64);
        let off = 0.5 * (y0 - y2) / (y0 - 2.0 * y1 + y2);
        let k_min = (b as f64 + 0.5 + off) / (2.0 * bins as f64);
        assert!(
            (k_min / k1 - 1.0).abs() < 0.03,
            "minimum at {k_min}, zero at {k1}"
        );
        // And it is a deep minimum relative to the first peak.
        let peak = ra[lo..b].iter().fold(0.0f32, |m, &v| m.max(v));
        assert!(ra[b] < 0.2 * peak);
    }
}

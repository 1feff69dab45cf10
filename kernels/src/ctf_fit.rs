//! CTF estimation from a micrograph (or a sum of movie frames), DESIGN.md §6 conventions:
//! defocus in µm (positive = underfocus, U ≥ V), astigmatism angle in degrees of the U axis
//! from +x in `[0, 180)`, phase shift in units of π rad.
//!
//! The method follows the general scheme of CTFFIND4 (Rohou & Grigorieff, "CTFFIND4: Fast and
//! accurate defocus estimation from electron micrographs", JSB 192 (2015) 216–221), Gctf
//! (Zhang, "Gctf: Real-time CTF determination and correction", JSB 193 (2016) 1–12) and Warp
//! (Tegunov & Cramer, Nat. Methods 16 (2019) 1146–1152); it is an independent implementation:
//!
//! 1. **Power spectrum** ([`power_spectrum`]): Welch's method — the image is cut into square
//!    tiles of `window` pixels overlapping by 50 %, each tile is mean-subtracted and multiplied
//!    by a separable Tukey taper (cosine edges over 1/8 of the tile on each side), and the
//!    `|FFT|²` of the tiles are averaged.
//! 2. **Background and envelope** (see [`estimate_ctf`]): within the fit range the radial
//!    profile `P(k)` is first divided by a smooth trend `S₀(k) = exp(poly₆(ln k))` (least
//!    squares on `ln P`), then a smooth background `a(k)` — piecewise linear in `k` — is fitted
//!    to `P/S₀` and subtracted, and the result is scaled to unit RMS over the fit range. In the
//!    first pass `a` has knots evenly spaced in `ln k`; in later passes the knots sit at the fit
//!    range ends and at every second CTF zero of the previous estimate, and `P/S₀ ≈ a(k) +
//!    b(k)·CTF²(k)` is fitted jointly, `b ≥ 0` being the signal envelope. Passes repeat until the
//!    1D defocus moves by less than half a grid step, at most [`MAX_BACKGROUND_PASSES`] times
//!    (then the best-correlating pass is kept). The same `S₀`, `a` and `b`, as functions
//!    of `|k|`, are applied to every bin of the 2D spectrum. `b` weights the model in the
//!    correlations below (`b·CTF²`, a matched filter), so rings without signal count little.
//! 3. **1D search**: defocus (and, with `fit_phase`, phase shift) on a grid maximising the
//!    Pearson correlation between the background-subtracted radial profile and `b·CTF²` within
//!    the fit range, then a golden-section refinement of the defocus.
//! 4. **2D refinement**: Nelder–Mead on `(Δf_mean, a_x, a_y[, φ])` maximising the Pearson
//!    correlation between the background-subtracted 2D spectrum and the 2D `b·CTF²` over all
//!    bins in the fit range, where `Δf(θ) = Δf_mean + a_x cos 2θ + a_y sin 2θ` (so
//!    `U − V = 2√(a_x² + a_y²)` and `θ_ast = ½ atan2(a_y, a_x)`), started from the 1D defocus
//!    with astigmatism 0.1 µm at 0°, 45°, 90° and 135°.
//! 5. **Fit resolution**: every 2D bin is mapped to the "equivalent" frequency `k_eq` at which
//!    the isotropic CTF with the mean defocus has the same phase χ (as in CTFFIND4's 1D
//!    diagnostic), observed and model values are averaged in rings of `k_eq`, and for each ring
//!    the Pearson correlation of the two ring profiles is taken over the rings whose χ lies
//!    within ±π of the ring's own (one `CTF²` period either side, at least ±2 rings). The fit
//!    resolution is `1/k` of the first ring, counting outward from the low end of the fit
//!    range, whose correlation falls below [`CtfFitOptions::resolution_threshold`] (0.3 by
//!    default); only rings inside the fit range are evaluated, so if none drops below, it is
//!    the high-resolution end of the fit range.
//!
//! The spectrum layout is the half-complex one of [`crate::fft`] and [`crate::ctf`].

use std::f64::consts::PI;

use crate::ctf::{Ctf, radial_average, radial_bin_k};
use crate::fft::{Fft2d, bin_k};

/// An averaged power spectrum of square tiles, in the half-complex layout of [`crate::fft`]:
/// `n/2 + 1` columns (x frequency `0..=n/2`) by `n` rows (y frequency in `fftfreq` order),
/// index `j·(n/2+1) + i`; bin `(i, j)` is the frequency `(i, signed_freq(j, n))/(n·p)`.
/// Not centred. Values are the mean of `|F|²` over the tiles (unnormalised forward FFT).
#[derive(Debug, Clone, PartialEq)]
pub struct Spectrum {
    /// Tile size (the spectrum is of an `n × n` tile).
    pub n: usize,
    /// `(n/2 + 1)·n` power values.
    pub data: Vec<f32>,
    /// Number of tiles averaged.
    pub tiles: usize,
}

/// Default tile size of [`power_spectrum`].
pub const DEFAULT_WINDOW: usize = 512;

/// Tile origins along one axis of length `len` for tiles of `w` with 50 % overlap; the last
/// tile is aligned to the end so the whole axis is covered.
fn tile_starts(len: usize, w: usize) -> Vec<usize> {
    let step = (w / 2).max(1);
    let mut v: Vec<usize> = (0..)
        .map(|i| i * step)
        .take_while(|&s| s + w <= len)
        .collect();
    if let Some(&last) = v.last()
        && last + w < len
    {
        v.push(len - w);
    }
    v
}

/// Tukey taper of length `w`: cosine ramps over `w/8` samples at each end, 1 in between.
fn tukey(w: usize) -> Vec<f32> {
    let r = (w / 8).max(1);
    (0..w)
        .map(|i| {
            let d = i.min(w - 1 - i);
            if d >= r {
                1.0
            } else {
                (0.5 - 0.5 * (PI * (d as f64 + 0.5) / r as f64).cos()) as f32
            }
        })
        .collect()
}

/// Tile origins `(x0, y0)` and the 2D taper's 1D profile of [`power_spectrum`] for tiles of
/// `w` pixels (shared with the GPU backend so both use the same tiles).
pub fn tile_layout(nx: usize, ny: usize, w: usize) -> (Vec<(usize, usize)>, Vec<f32>) {
    let mut origins = Vec::new();
    for &y0 in &tile_starts(ny, w) {
        for &x0 in &tile_starts(nx, w) {
            origins.push((x0, y0));
        }
    }
    (origins, tukey(w))
}

/// Mean of the `w × w` tile at `(x0, y0)` of an image `nx` pixels wide (f64 accumulation).
pub fn tile_mean(image: &[f32], nx: usize, x0: usize, y0: usize, w: usize) -> f32 {
    let sum: f64 = (y0..y0 + w)
        .flat_map(|y| &image[y * nx + x0..y * nx + x0 + w])
        .map(|&v| v as f64)
        .sum();
    (sum / (w * w) as f64) as f32
}

/// The tile side [`power_spectrum`] uses for an `nx × ny` image of `len` pixels and `window`:
/// the window, at most the image's smaller side, made even; or why there is none (the image
/// is not `nx·ny` pixels, or the tile would be under 16 px).
pub fn tile_size(len: usize, nx: usize, ny: usize, window: usize) -> Result<usize, String> {
    if len != nx * ny {
        return Err(format!("the image holds {len} pixels, not {nx}×{ny}"));
    }
    let w = window.min(nx).min(ny) & !1;
    if w < 16 {
        return Err(format!(
            "a tile of {w} px (window {window}, image {nx}×{ny}) is too small: 16 px at least"
        ));
    }
    Ok(w)
}

/// Averaged power spectrum of the `nx × ny` image (x fastest) over tiles of `window` pixels
/// (clamped to the image's smaller side and made even) overlapping by 50 %; each tile is
/// mean-subtracted and tapered (module docs, step 1). Pass a micrograph or a sum of frames.
///
/// # Panics
/// If `image.len() != nx·ny` or the tile would be smaller than 16 pixels.
pub fn power_spectrum(image: &[f32], nx: usize, ny: usize, window: usize) -> Spectrum {
    let w =
        tile_size(image.len(), nx, ny, window).unwrap_or_else(|e| panic!("power_spectrum: {e}"));
    let nxh = w / 2 + 1;
    let taper = tukey(w);
    let mut fft = Fft2d::new(w, w);
    let mut tile = vec![0.0f32; w * w];
    let mut acc = vec![0.0f64; nxh * w];
    let mut tiles = 0;
    for &y0 in &tile_starts(ny, w) {
        for &x0 in &tile_starts(nx, w) {
            let mean = tile_mean(image, nx, x0, y0, w);
            for y in 0..w {
                let row = &image[(y0 + y) * nx + x0..(y0 + y) * nx + x0 + w];
                for x in 0..w {
                    tile[y * w + x] = (row[x] - mean) * taper[x] * taper[y];
                }
            }
            let spec = fft.forward(&tile);
            for (a, c) in acc.iter_mut().zip(&spec) {
                *a += c.norm_sqr() as f64;
            }
            tiles += 1;
        }
    }
    let inv = 1.0 / tiles as f64;
    Spectrum {
        n: w,
        data: acc.iter().map(|&v| (v * inv) as f32).collect(),
        tiles,
    }
}

/// Options of [`estimate_ctf`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CtfFitOptions {
    /// Low-resolution end of the fit range, Å.
    pub range_min_a: f64,
    /// High-resolution end of the fit range, Å (clamped to Nyquist).
    pub range_max_a: f64,
    /// Smallest defocus searched, µm.
    pub defocus_min_um: f64,
    /// Largest defocus searched, µm.
    pub defocus_max_um: f64,
    /// Grid step of the 1D defocus search, µm.
    pub defocus_step_um: f64,
    /// Also fit a phase shift (phase plate) in `[0, 1)·π`.
    pub fit_phase: bool,
    /// Refine astigmatism against the 2D spectrum (otherwise U = V from the 1D search).
    pub fit_astigmatism: bool,
    /// Local correlation below which the fit resolution is reached (module docs, step 5).
    pub resolution_threshold: f64,
}

impl Default for CtfFitOptions {
    fn default() -> Self {
        CtfFitOptions {
            range_min_a: 30.0,
            range_max_a: 4.0,
            defocus_min_um: 0.5,
            defocus_max_um: 5.0,
            defocus_step_um: 0.01,
            fit_phase: false,
            fit_astigmatism: true,
            resolution_threshold: 0.3,
        }
    }
}

/// Result of [`estimate_ctf`] (DESIGN.md §6 units and conventions).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CtfFit {
    /// Defocus along U (major axis), µm; `≥ defocus_v_um`.
    pub defocus_u_um: f64,
    /// Defocus along V (minor axis), µm.
    pub defocus_v_um: f64,
    /// Angle of the U axis from +x, degrees, in `[0, 180)`.
    pub astig_angle_deg: f64,
    /// Phase shift in units of π (0 unless `fit_phase`).
    pub phase_shift_pi: f64,
    /// Final Pearson correlation between background-subtracted spectrum and model `CTF²`
    /// (2D, or 1D when astigmatism is not fitted).
    pub score: f64,
    /// Resolution (Å) to which the fit agrees with the data (module docs, step 5).
    pub fit_resolution_a: f64,
}

impl CtfFit {
    /// The fitted CTF as [`Ctf`], with the given optics.
    pub fn params(
        &self,
        pixel_size_a: f64,
        voltage_kv: f64,
        cs_mm: f64,
        amplitude_contrast: f64,
    ) -> Ctf {
        Ctf {
            voltage_kv,
            cs_mm,
            amplitude_contrast,
            pixel_size_a,
            defocus_u_um: self.defocus_u_um,
            defocus_v_um: self.defocus_v_um,
            astig_angle_deg: self.astig_angle_deg,
            phase_shift_pi: self.phase_shift_pi,
        }
    }
}

/// Pearson correlation accumulator.
#[derive(Default, Clone, Copy)]
struct Corr {
    n: f64,
    x: f64,
    y: f64,
    xx: f64,
    yy: f64,
    xy: f64,
}

impl Corr {
    fn add(&mut self, x: f64, y: f64) {
        self.n += 1.0;
        self.x += x;
        self.y += y;
        self.xx += x * x;
        self.yy += y * y;
        self.xy += x * y;
    }
    fn merge(&mut self, o: &Corr) {
        self.n += o.n;
        self.x += o.x;
        self.y += o.y;
        self.xx += o.xx;
        self.yy += o.yy;
        self.xy += o.xy;
    }
    fn value(&self) -> f64 {
        if self.n < 2.0 {
            return 0.0;
        }
        let cxy = self.xy - self.x * self.y / self.n;
        let cxx = self.xx - self.x * self.x / self.n;
        let cyy = self.yy - self.y * self.y / self.n;
        if cxx <= 0.0 || cyy <= 0.0 {
            0.0
        } else {
            cxy / (cxx * cyy).sqrt()
        }
    }
}

/// Solves the symmetric system `a·x = b` (`a` is `n×n`, row-major) by Gaussian elimination
/// with partial pivoting, after adding a tiny ridge for stability.
fn solve(mut a: Vec<f64>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    let tr = (0..n).map(|i| a[i * n + i].abs()).sum::<f64>() / n as f64;
    for i in 0..n {
        a[i * n + i] += 1e-10 * tr.max(1e-300);
    }
    for c in 0..n {
        let p = (c..n)
            .max_by(|&i, &j| a[i * n + c].abs().total_cmp(&a[j * n + c].abs()))
            .unwrap_or(c);
        if p != c {
            for k in 0..n {
                a.swap(c * n + k, p * n + k);
            }
            b.swap(c, p);
        }
        let d = a[c * n + c];
        if d == 0.0 {
            continue;
        }
        for r in c + 1..n {
            let f = a[r * n + c] / d;
            if f != 0.0 {
                for k in c..n {
                    a[r * n + k] -= f * a[c * n + k];
                }
                b[r] -= f * b[c];
            }
        }
    }
    let mut x = vec![0.0; n];
    for c in (0..n).rev() {
        let s: f64 = (c + 1..n).map(|k| a[c * n + k] * x[k]).sum();
        let d = a[c * n + c];
        x[c] = if d == 0.0 { 0.0 } else { (b[c] - s) / d };
    }
    x
}

/// Linear least squares `min Σ (Σⱼ xⱼ·basis(t)ⱼ − y)²` over the samples.
fn lstsq(samples: &[(Vec<f64>, f64)], m: usize) -> Vec<f64> {
    let mut a = vec![0.0; m * m];
    let mut b = vec![0.0; m];
    for (row, y) in samples {
        for i in 0..m {
            b[i] += row[i] * y;
            for j in 0..m {
                a[i * m + j] += row[i] * row[j];
            }
        }
    }
    solve(a, b)
}

/// Smooth background model of the spectrum as a function of `|k|`: `S₀(k)·(1 + …)` then the
/// piecewise-linear `a(k)`; see the module docs, step 2.
struct Background {
    /// `ln S₀ = c₀ + c₁ ln k + c₂ ln² k`.
    c: Vec<f64>,
    /// Reference frequency of the `ln` polynomial.
    k_ref: f64,
    /// Knots of `a(k)` (1/Å) and their values.
    knots: Vec<f64>,
    vals: Vec<f64>,
    /// RMS of the background-subtracted profile in the fit range (for normalisation).
    scale: f64,
    /// Envelope `b(k)` at the knots (joint fits only), clamped at 0.
    env: Option<Vec<f64>>,
}

/// Degree of the polynomial in `ln k` fitted to `ln P` for `S₀`.
const S0_DEGREE: usize = 6;

/// `exp(Σ c_d·x^d)`.
fn poly_exp(c: &[f64], x: f64) -> f64 {
    c.iter().rev().fold(0.0, |acc, &cd| acc * x + cd).exp()
}

fn hats(knots: &[f64], k: f64) -> Vec<f64> {
    let m = knots.len();
    let mut h = vec![0.0; m];
    if k <= knots[0] {
        h[0] = 1.0;
    } else if k >= knots[m - 1] {
        h[m - 1] = 1.0;
    } else {
        let i = knots.partition_point(|&t| t <= k) - 1;
        let f = (k - knots[i]) / (knots[i + 1] - knots[i]);
        h[i] = 1.0 - f;
        h[i + 1] = f;
    }
    h
}

impl Background {
    /// Fits `S₀` to `ln p`, then the piecewise-linear `a(k)` with the given `knots` to
    /// `p/S₀`; with `ctf2` (model `CTF²` at each `ks`), jointly with a piecewise-linear
    /// envelope `b(k)` on the same knots, `p/S₀ ≈ a + b·CTF²`, keeping only `a`.
    fn fit(ks: &[f64], p: &[f64], knots: Vec<f64>, ctf2: Option<&[f64]>) -> Background {
        let k_ref = ks[0];
        let rows: Vec<(Vec<f64>, f64)> = ks
            .iter()
            .zip(p)
            .map(|(&k, &v)| {
                let x = (k / k_ref).ln();
                let row: Vec<f64> = (0..=S0_DEGREE).map(|d| x.powi(d as i32)).collect();
                (row, v.max(1e-30).ln())
            })
            .collect();
        let c = lstsq(&rows, S0_DEGREE + 1);
        let m = knots.len();
        let s0 = |k: f64| poly_exp(&c, (k / k_ref).ln());
        let rows: Vec<(Vec<f64>, f64)> = ks
            .iter()
            .zip(p)
            .enumerate()
            .map(|(r, (&k, &v))| {
                let mut h = hats(&knots, k);
                if let Some(c2) = ctf2 {
                    let extra: Vec<f64> = h.iter().map(|x| x * c2[r]).collect();
                    h.extend(extra);
                }
                (h, v / s0(k))
            })
            .collect();
        let mut vals = lstsq(&rows, if ctf2.is_some() { 2 * m } else { m });
        let env = ctf2.map(|_| vals[m..].iter().map(|&b| b.max(0.0)).collect());
        vals.truncate(m);
        let mut bg = Background {
            c,
            k_ref,
            knots,
            vals,
            scale: 1.0,
            env,
        };
        let ms = ks
            .iter()
            .zip(p)
            .map(|(&k, &v)| bg.apply(k, v).powi(2))
            .sum::<f64>()
            / ks.len() as f64;
        bg.scale = if ms > 0.0 { ms.sqrt() } else { 1.0 };
        bg
    }

    /// Relative signal envelope `b(k)` (1 everywhere before a joint fit), the weight of the
    /// model `CTF²` in the correlations (a matched filter: rings without signal count little).
    fn envelope(&self, k: f64) -> f64 {
        match &self.env {
            None => 1.0,
            Some(e) => hats(&self.knots, k).iter().zip(e).map(|(h, b)| h * b).sum(),
        }
    }

    /// Background-subtracted, normalised value of power `v` at frequency `k`.
    fn apply(&self, k: f64, v: f64) -> f64 {
        // S₀ is only trusted inside the fit range; outside it is held at the end values.
        let kc = k.clamp(self.knots[0], self.knots[self.knots.len() - 1]);
        let s0 = poly_exp(&self.c, (kc / self.k_ref).ln());
        let a: f64 = hats(&self.knots, k)
            .iter()
            .zip(&self.vals)
            .map(|(h, a)| h * a)
            .sum();
        (v / s0 - a) / self.scale
    }
}

/// Constants of χ for one optics set: `χ = c2·k²·Δf − c4·k⁴ + w + π·φ` (Δf Å, k 1/Å).
#[derive(Clone, Copy)]
struct ChiTerms {
    c2: f64,
    c4: f64,
    w: f64,
}

impl ChiTerms {
    fn new(voltage_kv: f64, cs_mm: f64, amplitude_contrast: f64) -> ChiTerms {
        let p = Ctf {
            voltage_kv,
            cs_mm,
            amplitude_contrast,
            pixel_size_a: 1.0,
            defocus_u_um: 0.0,
            defocus_v_um: 0.0,
            astig_angle_deg: 0.0,
            phase_shift_pi: 0.0,
        };
        let l = p.wavelength_a();
        ChiTerms {
            c2: PI * l,
            c4: 0.5 * PI * cs_mm * 1e7 * l.powi(3),
            w: p.phase_offset(),
        }
    }
    fn chi(&self, k2: f64, df_um: f64, phase_pi: f64) -> f64 {
        self.c2 * k2 * df_um * 1e4 - self.c4 * k2 * k2 + self.w + PI * phase_pi
    }
    /// `k²` at which the isotropic χ (mean defocus) equals `chi`; `None` beyond the turn-over.
    fn k2_for_chi(&self, chi: f64, df_um: f64, phase_pi: f64) -> Option<f64> {
        let b = self.c2 * df_um * 1e4;
        let c = chi - self.w - PI * phase_pi;
        if self.c4 == 0.0 {
            return (b > 0.0).then(|| c / b);
        }
        let disc = b * b - 4.0 * self.c4 * c;
        if disc < 0.0 {
            return None;
        }
        Some((b - disc.sqrt()) / (2.0 * self.c4))
    }
}

/// One 2D bin in the fit range.
struct Bin {
    k2: f64,
    cos2: f64,
    sin2: f64,
    obs: f64,
    env: f64,
}

/// Nelder–Mead simplex minimisation of `f` from `x0` with initial steps `step`.
fn nelder_mead(
    f: &mut dyn FnMut(&[f64]) -> f64,
    x0: &[f64],
    step: &[f64],
    iters: usize,
) -> (Vec<f64>, f64) {
    let n = x0.len();
    let mut pts: Vec<Vec<f64>> = vec![x0.to_vec()];
    for i in 0..n {
        let mut p = x0.to_vec();
        p[i] += step[i];
        pts.push(p);
    }
    let mut vals: Vec<f64> = pts.iter().map(|p| f(p)).collect();
    for _ in 0..iters {
        let mut idx: Vec<usize> = (0..=n).collect();
        idx.sort_by(|&a, &b| vals[a].total_cmp(&vals[b]));
        pts = idx.iter().map(|&i| pts[i].clone()).collect();
        vals = idx.iter().map(|&i| vals[i]).collect();
        if (vals[n] - vals[0]).abs() < 1e-9 {
            break;
        }
        let cen: Vec<f64> = (0..n)
            .map(|d| pts[..n].iter().map(|p| p[d]).sum::<f64>() / n as f64)
            .collect();
        let along =
            |t: f64| -> Vec<f64> { (0..n).map(|d| cen[d] + t * (pts[n][d] - cen[d])).collect() };
        let xr = along(-1.0);
        let fr = f(&xr);
        if fr < vals[0] {
            let xe = along(-2.0);
            let fe = f(&xe);
            if fe < fr {
                pts[n] = xe;
                vals[n] = fe;
            } else {
                pts[n] = xr;
                vals[n] = fr;
            }
        } else if fr < vals[n - 1] {
            pts[n] = xr;
            vals[n] = fr;
        } else {
            let xc = if fr < vals[n] {
                along(-0.5)
            } else {
                along(0.5)
            };
            let fc = f(&xc);
            if fc < vals[n].min(fr) {
                pts[n] = xc;
                vals[n] = fc;
            } else {
                for i in 1..=n {
                    let p: Vec<f64> = (0..n)
                        .map(|d| pts[0][d] + 0.5 * (pts[i][d] - pts[0][d]))
                        .collect();
                    vals[i] = f(&p);
                    pts[i] = p;
                }
            }
        }
    }
    let best = (0..=n)
        .min_by(|&a, &b| vals[a].total_cmp(&vals[b]))
        .unwrap_or(0);
    (pts[best].clone(), vals[best])
}

/// Drops knots closer than `min_gap` to the previous kept one (the last knot is always kept,
/// replacing its predecessor if that is too close).
fn thin_knots(cands: Vec<f64>, min_gap: f64) -> Vec<f64> {
    let last = cands[cands.len() - 1];
    let mut out: Vec<f64> = Vec::new();
    for k in cands {
        if out.last().is_none_or(|&p| k - p >= min_gap) {
            out.push(k);
        }
    }
    if out.len() > 1 && *out.last().unwrap_or(&last) != last {
        if last - out[out.len() - 1] < min_gap {
            out.pop();
        }
        out.push(last);
    }
    if out.len() < 2 {
        out.push(last);
    }
    out
}

/// Background knots for the estimate `(df, ph)`: the fit-range ends and every second CTF zero
/// in between, at least `min_gap` apart.
fn zero_knots(optics: &ChiTerms, df: f64, ph: f64, k_lo: f64, k_hi: f64, min_gap: f64) -> Vec<f64> {
    let mut c = vec![k_lo];
    let m0 = (optics.chi(k_lo * k_lo, df, ph) / PI).ceil() as i64;
    let mut m = m0;
    while let Some(k2) = optics.k2_for_chi(m as f64 * PI, df, ph) {
        let k = k2.max(0.0).sqrt();
        if k >= k_hi || m > m0 + 400 {
            break;
        }
        if k > k_lo && (m - m0) % 2 == 1 {
            c.push(k);
        }
        m += 1;
    }
    c.push(k_hi);
    thin_knots(c, min_gap)
}

/// 1D search (module docs, step 3): grid over defocus (and phase), then golden section.
/// Returns `(defocus µm, phase/π, correlation)`.
fn search_1d(
    ks: &[f64],
    sub: &[f64],
    env: &[f64],
    optics: &ChiTerms,
    opts: &CtfFitOptions,
) -> (f64, f64, f64) {
    let score_1d = |df: f64, ph: f64| -> f64 {
        let mut c = Corr::default();
        for ((&k, &o), &e) in ks.iter().zip(sub).zip(env) {
            let s = optics.chi(k * k, df, ph).sin();
            c.add(o, e * s * s);
        }
        c.value()
    };
    let n_df =
        ((opts.defocus_max_um - opts.defocus_min_um) / opts.defocus_step_um).round() as usize;
    let phases: Vec<f64> = if opts.fit_phase {
        (0..20).map(|i| i as f64 * 0.05).collect()
    } else {
        vec![0.0]
    };
    let mut best = (f64::NEG_INFINITY, opts.defocus_min_um, 0.0);
    for i in 0..=n_df {
        let df = opts.defocus_min_um + i as f64 * opts.defocus_step_um;
        for &ph in &phases {
            let s = score_1d(df, ph);
            if s > best.0 {
                best = (s, df, ph);
            }
        }
    }
    let (mut a, mut b) = (best.1 - opts.defocus_step_um, best.1 + opts.defocus_step_um);
    let g = 0.5 * (5f64.sqrt() - 1.0);
    for _ in 0..30 {
        let x1 = b - g * (b - a);
        let x2 = a + g * (b - a);
        if score_1d(x1, best.2) > score_1d(x2, best.2) {
            b = x2;
        } else {
            a = x1;
        }
    }
    let df = 0.5 * (a + b);
    let s = score_1d(df, best.2);
    if s > best.0 {
        (df, best.2, s)
    } else {
        (best.1, best.2, best.0)
    }
}

/// Most passes of the background fit (module docs, step 2). Each pass refits the background
/// with knots at the zeros of the previous pass's defocus and searches the defocus again; passes
/// normally settle in two to five (nine at most among about 400 synthetic spectra). Some
/// spectra make the estimate alternate between two defoci for ever (each one's background
/// favours the other): after this many passes the fit goes on from the pass that correlated
/// best.
pub const MAX_BACKGROUND_PASSES: usize = 20;

/// The background passes of step 2 (module docs) on the radial profile `ps` at frequencies `ks`
/// (the rings of the fit range `k_lo..=k_hi`, 1/Å; `ring_dk` the ring spacing). Returns the
/// background and 1D search result `(defocus µm, phase/π, correlation)` of the last pass, or,
/// when the passes did not settle within [`MAX_BACKGROUND_PASSES`], of the pass with the highest
/// correlation; and the number of passes run.
fn background_passes(
    ks: &[f64],
    ps: &[f64],
    optics: &ChiTerms,
    opts: &CtfFitOptions,
    (k_lo, k_hi): (f64, f64),
    ring_dk: f64,
) -> (Background, (f64, f64, f64), usize) {
    // Pass 1: knots evenly spaced in ln k; then passes with knots at every second CTF zero of
    // the previous estimate, fitting background and envelope jointly.
    let mut knots = thin_knots(
        (0..8)
            .map(|i| k_lo * (k_hi / k_lo).powf(i as f64 / 7.0))
            .collect(),
        6.0 * ring_dk,
    );
    let mut est: Option<(f64, f64)> = None;
    let mut best: Option<(Background, (f64, f64, f64))> = None;
    for pass in 1..=MAX_BACKGROUND_PASSES {
        let ctf2: Option<Vec<f64>> = est.map(|(df, ph)| {
            ks.iter()
                .map(|&k| optics.chi(k * k, df, ph).sin().powi(2))
                .collect()
        });
        let bg = Background::fit(ks, ps, knots.clone(), ctf2.as_deref());
        let sub: Vec<f64> = ks.iter().zip(ps).map(|(&k, &v)| bg.apply(k, v)).collect();
        let env: Vec<f64> = ks.iter().map(|&k| bg.envelope(k)).collect();
        let res = search_1d(ks, &sub, &env, optics, opts);
        let done = est.is_some_and(|(df, _)| (df - res.0).abs() < 0.5 * opts.defocus_step_um);
        if done || knots.len() > 100 {
            return (bg, res, pass);
        }
        est = Some((res.0, res.1));
        knots = zero_knots(optics, res.0, res.1, k_lo, k_hi, 6.0 * ring_dk);
        if knots.len() > 100 {
            return (bg, res, pass);
        }
        // A NaN correlation (a degenerate spectrum) keeps its place only until a number comes.
        if best
            .as_ref()
            .is_none_or(|(_, b)| res.2 > b.2 || b.2.is_nan())
        {
            best = Some((bg, res));
        }
    }
    let (bg, res) = best.expect("MAX_BACKGROUND_PASSES > 0");
    (bg, res, MAX_BACKGROUND_PASSES)
}

/// The fit range `(k_lo, k_hi)` in 1/Å, the high end clamped to Nyquist.
fn fit_range(pixel_size_a: f64, opts: &CtfFitOptions) -> (f64, f64) {
    (
        1.0 / opts.range_min_a,
        (1.0 / opts.range_max_a).min(0.5 / pixel_size_a),
    )
}

/// The rings of an `n` px tile's radial profile inside the fit range.
fn fit_rings(n: usize, pixel_size_a: f64, opts: &CtfFitOptions) -> Vec<usize> {
    let (k_lo, k_hi) = fit_range(pixel_size_a, opts);
    let n_rings = n / 2;
    (0..n_rings)
        .filter(|&b| {
            let k = radial_bin_k(b, n_rings, pixel_size_a);
            k >= k_lo && k <= k_hi
        })
        .collect()
}

/// Why [`estimate_ctf`] cannot fit `spectrum` (what it would panic with): a spectrum whose
/// length is not `(n/2+1)·n`, a pixel size or resolution limit that is not positive, an empty
/// defocus range, or a fit range holding fewer than 8 Fourier rings of the tile.
pub fn check_fit_inputs(
    spectrum: &Spectrum,
    pixel_size_a: f64,
    opts: &CtfFitOptions,
) -> Result<(), String> {
    let n = spectrum.n;
    if n < 2 || spectrum.data.len() != (n / 2 + 1) * n {
        return Err(format!(
            "the spectrum holds {} values, not the (n/2+1)·n of an n = {n} px tile",
            spectrum.data.len()
        ));
    }
    if !(pixel_size_a > 0.0 && opts.range_min_a > 0.0 && opts.range_max_a > 0.0) {
        return Err(format!(
            "the pixel size ({pixel_size_a} Å) and the fit range ({}–{} Å) must be positive",
            opts.range_min_a, opts.range_max_a
        ));
    }
    if !(opts.defocus_max_um >= opts.defocus_min_um && opts.defocus_step_um > 0.0) {
        return Err(format!(
            "empty defocus range {}–{} µm in steps of {} µm",
            opts.defocus_min_um, opts.defocus_max_um, opts.defocus_step_um
        ));
    }
    let rings = fit_rings(n, pixel_size_a, opts).len();
    if rings < 8 {
        return Err(format!(
            "fit range too narrow: {}–{} Å holds {rings} rings of a {n} px tile at {pixel_size_a} Å/px (8 needed); widen the range or enlarge the tile",
            opts.range_min_a, opts.range_max_a
        ));
    }
    Ok(())
}

/// Estimates the CTF of a power spectrum from [`power_spectrum`] (method in the module docs).
///
/// `pixel_size_a` is the pixel size of the image the spectrum was computed from (Å/px);
/// optics in DESIGN.md §6 units.
///
/// # Panics
/// Where [`check_fit_inputs`] fails: the fit range holds fewer than 8 Fourier rings, the
/// defocus range is empty, and so on.
pub fn estimate_ctf(
    spectrum: &Spectrum,
    pixel_size_a: f64,
    voltage_kv: f64,
    cs_mm: f64,
    amplitude_contrast: f64,
    opts: &CtfFitOptions,
) -> CtfFit {
    if let Err(e) = check_fit_inputs(spectrum, pixel_size_a, opts) {
        panic!("estimate_ctf: {e}");
    }
    let n = spectrum.n;
    let n_rings = n / 2;
    let optics = ChiTerms::new(voltage_kv, cs_mm, amplitude_contrast);
    let (k_lo, k_hi) = fit_range(pixel_size_a, opts);

    // Radial profile and background (step 2).
    let data = &spectrum.data;
    let prof = radial_average(data, n, n, n_rings);
    let rings = fit_rings(n, pixel_size_a, opts);
    let ks: Vec<f64> = rings
        .iter()
        .map(|&b| radial_bin_k(b, n_rings, pixel_size_a))
        .collect();
    let ps: Vec<f64> = rings.iter().map(|&b| prof[b] as f64).collect();
    let ring_dk = 1.0 / (n as f64 * pixel_size_a);
    let (bg, res1, _passes) = background_passes(&ks, &ps, &optics, opts, (k_lo, k_hi), ring_dk);
    let (df1, ph1, score1) = res1;

    // 2D bins in the fit range (step 4).
    let nxh = n / 2 + 1;
    let mut bins = Vec::new();
    for j in 0..n {
        for i in 0..nxh {
            let (kx, ky) = bin_k(i, j, n, n, pixel_size_a);
            let k2 = kx * kx + ky * ky;
            let k = k2.sqrt();
            if k < k_lo || k > k_hi {
                continue;
            }
            let th = ky.atan2(kx);
            bins.push(Bin {
                k2,
                cos2: (2.0 * th).cos(),
                sin2: (2.0 * th).sin(),
                obs: bg.apply(k, data[j * nxh + i] as f64),
                env: bg.envelope(k),
            });
        }
    }
    let score_2d = |x: &[f64]| -> f64 {
        let ph = if opts.fit_phase { x[3] } else { ph1 };
        let mut c = Corr::default();
        for bin in &bins {
            let df = x[0] + x[1] * bin.cos2 + x[2] * bin.sin2;
            let s = optics.chi(bin.k2, df, ph).sin();
            c.add(bin.obs, bin.env * s * s);
        }
        c.value()
    };

    let x1 = [df1, 0.0, 0.0, ph1];
    let (mut xbest, mut sbest) = (x1.to_vec(), score_2d(&x1));
    if opts.fit_astigmatism || opts.fit_phase {
        // Active parameters among (Δf_mean, a_x, a_y, φ).
        let active: Vec<usize> = [
            (0, true),
            (1, opts.fit_astigmatism),
            (2, opts.fit_astigmatism),
            (3, opts.fit_phase),
        ]
        .iter()
        .filter(|(_, on)| *on)
        .map(|(i, _)| *i)
        .collect();
        let step_full = [0.02, 0.03, 0.03, 0.05];
        let expand = |x: &[f64]| -> [f64; 4] {
            let mut full = x1;
            for (v, &i) in x.iter().zip(&active) {
                full[i] = *v;
            }
            full
        };
        let mut f = |x: &[f64]| -score_2d(&expand(x));
        let starts: &[(f64, f64)] = if opts.fit_astigmatism {
            &[(0.1, 0.0), (0.0, 0.1), (-0.1, 0.0), (0.0, -0.1)]
        } else {
            &[(0.0, 0.0)]
        };
        for &(sx, sy) in starts {
            let start = [df1, sx, sy, ph1];
            let x0: Vec<f64> = active.iter().map(|&i| start[i]).collect();
            let st: Vec<f64> = active.iter().map(|&i| step_full[i]).collect();
            let (x, _) = nelder_mead(&mut f, &x0, &st, 400);
            // Restart once from the optimum with smaller steps to polish.
            let small: Vec<f64> = st.iter().map(|s| s * 0.25).collect();
            let (x, v) = nelder_mead(&mut f, &x, &small, 400);
            if -v > sbest {
                sbest = -v;
                xbest = expand(&x).to_vec();
            }
        }
    }
    let (dmean, ax, ay, ph) = (xbest[0], xbest[1], xbest[2], xbest[3]);
    let half = ax.hypot(ay);
    let mut angle = 0.5 * ay.atan2(ax).to_degrees();
    if angle < 0.0 {
        angle += 180.0;
    }
    if angle >= 180.0 {
        angle -= 180.0;
    }
    let ph = if opts.fit_phase {
        ph.rem_euclid(2.0)
    } else {
        ph
    };
    let score = if opts.fit_astigmatism || opts.fit_phase {
        sbest
    } else {
        score1
    };

    // Fit resolution (step 5).
    let ring_k = |r: usize| radial_bin_k(r, n_rings, pixel_size_a);
    let mut rc = vec![Corr::default(); n_rings];
    let mut rsum = vec![(0.0f64, 0.0f64, 0.0f64); n_rings];
    for j in 0..n {
        for i in 0..nxh {
            let (kx, ky) = bin_k(i, j, n, n, pixel_size_a);
            let k2 = kx * kx + ky * ky;
            if k2.sqrt() < 0.5 * k_lo {
                continue;
            }
            let th = ky.atan2(kx);
            let df = dmean + ax * (2.0 * th).cos() + ay * (2.0 * th).sin();
            let chi = optics.chi(k2, df, ph);
            let Some(ke2) = optics.k2_for_chi(chi, dmean, ph) else {
                continue;
            };
            if ke2 <= 0.0 {
                continue;
            }
            let r = (ke2.sqrt() * pixel_size_a * 2.0 * n_rings as f64).floor() as usize;
            if r >= n_rings {
                continue;
            }
            let s = chi.sin();
            rsum[r].0 += bg.apply(k2.sqrt(), data[j * nxh + i] as f64);
            rsum[r].1 += s * s;
            rsum[r].2 += 1.0;
        }
    }
    let means: Vec<Option<(f64, f64)>> = rsum
        .iter()
        .map(|&(o, m, c)| (c > 0.0).then(|| (o / c, m / c)))
        .collect();
    for (r, m) in means.iter().enumerate() {
        if let Some((o, mm)) = m {
            rc[r].add(*o, *mm);
        }
    }
    let chi_r = |r: usize| optics.chi(ring_k(r).powi(2), dmean, ph);
    let first = rings[0];
    let last = rings[rings.len() - 1];
    let mut fit_res = 1.0 / ring_k(last);
    for r in first..=last {
        let c0 = chi_r(r);
        let mut lo = r;
        while lo > first && ((chi_r(lo - 1) - c0).abs() <= PI || r - lo < 2) {
            lo -= 1;
        }
        let mut hi = r;
        while hi < last && ((chi_r(hi + 1) - c0).abs() <= PI || hi - r < 2) {
            hi += 1;
        }
        let mut c = Corr::default();
        for x in &rc[lo..=hi] {
            c.merge(x);
        }
        if c.value() < opts.resolution_threshold {
            fit_res = 1.0 / ring_k(r);
            break;
        }
    }

    CtfFit {
        defocus_u_um: dmean + half,
        defocus_v_um: dmean - half,
        astig_angle_deg: angle,
        phase_shift_pi: ph,
        score,
        fit_resolution_a: fit_res,
    }
}

#[cfg(test)]
#[path = "ctf_fit_tests.rs"]
mod tests;

//! The contrast transfer function (CTF) of the microscope, DESIGN.md §6.
//!
//! Units follow the project conventions: voltage kV, Cs mm, amplitude contrast as a fraction,
//! pixel size Å/px, defocus µm (positive = underfocus, U ≥ V), astigmatism angle in degrees of
//! the U axis from +x (toward +y, i.e. toward increasing row), phase shift in units of π rad.
//! Spatial frequencies are in 1/Å. Internally everything is converted to Å and radians:
//!
//! - λ = 12.2643247 / √(V·(1 + 0.978466e-6·V)) Å, V in volts (relativistic electron wavelength);
//! - Δf(θ) = ½[Δf_U + Δf_V + (Δf_U − Δf_V)·cos 2(θ − θ_ast)];
//! - χ(k, θ) = π·λ·k²·Δf(θ) − (π/2)·Cs·λ³·k⁴ + φ + arctan(A/√(1−A²));
//! - CTF = −sin χ.
//!
//! Grids ([`ctf_2d`], [`radial_average`]) use the half-complex FFT layout of [`crate::fft`]:
//! `nx/2 + 1` columns (x frequency `0..=nx/2`) by `ny` rows (y frequency in `fftfreq` order),
//! index `j·(nx/2+1) + i`.

use std::f64::consts::PI;

use crate::fft::bin_k;

/// Relativistic electron wavelength in Å at an acceleration voltage of `kv` kilovolts.
pub fn wavelength_a(kv: f64) -> f64 {
    let v = kv * 1000.0;
    12.2643247 / (v * (1.0 + 0.978466e-6 * v)).sqrt()
}

/// One CTF: optics, pixel size and defocus, in the units of DESIGN.md §6 (the settings of the
/// `MovieProcessCTF` command are a different thing: `warp_common::preprocessing::CtfParams`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ctf {
    /// Acceleration voltage, kV.
    pub voltage_kv: f64,
    /// Spherical aberration, mm.
    pub cs_mm: f64,
    /// Amplitude contrast as a fraction in `[0, 1)`.
    pub amplitude_contrast: f64,
    /// Pixel size, Å/px.
    pub pixel_size_a: f64,
    /// Defocus along the U (major) axis, µm, positive = underfocus.
    pub defocus_u_um: f64,
    /// Defocus along the V (minor) axis, µm, positive = underfocus.
    pub defocus_v_um: f64,
    /// Angle of the U axis from +x, degrees.
    pub astig_angle_deg: f64,
    /// Additional phase shift (phase plate), in units of π rad.
    pub phase_shift_pi: f64,
}

impl Ctf {
    /// Electron wavelength in Å for this voltage; see [`wavelength_a`].
    pub fn wavelength_a(&self) -> f64 {
        wavelength_a(self.voltage_kv)
    }

    /// Defocus in Å along direction `theta` (radians from +x):
    /// `½[Δf_U + Δf_V + (Δf_U − Δf_V)·cos 2(θ − θ_ast)]`.
    pub fn defocus_a_at(&self, theta: f64) -> f64 {
        let u = self.defocus_u_um * 1e4;
        let v = self.defocus_v_um * 1e4;
        let ast = self.astig_angle_deg.to_radians();
        0.5 * (u + v + (u - v) * (2.0 * (theta - ast)).cos())
    }

    /// The constant part of χ: `φ + arctan(A/√(1−A²))`, radians.
    pub fn phase_offset(&self) -> f64 {
        let a = self.amplitude_contrast;
        self.phase_shift_pi * PI + (a / (1.0 - a * a).sqrt()).atan()
    }

    /// χ for spatial frequency magnitude `k` (1/Å) with defocus `defocus_a` (Å).
    pub fn chi_iso(&self, k: f64, defocus_a: f64) -> f64 {
        let lambda = self.wavelength_a();
        let cs_a = self.cs_mm * 1e7;
        let k2 = k * k;
        PI * lambda * k2 * defocus_a - 0.5 * PI * cs_a * lambda.powi(3) * k2 * k2
            + self.phase_offset()
    }

    /// χ at the spatial frequency `(kx, ky)` in 1/Å.
    pub fn chi(&self, kx: f64, ky: f64) -> f64 {
        let k = kx.hypot(ky);
        let theta = ky.atan2(kx);
        self.chi_iso(k, self.defocus_a_at(theta))
    }

    /// CTF value `−sin χ` at `(kx, ky)` in 1/Å.
    pub fn ctf_at(&self, kx: f64, ky: f64) -> f64 {
        -self.chi(kx, ky).sin()
    }

    /// CTF value `−sin χ` at frequency magnitude `k` (1/Å) for an isotropic defocus `defocus_a`
    /// (Å) — a 1D CTF, e.g. along the U axis with `defocus_u_um·1e4`.
    pub fn ctf_1d(&self, k: f64, defocus_a: f64) -> f64 {
        -self.chi_iso(k, defocus_a).sin()
    }

    /// The `n`-th zero (`n ≥ 1`, counting outward, `k = 0` excluded) of the 1D CTF with defocus
    /// `defocus_a` (Å), in 1/Å, or `None` if χ never reaches it (Cs turns it back first).
    ///
    /// Zeros are where χ = mπ; with `u = k²` this is the quadratic
    /// `−(π/2)Csλ³·u² + πλΔf·u + (χ₀ − mπ) = 0`, χ₀ = [`phase_offset`](Self::phase_offset),
    /// m = ⌊χ₀/π⌋ + n; the smallest positive root is taken.
    pub fn zero_k(&self, defocus_a: f64, n: u32) -> Option<f64> {
        if n == 0 {
            return None;
        }
        let lambda = self.wavelength_a();
        let a = -0.5 * PI * self.cs_mm * 1e7 * lambda.powi(3);
        let b = PI * lambda * defocus_a;
        let chi0 = self.phase_offset();
        let m = (chi0 / PI).floor() + n as f64;
        let c = chi0 - m * PI;
        let disc = b * b - 4.0 * a * c;
        if disc < 0.0 {
            return None;
        }
        let den = -b - disc.sqrt();
        if den == 0.0 {
            return None;
        }
        let u = 2.0 * c / den;
        (u > 0.0).then(|| u.sqrt())
    }
}

/// The CTF sampled on the half-complex FFT grid of an `nx × ny` image with the pixel size in
/// `params` (layout in the module docs). Bin `(i, j)` holds `ctf_at(kx, ky)` with
/// `kx = i/(nx·p)`, `ky = signed_freq(j, ny)/(ny·p)`; θ = atan2(ky, kx) measured from +x toward
/// +y (increasing row).
pub fn ctf_2d(params: &Ctf, nx: usize, ny: usize) -> Vec<f32> {
    let nxh = nx / 2 + 1;
    let mut out = Vec::with_capacity(nxh * ny);
    for j in 0..ny {
        for i in 0..nxh {
            let (kx, ky) = bin_k(i, j, nx, ny, params.pixel_size_a);
            out.push(params.ctf_at(kx, ky) as f32);
        }
    }
    out
}

/// Radial average of a half-complex grid `values` (`(nx/2+1) × ny`) in `n_bins` rings of equal
/// width in normalised frequency `s = |k|·p` (cycles per pixel) from 0 to 0.5: bin `b` covers
/// `s ∈ [b/(2·n_bins), (b+1)/(2·n_bins))`; bins beyond Nyquist (the corners) are ignored, and
/// rings with no sample are 0. Every stored bin counts once (the implied negative-x half is
/// the mirror image, so it does not change ring averages). Use [`radial_bin_k`] for the
/// frequency of a ring.
///
/// # Panics
/// If `values.len() != (nx/2+1)·ny` or `n_bins == 0`.
pub fn radial_average(values: &[f32], nx: usize, ny: usize, n_bins: usize) -> Vec<f32> {
    let nxh = nx / 2 + 1;
    assert_eq!(values.len(), nxh * ny, "radial_average: grid length");
    assert!(n_bins > 0, "radial_average: n_bins must be positive");
    let mut sum = vec![0.0f64; n_bins];
    let mut count = vec![0u64; n_bins];
    for j in 0..ny {
        for i in 0..nxh {
            let (sx, sy) = bin_k(i, j, nx, ny, 1.0);
            let b = (sx.hypot(sy) * 2.0 * n_bins as f64).floor() as usize;
            if b < n_bins {
                sum[b] += values[j * nxh + i] as f64;
                count[b] += 1;
            }
        }
    }
    sum.iter()
        .zip(&count)
        .map(|(s, &c)| if c > 0 { (s / c as f64) as f32 } else { 0.0 })
        .collect()
}

/// Centre frequency in 1/Å of ring `b` of [`radial_average`] with `n_bins` rings and pixel
/// size `pixel_size_a`: `(b + ½)/(2·n_bins·p)`.
pub fn radial_bin_k(b: usize, n_bins: usize, pixel_size_a: f64) -> f64 {
    (b as f64 + 0.5) / (2.0 * n_bins as f64 * pixel_size_a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Ctf {
        Ctf {
            voltage_kv: 300.0,
            cs_mm: 2.7,
            amplitude_contrast: 0.07,
            pixel_size_a: 1.0,
            defocus_u_um: 1.8,
            defocus_v_um: 1.2,
            astig_angle_deg: 30.0,
            phase_shift_pi: 0.0,
        }
    }

    #[test]
    fn wavelengths() {
        // 0.0196876 and 0.0250795 Å to seven figures.
        assert!((wavelength_a(300.0) - 0.019687).abs() < 1e-6);
        assert!((wavelength_a(200.0) - 0.025079).abs() < 1e-6);
    }

    #[test]
    fn value_at_origin_is_amplitude_contrast() {
        let p = params();
        // −sin(arctan(A/√(1−A²))) = −A.
        assert!((p.ctf_at(0.0, 0.0) + 0.07).abs() < 1e-12);
    }

    #[test]
    fn zeros_match_analytic_solution() {
        let mut p = params();
        let df = 1.5e4;
        // Cs = 0: χ = πλΔf·k² + w, so zeros at k = √((mπ − w)/(πλΔf)).
        p.cs_mm = 0.0;
        let lambda = p.wavelength_a();
        let w = p.phase_offset();
        for n in 1..=5 {
            let k = p.zero_k(df, n).unwrap();
            let expect = ((n as f64 * PI - w) / (PI * lambda * df)).sqrt();
            assert!((k - expect).abs() < 1e-12 * expect, "zero {n}");
        }
        // With Cs the roots still zero the CTF, change its sign, and increase with n.
        p.cs_mm = 2.7;
        let mut last = 0.0;
        for n in 1..=8 {
            let k = p.zero_k(df, n).unwrap();
            assert!(k > last);
            last = k;
            assert!(p.ctf_1d(k, df).abs() < 1e-9, "zero {n}");
            let (a, b) = (p.ctf_1d(k * 0.999, df), p.ctf_1d(k * 1.001, df));
            assert!(a * b < 0.0, "sign change at zero {n}");
        }
        // First zero at 300 kV, 1.5 µm: about 1/17.4 Å.
        let k1 = p.zero_k(df, 1).unwrap();
        assert!((1.0 / k1 - 17.4).abs() < 0.2, "{}", 1.0 / k1);
        // A phase plate at π/2 moves the first zero inward.
        p.phase_shift_pi = 0.5;
        assert!(p.zero_k(df, 1).unwrap() < k1);
    }

    #[test]
    fn astigmatism_rotates_the_pattern() {
        let p = params();
        let ast = p.astig_angle_deg.to_radians();
        let (u, v) = (p.defocus_u_um * 1e4, p.defocus_v_um * 1e4);
        for i in 1..50 {
            let k = i as f64 * 0.007;
            // Along U (θ = θ_ast) the CTF is the isotropic CTF at Δf_U; along V at Δf_V.
            let along_u = p.ctf_at(k * ast.cos(), k * ast.sin());
            assert!((along_u - p.ctf_1d(k, u)).abs() < 1e-9);
            let tv = ast + PI / 2.0;
            let along_v = p.ctf_at(k * tv.cos(), k * tv.sin());
            assert!((along_v - p.ctf_1d(k, v)).abs() < 1e-9);
            // Opposite direction (Friedel mate) is the same.
            assert!((p.ctf_at(-k * ast.cos(), -k * ast.sin()) - along_u).abs() < 1e-9);
        }
        // Rotating the angle rotates the pattern.
        let mut q = p;
        q.astig_angle_deg += 40.0;
        let r = 40f64.to_radians();
        for &(kx, ky) in &[(0.05, 0.01), (-0.03, 0.07), (0.11, -0.02)] {
            let (rx, ry) = (kx * r.cos() - ky * r.sin(), kx * r.sin() + ky * r.cos());
            assert!((q.ctf_at(rx, ry) - p.ctf_at(kx, ky)).abs() < 1e-9);
        }
    }

    #[test]
    fn grid_layout_and_radial_average() {
        let mut p = params();
        p.defocus_v_um = p.defocus_u_um;
        let (nx, ny) = (64, 48);
        let g = ctf_2d(&p, nx, ny);
        let nxh = nx / 2 + 1;
        assert_eq!(g.len(), nxh * ny);
        // Bin (3, ny-2) is kx = 3/64, ky = −2/48 (1/Å with p = 1).
        let want = p.ctf_at(3.0 / 64.0, -2.0 / 48.0) as f32;
        assert_eq!(g[(ny - 2) * nxh + 3], want);
        // Radial average of a constant is that constant in every non-empty ring.
        let ones = vec![1.0f32; g.len()];
        assert!(radial_average(&ones, nx, ny, 24).iter().all(|&v| v == 1.0));
        // Isotropic CTF: ring averages follow the 1D CTF at the ring centres where it is slow.
        let n = 256;
        let ra = radial_average(&ctf_2d(&p, n, n), n, n, n / 2);
        let df = p.defocus_u_um * 1e4;
        for (b, &v) in ra.iter().enumerate().take(9) {
            let k = radial_bin_k(b, n / 2, 1.0);
            assert!((v as f64 - p.ctf_1d(k, df)).abs() < 0.05, "ring {b}");
        }
    }
}

//! Thin helpers over `realfft`/`rustfft` for 2D real images.
//!
//! Images are `f32`, `nx × ny`, x fastest (index `y·nx + x`), as everywhere in this crate.
//!
//! **Half-complex layout.** The forward transform of a real image keeps only the non-negative
//! x frequencies: `nxh = nx/2 + 1` columns by `ny` rows, index `j·nxh + i`. Column `i` is the
//! x frequency `i` (cycles per image width, `0..=nx/2`); row `j` is the y frequency
//! [`signed_freq`]`(j, ny)`, i.e. `0, 1, …, ⌈ny/2⌉−1, −⌊ny/2⌋, …, −1` (numpy's `fftfreq` order).
//! The missing negative x half is the complex conjugate of the stored one (Hermitian symmetry).
//!
//! **Normalisation and sign.** The forward transform is unnormalised,
//! `F(k) = Σₓ f(x)·exp(−2πi k·x/n)`; the inverse has `exp(+2πi k·x/n)` and is scaled by
//! `1/(nx·ny)`, so forward then inverse gives back the image.
//!
//! The functions here treat a wrong buffer length or size as a programming error and panic
//! (each says when); they never read or write files.

use std::sync::Arc;

use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use rustfft::num_complex::Complex32;
use rustfft::{Fft, FftPlanner};

/// Signed frequency index of FFT bin `j` of an `n`-point transform, in `numpy.fft.fftfreq`
/// order: `j` for `j < ⌈n/2⌉`, else `j − n` (so the Nyquist bin of an even `n` is `−n/2`).
pub fn signed_freq(j: usize, n: usize) -> i64 {
    if j < n.div_ceil(2) {
        j as i64
    } else {
        j as i64 - n as i64
    }
}

/// Spatial frequency `(kx, ky)` in 1/Å of half-complex bin `(i, j)` of an `nx × ny` image with
/// pixel size `pixel_size_a` Å: `kx = i/(nx·p)`, `ky = signed_freq(j, ny)/(ny·p)`.
pub fn bin_k(i: usize, j: usize, nx: usize, ny: usize, pixel_size_a: f64) -> (f64, f64) {
    let kx = i as f64 / (nx as f64 * pixel_size_a);
    let ky = signed_freq(j, ny) as f64 / (ny as f64 * pixel_size_a);
    (kx, ky)
}

/// Cached forward and inverse plans for `nx × ny` real images, with reusable scratch buffers.
///
/// The x direction uses `realfft` (real ↔ half-complex per row), the y direction `rustfft`
/// (complex, all columns in one batched call after a transpose). Build once per image size and
/// reuse; the struct is `Send` so each worker thread can own one.
pub struct Fft2d {
    nx: usize,
    ny: usize,
    nxh: usize,
    r2c: Arc<dyn RealToComplex<f32>>,
    c2r: Arc<dyn ComplexToReal<f32>>,
    fwd_y: Arc<dyn Fft<f32>>,
    inv_y: Arc<dyn Fft<f32>>,
    row: Vec<f32>,
    row_c: Vec<Complex32>,
    r_scratch: Vec<Complex32>,
    c_scratch: Vec<Complex32>,
    cols: Vec<Complex32>,
}

impl std::fmt::Debug for Fft2d {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fft2d")
            .field("nx", &self.nx)
            .field("ny", &self.ny)
            .finish_non_exhaustive()
    }
}

impl Fft2d {
    /// Plans for `nx × ny` images.
    ///
    /// # Panics
    /// If `nx` or `ny` is zero.
    pub fn new(nx: usize, ny: usize) -> Fft2d {
        assert!(nx > 0 && ny > 0, "Fft2d: empty size {nx}×{ny}");
        let mut rp = RealFftPlanner::<f32>::new();
        let r2c = rp.plan_fft_forward(nx);
        let c2r = rp.plan_fft_inverse(nx);
        let mut cp = FftPlanner::<f32>::new();
        let fwd_y = cp.plan_fft_forward(ny);
        let inv_y = cp.plan_fft_inverse(ny);
        let nxh = nx / 2 + 1;
        let r_len = r2c.get_scratch_len().max(c2r.get_scratch_len());
        let c_len = fwd_y
            .get_inplace_scratch_len()
            .max(inv_y.get_inplace_scratch_len());
        Fft2d {
            nx,
            ny,
            nxh,
            r2c,
            c2r,
            fwd_y,
            inv_y,
            row: vec![0.0; nx],
            row_c: vec![Complex32::new(0.0, 0.0); nxh],
            r_scratch: vec![Complex32::new(0.0, 0.0); r_len],
            c_scratch: vec![Complex32::new(0.0, 0.0); c_len],
            cols: vec![Complex32::new(0.0, 0.0); nxh * ny],
        }
    }

    /// Image width.
    pub fn nx(&self) -> usize {
        self.nx
    }

    /// Image height.
    pub fn ny(&self) -> usize {
        self.ny
    }

    /// Width of the half-complex spectrum, `nx/2 + 1`.
    pub fn nxh(&self) -> usize {
        self.nxh
    }

    /// Forward transform into a new half-complex spectrum (`nxh × ny`, see the module docs).
    ///
    /// # Panics
    /// If `image.len() != nx·ny`.
    pub fn forward(&mut self, image: &[f32]) -> Vec<Complex32> {
        let mut out = vec![Complex32::new(0.0, 0.0); self.nxh * self.ny];
        self.forward_into(image, &mut out);
        out
    }

    /// Forward transform into `out` (`nxh·ny` long).
    ///
    /// # Panics
    /// If `image.len() != nx·ny` or `out.len() != nxh·ny`.
    pub fn forward_into(&mut self, image: &[f32], out: &mut [Complex32]) {
        let (nx, ny, nxh) = (self.nx, self.ny, self.nxh);
        assert_eq!(image.len(), nx * ny, "Fft2d::forward: image length");
        assert_eq!(out.len(), nxh * ny, "Fft2d::forward: spectrum length");
        // Rows: real -> half-complex, written transposed (column-major) into `cols`.
        for y in 0..ny {
            self.row.copy_from_slice(&image[y * nx..(y + 1) * nx]);
            self.r2c
                .process_with_scratch(&mut self.row, &mut self.row_c, &mut self.r_scratch)
                .expect("Fft2d: buffer lengths are fixed at construction");
            for (i, v) in self.row_c.iter().enumerate() {
                self.cols[i * ny + y] = *v;
            }
        }
        // Columns: all nxh transforms of length ny in one batched call.
        self.fwd_y
            .process_with_scratch(&mut self.cols, &mut self.c_scratch);
        for i in 0..nxh {
            for y in 0..ny {
                out[y * nxh + i] = self.cols[i * ny + y];
            }
        }
    }

    /// Inverse transform (scaled by `1/(nx·ny)`) into a new image.
    ///
    /// # Panics
    /// If `spectrum.len() != nxh·ny`.
    pub fn inverse(&mut self, spectrum: &[Complex32]) -> Vec<f32> {
        let mut out = vec![0.0; self.nx * self.ny];
        self.inverse_into(spectrum, &mut out);
        out
    }

    /// Inverse transform (scaled by `1/(nx·ny)`) into `out` (`nx·ny` long).
    ///
    /// A spectrum that is not exactly Hermitian (e.g. after a sub-pixel phase ramp) gives the
    /// real part of the complex inverse along y for the DC and Nyquist x columns; the imaginary
    /// parts those columns would need are dropped.
    ///
    /// # Panics
    /// If `spectrum.len() != nxh·ny` or `out.len() != nx·ny`.
    pub fn inverse_into(&mut self, spectrum: &[Complex32], out: &mut [f32]) {
        let (nx, ny, nxh) = (self.nx, self.ny, self.nxh);
        assert_eq!(spectrum.len(), nxh * ny, "Fft2d::inverse: spectrum length");
        assert_eq!(out.len(), nx * ny, "Fft2d::inverse: image length");
        for y in 0..ny {
            for i in 0..nxh {
                self.cols[i * ny + y] = spectrum[y * nxh + i];
            }
        }
        self.inv_y
            .process_with_scratch(&mut self.cols, &mut self.c_scratch);
        let scale = 1.0 / (nx as f32 * ny as f32);
        for y in 0..ny {
            for i in 0..nxh {
                self.row_c[i] = self.cols[i * ny + y];
            }
            self.row_c[0].im = 0.0;
            if nx.is_multiple_of(2) {
                self.row_c[nxh - 1].im = 0.0;
            }
            let dst = &mut out[y * nx..(y + 1) * nx];
            self.c2r
                .process_with_scratch(&mut self.row_c, dst, &mut self.r_scratch)
                .expect("Fft2d: buffer lengths are fixed and DC/Nyquist made real");
            for v in dst.iter_mut() {
                *v *= scale;
            }
        }
    }
}

/// Multiplies a half-complex spectrum of an `nx × ny` image by the phase ramp that displaces
/// the image content by `(dx, dy)` pixels (+x toward increasing column, +y toward increasing
/// row): `F(k) ← F(k)·exp(−2πi(kx·dx/nx + ky·dy/ny))`, so the inverse is `f(x − dx, y − dy)`
/// with periodic wrap.
///
/// For even sizes the Nyquist column and row are set to zero: a fractional ramp there has no
/// real-valued counterpart, and for band-limited images they hold (almost) nothing.
///
/// # Panics
/// If `spectrum.len() != (nx/2+1)·ny`.
pub fn shift_spectrum(spectrum: &mut [Complex32], nx: usize, ny: usize, dx: f64, dy: f64) {
    let nxh = nx / 2 + 1;
    assert_eq!(spectrum.len(), nxh * ny, "shift_spectrum: spectrum length");
    // The ramp is separable: exp(−2πi·fx·dx)·exp(−2πi·fy·dy), one table per axis.
    let ramp_x = ramp(nxh, nx, dx, |i, _| i as f64);
    let ramp_y = ramp(ny, ny, dy, |j, n| signed_freq(j, n) as f64);
    let x_nyq = nx.is_multiple_of(2).then_some(nx / 2);
    let y_nyq = ny.is_multiple_of(2).then_some(ny / 2);
    for (j, row) in spectrum.chunks_exact_mut(nxh).enumerate() {
        if Some(j) == y_nyq {
            row.fill(Complex32::new(0.0, 0.0));
            continue;
        }
        let ry = ramp_y[j];
        for (v, rx) in row.iter_mut().zip(&ramp_x) {
            *v *= *rx * ry;
        }
        if let Some(i) = x_nyq {
            row[i] = Complex32::new(0.0, 0.0);
        }
    }
}

/// `exp(−2πi·f(idx)·d/n)` for `idx` in `0..len`, computed in f64.
fn ramp(len: usize, n: usize, d: f64, f: impl Fn(usize, usize) -> f64) -> Vec<Complex32> {
    let tau = std::f64::consts::TAU;
    (0..len)
        .map(|idx| {
            let phase = -tau * f(idx, n) * d / n as f64;
            Complex32::new(phase.cos() as f32, phase.sin() as f32)
        })
        .collect()
}

/// Displaces `image` (`nx × ny`) by `(dx, dy)` pixels by a Fourier phase ramp (periodic wrap);
/// see [`shift_spectrum`] for the convention and the Nyquist handling.
///
/// # Panics
/// If `image.len() != nx·ny` or a size is zero.
pub fn shift_image(image: &[f32], nx: usize, ny: usize, dx: f64, dy: f64) -> Vec<f32> {
    let mut fft = Fft2d::new(nx, ny);
    let mut spec = fft.forward(image);
    shift_spectrum(&mut spec, nx, ny, dx, dy);
    fft.inverse(&spec)
}

/// Fourier crop (band-limited downsampling) of `image` (`nx × ny`) to `new_nx × new_ny`.
///
/// Keeps the x frequencies `0..=new_nx/2` and the y frequencies `−new_ny/2..new_ny/2` of the
/// original spectrum (the new Nyquist row takes the original's `−new_ny/2` row) and scales by
/// `new_nx·new_ny/(nx·ny)`, so the mean (DC) and the retained frequencies keep their real-space
/// amplitude. The pixel size grows by `nx/new_nx` (and `ny/new_ny`).
///
/// # Panics
/// If `image.len() != nx·ny`, or a new size is zero, odd, or larger than the old one.
pub fn fourier_crop(image: &[f32], nx: usize, ny: usize, new_nx: usize, new_ny: usize) -> Vec<f32> {
    assert_eq!(image.len(), nx * ny, "fourier_crop: image length");
    assert!(
        new_nx > 0 && new_ny > 0 && new_nx.is_multiple_of(2) && new_ny.is_multiple_of(2),
        "fourier_crop: new size {new_nx}×{new_ny} must be even and non-zero"
    );
    assert!(
        new_nx <= nx && new_ny <= ny,
        "fourier_crop: new size {new_nx}×{new_ny} larger than {nx}×{ny}"
    );
    let spec = Fft2d::new(nx, ny).forward(image);
    Fft2d::new(new_nx, new_ny).inverse(&crop_spectrum(&spec, nx, ny, new_nx, new_ny))
}

/// The half-complex spectrum of the [`fourier_crop`] of an image, taken from the image's own
/// half-complex spectrum `spectrum` (`nx × ny` image): the same frequencies kept, scaled by
/// `new_nx·new_ny/(nx·ny)` so that the unnormalised forward transforms of [`Fft2d`] stay
/// consistent (the inverse on the small grid gives the cropped image).
///
/// # Panics
/// If `spectrum.len() != (nx/2+1)·ny`, or a new size is zero, odd, or larger than the old one.
pub fn crop_spectrum(
    spectrum: &[Complex32],
    nx: usize,
    ny: usize,
    new_nx: usize,
    new_ny: usize,
) -> Vec<Complex32> {
    let (nxh, new_nxh) = (nx / 2 + 1, new_nx / 2 + 1);
    assert_eq!(spectrum.len(), nxh * ny, "crop_spectrum: spectrum length");
    assert!(
        new_nx > 0 && new_ny > 0 && new_nx.is_multiple_of(2) && new_ny.is_multiple_of(2),
        "crop_spectrum: new size {new_nx}×{new_ny} must be even and non-zero"
    );
    assert!(
        new_nx <= nx && new_ny <= ny,
        "crop_spectrum: new size {new_nx}×{new_ny} larger than {nx}×{ny}"
    );
    let scale = (new_nx * new_ny) as f32 / (nx * ny) as f32;
    let mut small = vec![Complex32::new(0.0, 0.0); new_nxh * new_ny];
    for (jn, out) in small.chunks_exact_mut(new_nxh).enumerate() {
        let f = signed_freq(jn, new_ny);
        let j = if f >= 0 {
            f as usize
        } else {
            (ny as i64 + f) as usize
        };
        for (o, v) in out.iter_mut().zip(&spectrum[j * nxh..j * nxh + new_nxh]) {
            *o = *v * scale;
        }
    }
    small
}

/// One [`Fft2d`] per rayon thread for `nx × ny` images, so parallel loops over frames reuse
/// plans and scratch buffers instead of planning per frame.
#[derive(Debug)]
pub struct FftPool {
    plans: Vec<std::sync::Mutex<Fft2d>>,
}

impl FftPool {
    /// Plans for `nx × ny`, one per thread of the current rayon pool.
    pub fn new(nx: usize, ny: usize) -> FftPool {
        let n = rayon::current_num_threads().max(1);
        FftPool {
            plans: (0..n)
                .map(|_| std::sync::Mutex::new(Fft2d::new(nx, ny)))
                .collect(),
        }
    }

    /// Runs `f` with the calling thread's plan (uncontended inside the pool's threads).
    pub fn with<R>(&self, f: impl FnOnce(&mut Fft2d) -> R) -> R {
        let i = rayon::current_thread_index().unwrap_or(0) % self.plans.len();
        let mut plan = self.plans[i].lock().unwrap_or_else(|e| e.into_inner());
        f(&mut plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A smooth periodic test image: a few low-frequency cosines.
    fn smooth(nx: usize, ny: usize, shift: (f64, f64)) -> Vec<f32> {
        let tau = std::f64::consts::TAU;
        let mut v = Vec::with_capacity(nx * ny);
        for y in 0..ny {
            for x in 0..nx {
                let u = (x as f64 - shift.0) / nx as f64;
                let w = (y as f64 - shift.1) / ny as f64;
                let val = 1.0
                    + 0.5 * (tau * u).cos()
                    + 0.3 * (tau * (2.0 * u + w) + 0.4).sin()
                    + 0.2 * (tau * 3.0 * w - 1.0).cos()
                    + 0.1 * (tau * (4.0 * u - 5.0 * w)).cos();
                v.push(val as f32);
            }
        }
        v
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn signed_freq_matches_fftfreq_order() {
        let even: Vec<i64> = (0..4).map(|j| signed_freq(j, 4)).collect();
        assert_eq!(even, [0, 1, -2, -1]);
        let odd: Vec<i64> = (0..5).map(|j| signed_freq(j, 5)).collect();
        assert_eq!(odd, [0, 1, 2, -2, -1]);
        let (kx, ky) = bin_k(3, 7, 16, 8, 2.0);
        assert!((kx - 3.0 / 32.0).abs() < 1e-12 && (ky + 1.0 / 16.0).abs() < 1e-12);
    }

    #[test]
    fn round_trip_is_identity() {
        let mut state = 12345u64;
        for &(nx, ny) in &[(64, 48), (30, 17), (1, 5), (7, 1)] {
            let img: Vec<f32> = (0..nx * ny)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .collect();
            let mut fft = Fft2d::new(nx, ny);
            let spec = fft.forward(&img);
            let back = fft.inverse(&spec);
            let scale = img.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(max_abs_diff(&img, &back) <= 1e-5 * scale, "{nx}×{ny}");
        }
    }

    #[test]
    fn forward_dc_and_single_frequency() {
        let (nx, ny) = (16, 8);
        let img = vec![2.0f32; nx * ny];
        let spec = Fft2d::new(nx, ny).forward(&img);
        assert!((spec[0].re - 2.0 * (nx * ny) as f32).abs() < 1e-3);
        assert!(spec[1..].iter().all(|c| c.norm() < 1e-3));
        // cos(2π(2x/nx + y/ny)) puts nx·ny/2 at (i=2, j=1).
        let tau = std::f32::consts::TAU;
        let img: Vec<f32> = (0..nx * ny)
            .map(|p| {
                (tau * (2.0 * (p % nx) as f32 / nx as f32 + (p / nx) as f32 / ny as f32)).cos()
            })
            .collect();
        let spec = Fft2d::new(nx, ny).forward(&img);
        let nxh = nx / 2 + 1;
        assert!((spec[nxh + 2].re - (nx * ny / 2) as f32).abs() < 1e-3);
    }

    #[test]
    fn subpixel_shift_matches_analytic() {
        let (nx, ny) = (64, 48);
        let img = smooth(nx, ny, (0.0, 0.0));
        let shifted = shift_image(&img, nx, ny, 3.25, -1.5);
        let expect = smooth(nx, ny, (3.25, -1.5));
        assert!(max_abs_diff(&shifted, &expect) < 1e-4);
    }

    #[test]
    fn fourier_crop_keeps_low_frequencies() {
        let (nx, ny) = (64, 48);
        let img = smooth(nx, ny, (0.0, 0.0));
        let small = fourier_crop(&img, nx, ny, 32, 24);
        // Same function sampled at every second pixel: the image is band-limited well below
        // the new Nyquist, so cropping is exact.
        let expect: Vec<f32> = (0..24)
            .flat_map(|y| (0..32).map(move |x| (x, y)))
            .map(|(x, y)| img[2 * y * nx + 2 * x])
            .collect();
        assert!(max_abs_diff(&small, &expect) < 1e-4);
        let mean: f32 = small.iter().sum::<f32>() / small.len() as f32;
        assert!((mean - 1.0).abs() < 1e-5);
    }
}

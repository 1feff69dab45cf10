//! A movie held for processing, and the aligned (dose-weighted) sums made from it.
//!
//! [`Movie::load`] reads a movie (MRC or TIFF, [`crate::io::tiff::open_movie`]), corrects each
//! frame with a gain reference, optionally Fourier-crops it ([`crate::fft::crop_spectrum`]),
//! and keeps every frame as its **half-complex spectrum** ([`crate::fft`] layout) instead of
//! its pixels. A spectrum of an `nx × ny` frame takes `(nx/2+1)·ny` complex values, about the
//! memory of the float32 frame, and every later step starts from it: motion crops it to the
//! estimator's grid ([`crate::motion::estimate_global_spectra`]), and the aligned sums shift
//! and weight it ([`accumulate`]). Each frame is therefore transformed once at full size.
//!
//! [`accumulate`] forms, in one pass over the spectra, the plain aligned average (for CTF
//! estimation), the dose-weighted average (DESIGN.md §6, [`crate::dose`]) and, on request, the
//! odd and even half averages, then transforms each back. The pass runs over rows of the
//! spectrum in parallel, so it needs no per-thread copies of the outputs.

use std::fmt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use rustfft::num_complex::Complex32;

use crate::backend::BackendError;
use crate::dose;
use crate::fft::{Fft2d, FftPool, crop_spectrum, signed_freq};
use crate::gain::{GainError, GainRef};
use crate::io::tiff::{MovieError, MovieReader, open_movie_with};

/// How [`Movie::load`] reads a movie (Warp's `LoadStack` parameters).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadOptions {
    /// Fourier-crop factor in `(0, 1]`; below 1 the frames are cropped to the even sizes
    /// nearest `scale·nx × scale·ny` and the pixel size grows accordingly.
    pub scale_factor: f64,
    /// Apply the gain reference given to [`Movie::load`] (and repair its defects); ignored
    /// when none is given.
    pub correct_gain: bool,
    /// How an EER movie is rendered (upsampling, raw frames per fraction); ignored for others.
    pub eer: crate::io::eer::EerOptions,
}

impl Default for LoadOptions {
    fn default() -> LoadOptions {
        LoadOptions {
            scale_factor: 1.0,
            correct_gain: true,
            eer: crate::io::eer::EerOptions::default(),
        }
    }
}

/// Why a movie could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// Reading the file failed (the inner error names the file).
    Read(MovieError),
    /// The gain reference does not fit the movie.
    Gain(GainError),
    /// The request itself is invalid.
    Invalid {
        /// The movie.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The movie needs more memory than this worker may use (another worker may have more).
    TooBig {
        /// The movie.
        path: PathBuf,
        /// What it needs and what there is.
        reason: String,
    },
    /// The compute device failed while transforming the frames.
    Backend {
        /// The movie.
        path: PathBuf,
        /// What failed.
        error: BackendError,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Read(e) => write!(f, "{e}"),
            LoadError::Gain(e) => write!(f, "{e}"),
            LoadError::Invalid { path, reason } | LoadError::TooBig { path, reason } => {
                write!(f, "{}: {reason}", path.display())
            }
            LoadError::Backend { path, error } => write!(f, "{}: {error}", path.display()),
        }
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoadError::Backend { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Refuses what no processing can make sense of: a frame with a non-finite pixel (a NaN or
/// an infinity reaches every frequency of its spectrum, so its DC term shows it), or a movie
/// whose every frame is constant (nothing but the DC term; the first row of the spectrum is
/// enough to tell).
fn check_content(spectra: &[Vec<Complex32>]) -> Result<(), String> {
    if let Some(i) = spectra.iter().position(|s| {
        s.first()
            .is_some_and(|dc| !(dc.re.is_finite() && dc.im.is_finite()))
    }) {
        return Err(format!(
            "frame {i} holds non-finite values (NaN or infinity); the file is damaged or was written wrongly"
        ));
    }
    let constant = spectra.iter().all(|s| {
        s.iter()
            .skip(1)
            .take(s.len().min(4096))
            .all(|c| c.norm_sqr() == 0.0)
    });
    if constant {
        return Err("every frame is constant: there is no image to process".into());
    }
    Ok(())
}

impl LoadError {
    /// Whether another attempt would fail the same way: the file's content or the request is
    /// wrong. Not so for a failed read (a node's mount, a transient I/O error), a movie too
    /// big for this worker's memory, or a device's failure.
    pub fn is_permanent(&self) -> bool {
        match self {
            LoadError::Read(e) => !e.is_io(),
            LoadError::Gain(e) => !e.is_io(),
            LoadError::Invalid { .. } => true,
            LoadError::TooBig { .. } | LoadError::Backend { .. } => false,
        }
    }
}

impl From<MovieError> for LoadError {
    fn from(e: MovieError) -> LoadError {
        LoadError::Read(e)
    }
}

impl From<GainError> for LoadError {
    fn from(e: GainError) -> LoadError {
        LoadError::Gain(e)
    }
}

/// A loaded movie: every frame's half-complex spectrum (module docs).
#[derive(Debug, Clone)]
pub struct Movie {
    /// Where it was read from (empty for [`Movie::from_frames`]).
    pub path: PathBuf,
    /// Frame width after any Fourier crop.
    pub nx: usize,
    /// Frame height after any Fourier crop.
    pub ny: usize,
    /// Width in the file.
    pub file_nx: usize,
    /// Height in the file.
    pub file_ny: usize,
    /// Pixel size the file states (MRC header), Å, for the file's pixels; `None` when the
    /// format has none (TIFF) or the header says 0.
    pub file_pixel_size_a: Option<f64>,
    /// Whether a gain reference was applied.
    pub gain_corrected: bool,
    /// One `(nx/2+1)·ny` spectrum per frame (unnormalised forward FFT).
    pub spectra: Vec<Vec<Complex32>>,
}

/// The per-chunk work of [`Movie::load_with`]: frames in, their (cropped) spectra out.
pub type FrameTransform<'t> =
    dyn Fn(Vec<Vec<f32>>, &FrameGeometry<'_>) -> Result<Vec<Vec<Complex32>>, LoadError> + Sync + 't;

/// Sizes and gain of a movie being loaded, for [`Movie::load_with`]'s transform.
#[derive(Debug, Clone, Copy)]
pub struct FrameGeometry<'a> {
    /// Frame width in the file.
    pub file_nx: usize,
    /// Frame height in the file.
    pub file_ny: usize,
    /// Width after the crop (equal to `file_nx` without one).
    pub nx: usize,
    /// Height after the crop.
    pub ny: usize,
    /// Gain reference to apply, if any (already checked against the movie's size).
    pub gain: Option<&'a GainRef>,
}

/// Frames read and transformed together: enough to keep every thread busy, few enough that
/// the pixels in flight stay a small fraction of the movie.
fn chunk_frames() -> usize {
    2 * rayon::current_num_threads().max(1)
}

/// The CPU's per-chunk work of a load: gain correction, forward FFT and crop of each frame,
/// in parallel over the frames (rayon, one FFT plan per thread). [`Movie::load`] passes it to
/// [`Movie::load_with`]; a GPU backend uses it for a movie that does not fit its device.
#[derive(Debug, Default)]
pub struct CpuFrameTransform {
    pool: std::sync::OnceLock<FftPool>,
}

impl CpuFrameTransform {
    /// The spectra of `frames` (a [`FrameTransform`]); the FFT plans are made on the first
    /// chunk, for its geometry, and kept for the movie's other chunks.
    pub fn transform(
        &self,
        frames: Vec<Vec<f32>>,
        g: &FrameGeometry<'_>,
    ) -> Result<Vec<Vec<Complex32>>, LoadError> {
        let pool = self.pool.get_or_init(|| FftPool::new(g.file_nx, g.file_ny));
        frames
            .into_par_iter()
            .map(|mut f| {
                if let Some(gain) = g.gain {
                    gain.correct(&mut f)?;
                }
                let s = pool.with(|fft| fft.forward(&f));
                drop(f);
                Ok(if (g.nx, g.ny) == (g.file_nx, g.file_ny) {
                    s
                } else {
                    crop_spectrum(&s, g.file_nx, g.file_ny, g.nx, g.ny)
                })
            })
            .collect::<Result<Vec<_>, GainError>>()
            .map_err(LoadError::from)
    }
}

impl Movie {
    /// Reads `path`, gain-corrects with `gain` (when given and `opts.correct_gain`), crops,
    /// and transforms every frame (module docs). Errors name the file.
    pub fn load(
        path: &Path,
        gain: Option<&GainRef>,
        opts: &LoadOptions,
    ) -> Result<Movie, LoadError> {
        let cpu = CpuFrameTransform::default();
        Movie::load_with(path, gain, opts, &|frames, g| cpu.transform(frames, g))
    }

    /// [`Movie::load`] with the per-frame work (gain correction, forward FFT, crop) done by
    /// `transform` on chunks of frames, in order; the GPU backend passes its own.
    pub fn load_with(
        path: &Path,
        gain: Option<&GainRef>,
        opts: &LoadOptions,
        transform: &FrameTransform<'_>,
    ) -> Result<Movie, LoadError> {
        let invalid = |reason: String| LoadError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        if !(opts.scale_factor > 0.0 && opts.scale_factor <= 1.0) {
            return Err(invalid(format!(
                "scale_factor must be in (0, 1], got {}",
                opts.scale_factor
            )));
        }
        let mut reader = open_movie_with(path, opts.eer)?;
        let (file_nx, file_ny, n) = (reader.width(), reader.height(), reader.frames());
        if n == 0 {
            return Err(invalid("the movie has no frames".into()));
        }
        let gain = gain.filter(|_| opts.correct_gain);
        // An EER rendered finer than the detector takes the detector's gain, each pixel's
        // value for all of its sub-pixels.
        let up = opts.eer.upsample;
        let upsampled;
        let gain = match gain {
            Some(g)
                if matches!(reader, MovieReader::Eer(_))
                    && up > 1
                    && (g.width() * up, g.height() * up) == (file_nx, file_ny) =>
            {
                upsampled = g.upsampled(up);
                Some(&upsampled)
            }
            g => g,
        };
        if let Some(g) = gain {
            g.check_movie(path, file_nx, file_ny)?;
        }
        let (nx, ny) = if opts.scale_factor < 1.0 {
            let even =
                |n: usize| (((n as f64 * opts.scale_factor) / 2.0).round() as usize * 2).max(2);
            (
                even(file_nx).min(file_nx & !1),
                even(file_ny).min(file_ny & !1),
            )
        } else {
            (file_nx, file_ny)
        };
        let file_pixel_size_a = match &reader {
            MovieReader::Mrc(r) => {
                let p = r.header().voxel_size_a[0] as f64;
                (p.is_finite() && p > 0.0).then_some(p)
            }
            _ => None,
        };

        let need = Movie::memory_needed(file_nx, file_ny, nx, ny, n);
        if let Some((avail, what)) = crate::memory::host_available()
            && need > avail
        {
            return Err(LoadError::TooBig {
                path: path.to_path_buf(),
                reason: format!(
                    "{n} frames of {file_nx}x{file_ny} need about {} of memory to process, but this worker may use {} ({what})",
                    crate::memory::format_bytes(need),
                    crate::memory::format_bytes(avail)
                ),
            });
        }
        let geometry = FrameGeometry {
            file_nx,
            file_ny,
            nx,
            ny,
            gain,
        };
        let chunk = chunk_frames();
        let mut spectra = Vec::with_capacity(n);
        // A reader thread decodes frames while the pool transforms the previous chunk, so
        // reading overlaps the FFTs; the channel bounds the frames in flight to two chunks.
        std::thread::scope(|scope| -> Result<(), LoadError> {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<f32>, MovieError>>(chunk);
            let reader = &mut reader;
            scope.spawn(move || {
                for i in 0..n {
                    let frame = reader.read_frame(i);
                    let failed = frame.is_err();
                    if tx.send(frame).is_err() || failed {
                        return;
                    }
                }
            });
            let mut start = 0;
            while start < n {
                let end = (start + chunk).min(n);
                let mut frames = Vec::with_capacity(end - start);
                for _ in start..end {
                    let frame = rx.recv().map_err(|_| LoadError::Invalid {
                        path: path.to_path_buf(),
                        reason: "the frame reader stopped unexpectedly".into(),
                    })?;
                    frames.push(frame?);
                }
                spectra.extend(transform(frames, &geometry)?);
                start = end;
            }
            Ok(())
        })?;
        check_content(&spectra).map_err(invalid)?;
        Ok(Movie {
            path: path.to_path_buf(),
            nx,
            ny,
            file_nx,
            file_ny,
            file_pixel_size_a,
            gain_corrected: gain.is_some(),
            spectra,
        })
    }

    /// Bytes of host memory processing a movie takes at most, about: the spectra, the frames
    /// in flight while loading (two chunks), and the full-size sums and work images of the
    /// later steps.
    pub fn memory_needed(file_nx: usize, file_ny: usize, nx: usize, ny: usize, n: usize) -> u64 {
        let spectrum = ((nx / 2 + 1) * ny * std::mem::size_of::<Complex32>()) as u64;
        let file_frame = (file_nx * file_ny * std::mem::size_of::<f32>()) as u64;
        let frame = (nx * ny * std::mem::size_of::<f32>()) as u64;
        (n as u64)
            .saturating_mul(spectrum)
            .saturating_add((3 * chunk_frames() as u64).saturating_mul(file_frame))
            .saturating_add(8u64.saturating_mul(frame))
    }

    /// A movie from frames in memory (`nx × ny` each, x fastest), e.g. a simulation.
    ///
    /// # Panics
    /// If a frame's length is not `nx·ny`.
    pub fn from_frames(frames: &[Vec<f32>], nx: usize, ny: usize) -> Movie {
        let pool = FftPool::new(nx, ny);
        let spectra = frames
            .par_iter()
            .map(|f| {
                assert_eq!(f.len(), nx * ny, "Movie::from_frames: frame length");
                pool.with(|fft| fft.forward(f))
            })
            .collect();
        Movie {
            path: PathBuf::new(),
            nx,
            ny,
            file_nx: nx,
            file_ny: ny,
            file_pixel_size_a: None,
            gain_corrected: false,
            spectra,
        }
    }

    /// Number of frames.
    pub fn frames(&self) -> usize {
        self.spectra.len()
    }

    /// `nx / file_nx`: how much the pixel grew by the Fourier crop is its inverse.
    pub fn scale(&self) -> f64 {
        self.nx as f64 / self.file_nx as f64
    }

    /// Bytes held by the spectra.
    pub fn bytes(&self) -> usize {
        self.spectra.iter().map(|s| s.len() * 8).sum()
    }
}

/// Dose-weighting settings of [`accumulate`] (DESIGN.md §6).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DoseWeighting {
    /// Exposure per frame, e⁻/Å².
    pub dose_per_frame: f64,
    /// Acceleration voltage, kV.
    pub voltage_kv: f64,
}

/// What [`accumulate`] should make.
#[derive(Debug, Clone, PartialEq)]
pub struct AccumulateRequest<'a> {
    /// Per-frame shift `[x, y]` in the movie's pixels (DESIGN.md §6 convention); each frame is
    /// displaced by its negative.
    pub shifts_px: &'a [[f32; 2]],
    /// Pixel size of the movie (after any crop), Å.
    pub pixel_size_a: f64,
    /// Dose weighting for the weighted average; `None` skips it.
    pub dose: Option<DoseWeighting>,
    /// Also make the odd/even half averages (weighted when `dose` is given): frames 1, 3, 5, …
    /// (odd 0-based indices) and frames 0, 2, 4, ….
    pub odd_even: bool,
}

/// Averages made by [`accumulate`], each `nx × ny` real pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Sums {
    /// Plain mean of the aligned frames.
    pub average: Vec<f32>,
    /// Dose-weighted mean of the aligned frames (module docs of [`crate::dose`]: equal to the
    /// plain mean at low frequency).
    pub weighted: Option<Vec<f32>>,
    /// Mean of the odd-index frames (weighted when dose weighting was requested).
    pub odd: Option<Vec<f32>>,
    /// Mean of the even-index frames.
    pub even: Option<Vec<f32>>,
}

/// Radial lookup of the dose weights: weights change slowly with `|k|`, so a table at a quarter
/// of the finest Fourier spacing replaces evaluating the exponentials per bin and frame. The
/// GPU kernel `warp_accumulate` reads the same table.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightTable {
    /// Inverse bin width, in bins per Å⁻¹.
    pub inv_dk: f64,
    /// `weights[b·n_frames + f]`: frame `f` at `|k| = b·dk`, `b = round(|k|·inv_dk)` clamped
    /// to the last bin.
    pub weights: Vec<f32>,
    /// Frames.
    pub n_frames: usize,
}

impl WeightTable {
    /// The table for `n_frames` frames of an `nx × ny` movie.
    pub fn new(
        nx: usize,
        ny: usize,
        pixel_size_a: f64,
        d: &DoseWeighting,
        n_frames: usize,
    ) -> Self {
        let dk = 1.0 / (4.0 * nx.max(ny) as f64 * pixel_size_a);
        let k_max = std::f64::consts::SQRT_2 * 0.5 / pixel_size_a;
        let bins = (k_max / dk).ceil() as usize + 2;
        let mut weights = Vec::with_capacity(bins * n_frames);
        for b in 0..bins {
            weights.extend(dose::frame_weights(
                b as f64 * dk,
                d.dose_per_frame,
                n_frames,
                d.voltage_kv,
            ));
        }
        WeightTable {
            inv_dk: 1.0 / dk,
            weights,
            n_frames,
        }
    }

    /// Bins in the table.
    pub fn bins(&self) -> usize {
        self.weights.len() / self.n_frames
    }

    fn row(&self, k: f64) -> &[f32] {
        let b = (k * self.inv_dk).round() as usize;
        let b = b.min(self.weights.len() / self.n_frames - 1);
        &self.weights[b * self.n_frames..(b + 1) * self.n_frames]
    }
}

/// Forms the requested averages of `movie` aligned by `req.shifts_px` (module docs).
///
/// # Panics
/// If the number of shifts differs from the number of frames or the pixel size is not
/// positive.
pub fn accumulate(movie: &Movie, req: &AccumulateRequest<'_>) -> Sums {
    let nf = movie.frames();
    assert_eq!(req.shifts_px.len(), nf, "accumulate: one shift per frame");
    assert!(req.pixel_size_a > 0.0, "accumulate: pixel size");
    let (nx, ny) = (movie.nx, movie.ny);
    let nxh = nx / 2 + 1;
    let weighting = req
        .dose
        .map(|d| WeightTable::new(nx, ny, req.pixel_size_a, &d, nf));
    // Outputs, interleaved by row: [average, weighted?, odd?, even?].
    let k_out = 1 + usize::from(weighting.is_some()) + 2 * usize::from(req.odd_even);
    let tau = std::f64::consts::TAU;
    let ramps_x: Vec<Vec<Complex32>> = req
        .shifts_px
        .iter()
        .map(|s| {
            (0..nxh)
                .map(|i| {
                    let p = tau * i as f64 * s[0] as f64 / nx as f64;
                    Complex32::new(p.cos() as f32, p.sin() as f32)
                })
                .collect()
        })
        .collect();
    let x_nyq = nx.is_multiple_of(2).then_some(nx / 2);
    let y_nyq = ny.is_multiple_of(2).then_some(ny / 2);
    let n_odd = nf / 2;
    let n_even = nf - n_odd;
    let mut acc = vec![Complex32::new(0.0, 0.0); k_out * nxh * ny];
    acc.par_chunks_mut(k_out * nxh)
        .enumerate()
        .for_each(|(j, out)| {
            if Some(j) == y_nyq {
                return;
            }
            let fy = signed_freq(j, ny) as f64;
            let weights: Option<Vec<&[f32]>> = weighting.as_ref().map(|t| {
                (0..nxh)
                    .map(|i| {
                        let (kx, ky) = crate::fft::bin_k(i, j, nx, ny, req.pixel_size_a);
                        t.row(kx.hypot(ky))
                    })
                    .collect()
            });
            for (f, (spec, rx)) in movie.spectra.iter().zip(&ramps_x).enumerate() {
                // Displacing by −shift: exp(+2πi(fx·sx/nx + fy·sy/ny)).
                let py = tau * fy * req.shifts_px[f][1] as f64 / ny as f64;
                let ry = Complex32::new(py.cos() as f32, py.sin() as f32);
                let src = &spec[j * nxh..(j + 1) * nxh];
                let (avg, rest) = out.split_at_mut(nxh);
                let (wsum, halves) = if weights.is_some() {
                    rest.split_at_mut(nxh)
                } else {
                    rest.split_at_mut(0)
                };
                let half = if req.odd_even {
                    let (odd, even) = halves.split_at_mut(nxh);
                    Some(if f % 2 == 1 { odd } else { even })
                } else {
                    None
                };
                match (&weights, half) {
                    (None, None) => {
                        for ((a, v), r) in avg.iter_mut().zip(src).zip(rx) {
                            *a += *v * (*r * ry);
                        }
                    }
                    (None, Some(h)) => {
                        for (((a, hv), v), r) in avg.iter_mut().zip(h.iter_mut()).zip(src).zip(rx) {
                            let t = *v * (*r * ry);
                            *a += t;
                            *hv += t;
                        }
                    }
                    (Some(w), h) => {
                        let mut h = h;
                        for (i, ((v, r), a)) in src.iter().zip(rx).zip(avg.iter_mut()).enumerate() {
                            let t = *v * (*r * ry);
                            *a += t;
                            let tw = t * w[i][f];
                            wsum[i] += tw;
                            if let Some(h) = h.as_deref_mut() {
                                h[i] += tw;
                            }
                        }
                    }
                }
            }
            if let Some(i) = x_nyq {
                for o in 0..k_out {
                    out[o * nxh + i] = Complex32::new(0.0, 0.0);
                }
            }
        });

    // Split the interleaved rows into one spectrum per output, scaled to a mean, and
    // transform each back.
    let mut scales = vec![1.0 / nf as f32];
    if weighting.is_some() {
        scales.push(1.0 / nf as f32);
    }
    if req.odd_even {
        scales.push(1.0 / n_odd.max(1) as f32);
        scales.push(1.0 / n_even.max(1) as f32);
    }
    let mut images: Vec<Vec<f32>> = (0..k_out)
        .into_par_iter()
        .map(|o| {
            let mut spec = Vec::with_capacity(nxh * ny);
            for row in acc.chunks_exact(k_out * nxh) {
                spec.extend(row[o * nxh..(o + 1) * nxh].iter().map(|v| *v * scales[o]));
            }
            Fft2d::new(nx, ny).inverse(&spec)
        })
        .collect();
    drop(acc);
    let (even, odd) = if req.odd_even {
        (images.pop(), images.pop())
    } else {
        (None, None)
    };
    let weighted = if weighting.is_some() {
        images.pop()
    } else {
        None
    };
    let average = images.pop().expect("the plain average is always made");
    Sums {
        average,
        weighted,
        odd,
        even,
    }
}

#[cfg(test)]
#[path = "movie_tests.rs"]
mod tests;

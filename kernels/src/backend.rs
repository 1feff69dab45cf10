//! The compute backend: the operations of the preprocessing pipeline behind one trait, so the
//! worker's commands run unchanged on the CPU or (issue 4) on a GPU.
//!
//! Each method is one pipeline operation. The math of each operation lives in exactly one
//! module ([`crate::movie`], [`crate::motion`], [`crate::ctf_fit`]); the trait's default methods
//! call it, so [`CpuBackend`] is just the defaults, and a GPU backend overrides an operation
//! with kernels that are tested against it.
//! Inputs and outputs are host memory: a [`Movie`] holds its frames' spectra, which a GPU
//! backend uploads (or keeps resident between calls on the same movie).
//!
//! The CPU backend parallelises with rayon over frames, rows or patches; the number of
//! threads is rayon's global pool (`RAYON_NUM_THREADS`, default one per core).

use std::path::Path;

use crate::ctf_fit::{self, CtfFit, CtfFitOptions, Spectrum};
use crate::gain::GainRef;
use crate::motion::{self, LocalMotion, MotionOptions, MotionResult};
use crate::movie::{self, AccumulateRequest, LoadError, LoadOptions, Movie, Sums};

/// Optics of a CTF fit (DESIGN.md §6 units).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Optics {
    /// Acceleration voltage, kV.
    pub voltage_kv: f64,
    /// Spherical aberration, mm.
    pub cs_mm: f64,
    /// Amplitude contrast, fraction.
    pub amplitude_contrast: f64,
}

/// The pipeline's operations (module docs). Every operation's default is the CPU code (the
/// reference); a GPU backend overrides what it runs on the device and keeps the rest.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// `"cpu"` or `"cuda"`, as reported in results.
    fn name(&self) -> &'static str;

    /// The GPU it computes on, if any (reported at registration).
    fn gpu(&self) -> Option<crate::gpu::GpuInfo> {
        None
    }

    /// Whether the device still works, checked after a failed command: `Err` says why, and the
    /// worker then hands its task back and exits (a broken GPU must not fail every task).
    fn health_check(&self) -> Result<(), String> {
        Ok(())
    }

    /// Reads, gain-corrects, crops and transforms a movie ([`Movie::load`]).
    fn load_movie(
        &self,
        path: &Path,
        gain: Option<&GainRef>,
        opts: &LoadOptions,
    ) -> Result<Movie, LoadError> {
        Movie::load(path, gain, opts)
    }

    /// Whole-frame motion ([`motion::estimate_global_spectra`]).
    fn motion_global(
        &self,
        movie: &Movie,
        pixel_size_a: f64,
        opts: &MotionOptions,
    ) -> MotionResult {
        motion::estimate_global_spectra(&movie.spectra, movie.nx, movie.ny, pixel_size_a, opts)
    }

    /// Patch motion on top of `global` ([`motion::estimate_local_spectra`]).
    fn motion_local(
        &self,
        movie: &Movie,
        pixel_size_a: f64,
        global: &MotionResult,
        patch_px: usize,
        opts: &MotionOptions,
    ) -> LocalMotion {
        motion::estimate_local_spectra(
            &movie.spectra,
            movie.nx,
            movie.ny,
            pixel_size_a,
            global,
            patch_px,
            opts,
        )
    }

    /// Aligned, optionally dose-weighted averages ([`movie::accumulate`]).
    fn accumulate(&self, movie: &Movie, req: &AccumulateRequest<'_>) -> Sums {
        movie::accumulate(movie, req)
    }

    /// Tiled power spectrum of an image ([`ctf_fit::power_spectrum`]).
    fn power_spectrum(&self, image: &[f32], nx: usize, ny: usize, window: usize) -> Spectrum {
        ctf_fit::power_spectrum(image, nx, ny, window)
    }

    /// CTF fit of a power spectrum ([`ctf_fit::estimate_ctf`]).
    fn fit_ctf(
        &self,
        spectrum: &Spectrum,
        pixel_size_a: f64,
        optics: &Optics,
        opts: &CtfFitOptions,
    ) -> CtfFit {
        ctf_fit::estimate_ctf(
            spectrum,
            pixel_size_a,
            optics.voltage_kv,
            optics.cs_mm,
            optics.amplitude_contrast,
            opts,
        )
    }
}

/// The CPU backend: the trait's defaults (rayon and rustfft/realfft).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuBackend;

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }
}

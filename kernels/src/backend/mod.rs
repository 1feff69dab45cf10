//! The compute backend: the operations of the preprocessing pipeline behind one trait, so the
//! worker's commands run unchanged on the CPU or on a GPU.
//!
//! Each method is one pipeline operation. The math of each operation lives in exactly one
//! module ([`crate::movie`], [`crate::motion`], [`crate::ctf_fit`]); the trait's default methods
//! call it, so [`CpuBackend`] is just the defaults, and a GPU backend ([`cuda::CudaBackend`])
//! overrides an operation with kernels that are tested against it.
//! Inputs and outputs are host memory: a [`Movie`] holds its frames' spectra, which a GPU
//! backend uploads (or keeps resident between calls on the same movie).
//!
//! The CPU backend parallelises with rayon over frames, rows or patches; the number of
//! threads is rayon's global pool (`RAYON_NUM_THREADS`, default one per core).
//!
//! **Errors.** Every operation returns a `Result`; nothing here panics on a device error, so a
//! `panic = "abort"` build fails the command, not the worker. The CPU fails only on an invalid
//! request ([`BackendError::InvalidInput`]: what the kernels would otherwise panic with); a GPU
//! also with a device error ([`BackendError::Gpu`], [`BackendError::OutOfMemory`]). Loading
//! reports its errors as [`LoadError`], a device's as [`LoadError::Backend`].
//!
//! **Selection** ([`select_backend`]): `cpu`; `cuda` (fails with [`probe`]'s message); `auto`
//! (the GPU when the probe passes, else the CPU, with one line saying why).
//!
//! Files: this one (the trait, its errors, selection), `cpu.rs` ([`CpuBackend`]), `cuda/`
//! ([`cuda::CudaBackend`]: `mod.rs` the operations, `device.rs` the opened device, `pool.rs`
//! device memory, `correlation.rs` the correlation engine of global motion).

use std::fmt;
use std::path::Path;

use crate::ctf_fit::{self, CtfFit, CtfFitOptions, Spectrum};
use crate::gain::GainRef;
use crate::motion::{self, LocalMotion, MotionOptions, MotionResult};
use crate::movie::{self, AccumulateRequest, LoadError, LoadOptions, Movie, Sums};

pub mod cpu;
pub mod cuda;

pub use cpu::CpuBackend;

/// Why a backend operation failed.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum BackendError {
    /// A CUDA driver or cuFFT call failed: the step and the driver's message. The device may
    /// be broken; the worker checks its health next.
    Gpu(String),
    /// The device ran out of memory during an operation that seemed to fit (another process
    /// took memory meanwhile, or the estimate fell short).
    OutOfMemory {
        /// About how many bytes of device memory the operation needs.
        needed: u64,
        /// Free device memory when the operation failed, bytes.
        free: u64,
    },
    /// The request cannot be computed (a caller's bug or an input the worker did not check):
    /// what is wrong with it.
    InvalidInput(String),
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: u64| b.div_ceil(1 << 20);
        match self {
            BackendError::Gpu(m) => write!(
                f,
                "GPU error: {m} (if it persists, check the GPU with nvidia-smi or run the worker with --backend cpu)"
            ),
            BackendError::OutOfMemory { needed, free } => write!(
                f,
                "GPU out of memory: the operation needs about {} MiB and {} MiB are free; another process may be using the GPU (run one worker per GPU, or --backend cpu)",
                mib(*needed),
                mib(*free)
            ),
            BackendError::InvalidInput(m) => write!(f, "invalid input: {m}"),
        }
    }
}

impl std::error::Error for BackendError {}

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

/// A GPU found by [`probe`].
#[derive(Debug, Clone, PartialEq)]
pub struct GpuInfo {
    /// Device index.
    pub device: usize,
    /// Name as the driver reports it.
    pub name: String,
    /// Total device memory, bytes.
    pub memory_bytes: u64,
}

/// Which backend a worker should use (`--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// The GPU when usable, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// The GPU, or fail.
    Cuda,
}

impl BackendChoice {
    /// The `--backend` value naming this choice (what [`str::parse`] reads back).
    pub fn as_str(self) -> &'static str {
        match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Cpu => "cpu",
            BackendChoice::Cuda => "cuda",
        }
    }
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "cpu" => Ok(BackendChoice::Cpu),
            "cuda" => Ok(BackendChoice::Cuda),
            other => Err(format!(
                "unknown backend '{other}' (expected auto, cpu or cuda)"
            )),
        }
    }
}

/// Checks that the GPU `device` is usable and describes it: in order the driver library,
/// cuFFT, driver initialisation, the device index, a context, the kernels, and a health check
/// (a small FFT round trip on the device). cudarc panics when a library it needs cannot be
/// loaded, so no CUDA API is touched before the libraries are found. The error names what is
/// missing and how to fix it.
pub fn probe(device: usize) -> Result<GpuInfo, String> {
    Ok(cuda::CudaBackend::new(device)?.info().clone())
}

/// The backend for `choice` on `device` (`< 0`: no GPU, the CPU), and a line for the log
/// saying what was chosen and, for a fallback, why.
pub fn select_backend(
    choice: BackendChoice,
    device: i32,
) -> Result<(Box<dyn Backend>, String), String> {
    if choice == BackendChoice::Cpu {
        return Ok((Box::new(CpuBackend), "backend: cpu (requested)".into()));
    }
    let opened = usize::try_from(device)
        .map_err(|_| format!("device {device} is the CPU (-d -1); no GPU to use"))
        .and_then(cuda::CudaBackend::new);
    match (opened, choice) {
        (Ok(b), _) => {
            let info = b.info();
            let line = format!(
                "backend: cuda on GPU {} ({}, {} MiB)",
                info.device,
                info.name,
                info.memory_bytes >> 20
            );
            Ok((Box::new(b), line))
        }
        (Err(e), BackendChoice::Cuda) => Err(format!("--backend cuda: {e}")),
        (Err(e), _) => Ok((
            Box::new(CpuBackend),
            format!("backend: cpu (no usable GPU: {e})"),
        )),
    }
}

/// The pipeline's operations (module docs). Every operation's default is the CPU code (the
/// reference); a GPU backend overrides what it runs on the device and keeps the rest.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// `"cpu"` or `"cuda"`, as reported in results.
    fn name(&self) -> &'static str;

    /// The GPU it computes on, if any (reported at registration).
    fn gpu(&self) -> Option<GpuInfo> {
        None
    }

    /// Whether the device still works, checked after a failed command: `Err` says why, and the
    /// worker then hands its task back and exits (a broken GPU must not fail every task).
    fn health_check(&self) -> Result<(), BackendError> {
        Ok(())
    }

    /// Reads, gain-corrects, crops and transforms a movie ([`Movie::load`]); a device's
    /// failure is [`LoadError::Backend`].
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
    ) -> Result<MotionResult, BackendError> {
        check_motion(pixel_size_a, opts)?;
        Ok(motion::estimate_global_spectra(
            &movie.spectra,
            movie.nx,
            movie.ny,
            pixel_size_a,
            opts,
        ))
    }

    /// Patch motion on top of `global` ([`motion::estimate_local_spectra`]).
    fn motion_local(
        &self,
        movie: &Movie,
        pixel_size_a: f64,
        global: &MotionResult,
        patch_px: usize,
        opts: &MotionOptions,
    ) -> Result<LocalMotion, BackendError> {
        check_motion(pixel_size_a, opts)?;
        check_shifts(movie, global.shifts_px.len())?;
        if patch_px < 16 {
            return Err(BackendError::InvalidInput(format!(
                "a local-motion patch of {patch_px} px is too small: 16 px at least"
            )));
        }
        Ok(motion::estimate_local_spectra(
            &movie.spectra,
            movie.nx,
            movie.ny,
            pixel_size_a,
            global,
            patch_px,
            opts,
        ))
    }

    /// Aligned, optionally dose-weighted averages ([`movie::accumulate`]).
    fn accumulate(&self, movie: &Movie, req: &AccumulateRequest<'_>) -> Result<Sums, BackendError> {
        check_accumulate(movie, req)?;
        Ok(movie::accumulate(movie, req))
    }

    /// Tiled power spectrum of an image ([`ctf_fit::power_spectrum`]).
    fn power_spectrum(
        &self,
        image: &[f32],
        nx: usize,
        ny: usize,
        window: usize,
    ) -> Result<Spectrum, BackendError> {
        ctf_fit::tile_size(image.len(), nx, ny, window).map_err(BackendError::InvalidInput)?;
        Ok(ctf_fit::power_spectrum(image, nx, ny, window))
    }

    /// CTF fit of a power spectrum ([`ctf_fit::estimate_ctf`]).
    fn fit_ctf(
        &self,
        spectrum: &Spectrum,
        pixel_size_a: f64,
        optics: &Optics,
        opts: &CtfFitOptions,
    ) -> Result<CtfFit, BackendError> {
        ctf_fit::check_fit_inputs(spectrum, pixel_size_a, opts)
            .map_err(BackendError::InvalidInput)?;
        Ok(ctf_fit::estimate_ctf(
            spectrum,
            pixel_size_a,
            optics.voltage_kv,
            optics.cs_mm,
            optics.amplitude_contrast,
            opts,
        ))
    }
}

/// What the motion estimator needs of its inputs (it panics otherwise).
fn check_motion(pixel_size_a: f64, opts: &MotionOptions) -> Result<(), BackendError> {
    if pixel_size_a > 0.0 && opts.range_min_a > 0.0 && opts.range_max_a > 0.0 {
        Ok(())
    } else {
        Err(BackendError::InvalidInput(format!(
            "motion: the pixel size ({pixel_size_a} Å) and the resolution limits ({}–{} Å) must be positive",
            opts.range_min_a, opts.range_max_a
        )))
    }
}

/// One shift per frame of `movie`.
fn check_shifts(movie: &Movie, shifts: usize) -> Result<(), BackendError> {
    if shifts == movie.frames() {
        Ok(())
    } else {
        Err(BackendError::InvalidInput(format!(
            "{shifts} shifts for a movie of {} frames",
            movie.frames()
        )))
    }
}

/// What [`movie::accumulate`] needs of a request (it panics otherwise).
fn check_accumulate(movie: &Movie, req: &AccumulateRequest<'_>) -> Result<(), BackendError> {
    check_shifts(movie, req.shifts_px.len())?;
    if req.pixel_size_a > 0.0 {
        Ok(())
    } else {
        Err(BackendError::InvalidInput(format!(
            "averages: the pixel size must be positive, got {} Å",
            req.pixel_size_a
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_choice_parses_and_names_the_bad_value() {
        assert_eq!("auto".parse::<BackendChoice>(), Ok(BackendChoice::Auto));
        assert_eq!("cpu".parse::<BackendChoice>(), Ok(BackendChoice::Cpu));
        assert_eq!("cuda".parse::<BackendChoice>(), Ok(BackendChoice::Cuda));
        for c in [BackendChoice::Auto, BackendChoice::Cpu, BackendChoice::Cuda] {
            assert_eq!(c.as_str().parse::<BackendChoice>(), Ok(c));
        }
        let e = "gpu".parse::<BackendChoice>().unwrap_err();
        assert!(
            e.contains("'gpu'") && e.contains("auto, cpu or cuda"),
            "{e}"
        );
    }

    /// Without a usable GPU, `cpu` and `auto` give the CPU (auto says why), `cuda` fails with
    /// the reason; with one, `auto` and `cuda` give it. Either way nothing panics.
    #[test]
    fn selection_falls_back_or_fails_with_the_reason() {
        let (cpu, line) = select_backend(BackendChoice::Cpu, 0).unwrap();
        assert_eq!(cpu.name(), "cpu");
        assert!(line.contains("requested"), "{line}");
        let (auto, line) = select_backend(BackendChoice::Auto, -1).unwrap();
        assert_eq!(auto.name(), "cpu");
        assert!(line.contains("no usable GPU"), "{line}");
        assert!(select_backend(BackendChoice::Cuda, -1).is_err());
        match probe(0) {
            Ok(info) => {
                eprintln!("GPU present: {info:?}");
                let (b, _) = select_backend(BackendChoice::Cuda, 0).unwrap();
                assert_eq!(b.name(), "cuda");
            }
            Err(reason) => {
                eprintln!("no GPU here ({reason}): checking the fallback only");
                let (auto, line) = select_backend(BackendChoice::Auto, 0).unwrap();
                assert_eq!(auto.name(), "cpu");
                assert!(line.contains(&reason), "{line}");
                let e = select_backend(BackendChoice::Cuda, 0).err().unwrap();
                assert!(
                    e.starts_with("--backend cuda: ") && e.contains(&reason),
                    "{e}"
                );
            }
        }
    }

    #[test]
    fn errors_say_what_to_do() {
        let e = BackendError::OutOfMemory {
            needed: 3 << 30,
            free: (1 << 30) + 1,
        };
        let m = e.to_string();
        assert!(
            m.contains("3072 MiB")
                && m.contains("1025 MiB are free")
                && m.contains("--backend cpu"),
            "{m}"
        );
        let m = BackendError::Gpu("cuFFT R2C: CUFFT_EXEC_FAILED".into()).to_string();
        assert!(
            m.starts_with("GPU error: cuFFT R2C") && m.contains("nvidia-smi"),
            "{m}"
        );
    }

    /// The CPU backend turns what the kernels would panic with into `InvalidInput`, naming the
    /// problem, instead of unwinding through the worker.
    #[test]
    fn the_cpu_backend_refuses_invalid_requests_with_an_error() {
        let cpu = CpuBackend;
        let e = cpu.power_spectrum(&[0.0; 100], 10, 10, 512).unwrap_err();
        assert!(
            matches!(&e, BackendError::InvalidInput(m) if m.contains("too small")),
            "{e}"
        );
        let e = cpu.power_spectrum(&[0.0; 99], 10, 10, 8).unwrap_err();
        assert!(e.to_string().contains("99 pixels"), "{e}");

        let movie = Movie::from_frames(&[vec![0.0; 64 * 64], vec![1.0; 64 * 64]], 64, 64);
        let shifts = [[0.0f32; 2]; 3];
        let req = AccumulateRequest {
            shifts_px: &shifts,
            pixel_size_a: 1.0,
            dose: None,
            odd_even: false,
        };
        let e = cpu.accumulate(&movie, &req).unwrap_err();
        assert!(
            e.to_string().contains("3 shifts for a movie of 2 frames"),
            "{e}"
        );
        let e = cpu
            .motion_global(&movie, 0.0, &MotionOptions::default())
            .unwrap_err();
        assert!(e.to_string().contains("must be positive"), "{e}");

        let spectrum = ctf_fit::power_spectrum(&vec![1.0; 64 * 64], 64, 64, 64);
        let optics = Optics {
            voltage_kv: 300.0,
            cs_mm: 2.7,
            amplitude_contrast: 0.07,
        };
        let narrow = CtfFitOptions {
            range_min_a: 30.0,
            range_max_a: 20.0,
            ..CtfFitOptions::default()
        };
        let e = cpu.fit_ctf(&spectrum, 1.0, &optics, &narrow).unwrap_err();
        assert!(e.to_string().contains("fit range too narrow"), "{e}");
    }
}

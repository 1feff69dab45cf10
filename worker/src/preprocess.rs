//! The preprocessing commands (`LoadGainRef`, `LoadStack`, `MovieProcessMovement`,
//! `MovieProcessCTF`, `MovieExportMovie`, `MovieCreateThumbnail`) and the state they share.
//!
//! The state is what Warp's workers hold between calls: the gain reference, the loaded movie
//! (as spectra, see `warp_kernels::movie`), its motion, and its latest aligned averages.
//! Loading a movie drops the previous one first, so a worker holds one movie at a time. The
//! math is the backend's (`warp_kernels::backend`); this module checks preconditions, resolves
//! the pixel size, writes files and shapes results.
//!
//! Every error names the file or the missing step. A backend's error (a GPU error, a device out
//! of memory, an invalid request: `warp_kernels::backend::BackendError`) fails the command with
//! its message, prefixed by the command's name. A panic inside a kernel (a bug) is still caught,
//! as a last guard, and reported as an internal error, so the worker stays up and takes the next
//! task.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::exec::CommandError;
use serde_json::Value;
use warp_common::commands::Command;
use warp_common::preprocessing::{
    CtfParams, CtfResult, Defocus, ExportParams, ExportResult, GainRefLoaded, LoadGainRefParams,
    LoadStackParams, LocalMotionResult, MovementParams, MovementResult, ReadAheadReport,
    StackLoaded, ThumbnailParams, ThumbnailResult,
};
use warp_kernels::backend::{Backend, BackendError, CpuBackend, GpuInfo, Optics};
use warp_kernels::ctf_fit::CtfFitOptions;
use warp_kernels::gain::GainRef;
use warp_kernels::io::mrc::{WriteMode, write_mrc};
use warp_kernels::motion::{MotionOptions, MotionResult};
use warp_kernels::movie::{AccumulateRequest, DoseWeighting, LoadOptions, Movie, Sums};

/// Smallest local-motion patch, px.
const MIN_PATCH_PX: usize = 128;
/// Default local-motion patch side, Å.
const DEFAULT_PATCH_A: f64 = 1000.0;

/// Which averages a cached [`Sums`] holds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SumsKey {
    aligned: bool,
    dose: Option<(f64, f64)>,
    odd_even: bool,
}

/// The loaded movie and what has been computed from it.
#[derive(Debug)]
struct Loaded {
    movie: Movie,
    /// Pixel size of the loaded (possibly cropped) frames, Å.
    angpix: f64,
    motion: Option<MotionResult>,
    sums: Option<(SumsKey, Sums)>,
}

/// The preprocessing state of one worker.
#[derive(Debug)]
pub struct Preprocessor {
    backend: Box<dyn Backend>,
    gain: Option<GainRef>,
    loaded: Option<Loaded>,
    /// Set when the backend's health check failed after a command error.
    unhealthy: Option<String>,
    /// What the worker's read-ahead did for the movie the next `LoadStack` loads.
    read_ahead: Option<ReadAheadReport>,
}

impl Default for Preprocessor {
    fn default() -> Self {
        Preprocessor::new(Box::new(CpuBackend))
    }
}

/// The loaded movie, or an error naming the step that needs one.
fn loaded<'l>(l: Option<&'l mut Loaded>, command: &str) -> Result<&'l mut Loaded, String> {
    l.ok_or_else(|| format!("no movie is loaded; run LoadStack before {command}"))
}

/// The cached averages of the loaded movie for `key`, computing them (and replacing the
/// cache) when absent. A free function, so a caller can use the backend while it holds them.
fn cached_sums<'l>(
    backend: &dyn Backend,
    l: Option<&'l mut Loaded>,
    key: SumsKey,
    command: &str,
) -> Result<&'l Sums, String> {
    let l = loaded(l, command)?;
    let cached = l.sums.as_ref().is_some_and(|(k, _)| {
        k.aligned == key.aligned
            && (k.dose == key.dose || key.dose.is_none())
            && (k.odd_even || !key.odd_even)
    });
    if !cached {
        l.sums = None;
        let zero;
        let shifts: &[[f32; 2]] = match (&l.motion, key.aligned) {
            (Some(m), true) => &m.shifts_px,
            _ => {
                zero = vec![[0.0f32; 2]; l.movie.frames()];
                &zero
            }
        };
        let req = AccumulateRequest {
            shifts_px: shifts,
            pixel_size_a: l.angpix,
            dose: key.dose.map(|(dose_per_frame, voltage_kv)| DoseWeighting {
                dose_per_frame,
                voltage_kv,
            }),
            odd_even: key.odd_even,
        };
        let sums = backend
            .accumulate(&l.movie, &req)
            .map_err(failed(command))?;
        l.sums = Some((key, sums));
    }
    Ok(&l.sums.as_ref().expect("set above").1)
}

/// A backend error as `command`'s failure message.
fn failed(command: &str) -> impl Fn(BackendError) -> String + '_ {
    move |e| format!("{command}: {e}")
}

fn ms_since(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1e3 * 1000.0).round() / 1000.0
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Value, String> {
    serde_json::to_value(v).map_err(|e| format!("cannot encode the result: {e}"))
}

/// Creates the parent directory of `path`.
fn ensure_parent(path: &Path) -> Result<(), String> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// `dir/stem_suffix.mrc` for `dir/stem.mrc`.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    path.with_file_name(format!("{stem}_{suffix}{ext}"))
}

impl Preprocessor {
    /// A preprocessor computing with `backend`, holding nothing.
    pub fn new(backend: Box<dyn Backend>) -> Preprocessor {
        Preprocessor {
            backend,
            gain: None,
            loaded: None,
            unhealthy: None,
            read_ahead: None,
        }
    }

    /// Records what the read-ahead did for the movie of the next `LoadStack`; its result
    /// reports it.
    pub fn note_read_ahead(&mut self, report: Option<ReadAheadReport>) {
        self.read_ahead = report;
    }

    /// Why the device stopped working, once a health check after a failed command said so;
    /// the worker then hands its task back and exits.
    pub fn unhealthy(&self) -> Option<&str> {
        self.unhealthy.as_deref()
    }

    /// The GPU of the backend, if it has one.
    pub fn gpu(&self) -> Option<GpuInfo> {
        self.backend.gpu()
    }

    /// The backend's name (`"cpu"` or `"cuda"`).
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Drops everything, gain included (a new init part is about to run).
    pub fn clear(&mut self) {
        self.gain = None;
        self.loaded = None;
    }

    /// Drops the movie and what was computed from it; keeps the gain reference (part of the
    /// held init state). Used by `GcCollect`.
    pub fn release_movie(&mut self) {
        self.loaded = None;
    }

    /// Runs a preprocessing command (any other command is an error).
    pub fn run(&mut self, cmd: &Command) -> Result<Value, CommandError> {
        let name = cmd.name();
        // Errors come back as values; the guard only catches a kernel's bug.
        let outcome = catch_unwind(AssertUnwindSafe(|| match cmd {
            Command::LoadGainRef(p) => self.load_gain_ref(p),
            Command::LoadStack(p) => self.load_stack(p),
            Command::MovieProcessMovement(p) => Ok(self.process_movement(p)?),
            Command::MovieProcessCtf(p) => Ok(self.process_ctf(p)?),
            Command::MovieExportMovie(p) => Ok(self.export_movie(p)?),
            Command::MovieCreateThumbnail(p) => Ok(self.create_thumbnail(p)?),
            _ => Err(CommandError::permanent(format!(
                "{name} is not a preprocessing command"
            ))),
        }));
        let outcome = match outcome {
            Ok(r) => r,
            Err(payload) => {
                let what = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                // The state may be half-updated: drop the movie, keep nothing suspect.
                self.loaded = None;
                Err(format!("internal error in {name}: {what}").into())
            }
        };
        // A failure on a device may mean the device is gone: check before blaming the task.
        if outcome.is_err()
            && self.backend.gpu().is_some()
            && let Err(reason) = self.backend.health_check()
        {
            self.loaded = None;
            self.unhealthy = Some(reason.to_string());
        }
        outcome
    }

    fn loaded(&mut self, command: &str) -> Result<&mut Loaded, String> {
        loaded(self.loaded.as_mut(), command)
    }

    fn load_gain_ref(&mut self, p: &LoadGainRefParams) -> Result<Value, CommandError> {
        self.gain = None;
        let gain = GainRef::load(
            &p.path,
            p.flip_x,
            p.flip_y,
            p.transpose,
            p.defects_path.as_deref().map(Path::new),
        )
        .map_err(|e| CommandError {
            message: e.to_string(),
            permanent: !e.is_io(),
        })?;
        let r = GainRefLoaded {
            path: p.path.clone(),
            width: gain.width(),
            height: gain.height(),
            defects: gain.defect_count(),
        };
        self.gain = Some(gain);
        Ok(to_json(&r)?)
    }

    fn load_stack(&mut self, p: &LoadStackParams) -> Result<Value, CommandError> {
        let start = Instant::now();
        let read_ahead = self.read_ahead.take();
        // Drop the previous movie first: one movie in memory at a time.
        self.loaded = None;
        let path = Path::new(&p.path);
        let opts = LoadOptions {
            scale_factor: p.scale_factor,
            correct_gain: p.correct_gain,
            eer: warp_kernels::io::eer::EerOptions {
                upsample: p.eer_upsample as usize,
                group: p.eer_group_frames.max(1) as usize,
            },
        };
        let movie = self
            .backend
            .load_movie(path, self.gain.as_ref(), &opts)
            .map_err(|e| CommandError {
                message: e.to_string(),
                permanent: e.is_permanent(),
            })?;
        // An EER's angpix is its detector pixel's; rendered finer, each pixel is smaller.
        let eer_up = if warp_kernels::io::eer::is_eer(path) {
            f64::from(p.eer_upsample.max(1))
        } else {
            1.0
        };
        let file_angpix = p
            .angpix
            .map(|a| a / eer_up)
            .or(movie.file_pixel_size_a)
            .ok_or_else(|| {
                CommandError::permanent(format!(
                    "{}: the file states no pixel size (TIFF and EER files do not, and this MRC header says 0); pass angpix",
                    p.path
                ))
            })?;
        let angpix = file_angpix / movie.scale();
        let r = StackLoaded {
            path: p.path.clone(),
            frames: movie.frames(),
            width: movie.nx,
            height: movie.ny,
            file_width: movie.file_nx,
            file_height: movie.file_ny,
            angpix,
            gain_corrected: movie.gain_corrected,
            backend: self.backend.name().to_string(),
            ms: ms_since(start),
            read_ahead,
        };
        self.loaded = Some(Loaded {
            movie,
            angpix,
            motion: None,
            sums: None,
        });
        Ok(to_json(&r)?)
    }

    fn process_movement(&mut self, p: &MovementParams) -> Result<Value, String> {
        let start = Instant::now();
        let backend = &*self.backend;
        let l = self
            .loaded
            .as_mut()
            .ok_or("no movie is loaded; run LoadStack before MovieProcessMovement")?;
        l.motion = None;
        l.sums = None;
        let nyquist = 2.0 * l.angpix;
        if p.range_max_a < nyquist {
            return Err(format!(
                "MovieProcessMovement range_max_a {} Å is finer than Nyquist ({nyquist:.3} Å at {:.4} Å/px)",
                p.range_max_a, l.angpix
            ));
        }
        let opts = MotionOptions {
            range_min_a: p.range_min_a,
            range_max_a: p.range_max_a,
            bfactor_a2: p.bfactor_a2,
            ..MotionOptions::default()
        };
        let global = backend
            .motion_global(&l.movie, l.angpix, &opts)
            .map_err(failed("MovieProcessMovement"))?;
        let local = if p.local && l.movie.frames() >= 2 {
            let patch_a = p.patch_a.unwrap_or(DEFAULT_PATCH_A);
            let patch_px = ((patch_a / l.angpix).round() as usize).max(MIN_PATCH_PX);
            if patch_px <= l.movie.nx.min(l.movie.ny) {
                let lm = backend
                    .motion_local(&l.movie, l.angpix, &global, patch_px, &opts)
                    .map_err(failed("MovieProcessMovement (local motion)"))?;
                Some(LocalMotionResult {
                    grid: [lm.grid_x, lm.grid_y],
                    patch_px: lm.patch_px,
                    centres_px: lm.patch_centres,
                    shifts_px: lm.shifts_px,
                })
            } else {
                None
            }
        } else {
            None
        };
        let r = MovementResult {
            shifts_px: global.shifts_px.clone(),
            shifts_a: global.shifts_a.clone(),
            iterations: global.iterations,
            local,
            ms: ms_since(start),
        };
        l.motion = Some(global);
        to_json(&r)
    }

    /// The cached averages for `key` ([`cached_sums`]).
    fn sums(&mut self, key: SumsKey, command: &str) -> Result<&Sums, String> {
        cached_sums(&*self.backend, self.loaded.as_mut(), key, command)
    }

    fn process_ctf(&mut self, p: &CtfParams) -> Result<Value, String> {
        let start = Instant::now();
        let l = self.loaded("MovieProcessCTF")?;
        let (nx, ny, angpix) = (l.movie.nx, l.movie.ny, l.angpix);
        let aligned = l.motion.is_some();
        let window = p.window.min(nx).min(ny) & !1;
        if window < 64 {
            return Err(format!(
                "MovieProcessCTF: the movie ({nx}×{ny}) is too small for a 64 px spectrum tile"
            ));
        }
        let nyquist = 2.0 * angpix;
        let range_max = p.range_max_a.max(nyquist);
        // At least 8 Fourier rings of the tile in the fit range.
        let rings = (1.0 / range_max - 1.0 / p.range_min_a) * window as f64 * angpix;
        if rings < 8.0 {
            return Err(format!(
                "MovieProcessCTF: the fit range {}–{range_max:.2} Å spans only {rings:.1} rings of a {window} px tile at {angpix:.4} Å/px; widen the range or enlarge the window",
                p.range_min_a
            ));
        }
        let key = SumsKey {
            aligned,
            dose: None,
            odd_even: false,
        };
        let backend = &*self.backend;
        let sums = cached_sums(backend, self.loaded.as_mut(), key, "MovieProcessCTF")?;
        let spectrum = backend
            .power_spectrum(&sums.average, nx, ny, window)
            .map_err(failed("MovieProcessCTF"))?;
        // The centred spectrum, made once for the files that want it.
        let centred = (p.spectrum_path.is_some() || p.spectrum_png_path.is_some())
            .then(|| warp_kernels::spectrum_image::centred(&spectrum));
        if let (Some(out), Some(img)) = (&p.spectrum_path, &centred) {
            let out = Path::new(out);
            ensure_parent(out)?;
            write_mrc(out, img, spectrum.n, spectrum.n, 1, WriteMode::Float32, 1.0)
                .map_err(|e| e.to_string())?;
        }
        let optics = Optics {
            voltage_kv: p.voltage_kv,
            cs_mm: p.cs_mm,
            amplitude_contrast: p.amplitude_contrast,
        };
        let opts = CtfFitOptions {
            range_min_a: p.range_min_a,
            range_max_a: range_max,
            defocus_min_um: p.defocus_min_um,
            defocus_max_um: p.defocus_max_um,
            fit_phase: p.fit_phase,
            ..CtfFitOptions::default()
        };
        let fit = backend
            .fit_ctf(&spectrum, angpix, &optics, &opts)
            .map_err(failed("MovieProcessCTF"))?;
        if let (Some(out), Some(img)) = (&p.spectrum_png_path, &centred) {
            let out = Path::new(out);
            ensure_parent(out)?;
            let ctf = warp_kernels::ctf::Ctf {
                voltage_kv: p.voltage_kv,
                cs_mm: p.cs_mm,
                amplitude_contrast: p.amplitude_contrast,
                pixel_size_a: angpix,
                defocus_u_um: fit.defocus_u_um,
                defocus_v_um: fit.defocus_v_um,
                astig_angle_deg: fit.astig_angle_deg,
                phase_shift_pi: fit.phase_shift_pi,
            };
            let pic = warp_kernels::spectrum_image::spectrum_image(
                img,
                spectrum.n,
                &ctf,
                1.0 / fit.fit_resolution_a,
            );
            warp_kernels::io::png::write_png_gray8(out, &pic, spectrum.n, spectrum.n)
                .map_err(|e| e.to_string())?;
        }
        let r = CtfResult {
            defocus: Defocus {
                defocus_u_um: fit.defocus_u_um,
                defocus_v_um: fit.defocus_v_um,
                astig_angle_deg: fit.astig_angle_deg,
                phase_shift_pi: fit.phase_shift_pi,
            },
            fit_resolution_a: fit.fit_resolution_a,
            score: fit.score,
            angpix,
            tiles: spectrum.tiles,
            aligned,
            ms: ms_since(start),
        };
        to_json(&r)
    }

    fn export_movie(&mut self, p: &ExportParams) -> Result<Value, String> {
        let start = Instant::now();
        let l = self.loaded("MovieExportMovie")?;
        let (nx, ny, angpix) = (l.movie.nx, l.movie.ny, l.angpix);
        let key = SumsKey {
            aligned: l.motion.is_some(),
            dose: (p.dose_per_frame > 0.0).then_some((p.dose_per_frame, p.voltage_kv)),
            odd_even: p.odd_even,
        };
        let sums = self.sums(key, "MovieExportMovie")?;
        let mode = if p.float16 {
            WriteMode::Float16
        } else {
            WriteMode::Float32
        };
        let out = PathBuf::from(&p.output_path);
        ensure_parent(&out)?;
        let main = if key.dose.is_some() {
            sums.weighted
                .as_ref()
                .ok_or("dose-weighted average missing")?
        } else {
            &sums.average
        };
        let write = |path: &Path, data: &[f32]| {
            write_mrc(path, data, nx, ny, 1, mode, angpix as f32).map_err(|e| e.to_string())
        };
        write(&out, main)?;
        let mut written = vec![p.output_path.clone()];
        if p.odd_even {
            for (suffix, half) in [("odd", &sums.odd), ("even", &sums.even)] {
                let half = half.as_ref().ok_or("half averages missing")?;
                let path = with_suffix(&out, suffix);
                write(&path, half)?;
                written.push(path.to_string_lossy().into_owned());
            }
        }
        let r = ExportResult {
            written,
            dose_weighted: key.dose.is_some(),
            ms: ms_since(start),
        };
        to_json(&r)
    }

    fn create_thumbnail(&mut self, p: &ThumbnailParams) -> Result<Value, String> {
        let start = Instant::now();
        let l = self.loaded("MovieCreateThumbnail")?;
        let (nx, ny) = (l.movie.nx, l.movie.ny);
        let key = SumsKey {
            aligned: l.motion.is_some(),
            dose: None,
            odd_even: false,
        };
        let sums = self.sums(key, "MovieCreateThumbnail")?;
        let image = sums.weighted.as_ref().unwrap_or(&sums.average);
        let (pixels, w, h) = warp_kernels::thumbnail::thumbnail(image, nx, ny, p.size, p.range)
            .map_err(|e| format!("MovieCreateThumbnail: {e}"))?;
        let out = Path::new(&p.output_path);
        ensure_parent(out)?;
        warp_kernels::io::png::write_png_gray8(out, &pixels, w, h).map_err(|e| e.to_string())?;
        let r = ThumbnailResult {
            path: p.output_path.clone(),
            width: w,
            height: h,
            ms: ms_since(start),
        };
        to_json(&r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp_common::preprocessing::{CtfParams, MovementParams};
    use warp_kernels::motion::MotionOptions;

    /// A device whose global motion fails with a GPU error and whose power spectrum runs out
    /// of memory (what a CUDA error looks like to the worker); it stays healthy.
    #[derive(Debug)]
    struct FailingGpu;

    impl Backend for FailingGpu {
        fn name(&self) -> &'static str {
            "cuda"
        }
        fn gpu(&self) -> Option<GpuInfo> {
            Some(GpuInfo {
                device: 0,
                name: "failing".into(),
                memory_bytes: 1 << 30,
            })
        }
        fn motion_global(
            &self,
            _: &Movie,
            _: f64,
            _: &MotionOptions,
        ) -> Result<MotionResult, BackendError> {
            Err(BackendError::Gpu(
                "warp_cc_product: CUDA_ERROR_LAUNCH_FAILED".into(),
            ))
        }
        fn power_spectrum(
            &self,
            _: &[f32],
            _: usize,
            _: usize,
            _: usize,
        ) -> Result<warp_kernels::ctf_fit::Spectrum, BackendError> {
            Err(BackendError::OutOfMemory {
                needed: 600 << 20,
                free: 100 << 20,
            })
        }
    }

    /// A preprocessor on `backend` holding a 256² × 4 movie of noise at 1 Å/px.
    fn with_movie(backend: Box<dyn Backend>) -> Preprocessor {
        let mut rng = warp_kernels::sim::SplitMix64::new(7);
        let frames: Vec<Vec<f32>> = (0..4)
            .map(|_| (0..256 * 256).map(|_| rng.normal() as f32).collect())
            .collect();
        let mut pre = Preprocessor::new(backend);
        pre.loaded = Some(Loaded {
            movie: Movie::from_frames(&frames, 256, 256),
            angpix: 1.0,
            motion: None,
            sums: None,
        });
        pre
    }

    /// A backend error fails the command with its message, named after the command, not as an
    /// internal error (panic); the movie stays loaded and the worker healthy.
    #[test]
    fn a_gpu_error_fails_the_command_with_its_message() {
        let mut pre = with_movie(Box::new(FailingGpu));
        let e = pre
            .run(&Command::MovieProcessMovement(MovementParams::default()))
            .unwrap_err()
            .message;
        assert!(
            e.starts_with("MovieProcessMovement: GPU error: warp_cc_product")
                && e.contains("CUDA_ERROR_LAUNCH_FAILED"),
            "{e}"
        );
        assert!(pre.loaded.is_some(), "the movie was dropped");
        assert_eq!(pre.unhealthy(), None);

        let e = pre
            .run(&Command::MovieProcessCtf(CtfParams::default()))
            .unwrap_err()
            .message;
        assert!(
            e.starts_with("MovieProcessCTF: GPU out of memory")
                && e.contains("600 MiB")
                && e.contains("100 MiB are free"),
            "{e}"
        );
    }

    /// A panic (a bug in a kernel) is still caught, as an internal error, and the movie dropped.
    #[test]
    fn a_kernel_panic_is_still_caught_as_an_internal_error() {
        #[derive(Debug)]
        struct Buggy;
        impl Backend for Buggy {
            fn name(&self) -> &'static str {
                "cpu"
            }
            fn motion_global(
                &self,
                _: &Movie,
                _: f64,
                _: &MotionOptions,
            ) -> Result<MotionResult, BackendError> {
                panic!("index out of bounds")
            }
        }
        let mut pre = with_movie(Box::new(Buggy));
        let e = pre
            .run(&Command::MovieProcessMovement(MovementParams::default()))
            .unwrap_err()
            .message;
        assert_eq!(
            e,
            "internal error in MovieProcessMovement: index out of bounds"
        );
        assert!(pre.loaded.is_none());
    }

    /// The CPU backend runs the same commands through (the errors above are the backend's).
    #[test]
    fn the_cpu_backend_runs_motion_and_ctf() {
        let mut pre = with_movie(Box::new(CpuBackend));
        pre.run(&Command::MovieProcessMovement(MovementParams {
            local: false,
            ..MovementParams::default()
        }))
        .unwrap();
        let r = pre
            .run(&Command::MovieProcessCtf(CtfParams {
                window: 128,
                ..CtfParams::default()
            }))
            .unwrap();
        assert!(r.get("defocus_u_um").is_some(), "{r}");
    }
}

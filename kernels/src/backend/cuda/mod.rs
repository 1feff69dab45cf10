//! The GPU backend: CUDA kernels (`kernels/cuda/warp.cu`, committed as PTX and embedded here)
//! and cuFFT, through cudarc with dynamic loading, so the binaries build and run on machines
//! without the CUDA toolkit or driver.
//!
//! **Probing.** cudarc panics when a library it needs cannot be loaded, so nothing here touches
//! a CUDA API before [`crate::backend::probe`]'s checks ([`CudaBackend::new`] runs them): the
//! driver library, cuFFT, driver initialisation, the device index, a context, and a health
//! check (a small FFT round trip on the device, compared with the input). Every failure is a
//! message naming what is missing and how to fix it.
//!
//! **What runs on the GPU so far.** [`CudaBackend`] runs the per-frame steps of `LoadStack`
//! (gain and defect correction, forward FFT, Fourier crop), the dose-weighted accumulation of
//! `MovieExportMovie`, the tiled power spectrum of `MovieProcessCTF`, and the rounds of global
//! motion estimation (phase shifts, sums, cross-power spectra, inverse FFTs and peak windows,
//! through [`motion::align_with`], which shares the rest of the estimator with the CPU) on the
//! device. Local motion (small patches) and the CTF fit itself still call the CPU code; the
//! kernel for the fit's defocus search (`warp_ctf_score_1d`) is in the PTX but not yet wired. A
//! movie stays on the host as spectra ([`Movie`]); the device holds one frame and the
//! accumulators at a time (motion: the frames' spectra cropped to the estimator's grid).
//!
//! **Device memory.** Before each operation its device bytes are estimated (`pool.rs`); when
//! they do not fit in the device's free memory, the operation runs on the CPU instead, with the
//! same result (a load decides once per movie, on its first chunk). Buffers come from the
//! device's stream-ordered memory pool (cudarc allocates with `cuMemAllocAsync`), which is told
//! at start to keep freed memory, so the next movie of the same geometry gets its buffers back
//! from the pool without a driver allocation. The pool gives its unused memory back to the
//! driver when the geometry changes, and before an operation is declared too large for the
//! device. The gain reference and its defect tables are uploaded once per `LoadGainRef`
//! ([`GainRef::id`]) and kept on the device for every chunk of every movie after.
//!
//! **Errors.** A failed driver or cuFFT call is returned as a [`BackendError`] (`Gpu`, or
//! `OutOfMemory` with the operation's estimate and the free memory), never raised as a panic.
//!
//! Files: this one (the backend and its operations), `device.rs` (the opened device: kernels,
//! plans, gain on the device, health check), `pool.rs` (memory pool, estimates, the fit
//! decision), `correlation.rs` (the correlation engine of global motion).

use std::fmt;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use cudarc::cufft::sys::cufftType;
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use rustfft::num_complex::Complex32;

use crate::backend::{Backend, BackendError, CpuBackend, GpuInfo, check_accumulate, check_motion};
use crate::ctf_fit::Spectrum;
use crate::gain::{GainError, GainRef};
use crate::motion::{self, MotionOptions, MotionResult};
use crate::movie::{
    AccumulateRequest, CpuFrameTransform, FrameGeometry, LoadError, LoadOptions, Movie, Sums,
    WeightTable,
};

mod correlation;
mod device;
mod pool;

use correlation::GpuCorrelation;
use device::Gpu;

/// The kernels, compiled by `scripts/build-ptx.sh` (NVRTC 11.8: PTX ISA 7.8, which drivers
/// from CUDA 11.8 on load; the binaries need CUDA 12.0, R525, for cudarc's cuFFT bindings).
pub const PTX: &str = include_str!("../../../ptx/warp.ptx");

/// A failed device step, before the operation it belongs to adds its memory estimate
/// ([`CudaBackend::error`]).
#[derive(Debug)]
enum DeviceError {
    /// The driver or cuFFT could not allocate device memory: the step.
    OutOfMemory(String),
    /// Any other device failure: the step and the driver's message.
    Failed(String),
    /// The host-side gain correction of a load (some defects are repaired on the host).
    Gain(GainError),
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceError::OutOfMemory(what) => write!(f, "{what}: out of device memory"),
            DeviceError::Failed(m) => write!(f, "{m}"),
            DeviceError::Gain(e) => write!(f, "{e}"),
        }
    }
}

/// A driver error during `what` ([`DeviceError::OutOfMemory`] when the driver says so).
fn err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> DeviceError + '_ {
    move |e| {
        if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            DeviceError::OutOfMemory(what.to_string())
        } else {
            DeviceError::Failed(format!("{what}: {e}"))
        }
    }
}

/// A cuFFT error during `what` (a failed work-area allocation is out of memory).
fn fft_err(what: &str) -> impl Fn(cudarc::cufft::result::CufftError) -> DeviceError + '_ {
    move |e| {
        if e.0 == cudarc::cufft::sys::cufftResult::CUFFT_ALLOC_FAILED {
            DeviceError::OutOfMemory(what.to_string())
        } else {
            DeviceError::Failed(format!("{what}: {e:?}"))
        }
    }
}

/// `n` elements, 256 threads per block.
fn cfg_1d(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `w` columns × `h` rows (× `z`), 128 threads along x.
fn cfg_2d(w: usize, h: usize, z: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (w.div_ceil(128) as u32, h as u32, z as u32),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Views a complex slice as cuFFT's `float2` (same layout: two `f32`, real first).
fn as_float2(v: &[Complex32]) -> &[cudarc::cufft::sys::float2] {
    const _: () = assert!(
        std::mem::size_of::<Complex32>() == std::mem::size_of::<cudarc::cufft::sys::float2>()
    );
    // SAFETY: Complex<f32> is #[repr(C)] { re: f32, im: f32 }, float2 is #[repr(C)] { x, y }:
    // identical size, alignment and field order.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), v.len()) }
}

fn as_float2_mut(v: &mut [Complex32]) -> &mut [cudarc::cufft::sys::float2] {
    // SAFETY: as in as_float2.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), v.len()) }
}

/// The GPU backend (module docs).
#[derive(Debug)]
pub struct CudaBackend {
    gpu: Gpu,
    /// One command at a time on the device.
    lock: Mutex<()>,
}

impl CudaBackend {
    /// Opens GPU `device` ([`crate::backend::probe`]'s checks).
    pub fn new(device: usize) -> Result<CudaBackend, String> {
        Ok(CudaBackend {
            gpu: Gpu::open(device)?,
            lock: Mutex::new(()),
        })
    }

    /// The GPU in use.
    pub fn info(&self) -> &GpuInfo {
        &self.gpu.info
    }

    /// The device memory pool's (reserved, used) bytes once queued work has run; `None` where
    /// the device has no memory pools. Reserved minus used is what it keeps for reuse.
    pub fn pool_bytes(&self) -> Option<(u64, u64)> {
        use cudarc::driver::sys::CUmemPool_attribute as A;
        let _g = self.guard();
        let pool = self.gpu.pool.as_ref()?;
        self.gpu.stream.synchronize().ok()?;
        Some((
            pool.attribute(A::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)?,
            pool.attribute(A::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?,
        ))
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Turns a device step's error into the operation's, `needed` being the operation's
    /// estimate of its device bytes (for an out-of-memory message).
    fn error(&self, needed: usize) -> impl Fn(DeviceError) -> BackendError + '_ {
        move |e| match e {
            DeviceError::OutOfMemory(_) => BackendError::OutOfMemory {
                needed: needed as u64,
                free: self.gpu.free_bytes() as u64,
            },
            DeviceError::Failed(m) => BackendError::Gpu(m),
            DeviceError::Gain(e) => BackendError::InvalidInput(e.to_string()),
        }
    }

    /// Where a movie of geometry `g` loads: `Some(bytes)` on the device, with its estimate,
    /// or `None` on the CPU when that does not fit in the free memory. Frees a cached gain
    /// that is not this movie's, and the pool's memory when the geometry changed, first.
    fn load_placement(&self, g: &FrameGeometry<'_>) -> Result<Option<usize>, BackendError> {
        let gain_to_upload = {
            let mut cached = self.gpu.gain.lock().unwrap_or_else(|e| e.into_inner());
            if cached.as_ref().map(|c| c.id) != g.gain.map(GainRef::id) {
                *cached = None;
            }
            match g.gain {
                Some(gr) if cached.is_none() => pool::gain_bytes(gr),
                _ => 0,
            }
        };
        let needed = pool::load_bytes(g.file_nx, g.file_ny, g.nx, g.ny, gain_to_upload);
        self.gpu
            .reuse((g.file_nx, g.file_ny, g.nx, g.ny))
            .map_err(self.error(needed))?;
        Ok(self.gpu.fits(needed).then_some(needed))
    }

    /// Gain/defect correction, forward FFT and crop of a chunk of frames on the device.
    fn transform_frames(
        &self,
        frames: Vec<Vec<f32>>,
        g: &FrameGeometry<'_>,
    ) -> Result<Vec<Vec<Complex32>>, DeviceError> {
        let s = &self.gpu.stream;
        let k = &self.gpu.kernels;
        let (fnx, fny) = (g.file_nx, g.file_ny);
        // A cached gain that is not this movie's goes first, so the trim below releases it.
        let mut cached = self.gpu.gain.lock().unwrap_or_else(|e| e.into_inner());
        if cached.as_ref().map(|c| c.id) != g.gain.map(GainRef::id) {
            *cached = None;
        }
        self.gpu.reuse((fnx, fny, g.nx, g.ny))?;
        let n = fnx * fny;
        let (fnxh, nxh) = (fnx / 2 + 1, g.nx / 2 + 1);
        let device_gain = match g.gain {
            Some(gr) => self.gpu.upload_gain(&mut cached, gr)?.on_device.as_ref(),
            None => None,
        };
        let host_gain = g.gain.is_some() && device_gain.is_none();
        let forward = self.gpu.plan(fnx, fny, cufftType::CUFFT_R2C)?;
        let mut d_img = s.alloc_zeros::<f32>(n).map_err(err("GPU memory"))?;
        let mut d_spec = s
            .alloc_zeros::<cudarc::cufft::sys::float2>(fnxh * fny)
            .map_err(err("GPU memory"))?;
        let cropped = (g.nx, g.ny) != (fnx, fny);
        let mut d_crop = s
            .alloc_zeros::<cudarc::cufft::sys::float2>(if cropped { nxh * g.ny } else { 1 })
            .map_err(err("GPU memory"))?;
        let mut out = Vec::with_capacity(frames.len());
        for mut frame in frames {
            if host_gain && let Some(gr) = g.gain {
                gr.correct(&mut frame).map_err(DeviceError::Gain)?;
            }
            s.memcpy_htod(&frame, &mut d_img)
                .map_err(err("upload frame"))?;
            drop(frame);
            if let Some((d_gain, defects)) = device_gain {
                let n_i = n as i32;
                let mut b = s.launch_builder(&k.gain_multiply);
                b.arg(&mut d_img).arg(d_gain).arg(&n_i);
                // SAFETY: warp_gain_multiply(float*, const float*, int); both buffers hold n.
                unsafe { b.launch(cfg_1d(n)) }.map_err(err("warp_gain_multiply"))?;
                if let Some(d) = defects {
                    let fallback = 0.0f32; // never used: counts are all > 0 here
                    let mut b = s.launch_builder(&k.defects_fill);
                    b.arg(&mut d_img)
                        .arg(&d.targets)
                        .arg(&d.start)
                        .arg(&d.count)
                        .arg(&d.from)
                        .arg(&d.n)
                        .arg(&fallback);
                    // SAFETY: warp_defects_fill's tables have n entries and index inside the
                    // frame.
                    unsafe { b.launch(cfg_1d(d.n as usize)) }.map_err(err("warp_defects_fill"))?;
                }
            }
            forward
                .exec_r2c(&d_img, &mut d_spec)
                .map_err(fft_err("cuFFT R2C"))?;
            let mut spec = vec![Complex32::new(0.0, 0.0); nxh * g.ny];
            if cropped {
                let scale = (g.nx * g.ny) as f32 / n as f32;
                let (a, b_, c_, d_) = (fnxh as i32, fny as i32, nxh as i32, g.ny as i32);
                let mut b = s.launch_builder(&k.crop_spectrum);
                b.arg(&d_spec)
                    .arg(&a)
                    .arg(&b_)
                    .arg(&mut d_crop)
                    .arg(&c_)
                    .arg(&d_)
                    .arg(&scale);
                // SAFETY: warp_crop_spectrum reads fnxh×fny and writes nxh×ny elements.
                unsafe { b.launch(cfg_2d(nxh, g.ny, 1)) }.map_err(err("warp_crop_spectrum"))?;
                s.memcpy_dtoh(&d_crop, as_float2_mut(&mut spec))
                    .map_err(err("download"))?;
            } else {
                s.memcpy_dtoh(&d_spec, as_float2_mut(&mut spec))
                    .map_err(err("download"))?;
            }
            out.push(spec);
        }
        Ok(out)
    }

    /// The averages on the device (the request was checked: one shift per frame, a positive
    /// pixel size).
    fn accumulate_gpu(
        &self,
        movie: &Movie,
        req: &AccumulateRequest<'_>,
    ) -> Result<Sums, DeviceError> {
        let s = &self.gpu.stream;
        let k = &self.gpu.kernels;
        let (nx, ny, nf) = (movie.nx, movie.ny, movie.frames());
        let nxh = nx / 2 + 1;
        let n = nxh * ny;
        // The same radial weight table as the CPU path.
        let (table, inv_dk, n_bins) = match &req.dose {
            Some(d) => {
                let t = WeightTable::new(nx, ny, req.pixel_size_a, d, nf);
                let bins = t.bins() as i32;
                (Some(t.weights), t.inv_dk, bins)
            }
            None => (None, 0.0f64, 0),
        };
        let d_weights = match &table {
            Some(w) => Some(s.clone_htod(w).map_err(err("upload weights"))?),
            None => None,
        };
        let zeros = || {
            s.alloc_zeros::<cudarc::cufft::sys::float2>(n)
                .map_err(err("GPU memory"))
        };
        let mut avg = zeros()?;
        let mut weighted = if table.is_some() {
            Some(zeros()?)
        } else {
            None
        };
        let mut odd = if req.odd_even { Some(zeros()?) } else { None };
        let mut even = if req.odd_even { Some(zeros()?) } else { None };
        let mut d_frame = zeros()?;
        let null: u64 = 0;
        for (f, spec) in movie.spectra.iter().enumerate() {
            s.memcpy_htod(as_float2(spec), &mut d_frame)
                .map_err(err("upload spectrum"))?;
            let (sx, sy) = (req.shifts_px[f][0], req.shifts_px[f][1]);
            let (nx_i, ny_i, nf_i, f_i) = (nx as i32, ny as i32, nf as i32, f as i32);
            let px = req.pixel_size_a;
            let mut b = s.launch_builder(&k.accumulate);
            b.arg(&d_frame).arg(&nx_i).arg(&ny_i).arg(&sx).arg(&sy);
            match &d_weights {
                Some(w) => b.arg(w),
                None => b.arg(&null),
            };
            b.arg(&n_bins)
                .arg(&nf_i)
                .arg(&f_i)
                .arg(&inv_dk)
                .arg(&px)
                .arg(&mut avg);
            match &mut weighted {
                Some(w) => b.arg(w),
                None => b.arg(&null),
            };
            let half = if f % 2 == 1 { &mut odd } else { &mut even };
            match half {
                Some(h) => b.arg(h),
                None => b.arg(&null),
            };
            // SAFETY: warp_accumulate's signature, with null for absent optional buffers; every
            // buffer holds nxh·ny elements and the weight table n_bins·n_frames.
            unsafe { b.launch(cfg_2d(nxh, ny, 1)) }.map_err(err("warp_accumulate"))?;
        }
        drop(d_frame);
        let n_odd = nf / 2;
        let n_even = nf - n_odd;
        let finish = |acc: &mut CudaSlice<cudarc::cufft::sys::float2>,
                      count: usize|
         -> Result<Vec<f32>, DeviceError> {
            let scale = 1.0 / count.max(1) as f32;
            let n_i = n as i32;
            let mut b = s.launch_builder(&k.scale_spectrum);
            b.arg(&mut *acc).arg(&n_i).arg(&scale);
            // SAFETY: warp_scale_spectrum(float2*, int, float) over the n elements.
            unsafe { b.launch(cfg_1d(n)) }.map_err(err("warp_scale_spectrum"))?;
            let mut img = s.alloc_zeros::<f32>(nx * ny).map_err(err("GPU memory"))?;
            self.gpu.inverse_device(acc, &mut img, nx, ny)?;
            s.clone_dtoh(&img).map_err(err("download"))
        };
        let average = finish(&mut avg, nf)?;
        let weighted = match &mut weighted {
            Some(w) => Some(finish(w, nf)?),
            None => None,
        };
        let odd = match &mut odd {
            Some(h) => Some(finish(h, n_odd)?),
            None => None,
        };
        let even = match &mut even {
            Some(h) => Some(finish(h, n_even)?),
            None => None,
        };
        Ok(Sums {
            average,
            weighted,
            odd,
            even,
        })
    }

    /// The tiled power spectrum on the device, for the tiles `origins` of `w` px and their
    /// `taper` ([`crate::ctf_fit::tile_layout`]).
    fn power_spectrum_gpu(
        &self,
        image: &[f32],
        nx: usize,
        w: usize,
        (origins, taper): (&[(usize, usize)], &[f32]),
    ) -> Result<Spectrum, DeviceError> {
        let s = &self.gpu.stream;
        let k = &self.gpu.kernels;
        // Tile means on the host (cheap) so the kernel only subtracts.
        let means: Vec<f32> = origins
            .iter()
            .map(|&(x0, y0)| crate::ctf_fit::tile_mean(image, nx, x0, y0, w))
            .collect();
        let flat: Vec<i32> = origins
            .iter()
            .flat_map(|&(x, y)| [x as i32, y as i32])
            .collect();
        let d_img = s.clone_htod(image).map_err(err("upload"))?;
        let d_taper = s.clone_htod(taper).map_err(err("upload"))?;
        let nxh = w / 2 + 1;
        let per_tile = nxh * w;
        let mut acc = s.alloc_zeros::<f64>(per_tile).map_err(err("GPU memory"))?;
        let mut tile = s.alloc_zeros::<f32>(w * w).map_err(err("GPU memory"))?;
        let mut spec = s
            .alloc_zeros::<cudarc::cufft::sys::float2>(per_tile)
            .map_err(err("GPU memory"))?;
        let plan = self.gpu.plan(w, w, cufftType::CUFFT_R2C)?;
        let (nx_i, w_i, per_i, one) = (nx as i32, w as i32, per_tile as i32, 1i32);
        let d_origins = s.clone_htod(&flat).map_err(err("upload"))?;
        let d_means = s.clone_htod(&means).map_err(err("upload"))?;
        for t in 0..origins.len() {
            let d_origin = d_origins.slice(2 * t..2 * t + 2);
            let d_mean = d_means.slice(t..t + 1);
            let mut b = s.launch_builder(&k.tiles_prepare);
            b.arg(&d_img)
                .arg(&nx_i)
                .arg(&d_origin)
                .arg(&d_mean)
                .arg(&d_taper)
                .arg(&w_i)
                .arg(&mut tile);
            // SAFETY: one tile (z = 1) of w×w inside the image.
            unsafe { b.launch(cfg_2d(w, w, 1)) }.map_err(err("warp_tiles_prepare"))?;
            plan.exec_r2c(&tile, &mut spec)
                .map_err(fft_err("cuFFT R2C"))?;
            let mut b = s.launch_builder(&k.power_accumulate);
            b.arg(&spec).arg(&per_i).arg(&one).arg(&mut acc);
            // SAFETY: warp_power_accumulate over per_tile elements of one spectrum.
            unsafe { b.launch(cfg_1d(per_tile)) }.map_err(err("warp_power_accumulate"))?;
        }
        let acc = s.clone_dtoh(&acc).map_err(err("download"))?;
        let inv = 1.0 / origins.len() as f64;
        Ok(Spectrum {
            n: w,
            data: acc.iter().map(|&v| (v * inv) as f32).collect(),
            tiles: origins.len(),
        })
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn gpu(&self) -> Option<GpuInfo> {
        Some(self.gpu.info.clone())
    }

    fn health_check(&self) -> Result<(), BackendError> {
        let _g = self.guard();
        self.gpu.health_check().map_err(BackendError::Gpu)
    }

    fn load_movie(
        &self,
        path: &Path,
        gain: Option<&GainRef>,
        opts: &LoadOptions,
    ) -> Result<Movie, LoadError> {
        let _g = self.guard();
        let cpu = CpuFrameTransform::default();
        // Decided on the first chunk, when the geometry is known, for the whole movie.
        let placement = OnceLock::new();
        let backend_error = |error| LoadError::Backend {
            path: path.to_path_buf(),
            error,
        };
        Movie::load_with(path, gain, opts, &|frames, geometry| match placement
            .get_or_init(|| self.load_placement(geometry))
        {
            Err(e) => Err(backend_error(e.clone())),
            Ok(None) => cpu.transform(frames, geometry),
            Ok(Some(needed)) => self
                .transform_frames(frames, geometry)
                .map_err(|e| match e {
                    DeviceError::Gain(e) => LoadError::Gain(e),
                    e => backend_error(self.error(*needed)(e)),
                }),
        })
    }

    fn motion_global(
        &self,
        movie: &Movie,
        pixel_size_a: f64,
        opts: &MotionOptions,
    ) -> Result<MotionResult, BackendError> {
        check_motion(pixel_size_a, opts)?;
        let _g = self.guard();
        let (nx, ny) = (movie.nx, movie.ny);
        let setup = motion::align_setup(nx, ny, pixel_size_a, opts);
        // When the buffers do not fit, the CPU estimator gives the same result.
        let needed = pool::motion_bytes(setup.cx, setup.cy, movie.frames());
        if !self.gpu.fits(needed) {
            return CpuBackend.motion_global(movie, pixel_size_a, opts);
        }
        let cropped = motion::crop_spectra(&movie.spectra, nx, ny, setup.cx, setup.cy);
        let mut engine =
            GpuCorrelation::new(&self.gpu, &cropped, &setup).map_err(self.error(needed))?;
        drop(cropped);
        let aligned = motion::align_with(&mut engine, movie.frames(), nx, ny, &setup, opts);
        drop(engine);
        let (shifts_px, iterations, final_update_px) = aligned.map_err(self.error(needed))?;
        Ok(MotionResult::new(
            shifts_px,
            pixel_size_a,
            iterations,
            final_update_px,
        ))
    }

    fn accumulate(&self, movie: &Movie, req: &AccumulateRequest<'_>) -> Result<Sums, BackendError> {
        check_accumulate(movie, req)?;
        let _g = self.guard();
        // The CPU path makes the same averages when the buffers do not fit.
        let needed = pool::accumulate_bytes(movie.nx, movie.ny);
        if !self.gpu.fits(needed) {
            return CpuBackend.accumulate(movie, req);
        }
        self.accumulate_gpu(movie, req).map_err(self.error(needed))
    }

    fn power_spectrum(
        &self,
        image: &[f32],
        nx: usize,
        ny: usize,
        window: usize,
    ) -> Result<Spectrum, BackendError> {
        let w = crate::ctf_fit::tile_size(image.len(), nx, ny, window)
            .map_err(BackendError::InvalidInput)?;
        let _g = self.guard();
        let (origins, taper) = crate::ctf_fit::tile_layout(nx, ny, w);
        // The CPU computes the same spectrum when the image and tiles do not fit.
        let needed = pool::power_spectrum_bytes(nx, ny, w, origins.len());
        if !self.gpu.fits(needed) {
            return CpuBackend.power_spectrum(image, nx, ny, window);
        }
        self.power_spectrum_gpu(image, nx, w, (&origins, &taper))
            .map_err(self.error(needed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_ptx_holds_every_kernel_the_backend_loads() {
        assert!(
            PTX.contains(".version 7.8"),
            "PTX ISA changed: update the driver note"
        );
        for k in [
            "warp_gain_multiply",
            "warp_defects_fill",
            "warp_crop_spectrum",
            "warp_accumulate",
            "warp_scale_spectrum",
            "warp_scale_real",
            "warp_tiles_prepare",
            "warp_power_accumulate",
            "warp_shift_spectrum",
            "warp_add_spectrum",
            "warp_cc_product",
            "warp_peak_window",
        ] {
            assert!(
                PTX.contains(&format!(".entry {k}(")),
                "{k} missing from kernels/ptx/warp.ptx"
            );
        }
    }

    /// Out of memory carries the operation's estimate; other device errors keep the step and
    /// the driver's message.
    #[test]
    fn device_errors_become_backend_errors() {
        let oom = err("GPU memory")(cudarc::driver::DriverError(
            cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY,
        ));
        assert!(
            matches!(&oom, DeviceError::OutOfMemory(w) if w == "GPU memory"),
            "{oom}"
        );
        let fft = fft_err("cuFFT R2C")(cudarc::cufft::result::CufftError(
            cudarc::cufft::sys::cufftResult::CUFFT_ALLOC_FAILED,
        ));
        assert!(matches!(fft, DeviceError::OutOfMemory(_)), "{fft}");
        let exec = fft_err("cuFFT R2C")(cudarc::cufft::result::CufftError(
            cudarc::cufft::sys::cufftResult::CUFFT_EXEC_FAILED,
        ));
        assert_eq!(exec.to_string(), "cuFFT R2C: CufftError(CUFFT_EXEC_FAILED)");
    }
}

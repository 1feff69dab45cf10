//! An opened device: context, stream, the kernels of the PTX, cuFFT plans, the memory pool,
//! and the gain reference kept on the device.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cufft::{CudaFft, sys::cufftType};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, PushKernelArg};
use cudarc::nvrtc::Ptx;
use rustfft::num_complex::Complex32;

use super::pool::{MemPool, fits_in};
use super::{DeviceError, PTX, as_float2, as_float2_mut, cfg_1d, err, fft_err};
use crate::backend::GpuInfo;
use crate::gain::GainRef;

/// The kernels of the PTX, loaded.
#[derive(Debug)]
pub(super) struct Kernels {
    pub(super) gain_multiply: CudaFunction,
    pub(super) defects_fill: CudaFunction,
    pub(super) crop_spectrum: CudaFunction,
    pub(super) accumulate: CudaFunction,
    pub(super) scale_spectrum: CudaFunction,
    pub(super) scale_real: CudaFunction,
    pub(super) tiles_prepare: CudaFunction,
    pub(super) power_accumulate: CudaFunction,
    pub(super) shift_spectrum: CudaFunction,
    pub(super) add_spectrum: CudaFunction,
    pub(super) cc_product: CudaFunction,
    pub(super) peak_window: CudaFunction,
}

/// An opened device: context, stream and kernels.
pub(super) struct Gpu {
    pub(super) info: GpuInfo,
    pub(super) stream: Arc<CudaStream>,
    pub(super) kernels: Kernels,
    _module: Arc<CudaModule>,
    /// cuFFT plans by (nx, ny, is R2C).
    plans: Mutex<HashMap<(usize, usize, bool), Arc<CudaFft>>>,
    /// The device's stream-ordered memory pool, set to keep freed memory (see [`Gpu::reuse`]);
    /// `None` where the device has no memory pools (then every buffer comes from `cuMemAlloc`).
    pub(super) pool: Option<MemPool>,
    /// The frame geometry the pool's memory was last sized for.
    geometry: Mutex<Option<GeometryKey>>,
    /// The gain reference and defect tables on the device, kept across chunks and movies.
    pub(super) gain: Mutex<Option<DeviceGain>>,
}

/// A gain reference on the device ([`GainRef::id`] names which).
pub(super) struct DeviceGain {
    pub(super) id: u64,
    /// `None` when this gain is applied on the host instead: some defect's repair needs the
    /// frame's mean (rare), or the indices do not fit the kernel's `int`.
    pub(super) on_device: Option<(CudaSlice<f32>, Option<DeviceDefects>)>,
}

/// [`crate::gain::DefectTable`] on the device.
pub(super) struct DeviceDefects {
    pub(super) targets: CudaSlice<i32>,
    pub(super) start: CudaSlice<i32>,
    pub(super) count: CudaSlice<i32>,
    pub(super) from: CudaSlice<i32>,
    pub(super) n: i32,
}

/// (file width, file height, cropped width, cropped height): movies with the same key need
/// the same device buffers.
pub(super) type GeometryKey = (usize, usize, usize, usize);

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// Cached cuFFT plans at most (sizes of a session are few: frames, crop, motion grid, tiles).
const MAX_PLANS: usize = 16;

/// A driver error while opening the device, as the probe's message.
fn open_err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl Gpu {
    /// Opens GPU `device` ([`crate::backend::probe`]'s checks, in order); the error names what
    /// is missing and how to fix it.
    pub(super) fn open(device: usize) -> Result<Gpu, String> {
        // SAFETY: only tries to dlopen the library; no symbol is called.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err("no NVIDIA driver: libcuda.so could not be loaded (install the driver, or add the directory holding libcuda.so.1 to LD_LIBRARY_PATH)".into());
        }
        // SAFETY: as above.
        if !unsafe { cudarc::cufft::sys::is_culib_present() } {
            return Err("cuFFT not found: libcufft.so could not be loaded (install the CUDA libraries, e.g. `module load cuda`, or add their directory to LD_LIBRARY_PATH)".into());
        }
        cudarc::driver::result::init()
            .map_err(|e| format!("the NVIDIA driver did not initialise: {e}"))?;
        let count = CudaContext::device_count().map_err(open_err("cannot count GPUs"))?;
        if device >= count.max(0) as usize {
            return Err(format!(
                "GPU {device} does not exist: the driver sees {count} GPU(s) (-d selects one, from 0)"
            ));
        }
        let ctx = CudaContext::new(device).map_err(open_err("cannot create a CUDA context"))?;
        let name = ctx.name().map_err(open_err("cannot read the GPU name"))?;
        let memory_bytes = ctx
            .total_mem()
            .map_err(open_err("cannot read the GPU memory"))? as u64;
        let module = ctx.load_module(Ptx::from_src(PTX)).map_err(open_err(
            "the driver cannot load the kernels (they need a GPU of compute capability 7.5 or newer and a driver from CUDA 12.0 on)",
        ))?;
        let f = |n: &str| {
            module
                .load_function(n)
                .map_err(|e| format!("kernel {n} missing from the PTX: {e}"))
        };
        let kernels = Kernels {
            gain_multiply: f("warp_gain_multiply")?,
            defects_fill: f("warp_defects_fill")?,
            crop_spectrum: f("warp_crop_spectrum")?,
            accumulate: f("warp_accumulate")?,
            scale_spectrum: f("warp_scale_spectrum")?,
            scale_real: f("warp_scale_real")?,
            tiles_prepare: f("warp_tiles_prepare")?,
            power_accumulate: f("warp_power_accumulate")?,
            shift_spectrum: f("warp_shift_spectrum")?,
            add_spectrum: f("warp_add_spectrum")?,
            cc_product: f("warp_cc_product")?,
            peak_window: f("warp_peak_window")?,
        };
        let gpu = Gpu {
            info: GpuInfo {
                device,
                name,
                memory_bytes,
            },
            stream: ctx.default_stream(),
            kernels,
            _module: module,
            plans: Mutex::new(HashMap::new()),
            pool: MemPool::retain_freed(&ctx).map_err(|e| e.to_string())?,
            geometry: Mutex::new(None),
            gain: Mutex::new(None),
        };
        gpu.health_check()?;
        Ok(gpu)
    }

    /// Whether `bytes` more fit on the device ([`fits_in`]).
    /// Memory the pool keeps for reuse is in blocks of earlier sizes, which the driver does not
    /// count as free: when the request does not fit otherwise, the pool gives it back first.
    pub(super) fn fits(&self, bytes: usize) -> bool {
        if fits_in(bytes, self.free_bytes()) {
            return true;
        }
        let idle = self.pool.as_ref().map_or(0, MemPool::idle_bytes);
        idle > 0 && self.trim_pool().is_ok() && fits_in(bytes, self.free_bytes())
    }

    /// Free device memory as the driver counts it, bytes (0 when it cannot say).
    pub(super) fn free_bytes(&self) -> usize {
        self.stream.context().mem_get_info().map_or(0, |(f, _)| f)
    }

    /// Returns the memory the pool keeps but no buffer uses to the driver.
    pub(super) fn trim_pool(&self) -> Result<(), DeviceError> {
        if let Some(pool) = &self.pool {
            // Frees queued on the stream count as in use until they have run.
            self.stream.synchronize().map_err(err("synchronize"))?;
            // SAFETY: the pool is live; trimming only releases memory no buffer uses.
            unsafe { cudarc::driver::result::mem_pool::trim_to(pool.0, 0) }
                .map_err(err("cannot trim the memory pool"))?;
        }
        Ok(())
    }

    /// `gr` on the device: the cached copy when it is the same load, else uploaded (gain and
    /// defect tables) and cached in place of the previous one. Defects whose repair needs the
    /// frame's mean are rare; with any such, the gain stays on the host (the CPU path's code).
    pub(super) fn upload_gain<'c>(
        &self,
        cached: &'c mut Option<DeviceGain>,
        gr: &GainRef,
    ) -> Result<&'c DeviceGain, DeviceError> {
        if cached.as_ref().is_none_or(|c| c.id != gr.id()) {
            *cached = None; // free the old copy before uploading the new one
            let s = &self.stream;
            let on_device = match gr.defect_table() {
                Some(t) if t.count.contains(&0) => None,
                None => None,
                Some(t) => {
                    let defects = if t.targets.is_empty() {
                        None
                    } else {
                        Some(DeviceDefects {
                            targets: s.clone_htod(&t.targets).map_err(err("upload defects"))?,
                            start: s.clone_htod(&t.start).map_err(err("upload defects"))?,
                            count: s.clone_htod(&t.count).map_err(err("upload defects"))?,
                            from: s.clone_htod(&t.from).map_err(err("upload defects"))?,
                            n: t.targets.len() as i32,
                        })
                    };
                    Some((
                        s.clone_htod(gr.gain()).map_err(err("upload gain"))?,
                        defects,
                    ))
                }
            };
            *cached = Some(DeviceGain {
                id: gr.id(),
                on_device,
            });
        }
        Ok(cached.as_ref().expect("cached above"))
    }

    /// Device buffers are reused across movies of the same geometry: the pool keeps what each
    /// movie frees. When the geometry changes, the pool gives its memory back first, so a
    /// session of mixed sizes holds no more than its largest movie needs.
    pub(super) fn reuse(&self, key: GeometryKey) -> Result<(), DeviceError> {
        let mut last = self.geometry.lock().unwrap_or_else(|e| e.into_inner());
        if *last == Some(key) {
            return Ok(());
        }
        if last.is_some() {
            self.trim_pool()?;
        }
        *last = Some(key);
        Ok(())
    }

    /// A 64 × 48 FFT round trip on the device must give the input back.
    pub(super) fn health_check(&self) -> Result<(), String> {
        let (nx, ny) = (64usize, 48usize);
        let image: Vec<f32> = (0..nx * ny)
            .map(|k| ((k * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let fail = |e: DeviceError| format!("GPU health check failed: {e}");
        let spec = self.forward(&image, nx, ny).map_err(fail)?;
        let back = self.inverse(&spec, nx, ny).map_err(fail)?;
        let worst = image
            .iter()
            .zip(&back)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        if worst.is_nan() || worst >= 1e-4 {
            return Err(format!(
                "GPU health check failed: an FFT round trip differs by {worst} (expected < 1e-4)"
            ));
        }
        Ok(())
    }

    /// The cuFFT plan for `nx × ny` (R2C or C2R), cached: plans live as long as the device, so
    /// none is destroyed while a transform may still run, and none is rebuilt per movie.
    pub(super) fn plan(
        &self,
        nx: usize,
        ny: usize,
        kind: cufftType,
    ) -> Result<Arc<CudaFft>, DeviceError> {
        let r2c = matches!(kind, cufftType::CUFFT_R2C);
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = plans.get(&(nx, ny, r2c)) {
            return Ok(p.clone());
        }
        if plans.len() >= MAX_PLANS {
            // Movies of many sizes: start over rather than hold every plan's work area.
            self.stream.synchronize().map_err(err("synchronize"))?;
            plans.clear();
        }
        // cuFFT's 2D plans take the slowest dimension first.
        let plan = Arc::new(
            CudaFft::plan_2d(ny as i32, nx as i32, kind, self.stream.clone())
                .map_err(fft_err("cannot plan a cuFFT transform"))?,
        );
        plans.insert((nx, ny, r2c), plan.clone());
        Ok(plan)
    }

    /// Forward FFT of one image, on the device, returning the half-complex spectrum.
    fn forward(&self, image: &[f32], nx: usize, ny: usize) -> Result<Vec<Complex32>, DeviceError> {
        let s = &self.stream;
        let d_img = s.clone_htod(image).map_err(err("upload"))?;
        let mut d_spec = s
            .alloc_zeros::<cudarc::cufft::sys::float2>((nx / 2 + 1) * ny)
            .map_err(err("GPU memory"))?;
        self.plan(nx, ny, cufftType::CUFFT_R2C)?
            .exec_r2c(&d_img, &mut d_spec)
            .map_err(fft_err("cuFFT R2C"))?;
        let mut out = vec![Complex32::new(0.0, 0.0); (nx / 2 + 1) * ny];
        s.memcpy_dtoh(&d_spec, as_float2_mut(&mut out))
            .map_err(err("download"))?;
        Ok(out)
    }

    /// Normalised inverse FFT (as [`crate::fft::Fft2d::inverse`]).
    fn inverse(&self, spec: &[Complex32], nx: usize, ny: usize) -> Result<Vec<f32>, DeviceError> {
        let s = &self.stream;
        let mut d_spec = s.clone_htod(as_float2(spec)).map_err(err("upload"))?;
        let mut d_img = s.alloc_zeros::<f32>(nx * ny).map_err(err("GPU memory"))?;
        self.inverse_device(&mut d_spec, &mut d_img, nx, ny)?;
        s.clone_dtoh(&d_img).map_err(err("download"))
    }

    /// C2R of `spec` into `img`, scaled by 1/(nx·ny). Overwrites `spec`.
    pub(super) fn inverse_device(
        &self,
        spec: &mut CudaSlice<cudarc::cufft::sys::float2>,
        img: &mut CudaSlice<f32>,
        nx: usize,
        ny: usize,
    ) -> Result<(), DeviceError> {
        self.plan(nx, ny, cufftType::CUFFT_C2R)?
            .exec_c2r(spec, img)
            .map_err(fft_err("cuFFT C2R"))?;
        let n = (nx * ny) as i32;
        let scale = 1.0f32 / (nx * ny) as f32;
        let mut b = self.stream.launch_builder(&self.kernels.scale_real);
        b.arg(img).arg(&n).arg(&scale);
        // SAFETY: warp_scale_real(float*, int, float) with n = the buffer's length.
        unsafe { b.launch(cfg_1d(nx * ny)) }.map_err(err("warp_scale_real"))?;
        Ok(())
    }
}

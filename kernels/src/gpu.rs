//! The GPU backend: CUDA kernels (`kernels/cuda/warp.cu`, committed as PTX and embedded here)
//! and cuFFT, through cudarc with dynamic loading, so the binaries build and run on machines
//! without the CUDA toolkit or driver.
//!
//! **Probing.** cudarc panics when a library it needs cannot be loaded, so nothing here touches
//! a CUDA API before [`probe`] has checked, in order: the driver library, cuFFT, driver
//! initialisation, the device index, a context, and a health check (a small FFT round trip on
//! the device, compared with the input). Every failure is a message naming what is missing and
//! how to fix it.
//!
//! **Selection** ([`select_backend`]): `cpu`; `cuda` (fails with the probe's message); `auto`
//! (the GPU when the probe passes, else the CPU, with one line saying why).
//!
//! **What runs on the GPU so far.** [`CudaBackend`] runs the per-frame steps of `LoadStack`
//! (gain and defect correction, forward FFT, Fourier crop), the dose-weighted accumulation of
//! `MovieExportMovie`, the tiled power spectrum of `MovieProcessCTF`, and the rounds of global
//! motion estimation (phase shifts, sums, cross-power spectra, inverse FFTs and peak windows,
//! through [`motion::align_with`], which shares the rest of the estimator with the CPU) on the
//! device. Local motion (small patches) and the CTF fit itself still call the CPU code; the
//! kernel for the fit's defocus search (`warp_ctf_score_1d`) is in the PTX but not yet wired. A movie stays on the host as spectra
//! ([`Movie`]); the device holds one frame and the accumulators at a time (motion: the
//! frames' spectra cropped to the estimator's grid). When an operation's buffers do not fit in
//! the device's free memory it runs on the CPU instead, with the same result.
//!
//! **Device memory across movies.** Buffers come from the device's stream-ordered memory pool
//! (cudarc allocates with `cuMemAllocAsync`), which is told at start to keep freed memory, so
//! the next movie of the same geometry gets its buffers back from the pool without a driver
//! allocation. The pool gives its unused memory back to the driver when the geometry changes,
//! and before an operation is declared too large for the device. The gain reference and
//! its defect tables are uploaded once per `LoadGainRef` ([`GainRef::id`]) and kept on the
//! device for every chunk of every movie after.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use cudarc::cufft::{CudaFft, sys::cufftType};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use rustfft::num_complex::Complex32;

use crate::backend::{Backend, CpuBackend};
use crate::ctf_fit::Spectrum;
use crate::gain::GainRef;
use crate::motion::{self, AlignSetup, CorrelationEngine, MotionOptions, MotionResult};
use crate::movie::{
    AccumulateRequest, FrameGeometry, LoadError, LoadOptions, Movie, Sums, WeightTable,
};

/// The kernels, compiled by `scripts/build-ptx.sh` (NVRTC 11.8: PTX ISA 7.8, which drivers
/// from CUDA 11.8 on load; the binaries need CUDA 12.0, R525, for cudarc's cuFFT bindings).
pub const PTX: &str = include_str!("../ptx/warp.ptx");

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

/// Checks that the GPU `device` is usable (module docs) and describes it.
pub fn probe(device: usize) -> Result<GpuInfo, String> {
    Ok(Gpu::open(device)?.info)
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
        .and_then(CudaBackend::new);
    match (opened, choice) {
        (Ok(b), _) => {
            let line = format!(
                "backend: cuda on GPU {} ({}, {} MiB)",
                b.gpu.info.device,
                b.gpu.info.name,
                b.gpu.info.memory_bytes >> 20
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

/// The kernels of the PTX, loaded.
#[derive(Debug)]
struct Kernels {
    gain_multiply: CudaFunction,
    defects_fill: CudaFunction,
    crop_spectrum: CudaFunction,
    accumulate: CudaFunction,
    scale_spectrum: CudaFunction,
    scale_real: CudaFunction,
    tiles_prepare: CudaFunction,
    power_accumulate: CudaFunction,
    shift_spectrum: CudaFunction,
    add_spectrum: CudaFunction,
    cc_product: CudaFunction,
    peak_window: CudaFunction,
}

/// An opened device: context, stream and kernels.
struct Gpu {
    info: GpuInfo,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    _module: Arc<CudaModule>,
    /// cuFFT plans by (nx, ny, is R2C).
    plans: Mutex<HashMap<(usize, usize, bool), Arc<CudaFft>>>,
    /// The device's stream-ordered memory pool, set to keep freed memory (see [`Gpu::reuse`]);
    /// `None` where the device has no memory pools (then every buffer comes from `cuMemAlloc`).
    pool: Option<MemPool>,
    /// The frame geometry the pool's memory was last sized for.
    geometry: Mutex<Option<GeometryKey>>,
    /// The gain reference and defect tables on the device, kept across chunks and movies.
    gain: Mutex<Option<DeviceGain>>,
}

/// A gain reference on the device ([`GainRef::id`] names which).
struct DeviceGain {
    id: u64,
    /// `None` when this gain is applied on the host instead: some defect's repair needs the
    /// frame's mean (rare), or the indices do not fit the kernel's `int`.
    on_device: Option<(CudaSlice<f32>, Option<DeviceDefects>)>,
}

/// [`crate::gain::DefectTable`] on the device.
struct DeviceDefects {
    targets: CudaSlice<i32>,
    start: CudaSlice<i32>,
    count: CudaSlice<i32>,
    from: CudaSlice<i32>,
    n: i32,
}

/// (file width, file height, cropped width, cropped height): movies with the same key need
/// the same device buffers.
type GeometryKey = (usize, usize, usize, usize);

/// A device's default memory pool (a driver handle, valid while the context lives).
struct MemPool(cudarc::driver::sys::CUmemoryPool);

// SAFETY: a CUmemoryPool is a driver handle usable from any thread; every use here is under
// the backend's lock.
unsafe impl Send for MemPool {}
// SAFETY: as above.
unsafe impl Sync for MemPool {}

impl MemPool {
    /// The device's default pool, told to keep memory that is freed instead of returning it
    /// to the driver at each synchronisation: the next movie's buffers of the same sizes come
    /// from the pool without a driver allocation.
    fn retain_freed(ctx: &CudaContext) -> Result<Option<MemPool>, String> {
        use cudarc::driver::{result, sys};
        if !ctx.has_async_alloc() {
            return Ok(None);
        }
        // The device's current pool, which cuMemAllocAsync draws from. SAFETY: the device
        // handle comes from a live context.
        let pool = unsafe { result::device::get_mem_pool(ctx.cu_device()) }
            .map_err(err("cannot get the GPU's memory pool"))?;
        let mut keep = u64::MAX;
        // SAFETY: RELEASE_THRESHOLD takes a cuuint64_t.
        unsafe {
            result::mem_pool::set_attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut keep as *mut u64).cast(),
            )
        }
        .map_err(err("cannot set the memory pool's release threshold"))?;
        Ok(Some(MemPool(pool)))
    }

    fn attribute(&self, attr: cudarc::driver::sys::CUmemPool_attribute) -> Option<u64> {
        let mut v = 0u64;
        // SAFETY: the *_MEM_CURRENT attributes are cuuint64_t; the pool is live.
        unsafe {
            cudarc::driver::result::mem_pool::get_attribute(
                self.0,
                attr,
                (&mut v as *mut u64).cast(),
            )
        }
        .ok()
        .map(|()| v)
    }

    /// Bytes the pool holds but no buffer uses.
    fn idle_bytes(&self) -> u64 {
        use cudarc::driver::sys::CUmemPool_attribute as A;
        let reserved = self.attribute(A::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT);
        let used = self.attribute(A::CU_MEMPOOL_ATTR_USED_MEM_CURRENT);
        match (reserved, used) {
            (Some(r), Some(u)) => r.saturating_sub(u),
            _ => 0,
        }
    }
}

/// Whether `bytes` more fit in `free` bytes, with 10 % and 64 MiB to spare for cuFFT's work
/// areas.
fn fits_in(bytes: usize, free: usize) -> bool {
    let need = (bytes as u64)
        .saturating_add(bytes as u64 / 10)
        .saturating_add(64 << 20);
    need <= free as u64
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// Cached cuFFT plans at most (sizes of a session are few: frames, crop, motion grid, tiles).
const MAX_PLANS: usize = 16;

fn err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn fft_err(what: &str) -> impl Fn(cudarc::cufft::result::CufftError) -> String + '_ {
    move |e| format!("{what}: {e:?}")
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

impl Gpu {
    fn open(device: usize) -> Result<Gpu, String> {
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
        let count = CudaContext::device_count().map_err(err("cannot count GPUs"))?;
        if device >= count.max(0) as usize {
            return Err(format!(
                "GPU {device} does not exist: the driver sees {count} GPU(s) (-d selects one, from 0)"
            ));
        }
        let ctx = CudaContext::new(device).map_err(err("cannot create a CUDA context"))?;
        let name = ctx.name().map_err(err("cannot read the GPU name"))?;
        let memory_bytes = ctx.total_mem().map_err(err("cannot read the GPU memory"))? as u64;
        let module = ctx.load_module(Ptx::from_src(PTX)).map_err(err(
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
            pool: MemPool::retain_freed(&ctx)?,
            geometry: Mutex::new(None),
            gain: Mutex::new(None),
        };
        gpu.health_check()?;
        Ok(gpu)
    }

    /// Whether `bytes` more fit on the device ([`fits_in`]).
    /// Memory the pool keeps for reuse is in blocks of earlier sizes, which the driver does not
    /// count as free: when the request does not fit otherwise, the pool gives it back first.
    fn fits(&self, bytes: usize) -> bool {
        let free = || self.stream.context().mem_get_info().map_or(0, |(f, _)| f);
        if fits_in(bytes, free()) {
            return true;
        }
        let idle = self.pool.as_ref().map_or(0, MemPool::idle_bytes);
        idle > 0 && self.trim_pool().is_ok() && fits_in(bytes, free())
    }

    /// Returns the memory the pool keeps but no buffer uses to the driver.
    fn trim_pool(&self) -> Result<(), String> {
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
    fn upload_gain<'c>(
        &self,
        cached: &'c mut Option<DeviceGain>,
        gr: &GainRef,
    ) -> Result<&'c DeviceGain, String> {
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
    fn reuse(&self, key: GeometryKey) -> Result<(), String> {
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
    fn health_check(&self) -> Result<(), String> {
        let (nx, ny) = (64usize, 48usize);
        let image: Vec<f32> = (0..nx * ny)
            .map(|k| ((k * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let spec = self.forward(&image, nx, ny)?;
        let back = self.inverse(&spec, nx, ny)?;
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
    fn plan(&self, nx: usize, ny: usize, kind: cufftType) -> Result<Arc<CudaFft>, String> {
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
    fn forward(&self, image: &[f32], nx: usize, ny: usize) -> Result<Vec<Complex32>, String> {
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
    fn inverse(&self, spec: &[Complex32], nx: usize, ny: usize) -> Result<Vec<f32>, String> {
        let s = &self.stream;
        let mut d_spec = s.clone_htod(as_float2(spec)).map_err(err("upload"))?;
        let mut d_img = s.alloc_zeros::<f32>(nx * ny).map_err(err("GPU memory"))?;
        self.inverse_device(&mut d_spec, &mut d_img, nx, ny)?;
        s.clone_dtoh(&d_img).map_err(err("download"))
    }

    /// C2R of `spec` into `img`, scaled by 1/(nx·ny). Overwrites `spec`.
    fn inverse_device(
        &self,
        spec: &mut CudaSlice<cudarc::cufft::sys::float2>,
        img: &mut CudaSlice<f32>,
        nx: usize,
        ny: usize,
    ) -> Result<(), String> {
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

/// The GPU backend (module docs).
#[derive(Debug)]
pub struct CudaBackend {
    gpu: Gpu,
    /// One command at a time on the device.
    lock: Mutex<()>,
}

impl CudaBackend {
    /// Opens GPU `device` ([`probe`]'s checks).
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

    /// Gain/defect correction, forward FFT and crop of a chunk of frames on the device.
    fn transform_frames(
        &self,
        frames: Vec<Vec<f32>>,
        g: &FrameGeometry<'_>,
    ) -> Result<Vec<Vec<Complex32>>, String> {
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
                gr.correct(&mut frame).map_err(|e| e.to_string())?;
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

    fn accumulate_gpu(&self, movie: &Movie, req: &AccumulateRequest<'_>) -> Result<Sums, String> {
        let s = &self.gpu.stream;
        let k = &self.gpu.kernels;
        let (nx, ny, nf) = (movie.nx, movie.ny, movie.frames());
        assert_eq!(req.shifts_px.len(), nf, "accumulate: one shift per frame");
        assert!(req.pixel_size_a > 0.0, "accumulate: pixel size");
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
         -> Result<Vec<f32>, String> {
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

    fn power_spectrum_gpu(
        &self,
        image: &[f32],
        nx: usize,
        ny: usize,
        window: usize,
    ) -> Result<Spectrum, String> {
        let s = &self.gpu.stream;
        let k = &self.gpu.kernels;
        assert_eq!(image.len(), nx * ny, "power_spectrum: image length");
        let w = window.min(nx).min(ny) & !1;
        assert!(w >= 16, "power_spectrum: tile of {w} px is too small");
        let (origins, taper) = crate::ctf_fit::tile_layout(nx, ny, w);
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
        let d_taper = s.clone_htod(&taper).map_err(err("upload"))?;
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

/// The GPU [`CorrelationEngine`] of motion estimation: the cropped spectra stay on the device
/// for all rounds; each round downloads only the peak windows.
struct GpuCorrelation<'a> {
    gpu: &'a Gpu,
    setup: &'a AlignSetup,
    n_frames: usize,
    spectra: CudaSlice<cudarc::cufft::sys::float2>,
    aligned: CudaSlice<cudarc::cufft::sys::float2>,
    sum: CudaSlice<cudarc::cufft::sys::float2>,
    cc: CudaSlice<cudarc::cufft::sys::float2>,
    map: CudaSlice<f32>,
    window: CudaSlice<f32>,
    weight: CudaSlice<f32>,
    plan: Arc<CudaFft>,
    /// The first device error of a round (the trait cannot return one); checked after.
    error: Option<String>,
}

impl<'a> GpuCorrelation<'a> {
    fn new(
        gpu: &'a Gpu,
        cropped: &[Vec<Complex32>],
        setup: &'a AlignSetup,
    ) -> Result<GpuCorrelation<'a>, String> {
        let s = &gpu.stream;
        let n = (setup.cx / 2 + 1) * setup.cy;
        let flat: Vec<Complex32> = cropped.iter().flatten().copied().collect();
        let spectra = s
            .clone_htod(as_float2(&flat))
            .map_err(err("upload spectra"))?;
        drop(flat);
        let zeros = |len: usize| {
            s.alloc_zeros::<cudarc::cufft::sys::float2>(len)
                .map_err(err("GPU memory"))
        };
        Ok(GpuCorrelation {
            gpu,
            setup,
            n_frames: cropped.len(),
            spectra,
            aligned: zeros(n * cropped.len())?,
            sum: zeros(n)?,
            cc: zeros(n)?,
            map: s
                .alloc_zeros::<f32>(setup.cx * setup.cy)
                .map_err(err("GPU memory"))?,
            window: s
                .alloc_zeros::<f32>((2 * setup.hx + 1) * (2 * setup.hy + 1))
                .map_err(err("GPU memory"))?,
            weight: s.clone_htod(&setup.weight).map_err(err("upload weight"))?,
            plan: gpu.plan(setup.cx, setup.cy, cufftType::CUFFT_C2R)?,
            error: None,
        })
    }

    fn try_round(&mut self, shifts: &[[f64; 2]]) -> Result<Vec<Vec<f32>>, String> {
        let s = &self.gpu.stream;
        let k = &self.gpu.kernels;
        let (cx, cy) = (self.setup.cx, self.setup.cy);
        let cxh = cx / 2 + 1;
        let n = cxh * cy;
        let (cx_i, cy_i, n_i) = (cx as i32, cy as i32, n as i32);
        s.memcpy_dtod(&self.spectra, &mut self.aligned)
            .map_err(err("copy spectra"))?;
        s.memset_zeros(&mut self.sum).map_err(err("clear"))?;
        for (f, sh) in shifts.iter().enumerate().take(self.n_frames) {
            let mut a = self.aligned.slice_mut(f * n..(f + 1) * n);
            let (dx, dy) = (-sh[0] as f32, -sh[1] as f32);
            let mut b = s.launch_builder(&k.shift_spectrum);
            b.arg(&mut a).arg(&cx_i).arg(&cy_i).arg(&dx).arg(&dy);
            // SAFETY: warp_shift_spectrum over one cxh×cy spectrum.
            unsafe { b.launch(cfg_2d(cxh, cy, 1)) }.map_err(err("warp_shift_spectrum"))?;
            let mut b = s.launch_builder(&k.add_spectrum);
            b.arg(&mut self.sum).arg(&mut a).arg(&n_i);
            // SAFETY: warp_add_spectrum over n elements of both.
            unsafe { b.launch(cfg_1d(n)) }.map_err(err("warp_add_spectrum"))?;
        }
        let (hx, hy) = (self.setup.hx as i32, self.setup.hy as i32);
        let (wx, wy) = (2 * self.setup.hx + 1, 2 * self.setup.hy + 1);
        let mut windows = Vec::with_capacity(self.n_frames);
        for f in 0..self.n_frames {
            let a = self.aligned.slice(f * n..(f + 1) * n);
            let mut b = s.launch_builder(&k.cc_product);
            b.arg(&a)
                .arg(&self.sum)
                .arg(&self.weight)
                .arg(&mut self.cc)
                .arg(&n_i);
            // SAFETY: warp_cc_product over n elements of each buffer.
            unsafe { b.launch(cfg_1d(n)) }.map_err(err("warp_cc_product"))?;
            self.plan
                .exec_c2r(&mut self.cc, &mut self.map)
                .map_err(fft_err("cuFFT C2R"))?;
            let mut b = s.launch_builder(&k.peak_window);
            b.arg(&self.map)
                .arg(&cx_i)
                .arg(&cy_i)
                .arg(&hx)
                .arg(&hy)
                .arg(&mut self.window);
            // SAFETY: warp_peak_window writes wx×wy values, reads inside the cx×cy map.
            unsafe { b.launch(cfg_2d(wx, wy, 1)) }.map_err(err("warp_peak_window"))?;
            windows.push(s.clone_dtoh(&self.window).map_err(err("download"))?);
        }
        Ok(windows)
    }
}

impl CorrelationEngine for GpuCorrelation<'_> {
    fn round(&mut self, shifts: &[[f64; 2]]) -> Vec<Vec<f32>> {
        match self.try_round(shifts) {
            Ok(w) => w,
            Err(e) => {
                // Flat windows: the estimator sees no update and stops; the caller panics
                // with the error afterwards.
                self.error.get_or_insert(e);
                let len = (2 * self.setup.hx + 1) * (2 * self.setup.hy + 1);
                vec![vec![0.0; len]; self.n_frames]
            }
        }
    }
}

/// Panics inside the backend are turned into errors by the worker; GPU errors are raised as
/// panics with the message, since the `Backend` methods do not return `Result` for the
/// operations that cannot fail on the CPU.
fn or_panic<T>(r: Result<T, String>) -> T {
    r.unwrap_or_else(|e| panic!("GPU error: {e}"))
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn gpu(&self) -> Option<GpuInfo> {
        Some(self.gpu.info.clone())
    }

    fn health_check(&self) -> Result<(), String> {
        let _g = self.guard();
        self.gpu.health_check()
    }

    fn load_movie(
        &self,
        path: &Path,
        gain: Option<&GainRef>,
        opts: &LoadOptions,
    ) -> Result<Movie, LoadError> {
        let _g = self.guard();
        Movie::load_with(path, gain, opts, &|frames, geometry| {
            self.transform_frames(frames, geometry)
                .map_err(|reason| LoadError::Invalid {
                    path: path.to_path_buf(),
                    reason,
                })
        })
    }

    fn motion_global(
        &self,
        movie: &Movie,
        pixel_size_a: f64,
        opts: &MotionOptions,
    ) -> MotionResult {
        let _g = self.guard();
        let (nx, ny) = (movie.nx, movie.ny);
        let setup = motion::align_setup(nx, ny, pixel_size_a, opts);
        // The cropped spectra twice (as loaded and shifted) and a few single buffers: when
        // that does not fit, the CPU estimator gives the same result.
        let n = (setup.cx / 2 + 1) * setup.cy;
        if !self
            .gpu
            .fits(8 * n * (2 * movie.frames() + 2) + 8 * setup.cx * setup.cy)
        {
            return CpuBackend.motion_global(movie, pixel_size_a, opts);
        }
        let cropped = motion::crop_spectra(&movie.spectra, nx, ny, setup.cx, setup.cy);
        let mut engine = or_panic(GpuCorrelation::new(&self.gpu, &cropped, &setup));
        drop(cropped);
        let (shifts_px, iterations, final_update_px) =
            motion::align_with(&mut engine, movie.frames(), nx, ny, &setup, opts);
        // Drop the engine's device buffers before any panic, so unwinding frees nothing.
        let error = engine.error.take();
        drop(engine);
        if let Some(e) = error {
            panic!("GPU error: {e}");
        }
        MotionResult::new(shifts_px, pixel_size_a, iterations, final_update_px)
    }

    fn accumulate(&self, movie: &Movie, req: &AccumulateRequest<'_>) -> Sums {
        let _g = self.guard();
        // Up to four accumulators, one frame and one image on the device; the CPU path makes
        // the same averages when they do not fit.
        let n = (movie.nx / 2 + 1) * movie.ny;
        if !self.gpu.fits(8 * n * 5 + 4 * movie.nx * movie.ny) {
            return CpuBackend.accumulate(movie, req);
        }
        or_panic(self.accumulate_gpu(movie, req))
    }

    fn power_spectrum(&self, image: &[f32], nx: usize, ny: usize, window: usize) -> Spectrum {
        let _g = self.guard();
        or_panic(self.power_spectrum_gpu(image, nx, ny, window))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_needs_a_tenth_and_64_mib_to_spare() {
        let mib = 1usize << 20;
        // 1 GiB needs 1.1 GiB + 64 MiB of headroom.
        assert!(!fits_in(1024 * mib, 1190 * mib));
        assert!(fits_in(1024 * mib, 1191 * mib));
        assert!(!fits_in(usize::MAX, usize::MAX / 2));
    }

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
}

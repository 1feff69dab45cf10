//! Device memory: the stream-ordered memory pool kept across movies ([`MemPool`]), what each
//! operation allocates on the device (`*_bytes`, pure functions of the sizes), and the decision
//! whether that fits in the free memory ([`fits_in`]); an operation that does not fit runs on
//! the CPU instead.

use cudarc::driver::CudaContext;

use super::DeviceError;
use crate::gain::GainRef;

/// A device's default memory pool (a driver handle, valid while the context lives).
pub(super) struct MemPool(pub(super) cudarc::driver::sys::CUmemoryPool);

// SAFETY: a CUmemoryPool is a driver handle usable from any thread; every use here is under
// the backend's lock.
unsafe impl Send for MemPool {}
// SAFETY: as above.
unsafe impl Sync for MemPool {}

impl MemPool {
    /// The device's default pool, told to keep memory that is freed instead of returning it
    /// to the driver at each synchronisation: the next movie's buffers of the same sizes come
    /// from the pool without a driver allocation.
    pub(super) fn retain_freed(ctx: &CudaContext) -> Result<Option<MemPool>, DeviceError> {
        use cudarc::driver::{result, sys};
        if !ctx.has_async_alloc() {
            return Ok(None);
        }
        // The device's current pool, which cuMemAllocAsync draws from. SAFETY: the device
        // handle comes from a live context.
        let pool = unsafe { result::device::get_mem_pool(ctx.cu_device()) }
            .map_err(super::err("cannot get the GPU's memory pool"))?;
        let mut keep = u64::MAX;
        // SAFETY: RELEASE_THRESHOLD takes a cuuint64_t.
        unsafe {
            result::mem_pool::set_attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut keep as *mut u64).cast(),
            )
        }
        .map_err(super::err("cannot set the memory pool's release threshold"))?;
        Ok(Some(MemPool(pool)))
    }

    pub(super) fn attribute(&self, attr: cudarc::driver::sys::CUmemPool_attribute) -> Option<u64> {
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
    pub(super) fn idle_bytes(&self) -> u64 {
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
/// areas and the estimates' slack.
pub(super) fn fits_in(bytes: usize, free: usize) -> bool {
    let need = (bytes as u64)
        .saturating_add(bytes as u64 / 10)
        .saturating_add(64 << 20);
    need <= free as u64
}

/// Bytes of complex values (`float2`) in a half-complex spectrum of `nx × ny`.
fn spectrum_bytes(nx: usize, ny: usize) -> usize {
    8 * (nx / 2 + 1) * ny
}

/// Device bytes a load of `file_nx × file_ny` frames cropped to `nx × ny` allocates: one frame
/// (the device holds one at a time, so the number of frames does not count), its spectrum, the
/// cuFFT work area of the full-size transform (at most the spectrum's size), the cropped
/// spectrum, and `gain_bytes` for a gain reference still to be uploaded ([`gain_bytes`]).
pub(super) fn load_bytes(
    file_nx: usize,
    file_ny: usize,
    nx: usize,
    ny: usize,
    gain_bytes: usize,
) -> usize {
    let crop = if (nx, ny) == (file_nx, file_ny) {
        8
    } else {
        spectrum_bytes(nx, ny)
    };
    4 * file_nx * file_ny + 2 * spectrum_bytes(file_nx, file_ny) + crop + gain_bytes
}

/// Device bytes of `gain` and its defect tables.
pub(super) fn gain_bytes(gain: &GainRef) -> usize {
    let tables = gain.defect_table().map_or(0, |t| {
        t.targets.len() + t.start.len() + t.count.len() + t.from.len()
    });
    4 * (gain.gain().len() + tables)
}

/// Device bytes of the tiled power spectrum of an `nx × ny` image in `tiles` tiles of `w` px:
/// the image, the taper, the f64 accumulator, one tile, its spectrum and the cuFFT work area,
/// and the tiles' origins and means.
pub(super) fn power_spectrum_bytes(nx: usize, ny: usize, w: usize, tiles: usize) -> usize {
    let per_tile = (w / 2 + 1) * w;
    4 * nx * ny + 4 * w + 8 * per_tile + 4 * w * w + 2 * 8 * per_tile + 12 * tiles
}

/// Device bytes of global motion on a `cx × cy` working grid of `frames` frames: the cropped
/// spectra twice (as loaded and shifted), the sum and the cross-power spectrum, the map and
/// the inverse transform's work area.
pub(super) fn motion_bytes(cx: usize, cy: usize, frames: usize) -> usize {
    spectrum_bytes(cx, cy) * (2 * frames + 2) + 8 * cx * cy
}

/// Device bytes of the averages of `nx × ny` frames: up to four accumulators and one frame
/// (spectra), and one image.
pub(super) fn accumulate_bytes(nx: usize, ny: usize) -> usize {
    spectrum_bytes(nx, ny) * 5 + 4 * nx * ny
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;
    const GIB: usize = 1 << 30;

    #[test]
    fn a_request_needs_a_tenth_and_64_mib_to_spare() {
        // 1 GiB needs 1.1 GiB + 64 MiB of headroom.
        assert!(!fits_in(1024 * MIB, 1190 * MIB));
        assert!(fits_in(1024 * MIB, 1191 * MIB));
        assert!(!fits_in(usize::MAX, usize::MAX / 2));
    }

    /// The load estimate is one frame, its spectrum and the FFT's work area, the crop, and the
    /// gain; it does not grow with the number of frames (one frame is on the device at a time).
    #[test]
    fn the_load_estimate_counts_one_frame_its_spectrum_the_crop_and_the_gain() {
        let (nx, ny) = (4096, 4096);
        let frame = 4 * nx * ny;
        let spectrum = 8 * (nx / 2 + 1) * ny;
        assert_eq!(load_bytes(nx, ny, nx, ny, 0), frame + 2 * spectrum + 8);
        let half = 8 * (2048 / 2 + 1) * 2048;
        assert_eq!(
            load_bytes(nx, ny, 2048, 2048, frame),
            2 * frame + 2 * spectrum + half
        );
    }

    /// Regression: `CudaBackend::load_movie` and `power_spectrum` never compared their device
    /// memory with the free memory. A K3 super-resolution frame (11520 × 8184) with its gain
    /// needs about 1.5 GiB: on a device with 1 GiB free the load goes to the CPU, with 4 GiB it
    /// stays on the GPU. Likewise a power spectrum of that size.
    #[test]
    fn a_load_or_spectrum_that_does_not_fit_goes_to_the_cpu() {
        let (nx, ny) = (11520, 8184);
        let need = load_bytes(nx, ny, nx, ny, 4 * nx * ny);
        assert!(need > 1400 * MIB && need < 1600 * MIB, "{need}");
        assert!(!fits_in(need, GIB), "1 GiB free: the CPU loads");
        assert!(fits_in(need, 4 * GIB), "4 GiB free: the GPU loads");
        // The same movie Fourier-cropped by half needs less, but still the full-size frame.
        let cropped = load_bytes(nx, ny, nx / 2, ny / 2, 0);
        assert!(cropped < need && cropped > 4 * nx * ny, "{cropped}");

        let (w, tiles) = (512, 43 * 30);
        let spec = power_spectrum_bytes(nx, ny, w, tiles);
        assert!(spec > 4 * nx * ny && spec < 4 * nx * ny + 8 * MIB, "{spec}");
        assert!(
            !fits_in(spec, 400 * MIB),
            "400 MiB free: the CPU computes it"
        );
        assert!(fits_in(spec, GIB));
    }

    #[test]
    fn motion_and_averages_estimates_keep_their_sizes() {
        // 2 × 24 cropped spectra, sum, cross-power; map and work area.
        let n = 8 * (512 / 2 + 1) * 512;
        assert_eq!(motion_bytes(512, 512, 24), n * 50 + 8 * 512 * 512);
        let m = 8 * (4096 / 2 + 1) * 4096;
        assert_eq!(accumulate_bytes(4096, 4096), 5 * m + 4 * 4096 * 4096);
    }
}

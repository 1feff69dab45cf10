//! The GPU [`CorrelationEngine`] of global motion: the rounds of [`crate::motion::align_with`]
//! (phase shifts, sums, cross-power spectra, inverse FFTs and peak windows) on the device.

use std::sync::Arc;

use cudarc::cufft::{CudaFft, sys::cufftType};
use cudarc::driver::{CudaSlice, PushKernelArg};
use rustfft::num_complex::Complex32;

use super::device::Gpu;
use super::{DeviceError, as_float2, as_float2_mut, cfg_1d, cfg_2d, err, fft_err};
use crate::motion::{AlignSetup, CorrelationEngine};

/// The GPU [`CorrelationEngine`] of motion estimation: the cropped spectra stay on the device
/// for all rounds; each round downloads only the peak windows.
pub(super) struct GpuCorrelation<'a> {
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
}

impl<'a> GpuCorrelation<'a> {
    /// Uploads `cropped` (the frames' spectra on the setup's working grid) and allocates the
    /// buffers of a round.
    pub(super) fn new(
        gpu: &'a Gpu,
        cropped: &[Vec<Complex32>],
        setup: &'a AlignSetup,
    ) -> Result<GpuCorrelation<'a>, DeviceError> {
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
        })
    }

    fn try_round(&mut self, shifts: &[[f64; 2]]) -> Result<Vec<Vec<f32>>, DeviceError> {
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
    type Error = DeviceError;

    fn round(&mut self, shifts: &[[f64; 2]]) -> Result<Vec<Vec<f32>>, DeviceError> {
        self.try_round(shifts)
    }

    /// As the CPU engine's, on the host: the round's aligned spectra and their sum are
    /// downloaded (frames × spectrum, e.g. 27 MB for 40 frames of a 4k movie) and
    /// [`crate::motion::shift_variance`] runs over them.
    fn shift_variances(
        &mut self,
        deltas: &[[f64; 2]],
    ) -> Result<Option<Vec<[f64; 2]>>, DeviceError> {
        use rayon::prelude::*;
        let s = &self.gpu.stream;
        let (cx, cy) = (self.setup.cx, self.setup.cy);
        let n = (cx / 2 + 1) * cy;
        let mut aligned = vec![Complex32::new(0.0, 0.0); n * self.n_frames];
        let mut sum = vec![Complex32::new(0.0, 0.0); n];
        s.memcpy_dtoh(&self.aligned, as_float2_mut(&mut aligned))
            .map_err(err("download"))?;
        s.memcpy_dtoh(&self.sum, as_float2_mut(&mut sum))
            .map_err(err("download"))?;
        let weight = &self.setup.weight;
        Ok(Some(
            aligned
                .par_chunks(n)
                .zip(deltas)
                .map(|(a, d)| crate::motion::shift_variance(a, &sum, weight, cx, cy, *d))
                .collect(),
        ))
    }
}

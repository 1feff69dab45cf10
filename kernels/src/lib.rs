//! Compute side of warp: file formats, the preprocessing algorithms and the compute backend.
//!
//! * [`io`]: MRC, TIFF movies, PNG and STAR files.
//! * [`gain`]: gain references and defect maps.
//! * [`fft`]: 2D real FFTs, phase-ramp shifts, Fourier cropping.
//! * [`movie`]: a movie held as its frames' spectra, and its aligned (dose-weighted) averages.
//! * [`motion`]: global and local motion estimation.
//! * [`ctf`], [`ctf_fit`]: the CTF model and its estimation from a power spectrum.
//! * [`dose`]: exposure weighting.
//! * [`memory`]: how much host memory the process may still use (a movie too big is refused).
//! * [`thumbnail`]: 8-bit previews.
//! * [`backend`]: the `Backend` trait the worker calls, its errors, probing and selection; the
//!   CPU implementation and the CUDA one ([`backend::cuda`]: PTX kernels, cuFFT, dynamic
//!   loading).
//! * [`sim`]: synthetic movies with known motion and CTF.
//!
//! It knows nothing of the network: no sockets, no HTTP, no controller or worker types. The
//! worker calls into it; it never calls out.

pub mod backend;
pub mod ctf;
pub mod ctf_fit;
pub mod dose;
pub mod fft;
pub mod gain;
pub mod io;
pub mod memory;
pub mod motion;
pub mod movie;
pub mod sim;
pub mod smooth;
pub mod spectrum_image;
pub mod thumbnail;

#[cfg(test)]
mod test_util;

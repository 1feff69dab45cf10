//! Compute side of warp: file formats and, later, the preprocessing kernels.
//!
//! This crate owns the file formats the preprocessing reads and writes (MRC now; TIFF and PNG
//! output later) and, in time, the `Backend` trait with its CPU and CUDA implementations, the
//! preprocessing algorithms and the synthetic data generator.
//!
//! It knows nothing of the network: no sockets, no HTTP, no controller or worker types. The
//! worker calls into it; it never calls out.

pub mod ctf;
pub mod ctf_fit;
pub mod dose;
pub mod fft;
pub mod gain;
pub mod io;
pub mod motion;
pub mod sim;

#[cfg(test)]
mod test_util;

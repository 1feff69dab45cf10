//! The CPU backend: the [`Backend`] trait's defaults, which call the reference code of each
//! operation (rayon and rustfft/realfft).

use super::Backend;

/// The CPU backend: the trait's defaults (rayon and rustfft/realfft). Its operations fail only
/// on an invalid request.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuBackend;

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }
}

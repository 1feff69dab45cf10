//! File formats.
//!
//! - [`mrc`]: MRC2014 images, stacks and volumes (read modes 0, 1, 2, 6, 12, 101; write float32,
//!   float16, int16).
//! - [`atomic`]: writing a file through a temporary and a rename (every writer here uses it).
//! - [`f16`]: IEEE 754 binary16 conversion used by MRC mode 12.
//! - [`tiff`]: multi-page TIFF movies, and [`tiff::open_movie`] for either format.
//! - [`eer`]: EER movies (electron events in a TIFF), rendered into fractions.
//! - [`png`]: 8-bit grayscale PNG (thumbnails).
//! - [`star`]: STAR tables (RELION).

pub mod atomic;
pub mod eer;
pub mod f16;
pub mod mrc;
pub mod png;
pub mod star;
pub mod tiff;

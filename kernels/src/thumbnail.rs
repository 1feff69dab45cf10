//! 8-bit thumbnails of micrographs, after Warp's `Movie.CreateThumbnail`.
//!
//! [`thumbnail`] makes the longer side of the image `size` pixels (never enlarging: an image
//! already that small keeps its size), keeps the aspect ratio, and maps
//! `mean ± range_sigma · std` of the downsampled image linearly onto 0..=255, clamping outside.
//!
//! # Downsampling
//!
//! Area averaging over the exact footprint: output pixel `(ox, oy)` covers the input rectangle
//! `[ox·sx, (ox+1)·sx) × [oy·sy, (oy+1)·sy)`, with `sx = nx / out_nx` and `sy = ny / out_ny`
//! (both ≥ 1), and is the mean of the input over it, each input pixel weighted by the area it
//! shares with the rectangle. Because the weights are products of one-dimensional overlaps this
//! is done as two one-dimensional passes (along x for every input row, then along y for every
//! output row), each parallel over rows with rayon, accumulating in `f64`. It is a box filter:
//! cheap, no ringing, exact for any ratio (no integer-block-then-interpolate approximation), and
//! a constant region stays exactly constant.
//!
//! # Differences from Warp
//!
//! Warp rescales in Fourier space to even dimensions, takes the *median* and standard
//! deviation of the central half of the rescaled image, and does enlarge small images. Here the
//! statistics are the mean and standard deviation of the whole downsampled image, dimensions are
//! rounded to the nearest integer, and images are never enlarged.
//!
//! Non-finite input pixels (NaN, ±∞) are replaced by the mean of the finite ones before anything
//! else (0 when there are none). An image whose downsampled values are all equal (standard
//! deviation at most 10⁻⁹ of the largest magnitude, i.e. equal up to rounding) maps to 128
//! everywhere. Row 0 of the input is row 0 of the output: flipping for display is the caller's
//! business.

use std::fmt;

use rayon::prelude::*;

/// Grey value of the mean, and of every pixel of a constant image.
pub const MID_GREY: u8 = 128;

/// Arguments [`thumbnail`] cannot work with.
#[derive(Debug, Clone, PartialEq)]
pub enum ThumbnailError {
    /// `size` was 0.
    ZeroSize,
    /// `range_sigma` was not a positive finite number.
    BadRange(f32),
    /// `nx` or `ny` was 0, or `image.len()` was not `nx * ny`.
    BadDimensions { nx: usize, ny: usize, len: usize },
}

impl fmt::Display for ThumbnailError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ThumbnailError::ZeroSize => write!(f, "thumbnail size must be at least 1 pixel"),
            ThumbnailError::BadRange(r) => write!(
                f,
                "thumbnail range {r} is not a positive number of standard deviations"
            ),
            ThumbnailError::BadDimensions { nx, ny, len } => write!(
                f,
                "thumbnail of a {nx}x{ny} image given {len} pixels (need nx, ny ≥ 1 and nx·ny pixels)"
            ),
        }
    }
}

impl std::error::Error for ThumbnailError {}

/// The thumbnail dimensions for an `nx` × `ny` image: the longer side becomes `size` and the
/// shorter one is scaled by the same factor, rounded to the nearest integer and at least 1;
/// when `size` is at least the longer side the image keeps its size. (`size` 0, which
/// [`thumbnail`] refuses, gives `(1, 1)` here.)
pub fn thumbnail_dims(nx: usize, ny: usize, size: usize) -> (usize, usize) {
    let long = nx.max(ny);
    if size >= long {
        return (nx, ny);
    }
    // Integer arithmetic in u128: exact, and no overflow for any usize inputs.
    let scale = |n: usize| -> usize {
        let v = (n as u128 * size as u128 + long as u128 / 2) / long as u128;
        (v as usize).max(1)
    };
    (scale(nx), scale(ny))
}

/// An 8-bit thumbnail of `image` (`nx * ny` values, x fastest): `(pixels, width, height)`.
///
/// The longer side becomes `size` pixels (see [`thumbnail_dims`]); the image is area-averaged
/// down, then `mean - range_sigma·std` maps to 0 and `mean + range_sigma·std` to 255 (rounded,
/// clamped), statistics over the downsampled image. See the module documentation for details.
///
/// Errors: `size` 0, `range_sigma` not positive and finite, `nx` or `ny` 0, or
/// `image.len() != nx * ny`.
pub fn thumbnail(
    image: &[f32],
    nx: usize,
    ny: usize,
    size: usize,
    range_sigma: f32,
) -> Result<(Vec<u8>, usize, usize), ThumbnailError> {
    if size == 0 {
        return Err(ThumbnailError::ZeroSize);
    }
    if !(range_sigma.is_finite() && range_sigma > 0.0) {
        return Err(ThumbnailError::BadRange(range_sigma));
    }
    if nx == 0 || ny == 0 || nx.checked_mul(ny) != Some(image.len()) {
        return Err(ThumbnailError::BadDimensions {
            nx,
            ny,
            len: image.len(),
        });
    }

    let (ox, oy) = thumbnail_dims(nx, ny, size);
    let small = downsample(image, nx, ny, ox, oy);

    let n = small.len() as f64;
    let mean = small.par_iter().sum::<f64>() / n;
    let var = small
        .par_iter()
        .map(|v| (v - mean) * (v - mean))
        .sum::<f64>()
        / n;
    let std = var.sqrt();
    let largest = small.par_iter().map(|v| v.abs()).reduce(|| 0.0, f64::max);
    // The values are finite, so `std` is too.
    if std <= 1e-9 * largest {
        return Ok((vec![MID_GREY; small.len()], ox, oy));
    }

    let lo = mean - f64::from(range_sigma) * std;
    let gain = 255.0 / (2.0 * f64::from(range_sigma) * std);
    let pixels = small
        .par_iter()
        .map(|&v| ((v - lo) * gain).round().clamp(0.0, 255.0) as u8)
        .collect();
    Ok((pixels, ox, oy))
}

/// The contributions to each output sample of a one-dimensional area average from `n_in`
/// samples down to `n_out` (`n_out ≤ n_in`): for each output, the first input index and the
/// weights of consecutive inputs from there, summing to 1.
fn footprints(n_in: usize, n_out: usize) -> Vec<(usize, Vec<f64>)> {
    let scale = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|o| {
            let lo = o as f64 * scale;
            let hi = if o + 1 == n_out {
                n_in as f64
            } else {
                (o + 1) as f64 * scale
            };
            let first = (lo.floor() as usize).min(n_in - 1);
            let last = (hi.ceil() as usize).clamp(first + 1, n_in);
            let mut weights: Vec<f64> = (first..last)
                .map(|i| ((i + 1) as f64).min(hi) - (i as f64).max(lo))
                .map(|w| w.max(0.0))
                .collect();
            let total: f64 = weights.iter().sum();
            weights.iter_mut().for_each(|w| *w /= total);
            (first, weights)
        })
        .collect()
}

/// Area-averages `image` (`nx * ny`, x fastest) down to `ox * oy` in `f64`, non-finite pixels
/// replaced by the mean of the finite ones.
fn downsample(image: &[f32], nx: usize, ny: usize, ox: usize, oy: usize) -> Vec<f64> {
    let (sum, count) = image
        .par_chunks(1 << 16)
        .map(|c| {
            c.iter()
                .filter(|v| v.is_finite())
                .fold((0.0f64, 0usize), |(s, k), &v| (s + f64::from(v), k + 1))
        })
        .reduce(|| (0.0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let fill = if count > 0 { sum / count as f64 } else { 0.0 };
    let value = |v: f32| {
        if v.is_finite() { f64::from(v) } else { fill }
    };

    let fx = footprints(nx, ox);
    let fy = footprints(ny, oy);

    // Pass 1: along x, every input row -> ny rows of ox.
    let mut rows = vec![0.0f64; ny * ox];
    rows.par_chunks_mut(ox)
        .zip(image.par_chunks(nx))
        .for_each(|(out, row)| {
            for (o, (first, weights)) in out.iter_mut().zip(&fx) {
                *o = weights
                    .iter()
                    .zip(&row[*first..])
                    .map(|(w, &v)| w * value(v))
                    .sum();
            }
        });

    // Pass 2: along y, every output row.
    let mut out = vec![0.0f64; oy * ox];
    out.par_chunks_mut(ox)
        .zip(fy.par_iter())
        .for_each(|(out_row, (first, weights))| {
            for (j, w) in weights.iter().enumerate() {
                let src = &rows[(first + j) * ox..(first + j + 1) * ox];
                for (o, s) in out_row.iter_mut().zip(src) {
                    *o += w * s;
                }
            }
        });
    out
}

#[cfg(test)]
#[path = "thumbnail_tests.rs"]
mod tests;

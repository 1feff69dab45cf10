//! Gain reference and defect map: loading, orientation, normalisation, and per-frame correction.
//!
//! [`GainRef::load`] reads a gain reference from an MRC file (one section) or a TIFF file (one
//! page), told apart by the file's signature rather than its extension (EPU's `.gain` files are
//! TIFFs). It then:
//!
//! 1. orients it: flip in x (column `x` → `width − 1 − x`), then flip in y (row `y` →
//!    `height − 1 − y`), then transpose (pixel `(x, y)` → `(y, x)`; width and height swap).
//!    This is Warp's order: `DataSource.LoadAndPrepareGainReference` in warpem/warp
//!    (`WarpLib/Sociology/DataSource.cs`) applies `AsFlippedX`, then `AsFlippedY`, then
//!    `AsTransposed`;
//! 2. normalises it: divides by the mean of its nonzero, finite pixels, and sets zero and
//!    non-finite pixels to 1 (they then leave the movie unchanged). Warp divides by the mean
//!    of all pixels, zeros included; the two agree for a reference without zeros.
//!
//! A defect map is an image of the camera's size (MRC or TIFF) where a nonzero pixel marks a
//! defect. It is oriented exactly as the gain reference (same flips and transpose), since both
//! come from the camera in the same orientation, and must have the gain reference's size.
//!
//! [`GainRef::correct`] multiplies a frame by the gain, then replaces each defect pixel by the
//! mean of the non-defect pixels of the smallest square window around it, 3×3 then 5×5, that
//! holds any, or failing both by the mean of the frame's non-defect pixels. Which pixels each
//! defect takes its value from is worked out once, at load.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::io::mrc::{MrcError, MrcReader};
use crate::io::tiff::{TiffError, TiffReader, is_tiff};

/// Half-width of the largest window searched for non-defect neighbours (2: 5×5).
pub const MAX_DEFECT_RADIUS: usize = 2;

/// Everything that can go wrong loading or applying a gain reference; each names the file(s).
#[derive(Debug)]
pub enum GainError {
    /// From the MRC reader.
    Mrc(MrcError),
    /// From the TIFF reader.
    Tiff(TiffError),
    /// A gain reference or defect map with more than one section or page.
    NotSingleImage { path: PathBuf, images: usize },
    /// A gain reference without a single nonzero finite pixel.
    NoSignal { path: PathBuf },
    /// A defect map whose size differs from the gain reference's (sizes as stored on disk).
    DefectsSizeMismatch {
        gain: PathBuf,
        gain_size: (usize, usize),
        defects: PathBuf,
        defects_size: (usize, usize),
    },
    /// A movie whose frame size differs from the (oriented) gain reference's.
    MovieSizeMismatch {
        gain: PathBuf,
        gain_size: (usize, usize),
        movie: PathBuf,
        movie_size: (usize, usize),
    },
    /// A frame handed to [`GainRef::correct`] with the wrong number of pixels.
    FrameLength {
        gain: PathBuf,
        expected: usize,
        actual: usize,
    },
}

impl GainError {
    /// Whether reading a file failed rather than its content being wrong.
    pub fn is_io(&self) -> bool {
        match self {
            GainError::Mrc(e) => e.is_io(),
            GainError::Tiff(e) => e.is_io(),
            _ => false,
        }
    }
}

impl fmt::Display for GainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let size = |s: &(usize, usize)| format!("{}x{}", s.0, s.1);
        match self {
            GainError::Mrc(e) => e.fmt(f),
            GainError::Tiff(e) => e.fmt(f),
            GainError::NotSingleImage { path, images } => write!(
                f,
                "{}: holds {images} images; a gain reference or defect map must hold one",
                path.display()
            ),
            GainError::NoSignal { path } => write!(
                f,
                "{}: gain reference has no nonzero finite pixel",
                path.display()
            ),
            GainError::DefectsSizeMismatch {
                gain,
                gain_size,
                defects,
                defects_size,
            } => write!(
                f,
                "defect map {} is {}, gain reference {} is {}: they must match",
                defects.display(),
                size(defects_size),
                gain.display(),
                size(gain_size)
            ),
            GainError::MovieSizeMismatch {
                gain,
                gain_size,
                movie,
                movie_size,
            } => write!(
                f,
                "movie {} has {} frames, gain reference {} is {} after flips and transpose",
                movie.display(),
                size(movie_size),
                gain.display(),
                size(gain_size)
            ),
            GainError::FrameLength {
                gain,
                expected,
                actual,
            } => write!(
                f,
                "frame of {actual} pixels given to gain reference {} of {expected} pixels",
                gain.display()
            ),
        }
    }
}

impl std::error::Error for GainError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GainError::Mrc(e) => Some(e),
            GainError::Tiff(e) => Some(e),
            _ => None,
        }
    }
}

impl From<MrcError> for GainError {
    fn from(e: MrcError) -> GainError {
        GainError::Mrc(e)
    }
}

impl From<TiffError> for GainError {
    fn from(e: TiffError) -> GainError {
        GainError::Tiff(e)
    }
}

/// A single image: width, height, pixels x fastest.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f32>,
}

/// Reads a single-image MRC or TIFF file (by signature).
pub fn read_single_image(path: &Path) -> Result<Image, GainError> {
    if is_tiff(path)? {
        let mut r = TiffReader::open(path)?;
        if r.frames() != 1 {
            return Err(GainError::NotSingleImage {
                path: path.to_path_buf(),
                images: r.frames(),
            });
        }
        let data = r.read_frame(0)?;
        Ok(Image {
            width: r.width(),
            height: r.height(),
            data,
        })
    } else {
        let mut r = MrcReader::open(path)?;
        let h = r.header().clone();
        if h.nz != 1 {
            return Err(GainError::NotSingleImage {
                path: path.to_path_buf(),
                images: h.nz,
            });
        }
        let data = r.read_section(0)?;
        Ok(Image {
            width: h.nx,
            height: h.ny,
            data,
        })
    }
}

/// Orients `img` as Warp does: flip x, then flip y, then transpose.
pub fn orient(img: &Image, flip_x: bool, flip_y: bool, transpose: bool) -> Image {
    let (w, h) = (img.width, img.height);
    let mut data = Vec::with_capacity(img.data.len());
    for y in 0..h {
        let sy = if flip_y { h - 1 - y } else { y };
        for x in 0..w {
            let sx = if flip_x { w - 1 - x } else { x };
            data.push(img.data[sy * w + sx]);
        }
    }
    if !transpose {
        return Image {
            width: w,
            height: h,
            data,
        };
    }
    // Transposed: new width h, new height w; new (x, y) = old (y, x).
    let mut t = Vec::with_capacity(data.len());
    for ny in 0..w {
        for nx in 0..h {
            t.push(data[nx * w + ny]);
        }
    }
    Image {
        width: h,
        height: w,
        data: t,
    }
}

/// Normalises a gain image in place: divides by the mean of the nonzero finite pixels, sets
/// zero and non-finite pixels to 1. Returns the mean, or `None` when no pixel is nonzero and
/// finite (the data are then left as they were).
pub fn normalise_gain(data: &mut [f32]) -> Option<f64> {
    let (mut sum, mut n) = (0.0f64, 0usize);
    for &v in data.iter() {
        if v != 0.0 && v.is_finite() {
            sum += f64::from(v);
            n += 1;
        }
    }
    if n == 0 || sum == 0.0 {
        return None;
    }
    let mean = sum / n as f64;
    for v in data.iter_mut() {
        *v = if *v != 0.0 && v.is_finite() {
            (f64::from(*v) / mean) as f32
        } else {
            1.0
        };
    }
    Some(mean)
}

/// One defect pixel and where its replacement comes from.
#[derive(Debug, Clone, PartialEq)]
struct DefectFix {
    index: usize,
    /// Range into `GainRef::neighbours`; empty means "the frame's mean".
    from: std::ops::Range<usize>,
}

/// Defect repairs as index tables (see [`GainRef::defect_table`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DefectTable {
    /// Defect pixel indices.
    pub targets: Vec<i32>,
    /// Start of each defect's neighbours in `from`.
    pub start: Vec<i32>,
    /// Number of good neighbours of each defect (0: use the frame's mean of good pixels).
    pub count: Vec<i32>,
    /// Neighbour pixel indices.
    pub from: Vec<i32>,
}

/// A loaded, oriented, normalised gain reference with an optional defect map.
#[derive(Debug, Clone)]
pub struct GainRef {
    /// Unique per load (clones share it: the data is immutable), so a device copy can be kept.
    id: u64,
    path: PathBuf,
    defects_path: Option<PathBuf>,
    width: usize,
    height: usize,
    gain: Vec<f32>,
    /// `true` at defect pixels (empty without a defect map).
    is_defect: Vec<bool>,
    fixes: Vec<DefectFix>,
    neighbours: Vec<usize>,
}

impl GainRef {
    /// Identifies this load of a gain reference: two loads (even of the same file) differ,
    /// clones are equal. Device copies are cached by it.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Loads the gain reference at `path` and, if given, the defect map at `defects`, orients
    /// both (flip x, then flip y, then transpose) and normalises the gain (see the module
    /// documentation).
    pub fn load(
        path: impl AsRef<Path>,
        flip_x: bool,
        flip_y: bool,
        transpose: bool,
        defects: Option<&Path>,
    ) -> Result<GainRef, GainError> {
        let path = path.as_ref();
        let raw = read_single_image(path)?;
        let defect_img = match defects {
            Some(dp) => {
                let d = read_single_image(dp)?;
                if (d.width, d.height) != (raw.width, raw.height) {
                    return Err(GainError::DefectsSizeMismatch {
                        gain: path.to_path_buf(),
                        gain_size: (raw.width, raw.height),
                        defects: dp.to_path_buf(),
                        defects_size: (d.width, d.height),
                    });
                }
                Some(orient(&d, flip_x, flip_y, transpose))
            }
            None => None,
        };
        let mut g = orient(&raw, flip_x, flip_y, transpose);
        drop(raw);
        if normalise_gain(&mut g.data).is_none() {
            return Err(GainError::NoSignal {
                path: path.to_path_buf(),
            });
        }
        let is_defect: Vec<bool> = defect_img
            .map(|d| d.data.iter().map(|&v| v != 0.0).collect())
            .unwrap_or_default();
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let mut r = GainRef {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            path: path.to_path_buf(),
            defects_path: defects.map(Path::to_path_buf),
            width: g.width,
            height: g.height,
            gain: g.data,
            is_defect,
            fixes: Vec::new(),
            neighbours: Vec::new(),
        };
        r.plan_defects();
        Ok(r)
    }

    /// This reference at `factor`× the size, each pixel (and defect) repeated `factor × factor`
    /// times: a detector's gain for a movie rendered finer than its pixels (EER at 8k or 16k
    /// from a 4k gain). A new [`Self::id`].
    pub fn upsampled(&self, factor: usize) -> GainRef {
        let (w, h) = (self.width * factor, self.height * factor);
        let pick = |i: usize| (i / w / factor) * self.width + (i % w) / factor;
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1 << 48);
        let mut r = GainRef {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            path: self.path.clone(),
            defects_path: self.defects_path.clone(),
            width: w,
            height: h,
            gain: (0..w * h).map(|i| self.gain[pick(i)]).collect(),
            is_defect: if self.is_defect.is_empty() {
                Vec::new()
            } else {
                (0..w * h).map(|i| self.is_defect[pick(i)]).collect()
            },
            fixes: Vec::new(),
            neighbours: Vec::new(),
        };
        r.plan_defects();
        r
    }

    /// Works out, for each defect pixel, the non-defect neighbours whose mean replaces it.
    fn plan_defects(&mut self) {
        let (w, h) = (self.width, self.height);
        for index in 0..self.is_defect.len() {
            if !self.is_defect[index] {
                continue;
            }
            let (x, y) = (index % w, index / w);
            let start = self.neighbours.len();
            for r in 1..=MAX_DEFECT_RADIUS {
                for ny in y.saturating_sub(r)..=(y + r).min(h - 1) {
                    for nx in x.saturating_sub(r)..=(x + r).min(w - 1) {
                        let j = ny * w + nx;
                        if !self.is_defect[j] {
                            self.neighbours.push(j);
                        }
                    }
                }
                if self.neighbours.len() > start {
                    break;
                }
            }
            self.fixes.push(DefectFix {
                index,
                from: start..self.neighbours.len(),
            });
        }
    }

    /// The gain reference's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The defect map's path, if one was loaded.
    pub fn defects_path(&self) -> Option<&Path> {
        self.defects_path.as_deref()
    }

    /// Width after orientation (must equal the movie's).
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height after orientation (must equal the movie's).
    pub fn height(&self) -> usize {
        self.height
    }

    /// The normalised, oriented gain: `width * height` values, x fastest.
    pub fn gain(&self) -> &[f32] {
        &self.gain
    }

    /// Number of defect pixels.
    pub fn defect_count(&self) -> usize {
        self.fixes.len()
    }

    /// Checks that a movie at `movie` with frames of `width` × `height` fits this reference.
    pub fn check_movie(&self, movie: &Path, width: usize, height: usize) -> Result<(), GainError> {
        if (width, height) != (self.width, self.height) {
            return Err(GainError::MovieSizeMismatch {
                gain: self.path.clone(),
                gain_size: (self.width, self.height),
                movie: movie.to_path_buf(),
                movie_size: (width, height),
            });
        }
        Ok(())
    }

    /// The defect repairs as flat index tables, for the GPU kernel `warp_defects_fill`: pixel
    /// `targets[d]` becomes the mean of `from[start[d] .. start[d] + count[d]]`, or the mean of
    /// all good pixels when `count[d]` is 0. `None` when an index does not fit an `i32`.
    pub fn defect_table(&self) -> Option<DefectTable> {
        let i = |v: usize| i32::try_from(v).ok();
        let mut t = DefectTable::default();
        for fix in &self.fixes {
            t.targets.push(i(fix.index)?);
            t.start.push(i(fix.from.start)?);
            t.count.push(i(fix.from.len())?);
        }
        t.from = self
            .neighbours
            .iter()
            .map(|&n| i(n))
            .collect::<Option<Vec<i32>>>()?;
        Some(t)
    }

    /// Whether pixel `k` is a defect (false without a defect map).
    pub fn is_defect(&self, k: usize) -> bool {
        self.is_defect.get(k).copied().unwrap_or(false)
    }

    /// Multiplies `frame` by the gain and replaces its defect pixels (see the module
    /// documentation). Call [`GainRef::check_movie`] first for an error naming the movie.
    pub fn correct(&self, frame: &mut [f32]) -> Result<(), GainError> {
        if frame.len() != self.gain.len() {
            return Err(GainError::FrameLength {
                gain: self.path.clone(),
                expected: self.gain.len(),
                actual: frame.len(),
            });
        }
        for (v, g) in frame.iter_mut().zip(&self.gain) {
            *v *= g;
        }
        if self.fixes.is_empty() {
            return Ok(());
        }
        let mut frame_mean = None;
        for fix in &self.fixes {
            let value = if fix.from.is_empty() {
                *frame_mean.get_or_insert_with(|| self.mean_of_good(frame))
            } else {
                let idx = &self.neighbours[fix.from.clone()];
                let sum: f64 = idx.iter().map(|&j| f64::from(frame[j])).sum();
                (sum / idx.len() as f64) as f32
            };
            frame[fix.index] = value;
        }
        Ok(())
    }

    /// Mean of the non-defect pixels of `frame` (0 if every pixel is a defect).
    fn mean_of_good(&self, frame: &[f32]) -> f32 {
        let (mut sum, mut n) = (0.0f64, 0usize);
        for (v, &d) in frame.iter().zip(&self.is_defect) {
            if !d {
                sum += f64::from(*v);
                n += 1;
            }
        }
        if n == 0 { 0.0 } else { (sum / n as f64) as f32 }
    }
}

#[cfg(test)]
#[path = "gain_tests.rs"]
mod tests;

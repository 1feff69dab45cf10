//! TIFF movies: one frame per page (image file directory), and [`open_movie`], which opens a
//! movie of either TIFF or MRC by its extension.
//!
//! Reading goes through the `tiff` crate's decoder: greyscale pages (one sample per pixel) of
//! unsigned 8-bit, unsigned 16-bit or 32-bit float samples, uncompressed, LZW, Deflate (both tag
//! values, 8 and 32946) or PackBits, in strips or tiles, either byte order. Data come back as
//! `f32`, x fastest, then y, then frame, exactly as the file stores them (no
//! `PhotometricInterpretation` inversion).
//!
//! [`TiffReader::open`] walks every page's directory and validates it before anything the size
//! of a frame is allocated: every page must have the first page's width, height and sample
//! format, width and height must lie in 1..=[`MAX_XY`], and every strip or tile must lie inside
//! the file. The decoder's buffer limit is then set to exactly one frame, so a corrupt page can
//! never make it allocate more. Every [`TiffError`] names the file and, where one is concerned,
//! the page (counted from 0).
//!
//! EER files are read by [`super::eer`] ([`open_movie`] picks it by the `.eer` extension); this
//! reader refuses them (a `.eer` file, or a page whose compression tag is 65000, 65001 or
//! 65002) with [`EER_UNSUPPORTED`].

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};

use ::tiff::decoder::{ChunkType, Decoder, DecodingResult, Limits};
use ::tiff::tags::Tag;

use super::mrc::{MrcError, MrcReader};

/// Largest width or height accepted; anything larger is treated as a corrupt page.
pub const MAX_XY: usize = 65_536;
pub use super::eer::EER_COMPRESSION;
/// The message of an EER refusal.
pub const EER_UNSUPPORTED: &str =
    "an EER movie, which the TIFF reader does not decode: name it .eer to read it as EER";

/// Sample format of a TIFF movie's pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TiffSampleFormat {
    /// Unsigned 8-bit integers.
    U8,
    /// Unsigned 16-bit integers.
    U16,
    /// 32-bit IEEE floats.
    F32,
}

impl TiffSampleFormat {
    /// Bytes one sample takes once decoded.
    pub fn bytes(self) -> usize {
        match self {
            TiffSampleFormat::U8 => 1,
            TiffSampleFormat::U16 => 2,
            TiffSampleFormat::F32 => 4,
        }
    }
}

impl fmt::Display for TiffSampleFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TiffSampleFormat::U8 => "uint8",
            TiffSampleFormat::U16 => "uint16",
            TiffSampleFormat::F32 => "float32",
        })
    }
}

/// Everything that can go wrong reading a TIFF movie; each names the file, most the page.
#[derive(Debug)]
pub enum TiffError {
    /// An operating-system error opening or inspecting the file.
    Io { path: PathBuf, source: io::Error },
    /// The `tiff` decoder refused the file or a page (bad signature, corrupt directory or
    /// compressed data, a limit exceeded). `page` is `None` when no page was concerned.
    Decode {
        path: PathBuf,
        page: Option<usize>,
        source: ::tiff::TiffError,
    },
    /// An EER file (by extension or compression tag); see [`EER_UNSUPPORTED`].
    Eer { path: PathBuf },
    /// Width or height of a page below 1 or above [`MAX_XY`].
    BadDimensions {
        path: PathBuf,
        page: usize,
        width: u64,
        height: u64,
    },
    /// A page whose size differs from the first page's.
    PageSizeMismatch {
        path: PathBuf,
        page: usize,
        width: usize,
        height: usize,
        first_width: usize,
        first_height: usize,
    },
    /// A page whose sample format differs from the first page's.
    PageFormatMismatch {
        path: PathBuf,
        page: usize,
        format: TiffSampleFormat,
        first: TiffSampleFormat,
    },
    /// A page this reader cannot decode (colour, an unsupported bit depth or compression).
    Unsupported {
        path: PathBuf,
        page: usize,
        reason: String,
    },
    /// A strip or tile of a page reaches past the end of the file.
    Truncated {
        path: PathBuf,
        page: usize,
        needed: u64,
        actual: u64,
    },
    /// A page whose directory or decoded data do not add up.
    Corrupt {
        path: PathBuf,
        page: usize,
        reason: String,
    },
    /// A frame index at or past the number of frames.
    FrameOutOfRange {
        path: PathBuf,
        frame: usize,
        frames: usize,
    },
}

impl TiffError {
    /// Whether reading the file failed (it may read on another try or another node), rather
    /// than its content being wrong.
    pub fn is_io(&self) -> bool {
        matches!(
            self,
            TiffError::Io { .. }
                | TiffError::Decode {
                    source: ::tiff::TiffError::IoError(_),
                    ..
                }
        )
    }
}

impl fmt::Display for TiffError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TiffError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            TiffError::Decode {
                path,
                page: Some(page),
                source,
            } => write!(f, "{}: page {page}: {source}", path.display()),
            TiffError::Decode {
                path,
                page: None,
                source,
            } => write!(f, "{}: {source}", path.display()),
            TiffError::Eer { path } => write!(f, "{}: {EER_UNSUPPORTED}", path.display()),
            TiffError::BadDimensions {
                path,
                page,
                width,
                height,
            } => write!(
                f,
                "{}: page {page}: bad TIFF dimensions {width}x{height} (each must be 1 to {MAX_XY})",
                path.display()
            ),
            TiffError::PageSizeMismatch {
                path,
                page,
                width,
                height,
                first_width,
                first_height,
            } => write!(
                f,
                "{}: page {page} is {width}x{height}, page 0 is {first_width}x{first_height}: all frames must have one size",
                path.display()
            ),
            TiffError::PageFormatMismatch {
                path,
                page,
                format,
                first,
            } => write!(
                f,
                "{}: page {page} holds {format} samples, page 0 holds {first}: all frames must have one format",
                path.display()
            ),
            TiffError::Unsupported { path, page, reason } => {
                write!(
                    f,
                    "{}: page {page}: unsupported TIFF: {reason}",
                    path.display()
                )
            }
            TiffError::Truncated {
                path,
                page,
                needed,
                actual,
            } => write!(
                f,
                "{}: page {page}: truncated TIFF file: image data reach byte {needed}, file has {actual}",
                path.display()
            ),
            TiffError::Corrupt { path, page, reason } => {
                write!(f, "{}: page {page}: corrupt TIFF: {reason}", path.display())
            }
            TiffError::FrameOutOfRange {
                path,
                frame,
                frames,
            } => write!(
                f,
                "{}: frame {frame} out of range (file has {frames} frames)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for TiffError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TiffError::Io { source, .. } => Some(source),
            TiffError::Decode { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TiffError + '_ {
    move |source| TiffError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn decode_err(
    path: &Path,
    page: Option<usize>,
) -> impl FnOnce(::tiff::TiffError) -> TiffError + '_ {
    move |source| TiffError::Decode {
        path: path.to_path_buf(),
        page,
        source,
    }
}

/// Whether `path`'s extension is `ext`, ignoring case.
/// Whether `path`'s extension is `ext`, case ignored.
pub(crate) fn has_ext(path: &Path, ext: &str) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

/// Width, height and format of one page, validated.
struct PageInfo {
    width: usize,
    height: usize,
    format: TiffSampleFormat,
}

/// Validates the decoder's current page (`page`) against the file's length. Allocates nothing
/// the size of the image: only the directory's own arrays (bounded by the decoder's limits).
fn inspect_page(
    d: &mut Decoder<BufReader<File>>,
    path: &Path,
    page: usize,
    file_len: u64,
) -> Result<PageInfo, TiffError> {
    let p = || path.to_path_buf();
    let de = |source| TiffError::Decode {
        path: p(),
        page: Some(page),
        source,
    };
    let unsupported = |reason: String| TiffError::Unsupported {
        path: p(),
        page,
        reason,
    };
    let compression = d
        .find_tag_unsigned::<u16>(Tag::Compression)
        .map_err(de)?
        .unwrap_or(1);
    if EER_COMPRESSION.contains(&compression) {
        return Err(TiffError::Eer { path: p() });
    }
    // 1 none, 5 LZW, 8 and 32946 Deflate, 32773 PackBits.
    if ![1, 5, 8, 32946, 32773].contains(&compression) {
        return Err(unsupported(format!(
            "compression {compression} (supported: none, LZW, Deflate, PackBits)"
        )));
    }
    let (w, h) = d.dimensions().map_err(de)?;
    let max = MAX_XY as u64;
    if w == 0 || h == 0 || u64::from(w) > max || u64::from(h) > max {
        return Err(TiffError::BadDimensions {
            path: p(),
            page,
            width: w.into(),
            height: h.into(),
        });
    }
    let (width, height) = (w as usize, h as usize);
    let samples = d
        .find_tag_unsigned::<u16>(Tag::SamplesPerPixel)
        .map_err(de)?
        .unwrap_or(1);
    if samples != 1 {
        return Err(unsupported(format!(
            "{samples} samples per pixel (only greyscale, 1 sample, is read)"
        )));
    }
    let bits = d
        .find_tag_unsigned::<u16>(Tag::BitsPerSample)
        .map_err(de)?
        .unwrap_or(1);
    let sample_format = d
        .find_tag_unsigned::<u16>(Tag::SampleFormat)
        .map_err(de)?
        .unwrap_or(1);
    let format = match (sample_format, bits) {
        (1, 8) => TiffSampleFormat::U8,
        (1, 16) => TiffSampleFormat::U16,
        (3, 32) => TiffSampleFormat::F32,
        _ => {
            return Err(unsupported(format!(
                "{bits} bits per sample with sample format {sample_format} (supported: unsigned 8 and 16 bits, 32-bit float)"
            )));
        }
    };
    let (offsets_tag, counts_tag) = match d.get_chunk_type() {
        ChunkType::Strip => (Tag::StripOffsets, Tag::StripByteCounts),
        ChunkType::Tile => (Tag::TileOffsets, Tag::TileByteCounts),
    };
    let offsets = d.get_tag_u64_vec(offsets_tag).map_err(de)?;
    let counts = d.get_tag_u64_vec(counts_tag).map_err(de)?;
    if offsets.len() != counts.len() || offsets.is_empty() {
        return Err(TiffError::Corrupt {
            path: p(),
            page,
            reason: format!(
                "{} chunk offsets but {} chunk byte counts",
                offsets.len(),
                counts.len()
            ),
        });
    }
    let mut end = 0u64;
    let mut total = 0u64;
    for (&o, &c) in offsets.iter().zip(&counts) {
        end = end.max(o.saturating_add(c));
        total = total.saturating_add(c);
    }
    if end > file_len {
        return Err(TiffError::Truncated {
            path: p(),
            page,
            needed: end,
            actual: file_len,
        });
    }
    let frame_bytes = (width * height * format.bytes()) as u64;
    if compression == 1 && d.get_chunk_type() == ChunkType::Strip && total < frame_bytes {
        return Err(TiffError::Corrupt {
            path: p(),
            page,
            reason: format!(
                "uncompressed strips hold {total} bytes, a {width}x{height} {format} image needs {frame_bytes}"
            ),
        });
    }
    // What each scheme can expand to at most: Deflate 1032:1 (RFC 1951: a 258-byte match per
    // 2 bits at best), LZW about 4096 bytes per 12-bit code, PackBits 128 bytes per 2.
    let max_ratio = match compression {
        5 => 2731,
        8 | 32946 => 1032,
        32773 => 64,
        _ => 1,
    };
    if compression != 1 && total.saturating_mul(max_ratio) < frame_bytes {
        return Err(TiffError::Corrupt {
            path: p(),
            page,
            reason: format!(
                "{total} compressed bytes cannot expand to the {frame_bytes} bytes a {width}x{height} {format} image needs (at most {max_ratio}:1): a damaged file or a decompression bomb"
            ),
        });
    }
    Ok(PageInfo {
        width,
        height,
        format,
    })
}

/// An open TIFF movie: every page validated, frames decoded on demand one at a time.
#[derive(Debug)]
pub struct TiffReader {
    path: PathBuf,
    decoder: Decoder<BufReader<File>>,
    frames: usize,
    width: usize,
    height: usize,
    format: TiffSampleFormat,
}

impl TiffReader {
    /// Opens `path` and validates every page (see the module documentation). A `.eer` file is
    /// refused before it is opened.
    pub fn open(path: impl AsRef<Path>) -> Result<TiffReader, TiffError> {
        let path = path.as_ref();
        if super::eer::is_eer(path) {
            return Err(TiffError::Eer {
                path: path.to_path_buf(),
            });
        }
        let file = File::open(path).map_err(io_err(path))?;
        let file_len = file.metadata().map_err(io_err(path))?.len();
        let mut decoder = Decoder::new(BufReader::new(file)).map_err(decode_err(path, Some(0)))?;
        let first = inspect_page(&mut decoder, path, 0, file_len)?;
        let mut frames = 1;
        while decoder.more_images() {
            let page = frames;
            decoder.next_image().map_err(decode_err(path, Some(page)))?;
            let info = inspect_page(&mut decoder, path, page, file_len)?;
            if (info.width, info.height) != (first.width, first.height) {
                return Err(TiffError::PageSizeMismatch {
                    path: path.to_path_buf(),
                    page,
                    width: info.width,
                    height: info.height,
                    first_width: first.width,
                    first_height: first.height,
                });
            }
            if info.format != first.format {
                return Err(TiffError::PageFormatMismatch {
                    path: path.to_path_buf(),
                    page,
                    format: info.format,
                    first: first.format,
                });
            }
            frames += 1;
        }
        // One frame's decoded size, at most 65536² × 4 bytes; the decoder may allocate no more.
        let frame_bytes = first.width * first.height * first.format.bytes();
        let mut limits = Limits::default();
        limits.decoding_buffer_size = frame_bytes;
        limits.intermediate_buffer_size = limits.intermediate_buffer_size.max(frame_bytes);
        Ok(TiffReader {
            path: path.to_path_buf(),
            decoder: decoder.with_limits(limits),
            frames,
            width: first.width,
            height: first.height,
            format: first.format,
        })
    }

    /// The path this reader was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of frames (pages).
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Width of every frame in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height of every frame in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Sample format of every frame.
    pub fn sample_format(&self) -> TiffSampleFormat {
        self.format
    }

    /// Reads frame (page) `i` only: `width * height` values, x fastest.
    pub fn read_frame(&mut self, i: usize) -> Result<Vec<f32>, TiffError> {
        let mut out = Vec::new();
        self.read_frame_into(i, &mut out)?;
        Ok(out)
    }

    /// Reads frame `i`, replacing the contents of `out`.
    pub fn read_frame_into(&mut self, i: usize, out: &mut Vec<f32>) -> Result<(), TiffError> {
        if i >= self.frames {
            return Err(TiffError::FrameOutOfRange {
                path: self.path.clone(),
                frame: i,
                frames: self.frames,
            });
        }
        let path = self.path.as_path();
        self.decoder
            .seek_to_image(i)
            .map_err(decode_err(path, Some(i)))?;
        let data = self
            .decoder
            .read_image()
            .map_err(decode_err(path, Some(i)))?;
        out.clear();
        let n = self.width * self.height;
        match (data, self.format) {
            (DecodingResult::U8(v), TiffSampleFormat::U8) if v.len() == n => {
                out.extend(v.iter().map(|&x| f32::from(x)));
            }
            (DecodingResult::U16(v), TiffSampleFormat::U16) if v.len() == n => {
                out.extend(v.iter().map(|&x| f32::from(x)));
            }
            (DecodingResult::F32(v), TiffSampleFormat::F32) if v.len() == n => {
                *out = v;
            }
            _ => {
                return Err(TiffError::Corrupt {
                    path: self.path.clone(),
                    page: i,
                    reason: format!("decoded data are not {n} {} samples", self.format),
                });
            }
        }
        Ok(())
    }

    /// Reads every frame: `width * height * frames` values, x fastest, then y, then frame.
    pub fn read_all(&mut self) -> Result<Vec<f32>, TiffError> {
        let n = self.width * self.height;
        let mut out = Vec::with_capacity(n.saturating_mul(self.frames));
        let mut frame = Vec::with_capacity(n);
        for i in 0..self.frames {
            self.read_frame_into(i, &mut frame)?;
            out.extend_from_slice(&frame);
        }
        Ok(out)
    }
}

/// Whether the file starts with a TIFF or BigTIFF signature (`II*\0`, `MM\0*`, `II+\0`,
/// `MM\0+`). A file too short to tell is not a TIFF.
pub fn is_tiff(path: impl AsRef<Path>) -> Result<bool, TiffError> {
    use std::io::Read;
    let path = path.as_ref();
    let mut b = [0u8; 4];
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut got = 0;
    while got < 4 {
        let n = f.read(&mut b[got..]).map_err(io_err(path))?;
        if n == 0 {
            return Ok(false);
        }
        got += n;
    }
    Ok(matches!(&b, b"II*\0" | b"MM\0*" | b"II+\0" | b"MM\0+"))
}

/// Errors of [`open_movie`] and [`MovieReader`].
#[derive(Debug)]
pub enum MovieError {
    /// From the MRC reader (names the file).
    Mrc(MrcError),
    /// From the TIFF reader (names the file; EER refusals included).
    Tiff(TiffError),
    /// From the EER reader (names the file).
    Eer(super::eer::EerError),
    /// An extension that names no movie format this crate reads.
    UnknownFormat { path: PathBuf },
}

impl MovieError {
    /// Whether reading the file failed rather than its content being wrong.
    pub fn is_io(&self) -> bool {
        match self {
            MovieError::Mrc(e) => e.is_io(),
            MovieError::Tiff(e) => e.is_io(),
            MovieError::Eer(e) => e.io,
            MovieError::UnknownFormat { .. } => false,
        }
    }
}

impl fmt::Display for MovieError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MovieError::Mrc(e) => e.fmt(f),
            MovieError::Tiff(e) => e.fmt(f),
            MovieError::Eer(e) => e.fmt(f),
            MovieError::UnknownFormat { path } => write!(
                f,
                "{}: unknown movie format (readable: .mrc, .mrcs, .st, .tif, .tiff, .eer)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for MovieError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MovieError::Mrc(e) => Some(e),
            MovieError::Tiff(e) => Some(e),
            MovieError::Eer(e) => Some(e),
            MovieError::UnknownFormat { .. } => None,
        }
    }
}

impl From<MrcError> for MovieError {
    fn from(e: MrcError) -> MovieError {
        MovieError::Mrc(e)
    }
}

impl From<super::eer::EerError> for MovieError {
    fn from(e: super::eer::EerError) -> MovieError {
        MovieError::Eer(e)
    }
}

impl From<TiffError> for MovieError {
    fn from(e: TiffError) -> MovieError {
        MovieError::Tiff(e)
    }
}

/// An open movie of either format; frames come back as `f32`, x fastest.
#[derive(Debug)]
pub enum MovieReader {
    /// An MRC stack: one section per frame.
    Mrc(MrcReader),
    /// A TIFF: one page per frame (boxed: its decoder is large).
    Tiff(Box<TiffReader>),
    /// An EER: one fraction (a group of raw frames) per frame.
    Eer(Box<super::eer::EerReader>),
}

/// Opens a movie by its extension (case ignored): `.mrc`, `.mrcs`, `.st` as MRC; `.tif`,
/// `.tiff` as TIFF; `.eer` as EER with the default rendering (physical size, one raw frame
/// per frame; see [`open_movie_with`]); anything else is [`MovieError::UnknownFormat`].
pub fn open_movie(path: impl AsRef<Path>) -> Result<MovieReader, MovieError> {
    open_movie_with(path, super::eer::EerOptions::default())
}

/// [`open_movie`], rendering an EER movie with `eer`.
pub fn open_movie_with(
    path: impl AsRef<Path>,
    eer: super::eer::EerOptions,
) -> Result<MovieReader, MovieError> {
    let path = path.as_ref();
    if ["mrc", "mrcs", "st"].iter().any(|e| has_ext(path, e)) {
        Ok(MovieReader::Mrc(MrcReader::open(path)?))
    } else if ["tif", "tiff"].iter().any(|e| has_ext(path, e)) {
        Ok(MovieReader::Tiff(Box::new(TiffReader::open(path)?)))
    } else if super::eer::is_eer(path) {
        Ok(MovieReader::Eer(Box::new(super::eer::EerReader::open(
            path, eer,
        )?)))
    } else {
        Err(MovieError::UnknownFormat {
            path: path.to_path_buf(),
        })
    }
}

impl MovieReader {
    /// The path the movie was opened with.
    pub fn path(&self) -> &Path {
        match self {
            MovieReader::Mrc(r) => r.path(),
            MovieReader::Tiff(r) => r.path(),
            MovieReader::Eer(r) => r.path(),
        }
    }

    /// Number of frames.
    pub fn frames(&self) -> usize {
        match self {
            MovieReader::Mrc(r) => r.header().nz,
            MovieReader::Tiff(r) => r.frames(),
            MovieReader::Eer(r) => r.frames(),
        }
    }

    /// Frame width in pixels.
    pub fn width(&self) -> usize {
        match self {
            MovieReader::Mrc(r) => r.header().nx,
            MovieReader::Tiff(r) => r.width(),
            MovieReader::Eer(r) => r.width(),
        }
    }

    /// Frame height in pixels.
    pub fn height(&self) -> usize {
        match self {
            MovieReader::Mrc(r) => r.header().ny,
            MovieReader::Tiff(r) => r.height(),
            MovieReader::Eer(r) => r.height(),
        }
    }

    /// Reads frame `i`: `width * height` values, x fastest.
    pub fn read_frame(&mut self, i: usize) -> Result<Vec<f32>, MovieError> {
        let mut out = Vec::new();
        self.read_frame_into(i, &mut out)?;
        Ok(out)
    }

    /// Reads frame `i`, replacing the contents of `out`.
    pub fn read_frame_into(&mut self, i: usize, out: &mut Vec<f32>) -> Result<(), MovieError> {
        match self {
            MovieReader::Mrc(r) => Ok(r.read_section_into(i, out)?),
            MovieReader::Tiff(r) => Ok(r.read_frame_into(i, out)?),
            MovieReader::Eer(r) => Ok(r.read_frame_into(i, out)?),
        }
    }

    /// Reads every frame: x fastest, then y, then frame.
    pub fn read_all(&mut self) -> Result<Vec<f32>, MovieError> {
        match self {
            MovieReader::Mrc(r) => Ok(r.read_all()?),
            MovieReader::Tiff(r) => Ok(r.read_all()?),
            MovieReader::Eer(r) => {
                let mut all = Vec::new();
                for i in 0..r.frames() {
                    all.extend(r.read_frame(i)?);
                }
                Ok(all)
            }
        }
    }
}

#[cfg(test)]
#[path = "tiff_tests.rs"]
mod tests;

//! 8-bit greyscale PNG, the format of the thumbnails.
//!
//! Writing ([`write_png_gray8`]): signature, `IHDR` (bit depth 8, colour type 0, no interlace),
//! the zlib stream of every row prefixed with filter byte 0 (none) split into `IDAT` chunks of at
//! most [`IDAT_CHUNK`] bytes, and `IEND`, each chunk with its CRC-32. The file is written under a
//! temporary name in the same directory and renamed into place, so a failed write never leaves a
//! partial file at the destination.
//!
//! Reading ([`read_png_gray8`]) is a minimal decoder for files like the ones written here, so
//! that tests and callers can check what was written: 8-bit greyscale, not interlaced, any of the
//! five filter types per row, any number of `IDAT` chunks, ancillary chunks skipped. Every chunk's
//! CRC is checked; anything else (other colour types or bit depths, a palette, interlacing, an
//! unknown critical chunk) is a [`PngError`] naming the file, never a panic.

use super::atomic::write_atomic;
use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;

/// The eight bytes every PNG file starts with.
pub const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
/// Largest width or height [`write_png_gray8`] accepts.
pub const MAX_DIM: usize = 65_535;
/// Largest `IDAT` chunk written; the compressed stream is split into chunks of this size.
pub const IDAT_CHUNK: usize = 1 << 20;

/// Largest chunk length the PNG specification allows (2³¹ − 1).
const MAX_CHUNK_LEN: usize = 0x7FFF_FFFF;

/// Everything that can go wrong writing or reading a PNG file; each names the file.
#[derive(Debug)]
pub enum PngError {
    /// An operating-system error creating, writing, reading or renaming.
    Io { path: PathBuf, source: io::Error },
    /// Arguments of [`write_png_gray8`] that cannot make a valid file.
    InvalidWrite { path: PathBuf, reason: String },
    /// A chunk whose stored CRC does not match its contents.
    BadCrc {
        path: PathBuf,
        /// The chunk type, e.g. `"IDAT"` (lossily decoded).
        chunk: String,
        stored: u32,
        computed: u32,
    },
    /// A file that is not a well-formed PNG: bad signature, truncated chunk, bad zlib data,
    /// missing or misplaced `IHDR`/`IEND`, wrong amount of pixel data, unknown filter type.
    Corrupt { path: PathBuf, reason: String },
    /// A well-formed PNG this minimal reader does not decode (not 8-bit greyscale, interlaced,
    /// palette or another critical chunk).
    Unsupported { path: PathBuf, reason: String },
}

impl fmt::Display for PngError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PngError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            PngError::InvalidWrite { path, reason } => {
                write!(f, "{}: cannot write PNG: {reason}", path.display())
            }
            PngError::BadCrc {
                path,
                chunk,
                stored,
                computed,
            } => write!(
                f,
                "{}: PNG chunk {chunk} has CRC {stored:08x}, contents give {computed:08x} (file corrupt)",
                path.display()
            ),
            PngError::Corrupt { path, reason } => {
                write!(f, "{}: corrupt PNG: {reason}", path.display())
            }
            PngError::Unsupported { path, reason } => {
                write!(f, "{}: unsupported PNG: {reason}", path.display())
            }
        }
    }
}

impl std::error::Error for PngError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PngError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Writes `pixels` (`width * height` bytes, row by row, the first row at the top of the image)
/// as an 8-bit greyscale PNG.
///
/// `width` and `height` must lie in 1..=[`MAX_DIM`] and `pixels.len()` must be
/// `width * height`; otherwise nothing is written and [`PngError::InvalidWrite`] says why. The
/// file is written to a temporary name in the same directory and renamed into place, so a
/// failure never leaves a partial file at `path`.
pub fn write_png_gray8(
    path: impl AsRef<Path>,
    pixels: &[u8],
    width: usize,
    height: usize,
) -> Result<(), PngError> {
    let path = path.as_ref();
    let invalid = |reason: String| PngError::InvalidWrite {
        path: path.to_path_buf(),
        reason,
    };
    if width == 0 || height == 0 || width > MAX_DIM || height > MAX_DIM {
        return Err(invalid(format!(
            "bad dimensions {width}x{height} (width and height must lie in 1..={MAX_DIM})"
        )));
    }
    if width.checked_mul(height) != Some(pixels.len()) {
        return Err(invalid(format!(
            "{} pixels given for {width}x{height} (expected {})",
            pixels.len(),
            width * height
        )));
    }
    write_atomic(path, |w| write_body(w, pixels, width, height)).map_err(|source| PngError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The whole file: signature, `IHDR`, `IDAT` chunks, `IEND`.
fn write_body(w: &mut impl Write, pixels: &[u8], width: usize, height: usize) -> io::Result<()> {
    let mut zlib = ZlibEncoder::new(
        Vec::with_capacity(pixels.len() / 2 + 64),
        Compression::default(),
    );
    for row in pixels.chunks_exact(width) {
        zlib.write_all(&[0])?;
        zlib.write_all(row)?;
    }
    let compressed = zlib.finish()?;

    let mut ihdr = [0u8; 13];
    ihdr[0..4].copy_from_slice(&(width as u32).to_be_bytes());
    ihdr[4..8].copy_from_slice(&(height as u32).to_be_bytes());
    ihdr[8] = 8; // bit depth
    ihdr[9] = 0; // colour type: greyscale
    // compression 0, filter method 0, interlace 0: already zero.

    w.write_all(&SIGNATURE)?;
    write_chunk(w, b"IHDR", &ihdr)?;
    for part in compressed.chunks(IDAT_CHUNK) {
        write_chunk(w, b"IDAT", part)?;
    }
    write_chunk(w, b"IEND", &[])
}

/// One chunk: length, type, data, CRC-32 of type and data.
fn write_chunk(w: &mut impl Write, kind: &[u8; 4], data: &[u8]) -> io::Result<()> {
    w.write_all(&(data.len() as u32).to_be_bytes())?;
    w.write_all(kind)?;
    w.write_all(data)?;
    w.write_all(&chunk_crc(kind, data).to_be_bytes())
}

/// The CRC-32 of a chunk's type and data, as stored after the data.
fn chunk_crc(kind: &[u8], data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(kind);
    h.update(data);
    h.finalize()
}

/// Reads an 8-bit greyscale, non-interlaced PNG: `(pixels, width, height)`, pixels row by row,
/// the first row at the top.
///
/// Meant for files like those [`write_png_gray8`] writes; see the module documentation for what
/// is accepted. Every chunk's CRC is checked.
pub fn read_png_gray8(path: impl AsRef<Path>) -> Result<(Vec<u8>, usize, usize), PngError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| PngError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode(path, &bytes)
}

/// Decodes the bytes of a whole file; `path` only names it in errors.
fn decode(path: &Path, bytes: &[u8]) -> Result<(Vec<u8>, usize, usize), PngError> {
    let corrupt = |reason: String| PngError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let unsupported = |reason: String| PngError::Unsupported {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() < SIGNATURE.len() || bytes[..SIGNATURE.len()] != SIGNATURE {
        return Err(corrupt("not a PNG file (bad signature)".into()));
    }

    let mut pos = SIGNATURE.len();
    let mut dims: Option<(usize, usize)> = None;
    let mut idat = Vec::new();
    let mut seen_iend = false;
    while pos < bytes.len() {
        if bytes.len() - pos < 12 {
            return Err(corrupt(format!("truncated chunk header at byte {pos}")));
        }
        let len = u32::from_be_bytes(bytes[pos..pos + 4].try_into().unwrap_or([0; 4])) as usize;
        let kind = &bytes[pos + 4..pos + 8];
        let kind_str = String::from_utf8_lossy(kind).into_owned();
        if len > MAX_CHUNK_LEN || len > bytes.len() - pos - 12 {
            return Err(corrupt(format!(
                "chunk {kind_str} at byte {pos} claims {len} bytes, past the end of the file"
            )));
        }
        let data = &bytes[pos + 8..pos + 8 + len];
        let stored = u32::from_be_bytes(
            bytes[pos + 8 + len..pos + 12 + len]
                .try_into()
                .unwrap_or([0; 4]),
        );
        let computed = chunk_crc(kind, data);
        if stored != computed {
            return Err(PngError::BadCrc {
                path: path.to_path_buf(),
                chunk: kind_str,
                stored,
                computed,
            });
        }
        pos += 12 + len;

        match kind {
            b"IHDR" => {
                if dims.is_some() {
                    return Err(corrupt("second IHDR chunk".into()));
                }
                dims = Some(parse_ihdr(data, &corrupt, &unsupported)?);
            }
            _ if dims.is_none() => {
                return Err(corrupt(format!("first chunk is {kind_str}, expected IHDR")));
            }
            b"IDAT" => idat.extend_from_slice(data),
            b"IEND" => {
                seen_iend = true;
                break;
            }
            _ if kind[0].is_ascii_uppercase() => {
                return Err(unsupported(format!(
                    "critical chunk {kind_str} (only IHDR, IDAT and IEND are read)"
                )));
            }
            _ => {} // ancillary chunk: skipped
        }
    }
    let Some((width, height)) = dims else {
        return Err(corrupt("no IHDR chunk".into()));
    };
    if !seen_iend {
        return Err(corrupt("no IEND chunk (file truncated?)".into()));
    }
    if idat.is_empty() {
        return Err(corrupt("no IDAT chunk".into()));
    }

    let stride = width + 1;
    let expected = stride
        .checked_mul(height)
        .ok_or_else(|| corrupt(format!("dimensions {width}x{height} overflow")))?;
    // Inflate at most one byte more than expected: enough to tell "too much", and the buffer
    // grows only with data actually present, never to a size taken on trust from the header.
    let mut raw = Vec::new();
    ZlibDecoder::new(idat.as_slice())
        .take(expected as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(|e| corrupt(format!("bad zlib data in IDAT: {e}")))?;
    if raw.len() > expected {
        return Err(corrupt(format!(
            "IDAT inflates to more than the {expected} bytes {width}x{height} needs"
        )));
    }
    if raw.len() < expected {
        return Err(corrupt(format!(
            "IDAT inflates to {} bytes, {width}x{height} needs {expected}",
            raw.len()
        )));
    }

    let mut pixels = vec![0u8; width * height];
    let mut prev = vec![0u8; width];
    for (y, (line, out)) in raw
        .chunks_exact(stride)
        .zip(pixels.chunks_exact_mut(width))
        .enumerate()
    {
        unfilter(line[0], &line[1..], &prev, out)
            .map_err(|t| corrupt(format!("row {y}: unknown filter type {t}")))?;
        prev.copy_from_slice(out);
    }
    Ok((pixels, width, height))
}

/// Validates an `IHDR` payload and returns `(width, height)`.
fn parse_ihdr(
    data: &[u8],
    corrupt: &impl Fn(String) -> PngError,
    unsupported: &impl Fn(String) -> PngError,
) -> Result<(usize, usize), PngError> {
    if data.len() != 13 {
        return Err(corrupt(format!(
            "IHDR has {} bytes, expected 13",
            data.len()
        )));
    }
    let width = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
    let height = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
    if width == 0
        || height == 0
        || width as usize > MAX_CHUNK_LEN
        || height as usize > MAX_CHUNK_LEN
    {
        return Err(corrupt(format!("bad dimensions {width}x{height}")));
    }
    let (depth, colour, compression, filter, interlace) =
        (data[8], data[9], data[10], data[11], data[12]);
    if depth != 8 || colour != 0 {
        return Err(unsupported(format!(
            "bit depth {depth}, colour type {colour} (only 8-bit greyscale, colour type 0, is read)"
        )));
    }
    if compression != 0 || filter != 0 {
        return Err(corrupt(format!(
            "compression method {compression}, filter method {filter} (both must be 0)"
        )));
    }
    if interlace != 0 {
        return Err(unsupported(format!(
            "interlace method {interlace} (only non-interlaced images are read)"
        )));
    }
    Ok((width as usize, height as usize))
}

/// Reverses one row's filter (one byte per pixel, so the "left" neighbour is the previous byte).
/// `prev` is the previous reconstructed row (zeros for the first). Returns the filter type when
/// it is not 0..=4.
fn unfilter(kind: u8, line: &[u8], prev: &[u8], out: &mut [u8]) -> Result<(), u8> {
    match kind {
        0 => out.copy_from_slice(line),
        1 => {
            let mut left = 0u8;
            for (o, &x) in out.iter_mut().zip(line) {
                left = x.wrapping_add(left);
                *o = left;
            }
        }
        2 => {
            for ((o, &x), &up) in out.iter_mut().zip(line).zip(prev) {
                *o = x.wrapping_add(up);
            }
        }
        3 => {
            let mut left = 0u8;
            for ((o, &x), &up) in out.iter_mut().zip(line).zip(prev) {
                left = x.wrapping_add(((u16::from(left) + u16::from(up)) / 2) as u8);
                *o = left;
            }
        }
        4 => {
            let (mut left, mut up_left) = (0u8, 0u8);
            for ((o, &x), &up) in out.iter_mut().zip(line).zip(prev) {
                left = x.wrapping_add(paeth(left, up, up_left));
                up_left = up;
                *o = left;
            }
        }
        t => return Err(t),
    }
    Ok(())
}

/// The Paeth predictor: whichever of left, up and up-left is closest to `left + up - up_left`,
/// ties broken in that order.
fn paeth(a: u8, b: u8, c: u8) -> u8 {
    let (ia, ib, ic) = (i16::from(a), i16::from(b), i16::from(c));
    let p = ia + ib - ic;
    let (pa, pb, pc) = ((p - ia).abs(), (p - ib).abs(), (p - ic).abs());
    if pa <= pb && pa <= pc {
        a
    } else if pb <= pc {
        b
    } else {
        c
    }
}

#[cfg(test)]
#[path = "png_tests.rs"]
mod tests;

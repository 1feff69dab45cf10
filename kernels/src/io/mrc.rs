//! MRC2014 images, stacks and volumes.
//!
//! Reading: modes 0 (int8), 1 (int16), 2 (float32), 6 (uint16), 12 (IEEE binary16) and 101
//! (4-bit unsigned, two pixels per byte, low nibble first, each row padded to a whole byte, as
//! SerialEM writes), little- or big-endian (machine stamp `44 44 00 00` or `44 41 00 00` little,
//! `11 11 00 00` big, all zero read as little), with any extended header (`nsymbt` bytes after
//! the 1024-byte header, FEI1/FEI2 included) skipped. Data come back as `f32`, x fastest, then y,
//! then z (section).
//!
//! The header is validated against the file's real length before anything is allocated, so a
//! corrupt or hostile header gives an [`MrcError`] naming the file, never a panic or a huge
//! allocation. [`MrcReader`] reads one section at a time without reading the rest of the file.
//!
//! Writing ([`write_mrc`]): float32, float16 or int16, little-endian, with statistics of the
//! stored values in the header (`rms` is the standard deviation from the mean, as MRC2014
//! specifies), `ispg` 0 for a single image and 1 for a volume (mrcfile's convention), through a
//! temporary file in the same directory renamed into place.

use super::atomic::write_atomic;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::f16::{f16_to_f32, f32_to_f16};

/// Size of the fixed MRC header in bytes.
pub const HEADER_LEN: u64 = 1024;
/// Largest `nx` or `ny` accepted; anything larger is treated as a corrupt header.
pub const MAX_XY: usize = 65_536;
/// `nversion` written: MRC2014, version 0.
pub const NVERSION: i32 = 20140;

/// Data mode of an MRC file (the `mode` header word).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MrcMode {
    /// Mode 0: signed 8-bit integers.
    Int8,
    /// Mode 1: signed 16-bit integers.
    Int16,
    /// Mode 2: 32-bit IEEE floats.
    Float32,
    /// Mode 6: unsigned 16-bit integers.
    Uint16,
    /// Mode 12: 16-bit IEEE floats.
    Float16,
    /// Mode 101: unsigned 4-bit integers, two per byte, low nibble first, rows padded to a byte.
    Packed4,
}

impl MrcMode {
    /// The mode number as stored in the header.
    pub fn code(self) -> i32 {
        match self {
            MrcMode::Int8 => 0,
            MrcMode::Int16 => 1,
            MrcMode::Float32 => 2,
            MrcMode::Uint16 => 6,
            MrcMode::Float16 => 12,
            MrcMode::Packed4 => 101,
        }
    }

    /// The mode for a header word, if it is one this reader supports.
    pub fn from_code(code: i32) -> Option<MrcMode> {
        Some(match code {
            0 => MrcMode::Int8,
            1 => MrcMode::Int16,
            2 => MrcMode::Float32,
            6 => MrcMode::Uint16,
            12 => MrcMode::Float16,
            101 => MrcMode::Packed4,
            _ => return None,
        })
    }

    /// Bytes one row of `nx` pixels takes on disk, or `None` on overflow.
    pub fn row_bytes(self, nx: u64) -> Option<u64> {
        match self {
            MrcMode::Int8 => Some(nx),
            MrcMode::Int16 | MrcMode::Uint16 | MrcMode::Float16 => nx.checked_mul(2),
            MrcMode::Float32 => nx.checked_mul(4),
            MrcMode::Packed4 => Some(nx.div_ceil(2)),
        }
    }
}

/// Byte order of the data and header words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endian {
    Little,
    Big,
}

/// The parsed, validated header of an MRC file.
#[derive(Debug, Clone, PartialEq)]
pub struct MrcHeader {
    pub nx: usize,
    pub ny: usize,
    /// Sections (frames of a stack, or slices of a volume).
    pub nz: usize,
    pub mode: MrcMode,
    pub mx: i32,
    pub my: i32,
    pub mz: i32,
    /// Cell dimensions in Å.
    pub cella: [f32; 3],
    /// Voxel size in Å per axis: `cella / m`, or 1 where `m` is 0.
    pub voxel_size_a: [f32; 3],
    pub dmin: f32,
    pub dmax: f32,
    pub dmean: f32,
    pub rms: f32,
    pub ispg: i32,
    /// Bytes of extended header after the 1024-byte header.
    pub nsymbt: u64,
    /// Extended header type (`exttyp`), e.g. `*b"FEI1"`; zeros when unset.
    pub exttyp: [u8; 4],
    pub nversion: i32,
    pub endian: Endian,
    /// Byte offset of the first data byte: 1024 + `nsymbt`.
    pub data_offset: u64,
}

impl MrcHeader {
    /// `exttyp` as text (e.g. `"FEI1"`), or `None` when it is unset or not printable ASCII.
    pub fn exttyp_str(&self) -> Option<&str> {
        if self.exttyp == [0; 4]
            || !self
                .exttyp
                .iter()
                .all(|b| b.is_ascii_graphic() || *b == b' ')
        {
            return None;
        }
        std::str::from_utf8(&self.exttyp).ok()
    }

    /// Bytes of one section on disk.
    pub fn section_bytes(&self) -> u64 {
        // Validated at parse time not to overflow.
        self.mode.row_bytes(self.nx as u64).unwrap_or(0) * self.ny as u64
    }

    /// Pixels in one section.
    pub fn section_len(&self) -> usize {
        self.nx * self.ny
    }
}

/// Everything that can go wrong reading or writing an MRC file; each names the file.
#[derive(Debug)]
pub enum MrcError {
    /// An operating-system error opening, reading, writing or renaming.
    Io { path: PathBuf, source: io::Error },
    /// The file is shorter than its header says: `expected` bytes needed, `actual` present.
    Truncated {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    /// nx, ny or nz below 1, or nx / ny above [`MAX_XY`].
    BadDimensions {
        path: PathBuf,
        nx: i64,
        ny: i64,
        nz: i64,
    },
    /// A data size that overflows 64 bits.
    Overflow {
        path: PathBuf,
        nx: usize,
        ny: usize,
        nz: usize,
    },
    /// A mode this reader does not know.
    UnknownMode { path: PathBuf, mode: i32 },
    /// `nsymbt` negative or pointing past the end of the file.
    BadExtendedHeader {
        path: PathBuf,
        nsymbt: i64,
        file_len: u64,
    },
    /// A section index at or past `nz`.
    SectionOutOfRange { path: PathBuf, z: usize, nz: usize },
    /// Arguments of [`write_mrc`] that cannot make a valid file.
    InvalidWrite { path: PathBuf, reason: String },
}

impl MrcError {
    /// Whether reading the file failed (it may read on another try or another node), rather
    /// than its content being wrong.
    pub fn is_io(&self) -> bool {
        matches!(self, MrcError::Io { .. })
    }
}

impl fmt::Display for MrcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MrcError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            MrcError::Truncated {
                path,
                expected,
                actual,
            } => write!(
                f,
                "{}: truncated MRC file: header promises {expected} bytes, file has {actual}",
                path.display()
            ),
            MrcError::BadDimensions { path, nx, ny, nz } => write!(
                f,
                "{}: bad MRC dimensions nx={nx} ny={ny} nz={nz} (each must be at least 1, nx and ny at most {MAX_XY})",
                path.display()
            ),
            MrcError::Overflow { path, nx, ny, nz } => write!(
                f,
                "{}: MRC data size for nx={nx} ny={ny} nz={nz} overflows",
                path.display()
            ),
            MrcError::UnknownMode { path, mode } => write!(
                f,
                "{}: unsupported MRC mode {mode} (supported: 0, 1, 2, 6, 12, 101)",
                path.display()
            ),
            MrcError::BadExtendedHeader {
                path,
                nsymbt,
                file_len,
            } => write!(
                f,
                "{}: bad MRC extended header size nsymbt={nsymbt} for a file of {file_len} bytes",
                path.display()
            ),
            MrcError::SectionOutOfRange { path, z, nz } => write!(
                f,
                "{}: section {z} out of range (file has {nz} sections)",
                path.display()
            ),
            MrcError::InvalidWrite { path, reason } => {
                write!(f, "{}: cannot write MRC: {reason}", path.display())
            }
        }
    }
}

impl std::error::Error for MrcError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MrcError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> MrcError + '_ {
    move |source| MrcError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn word(b: &[u8], offset: usize, endian: Endian) -> [u8; 4] {
    let mut w = [b[offset], b[offset + 1], b[offset + 2], b[offset + 3]];
    if endian == Endian::Big {
        w.reverse();
    }
    w
}

fn get_i32(b: &[u8], offset: usize, endian: Endian) -> i32 {
    i32::from_le_bytes(word(b, offset, endian))
}

fn get_f32(b: &[u8], offset: usize, endian: Endian) -> f32 {
    f32::from_le_bytes(word(b, offset, endian))
}

/// Byte order from the machine stamp (bytes 212..216); an unknown stamp is resolved by which
/// order gives a known mode.
fn detect_endian(b: &[u8]) -> Endian {
    match (b[212], b[213]) {
        (0x44, 0x44) | (0x44, 0x41) | (0, 0) => Endian::Little,
        (0x11, 0x11) => Endian::Big,
        _ => {
            let le_ok = MrcMode::from_code(get_i32(b, 12, Endian::Little)).is_some();
            let be_ok = MrcMode::from_code(get_i32(b, 12, Endian::Big)).is_some();
            if be_ok && !le_ok {
                Endian::Big
            } else {
                Endian::Little
            }
        }
    }
}

/// Parses and validates a 1024-byte header against the file length. Allocates nothing.
pub fn parse_header(b: &[u8; 1024], file_len: u64, path: &Path) -> Result<MrcHeader, MrcError> {
    let p = || path.to_path_buf();
    let endian = detect_endian(b);
    let (nx, ny, nz) = (
        get_i32(b, 0, endian),
        get_i32(b, 4, endian),
        get_i32(b, 8, endian),
    );
    let mode_code = get_i32(b, 12, endian);
    let mode = MrcMode::from_code(mode_code).ok_or(MrcError::UnknownMode {
        path: p(),
        mode: mode_code,
    })?;
    let max = MAX_XY as i32;
    if nx < 1 || ny < 1 || nz < 1 || nx > max || ny > max {
        return Err(MrcError::BadDimensions {
            path: p(),
            nx: nx.into(),
            ny: ny.into(),
            nz: nz.into(),
        });
    }
    let (nx, ny, nz) = (nx as usize, ny as usize, nz as usize);
    let nsymbt = get_i32(b, 92, endian);
    if nsymbt < 0 || HEADER_LEN + nsymbt as u64 > file_len {
        return Err(MrcError::BadExtendedHeader {
            path: p(),
            nsymbt: nsymbt.into(),
            file_len,
        });
    }
    let nsymbt = nsymbt as u64;
    let data_offset = HEADER_LEN + nsymbt;
    let data_bytes = mode
        .row_bytes(nx as u64)
        .and_then(|r| r.checked_mul(ny as u64))
        .and_then(|s| s.checked_mul(nz as u64))
        .and_then(|d| d.checked_add(data_offset))
        .ok_or(MrcError::Overflow {
            path: p(),
            nx,
            ny,
            nz,
        })?;
    if data_bytes > file_len {
        return Err(MrcError::Truncated {
            path: p(),
            expected: data_bytes,
            actual: file_len,
        });
    }
    let (mx, my, mz) = (
        get_i32(b, 28, endian),
        get_i32(b, 32, endian),
        get_i32(b, 36, endian),
    );
    let cella = [
        get_f32(b, 40, endian),
        get_f32(b, 44, endian),
        get_f32(b, 48, endian),
    ];
    let voxel = |c: f32, m: i32| if m == 0 { 1.0 } else { c / m as f32 };
    let mut exttyp = [0u8; 4];
    exttyp.copy_from_slice(&b[104..108]); // four characters: not byte-swapped
    Ok(MrcHeader {
        nx,
        ny,
        nz,
        mode,
        mx,
        my,
        mz,
        cella,
        voxel_size_a: [
            voxel(cella[0], mx),
            voxel(cella[1], my),
            voxel(cella[2], mz),
        ],
        dmin: get_f32(b, 76, endian),
        dmax: get_f32(b, 80, endian),
        dmean: get_f32(b, 84, endian),
        rms: get_f32(b, 216, endian),
        ispg: get_i32(b, 88, endian),
        nsymbt,
        exttyp,
        nversion: get_i32(b, 108, endian),
        endian,
        data_offset,
    })
}

/// Decodes one section's raw bytes into `out` (appended).
fn decode_section(h: &MrcHeader, raw: &[u8], out: &mut Vec<f32>) {
    let big = h.endian == Endian::Big;
    let two = |c: &[u8]| if big { [c[1], c[0]] } else { [c[0], c[1]] };
    match h.mode {
        MrcMode::Int8 => out.extend(raw.iter().map(|&v| f32::from(v as i8))),
        MrcMode::Int16 => out.extend(
            raw.chunks_exact(2)
                .map(|c| f32::from(i16::from_le_bytes(two(c)))),
        ),
        MrcMode::Uint16 => out.extend(
            raw.chunks_exact(2)
                .map(|c| f32::from(u16::from_le_bytes(two(c)))),
        ),
        MrcMode::Float16 => out.extend(
            raw.chunks_exact(2)
                .map(|c| f16_to_f32(u16::from_le_bytes(two(c)))),
        ),
        MrcMode::Float32 => out.extend(raw.chunks_exact(4).map(|c| {
            let w = if big {
                [c[3], c[2], c[1], c[0]]
            } else {
                [c[0], c[1], c[2], c[3]]
            };
            f32::from_le_bytes(w)
        })),
        MrcMode::Packed4 => {
            let row = h.nx.div_ceil(2);
            for r in raw.chunks_exact(row) {
                out.extend((0..h.nx).map(|x| {
                    let byte = r[x / 2];
                    f32::from(if x % 2 == 0 { byte & 0x0f } else { byte >> 4 })
                }));
            }
        }
    }
}

/// An open MRC file: header validated, data read on demand one section at a time.
#[derive(Debug)]
pub struct MrcReader {
    path: PathBuf,
    file: File,
    header: MrcHeader,
}

impl MrcReader {
    /// Opens `path`, reads and validates its header against the file's length.
    pub fn open(path: impl AsRef<Path>) -> Result<MrcReader, MrcError> {
        let path = path.as_ref();
        let mut file = File::open(path).map_err(io_err(path))?;
        let file_len = file.metadata().map_err(io_err(path))?.len();
        if file_len < HEADER_LEN {
            return Err(MrcError::Truncated {
                path: path.to_path_buf(),
                expected: HEADER_LEN,
                actual: file_len,
            });
        }
        let mut b = [0u8; 1024];
        file.read_exact(&mut b).map_err(io_err(path))?;
        let header = parse_header(&b, file_len, path)?;
        Ok(MrcReader {
            path: path.to_path_buf(),
            file,
            header,
        })
    }

    /// The validated header.
    pub fn header(&self) -> &MrcHeader {
        &self.header
    }

    /// The path this reader was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads section (frame) `z` only: `nx * ny` values, x fastest.
    pub fn read_section(&mut self, z: usize) -> Result<Vec<f32>, MrcError> {
        let mut out = Vec::new();
        self.read_section_into(z, &mut out)?;
        Ok(out)
    }

    /// Reads section `z`, replacing the contents of `out` (reuses its allocation).
    pub fn read_section_into(&mut self, z: usize, out: &mut Vec<f32>) -> Result<(), MrcError> {
        let h = &self.header;
        if z >= h.nz {
            return Err(MrcError::SectionOutOfRange {
                path: self.path.clone(),
                z,
                nz: h.nz,
            });
        }
        let bytes = h.section_bytes();
        let offset = h.data_offset + bytes * z as u64;
        let mut raw = vec![0u8; bytes as usize];
        self.file
            .seek(SeekFrom::Start(offset))
            .map_err(io_err(&self.path))?;
        self.file.read_exact(&mut raw).map_err(io_err(&self.path))?;
        out.clear();
        out.reserve_exact(h.section_len());
        decode_section(h, &raw, out);
        Ok(())
    }

    /// Reads every section: `nx * ny * nz` values, x fastest, then y, then z.
    pub fn read_all(&mut self) -> Result<Vec<f32>, MrcError> {
        let h = &self.header;
        let mut out = Vec::with_capacity(h.section_len() * h.nz);
        let bytes = h.section_bytes() as usize;
        let mut raw = vec![0u8; bytes];
        self.file
            .seek(SeekFrom::Start(h.data_offset))
            .map_err(io_err(&self.path))?;
        for _ in 0..h.nz {
            self.file.read_exact(&mut raw).map_err(io_err(&self.path))?;
            decode_section(&self.header, &raw, &mut out);
        }
        Ok(out)
    }
}

/// Reads a whole MRC file: its header and all its data.
pub fn read_mrc(path: impl AsRef<Path>) -> Result<(MrcHeader, Vec<f32>), MrcError> {
    let mut r = MrcReader::open(path)?;
    let data = r.read_all()?;
    Ok((r.header, data))
}

/// Data mode for [`write_mrc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Mode 2.
    Float32,
    /// Mode 12, rounded to nearest even.
    Float16,
    /// Mode 1, rounded to nearest (ties to even) and clamped to the int16 range; NaN becomes 0.
    Int16,
}

impl WriteMode {
    fn mode(self) -> MrcMode {
        match self {
            WriteMode::Float32 => MrcMode::Float32,
            WriteMode::Float16 => MrcMode::Float16,
            WriteMode::Int16 => MrcMode::Int16,
        }
    }
}

fn to_i16(v: f32) -> i16 {
    if v.is_nan() {
        0
    } else {
        v.round_ties_even().clamp(-32768.0, 32767.0) as i16
    }
}

/// Statistics of the stored values: (min, max, mean, standard deviation from the mean).
fn stats(values: impl Iterator<Item = f32> + Clone) -> (f32, f32, f32, f32) {
    let (mut min, mut max, mut sum, mut n) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64, 0usize);
    for v in values.clone() {
        let v = f64::from(v);
        min = min.min(v);
        max = max.max(v);
        sum += v;
        n += 1;
    }
    if n == 0 {
        return (0.0, 0.0, 0.0, 0.0);
    }
    let mean = sum / n as f64;
    let var = values.map(|v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n as f64;
    (min as f32, max as f32, mean as f32, var.sqrt() as f32)
}

/// Writes `data` (`nx * ny * nz` values, x fastest) as a little-endian MRC2014 file.
///
/// The header carries the statistics of the values as stored (after rounding to float16 or
/// int16), `voxel_size_a` (Å) on all three axes, `ispg` 0 when `nz == 1` and 1 otherwise. The
/// file is written to a temporary name in the same directory and renamed into place, so a
/// failure never leaves a partial file at `path`.
pub fn write_mrc(
    path: impl AsRef<Path>,
    data: &[f32],
    nx: usize,
    ny: usize,
    nz: usize,
    mode: WriteMode,
    voxel_size_a: f32,
) -> Result<(), MrcError> {
    let path = path.as_ref();
    let invalid = |reason: String| MrcError::InvalidWrite {
        path: path.to_path_buf(),
        reason,
    };
    if nx == 0 || ny == 0 || nz == 0 || nx > MAX_XY || ny > MAX_XY || nz > i32::MAX as usize {
        return Err(invalid(format!("bad dimensions nx={nx} ny={ny} nz={nz}")));
    }
    let n = nx.checked_mul(ny).and_then(|v| v.checked_mul(nz));
    if n != Some(data.len()) {
        return Err(invalid(format!(
            "{} values given for nx={nx} ny={ny} nz={nz}",
            data.len()
        )));
    }
    if !(voxel_size_a.is_finite() && voxel_size_a > 0.0) {
        return Err(invalid(format!(
            "voxel size {voxel_size_a} Å is not a positive number"
        )));
    }

    let (dmin, dmax, dmean, rms) = match mode {
        WriteMode::Float32 => stats(data.iter().copied()),
        WriteMode::Float16 => stats(data.iter().map(|&v| f16_to_f32(f32_to_f16(v)))),
        WriteMode::Int16 => stats(data.iter().map(|&v| f32::from(to_i16(v)))),
    };

    let mut h = [0u8; 1024];
    let mut put = |offset: usize, bytes: [u8; 4]| h[offset..offset + 4].copy_from_slice(&bytes);
    let mz = nz;
    put(0, (nx as i32).to_le_bytes());
    put(4, (ny as i32).to_le_bytes());
    put(8, (nz as i32).to_le_bytes());
    put(12, mode.mode().code().to_le_bytes());
    put(28, (nx as i32).to_le_bytes());
    put(32, (ny as i32).to_le_bytes());
    put(36, (mz as i32).to_le_bytes());
    let cell = |m: usize| ((m as f64) * f64::from(voxel_size_a)) as f32;
    put(40, cell(nx).to_le_bytes());
    put(44, cell(ny).to_le_bytes());
    put(48, cell(mz).to_le_bytes());
    for o in [52, 56, 60] {
        put(o, 90.0f32.to_le_bytes());
    }
    put(64, 1i32.to_le_bytes());
    put(68, 2i32.to_le_bytes());
    put(72, 3i32.to_le_bytes());
    put(76, dmin.to_le_bytes());
    put(80, dmax.to_le_bytes());
    put(84, dmean.to_le_bytes());
    put(88, if nz == 1 { 0i32 } else { 1i32 }.to_le_bytes());
    put(108, NVERSION.to_le_bytes());
    put(208, *b"MAP ");
    put(212, [0x44, 0x44, 0, 0]);
    put(216, rms.to_le_bytes());
    put(220, 1i32.to_le_bytes());
    let label = b"warp-kernels";
    h[224..224 + label.len()].copy_from_slice(label);

    write_atomic(path, |w| write_body(w, &h, data, mode)).map_err(|source| MrcError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write_body(
    w: &mut impl Write,
    header: &[u8; 1024],
    data: &[f32],
    mode: WriteMode,
) -> io::Result<()> {
    w.write_all(header)?;
    match mode {
        WriteMode::Float32 => data
            .iter()
            .try_for_each(|v| w.write_all(&v.to_le_bytes()))?,
        WriteMode::Float16 => data
            .iter()
            .try_for_each(|&v| w.write_all(&f32_to_f16(v).to_le_bytes()))?,
        WriteMode::Int16 => data
            .iter()
            .try_for_each(|&v| w.write_all(&to_i16(v).to_le_bytes()))?,
    }
    Ok(())
}

#[cfg(test)]
#[path = "mrc_tests.rs"]
mod tests;

//! EER movies (electron event representation; Falcon 4/4i): a TIFF whose every page is one raw
//! detector frame, stored as the positions of the electrons detected in it.
//!
//! A page's data (one strip) is a little-endian bit stream (least significant bit first) of
//! codes: a skip of `skip_bits` bits (pixels passed over before the next electron, in row-major
//! order over the `width × height` physical pixels), then, unless the skip is the largest value
//! the field holds (a skip with no electron after it: the skips add up), the electron's
//! sub-pixel position in `horz_bits` and `vert_bits` bits, and the position moves one past it.
//! A skip that reaches the last pixel ends the frame. The scheme is the page's compression tag:
//! 65000 (8-bit skips, 2+2 sub-pixel bits), 65001 (7, 2+2), or 65002, whose bit widths are in
//! the private tags 65007, 65008 and 65009 (defaults 7, 2, 2), as the EER documentation (3.0)
//! describes and `tifffile` reads them. Sub-pixel codes are stored XOR-ed with their bit
//! count: a rendered position is `pixel · 2^k + ((code ^ bits) >> (bits − k))` for an
//! upsampling of `2^k` (k ≤ bits), the convention of the `imagecodecs` decoder this reader is
//! checked against.
//!
//! [`EerReader`] renders fractions: `group` raw frames summed (a count per rendered pixel),
//! at the physical size or upsampled 2× or 4× from the sub-pixel bits. Raw frames beyond the
//! last whole group are left out (as RELION does). A first page that is not EER (the
//! integrated image some files carry) is skipped. The reader parses the TIFF directories
//! itself (classic TIFF, either byte order); every strip must lie inside the file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The compression tag values of EER pages.
pub const EER_COMPRESSION: [u16; 3] = [65000, 65001, 65002];

/// Whether `path` names an EER movie (by its extension, as [`super::tiff::open_movie`] reads it).
pub fn is_eer(path: &Path) -> bool {
    super::tiff::has_ext(path, "eer")
}

/// Bit widths of an EER page's codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EerScheme {
    /// Bits of a skip.
    pub skip_bits: u32,
    /// Bits of the horizontal sub-pixel position.
    pub horz_bits: u32,
    /// Bits of the vertical sub-pixel position.
    pub vert_bits: u32,
}

impl EerScheme {
    /// The scheme of a page with this compression tag (and, for 65002, its private tags).
    pub fn from_tags(
        compression: u16,
        skip: Option<u32>,
        horz: Option<u32>,
        vert: Option<u32>,
    ) -> Result<EerScheme, String> {
        let s = match compression {
            65000 => EerScheme {
                skip_bits: 8,
                horz_bits: 2,
                vert_bits: 2,
            },
            65001 => EerScheme {
                skip_bits: 7,
                horz_bits: 2,
                vert_bits: 2,
            },
            65002 => EerScheme {
                skip_bits: skip.unwrap_or(7),
                horz_bits: horz.unwrap_or(2),
                vert_bits: vert.unwrap_or(2),
            },
            c => return Err(format!("compression {c} is not EER")),
        };
        let bits = s.skip_bits + s.horz_bits + s.vert_bits;
        if !(2..=14).contains(&s.skip_bits)
            || !(1..=4).contains(&s.horz_bits)
            || !(1..=4).contains(&s.vert_bits)
            || bits > 16
        {
            return Err(format!(
                "unsupported EER code widths: {} skip, {} + {} sub-pixel bits",
                s.skip_bits, s.horz_bits, s.vert_bits
            ));
        }
        Ok(s)
    }
}

/// One detected electron: its physical pixel and its raw sub-pixel codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Electron {
    /// Column of the physical pixel.
    pub x: u32,
    /// Row of the physical pixel.
    pub y: u32,
    /// Horizontal sub-pixel code as stored.
    pub sub_x: u8,
    /// Vertical sub-pixel code as stored.
    pub sub_y: u8,
}

/// At least 56 bits of `data` from bit `at` (least significant first); bits past the end are 0.
#[inline]
fn peek(data: &[u8], at: usize) -> u64 {
    let byte = at / 8;
    let word = match data.get(byte..byte + 8) {
        Some(b) => u64::from_le_bytes(b.try_into().expect("8 bytes")),
        None => {
            let mut w = [0u8; 8];
            let rest = &data[byte.min(data.len())..];
            w[..rest.len()].copy_from_slice(rest);
            u64::from_le_bytes(w)
        }
    };
    word >> (at % 8)
}

/// Decodes one raw frame of `width × height` physical pixels, appending its electrons to
/// `out` in stream order. A stream that places an electron past the last pixel is an error.
pub fn decode_frame(
    data: &[u8],
    width: usize,
    height: usize,
    s: EerScheme,
    out: &mut Vec<Electron>,
) -> Result<(), String> {
    decode_with(data, width * height, s, |pos, code| {
        out.push(Electron {
            x: (pos % width) as u32,
            y: (pos / width) as u32,
            sub_x: (code & ((1 << s.horz_bits) - 1)) as u8,
            sub_y: (code >> s.horz_bits) as u8,
        });
    })
}

/// The decoding loop: `found(pixel, code)` for each electron in stream order (`code` holds the
/// horizontal sub-pixel bits low, the vertical ones above them).
#[inline]
fn decode_with(
    data: &[u8],
    pixels: usize,
    s: EerScheme,
    found: impl FnMut(usize, u32),
) -> Result<(), String> {
    let mut at = Stream::default();
    decode_until(data, pixels, pixels, s, &mut at, found)
}

/// Where a decoding stopped: the bit read next, the pixel reached, whether the frame ended.
#[derive(Debug, Clone, Copy, Default)]
struct Stream {
    bit: usize,
    pixel: usize,
    ended: bool,
}

/// Decodes from `at` up to the first electron at or past pixel `end` (left unread, so the
/// next call starts with it), or to the frame's end.
#[inline]
fn decode_until(
    data: &[u8],
    pixels: usize,
    end: usize,
    s: EerScheme,
    at: &mut Stream,
    mut found: impl FnMut(usize, u32),
) -> Result<(), String> {
    let total = data.len() * 8;
    let max_skip = (1u64 << s.skip_bits) - 1;
    let (skip_bits, sub) = (s.skip_bits as usize, s.horz_bits + s.vert_bits);
    let (mut bit, mut pos) = (at.bit, at.pixel);
    while !at.ended && bit + skip_bits <= total {
        // One read holds the skip and the sub-pixel code after it (at most 16 bits).
        let word = peek(data, bit);
        let skip = word & max_skip;
        let next = pos + skip as usize;
        if next == pixels {
            at.ended = true;
            break;
        }
        if next > pixels {
            *at = Stream {
                bit,
                pixel: pos,
                ended: true,
            };
            return Err(format!(
                "an electron past the last of {pixels} pixels (bit {})",
                bit + skip_bits
            ));
        }
        if skip == max_skip {
            bit += skip_bits;
            pos = next;
            continue;
        }
        if next >= end {
            break;
        }
        if bit + skip_bits + sub as usize > total {
            at.ended = true;
            return Err("the stream ends inside an electron's code".into());
        }
        found(next, ((word >> skip_bits) & ((1 << sub) - 1)) as u32);
        bit += skip_bits + sub as usize;
        pos = next + 1;
    }
    at.bit = bit;
    at.pixel = pos;
    Ok(())
}

/// Where an electron lands in a frame rendered at `up`× (1, 2 or 4, at most `2^bits` in each
/// direction): the one place that knows the sub-pixel convention.
#[derive(Debug, Clone, Copy)]
struct Placement {
    width: usize,
    up: usize,
    out_w: usize,
    s: EerScheme,
    hmask: u32,
    hs: u32,
    vs: u32,
}

impl Placement {
    fn new(width: usize, up: usize, s: EerScheme) -> Placement {
        let k = up.trailing_zeros();
        Placement {
            width,
            up,
            out_w: width * up,
            s,
            hmask: (1 << s.horz_bits) - 1,
            hs: s.horz_bits - k.min(s.horz_bits),
            vs: s.vert_bits - k.min(s.vert_bits),
        }
    }

    /// The rendered index of an electron at physical `pixel` with sub-pixel `code` (the
    /// horizontal bits low): `pixel · up + ((code ^ bits) >> (bits − k))` in each direction.
    #[inline]
    fn index(&self, pixel: usize, code: u32) -> usize {
        if self.up == 1 {
            return pixel;
        }
        let s = self.s;
        let x = (pixel % self.width) * self.up
            + (((code & self.hmask) ^ s.horz_bits) >> self.hs) as usize;
        let y = (pixel / self.width) * self.up
            + (((code >> s.horz_bits) ^ s.vert_bits) >> self.vs) as usize;
        y * self.out_w + x
    }
}

/// Adds each electron to `frame` (`width·up × height·up`, row-major) at its rendered position
/// for an upsampling of `up` (1, 2 or 4, at most `2^bits` in each direction).
pub fn render(electrons: &[Electron], width: usize, up: usize, s: EerScheme, frame: &mut [f32]) {
    let place = Placement::new(width, up, s);
    for e in electrons {
        let pixel = e.y as usize * width + e.x as usize;
        let code = u32::from(e.sub_x) | u32::from(e.sub_y) << s.horz_bits;
        frame[place.index(pixel, code)] += 1.0;
    }
}

/// Why an EER file cannot be read. Every message names the file.
#[derive(Debug)]
pub struct EerError {
    /// The file.
    pub path: PathBuf,
    /// The raw frame (page counted from 0) concerned, if one is.
    pub page: Option<usize>,
    /// What is wrong.
    pub reason: String,
    /// Whether reading failed (rather than the content being wrong).
    pub io: bool,
}

impl std::fmt::Display for EerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: ", self.path.display())?;
        if let Some(p) = self.page {
            write!(f, "page {p}: ")?;
        }
        write!(f, "EER: {}", self.reason)
    }
}

impl std::error::Error for EerError {}

/// How an EER movie is rendered into frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EerOptions {
    /// 1 (the physical 4096²), 2 or 4 (from the sub-pixel bits).
    pub upsample: usize,
    /// Raw frames summed into one rendered frame (a fraction).
    pub group: usize,
}

impl Default for EerOptions {
    fn default() -> EerOptions {
        EerOptions {
            upsample: 1,
            group: 1,
        }
    }
}

/// One raw frame's strip.
#[derive(Debug, Clone, Copy)]
struct Page {
    offset: u64,
    len: u64,
}

/// An open EER movie: every directory read and checked; fractions rendered on demand.
#[derive(Debug)]
pub struct EerReader {
    path: PathBuf,
    file: File,
    pages: Vec<Page>,
    width: usize,
    height: usize,
    scheme: EerScheme,
    opts: EerOptions,
    /// The strips of a group's raw frames, reused from fraction to fraction.
    scratch: Vec<Vec<u8>>,
}

/// A classic TIFF's byte order.
struct Order(bool);

impl Order {
    fn u16(&self, b: &[u8]) -> u16 {
        let a = [b[0], b[1]];
        if self.0 {
            u16::from_le_bytes(a)
        } else {
            u16::from_be_bytes(a)
        }
    }
    fn u32(&self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        if self.0 {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    }
}

impl EerReader {
    /// Opens `path` and reads every page's directory (see the module documentation).
    pub fn open(path: impl AsRef<Path>, opts: EerOptions) -> Result<EerReader, EerError> {
        let path = path.as_ref();
        let err = |page: Option<usize>, reason: String| EerError {
            path: path.to_path_buf(),
            page,
            reason,
            io: false,
        };
        let io = |e: std::io::Error| EerError {
            path: path.to_path_buf(),
            page: None,
            reason: e.to_string(),
            io: true,
        };
        if ![1, 2, 4].contains(&opts.upsample) {
            return Err(err(
                None,
                format!("upsampling must be 1, 2 or 4, got {}", opts.upsample),
            ));
        }
        if opts.group == 0 {
            return Err(err(None, "a group must hold at least one raw frame".into()));
        }
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let read = |at: u64, n: usize| -> Result<Vec<u8>, EerError> {
            if at.checked_add(n as u64).is_none_or(|end| end > len) {
                return Err(err(
                    None,
                    format!("a directory at byte {at} lies past the end ({len} bytes)"),
                ));
            }
            let mut b = vec![0u8; n];
            file.read_exact_at(&mut b, at).map_err(io)?;
            Ok(b)
        };
        let head = read(0, 8)?;
        let order = match &head[..4] {
            b"II*\0" => Order(true),
            b"MM\0*" => Order(false),
            _ => return Err(err(None, "not a classic TIFF (EER files are)".into())),
        };
        let mut next = u64::from(order.u32(&head[4..8]));
        let mut pages = Vec::new();
        let mut geometry: Option<(usize, usize, EerScheme)> = None;
        let mut index = 0usize;
        let mut visited = std::collections::HashSet::new();
        while next != 0 {
            if !visited.insert(next) || index > 1_000_000 {
                return Err(err(
                    Some(index),
                    format!("the directory chain loops back to byte {next}: a damaged file"),
                ));
            }
            let n = usize::from(order.u16(&read(next, 2)?));
            let dir = read(next + 2, n * 12 + 4)?;
            let (mut w, mut h, mut comp) = (0u32, 0u32, 1u16);
            let (mut skip, mut horz, mut vert) = (None, None, None);
            let (mut offsets, mut counts) = (Vec::new(), Vec::new());
            for e in dir[..n * 12].chunks_exact(12) {
                let (tag, ty, count) = (
                    order.u16(&e[0..2]),
                    order.u16(&e[2..4]),
                    order.u32(&e[4..8]) as usize,
                );
                let size = match ty {
                    3 => 2,
                    4 => 4,
                    _ => 0,
                };
                // Values of SHORT or LONG entries, inline or at their offset.
                let values = |what: &str| -> Result<Vec<u32>, EerError> {
                    if size == 0 || count == 0 || count > 1 << 20 {
                        return Err(err(
                            Some(index),
                            format!("tag {tag} ({what}) has type {ty} × {count}"),
                        ));
                    }
                    let raw = if size * count <= 4 {
                        e[8..12].to_vec()
                    } else {
                        read(u64::from(order.u32(&e[8..12])), size * count)?
                    };
                    Ok(raw
                        .chunks_exact(size)
                        .take(count)
                        .map(|c| {
                            if size == 2 {
                                u32::from(order.u16(c))
                            } else {
                                order.u32(c)
                            }
                        })
                        .collect())
                };
                match tag {
                    256 => w = values("width")?[0],
                    257 => h = values("height")?[0],
                    259 => comp = values("compression")?[0] as u16,
                    273 => offsets = values("strip offsets")?,
                    279 => counts = values("strip byte counts")?,
                    65007 => skip = Some(values("skip bits")?[0]),
                    65008 => horz = Some(values("horizontal sub-pixel bits")?[0]),
                    65009 => vert = Some(values("vertical sub-pixel bits")?[0]),
                    _ => {}
                }
            }
            next = u64::from(order.u32(&dir[n * 12..]));
            if index == 0 && !EER_COMPRESSION.contains(&comp) {
                // The integrated image some files start with.
                index += 1;
                continue;
            }
            let scheme =
                EerScheme::from_tags(comp, skip, horz, vert).map_err(|r| err(Some(index), r))?;
            let (w, h) = (w as usize, h as usize);
            if w == 0 || h == 0 || w > 16384 || h > 16384 {
                return Err(err(Some(index), format!("bad dimensions {w}x{h}")));
            }
            match geometry {
                None => geometry = Some((w, h, scheme)),
                Some(g) if g != (w, h, scheme) => {
                    return Err(err(
                        Some(index),
                        format!(
                            "{w}x{h} {scheme:?} differs from the first frame's {}x{} {:?}",
                            g.0, g.1, g.2
                        ),
                    ));
                }
                Some(_) => {}
            }
            if offsets.len() != 1 || counts.len() != 1 {
                return Err(err(
                    Some(index),
                    format!(
                        "{} strips with {} byte counts (an EER frame is one strip)",
                        offsets.len(),
                        counts.len()
                    ),
                ));
            }
            let page = Page {
                offset: u64::from(offsets[0]),
                len: u64::from(counts[0]),
            };
            if page.offset + page.len > len {
                return Err(err(
                    Some(index),
                    format!(
                        "its strip ends at byte {}, past the end of the file ({len} bytes)",
                        page.offset + page.len
                    ),
                ));
            }
            pages.push(page);
            index += 1;
        }
        let Some((width, height, scheme)) = geometry else {
            return Err(err(None, "no EER frame in the file".into()));
        };
        let max_up = 1usize << scheme.horz_bits.min(scheme.vert_bits);
        if opts.upsample > max_up {
            return Err(err(
                None,
                format!(
                    "upsampling {} needs more sub-pixel bits than the file's {:?}",
                    opts.upsample, scheme
                ),
            ));
        }
        if pages.len() < opts.group {
            return Err(err(
                None,
                format!(
                    "{} raw frames, fewer than one group of {}",
                    pages.len(),
                    opts.group
                ),
            ));
        }
        Ok(EerReader {
            path: path.to_path_buf(),
            file,
            pages,
            width,
            height,
            scheme,
            opts,
            scratch: Vec::new(),
        })
    }

    /// The path this reader was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Raw frames in the file.
    pub fn raw_frames(&self) -> usize {
        self.pages.len()
    }

    /// Rendered frames (whole groups).
    pub fn frames(&self) -> usize {
        self.pages.len() / self.opts.group
    }

    /// Rendered width.
    pub fn width(&self) -> usize {
        self.width * self.opts.upsample
    }

    /// Rendered height.
    pub fn height(&self) -> usize {
        self.height * self.opts.upsample
    }

    /// The code widths of the file's frames.
    pub fn scheme(&self) -> EerScheme {
        self.scheme
    }

    fn error(&self, page: Option<usize>, reason: String, io: bool) -> EerError {
        EerError {
            path: self.path.clone(),
            page,
            reason,
            io,
        }
    }

    /// Reads the strip of raw frame `page` into `data`.
    fn read_page(&self, page: usize, data: &mut Vec<u8>) -> Result<(), EerError> {
        let p = self.pages.get(page).ok_or_else(|| {
            self.error(
                Some(page),
                format!("no such raw frame (the file has {})", self.pages.len()),
                false,
            )
        })?;
        data.clear();
        data.resize(p.len as usize, 0);
        self.file
            .read_exact_at(data, p.offset)
            .map_err(|e| self.error(Some(page), e.to_string(), true))
    }

    /// The electrons of raw frame `page` (counted from the first EER page).
    pub fn electrons(&self, page: usize) -> Result<Vec<Electron>, EerError> {
        let mut data = Vec::new();
        self.read_page(page, &mut data)?;
        let mut out = Vec::new();
        decode_frame(&data, self.width, self.height, self.scheme, &mut out)
            .map_err(|reason| self.error(Some(page), reason, false))?;
        Ok(out)
    }

    /// Rendered frame `i`: the counts of raw frames `i·group .. (i+1)·group`.
    pub fn read_frame(&mut self, i: usize) -> Result<Vec<f32>, EerError> {
        let mut frame = Vec::new();
        self.read_frame_into(i, &mut frame)?;
        Ok(frame)
    }

    /// [`Self::read_frame`] into `frame` (its memory reused). The group's strips are read
    /// into buffers kept between calls, then decoded band by band of rows: for each band every
    /// raw frame's stream is decoded up to the band's end, straight into the band, which stays
    /// in the cache meanwhile (one raw frame after another would sweep the whole frame each,
    /// and lists of decoded positions would cost as much memory traffic again).
    pub fn read_frame_into(&mut self, i: usize, frame: &mut Vec<f32>) -> Result<(), EerError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.resize_with(self.opts.group, Vec::new);
        let first_page = i * self.opts.group;
        let read: Result<(), EerError> = scratch
            .iter_mut()
            .enumerate()
            .try_for_each(|(k, data)| self.read_page(first_page + k, data));
        let result = read.and_then(|()| self.render_group(first_page, &scratch, frame));
        self.scratch = scratch;
        result
    }

    fn render_group(
        &self,
        first_page: usize,
        strips: &[Vec<u8>],
        frame: &mut Vec<f32>,
    ) -> Result<(), EerError> {
        let (w, up, s) = (self.width, self.opts.upsample, self.scheme);
        let pixels = w * self.height;
        let place = Placement::new(w, up, s);
        frame.clear();
        frame.resize(self.width() * self.height(), 0.0);
        // Physical rows per band: about 256 KiB of rendered output.
        let band = (65536 / (w * up * up)).max(1);
        let mut streams = vec![Stream::default(); strips.len()];
        for first in (0..self.height).step_by(band) {
            let end = (first + band).min(self.height) * w;
            for (k, (data, at)) in strips.iter().zip(streams.iter_mut()).enumerate() {
                decode_until(data, pixels, end, s, at, |p, cd| {
                    frame[place.index(p, cd)] += 1.0
                })
                .map_err(|reason| self.error(Some(first_page + k), reason, false))?;
            }
        }
        Ok(())
    }
}

/// Appends `n` bits of `v` to a little-endian bit stream (least significant bit first).
fn put(bits: &mut Vec<bool>, v: u32, n: u32) {
    bits.extend((0..n).map(|i| (v >> i) & 1 == 1));
}

/// The bit stream of one raw frame holding `electrons` (at most one per physical pixel, in any
/// order), ended by the skip that reaches the last pixel, padded to an even number of bytes.
/// For tests and simulations (a detector writes the real ones).
///
/// # Panics
/// If two electrons share a pixel.
pub fn encode_frame(electrons: &[Electron], width: usize, height: usize, s: EerScheme) -> Vec<u8> {
    let mut sorted = electrons.to_vec();
    sorted.sort_by_key(|e| (e.y, e.x));
    let max = (1u32 << s.skip_bits) - 1;
    let mut bits = Vec::new();
    let mut pos = 0usize;
    let skip_to = |bits: &mut Vec<bool>, target: usize, pos: usize| {
        let mut skip = (target - pos) as u32;
        while skip >= max {
            put(bits, max, s.skip_bits);
            skip -= max;
        }
        put(bits, skip, s.skip_bits);
    };
    for e in &sorted {
        let p = e.y as usize * width + e.x as usize;
        assert!(p >= pos, "two electrons in one pixel");
        skip_to(&mut bits, p, pos);
        put(&mut bits, u32::from(e.sub_x), s.horz_bits);
        put(&mut bits, u32::from(e.sub_y), s.vert_bits);
        pos = p + 1;
    }
    skip_to(&mut bits, width * height, pos);
    while bits.len() % 16 != 0 {
        bits.push(false);
    }
    bits.chunks(8)
        .map(|c| c.iter().enumerate().map(|(i, &b)| u8::from(b) << i).sum())
        .collect()
}

/// Writes a little-endian EER TIFF: optionally an uncompressed 8-bit integrated image first,
/// then one page per raw frame with `compression` (and the bit-width tags for 65002). For tests
/// and simulations.
pub fn write_eer(
    path: &Path,
    frames: &[Vec<Electron>],
    width: usize,
    height: usize,
    compression: u16,
    s: EerScheme,
    integrated: bool,
) -> std::io::Result<()> {
    let pages: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| encode_frame(f, width, height, s))
        .collect();
    write_eer_pages(path, &pages, width, height, compression, s, integrated)
}

/// [`write_eer`] with each raw frame already encoded ([`encode_frame`]), so a long movie need
/// not hold its electrons.
pub fn write_eer_pages(
    path: &Path,
    encoded: &[Vec<u8>],
    width: usize,
    height: usize,
    compression: u16,
    s: EerScheme,
    integrated: bool,
) -> std::io::Result<()> {
    let mut file = b"II*\0\0\0\0\0".to_vec();
    let mut pages: Vec<(u16, &[u8])> = Vec::new();
    let flat = vec![1u8; width * height];
    if integrated {
        pages.push((1, &flat));
    }
    for f in encoded {
        pages.push((compression, f));
    }
    let mut link = 4usize; // where the offset of the next directory goes
    for (comp, data) in pages {
        let strip = file.len();
        file.extend_from_slice(data);
        if file.len() % 2 == 1 {
            file.push(0);
        }
        let mut entries: Vec<(u16, u16, u32)> = vec![
            (256, 4, width as u32),
            (257, 4, height as u32),
            (258, 3, if comp == 1 { 8 } else { 1 }),
            (259, 3, u32::from(comp)),
            (262, 3, 1),
            (273, 4, strip as u32),
            (277, 3, 1),
            (278, 4, height as u32),
            (279, 4, data.len() as u32),
        ];
        if comp == 65002 {
            entries.extend([
                (65007, 3, s.skip_bits),
                (65008, 3, s.horz_bits),
                (65009, 3, s.vert_bits),
            ]);
        }
        let dir = file.len();
        file[link..link + 4].copy_from_slice(&(dir as u32).to_le_bytes());
        file.extend((entries.len() as u16).to_le_bytes());
        for (tag, ty, v) in entries {
            file.extend(tag.to_le_bytes());
            file.extend(ty.to_le_bytes());
            file.extend(1u32.to_le_bytes());
            if ty == 3 {
                file.extend((v as u16).to_le_bytes());
                file.extend([0, 0]);
            } else {
                file.extend(v.to_le_bytes());
            }
        }
        link = file.len();
        file.extend(0u32.to_le_bytes());
    }
    super::atomic::write_atomic(path, |w| std::io::Write::write_all(w, &file))
}

#[cfg(test)]
#[path = "eer_tests.rs"]
mod tests;

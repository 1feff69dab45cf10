use super::*;

use std::io::Cursor;

use ::tiff::encoder::colortype::{ColorType, Gray8, Gray16, Gray32Float};
use ::tiff::encoder::compression::{Deflate, Lzw, Uncompressed};
use ::tiff::encoder::{TiffEncoder, TiffValue};

use crate::test_util::TempDir;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Comp {
    None,
    Lzw,
    Deflate,
}

/// Encodes pages of (width, height, data) as one TIFF in memory.
pub(crate) fn encode<C: ColorType>(pages: &[(u32, u32, Vec<C::Inner>)], comp: Comp) -> Vec<u8>
where
    [C::Inner]: TiffValue,
{
    let mut buf = Cursor::new(Vec::new());
    {
        let mut enc = TiffEncoder::new(&mut buf).unwrap();
        for (w, h, data) in pages {
            match comp {
                Comp::None => enc
                    .write_image_with_compression::<C, _>(*w, *h, Uncompressed, data)
                    .unwrap(),
                Comp::Lzw => enc
                    .write_image_with_compression::<C, _>(*w, *h, Lzw, data)
                    .unwrap(),
                Comp::Deflate => enc
                    .write_image_with_compression::<C, _>(*w, *h, Deflate::default(), data)
                    .unwrap(),
            }
        }
    }
    buf.into_inner()
}

/// Writes pages of one size as a TIFF file.
pub(crate) fn write_tiff<C: ColorType>(
    path: &Path,
    w: u32,
    h: u32,
    frames: &[Vec<C::Inner>],
    comp: Comp,
) where
    [C::Inner]: TiffValue,
    C::Inner: Clone,
{
    let pages: Vec<_> = frames.iter().map(|f| (w, h, f.clone())).collect();
    std::fs::write(path, encode::<C>(&pages, comp)).unwrap();
}

fn frames_u16(w: usize, h: usize, n: usize) -> Vec<Vec<u16>> {
    (0..n)
        .map(|z| {
            (0..w * h)
                .map(|i| ((i * 7919 + z * 104_729) % 65_536) as u16)
                .collect()
        })
        .collect()
}

fn frames_u8(w: usize, h: usize, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|z| {
            (0..w * h)
                .map(|i| ((i * 31 + z * 17) % 256) as u8)
                .collect()
        })
        .collect()
}

fn as_f32<T: Copy + Into<f32>>(v: &[T]) -> Vec<f32> {
    v.iter().map(|&x| x.into()).collect()
}

#[test]
fn u16_roundtrip_every_compression_multi_page() {
    let dir = TempDir::new("tiff16");
    // 300x200 u16 is 120 kB a page: several strips.
    let (w, h, n) = (300usize, 200usize, 3usize);
    let frames = frames_u16(w, h, n);
    for comp in [Comp::None, Comp::Lzw, Comp::Deflate] {
        let p = dir.join(&format!("m-{comp:?}.tif"));
        write_tiff::<Gray16>(&p, w as u32, h as u32, &frames, comp);
        let mut r = TiffReader::open(&p).unwrap();
        assert_eq!((r.frames(), r.width(), r.height()), (n, w, h), "{comp:?}");
        assert_eq!(r.sample_format(), TiffSampleFormat::U16);
        // Out of order on purpose: each frame is read alone.
        for i in [2, 0, 1] {
            assert_eq!(r.read_frame(i).unwrap(), as_f32(&frames[i]), "{comp:?} {i}");
        }
        let all = r.read_all().unwrap();
        let expected: Vec<f32> = frames.iter().flat_map(|f| as_f32(f)).collect();
        assert_eq!(all, expected, "{comp:?}");
    }
}

#[test]
fn u8_roundtrip_every_compression_multi_page() {
    let dir = TempDir::new("tiff8");
    let (w, h, n) = (37usize, 23usize, 4usize);
    let frames = frames_u8(w, h, n);
    for comp in [Comp::None, Comp::Lzw, Comp::Deflate] {
        let p = dir.join(&format!("m-{comp:?}.tiff"));
        write_tiff::<Gray8>(&p, w as u32, h as u32, &frames, comp);
        let mut r = TiffReader::open(&p).unwrap();
        assert_eq!((r.frames(), r.width(), r.height()), (n, w, h));
        assert_eq!(r.sample_format(), TiffSampleFormat::U8);
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(r.read_frame(i).unwrap(), as_f32(f), "{comp:?} {i}");
        }
    }
}

#[test]
fn f32_roundtrip() {
    let dir = TempDir::new("tiff32");
    let frames: Vec<Vec<f32>> = (0..2)
        .map(|z| (0..12).map(|i| i as f32 * -0.37 + z as f32 * 1e6).collect())
        .collect();
    let p = dir.join("f.tif");
    write_tiff::<Gray32Float>(&p, 4, 3, &frames, Comp::Deflate);
    let mut r = TiffReader::open(&p).unwrap();
    assert_eq!(r.sample_format(), TiffSampleFormat::F32);
    assert_eq!(r.read_frame(1).unwrap(), frames[1]);
    assert_eq!(r.read_frame(0).unwrap(), frames[0]);
}

#[test]
fn frame_out_of_range() {
    let dir = TempDir::new("tiffrange");
    let p = dir.join("m.tif");
    write_tiff::<Gray8>(&p, 4, 4, &frames_u8(4, 4, 2), Comp::None);
    let mut r = TiffReader::open(&p).unwrap();
    let e = r.read_frame(2).unwrap_err();
    assert!(
        matches!(
            e,
            TiffError::FrameOutOfRange {
                frame: 2,
                frames: 2,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("m.tif"), "{e}");
}

#[test]
fn wrong_page_size_is_refused_naming_file_and_page() {
    let dir = TempDir::new("tiffsize");
    let p = dir.join("mixed.tif");
    let pages = vec![
        (8, 6, vec![1u16; 48]),
        (8, 6, vec![2u16; 48]),
        (6, 8, vec![3u16; 48]),
    ];
    std::fs::write(&p, encode::<Gray16>(&pages, Comp::Lzw)).unwrap();
    let e = TiffReader::open(&p).unwrap_err();
    assert!(
        matches!(
            e,
            TiffError::PageSizeMismatch {
                page: 2,
                width: 6,
                height: 8,
                first_width: 8,
                first_height: 6,
                ..
            }
        ),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains("mixed.tif") && msg.contains("page 2"), "{msg}");
}

#[test]
fn mixed_sample_formats_are_refused() {
    let dir = TempDir::new("tiffmix");
    let p = dir.join("mix.tif");
    let mut bytes = Cursor::new(Vec::new());
    {
        let mut enc = TiffEncoder::new(&mut bytes).unwrap();
        enc.write_image::<Gray8>(2, 2, &[1, 2, 3, 4]).unwrap();
        enc.write_image::<Gray16>(2, 2, &[1, 2, 3, 4]).unwrap();
    }
    std::fs::write(&p, bytes.into_inner()).unwrap();
    let e = TiffReader::open(&p).unwrap_err();
    assert!(
        matches!(e, TiffError::PageFormatMismatch { page: 1, .. }),
        "{e:?}"
    );
}

#[test]
fn truncated_file_is_refused_before_reading() {
    let dir = TempDir::new("tifftrunc");
    let (w, h) = (64usize, 64usize);
    let good = encode::<Gray16>(
        &[(w as u32, h as u32, frames_u16(w, h, 1).remove(0))],
        Comp::None,
    );
    // The encoder writes the image data first and the directory last, so every cut loses the
    // directory or part of it: an error naming the file, never a panic.
    for cut in [4usize, 7, 8, 100, good.len() / 2, good.len() - 1] {
        let p = dir.join(&format!("t{cut}.tif"));
        std::fs::write(&p, &good[..cut]).unwrap();
        let e = match TiffReader::open(&p) {
            Err(e) => e,
            Ok(mut r) => r.read_frame(0).unwrap_err(),
        };
        assert!(e.to_string().contains(&format!("t{cut}.tif")), "{e}");
    }
}

/// Byte offset of the value of the first directory entry with `tag` (little-endian file,
/// SHORT or LONG with one value), found by walking the first directory.
fn entry_value_offset(b: &[u8], tag: u16) -> usize {
    assert_eq!(&b[..4], b"II*\0");
    let ifd = u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
    let n = u16::from_le_bytes([b[ifd], b[ifd + 1]]) as usize;
    for k in 0..n {
        let e = ifd + 2 + 12 * k;
        if u16::from_le_bytes([b[e], b[e + 1]]) == tag {
            return e + 8;
        }
    }
    panic!("tag {tag} not found");
}

#[test]
fn strip_past_end_of_file_is_truncated_error() {
    let dir = TempDir::new("tiffstrip");
    let mut b = encode::<Gray8>(&[(16, 16, vec![9u8; 256])], Comp::None);
    // StripOffsets (273), a single LONG: point it past the end of the file.
    let o = entry_value_offset(&b, 273);
    let past = (b.len() as u32).to_le_bytes();
    b[o..o + 4].copy_from_slice(&past);
    let p = dir.join("strip.tif");
    std::fs::write(&p, &b).unwrap();
    let e = TiffReader::open(&p).unwrap_err();
    assert!(matches!(e, TiffError::Truncated { page: 0, .. }), "{e:?}");
    assert!(e.to_string().contains("strip.tif"), "{e}");
}

#[test]
fn corrupt_compressed_data_is_an_error_naming_the_page() {
    let dir = TempDir::new("tiffcorrupt");
    let frames = frames_u16(40, 30, 2);
    let mut b = encode::<Gray16>(
        &frames
            .iter()
            .map(|f| (40, 30, f.clone()))
            .collect::<Vec<_>>(),
        Comp::Deflate,
    );
    // The first page's data start at byte 8: overwrite them with garbage.
    for (i, v) in b[8..60].iter_mut().enumerate() {
        *v = (i * 37 + 11) as u8;
    }
    let p = dir.join("bad.tif");
    std::fs::write(&p, &b).unwrap();
    let mut r = TiffReader::open(&p).unwrap();
    let e = r.read_frame(0).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("bad.tif") && msg.contains("page 0"), "{msg}");
}

#[test]
fn not_a_tiff_is_an_error() {
    let dir = TempDir::new("tiffjunk");
    let p = dir.join("junk.tif");
    std::fs::write(&p, b"this is not a tiff file at all").unwrap();
    let e = TiffReader::open(&p).unwrap_err();
    assert!(matches!(e, TiffError::Decode { .. }), "{e:?}");
    assert!(e.to_string().contains("junk.tif"));
    assert!(!is_tiff(&p).unwrap());
}

#[test]
fn huge_dimensions_are_refused() {
    let dir = TempDir::new("tiffhuge");
    let mut b = encode::<Gray8>(&[(4, 4, vec![0u8; 16])], Comp::None);
    // ImageWidth (256) as written by the encoder: a LONG.
    let o = entry_value_offset(&b, 256);
    b[o..o + 4].copy_from_slice(&100_000u32.to_le_bytes());
    let p = dir.join("huge.tif");
    std::fs::write(&p, &b).unwrap();
    let e = TiffReader::open(&p).unwrap_err();
    assert!(
        matches!(
            e,
            TiffError::BadDimensions { width: 100_000, .. } | TiffError::Decode { .. }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("huge.tif"));
}

#[test]
fn a_decompression_bomb_is_refused_before_anything_is_allocated() {
    let dir = TempDir::new("tiffbomb");
    // Zeros compress as far as each scheme goes: such files still open.
    for comp in [Comp::Lzw, Comp::Deflate] {
        let b = encode::<Gray16>(&[(512, 512, vec![0u16; 512 * 512])], comp);
        let p = dir.join("zeros.tif");
        std::fs::write(&p, &b).unwrap();
        let mut r = TiffReader::open(&p).unwrap();
        assert!(r.read_frame(0).unwrap().iter().all(|&v| v == 0.0));
    }
    // The same few hundred bytes declared as a 65536² page (16 GiB as f32): refused at open.
    let mut b = encode::<Gray16>(&[(64, 64, vec![0u16; 64 * 64])], Comp::Deflate);
    for tag in [256, 257, 278] {
        let o = entry_value_offset(&b, tag);
        b[o..o + 4].copy_from_slice(&65_536u32.to_le_bytes());
    }
    let p = dir.join("bomb.tif");
    std::fs::write(&p, &b).unwrap();
    let e = TiffReader::open(&p).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, TiffError::Corrupt { page: 0, .. }), "{e:?}");
    assert!(
        msg.contains("bomb.tif") && msg.contains("decompression bomb"),
        "{msg}"
    );
}

#[test]
fn eer_is_refused_by_extension_and_by_compression_tag() {
    let dir = TempDir::new("tiffeer");
    let b = encode::<Gray8>(&[(4, 4, vec![0u8; 16])], Comp::None);
    let by_ext = dir.join("movie.EER");
    std::fs::write(&by_ext, &b).unwrap();
    let e = TiffReader::open(&by_ext).unwrap_err();
    assert!(matches!(e, TiffError::Eer { .. }));
    assert!(e.to_string().contains(EER_UNSUPPORTED), "{e}");
    // open_movie reads it as EER, and this one is not (an 8-bit uncompressed page only).
    let e = open_movie(&by_ext).unwrap_err();
    assert!(e.to_string().contains("no EER frame"), "{e}");

    for code in EER_COMPRESSION {
        let mut b = b.clone();
        let o = entry_value_offset(&b, 259);
        b[o..o + 2].copy_from_slice(&code.to_le_bytes());
        let p = dir.join(&format!("eer{code}.tif"));
        std::fs::write(&p, &b).unwrap();
        let e = TiffReader::open(&p).unwrap_err();
        assert!(matches!(e, TiffError::Eer { .. }), "{code}: {e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains(EER_UNSUPPORTED) && msg.contains("eer"),
            "{msg}"
        );
    }
}

#[test]
fn colour_is_unsupported() {
    let dir = TempDir::new("tiffrgb");
    let mut buf = Cursor::new(Vec::new());
    TiffEncoder::new(&mut buf)
        .unwrap()
        .write_image::<::tiff::encoder::colortype::RGB8>(2, 1, &[1, 2, 3, 4, 5, 6])
        .unwrap();
    let p = dir.join("rgb.tif");
    std::fs::write(&p, buf.into_inner()).unwrap();
    let e = TiffReader::open(&p).unwrap_err();
    assert!(matches!(e, TiffError::Unsupported { page: 0, .. }), "{e:?}");
}

#[test]
fn open_movie_dispatches_on_extension() {
    let dir = TempDir::new("movie");
    let frames = frames_u16(5, 4, 3);
    let t = dir.join("m.TIFF");
    write_tiff::<Gray16>(&t, 5, 4, &frames, Comp::Lzw);
    let mut m = open_movie(&t).unwrap();
    assert!(matches!(m, MovieReader::Tiff(_)));
    assert_eq!((m.frames(), m.width(), m.height()), (3, 5, 4));
    assert_eq!(m.read_frame(1).unwrap(), as_f32(&frames[1]));
    assert_eq!(m.path(), t.as_path());

    let data: Vec<f32> = (0..5 * 4 * 3).map(|i| i as f32).collect();
    for name in ["m.mrc", "m.mrcs", "m.st"] {
        let p = dir.join(name);
        crate::io::mrc::write_mrc(&p, &data, 5, 4, 3, crate::io::mrc::WriteMode::Float32, 1.0)
            .unwrap();
        let mut m = open_movie(&p).unwrap();
        assert!(matches!(m, MovieReader::Mrc(_)));
        assert_eq!((m.frames(), m.width(), m.height()), (3, 5, 4));
        assert_eq!(m.read_frame(2).unwrap(), data[40..60].to_vec());
        assert_eq!(m.read_all().unwrap(), data);
    }

    let e = open_movie(dir.join("m.png")).unwrap_err();
    assert!(matches!(e, MovieError::UnknownFormat { .. }));
    assert!(e.to_string().contains("m.png"));
}

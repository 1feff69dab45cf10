use super::*;

use crate::test_util::TempDir;

/// A `w x h` image whose pixels vary in both directions and wrap around 255.
fn gradient(w: usize, h: usize) -> Vec<u8> {
    (0..h)
        .flat_map(|y| (0..w).map(move |x| ((3 * x + 7 * y) % 256) as u8))
        .collect()
}

/// One chunk as bytes: length, type, data, CRC.
fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    write_chunk(&mut v, kind, data).unwrap();
    v
}

/// The Paeth predictor written out as in the PNG specification (section 9.4), independently of
/// the decoder's.
fn spec_paeth(a: u8, b: u8, c: u8) -> u8 {
    let p = i32::from(a) + i32::from(b) - i32::from(c);
    let pa = (p - i32::from(a)).abs();
    let pb = (p - i32::from(b)).abs();
    let pc = (p - i32::from(c)).abs();
    if pa <= pb && pa <= pc {
        a
    } else if pb <= pc {
        b
    } else {
        c
    }
}

/// The forward filter of one row (bytes per pixel 1), the inverse of `unfilter`.
fn filter_row(kind: u8, row: &[u8], prev: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    for i in 0..row.len() {
        let a = if i > 0 { row[i - 1] } else { 0 };
        let b = prev[i];
        let c = if i > 0 { prev[i - 1] } else { 0 };
        let pred = match kind {
            0 => 0,
            1 => a,
            2 => b,
            3 => ((u16::from(a) + u16::from(b)) / 2) as u8,
            4 => spec_paeth(a, b, c),
            _ => unreachable!(),
        };
        out.push(row[i].wrapping_sub(pred));
    }
    out
}

/// A hand-built PNG file: IHDR fields as given, rows filtered with `filters[y % len]`.
fn hand_png(w: usize, h: usize, pixels: &[u8], filters: &[u8], depth: u8, colour: u8) -> Vec<u8> {
    let mut raw = Vec::new();
    let zero = vec![0u8; w];
    for y in 0..h {
        let prev = if y == 0 {
            &zero[..]
        } else {
            &pixels[(y - 1) * w..y * w]
        };
        raw.extend(filter_row(
            filters[y % filters.len()],
            &pixels[y * w..(y + 1) * w],
            prev,
        ));
    }
    let mut z = ZlibEncoder::new(Vec::new(), Compression::best());
    z.write_all(&raw).unwrap();
    let compressed = z.finish().unwrap();
    let mut ihdr = vec![];
    ihdr.extend((w as u32).to_be_bytes());
    ihdr.extend((h as u32).to_be_bytes());
    ihdr.extend([depth, colour, 0, 0, 0]);
    let mut file = SIGNATURE.to_vec();
    file.extend(chunk(b"IHDR", &ihdr));
    file.extend(chunk(b"tEXt", b"Comment\0hand made"));
    // Two IDAT chunks, to check they are concatenated.
    let half = compressed.len() / 2;
    file.extend(chunk(b"IDAT", &compressed[..half]));
    file.extend(chunk(b"IDAT", &compressed[half..]));
    file.extend(chunk(b"IEND", &[]));
    file
}

#[test]
fn gradient_image_roundtrips() {
    let tmp = TempDir::new("png-roundtrip");
    for (w, h) in [(1, 1), (1, 7), (9, 1), (300, 200), (257, 13)] {
        let pixels = gradient(w, h);
        let path = tmp.join(&format!("g{w}x{h}.png"));
        write_png_gray8(&path, &pixels, w, h).unwrap();
        let (back, bw, bh) = read_png_gray8(&path).unwrap();
        assert_eq!((bw, bh), (w, h));
        assert_eq!(back, pixels, "{w}x{h}");
    }
    // Only the finished files, no temporary left behind.
    assert_eq!(tmp.entries().len(), 5);
}

#[test]
fn written_file_has_the_expected_layout() {
    let tmp = TempDir::new("png-layout");
    let path = tmp.join("a.png");
    write_png_gray8(&path, &gradient(4, 3), 4, 3).unwrap();
    let b = std::fs::read(&path).unwrap();
    assert_eq!(b[..8], SIGNATURE);
    assert_eq!(&b[8..16], &[0, 0, 0, 13, b'I', b'H', b'D', b'R']);
    assert_eq!(&b[16..29], &[0, 0, 0, 4, 0, 0, 0, 3, 8, 0, 0, 0, 0]);
    assert_eq!(
        &b[b.len() - 12..b.len() - 4],
        &[0, 0, 0, 0, b'I', b'E', b'N', b'D']
    );
    assert_eq!(&b[b.len() - 4..], &[0xAE, 0x42, 0x60, 0x82]); // the well-known IEND CRC
}

#[test]
fn all_five_filter_types_are_decoded() {
    let tmp = TempDir::new("png-filters");
    let (w, h) = (23, 17);
    // Values that exercise wrapping and the Paeth tie-breaks.
    let pixels: Vec<u8> = (0..w * h)
        .map(|i| ((i * 37 + (i / w) * 101) % 256) as u8)
        .collect();
    for filters in [&[0u8][..], &[1], &[2], &[3], &[4], &[0, 1, 2, 3, 4]] {
        let path = tmp.join("f.png");
        std::fs::write(&path, hand_png(w, h, &pixels, filters, 8, 0)).unwrap();
        let (back, bw, bh) = read_png_gray8(&path).unwrap();
        assert_eq!((bw, bh), (w, h));
        assert_eq!(back, pixels, "filters {filters:?}");
    }
}

#[test]
fn unknown_filter_type_is_an_error() {
    let tmp = TempDir::new("png-badfilter");
    let path = tmp.join("f.png");
    let mut file = hand_png(3, 2, &[1, 2, 3, 4, 5, 6], &[0], 8, 0);
    // Rebuild with filter byte 5 on the second row.
    let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
    z.write_all(&[0, 1, 2, 3, 5, 4, 5, 6]).unwrap();
    let idat = z.finish().unwrap();
    file.truncate(8 + 25);
    file.extend(chunk(b"IDAT", &idat));
    file.extend(chunk(b"IEND", &[]));
    std::fs::write(&path, file).unwrap();
    let e = read_png_gray8(&path).unwrap_err();
    assert!(matches!(e, PngError::Corrupt { .. }), "{e}");
    assert!(
        e.to_string().contains("row 1: unknown filter type 5"),
        "{e}"
    );
}

#[test]
fn corrupted_crc_is_an_error() {
    let tmp = TempDir::new("png-crc");
    let path = tmp.join("c.png");
    write_png_gray8(&path, &gradient(40, 30), 40, 30).unwrap();
    let good = std::fs::read(&path).unwrap();

    // A flipped bit inside the IDAT data.
    let mut bad = good.clone();
    bad[33 + 8 + 3] ^= 0x10;
    std::fs::write(&path, &bad).unwrap();
    let e = read_png_gray8(&path).unwrap_err();
    match &e {
        PngError::BadCrc { chunk, path: p, .. } => {
            assert_eq!(chunk, "IDAT");
            assert_eq!(p, &path);
        }
        other => panic!("expected BadCrc, got {other}"),
    }
    assert!(e.to_string().contains("c.png"), "{e}");

    // A flipped bit in the stored IHDR CRC.
    let mut bad = good.clone();
    bad[29] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    let e = read_png_gray8(&path).unwrap_err();
    assert!(
        matches!(&e, PngError::BadCrc { chunk, .. } if chunk == "IHDR"),
        "{e}"
    );
}

#[test]
fn truncated_or_foreign_files_are_errors() {
    let tmp = TempDir::new("png-trunc");
    let path = tmp.join("t.png");
    write_png_gray8(&path, &gradient(40, 30), 40, 30).unwrap();
    let good = std::fs::read(&path).unwrap();
    for cut in [0, 5, 8, 20, 33, good.len() - 12, good.len() - 1] {
        std::fs::write(&path, &good[..cut]).unwrap();
        let e = read_png_gray8(&path).unwrap_err();
        assert!(matches!(e, PngError::Corrupt { .. }), "cut {cut}: {e}");
    }
    std::fs::write(&path, b"GIF89a and then some more bytes").unwrap();
    let e = read_png_gray8(&path).unwrap_err();
    assert!(e.to_string().contains("bad signature"), "{e}");

    let e = read_png_gray8(tmp.join("missing.png")).unwrap_err();
    assert!(matches!(e, PngError::Io { .. }), "{e}");
    assert!(e.to_string().contains("missing.png"), "{e}");
}

#[test]
fn other_pixel_formats_are_unsupported() {
    let tmp = TempDir::new("png-unsup");
    let path = tmp.join("u.png");
    for (depth, colour) in [(16, 0), (8, 2), (8, 4), (1, 0)] {
        std::fs::write(&path, hand_png(2, 2, &[1, 2, 3, 4], &[0], depth, colour)).unwrap();
        let e = read_png_gray8(&path).unwrap_err();
        assert!(matches!(e, PngError::Unsupported { .. }), "{e}");
        assert!(e.to_string().contains(&format!("bit depth {depth}")), "{e}");
    }
}

#[test]
fn bad_dimensions_are_rejected_and_nothing_is_written() {
    let tmp = TempDir::new("png-dims");
    let path = tmp.join("d.png");
    let cases: [(usize, usize, usize); 6] = [
        (0, 5, 0),
        (5, 0, 0),
        (65_536, 1, 65_536),
        (1, 65_536, 65_536),
        (4, 4, 15),
        (4, 4, 17),
    ];
    for (w, h, n) in cases {
        let e = write_png_gray8(&path, &vec![0u8; n], w, h).unwrap_err();
        assert!(matches!(e, PngError::InvalidWrite { .. }), "{w}x{h}: {e}");
        assert!(e.to_string().contains("d.png"), "{e}");
        assert!(e.to_string().contains(&format!("{w}x{h}")), "{e}");
    }
    assert!(tmp.entries().is_empty());
    // The largest allowed width is fine.
    write_png_gray8(&path, &vec![7u8; MAX_DIM], MAX_DIM, 1).unwrap();
    assert_eq!(read_png_gray8(&path).unwrap().0, vec![7u8; MAX_DIM]);
}

#[test]
fn failed_write_leaves_no_file() {
    let tmp = TempDir::new("png-fail");
    // The destination is an existing non-empty directory: the rename fails.
    let dest = tmp.join("dir.png");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("keep"), b"x").unwrap();
    let e = write_png_gray8(&dest, &[1, 2, 3, 4], 2, 2).unwrap_err();
    assert!(matches!(e, PngError::Io { .. }), "{e}");
    assert_eq!(tmp.entries(), vec!["dir.png".to_string()]);

    // A missing directory: nothing can be created.
    let e = write_png_gray8(tmp.join("no/such/dir/x.png"), &[1], 1, 1).unwrap_err();
    assert!(e.to_string().contains("x.png"), "{e}");
}

/// Decodes a file we wrote with Python's zlib (independent CRC and inflate) and compares.
/// Skipped, with a message, where python3 is not available.
#[test]
fn python_zlib_decodes_what_we_write() {
    let script = r#"
import sys, zlib, struct
b = open(sys.argv[1], 'rb').read()
assert b[:8] == b'\x89PNG\r\n\x1a\n', 'signature'
pos, idat, hdr = 8, b'', None
while pos < len(b):
    n, = struct.unpack('>I', b[pos:pos+4]); kind = b[pos+4:pos+8]; data = b[pos+8:pos+8+n]
    crc, = struct.unpack('>I', b[pos+8+n:pos+12+n])
    assert zlib.crc32(kind + data) & 0xffffffff == crc, kind
    if kind == b'IHDR': hdr = struct.unpack('>IIBBBBB', data)
    if kind == b'IDAT': idat += data
    pos += 12 + n
    if kind == b'IEND': break
assert pos == len(b), 'trailing bytes'
w, h, depth, colour, comp, filt, inter = hdr
assert (depth, colour, comp, filt, inter) == (8, 0, 0, 0, 0), hdr
raw = zlib.decompress(idat)
assert len(raw) == (w + 1) * h
rows = [raw[y*(w+1):(y+1)*(w+1)] for y in range(h)]
assert all(r[0] == 0 for r in rows)
print(w, h, b''.join(r[1:] for r in rows).hex())
"#;
    let tmp = TempDir::new("png-python");
    let (w, h) = (37, 23);
    let pixels = gradient(w, h);
    let path = tmp.join("p.png");
    write_png_gray8(&path, &pixels, w, h).unwrap();
    let out = match std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("skipped: python3 not available ({e})");
            return;
        }
    };
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hex: String = pixels.iter().map(|p| format!("{p:02x}")).collect();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{w} {h} {hex}")
    );
}

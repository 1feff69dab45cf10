use super::*;

use crate::test_util::TempDir;

/// A hand-built header in the given byte order.
struct Hdr {
    nx: i32,
    ny: i32,
    nz: i32,
    mode: i32,
    m: [i32; 3],
    cella: [f32; 3],
    nsymbt: i32,
    exttyp: [u8; 4],
    stamp: [u8; 4],
    big: bool,
}

impl Hdr {
    fn new(nx: i32, ny: i32, nz: i32, mode: i32) -> Hdr {
        Hdr {
            nx,
            ny,
            nz,
            mode,
            m: [nx, ny, nz],
            cella: [nx as f32 * 1.5, ny as f32 * 1.5, nz as f32 * 1.5],
            nsymbt: 0,
            exttyp: [0; 4],
            stamp: [0x44, 0x44, 0, 0],
            big: false,
        }
    }
    fn bytes(&self) -> Vec<u8> {
        let mut h = vec![0u8; 1024];
        let big = self.big;
        let mut pi = |o: usize, v: i32| {
            let b = if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            h[o..o + 4].copy_from_slice(&b);
        };
        pi(0, self.nx);
        pi(4, self.ny);
        pi(8, self.nz);
        pi(12, self.mode);
        pi(28, self.m[0]);
        pi(32, self.m[1]);
        pi(36, self.m[2]);
        pi(92, self.nsymbt);
        pi(108, 20140);
        for (i, c) in self.cella.iter().enumerate() {
            let b = if big {
                c.to_be_bytes()
            } else {
                c.to_le_bytes()
            };
            h[40 + 4 * i..44 + 4 * i].copy_from_slice(&b);
        }
        h[104..108].copy_from_slice(&self.exttyp);
        h[208..212].copy_from_slice(b"MAP ");
        h[212..216].copy_from_slice(&self.stamp);
        h
    }
}

fn write_file(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn ramp(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
        .collect()
}

#[test]
fn round_trip_float32() {
    let d = TempDir::new("rt32");
    let p = d.join("a.mrc");
    let data = ramp(7 * 5 * 3);
    write_mrc(&p, &data, 7, 5, 3, WriteMode::Float32, 1.25).unwrap();
    let (h, back) = read_mrc(&p).unwrap();
    assert_eq!((h.nx, h.ny, h.nz, h.mode), (7, 5, 3, MrcMode::Float32));
    assert_eq!(h.voxel_size_a, [1.25; 3]);
    assert_eq!(h.ispg, 1);
    assert_eq!(h.nversion, 20140);
    assert_eq!(h.endian, Endian::Little);
    assert_eq!(back, data);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 1024 + 7 * 5 * 3 * 4);
    // No temporary file left behind.
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
}

#[test]
fn round_trip_float16() {
    let d = TempDir::new("rt16");
    let p = d.join("a.mrc");
    let data: Vec<f32> = (0..6 * 4)
        .map(|i| (i as f32 * 0.37).sin() * 100.0)
        .collect();
    write_mrc(&p, &data, 6, 4, 1, WriteMode::Float16, 0.8).unwrap();
    let (h, back) = read_mrc(&p).unwrap();
    assert_eq!(
        (h.nx, h.ny, h.nz, h.mode, h.ispg),
        (6, 4, 1, MrcMode::Float16, 0)
    );
    assert!((h.voxel_size_a[0] - 0.8).abs() < 1e-6);
    for (a, b) in data.iter().zip(&back) {
        assert_eq!(*b, f16_to_f32(f32_to_f16(*a)));
        assert!((a - b).abs() <= a.abs() * 2f32.powi(-11));
    }
}

#[test]
fn round_trip_int16_rounds_and_clamps() {
    let d = TempDir::new("rti16");
    let p = d.join("a.mrc");
    let data = vec![0.4, 0.5, 1.5, -2.5, 40000.0, -40000.0, f32::NAN, 12.0, -7.6];
    write_mrc(&p, &data, 3, 3, 1, WriteMode::Int16, 2.0).unwrap();
    let (h, back) = read_mrc(&p).unwrap();
    assert_eq!(h.mode, MrcMode::Int16);
    assert_eq!(
        back,
        vec![0.0, 0.0, 2.0, -2.0, 32767.0, -32768.0, 0.0, 12.0, -8.0]
    );
    assert_eq!((h.dmin, h.dmax), (-32768.0, 32767.0));
}

#[test]
fn header_stats_are_of_stored_values() {
    let d = TempDir::new("stats");
    let p = d.join("a.mrc");
    let data = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    write_mrc(&p, &data, 3, 2, 1, WriteMode::Float32, 1.0).unwrap();
    let h = MrcReader::open(&p).unwrap().header().clone();
    assert_eq!((h.dmin, h.dmax, h.dmean), (1.0, 6.0, 3.5));
    // Population standard deviation: sqrt(17.5 / 6).
    assert!((h.rms - (17.5f32 / 6.0).sqrt()).abs() < 1e-6);
    assert_eq!((h.mx, h.my, h.mz), (3, 2, 1));
    let raw = std::fs::read(&p).unwrap();
    assert_eq!(&raw[208..216], b"MAP \x44\x44\0\0");
    assert_eq!(&raw[64..76], &[1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0]);
}

#[test]
fn write_rejects_bad_arguments_and_leaves_nothing() {
    let d = TempDir::new("badw");
    let p = d.join("a.mrc");
    let e = write_mrc(&p, &[1.0; 5], 2, 2, 1, WriteMode::Float32, 1.0).unwrap_err();
    assert!(matches!(e, MrcError::InvalidWrite { .. }), "{e}");
    assert!(e.to_string().contains("a.mrc"));
    let e = write_mrc(&p, &[1.0; 4], 2, 2, 1, WriteMode::Float32, 0.0).unwrap_err();
    assert!(matches!(e, MrcError::InvalidWrite { .. }));
    let e = write_mrc(
        d.join("missing/a.mrc"),
        &[1.0; 4],
        2,
        2,
        1,
        WriteMode::Float32,
        1.0,
    )
    .unwrap_err();
    assert!(matches!(e, MrcError::Io { .. }));
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
}

#[test]
fn reads_int8_int16_uint16_float16() {
    let d = TempDir::new("modes");
    let mut f = Hdr::new(3, 1, 1, 0).bytes();
    f.extend([0u8, 127, 0x80]);
    assert_eq!(
        read_mrc(write_file(&d, "m0.mrc", &f)).unwrap().1,
        vec![0.0, 127.0, -128.0]
    );

    let mut f = Hdr::new(2, 1, 1, 1).bytes();
    f.extend((-300i16).to_le_bytes());
    f.extend(32767i16.to_le_bytes());
    assert_eq!(
        read_mrc(write_file(&d, "m1.mrc", &f)).unwrap().1,
        vec![-300.0, 32767.0]
    );

    let mut f = Hdr::new(2, 1, 1, 6).bytes();
    f.extend(65535u16.to_le_bytes());
    f.extend(7u16.to_le_bytes());
    assert_eq!(
        read_mrc(write_file(&d, "m6.mrc", &f)).unwrap().1,
        vec![65535.0, 7.0]
    );

    let mut f = Hdr::new(3, 1, 1, 12).bytes();
    for h in [0x3c00u16, 0xc000, 0x0001] {
        f.extend(h.to_le_bytes());
    }
    assert_eq!(
        read_mrc(write_file(&d, "m12.mrc", &f)).unwrap().1,
        vec![1.0, -2.0, 2f32.powi(-24)]
    );

    let mut f = Hdr::new(2, 1, 1, 2).bytes();
    f.extend(1.5f32.to_le_bytes());
    f.extend((-3.25f32).to_le_bytes());
    let (h, data) = read_mrc(write_file(&d, "m2.mrc", &f)).unwrap();
    assert_eq!(data, vec![1.5, -3.25]);
    assert_eq!(h.voxel_size_a, [1.5; 3]);
}

#[test]
fn reads_mode_101_with_odd_nx() {
    let d = TempDir::new("m101");
    // nx = 3, ny = 2, nz = 2: each row is 2 bytes, the high nibble of the second byte is padding.
    let mut f = Hdr::new(3, 2, 2, 101).bytes();
    let rows: [[u8; 2]; 4] = [[0x21, 0xf3], [0x54, 0xf6], [0x87, 0x09], [0xba, 0x0c]];
    for r in rows {
        f.extend(r);
    }
    let p = write_file(&d, "a.mrc", &f);
    let mut r = MrcReader::open(&p).unwrap();
    assert_eq!(r.header().mode, MrcMode::Packed4);
    assert_eq!(r.header().section_bytes(), 4);
    assert_eq!(
        r.read_section(1).unwrap(),
        vec![7.0, 8.0, 9.0, 10.0, 11.0, 12.0]
    );
    assert_eq!(
        r.read_all().unwrap(),
        (1..=12).map(|v| v as f32).collect::<Vec<_>>()
    );
    // One byte short of the padded size is truncated.
    f.pop();
    let e = MrcReader::open(write_file(&d, "b.mrc", &f)).unwrap_err();
    assert!(
        matches!(
            e,
            MrcError::Truncated {
                expected: 1032,
                actual: 1031,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn reads_big_endian() {
    let d = TempDir::new("be");
    let mut hdr = Hdr::new(2, 2, 1, 2);
    hdr.big = true;
    hdr.stamp = [0x11, 0x11, 0, 0];
    let mut f = hdr.bytes();
    for v in [1.0f32, -2.5, 3.75, 1e-3] {
        f.extend(v.to_be_bytes());
    }
    let (h, data) = read_mrc(write_file(&d, "f.mrc", &f)).unwrap();
    assert_eq!(h.endian, Endian::Big);
    assert_eq!((h.nx, h.ny, h.nz), (2, 2, 1));
    assert_eq!(h.voxel_size_a, [1.5; 3]);
    assert_eq!(data, vec![1.0, -2.5, 3.75, 1e-3]);

    let mut hdr = Hdr::new(2, 1, 1, 1);
    hdr.big = true;
    hdr.stamp = [0x11, 0x11, 0, 0];
    let mut f = hdr.bytes();
    f.extend((-2i16).to_be_bytes());
    f.extend(300i16.to_be_bytes());
    assert_eq!(
        read_mrc(write_file(&d, "i.mrc", &f)).unwrap().1,
        vec![-2.0, 300.0]
    );
}

#[test]
fn other_stamps() {
    let d = TempDir::new("stamps");
    for (i, stamp) in [[0x44, 0x41, 0, 0], [0, 0, 0, 0]].into_iter().enumerate() {
        let mut hdr = Hdr::new(1, 1, 1, 1);
        hdr.stamp = stamp;
        let mut f = hdr.bytes();
        f.extend(5i16.to_le_bytes());
        let (h, data) = read_mrc(write_file(&d, &format!("{i}.mrc"), &f)).unwrap();
        assert_eq!(h.endian, Endian::Little);
        assert_eq!(data, vec![5.0]);
    }
}

#[test]
fn skips_fei_extended_header() {
    let d = TempDir::new("fei");
    let mut hdr = Hdr::new(2, 1, 2, 2);
    hdr.nsymbt = 768;
    hdr.exttyp = *b"FEI1";
    let mut f = hdr.bytes();
    f.extend(vec![0xab; 768]);
    for v in [1.0f32, 2.0, 3.0, 4.0] {
        f.extend(v.to_le_bytes());
    }
    let p = write_file(&d, "fei.mrc", &f);
    let mut r = MrcReader::open(&p).unwrap();
    assert_eq!(r.header().exttyp_str(), Some("FEI1"));
    assert_eq!(r.header().nsymbt, 768);
    assert_eq!(r.header().data_offset, 1792);
    assert_eq!(r.read_section(1).unwrap(), vec![3.0, 4.0]);
    assert_eq!(r.read_all().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    let e = r.read_section(2).unwrap_err();
    assert!(
        matches!(e, MrcError::SectionOutOfRange { z: 2, nz: 2, .. }),
        "{e}"
    );
}

#[test]
fn voxel_size_falls_back_to_one() {
    let d = TempDir::new("mx0");
    let mut hdr = Hdr::new(1, 1, 1, 0);
    hdr.m = [0, 0, 0];
    let mut f = hdr.bytes();
    f.push(1);
    let (h, _) = read_mrc(write_file(&d, "a.mrc", &f)).unwrap();
    assert_eq!(h.voxel_size_a, [1.0; 3]);
}

#[test]
fn validation_errors() {
    let d = TempDir::new("bad");
    let open = |name: &str, bytes: &[u8]| MrcReader::open(write_file(&d, name, bytes)).unwrap_err();

    // Shorter than a header.
    let e = open("short.mrc", &[0u8; 100]);
    assert!(
        matches!(
            e,
            MrcError::Truncated {
                expected: 1024,
                actual: 100,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("short.mrc"), "{e}");

    // Data truncated.
    let mut f = Hdr::new(4, 4, 2, 2).bytes();
    f.extend(vec![0u8; 4 * 4 * 4 * 2 - 1]);
    let e = open("trunc.mrc", &f);
    assert!(
        matches!(
            e,
            MrcError::Truncated {
                expected: 1152,
                actual: 1151,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("trunc.mrc") && e.to_string().contains("1152"),
        "{e}"
    );

    // Absurd dimensions: a header promising petabytes must fail before allocating.
    let e = open("huge.mrc", &Hdr::new(60_000, 60_000, 60_000, 2).bytes());
    assert!(matches!(e, MrcError::Truncated { .. }), "{e}");
    let e = open("wide.mrc", &Hdr::new(70_000, 1, 1, 2).bytes());
    assert!(
        matches!(e, MrcError::BadDimensions { nx: 70_000, .. }),
        "{e}"
    );
    let e = open("zero.mrc", &Hdr::new(4, 0, 1, 2).bytes());
    assert!(matches!(e, MrcError::BadDimensions { ny: 0, .. }), "{e}");
    let e = open("neg.mrc", &Hdr::new(4, 4, -3, 2).bytes());
    assert!(matches!(e, MrcError::BadDimensions { nz: -3, .. }), "{e}");
    // Largest legal nx, ny and nz: 2^65 bytes overflows u64.
    let e = open("max.mrc", &Hdr::new(65_536, 65_536, i32::MAX, 2).bytes());
    assert!(
        matches!(
            e,
            MrcError::Overflow {
                nz: 2_147_483_647,
                ..
            }
        ),
        "{e}"
    );
    let e = open("max8.mrc", &Hdr::new(65_536, 65_536, i32::MAX, 0).bytes());
    assert!(matches!(e, MrcError::Truncated { .. }), "{e}");

    // Unknown mode.
    let e = open("mode.mrc", &Hdr::new(1, 1, 1, 4).bytes());
    assert!(matches!(e, MrcError::UnknownMode { mode: 4, .. }), "{e}");
    assert!(
        e.to_string().contains("mode.mrc") && e.to_string().contains("mode 4"),
        "{e}"
    );

    // Extended header past the end, or negative.
    let mut hdr = Hdr::new(1, 1, 1, 0);
    hdr.nsymbt = 1_000_000;
    let e = open("ext.mrc", &hdr.bytes());
    assert!(
        matches!(
            e,
            MrcError::BadExtendedHeader {
                nsymbt: 1_000_000,
                file_len: 1024,
                ..
            }
        ),
        "{e}"
    );
    hdr.nsymbt = -8;
    let e = open("extneg.mrc", &hdr.bytes());
    assert!(
        matches!(e, MrcError::BadExtendedHeader { nsymbt: -8, .. }),
        "{e}"
    );
    // Extended header fits but leaves no room for the data.
    let mut hdr = Hdr::new(2, 1, 1, 2);
    hdr.nsymbt = 8;
    let mut f = hdr.bytes();
    f.extend([0u8; 8]);
    let e = open("extdata.mrc", &f);
    assert!(
        matches!(
            e,
            MrcError::Truncated {
                expected: 1040,
                actual: 1032,
                ..
            }
        ),
        "{e}"
    );

    // Missing file.
    let e = MrcReader::open(d.join("nope.mrc")).unwrap_err();
    assert!(
        matches!(e, MrcError::Io { .. }) && e.to_string().contains("nope.mrc"),
        "{e}"
    );
}

#[test]
fn garbage_headers_never_panic() {
    let d = TempDir::new("fuzz");
    let p = d.join("g.mrc");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..300 {
        let mut f = Hdr::new(3, 2, 2, [0, 1, 2, 6, 12, 101][i % 6]).bytes();
        f.extend(vec![0x5au8; 64]);
        for _ in 0..4 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let at = (state % 1100) as usize % f.len();
            f[at] = (state >> 32) as u8;
        }
        std::fs::write(&p, &f).unwrap();
        if let Ok(mut r) = MrcReader::open(&p) {
            let _ = r.read_all();
        }
    }
}

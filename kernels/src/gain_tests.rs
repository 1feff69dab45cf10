use super::*;

use std::io::Cursor;

use ::tiff::encoder::TiffEncoder;
use ::tiff::encoder::colortype::{Gray8, Gray16};
use ::tiff::encoder::compression::Lzw;

use crate::io::mrc::{WriteMode, write_mrc};

use crate::test_util::TempDir;

fn mrc(dir: &TempDir, name: &str, w: usize, h: usize, data: &[f32]) -> PathBuf {
    let p = dir.join(name);
    write_mrc(&p, data, w, h, 1, WriteMode::Float32, 1.0).unwrap();
    p
}

fn tiff16(dir: &TempDir, name: &str, w: u32, h: u32, data: &[u16]) -> PathBuf {
    let mut buf = Cursor::new(Vec::new());
    TiffEncoder::new(&mut buf)
        .unwrap()
        .write_image_with_compression::<Gray16, _>(w, h, Lzw, data)
        .unwrap();
    let p = dir.join(name);
    std::fs::write(&p, buf.into_inner()).unwrap();
    p
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= 1e-6 * y.abs().max(1.0))
}

#[test]
fn normalised_by_mean_of_nonzero_zeros_and_non_finite_become_one() {
    let dir = TempDir::new("norm");
    // Nonzero finite: 2, 4, 6, 8; mean 5.
    let p = mrc(&dir, "g.mrc", 3, 2, &[2.0, 4.0, 0.0, 6.0, f32::NAN, 8.0]);
    let g = GainRef::load(&p, false, false, false, None).unwrap();
    assert_eq!((g.width(), g.height()), (3, 2));
    assert!(
        close(g.gain(), &[0.4, 0.8, 1.0, 1.2, 1.0, 1.6]),
        "{:?}",
        g.gain()
    );

    let mut v = vec![f32::INFINITY, 0.0, 3.0, 1.0];
    assert_eq!(normalise_gain(&mut v), Some(2.0));
    assert_eq!(v, vec![1.0, 1.0, 1.5, 0.5]);
}

#[test]
fn tiff_gain_is_read_by_signature_whatever_the_extension() {
    let dir = TempDir::new("tiffgain");
    // EPU writes TIFF gain references with a .gain extension.
    let p = tiff16(&dir, "ref.gain", 2, 2, &[1, 3, 0, 2]);
    let g = GainRef::load(&p, false, false, false, None).unwrap();
    assert!(close(g.gain(), &[0.5, 1.5, 1.0, 1.0]), "{:?}", g.gain());
}

#[test]
fn orientation_exact_pixel_positions() {
    // 3 wide, 2 high; value = 10 y + x.
    let img = Image {
        width: 3,
        height: 2,
        data: vec![0.0, 1.0, 2.0, 10.0, 11.0, 12.0],
    };
    let o = |fx, fy, t| {
        let r = orient(&img, fx, fy, t);
        (r.width, r.height, r.data)
    };
    assert_eq!(o(false, false, false), (3, 2, img.data.clone()));
    assert_eq!(
        o(true, false, false),
        (3, 2, vec![2.0, 1.0, 0.0, 12.0, 11.0, 10.0])
    );
    assert_eq!(
        o(false, true, false),
        (3, 2, vec![10.0, 11.0, 12.0, 0.0, 1.0, 2.0])
    );
    // Transposed: 2 wide, 3 high, (x, y) holds old (y, x).
    assert_eq!(
        o(false, false, true),
        (2, 3, vec![0.0, 10.0, 1.0, 11.0, 2.0, 12.0])
    );
    // Flip x first, then transpose (Warp's order); transposing first would give
    // [10, 0, 11, 1, 12, 2].
    assert_eq!(
        o(true, false, true),
        (2, 3, vec![2.0, 12.0, 1.0, 11.0, 0.0, 10.0])
    );
    // Flip y first, then transpose; transposing first would give [2, 12, 1, 11, 0, 10].
    assert_eq!(
        o(false, true, true),
        (2, 3, vec![10.0, 0.0, 11.0, 1.0, 12.0, 2.0])
    );
    assert_eq!(
        o(true, true, true),
        (2, 3, vec![12.0, 2.0, 11.0, 1.0, 10.0, 0.0])
    );
    assert_eq!(
        o(true, true, false),
        (3, 2, vec![12.0, 11.0, 10.0, 2.0, 1.0, 0.0])
    );
}

#[test]
fn load_applies_orientation_then_normalises() {
    let dir = TempDir::new("orient");
    // value = 1 + 10 y + x; mean 7.
    let p = mrc(&dir, "g.mrc", 3, 2, &[1.0, 2.0, 3.0, 11.0, 12.0, 13.0]);
    let g = GainRef::load(&p, false, true, true, None).unwrap();
    assert_eq!((g.width(), g.height()), (2, 3));
    let expected: Vec<f32> = [11.0, 1.0, 12.0, 2.0, 13.0, 3.0]
        .iter()
        .map(|v| v / 7.0)
        .collect();
    assert!(close(g.gain(), &expected), "{:?}", g.gain());
}

#[test]
fn correct_multiplies_by_gain() {
    let dir = TempDir::new("mul");
    let p = mrc(&dir, "g.mrc", 2, 1, &[1.0, 3.0]);
    let g = GainRef::load(&p, false, false, false, None).unwrap();
    let mut f = vec![10.0, 10.0];
    g.correct(&mut f).unwrap();
    assert_eq!(f, vec![5.0, 15.0]);
    assert_eq!(g.defect_count(), 0);
}

/// Frame of `w × h` with a non-linear pattern, so a neighbour mean is not a centre value.
fn pattern(w: usize, h: usize) -> Vec<f32> {
    (0..w * h).map(|i| ((i * i) % 97) as f32).collect()
}

fn mean_at(f: &[f32], w: usize, pts: &[(usize, usize)]) -> f32 {
    let s: f64 = pts.iter().map(|&(x, y)| f64::from(f[y * w + x])).sum();
    (s / pts.len() as f64) as f32
}

#[test]
fn defects_replaced_by_growing_window_then_frame_mean() {
    let dir = TempDir::new("defects");
    let (w, h) = (9usize, 9usize);
    let gain = mrc(&dir, "g.mrc", w, h, &vec![2.0; w * h]);
    // Defects: a lone pixel at (1, 6), the corner (0, 0) and a 3×3 block centred on (6, 2).
    // A defect with no good pixel within 5×5 has its own test below.
    let mut d = vec![0.0f32; w * h];
    let mut mark = |x: usize, y: usize| d[y * w + x] = 1.0;
    mark(1, 6);
    mark(0, 0);
    for y in 1..=3 {
        for x in 5..=7 {
            mark(x, y);
        }
    }
    let defects = mrc(&dir, "d.mrc", w, h, &d);
    let g = GainRef::load(&gain, false, false, false, Some(&defects)).unwrap();
    assert_eq!(g.defect_count(), 11);
    assert_eq!(g.defects_path(), Some(defects.as_path()));

    let f0 = pattern(w, h);
    let mut f = f0.clone();
    g.correct(&mut f).unwrap();
    // Lone pixel: its 8 neighbours.
    let ring: Vec<_> = [
        (0, 5),
        (1, 5),
        (2, 5),
        (0, 6),
        (2, 6),
        (0, 7),
        (1, 7),
        (2, 7),
    ]
    .to_vec();
    assert_eq!(f[6 * w + 1], mean_at(&f0, w, &ring));
    // Corner: the window is clipped to the frame.
    assert_eq!(f[0], mean_at(&f0, w, &[(1, 0), (0, 1), (1, 1)]));
    // Centre of the 3×3 block: no good pixel in 3×3, so the 5×5 window's 16 good pixels.
    let mut outer = Vec::new();
    for y in 0..=4 {
        for x in 4..=8 {
            if !((5..=7).contains(&x) && (1..=3).contains(&y)) {
                outer.push((x, y));
            }
        }
    }
    assert_eq!(outer.len(), 16);
    assert_eq!(f[2 * w + 6], mean_at(&f0, w, &outer));
    // Block edge (5, 1): its 3×3 window has good pixels (4, 0..=2), (5, 0), (6, 0).
    assert_eq!(
        f[w + 5],
        mean_at(&f0, w, &[(4, 0), (5, 0), (6, 0), (4, 1), (4, 2)])
    );
    // Good pixels are only multiplied by the gain (1 after normalisation).
    assert_eq!(f[4 * w + 4], f0[4 * w + 4]);
}

#[test]
fn defect_without_good_pixel_in_5x5_takes_frame_mean() {
    let dir = TempDir::new("defects5");
    let (w, h) = (7usize, 7usize);
    let gain = mrc(&dir, "g.mrc", w, h, &vec![4.0; w * h]);
    let mut d = vec![0.0f32; w * h];
    for y in 1..=5 {
        for x in 1..=5 {
            d[y * w + x] = 1.0;
        }
    }
    let defects = mrc(&dir, "d.mrc", w, h, &d);
    let g = GainRef::load(&gain, false, false, false, Some(&defects)).unwrap();
    let f0 = pattern(w, h);
    let mut f = f0.clone();
    g.correct(&mut f).unwrap();
    let good: Vec<_> = (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .filter(|&(x, y)| d[y * w + x] == 0.0)
        .collect();
    assert_eq!(good.len(), 24);
    assert_eq!(f[3 * w + 3], mean_at(&f0, w, &good));
}

#[test]
fn defect_map_is_oriented_like_the_gain() {
    let dir = TempDir::new("defectorient");
    // 3 wide, 2 high; defect at (0, 0) on disk.
    let gain = mrc(&dir, "g.mrc", 3, 2, &[1.0; 6]);
    let mut buf = Cursor::new(Vec::new());
    TiffEncoder::new(&mut buf)
        .unwrap()
        .write_image::<Gray8>(3, 2, &[255, 0, 0, 0, 0, 0])
        .unwrap();
    let defects = dir.join("d.tif");
    std::fs::write(&defects, buf.into_inner()).unwrap();
    // Flip x then transpose: (0, 0) -> (2, 0) -> (0, 2) in a 2 wide, 3 high image.
    let g = GainRef::load(&gain, true, false, true, Some(&defects)).unwrap();
    let mut f = vec![1.0, 2.0, 3.0, 4.0, 100.0, 6.0];
    g.correct(&mut f).unwrap();
    // (0, 2), index 4, is replaced by the mean of (0, 1), (1, 1), (1, 2): (3 + 4 + 6) / 3.
    assert_eq!(f, vec![1.0, 2.0, 3.0, 4.0, 13.0 / 3.0, 6.0]);
}

#[test]
fn size_mismatches_name_both_files_and_sizes() {
    let dir = TempDir::new("mismatch");
    let gain = mrc(&dir, "gain.mrc", 4, 3, &[1.0; 12]);
    let defects = mrc(&dir, "defects.mrc", 3, 4, &[0.0; 12]);
    let e = GainRef::load(&gain, false, false, false, Some(&defects)).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, GainError::DefectsSizeMismatch { .. }), "{e:?}");
    for s in ["gain.mrc", "defects.mrc", "4x3", "3x4"] {
        assert!(msg.contains(s), "{s} missing from {msg}");
    }

    let g = GainRef::load(&gain, false, false, true, None).unwrap();
    assert_eq!((g.width(), g.height()), (3, 4));
    g.check_movie(Path::new("movie.tif"), 3, 4).unwrap();
    let e = g
        .check_movie(Path::new("/data/movie.tif"), 4, 3)
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, GainError::MovieSizeMismatch { .. }), "{e:?}");
    for s in ["gain.mrc", "/data/movie.tif", "4x3", "3x4"] {
        assert!(msg.contains(s), "{s} missing from {msg}");
    }

    let mut short = vec![1.0; 11];
    let e = g.correct(&mut short).unwrap_err();
    assert!(
        matches!(
            e,
            GainError::FrameLength {
                expected: 12,
                actual: 11,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn bad_gain_files_are_errors() {
    let dir = TempDir::new("badgain");
    let zero = mrc(&dir, "zero.mrc", 2, 2, &[0.0; 4]);
    let e = GainRef::load(&zero, false, false, false, None).unwrap_err();
    assert!(matches!(e, GainError::NoSignal { .. }), "{e:?}");
    assert!(e.to_string().contains("zero.mrc"));

    let stack = dir.join("stack.mrc");
    write_mrc(&stack, &[1.0; 8], 2, 2, 2, WriteMode::Float32, 1.0).unwrap();
    let e = GainRef::load(&stack, false, false, false, None).unwrap_err();
    assert!(
        matches!(e, GainError::NotSingleImage { images: 2, .. }),
        "{e:?}"
    );

    let missing = dir.join("missing.mrc");
    let e = GainRef::load(&missing, false, false, false, None).unwrap_err();
    assert!(e.to_string().contains("missing.mrc"), "{e}");
}

#[test]
fn each_load_has_its_own_id_and_clones_share_it() {
    let dir = TempDir::new("gain-id");
    let p = mrc(&dir, "g.mrc", 4, 2, &[1.0; 8]);
    let a = GainRef::load(&p, false, false, false, None).unwrap();
    let b = GainRef::load(&p, false, false, false, None).unwrap();
    assert_ne!(a.id(), b.id(), "a reload of the same file is a new gain");
    assert_eq!(a.clone().id(), a.id());
}

/// A detector's gain for a movie rendered finer (EER at 8k from a 4k gain): every pixel and
/// every defect repeated over its sub-pixels; and `Movie::load` takes it for an EER at 2×.
#[test]
fn an_upsampled_gain_repeats_each_pixel_and_defect_and_serves_a_finer_eer() {
    use crate::io::eer::{EerOptions, EerScheme, Electron, write_eer};
    use crate::movie::{LoadOptions, Movie};
    let dir = TempDir::new("gain-up");
    let g: Vec<f32> = (0..12).map(|i| 1.0 + i as f32).collect();
    let gp = mrc(&dir, "g.mrc", 4, 3, &g);
    let mut d = vec![0.0f32; 12];
    d[5] = 1.0;
    let dp = mrc(&dir, "d.mrc", 4, 3, &d);
    let r = GainRef::load(&gp, false, false, false, Some(&dp)).unwrap();
    let u = r.upsampled(2);
    assert_eq!((u.width(), u.height(), u.defect_count()), (8, 6, 4));
    assert_ne!(u.id(), r.id());
    for y in 0..6 {
        for x in 0..8 {
            assert_eq!(
                u.gain()[y * 8 + x],
                r.gain()[(y / 2) * 4 + x / 2],
                "({x}, {y})"
            );
            assert_eq!(u.is_defect(y * 8 + x), r.is_defect((y / 2) * 4 + x / 2));
        }
    }

    // An EER movie of 4 × 3 detector pixels rendered at 8 × 6 with the 4 × 3 gain.
    let s = EerScheme::from_tags(65001, None, None, None).unwrap();
    let frames: Vec<Vec<Electron>> = (0..2)
        .map(|f| {
            (0..12)
                .filter(|p| (p + f) % 3 != 0)
                .map(|p| Electron {
                    x: p % 4,
                    y: p / 4,
                    sub_x: (p % 4) as u8,
                    sub_y: (f % 4) as u8,
                })
                .collect()
        })
        .collect();
    let movie = dir.join("m.eer");
    write_eer(&movie, &frames, 4, 3, 65001, s, false).unwrap();
    let opts = LoadOptions {
        eer: EerOptions {
            upsample: 2,
            group: 1,
        },
        ..LoadOptions::default()
    };
    let m = Movie::load(&movie, Some(&r), &opts).unwrap();
    assert_eq!((m.nx, m.ny, m.frames(), m.gain_corrected), (8, 6, 2, true));
    // At the detector's size the 4 × 3 gain fits as it is; an 8 × 6 one does not.
    assert!(Movie::load(&movie, Some(&r), &LoadOptions::default()).is_ok());
    let e = Movie::load(&movie, Some(&u), &LoadOptions::default()).unwrap_err();
    assert!(e.to_string().contains("g.mrc"), "{e}");
}

use super::*;

/// A deterministic pseudo-random image (values roughly uniform in [-1, 1)).
fn noise(nx: usize, ny: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..nx * ny)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

#[test]
fn long_side_becomes_size_and_aspect_is_kept() {
    let cases = [
        ((4096, 4096, 512), (512, 512)),
        ((5760, 4092, 1024), (1024, 727)), // 4092 * 1024 / 5760 = 727.47
        ((4092, 5760, 1024), (727, 1024)),
        ((100, 300, 30), (10, 30)),
        ((11520, 8184, 512), (512, 364)), // 363.73
        ((1000, 1, 10), (10, 1)),
        ((1000, 2, 10), (10, 1)), // never below 1
        ((1, 1000, 10), (1, 10)),
        ((50, 20, 100), (50, 20)), // never enlarged
        ((50, 20, 50), (50, 20)),
        ((51, 20, 50), (50, 20)), // 19.6
    ];
    for ((nx, ny, size), want) in cases {
        assert_eq!(thumbnail_dims(nx, ny, size), want, "{nx}x{ny} -> {size}");
    }
    for ((nx, ny, size), want) in cases.into_iter().filter(|c| c.0.0 * c.0.1 <= 1 << 22) {
        let (pixels, w, h) = thumbnail(&noise(nx, ny, 1), nx, ny, size, 2.5).unwrap();
        assert_eq!((w, h), want, "{nx}x{ny} -> {size}");
        assert_eq!(pixels.len(), w * h);
    }
}

#[test]
fn area_average_uses_the_exact_fractional_footprint() {
    // 3 -> 2 along x: each output covers 1.5 inputs.
    let out = downsample(&[1.0, 2.0, 4.0], 3, 1, 2, 1);
    assert!((out[0] - (1.0 + 0.5 * 2.0) / 1.5).abs() < 1e-12, "{out:?}");
    assert!((out[1] - (0.5 * 2.0 + 4.0) / 1.5).abs() < 1e-12, "{out:?}");

    // 5x4 -> 2x2: x footprints [0, 2.5) and [2.5, 5), y blocks of 2; compare with a direct sum.
    let img: Vec<f32> = (0..20).map(|i| (i * i % 7) as f32).collect();
    let out = downsample(&img, 5, 4, 2, 2);
    for oy in 0..2 {
        for ox in 0..2 {
            let mut sum = 0.0;
            for y in 2 * oy..2 * oy + 2 {
                for x in 0..5 {
                    let (lo, hi) = (2.5 * ox as f64, 2.5 * (ox + 1) as f64);
                    let w = ((x + 1) as f64).min(hi) - (x as f64).max(lo);
                    sum += w.max(0.0) * f64::from(img[y * 5 + x]);
                }
            }
            let want = sum / 5.0;
            assert!((out[oy * 2 + ox] - want).abs() < 1e-12, "{ox},{oy}");
        }
    }

    // Integer ratio: plain block means.
    let img: Vec<f32> = (0..16).map(|i| i as f32).collect();
    let out = downsample(&img, 4, 4, 2, 2);
    assert_eq!(out, vec![2.5, 4.5, 10.5, 12.5]);
}

#[test]
fn footprint_weights_sum_to_one_and_cover_the_input() {
    for (n_in, n_out) in [
        (7, 3),
        (4096, 512),
        (5760, 1024),
        (10, 10),
        (1000, 1),
        (3, 2),
    ] {
        let f = footprints(n_in, n_out);
        assert_eq!(f.len(), n_out);
        let mut coverage = vec![0.0; n_in];
        for (first, w) in &f {
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            for (j, v) in w.iter().enumerate() {
                coverage[first + j] += v * n_in as f64 / n_out as f64;
            }
        }
        // Every input pixel contributes its full area exactly once.
        for c in coverage {
            assert!((c - 1.0).abs() < 1e-9, "{n_in} -> {n_out}: {c}");
        }
    }
}

#[test]
fn step_image_stays_a_step() {
    // Left half 0, right half 1, downsampled 4x: the step falls on an output pixel boundary.
    let (nx, ny) = (64, 32);
    let img: Vec<f32> = (0..nx * ny)
        .map(|i| if i % nx < nx / 2 { 0.0 } else { 1.0 })
        .collect();
    // mean 0.5, std 0.5: with range 1, 0 maps to 0 and 1 to 255 exactly.
    let (pixels, w, h) = thumbnail(&img, nx, ny, 16, 1.0).unwrap();
    assert_eq!((w, h), (16, 8));
    for y in 0..h {
        for x in 0..w {
            assert_eq!(pixels[y * w + x], if x < 8 { 0 } else { 255 }, "({x},{y})");
        }
    }
    // With a wider range the two levels move towards the middle, symmetrically.
    let (pixels, w, _) = thumbnail(&img, nx, ny, 16, 2.5).unwrap();
    let (a, b) = (pixels[0], pixels[w - 1]);
    assert!(pixels.iter().all(|&p| p == a || p == b));
    assert!(a < 128 && b > 128 && (i32::from(a) + i32::from(b) - 255).abs() <= 1);
    assert_eq!((a, b), (77, 179)); // 127.5 ∓ 0.5 / (2.5 · 0.5) · 127.5 = 76.5, 178.5, rounded up
}

#[test]
fn constant_image_gives_mid_grey() {
    for (nx, ny, size, v) in [
        (64, 64, 16, 3.7f32),
        (7, 5, 3, -1234.5678),
        (333, 129, 100, 1e-20),
        (10, 10, 100, 0.0),
        (1, 1, 1, 42.0),
    ] {
        let (pixels, w, h) = thumbnail(&vec![v; nx * ny], nx, ny, size, 2.5).unwrap();
        assert_eq!(pixels.len(), w * h);
        assert!(pixels.iter().all(|&p| p == MID_GREY), "{nx}x{ny} of {v}");
    }
    // Averaging can make a non-constant image constant: a 2-pixel checkerboard, halved.
    let img: Vec<f32> = (0..16 * 16)
        .map(|i| {
            if (i % 16 + i / 16) % 2 == 0 {
                -1.0
            } else {
                1.0
            }
        })
        .collect();
    let (pixels, _, _) = thumbnail(&img, 16, 16, 8, 2.5).unwrap();
    assert!(pixels.iter().all(|&p| p == MID_GREY));
}

#[test]
fn non_square_gradient_keeps_orientation() {
    // A ramp along x on a 300x100 image: rows identical, columns increasing; y-ramp likewise.
    let (nx, ny) = (300, 100);
    let ramp_x: Vec<f32> = (0..nx * ny).map(|i| (i % nx) as f32).collect();
    let (p, w, h) = thumbnail(&ramp_x, nx, ny, 60, 1.5).unwrap();
    assert_eq!((w, h), (60, 20));
    for y in 1..h {
        assert_eq!(p[y * w..(y + 1) * w], p[..w]);
    }
    assert!(p[..w].windows(2).all(|v| v[0] <= v[1]));
    assert!(p[0] < p[w - 1]);

    let ramp_y: Vec<f32> = (0..nx * ny).map(|i| (i / nx) as f32).collect();
    let (p, w, h) = thumbnail(&ramp_y, nx, ny, 60, 1.5).unwrap();
    for y in 0..h {
        assert!(p[y * w..(y + 1) * w].iter().all(|&v| v == p[y * w]));
    }
    assert!(p[0] < p[(h - 1) * w]);
}

#[test]
fn size_larger_than_image_keeps_every_pixel() {
    let (nx, ny) = (13, 7);
    let img = noise(nx, ny, 3);
    let (p, w, h) = thumbnail(&img, nx, ny, 1000, 2.0).unwrap();
    assert_eq!((w, h), (nx, ny));
    // No resampling: the grey levels follow the input order exactly (up to rounding ties).
    for i in 0..img.len() {
        for j in 0..img.len() {
            if img[i] < img[j] {
                assert!(p[i] <= p[j], "{i} {j}");
            }
        }
    }
    // And match the mapping computed by hand.
    let n = img.len() as f64;
    let mean = img.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let std = (img
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n)
        .sqrt();
    for (i, &v) in img.iter().enumerate() {
        let want = ((f64::from(v) - (mean - 2.0 * std)) / (4.0 * std) * 255.0)
            .round()
            .clamp(0.0, 255.0);
        assert!(
            (f64::from(p[i]) - want).abs() <= 1.0,
            "{i}: {} vs {want}",
            p[i]
        );
    }
}

#[test]
fn mean_maps_to_the_middle_and_outliers_clamp() {
    let (nx, ny) = (200, 100);
    let mut img = noise(nx, ny, 7);
    img[0] = 1e6;
    img[1] = -1e6;
    let (p, _, _) = thumbnail(&img, nx, ny, 200, 2.5).unwrap();
    assert_eq!(p[0], 255);
    assert_eq!(p[1], 0);
    // The two outliers dominate std, so everything else sits near the middle.
    assert!(p[2..].iter().all(|&v| (127..=129).contains(&v)));

    let img = noise(nx, ny, 9);
    let (p, _, _) = thumbnail(&img, nx, ny, 50, 2.5).unwrap();
    let mean_grey = p.iter().map(|&v| f64::from(v)).sum::<f64>() / p.len() as f64;
    assert!((mean_grey - 127.5).abs() < 2.0, "{mean_grey}");
}

#[test]
fn non_finite_pixels_are_treated_as_the_mean() {
    let (nx, ny) = (40, 30);
    let img = noise(nx, ny, 11);
    let mut with_holes = img.clone();
    let holes = [0, 17, 455, 1199];
    for (k, &i) in holes.iter().enumerate() {
        with_holes[i] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::NAN][k];
    }
    // The reference: the holes filled with the mean of the remaining pixels.
    let finite: Vec<f64> = with_holes
        .iter()
        .filter(|v| v.is_finite())
        .map(|&v| f64::from(v))
        .collect();
    let mean = finite.iter().sum::<f64>() / finite.len() as f64;
    let mut filled = with_holes.clone();
    for &i in &holes {
        filled[i] = mean as f32;
    }
    for size in [40, 13] {
        let a = thumbnail(&with_holes, nx, ny, size, 2.5).unwrap();
        let b = thumbnail(&filled, nx, ny, size, 2.5).unwrap();
        assert_eq!(a.1, b.1);
        let worst = a.0.iter().zip(&b.0).map(|(x, y)| x.abs_diff(*y)).max();
        assert!(worst <= Some(1), "size {size}: {worst:?}");
    }
    // All NaN: constant.
    let (p, _, _) = thumbnail(&[f32::NAN; 12], 4, 3, 2, 2.5).unwrap();
    assert!(p.iter().all(|&v| v == MID_GREY));
}

#[test]
fn invalid_arguments_are_errors() {
    let img = vec![0.0f32; 12];
    assert_eq!(thumbnail(&img, 4, 3, 0, 2.5), Err(ThumbnailError::ZeroSize));
    for r in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        match thumbnail(&img, 4, 3, 2, r) {
            Err(ThumbnailError::BadRange(_)) => {}
            other => panic!("range {r}: {other:?}"),
        }
    }
    for (nx, ny) in [(0, 3), (4, 0), (4, 4), (3, 3)] {
        assert_eq!(
            thumbnail(&img, nx, ny, 2, 2.5),
            Err(ThumbnailError::BadDimensions { nx, ny, len: 12 })
        );
    }
    assert_eq!(
        thumbnail(&[], 0, 0, 2, 2.5),
        Err(ThumbnailError::BadDimensions {
            nx: 0,
            ny: 0,
            len: 0
        })
    );
    let msg = ThumbnailError::BadRange(-1.0).to_string();
    assert!(msg.contains("-1"), "{msg}");
    let msg = ThumbnailError::BadDimensions {
        nx: 4,
        ny: 4,
        len: 12,
    }
    .to_string();
    assert!(msg.contains("4x4") && msg.contains("12"), "{msg}");
}

#[test]
fn thumbnail_writes_as_png() {
    let tmp = crate::test_util::TempDir::new("thumbnail-png");
    let (nx, ny) = (300, 200);
    let (p, w, h) = thumbnail(&noise(nx, ny, 5), nx, ny, 64, 2.5).unwrap();
    let path = tmp.join("t.png");
    crate::io::png::write_png_gray8(&path, &p, w, h).unwrap();
    assert_eq!(crate::io::png::read_png_gray8(&path).unwrap(), (p, w, h));
}

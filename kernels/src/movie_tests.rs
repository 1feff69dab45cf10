use super::*;
use crate::fft::shift_image;
use crate::io::mrc::{WriteMode, write_mrc};
use crate::test_util::TempDir;

/// A smooth periodic image with structure at several frequencies.
fn pattern(nx: usize, ny: usize) -> Vec<f32> {
    let tau = std::f64::consts::TAU;
    let mut v = Vec::with_capacity(nx * ny);
    for y in 0..ny {
        for x in 0..nx {
            let (u, w) = (x as f64 / nx as f64, y as f64 / ny as f64);
            v.push(
                (10.0
                    + (tau * u).cos()
                    + 0.5 * (tau * 3.0 * w).sin()
                    + 0.3 * (tau * (5.0 * u + 2.0 * w)).cos()
                    + (tau * (12.0 * u + 9.0 * w)).cos()) as f32,
            );
        }
    }
    v
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const SHIFTS: [[f32; 2]; 5] = [
    [-2.0, 1.0],
    [-1.25, 0.5],
    [0.0, 0.0],
    [1.5, -0.75],
    [1.75, -0.75],
];

fn shifted_frames(nx: usize, ny: usize) -> (Vec<f32>, Vec<Vec<f32>>) {
    let img = pattern(nx, ny);
    let frames = SHIFTS
        .iter()
        .map(|s| shift_image(&img, nx, ny, s[0] as f64, s[1] as f64))
        .collect();
    (img, frames)
}

#[test]
fn aligned_average_undoes_the_shifts() {
    let (nx, ny) = (64, 48);
    let (img, frames) = shifted_frames(nx, ny);
    let movie = Movie::from_frames(&frames, nx, ny);
    let sums = accumulate(
        &movie,
        &AccumulateRequest {
            shifts_px: &SHIFTS,
            pixel_size_a: 1.0,
            dose: None,
            odd_even: true,
        },
    );
    assert!(
        max_abs_diff(&sums.average, &img) < 1e-3,
        "{}",
        max_abs_diff(&sums.average, &img)
    );
    // Unaligned, the average differs visibly: the test can fail.
    let zero = [[0.0f32; 2]; 5];
    let plain = accumulate(
        &movie,
        &AccumulateRequest {
            shifts_px: &zero,
            pixel_size_a: 1.0,
            dose: None,
            odd_even: false,
        },
    );
    assert!(max_abs_diff(&plain.average, &img) > 0.1);
    assert!(plain.odd.is_none() && plain.weighted.is_none());
    // The half averages recombine into the average (2 odd frames, 3 even).
    let (odd, even) = (sums.odd.unwrap(), sums.even.unwrap());
    let recombined: Vec<f32> = odd
        .iter()
        .zip(&even)
        .map(|(o, e)| (2.0 * o + 3.0 * e) / 5.0)
        .collect();
    assert!(max_abs_diff(&recombined, &sums.average) < 1e-4);
}

#[test]
fn dose_weighting_keeps_the_mean_and_damps_high_frequencies() {
    let (nx, ny) = (64, 64);
    let (_, frames) = shifted_frames(nx, ny);
    // Add a Nyquist-band checkerboard-like pattern so there is high-frequency power.
    let frames: Vec<Vec<f32>> = frames
        .into_iter()
        .map(|f| {
            f.iter()
                .enumerate()
                .map(|(i, v)| v + if (i % nx + i / nx) % 3 == 0 { 1.0 } else { 0.0 })
                .collect()
        })
        .collect();
    let movie = Movie::from_frames(&frames, nx, ny);
    let zero = [[0.0f32; 2]; 5];
    let sums = |dose: f64| {
        accumulate(
            &movie,
            &AccumulateRequest {
                shifts_px: &zero,
                pixel_size_a: 1.0,
                dose: Some(DoseWeighting {
                    dose_per_frame: dose,
                    voltage_kv: 300.0,
                }),
                odd_even: false,
            },
        )
    };
    let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    let var = |v: &[f32]| {
        let m = mean(v);
        v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / v.len() as f64
    };
    let light = sums(1e-6);
    let heavy = sums(20.0);
    let (lw, hw) = (light.weighted.unwrap(), heavy.weighted.unwrap());
    // Negligible dose: the weighted average is the plain one.
    assert!(max_abs_diff(&lw, &light.average) < 1e-3);
    // Heavy dose: same mean, less variance (high frequencies damped).
    assert!((mean(&hw) - mean(&heavy.average)).abs() < 1e-3);
    assert!(
        var(&hw) < 0.9 * var(&heavy.average),
        "{} vs {}",
        var(&hw),
        var(&heavy.average)
    );
}

#[test]
fn load_reads_mrc_crops_and_reports_pixel_size() {
    let dir = TempDir::new("movie-load");
    let (nx, ny) = (64, 48);
    let (_, frames) = shifted_frames(nx, ny);
    let flat: Vec<f32> = frames.iter().flatten().copied().collect();
    let path = dir.join("m.mrc");
    write_mrc(&path, &flat, nx, ny, frames.len(), WriteMode::Float32, 1.5).unwrap();

    let full = Movie::load(&path, None, &LoadOptions::default()).unwrap();
    assert_eq!((full.nx, full.ny, full.frames()), (nx, ny, 5));
    assert_eq!(full.file_pixel_size_a, Some(1.5));
    assert!(!full.gain_corrected);
    let direct = Movie::from_frames(&frames, nx, ny);
    assert_eq!(full.spectra, direct.spectra);

    let half = Movie::load(
        &path,
        None,
        &LoadOptions {
            scale_factor: 0.5,
            correct_gain: true,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert_eq!((half.nx, half.ny, half.file_nx), (32, 24, 64));
    assert!((half.scale() - 0.5).abs() < 1e-12);
    assert_eq!(
        half.spectra[0],
        crop_spectrum(&direct.spectra[0], nx, ny, 32, 24)
    );
}

#[test]
fn load_errors_name_the_file_and_the_problem() {
    let dir = TempDir::new("movie-bad");
    let path = dir.join("m.mrc");
    let (nx, ny) = (32, 32);
    write_mrc(
        &path,
        &(0..nx * ny * 3).map(|i| (i % 7) as f32).collect::<Vec<_>>(),
        nx,
        ny,
        3,
        WriteMode::Float32,
        1.0,
    )
    .unwrap();

    let bad_scale = Movie::load(
        &path,
        None,
        &LoadOptions {
            scale_factor: 1.5,
            correct_gain: true,
            ..LoadOptions::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        bad_scale.contains("m.mrc") && bad_scale.contains("scale_factor"),
        "{bad_scale}"
    );

    // A gain reference of the wrong size.
    let gain_path = dir.join("gain.mrc");
    write_mrc(
        &gain_path,
        &vec![1.0; 16 * 16],
        16,
        16,
        1,
        WriteMode::Float32,
        1.0,
    )
    .unwrap();
    let gain = GainRef::load(&gain_path, false, false, false, None).unwrap();
    let err = Movie::load(&path, Some(&gain), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("m.mrc") && err.contains("gain.mrc"), "{err}");
    // Not applied when correct_gain is off.
    let off = LoadOptions {
        scale_factor: 1.0,
        correct_gain: false,
        ..LoadOptions::default()
    };
    assert!(Movie::load(&path, Some(&gain), &off).is_ok());

    // Truncated data.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let err = Movie::load(&path, None, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("m.mrc"), "{err}");

    let err = Movie::load(&dir.join("missing.mrc"), None, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.mrc"), "{err}");
}

#[test]
fn non_finite_or_constant_movies_are_refused_as_the_file_s_fault() {
    let dir = TempDir::new("movie-content");
    let (nx, ny) = (32, 24);
    let mut data: Vec<f32> = (0..nx * ny * 3).map(|i| (i % 5) as f32).collect();
    data[nx * ny + 7] = f32::NAN;
    let path = dir.join("nan.mrc");
    write_mrc(&path, &data, nx, ny, 3, WriteMode::Float32, 1.0).unwrap();
    let e = Movie::load(&path, None, &LoadOptions::default()).unwrap_err();
    assert!(e.is_permanent(), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("nan.mrc") && msg.contains("frame 1"), "{msg}");

    let path = dir.join("flat.mrc");
    write_mrc(
        &path,
        &vec![3.0; nx * ny * 3],
        nx,
        ny,
        3,
        WriteMode::Float32,
        1.0,
    )
    .unwrap();
    let e = Movie::load(&path, None, &LoadOptions::default()).unwrap_err();
    assert!(
        e.is_permanent() && e.to_string().contains("constant"),
        "{e}"
    );

    // One constant frame among others is still a movie.
    let mut data: Vec<f32> = (0..nx * ny * 3).map(|i| (i % 5) as f32).collect();
    data[..nx * ny].fill(0.0);
    let path = dir.join("one-flat.mrc");
    write_mrc(&path, &data, nx, ny, 3, WriteMode::Float32, 1.0).unwrap();
    assert_eq!(
        Movie::load(&path, None, &LoadOptions::default())
            .unwrap()
            .frames(),
        3
    );
}

#[test]
fn what_a_movie_needs_grows_with_its_frames_and_saturates() {
    let one = Movie::memory_needed(4096, 4096, 4096, 4096, 1);
    let forty = Movie::memory_needed(4096, 4096, 4096, 4096, 40);
    // 39 more spectra of (2049 × 4096) complex values.
    assert_eq!(forty - one, 39 * 2049 * 4096 * 8);
    assert_eq!(
        Movie::memory_needed(65536, 65536, 65536, 65536, usize::MAX),
        u64::MAX
    );
}

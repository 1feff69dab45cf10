use super::*;
use crate::sim::{SimParams, simulate};

/// Tolerances of the brief: mean defocus 1 % (or 0.02 µm), U − V 0.03 µm, angle 3°.
const SPEC: (f64, f64, f64) = (0.01, 0.03, 3.0);

struct Case {
    size: usize,
    frames: usize,
    dose: f64,
    pixel: f64,
    u: f64,
    v: f64,
    angle: f64,
    phase: f64,
    window: usize,
    seed: u64,
    /// Tolerances: mean defocus (fraction, floor 0.02 µm), U − V (µm), angle (°).
    tol: (f64, f64, f64),
}

/// Simulates the movie (no motion), sums the frames, fits, and checks against the truth.
fn run(case: &Case, opts: &CtfFitOptions) -> CtfFit {
    let sim = SimParams {
        nx: case.size,
        ny: case.size,
        frames: case.frames,
        pixel_size_a: case.pixel,
        dose_per_px_per_frame: case.dose,
        ctf: Ctf {
            voltage_kv: 300.0,
            cs_mm: 2.7,
            amplitude_contrast: 0.07,
            pixel_size_a: case.pixel,
            defocus_u_um: case.u,
            defocus_v_um: case.v,
            astig_angle_deg: case.angle,
            phase_shift_pi: case.phase,
        },
        seed: case.seed,
        max_shift_px: 0.0,
        path: crate::sim::SimPath::Smooth,
    };
    let movie = simulate(&sim);
    let mut sum = vec![0.0f32; case.size * case.size];
    for f in &movie.frames {
        for (s, v) in sum.iter_mut().zip(f) {
            *s += v;
        }
    }
    let spec = power_spectrum(&sum, case.size, case.size, case.window);
    let fit = estimate_ctf(&spec, case.pixel, 300.0, 2.7, 0.07, opts);
    let mean_t = 0.5 * (case.u + case.v);
    let mean_f = 0.5 * (fit.defocus_u_um + fit.defocus_v_um);
    let astig_t = case.u - case.v;
    let astig_f = fit.defocus_u_um - fit.defocus_v_um;
    let mut dang = (fit.astig_angle_deg - case.angle).rem_euclid(180.0);
    if dang > 90.0 {
        dang -= 180.0;
    }
    eprintln!(
        "truth U {:.3} V {:.3} ang {:.1} | fit U {:.4} V {:.4} ang {:.2} ph {:.3} score {:.3} \
         res {:.1} Å | mean err {:.3}% astig err {:.4} µm angle err {:.2}°",
        case.u,
        case.v,
        case.angle,
        fit.defocus_u_um,
        fit.defocus_v_um,
        fit.astig_angle_deg,
        fit.phase_shift_pi,
        fit.score,
        fit.fit_resolution_a,
        100.0 * (mean_f - mean_t) / mean_t,
        astig_f - astig_t,
        dang
    );
    assert!(fit.defocus_u_um >= fit.defocus_v_um);
    assert!((0.0..180.0).contains(&fit.astig_angle_deg));
    let tol = (case.tol.0 * mean_t).max(0.02);
    assert!(
        (mean_f - mean_t).abs() <= tol,
        "mean defocus {mean_f} vs {mean_t}"
    );
    assert!(
        (astig_f - astig_t).abs() <= case.tol.1,
        "astigmatism {astig_f} vs {astig_t}"
    );
    if astig_t >= 0.1 {
        assert!(
            dang.abs() <= case.tol.2,
            "angle {} vs {}",
            fit.astig_angle_deg,
            case.angle
        );
    }
    assert!(fit.score > 0.0 && fit.fit_resolution_a.is_finite());
    fit
}

#[test]
fn tiles_cover_the_axis() {
    assert_eq!(tile_starts(512, 512), vec![0]);
    assert_eq!(tile_starts(1024, 512), vec![0, 256, 512]);
    assert_eq!(tile_starts(1000, 512), vec![0, 256, 488]);
}

#[test]
fn white_noise_spectrum_is_flat() {
    let mut rng = crate::sim::SplitMix64::new(3);
    let (nx, ny) = (256, 256);
    let img: Vec<f32> = (0..nx * ny).map(|_| rng.normal() as f32).collect();
    let s = power_spectrum(&img, nx, ny, 128);
    assert_eq!(s.n, 128);
    assert_eq!(s.tiles, 9);
    let prof = radial_average(&s.data, 128, 128, 64);
    let mid: f64 = prof[5..60].iter().map(|&v| v as f64).sum::<f64>() / 55.0;
    for (b, &v) in prof.iter().enumerate().take(60).skip(5) {
        assert!((v as f64 / mid - 1.0).abs() < 0.2, "ring {b}: {v} vs {mid}");
    }
}

/// The case the method was developed on. Debug-sized (512², window 256, 4 e⁻/px/frame): a
/// quarter of the brief's area, so the angle tolerance is widened to 6°.
#[test]
fn astigmatic_512() {
    let case = Case {
        size: 512,
        frames: 12,
        dose: 4.0,
        pixel: 1.0,
        u: 1.9,
        v: 1.6,
        angle: 30.0,
        phase: 0.0,
        window: 256,
        seed: 11,
        tol: (0.01, 0.03, 6.0),
    };
    run(&case, &CtfFitOptions::default());
}

/// Not tuned on: different pixel size, defocus, dose, angle and seed (debug-sized as above;
/// first run gave an angle error of 4.8°, hence the 6° tolerance at this size).
#[test]
fn astigmatic_untuned_512() {
    let case = Case {
        size: 512,
        frames: 10,
        dose: 3.0,
        pixel: 1.4,
        u: 2.85,
        v: 2.6,
        angle: 128.0,
        phase: 0.0,
        window: 256,
        seed: 97,
        tol: (0.01, 0.03, 6.0),
    };
    run(&case, &CtfFitOptions::default());
}

/// Full-size cases of the brief (1024², 512 tiles, ≈1 e⁻/px/frame), release only.
#[test]
#[cfg_attr(debug_assertions, ignore)]
fn astigmatic_1024_release() {
    let case = Case {
        size: 1024,
        frames: 12,
        dose: 1.0,
        pixel: 1.1,
        u: 1.35,
        v: 1.05,
        angle: 75.0,
        phase: 0.0,
        window: 512,
        seed: 5,
        tol: SPEC,
    };
    run(&case, &CtfFitOptions::default());
    let case = Case {
        size: 1024,
        frames: 16,
        dose: 0.8,
        pixel: 0.85,
        u: 3.6,
        v: 3.6,
        angle: 0.0,
        phase: 0.0,
        window: 512,
        seed: 23,
        tol: SPEC,
    };
    run(&case, &CtfFitOptions::default());
    // Not tuned on (written and run once): astigmatic, other pixel size, dose and angle.
    let case = Case {
        size: 1024,
        frames: 14,
        dose: 1.2,
        pixel: 1.3,
        u: 2.4,
        v: 2.15,
        angle: 100.0,
        phase: 0.0,
        window: 512,
        seed: 41,
        tol: SPEC,
    };
    run(&case, &CtfFitOptions::default());
}

/// Phase plate: phase shift fitted together with defocus. Phase and defocus trade off at low
/// resolution, so the defocus tolerance is 5 % and the phase one 0.1π.
#[test]
#[cfg_attr(debug_assertions, ignore)]
fn phase_shift_release() {
    let case = Case {
        size: 1024,
        frames: 12,
        dose: 1.0,
        pixel: 1.0,
        u: 1.0,
        v: 0.85,
        angle: 160.0,
        phase: 0.4,
        window: 512,
        seed: 8,
        tol: (0.05, 0.03, 3.0),
    };
    let opts = CtfFitOptions {
        fit_phase: true,
        ..CtfFitOptions::default()
    };
    let fit = run(&case, &opts);
    assert!(
        (fit.phase_shift_pi - 0.4).abs() < 0.1,
        "phase {}",
        fit.phase_shift_pi
    );
}

/// A radial spectrum: a smooth background plus, for each `(defocus µm, amplitude)`, an
/// enveloped `CTF²` (300 kV, Cs 2.7 mm, 7 % amplitude contrast); no noise.
fn two_defocus_spectrum(n: usize, pixel_a: f64, defoci: &[(f64, f64)]) -> Spectrum {
    let optics = ChiTerms::new(300.0, 2.7, 0.07);
    let nxh = n / 2 + 1;
    let mut data = vec![0.0f32; nxh * n];
    for j in 0..n {
        for i in 0..nxh {
            let (kx, ky) = bin_k(i, j, n, n, pixel_a);
            let k2 = kx * kx + ky * ky;
            let mut v = 1.0 / (1.0 + 400.0 * k2);
            for &(df, a) in defoci {
                v += a * optics.chi(k2, df, 0.0).sin().powi(2) * (-20.0 * k2).exp();
            }
            data[j * nxh + i] = v as f32;
        }
    }
    Spectrum { n, data, tiles: 1 }
}

/// A 64 px spectrum whose background passes alternate between 4.51 and 3.37 µm for ever (each
/// estimate's knots make the other win), found by a search over two-defocus spectra.
fn alternating_spectrum() -> Spectrum {
    two_defocus_spectrum(64, 1.0, &[(3.775, 1.0), (1.211, 0.026)])
}

/// Regression: the background loop had no pass limit, so `estimate_ctf` never returned for a
/// spectrum whose passes alternate (this test timed out). It must return, within a bound.
#[test]
fn ctf_fit_returns_when_the_background_passes_alternate() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let fit = estimate_ctf(
            &alternating_spectrum(),
            1.0,
            300.0,
            2.7,
            0.07,
            &CtfFitOptions::default(),
        );
        let _ = tx.send(fit);
    });
    let fit = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("estimate_ctf did not return within 120 s: the background passes do not stop");
    assert!(
        fit.defocus_u_um.is_finite() && fit.defocus_v_um.is_finite(),
        "{fit:?}"
    );
    assert!(fit.defocus_u_um >= fit.defocus_v_um, "{fit:?}");
}

/// The alternating passes stop at [`MAX_BACKGROUND_PASSES`] and keep the better-correlating of
/// the two estimates; a spectrum that settles stops long before.
#[test]
fn background_passes_stop_at_the_limit_and_keep_the_best_pass() {
    let opts = CtfFitOptions::default();
    let run = |s: &Spectrum| {
        let n = s.n;
        let n_rings = n / 2;
        let (k_lo, k_hi) = (1.0 / opts.range_min_a, 1.0 / opts.range_max_a);
        let prof = radial_average(&s.data, n, n, n_rings);
        let rings: Vec<usize> = (0..n_rings)
            .filter(|&b| (k_lo..=k_hi).contains(&radial_bin_k(b, n_rings, 1.0)))
            .collect();
        let ks: Vec<f64> = rings
            .iter()
            .map(|&b| radial_bin_k(b, n_rings, 1.0))
            .collect();
        let ps: Vec<f64> = rings.iter().map(|&b| prof[b] as f64).collect();
        let optics = ChiTerms::new(300.0, 2.7, 0.07);
        let (_, res, passes) =
            background_passes(&ks, &ps, &optics, &opts, (k_lo, k_hi), 1.0 / n as f64);
        (res, passes)
    };
    let ((df, _, score), passes) = run(&alternating_spectrum());
    assert_eq!(passes, MAX_BACKGROUND_PASSES);
    // The two estimates correlate 0.867 (4.51 µm) and 0.807 (3.37 µm).
    assert!(
        (df - 4.51).abs() < 0.01 && score > 0.85,
        "{df} µm, score {score}"
    );
    let (_, passes) = run(&two_defocus_spectrum(128, 1.0, &[(1.8, 1.0)]));
    assert!(passes < 6, "a single-defocus spectrum took {passes} passes");
}

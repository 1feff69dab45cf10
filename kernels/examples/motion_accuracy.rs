//! Global motion accuracy on simulated movies, every trajectory regulariser side by side on the
//! same movies: RMS error of the shifts (px, mean removed), first-frame error, and time.
//!
//!   cargo run --release -p warp-kernels --example motion_accuracy [-- --held-out]
//!
//! The tuning set (default) is what the regulariser was designed on; `--held-out` runs movies
//! that were not looked at while choosing it (other seeds, sizes, frame counts, doses);
//! `--seeds` runs ten seeds of two hard kinds (1024² × 30 at 0.5 e/px, the unit test's, and
//! 2048² × 40 at 1 e/px; about 6 minutes on 2 cores); `--time-4k` times a 4096² × 40 movie.

use std::time::Instant;

use warp_kernels::ctf::Ctf;
use warp_kernels::motion::{MotionOptions, Trajectory, estimate_global};
use warp_kernels::sim::{SimParams, SimPath, simulate};

struct Case {
    name: &'static str,
    n: usize,
    frames: usize,
    dose: f64,
    max_shift: f64,
    path: SimPath,
    seed: u64,
}

fn params(c: &Case) -> SimParams {
    SimParams {
        nx: c.n,
        ny: c.n,
        frames: c.frames,
        pixel_size_a: 1.0,
        dose_per_px_per_frame: c.dose,
        ctf: Ctf {
            voltage_kv: 300.0,
            cs_mm: 2.7,
            amplitude_contrast: 0.07,
            pixel_size_a: 1.0,
            defocus_u_um: 1.6,
            defocus_v_um: 1.5,
            astig_angle_deg: 20.0,
            phase_shift_pi: 0.0,
        },
        seed: c.seed,
        max_shift_px: c.max_shift,
        path: c.path,
    }
}

fn rms(est: &[[f32; 2]], truth: &[[f32; 2]]) -> (f64, f64) {
    let n = est.len() as f64;
    let mut sum = 0.0;
    let mut first = 0.0;
    for axis in 0..2 {
        let d: Vec<f64> = est
            .iter()
            .zip(truth)
            .map(|(e, t)| f64::from(e[axis]) - f64::from(t[axis]))
            .collect();
        let m = d.iter().sum::<f64>() / n;
        sum += d.iter().map(|v| (v - m).powi(2)).sum::<f64>();
        first += (d[0] - m).powi(2);
    }
    ((sum / (2.0 * n)).sqrt(), first.sqrt())
}

fn main() {
    let held_out = std::env::args().any(|a| a == "--held-out");
    if std::env::args().any(|a| a == "--time-4k") {
        return time_4k();
    }
    if std::env::args().any(|a| a == "--seeds") {
        return seeds();
    }
    let hard = |j| SimPath::Hard { jitter_px: j };
    let cases: Vec<Case> = if held_out {
        vec![
            Case {
                name: "2048² × 40, hard 25 px, jitter 0.08, 1 e/px",
                n: 2048,
                frames: 40,
                dose: 1.0,
                max_shift: 25.0,
                path: hard(0.08),
                seed: 901,
            },
            Case {
                name: "1536² × 30, hard 15 px, jitter 0.15, 0.5 e/px",
                n: 1536,
                frames: 30,
                dose: 0.5,
                max_shift: 15.0,
                path: hard(0.15),
                seed: 902,
            },
            Case {
                name: "1024² × 50, hard 20 px, jitter 0.05, 0.8 e/px",
                n: 1024,
                frames: 50,
                dose: 0.8,
                max_shift: 20.0,
                path: hard(0.05),
                seed: 903,
            },
            Case {
                name: "768² × 24, smooth 6 px, 1.2 e/px",
                n: 768,
                frames: 24,
                dose: 1.2,
                max_shift: 6.0,
                path: SimPath::Smooth,
                seed: 904,
            },
            Case {
                name: "1024² × 20, smooth 10 px, 0.5 e/px",
                n: 1024,
                frames: 20,
                dose: 0.5,
                max_shift: 10.0,
                path: SimPath::Smooth,
                seed: 905,
            },
        ]
    } else {
        vec![
            Case {
                name: "1024² × 40, hard 20 px, jitter 0.1, 1 e/px",
                n: 1024,
                frames: 40,
                dose: 1.0,
                max_shift: 20.0,
                path: hard(0.1),
                seed: 11,
            },
            Case {
                name: "1024² × 30, hard 12 px, jitter 0.1, 0.5 e/px",
                n: 1024,
                frames: 30,
                dose: 0.5,
                max_shift: 12.0,
                path: hard(0.1),
                seed: 12,
            },
            Case {
                name: "1024² × 40, hard 25 px, no jitter, 1 e/px",
                n: 1024,
                frames: 40,
                dose: 1.0,
                max_shift: 25.0,
                path: hard(0.0),
                seed: 13,
            },
            Case {
                name: "512² × 16, smooth 5 px, 1 e/px",
                n: 512,
                frames: 16,
                dose: 1.0,
                max_shift: 5.0,
                path: SimPath::Smooth,
                seed: 14,
            },
            Case {
                name: "512² × 24, smooth 5 px, 0.5 e/px",
                n: 512,
                frames: 24,
                dose: 0.5,
                max_shift: 5.0,
                path: SimPath::Smooth,
                seed: 15,
            },
        ]
    };
    let estimators = [
        ("smoothed", Trajectory::Smoothed),
        ("polynomial 4", Trajectory::Polynomial(4)),
        ("per frame", Trajectory::PerFrame),
    ];
    println!("| movie | estimator | RMS error (px) | first frame (px) | time (s) |");
    println!("|---|---|---|---|---|");
    for c in &cases {
        let p = params(c);
        let movie = simulate(&p);
        for (label, t) in estimators {
            let opts = MotionOptions {
                trajectory: t,
                ..MotionOptions::default()
            };
            let start = Instant::now();
            let r = estimate_global(&movie.frames, p.nx, p.ny, p.pixel_size_a, &opts);
            let secs = start.elapsed().as_secs_f64();
            let (e, first) = rms(&r.shifts_px, &movie.truth.shifts_px);
            println!("| {} | {label} | {e:.3} | {first:.3} | {secs:.2} |", c.name);
        }
    }
}

/// Motion time on a 4096² × 40 movie, smoothed and quartic interleaved, three times each:
/// medians (`-- --time-4k`).
fn time_4k() {
    let c = Case {
        name: "4096² × 40, hard 25 px, jitter 0.08, 1 e/px",
        n: 4096,
        frames: 40,
        dose: 1.0,
        max_shift: 25.0,
        path: SimPath::Hard { jitter_px: 0.08 },
        seed: 4096,
    };
    let p = params(&c);
    let movie = simulate(&p);
    let mut times = [Vec::new(), Vec::new()];
    let mut errors = [0.0, 0.0];
    for _ in 0..3 {
        for (i, t) in [Trajectory::Smoothed, Trajectory::Polynomial(4)]
            .into_iter()
            .enumerate()
        {
            let opts = MotionOptions {
                trajectory: t,
                ..MotionOptions::default()
            };
            let start = Instant::now();
            let r = estimate_global(&movie.frames, p.nx, p.ny, p.pixel_size_a, &opts);
            times[i].push(start.elapsed().as_secs_f64());
            errors[i] = rms(&r.shifts_px, &movie.truth.shifts_px).0;
        }
    }
    for t in &mut times {
        t.sort_by(f64::total_cmp);
    }
    println!(
        "{}: smoothed {:.2} s (RMS {:.3} px), quartic {:.2} s (RMS {:.3} px), ratio {:.2}",
        c.name,
        times[0][1],
        errors[0],
        times[1][1],
        errors[1],
        times[0][1] / times[1][1]
    );
}

/// Ten seeds of two kinds of hard movie, the default smoother against the per-frame shifts
/// (`-- --seeds`). The CTF is that of `motion_tests.rs` (1.6 µm, no astigmatism), so seed 12
/// of the first kind is the movie of `hard_path_at_half_an_electron_per_pixel`.
fn seeds() {
    let kinds = [
        (
            "1024² × 30, hard 12 px, jitter 0.1, 0.5 e/px",
            1024,
            30,
            0.5,
            12.0,
            0.1,
        ),
        (
            "2048² × 40, hard 25 px, jitter 0.08, 1 e/px",
            2048,
            40,
            1.0,
            25.0,
            0.08,
        ),
    ];
    println!("| movie | seed | smoothed | per frame |");
    println!("|---|---|---|---|");
    for (name, n, frames, dose, max_shift, jitter) in kinds {
        for seed in [12, 34, 31, 32, 33, 35, 36, 37, 38, 39] {
            let c = Case {
                name,
                n,
                frames,
                dose,
                max_shift,
                path: SimPath::Hard { jitter_px: jitter },
                seed,
            };
            let mut p = params(&c);
            p.ctf.defocus_v_um = p.ctf.defocus_u_um;
            p.ctf.astig_angle_deg = 0.0;
            let movie = simulate(&p);
            let err = |t| {
                let opts = MotionOptions {
                    trajectory: t,
                    ..MotionOptions::default()
                };
                let r = estimate_global(&movie.frames, p.nx, p.ny, p.pixel_size_a, &opts);
                rms(&r.shifts_px, &movie.truth.shifts_px).0
            };
            let (smoothed, per_frame) = (err(Trajectory::Smoothed), err(Trajectory::PerFrame));
            println!("| {name} | {seed} | {smoothed:.4} | {per_frame:.4} |");
        }
    }
}

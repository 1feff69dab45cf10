//! GPU/CPU parity on simulated movies (issue 4).
//!
//! ```text
//! gpu_parity [-d N] [--require-gpu] [--size PX] [--frames F]
//! ```
//!
//! Simulates a movie with known motion and CTF, divides it by a random gain reference with a few
//! defect pixels, writes both as MRC, and runs the same operations through [`CpuBackend`] and
//! [`CudaBackend`]: `load_movie` (gain, defects, FFT; then again with a Fourier crop),
//! `motion_global`, `accumulate` (dose-weighted, odd/even), `power_spectrum` and `fit_ctf`.
//! Then it compares them against stated tolerances:
//!
//! | quantity | tolerance |
//! |---|---|
//! | frame spectra, relative L2 difference | 1e-4 |
//! | averages (plain, weighted, odd, even), relative L2 | 1e-4 |
//! | power spectrum, relative L2 | 1e-4 |
//! | shifts, RMS difference | 0.02 px |
//! | mean defocus, relative difference | 0.1 % |
//! | frame spectra with a second (flipped) gain reference, relative L2 | 1e-4 |
//! | freed load buffers the memory pool keeps, short of one frame | 0 MiB |
//! | device memory pool growth when the same movie is loaded again | 0 MiB |
//!
//! Without a usable GPU it prints `SKIP: <reason>` and exits 0, or 1 with `--require-gpu`
//! (as `scripts/gpu-check.sh` runs it). Exit 1 on any tolerance missed; the last line is JSON.

use std::time::Instant;

use warp_kernels::backend::cuda::CudaBackend;
use warp_kernels::backend::{Backend, BackendError, CpuBackend, Optics, probe};
use warp_kernels::ctf::Ctf;
use warp_kernels::ctf_fit::CtfFitOptions;
use warp_kernels::gain::GainRef;
use warp_kernels::io::mrc::{WriteMode, write_mrc};
use warp_kernels::motion::MotionOptions;
use warp_kernels::movie::{AccumulateRequest, DoseWeighting, LoadOptions, Movie};
use warp_kernels::sim::{SimParams, SplitMix64, simulate};

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut n) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        d += ((x - y) as f64).powi(2);
        n += (*x as f64).powi(2);
    }
    (d / n.max(1e-300)).sqrt()
}

fn spectra_rel(a: &Movie, b: &Movie) -> f64 {
    a.spectra
        .iter()
        .zip(&b.spectra)
        .map(|(x, y)| {
            let (mut d, mut n) = (0.0f64, 0.0f64);
            for (u, v) in x.iter().zip(y) {
                d += ((u - v).norm_sqr()) as f64;
                n += u.norm_sqr() as f64;
            }
            (d / n.max(1e-300)).sqrt()
        })
        .fold(0.0, f64::max)
}

/// A backend error as the run's failure message, naming the step.
fn failed(step: &str) -> impl Fn(BackendError) -> String + '_ {
    move |e| format!("{step}: {e}")
}

struct Check {
    name: &'static str,
    value: f64,
    limit: f64,
}

fn main() {
    let mut device = 0usize;
    let mut require = false;
    let (mut size, mut frames) = (1024usize, 24usize);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut num = |what: &str| -> usize {
            it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                eprintln!("gpu_parity: {what} needs a number");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "-d" => device = num("-d"),
            "--size" => size = num("--size") & !1,
            "--frames" => frames = num("--frames"),
            "--require-gpu" => require = true,
            _ => {
                eprintln!("usage: gpu_parity [-d N] [--require-gpu] [--size PX] [--frames F]");
                std::process::exit(2)
            }
        }
    }
    if let Err(reason) = probe(device) {
        println!("SKIP: GPU parity needs a usable GPU {device}: {reason}");
        std::process::exit(if require { 1 } else { 0 });
    }
    match run(device, size, frames) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("gpu_parity: {e}");
            std::process::exit(1)
        }
    }
}

fn run(device: usize, size: usize, n_frames: usize) -> Result<bool, String> {
    let gpu = CudaBackend::new(device)?;
    let cpu = CpuBackend;
    println!(
        "GPU {}: {} ({} MiB)",
        device,
        gpu.info().name,
        gpu.info().memory_bytes >> 20
    );
    let dir = std::env::temp_dir().join(format!("warp-gpu-parity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let (nx, ny) = (size, size);
    let truth_ctf = Ctf {
        voltage_kv: 300.0,
        cs_mm: 2.7,
        amplitude_contrast: 0.07,
        pixel_size_a: 1.0,
        defocus_u_um: 1.9,
        defocus_v_um: 1.7,
        astig_angle_deg: 35.0,
        phase_shift_pi: 0.0,
    };
    let sim = simulate(&SimParams {
        nx,
        ny,
        frames: n_frames,
        pixel_size_a: 1.0,
        dose_per_px_per_frame: 1.0,
        ctf: truth_ctf,
        seed: 21,
        max_shift_px: 8.0,
        path: warp_kernels::sim::SimPath::Smooth,
    });
    // A gain in [0.5, 1.5] (mean 1) and a few isolated defects.
    let mut rng = SplitMix64::new(5);
    let mut gain: Vec<f32> = (0..nx * ny).map(|_| 0.5 + rng.uniform() as f32).collect();
    let mean = gain.iter().map(|&g| g as f64).sum::<f64>() / gain.len() as f64;
    gain.iter_mut().for_each(|g| *g /= mean as f32);
    let mut defects = vec![0.0f32; nx * ny];
    for k in 0..20 {
        defects[((97 * k + 13) * nx / 2 + 31 * k + 7) % (nx * ny)] = 1.0;
    }
    let raw: Vec<f32> = sim
        .frames
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, v)| v / gain[i % (nx * ny)])
        .collect();
    let (movie_path, gain_path, defects_path) = (
        dir.join("movie.mrc"),
        dir.join("gain.mrc"),
        dir.join("defects.mrc"),
    );
    let e = |x: warp_kernels::io::mrc::MrcError| x.to_string();
    write_mrc(&movie_path, &raw, nx, ny, n_frames, WriteMode::Float32, 1.0).map_err(e)?;
    write_mrc(&gain_path, &gain, nx, ny, 1, WriteMode::Float32, 1.0).map_err(e)?;
    write_mrc(&defects_path, &defects, nx, ny, 1, WriteMode::Float32, 1.0).map_err(e)?;
    let gain_ref = GainRef::load(
        &gain_path,
        false,
        false,
        false,
        Some(defects_path.as_path()),
    )
    .map_err(|e| e.to_string())?;

    let mut checks = Vec::new();
    let timed = |what: &str, f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        println!("  {what}: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    };
    let opts = LoadOptions::default();
    let (mut mc, mut mg) = (None, None);
    timed("load cpu", &mut || {
        mc = Some(cpu.load_movie(&movie_path, Some(&gain_ref), &opts))
    });
    timed("load gpu", &mut || {
        mg = Some(gpu.load_movie(&movie_path, Some(&gain_ref), &opts))
    });
    let mc = mc.expect("ran").map_err(|e| e.to_string())?;
    let mg = mg.expect("ran").map_err(|e| e.to_string())?;
    // The load's freed buffers stay in the pool (at least one frame's worth), and a second
    // movie of the same geometry takes them instead of growing it.
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    match gpu.pool_bytes() {
        Some((reserved, used)) => {
            let frame = (nx * ny * 4) as u64;
            checks.push(Check {
                name: "freed load buffers kept, MiB short of a frame",
                value: mib(frame.saturating_sub(reserved - used.min(reserved))),
                limit: 0.0,
            });
            let again = gpu
                .load_movie(&movie_path, Some(&gain_ref), &opts)
                .map_err(|e| e.to_string())?;
            drop(again);
            let (after, _) = gpu.pool_bytes().unwrap_or((reserved, 0));
            checks.push(Check {
                name: "pool growth on a second movie, MiB",
                value: mib(after.saturating_sub(reserved)),
                limit: 0.0,
            });
        }
        None => println!("  (no memory pools on this device: buffer reuse not checked)"),
    }
    // Another gain reference (the same file, flipped): the device copy must be replaced.
    let flipped = GainRef::load(&gain_path, true, false, false, Some(defects_path.as_path()))
        .map_err(|e| e.to_string())?;
    let fc = cpu
        .load_movie(&movie_path, Some(&flipped), &opts)
        .map_err(|e| e.to_string())?;
    let fg = gpu
        .load_movie(&movie_path, Some(&flipped), &opts)
        .map_err(|e| e.to_string())?;
    checks.push(Check {
        name: "frame spectra rel L2, a second gain reference",
        value: spectra_rel(&fc, &fg),
        limit: 1e-4,
    });
    drop((fc, fg));
    checks.push(Check {
        name: "frame spectra rel L2 (gain, defects, FFT)",
        value: spectra_rel(&mc, &mg),
        limit: 1e-4,
    });
    let half = LoadOptions {
        scale_factor: 0.5,
        correct_gain: true,
        ..LoadOptions::default()
    };
    let hc = cpu
        .load_movie(&movie_path, Some(&gain_ref), &half)
        .map_err(|e| e.to_string())?;
    let hg = gpu
        .load_movie(&movie_path, Some(&gain_ref), &half)
        .map_err(|e| e.to_string())?;
    checks.push(Check {
        name: "cropped spectra rel L2 (scale 0.5)",
        value: spectra_rel(&hc, &hg),
        limit: 1e-4,
    });
    drop((hc, hg));

    let mopts = MotionOptions::default();
    let motion_c = cpu
        .motion_global(&mc, 1.0, &mopts)
        .map_err(failed("motion cpu"))?;
    let motion_g = gpu
        .motion_global(&mg, 1.0, &mopts)
        .map_err(failed("motion gpu"))?;
    let rms = (motion_c
        .shifts_px
        .iter()
        .zip(&motion_g.shifts_px)
        .map(|(a, b)| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)) as f64)
        .sum::<f64>()
        / n_frames as f64)
        .sqrt();
    checks.push(Check {
        name: "shifts RMS difference, px",
        value: rms,
        limit: 0.02,
    });
    let req = AccumulateRequest {
        shifts_px: &motion_c.shifts_px,
        pixel_size_a: 1.0,
        dose: Some(DoseWeighting {
            dose_per_frame: 1.0,
            voltage_kv: 300.0,
        }),
        odd_even: true,
    };
    let (mut sc, mut sg) = (None, None);
    timed("accumulate cpu", &mut || {
        sc = Some(cpu.accumulate(&mc, &req))
    });
    timed("accumulate gpu", &mut || {
        sg = Some(gpu.accumulate(&mc, &req))
    });
    let sc = sc.expect("ran").map_err(failed("accumulate cpu"))?;
    let sg = sg.expect("ran").map_err(failed("accumulate gpu"))?;
    let pairs = [
        ("average rel L2", Some(&sc.average), Some(&sg.average)),
        (
            "dose-weighted rel L2",
            sc.weighted.as_ref(),
            sg.weighted.as_ref(),
        ),
        ("odd rel L2", sc.odd.as_ref(), sg.odd.as_ref()),
        ("even rel L2", sc.even.as_ref(), sg.even.as_ref()),
    ];
    for (name, a, b) in pairs {
        let (a, b) = (
            a.ok_or("CPU output missing")?,
            b.ok_or("GPU output missing")?,
        );
        checks.push(Check {
            name,
            value: rel_l2(a, b),
            limit: 1e-4,
        });
    }
    let (mut pc, mut pg) = (None, None);
    timed("power spectrum cpu", &mut || {
        pc = Some(cpu.power_spectrum(&sc.average, nx, ny, 512))
    });
    timed("power spectrum gpu", &mut || {
        pg = Some(gpu.power_spectrum(&sc.average, nx, ny, 512))
    });
    let pc = pc.expect("ran").map_err(failed("power spectrum cpu"))?;
    let pg = pg.expect("ran").map_err(failed("power spectrum gpu"))?;
    checks.push(Check {
        name: "power spectrum rel L2",
        value: rel_l2(&pc.data, &pg.data),
        limit: 1e-4,
    });
    let optics = Optics {
        voltage_kv: 300.0,
        cs_mm: 2.7,
        amplitude_contrast: 0.07,
    };
    let fc = cpu
        .fit_ctf(&pc, 1.0, &optics, &CtfFitOptions::default())
        .map_err(failed("CTF fit cpu"))?;
    let fg = gpu
        .fit_ctf(&pg, 1.0, &optics, &CtfFitOptions::default())
        .map_err(failed("CTF fit gpu"))?;
    let (dc, dg) = (
        (fc.defocus_u_um + fc.defocus_v_um) / 2.0,
        (fg.defocus_u_um + fg.defocus_v_um) / 2.0,
    );
    checks.push(Check {
        name: "mean defocus relative difference, %",
        value: (dc - dg).abs() / dc * 100.0,
        limit: 0.1,
    });
    let _ = std::fs::remove_dir_all(&dir);

    let mut ok = true;
    println!("{:<46} {:>12} {:>10}", "check", "value", "limit");
    for c in &checks {
        let pass = c.value <= c.limit;
        ok &= pass;
        println!(
            "{:<46} {:>12.3e} {:>10.1e} {}",
            c.name,
            c.value,
            c.limit,
            if pass { "ok" } else { "FAIL" }
        );
    }
    let json: Vec<String> = checks
        .iter()
        .map(|c| {
            format!(
                "{{\"check\":\"{}\",\"value\":{},\"limit\":{}}}",
                c.name, c.value, c.limit
            )
        })
        .collect();
    println!("{{\"gpu_parity\":{},\"checks\":[{}]}}", ok, json.join(","));
    Ok(ok)
}

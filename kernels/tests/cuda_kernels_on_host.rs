//! The CUDA kernels of `kernels/cuda/warp.cu`, compiled for the CPU with g++ under
//! `kernels/cuda/host_emulation.h` (every thread run in turn; no kernel synchronises or shares
//! memory, so this is exact) and compared with the Rust code each kernel must match. This
//! checks the kernels' arithmetic, indexing and conventions on machines without a GPU; the
//! device run (`scripts/gpu-check.sh`) checks the rest.
//!
//! Skipped, with a message, where g++ is missing (CI installs it).

use std::path::{Path, PathBuf};

use rustfft::num_complex::Complex32;
use warp_kernels::ctf_fit::{power_spectrum, tile_layout, tile_mean};
use warp_kernels::fft::{Fft2d, crop_spectrum, shift_spectrum};
use warp_kernels::gain::GainRef;
use warp_kernels::io::mrc::{WriteMode, write_mrc};
use warp_kernels::motion::peak_window;
use warp_kernels::movie::{AccumulateRequest, DoseWeighting, Movie, WeightTable, accumulate};
use warp_kernels::sim::SplitMix64;

/// The compiled host library, or `None` (with the reason printed) when g++ is missing.
fn host_lib() -> Option<libloading::Library> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out: PathBuf = std::env::temp_dir().join(format!(
        "warp-cuda-host-{}-{:?}.so",
        std::process::id(),
        std::thread::current().id()
    ));
    let status = std::process::Command::new("g++")
        .args([
            "-std=c++14",
            "-O1",
            "-shared",
            "-fPIC",
            "-Wall",
            "-Werror",
            "-o",
        ])
        .arg(&out)
        .arg(root.join("cuda/host_wrappers.cpp"))
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("g++ failed to compile kernels/cuda/host_wrappers.cpp ({s})"),
        Err(e) => {
            eprintln!("SKIP: the CUDA kernels' host check needs g++ ({e})");
            return None;
        }
    }
    // SAFETY: our own library, built just now; it runs no initialisers beyond the C++ runtime.
    let lib = unsafe { libloading::Library::new(&out) }.expect("load the host kernels");
    let _ = std::fs::remove_file(&out);
    Some(lib)
}

macro_rules! sym {
    ($lib:expr, $name:literal, $ty:ty) => {
        // SAFETY: the symbol is one of host_wrappers.cpp's extern "C" functions, with the
        // signature given here.
        unsafe {
            *$lib
                .get::<$ty>($name)
                .expect(std::str::from_utf8($name).unwrap())
        }
    };
}

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..n).map(|_| (r.uniform() * 2.0 - 1.0) as f32).collect()
}

fn spectrum(nx: usize, ny: usize, seed: u64) -> Vec<Complex32> {
    Fft2d::new(nx, ny).forward(&random(nx * ny, seed))
}

fn rel_c(a: &[Complex32], b: &[Complex32]) -> f64 {
    let d: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).norm_sqr() as f64)
        .sum();
    let n: f64 = a.iter().map(|x| x.norm_sqr() as f64).sum();
    (d / n.max(1e-300)).sqrt()
}

fn rel_f(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let n: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
    (d / n.max(1e-300)).sqrt()
}

type C = Complex32;

#[test]
fn crop_and_shift_match_fft_rs() {
    let Some(lib) = host_lib() else { return };
    let crop = sym!(
        lib,
        b"host_crop_spectrum",
        unsafe extern "C" fn(*const C, i32, i32, *mut C, i32, i32, f32)
    );
    let shift = sym!(
        lib,
        b"host_shift_spectrum",
        unsafe extern "C" fn(*mut C, i32, i32, f32, f32)
    );
    for (nx, ny, cx, cy) in [(64, 48, 32, 24), (50, 36, 30, 20), (31, 25, 31, 25)] {
        let s = spectrum(nx, ny, 1);
        let (nxh, cxh) = (nx / 2 + 1, cx / 2 + 1);
        if cx % 2 == 0 && cy % 2 == 0 && (cx, cy) != (nx, ny) {
            let want = crop_spectrum(&s, nx, ny, cx, cy);
            let mut got = vec![C::new(0.0, 0.0); cxh * cy];
            let scale = (cx * cy) as f32 / (nx * ny) as f32;
            // SAFETY: buffers of nxh·ny and cxh·cy elements, as the kernel indexes.
            unsafe {
                crop(
                    s.as_ptr(),
                    nxh as i32,
                    ny as i32,
                    got.as_mut_ptr(),
                    cxh as i32,
                    cy as i32,
                    scale,
                )
            };
            assert_eq!(got, want, "crop {nx}×{ny} → {cx}×{cy}");
        }
        let (dx, dy) = (2.75f32, -1.25f32);
        let mut want = s.clone();
        shift_spectrum(&mut want, nx, ny, dx as f64, dy as f64);
        let mut got = s.clone();
        // SAFETY: nxh·ny elements.
        unsafe { shift(got.as_mut_ptr(), nx as i32, ny as i32, dx, dy) };
        let e = rel_c(&want, &got);
        assert!(e < 1e-6, "shift {nx}×{ny}: {e}");
    }
}

#[test]
fn gain_and_defects_match_gainref_correct() {
    let Some(lib) = host_lib() else { return };
    let mul = sym!(
        lib,
        b"host_gain_multiply",
        unsafe extern "C" fn(*mut f32, *const f32, i32)
    );
    let fill = sym!(
        lib,
        b"host_defects_fill",
        unsafe extern "C" fn(*mut f32, *const i32, *const i32, *const i32, *const i32, i32, f32)
    );
    let (nx, ny) = (40, 30);
    let dir = std::env::temp_dir().join(format!("warp-host-gain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let gain: Vec<f32> = random(nx * ny, 2).iter().map(|v| 1.0 + 0.4 * v).collect();
    let mut defects = vec![0.0f32; nx * ny];
    for k in [5 * nx + 7, 12 * nx + 20, 12 * nx + 21, 25 * nx + 3] {
        defects[k] = 1.0;
    }
    write_mrc(dir.join("g.mrc"), &gain, nx, ny, 1, WriteMode::Float32, 1.0).unwrap();
    write_mrc(
        dir.join("d.mrc"),
        &defects,
        nx,
        ny,
        1,
        WriteMode::Float32,
        1.0,
    )
    .unwrap();
    let g = GainRef::load(
        dir.join("g.mrc"),
        false,
        false,
        false,
        Some(&dir.join("d.mrc")),
    )
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let frame: Vec<f32> = random(nx * ny, 3).iter().map(|v| 10.0 + v).collect();
    let mut want = frame.clone();
    g.correct(&mut want).unwrap();
    let t = g.defect_table().unwrap();
    assert!(
        !t.count.contains(&0),
        "every test defect has good neighbours"
    );
    let mut got = frame;
    // SAFETY: frame and gain of nx·ny; tables of t.targets.len() entries indexing the frame.
    unsafe {
        mul(got.as_mut_ptr(), g.gain().as_ptr(), (nx * ny) as i32);
        fill(
            got.as_mut_ptr(),
            t.targets.as_ptr(),
            t.start.as_ptr(),
            t.count.as_ptr(),
            t.from.as_ptr(),
            t.targets.len() as i32,
            0.0,
        );
    }
    let worst = want
        .iter()
        .zip(&got)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "{worst}");
}

#[test]
fn accumulate_matches_movie_accumulate() {
    let Some(lib) = host_lib() else { return };
    #[allow(clippy::type_complexity)]
    let acc = sym!(
        lib,
        b"host_accumulate",
        unsafe extern "C" fn(
            *const C,
            i32,
            i32,
            f32,
            f32,
            *const f32,
            i32,
            i32,
            i32,
            f64,
            f64,
            *mut C,
            *mut C,
            *mut C,
        )
    );
    for (nx, ny) in [(48, 40), (33, 27)] {
        let nf = 5;
        let frames: Vec<Vec<f32>> = (0..nf).map(|f| random(nx * ny, 10 + f as u64)).collect();
        let movie = Movie::from_frames(&frames, nx, ny);
        let shifts = [
            [1.5f32, -0.5],
            [0.25, 0.75],
            [0.0, 0.0],
            [-1.0, 2.0],
            [-0.75, -2.25],
        ];
        let dose = DoseWeighting {
            dose_per_frame: 8.0,
            voltage_kv: 300.0,
        };
        let px = 1.3;
        let want = accumulate(
            &movie,
            &AccumulateRequest {
                shifts_px: &shifts,
                pixel_size_a: px,
                dose: Some(dose),
                odd_even: true,
            },
        );
        let table = WeightTable::new(nx, ny, px, &dose, nf);
        let n = (nx / 2 + 1) * ny;
        let zero = || vec![C::new(0.0, 0.0); n];
        let (mut avg, mut wsum, mut odd, mut even) = (zero(), zero(), zero(), zero());
        for (f, spec) in movie.spectra.iter().enumerate() {
            let half = if f % 2 == 1 {
                odd.as_mut_ptr()
            } else {
                even.as_mut_ptr()
            };
            // SAFETY: spectra and accumulators of n elements; the table of bins·nf.
            unsafe {
                acc(
                    spec.as_ptr(),
                    nx as i32,
                    ny as i32,
                    shifts[f][0],
                    shifts[f][1],
                    table.weights.as_ptr(),
                    table.bins() as i32,
                    nf as i32,
                    f as i32,
                    table.inv_dk,
                    px,
                    avg.as_mut_ptr(),
                    wsum.as_mut_ptr(),
                    half,
                )
            };
        }
        let mut fft = Fft2d::new(nx, ny);
        let mut image = |s: &[C], count: usize| -> Vec<f32> {
            let scaled: Vec<C> = s.iter().map(|v| v / count as f32).collect();
            fft.inverse(&scaled)
        };
        let checks = [
            ("average", image(&avg, nf), want.average.clone()),
            ("weighted", image(&wsum, nf), want.weighted.clone().unwrap()),
            ("odd", image(&odd, nf / 2), want.odd.clone().unwrap()),
            (
                "even",
                image(&even, nf - nf / 2),
                want.even.clone().unwrap(),
            ),
        ];
        for (name, got, want) in checks {
            let e = rel_f(&want, &got);
            assert!(e < 1e-5, "{name} {nx}×{ny}: {e}");
        }
    }
}

#[test]
fn correlation_steps_match_the_cpu_engine() {
    let Some(lib) = host_lib() else { return };
    let cc = sym!(
        lib,
        b"host_cc_product",
        unsafe extern "C" fn(*const C, *const C, *const f32, *mut C, i32)
    );
    let add = sym!(
        lib,
        b"host_add_spectrum",
        unsafe extern "C" fn(*mut C, *const C, i32)
    );
    let window = sym!(
        lib,
        b"host_peak_window",
        unsafe extern "C" fn(*const f32, i32, i32, i32, i32, *mut f32)
    );
    let (nx, ny) = (40, 32);
    let n = (nx / 2 + 1) * ny;
    let a = spectrum(nx, ny, 4);
    let b = spectrum(nx, ny, 5);
    let w: Vec<f32> = random(n, 6).iter().map(|v| v.abs()).collect();
    let mut sum = a.clone();
    // SAFETY: n elements each.
    unsafe { add(sum.as_mut_ptr(), b.as_ptr(), n as i32) };
    let want_sum: Vec<C> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    assert_eq!(sum, want_sum);
    let want: Vec<C> = a
        .iter()
        .zip(&sum)
        .zip(&w)
        .map(|((v, t), w)| *v * (*t - *v).conj() * *w)
        .collect();
    let mut got = vec![C::new(0.0, 0.0); n];
    // SAFETY: n elements each.
    unsafe {
        cc(
            a.as_ptr(),
            sum.as_ptr(),
            w.as_ptr(),
            got.as_mut_ptr(),
            n as i32,
        )
    };
    assert!(rel_c(&want, &got) < 1e-6);
    let map = random(nx * ny, 7);
    let (hx, hy) = (5usize, 4usize);
    let mut got = vec![0.0f32; (2 * hx + 1) * (2 * hy + 1)];
    // SAFETY: the map is nx·ny; the window (2hx+1)·(2hy+1).
    unsafe {
        window(
            map.as_ptr(),
            nx as i32,
            ny as i32,
            hx as i32,
            hy as i32,
            got.as_mut_ptr(),
        )
    };
    assert_eq!(got, peak_window(&map, nx, ny, hx, hy));
}

#[test]
fn tiles_and_power_match_power_spectrum() {
    let Some(lib) = host_lib() else { return };
    let prep = sym!(
        lib,
        b"host_tiles_prepare",
        unsafe extern "C" fn(
            *const f32,
            i32,
            *const i32,
            *const f32,
            *const f32,
            i32,
            *mut f32,
            i32,
        )
    );
    let power = sym!(
        lib,
        b"host_power_accumulate",
        unsafe extern "C" fn(*const C, i32, i32, *mut f64)
    );
    let (nx, ny, w) = (200, 150, 64);
    let image: Vec<f32> = random(nx * ny, 8).iter().map(|v| 5.0 + v).collect();
    let want = power_spectrum(&image, nx, ny, w);
    let (origins, taper) = tile_layout(nx, ny, w);
    let means: Vec<f32> = origins
        .iter()
        .map(|&(x0, y0)| tile_mean(&image, nx, x0, y0, w))
        .collect();
    let flat: Vec<i32> = origins
        .iter()
        .flat_map(|&(x, y)| [x as i32, y as i32])
        .collect();
    let nt = origins.len();
    let mut tiles = vec![0.0f32; nt * w * w];
    // SAFETY: the image is nx·ny; origins 2·nt, means nt, taper w; tiles nt·w·w.
    unsafe {
        prep(
            image.as_ptr(),
            nx as i32,
            flat.as_ptr(),
            means.as_ptr(),
            taper.as_ptr(),
            w as i32,
            tiles.as_mut_ptr(),
            nt as i32,
        )
    };
    let mut fft = Fft2d::new(w, w);
    let spectra: Vec<C> = tiles.chunks(w * w).flat_map(|t| fft.forward(t)).collect();
    let per = (w / 2 + 1) * w;
    let mut acc = vec![0.0f64; per];
    // SAFETY: nt spectra of `per` elements; acc of `per`.
    unsafe { power(spectra.as_ptr(), per as i32, nt as i32, acc.as_mut_ptr()) };
    let got: Vec<f32> = acc.iter().map(|v| (v / nt as f64) as f32).collect();
    assert_eq!(want.tiles, nt);
    let e = rel_f(&want.data, &got);
    assert!(e < 1e-5, "{e}");
}

#[test]
fn ctf_score_matches_a_direct_pearson_correlation() {
    let Some(lib) = host_lib() else { return };
    #[allow(clippy::type_complexity)]
    let score = sym!(
        lib,
        b"host_ctf_score_1d",
        unsafe extern "C" fn(
            *const f64,
            *const f64,
            *const f64,
            i32,
            *const f64,
            i32,
            f64,
            f64,
            f64,
            *mut f64,
        )
    );
    let ks: Vec<f64> = (0..120).map(|r| 0.03 + r as f64 * 0.0015).collect();
    let lambda = warp_kernels::ctf::wavelength_a(300.0);
    let (c2, c4, chi0) = (
        std::f64::consts::PI * lambda,
        0.5 * std::f64::consts::PI * 2.7e7 * lambda.powi(3),
        0.07f64.atan(),
    );
    let truth = 21000.0;
    let env: Vec<f64> = ks.iter().map(|k| (-40.0 * k * k).exp()).collect();
    let sub: Vec<f64> = ks
        .iter()
        .zip(&env)
        .map(|(&k, e)| e * (c2 * k * k * truth - c4 * k.powi(4) + chi0).sin().powi(2))
        .collect();
    let dfs: Vec<f64> = (0..41).map(|i| 19000.0 + 100.0 * i as f64).collect();
    let mut got = vec![0.0f64; dfs.len()];
    // SAFETY: rings of ks.len(), candidates of dfs.len().
    unsafe {
        score(
            ks.as_ptr(),
            sub.as_ptr(),
            env.as_ptr(),
            ks.len() as i32,
            dfs.as_ptr(),
            dfs.len() as i32,
            c2,
            c4,
            chi0,
            got.as_mut_ptr(),
        )
    };
    for (df, g) in dfs.iter().zip(&got) {
        let y: Vec<f64> = ks
            .iter()
            .zip(&env)
            .map(|(&k, e)| e * (c2 * k * k * df - c4 * k.powi(4) + chi0).sin().powi(2))
            .collect();
        let n = ks.len() as f64;
        let (mx, my) = (sub.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
        let cxy: f64 = sub.iter().zip(&y).map(|(a, b)| (a - mx) * (b - my)).sum();
        let cxx: f64 = sub.iter().map(|a| (a - mx).powi(2)).sum();
        let cyy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
        let want = cxy / (cxx * cyy).sqrt();
        assert!((want - g).abs() < 1e-9, "df {df}: {want} vs {g}");
    }
    // The best candidate is the truth.
    let best = dfs[got
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0];
    assert_eq!(best, truth);
}

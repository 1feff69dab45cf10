//! CPU benchmark of the per-movie preprocessing pipeline against its FFT floor (issue 3).
//!
//! ```text
//! bench_pipeline MOVIE.mrc [--angpix A] [--dose D] [--repeat N] [--backend cpu|cuda|auto] [-d N]
//! ```
//!
//! **Pipeline.** The commands a worker runs for one movie of `warp-controller preprocess`, in
//! the same order and with the same defaults (`LoadStack`, `MovieProcessMovement`,
//! `MovieExportMovie`, `MovieProcessCTF`, `MovieCreateThumbnail`, then the movie is released as
//! `GcCollect` does), through `warp_worker::preprocess::Preprocessor::run`. Outputs go to a
//! temporary directory that is removed at the end. Each stage is timed twice: the `ms` the
//! command reports and the wall time around `run` measured here.
//!
//! **FFT floor.** What any pipeline that transforms every frame once must spend: one forward
//! real 2D FFT of every frame (in parallel over frames with one plan per rayon thread,
//! [`FftPool`] + `par_iter`, as `Movie::load` does) plus one inverse at full size (the aligned
//! average back to pixels). The frames are read into memory beforehand; only the FFTs are timed.
//!
//! **Memory.** `VmHWM` of this process right after the first pipeline (before the frames for
//! the floor are read), against the movie's float32 size `nx·ny·nz·4`.
//!
//! With `--repeat N` pipeline and floor alternate N times; the report gives the median of each
//! and of their per-round ratio. The last line of stdout is one JSON object with everything.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use rayon::prelude::*;
use serde_json::{Value, json};
use warp_common::commands::Command;
use warp_common::preprocessing::{
    CtfParams, ExportParams, LoadStackParams, MovementParams, ThumbnailParams,
};
use warp_kernels::fft::FftPool;
use warp_kernels::io::mrc::MrcReader;
use warp_worker::preprocess::Preprocessor;

/// Stage names, in pipeline order (the keys of the controller's `timings_ms`).
const STAGES: [&str; 5] = ["load", "motion", "export", "ctf", "thumbnail"];

struct Args {
    movie: PathBuf,
    angpix: Option<f64>,
    dose: f64,
    repeat: usize,
    backend: warp_kernels::backend::BackendChoice,
    device: i32,
}

fn usage() -> String {
    "usage: bench_pipeline MOVIE.mrc [--angpix A] [--dose D] [--repeat N] [--backend K] [-d N]\n\
     \x20 --angpix A   pixel size of the file, Å (default: the MRC header)\n\
     \x20 --dose D     exposure per frame, e⁻/Å² (default 0: no dose weighting)\n\
     \x20 --repeat N   pipeline + floor rounds (default 1); medians are reported\n\
     \x20 --backend K  cpu (default), cuda or auto; the floor is always the CPU FFT\n\
     \x20 -d N         GPU index for cuda/auto (default 0)"
        .into()
}

fn parse_args() -> Result<Args, String> {
    let mut movie = None;
    let mut angpix = None;
    let mut dose: f64 = 0.0;
    let mut repeat = 1;
    let mut backend = warp_kernels::backend::BackendChoice::Cpu;
    let mut device = 0;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| format!("{name} needs a value\n{}", usage()))
        };
        match a.as_str() {
            "--angpix" => {
                let v: f64 = value("--angpix")?
                    .parse()
                    .map_err(|e| format!("--angpix: {e}"))?;
                if !(v.is_finite() && v > 0.0) {
                    return Err(format!("--angpix must be positive, got {v}"));
                }
                angpix = Some(v);
            }
            "--dose" => {
                dose = value("--dose")?
                    .parse()
                    .map_err(|e| format!("--dose: {e}"))?;
                if !(dose.is_finite() && dose >= 0.0) {
                    return Err(format!("--dose must be non-negative, got {dose}"));
                }
            }
            "--repeat" => {
                repeat = value("--repeat")?
                    .parse()
                    .map_err(|e| format!("--repeat: {e}"))?;
                if repeat == 0 {
                    return Err("--repeat must be at least 1".into());
                }
            }
            "--backend" => {
                backend = value("--backend")?
                    .parse()
                    .map_err(|e| format!("--backend: {e}"))?;
            }
            "-d" => {
                device = value("-d")?.parse().map_err(|e| format!("-d: {e}"))?;
            }
            "-h" | "--help" => return Err(usage()),
            s if s.starts_with('-') => return Err(format!("unknown option {s}\n{}", usage())),
            s => {
                if movie.is_some() {
                    return Err(format!("more than one movie given\n{}", usage()));
                }
                movie = Some(PathBuf::from(s));
            }
        }
    }
    Ok(Args {
        movie: movie.ok_or_else(usage)?,
        angpix,
        dose,
        repeat,
        backend,
        device,
    })
}

/// A field of `/proc/self/status` in KiB (`VmHWM`, `VmRSS`, ...).
fn proc_status_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

const GIB: f64 = (1u64 << 30) as f64;

/// One pipeline run: per stage `(reported ms, wall ms)`, the release time, and the results.
struct PipelineRun {
    reported_ms: Vec<f64>,
    wall_ms: Vec<f64>,
    total_wall_ms: f64,
    gc_ms: f64,
    /// `VmHWM` in KiB right after the last stage, before the movie is released.
    vm_hwm_kib: Option<u64>,
    results: Vec<Value>,
}

/// The commands of one movie, as `warp-controller preprocess` builds them with its defaults
/// (job/src/preprocess.rs, `PreprocessOptions::package`).
fn commands(args: &Args, out: &Path) -> Vec<Command> {
    let s = |p: PathBuf| p.to_string_lossy().into_owned();
    let ctf = CtfParams {
        spectrum_path: Some(s(out.join("powerspectrum").join("movie.mrc"))),
        ..CtfParams::default()
    };
    vec![
        Command::LoadStack(LoadStackParams {
            path: s(args.movie.clone()),
            scale_factor: 1.0,
            eer_group_frames: 0,
            eer_upsample: 1,
            correct_gain: false,
            angpix: args.angpix,
        }),
        Command::MovieProcessMovement(MovementParams::default()),
        Command::MovieExportMovie(ExportParams {
            output_path: s(out.join("average").join("movie.mrc")),
            dose_per_frame: args.dose,
            voltage_kv: ctf.voltage_kv,
            float16: false,
            odd_even: false,
        }),
        Command::MovieProcessCtf(ctf),
        Command::MovieCreateThumbnail(ThumbnailParams {
            output_path: s(out.join("thumbnails").join("movie.png")),
            size: 512,
            range: 2.5,
        }),
    ]
}

fn run_pipeline(pre: &mut Preprocessor, cmds: &[Command]) -> Result<PipelineRun, String> {
    let mut reported_ms = Vec::new();
    let mut wall_ms = Vec::new();
    let mut results = Vec::new();
    let t_all = Instant::now();
    for (cmd, stage) in cmds.iter().zip(STAGES) {
        let t = Instant::now();
        let r = pre.run(cmd).map_err(|e| format!("{stage}: {e}"))?;
        wall_ms.push(ms(t));
        reported_ms.push(r.get("ms").and_then(Value::as_f64).unwrap_or(f64::NAN));
        results.push(r);
    }
    let total_wall_ms = ms(t_all);
    let vm_hwm_kib = proc_status_kib("VmHWM");
    // GcCollect: the worker drops the movie after the package.
    let t = Instant::now();
    pre.release_movie();
    let gc_ms = ms(t);
    Ok(PipelineRun {
        reported_ms,
        wall_ms,
        total_wall_ms,
        gc_ms,
        vm_hwm_kib,
        results,
    })
}

/// A command result without its per-frame arrays (shifts), for the summary line.
fn brief(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        for k in ["shifts_px", "shifts_A"] {
            o.remove(k);
        }
        if let Some(l) = o.get_mut("local").and_then(Value::as_object_mut) {
            l.remove("centres_px");
            l.remove("shifts_px");
        }
    }
    v
}

/// One floor run: (forward ms for all frames, inverse ms for one spectrum).
fn run_floor(pool: &FftPool, frames: &[Vec<f32>]) -> (f64, f64, f64) {
    let t = Instant::now();
    let spectra: Vec<_> = frames
        .par_iter()
        .map(|f| pool.with(|fft| fft.forward(f)))
        .collect();
    let fwd = ms(t);
    let t = Instant::now();
    let image = pool.with(|fft| fft.inverse(&spectra[0]));
    let inv = ms(t);
    // Use the outputs so nothing is optimised away.
    let check = image[0] as f64 + spectra.iter().map(|s| s[1].re as f64).sum::<f64>();
    (fwd, inv, check)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match bench(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_pipeline: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: &Args) -> Result<(), String> {
    let threads = rayon::current_num_threads();
    let header = MrcReader::open(&args.movie)
        .map_err(|e| e.to_string())?
        .header()
        .clone();
    let (nx, ny, nz) = (header.nx, header.ny, header.nz);
    let movie_f32_bytes = (nx * ny * nz * 4) as u64;
    let file_bytes = std::fs::metadata(&args.movie)
        .map_err(|e| format!("{}: {e}", args.movie.display()))?
        .len();
    let out = std::env::temp_dir().join(format!("bench_pipeline.{}", std::process::id()));
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let cmds = commands(args, &out);

    println!(
        "movie {}: {nx}×{ny}×{nz}, MRC mode {:?}, {:.2} GiB on disk, {:.2} GiB as float32",
        args.movie.display(),
        header.mode,
        file_bytes as f64 / GIB,
        movie_f32_bytes as f64 / GIB
    );
    println!(
        "rayon threads {threads}, dose {} e/Å²/frame, angpix {}, repeat {}",
        args.dose,
        args.angpix
            .map_or("from header".to_string(), |a| a.to_string()),
        args.repeat
    );
    let rss_start_kib = proc_status_kib("VmRSS");

    let (backend, line) = warp_kernels::backend::select_backend(args.backend, args.device)?;
    println!("{line}");
    let mut pre = Preprocessor::new(backend);
    let mut pipelines: Vec<PipelineRun> = Vec::new();
    let mut floors: Vec<(f64, f64)> = Vec::new();
    let mut floor_state: Option<(FftPool, Vec<Vec<f32>>, f64)> = None;
    let mut plan_ms = 0.0;
    let mut read_ms = 0.0;
    let mut check = 0.0;
    let result = (|| -> Result<(), String> {
        for round in 0..args.repeat {
            let p = run_pipeline(&mut pre, &cmds)?;
            println!(
                "round {}: pipeline {:.0} ms ({})",
                round + 1,
                p.total_wall_ms,
                STAGES
                    .iter()
                    .zip(&p.wall_ms)
                    .map(|(s, t)| format!("{s} {t:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            pipelines.push(p);
            if floor_state.is_none() {
                // Only now (VmHWM recorded) read the frames for the floor.
                let t = Instant::now();
                let mut reader = MrcReader::open(&args.movie).map_err(|e| e.to_string())?;
                let frames = (0..nz)
                    .map(|z| reader.read_section(z))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())?;
                read_ms = ms(t);
                let t = Instant::now();
                let pool = FftPool::new(nx, ny);
                plan_ms = ms(t);
                floor_state = Some((pool, frames, 0.0));
            }
            let (pool, frames, _) = floor_state.as_ref().expect("set above");
            let (fwd, inv, c) = run_floor(pool, frames);
            check += c;
            println!(
                "round {}: floor {:.0} ms (forward {nz} frames {fwd:.0}, inverse 1 {inv:.0})",
                round + 1,
                fwd + inv
            );
            floors.push((fwd, inv));
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&out);
    result?;

    // Report.
    let first = &pipelines[0];
    let pipe_totals: Vec<f64> = pipelines.iter().map(|p| p.total_wall_ms).collect();
    let floor_totals: Vec<f64> = floors.iter().map(|(f, i)| f + i).collect();
    let ratios: Vec<f64> = pipe_totals
        .iter()
        .zip(&floor_totals)
        .map(|(p, f)| p / f)
        .collect();
    let stage_wall_med: Vec<f64> = (0..STAGES.len())
        .map(|i| median(&pipelines.iter().map(|p| p.wall_ms[i]).collect::<Vec<_>>()))
        .collect();
    let stage_rep_med: Vec<f64> = (0..STAGES.len())
        .map(|i| {
            median(
                &pipelines
                    .iter()
                    .map(|p| p.reported_ms[i])
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    let pipe_med = median(&pipe_totals);
    let floor_med = median(&floor_totals);
    let fwd_med = median(&floors.iter().map(|f| f.0).collect::<Vec<_>>());
    let inv_med = median(&floors.iter().map(|f| f.1).collect::<Vec<_>>());
    let ratio_med = median(&ratios);
    let gc_med = median(&pipelines.iter().map(|p| p.gc_ms).collect::<Vec<_>>());
    let hwm_bytes = first.vm_hwm_kib.map(|k| k * 1024);
    let mem_ratio = hwm_bytes.map(|b| b as f64 / movie_f32_bytes as f64);

    println!();
    println!(
        "per stage, median of {} (wall ms here | ms the command reports | share of pipeline):",
        args.repeat
    );
    for (i, s) in STAGES.iter().enumerate() {
        println!(
            "  {s:<10} {:>9.0} | {:>9.0} | {:>5.1}%",
            stage_wall_med[i],
            stage_rep_med[i],
            100.0 * stage_wall_med[i] / pipe_med
        );
    }
    println!(
        "  {:<10} {:>9.0}   (release after the package, not in the total)",
        "gc", gc_med
    );
    println!("pipeline total   {pipe_med:>9.0} ms (median; runs {pipe_totals:.0?})");
    println!(
        "FFT floor        {floor_med:>9.0} ms (median; forward {fwd_med:.0} + inverse {inv_med:.0}; runs {floor_totals:.0?})"
    );
    println!("ratio pipeline/floor {ratio_med:.2} (median of per-round ratios {ratios:.2?})");
    println!(
        "peak memory VmHWM {} after the first pipeline (VmRSS at start {}); movie float32 {:.2} GiB; ratio {}",
        hwm_bytes.map_or("n/a".into(), |b| format!("{:.2} GiB", b as f64 / GIB)),
        rss_start_kib.map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
        movie_f32_bytes as f64 / GIB,
        mem_ratio.map_or("n/a".into(), |r| format!("{r:.2}"))
    );
    println!(
        "floor setup (not timed in the floor): read frames {read_ms:.0} ms, plan {plan_ms:.1} ms"
    );

    let stage_obj = |v: &[f64]| -> Value {
        STAGES
            .iter()
            .zip(v)
            .map(|(s, t)| (s.to_string(), json!(t)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let summary = json!({
        "movie": args.movie.to_string_lossy(),
        "nx": nx, "ny": ny, "nz": nz,
        "rayon_threads": threads,
        "dose_per_frame": args.dose,
        "repeat": args.repeat,
        "stages_wall_ms_median": stage_obj(&stage_wall_med),
        "stages_reported_ms_median": stage_obj(&stage_rep_med),
        "stages_wall_ms_runs": pipelines.iter().map(|p| stage_obj(&p.wall_ms)).collect::<Vec<_>>(),
        "gc_ms_median": gc_med,
        "pipeline_ms_median": pipe_med,
        "pipeline_ms_runs": pipe_totals,
        "floor_ms_median": floor_med,
        "floor_forward_ms_median": fwd_med,
        "floor_inverse_ms_median": inv_med,
        "floor_ms_runs": floor_totals,
        "ratio_median": ratio_med,
        "ratio_runs": ratios,
        "vm_hwm_bytes": hwm_bytes,
        "vm_rss_start_bytes": rss_start_kib.map(|k| k * 1024),
        "movie_f32_bytes": movie_f32_bytes,
        "movie_file_bytes": file_bytes,
        "memory_ratio": mem_ratio,
        "floor_read_ms": read_ms,
        "floor_plan_ms": plan_ms,
        "first_results": first.results.iter().map(brief).collect::<Vec<_>>(),
        "checksum": check,
    });
    println!("{summary}");
    Ok(())
}

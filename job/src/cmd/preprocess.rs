//! `warp-controller preprocess`: the main job over local or remote workers
//! ([`crate::preprocess`] does the work; this module turns the command line into its options).

use std::path::PathBuf;
use std::time::Duration;

use getopts::Options;
use warp_common::preprocessing::{CtfParams, LoadGainRefParams, MovementParams, ThumbnailParams};
use warp_controller::{Controller, auth, logging};
use warp_kernels::backend::BackendChoice;

use super::provision::{self, ProvisionPlan};
use crate::cli::{self, CliError, number, seconds, usage};
use crate::preprocess::{self as job, PreprocessOptions, Workers};

/// A checked `preprocess` command line.
#[derive(Debug, Clone)]
pub struct PreprocessConfig {
    /// The job's options, validated (every command's parameters checked).
    pub options: PreprocessOptions,
    /// `--provision slurm` (with `--port`), checked.
    pub provision: Option<ProvisionPlan>,
    /// `-v`: the embedded controller's info lines too.
    pub verbose: bool,
}

const BRIEF: &str = "Usage: warp-controller preprocess --input 'GLOB' --output DIR [options]\n\n\
        Preprocesses every movie matching GLOB (MRC, TIFF or EER): gain correction, motion (global\n\
        and local), dose-weighted average, CTF, thumbnail. Runs an embedded controller with\n\
        local workers (--workers/--devices) or waits for remote ones (--port). Writes\n\
        DIR/<name>.json, DIR/average/, DIR/powerspectrum/, DIR/thumbnails/,\n\
        DIR/micrographs_ctf.star, DIR/processed_items.json and DIR/failed_items.json.\n\
        Re-running skips processed movies and retries failed ones. With --port and\n\
        --provision slurm the job submits worker jobs itself while movies are queued (see\n\
        warp-controller serve --help and docs/hpc.md).";

fn options() -> Options {
    // Help texts and defaults both come from the commands' defaults (Warp's).
    let (ctf_d, motion_d) = (CtfParams::default(), MovementParams::default());
    let thumb_d = ThumbnailParams::default();
    let mut opts = Options::new();
    opts.optflag("h", "help", "print this help");
    opts.optopt(
        "i",
        "input",
        "movies to process (wildcards in the file name: 'data/*.tif')",
        "GLOB",
    );
    opts.optopt("o", "output", "output directory (created)", "DIR");
    opts.optopt(
        "",
        "workers",
        "local workers to start, one per device 0..N-1 (default 1)",
        "N",
    );
    opts.optopt(
        "",
        "devices",
        "local workers on these devices, e.g. 0,1",
        "LIST",
    );
    opts.optopt(
        "",
        "port",
        "start no local workers: serve on PORT and wait for remote ones",
        "P",
    );
    opts.optopt("", "bind", "address for --port (default 0.0.0.0)", "ADDR");
    opts.optopt(
        "",
        "token-file",
        "enrollment token for remote workers (created 0600 if missing; default: WARP_TOKEN)",
        "FILE",
    );
    opts.optopt(
        "",
        "view-token-file",
        "serve the status page (GET /: workers, plots of defocus, astigmatism, fit resolution and motion, a movie table, each movie's thumbnail and spectrum, the selection) to holders of this read-only token (created 0600 if missing)",
        "FILE",
    );
    opts.optopt(
        "",
        "admin-token-file",
        "the embedded controller's admin token (created 0600 if missing): the status page's export of the selection and the client subcommands (status, cancel, ...) take it; default: a random one, in-process only",
        "FILE",
    );
    opts.optopt(
        "",
        "angpix",
        "pixel size in Å (default: from the file header; EER and TIFF have none: give the detector pixel, before --eer-upsample)",
        "A",
    );
    opts.optopt(
        "",
        "scale",
        "Fourier-crop factor in (0, 1] (default 1)",
        "F",
    );
    opts.optopt(
        "",
        "voltage",
        &format!("acceleration voltage in kV (default {})", ctf_d.voltage_kv),
        "KV",
    );
    opts.optopt(
        "",
        "cs",
        &format!("spherical aberration in mm (default {})", ctf_d.cs_mm),
        "MM",
    );
    opts.optopt(
        "",
        "amp",
        &format!("amplitude contrast (default {})", ctf_d.amplitude_contrast),
        "F",
    );
    opts.optopt(
        "",
        "dose-per-frame",
        "exposure per frame in e/Å², enables dose weighting (default 0: off)",
        "D",
    );
    opts.optopt("", "gain", "gain reference (MRC or TIFF)", "FILE");
    opts.optflag("", "gain-flip-x", "mirror the gain reference along x");
    opts.optflag("", "gain-flip-y", "mirror the gain reference along y");
    opts.optflag(
        "",
        "gain-transpose",
        "transpose the gain reference (after the flips)",
    );
    opts.optopt(
        "",
        "defects",
        "defect map (non-zero = defect), same size as the gain",
        "FILE",
    );
    opts.optopt(
        "",
        "window",
        &format!("CTF spectrum tile in px (default {})", ctf_d.window),
        "N",
    );
    opts.optopt(
        "",
        "range-min",
        &format!(
            "CTF fit low-resolution limit in Å (default {})",
            ctf_d.range_min_a
        ),
        "A",
    );
    opts.optopt(
        "",
        "range-max",
        &format!(
            "CTF fit high-resolution limit in Å (default {})",
            ctf_d.range_max_a
        ),
        "A",
    );
    opts.optopt(
        "",
        "defocus-min",
        &format!(
            "smallest defocus searched in µm (default {})",
            ctf_d.defocus_min_um
        ),
        "UM",
    );
    opts.optopt(
        "",
        "defocus-max",
        &format!(
            "largest defocus searched in µm (default {})",
            ctf_d.defocus_max_um
        ),
        "UM",
    );
    opts.optflag("", "fit-phase", "also fit a phase shift (phase plate)");
    opts.optopt(
        "",
        "motion-range-max",
        &format!(
            "motion high-resolution limit in Å (default {})",
            motion_d.range_max_a
        ),
        "A",
    );
    opts.optflag("", "no-local-motion", "skip the patch (local) motion");
    opts.optopt(
        "",
        "eer-upsample",
        "EER movies: render at 1 (4k), 2 (8k) or 4 (16k) (default 1)",
        "N",
    );
    opts.optopt(
        "",
        "eer-groups",
        "EER movies: raw frames summed into each frame (fraction); raw frames past the last whole group are left out; --dose-per-frame is then per fraction (default 1)",
        "N",
    );
    opts.optflag(
        "",
        "watch",
        "keep looking for new files matching --input (a session being acquired); each is read once its size and mtime stay unchanged for --settle and its header fits its length; ends on SIGINT/SIGTERM or --watch-exit-after",
    );
    opts.optopt(
        "",
        "watch-interval",
        "with --watch: seconds between listings (default 5; polling, as cluster file systems may not deliver inotify)",
        "S",
    );
    opts.optopt(
        "",
        "settle",
        "with --watch: seconds a file must stay unchanged before it is read (default 10)",
        "S",
    );
    opts.optopt(
        "",
        "watch-exit-after",
        "with --watch: end after S seconds without a new file and nothing running",
        "S",
    );
    opts.optflag("", "float16", "write float16 averages (MRC mode 12)");
    opts.optflag("", "odd-even", "also write odd/even half averages");
    opts.optopt(
        "",
        "thumbnail-size",
        &format!("thumbnail long side in px (default {})", thumb_d.size),
        "PX",
    );
    opts.optopt(
        "",
        "task-timeout",
        "seconds one movie may take before it is retried (default 1800)",
        "S",
    );
    provision::options(&mut opts);
    super::tls::options(&mut opts);
    opts.optopt(
        "",
        "backend",
        "local workers' compute backend: auto (GPU when usable, else CPU), cpu, cuda (default auto)",
        "KIND",
    );
    opts.optflag(
        "",
        "no-read-ahead",
        "local workers do not read the next movie into the page cache while computing",
    );
    opts.optopt(
        "",
        "state-dir",
        "the embedded controller's journal: a killed run's queue is taken over by the next run \
         with the same options, results that arrived meanwhile included (default OUTPUT/.warp-state)",
        "DIR",
    );
    opts.optflag(
        "",
        "no-state-dir",
        "keep the queue in memory only (a killed run's tasks start again next run)",
    );
    opts.optflag(
        "v",
        "verbose",
        "also log the embedded controller's info lines",
    );
    opts
}

impl PreprocessConfig {
    /// Parses and checks `args` (after `preprocess`); `None` after `--help`. Starts nothing.
    pub fn from_args(args: &[String]) -> Result<Option<PreprocessConfig>, CliError> {
        // Help texts and defaults both come from the commands' defaults (Warp's).
        let (ctf_d, motion_d) = (CtfParams::default(), MovementParams::default());
        let thumb_d = ThumbnailParams::default();
        let Some(m) = cli::parse_options_only(&options(), args, BRIEF)? else {
            return Ok(None);
        };
        let input = m
            .opt_str("input")
            .map_or_else(|| usage("--input GLOB is required; see --help"), Ok)?;
        let output = m
            .opt_str("output")
            .map_or_else(|| usage("--output DIR is required; see --help"), Ok)?;
        if m.opt_present("provision") && !m.opt_present("port") {
            return usage("--provision needs --port: provisioned workers are remote workers");
        }
        let token_file = m.opt_str("token-file").map(PathBuf::from);
        let workers = if let Some(p) = m.opt_str("port") {
            if m.opt_present("workers") || m.opt_present("devices") {
                return usage(
                    "--port (remote workers only) cannot be combined with --workers or --devices",
                );
            }
            let port: u16 = p
                .parse()
                .map_err(|_| CliError::Usage(format!("--port: '{p}' is not a port")))?;
            Workers::Remote {
                bind: m.opt_str("bind").unwrap_or_else(|| "0.0.0.0".into()),
                port,
                // Resolved last, once every flag is checked.
                token: String::new(),
            }
        } else if let Some(list) = m.opt_str("devices") {
            if m.opt_present("workers") {
                return usage("give --workers N or --devices LIST, not both");
            }
            let devices: Result<Vec<i32>, _> =
                list.split(',').map(|d| d.trim().parse::<i32>()).collect();
            match devices {
                Ok(d) if !d.is_empty() && d.iter().all(|&x| x >= 0) => Workers::Local(d),
                _ => {
                    return usage(format!(
                        "--devices: '{list}' is not a list of device ids like 0,1"
                    ));
                }
            }
        } else {
            let n: i32 = number(&m, "workers", 1)?;
            if !(1..=256).contains(&n) {
                return usage(format!("--workers must be 1 to 256, got {n}"));
            }
            Workers::Local((0..n).collect())
        };
        let defaults = ctf_d.clone();
        let ctf = CtfParams {
            voltage_kv: number(&m, "voltage", defaults.voltage_kv)?,
            cs_mm: number(&m, "cs", defaults.cs_mm)?,
            amplitude_contrast: number(&m, "amp", defaults.amplitude_contrast)?,
            window: number(&m, "window", defaults.window)?,
            range_min_a: number(&m, "range-min", defaults.range_min_a)?,
            range_max_a: number(&m, "range-max", defaults.range_max_a)?,
            defocus_min_um: number(&m, "defocus-min", defaults.defocus_min_um)?,
            defocus_max_um: number(&m, "defocus-max", defaults.defocus_max_um)?,
            fit_phase: m.opt_present("fit-phase"),
            spectrum_path: None,
            spectrum_png_path: None,
        };
        let movement = MovementParams {
            range_max_a: number(&m, "motion-range-max", motion_d.range_max_a)?,
            local: !m.opt_present("no-local-motion"),
            ..motion_d
        };
        let gain = m.opt_str("gain").map(|path| LoadGainRefParams {
            path,
            flip_x: m.opt_present("gain-flip-x"),
            flip_y: m.opt_present("gain-flip-y"),
            transpose: m.opt_present("gain-transpose"),
            defects_path: m.opt_str("defects"),
        });
        if gain.is_none() && m.opt_present("defects") {
            return usage("--defects needs --gain");
        }
        let angpix = match m.opt_str("angpix") {
            None => None,
            Some(_) => Some(number(&m, "angpix", 0.0f64)?),
        };
        let state_dir = match (m.opt_str("state-dir"), m.opt_present("no-state-dir")) {
            (Some(_), true) => return usage("give --state-dir or --no-state-dir, not both"),
            (Some(d), false) if d.is_empty() => return usage("--state-dir needs a directory"),
            (Some(d), false) => Some(PathBuf::from(d)),
            (None, true) => None,
            (None, false) => Some(PathBuf::from(&output).join(".warp-state")),
        };
        let options = PreprocessOptions {
            state_dir,
            tls: super::tls::files(&m)?,
            view_token: None,
            admin_token: None,
            input,
            output: PathBuf::from(output),
            workers,
            angpix,
            scale_factor: number(&m, "scale", 1.0)?,
            eer_upsample: number(&m, "eer-upsample", 1)?,
            eer_groups: number(&m, "eer-groups", 1)?,
            gain,
            dose_per_frame: number(&m, "dose-per-frame", 0.0)?,
            movement,
            ctf,
            float16: m.opt_present("float16"),
            odd_even: m.opt_present("odd-even"),
            thumbnail_size: number(&m, "thumbnail-size", thumb_d.size)?,
            task_timeout: seconds(&m, "task-timeout", Duration::from_secs(1800))?,
            progress_every: Duration::from_secs(5),
            watch: if m.opt_present("watch") {
                Some(job::Watch {
                    interval: seconds(&m, "watch-interval", Duration::from_secs(5))?,
                    settle: seconds(&m, "settle", Duration::from_secs(10))?,
                    exit_after: match m.opt_str("watch-exit-after") {
                        None => None,
                        Some(_) => Some(seconds(&m, "watch-exit-after", Duration::ZERO)?),
                    },
                })
            } else {
                for f in ["watch-interval", "settle", "watch-exit-after"] {
                    if m.opt_present(f) {
                        return Err(CliError::Usage(format!("--{f} needs --watch")));
                    }
                }
                None
            },
            backend: match m.opt_str("backend") {
                Some(b) => b
                    .parse()
                    .map_err(|e| CliError::Usage(format!("--backend: {e}")))?,
                None => BackendChoice::Auto,
            },
            read_ahead: !m.opt_present("no-read-ahead"),
        };
        // Check every command's parameters once, before starting anything.
        options.validate().map_err(CliError::Usage)?;
        let mut options = options;
        if let Some(f) = m.opt_str("view-token-file") {
            let f = PathBuf::from(f);
            options.view_token = Some((warp_controller::auth::token_from_file(&f, true)?, f));
        }
        if let Some(f) = m.opt_str("admin-token-file") {
            let f = PathBuf::from(f);
            options.admin_token = Some((warp_controller::auth::token_from_file(&f, true)?, f));
        }
        if let Workers::Remote { token, .. } = &mut options.workers {
            *token = auth::resolve_token(token_file.as_deref(), true)?;
        }
        let provision = match &options.workers {
            Workers::Remote { bind, .. } => ProvisionPlan::from_matches(
                &m,
                bind,
                token_file.as_deref(),
                options.tls.as_ref().map(|t| t.cert.as_path()),
            )?,
            Workers::Local(_) => None,
        };
        Ok(Some(PreprocessConfig {
            options,
            provision,
            verbose: m.opt_present("verbose"),
        }))
    }
}

/// Runs the job; a failed or interrupted movie makes it a failure (exit 1).
pub fn run(cfg: PreprocessConfig) -> Result<(), CliError> {
    // The embedded controller's own log: warnings only, unless -v.
    logging::init(if cfg.verbose {
        log::LevelFilter::Info
    } else {
        log::LevelFilter::Warn
    });
    cli::install_signal_handlers();
    let po = &cfg.options;
    let mut provisioner = None;
    let mut on_started = |c: &Controller| -> Result<(), String> {
        if let Some(plan) = &cfg.provision {
            provisioner = Some(plan.start(c).map_err(|e| e.message().to_string())?);
            eprintln!(
                "provisioning: slurm jobs from {} while movies are queued",
                plan.template_path()
            );
        }
        Ok(())
    };
    let summary = job::run(
        po,
        &cli::STOP,
        &mut |line| eprintln!("{line}"),
        &mut on_started,
    );
    if let Some(p) = provisioner.take() {
        p.stop();
    }
    let summary = summary.map_err(CliError::Failed)?;
    println!("{}", job::summary_table(&summary));
    if summary.interrupted {
        return Err(CliError::Failed(
            "interrupted; run the same command again to continue".into(),
        ));
    }
    if !summary.failed.is_empty() {
        return Err(CliError::Failed(format!(
            "{} movie(s) failed (listed in {}/failed_items.json); run again to retry them",
            summary.failed.len(),
            po.output.display()
        )));
    }
    Ok(())
}

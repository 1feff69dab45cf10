//! The main job: preprocess a folder of movies over local or remote workers
//! (`warp-controller preprocess`).
//!
//! One work package per movie: the init part loads the gain reference (so a worker that
//! already holds it skips it), the main part runs `LoadStack`, `MovieProcessMovement`,
//! `MovieExportMovie`, `MovieProcessCTF`, `MovieCreateThumbnail` and `GcCollect`. The export
//! runs before the CTF so that one pass over the frames makes both the dose-weighted average
//! and the plain aligned average the CTF is fitted to (the worker caches the averages).
//!
//! Output layout under `DIR`:
//! * `<name>.json`: everything measured for the movie (see [`MovieRecord`]).
//! * `average/<name>.mrc` (+ `_odd`/`_even` with `--odd-even`), `powerspectrum/<name>.mrc`,
//!   `thumbnails/<name>.png`: written by the workers.
//! * `powerspectrum/<name>.png`: the spectrum for people, the fitted CTF's zeros drawn on it.
//! * `micrographs_ctf.star`: RELION's micrograph table of every processed movie.
//! * `selection.json`, `micrographs_ctf_selected.star`: the thresholds chosen on the status
//!   page or with `warp-controller select`, and the table of the movies that pass them
//!   (rewritten with the main table as movies arrive; [`crate::select`]).
//! * `processed_items.json`, `failed_items.json`: bookkeeping, rewritten after every movie, so
//!   an interrupted job loses nothing. A re-run skips processed movies whose `<name>.json`
//!   exists and retries the failed ones.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use warp_common::commands::Command;
use warp_common::preprocessing::{
    CtfParams, CtfResult, Defocus, ExportParams, ExportResult, LoadGainRefParams, LoadStackParams,
    LocalMotionResult, MovementParams, MovementResult, ReadAheadReport, StackLoaded,
    ThumbnailParams, ThumbnailResult,
};
use warp_common::protocol::{
    InitPart, TaskDetail, TaskId, TaskResult, TaskSpec, TaskState, WorkerId,
};
use warp_kernels::backend::{BackendChoice, probe};
use warp_kernels::io::star::{StarTable, StarValue, write_star};

use warp_controller::Controller;
use warp_controller::wrapper::{ControllerBasedWorkerWrapper, WrapperEvent, WrapperOptions};

/// Where the workers come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Workers {
    /// Spawn one local worker per device id.
    Local(Vec<i32>),
    /// Serve on this address and port and wait for remote workers (none spawned).
    Remote {
        /// Address to bind.
        bind: String,
        /// Port.
        port: u16,
        /// Enrollment token the workers present.
        token: String,
    },
}

/// Everything `preprocess` needs.
#[derive(Debug, Clone)]
pub struct PreprocessOptions {
    /// Glob of the input movies (wildcards `*` and `?` in the file name only).
    pub input: String,
    /// Output directory.
    pub output: PathBuf,
    /// Workers.
    pub workers: Workers,
    /// Pixel size override, Å (default: the file header).
    pub angpix: Option<f64>,
    /// Fourier-crop factor of `LoadStack`.
    pub scale_factor: f64,
    /// EER movies: rendering 1, 2 or 4 (4k, 8k, 16k from a Falcon's 4096²).
    pub eer_upsample: u32,
    /// EER movies: raw frames per fraction (each fraction is one frame for motion and dose).
    pub eer_groups: u32,
    /// Gain reference and its orientation.
    pub gain: Option<LoadGainRefParams>,
    /// Exposure per frame, e⁻/Å² (0: no dose weighting).
    pub dose_per_frame: f64,
    /// Motion settings.
    pub movement: MovementParams,
    /// CTF settings (`spectrum_path` is filled in per movie).
    pub ctf: CtfParams,
    /// Write float16 averages.
    pub float16: bool,
    /// Also write odd/even half averages.
    pub odd_even: bool,
    /// Thumbnail size, px.
    pub thumbnail_size: usize,
    /// Per-task timeout.
    pub task_timeout: Duration,
    /// Print a progress line at least this often.
    pub progress_every: Duration,
    /// Keep looking for new movies (`--watch`); `None`: the glob's files once.
    pub watch: Option<Watch>,
    /// Compute backend of local workers (`--backend`).
    pub backend: BackendChoice,
    /// Local workers read the next movie ahead (off: `--no-read-ahead`).
    pub read_ahead: bool,
    /// The embedded controller's state directory (`None`: in memory). A run that was killed
    /// leaves its queue there; the next run with the same options takes its tasks over
    /// (results that arrived meanwhile included) instead of starting them again.
    pub state_dir: Option<PathBuf>,
    /// Serve HTTPS (`--tls-cert`, `--tls-key`): remote and local workers then use https.
    pub tls: Option<warp_controller::TlsFiles>,
    /// The view token of the embedded controller and where it came from (`--view-token-file`):
    /// the status page at `/` takes it.
    pub view_token: Option<(String, PathBuf)>,
    /// The admin token of the embedded controller and its file (`--admin-token-file`): the
    /// status page's export and the client subcommands take it (`None`: a random one).
    pub admin_token: Option<(String, PathBuf)>,
}

/// The `<name>.json` of a processed movie.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MovieRecord {
    /// Input path.
    pub movie: String,
    /// Frames.
    pub frames: usize,
    /// Width of the processed frames, px.
    pub width: usize,
    /// Height, px.
    pub height: usize,
    /// Pixel size of the processed frames, Å.
    pub angpix: f64,
    /// Motion.
    pub motion: MotionRecord,
    /// CTF.
    pub ctf: CtfRecord,
    /// Files written, relative to the output directory.
    pub outputs: BTreeMap<String, String>,
    /// Per-stage wall times, ms (`load`, `motion`, `export`, `ctf`, `thumbnail`, `total`).
    pub timings_ms: BTreeMap<String, f64>,
    /// Compute backend of the worker.
    pub backend: String,
    /// Worker that processed it.
    pub worker: String,
    /// What the worker's read-ahead had done for this movie when its load began (absent for
    /// a worker's first movie or with `--no-read-ahead`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_ahead: Option<ReadAheadReport>,
}

/// Motion part of [`MovieRecord`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MotionRecord {
    /// Per-frame shifts, px.
    pub shifts_px: Vec<[f32; 2]>,
    /// Per-frame shifts, Å.
    #[serde(rename = "shifts_A")]
    pub shifts_a: Vec<[f32; 2]>,
    /// Local motion, when estimated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalMotionResult>,
}

/// CTF part of [`MovieRecord`]: the fit's defocus, resolution and score with the optics it
/// assumed (what RELION's micrograph table needs). A different thing from [`CtfResult`] by
/// design: the command's result carries how the spectrum was made (tiles, alignment, time),
/// the record the optics; both share [`Defocus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CtfRecord {
    /// The fitted defocus (its fields at the top level of the JSON object).
    #[serde(flatten)]
    pub defocus: Defocus,
    /// Fit resolution, Å.
    #[serde(rename = "fit_resolution_A")]
    pub fit_resolution_a: f64,
    /// Fit score.
    pub score: f64,
    /// Voltage used, kV.
    pub voltage_kv: f64,
    /// Cs used, mm.
    pub cs_mm: f64,
    /// Amplitude contrast used.
    pub amplitude_contrast: f64,
}

/// One entry of `processed_items.json` / `failed_items.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Output name (the input's file stem).
    pub name: String,
    /// Input path.
    pub movie: String,
    /// Why it failed (failed items only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ItemList {
    items: Vec<Item>,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Summary {
    /// Movies matched by the glob.
    pub matched: usize,
    /// Skipped because an earlier run processed them.
    pub skipped: usize,
    /// Processed now.
    pub processed: Vec<(String, MovieRecord)>,
    /// Failed now, with reasons.
    pub failed: Vec<Item>,
    /// Whether the run was interrupted (SIGINT/SIGTERM).
    pub interrupted: bool,
}

/// Expands `pattern`: wildcards (`*`, `?`) are allowed in the last path component only.
/// Returns the matching regular files, sorted.
pub fn expand_glob(pattern: &str) -> Result<Vec<PathBuf>, String> {
    let path = Path::new(pattern);
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(d), Some(n)) => (d, n.to_string_lossy().into_owned()),
        _ => return Err(format!("--input '{pattern}' names no file pattern")),
    };
    let dir_s = dir.to_string_lossy();
    if dir_s.contains(['*', '?', '[']) {
        return Err(format!(
            "--input '{pattern}': wildcards are supported in the file name only, not in '{dir_s}'"
        ));
    }
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("--input '{pattern}': cannot list {}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for e in entries.flatten() {
        let fname = e.file_name().to_string_lossy().into_owned();
        if wildcard_match(&name, &fname) && e.path().is_file() {
            out.push(if dir == Path::new(".") && !pattern.starts_with("./") {
                PathBuf::from(&fname)
            } else {
                dir.join(&fname)
            });
        }
    }
    out.sort();
    Ok(out)
}

/// `*` matches any run of characters, `?` one character; everything else literally.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// How `--watch` follows a session folder.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Watch {
    /// How often the glob is listed again (`--watch-interval`).
    pub interval: Duration,
    /// How long a file's size and mtime must stay the same before it is read (`--settle`).
    pub settle: Duration,
    /// End after this long without a new file and with nothing running
    /// (`--watch-exit-after`); `None`: until SIGINT/SIGTERM.
    pub exit_after: Option<Duration>,
}

/// A file the watch has seen but not taken yet: its size and mtime, and since when they have
/// not changed.
struct Settling {
    len: u64,
    mtime: Option<std::time::SystemTime>,
    since: Instant,
}

/// Whether a settled file is a whole movie: its header opens and every frame it declares lies
/// inside the file (the readers check that before reading anything).
fn movie_is_whole(path: &Path, opts: &PreprocessOptions) -> Result<(), String> {
    let eer = warp_kernels::io::eer::EerOptions {
        upsample: opts.eer_upsample.max(1) as usize,
        group: opts.eer_groups.max(1) as usize,
    };
    warp_kernels::io::tiff::open_movie_with(path, eer)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Local workers that may die, one after another, without any movie completing before the job
/// stops replacing them: a worker that cannot finish one movie in this many starts is broken
/// (a bad binary, a device that fails, a node out of memory), not the movies. Each movie
/// whose worker died has that attempt counted; at the attempt limit it fails with the reason.
const MAX_DEATHS_WITHOUT_SUCCESS: usize = 10;

/// Why a movie's name cannot go into a STAR file, if it cannot: a control character (a
/// newline would split the row) or a quote (STAR quoting rules allow some, but the readers
/// in use, RELION's and the `starfile` package, read them back wrong).
fn star_refusal(name: &str) -> Option<String> {
    let why = if name.chars().any(char::is_control) {
        "holds a control character (a newline or tab)"
    } else if name.contains(['"', '\'']) {
        "holds a quote"
    } else {
        return None;
    };
    Some(format!(
        "not processed: its name {name:?} {why}, which the STAR file (micrographs_ctf.star) cannot hold and RELION or starfile would not read back; rename the file"
    ))
}

/// Lists a failed movie in `failed` and rewrites `failed_items.json` at once, so a killed job
/// still says why.
fn record_failure(
    failed: &mut Vec<Item>,
    failed_path: &Path,
    movie: &Path,
    name: String,
    error: String,
) -> Result<(), String> {
    failed.push(Item {
        name,
        movie: path_string(movie),
        error: Some(error),
    });
    write_json_atomic(
        failed_path,
        &ItemList {
            items: failed.clone(),
        },
    )
}

/// Output name of a movie: its file stem.
fn movie_name(path: &Path) -> String {
    path.file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

pub(crate) fn write_json_atomic<T: Serialize>(path: &Path, v: &T) -> Result<(), String> {
    let text = serde_json::to_string_pretty(v).map_err(|e| e.to_string())? + "\n";
    warp_kernels::io::atomic::write_atomic(path, |w| w.write_all(text.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

pub(crate) fn read_items(path: &Path) -> Result<Vec<Item>, String> {
    match std::fs::read_to_string(path) {
        Ok(t) => serde_json::from_str::<ItemList>(&t)
            .map(|l| l.items)
            .map_err(|e| {
                format!(
                    "{} is damaged ({e}); move it away to reprocess everything",
                    path.display()
                )
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Reads a `<name>.json`.
pub fn read_record(path: &Path) -> Result<MovieRecord, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn path_string(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

impl PreprocessOptions {
    /// Checks every parameter the workers would check, so a typo fails before any work.
    /// Messages name the `preprocess` flag to fix, not the command parameter behind it.
    pub fn validate(&self) -> Result<(), String> {
        let spec = self.package(Path::new("movie.mrc"), "movie");
        spec.validate().map_err(|e| name_the_flag(&e))?;
        if self.thumbnail_size == 0 {
            return Err("--thumbnail-size must be at least 1".into());
        }
        if self.eer_groups == 0 {
            return Err("--eer-groups must be at least 1".into());
        }
        if let Some(a) = self.angpix
            && !(a.is_finite() && a > 0.0)
        {
            return Err(format!("--angpix must be positive, got {a}"));
        }
        Ok(())
    }

    /// The work package of one movie.
    fn package(&self, movie: &Path, name: &str) -> TaskSpec {
        let out = &self.output;
        let mut ctf = self.ctf.clone();
        ctf.spectrum_path = Some(path_string(
            &out.join("powerspectrum").join(format!("{name}.mrc")),
        ));
        ctf.spectrum_png_path = Some(path_string(
            &out.join("powerspectrum").join(format!("{name}.png")),
        ));
        let commands = vec![
            Command::LoadStack(LoadStackParams {
                path: path_string(movie),
                scale_factor: self.scale_factor,
                eer_group_frames: self.eer_groups,
                eer_upsample: self.eer_upsample,
                correct_gain: self.gain.is_some(),
                angpix: self.angpix,
            }),
            Command::MovieProcessMovement(self.movement.clone()),
            Command::MovieExportMovie(ExportParams {
                output_path: path_string(&out.join("average").join(format!("{name}.mrc"))),
                dose_per_frame: self.dose_per_frame,
                voltage_kv: self.ctf.voltage_kv,
                float16: self.float16,
                odd_even: self.odd_even,
            }),
            Command::MovieProcessCtf(ctf),
            Command::MovieCreateThumbnail(ThumbnailParams {
                output_path: path_string(&out.join("thumbnails").join(format!("{name}.png"))),
                size: self.thumbnail_size,
                ..ThumbnailParams::default()
            }),
            Command::GcCollect {},
        ];
        let init = match &self.gain {
            Some(g) => InitPart {
                fingerprint: format!(
                    "gain:{}:{}{}{}:{}",
                    g.path,
                    u8::from(g.flip_x),
                    u8::from(g.flip_y),
                    u8::from(g.transpose),
                    g.defects_path.as_deref().unwrap_or("")
                ),
                commands: vec![Command::LoadGainRef(g.clone())],
            },
            // An empty init still clears a gain held from another job.
            None => InitPart {
                fingerprint: "no-gain".into(),
                commands: Vec::new(),
            },
        };
        let mut spec = TaskSpec::new(commands);
        spec.init = Some(init);
        spec.label = Some(name.to_string());
        spec.timeout_s = Some(self.task_timeout.as_secs_f64());
        spec
    }

    /// Every file the package of movie `name` may write, and its record: what a failed
    /// movie must not leave behind.
    fn outputs(&self, name: &str) -> Vec<PathBuf> {
        let out = &self.output;
        vec![
            out.join("average").join(format!("{name}.mrc")),
            out.join("average").join(format!("{name}_odd.mrc")),
            out.join("average").join(format!("{name}_even.mrc")),
            out.join("powerspectrum").join(format!("{name}.mrc")),
            out.join("powerspectrum").join(format!("{name}.png")),
            out.join("thumbnails").join(format!("{name}.png")),
            out.join(format!("{name}.json")),
        ]
    }

    /// Builds the record of a finished package from its results.
    fn record(&self, movie: &Path, detail: &TaskDetail) -> Result<MovieRecord, String> {
        let commands = self.package(movie, &movie_name(movie)).commands;
        self.record_from(movie, &commands, detail)
    }

    /// [`Self::record`] for a package of `commands`: each result is found by its command's
    /// name, not by its position, so the package's order can change.
    fn record_from(
        &self,
        movie: &Path,
        commands: &[Command],
        detail: &TaskDetail,
    ) -> Result<MovieRecord, String> {
        let result: TaskResult = serde_json::from_value(
            detail
                .result
                .clone()
                .ok_or("the task finished without results")?,
        )
        .map_err(|e| format!("the task's result is not a task result: {e}"))?;
        if result.results.len() != commands.len() {
            return Err(format!(
                "{} results for {} commands",
                result.results.len(),
                commands.len()
            ));
        }
        let by_name: HashMap<&str, &Value> = commands
            .iter()
            .map(Command::name)
            .zip(&result.results)
            .collect();
        fn part<T: serde::de::DeserializeOwned>(
            by_name: &HashMap<&str, &Value>,
            name: &str,
        ) -> Result<T, String> {
            let v = by_name
                .get(name)
                .ok_or_else(|| format!("no {name} result"))?;
            T::deserialize(*v).map_err(|e| format!("bad {name} result: {e}"))
        }
        let load: StackLoaded = part(&by_name, "LoadStack")?;
        let motion: MovementResult = part(&by_name, "MovieProcessMovement")?;
        let export: ExportResult = part(&by_name, "MovieExportMovie")?;
        let ctf: CtfResult = part(&by_name, "MovieProcessCTF")?;
        let thumb: ThumbnailResult = part(&by_name, "MovieCreateThumbnail")?;
        let name = movie_name(movie);
        let mut outputs = BTreeMap::new();
        outputs.insert("average".into(), format!("average/{name}.mrc"));
        if self.odd_even {
            outputs.insert("odd".into(), format!("average/{name}_odd.mrc"));
            outputs.insert("even".into(), format!("average/{name}_even.mrc"));
        }
        outputs.insert("powerspectrum".into(), format!("powerspectrum/{name}.mrc"));
        outputs.insert(
            "powerspectrum_png".into(),
            format!("powerspectrum/{name}.png"),
        );
        outputs.insert("thumbnail".into(), format!("thumbnails/{name}.png"));
        let mut timings = BTreeMap::new();
        timings.insert("load".into(), load.ms);
        timings.insert("motion".into(), motion.ms);
        timings.insert("export".into(), export.ms);
        timings.insert("ctf".into(), ctf.ms);
        timings.insert("thumbnail".into(), thumb.ms);
        timings.insert(
            "total".into(),
            load.ms + motion.ms + export.ms + ctf.ms + thumb.ms,
        );
        Ok(MovieRecord {
            movie: path_string(movie),
            frames: load.frames,
            width: load.width,
            height: load.height,
            angpix: load.angpix,
            motion: MotionRecord {
                shifts_px: motion.shifts_px,
                shifts_a: motion.shifts_a,
                local: motion.local,
            },
            ctf: CtfRecord {
                defocus: ctf.defocus,
                fit_resolution_a: ctf.fit_resolution_a,
                score: ctf.score,
                voltage_kv: self.ctf.voltage_kv,
                cs_mm: self.ctf.cs_mm,
                amplitude_contrast: self.ctf.amplitude_contrast,
            },
            outputs,
            timings_ms: timings,
            backend: load.backend,
            worker: detail.worker_id.map(|w| w.to_string()).unwrap_or_default(),
            read_ahead: load.read_ahead,
        })
    }
}

/// The `preprocess` flag behind each command parameter the job sets from one:
/// `(command, parameter, flag)`.
const PARAMETER_FLAGS: &[(&str, &str, &str)] = &[
    ("LoadGainRef", "path", "--gain"),
    ("LoadStack", "scale_factor", "--scale"),
    ("LoadStack", "angpix", "--angpix"),
    ("LoadStack", "eer_upsample", "--eer-upsample"),
    ("MovieProcessMovement", "range_max_a", "--motion-range-max"),
    (
        "MovieProcessMovement",
        "range_min_a",
        "the motion low-resolution limit",
    ),
    ("MovieProcessCTF", "voltage_kv", "--voltage"),
    ("MovieProcessCTF", "cs_mm", "--cs"),
    ("MovieProcessCTF", "amplitude_contrast", "--amp"),
    ("MovieProcessCTF", "window", "--window"),
    ("MovieProcessCTF", "range_min_a", "--range-min"),
    ("MovieProcessCTF", "range_max_a", "--range-max"),
    ("MovieProcessCTF", "defocus_min_um", "--defocus-min"),
    (
        "MovieProcessCTF",
        "defocus range",
        "--defocus-min/--defocus-max: the defocus range",
    ),
    ("MovieExportMovie", "dose_per_frame", "--dose-per-frame"),
    ("MovieExportMovie", "voltage_kv", "--voltage"),
    ("MovieCreateThumbnail", "size", "--thumbnail-size"),
];

/// Rewrites a work package's validation message (`command 3: MovieProcessCTF window must
/// be ...`) in the terms of the `preprocess` command line (`--window must be ...`).
fn name_the_flag(message: &str) -> String {
    let body = match message.split_once(": ") {
        Some((head, rest)) if head.starts_with("command ") => rest,
        _ => message,
    };
    for (command, parameter, flag) in PARAMETER_FLAGS {
        let Some(rest) = body
            .strip_prefix(command)
            .and_then(|r| r.strip_prefix(' '))
            .filter(|r| r.starts_with(parameter))
        else {
            continue;
        };
        let mut out = format!("{flag}{}", &rest[parameter.len()..]);
        // Other parameters of the same command named in the message ("range_min_a (30) must
        // be larger than range_max_a (40)").
        for (c, p, f) in PARAMETER_FLAGS {
            if c == command && p != parameter && f.starts_with("--") {
                out = out.replace(p, f);
            }
        }
        return out;
    }
    body.to_string()
}

/// Writes `micrographs_ctf.star` from the records of `names` (read from their JSON files).
pub fn write_micrographs_star(output: &Path, names: &[String]) -> Result<usize, String> {
    let records = read_records(output, names)?;
    write_micrographs_table(output, records.iter(), "micrographs_ctf.star")
}

/// A movie's name with its `<name>.json` record.
pub(crate) type NamedRecord = (String, MovieRecord);

/// The `<name>.json` records of `names`, in order.
pub(crate) fn read_records(output: &Path, names: &[String]) -> Result<Vec<NamedRecord>, String> {
    names
        .iter()
        .map(|name| {
            Ok((
                name.clone(),
                read_record(&output.join(format!("{name}.json")))?,
            ))
        })
        .collect()
}

/// Writes RELION's micrograph table of `records` (name, record) to `output/file`
/// (atomically); returns its rows.
pub(crate) fn write_micrographs_table<'a>(
    output: &Path,
    records: impl Iterator<Item = &'a NamedRecord>,
    file: &str,
) -> Result<usize, String> {
    let columns = [
        "rlnMicrographName",
        "rlnDefocusU",
        "rlnDefocusV",
        "rlnDefocusAngle",
        "rlnCtfMaxResolution",
        "rlnCtfFigureOfMerit",
        "rlnVoltage",
        "rlnSphericalAberration",
        "rlnAmplitudeContrast",
        "rlnMicrographPixelSize",
    ];
    let mut rows = Vec::new();
    for (name, r) in records {
        rows.push(vec![
            StarValue::Str(format!("average/{name}.mrc")),
            StarValue::Num(r.ctf.defocus.defocus_u_um * 1e4),
            StarValue::Num(r.ctf.defocus.defocus_v_um * 1e4),
            StarValue::Num(r.ctf.defocus.astig_angle_deg),
            StarValue::Num(r.ctf.fit_resolution_a),
            StarValue::Num(r.ctf.score),
            StarValue::Num(r.ctf.voltage_kv),
            StarValue::Num(r.ctf.cs_mm),
            StarValue::Num(r.ctf.amplitude_contrast),
            StarValue::Num(r.angpix),
        ]);
    }
    let table = StarTable {
        block: "micrographs".into(),
        columns: columns.iter().map(|c| c.to_string()).collect(),
        rows,
    };
    let n = table.rows.len();
    write_star(output.join(file), &[table]).map_err(|e| e.to_string())?;
    Ok(n)
}

/// Writes `micrographs_ctf.star` and, when a selection was saved with the session, the
/// selected table from the same records (under `writing`, the status page's selection lock).
/// A selection that cannot be applied is logged, not fatal: the main table is what the job
/// owes.
fn write_tables(
    output: &Path,
    names: &[String],
    writing: &std::sync::Mutex<()>,
) -> Result<(), String> {
    let records = read_records(output, names)?;
    write_micrographs_table(output, records.iter(), "micrographs_ctf.star")?;
    let _one = writing.lock().unwrap_or_else(|e| e.into_inner());
    let applied = crate::select::saved_thresholds(output).and_then(|saved| match saved {
        Some(t) => crate::select::write_selected(output, &records, &t).map(Some),
        None => Ok(None),
    });
    match applied {
        Ok(Some(s)) => log::debug!("selection: {}", crate::select::describe(&s)),
        Ok(None) => {}
        Err(e) => log::warn!("the saved selection was not applied: {e}"),
    }
    Ok(())
}

fn eta(done: usize, left: usize, elapsed: Duration) -> String {
    if done == 0 || left == 0 {
        return "-".into();
    }
    let s = elapsed.as_secs_f64() / done as f64 * left as f64;
    if s >= 3600.0 {
        format!("{:.1} h", s / 3600.0)
    } else if s >= 60.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{s:.0} s")
    }
}

/// Runs the job (module docs). Progress and per-movie lines go to `log`; `on_started` is
/// called once the embedded controller listens (the CLI starts its provisioner there). Returns
/// what was done; an `Err` means the job could not run at all (bad options, unwritable output,
/// no workers).
pub fn run(
    opts: &PreprocessOptions,
    stop: &AtomicBool,
    log: &mut dyn FnMut(&str),
    on_started: &mut dyn FnMut(&Controller) -> Result<(), String>,
) -> Result<Summary, String> {
    let movies = expand_glob(&opts.input)?;
    if movies.is_empty() && opts.watch.is_none() {
        return Err(format!("--input '{}' matches no file", opts.input));
    }
    let mut seen = BTreeMap::new();
    for m in &movies {
        if let Some(other) = seen.insert(movie_name(m), m.clone()) {
            return Err(format!(
                "{} and {} would both be written as '{}'; process them in separate runs",
                other.display(),
                m.display(),
                movie_name(m)
            ));
        }
    }
    for sub in ["", "average", "powerspectrum", "thumbnails"] {
        let d = opts.output.join(sub);
        std::fs::create_dir_all(&d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    // A name no STAR reader would read back is refused now, so the table is still written for
    // every other movie.
    let (movies, refused): (Vec<PathBuf>, Vec<PathBuf>) = movies
        .into_iter()
        .partition(|m| star_refusal(&movie_name(m)).is_none());
    let refused: Vec<Item> = refused
        .into_iter()
        .map(|m| {
            let name = movie_name(&m);
            Item {
                movie: path_string(&m),
                error: star_refusal(&name),
                name,
            }
        })
        .collect();
    for r in &refused {
        log(&format!(
            "FAILED {:?}: {}",
            r.name,
            r.error.as_deref().unwrap_or_default()
        ));
    }
    let processed_path = opts.output.join("processed_items.json");
    let failed_path = opts.output.join("failed_items.json");
    let mut processed: Vec<Item> = read_items(&processed_path)?;
    let previously_failed: BTreeSet<String> = read_items(&failed_path)?
        .into_iter()
        .map(|i| i.name)
        .collect();
    processed.retain(|i| opts.output.join(format!("{}.json", i.name)).is_file());
    let done: BTreeSet<String> = processed.iter().map(|i| i.name.clone()).collect();

    let mut summary = Summary {
        matched: movies.len() + refused.len(),
        ..Summary::default()
    };
    let todo: Vec<PathBuf> = movies
        .iter()
        .filter(|m| !done.contains(&movie_name(m)))
        .cloned()
        .collect();
    summary.skipped = movies.len() - todo.len();
    let retried = todo
        .iter()
        .filter(|m| previously_failed.contains(&movie_name(m)))
        .count();
    log(&format!(
        "{} movie(s) matched; {} already processed, {} to process{}",
        summary.matched,
        summary.skipped,
        todo.len(),
        if retried > 0 {
            format!(" ({retried} failed last time, retrying)")
        } else {
            String::new()
        }
    ));
    let refused_count = refused.len();
    let mut failed: Vec<Item> = refused;
    if todo.is_empty() && opts.watch.is_none() {
        write_json_atomic(
            &failed_path,
            &ItemList {
                items: failed.clone(),
            },
        )?;
        let names: Vec<String> = processed.iter().map(|i| i.name.clone()).collect();
        write_tables(&opts.output, &names, &std::sync::Mutex::new(()))?;
        return Ok(summary);
    }

    // Controller and workers.
    // With --backend cuda, say which GPU is unusable (and why) before starting anything.
    if let (BackendChoice::Cuda, Workers::Local(devices)) = (opts.backend, &opts.workers) {
        for &d in devices {
            probe(d.max(0) as usize).map_err(|e| format!("--backend cuda: GPU {d}: {e}"))?;
        }
    }
    let mut worker_args = vec!["--backend".to_string(), opts.backend.as_str().to_string()];
    if !opts.read_ahead {
        worker_args.push("--no-read-ahead".into());
    }
    let mut wopts = WrapperOptions {
        task_timeout: opts.task_timeout,
        silent_workers: true,
        worker_args,
        ..WrapperOptions::default()
    };
    let port = match &opts.workers {
        Workers::Local(_) => 0,
        Workers::Remote { bind, port, token } => {
            wopts.bind = bind.clone();
            wopts.token = Some(token.clone());
            *port
        }
    };
    wopts.state_dir.clone_from(&opts.state_dir);
    wopts.tls.clone_from(&opts.tls);
    wopts.view_token = opts.view_token.as_ref().map(|(t, _)| t.clone());
    wopts.admin_token = opts.admin_token.as_ref().map(|(t, _)| t.clone());
    let mut wrapper = ControllerBasedWorkerWrapper::with_options(wopts);
    let port = wrapper
        .start_controller(port)
        .map_err(|e| format!("cannot start the controller: {e}"))?;
    if let (Workers::Local(_), Ok(c)) = (&opts.workers, wrapper.controller()) {
        // Local workers of an earlier run held a port that is gone: their tasks go back to
        // the queue now rather than after the heartbeat timeout.
        for w in c.workers() {
            let _ = c.forget_worker(w.id, "a local worker of an earlier run of the job");
        }
    }
    // Local workers that die are replaced (see `MAX_DEATHS_WITHOUT_SUCCESS`).
    let deaths = wrapper.worker_events();
    let mut local_alive: BTreeSet<WorkerId> = BTreeSet::new();
    let mut deaths_since_success = 0usize;
    let mut last_death = String::new();
    match &opts.workers {
        Workers::Local(devices) => {
            for &d in devices {
                let id = wrapper
                    .add_worker(d)
                    .map_err(|e| format!("cannot start a local worker for device {d}: {e}"))?;
                local_alive.insert(id);
            }
            log(&format!("{} local worker(s) started", devices.len()));
        }
        Workers::Remote { bind, .. } => log(&format!(
            "controller listening on {bind}:{port}; start workers with: warp-worker --controller {}://<this host>:{port} (token in WARP_TOKEN or --token-file{})",
            if opts.tls.is_some() { "https" } else { "http" },
            if opts.tls.is_some() {
                "; --ca-file with the certificate"
            } else {
                ""
            }
        )),
    }
    let controller = wrapper.controller().map_err(|e| e.to_string())?;
    let view = opts
        .view_token
        .as_ref()
        .map(|(_, f)| format!("view token in {}", f.display()));
    let admin = opts.admin_token.as_ref().map(|(_, f)| {
        format!(
            "the selection's export takes the admin token in {}",
            f.display()
        )
    });
    if view.is_some() || admin.is_some() {
        let tokens: Vec<String> = view.into_iter().chain(admin).collect();
        log(&format!(
            "status page: {}/ ({})",
            controller.url(),
            tokens.join("; ")
        ));
    }
    let session = std::sync::Arc::new(crate::select::PreprocessSession::new(
        opts.output.clone(),
        opts.watch.is_some(),
    ));
    let writing = session.writing();
    controller.view().set_session(session);
    on_started(controller)?;

    // Submit every package in one batch (so each worker's first task comes with the movie it
    // reads ahead), then collect results as they come.
    let (tx, finished_rx) = crossbeam_channel::unbounded();
    let (adopted, fresh) = adopt_restored(controller, opts, &todo);
    if !adopted.is_empty() {
        log(&format!(
            "{} movie(s) taken over from the state directory's queue (an earlier run stopped before they were recorded)",
            adopted.len()
        ));
    }
    let adopted_ids: Vec<TaskId> = adopted.iter().map(|(id, _)| *id).collect();
    let mut pending: HashMap<TaskId, (PathBuf, String)> = adopted.into_iter().collect();
    for id in controller.watch(&adopted_ids, &tx) {
        pending.remove(&id);
    }
    let names: Vec<String> = fresh.iter().map(|m| movie_name(m)).collect();
    let packages = fresh
        .iter()
        .zip(&names)
        .map(|(m, name)| opts.package(m, name))
        .collect();
    let ids = controller
        .submit_batch_notify(packages, &tx)
        .map_err(|e| format!("the controller refused the packages: {e}"))?;
    // A watch submits more as files arrive; otherwise the channel ends with the last result.
    let tx = opts.watch.map(|_| tx);
    pending.extend(ids.into_iter().zip(fresh.iter().cloned().zip(names)));
    let start = Instant::now();
    let mut total = pending.len();
    let mut last_progress = Instant::now();
    // The watch's bookkeeping: every name seen (never processed twice), files settling.
    let mut known: BTreeSet<String> = done.iter().cloned().collect();
    known.extend(todo.iter().map(|m| movie_name(m)));
    known.extend(failed.iter().map(|i| i.name.clone()));
    let mut settling: HashMap<PathBuf, Settling> = HashMap::new();
    let (mut last_scan, mut last_new) = (Instant::now(), Instant::now());
    let mut star_dirty = false;
    let mut last_star = Instant::now();
    if let Some(w) = &opts.watch {
        log(&format!(
            "watching '{}' every {:.1} s for new movies (read once unchanged for {:.1} s){}; SIGINT or SIGTERM ends the session",
            opts.input,
            w.interval.as_secs_f64(),
            w.settle.as_secs_f64(),
            w.exit_after
                .map(|d| format!(", or after {:.0} s without one", d.as_secs_f64()))
                .unwrap_or_default()
        ));
    }
    loop {
        if opts.watch.is_none() && pending.is_empty() {
            break;
        }
        if let Some(w) = &opts.watch
            && pending.is_empty()
            && settling.is_empty()
            && w.exit_after.is_some_and(|d| last_new.elapsed() >= d)
        {
            log(&format!(
                "no new movie for {:.0} s: ending the session",
                last_new.elapsed().as_secs_f64()
            ));
            break;
        }
        if let (Some(w), Some(tx)) = (&opts.watch, &tx)
            && last_scan.elapsed() >= w.interval
        {
            last_scan = Instant::now();
            let mut ready = Vec::new();
            // A listing that fails (a file system hiccup) is tried again at the next interval.
            let listed = match expand_glob(&opts.input) {
                Ok(l) => l,
                Err(e) => {
                    log(&format!("cannot list the session folder now: {e}"));
                    Vec::new()
                }
            };
            // A file that went away while settling (renamed, deleted) is forgotten.
            settling.retain(|p, _| listed.contains(p));
            for m in listed {
                let name = movie_name(&m);
                if known.contains(&name) {
                    continue;
                }
                let meta = std::fs::metadata(&m).ok();
                let (len, mtime) = (
                    meta.as_ref().map_or(0, |m| m.len()),
                    meta.as_ref().and_then(|m| m.modified().ok()),
                );
                let s = settling.entry(m.clone()).or_insert_with(|| {
                    last_new = Instant::now();
                    Settling {
                        len,
                        mtime,
                        since: Instant::now(),
                    }
                });
                if (s.len, s.mtime) != (len, mtime) {
                    *s = Settling {
                        len,
                        mtime,
                        since: Instant::now(),
                    };
                    last_new = Instant::now();
                } else if s.since.elapsed() >= w.settle {
                    ready.push((m, name, len));
                }
            }
            let mut packages = Vec::new();
            let mut taken = Vec::new();
            for (m, name, len) in ready {
                settling.remove(&m);
                known.insert(name.clone());
                let whole = match star_refusal(&name) {
                    Some(refusal) => Err(refusal),
                    None => movie_is_whole(&m, opts)
                        .map_err(|e| format!("{e} (it stopped growing at {len} bytes)")),
                };
                match whole {
                    Ok(()) => {
                        packages.push(opts.package(&m, &name));
                        taken.push((m, name));
                    }
                    Err(error) => {
                        log(&format!("FAILED {name}: {error}"));
                        total += 1;
                        record_failure(&mut failed, &failed_path, &m, name, error)?;
                    }
                }
            }
            if !packages.is_empty() {
                let ids = controller
                    .submit_batch_notify(packages, tx)
                    .map_err(|e| format!("the controller refused the packages: {e}"))?;
                log(&format!("{} new movie(s) queued", ids.len()));
                total += ids.len();
                pending.extend(ids.into_iter().zip(taken));
            }
        }
        if stop.load(Ordering::SeqCst) {
            if opts.watch.is_some() && pending.is_empty() {
                log("stopping: the session ends");
                break;
            }
            summary.interrupted = true;
            log("interrupted: cancelling the remaining movies (they will be processed next run)");
            for t in controller.tasks() {
                if !t.state.is_terminal() {
                    let _ = controller.cancel(t.id);
                }
            }
            break;
        }
        // Details of finished tasks, or every pending movie failed if the controller is gone.
        let got: Vec<(PathBuf, String, Result<TaskDetail, String>)> =
            match finished_rx.recv_timeout(Duration::from_millis(250)) {
                Ok(d) => pending
                    .remove(&d.id)
                    .map(|(m, name)| (m, name, Ok(d)))
                    .into_iter()
                    .collect(),
                Err(RecvTimeoutError::Timeout) => Vec::new(),
                Err(RecvTimeoutError::Disconnected) => pending
                    .drain()
                    .map(|(_, (m, n))| (m, n, Err("the controller stopped".to_string())))
                    .collect(),
            };
        let ready = !got.is_empty();
        // A local worker that died: its task was handed back (the attempt counts); start
        // another unless they keep dying; with none left, the movies cannot be processed.
        for e in deaths.try_iter() {
            let WrapperEvent::WorkerDied {
                worker,
                device,
                status,
            } = e
            else {
                continue;
            };
            local_alive.remove(&worker);
            deaths_since_success += 1;
            last_death = format!("worker for device {device} exited ({status})");
            if deaths_since_success >= MAX_DEATHS_WITHOUT_SUCCESS {
                log(&format!(
                    "{last_death}; not replaced: {deaths_since_success} workers died without a movie completing"
                ));
                continue;
            }
            match wrapper.add_worker(device) {
                Ok(id) => {
                    local_alive.insert(id);
                    log(&format!("{last_death}; started a replacement"));
                }
                Err(e) => log(&format!("{last_death}; cannot start a replacement: {e}")),
            }
        }
        let mut got = got;
        if matches!(opts.workers, Workers::Local(_)) && local_alive.is_empty() {
            let why = format!("no local worker left: the last {last_death}");
            log(&format!(
                "{why}; failing the {} movie(s) left",
                pending.len()
            ));
            for (id, (m, n)) in pending.drain() {
                let _ = controller.cancel(id);
                got.push((m, n, Err(why.clone())));
            }
        }
        for (movie, name, detail) in got {
            let outcome = match detail {
                Ok(d) if d.state == TaskState::Completed => opts.record(&movie, &d),
                Ok(d) => Err(d.error.unwrap_or_else(|| format!("task {:?}", d.state))),
                Err(why) => Err(why),
            };
            match outcome {
                Ok(rec) => {
                    deaths_since_success = 0;
                    write_json_atomic(&opts.output.join(format!("{name}.json")), &rec)?;
                    log(&format!(
                        "done   {name}: defocus {:.3}/{:.3} µm, fit to {:.1} Å, {:.1} s",
                        rec.ctf.defocus.defocus_u_um,
                        rec.ctf.defocus.defocus_v_um,
                        rec.ctf.fit_resolution_a,
                        rec.timings_ms["total"] / 1e3
                    ));
                    processed.retain(|i| i.name != name);
                    processed.push(Item {
                        name: name.clone(),
                        movie: path_string(&movie),
                        error: None,
                    });
                    write_json_atomic(
                        &processed_path,
                        &ItemList {
                            items: processed.clone(),
                        },
                    )?;
                    summary.processed.push((name, rec));
                    star_dirty = true;
                }
                Err(error) => {
                    log(&format!("FAILED {name}: {error}"));
                    // What the steps before the failing one wrote would pass for a result.
                    for f in opts.outputs(&name) {
                        match std::fs::remove_file(&f) {
                            Ok(()) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => log(&format!(
                                "cannot remove {} of the failed movie {name}: {e}",
                                f.display()
                            )),
                        }
                    }
                    record_failure(&mut failed, &failed_path, &movie, name, error)?;
                }
            }
        }
        // A watched session's table follows it (a script or RELION may read it meanwhile).
        if opts.watch.is_some() && star_dirty && last_star.elapsed() >= Duration::from_secs(2) {
            let names: Vec<String> = processed.iter().map(|i| i.name.clone()).collect();
            write_tables(&opts.output, &names, &writing)?;
            star_dirty = false;
            last_star = Instant::now();
        }
        if ready || last_progress.elapsed() >= opts.progress_every {
            last_progress = Instant::now();
            let status = controller.status();
            // The movies refused before submission are not part of this count.
            let failed_here = failed.len() - refused_count;
            let finished = summary.processed.len() + failed_here;
            let elapsed = start.elapsed();
            log(&format!(
                "progress: {finished}/{total} ({} done, {failed_here} failed), {} running, {} workers; {:.1} movies/h; ETA {}",
                summary.processed.len(),
                status.tasks.running + status.tasks.assigned,
                status.workers.idle + status.workers.busy,
                finished as f64 / elapsed.as_secs_f64().max(1e-9) * 3600.0,
                eta(finished, total - finished, elapsed)
            ));
        }
    }
    write_json_atomic(
        &failed_path,
        &ItemList {
            items: failed.clone(),
        },
    )?;
    let names: Vec<String> = processed.iter().map(|i| i.name.clone()).collect();
    write_tables(&opts.output, &names, &writing)?;
    summary.failed = failed;
    drop(wrapper);
    Ok(summary)
}

/// A movie's path and name.
type Movie = (PathBuf, String);

/// Splits the movies to do into those whose task the controller restored from its state
/// directory, submitted with the same package (their ids), and those to submit. Restored
/// tasks nobody takes over (other options, a movie no longer matched or already recorded)
/// are cancelled; failed or cancelled ones are submitted again.
fn adopt_restored(
    controller: &Controller,
    opts: &PreprocessOptions,
    todo: &[PathBuf],
) -> (Vec<(TaskId, Movie)>, Vec<PathBuf>) {
    let mut tasks = controller.tasks();
    tasks.sort_by_key(|t| t.created_unix_ms);
    let mut by_label: HashMap<String, TaskDetail> = HashMap::new();
    for t in tasks {
        let Some(label) = t.label.clone() else {
            continue;
        };
        // The newest task of a movie wins; an older one still queued or running goes.
        if let Some(older) = by_label.insert(label, t)
            && !older.state.is_terminal()
        {
            let _ = controller.cancel(older.id);
        }
    }
    let mut adopted = Vec::new();
    let mut fresh = Vec::new();
    for movie in todo {
        let name = movie_name(movie);
        let usable = by_label.remove(&name).filter(|t| {
            let same = controller.task_spec(t.id).as_ref() == Some(&opts.package(movie, &name));
            if !same && !t.state.is_terminal() {
                let _ = controller.cancel(t.id);
            }
            same && !matches!(t.state, TaskState::Failed | TaskState::Cancelled)
        });
        match usable {
            Some(t) => adopted.push((t.id, (movie.clone(), name))),
            None => fresh.push(movie.clone()),
        }
    }
    for t in by_label.into_values() {
        if !t.state.is_terminal() {
            let _ = controller.cancel(t.id);
        }
    }
    (adopted, fresh)
}

/// The summary table printed at the end.
pub fn summary_table(s: &Summary) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<24} {:>6} {:>9} {:>9} {:>7} {:>8} {:>6} {:>10} {:>8}\n",
        "movie", "frames", "dfU µm", "dfV µm", "angle°", "res Å", "score", "max shift", "time s"
    ));
    for (name, r) in &s.processed {
        let max_shift = r
            .motion
            .shifts_px
            .iter()
            .map(|s| s[0].hypot(s[1]))
            .fold(0.0f32, f32::max);
        out.push_str(&format!(
            "{:<24} {:>6} {:>9.3} {:>9.3} {:>7.1} {:>8.2} {:>6.3} {:>8.2}px {:>8.1}\n",
            name,
            r.frames,
            r.ctf.defocus.defocus_u_um,
            r.ctf.defocus.defocus_v_um,
            r.ctf.defocus.astig_angle_deg,
            r.ctf.fit_resolution_a,
            r.ctf.score,
            max_shift,
            r.timings_ms.get("total").copied().unwrap_or(0.0) / 1e3
        ));
    }
    for f in &s.failed {
        out.push_str(&format!(
            "{:<24} FAILED: {}\n",
            f.name,
            f.error.as_deref().unwrap_or("")
        ));
    }
    let ahead: Vec<&ReadAheadReport> = s
        .processed
        .iter()
        .filter_map(|(_, r)| r.read_ahead.as_ref())
        .collect();
    if !ahead.is_empty() {
        let complete = ahead.iter().filter(|r| r.complete).count();
        out.push_str(&format!(
            "read ahead: {} of {} movies, {complete} of them in full before their load\n",
            ahead.len(),
            s.processed.len()
        ));
    }
    out.push_str(&format!(
        "{} matched, {} skipped (done before), {} processed, {} failed{}\n",
        s.matched,
        s.skipped,
        s.processed.len(),
        s.failed.len(),
        if s.interrupted { ", interrupted" } else { "" }
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(output: &str) -> PreprocessOptions {
        PreprocessOptions {
            input: "in/*.mrc".into(),
            output: PathBuf::from(output),
            workers: Workers::Local(vec![0]),
            angpix: None,
            scale_factor: 1.0,
            eer_upsample: 1,
            eer_groups: 1,
            gain: None,
            dose_per_frame: 0.0,
            movement: MovementParams::default(),
            ctf: CtfParams::default(),
            float16: false,
            odd_even: false,
            thumbnail_size: 512,
            task_timeout: Duration::from_secs(60),
            progress_every: Duration::from_secs(5),
            watch: None,
            backend: BackendChoice::Cpu,
            read_ahead: true,
            state_dir: None,
            tls: None,
            view_token: None,
            admin_token: None,
        }
    }

    /// The worker's result for `command` (plausible numbers; what matters is which is which).
    fn result_of(command: &Command) -> Value {
        let ms = 1.0;
        match command {
            Command::LoadStack(p) => serde_json::to_value(StackLoaded {
                path: p.path.clone(),
                frames: 8,
                width: 64,
                height: 64,
                file_width: 64,
                file_height: 64,
                angpix: 1.25,
                gain_corrected: false,
                backend: "cpu".into(),
                ms,
                read_ahead: None,
            }),
            Command::MovieProcessMovement(_) => serde_json::to_value(MovementResult {
                shifts_px: vec![[0.5, -0.5]; 8],
                shifts_a: vec![[0.625, -0.625]; 8],
                iterations: 3,
                local: None,
                ms: 2.0,
            }),
            Command::MovieExportMovie(p) => serde_json::to_value(ExportResult {
                written: vec![p.output_path.clone()],
                dose_weighted: false,
                ms: 3.0,
            }),
            Command::MovieProcessCtf(_) => serde_json::to_value(CtfResult {
                defocus: Defocus {
                    defocus_u_um: 1.9,
                    defocus_v_um: 1.7,
                    astig_angle_deg: 35.0,
                    phase_shift_pi: 0.0,
                },
                fit_resolution_a: 4.5,
                score: 0.4,
                angpix: 1.25,
                tiles: 9,
                aligned: true,
                ms: 4.0,
            }),
            Command::MovieCreateThumbnail(p) => serde_json::to_value(ThumbnailResult {
                path: p.output_path.clone(),
                width: 64,
                height: 64,
                ms: 5.0,
            }),
            _ => Ok(serde_json::json!({})),
        }
        .unwrap()
    }

    fn detail_for(commands: &[Command]) -> TaskDetail {
        let result = TaskResult {
            results: commands.iter().map(result_of).collect(),
            init_ran: true,
        };
        serde_json::from_value(serde_json::json!({
            "id": uuid::Uuid::nil(),
            "state": "completed",
            "attempt": 1,
            "target": "any",
            "priority": 0,
            "created_unix_ms": 0,
            "result": result,
            "history": [],
        }))
        .unwrap()
    }

    /// Issue 10: `preprocess --window 32` said "command 3: MovieProcessCTF window ...";
    /// the message names the flag now.
    #[test]
    fn validation_errors_name_the_flag() {
        let mut o = options("out");
        o.ctf.window = 32;
        let e = o.validate().unwrap_err();
        assert!(
            e.starts_with("--window must be 64 to 8192 px, got 32"),
            "{e}"
        );
        let mut o = options("out");
        o.ctf.range_min_a = 3.0;
        let e = o.validate().unwrap_err();
        assert!(
            e.starts_with("--range-min (3) must be larger than --range-max (4)"),
            "{e}"
        );
        let mut o = options("out");
        o.scale_factor = 2.0;
        assert!(o.validate().unwrap_err().starts_with("--scale "));
        let mut o = options("out");
        o.dose_per_frame = -1.0;
        assert!(o.validate().unwrap_err().starts_with("--dose-per-frame "));
        // A message it has no flag for stays as it was, without the command index.
        assert_eq!(name_the_flag("command 2: Exec needs x"), "Exec needs x");
    }

    /// Issue 10: results were decoded by position, so a reordered command list mis-decoded
    /// every movie. They are found by command name now.
    #[test]
    fn results_are_decoded_by_command_name_not_position() {
        let opts = options("out");
        let movie = Path::new("in/m1.mrc");
        let mut commands = opts.package(movie, "m1").commands;
        // CTF before the export, thumbnail first.
        let (e, c) = (
            commands
                .iter()
                .position(|c| c.name() == "MovieExportMovie")
                .unwrap(),
            commands
                .iter()
                .position(|c| c.name() == "MovieProcessCTF")
                .unwrap(),
        );
        commands.swap(e, c);
        let t = commands.len() - 2;
        commands.swap(0, t);
        let rec = opts
            .record_from(movie, &commands, &detail_for(&commands))
            .unwrap();
        assert_eq!((rec.frames, rec.angpix), (8, 1.25));
        assert_eq!(rec.ctf.defocus.defocus_u_um, 1.9);
        assert_eq!(rec.ctf.fit_resolution_a, 4.5);
        assert_eq!(rec.motion.shifts_px.len(), 8);
        assert_eq!(rec.timings_ms["export"], 3.0);
        assert_eq!(rec.timings_ms["ctf"], 4.0);
        assert_eq!(rec.timings_ms["thumbnail"], 5.0);
        // The package as built decodes the same way.
        let built = opts.package(movie, "m1").commands;
        assert_eq!(
            opts.record(movie, &detail_for(&built)).unwrap().ctf,
            rec.ctf
        );
        // A result list of the wrong length is an error, not a mis-decoded movie.
        let mut short = detail_for(&commands);
        short.result.as_mut().unwrap()["results"]
            .as_array_mut()
            .unwrap()
            .pop();
        let e = opts.record_from(movie, &commands, &short).unwrap_err();
        assert!(e.contains("results for"), "{e}");
    }

    #[test]
    fn wildcards_match_like_a_shell() {
        assert!(wildcard_match("*.mrc", "a.mrc"));
        assert!(wildcard_match("*.mrc", ".mrc"));
        assert!(!wildcard_match("*.mrc", "a.mrcs"));
        assert!(wildcard_match("sim_??.t*f", "sim_01.tiff"));
        assert!(!wildcard_match("sim_??.tif", "sim_1.tif"));
        assert!(wildcard_match("*a*b*", "xxaYYbzz"));
        assert!(!wildcard_match("*a*b", "xxaYYbzz"));
        assert!(wildcard_match("*", ""));
    }

    #[test]
    fn glob_lists_files_sorted_and_refuses_wildcard_directories() {
        let dir = std::env::temp_dir().join(format!("warp-glob-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub.mrc")).unwrap();
        for f in ["b.mrc", "a.mrc", "c.tif"] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        let got = expand_glob(&format!("{}/*.mrc", dir.display())).unwrap();
        assert_eq!(got, vec![dir.join("a.mrc"), dir.join("b.mrc")]);
        let err = expand_glob(&format!("{}/*/x.mrc", dir.display())).unwrap_err();
        assert!(err.contains("file name only"), "{err}");
        let err = expand_glob("/nonexistent-warp-dir/*.mrc").unwrap_err();
        assert!(err.contains("nonexistent-warp-dir"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

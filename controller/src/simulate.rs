//! Synthetic datasets with known truth, and the comparison of preprocessing results against it
//! (`warp-controller simulate` and `warp-controller compare`).
//!
//! [`simulate_dataset`] writes `sim_0001.mrc`, `sim_0002.mrc`, ... (counts from
//! [`warp_kernels::sim::simulate`], MRC mode 1 or 12, the pixel size in the header) and beside
//! each movie `sim_0001.truth.json` ([`Truth`]):
//!
//! ```json
//! {"movie": "sim_0001.mrc", "width": 1024, "height": 1024, "frames": 24, "angpix": 1.0,
//!  "dose_per_frame": 1.0, "voltage_kv": 300.0, "cs_mm": 2.7, "amplitude_contrast": 0.07,
//!  "seed": 1234, "shifts_px": [[x, y], ...],
//!  "ctf": {"defocus_u_um": 1.9, "defocus_v_um": 1.7, "astig_angle_deg": 35.0,
//!          "phase_shift_pi": 0.0}}
//! ```
//!
//! Units and sign conventions are those of DESIGN.md §6; `dose_per_frame` is in e⁻/Å² and the
//! mean count per pixel per frame is `dose_per_frame · angpix²`. `seed` is the movie's own seed:
//! `sim::simulate` with it and the recorded parameters reproduces the movie exactly.
//!
//! Per-movie parameters are drawn, in order, from one [`SplitMix64`] stream seeded with the
//! dataset seed (four draws per movie: the movie seed, the mean defocus, the astigmatism
//! magnitude and its angle), so movie `i` depends only on the dataset seed and `i`, and a larger
//! `count` with the same seed extends a dataset without changing its first movies.
//!
//! [`compare_with_truth`] reads each truth file and the preprocessing result `<stem>.json` of
//! the same movie and checks the errors against the targets ([`TARGET_SHIFT_RMS_PX`] and the
//! constants after it).

use std::fs;
use std::path::{Path, PathBuf};

use getopts::{Matches, Options};

use crate::cli::number;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use warp_kernels::ctf::CtfParams;
use warp_kernels::io::mrc::{WriteMode, write_mrc};
use warp_kernels::sim::{SimParams, SplitMix64, simulate};

/// Target: RMS of the per-frame shift error (2-D vector), in pixels, after removing each
/// trajectory's mean.
pub const TARGET_SHIFT_RMS_PX: f64 = 0.15;
/// Target: mean-defocus error, as a fraction of the true mean defocus ...
pub const TARGET_DEFOCUS_REL: f64 = 0.01;
/// ... or this many µm, whichever is larger.
pub const TARGET_DEFOCUS_ABS_UM: f64 = 0.02;
/// Target: error of the astigmatism magnitude `U − V`, µm.
pub const TARGET_ASTIG_UM: f64 = 0.03;
/// Target: astigmatism angle error, degrees (modulo 180).
pub const TARGET_ANGLE_DEG: f64 = 3.0;
/// The angle is checked only where the true astigmatism is at least this, µm.
pub const ANGLE_CHECK_MIN_ASTIG_UM: f64 = 0.1;

/// Lower end of the astigmatism magnitude draw, µm (or `astig_max_um` where that is smaller).
pub const ASTIG_MIN_UM: f64 = 0.1;
/// Largest mean count per pixel per frame accepted (keeps counts well inside int16 and
/// float16 range).
pub const MAX_COUNTS_PER_PX: f64 = 10_000.0;

/// Storage format of the simulated movies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SimFormat {
    /// MRC mode 1 (counts are integers, stored exactly).
    #[default]
    Int16,
    /// MRC mode 12 (integers up to 2048 stored exactly).
    Float16,
}

impl SimFormat {
    fn write_mode(self) -> WriteMode {
        match self {
            SimFormat::Int16 => WriteMode::Int16,
            SimFormat::Float16 => WriteMode::Float16,
        }
    }
}

/// What [`simulate_dataset`] writes. Units as in DESIGN.md §6.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulateOptions {
    /// Output directory (created if missing).
    pub output: PathBuf,
    /// Number of movies.
    pub count: usize,
    /// Width and height in pixels (even, at least 64).
    pub size: usize,
    /// Frames per movie (at least 2).
    pub frames: usize,
    /// Pixel size, Å/px.
    pub angpix: f64,
    /// Dose per frame, e⁻/Å²; mean counts per pixel per frame are `dose_per_frame · angpix²`.
    pub dose_per_frame: f64,
    /// Acceleration voltage, kV.
    pub voltage_kv: f64,
    /// Spherical aberration, mm.
    pub cs_mm: f64,
    /// Amplitude contrast, fraction.
    pub amp: f64,
    /// Smallest mean defocus drawn, µm (underfocus positive).
    pub defocus_min_um: f64,
    /// Largest mean defocus drawn, µm.
    pub defocus_max_um: f64,
    /// Largest astigmatism `U − V`, µm; each movie's is uniform in
    /// `[min(0.1, astig_max_um), astig_max_um]`.
    pub astig_max_um: f64,
    /// Largest whole-frame shift magnitude, pixels.
    pub max_shift_px: f64,
    /// Dataset seed.
    pub seed: u64,
    /// Storage format.
    pub format: SimFormat,
    /// Replace an existing dataset in `output` (otherwise refused).
    pub overwrite: bool,
}

impl Default for SimulateOptions {
    fn default() -> Self {
        SimulateOptions {
            output: PathBuf::from("sim"),
            count: 4,
            size: 1024,
            frames: 24,
            angpix: 1.0,
            dose_per_frame: 1.0,
            voltage_kv: 300.0,
            cs_mm: 2.7,
            amp: 0.07,
            defocus_min_um: 0.8,
            defocus_max_um: 3.0,
            astig_max_um: 0.3,
            max_shift_px: 10.0,
            seed: 1,
            format: SimFormat::Int16,
            overwrite: false,
        }
    }
}

impl SimulateOptions {
    /// Mean electron count per pixel per frame: `dose_per_frame · angpix²`.
    pub fn counts_per_px(&self) -> f64 {
        self.dose_per_frame * self.angpix * self.angpix
    }

    /// Checks the options; the message names the offending option.
    pub fn validate(&self) -> Result<(), String> {
        let finite_pos = |v: f64| v.is_finite() && v > 0.0;
        if self.count == 0 {
            return Err("count must be at least 1".into());
        }
        if self.size < 64 || !self.size.is_multiple_of(2) {
            return Err(format!(
                "size {} must be even and at least 64 pixels",
                self.size
            ));
        }
        if self.frames < 2 {
            return Err(format!("frames {} must be at least 2", self.frames));
        }
        if !finite_pos(self.angpix) {
            return Err(format!(
                "angpix {} Å/px must be a positive number",
                self.angpix
            ));
        }
        if !finite_pos(self.dose_per_frame) {
            return Err(format!(
                "dose per frame {} e⁻/Å² must be a positive number",
                self.dose_per_frame
            ));
        }
        if self.counts_per_px() > MAX_COUNTS_PER_PX {
            return Err(format!(
                "dose per frame × angpix² = {} counts per pixel per frame; at most {MAX_COUNTS_PER_PX} fit the output formats",
                self.counts_per_px()
            ));
        }
        if !finite_pos(self.voltage_kv) {
            return Err(format!(
                "voltage {} kV must be a positive number",
                self.voltage_kv
            ));
        }
        if !(self.cs_mm.is_finite() && self.cs_mm >= 0.0) {
            return Err(format!("Cs {} mm must be 0 or more", self.cs_mm));
        }
        if !(self.amp.is_finite() && (0.0..1.0).contains(&self.amp)) {
            return Err(format!("amplitude contrast {} must be in [0, 1)", self.amp));
        }
        if !finite_pos(self.defocus_min_um) || !self.defocus_max_um.is_finite() {
            return Err(format!(
                "defocus range [{}, {}] µm: both ends must be positive numbers (underfocus)",
                self.defocus_min_um, self.defocus_max_um
            ));
        }
        if self.defocus_max_um < self.defocus_min_um {
            return Err(format!(
                "defocus range [{}, {}] µm: the maximum is below the minimum",
                self.defocus_min_um, self.defocus_max_um
            ));
        }
        if self.defocus_max_um > 20.0 {
            return Err(format!(
                "defocus maximum {} µm is beyond 20 µm; is the unit right (µm, not Å)?",
                self.defocus_max_um
            ));
        }
        if !(self.astig_max_um.is_finite() && self.astig_max_um >= 0.0) {
            return Err(format!(
                "astigmatism maximum {} µm must be 0 or more",
                self.astig_max_um
            ));
        }
        if self.defocus_min_um - 0.5 * self.astig_max_um <= 0.0 {
            return Err(format!(
                "defocus minimum {} µm minus half the astigmatism maximum {} µm must stay positive (V underfocus)",
                self.defocus_min_um, self.astig_max_um
            ));
        }
        if !(self.max_shift_px.is_finite() && self.max_shift_px >= 0.0) {
            return Err(format!(
                "maximum shift {} px must be 0 or more",
                self.max_shift_px
            ));
        }
        Ok(())
    }
}

/// The CTF part of a [`Truth`] (DESIGN.md §6: µm, U ≥ V, degrees from +x, units of π).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TruthCtf {
    pub defocus_u_um: f64,
    pub defocus_v_um: f64,
    pub astig_angle_deg: f64,
    pub phase_shift_pi: f64,
}

/// What went into one simulated movie: the `*.truth.json` beside it (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Truth {
    /// File name of the movie, relative to the truth file's directory.
    pub movie: String,
    pub width: usize,
    pub height: usize,
    pub frames: usize,
    /// Å/px.
    pub angpix: f64,
    /// e⁻/Å² per frame.
    pub dose_per_frame: f64,
    pub voltage_kv: f64,
    pub cs_mm: f64,
    pub amplitude_contrast: f64,
    /// The movie's own seed (as given to `sim::simulate`).
    pub seed: u64,
    /// Per-frame shift `[x, y]` in pixels, mean zero.
    pub shifts_px: Vec<[f32; 2]>,
    pub ctf: TruthCtf,
}

/// Reads a `*.truth.json` file.
pub fn read_truth(path: &Path) -> Result<Truth, String> {
    let text =
        fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not a truth file: {e}", path.display()))
}

/// `sim_0001`-style stem of movie `index` (0-based).
fn stem(index: usize) -> String {
    format!("sim_{:04}", index + 1)
}

/// Whether `name` is `sim_<digits><suffix>`; returns the number.
fn sim_number(name: &str, suffix: &str) -> Option<usize> {
    let digits = name.strip_prefix("sim_")?.strip_suffix(suffix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Files of a simulated dataset in `dir` (`sim_N.mrc`, `sim_N.truth.json`), with their numbers.
fn existing_dataset(dir: &Path) -> Result<Vec<(usize, PathBuf)>, String> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot list {}: {e}", dir.display())),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = sim_number(name, ".mrc").or_else(|| sim_number(name, ".truth.json")) {
            found.push((n, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename
/// ([`warp_kernels::io::atomic::write_atomic`]).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    warp_kernels::io::atomic::write_atomic(path, |w| std::io::Write::write_all(w, bytes))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Writes the dataset described by `opts` (see the module docs) and returns the movie paths.
/// Calls `progress(done, count, path)` after each movie; prints nothing.
///
/// Refuses an output directory that already holds `sim_*.mrc` or `sim_*.truth.json` files
/// unless `opts.overwrite` is set; then those files are replaced, and any beyond `count` are
/// removed so the directory holds exactly the new dataset.
pub fn simulate_dataset(
    opts: &SimulateOptions,
    progress: &mut dyn FnMut(usize, usize, &Path),
) -> Result<Vec<PathBuf>, String> {
    opts.validate()?;
    let dir = &opts.output;
    let existing = existing_dataset(dir)?;
    if !existing.is_empty() {
        if !opts.overwrite {
            return Err(format!(
                "{} already holds a simulated dataset ({} sim_* files, e.g. {}); choose another output directory or replace it (--overwrite)",
                dir.display(),
                existing.len(),
                existing[0].1.display()
            ));
        }
        for (n, path) in &existing {
            if *n == 0 || *n > opts.count {
                fs::remove_file(path)
                    .map_err(|e| format!("cannot remove stale {}: {e}", path.display()))?;
            }
        }
    }
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;

    let (n, frames) = (opts.size, opts.frames);
    let astig_lo = ASTIG_MIN_UM.min(opts.astig_max_um);
    let mut rng = SplitMix64::new(opts.seed);
    let mut written = Vec::with_capacity(opts.count);
    for index in 0..opts.count {
        let movie_seed = rng.next_u64();
        let mean_df =
            opts.defocus_min_um + (opts.defocus_max_um - opts.defocus_min_um) * rng.uniform();
        let astig = astig_lo + (opts.astig_max_um - astig_lo) * rng.uniform();
        let angle = 180.0 * rng.uniform();
        let params = SimParams {
            nx: n,
            ny: n,
            frames,
            pixel_size_a: opts.angpix,
            dose_per_px_per_frame: opts.counts_per_px(),
            ctf: CtfParams {
                voltage_kv: opts.voltage_kv,
                cs_mm: opts.cs_mm,
                amplitude_contrast: opts.amp,
                pixel_size_a: opts.angpix,
                defocus_u_um: mean_df + 0.5 * astig,
                defocus_v_um: mean_df - 0.5 * astig,
                astig_angle_deg: angle,
                phase_shift_pi: 0.0,
            },
            seed: movie_seed,
            max_shift_px: opts.max_shift_px,
        };
        let movie = simulate(&params);
        let mut data = Vec::with_capacity(n * n * frames);
        for frame in movie.frames {
            data.extend_from_slice(&frame);
        }
        let name = stem(index);
        let mrc_path = dir.join(format!("{name}.mrc"));
        write_mrc(
            &mrc_path,
            &data,
            n,
            n,
            frames,
            opts.format.write_mode(),
            opts.angpix as f32,
        )
        .map_err(|e| e.to_string())?;
        drop(data);
        let ctf = movie.truth.ctf;
        let truth = Truth {
            movie: format!("{name}.mrc"),
            width: n,
            height: n,
            frames,
            angpix: opts.angpix,
            dose_per_frame: opts.dose_per_frame,
            voltage_kv: opts.voltage_kv,
            cs_mm: opts.cs_mm,
            amplitude_contrast: opts.amp,
            seed: movie_seed,
            shifts_px: movie.truth.shifts_px,
            ctf: TruthCtf {
                defocus_u_um: ctf.defocus_u_um,
                defocus_v_um: ctf.defocus_v_um,
                astig_angle_deg: ctf.astig_angle_deg,
                phase_shift_pi: ctf.phase_shift_pi,
            },
        };
        let json = serde_json::to_string_pretty(&truth).expect("truth serialises");
        write_atomic(
            &dir.join(format!("{name}.truth.json")),
            format!("{json}\n").as_bytes(),
        )?;
        progress(index + 1, opts.count, &mrc_path);
        written.push(mrc_path);
    }
    Ok(written)
}

/// Errors of one movie's preprocessing result against its truth.
#[derive(Debug, Clone, PartialEq)]
pub struct ComparisonRow {
    /// Stem of the movie (`sim_0001`).
    pub movie: String,
    /// RMS over frames of the 2-D shift error, pixels, each trajectory's mean removed.
    pub shift_rms_px: f64,
    /// True mean defocus `(U + V)/2`, µm.
    pub defocus_true_um: f64,
    /// |fitted − true| mean defocus, µm.
    pub defocus_error_um: f64,
    /// The same as a percentage of the true mean defocus.
    pub defocus_error_pct: f64,
    /// True astigmatism `U − V`, µm.
    pub astig_true_um: f64,
    /// |fitted − true| astigmatism `U − V`, µm.
    pub astig_error_um: f64,
    /// Smallest difference of the astigmatism angles modulo 180°, degrees.
    pub angle_error_deg: f64,
    pub shift_ok: bool,
    pub defocus_ok: bool,
    pub astig_ok: bool,
    /// `None` where the true astigmatism is below [`ANGLE_CHECK_MIN_ASTIG_UM`] (not checked).
    pub angle_ok: Option<bool>,
}

impl ComparisonRow {
    /// Whether every checked quantity meets its target.
    pub fn within_targets(&self) -> bool {
        self.shift_ok && self.defocus_ok && self.astig_ok && self.angle_ok != Some(false)
    }
}

/// Result of [`compare_with_truth`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Comparison {
    /// One row per movie with a result, in file-name order.
    pub rows: Vec<ComparisonRow>,
    /// Stems of movies with a truth file but no result.
    pub missing: Vec<String>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    })
}

impl Comparison {
    /// Whether there is at least one row, no movie is missing and every row meets the targets.
    pub fn all_within_targets(&self) -> bool {
        !self.rows.is_empty()
            && self.missing.is_empty()
            && self.rows.iter().all(ComparisonRow::within_targets)
    }

    /// Rows that miss at least one target.
    pub fn failing(&self) -> usize {
        self.rows.iter().filter(|r| !r.within_targets()).count()
    }

    /// An aligned text table, one row per movie (a value that misses its target is marked
    /// `!`, an angle not checked `~`), the missing movies, and a summary line.
    pub fn table(&self) -> String {
        let mark = |ok: bool| if ok { " " } else { "!" };
        let mut out = format!(
            "{:<16} {:>10} {:>9} {:>10} {:>8} {:>9} {:>10} {:>9}  {}\n",
            "MOVIE", "SHIFT px", "DF µm", "ΔDF µm", "ΔDF %", "AST µm", "ΔAST µm", "ΔANG °", "OK"
        );
        for r in &self.rows {
            let angle_mark = match r.angle_ok {
                None => "~",
                Some(ok) => mark(ok),
            };
            out += &format!(
                "{:<16} {:>9.3}{} {:>9.3} {:>9.4}{} {:>7.2}{} {:>9.3} {:>9.4}{} {:>8.2}{}  {}\n",
                r.movie,
                r.shift_rms_px,
                mark(r.shift_ok),
                r.defocus_true_um,
                r.defocus_error_um,
                mark(r.defocus_ok),
                r.defocus_error_pct,
                mark(r.defocus_ok),
                r.astig_true_um,
                r.astig_error_um,
                mark(r.astig_ok),
                r.angle_error_deg,
                angle_mark,
                if r.within_targets() { "yes" } else { "NO" }
            );
        }
        for m in &self.missing {
            out += &format!("{m:<16} {:>10}  missing: no result\n", "-");
        }
        let fmt = |v: Option<f64>, digits: usize| match v {
            Some(v) => format!("{v:.digits$}"),
            None => "-".into(),
        };
        let col = |f: fn(&ComparisonRow) -> f64| self.rows.iter().map(f).collect::<Vec<_>>();
        let angles: Vec<f64> = self
            .rows
            .iter()
            .filter(|r| r.angle_ok.is_some())
            .map(|r| r.angle_error_deg)
            .collect();
        let total = self.rows.len() + self.missing.len();
        let ok = self.rows.len() - self.failing();
        out += &format!(
            "medians: shift RMS {} px, |Δdefocus| {} µm ({} %), |Δastig| {} µm, Δangle {}°; {ok}/{total} movies within all targets{}\n",
            fmt(median(col(|r| r.shift_rms_px)), 3),
            fmt(median(col(|r| r.defocus_error_um)), 4),
            fmt(median(col(|r| r.defocus_error_pct)), 2),
            fmt(median(col(|r| r.astig_error_um)), 4),
            fmt(median(angles), 2),
            if self.missing.is_empty() {
                String::new()
            } else {
                format!(", {} missing", self.missing.len())
            }
        );
        out += &format!(
            "targets: shift RMS ≤ {TARGET_SHIFT_RMS_PX} px, |Δdefocus| ≤ max({} %, {TARGET_DEFOCUS_ABS_UM} µm), |Δastig| ≤ {TARGET_ASTIG_UM} µm, Δangle ≤ {TARGET_ANGLE_DEG}° (checked where astig ≥ {ANGLE_CHECK_MIN_ASTIG_UM} µm)\n",
            TARGET_DEFOCUS_REL * 100.0
        );
        out
    }
}

/// `(mean defocus, U − V, angle)` with U ≥ V enforced (swapping U and V turns the axis 90°).
fn normalised_ctf(u: f64, v: f64, angle: f64) -> (f64, f64, f64) {
    if u >= v {
        (0.5 * (u + v), u - v, angle)
    } else {
        (0.5 * (u + v), v - u, angle + 90.0)
    }
}

/// Smallest difference of two axis angles, degrees modulo 180.
fn angle_difference(a: f64, b: f64) -> f64 {
    let d = (a - b).rem_euclid(180.0);
    d.min(180.0 - d)
}

/// RMS of the 2-D difference of two trajectories, each with its mean removed.
fn shift_rms(fit: &[[f64; 2]], truth: &[[f64; 2]]) -> f64 {
    let n = fit.len() as f64;
    let mean = |t: &[[f64; 2]], a: usize| t.iter().map(|s| s[a]).sum::<f64>() / n;
    let (fx, fy, tx, ty) = (mean(fit, 0), mean(fit, 1), mean(truth, 0), mean(truth, 1));
    let sum: f64 = fit
        .iter()
        .zip(truth)
        .map(|(f, t)| ((f[0] - fx) - (t[0] - tx)).powi(2) + ((f[1] - fy) - (t[1] - ty)).powi(2))
        .sum();
    (sum / n).sqrt()
}

/// One movie's row from its truth and its preprocessing result (`out`, parsed JSON).
fn compare_one(
    stem: &str,
    truth: &Truth,
    out: &Value,
    out_path: &Path,
) -> Result<ComparisonRow, String> {
    let bad = |what: &str| format!("{}: {what}", out_path.display());
    let num = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| bad(&format!("no number '{key}'")))
    };
    let shifts: Vec<[f64; 2]> = out
        .get("motion")
        .and_then(|m| m.get("shifts_px"))
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no array motion.shifts_px"))?
        .iter()
        .map(|s| match s.as_array().map(Vec::as_slice) {
            Some([x, y]) => x.as_f64().zip(y.as_f64()).map(|(x, y)| [x, y]),
            _ => None,
        })
        .collect::<Option<_>>()
        .ok_or_else(|| bad("motion.shifts_px is not a list of [x, y] numbers"))?;
    if shifts.len() != truth.shifts_px.len() {
        return Err(bad(&format!(
            "{} shifts, but the truth has {} frames",
            shifts.len(),
            truth.shifts_px.len()
        )));
    }
    let true_shifts: Vec<[f64; 2]> = truth
        .shifts_px
        .iter()
        .map(|s| [f64::from(s[0]), f64::from(s[1])])
        .collect();
    let ctf = out.get("ctf").ok_or_else(|| bad("no object 'ctf'"))?;
    let (fit_df, fit_ast, fit_ang) = normalised_ctf(
        num(ctf, "defocus_u_um")?,
        num(ctf, "defocus_v_um")?,
        num(ctf, "astig_angle_deg")?,
    );
    let t = &truth.ctf;
    let (true_df, true_ast, true_ang) =
        normalised_ctf(t.defocus_u_um, t.defocus_v_um, t.astig_angle_deg);

    let shift_rms_px = shift_rms(&shifts, &true_shifts);
    let defocus_error_um = (fit_df - true_df).abs();
    let astig_error_um = (fit_ast - true_ast).abs();
    let angle_error_deg = angle_difference(fit_ang, true_ang);
    let defocus_tol = (TARGET_DEFOCUS_REL * true_df).max(TARGET_DEFOCUS_ABS_UM);
    Ok(ComparisonRow {
        movie: stem.to_string(),
        shift_rms_px,
        defocus_true_um: true_df,
        defocus_error_um,
        defocus_error_pct: 100.0 * defocus_error_um / true_df,
        astig_true_um: true_ast,
        astig_error_um,
        angle_error_deg,
        shift_ok: shift_rms_px <= TARGET_SHIFT_RMS_PX,
        defocus_ok: defocus_error_um <= defocus_tol,
        astig_ok: astig_error_um <= TARGET_ASTIG_UM,
        angle_ok: (true_ast >= ANGLE_CHECK_MIN_ASTIG_UM)
            .then_some(angle_error_deg <= TARGET_ANGLE_DEG),
    })
}

/// Compares every `*.truth.json` in `truth_dir` with the preprocessing result
/// `out_dir/<stem>.json` (extra fields ignored). A movie without a result is listed in
/// `missing`; an unreadable or malformed result, or no truth files at all, is an error.
pub fn compare_with_truth(truth_dir: &Path, out_dir: &Path) -> Result<Comparison, String> {
    let entries =
        fs::read_dir(truth_dir).map_err(|e| format!("cannot list {}: {e}", truth_dir.display()))?;
    let mut stems = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", truth_dir.display()))?;
        let name = entry.file_name();
        if let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".truth.json"))
            && !stem.is_empty()
        {
            stems.push(stem.to_string());
        }
    }
    if stems.is_empty() {
        return Err(format!(
            "no *.truth.json files in {} (made by warp-controller simulate)",
            truth_dir.display()
        ));
    }
    stems.sort();
    let mut cmp = Comparison::default();
    for stem in stems {
        let truth = read_truth(&truth_dir.join(format!("{stem}.truth.json")))?;
        let out_path = out_dir.join(format!("{stem}.json"));
        let text = match fs::read_to_string(&out_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                cmp.missing.push(stem);
                continue;
            }
            Err(e) => return Err(format!("cannot read {}: {e}", out_path.display())),
        };
        let out: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not JSON: {e}", out_path.display()))?;
        cmp.rows.push(compare_one(&stem, &truth, &out, &out_path)?);
    }
    Ok(cmp)
}

/// Parses `args` with `opts`; prints help and returns `None` for `--help`.
/// [`crate::cli::parse`], refusing arguments that are not options.
fn parse(opts: &Options, args: &[String], brief: &str) -> Result<Option<Matches>, String> {
    let m = crate::cli::parse(opts, args, brief)?;
    if let Some(extra) = m.as_ref().and_then(|m| m.free.first()) {
        return Err(format!("usage: unexpected argument '{extra}'; see --help"));
    }
    Ok(m)
}

/// `warp-controller simulate ...` (arguments after the subcommand). Errors beginning with
/// `"usage: "` are usage errors.
pub fn run_cli(args: &[String]) -> Result<(), String> {
    let d = SimulateOptions::default();
    let mut o = Options::new();
    o.optflag("h", "help", "print this help");
    o.optopt(
        "",
        "output",
        "directory for the movies and truth files (required)",
        "DIR",
    );
    o.optopt(
        "",
        "count",
        &format!("number of movies (default {})", d.count),
        "N",
    );
    o.optopt(
        "",
        "size",
        &format!("width = height in pixels, even, ≥ 64 (default {})", d.size),
        "PX",
    );
    o.optopt(
        "",
        "frames",
        &format!("frames per movie, ≥ 2 (default {})", d.frames),
        "F",
    );
    o.optopt(
        "",
        "angpix",
        &format!("pixel size in Å (default {})", d.angpix),
        "A",
    );
    o.optopt(
        "",
        "dose-per-frame",
        &format!(
            "dose per frame in e⁻/Å²; counts per pixel = dose × angpix² (default {})",
            d.dose_per_frame
        ),
        "D",
    );
    o.optopt(
        "",
        "voltage",
        &format!("acceleration voltage in kV (default {})", d.voltage_kv),
        "KV",
    );
    o.optopt(
        "",
        "cs",
        &format!("spherical aberration in mm (default {})", d.cs_mm),
        "MM",
    );
    o.optopt(
        "",
        "amp",
        &format!("amplitude contrast fraction (default {})", d.amp),
        "F",
    );
    o.optopt(
        "",
        "defocus-min",
        &format!(
            "smallest mean defocus in µm, underfocus positive (default {})",
            d.defocus_min_um
        ),
        "UM",
    );
    o.optopt(
        "",
        "defocus-max",
        &format!("largest mean defocus in µm (default {})", d.defocus_max_um),
        "UM",
    );
    o.optopt(
        "",
        "astig-max",
        &format!(
            "largest astigmatism U − V in µm, drawn in [0.1, max] (default {})",
            d.astig_max_um
        ),
        "UM",
    );
    o.optopt(
        "",
        "max-shift",
        &format!("largest frame shift in pixels (default {})", d.max_shift_px),
        "PX",
    );
    o.optopt(
        "",
        "seed",
        &format!("dataset seed (default {})", d.seed),
        "S",
    );
    o.optflag(
        "",
        "float16",
        "store float16 (MRC mode 12) instead of int16 (mode 1)",
    );
    o.optflag(
        "",
        "overwrite",
        "replace a simulated dataset already in --output",
    );
    let brief = "Usage: warp-controller simulate --output DIR [options]\n\n\
        Writes synthetic movies DIR/sim_0001.mrc ... (Poisson counts of a weak-phase specimen\n\
        under a known CTF and drift; see kernels/src/sim.rs) and beside each sim_0001.truth.json\n\
        with the shifts and CTF that went in. Each movie draws its mean defocus uniformly in\n\
        [--defocus-min, --defocus-max], its astigmatism in [0.1, --astig-max] and its angle in\n\
        [0, 180). Compare preprocessing results with: warp-controller compare --truth DIR --output OUT";
    let Some(m) = parse(&o, args, brief)? else {
        return Ok(());
    };
    let Some(output) = m.opt_str("output") else {
        return Err("usage: simulate needs --output DIR; see --help".into());
    };
    let opts = SimulateOptions {
        output: PathBuf::from(output),
        count: number(&m, "count", d.count)?,
        size: number(&m, "size", d.size)?,
        frames: number(&m, "frames", d.frames)?,
        angpix: number(&m, "angpix", d.angpix)?,
        dose_per_frame: number(&m, "dose-per-frame", d.dose_per_frame)?,
        voltage_kv: number(&m, "voltage", d.voltage_kv)?,
        cs_mm: number(&m, "cs", d.cs_mm)?,
        amp: number(&m, "amp", d.amp)?,
        defocus_min_um: number(&m, "defocus-min", d.defocus_min_um)?,
        defocus_max_um: number(&m, "defocus-max", d.defocus_max_um)?,
        astig_max_um: number(&m, "astig-max", d.astig_max_um)?,
        max_shift_px: number(&m, "max-shift", d.max_shift_px)?,
        seed: number(&m, "seed", d.seed)?,
        format: if m.opt_present("float16") {
            SimFormat::Float16
        } else {
            SimFormat::Int16
        },
        overwrite: m.opt_present("overwrite"),
    };
    opts.validate().map_err(|e| format!("usage: {e}"))?;
    let written = simulate_dataset(&opts, &mut |done, total, path| {
        eprintln!("simulated {done}/{total}: {}", path.display());
    })?;
    println!(
        "wrote {} movie(s) of {}×{}×{} at {} Å/px, {} e⁻/Å² per frame, with truth files, to {}",
        written.len(),
        opts.size,
        opts.size,
        opts.frames,
        opts.angpix,
        opts.dose_per_frame,
        opts.output.display()
    );
    Ok(())
}

/// `warp-controller compare --truth DIR --output DIR`: prints the table; an error when a movie
/// misses a target or has no result. Errors beginning with `"usage: "` are usage errors.
pub fn run_compare_cli(args: &[String]) -> Result<(), String> {
    let mut o = Options::new();
    o.optflag("h", "help", "print this help");
    o.optopt(
        "",
        "truth",
        "directory of *.truth.json files (from simulate)",
        "DIR",
    );
    o.optopt(
        "",
        "output",
        "directory of the preprocessing results <stem>.json",
        "DIR",
    );
    let brief = "Usage: warp-controller compare --truth DIR --output DIR\n\n\
        Compares each movie's preprocessing result (OUTPUT/sim_0001.json ...) with the truth\n\
        written by simulate and prints a table. Fails when any movie misses a target or has no\n\
        result.";
    let Some(m) = parse(&o, args, brief)? else {
        return Ok(());
    };
    let (Some(truth), Some(output)) = (m.opt_str("truth"), m.opt_str("output")) else {
        return Err("usage: compare needs --truth DIR and --output DIR; see --help".into());
    };
    let cmp = compare_with_truth(Path::new(&truth), Path::new(&output))?;
    print!("{}", cmp.table());
    if cmp.all_within_targets() {
        return Ok(());
    }
    let total = cmp.rows.len() + cmp.missing.len();
    let mut problems = Vec::new();
    if cmp.failing() > 0 {
        problems.push(format!(
            "{} of {total} movie(s) miss a target",
            cmp.failing()
        ));
    }
    if !cmp.missing.is_empty() {
        problems.push(format!(
            "{} of {total} movie(s) have no result",
            cmp.missing.len()
        ));
    }
    Err(problems.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp_kernels::io::mrc::{MrcMode, read_mrc};

    /// A fresh, empty temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let dir = std::env::temp_dir().join(format!(
                "warp-simulate-{tag}-{}-{n}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0)
            ));
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn small(dir: &Path) -> SimulateOptions {
        SimulateOptions {
            output: dir.to_path_buf(),
            count: 2,
            size: 64,
            frames: 4,
            angpix: 1.5,
            dose_per_frame: 2.0,
            max_shift_px: 3.0,
            seed: 7,
            ..SimulateOptions::default()
        }
    }

    #[test]
    fn simulate_writes_movies_and_truth() {
        let tmp = TempDir::new("write");
        let dir = tmp.0.join("data");
        let opts = small(&dir);
        let mut seen = Vec::new();
        let written =
            simulate_dataset(&opts, &mut |d, t, p| seen.push((d, t, p.to_path_buf()))).unwrap();
        assert_eq!(
            written,
            vec![dir.join("sim_0001.mrc"), dir.join("sim_0002.mrc")]
        );
        assert_eq!(
            seen,
            vec![(1, 2, written[0].clone()), (2, 2, written[1].clone())]
        );
        let want_counts = 2.0 * 1.5 * 1.5;
        let mut defoci = Vec::new();
        for (i, path) in written.iter().enumerate() {
            let (h, data) = read_mrc(path).unwrap();
            assert_eq!(h.mode, MrcMode::Int16);
            assert_eq!((h.nx, h.ny, h.nz), (64, 64, 4));
            for v in h.voxel_size_a {
                assert!((v - 1.5).abs() < 1e-4, "{:?}", h.voxel_size_a);
            }
            let mean = data.iter().map(|&v| f64::from(v)).sum::<f64>() / data.len() as f64;
            assert!((mean / want_counts - 1.0).abs() < 0.1, "mean count {mean}");
            assert!(data.iter().all(|v| *v >= 0.0 && v.fract() == 0.0));

            let truth = read_truth(&dir.join(format!("sim_{:04}.truth.json", i + 1))).unwrap();
            assert_eq!(truth.movie, format!("sim_{:04}.mrc", i + 1));
            assert_eq!((truth.width, truth.height, truth.frames), (64, 64, 4));
            assert_eq!((truth.angpix, truth.dose_per_frame), (1.5, 2.0));
            assert_eq!(truth.shifts_px.len(), 4);
            let c = truth.ctf;
            let mean_df = 0.5 * (c.defocus_u_um + c.defocus_v_um);
            let astig = c.defocus_u_um - c.defocus_v_um;
            assert!((0.8..=3.0).contains(&mean_df), "{c:?}");
            assert!((0.1 - 1e-12..=0.3 + 1e-12).contains(&astig), "{c:?}");
            assert!((0.0..180.0).contains(&c.astig_angle_deg));
            assert_eq!(c.phase_shift_pi, 0.0);
            defoci.push(mean_df);
            // The recorded seed and parameters reproduce the movie.
            let again = simulate(&SimParams {
                nx: 64,
                ny: 64,
                frames: 4,
                pixel_size_a: 1.5,
                dose_per_px_per_frame: want_counts,
                ctf: CtfParams {
                    voltage_kv: truth.voltage_kv,
                    cs_mm: truth.cs_mm,
                    amplitude_contrast: truth.amplitude_contrast,
                    pixel_size_a: 1.5,
                    defocus_u_um: c.defocus_u_um,
                    defocus_v_um: c.defocus_v_um,
                    astig_angle_deg: c.astig_angle_deg,
                    phase_shift_pi: 0.0,
                },
                seed: truth.seed,
                max_shift_px: 3.0,
            });
            assert_eq!(again.frames.concat(), data);
            assert_eq!(again.truth.shifts_px, truth.shifts_px);
        }
        assert_ne!(defoci[0], defoci[1], "each movie draws its own defocus");

        // A second run is refused, and leaves the files alone.
        let err = simulate_dataset(&opts, &mut |_, _, _| {}).unwrap_err();
        assert!(err.contains("--overwrite"), "{err}");
        // With overwrite, a smaller float16 dataset replaces it entirely.
        let again = SimulateOptions {
            count: 1,
            format: SimFormat::Float16,
            overwrite: true,
            ..opts.clone()
        };
        simulate_dataset(&again, &mut |_, _, _| {}).unwrap();
        let (h, _) = read_mrc(dir.join("sim_0001.mrc")).unwrap();
        assert_eq!(h.mode, MrcMode::Float16);
        assert!(!dir.join("sim_0002.mrc").exists());
        assert!(!dir.join("sim_0002.truth.json").exists());
    }

    #[test]
    fn options_are_validated() {
        let ok = SimulateOptions::default();
        assert!(ok.validate().is_ok());
        let cases = [
            (
                SimulateOptions {
                    count: 0,
                    ..ok.clone()
                },
                "count",
            ),
            (
                SimulateOptions {
                    size: 62,
                    ..ok.clone()
                },
                "size",
            ),
            (
                SimulateOptions {
                    size: 65,
                    ..ok.clone()
                },
                "size",
            ),
            (
                SimulateOptions {
                    frames: 1,
                    ..ok.clone()
                },
                "frames",
            ),
            (
                SimulateOptions {
                    angpix: 0.0,
                    ..ok.clone()
                },
                "angpix",
            ),
            (
                SimulateOptions {
                    dose_per_frame: -1.0,
                    ..ok.clone()
                },
                "dose",
            ),
            (
                SimulateOptions {
                    defocus_max_um: 0.5,
                    ..ok.clone()
                },
                "maximum is below",
            ),
            (
                SimulateOptions {
                    defocus_min_um: 0.0,
                    ..ok.clone()
                },
                "defocus range",
            ),
            (
                SimulateOptions {
                    defocus_min_um: 0.1,
                    ..ok.clone()
                },
                "astigmatism",
            ),
            (
                SimulateOptions {
                    amp: 1.0,
                    ..ok.clone()
                },
                "amplitude",
            ),
        ];
        for (o, want) in cases {
            let e = o.validate().unwrap_err();
            assert!(e.contains(want), "{e} lacks {want}");
        }
    }

    #[test]
    fn cli_usage_errors_are_marked() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for bad in [
            &["--bogus"][..],
            &[],
            &["--output", "x", "--size", "big"],
            &["--output", "x", "--size", "63"],
            &["--output", "x", "extra"],
        ] {
            let e = run_cli(&args(bad)).unwrap_err();
            assert!(e.starts_with("usage: "), "{bad:?}: {e}");
        }
        let e = run_compare_cli(&args(&["--truth", "x"])).unwrap_err();
        assert!(e.starts_with("usage: "), "{e}");
        assert!(run_cli(&args(&["--help"])).is_ok());
        assert!(run_compare_cli(&args(&["-h"])).is_ok());
    }

    /// A preprocessing result for `truth`, shifts offset by a constant (mean is removed).
    fn fake_output(truth: &Truth, df_scale: f64) -> Value {
        let c = truth.ctf;
        serde_json::json!({
            "movie": truth.movie,
            "frames": truth.frames,
            "width": truth.width,
            "height": truth.height,
            "angpix": truth.angpix,
            "motion": {
                "shifts_px": truth.shifts_px.iter()
                    .map(|s| [f64::from(s[0]) + 0.7, f64::from(s[1]) - 0.2])
                    .collect::<Vec<_>>(),
                "shifts_A": [],
                "local": {"grid": [1, 1]},
            },
            "ctf": {
                "defocus_u_um": c.defocus_u_um * df_scale,
                "defocus_v_um": c.defocus_v_um * df_scale,
                // Same axis, written the other way round.
                "astig_angle_deg": c.astig_angle_deg + 180.0,
                "phase_shift_pi": 0.0,
                "fit_resolution_A": 4.0,
                "score": 0.5,
            },
            "timings_ms": {"total": 12},
            "backend": "cpu",
        })
    }

    #[test]
    fn compare_flags_errors_and_missing_results() {
        let tmp = TempDir::new("compare");
        let (truth_dir, out_dir) = (tmp.0.join("truth"), tmp.0.join("out"));
        let opts = SimulateOptions {
            count: 3,
            ..small(&truth_dir)
        };
        simulate_dataset(&opts, &mut |_, _, _| {}).unwrap();
        fs::create_dir_all(&out_dir).unwrap();
        let truth =
            |i: usize| read_truth(&truth_dir.join(format!("sim_{i:04}.truth.json"))).unwrap();
        let write = |i: usize, v: Value| {
            fs::write(out_dir.join(format!("sim_{i:04}.json")), v.to_string()).unwrap()
        };

        write(1, fake_output(&truth(1), 1.0));
        write(2, fake_output(&truth(2), 1.0));
        let c = compare_with_truth(&truth_dir, &out_dir).unwrap();
        assert_eq!(c.missing, vec!["sim_0003".to_string()]);
        assert_eq!(c.rows.len(), 2);
        for r in &c.rows {
            assert!(r.shift_rms_px < 1e-5, "{r:?}");
            assert!(
                r.defocus_error_um < 1e-12 && r.astig_error_um < 1e-12,
                "{r:?}"
            );
            assert!(r.angle_error_deg < 1e-9, "{r:?}");
            assert!(r.within_targets(), "{r:?}");
        }
        assert!(
            !c.all_within_targets(),
            "a missing movie fails the comparison"
        );
        let table = c.table();
        assert!(
            table.contains("sim_0003") && table.contains("missing"),
            "{table}"
        );
        assert!(table.contains("2/3 movies within all targets"), "{table}");

        // All present and exact: passes.
        write(3, fake_output(&truth(3), 1.0));
        let c = compare_with_truth(&truth_dir, &out_dir).unwrap();
        assert!(c.all_within_targets(), "{}", c.table());
        let args = |a: &[&Path]| {
            let mut v = Vec::new();
            for (flag, p) in ["--truth", "--output"].iter().zip(a) {
                v.push(flag.to_string());
                v.push(p.display().to_string());
            }
            v
        };
        assert!(run_compare_cli(&args(&[&truth_dir, &out_dir])).is_ok());

        // A 5 % defocus error is flagged (mean and astigmatism both scale).
        write(2, fake_output(&truth(2), 1.05));
        let c = compare_with_truth(&truth_dir, &out_dir).unwrap();
        let r = &c.rows[1];
        assert!((r.defocus_error_pct - 5.0).abs() < 1e-6, "{r:?}");
        assert!(!r.defocus_ok && !r.within_targets(), "{r:?}");
        assert!(c.rows[0].within_targets() && c.rows[2].within_targets());
        assert!(!c.all_within_targets());
        assert!(c.table().contains("NO"));
        let e = run_compare_cli(&args(&[&truth_dir, &out_dir])).unwrap_err();
        assert!(e.contains("1 of 3 movie(s) miss a target"), "{e}");
        assert!(!e.starts_with("usage: "));
    }

    #[test]
    fn angles_and_swapped_axes() {
        assert!((angle_difference(179.0, 1.0) - 2.0).abs() < 1e-12);
        assert!((angle_difference(10.0, 370.0)).abs() < 1e-12);
        assert!((angle_difference(0.0, 90.0) - 90.0).abs() < 1e-12);
        let (df, ast, ang) = normalised_ctf(1.0, 1.2, 30.0);
        assert!((df - 1.1).abs() < 1e-12 && (ast - 0.2).abs() < 1e-12 && ang == 120.0);
        // Shift error after removing the means: a constant offset counts for nothing.
        let t = [[0.0, 1.0], [1.0, -1.0]];
        let f = [[5.0, 1.0], [6.0, -1.0]];
        assert!(shift_rms(&f, &t) < 1e-12);
        let f = [[0.1, 1.0], [0.9, -1.0]];
        assert!((shift_rms(&f, &t) - 0.1).abs() < 1e-12);
    }
}

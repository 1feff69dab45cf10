//! Synthetic datasets with known truth (`warp-controller simulate`; the comparison of results
//! against the truth is [`crate::compare`]).
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

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use warp_common::preprocessing::Defocus;
use warp_kernels::ctf::Ctf;
use warp_kernels::io::mrc::{WriteMode, write_mrc};
use warp_kernels::sim::{SimParams, SplitMix64, simulate};

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
    /// EER (`.eer`, scheme 65001): each frame's counts spread over this many raw frames, at most
    /// one electron per pixel in each (counts above it are cut), sub-pixel codes at random;
    /// read back with `--eer-groups` of the same number.
    Eer(usize),
}

impl SimFormat {
    fn write_mode(self) -> WriteMode {
        match self {
            SimFormat::Float16 => WriteMode::Float16,
            SimFormat::Int16 | SimFormat::Eer(_) => WriteMode::Int16,
        }
    }

    fn extension(self) -> &'static str {
        match self {
            SimFormat::Eer(_) => "eer",
            _ => "mrc",
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
    /// `Some(jitter)`: the hard path of `warp_kernels::sim::hard_trajectory` (a fast start
    /// decelerating along a curve, plus a random walk of `jitter` px per frame); `None`: the
    /// smooth path.
    pub hard_path_jitter_px: Option<f64>,
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
            hard_path_jitter_px: None,
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
        if self.format == SimFormat::Eer(0) {
            return Err("EER groups must hold at least one raw frame".into());
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
    /// The CTF that went in (the same shape a fit reports).
    pub ctf: Defocus,
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
        if let Some(n) = sim_number(name, ".mrc")
            .or_else(|| sim_number(name, ".eer"))
            .or_else(|| sim_number(name, ".truth.json"))
        {
            found.push((n, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Writes counting frames (`n × n` each) as an EER movie of `group` raw frames per frame (see
/// [`SimFormat::Eer`]).
fn write_sim_eer(
    path: &Path,
    frames: &[Vec<f32>],
    n: usize,
    group: usize,
    seed: u64,
) -> Result<(), String> {
    use warp_kernels::io::eer::{EerScheme, Electron, encode_frame, write_eer_pages};
    let scheme = EerScheme::from_tags(65001, None, None, None)?;
    let mut rng = SplitMix64::new(seed ^ 0xEE5);
    let mut pages = Vec::with_capacity(frames.len() * group);
    let mut raw: Vec<Vec<Electron>> = vec![Vec::new(); group];
    let mut taken = vec![false; group];
    for f in frames {
        raw.iter_mut().for_each(Vec::clear);
        for (p, &c) in f.iter().enumerate() {
            let c = (c.max(0.0).round() as usize).min(group);
            taken.fill(false);
            for _ in 0..c {
                // A raw frame this pixel has no electron in yet.
                let mut r = (rng.next_u64() % group as u64) as usize;
                while taken[r] {
                    r = (r + 1) % group;
                }
                taken[r] = true;
                let code = rng.next_u64();
                raw[r].push(Electron {
                    x: (p % n) as u32,
                    y: (p / n) as u32,
                    sub_x: (code & 3) as u8,
                    sub_y: ((code >> 2) & 3) as u8,
                });
            }
        }
        pages.extend(raw.iter().map(|e| encode_frame(e, n, n, scheme)));
    }
    write_eer_pages(path, &pages, n, n, 65001, scheme, false)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
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
            ctf: Ctf {
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
            path: match opts.hard_path_jitter_px {
                Some(jitter_px) => warp_kernels::sim::SimPath::Hard { jitter_px },
                None => warp_kernels::sim::SimPath::Smooth,
            },
        };
        let mut movie = simulate(&params);
        let name = stem(index);
        let mrc_path = dir.join(format!("{name}.{}", opts.format.extension()));
        if let SimFormat::Eer(group) = opts.format {
            write_sim_eer(
                &mrc_path,
                &std::mem::take(&mut movie.frames),
                n,
                group,
                movie_seed,
            )?;
        } else {
            let mut data = Vec::with_capacity(n * n * frames);
            for frame in std::mem::take(&mut movie.frames) {
                data.extend_from_slice(&frame);
            }
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
        }
        let ctf = movie.truth.ctf;
        let truth = Truth {
            movie: format!("{name}.{}", opts.format.extension()),
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
            ctf: Defocus {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{TempDir, small_dataset as small};
    use warp_kernels::io::mrc::{MrcMode, read_mrc};

    #[test]
    fn simulate_writes_movies_and_truth() {
        let tmp = TempDir::new("write");
        let dir = tmp.join("data");
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
                ctf: Ctf {
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
                path: warp_kernels::sim::SimPath::Smooth,
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
}

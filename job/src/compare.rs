//! The comparison of preprocessing results with a simulated dataset's truth
//! (`warp-controller compare`).
//!
//! [`compare_with_truth`] reads each truth file and the preprocessing result `<stem>.json` of
//! the same movie and checks the errors against the targets ([`TARGET_SHIFT_RMS_PX`] and the
//! constants after it).

use std::fs;
use std::path::Path;

use warp_common::preprocessing::Defocus;

use crate::dataset::{Truth, read_truth};
use crate::preprocess::{MovieRecord, read_record};

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
fn normalised_ctf(d: &Defocus) -> (f64, f64, f64) {
    let (u, v) = (d.defocus_u_um, d.defocus_v_um);
    if u >= v {
        (d.mean_um(), u - v, d.astig_angle_deg)
    } else {
        (d.mean_um(), v - u, d.astig_angle_deg + 90.0)
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

/// One movie's row from its truth and its preprocessing result (`out`, read from `out_path`).
fn compare_one(
    stem: &str,
    truth: &Truth,
    out: &MovieRecord,
    out_path: &Path,
) -> Result<ComparisonRow, String> {
    let shifts: Vec<[f64; 2]> = out
        .motion
        .shifts_px
        .iter()
        .map(|s| [f64::from(s[0]), f64::from(s[1])])
        .collect();
    if shifts.len() != truth.shifts_px.len() {
        return Err(format!(
            "{}: {} shifts, but the truth has {} frames",
            out_path.display(),
            shifts.len(),
            truth.shifts_px.len()
        ));
    }
    let true_shifts: Vec<[f64; 2]> = truth
        .shifts_px
        .iter()
        .map(|s| [f64::from(s[0]), f64::from(s[1])])
        .collect();
    let (fit_df, fit_ast, fit_ang) = normalised_ctf(&out.ctf.defocus);
    let (true_df, true_ast, true_ang) = normalised_ctf(&truth.ctf);

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
/// `out_dir/<stem>.json`, read as the [`MovieRecord`] `preprocess` writes. A movie without a
/// result is listed in `missing`; an unreadable or malformed result, or no truth files at
/// all, is an error.
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
        match fs::metadata(&out_path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                cmp.missing.push(stem);
                continue;
            }
            _ => {}
        }
        let out = read_record(&out_path)?;
        cmp.rows.push(compare_one(&stem, &truth, &out, &out_path)?);
    }
    Ok(cmp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{SimulateOptions, simulate_dataset};
    use crate::preprocess::{CtfRecord, MotionRecord};
    use crate::test_util::{TempDir, small_dataset};
    use warp_common::preprocessing::Defocus;

    /// A preprocessing result for `truth`, shifts offset by a constant (mean is removed).
    fn fake_output(truth: &Truth, df_scale: f64) -> MovieRecord {
        let c = truth.ctf;
        MovieRecord {
            movie: truth.movie.clone(),
            frames: truth.frames,
            width: truth.width,
            height: truth.height,
            angpix: truth.angpix,
            motion: MotionRecord {
                shifts_px: truth
                    .shifts_px
                    .iter()
                    .map(|s| [s[0] + 0.7, s[1] - 0.2])
                    .collect(),
                shifts_a: Vec::new(),
                local: None,
            },
            ctf: CtfRecord {
                defocus: Defocus {
                    defocus_u_um: c.defocus_u_um * df_scale,
                    defocus_v_um: c.defocus_v_um * df_scale,
                    // Same axis, written the other way round.
                    astig_angle_deg: c.astig_angle_deg + 180.0,
                    phase_shift_pi: 0.0,
                },
                fit_resolution_a: 4.0,
                score: 0.5,
                voltage_kv: truth.voltage_kv,
                cs_mm: truth.cs_mm,
                amplitude_contrast: truth.amplitude_contrast,
            },
            outputs: Default::default(),
            timings_ms: Default::default(),
            backend: "cpu".into(),
            worker: "test".into(),
            read_ahead: None,
        }
    }

    #[test]
    fn compare_flags_errors_and_missing_results() {
        let tmp = TempDir::new("compare");
        let (truth_dir, out_dir) = (tmp.join("truth"), tmp.join("out"));
        let opts = SimulateOptions {
            count: 3,
            ..small_dataset(&truth_dir)
        };
        simulate_dataset(&opts, &mut |_, _, _| {}).unwrap();
        fs::create_dir_all(&out_dir).unwrap();
        let truth =
            |i: usize| read_truth(&truth_dir.join(format!("sim_{i:04}.truth.json"))).unwrap();
        let write = |i: usize, v: MovieRecord| {
            let text = serde_json::to_string(&v).unwrap();
            fs::write(out_dir.join(format!("sim_{i:04}.json")), text).unwrap()
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
        let cli = |a: Vec<String>| {
            use crate::cmd::compare::{CompareConfig, run};
            CompareConfig::from_args(&a).and_then(|c| run(c.expect("not --help")))
        };
        assert!(cli(args(&[&truth_dir, &out_dir])).is_ok());

        // A 5 % defocus error is flagged (mean and astigmatism both scale).
        write(2, fake_output(&truth(2), 1.05));
        let c = compare_with_truth(&truth_dir, &out_dir).unwrap();
        let r = &c.rows[1];
        assert!((r.defocus_error_pct - 5.0).abs() < 1e-6, "{r:?}");
        assert!(!r.defocus_ok && !r.within_targets(), "{r:?}");
        assert!(c.rows[0].within_targets() && c.rows[2].within_targets());
        assert!(!c.all_within_targets());
        assert!(c.table().contains("NO"));
        let e = cli(args(&[&truth_dir, &out_dir])).unwrap_err();
        assert!(
            matches!(&e, crate::cli::CliError::Failed(m) if m.contains("1 of 3 movie(s) miss a target")),
            "{e:?}"
        );
    }

    #[test]
    fn angles_and_swapped_axes() {
        assert!((angle_difference(179.0, 1.0) - 2.0).abs() < 1e-12);
        assert!((angle_difference(10.0, 370.0)).abs() < 1e-12);
        assert!((angle_difference(0.0, 90.0) - 90.0).abs() < 1e-12);
        let (df, ast, ang) = normalised_ctf(&Defocus {
            defocus_u_um: 1.0,
            defocus_v_um: 1.2,
            astig_angle_deg: 30.0,
            phase_shift_pi: 0.0,
        });
        assert!((df - 1.1).abs() < 1e-12 && (ast - 0.2).abs() < 1e-12 && ang == 120.0);
        // Shift error after removing the means: a constant offset counts for nothing.
        let t = [[0.0, 1.0], [1.0, -1.0]];
        let f = [[5.0, 1.0], [6.0, -1.0]];
        assert!(shift_rms(&f, &t) < 1e-12);
        let f = [[0.1, 1.0], [0.9, -1.0]];
        assert!((shift_rms(&f, &t) - 0.1).abs() < 1e-12);
    }
}

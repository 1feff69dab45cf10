//! Selection of a session's movies, like Warp's filters: thresholds on CTF fit resolution,
//! defocus, astigmatism and motion ([`SelectionThresholds`]) applied to the `<name>.json`
//! records of every processed movie. The movies that pass go into
//! `micrographs_ctf_selected.star` (the same columns as `micrographs_ctf.star`); the thresholds
//! are saved in `selection.json`, so the status page shows them again, `warp-controller select`
//! starts from them, and a running `preprocess` keeps the selected table up to date as movies
//! arrive.
//!
//! The status page's live count applies the same rule in JavaScript to the task results; the
//! figures are the same (`total_motion` of the Å trajectory).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use warp_common::preprocessing::{
    MovieFigures, SelectionSummary, SelectionThresholds, SessionInfo, total_motion,
};
use warp_controller::http::ApiError;
use warp_controller::session::{MovieImage, Session};

use crate::preprocess::{MovieRecord, NamedRecord, read_items, write_json_atomic};

/// The thresholds saved with a session, in its output directory.
pub const SELECTION_FILE: &str = "selection.json";
/// The table of the movies that pass, in the output directory.
pub const SELECTED_STAR: &str = "micrographs_ctf_selected.star";

/// The figures of a record that the thresholds judge.
pub fn figures(r: &MovieRecord) -> MovieFigures {
    MovieFigures {
        defocus_u_um: r.ctf.defocus.defocus_u_um,
        defocus_v_um: r.ctf.defocus.defocus_v_um,
        fit_resolution_a: r.ctf.fit_resolution_a,
        motion_a: (!r.motion.shifts_a.is_empty()).then(|| total_motion(&r.motion.shifts_a)),
    }
}

/// The thresholds saved in `output` (none set when no selection was made yet).
pub fn saved_thresholds(output: &Path) -> Result<Option<SelectionThresholds>, String> {
    let path = output.join(SELECTION_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
            format!(
                "{} is damaged ({e}); remove it or make a new selection",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Judges every processed movie of `output` by `t`, writes [`SELECTED_STAR`] with those that
/// pass and saves `t` in [`SELECTION_FILE`].
pub fn select(output: &Path, t: &SelectionThresholds) -> Result<SelectionSummary, String> {
    let records = processed_records(output)?;
    let summary = write_selected(output, &records, t)?;
    write_json_atomic(&output.join(SELECTION_FILE), t)?;
    Ok(summary)
}

/// What [`select`] would do, writing nothing.
pub fn judge(output: &Path, t: &SelectionThresholds) -> Result<SelectionSummary, String> {
    let records = processed_records(output)?;
    let (mut summary, passing) = judged(output, &records, t)?;
    summary.selected = passing.len();
    Ok(summary)
}

/// Writes [`SELECTED_STAR`] with the `records` that pass `t` (the thresholds are not saved:
/// [`select`] does that; the job calls this with the saved ones as movies arrive).
pub(crate) fn write_selected(
    output: &Path,
    records: &[NamedRecord],
    t: &SelectionThresholds,
) -> Result<SelectionSummary, String> {
    let (mut summary, passing) = judged(output, records, t)?;
    summary.selected =
        crate::preprocess::write_micrographs_table(output, passing.into_iter(), SELECTED_STAR)?;
    Ok(summary)
}

/// The records of every processed movie of `output` (`processed_items.json`).
fn processed_records(output: &Path) -> Result<Vec<NamedRecord>, String> {
    let items = read_items(&output.join("processed_items.json"))?;
    let names: Vec<String> = items.into_iter().map(|i| i.name).collect();
    crate::preprocess::read_records(output, &names)
}

/// The summary (without `selected`) and the records that pass.
fn judged<'a>(
    output: &Path,
    records: &'a [NamedRecord],
    t: &SelectionThresholds,
) -> Result<(SelectionSummary, Vec<&'a NamedRecord>), String> {
    t.validate()?;
    let mut summary = SelectionSummary {
        thresholds: *t,
        total: records.len(),
        star: output.join(SELECTED_STAR).display().to_string(),
        ..SelectionSummary::default()
    };
    let mut passing = Vec::new();
    for entry in records {
        let failed = t.failures(&figures(&entry.1));
        for c in &failed {
            *summary.rejected.entry(*c).or_insert(0) += 1;
        }
        if failed.is_empty() {
            passing.push(entry);
        }
    }
    Ok((summary, passing))
}

/// One line for people: "12 of 40 movie(s) selected (3 over the fit resolution threshold)".
pub fn describe(s: &SelectionSummary) -> String {
    let why: Vec<String> = s
        .rejected
        .iter()
        .map(|(c, n)| {
            let what = match c {
                warp_common::preprocessing::SelectionCriterion::Resolution => "fit resolution",
                warp_common::preprocessing::SelectionCriterion::Defocus => "defocus",
                warp_common::preprocessing::SelectionCriterion::Astigmatism => "astigmatism",
                warp_common::preprocessing::SelectionCriterion::Motion => "motion",
            };
            format!("{n} over the {what} threshold")
        })
        .collect();
    let why = if why.is_empty() {
        String::new()
    } else {
        format!(" ({})", why.join(", "))
    };
    format!("{} of {} movie(s) selected{why}", s.selected, s.total)
}

/// The `preprocess` job's session, served to the status page.
pub struct PreprocessSession {
    output: PathBuf,
    watching: bool,
    /// One selection at a time (the job's own rewrite of the selected table included).
    writing: Arc<Mutex<()>>,
}

impl PreprocessSession {
    /// The session of a job writing to `output`.
    pub fn new(output: PathBuf, watching: bool) -> PreprocessSession {
        PreprocessSession {
            output,
            watching,
            writing: Arc::new(Mutex::new(())),
        }
    }

    /// The lock every writer of the selection takes.
    pub fn writing(&self) -> Arc<Mutex<()>> {
        self.writing.clone()
    }
}

/// Whether `name` can only be a file name in one directory (no separator, not `.`/`..`).
fn plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

impl Session for PreprocessSession {
    fn info(&self) -> SessionInfo {
        SessionInfo {
            output: self.output.display().to_string(),
            thresholds: saved_thresholds(&self.output)
                .unwrap_or_else(|e| {
                    log::warn!("{e}");
                    None
                })
                .unwrap_or_default(),
            watching: self.watching,
        }
    }

    fn image(&self, movie: &str, image: MovieImage) -> Result<Vec<u8>, ApiError> {
        if !plain_name(movie) {
            return Err(ApiError::new(
                404,
                "unknown_movie",
                format!(
                    "no movie {}: a movie's name is a file name",
                    warp_common::for_log(movie, 80)
                ),
            ));
        }
        let (dir, what) = match image {
            MovieImage::Thumbnail => ("thumbnails", "thumbnail"),
            MovieImage::Spectrum => ("powerspectrum", "power spectrum"),
        };
        let path = self.output.join(dir).join(format!("{movie}.png"));
        std::fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ApiError::new(
                    404,
                    "unknown_movie",
                    format!(
                        "movie {} has no {what} (not processed yet, or failed)",
                        warp_common::for_log(movie, 80)
                    ),
                )
            } else {
                ApiError::new(
                    500,
                    "internal",
                    format!("cannot read {}: {e}", path.display()),
                )
            }
        })
    }

    fn select(&self, t: &SelectionThresholds) -> Result<SelectionSummary, ApiError> {
        let _one = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let s = select(&self.output, t)
            .map_err(|e| ApiError::new(500, "internal", format!("selection failed: {e}")))?;
        log::info!(
            "selection from the status page: {}; wrote {}",
            describe(&s),
            s.star
        );
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::{CtfRecord, Item, MotionRecord};
    use crate::test_util::TempDir;
    use warp_common::preprocessing::{Defocus, SelectionCriterion};

    fn record(defocus: f64, res: f64, step_a: f32) -> MovieRecord {
        MovieRecord {
            movie: "m.mrc".into(),
            frames: 3,
            width: 64,
            height: 64,
            angpix: 1.0,
            motion: MotionRecord {
                shifts_px: vec![[0.0, 0.0]; 3],
                shifts_a: vec![[0.0, 0.0], [step_a, 0.0], [2.0 * step_a, 0.0]],
                local: None,
            },
            ctf: CtfRecord {
                defocus: Defocus {
                    defocus_u_um: defocus + 0.02,
                    defocus_v_um: defocus - 0.02,
                    astig_angle_deg: 10.0,
                    phase_shift_pi: 0.0,
                },
                fit_resolution_a: res,
                score: 0.5,
                voltage_kv: 300.0,
                cs_mm: 2.7,
                amplitude_contrast: 0.07,
            },
            outputs: Default::default(),
            timings_ms: Default::default(),
            backend: "cpu".into(),
            worker: "test".into(),
            read_ahead: None,
        }
    }

    /// A session of four processed movies: good, blurry, far from focus, drifting.
    fn session(dir: &TempDir) -> PathBuf {
        let out = dir.join("out");
        std::fs::create_dir_all(&out).unwrap();
        let movies = [
            ("good", record(1.5, 4.0, 2.0)),
            ("blurry", record(1.5, 7.5, 2.0)),
            ("far", record(3.5, 4.0, 2.0)),
            ("drift", record(1.5, 4.0, 30.0)),
        ];
        let mut items = Vec::new();
        for (name, r) in &movies {
            write_json_atomic(&out.join(format!("{name}.json")), r).unwrap();
            items.push(Item {
                name: name.to_string(),
                movie: format!("{name}.mrc"),
                error: None,
            });
        }
        write_json_atomic(
            &out.join("processed_items.json"),
            &serde_json::json!({ "items": items }),
        )
        .unwrap();
        out
    }

    #[test]
    fn the_selected_table_holds_the_movies_that_pass_and_the_thresholds_are_saved() {
        let dir = TempDir::new("select");
        let out = session(&dir);
        assert_eq!(saved_thresholds(&out).unwrap(), None);
        let t = SelectionThresholds {
            max_resolution_a: Some(5.0),
            max_defocus_um: Some(3.0),
            max_motion_a: Some(20.0),
            ..Default::default()
        };
        assert_eq!(judge(&out, &t).unwrap().selected, 1);
        assert!(!out.join(SELECTED_STAR).exists(), "judge writes nothing");
        let s = select(&out, &t).unwrap();
        assert_eq!((s.total, s.selected), (4, 1));
        for c in [
            SelectionCriterion::Resolution,
            SelectionCriterion::Defocus,
            SelectionCriterion::Motion,
        ] {
            assert_eq!(s.rejected[&c], 1, "{c:?}");
        }
        let star = std::fs::read_to_string(out.join(SELECTED_STAR)).unwrap();
        assert!(star.contains("average/good.mrc"), "{star}");
        for other in ["blurry", "far", "drift"] {
            assert!(!star.contains(other), "{other} in {star}");
        }
        assert_eq!(saved_thresholds(&out).unwrap(), Some(t));
        // The saved thresholds apply again as movies arrive.
        let loose = SelectionThresholds {
            max_resolution_a: Some(8.0),
            ..Default::default()
        };
        let records = processed_records(&out).unwrap();
        assert_eq!(write_selected(&out, &records, &loose).unwrap().selected, 4);
        let star = std::fs::read_to_string(out.join(SELECTED_STAR)).unwrap();
        assert!(star.contains("average/drift.mrc"), "{star}");
        assert_eq!(
            saved_thresholds(&out).unwrap(),
            Some(t),
            "write_selected saves nothing"
        );
    }

    #[test]
    fn the_session_serves_pictures_by_plain_name_only() {
        let dir = TempDir::new("select-images");
        let out = session(&dir);
        std::fs::create_dir_all(out.join("thumbnails")).unwrap();
        std::fs::write(out.join("thumbnails/good.png"), b"png").unwrap();
        std::fs::write(out.join("secret.png"), b"no").unwrap();
        let s = PreprocessSession::new(out.clone(), false);
        assert_eq!(s.image("good", MovieImage::Thumbnail).unwrap(), b"png");
        let e = s.image("good", MovieImage::Spectrum).unwrap_err();
        assert_eq!((e.status, e.code), (404, "unknown_movie"));
        assert!(e.message.contains("no power spectrum"), "{}", e.message);
        for bad in ["../secret", "..", "", "a/b", "a\\b"] {
            let e = s.image(bad, MovieImage::Thumbnail).unwrap_err();
            assert_eq!(e.status, 404, "{bad}");
        }
        std::fs::write(out.join(SELECTION_FILE), b"{damaged").unwrap();
        assert_eq!(s.info().thresholds, SelectionThresholds::default());
        assert!(saved_thresholds(&out).unwrap_err().contains("damaged"));
    }
}

//! Parameters and results of the preprocessing commands (Warp's `LoadGainRef`, `LoadStack`,
//! `MovieProcessMovement`, `MovieProcessCTF`, `MovieExportMovie`, `MovieCreateThumbnail`).
//!
//! The worker holds state between these commands, as Warp's workers do: a gain reference
//! (from `LoadGainRef`, usually a work package's init part), the loaded movie (`LoadStack`),
//! its motion, and its aligned averages. A command that needs state that is not there fails
//! with a message saying which command to run first.
//!
//! Units follow DESIGN.md §6: Å, µm of defocus (positive underfocus), degrees, kV, mm, e⁻/Å².
//! Every parameter but the paths has Warp's default.

use serde::{Deserialize, Serialize};

fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}
fn one_u32() -> u32 {
    1
}
fn range_min_motion() -> f64 {
    500.0
}
fn range_max_motion() -> f64 {
    10.0
}
fn bfactor_motion() -> f64 {
    -500.0
}
fn voltage() -> f64 {
    300.0
}
fn cs() -> f64 {
    2.7
}
fn amp() -> f64 {
    0.07
}
fn window() -> usize {
    512
}
fn range_min_ctf() -> f64 {
    30.0
}
fn range_max_ctf() -> f64 {
    4.0
}
fn defocus_min() -> f64 {
    0.5
}
fn defocus_max() -> f64 {
    5.0
}
fn thumb_size() -> usize {
    512
}
fn thumb_range() -> f32 {
    2.5
}

/// `LoadGainRef`: loads a gain reference (MRC or TIFF), oriented as Warp does (flip x, then
/// flip y, then transpose), normalised by its mean (zeros become 1), with an optional defect
/// map (non-zero pixels are defects, replaced from good neighbours).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadGainRefParams {
    /// Gain reference file.
    pub path: String,
    /// Mirror along x.
    #[serde(default)]
    pub flip_x: bool,
    /// Mirror along y.
    #[serde(default)]
    pub flip_y: bool,
    /// Swap x and y (after the flips).
    #[serde(default)]
    pub transpose: bool,
    /// Defect map, same size as the gain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defects_path: Option<String>,
}

/// Result of `LoadGainRef`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GainRefLoaded {
    /// The gain file.
    pub path: String,
    /// Width after orientation.
    pub width: usize,
    /// Height after orientation.
    pub height: usize,
    /// Defect pixels.
    pub defects: usize,
}

/// `LoadStack`: reads a movie (MRC, TIFF or EER), applies the loaded gain reference
/// and optionally Fourier-crops it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadStackParams {
    /// The movie.
    pub path: String,
    /// Fourier-crop factor in `(0, 1]` (1: none); the result has even sizes.
    #[serde(default = "one")]
    pub scale_factor: f64,
    /// EER: raw frames summed into one fraction (Warp's parameter; 0 means 1).
    #[serde(default)]
    pub eer_group_frames: u32,
    /// EER: rendering 1 (physical pixels), 2 or 4 (from the electrons' sub-pixel positions).
    #[serde(default = "one_u32")]
    pub eer_upsample: u32,
    /// Apply the loaded gain reference, if one is loaded (the result's `gain_corrected` says
    /// whether it was).
    #[serde(default = "yes")]
    pub correct_gain: bool,
    /// Pixel size of the file in Å; overrides the MRC header (needed for TIFF).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub angpix: Option<f64>,
}

/// Result of `LoadStack`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StackLoaded {
    /// The movie.
    pub path: String,
    /// Frames.
    pub frames: usize,
    /// Width after any crop.
    pub width: usize,
    /// Height after any crop.
    pub height: usize,
    /// Width in the file.
    pub file_width: usize,
    /// Height in the file.
    pub file_height: usize,
    /// Pixel size after any crop, Å.
    pub angpix: f64,
    /// Whether the gain reference was applied.
    pub gain_corrected: bool,
    /// The worker's compute backend (`"cpu"` or `"cuda"`).
    pub backend: String,
    /// Wall time, ms.
    pub ms: f64,
    /// What the worker's read-ahead had done for this file when the load began (absent when
    /// the file was not read ahead: the first movie, or read-ahead disabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_ahead: Option<ReadAheadReport>,
}

/// A file the worker read into the page cache while its previous task computed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadAheadReport {
    /// The whole file had been read before the load began.
    pub complete: bool,
    /// Bytes read ahead.
    pub bytes: u64,
    /// Time spent reading, ms (so far, when not complete).
    pub ms: f64,
    /// Why the read-ahead stopped short, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `MovieProcessMovement`: global trajectory, then local motion on an automatic patch grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MovementParams {
    /// Low-resolution limit, Å.
    #[serde(default = "range_min_motion")]
    pub range_min_a: f64,
    /// High-resolution limit, Å.
    #[serde(default = "range_max_motion")]
    pub range_max_a: f64,
    /// B-factor of the correlation weighting, Å².
    #[serde(default = "bfactor_motion")]
    pub bfactor_a2: f64,
    /// Also estimate local (patch) motion.
    #[serde(default = "yes")]
    pub local: bool,
    /// Patch side in Å for local motion (the grid follows from it); default 1000 Å, at least
    /// 128 px.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_a: Option<f64>,
}

impl Default for MovementParams {
    fn default() -> Self {
        MovementParams {
            range_min_a: range_min_motion(),
            range_max_a: range_max_motion(),
            bfactor_a2: bfactor_motion(),
            local: true,
            patch_a: None,
        }
    }
}

/// Local motion in a `MovieProcessMovement` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalMotionResult {
    /// Patches along x and y.
    pub grid: [usize; 2],
    /// Patch side, px of the loaded movie.
    pub patch_px: usize,
    /// Patch centres `[x, y]`, px, x fastest.
    pub centres_px: Vec<[f32; 2]>,
    /// Per patch, per frame shifts `[x, y]`, px (global plus residual).
    pub shifts_px: Vec<Vec<[f32; 2]>>,
}

/// Result of `MovieProcessMovement`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MovementResult {
    /// Per-frame shifts `[x, y]` in px of the loaded movie (DESIGN.md §6), mean zero.
    pub shifts_px: Vec<[f32; 2]>,
    /// The same in Å.
    #[serde(rename = "shifts_A")]
    pub shifts_a: Vec<[f32; 2]>,
    /// Alignment rounds of the global estimate.
    pub iterations: usize,
    /// Local motion, when requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalMotionResult>,
    /// Wall time, ms.
    pub ms: f64,
}

/// `MovieProcessCTF`: CTF of the loaded movie's aligned average (plain average of the frames
/// shifted by the motion, or unshifted when no motion was estimated).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CtfParams {
    /// Acceleration voltage, kV.
    #[serde(default = "voltage")]
    pub voltage_kv: f64,
    /// Spherical aberration, mm.
    #[serde(default = "cs")]
    pub cs_mm: f64,
    /// Amplitude contrast, fraction.
    #[serde(default = "amp")]
    pub amplitude_contrast: f64,
    /// Tile size of the averaged power spectrum, px.
    #[serde(default = "window")]
    pub window: usize,
    /// Low-resolution end of the fit, Å.
    #[serde(default = "range_min_ctf")]
    pub range_min_a: f64,
    /// High-resolution end of the fit, Å (clamped to Nyquist).
    #[serde(default = "range_max_ctf")]
    pub range_max_a: f64,
    /// Smallest defocus searched, µm.
    #[serde(default = "defocus_min")]
    pub defocus_min_um: f64,
    /// Largest defocus searched, µm.
    #[serde(default = "defocus_max")]
    pub defocus_max_um: f64,
    /// Fit a phase shift (phase plate).
    #[serde(default)]
    pub fit_phase: bool,
    /// Where to write the power spectrum (MRC, centred `window × window`, float32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spectrum_path: Option<String>,
    /// Where to write the spectrum as an 8-bit PNG for people: the rings flattened, the
    /// fitted CTF's zeros drawn on its right half up to the fit resolution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spectrum_png_path: Option<String>,
}

impl Default for CtfParams {
    fn default() -> Self {
        CtfParams {
            voltage_kv: voltage(),
            cs_mm: cs(),
            amplitude_contrast: amp(),
            window: window(),
            range_min_a: range_min_ctf(),
            range_max_a: range_max_ctf(),
            defocus_min_um: defocus_min(),
            defocus_max_um: defocus_max(),
            fit_phase: false,
            spectrum_path: None,
            spectrum_png_path: None,
        }
    }
}

/// The astigmatic defocus and phase shift of a CTF (DESIGN.md §6): what a CTF fit estimates
/// ([`CtfResult`]) and what a simulated movie's truth records. One shape for both, so results
/// and truth compare field by field; on the wire its fields sit in the enclosing object.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Defocus {
    /// Defocus along U (major axis), µm, underfocus positive; `≥ defocus_v_um`.
    pub defocus_u_um: f64,
    /// Defocus along V (minor axis), µm.
    pub defocus_v_um: f64,
    /// Angle of U from +x, degrees, `[0, 180)`.
    pub astig_angle_deg: f64,
    /// Phase shift, units of π.
    pub phase_shift_pi: f64,
}

impl Defocus {
    /// Mean defocus `(U + V)/2`, µm.
    pub fn mean_um(&self) -> f64 {
        0.5 * (self.defocus_u_um + self.defocus_v_um)
    }
}

/// Result of `MovieProcessCTF`: the wire form of the kernels' `CtfFit` (the kernels know no
/// wire types) plus what the worker knows of the spectrum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CtfResult {
    /// The fitted defocus (its fields at the top level of the JSON object).
    #[serde(flatten)]
    pub defocus: Defocus,
    /// Resolution to which the fit agrees with the spectrum, Å.
    #[serde(rename = "fit_resolution_A")]
    pub fit_resolution_a: f64,
    /// Correlation of the fitted model with the spectrum.
    pub score: f64,
    /// Pixel size the fit used, Å.
    pub angpix: f64,
    /// Tiles averaged into the spectrum.
    pub tiles: usize,
    /// Whether the average was aligned with estimated motion.
    pub aligned: bool,
    /// Wall time, ms.
    pub ms: f64,
}

/// `MovieExportMovie`: writes the aligned average, dose-weighted when `dose_per_frame > 0`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    /// Output MRC path of the average.
    pub output_path: String,
    /// Exposure per frame, e⁻/Å²; 0 disables dose weighting.
    #[serde(default)]
    pub dose_per_frame: f64,
    /// Acceleration voltage, kV (dose weighting).
    #[serde(default = "voltage")]
    pub voltage_kv: f64,
    /// Write float16 (mode 12) instead of float32.
    #[serde(default)]
    pub float16: bool,
    /// Also write odd/even half averages beside the average (`<name>_odd.mrc`,
    /// `<name>_even.mrc`).
    #[serde(default)]
    pub odd_even: bool,
}

/// Result of `MovieExportMovie`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportResult {
    /// Paths written: the average first, then odd and even when requested.
    pub written: Vec<String>,
    /// Whether the average is dose-weighted.
    pub dose_weighted: bool,
    /// Wall time, ms.
    pub ms: f64,
}

/// `MovieCreateThumbnail`: an 8-bit PNG of the average (the exported one when there is one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThumbnailParams {
    /// Output PNG path.
    pub output_path: String,
    /// Longer side, px (never upscaled).
    #[serde(default = "thumb_size")]
    pub size: usize,
    /// Contrast range: mean ± `range` standard deviations map to black and white.
    #[serde(default = "thumb_range")]
    pub range: f32,
}

impl Default for ThumbnailParams {
    /// Warp's size and range; no output path.
    fn default() -> Self {
        ThumbnailParams {
            output_path: String::new(),
            size: thumb_size(),
            range: thumb_range(),
        }
    }
}

/// Result of `MovieCreateThumbnail`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThumbnailResult {
    /// The PNG.
    pub path: String,
    /// Width, px.
    pub width: usize,
    /// Height, px.
    pub height: usize,
    /// Wall time, ms.
    pub ms: f64,
}

/// Which movies of a session pass, like Warp's filters: every threshold that is set must hold
/// (`None`: not filtered on). Saved with the session (`selection.json` in its output
/// directory); the body of `POST /api/session/selection`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionThresholds {
    /// Largest CTF fit resolution, Å (a movie whose Thon rings fade at 6 Å fails 5).
    #[serde(
        default,
        rename = "max_resolution_A",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_resolution_a: Option<f64>,
    /// Smallest mean defocus `(U + V)/2`, µm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_defocus_um: Option<f64>,
    /// Largest mean defocus, µm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_defocus_um: Option<f64>,
    /// Largest astigmatism `|U − V|`, µm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_astigmatism_um: Option<f64>,
    /// Largest total motion (the trajectory's length, frame to frame), Å.
    #[serde(
        default,
        rename = "max_motion_A",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_motion_a: Option<f64>,
}

impl SelectionThresholds {
    /// Why the thresholds themselves are unusable (not finite, negative, or a minimum above
    /// its maximum), naming the field.
    pub fn validate(&self) -> Result<(), String> {
        let fields = [
            ("max_resolution_A", self.max_resolution_a),
            ("min_defocus_um", self.min_defocus_um),
            ("max_defocus_um", self.max_defocus_um),
            ("max_astigmatism_um", self.max_astigmatism_um),
            ("max_motion_A", self.max_motion_a),
        ];
        for (name, v) in fields {
            if let Some(v) = v
                && (!v.is_finite() || v < 0.0)
            {
                return Err(format!("{name} must be a finite number ≥ 0, got {v}"));
            }
        }
        if let (Some(lo), Some(hi)) = (self.min_defocus_um, self.max_defocus_um)
            && lo > hi
        {
            return Err(format!(
                "min_defocus_um ({lo}) is larger than max_defocus_um ({hi}): no movie could pass"
            ));
        }
        Ok(())
    }

    /// Which thresholds a movie with these figures fails (empty: it passes). `motion_a` is
    /// `None` when the movie has no trajectory (it then passes the motion threshold).
    pub fn failures(&self, fit: &MovieFigures) -> Vec<SelectionCriterion> {
        let mut out = Vec::new();
        let mean = 0.5 * (fit.defocus_u_um + fit.defocus_v_um);
        if self
            .max_resolution_a
            .is_some_and(|t| fit.fit_resolution_a > t)
        {
            out.push(SelectionCriterion::Resolution);
        }
        if self.min_defocus_um.is_some_and(|t| mean < t)
            || self.max_defocus_um.is_some_and(|t| mean > t)
        {
            out.push(SelectionCriterion::Defocus);
        }
        let astig = (fit.defocus_u_um - fit.defocus_v_um).abs();
        if self.max_astigmatism_um.is_some_and(|t| astig > t) {
            out.push(SelectionCriterion::Astigmatism);
        }
        if let (Some(t), Some(m)) = (self.max_motion_a, fit.motion_a)
            && m > t
        {
            out.push(SelectionCriterion::Motion);
        }
        out
    }
}

/// The figures of one movie that [`SelectionThresholds`] judge.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MovieFigures {
    /// Defocus U, µm.
    pub defocus_u_um: f64,
    /// Defocus V, µm.
    pub defocus_v_um: f64,
    /// CTF fit resolution, Å.
    pub fit_resolution_a: f64,
    /// Total motion, Å ([`total_motion`]).
    pub motion_a: Option<f64>,
}

/// The length of a trajectory: the sum of its frame-to-frame steps (in the unit of `shifts`).
/// The status page computes the same figure.
pub fn total_motion(shifts: &[[f32; 2]]) -> f64 {
    shifts
        .windows(2)
        .map(|w| f64::from(w[1][0] - w[0][0]).hypot(f64::from(w[1][1] - w[0][1])))
        .sum()
}

/// One threshold of [`SelectionThresholds`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectionCriterion {
    /// `max_resolution_A`.
    Resolution,
    /// `min_defocus_um` / `max_defocus_um`.
    Defocus,
    /// `max_astigmatism_um`.
    Astigmatism,
    /// `max_motion_A`.
    Motion,
}

/// What applying a selection did: the answer of `POST /api/session/selection` and what
/// `warp-controller select` prints.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SelectionSummary {
    /// The thresholds applied (now saved with the session).
    pub thresholds: SelectionThresholds,
    /// Processed movies judged.
    pub total: usize,
    /// Movies that pass every threshold (the rows of the selected STAR file).
    pub selected: usize,
    /// Movies failing each threshold (a movie failing two counts in both).
    pub rejected: std::collections::BTreeMap<SelectionCriterion, usize>,
    /// The STAR file written, `micrographs_ctf_selected.star` in the output directory.
    pub star: String,
}

/// `GET /api/session`: the preprocessing session the controller serves, for the status page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The session's output directory.
    pub output: String,
    /// The thresholds saved with it (all `None` before a selection was made).
    pub thresholds: SelectionThresholds,
    /// Whether new movies are still being taken (`preprocess --watch`).
    pub watching: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn movie(u: f64, v: f64, res: f64, motion: Option<f64>) -> MovieFigures {
        MovieFigures {
            defocus_u_um: u,
            defocus_v_um: v,
            fit_resolution_a: res,
            motion_a: motion,
        }
    }

    #[test]
    fn a_movie_fails_exactly_the_thresholds_it_exceeds() {
        let t = SelectionThresholds {
            max_resolution_a: Some(5.0),
            min_defocus_um: Some(0.8),
            max_defocus_um: Some(2.5),
            max_astigmatism_um: Some(0.1),
            max_motion_a: Some(30.0),
        };
        assert!(t.failures(&movie(1.5, 1.45, 4.0, Some(12.0))).is_empty());
        // Exactly at a threshold passes.
        assert!(t.failures(&movie(2.5, 2.5, 5.0, Some(30.0))).is_empty());
        assert_eq!(
            t.failures(&movie(3.0, 2.5, 6.0, Some(31.0))),
            vec![
                SelectionCriterion::Resolution,
                SelectionCriterion::Defocus,
                SelectionCriterion::Astigmatism,
                SelectionCriterion::Motion
            ]
        );
        assert_eq!(
            t.failures(&movie(0.75, 0.7, 4.0, None)),
            vec![SelectionCriterion::Defocus]
        );
        // No thresholds: everything passes.
        assert!(
            SelectionThresholds::default()
                .failures(&movie(9.0, 1.0, 40.0, Some(1e6)))
                .is_empty()
        );
    }

    #[test]
    fn unusable_thresholds_are_refused_by_name() {
        let mut t = SelectionThresholds {
            min_defocus_um: Some(3.0),
            max_defocus_um: Some(2.0),
            ..Default::default()
        };
        assert!(t.validate().unwrap_err().starts_with("min_defocus_um (3)"));
        t.min_defocus_um = None;
        t.max_motion_a = Some(f64::NAN);
        assert!(t.validate().unwrap_err().starts_with("max_motion_A "));
        let e = serde_json::from_str::<SelectionThresholds>(r#"{"max_res": 5}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let t: SelectionThresholds = serde_json::from_str(r#"{"max_resolution_A": 5}"#).unwrap();
        assert_eq!(t.max_resolution_a, Some(5.0));
        assert!(t.validate().is_ok());
    }

    #[test]
    fn total_motion_is_the_trajectory_length() {
        assert_eq!(total_motion(&[]), 0.0);
        assert_eq!(total_motion(&[[1.0, 1.0]]), 0.0);
        let m = total_motion(&[[0.0, 0.0], [3.0, 4.0], [3.0, 0.0]]);
        assert!((m - 9.0).abs() < 1e-12, "{m}");
    }
}

//! The typed command set: what a worker can be asked to do.
//!
//! On the wire a command is `{"name": "<Name>", "params": {...}}`, the names following Warp's
//! `WorkerWrapper` where Warp has the operation. An unknown name or an unknown parameter is a
//! deserialisation error: the controller refuses such a submission with 400, and a worker that
//! receives one (a newer controller) fails the task naming the command. Nothing is silently
//! ignored.
//!
//! Each command's result is a JSON value; its shape is documented on the variant.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::preprocessing::{
    CtfParams, ExportParams, LoadGainRefParams, LoadStackParams, MovementParams, ThumbnailParams,
};

/// One command. See the module docs for the wire form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", content = "params", deny_unknown_fields)]
pub enum Command {
    /// Runs an external program. Result: [`ExecResult`]. A non-zero exit fails the command
    /// unless `allow_failure` is set; a timeout or a cancel kills the program's process group.
    Exec(ExecParams),
    /// Sleeps (cancellable). Result: `{"slept_ms": N}`. Used by tests and benchmarks.
    Sleep {
        /// Milliseconds to sleep.
        ms: u64,
    },
    /// Fails at once with `message`. Used by tests.
    Fail {
        /// The error the command reports.
        message: String,
    },
    /// Returns `value` unchanged: `{"value": ...}`. The no-op of benchmarks, and a way for tests
    /// to check that each result belongs to its task.
    Echo {
        /// Any JSON value.
        #[serde(default)]
        value: serde_json::Value,
    },
    /// Waits until the worker's background tasks (the read-ahead of the next movie) have
    /// finished, at most 30 s (Warp's `WaitAsyncTasks`); the result says `waited_ms` and
    /// `pending` (files not read yet when it gave up): `{"waited_ms": N, "pending": 0}`.
    WaitAsyncTasks {},
    /// Releases memory the worker holds for reuse (Warp's `GcCollect`): drops cached held state
    /// that is not needed by the current init fingerprint and returns freed heap pages to the
    /// operating system. Result: `{"released": true}`.
    GcCollect {},
    /// Loads the gain reference the next stacks are corrected with. Result:
    /// [`crate::preprocessing::GainRefLoaded`].
    LoadGainRef(LoadGainRefParams),
    /// Loads a movie. Result: [`crate::preprocessing::StackLoaded`].
    LoadStack(LoadStackParams),
    /// Estimates the loaded movie's motion. Result: [`crate::preprocessing::MovementResult`].
    MovieProcessMovement(MovementParams),
    /// Estimates the loaded movie's CTF. Result: [`crate::preprocessing::CtfResult`].
    #[serde(rename = "MovieProcessCTF")]
    MovieProcessCtf(CtfParams),
    /// Writes the aligned (dose-weighted) average. Result:
    /// [`crate::preprocessing::ExportResult`].
    MovieExportMovie(ExportParams),
    /// Writes a PNG thumbnail of the average. Result:
    /// [`crate::preprocessing::ThumbnailResult`].
    MovieCreateThumbnail(ThumbnailParams),
}

impl Command {
    /// The command's wire name, as used in errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Exec(_) => "Exec",
            Command::Sleep { .. } => "Sleep",
            Command::Fail { .. } => "Fail",
            Command::Echo { .. } => "Echo",
            Command::WaitAsyncTasks {} => "WaitAsyncTasks",
            Command::GcCollect {} => "GcCollect",
            Command::LoadGainRef(_) => "LoadGainRef",
            Command::LoadStack(_) => "LoadStack",
            Command::MovieProcessMovement(_) => "MovieProcessMovement",
            Command::MovieProcessCtf(_) => "MovieProcessCTF",
            Command::MovieExportMovie(_) => "MovieExportMovie",
            Command::MovieCreateThumbnail(_) => "MovieCreateThumbnail",
        }
    }

    /// The files the command reads: the movie of `LoadStack`, the gain reference and defect
    /// map of `LoadGainRef`.
    pub fn input_files(&self) -> Vec<&str> {
        match self {
            Command::LoadStack(p) => vec![p.path.as_str()],
            Command::LoadGainRef(p) => std::iter::once(p.path.as_str())
                .chain(p.defects_path.as_deref())
                .collect(),
            _ => Vec::new(),
        }
    }

    /// All command names this build knows, for registration capabilities and error messages.
    pub const NAMES: &'static [&'static str] = &[
        "Exec",
        "Sleep",
        "Fail",
        "Echo",
        "WaitAsyncTasks",
        "GcCollect",
        "LoadGainRef",
        "LoadStack",
        "MovieProcessMovement",
        "MovieProcessCTF",
        "MovieExportMovie",
        "MovieCreateThumbnail",
    ];

    /// Shorthand for an [`Command::Exec`] of `argv` with default options.
    pub fn exec<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Command {
        Command::Exec(ExecParams {
            argv: argv.into_iter().map(Into::into).collect(),
            ..ExecParams::default()
        })
    }

    /// Checks what serde cannot: non-empty argv, sane timeouts. Called by the controller at
    /// submission and by the worker before running.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Command::Exec(p) => {
                if p.argv.is_empty() || p.argv[0].is_empty() {
                    return Err("Exec needs a non-empty argv (the program to run)".into());
                }
                // One rule the API document can state: no argument is empty.
                if let Some(i) = p.argv.iter().position(String::is_empty) {
                    return Err(format!("Exec argv[{i}] is empty (no argument may be)"));
                }
                for (what, path) in [
                    ("stdout_path", &p.stdout_path),
                    ("stderr_path", &p.stderr_path),
                ] {
                    if path.as_ref().is_some_and(|f| f.is_empty()) {
                        return Err(format!("Exec {what} must not be empty"));
                    }
                }
                if let Some(t) = p.timeout_s
                    && (!t.is_finite() || t <= 0.0 || t > MAX_TIMEOUT_S)
                {
                    return Err(format!(
                        "Exec timeout_s must be > 0 and at most {MAX_TIMEOUT_S}, got {t}"
                    ));
                }
                Ok(())
            }
            Command::LoadGainRef(p) => non_empty("LoadGainRef path", &p.path),
            Command::LoadStack(p) => {
                non_empty("LoadStack path", &p.path)?;
                if !(p.scale_factor > 0.0 && p.scale_factor <= 1.0) {
                    return Err(format!(
                        "LoadStack scale_factor must be in (0, 1], got {}",
                        p.scale_factor
                    ));
                }
                if ![1, 2, 4].contains(&p.eer_upsample) {
                    return Err(format!(
                        "LoadStack eer_upsample must be 1, 2 or 4, got {}",
                        p.eer_upsample
                    ));
                }
                if let Some(a) = p.angpix {
                    positive("LoadStack angpix", a)?;
                }
                Ok(())
            }
            Command::MovieProcessMovement(p) => {
                positive("MovieProcessMovement range_max_a", p.range_max_a)?;
                if p.range_min_a.is_nan() || p.range_min_a <= p.range_max_a {
                    return Err(format!(
                        "MovieProcessMovement range_min_a ({}) must be larger than range_max_a ({})",
                        p.range_min_a, p.range_max_a
                    ));
                }
                if !p.bfactor_a2.is_finite() {
                    return Err("MovieProcessMovement bfactor_a2 must be finite".into());
                }
                if let Some(a) = p.patch_a {
                    positive("MovieProcessMovement patch_a", a)?;
                }
                Ok(())
            }
            Command::MovieProcessCtf(p) => {
                positive("MovieProcessCTF voltage_kv", p.voltage_kv)?;
                if !(p.cs_mm.is_finite() && p.cs_mm >= 0.0) {
                    return Err(format!(
                        "MovieProcessCTF cs_mm must be ≥ 0, got {}",
                        p.cs_mm
                    ));
                }
                if !(0.0..1.0).contains(&p.amplitude_contrast) {
                    return Err(format!(
                        "MovieProcessCTF amplitude_contrast must be in [0, 1), got {}",
                        p.amplitude_contrast
                    ));
                }
                if !(64..=8192).contains(&p.window) {
                    return Err(format!(
                        "MovieProcessCTF window must be 64 to 8192 px, got {}",
                        p.window
                    ));
                }
                positive("MovieProcessCTF range_max_a", p.range_max_a)?;
                if p.range_min_a.is_nan() || p.range_min_a <= p.range_max_a {
                    return Err(format!(
                        "MovieProcessCTF range_min_a ({}) must be larger than range_max_a ({})",
                        p.range_min_a, p.range_max_a
                    ));
                }
                positive("MovieProcessCTF defocus_min_um", p.defocus_min_um)?;
                if !(p.defocus_max_um > p.defocus_min_um && p.defocus_max_um <= 100.0) {
                    return Err(format!(
                        "MovieProcessCTF defocus range {}–{} µm is empty or absurd",
                        p.defocus_min_um, p.defocus_max_um
                    ));
                }
                Ok(())
            }
            Command::MovieExportMovie(p) => {
                non_empty("MovieExportMovie output_path", &p.output_path)?;
                if !(p.dose_per_frame.is_finite() && p.dose_per_frame >= 0.0) {
                    return Err(format!(
                        "MovieExportMovie dose_per_frame must be ≥ 0, got {}",
                        p.dose_per_frame
                    ));
                }
                positive("MovieExportMovie voltage_kv", p.voltage_kv)
            }
            Command::MovieCreateThumbnail(p) => {
                non_empty("MovieCreateThumbnail output_path", &p.output_path)?;
                if p.size == 0 || p.size > 65_535 {
                    return Err(format!(
                        "MovieCreateThumbnail size must be 1 to 65535, got {}",
                        p.size
                    ));
                }
                positive("MovieCreateThumbnail range", p.range as f64)
            }
            Command::Sleep { .. }
            | Command::Fail { .. }
            | Command::Echo { .. }
            | Command::WaitAsyncTasks {}
            | Command::GcCollect {} => Ok(()),
        }
    }
}

fn non_empty(what: &str, v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    Ok(())
}

fn positive(what: &str, v: f64) -> Result<(), String> {
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("{what} must be a positive number, got {v}"));
    }
    Ok(())
}

/// Parameters of [`Command::Exec`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecParams {
    /// Program and arguments; `argv[0]` is looked up in `PATH` when it has no slash.
    pub argv: Vec<String>,
    /// Extra environment variables (added to the worker's environment).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory; the worker's own when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Seconds after which the program is killed and the command fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<f64>,
    /// When true, a non-zero exit is a result, not a failure.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_failure: bool,
    /// Also write the whole standard output to this file on the worker (created or
    /// truncated; relative to `cwd`); the result keeps its tail as always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_path: Option<String>,
    /// The same for standard error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_path: Option<String>,
}

/// Result of [`Command::Exec`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecResult {
    /// Exit status, or `None` when the program was ended by a signal.
    pub exit_code: Option<i32>,
    /// The signal that ended it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The last bytes (at most [`EXEC_TAIL_BYTES`]) of standard output, lossily UTF-8.
    pub stdout_tail: String,
    /// The last bytes of standard error.
    pub stderr_tail: String,
    /// Wall time of the program.
    pub duration_ms: u64,
}

/// Largest timeout a command or task may ask for, in seconds (about 31 years).
pub const MAX_TIMEOUT_S: f64 = 1e9;

/// How many trailing bytes of each output stream an [`ExecResult`] keeps.
pub const EXEC_TAIL_BYTES: usize = 16 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wire_form_is_name_and_params() {
        let c = Command::Sleep { ms: 5 };
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            json!({"name": "Sleep", "params": {"ms": 5}})
        );
        let back: Command =
            serde_json::from_value(json!({"name": "Exec", "params": {"argv": ["true"]}})).unwrap();
        assert_eq!(back, Command::exec(["true"]));
        let unit: Command =
            serde_json::from_value(json!({"name": "GcCollect", "params": {}})).unwrap();
        assert_eq!(unit, Command::GcCollect {});
    }

    #[test]
    fn unknown_commands_and_fields_are_errors() {
        let err = serde_json::from_value::<Command>(json!({"name": "Frobnicate", "params": {}}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("Frobnicate"), "{err}");
        let err = serde_json::from_value::<Command>(
            json!({"name": "Exec", "params": {"argv": ["x"], "argz": 1}}),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("argz"), "{err}");
    }

    #[test]
    fn names_cover_every_variant() {
        for c in [
            Command::exec(["x"]),
            Command::Sleep { ms: 0 },
            Command::Fail {
                message: String::new(),
            },
            Command::Echo { value: json!(1) },
            Command::WaitAsyncTasks {},
            Command::GcCollect {},
            Command::LoadGainRef(LoadGainRefParams {
                path: "g.mrc".into(),
                flip_x: false,
                flip_y: true,
                transpose: false,
                defects_path: None,
            }),
            Command::MovieProcessMovement(MovementParams::default()),
            Command::MovieProcessCtf(CtfParams::default()),
        ] {
            assert!(Command::NAMES.contains(&c.name()));
            let v = serde_json::to_value(&c).unwrap();
            assert_eq!(v["name"], c.name());
        }
    }

    #[test]
    fn preprocessing_defaults_follow_warp_and_validation_names_the_parameter() {
        let c: Command =
            serde_json::from_value(json!({"name": "LoadStack", "params": {"path": "m.tif"}}))
                .unwrap();
        let Command::LoadStack(p) = &c else {
            panic!("{c:?}")
        };
        assert_eq!(
            (p.scale_factor, p.correct_gain, p.angpix),
            (1.0, true, None)
        );
        let c: Command =
            serde_json::from_value(json!({"name": "MovieProcessCTF", "params": {}})).unwrap();
        assert_eq!(c, Command::MovieProcessCtf(CtfParams::default()));
        assert_eq!(c.name(), "MovieProcessCTF");
        let bad: Command = serde_json::from_value(
            json!({"name": "MovieProcessCTF", "params": {"defocus_min_um": 3, "defocus_max_um": 1}}),
        )
        .unwrap();
        let err = bad.validate().unwrap_err();
        assert!(err.contains("defocus"), "{err}");
        let bad: Command = serde_json::from_value(
            json!({"name": "LoadStack", "params": {"path": "m.mrc", "scale_factor": 0}}),
        )
        .unwrap();
        assert!(bad.validate().unwrap_err().contains("scale_factor"));
        assert!(
            serde_json::from_value::<Command>(json!({"name": "MovieExportMovie", "params": {}}))
                .is_err(),
            "output_path is required"
        );
    }

    #[test]
    fn validate_refuses_empty_argv_and_bad_timeouts() {
        assert!(Command::exec(Vec::<String>::new()).validate().is_err());
        let mut p = ExecParams {
            argv: vec!["true".into()],
            ..Default::default()
        };
        p.timeout_s = Some(-1.0);
        assert!(Command::Exec(p.clone()).validate().is_err());
        p.timeout_s = Some(1e300);
        assert!(Command::Exec(p).validate().is_err());
        assert!(Command::exec(["true"]).validate().is_ok());
    }
}

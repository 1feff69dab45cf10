//! `warp-controller select --output DIR [thresholds]` ([`crate::select`]): the status page's
//! "export" from the command line, with no controller needed.

use std::path::PathBuf;

use getopts::{Matches, Options};
use warp_common::preprocessing::SelectionThresholds;

use crate::cli::{self, CliError, usage};

/// A checked `select` command line.
#[derive(Debug, Clone)]
pub struct SelectConfig {
    /// The session's output directory.
    pub output: PathBuf,
    /// Start from no thresholds instead of those saved with the session.
    pub clear: bool,
    /// The thresholds given on the command line (each replaces the saved one).
    pub given: SelectionThresholds,
    /// Print the thresholds in force and the counts, write nothing.
    pub dry_run: bool,
}

const FLAGS: [(&str, &str, &str); 5] = [
    ("max-resolution", "largest CTF fit resolution", "Å"),
    ("min-defocus", "smallest mean defocus (U+V)/2", "µm"),
    ("max-defocus", "largest mean defocus", "µm"),
    ("max-astigmatism", "largest astigmatism |U-V|", "µm"),
    (
        "max-motion",
        "largest total motion (trajectory length)",
        "Å",
    ),
];

fn threshold(m: &Matches, name: &str) -> Result<Option<f64>, CliError> {
    match m.opt_str(name) {
        None => Ok(None),
        Some(v) if v == "none" => Ok(Some(f64::NAN)),
        Some(v) => match v.parse::<f64>() {
            Ok(x) if x.is_finite() && x >= 0.0 => Ok(Some(x)),
            _ => usage(format!(
                "--{name}: '{v}' is not a number ≥ 0 (or 'none' to drop the threshold)"
            )),
        },
    }
}

impl SelectConfig {
    /// Parses and checks `args` (after `select`); `None` after `--help`.
    pub fn from_args(args: &[String]) -> Result<Option<SelectConfig>, CliError> {
        let mut o = Options::new();
        o.optflag("h", "help", "print this help");
        o.optopt("", "output", "the preprocess output directory", "DIR");
        for (name, what, unit) in FLAGS {
            o.optopt(
                "",
                name,
                &format!("{what}, {unit} ('none': no limit)"),
                unit,
            );
        }
        o.optflag(
            "",
            "clear",
            "start from no thresholds, not from those saved with the session",
        );
        o.optflag(
            "n",
            "dry-run",
            "print what would be selected; write nothing",
        );
        let brief = "Usage: warp-controller select --output DIR [--max-resolution A] [--min-defocus UM]\n\
            \x20      [--max-defocus UM] [--max-astigmatism UM] [--max-motion A] [--clear] [--dry-run]\n\n\
            Judges every processed movie of a preprocess session (OUTPUT/<name>.json) by the\n\
            thresholds, writes OUTPUT/micrographs_ctf_selected.star with the movies that pass and\n\
            saves the thresholds in OUTPUT/selection.json (the status page shows them; a running\n\
            preprocess keeps the selected table up to date). Thresholds not given keep their saved\n\
            value; a movie exactly at a threshold passes. Works while the session runs.";
        let Some(m) = cli::parse_options_only(&o, args, brief)? else {
            return Ok(None);
        };
        let Some(output) = m.opt_str("output") else {
            return usage(
                "select needs --output DIR (the preprocess output directory); see --help",
            );
        };
        let given = SelectionThresholds {
            max_resolution_a: threshold(&m, "max-resolution")?,
            min_defocus_um: threshold(&m, "min-defocus")?,
            max_defocus_um: threshold(&m, "max-defocus")?,
            max_astigmatism_um: threshold(&m, "max-astigmatism")?,
            max_motion_a: threshold(&m, "max-motion")?,
        };
        Ok(Some(SelectConfig {
            output: output.into(),
            clear: m.opt_present("clear"),
            given,
            dry_run: m.opt_present("dry-run"),
        }))
    }

    /// The thresholds in force: the saved ones (unless `--clear`) with the given ones over
    /// them (`none`, carried as NaN, drops one).
    pub fn thresholds(&self, saved: SelectionThresholds) -> SelectionThresholds {
        let base = if self.clear {
            SelectionThresholds::default()
        } else {
            saved
        };
        let pick = |given: Option<f64>, saved: Option<f64>| match given {
            Some(v) if v.is_nan() => None,
            Some(v) => Some(v),
            None => saved,
        };
        SelectionThresholds {
            max_resolution_a: pick(self.given.max_resolution_a, base.max_resolution_a),
            min_defocus_um: pick(self.given.min_defocus_um, base.min_defocus_um),
            max_defocus_um: pick(self.given.max_defocus_um, base.max_defocus_um),
            max_astigmatism_um: pick(self.given.max_astigmatism_um, base.max_astigmatism_um),
            max_motion_a: pick(self.given.max_motion_a, base.max_motion_a),
        }
    }
}

/// Applies the selection and prints what it did.
pub fn run(cfg: SelectConfig) -> Result<(), CliError> {
    if !cfg.output.join("processed_items.json").is_file() {
        return Err(CliError::Failed(format!(
            "{} holds no preprocess session (no processed_items.json); give the --output of a preprocess run",
            cfg.output.display()
        )));
    }
    let saved = crate::select::saved_thresholds(&cfg.output)
        .map_err(CliError::Failed)?
        .unwrap_or_default();
    let t = cfg.thresholds(saved);
    t.validate().map_err(CliError::Usage)?;
    println!(
        "thresholds: {}",
        serde_json::to_string(&t).expect("thresholds serialise")
    );
    if cfg.dry_run {
        let s = crate::select::judge(&cfg.output, &t).map_err(CliError::Failed)?;
        println!("{} (dry run: nothing written)", crate::select::describe(&s));
        return Ok(());
    }
    let s = crate::select::select(&cfg.output, &t).map_err(CliError::Failed)?;
    println!("{}; wrote {}", crate::select::describe(&s), s.star);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_util::args;

    #[test]
    fn given_thresholds_replace_saved_ones_and_none_drops_one() {
        let c = SelectConfig::from_args(&args(&[
            "--output",
            "d",
            "--max-resolution",
            "5",
            "--max-motion",
            "none",
        ]))
        .unwrap()
        .unwrap();
        let saved = SelectionThresholds {
            max_resolution_a: Some(8.0),
            max_motion_a: Some(20.0),
            max_astigmatism_um: Some(0.1),
            ..Default::default()
        };
        let t = c.thresholds(saved);
        assert_eq!(t.max_resolution_a, Some(5.0));
        assert_eq!(t.max_motion_a, None);
        assert_eq!(t.max_astigmatism_um, Some(0.1));
        let mut c = c;
        c.clear = true;
        assert_eq!(c.thresholds(saved).max_astigmatism_um, None);
    }

    #[test]
    fn bad_values_and_a_missing_output_are_usage_errors() {
        for a in [
            vec!["--max-resolution", "5"],
            vec!["--output", "d", "--max-defocus", "-1"],
            vec!["--output", "d", "--max-defocus", "x"],
        ] {
            assert!(matches!(
                SelectConfig::from_args(&args(&a)),
                Err(CliError::Usage(_))
            ));
        }
    }
}

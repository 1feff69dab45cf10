//! `warp-controller compare --truth DIR --output DIR` ([`crate::compare`]).

use std::path::PathBuf;

use getopts::Options;

use crate::cli::{self, CliError, usage};
use crate::compare::compare_with_truth;

/// A checked `compare` command line.
#[derive(Debug, Clone)]
pub struct CompareConfig {
    /// Directory of `*.truth.json`.
    pub truth: PathBuf,
    /// Directory of the results `<stem>.json`.
    pub output: PathBuf,
}

impl CompareConfig {
    /// Parses and checks `args` (after `compare`); `None` after `--help`.
    pub fn from_args(args: &[String]) -> Result<Option<CompareConfig>, CliError> {
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
        let Some(m) = cli::parse_options_only(&o, args, brief)? else {
            return Ok(None);
        };
        let (Some(truth), Some(output)) = (m.opt_str("truth"), m.opt_str("output")) else {
            return usage("compare needs --truth DIR and --output DIR; see --help");
        };
        Ok(Some(CompareConfig {
            truth: truth.into(),
            output: output.into(),
        }))
    }
}

/// Prints the table; a failure when a movie misses a target or has no result.
pub fn run(cfg: CompareConfig) -> Result<(), CliError> {
    let cmp = compare_with_truth(&cfg.truth, &cfg.output).map_err(CliError::Failed)?;
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
    Err(CliError::Failed(problems.join("; ")))
}

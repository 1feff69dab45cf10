//! What every `warp-controller` subcommand shares: the error type and its exit codes, option
//! parsing, numbers and durations, and the stop flag set by SIGINT/SIGTERM.
//!
//! Each subcommand (a module of [`crate::cmd`]) turns its arguments into a config with
//! `from_args` (every check happens there, before a port is bound or a worker spawned), then
//! calls `run(config)`. Both return [`CliError`]; `main` maps it to the exit code.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use getopts::{Matches, Options};

/// Why a subcommand did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliError {
    /// The command line is wrong: exit code 2. The message names the flag to fix.
    Usage(String),
    /// The work failed (a task failed, the controller is unreachable, a file cannot be
    /// written): exit code 1.
    Failed(String),
}

impl CliError {
    /// The documented exit code: 2 for a usage error, 1 for a failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Failed(_) => 1,
        }
    }

    /// The message without the kind.
    pub fn message(&self) -> &str {
        match self {
            CliError::Usage(m) | CliError::Failed(m) => m,
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Usage(m) => write!(f, "{m}"),
            CliError::Failed(m) => write!(f, "error: {m}"),
        }
    }
}

impl std::error::Error for CliError {}

impl From<warp_controller::auth::TokenError> for CliError {
    fn from(e: warp_controller::auth::TokenError) -> Self {
        if e.is_usage() {
            CliError::Usage(e.to_string())
        } else {
            CliError::Failed(e.to_string())
        }
    }
}

/// `Err(CliError::Usage(m))`.
pub fn usage<T>(m: impl Into<String>) -> Result<T, CliError> {
    Err(CliError::Usage(m.into()))
}

/// A function that makes a [`CliError::Failed`] from any displayable error, for `map_err`.
pub fn failed<E: std::fmt::Display>(e: E) -> CliError {
    CliError::Failed(e.to_string())
}

/// Parses `args` with `opts`; prints the help and returns `None` for `--help`.
pub fn parse(opts: &Options, args: &[String], brief: &str) -> Result<Option<Matches>, CliError> {
    let m = opts
        .parse(args)
        .map_err(|e| CliError::Usage(format!("{e}; see --help")))?;
    if m.opt_present("help") {
        println!("{}", opts.usage(brief));
        return Ok(None);
    }
    Ok(Some(m))
}

/// [`parse`], refusing arguments that are not options.
pub fn parse_options_only(
    opts: &Options,
    args: &[String],
    brief: &str,
) -> Result<Option<Matches>, CliError> {
    let m = parse(opts, args, brief)?;
    if let Some(extra) = m.as_ref().and_then(|m| m.free.first()) {
        return usage(format!("unexpected argument '{extra}'; see --help"));
    }
    Ok(m)
}

/// The value of `--name` parsed as a number, or `default` when absent.
pub fn number<T: std::str::FromStr>(m: &Matches, name: &str, default: T) -> Result<T, CliError> {
    match m.opt_str(name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| CliError::Usage(format!("--{name}: '{v}' is not a valid number"))),
    }
}

/// The value of `--name` in seconds (fractions allowed), or `default` when absent.
pub fn seconds(m: &Matches, name: &str, default: Duration) -> Result<Duration, CliError> {
    match m.opt_str(name) {
        None => Ok(default),
        Some(v) => {
            warp_common::parse_seconds(&v).map_err(|e| CliError::Usage(format!("--{name}: {e}")))
        }
    }
}

/// Set by SIGINT/SIGTERM once [`install_signal_handlers`] ran.
pub static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM set [`STOP`] instead of ending the process.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        let mut o = Options::new();
        o.optflag("h", "help", "help");
        o.optopt("", "count", "n", "N");
        o.optopt("", "wait", "s", "S");
        o
    }

    use crate::test_util::args;

    #[test]
    fn usage_errors_exit_2_and_failures_exit_1() {
        assert_eq!(CliError::Usage("x".into()).exit_code(), 2);
        assert_eq!(CliError::Failed("x".into()).exit_code(), 1);
        assert_eq!(CliError::Failed("x".into()).to_string(), "error: x");
    }

    #[test]
    fn bad_values_name_their_flag() {
        let m = parse(&opts(), &args(&["--count", "x", "--wait", "-1"]), "")
            .unwrap()
            .unwrap();
        let e = number::<u32>(&m, "count", 1).unwrap_err();
        assert!(
            matches!(&e, CliError::Usage(m) if m.starts_with("--count")),
            "{e:?}"
        );
        let e = seconds(&m, "wait", Duration::ZERO).unwrap_err();
        assert!(
            matches!(&e, CliError::Usage(m) if m.starts_with("--wait")),
            "{e:?}"
        );
        let e = parse(&opts(), &args(&["--nope"]), "").unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = parse_options_only(&opts(), &args(&["stray"]), "").unwrap_err();
        assert!(e.message().contains("'stray'"), "{e:?}");
    }

    #[test]
    fn a_missing_token_is_a_usage_error_and_an_unreadable_file_a_failure() {
        use warp_controller::auth::TokenError;
        assert_eq!(
            CliError::from(TokenError::NotGiven {
                secret: warp_controller::auth::ENROLLMENT
            })
            .exit_code(),
            2
        );
        let io = TokenError::Io {
            path: "/x".into(),
            error: "denied".into(),
        };
        assert_eq!(CliError::from(io).exit_code(), 1);
    }
}

//! One module per `warp-controller` subcommand. Each has a config type (or options type) built
//! by `from_args`, which makes every check (flags, numbers, files the command line names,
//! templates) before anything starts, and a `run(config)`. [`dispatch`] picks the subcommand.

pub mod cancel;
pub mod client;
pub mod compare;
pub mod monitor;
pub mod preprocess;
pub mod provision;
pub mod select;
pub mod serve;
pub mod simulate;
pub mod submit;
pub mod tls;
pub mod wait;

use crate::cli::CliError;

/// The top-level help.
pub const USAGE: &str = "\
warp-controller: the controller of a pull-based cryo-EM worker system.

Workers (warp-worker, one per GPU) connect to the controller; the controller never connects to
them, so workers run on compute nodes that accept no inbound connections.

Usage:
  warp-controller serve [options]        run a controller
  warp-controller submit [options] (--exec -- ARGV... | --json FILE)
                                         (--array 1-N / --each-line FILE: many at once)
  warp-controller wait (TASK_ID... | - | --label L)
                                         wait for tasks, with progress and a summary
  warp-controller status|workers|tasks [--json] [options]
  warp-controller cancel TASK_ID [options]
  warp-controller preprocess --input 'GLOB' --output DIR [options]
                                         preprocess movies over local or remote workers
  warp-controller simulate --output DIR [options]
                                         synthetic movies with known motion and CTF
  warp-controller select --output DIR [--max-resolution A ...]
                                         write the table of the movies passing thresholds
  warp-controller compare --truth DIR --output DIR
                                         compare preprocess results with simulated truth
  warp-controller help | --help | --version

Each subcommand has --help. Tokens come from files or the environment, never from the
command line. serve has three: the enrollment token (--token-file, WARP_TOKEN; workers and
compute nodes hold it; it only registers workers), the admin token (--admin-token-file,
WARP_ADMIN_TOKEN; by default admin-token beside the enrollment token file) and an optional
read-only view token (--view-token-file, WARP_VIEW_TOKEN). Client subcommands take the admin
token (--admin-token-file) and find the controller with --controller URL or WARP_CONTROLLER.

Exit codes: 0 success, 1 failure (e.g. task failed, controller unreachable), 2 usage error
(checked before the controller binds a port or a worker starts).";

/// Runs `f`'s config through `run` unless `--help` was printed.
fn then<C>(
    config: Result<Option<C>, CliError>,
    run: impl FnOnce(C) -> Result<(), CliError>,
) -> Result<(), CliError> {
    match config? {
        Some(c) => run(c),
        None => Ok(()),
    }
}

/// Runs the subcommand named by `args[0]` with the rest of `args`.
pub fn dispatch(args: &[String]) -> Result<(), CliError> {
    let rest = args.get(1..).unwrap_or_default();
    match args.first().map(String::as_str) {
        None | Some("help" | "-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some("--version" | "-V") => {
            println!(
                "warp-controller {} (protocol {})",
                warp_common::VERSION,
                warp_common::PROTOCOL_VERSION
            );
            Ok(())
        }
        Some("serve") => then(serve::ServeConfig::from_args(rest), serve::run),
        Some("submit") => then(submit::SubmitConfig::from_args(rest), submit::run),
        Some(cmd @ ("status" | "workers" | "tasks")) => {
            then(monitor::MonitorConfig::from_args(cmd, rest), monitor::run)
        }
        Some("wait") => then(wait::WaitConfig::from_args(rest), wait::run),
        Some("cancel") => then(cancel::CancelConfig::from_args(rest), cancel::run),
        Some("preprocess") => then(
            preprocess::PreprocessConfig::from_args(rest),
            preprocess::run,
        ),
        Some("simulate") => then(simulate::from_args(rest), simulate::run),
        Some("select") => then(select::SelectConfig::from_args(rest), select::run),
        Some("compare") => then(compare::CompareConfig::from_args(rest), compare::run),
        Some(other) => Err(CliError::Usage(format!(
            "unknown subcommand '{other}'; see warp-controller --help"
        ))),
    }
}

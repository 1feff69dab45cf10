//! `warp-controller submit`: submit one work package (an `Exec` of a program, or a `TaskSpec`
//! in JSON), optionally waiting for it.

use std::time::Duration;

use warp_common::commands::Command;
use warp_common::protocol::{Target, TaskSpec, TaskState};

use super::client::{self, ClientArgs};
use crate::cli::{self, CliError, failed, number, seconds, usage};

/// A checked `submit` command line.
#[derive(Debug, Clone)]
pub struct SubmitConfig {
    /// The controller.
    pub client: ClientArgs,
    /// The work package, validated.
    pub spec: TaskSpec,
    /// `--wait`: `Some(None)` waits forever, `Some(Some(t))` at most `t`.
    pub wait: Option<Option<Duration>>,
}

const BRIEF: &str = "Usage: warp-controller submit [options] (--exec -- PROGRAM ARGS... | --json FILE)\n\nPrints the task id; with --wait, the task's result as JSON.";

impl SubmitConfig {
    /// Parses and checks `args` (after `submit`), reading `--json FILE`; `None` after `--help`.
    pub fn from_args(args: &[String]) -> Result<Option<SubmitConfig>, CliError> {
        let mut o = client::options();
        o.optflag("", "exec", "run the program given after -- (Exec command)");
        o.optopt(
            "",
            "json",
            "submit the work package (TaskSpec JSON) in FILE ('-' = stdin)",
            "FILE",
        );
        o.optopt("", "worker", "only this worker may run it", "ID");
        o.optopt(
            "",
            "device",
            "only workers serving this device may run it",
            "N",
        );
        o.optopt("", "priority", "higher runs first (default 0)", "N");
        o.optopt("", "label", "label shown in monitoring", "TEXT");
        o.optopt(
            "",
            "timeout",
            "task timeout in seconds (default: the controller's)",
            "S",
        );
        o.optopt(
            "",
            "cwd",
            "working directory of the program (--exec)",
            "DIR",
        );
        o.optflag(
            "",
            "wait",
            "wait for the task and print its result; exit 1 if it failed",
        );
        o.optopt(
            "",
            "wait-timeout",
            "give up waiting after S seconds (default: never)",
            "S",
        );
        let Some(m) = cli::parse(&o, args, BRIEF)? else {
            return Ok(None);
        };
        let mut spec = match (m.opt_present("exec"), m.opt_str("json")) {
            (true, None) => {
                if m.free.is_empty() {
                    return usage(
                        "--exec needs a program after --, e.g. submit --exec -- hostname",
                    );
                }
                let mut cmd = Command::exec(m.free.iter().cloned());
                if let (Command::Exec(p), Some(cwd)) = (&mut cmd, m.opt_str("cwd")) {
                    p.cwd = Some(cwd);
                }
                TaskSpec::new(vec![cmd])
            }
            (false, Some(path)) => {
                if let Some(extra) = m.free.first() {
                    return usage(format!(
                        "unexpected argument '{extra}' (only --exec takes a program)"
                    ));
                }
                let text = if path == "-" {
                    let mut s = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map(|_| s)
                } else {
                    std::fs::read_to_string(&path)
                }
                .map_err(|e| CliError::Usage(format!("--json {path}: cannot read it: {e}")))?;
                serde_json::from_str(&text).map_err(|e| {
                    CliError::Usage(format!("--json {path} is not a work package: {e}"))
                })?
            }
            _ => return usage("give exactly one of --exec -- ARGV... or --json FILE"),
        };
        match (m.opt_str("worker"), m.opt_str("device")) {
            (Some(_), Some(_)) => return usage("give at most one of --worker and --device"),
            (Some(w), None) => {
                spec.target =
                    Target::Worker(uuid::Uuid::parse_str(&w).map_err(|_| {
                        CliError::Usage(format!("--worker: '{w}' is not a worker id"))
                    })?)
            }
            (None, Some(_)) => spec.target = Target::Device(number(&m, "device", 0)?),
            (None, None) => {}
        }
        if m.opt_present("priority") {
            spec.priority = number(&m, "priority", 0)?;
        }
        if let Some(l) = m.opt_str("label") {
            spec.label = Some(l);
        }
        if m.opt_present("timeout") {
            spec.timeout_s = Some(seconds(&m, "timeout", Duration::ZERO)?.as_secs_f64());
        }
        spec.validate().map_err(CliError::Usage)?;
        let wait = if m.opt_present("wait") {
            Some(
                m.opt_str("wait-timeout")
                    .map(|_| seconds(&m, "wait-timeout", Duration::ZERO))
                    .transpose()?,
            )
        } else if m.opt_present("wait-timeout") {
            return usage("--wait-timeout needs --wait");
        } else {
            None
        };
        Ok(Some(SubmitConfig {
            client: ClientArgs::from_matches(&m)?,
            spec,
            wait,
        }))
    }
}

/// Submits; prints the id, and with `--wait` the result.
pub fn run(cfg: SubmitConfig) -> Result<(), CliError> {
    let c = cfg.client.connect();
    let id = c.submit(&cfg.spec).map_err(failed)?;
    println!("{id}");
    let Some(timeout) = cfg.wait else {
        return Ok(());
    };
    let detail = c.wait(id, timeout).map_err(failed)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&detail).expect("detail serialises")
    );
    match detail.state {
        TaskState::Completed => Ok(()),
        s if s.is_terminal() => Err(CliError::Failed(format!(
            "task {id} {}: {}",
            s.as_str(),
            detail.error.unwrap_or_default()
        ))),
        s => Err(CliError::Failed(format!(
            "task {id} still {} after --wait-timeout",
            s.as_str()
        ))),
    }
}

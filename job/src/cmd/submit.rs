//! `warp-controller submit`: submit one work package (an `Exec` of a program, or a `TaskSpec`
//! in JSON), or an array of `Exec` tasks (`--array`, `--each-line`) in one batch, optionally
//! waiting for them.
//!
//! An array task's program finds its entry in its environment: `WARP_TASK_INDEX` (the array
//! index, or the 0-based line number with `--each-line`) and, with `--each-line`,
//! `WARP_TASK_LINE`. `--stdout`/`--stderr` name a file per task with `%{INDEX}` in it, or a
//! directory (then `DIR/%{INDEX}.stdout` and `DIR/%{INDEX}.stderr`); the worker writes the
//! whole stream there (the result keeps its tail as always).

use std::io::Write;
use std::time::Duration;

use warp_common::commands::Command;
use warp_common::protocol::{Target, TaskSpec, TaskState};
use warp_controller::server::MAX_BATCH;

use super::client::{self, ClientArgs};
use crate::cli::{self, CliError, failed, number, seconds, usage};

/// A checked `submit` command line.
#[derive(Debug, Clone)]
pub struct SubmitConfig {
    /// The controller.
    pub client: ClientArgs,
    /// The work packages, validated: one, or one per array entry.
    pub specs: Vec<TaskSpec>,
    /// Whether this is an array (`--array`/`--each-line`): `--wait` then prints a summary
    /// instead of the one task's detail.
    pub array: bool,
    /// `--wait`: `Some(None)` waits forever, `Some(Some(t))` at most `t`.
    pub wait: Option<Option<Duration>>,
}

/// Most tasks one `submit` makes.
pub const MAX_ARRAY: usize = 1_000_000;

/// The indices of `--array`: `N`, `A-B` (inclusive) or a comma-separated list of them.
pub fn parse_array(text: &str) -> Result<Vec<u64>, String> {
    let mut out = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let bad = || format!("--array: '{part}' is not N or A-B (e.g. 1-100 or 1,5,10-20)");
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let (a, b): (u64, u64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        if b < a {
            return Err(format!("--array: '{part}' ends before it starts"));
        }
        if (b - a) as usize >= MAX_ARRAY || out.len() + (b - a) as usize >= MAX_ARRAY {
            return Err(format!("--array: more than {MAX_ARRAY} tasks"));
        }
        out.extend(a..=b);
    }
    Ok(out)
}

/// The file of entry `index` for `--stdout`/`--stderr` `spec` (a pattern with `%{INDEX}`, or
/// a directory).
fn output_path(spec: &str, index: u64, stream: &str) -> String {
    if spec.contains("%{INDEX}") {
        spec.replace("%{INDEX}", &index.to_string())
    } else {
        format!("{}/{index}.{stream}", spec.trim_end_matches('/'))
    }
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
        o.optopt(
            "",
            "array",
            "one --exec task per index, e.g. 1-100 or 1,5,10-20 (WARP_TASK_INDEX)",
            "LIST",
        );
        o.optopt(
            "",
            "each-line",
            "one --exec task per line of FILE (WARP_TASK_LINE, WARP_TASK_INDEX from 0)",
            "FILE",
        );
        o.optopt(
            "",
            "stdout",
            "write each program's whole stdout to PATH on the worker (%{INDEX} pattern, or a directory)",
            "PATH",
        );
        o.optopt("", "stderr", "the same for stderr", "PATH");
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
        let entries: Option<Vec<(u64, Option<String>)>> =
            match (m.opt_str("array"), m.opt_str("each-line")) {
                (Some(_), Some(_)) => return usage("give --array or --each-line, not both"),
                (Some(list), None) => Some(
                    parse_array(&list)
                        .map_err(CliError::Usage)?
                        .into_iter()
                        .map(|i| (i, None))
                        .collect(),
                ),
                (None, Some(path)) => {
                    let text = std::fs::read_to_string(&path).map_err(|e| {
                        CliError::Usage(format!("--each-line {path}: cannot read it: {e}"))
                    })?;
                    let lines: Vec<(u64, Option<String>)> = text
                        .lines()
                        .enumerate()
                        .map(|(i, l)| (i as u64, Some(l.to_string())))
                        .collect();
                    if lines.is_empty() {
                        return usage(format!("--each-line {path}: the file has no lines"));
                    }
                    if lines.len() > MAX_ARRAY {
                        return usage(format!("--each-line {path}: more than {MAX_ARRAY} lines"));
                    }
                    Some(lines)
                }
                (None, None) => None,
            };
        let (stdout, stderr) = (m.opt_str("stdout"), m.opt_str("stderr"));
        if stdout.as_deref() == Some("") || stderr.as_deref() == Some("") {
            return usage("--stdout and --stderr need a PATH");
        }
        let is_exec = matches!(&spec.commands[..], [Command::Exec(_)]);
        if (entries.is_some() || stdout.is_some() || stderr.is_some()) && !is_exec {
            return usage("--array, --each-line, --stdout and --stderr go with --exec");
        }
        let array = entries.is_some();
        let entries = entries.unwrap_or_else(|| vec![(0, None)]);
        let specs: Vec<TaskSpec> = entries
            .into_iter()
            .map(|(index, line)| {
                let mut s = spec.clone();
                if let [Command::Exec(p)] = &mut s.commands[..] {
                    if array {
                        p.env.insert("WARP_TASK_INDEX".into(), index.to_string());
                    }
                    if let Some(line) = line {
                        p.env.insert("WARP_TASK_LINE".into(), line);
                    }
                    p.stdout_path = stdout.as_deref().map(|d| output_path(d, index, "stdout"));
                    p.stderr_path = stderr.as_deref().map(|d| output_path(d, index, "stderr"));
                }
                s
            })
            .collect();
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
            specs,
            array,
            wait,
        }))
    }
}

/// Submits; prints the ids (one per line), and with `--wait` the result (one task) or a
/// summary (an array).
pub fn run(cfg: SubmitConfig) -> Result<(), CliError> {
    let c = cfg.client.connect();
    if cfg.array {
        // One batch at a time, each one's ids printed at once: when a later batch fails,
        // the ids of the queued ones are not lost.
        let mut ids = Vec::with_capacity(cfg.specs.len());
        let mut out = std::io::stdout().lock();
        let mut specs = cfg.specs;
        while !specs.is_empty() {
            let rest = specs.split_off(specs.len().min(MAX_BATCH));
            let batch = std::mem::replace(&mut specs, rest);
            let got = c.submit_batch(batch).map_err(failed)?;
            for id in &got {
                let _ = writeln!(out, "{id}");
            }
            let _ = out.flush();
            ids.extend(got);
        }
        drop(out);
        let Some(timeout) = cfg.wait else {
            return Ok(());
        };
        let outcome = super::wait::wait_all(&c, &ids, timeout)?;
        eprint!("{}", outcome.summary());
        return outcome.into_result();
    }
    let [spec] = &cfg.specs[..] else {
        unreachable!("one spec without an array");
    };
    let id = c.submit(spec).map_err(failed)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_lists_and_ranges() {
        assert_eq!(parse_array("3").unwrap(), vec![3]);
        assert_eq!(parse_array("1-4").unwrap(), vec![1, 2, 3, 4]);
        assert_eq!(parse_array("0,5-6, 9").unwrap(), vec![0, 5, 6, 9]);
        for bad in ["", "a", "4-1", "1-", "-3", "1-2000000"] {
            let e = parse_array(bad).unwrap_err();
            assert!(e.starts_with("--array"), "{bad}: {e}");
        }
    }

    #[test]
    fn output_paths_from_a_pattern_or_a_directory() {
        assert_eq!(output_path("logs/%{INDEX}.out", 7, "stdout"), "logs/7.out");
        assert_eq!(output_path("logs/", 7, "stderr"), "logs/7.stderr");
        assert_eq!(output_path("logs", 0, "stdout"), "logs/0.stdout");
    }

    fn args(a: &[&str]) -> Vec<String> {
        let token = std::env::temp_dir().join(format!("warp-submit-token-{}", std::process::id()));
        std::fs::write(&token, "t\n").unwrap();
        let mut v: Vec<String> = ["--controller", "127.0.0.1:1", "--token-file"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.push(token.display().to_string());
        v.extend(a.iter().map(|s| s.to_string()));
        v
    }

    #[test]
    fn an_array_is_one_exec_task_per_entry_with_its_index_and_line() {
        let cfg = SubmitConfig::from_args(&args(&[
            "--array",
            "2-4",
            "--stdout",
            "o/%{INDEX}.txt",
            "--label",
            "sweep",
            "--exec",
            "--",
            "echo",
        ]))
        .unwrap()
        .unwrap();
        assert!(cfg.array);
        assert_eq!(cfg.specs.len(), 3);
        let Command::Exec(p) = &cfg.specs[1].commands[0] else {
            panic!("not an Exec")
        };
        assert_eq!(p.env["WARP_TASK_INDEX"], "3");
        assert_eq!(p.stdout_path.as_deref(), Some("o/3.txt"));
        assert_eq!(p.stderr_path, None);
        assert_eq!(cfg.specs[1].label.as_deref(), Some("sweep"));

        let dir = std::env::temp_dir().join(format!("warp-submit-lines-{}", std::process::id()));
        std::fs::write(&dir, "a b\nsecond\n").unwrap();
        let cfg = SubmitConfig::from_args(&args(&[
            "--each-line",
            dir.to_str().unwrap(),
            "--exec",
            "--",
            "sh",
        ]))
        .unwrap()
        .unwrap();
        std::fs::remove_file(&dir).unwrap();
        let envs: Vec<_> = cfg
            .specs
            .iter()
            .map(|s| match &s.commands[0] {
                Command::Exec(p) => (
                    p.env["WARP_TASK_INDEX"].clone(),
                    p.env["WARP_TASK_LINE"].clone(),
                ),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            envs,
            vec![("0".into(), "a b".into()), ("1".into(), "second".into())]
        );
        // Only Exec tasks come in arrays.
        let e = SubmitConfig::from_args(&args(&["--array", "1-2", "--json", "x.json"]));
        assert_eq!(e.unwrap_err().exit_code(), 2);
    }
}

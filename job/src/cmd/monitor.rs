//! `warp-controller status|workers|tasks`: what the controller holds, as a table or JSON.

use warp_common::protocol::{TaskDetail, TaskState};

use super::client::{self, ClientArgs};
use crate::cli::{self, CliError, failed, number};

/// Which listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// `status`: counts, provisioning.
    Status,
    /// `workers` (`--all`: offline ones too).
    Workers {
        /// Include offline workers.
        all: bool,
    },
    /// `tasks` (`--state`, `--limit`).
    Tasks {
        /// Only this state.
        state: Option<TaskState>,
        /// At most this many.
        limit: usize,
    },
}

/// A checked `status`/`workers`/`tasks` command line.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    /// The controller.
    pub client: ClientArgs,
    /// What to show.
    pub view: View,
    /// JSON instead of a table.
    pub json: bool,
}

impl MonitorConfig {
    /// Parses and checks `args` (after `cmd`, one of `status`, `workers`, `tasks`).
    pub fn from_args(cmd: &str, args: &[String]) -> Result<Option<MonitorConfig>, CliError> {
        let mut o = client::options();
        o.optflag("", "json", "print JSON instead of a table");
        if cmd == "workers" {
            o.optflag("", "all", "include offline workers");
        }
        if cmd == "tasks" {
            o.optopt(
                "",
                "state",
                "only tasks in this state (queued, running, completed, failed, ...)",
                "STATE",
            );
            o.optopt("", "limit", "at most N tasks (default 1000)", "N");
        }
        let brief = format!("Usage: warp-controller {cmd} [--json] [options]");
        let Some(m) = cli::parse_options_only(&o, args, &brief)? else {
            return Ok(None);
        };
        let view = match cmd {
            "status" => View::Status,
            "workers" => View::Workers {
                all: m.opt_present("all"),
            },
            _ => View::Tasks {
                state: m
                    .opt_str("state")
                    .map(|s| {
                        serde_json::from_value::<TaskState>(serde_json::Value::String(s.clone()))
                            .map_err(|_| CliError::Usage(format!("--state: unknown state '{s}'")))
                    })
                    .transpose()?,
                limit: number(&m, "limit", 1000usize)?,
            },
        };
        Ok(Some(MonitorConfig {
            client: ClientArgs::from_matches(&m)?,
            view,
            json: m.opt_present("json"),
        }))
    }
}

fn pretty<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).expect("serialisable")
}

/// Fetches and prints.
pub fn run(cfg: MonitorConfig) -> Result<(), CliError> {
    let c = cfg.client.connect();
    match cfg.view {
        View::Status => {
            let s = c.status().map_err(failed)?;
            if cfg.json {
                println!("{}", pretty(&s));
                return Ok(());
            }
            println!(
                "controller {} (protocol {}), up {:.1} s",
                s.version,
                s.protocol_version,
                s.uptime_ms as f64 / 1000.0
            );
            println!(
                "workers: {} idle, {} busy, {} offline; {} polls parked",
                s.workers.idle, s.workers.busy, s.workers.offline, s.parked_polls
            );
            let t = &s.tasks;
            println!(
                "tasks:   {} queued, {} assigned, {} running, {} completed, {} failed, {} cancelled",
                t.queued, t.assigned, t.running, t.completed, t.failed, t.cancelled
            );
            println!("stale reports refused: {}", s.stale_reports_refused);
            if let Some(p) = &s.provisioning {
                println!(
                    "provisioning ({}): {} job(s), {} submitted in all, at most {} workers{}{}",
                    p.mode,
                    p.jobs.len(),
                    p.submitted_total,
                    p.max_workers,
                    p.paused_for_ms
                        .map(|ms| format!(", paused for {:.0} s", ms as f64 / 1000.0))
                        .unwrap_or_default(),
                    p.last_error
                        .as_deref()
                        .map(|e| format!("; last error: {e}"))
                        .unwrap_or_default()
                );
                for j in &p.jobs {
                    println!(
                        "  job {:<12} {:<9} {:>7.0} s",
                        j.id,
                        j.state,
                        j.age_ms as f64 / 1000.0
                    );
                }
            }
        }
        View::Workers { all } => {
            let list = c.workers(all).map_err(failed)?;
            if cfg.json {
                println!("{}", pretty(&list));
                return Ok(());
            }
            println!(
                "{:<36}  {:>6}  {:<20}  {:<7}  {:<36}  {:>9}  {:>6}",
                "ID", "DEVICE", "HOST", "STATE", "TASK", "LAST SEEN", "DONE"
            );
            for w in list {
                println!(
                    "{:<36}  {:>6}  {:<20}  {:<7}  {:<36}  {:>7.1} s  {:>6}",
                    w.id,
                    w.device,
                    w.hostname,
                    format!("{:?}", w.state).to_lowercase(),
                    w.current_task
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "-".into()),
                    w.last_heartbeat_ms_ago as f64 / 1000.0,
                    w.tasks_completed
                );
            }
        }
        View::Tasks { state, limit } => {
            let list = c.tasks(state, limit).map_err(failed)?;
            if cfg.json {
                println!("{}", pretty(&list));
                return Ok(());
            }
            println!(
                "{:<36}  {:<9}  {:>7}  {:<36}  {:<20}  ERROR",
                "ID", "STATE", "ATTEMPT", "WORKER", "LABEL"
            );
            for t in list {
                print_task_row(&t);
            }
        }
    }
    Ok(())
}

fn print_task_row(t: &TaskDetail) {
    // By characters: a byte cut could fall inside one and panic.
    let err: String = t
        .error
        .as_deref()
        .unwrap_or_default()
        .replace('\n', " ")
        .chars()
        .take(60)
        .collect();
    println!(
        "{:<36}  {:<9}  {:>7}  {:<36}  {:<20}  {}",
        t.id,
        t.state.as_str(),
        t.attempt,
        t.worker_id
            .map(|w| w.to_string())
            .unwrap_or_else(|| "-".into()),
        t.label.as_deref().unwrap_or("-"),
        err
    );
}

//! `warp-controller wait IDS... | - | --label L`: wait for tasks to end, with a progress bar
//! on a terminal (plain lines otherwise), and a summary of the failures.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use warp_common::protocol::{TaskDetail, TaskId, TaskState};
use warp_controller::client::AdminClient;

use super::client::{self, ClientArgs};
use crate::cli::{self, CliError, failed, seconds, usage};

/// What to wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    /// These tasks.
    Ids(Vec<TaskId>),
    /// Every task with this label at the time `wait` starts.
    Label(String),
}

/// A checked `wait` command line.
#[derive(Debug, Clone)]
pub struct WaitConfig {
    /// The controller.
    pub client: ClientArgs,
    /// The tasks.
    pub which: Which,
    /// Give up after this long (`None`: never).
    pub timeout: Option<Duration>,
}

const BRIEF: &str = "Usage: warp-controller wait (TASK_ID... | - | --label LABEL) [options]\n\n\
    Waits until every task has ended. '-' reads the ids from standard input, one per line\n\
    (what `submit` prints). Shows a progress bar on a terminal, plain progress lines otherwise,\n\
    then a summary; exits 1 when any task failed or was cancelled, or the timeout passed.";

impl WaitConfig {
    /// Parses and checks `args` (after `wait`); `None` after `--help`.
    pub fn from_args(args: &[String]) -> Result<Option<WaitConfig>, CliError> {
        let mut o = client::options();
        o.optopt("", "label", "every task with this label", "LABEL");
        o.optopt(
            "",
            "timeout",
            "give up after S seconds (default: never)",
            "S",
        );
        let Some(m) = cli::parse(&o, args, BRIEF)? else {
            return Ok(None);
        };
        let which = match (m.opt_str("label"), &m.free[..]) {
            (Some(l), []) => Which::Label(l),
            (None, []) => return usage("wait needs task ids, '-' (ids on stdin) or --label"),
            (Some(_), _) => return usage("give task ids or --label, not both"),
            (None, [dash]) if dash == "-" => {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                    .map_err(|e| CliError::Failed(format!("cannot read ids from stdin: {e}")))?;
                Which::Ids(parse_ids(text.split_whitespace())?)
            }
            (None, ids) => Which::Ids(parse_ids(ids.iter().map(String::as_str))?),
        };
        let timeout = m
            .opt_str("timeout")
            .map(|_| seconds(&m, "timeout", Duration::ZERO))
            .transpose()?;
        Ok(Some(WaitConfig {
            client: ClientArgs::from_matches(&m)?,
            which,
            timeout,
        }))
    }
}

fn parse_ids<'a>(ids: impl Iterator<Item = &'a str>) -> Result<Vec<TaskId>, CliError> {
    ids.map(|s| {
        uuid::Uuid::parse_str(s).map_err(|_| CliError::Usage(format!("'{s}' is not a task id")))
    })
    .collect()
}

/// Waits and prints the summary.
pub fn run(cfg: WaitConfig) -> Result<(), CliError> {
    let c = cfg.client.connect();
    let ids = match cfg.which {
        Which::Ids(ids) => ids,
        Which::Label(label) => {
            let all = c.all_tasks(None).map_err(failed)?;
            let ids: Vec<TaskId> = all
                .into_iter()
                .filter(|t| t.label.as_deref() == Some(label.as_str()))
                .map(|t| t.id)
                .collect();
            if ids.is_empty() {
                return Err(CliError::Failed(format!("no task has the label '{label}'")));
            }
            ids
        }
    };
    let outcome = wait_all(&c, &ids, cfg.timeout)?;
    eprint!("{}", outcome.summary());
    outcome.into_result()
}

/// What [`wait_all`] saw.
#[derive(Debug, Default)]
pub struct WaitOutcome {
    /// Tasks waited for.
    pub total: usize,
    /// Completed ones.
    pub completed: usize,
    /// Failed or cancelled ones, with their details.
    pub unsuccessful: Vec<TaskDetail>,
    /// Ones still not ended when the timeout passed.
    pub unfinished: usize,
    /// Finished ones whose outcome the controller no longer knows (retention, no state
    /// directory).
    pub forgotten: usize,
    /// Wall time.
    pub elapsed: Duration,
}

/// How many failures the summary lists by name.
const LISTED_FAILURES: usize = 20;

impl WaitOutcome {
    /// The summary: counts, then up to [`LISTED_FAILURES`] failures with their first line.
    pub fn summary(&self) -> String {
        let cancelled = self
            .unsuccessful
            .iter()
            .filter(|t| t.state == TaskState::Cancelled)
            .count();
        let mut s = format!(
            "{} task(s) in {:.1} s: {} completed, {} failed, {} cancelled{}\n",
            self.total,
            self.elapsed.as_secs_f64(),
            self.completed,
            self.unsuccessful.len() - cancelled,
            cancelled,
            if self.unfinished > 0 {
                format!(", {} not finished (timeout)", self.unfinished)
            } else {
                String::new()
            }
        );
        if self.forgotten > 0 {
            s += &format!(
                "  {} finished task(s) whose outcome the controller no longer keeps (retention; \
                 serve --state-dir keeps them)\n",
                self.forgotten
            );
        }
        for t in self.unsuccessful.iter().take(LISTED_FAILURES) {
            let first = t
                .error
                .as_deref()
                .unwrap_or("")
                .lines()
                .next()
                .unwrap_or("");
            let first: String = first.chars().take(200).collect();
            s += &format!(
                "  {} {}{}: {first}\n",
                t.id,
                t.state.as_str(),
                t.label
                    .as_deref()
                    .map(|l| format!(" ({l})"))
                    .unwrap_or_default()
            );
        }
        if self.unsuccessful.len() > LISTED_FAILURES {
            s += &format!(
                "  ... and {} more (warp-controller tasks --state failed)\n",
                self.unsuccessful.len() - LISTED_FAILURES
            );
        }
        s
    }

    /// Ok when every task completed.
    pub fn into_result(self) -> Result<(), CliError> {
        if self.unsuccessful.is_empty() && self.unfinished == 0 {
            return Ok(());
        }
        Err(CliError::Failed(format!(
            "{} of {} task(s) did not complete",
            self.unsuccessful.len() + self.unfinished,
            self.total
        )))
    }
}

/// Progress on stderr: a bar redrawn in place on a terminal, a line every few seconds (and
/// at the end) otherwise.
struct Progress {
    tty: bool,
    started: Instant,
    last: Instant,
}

impl Progress {
    fn new() -> Progress {
        let now = Instant::now();
        Progress {
            tty: std::io::stderr().is_terminal(),
            started: now,
            last: now,
        }
    }

    fn show(&mut self, done: usize, total: usize, failed: usize, last: bool) {
        let now = Instant::now();
        let every = if self.tty {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(5)
        };
        if !last && now.duration_since(self.last) < every {
            return;
        }
        self.last = now;
        let t = self.started.elapsed().as_secs_f64();
        let mut err = std::io::stderr().lock();
        if self.tty {
            const WIDTH: usize = 30;
            let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH);
            let _ = write!(
                err,
                "\r[{}{}] {done}/{total} done, {failed} failed, {t:.1} s",
                "#".repeat(filled),
                ".".repeat(WIDTH - filled)
            );
            if last {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "wait: {done}/{total} done, {failed} failed, {t:.1} s");
        }
    }
}

/// The most ids one `POST /api/tasks/wait` takes.
const WAIT_CHUNK: usize = 10_000;

/// Waits for `ids` (repeats count once) with the controller's many-task wait, 10,000 to a
/// call, each call held for a progress step, showing progress.
pub fn wait_all(
    c: &AdminClient,
    ids: &[TaskId],
    timeout: Option<Duration>,
) -> Result<WaitOutcome, CliError> {
    let started = Instant::now();
    let deadline = timeout.map(|t| started + t);
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    let mut pending: Vec<TaskId> = ids.iter().copied().filter(|id| seen.insert(*id)).collect();
    let mut out = WaitOutcome {
        total: pending.len(),
        ..WaitOutcome::default()
    };
    let mut progress = Progress::new();
    let step = if progress.tty {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(5)
    };
    while !pending.is_empty() {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let hold = left.map_or(step, |l| l.min(step));
        let mut still = Vec::new();
        for chunk in pending.chunks(WAIT_CHUNK) {
            let r = c.wait_many(chunk, hold).map_err(failed)?;
            out.completed += r.completed.len();
            out.forgotten += r.forgotten.len();
            out.unsuccessful.extend(r.unsuccessful);
            still.extend(r.pending);
        }
        pending = still;
        let done = out.total - pending.len();
        progress.show(done, out.total, out.unsuccessful.len(), false);
        if left.is_some_and(|l| l.is_zero()) {
            break;
        }
    }
    out.unfinished = pending.len();
    progress.show(
        out.total - out.unfinished,
        out.total,
        out.unsuccessful.len(),
        true,
    );
    out.elapsed = started.elapsed();
    Ok(out)
}

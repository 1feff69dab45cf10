//! Command execution and the worker's held state.
//!
//! [`Executor`] runs the typed commands of `warp_common::commands` one at a time and remembers the
//! init fingerprint of the state it holds, so a task whose init part produces state the worker
//! already holds skips it. An init failure drops the held state; a main failure keeps it.
//!
//! An `Exec` runs in its own process group ([`crate::program`]: one `poll` for the pipes, the
//! exit and the cancel wake-up). The group is killed (SIGKILL) on cancel, on timeout, and when
//! the program exits, so a command's processes never outlive it.

use serde_json::{Value, json};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use warp_common::commands::{Command, ExecParams, ExecResult};
use warp_common::protocol::{Assignment, TaskResult};

use crate::preprocess::Preprocessor;
use crate::program::{self, Waker};
use crate::readahead::ReadAhead;

/// Longest `WaitAsyncTasks` waits for the read-ahead (a hung file system must not hold the
/// worker); past it the result's `pending` counts the files not read yet. A cancel of the task
/// ends the wait at once (the command then fails, naming what was pending).
pub const WAIT_ASYNC_LIMIT: Duration = Duration::from_secs(30);

/// How much of stderr an Exec failure message quotes.
const ERROR_TAIL_BYTES: usize = 2048;

/// A per-task cancellation request: set once, wakes whatever waits on it at once.
#[derive(Clone, Debug, Default)]
pub struct CancelFlag {
    inner: Arc<(AtomicBool, Mutex<()>, Condvar)>,
    /// Made on first use by a `poll` loop (an `Exec`); `cancel` wakes it.
    waker: Arc<std::sync::OnceLock<Option<Waker>>>,
}

impl CancelFlag {
    /// A flag not yet set.
    pub fn new() -> CancelFlag {
        CancelFlag::default()
    }

    /// Requests cancellation; idempotent.
    pub fn cancel(&self) {
        let (flag, lock, cv) = &*self.inner;
        flag.store(true, Ordering::SeqCst);
        let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        cv.notify_all();
        // After the store: a waiter that made its waker later sees the flag on its next check.
        if let Some(Some(w)) = self.waker.get() {
            w.wake();
        }
    }

    /// A pipe that becomes readable on [`Self::cancel`], for a `poll` loop; `None` when no
    /// pipe could be made (the loop then checks the flag at its own pace).
    pub fn waker(&self) -> Option<&Waker> {
        self.waker.get_or_init(|| Waker::new().ok()).as_ref()
    }

    /// Whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        self.inner.0.load(Ordering::SeqCst)
    }

    /// Waits up to `timeout`; true when cancelled.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let (flag, lock, cv) = &*self.inner;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let _unused = cv
            .wait_timeout_while(guard, timeout, |_| !flag.load(Ordering::SeqCst))
            .unwrap_or_else(|e| e.into_inner());
        flag.load(Ordering::SeqCst)
    }
}

/// Runs commands and holds the worker's state between tasks: the init fingerprint and the
/// preprocessing state ([`Preprocessor`]: gain reference, loaded movie).
#[derive(Debug, Default)]
pub struct Executor {
    held: Option<String>,
    pre: Preprocessor,
    read_ahead: ReadAhead,
}

impl Executor {
    /// An executor holding no state.
    pub fn new() -> Executor {
        Executor::default()
    }

    /// An executor computing with `backend` (see `warp_kernels::backend::select_backend`).
    pub fn with_backend(backend: Box<dyn warp_kernels::backend::Backend>) -> Executor {
        Executor {
            held: None,
            pre: Preprocessor::new(backend),
            read_ahead: ReadAhead::default(),
        }
    }

    /// Turns the read-ahead of the next task's files on or off (on by default).
    pub fn set_read_ahead(&mut self, enabled: bool) {
        self.read_ahead = ReadAhead::new(enabled);
    }

    /// Why the compute device stopped working, if it did (see [`Preprocessor::unhealthy`]).
    pub fn unhealthy(&self) -> Option<&str> {
        self.pre.unhealthy()
    }

    /// The GPU the preprocessing runs on, if any.
    pub fn gpu(&self) -> Option<warp_kernels::backend::GpuInfo> {
        self.pre.gpu()
    }

    /// Init fingerprint of the state held, if any.
    pub fn held_fingerprint(&self) -> Option<&str> {
        self.held.as_deref()
    }

    /// Runs one command; the error is a message for the task's error history.
    pub fn run_command(
        &mut self,
        cmd: &Command,
        cancel: &CancelFlag,
    ) -> Result<Value, CommandError> {
        cmd.validate().map_err(CommandError::permanent)?;
        Ok(match cmd {
            Command::Exec(p) => run_exec(p, cancel).map(|r| json!(r))?,
            Command::Sleep { ms } => {
                let start = Instant::now();
                let cancelled = cancel.wait_timeout(Duration::from_millis(*ms));
                let slept_ms = start.elapsed().as_millis() as u64;
                if cancelled {
                    return Err(format!("cancelled after {slept_ms} ms").into());
                }
                json!({ "slept_ms": slept_ms })
            }
            Command::Fail { message } => return Err(message.clone().into()),
            Command::Echo { value } => json!({ "value": value }),
            Command::LoadStack(p) => {
                self.pre
                    .note_read_ahead(self.read_ahead.report_for(&p.path));
                self.pre.run(cmd)?
            }
            Command::LoadGainRef(_)
            | Command::MovieProcessMovement(_)
            | Command::MovieProcessCtf(_)
            | Command::MovieExportMovie(_)
            | Command::MovieCreateThumbnail(_) => self.pre.run(cmd)?,
            // The only background work a worker does is the read-ahead.
            Command::WaitAsyncTasks {} => {
                let (waited, pending) = self.read_ahead.wait_up_to(WAIT_ASYNC_LIMIT, cancel);
                let waited_ms = waited.as_millis() as u64;
                if cancel.is_cancelled() {
                    return Err(format!(
                        "cancelled after {waited_ms} ms ({pending} file(s) of the read-ahead pending)"
                    )
                    .into());
                }
                json!({ "waited_ms": waited_ms, "pending": pending })
            }
            Command::GcCollect {} => {
                self.pre.release_movie();
                #[cfg(all(target_os = "linux", target_env = "gnu"))]
                // SAFETY: malloc_trim only returns free heap pages to the kernel.
                unsafe {
                    libc::malloc_trim(0);
                }
                json!({ "released": true })
            }
        })
    }

    /// Runs a task: its init part unless the held fingerprint matches, then its main commands.
    /// `on_command(i, n, name)` is called before main command `i` of `n`. The read-ahead of
    /// `task.read_ahead` starts once the last main command that reads files has run, so the
    /// two reads do not compete.
    pub fn run_assignment(
        &mut self,
        task: &Assignment,
        cancel: &CancelFlag,
        on_command: &mut dyn FnMut(usize, usize, &'static str),
    ) -> Result<TaskResult, CommandError> {
        // A read-ahead for another task (this worker was given a different one) stops here
        // rather than compete with this task's reads.
        let inputs: Vec<&str> = task.commands.iter().flat_map(|c| c.input_files()).collect();
        self.read_ahead.stop_unless_reading(&inputs);
        let mut init_ran = false;
        if let Some(init) = &task.init
            && self.held.as_deref() != Some(init.fingerprint.as_str())
        {
            // The old state is being replaced: a failure below leaves none.
            self.held = None;
            self.pre.clear();
            for (i, c) in init.commands.iter().enumerate() {
                check_cancel(cancel)?;
                self.run_command(c, cancel)
                    .map_err(|e| e.context(format!("init command {i} ({})", c.name())))?;
            }
            self.held = Some(init.fingerprint.clone());
            init_ran = true;
        }
        let n = task.commands.len();
        // The read-ahead starts after the last command that reads files (at once if none does).
        let last_input = task
            .commands
            .iter()
            .rposition(|c| !c.input_files().is_empty());
        if last_input.is_none() {
            self.read_ahead.start(&task.read_ahead);
        }
        let mut results = Vec::with_capacity(n);
        for (i, c) in task.commands.iter().enumerate() {
            check_cancel(cancel)?;
            on_command(i, n, c.name());
            let r = self
                .run_command(c, cancel)
                .map_err(|e| e.context(format!("command {i} ({})", c.name())))?;
            results.push(r);
            if Some(i) == last_input {
                self.read_ahead.start(&task.read_ahead);
            }
        }
        Ok(TaskResult { results, init_ran })
    }
}

/// Why a command failed: a message for the task's error history, and whether the input is
/// at fault so that another attempt would fail the same way (see
/// `warp_common::protocol::StatusUpdate::permanent`).
#[derive(Debug, Clone, PartialEq)]
pub struct CommandError {
    /// What went wrong, naming the file or the step.
    pub message: String,
    /// Not worth another attempt.
    pub permanent: bool,
}

impl CommandError {
    /// An error of the input itself.
    pub fn permanent(message: String) -> CommandError {
        CommandError {
            message,
            permanent: true,
        }
    }

    /// The same error with `what: ` before its message.
    pub fn context(self, what: String) -> CommandError {
        CommandError {
            message: format!("{what}: {}", self.message),
            ..self
        }
    }
}

/// Any other failure may go away on another attempt or another worker.
impl From<String> for CommandError {
    fn from(message: String) -> CommandError {
        CommandError {
            message,
            permanent: false,
        }
    }
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn check_cancel(cancel: &CancelFlag) -> Result<(), String> {
    if cancel.is_cancelled() {
        Err("cancelled".into())
    } else {
        Ok(())
    }
}

fn run_exec(p: &ExecParams, cancel: &CancelFlag) -> Result<ExecResult, String> {
    let program = &p.argv[0];
    if let Some(dir) = &p.cwd
        && !std::path::Path::new(dir).is_dir()
    {
        return Err(format!(
            "cannot run '{program}': working directory '{dir}' does not exist"
        ));
    }
    let mut cmd = std::process::Command::new(program);
    // The enrollment token is the worker's, not the program's. The worker removed it from its
    // environment at start (`scrub_secrets`); removing a name per spawn would make `Command`
    // copy the whole environment for every program, so only names still there are removed.
    for name in crate::SECRET_ENV {
        if std::env::var_os(name).is_some() {
            cmd.env_remove(name);
        }
    }
    cmd.args(&p.argv[1..])
        .envs(&p.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(dir) = &p.cwd {
        cmd.current_dir(dir);
    }
    let files = [
        p.stdout_path
            .as_deref()
            .map(|f| program::open_output(f, p.cwd.as_deref()))
            .transpose()?,
        p.stderr_path
            .as_deref()
            .map(|f| program::open_output(f, p.cwd.as_deref()))
            .transpose()?,
    ];
    let waker = cancel.waker();
    let start = Instant::now();
    let child = cmd.spawn().map_err(|e| match &p.cwd {
        Some(dir) => format!("cannot start '{program}' in '{dir}': {e}"),
        None => format!("cannot start '{program}': {e}"),
    })?;
    let pid = child.id() as libc::pid_t;
    RUNNING_GROUP.store(pid, std::sync::atomic::Ordering::SeqCst);
    // validate() bounds timeout_s; checked arithmetic keeps a bad value from panicking anyway.
    let deadline = p
        .timeout_s
        .and_then(|t| Duration::try_from_secs_f64(t).ok())
        .and_then(|t| start.checked_add(t));
    let finished = program::run(child, deadline, waker, &|| cancel.is_cancelled(), files);
    RUNNING_GROUP.store(0, std::sync::atomic::Ordering::SeqCst);
    let finished = finished.map_err(|e| format!("'{program}': {e}"))?;
    let duration_ms = start.elapsed().as_millis() as u64;
    let status = finished.status;
    let stopped = match finished.ending {
        program::Ending::Exited => None,
        program::Ending::Cancelled => Some("cancelled"),
        program::Ending::TimedOut => Some("timed out"),
    };
    let result = ExecResult {
        exit_code: status.code(),
        signal: status.signal(),
        stdout_tail: String::from_utf8_lossy(&finished.stdout_tail).into_owned(),
        stderr_tail: String::from_utf8_lossy(&finished.stderr_tail).into_owned(),
        duration_ms,
    };
    let stderr = match tail_str(&result.stderr_tail, ERROR_TAIL_BYTES).trim_end() {
        "" => " (stderr empty)".to_string(),
        tail => format!("; stderr tail: {tail}"),
    };
    match stopped {
        Some("cancelled") => Err(format!(
            "cancelled: killed '{program}' (process group {pid})"
        )),
        Some(_) => Err(format!(
            "timed out after {} s: killed '{program}' (process group {pid}){stderr}",
            p.timeout_s.unwrap_or_default()
        )),
        None if status.success() || p.allow_failure => Ok(result),
        None => match (status.code(), status.signal()) {
            (Some(code), _) => Err(format!("exited with status {code}{stderr}")),
            (_, sig) => Err(format!("killed by signal {}{stderr}", sig.unwrap_or(0))),
        },
    }
}

/// Process group of the `Exec` program running now (0: none), for [`kill_running_program`].
static RUNNING_GROUP: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Kills the process group of the running `Exec` program, if any: for an exit that cannot wait
/// for the normal cancel path (a second interrupt).
pub fn kill_running_program() {
    let pgid = RUNNING_GROUP.swap(0, std::sync::atomic::Ordering::SeqCst);
    if pgid > 0 {
        // SAFETY: kill(2) on the process group of our own unreaped child.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
}

/// The last at most `max` bytes of `s`, cut at a character boundary.
fn tail_str(s: &str, max: usize) -> &str {
    let mut from = s.len().saturating_sub(max);
    while !s.is_char_boundary(from) {
        from += 1;
    }
    &s[from..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp_common::protocol::InitPart;

    fn sh(script: &str) -> ExecParams {
        ExecParams {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            ..Default::default()
        }
    }

    fn exec(p: ExecParams) -> Result<ExecResult, String> {
        run_exec(&p, &CancelFlag::new())
    }

    #[test]
    fn exec_captures_exit_code_and_output_tails() {
        let r = exec(sh("echo out; echo err >&2")).unwrap();
        assert_eq!(r.exit_code, Some(0));
        assert_eq!(
            (r.stdout_tail.as_str(), r.stderr_tail.as_str()),
            ("out\n", "err\n")
        );
        let big = exec(sh("head -c 100000 /dev/zero | tr '\\0' x")).unwrap();
        assert_eq!(
            big.stdout_tail.len(),
            warp_common::commands::EXEC_TAIL_BYTES
        );
    }

    /// Issue 10: `WaitAsyncTasks` answered `{"waited_ms": 0, "pending": 0}` while a
    /// read-ahead still ran. Here the read-ahead waits on a FIFO whose writer comes 200 ms
    /// later; the command returns after it.
    #[test]
    fn wait_async_tasks_waits_for_the_read_ahead() {
        let (dir, fifo) = crate::test_util::fifo("exec-wait", "next.mrc");
        let mut ex = Executor::new();
        ex.read_ahead.start(&[fifo.to_string_lossy().into_owned()]);
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                std::fs::write(&fifo, b"movie").unwrap();
            })
        };
        let r = ex
            .run_command(&Command::WaitAsyncTasks {}, &CancelFlag::new())
            .unwrap();
        writer.join().unwrap();
        assert!(r["waited_ms"].as_u64().unwrap() >= 150, "{r}");
        assert_eq!(r["pending"], 0, "{r}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Issue 10: a cancelled task must not sit in `WaitAsyncTasks` until its limit while the
    /// read-ahead hangs (here on a FIFO no writer opens).
    #[test]
    fn a_cancel_ends_wait_async_tasks_at_once() {
        let (dir, fifo) = crate::test_util::fifo("exec-cancel", "hung.mrc");
        let mut ex = Executor::new();
        ex.read_ahead.start(&[fifo.to_string_lossy().into_owned()]);
        let cancel = CancelFlag::new();
        let canceller = {
            let cancel = cancel.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                cancel.cancel();
            })
        };
        let start = Instant::now();
        let err = ex
            .run_command(&Command::WaitAsyncTasks {}, &cancel)
            .unwrap_err()
            .message;
        canceller.join().unwrap();
        assert!(err.contains("cancelled") && err.contains("1 file"), "{err}");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        // Unblock the reader thread (it waits for a writer) so it ends.
        let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn exec_nonzero_exit_fails_unless_allowed() {
        let err = exec(sh("echo broken >&2; exit 3")).unwrap_err();
        assert!(err.contains("status 3") && err.contains("broken"), "{err}");
        let mut p = sh("exit 3");
        p.allow_failure = true;
        assert_eq!(exec(p).unwrap().exit_code, Some(3));
    }

    #[test]
    fn exec_spawn_errors_name_program_and_cwd() {
        let err = exec(ExecParams {
            argv: vec!["/no/such/prog".into()],
            ..Default::default()
        });
        assert!(err.unwrap_err().contains("/no/such/prog"));
        let mut p = sh("true");
        p.cwd = Some("/no/such/dir".into());
        assert!(exec(p).unwrap_err().contains("/no/such/dir"));
    }

    #[test]
    fn exec_timeout_kills_the_program_quickly() {
        let mut p = sh("sleep 5");
        p.timeout_s = Some(0.2);
        let start = Instant::now();
        let err = exec(p).unwrap_err();
        assert!(err.contains("timed out"), "{err}");
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn exec_cancel_kills_the_whole_process_group() {
        let dir = std::env::temp_dir().join(format!("warp-worker-exec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("grandchild.pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let cancel = CancelFlag::new();
        let c2 = cancel.clone();
        let t = std::thread::spawn(move || run_exec(&sh(&script), &c2));
        let start = Instant::now();
        while !pidfile.exists() || std::fs::read_to_string(&pidfile).unwrap().trim().is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "grandchild never started"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let grandchild: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        cancel.cancel();
        let err = t.join().unwrap().unwrap_err();
        assert!(err.contains("cancelled"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(3));
        // The grandchild is gone (or a zombie awaiting its reaper, which kill(0) still finds).
        let alive = (0..100).all(|_| {
            let state =
                std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
            let running = !state.is_empty() && !state.contains(") Z");
            if running {
                std::thread::sleep(Duration::from_millis(10));
            }
            running
        });
        assert!(!alive, "grandchild {grandchild} survived the cancel");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn sleep_is_cancellable_and_simple_commands_work() {
        let mut ex = Executor::new();
        let cancel = CancelFlag::new();
        let c2 = cancel.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            c2.cancel();
        });
        let start = Instant::now();
        let err = ex
            .run_command(&Command::Sleep { ms: 10_000 }, &cancel)
            .unwrap_err()
            .message;
        assert!(err.contains("cancelled") && start.elapsed() < Duration::from_secs(2));
        t.join().unwrap();
        let ok = CancelFlag::new();
        let r = ex.run_command(&Command::Sleep { ms: 1 }, &ok).unwrap();
        assert!(r["slept_ms"].as_u64().unwrap() >= 1);
        let echo = Command::Echo {
            value: json!({"k": 1}),
        };
        assert_eq!(
            ex.run_command(&echo, &ok).unwrap(),
            json!({"value": {"k": 1}})
        );
        let fail = Command::Fail {
            message: "boom".into(),
        };
        assert_eq!(ex.run_command(&fail, &ok).unwrap_err().message, "boom");
        assert_eq!(
            ex.run_command(&Command::GcCollect {}, &ok).unwrap()["released"],
            true
        );
        assert!(
            ex.run_command(&Command::exec(Vec::<String>::new()), &ok)
                .is_err()
        );
    }

    fn task(fingerprint: &str, init: Vec<Command>, main: Vec<Command>) -> Assignment {
        Assignment {
            id: uuid::Uuid::new_v4(),
            lease: 1,
            attempt: 1,
            init: Some(InitPart {
                fingerprint: fingerprint.into(),
                commands: init,
            }),
            commands: main,
            read_ahead: Vec::new(),
        }
    }

    #[test]
    fn init_runs_once_per_fingerprint_and_failures_set_held_state() {
        let mut ex = Executor::new();
        let c = CancelFlag::new();
        let mut seen = Vec::new();
        let mut on = |i: usize, n: usize, name: &'static str| seen.push((i, n, name));
        let echo = || Command::Echo { value: json!(1) };
        let r = ex
            .run_assignment(&task("A", vec![echo()], vec![echo()]), &c, &mut on)
            .unwrap();
        assert!(r.init_ran);
        assert_eq!(r.results, vec![json!({"value": 1})]);
        let r = ex
            .run_assignment(&task("A", vec![echo()], vec![echo()]), &c, &mut on)
            .unwrap();
        assert!(!r.init_ran, "same fingerprint: init skipped");
        assert_eq!(seen, vec![(0, 1, "Echo"), (0, 1, "Echo")]);

        // A main failure keeps the held state.
        let fail = || Command::Fail {
            message: "bad".into(),
        };
        let err = ex.run_assignment(
            &task("A", vec![], vec![echo(), fail()]),
            &c,
            &mut |_, _, _| {},
        );
        assert_eq!(err.unwrap_err().message, "command 1 (Fail): bad");
        assert_eq!(ex.held_fingerprint(), Some("A"));

        // An init failure resets it.
        let err = ex.run_assignment(
            &task("B", vec![fail()], vec![echo()]),
            &c,
            &mut |_, _, _| {},
        );
        assert_eq!(err.unwrap_err().message, "init command 0 (Fail): bad");
        assert_eq!(ex.held_fingerprint(), None);
        let r = ex.run_assignment(&task("B", vec![echo()], vec![]), &c, &mut |_, _, _| {});
        assert!(r.unwrap().init_ran);
        assert_eq!(ex.held_fingerprint(), Some("B"));
    }
}

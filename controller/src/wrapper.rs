//! The drop-in wrapper: a program uses workers through it as it would use local ones.
//!
//! [`ControllerBasedWorkerWrapper`] mirrors the seed's wrapper of the same name: it starts an
//! in-process [`Controller`], spawns local `warp-worker` processes that register with it, and
//! offers blocking command calls addressed to one worker (stateful sequences stay on it) or to
//! any worker. [`DirectWorkerWrapper`] drives one worker in the traditional direct mode (the
//! worker serves its own port, found through a named pipe) with the same command calls, for
//! compatibility and comparison. Both implement [`WorkerCommands`].
//!
//! Dropping a wrapper stops its workers (SIGTERM, then SIGKILL after a grace period), reaps them
//! and stops the controller: no orphan processes.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde_json::Value;
use warp_common::commands::{Command, ExecResult};
use warp_common::preprocessing::{
    CtfParams, CtfResult, ExportParams, ExportResult, GainRefLoaded, LoadGainRefParams,
    LoadStackParams, MovementParams, MovementResult, StackLoaded, ThumbnailParams, ThumbnailResult,
};
use warp_common::protocol::{
    ControllerStatus, InitPart, Target, TaskDetail, TaskResult, TaskSpec, TaskState, WorkerId,
    WorkerInfo,
};

use crate::http::ApiError;

/// Environment variable naming this process to the workers it spawns: a worker whose parent is
/// gone stops by itself (the worker's
/// `signals::watch_parent`), so no orphan is left even when this process is SIGKILLed.
const PARENT_PID_ENV: &str = "WARP_PARENT_PID";
use crate::server::{Controller, ControllerConfig, WorkerEvent};

/// What can go wrong in a wrapper call.
#[derive(Debug)]
#[non_exhaustive]
pub enum WrapperError {
    /// `start_controller` was not called.
    NoController,
    /// The controller refused the request.
    Controller(ApiError),
    /// A worker could not be started or did not register.
    Spawn(String),
    /// The task failed; `error` is the worker's (or the controller's) message.
    TaskFailed {
        /// The task.
        task: uuid::Uuid,
        /// Why.
        error: String,
    },
    /// The task was cancelled.
    Cancelled(uuid::Uuid),
    /// No result within the wrapper's command timeout; the task was cancelled, so it does
    /// not keep its worker busy.
    Timeout(uuid::Uuid),
    /// The embedded controller stopped while the call waited.
    ControllerStopped,
    /// A worker answered with a result that is not what the command returns (a buggy or
    /// older worker); `error` says what was wrong.
    BadResult {
        /// The command whose result it was.
        command: String,
        /// What was wrong with it.
        error: String,
    },
    /// The direct-mode worker could not be reached or refused the command.
    Direct(String),
}

impl std::fmt::Display for WrapperError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WrapperError::NoController => f.write_str("no controller: call start_controller first"),
            WrapperError::Controller(e) => write!(f, "controller refused the request: {e}"),
            WrapperError::Spawn(m) => write!(f, "cannot start a worker: {m}"),
            WrapperError::TaskFailed { task, error } => write!(f, "task {task} failed: {error}"),
            WrapperError::Cancelled(t) => write!(f, "task {t} was cancelled"),
            WrapperError::Timeout(t) => write!(
                f,
                "task {t} did not finish within the command timeout (it was cancelled)"
            ),
            WrapperError::ControllerStopped => {
                f.write_str("the controller stopped before the task finished")
            }
            WrapperError::BadResult { command, error } => {
                write!(f, "the worker's {command} result is malformed: {error}")
            }
            WrapperError::Direct(m) => write!(f, "direct-mode worker: {m}"),
        }
    }
}

impl std::error::Error for WrapperError {}

impl From<ApiError> for WrapperError {
    fn from(e: ApiError) -> Self {
        WrapperError::Controller(e)
    }
}

/// The command calls both wrappers offer, named after Warp's `WorkerWrapper` methods where
/// Warp has them. Each call blocks until the worker answers.
pub trait WorkerCommands {
    /// Runs `commands` in order on one worker; returns one result per command.
    fn execute(&self, commands: Vec<Command>) -> Result<Vec<Value>, WrapperError>;

    /// Runs an external program.
    fn exec(&self, argv: &[&str]) -> Result<ExecResult, WrapperError> {
        run_typed(self, Command::exec(argv.iter().copied()))
    }

    /// Sleeps on the worker.
    fn sleep(&self, ms: u64) -> Result<(), WrapperError> {
        self.execute(vec![Command::Sleep { ms }]).map(|_| ())
    }

    /// Returns `value` from the worker (a round trip; the no-op of benchmarks).
    fn echo(&self, value: Value) -> Result<Value, WrapperError> {
        let r = only_result(self.execute(vec![Command::Echo { value }])?, "Echo")?;
        match r {
            Value::Object(mut m) if m.contains_key("value") => {
                Ok(m.remove("value").expect("checked"))
            }
            other => Err(WrapperError::BadResult {
                command: "Echo".into(),
                error: format!("expected an object with 'value', got {other}"),
            }),
        }
    }

    /// Warp's `WaitAsyncTasks`.
    fn wait_async_tasks(&self) -> Result<(), WrapperError> {
        self.execute(vec![Command::WaitAsyncTasks {}]).map(|_| ())
    }

    /// Warp's `GcCollect`.
    fn gc_collect(&self) -> Result<(), WrapperError> {
        self.execute(vec![Command::GcCollect {}]).map(|_| ())
    }

    /// Warp's `LoadGainRef`: the gain reference later stacks are corrected with.
    fn load_gain_ref(&self, p: LoadGainRefParams) -> Result<GainRefLoaded, WrapperError> {
        run_typed(self, Command::LoadGainRef(p))
    }

    /// Warp's `LoadStack`: loads a movie on the worker (replacing the previous one).
    fn load_stack(&self, p: LoadStackParams) -> Result<StackLoaded, WrapperError> {
        run_typed(self, Command::LoadStack(p))
    }

    /// Warp's `MovieProcessMovement` on the loaded movie.
    fn movie_process_movement(&self, p: MovementParams) -> Result<MovementResult, WrapperError> {
        run_typed(self, Command::MovieProcessMovement(p))
    }

    /// Warp's `MovieProcessCTF` on the loaded movie.
    fn movie_process_ctf(&self, p: CtfParams) -> Result<CtfResult, WrapperError> {
        run_typed(self, Command::MovieProcessCtf(p))
    }

    /// Warp's `MovieExportMovie`: writes the aligned, dose-weighted average.
    fn movie_export_movie(&self, p: ExportParams) -> Result<ExportResult, WrapperError> {
        run_typed(self, Command::MovieExportMovie(p))
    }

    /// Warp's `MovieCreateThumbnail`: writes a PNG of the average.
    fn movie_create_thumbnail(&self, p: ThumbnailParams) -> Result<ThumbnailResult, WrapperError> {
        run_typed(self, Command::MovieCreateThumbnail(p))
    }
}

/// Runs one command on `w` and decodes its result as `T`.
fn run_typed<T: serde::de::DeserializeOwned>(
    w: &(impl WorkerCommands + ?Sized),
    c: Command,
) -> Result<T, WrapperError> {
    let name = c.name();
    let v = only_result(w.execute(vec![c])?, name)?;
    serde_json::from_value(v).map_err(|e| WrapperError::BadResult {
        command: name.into(),
        error: e.to_string(),
    })
}

/// The one result of a one-command call.
fn only_result(results: Vec<Value>, command: &str) -> Result<Value, WrapperError> {
    let n = results.len();
    match <[Value; 1]>::try_from(results) {
        Ok([v]) => Ok(v),
        Err(_) => Err(WrapperError::BadResult {
            command: command.into(),
            error: format!("{n} results for one command"),
        }),
    }
}

/// Checks that a task's results answer its commands one to one.
fn results_for(commands: &[Command], results: Vec<Value>) -> Result<Vec<Value>, WrapperError> {
    if results.len() == commands.len() {
        return Ok(results);
    }
    Err(WrapperError::BadResult {
        command: commands
            .iter()
            .map(Command::name)
            .collect::<Vec<_>>()
            .join(", "),
        error: format!("{} results for {} commands", results.len(), commands.len()),
    })
}

/// Finds the `warp-worker` binary: `$WARP_WORKER_BIN`, then beside the running executable (and
/// one directory up, for test and example binaries under `target/*/deps|examples`), then `PATH`.
pub fn find_worker_binary() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("WARP_WORKER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        candidates.push(dir.join("warp-worker"));
        if let Some(up) = dir.parent() {
            candidates.push(up.join("warp-worker"));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("warp-worker")));
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        "warp-worker not found beside this program or in PATH; build it (cargo build) or set WARP_WORKER_BIN".to_string()
    })
}

/// Settings of the wrappers.
#[derive(Debug, Clone)]
pub struct WrapperOptions {
    /// Address the embedded controller binds (127.0.0.1 for local workers only).
    pub bind: String,
    /// Controller settings (`token` and `port` are filled in by the wrapper).
    pub poll_hold: Duration,
    /// See [`ControllerConfig::heartbeat_timeout`].
    pub heartbeat_timeout: Duration,
    /// See [`ControllerConfig::task_timeout`].
    pub task_timeout: Duration,
    /// See [`ControllerConfig::max_attempts`].
    pub max_attempts: u32,
    /// How long `add_worker` waits for the registration.
    pub startup_timeout: Duration,
    /// How long a blocking command call waits (None = until the task ends).
    pub command_timeout: Option<Duration>,
    /// Start workers with `-s` (no log lines on stderr; the controller still has their console).
    pub silent_workers: bool,
    /// Extra arguments for every spawned worker.
    pub worker_args: Vec<String>,
    /// How long dropped workers get to exit after SIGTERM before SIGKILL.
    pub stop_grace: Duration,
    /// Enrollment token of the embedded controller; a fresh random one when `None`. Set it
    /// when remote workers must enroll (they need to know it).
    pub token: Option<String>,
    /// Keep the embedded controller's queue in this directory ([`ControllerConfig::state_dir`]):
    /// a main program that restarts gets its tasks back (ids, results, order). Workers that
    /// outlived it re-attach with their leases if it listens on the same port again; otherwise
    /// their tasks go back to the queue after the heartbeat timeout, or at once with
    /// [`Controller::forget_worker`] (what `preprocess` does for its old local workers).
    pub state_dir: Option<std::path::PathBuf>,
    /// Serve HTTPS ([`ControllerConfig::tls`]); spawned workers are given `--ca-file` with the
    /// certificate, so it must name 127.0.0.1 (scripts/make-cert.sh always adds it).
    pub tls: Option<crate::TlsFiles>,
    /// The read-only view token of the embedded controller ([`ControllerConfig::view_token`]):
    /// what the status page (`GET /`) and `/metrics` take.
    pub view_token: Option<String>,
    /// The admin token of the embedded controller (`None`: a random one, so the admin routes
    /// are reachable in-process only).
    pub admin_token: Option<String>,
}

impl Default for WrapperOptions {
    fn default() -> Self {
        WrapperOptions {
            bind: "127.0.0.1".into(),
            poll_hold: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(120),
            task_timeout: Duration::from_secs(1800),
            max_attempts: 3,
            startup_timeout: Duration::from_secs(30),
            command_timeout: None,
            silent_workers: false,
            worker_args: Vec::new(),
            stop_grace: Duration::from_secs(5),
            token: None,
            state_dir: None,
            tls: None,
            view_token: None,
            admin_token: None,
        }
    }
}

/// What the wrapper tells its user about workers.
#[derive(Debug, Clone, PartialEq)]
pub enum WrapperEvent {
    /// The controller lost the worker (heartbeat timeout or deregistration).
    WorkerLost {
        /// Which.
        worker: WorkerId,
        /// Why.
        reason: String,
    },
    /// A worker process this wrapper spawned exited. Unless it deregistered first, the
    /// controller has been told (`ControllerView::worker_exited`): its task's attempt counts
    /// as failed and the task runs again elsewhere, now rather than after the heartbeat
    /// timeout.
    WorkerDied {
        /// Which.
        worker: WorkerId,
        /// The device it was started for (to start a replacement).
        device: i32,
        /// Its exit status as text.
        status: String,
    },
}

struct Spawned {
    /// Each spawned worker's process and device.
    children: Mutex<HashMap<WorkerId, (Child, i32)>>,
    events: Mutex<Vec<Sender<WrapperEvent>>>,
}

impl Spawned {
    fn notify(&self, e: WrapperEvent) {
        self.events
            .lock()
            .expect("events lock")
            .retain(|s| s.send(e.clone()).is_ok());
    }
}

/// See the module docs.
pub struct ControllerBasedWorkerWrapper {
    opts: WrapperOptions,
    controller: Option<Controller>,
    spawned: Arc<Spawned>,
    monitor: Option<(Sender<()>, JoinHandle<()>)>,
}

impl Default for ControllerBasedWorkerWrapper {
    fn default() -> Self {
        Self::new()
    }
}

impl ControllerBasedWorkerWrapper {
    /// A wrapper with default options; call [`Self::start_controller`] next.
    pub fn new() -> Self {
        Self::with_options(WrapperOptions::default())
    }

    /// A wrapper with the given options.
    pub fn with_options(opts: WrapperOptions) -> Self {
        ControllerBasedWorkerWrapper {
            opts,
            controller: None,
            spawned: Arc::new(Spawned {
                children: Mutex::new(HashMap::new()),
                events: Mutex::new(Vec::new()),
            }),
            monitor: None,
        }
    }

    /// Starts the embedded controller on `port` (0 = any free port) and returns the port.
    pub fn start_controller(&mut self, port: u16) -> Result<u16, WrapperError> {
        if let Some(c) = &self.controller {
            return Ok(c.port());
        }
        let token = match &self.opts.token {
            Some(t) => t.clone(),
            None => crate::auth::random_token()
                .map_err(|e| WrapperError::Spawn(format!("no token: {e}")))?,
        };
        let mut cfg = ControllerConfig::new(token);
        cfg.bind = self.opts.bind.clone();
        cfg.port = port;
        cfg.poll_hold = self.opts.poll_hold;
        cfg.heartbeat_timeout = self.opts.heartbeat_timeout;
        cfg.task_timeout = self.opts.task_timeout;
        cfg.max_attempts = self.opts.max_attempts;
        cfg.state_dir.clone_from(&self.opts.state_dir);
        cfg.tls.clone_from(&self.opts.tls);
        cfg.view_token.clone_from(&self.opts.view_token);
        if let Some(t) = &self.opts.admin_token {
            cfg.admin_token.clone_from(t);
        }
        let controller = Controller::start(cfg).map_err(WrapperError::Spawn)?;
        let port = controller.port();
        // Forward the controller's worker losses and watch our children for exits.
        let lost = controller.subscribe();
        let view = controller.view();
        let spawned = Arc::clone(&self.spawned);
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
        let handle = std::thread::Builder::new()
            .name("wrapper-monitor".into())
            .spawn(move || monitor(spawned, view, lost, stop_rx))
            .map_err(|e| WrapperError::Spawn(format!("cannot start the monitor thread: {e}")))?;
        self.monitor = Some((stop_tx, handle));
        self.controller = Some(controller);
        Ok(port)
    }

    /// The embedded controller.
    pub fn controller(&self) -> Result<&Controller, WrapperError> {
        self.controller.as_ref().ok_or(WrapperError::NoController)
    }

    /// Spawns a local `warp-worker -d device` and returns its id once it has registered.
    pub fn add_worker(&self, device: i32) -> Result<WorkerId, WrapperError> {
        let controller = self.controller()?;
        let bin = find_worker_binary().map_err(WrapperError::Spawn)?;
        let spawn_id = uuid::Uuid::new_v4().to_string();
        let registrations = controller.subscribe();
        let mut cmd = Process::new(&bin);
        cmd.arg("-d")
            .arg(device.to_string())
            .arg("--controller")
            .arg(controller.url());
        if let Some(tls) = &self.opts.tls {
            cmd.arg("--ca-file").arg(&tls.cert);
        }
        if self.opts.silent_workers {
            cmd.arg("-s");
        }
        cmd.args(&self.opts.worker_args)
            .env("WARP_TOKEN", controller.token())
            .env("WARP_SPAWN_ID", &spawn_id)
            .env(PARENT_PID_ENV, std::process::id().to_string())
            .stdin(Stdio::null());
        let mut child = cmd
            .spawn()
            .map_err(|e| WrapperError::Spawn(format!("{}: {e}", bin.display())))?;
        let deadline = Instant::now() + self.opts.startup_timeout;
        loop {
            match registrations.recv_timeout(Duration::from_millis(50)) {
                Ok(WorkerEvent::Registered {
                    worker,
                    spawn_id: Some(s),
                }) if s == spawn_id => {
                    self.spawned
                        .children
                        .lock()
                        .expect("children lock")
                        .insert(worker, (child, device));
                    return Ok(worker);
                }
                Ok(_) | Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return Err(WrapperError::ControllerStopped);
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(WrapperError::Spawn(format!(
                    "worker exited before registering ({status})"
                )));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(WrapperError::Spawn(format!(
                    "worker did not register within {:.1} s",
                    self.opts.startup_timeout.as_secs_f64()
                )));
            }
        }
    }

    /// Stops one spawned worker (SIGTERM, then SIGKILL after the grace period).
    pub fn remove_worker(&self, worker: WorkerId) -> bool {
        let child = self
            .spawned
            .children
            .lock()
            .expect("children lock")
            .remove(&worker);
        match child {
            Some((c, _)) => {
                stop_children(vec![c], self.opts.stop_grace);
                true
            }
            None => false,
        }
    }

    /// Process ids of the spawned workers that are still running.
    pub fn worker_pids(&self) -> HashMap<WorkerId, u32> {
        self.spawned
            .children
            .lock()
            .expect("children lock")
            .iter()
            .map(|(w, (c, _))| (*w, c.id()))
            .collect()
    }

    /// Commands addressed to one worker: a stateful sequence stays on it.
    pub fn on(&self, worker: WorkerId) -> Addressed<'_> {
        Addressed {
            wrapper: self,
            target: Target::Worker(worker),
        }
    }

    /// Commands for any worker.
    pub fn any(&self) -> Addressed<'_> {
        Addressed {
            wrapper: self,
            target: Target::Any,
        }
    }

    /// Commands for any worker serving `device`.
    pub fn device(&self, device: i32) -> Addressed<'_> {
        Addressed {
            wrapper: self,
            target: Target::Device(device),
        }
    }

    /// Runs a whole work package and waits for its result. When the command timeout passes
    /// first, the task is cancelled (a running attempt is stopped on its worker), so the next
    /// call does not queue behind it and a retry does not run the commands twice.
    pub fn execute_package(&self, spec: TaskSpec) -> Result<TaskResult, WrapperError> {
        let controller = self.controller()?;
        let (task, rx) = controller.submit_watch(spec)?;
        let detail = match self.opts.command_timeout {
            Some(t) => match rx.recv_timeout(t) {
                Ok(d) => d,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    // Cancelling ends the task at once (a running attempt is stopped on its
                    // worker), and the watch channel then gets its terminal detail: the
                    // cancel's, or the outcome it reached just before, which stands.
                    let _ = controller.cancel(task);
                    let d = rx.recv().map_err(|_| WrapperError::ControllerStopped)?;
                    if d.state == TaskState::Cancelled {
                        return Err(WrapperError::Timeout(task));
                    }
                    d
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return Err(WrapperError::ControllerStopped);
                }
            },
            None => rx.recv().map_err(|_| WrapperError::ControllerStopped)?,
        };
        task_outcome(detail)
    }

    /// `GET /api/workers/status`, in process.
    pub fn get_controller_status(&self) -> Result<ControllerStatus, WrapperError> {
        Ok(self.controller()?.status())
    }

    /// `GET /api/workers/active`, in process.
    pub fn get_active_workers(&self) -> Result<Vec<WorkerInfo>, WrapperError> {
        Ok(self.controller()?.workers())
    }

    /// Tasks waiting in any queue.
    pub fn get_queue_length(&self) -> Result<usize, WrapperError> {
        Ok(self.controller()?.queue_length())
    }

    /// A channel of worker losses and deaths from now on.
    pub fn worker_events(&self) -> Receiver<WrapperEvent> {
        let (tx, rx) = crossbeam_channel::unbounded();
        self.spawned.events.lock().expect("events lock").push(tx);
        rx
    }
}

impl Drop for ControllerBasedWorkerWrapper {
    fn drop(&mut self) {
        let children: Vec<Child> = self
            .spawned
            .children
            .lock()
            .expect("children lock")
            .drain()
            .map(|(_, (c, _))| c)
            .collect();
        stop_children(children, self.opts.stop_grace);
        if let Some((stop, handle)) = self.monitor.take() {
            drop(stop);
            let _ = handle.join();
        }
        if let Some(c) = self.controller.take() {
            c.shutdown();
        }
    }
}

/// A target bound to a wrapper; implements [`WorkerCommands`].
pub struct Addressed<'a> {
    wrapper: &'a ControllerBasedWorkerWrapper,
    target: Target,
}

impl Addressed<'_> {
    /// Runs `commands`, skipping `init` on a worker that holds its fingerprint.
    pub fn execute_with_init(
        &self,
        init: Option<InitPart>,
        commands: Vec<Command>,
    ) -> Result<TaskResult, WrapperError> {
        let mut spec = TaskSpec::new(commands);
        spec.init = init;
        spec.target = self.target;
        self.wrapper.execute_package(spec)
    }
}

impl WorkerCommands for Addressed<'_> {
    fn execute(&self, commands: Vec<Command>) -> Result<Vec<Value>, WrapperError> {
        let results = self.execute_with_init(None, commands.clone())?.results;
        results_for(&commands, results)
    }
}

fn task_outcome(detail: TaskDetail) -> Result<TaskResult, WrapperError> {
    match detail.state {
        TaskState::Completed => {
            let v = detail.result.unwrap_or(Value::Null);
            serde_json::from_value(v).map_err(|e| WrapperError::BadResult {
                command: format!("task {}", detail.id),
                error: format!("not a task result: {e}"),
            })
        }
        TaskState::Cancelled => Err(WrapperError::Cancelled(detail.id)),
        _ => Err(WrapperError::TaskFailed {
            task: detail.id,
            error: detail.error.unwrap_or_default(),
        }),
    }
}

fn monitor(
    spawned: Arc<Spawned>,
    view: crate::server::ControllerView,
    lost: Receiver<WorkerEvent>,
    stop: Receiver<()>,
) {
    loop {
        crossbeam_channel::select! {
            recv(lost) -> e => match e {
                Ok(WorkerEvent::Lost { worker, reason }) => spawned.notify(WrapperEvent::WorkerLost { worker, reason }),
                Ok(_) => {}
                Err(_) => return,
            },
            recv(stop) -> _ => return,
            default(Duration::from_millis(100)) => {}
        }
        let mut died = Vec::new();
        {
            let mut children = spawned.children.lock().expect("children lock");
            children.retain(|w, (c, device)| match c.try_wait() {
                Ok(Some(status)) => {
                    died.push((*w, *device, status));
                    false
                }
                _ => true,
            });
        }
        for (worker, device, status) in died {
            if status.success() {
                log::info!("worker {worker} exited: {status}");
            } else {
                log::warn!("worker {worker} (device {device}) exited: {status}");
            }
            let status = status.to_string();
            view.worker_exited(worker, &status);
            spawned.notify(WrapperEvent::WorkerDied {
                worker,
                device,
                status,
            });
        }
    }
}

/// SIGTERM each child, wait up to `grace` for all, SIGKILL the rest, reap everything.
fn stop_children(mut children: Vec<Child>, grace: Duration) {
    for c in &children {
        // SAFETY: kill(2) with a pid we spawned and have not reaped (Child still owns it).
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    while !children.is_empty() && Instant::now() < deadline {
        children.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
        std::thread::sleep(Duration::from_millis(10));
    }
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

// ----- direct (traditional) mode -------------------------------------------------------------

/// One worker in direct mode: spawned with `-p 0 --pipe NAME`, its port and per-run secret
/// read from the named pipe (mode 600), pulsed every second (it exits after 10 s without a
/// pulse), commands sent to its own REST API with the secret as a bearer token.
pub struct DirectWorkerWrapper {
    child: Arc<Mutex<Option<Child>>>,
    port: u16,
    base: String,
    agent: ureq::Agent,
    pulse: Option<(Sender<()>, JoinHandle<()>)>,
    died: Receiver<String>,
    fifo: PathBuf,
}

impl DirectWorkerWrapper {
    /// Spawns `warp-worker -d device -p 0 --pipe <fifo>` and waits for its port.
    pub fn spawn(device: i32, silent: bool) -> Result<DirectWorkerWrapper, WrapperError> {
        let bin = find_worker_binary().map_err(WrapperError::Spawn)?;
        let fifo = std::env::temp_dir().join(format!("warp-pipe-{}", uuid::Uuid::new_v4()));
        make_fifo(&fifo)
            .map_err(|e| WrapperError::Spawn(format!("mkfifo {}: {e}", fifo.display())))?;
        let mut cmd = Process::new(&bin);
        cmd.arg("-d")
            .arg(device.to_string())
            .arg("-p")
            .arg("0")
            .arg("--pipe")
            .arg(&fifo);
        if silent {
            cmd.arg("-s");
        }
        let spawned = cmd
            .env(PARENT_PID_ENV, std::process::id().to_string())
            .stdin(Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_file(&fifo);
                return Err(WrapperError::Spawn(format!("{}: {e}", bin.display())));
            }
        };
        let (port, secret) = match read_port(&fifo, &mut child, Duration::from_secs(10)) {
            Ok(p) => p,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_file(&fifo);
                return Err(WrapperError::Spawn(e));
            }
        };
        let base = format!("http://127.0.0.1:{port}");
        let agent = agent_with_secret(&secret);
        let child = Arc::new(Mutex::new(Some(child)));
        let (died_tx, died) = crossbeam_channel::bounded(1);
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
        let (c2, a2, url) = (
            Arc::clone(&child),
            agent.clone(),
            format!("{base}/v1/Service/SendPulse"),
        );
        let handle = std::thread::Builder::new()
            .name("direct-pulse".into())
            .spawn(move || {
                loop {
                    if let Some(status) = c2
                        .lock()
                        .expect("child lock")
                        .as_mut()
                        .and_then(|c| c.try_wait().ok().flatten())
                    {
                        let _ = died_tx.send(status.to_string());
                        return;
                    }
                    let _ = a2.post(&url).timeout(Duration::from_secs(2)).call();
                    // Stop on a message or when the wrapper is gone.
                    if !matches!(
                        stop_rx.recv_timeout(Duration::from_secs(1)),
                        Err(crossbeam_channel::RecvTimeoutError::Timeout)
                    ) {
                        return;
                    }
                }
            })
            .map_err(|e| WrapperError::Spawn(format!("cannot start the pulse thread: {e}")))?;
        Ok(DirectWorkerWrapper {
            child,
            port,
            base,
            agent,
            pulse: Some((stop_tx, handle)),
            died,
            fifo,
        })
    }

    /// The worker's own port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Receives the worker's exit status once it dies.
    pub fn death(&self) -> &Receiver<String> {
        &self.died
    }

    /// The worker's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child
            .lock()
            .expect("child lock")
            .as_ref()
            .map(Child::id)
    }

    fn evaluate(&self, command: &Command) -> Result<Value, WrapperError> {
        let url = format!("{}/v1/Service/EvaluateCommand", self.base);
        match self.agent.post(&url).send_json(command) {
            Ok(resp) => {
                let bad = |error: String| WrapperError::BadResult {
                    command: command.name().into(),
                    error,
                };
                let v: Value = resp.into_json().map_err(|e| bad(e.to_string()))?;
                match v {
                    Value::Object(mut m) if m.contains_key("result") => {
                        Ok(m.remove("result").expect("checked"))
                    }
                    other => Err(bad(format!(
                        "expected an object with 'result', got {other}"
                    ))),
                }
            }
            Err(ureq::Error::Status(code, resp)) => {
                let v: Value = resp.into_json().unwrap_or(Value::Null);
                let msg = v["error"].as_str().unwrap_or("no message").to_string();
                Err(WrapperError::Direct(format!(
                    "{} failed (HTTP {code}): {msg}",
                    command.name()
                )))
            }
            Err(e) => Err(WrapperError::Direct(format!(
                "cannot reach the worker on port {}: {e}",
                self.port
            ))),
        }
    }
}

impl WorkerCommands for DirectWorkerWrapper {
    fn execute(&self, commands: Vec<Command>) -> Result<Vec<Value>, WrapperError> {
        commands.iter().map(|c| self.evaluate(c)).collect()
    }
}

impl Drop for DirectWorkerWrapper {
    fn drop(&mut self) {
        let _ = self
            .agent
            .post(&format!("{}/v1/Service/Exit", self.base))
            .timeout(Duration::from_secs(1))
            .call();
        if let Some((stop, handle)) = self.pulse.take() {
            let _ = stop.send(());
            let _ = handle.join();
        }
        if let Some(c) = self.child.lock().expect("child lock").take() {
            stop_children(vec![c], Duration::from_secs(2));
        }
        let _ = std::fs::remove_file(&self.fifo);
    }
}

/// An agent that sends `Authorization: Bearer SECRET` with every request (pulses, commands,
/// Exit alike).
// ureq's middleware signature returns its (large) error type; that is not ours to shrink.
#[allow(clippy::result_large_err)]
fn agent_with_secret(secret: &str) -> ureq::Agent {
    let auth = format!("Bearer {secret}");
    ureq::AgentBuilder::new()
        .try_proxy_from_env(false)
        .middleware(move |rq: ureq::Request, next: ureq::MiddlewareNext<'_>| {
            next.handle(rq.set("Authorization", &auth))
        })
        .build()
}

fn make_fifo(path: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: mkfifo(3) with a valid NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Reads "PORT\nSECRET\n" from the FIFO without blocking forever if the child dies first.
fn read_port(fifo: &Path, child: &mut Child, timeout: Duration) -> Result<(u16, String), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)
        .map_err(|e| format!("open {}: {e}", fifo.display()))?;
    let deadline = Instant::now() + timeout;
    let mut text = String::new();
    let mut buf = [0u8; 64];
    loop {
        match f.read(&mut buf) {
            Ok(n) if n > 0 => text.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => {}
        }
        if let Some((line, rest)) = text.split_once('\n')
            && let Some((secret, _)) = rest.split_once('\n')
        {
            let port = line.trim().parse().map_err(|_| {
                format!(
                    "the worker wrote '{}' to the pipe, not a port",
                    warp_common::for_log(line, 64)
                )
            })?;
            if secret.trim().is_empty() {
                return Err("the worker wrote no secret to the pipe (an older build?)".into());
            }
            return Ok((port, secret.trim().to_string()));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the worker exited before writing its port ({status})"
            ));
        }
        if Instant::now() > deadline {
            let what = if text.contains('\n') {
                "its port but no secret (an older warp-worker build? rebuild both)"
            } else {
                "no port"
            };
            return Err(format!(
                "the worker wrote {what} to {} within {:.0} s",
                fifo.display(),
                timeout.as_secs_f64()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp_common::protocol::{
        Capabilities, PollResponse, RegisterRequest, RegisterResponse, ReportState, StatusUpdate,
    };

    /// A worker that speaks the protocol but answers every task with `result`: what a buggy or
    /// older worker build could send. Serves `tasks` tasks, then returns.
    fn buggy_worker(url: String, token: String, tasks: usize, result: Value) -> JoinHandle<()> {
        std::thread::spawn(move || {
            let agent = ureq::AgentBuilder::new().try_proxy_from_env(false).build();
            let reg: RegisterResponse = agent
                .post(&format!("{url}/api/workers/register"))
                .set("Authorization", &format!("Bearer {token}"))
                .send_json(RegisterRequest {
                    protocol_version: warp_common::PROTOCOL_VERSION,
                    device: 0,
                    hostname: "buggy".into(),
                    capabilities: Capabilities::default(),
                    worker_version: "0.0.0-buggy".into(),
                    spawn_id: None,
                    pid: None,
                })
                .unwrap()
                .into_json()
                .unwrap();
            let auth = format!("Bearer {}", reg.token);
            let mut served = 0;
            while served < tasks {
                let r = agent
                    .get(&format!("{url}/api/workers/{}/poll", reg.worker_id))
                    .set("Authorization", &auth)
                    .call()
                    .unwrap();
                if r.status() != 200 {
                    continue;
                }
                let p: PollResponse = r.into_json().unwrap();
                agent
                    .post(&format!(
                        "{url}/api/workers/{}/tasks/{}/status",
                        reg.worker_id, p.task.id
                    ))
                    .set("Authorization", &auth)
                    .send_json(StatusUpdate {
                        lease: p.task.lease,
                        state: ReportState::Completed,
                        result: Some(result.clone()),
                        error: None,
                        progress: None,
                        elapsed_ms: None,
                        held_fingerprint: None,
                        console: Vec::new(),
                        want_next: false,
                        permanent: false,
                        also: Vec::new(),
                    })
                    .unwrap();
                served += 1;
            }
        })
    }

    /// Issue 10: `.remove(0)` on an empty result list and indexing into non-object JSON
    /// panicked in the embedding program; each is an error now.
    #[test]
    fn malformed_results_from_a_worker_are_errors_not_panics() {
        let cases = [
            serde_json::json!({"results": [], "init_ran": false}),
            serde_json::json!({"results": [[1, 2]], "init_ran": false}),
            serde_json::json!({"results": [7], "init_ran": false}),
            serde_json::json!("not a task result"),
        ];
        for result in cases {
            let mut w = ControllerBasedWorkerWrapper::with_options(WrapperOptions {
                poll_hold: Duration::from_millis(200),
                ..WrapperOptions::default()
            });
            w.start_controller(0).unwrap();
            let c = w.controller().unwrap();
            // Three calls below reach the worker.
            let worker = buggy_worker(c.url(), c.token().to_string(), 3, result.clone());
            let e = w.any().echo(serde_json::json!(1)).unwrap_err();
            assert!(matches!(e, WrapperError::BadResult { .. }), "{result}: {e}");
            assert!(e.to_string().contains("malformed"), "{e}");
            let e = w.any().exec(&["true"]).unwrap_err();
            assert!(matches!(e, WrapperError::BadResult { .. }), "{result}: {e}");
            // Any one value answers GcCollect; no value or no task result does not.
            let r = w.any().execute(vec![Command::GcCollect {}]);
            if result["results"].as_array().map(Vec::len) == Some(1) {
                assert!(r.is_ok(), "{result}: {r:?}");
            } else {
                assert!(
                    matches!(r, Err(WrapperError::BadResult { .. })),
                    "{result}: {r:?}"
                );
            }
            worker.join().unwrap();
        }
    }

    #[test]
    fn a_stopped_controller_is_not_a_spawn_failure() {
        let e = WrapperError::ControllerStopped.to_string();
        assert!(!e.contains("cannot start a worker"), "{e}");
        let e = WrapperError::BadResult {
            command: "Echo".into(),
            error: "x".into(),
        }
        .to_string();
        assert!(!e.contains("direct-mode"), "{e}");
    }
}

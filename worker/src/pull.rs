//! Pull mode: register, long-poll, execute, report; reconnect and re-register on failure.
//!
//! ```text
//!            register ──(404 unknown_worker / 401 / 410)──┐
//!               │                                         │
//!               ▼                                         │
//!   ┌──────► poll ──204──┐                                │
//!   │           │ 200    │                                │
//!   │           ▼        │                                │
//!   │  ┌──► execute      │  every failed call: backoff,   │
//!   │  │        │        │  then retry; failing for       │
//!   │  │        ▼        │  --reconnect-for: exit 1       │
//!   │  └─ status(want_next) returns a task                │
//!   └────── status returns none ──────────────────────────┘
//! ```
//!
//! A reply may carry a batch (`--batch`, [`warp_common::protocol::PollResponse::more`]): the
//! loop runs its tasks in order and sends their reports in the last one's call
//! ([`warp_common::protocol::StatusUpdate::also`]). A stop in the middle hands the rest back
//! with the deregistration, the finished ones too (their reports were not sent).
//!
//! Three threads: the main loop (this module) is the only one that registers, polls and sends
//! terminal reports; the heartbeat thread ([`crate::heartbeat`]) beats, reports `running` and
//! progress, and cancels on the controller's word; the watcher thread turns a stop (signal,
//! `--idle-exit`, [`PullConfig::stop`]) into a cancel of the current task and a deregistration,
//! which makes the controller answer the parked poll at once.

use crate::WorkerError;
use crate::client::{CallError, Client, Incoming, Session};
use crate::config::PullConfig;
use crate::console;
use crate::exec::{CancelFlag, Executor};
use crate::signals;
use crate::state::{CONSOLE_BATCH, Current, Kept, WorkerState};
use crossbeam_channel::{Receiver, select};
use log::{debug, error, info, warn};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use warp_common::commands::Command;
use warp_common::protocol::{
    Capabilities, GpuInfo, RegisterRequest, ReportState, StatusUpdate, TaskId, TaskReport,
};
use warp_common::{PROTOCOL_VERSION, VERSION};

/// Runs pull mode until a clean stop (`Ok`) or a failure the worker cannot recover from.
/// The compute backend is chosen first (`--backend`; a GPU is probed before anything else).
pub fn run_pull(cfg: PullConfig) -> Result<(), WorkerError> {
    console::init(cfg.silent, crate::log_level(cfg.verbose));
    let mut exec = crate::make_executor(cfg.backend, cfg.device)?;
    exec.set_read_ahead(cfg.read_ahead);
    run_pull_with(cfg, exec)
}

/// [`run_pull`] with a given executor (and so backend).
pub fn run_pull_with(cfg: PullConfig, exec: Executor) -> Result<(), WorkerError> {
    console::init(cfg.silent, crate::log_level(cfg.verbose));
    info!("warp-worker {VERSION} starting in pull mode (protocol {PROTOCOL_VERSION})");
    info!("configuration: {cfg:?}");
    let client = Client::new(
        &cfg.controller,
        cfg.proxy.as_deref(),
        cfg.ca_file.as_deref(),
    )
    .map_err(WorkerError::Config)?;
    let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
    let sh = Arc::new(WorkerState::new(
        cfg,
        client,
        console::global().clone(),
        wake_tx,
    ));
    // Dropping `done_tx` disconnects `done_rx`: both helper threads end at once.
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
    let watcher = {
        let (sh, done) = (sh.clone(), done_rx.clone());
        std::thread::Builder::new()
            .name("watcher".into())
            .spawn(move || watch(&sh, &done))
    };
    let heartbeat = crate::heartbeat::spawn(sh.clone(), wake_rx, done_rx);
    let mut worker = Worker {
        sh: sh.clone(),
        exec,
        failures: 0,
        outage_since: None,
        poll_hold: Duration::from_secs(30),
        rng: Rng::new(),
    };
    let result = worker.run();
    if result.is_ok() {
        let reason = sh.stop_reason();
        sh.deregister_once(if reason.is_empty() {
            "stopped"
        } else {
            &reason
        });
    }
    drop(done_tx);
    for t in [watcher.ok(), heartbeat.ok()].into_iter().flatten() {
        let _ = t.join();
    }
    if let Some(reason) = sh.take_unhealthy() {
        return Err(WorkerError::Unhealthy(reason));
    }
    if result.is_ok() {
        info!("worker stopped cleanly");
    }
    result
}

/// Waits for a stop (signal, the config's stop, idle exit), then cancels the current task and
/// deregisters, which also ends a parked poll.
fn watch(sh: &WorkerState, done: &Receiver<()>) {
    let global = signals::global().receiver();
    let stop = sh.cfg.stop.receiver();
    let reason = loop {
        let wait = match sh.cfg.idle_exit {
            Some(idle) => {
                let idle_for = sh.idle_for();
                if idle_for >= idle && sh.current().is_none() {
                    break format!("idle for {:.1} s (--idle-exit)", idle_for.as_secs_f64());
                }
                idle.saturating_sub(idle_for).max(Duration::from_millis(10))
            }
            None => Duration::from_secs(3600),
        };
        select! {
            recv(done) -> _ => return,
            recv(global) -> _ => break "signal (SIGTERM/SIGINT)".to_string(),
            // Whoever triggered the stop may have said why (e.g. an unhealthy GPU).
            recv(stop) -> _ => break {
                let said = sh.stop_reason();
                if said.is_empty() { "stop requested".to_string() } else { said }
            },
            default(wait) => {}
        }
    };
    info!("stopping: {reason}");
    sh.set_stop_reason(reason.clone());
    sh.cfg.stop.trigger();
    if let Some(c) = sh.current().as_ref() {
        info!(
            "cancelling task {} (lease {}); the controller re-queues it",
            c.id, c.lease
        );
        c.cancel.cancel();
    }
    sh.deregister_once(&reason);
}

/// What to do after a failed call.
enum Handling {
    /// Backed off; try the same call again.
    Retry,
    /// The controller forgot us: re-register.
    Reregister,
    /// 409: the lease is stale.
    Stale,
    /// Another refusal: logged, nothing to retry.
    Refused,
}

/// The main loop's own state.
struct Worker {
    sh: Arc<WorkerState>,
    exec: Executor,
    /// Consecutive failed calls.
    failures: u32,
    /// When the current run of failed calls began.
    outage_since: Option<Instant>,
    /// The controller's poll hold, from registration.
    poll_hold: Duration,
    rng: Rng,
}

impl Worker {
    fn run(&mut self) -> Result<(), WorkerError> {
        if !self.register(true)? {
            return Ok(());
        }
        // Tasks received and not run yet (the rest of a batch), in order.
        let mut next: VecDeque<Incoming> = VecDeque::new();
        // Reports of the batch's tasks run so far: they go with the batch's last report.
        let mut done: Vec<TaskReport> = Vec::new();
        let mut pending: Option<(TaskId, StatusUpdate)> = None;
        // Final reports sent again before a poll: the controller answered them before its
        // journal had them, and no later reply said it does now.
        let mut resend: std::collections::VecDeque<(TaskId, StatusUpdate)> = Default::default();
        loop {
            if self.sh.stopping() {
                return Ok(());
            }
            if self.sh.take_reregister() {
                if let Some((id, r)) = pending.take() {
                    info!(
                        "dropping the report of task {id} lease {}: re-registered, so the lease is stale",
                        r.lease
                    );
                }
                if !done.is_empty() {
                    info!(
                        "dropping the reports of {} finished task(s) of the batch: re-registered, so their leases are stale",
                        done.len()
                    );
                    done.clear();
                }
                resend.clear();
                drop(self.sh.take_unconfirmed());
                if !self.register(false)? {
                    return Ok(());
                }
                next.clear();
                continue;
            }
            if pending.is_none()
                && let Some((id, mut report)) = resend.pop_front()
            {
                debug!("sending the report of task {id} again: no reply said it is on disk");
                report.want_next = false;
                pending = Some((id, report));
            }
            if let Some((id, report)) = pending.take() {
                match self
                    .sh
                    .session()
                    .map(|s| self.sh.client.status(&s, id, &report))
                {
                    Some(Ok(reply)) => {
                        self.reached();
                        if !reply.accepted {
                            debug!("controller did not record the report of task {id}");
                        }
                        for t in &reply.refused {
                            info!(
                                "task {t}: the controller refused its report (409): result discarded"
                            );
                        }
                        self.sh.note_durable(reply.durable);
                        if let (Some(receipt), Some(d)) = (reply.receipt, reply.durable) {
                            self.sh.keep_unconfirmed(Kept {
                                run: d.run,
                                receipt,
                                task: id,
                                report,
                            });
                        }
                        next = reply.next.into();
                    }
                    Some(Err(e)) => {
                        match self.handle(&format!("status report of task {id}"), &e)? {
                            Handling::Retry => pending = Some((id, report)),
                            Handling::Reregister => pending = Some((id, report)),
                            Handling::Stale => {
                                info!(
                                    "task {id} lease {} was revoked (409): result discarded",
                                    report.lease
                                )
                            }
                            Handling::Refused if !report.also.is_empty() => {
                                // Most likely a batch too large for one call (413): its
                                // reports one by one, so each result is judged alone.
                                warn!(
                                    "the report of a batch of {} task(s) was refused: {e}; sending them one by one",
                                    report.also.len() + 1
                                );
                                let mut last = report;
                                for r in std::mem::take(&mut last.also) {
                                    resend.push_back((r.task, r.update));
                                }
                                resend.push_back((id, last));
                            }
                            Handling::Refused
                                if report.result.is_some() || !report.console.is_empty() =>
                            {
                                // Most likely too large (413): report the failure without the
                                // payload, or the controller would hand the task out again.
                                warn!(
                                    "status report of task {id} refused: {e}; reporting the failure alone"
                                );
                                let mut slim = self.report(
                                    report.lease,
                                    ReportState::Failed,
                                    report.elapsed_ms.unwrap_or(0),
                                );
                                slim.console.clear();
                                slim.error =
                                    Some(format!("the controller refused the task's report: {e}"));
                                pending = Some((id, slim));
                            }
                            Handling::Refused => warn!("status report of task {id} refused: {e}"),
                        }
                    }
                    None => self.sh.request_reregister(),
                }
                continue;
            }
            let incoming = match next.pop_front() {
                Some(t) => t,
                // Never poll while a report may be missing from the controller's disk: the
                // poll would end that attempt as abandoned.
                None if self.sh.has_unconfirmed() => {
                    resend.extend(self.sh.take_unconfirmed());
                    continue;
                }
                None => {
                    next = self.poll()?.into();
                    match next.pop_front() {
                        Some(t) => t,
                        None => continue,
                    }
                }
            };
            if self.sh.stopping() {
                return Ok(());
            }
            // A stop interrupting the task (`None`) hands the whole batch back.
            if let Some((id, mut report)) = self.execute(incoming) {
                if next.is_empty() {
                    report.also = std::mem::take(&mut done);
                    pending = Some((id, report));
                } else {
                    done.push(TaskReport {
                        task: id,
                        update: report,
                    });
                }
            }
        }
    }

    /// Registers (again), retrying unreachable controllers `retries` times. `Ok(false)` when a
    /// stop came first.
    /// Registers: the first time with `--register-retries` retries, again (the controller
    /// forgot this worker or restarted) for as long as the outage budget lasts.
    fn register(&mut self, first: bool) -> Result<bool, WorkerError> {
        let sh = self.sh.clone();
        let cfg = &sh.cfg;
        let retries = cfg.register_retries;
        let controller = cfg.controller.clone();
        let body = RegisterRequest {
            protocol_version: PROTOCOL_VERSION,
            device: cfg.device,
            hostname: cfg.hostname.clone(),
            capabilities: Capabilities {
                gpu: self.exec.gpu().map(|g| GpuInfo {
                    name: g.name,
                    memory_mb: g.memory_bytes >> 20,
                }),
                cpu_threads: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
                commands: Command::NAMES.iter().map(|s| s.to_string()).collect(),
                max_batch: cfg.batch,
            },
            worker_version: VERSION.to_string(),
            spawn_id: cfg.spawn_id.clone(),
            pid: Some(std::process::id()),
        };
        let mut attempt = 0;
        loop {
            if self.sh.stopping() {
                return Ok(false);
            }
            let last_error = match self.sh.client.register(&cfg.token, &body) {
                Ok(r) => {
                    let hb = cfg
                        .heartbeat_interval
                        .map_or(r.heartbeat_interval_ms, |d| d.as_millis() as u64);
                    self.poll_hold = Duration::from_millis(r.poll_hold_ms);
                    info!(
                        "{} as worker {} with {controller} (controller {}, heartbeat every {hb} ms, poll hold {} ms)",
                        if first {
                            "registered"
                        } else {
                            "registered again"
                        },
                        r.worker_id,
                        r.controller_version,
                        r.poll_hold_ms
                    );
                    self.sh.set_session(Session::new(r.worker_id, &r.token), hb);
                    self.reached();
                    return Ok(true);
                }
                Err(CallError::Refused { code, message, .. })
                    if code == "protocol_version_mismatch" =>
                {
                    return Err(WorkerError::ProtocolMismatch {
                        controller,
                        message,
                    });
                }
                Err(CallError::Refused { status: 401, .. }) => {
                    return Err(WorkerError::EnrollmentRefused { controller });
                }
                Err(CallError::Refused {
                    status,
                    code,
                    message,
                }) => {
                    let message = format!("{status} {code}: {message}");
                    return Err(WorkerError::RegistrationRefused {
                        controller,
                        message,
                    });
                }
                Err(CallError::Unavailable(e)) => e,
            };
            let delay = if first {
                if attempt >= retries {
                    let attempts = attempt + 1;
                    return Err(WorkerError::RegistrationFailed {
                        controller,
                        attempts,
                        last_error,
                    });
                }
                let delay = self.rng.backoff(attempt, cfg);
                warn!(
                    "registration with {controller} failed (attempt {}/{}): {last_error}; retrying in {delay:.2?}",
                    attempt + 1,
                    retries + 1
                );
                delay
            } else {
                self.count_failure(&last_error)?;
                let delay = self.rng.backoff(self.failures - 1, cfg);
                warn!(
                    "registering again with {controller} failed ({}): {last_error}; retrying in {delay:.2?}",
                    self.outage()
                );
                delay
            };
            attempt += 1;
            if cfg.stop.wait_timeout(delay) {
                return Ok(false);
            }
        }
    }

    /// One long-poll: a task and the rest of its batch. Empty: nothing to run (hold
    /// expired, retry, stop).
    fn poll(&mut self) -> Result<Vec<Incoming>, WorkerError> {
        let Some(s) = self.sh.session() else {
            self.sh.request_reregister();
            return Ok(Vec::new());
        };
        let timeout = self.poll_hold + self.sh.cfg.poll_timeout_margin;
        match self.sh.client.poll(&s, timeout) {
            Ok(t) => {
                self.reached();
                Ok(t)
            }
            Err(_) if self.sh.stopping() => Ok(Vec::new()),
            Err(e) => match self.handle("poll", &e)? {
                Handling::Refused => {
                    // Nothing sensible to retry at once: do not spin.
                    let delay = self.rng.backoff(0, &self.sh.cfg);
                    self.sh.cfg.stop.wait_timeout(delay);
                    Ok(Vec::new())
                }
                _ => Ok(Vec::new()),
            },
        }
    }

    /// A call reached the controller: the outage, if any, is over.
    fn reached(&mut self) {
        self.failures = 0;
        self.outage_since = None;
    }

    /// Counts a failed call of an outage; an error once the outage has lasted
    /// `--reconnect-for` (or `--reconnect-retries` calls, when given).
    fn count_failure(&mut self, last_error: &str) -> Result<(), WorkerError> {
        let cfg = &self.sh.cfg;
        self.failures += 1;
        let since = *self.outage_since.get_or_insert_with(Instant::now);
        let over_time = since.elapsed() >= cfg.reconnect_for;
        let over_count = cfg.reconnect_retries.is_some_and(|n| self.failures >= n);
        if over_time || over_count {
            return Err(WorkerError::ControllerLost {
                controller: cfg.controller.clone(),
                attempts: self.failures,
                for_s: since.elapsed().as_secs_f64(),
                last_error: last_error.to_string(),
            });
        }
        Ok(())
    }

    /// What the log says of the outage so far.
    fn outage(&self) -> String {
        let for_s = self.outage_since.map_or(0.0, |t| t.elapsed().as_secs_f64());
        format!(
            "{} in a row over {for_s:.1} s; giving up after {:.0} s",
            self.failures,
            self.sh.cfg.reconnect_for.as_secs_f64()
        )
    }

    /// Counts a failed call and decides what follows; backs off before a retry. Fails when
    /// the controller stayed unreachable for `--reconnect-for` (module docs).
    fn handle(&mut self, what: &str, e: &CallError) -> Result<Handling, WorkerError> {
        if e.status() == Some(409) || e.code() == Some("stale_lease") {
            return Ok(Handling::Stale);
        }
        let forgotten = self.sh.is_forgotten(e);
        if !forgotten && e.status().is_some() {
            return Ok(Handling::Refused);
        }
        self.count_failure(&e.to_string())?;
        let cfg = &self.sh.cfg;
        if forgotten {
            warn!("{what}: the controller does not know this worker ({e}): registering again");
            self.sh.request_reregister();
            return Ok(Handling::Reregister);
        }
        let delay = self.rng.backoff(self.failures - 1, cfg);
        warn!(
            "{what} failed ({}): {e}; retrying in {delay:.2?}",
            self.outage()
        );
        cfg.stop.wait_timeout(delay);
        Ok(Handling::Retry)
    }

    /// Runs a task and returns its terminal report; `None` when a stop interrupted it (the
    /// deregistration hands it back to the controller).
    fn execute(&mut self, incoming: Incoming) -> Option<(TaskId, StatusUpdate)> {
        let task = match incoming {
            Incoming::Task(t) => t,
            Incoming::Unrunnable { id, lease, error } => {
                warn!("task {id} lease {lease}: {error}");
                let mut r = self.report(lease, ReportState::Failed, 0);
                r.error = Some(error);
                return Some((id, r));
            }
        };
        let started = Instant::now();
        let cancel = CancelFlag::new();
        let sh = &*self.sh;
        sh.set_current(Current {
            id: task.id,
            lease: task.lease,
            started,
            cancel: cancel.clone(),
            commands: task.commands.len(),
            command: (0, ""),
            running_reported: false,
            progress_reported: None,
        });
        // A stop that came in just before `current` was set found nothing to cancel and has
        // handed the task back already: do not run it.
        if sh.stopping() {
            cancel.cancel();
        }
        sh.arm_heartbeat();
        debug!(
            "task {} attempt {} (lease {}) started",
            task.id, task.attempt, task.lease
        );
        let held_before = self.exec.held_fingerprint().map(str::to_string);
        let outcome = self.exec.run_assignment(&task, &cancel, &mut |i, n, name| {
            if n > 1
                && let Some(c) = sh.current().as_mut()
            {
                c.command = (i, name);
            }
        });
        sh.clear_current();
        let elapsed = started.elapsed();
        let held = self.exec.held_fingerprint();
        if held != held_before.as_deref() {
            sh.set_held(held.map(str::to_string));
        }
        if let Some(reason) = self.exec.unhealthy() {
            // Not the task's fault: hand it back (the stop deregisters, which re-queues it
            // without counting the attempt) and exit 3.
            error!(
                "GPU health check failed after task {}: {reason}; handing the task back and stopping",
                task.id
            );
            sh.mark_unhealthy(reason);
            return None;
        }
        if sh.stopping() {
            info!(
                "task {} interrupted by the stop after {elapsed:.2?}",
                task.id
            );
            return None;
        }
        let ms = elapsed.as_millis() as u64;
        let mut r = self.report(task.lease, ReportState::Completed, ms);
        match outcome {
            Ok(result) => {
                debug!(
                    "task {} attempt {} completed in {ms} ms",
                    task.id, task.attempt
                );
                r.result = Some(serde_json::to_value(result).unwrap_or_default());
            }
            Err(e) => {
                let permanent = e.permanent && !cancel.is_cancelled();
                let e = if cancel.is_cancelled() {
                    format!("cancelled by the controller ({e})")
                } else {
                    e.message
                };
                info!(
                    "task {} attempt {} failed after {ms} ms{}: {e}",
                    task.id,
                    task.attempt,
                    if permanent {
                        " (the input is at fault: not retried)"
                    } else {
                        ""
                    }
                );
                r.state = ReportState::Failed;
                r.error = Some(e);
                r.permanent = permanent;
            }
        }
        Some((task.id, r))
    }

    /// A terminal report asking for the next task.
    fn report(&self, lease: u64, state: ReportState, elapsed_ms: u64) -> StatusUpdate {
        StatusUpdate {
            lease,
            state,
            result: None,
            error: None,
            progress: None,
            elapsed_ms: Some(elapsed_ms),
            held_fingerprint: self.exec.held_fingerprint().map(str::to_string),
            console: self.sh.console.take_unshipped(CONSOLE_BATCH),
            want_next: true,
            permanent: false,
            also: Vec::new(),
        }
    }
}

/// Exponential backoff with full jitter: uniform in `[0, min(max, base * 2^attempt)]`.
/// `random` is any 64-bit random number.
pub fn backoff_delay(attempt: u32, base: Duration, max: Duration, random: u64) -> Duration {
    let cap = base
        .saturating_mul(2u32.saturating_pow(attempt.min(31)))
        .min(max);
    cap.mul_f64((random >> 11) as f64 / (1u64 << 53) as f64)
}

/// splitmix64 seeded from /dev/urandom (or the clock and pid): enough for jitter.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        use std::io::Read;
        let mut seed = [0u8; 8];
        let ok = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut seed));
        if ok.is_err() {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            let nanos = t.map_or(0, |d| d.as_nanos() as u64);
            seed = (nanos ^ (u64::from(std::process::id()) << 32)).to_le_bytes();
        }
        Rng(u64::from_le_bytes(seed))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn backoff(&mut self, attempt: u32, cfg: &PullConfig) -> Duration {
        let r = self.next();
        backoff_delay(attempt, cfg.backoff_base, cfg.backoff_max, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::lock;
    use serde_json::{Value, json};
    use std::sync::Mutex;
    type CallLog = Arc<Mutex<Vec<(String, Value)>>>;

    /// A controller that answers registrations (a new worker id each time) and every other
    /// call with `answer(path, body)`; records (path, body) of every call.
    fn serve_mock(
        mut answer: impl FnMut(&str, &Value) -> (u16, Value) + Send + 'static,
    ) -> (String, CallLog) {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let base = format!("http://{}", server.server_addr().to_ip().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let seen = log.clone();
        std::thread::spawn(move || {
            let mut registrations = 0;
            while let Ok(mut rq) = server.recv() {
                let mut body = String::new();
                rq.as_reader().read_to_string(&mut body).unwrap();
                let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                let path = rq.url().to_string();
                lock(&seen).push((path.clone(), body.clone()));
                let (status, reply) = if path.ends_with("/register") {
                    registrations += 1;
                    let id = format!("00000000-0000-4000-8000-00000000000{registrations}");
                    (
                        200,
                        json!({"worker_id": id, "token": "w", "heartbeat_interval_ms": 20,
                        "poll_hold_ms": 50, "protocol_version": 1, "controller_version": "mock"}),
                    )
                } else {
                    answer(&path, &body)
                };
                let data = if reply.is_null() {
                    Vec::new()
                } else {
                    reply.to_string().into_bytes()
                };
                let _ = rq.respond(tiny_http::Response::from_data(data).with_status_code(status));
            }
        });
        (base, log)
    }

    /// Runs a pull loop against `base` until `log` holds `n` calls to paths ending in `suffix`
    /// (at most 10 s), then stops it; it must end cleanly.
    fn run_until(base: &str, log: &CallLog, suffix: &str, n: usize) {
        let mut cfg = PullConfig::new(base, "enroll").unwrap();
        cfg.silent = true;
        let stop = cfg.stop.clone();
        let worker = std::thread::spawn(move || run_pull(cfg));
        let start = Instant::now();
        while lock(log)
            .iter()
            .filter(|(p, _)| p.ends_with(suffix))
            .count()
            < n
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "fewer than {n} calls to {suffix}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.trigger();
        worker.join().unwrap().unwrap();
    }

    /// No work: a poll is held 50 ms and answered 204.
    fn no_work() -> (u16, Value) {
        std::thread::sleep(Duration::from_millis(50));
        (204, Value::Null)
    }

    /// A scripted controller: poll answers pop `tasks`; the status report of `forget_on` gets
    /// 404 unknown_worker; a lease of 999 gets 409.
    fn mock_controller(tasks: Vec<Value>, forget_on: &'static str) -> (String, CallLog) {
        let mut tasks = tasks.into_iter();
        serve_mock(move |path, body| {
            if path.ends_with("/poll") {
                match tasks.next() {
                    Some(t) => (200, json!({ "task": t })),
                    None => no_work(),
                }
            } else if path.contains(forget_on) {
                (404, json!({"error": "who?", "code": "unknown_worker"}))
            } else if body["lease"] == 999 {
                (409, json!({"error": "stale", "code": "stale_lease"}))
            } else if body["want_next"] == true {
                (200, json!({"accepted": true, "task": tasks.next()}))
            } else {
                (200, json!({"accepted": true, "cancel": []}))
            }
        })
    }

    /// A batch runs in order and is reported in one call; when that call is refused as too
    /// large (413), each report goes alone, its result intact.
    #[test]
    fn a_batch_is_reported_together_and_one_by_one_when_refused_as_too_large() {
        let echo = |id: &str, lease: u64| json!({"id": id, "lease": lease, "attempt": 1, "commands": [{"name": "Echo", "params": {"value": lease}}]});
        let ids = [
            "a0000000-0000-4000-8000-000000000000",
            "b0000000-0000-4000-8000-000000000000",
            "c0000000-0000-4000-8000-000000000000",
        ];
        let mut polled = false;
        let (base, log) = serve_mock(move |path, body| {
            if path.ends_with("/poll") {
                if polled {
                    return no_work();
                }
                polled = true;
                (
                    200,
                    json!({"task": echo(ids[0], 1), "more": [echo(ids[1], 2), echo(ids[2], 3)]}),
                )
            } else if body["also"].as_array().is_some_and(|a| !a.is_empty()) {
                (413, json!({"error": "too large", "code": "too_large"}))
            } else {
                (200, json!({"accepted": true}))
            }
        });
        run_until(&base, &log, "/poll", 2);
        let reports: Vec<(String, Value)> = lock(&log)
            .iter()
            .filter(|(p, _)| p.ends_with("/status"))
            .cloned()
            .collect();
        // The batch's one call (refused), then each report alone.
        let together = &reports[0].1;
        assert!(reports[0].0.contains(ids[2]), "{reports:?}");
        let also: Vec<&str> = (together["also"].as_array().unwrap().iter())
            .map(|r| r["task"].as_str().unwrap())
            .collect();
        assert_eq!(also, ids[..2]);
        assert_eq!(reports.len(), 4, "{reports:?}");
        for (i, (path, body)) in reports[1..].iter().enumerate() {
            assert!(path.contains(ids[i]), "{path}");
            assert_eq!(body["state"], "completed", "{body}");
            assert_eq!(body["result"]["results"][0]["value"], json!(i + 1));
            assert!(body.get("also").is_none());
        }
    }

    #[test]
    fn a_report_answered_before_the_disk_is_sent_again_before_the_next_poll() {
        let echo = |id: &str, lease: u64| json!({"id": id, "lease": lease, "attempt": 1, "commands": [{"name": "Echo", "params": {"value": lease}}]});
        let (a, b) = (
            "a0000000-0000-4000-8000-000000000000",
            "b0000000-0000-4000-8000-000000000000",
        );
        let (first_run, second_run) = (
            "11111111-1111-4111-8111-111111111111",
            "22222222-2222-4222-8222-222222222222",
        );
        let mut polls = 0;
        // Task a comes from a poll; its result is answered with task b before the journal
        // has it (receipt 5, durable through 4). Then the controller restarts (another run):
        // b's result is acknowledged on disk in that run, which says nothing of a's.
        let (base, log) = serve_mock(move |path, body| {
            let terminal = body["state"] == "completed";
            if path.ends_with("/poll") {
                polls += 1;
                if polls == 1 {
                    (200, json!({ "task": echo(a, 1) }))
                } else {
                    no_work()
                }
            } else if path.contains(a) && terminal && body["want_next"] == true {
                (
                    200,
                    json!({"accepted": true, "task": echo(b, 2), "receipt": 5,
                        "durable": {"run": first_run, "through": 4}}),
                )
            } else if terminal {
                (
                    200,
                    json!({"accepted": true, "durable": {"run": second_run, "through": 9}}),
                )
            } else {
                (200, json!({"accepted": true, "cancel": []}))
            }
        });
        run_until(&base, &log, "/poll", 2);
        let calls: Vec<String> = lock(&log)
            .iter()
            .filter_map(|(p, body)| {
                if p.ends_with("/poll") {
                    Some("poll".to_string())
                } else if body["state"] == "completed" {
                    let task = if p.contains(a) { "a" } else { "b" };
                    Some(format!("{task} want_next={}", body["want_next"] == true))
                } else {
                    None
                }
            })
            .take(5)
            .collect();
        assert_eq!(
            calls,
            [
                "poll",
                "a want_next=true",
                "b want_next=true",
                "a want_next=false",
                "poll"
            ],
            "a's report must go again, without asking for work, before the worker polls"
        );
    }

    #[test]
    fn pull_loop_chains_tasks_survives_stale_leases_and_forgetting_then_deregisters() {
        let task = |id: &str, lease: u64, cmd: Value| json!({"id": id, "lease": lease, "attempt": 1, "commands": [cmd]});
        let (a, b, c) = (
            "a0000000-0000-4000-8000-000000000000",
            "b0000000-0000-4000-8000-000000000000",
            "c0000000-0000-4000-8000-000000000000",
        );
        let tasks = vec![
            task(a, 1, json!({"name": "Echo", "params": {"value": 1}})),
            task(b, 999, json!({"name": "Echo", "params": {"value": 2}})),
            task(c, 3, json!({"name": "Frobnicate", "params": {}})),
        ];
        let (base, log) = mock_controller(tasks, c);
        run_until(&base, &log, "/register", 2);
        let log = lock(&log).clone();
        let status_of = |id: &str| log.iter().find(|(p, _)| p.contains(id)).unwrap().1.clone();
        assert_eq!(
            status_of(a)["result"],
            json!({"results": [{"value": 1}], "init_ran": false})
        );
        assert_eq!(status_of(a)["want_next"], true);
        assert_eq!(status_of(b)["state"], "completed");
        assert!(
            status_of(c)["error"]
                .as_str()
                .unwrap()
                .contains("Frobnicate")
        );
        let last = log
            .iter()
            .rfind(|(p, _)| p.ends_with("/deregister"))
            .expect("deregistered");
        assert!(
            last.0.contains("00000000-0000-4000-8000-000000000002"),
            "{last:?}"
        );
        let polls = log.iter().filter(|(p, _)| p.ends_with("/poll")).count();
        assert!(polls >= 2, "task b came with a's report, not from a poll");
    }

    /// A device that fails to load a movie and then its health check (what a GPU that fell off
    /// the bus looks like to the worker; no such device exists on a test machine). The task
    /// below only loads, so the other operations keep the trait's CPU defaults.
    #[derive(Debug)]
    struct BrokenGpu;

    impl warp_kernels::backend::Backend for BrokenGpu {
        fn name(&self) -> &'static str {
            "cuda"
        }
        fn gpu(&self) -> Option<warp_kernels::backend::GpuInfo> {
            Some(warp_kernels::backend::GpuInfo {
                device: 0,
                name: "broken".into(),
                memory_bytes: 1 << 30,
            })
        }
        fn health_check(&self) -> Result<(), warp_kernels::backend::BackendError> {
            Err(warp_kernels::backend::BackendError::Gpu(
                "an FFT round trip failed: CUDA_ERROR_ILLEGAL_ADDRESS".into(),
            ))
        }
        fn load_movie(
            &self,
            path: &std::path::Path,
            _: Option<&warp_kernels::gain::GainRef>,
            _: &warp_kernels::movie::LoadOptions,
        ) -> Result<warp_kernels::movie::Movie, warp_kernels::movie::LoadError> {
            Err(warp_kernels::movie::LoadError::Invalid {
                path: path.to_path_buf(),
                reason: "GPU error: CUDA_ERROR_ILLEGAL_ADDRESS".into(),
            })
        }
    }

    #[test]
    fn a_gpu_failing_its_health_check_hands_the_task_back_and_exits_3() {
        let id = "d0000000-0000-4000-8000-000000000000";
        let tasks = vec![json!({"id": id, "lease": 1, "attempt": 1, "commands": [
            {"name": "LoadStack", "params": {"path": "/data/m.mrc"}}
        ]})];
        let (base, log) = mock_controller(tasks, "never");
        let mut cfg = PullConfig::new(&base, "enroll").unwrap();
        cfg.silent = true;
        let exec = Executor::with_backend(Box::new(BrokenGpu));
        let err = run_pull_with(cfg, exec).unwrap_err();
        assert_eq!(err.exit_code(), 3, "{err}");
        assert!(err.to_string().contains("ILLEGAL_ADDRESS"), "{err}");
        let log = lock(&log).clone();
        // No failure was reported for the task (it is not the task's fault): the worker
        // deregistered, which hands the task back to the controller.
        assert!(
            !log.iter().any(|(p, _)| p.contains(id)),
            "the task's status was reported: {log:?}"
        );
        let (_, body) = log
            .iter()
            .find(|(p, _)| p.ends_with("/deregister"))
            .expect("deregistered");
        assert!(body.to_string().contains("GPU unhealthy"), "{body}");
    }

    #[test]
    fn backoff_is_jittered_below_an_exponential_cap() {
        let (base, max) = (Duration::from_millis(500), Duration::from_secs(30));
        let top = backoff_delay(0, base, max, u64::MAX);
        assert!(top <= base && top > base.mul_f64(0.99), "{top:?}");
        assert_eq!(backoff_delay(3, base, max, 0), Duration::ZERO);
        let mut rng = Rng::new();
        for attempt in 0..40 {
            let cap = base
                .saturating_mul(2u32.saturating_pow(attempt.min(31)))
                .min(max);
            let delays: Vec<_> = (0..200)
                .map(|_| backoff_delay(attempt, base, max, rng.next()))
                .collect();
            assert!(
                delays.iter().all(|d| *d <= cap && *d <= max),
                "attempt {attempt}"
            );
            assert!(
                delays.iter().any(|d| *d > cap / 4),
                "jitter spans the range"
            );
        }
    }
}

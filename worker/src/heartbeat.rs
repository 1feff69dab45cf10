//! The heartbeat thread: liveness, `running` and progress reports, and cancels.
//!
//! Every heartbeat interval it posts a heartbeat naming the current task and shipping new
//! console lines; the reply lists tasks to cancel. It also reports a task `running` once it has
//! run for `--running-report-delay`, so quick tasks cost one round trip (the terminal report)
//! and slow ones still show up as running.
//!
//! It is woken for a task start only when it is not armed (the handshake is described in
//! [`crate::state`]).

use crate::client::CallError;
use crate::exec::CancelFlag;
use crate::state::{CONSOLE_BATCH, Current, WorkerState};
use crossbeam_channel::{Receiver, select};
use log::{debug, info, warn};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;
use warp_common::protocol::{HeartbeatRequest, Progress, ReportState, StatusUpdate, TaskId};

/// Starts the thread; it ends when `done` disconnects.
pub(crate) fn spawn(
    sh: Arc<WorkerState>,
    wake: Receiver<()>,
    done: Receiver<()>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("heartbeat".into())
        .spawn(move || run(&sh, &wake, &done))
}

fn run(sh: &WorkerState, wake: &Receiver<()>, done: &Receiver<()>) {
    let interval = || sh.heartbeat_interval();
    let mut last_beat = Instant::now();
    let mut check_at: Option<Instant> = None;
    let mut failures = 0u32;
    loop {
        let now = Instant::now();
        if check_at.is_some_and(|t| t <= now) {
            check_at = check_running(sh);
        }
        if last_beat + interval() <= now {
            beat(sh, &mut failures);
            last_beat = Instant::now();
        }
        let next_beat = last_beat + interval();
        let deadline = check_at.map_or(next_beat, |t| t.min(next_beat));
        select! {
            recv(done) -> _ => return,
            recv(wake) -> _ => check_at = check_running(sh),
            default(deadline.saturating_duration_since(Instant::now())) => {}
        }
    }
}

/// Reports the current task `running` when it is due; returns when to look again.
fn check_running(sh: &WorkerState) -> Option<Instant> {
    let mut cur = sh.disarm_and_look();
    let task = cur.as_mut()?;
    if task.running_reported {
        return None;
    }
    let due = task.started + sh.cfg.running_report_delay;
    if Instant::now() < due {
        sh.rearm();
        return Some(due);
    }
    task.running_reported = true;
    let update = report(task, ReportState::Running, None);
    let (id, lease, cancel) = (task.id, task.lease, task.cancel.clone());
    drop(cur);
    send(sh, id, lease, &cancel, &update);
    None
}

/// A non-terminal report of `task`.
fn report(task: &Current, state: ReportState, progress: Option<Progress>) -> StatusUpdate {
    StatusUpdate {
        lease: task.lease,
        state,
        result: None,
        error: None,
        progress,
        elapsed_ms: Some(task.started.elapsed().as_millis() as u64),
        held_fingerprint: None,
        console: Vec::new(),
        want_next: false,
        permanent: false,
        also: Vec::new(),
    }
}

/// Sends a `running` or `progress` report and obeys a cancel in the reply.
///
/// Called without holding `current`: the call may wait on an unreachable controller, and a stop
/// must still be able to cancel the task meanwhile. A report that reaches the controller after
/// the task's terminal one is refused (409) and changes nothing there.
fn send(sh: &WorkerState, id: TaskId, lease: u64, cancel: &CancelFlag, update: &StatusUpdate) {
    let Some(s) = sh.session() else { return };
    match sh.client.status(&s, id, update) {
        Ok(reply) if reply.cancel => {
            info!("controller cancelled task {id} (lease {lease})");
            cancel.cancel();
        }
        Ok(reply) => sh.note_durable(reply.durable),
        Err(e) if e.status() == Some(409) => {
            info!("task {id} lease {lease} is no longer this worker's (409): stopping it");
            cancel.cancel();
        }
        Err(e) => forgotten_or_log(sh, &e, "running/progress report"),
    }
}

fn forgotten_or_log(sh: &WorkerState, e: &CallError, what: &str) {
    if sh.is_forgotten(e) {
        warn!("{what}: the controller does not know this worker ({e}); re-registering");
        sh.request_reregister();
    } else {
        debug!("{what} failed: {e}");
    }
}

/// One heartbeat, preceded by a progress report when a multi-command task moved on.
fn beat(sh: &WorkerState, failures: &mut u32) {
    let Some(s) = sh.session() else { return };
    if sh.reregister_pending() {
        return;
    }
    progress(sh);
    let (current_task, lease) = match sh.current().as_ref() {
        Some(c) => (Some(c.id), Some(c.lease)),
        None => (None, None),
    };
    let req = HeartbeatRequest {
        current_task,
        lease,
        held_fingerprint: sh.held(),
        console: sh.console.take_unshipped(CONSOLE_BATCH),
    };
    match sh.client.heartbeat(&s, &req) {
        Ok(reply) => {
            if *failures > 0 {
                info!("heartbeat delivered again after {failures} failures");
            }
            *failures = 0;
            sh.note_durable(reply.durable);
            cancel_listed(sh, &reply.cancel);
        }
        Err(e) if sh.is_forgotten(&e) => forgotten_or_log(sh, &e, "heartbeat"),
        Err(e) => {
            *failures += 1;
            warn!(
                "heartbeat to {} failed ({failures} in a row): {e}",
                sh.client.base()
            );
        }
    }
}

fn cancel_listed(sh: &WorkerState, ids: &[uuid::Uuid]) {
    if let Some(c) = sh.current().as_ref()
        && ids.contains(&c.id)
    {
        info!("controller cancelled task {} (lease {})", c.id, c.lease);
        c.cancel.cancel();
    }
}

fn progress(sh: &WorkerState) {
    let mut cur = sh.current();
    let Some(task) = cur.as_mut() else { return };
    let (i, name) = task.command;
    if task.commands < 2 || name.is_empty() || task.progress_reported == Some(i) {
        return;
    }
    task.progress_reported = Some(i);
    let p = Progress {
        fraction: Some(i as f64 / task.commands as f64),
        message: Some(format!("command {} of {}: {name}", i + 1, task.commands)),
    };
    let update = report(task, ReportState::Progress, Some(p));
    let (id, lease, cancel) = (task.id, task.lease, task.cancel.clone());
    drop(cur);
    send(sh, id, lease, &cancel, &update);
}

//! The state the pull loop, the heartbeat thread and the watcher thread share
//! ([`WorkerState`]), behind methods: no other module touches its fields.
//!
//! The heartbeat handshake. Waking the heartbeat thread for every task start would cost a
//! context switch per task. Instead an `armed` flag says "the heartbeat thread will look at
//! the current task again on its own":
//!
//! * the main loop sets the task ([`WorkerState::set_current`]) and then calls
//!   [`WorkerState::arm_heartbeat`], which wakes the thread only when it was not armed;
//! * the heartbeat thread disarms *before* it looks ([`WorkerState::disarm_and_look`]) and
//!   re-arms ([`WorkerState::rearm`]) when it has scheduled its next look,
//!
//! so a task started while the thread looks is either seen by that look or wakes it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use log::{info, warn};
use warp_common::protocol::{Durability, StatusUpdate, TaskId};

use crate::client::{CallError, Client, Session};
use crate::config::PullConfig;
use crate::console::Console;
use crate::exec::CancelFlag;

/// Most console lines shipped with one heartbeat or status report.
pub(crate) const CONSOLE_BATCH: usize = 1000;

/// Locks `m`, going on with the state a panicking holder left (the best there is).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The task being executed, as the other threads see it.
pub(crate) struct Current {
    pub id: TaskId,
    pub lease: u64,
    pub started: Instant,
    pub cancel: CancelFlag,
    pub commands: usize,
    /// Main command being run (index, name); kept for tasks of more than one command.
    pub command: (usize, &'static str),
    pub running_reported: bool,
    pub progress_reported: Option<usize>,
}

/// The session and whether it was deregistered, changed together.
struct SessionSlot {
    session: Option<Arc<Session>>,
    deregistered: bool,
}

/// State shared by the main loop, the heartbeat thread and the watcher thread.
pub(crate) struct WorkerState {
    pub cfg: PullConfig,
    pub client: Client,
    pub console: Arc<Console>,
    /// When the worker started.
    pub start: Instant,
    session: Mutex<SessionSlot>,
    current: Mutex<Option<Current>>,
    held: Mutex<Option<String>>,
    /// Set by the heartbeat thread when the controller forgot us; the main loop re-registers.
    reregister: AtomicBool,
    heartbeat_ms: AtomicU64,
    /// The heartbeat thread will look at `current` again without a wake-up (module docs).
    armed: AtomicBool,
    wake: Sender<()>,
    /// Milliseconds since `start` when the worker last finished a task (or started).
    last_activity_ms: AtomicU64,
    stop_reason: Mutex<String>,
    /// Set when the device failed its health check: the worker stops and exits 3.
    unhealthy: Mutex<Option<String>>,
    /// Final reports the controller answered before its journal had them (see
    /// [`warp_common::protocol::Durability`]): kept until a reply of the same run says they
    /// are on disk, sent again before the next poll otherwise.
    unconfirmed: Mutex<Vec<Kept>>,
}

/// A final report kept until the controller's journal has it.
pub(crate) struct Kept {
    pub run: uuid::Uuid,
    pub receipt: u64,
    pub task: TaskId,
    pub report: StatusUpdate,
}

impl WorkerState {
    /// A fresh state; `wake` is the heartbeat thread's wake-up channel.
    pub fn new(cfg: PullConfig, client: Client, console: Arc<Console>, wake: Sender<()>) -> Self {
        WorkerState {
            heartbeat_ms: AtomicU64::new(
                cfg.heartbeat_interval
                    .map_or(30_000, |d| d.as_millis() as u64),
            ),
            cfg,
            client,
            console,
            start: Instant::now(),
            session: Mutex::new(SessionSlot {
                session: None,
                deregistered: false,
            }),
            current: Mutex::new(None),
            held: Mutex::new(None),
            reregister: AtomicBool::new(false),
            armed: AtomicBool::new(false),
            wake,
            last_activity_ms: AtomicU64::new(0),
            stop_reason: Mutex::new(String::new()),
            unhealthy: Mutex::new(None),
            unconfirmed: Mutex::new(Vec::new()),
        }
    }

    /// Keeps a report answered before it was on disk.
    pub fn keep_unconfirmed(&self, k: Kept) {
        lock(&self.unconfirmed).push(k);
    }

    /// What a reply said of the journal: drops the kept reports it has on disk.
    pub fn note_durable(&self, d: Option<Durability>) {
        if let Some(d) = d {
            lock(&self.unconfirmed).retain(|k| !(k.run == d.run && k.receipt <= d.through));
        }
    }

    /// The kept reports, to send again (the controller may have restarted without them; one
    /// it has is accepted again).
    pub fn take_unconfirmed(&self) -> Vec<(TaskId, StatusUpdate)> {
        std::mem::take(&mut *lock(&self.unconfirmed))
            .into_iter()
            .map(|k| (k.task, k.report))
            .collect()
    }

    /// Whether a report waits for the controller's disk.
    pub fn has_unconfirmed(&self) -> bool {
        !lock(&self.unconfirmed).is_empty()
    }

    pub fn session(&self) -> Option<Arc<Session>> {
        lock(&self.session).session.clone()
    }

    /// A new session after a registration (not deregistered yet); wakes the heartbeat thread
    /// so it picks up the new interval.
    pub fn set_session(&self, session: Session, heartbeat_ms: u64) {
        self.heartbeat_ms
            .store(heartbeat_ms.max(10), Ordering::Relaxed);
        let mut slot = lock(&self.session);
        slot.session = Some(Arc::new(session));
        slot.deregistered = false;
        drop(slot);
        let _ = self.wake.try_send(());
    }

    pub fn stopping(&self) -> bool {
        self.cfg.stop.is_triggered()
    }

    /// Deregisters the current session unless already done. Holds the session lock throughout,
    /// so it cannot interleave with a re-registration.
    pub fn deregister_once(&self, reason: &str) {
        let mut slot = lock(&self.session);
        let Some(s) = slot.session.clone() else {
            return;
        };
        if slot.deregistered {
            return;
        }
        slot.deregistered = true;
        // A report the journal may not have yet goes again first, without asking for work:
        // that reply waits for the disk, so a crash after this worker left loses nothing.
        for (task, mut report) in self.take_unconfirmed() {
            report.want_next = false;
            if let Err(e) = self.client.status(&s, task, &report) {
                warn!("could not confirm the report of task {task} before leaving: {e}");
            }
        }
        match self.client.deregister(&s, reason) {
            Ok(()) => info!("deregistered from {} ({reason})", self.client.base()),
            Err(e) => warn!("deregistration failed ({reason}): {e}"),
        }
    }

    /// Whether `e` means the controller no longer knows this worker.
    pub fn is_forgotten(&self, e: &CallError) -> bool {
        e.code() == Some("unknown_worker")
            || e.status() == Some(401)
            || (e.status() == Some(410) && !self.stopping())
    }

    /// Asks the main loop to register again.
    pub fn request_reregister(&self) {
        self.reregister.store(true, Ordering::SeqCst);
    }

    /// Whether a re-registration is pending.
    pub fn reregister_pending(&self) -> bool {
        self.reregister.load(Ordering::SeqCst)
    }

    /// Takes a pending re-registration request.
    pub fn take_reregister(&self) -> bool {
        self.reregister.swap(false, Ordering::SeqCst)
    }

    /// The heartbeat interval the controller asked for.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed))
    }

    /// The current task, locked.
    pub fn current(&self) -> MutexGuard<'_, Option<Current>> {
        lock(&self.current)
    }

    /// Sets the task being run; call [`Self::arm_heartbeat`] once it may be looked at.
    pub fn set_current(&self, task: Current) {
        *lock(&self.current) = Some(task);
    }

    /// The task ended: clears it and notes the time for `--idle-exit`.
    pub fn clear_current(&self) {
        lock(&self.current).take();
        self.last_activity_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Time since the last task ended (or the start).
    pub fn idle_for(&self) -> Duration {
        let since = Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(since)
    }

    /// Main loop, after [`Self::set_current`]: wakes the heartbeat thread unless it is armed.
    pub fn arm_heartbeat(&self) {
        if !self.armed.swap(true, Ordering::SeqCst) {
            let _ = self.wake.try_send(());
        }
    }

    /// Heartbeat thread: disarms, then locks the current task to look at it.
    pub fn disarm_and_look(&self) -> MutexGuard<'_, Option<Current>> {
        self.armed.store(false, Ordering::SeqCst);
        lock(&self.current)
    }

    /// Heartbeat thread: it will look again on its own.
    pub fn rearm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// The init fingerprint held, as last reported.
    pub fn held(&self) -> Option<String> {
        lock(&self.held).clone()
    }

    /// Records the init fingerprint held after a task.
    pub fn set_held(&self, held: Option<String>) {
        *lock(&self.held) = held;
    }

    /// Why the worker stops (empty until it does).
    pub fn stop_reason(&self) -> String {
        lock(&self.stop_reason).clone()
    }

    /// Records why the worker stops.
    pub fn set_stop_reason(&self, reason: String) {
        *lock(&self.stop_reason) = reason;
    }

    /// The device failed its health check: records why and stops the worker (exit 3).
    pub fn mark_unhealthy(&self, reason: &str) {
        *lock(&self.unhealthy) = Some(reason.to_string());
        self.set_stop_reason(format!("GPU unhealthy: {reason}"));
        self.cfg.stop.trigger();
    }

    /// The health-check failure, if there was one (taken once, at exit).
    pub fn take_unhealthy(&self) -> Option<String> {
        lock(&self.unhealthy).take()
    }
}

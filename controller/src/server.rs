//! The running controller: the core behind one mutex, parked requests, handler threads and the
//! timer thread, plus the in-process API that the drop-in wrapper and later the main job use.
//!
//! Threads: every connection has its own thread (tiny_http's, patched in `third_party/`), which
//! reads its requests, runs their [`crate::http`] handlers and writes their answers, so a slow
//! or hostile client holds only its own thread; connections are capped
//! ([`ControllerConfig::max_connections`]) and every one has deadlines
//! ([`ControllerConfig::timeouts`]). One timer thread answers expired parked polls and applies
//! `Tick` (heartbeat and task timeouts). A long-poll is a parked `tiny_http::Request` in
//! [`Inner::parked_polls`], not a waiting thread: whoever applies the event that produces work
//! for that worker (a submit, a re-queue, a tick) answers it.
//!
//! Locking: one mutex over [`Inner`] (core, parked requests, waiters, consoles), so parking a
//! poll and handing it work can never race. Responses are written after the lock is released.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use warp_common::console::ConsoleRing;
use warp_common::protocol::{
    ControllerStatus, PollResponse, ProvisionStatus, TaskDetail, TaskId, TaskSpec, TaskState,
    WaitResponse, WorkerId, WorkerInfo, WorkerState,
};

use crate::core::{Core, CoreConfig, CoreError, Decision, Event, Millis, Reply};
use crate::http::{self, ApiError};

/// Settings of a controller. [`ControllerConfig::new`] gives the seed's defaults. Its `Debug`
/// output leaves the token out.
#[derive(Clone)]
pub struct ControllerConfig {
    /// Address to bind (`0.0.0.0` = all interfaces).
    pub bind: String,
    /// Port (0 = any free port).
    pub port: u16,
    /// How long a poll is held before 204.
    pub poll_hold: Duration,
    /// How often workers heartbeat.
    pub heartbeat_interval: Duration,
    /// Silence after which a worker is offline.
    pub heartbeat_timeout: Duration,
    /// Running time after which an attempt fails.
    pub task_timeout: Duration,
    /// Failed attempts after which a task fails for good.
    pub max_attempts: u32,
    /// Largest request body accepted (413 above).
    pub max_body_bytes: usize,
    /// Most connections served at once (503 beyond); 0: from the open-file limit (half of it,
    /// less a reserve, as each connection takes two descriptors).
    pub max_connections: usize,
    /// Time a client has to send a request's header once it starts (and, on a connection no
    /// request of which was authenticated, to start its next one).
    pub header_timeout: Duration,
    /// Console lines kept per worker.
    pub console_lines: usize,
    /// Finished tasks kept in memory (oldest finished leave first; counts stay).
    pub keep_finished: usize,
    /// The enrollment token: registers workers, nothing else.
    pub token: String,
    /// The admin token: every route.
    pub admin_token: String,
    /// The view token: read-only monitoring routes (`None`: those take the admin token).
    pub view_token: Option<String>,
    /// Where the journal, snapshots and archive live (`None`: state is in memory only and a
    /// restart starts empty). See [`crate::journal`].
    pub state_dir: Option<std::path::PathBuf>,
    /// Journal bytes after which the timer takes a snapshot.
    pub snapshot_bytes: u64,
    /// Serve HTTPS only, with this certificate chain and key (PEM files); `None`: plain HTTP.
    pub tls: Option<TlsFiles>,
}

/// The PEM files of an HTTPS controller (`serve --tls-cert F --tls-key F`).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Certificate chain, the server's own certificate first.
    pub cert: std::path::PathBuf,
    /// Its private key (unencrypted PKCS#8, RSA or EC).
    pub key: std::path::PathBuf,
}

impl TlsFiles {
    /// Reads both files, with errors that name the file.
    fn load(&self) -> Result<tiny_http::SslConfig, String> {
        let read = |what: &str, f: &std::path::Path| {
            std::fs::read(f).map_err(|e| format!("cannot read the TLS {what} {}: {e}", f.display()))
        };
        Ok(tiny_http::SslConfig {
            certificate: read("certificate", &self.cert)?,
            private_key: read("key", &self.key)?,
        })
    }
}

impl std::fmt::Debug for ControllerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ControllerConfig {{ {}, tokens: <redacted> }}",
            self.describe()
        )
    }
}

impl ControllerConfig {
    /// The seed's defaults: poll hold 30 s, heartbeat every 30 s, offline after 120 s, task
    /// timeout 1800 s, 3 attempts. `token` is the enrollment token; the admin token is a fresh
    /// random one (set `admin_token` to reach the admin routes over HTTP; the in-process API
    /// needs none), and there is no view token.
    pub fn new(token: String) -> ControllerConfig {
        ControllerConfig {
            bind: "0.0.0.0".into(),
            port: 0,
            poll_hold: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(120),
            task_timeout: Duration::from_secs(1800),
            max_attempts: 3,
            max_body_bytes: 16 << 20,
            max_connections: 0,
            header_timeout: Duration::from_secs(10),
            console_lines: 10_000,
            keep_finished: 100_000,
            token,
            admin_token: crate::auth::random_token()
                .unwrap_or_else(|_| format!("{}{}", uuid::Uuid::new_v4(), uuid::Uuid::new_v4())),
            view_token: None,
            state_dir: None,
            snapshot_bytes: crate::journal::SNAPSHOT_BYTES,
            tls: None,
        }
    }

    /// Heartbeat interval actually told to workers: at most a quarter of the heartbeat timeout,
    /// so shrinking the timeout in tests shrinks the interval with it.
    pub fn effective_heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
            .min(self.heartbeat_timeout / 4)
            .max(Duration::from_millis(1))
    }

    /// Deadlines of every connection: a header within `header_timeout`; a body at 64 KiB/s
    /// or faster; no read or write waits over 30 s; an authenticated connection may stay idle
    /// between requests for twice the longer of the poll hold and the heartbeat interval plus
    /// 10 s (so a worker's connections are never closed under it), an unauthenticated one for
    /// `header_timeout`.
    pub fn timeouts(&self) -> tiny_http::Timeouts {
        let busiest = self.poll_hold.max(self.effective_heartbeat_interval());
        tiny_http::Timeouts {
            idle: busiest * 2 + Duration::from_secs(10),
            header: self.header_timeout,
            io: Duration::from_secs(30),
            body_rate: 64 * 1024,
        }
    }

    /// The resolved configuration as one log line (never the token).
    pub fn describe(&self) -> String {
        format!(
            "bind={}:{} poll_hold={:.3}s heartbeat_interval={:.3}s heartbeat_timeout={:.3}s task_timeout={:.3}s max_attempts={} max_body={}B max_connections={} header_timeout={:.3}s console_lines={} keep_finished={} state_dir={} tls={}",
            self.bind,
            self.port,
            self.poll_hold.as_secs_f64(),
            self.effective_heartbeat_interval().as_secs_f64(),
            self.heartbeat_timeout.as_secs_f64(),
            self.task_timeout.as_secs_f64(),
            self.max_attempts,
            self.max_body_bytes,
            if self.max_connections == 0 {
                "auto".to_string()
            } else {
                self.max_connections.to_string()
            },
            self.header_timeout.as_secs_f64(),
            self.console_lines,
            self.keep_finished,
            self.state_dir
                .as_ref()
                .map_or("none (in memory)".to_string(), |d| d.display().to_string()),
            self.tls
                .as_ref()
                .map_or("off".to_string(), |t| t.cert.display().to_string())
        )
    }
}

/// What in-process subscribers hear about workers.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerEvent {
    /// A worker registered.
    Registered {
        /// Its id.
        worker: WorkerId,
        /// The tag its spawner gave it.
        spawn_id: Option<String>,
    },
    /// A worker went offline or left.
    Lost {
        /// Its id.
        worker: WorkerId,
        /// Why.
        reason: String,
    },
}

pub(crate) struct ParkedPoll {
    pub request: tiny_http::Request,
    pub deadline: Millis,
}

pub(crate) enum Waiter {
    Http {
        request: tiny_http::Request,
        deadline: Millis,
    },
    Channel(Sender<TaskDetail>),
    /// One task of a `POST /api/tasks/wait` ([`Inner::groups`]).
    Group(u64),
}

/// A parked `POST /api/tasks/wait`: answered when `left` reaches 0 or at `deadline`.
pub(crate) struct GroupWait {
    pub request: tiny_http::Request,
    pub deadline: Millis,
    /// The tasks asked for, without repeats.
    pub ids: Vec<TaskId>,
    /// How many of them are not terminal yet.
    pub left: usize,
}

/// A response to write once the lock is released.
pub(crate) struct Outgoing {
    pub request: tiny_http::Request,
    pub status: u16,
    pub body: Option<Vec<u8>>,
}

pub(crate) struct Inner {
    pub core: Core,
    pub parked_polls: HashMap<WorkerId, ParkedPoll>,
    pub waiters: HashMap<TaskId, Vec<Waiter>>,
    /// Parked waits for many tasks, by number; each of their tasks has a
    /// [`Waiter::Group`] in `waiters`.
    pub groups: HashMap<u64, GroupWait>,
    pub next_group: u64,
    pub consoles: HashMap<WorkerId, ConsoleRing>,
    /// Workers the core forgot whose consoles are still kept, oldest first.
    pub departed: std::collections::VecDeque<WorkerId>,
    pub subscribers: Vec<Sender<WorkerEvent>>,
    pub outbox: Vec<Outgoing>,
    /// What tells someone a task ended (answers to `wait`, in-process watchers): written once
    /// the journal holds the end (without a journal, right after `outbox`).
    pub after_sync: Vec<AfterSync>,
    /// Set when the current lock holder applied an event whose acknowledgement must wait
    /// until its record is durable (a submit, a cancel, a terminal report).
    pub must_sync: bool,
    /// How long the lock holder's sync may wait for another request's (see
    /// [`Journal::sync_within`](crate::journal::Journal::sync_within)): set when the event
    /// handed a short task to an idle worker, whose report will soon need a sync too.
    pub sync_grace: Option<Duration>,
    /// Histories for `GET /metrics`.
    pub metrics: crate::metrics::Metrics,
}

/// A notification written after the journal sync (see [`Inner::after_sync`]).
pub(crate) enum AfterSync {
    Http(Outgoing),
    Watch(Sender<TaskDetail>, TaskDetail),
}

/// The lock on [`Inner`]; see [`Shared::lock`].
pub(crate) struct Locked<'a> {
    guard: Option<MutexGuard<'a, Inner>>,
    shared: &'a Shared,
}

impl std::ops::Deref for Locked<'_> {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        self.guard.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Inner {
        self.guard.as_mut().expect("held until dropped")
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let Some(mut guard) = self.guard.take() else {
            return;
        };
        let out = std::mem::take(&mut guard.outbox);
        let after = std::mem::take(&mut guard.after_sync);
        let must_sync = std::mem::take(&mut guard.must_sync);
        let grace = guard.sync_grace.take();
        let Some(journal) = &self.shared.journal else {
            drop(guard);
            Shared::flush(out);
            deliver(after);
            return;
        };
        let seq = journal.appended();
        drop(guard);
        // Assignments and "no work" go out at once: a delivery the journal then loses is an
        // attempt the restarted controller does not know, whose reports get 409 (the lease
        // check names the worker), so the task runs again and nothing is applied twice.
        Shared::flush(out);
        if !after.is_empty() {
            // End notifications wait for the disk, but not in this thread unless it waits
            // anyway: the sync thread sends them.
            lock(&self.shared.deferred).push((seq, after));
            if !must_sync {
                let _ = self.shared.sync_wake.try_send(());
            }
        }
        // A submit, cancel or final result is acknowledged only once it is on disk (the
        // handler's own answer is written after this guard is gone, so after this too).
        if must_sync {
            match grace {
                Some(g) => journal.sync_within(seq, g),
                None => journal.sync(seq),
            }
            self.shared.deliver_durable();
        }
    }
}

/// Writes end notifications (see [`Inner::after_sync`]).
fn deliver(after: Vec<AfterSync>) {
    for a in after {
        match a {
            AfterSync::Http(o) => http::respond(o.request, o.status, o.body),
            AfterSync::Watch(tx, detail) => {
                let _ = tx.send(detail);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) struct Shared {
    pub cfg: ControllerConfig,
    pub started: Instant,
    pub epoch_ms: u64,
    /// The core's clock when this process started (0, or where a replayed journal left it
    /// plus the time the controller was down).
    clock_offset: Millis,
    journal: Option<crate::journal::Journal>,
    /// End notifications waiting for the journal to reach their record.
    deferred: Mutex<Vec<(u64, Vec<AfterSync>)>>,
    /// Wakes the sync thread.
    sync_wake: Sender<()>,
    inner: Mutex<Inner>,
    stopping: AtomicBool,
    /// Set by the provisioner each tick (shown in the status).
    provisioning: Mutex<Option<ProvisionStatus>>,
    /// What the application serves under `/api/session` (`None`: those routes answer 404).
    session: std::sync::RwLock<Option<std::sync::Arc<dyn crate::session::Session>>>,
}

impl Shared {
    /// The application's session, if one was set ([`ControllerView::set_session`]).
    pub fn session(&self) -> Option<std::sync::Arc<dyn crate::session::Session>> {
        self.session
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The status summary, with the provisioner's part.
    pub fn status(&self) -> ControllerStatus {
        self.status_and_metrics().0
    }

    /// The status and, in the same moment, the `GET /metrics` text.
    pub fn status_and_metrics(&self) -> (ControllerStatus, String) {
        let inner = self.lock();
        let mut st = inner
            .core
            .status(self.now(), inner.parked_polls.len() as u64);
        let metrics = inner.metrics.clone();
        drop(inner);
        st.provisioning = self
            .provisioning
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let text = metrics.render(&st);
        (st, text)
    }

    /// Milliseconds on the controller's monotonic clock.
    pub fn now(&self) -> Millis {
        self.clock_offset + self.started.elapsed().as_millis() as Millis
    }

    /// Sends the deferred end notifications whose records are on disk.
    fn deliver_durable(&self) {
        let Some(j) = &self.journal else { return };
        let through = j.durability().through;
        let ready: Vec<AfterSync> = {
            let mut d = lock(&self.deferred);
            let (now, later): (Vec<_>, Vec<_>) = d.drain(..).partition(|(seq, _)| *seq <= through);
            *d = later;
            now.into_iter().flat_map(|(_, a)| a).collect()
        };
        deliver(ready);
    }

    /// The number of the last journal record (call under the lock, right after the event).
    pub fn journal_appended(&self) -> Option<u64> {
        self.journal.as_ref().map(|j| j.appended())
    }

    /// What a worker is told of the journal (`None` without a state directory).
    pub fn durability(&self) -> Option<warp_common::protocol::Durability> {
        self.journal.as_ref().map(|j| j.durability())
    }

    /// Whether `worker` is answered before the event it just caused is on disk: a final
    /// report whose reply carries the next task (the worker keeps the report until a later
    /// reply says it is durable; see [`warp_common::protocol::Durability`]).
    pub fn pipelined(&self, reply: &Result<Reply, CoreError>) -> bool {
        self.journal.is_some() && matches!(reply, Ok(Reply::Status(r)) if r.task.is_some())
    }

    /// A task by id: from the core, or from the archive of the state directory once
    /// retention dropped it from memory.
    pub fn task(&self, task: TaskId) -> Option<TaskDetail> {
        let found = self.lock().core.task_detail(task, self.epoch_ms);
        found.or_else(|| self.archived(task))
    }

    /// A task retention dropped from memory, from the state directory's archive (callable
    /// under the lock).
    pub fn archived(&self, task: TaskId) -> Option<TaskDetail> {
        self.journal.as_ref()?.archived(task)
    }

    /// The answer to a wait for `ids` as they stand (call under the lock).
    pub(crate) fn group_answer(&self, inner: &Inner, ids: &[TaskId]) -> WaitResponse {
        let mut r = WaitResponse::default();
        for &id in ids {
            match inner.core.task_state(id) {
                Some(TaskState::Completed) => r.completed.push(id),
                Some(s) if s.is_terminal() => r
                    .unsuccessful
                    .extend(inner.core.task_detail(id, self.epoch_ms)),
                Some(_) => r.pending.push(id),
                None => match self.archived(id) {
                    Some(d) if d.state == TaskState::Completed => r.completed.push(id),
                    Some(d) => r.unsuccessful.push(d),
                    None => r.forgotten.push(id),
                },
            }
        }
        r
    }

    /// Locks the core and the parked requests. The guard writes the responses that events
    /// un-parked (`inner.outbox`) after it releases the lock, when it is dropped: no handler
    /// can forget them, and none is written while the lock is held.
    pub fn lock(&self) -> Locked<'_> {
        // A handler that panicked while holding the lock was already answered with 500; the
        // state it left is still the best we have, so keep serving.
        Locked {
            guard: Some(self.inner.lock().unwrap_or_else(|e| e.into_inner())),
            shared: self,
        }
    }

    /// Queues validated specs in one event (all or none); with `watch`, each task's detail is
    /// sent there once it is terminal. Both the HTTP routes and the in-process API submit
    /// through here.
    pub fn submit(
        &self,
        specs: Vec<TaskSpec>,
        watch: Option<&crossbeam_channel::Sender<TaskDetail>>,
    ) -> Result<Vec<TaskId>, ApiError> {
        let tasks: Vec<(TaskId, TaskSpec)> = specs
            .into_iter()
            .map(|s| (uuid::Uuid::new_v4(), s))
            .collect();
        let ids: Vec<TaskId> = tasks.iter().map(|(id, _)| *id).collect();
        let mut inner = self.lock();
        if let Some(tx) = watch {
            for id in &ids {
                inner
                    .waiters
                    .entry(*id)
                    .or_default()
                    .push(Waiter::Channel(tx.clone()));
            }
        }
        let result = self.apply(&mut inner, Event::Submit { tasks });
        if result.is_err() {
            for id in &ids {
                inner.waiters.remove(id);
            }
        }
        drop(inner);
        result.map_err(ApiError::from)?;
        Ok(ids)
    }

    /// Applies an event and carries out the decisions it produced. Responses to parked
    /// requests go to `inner.outbox`; the [`Locked`] guard writes them when it is dropped.
    pub fn apply(&self, inner: &mut Inner, event: Event) -> Result<Reply, CoreError> {
        let (reply, wait) = self.apply_deferred(inner, event);
        inner.must_sync |= wait;
        reply
    }

    /// [`Shared::apply`], but the caller decides whether the answer waits for the sync:
    /// `true` beside the reply when it must (an acknowledged event that is not pipelined).
    /// The reports of a batch ([`warp_common::protocol::StatusUpdate::also`]) wait only if
    /// the batch's last report does: its receipt covers the records before it.
    pub fn apply_deferred(
        &self,
        inner: &mut Inner,
        event: Event,
    ) -> (Result<Reply, CoreError>, bool) {
        let now = self.now();
        let record = self
            .journal
            .as_ref()
            .map(|_| crate::journal::encode_event(now, &event));
        let acknowledged = match &event {
            Event::Submit { .. } | Event::Cancel { .. } => true,
            Event::Status { update, .. } => update.state.is_terminal(),
            _ => false,
        };
        let reply = inner.core.apply(now, event);
        let mut wait = false;
        if let (Some(j), Some(r)) = (&self.journal, record)
            && crate::journal::journals(&reply)
        {
            j.append(r);
            if acknowledged && self.pipelined(&reply) {
                // Answered before the disk: the sync thread makes it durable soon.
                let _ = self.sync_wake.try_send(());
            } else {
                wait = acknowledged;
            }
        }
        let decisions = inner.core.take_decisions();
        for d in decisions {
            self.carry_out(inner, d);
        }
        (reply, wait)
    }

    fn carry_out(&self, inner: &mut Inner, decision: Decision) {
        match decision {
            Decision::Deliver {
                worker,
                assignment,
                more,
            } => {
                // No parked request: the worker gets the same leases again on its next poll.
                if let Some(p) = inner.parked_polls.remove(&worker) {
                    if self.journal.is_some() {
                        let expected = (std::iter::once(&assignment).chain(&more))
                            .map(|a| inner.core.expected_ms(a.id))
                            .sum::<Option<f64>>();
                        if let Some(ms) = expected.filter(|&ms| ms <= SHORT_TASK_MS) {
                            let g = Duration::from_secs_f64((ms + SYNC_GRACE_MS) / 1000.0);
                            inner.sync_grace = Some(inner.sync_grace.map_or(g, |o| o.max(g)));
                        }
                    }
                    let body = serde_json::to_vec(&PollResponse {
                        task: assignment,
                        more,
                    })
                    .expect("assignment serialises");
                    inner.outbox.push(Outgoing {
                        request: p.request,
                        status: 200,
                        body: Some(body),
                    });
                }
            }
            Decision::Release { worker } => {
                if let Some(p) = inner.parked_polls.remove(&worker) {
                    inner.outbox.push(Outgoing {
                        request: p.request,
                        status: 204,
                        body: None,
                    });
                }
            }
            Decision::Finished { task } => {
                if let Some(f) = inner.core.task_facts(task) {
                    inner.metrics.on_finished(&f);
                }
                let Some(waiters) = inner.waiters.remove(&task) else {
                    return;
                };
                let detail = inner
                    .core
                    .task_detail(task, self.epoch_ms)
                    .expect("finished task exists");
                if detail.state == TaskState::Failed {
                    log::info!(
                        "task {task} failed for good: {}",
                        warp_common::for_log(detail.error.as_deref().unwrap_or(""), 2048)
                    );
                }
                for w in waiters {
                    let a = match w {
                        Waiter::Http { request, .. } => AfterSync::Http(Outgoing {
                            request,
                            status: 200,
                            body: Some(serde_json::to_vec(&detail).expect("detail serialises")),
                        }),
                        Waiter::Channel(tx) => AfterSync::Watch(tx, detail.clone()),
                        Waiter::Group(g) => {
                            let Some(group) = inner.groups.get_mut(&g) else {
                                continue;
                            };
                            group.left -= 1;
                            if group.left > 0 {
                                continue;
                            }
                            let group = inner.groups.remove(&g).expect("found");
                            let answer = self.group_answer(inner, &group.ids);
                            AfterSync::Http(Outgoing {
                                request: group.request,
                                status: 200,
                                body: Some(serde_json::to_vec(&answer).expect("serialises")),
                            })
                        }
                    };
                    inner.after_sync.push(a);
                }
            }
            Decision::WorkerRegistered { worker, spawn_id } => {
                let e = WorkerEvent::Registered { worker, spawn_id };
                inner.subscribers.retain(|s| s.send(e.clone()).is_ok());
            }
            Decision::WorkerLost {
                worker,
                reason,
                left,
            } => {
                // Leaving is normal (a stop, an idle exit); going silent is not.
                let level = if left {
                    log::Level::Info
                } else {
                    log::Level::Warn
                };
                log::log!(
                    level,
                    "worker {worker} {}: {}",
                    if left { "left" } else { "lost" },
                    warp_common::for_log(&reason, warp_common::MAX_REASON)
                );
                let e = WorkerEvent::Lost { worker, reason };
                inner.subscribers.retain(|s| s.send(e.clone()).is_ok());
            }
            Decision::Evicted { detail } => {
                if let Some(j) = &self.journal {
                    j.archive(&crate::journal::with_epoch(*detail, self.epoch_ms));
                }
            }
            Decision::WorkerForgotten { worker } => {
                // Its console stays readable a while (why did it stop?), the last
                // DEPARTED_CONSOLES of them, so departed workers cost bounded memory.
                if inner.consoles.contains_key(&worker) {
                    inner.departed.push_back(worker);
                    while inner.departed.len() > DEPARTED_CONSOLES {
                        if let Some(old) = inner.departed.pop_front() {
                            inner.consoles.remove(&old);
                        }
                    }
                }
            }
        }
    }

    /// Writes queued responses; call without holding the lock.
    fn flush(outbox: Vec<Outgoing>) {
        for o in outbox {
            http::respond(o.request, o.status, o.body);
        }
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// One timer step: expire parked polls and waiters, apply `Tick`.
    fn tick(&self) {
        let now = self.now();
        let mut inner = self.lock();
        let expired: Vec<WorkerId> = inner
            .parked_polls
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(w, _)| *w)
            .collect();
        for worker in expired {
            let p = inner.parked_polls.remove(&worker).expect("listed");
            inner.outbox.push(Outgoing {
                request: p.request,
                status: 204,
                body: None,
            });
            let _ = self.apply(&mut inner, Event::PollExpired { worker });
        }
        let mut timed_out = Vec::new();
        for (task, ws) in inner.waiters.iter_mut() {
            let mut i = 0;
            while i < ws.len() {
                if matches!(&ws[i], Waiter::Http { deadline, .. } if *deadline <= now) {
                    timed_out.push((*task, ws.swap_remove(i)));
                } else {
                    i += 1;
                }
            }
        }
        let mut groups: Vec<u64> = (inner.groups.iter())
            .filter(|(_, g)| g.deadline <= now)
            .map(|(n, _)| *n)
            .collect();
        groups.sort_unstable();
        for n in groups {
            let group = inner.groups.remove(&n).expect("listed");
            for id in &group.ids {
                if let Some(ws) = inner.waiters.get_mut(id) {
                    ws.retain(|w| !matches!(w, Waiter::Group(x) if *x == n));
                }
            }
            // After the sync, as the answer at completion: a completion it lists may be one
            // answered to its worker before the disk.
            let answer = self.group_answer(&inner, &group.ids);
            inner.after_sync.push(AfterSync::Http(Outgoing {
                request: group.request,
                status: 200,
                body: Some(serde_json::to_vec(&answer).expect("serialises")),
            }));
        }
        inner.waiters.retain(|_, ws| !ws.is_empty());
        for (task, w) in timed_out {
            if let Waiter::Http { request, .. } = w {
                let detail = inner.core.task_detail(task, self.epoch_ms);
                let body = serde_json::to_vec(&detail).expect("detail serialises");
                inner.outbox.push(Outgoing {
                    request,
                    status: 200,
                    body: Some(body),
                });
            }
        }
        let _ = self.apply(&mut inner, Event::Tick);
        drop(inner);
        // Records no acknowledgement waited for (heartbeats, polls) reach the disk within a
        // tick.
        if let Some(j) = &self.journal {
            j.sync(j.appended());
            self.deliver_durable();
        }
        if self
            .journal
            .as_ref()
            .is_some_and(|j| j.snapshot_due(self.cfg.snapshot_bytes))
            && let Err(e) = self.snapshot()
        {
            // The journal holds everything still: the next tick tries again.
            log::error!("snapshot failed: {e}");
        }
    }

    /// Writes a snapshot of the state and deletes the journal segments it replaces; returns
    /// its size (`Ok(None)` without a state directory). The lock is held only to copy the
    /// state, not to write it.
    pub fn snapshot(&self) -> Result<Option<u64>, String> {
        let Some(j) = &self.journal else {
            return Ok(None);
        };
        let t0 = Instant::now();
        let pending = {
            let inner = self.lock();
            j.begin_snapshot(&inner.core)
        };
        let held = t0.elapsed();
        let bytes = j.finish_snapshot(pending).map_err(|e| e.to_string())?;
        log::info!(
            "snapshot of the state written ({bytes} bytes, {:.3} s, lock held {:.3} s); older journal segments deleted",
            t0.elapsed().as_secs_f64(),
            held.as_secs_f64()
        );
        Ok(Some(bytes))
    }
}

/// Raises this process's soft limit of open files to its hard limit, once, and returns the
/// soft limit: every connection (a worker's poll, a client) holds two descriptors, and
/// distributions default the soft limit to 1,024 while the hard one is often far higher.
fn raise_open_file_limit() -> u64 {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return;
            }
            if lim.rlim_cur < lim.rlim_max {
                let before = lim.rlim_cur;
                lim.rlim_cur = lim.rlim_max;
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                    log::info!(
                        "open files: soft limit raised from {before} to {}",
                        lim.rlim_max
                    );
                }
            }
        }
    });
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as above.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_cur
}

/// Consoles of departed workers (deregistered, or forgotten after a long time offline) kept
/// for reading; older ones are dropped.
const DEPARTED_CONSOLES: usize = 64;

/// A submit (or other acknowledged event) that hands tasks expected to take at most this
/// long (ms, the measured mean of their kind) to an idle worker waits up to their expected
/// time plus [`SYNC_GRACE_MS`] for the worker's report before it syncs alone: the report's
/// sync then covers both records, and the caller waiting for the result sees one sync on
/// the way instead of two in a row. The submit's answer is later by at most that.
const SHORT_TASK_MS: f64 = 1.0;
const SYNC_GRACE_MS: f64 = 1.0;

/// Descriptors kept out of the connection cap: the listener, logs, files the job writes,
/// pipes of the programs the provisioner runs.
const RESERVED_FDS: u64 = 64;

/// The connection cap for an open-file limit: two descriptors each, less the reserve, within
/// 16..=100,000 (threads, not descriptors, bound it beyond that).
fn connection_cap(open_files: u64) -> usize {
    (open_files.saturating_sub(RESERVED_FDS) / 2).clamp(16, 100_000) as usize
}

/// A running controller. Dropping it shuts it down.
pub struct Controller {
    shared: Arc<Shared>,
    /// Dropped on stop: the listener closes and connections take no further request.
    server: Option<tiny_http::Server>,
    threads: Vec<JoinHandle<()>>,
    port: u16,
    timer_stop: Option<Sender<()>>,
    recovery: Option<crate::journal::RecoveryReport>,
}

impl Controller {
    /// Binds and starts serving. Fails if the address cannot be bound.
    pub fn start(cfg: ControllerConfig) -> Result<Controller, String> {
        let open_files = raise_open_file_limit();
        let addr = format!("{}:{}", cfg.bind, cfg.port);
        let listener = std::net::TcpListener::bind(&addr).map_err(|e| {
            format!("cannot listen on {addr}: {e} (is the port in use? try --port 0)")
        })?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(cfg.port);
        let max_connections = match cfg.max_connections {
            0 => connection_cap(open_files),
            n => n,
        };
        log::debug!("at most {max_connections} connections (open-file limit {open_files})");
        let core_cfg = CoreConfig {
            heartbeat_timeout_ms: cfg.heartbeat_timeout.as_millis() as u64,
            task_timeout_ms: cfg.task_timeout.as_millis() as u64,
            max_attempts: cfg.max_attempts,
            heartbeat_interval_ms: cfg.effective_heartbeat_interval().as_millis() as u64,
            poll_hold_ms: cfg.poll_hold.as_millis() as u64,
            keep_finished: cfg.keep_finished,
            // Long enough for a node that lost its link to come back (it registers again
            // after that anyway).
            forget_offline_ms: (cfg.heartbeat_timeout.as_millis() as u64)
                .saturating_mul(10)
                .max(3_600_000),
            batch_budget_ms: crate::core::BATCH_BUDGET_MS,
        };
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let (core, epoch_ms, clock_offset, journal, recovery) = match &cfg.state_dir {
            None => (Core::new(core_cfg), unix_now, 0, None, None),
            Some(dir) => {
                let t0 = Instant::now();
                let r = crate::journal::open(dir, core_cfg, unix_now).map_err(|e| {
                    format!("cannot use the state directory {}: {e}", dir.display())
                })?;
                // The clock goes on where it stopped, plus the time the controller was down.
                let offset = r.core.now().max(unix_now.saturating_sub(r.epoch_ms));
                if r.report.fresh {
                    log::info!("state directory {}: new", dir.display());
                } else {
                    log::info!(
                        "state directory {}: {} tasks and {} workers restored in {:.3} s (snapshot {}, {} events replayed from {} segment(s), {} bytes)",
                        dir.display(),
                        r.core.task_ids(None).len(),
                        r.core.workers(0).len(),
                        t0.elapsed().as_secs_f64(),
                        r.report
                            .snapshot
                            .map_or("none".to_string(), |g| g.to_string()),
                        r.report.events,
                        r.report.segments,
                        r.report.bytes
                    );
                }
                (r.core, r.epoch_ms, offset, Some(r.journal), Some(r.report))
            }
        };
        // Timer resolution: a tenth of the shortest interval it enforces, within 2..100 ms.
        let shortest = cfg
            .poll_hold
            .min(cfg.heartbeat_timeout)
            .min(cfg.task_timeout);
        let tick = (shortest / 10).clamp(Duration::from_millis(2), Duration::from_millis(100));
        let timeouts = cfg.timeouts();
        let (sync_wake, sync_rx) = crossbeam_channel::bounded::<()>(1);
        let shared = Arc::new(Shared {
            cfg,
            started: Instant::now(),
            epoch_ms,
            clock_offset,
            journal,
            deferred: Mutex::new(Vec::new()),
            sync_wake,
            inner: Mutex::new(Inner {
                core,
                parked_polls: HashMap::new(),
                waiters: HashMap::new(),
                groups: HashMap::new(),
                next_group: 0,
                consoles: HashMap::new(),
                departed: std::collections::VecDeque::new(),
                subscribers: Vec::new(),
                outbox: Vec::new(),
                after_sync: Vec::new(),
                must_sync: false,
                sync_grace: None,
                metrics: Default::default(),
            }),
            stopping: AtomicBool::new(false),
            provisioning: Mutex::new(None),
            session: std::sync::RwLock::new(None),
        });
        if recovery.as_ref().is_some_and(|r| !r.fresh) {
            // Workers that held tasks re-attach with their leases; parked polls are gone.
            let mut inner = shared.lock();
            let _ = shared.apply(&mut inner, Event::Recover);
        }
        // Weak: connection threads may outlive the controller by a timeout; they then answer
        // 503 and hold nothing.
        let weak = Arc::downgrade(&shared);
        let handler: tiny_http::Handler = Arc::new(move |req| match weak.upgrade() {
            Some(s) if !s.stopping() => http::handle(&s, req),
            _ => http::respond_error(req, &ApiError::shutting_down()),
        });
        // A build without the `tls` feature refuses the configuration in tiny_http.
        let ssl = match &shared.cfg.tls {
            Some(files) => Some(files.load()?),
            None => None,
        };
        let server = tiny_http::Server::from_listener_with(
            listener,
            ssl,
            tiny_http::ServerOptions {
                handler: Some(handler),
                timeouts: Some(timeouts),
                max_connections,
            },
        )
        .map_err(|e| match &shared.cfg.tls {
            Some(f) => format!(
                "cannot serve HTTPS with {} and {}: {e}",
                f.cert.display(),
                f.key.display()
            ),
            None => format!("cannot serve on {addr}: {e}"),
        })?;
        let mut threads = Vec::new();
        let (timer_stop, stop_rx) = crossbeam_channel::bounded::<()>(1);
        let s = Arc::clone(&shared);
        threads.push(
            std::thread::Builder::new()
                .name("timer".into())
                .spawn(move || {
                    while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                        stop_rx.recv_timeout(tick)
                    {
                        s.tick();
                    }
                })
                .map_err(|e| format!("cannot start the timer thread: {e}"))?,
        );
        if shared.journal.is_some() {
            // Makes durable what was answered before the disk (pipelined final reports) and
            // sends the end notifications that waited for it.
            let s = Arc::clone(&shared);
            threads.push(
                std::thread::Builder::new()
                    .name("journal-sync".into())
                    .spawn(move || {
                        while !s.stopping() {
                            let _ = sync_rx.recv_timeout(Duration::from_millis(50));
                            if let Some(j) = &s.journal {
                                j.sync(j.appended());
                            }
                            s.deliver_durable();
                        }
                    })
                    .map_err(|e| format!("cannot start the journal sync thread: {e}"))?,
            );
        }
        Ok(Controller {
            shared,
            server: Some(server),
            threads,
            port,
            timer_stop: Some(timer_stop),
            recovery,
        })
    }

    /// What the start read from the state directory (`None` without one).
    pub fn recovery(&self) -> Option<&crate::journal::RecoveryReport> {
        self.recovery.as_ref()
    }

    /// Writes a snapshot now (the timer does past [`ControllerConfig::snapshot_bytes`] of
    /// journal); its size, `None` without a state directory.
    pub fn snapshot(&self) -> Result<Option<u64>, String> {
        self.shared.snapshot()
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT` when bound to all interfaces, else `http://BIND:PORT`;
    /// `https://` when serving TLS.
    pub fn url(&self) -> String {
        let host = match self.shared.cfg.bind.as_str() {
            "0.0.0.0" | "::" | "[::]" => "127.0.0.1",
            b => b,
        };
        format!("{}://{host}:{}", self.scheme(), self.port)
    }

    /// `https` when serving TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.shared.cfg.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The enrollment token workers need.
    pub fn token(&self) -> &str {
        &self.shared.cfg.token
    }

    /// The admin token the HTTP client routes need.
    pub fn admin_token(&self) -> &str {
        &self.shared.cfg.admin_token
    }

    /// Submits one task. Errors are the 4xx the HTTP API would answer.
    pub fn submit(&self, spec: TaskSpec) -> Result<TaskId, ApiError> {
        spec.validate().map_err(ApiError::invalid)?;
        Ok(self.shared.submit(vec![spec], None)?[0])
    }

    /// Submits one task and returns a channel that receives its detail once it is terminal.
    pub fn submit_watch(&self, spec: TaskSpec) -> Result<(TaskId, Receiver<TaskDetail>), ApiError> {
        spec.validate().map_err(ApiError::invalid)?;
        let (tx, rx) = crossbeam_channel::bounded(1);
        Ok((self.shared.submit(vec![spec], Some(&tx))?[0], rx))
    }

    /// Submits many tasks at once: all are checked first, then queued [`MAX_BATCH`] at a
    /// time (each chunk all or none), so no submission holds the lock for long.
    pub fn submit_batch(&self, specs: Vec<TaskSpec>) -> Result<Vec<TaskId>, ApiError> {
        self.submit_chunked(specs, None)
    }

    fn submit_chunked(
        &self,
        mut specs: Vec<TaskSpec>,
        watch: Option<&Sender<TaskDetail>>,
    ) -> Result<Vec<TaskId>, ApiError> {
        validate_specs(&specs)?;
        let mut ids = Vec::with_capacity(specs.len());
        while !specs.is_empty() {
            let rest = specs.split_off(specs.len().min(MAX_BATCH));
            let chunk = std::mem::replace(&mut specs, rest);
            ids.extend(self.shared.submit(chunk, watch)?);
        }
        Ok(ids)
    }

    /// Submits many tasks at once (all or none); one channel receives each task's detail as it
    /// becomes terminal. Queued together, so workers polling meanwhile see all of them (and are
    /// told which one they will read ahead for).
    pub fn submit_batch_watch(
        &self,
        specs: Vec<TaskSpec>,
    ) -> Result<(Vec<TaskId>, Receiver<TaskDetail>), ApiError> {
        // Room for every detail, so finishing a task never waits on the reader.
        let (tx, rx) = crossbeam_channel::bounded(specs.len().max(1));
        Ok((self.submit_chunked(specs, Some(&tx))?, rx))
    }

    /// Queues validated specs like [`Controller::submit_batch`]; `tx` receives each task's
    /// detail once it is terminal (room for all of them, or finishing tasks wait on the
    /// reader).
    pub fn submit_batch_notify(
        &self,
        specs: Vec<TaskSpec>,
        tx: &Sender<TaskDetail>,
    ) -> Result<Vec<TaskId>, ApiError> {
        self.submit_chunked(specs, Some(tx))
    }

    /// Sends each task's detail to `tx` once it is terminal (at once for those that are);
    /// the ids the controller does not know are returned.
    pub fn watch(&self, ids: &[TaskId], tx: &Sender<TaskDetail>) -> Vec<TaskId> {
        let mut unknown = Vec::new();
        let mut inner = self.shared.lock();
        for &id in ids {
            match inner.core.task_detail(id, self.shared.epoch_ms) {
                Some(d) if d.state.is_terminal() => {
                    let _ = tx.send(d);
                }
                Some(_) => inner
                    .waiters
                    .entry(id)
                    .or_default()
                    .push(Waiter::Channel(tx.clone())),
                None => unknown.push(id),
            }
        }
        unknown
    }

    /// What a task was submitted as.
    pub fn task_spec(&self, task: TaskId) -> Option<TaskSpec> {
        self.shared.lock().core.task_spec(task).cloned()
    }

    /// Removes a worker as if it had deregistered: its task goes back to the queue at once
    /// (not counted as a failed attempt). For a restarted main program whose old local
    /// workers cannot come back.
    pub fn forget_worker(&self, worker: WorkerId, reason: &str) -> Result<(), ApiError> {
        let mut inner = self.shared.lock();
        let r = self.shared.apply(
            &mut inner,
            Event::Deregister {
                worker,
                reason: reason.to_string(),
            },
        );
        drop(inner);
        r.map(|_| ()).map_err(ApiError::from)
    }

    /// Cancels a task; returns its state afterwards.
    pub fn cancel(&self, task: TaskId) -> Result<TaskState, ApiError> {
        let mut inner = self.shared.lock();
        let result = self.shared.apply(&mut inner, Event::Cancel { task });
        drop(inner);
        match result.map_err(ApiError::from)? {
            Reply::Cancelled(s) => Ok(s),
            r => unreachable!("cancel replied {r:?}"),
        }
    }

    /// `GET /api/workers/status`.
    pub fn status(&self) -> ControllerStatus {
        self.shared.status()
    }

    /// A handle for in-process helpers such as the provisioner.
    pub fn view(&self) -> ControllerView {
        ControllerView {
            shared: Arc::clone(&self.shared),
        }
    }

    /// `GET /api/workers/active`.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        self.shared.lock().core.workers(self.shared.epoch_ms)
    }

    /// Tasks waiting in any queue.
    pub fn queue_length(&self) -> usize {
        self.shared.lock().core.queue_length()
    }

    /// `GET /api/workers/tasks/{id}`.
    pub fn task(&self, task: TaskId) -> Option<TaskDetail> {
        self.shared.task(task)
    }

    /// Every task, in submission order.
    pub fn tasks(&self) -> Vec<TaskDetail> {
        let inner = self.shared.lock();
        inner
            .core
            .task_ids(None)
            .into_iter()
            .filter_map(|id| inner.core.task_detail(id, self.shared.epoch_ms))
            .collect()
    }

    /// A channel of worker registrations and losses from now on.
    pub fn subscribe(&self) -> Receiver<WorkerEvent> {
        let (tx, rx) = crossbeam_channel::unbounded();
        self.shared.lock().subscribers.push(tx);
        rx
    }

    /// Checks the core's invariants (for tests and the stress program).
    pub fn sanity_check(&self) -> Result<(), String> {
        self.shared.lock().core.sanity_check()
    }

    /// Stops serving: parked requests get 503, threads are joined.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.shared.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = self.shared.sync_wake.try_send(());
        drop(self.timer_stop.take());
        let mut inner = self.shared.lock();
        let mut out: Vec<Outgoing> = inner
            .parked_polls
            .drain()
            .map(|(_, p)| Outgoing {
                request: p.request,
                status: 503,
                body: None,
            })
            .collect();
        for (_, ws) in inner.waiters.drain() {
            for w in ws {
                if let Waiter::Http { request, .. } = w {
                    out.push(Outgoing {
                        request,
                        status: 503,
                        body: None,
                    });
                }
            }
        }
        for (_, g) in inner.groups.drain() {
            out.push(Outgoing {
                request: g.request,
                status: 503,
                body: None,
            });
        }
        drop(inner);
        for o in out {
            http::respond_error(o.request, &ApiError::shutting_down());
        }
        // What no acknowledgement waited for (heartbeats, polls) goes to disk too.
        if let Some(j) = &self.shared.journal {
            j.sync(j.appended());
            self.shared.deliver_durable();
        }
        // Closes the listener; connections answer 503 from now on and end by their timeouts.
        self.server = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What in-process helpers (the provisioner) may see and set of a running controller.
#[derive(Clone)]
pub struct ControllerView {
    shared: Arc<Shared>,
}

impl ControllerView {
    /// A worker process the caller spawned has exited without deregistering: it is lost now,
    /// and its task's attempt counts as failed (see `Event::Exited`). A worker that left
    /// properly, or one already lost, changes nothing.
    pub fn worker_exited(&self, worker: WorkerId, reason: &str) {
        let mut inner = self.shared.lock();
        let _ = self.shared.apply(
            &mut inner,
            Event::Exited {
                worker,
                reason: reason.to_string(),
            },
        );
    }

    /// Queue, running tasks, live workers and the jobs they came from (spawn id `job-<ID>`).
    pub fn observation(&self) -> crate::provision::planner::Observation {
        let inner = self.shared.lock();
        let st = inner.core.status(0, 0);
        let workers = inner.core.workers(0);
        drop(inner);
        let alive: Vec<_> = workers
            .iter()
            .filter(|w| w.state != WorkerState::Offline)
            .collect();
        crate::provision::planner::Observation {
            queued: st.queue_length as usize,
            running: (st.tasks.assigned + st.tasks.running) as usize,
            alive_workers: alive.len(),
            jobs_with_workers: alive
                .iter()
                .filter_map(|w| {
                    w.spawn_id
                        .as_deref()?
                        .strip_prefix("job-")
                        .map(str::to_string)
                })
                .collect(),
        }
    }

    /// Serves `session` under `/api/session` (the status page's pictures and selection).
    pub fn set_session(&self, session: std::sync::Arc<dyn crate::session::Session>) {
        *self
            .shared
            .session
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(session);
    }

    /// Publishes the provisioner's status.
    pub fn set_provisioning(&self, status: Option<ProvisionStatus>) {
        *self
            .shared
            .provisioning
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = status;
    }
}

/// A tiny_http response with a JSON body.
pub(crate) fn json_response(status: u16, body: Vec<u8>) -> tiny_http::Response<Cursor<Vec<u8>>> {
    let len = body.len();
    tiny_http::Response::new(
        tiny_http::StatusCode(status),
        vec![http::content_type_json()],
        Cursor::new(body),
        Some(len),
        None,
    )
}

/// Most tasks one `POST /api/tasks/batch` may carry: one submit holds the core's lock while
/// it queues its tasks, and every worker's call waits meanwhile. Bigger arrays go in several
/// batches (the CLI and the admin client's callers split them).
pub const MAX_BATCH: usize = 10_000;

/// A batch sent over HTTP: at most [`MAX_BATCH`] tasks, each valid; errors name the index.
pub(crate) fn validate_batch(specs: &[TaskSpec]) -> Result<(), ApiError> {
    if specs.len() > MAX_BATCH {
        return Err(ApiError::new(
            413,
            "batch_too_large",
            format!(
                "{} tasks in one batch; at most {MAX_BATCH}: split it into several",
                specs.len()
            ),
        ));
    }
    validate_specs(specs)
}

/// Every spec, checked before any is queued; errors name the task's index.
fn validate_specs(specs: &[TaskSpec]) -> Result<(), ApiError> {
    for (i, s) in specs.iter().enumerate() {
        s.validate()
            .map_err(|e| ApiError::invalid(format!("task {i}: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp_common::commands::Command;
    use warp_common::protocol::{Capabilities, RegisterRequest, RegisterResponse};

    /// Issue 10: the "take the outbox, drop the lock, flush" sequence was repeated by hand; a
    /// handler that forgot it left a parked worker's assignment waiting for an unrelated event.
    /// Now dropping the lock writes it.
    #[test]
    fn dropping_the_lock_delivers_to_a_parked_poll() {
        let mut cfg = ControllerConfig::new("admin".into());
        cfg.bind = "127.0.0.1".into();
        cfg.poll_hold = Duration::from_secs(20);
        let c = Controller::start(cfg).unwrap();
        let base = format!("http://127.0.0.1:{}", c.port());
        let agent = ureq::AgentBuilder::new().try_proxy_from_env(false).build();
        let reg: RegisterResponse = agent
            .post(&format!("{base}/api/workers/register"))
            .set("Authorization", "Bearer admin")
            .send_json(RegisterRequest {
                protocol_version: warp_common::PROTOCOL_VERSION,
                device: 0,
                hostname: "test".into(),
                capabilities: Capabilities::default(),
                worker_version: String::new(),
                spawn_id: None,
                pid: None,
            })
            .unwrap()
            .into_json()
            .unwrap();
        let poll = {
            let (agent, url) = (
                agent.clone(),
                format!("{base}/api/workers/{}/poll", reg.worker_id),
            );
            let auth = format!("Bearer {}", reg.token);
            std::thread::spawn(move || {
                let started = Instant::now();
                let r = agent.get(&url).set("Authorization", &auth).call().unwrap();
                (r.status(), started.elapsed())
            })
        };
        let t0 = Instant::now();
        while c.shared.lock().parked_polls.is_empty() {
            assert!(t0.elapsed() < Duration::from_secs(10), "poll never parked");
            std::thread::sleep(Duration::from_millis(5));
        }
        // What a handler does: apply an event under the lock, then let the lock go.
        let mut inner = c.shared.lock();
        let tasks = vec![(
            uuid::Uuid::new_v4(),
            TaskSpec::new(vec![Command::exec(["true".to_string()])]),
        )];
        c.shared.apply(&mut inner, Event::Submit { tasks }).unwrap();
        assert_eq!(inner.outbox.len(), 1, "the assignment waits in the outbox");
        drop(inner);
        let (status, waited) = poll.join().unwrap();
        assert_eq!(status, 200);
        assert!(waited < Duration::from_secs(10), "{waited:?}");
    }

    /// Issue 16, row 9: one 16 MiB batch of 322k tasks held the lock 0.37 s. Over HTTP a batch
    /// is at most `MAX_BATCH` (413 beyond); in process a big one is queued in chunks.
    #[test]
    fn giant_batches_are_refused_over_http_and_chunked_in_process() {
        let mut cfg = ControllerConfig::new("admin".into());
        cfg.bind = "127.0.0.1".into();
        let c = Controller::start(cfg).unwrap();
        let spec = || TaskSpec::new(vec![Command::Sleep { ms: 1 }]);
        let ids = c
            .submit_batch((0..MAX_BATCH * 2 + 5).map(|_| spec()).collect())
            .unwrap();
        assert_eq!(ids.len(), MAX_BATCH * 2 + 5);
        assert_eq!(c.queue_length(), MAX_BATCH * 2 + 5);
        let body = serde_json::json!({
            "tasks": (0..=MAX_BATCH).map(|_| spec()).collect::<Vec<_>>()
        });
        let err = ureq::AgentBuilder::new()
            .try_proxy_from_env(false)
            .build()
            .post(&format!("http://127.0.0.1:{}/api/tasks/batch", c.port()))
            .set("Authorization", &format!("Bearer {}", c.admin_token()))
            .send_json(body)
            .unwrap_err();
        let ureq::Error::Status(code, resp) = err else {
            panic!("transport error: {err}");
        };
        assert_eq!(code, 413);
        let v: serde_json::Value = resp.into_json().unwrap();
        assert_eq!(v["code"], "batch_too_large", "{v}");
        assert_eq!(
            c.queue_length(),
            MAX_BATCH * 2 + 5,
            "nothing of it was queued"
        );
    }
}

//! Bodies of the HTTP pull protocol, each type once.
//!
//! All bodies are JSON. Workers call (bearer token issued at registration on every call after it):
//!
//! ```text
//! POST /api/workers/register               RegisterRequest   -> RegisterResponse   (enrollment token)
//! GET  /api/workers/{id}/poll              -                 -> 200 PollResponse | 204 (hold expired)
//! POST /api/workers/{id}/heartbeat         HeartbeatRequest  -> HeartbeatResponse
//! POST /api/workers/{id}/tasks/{task}/status StatusUpdate    -> StatusResponse | 409 (stale lease)
//! POST /api/workers/{id}/deregister        DeregisterRequest -> Ack
//! ```
//!
//! A worker that registers a [`Capabilities::max_batch`] above 1 may get several tasks in one
//! reply ([`PollResponse::more`]; only tasks of a kind the controller measured as short) and
//! reports them in one call ([`StatusUpdate::also`]).
//!
//! Clients (admin = enrollment token): `POST /api/tasks` ([`TaskSpec`] -> [`SubmitResponse`]),
//! `POST /api/tasks/batch`, `POST /api/tasks/{id}/cancel`, `GET /api/tasks/{id}/wait`,
//! `POST /api/tasks/wait` ([`WaitRequest`] -> [`WaitResponse`]), and the monitoring endpoints
//! returning [`ControllerStatus`], [`WorkerInfo`] lists and [`TaskDetail`]s.
//! Every error is [`ApiErrorBody`] with a 4xx/5xx status. The full list with schemas is the
//! OpenAPI document the controller serves at `GET /api/openapi.json`.
//!
//! Times in monitoring bodies are milliseconds since the Unix epoch (`*_unix_ms`) or durations
//! measured on the controller's monotonic clock (`*_ms_ago`).

use crate::commands::Command;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Identifies a worker for the lifetime of one registration.
pub type WorkerId = Uuid;
/// Identifies a task (work package).
pub type TaskId = Uuid;
/// Identifies one assignment (attempt) of a task; unique within a controller's lifetime.
pub type LeaseId = u64;

/// Body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    /// What went wrong and, where possible, how to fix it.
    pub error: String,
    /// Stable machine-readable code (`unauthorized`, `stale_lease`, `unknown_worker`, ...).
    pub code: String,
}

/// What a worker can do, sent at registration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Capabilities {
    /// The GPU this worker drives, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuInfo>,
    /// CPU threads available to the worker.
    #[serde(default)]
    pub cpu_threads: u32,
    /// Command names the worker understands ([`Command::NAMES`] of its build).
    #[serde(default)]
    pub commands: Vec<String>,
    /// The most tasks the worker takes in one assignment (`--batch`): it runs them in order
    /// and reports them together (`StatusUpdate::also`). 0 or 1: one at a time. The
    /// controller batches only tasks whose kind it measured as short (see
    /// [`PollResponse::more`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_batch: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A GPU as reported by a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// Device name as the driver reports it.
    pub name: String,
    /// Total device memory in MiB.
    pub memory_mb: u64,
}

/// `POST /api/workers/register`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// Must equal the controller's [`crate::PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// Device index the worker serves (`-d N`); used by device targets.
    pub device: i32,
    /// Host the worker runs on.
    pub hostname: String,
    /// What the worker can do.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// The worker's build version.
    #[serde(default)]
    pub worker_version: String,
    /// Opaque tag chosen by whoever spawned the worker (the drop-in wrapper), so it can tell
    /// which registration belongs to which process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spawn_id: Option<String>,
    /// Process id of the worker on its host, for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// Reply to a registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// The worker's id; part of every later URL.
    pub worker_id: WorkerId,
    /// Per-worker bearer token for every later call.
    pub token: String,
    /// How often to heartbeat.
    pub heartbeat_interval_ms: u64,
    /// How long the controller holds a poll before answering 204.
    pub poll_hold_ms: u64,
    /// The controller's protocol version (equal to the worker's, or registration fails).
    pub protocol_version: u32,
    /// The controller's build version.
    pub controller_version: String,
}

/// The optional first part of a work package, skipped by a worker that already holds the state
/// it produces (same fingerprint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitPart {
    /// Names the state the commands produce (e.g. a hash of the gain reference path and flips).
    pub fingerprint: String,
    /// Commands that produce it.
    pub commands: Vec<Command>,
}

/// A task as handed to a worker: one attempt of a work package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// The task.
    pub id: TaskId,
    /// This attempt's lease; every status report carries it.
    pub lease: LeaseId,
    /// 1 for the first assignment, +1 for each re-assignment.
    pub attempt: u32,
    /// Init part, run unless the worker holds `init.fingerprint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<InitPart>,
    /// The main part, run in order; the first failure fails the task.
    pub commands: Vec<Command>,
    /// Files the worker's next task will read (its `LoadStack` movie): the worker reads them
    /// into the page cache once this task has read its own inputs, so the next movie's disk
    /// read overlaps this one's computation. A hint: that task is kept for this worker, but
    /// another worker with nothing else to do may take it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_ahead: Vec<String>,
}

/// `200` reply of a poll.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PollResponse {
    /// The assigned task.
    pub task: Assignment,
    /// Further tasks leased to the worker with it, to run after `task` in this order (only to
    /// a worker that registered a `max_batch` above 1, and only tasks of a kind whose
    /// attempts the controller measured as short: a batch holds about 20 ms of expected work).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more: Vec<Assignment>,
}

/// One line of a worker's log, numbered from 0 over the worker's lifetime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsoleLine {
    /// Absolute line number.
    pub n: u64,
    /// The line, without its newline.
    pub text: String,
}

/// `POST /api/workers/{id}/heartbeat`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    /// The task the worker is executing, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_task: Option<TaskId>,
    /// Its lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseId>,
    /// Init fingerprint of the state the worker holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_fingerprint: Option<String>,
    /// Log lines written since the last shipment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub console: Vec<ConsoleLine>,
}

/// Reply to a heartbeat.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// Tasks the worker must stop (cancelled, timed out, or re-assigned elsewhere).
    #[serde(default)]
    pub cancel: Vec<TaskId>,
    /// Where the controller's journal stands (only with a state directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable: Option<Durability>,
}

/// How far a controller with a state directory has its journal on disk. A report answered
/// with a [`StatusResponse::receipt`] is on disk once `through` reaches the receipt in a reply
/// of the same `run`; until then the worker keeps it, and sends it again before it polls (a
/// controller that restarted in between is another run and may not have it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Durability {
    /// This controller process's journal (every start is a new run).
    pub run: uuid::Uuid,
    /// Records up to this number are on disk.
    pub through: u64,
}

/// State reported in a [`StatusUpdate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportState {
    /// The worker started the task.
    Running,
    /// Still running; `progress` says how far.
    Progress,
    /// Done; `result` holds the outcome.
    Completed,
    /// Failed; `error` says why.
    Failed,
}

impl ReportState {
    /// Completed or failed.
    pub fn is_terminal(self) -> bool {
        matches!(self, ReportState::Completed | ReportState::Failed)
    }
}

/// How far a running task is.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Progress {
    /// 0..=1 when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f64>,
    /// Free text ("command 2 of 5: Exec").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `POST /api/workers/{id}/tasks/{taskId}/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusUpdate {
    /// The lease of the attempt this report belongs to; a stale lease gets 409.
    pub lease: LeaseId,
    /// What happened.
    pub state: ReportState,
    /// With `completed`: the [`TaskResult`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// With `failed`: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// With `progress`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Worker-measured time since the task started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed_ms: Option<u64>,
    /// Init fingerprint the worker holds after this task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_fingerprint: Option<String>,
    /// Log lines written since the last shipment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub console: Vec<ConsoleLine>,
    /// With a terminal state: the worker is free and asks for its next task in the reply
    /// (answered at once, never held), saving one round trip per task.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub want_next: bool,
    /// With `failed`: the input is at fault and another attempt would fail the same way (a
    /// damaged or unreadable file, an invalid request), so the task fails for good now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub permanent: bool,
    /// Terminal reports of earlier tasks of the same batch ([`PollResponse::more`]), applied
    /// in order before this one: a batch is reported in one call. Each is accepted or refused
    /// (409) on its own; the reply's `refused` names those refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<TaskReport>,
}

/// One task's report inside [`StatusUpdate::also`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskReport {
    /// The task.
    pub task: TaskId,
    /// Its terminal report (its own `also` and `want_next` are ignored).
    pub update: StatusUpdate,
}

/// Reply to a status report.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StatusResponse {
    /// True when the controller recorded the report.
    pub accepted: bool,
    /// True when the worker must stop this task.
    #[serde(default)]
    pub cancel: bool,
    /// The next task, when `want_next` was set and work was waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<Assignment>,
    /// Further tasks leased with `task`, as in [`PollResponse::more`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more: Vec<Assignment>,
    /// Reports of [`StatusUpdate::also`] the controller refused (stale leases): their
    /// results are discarded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<TaskId>,
    /// A terminal report answered (with its next task) before it was on disk: the number of
    /// its journal record; see [`Durability`]. Absent: the report is on disk (or there is no
    /// journal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<u64>,
    /// Where the journal stands (only with a state directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable: Option<Durability>,
}

/// `POST /api/workers/{id}/deregister`: the worker is leaving (SIGTERM, idle exit). Its current
/// task, if any, goes back to the queue at once and does not count as a failed attempt.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DeregisterRequest {
    /// Why, for the log.
    #[serde(default)]
    pub reason: String,
}

/// What a completed task reports as its result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// One result per main command, in order.
    pub results: Vec<serde_json::Value>,
    /// False when the worker skipped the init part because it held the fingerprint.
    pub init_ran: bool,
}

/// Which workers may take a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Any worker (the shared queue).
    #[default]
    Any,
    /// Only this worker (its own queue). Fails if the worker goes offline.
    Worker(WorkerId),
    /// Any worker serving this device index.
    Device(i32),
}

/// `POST /api/tasks`: a work package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Optional init part (see [`InitPart`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<InitPart>,
    /// The main part.
    pub commands: Vec<Command>,
    /// Who may run it.
    #[serde(default)]
    pub target: Target,
    /// Higher runs first; ties run in submission order.
    #[serde(default)]
    pub priority: i32,
    /// Free text for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Overrides the controller's `--max-attempts` for this task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Overrides the controller's `--task-timeout` for this task (seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<f64>,
}

impl TaskSpec {
    /// A package of `commands` for any worker, defaults elsewhere.
    pub fn new(commands: Vec<Command>) -> TaskSpec {
        TaskSpec {
            init: None,
            commands,
            target: Target::Any,
            priority: 0,
            label: None,
            max_attempts: None,
            timeout_s: None,
        }
    }

    /// Checks what serde cannot; the controller refuses a spec that fails with 400.
    pub fn validate(&self) -> Result<(), String> {
        if self.commands.is_empty() && self.init.is_none() {
            return Err("a task needs at least one command".into());
        }
        if let Some(init) = &self.init {
            if init.fingerprint.is_empty() {
                return Err("init.fingerprint must not be empty".into());
            }
            for c in &init.commands {
                c.validate().map_err(|e| format!("init: {e}"))?;
            }
        }
        for (i, c) in self.commands.iter().enumerate() {
            c.validate().map_err(|e| format!("command {i}: {e}"))?;
        }
        if self.max_attempts == Some(0) {
            return Err("max_attempts must be at least 1".into());
        }
        // Characters, as the API document's maxLength counts them.
        if let Some(l) = &self.label
            && l.chars().count() > crate::MAX_LABEL
        {
            return Err(format!(
                "label is {} characters; at most {} are kept",
                l.chars().count(),
                crate::MAX_LABEL
            ));
        }
        if let Some(t) = self.timeout_s
            && (!t.is_finite() || t <= 0.0 || t > crate::commands::MAX_TIMEOUT_S)
        {
            return Err(format!(
                "timeout_s must be > 0 and at most {}, got {t}",
                crate::commands::MAX_TIMEOUT_S
            ));
        }
        Ok(())
    }
}

/// `POST /api/tasks/batch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSubmit {
    /// The packages, submitted atomically (all or none).
    pub tasks: Vec<TaskSpec>,
}

/// Reply to a submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmitResponse {
    /// The new task's id.
    pub id: TaskId,
}

/// Reply to a batch submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchSubmitResponse {
    /// Ids in the order of the submitted tasks.
    pub ids: Vec<TaskId>,
}

/// `POST /api/tasks/wait`: wait for many tasks in one call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaitRequest {
    /// The tasks (1 to 10,000; repeats count once).
    pub ids: Vec<TaskId>,
    /// Hold at most this long (default 30, at most 300 seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<f64>,
}

/// Reply to [`WaitRequest`]: where the tasks stand once all are terminal or the hold passed.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct WaitResponse {
    /// Completed ones.
    #[serde(default)]
    pub completed: Vec<TaskId>,
    /// Failed or cancelled ones, in full.
    #[serde(default)]
    pub unsuccessful: Vec<TaskDetail>,
    /// Ones not terminal yet (the hold passed first).
    #[serde(default)]
    pub pending: Vec<TaskId>,
    /// Finished ones whose record retention dropped (a controller without a state
    /// directory keeps only their counts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forgotten: Vec<TaskId>,
}

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting in a queue.
    Queued,
    /// Handed to a worker, no report yet.
    Assigned,
    /// The worker reported it running.
    Running,
    /// Finished with a result (terminal).
    Completed,
    /// Failed for good (terminal).
    Failed,
    /// Cancelled by a client (terminal).
    Cancelled,
}

impl TaskState {
    /// Completed, failed or cancelled.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Failed | TaskState::Cancelled
        )
    }

    /// Lower-case name as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Assigned => "assigned",
            TaskState::Running => "running",
            TaskState::Completed => "completed",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// Still assigned or running.
    Active,
    /// The worker reported completion.
    Completed,
    /// The worker reported failure.
    Failed,
    /// The worker went silent past the heartbeat timeout.
    WorkerLost,
    /// The attempt ran past the task timeout.
    TimedOut,
    /// The worker gave the task back (SIGTERM); not counted as a failure.
    Released,
    /// A client cancelled the task.
    Cancelled,
}

/// One attempt in a task's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// Attempt number (1-based).
    pub attempt: u32,
    /// Its lease.
    pub lease: LeaseId,
    /// The worker it ran on.
    pub worker_id: WorkerId,
    /// That worker's host.
    pub hostname: String,
    /// When it was handed out.
    pub assigned_unix_ms: u64,
    /// When the worker reported it running (or, for quick tasks, when it started by the worker's
    /// own measure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_unix_ms: Option<u64>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_unix_ms: Option<u64>,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// The error of a failed, lost or timed-out attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A task as the monitoring endpoints show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDetail {
    /// Task id.
    pub id: TaskId,
    /// Operator's label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Current state.
    pub state: TaskState,
    /// Number of assignments so far (0 while never assigned).
    pub attempt: u32,
    /// Worker of the current or last attempt.
    #[serde(default)]
    pub worker_id: Option<WorkerId>,
    /// Who may run it.
    pub target: Target,
    /// Queue priority.
    pub priority: i32,
    /// Submission time.
    pub created_unix_ms: u64,
    /// Time of the current or last assignment.
    #[serde(default)]
    pub assigned_unix_ms: Option<u64>,
    /// Start of the current or last attempt.
    #[serde(default)]
    pub started_unix_ms: Option<u64>,
    /// When it reached a terminal state.
    #[serde(default)]
    pub finished_unix_ms: Option<u64>,
    /// [`TaskResult`] of a completed task.
    #[serde(default)]
    pub result: Option<serde_json::Value>,
    /// Error of a failed task (the last attempt's; each attempt's is in `history`).
    #[serde(default)]
    pub error: Option<String>,
    /// Last progress report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// One entry per attempt.
    pub history: Vec<AttemptRecord>,
}

/// Liveness of a worker as the controller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Alive, no task.
    Idle,
    /// Alive, running a task.
    Busy,
    /// Silent past the heartbeat timeout; revived by its next call. (A worker that
    /// deregisters is removed from the list.)
    Offline,
}

/// A worker as `GET /api/workers/active` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Worker id.
    pub id: WorkerId,
    /// Device index.
    pub device: i32,
    /// Host.
    pub hostname: String,
    /// Liveness.
    pub state: WorkerState,
    /// Task being run.
    pub current_task: Option<TaskId>,
    /// Time since the worker's last call of any kind.
    pub last_heartbeat_ms_ago: u64,
    /// Registration time.
    pub registered_unix_ms: u64,
    /// What it can do.
    pub capabilities: Capabilities,
    /// Its build version.
    pub worker_version: String,
    /// Init fingerprint of the state it holds.
    #[serde(default)]
    pub held_fingerprint: Option<String>,
    /// Tasks it completed.
    pub tasks_completed: u64,
    /// Attempts that failed on it.
    pub tasks_failed: u64,
    /// Tag of whoever spawned it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spawn_id: Option<String>,
    /// Its process id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// Counts of workers by state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct WorkerCounts {
    /// Idle workers.
    pub idle: u64,
    /// Busy workers.
    pub busy: u64,
    /// Offline workers.
    pub offline: u64,
}

/// Counts of tasks by state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TaskCounts {
    /// Queued.
    pub queued: u64,
    /// Assigned.
    pub assigned: u64,
    /// Running.
    pub running: u64,
    /// Completed.
    pub completed: u64,
    /// Failed.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
}

/// `GET /api/workers/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControllerStatus {
    /// Controller build.
    pub version: String,
    /// Wire protocol version.
    pub protocol_version: u32,
    /// Time since start.
    pub uptime_ms: u64,
    /// Workers by state.
    pub workers: WorkerCounts,
    /// Tasks by state.
    pub tasks: TaskCounts,
    /// Tasks waiting in any queue.
    pub queue_length: u64,
    /// Polls currently held.
    pub parked_polls: u64,
    /// Status reports refused because their lease was stale, since this controller process
    /// started (a refusal changes no state, so the journal does not keep it).
    pub stale_reports_refused: u64,
    /// Tasks handed out as the rest of a batch (`PollResponse::more`), since this
    /// controller process started (or since the start of its journal's replay).
    #[serde(default)]
    pub batched_assignments: u64,
    /// Effective `--poll-hold`.
    pub poll_hold_ms: u64,
    /// Effective `--heartbeat-timeout`.
    pub heartbeat_timeout_ms: u64,
    /// Effective `--task-timeout`.
    pub task_timeout_ms: u64,
    /// Effective `--max-attempts`.
    pub max_attempts: u32,
    /// Worker jobs the controller submitted itself (`serve --provision`), when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning: Option<ProvisionStatus>,
}

/// What the provisioner is doing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProvisionStatus {
    /// Batch system (`slurm`).
    pub mode: String,
    /// `--max-workers`.
    pub max_workers: u64,
    /// Jobs being tracked.
    pub jobs: Vec<ProvisionedJob>,
    /// Submissions so far (failed ones included).
    pub submitted_total: u64,
    /// Consecutive failures (submit errors, jobs dying before their worker registered).
    pub failure_streak: u32,
    /// Time left of a pause after repeated failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_for_ms: Option<u64>,
    /// The last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// A worker job the controller submitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProvisionedJob {
    /// The scheduler's job id.
    pub id: String,
    /// `pending`, `starting` (running, no worker yet), `serving` (worker registered) or
    /// `unknown` (the scheduler could not be asked).
    pub state: String,
    /// Time since submission.
    pub age_ms: u64,
}

/// `GET /api/workers/{id}/console...`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsoleLines {
    /// Lines the worker has written in all (the controller keeps only the last ones).
    pub total: u64,
    /// Number of the oldest line still kept.
    pub first_kept: u64,
    /// The lines asked for.
    pub lines: Vec<ConsoleLine>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn targets_serialise_as_documented() {
        assert_eq!(serde_json::to_value(Target::Any).unwrap(), json!("any"));
        assert_eq!(
            serde_json::to_value(Target::Device(2)).unwrap(),
            json!({"device": 2})
        );
        let spec: TaskSpec = serde_json::from_value(json!({
            "commands": [{"name": "Sleep", "params": {"ms": 1}}],
            "target": {"device": 1}
        }))
        .unwrap();
        assert_eq!(spec.target, Target::Device(1));
        assert_eq!(spec.priority, 0);
    }

    #[test]
    fn task_spec_validation() {
        assert!(TaskSpec::new(vec![]).validate().is_err());
        assert!(
            TaskSpec::new(vec![Command::Sleep { ms: 1 }])
                .validate()
                .is_ok()
        );
        let mut s = TaskSpec::new(vec![Command::Sleep { ms: 1 }]);
        s.max_attempts = Some(0);
        assert!(s.validate().is_err());
    }

    #[test]
    fn status_update_minimal_body_parses() {
        let s: StatusUpdate =
            serde_json::from_value(json!({"lease": 3, "state": "running"})).unwrap();
        assert_eq!(s.state, ReportState::Running);
        assert!(!s.want_next);
        assert!(
            serde_json::from_value::<StatusUpdate>(json!({"lease": 3, "state": "done"})).is_err()
        );
    }
}

//! A blocking client of the controller's admin API (submit, wait, cancel, monitoring, console).
//! Used by the CLI subcommands and by tests; environment proxies are never used.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use warp_common::protocol::{
    ApiErrorBody, BatchSubmit, BatchSubmitResponse, ConsoleLines, ControllerStatus, SubmitResponse,
    TaskDetail, TaskId, TaskSpec, TaskState, WaitRequest, WaitResponse, WorkerInfo,
};

use crate::server::MAX_BATCH;

/// How long [`AdminClient::wait`] retries an unreachable controller (one restarting from its
/// state directory comes back within seconds).
pub const WAIT_OUTAGE: Duration = Duration::from_secs(300);

/// What can go wrong talking to the controller.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// No connection (refused, timed out, DNS).
    Transport(String),
    /// The controller answered with an error.
    Api {
        /// HTTP status.
        status: u16,
        /// Error code.
        code: String,
        /// Message.
        message: String,
    },
    /// The answer was not what the protocol says.
    Decode(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Transport(m) => write!(f, "cannot reach the controller: {m}"),
            ClientError::Api {
                status,
                code,
                message,
            } => write!(f, "{message} ({code}, HTTP {status})"),
            ClientError::Decode(m) => write!(f, "unexpected answer from the controller: {m}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// Admin client bound to one controller.
pub struct AdminClient {
    base: String,
    auth: String,
    agent: ureq::Agent,
}

impl AdminClient {
    /// A client of the controller at `url` (`HOST:PORT` or `http(s)://HOST:PORT`); an https
    /// controller's certificate is checked against the public authorities.
    pub fn new(url: &str, token: &str) -> Result<AdminClient, String> {
        Self::with_ca(url, token, None)
    }

    /// [`AdminClient::new`] trusting the certificate(s) in `ca_file` for an https controller.
    pub fn with_ca(
        url: &str,
        token: &str,
        ca_file: Option<&std::path::Path>,
    ) -> Result<AdminClient, String> {
        let base = warp_common::normalize_controller_url(url)?;
        #[allow(unused_mut)]
        let mut b = ureq::AgentBuilder::new()
            .try_proxy_from_env(false)
            .timeout_connect(Duration::from_secs(10));
        #[cfg(feature = "tls")]
        if let Some(tls) = warp_common::tls::for_url(&base, ca_file)? {
            b = b.tls_config(tls);
        }
        #[cfg(not(feature = "tls"))]
        let _ = ca_file;
        let agent = b.build();
        Ok(AdminClient {
            base,
            auth: format!("Bearer {token}"),
            agent,
        })
    }

    /// The controller's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
        read_timeout: Duration,
    ) -> Result<T, ClientError> {
        let req = self
            .agent
            .request(method, &format!("{}{path}", self.base))
            .set("Authorization", &self.auth)
            .timeout(read_timeout);
        let result = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match result {
            Ok(resp) => resp
                .into_json()
                .map_err(|e| ClientError::Decode(e.to_string())),
            Err(ureq::Error::Status(status, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                Err(match serde_json::from_str::<ApiErrorBody>(&text) {
                    Ok(b) => ClientError::Api {
                        status,
                        code: b.code,
                        message: b.error,
                    },
                    Err(_) => ClientError::Api {
                        status,
                        code: String::new(),
                        message: text,
                    },
                })
            }
            Err(e) => Err(ClientError::Transport(warp_common::tls::with_hint(
                e.to_string(),
            ))),
        }
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call("GET", path, None::<&()>, Duration::from_secs(30))
    }

    /// Submits one work package.
    pub fn submit(&self, spec: &TaskSpec) -> Result<TaskId, ClientError> {
        let r: SubmitResponse =
            self.call("POST", "/api/tasks", Some(spec), Duration::from_secs(30))?;
        Ok(r.id)
    }

    /// Submits many packages: one `POST /api/tasks/batch` per [`MAX_BATCH`] (each all or
    /// none; on an error, the earlier batches are queued).
    pub fn submit_batch(&self, mut tasks: Vec<TaskSpec>) -> Result<Vec<TaskId>, ClientError> {
        let mut ids = Vec::with_capacity(tasks.len());
        while !tasks.is_empty() {
            let rest = tasks.split_off(tasks.len().min(MAX_BATCH));
            let batch = std::mem::replace(&mut tasks, rest);
            let r: BatchSubmitResponse = self.call(
                "POST",
                "/api/tasks/batch",
                Some(&BatchSubmit { tasks: batch }),
                Duration::from_secs(60),
            )?;
            ids.extend(r.ids);
        }
        Ok(ids)
    }

    /// Waits until the task is terminal or `timeout` passes; returns its detail either way.
    /// Rides out a controller restart (unreachable, or 503 while it stops): it retries for
    /// up to [`WAIT_OUTAGE`], so a wait survives a controller with a state directory coming
    /// back.
    pub fn wait(&self, task: TaskId, timeout: Option<Duration>) -> Result<TaskDetail, ClientError> {
        let start = Instant::now();
        loop {
            let left = timeout.map(|t| t.saturating_sub(start.elapsed()));
            let hold = left
                .unwrap_or(Duration::from_secs(30))
                .min(Duration::from_secs(30));
            let detail: TaskDetail = self.through_outage(&format!("task {task}"), left, || {
                self.call(
                    "GET",
                    &format!("/api/tasks/{task}/wait?timeout_s={:.3}", hold.as_secs_f64()),
                    None::<&()>,
                    hold + Duration::from_secs(30),
                )
            })?;
            if detail.state.is_terminal() || left.is_some_and(|l| l.is_zero()) {
                return Ok(detail);
            }
        }
    }

    /// `POST /api/tasks/wait`: one call for up to 10,000 tasks, answered once all are
    /// terminal or after `hold` (at most 300 s), with those still pending named. Rides out a
    /// controller restart as [`AdminClient::wait`] does.
    pub fn wait_many(&self, ids: &[TaskId], hold: Duration) -> Result<WaitResponse, ClientError> {
        let hold = hold.min(Duration::from_secs(300));
        let body = WaitRequest {
            ids: ids.to_vec(),
            timeout_s: Some(hold.as_secs_f64()),
        };
        self.through_outage(&format!("{} task(s)", ids.len()), Some(hold), || {
            self.call(
                "POST",
                "/api/tasks/wait",
                Some(&body),
                hold + Duration::from_secs(30),
            )
        })
    }

    /// `call()` again while the controller is unreachable or stopping (503), for up to
    /// [`WAIT_OUTAGE`]; not once `left` is zero.
    fn through_outage<T>(
        &self,
        what: &str,
        left: Option<Duration>,
        mut call: impl FnMut() -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let mut outage: Option<Instant> = None;
        loop {
            match call() {
                Err(e @ (ClientError::Transport(_) | ClientError::Api { status: 503, .. })) => {
                    let since = *outage.get_or_insert_with(Instant::now);
                    if since.elapsed() >= WAIT_OUTAGE || left.is_some_and(|l| l.is_zero()) {
                        return Err(e);
                    }
                    if since.elapsed() < Duration::from_millis(600) {
                        log::warn!("waiting for {what}: {e}; retrying");
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                r => return r,
            }
        }
    }

    /// Cancels a task.
    pub fn cancel(&self, task: TaskId) -> Result<TaskState, ClientError> {
        #[derive(serde::Deserialize)]
        struct Cancelled {
            state: TaskState,
        }
        let r: Cancelled = self.call(
            "POST",
            &format!("/api/tasks/{task}/cancel"),
            None::<&()>,
            Duration::from_secs(30),
        )?;
        Ok(r.state)
    }

    /// `GET /api/workers/status`.
    pub fn status(&self) -> Result<ControllerStatus, ClientError> {
        self.get("/api/workers/status")
    }

    /// `GET /api/workers/active` (with offline workers when `all`).
    pub fn workers(&self, all: bool) -> Result<Vec<WorkerInfo>, ClientError> {
        self.get(if all {
            "/api/workers/active?all=1"
        } else {
            "/api/workers/active"
        })
    }

    /// `GET /api/workers/tasks`, optionally filtered by state.
    pub fn tasks(
        &self,
        state: Option<TaskState>,
        limit: usize,
    ) -> Result<Vec<TaskDetail>, ClientError> {
        let filter = state
            .map(|s| format!("&state={}", s.as_str()))
            .unwrap_or_default();
        self.get(&format!("/api/workers/tasks?limit={limit}{filter}"))
    }

    /// Every task, paged through `offset` (the controller answers at most 10,000 a call),
    /// optionally filtered by state.
    pub fn all_tasks(&self, state: Option<TaskState>) -> Result<Vec<TaskDetail>, ClientError> {
        const PAGE: usize = 10_000;
        let filter = state
            .map(|s| format!("&state={}", s.as_str()))
            .unwrap_or_default();
        let mut all = Vec::new();
        loop {
            let page: Vec<TaskDetail> = self.get(&format!(
                "/api/workers/tasks?limit={PAGE}&offset={}{filter}",
                all.len()
            ))?;
            let n = page.len();
            all.extend(page);
            if n < PAGE {
                return Ok(all);
            }
        }
    }

    /// `GET /api/workers/tasks/{id}`.
    pub fn task(&self, task: TaskId) -> Result<TaskDetail, ClientError> {
        self.get(&format!("/api/workers/tasks/{task}"))
    }

    /// The last `n` console lines of a worker.
    pub fn console_last(&self, worker: uuid::Uuid, n: usize) -> Result<ConsoleLines, ClientError> {
        self.get(&format!("/api/workers/{worker}/console?last={n}"))
    }
}

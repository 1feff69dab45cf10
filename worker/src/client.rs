//! Typed HTTP client of the worker side of the pull protocol (`warp_common::protocol`).
//!
//! One `ureq::Agent` is shared by every call of a worker (keep-alive). It never takes a proxy
//! from the environment: a cluster's `HTTP_PROXY` usually cannot reach the controller on an
//! internal address. Only `--proxy` sets one.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::Read;
use std::time::Duration;
use uuid::Uuid;
use warp_common::protocol::{
    ApiErrorBody, Assignment, DeregisterRequest, HeartbeatRequest, HeartbeatResponse, LeaseId,
    PollResponse, RegisterRequest, RegisterResponse, StatusResponse, StatusUpdate, TaskId,
    WorkerId,
};

/// Deadline of every call but the long-poll, which gets the controller's hold plus a margin.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a call failed.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// The controller could not be reached, answered 5xx or sent an unreadable reply: worth a
    /// retry after a backoff.
    Unavailable(String),
    /// The controller refused the call (4xx).
    Refused {
        /// HTTP status.
        status: u16,
        /// `ApiErrorBody::code` (empty when the body was not one).
        code: String,
        /// `ApiErrorBody::error`, or the raw body.
        message: String,
    },
}

impl CallError {
    /// The error code of a refusal.
    pub fn code(&self) -> Option<&str> {
        match self {
            CallError::Refused { code, .. } => Some(code),
            CallError::Unavailable(_) => None,
        }
    }

    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            CallError::Refused { status, .. } => Some(*status),
            CallError::Unavailable(_) => None,
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unavailable(m) => f.write_str(m),
            CallError::Refused {
                status,
                code,
                message,
            } => write!(f, "{status} {code}: {message}"),
        }
    }
}

/// The worker's identity for one registration. `Debug` leaves the token out.
#[derive(Clone)]
pub struct Session {
    /// Id issued by the controller.
    pub worker_id: WorkerId,
    /// `Authorization` header value with the per-worker token.
    auth: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Session {{ worker_id: {}, auth: <redacted> }}",
            self.worker_id
        )
    }
}

impl Session {
    /// A session for `worker_id` authenticated by `token`.
    pub fn new(worker_id: WorkerId, token: &str) -> Session {
        Session {
            worker_id,
            auth: format!("Bearer {token}"),
        }
    }
}

/// A task received from the controller.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A task this build can run.
    Task(Assignment),
    /// A task this build cannot parse (e.g. an unknown command from a newer controller): it is
    /// reported failed with `error`.
    Unrunnable {
        /// The task.
        id: TaskId,
        /// Its lease.
        lease: LeaseId,
        /// Why it cannot run (the parse error, naming the unknown command).
        error: String,
    },
}

/// Reply to a status report.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusReply {
    /// The controller recorded the report.
    pub accepted: bool,
    /// The task must stop.
    pub cancel: bool,
    /// The next task, and the rest of its batch, in the order to run them (asked for with
    /// `want_next`); empty: none.
    pub next: Vec<Incoming>,
    /// Reports of the call's `also` the controller refused (stale leases).
    pub refused: Vec<TaskId>,
    /// The report was answered before the controller's journal had it: its record number.
    pub receipt: Option<u64>,
    /// Where the controller's journal stands.
    pub durable: Option<warp_common::protocol::Durability>,
}

/// HTTP client of one controller.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
}

impl Client {
    /// A client of `base` (`http(s)://host:port`), through `proxy` when given; an https
    /// controller's certificate is checked against `ca_file` (else the public authorities).
    pub fn new(
        base: &str,
        proxy: Option<&str>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Client, String> {
        let mut b = ureq::AgentBuilder::new()
            .try_proxy_from_env(false)
            .timeout_connect(Duration::from_secs(10))
            .timeout(CALL_TIMEOUT)
            .max_idle_connections_per_host(4)
            .user_agent(concat!("warp-worker/", env!("CARGO_PKG_VERSION")));
        if let Some(p) = proxy {
            b = b.proxy(ureq::Proxy::new(p).map_err(|e| format!("--proxy '{p}': {e}"))?);
        }
        #[cfg(feature = "tls")]
        if let Some(tls) = warp_common::tls::for_url(base, ca_file)? {
            b = b.tls_config(tls);
        }
        #[cfg(not(feature = "tls"))]
        let _ = ca_file;
        Ok(Client {
            agent: b.build(),
            base: base.to_string(),
        })
    }

    /// The controller's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `POST /api/workers/register` with the enrollment token.
    pub fn register(
        &self,
        token: &str,
        body: &RegisterRequest,
    ) -> Result<RegisterResponse, CallError> {
        let rq = self
            .agent
            .post(&format!("{}/api/workers/register", self.base));
        let bytes = send(
            rq.set("Authorization", &format!("Bearer {token}")),
            Some(body),
        )?;
        parse(&bytes)
    }

    /// `GET /api/workers/{id}/poll`: the task and the rest of its batch; empty when the hold
    /// expired without work.
    pub fn poll(&self, s: &Session, timeout: Duration) -> Result<Vec<Incoming>, CallError> {
        let url = format!("{}/api/workers/{}/poll", self.base, s.worker_id);
        let rq = self
            .agent
            .get(&url)
            .set("Authorization", &s.auth)
            .timeout(timeout);
        let bytes = send(rq, None::<&()>)?;
        if bytes.is_empty() {
            return Ok(Vec::new());
        }
        match serde_json::from_slice::<PollResponse>(&bytes) {
            Ok(p) => Ok(std::iter::once(p.task)
                .chain(p.more)
                .map(Incoming::Task)
                .collect()),
            Err(_) => each_incoming(&bytes),
        }
    }

    /// `POST /api/workers/{id}/heartbeat`.
    pub fn heartbeat(
        &self,
        s: &Session,
        body: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, CallError> {
        let url = format!("{}/api/workers/{}/heartbeat", self.base, s.worker_id);
        parse(&send(
            self.agent.post(&url).set("Authorization", &s.auth),
            Some(body),
        )?)
    }

    /// `POST /api/workers/{id}/tasks/{task}/status`.
    pub fn status(
        &self,
        s: &Session,
        task: TaskId,
        body: &StatusUpdate,
    ) -> Result<StatusReply, CallError> {
        let url = format!(
            "{}/api/workers/{}/tasks/{task}/status",
            self.base, s.worker_id
        );
        let bytes = send(
            self.agent.post(&url).set("Authorization", &s.auth),
            Some(body),
        )?;
        match serde_json::from_slice::<StatusResponse>(&bytes) {
            Ok(r) => Ok(StatusReply {
                accepted: r.accepted,
                cancel: r.cancel,
                next: r
                    .task
                    .into_iter()
                    .chain(r.more)
                    .map(Incoming::Task)
                    .collect(),
                refused: r.refused,
                receipt: r.receipt,
                durable: r.durable,
            }),
            Err(_) => {
                // Most likely a next task this build cannot run; the report itself went through.
                let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                Ok(StatusReply {
                    accepted: v["accepted"].as_bool().unwrap_or(false),
                    cancel: v["cancel"].as_bool().unwrap_or(false),
                    receipt: v["receipt"].as_u64(),
                    durable: serde_json::from_value(v["durable"].clone()).ok(),
                    refused: serde_json::from_value(v["refused"].clone()).unwrap_or_default(),
                    next: if v.get("task").is_some() {
                        each_incoming(&bytes)?
                    } else {
                        Vec::new()
                    },
                })
            }
        }
    }

    /// `POST /api/workers/{id}/deregister`.
    pub fn deregister(&self, s: &Session, reason: &str) -> Result<(), CallError> {
        let url = format!("{}/api/workers/{}/deregister", self.base, s.worker_id);
        let body = DeregisterRequest {
            reason: reason.to_string(),
        };
        send(
            self.agent.post(&url).set("Authorization", &s.auth),
            Some(&body),
        )
        .map(drop)
    }
}

/// Sends `rq` (with a JSON body when given) and returns the body of a 2xx reply.
fn send<B: Serialize>(rq: ureq::Request, body: Option<&B>) -> Result<Vec<u8>, CallError> {
    let url = rq.url().to_string();
    let reply = match body {
        Some(b) => {
            let bytes = serde_json::to_vec(b).map_err(|e| CallError::Unavailable(e.to_string()))?;
            rq.set("Content-Type", "application/json")
                .send_bytes(&bytes)
        }
        None => rq.call(),
    };
    match reply {
        Ok(r) => read_body(r)
            .map_err(|e| CallError::Unavailable(format!("{url}: reading the reply: {e}"))),
        Err(ureq::Error::Status(status, r)) => {
            let bytes = read_body(r).unwrap_or_default();
            let (code, message) = match serde_json::from_slice::<ApiErrorBody>(&bytes) {
                Ok(b) => (b.code, b.error),
                Err(_) => (
                    String::new(),
                    String::from_utf8_lossy(&bytes).trim().to_string(),
                ),
            };
            if status >= 500 {
                Err(CallError::Unavailable(format!(
                    "{url}: controller answered {status}: {message}"
                )))
            } else {
                Err(CallError::Refused {
                    status,
                    code,
                    message,
                })
            }
        }
        Err(e) => Err(CallError::Unavailable(warp_common::tls::with_hint(
            e.to_string(),
        ))),
    }
}

fn read_body(r: ureq::Response) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    r.into_reader().read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CallError> {
    serde_json::from_slice(bytes)
        .map_err(|e| CallError::Unavailable(format!("unreadable reply from the controller: {e}")))
}

/// A reply whose tasks (`task`, then `more`) did not all parse: each one on its own, so a
/// task this build cannot run is kept with its id and lease to be reported failed.
fn each_incoming(bytes: &[u8]) -> Result<Vec<Incoming>, CallError> {
    let v: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    let more = v["more"].as_array().map_or(&[][..], |m| &m[..]);
    std::iter::once(&v["task"])
        .chain(more)
        .map(
            |task| match serde_json::from_value::<Assignment>(task.clone()) {
                Ok(a) => Ok(Incoming::Task(a)),
                Err(e) => unrunnable(task, &e),
            },
        )
        .collect()
}

/// A task body that did not parse: keep its id and lease so it can be reported failed.
fn unrunnable(task: &serde_json::Value, err: &serde_json::Error) -> Result<Incoming, CallError> {
    let id = task["id"].as_str().and_then(|s| Uuid::parse_str(s).ok());
    match (id, task["lease"].as_u64()) {
        (Some(id), Some(lease)) => Ok(Incoming::Unrunnable {
            id,
            lease,
            error: format!("cannot run task: {err}"),
        }),
        _ => Err(CallError::Unavailable(format!(
            "unreadable task from the controller: {err}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_commands_become_unrunnable_tasks_naming_the_command() {
        let id = Uuid::new_v4();
        let body = json!({"task": {"id": id, "lease": 7, "attempt": 1,
            "commands": [{"name": "Frobnicate", "params": {}}]}});
        let bytes = serde_json::to_vec(&body).unwrap();
        assert!(serde_json::from_slice::<PollResponse>(&bytes).is_err());
        let Incoming::Unrunnable {
            id: got,
            lease,
            error,
        } = each_incoming(&bytes).unwrap().remove(0)
        else {
            panic!("unrunnable expected")
        };
        assert_eq!((got, lease), (id, 7));
        assert!(
            error.starts_with("cannot run task:") && error.contains("Frobnicate"),
            "{error}"
        );
    }
}

//! The HTTP layer: one route table, handlers `fn(&Shared, &mut Call) -> Result<Answer, ApiError>`,
//! JSON errors. Only this module (with [`crate::server`]) knows HTTP; the core knows none.
//!
//! Every route is in [`ROUTES`]; the OpenAPI document (`controller/openapi.json`, served at
//! `GET /api/openapi.json`) describes the same set, and a test checks that they agree.

use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::Serialize;
use serde::de::DeserializeOwned;
use warp_common::protocol::{
    ApiErrorBody, BatchSubmit, BatchSubmitResponse, DeregisterRequest, HeartbeatRequest,
    RegisterRequest, RegisterResponse, StatusUpdate, SubmitResponse, TaskSpec, TaskState, WorkerId,
};
use warp_common::{MAX_ERROR, MAX_HOSTNAME, MAX_REASON, PROTOCOL_VERSION};

use crate::auth;
use crate::core::{CoreError, Event, Reply as CoreReply};
use crate::server::{Inner, Locked, ParkedPoll, Shared, Waiter, json_response};

/// The OpenAPI 3 document of every route below.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// An error answered as `{"error": ..., "code": ...}` with an HTTP status.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Stable code.
    pub code: &'static str,
    /// Message for a person.
    pub message: String,
}

impl ApiError {
    /// An error answered with `status`, a stable `code` and a message for a person.
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    /// 400 `invalid`.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "invalid", message)
    }
    fn unauthorized(what: &str) -> ApiError {
        ApiError::new(
            401,
            "unauthorized",
            format!("missing or wrong bearer token: this endpoint needs {what}"),
        )
    }
    pub(crate) fn shutting_down() -> ApiError {
        ApiError::new(
            503,
            "shutting_down",
            "the controller is shutting down; retry later",
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}, HTTP {})", self.message, self.code, self.status)
    }
}

impl std::error::Error for ApiError {}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> ApiError {
        let (status, code) = match &e {
            CoreError::UnknownWorker(_) => (404, "unknown_worker"),
            CoreError::UnknownTask(_) => (404, "unknown_task"),
            CoreError::StaleLease { .. } => (409, "stale_lease"),
            CoreError::AlreadyFinished(..) => (409, "already_finished"),
            CoreError::Invalid(_) => (400, "invalid"),
            CoreError::TargetUnavailable(_) => (409, "target_unavailable"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// What a handler answers (the core's answer to an event is [`crate::core::Reply`]).
pub(crate) enum Answer {
    Json(u16, Vec<u8>),
    /// A body of another type (the metrics' text).
    Other(u16, Vec<u8>, &'static str),
    /// The request was parked; whoever un-parks it answers it.
    Parked,
}

fn json<T: Serialize>(status: u16, value: &T) -> Result<Answer, ApiError> {
    Ok(Answer::Json(
        status,
        serde_json::to_vec(value).expect("wire types serialise"),
    ))
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Anyone.
    Public,
    /// The enrollment token (what compute nodes hold) or the admin token.
    Enroll,
    /// The view token (read-only monitoring) or the admin token.
    View,
    /// The admin token only.
    Admin,
    /// The per-worker token of the `{id}` in the path (checked by the handler under the lock).
    Worker,
}

/// One route.
#[derive(Debug)]
pub struct Route {
    /// HTTP method.
    pub method: &'static str,
    /// Path with `{name}` placeholders.
    pub pattern: &'static str,
    /// Who may call it.
    pub auth: Auth,
    handler: fn(&Shared, &mut Call) -> Result<Answer, ApiError>,
}

/// Every route the controller serves.
pub static ROUTES: &[Route] = &[
    Route {
        method: "POST",
        pattern: "/api/workers/register",
        auth: Auth::Enroll,
        handler: register,
    },
    Route {
        method: "GET",
        pattern: "/api/workers/status",
        auth: Auth::View,
        handler: controller_status,
    },
    Route {
        method: "GET",
        pattern: "/api/workers/active",
        auth: Auth::View,
        handler: active_workers,
    },
    Route {
        method: "GET",
        pattern: "/api/workers/tasks",
        auth: Auth::View,
        handler: list_tasks,
    },
    Route {
        method: "GET",
        pattern: "/api/workers/tasks/{id}",
        auth: Auth::View,
        handler: task_detail,
    },
    Route {
        method: "GET",
        pattern: "/api/workers/{id}/poll",
        auth: Auth::Worker,
        handler: poll,
    },
    Route {
        method: "POST",
        pattern: "/api/workers/{id}/heartbeat",
        auth: Auth::Worker,
        handler: heartbeat,
    },
    Route {
        method: "POST",
        pattern: "/api/workers/{id}/tasks/{taskId}/status",
        auth: Auth::Worker,
        handler: status,
    },
    Route {
        method: "POST",
        pattern: "/api/workers/{id}/deregister",
        auth: Auth::Worker,
        handler: deregister,
    },
    Route {
        method: "GET",
        pattern: "/api/workers/{id}/console",
        auth: Auth::View,
        handler: console_lines,
    },
    Route {
        method: "GET",
        pattern: "/api/workers/{id}/console/count",
        auth: Auth::View,
        handler: console_count,
    },
    Route {
        method: "POST",
        pattern: "/api/tasks",
        auth: Auth::Admin,
        handler: submit,
    },
    Route {
        method: "POST",
        pattern: "/api/tasks/batch",
        auth: Auth::Admin,
        handler: submit_batch,
    },
    Route {
        method: "POST",
        pattern: "/api/tasks/{id}/cancel",
        auth: Auth::Admin,
        handler: cancel,
    },
    Route {
        method: "GET",
        pattern: "/api/tasks/{id}/wait",
        auth: Auth::View,
        handler: wait_task,
    },
    Route {
        method: "POST",
        pattern: "/api/tasks/wait",
        auth: Auth::View,
        handler: wait_many,
    },
    Route {
        method: "GET",
        pattern: "/api/session",
        auth: Auth::View,
        handler: session_info,
    },
    Route {
        method: "GET",
        pattern: "/api/session/movies/{name}/{image}",
        auth: Auth::View,
        handler: session_image,
    },
    Route {
        method: "POST",
        pattern: "/api/session/selection",
        auth: Auth::Admin,
        handler: session_select,
    },
    Route {
        method: "GET",
        pattern: "/metrics",
        auth: Auth::View,
        handler: metrics,
    },
    Route {
        method: "GET",
        pattern: "/",
        auth: Auth::Public,
        handler: page_html,
    },
    Route {
        method: "GET",
        pattern: "/page.js",
        auth: Auth::Public,
        handler: page_js,
    },
    Route {
        method: "GET",
        pattern: "/page.css",
        auth: Auth::Public,
        handler: page_css,
    },
    Route {
        method: "GET",
        pattern: "/api/health",
        auth: Auth::Public,
        handler: health,
    },
    Route {
        method: "GET",
        pattern: "/api/openapi.json",
        auth: Auth::Public,
        handler: openapi,
    },
];

/// One request being handled.
pub(crate) struct Call {
    /// Taken by a handler that parks the request.
    request: Option<tiny_http::Request>,
    params: Vec<String>,
    query: String,
    body: Vec<u8>,
    token: Option<String>,
}

impl Call {
    fn param(&self, i: usize) -> &str {
        &self.params[i]
    }

    fn uuid_param(&self, i: usize, what: &str) -> Result<uuid::Uuid, ApiError> {
        let code = if what == "worker" {
            "unknown_worker"
        } else {
            "unknown_task"
        };
        uuid::Uuid::parse_str(self.param(i)).map_err(|_| {
            ApiError::new(
                404,
                code,
                format!("unknown {what} '{}': not a UUID", self.param(i)),
            )
        })
    }

    fn body<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if self.body.is_empty() {
            return Err(ApiError::new(
                400,
                "malformed",
                "empty body: expected a JSON object",
            ));
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::new(400, "malformed", format!("malformed JSON body: {e}")))
    }

    /// The value of query parameter `name`.
    /// A query parameter's value, percent-decoded (`+` is a space, as in forms).
    fn query(&self, name: &str) -> Option<String> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| percent_decode(v))
    }

    /// Refuses query parameters the route does not take (400), so a misspelt one is not
    /// silently ignored.
    fn only_query(&self, allowed: &[&str]) -> Result<(), ApiError> {
        for kv in self.query.split('&').filter(|kv| !kv.is_empty()) {
            let key = kv.split_once('=').map_or(kv, |(k, _)| k);
            if !allowed.contains(&key) {
                return Err(ApiError::invalid(format!(
                    "unknown query parameter '{}' (this route takes: {})",
                    warp_common::for_log(&percent_decode(key), 64),
                    if allowed.is_empty() {
                        "none".to_string()
                    } else {
                        allowed.join(", ")
                    }
                )));
            }
        }
        Ok(())
    }

    /// A numeric query parameter. Whole numbers beyond the API document's int64 range are
    /// refused even where the field could hold them, so the document is the truth.
    fn query_num<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, ApiError> {
        self.query(name)
            .map(|v| {
                if !v.is_empty()
                    && v.bytes().all(|b| b.is_ascii_digit())
                    && v.parse::<i64>().is_err()
                {
                    return Err(ApiError::invalid(format!(
                        "query parameter {name}='{v}' is beyond {}",
                        i64::MAX
                    )));
                }
                v.parse().map_err(|_| {
                    ApiError::invalid(format!(
                        "query parameter {name}='{v}' is not a valid number"
                    ))
                })
            })
            .transpose()
    }

    /// Locks the state after checking the worker's own token.
    fn lock_worker<'a>(&self, s: &'a Shared) -> Result<(Locked<'a>, WorkerId), ApiError> {
        let worker = self.uuid_param(0, "worker")?;
        let inner = s.lock();
        match inner
            .core
            .worker_token_matches(worker, self.token.as_deref().unwrap_or(""))
        {
            None => Err(CoreError::UnknownWorker(worker).into()),
            Some(false) => Err(ApiError::unauthorized(
                "the worker's own token (from its registration)",
            )),
            Some(true) => Ok((inner, worker)),
        }
    }
}

/// Decodes `%XX` escapes and `+`; invalid escapes stay as they are.
fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Matches `path` against `pattern`; returns the placeholder values.
fn match_pattern(pattern: &str, path: &str) -> Option<Vec<String>> {
    let mut params = Vec::new();
    let mut pat = pattern.split('/');
    let mut got = path.split('/');
    loop {
        match (pat.next(), got.next()) {
            (None, None) => return Some(params),
            (Some(p), Some(g)) if p.starts_with('{') && !g.is_empty() => params.push(g.to_string()),
            (Some(p), Some(g)) if p == g => {}
            _ => return None,
        }
    }
}

/// Why no route matched: 404 for an unknown path, 405 for a known path with another method
/// (`allow`: the methods it takes, for the `Allow` header RFC 9110 requires with 405).
#[derive(Debug, PartialEq)]
pub struct NoRoute {
    /// 404 or 405.
    pub status: u16,
    /// What to tell the client.
    pub message: String,
    /// The path's methods (405 only).
    pub allow: Vec<&'static str>,
}

/// Finds the route for a method and path: `Ok(route, params)`, or why there is none.
pub fn find_route(method: &str, path: &str) -> Result<(&'static Route, Vec<String>), NoRoute> {
    let mut allow = Vec::new();
    // Literal segments win over placeholders: routes are listed literal-first where they overlap.
    for r in ROUTES {
        if let Some(params) = match_pattern(r.pattern, path) {
            if r.method == method {
                return Ok((r, params));
            }
            if !allow.contains(&r.method) {
                allow.push(r.method);
            }
        }
    }
    if !allow.is_empty() {
        Err(NoRoute {
            status: 405,
            message: format!(
                "method {method} is not allowed on {path} (allowed: {})",
                allow.join(", ")
            ),
            allow,
        })
    } else {
        Err(NoRoute {
            status: 404,
            message: format!("no route {method} {path}; see GET /api/openapi.json"),
            allow,
        })
    }
}

pub(crate) fn content_type_json() -> tiny_http::Header {
    tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
        .expect("valid header")
}

/// Answers a request; errors writing (client gone) are ignored: the lease machinery copes.
pub(crate) fn respond(request: tiny_http::Request, status: u16, body: Option<Vec<u8>>) {
    let _ = match body {
        Some(b) => request.respond(json_response(status, b)),
        None => request.respond(tiny_http::Response::empty(status)),
    };
}

/// The JSON response of an error (an `ApiErrorBody`).
fn error_response(e: &ApiError) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let body = ApiErrorBody {
        error: e.message.clone(),
        code: e.code.to_string(),
    };
    json_response(
        e.status,
        serde_json::to_vec(&body).expect("error serialises"),
    )
}

pub(crate) fn respond_error(request: tiny_http::Request, e: &ApiError) {
    let _ = request.respond(error_response(e));
}

/// Handles one request from start to finish (or until it is parked).
pub(crate) fn handle(s: &Shared, mut request: tiny_http::Request) {
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let method = request.method().as_str().to_ascii_uppercase();
    let (route, params) = match find_route(&method, path) {
        Ok(r) => r,
        Err(no) if no.status == 405 => {
            let allow = tiny_http::Header::from_bytes(&b"Allow"[..], no.allow.join(", "))
                .expect("method names are ASCII");
            let e = ApiError::new(405, "method_not_allowed", no.message);
            let _ = request.respond(error_response(&e).with_header(allow));
            return;
        }
        Err(no) => {
            return respond_error(request, &ApiError::new(no.status, "not_found", no.message));
        }
    };
    let token = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .and_then(|h| auth::bearer(h.value.as_str()).map(str::to_string));
    if let Some(refused) = check_secret(s, route.auth, token.as_deref().unwrap_or("")) {
        return respond_error(request, &refused);
    }
    if route.auth != Auth::Public && route.auth != Auth::Worker {
        // Authenticated: the connection may stay open between requests for the idle timeout
        // (an unauthenticated one only for the header timeout).
        request.trust_connection();
    }
    if route.auth == Auth::Worker {
        // Check the worker's id and token before reading a body: tiny_http reads bodies on this
        // thread, so an unauthenticated client must not be able to hold it with a slow upload.
        // (The handler checks again under the lock it works in.)
        let worker = params.first().and_then(|p| uuid::Uuid::parse_str(p).ok());
        let known = worker.and_then(|w| {
            s.lock()
                .core
                .worker_token_matches(w, token.as_deref().unwrap_or(""))
        });
        match (worker, known) {
            (_, Some(true)) => request.trust_connection(),
            (Some(w), None) => return respond_error(request, &CoreError::UnknownWorker(w).into()),
            (None, _) => {
                let e = ApiError::new(404, "unknown_worker", "unknown worker: not a UUID");
                return respond_error(request, &e);
            }
            (Some(_), Some(false)) => {
                let e = ApiError::unauthorized("the worker's own token (from its registration)");
                return respond_error(request, &e);
            }
        }
    }
    // Routes that take no body refuse one rather than read it.
    let has_body = request.body_length().is_some_and(|n| n > 0)
        || request
            .headers()
            .iter()
            .any(|h| h.field.equiv("Transfer-Encoding"));
    if method == "GET" && has_body {
        let e = ApiError::new(
            400,
            "unexpected_body",
            format!("{method} {path} takes no request body"),
        );
        return respond_error(request, &e);
    }
    let limit = s.cfg.max_body_bytes;
    if request.body_length().is_some_and(|n| n > limit) {
        return respond_error(request, &too_large(limit));
    }
    let mut body = Vec::new();
    match request
        .as_reader()
        .take(limit as u64 + 1)
        .read_to_end(&mut body)
    {
        Ok(n) if n > limit => return respond_error(request, &too_large(limit)),
        Ok(_) => {}
        Err(e) => {
            return respond_error(
                request,
                &ApiError::new(400, "malformed", format!("cannot read the body: {e}")),
            );
        }
    }
    let mut call = Call {
        request: Some(request),
        params,
        query: query.to_string(),
        body,
        token,
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| (route.handler)(s, &mut call)));
    let Some(request) = call.request.take() else {
        return;
    };
    match outcome {
        Ok(Ok(Answer::Json(status, body))) => respond(request, status, Some(body)),
        Ok(Ok(Answer::Other(status, body, content_type))) => {
            let header =
                tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes())
                    .expect("a valid header");
            let mut response = tiny_http::Response::from_data(body)
                .with_status_code(status)
                .with_header(header);
            if content_type.starts_with("text/html") {
                for (k, v) in [
                    ("Content-Security-Policy", PAGE_CSP),
                    ("X-Content-Type-Options", "nosniff"),
                    ("Referrer-Policy", "no-referrer"),
                ] {
                    response.add_header(
                        tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes())
                            .expect("a valid header"),
                    );
                }
            }
            let _ = request.respond(response);
        }
        Ok(Ok(Answer::Parked)) => unreachable!("a parking handler takes the request"),
        Ok(Err(e)) => respond_error(request, &e),
        Err(_) => respond_error(
            request,
            &ApiError::new(
                500,
                "internal",
                format!("internal error handling {method} {path}; the controller keeps running"),
            ),
        ),
    }
}

/// Checks the bearer token of a route that takes one of the controller's secrets; the error
/// says which token the route needs (and, for the enrollment token on a route it cannot call,
/// that it is the wrong one of the three).
fn check_secret(s: &Shared, auth: Auth, presented: &str) -> Option<ApiError> {
    let is = |t: &str| warp_common::constant_time_eq(presented.as_bytes(), t.as_bytes());
    let admin = is(&s.cfg.admin_token);
    let (allowed, needs) = match auth {
        Auth::Public | Auth::Worker => return None,
        Auth::Enroll => (
            admin || is(&s.cfg.token),
            "the enrollment token or the admin token",
        ),
        Auth::View => (
            admin || s.cfg.view_token.as_deref().is_some_and(is),
            "the view token or the admin token",
        ),
        Auth::Admin => (admin, "the admin token"),
    };
    if allowed {
        return None;
    }
    let hint = if !presented.is_empty() && is(&s.cfg.token) {
        " (this is the enrollment token, which only registers workers; clients take \
         --admin-token-file, by default the admin-token file serve wrote beside the \
         enrollment token file)"
    } else {
        ""
    };
    Some(ApiError::unauthorized(&format!("{needs}{hint}")))
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        413,
        "too_large",
        format!("request body exceeds the limit of {limit} bytes"),
    )
}

/// Applies an event under the lock; dropping the lock writes the responses it un-parked.
fn apply_and_flush(s: &Shared, mut inner: Locked<'_>, event: Event) -> Result<CoreReply, ApiError> {
    let result = s.apply(&mut inner, event);
    drop(inner);
    result.map_err(ApiError::from)
}

// ----- worker routes -------------------------------------------------------------------------

fn register(s: &Shared, call: &mut Call) -> Result<Answer, ApiError> {
    let req: RegisterRequest = call.body()?;
    if req.protocol_version != PROTOCOL_VERSION {
        return Err(ApiError::new(
            400,
            "protocol_version_mismatch",
            format!(
                "protocol version mismatch: the worker speaks protocol {} but this controller (version {}) speaks protocol {PROTOCOL_VERSION}; run matching builds of warp-worker and warp-controller",
                req.protocol_version,
                warp_common::VERSION
            ),
        ));
    }
    check_registration(&req)?;
    let id = uuid::Uuid::new_v4();
    let token = auth::random_token()
        .map_err(|e| ApiError::new(500, "internal", format!("cannot make a token: {e}")))?;
    log::info!(
        "worker {id} registered: host {} device {} pid {:?}",
        warp_common::for_log(&req.hostname, MAX_HOSTNAME),
        req.device,
        req.pid
    );
    let inner = s.lock();
    apply_and_flush(
        s,
        inner,
        Event::Register {
            id,
            token: token.clone(),
            req,
        },
    )?;
    json(
        200,
        &RegisterResponse {
            worker_id: id,
            token,
            heartbeat_interval_ms: s.cfg.effective_heartbeat_interval().as_millis() as u64,
            poll_hold_ms: s.cfg.poll_hold.as_millis() as u64,
            protocol_version: PROTOCOL_VERSION,
            controller_version: warp_common::VERSION.to_string(),
        },
    )
}

/// Refuses registrations whose strings would be stored without bound (each worker's hostname is
/// copied into every attempt record it makes).
fn check_registration(req: &RegisterRequest) -> Result<(), ApiError> {
    // Characters, as the API document's maxLength counts them (at most 4 bytes each).
    let chars = |s: &str| s.chars().count();
    let too_long = |what: &str, s: &str, max: usize| {
        (chars(s) > max).then(|| {
            ApiError::invalid(format!(
                "{what} is {} characters; at most {max} are accepted",
                chars(s)
            ))
        })
    };
    let caps = &req.capabilities;
    let checks = [
        too_long("hostname", &req.hostname, MAX_HOSTNAME),
        too_long("worker_version", &req.worker_version, 64),
        too_long("spawn_id", req.spawn_id.as_deref().unwrap_or(""), 128),
        too_long(
            "capabilities.gpu.name",
            caps.gpu.as_ref().map_or("", |g| g.name.as_str()),
            256,
        ),
        (caps.commands.len() > 256 || caps.commands.iter().any(|c| chars(c) > 64)).then(|| {
            ApiError::invalid("capabilities.commands: at most 256 names of 64 characters")
        }),
        (caps.max_batch as usize > MAX_BATCH_REPORTS).then(|| {
            ApiError::invalid(format!(
                "capabilities.max_batch: at most {MAX_BATCH_REPORTS}"
            ))
        }),
    ];
    match checks.into_iter().flatten().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn poll(s: &Shared, call: &mut Call) -> Result<Answer, ApiError> {
    let (mut inner, worker) = call.lock_worker(s)?;
    match s.apply(&mut inner, Event::Poll { worker }) {
        Ok(CoreReply::Poll(mut more)) if !more.is_empty() => {
            drop(inner);
            let task = more.remove(0);
            json(200, &warp_common::protocol::PollResponse { task, more })
        }
        Ok(CoreReply::Poll(_)) if s.stopping() => {
            // Shutdown drained the parked polls already; do not park a new one.
            let _ = s.apply(&mut inner, Event::PollExpired { worker });
            drop(inner);
            Err(ApiError::shutting_down())
        }
        Ok(CoreReply::Poll(_)) => {
            let deadline = s.now() + s.cfg.poll_hold.as_millis() as u64;
            let request = call.request.take().expect("request present until parked");
            // A worker has one poll at a time; an older parked one belongs to a connection the
            // worker gave up on. Answer it so its thread does not linger.
            if let Some(old) = inner
                .parked_polls
                .insert(worker, ParkedPoll { request, deadline })
            {
                inner.outbox.push(crate::server::Outgoing {
                    request: old.request,
                    status: 204,
                    body: None,
                });
            }
            drop(inner);
            Ok(Answer::Parked)
        }
        Ok(r) => unreachable!("poll replied {r:?}"),
        Err(e) => {
            drop(inner);
            Err(e.into())
        }
    }
}

fn heartbeat(s: &Shared, call: &mut Call) -> Result<Answer, ApiError> {
    let mut req: HeartbeatRequest = call.body()?;
    let (mut inner, worker) = call.lock_worker(s)?;
    ship_console(
        &mut inner,
        worker,
        std::mem::take(&mut req.console),
        s.cfg.console_lines,
    );
    match apply_and_flush(s, inner, Event::Heartbeat { worker, req })? {
        CoreReply::Heartbeat(mut h) => {
            h.durable = s.durability();
            json(200, &h)
        }
        r => unreachable!("heartbeat replied {r:?}"),
    }
}

/// The most reports one status call may carry in `also` (a worker's `--batch` is capped
/// below it).
pub const MAX_BATCH_REPORTS: usize = 256;

/// Caps what a report keeps for the task's lifetime.
fn cap_report(update: &mut StatusUpdate) {
    if let Some(e) = &mut update.error {
        *e = warp_common::cap(e, MAX_ERROR);
    }
    if let Some(m) = update.progress.as_mut().and_then(|p| p.message.as_mut()) {
        *m = warp_common::cap(m, MAX_REASON);
    }
}

fn status(s: &Shared, call: &mut Call) -> Result<Answer, ApiError> {
    let mut update: StatusUpdate = call.body()?;
    let also = std::mem::take(&mut update.also);
    if also.len() > MAX_BATCH_REPORTS {
        return Err(ApiError::invalid(format!(
            "also: at most {MAX_BATCH_REPORTS} reports in one call, got {}",
            also.len()
        )));
    }
    if let Some(r) = also.iter().find(|r| !r.update.state.is_terminal()) {
        return Err(ApiError::invalid(format!(
            "also: the report of task {} is not terminal (only finished tasks of a batch travel together)",
            r.task
        )));
    }
    cap_report(&mut update);
    let task = call.uuid_param(1, "task")?;
    let (mut inner, worker) = call.lock_worker(s)?;
    // The batch's earlier reports first, in order, each accepted or refused on its own.
    let mut refused = Vec::new();
    let mut wait = false;
    for r in also {
        let mut earlier = r.update;
        cap_report(&mut earlier);
        earlier.want_next = false;
        earlier.also.clear();
        ship_console(
            &mut inner,
            worker,
            std::mem::take(&mut earlier.console),
            s.cfg.console_lines,
        );
        let event = Event::Status {
            worker,
            task: r.task,
            update: earlier,
        };
        match s.apply_deferred(&mut inner, event) {
            (Ok(_), w) => wait |= w,
            (Err(e), _) => {
                log::debug!("worker {worker}: report of task {} refused: {e}", r.task);
                refused.push(r.task);
            }
        }
    }
    ship_console(
        &mut inner,
        worker,
        std::mem::take(&mut update.console),
        s.cfg.console_lines,
    );
    let terminal = update.state.is_terminal();
    let reply = s.apply(
        &mut inner,
        Event::Status {
            worker,
            task,
            update,
        },
    );
    // The earlier reports are on disk before the answer, unless its receipt covers them.
    inner.must_sync |= wait && !s.pipelined(&reply);
    // A final report answered with its next task before it is on disk: its record number,
    // for the worker to keep the report until a later reply says the journal has it.
    let receipt = (terminal && s.pipelined(&reply)).then(|| s.journal_appended());
    // Dropping the lock syncs the journal when the reply must wait for it.
    drop(inner);
    match reply.map_err(ApiError::from)? {
        CoreReply::Status(mut r) => {
            r.receipt = receipt.flatten();
            r.durable = s.durability();
            r.refused = refused;
            json(200, &r)
        }
        r => unreachable!("status replied {r:?}"),
    }
}

fn deregister(s: &Shared, call: &mut Call) -> Result<Answer, ApiError> {
    let req: DeregisterRequest = if call.body.is_empty() {
        DeregisterRequest::default()
    } else {
        call.body()?
    };
    let (inner, worker) = call.lock_worker(s)?;
    let reason = warp_common::cap(&req.reason, MAX_REASON);
    log::info!(
        "worker {worker} deregisters: {}",
        warp_common::for_log(&reason, MAX_REASON)
    );
    apply_and_flush(s, inner, Event::Deregister { worker, reason })?;
    json(200, &serde_json::json!({"ok": true}))
}

fn ship_console(
    inner: &mut Inner,
    worker: WorkerId,
    lines: Vec<warp_common::protocol::ConsoleLine>,
    cap: usize,
) {
    if !lines.is_empty() {
        let lines = lines.into_iter().map(|mut l| {
            if l.text.len() > MAX_CONSOLE_LINE {
                let mut cut = MAX_CONSOLE_LINE;
                while !l.text.is_char_boundary(cut) {
                    cut -= 1;
                }
                l.text.truncate(cut);
                l.text.push_str(" [cut]");
            }
            l
        });
        inner
            .consoles
            .entry(worker)
            .or_insert_with(|| warp_common::console::ConsoleRing::new(cap))
            .extend_numbered(lines);
    }
}

// ----- client routes -------------------------------------------------------------------------

fn submit(s: &Shared, call: &mut Call) -> Result<Answer, ApiError> {
    let spec: TaskSpec = call.body()?;
    spec.validate().map_err(ApiError::invalid)?;
    let id = s.submit(vec![spec], None)?[0];
    json(201, &SubmitResponse { id })
}

fn submit_batch(s: &Shared, call: &mut Call) -> Result<Answer, ApiError> {
    let batch: BatchSubmit = call.body()?;
    crate::server::validate_batch(&batch.tasks)?;
    let ids = s.submit(batch.tasks, None)?;
    json(201, &BatchSubmitResponse { ids })
}

fn cancel(s: &Shared, call: &mut Call) -> Result<Answer, ApiError> {
    let task = call.uuid_param(0, "task")?;
    match apply_and_flush(s, s.lock(), Event::Cancel { task })? {
        CoreReply::Cancelled(state) => json(200, &serde_json::json!({"id": task, "state": state})),
        r => unreachable!("cancel replied {r:?}"),
    }
}

/// Most tasks one `GET /api/workers/tasks` returns (page with `offset`).
const MAX_LIST: usize = 10_000;

/// Longest console line kept, in bytes; longer ones are cut (a worker's log is for people).
const MAX_CONSOLE_LINE: usize = 4096;

/// Longest hold of `GET /api/tasks/{id}/wait`.
const MAX_WAIT_S: f64 = 300.0;

fn wait_task(s: &Shared, call: &mut Call) -> Result<Answer, ApiError> {
    let task = call.uuid_param(0, "task")?;
    call.only_query(&["timeout_s"])?;
    let timeout_s: f64 = call.query_num("timeout_s")?.unwrap_or(30.0);
    if !(0.0..=MAX_WAIT_S).contains(&timeout_s) {
        return Err(ApiError::invalid(format!(
            "timeout_s must be within 0..={MAX_WAIT_S}"
        )));
    }
    let mut inner = s.lock();
    let Some(detail) = inner.core.task_detail(task, s.epoch_ms) else {
        // Dropped from memory by retention (so finished), or unknown.
        drop(inner);
        return json(200, &s.task(task).ok_or(CoreError::UnknownTask(task))?);
    };
    if detail.state.is_terminal() || timeout_s == 0.0 {
        return json(200, &detail);
    }
    if s.stopping() {
        return Err(ApiError::shutting_down());
    }
    let deadline = s.now() + (timeout_s * 1000.0) as u64;
    let request = call.request.take().expect("request present until parked");
    inner
        .waiters
        .entry(task)
        .or_default()
        .push(Waiter::Http { request, deadline });
    Ok(Answer::Parked)
}

/// `POST /api/tasks/wait`: one call waits for up to [`MAX_LIST`] tasks (a `wait` of a
/// 10,000-task array would otherwise be 10,000 calls). Answered once all are terminal, or at
/// the hold with those still pending named.
fn wait_many(s: &Shared, call: &mut Call) -> Result<Answer, ApiError> {
    call.only_query(&[])?;
    let req: warp_common::protocol::WaitRequest = call.body()?;
    if req.ids.is_empty() || req.ids.len() > MAX_LIST {
        return Err(ApiError::invalid(format!(
            "ids: give 1 to {MAX_LIST} task ids, got {}",
            req.ids.len()
        )));
    }
    let timeout_s = req.timeout_s.unwrap_or(30.0);
    if !(0.0..=MAX_WAIT_S).contains(&timeout_s) {
        return Err(ApiError::invalid(format!(
            "timeout_s must be within 0..={MAX_WAIT_S}"
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(req.ids.len());
    let ids: Vec<warp_common::protocol::TaskId> =
        req.ids.into_iter().filter(|id| seen.insert(*id)).collect();
    let mut inner = s.lock();
    let mut open = Vec::new();
    for &id in &ids {
        match inner.core.task_state(id) {
            Some(st) if !st.is_terminal() => open.push(id),
            Some(_) => {}
            // Dropped by retention (so finished; without a state directory only its count is
            // left, and it is answered as `forgotten`), or unknown.
            None if s.archived(id).is_some() || inner.core.evicted_any() => {}
            None => return Err(CoreError::UnknownTask(id).into()),
        }
    }
    if open.is_empty() || timeout_s == 0.0 {
        let answer = s.group_answer(&inner, &ids);
        drop(inner);
        return json(200, &answer);
    }
    if s.stopping() {
        return Err(ApiError::shutting_down());
    }
    let n = inner.next_group;
    inner.next_group += 1;
    for id in &open {
        inner.waiters.entry(*id).or_default().push(Waiter::Group(n));
    }
    let request = call.request.take().expect("request present until parked");
    let group = crate::server::GroupWait {
        request,
        deadline: s.now() + (timeout_s * 1000.0) as u64,
        ids,
        left: open.len(),
    };
    inner.groups.insert(n, group);
    Ok(Answer::Parked)
}

fn controller_status(s: &Shared, _call: &mut Call) -> Result<Answer, ApiError> {
    json(200, &s.status())
}

fn metrics(s: &Shared, call: &mut Call) -> Result<Answer, ApiError> {
    call.only_query(&[])?;
    Ok(Answer::Other(
        200,
        s.status_and_metrics().1.into_bytes(),
        "text/plain; version=0.0.4; charset=utf-8",
    ))
}

/// The status page (`page/`): compiled in, public (it holds no data; its script asks for the
/// view token and calls the API with it).
fn the_session(s: &Shared) -> Result<std::sync::Arc<dyn crate::session::Session>, ApiError> {
    s.session().ok_or_else(|| {
        ApiError::new(
            404,
            "no_session",
            "this controller serves no preprocessing session (start one with warp-controller preprocess)",
        )
    })
}

fn session_info(s: &Shared, call: &mut Call) -> Result<Answer, ApiError> {
    call.only_query(&[])?;
    json(200, &the_session(s)?.info())
}

fn session_image(s: &Shared, call: &mut Call) -> Result<Answer, ApiError> {
    call.only_query(&[])?;
    let image = crate::session::MovieImage::parse(call.param(1)).ok_or_else(|| {
        ApiError::new(
            404,
            "unknown_image",
            format!(
                "no picture '{}': there are 'thumbnail' and 'spectrum'",
                call.param(1)
            ),
        )
    })?;
    // A path segment: `+` is itself there, not a space.
    let name = percent_decode(&call.param(0).replace('+', "%2B"));
    let bytes = the_session(s)?.image(&name, image)?;
    Ok(Answer::Other(200, bytes, "image/png"))
}

fn session_select(s: &Shared, call: &mut Call) -> Result<Answer, ApiError> {
    call.only_query(&[])?;
    let session = the_session(s)?;
    let thresholds: warp_common::preprocessing::SelectionThresholds = call.body()?;
    thresholds.validate().map_err(ApiError::invalid)?;
    json(200, &session.select(&thresholds)?)
}

fn page_html(_: &Shared, call: &mut Call) -> Result<Answer, ApiError> {
    page_file(
        call,
        include_bytes!("page/index.html"),
        "text/html; charset=utf-8",
    )
}

fn page_js(_: &Shared, call: &mut Call) -> Result<Answer, ApiError> {
    page_file(
        call,
        include_bytes!("page/page.js"),
        "text/javascript; charset=utf-8",
    )
}

fn page_css(_: &Shared, call: &mut Call) -> Result<Answer, ApiError> {
    page_file(
        call,
        include_bytes!("page/page.css"),
        "text/css; charset=utf-8",
    )
}

fn page_file(
    call: &Call,
    bytes: &'static [u8],
    content_type: &'static str,
) -> Result<Answer, ApiError> {
    call.only_query(&[])?;
    Ok(Answer::Other(200, bytes.to_vec(), content_type))
}

/// The status page loads nothing but its own script and style and talks only to this origin.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data: blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn active_workers(s: &Shared, call: &mut Call) -> Result<Answer, ApiError> {
    call.only_query(&["all"])?;
    let all = call.query("all").is_some_and(|v| v == "1" || v == "true");
    let mut list = s.lock().core.workers(s.epoch_ms);
    if !all {
        list.retain(|w| w.state != warp_common::protocol::WorkerState::Offline);
    }
    json(200, &list)
}

fn list_tasks(s: &Shared, call: &mut Call) -> Result<Answer, ApiError> {
    call.only_query(&["state", "offset", "limit"])?;
    let state = match call.query("state") {
        None => None,
        Some(v) => Some(
            serde_json::from_value::<TaskState>(serde_json::Value::String(v.to_string()))
                .map_err(|_| ApiError::invalid(format!("unknown state '{v}' (queued, assigned, running, completed, failed, cancelled)")))?,
        ),
    };
    let offset: usize = call.query_num("offset")?.unwrap_or(0);
    let limit: usize = call.query_num("limit")?.unwrap_or(1000).min(MAX_LIST);
    let inner = s.lock();
    let list: Vec<_> = inner
        .core
        .task_ids(state)
        .into_iter()
        .skip(offset)
        .take(limit)
        .filter_map(|id| inner.core.task_detail(id, s.epoch_ms))
        .collect();
    drop(inner);
    json(200, &list)
}

fn task_detail(s: &Shared, call: &mut Call) -> Result<Answer, ApiError> {
    let task = call.uuid_param(0, "task")?;
    let detail = s.task(task).ok_or(CoreError::UnknownTask(task))?;
    json(200, &detail)
}

/// Console of a worker: `?first=N`, `?last=N`, `?start=A&end=B` (absolute line numbers), or all.
fn console_lines(s: &Shared, call: &mut Call) -> Result<Answer, ApiError> {
    let worker = call.uuid_param(0, "worker")?;
    call.only_query(&["first", "last", "start", "end"])?;
    let first: Option<usize> = call.query_num("first")?;
    let last: Option<usize> = call.query_num("last")?;
    let start: Option<u64> = call.query_num("start")?;
    let end: Option<u64> = call.query_num("end")?;
    let inner = s.lock();
    let ring = console_of(&inner, worker)?;
    let lines = match (first, last, start, end) {
        (Some(n), None, None, None) => ring.first(n),
        (None, Some(n), None, None) => ring.last(n),
        (None, None, Some(a), Some(b)) => ring.range(a, b),
        (None, None, None, None) => ring.all(),
        _ => {
            return Err(ApiError::invalid(
                "give one of: first=N, last=N, start=A&end=B, or nothing for all lines",
            ));
        }
    };
    drop(inner);
    json(200, &lines)
}

fn console_count(s: &Shared, call: &mut Call) -> Result<Answer, ApiError> {
    let worker = call.uuid_param(0, "worker")?;
    let inner = s.lock();
    let count = console_of(&inner, worker)?.total();
    json(200, &serde_json::json!({"count": count}))
}

fn console_of(
    inner: &Inner,
    worker: WorkerId,
) -> Result<std::borrow::Cow<'_, warp_common::console::ConsoleRing>, ApiError> {
    match inner.consoles.get(&worker) {
        Some(r) => Ok(std::borrow::Cow::Borrowed(r)),
        // A known worker that has shipped nothing yet has an empty console.
        None if inner.core.has_worker(worker) => Ok(std::borrow::Cow::Owned(
            warp_common::console::ConsoleRing::new(1),
        )),
        None => Err(CoreError::UnknownWorker(worker).into()),
    }
}

fn health(_s: &Shared, _call: &mut Call) -> Result<Answer, ApiError> {
    json(
        200,
        &serde_json::json!({"ok": true, "version": warp_common::VERSION, "protocol_version": PROTOCOL_VERSION}),
    )
}

fn openapi(_s: &Shared, _call: &mut Call) -> Result<Answer, ApiError> {
    Ok(Answer::Json(200, OPENAPI_JSON.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_routes_win_and_methods_are_checked() {
        let (r, p) = find_route("GET", "/api/workers/tasks/abc").unwrap();
        assert_eq!(
            (r.pattern, p),
            ("/api/workers/tasks/{id}", vec!["abc".to_string()])
        );
        let (r, p) = find_route("GET", "/api/workers/w1/poll").unwrap();
        assert_eq!(
            (r.pattern, p),
            ("/api/workers/{id}/poll", vec!["w1".to_string()])
        );
        let (r, p) = find_route("POST", "/api/workers/w1/tasks/t1/status").unwrap();
        assert_eq!(r.pattern, "/api/workers/{id}/tasks/{taskId}/status");
        assert_eq!(p, ["w1", "t1"]);
        let no = find_route("DELETE", "/api/tasks").unwrap_err();
        assert_eq!((no.status, no.allow), (405, vec!["POST"]));
        assert_eq!(find_route("GET", "/api/nope").unwrap_err().status, 404);
        assert_eq!(
            find_route("GET", "/api/workers//poll").unwrap_err().status,
            404
        );
    }

    #[test]
    fn query_values_are_percent_decoded_and_bad_escapes_kept() {
        assert_eq!(percent_decode("2.5e%2B16"), "2.5e+16");
        assert_eq!(percent_decode("a+b%20c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%C3%A3"), "ã");
    }

    /// The document's protocol version (an `enum` of one) is the one the controller speaks.
    #[test]
    fn openapi_document_states_this_protocol_version() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        let v = &doc["components"]["schemas"]["RegisterRequest"]["properties"]["protocol_version"];
        assert_eq!(v["enum"], serde_json::json!([PROTOCOL_VERSION]), "{v}");
    }

    /// The OpenAPI document and the route table describe the same set of (method, path).
    #[test]
    fn openapi_document_matches_the_route_table() {
        let doc: serde_json::Value =
            serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON");
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                    documented.push((method.to_uppercase(), path.clone()));
                }
            }
        }
        let mut served: Vec<(String, String)> = ROUTES
            .iter()
            .map(|r| (r.method.to_string(), r.pattern.to_string()))
            .collect();
        documented.sort();
        served.sort();
        assert_eq!(documented, served);
        for r in ROUTES {
            let op = &doc["paths"][r.pattern][r.method.to_lowercase()];
            let secured = op
                .get("security")
                .map(|s| s.as_array().is_some_and(|a| !a.is_empty()));
            let expect_secured = r.auth != Auth::Public;
            assert_eq!(
                secured.unwrap_or(true),
                expect_secured,
                "security of {} {} in openapi.json",
                r.method,
                r.pattern
            );
        }
    }
}

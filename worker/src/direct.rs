//! Direct (traditional) mode: the worker serves Warp's REST API itself.
//!
//! The parent process starts `warp-worker -d N -p PORT --pipe NAME`, reads two lines from NAME
//! (the bound port, then a secret the worker made for this run), and pushes commands, each with
//! `Authorization: Bearer SECRET` (any request without it gets 401, so other users who can
//! reach the port cannot run anything):
//!
//! ```text
//! POST /v1/Service/EvaluateCommand   Command             -> 200 {"result": ...} | 422 | 400
//! POST /v1/Service/SendPulse         -                   -> 200 {"ok": true}
//! POST /v1/Service/Exit              -                   -> 200 {"ok": true}, then exit 0
//! GET  /v1/Console/GetLineCount                          -> {"count": N}
//! GET  /v1/Console/GetAllLines | GetFirstNLines/{n} | GetLastNLines/{n}
//!      | GetLinesRange/{start}/{end}  (end exclusive)    -> ConsoleLines
//! ```
//!
//! Commands run one at a time; several handler threads keep pulses and console queries answered
//! while a long command runs. The worker exits 0 when no pulse arrived for `--pulse-timeout`
//! (counted from the start too), on Exit, and on SIGTERM/SIGINT.

use crate::WorkerError;
use crate::config::DirectConfig;
use crate::console::{self, Console};
use crate::exec::{CancelFlag, Executor};
use crate::signals::{self, StopSignal};
use crate::state::lock;
use crossbeam_channel::select;
use log::{debug, info};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;
use tiny_http::{Header, Method, Request, Response, Server};
use warp_common::commands::Command;
use warp_common::protocol::ApiErrorBody;
use warp_common::{PROTOCOL_VERSION, VERSION};

/// Largest request body accepted.
pub const MAX_BODY: usize = 16 << 20;
/// Handler threads.
const HANDLERS: usize = 4;

struct State {
    /// The per-run secret every request must carry.
    secret: String,
    exec: Mutex<Executor>,
    /// Cancels the running command at shutdown.
    cancel: Mutex<CancelFlag>,
    last_pulse: Mutex<Instant>,
    console: Arc<Console>,
    /// Set by the Exit route.
    exit: StopSignal,
    closing: AtomicBool,
}

type Reply = (u16, Value);

/// Runs direct mode until Exit, the pulse timeout, a signal or [`DirectConfig::stop`].
pub fn run_direct(cfg: DirectConfig) -> Result<(), WorkerError> {
    console::init(cfg.silent, crate::log_level(cfg.verbose));
    info!("warp-worker {VERSION} starting in direct mode (protocol {PROTOCOL_VERSION})");
    info!(
        "configuration: device={} bind={}:{} pipe={} pulse_timeout={:?} silent={}",
        cfg.device,
        cfg.bind,
        cfg.port,
        cfg.pipe.display(),
        cfg.pulse_timeout,
        cfg.silent
    );
    let addr = format!("{}:{}", cfg.bind, cfg.port);
    let server = Server::http(addr.as_str()).map_err(|e| WorkerError::Io {
        what: format!("cannot listen on {addr} (--bind/--port)"),
        error: e.to_string(),
    })?;
    let port = server.server_addr().to_ip().map_or(cfg.port, |a| a.port());
    info!("listening on {}:{port}", cfg.bind);
    let server = Arc::new(server);
    // 244 random bits from the kernel's CSPRNG (uuid v4), handed only to whoever reads the pipe.
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let st = Arc::new(State {
        secret: secret.clone(),
        exec: Mutex::new(crate::make_executor(cfg.backend, cfg.device)?),
        cancel: Mutex::new(CancelFlag::new()),
        last_pulse: Mutex::new(Instant::now()),
        console: console::global().clone(),
        exit: StopSignal::new(),
        closing: AtomicBool::new(false),
    });
    let handlers: Vec<_> = (0..HANDLERS)
        .filter_map(|i| {
            let (server, st) = (server.clone(), st.clone());
            let name = format!("http-{i}");
            std::thread::Builder::new()
                .name(name)
                .spawn(move || serve(&server, &st))
                .ok()
        })
        .collect();

    // Opening a FIFO blocks until the parent opens it for reading: do it off the main thread so
    // the pulse timeout still applies.
    let (pipe_tx, mut pipe_rx) = crossbeam_channel::bounded(1);
    let pipe = cfg.pipe.clone();
    std::thread::spawn(move || {
        use std::os::unix::fs::OpenOptionsExt;
        // A FIFO the parent made (mode 600), or a file created 600 here: the secret is for the
        // parent only.
        let r = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&pipe)
            .and_then(|mut f| write!(f, "{port}\n{secret}\n"));
        let _ = pipe_tx.send(r);
    });

    let global = signals::global().receiver();
    let (stop, exit) = (cfg.stop.receiver(), st.exit.receiver());
    let result = loop {
        let quiet = lock(&st.last_pulse).elapsed();
        if quiet >= cfg.pulse_timeout {
            break Ok(format!(
                "no pulse for {:.1} s (--pulse-timeout)",
                quiet.as_secs_f64()
            ));
        }
        select! {
            recv(exit) -> _ => break Ok("Exit requested".into()),
            recv(global) -> _ => break Ok("signal received".into()),
            recv(stop) -> _ => break Ok("stop requested".into()),
            recv(pipe_rx) -> r => match r {
                Ok(Err(e)) => break Err(WorkerError::Io {
                    what: format!("cannot write the port to --pipe {}", cfg.pipe.display()),
                    error: e.to_string(),
                }),
                _ => {
                    debug!("port {port} written to {}", cfg.pipe.display());
                    pipe_rx = crossbeam_channel::never();
                }
            },
            default(cfg.pulse_timeout - quiet) => {}
        }
    };
    if let Ok(why) = &result {
        info!("{why}: exiting");
    }
    st.closing.store(true, Ordering::SeqCst);
    lock(&st.cancel).cancel();
    for _ in &handlers {
        server.unblock();
    }
    for h in handlers {
        let _ = h.join();
    }
    result.map(drop)
}

fn serve(server: &Server, st: &State) {
    loop {
        match server.recv() {
            Ok(rq) => handle(st, rq),
            Err(_) if st.closing.load(Ordering::SeqCst) => return,
            Err(e) => debug!("accept failed: {e}"),
        }
    }
}

static JSON: LazyLock<Header> = LazyLock::new(|| {
    Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]).expect("valid header")
});

fn handle(st: &State, mut rq: Request) {
    let mut exit = false;
    let (status, body) = catch_unwind(AssertUnwindSafe(|| route(st, &mut rq, &mut exit)))
        .unwrap_or_else(|_| error(500, "internal", "the request handler panicked; see the log"));
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let response = Response::from_data(bytes)
        .with_status_code(status)
        .with_header(JSON.clone());
    if let Err(e) = rq.respond(response) {
        debug!("cannot send a response: {e}");
    }
    if exit {
        st.exit.trigger();
    }
}

fn error(status: u16, code: &str, message: impl Into<String>) -> Reply {
    let body = ApiErrorBody {
        error: message.into(),
        code: code.into(),
    };
    (status, serde_json::to_value(body).unwrap_or_default())
}

/// Answers one request; sets `exit` when the process should exit after the response.
fn route(st: &State, rq: &mut Request, exit: &mut bool) -> Reply {
    let path = rq.url().split('?').next().unwrap_or("").to_string();
    let presented = rq
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .and_then(|h| warp_common::bearer(h.value.as_str()))
        .unwrap_or("");
    if !warp_common::constant_time_eq(presented.as_bytes(), st.secret.as_bytes()) {
        return error(
            401,
            "unauthorized",
            "missing or wrong bearer token: direct mode needs the secret the worker wrote to its \
             --pipe (second line)",
        );
    }
    let post = *rq.method() == Method::Post;
    let read = matches!(rq.method(), Method::Get | Method::Post);
    let console = |c: warp_common::protocol::ConsoleLines| (200, json!(c));
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (post, read, segments.as_slice()) {
        (true, _, ["v1", "Service", "EvaluateCommand"]) => evaluate(st, rq),
        (true, _, ["v1", "Service", "SendPulse"]) => {
            *lock(&st.last_pulse) = Instant::now();
            (200, json!({"ok": true}))
        }
        (true, _, ["v1", "Service", "Exit"]) => {
            *exit = true;
            (200, json!({"ok": true}))
        }
        (_, true, ["v1", "Console", "GetLineCount"]) => (200, json!({"count": st.console.total()})),
        (_, true, ["v1", "Console", "GetAllLines"]) => console(st.console.all()),
        (_, true, ["v1", "Console", "GetFirstNLines", n]) => match n.parse() {
            Ok(n) => console(st.console.first(n)),
            Err(_) => error(400, "bad_request", format!("'{n}' is not a line count")),
        },
        (_, true, ["v1", "Console", "GetLastNLines", n]) => match n.parse() {
            Ok(n) => console(st.console.last(n)),
            Err(_) => error(400, "bad_request", format!("'{n}' is not a line count")),
        },
        (_, true, ["v1", "Console", "GetLinesRange", a, b]) => match (a.parse(), b.parse()) {
            (Ok(a), Ok(b)) => console(st.console.range(a, b)),
            _ => error(400, "bad_request", format!("'{a}/{b}' is not a line range")),
        },
        _ => error(404, "not_found", format!("no route {} {path}", rq.method())),
    }
}

fn evaluate(st: &State, rq: &mut Request) -> Reply {
    if rq.body_length().is_some_and(|n| n > MAX_BODY) {
        return error(
            413,
            "too_large",
            format!("request body over {MAX_BODY} bytes"),
        );
    }
    let mut body = Vec::with_capacity(rq.body_length().unwrap_or(0));
    if let Err(e) = rq
        .as_reader()
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
    {
        return error(
            400,
            "bad_request",
            format!("cannot read the request body: {e}"),
        );
    }
    if body.len() > MAX_BODY {
        return error(
            413,
            "too_large",
            format!("request body over {MAX_BODY} bytes"),
        );
    }
    let cmd: Command = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return error(400, "bad_request", format!("not a command: {e}")),
    };
    let mut exec = lock(&st.exec);
    let cancel = CancelFlag::new();
    *lock(&st.cancel) = cancel.clone();
    if st.closing.load(Ordering::SeqCst) {
        return error(503, "shutting_down", "the worker is exiting");
    }
    debug!("running {}", cmd.name());
    match exec.run_command(&cmd, &cancel) {
        Ok(result) => (200, json!({ "result": result })),
        Err(e) => {
            info!("{} failed: {e}", cmd.name());
            error(422, "command_failed", format!("{}: {e}", cmd.name()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DirectConfig;
    use std::time::Duration;

    fn post(agent: &ureq::Agent, url: &str, body: &str) -> (u16, Value) {
        let r = agent
            .post(url)
            .set("Content-Type", "application/json")
            .send_string(body);
        let r = match r {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{url}: {e}"),
        };
        (r.status(), r.into_json().unwrap())
    }

    fn get(agent: &ureq::Agent, url: &str) -> Value {
        agent.get(url).call().unwrap().into_json().unwrap()
    }

    #[test]
    #[allow(clippy::result_large_err)] // ureq's middleware signature
    fn direct_mode_serves_commands_pulses_console_and_exit() {
        let dir = std::env::temp_dir().join(format!("warp-direct-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pipe = dir.join("port");
        let mut cfg = DirectConfig::new(0, &pipe);
        cfg.silent = true;
        cfg.pulse_timeout = Duration::from_secs(20);
        let worker = std::thread::spawn(move || run_direct(cfg));
        let start = Instant::now();
        let (port, secret): (u16, String) = loop {
            if let Ok(text) = std::fs::read_to_string(&pipe)
                && let Some((port, secret)) = text.split_once('\n')
                && secret.ends_with('\n')
            {
                break (port.parse().unwrap(), secret.trim().to_string());
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no port written");
            std::thread::sleep(Duration::from_millis(5));
        };
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&pipe).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the pipe file holds the secret");
        let base = format!("http://127.0.0.1:{port}");
        let eval = format!("{base}/v1/Service/EvaluateCommand");
        // Without the secret (or with another) nothing runs: 401.
        let plain = ureq::AgentBuilder::new().try_proxy_from_env(false).build();
        for auth in [None, Some("Bearer nope")] {
            let mut rq = plain.post(&eval);
            if let Some(a) = auth {
                rq = rq.set("Authorization", a);
            }
            match rq.send_string(r#"{"name":"Exec","params":{"argv":["touch","/tmp/warp-pwned"]}}"#)
            {
                Err(ureq::Error::Status(401, _)) => {}
                other => panic!("{auth:?}: {other:?}"),
            }
        }
        let agent = ureq::AgentBuilder::new()
            .try_proxy_from_env(false)
            .middleware(move |rq: ureq::Request, next: ureq::MiddlewareNext<'_>| {
                next.handle(rq.set("Authorization", &format!("Bearer {secret}")))
            })
            .build();

        let (status, body) = post(&agent, &eval, r#"{"name":"Echo","params":{"value":42}}"#);
        assert_eq!((status, body), (200, json!({"result": {"value": 42}})));
        let (status, body) = post(&agent, &eval, r#"{"name":"Frobnicate","params":{}}"#);
        assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")));
        assert!(body["error"].as_str().unwrap().contains("Frobnicate"));
        let (status, body) = post(
            &agent,
            &eval,
            r#"{"name":"Fail","params":{"message":"no"}}"#,
        );
        assert_eq!(
            (status, body["code"].as_str()),
            (422, Some("command_failed"))
        );
        assert_eq!(
            post(&agent, &format!("{base}/v1/Service/SendPulse"), "").0,
            200
        );
        assert_eq!(post(&agent, &format!("{base}/v1/Nope"), "").0, 404);

        let count = get(&agent, &format!("{base}/v1/Console/GetLineCount"))["count"]
            .as_u64()
            .unwrap();
        assert!(count >= 2, "start lines are logged");
        let all = get(&agent, &format!("{base}/v1/Console/GetAllLines"));
        assert!(all["lines"].as_array().unwrap().len() as u64 >= 2);
        let first = get(&agent, &format!("{base}/v1/Console/GetFirstNLines/1"));
        assert_eq!(first["lines"].as_array().unwrap().len(), 1);
        let last = get(&agent, &format!("{base}/v1/Console/GetLastNLines/2"));
        assert_eq!(last["lines"].as_array().unwrap().len(), 2);
        let range = get(&agent, &format!("{base}/v1/Console/GetLinesRange/0/2"));
        assert!(range["lines"].as_array().unwrap().len() <= 2);

        let (status, _) = post(&agent, &format!("{base}/v1/Service/Exit"), "");
        assert_eq!(status, 200);
        worker.join().unwrap().unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn direct_mode_exits_without_pulses() {
        let dir = std::env::temp_dir().join(format!("warp-direct-pulse-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cfg = DirectConfig::new(0, dir.join("port"));
        cfg.silent = true;
        cfg.pulse_timeout = Duration::from_millis(200);
        let start = Instant::now();
        run_direct(cfg).unwrap();
        assert!(start.elapsed() < Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(dir);
    }
}

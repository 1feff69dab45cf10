//! End-to-end tests: the real `warp-controller` and `warp-worker` binaries on port 0, timing
//! constants shrunk to fractions of a second. Every process is stopped by its PID on drop.

// ureq 2's error type is large; these are test helpers, not an API.
#![allow(clippy::result_large_err)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use warp_common::commands::Command;
use warp_common::protocol::{AttemptOutcome, Target, TaskSpec, TaskState};
use warp_tests::{ControllerProc, TempDir, http_agent, start_worker, status_of, wait_for};

/// Controller flags for fast fault detection.
const FAST: &[&str] = &[
    "--heartbeat-timeout",
    "1",
    "--poll-hold",
    "2",
    "--heartbeat-interval",
    "0.1",
];
/// Worker flags for fast reconnection.
const WORKER_FAST: &[&str] = &["--backoff-base", "0.05", "--backoff-max", "0.3"];

fn wait_workers(c: &ControllerProc, n: usize) -> Vec<warp_common::protocol::WorkerInfo> {
    let client = c.client();
    let mut seen = String::new();
    let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for(
            Duration::from_secs(20),
            &format!("{n} workers to register"),
            || {
                let w = client.workers(true);
                seen = format!("{w:?}");
                let w = w.ok()?;
                let live: Vec<_> = w
                    .into_iter()
                    .filter(|w| w.state != warp_common::protocol::WorkerState::Offline)
                    .collect();
                (live.len() == n).then_some(live)
            },
        )
    }));
    found.unwrap_or_else(|_| {
        let dir = c.token_file.parent().expect("dir");
        let mut logs = String::new();
        for e in std::fs::read_dir(dir).expect("dir").flatten() {
            if e.file_name().to_string_lossy().starts_with("worker-") {
                logs += &format!("--- {}\n{}\n", e.path().display(), std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        panic!("{n} workers did not register; last seen: {seen}\ncontroller log:\n{}\nworker logs:\n{logs}", c.proc.stderr())
    })
}

/// Runs `warp-controller ARGS` as a user would, with the admin token in the environment.
fn cli(c: &ControllerProc, args: &[&str]) -> std::process::Output {
    std::process::Command::new(warp_tests::bin("warp-controller"))
        .args(args)
        .env("WARP_ADMIN_TOKEN", &c.admin_token)
        .output()
        .unwrap()
}

/// Waits until the worker reports the task running.
fn wait_running(client: &warp_tests::AdminClient, id: uuid::Uuid) {
    wait_for(Duration::from_secs(10), "the task to start", || {
        (client.task(id).ok()?.state == TaskState::Running).then_some(())
    });
}

#[test]
fn basic_exec_task_runs_on_a_worker_and_returns_its_output() {
    let dir = TempDir::new("basic");
    let c = ControllerProc::start(dir.path(), 0, FAST);
    let _w = start_worker(dir.path(), &c.url, &c.token, 0, &[]);
    wait_workers(&c, 1);
    // Through the CLI, as a user would.
    let out = cli(
        &c,
        &[
            "submit",
            "--controller",
            &c.url,
            "--wait",
            "--exec",
            "--",
            "sh",
            "-c",
            "echo hello; echo oops >&2",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "submit failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let detail: Value = serde_json::from_str(stdout.split_once('\n').unwrap().1).unwrap();
    assert_eq!(detail["state"], "completed");
    let r = &detail["result"]["results"][0];
    assert_eq!(r["exit_code"], 0);
    assert_eq!(r["stdout_tail"], "hello\n");
    assert_eq!(r["stderr_tail"], "oops\n");
    // A failing program fails the task with its exit code, and the CLI exits 1.
    let out = cli(
        &c,
        &[
            "submit",
            "--controller",
            &c.url,
            "--wait",
            "--exec",
            "--",
            "sh",
            "-c",
            "exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains('3'));
    // Monitoring tables work.
    for sub in ["status", "workers", "tasks"] {
        let out = cli(&c, &[sub, "--controller", &c.url]);
        assert!(
            out.status.success(),
            "{sub}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn four_workers_share_a_batch_and_every_result_matches_its_task() {
    let dir = TempDir::new("four");
    let c = ControllerProc::start(dir.path(), 0, FAST);
    let _ws: Vec<_> = (0..4)
        .map(|d| start_worker(dir.path(), &c.url, &c.token, d, &[]))
        .collect();
    wait_workers(&c, 4);
    let specs: Vec<TaskSpec> = (0..200)
        .map(|i| {
            TaskSpec::new(vec![
                Command::Sleep { ms: 5 },
                Command::Echo { value: json!(i) },
            ])
        })
        .collect();
    let client = c.client();
    let ids = client.submit_batch(specs).unwrap();
    let mut used = std::collections::HashSet::new();
    for (i, id) in ids.iter().enumerate() {
        let d = client.wait(*id, Some(Duration::from_secs(30))).unwrap();
        assert_eq!(d.state, TaskState::Completed, "task {i}: {:?}", d.error);
        assert_eq!(d.result.unwrap()["results"][1]["value"], json!(i));
        assert_eq!(d.history.len(), 1);
        used.insert(d.worker_id.unwrap());
    }
    assert!(used.len() >= 3, "work went to {} of 4 workers", used.len());
    // Device targets go to the device's worker.
    let mut spec = TaskSpec::new(vec![Command::Echo { value: json!("d2") }]);
    spec.target = Target::Device(2);
    let d = client
        .wait(client.submit(&spec).unwrap(), Some(Duration::from_secs(10)))
        .unwrap();
    let dev2 = client
        .workers(false)
        .unwrap()
        .into_iter()
        .find(|w| w.device == 2)
        .unwrap();
    assert_eq!(d.worker_id, Some(dev2.id));
}

#[test]
fn kill_9_of_a_worker_mid_task_completes_the_task_elsewhere_as_attempt_2() {
    let dir = TempDir::new("kill9");
    let c = ControllerProc::start(dir.path(), 0, FAST);
    let mut a = start_worker(dir.path(), &c.url, &c.token, 0, &[]);
    wait_workers(&c, 1);
    let client = c.client();
    let id = client
        .submit(&TaskSpec::new(vec![Command::Sleep { ms: 1500 }]))
        .unwrap();
    wait_running(&client, id);
    let b = start_worker(dir.path(), &c.url, &c.token, 1, &[]);
    wait_workers(&c, 2);
    a.signal(libc::SIGKILL);
    a.wait_exit(Duration::from_secs(5)).expect("killed");
    let d = client.wait(id, Some(Duration::from_secs(20))).unwrap();
    assert_eq!(d.state, TaskState::Completed, "{d:?}");
    assert_eq!(d.attempt, 2);
    assert_eq!(d.history[0].outcome, AttemptOutcome::WorkerLost);
    assert_eq!(d.history[1].outcome, AttemptOutcome::Completed);
    let b_id = client
        .workers(false)
        .unwrap()
        .into_iter()
        .find(|w| w.pid == Some(b.pid()))
        .unwrap()
        .id;
    assert_eq!(d.worker_id, Some(b_id));
}

#[test]
fn a_stopped_worker_s_late_completion_is_refused_with_409() {
    let dir = TempDir::new("sigstop");
    let c = ControllerProc::start(dir.path(), 0, FAST);
    let a = start_worker(dir.path(), &c.url, &c.token, 0, &[]);
    wait_workers(&c, 1);
    let client = c.client();
    let spec = TaskSpec::new(vec![
        Command::Sleep { ms: 800 },
        Command::Echo {
            value: json!("done"),
        },
    ]);
    let id = client.submit(&spec).unwrap();
    wait_running(&client, id);
    a.signal(libc::SIGSTOP);
    let b = start_worker(dir.path(), &c.url, &c.token, 0, &[]);
    let d = client.wait(id, Some(Duration::from_secs(20))).unwrap();
    assert_eq!(d.state, TaskState::Completed);
    assert_eq!(d.attempt, 2);
    assert_eq!(d.history[0].outcome, AttemptOutcome::WorkerLost);
    let b_id = wait_for(Duration::from_secs(5), "worker b", || {
        client
            .workers(true)
            .ok()?
            .into_iter()
            .find(|w| w.pid == Some(b.pid()))
            .map(|w| w.id)
    });
    assert_eq!(d.history[1].worker_id, b_id);
    let result_before = d.result.clone();
    // Wake A: its sleep is over, it reports completion for the revoked lease.
    a.signal(libc::SIGCONT);
    wait_for(
        Duration::from_secs(10),
        "the stale report to be refused",
        || (client.status().ok()?.stale_reports_refused >= 1).then_some(()),
    );
    let after = client.task(id).unwrap();
    assert_eq!(after.state, TaskState::Completed);
    assert_eq!(after.result, result_before);
    assert_eq!(after.history.len(), 2);
    assert_eq!(
        after.history[1].worker_id, b_id,
        "the task keeps the other worker's result"
    );
    // A is alive again and takes work.
    wait_for(Duration::from_secs(10), "worker a to come back", || {
        client
            .workers(false)
            .ok()?
            .iter()
            .any(|w| w.pid == Some(a.pid()))
            .then_some(())
    });
}

#[test]
fn workers_reconnect_after_the_controller_restarts_on_the_same_port() {
    let dir = TempDir::new("restart");
    let c = ControllerProc::start(dir.path(), 0, FAST);
    let port = c.port;
    let mut args = WORKER_FAST.to_vec();
    args.extend(["--reconnect-retries", "40"]);
    let mut w = start_worker(dir.path(), &c.url, &c.token, 0, &args);
    wait_workers(&c, 1);
    let token = c.token.clone();
    drop(c); // SIGKILL: the controller vanishes without a goodbye.
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        w.wait_exit(Duration::ZERO).is_none(),
        "worker gave up too early:\n{}",
        w.stderr()
    );
    let c2 = ControllerProc::start(dir.path(), port, FAST);
    assert_eq!(c2.token, token, "same token file");
    wait_workers(&c2, 1);
    let client = c2.client();
    let id = client
        .submit(&TaskSpec::new(vec![Command::Echo { value: json!(42) }]))
        .unwrap();
    let d = client.wait(id, Some(Duration::from_secs(10))).unwrap();
    assert_eq!(d.state, TaskState::Completed);
    assert_eq!(
        client.workers(false).unwrap()[0].pid,
        Some(w.pid()),
        "the same worker process re-registered"
    );
}

#[test]
fn worker_gives_up_with_a_clear_message_when_the_controller_stays_away() {
    let dir = TempDir::new("giveup");
    let c = ControllerProc::start(dir.path(), 0, FAST);
    let mut args = WORKER_FAST.to_vec();
    args.extend(["--reconnect-retries", "3"]);
    let mut w = start_worker(dir.path(), &c.url, &c.token, 0, &args);
    wait_workers(&c, 1);
    drop(c);
    let code = w.wait_exit(Duration::from_secs(20)).expect("worker exits");
    assert_ne!(code, Some(0));
    assert!(
        w.stderr().to_lowercase().contains("controller"),
        "{}",
        w.stderr()
    );
}

#[test]
fn wrong_tokens_get_401_and_change_nothing() {
    let dir = TempDir::new("tokens");
    let c = ControllerProc::start(dir.path(), 0, FAST);
    let agent = http_agent();
    let reg =
        json!({"protocol_version": warp_common::PROTOCOL_VERSION, "device": 0, "hostname": "h"});
    let (code, body) = status_of(
        agent
            .post(&format!("{}/api/workers/register", c.url))
            .set("Authorization", "Bearer nope")
            .send_json(&reg)
            .unwrap_err(),
    );
    assert_eq!((code, body["code"].as_str()), (401, Some("unauthorized")));
    let (code, _) = status_of(
        agent
            .post(&format!("{}/api/workers/register", c.url))
            .send_json(&reg)
            .unwrap_err(),
    );
    assert_eq!(code, 401);
    let ok: Value = agent
        .post(&format!("{}/api/workers/register", c.url))
        .set("Authorization", &format!("Bearer {}", c.token))
        .send_json(&reg)
        .unwrap()
        .into_json()
        .unwrap();
    let (id, wtoken) = (
        ok["worker_id"].as_str().unwrap(),
        ok["token"].as_str().unwrap(),
    );
    // The enrollment token is not a worker token, and a worker token is not an admin token.
    let (code, _) = status_of(
        agent
            .get(&format!("{}/api/workers/{id}/poll", c.url))
            .set("Authorization", &format!("Bearer {}", c.token))
            .call()
            .unwrap_err(),
    );
    assert_eq!(code, 401);
    let (code, _) = status_of(
        agent
            .get(&format!("{}/api/workers/status", c.url))
            .set("Authorization", &format!("Bearer {wtoken}"))
            .call()
            .unwrap_err(),
    );
    assert_eq!(code, 401);
    let (code, _) = status_of(
        agent
            .post(&format!("{}/api/tasks", c.url))
            .set("Authorization", &format!("Bearer {wtoken}"))
            .send_json(json!({"commands": [{"name": "Sleep", "params": {"ms": 1}}]}))
            .unwrap_err(),
    );
    assert_eq!(code, 401);
    // The enrollment token registers workers, nothing else; the 401 says which token is needed.
    let (code, body) = status_of(
        agent
            .post(&format!("{}/api/tasks", c.url))
            .set("Authorization", &format!("Bearer {}", c.token))
            .send_json(json!({"commands": [{"name": "Sleep", "params": {"ms": 1}}]}))
            .unwrap_err(),
    );
    assert_eq!(code, 401);
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains("enrollment token") && msg.contains("--admin-token-file"),
        "{msg}"
    );
    let (code, _) = status_of(
        agent
            .get(&format!("{}/api/workers/status", c.url))
            .set("Authorization", &format!("Bearer {}", c.token))
            .call()
            .unwrap_err(),
    );
    assert_eq!(code, 401, "the enrollment token cannot watch either");
    let st = c.client().status().unwrap();
    assert_eq!(st.tasks.queued, 0, "refused submission changed nothing");
    assert_eq!(st.workers.idle, 1);
    // Tokens never appear in the controller's log.
    let log = c.proc.stderr();
    assert!(
        !log.contains(&c.token) && !log.contains(&c.admin_token) && !log.contains(wtoken),
        "token leaked into the log:\n{log}"
    );
}

/// Issue 16, tokens: three secrets with separate powers. The admin token (created by serve as
/// `admin-token` beside the enrollment token, mode 600, different from it) does everything;
/// the view token reads monitoring routes and nothing else; the enrollment token registers.
#[test]
fn enrollment_admin_and_view_tokens_have_separate_powers() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("least-privilege");
    let view_file = dir.path().join("view-token");
    let c = ControllerProc::start(
        dir.path(),
        0,
        &["--view-token-file", view_file.to_str().unwrap()],
    );
    let view = std::fs::read_to_string(&view_file)
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(c.admin_token, c.token);
    assert_ne!(view, c.admin_token);
    for f in [c.token_file.with_file_name("admin-token"), view_file] {
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    let agent = http_agent();
    let call = |method: &str, path: &str, token: &str, body: Option<Value>| {
        let rq = agent
            .request(method, &format!("{}{path}", c.url))
            .set("Authorization", &format!("Bearer {token}"));
        let r = match body {
            Some(b) => rq.send_json(b),
            None => rq.call(),
        };
        match r {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(code, _)) => code,
            Err(e) => panic!("{e}"),
        }
    };
    let sleep = || Some(json!({"commands": [{"name": "Sleep", "params": {"ms": 1}}]}));
    let reg = || {
        Some(
            json!({"protocol_version": warp_common::PROTOCOL_VERSION, "device": 0, "hostname": "h"}),
        )
    };
    // view: monitoring yes, submission and registration no.
    assert_eq!(call("GET", "/api/workers/status", &view, None), 200);
    assert_eq!(call("GET", "/api/workers/tasks", &view, None), 200);
    assert_eq!(call("POST", "/api/tasks", &view, sleep()), 401);
    assert_eq!(call("POST", "/api/workers/register", &view, reg()), 401);
    // enrollment: registration only.
    assert_eq!(call("POST", "/api/workers/register", &c.token, reg()), 200);
    assert_eq!(call("POST", "/api/tasks", &c.token, sleep()), 401);
    // admin: everything.
    assert_eq!(call("POST", "/api/tasks", &c.admin_token, sleep()), 201);
    assert_eq!(
        call("GET", "/api/workers/status", &c.admin_token, None),
        200
    );
    assert_eq!(
        call("POST", "/api/workers/register", &c.admin_token, reg()),
        200
    );
    // The CLI takes the admin token; given the enrollment token it is told what to use.
    let out = std::process::Command::new(warp_tests::bin("warp-controller"))
        .args(["status", "--controller", &c.url, "--token-file"])
        .arg(&c.token_file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--admin-token-file"), "{err}");
    let out = cli(&c, &["status", "--controller", &c.url]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn malformed_input_gets_json_errors_and_the_controller_keeps_serving() {
    let dir = TempDir::new("malformed");
    let mut flags = FAST.to_vec();
    flags.extend(["--max-body", "4096"]);
    let c = ControllerProc::start(dir.path(), 0, &flags);
    let agent = http_agent();
    let auth = format!("Bearer {}", c.admin_token);
    let post = |path: &str, body: &str| {
        agent
            .post(&format!("{}{path}", c.url))
            .set("Authorization", &auth)
            .set("Content-Type", "application/json")
            .send_string(body)
    };
    let unknown_cancel = format!("/api/tasks/{}/cancel", uuid::Uuid::new_v4());
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("/api/tasks", "{not json".into(), 400, "malformed"),
        (
            "/api/tasks",
            r#"{"commands": "Sleep"}"#.into(),
            400,
            "malformed",
        ),
        (
            "/api/tasks",
            r#"{"commands": [{"name": "Nope", "params": {}}]}"#.into(),
            400,
            "malformed",
        ),
        ("/api/tasks", r#"{"commands": []}"#.into(), 400, "invalid"),
        (
            "/api/tasks",
            r#"{"commands": [{"name": "Exec", "params": {"argv": []}}]}"#.into(),
            400,
            "invalid",
        ),
        (
            "/api/tasks",
            format!(r#"{{"commands": [], "label": "{}"}}"#, "x".repeat(5000)),
            413,
            "too_large",
        ),
        (
            "/api/tasks/not-a-uuid/cancel",
            String::new(),
            404,
            "unknown_task",
        ),
        (&unknown_cancel, String::new(), 404, "unknown_task"),
        (
            "/api/workers/register",
            r#"{"protocol_version": "one"}"#.into(),
            400,
            "malformed",
        ),
        ("/api/nowhere", "{}".into(), 404, "not_found"),
    ];
    for (path, body, want, code) in &cases {
        let (got, b) = status_of(post(path, body).unwrap_err());
        assert_eq!(
            (got, b["code"].as_str()),
            (*want, Some(*code)),
            "POST {path} {body:.60}: {b}"
        );
        assert!(b["error"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // 405 names the path's methods in Allow (RFC 9110).
    match agent.delete(&format!("{}/api/tasks", c.url)).call() {
        Err(ureq::Error::Status(405, r)) => {
            assert_eq!(r.header("Allow"), Some("POST"));
            let b: Value = r.into_json().unwrap();
            assert_eq!(b["code"], "method_not_allowed");
        }
        other => panic!("DELETE /api/tasks: {other:?}"),
    }
    let (got, b) = status_of(
        agent
            .get(&format!(
                "{}/api/workers/tasks/{}",
                c.url,
                uuid::Uuid::new_v4()
            ))
            .set("Authorization", &auth)
            .call()
            .unwrap_err(),
    );
    assert_eq!((got, b["code"].as_str()), (404, Some("unknown_task")));
    // Still serving, nothing recorded.
    let st = c.client().status().unwrap();
    assert_eq!(st.tasks.queued + st.tasks.completed + st.tasks.failed, 0);
    let ok = c
        .client()
        .submit(&TaskSpec::new(vec![Command::Sleep { ms: 1 }]))
        .unwrap();
    assert_eq!(c.client().task(ok).unwrap().state, TaskState::Queued);
}

#[test]
fn long_poll_is_held_and_answered_at_once_on_submit() {
    let dir = TempDir::new("longpoll");
    let c = ControllerProc::start(dir.path(), 0, &["--poll-hold", "0.5"]);
    let agent = http_agent();
    let reg =
        json!({"protocol_version": warp_common::PROTOCOL_VERSION, "device": 0, "hostname": "h"});
    let ok: Value = agent
        .post(&format!("{}/api/workers/register", c.url))
        .set("Authorization", &format!("Bearer {}", c.token))
        .send_json(&reg)
        .unwrap()
        .into_json()
        .unwrap();
    let poll_url = format!(
        "{}/api/workers/{}/poll",
        c.url,
        ok["worker_id"].as_str().unwrap()
    );
    let wauth = format!("Bearer {}", ok["token"].as_str().unwrap());
    // No work: held for the hold time, then 204.
    let t = Instant::now();
    let r = agent
        .get(&poll_url)
        .set("Authorization", &wauth)
        .call()
        .unwrap();
    let held = t.elapsed();
    assert_eq!(r.status(), 204);
    assert!(
        held >= Duration::from_millis(450) && held < Duration::from_millis(2000),
        "held {held:?}"
    );
    // Work arrives mid-hold: answered at once.
    let c2 = c.client();
    let submitter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        (
            Instant::now(),
            c2.submit(&TaskSpec::new(vec![Command::Echo { value: json!(1) }]))
                .unwrap(),
        )
    });
    let r = agent
        .get(&poll_url)
        .set("Authorization", &wauth)
        .call()
        .unwrap();
    let answered = Instant::now();
    let (submitted, id) = submitter.join().unwrap();
    // The poll may have expired once (hold 0.5 s) before the submit; the worker polls again.
    let body: Value = if r.status() == 204 {
        agent
            .get(&poll_url)
            .set("Authorization", &wauth)
            .call()
            .unwrap()
            .into_json()
            .unwrap()
    } else {
        r.into_json().unwrap()
    };
    assert_eq!(body["task"]["id"], json!(id));
    assert!(answered.saturating_duration_since(submitted) < Duration::from_millis(300));
}

#[test]
fn cancel_stops_a_running_command_and_the_worker_takes_the_next_task() {
    let dir = TempDir::new("cancel");
    let c = ControllerProc::start(dir.path(), 0, FAST);
    let _w = start_worker(dir.path(), &c.url, &c.token, 0, &[]);
    wait_workers(&c, 1);
    let client = c.client();
    let marker = dir.path().join("ran-to-end");
    let script = format!("sleep 30; touch {}", marker.display());
    let id = client
        .submit(&TaskSpec::new(vec![Command::exec(["sh", "-c", &script])]))
        .unwrap();
    let queued = client
        .submit(&TaskSpec::new(vec![Command::Sleep { ms: 1 }]))
        .unwrap();
    wait_running(&client, id);
    assert_eq!(client.cancel(queued).unwrap(), TaskState::Cancelled);
    assert_eq!(client.cancel(id).unwrap(), TaskState::Cancelled);
    let t = Instant::now();
    let next = client
        .submit(&TaskSpec::new(vec![Command::Echo {
            value: json!("next"),
        }]))
        .unwrap();
    let d = client.wait(next, Some(Duration::from_secs(10))).unwrap();
    assert_eq!(d.state, TaskState::Completed);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the cancelled command kept the worker busy"
    );
    assert!(!marker.exists());
    assert_eq!(client.task(id).unwrap().state, TaskState::Cancelled);
}

#[test]
fn sigterm_releases_the_running_task_at_once() {
    let dir = TempDir::new("sigterm");
    let c = ControllerProc::start(
        dir.path(),
        0,
        &["--heartbeat-timeout", "60", "--poll-hold", "2"],
    );
    let mut a = start_worker(dir.path(), &c.url, &c.token, 0, &[]);
    wait_workers(&c, 1);
    let client = c.client();
    let id = client
        .submit(&TaskSpec::new(vec![Command::Sleep { ms: 20_000 }]))
        .unwrap();
    wait_running(&client, id);
    let t = Instant::now();
    a.signal(libc::SIGTERM);
    assert_eq!(
        a.wait_exit(Duration::from_secs(10)),
        Some(Some(0)),
        "clean exit:\n{}",
        a.stderr()
    );
    // Re-queued at once, long before the 60 s heartbeat timeout.
    let d = wait_for(Duration::from_secs(5), "the task to be re-queued", || {
        let d = client.task(id).ok()?;
        (d.state == TaskState::Queued).then_some(d)
    });
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(d.history[0].outcome, AttemptOutcome::Released);
    assert!(client.workers(true).unwrap().is_empty());
}

#[test]
fn openapi_document_is_served_and_every_documented_route_exists() {
    let dir = TempDir::new("openapi");
    let c = ControllerProc::start(dir.path(), 0, FAST);
    let agent = http_agent();
    let served: Value = agent
        .get(&format!("{}/api/openapi.json", c.url))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    let file: Value = serde_json::from_str(warp_controller::http::OPENAPI_JSON).unwrap();
    assert_eq!(served, file);
    let id = uuid::Uuid::new_v4();
    for (path, item) in served["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let url = format!(
                "{}{}",
                c.url,
                path.replace("{id}", &id.to_string())
                    .replace("{taskId}", &id.to_string())
            );
            let r = agent
                .request(&method.to_uppercase(), &url)
                .set("Authorization", &format!("Bearer {}", c.admin_token))
                .call();
            let code = match r {
                Ok(r) => r.status(),
                Err(e) => {
                    let (code, body) = status_of(e);
                    assert_ne!(
                        body["code"], "not_found",
                        "{method} {path} is documented but not served"
                    );
                    assert_ne!(code, 405, "{method} {path}");
                    code
                }
            };
            assert!(code < 500, "{method} {path} answered {code}");
        }
    }
}

#[test]
fn protocol_version_mismatch_makes_the_worker_exit_naming_both_versions() {
    // A stand-in controller that speaks another protocol version: it answers registration the
    // way a newer controller would.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 8192];
        let _ = s.read(&mut buf).unwrap();
        let body = r#"{"error":"protocol version mismatch: the worker speaks protocol 1 but this controller speaks protocol 99","code":"protocol_version_mismatch"}"#;
        let resp = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(resp.as_bytes()).unwrap();
    });
    let dir = TempDir::new("mismatch");
    let mut w = start_worker(
        dir.path(),
        &format!("127.0.0.1:{port}"),
        "t",
        0,
        WORKER_FAST,
    );
    let code = w
        .wait_exit(Duration::from_secs(10))
        .expect("worker exits at once");
    server.join().unwrap();
    assert_ne!(code, Some(0));
    let err = w.stderr();
    assert!(err.contains("99") && err.contains("protocol"), "{err}");
}

#[test]
fn console_lines_reach_the_controller() {
    let dir = TempDir::new("console");
    let c = ControllerProc::start(dir.path(), 0, FAST);
    let _w = start_worker(dir.path(), &c.url, &c.token, 0, &[]);
    let id = wait_workers(&c, 1)[0].id;
    let client = c.client();
    let t = client
        .submit(&TaskSpec::new(vec![Command::Fail {
            message: "visible failure".into(),
        }]))
        .unwrap();
    client.wait(t, Some(Duration::from_secs(10))).unwrap();
    let lines = wait_for(Duration::from_secs(10), "console lines", || {
        let l = client.console_last(id, 100).ok()?;
        (l.total > 0).then_some(l)
    });
    assert!(lines.lines.iter().all(|l| l.n < lines.total));
    let agent = http_agent();
    let count: Value = agent
        .get(&format!("{}/api/workers/{id}/console/count", c.url))
        .set("Authorization", &format!("Bearer {}", c.admin_token))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert!(count["count"].as_u64().unwrap() >= lines.total);
}

/// Regression: tiny_http's pool queued a new connection behind a thread another connection had
/// claimed; with the other threads held by keep-alive connections (parked polls) the new one
/// was never served. Many workers starting at once must all be answered.
#[test]
fn burst_of_new_connections_is_served() {
    let dir = TempDir::new("burst");
    let c = ControllerProc::start(dir.path(), 0, &["--poll-hold", "30"]);
    let n = 48;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (url, token, barrier) = (c.url.clone(), c.token.clone(), barrier.clone());
            std::thread::spawn(move || {
                // One agent per "worker": its own keep-alive connections, as real workers have.
                let agent = ureq::AgentBuilder::new().try_proxy_from_env(false).timeout(Duration::from_secs(20)).build();
                let reg = json!({"protocol_version": warp_common::PROTOCOL_VERSION, "device": 0, "hostname": "h"});
                barrier.wait();
                let r: Value = agent
                    .post(&format!("{url}/api/workers/register"))
                    .set("Authorization", &format!("Bearer {token}"))
                    .send_json(&reg)
                    .map_err(|e| e.to_string())?
                    .into_json()
                    .map_err(|e| e.to_string())?;
                // Park a poll on a second connection, keeping the first one open.
                let poll = format!("{url}/api/workers/{}/poll", r["worker_id"].as_str().unwrap());
                let auth = format!("Bearer {}", r["token"].as_str().unwrap());
                let agent2 = ureq::AgentBuilder::new().try_proxy_from_env(false).timeout(Duration::from_secs(40)).build();
                std::thread::spawn(move || agent2.get(&poll).set("Authorization", &auth).call().map(|r| r.status()).ok());
                Ok::<_, String>(agent)
            })
        })
        .collect();
    let agents: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().unwrap().expect("registration answered"))
        .collect();
    let parked = wait_for(Duration::from_secs(20), "all polls parked", || {
        let s = c.client().status().ok()?;
        (s.parked_polls as usize == n).then_some(s.parked_polls)
    });
    assert_eq!(parked as usize, agents.len());
}

#[test]
fn direct_mode_writes_its_port_and_secret_refuses_requests_without_it_and_exits_without_a_pulse() {
    let dir = TempDir::new("pulse");
    let pipe = dir.path().join("port");
    let mut cmd = std::process::Command::new(warp_tests::bin("warp-worker"));
    cmd.args(["-d", "0", "-p", "0", "--pulse-timeout", "0.5", "--pipe"])
        .arg(&pipe);
    let mut w = warp_tests::Proc::spawn(cmd, "warp-worker direct", dir.path().join("direct.log"));
    let (port, secret): (u16, String) = wait_for(Duration::from_secs(10), "the port line", || {
        let text = std::fs::read_to_string(&pipe).ok()?;
        let (port, secret) = text.split_once('\n')?;
        secret
            .ends_with('\n')
            .then(|| Some((port.parse().ok()?, secret.trim().to_string())))?
    });
    let agent = http_agent();
    let eval = format!("http://127.0.0.1:{port}/v1/Service/EvaluateCommand");
    // Issue 16, row 6: without the per-run secret from the pipe, Exec does not run (401).
    let marker = dir.path().join("pwned");
    let exec = json!({"name": "Exec", "params": {"argv": ["touch", marker.to_str().unwrap()]}});
    let (code, _) = status_of(agent.post(&eval).send_json(&exec).unwrap_err());
    assert_eq!(code, 401);
    let r: Value = agent
        .post(&eval)
        .set("Authorization", &format!("Bearer {secret}"))
        .send_json(json!({"name": "Echo", "params": {"value": "hi"}}))
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(r["result"]["value"], "hi");
    assert!(!marker.exists(), "an unauthenticated Exec ran");
    let t = Instant::now();
    assert_eq!(
        w.wait_exit(Duration::from_secs(10)),
        Some(Some(0)),
        "exits 0 without a pulse:\n{}",
        w.stderr()
    );
    assert!(t.elapsed() < Duration::from_secs(3));
}

/// Regression: worker routes read the body only after checking the worker's token, so clients
/// that stall mid-upload without a valid token cannot occupy the handler threads.
#[test]
fn stalled_unauthenticated_uploads_do_not_block_the_controller() {
    use std::io::Write;
    let dir = TempDir::new("stall");
    let c = ControllerProc::start(dir.path(), 0, &[]);
    let mut stalled = Vec::new();
    for _ in 0..6 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", c.port)).unwrap();
        let head = format!(
            "POST /api/workers/{}/heartbeat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\nContent-Type: application/json\r\nContent-Length: 50000\r\n\r\n{{",
            uuid::Uuid::new_v4()
        );
        s.write_all(head.as_bytes()).unwrap();
        stalled.push(s); // never sends the rest
    }
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let st = c.client().status().expect("controller still answers");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "status took {:?}",
        t.elapsed()
    );
    assert_eq!(st.workers.idle, 0);
    drop(stalled);
}

/// Regression: tiny_http drained an unread body into a buffer of the announced size, so one
/// request with an absurd Content-Length aborted the controller.
#[test]
fn absurd_content_length_gets_413_and_the_controller_survives() {
    use std::io::{Read, Write};
    let dir = TempDir::new("huge");
    let c = ControllerProc::start(dir.path(), 0, &[]);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", c.port)).unwrap();
    let head = format!(
        "POST /api/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 900000000000\r\n\r\n{{",
        c.admin_token
    );
    s.write_all(head.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reply = [0u8; 12];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"HTTP/1.1 413");
    std::thread::sleep(Duration::from_millis(300));
    c.client().status().expect("the controller is still up");
}

#[test]
fn idle_exit_deregisters_and_exits_0() {
    let dir = TempDir::new("idle");
    let c = ControllerProc::start(dir.path(), 0, FAST);
    let mut w = start_worker(dir.path(), &c.url, &c.token, 0, &["--idle-exit", "0.5"]);
    wait_workers(&c, 1);
    let client = c.client();
    let id = client
        .submit(&TaskSpec::new(vec![Command::Echo { value: json!(1) }]))
        .unwrap();
    assert_eq!(
        client
            .wait(id, Some(Duration::from_secs(10)))
            .unwrap()
            .state,
        TaskState::Completed
    );
    assert_eq!(
        w.wait_exit(Duration::from_secs(10)),
        Some(Some(0)),
        "{}",
        w.stderr()
    );
    assert!(
        client.workers(true).unwrap().is_empty(),
        "deregistered, not just silent"
    );
}

/// Issue 16, row 3: with the descriptors used up by idle connections, `accept` failed with
/// EMFILE and tiny_http's accept loop ended, so the port refused every connection for the rest
/// of the process's life. Now it backs off and goes on once the connections are gone. The
/// controller runs with soft = hard = 64 open files, so it cannot raise its limit out of reach,
/// and a connection cap above that (the default cap would answer 503 long before).
#[test]
fn too_many_open_files_does_not_end_the_accept_loop() {
    let tmp = TempDir::new("emfile");
    // A cap above the descriptors, so that they, not the cap, run out.
    let c = ControllerProc::start_with_open_files(tmp.path(), 64, &["--max-connections", "1000"]);
    let (port, proc) = (c.port, &c.proc);
    let addr = format!("127.0.0.1:{port}");
    let health = |timeout: Duration| {
        ureq::AgentBuilder::new()
            .try_proxy_from_env(false)
            .timeout(timeout)
            .build()
            .get(&format!("http://{addr}/api/health"))
            .call()
            .map(|r| r.status())
    };
    assert_eq!(health(Duration::from_secs(5)).unwrap(), 200);
    // More idle connections than descriptors: the accept loop runs out.
    let idle: Vec<std::net::TcpStream> = (0..100)
        .filter_map(|_| std::net::TcpStream::connect(&addr).ok())
        .collect();
    assert!(idle.len() > 64, "only {} connections", idle.len());
    wait_for(
        Duration::from_secs(10),
        "an accept error in the log",
        || {
            proc.stderr()
                .contains("cannot accept a connection")
                .then_some(())
        },
    );
    drop(idle);
    // The attackers are gone: the controller answers again.
    let back = wait_for(Duration::from_secs(20), "health to answer again", || {
        health(Duration::from_secs(2)).ok()
    });
    assert_eq!(back, 200, "{}", proc.stderr());
}

/// Issue 16, row 4: request lines and headers had no limit (one 512 MiB header line took
/// 509 MiB). Now a request line over 8 KiB gets 414, a header section over 16 KiB or 100
/// lines gets 431, and the connection is closed without reading the rest.
#[test]
fn huge_header_lines_get_431_and_cost_no_memory() {
    use std::io::{Read, Write};
    let tmp = TempDir::new("headers");
    let c = ControllerProc::start(tmp.path(), 0, &[]);
    let addr = format!("127.0.0.1:{}", c.port);
    let rss_before = warp_tests::rss_kib(c.proc.pid()).unwrap();
    // What the server answers to `head` when it has read all of it.
    let answer = |head: Vec<u8>| {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&head).unwrap();
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        reply
    };
    // The line that crosses the limit is the last thing sent: the server reads all of it.
    let mut big = b"GET /api/health HTTP/1.1\r\nX-Big: ".to_vec();
    big.resize(26 + 16 * 1024 + 1, b'a');
    let reply = answer(big);
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply:?}");
    let mut line = b"GET /api/health?".to_vec();
    line.resize(8 * 1024 + 1, b'a');
    let reply = answer(line);
    assert!(reply.starts_with("HTTP/1.1 414"), "{reply:?}");
    let mut many = b"GET /api/health HTTP/1.1\r\n".to_vec();
    for i in 0..101 {
        many.extend(format!("X-{i}: 1\r\n").as_bytes());
    }
    let reply = answer(many);
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply:?}");
    // 256 MiB of one header line: the server stops reading after 16 KiB.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET /api/health HTTP/1.1\r\nX-Huge: ")
        .unwrap();
    let chunk = vec![b'a'; 1 << 20];
    let mut sent = 0usize;
    while sent < 256 << 20 && s.write_all(&chunk).is_ok() {
        sent += chunk.len();
    }
    assert!(sent < 256 << 20, "the server read all {sent} bytes");
    let rss_after = warp_tests::rss_kib(c.proc.pid()).unwrap();
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS {rss_before} -> {rss_after} KiB"
    );
    let health = ureq::AgentBuilder::new()
        .try_proxy_from_env(false)
        .build()
        .get(&format!("{}/api/health", c.url))
        .call()
        .unwrap();
    assert_eq!(health.status(), 200);
}

/// Issue 16, row 7: a 1 MiB hostname was copied into every attempt record (300 tasks: RSS
/// 6 → 307 MiB) and logged whole; newlines in a hostname or a deregistration reason forged
/// log lines. Now over-long strings are refused (or cut, for free text) and logged escaped.
#[test]
fn hostile_hostnames_and_reasons_are_capped_and_escaped() {
    let dir = TempDir::new("hostile-strings");
    let c = ControllerProc::start(dir.path(), 0, FAST);
    let agent = http_agent();
    let register = |hostname: &str| {
        agent
            .post(&format!("{}/api/workers/register", c.url))
            .set("Authorization", &format!("Bearer {}", c.token))
            .send_json(json!({
                "protocol_version": warp_common::PROTOCOL_VERSION,
                "device": 0,
                "hostname": hostname,
            }))
    };
    let (code, body) = status_of(register(&"h".repeat(1 << 20)).unwrap_err());
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("hostname"),
        "{body}"
    );
    let ok: Value = register("evil\nFORGED worker registered: host root")
        .unwrap()
        .into_json()
        .unwrap();
    let (id, wtoken) = (
        ok["worker_id"].as_str().unwrap(),
        ok["token"].as_str().unwrap(),
    );
    // A label over the cap is refused at submission.
    let mut spec = TaskSpec::new(vec![Command::Sleep { ms: 1 }]);
    spec.label = Some("l".repeat(10_000));
    assert!(c.client().submit(&spec).is_err());
    // A reason of 1 MiB with a forged line in it: cut and escaped.
    let reason = format!("bye\n[fake] controller compromised{}", "x".repeat(1 << 20));
    agent
        .post(&format!("{}/api/workers/{id}/deregister", c.url))
        .set("Authorization", &format!("Bearer {wtoken}"))
        .send_json(json!({ "reason": reason }))
        .unwrap();
    let log = wait_for(
        Duration::from_secs(5),
        "the deregistration in the log",
        || {
            let log = c.proc.stderr();
            log.contains("deregisters").then_some(log)
        },
    );
    assert!(log.contains("evil\\nFORGED"), "{log}");
    assert!(log.contains("bye\\n[fake]"), "{log}");
    for line in log.lines() {
        assert!(
            !line.starts_with("FORGED") && !line.starts_with("[fake]"),
            "forged line: {line}"
        );
        assert!(line.len() < 8 * 1024, "a log line of {} bytes", line.len());
    }
}

/// Issue 16, row 8: a worker gave up after 10 failed calls (about 61 s), so a slow controller
/// restart drained a whole SLURM fleet. Now it keeps trying for `--reconnect-for` (30 min by
/// default): here far more than 10 failed calls in 2 s do not make it leave, and once the
/// budget is spent it exits 1 saying for how long it tried.
#[test]
fn controller_outage_is_tolerated_by_time_not_by_count() {
    let dir = TempDir::new("outage");
    let c = ControllerProc::start(dir.path(), 0, FAST);
    let port = c.port;
    let mut args = vec!["--backoff-base", "0.01", "--backoff-max", "0.05"];
    args.extend(["--reconnect-for", "4"]);
    let mut w = start_worker(dir.path(), &c.url, &c.token, 0, &args);
    wait_workers(&c, 1);
    drop(c); // SIGKILL
    std::thread::sleep(Duration::from_secs(2));
    let failed_calls = w.stderr().matches("failed (").count();
    assert!(
        failed_calls > 10,
        "only {failed_calls} failed calls:\n{}",
        w.stderr()
    );
    assert!(
        w.wait_exit(Duration::ZERO).is_none(),
        "the worker left during the outage:\n{}",
        w.stderr()
    );
    // Back within the budget: the same worker process registers again.
    let c2 = ControllerProc::start(dir.path(), port, FAST);
    let again = wait_workers(&c2, 1);
    assert_eq!(again[0].pid, Some(w.pid()));
    // Away for good: it exits 1 once the budget is spent, naming it.
    let t = Instant::now();
    drop(c2);
    let code = w.wait_exit(Duration::from_secs(20)).expect("worker exits");
    assert_eq!(code, Some(1), "{}", w.stderr());
    assert!(t.elapsed() >= Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(w.stderr().contains("--reconnect-for"), "{}", w.stderr());
}

/// Issue 16, row 5: an `Exec` task read the worker's token from its environment and from
/// `/proc/$PPID/environ`. Now the worker wipes it from its own environment block once read
/// and starts programs without any `WARP_*TOKEN` variable.
#[test]
fn exec_tasks_cannot_read_the_workers_token() {
    let dir = TempDir::new("token-leak");
    let c = ControllerProc::start(dir.path(), 0, FAST);
    let _w = start_worker(dir.path(), &c.url, &c.token, 0, &["-s"]);
    wait_workers(&c, 1);
    let client = c.client();
    let script = "env; echo ---; tr '\\0' '\\n' < /proc/$PPID/environ; echo ---; grep -c . /proc/$PPID/environ || true";
    let id = client
        .submit(&TaskSpec::new(vec![Command::exec(["sh", "-c", script])]))
        .unwrap();
    let d = client.wait(id, Some(Duration::from_secs(20))).unwrap();
    assert_eq!(d.state, TaskState::Completed, "{:?}", d.error);
    let out = d.result.unwrap()["results"][0]["stdout_tail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(out.contains("---"), "{out}");
    assert!(!out.contains(&c.token), "the token leaked:\n{out}");
}

/// Issue 12: `GET /metrics` in the Prometheus text format, for the view token (not without a
/// token): gauges of workers, tasks and the queue, the dispatch-latency and task-duration
/// histograms, movies by outcome; parsed by `prometheus_client` (PyPI) when it is installed
/// (required under WARP_REQUIRE_REFERENCE_READERS=1).
#[test]
fn metrics_are_served_in_the_prometheus_format() {
    let dir = TempDir::new("metrics");
    let view_file = dir.path().join("view-token");
    let mut extra = FAST.to_vec();
    extra.extend(["--view-token-file", view_file.to_str().unwrap()]);
    let c = ControllerProc::start(dir.path(), 0, &extra);
    let view = std::fs::read_to_string(&view_file)
        .unwrap()
        .trim()
        .to_string();
    let _w = start_worker(dir.path(), &c.url, &c.token, 0, &[]);
    wait_workers(&c, 1);
    let client = c.client();
    let echo = TaskSpec::new(vec![Command::Echo { value: json!(1) }]);
    let ids = client.submit_batch(vec![echo; 5]).unwrap();
    // A movie package whose movie is not there: a failed movie.
    let load = serde_json::from_value::<Command>(
        json!({"name": "LoadStack", "params": {"path": "/nonexistent/m.mrc"}}),
    )
    .unwrap();
    let movie = client.submit(&TaskSpec::new(vec![load])).unwrap();
    for id in ids.iter().chain([&movie]) {
        client.wait(*id, Some(Duration::from_secs(30))).unwrap();
    }
    let agent = http_agent();
    let get = |token: Option<&str>| {
        let mut rq = agent.get(&format!("{}/metrics", c.url));
        if let Some(t) = token {
            rq = rq.set("Authorization", &format!("Bearer {t}"));
        }
        rq.call()
    };
    assert!(matches!(get(None), Err(ureq::Error::Status(401, _))));
    let r = get(Some(&view)).unwrap();
    assert!(
        r.content_type().starts_with("text/plain"),
        "{}",
        r.content_type()
    );
    let text = r.into_string().unwrap();
    for line in [
        "warp_workers{state=\"idle\"} 1",
        "warp_tasks{state=\"completed\"} 5",
        "warp_tasks{state=\"failed\"} 1",
        "warp_queue_length 0",
        "warp_dispatch_latency_seconds_count 6",
        "warp_task_duration_seconds_count{command=\"Echo\"} 5",
        "warp_movies_total{outcome=\"failed\"} 1",
        "warp_movies_total{outcome=\"done\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }
    if !warp_tests::python_modules(&["prometheus_client"], "prometheus-client") {
        return;
    }
    let path = dir.path().join("metrics.txt");
    std::fs::write(&path, &text).unwrap();
    let script = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\n\
        fams = {f.name: f for f in p(open(sys.argv[1]).read())}\n\
        assert fams['warp_dispatch_latency_seconds'].type == 'histogram', fams.keys()\n\
        assert fams['warp_task_duration_seconds'].type == 'histogram'\n\
        print('PARSED', len(fams))";
    let o = std::process::Command::new("python3")
        .args(["-c", script, path.to_str().unwrap()])
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success() && out.contains("PARSED"),
        "{out}\n{text}"
    );
}

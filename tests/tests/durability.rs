//! Issue 11: a controller with `--state-dir` loses nothing when it is killed. The real
//! binaries on loopback; every process is stopped by its PID on drop.

use std::time::{Duration, Instant};

use serde_json::json;
use warp_common::commands::Command;
use warp_common::protocol::{AttemptOutcome, TaskSpec, TaskState};
use warp_tests::{ControllerProc, TempDir, start_worker, wait_for};

const FAST: &[&str] = &[
    "--heartbeat-timeout",
    "3",
    "--poll-hold",
    "2",
    "--heartbeat-interval",
    "0.1",
];
const WORKER_FAST: &[&str] = &[
    "--backoff-base",
    "0.05",
    "--backoff-max",
    "0.3",
    "--reconnect-for",
    "60",
];

fn serve_flags(state: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = FAST.iter().map(|s| s.to_string()).collect();
    v.push("--state-dir".into());
    v.push(state.display().to_string());
    v
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `serve` with `flags`, expected to refuse to start: its output.
fn serve_to_exit(token_file: &std::path::Path, flags: &[String]) -> std::process::Output {
    std::process::Command::new(warp_tests::bin("warp-controller"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--token-file",
        ])
        .arg(token_file)
        .args(flags)
        .output()
        .unwrap()
}

/// 300 short tasks and one long one on 2 workers; the controller is SIGKILLed while the long
/// task runs and tasks are queued, then restarted on the same port with the same state dir.
/// Every task ends completed with its own result and exactly one completed attempt; the long
/// task was not repeated (its worker re-attached with its lease); a CLI `wait` on it, started
/// before the kill, rides the restart out.
#[test]
fn a_killed_controller_comes_back_with_its_queue_and_running_tasks_keep_their_leases() {
    let dir = TempDir::new("durable");
    let state = dir.path().join("state");
    let flags = serve_flags(&state);
    let c = ControllerProc::start(dir.path(), 0, &refs(&flags));
    let port = c.port;
    let workers: Vec<_> = (0..2)
        .map(|d| start_worker(dir.path(), &c.url, &c.token, d, WORKER_FAST))
        .collect();
    let client = c.client();
    wait_for(Duration::from_secs(20), "2 workers", || {
        (client.workers(false).ok()?.len() == 2).then_some(())
    });
    let long = client
        .submit(&TaskSpec::new(vec![
            Command::Sleep { ms: 2_500 },
            Command::Echo {
                value: json!("long"),
            },
        ]))
        .unwrap();
    let specs: Vec<TaskSpec> = (0..300)
        .map(|i| {
            TaskSpec::new(vec![
                Command::Sleep { ms: 10 },
                Command::Echo { value: json!(i) },
            ])
        })
        .collect();
    let ids = client.submit_batch(specs).unwrap();
    let mut waiter = std::process::Command::new(warp_tests::bin("warp-controller"))
        .args(["wait", "--controller", &c.url, &long.to_string()])
        .env("WARP_ADMIN_TOKEN", &c.admin_token)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let waiter_pid = waiter.id();
    let _reap = scopeguard(waiter_pid);
    wait_for(Duration::from_secs(20), "the long task to run", || {
        (client.task(long).ok()?.state == TaskState::Running).then_some(())
    });
    wait_for(Duration::from_secs(20), "some short tasks done", || {
        let st = client.status().ok()?;
        (st.tasks.completed >= 20).then_some(())
    });
    let before = client.status().unwrap();
    assert!(before.tasks.queued > 0, "nothing left queued: {before:?}");
    let admin = c.admin_token.clone();
    let url = c.url.clone();
    drop(c); // SIGKILL
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let c2 = ControllerProc::start(dir.path(), port, &refs(&flags));
    let restart = t0.elapsed();
    assert_eq!(c2.admin_token, admin);
    assert_eq!(c2.url, url);
    let client = c2.client();
    // The ids are valid across the restart, and nothing is repeated.
    let d = client.wait(long, Some(Duration::from_secs(30))).unwrap();
    assert_eq!(d.state, TaskState::Completed, "{:?}", d.error);
    assert_eq!(
        d.history.len(),
        1,
        "the long task ran once: {:?}",
        d.history
    );
    assert_eq!(d.result.unwrap()["results"][1]["value"], json!("long"));
    for (i, id) in ids.iter().enumerate() {
        let d = client.wait(*id, Some(Duration::from_secs(60))).unwrap();
        assert_eq!(d.state, TaskState::Completed, "task {i}: {:?}", d.error);
        assert_eq!(d.result.unwrap()["results"][1]["value"], json!(i));
        let completed = d
            .history
            .iter()
            .filter(|a| a.outcome == AttemptOutcome::Completed)
            .count();
        assert_eq!(completed, 1, "task {i}: {:?}", d.history);
    }
    let st = client.status().unwrap();
    assert_eq!(st.tasks.completed, 301, "{st:?}");
    assert_eq!(
        client.workers(true).unwrap().len(),
        2,
        "the same two workers, none registered anew"
    );
    for w in &workers {
        assert!(warp_tests::pid_alive(w.pid()));
    }
    let status = wait_for(Duration::from_secs(30), "the CLI wait to end", || {
        waiter.try_wait().ok().flatten()
    });
    assert!(status.success(), "wait failed across the restart");
    eprintln!("restart to listening: {restart:?}");
}

/// Kills the process on drop (the CLI `wait` of the test above, should the test fail).
struct Guard(u32);
fn scopeguard(pid: u32) -> Guard {
    Guard(pid)
}
impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our child's pid; harmless if it has exited and been reaped
        // moments ago (the pid is not reused that fast within this test).
        unsafe {
            libc::kill(self.0 as libc::pid_t, libc::SIGKILL);
        }
    }
}

/// A second controller on the same state directory is refused, naming the holder.
#[test]
fn a_state_dir_serves_one_controller_at_a_time() {
    let dir = TempDir::new("durable-lock");
    let state = dir.path().join("state");
    let flags = serve_flags(&state);
    let c = ControllerProc::start(dir.path(), 0, &refs(&flags));
    let out = serve_to_exit(&c.token_file, &flags);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in use by another controller") && err.contains(&c.proc.pid().to_string()),
        "{err}"
    );
}

/// A journal damaged in its middle stops the start with the file and offset; nothing is
/// served from a partial state.
#[test]
fn a_damaged_journal_stops_the_start_with_file_and_offset() {
    let dir = TempDir::new("durable-damage");
    let state = dir.path().join("state");
    let flags = serve_flags(&state);
    let c = ControllerProc::start(dir.path(), 0, &refs(&flags));
    let client = c.client();
    for i in 0..20 {
        client
            .submit(&TaskSpec::new(vec![Command::Echo { value: json!(i) }]))
            .unwrap();
    }
    drop(c);
    let seg = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    let out = serve_to_exit(&dir.path().join("token"), &flags);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&seg.display().to_string()) && err.contains("offset"),
        "{err}"
    );
}

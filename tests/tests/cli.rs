//! The `warp-controller` command line: every subcommand refuses a bad command line with exit
//! code 2 before it binds a port or spawns a worker, and names the flag to fix.

use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use warp_tests::TempDir;

fn run(dir: &TempDir, args: &[&str]) -> Output {
    let mut cmd = Command::new(warp_tests::bin("warp-controller"));
    cmd.args(args)
        .current_dir(dir.path())
        .env_remove("WARP_TOKEN")
        .env_remove("WARP_ADMIN_TOKEN")
        .env_remove("WARP_VIEW_TOKEN")
        .env_remove("WARP_CONTROLLER");
    // A usage error is found at once; a process that got further would bind, spawn or wait.
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "warp-controller {args:?} still running after 20 s:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn assert_usage(dir: &TempDir, args: &[&str], wants: &str) {
    let out = run(dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "warp-controller {args:?}: {stderr}"
    );
    assert!(
        stderr.contains(wants),
        "warp-controller {args:?}: {stderr:?} lacks {wants:?}"
    );
    assert!(!stderr.contains("listening"), "{stderr}");
}

/// Issue 10: `--provision-var bad` exited 2 under `serve` but 1 under `preprocess`, and only
/// after the controller was listening. A port already taken by this test shows the binary
/// never tried to bind it (that would be exit 1, "cannot listen").
#[test]
fn provision_var_bad_is_a_usage_error_before_binding_in_serve_and_preprocess() {
    let dir = TempDir::new("cli-provision");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    std::fs::write(
        dir.path().join("t.sbatch"),
        "#!/bin/sh\n{{controller_url}}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("token"), "secret\n").unwrap();
    let provision = [
        "--token-file",
        "token",
        "--provision",
        "slurm",
        "--provision-template",
        "t.sbatch",
        "--provision-var",
        "bad",
    ];
    let mut serve = vec!["serve", "--bind", "127.0.0.1", "--port", &port];
    serve.extend(provision);
    assert_usage(&dir, &serve, "--provision-var 'bad'");
    let mut pre = vec![
        "preprocess",
        "--input",
        "none/*.mrc",
        "--output",
        "out",
        "--bind",
        "127.0.0.1",
        "--port",
        &port,
    ];
    pre.extend(provision);
    assert_usage(&dir, &pre, "--provision-var 'bad'");
    assert!(!dir.path().join("out").exists(), "nothing was written");
    drop(taken);
}

/// Issue 10: a missing token was a usage error under `serve` and a failure under
/// `preprocess --port`; it is a usage error everywhere.
#[test]
fn a_missing_token_is_a_usage_error_in_every_subcommand() {
    let dir = TempDir::new("cli-token");
    for args in [
        &["status", "--controller", "127.0.0.1:1"][..],
        &[
            "cancel",
            "00000000-0000-0000-0000-000000000000",
            "--controller",
            "127.0.0.1:1",
        ],
        &[
            "submit",
            "--controller",
            "127.0.0.1:1",
            "--exec",
            "--",
            "true",
        ],
        &["serve", "--bind", "127.0.0.1"],
        &[
            "preprocess",
            "--input",
            "x/*.mrc",
            "--output",
            "o",
            "--port",
            "0",
        ],
    ] {
        assert_usage(&dir, args, "token: pass");
    }
}

#[test]
fn every_subcommand_refuses_a_bad_flag_with_exit_2() {
    let dir = TempDir::new("cli-flags");
    for (args, wants) in [
        (&["serve", "--max-attempts", "x"][..], "--max-attempts"),
        (
            &["submit", "--priority", "high", "--exec", "--", "true"],
            "--priority",
        ),
        (&["status", "--bogus"], "bogus"),
        (&["workers", "extra"], "'extra'"),
        (&["tasks", "--state", "sleeping"], "--state"),
        (&["cancel", "not-an-id"], "not-an-id"),
        (
            &[
                "preprocess",
                "--input",
                "x/*.mrc",
                "--output",
                "o",
                "--window",
                "32",
            ],
            "--window must be 64 to 8192 px",
        ),
        (&["simulate", "--output", "s", "--size", "63"], "size 63"),
        (&["compare", "--truth", "t"], "--output"),
        (&["frobnicate"], "unknown subcommand"),
    ] {
        assert_usage(&dir, args, wants);
    }
    assert!(!dir.path().join("o").exists() && !dir.path().join("s").exists());
}

/// Issue 14: `submit --array` makes one task per index with `WARP_TASK_INDEX`, `--stdout`
/// keeps each task's whole output in its own file, and `wait -` reads the ids `submit`
/// printed, then summarises the failures and exits 1 when any task failed.
#[test]
fn array_submission_files_and_wait_with_a_failure_summary() {
    let dir = TempDir::new("cli-array");
    let c = warp_tests::ControllerProc::start(dir.path(), 0, &[]);
    let _w = warp_tests::start_worker(dir.path(), &c.url, &c.token, 0, &["-s"]);
    let ctl = |args: &[&str], stdin: Option<&[u8]>| {
        let mut cmd = Command::new(warp_tests::bin("warp-controller"));
        cmd.args(args)
            .env("WARP_CONTROLLER", &c.url)
            .env("WARP_ADMIN_TOKEN", &c.admin_token)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let input = stdin.map(<[u8]>::to_vec).unwrap_or_default();
        let mut pipe = child.stdin.take().unwrap();
        std::thread::spawn(move || std::io::Write::write_all(&mut pipe, &input));
        child.wait_with_output().unwrap()
    };
    let logs = dir.path().join("logs");
    let pattern = format!("{}/%{{INDEX}}.out", logs.display());
    let out = ctl(
        &[
            "submit",
            "--array",
            "1-4",
            "--stdout",
            &pattern,
            "--label",
            "sweep",
            "--exec",
            "--",
            "sh",
            "-c",
            "seq 1 $WARP_TASK_INDEX",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids = out.stdout.clone();
    assert_eq!(String::from_utf8_lossy(&ids).lines().count(), 4);
    let waited = ctl(&["wait", "-"], Some(&ids));
    let stderr = String::from_utf8_lossy(&waited.stderr);
    assert!(waited.status.success(), "{stderr}");
    assert!(
        stderr.contains("4 task(s)") && stderr.contains("4 completed"),
        "{stderr}"
    );
    for i in 1..=4 {
        let text = std::fs::read_to_string(logs.join(format!("{i}.out"))).unwrap();
        assert_eq!(text.lines().count(), i, "{i}: {text}");
    }
    // By label, with failures: odd indices exit 1.
    let out = ctl(
        &[
            "submit",
            "--array",
            "1-3",
            "--label",
            "odd",
            "--exec",
            "--",
            "sh",
            "-c",
            "echo index $WARP_TASK_INDEX >&2; exit $((WARP_TASK_INDEX % 2))",
        ],
        None,
    );
    assert!(out.status.success());
    let waited = ctl(&["wait", "--label", "odd"], None);
    let stderr = String::from_utf8_lossy(&waited.stderr);
    assert_eq!(waited.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("1 completed, 2 failed"), "{stderr}");
    assert!(stderr.contains("exited with status 1"), "{stderr}");
    assert!(stderr.contains("(odd)"), "{stderr}");
}

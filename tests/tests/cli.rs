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
        assert_usage(&dir, args, "no token");
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

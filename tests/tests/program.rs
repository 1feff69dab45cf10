//! The seed's test program, `test-controller-architecture`, in its basic, multi and stress modes.

use std::process::Command;

fn run(args: &[&str]) -> String {
    warp_tests::bin("warp-worker"); // built and current before the program spawns it
    let out = Command::new(env!("CARGO_BIN_EXE_test-controller-architecture"))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "test-controller-architecture {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn basic_mode_passes() {
    assert!(run(&[]).contains("basic: OK"));
}

#[test]
fn multi_mode_passes() {
    assert!(run(&["--multi"]).contains("multi: OK"));
}

#[test]
fn stress_with_random_worker_kills_loses_nothing() {
    let out = run(&[
        "--stress",
        "--tasks",
        "3000",
        "--workers",
        "4",
        "--kill-every",
        "0.3",
    ]);
    assert!(out.contains("stress: OK"), "{out}");
    let report: serde_json::Value =
        serde_json::from_str(&out[..out.rfind('}').unwrap() + 1]).unwrap();
    assert!(report["kills"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(
        report["completed"].as_u64().unwrap() + report["failed"].as_u64().unwrap(),
        3000
    );
}

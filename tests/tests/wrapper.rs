//! The drop-in wrapper and the direct-mode wrapper, with real worker processes.

use std::time::Duration;

use serde_json::json;
use warp_common::commands::Command;
use warp_common::protocol::InitPart;
use warp_controller::wrapper::{
    ControllerBasedWorkerWrapper, DirectWorkerWrapper, WorkerCommands, WrapperError, WrapperEvent,
    WrapperOptions,
};
use warp_tests::{pid_alive, wait_for};

fn options() -> WrapperOptions {
    WrapperOptions {
        heartbeat_timeout: Duration::from_millis(600),
        poll_hold: Duration::from_secs(2),
        silent_workers: true,
        stop_grace: Duration::from_secs(3),
        command_timeout: Some(Duration::from_secs(30)),
        ..WrapperOptions::default()
    }
}

#[test]
fn wrapper_runs_commands_on_chosen_workers_and_leaves_no_orphans() {
    warp_tests::bin("warp-worker");
    let pids;
    {
        let mut w = ControllerBasedWorkerWrapper::with_options(options());
        let port = w.start_controller(0).unwrap();
        assert_ne!(port, 0);
        let a = w.add_worker(0).unwrap();
        let b = w.add_worker(1).unwrap();
        assert_eq!(w.get_active_workers().unwrap().len(), 2);
        assert_eq!(w.on(a).echo(json!("to a")).unwrap(), json!("to a"));
        let r = w.on(b).exec(&["sh", "-c", "echo $0", "x"]).unwrap();
        assert_eq!(r.stdout_tail, "x\n");
        assert_eq!(w.any().echo(json!(5)).unwrap(), json!(5));
        w.device(1).wait_async_tasks().unwrap();
        w.on(a).gc_collect().unwrap();
        // Worker errors come back as errors, naming the command.
        let err = w
            .on(a)
            .execute(vec![Command::Fail {
                message: "bad gain file".into(),
            }])
            .unwrap_err();
        assert!(
            matches!(&err, WrapperError::TaskFailed { error, .. } if error.contains("bad gain file")),
            "{err}"
        );
        // The init part runs once per worker holding its state.
        let init = || {
            Some(InitPart {
                fingerprint: "gain-1".into(),
                commands: vec![Command::Sleep { ms: 1 }],
            })
        };
        assert!(
            w.on(a)
                .execute_with_init(init(), vec![Command::Echo { value: json!(1) }])
                .unwrap()
                .init_ran
        );
        assert!(
            !w.on(a)
                .execute_with_init(init(), vec![Command::Echo { value: json!(2) }])
                .unwrap()
                .init_ran
        );
        assert_eq!(w.get_queue_length().unwrap(), 0);
        assert_eq!(w.get_controller_status().unwrap().tasks.completed, 7);
        assert_eq!(w.get_controller_status().unwrap().tasks.failed, 1);
        pids = w.worker_pids();
        assert_eq!(pids.len(), 2);
        assert!(pids.values().all(|p| pid_alive(*p)));
    }
    // Dropped: the workers are gone (reaped, not zombies).
    for pid in pids.values() {
        assert!(!pid_alive(*pid), "worker {pid} outlived the wrapper");
    }
}

#[test]
fn wrapper_reports_a_dead_worker() {
    warp_tests::bin("warp-worker");
    let mut w = ControllerBasedWorkerWrapper::with_options(options());
    w.start_controller(0).unwrap();
    let events = w.worker_events();
    let a = w.add_worker(0).unwrap();
    let pid = w.worker_pids()[&a];
    // SAFETY: kill(2) on a worker process the wrapper spawned.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
    let mut died = false;
    let mut lost = false;
    wait_for(
        Duration::from_secs(10),
        "death and loss notifications",
        || {
            match events.recv_timeout(Duration::from_millis(100)) {
                Ok(WrapperEvent::WorkerDied { worker, .. }) if worker == a => died = true,
                Ok(WrapperEvent::WorkerLost { worker, .. }) if worker == a => lost = true,
                _ => {}
            }
            (died && lost).then_some(())
        },
    );
}

#[test]
fn direct_mode_runs_the_same_commands_and_exits_with_its_parent() {
    warp_tests::bin("warp-worker");
    let pid;
    {
        let d = DirectWorkerWrapper::spawn(0, true).unwrap();
        pid = d.pid().unwrap();
        assert!(d.port() > 0);
        assert_eq!(d.echo(json!({"k": 1})).unwrap(), json!({"k": 1}));
        assert_eq!(d.exec(&["echo", "direct"]).unwrap().stdout_tail, "direct\n");
        d.wait_async_tasks().unwrap();
        d.gc_collect().unwrap();
        let err = d
            .execute(vec![Command::Fail {
                message: "nope".into(),
            }])
            .unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        assert!(d.death().try_recv().is_err(), "alive while pulsed");
    }
    assert!(!pid_alive(pid));
}

/// A worker whose spawning process dies without stopping it (SIGKILL, crash) stops by itself.
#[test]
fn worker_stops_when_its_spawning_process_dies() {
    let worker = warp_tests::bin("warp-worker");
    let dir = warp_tests::TempDir::new("orphan");
    let c = warp_tests::ControllerProc::start(dir.path(), 0, &[]);
    // sh plays the spawning program: it starts the worker in the background, prints its pid and
    // exits, re-parenting the worker.
    let script = format!(
        "WARP_PARENT_PID=$$ {} -s -d 0 --controller {} & echo $!; sleep 0.5",
        worker.display(),
        c.url
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .env("WARP_TOKEN", &c.token)
        .output()
        .unwrap();
    let pid: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("worker pid");
    wait_for(
        Duration::from_secs(10),
        "the orphaned worker to stop",
        || warp_tests::pid_exited(pid).then_some(()),
    );
}

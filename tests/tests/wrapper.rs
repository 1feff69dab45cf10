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

/// A 512² × 8 synthetic movie `movie.mrc` and the same movie divided by a gain reference
/// (`raw.mrc` + `gain.mrc`), so that gain correction must give back the first one.
fn write_movies(dir: &std::path::Path) {
    use warp_kernels::ctf::Ctf;
    use warp_kernels::io::mrc::{WriteMode, write_mrc};
    use warp_kernels::sim::{SimParams, SplitMix64, simulate};
    let (nx, ny, nf) = (512, 512, 8);
    let movie = simulate(&SimParams {
        nx,
        ny,
        frames: nf,
        pixel_size_a: 1.0,
        dose_per_px_per_frame: 6.0,
        ctf: Ctf {
            voltage_kv: 300.0,
            cs_mm: 2.7,
            amplitude_contrast: 0.07,
            pixel_size_a: 1.0,
            defocus_u_um: 1.6,
            defocus_v_um: 1.4,
            astig_angle_deg: 30.0,
            phase_shift_pi: 0.0,
        },
        seed: 3,
        max_shift_px: 4.0,
        path: warp_kernels::sim::SimPath::Smooth,
    });
    let flat: Vec<f32> = movie.frames.iter().flatten().copied().collect();
    write_mrc(
        dir.join("movie.mrc"),
        &flat,
        nx,
        ny,
        nf,
        WriteMode::Float32,
        1.0,
    )
    .unwrap();
    // Gain in [0.5, 1.5] with mean 1 (as normalised), the raw movie divided by it.
    let mut rng = SplitMix64::new(9);
    let mut gain: Vec<f32> = (0..nx * ny).map(|_| 0.5 + rng.uniform() as f32).collect();
    let mean = gain.iter().map(|&g| g as f64).sum::<f64>() / gain.len() as f64;
    for g in &mut gain {
        *g /= mean as f32;
    }
    let raw: Vec<f32> = flat
        .iter()
        .enumerate()
        .map(|(i, v)| v / gain[i % (nx * ny)])
        .collect();
    write_mrc(
        dir.join("raw.mrc"),
        &raw,
        nx,
        ny,
        nf,
        WriteMode::Float32,
        1.0,
    )
    .unwrap();
    write_mrc(
        dir.join("gain.mrc"),
        &gain,
        nx,
        ny,
        1,
        WriteMode::Float32,
        1.0,
    )
    .unwrap();
}

/// The preprocessing calls through both wrappers: the same results from a pull worker and a
/// direct-mode worker, gain correction undoing a known gain, and errors that name the missing
/// step or file without taking the worker down.
#[test]
fn preprocessing_calls_through_both_wrappers() {
    use warp_common::preprocessing::*;
    let tmp = warp_tests::TempDir::new("wrapper-pre");
    let dir = tmp.path();
    write_movies(dir);
    let p = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let stack = |name: &str| LoadStackParams {
        path: p(name),
        scale_factor: 1.0,
        eer_group_frames: 0,
        eer_upsample: 1,
        correct_gain: true,
        angpix: None,
    };
    let ctf = CtfParams {
        window: 256,
        ..CtfParams::default()
    };

    let mut w = ControllerBasedWorkerWrapper::with_options(options());
    w.start_controller(0).unwrap();
    let a = w.add_worker(0).unwrap();
    let worker = w.on(a);

    // Before LoadStack: an error naming the missing step; the worker stays up.
    let err = worker
        .movie_process_ctf(ctf.clone())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("run LoadStack before MovieProcessCTF"),
        "{err}"
    );
    let err = worker
        .load_stack(stack("missing.mrc"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.mrc"), "{err}");

    let loaded = worker.load_stack(stack("movie.mrc")).unwrap();
    assert_eq!((loaded.frames, loaded.width, loaded.angpix), (8, 512, 1.0));
    assert!(!loaded.gain_corrected);
    let motion = worker
        .movie_process_movement(MovementParams::default())
        .unwrap();
    assert_eq!(motion.shifts_px.len(), 8);
    let fit = worker.movie_process_ctf(ctf.clone()).unwrap();
    assert!(fit.aligned);
    let out = p("avg.mrc");
    let export = worker
        .movie_export_movie(ExportParams {
            output_path: out.clone(),
            dose_per_frame: 2.0,
            voltage_kv: 300.0,
            float16: true,
            odd_even: false,
        })
        .unwrap();
    assert_eq!(export.written, vec![out.clone()]);
    let (h, _) = warp_kernels::io::mrc::read_mrc(&out).unwrap();
    assert_eq!((h.nx, h.ny, h.mode.code()), (512, 512, 12));
    let thumb = worker
        .movie_create_thumbnail(ThumbnailParams {
            output_path: p("t.png"),
            size: 100,
            range: 2.5,
        })
        .unwrap();
    assert_eq!((thumb.width, thumb.height), (100, 100));
    // A single micrograph (the average just written) is a one-frame movie: no motion, same CTF.
    let mic = worker
        .load_stack(LoadStackParams {
            path: out.clone(),
            ..stack("movie.mrc")
        })
        .unwrap();
    assert_eq!(mic.frames, 1);
    let mic_motion = worker
        .movie_process_movement(MovementParams::default())
        .unwrap();
    assert_eq!(mic_motion.shifts_px, vec![[0.0, 0.0]]);
    let mic_fit = worker.movie_process_ctf(ctf.clone()).unwrap();
    // Both fits find the simulated mean defocus (1.5 µm).
    for f in [&fit, &mic_fit] {
        let mean = f.defocus.mean_um();
        assert!((mean - 1.5).abs() < 0.05, "{f:?}");
    }

    // The gained raw movie, corrected, gives the same motion.
    worker
        .load_gain_ref(LoadGainRefParams {
            path: p("gain.mrc"),
            flip_x: false,
            flip_y: false,
            transpose: false,
            defects_path: None,
        })
        .unwrap();
    let corrected = worker.load_stack(stack("raw.mrc")).unwrap();
    assert!(corrected.gain_corrected);
    let motion_raw = worker
        .movie_process_movement(MovementParams::default())
        .unwrap();
    for (s, t) in motion_raw.shifts_px.iter().zip(&motion.shifts_px) {
        assert!(
            (s[0] - t[0]).abs() < 1e-3 && (s[1] - t[1]).abs() < 1e-3,
            "{s:?} vs {t:?}"
        );
    }
    // Without correction the gain's fixed pattern (the same in every frame) correlates at zero
    // shift and pulls the estimate away from the true motion.
    let uncorrected = worker
        .load_stack(LoadStackParams {
            correct_gain: false,
            ..stack("raw.mrc")
        })
        .unwrap();
    assert!(!uncorrected.gain_corrected);
    let motion_bad = worker
        .movie_process_movement(MovementParams::default())
        .unwrap();
    let worst = motion_bad
        .shifts_px
        .iter()
        .zip(&motion.shifts_px)
        .map(|(s, t)| (s[0] - t[0]).hypot(s[1] - t[1]))
        .fold(0.0f32, f32::max);
    eprintln!("uncorrected gain: worst shift difference {worst} px");
    assert!(worst > 0.1, "{worst}");

    // The same sequence in direct mode gives the same numbers.
    let d = DirectWorkerWrapper::spawn(0, true).unwrap();
    d.load_stack(stack("movie.mrc")).unwrap();
    let motion_d = d.movie_process_movement(MovementParams::default()).unwrap();
    let fit_d = d.movie_process_ctf(ctf).unwrap();
    assert_eq!(motion_d.shifts_px, motion.shifts_px);
    assert_eq!(fit_d.defocus, fit.defocus);
    let err = d
        .load_stack(LoadStackParams {
            scale_factor: 0.0,
            ..stack("movie.mrc")
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("scale_factor"), "{err}");
}

/// Issue 10: a call that timed out left its task running, so the next call to that worker
/// queued behind it and a retry ran the command twice. The timeout now cancels the task.
#[test]
fn wrapper_call_that_times_out_cancels_its_task() {
    warp_tests::bin("warp-worker");
    let mut w = ControllerBasedWorkerWrapper::with_options(WrapperOptions {
        command_timeout: Some(Duration::from_millis(500)),
        ..options()
    });
    w.start_controller(0).unwrap();
    let a = w.add_worker(0).unwrap();
    let start = std::time::Instant::now();
    let err = w.on(a).sleep(20_000).unwrap_err();
    let WrapperError::Timeout(task) = err else {
        panic!("expected a timeout, got {err}");
    };
    let state = w.controller().unwrap().task(task).unwrap().state;
    assert_eq!(state, warp_common::protocol::TaskState::Cancelled);
    // The worker is free again: the next call does not wait for the 20 s sleep.
    assert_eq!(w.on(a).echo(json!("next")).unwrap(), json!("next"));
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(w.get_controller_status().unwrap().tasks.cancelled, 1);
}

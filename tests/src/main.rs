//! `test-controller-architecture`: the seed's test program for the controller architecture.
//!
//! ```text
//! test-controller-architecture            basic: one worker, each command once
//! test-controller-architecture --multi    four workers, a batch of tasks
//! test-controller-architecture --stress   many workers, tens of thousands of tasks, random kills
//! test-controller-architecture --stress --kill-controller-every S   the same against a
//!                                             `serve --state-dir` killed every ~S seconds
//! test-controller-architecture --bench    controller vs direct mode: throughput and latency (JSON)
//! test-controller-architecture --bench-parked N   controller memory with N parked long-polls
//! test-controller-architecture --bench-memory N   controller RSS with N queued, then N
//!                                             finished tasks, and the time of one batch
//! test-controller-architecture --bench-restart N   restart time of a state directory with N
//!                                             finished tasks (journal, snapshot), bytes per task
//! test-controller-architecture --bench-exec   /bin/true through the controller vs the raw
//!                                             spawn limit, latency, controller memory (JSON)
//! ```
//!
//! Exit code 0 when every check passed, 1 when one failed (the message says which), 2 on usage.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use warp_common::commands::Command;
use warp_common::protocol::{AttemptOutcome, TaskSpec, TaskState};
use warp_controller::wrapper::{
    ControllerBasedWorkerWrapper, DirectWorkerWrapper, WorkerCommands, WrapperOptions,
};
use warp_tests::{ControllerProc, TempDir, percentile, rss_kib};

mod chaos;

type Check = Result<(), String>;

fn ensure(ok: bool, msg: impl FnOnce() -> String) -> Check {
    if ok { Ok(()) } else { Err(msg()) }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut o = getopts::Options::new();
    o.optflag("h", "help", "print this help");
    o.optflag("", "multi", "four workers, a batch of tasks");
    o.optflag(
        "",
        "stress",
        "many workers, many tasks, random worker kills",
    );
    o.optflag(
        "",
        "bench",
        "controller vs direct mode throughput and latency, as JSON",
    );
    o.optopt(
        "",
        "bench-parked",
        "controller memory with N parked long-polls, as JSON",
        "N",
    );
    o.optopt(
        "",
        "bench-memory",
        "controller memory with N queued and N finished tasks, as JSON",
        "N",
    );
    o.optopt(
        "",
        "bench-restart",
        "N tasks through a controller with a state directory, then the time it takes to serve \
         again from the journal and from a snapshot, and the bytes per task, as JSON",
        "N",
    );
    o.optopt(
        "",
        "keep-finished",
        "--bench-memory: the controller's --keep-finished (default 100000)",
        "N",
    );
    o.optflag(
        "",
        "bench-exec",
        "Exec of /bin/true through a controller vs the raw spawn limit, as JSON",
    );
    o.optopt(
        "",
        "workers",
        "workers for --stress/--bench (default 8)",
        "N",
    );
    o.optopt(
        "",
        "tasks",
        "tasks for --stress (default 20000) / --bench (default 20000)",
        "N",
    );
    o.optopt(
        "",
        "kill-every",
        "--stress: seconds between random worker kills (default 0.5)",
        "S",
    );
    o.optopt(
        "",
        "kill-controller-every",
        "--stress: SIGKILL and restart a `serve --state-dir` controller about every S seconds",
        "S",
    );
    o.optopt(
        "",
        "failpoint",
        "--kill-controller-every: probability per journal sync of a crash between write and \
         sync (needs a controller built with --features failpoints, see WARP_CONTROLLER_BIN)",
        "P",
    );
    o.optopt(
        "",
        "samples",
        "--bench: latency samples per mode (default 1000)",
        "N",
    );
    let m = match o.parse(&args) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("test-controller-architecture: {e}; see --help");
            return ExitCode::from(2);
        }
    };
    if m.opt_present("help") {
        println!("{}", o.usage("Usage: test-controller-architecture [--multi|--stress|--bench|--bench-parked N] [options]"));
        return ExitCode::SUCCESS;
    }
    let num = |name: &str, default: usize| -> usize {
        m.opt_str(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let result = if m.opt_present("multi") {
        multi()
    } else if m.opt_present("stress") {
        let every = m
            .opt_str("kill-every")
            .and_then(|v| warp_common::parse_seconds(&v).ok())
            .unwrap_or(Duration::from_millis(500));
        match m
            .opt_str("kill-controller-every")
            .and_then(|v| warp_common::parse_seconds(&v).ok())
        {
            Some(c) => chaos::run(&chaos::Chaos {
                workers: num("workers", 4),
                tasks: num("tasks", 2_000),
                kill_worker_every: every,
                kill_controller_every: c,
                failpoint: m
                    .opt_str("failpoint")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0),
            }),
            None => stress(num("workers", 8), num("tasks", 20_000), every),
        }
    } else if m.opt_present("bench") {
        bench(
            num("workers", 8),
            num("tasks", 20_000),
            num("samples", 1000),
        )
    } else if m.opt_present("bench-memory") {
        bench_memory(
            num("bench-memory", 100_000),
            num("keep-finished", 100_000),
            num("workers", 2),
        )
    } else if m.opt_present("bench-restart") {
        bench_restart(num("bench-restart", 100_000), num("workers", 2))
    } else if m.opt_present("bench-exec") {
        bench_exec(num("workers", 2), num("tasks", 10_000), num("samples", 200))
    } else if m.opt_present("bench-parked") {
        bench_parked(num("bench-parked", 1000))
    } else {
        basic()
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("test-controller-architecture: FAILED: {e}");
            ExitCode::from(1)
        }
    }
}

fn wrapper(heartbeat_timeout: Duration) -> ControllerBasedWorkerWrapper {
    ControllerBasedWorkerWrapper::with_options(WrapperOptions {
        heartbeat_timeout,
        silent_workers: true,
        command_timeout: Some(Duration::from_secs(60)),
        ..WrapperOptions::default()
    })
}

fn basic() -> Check {
    let mut w = wrapper(Duration::from_secs(10));
    let port = w.start_controller(0).map_err(|e| e.to_string())?;
    let worker = w.add_worker(0).map_err(|e| e.to_string())?;
    println!("controller on port {port}, worker {worker} registered");
    let on = w.on(worker);
    ensure(
        on.echo(json!("ping")).map_err(|e| e.to_string())? == json!("ping"),
        || "echo".into(),
    )?;
    let r = on
        .exec(&["echo", "exec works"])
        .map_err(|e| e.to_string())?;
    ensure(r.stdout_tail == "exec works\n", || {
        format!("exec stdout {:?}", r.stdout_tail)
    })?;
    on.sleep(10).map_err(|e| e.to_string())?;
    on.wait_async_tasks().map_err(|e| e.to_string())?;
    on.gc_collect().map_err(|e| e.to_string())?;
    ensure(
        on.execute(vec![Command::Fail {
            message: "expected".into(),
        }])
        .is_err(),
        || "Fail succeeded".into(),
    )?;
    println!("basic: OK (echo, exec, sleep, wait_async_tasks, gc_collect, fail)");
    Ok(())
}

fn multi() -> Check {
    let mut w = wrapper(Duration::from_secs(10));
    w.start_controller(0).map_err(|e| e.to_string())?;
    for d in 0..4 {
        w.add_worker(d).map_err(|e| e.to_string())?;
    }
    let c = w.controller().map_err(|e| e.to_string())?;
    let n = 400;
    let specs = (0..n)
        .map(|i| {
            TaskSpec::new(vec![
                Command::Sleep { ms: 2 },
                Command::Echo { value: json!(i) },
            ])
        })
        .collect();
    let t = Instant::now();
    let ids = c.submit_batch(specs).map_err(|e| e.to_string())?;
    let done = wait_all_terminal(c, ids.len(), Duration::from_secs(120))?;
    let mut per_worker: HashMap<uuid::Uuid, usize> = HashMap::new();
    for (i, id) in ids.iter().enumerate() {
        let d = &done[id];
        ensure(d.state == TaskState::Completed, || {
            format!("task {i} {:?}", d.state)
        })?;
        ensure(
            d.result.as_ref().map(|r| &r["results"][1]["value"]) == Some(&json!(i)),
            || format!("task {i} result"),
        )?;
        *per_worker
            .entry(d.worker_id.unwrap_or_default())
            .or_default() += 1;
    }
    println!(
        "multi: OK, {n} tasks over 4 workers in {:.2} s, per worker {:?}",
        t.elapsed().as_secs_f64(),
        per_worker.values().collect::<Vec<_>>()
    );
    Ok(())
}

/// Waits until `n` tasks are terminal; returns all details by id.
fn wait_all_terminal(
    c: &warp_controller::Controller,
    n: usize,
    timeout: Duration,
) -> Result<HashMap<uuid::Uuid, warp_common::protocol::TaskDetail>, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = c.status();
        let terminal = (s.tasks.completed + s.tasks.failed + s.tasks.cancelled) as usize;
        if terminal >= n {
            return Ok(c.tasks().into_iter().map(|d| (d.id, d)).collect());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {terminal} of {n} tasks terminal after {:.0} s: {s:?}",
                timeout.as_secs_f64()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stress(workers: usize, tasks: usize, kill_every: Duration) -> Check {
    let mut w = wrapper(Duration::from_millis(500));
    w.start_controller(0).map_err(|e| e.to_string())?;
    for d in 0..workers {
        w.add_worker(d as i32).map_err(|e| e.to_string())?;
    }
    let c = w.controller().map_err(|e| e.to_string())?;
    // Mostly no-op echoes, some short sleeps so kills land mid-task.
    let specs = (0..tasks)
        .map(|i| {
            let mut cmds = vec![Command::Echo { value: json!(i) }];
            if i % 50 == 0 {
                cmds.insert(0, Command::Sleep { ms: 20 });
            }
            let mut s = TaskSpec::new(cmds);
            s.max_attempts = Some(10);
            s
        })
        .collect();
    let t0 = Instant::now();
    let ids = c.submit_batch(specs).map_err(|e| e.to_string())?;
    let mut kills = 0;
    let mut rng = std::process::id() as u64 | 1;
    let mut last_kill = Instant::now();
    loop {
        let s = c.status();
        if (s.tasks.completed + s.tasks.failed + s.tasks.cancelled) as usize >= tasks {
            break;
        }
        ensure(t0.elapsed() < Duration::from_secs(600), || {
            format!("stress did not finish: {s:?}")
        })?;
        if last_kill.elapsed() >= kill_every {
            last_kill = Instant::now();
            let pids = w.worker_pids();
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            if let Some((victim, pid)) = pids.iter().nth(rng as usize % pids.len().max(1)) {
                // SAFETY: kill(2) on a worker process the wrapper spawned.
                unsafe {
                    libc::kill(*pid as libc::pid_t, libc::SIGKILL);
                }
                kills += 1;
                let _ = victim;
                w.add_worker((kills % workers) as i32)
                    .map_err(|e| e.to_string())?;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let elapsed = t0.elapsed();
    c.sanity_check()?;
    let done: HashMap<_, _> = c.tasks().into_iter().map(|d| (d.id, d)).collect();
    let mut service_ms = Vec::new();
    let (mut completed, mut reassigned) = (0, 0);
    for (i, id) in ids.iter().enumerate() {
        let d = done.get(id).ok_or_else(|| format!("task {i} lost"))?;
        ensure(d.state.is_terminal(), || {
            format!("task {i} ended {:?}", d.state)
        })?;
        let completions = d
            .history
            .iter()
            .filter(|a| a.outcome == AttemptOutcome::Completed)
            .count();
        if d.state == TaskState::Completed {
            completed += 1;
            ensure(completions == 1, || {
                format!("task {i} recorded {completions} completions")
            })?;
            let v = d.result.as_ref().map(|r| {
                r["results"]
                    .as_array()
                    .and_then(|a| a.last())
                    .map(|x| x["value"].clone())
            });
            ensure(v == Some(Some(json!(i))), || {
                format!("task {i} has another task's result: {v:?}")
            })?;
            let last = d.history.last().expect("history");
            service_ms.push(
                last.finished_unix_ms
                    .unwrap_or(0)
                    .saturating_sub(last.assigned_unix_ms) as f64,
            );
        } else {
            ensure(completions == 0, || {
                format!("task {i} is {:?} but has a completed attempt", d.state)
            })?;
        }
        if d.history.len() > 1 {
            reassigned += 1;
        }
    }
    ensure(done.len() == tasks, || {
        format!("{} tasks known, {tasks} submitted", done.len())
    })?;
    service_ms.sort_by(f64::total_cmp);
    let report = json!({
        "tasks": tasks, "workers": workers, "kills": kills, "completed": completed,
        "failed": tasks - completed, "reassigned": reassigned,
        "stale_reports_refused": c.status().stale_reports_refused,
        "elapsed_s": elapsed.as_secs_f64(), "tasks_per_s": tasks as f64 / elapsed.as_secs_f64(),
        "service_latency_p50_ms": percentile(&service_ms, 50.0), "service_latency_p99_ms": percentile(&service_ms, 99.0),
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
    println!(
        "stress: OK, every task reached exactly one terminal state, no result lost or recorded twice"
    );
    Ok(())
}

/// Throughput of `tasks` echo tasks on `workers` workers, and idle submit-to-result latency
/// (p50, p99 in ms), through an embedded controller (with a state directory: journalled).
fn controller_mode(
    workers: usize,
    tasks: usize,
    samples: usize,
    state_dir: Option<std::path::PathBuf>,
) -> Result<(f64, (f64, f64)), String> {
    let gap = Duration::from_millis(2);
    let mut w = ControllerBasedWorkerWrapper::with_options(WrapperOptions {
        heartbeat_timeout: Duration::from_secs(30),
        silent_workers: true,
        command_timeout: Some(Duration::from_secs(60)),
        state_dir,
        ..WrapperOptions::default()
    });
    w.start_controller(0).map_err(|e| e.to_string())?;
    let ids: Vec<_> = (0..workers)
        .map(|d| w.add_worker(d as i32))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let c = w.controller().map_err(|e| e.to_string())?;
    let echo = || TaskSpec::new(vec![Command::Echo { value: Value::Null }]);
    // Warm up connections, then the throughput batch.
    c.submit_batch((0..workers * 20).map(|_| echo()).collect())
        .map_err(|e| e.to_string())?;
    wait_all_terminal(c, workers * 20, Duration::from_secs(60))?;
    let t = Instant::now();
    c.submit_batch((0..tasks).map(|_| echo()).collect())
        .map_err(|e| e.to_string())?;
    wait_all_terminal(c, workers * 20 + tasks, Duration::from_secs(600))?;
    let tps = tasks as f64 / t.elapsed().as_secs_f64();
    // Idle dispatch latency: one task at a time to one parked worker, submit to result.
    let mut lat = Vec::with_capacity(samples);
    for i in 0..samples + 100 {
        std::thread::sleep(gap);
        let mut spec = echo();
        spec.target = warp_common::protocol::Target::Worker(ids[0]);
        let t = Instant::now();
        let (_, rx) = c.submit_watch(spec).map_err(|e| e.to_string())?;
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(|_| "latency task timed out".to_string())?;
        if i >= 100 {
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    lat.sort_by(f64::total_cmp);
    Ok((tps, (percentile(&lat, 50.0), percentile(&lat, 99.0))))
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Restart cost of a state directory holding `tasks` finished tasks: from the journal alone,
/// then from a snapshot.
fn bench_restart(tasks: usize, workers: usize) -> Check {
    let tmp = TempDir::new("bench-restart");
    let state = tmp.path().join("state");
    let t_run = Instant::now();
    {
        let mut w = ControllerBasedWorkerWrapper::with_options(WrapperOptions {
            silent_workers: true,
            state_dir: Some(state.clone()),
            ..WrapperOptions::default()
        });
        w.start_controller(0).map_err(|e| e.to_string())?;
        for d in 0..workers {
            w.add_worker(d as i32).map_err(|e| e.to_string())?;
        }
        let c = w.controller().map_err(|e| e.to_string())?;
        let specs = (0..tasks)
            .map(|i| TaskSpec::new(vec![Command::Echo { value: json!(i) }]))
            .collect();
        c.submit_batch(specs).map_err(|e| e.to_string())?;
        wait_all_terminal(c, tasks, Duration::from_secs(1800))?;
    }
    let run_s = t_run.elapsed().as_secs_f64();
    let journal_bytes = dir_bytes(&state);
    let start = || {
        let mut cfg = warp_controller::ControllerConfig::new("bench".into());
        cfg.bind = "127.0.0.1".into();
        cfg.state_dir = Some(state.clone());
        let t = Instant::now();
        let c = warp_controller::Controller::start(cfg)?;
        Ok::<_, String>((t.elapsed().as_secs_f64(), c))
    };
    let (from_journal_s, c) = start()?;
    let replayed = c.recovery().map(|r| r.events).unwrap_or(0);
    ensure(c.status().tasks.completed as usize == tasks, || {
        format!("after the restart: {:?}", c.status().tasks)
    })?;
    let t = Instant::now();
    c.snapshot()?;
    let snapshot_write_s = t.elapsed().as_secs_f64();
    drop(c);
    let snapshot_bytes = dir_bytes(&state);
    let (from_snapshot_s, c) = start()?;
    ensure(c.status().tasks.completed as usize == tasks, || {
        format!("after the second restart: {:?}", c.status().tasks)
    })?;
    let report = json!({
        "tasks": tasks, "workers": workers, "run_s": run_s,
        "journal_bytes": journal_bytes, "journal_bytes_per_task": journal_bytes as f64 / tasks as f64,
        "events_replayed": replayed, "restart_from_journal_s": from_journal_s,
        "snapshot_write_s": snapshot_write_s,
        "state_dir_bytes_after_snapshot": snapshot_bytes,
        "snapshot_bytes_per_task": snapshot_bytes as f64 / tasks as f64,
        "restart_from_snapshot_s": from_snapshot_s,
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
    Ok(())
}

fn bench(workers: usize, tasks: usize, samples: usize) -> Check {
    let gap = Duration::from_millis(2);
    let (controller_tps, (c50, c99)) = controller_mode(workers, tasks, samples, None)?;
    // The same with every change journalled and synced before it is acknowledged.
    let state = TempDir::new("bench-state");
    let (journal_tps, (j50, j99)) =
        controller_mode(workers, tasks, samples, Some(state.path().join("state")))?;
    let journal_bytes = dir_bytes(&state.path().join("state"));
    // Direct mode: one client thread per worker, each sending its share of echo commands.
    let (direct_tps, (d50, d99)) = {
        let direct: Vec<DirectWorkerWrapper> = (0..workers)
            .map(|d| DirectWorkerWrapper::spawn(d as i32, true))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        for d in &direct {
            for _ in 0..20 {
                d.echo(Value::Null).map_err(|e| e.to_string())?;
            }
        }
        let per = tasks / workers;
        let barrier = Arc::new(Barrier::new(workers + 1));
        let failed = Arc::new(AtomicBool::new(false));
        let t = std::thread::scope(|s| {
            for d in &direct {
                let (b, f) = (Arc::clone(&barrier), Arc::clone(&failed));
                s.spawn(move || {
                    b.wait();
                    for _ in 0..per {
                        if d.echo(Value::Null).is_err() {
                            f.store(true, Ordering::Relaxed);
                        }
                    }
                });
            }
            barrier.wait();
            Instant::now()
        });
        let tps = (per * workers) as f64 / t.elapsed().as_secs_f64();
        ensure(!failed.load(Ordering::Relaxed), || {
            "a direct-mode call failed".into()
        })?;
        let mut lat = Vec::with_capacity(samples);
        for i in 0..samples + 100 {
            std::thread::sleep(gap);
            let t = Instant::now();
            direct[0].echo(Value::Null).map_err(|e| e.to_string())?;
            if i >= 100 {
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        lat.sort_by(f64::total_cmp);
        (tps, (percentile(&lat, 50.0), percentile(&lat, 99.0)))
    };
    let report = json!({
        "workers": workers, "tasks": tasks, "latency_samples": samples,
        "controller_tasks_per_s": controller_tps.round(), "direct_tasks_per_s": direct_tps.round(),
        "controller_latency_p50_ms": c50, "controller_latency_p99_ms": c99,
        "state_dir_tasks_per_s": journal_tps.round(), "state_dir_latency_p50_ms": j50,
        "state_dir_latency_p99_ms": j99, "state_dir_throughput_ratio": journal_tps / controller_tps,
        "state_dir_latency_ratio_p50": j50 / c50,
        "state_dir_bytes_per_task": journal_bytes as f64 / (tasks + workers * 20 + samples + 100) as f64,
        "direct_latency_p50_ms": d50, "direct_latency_p99_ms": d99,
        "latency_ratio_p50": c50 / d50,
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
    Ok(())
}

/// `workers` threads spawning `/bin/true` back to back, `tasks` in all: the rate no task
/// runner on this machine can beat (tasks per second).
fn raw_spawn_rate(workers: usize, tasks: usize) -> Result<f64, String> {
    let per = tasks / workers;
    let t = Instant::now();
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(move || {
                    for _ in 0..per {
                        let st = std::process::Command::new("/bin/true")
                            .stdin(std::process::Stdio::null())
                            .stdout(std::process::Stdio::piped())
                            .stderr(std::process::Stdio::piped())
                            .status()
                            .map_err(|e| format!("cannot run /bin/true: {e}"))?;
                        if !st.success() {
                            return Err("/bin/true failed".to_string());
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        runs.into_iter()
            .try_for_each(|r| r.join().expect("spawn loop"))
    })?;
    Ok((per * workers) as f64 / t.elapsed().as_secs_f64())
}

/// Issue 16's memory numbers: a `serve` process's RSS idle, with `tasks` Echo tasks queued,
/// and after `workers` workers finished them (with `--keep-finished keep`); the wall time of
/// each `POST /api/tasks/batch` of 10,000 (an upper bound of the time it holds the lock).
fn bench_memory(tasks: usize, keep: usize, workers: usize) -> Check {
    let dir = TempDir::new("bench-memory");
    let keep_s = keep.to_string();
    let c = ControllerProc::start(dir.path(), 0, &["--keep-finished", &keep_s]);
    let client = c.client();
    let pid = c.proc.pid();
    let rss_idle = rss_kib(pid).unwrap_or(0);
    let echo = || TaskSpec::new(vec![Command::Echo { value: Value::Null }]);
    let mut batch_ms = Vec::new();
    let mut ids = Vec::with_capacity(tasks);
    let mut left = tasks;
    while left > 0 {
        let n = left.min(warp_controller::server::MAX_BATCH);
        let specs: Vec<_> = (0..n).map(|_| echo()).collect();
        let t = Instant::now();
        ids.extend(client.submit_batch(specs).map_err(|e| e.to_string())?);
        batch_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        left -= n;
    }
    let rss_queued = rss_kib(pid).unwrap_or(0);
    let _w: Vec<_> = (0..workers)
        .map(|d| warp_tests::start_worker(dir.path(), &c.url, &c.token, d as i32, &["-s"]))
        .collect();
    let t = Instant::now();
    loop {
        let s = client.status().map_err(|e| e.to_string())?;
        if s.tasks.completed as usize >= tasks {
            break;
        }
        ensure(t.elapsed() < Duration::from_secs(1200), || {
            format!("only {} of {tasks} done", s.tasks.completed)
        })?;
        std::thread::sleep(Duration::from_millis(200));
    }
    let rss_finished = rss_kib(pid).unwrap_or(0);
    batch_ms.sort_by(f64::total_cmp);
    let report = json!({
        "tasks": tasks, "keep_finished": keep, "workers": workers,
        "rss_idle_kib": rss_idle, "rss_queued_kib": rss_queued, "rss_finished_kib": rss_finished,
        "kib_per_100k_queued": ((rss_queued.saturating_sub(rss_idle)) as f64 * 100_000.0 / tasks as f64).round(),
        "batch_10k_ms_p50": percentile(&batch_ms, 50.0),
        "batch_10k_ms_max": batch_ms.last().copied().unwrap_or(0.0),
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
    Ok(())
}

/// `workers` shell loops running `/bin/true` back to back (fork and exec from `sh`, the
/// "plain loop" of a batch script), `tasks` in all, tasks per second.
fn shell_loop_rate(workers: usize, tasks: usize) -> Result<f64, String> {
    let per = tasks / workers;
    let script = format!("i=0; while [ $i -lt {per} ]; do /bin/true; i=$((i+1)); done");
    let t = Instant::now();
    let children: Vec<_> = (0..workers)
        .map(|_| {
            std::process::Command::new("sh")
                .args(["-c", &script])
                .spawn()
                .map_err(|e| format!("cannot run sh: {e}"))
        })
        .collect::<Result<_, _>>()?;
    for mut c in children {
        c.wait().map_err(|e| e.to_string())?;
    }
    Ok((per * workers) as f64 / t.elapsed().as_secs_f64())
}

/// Issue 14's benchmark: `tasks` Exec tasks of `/bin/true` submitted over HTTP in batches to
/// a `warp-controller serve` with `workers` CPU workers, against the raw spawn limit measured
/// before and after it in the same run; submit-to-done latency through the CLI
/// (`submit --wait`) and in process (the wrapper); the controller's RSS.
fn bench_exec(workers: usize, tasks: usize, samples: usize) -> Check {
    let dir = TempDir::new("bench-exec");
    let raw_before = raw_spawn_rate(workers, tasks)?;
    let shell_before = shell_loop_rate(workers, tasks)?;
    let c = ControllerProc::start(
        dir.path(),
        0,
        &["--poll-hold", "30", "--heartbeat-interval", "5"],
    );
    let rss_idle = rss_kib(c.proc.pid()).unwrap_or(0);
    let _workers: Vec<_> = (0..workers)
        .map(|d| {
            warp_tests::start_worker(
                dir.path(),
                &c.url,
                &c.token,
                d as i32,
                &["--backend", "cpu"],
            )
        })
        .collect();
    let client = c.client();
    warp_tests::wait_for(Duration::from_secs(30), "the workers to register", || {
        (client.workers(false).ok()?.len() == workers).then_some(())
    });
    let exec = || TaskSpec::new(vec![Command::exec(["/bin/true"])]);
    // Warm-up.
    let ids = client
        .submit_batch((0..workers * 20).map(|_| exec()).collect())
        .map_err(|e| e.to_string())?;
    for id in ids {
        client.wait(id, None).map_err(|e| e.to_string())?;
    }
    let cpu = |pid: u32| warp_tests::cpu_ms(pid).unwrap_or(0.0);
    let worker_cpu = |ws: &[warp_tests::Proc]| ws.iter().map(|w| cpu(w.pid())).sum::<f64>();
    let (c_cpu0, w_cpu0) = (cpu(c.proc.pid()), worker_cpu(&_workers));
    let t = Instant::now();
    let ids = client
        .submit_batch((0..tasks).map(|_| exec()).collect())
        .map_err(|e| e.to_string())?;
    // Waited for as `warp-controller wait` does: one many-task wait per 10,000 ids.
    let mut failed = 0;
    for chunk in ids.chunks(10_000) {
        let mut pending = chunk.to_vec();
        while !pending.is_empty() {
            let r = client
                .wait_many(&pending, Duration::from_secs(300))
                .map_err(|e| e.to_string())?;
            failed += r.unsuccessful.len() + r.forgotten.len();
            pending = r.pending;
        }
    }
    let controller_rate = tasks as f64 / t.elapsed().as_secs_f64();
    let controller_cpu_ms = (cpu(c.proc.pid()) - c_cpu0) / tasks as f64;
    let worker_cpu_ms = (worker_cpu(&_workers) - w_cpu0) / tasks as f64;
    ensure(failed == 0, || format!("{failed} of {tasks} tasks failed"))?;
    let rss_after = rss_kib(c.proc.pid()).unwrap_or(0);
    // Submit-to-done through the CLI, one task at a time.
    let mut cli = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        let out = std::process::Command::new(warp_tests::bin("warp-controller"))
            .args([
                "submit",
                "--controller",
                &c.url,
                "--wait",
                "--exec",
                "--",
                "/bin/true",
            ])
            .env("WARP_ADMIN_TOKEN", &c.admin_token)
            .output()
            .map_err(|e| e.to_string())?;
        cli.push(t.elapsed().as_secs_f64() * 1000.0);
        ensure(out.status.success(), || {
            format!(
                "submit --wait failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    }
    cli.sort_by(f64::total_cmp);
    drop(_workers);
    drop(c);
    let raw_after = raw_spawn_rate(workers, tasks)?;
    let shell_after = shell_loop_rate(workers, tasks)?;
    // In process: the wrapper's embedded controller and one worker.
    let mut inproc = Vec::with_capacity(samples);
    {
        let mut w = wrapper(Duration::from_secs(30));
        w.start_controller(0).map_err(|e| e.to_string())?;
        let id = w.add_worker(0).map_err(|e| e.to_string())?;
        for i in 0..samples + 20 {
            let t = Instant::now();
            w.on(id).exec(&["/bin/true"]).map_err(|e| e.to_string())?;
            if i >= 20 {
                inproc.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    inproc.sort_by(f64::total_cmp);
    let raw = 0.5 * (raw_before + raw_after);
    let shell = 0.5 * (shell_before + shell_after);
    let report = json!({
        "workers": workers, "tasks": tasks, "latency_samples": samples,
        "raw_spawn_per_s_before": raw_before.round(), "raw_spawn_per_s_after": raw_after.round(),
        "controller_tasks_per_s": controller_rate.round(),
        "ratio_to_raw": (controller_rate / raw * 1000.0).round() / 1000.0,
        "shell_loop_per_s_before": shell_before.round(), "shell_loop_per_s_after": shell_after.round(),
        "ratio_to_shell_loop": (controller_rate / shell * 1000.0).round() / 1000.0,
        "controller_cpu_ms_per_task": (controller_cpu_ms * 1000.0).round() / 1000.0,
        "worker_cpu_ms_per_task": (worker_cpu_ms * 1000.0).round() / 1000.0,
        "cli_submit_wait_p50_ms": percentile(&cli, 50.0),
        "cli_submit_wait_p90_ms": percentile(&cli, 90.0),
        "in_process_p50_ms": percentile(&inproc, 50.0),
        "in_process_p90_ms": percentile(&inproc, 90.0),
        "controller_rss_idle_kib": rss_idle,
        "controller_rss_after_kib": rss_after,
        "controller_kib_per_10k_finished": ((rss_after.saturating_sub(rss_idle)) as f64
            * 10_000.0 / (tasks + workers * 20) as f64).round(),
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
    Ok(())
}

fn bench_parked(n: usize) -> Check {
    let dir = TempDir::new("parked");
    let c = ControllerProc::start(
        dir.path(),
        0,
        &["--poll-hold", "120", "--heartbeat-timeout", "600", "-q"],
    );
    let client = c.client();
    std::thread::sleep(Duration::from_millis(300));
    let rss_idle = rss_kib(c.proc.pid()).ok_or("cannot read controller RSS")?;
    let agent = ureq::AgentBuilder::new()
        .try_proxy_from_env(false)
        .max_idle_connections(n + 10)
        .build();
    let reg = json!({"protocol_version": warp_common::PROTOCOL_VERSION, "device": 0, "hostname": "bench"});
    let mut workers = Vec::with_capacity(n);
    for _ in 0..n {
        let r: Value = agent
            .post(&format!("{}/api/workers/register", c.url))
            .set("Authorization", &format!("Bearer {}", c.token))
            .send_json(&reg)
            .map_err(|e| e.to_string())?
            .into_json()
            .map_err(|e| e.to_string())?;
        workers.push((
            r["worker_id"].as_str().unwrap_or_default().to_string(),
            r["token"].as_str().unwrap_or_default().to_string(),
        ));
    }
    let rss_registered = rss_kib(c.proc.pid()).ok_or("cannot read controller RSS")?;
    let pollers: Vec<_> = workers
        .into_iter()
        .map(|(id, token)| {
            let url = format!("{}/api/workers/{id}/poll", c.url);
            let agent = agent.clone();
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    agent
                        .get(&url)
                        .set("Authorization", &format!("Bearer {token}"))
                        .timeout(Duration::from_secs(150))
                        .call()
                        .map(|r| r.status())
                        .map_err(|e| e.to_string())
                })
                .expect("poller thread")
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let parked = client.status().map_err(|e| e.to_string())?.parked_polls as usize;
        if parked >= n {
            break;
        }
        ensure(Instant::now() < deadline, || {
            format!("only {parked} of {n} polls parked")
        })?;
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let rss_parked = rss_kib(c.proc.pid()).ok_or("cannot read controller RSS")?;
    let threads = std::fs::read_to_string(format!("/proc/{}/status", c.proc.pid()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Threads:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        });
    // Wake every poll by submitting one task per parked worker, so the threads end promptly.
    client
        .submit_batch(
            (0..n)
                .map(|_| TaskSpec::new(vec![Command::Sleep { ms: 0 }]))
                .collect(),
        )
        .map_err(|e| e.to_string())?;
    let answered = pollers
        .into_iter()
        .map(|h| h.join())
        .filter(|r| matches!(r, Ok(Ok(200))))
        .count();
    let report = json!({
        "parked_polls": n, "answered_on_submit": answered,
        "controller_rss_idle_kib": rss_idle, "controller_rss_registered_kib": rss_registered,
        "controller_rss_parked_kib": rss_parked,
        "per_parked_poll_kib": (rss_parked as f64 - rss_registered as f64) / n as f64,
        "controller_threads_while_parked": threads,
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
    ensure(answered == n, || {
        format!("only {answered} of {n} parked polls got their task")
    })
}

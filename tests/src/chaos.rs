//! `--stress --kill-controller-every S`: the controller (a real `warp-controller serve
//! --state-dir`) is SIGKILLed at random moments and restarted on the same port, while workers
//! are killed and replaced too. Every task must end in exactly one terminal state, a completed
//! one with exactly one completed attempt and its own result: nothing lost, nothing applied
//! twice. With a controller built with `--features failpoints` (`WARP_CONTROLLER_BIN`), some
//! of the crashes come from inside the journal, between a record's write and its sync.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;
use warp_common::commands::Command;
use warp_common::protocol::{AttemptOutcome, TaskSpec, TaskState};
use warp_tests::{ControllerProc, Proc, TempDir, percentile, start_worker};

/// Options of the chaos run.
pub struct Chaos {
    /// Worker processes kept running.
    pub workers: usize,
    /// Tasks submitted (before the kills start).
    pub tasks: usize,
    /// Time between worker kills.
    pub kill_worker_every: Duration,
    /// Mean time between controller kills (each gap drawn from 0.5..1.5 of it).
    pub kill_controller_every: Duration,
    /// Probability of the journal failpoint per sync (0: off).
    pub failpoint: f64,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const WORKER_FLAGS: &[&str] = &[
    "--backoff-base",
    "0.05",
    "--backoff-max",
    "0.2",
    "--reconnect-for",
    "600",
    "-s",
];

/// Runs the chaos test; prints a JSON report.
pub fn run(o: &Chaos) -> Result<(), String> {
    let dir = TempDir::new("chaos");
    let state = dir.path().join("state");
    let flags: Vec<String> = [
        "--heartbeat-timeout",
        "2",
        "--poll-hold",
        "1",
        "--heartbeat-interval",
        "0.2",
        "--state-dir",
        &state.display().to_string(),
        "-q",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    if o.failpoint > 0.0 {
        // SAFETY: set before any thread of this program is started; inherited by the
        // controllers spawned below.
        unsafe {
            std::env::set_var(
                "WARP_FAILPOINT",
                format!("journal-before-sync:{}", o.failpoint),
            );
        }
    }
    let mut c = ControllerProc::start(dir.path(), 0, &flags);
    let port = c.port;
    let mut rng = Rng(std::process::id() as u64 | 0x9e37_79b9_0000_0001);
    let mut workers: Vec<Proc> = (0..o.workers)
        .map(|d| start_worker(dir.path(), &c.url, &c.token, d as i32, WORKER_FLAGS))
        .collect();
    let specs: Vec<TaskSpec> = (0..o.tasks)
        .map(|i| {
            let mut cmds = vec![Command::Echo { value: json!(i) }];
            if i % 20 == 0 {
                cmds.insert(0, Command::Sleep { ms: 50 });
            }
            let mut s = TaskSpec::new(cmds);
            s.max_attempts = Some(50);
            s
        })
        .collect();
    // Submitted before the kills: a submit whose answer a kill swallowed would be sent again
    // and queue a second copy (the client cannot know it was durable).
    let ids = c
        .client()
        .submit_batch(specs)
        .map_err(|e| format!("submit: {e}"))?;
    let index: HashMap<uuid::Uuid, usize> =
        ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    let t0 = Instant::now();
    let (mut controller_kills, mut failpoint_exits, mut worker_kills) = (0u64, 0u64, 0u64);
    let mut restarts_ms = Vec::new();
    let gap = |rng: &mut Rng| o.kill_controller_every.mul_f64(0.5 + rng.unit());
    let mut next_controller_kill = Instant::now() + gap(&mut rng);
    let mut last_worker_kill = Instant::now();
    let mut last_seen = String::new();
    loop {
        let exited = matches!(c.proc.child.try_wait(), Ok(Some(_)));
        if exited || Instant::now() >= next_controller_kill {
            if exited {
                failpoint_exits += 1;
            } else {
                controller_kills += 1;
            }
            c.proc.signal(libc::SIGKILL);
            let _ = c.proc.wait_exit(Duration::from_secs(10));
            let t = Instant::now();
            c = ControllerProc::start(dir.path(), port, &flags);
            restarts_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            next_controller_kill = Instant::now() + gap(&mut rng);
        }
        if last_worker_kill.elapsed() >= o.kill_worker_every && !workers.is_empty() {
            last_worker_kill = Instant::now();
            let victim = rng.next() as usize % workers.len();
            let mut w = workers.swap_remove(victim);
            w.signal(libc::SIGKILL);
            let _ = w.wait_exit(Duration::from_secs(5));
            worker_kills += 1;
            workers.push(start_worker(
                dir.path(),
                &c.url,
                &c.token,
                (worker_kills % o.workers as u64) as i32,
                WORKER_FLAGS,
            ));
        }
        if let Ok(s) = c.client().status() {
            last_seen = format!("{:?}", s.tasks);
            if (s.tasks.completed + s.tasks.failed + s.tasks.cancelled) as usize >= o.tasks {
                break;
            }
        }
        if t0.elapsed() > Duration::from_secs(1800) {
            return Err(format!("chaos did not finish in 30 min: {last_seen}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = t0.elapsed();
    // One more restart: what the journal holds at the end is what is checked.
    c.proc.signal(libc::SIGKILL);
    let _ = c.proc.wait_exit(Duration::from_secs(10));
    let c = ControllerProc::start(dir.path(), port, &flags);
    let all = c
        .client()
        .all_tasks(None)
        .map_err(|e| format!("list: {e}"))?;
    if all.len() != o.tasks {
        return Err(format!(
            "{} tasks known after the run, {} submitted",
            all.len(),
            o.tasks
        ));
    }
    let (mut completed, mut failed, mut repeated) = (0usize, 0usize, 0usize);
    for d in &all {
        let i = *index
            .get(&d.id)
            .ok_or_else(|| format!("task {} was never submitted", d.id))?;
        let completions = d
            .history
            .iter()
            .filter(|a| a.outcome == AttemptOutcome::Completed)
            .count();
        match d.state {
            TaskState::Completed => {
                completed += 1;
                if completions != 1 {
                    return Err(format!("task {i} recorded {completions} completions"));
                }
                let v = d
                    .result
                    .as_ref()
                    .and_then(|r| r["results"].as_array()?.last().cloned());
                if v.as_ref().map(|x| &x["value"]) != Some(&json!(i)) {
                    return Err(format!("task {i} has another task's result: {v:?}"));
                }
            }
            TaskState::Failed | TaskState::Cancelled => {
                failed += 1;
                if completions != 0 {
                    return Err(format!(
                        "task {i} is {:?} with a completed attempt",
                        d.state
                    ));
                }
            }
            s => return Err(format!("task {i} ended {s:?}")),
        }
        repeated += usize::from(d.history.len() > 1);
    }
    let journal_bytes: u64 = std::fs::read_dir(&state)
        .map_err(|e| e.to_string())?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    restarts_ms.sort_by(f64::total_cmp);
    let report = json!({
        "tasks": o.tasks, "workers": o.workers, "completed": completed, "failed": failed,
        "tasks_with_several_attempts": repeated,
        "controller_kills": controller_kills, "failpoint_crashes": failpoint_exits,
        "worker_kills": worker_kills, "elapsed_s": elapsed.as_secs_f64(),
        "tasks_per_s": o.tasks as f64 / elapsed.as_secs_f64(),
        "restart_to_listening_p50_ms": percentile(&restarts_ms, 50.0),
        "restart_to_listening_max_ms": restarts_ms.last().copied().unwrap_or(0.0),
        "state_dir_bytes": journal_bytes,
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
    println!(
        "chaos: OK, every task reached exactly one terminal state with its own result; none lost, none applied twice"
    );
    Ok(())
}

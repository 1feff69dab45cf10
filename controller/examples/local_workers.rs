//! The drop-in wrapper end to end: an embedded controller, two local workers, blocking command
//! calls to a chosen worker and to any worker, a work package with an init part, monitoring, a
//! worker death notification, and the same calls through a direct-mode worker.
//!
//! ```text
//! cargo build --release --workspace --bins --examples
//! target/release/examples/local_workers [WORKERS]
//! ```

use std::time::{Duration, Instant};

use serde_json::json;
use warp_common::commands::Command;
use warp_common::protocol::{InitPart, TaskSpec};
use warp_controller::wrapper::{
    ControllerBasedWorkerWrapper, DirectWorkerWrapper, WorkerCommands, WrapperEvent, WrapperOptions,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    warp_controller::logging::init(log::LevelFilter::Warn);
    let n: i32 = std::env::args()
        .nth(1)
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(2);
    let mut wrapper = ControllerBasedWorkerWrapper::with_options(WrapperOptions {
        silent_workers: true,
        heartbeat_timeout: Duration::from_secs(2),
        ..WrapperOptions::default()
    });
    let port = wrapper.start_controller(0)?;
    println!("controller listening on 127.0.0.1:{port}");
    let events = wrapper.worker_events();
    let workers: Vec<_> = (0..n)
        .map(|d| wrapper.add_worker(d))
        .collect::<Result<_, _>>()?;
    for w in wrapper.get_active_workers()? {
        println!(
            "worker {} on device {} ({}), pid {:?}",
            w.id, w.device, w.hostname, w.pid
        );
    }

    // A blocking call to a given worker, and to any worker.
    let uname = wrapper.on(workers[0]).exec(&["uname", "-srm"])?;
    println!("worker 0 ran uname: {}", uname.stdout_tail.trim());
    println!(
        "any worker echoed: {}",
        wrapper.any().echo(json!({"hello": "cluster"}))?
    );

    // A work package with an init part: the second run on the same worker skips it.
    let init = InitPart {
        fingerprint: "gain:demo".into(),
        commands: vec![Command::Sleep { ms: 200 }],
    };
    for round in 1..=2 {
        let t = Instant::now();
        let r = wrapper.on(workers[0]).execute_with_init(
            Some(init.clone()),
            vec![Command::Echo {
                value: json!(round),
            }],
        )?;
        println!(
            "package round {round}: init ran = {}, {:.0} ms",
            r.init_ran,
            t.elapsed().as_secs_f64() * 1000.0
        );
    }

    // A batch across all workers through the controller's queue.
    let controller = wrapper.controller()?;
    let specs: Vec<TaskSpec> = (0..200)
        .map(|i| TaskSpec::new(vec![Command::Echo { value: json!(i) }]))
        .collect();
    let t = Instant::now();
    let ids = controller.submit_batch(specs)?;
    println!(
        "queued {} tasks, queue length now {}",
        ids.len(),
        wrapper.get_queue_length()?
    );
    while ids
        .iter()
        .any(|id| controller.task(*id).is_some_and(|d| !d.state.is_terminal()))
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    println!(
        "200 tasks done in {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    wrapper.on(workers[0]).wait_async_tasks()?;
    wrapper.any().gc_collect()?;
    if let Err(e) = wrapper.any().execute(vec![Command::Fail {
        message: "a command that fails".into(),
    }]) {
        println!("failing command reported: {e}");
    }

    // A worker dies: the wrapper says so.
    let victim = *workers.last().expect("at least one worker");
    let pid = wrapper.worker_pids()[&victim];
    // SAFETY: kill(2) on a process this program spawned.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
    if let Ok(WrapperEvent::WorkerDied { worker, status, .. }) =
        events.recv_timeout(Duration::from_secs(5))
    {
        println!("notified: worker {worker} died ({status})");
    }
    let s = wrapper.get_controller_status()?;
    println!(
        "controller: {} tasks completed, {} failed; workers {} idle, {} busy, {} offline",
        s.tasks.completed, s.tasks.failed, s.workers.idle, s.workers.busy, s.workers.offline
    );

    // The traditional direct mode, same calls.
    let direct = DirectWorkerWrapper::spawn(0, true)?;
    println!(
        "direct-mode worker on port {} echoed: {}",
        direct.port(),
        direct.echo(json!("direct"))?
    );
    println!(
        "direct-mode exec: {}",
        direct
            .exec(&["echo", "from direct mode"])?
            .stdout_tail
            .trim()
    );
    drop(direct);
    drop(wrapper);
    println!("wrapper dropped: workers and controller stopped");
    Ok(())
}

//! `warp-controller`: parses flags and calls the library. Exit codes: 0 ok, 1 failure, 2 usage.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use getopts::{Matches, Options};
use warp_common::commands::Command;
use warp_common::protocol::{Target, TaskDetail, TaskSpec, TaskState};
use warp_controller::client::AdminClient;
use warp_controller::{Controller, ControllerConfig, auth, cli, logging, provision};

const USAGE: &str = "\
warp-controller: the controller of a pull-based cryo-EM worker system.

Workers (warp-worker, one per GPU) connect to the controller; the controller never connects to
them, so workers run on compute nodes that accept no inbound connections.

Usage:
  warp-controller serve [options]        run a controller
  warp-controller submit [options] (--exec -- ARGV... | --json FILE)
  warp-controller status|workers|tasks [--json] [options]
  warp-controller cancel TASK_ID [options]
  warp-controller preprocess --input 'GLOB' --output DIR [options]
                                         preprocess movies over local or remote workers
  warp-controller simulate --output DIR [options]
                                         synthetic movies with known motion and CTF
  warp-controller compare --truth DIR --output DIR
                                         compare preprocess results with simulated truth
  warp-controller help | --help | --version

Each subcommand has --help. Tokens come from --token-file FILE or the WARP_TOKEN environment
variable, never from the command line. Client subcommands find the controller with
--controller URL or WARP_CONTROLLER.

Exit codes: 0 success, 1 failure (e.g. task failed, controller unreachable), 2 usage error.";

/// Set by SIGINT/SIGTERM.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

enum Failure {
    Usage(String),
    Failed(String),
}

type Outcome = Result<(), Failure>;

fn usage<T>(m: impl Into<String>) -> Result<T, Failure> {
    Err(Failure::Usage(m.into()))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        None | Some("help" | "-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some("--version" | "-V") => {
            println!(
                "warp-controller {} (protocol {})",
                warp_common::VERSION,
                warp_common::PROTOCOL_VERSION
            );
            Ok(())
        }
        Some("serve") => serve(&args[1..]),
        Some("submit") => submit(&args[1..]),
        Some(cmd @ ("status" | "workers" | "tasks")) => monitor(cmd, &args[1..]),
        Some("cancel") => cancel(&args[1..]),
        Some("preprocess") => preprocess(&args[1..]),
        Some("simulate") => {
            warp_controller::simulate::run_cli(&args[1..]).map_err(usage_or_failure)
        }
        Some("compare") => {
            warp_controller::simulate::run_compare_cli(&args[1..]).map_err(usage_or_failure)
        }
        Some(other) => Err(Failure::Usage(format!(
            "unknown subcommand '{other}'; see warp-controller --help"
        ))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(m)) => {
            eprintln!("warp-controller: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(m)) => {
            eprintln!("warp-controller: error: {m}");
            ExitCode::from(1)
        }
    }
}

/// Maps a library CLI error to an exit code: messages starting with "usage: " are usage errors.
fn usage_or_failure(m: String) -> Failure {
    match m.strip_prefix("usage: ") {
        Some(rest) => Failure::Usage(rest.to_string()),
        None => Failure::Failed(m),
    }
}

/// Parses `args` with `opts`; prints help and returns None for --help.
fn parse(opts: &Options, args: &[String], brief: &str) -> Result<Option<Matches>, Failure> {
    cli::parse(opts, args, brief).map_err(usage_or_failure)
}

fn seconds(m: &Matches, name: &str, default: Duration) -> Result<Duration, Failure> {
    match m.opt_str(name) {
        None => Ok(default),
        Some(v) => {
            warp_common::parse_seconds(&v).map_err(|e| Failure::Usage(format!("--{name}: {e}")))
        }
    }
}

fn number<T: std::str::FromStr>(m: &Matches, name: &str, default: T) -> Result<T, Failure> {
    cli::number(m, name, default).map_err(usage_or_failure)
}

fn serve(args: &[String]) -> Outcome {
    let d = ControllerConfig::new(String::new());
    let mut o = Options::new();
    o.optflag("h", "help", "print this help");
    o.optopt(
        "",
        "bind",
        &format!("address to listen on (default {}: all interfaces)", d.bind),
        "ADDR",
    );
    o.optopt(
        "",
        "port",
        "port to listen on (default 0: any free port; see --port-file)",
        "N",
    );
    o.optopt(
        "",
        "port-file",
        "write the bound port to FILE (for scripts and batch jobs)",
        "FILE",
    );
    o.optopt("", "token-file", "enrollment token file, created (mode 600, random 256-bit token) if missing; else WARP_TOKEN", "FILE");
    o.optopt(
        "",
        "poll-hold",
        "seconds a worker's poll is held before 'no work' (default 30)",
        "S",
    );
    o.optopt(
        "",
        "heartbeat-interval",
        "seconds between worker heartbeats (default 30, at most a quarter of the timeout)",
        "S",
    );
    o.optopt(
        "",
        "heartbeat-timeout",
        "seconds of silence after which a worker is offline and its task re-queued (default 120)",
        "S",
    );
    o.optopt(
        "",
        "task-timeout",
        "seconds an attempt may run before it fails and is re-queued (default 1800)",
        "S",
    );
    o.optopt(
        "",
        "max-attempts",
        "failed attempts after which a task fails for good (default 3)",
        "N",
    );
    o.optopt(
        "",
        "max-body",
        "largest request body in bytes (default 16 MiB)",
        "BYTES",
    );
    o.optopt("", "threads", "request handler threads (default 4)", "N");
    o.optflag("v", "verbose", "log debug lines (or WARP_LOG=debug)");
    o.optflag("q", "quiet", "log warnings and errors only");
    provision_options(&mut o);
    let brief = "Usage: warp-controller serve [options]\n\nSeconds accept fractions (0.5). With --provision slurm the controller submits worker jobs\nfrom --provision-template while work is queued (policy: controller/src/provision/policy.rs;\nWARP_PROVISION_* variables override its timings) and cancels them when the queue drains or\nthe controller stops. Placeholders always filled: controller_url, token_file, job_name,\nprovision_dir.";
    let Some(m) = parse(&o, args, brief)? else {
        return Ok(());
    };
    logging::init(if m.opt_present("verbose") {
        log::LevelFilter::Debug
    } else if m.opt_present("quiet") {
        log::LevelFilter::Warn
    } else {
        log::LevelFilter::Info
    });
    let token_file = m.opt_str("token-file").map(PathBuf::from);
    let token = auth::resolve_token(token_file.as_deref(), true).map_err(Failure::Usage)?;
    let mut cfg = ControllerConfig::new(token);
    cfg.bind = m.opt_str("bind").unwrap_or(cfg.bind);
    cfg.port = number(&m, "port", 0u16)?;
    cfg.poll_hold = seconds(&m, "poll-hold", cfg.poll_hold)?;
    cfg.heartbeat_interval = seconds(&m, "heartbeat-interval", cfg.heartbeat_interval)?;
    cfg.heartbeat_timeout = seconds(&m, "heartbeat-timeout", cfg.heartbeat_timeout)?;
    cfg.task_timeout = seconds(&m, "task-timeout", cfg.task_timeout)?;
    cfg.max_attempts = number(&m, "max-attempts", cfg.max_attempts)?;
    cfg.max_body_bytes = number(&m, "max-body", cfg.max_body_bytes)?;
    cfg.handler_threads = number(&m, "threads", cfg.handler_threads)?;
    if cfg.max_attempts == 0 || cfg.handler_threads == 0 {
        return usage("--max-attempts and --threads must be at least 1");
    }
    if cfg.heartbeat_timeout.is_zero() || cfg.poll_hold.is_zero() || cfg.task_timeout.is_zero() {
        return usage("--poll-hold, --heartbeat-timeout and --task-timeout must be > 0");
    }
    install_signal_handlers();
    log::info!(
        "warp-controller {} (protocol {}) starting",
        warp_common::VERSION,
        warp_common::PROTOCOL_VERSION
    );
    log::info!("configuration: {}", cfg.describe());
    log::info!(
        "token: {}",
        match &token_file {
            Some(p) => format!("from file {}", p.display()),
            None => format!("from {}", auth::TOKEN_ENV),
        }
    );
    let bind = cfg.bind.clone();
    let controller = Controller::start(cfg).map_err(Failure::Failed)?;
    let provisioner = match m.opt_str("provision") {
        None => None,
        Some(mode) => Some(start_provisioner(
            &m,
            &mode,
            &controller,
            &bind,
            token_file.as_deref(),
        )?),
    };
    if let Some(path) = m.opt_str("port-file") {
        std::fs::write(&path, format!("{}\n", controller.port()))
            .map_err(|e| Failure::Failed(format!("cannot write --port-file {path}: {e}")))?;
    }
    println!("listening on http://{bind}:{}", controller.port());
    let _ = std::io::stdout().flush();
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
    log::info!("signal received: shutting down");
    if let Some(p) = provisioner {
        p.stop();
    }
    controller.shutdown();
    Ok(())
}

/// The `--provision` options, shared by `serve` and `preprocess --port`.
fn provision_options(o: &mut Options) {
    o.optopt(
        "",
        "provision",
        "submit worker jobs while work is queued: slurm",
        "MODE",
    );
    o.optopt("", "provision-template", "job script template with placeholders in double braces (see scripts/slurm/warp-workers.provision.sbatch)", "FILE");
    o.optmulti(
        "",
        "provision-var",
        "value of a template placeholder (repeatable)",
        "NAME=VALUE",
    );
    o.optopt(
        "",
        "provision-dir",
        "where the rendered job script goes (default ./warp-provision)",
        "DIR",
    );
    o.optopt(
        "",
        "max-workers",
        "provisioning: at most N workers (default 4)",
        "N",
    );
    o.optopt(
        "",
        "workers-per-job",
        "provisioning: workers each job starts (default 1)",
        "N",
    );
    o.optopt(
        "",
        "max-submissions",
        "provisioning: at most N job submissions in all (default 100)",
        "N",
    );
    o.optopt(
        "",
        "submit-cmd",
        "provisioning: command instead of sbatch, e.g. 'sbatch -p gpu'",
        "CMD",
    );
    o.optopt(
        "",
        "advertise-url",
        "provisioning: controller URL the jobs use (default http://HOST:PORT)",
        "URL",
    );
}

fn start_provisioner(
    m: &Matches,
    mode: &str,
    controller: &Controller,
    bind: &str,
    token_file: Option<&std::path::Path>,
) -> Result<provision::Provisioner, Failure> {
    if mode != "slurm" {
        return usage(format!(
            "--provision: unknown mode '{mode}' (supported: slurm)"
        ));
    }
    let Some(template_path) = m.opt_str("provision-template") else {
        return usage(
            "--provision needs --provision-template FILE (e.g. scripts/slurm/warp-workers.provision.sbatch)",
        );
    };
    let Some(token_file) = token_file else {
        return usage(
            "--provision needs --token-file: the jobs read the token from that file (a token in a job's environment would leak)",
        );
    };
    let template = std::fs::read_to_string(&template_path).map_err(|e| {
        Failure::Failed(format!(
            "cannot read --provision-template {template_path}: {e}"
        ))
    })?;
    let dir = PathBuf::from(
        m.opt_str("provision-dir")
            .unwrap_or_else(|| "warp-provision".into()),
    );
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    let host = match bind {
        "0.0.0.0" | "::" | "[::]" => this_hostname(),
        b => b.to_string(),
    };
    let url = m
        .opt_str("advertise-url")
        .unwrap_or_else(|| format!("http://{host}:{}", controller.port()));
    let token_file = std::path::absolute(token_file).unwrap_or_else(|_| token_file.to_path_buf());
    let mut vars: std::collections::HashMap<String, String> = [
        ("controller_url", url),
        ("token_file", token_file.display().to_string()),
        ("job_name", "warp-workers".to_string()),
        ("provision_dir", dir.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for kv in m.opt_strs("provision-var") {
        let Some((k, v)) = kv.split_once('=') else {
            return usage(format!("--provision-var '{kv}': expected NAME=VALUE"));
        };
        vars.insert(k.trim().to_string(), v.to_string());
    }
    let script = provision::render_template(&template, &vars)
        .map_err(|e| Failure::Usage(format!("--provision-template {template_path}: {e}")))?;
    let policy =
        provision::policy::Policy::from_env(|k| std::env::var(k).ok()).map_err(Failure::Usage)?;
    let submit_cmd: Vec<String> = m
        .opt_str("submit-cmd")
        .map(|c| c.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let batch = provision::Slurm::new(submit_cmd).map_err(Failure::Failed)?;
    let cfg = provision::ProvisionConfig {
        script,
        state_dir: dir,
        max_workers: number(m, "max-workers", 4usize)?,
        workers_per_job: number(m, "workers-per-job", 1usize)?,
        max_submissions: number(m, "max-submissions", 100usize)?,
        policy,
    };
    if cfg.max_workers == 0 || cfg.workers_per_job == 0 {
        return usage("--max-workers and --workers-per-job must be at least 1");
    }
    log::info!(
        "provisioning: slurm, at most {} worker(s), {} per job, at most {} submissions; {:?}",
        cfg.max_workers,
        cfg.workers_per_job,
        cfg.max_submissions,
        cfg.policy
    );
    provision::Provisioner::start(cfg, Box::new(batch), controller.view()).map_err(Failure::Failed)
}

/// This host's name, for the URL provisioned jobs use.
fn this_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Options every client subcommand takes.
fn client_options() -> Options {
    let mut o = Options::new();
    o.optflag("h", "help", "print this help");
    o.optopt(
        "",
        "controller",
        "controller URL (http://HOST:PORT or HOST:PORT); default $WARP_CONTROLLER",
        "URL",
    );
    o.optopt(
        "",
        "token-file",
        "file holding the enrollment (admin) token; default $WARP_TOKEN",
        "FILE",
    );
    o
}

fn client(m: &Matches) -> Result<AdminClient, Failure> {
    let url = m
        .opt_str("controller")
        .or_else(|| std::env::var("WARP_CONTROLLER").ok())
        .ok_or_else(|| {
            Failure::Usage("no controller: pass --controller URL or set WARP_CONTROLLER".into())
        })?;
    let token_file = m.opt_str("token-file").map(PathBuf::from);
    let token = auth::resolve_token(token_file.as_deref(), false).map_err(Failure::Usage)?;
    AdminClient::new(&url, &token).map_err(|e| Failure::Usage(format!("--controller: {e}")))
}

fn submit(args: &[String]) -> Outcome {
    let mut o = client_options();
    o.optflag("", "exec", "run the program given after -- (Exec command)");
    o.optopt(
        "",
        "json",
        "submit the work package (TaskSpec JSON) in FILE ('-' = stdin)",
        "FILE",
    );
    o.optopt("", "worker", "only this worker may run it", "ID");
    o.optopt(
        "",
        "device",
        "only workers serving this device may run it",
        "N",
    );
    o.optopt("", "priority", "higher runs first (default 0)", "N");
    o.optopt("", "label", "label shown in monitoring", "TEXT");
    o.optopt(
        "",
        "timeout",
        "task timeout in seconds (default: the controller's)",
        "S",
    );
    o.optopt(
        "",
        "cwd",
        "working directory of the program (--exec)",
        "DIR",
    );
    o.optflag(
        "",
        "wait",
        "wait for the task and print its result; exit 1 if it failed",
    );
    o.optopt(
        "",
        "wait-timeout",
        "give up waiting after S seconds (default: never)",
        "S",
    );
    let brief = "Usage: warp-controller submit [options] (--exec -- PROGRAM ARGS... | --json FILE)\n\nPrints the task id; with --wait, the task's result as JSON.";
    let Some(m) = parse(&o, args, brief)? else {
        return Ok(());
    };
    let mut spec = match (m.opt_present("exec"), m.opt_str("json")) {
        (true, None) => {
            if m.free.is_empty() {
                return usage("--exec needs a program after --, e.g. submit --exec -- hostname");
            }
            let mut cmd = Command::exec(m.free.iter().cloned());
            if let (Command::Exec(p), Some(cwd)) = (&mut cmd, m.opt_str("cwd")) {
                p.cwd = Some(cwd);
            }
            TaskSpec::new(vec![cmd])
        }
        (false, Some(path)) => {
            let text = if path == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map(|_| s)
            } else {
                std::fs::read_to_string(&path)
            }
            .map_err(|e| Failure::Failed(format!("cannot read --json {path}: {e}")))?;
            serde_json::from_str(&text)
                .map_err(|e| Failure::Failed(format!("--json {path} is not a work package: {e}")))?
        }
        _ => return usage("give exactly one of --exec -- ARGV... or --json FILE"),
    };
    match (m.opt_str("worker"), m.opt_str("device")) {
        (Some(_), Some(_)) => return usage("give at most one of --worker and --device"),
        (Some(w), None) => {
            spec.target = Target::Worker(
                uuid::Uuid::parse_str(&w)
                    .map_err(|_| Failure::Usage(format!("--worker: '{w}' is not a worker id")))?,
            )
        }
        (None, Some(_)) => spec.target = Target::Device(number(&m, "device", 0)?),
        (None, None) => {}
    }
    if m.opt_present("priority") {
        spec.priority = number(&m, "priority", 0)?;
    }
    if let Some(l) = m.opt_str("label") {
        spec.label = Some(l);
    }
    if m.opt_present("timeout") {
        spec.timeout_s = Some(seconds(&m, "timeout", Duration::ZERO)?.as_secs_f64());
    }
    spec.validate().map_err(Failure::Usage)?;
    let c = client(&m)?;
    let id = c
        .submit(&spec)
        .map_err(|e| Failure::Failed(e.to_string()))?;
    println!("{id}");
    if !m.opt_present("wait") {
        return Ok(());
    }
    let timeout = m
        .opt_str("wait-timeout")
        .map(|_| seconds(&m, "wait-timeout", Duration::ZERO))
        .transpose()?;
    let detail = c
        .wait(id, timeout)
        .map_err(|e| Failure::Failed(e.to_string()))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&detail).expect("detail serialises")
    );
    match detail.state {
        TaskState::Completed => Ok(()),
        s if s.is_terminal() => Err(Failure::Failed(format!(
            "task {id} {}: {}",
            s.as_str(),
            detail.error.unwrap_or_default()
        ))),
        s => Err(Failure::Failed(format!(
            "task {id} still {} after --wait-timeout",
            s.as_str()
        ))),
    }
}

fn cancel(args: &[String]) -> Outcome {
    let o = client_options();
    let Some(m) = parse(&o, args, "Usage: warp-controller cancel TASK_ID [options]")? else {
        return Ok(());
    };
    let [id] = &m.free[..] else {
        return usage("cancel takes exactly one TASK_ID");
    };
    let id = uuid::Uuid::parse_str(id)
        .map_err(|_| Failure::Usage(format!("'{id}' is not a task id")))?;
    let state = client(&m)?
        .cancel(id)
        .map_err(|e| Failure::Failed(e.to_string()))?;
    println!("{id} {}", state.as_str());
    Ok(())
}

fn monitor(cmd: &str, args: &[String]) -> Outcome {
    let mut o = client_options();
    o.optflag("", "json", "print JSON instead of a table");
    if cmd == "workers" {
        o.optflag("", "all", "include offline workers");
    }
    if cmd == "tasks" {
        o.optopt(
            "",
            "state",
            "only tasks in this state (queued, running, completed, failed, ...)",
            "STATE",
        );
        o.optopt("", "limit", "at most N tasks (default 1000)", "N");
    }
    let Some(m) = parse(
        &o,
        args,
        &format!("Usage: warp-controller {cmd} [--json] [options]"),
    )?
    else {
        return Ok(());
    };
    let c = client(&m)?;
    let fail = |e: warp_controller::client::ClientError| Failure::Failed(e.to_string());
    let json = m.opt_present("json");
    let print_json = |v: &dyn erased::Json| println!("{}", v.pretty());
    match cmd {
        "status" => {
            let s = c.status().map_err(fail)?;
            if json {
                print_json(&s);
            } else {
                println!(
                    "controller {} (protocol {}), up {:.1} s",
                    s.version,
                    s.protocol_version,
                    s.uptime_ms as f64 / 1000.0
                );
                println!(
                    "workers: {} idle, {} busy, {} offline; {} polls parked",
                    s.workers.idle, s.workers.busy, s.workers.offline, s.parked_polls
                );
                let t = &s.tasks;
                println!(
                    "tasks:   {} queued, {} assigned, {} running, {} completed, {} failed, {} cancelled",
                    t.queued, t.assigned, t.running, t.completed, t.failed, t.cancelled
                );
                println!("stale reports refused: {}", s.stale_reports_refused);
                if let Some(p) = &s.provisioning {
                    println!(
                        "provisioning ({}): {} job(s), {} submitted in all, at most {} workers{}{}",
                        p.mode,
                        p.jobs.len(),
                        p.submitted_total,
                        p.max_workers,
                        p.paused_for_ms
                            .map(|ms| format!(", paused for {:.0} s", ms as f64 / 1000.0))
                            .unwrap_or_default(),
                        p.last_error
                            .as_deref()
                            .map(|e| format!("; last error: {e}"))
                            .unwrap_or_default()
                    );
                    for j in &p.jobs {
                        println!(
                            "  job {:<12} {:<9} {:>7.0} s",
                            j.id,
                            j.state,
                            j.age_ms as f64 / 1000.0
                        );
                    }
                }
            }
        }
        "workers" => {
            let list = c.workers(m.opt_present("all")).map_err(fail)?;
            if json {
                print_json(&list);
            } else {
                println!(
                    "{:<36}  {:>6}  {:<20}  {:<7}  {:<36}  {:>9}  {:>6}",
                    "ID", "DEVICE", "HOST", "STATE", "TASK", "LAST SEEN", "DONE"
                );
                for w in list {
                    println!(
                        "{:<36}  {:>6}  {:<20}  {:<7}  {:<36}  {:>7.1} s  {:>6}",
                        w.id,
                        w.device,
                        w.hostname,
                        format!("{:?}", w.state).to_lowercase(),
                        w.current_task
                            .map(|t| t.to_string())
                            .unwrap_or_else(|| "-".into()),
                        w.last_heartbeat_ms_ago as f64 / 1000.0,
                        w.tasks_completed
                    );
                }
            }
        }
        _ => {
            let state = m
                .opt_str("state")
                .map(|s| {
                    serde_json::from_value::<TaskState>(serde_json::Value::String(s.clone()))
                        .map_err(|_| Failure::Usage(format!("--state: unknown state '{s}'")))
                })
                .transpose()?;
            let list = c
                .tasks(state, number(&m, "limit", 1000usize)?)
                .map_err(fail)?;
            if json {
                print_json(&list);
            } else {
                println!(
                    "{:<36}  {:<9}  {:>7}  {:<36}  {:<20}  ERROR",
                    "ID", "STATE", "ATTEMPT", "WORKER", "LABEL"
                );
                for t in list {
                    print_task_row(&t);
                }
            }
        }
    }
    Ok(())
}

fn print_task_row(t: &TaskDetail) {
    let mut err = t.error.clone().unwrap_or_default().replace('\n', " ");
    err.truncate(60);
    println!(
        "{:<36}  {:<9}  {:>7}  {:<36}  {:<20}  {}",
        t.id,
        t.state.as_str(),
        t.attempt,
        t.worker_id
            .map(|w| w.to_string())
            .unwrap_or_else(|| "-".into()),
        t.label.as_deref().unwrap_or("-"),
        err
    );
}

/// Pretty JSON of any serialisable value behind one `dyn` type.
mod erased {
    pub trait Json {
        fn pretty(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn pretty(&self) -> String {
            serde_json::to_string_pretty(self).expect("serialisable")
        }
    }
}

fn preprocess(args: &[String]) -> Outcome {
    use warp_common::preprocessing::{
        CtfParams, LoadGainRefParams, MovementParams, ThumbnailParams,
    };
    use warp_controller::preprocess::{self as job, PreprocessOptions, Workers};

    // Help texts and defaults both come from the commands' defaults (Warp's).
    let (ctf_d, motion_d) = (CtfParams::default(), MovementParams::default());
    let thumb_d = ThumbnailParams::default();
    let mut opts = Options::new();
    opts.optflag("h", "help", "print this help");
    opts.optopt(
        "i",
        "input",
        "movies to process (wildcards in the file name: 'data/*.tif')",
        "GLOB",
    );
    opts.optopt("o", "output", "output directory (created)", "DIR");
    opts.optopt(
        "",
        "workers",
        "local workers to start, one per device 0..N-1 (default 1)",
        "N",
    );
    opts.optopt(
        "",
        "devices",
        "local workers on these devices, e.g. 0,1",
        "LIST",
    );
    opts.optopt(
        "",
        "port",
        "start no local workers: serve on PORT and wait for remote ones",
        "P",
    );
    opts.optopt("", "bind", "address for --port (default 0.0.0.0)", "ADDR");
    opts.optopt(
        "",
        "token-file",
        "enrollment token for remote workers (created 0600 if missing; default: WARP_TOKEN)",
        "FILE",
    );
    opts.optopt(
        "",
        "angpix",
        "pixel size in Å (default: from the file header)",
        "A",
    );
    opts.optopt(
        "",
        "scale",
        "Fourier-crop factor in (0, 1] (default 1)",
        "F",
    );
    opts.optopt(
        "",
        "voltage",
        &format!("acceleration voltage in kV (default {})", ctf_d.voltage_kv),
        "KV",
    );
    opts.optopt(
        "",
        "cs",
        &format!("spherical aberration in mm (default {})", ctf_d.cs_mm),
        "MM",
    );
    opts.optopt(
        "",
        "amp",
        &format!("amplitude contrast (default {})", ctf_d.amplitude_contrast),
        "F",
    );
    opts.optopt(
        "",
        "dose-per-frame",
        "exposure per frame in e/Å², enables dose weighting (default 0: off)",
        "D",
    );
    opts.optopt("", "gain", "gain reference (MRC or TIFF)", "FILE");
    opts.optflag("", "gain-flip-x", "mirror the gain reference along x");
    opts.optflag("", "gain-flip-y", "mirror the gain reference along y");
    opts.optflag(
        "",
        "gain-transpose",
        "transpose the gain reference (after the flips)",
    );
    opts.optopt(
        "",
        "defects",
        "defect map (non-zero = defect), same size as the gain",
        "FILE",
    );
    opts.optopt(
        "",
        "window",
        &format!("CTF spectrum tile in px (default {})", ctf_d.window),
        "N",
    );
    opts.optopt(
        "",
        "range-min",
        &format!(
            "CTF fit low-resolution limit in Å (default {})",
            ctf_d.range_min_a
        ),
        "A",
    );
    opts.optopt(
        "",
        "range-max",
        &format!(
            "CTF fit high-resolution limit in Å (default {})",
            ctf_d.range_max_a
        ),
        "A",
    );
    opts.optopt(
        "",
        "defocus-min",
        &format!(
            "smallest defocus searched in µm (default {})",
            ctf_d.defocus_min_um
        ),
        "UM",
    );
    opts.optopt(
        "",
        "defocus-max",
        &format!(
            "largest defocus searched in µm (default {})",
            ctf_d.defocus_max_um
        ),
        "UM",
    );
    opts.optflag("", "fit-phase", "also fit a phase shift (phase plate)");
    opts.optopt(
        "",
        "motion-range-max",
        &format!(
            "motion high-resolution limit in Å (default {})",
            motion_d.range_max_a
        ),
        "A",
    );
    opts.optflag("", "no-local-motion", "skip the patch (local) motion");
    opts.optflag("", "float16", "write float16 averages (MRC mode 12)");
    opts.optflag("", "odd-even", "also write odd/even half averages");
    opts.optopt(
        "",
        "thumbnail-size",
        &format!("thumbnail long side in px (default {})", thumb_d.size),
        "PX",
    );
    opts.optopt(
        "",
        "task-timeout",
        "seconds one movie may take before it is retried (default 1800)",
        "S",
    );
    provision_options(&mut opts);
    opts.optopt(
        "",
        "backend",
        "local workers' compute backend: auto (GPU when usable, else CPU), cpu, cuda (default auto)",
        "KIND",
    );
    opts.optflag(
        "",
        "no-read-ahead",
        "local workers do not read the next movie into the page cache while computing",
    );
    opts.optflag(
        "v",
        "verbose",
        "also log the embedded controller's info lines",
    );
    let brief = "Usage: warp-controller preprocess --input 'GLOB' --output DIR [options]\n\n\
        Preprocesses every movie matching GLOB (MRC or TIFF): gain correction, motion (global\n\
        and local), dose-weighted average, CTF, thumbnail. Runs an embedded controller with\n\
        local workers (--workers/--devices) or waits for remote ones (--port). Writes\n\
        DIR/<name>.json, DIR/average/, DIR/powerspectrum/, DIR/thumbnails/,\n\
        DIR/micrographs_ctf.star, DIR/processed_items.json and DIR/failed_items.json.\n\
        Re-running skips processed movies and retries failed ones. With --port and\n\
        --provision slurm the job submits worker jobs itself while movies are queued (see\n\
        warp-controller serve --help and docs/hpc.md).";
    let Some(m) = parse(&opts, args, brief)? else {
        return Ok(());
    };
    let input = m
        .opt_str("input")
        .map_or_else(|| usage("--input GLOB is required; see --help"), Ok)?;
    let output = m
        .opt_str("output")
        .map_or_else(|| usage("--output DIR is required; see --help"), Ok)?;
    if m.opt_present("provision") && !m.opt_present("port") {
        return usage("--provision needs --port: provisioned workers are remote workers");
    }
    let token_file = m.opt_str("token-file").map(PathBuf::from);
    let workers = if let Some(p) = m.opt_str("port") {
        if m.opt_present("workers") || m.opt_present("devices") {
            return usage(
                "--port (remote workers only) cannot be combined with --workers or --devices",
            );
        }
        let port: u16 = p
            .parse()
            .map_err(|_| Failure::Usage(format!("--port: '{p}' is not a port")))?;
        let token = auth::resolve_token(token_file.as_deref(), true).map_err(Failure::Failed)?;
        Workers::Remote {
            bind: m.opt_str("bind").unwrap_or_else(|| "0.0.0.0".into()),
            port,
            token,
        }
    } else if let Some(list) = m.opt_str("devices") {
        if m.opt_present("workers") {
            return usage("give --workers N or --devices LIST, not both");
        }
        let devices: Result<Vec<i32>, _> =
            list.split(',').map(|d| d.trim().parse::<i32>()).collect();
        match devices {
            Ok(d) if !d.is_empty() && d.iter().all(|&x| x >= 0) => Workers::Local(d),
            _ => {
                return usage(format!(
                    "--devices: '{list}' is not a list of device ids like 0,1"
                ));
            }
        }
    } else {
        let n: i32 = number(&m, "workers", 1)?;
        if !(1..=256).contains(&n) {
            return usage(format!("--workers must be 1 to 256, got {n}"));
        }
        Workers::Local((0..n).collect())
    };
    let defaults = ctf_d.clone();
    let ctf = CtfParams {
        voltage_kv: number(&m, "voltage", defaults.voltage_kv)?,
        cs_mm: number(&m, "cs", defaults.cs_mm)?,
        amplitude_contrast: number(&m, "amp", defaults.amplitude_contrast)?,
        window: number(&m, "window", defaults.window)?,
        range_min_a: number(&m, "range-min", defaults.range_min_a)?,
        range_max_a: number(&m, "range-max", defaults.range_max_a)?,
        defocus_min_um: number(&m, "defocus-min", defaults.defocus_min_um)?,
        defocus_max_um: number(&m, "defocus-max", defaults.defocus_max_um)?,
        fit_phase: m.opt_present("fit-phase"),
        spectrum_path: None,
    };
    let movement = MovementParams {
        range_max_a: number(&m, "motion-range-max", motion_d.range_max_a)?,
        local: !m.opt_present("no-local-motion"),
        ..motion_d
    };
    let gain = m.opt_str("gain").map(|path| LoadGainRefParams {
        path,
        flip_x: m.opt_present("gain-flip-x"),
        flip_y: m.opt_present("gain-flip-y"),
        transpose: m.opt_present("gain-transpose"),
        defects_path: m.opt_str("defects"),
    });
    if gain.is_none() && m.opt_present("defects") {
        return usage("--defects needs --gain");
    }
    let angpix = match m.opt_str("angpix") {
        None => None,
        Some(_) => Some(number(&m, "angpix", 0.0f64)?),
    };
    let po = PreprocessOptions {
        input,
        output: PathBuf::from(output),
        workers,
        angpix,
        scale_factor: number(&m, "scale", 1.0)?,
        gain,
        dose_per_frame: number(&m, "dose-per-frame", 0.0)?,
        movement,
        ctf,
        float16: m.opt_present("float16"),
        odd_even: m.opt_present("odd-even"),
        thumbnail_size: number(&m, "thumbnail-size", thumb_d.size)?,
        task_timeout: seconds(&m, "task-timeout", Duration::from_secs(1800))?,
        progress_every: Duration::from_secs(5),
        backend: match m.opt_str("backend") {
            Some(b) => b
                .parse()
                .map_err(|e| Failure::Usage(format!("--backend: {e}")))?,
            None => warp_kernels::gpu::BackendChoice::Auto,
        },
        read_ahead: !m.opt_present("no-read-ahead"),
    };
    // Check every command's parameters once, before starting anything.
    po.validate().map_err(Failure::Usage)?;
    // The embedded controller's own log: warnings only, unless -v.
    logging::init(if m.opt_present("verbose") {
        log::LevelFilter::Info
    } else {
        log::LevelFilter::Warn
    });
    install_signal_handlers();
    let bind = match &po.workers {
        Workers::Remote { bind, .. } => bind.clone(),
        Workers::Local(_) => String::new(),
    };
    let mut provisioner = None;
    let mut on_started = |c: &Controller| -> Result<(), String> {
        if let Some(mode) = m.opt_str("provision") {
            let p =
                start_provisioner(&m, &mode, c, &bind, token_file.as_deref()).map_err(
                    |f| match f {
                        Failure::Usage(e) | Failure::Failed(e) => e,
                    },
                )?;
            provisioner = Some(p);
            eprintln!(
                "provisioning: slurm jobs from {} while movies are queued",
                m.opt_str("provision-template").unwrap_or_default()
            );
        }
        Ok(())
    };
    let summary = job::run(&po, &STOP, &mut |line| eprintln!("{line}"), &mut on_started);
    if let Some(p) = provisioner.take() {
        p.stop();
    }
    let summary = summary.map_err(Failure::Failed)?;
    println!("{}", job::summary_table(&summary));
    if summary.interrupted {
        return Err(Failure::Failed(
            "interrupted; run the same command again to continue".into(),
        ));
    }
    if !summary.failed.is_empty() {
        return Err(Failure::Failed(format!(
            "{} movie(s) failed (listed in {}/failed_items.json); run again to retry them",
            summary.failed.len(),
            po.output.display()
        )));
    }
    Ok(())
}

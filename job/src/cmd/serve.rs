//! `warp-controller serve`: run a controller until SIGINT/SIGTERM.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use getopts::Options;
use warp_controller::{Controller, ControllerConfig, auth, logging};

use super::provision::{self, ProvisionPlan};
use crate::cli::{self, CliError, failed, number, seconds, usage};

/// A checked `serve` command line.
#[derive(Debug)]
pub struct ServeConfig {
    /// The controller's settings (token included).
    pub controller: ControllerConfig,
    /// Where the enrollment token came from, for the start-up log.
    pub token_file: Option<PathBuf>,
    /// Where the admin token came from (`None`: `WARP_ADMIN_TOKEN`, or the enrollment token).
    pub admin_token_file: Option<PathBuf>,
    /// Where the view token came from.
    pub view_token_file: Option<PathBuf>,
    /// `--port-file`.
    pub port_file: Option<PathBuf>,
    /// `--provision slurm`, checked.
    pub provision: Option<ProvisionPlan>,
    /// Log level.
    pub log_level: log::LevelFilter,
}

const BRIEF: &str = "Usage: warp-controller serve [options]\n\nSeconds accept fractions (0.5). With --provision slurm the controller submits worker jobs\nfrom --provision-template while work is queued (policy: controller/src/provision/policy.rs;\nWARP_PROVISION_* variables override its timings) and cancels them when the queue drains or\nthe controller stops. Placeholders always filled: controller_url, token_file, job_name,\nprovision_dir, ca_file (the --tls-cert of an HTTPS controller, else empty).\n\nHTTPS: --tls-cert F --tls-key F (scripts/make-cert.sh DIR HOSTS... writes a self-signed pair);\nplain HTTP is then refused. Workers and clients take --ca-file DIR/cert.pem (or WARP_CA_FILE).";

fn options() -> Options {
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
    o.optopt("", "token-file", "enrollment token file (registers workers only; what compute nodes hold), created (mode 600, random 256-bit token) if missing; else WARP_TOKEN", "FILE");
    o.optopt("", "admin-token-file", "admin token file (submit, cancel, everything; what client commands take), created if missing; default: admin-token beside --token-file, else WARP_ADMIN_TOKEN", "FILE");
    o.optopt("", "view-token-file", "read-only view token file (status, workers, tasks, consoles), created if missing; else WARP_VIEW_TOKEN; without one those routes take the admin token", "FILE");
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
    o.optopt(
        "",
        "max-connections",
        "connections served at once, 503 beyond (default: half the open-file limit, less 32)",
        "N",
    );
    o.optopt(
        "",
        "header-timeout",
        "seconds a client has to send a request's header (default 10)",
        "S",
    );
    o.optopt(
        "",
        "threads",
        "no longer used: every connection has its own thread (accepted and ignored)",
        "N",
    );
    o.optopt(
        "",
        "keep-finished",
        &format!(
            "finished tasks kept in memory, oldest finished leave first (default {})",
            d.keep_finished
        ),
        "N",
    );
    o.optopt(
        "",
        "state-dir",
        "keep the queue in DIR (journal, snapshots, archive; created 0700): after a crash or \
         restart the controller comes back with every task, attempt, lease and worker, and \
         workers running tasks carry on with their leases (default: in memory only)",
        "DIR",
    );
    o.optflag("v", "verbose", "log debug lines (or WARP_LOG=debug)");
    o.optflag("q", "quiet", "log warnings and errors only");
    provision::options(&mut o);
    super::tls::options(&mut o);
    o
}

impl ServeConfig {
    /// Parses and checks `args` (after `serve`); `None` after printing `--help`. Binds nothing.
    pub fn from_args(args: &[String]) -> Result<Option<ServeConfig>, CliError> {
        let Some(m) = cli::parse_options_only(&options(), args, BRIEF)? else {
            return Ok(None);
        };
        let token_file = m.opt_str("token-file").map(PathBuf::from);
        // The token last: every flag is checked before a token file is created.
        let mut cfg = ControllerConfig::new(String::new());
        cfg.bind = m.opt_str("bind").unwrap_or(cfg.bind);
        cfg.port = number(&m, "port", 0u16)?;
        cfg.poll_hold = seconds(&m, "poll-hold", cfg.poll_hold)?;
        cfg.heartbeat_interval = seconds(&m, "heartbeat-interval", cfg.heartbeat_interval)?;
        cfg.heartbeat_timeout = seconds(&m, "heartbeat-timeout", cfg.heartbeat_timeout)?;
        cfg.task_timeout = seconds(&m, "task-timeout", cfg.task_timeout)?;
        cfg.max_attempts = number(&m, "max-attempts", cfg.max_attempts)?;
        cfg.max_body_bytes = number(&m, "max-body", cfg.max_body_bytes)?;
        cfg.max_connections = number(&m, "max-connections", cfg.max_connections)?;
        cfg.header_timeout = seconds(&m, "header-timeout", cfg.header_timeout)?;
        if m.opt_present("threads") {
            eprintln!(
                "warp-controller: warning: --threads is no longer used: every connection has its own thread"
            );
        }
        cfg.keep_finished = number(&m, "keep-finished", cfg.keep_finished)?;
        cfg.state_dir = match m.opt_str("state-dir") {
            Some(d) if d.is_empty() => return usage("--state-dir needs a directory"),
            Some(d) => Some(PathBuf::from(d)),
            None => None,
        };
        if cfg.max_attempts == 0 {
            return usage("--max-attempts must be at least 1");
        }
        if cfg.heartbeat_timeout.is_zero()
            || cfg.poll_hold.is_zero()
            || cfg.task_timeout.is_zero()
            || cfg.header_timeout.is_zero()
        {
            return usage(
                "--poll-hold, --heartbeat-timeout, --task-timeout and --header-timeout must be > 0",
            );
        }
        cfg.tls = super::tls::files(&m)?;
        let provision = ProvisionPlan::from_matches(
            &m,
            &cfg.bind,
            token_file.as_deref(),
            cfg.tls.as_ref().map(|t| t.cert.as_path()),
        )?;
        cfg.token = auth::resolve_token(token_file.as_deref(), true)?;
        let admin_token_file = m
            .opt_str("admin-token-file")
            .map(PathBuf::from)
            .or_else(|| match auth::from_env(auth::ADMIN_TOKEN_ENV) {
                Some(_) => None,
                None => token_file.as_deref().map(auth::default_admin_token_file),
            });
        cfg.admin_token = match &admin_token_file {
            Some(f) => auth::token_from_file(f, true)?,
            // Only the enrollment token was given, in the environment: it is also the admin
            // token (as before the tokens were split); `run` warns.
            None => auth::from_env(auth::ADMIN_TOKEN_ENV).unwrap_or_else(|| cfg.token.clone()),
        };
        let view_token_file = m.opt_str("view-token-file").map(PathBuf::from);
        cfg.view_token = match &view_token_file {
            Some(f) => Some(auth::token_from_file(f, true)?),
            None => auth::from_env(auth::VIEW_TOKEN_ENV),
        };
        Ok(Some(ServeConfig {
            controller: cfg,
            token_file,
            admin_token_file,
            view_token_file,
            port_file: m.opt_str("port-file").map(PathBuf::from),
            provision,
            log_level: if m.opt_present("verbose") {
                log::LevelFilter::Debug
            } else if m.opt_present("quiet") {
                log::LevelFilter::Warn
            } else {
                log::LevelFilter::Info
            },
        }))
    }
}

/// Runs the controller until SIGINT/SIGTERM.
pub fn run(cfg: ServeConfig) -> Result<(), CliError> {
    logging::init(cfg.log_level);
    cli::install_signal_handlers();
    log::info!(
        "warp-controller {} (protocol {}) starting",
        warp_common::VERSION,
        warp_common::PROTOCOL_VERSION
    );
    log::info!("configuration: {}", cfg.controller.describe());
    let from = |file: &Option<PathBuf>, env: &str| match file {
        Some(p) => format!("file {}", p.display()),
        None => env.to_string(),
    };
    log::info!(
        "tokens: enrollment from {}, admin from {}, view {}",
        from(&cfg.token_file, auth::TOKEN_ENV),
        from(&cfg.admin_token_file, auth::ADMIN_TOKEN_ENV),
        match (&cfg.view_token_file, &cfg.controller.view_token) {
            (Some(p), _) => format!("from file {}", p.display()),
            (None, Some(_)) => format!("from {}", auth::VIEW_TOKEN_ENV),
            (None, None) => "none (monitoring takes the admin token)".into(),
        }
    );
    if cfg.controller.admin_token == cfg.controller.token {
        log::warn!(
            "the admin token is the enrollment token: every worker node can submit and cancel \
             tasks. Give serve --admin-token-file FILE (or WARP_ADMIN_TOKEN) to separate them"
        );
    }
    let bind = cfg.controller.bind.clone();
    let controller = Controller::start(cfg.controller).map_err(CliError::Failed)?;
    let provisioner = match &cfg.provision {
        None => None,
        Some(plan) => match plan.start(&controller) {
            Ok(p) => Some(p),
            Err(e) => {
                controller.shutdown();
                return Err(e);
            }
        },
    };
    if let Some(path) = &cfg.port_file
        && let Err(e) = std::fs::write(path, format!("{}\n", controller.port()))
    {
        if let Some(p) = provisioner {
            p.stop();
        }
        controller.shutdown();
        return Err(failed(format!(
            "cannot write --port-file {}: {e}",
            path.display()
        )));
    }
    println!(
        "listening on {}://{bind}:{}",
        controller.scheme(),
        controller.port()
    );
    println!(
        "status page: {}://{bind}:{}/ ({})",
        controller.scheme(),
        controller.port(),
        match &cfg.view_token_file {
            Some(f) => format!("view token in {}", f.display()),
            None => "give it the view or admin token".into(),
        }
    );
    let _ = std::io::stdout().flush();
    while !cli::STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
    log::info!("signal received: shutting down");
    if let Some(p) = provisioner {
        p.stop();
    }
    controller.shutdown();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_util::args;

    /// The regression of issue 10: `--provision-var bad` was a usage error only after the
    /// controller was listening under `preprocess`; now it is found before anything starts.
    #[test]
    fn provision_var_without_equals_is_a_usage_error_before_binding() {
        let dir = crate::test_util::TempDir::new("serve-cfg");
        let template = dir.join("t.sbatch");
        std::fs::write(&template, "#!/bin/sh\n{{controller_url}} {{partition}}\n").unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "secret\n").unwrap();
        let base = [
            "--token-file",
            token.to_str().unwrap(),
            "--provision",
            "slurm",
            "--provision-template",
            template.to_str().unwrap(),
        ];
        let mut bad = args(&base);
        bad.extend(args(&["--provision-var", "bad"]));
        let e = ServeConfig::from_args(&bad).unwrap_err();
        assert!(
            matches!(&e, CliError::Usage(m) if m.contains("--provision-var 'bad'")),
            "{e:?}"
        );
        // A placeholder without a value is found before binding too.
        let e = ServeConfig::from_args(&args(&base)).unwrap_err();
        assert!(
            matches!(&e, CliError::Usage(m) if m.contains("partition")),
            "{e:?}"
        );
        let mut good = args(&base);
        good.extend(args(&["--provision-var", "partition=gpu"]));
        let cfg = ServeConfig::from_args(&good).unwrap().unwrap();
        assert!(cfg.provision.is_some());
    }

    /// Issue 16: the admin token is its own secret, by default `admin-token` beside the
    /// enrollment token file (created mode 600); `--admin-token-file` and
    /// `--view-token-file` name other files.
    #[test]
    fn tokens_are_three_files_with_the_admin_one_beside_the_enrollment_one() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::test_util::TempDir::new("serve-tokens");
        let token = dir.join("token");
        let cfg = ServeConfig::from_args(&args(&["--token-file", token.to_str().unwrap()]))
            .unwrap()
            .unwrap();
        let admin_file = dir.join("admin-token");
        let admin = std::fs::read_to_string(&admin_file).unwrap();
        assert_eq!(cfg.controller.admin_token, admin.trim());
        assert_ne!(cfg.controller.admin_token, cfg.controller.token);
        assert_eq!(cfg.controller.view_token, None);
        let mode = std::fs::metadata(&admin_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (a, v) = (dir.join("elsewhere/a"), dir.join("v"));
        std::fs::create_dir_all(dir.join("elsewhere")).unwrap();
        let cfg = ServeConfig::from_args(&args(&[
            "--token-file",
            token.to_str().unwrap(),
            "--admin-token-file",
            a.to_str().unwrap(),
            "--view-token-file",
            v.to_str().unwrap(),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            cfg.controller.admin_token,
            std::fs::read_to_string(&a).unwrap().trim()
        );
        assert_eq!(
            cfg.controller.view_token.as_deref(),
            Some(std::fs::read_to_string(&v).unwrap().trim())
        );
        assert_eq!(cfg.admin_token_file.as_deref(), Some(a.as_path()));
    }

    #[test]
    fn bad_numbers_and_stray_arguments_are_usage_errors() {
        for a in [
            &["--port", "99999"][..],
            &["--max-attempts", "0"],
            &["--poll-hold", "0"],
            &["stray"],
            &["--provision", "pbs"],
            &["--provision-template", "x"],
        ] {
            // A token file that cannot be created: every flag is checked before the token is
            // resolved, so the answer is the usage error (2), not the I/O failure (1).
            let mut a = args(a);
            a.extend(args(&["--token-file", "/nonexistent-warp-dir/token"]));
            let e = ServeConfig::from_args(&a).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{a:?}: {e:?}");
        }
    }
}

//! The worker's configuration: command-line parsing, defaults and their documentation.
//!
//! Two modes: *pull* (`--controller`: register, long-poll, heartbeat; the normal mode) and
//! *direct* (`-p PORT --pipe NAME`: Warp's traditional worker serving its own REST API).
//! Secrets never come from the command line: the enrollment token is read from `--token-file`
//! or `WARP_TOKEN`.

use crate::signals::StopSignal;
use std::path::PathBuf;
use std::time::Duration;
use warp_common::{normalize_controller_url, parse_seconds};
use warp_kernels::backend::BackendChoice;

/// Default `--register-retries`.
pub const DEFAULT_REGISTER_RETRIES: u32 = 5;
/// Default `--batch`: enough to take a program task's HTTP round trip out of its cost (a
/// 1 ms task 16 to a call), small enough that a batch's results are not held long.
pub const DEFAULT_BATCH: u32 = 16;

/// The largest `--batch` (the controller takes at most 256 reports in one call).
pub const MAX_BATCH: u32 = 128;

/// Default `--reconnect-for`: how long a worker keeps trying a controller that went away (a
/// worker under SLURM keeps its allocation that long; a slow controller restart must not drain
/// a whole fleet).
pub const DEFAULT_RECONNECT_FOR: Duration = Duration::from_secs(30 * 60);
/// Default `--backoff-base`.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Default `--backoff-max`.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Default `--poll-timeout-margin`: added to the controller's poll hold for the read timeout.
pub const DEFAULT_POLL_MARGIN: Duration = Duration::from_secs(10);
/// Default `--running-report-delay`.
pub const DEFAULT_RUNNING_REPORT_DELAY: Duration = Duration::from_millis(50);
/// Default `--pulse-timeout` of direct mode.
pub const DEFAULT_PULSE_TIMEOUT: Duration = Duration::from_secs(10);

/// What `main` should do.
#[derive(Debug)]
pub enum Parsed {
    /// Run the worker.
    Run(Box<Config>),
    /// Print [`usage`] and exit 0.
    Help,
    /// Print the version and exit 0.
    Version,
}

/// A resolved configuration of either mode.
#[derive(Debug, Clone)]
pub enum Config {
    /// Pull mode.
    Pull(PullConfig),
    /// Direct (traditional) mode.
    Direct(DirectConfig),
}

/// Configuration of pull mode.
#[derive(Clone)]
pub struct PullConfig {
    /// Controller base URL, normalised to `http(s)://host:port`.
    pub controller: String,
    /// Enrollment token (never logged).
    pub token: String,
    /// Device index (`-d`).
    pub device: i32,
    /// Compute backend (`--backend`).
    pub backend: BackendChoice,
    /// Read the next task's files while the current one computes (off: `--no-read-ahead`).
    pub read_ahead: bool,
    /// The most tasks taken in one assignment (`--batch`, [`DEFAULT_BATCH`]); the controller
    /// batches only tasks it measured as short. 1: one at a time.
    pub batch: u32,
    /// Host name sent at registration.
    pub hostname: String,
    /// No log lines on stderr.
    pub silent: bool,
    /// Log at debug level.
    pub verbose: bool,
    /// HTTP proxy for controller traffic; none unless given.
    pub proxy: Option<String>,
    /// CA certificate(s) an https controller's certificate is checked against (`--ca-file`,
    /// `WARP_CA_FILE`); none: the public authorities.
    pub ca_file: Option<std::path::PathBuf>,
    /// Overrides the controller's heartbeat interval.
    pub heartbeat_interval: Option<Duration>,
    /// Added to the controller's poll hold to form the poll's read timeout.
    pub poll_timeout_margin: Duration,
    /// Registration retries after the first attempt.
    pub register_retries: u32,
    /// How long the controller may stay unreachable (failed calls in a row) before the worker
    /// gives up and exits 1.
    pub reconnect_for: Duration,
    /// Also give up after this many failed calls in a row (none by default: time decides).
    pub reconnect_retries: Option<u32>,
    /// First backoff step.
    pub backoff_base: Duration,
    /// Largest backoff step.
    pub backoff_max: Duration,
    /// A task still running after this long is reported `running` by the heartbeat thread.
    pub running_report_delay: Duration,
    /// Exit 0 after this long without a task.
    pub idle_exit: Option<Duration>,
    /// `WARP_SPAWN_ID`, sent at registration.
    pub spawn_id: Option<String>,
    /// Triggering it stops the worker as SIGTERM does (for callers of the library).
    pub stop: StopSignal,
}

impl PullConfig {
    /// Defaults for everything but the controller URL (normalised) and the token.
    pub fn new(controller: &str, token: &str) -> Result<PullConfig, String> {
        Ok(PullConfig {
            controller: normalize_controller_url(controller)
                .map_err(|e| format!("--controller {e}"))?,
            token: token.to_string(),
            device: 0,
            backend: BackendChoice::Auto,
            read_ahead: true,
            batch: DEFAULT_BATCH,
            hostname: hostname(),
            silent: false,
            verbose: false,
            proxy: None,
            ca_file: None,
            heartbeat_interval: None,
            poll_timeout_margin: DEFAULT_POLL_MARGIN,
            register_retries: DEFAULT_REGISTER_RETRIES,
            reconnect_for: DEFAULT_RECONNECT_FOR,
            reconnect_retries: None,
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_max: DEFAULT_BACKOFF_MAX,
            running_report_delay: DEFAULT_RUNNING_REPORT_DELAY,
            idle_exit: None,
            spawn_id: None,
            stop: StopSignal::new(),
        })
    }
}

impl std::fmt::Debug for PullConfig {
    /// Everything but the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "controller={} device={} hostname={} proxy={} heartbeat_interval={} \
             poll_timeout_margin={:?} register_retries={} reconnect_for={:?} reconnect_retries={:?} backoff={:?}..{:?} \
             running_report_delay={:?} idle_exit={:?} batch={} spawn_id={} silent={} token=<{} bytes>",
            self.controller,
            self.device,
            self.hostname,
            self.proxy
                .as_deref()
                .map(redact_userinfo)
                .unwrap_or_else(|| "none".into()),
            self.heartbeat_interval
                .map_or("controller's".into(), |d| format!("{d:?}")),
            self.poll_timeout_margin,
            self.register_retries,
            self.reconnect_for,
            self.reconnect_retries,
            self.backoff_base,
            self.backoff_max,
            self.running_report_delay,
            self.idle_exit,
            self.batch,
            self.spawn_id.as_deref().unwrap_or("none"),
            self.silent,
            self.token.len(),
        )
    }
}

/// Configuration of direct mode.
#[derive(Debug, Clone)]
pub struct DirectConfig {
    /// Device index (`-d`).
    pub device: i32,
    /// Compute backend (`--backend`).
    pub backend: BackendChoice,
    /// Port to bind; 0 picks a free one.
    pub port: u16,
    /// Where the bound port is written (a FIFO the parent made, or a file).
    pub pipe: PathBuf,
    /// Address to bind.
    pub bind: String,
    /// Exit when no pulse arrived for this long.
    pub pulse_timeout: Duration,
    /// No log lines on stderr.
    pub silent: bool,
    /// Log at debug level.
    pub verbose: bool,
    /// Triggering it stops the server as SIGTERM does.
    pub stop: StopSignal,
}

impl DirectConfig {
    /// Defaults for everything but the port and the pipe.
    pub fn new(port: u16, pipe: impl Into<PathBuf>) -> DirectConfig {
        DirectConfig {
            device: 0,
            backend: BackendChoice::Auto,
            port,
            pipe: pipe.into(),
            bind: "127.0.0.1".into(),
            pulse_timeout: DEFAULT_PULSE_TIMEOUT,
            silent: false,
            verbose: false,
            stop: StopSignal::new(),
        }
    }
}

/// This host's name, or "unknown".
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if r != 0 || end == 0 {
        return "unknown".into();
    }
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn options() -> getopts::Options {
    let mut o = getopts::Options::new();
    o.optopt(
        "d",
        "device",
        "device index served by this worker, -1 for CPU (default 0)",
        "N",
    )
    .optopt(
        "",
        "backend",
        "compute backend: auto (GPU -d N when usable, else CPU, saying why), cpu, or cuda (fail without a usable GPU); default auto",
        "KIND",
    )
    .optflag(
        "s",
        "silent",
        "no log lines on stderr (the console buffer keeps them)",
    )
    .optflag("v", "verbose", "log at debug level (also WARP_LOG=debug)")
    .optflag("h", "help", "print this help")
    .optflag("V", "version", "print the version")
    // Pull mode.
    .optopt(
        "",
        "controller",
        "controller address: host:port, http://host:port or https://host:port",
        "URL",
    )
    .optopt(
        "",
        "token-file",
        "file holding the enrollment token (else env WARP_TOKEN)",
        "F",
    )
    .optopt(
        "",
        "proxy",
        "HTTP proxy for controller traffic (default: none)",
        "URL",
    )
    .optopt(
        "",
        "ca-file",
        "PEM certificate(s) to trust for an https:// controller (scripts/make-cert.sh: its cert.pem); else WARP_CA_FILE, else the public authorities",
        "F",
    )
    .optopt(
        "",
        "heartbeat-interval",
        "heartbeat period (default: the controller's)",
        "S",
    )
    .optopt(
        "",
        "poll-timeout-margin",
        "added to the poll hold (default 10)",
        "S",
    )
    .optopt(
        "",
        "register-retries",
        "registration retries (default 5)",
        "N",
    )
    .optopt(
        "",
        "reconnect-for",
        "keep trying a controller that went away this long before exit 1 (default 1800)",
        "S",
    )
    .optopt(
        "",
        "reconnect-retries",
        "also exit after N failed calls in a row (default: no count, --reconnect-for decides)",
        "N",
    )
    .optopt("", "backoff-base", "first backoff step (default 0.5)", "S")
    .optopt("", "backoff-max", "largest backoff step (default 30)", "S")
    .optopt(
        "",
        "hostname",
        "host name to register (default: this host's)",
        "NAME",
    )
    .optopt(
        "",
        "running-report-delay",
        "report 'running' after (default 0.05)",
        "S",
    )
    .optopt(
        "",
        "idle-exit",
        "deregister and exit 0 after S seconds without work",
        "S",
    )
    .optflag(
        "",
        "no-read-ahead",
        "do not read the next task's movie into the page cache while the current one computes",
    )
    .optopt(
        "",
        "batch",
        "take up to N short tasks per assignment and report them together (default 16; 1: one \
         at a time; the controller batches only task kinds it measured as short, ~20 ms of work)",
        "N",
    )
    // Direct mode.
    .optopt(
        "p",
        "port",
        "direct mode: serve the REST API on PORT (0: any free)",
        "PORT",
    )
    .optopt(
        "",
        "pipe",
        "direct mode: write the bound port to this FIFO or file",
        "NAME",
    )
    .optopt(
        "",
        "bind",
        "direct mode: address to bind (default 127.0.0.1)",
        "ADDR",
    )
    .optopt(
        "",
        "pulse-timeout",
        "direct mode: exit without a pulse for S (default 10)",
        "S",
    );
    o
}

/// The full `--help` text.
pub fn usage() -> String {
    let brief = format!(
        "warp-worker {} — runs Warp commands for a controller (pull mode) or serves them itself \
         (direct mode)

Usage:
  warp-worker -d N --controller HOST:PORT [--token-file F] [options]   (pull mode)
  warp-worker -d N -p PORT --pipe NAME [options]                       (direct mode)

Pull mode registers with the controller, long-polls for tasks, heartbeats from a background
thread and reports status; it needs only outbound connections. Direct mode serves Warp's
traditional REST API on PORT and writes the bound port to NAME.

Environment:
  WARP_TOKEN     enrollment token, when --token-file is not given (pull mode needs one; tokens
                 are never accepted on the command line, where every user can read them)
  WARP_CA_FILE   CA certificate(s) for an https:// controller, when --ca-file is not given
  WARP_SPAWN_ID  tag sent at registration so whoever spawned the worker can find it
  WARP_LOG       log level: error, warn, info (default), debug, trace

Proxies: HTTP_PROXY and friends are ignored on purpose: a cluster's proxy usually cannot reach
the controller on an internal address and would swallow its traffic. Use --proxy to set one.

SIGTERM/SIGINT: cancel the running task (its process group is killed), deregister so the
controller re-queues it, exit 0. A second SIGINT exits at once;
repeated SIGTERMs (a batch job signalled twice) are ignored.

Seconds (S) accept fractions: 0.5, 1e-3. Exit status: 0 clean exit (SIGTERM, --idle-exit,
Exit route, pulse timeout), 1 failure (controller lost, registration refused, protocol
version mismatch), 2 usage error, 3 the GPU failed its health check after a command error
(the task was handed back to the controller uncounted; replace or reset the device).",
        warp_common::VERSION
    );
    options().usage(&brief)
}

fn number<T: std::str::FromStr>(m: &getopts::Matches, name: &str) -> Result<Option<T>, String> {
    m.opt_str(name)
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|_| format!("--{name}: '{v}' is not a valid number"))
        })
        .transpose()
}

fn seconds(m: &getopts::Matches, name: &str) -> Result<Option<Duration>, String> {
    m.opt_str(name)
        .map(|v| parse_seconds(&v).map_err(|e| format!("--{name}: {e}")))
        .transpose()
}

/// Parses the arguments (without the program name); `env` looks up environment variables.
/// The error is a usage message (exit status 2).
pub fn parse_args(args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Parsed, String> {
    if args
        .iter()
        .any(|a| a == "--token" || a.starts_with("--token="))
    {
        return Err(
            "--token is not accepted: every user on the host can read command lines. \
                    Put the token in a file (--token-file F) or in WARP_TOKEN"
                .into(),
        );
    }
    let m = options().parse(args).map_err(|e| e.to_string())?;
    if m.opt_present("help") {
        return Ok(Parsed::Help);
    }
    if m.opt_present("version") {
        return Ok(Parsed::Version);
    }
    if let Some(extra) = m.free.first() {
        return Err(format!("unexpected argument '{extra}'"));
    }
    let device = number::<i32>(&m, "device")?.unwrap_or(0);
    if device < -1 {
        return Err(format!(
            "--device {device}: must be -1 (CPU) or a device index >= 0"
        ));
    }
    let silent = m.opt_present("silent");
    let verbose = m.opt_present("verbose");
    let backend: BackendChoice = match m.opt_str("backend") {
        Some(b) => b.parse().map_err(|e| format!("--backend: {e}"))?,
        None => BackendChoice::Auto,
    };
    let direct_only = ["pipe", "bind", "pulse-timeout"];
    let pull_only = [
        "controller",
        "token-file",
        "proxy",
        "ca-file",
        "heartbeat-interval",
        "poll-timeout-margin",
        "register-retries",
        "reconnect-for",
        "reconnect-retries",
        "backoff-base",
        "backoff-max",
        "hostname",
        "running-report-delay",
        "idle-exit",
        "no-read-ahead",
        "batch",
    ];
    if let Some(port) = number::<u16>(&m, "port")? {
        if let Some(flag) = pull_only.iter().find(|f| m.opt_present(f)) {
            return Err(format!(
                "--{flag} belongs to pull mode and cannot be used with -p/--port"
            ));
        }
        let pipe = m
            .opt_str("pipe")
            .ok_or("direct mode (-p/--port) needs --pipe NAME")?;
        let mut c = DirectConfig::new(port, pipe);
        c.device = device;
        c.backend = backend;
        c.silent = silent;
        c.verbose = verbose;
        if let Some(b) = m.opt_str("bind") {
            c.bind = b;
        }
        c.pulse_timeout = seconds(&m, "pulse-timeout")?.unwrap_or(DEFAULT_PULSE_TIMEOUT);
        return Ok(Parsed::Run(Box::new(Config::Direct(c))));
    }
    if let Some(flag) = direct_only.iter().find(|f| m.opt_present(f)) {
        return Err(format!(
            "--{flag} belongs to direct mode, which needs -p/--port"
        ));
    }
    let controller = m
        .opt_str("controller")
        .ok_or("give --controller HOST:PORT (pull mode) or -p PORT --pipe NAME (direct mode)")?;
    let token = match m.opt_str("token-file") {
        Some(f) => std::fs::read_to_string(&f)
            .map_err(|e| format!("--token-file {f}: cannot read it: {e}"))?
            .trim()
            .to_string(),
        None => env("WARP_TOKEN")
            .map(|t| t.trim().to_string())
            .unwrap_or_default(),
    };
    if token.is_empty() {
        return Err(
            "pull mode needs the enrollment token: give --token-file F or set WARP_TOKEN \
                    (a given file or variable must not be empty)"
                .into(),
        );
    }
    let mut c = PullConfig::new(&controller, &token)?;
    c.device = device;
    c.backend = backend;
    c.silent = silent;
    c.verbose = verbose;
    c.proxy = m.opt_str("proxy");
    c.ca_file = warp_common::tls::ca_file(m.opt_str("ca-file"));
    if let Some(f) = &c.ca_file {
        if c.controller.starts_with("https://") {
            // Read and checked now, so a wrong file is a usage error, not a retry loop.
            warp_common::tls::client_config(f)?;
        } else {
            // Parsed before the logger starts: straight to stderr.
            eprintln!(
                "warp-worker: warning: --ca-file/WARP_CA_FILE {} is not used: the controller URL is http://",
                f.display()
            );
        }
    }
    if let Some(h) = m.opt_str("hostname") {
        c.hostname = h;
    }
    c.heartbeat_interval = seconds(&m, "heartbeat-interval")?;
    if c.heartbeat_interval.is_some_and(|d| d.is_zero()) {
        return Err("--heartbeat-interval must be > 0".into());
    }
    c.poll_timeout_margin = seconds(&m, "poll-timeout-margin")?.unwrap_or(DEFAULT_POLL_MARGIN);
    c.register_retries = number(&m, "register-retries")?.unwrap_or(DEFAULT_REGISTER_RETRIES);
    c.reconnect_for = seconds(&m, "reconnect-for")?.unwrap_or(DEFAULT_RECONNECT_FOR);
    c.reconnect_retries = number(&m, "reconnect-retries")?;
    if c.reconnect_retries == Some(0) {
        return Err("--reconnect-retries must be at least 1".into());
    }
    c.backoff_base = seconds(&m, "backoff-base")?.unwrap_or(DEFAULT_BACKOFF_BASE);
    c.backoff_max = seconds(&m, "backoff-max")?.unwrap_or(DEFAULT_BACKOFF_MAX);
    c.running_report_delay =
        seconds(&m, "running-report-delay")?.unwrap_or(DEFAULT_RUNNING_REPORT_DELAY);
    c.idle_exit = seconds(&m, "idle-exit")?;
    c.read_ahead = !m.opt_present("no-read-ahead");
    c.batch = number(&m, "batch")?.unwrap_or(DEFAULT_BATCH);
    if !(1..=MAX_BATCH).contains(&c.batch) {
        return Err(format!("--batch must be between 1 and {MAX_BATCH}"));
    }
    c.spawn_id = env("WARP_SPAWN_ID").filter(|s| !s.is_empty());
    Ok(Parsed::Run(Box::new(Config::Pull(c))))
}

/// A proxy URL with any `user:password@` replaced, for logs.
fn redact_userinfo(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    match rest.split_once('@') {
        Some((_, host)) if !host.is_empty() => {
            let sep = if scheme.is_empty() { "" } else { "://" };
            format!("{scheme}{sep}<redacted>@{host}")
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    /// Issue 10: the help left out exit code 3 (GPU unhealthy).
    #[test]
    fn help_lists_every_exit_code() {
        let u = super::usage();
        for code in [
            "0 clean exit",
            "1 failure",
            "2 usage error",
            "3 the GPU failed",
        ] {
            assert!(u.contains(code), "--help lacks '{code}'");
        }
    }

    #[test]
    fn proxy_credentials_are_redacted_for_logs() {
        assert_eq!(
            redact_userinfo("http://u:secret@proxy:3128"),
            "http://<redacted>@proxy:3128"
        );
        assert_eq!(redact_userinfo("http://proxy:3128"), "http://proxy:3128");
        assert_eq!(redact_userinfo("u:p@proxy:1"), "<redacted>@proxy:1");
    }

    use super::*;

    fn parse(args: &[&str], token: Option<&str>) -> Result<Parsed, String> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let token = token.map(str::to_string);
        parse_args(&args, &move |k| {
            if k == "WARP_TOKEN" {
                token.clone()
            } else {
                None
            }
        })
    }

    #[test]
    fn controller_urls_are_normalised() {
        for input in ["h:1", "http://h:1", "http://h:1/", "h:1/"] {
            assert_eq!(
                PullConfig::new(input, "t").unwrap().controller,
                "http://h:1"
            );
        }
        if warp_common::tls::TLS_BUILT {
            assert_eq!(
                PullConfig::new("https://h:1/", "t").unwrap().controller,
                "https://h:1"
            );
        } else {
            let err = PullConfig::new("https://h:1", "t").unwrap_err();
            assert!(err.contains("--controller") && err.contains("tls"), "{err}");
        }
        assert!(PullConfig::new("http://h:1/api", "t").is_err());
    }

    #[test]
    fn pull_mode_needs_a_token_from_file_or_env_never_the_command_line() {
        let err = parse(&["--controller", "h:1"], None).unwrap_err();
        assert!(
            err.contains("--token-file") && err.contains("WARP_TOKEN"),
            "{err}"
        );
        assert!(parse(&["--controller", "h:1", "--token", "x"], None).is_err());
        let args = ["--controller", "h:1/", "-d", "2", "--backoff-base", "0.01"];
        let Ok(Parsed::Run(b)) = parse(&args, Some(" t ")) else {
            panic!("config expected")
        };
        let Config::Pull(c) = *b else {
            panic!("pull config expected")
        };
        assert_eq!(
            (c.controller.as_str(), c.token.as_str(), c.device),
            ("http://h:1", "t", 2)
        );
        assert_eq!(c.backoff_base, Duration::from_millis(10));
        assert!(!format!("{c:?}").contains("token=t"));
    }

    #[test]
    fn direct_mode_needs_a_pipe_and_refuses_pull_flags() {
        assert!(parse(&["-p", "0"], None).unwrap_err().contains("--pipe"));
        assert!(parse(&["-p", "0", "--pipe", "x", "--controller", "h:1"], None).is_err());
        assert!(parse(&["--pipe", "x"], None).is_err());
        let Ok(Parsed::Run(b)) = parse(&["-p", "0", "--pipe", "x", "-s"], None) else {
            panic!("config expected")
        };
        let Config::Direct(c) = *b else {
            panic!("direct config expected")
        };
        assert!(c.silent && c.port == 0 && c.bind == "127.0.0.1");
        assert!(parse(&["-d", "-2", "-p", "0", "--pipe", "x"], None).is_err());
    }
}

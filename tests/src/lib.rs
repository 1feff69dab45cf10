//! Harness for the end-to-end tests and `test-controller-architecture`: starts the real
//! `warp-controller` and `warp-worker` binaries on port 0 and stops every process it started by
//! its PID when the guard drops, also when a test fails.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use warp_controller::client::AdminClient;

/// Directory holding the workspace's binaries (`target/<profile>`), derived from this program.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.pop();
    }
    dir
}

/// Path of a workspace binary (`warp-controller`: `$WARP_CONTROLLER_BIN` when set). Under `cargo test` (where `$CARGO` is set) the binaries are
/// built first, once per test process, so the tests never run stale ones.
pub fn bin(name: &str) -> PathBuf {
    // Another build of the controller (the chaos test's, with failpoints).
    if name == "warp-controller"
        && let Some(p) = std::env::var_os("WARP_CONTROLLER_BIN")
    {
        return PathBuf::from(p);
    }
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let dir = bin_dir();
    if let Ok(cargo) = std::env::var("CARGO") {
        let built = BUILT.get_or_init(|| {
            let mut cmd = Command::new(cargo);
            cmd.args([
                "build",
                "--quiet",
                "-p",
                "warp-job",
                "-p",
                "warp-worker",
                "--bins",
            ]);
            if dir.ends_with("release") {
                cmd.arg("--release");
            }
            let out = cmd
                .output()
                .map_err(|e| format!("cannot run cargo build: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "cargo build failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        });
        if let Err(e) = built {
            panic!("{e}");
        }
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: run `cargo build` first",
        path.display()
    );
    path
}

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory under the system temp dir.
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "warp-{tag}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (SIGKILL) and reaped on drop unless it already exited.
pub struct Proc {
    /// The process.
    pub child: Child,
    /// What was run, for failure messages.
    pub what: String,
    stderr_log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stderr captured to `log` (printed by [`Proc::stderr`]).
    pub fn spawn(mut cmd: Command, what: &str, log: PathBuf) -> Proc {
        let err = std::fs::File::create(&log).expect("stderr log");
        let child = cmd
            .stdin(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Proc {
            child,
            what: what.to_string(),
            stderr_log: log,
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a child we own and have not reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, sig);
        }
    }

    /// Waits up to `timeout` for the exit; returns the exit code (None = signal or still running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<Option<i32>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A `warp-controller serve` process on 127.0.0.1 and a free port.
pub struct ControllerProc {
    /// The process.
    pub proc: Proc,
    /// Its port.
    pub port: u16,
    /// The enrollment token (what workers get).
    pub token: String,
    /// The token file.
    pub token_file: PathBuf,
    /// The admin token (what clients get), from `admin-token` beside the token file.
    pub admin_token: String,
    /// `http://127.0.0.1:PORT` (`https://` when started with `--tls-cert`).
    pub url: String,
    /// The `--tls-cert` it was started with: what its clients trust.
    pub ca_file: Option<PathBuf>,
}

impl ControllerProc {
    /// Starts `warp-controller serve --bind 127.0.0.1 --port PORT` with extra flags, in `dir`.
    pub fn start(dir: &Path, port: u16, extra: &[&str]) -> ControllerProc {
        Self::spawn(dir, port, extra, None)
    }

    /// [`ControllerProc::start`] on port 0 with its open-file limit set to `files` (soft and
    /// hard, so the controller cannot raise it), through `sh -c 'ulimit -n'`.
    pub fn start_with_open_files(dir: &Path, files: u32, extra: &[&str]) -> ControllerProc {
        Self::spawn(dir, 0, extra, Some(files))
    }

    fn spawn(dir: &Path, port: u16, extra: &[&str], files: Option<u32>) -> ControllerProc {
        let token_file = dir.join("token");
        let port_file = dir.join(format!("port-{}", uuid::Uuid::new_v4()));
        let mut cmd = match files {
            None => Command::new(bin("warp-controller")),
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(bin("warp-controller"));
                c
            }
        };
        cmd.args(["serve", "--bind", "127.0.0.1", "--port", &port.to_string()])
            .arg("--token-file")
            .arg(&token_file)
            .arg("--port-file")
            .arg(&port_file)
            .args(extra)
            .stdout(Stdio::null());
        let log = dir.join(format!("controller-{}.log", uuid::Uuid::new_v4()));
        let mut proc = Proc::spawn(cmd, "warp-controller serve", log);
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file)
                && let Ok(p) = text.trim().parse::<u16>()
            {
                break p;
            }
            if let Ok(Some(s)) = proc.child.try_wait() {
                panic!(
                    "controller exited ({s}) before listening:\n{}",
                    proc.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "controller did not start:\n{}",
                proc.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
                .trim()
                .to_string()
        };
        let token = read(&token_file);
        // A build from before the tokens were split has one token for everything (so these
        // tests can be run against an older controller, to see them fail).
        let admin_file = token_file.with_file_name("admin-token");
        let admin_token = if admin_file.exists() {
            read(&admin_file)
        } else {
            token.clone()
        };
        let ca_file = extra
            .windows(2)
            .find(|w| w[0] == "--tls-cert")
            .map(|w| PathBuf::from(w[1]));
        let scheme = if ca_file.is_some() { "https" } else { "http" };
        ControllerProc {
            proc,
            port,
            token,
            admin_token,
            token_file,
            url: format!("{scheme}://127.0.0.1:{port}"),
            ca_file,
        }
    }

    /// An admin client (trusting the controller's certificate when it serves HTTPS).
    pub fn client(&self) -> AdminClient {
        AdminClient::with_ca(&self.url, &self.admin_token, self.ca_file.as_deref()).expect("client")
    }
}

/// Starts `warp-worker -d device --controller URL` with the token in the environment.
pub fn start_worker(dir: &Path, url: &str, token: &str, device: i32, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(bin("warp-worker"));
    cmd.args(["-d", &device.to_string(), "--controller", url])
        .args(extra)
        .env("WARP_TOKEN", token)
        .stdout(Stdio::null());
    let log = dir.join(format!("worker-{}.log", uuid::Uuid::new_v4()));
    Proc::spawn(cmd, "warp-worker", log)
}

/// Waits up to 20 s until `n` workers are online.
pub fn wait_online(client: &AdminClient, n: usize) {
    wait_for(
        Duration::from_secs(20),
        &format!("{n} workers online"),
        || {
            let w = client.workers(true).ok()?;
            (w.iter()
                .filter(|w| w.state != warp_common::protocol::WorkerState::Offline)
                .count()
                == n)
                .then_some(())
        },
    );
}

/// `have`, or a skip: a test that needs a tool this machine lacks prints `SKIP what: install`
/// and returns false, unless the environment variable `require` is `1` (CI), which makes the
/// missing tool a failure.
pub fn available_or_skip(have: bool, require: &str, what: &str, install: &str) -> bool {
    if !have {
        assert!(
            std::env::var(require).as_deref() != Ok("1"),
            "{what} is required ({require}=1): {install}"
        );
        eprintln!("SKIP {what}: not found ({install})");
    }
    have
}

/// Whether `python3` can import every module of `modules` (a reference reader a test checks
/// its files with). When it cannot, the test is skipped with a message, unless
/// `WARP_REQUIRE_REFERENCE_READERS=1` (CI) makes that a failure naming the packages (`pip`).
pub fn python_modules(modules: &[&str], pip: &str) -> bool {
    let have = Command::new("python3")
        .args(["-c", &format!("import {}", modules.join(", "))])
        .status()
        .is_ok_and(|s| s.success());
    available_or_skip(
        have,
        "WARP_REQUIRE_REFERENCE_READERS",
        &format!("reference readers (python3 modules {modules:?})"),
        &format!("pip install {pip}"),
    )
}

/// An HTTP client for the tests' own loopback servers (no proxy from the environment).
/// The status and JSON body of an HTTP error answer (a transport error panics).
pub fn status_of(err: ureq::Error) -> (u16, serde_json::Value) {
    match err {
        ureq::Error::Status(code, resp) => {
            (code, resp.into_json().unwrap_or(serde_json::Value::Null))
        }
        e => panic!("transport error: {e}"),
    }
}

pub fn http_agent() -> ureq::Agent {
    ureq::AgentBuilder::new().try_proxy_from_env(false).build()
}

/// Polls `f` every 10 ms until it returns Some or `timeout` passes (then panics with `what`).
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {:.1} s waiting for {what}",
            timeout.as_secs_f64()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether a process id is alive (and not a zombie of ours: those are reaped by [`Proc`]).
pub fn pid_alive(pid: u32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks existence.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// Reads a process's resident memory (VmRSS) in KiB from /proc.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let f = std::fs::File::open(format!("/proc/{pid}/status")).ok()?;
    BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
}

/// CPU time (user + system) the process `pid` has used, in milliseconds (`/proc/PID/stat`).
pub fn cpu_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks * 1000.0 / hz)
}

/// Percentile (0..=100) of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Whether a process has exited: gone from /proc, or a zombie waiting for its parent.
pub fn pid_exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

//! The warp worker: runs Warp commands for a controller, or serves them itself.
//!
//! * Pull mode ([`run_pull`]): register with the controller, long-poll for tasks, execute them,
//!   report status; a background thread heartbeats. Only outbound connections, so it runs on
//!   cluster nodes that accept none. Reconnects with backoff, re-registers when the controller
//!   forgot it, deregisters on SIGTERM.
//! * Direct mode ([`run_direct`]): Warp's traditional worker serving its own REST API on a port
//!   written to a named pipe.
//!
//! Map of the code:
//!
//! | module | what |
//! |---|---|
//! | [`config`] | flags, defaults, `--help` |
//! | [`client`] | typed HTTP client of the pull protocol (ureq) |
//! | [`pull`] | the main loop: register, poll, execute, report, reconnect |
//! | [`heartbeat`] | the heartbeat thread: liveness, `running`/progress reports, cancels |
//! | [`exec`] | command execution and the held (init) state |
//! | [`preprocess`] | the preprocessing commands and the movie/gain state they share |
//! | [`program`] | running an `Exec` program: one `poll` for its pipes, its exit (pidfd) and the cancel wake-up |
//! | [`console`] | the logger and its numbered ring buffer |
//! | [`direct`] | the direct mode server (tiny_http) |
//! | [`signals`] | SIGTERM/SIGINT and stop requests |
//!
//! The worker never decides scheduling: it runs what it is given, in order.

pub mod client;
pub mod config;
pub mod console;
pub mod direct;
pub mod exec;
pub mod heartbeat;
pub mod preprocess;
pub mod program;
pub mod pull;
pub mod readahead;
pub mod signals;
pub(crate) mod state;
#[cfg(test)]
mod test_util;

pub use config::{Config, DirectConfig, PullConfig};
pub use direct::run_direct;
pub use pull::run_pull;

/// Environment variables that hold secrets: never passed to `Exec` programs, and wiped from
/// this process once read ([`scrub_secrets`]).
pub const SECRET_ENV: &[&str] = &["WARP_TOKEN", "WARP_ADMIN_TOKEN", "WARP_VIEW_TOKEN"];

/// Once the configuration has read the token: overwrites the secrets' values in the process's
/// original environment block (what `/proc/PID/environ` shows, even to root), removes them
/// from the environment, and marks the process non-dumpable, so an `Exec` program (or anyone
/// else of the same user) cannot read them from this process.
///
/// # Safety
/// Call before any other thread starts: it changes the environment.
pub unsafe fn scrub_secrets() {
    for name in SECRET_ENV {
        let Ok(c) = std::ffi::CString::new(*name) else {
            continue;
        };
        // SAFETY: getenv returns NULL or a pointer to the value's NUL-terminated bytes, which
        // for the initial environment lie in the block the kernel set up; overwriting them in
        // place (same length) is what setproctitle-style code does.
        unsafe {
            let value = libc::getenv(c.as_ptr());
            if !value.is_null() {
                let len = libc::strlen(value);
                std::ptr::write_bytes(value, b'x', len);
            }
            std::env::remove_var(name);
        }
    }
    // SAFETY: prctl with PR_SET_DUMPABLE and plain integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
}

/// Why the worker stopped with a failure. Each message says what to check.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum WorkerError {
    /// The configuration cannot work (e.g. a malformed `--proxy`): a usage error.
    Config(String),
    /// The controller speaks another protocol version; its message names both.
    ProtocolMismatch {
        /// Controller URL.
        controller: String,
        /// The controller's explanation.
        message: String,
    },
    /// The controller refused the enrollment token (401).
    EnrollmentRefused {
        /// Controller URL.
        controller: String,
    },
    /// The controller refused the registration for another reason (4xx).
    RegistrationRefused {
        /// Controller URL.
        controller: String,
        /// Status, code and message of the refusal.
        message: String,
    },
    /// The controller could not be reached to register.
    RegistrationFailed {
        /// Controller URL.
        controller: String,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        last_error: String,
    },
    /// The controller stopped answering and did not come back.
    ControllerLost {
        /// Controller URL.
        controller: String,
        /// Consecutive failed calls.
        attempts: u32,
        /// How long the calls kept failing.
        for_s: f64,
        /// The last call's error.
        last_error: String,
    },
    /// A local resource failed (listening socket, pipe).
    Io {
        /// What the worker was doing, naming the flag involved.
        what: String,
        /// The error.
        error: String,
    },
    /// The GPU failed its health check after a command error; the worker handed its task back.
    Unhealthy(String),
}

impl std::fmt::Display for WorkerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerError::Config(m) => f.write_str(m),
            WorkerError::ProtocolMismatch {
                controller,
                message,
            } => write!(
                f,
                "protocol version mismatch with the controller at {controller}: {message} \
                 (use a worker and controller of the same release)"
            ),
            WorkerError::EnrollmentRefused { controller } => write!(
                f,
                "enrollment token refused by the controller at {controller}: \
                 check --token-file/WARP_TOKEN"
            ),
            WorkerError::RegistrationRefused {
                controller,
                message,
            } => {
                write!(
                    f,
                    "the controller at {controller} refused the registration: {message}"
                )
            }
            WorkerError::RegistrationFailed {
                controller,
                attempts,
                last_error,
            } => write!(
                f,
                "cannot register with the controller at {controller} after {attempts} attempts: \
                 {last_error} (is it running, and is --controller right?)"
            ),
            WorkerError::ControllerLost {
                controller,
                attempts,
                for_s,
                last_error,
            } => write!(
                f,
                "lost the controller at {controller}: {attempts} failed calls over {for_s:.1} s                  (--reconnect-for): {last_error}"
            ),
            WorkerError::Io { what, error } => write!(f, "{what}: {error}"),
            WorkerError::Unhealthy(reason) => write!(
                f,
                "the GPU failed its health check ({reason}); the task was handed back to the controller"
            ),
        }
    }
}

impl std::error::Error for WorkerError {}

impl WorkerError {
    /// The documented exit status: 2 for usage errors, 3 when the GPU failed its health check
    /// (the task went back to the controller; restart the worker elsewhere), 1 for the rest.
    pub fn exit_code(&self) -> i32 {
        match self {
            WorkerError::Config(_) => 2,
            WorkerError::Unhealthy(_) => 3,
            _ => 1,
        }
    }
}

/// The executor of a worker on `device` with the `backend` asked for, logging the choice (and,
/// for `auto` without a usable GPU, why). `cuda` without a usable GPU is an error that says
/// what is missing.
pub fn make_executor(
    backend: warp_kernels::backend::BackendChoice,
    device: i32,
) -> Result<exec::Executor, WorkerError> {
    let (b, line) =
        warp_kernels::backend::select_backend(backend, device).map_err(|e| WorkerError::Io {
            what: "no usable compute backend".into(),
            error: e,
        })?;
    log::info!("{line}");
    Ok(exec::Executor::with_backend(b))
}

/// Runs the worker as the binary does: installs the SIGTERM/SIGINT handlers, then runs the mode.
pub fn run(config: Config) -> Result<(), WorkerError> {
    signals::install().map_err(|e| WorkerError::Io {
        what: "cannot install the SIGTERM/SIGINT handlers".into(),
        error: e.to_string(),
    })?;
    signals::watch_parent(signals::global().clone());
    match config {
        Config::Pull(c) => run_pull(c),
        Config::Direct(c) => run_direct(c),
    }
}

pub(crate) fn log_level(verbose: bool) -> log::LevelFilter {
    if verbose {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    }
}

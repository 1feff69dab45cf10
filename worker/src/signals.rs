//! Stop requests: SIGTERM/SIGINT and the library's own [`StopSignal`].
//!
//! A signal handler may do almost nothing, so ours writes one byte to a pipe (the self-pipe
//! trick); a relay thread reads it and triggers the process-wide [`StopSignal`] returned by
//! [`global`]. Waiters select on [`StopSignal::receiver`], which disconnects when the stop is
//! triggered, so every waiter wakes at once without polling. A second SIGINT exits at once;
//! repeated SIGTERMs (a batch system signalling every process of a job) are ignored.

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// A one-shot stop request shared by clones: set once, seen by all.
#[derive(Clone, Debug)]
pub struct StopSignal {
    inner: Arc<StopInner>,
}

#[derive(Debug)]
struct StopInner {
    flag: AtomicBool,
    /// Dropped on trigger, which disconnects every clone of `rx`.
    tx: Mutex<Option<Sender<()>>>,
    rx: Receiver<()>,
}

impl Default for StopSignal {
    fn default() -> Self {
        StopSignal::new()
    }
}

impl StopSignal {
    /// A stop request not yet triggered.
    pub fn new() -> StopSignal {
        let (tx, rx) = crossbeam_channel::bounded(0);
        let inner = StopInner {
            flag: AtomicBool::new(false),
            tx: Mutex::new(Some(tx)),
            rx,
        };
        StopSignal {
            inner: Arc::new(inner),
        }
    }

    /// Requests the stop; idempotent.
    pub fn trigger(&self) {
        self.inner.flag.store(true, Ordering::SeqCst);
        self.inner
            .tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    /// Whether the stop was requested.
    pub fn is_triggered(&self) -> bool {
        self.inner.flag.load(Ordering::SeqCst)
    }

    /// A receiver that never yields a message and disconnects when the stop is triggered: use it
    /// in `crossbeam_channel::select!`.
    pub fn receiver(&self) -> Receiver<()> {
        self.inner.rx.clone()
    }

    /// Waits up to `timeout`; true when the stop was triggered.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        !matches!(
            self.inner.rx.recv_timeout(timeout),
            Err(RecvTimeoutError::Timeout)
        )
    }
}

/// The stop triggered by SIGTERM or SIGINT once [`install`] ran.
pub fn global() -> &'static StopSignal {
    static GLOBAL: OnceLock<StopSignal> = OnceLock::new();
    GLOBAL.get_or_init(StopSignal::new)
}

static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe calls here; keep errno intact for the interrupted code.
    let fd = WAKE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: errno location is thread-local and valid; write(2) is async-signal-safe.
        unsafe {
            let errno = *libc::__errno_location();
            let byte = sig as u8;
            libc::write(fd, (&raw const byte).cast(), 1);
            *libc::__errno_location() = errno;
        }
    }
}

/// Installs the SIGTERM and SIGINT handlers (once per process; later calls do nothing).
pub fn install() -> std::io::Result<()> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    INSTALLED
        .get_or_init(install_once)
        .map_err(std::io::Error::from_raw_os_error)
}

fn install_once() -> Result<(), i32> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(last_errno());
    }
    WAKE_FD.store(fds[1], Ordering::Relaxed);
    let read_fd = fds[0];
    std::thread::Builder::new()
        .name("signal-relay".into())
        .spawn(move || relay(read_fd))
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction is valid; the handler only calls async-signal-safe code.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(last_errno());
            }
        }
    }
    Ok(())
}

fn relay(read_fd: libc::c_int) {
    let mut stopping = false;
    loop {
        let mut byte = 0u8;
        // SAFETY: reads at most one byte into a valid buffer.
        let n = unsafe { libc::read(read_fd, (&raw mut byte).cast(), 1) };
        if n < 0 && last_errno() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            return;
        }
        let sig = libc::c_int::from(byte);
        if !stopping {
            stopping = true;
            log::info!("signal {sig} received: stopping (press Ctrl-C again to exit at once)");
            global().trigger();
        } else if sig == libc::SIGINT {
            // A person insisting. Batch systems send SIGTERM to every process of a job, and
            // launch scripts forward it too, so repeated SIGTERMs are normal and must not cut
            // the graceful stop short (the scheduler's SIGKILL bounds it anyway).
            log::warn!("second interrupt: exiting now");
            crate::exec::kill_running_program();
            std::process::exit(1);
        } else {
            log::info!("signal {sig} received again: already stopping");
        }
    }
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Environment variable naming the process that spawned this worker (set by the drop-in
/// wrappers). When that process dies without stopping its workers (killed, crashed), the worker
/// stops as on SIGTERM instead of lingering as an orphan.
pub const PARENT_PID_ENV: &str = "WARP_PARENT_PID";

/// Starts a thread that triggers `stop` once the parent named by [`PARENT_PID_ENV`] is gone
/// (this process was re-parented). Does nothing when the variable is unset or not a number.
pub fn watch_parent(stop: StopSignal) {
    let Some(parent) = std::env::var(PARENT_PID_ENV)
        .ok()
        .and_then(|v| v.parse::<libc::pid_t>().ok())
    else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("parent-watch".into())
        .spawn(move || {
            loop {
                // SAFETY: getppid(2) has no preconditions.
                if unsafe { libc::getppid() } != parent {
                    log::warn!("parent process {parent} is gone: stopping");
                    stop.trigger();
                    return;
                }
                if stop.wait_timeout(Duration::from_millis(500)) {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot watch the parent process: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signal_wakes_every_clone() {
        let s = StopSignal::new();
        let rx = s.clone().receiver();
        assert!(!s.wait_timeout(Duration::from_millis(1)));
        let t = std::thread::spawn(move || rx.recv().is_err());
        s.trigger();
        assert!(t.join().unwrap());
        assert!(s.is_triggered() && s.wait_timeout(Duration::from_secs(5)));
    }
}

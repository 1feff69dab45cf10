//! Running an `Exec` program: spawn, wait and read its output on the calling thread, without
//! polling.
//!
//! One `poll(2)` waits for everything at once: the program's stdout and stderr pipes, a pidfd
//! that becomes readable when the program exits (Linux 5.3 and later), and the cancel flag's
//! wake-up pipe ([`Waker`]), with the timeout as poll's own timeout. A program that exits after
//! 0.5 ms is seen at once (the old loop slept 2 ms first), and no thread is started per task.
//! On a kernel without `pidfd_open` the exit is checked with `waitid(WNOHANG)` between polls
//! of at most [`FALLBACK_CHECK`].
//!
//! The program runs in its own process group; when it exits, is cancelled or times out, the
//! whole group is killed (SIGKILL) before the leader is reaped, so nothing it started outlives
//! the command. Output still in the pipes is read for at most [`DRAIN_LIMIT`] after that (a
//! process that left the group may hold them open).

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use warp_common::commands::EXEC_TAIL_BYTES;

/// Without a pidfd, the longest wait between two checks of the program's exit.
pub const FALLBACK_CHECK: Duration = Duration::from_millis(5);

/// How long output is still read after the program's process group was killed.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// A self-pipe that makes a `poll` return: [`Waker::wake`] writes a byte to it.
#[derive(Debug)]
pub struct Waker {
    read: OwnedFd,
    write: OwnedFd,
}

impl Waker {
    /// A new pipe (both ends close-on-exec and non-blocking).
    pub fn new() -> std::io::Result<Waker> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two fds into the array on success.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: both fds were just created and are owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Waker { read, write })
    }

    /// Makes the read end readable (a full pipe is already readable, so an error is ignored).
    pub fn wake(&self) {
        // SAFETY: writes one byte from a valid buffer to our own pipe.
        let _ = unsafe { libc::write(self.write.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    }

    /// The end to poll.
    pub fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }
}

/// How the wait for the program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// It exited by itself.
    Exited,
    /// The cancel flag was set.
    Cancelled,
    /// The timeout passed.
    TimedOut,
}

/// What [`run`] observed.
#[derive(Debug)]
pub struct Finished {
    /// How the wait ended.
    pub ending: Ending,
    /// The leader's exit status.
    pub status: ExitStatus,
    /// The last [`EXEC_TAIL_BYTES`] of stdout.
    pub stdout_tail: Vec<u8>,
    /// The last [`EXEC_TAIL_BYTES`] of stderr.
    pub stderr_tail: Vec<u8>,
}

/// One output pipe: its tail, and the file that gets all of it.
struct Stream {
    fd: Option<OwnedFd>,
    tail: Vec<u8>,
    file: Option<(File, PathBuf)>,
    write_error: Option<String>,
}

impl Stream {
    fn new(pipe: Option<OwnedFd>, file: Option<(File, PathBuf)>) -> Stream {
        if let Some(fd) = &pipe {
            set_nonblocking(fd.as_raw_fd());
        }
        Stream {
            fd: pipe,
            tail: Vec::new(),
            file,
            write_error: None,
        }
    }

    /// Reads what is there; closes the pipe at its end.
    fn read_available(&mut self) {
        let Some(fd) = &self.fd else { return };
        let mut buf = [0u8; 16 * 1024];
        loop {
            // SAFETY: reads into a valid buffer from our own pipe.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                let chunk = &buf[..n as usize];
                self.tail.extend_from_slice(chunk);
                if self.tail.len() > 2 * EXEC_TAIL_BYTES {
                    let cut = self.tail.len() - EXEC_TAIL_BYTES;
                    self.tail.drain(..cut);
                }
                if let Some((f, path)) = &mut self.file
                    && self.write_error.is_none()
                    && let Err(e) = f.write_all(chunk)
                {
                    self.write_error = Some(format!("cannot write {}: {e}", path.display()));
                }
                continue;
            }
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::Interrupted => continue,
                    std::io::ErrorKind::WouldBlock => return,
                    _ => {}
                }
            }
            // End of file or a read error: the stream is done.
            self.fd = None;
            return;
        }
    }

    fn into_tail(self) -> (Vec<u8>, Option<String>) {
        let from = self.tail.len().saturating_sub(EXEC_TAIL_BYTES);
        (self.tail[from..].to_vec(), self.write_error)
    }
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on our own fd.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

/// A pidfd for `pid`, or `None` where the kernel has no `pidfd_open` (before 5.3).
fn pidfd_open(pid: libc::pid_t) -> Option<OwnedFd> {
    // SAFETY: the pidfd_open syscall takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a non-negative result is a new fd owned by nobody else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// True once `pid` has exited; leaves it unreaped (WNOWAIT) so its process group stays ours.
fn has_exited(pid: libc::pid_t) -> bool {
    // SAFETY: a zeroed siginfo_t is valid; waitid only writes into it.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
        let r = libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags);
        r != 0 || info.si_pid() != 0
    }
}

/// Milliseconds for poll: until `deadline` (rounded up), at most `cap`, -1 for neither.
fn poll_timeout(deadline: Option<Instant>, cap: Option<Duration>) -> libc::c_int {
    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    match (left, cap) {
        (None, None) => -1,
        (Some(l), None) => l.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int,
        (None, Some(c)) => c.as_millis().max(1) as libc::c_int,
        (Some(l), Some(c)) => {
            l.min(c).as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int
        }
    }
}

/// Waits in `poll(2)` on `fds` (readable), then reads the streams that have data.
/// Returns which of the extra fds (`pidfd`, `wake`) became readable.
fn wait_once(
    out: &mut Stream,
    err: &mut Stream,
    extra: &[RawFd],
    timeout: libc::c_int,
) -> Vec<bool> {
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(4);
    let mut slots = [None, None];
    for (i, s) in [&*out, &*err].into_iter().enumerate() {
        if let Some(fd) = &s.fd {
            slots[i] = Some(fds.len());
            fds.push(libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
    }
    let first_extra = fds.len();
    for &fd in extra {
        fds.push(libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
    }
    // SAFETY: fds is a valid array of pollfd of the given length.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
    if r <= 0 {
        // Timeout, or EINTR: the caller looks at the clock and the flags again.
        return vec![false; extra.len()];
    }
    let ready = |i: usize| fds[i].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
    if slots[0].is_some_and(ready) {
        out.read_available();
    }
    if slots[1].is_some_and(ready) {
        err.read_available();
    }
    (0..extra.len()).map(|i| ready(first_extra + i)).collect()
}

/// Opens `path` (relative to `cwd` when given) for a stream's whole output.
pub fn open_output(path: &str, cwd: Option<&str>) -> Result<(File, PathBuf), String> {
    let p = match cwd {
        Some(dir) if Path::new(path).is_relative() => Path::new(dir).join(path),
        _ => PathBuf::from(path),
    };
    if let Some(parent) = p.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    File::create(&p)
        .map(|f| (f, p.clone()))
        .map_err(|e| format!("cannot create {}: {e}", p.display()))
}

/// Waits for `child` (spawned with piped stdout and stderr, in its own process group) and
/// reads its output, until it exits, `cancelled()` turns true (checked whenever `wake`
/// becomes readable) or `deadline` passes. The group is killed and the leader reaped before
/// this returns. `files` get the whole of stdout and stderr. Errors: reaping failed, or a
/// file could not be written.
pub fn run(
    mut child: Child,
    deadline: Option<Instant>,
    wake: Option<&Waker>,
    cancelled: &dyn Fn() -> bool,
    files: [Option<(File, PathBuf)>; 2],
) -> Result<Finished, String> {
    let pid = child.id() as libc::pid_t;
    let [out_file, err_file] = files;
    let mut out = Stream::new(child.stdout.take().map(OwnedFd::from), out_file);
    let mut err = Stream::new(child.stderr.take().map(OwnedFd::from), err_file);
    let pidfd = pidfd_open(pid);
    let mut extra = Vec::with_capacity(2);
    if let Some(p) = &pidfd {
        extra.push(p.as_raw_fd());
    }
    if let Some(w) = wake {
        extra.push(w.fd());
    }
    let cap = pidfd.is_none().then_some(FALLBACK_CHECK);
    let ending = loop {
        if cancelled() {
            break Ending::Cancelled;
        }
        if pidfd.is_none() && has_exited(pid) {
            break Ending::Exited;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break Ending::TimedOut;
        }
        let ready = wait_once(&mut out, &mut err, &extra, poll_timeout(deadline, cap));
        if pidfd.is_some() && ready[0] {
            break Ending::Exited;
        }
        // A wake-up only says "look at the flag again", at the top of the loop. Empty the
        // pipe so it does not keep poll returning.
        if let Some(w) = wake
            && ready[ready.len() - 1]
        {
            let mut buf = [0u8; 64];
            // SAFETY: reads into a valid buffer from our own non-blocking pipe.
            unsafe { libc::read(w.fd(), buf.as_mut_ptr().cast(), buf.len()) };
        }
    };
    // The leader is not reaped yet, so its pid still names our group: kill what is left of it.
    // SAFETY: kill(2) on our own child's process group.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let status = child
        .wait()
        .map_err(|e| format!("cannot wait for process {pid}: {e}"))?;
    let drain_until = Instant::now() + DRAIN_LIMIT;
    while (out.fd.is_some() || err.fd.is_some()) && Instant::now() < drain_until {
        wait_once(
            &mut out,
            &mut err,
            &[],
            poll_timeout(Some(drain_until), None),
        );
    }
    let (stdout_tail, e1) = out.into_tail();
    let (stderr_tail, e2) = err.into_tail();
    if let Some(e) = e1.or(e2) {
        return Err(e);
    }
    Ok(Finished {
        ending,
        status,
        stdout_tail,
        stderr_tail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::{Command, Stdio};

    fn spawn(script: &str) -> Child {
        Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap()
    }

    #[test]
    fn a_quick_program_is_seen_at_once_and_its_output_kept() {
        let t = Instant::now();
        let f = run(
            spawn("echo out; echo err >&2"),
            None,
            None,
            &|| false,
            [None, None],
        )
        .unwrap();
        assert_eq!(f.ending, Ending::Exited);
        assert!(f.status.success());
        assert_eq!(f.stdout_tail, b"out\n");
        assert_eq!(f.stderr_tail, b"err\n");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[test]
    fn the_waker_ends_the_wait_for_a_cancel() {
        let w = Waker::new().unwrap();
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (f2, t) = (flag.clone(), Instant::now());
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                f2.store(true, std::sync::atomic::Ordering::SeqCst);
                w.wake();
            });
            let f = run(
                spawn("sleep 30"),
                None,
                Some(&w),
                &|| flag.load(std::sync::atomic::Ordering::SeqCst),
                [None, None],
            )
            .unwrap();
            assert_eq!(f.ending, Ending::Cancelled);
            assert_eq!(f.status.signal(), Some(libc::SIGKILL));
        });
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }

    #[test]
    fn a_timeout_kills_the_group_and_large_output_goes_whole_to_the_file() {
        let f = run(
            spawn("sleep 30"),
            Some(Instant::now() + Duration::from_millis(100)),
            None,
            &|| false,
            [None, None],
        )
        .unwrap();
        assert_eq!(f.ending, Ending::TimedOut);
        let dir = std::env::temp_dir().join(format!("warp-program-{}", std::process::id()));
        let file = open_output("sub/out.txt", Some(dir.to_str().unwrap())).unwrap();
        let f = run(
            spawn("i=0; while [ $i -lt 5000 ]; do echo line-$i; i=$((i+1)); done"),
            None,
            None,
            &|| false,
            [Some(file), None],
        )
        .unwrap();
        let all = std::fs::read_to_string(dir.join("sub/out.txt")).unwrap();
        assert_eq!(all.lines().count(), 5000);
        assert!(all.ends_with("line-4999\n"));
        assert_eq!(f.stdout_tail.len(), EXEC_TAIL_BYTES);
        assert!(f.stdout_tail.ends_with(b"line-4999\n"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

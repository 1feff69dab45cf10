//! warp patch: what one connection may cost, and whether it is still usable.
//!
//! Upstream had no timeouts: a client that sent half a header, or stopped reading its
//! responses, held its thread (and a handler thread) forever. A [`ConnState`] is shared by the
//! connection's read and write halves, its requests and the thread that drains an unread body:
//!
//! * a new connection, and every request once its first byte is read, must deliver its whole
//!   header (and a body of up to 1 KiB, read with it) within `header`;
//! * a larger body must arrive at `body_rate` bytes per second after a grace of `header`, and no
//!   single read waits longer than `io`;
//! * between requests a connection may stay idle `idle` once one of its requests was
//!   authenticated ([`ConnState::trust`]), `header` otherwise;
//! * every write waits at most `io` (the socket's send timeout, set at accept).
//!
//! A timeout or an error on either half marks the connection broken: its thread reads no
//! further request and later writes fail at once, so 200 pipelined requests from a client that
//! never reads cost one `io` wait, not 200.

use std::io::{Error as IoError, ErrorKind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Limits on one connection; see the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Idle time allowed between requests on an authenticated connection.
    pub idle: Duration,
    /// Time allowed for a request's header (and for an untrusted connection's idle time).
    pub header: Duration,
    /// Longest single read of a body or single write of a response.
    pub io: Duration,
    /// Slowest body accepted, in bytes per second (after the `header` grace).
    pub body_rate: u64,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            idle: Duration::from_secs(120),
            header: Duration::from_secs(10),
            io: Duration::from_secs(30),
            body_rate: 64 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for the first byte of the next request.
    Idle,
    /// Reading a header or body that must be complete by then.
    Until(Instant),
}

/// Shared state of one connection.
#[derive(Debug)]
pub struct ConnState {
    timeouts: Timeouts,
    phase: Mutex<Phase>,
    trusted: AtomicBool,
    broken: AtomicBool,
}

impl ConnState {
    /// A fresh connection: its first request's header is due within `header`.
    pub(crate) fn new(timeouts: Timeouts) -> ConnState {
        ConnState {
            timeouts,
            phase: Mutex::new(Phase::Until(Instant::now() + timeouts.header)),
            trusted: AtomicBool::new(false),
            broken: AtomicBool::new(false),
        }
    }

    fn set(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase;
    }

    /// The first byte of a request arrived: its header is due within `header`.
    pub(crate) fn begin_header(&self) {
        self.set(Phase::Until(Instant::now() + self.timeouts.header));
    }

    /// The header is read; `len` body bytes (if known) follow.
    pub(crate) fn begin_body(&self, len: Option<usize>) {
        let rate = self.timeouts.body_rate.max(1);
        let secs = len.unwrap_or(16 << 20) as u64 / rate;
        self.set(Phase::Until(
            Instant::now() + self.timeouts.header + Duration::from_secs(secs),
        ));
    }

    /// The request's body is read: wait for the next request.
    pub(crate) fn idle(&self) {
        self.set(Phase::Idle);
    }

    /// An unread body is being thrown away after the response: it gets `header` more time at
    /// most, so a refused upload cannot hold the connection.
    pub(crate) fn linger(&self) {
        self.set(Phase::Until(Instant::now() + self.timeouts.header));
    }

    /// One of this connection's requests was authenticated: it may stay idle for `idle`.
    pub fn trust(&self) {
        self.trusted.store(true, Ordering::Relaxed);
    }

    /// Whether [`ConnState::trust`] was called.
    pub fn trusted(&self) -> bool {
        self.trusted.load(Ordering::Relaxed)
    }

    /// Whether a read or write failed or timed out; the connection takes no further request.
    pub fn broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// Marks the connection unusable.
    pub fn mark_broken(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }

    /// True while waiting between requests (a timeout then is a quiet close, not a 408).
    pub(crate) fn is_idle(&self) -> bool {
        matches!(
            *self.phase.lock().unwrap_or_else(|e| e.into_inner()),
            Phase::Idle
        )
    }

    /// The send timeout to set on the socket.
    pub(crate) fn write_timeout(&self) -> Duration {
        self.timeouts.io
    }

    /// How long the next read may wait, or `TimedOut` if its deadline has passed.
    pub(crate) fn read_timeout(&self) -> Result<Duration, IoError> {
        let phase = *self.phase.lock().unwrap_or_else(|e| e.into_inner());
        match phase {
            Phase::Idle if self.trusted() => Ok(self.timeouts.idle),
            Phase::Idle => Ok(self.timeouts.header),
            Phase::Until(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    Err(IoError::new(ErrorKind::TimedOut, "request took too long"))
                } else {
                    Ok(left.min(self.timeouts.io))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Timeouts {
        Timeouts {
            idle: Duration::from_secs(100),
            header: Duration::from_secs(10),
            io: Duration::from_secs(5),
            body_rate: 1000,
        }
    }

    #[test]
    fn idle_time_depends_on_trust_and_deadlines_cap_each_read() {
        let s = ConnState::new(t());
        let first = s.read_timeout().unwrap();
        assert!(first <= Duration::from_secs(5), "{first:?}");
        s.idle();
        assert!(s.is_idle());
        assert_eq!(s.read_timeout().unwrap(), Duration::from_secs(10));
        s.trust();
        assert_eq!(s.read_timeout().unwrap(), Duration::from_secs(100));
        s.begin_body(Some(50_000));
        let r = s.read_timeout().unwrap();
        assert!(r <= Duration::from_secs(5) && r > Duration::from_secs(4), "{r:?}");
        assert!(!s.is_idle());
    }

    #[test]
    fn a_passed_deadline_times_out() {
        let s = ConnState::new(Timeouts {
            header: Duration::ZERO,
            ..t()
        });
        assert_eq!(s.read_timeout().unwrap_err().kind(), ErrorKind::TimedOut);
        assert!(!s.broken());
        s.mark_broken();
        assert!(s.broken());
    }
}

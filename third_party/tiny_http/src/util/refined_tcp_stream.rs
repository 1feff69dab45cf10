use std::io::Result as IoResult;
use std::io::{Error as IoError, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use super::ConnState;

use crate::connection::Connection;
#[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
use crate::ssl::SslStream;

pub(crate) enum Stream {
    Http(Connection),
    #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
    Https(SslStream),
}

impl Stream {
    /// warp patch: a fallible clone. `Clone` unwrapped `try_clone`, which fails with EMFILE
    /// when the process is out of file descriptors, and the panic killed the accept thread.
    fn try_clone(&self) -> IoResult<Self> {
        Ok(match self {
            Stream::Http(tcp_stream) => Stream::Http(tcp_stream.try_clone()?),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => Stream::Https(ssl_stream.clone()),
        })
    }
}

impl From<Connection> for Stream {
    fn from(tcp_stream: Connection) -> Self {
        Stream::Http(tcp_stream)
    }
}

impl Stream {
    fn secure(&self) -> bool {
        match self {
            Stream::Http(_) => false,
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(_) => true,
        }
    }

    fn peer_addr(&mut self) -> IoResult<Option<SocketAddr>> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.peer_addr(),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.peer_addr(),
        }
    }

    fn set_read_timeout(&self, t: Duration) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.set_read_timeout(Some(t)),
            // warp patch: the deadlines hold for HTTPS connections too.
            #[cfg(feature = "ssl-rustls")]
            Stream::Https(ssl_stream) => ssl_stream.set_read_timeout(Some(t)),
            #[cfg(feature = "ssl-openssl")]
            Stream::Https(_) => Ok(()),
        }
    }

    fn set_write_timeout(&self, t: Duration) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.set_write_timeout(Some(t)),
            // warp patch: the deadlines hold for HTTPS connections too.
            #[cfg(feature = "ssl-rustls")]
            Stream::Https(ssl_stream) => ssl_stream.set_write_timeout(Some(t)),
            #[cfg(feature = "ssl-openssl")]
            Stream::Https(_) => Ok(()),
        }
    }

    fn shutdown(&mut self, how: Shutdown) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.shutdown(how),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.shutdown(how),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.read(buf),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.write(buf),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.write(buf),
        }
    }

    fn flush(&mut self) -> IoResult<()> {
        match self {
            Stream::Http(tcp_stream) => tcp_stream.flush(),
            #[cfg(any(feature = "ssl-openssl", feature = "ssl-rustls"))]
            Stream::Https(ssl_stream) => ssl_stream.flush(),
        }
    }
}

pub struct RefinedTcpStream {
    stream: Stream,
    close_read: bool,
    close_write: bool,
    /// warp patch: the connection's deadlines and broken flag (`None`: upstream behaviour).
    state: Option<Arc<ConnState>>,
    /// The read timeout last set on the socket.
    applied: Option<Duration>,
}

impl RefinedTcpStream {
    pub(crate) fn new<S>(stream: S) -> IoResult<(RefinedTcpStream, RefinedTcpStream)>
    where
        S: Into<Stream>,
    {
        let stream: Stream = stream.into();

        let (read, write) = (stream.try_clone()?, stream);

        let read = RefinedTcpStream {
            stream: read,
            close_read: true,
            close_write: false,
            state: None,
            applied: None,
        };

        let write = RefinedTcpStream {
            stream: write,
            close_read: false,
            close_write: true,
            state: None,
            applied: None,
        };

        Ok((read, write))
    }

    /// Returns true if this struct wraps around a secure connection.
    #[inline]
    pub(crate) fn secure(&self) -> bool {
        self.stream.secure()
    }

    pub(crate) fn peer_addr(&mut self) -> IoResult<Option<SocketAddr>> {
        self.stream.peer_addr()
    }

    /// warp patch: puts this half under `state`'s deadlines; a write half also gets the send
    /// timeout now (it is the socket's, shared with the read half).
    pub(crate) fn set_state(&mut self, state: Arc<ConnState>) -> IoResult<()> {
        if self.close_write {
            self.stream.set_write_timeout(state.write_timeout())?;
        }
        self.state = Some(state);
        Ok(())
    }

    /// warp patch: the connection state this half was given.
    pub(crate) fn state(&self) -> Option<&Arc<ConnState>> {
        self.state.as_ref()
    }
}

/// warp patch: the error of a read or write on a connection already marked broken.
fn broken() -> IoError {
    IoError::new(
        ErrorKind::ConnectionAborted,
        "connection closed after an earlier timeout or error",
    )
}

/// warp patch: a socket timeout reads as `WouldBlock` on Unix; say what it was.
fn timed_out(e: IoError) -> IoError {
    if e.kind() == ErrorKind::WouldBlock {
        IoError::new(ErrorKind::TimedOut, "the client was too slow")
    } else {
        e
    }
}

impl Drop for RefinedTcpStream {
    fn drop(&mut self) {
        if self.close_read {
            self.stream.shutdown(Shutdown::Read).ok();
        }

        if self.close_write {
            self.stream.shutdown(Shutdown::Write).ok();
        }
    }
}

impl Read for RefinedTcpStream {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        let Some(state) = self.state.clone() else {
            return self.stream.read(buf);
        };
        if state.broken() {
            return Err(broken());
        }
        let t = state.read_timeout().inspect_err(|_| state.mark_broken())?;
        // Re-arm only when the timeout moved by 50 ms or more: one syscall per request, not
        // per read.
        if self
            .applied
            .is_none_or(|a| a.abs_diff(t) >= Duration::from_millis(50))
        {
            self.stream.set_read_timeout(t)?;
            self.applied = Some(t);
        }
        self.stream.read(buf).map_err(|e| {
            let e = timed_out(e);
            // A quiet idle connection timing out ends its read loop only: a response still
            // owed on it (a parked request) is written.
            if e.kind() != ErrorKind::TimedOut || !state.is_idle() {
                state.mark_broken();
            }
            e
        })
    }
}

impl Write for RefinedTcpStream {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        let Some(state) = self.state.as_ref() else {
            return self.stream.write(buf);
        };
        if state.broken() {
            return Err(broken());
        }
        self.stream.write(buf).map_err(|e| {
            state.mark_broken();
            timed_out(e)
        })
    }

    fn flush(&mut self) -> IoResult<()> {
        let Some(state) = self.state.as_ref() else {
            return self.stream.flush();
        };
        if state.broken() {
            return Err(broken());
        }
        self.stream.flush().map_err(|e| {
            state.mark_broken();
            timed_out(e)
        })
    }
}

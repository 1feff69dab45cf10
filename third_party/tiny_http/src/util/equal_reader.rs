use std::io::Read;
use std::io::Result as IoResult;
use std::sync::mpsc::channel;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use super::ConnState;

/// warp patch: most bytes of an unread body thrown away on a connection no request of which
/// was authenticated; beyond it the connection is closed instead.
const LINGER_BYTES: usize = 1 << 20;

/// A `Reader` that reads exactly the number of bytes from a sub-reader.
///
/// If the limit is reached, it returns EOF. If the limit is not reached
/// when the destructor is called, the remaining bytes will be read and
/// thrown away.
///
/// warp patch: the remaining bytes are read on a thread of their own with a fixed 8 KiB
/// buffer. Upstream read them in the destructor with a buffer of the full remaining size, so
/// one request announcing a huge Content-Length aborted the process (allocation failure), and a
/// client that stopped sending held the thread that dropped the request (a handler thread).
/// With a connection state, reading the last byte makes the connection idle, and throwing
/// away the rest is bounded in time ([`ConnState::linger`]) and, for a connection nobody
/// authenticated on, in size.
pub struct EqualReader<R>
where
    R: Read + Send + 'static,
{
    reader: Option<R>,
    size: usize,
    last_read_signal: Sender<IoResult<()>>,
    conn: Option<Arc<ConnState>>,
}

impl<R> EqualReader<R>
where
    R: Read + Send + 'static,
{
    pub fn new(
        reader: R,
        size: usize,
        conn: Option<Arc<ConnState>>,
    ) -> (EqualReader<R>, Receiver<IoResult<()>>) {
        let (tx, rx) = channel();

        let r = EqualReader {
            reader: Some(reader),
            size,
            last_read_signal: tx,
            conn,
        };

        (r, rx)
    }
}

impl<R> Read for EqualReader<R>
where
    R: Read + Send + 'static,
{
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        if self.size == 0 {
            return Ok(0);
        }

        let buf = if buf.len() < self.size {
            buf
        } else {
            &mut buf[..self.size]
        };

        let Some(reader) = self.reader.as_mut() else {
            return Ok(0);
        };
        match reader.read(buf) {
            Ok(len) => {
                self.size -= len;
                if self.size == 0 {
                    if let Some(conn) = &self.conn {
                        conn.idle();
                    }
                }
                Ok(len)
            }
            err @ Err(_) => err,
        }
    }
}

impl<R> Drop for EqualReader<R>
where
    R: Read + Send + 'static,
{
    fn drop(&mut self) {
        let (Some(reader), remaining) = (self.reader.take(), self.size) else {
            return;
        };
        if remaining == 0 {
            return;
        }
        let mut reader = reader;
        let signal = self.last_read_signal.clone();
        if let Some(conn) = self.conn.take() {
            // With deadlines (the handler runs on the connection's own thread): throw the rest
            // away here, within `linger`, and at most LINGER_BYTES of a client nobody
            // authenticated (so that it sees the response rather than a reset); a body not
            // read to its end closes the connection.
            let cap = if conn.trusted() {
                remaining
            } else {
                remaining.min(LINGER_BYTES)
            };
            conn.linger();
            if drain(&mut reader, cap, signal) && cap == remaining {
                conn.idle();
            } else {
                conn.mark_broken();
            }
            return;
        }
        // Without a thread to spare, the reader is dropped unread: the connection's next read
        // then sees the rest of this body, fails to parse it and closes the connection.
        let _ = std::thread::Builder::new()
            .name("tiny-http-drain".into())
            .spawn(move || {
                drain(&mut reader, remaining, signal);
            });
    }
}

/// Reads and discards `remaining` bytes, 8 KiB at a time; true if all of them were read.
fn drain<R: Read>(reader: &mut R, mut remaining: usize, signal: Sender<IoResult<()>>) -> bool {
    let mut buf = [0u8; 8192];
    while remaining > 0 {
        let want = remaining.min(buf.len());
        match reader.read(&mut buf[..want]) {
            Err(e) => {
                signal.send(Err(e)).ok();
                return false;
            }
            Ok(0) => {
                signal.send(Ok(())).ok();
                return false;
            }
            Ok(n) => remaining -= n,
        }
    }
    true
}

use std::io::Read;
use std::io::Result as IoResult;
use std::sync::mpsc::channel;
use std::sync::mpsc::{Receiver, Sender};

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
pub struct EqualReader<R>
where
    R: Read + Send + 'static,
{
    reader: Option<R>,
    size: usize,
    last_read_signal: Sender<IoResult<()>>,
}

impl<R> EqualReader<R>
where
    R: Read + Send + 'static,
{
    pub fn new(reader: R, size: usize) -> (EqualReader<R>, Receiver<IoResult<()>>) {
        let (tx, rx) = channel();

        let r = EqualReader {
            reader: Some(reader),
            size,
            last_read_signal: tx,
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
        let signal = self.last_read_signal.clone();
        let drain = move || drain(reader, remaining, signal);
        // Without a thread to spare, the reader is dropped unread: the connection's next read
        // then sees the rest of this body, fails to parse it and closes the connection.
        let _ = std::thread::Builder::new()
            .name("tiny-http-drain".into())
            .spawn(drain);
    }
}

/// Reads and discards `remaining` bytes, 8 KiB at a time.
fn drain<R: Read>(mut reader: R, mut remaining: usize, signal: Sender<IoResult<()>>) {
    let mut buf = [0u8; 8192];
    while remaining > 0 {
        let want = remaining.min(buf.len());
        match reader.read(&mut buf[..want]) {
            Err(e) => {
                signal.send(Err(e)).ok();
                return;
            }
            Ok(0) => {
                signal.send(Ok(())).ok();
                return;
            }
            Ok(n) => remaining -= n,
        }
    }
}

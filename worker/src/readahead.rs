//! Reading the next task's files while the current task computes.
//!
//! The controller names the files of the task it keeps for this worker
//! (`Assignment::read_ahead`). Once the current task has read its own inputs, [`ReadAhead`]
//! reads those files sequentially on a background thread and throws the bytes away: they stay
//! in the operating system's page cache, so the next `LoadStack` reads from memory instead of
//! the file system. Nothing is held in the worker's own memory (one 8 MiB buffer), so the
//! preprocessing memory budget is unchanged. A new read-ahead stops the previous one; a file
//! that cannot be read is skipped (the task that loads it reports the error).

use std::fs::File;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use warp_common::preprocessing::ReadAheadReport;

use crate::exec::CancelFlag;
use crate::state::lock;

/// Chunk size of the reads.
const CHUNK: usize = 8 << 20;

#[derive(Debug)]
struct Entry {
    path: String,
    bytes: u64,
    started: Option<Instant>,
    /// Milliseconds the whole file took, once read.
    done_ms: Option<f64>,
    error: Option<String>,
    /// Reported to a load already ([`ReadAhead::report_for`]); entries are never removed, so
    /// the reader thread's indices stay valid.
    taken: bool,
}

/// The read-ahead of one worker (module docs).
#[derive(Debug)]
pub struct ReadAhead {
    enabled: bool,
    /// The files of the current (or last) read-ahead, in order.
    run: Arc<Mutex<Vec<Entry>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Default for ReadAhead {
    fn default() -> ReadAhead {
        ReadAhead::new(true)
    }
}

impl ReadAhead {
    /// A read-ahead; when not `enabled`, [`ReadAhead::start`] does nothing.
    pub fn new(enabled: bool) -> ReadAhead {
        ReadAhead {
            enabled,
            run: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(true)),
            thread: None,
        }
    }

    /// Stops any read-ahead in progress and starts reading `paths`, in order.
    pub fn start(&mut self, paths: &[String]) {
        self.stop_current();
        if !self.enabled || paths.is_empty() {
            return;
        }
        let run = Arc::new(Mutex::new(
            paths
                .iter()
                .map(|p| Entry {
                    path: p.clone(),
                    bytes: 0,
                    started: None,
                    done_ms: None,
                    error: None,
                    taken: false,
                })
                .collect(),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        self.run = run.clone();
        self.stop = stop.clone();
        let spawned = std::thread::Builder::new()
            .name("read-ahead".into())
            .spawn(move || read_all(&run, &stop));
        match spawned {
            Ok(h) => self.thread = Some(h),
            Err(e) => log::warn!("read-ahead not started: {e}"),
        }
    }

    /// What the read-ahead did for `path` so far, if `path` was in the last
    /// [`ReadAhead::start`]. The entry is taken, so a second load of the file reports nothing.
    pub fn report_for(&self, path: &str) -> Option<ReadAheadReport> {
        let mut run = lock(&self.run);
        let e = run.iter_mut().find(|e| e.path == path && !e.taken)?;
        e.taken = true;
        Some(ReadAheadReport {
            complete: e.done_ms.is_some(),
            bytes: e.bytes,
            ms: e
                .done_ms
                .or_else(|| e.started.map(|t| t.elapsed().as_secs_f64() * 1e3))
                .unwrap_or(0.0),
            error: e.error.clone(),
        })
    }

    /// Stops the current read-ahead unless it reads one of `paths`.
    pub fn stop_unless_reading(&mut self, paths: &[&str]) {
        let reading = lock(&self.run)
            .iter()
            .any(|e| paths.contains(&e.path.as_str()));
        if !reading {
            self.stop_current();
        }
    }

    /// Waits for the current read-ahead to end.
    #[cfg(test)]
    fn wait(&mut self) {
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
    }

    /// Waits for the current read-ahead to end, at most `limit` (a read hung on a file system
    /// must not hold the worker for ever) and no longer than until `cancel` is set. Returns the
    /// time waited and how many of its files are still unread (0 once it has ended).
    pub fn wait_up_to(&mut self, limit: Duration, cancel: &CancelFlag) -> (Duration, usize) {
        let start = Instant::now();
        let Some(h) = &self.thread else {
            return (Duration::ZERO, 0);
        };
        let mut step = Duration::from_micros(200);
        while !h.is_finished() && start.elapsed() < limit {
            if cancel.wait_timeout(step.min(limit.saturating_sub(start.elapsed()))) {
                break;
            }
            step = (step * 2).min(Duration::from_millis(10));
        }
        if h.is_finished() {
            if let Some(h) = self.thread.take() {
                let _ = h.join();
            }
            return (start.elapsed(), 0);
        }
        let pending = lock(&self.run)
            .iter()
            .filter(|e| e.done_ms.is_none() && e.error.is_none())
            .count();
        (start.elapsed(), pending)
    }

    /// Tells the current read-ahead to stop (it does within one chunk) without waiting for
    /// it: a read hung on a file system must not hold up the worker.
    fn stop_current(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread = None;
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.stop_current();
    }
}

fn read_all(run: &Mutex<Vec<Entry>>, stop: &AtomicBool) {
    let n = lock(run).len();
    let mut buf = vec![0u8; CHUNK];
    for i in 0..n {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let t0 = Instant::now();
        let path = {
            let mut r = lock(run);
            r[i].started = Some(t0);
            r[i].path.clone()
        };
        let outcome = read_one(&path, &mut buf, stop, &mut |bytes| {
            lock(run)[i].bytes += bytes
        });
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut r = lock(run);
        let e = &mut r[i];
        match outcome {
            Ok(true) => {
                e.done_ms = Some(ms);
                log::debug!("read ahead {path}: {} MiB in {ms:.0} ms", e.bytes >> 20);
            }
            Ok(false) => return,
            Err(err) => {
                log::debug!("read-ahead of {path} failed: {err}");
                e.error = Some(err);
            }
        }
    }
}

/// Reads `path` to the end; `Ok(false)` when stopped first.
fn read_one(
    path: &str,
    buf: &mut [u8],
    stop: &AtomicBool,
    progress: &mut dyn FnMut(u64),
) -> Result<bool, String> {
    let mut f = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    advise_sequential(&f);
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(false);
        }
        match f.read(buf) {
            Ok(0) => return Ok(true),
            Ok(k) => progress(k as u64),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read failed: {e}")),
        }
    }
}

/// Tells the kernel the file is read front to back (a larger read-ahead window).
fn advise_sequential(f: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: advice on an open descriptor; it changes no data and its failure is harmless.
        unsafe {
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = f;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, bytes: usize) -> String {
        // A directory per file: tests run in parallel, and one removing a shared directory
        // raced another writing into it (NotFound).
        let dir = std::env::temp_dir().join(format!(
            "warp-readahead-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, vec![7u8; bytes]).unwrap();
        p.to_string_lossy().into_owned()
    }

    fn remove(files: &[&String]) {
        for f in files {
            let _ = std::fs::remove_file(f);
            if let Some(dir) = std::path::Path::new(f).parent() {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }

    fn fifo(name: &str) -> String {
        let path = temp_file(name, 0);
        std::fs::remove_file(&path).unwrap();
        crate::test_util::mkfifo(std::path::Path::new(&path));
        path
    }

    /// Issue 10: `WaitAsyncTasks` returned while a read-ahead still ran. The read-ahead here
    /// waits on a FIFO until a writer comes 200 ms later.
    #[test]
    fn waiting_returns_once_the_read_ahead_ended_or_reports_what_is_pending() {
        let f = fifo("slow.fifo");
        let mut ra = ReadAhead::new(true);
        ra.start(std::slice::from_ref(&f));
        let writer = {
            let f = f.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                std::fs::write(&f, vec![1u8; 1000]).unwrap();
            })
        };
        let (waited, pending) = ra.wait_up_to(Duration::from_secs(20), &CancelFlag::new());
        writer.join().unwrap();
        assert_eq!(pending, 0);
        assert!(waited >= Duration::from_millis(150), "{waited:?}");
        let r = ra.report_for(&f).unwrap();
        assert!(r.complete && r.bytes == 1000, "{r:?}");
        // No writer: the wait gives up at its limit and says one file is pending.
        let g = fifo("hung.fifo");
        ra.start(std::slice::from_ref(&g));
        let (waited, pending) = ra.wait_up_to(Duration::from_millis(100), &CancelFlag::new());
        assert_eq!(pending, 1);
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        // Unblock the reader thread so it ends.
        let _ = std::fs::OpenOptions::new().write(true).open(&g);
        remove(&[&f, &g]);
    }

    #[test]
    fn reads_every_file_to_the_end_and_reports_each_once() {
        let a = temp_file("a.bin", 9 << 20);
        let b = temp_file("b.bin", 1000);
        let mut ra = ReadAhead::new(true);
        ra.start(&[a.clone(), b.clone()]);
        ra.wait();
        let ra_a = ra.report_for(&a).unwrap();
        assert!(ra_a.complete, "{ra_a:?}");
        assert_eq!(ra_a.bytes, 9 << 20);
        assert!(ra_a.error.is_none());
        assert_eq!(ra.report_for(&b).unwrap().bytes, 1000);
        assert!(ra.report_for(&a).is_none(), "taken");
        assert!(ra.report_for("/not/asked").is_none());
        remove(&[&a, &b]);
    }

    #[test]
    fn a_file_taken_by_its_load_mid_read_does_not_disturb_the_next() {
        let a = temp_file("f.bin", 16 << 20);
        let b = temp_file("g.bin", 3000);
        let mut ra = ReadAhead::new(true);
        ra.start(&[a.clone(), b.clone()]);
        // The load of `a` begins at once, probably before the read-ahead finished it.
        assert!(ra.report_for(&a).is_some());
        ra.wait();
        let rb = ra.report_for(&b).unwrap();
        assert!(rb.complete, "{rb:?}");
        assert_eq!(rb.bytes, 3000);
        remove(&[&a, &b]);
    }

    #[test]
    fn an_unreadable_file_is_reported_and_the_rest_still_read() {
        let b = temp_file("c.bin", 4096);
        let mut ra = ReadAhead::new(true);
        let missing = "/nonexistent/warp-readahead/movie.mrc".to_string();
        ra.start(&[missing.clone(), b.clone()]);
        ra.wait();
        let m = ra.report_for(&missing).unwrap();
        assert!(!m.complete);
        assert!(m.error.unwrap().contains("cannot open"));
        assert!(ra.report_for(&b).unwrap().complete);
        remove(&[&b]);
    }

    #[test]
    fn a_new_start_replaces_the_old_one_and_disabled_reads_nothing() {
        let a = temp_file("d.bin", 16 << 20);
        let b = temp_file("e.bin", 10);
        let mut ra = ReadAhead::new(true);
        ra.start(std::slice::from_ref(&a));
        ra.start(std::slice::from_ref(&b));
        assert!(ra.report_for(&a).is_none(), "the old run is forgotten");
        ra.wait();
        assert!(ra.report_for(&b).unwrap().complete);
        let mut off = ReadAhead::new(false);
        off.start(std::slice::from_ref(&b));
        off.wait();
        assert!(off.report_for(&b).is_none());
        remove(&[&a, &b]);
    }
}

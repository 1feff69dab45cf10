//! The worker's console: a small `log::Log` implementation and the ring buffer behind it.
//!
//! Every log line goes into a bounded ring of [`ConsoleLine`]s numbered from 0 over the process
//! lifetime, and to stderr unless the worker is silent (`-s`). The ring serves the direct mode's
//! console routes and feeds the lines shipped to the controller with heartbeats and terminal
//! status reports ([`Console::take_unshipped`]).

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;
use warp_common::console::ConsoleRing;
use warp_common::protocol::{ConsoleLine, ConsoleLines};

/// Lines the ring keeps by default.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// A bounded, numbered ring of log lines ([`ConsoleRing`]) with a cursor of the lines shipped to
/// the controller. Thread-safe.
#[derive(Debug)]
pub struct Console {
    inner: Mutex<(ConsoleRing, u64)>,
}

impl Console {
    /// An empty console keeping at most `capacity` lines (at least 1).
    pub fn new(capacity: usize) -> Console {
        Console {
            inner: Mutex::new((ConsoleRing::new(capacity), 0)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, (ConsoleRing, u64)> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends one line, dropping the oldest when full.
    pub fn push(&self, text: String) {
        self.lock().0.push(text);
    }

    /// Lines written in all, including those dropped from the ring.
    pub fn total(&self) -> u64 {
        self.lock().0.total()
    }

    /// Every kept line.
    pub fn all(&self) -> ConsoleLines {
        self.lock().0.all()
    }

    /// The oldest `n` kept lines.
    pub fn first(&self, n: u64) -> ConsoleLines {
        self.lock()
            .0
            .first(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// The last `n` kept lines.
    pub fn last(&self, n: u64) -> ConsoleLines {
        self.lock().0.last(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Lines numbered `start` (inclusive) to `end` (exclusive), clamped to the kept lines.
    pub fn range(&self, start: u64, end: u64) -> ConsoleLines {
        self.lock().0.range(start, end)
    }

    /// Up to `max` lines not yet shipped to the controller, oldest first, and marks them shipped.
    /// Lines that left the ring before they were shipped are skipped.
    pub fn take_unshipped(&self, max: usize) -> Vec<ConsoleLine> {
        let mut guard = self.lock();
        let (ring, shipped) = &mut *guard;
        let lines = ring.since(*shipped, max);
        if let Some(last) = lines.last() {
            *shipped = last.n + 1;
        }
        lines
    }
}

/// The process-wide console the logger writes to.
pub fn global() -> &'static Arc<Console> {
    static CONSOLE: OnceLock<Arc<Console>> = OnceLock::new();
    CONSOLE.get_or_init(|| Arc::new(Console::new(DEFAULT_CAPACITY)))
}

static SILENT: AtomicBool = AtomicBool::new(false);

/// Installs the logger (once per process) writing into [`global`] and, unless `silent`, to
/// stderr. Later calls only change `silent` and the level. `WARP_LOG=debug` (or `trace`, `warn`,
/// ...) overrides `level`.
pub fn init(silent: bool, level: LevelFilter) {
    SILENT.store(silent, Ordering::Relaxed);
    let level = std::env::var("WARP_LOG")
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok())
        .unwrap_or(level);
    let _ = log::set_boxed_logger(Box::new(Logger {
        console: global().clone(),
    }));
    log::set_max_level(level);
}

struct Logger {
    console: Arc<Console>,
}

impl Log for Logger {
    fn enabled(&self, meta: &Metadata) -> bool {
        // Other crates (ureq) are chatty below info; keep their debug lines out.
        meta.level() <= Level::Info || meta.target().starts_with("warp")
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format!(
            "{} {:<5} worker: {}",
            warp_common::utc_timestamp(SystemTime::now()),
            record.level(),
            record.args()
        );
        if !SILENT.load(Ordering::Relaxed) {
            let _ = writeln!(std::io::stderr().lock(), "{line}");
        }
        self.console.push(line);
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(c: &ConsoleLines) -> Vec<u64> {
        c.lines.iter().map(|l| l.n).collect()
    }

    #[test]
    fn ring_numbers_lines_absolutely_and_drops_the_oldest() {
        let c = Console::new(3);
        for i in 0..5 {
            c.push(format!("line {i}"));
        }
        assert_eq!(c.total(), 5);
        let all = c.all();
        assert_eq!((all.total, all.first_kept), (5, 2));
        assert_eq!(numbers(&all), [2, 3, 4]);
        assert_eq!(all.lines[0].text, "line 2");
        assert_eq!(numbers(&c.first(2)), [2, 3]);
        assert_eq!(numbers(&c.last(2)), [3, 4]);
        assert_eq!(numbers(&c.last(100)), [2, 3, 4]);
        assert_eq!(numbers(&c.range(3, 4)), [3]);
        assert_eq!(numbers(&c.range(0, 100)), [2, 3, 4]);
        assert!(c.range(4, 2).lines.is_empty());
        assert!(c.range(10, 20).lines.is_empty());
    }

    #[test]
    fn unshipped_cursor_skips_lines_dropped_before_shipping() {
        let c = Console::new(4);
        c.push("a".into());
        c.push("b".into());
        assert_eq!(
            c.take_unshipped(1).iter().map(|l| l.n).collect::<Vec<_>>(),
            [0]
        );
        assert_eq!(
            c.take_unshipped(10).iter().map(|l| l.n).collect::<Vec<_>>(),
            [1]
        );
        assert!(c.take_unshipped(10).is_empty());
        for i in 0..6 {
            c.push(format!("x{i}"));
        }
        // Lines 2 and 3 left the ring unshipped; 4..8 are kept.
        let got = c.take_unshipped(10);
        assert_eq!(got.iter().map(|l| l.n).collect::<Vec<_>>(), [4, 5, 6, 7]);
        assert_eq!(got[0].text, "x2");
    }
}

//! A small stderr logger: `2026-11-27T17:00:00.123Z INFO  message`. No framework needed.

use std::io::Write;
use std::time::SystemTime;

struct StderrLogger {
    level: log::LevelFilter,
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let line = format!(
                "{} {:<5} {}\n",
                warp_common::utc_timestamp(SystemTime::now()),
                record.level(),
                record.args()
            );
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// Installs the logger once; later calls only change nothing. `WARP_LOG=debug|info|warn|error|off`
/// overrides `level`.
pub fn init(level: log::LevelFilter) {
    let level = std::env::var("WARP_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(level);
    if log::set_boxed_logger(Box::new(StderrLogger { level })).is_ok() {
        log::set_max_level(level);
    }
}

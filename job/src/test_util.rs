//! Helpers shared by the crate's unit tests.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::dataset::SimulateOptions;

/// A scratch directory removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory under the system temp dir, named after `tag`.
    pub(crate) fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "warp-job-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// A path inside the directory.
    pub(crate) fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A command line as `String`s.
pub(crate) fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Two 64² × 4 movies in `dir`: the dataset tests' and the comparison tests' input.
pub(crate) fn small_dataset(dir: &Path) -> SimulateOptions {
    SimulateOptions {
        output: dir.to_path_buf(),
        count: 2,
        size: 64,
        frames: 4,
        angpix: 1.5,
        dose_per_frame: 2.0,
        max_shift_px: 3.0,
        seed: 7,
        ..SimulateOptions::default()
    }
}

//! Helpers shared by the crate's unit tests.

use std::path::{Path, PathBuf};

/// Makes a FIFO at `path` (a reader of it blocks until a writer opens it).
pub(crate) fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().expect("UTF-8 path")).expect("no NUL");
    // SAFETY: mkfifo with a valid C string.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {path:?}"
    );
}

/// A fresh directory `warp-TAG-PID` under the temp dir with a FIFO `name` in it.
pub(crate) fn fifo(tag: &str, name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("warp-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    mkfifo(&path);
    (dir, path)
}

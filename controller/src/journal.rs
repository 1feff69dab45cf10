//! The state directory (`serve --state-dir`): an append-only journal of the core's events,
//! snapshots that bound what a start replays, and an archive of the tasks retention dropped.
//!
//! ```text
//!   DIR/lock                  flock'd by the controller that owns DIR (one at a time)
//!   DIR/snapshot-<G>.snap     the core as segment G began (none for the first segment)
//!   DIR/journal-<G>.log       every event applied since, in order
//!   DIR/archive.jsonl         finished tasks retention dropped from memory, one per line
//!   DIR/archive.old.jsonl     the archive before its last rotation (ARCHIVE_ROTATE_BYTES)
//! ```
//!
//! Files: an 8-byte magic (`WARPJRNL` or `WARPSNAP`) and a little-endian `u32` format version,
//! then records: `u32` payload length, `u32` CRC-32 (IEEE) of the payload, the payload (JSON).
//! A segment's first record is its [`SegmentHeader`] (the policy and clock epoch its events
//! were applied under); the others are `{"t": now_ms, "e": Event}`. A snapshot holds one
//! record, its [`SnapshotFile`].
//!
//! Writing: events are encoded under the controller's lock ([`Journal::append`]) and written
//! by whichever request first needs them durable ([`Journal::sync`]): it takes everything
//! pending, writes it and calls `fdatasync` once, so one sync covers every request that
//! arrived meanwhile (group commit). A request's answer is written only after its events
//! are durable. A write or sync that fails ends the process (exit 70): what is on disk is a
//! prefix of what happened, and a restart serves exactly that.
//!
//! Reading ([`open`]): the newest snapshot, then the segments from its generation on, each
//! record checked (zeros to the end of a file are space allocated ahead, the end of its data,
//! and are trimmed); a torn last record (the crash came mid-write) is cut off with a log line,
//! any other damage stops the start with the file and offset. Every start opens a new
//! segment. A snapshot ([`Journal::begin_snapshot`], then [`Journal::finish_snapshot`]
//! outside the lock) starts a new segment and, once written, deletes the older files.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use serde::{Deserialize, Serialize};
use warp_common::protocol::{TaskDetail, TaskId};

use crate::core::{Core, CoreConfig, CoreSnapshot, Decision, Event, Millis, Reply};

/// The format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
const JOURNAL_MAGIC: &[u8; 8] = b"WARPJRNL";
const SNAPSHOT_MAGIC: &[u8; 8] = b"WARPSNAP";
/// A record longer than this is damage, not data (a batch of 10,000 tasks is a few MiB).
const MAX_RECORD: u32 = 1 << 30;
/// Journal bytes after which the timer takes a snapshot (bounds what a start replays).
pub const SNAPSHOT_BYTES: u64 = 64 << 20;
/// Segments since the last snapshot after which the timer takes one.
pub const MAX_SEGMENTS: u64 = 32;
/// The archive is rotated past this size; one old file is kept, so it stays under twice it.
pub const ARCHIVE_ROTATE_BYTES: u64 = 256 << 20;

/// Why a state directory cannot be used. Each names the file (and offset) to look at.
#[derive(Debug)]
pub enum JournalError {
    /// A file could not be read, written or created.
    Io(String),
    /// Damage that is not a torn last record, or a format this build does not read.
    Corrupt(String),
    /// Another controller holds the directory.
    Locked(String),
}

impl std::fmt::Display for JournalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JournalError::Io(m) | JournalError::Corrupt(m) | JournalError::Locked(m) => {
                f.write_str(m)
            }
        }
    }
}

impl std::error::Error for JournalError {}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> JournalError {
    JournalError::Io(format!("cannot {what} {}: {e}", path.display()))
}

/// CRC-32 (IEEE 802.3, reflected, as zlib and PNG use).
pub fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    let mut c = !0u32;
    for &b in data {
        c = table[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

fn frame(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

fn file_start(magic: &[u8; 8]) -> Vec<u8> {
    let mut v = magic.to_vec();
    v.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    v
}

/// What a file's bytes hold: the records' payloads with their offsets, and where a torn
/// tail began, if there is one.
struct Parsed<'a> {
    records: Vec<(u64, &'a [u8])>,
    torn_at: Option<u64>,
    /// Where zeros to the end of the file begin (space allocated ahead), if they do.
    zeros_at: Option<u64>,
}

fn parse<'a>(path: &Path, bytes: &'a [u8], magic: &[u8; 8]) -> Result<Parsed<'a>, JournalError> {
    let name = path.display();
    if bytes.len() < 12 || &bytes[..8] != magic {
        // A file cut before its header was complete is a torn write too, if it is a prefix.
        if bytes.len() < 12 && magic.starts_with(&bytes[..bytes.len().min(8)]) {
            return Ok(Parsed {
                records: Vec::new(),
                torn_at: Some(0),
                zeros_at: None,
            });
        }
        return Err(JournalError::Corrupt(format!(
            "{name}: not a warp-controller state file (bad magic); move it out of the state directory"
        )));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(JournalError::Corrupt(format!(
            "{name}: format version {version}, this build reads version {FORMAT_VERSION}; use the warp-controller that wrote it"
        )));
    }
    let mut records = Vec::new();
    let mut at = 12usize;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let torn = |why: &str| -> Result<Parsed<'a>, JournalError> {
            Err(JournalError::Corrupt(format!(
                "{name}: damaged record at offset {at}: {why}; the records after it cannot be trusted (restore the state directory from a copy, or move it away to start empty)"
            )))
        };
        // Zeros to the end: the space the writer allocates ahead (see [`Io::reserve`]), or
        // that the file system allocated for a write that never landed. No record begins
        // with a zero length, so this is the end of the data, not damage.
        if rest.iter().all(|&b| b == 0) {
            return Ok(Parsed {
                records,
                torn_at: None,
                zeros_at: Some(at as u64),
            });
        }
        if rest.len() < 8 {
            return Ok(Parsed {
                records,
                torn_at: Some(at as u64),
                zeros_at: None,
            });
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        if len > MAX_RECORD {
            return torn(&format!("length {len} is absurd"));
        }
        if len == 0 {
            return torn("length 0 (zeros with data after them)");
        }
        let end = 8 + len as usize;
        if end > rest.len() {
            // The last record, cut short.
            return Ok(Parsed {
                records,
                torn_at: Some(at as u64),
                zeros_at: None,
            });
        }
        let payload = &rest[8..end];
        if crc32(payload) != crc {
            if end == rest.len() {
                // The last record, its bytes partly written.
                return Ok(Parsed {
                    records,
                    torn_at: Some(at as u64),
                    zeros_at: None,
                });
            }
            return torn("checksum mismatch");
        }
        records.push((at as u64, payload));
        at += end;
    }
    Ok(Parsed {
        records,
        torn_at: None,
        zeros_at: None,
    })
}

/// The first record of a segment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentHeader {
    /// The segment's generation.
    pub generation: u64,
    /// Unix time (ms) of the core's clock 0, the same in every segment of a directory.
    pub epoch_ms: u64,
    /// The policy its events were applied under.
    pub config: CoreConfig,
}

/// A journalled event.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    t: Millis,
    e: Event,
}

/// A borrowed [`Record`], for encoding without a copy.
#[derive(Serialize)]
struct RecordRef<'a> {
    t: Millis,
    e: &'a Event,
}

/// The content of `snapshot-<G>.snap`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotFile {
    /// The segment that continues from it.
    pub generation: u64,
    /// As in [`SegmentHeader`].
    pub epoch_ms: u64,
    /// The state.
    pub core: CoreSnapshot,
}

/// Encodes one event as a journal record (length, checksum, JSON).
pub fn encode_event(now: Millis, event: &Event) -> Vec<u8> {
    let payload = serde_json::to_vec(&RecordRef { t: now, e: event }).expect("events serialise");
    let mut out = Vec::with_capacity(payload.len() + 8);
    frame(&payload, &mut out);
    out
}

fn segment_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("journal-{generation:08}.log"))
}

fn snapshot_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("snapshot-{generation:08}.snap"))
}

fn generation_of(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

/// Options for a file of the state directory: created mode 600 (the journal holds the
/// workers' tokens).
fn private() -> OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = OpenOptions::new();
    o.mode(0o600);
    o
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("sync the directory", dir, e))
}

/// Temporary file, fsync, rename, fsync of the directory.
fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), JournalError> {
    let tmp = path.with_extension("tmp");
    let mut f = private()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| io_err("create", &tmp, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| io_err("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err("rename into", path, e))?;
    sync_dir(dir)
}

fn new_segment(
    dir: &Path,
    generation: u64,
    epoch_ms: u64,
    config: &CoreConfig,
) -> Result<(File, u64), JournalError> {
    let path = segment_path(dir, generation);
    let mut f = private()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| io_err("create", &path, e))?;
    let mut bytes = file_start(JOURNAL_MAGIC);
    let header = serde_json::to_vec(&SegmentHeader {
        generation,
        epoch_ms,
        config: config.clone(),
    })
    .expect("header serialises");
    frame(&header, &mut bytes);
    f.write_all(&bytes)
        .and_then(|_| f.sync_data())
        .map_err(|e| io_err("write", &path, e))?;
    sync_dir(dir)?;
    Ok((f, bytes.len() as u64))
}

/// Moves the clock of a detail the core made with epoch 0 to Unix time.
pub fn with_epoch(mut d: TaskDetail, epoch_ms: u64) -> TaskDetail {
    d.created_unix_ms += epoch_ms;
    for t in [
        &mut d.assigned_unix_ms,
        &mut d.started_unix_ms,
        &mut d.finished_unix_ms,
    ]
    .into_iter()
    .flatten()
    {
        *t += epoch_ms;
    }
    for a in &mut d.history {
        a.assigned_unix_ms += epoch_ms;
        for t in [&mut a.started_unix_ms, &mut a.finished_unix_ms]
            .into_iter()
            .flatten()
        {
            *t += epoch_ms;
        }
    }
    d
}

/// Finished tasks that left memory: `archive.jsonl` (and the one before it), indexed by id.
struct Archive {
    dir: PathBuf,
    file: File,
    len: u64,
    /// Task → (in the old file, offset of its line).
    index: HashMap<TaskId, (bool, u64)>,
}

impl Archive {
    fn current(dir: &Path) -> PathBuf {
        dir.join("archive.jsonl")
    }
    fn old(dir: &Path) -> PathBuf {
        dir.join("archive.old.jsonl")
    }

    fn open(dir: &Path) -> Result<Archive, JournalError> {
        let mut index = HashMap::new();
        for (old, path) in [(true, Archive::old(dir)), (false, Archive::current(dir))] {
            let Ok(f) = File::open(&path) else { continue };
            let mut r = BufReader::new(f);
            let mut line = Vec::new();
            let mut at = 0u64;
            loop {
                line.clear();
                let n = r
                    .read_until(b'\n', &mut line)
                    .map_err(|e| io_err("read", &path, e))?;
                if n == 0 || line.last() != Some(&b'\n') {
                    break;
                }
                // Lines start with {"id":"<uuid>": read the id without parsing the rest.
                if let Some(id) = line
                    .get(7..43)
                    .and_then(|s| std::str::from_utf8(s).ok())
                    .and_then(|s| s.parse::<TaskId>().ok())
                {
                    index.insert(id, (old, at));
                }
                at += n as u64;
            }
        }
        let path = Archive::current(dir);
        let file = private()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err("open", &path, e))?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Archive {
            dir: dir.to_path_buf(),
            file,
            len,
            index,
        })
    }

    fn add(&mut self, detail: &TaskDetail) -> std::io::Result<()> {
        if self.index.contains_key(&detail.id) {
            return Ok(());
        }
        if self.len > ARCHIVE_ROTATE_BYTES {
            self.file.sync_data()?;
            std::fs::rename(Archive::current(&self.dir), Archive::old(&self.dir))?;
            self.file = private()
                .create(true)
                .append(true)
                .open(Archive::current(&self.dir))?;
            self.len = 0;
            self.index.retain(|_, (old, _)| !*old);
            for (old, _) in self.index.values_mut() {
                *old = true;
            }
        }
        let mut line = serde_json::to_vec(detail).expect("detail serialises");
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.index.insert(detail.id, (false, self.len));
        self.len += line.len() as u64;
        Ok(())
    }

    fn get(&self, id: TaskId) -> Option<TaskDetail> {
        let (old, at) = *self.index.get(&id)?;
        let path = if old {
            Archive::old(&self.dir)
        } else {
            Archive::current(&self.dir)
        };
        let mut f = File::open(path).ok()?;
        f.seek(SeekFrom::Start(at)).ok()?;
        let mut line = Vec::new();
        BufReader::new(f).read_until(b'\n', &mut line).ok()?;
        serde_json::from_slice(&line).ok()
    }
}

enum Item {
    Bytes(Vec<u8>),
    Rotate(u64, CoreConfig),
}

struct Pending {
    items: Vec<Item>,
    /// Records appended so far (the sequence number of the last one).
    appended: u64,
    bytes_since_snapshot: u64,
    /// Segments since the last snapshot (every start opens one).
    segments_since_snapshot: u64,
    /// The generation the next snapshot starts.
    next_generation: u64,
}

struct Io {
    file: File,
    generation: u64,
    /// Bytes written to `file` (where the next record goes).
    pos: u64,
    /// The file's length as allocated ahead ([`Io::reserve`]); `None` once the file system
    /// refused to allocate (the file then grows by its writes alone).
    allocated: Option<u64>,
}

/// How far ahead of the records a segment's space is allocated. A sync of records written
/// into space already allocated does not also commit the file's new length: on ext4 on the
/// development VM, `fdatasync` of a 300-byte record took 0.09–0.12 ms there against
/// 0.15–0.18 ms when appending (docs/benchmarks.md).
const ALLOCATE_AHEAD: u64 = 4 << 20;

impl Io {
    fn new(file: File, generation: u64, pos: u64) -> Io {
        Io {
            file,
            generation,
            pos,
            allocated: Some(pos),
        }
    }

    /// Makes sure the next `len` bytes fall in allocated space: extends the file with
    /// zeros (`fallocate`, which the reader takes as the end of the data) in steps of
    /// [`ALLOCATE_AHEAD`].
    fn reserve(&mut self, len: u64) {
        use std::os::fd::AsRawFd;
        let Some(allocated) = self.allocated else {
            return;
        };
        if self.pos + len <= allocated {
            return;
        }
        let want = (self.pos + len).div_ceil(ALLOCATE_AHEAD) * ALLOCATE_AHEAD;
        // SAFETY: plain syscall on a descriptor this struct owns.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                0,
                allocated as libc::off_t,
                (want - allocated) as libc::off_t,
            )
        };
        if rc == 0 {
            self.allocated = Some(want);
        } else {
            log::debug!(
                "journal: cannot allocate ahead ({}); appending instead",
                std::io::Error::last_os_error()
            );
            self.allocated = None;
        }
    }

    /// Cuts the space allocated ahead off the file (at a rotation and at the end), so the
    /// file is exactly its records.
    fn trim(&mut self) {
        if self.allocated.is_some_and(|a| a > self.pos) {
            let _ = self.file.set_len(self.pos);
            self.allocated = Some(self.pos);
        }
    }
}

/// The open journal of a state directory. See the module docs.
pub struct Journal {
    dir: PathBuf,
    epoch_ms: u64,
    /// This process's run of the journal (record numbers count from 1 in each).
    run: uuid::Uuid,
    pending: Mutex<Pending>,
    io: Mutex<Io>,
    durable: AtomicU64,
    /// Callers of [`Journal::sync_within`] waiting for someone else's sync, and what wakes
    /// them: each sync notifies when anyone waits.
    waiting: AtomicUsize,
    synced: (Mutex<()>, Condvar),
    archive: Mutex<Archive>,
    /// Held (flock) while the journal is open.
    _lock: File,
}

impl Drop for Journal {
    fn drop(&mut self) {
        lock(&self.io).trim();
    }
}

/// A snapshot begun under the controller's lock, to be written outside it.
pub struct PendingSnapshot {
    generation: u64,
    core: CoreSnapshot,
}

/// What [`open`] found.
#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    /// Nothing was there: a new state directory.
    pub fresh: bool,
    /// The snapshot the state started from.
    pub snapshot: Option<u64>,
    /// Events replayed after it.
    pub events: u64,
    /// Segments read.
    pub segments: u64,
    /// Journal bytes read.
    pub bytes: u64,
    /// Torn records cut off, one line each.
    pub torn: Vec<String>,
}

/// A state directory opened: the core as the journal left it (under `cfg` from now on), its
/// clock epoch, and the journal to go on with.
pub struct Recovered {
    /// The state.
    pub core: Core,
    /// Unix time (ms) of the core's clock 0.
    pub epoch_ms: u64,
    /// Appends to a new segment.
    pub journal: Journal,
    /// What was read.
    pub report: RecoveryReport,
}

fn lock_dir(dir: &Path) -> Result<File, JournalError> {
    use std::os::unix::io::AsRawFd;
    let path = dir.join("lock");
    let mut f = private()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| io_err("open", &path, e))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut holder = String::new();
        let _ = f.read_to_string(&mut holder);
        return Err(JournalError::Locked(format!(
            "{} is in use by another controller (pid {}); stop it, or give this one another --state-dir",
            dir.display(),
            holder.trim()
        )));
    }
    let _ = f.set_len(0);
    let _ = writeln!(f, "{}", std::process::id());
    Ok(f)
}

/// Opens (or creates) a state directory and rebuilds the core from it. `now_unix_ms` is the
/// epoch of a new directory.
pub fn open(dir: &Path, cfg: CoreConfig, now_unix_ms: u64) -> Result<Recovered, JournalError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    // Worker tokens are in the journal: a new directory is the owner's alone, and every file
    // in it is created mode 600. An existing directory keeps its mode (it may be shared on
    // purpose), with a warning if others can look in.
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io_err("create", dir, e))?;
    } else if let Ok(m) = std::fs::metadata(dir)
        && m.permissions().mode() & 0o077 != 0
    {
        log::warn!(
            "state directory {} can be listed by other users (mode {:o}); its files are mode 600, but consider chmod 700",
            dir.display(),
            m.permissions().mode() & 0o777
        );
    }
    let lock = lock_dir(dir)?;
    let mut segments = Vec::new();
    let mut snapshots = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_err("list", dir, e))? {
        let entry = entry.map_err(|e| io_err("list", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(g) = generation_of(&name, "journal-", ".log") {
            segments.push(g);
        } else if let Some(g) = generation_of(&name, "snapshot-", ".snap") {
            snapshots.push(g);
        } else if name.ends_with(".tmp") {
            // A snapshot whose writing a crash interrupted.
            let _ = std::fs::remove_file(entry.path());
        }
    }
    segments.sort_unstable();
    snapshots.sort_unstable();
    let mut report = RecoveryReport {
        fresh: segments.is_empty() && snapshots.is_empty(),
        ..Default::default()
    };
    let archive = Archive::open(dir)?;
    let mut epoch = None;
    let mut core = match snapshots.last() {
        Some(&g) => {
            let path = snapshot_path(dir, g);
            let bytes = std::fs::read(&path).map_err(|e| io_err("read", &path, e))?;
            let parsed = parse(&path, &bytes, SNAPSHOT_MAGIC)?;
            let [(_, payload)] = parsed.records[..] else {
                return Err(JournalError::Corrupt(format!(
                    "{}: a snapshot holds one whole record, this one does not (it is written whole or not at all, so the file was damaged later)",
                    path.display()
                )));
            };
            let snap: SnapshotFile = serde_json::from_slice(payload).map_err(|e| {
                JournalError::Corrupt(format!("{}: cannot decode: {e}", path.display()))
            })?;
            epoch = Some(snap.epoch_ms);
            report.snapshot = Some(g);
            Core::restore(snap.core).map_err(|e| {
                JournalError::Corrupt(format!("{}: inconsistent state: {e}", path.display()))
            })?
        }
        None => Core::new(cfg.clone()),
    };
    let first = report.snapshot.unwrap_or(0);
    let replay: Vec<u64> = segments.iter().copied().filter(|&g| g >= first).collect();
    for (i, &g) in replay.iter().enumerate() {
        if g != first + i as u64 {
            return Err(JournalError::Corrupt(format!(
                "{}: missing (the segments after it cannot be replayed without it)",
                segment_path(dir, first + i as u64).display()
            )));
        }
    }
    let mut archive = archive;
    for (i, &g) in replay.iter().enumerate() {
        let path = segment_path(dir, g);
        let bytes = std::fs::read(&path).map_err(|e| io_err("read", &path, e))?;
        report.bytes += bytes.len() as u64;
        report.segments += 1;
        let parsed = parse(&path, &bytes, JOURNAL_MAGIC)?;
        let last = i + 1 == replay.len();
        if let Some(at) = parsed.torn_at {
            if !last {
                return Err(JournalError::Corrupt(format!(
                    "{}: damaged record at offset {at} in a segment that was complete when the next one began",
                    path.display()
                )));
            }
            let line = format!(
                "{}: torn last record at offset {at} ({} bytes) dropped: the controller stopped while writing it, before it was acknowledged",
                path.display(),
                bytes.len() as u64 - at
            );
            log::warn!("{line}");
            report.torn.push(line);
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| io_err("open", &path, e))?;
            f.set_len(at.max(12))
                .and_then(|_| f.sync_all())
                .map_err(|e| io_err("truncate", &path, e))?;
        }
        if let Some(at) = parsed.zeros_at {
            // Space allocated ahead by a controller that did not stop cleanly: give it back.
            if let Err(e) = OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(at))
            {
                log::warn!("{}: cannot trim its unused tail: {e}", path.display());
            }
        }
        let mut records = parsed.records.into_iter();
        let Some((_, header)) = records.next() else {
            // A segment cut before its header: it holds no event.
            continue;
        };
        let header: SegmentHeader = serde_json::from_slice(header).map_err(|e| {
            JournalError::Corrupt(format!("{}: bad segment header: {e}", path.display()))
        })?;
        if *epoch.get_or_insert(header.epoch_ms) != header.epoch_ms {
            return Err(JournalError::Corrupt(format!(
                "{}: its clock epoch differs from the snapshot's: files of two state directories are mixed",
                path.display()
            )));
        }
        core.set_config(header.config);
        for (at, payload) in records {
            let rec: Record = serde_json::from_slice(payload).map_err(|e| {
                JournalError::Corrupt(format!(
                    "{}: record at offset {at} does not decode: {e}",
                    path.display()
                ))
            })?;
            if let Err(e) = core.apply(rec.t, rec.e) {
                return Err(JournalError::Corrupt(format!(
                    "{}: record at offset {at} no longer applies ({e}): the journal and this build disagree",
                    path.display()
                )));
            }
            report.events += 1;
            for d in core.take_decisions() {
                if let Decision::Evicted { detail } = d {
                    let detail = with_epoch(*detail, epoch.unwrap_or(0));
                    archive
                        .add(&detail)
                        .map_err(|e| io_err("append to", &Archive::current(dir), e))?;
                }
            }
        }
    }
    core.set_config(cfg.clone());
    let epoch_ms = epoch.unwrap_or(now_unix_ms);
    let generation = segments
        .last()
        .copied()
        .max(report.snapshot)
        .map_or(0, |g| g + 1);
    let (file, pos) = new_segment(dir, generation, epoch_ms, &cfg)?;
    // Leftovers of an interrupted compaction.
    for &g in segments.iter().filter(|&&g| g < first) {
        let _ = std::fs::remove_file(segment_path(dir, g));
    }
    for &g in snapshots.iter().filter(|&&g| g < first) {
        let _ = std::fs::remove_file(snapshot_path(dir, g));
    }
    Ok(Recovered {
        core,
        epoch_ms,
        journal: Journal {
            dir: dir.to_path_buf(),
            epoch_ms,
            run: uuid::Uuid::new_v4(),
            pending: Mutex::new(Pending {
                items: Vec::new(),
                appended: 0,
                bytes_since_snapshot: report.bytes,
                segments_since_snapshot: report.segments + 1,
                next_generation: generation + 1,
            }),
            io: Mutex::new(Io::new(file, generation, pos)),
            durable: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            synced: (Mutex::new(()), Condvar::new()),
            archive: Mutex::new(archive),
            _lock: lock,
        },
        report,
    })
}

/// Ends the process after a failed journal write: it cannot promise durability any more, and
/// a restart serves what is on disk (a prefix of what happened).
fn fatal(what: String) -> ! {
    log::error!("{what}; stopping: a restart replays what the journal holds");
    eprintln!("warp-controller: {what}; stopping (exit 70)");
    std::process::exit(70)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Journal {
    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Unix time (ms) of the core's clock 0.
    pub fn epoch_ms(&self) -> u64 {
        self.epoch_ms
    }

    /// Queues one encoded record ([`encode_event`]); call under the controller's lock, in the
    /// order the events were applied. Returns its sequence number.
    pub fn append(&self, record: Vec<u8>) -> u64 {
        let mut p = lock(&self.pending);
        p.bytes_since_snapshot += record.len() as u64;
        match p.items.last_mut() {
            Some(Item::Bytes(b)) => b.extend_from_slice(&record),
            _ => p.items.push(Item::Bytes(record)),
        }
        p.appended += 1;
        p.appended
    }

    /// The sequence number of the last record appended.
    pub fn appended(&self) -> u64 {
        lock(&self.pending).appended
    }

    /// How far the journal is on disk, as workers are told.
    pub fn durability(&self) -> warp_common::protocol::Durability {
        warp_common::protocol::Durability {
            run: self.run,
            through: self.durable.load(Ordering::Acquire),
        }
    }

    /// Journal bytes since the last snapshot (the timer snapshots past [`SNAPSHOT_BYTES`]).
    pub fn bytes_since_snapshot(&self) -> u64 {
        lock(&self.pending).bytes_since_snapshot
    }

    /// Whether a snapshot is due: `max_bytes` of journal, or [`MAX_SEGMENTS`] segments (a
    /// controller restarted often opens many small ones) since the last.
    pub fn snapshot_due(&self, max_bytes: u64) -> bool {
        let p = lock(&self.pending);
        p.bytes_since_snapshot > max_bytes || p.segments_since_snapshot > MAX_SEGMENTS
    }

    /// Returns once every record up to `seq` is on disk: writes everything pending and syncs
    /// once, for every caller waiting meanwhile.
    pub fn sync(&self, seq: u64) {
        if self.durable.load(Ordering::Acquire) >= seq {
            return;
        }
        let mut io = lock(&self.io);
        if self.durable.load(Ordering::Acquire) >= seq {
            return;
        }
        self.drain(&mut io);
    }

    /// [`Journal::sync`], but first gives another request up to `grace` to make `seq`
    /// durable with its own sync: a submit whose task went straight to an idle worker waits
    /// for that worker's report, so one sync covers both records instead of two in a row.
    pub fn sync_within(&self, seq: u64, grace: std::time::Duration) {
        let deadline = std::time::Instant::now() + grace;
        {
            let (m, cv) = &self.synced;
            let mut g = lock(m);
            self.waiting.fetch_add(1, Ordering::SeqCst);
            while self.durable.load(Ordering::SeqCst) < seq {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                g = cv
                    .wait_timeout(g, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        self.sync(seq);
    }

    /// Writes everything pending (rotating segments where asked) and syncs.
    fn drain(&self, io: &mut Io) {
        let (items, upto) = {
            let mut p = lock(&self.pending);
            (std::mem::take(&mut p.items), p.appended)
        };
        for item in items {
            match item {
                Item::Bytes(b) => {
                    io.reserve(b.len() as u64);
                    io.pos += b.len() as u64;
                    if let Err(e) = io.file.write_all(&b) {
                        fatal(format!(
                            "cannot write {}: {e}",
                            segment_path(&self.dir, io.generation).display()
                        ));
                    }
                }
                Item::Rotate(generation, cfg) => {
                    if let Err(e) = io.file.sync_data() {
                        fatal(format!(
                            "cannot sync {}: {e}",
                            segment_path(&self.dir, io.generation).display()
                        ));
                    }
                    io.trim();
                    match new_segment(&self.dir, generation, self.epoch_ms, &cfg) {
                        Ok((f, pos)) => *io = Io::new(f, generation, pos),
                        Err(e) => fatal(e.to_string()),
                    }
                }
            }
        }
        #[cfg(feature = "failpoints")]
        failpoint("journal-before-sync");
        if let Err(e) = io.file.sync_data() {
            fatal(format!(
                "cannot sync {}: {e}",
                segment_path(&self.dir, io.generation).display()
            ));
        }
        self.durable.fetch_max(upto, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            let (m, cv) = &self.synced;
            let _g = lock(m);
            cv.notify_all();
        }
    }

    /// Starts a snapshot of `core`: call under the controller's lock. The events appended
    /// after it go to a new segment.
    pub fn begin_snapshot(&self, core: &Core) -> PendingSnapshot {
        let mut p = lock(&self.pending);
        let generation = p.next_generation;
        p.next_generation += 1;
        p.items
            .push(Item::Rotate(generation, core.config().clone()));
        p.bytes_since_snapshot = 0;
        PendingSnapshot {
            generation,
            core: core.snapshot(),
        }
    }

    /// Writes a snapshot begun with [`Journal::begin_snapshot`] (outside the lock), then
    /// deletes the segments and snapshots it replaces.
    pub fn finish_snapshot(&self, s: PendingSnapshot) -> Result<u64, JournalError> {
        // The rotation is pending until a sync: make one, so the new segment exists and the
        // old one is complete on disk.
        self.drain(&mut lock(&self.io));
        let payload = serde_json::to_vec(&SnapshotFile {
            generation: s.generation,
            epoch_ms: self.epoch_ms,
            core: s.core,
        })
        .expect("snapshot serialises");
        let mut bytes = file_start(SNAPSHOT_MAGIC);
        frame(&payload, &mut bytes);
        let path = snapshot_path(&self.dir, s.generation);
        write_atomic(&self.dir, &path, &bytes)?;
        // The archive holds what the deleted segments alone still had.
        lock(&self.archive)
            .file
            .sync_data()
            .map_err(|e| io_err("sync", &Archive::current(&self.dir), e))?;
        for entry in std::fs::read_dir(&self.dir).map_err(|e| io_err("list", &self.dir, e))? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            let old = generation_of(&name, "journal-", ".log")
                .or_else(|| generation_of(&name, "snapshot-", ".snap"))
                .is_some_and(|g| g < s.generation);
            if old {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(bytes.len() as u64)
    }

    /// Keeps a task retention dropped from memory (times already in Unix ms).
    pub fn archive(&self, detail: &TaskDetail) {
        if let Err(e) = lock(&self.archive).add(detail) {
            // The journal still holds the task until the next snapshot, which syncs the
            // archive first and fails if it cannot.
            log::error!(
                "cannot append task {} to the archive in {}: {e}",
                detail.id,
                self.dir.display()
            );
        }
    }

    /// A task retention dropped from memory, from the archive.
    pub fn archived(&self, id: TaskId) -> Option<TaskDetail> {
        lock(&self.archive).get(id)
    }
}

/// Test builds only: `WARP_FAILPOINT=journal-before-sync:P` ends the process (SIGKILL-like,
/// no cleanup) with probability P at that point, between a record's write and its sync.
#[cfg(feature = "failpoints")]
fn failpoint(name: &str) {
    static SPEC: std::sync::OnceLock<Option<(String, f64)>> = std::sync::OnceLock::new();
    let spec = SPEC.get_or_init(|| {
        let v = std::env::var("WARP_FAILPOINT").ok()?;
        let (n, p) = v.split_once(':')?;
        Some((n.to_string(), p.parse().ok()?))
    });
    if let Some((n, p)) = spec
        && n == name
    {
        // The low 48 bits of a v4 uuid are random (the version and variant bits are above).
        let r = (uuid::Uuid::new_v4().as_u128() & 0xFFFF_FFFF_FFFF) as f64 / (1u64 << 48) as f64;
        if r < *p {
            eprintln!("failpoint {name} fired");
            std::process::abort();
        }
    }
}

/// Whether a reply means the event changed nothing the journal must keep.
pub fn journals(reply: &Result<Reply, crate::core::CoreError>) -> bool {
    matches!(reply, Ok(r) if *r != Reply::Unchanged)
}

#[cfg(test)]
#[path = "journal_tests.rs"]
mod tests;

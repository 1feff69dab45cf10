//! The journal against real files: round trips, torn tails, damage, versions, snapshots,
//! the directory lock and the archive.

use super::*;
use crate::core::CoreError;
use crate::core::tests::cfg;
use warp_common::commands::Command;
use warp_common::protocol::{RegisterRequest, ReportState, StatusUpdate, TaskSpec, TaskState};

/// A temporary state directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let p = std::env::temp_dir().join(format!(
            "warp-journal-{name}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the server does: apply, journal what changed, carry out evictions.
fn apply(r: &mut Recovered, now: Millis, e: Event) -> Result<Reply, CoreError> {
    let rec = encode_event(now, &e);
    let reply = r.core.apply(now, e);
    if journals(&reply) {
        let seq = r.journal.append(rec);
        r.journal.sync(seq);
    }
    for d in r.core.take_decisions() {
        if let Decision::Evicted { detail } = d {
            r.journal.archive(&with_epoch(*detail, r.epoch_ms));
        }
    }
    reply
}

fn state(c: &Core) -> serde_json::Value {
    serde_json::to_value(c.snapshot()).unwrap()
}

/// Registers a worker, submits `n` tasks and completes half of them.
fn history(r: &mut Recovered, n: usize) -> Vec<TaskId> {
    let w = uuid::Uuid::from_u128(1);
    apply(
        r,
        1,
        Event::Register {
            id: w,
            token: "t".into(),
            req: RegisterRequest {
                protocol_version: warp_common::PROTOCOL_VERSION,
                device: 0,
                hostname: "node".into(),
                capabilities: Default::default(),
                worker_version: "test".into(),
                spawn_id: None,
                pid: None,
            },
        },
    )
    .unwrap();
    let ids: Vec<TaskId> = (0..n)
        .map(|i| uuid::Uuid::from_u128(100 + i as u128))
        .collect();
    let tasks = ids
        .iter()
        .map(|id| (*id, TaskSpec::new(vec![Command::Sleep { ms: 1 }])))
        .collect();
    apply(r, 2, Event::Submit { tasks }).unwrap();
    for i in 0..n / 2 {
        let Ok(Reply::Poll(mut batch)) = apply(r, 3 + i as u64, Event::Poll { worker: w }) else {
            panic!("no work")
        };
        let a = batch.pop().expect("work");
        let update = StatusUpdate {
            lease: a.lease,
            state: ReportState::Completed,
            result: Some(serde_json::json!({"i": i})),
            error: None,
            progress: None,
            elapsed_ms: Some(0),
            held_fingerprint: None,
            console: Vec::new(),
            want_next: false,
            permanent: false,
            also: Vec::new(),
        };
        apply(
            r,
            3 + i as u64,
            Event::Status {
                worker: w,
                task: a.id,
                update,
            },
        )
        .unwrap();
    }
    ids
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    v.sort();
    v
}

#[test]
fn crc32_is_the_ieee_one() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc32(b""), 0);
}

#[test]
fn a_reopened_directory_gives_the_same_state() {
    let d = Dir::new("roundtrip");
    let mut r = open(&d.0, cfg(), 1_000).unwrap();
    assert!(r.report.fresh);
    let ids = history(&mut r, 10);
    let before = state(&r.core);
    drop(r);
    let r = open(&d.0, cfg(), 9_999).unwrap();
    assert!(!r.report.fresh);
    assert_eq!(r.epoch_ms, 1_000, "the epoch of the first start");
    assert_eq!(state(&r.core), before);
    assert_eq!(r.core.task_state(ids[0]), Some(TaskState::Completed));
    assert_eq!(r.core.task_state(ids[9]), Some(TaskState::Queued));
    // Every start opens a new segment.
    assert_eq!(segments(&d.0).len(), 2);
    // Worker tokens are in there: the directory and its files are the owner's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&d.0), 0o700);
    for e in std::fs::read_dir(&d.0).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
}

#[test]
fn a_torn_last_record_is_dropped_and_anything_else_stops_the_start() {
    let d = Dir::new("torn");
    let mut r = open(&d.0, cfg(), 0).unwrap();
    history(&mut r, 4);
    let all = state(&r.core);
    drop(r);
    let seg = segments(&d.0).remove(0);
    let bytes = std::fs::read(&seg).unwrap();
    // Cut the last record short, as a crash mid-write does.
    std::fs::write(&seg, &bytes[..bytes.len() - 5]).unwrap();
    let r = open(&d.0, cfg(), 0).unwrap();
    assert_eq!(r.report.torn.len(), 1, "{:?}", r.report);
    assert!(r.report.torn[0].contains("torn last record"));
    assert_ne!(state(&r.core), all, "the last event is gone");
    assert_eq!(r.report.events, 5, "register, submit, poll, status, poll");
    drop(r);
    // The torn tail was cut off: the next start finds nothing torn.
    let r = open(&d.0, cfg(), 0).unwrap();
    assert!(r.report.torn.is_empty());
    drop(r);
    // A flipped byte inside an earlier record is damage: the start stops and says where.
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();
    let err = open(&d.0, cfg(), 0).err().expect("damage is refused");
    let msg = err.to_string();
    assert!(matches!(err, JournalError::Corrupt(_)), "{msg}");
    assert!(msg.contains(&seg.display().to_string()), "{msg}");
    assert!(msg.contains("offset"), "{msg}");
}

#[test]
fn space_allocated_ahead_is_the_end_of_the_data_and_is_trimmed_at_the_end() {
    let d = Dir::new("ahead");
    let mut r = open(&d.0, cfg(), 0).unwrap();
    history(&mut r, 4);
    let all = state(&r.core);
    let seg = segments(&d.0).remove(0);
    // What a crash leaves: the records, then the zeros allocated ahead of them.
    let crashed = std::fs::read(&seg).unwrap();
    drop(r);
    let trimmed = std::fs::read(&seg).unwrap();
    if crashed.len() == trimmed.len() {
        eprintln!("skipped: this file system does not allocate ahead (fallocate refused)");
        return;
    }
    assert_eq!(crashed.len() as u64 % ALLOCATE_AHEAD, 0);
    assert_eq!(&crashed[..trimmed.len()], &trimmed[..], "the same records");
    assert!(crashed[trimmed.len()..].iter().all(|&b| b == 0));
    std::fs::write(&seg, &crashed).unwrap();
    let r = open(&d.0, cfg(), 0).unwrap();
    assert!(r.report.torn.is_empty(), "{:?}", r.report);
    assert_eq!(state(&r.core), all, "every event replayed");
    let len = std::fs::metadata(&seg).unwrap().len();
    assert_eq!(
        len,
        trimmed.len() as u64,
        "the start gave the unused space back"
    );
    drop(r);
    // Bytes after the zeros are damage, not the end of the data.
    let mut bad = crashed;
    *bad.last_mut().unwrap() = 1;
    std::fs::write(&seg, &bad).unwrap();
    let msg = open(&d.0, cfg(), 0).err().expect("refused").to_string();
    assert!(msg.contains(&format!("offset {}", trimmed.len())), "{msg}");
}

#[test]
fn a_sync_with_grace_is_covered_by_the_next_sync_or_syncs_alone() {
    use std::time::{Duration, Instant};
    let d = Dir::new("grace");
    let r = open(&d.0, cfg(), 0).unwrap();
    let j = &r.journal;
    let first = j.append(encode_event(1, &Event::Tick));
    let second = std::thread::scope(|s| {
        let t = Instant::now();
        let waiter = s.spawn(move || {
            j.sync_within(first, Duration::from_secs(60));
            t.elapsed()
        });
        std::thread::sleep(Duration::from_millis(50));
        let second = j.append(encode_event(2, &Event::Tick));
        j.sync(second);
        let waited = waiter.join().unwrap();
        assert!(
            waited < Duration::from_secs(30),
            "the other request's sync ends the wait: {waited:?}"
        );
        second
    });
    assert!(j.durability().through >= second);
    // Nobody else syncs: it waits out its grace, then syncs itself.
    let third = j.append(encode_event(3, &Event::Tick));
    let t = Instant::now();
    j.sync_within(third, Duration::from_millis(100));
    assert!(t.elapsed() >= Duration::from_millis(100));
    assert_eq!(j.durability().through, third);
}

#[test]
fn another_format_version_is_refused_with_the_version() {
    let d = Dir::new("version");
    drop(open(&d.0, cfg(), 0).unwrap());
    let seg = segments(&d.0).remove(0);
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[8..12].copy_from_slice(&7u32.to_le_bytes());
    std::fs::write(&seg, &bytes).unwrap();
    let msg = open(&d.0, cfg(), 0).err().unwrap().to_string();
    assert!(msg.contains("format version 7"), "{msg}");
    std::fs::write(&seg, b"hello, not a journal at all").unwrap();
    let msg = open(&d.0, cfg(), 0).err().unwrap().to_string();
    assert!(msg.contains("bad magic"), "{msg}");
}

#[test]
fn a_snapshot_replaces_the_segments_before_it() {
    let d = Dir::new("snapshot");
    let mut r = open(&d.0, cfg(), 0).unwrap();
    history(&mut r, 6);
    let pending = r.journal.begin_snapshot(&r.core);
    r.journal.finish_snapshot(pending).unwrap();
    // Events after the snapshot go to the new segment.
    let w = uuid::Uuid::from_u128(1);
    apply(&mut r, 50, Event::Poll { worker: w }).unwrap();
    let before = state(&r.core);
    let names: Vec<String> = std::fs::read_dir(&d.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("journal") || n.starts_with("snapshot"))
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    drop(r);
    let r = open(&d.0, cfg(), 0).unwrap();
    assert_eq!(r.report.snapshot, Some(1));
    assert_eq!(r.report.events, 1, "only the tail is replayed");
    assert_eq!(state(&r.core), before);
}

#[test]
fn one_controller_at_a_time() {
    let d = Dir::new("lock");
    let r = open(&d.0, cfg(), 0).unwrap();
    let err = open(&d.0, cfg(), 0).err().unwrap();
    assert!(matches!(err, JournalError::Locked(_)), "{err}");
    assert!(err.to_string().contains(&std::process::id().to_string()));
    drop(r);
    open(&d.0, cfg(), 0).unwrap();
}

#[test]
fn evicted_tasks_stay_readable_from_the_archive() {
    let d = Dir::new("archive");
    let small = CoreConfig {
        keep_finished: 1,
        ..cfg()
    };
    let mut r = open(&d.0, small.clone(), 5_000).unwrap();
    let ids = history(&mut r, 6);
    // One more event applies the retention of the last finish.
    apply(&mut r, 100, Event::Cancel { task: ids[5] }).unwrap();
    assert_eq!(r.core.task_state(ids[0]), None, "evicted from memory");
    let d0 = r.journal.archived(ids[0]).expect("archived");
    assert_eq!(d0.state, TaskState::Completed);
    assert_eq!(d0.result, Some(serde_json::json!({"i": 0})));
    assert!(d0.created_unix_ms >= 5_000, "times are Unix times");
    drop(r);
    let r = open(&d.0, small, 0).unwrap();
    assert_eq!(r.journal.archived(ids[1]).unwrap().id, ids[1]);
    assert!(r.journal.archived(uuid::Uuid::from_u128(7)).is_none());
}

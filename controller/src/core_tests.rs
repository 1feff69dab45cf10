//! Scenarios of the state core, without sockets: every step is followed by `sanity_check`.

use super::*;
use warp_common::commands::Command;
use warp_common::protocol::{InitPart, Progress};

/// The policy of the scenario tests (also the journal's): short timeouts, nothing evicted.
pub(crate) fn cfg() -> CoreConfig {
    CoreConfig {
        heartbeat_timeout_ms: 1_000,
        task_timeout_ms: 10_000,
        max_attempts: 3,
        heartbeat_interval_ms: 100,
        poll_hold_ms: 500,
        keep_finished: usize::MAX,
        forget_offline_ms: u64::MAX,
        batch_budget_ms: BATCH_BUDGET_MS,
    }
}

struct Sim {
    core: Core,
    now: Millis,
    n: u128,
    /// What a journal would hold: every event that changed something, with its time.
    log: Vec<(Millis, Event)>,
}

impl Sim {
    fn new() -> Sim {
        Sim::with(cfg())
    }
    fn with(cfg: CoreConfig) -> Sim {
        Sim {
            core: Core::new(cfg),
            now: 0,
            n: 1,
            log: Vec::new(),
        }
    }
    fn id(&mut self) -> uuid::Uuid {
        self.n += 1;
        uuid::Uuid::from_u128(self.n)
    }
    fn apply(&mut self, e: Event) -> Result<Reply, CoreError> {
        let r = self.core.apply(self.now, e.clone());
        if crate::journal::journals(&r) {
            self.log.push((self.now, e));
        }
        if let Err(msg) = self.core.sanity_check() {
            panic!("invariant broken: {msg}\n{:#?}", self.core);
        }
        r
    }
    fn register(&mut self, device: i32) -> WorkerId {
        self.register_batching(device, 0)
    }
    /// A worker that takes batches of up to `max_batch` tasks.
    fn register_batching(&mut self, device: i32, max_batch: u32) -> WorkerId {
        let id = self.id();
        let req = RegisterRequest {
            protocol_version: warp_common::PROTOCOL_VERSION,
            device,
            hostname: "node1".into(),
            capabilities: warp_common::protocol::Capabilities {
                max_batch,
                ..Default::default()
            },
            worker_version: "test".into(),
            spawn_id: None,
            pid: None,
        };
        self.apply(Event::Register {
            id,
            token: format!("tok-{id}"),
            req,
        })
        .unwrap();
        id
    }
    fn submit(&mut self, spec: TaskSpec) -> TaskId {
        let id = self.id();
        self.apply(Event::Submit {
            tasks: vec![(id, spec)],
        })
        .unwrap();
        id
    }
    /// A poll that may return a batch.
    fn poll_all(&mut self, w: WorkerId) -> Vec<Assignment> {
        match self.apply(Event::Poll { worker: w }).unwrap() {
            Reply::Poll(a) => a,
            r => panic!("unexpected {r:?}"),
        }
    }
    fn poll(&mut self, w: WorkerId) -> Option<Assignment> {
        match self.apply(Event::Poll { worker: w }).unwrap() {
            Reply::Poll(mut a) => {
                assert!(a.len() <= 1, "a batch to a worker that takes none: {a:?}");
                a.pop()
            }
            r => panic!("unexpected {r:?}"),
        }
    }
    fn report(
        &mut self,
        w: WorkerId,
        a: &Assignment,
        state: ReportState,
    ) -> Result<Reply, CoreError> {
        let update = update_for(a, state);
        self.apply(Event::Status {
            worker: w,
            task: a.id,
            update,
        })
    }
    fn heartbeat(&mut self, w: WorkerId, current: Option<&Assignment>) -> HeartbeatResponse {
        let req = HeartbeatRequest {
            current_task: current.map(|a| a.id),
            lease: current.map(|a| a.lease),
            ..Default::default()
        };
        match self.apply(Event::Heartbeat { worker: w, req }).unwrap() {
            Reply::Heartbeat(h) => h,
            r => panic!("unexpected {r:?}"),
        }
    }
    fn state(&self, t: TaskId) -> TaskState {
        self.core.task_state(t).unwrap()
    }
    fn detail(&self, t: TaskId) -> TaskDetail {
        self.core.task_detail(t, 0).unwrap()
    }
}

/// A report of `state` for the attempt `a`: a result naming the attempt when completed, an
/// error naming it when failed.
fn update_for(a: &Assignment, state: ReportState) -> StatusUpdate {
    StatusUpdate {
        lease: a.lease,
        state,
        result: (state == ReportState::Completed).then(|| serde_json::json!({"ok": a.attempt})),
        error: (state == ReportState::Failed).then(|| format!("boom {}", a.attempt)),
        progress: None,
        elapsed_ms: None,
        held_fingerprint: None,
        console: vec![],
        want_next: false,
        permanent: false,
        also: Vec::new(),
    }
}

fn sleep_spec() -> TaskSpec {
    TaskSpec::new(vec![Command::Sleep { ms: 1 }])
}

#[test]
fn queued_task_is_handed_to_the_next_poll_and_completes() {
    let mut s = Sim::new();
    let w = s.register(0);
    let t = s.submit(sleep_spec());
    let a = s.poll(w).expect("work waiting");
    assert_eq!((a.id, a.attempt), (t, 1));
    assert_eq!(s.state(t), TaskState::Assigned);
    s.report(w, &a, ReportState::Running).unwrap();
    assert_eq!(s.state(t), TaskState::Running);
    s.report(w, &a, ReportState::Completed).unwrap();
    assert_eq!(s.state(t), TaskState::Completed);
    assert!(
        s.core
            .take_decisions()
            .contains(&Decision::Finished { task: t })
    );
    assert_eq!(s.detail(t).history.len(), 1);
}

#[test]
fn parked_poll_gets_work_on_submit() {
    let mut s = Sim::new();
    let w = s.register(0);
    assert_eq!(s.poll(w), None, "no work: the poll parks");
    assert_eq!(s.core.waiting_workers(), vec![w]);
    s.core.take_decisions();
    let t = s.submit(sleep_spec());
    let d = s.core.take_decisions();
    assert!(
        matches!(&d[..], [Decision::Deliver { worker, assignment, .. }] if *worker == w && assignment.id == t),
        "{d:?}"
    );
    assert!(s.core.waiting_workers().is_empty());
}

#[test]
fn expired_poll_unparks_and_later_work_waits_in_the_queue() {
    let mut s = Sim::new();
    let w = s.register(0);
    assert_eq!(s.poll(w), None);
    s.apply(Event::PollExpired { worker: w }).unwrap();
    s.core.take_decisions();
    let t = s.submit(sleep_spec());
    assert!(s.core.take_decisions().is_empty());
    assert_eq!(s.state(t), TaskState::Queued);
    assert_eq!(s.poll(w).unwrap().id, t);
}

#[test]
fn stale_lease_is_refused_and_changes_nothing() {
    let mut s = Sim::new();
    let (w1, w2) = (s.register(0), s.register(0));
    let t = s.submit(sleep_spec());
    let a1 = s.poll(w1).unwrap();
    // w1 goes silent; w2 keeps beating.
    s.now = 1_500;
    s.heartbeat(w2, None);
    s.apply(Event::Tick).unwrap();
    assert_eq!(s.state(t), TaskState::Queued);
    let a2 = s.poll(w2).unwrap();
    assert_eq!((a2.id, a2.attempt), (t, 2));
    s.report(w2, &a2, ReportState::Completed).unwrap();
    // w1 wakes up and reports its late result.
    let err = s.report(w1, &a1, ReportState::Completed).unwrap_err();
    assert!(matches!(err, CoreError::StaleLease { .. }), "{err:?}");
    let d = s.detail(t);
    assert_eq!(d.state, TaskState::Completed);
    assert_eq!(d.result, Some(serde_json::json!({"ok": 2})));
    assert_eq!(d.history[0].outcome, AttemptOutcome::WorkerLost);
    assert_eq!(d.history[1].outcome, AttemptOutcome::Completed);
    assert_eq!(s.core.status(0, 0).stale_reports_refused, 1);
}

#[test]
fn the_same_completion_sent_again_is_accepted_and_changes_nothing() {
    // A worker sends a final report again when it cannot be sure the journal has it.
    let mut s = Sim::new();
    let (w1, w2) = (s.register(0), s.register(0));
    let t = s.submit(sleep_spec());
    let a = s.poll(w1).unwrap();
    s.report(w1, &a, ReportState::Completed).unwrap();
    s.core.take_decisions();
    let before = serde_json::to_value(s.detail(t)).unwrap();
    match s.report(w1, &a, ReportState::Completed).unwrap() {
        Reply::Status(r) => assert!(r.accepted && r.task.is_none(), "{r:?}"),
        r => panic!("unexpected {r:?}"),
    }
    assert_eq!(serde_json::to_value(s.detail(t)).unwrap(), before);
    assert_eq!(s.core.take_decisions(), vec![]);
    // Another worker, or another outcome, with that lease is still refused.
    let err = s.report(w2, &a, ReportState::Completed).unwrap_err();
    assert!(matches!(err, CoreError::StaleLease { .. }), "{err:?}");
    let err = s.report(w1, &a, ReportState::Failed).unwrap_err();
    assert!(matches!(err, CoreError::StaleLease { .. }), "{err:?}");
    assert_eq!(serde_json::to_value(s.detail(t)).unwrap(), before);
}

#[test]
fn revived_worker_is_told_to_cancel_its_revoked_task() {
    let mut s = Sim::new();
    let w = s.register(0);
    s.submit(sleep_spec());
    let a = s.poll(w).unwrap();
    s.now = 2_000;
    s.apply(Event::Tick).unwrap();
    let hb = s.heartbeat(w, Some(&a));
    assert_eq!(hb.cancel, vec![a.id]);
    assert_eq!(
        s.core.workers(0)[0].state,
        WorkerState::Idle,
        "revived by its heartbeat"
    );
}

#[test]
fn failed_attempts_requeue_until_the_limit_then_fail_with_history() {
    let mut s = Sim::new();
    let w = s.register(0);
    let t = s.submit(sleep_spec());
    for attempt in 1..=3 {
        let a = s.poll(w).unwrap();
        assert_eq!(a.attempt, attempt);
        s.report(w, &a, ReportState::Failed).unwrap();
    }
    let d = s.detail(t);
    assert_eq!(d.state, TaskState::Failed);
    let errors: Vec<_> = d.history.iter().map(|a| a.error.clone().unwrap()).collect();
    assert_eq!(errors, ["boom 1", "boom 2", "boom 3"]);
    assert!(d.error.unwrap().contains("boom 3"));
    assert_eq!(s.poll(w), None);
}

#[test]
fn a_permanent_failure_is_not_retried() {
    let mut s = Sim::new();
    let w = s.register(0);
    let t = s.submit(sleep_spec());
    let a = s.poll(w).unwrap();
    let mut update = update_for(&a, ReportState::Failed);
    update.permanent = true;
    s.apply(Event::Status {
        worker: w,
        task: a.id,
        update,
    })
    .unwrap();
    let d = s.detail(t);
    assert_eq!(d.state, TaskState::Failed);
    assert_eq!(d.history.len(), 1, "one attempt of 3 allowed");
    let e = d.error.unwrap();
    assert!(e.contains("not retried") && e.contains("boom 1"), "{e}");
    assert_eq!(s.poll(w), None);
}

#[test]
fn a_worker_whose_process_exited_is_lost_at_once_and_its_attempt_counts() {
    let mut s = Sim::new();
    let w = s.register(0);
    let t = s.submit(sleep_spec());
    s.poll(w).unwrap();
    let exited = |s: &mut Sim, w| {
        s.apply(Event::Exited {
            worker: w,
            reason: "signal: 9 (SIGKILL)".into(),
        })
    };
    assert_eq!(exited(&mut s, w).unwrap(), Reply::Ack);
    let d = s.detail(t);
    assert_eq!(
        d.state,
        TaskState::Queued,
        "back in the queue, long before any timeout"
    );
    assert_eq!(d.history[0].outcome, AttemptOutcome::WorkerLost);
    assert!(d.history[0].error.as_deref().unwrap().contains("SIGKILL"));
    // Seen twice (or after its heartbeats stopped): nothing more happens.
    assert_eq!(exited(&mut s, w).unwrap(), Reply::Unchanged);
    // One that deregistered first is unknown.
    let v = s.register(0);
    s.apply(Event::Deregister {
        worker: v,
        reason: "stop".into(),
    })
    .unwrap();
    assert!(matches!(
        exited(&mut s, v),
        Err(CoreError::UnknownWorker(_))
    ));
}

#[test]
fn task_timeout_fails_the_attempt_and_requeues() {
    let mut s = Sim::new();
    let w = s.register(0);
    let mut spec = sleep_spec();
    spec.timeout_s = Some(0.2);
    let t = s.submit(spec);
    let a = s.poll(w).unwrap();
    s.now = 150;
    s.heartbeat(w, Some(&a));
    s.apply(Event::Tick).unwrap();
    assert_eq!(s.state(t), TaskState::Assigned);
    s.now = 250;
    s.apply(Event::Tick).unwrap();
    assert_eq!(s.state(t), TaskState::Queued);
    assert_eq!(s.detail(t).history[0].outcome, AttemptOutcome::TimedOut);
    assert_eq!(s.heartbeat(w, Some(&a)).cancel, vec![t]);
}

#[test]
fn cancel_queued_and_running_tasks() {
    let mut s = Sim::new();
    let w = s.register(0);
    let t1 = s.submit(sleep_spec());
    let t2 = s.submit(sleep_spec());
    let a = s.poll(w).unwrap();
    assert_eq!(a.id, t1);
    assert_eq!(
        s.apply(Event::Cancel { task: t2 }).unwrap(),
        Reply::Cancelled(TaskState::Cancelled)
    );
    assert_eq!(
        s.apply(Event::Cancel { task: t1 }).unwrap(),
        Reply::Cancelled(TaskState::Cancelled)
    );
    assert_eq!(s.heartbeat(w, Some(&a)).cancel, vec![t1]);
    assert!(matches!(
        s.report(w, &a, ReportState::Completed),
        Err(CoreError::StaleLease { .. })
    ));
    assert!(matches!(
        s.apply(Event::Cancel { task: t1 }),
        Err(CoreError::AlreadyFinished(..))
    ));
    assert_eq!(s.state(t1), TaskState::Cancelled);
    assert_eq!(s.poll(w), None);
}

#[test]
fn lost_delivery_is_redelivered_with_the_same_lease() {
    let mut s = Sim::new();
    let w = s.register(0);
    s.submit(sleep_spec());
    let a = s.poll(w).unwrap();
    let again = s.poll(w).unwrap();
    assert_eq!(a, again);
}

#[test]
fn poll_after_starting_without_a_report_fails_that_attempt() {
    let mut s = Sim::new();
    let w = s.register(0);
    let t = s.submit(sleep_spec());
    let a = s.poll(w).unwrap();
    s.report(w, &a, ReportState::Running).unwrap();
    let b = s.poll(w).unwrap();
    assert_eq!((b.id, b.attempt), (t, 2));
    assert_eq!(s.detail(t).history[0].outcome, AttemptOutcome::Failed);
}

#[test]
fn priority_then_age_then_targets() {
    let mut s = Sim::new();
    let w0 = s.register(0);
    let w1 = s.register(1);
    let low = s.submit(sleep_spec());
    let mut hi = sleep_spec();
    hi.priority = 5;
    let high = s.submit(hi);
    let mut dev1 = sleep_spec();
    dev1.target = Target::Device(1);
    let for_dev1 = s.submit(dev1);
    let mut own = sleep_spec();
    own.target = Target::Worker(w0);
    let for_w0 = s.submit(own);
    assert_eq!(s.poll(w0).unwrap().id, high);
    // w1 may take the device-1 task or the older shared one; both priority 0: the older wins.
    let a = s.poll(w1).unwrap();
    assert_eq!(a.id, low);
    s.report(w1, &a, ReportState::Completed).unwrap();
    assert_eq!(s.poll(w1).unwrap().id, for_dev1);
    let a0 = s
        .core
        .workers(0)
        .into_iter()
        .find(|w| w.id == w0)
        .unwrap()
        .current_task
        .unwrap();
    assert_eq!(a0, high);
    let d = s.detail(high);
    let lease = d.history[0].lease;
    let fake = Assignment {
        id: high,
        lease,
        attempt: 1,
        init: None,
        commands: vec![],
        read_ahead: vec![],
    };
    s.report(w0, &fake, ReportState::Completed).unwrap();
    assert_eq!(s.poll(w0).unwrap().id, for_w0);
}

#[test]
fn affinity_prefers_the_worker_holding_the_init_state() {
    let mut s = Sim::new();
    let w = s.register(0);
    let with_init = |fp: &str| {
        let mut spec = sleep_spec();
        spec.init = Some(InitPart {
            fingerprint: fp.into(),
            commands: vec![Command::Sleep { ms: 0 }],
        });
        spec
    };
    let a_task = s.submit(with_init("gain-A"));
    let t = s.poll(w).unwrap();
    assert_eq!(t.id, a_task);
    let update = StatusUpdate {
        progress: Some(Progress::default()),
        elapsed_ms: Some(0),
        held_fingerprint: Some("gain-A".into()),
        ..update_for(&t, ReportState::Completed)
    };
    s.apply(Event::Status {
        worker: w,
        task: t.id,
        update,
    })
    .unwrap();
    let b1 = s.submit(with_init("gain-B"));
    let a2 = s.submit(with_init("gain-A"));
    assert_eq!(s.poll(w).unwrap().id, a2, "matching fingerprint beats age");
    let _ = b1;
}

#[test]
fn targeted_tasks_fail_when_their_worker_is_lost() {
    let mut s = Sim::new();
    let w = s.register(0);
    let other = s.register(0);
    let busy = s.submit(sleep_spec());
    assert_eq!(s.poll(w).unwrap().id, busy);
    let mut spec = sleep_spec();
    spec.target = Target::Worker(w);
    let t = s.submit(spec);
    s.now = 1_500;
    s.heartbeat(other, None);
    s.apply(Event::Tick).unwrap();
    assert_eq!(s.state(t), TaskState::Failed);
    assert!(s.detail(t).error.unwrap().contains("offline"));
    let mut spec = sleep_spec();
    spec.target = Target::Worker(w);
    assert!(matches!(
        s.apply(Event::Submit {
            tasks: vec![(s.core.task_ids(None)[0], spec)]
        }),
        Err(CoreError::Invalid(_))
    ));
}

#[test]
fn deregister_releases_the_task_without_counting_a_failure() {
    let mut s = Sim::new();
    let (w1, w2) = (s.register(0), s.register(0));
    let t = s.submit(sleep_spec());
    s.poll(w1).unwrap();
    assert_eq!(s.poll(w2), None);
    s.core.take_decisions();
    s.apply(Event::Deregister {
        worker: w1,
        reason: "SIGTERM".into(),
    })
    .unwrap();
    let d = s.core.take_decisions();
    assert!(
        d.iter()
            .any(|d| matches!(d, Decision::Deliver { worker, .. } if *worker == w2)),
        "{d:?}"
    );
    let det = s.detail(t);
    assert_eq!(det.history[0].outcome, AttemptOutcome::Released);
    assert!(!s.core.has_worker(w1));
    assert!(matches!(
        s.apply(Event::Poll { worker: w1 }),
        Err(CoreError::UnknownWorker(_))
    ));
}

#[test]
fn want_next_hands_out_the_next_task_in_the_status_reply() {
    let mut s = Sim::new();
    let w = s.register(0);
    let t1 = s.submit(sleep_spec());
    let t2 = s.submit(sleep_spec());
    let a = s.poll(w).unwrap();
    assert_eq!(a.id, t1);
    let update = StatusUpdate {
        want_next: true,
        ..update_for(&a, ReportState::Completed)
    };
    match s
        .apply(Event::Status {
            worker: w,
            task: t1,
            update,
        })
        .unwrap()
    {
        Reply::Status(StatusResponse {
            task: Some(next), ..
        }) => assert_eq!(next.id, t2),
        r => panic!("{r:?}"),
    }
}

/// A seeded random walk over all events: the invariants hold after every step and every task
/// ends in exactly one terminal state once workers stop failing.
#[test]
fn random_event_sequences_keep_the_invariants() {
    random_walk(usize::MAX);
}

/// Issue 11: replaying the journal of a walk gives the same decisions, in the same order, and
/// the same state, each time (every core has its own hash seeds); so does restoring a
/// snapshot taken half-way and replaying the rest.
#[test]
fn replaying_the_journal_gives_the_same_state_and_decisions() {
    for keep in [usize::MAX, 25] {
        let (log, decisions, end) = random_walk(keep);
        let cfg = walk_cfg(keep);
        let state = |c: &Core| serde_json::to_value(c.snapshot()).unwrap();
        for _ in 0..2 {
            let (core, d) = replay(Core::new(cfg.clone()), &log);
            assert!(d == decisions, "the replay decided otherwise");
            same_state(&state(&core), &end);
        }
        let half = log.len() / 2;
        let (first, d1) = replay(Core::new(cfg.clone()), &log[..half]);
        let json = serde_json::to_vec(&first.snapshot()).unwrap();
        let restored = Core::restore(serde_json::from_slice(&json).unwrap()).unwrap();
        same_state(&state(&restored), &state(&first));
        let (core, d2) = replay(restored, &log[half..]);
        assert!(
            [d1, d2].concat() == decisions,
            "decisions differ after restoring"
        );
        same_state(&state(&core), &end);
    }
}

/// Equal snapshots, or a panic naming the first part that differs (not the whole state).
fn same_state(a: &serde_json::Value, b: &serde_json::Value) {
    for (k, va) in a.as_object().unwrap() {
        let vb = &b[k];
        if va == vb {
            continue;
        }
        if let (Some(xa), Some(xb)) = (va.as_array(), vb.as_array()) {
            assert_eq!(xa.len(), xb.len(), "{k}: lengths differ");
            for (i, (x, y)) in xa.iter().zip(xb).enumerate() {
                assert!(x == y, "{k}[{i}] differs:\n{x}\n{y}");
            }
        }
        panic!("{k} differs: {va} vs {vb}");
    }
}

fn replay(mut core: Core, log: &[(Millis, Event)]) -> (Core, Vec<Decision>) {
    let mut decisions = Vec::new();
    for (now, e) in log {
        core.apply(*now, e.clone())
            .unwrap_or_else(|err| panic!("{e:?} at {now} failed on replay: {err}"));
        decisions.extend(core.take_decisions());
    }
    core.sanity_check().unwrap();
    (core, decisions)
}

/// Issue 11: with 6 silent busy workers and 6 waiting ones, which waiting worker got which
/// re-queued task depended on hash order (49 of 50 runs differed). Every core here has its
/// own hash seeds.
#[test]
fn timeouts_hand_work_to_waiters_in_the_same_order_every_time() {
    let run = || {
        let mut s = Sim::new();
        let busy: Vec<WorkerId> = (0..6).map(|_| s.register(0)).collect();
        for _ in 0..6 {
            s.submit(sleep_spec());
        }
        for &w in &busy {
            s.poll(w).unwrap();
        }
        let idle: Vec<WorkerId> = (0..6).map(|_| s.register(0)).collect();
        for &w in &idle {
            assert!(s.poll(w).is_none());
        }
        s.core.take_decisions();
        s.now += 500;
        for &w in &idle {
            s.heartbeat(w, None);
        }
        s.now += 600;
        s.apply(Event::Tick).unwrap();
        s.core
            .take_decisions()
            .into_iter()
            .filter_map(|d| match d {
                Decision::Deliver {
                    worker, assignment, ..
                } => Some((worker, assignment.id)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let first = run();
    assert_eq!(first.len(), 6, "{first:?}");
    for _ in 0..50 {
        assert_eq!(run(), first);
    }
}

/// Issue 11: after a restart the workers that held tasks keep them: their heartbeats and
/// final reports are accepted with the old lease, and the downtime does not count against
/// their heartbeat timeout (the silence before the crash does).
#[test]
fn recover_keeps_leases_and_does_not_count_the_downtime() {
    let mut s = Sim::new();
    let w = s.register(0);
    let idle = s.register(0);
    let t = s.submit(sleep_spec());
    let a = s.poll(w).unwrap();
    s.report(w, &a, ReportState::Running).unwrap();
    assert!(s.poll(idle).is_none());
    // A worker already silent for 900 ms of its 1,000 when the controller died.
    let silent = s.register(0);
    s.now += 900;
    s.heartbeat(w, Some(&a));
    s.heartbeat(idle, None);
    // Down for three heartbeat timeouts.
    s.now += 3_000;
    s.apply(Event::Recover).unwrap();
    assert!(s.core.waiting_workers().is_empty(), "parked polls died");
    s.now += 200;
    s.apply(Event::Tick).unwrap();
    let lost: Vec<WorkerId> = s
        .core
        .workers(0)
        .into_iter()
        .filter(|x| x.state == WorkerState::Offline)
        .map(|x| x.id)
        .collect();
    assert_eq!(
        lost,
        [silent],
        "the silent one is lost as it would have been"
    );
    s.now += 700;
    s.apply(Event::Tick).unwrap();
    assert_eq!(
        s.state(t),
        TaskState::Running,
        "not lost within the timeout"
    );
    s.heartbeat(w, Some(&a));
    s.report(w, &a, ReportState::Completed).unwrap();
    assert_eq!(s.state(t), TaskState::Completed);
    let d = s.core.task_detail(t, 0).unwrap();
    assert_eq!(d.history.len(), 1, "one attempt, not repeated");
    // The idle worker never came back: lost after the timeout.
    s.now += 200;
    s.apply(Event::Tick).unwrap();
    assert_eq!(s.core.status(0, 0).workers.offline, 2);
}

/// The same walk with retention: finished tasks leave the core, the invariants hold and the
/// counts stay complete.
#[test]
fn random_event_sequences_keep_the_invariants_with_retention() {
    random_walk(25);
}

/// Returns the walk's journal, its decisions and its end state.
/// The random walk's policy: a batch budget that fits its coarse clock (tens of ms per
/// step), so batches happen.
fn walk_cfg(keep_finished: usize) -> CoreConfig {
    CoreConfig {
        keep_finished,
        batch_budget_ms: 1_000,
        ..cfg()
    }
}

fn random_walk(keep_finished: usize) -> (Vec<(Millis, Event)>, Vec<Decision>, serde_json::Value) {
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut s = Sim::with(walk_cfg(keep_finished));
    let mut reserved_seen = 0usize;
    let mut decisions = Vec::new();
    // Half of the workers take batches (of up to 4): short tasks go out several at a time.
    let mut batched_seen = 0usize;
    let mut workers: Vec<WorkerId> = (0..4)
        .map(|d| s.register_batching(d % 2, [0, 4][d as usize / 2]))
        .collect();
    let mut held: HashMap<WorkerId, std::collections::VecDeque<Assignment>> = HashMap::new();
    let mut tasks = Vec::new();
    for _ in 0..5_000 {
        s.now += next(50);
        let w = workers[next(workers.len() as u64) as usize];
        match next(10) {
            0 | 1 => {
                // Half read a movie, so reservations come and go too.
                let mut spec = if next(2) == 0 {
                    movie_task(&format!("m{}.mrc", tasks.len()))
                } else {
                    sleep_spec()
                };
                spec.priority = next(3) as i32;
                if next(4) == 0 {
                    spec.target = Target::Device(next(2) as i32);
                }
                // Sometimes several at once, so the queue is deep enough for batches.
                for _ in 0..1 + next(3) {
                    tasks.push(s.submit(spec.clone()));
                }
            }
            2 | 3 => {
                let batch = s.poll_all(w);
                if let Some(a) = batch.first() {
                    reserved_seen += usize::from(!a.read_ahead.is_empty());
                    batched_seen += usize::from(batch.len() > 1);
                    held.insert(w, batch.into());
                }
            }
            4 | 5 => {
                // The worker reports its batch in order (sometimes out of it: a report for
                // a later task of the batch first).
                let q = held.entry(w).or_default();
                let i = if q.len() > 1 && next(8) == 0 { 1 } else { 0 };
                if let Some(a) = q.get(i).cloned() {
                    let st = [
                        ReportState::Completed,
                        ReportState::Failed,
                        ReportState::Running,
                    ][next(3) as usize];
                    // Terminal reports say how long the attempt took (short, mostly).
                    let update = StatusUpdate {
                        elapsed_ms: Some(next(4)),
                        ..update_for(&a, st)
                    };
                    let _ = s.apply(Event::Status {
                        worker: w,
                        task: a.id,
                        update,
                    });
                    if st.is_terminal() {
                        q.remove(i);
                    }
                }
            }
            6 => {
                let cur = held.get(&w).and_then(|q| q.front()).cloned();
                s.heartbeat(w, cur.as_ref());
            }
            7 => {
                s.apply(Event::Tick).unwrap();
            }
            8 if !tasks.is_empty() => {
                let t = tasks[next(tasks.len() as u64) as usize];
                let _ = s.apply(Event::Cancel { task: t });
            }
            9 if next(20) == 0 => {
                // Leaving properly, or its process seen to exit (its attempt counts).
                if next(2) == 0 {
                    s.apply(Event::Deregister {
                        worker: w,
                        reason: "test".into(),
                    })
                    .unwrap();
                } else {
                    s.apply(Event::Exited {
                        worker: w,
                        reason: "signal: 9".into(),
                    })
                    .unwrap();
                }
                held.remove(&w);
                workers.retain(|x| *x != w);
                let batch = [0, 4][next(2) as usize];
                workers.push(s.register_batching(next(2) as i32, batch));
            }
            _ => {
                let _ = s.apply(Event::PollExpired { worker: w });
            }
        }
        decisions.extend(s.core.take_decisions());
    }
    assert!(
        reserved_seen > 100,
        "the walk made {reserved_seen} read-ahead assignments"
    );
    assert!(batched_seen > 50, "the walk made {batched_seen} batches");
    // Drain: reliable workers finish everything.
    held.clear();
    for _ in 0..100_000 {
        s.now += 1;
        let mut progressed = false;
        for &w in &workers {
            s.heartbeat(w, None);
            for a in s.poll_all(w) {
                s.report(w, &a, ReportState::Completed).unwrap();
                progressed = true;
            }
        }
        if !progressed && s.core.queue_length() == 0 {
            break;
        }
    }
    // One more event applies the retention of the drain's last finishes.
    s.apply(Event::Tick).unwrap();
    let mut kept = 0;
    for t in &tasks {
        // Gone from the core means finished and evicted.
        if let Some(st) = s.core.task_state(*t) {
            assert!(st.is_terminal(), "task {t} ended {st:?}");
            kept += 1;
        }
    }
    assert!(kept <= keep_finished, "{kept} finished tasks kept");
    let c = s.core.status(0, 0).tasks;
    assert_eq!(
        (c.completed + c.failed + c.cancelled) as usize,
        tasks.len(),
        "{c:?}"
    );
    decisions.extend(s.core.take_decisions());
    let end = serde_json::to_value(s.core.snapshot()).unwrap();
    (s.log, decisions, end)
}

/// Issue 16, row 9: finished tasks stayed in memory for the controller's lifetime. With
/// `keep_finished`, the oldest finished leave first; a queued or running task never does.
#[test]
fn retention_evicts_the_oldest_finished_tasks_only() {
    let mut s = Sim::with(CoreConfig {
        keep_finished: 2,
        ..cfg()
    });
    let w = s.register(0);
    let running = s.submit(TaskSpec::new(vec![Command::Sleep { ms: 1 }]));
    let a = s.poll(w).unwrap();
    s.report(w, &a, ReportState::Running).unwrap();
    let mut done = Vec::new();
    for _ in 0..5 {
        let t = s.submit(TaskSpec::new(vec![Command::Sleep { ms: 1 }]));
        s.apply(Event::Cancel { task: t }).unwrap();
        done.push(t);
    }
    s.apply(Event::Tick).unwrap();
    assert_eq!(s.state(running), TaskState::Running);
    let kept: Vec<bool> = done
        .iter()
        .map(|t| s.core.task_state(*t).is_some())
        .collect();
    assert_eq!(kept, [false, false, false, true, true]);
    assert_eq!(s.core.status(0, 0).tasks.cancelled, 5);
    assert!(matches!(
        s.apply(Event::Cancel { task: done[0] }),
        Err(CoreError::UnknownTask(_))
    ));
}

/// A task that reads `movie` (a `LoadStack`), so a worker is told to read it ahead.
fn movie_task(movie: &str) -> TaskSpec {
    let load: Command = serde_json::from_value(serde_json::json!({
        "name": "LoadStack", "params": { "path": movie }
    }))
    .unwrap();
    TaskSpec::new(vec![load, Command::Sleep { ms: 1 }])
}

#[test]
fn each_worker_reads_ahead_for_a_task_kept_for_it_until_nothing_else_waits() {
    let mut s = Sim::new();
    let (a, b) = (s.register(0), s.register(1));
    let t: Vec<TaskId> = (0..5)
        .map(|i| s.submit(movie_task(&format!("m{i}.mrc"))))
        .collect();
    let a0 = s.poll(a).unwrap();
    assert_eq!(
        (a0.id, a0.read_ahead.clone()),
        (t[0], vec!["m1.mrc".into()])
    );
    // B skips t1, which A is reading ahead for.
    let b0 = s.poll(b).unwrap();
    assert_eq!(
        (b0.id, b0.read_ahead.clone()),
        (t[2], vec!["m3.mrc".into()])
    );
    s.report(a, &a0, ReportState::Completed).unwrap();
    let a1 = s.poll(a).unwrap();
    assert_eq!(
        (a1.id, a1.read_ahead.clone()),
        (t[1], vec!["m4.mrc".into()])
    );
    s.report(b, &b0, ReportState::Completed).unwrap();
    let b1 = s.poll(b).unwrap();
    assert_eq!(b1.id, t[3], "B takes the task it read ahead for");
    assert!(b1.read_ahead.is_empty(), "t4 is kept for A");
    s.report(b, &b1, ReportState::Completed).unwrap();
    // Only t4 waits, kept for the busy A: B takes it rather than idle.
    let b2 = s.poll(b).unwrap();
    assert_eq!(b2.id, t[4]);
    assert!(b2.read_ahead.is_empty());
    s.report(a, &a1, ReportState::Completed).unwrap();
    assert!(s.poll(a).is_none());
}

#[test]
fn a_reservation_ends_with_its_worker_or_its_task_and_plain_tasks_have_none() {
    let mut s = Sim::new();
    let (a, b) = (s.register(0), s.register(0));
    let t0 = s.submit(movie_task("m0.mrc"));
    let t1 = s.submit(movie_task("m1.mrc"));
    let t2 = s.submit(movie_task("m2.mrc"));
    let a0 = s.poll(a).unwrap();
    assert_eq!((a0.id, a0.read_ahead.clone()), (t0, vec!["m1.mrc".into()]));
    // A leaves: t0 goes back to the queue and t1 is free again, so B reads ahead for t1.
    s.apply(Event::Deregister {
        worker: a,
        reason: "test".into(),
    })
    .unwrap();
    let b0 = s.poll(b).unwrap();
    assert_eq!((b0.id, b0.read_ahead.clone()), (t0, vec!["m1.mrc".into()]));
    // Cancelling the task B reads ahead for ends that reservation too (sanity_check).
    s.apply(Event::Cancel { task: t1 }).unwrap();
    s.report(b, &b0, ReportState::Completed).unwrap();
    let b1 = s.poll(b).unwrap();
    assert_eq!((b1.id, b1.read_ahead.clone()), (t2, vec![]));
    // Tasks that read no files are handed out without a read-ahead.
    let c = s.register(0);
    s.submit(sleep_spec());
    s.submit(sleep_spec());
    assert!(s.poll(c).unwrap().read_ahead.is_empty());
}

#[test]
fn reservations_hold_in_device_queues_and_survive_a_lost_delivery() {
    let mut s = Sim::new();
    let (a, b) = (s.register(0), s.register(0));
    let t: Vec<TaskId> = (0..3)
        .map(|i| {
            let mut spec = movie_task(&format!("d{i}.mrc"));
            spec.target = Target::Device(0);
            s.submit(spec)
        })
        .collect();
    let a0 = s.poll(a).unwrap();
    assert_eq!(
        (a0.id, a0.read_ahead.clone()),
        (t[0], vec!["d1.mrc".into()])
    );
    // The delivery was lost: the same lease again, with the same read-ahead.
    let again = s.poll(a).unwrap();
    assert_eq!((again.lease, again.read_ahead), (a0.lease, a0.read_ahead));
    // B, on the same device, skips the task kept for A.
    assert_eq!(s.poll(b).unwrap().id, t[2]);
}

/// Issue 16, retention: an offline worker silent past `forget_offline_ms` leaves the core (and
/// the server drops its console after a while); its task was already re-queued when it went
/// offline, and if it comes back its calls are refused as unknown (it registers again).
#[test]
fn offline_workers_are_forgotten_after_forget_offline_ms() {
    let mut s = Sim::with(CoreConfig {
        forget_offline_ms: 5_000,
        batch_budget_ms: BATCH_BUDGET_MS,
        ..cfg()
    });
    let (w, other) = (s.register(0), s.register(0));
    let t = s.submit(sleep_spec());
    assert_eq!(s.poll(w).unwrap().id, t);
    s.now = 1_500;
    s.heartbeat(other, None);
    s.apply(Event::Tick).unwrap();
    assert_eq!(
        s.state(t),
        TaskState::Queued,
        "re-queued when it went offline"
    );
    assert_eq!(s.core.workers(0).len(), 2, "offline, still listed");
    s.core.take_decisions();
    s.now = 6_600;
    s.heartbeat(other, None);
    s.apply(Event::Tick).unwrap();
    let d = s.core.take_decisions();
    assert!(
        d.contains(&Decision::WorkerForgotten { worker: w }),
        "{d:?}"
    );
    assert!(!d.contains(&Decision::WorkerForgotten { worker: other }));
    let left: Vec<WorkerId> = s.core.workers(0).iter().map(|i| i.id).collect();
    assert_eq!(left, vec![other]);
    assert!(matches!(
        s.apply(Event::Heartbeat {
            worker: w,
            req: Default::default()
        }),
        Err(CoreError::UnknownWorker(_))
    ));
    // The forgotten worker's task still runs elsewhere.
    assert_eq!(s.poll(other).unwrap().id, t);
}

impl Sim {
    /// Applies the completion of `a` on `w`, which took `ms` by the worker's measure.
    fn done(&mut self, w: WorkerId, a: &Assignment, ms: u64) {
        let update = done_in(a, ms);
        self.apply(Event::Status {
            worker: w,
            task: a.id,
            update,
        })
        .unwrap();
    }

    /// A worker taking batches of `max`, after one task of `spec`'s kind taught the core that
    /// the kind is short.
    fn measured_batcher(&mut self, max: u32, spec: &TaskSpec) -> WorkerId {
        let w = self.register_batching(0, max);
        self.submit(spec.clone());
        let first = self.poll_all(w).remove(0);
        self.done(w, &first, 0);
        w
    }
}

/// A finished attempt of `a` that took `ms` (the worker's own measure).
fn done_in(a: &Assignment, ms: u64) -> StatusUpdate {
    StatusUpdate {
        elapsed_ms: Some(ms),
        ..update_for(a, ReportState::Completed)
    }
}

/// Issue 14: a worker that takes batches gets short tasks several to a round trip, and only
/// once their kind was measured; a long kind, and a worker that takes none, get one at a time.
#[test]
fn short_tasks_go_out_in_batches_long_ones_alone() {
    let mut s = Sim::new();
    let a = s.register_batching(0, 8);
    let b = s.register(1);
    let short = || TaskSpec::new(vec![Command::Sleep { ms: 0 }]);
    s.submit(short());
    let first = s.poll_all(a);
    assert_eq!(first.len(), 1, "a kind never measured goes alone");
    s.done(a, &first[0], 0);
    let ids: Vec<TaskId> = (0..40).map(|_| s.submit(short())).collect();
    let batch = s.poll_all(a);
    assert_eq!(batch.len(), 8, "{batch:?}");
    let got: Vec<TaskId> = batch.iter().map(|t| t.id).collect();
    assert_eq!(got, ids[..8], "a batch is the queue's order");
    assert_eq!(s.poll_all(b).len(), 1, "a worker without --batch gets one");
    // The worker runs the batch's later tasks before reporting the earlier ones.
    assert!(s.heartbeat(a, Some(&batch[3])).cancel.is_empty());
    for t in &batch {
        assert_eq!(s.state(t.id), TaskState::Assigned);
    }
    // The last of the batch's reports asks for more: the next batch comes in its reply.
    for t in &batch[..7] {
        s.done(a, t, 0);
    }
    let update = StatusUpdate {
        want_next: true,
        ..done_in(&batch[7], 0)
    };
    let Reply::Status(r) = s
        .apply(Event::Status {
            worker: a,
            task: batch[7].id,
            update,
        })
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(r.task.as_ref().map(|t| t.id), Some(ids[9]));
    assert_eq!(r.more.len(), 7);
    // A long kind (4 s each) never shares a batch.
    let mut long = short();
    long.label = Some("movie".into());
    s.submit(long.clone());
    let mut reply = s.apply(Event::Cancel { task: ids[20] });
    assert!(reply.is_ok());
    for t in std::iter::once(r.task.unwrap()).chain(r.more) {
        let update = done_in(&t, 4000);
        reply = s.apply(Event::Status {
            worker: a,
            task: t.id,
            update,
        });
        assert!(reply.is_ok());
    }
    let rest = s.poll_all(a);
    assert!(
        rest.len() > 1,
        "the measured mean moves slowly: still short"
    );
    for t in &rest {
        s.done(a, t, 4000);
    }
    while s.core.queue_length() > 1 {
        for t in s.poll_all(a) {
            s.done(a, &t, 4000);
        }
    }
    for _ in 0..5 {
        s.submit(long.clone());
    }
    // The remaining short task and the movies: 4 s is past the budget on its own.
    let one = s.poll_all(a);
    assert_eq!(one.len(), 1, "{one:?}");
}

/// A batch's worker lost: the controller cannot tell which of the batch was at fault (its
/// reports come at its end), so none counts; all go back in their order and each runs alone
/// next time. A cancelled task of the batch is stopped on the next heartbeat that names it.
#[test]
fn a_lost_batch_goes_back_uncounted_and_its_tasks_then_run_alone() {
    let mut s = Sim::new();
    let a = s.measured_batcher(4, &TaskSpec::new(vec![Command::Sleep { ms: 0 }]));
    for _ in 0..10 {
        s.submit(TaskSpec::new(vec![Command::Sleep { ms: 0 }]));
    }
    let batch = s.poll_all(a);
    assert_eq!(batch.len(), 4);
    s.apply(Event::Cancel { task: batch[2].id }).unwrap();
    assert_eq!(s.heartbeat(a, Some(&batch[2])).cancel, vec![batch[2].id]);
    assert!(matches!(
        s.report(a, &batch[2], ReportState::Completed),
        Err(CoreError::StaleLease { .. })
    ));
    s.report(a, &batch[0], ReportState::Running).unwrap();
    s.apply(Event::Exited {
        worker: a,
        reason: "signal: 9".into(),
    })
    .unwrap();
    for t in [&batch[0], &batch[1], &batch[3]] {
        let d = s.detail(t.id);
        let last = d.history.last().unwrap();
        assert_eq!(
            (d.state, last.outcome),
            (TaskState::Queued, AttemptOutcome::Released)
        );
        assert!(
            last.error.as_deref().unwrap().contains("runs alone next"),
            "{last:?}"
        );
    }
    let b = s.register_batching(0, 4);
    let mut order = Vec::new();
    for _ in 0..3 {
        let got = s.poll_all(b);
        assert_eq!(got.len(), 1, "a task of a dissolved batch runs alone");
        s.done(b, &got[0], 0);
        order.push(got[0].id);
    }
    assert_eq!(
        order,
        [batch[0].id, batch[1].id, batch[3].id],
        "back in their order"
    );
    assert!(
        s.poll_all(b).len() > 1,
        "the others still travel in batches"
    );
}

/// A task of a batch past its timeout: the batch is dissolved as for a lost worker (the
/// worker may have run the task long ago and be on a later one), nothing counts.
#[test]
fn a_timeout_in_a_batch_dissolves_it_without_counting() {
    let mut s = Sim::new();
    let mut spec = TaskSpec::new(vec![Command::Sleep { ms: 0 }]);
    spec.timeout_s = Some(1.0);
    let a = s.measured_batcher(3, &spec);
    for _ in 0..6 {
        s.submit(spec.clone());
    }
    let batch = s.poll_all(a);
    assert_eq!(batch.len(), 3);
    s.now += 1_500;
    s.heartbeat(a, Some(&batch[1]));
    s.apply(Event::Tick).unwrap();
    for t in &batch {
        let d = s.detail(t.id);
        assert_eq!(d.state, TaskState::Queued, "{d:?}");
        assert_eq!(d.history.last().unwrap().outcome, AttemptOutcome::Released);
    }
    assert_eq!(s.heartbeat(a, Some(&batch[1])).cancel, vec![batch[1].id]);
    assert!(s.report(a, &batch[0], ReportState::Completed).is_err());
}

/// A batch whose delivery was lost: the worker polls again and gets the same leases.
#[test]
fn a_batch_is_delivered_again_to_a_worker_that_polls_for_it() {
    let mut s = Sim::new();
    let a = s.measured_batcher(3, &TaskSpec::new(vec![Command::Sleep { ms: 0 }]));
    for _ in 0..6 {
        s.submit(TaskSpec::new(vec![Command::Sleep { ms: 0 }]));
    }
    let batch = s.poll_all(a);
    assert_eq!(batch.len(), 3);
    assert_eq!(s.poll_all(a), batch);
}

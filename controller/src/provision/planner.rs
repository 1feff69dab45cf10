//! The provisioning decisions, without I/O: given the queue, the workers and what the scheduler
//! says about our jobs, how many jobs to submit and which to cancel.
//!
//! ```text
//!   submit ──▶ pending ──▶ running ──▶ (worker registers) ──▶ finished
//!                 │            │  no worker within start_timeout: start failure, cancelled
//!                 └────────────┴── gone from the scheduler without a worker: start failure
//!   unknown (status command failing or job not listed): still counted as pending until
//!   unknown_grace has passed since the job was last seen
//! ```

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use super::policy::Policy;
use warp_common::protocol::{ProvisionStatus, ProvisionedJob};

/// A scheduler job id.
pub type JobId = String;

/// A job's state as the scheduler reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Waiting for resources.
    Pending,
    /// Started.
    Running,
}

/// What the controller knows right now.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// Tasks waiting in any queue.
    pub queued: usize,
    /// Tasks assigned or running.
    pub running: usize,
    /// Workers alive (registered, not offline).
    pub alive_workers: usize,
    /// Jobs with at least one registered worker (from the workers' spawn ids `job-<id>`).
    pub jobs_with_workers: HashSet<JobId>,
}

/// What to do now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Jobs to submit.
    pub submit: usize,
    /// Jobs to cancel.
    pub cancel: Vec<JobId>,
}

#[derive(Debug, Clone)]
struct Job {
    submitted: Instant,
    last_seen: Instant,
    state: Option<JobState>,
    started: Option<Instant>,
    has_worker: bool,
}

/// See the module docs.
#[derive(Debug)]
pub struct Planner {
    policy: Policy,
    max_workers: usize,
    workers_per_job: usize,
    max_total: usize,
    jobs: BTreeMap<JobId, Job>,
    recent_submits: VecDeque<Instant>,
    total_submitted: usize,
    failure_streak: u32,
    pauses: usize,
    paused_until: Option<Instant>,
    idle_since: Option<Instant>,
    last_error: Option<String>,
}

impl Planner {
    /// A planner for at most `max_workers` workers, `workers_per_job` per job, `max_total`
    /// submissions in all.
    pub fn new(
        policy: Policy,
        max_workers: usize,
        workers_per_job: usize,
        max_total: usize,
    ) -> Planner {
        Planner {
            policy,
            max_workers,
            workers_per_job: workers_per_job.max(1),
            max_total,
            jobs: BTreeMap::new(),
            recent_submits: VecDeque::new(),
            total_submitted: 0,
            failure_streak: 0,
            pauses: 0,
            paused_until: None,
            idle_since: None,
            last_error: None,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Jobs being tracked.
    pub fn job_ids(&self) -> Vec<JobId> {
        self.jobs.keys().cloned().collect()
    }

    /// A submission succeeded.
    pub fn submitted(&mut self, now: Instant, id: JobId) {
        self.recent_submits.push_back(now);
        self.total_submitted += 1;
        self.jobs.insert(
            id,
            Job {
                submitted: now,
                last_seen: now,
                state: Some(JobState::Pending),
                started: None,
                has_worker: false,
            },
        );
    }

    /// A submission failed (the submit command's error).
    pub fn submit_failed(&mut self, now: Instant, error: String) {
        self.recent_submits.push_back(now);
        self.total_submitted += 1;
        self.failure(now, error);
    }

    /// The scheduler's report on our jobs: `None` when the status command failed (every job's
    /// state is unknown); otherwise the jobs it lists (one it does not list has finished).
    pub fn observe_jobs(&mut self, now: Instant, listed: Option<&HashMap<JobId, JobState>>) {
        let Some(listed) = listed else { return };
        let mut gone = Vec::new();
        for (id, job) in &mut self.jobs {
            match listed.get(id) {
                Some(s) => {
                    job.last_seen = now;
                    job.state = Some(*s);
                    if *s == JobState::Running && job.started.is_none() {
                        job.started = Some(now);
                    }
                }
                None => gone.push(id.clone()),
            }
        }
        for id in gone {
            let job = self.jobs.remove(&id).expect("listed");
            if !job.has_worker {
                self.failure(
                    now,
                    format!("job {id} ended before any worker registered; see its output file"),
                );
            }
        }
    }

    /// Decides what to do now.
    pub fn plan(&mut self, now: Instant, obs: &Observation) -> Plan {
        let mut plan = Plan::default();
        // Jobs whose workers registered are healthy; that ends a failure streak.
        for (id, job) in &mut self.jobs {
            if !job.has_worker && obs.jobs_with_workers.contains(id) {
                job.has_worker = true;
                self.failure_streak = 0;
            }
        }
        // Jobs that started but never produced a worker, and jobs unseen for too long.
        let mut failed = Vec::new();
        let mut forgotten = Vec::new();
        for (id, job) in &self.jobs {
            if !job.has_worker
                && job
                    .started
                    .is_some_and(|s| now.duration_since(s) > self.policy.start_timeout)
            {
                failed.push(id.clone());
            } else if now.duration_since(job.last_seen) > self.policy.unknown_grace {
                forgotten.push(id.clone());
            }
        }
        for id in failed {
            self.jobs.remove(&id);
            let secs = self.policy.start_timeout.as_secs_f64();
            self.failure(
                now,
                format!("job {id} ran {secs:.0} s without a worker registering; cancelled"),
            );
            plan.cancel.push(id);
        }
        for id in forgotten {
            log::warn!(
                "provisioning: job {id} not seen for {:.0} s; forgetting it",
                self.policy.unknown_grace.as_secs_f64()
            );
            self.jobs.remove(&id);
        }
        // Drained: nothing queued or running for a while. Cancel every job.
        if obs.queued == 0 && obs.running == 0 {
            let since = *self.idle_since.get_or_insert(now);
            if now.duration_since(since) >= self.policy.drain_after && !self.jobs.is_empty() {
                log::info!(
                    "provisioning: queue drained; cancelling {} job(s)",
                    self.jobs.len()
                );
                plan.cancel
                    .extend(std::mem::take(&mut self.jobs).into_keys());
            }
        } else {
            self.idle_since = None;
        }
        // Never top up an idle queue.
        if obs.queued == 0 {
            return plan;
        }
        if self.paused_until.is_some_and(|t| now < t) {
            return plan;
        }
        let needed = self.max_workers.min(obs.queued + obs.running);
        let waiting = self.jobs.values().filter(|j| !j.has_worker).count() * self.workers_per_job;
        let capacity = obs.alive_workers + waiting;
        let deficit = needed.saturating_sub(capacity);
        while self
            .recent_submits
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            self.recent_submits.pop_front();
        }
        let per_minute = self
            .policy
            .max_submits_per_minute
            .saturating_sub(self.recent_submits.len());
        let total = self.max_total.saturating_sub(self.total_submitted);
        plan.submit = deficit
            .div_ceil(self.workers_per_job)
            .min(per_minute)
            .min(total);
        plan
    }

    fn failure(&mut self, now: Instant, error: String) {
        log::warn!("provisioning: {error}");
        self.last_error = Some(error);
        self.failure_streak += 1;
        if self.failure_streak >= self.policy.failures_before_pause {
            self.pauses += 1;
            self.failure_streak = 0;
            let pause = self.policy.pause(self.pauses);
            log::warn!(
                "provisioning: {} failures in a row; pausing submissions for {:.0} s",
                self.policy.failures_before_pause,
                pause.as_secs_f64()
            );
            self.paused_until = Some(now + pause);
        }
    }

    /// What `warp-controller status` shows.
    pub fn status(&self, now: Instant, mode: &str) -> ProvisionStatus {
        ProvisionStatus {
            mode: mode.to_string(),
            max_workers: self.max_workers as u64,
            jobs: self
                .jobs
                .iter()
                .map(|(id, j)| ProvisionedJob {
                    id: id.clone(),
                    state: match (j.has_worker, j.state) {
                        (true, _) => "serving",
                        (false, Some(JobState::Running)) => "starting",
                        (false, Some(JobState::Pending)) => "pending",
                        (false, None) => "unknown",
                    }
                    .to_string(),
                    age_ms: now.duration_since(j.submitted).as_millis() as u64,
                })
                .collect(),
            submitted_total: self.total_submitted as u64,
            failure_streak: self.failure_streak,
            paused_for_ms: self
                .paused_until
                .filter(|t| *t > now)
                .map(|t| (t - now).as_millis() as u64),
            last_error: self.last_error.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            tick: Duration::from_millis(100),
            max_submits_per_minute: 3,
            unknown_grace: Duration::from_secs(10),
            start_timeout: Duration::from_secs(20),
            failures_before_pause: 2,
            backoff: vec![Duration::from_secs(30), Duration::from_secs(60)],
            drain_after: Duration::from_secs(5),
        }
    }

    fn obs(queued: usize, running: usize, alive: usize, with: &[&str]) -> Observation {
        Observation {
            queued,
            running,
            alive_workers: alive,
            jobs_with_workers: with.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn submits_up_to_need_within_the_per_minute_cap_and_never_for_an_idle_queue() {
        let t0 = Instant::now();
        let mut p = Planner::new(policy(), 8, 1, 100);
        assert_eq!(
            p.plan(t0, &obs(0, 0, 0, &[])).submit,
            0,
            "idle queue: nothing"
        );
        assert_eq!(p.plan(t0, &obs(2, 0, 0, &[])).submit, 2);
        assert_eq!(p.plan(t0, &obs(50, 0, 0, &[])).submit, 3, "per-minute cap");
        for i in 0..3 {
            p.submitted(t0, format!("{i}"));
        }
        assert_eq!(p.plan(t0, &obs(50, 0, 0, &[])).submit, 0, "cap used up");
        let later = t0 + Duration::from_secs(61);
        let mut listed = HashMap::new();
        for i in 0..3 {
            listed.insert(format!("{i}"), JobState::Pending);
        }
        p.observe_jobs(later, Some(&listed));
        assert_eq!(
            p.plan(later, &obs(50, 0, 0, &[])).submit,
            3,
            "8 needed, 3 pending, cap 3"
        );
    }

    #[test]
    fn pending_and_unknown_jobs_count_as_capacity_so_a_flaky_status_does_not_storm() {
        let t0 = Instant::now();
        let mut p = Planner::new(policy(), 2, 1, 100);
        p.submitted(t0, "a".into());
        p.submitted(t0, "b".into());
        for s in 1..10 {
            let now = t0 + Duration::from_secs(s);
            p.observe_jobs(now, None); // squeue failing
            assert_eq!(p.plan(now, &obs(10, 0, 0, &[])).submit, 0);
        }
        // Past the grace the jobs are forgotten and replaced, within the per-minute cap (3,
        // two of which the forgotten jobs used).
        let now = t0 + Duration::from_secs(11);
        assert_eq!(p.plan(now, &obs(10, 0, 0, &[])).submit, 1);
        assert!(p.job_ids().is_empty());
    }

    #[test]
    fn registered_workers_replace_their_jobs_in_the_count() {
        let t0 = Instant::now();
        let mut p = Planner::new(policy(), 2, 1, 100);
        p.submitted(t0, "a".into());
        let listed = HashMap::from([("a".to_string(), JobState::Running)]);
        p.observe_jobs(t0, Some(&listed));
        assert_eq!(
            p.plan(t0, &obs(5, 0, 1, &["a"])).submit,
            1,
            "a serves, one more needed"
        );
    }

    #[test]
    fn jobs_dying_at_start_pause_submissions_with_backoff() {
        let t0 = Instant::now();
        let mut p = Planner::new(policy(), 4, 1, 100);
        p.submitted(t0, "a".into());
        p.submitted(t0, "b".into());
        p.observe_jobs(t0 + Duration::from_secs(1), Some(&HashMap::new())); // both gone, no worker
        let now = t0 + Duration::from_secs(2);
        assert_eq!(p.plan(now, &obs(5, 0, 0, &[])).submit, 0, "paused");
        let st = p.status(now, "slurm");
        assert!(
            st.paused_for_ms.is_some() && st.last_error.is_some(),
            "{st:?}"
        );
        assert!(
            p.plan(t0 + Duration::from_secs(40), &obs(5, 0, 0, &[]))
                .submit
                > 0,
            "pause over"
        );
    }

    #[test]
    fn a_started_job_without_a_worker_is_cancelled_as_a_failure() {
        let t0 = Instant::now();
        let mut p = Planner::new(policy(), 1, 1, 100);
        p.submitted(t0, "a".into());
        let listed = HashMap::from([("a".to_string(), JobState::Running)]);
        p.observe_jobs(t0, Some(&listed));
        assert_eq!(
            p.plan(t0 + Duration::from_secs(5), &obs(1, 0, 0, &[]))
                .cancel,
            Vec::<String>::new()
        );
        let plan = p.plan(t0 + Duration::from_secs(21), &obs(1, 0, 0, &[]));
        assert_eq!(plan.cancel, vec!["a".to_string()]);
    }

    #[test]
    fn drained_queue_cancels_every_job_and_the_total_cap_holds() {
        let t0 = Instant::now();
        let mut p = Planner::new(policy(), 4, 1, 2);
        p.submitted(t0, "a".into());
        p.submitted(t0, "b".into());
        assert_eq!(
            p.plan(t0, &obs(9, 0, 0, &[])).submit,
            0,
            "total cap of 2 reached"
        );
        assert!(
            p.plan(t0, &obs(0, 0, 2, &["a", "b"])).cancel.is_empty(),
            "not drained yet"
        );
        let plan = p.plan(t0 + Duration::from_secs(6), &obs(0, 0, 2, &["a", "b"]));
        assert_eq!(plan.cancel.len(), 2);
        assert!(p.job_ids().is_empty());
    }
}

//! Provisioning: the controller submits worker jobs to the batch system itself while work is
//! queued, and cancels them when the work is done or the controller stops.
//!
//! * [`policy`]: the constants (rates, grace periods, backoff) with their reasons.
//! * [`planner`]: the decisions, without I/O (unit-tested).
//! * [`BatchSystem`]: submit / status / cancel; [`Slurm`] runs `sbatch`, `squeue`, `scancel`.
//! * [`Provisioner`]: one thread that alone owns the planner and the jobs: every tick it reads
//!   the controller's queue and workers, asks the batch system about its jobs, and carries out
//!   the plan.
//!
//! Workers started by a provisioned job register with the spawn id `job-<JOBID>` (set by
//! `scripts/launch-workers.sh`), which is how the provisioner knows a job is serving.

pub mod planner;
pub mod policy;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::server::ControllerView;
use planner::{JobId, JobState, Planner};
use policy::Policy;

/// A batch system the provisioner can use.
pub trait BatchSystem: Send {
    /// Its name for status and logs.
    fn name(&self) -> &'static str;
    /// Submits the job script at `script`; returns the job id.
    fn submit(&mut self, script: &Path) -> Result<JobId, String>;
    /// The states of this user's jobs that are still pending or running; `Err` when the status
    /// command failed (every state unknown).
    fn status(&mut self) -> Result<HashMap<JobId, JobState>, String>;
    /// Cancels jobs (best effort).
    fn cancel(&mut self, ids: &[JobId]) -> Result<(), String>;
}

/// SLURM through its commands: `sbatch --parsable`, `squeue`, `scancel`.
pub struct Slurm {
    submit_cmd: Vec<String>,
    user: String,
}

impl Slurm {
    /// `submit_cmd` replaces `sbatch` (e.g. `sbatch --partition=gpu` or a site wrapper); it is
    /// given `--parsable SCRIPT`.
    pub fn new(submit_cmd: Vec<String>) -> Result<Slurm, String> {
        let out = Command::new("id")
            .arg("-un")
            .output()
            .map_err(|e| format!("cannot run id -un: {e}"))?;
        let user = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if user.is_empty() {
            return Err("cannot tell the user name (id -un printed nothing)".into());
        }
        let submit_cmd = if submit_cmd.is_empty() {
            vec!["sbatch".to_string()]
        } else {
            submit_cmd
        };
        Ok(Slurm { submit_cmd, user })
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl BatchSystem for Slurm {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn submit(&mut self, script: &Path) -> Result<JobId, String> {
        let mut cmd = Command::new(&self.submit_cmd[0]);
        cmd.args(&self.submit_cmd[1..])
            .arg("--parsable")
            .arg(script);
        let out = run(&mut cmd, &self.submit_cmd.join(" "))?;
        // --parsable prints "ID" or "ID;CLUSTER".
        let id = out.trim().split(';').next().unwrap_or("").to_string();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit() || c == '_') {
            return Err(format!(
                "{} printed '{}', not a job id",
                self.submit_cmd[0],
                out.trim()
            ));
        }
        Ok(id)
    }

    fn status(&mut self) -> Result<HashMap<JobId, JobState>, String> {
        let out = run(
            Command::new("squeue").args(["-h", "-o", "%i %T", "-u", &self.user]),
            "squeue",
        )?;
        let mut jobs = HashMap::new();
        for line in out.lines() {
            let mut it = line.split_whitespace();
            let (Some(id), Some(state)) = (it.next(), it.next()) else {
                continue;
            };
            let state = match state {
                "PENDING" | "CONFIGURING" | "REQUEUED" | "RESV_DEL_HOLD" | "SUSPENDED" => {
                    JobState::Pending
                }
                _ => JobState::Running, // RUNNING, COMPLETING, STOPPED, ...: it holds or held nodes
            };
            jobs.insert(id.to_string(), state);
        }
        Ok(jobs)
    }

    fn cancel(&mut self, ids: &[JobId]) -> Result<(), String> {
        if ids.is_empty() {
            return Ok(());
        }
        run(Command::new("scancel").args(ids), "scancel").map(|_| ())
    }
}

/// Renders a job template: every `{{name}}` is replaced by its value; a placeholder without a
/// value is an error naming it (a job script with a hole in it must never be submitted).
pub fn render_template(template: &str, vars: &HashMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| {
            format!(
                "unclosed '{{{{' near '{}'",
                &rest[start..rest.len().min(start + 30)]
            )
        })?;
        let name = after[..end].trim();
        let value = vars.get(name).ok_or_else(|| {
            format!(
                "placeholder {{{{{name}}}}} has no value; give it with --provision-var {name}=VALUE"
            )
        })?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Settings of a provisioner.
pub struct ProvisionConfig {
    /// The rendered job script.
    pub script: String,
    /// Where the script is written (and job logs go, if the template says so).
    pub state_dir: PathBuf,
    /// At most this many workers.
    pub max_workers: usize,
    /// Workers each job starts.
    pub workers_per_job: usize,
    /// At most this many submissions in all.
    pub max_submissions: usize,
    /// Timing and rate policy.
    pub policy: Policy,
}

/// The running provisioner thread. [`Provisioner::stop`] cancels every job it submitted.
pub struct Provisioner {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Provisioner {
    /// Starts the provisioning thread for `controller`.
    pub fn start(
        cfg: ProvisionConfig,
        batch: Box<dyn BatchSystem>,
        controller: ControllerView,
    ) -> Result<Provisioner, String> {
        std::fs::create_dir_all(&cfg.state_dir)
            .map_err(|e| format!("cannot create {}: {e}", cfg.state_dir.display()))?;
        let script = cfg.state_dir.join("warp-workers.job");
        std::fs::write(&script, &cfg.script)
            .map_err(|e| format!("cannot write {}: {e}", script.display()))?;
        let (stop, stop_rx) = crossbeam_channel::bounded(1);
        let planner = Planner::new(
            cfg.policy.clone(),
            cfg.max_workers,
            cfg.workers_per_job,
            cfg.max_submissions,
        );
        let controller = Arc::new(controller);
        let thread = std::thread::Builder::new()
            .name("provisioner".into())
            .spawn(move || run_loop(planner, batch, &script, &controller, &stop_rx))
            .map_err(|e| format!("cannot start the provisioner thread: {e}"))?;
        Ok(Provisioner {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops the thread and cancels every job it tracks.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Provisioner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run_loop(
    mut planner: Planner,
    mut batch: Box<dyn BatchSystem>,
    script: &Path,
    controller: &ControllerView,
    stop: &Receiver<()>,
) {
    let mode = batch.name();
    log::info!("provisioning with {mode}: job script {}", script.display());
    loop {
        let now = Instant::now();
        if !planner.job_ids().is_empty() {
            match batch.status() {
                Ok(listed) => planner.observe_jobs(now, Some(&listed)),
                Err(e) => {
                    log::warn!("provisioning: {e}; counting the jobs as pending");
                    planner.observe_jobs(now, None);
                }
            }
        }
        let plan = planner.plan(now, &controller.observation());
        if !plan.cancel.is_empty() {
            log::info!("provisioning: cancelling job(s) {}", plan.cancel.join(","));
            if let Err(e) = batch.cancel(&plan.cancel) {
                log::warn!("provisioning: {e}");
            }
        }
        for _ in 0..plan.submit {
            match batch.submit(script) {
                Ok(id) => {
                    log::info!("provisioning: submitted worker job {id}");
                    planner.submitted(Instant::now(), id);
                }
                Err(e) => {
                    planner.submit_failed(Instant::now(), e);
                    break;
                }
            }
        }
        controller.set_provisioning(Some(planner.status(Instant::now(), mode)));
        if !matches!(
            stop.recv_timeout(planner.policy().tick),
            Err(crossbeam_channel::RecvTimeoutError::Timeout)
        ) {
            break;
        }
    }
    let jobs = planner.job_ids();
    if !jobs.is_empty() {
        log::info!(
            "provisioning: stopping; cancelling job(s) {}",
            jobs.join(",")
        );
        if let Err(e) = batch.cancel(&jobs) {
            log::warn!("provisioning: {e}");
        }
    }
    controller.set_provisioning(None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_refuse_unfilled_placeholders() {
        let vars = HashMap::from([("controller_url".to_string(), "http://h:1".to_string())]);
        assert_eq!(
            render_template("a {{controller_url}} b {{ controller_url }}", &vars).unwrap(),
            "a http://h:1 b http://h:1"
        );
        let err = render_template("x {{warp_home}}/y", &vars).unwrap_err();
        assert!(
            err.contains("warp_home") && err.contains("--provision-var"),
            "{err}"
        );
        assert!(render_template("x {{oops", &vars).is_err());
    }
}

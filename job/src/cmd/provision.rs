//! The `--provision` options shared by `serve` and `preprocess --port`: parsed and checked
//! (template read and rendered once, variables, policy, numbers) before anything starts;
//! [`ProvisionPlan::start`] needs only the controller's port.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use getopts::{Matches, Options};
use warp_controller::{Controller, provision};

use crate::cli::{CliError, failed, number, usage};

/// Adds the `--provision*` options to `o`.
pub fn options(o: &mut Options) {
    o.optopt(
        "",
        "provision",
        "submit worker jobs while work is queued: slurm",
        "MODE",
    );
    o.optopt("", "provision-template", "job script template with placeholders in double braces (see scripts/slurm/warp-workers.provision.sbatch)", "FILE");
    o.optmulti(
        "",
        "provision-var",
        "value of a template placeholder (repeatable)",
        "NAME=VALUE",
    );
    o.optopt(
        "",
        "provision-dir",
        "where the rendered job script goes (default ./warp-provision)",
        "DIR",
    );
    o.optopt(
        "",
        "max-workers",
        "provisioning: at most N workers (default 4)",
        "N",
    );
    o.optopt(
        "",
        "workers-per-job",
        "provisioning: workers each job starts (default 1)",
        "N",
    );
    o.optopt(
        "",
        "max-submissions",
        "provisioning: at most N job submissions in all (default 100)",
        "N",
    );
    o.optopt(
        "",
        "submit-cmd",
        "provisioning: command instead of sbatch, e.g. 'sbatch -p gpu'",
        "CMD",
    );
    o.optopt(
        "",
        "advertise-url",
        "provisioning: controller URL the jobs use (default http(s)://HOST:PORT)",
        "URL",
    );
}

/// A checked `--provision slurm` set-up, waiting for the controller's port.
#[derive(Debug, Clone)]
pub struct ProvisionPlan {
    template_path: String,
    template: String,
    /// Placeholder values except `controller_url`, which needs the port.
    vars: HashMap<String, String>,
    advertise_url: Option<String>,
    host: String,
    dir: PathBuf,
    submit_cmd: Vec<String>,
    max_workers: usize,
    workers_per_job: usize,
    max_submissions: usize,
    policy: provision::policy::Policy,
}

/// The value a template's `controller_url` gets while it is checked before the port is known.
const URL_PLACEHOLDER: &str = "http://controller.invalid:1";

impl ProvisionPlan {
    /// `None` without `--provision`; otherwise every check a start would make, so a bad
    /// option is a usage error before a port is bound. `bind` is the controller's address and
    /// `token_file` its enrollment token file (the jobs read the token from it), `tls_cert` its
    /// certificate when it serves HTTPS (the jobs' default `ca_file`).
    pub fn from_matches(
        m: &Matches,
        bind: &str,
        token_file: Option<&Path>,
        tls_cert: Option<&Path>,
    ) -> Result<Option<ProvisionPlan>, CliError> {
        let Some(mode) = m.opt_str("provision") else {
            for flag in ["provision-template", "provision-var", "submit-cmd"] {
                if m.opt_present(flag) {
                    return usage(format!("--{flag} needs --provision slurm"));
                }
            }
            return Ok(None);
        };
        if mode != "slurm" {
            return usage(format!(
                "--provision: unknown mode '{mode}' (supported: slurm)"
            ));
        }
        let Some(template_path) = m.opt_str("provision-template") else {
            return usage(
                "--provision needs --provision-template FILE (e.g. scripts/slurm/warp-workers.provision.sbatch)",
            );
        };
        let Some(token_file) = token_file else {
            return usage(
                "--provision needs --token-file: the jobs read the token from that file (a token in a job's environment would leak)",
            );
        };
        let template = std::fs::read_to_string(&template_path).map_err(|e| {
            CliError::Usage(format!(
                "--provision-template {template_path}: cannot read it: {e}"
            ))
        })?;
        let dir = PathBuf::from(
            m.opt_str("provision-dir")
                .unwrap_or_else(|| "warp-provision".into()),
        );
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        let token_file =
            std::path::absolute(token_file).unwrap_or_else(|_| token_file.to_path_buf());
        let mut vars: HashMap<String, String> = [
            ("token_file", token_file.display().to_string()),
            ("job_name", "warp-workers".to_string()),
            ("provision_dir", dir.display().to_string()),
            // Empty for plain HTTP (the worker treats an empty WARP_CA_FILE as unset); the
            // certificate itself for HTTPS, right for a self-signed one from make-cert.sh
            // (a site CA: --provision-var ca_file=/path/ca.pem).
            (
                "ca_file",
                tls_cert.map_or(String::new(), |c| c.display().to_string()),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for kv in m.opt_strs("provision-var") {
            let Some((k, v)) = kv.split_once('=') else {
                return usage(format!("--provision-var '{kv}': expected NAME=VALUE"));
            };
            if k.trim().is_empty() {
                return usage(format!("--provision-var '{kv}': the NAME is empty"));
            }
            vars.insert(k.trim().to_string(), v.to_string());
        }
        let policy = provision::policy::Policy::from_env(|k| std::env::var(k).ok())
            .map_err(CliError::Usage)?;
        let plan = ProvisionPlan {
            template_path,
            template,
            vars,
            advertise_url: m.opt_str("advertise-url"),
            host: match bind {
                "0.0.0.0" | "::" | "[::]" => this_hostname(),
                b => b.to_string(),
            },
            dir,
            submit_cmd: m
                .opt_str("submit-cmd")
                .map(|c| c.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
            max_workers: number(m, "max-workers", 4usize)?,
            workers_per_job: number(m, "workers-per-job", 1usize)?,
            max_submissions: number(m, "max-submissions", 100usize)?,
            policy,
        };
        if plan.max_workers == 0 || plan.workers_per_job == 0 {
            return usage("--max-workers and --workers-per-job must be at least 1");
        }
        // Every placeholder must have a value; `controller_url` gets its own at start.
        plan.render(URL_PLACEHOLDER)?;
        Ok(Some(plan))
    }

    /// The template path, for messages.
    pub fn template_path(&self) -> &str {
        &self.template_path
    }

    fn render(&self, url: &str) -> Result<String, CliError> {
        let mut vars = self.vars.clone();
        vars.insert("controller_url".into(), url.to_string());
        provision::render_template(&self.template, &vars).map_err(|e| {
            CliError::Usage(format!("--provision-template {}: {e}", self.template_path))
        })
    }

    /// Starts the provisioner thread for `controller`.
    pub fn start(&self, controller: &Controller) -> Result<provision::Provisioner, CliError> {
        let url = self.advertise_url.clone().unwrap_or_else(|| {
            format!(
                "{}://{}:{}",
                controller.scheme(),
                self.host,
                controller.port()
            )
        });
        let script = self.render(&url)?;
        let batch = provision::Slurm::new(self.submit_cmd.clone()).map_err(failed)?;
        let cfg = provision::ProvisionConfig {
            script,
            state_dir: self.dir.clone(),
            max_workers: self.max_workers,
            workers_per_job: self.workers_per_job,
            max_submissions: self.max_submissions,
            policy: self.policy.clone(),
        };
        log::info!(
            "provisioning: slurm, at most {} worker(s), {} per job, at most {} submissions; {:?}",
            cfg.max_workers,
            cfg.workers_per_job,
            cfg.max_submissions,
            cfg.policy
        );
        provision::Provisioner::start(cfg, Box::new(batch), controller.view()).map_err(failed)
    }
}

/// This host's name, for the URL provisioned jobs use.
fn this_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

//! The provisioning policy constants, in one place, each with its reason.
//!
//! Every duration can be overridden by an environment variable (seconds, fractions allowed) so
//! tests run in seconds, not hours: `WARP_PROVISION_<NAME>` with the constant's name, e.g.
//! `WARP_PROVISION_TICK=0.2`.

use std::time::Duration;

/// The provisioning policy in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// How often the provisioner looks at the queue and the jobs. Once a second is fast enough
    /// for jobs that take seconds to minutes to start, and cheap for the scheduler.
    pub tick: Duration,
    /// At most this many submissions in any minute: a burst of queued work must not flood the
    /// scheduler (sites throttle or ban users who submit hundreds of jobs at once).
    pub max_submits_per_minute: usize,
    /// A job that the scheduler's status command does not report, or that cannot be asked about
    /// (squeue failing), still counts as pending for this long after it was last seen. A flaky
    /// `squeue` must not make the provisioner believe its jobs are gone and submit more.
    pub unknown_grace: Duration,
    /// A running job whose worker has not registered after this long counts as a start failure
    /// (wrong paths, no network to the controller): more submissions would fail the same way.
    pub start_timeout: Duration,
    /// Consecutive failures (submit command errors, jobs dying before their worker registers)
    /// after which submissions pause; the pause lengths follow [`Policy::backoff`].
    pub failures_before_pause: u32,
    /// Pause after the 1st, 2nd, ... streak of failures (HyperQueue uses 0/1/15/30/60 min):
    /// short first, then long enough for a person to notice and fix the template.
    pub backoff: Vec<Duration>,
    /// With no queued and no running task for this long, the queue is drained and every job is
    /// cancelled: workers must not hold an allocation for nothing.
    pub drain_after: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            tick: Duration::from_secs(1),
            max_submits_per_minute: 10,
            unknown_grace: Duration::from_secs(300),
            start_timeout: Duration::from_secs(600),
            failures_before_pause: 3,
            backoff: [0, 60, 900, 1800, 3600].map(Duration::from_secs).to_vec(),
            drain_after: Duration::from_secs(60),
        }
    }
}

impl Policy {
    /// The defaults with `WARP_PROVISION_*` overrides from `env` applied; errors name the
    /// variable.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Policy, String> {
        let mut p = Policy::default();
        let secs = |name: &str, target: &mut Duration| -> Result<(), String> {
            let var = format!("WARP_PROVISION_{name}");
            if let Some(v) = env(&var) {
                *target = warp_common::parse_seconds(&v).map_err(|e| format!("{var}: {e}"))?;
            }
            Ok(())
        };
        secs("TICK", &mut p.tick)?;
        secs("UNKNOWN_GRACE", &mut p.unknown_grace)?;
        secs("START_TIMEOUT", &mut p.start_timeout)?;
        secs("DRAIN_AFTER", &mut p.drain_after)?;
        if let Some(v) = env("WARP_PROVISION_MAX_SUBMITS_PER_MINUTE") {
            p.max_submits_per_minute = v.parse().map_err(|_| {
                format!("WARP_PROVISION_MAX_SUBMITS_PER_MINUTE: '{v}' is not a number")
            })?;
        }
        if let Some(v) = env("WARP_PROVISION_BACKOFF") {
            p.backoff = v
                .split(',')
                .map(warp_common::parse_seconds)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("WARP_PROVISION_BACKOFF (comma-separated seconds): {e}"))?;
        }
        if p.tick.is_zero() {
            return Err("WARP_PROVISION_TICK must be > 0".into());
        }
        Ok(p)
    }

    /// The pause after the `streak`-th failure streak (1-based); the last step repeats.
    pub fn pause(&self, streak: usize) -> Duration {
        match self.backoff.len() {
            0 => Duration::ZERO,
            n => self.backoff[streak.saturating_sub(1).min(n - 1)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_and_errors_name_the_variable() {
        let p = Policy::from_env(|k| match k {
            "WARP_PROVISION_TICK" => Some("0.2".into()),
            "WARP_PROVISION_BACKOFF" => Some("0,1,5".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(p.tick, Duration::from_millis(200));
        assert_eq!(p.pause(1), Duration::ZERO);
        assert_eq!(p.pause(3), Duration::from_secs(5));
        assert_eq!(p.pause(9), Duration::from_secs(5));
        let err = Policy::from_env(|k| (k == "WARP_PROVISION_DRAIN_AFTER").then(|| "soon".into()))
            .unwrap_err();
        assert!(err.contains("WARP_PROVISION_DRAIN_AFTER"), "{err}");
    }
}

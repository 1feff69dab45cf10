//! `GET /metrics`: the controller's state and its history since start in the Prometheus text
//! exposition format (version 0.0.4), for a facility's monitoring (docs/monitoring.md).
//!
//! Gauges come from the core's status at the time of the scrape. The histograms and counters
//! are kept in [`Metrics`] (under the controller's lock) and fed when a task finishes
//! ([`Metrics::on_finished`]); they count this process's life, as Prometheus expects of
//! counters (a restart starts them again).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use warp_common::protocol::{ControllerStatus, TaskState};

use crate::core::TaskFacts;

/// Bucket bounds of the dispatch latency (submit to first assignment), seconds.
const DISPATCH_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 1800.0, 3600.0,
];

/// Bucket bounds of a task's completed attempt, seconds.
const DURATION_BOUNDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
];

/// A cumulative histogram as Prometheus keeps one.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// Observations at or below each bound (not cumulative here; summed when written).
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut acc = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            acc += c;
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {acc}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// What the controller has seen since it started.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    dispatch: Histogram,
    durations: BTreeMap<&'static str, Histogram>,
    movies: BTreeMap<&'static str, u64>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            dispatch: Histogram::new(DISPATCH_BOUNDS),
            durations: BTreeMap::new(),
            movies: BTreeMap::new(),
        }
    }
}

/// Distinct command names a histogram is kept for (the rest share `other`), so a client
/// inventing names cannot grow the scrape without bound.
const MAX_COMMAND_LABELS: usize = 32;

impl Metrics {
    /// A task reached a terminal state: its dispatch latency, its completed attempt's
    /// duration (by its first main command), and, for a movie package, its outcome.
    pub(crate) fn on_finished(&mut self, f: &TaskFacts) {
        if let Some(ms) = f.dispatch_ms {
            self.dispatch.observe(ms as f64 / 1e3);
        }
        if f.state == TaskState::Completed
            && let Some(ms) = f.run_ms
        {
            let command = f.first_command.unwrap_or("none");
            let known =
                self.durations.len() < MAX_COMMAND_LABELS || self.durations.contains_key(command);
            self.durations
                .entry(if known { command } else { "other" })
                .or_insert_with(|| Histogram::new(DURATION_BOUNDS))
                .observe(ms as f64 / 1e3);
        }
        if f.movie {
            let outcome = match f.state {
                TaskState::Completed => "done",
                TaskState::Failed => "failed",
                _ => "cancelled",
            };
            *self.movies.entry(outcome).or_default() += 1;
        }
    }

    /// The exposition text: the status's gauges and the histories.
    pub(crate) fn render(&self, st: &ControllerStatus) -> String {
        let mut o = String::new();
        let head = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} {kind}");
        };
        head(
            &mut o,
            "warp_workers",
            "gauge",
            "Registered workers by state.",
        );
        for (state, n) in [
            ("idle", st.workers.idle),
            ("busy", st.workers.busy),
            ("offline", st.workers.offline),
        ] {
            let _ = writeln!(o, "warp_workers{{state=\"{state}\"}} {n}");
        }
        head(
            &mut o,
            "warp_tasks",
            "gauge",
            "Tasks by state (finished ones while kept in memory).",
        );
        let t = &st.tasks;
        for (state, n) in [
            ("queued", t.queued),
            ("assigned", t.assigned),
            ("running", t.running),
            ("completed", t.completed),
            ("failed", t.failed),
            ("cancelled", t.cancelled),
        ] {
            let _ = writeln!(o, "warp_tasks{{state=\"{state}\"}} {n}");
        }
        head(
            &mut o,
            "warp_queue_length",
            "gauge",
            "Tasks waiting for a worker.",
        );
        let _ = writeln!(o, "warp_queue_length {}", st.queue_length);
        head(
            &mut o,
            "warp_parked_polls",
            "gauge",
            "Worker long-polls held open now.",
        );
        let _ = writeln!(o, "warp_parked_polls {}", st.parked_polls);
        head(
            &mut o,
            "warp_stale_reports_total",
            "counter",
            "Status reports refused (409) because their lease was no longer the task's.",
        );
        let _ = writeln!(o, "warp_stale_reports_total {}", st.stale_reports_refused);
        head(
            &mut o,
            "warp_batched_assignments_total",
            "counter",
            "Tasks handed to a worker as the rest of a batch (short tasks, workers' --batch).",
        );
        let _ = writeln!(
            o,
            "warp_batched_assignments_total {}",
            st.batched_assignments
        );
        head(
            &mut o,
            "warp_dispatch_latency_seconds",
            "histogram",
            "From submission to a task's first assignment, for tasks finished since start.",
        );
        self.dispatch
            .write(&mut o, "warp_dispatch_latency_seconds", "");
        head(
            &mut o,
            "warp_task_duration_seconds",
            "histogram",
            "Run time of completed attempts, by the task's first main command.",
        );
        for (command, h) in &self.durations {
            let label = format!("command=\"{}\"", escape(command));
            h.write(&mut o, "warp_task_duration_seconds", &label);
        }
        head(
            &mut o,
            "warp_movies_total",
            "counter",
            "Movie packages (tasks that load a stack) finished since start, by outcome.",
        );
        for outcome in ["done", "failed", "cancelled"] {
            let n = self.movies.get(outcome).copied().unwrap_or(0);
            let _ = writeln!(o, "warp_movies_total{{outcome=\"{outcome}\"}} {n}");
        }
        head(
            &mut o,
            "warp_provision_jobs",
            "gauge",
            "Worker jobs the controller's provisioner tracks, by batch-system state.",
        );
        let mut jobs: BTreeMap<&str, u64> = BTreeMap::new();
        for j in st.provisioning.iter().flat_map(|p| &p.jobs) {
            *jobs.entry(j.state.as_str()).or_default() += 1;
        }
        for (state, n) in jobs {
            let _ = writeln!(o, "warp_provision_jobs{{state=\"{}\"}} {n}", escape(state));
        }
        o
    }
}

/// A label value as the exposition format writes it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_with_an_inf_bucket() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.5, 0.7, 5.0] {
            h.observe(v);
        }
        let mut o = String::new();
        h.write(&mut o, "x", "command=\"Exec\"");
        assert_eq!(
            o,
            "x_bucket{command=\"Exec\",le=\"0.1\"} 1\nx_bucket{command=\"Exec\",le=\"1\"} 3\n\
             x_bucket{command=\"Exec\",le=\"+Inf\"} 4\nx_sum{command=\"Exec\"} 6.25\nx_count{command=\"Exec\"} 4\n"
        );
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

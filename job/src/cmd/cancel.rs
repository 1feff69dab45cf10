//! `warp-controller cancel TASK_ID`.

use warp_common::protocol::TaskId;

use super::client::{self, ClientArgs};
use crate::cli::{self, CliError, failed, usage};

/// A checked `cancel` command line.
#[derive(Debug, Clone)]
pub struct CancelConfig {
    /// The controller.
    pub client: ClientArgs,
    /// The task.
    pub task: TaskId,
}

impl CancelConfig {
    /// Parses and checks `args` (after `cancel`); `None` after `--help`.
    pub fn from_args(args: &[String]) -> Result<Option<CancelConfig>, CliError> {
        let o = client::options();
        let Some(m) = cli::parse(&o, args, "Usage: warp-controller cancel TASK_ID [options]")?
        else {
            return Ok(None);
        };
        let [id] = &m.free[..] else {
            return usage("cancel takes exactly one TASK_ID");
        };
        let task = uuid::Uuid::parse_str(id)
            .map_err(|_| CliError::Usage(format!("'{id}' is not a task id")))?;
        Ok(Some(CancelConfig {
            client: ClientArgs::from_matches(&m)?,
            task,
        }))
    }
}

/// Cancels the task and prints its state.
pub fn run(cfg: CancelConfig) -> Result<(), CliError> {
    let state = cfg.client.connect().cancel(cfg.task).map_err(failed)?;
    println!("{} {}", cfg.task, state.as_str());
    Ok(())
}

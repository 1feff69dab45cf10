//! The controller of the pull-based worker system.
//!
//! * [`core`]: the task/worker state core: pure, events in, decisions out.
//! * [`server`]: the running controller (threads, parked long-polls) and its in-process API.
//! * [`http`]: the route table and handlers; the only module that knows HTTP requests.
//! * [`journal`]: the state directory: journal of events, snapshots, archive; replay.
//! * [`auth`]: enrollment and worker tokens.
//! * [`client`]: a blocking client of the admin API (the CLI's `submit`, `status`, ...).
//! * [`wrapper`]: the drop-in wrapper (spawns local workers, blocking command calls) and the
//!   direct-mode wrapper.
//! * [`provision`]: submits worker jobs to SLURM while work is queued (`serve --provision`).
//! * [`logging`]: the stderr logger.
//!
//! The application (the preprocess job, the simulator, the `warp-controller` CLI) is the
//! `warp-job` crate; this one knows no kernels.

pub mod auth;
pub mod client;
pub mod core;
pub mod http;
pub mod journal;
pub mod logging;
mod metrics;
pub mod provision;
pub mod server;
pub mod session;
pub mod wrapper;

pub use server::{Controller, ControllerConfig, ControllerView, TlsFiles, WorkerEvent};

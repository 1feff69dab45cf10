//! The application over the controller: what a facility runs.
//!
//! * [`preprocess`]: the main job: preprocess a folder of movies over the workers.
//! * [`dataset`]: synthetic movies with known truth (`simulate`).
//! * [`compare`]: preprocessing results checked against that truth (`compare`).
//! * [`cmd`]: the `warp-controller` subcommands, one module each: a config built and checked
//!   from the command line before anything starts, then `run(config)`.
//! * [`cli`]: [`cli::CliError`] (usage → exit 2, failure → exit 1), option parsing, the stop
//!   flag.
//!
//! The engine and service (core, HTTP, auth, provisioning, clients, wrapper) are the
//! `warp-controller` crate, which knows no kernels; this crate joins it to `warp-kernels`.

pub mod cli;
pub mod cmd;
pub mod compare;
pub mod dataset;
pub mod preprocess;
pub mod select;

#[cfg(test)]
mod test_util;

//! `warp-controller`: the subcommands of [`warp_job::cmd`]. Exit codes: 0 ok, 1 failure,
//! 2 usage error.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match warp_job::cmd::dispatch(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warp-controller: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

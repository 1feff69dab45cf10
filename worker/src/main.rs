//! `warp-worker`: parses flags, runs the worker, maps the outcome to the exit status
//! (0 clean exit, 1 failure, 2 usage error, 3 the GPU failed its health check after a command
//! error and the task was handed back). See `warp-worker --help`.

use warp_worker::config::{self, Parsed};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = config::parse_args(&args, &|k| std::env::var(k).ok());
    // SAFETY: no other thread runs yet; the configuration holds what it read.
    unsafe { warp_worker::scrub_secrets() };
    let code = match parsed {
        Ok(Parsed::Help) => {
            println!("{}", config::usage());
            0
        }
        Ok(Parsed::Version) => {
            println!("warp-worker {}", warp_common::VERSION);
            0
        }
        Ok(Parsed::Run(cfg)) => match warp_worker::run(*cfg) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("warp-worker: error: {e}");
                e.exit_code()
            }
        },
        Err(msg) => {
            eprintln!("warp-worker: {msg}\nTry 'warp-worker --help'.");
            2
        }
    };
    std::process::exit(code);
}

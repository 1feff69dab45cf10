//! Option parsing shared by the `warp-controller` subcommands (the binary's own and the
//! `simulate`/`compare` ones in this library). Errors that are the user's to fix start with
//! `"usage: "`; the binary turns them into exit code 2.

use getopts::{Matches, Options};

/// Parses `args` with `opts`; prints the help and returns `None` for `--help`.
pub fn parse(opts: &Options, args: &[String], brief: &str) -> Result<Option<Matches>, String> {
    let m = opts
        .parse(args)
        .map_err(|e| format!("usage: {e}; see --help"))?;
    if m.opt_present("help") {
        println!("{}", opts.usage(brief));
        return Ok(None);
    }
    Ok(Some(m))
}

/// The value of `--name` parsed as a number, or `default` when absent.
pub fn number<T: std::str::FromStr>(m: &Matches, name: &str, default: T) -> Result<T, String> {
    match m.opt_str(name) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| format!("usage: --{name}: '{v}' is not a valid number")),
    }
}

//! What the client subcommands (`submit`, `status`, `workers`, `tasks`, `cancel`) share: the
//! `--controller` and `--token-file` options, resolved before any request is made.

use std::path::PathBuf;

use getopts::{Matches, Options};
use warp_controller::auth;
use warp_controller::client::AdminClient;

use crate::cli::CliError;

/// Options every client subcommand takes.
pub fn options() -> Options {
    let mut o = Options::new();
    o.optflag("h", "help", "print this help");
    o.optopt(
        "",
        "controller",
        "controller URL (http://HOST:PORT or HOST:PORT); default $WARP_CONTROLLER",
        "URL",
    );
    o.optopt(
        "",
        "token-file",
        "file holding the enrollment (admin) token; default $WARP_TOKEN",
        "FILE",
    );
    o
}

/// A checked `--controller` URL and token: a client not yet connected.
#[derive(Debug, Clone)]
pub struct ClientArgs {
    url: String,
    token: String,
}

impl ClientArgs {
    /// Resolves the controller URL and the token; a missing one is a usage error.
    pub fn from_matches(m: &Matches) -> Result<ClientArgs, CliError> {
        let url = m
            .opt_str("controller")
            .or_else(|| std::env::var("WARP_CONTROLLER").ok())
            .ok_or_else(|| {
                CliError::Usage(
                    "no controller: pass --controller URL or set WARP_CONTROLLER".into(),
                )
            })?;
        let token_file = m.opt_str("token-file").map(PathBuf::from);
        let token = auth::resolve_token(token_file.as_deref(), false)?;
        // Checks the URL's form now; connects nothing.
        AdminClient::new(&url, &token)
            .map_err(|e| CliError::Usage(format!("--controller: {e}")))?;
        Ok(ClientArgs { url, token })
    }

    /// The client.
    pub fn connect(&self) -> AdminClient {
        AdminClient::new(&self.url, &self.token).expect("checked in from_matches")
    }
}

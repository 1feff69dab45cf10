//! What the client subcommands (`submit`, `status`, `workers`, `tasks`, `cancel`) share: the
//! `--controller` and `--admin-token-file` options, resolved before any request is made.

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
        "controller URL (http://HOST:PORT, https://HOST:PORT or HOST:PORT); default $WARP_CONTROLLER",
        "URL",
    );
    o.optopt(
        "",
        "ca-file",
        "PEM certificate(s) to trust for an https:// controller (its make-cert.sh cert.pem); default $WARP_CA_FILE, else the public authorities",
        "FILE",
    );
    o.optopt(
        "",
        "admin-token-file",
        "file holding the admin token (serve writes it as admin-token beside its --token-file); default $WARP_ADMIN_TOKEN",
        "FILE",
    );
    o.optopt(
        "",
        "token-file",
        "older name of --admin-token-file (then $WARP_TOKEN is the last resort)",
        "FILE",
    );
    o
}

/// The admin token of a client command: `--admin-token-file`, `--token-file` (its older
/// name), `WARP_ADMIN_TOKEN`, then `WARP_TOKEN` (from when one token did everything; a
/// controller that separates them answers 401 naming the admin token).
pub fn admin_token(m: &Matches) -> Result<String, auth::TokenError> {
    if let Some(f) = m
        .opt_str("admin-token-file")
        .or_else(|| m.opt_str("token-file"))
    {
        return auth::token_from_file(std::path::Path::new(&f), false);
    }
    auth::from_env(auth::ADMIN_TOKEN_ENV)
        .or_else(|| auth::from_env(auth::TOKEN_ENV))
        .ok_or(auth::TokenError::NotGiven {
            secret: auth::ADMIN,
        })
}

/// A checked `--controller` URL and token: a client not yet connected.
#[derive(Debug, Clone)]
pub struct ClientArgs {
    url: String,
    token: String,
    ca_file: Option<std::path::PathBuf>,
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
        let token = admin_token(m)?;
        let ca_file = warp_common::tls::ca_file(m.opt_str("ca-file"));
        // Checks the URL's form and reads the CA file now; connects nothing.
        AdminClient::with_ca(&url, &token, ca_file.as_deref())
            .map_err(|e| CliError::Usage(format!("--controller: {e}")))?;
        Ok(ClientArgs {
            url,
            token,
            ca_file,
        })
    }

    /// The client.
    pub fn connect(&self) -> AdminClient {
        AdminClient::with_ca(&self.url, &self.token, self.ca_file.as_deref())
            .expect("checked in from_matches")
    }
}

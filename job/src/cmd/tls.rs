//! The HTTPS options `serve` and `preprocess` share (`--tls-cert`, `--tls-key`), checked before
//! anything binds.

use getopts::{Matches, Options};
use std::path::PathBuf;
use warp_controller::TlsFiles;

use crate::cli::{CliError, usage};

/// Adds `--tls-cert` and `--tls-key`.
pub fn options(o: &mut Options) {
    o.optopt(
        "",
        "tls-cert",
        "serve HTTPS only, with this PEM certificate (chain); workers and clients then use https:// URLs and --ca-file (scripts/make-cert.sh DIR HOSTS... writes a self-signed pair)",
        "FILE",
    );
    o.optopt(
        "",
        "tls-key",
        "the PEM private key of --tls-cert (unencrypted; keep it mode 600)",
        "FILE",
    );
}

/// Both files, or neither; each must be readable, and the pair must make a server
/// configuration (checked again when the controller starts).
pub fn files(m: &Matches) -> Result<Option<TlsFiles>, CliError> {
    let (cert, key) = match (m.opt_str("tls-cert"), m.opt_str("tls-key")) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (PathBuf::from(c), PathBuf::from(k)),
        _ => return usage("--tls-cert and --tls-key go together"),
    };
    if !warp_common::tls::TLS_BUILT {
        return usage(format!("--tls-cert: {}", warp_common::tls::NO_TLS));
    }
    for (flag, f) in [("--tls-cert", &cert), ("--tls-key", &key)] {
        if let Err(e) = std::fs::File::open(f) {
            return usage(format!("{flag} {}: cannot read it: {e}", f.display()));
        }
    }
    // Absolute: provisioned jobs and local workers are told the certificate's path.
    let abs = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    Ok(Some(TlsFiles {
        cert: abs(cert),
        key: abs(key),
    }))
}

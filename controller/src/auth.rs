//! Tokens: the three secrets of a controller (enrollment, admin, view; see [`Secret`]) from a
//! file or the environment, per-worker tokens, and the bearer header. Tokens are never logged
//! and never taken from a command line.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Environment variable holding the enrollment token when no token file is given.
pub const TOKEN_ENV: &str = "WARP_TOKEN";
/// Environment variable holding the admin token when no admin token file is given.
pub const ADMIN_TOKEN_ENV: &str = "WARP_ADMIN_TOKEN";
/// Environment variable holding the view token when no view token file is given.
pub const VIEW_TOKEN_ENV: &str = "WARP_VIEW_TOKEN";

/// One of a controller's secrets: what it may do, the flag naming its file, its variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secret {
    /// "enrollment", "admin" or "view".
    pub name: &'static str,
    /// The command-line flag of its file.
    pub flag: &'static str,
    /// The environment variable holding it when no file is given.
    pub env: &'static str,
}

/// Registers workers, nothing else: what compute nodes hold.
pub const ENROLLMENT: Secret = Secret {
    name: "enrollment",
    flag: "--token-file",
    env: TOKEN_ENV,
};
/// Everything: submit, cancel, monitor, register.
pub const ADMIN: Secret = Secret {
    name: "admin",
    flag: "--admin-token-file",
    env: ADMIN_TOKEN_ENV,
};
/// Read-only monitoring routes (status, workers, tasks, consoles, waits).
pub const VIEW: Secret = Secret {
    name: "view",
    flag: "--view-token-file",
    env: VIEW_TOKEN_ENV,
};

/// A fresh random 256-bit token, hex encoded (64 characters), from the kernel's CSPRNG.
pub fn random_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Why no enrollment token could be had. [`TokenError::NotGiven`] and [`TokenError::Empty`] are
/// the user's to fix (a CLI reports them as usage errors); [`TokenError::Io`] is a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    /// Neither a token file nor the environment variable was given.
    NotGiven {
        /// The secret that was needed.
        secret: Secret,
    },
    /// The token file holds no token.
    Empty {
        /// The file.
        path: String,
    },
    /// The token file could not be read or created.
    Io {
        /// The file (or `/dev/urandom`).
        path: String,
        /// What failed.
        error: String,
    },
}

impl TokenError {
    /// Whether the user fixes it by changing the command line or the file (not a failure).
    pub fn is_usage(&self) -> bool {
        matches!(self, TokenError::NotGiven { .. } | TokenError::Empty { .. })
    }
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::NotGiven { secret } => write!(
                f,
                "no {} token: pass {} FILE or set {}",
                secret.name, secret.flag, secret.env
            ),
            TokenError::Empty { path } => write!(
                f,
                "token file {path} is empty: put a token in it or delete it to have one generated"
            ),
            TokenError::Io { path, error } => write!(f, "token file {path}: {error}"),
        }
    }
}

impl std::error::Error for TokenError {}

/// Reads the token in `path`, or when the file does not exist and `create` is set, creates it
/// with mode 0600 holding a new random token. Errors name the file and what to do.
pub fn token_from_file(path: &Path, create: bool) -> Result<String, TokenError> {
    let io = |what: &str, e: std::io::Error| TokenError::Io {
        path: path.display().to_string(),
        error: format!("{what}: {e}"),
    };
    match fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim().to_string();
            if token.is_empty() {
                return Err(TokenError::Empty {
                    path: path.display().to_string(),
                });
            }
            if let Ok(meta) = fs::metadata(path)
                && meta.permissions().mode() & 0o077 != 0
            {
                log::warn!(
                    "token file {} is readable by group or others (mode {:o}); chmod 600 it",
                    path.display(),
                    meta.permissions().mode() & 0o777
                );
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let token = random_token().map_err(|e| TokenError::Io {
                path: "/dev/urandom".into(),
                error: e.to_string(),
            })?;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| io("cannot create it", e))?;
            f.write_all(format!("{token}\n").as_bytes())
                .map_err(|e| io("cannot write it", e))?;
            log::info!(
                "created token file {} (mode 600) with a new random token",
                path.display()
            );
            Ok(token)
        }
        Err(e) => Err(io("cannot read it", e)),
    }
}

/// The enrollment token: from `--token-file` when given, else from `WARP_TOKEN`.
pub fn resolve_token(token_file: Option<&Path>, create: bool) -> Result<String, TokenError> {
    resolve(ENROLLMENT, token_file, create)
}

/// `secret` from `file` when given (created when missing and `create` is set), else from its
/// environment variable.
pub fn resolve(secret: Secret, file: Option<&Path>, create: bool) -> Result<String, TokenError> {
    if let Some(path) = file {
        return token_from_file(path, create);
    }
    from_env(secret.env).ok_or(TokenError::NotGiven { secret })
}

/// A non-empty token in the environment variable `var`.
pub fn from_env(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
        _ => None,
    }
}

/// Where `serve` keeps the admin token when `--admin-token-file` is not given: `admin-token`
/// beside the enrollment token file.
pub fn default_admin_token_file(enrollment_file: &Path) -> std::path::PathBuf {
    enrollment_file.with_file_name("admin-token")
}

pub use warp_common::bearer;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tokens_are_256_bit_hex_and_differ() {
        let (a, b) = (random_token().unwrap(), random_token().unwrap());
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn token_file_is_created_private_and_read_back() {
        let dir = std::env::temp_dir().join(format!("warp-auth-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        let _ = fs::remove_file(&path);
        assert!(token_from_file(&path, false).is_err());
        let t = token_from_file(&path, true).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(token_from_file(&path, false).unwrap(), t);
        fs::write(&path, "  \n").unwrap();
        let e = token_from_file(&path, true).unwrap_err();
        assert!(e.to_string().contains("empty") && e.is_usage(), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
    }
}

//! Tokens: the enrollment (admin) token from a file or the environment, per-worker tokens, and
//! the bearer header. Tokens are never logged and never taken from a command line.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Environment variable holding the enrollment token when no token file is given.
pub const TOKEN_ENV: &str = "WARP_TOKEN";

/// A fresh random 256-bit token, hex encoded (64 characters), from the kernel's CSPRNG.
pub fn random_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Reads the token in `path`, or when the file does not exist and `create` is set, creates it
/// with mode 0600 holding a new random token. Errors name the file and what to do.
pub fn token_from_file(path: &Path, create: bool) -> Result<String, String> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim().to_string();
            if token.is_empty() {
                return Err(format!(
                    "token file {} is empty: put a token in it or delete it to have one generated",
                    path.display()
                ));
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
            let token = random_token().map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| format!("cannot create token file {}: {e}", path.display()))?;
            f.write_all(format!("{token}\n").as_bytes())
                .map_err(|e| format!("cannot write token file {}: {e}", path.display()))?;
            log::info!(
                "created token file {} (mode 600) with a new random token",
                path.display()
            );
            Ok(token)
        }
        Err(e) => Err(format!("cannot read token file {}: {e}", path.display())),
    }
}

/// The enrollment token: from `--token-file` when given, else from `WARP_TOKEN`.
pub fn resolve_token(token_file: Option<&Path>, create: bool) -> Result<String, String> {
    if let Some(path) = token_file {
        return token_from_file(path, create);
    }
    match std::env::var(TOKEN_ENV) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        _ => Err(format!(
            "no token: pass --token-file FILE (created with a random token if missing) or set {TOKEN_ENV}"
        )),
    }
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

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
        assert!(token_from_file(&path, true).unwrap_err().contains("empty"));
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

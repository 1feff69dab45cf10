//! HTTPS for the clients of a controller (workers, the CLI, the wrapper): which certificate
//! authority to trust. The server side lives in the patched tiny_http (`ssl-rustls`).
//!
//! A controller URL with `https://` is checked against the CA file given with `--ca-file` (or
//! `WARP_CA_FILE`); without one, against the public authorities compiled into ureq
//! (webpki-roots). A certificate made by `scripts/make-cert.sh` is its own CA: its `cert.pem` is
//! the CA file.

use std::path::{Path, PathBuf};

/// The environment twin of `--ca-file`.
pub const CA_FILE_ENV: &str = "WARP_CA_FILE";

/// The CA file a client trusts: the flag's value, else `WARP_CA_FILE` (empty means unset, so a
/// job script can export it blank).
pub fn ca_file(flag: Option<String>) -> Option<PathBuf> {
    flag.or_else(|| std::env::var(CA_FILE_ENV).ok())
        .filter(|s| !s.trim().is_empty())
        .map(PathBuf::from)
}

/// Whether this build speaks HTTPS (cargo feature `tls`).
pub const TLS_BUILT: bool = cfg!(feature = "tls");

/// A hint for a transport error that looks like a TLS problem: an untrusted certificate, or an
/// https URL for a controller that serves plain HTTP.
pub fn certificate_hint(message: &str) -> Option<&'static str> {
    let m = message.to_ascii_lowercase();
    if m.contains("corrupt message") || m.contains("invalidcontenttype") {
        Some("the controller does not speak TLS on this port: use its http:// URL")
    } else if m.contains("certificate") || m.contains("unknownissuer") || m.contains("handshake") {
        Some(
            "the controller's certificate is not trusted: pass --ca-file with the CA (for a certificate from scripts/make-cert.sh, its cert.pem) or set WARP_CA_FILE, and check that the URL's host is one the certificate names",
        )
    } else {
        None
    }
}

/// `message` with its [`certificate_hint`] appended, if it has one.
pub fn with_hint(message: String) -> String {
    match certificate_hint(&message) {
        Some(hint) => format!("{message} ({hint})"),
        None => message,
    }
}

/// A client configuration that trusts exactly the certificates in `ca_file` (PEM).
#[cfg(feature = "tls")]
pub fn client_config(ca_file: &Path) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let shown = ca_file.display();
    let bytes =
        std::fs::read(ca_file).map_err(|e| format!("cannot read the CA file {shown}: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the CA file {shown} is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "the CA file {shown} holds no CERTIFICATE block (expected PEM, as scripts/make-cert.sh writes)"
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in certs {
        roots.add(c).map_err(|e| {
            format!("the CA file {shown} holds a certificate that cannot be trusted: {e}")
        })?;
    }
    // ring, as the issue and ureq's `tls` feature use it: pure C/asm with no cmake or Go, so the
    // glibc-2.17 cross build keeps working. rustls 0.23.48 deprecates it only to point at
    // aws-lc-rs for post-quantum key exchange.
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

/// The configuration a client of `url` needs: `Some` for an https URL with a CA file (else
/// ureq's built-in public authorities, or plain HTTP).
#[cfg(feature = "tls")]
pub fn for_url(
    url: &str,
    ca_file: Option<&Path>,
) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>, String> {
    match ca_file {
        Some(f) if url.starts_with("https://") => client_config(f).map(Some),
        _ => Ok(None),
    }
}

/// Without the `tls` feature there is nothing to configure: https URLs are refused earlier.
#[cfg(not(feature = "tls"))]
pub fn client_config(_ca_file: &Path) -> Result<std::sync::Arc<()>, String> {
    Err(NO_TLS.into())
}

/// The message of a build without TLS.
pub const NO_TLS: &str =
    "this build has no TLS support (built without the cargo feature `tls`); use http://HOST:PORT";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_ca_variable_means_none() {
        assert_eq!(
            ca_file(Some("/x.pem".into())),
            Some(PathBuf::from("/x.pem"))
        );
        assert_eq!(ca_file(Some("  ".into())), None);
    }

    #[test]
    fn certificate_errors_get_a_hint() {
        assert!(certificate_hint("invalid peer certificate: UnknownIssuer").is_some());
        assert!(certificate_hint("Connection refused").is_none());
    }

    #[cfg(feature = "tls")]
    #[test]
    fn ca_files_that_are_not_pem_are_refused_with_the_file_named() {
        let dir = std::env::temp_dir().join(format!("warp-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("ca.pem");
        std::fs::write(&f, "not a certificate\n").unwrap();
        let e = client_config(&f).unwrap_err();
        assert!(e.contains("ca.pem") && e.contains("CERTIFICATE"), "{e}");
        let e = client_config(&dir.join("missing.pem")).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

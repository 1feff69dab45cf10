//! warp patch: rustls 0.23 with the ring provider (upstream used rustls 0.20 and
//! rustls-pemfile). The handshake runs on the connection's own thread, at its first read, under
//! the connection's deadlines (upstream's shape too: `accept` only wraps the socket). A client
//! that speaks plain HTTP to this port gets a 400 saying so (JSON, code `https_required`), and the connection ends.
use crate::connection::Connection;
use crate::util::refined_tcp_stream::Stream as RefinedStream;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::error::Error;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use zeroize::Zeroizing;

struct Tls {
    stream: rustls::StreamOwned<rustls::ServerConnection, Connection>,
    /// The first byte was looked at: a TLS handshake record, not plain HTTP.
    checked: bool,
}

/// A wrapper around an owned Rustls connection and corresponding stream.
///
/// Uses an internal Mutex to permit disparate reader & writer threads to access the stream
/// independently; the server serializes requests of an HTTPS connection (the next request is read
/// only once the previous one was answered), so the two never wait on each other.
pub(crate) struct RustlsStream(Arc<Mutex<Tls>>);

/// What a plain-HTTP client is told.
/// (In the controller's error shape, `{"error", "code"}`, so its clients show the message.)
const PLAIN_HTTP_BODY: &str = "{\"error\":\"this server speaks HTTPS only: use an https:// URL for it\",\"code\":\"https_required\"}\n";

impl RustlsStream {
    fn lock(&self) -> MutexGuard<'_, Tls> {
        // A panic while holding the lock leaves a TLS state we cannot trust; the connection
        // then fails on its next use.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn peer_addr(&mut self) -> std::io::Result<Option<SocketAddr>> {
        self.lock().stream.sock.peer_addr()
    }

    pub(crate) fn shutdown(&mut self, how: Shutdown) -> std::io::Result<()> {
        self.lock().stream.sock.shutdown(how)
    }

    pub(crate) fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        self.lock().stream.sock.set_read_timeout(t)
    }

    pub(crate) fn set_write_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        self.lock().stream.sock.set_write_timeout(t)
    }
}

impl Tls {
    /// Refuses a client that sent plain HTTP (its first byte is not a TLS handshake record).
    fn check_first_byte(&mut self) -> std::io::Result<()> {
        if self.checked {
            return Ok(());
        }
        let mut first = [0u8; 1];
        let n = match &self.stream.sock {
            Connection::Tcp(s) => s.peek(&mut first)?,
            // No peek on Unix sockets in std; rustls refuses plain text there with its own error.
            #[cfg(unix)]
            Connection::Unix(_) => {
                self.checked = true;
                return Ok(());
            }
        };
        if n == 0 {
            return Ok(()); // closed before sending anything
        }
        self.checked = true;
        // A TLS connection starts with a handshake record (0x16); an HTTP one with a method,
        // letters. Anything else is left to rustls to refuse.
        if first[0].is_ascii_alphabetic() {
            let answer = format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{PLAIN_HTTP_BODY}",
                PLAIN_HTTP_BODY.len()
            );
            let sock = &mut self.stream.sock;
            let _ = sock.write_all(answer.as_bytes());
            // Read what the client sent (within the socket's read timeout) before closing, so
            // the close is a FIN the client reads the answer before, not a reset.
            let _ = sock.shutdown(Shutdown::Write);
            let mut sink = [0u8; 4096];
            let mut drained = 0;
            while drained < 64 * 1024 {
                match sock.read(&mut sink) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a plain HTTP request on an HTTPS port",
            ));
        }
        Ok(())
    }
}

impl Clone for RustlsStream {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl Read for RustlsStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut tls = self.lock();
        tls.check_first_byte()?;
        tls.stream.read(buf)
    }
}

impl Write for RustlsStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.lock().stream.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.lock().stream.flush()
    }
}

pub(crate) struct RustlsContext(Arc<rustls::ServerConfig>);

impl RustlsContext {
    /// A server configuration from a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1
    /// or SEC1). Errors say which of the two is wrong.
    pub(crate) fn from_pem(
        certificates: Vec<u8>,
        private_key: Zeroizing<Vec<u8>>,
    ) -> Result<Self, Box<dyn Error + Send + Sync>> {
        let chain = CertificateDer::pem_slice_iter(&certificates)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the certificate file is not PEM: {e}"))?;
        if chain.is_empty() {
            return Err("the certificate file holds no CERTIFICATE block".into());
        }
        let key = PrivateKeyDer::from_pem_slice(&private_key).map_err(|e| {
            format!("the key file holds no usable private key (unencrypted PKCS#8, RSA or EC PEM): {e}")
        })?;
        // ring (see warp_common::tls); deprecated in 0.23.48 only to point at aws-lc-rs.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| format!("the certificate and the key do not make a pair: {e}"))?;
        Ok(Self(Arc::new(config)))
    }

    pub(crate) fn accept(
        &self,
        stream: Connection,
    ) -> Result<RustlsStream, Box<dyn Error + Send + Sync + 'static>> {
        let connection = rustls::ServerConnection::new(self.0.clone())?;
        Ok(RustlsStream(Arc::new(Mutex::new(Tls {
            stream: rustls::StreamOwned::new(connection, stream),
            checked: false,
        }))))
    }
}

impl From<RustlsStream> for RefinedStream {
    fn from(stream: RustlsStream) -> Self {
        Self::Https(stream)
    }
}

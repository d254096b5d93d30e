//! TLS on the broker's ports (rustls, the `ring` provider): the one door is [`ServerTls`].
//!
//! - [`ServerTls::load`] reads the certificate chain, the private key and, for mutual TLS, the
//!   CA that client certificates must be signed by (PEM files), and builds the rustls config.
//! - [`ServerTls::acceptor`] hands out the config in force for a new handshake; [`reload`]
//!   swaps it. A connection keeps the config it was accepted with, so a reload never drops
//!   one, and a reload that fails keeps the old config.
//! - [`reload_on_hangup`] reloads on every SIGHUP and logs the outcome.
//! - [`MaybeTlsStream`]: an accepted socket, plain or TLS, for the HTTP API. Client
//!   connections instead stay generic over their halves (`connection::serve`), so the plain
//!   wire path is exactly what it is without TLS.
//!
//! Nothing above the socket knows whether it is encrypted (DESIGN.md §7).
//!
//! [`reload`]: ServerTls::reload

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::signal::unix::Signal;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Where the PEM files are; read at start and again at each reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain, leaf first.
    pub cert: PathBuf,
    /// The certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// For mutual TLS: clients must present a certificate signed by one of these CAs.
    pub client_ca: Option<PathBuf>,
}

/// The TLS settings cannot be used; names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read the TLS {what} file {path}: {source}")]
    Read {
        /// Which file: `certificate`, `key` or `client CA`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file is not PEM, or holds nothing of the kind expected.
    #[error("the TLS {what} file {path} holds no usable PEM {expected}: {reason}")]
    BadPem {
        /// Which file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What it should hold.
        expected: &'static str,
        /// What the PEM reader said.
        reason: String,
    },
    /// A client CA certificate is not a usable trust anchor.
    #[error("the TLS client CA file {path} cannot be used: {reason}")]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the certificate and key (they do not match, an unsupported key type...).
    #[error("the TLS certificate {cert} and key {key} cannot be used: {reason}")]
    Unusable {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        reason: rustls::Error,
    },
}

/// The TLS config for new handshakes, swappable at run time; shared by the wire port and the
/// HTTP port.
#[derive(Debug)]
pub struct ServerTls {
    files: TlsFiles,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl ServerTls {
    /// Reads the files and builds the config; fails naming the file at fault.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let config = build_config(&files)?;
        Ok(Self {
            files,
            current: RwLock::new(config),
        })
    }

    /// The files it reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// An acceptor with the config in force now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.read_current())
    }

    /// Reads the files again and, if they are usable, makes them the config of new
    /// handshakes; otherwise keeps the one in force. Connections already open are untouched.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = build_config(&self.files)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }

    fn read_current(&self) -> Arc<rustls::ServerConfig> {
        // A panic while holding the lock cannot leave a half-written Arc behind.
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Reloads `tls` on every signal `hangups` receives (SIGHUP), logging the outcome, until the
/// task is aborted. Other parts of the broker may listen for SIGHUP too: tokio delivers it
/// to every listener.
pub async fn reload_on_hangup(tls: Arc<ServerTls>, mut hangups: Signal) {
    while hangups.recv().await.is_some() {
        let files = tls.files();
        let cert = files.cert.display().to_string();
        // File reads: off the runtime's threads.
        let reloading = Arc::clone(&tls);
        let reloaded =
            tokio::task::spawn_blocking(move || reloading.reload().map_err(|e| e.to_string()))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
        match reloaded {
            Ok(()) => tracing::info!(cert, "TLS certificate reloaded"),
            Err(e) => tracing::error!(error = %e, cert,
                "TLS certificate reload failed; new connections keep the previous certificate"),
        }
    }
}

fn build_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = read_certificates("certificate", &files.cert)?;
    let key = read_key(&files.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let unusable = |reason| TlsError::Unusable {
        cert: files.cert.clone(),
        key: files.key.clone(),
        reason,
    };
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(unusable)?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let roots = read_roots(path)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::ClientCa {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(chain, key).map_err(unusable)?;
    Ok(Arc::new(config))
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Every certificate of a PEM file; at least one.
fn read_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(what, path)?;
    let bad = |reason: String| TlsError::BadPem {
        what,
        path: path.to_owned(),
        expected: "certificate",
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE section".into()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file("key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::BadPem {
        what: "key",
        path: path.to_owned(),
        expected: "private key",
        reason: e.to_string(),
    })
}

fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates("client CA", path)? {
        roots.add(cert).map_err(|e| TlsError::ClientCa {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// An accepted socket, plain or TLS (the HTTP API's; one branch per poll, not per byte).
#[derive(Debug)]
pub enum MaybeTlsStream {
    /// No TLS on this port.
    Plain(TcpStream),
    /// TLS, handshake done.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for MaybeTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTlsStream::Plain(s) => s.is_write_vectored(),
            MaybeTlsStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> TlsFiles {
        TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            client_ca: None,
        }
    }

    #[test]
    fn a_missing_or_empty_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        let e = ServerTls::load(f.clone()).unwrap_err();
        assert!(
            matches!(
                e,
                TlsError::Read {
                    what: "certificate",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("cert.pem"), "{e}");
        std::fs::write(&f.cert, "not pem at all\n").unwrap();
        let e = ServerTls::load(f.clone()).unwrap_err();
        assert!(
            matches!(
                e,
                TlsError::BadPem {
                    what: "certificate",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("cert.pem"), "{e}");
    }
}

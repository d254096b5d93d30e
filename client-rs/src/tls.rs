//! TLS for `sluices://` URLs (rustls with the `ring` provider): the server is verified against
//! the system's roots or a `ca_file`; a `cert_file` and `key_file` give a client certificate
//! for servers that require mutual TLS. TLS failures become a typed [`TlsError`].

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::error::Error;

/// Why TLS could not be set up or the TLS handshake failed.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A CA, certificate or key file could not be read.
    #[error("cannot read the TLS {what} file {path}: {source}")]
    ReadFile {
        /// `CA`, `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Arc<io::Error>,
    },
    /// A file holds no usable PEM of the kind expected.
    #[error("the TLS {what} file {path} holds no usable PEM {expected}: {reason}")]
    BadPem {
        /// `CA`, `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What it should hold.
        expected: &'static str,
        /// What the PEM reader said.
        reason: String,
    },
    /// No `ca_file` was given and the system has no trusted roots.
    #[error("no trusted root certificates on this system: give a ca_file")]
    NoRootCertificates,
    /// The URL's host cannot be a TLS server name.
    #[error("{0:?} cannot be checked against a TLS certificate (not a DNS name or IP address)")]
    InvalidServerName(String),
    /// The client certificate and key cannot be used together.
    #[error("the TLS client certificate cannot be used: {0}")]
    ClientCertificate(String),
    /// The server's certificate failed verification (unknown issuer, wrong name, expired...).
    #[error("the server's TLS certificate is not trusted: {0}")]
    ServerNotTrusted(String),
    /// The server ended the TLS handshake with an alert, e.g. because it requires a client
    /// certificate signed by its CA and ours is missing or not.
    #[error("the server refused the TLS handshake: {0}")]
    RefusedByServer(String),
    /// Any other TLS failure.
    #[error("TLS failed: {0}")]
    Other(String),
}

/// Where the client's TLS material is; every part optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    /// CA certificates the server must be signed by; `None`: the system's roots.
    pub(crate) ca_file: Option<PathBuf>,
    /// The client certificate and its key, for mutual TLS.
    pub(crate) client_cert: Option<(PathBuf, PathBuf)>,
}

/// Runs the TLS handshake over `stream` with the server named `host`.
pub(crate) async fn connect(
    stream: TcpStream,
    host: &str,
    files: &TlsFiles,
) -> Result<TlsStream<TcpStream>, Error> {
    let config = client_config(files)?;
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| TlsError::InvalidServerName(host.to_owned()))?;
    TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| classify(Error::from(e)))
}

/// An I/O error that carries a TLS failure becomes [`Error::Tls`]. With TLS 1.3 a server that
/// refuses our certificate says so after the client's side of the handshake is done, so the
/// failure shows up on the first read (in the protocol's handshake): run errors from there
/// through this too.
pub(crate) fn classify(error: Error) -> Error {
    let Error::Io(io) = &error else {
        return error;
    };
    let Some(tls) = io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        return error;
    };
    Error::Tls(match tls {
        rustls::Error::InvalidCertificate(_) => TlsError::ServerNotTrusted(tls.to_string()),
        rustls::Error::AlertReceived(_) => TlsError::RefusedByServer(tls.to_string()),
        _ => TlsError::Other(tls.to_string()),
    })
}

fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match &files.ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certificates("CA", path)? {
                roots.add(cert).map_err(|e| TlsError::BadPem {
                    what: "CA",
                    path: path.clone(),
                    expected: "CA certificate",
                    reason: e.to_string(),
                })?;
            }
            Arc::new(roots)
        }
        None => system_roots()?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Other(e.to_string()))?
        .with_root_certificates(roots);
    let config = match &files.client_cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(read_certificates("certificate", cert)?, read_key(key)?)
            .map_err(|e| TlsError::ClientCertificate(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The system's trusted roots, read once per process.
fn system_roots() -> Result<Arc<RootCertStore>, TlsError> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    if let Some(roots) = ROOTS.get() {
        return Ok(Arc::clone(roots));
    }
    let mut roots = RootCertStore::empty();
    // Unreadable or unparsable system certificates are skipped, as every TLS client does.
    let (added, _ignored) =
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if added == 0 {
        return Err(TlsError::NoRootCertificates);
    }
    Ok(Arc::clone(ROOTS.get_or_init(|| Arc::new(roots))))
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::ReadFile {
        what,
        path: path.to_owned(),
        source: Arc::new(e),
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_files_are_typed_errors_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("sluice-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let files = TlsFiles {
            ca_file: Some(missing.clone()),
            client_cert: None,
        };
        let e = client_config(&files).unwrap_err();
        assert!(matches!(&e, TlsError::ReadFile { what: "CA", path, .. } if *path == missing));
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "junk\n").unwrap();
        let files = TlsFiles {
            ca_file: Some(junk.clone()),
            client_cert: None,
        };
        let e = client_config(&files).unwrap_err();
        assert!(matches!(&e, TlsError::BadPem { what: "CA", .. }), "{e}");
        assert!(e.to_string().contains("junk.pem"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn io_errors_carrying_tls_failures_become_tls_errors() {
        let untrusted = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(matches!(
            classify(Error::from(untrusted)),
            Error::Tls(TlsError::ServerNotTrusted(_))
        ));
        let refused = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired),
        );
        assert!(matches!(
            classify(Error::from(refused)),
            Error::Tls(TlsError::RefusedByServer(_))
        ));
        let reset = Error::from(io::Error::from(io::ErrorKind::ConnectionReset));
        assert!(matches!(classify(reset), Error::Io(_)));
    }
}

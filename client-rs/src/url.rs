//! Connection URLs (protocol.md §5.1):
//! `sluice://[user[:password]@][host][:port][,host[:port]...][/[vhost]][?param=value[&param=value...]]`.
//!
//! Several comma-separated hosts name the nodes of a cluster (or standbys): the client tries
//! them in order when it connects, and round-robin when it reconnects.
//!
//! Every part has a default, so `sluice://` alone means `guest:guest@127.0.0.1:5680`, vhost
//! `/`. The path names the vhost, percent-decoded as RabbitMQ does: `sluice://h/staging` is
//! vhost `staging`, `sluice://h/%2F` (like `sluice://h/` and `sluice://h`) is `/`.
//! `sluices://` is the same over TLS (default port 5681), with the parameters `ca_file`
//! (trust this CA instead of the system's roots), `cert_file` and `key_file` (a client
//! certificate, for mutual TLS).
//!
//! ```
//! use sluice_client::ConnectUrl;
//!
//! let url: ConnectUrl = "sluice://app:s%40cret@mq.internal?heartbeat_ms=10000&name=billing"
//!     .parse()
//!     .unwrap();
//! assert_eq!(url.host(), "mq.internal");
//! assert_eq!(url.port(), 5680);
//! assert_eq!(url.password(), Some("s@cret"));
//! assert_eq!(url.heartbeat_ms(), Some(10_000));
//! assert_eq!(url.name(), Some("billing"));
//! // The password is never displayed.
//! assert_eq!(url.to_string(), "sluice://app:***@mq.internal:5680/?heartbeat_ms=10000&name=billing");
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use thiserror::Error;

use crate::wire::{DEFAULT_PORT, DEFAULT_TLS_PORT};

/// User name used when the URL names none.
pub const DEFAULT_USERNAME: &str = "guest";
/// Password used when the URL names no user.
pub const DEFAULT_PASSWORD: &str = "guest";
/// Host used when the URL names none.
pub const DEFAULT_HOST: &str = "127.0.0.1";
/// Time allowed for the TCP connect plus the handshake when the URL does not say.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;

/// Why a connection URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum UrlError {
    /// The URL has no `scheme://` prefix.
    #[error("missing scheme: expected sluice://...")]
    MissingScheme,
    /// The scheme is neither `sluice` nor `sluices`.
    #[error("unsupported scheme {0:?}: expected sluice:// or sluices://")]
    UnsupportedScheme(String),
    /// A TLS parameter (`ca_file`, `cert_file`, `key_file`) in a `sluice://` URL, which has
    /// no TLS: most likely the `s` of `sluices://` is missing.
    #[error("query parameter {0:?} needs TLS: use sluices://")]
    TlsParameterWithoutTls(String),
    /// Only one of `cert_file` and `key_file` is given; a client certificate needs both.
    #[error("cert_file and key_file go together (a client certificate and its key)")]
    IncompleteClientCertificate,
    /// A `%` escape is not followed by two hex digits, or decodes to invalid UTF-8.
    #[error("bad percent-encoding in {0}")]
    BadEncoding(&'static str),
    /// The host is malformed (e.g. an unclosed `[` of an IPv6 address).
    #[error("invalid host {0:?}")]
    InvalidHost(String),
    /// The port is not a number from 1 to 65535.
    #[error("invalid port {0:?}")]
    InvalidPort(String),
    /// The path holds more than one segment (a vhost named with `/` is written `%2F`).
    #[error("unexpected path {0:?}: the path is one vhost name (write / inside it as %2F)")]
    UnexpectedPath(String),
    /// A `#fragment` is not allowed.
    #[error("unexpected fragment in URL")]
    UnexpectedFragment,
    /// A query parameter this client does not know (usually a typo).
    #[error("unknown query parameter {0:?}")]
    UnknownParameter(String),
    /// A query parameter appears twice.
    #[error("query parameter {0:?} given twice")]
    DuplicateParameter(String),
    /// A query parameter's value does not parse.
    #[error("invalid value {value:?} for query parameter {name:?}")]
    InvalidParameter {
        /// The parameter.
        name: String,
        /// Its value, decoded.
        value: String,
    },
}

/// One `host:port` of a URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl HostPort {
    /// A host and its port.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        HostPort {
            host: host.into(),
            port,
        }
    }

    /// `host:port` for `TcpStream::connect` (IPv6 hosts in brackets).
    pub fn socket_addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Parses `host:port` (`[v6]:port`), as a broker names a leader (protocol.md §11,
    /// `NOT_LEADER`); the port is required.
    pub fn parse(s: &str) -> Result<Self, UrlError> {
        match split_host_port(s)? {
            (host, Some(port)) if !host.is_empty() => Ok(HostPort::new(host, parse_port(port)?)),
            _ => Err(UrlError::InvalidHost(s.to_owned())),
        }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.socket_addr())
    }
}

/// A parsed `sluice://` URL. Parts the URL leaves out are `None` (or the default, for host
/// and port) so that [`ClientBuilder`](crate::ClientBuilder) settings can fill them.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectUrl {
    /// `sluices://`: TLS from the first byte.
    tls: bool,
    /// At least one; the first is the one tried first.
    hosts: Vec<HostPort>,
    username: Option<String>,
    password: Option<String>,
    vhost: Option<String>,
    heartbeat_ms: Option<u32>,
    max_frame_len: Option<u32>,
    connect_timeout_ms: Option<u64>,
    name: Option<String>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

impl Default for ConnectUrl {
    /// `sluice://guest:guest@127.0.0.1:5680`.
    fn default() -> Self {
        ConnectUrl {
            tls: false,
            hosts: vec![HostPort::new(DEFAULT_HOST, DEFAULT_PORT)],
            username: None,
            password: None,
            vhost: None,
            heartbeat_ms: None,
            max_frame_len: None,
            connect_timeout_ms: None,
            name: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

impl ConnectUrl {
    /// Parses a URL; same as `s.parse()`.
    pub fn parse(s: &str) -> Result<Self, UrlError> {
        let (scheme, rest) = s.split_once("://").ok_or(UrlError::MissingScheme)?;
        let tls = if scheme.eq_ignore_ascii_case("sluices") {
            true
        } else if scheme.eq_ignore_ascii_case("sluice") {
            false
        } else {
            return Err(UrlError::UnsupportedScheme(scheme.to_owned()));
        };
        if rest.contains('#') {
            return Err(UrlError::UnexpectedFragment);
        }
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let vhost = path.strip_prefix('/').unwrap_or(path);
        if vhost.contains('/') {
            return Err(UrlError::UnexpectedPath(path.to_owned()));
        }

        let default_port = if tls { DEFAULT_TLS_PORT } else { DEFAULT_PORT };
        let mut url = ConnectUrl {
            tls,
            ..ConnectUrl::default()
        };
        if !vhost.is_empty() {
            url.vhost = Some(percent_decode(vhost, "vhost")?);
        }
        // The last '@' ends the user info: a stray '@' in a password is tolerated.
        let host_port = match authority.rsplit_once('@') {
            Some((userinfo, host_port)) => {
                let (user, password) = match userinfo.split_once(':') {
                    Some((user, password)) => (user, password),
                    // `user@` alone means an empty password.
                    None => (userinfo, ""),
                };
                url.username = Some(percent_decode(user, "user name")?);
                url.password = Some(percent_decode(password, "password")?);
                host_port
            }
            None => authority,
        };
        url.hosts = parse_hosts(host_port, default_port)?;
        if let Some(query) = query {
            url.parse_query(query)?;
        }
        url.check_tls_parameters()?;
        Ok(url)
    }

    /// TLS parameters only with TLS, and a client certificate only with its key.
    fn check_tls_parameters(&self) -> Result<(), UrlError> {
        let given = [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ];
        if !self.tls {
            if let Some((name, _)) = given.iter().find(|(_, v)| v.is_some()) {
                return Err(UrlError::TlsParameterWithoutTls((*name).to_owned()));
            }
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(UrlError::IncompleteClientCertificate);
        }
        Ok(())
    }

    fn parse_query(&mut self, query: &str) -> Result<(), UrlError> {
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = percent_decode(name, "query parameter name")?;
            let value = percent_decode(value, "query parameter value")?;
            let invalid = || UrlError::InvalidParameter {
                name: name.clone(),
                value: value.clone(),
            };
            let duplicate = match name.as_str() {
                "heartbeat_ms" => set_once(&mut self.heartbeat_ms, value.parse().ok())?,
                "max_frame_len" => set_once(&mut self.max_frame_len, value.parse().ok())?,
                "connect_timeout_ms" => set_once(
                    &mut self.connect_timeout_ms,
                    value.parse().ok().filter(|&ms| ms > 0),
                )?,
                "name" => set_once(&mut self.name, Some(value.clone()))?,
                "ca_file" => set_once(&mut self.ca_file, file_path(&value))?,
                "cert_file" => set_once(&mut self.cert_file, file_path(&value))?,
                "key_file" => set_once(&mut self.key_file, file_path(&value))?,
                _ => return Err(UrlError::UnknownParameter(name)),
            }
            .ok_or_else(invalid)?;
            if duplicate {
                return Err(UrlError::DuplicateParameter(name));
            }
        }
        Ok(())
    }

    /// Whether the URL asks for TLS (`sluices://`).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// `ca_file` parameter (`sluices://` only): a PEM file of the CA certificates the server's
    /// certificate must be signed by, instead of the system's roots.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// `cert_file` parameter (`sluices://` only): the client's certificate chain (PEM), for
    /// servers that require mutual TLS.
    pub fn cert_file(&self) -> Option<&Path> {
        self.cert_file.as_deref()
    }

    /// `key_file` parameter (`sluices://` only): the private key of `cert_file` (PEM).
    pub fn key_file(&self) -> Option<&Path> {
        self.key_file.as_deref()
    }

    /// The first host's name or address (IPv6 without brackets). Default `127.0.0.1`.
    pub fn host(&self) -> &str {
        &self.first().host
    }

    /// The first host's TCP port. Default 5680 (`sluices://`: 5681).
    pub fn port(&self) -> u16 {
        self.first().port
    }

    /// Every host of the URL, in the order given (at least one).
    pub fn hosts(&self) -> &[HostPort] {
        &self.hosts
    }

    fn first(&self) -> &HostPort {
        // `parse` and `Default` always give at least one host.
        &self.hosts[0]
    }

    /// User name, when the URL gives one (decoded).
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// Password, when the URL gives a user (decoded; empty for `user@`).
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The vhost the path names (decoded), when it names one; the server's default is `/`.
    pub fn vhost(&self) -> Option<&str> {
        self.vhost.as_deref()
    }

    /// `heartbeat_ms` parameter: the heartbeat interval to propose (0 = server's choice).
    pub fn heartbeat_ms(&self) -> Option<u32> {
        self.heartbeat_ms
    }

    /// `max_frame_len` parameter: the frame limit to propose (0 = server's choice).
    pub fn max_frame_len(&self) -> Option<u32> {
        self.max_frame_len
    }

    /// `connect_timeout_ms` parameter: time for TCP connect plus handshake.
    pub fn connect_timeout_ms(&self) -> Option<u64> {
        self.connect_timeout_ms
    }

    /// `name` parameter: sent as the `connection_name` client property.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The first host's `host:port` for `TcpStream::connect` (IPv6 hosts in brackets).
    pub fn socket_addr(&self) -> String {
        self.first().socket_addr()
    }
}

impl FromStr for ConnectUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ConnectUrl::parse(s)
    }
}

impl fmt::Display for ConnectUrl {
    /// The URL with the password replaced by `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.tls { "sluices://" } else { "sluice://" })?;
        if let Some(user) = &self.username {
            write!(f, "{}:***@", percent_encode(user))?;
        }
        let hosts: Vec<String> = self.hosts.iter().map(HostPort::socket_addr).collect();
        write!(f, "{}/", hosts.join(","))?;
        if let Some(vhost) = &self.vhost {
            f.write_str(&percent_encode(vhost))?;
        }
        let mut sep = '?';
        let mut param = |f: &mut fmt::Formatter<'_>, name: &str, value: &dyn fmt::Display| {
            let result = write!(f, "{sep}{name}={value}");
            sep = '&';
            result
        };
        if let Some(v) = self.heartbeat_ms {
            param(f, "heartbeat_ms", &v)?;
        }
        if let Some(v) = self.max_frame_len {
            param(f, "max_frame_len", &v)?;
        }
        if let Some(v) = self.connect_timeout_ms {
            param(f, "connect_timeout_ms", &v)?;
        }
        if let Some(v) = &self.name {
            param(f, "name", &percent_encode(v))?;
        }
        for (name, path) in [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ] {
            if let Some(path) = path {
                param(f, name, &percent_encode(&path.to_string_lossy()))?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for ConnectUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnectUrl({self})")
    }
}

/// Stores `value` in an empty slot. `None` means the value did not parse; `Some(true)` means
/// the slot was already filled.
fn set_once<T>(slot: &mut Option<T>, value: Option<T>) -> Result<Option<bool>, UrlError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let duplicate = slot.is_some();
    *slot = Some(value);
    Ok(Some(duplicate))
}

/// A file parameter's value: any non-empty path.
fn file_path(value: &str) -> Option<PathBuf> {
    (!value.is_empty()).then(|| PathBuf::from(value))
}

/// Parses the comma-separated `host[:port]` list of the authority. A lone empty host is the
/// default one (`sluice://`); an empty entry in a list is refused.
fn parse_hosts(list: &str, default_port: u16) -> Result<Vec<HostPort>, UrlError> {
    let several = list.contains(',');
    list.split(',')
        .map(|entry| {
            if several && entry.is_empty() {
                return Err(UrlError::InvalidHost(list.to_owned()));
            }
            let (host, port) = split_host_port(entry)?;
            let host = if host.is_empty() {
                DEFAULT_HOST.to_owned()
            } else {
                percent_decode(host, "host")?
            };
            let port = match port {
                Some(port) => parse_port(port)?,
                None => default_port,
            };
            Ok(HostPort::new(host, port))
        })
        .collect()
}

/// A port from 1 to 65535.
fn parse_port(port: &str) -> Result<u16, UrlError> {
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(UrlError::InvalidPort(port.to_owned())),
        Ok(port) => Ok(port),
    }
}

/// Splits `host[:port]` or `[v6]:port`. The host may be empty.
fn split_host_port(s: &str) -> Result<(&str, Option<&str>), UrlError> {
    if let Some(bracketed) = s.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| UrlError::InvalidHost(s.to_owned()))?;
        if host.is_empty() {
            return Err(UrlError::InvalidHost(s.to_owned()));
        }
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some("") => Ok((host, None)),
                Some(port) => Ok((host, Some(port))),
                None => Err(UrlError::InvalidHost(s.to_owned())),
            },
        };
    }
    match s.split_once(':') {
        Some((host, port)) if port.contains(':') => Err(UrlError::InvalidHost(format!(
            "{host}:{port} (put IPv6 addresses in brackets)"
        ))),
        Some((host, "")) => Ok((host, None)),
        Some((host, port)) => Ok((host, Some(port))),
        None => Ok((s, None)),
    }
}

/// Decodes RFC 3986 percent escapes; the result must be UTF-8.
fn percent_decode(s: &str, what: &'static str) -> Result<String, UrlError> {
    if !s.contains('%') {
        return Ok(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(UrlError::BadEncoding(what))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UrlError::BadEncoding(what))
}

/// Escapes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ConnectUrl {
        ConnectUrl::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn every_part_has_a_default() {
        for s in [
            "sluice://",
            "sluice:///",
            "SLUICE://",
            "sluice://:",
            "sluice://?",
        ] {
            let url = parse(s);
            assert_eq!(url, ConnectUrl::default(), "{s}");
            assert_eq!(url.host(), "127.0.0.1");
            assert_eq!(url.port(), 5680);
            assert_eq!(url.username(), None);
            assert_eq!(url.password(), None);
            assert_eq!(url.socket_addr(), "127.0.0.1:5680");
        }
    }

    #[test]
    fn full_url() {
        let url = parse(
            "sluice://app:s%40cret@mq.internal:7000/?heartbeat_ms=10000&max_frame_len=131072\
             &connect_timeout_ms=2500&name=billing%20v2",
        );
        assert_eq!(url.username(), Some("app"));
        assert_eq!(url.password(), Some("s@cret"));
        assert_eq!(url.host(), "mq.internal");
        assert_eq!(url.port(), 7000);
        assert_eq!(url.heartbeat_ms(), Some(10_000));
        assert_eq!(url.max_frame_len(), Some(131_072));
        assert_eq!(url.connect_timeout_ms(), Some(2500));
        assert_eq!(url.name(), Some("billing v2"));
        assert_eq!(
            url.to_string(),
            "sluice://app:***@mq.internal:7000/?heartbeat_ms=10000&max_frame_len=131072\
             &connect_timeout_ms=2500&name=billing%20v2"
        );
        assert!(!format!("{url:?}").contains("cret"));
        // What Display prints parses back to the same URL, password aside.
        let again = parse(&url.to_string());
        assert_eq!(again.password(), Some("***"));
        assert_eq!(again.name(), url.name());
    }

    #[test]
    fn user_info_forms() {
        let url = parse("sluice://bob@host");
        assert_eq!((url.username(), url.password()), (Some("bob"), Some("")));
        let url = parse("sluice://bob:@host");
        assert_eq!((url.username(), url.password()), (Some("bob"), Some("")));
        let url = parse("sluice://:pw@host");
        assert_eq!((url.username(), url.password()), (Some(""), Some("pw")));
        // A password may contain ':' and, tolerated, a raw '@'.
        let url = parse("sluice://u:a:b@c@host:1");
        assert_eq!(url.password(), Some("a:b@c"));
        assert_eq!((url.host(), url.port()), ("host", 1));
        let url = parse("sluice://%E2%9C%93:%25@h");
        assert_eq!((url.username(), url.password()), (Some("✓"), Some("%")));
        // Only user info: host and port default.
        let url = parse("sluice://u:p@");
        assert_eq!(url.socket_addr(), "127.0.0.1:5680");
    }

    #[test]
    fn hosts_and_ports() {
        assert_eq!(
            parse("sluice://example.com").socket_addr(),
            "example.com:5680"
        );
        assert_eq!(parse("sluice://:9999").socket_addr(), "127.0.0.1:9999");
        assert_eq!(parse("sluice://10.0.0.1:1").socket_addr(), "10.0.0.1:1");
        let v6 = parse("sluice://[::1]:5690/");
        assert_eq!(v6.host(), "::1");
        assert_eq!(v6.socket_addr(), "[::1]:5690");
        assert_eq!(parse("sluice://[fe80::1]").port(), 5680);
    }

    #[test]
    fn sluices_means_tls_on_port_5681_with_its_files() {
        let url = parse("sluices://");
        assert!(url.is_tls());
        assert_eq!(url.socket_addr(), "127.0.0.1:5681");
        assert_eq!(url.ca_file(), None);
        assert!(!parse("sluice://").is_tls());
        let url = parse(
            "SLUICES://app:pw@mq.internal:7443/?ca_file=/etc/ca%20dir/ca.pem\
             &cert_file=client.pem&key_file=client.key",
        );
        assert!(url.is_tls());
        assert_eq!(url.socket_addr(), "mq.internal:7443");
        assert_eq!(url.ca_file(), Some(Path::new("/etc/ca dir/ca.pem")));
        assert_eq!(url.cert_file(), Some(Path::new("client.pem")));
        assert_eq!(url.key_file(), Some(Path::new("client.key")));
        assert_eq!(
            url.to_string(),
            "sluices://app:***@mq.internal:7443/?ca_file=%2Fetc%2Fca%20dir%2Fca.pem\
             &cert_file=client.pem&key_file=client.key"
        );
        // What Display prints parses back to the same URL, password aside.
        assert_eq!(parse(&url.to_string()).ca_file(), url.ca_file());
    }

    #[test]
    fn tls_parameters_without_tls_or_half_a_client_certificate_are_refused() {
        let cases: &[(&str, UrlError)] = &[
            (
                "sluice://h?ca_file=ca.pem",
                UrlError::TlsParameterWithoutTls("ca_file".into()),
            ),
            (
                "sluice://h?cert_file=c.pem&key_file=k.pem",
                UrlError::TlsParameterWithoutTls("cert_file".into()),
            ),
            (
                "sluices://h?cert_file=c.pem",
                UrlError::IncompleteClientCertificate,
            ),
            (
                "sluices://h?key_file=k.pem",
                UrlError::IncompleteClientCertificate,
            ),
            (
                "sluices://h?ca_file=",
                UrlError::InvalidParameter {
                    name: "ca_file".into(),
                    value: String::new(),
                },
            ),
            (
                "sluices://h?ca_file=a&ca_file=b",
                UrlError::DuplicateParameter("ca_file".into()),
            ),
        ];
        for (s, expected) in cases {
            assert_eq!(ConnectUrl::parse(s).as_ref(), Err(expected), "{s}");
        }
        assert_eq!(
            ConnectUrl::parse("sluice://h?ca_file=ca.pem")
                .unwrap_err()
                .to_string(),
            "query parameter \"ca_file\" needs TLS: use sluices://"
        );
    }

    #[test]
    fn malformed_urls_are_refused() {
        let cases: &[(&str, UrlError)] = &[
            ("localhost:5680", UrlError::MissingScheme),
            ("amqp://h", UrlError::UnsupportedScheme("amqp".into())),
            ("sluice://h:0", UrlError::InvalidPort("0".into())),
            ("sluice://h:70000", UrlError::InvalidPort("70000".into())),
            ("sluice://h:x", UrlError::InvalidPort("x".into())),
            ("sluice://h/a/b", UrlError::UnexpectedPath("/a/b".into())),
            ("sluice://h//", UrlError::UnexpectedPath("//".into())),
            ("sluice://h/%zz", UrlError::BadEncoding("vhost")),
            ("sluice://h#frag", UrlError::UnexpectedFragment),
            ("sluice://[::1", UrlError::InvalidHost("[::1".into())),
            ("sluice://[::1]x", UrlError::InvalidHost("[::1]x".into())),
            ("sluice://u:%zz@h", UrlError::BadEncoding("password")),
            ("sluice://%ff@h", UrlError::BadEncoding("user name")),
            ("sluice://u:%4@h", UrlError::BadEncoding("password")),
            (
                "sluice://h?heartbeat=1",
                UrlError::UnknownParameter("heartbeat".into()),
            ),
            (
                "sluice://h?name=a&name=b",
                UrlError::DuplicateParameter("name".into()),
            ),
            (
                "sluice://h?heartbeat_ms=-1",
                UrlError::InvalidParameter {
                    name: "heartbeat_ms".into(),
                    value: "-1".into(),
                },
            ),
            (
                "sluice://h?connect_timeout_ms=0",
                UrlError::InvalidParameter {
                    name: "connect_timeout_ms".into(),
                    value: "0".into(),
                },
            ),
        ];
        for (s, expected) in cases {
            assert_eq!(ConnectUrl::parse(s).as_ref(), Err(expected), "{s}");
        }
        assert!(matches!(
            ConnectUrl::parse("sluice://::1"),
            Err(UrlError::InvalidHost(_))
        ));
    }

    #[test]
    fn several_hosts_are_tried_in_the_order_given() {
        let url = parse("sluice://u:p@h1:5680,h2,[::1]:7000/prod?name=n");
        assert_eq!(
            url.hosts(),
            [
                HostPort::new("h1", 5680),
                HostPort::new("h2", 5680),
                HostPort::new("::1", 7000)
            ]
        );
        assert_eq!((url.host(), url.port()), ("h1", 5680));
        assert_eq!(url.vhost(), Some("prod"));
        assert_eq!(
            url.to_string(),
            "sluice://u:***@h1:5680,h2:5680,[::1]:7000/prod?name=n"
        );
        assert_eq!(parse(&url.to_string()).hosts(), url.hosts());
        let tls = parse("sluices://a,b:1");
        assert_eq!(
            tls.hosts(),
            [HostPort::new("a", 5681), HostPort::new("b", 1)]
        );
        for bad in ["sluice://a,,b", "sluice://a,", "sluice://,a"] {
            assert!(
                matches!(ConnectUrl::parse(bad), Err(UrlError::InvalidHost(_))),
                "{bad}"
            );
        }
        assert_eq!(
            ConnectUrl::parse("sluice://a,b:0"),
            Err(UrlError::InvalidPort("0".into()))
        );
    }

    #[test]
    fn leader_addresses_parse_as_host_and_port() {
        assert_eq!(
            HostPort::parse("127.0.0.1:5690"),
            Ok(HostPort::new("127.0.0.1", 5690))
        );
        assert_eq!(HostPort::parse("[::1]:1"), Ok(HostPort::new("::1", 1)));
        for bad in ["", "host", ":1", "h:0", "h:x"] {
            assert!(HostPort::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_path_names_the_vhost() {
        for s in ["sluice://h", "sluice://h/", "sluice://h/?name=x"] {
            assert_eq!(parse(s).vhost(), None, "{s}");
        }
        assert_eq!(parse("sluice://h/staging").vhost(), Some("staging"));
        assert_eq!(parse("sluice://h/%2F").vhost(), Some("/"));
        assert_eq!(parse("sluice://h/%2fprod").vhost(), Some("/prod"));
        assert_eq!(parse("sluice://u:p@h:1/a%20b?name=n").vhost(), Some("a b"));
        // Display writes it back encoded, and it parses to the same vhost.
        let url = parse("sluice://h/%2Fteam%2Fa");
        assert_eq!(url.to_string(), "sluice://h:5680/%2Fteam%2Fa");
        assert_eq!(parse(&url.to_string()).vhost(), Some("/team/a"));
    }

    #[test]
    fn query_parameters_are_decoded() {
        let url = parse("sluice://h?name=a%26b%3Dc&heartbeat_ms=0");
        assert_eq!(url.name(), Some("a&b=c"));
        assert_eq!(url.heartbeat_ms(), Some(0));
        // Empty pairs are skipped; a '+' is kept literally (RFC 3986, not form encoding).
        let url = parse("sluice://h?&name=a+b&");
        assert_eq!(url.name(), Some("a+b"));
    }
}

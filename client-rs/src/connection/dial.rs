//! Opening a connection: TCP (and TLS for `sluices://`), then the handshake. Kept with its
//! settings in a [`Dialer`], so the connection task can dial again after a lost connection
//! and the client can dial a replicated queue's leader with the same credentials, vhost and
//! TLS settings.

use std::fmt;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::{handshake, HandshakeParams};
use crate::error::{Error, Result};
use crate::tls::{self, TlsFiles};
use crate::url::HostPort;
use crate::wire::Welcome;

/// The read half of a connection, whatever the transport.
pub(crate) type DynRead = Box<dyn AsyncRead + Unpin + Send>;
/// The write half of a connection, whatever the transport.
pub(crate) type DynWrite = Box<dyn AsyncWrite + Unpin + Send>;

/// A connected, handshaken stream.
pub(crate) struct Link {
    pub(crate) reader: DynRead,
    pub(crate) writer: DynWrite,
    /// Whatever was read past the `Welcome` frame.
    pub(crate) leftover: BytesMut,
    pub(crate) welcome: Welcome,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("welcome", &self.welcome)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// Runs the handshake over an already connected stream.
    pub(crate) async fn over<S>(mut stream: S, params: &HandshakeParams) -> Result<Link>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (welcome, leftover) = handshake(&mut stream, params).await?;
        let (reader, writer) = tokio::io::split(stream);
        Ok(Link {
            reader: Box::new(reader),
            writer: Box::new(writer),
            leftover,
            welcome,
        })
    }
}

/// Everything needed to open a connection to one of a URL's hosts.
#[derive(Clone)]
pub(crate) struct Dialer {
    /// The hosts, in the URL's order (at least one).
    pub(crate) hosts: Vec<HostPort>,
    /// `Some` for `sluices://`.
    pub(crate) tls: Option<TlsFiles>,
    pub(crate) params: HandshakeParams,
    /// For the TCP connect plus the handshake, per host.
    pub(crate) connect_timeout: Duration,
}

impl fmt::Debug for Dialer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dialer")
            .field("hosts", &self.hosts)
            .field("tls", &self.tls)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl Dialer {
    /// The same settings for another host (a replicated queue's leader).
    pub(crate) fn for_host(&self, host: HostPort) -> Dialer {
        Dialer {
            hosts: vec![host],
            ..self.clone()
        }
    }

    /// Connects to `host` within the connect timeout (or `limit`, if shorter).
    pub(crate) async fn dial(&self, host: &HostPort, limit: Option<Duration>) -> Result<Link> {
        let timeout = limit.map_or(self.connect_timeout, |l| l.min(self.connect_timeout));
        tokio::time::timeout(timeout, self.dial_unbounded(host))
            .await
            .map_err(|_| Error::Timeout {
                operation: "connect",
                after: timeout,
            })?
    }

    async fn dial_unbounded(&self, host: &HostPort) -> Result<Link> {
        let stream = TcpStream::connect(host.socket_addr()).await?;
        // Frames are batched by the connection task; Nagle would only add latency.
        stream.set_nodelay(true)?;
        match &self.tls {
            None => Link::over(stream, &self.params).await,
            Some(files) => {
                let stream = tls::connect(stream, &host.host, files).await?;
                Link::over(stream, &self.params)
                    .await
                    .map_err(tls::classify)
            }
        }
    }

    /// Tries each host once, in order; returns the first link made and its host's index, or
    /// the last host's error.
    pub(crate) async fn dial_first(&self) -> Result<(Link, usize)> {
        let mut last = None;
        for (index, host) in self.hosts.iter().enumerate() {
            match self.dial(host, None).await {
                Ok(link) => return Ok((link, index)),
                Err(error) => {
                    if self.hosts.len() > 1 {
                        tracing::warn!(%host, "cannot connect: {error}");
                    }
                    last = Some(error);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Protocol("a URL without hosts".into())))
    }
}

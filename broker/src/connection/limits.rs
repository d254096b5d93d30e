//! The limits a connection meets (issue #12), each a small check with its typed error for the
//! client and a rate-limited log line for the operator:
//!
//! - at accept: sockets in their handshake ([`Admission`]), next to the connection limit
//!   that the server's semaphore keeps; past either the socket gets `Close(CONNECTION_LIMIT)`
//!   before its `Hello` is read;
//! - at login: connections per user ([`UserCounts`], kept by the connection registry);
//! - per request: consumers per connection ([`check_consumers`]).
//!
//! Unsettled publishes are not refused but waited for: the session stops reading a connection
//! at `max_unsettled_publish_bytes` (`session.rs`), and prefetch is capped at `max_prefetch`
//! ([`crate::limits::Limits::effective_prefetch`]).

use std::collections::HashMap;
use std::sync::Arc;

use sluice_client::wire::ErrorCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::RequestError;
use crate::limits::LogGate;
use crate::queue::ConnId;

/// Counts what the accept loop admits: connections (held until they end) and sockets still
/// in their handshake (held until `Welcome` or the refusal). Shared with the HTTP API, which
/// shows the counts in `GET /api/limits`.
#[derive(Debug)]
pub struct Admission {
    connections: Arc<Semaphore>,
    max_connections: usize,
    handshaking: Arc<Semaphore>,
    max_handshaking: usize,
}

/// What a socket holds from [`Admission::admit`].
#[derive(Debug)]
pub struct Admitted {
    /// Held until the connection ends.
    pub connection: OwnedSemaphorePermit,
    /// Held until the handshake ends, whatever its outcome.
    pub handshake: OwnedSemaphorePermit,
}

/// Which accept-time limit a socket met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmissionLimit {
    /// `max_connections`.
    Connections,
    /// `max_handshaking`.
    Handshaking,
}

impl Admission {
    /// Room for `max_connections` connections, `max_handshaking` of them in their handshake.
    pub fn new(max_connections: usize, max_handshaking: usize) -> Self {
        Self {
            connections: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            handshaking: Arc::new(Semaphore::new(max_handshaking)),
            max_handshaking,
        }
    }

    /// Admits a new socket, or names the limit it meets.
    pub fn admit(&self) -> Result<Admitted, AdmissionLimit> {
        let connection = Arc::clone(&self.connections)
            .try_acquire_owned()
            .map_err(|_| AdmissionLimit::Connections)?;
        let handshake = Arc::clone(&self.handshaking)
            .try_acquire_owned()
            .map_err(|_| AdmissionLimit::Handshaking)?;
        Ok(Admitted {
            connection,
            handshake,
        })
    }

    /// The limit of `which`.
    pub fn max(&self, which: AdmissionLimit) -> usize {
        match which {
            AdmissionLimit::Connections => self.max_connections,
            AdmissionLimit::Handshaking => self.max_handshaking,
        }
    }

    /// Connections held now, those in their handshake included.
    pub fn connections(&self) -> usize {
        self.max_connections - self.connections.available_permits()
    }

    /// Sockets in their handshake now.
    pub fn handshaking(&self) -> usize {
        self.max_handshaking - self.handshaking.available_permits()
    }
}

/// The `Close(CONNECTION_LIMIT)` reason for a socket refused at accept.
pub fn admission_refusal(which: AdmissionLimit, max: usize) -> String {
    match which {
        AdmissionLimit::Connections => {
            format!("the server is at its limit of {max} connections; try again later")
        }
        AdmissionLimit::Handshaking => format!(
            "the server is at its limit of {max} connections in their handshake (max_handshaking); try again later"
        ),
    }
}

/// Connections per user, kept under the registry's lock so that a check and the registration
/// it allows are one step.
#[derive(Debug, Default)]
pub struct UserCounts {
    by_user: HashMap<String, usize>,
}

impl UserCounts {
    /// Counts one more connection of `user` unless it has `max` already.
    pub fn try_add(&mut self, user: &str, max: Option<usize>) -> Result<(), usize> {
        let count = self.by_user.get(user).copied().unwrap_or(0);
        if let Some(max) = max {
            if count >= max {
                return Err(max);
            }
        }
        *self.by_user.entry(user.to_owned()).or_insert(0) += 1;
        Ok(())
    }

    /// Counts one connection of `user` less; users with none are forgotten.
    pub fn remove(&mut self, user: &str) {
        if let Some(count) = self.by_user.get_mut(user) {
            *count -= 1;
            if *count == 0 {
                self.by_user.remove(user);
            }
        }
    }

    /// The most connections any one user has now.
    pub fn highest(&self) -> usize {
        self.by_user.values().copied().max().unwrap_or(0)
    }
}

/// `LIMIT_EXCEEDED` when connection `conn` already has `count` consumers of at most `max`.
pub fn check_consumers(conn: ConnId, count: usize, max: usize) -> Result<(), RequestError> {
    if count < max {
        return Ok(());
    }
    static LOG: LogGate = LogGate::new();
    if let Some(also_refused_since_last_line) = LOG.open() {
        tracing::warn!(
            conn,
            max_consumers_per_connection = max,
            also_refused_since_last_line,
            "consume refused: the connection is at its consumer limit"
        );
    }
    Err(RequestError::new(
        ErrorCode::LimitExceeded,
        format!(
            "this connection is at its limit of {max} consumers (max_consumers_per_connection)"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_counts_connections_and_handshakes_separately() {
        let admission = Admission::new(3, 2);
        let a = admission.admit().unwrap();
        let b = admission.admit().unwrap();
        assert_eq!(admission.admit().unwrap_err(), AdmissionLimit::Handshaking);
        // The refused socket gave its connection permit back.
        assert_eq!((admission.connections(), admission.handshaking()), (2, 2));
        drop(a.handshake);
        let c = admission.admit().unwrap();
        assert_eq!(admission.admit().unwrap_err(), AdmissionLimit::Connections);
        drop((b, c));
        assert_eq!((admission.connections(), admission.handshaking()), (1, 0));
    }

    #[test]
    fn users_are_counted_up_to_their_limit() {
        let mut users = UserCounts::default();
        assert_eq!(users.try_add("app", Some(2)), Ok(()));
        assert_eq!(users.try_add("app", Some(2)), Ok(()));
        assert_eq!(users.try_add("app", Some(2)), Err(2));
        assert_eq!(users.try_add("ops", Some(2)), Ok(()));
        users.remove("app");
        assert_eq!(users.by_user["app"], 1);
        assert_eq!(users.highest(), 1);
        assert_eq!(users.try_add("app", Some(2)), Ok(()));
        assert_eq!(users.try_add("app", None), Ok(()));
        users.remove("ops");
        assert!(!users.by_user.contains_key("ops"));
    }

    #[test]
    fn consumers_are_refused_at_the_limit_with_limit_exceeded() {
        assert!(check_consumers(1, 1, 2).is_ok());
        let e = check_consumers(1, 2, 2).unwrap_err();
        assert_eq!(e.code, ErrorCode::LimitExceeded);
        assert!(e.message.contains("limit of 2 consumers"), "{}", e.message);
    }
}

//! The live client connections, for operators (`GET /api/connections`): who each one is and
//! what it has moved.
//!
//! The server owns the registry and hands it to each connection and to the HTTP API. A
//! connection registers once its handshake succeeded and is removed when its
//! [`Registration`] drops, so the registry holds at most `max_connections` entries. The
//! counters are relaxed atomics that only their connection's tasks write; readers take a
//! snapshot of the list under a lock held for the copy of a few pointers.
//!
//! Operators act on a connection through its entry: [`ConnectionRegistry::close`] and
//! [`ConnectionRegistry::cancel_consumer`] send a [`Control`] to its session over a small
//! bounded channel and wait, bounded, for the session to have done it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sluice_client::wire::{ErrorCode, HeaderValue, Hello};
use tokio::sync::{mpsc, oneshot};

use super::limits::UserCounts;
use crate::error::RequestError;
use crate::queue::ConnId;

/// Operator requests a connection may have waiting for its session; more are refused with
/// `RESOURCE_EXHAUSTED` rather than queued without bound.
pub const CONTROL_CAPACITY: usize = 8;
/// Longest wait for a session to act on an operator's request (one stuck on a full queue
/// mailbox must not hold the operator's request forever).
const CONTROL_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// What a connection closed by an operator is told when the operator gave no reason.
pub const DEFAULT_CLOSE_REASON: &str = "closed by an operator";

/// What an operator asks of a live connection; its session acts on it.
#[derive(Debug)]
pub enum Control {
    /// Send `Close` with `CONNECTION_FORCED` and `reason`, return the deliveries, end.
    Close {
        /// What the client is told.
        reason: String,
        /// Dropped or answered once the `Close` is on its way and the connection's
        /// deliveries are sent back to their queues.
        done: oneshot::Sender<()>,
    },
    /// Stop the consumer tagged `tag` with `CONSUMER_CANCELLED` and return its deliveries.
    CancelConsumer {
        /// The consumer's tag.
        tag: String,
        /// `NOT_FOUND` when the connection has no such consumer.
        done: oneshot::Sender<Result<(), RequestError>>,
    },
}

/// Every live connection, by number.
#[derive(Debug, Default)]
pub struct ConnectionRegistry {
    live: Mutex<Live>,
    /// `max_connections_per_user`; `None` = no limit.
    max_per_user: Option<usize>,
}

/// The live connections, and how many each user has (for `max_connections_per_user`).
#[derive(Debug, Default)]
struct Live {
    by_id: BTreeMap<ConnId, Arc<ConnectionEntry>>,
    users: UserCounts,
}

/// A user already has as many connections as `max_connections_per_user` allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("user '{user}' is at its limit of {max} connections (max_connections_per_user); close one or try again later")]
pub struct UserLimitReached {
    /// The user.
    pub user: String,
    /// Their limit.
    pub max: usize,
}

/// One connection: fixed facts from its handshake, and live counters.
#[derive(Debug)]
pub struct ConnectionEntry {
    /// Its number (`Welcome.connection_id`).
    pub id: ConnId,
    /// The client's address.
    pub peer: Option<SocketAddr>,
    /// The user it authenticated as.
    pub user: String,
    /// The vhost it works in.
    pub vhost: String,
    /// What the client says of itself.
    pub client: ClientIdentity,
    /// When its handshake completed.
    pub connected_at: SystemTime,
    /// What it has moved so far.
    pub stats: ConnectionStats,
    /// Operators' requests to its session.
    control: mpsc::Sender<Control>,
}

/// The `product`, `version` and `connection_name` client properties, when they are text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The client library (`sluice-rs`, ...).
    pub product: Option<String>,
    /// Its version.
    pub version: Option<String>,
    /// The name the application gave the connection.
    pub connection_name: Option<String>,
}

impl ClientIdentity {
    /// Reads the identity from a `Hello`'s client properties.
    pub fn from_hello(hello: &Hello) -> Self {
        let text = |key: &str| {
            hello
                .client_properties
                .iter()
                .find(|(k, _)| k == key)
                .and_then(|(_, v)| match v {
                    HeaderValue::Str(s) => Some(s.clone()),
                    _ => None,
                })
        };
        Self {
            product: text("product"),
            version: text("version"),
            connection_name: text("connection_name"),
        }
    }
}

/// A connection's counters; each is written by one of its tasks only.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Bytes read from the socket (after the handshake).
    pub bytes_in: AtomicU64,
    /// Bytes written to the socket (after the handshake).
    pub bytes_out: AtomicU64,
    /// Frames decoded.
    pub frames_in: AtomicU64,
    /// Frames sent.
    pub frames_out: AtomicU64,
    /// Messages published and not yet confirmed or rejected.
    pub unsettled_publishes: AtomicU64,
    /// Its consumers.
    pub consumers: AtomicU64,
}

impl ConnectionStats {
    /// Adds `n` to `counter` (relaxed: counters order nothing).
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Keeps a connection listed until it drops.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<ConnectionRegistry>,
    entry: Arc<ConnectionEntry>,
}

impl Registration {
    /// The entry, shared with the tasks that update its counters.
    pub fn entry(&self) -> &Arc<ConnectionEntry> {
        &self.entry
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut live = self.registry.lock();
        live.by_id.remove(&self.entry.id);
        live.users.remove(&self.entry.user);
    }
}

impl ConnectionRegistry {
    /// A registry that lets each user have at most `max_per_user` connections.
    pub fn new(max_per_user: Option<usize>) -> Self {
        Self {
            live: Mutex::default(),
            max_per_user,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most connections any one user has now.
    pub fn most_connections_of_a_user(&self) -> usize {
        self.lock().users.highest()
    }

    /// Lists a connection whose handshake just succeeded; operators' requests for it arrive
    /// on `control` (made with [`CONTROL_CAPACITY`]). Refused when the user is at its
    /// connection limit.
    pub fn register(
        self: &Arc<Self>,
        id: ConnId,
        peer: Option<SocketAddr>,
        user: String,
        vhost: String,
        client: ClientIdentity,
        control: mpsc::Sender<Control>,
    ) -> Result<Registration, UserLimitReached> {
        let mut live = self.lock();
        if let Err(max) = live.users.try_add(&user, self.max_per_user) {
            return Err(UserLimitReached { user, max });
        }
        let entry = Arc::new(ConnectionEntry {
            id,
            peer,
            user,
            vhost,
            client,
            connected_at: SystemTime::now(),
            stats: ConnectionStats::default(),
            control,
        });
        live.by_id.insert(id, Arc::clone(&entry));
        Ok(Registration {
            registry: Arc::clone(self),
            entry,
        })
    }

    /// How many connections are live.
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    /// The live connections with an id above `after` (all with `None`), by id.
    pub fn snapshot_after(&self, after: Option<ConnId>) -> Vec<Arc<ConnectionEntry>> {
        let live = self.lock();
        match after {
            Some(id) => live
                .by_id
                .range((std::ops::Bound::Excluded(id), std::ops::Bound::Unbounded))
                .map(|(_, e)| Arc::clone(e))
                .collect(),
            None => live.by_id.values().cloned().collect(),
        }
    }

    /// The user connection `id` logged in as; `NOT_FOUND` if there is no such connection.
    pub fn user_of(&self, id: ConnId) -> Result<String, RequestError> {
        self.entry(id).map(|e| e.user.clone())
    }

    fn entry(&self, id: ConnId) -> Result<Arc<ConnectionEntry>, RequestError> {
        self.lock()
            .by_id
            .get(&id)
            .cloned()
            .ok_or_else(|| no_connection(id))
    }

    /// Closes connection `id` for an operator: its client gets `Close` with
    /// `CONNECTION_FORCED` and `reason` ([`DEFAULT_CLOSE_REASON`] if empty). Returns once the
    /// session has sent the `Close` and handed its deliveries back to their queues (a request
    /// to a queue made after this sees them there); `NOT_FOUND` if no such connection is
    /// live.
    pub async fn close(&self, id: ConnId, reason: &str) -> Result<(), RequestError> {
        let entry = self.entry(id)?;
        let reason = if reason.is_empty() {
            DEFAULT_CLOSE_REASON
        } else {
            reason
        };
        let (done, answer) = oneshot::channel();
        let control = Control::Close {
            reason: reason.to_owned(),
            done,
        };
        // A session that ended before it took the request (it is still listed while its last
        // frames are written) is gone as far as operators are concerned.
        if !send_control(&entry, control)? {
            return Err(no_connection(id));
        }
        match tokio::time::timeout(CONTROL_ANSWER_TIMEOUT, answer).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(no_connection(id)),
            Err(_) => Err(no_answer(id)),
        }
    }

    /// Closes every connection of `user` (deleted, or removed from the users file), each as
    /// [`close`](Self::close) does; returns how many were closed.
    pub async fn close_user(&self, user: &str, reason: &str) -> usize {
        self.close_all(|e| e.user == user, reason).await
    }

    /// Closes every connection working in `vhost` (deleted); returns how many were closed.
    pub async fn close_vhost(&self, vhost: &str, reason: &str) -> usize {
        self.close_all(|e| e.vhost == vhost, reason).await
    }

    /// Closes every connection `which` picks, each as [`close`](Self::close) does.
    async fn close_all(&self, which: impl Fn(&ConnectionEntry) -> bool, reason: &str) -> usize {
        let picked: Vec<ConnId> = self
            .snapshot_after(None)
            .iter()
            .filter(|e| which(e))
            .map(|e| e.id)
            .collect();
        let mut closed = 0;
        for id in picked {
            match self.close(id, reason).await {
                Ok(()) => closed += 1,
                // Gone by itself meanwhile: nothing to do.
                Err(e) if e.code == ErrorCode::NotFound => {}
                Err(e) => tracing::warn!(conn = id, error = %e.message, reason,
                    "could not close a connection"),
            }
        }
        closed
    }

    /// Cancels the consumer `tag` of connection `id` for an operator: its client gets
    /// `ConsumerCancelled` with `CONSUMER_CANCELLED`. `NOT_FOUND` for an unknown connection
    /// or tag.
    pub async fn cancel_consumer(&self, id: ConnId, tag: &str) -> Result<(), RequestError> {
        let entry = self.entry(id)?;
        let (done, answer) = oneshot::channel();
        let control = Control::CancelConsumer {
            tag: tag.to_owned(),
            done,
        };
        if !send_control(&entry, control)? {
            return Err(no_connection(id));
        }
        match tokio::time::timeout(CONTROL_ANSWER_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(no_connection(id)),
            Err(_) => Err(no_answer(id)),
        }
    }
}

/// Hands `control` to the entry's session; false when the session has already ended.
fn send_control(entry: &ConnectionEntry, control: Control) -> Result<bool, RequestError> {
    match entry.control.try_send(control) {
        Ok(()) => Ok(true),
        Err(mpsc::error::TrySendError::Closed(_)) => Ok(false),
        Err(mpsc::error::TrySendError::Full(_)) => Err(RequestError::new(
            ErrorCode::ResourceExhausted,
            format!(
                "connection {} already has {CONTROL_CAPACITY} operator requests waiting; try again",
                entry.id
            ),
        )),
    }
}

fn no_connection(id: ConnId) -> RequestError {
    RequestError::new(ErrorCode::NotFound, format!("no connection {id}"))
}

fn no_answer(id: ConnId) -> RequestError {
    RequestError::internal(format!(
        "connection {id} did not act on the request within {} s",
        CONTROL_ANSWER_TIMEOUT.as_secs()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_listed_while_its_registration_lives() {
        let registry = Arc::new(ConnectionRegistry::default());
        let control = || mpsc::channel(CONTROL_CAPACITY).0;
        let a = registry
            .register(
                1,
                None,
                "guest".into(),
                "/".into(),
                ClientIdentity::default(),
                control(),
            )
            .unwrap();
        {
            let b = registry
                .register(
                    2,
                    None,
                    "app".into(),
                    "/".into(),
                    ClientIdentity::default(),
                    control(),
                )
                .unwrap();
            ConnectionStats::add(&b.entry().stats.frames_in, 3);
            let ids: Vec<ConnId> = registry.snapshot_after(None).iter().map(|e| e.id).collect();
            assert_eq!(ids, [1, 2]);
            assert_eq!(
                registry.snapshot_after(None)[1]
                    .stats
                    .frames_in
                    .load(Ordering::Relaxed),
                3
            );
        }
        assert_eq!(registry.len(), 1);
        drop(a);
        assert_eq!(registry.len(), 0);
    }

    #[test]
    fn a_user_at_its_connection_limit_is_refused_and_others_are_not() {
        let registry = Arc::new(ConnectionRegistry::new(Some(1)));
        let control = || mpsc::channel(CONTROL_CAPACITY).0;
        let register = |id, user: &str| {
            registry.register(
                id,
                None,
                user.into(),
                "/".into(),
                ClientIdentity::default(),
                control(),
            )
        };
        let first = register(1, "app").unwrap();
        let refused = register(2, "app").unwrap_err();
        assert_eq!(refused.max, 1);
        assert!(refused
            .to_string()
            .contains("user 'app' is at its limit of 1 connections"));
        let other = register(3, "ops").unwrap();
        assert_eq!(registry.len(), 2);
        assert_eq!(registry.most_connections_of_a_user(), 1);
        drop(first);
        let again = register(4, "app").unwrap();
        drop((other, again));
        assert_eq!(registry.len(), 0);
    }

    #[test]
    fn listings_continue_after_the_last_id_seen() {
        let registry = Arc::new(ConnectionRegistry::default());
        let _live: Vec<Registration> = [3, 5, 9]
            .into_iter()
            .map(|id| {
                let control = mpsc::channel(CONTROL_CAPACITY).0;
                registry
                    .register(
                        id,
                        None,
                        "u".into(),
                        "/".into(),
                        ClientIdentity::default(),
                        control,
                    )
                    .unwrap()
            })
            .collect();
        let ids = |after| -> Vec<ConnId> {
            registry
                .snapshot_after(after)
                .iter()
                .map(|e| e.id)
                .collect()
        };
        assert_eq!(ids(None), [3, 5, 9]);
        assert_eq!(ids(Some(3)), [5, 9]);
        assert_eq!(ids(Some(4)), [5, 9]);
        assert_eq!(ids(Some(9)), Vec::<ConnId>::new());
        assert_eq!(ids(Some(u64::MAX)), Vec::<ConnId>::new());
    }

    #[tokio::test]
    async fn operators_reach_a_session_through_its_entry() {
        let registry = Arc::new(ConnectionRegistry::default());
        let (tx, mut rx) = mpsc::channel(CONTROL_CAPACITY);
        let _reg = registry
            .register(
                4,
                None,
                "u".into(),
                "/".into(),
                ClientIdentity::default(),
                tx,
            )
            .unwrap();
        let session = tokio::spawn(async move {
            while let Some(control) = rx.recv().await {
                match control {
                    Control::Close { reason, done } => {
                        assert_eq!(reason, DEFAULT_CLOSE_REASON);
                        let _ = done.send(());
                    }
                    Control::CancelConsumer { tag, done } => {
                        let result = if tag == "w" {
                            Ok(())
                        } else {
                            Err(RequestError::new(ErrorCode::NotFound, "no such tag"))
                        };
                        let _ = done.send(result);
                    }
                }
            }
        });
        registry.close(4, "").await.unwrap();
        registry.cancel_consumer(4, "w").await.unwrap();
        let missing = registry.cancel_consumer(4, "x").await.unwrap_err();
        assert_eq!(missing.code, ErrorCode::NotFound);
        assert_eq!(
            registry.close(5, "r").await.unwrap_err().code,
            ErrorCode::NotFound
        );
        drop(_reg);
        session.await.unwrap();
    }

    #[test]
    fn the_client_identity_is_read_from_text_properties_only() {
        let hello = Hello {
            min_version: 2,
            max_version: 2,
            username: "u".into(),
            password: "p".into(),
            heartbeat_ms: 0,
            max_frame_len: 0,
            client_properties: vec![
                ("product".into(), HeaderValue::from("sluice-rs")),
                ("version".into(), HeaderValue::Int(3)),
                ("connection_name".into(), HeaderValue::from("billing")),
            ],
        };
        assert_eq!(
            ClientIdentity::from_hello(&hello),
            ClientIdentity {
                product: Some("sluice-rs".into()),
                version: None,
                connection_name: Some("billing".into()),
            }
        );
    }
}

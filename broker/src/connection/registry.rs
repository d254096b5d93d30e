//! The live client connections, for operators (`GET /api/connections`): who each one is and
//! what it has moved.
//!
//! The server owns the registry and hands it to each connection and to the HTTP API. A
//! connection registers once its handshake succeeded and is removed when its
//! [`Registration`] drops, so the registry holds at most `max_connections` entries. The
//! counters are relaxed atomics that only their connection's tasks write; readers take a
//! snapshot of the list under a lock held for the copy of a few pointers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sluice_client::wire::{HeaderValue, Hello};

use crate::queue::ConnId;

/// Every live connection, by number.
#[derive(Debug, Default)]
pub struct ConnectionRegistry {
    live: Mutex<BTreeMap<ConnId, Arc<ConnectionEntry>>>,
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
    /// What the client says of itself.
    pub client: ClientIdentity,
    /// When its handshake completed.
    pub connected_at: SystemTime,
    /// What it has moved so far.
    pub stats: ConnectionStats,
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
        self.registry.lock().remove(&self.entry.id);
    }
}

impl ConnectionRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ConnId, Arc<ConnectionEntry>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lists a connection whose handshake just succeeded.
    pub fn register(
        self: &Arc<Self>,
        id: ConnId,
        peer: Option<SocketAddr>,
        user: String,
        client: ClientIdentity,
    ) -> Registration {
        let entry = Arc::new(ConnectionEntry {
            id,
            peer,
            user,
            client,
            connected_at: SystemTime::now(),
            stats: ConnectionStats::default(),
        });
        self.lock().insert(id, Arc::clone(&entry));
        Registration {
            registry: Arc::clone(self),
            entry,
        }
    }

    /// The live connections, by number.
    pub fn snapshot(&self) -> Vec<Arc<ConnectionEntry>> {
        self.lock().values().cloned().collect()
    }

    /// How many connections are live.
    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_listed_while_its_registration_lives() {
        let registry = Arc::new(ConnectionRegistry::default());
        let a = registry.register(1, None, "guest".into(), ClientIdentity::default());
        {
            let b = registry.register(2, None, "app".into(), ClientIdentity::default());
            ConnectionStats::add(&b.entry().stats.frames_in, 3);
            let ids: Vec<ConnId> = registry.snapshot().iter().map(|e| e.id).collect();
            assert_eq!(ids, [1, 2]);
            assert_eq!(
                registry.snapshot()[1]
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
    fn the_client_identity_is_read_from_text_properties_only() {
        let hello = Hello {
            min_version: 1,
            max_version: 1,
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

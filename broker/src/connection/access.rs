//! What one session may do, and where its names live: the logged-in [`Principal`], its
//! vhost's [`Namespace`], the vhost's limits, and the decisions of publishing per exchange.
//!
//! Every request names queues and exchanges in the client's terms; the session asks this
//! door for the permission (protocol.md §5.8) and the internal name in one step, and turns
//! the names in its errors back into the client's. A refusal is `ACCESS_REFUSED` naming the
//! missing permission, logged at most [`REFUSAL_LOGS_PER_SECOND`] times a second per
//! connection, so a client that insists cannot flood the log.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use sluice_client::wire::ErrorCode;

use crate::auth::{AccessRefused, Permission, Principal, ResourceKind, Tag, VhostLimits};
use crate::error::RequestError;
use crate::publish::ExchangeDoor;
use crate::routing::Namespace;

/// Most refusals logged per connection and second; the rest are counted in the next line.
pub(crate) const REFUSAL_LOGS_PER_SECOND: u32 = 10;
/// Most exchanges whose publish decision a session remembers; past it the memory starts over
/// (a publisher cycling through that many exchanges pays a regex match per new name).
const MAX_CACHED_EXCHANGES: usize = 1024;

/// May a message go to an exchange: its internal name, or the refusal.
type Decision = Result<Box<str>, RequestError>;

/// A session's access: who, in which vhost, with which limits.
pub(super) struct Access {
    principal: Principal,
    namespace: Namespace,
    limits: VhostLimits,
    /// Publish decisions by the exchange's name as the client wrote it. A [`Principal`] is
    /// a snapshot, so they never go stale.
    publish: HashMap<Box<str>, Decision>,
    /// The last exchange published to and its decision: most publishers use one exchange.
    last: Option<(Box<str>, Decision)>,
    refusal_log: RefusalLog,
    conn: u64,
}

impl Access {
    pub(super) fn new(conn: u64, principal: Principal, limits: VhostLimits) -> Self {
        let namespace = Namespace::of_vhost(principal.vhost.as_str());
        Self {
            principal,
            namespace,
            limits,
            publish: HashMap::new(),
            last: None,
            refusal_log: RefusalLog::default(),
            conn,
        }
    }

    pub(super) fn principal(&self) -> &Principal {
        &self.principal
    }

    pub(super) fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    pub(super) fn limits(&self) -> &VhostLimits {
        &self.limits
    }

    /// The internal name of the client's `name` once the principal holds `permission` on it.
    pub(super) fn grant<'a>(
        &mut self,
        permission: Permission,
        kind: ResourceKind,
        name: &'a str,
    ) -> Result<Cow<'a, str>, RequestError> {
        let internal = self.namespace.qualify(name)?;
        self.check(permission, kind, name)?;
        Ok(internal)
    }

    /// `Ok` when the principal holds `permission` on the resource; the logged refusal if not.
    pub(super) fn check(
        &mut self,
        permission: Permission,
        kind: ResourceKind,
        name: &str,
    ) -> Result<(), RequestError> {
        self.principal
            .check(permission, kind, name)
            .map_err(|refused| self.refused(refused))
    }

    /// `Ok` when the principal holds at least one of the three permissions on the resource
    /// (a passive declare or an inspection only looks); else the refusal naming `configure`.
    pub(super) fn check_any(&mut self, kind: ResourceKind, name: &str) -> Result<(), RequestError> {
        let allowed = [Permission::Configure, Permission::Write, Permission::Read]
            .into_iter()
            .any(|p| self.principal.permissions.allows(p, kind, name));
        if allowed {
            return Ok(());
        }
        self.check(Permission::Configure, kind, name)
    }

    /// `Ok` when the principal carries `tag` (an administrator carries them all);
    /// `NOT_ALLOWED` naming it if not.
    pub(super) fn check_tag(&mut self, tag: Tag, what: &str) -> Result<(), RequestError> {
        if self.principal.has_tag(tag) {
            return Ok(());
        }
        let message = format!(
            "user '{}' lacks the tag {} needed to {what}",
            self.principal.user,
            tag.as_str()
        );
        self.log_refusal(&message);
        // A missing tag is NOT_ALLOWED, as on the HTTP API (`http/auth.rs`).
        Err(RequestError::new(ErrorCode::NotAllowed, message))
    }

    /// Whether the principal may publish to `exchange`, and its internal name: remembered.
    fn decide(&mut self, exchange: &str) -> Decision {
        if let Some(decision) = self.publish.get(exchange) {
            return decision.clone();
        }
        if self.publish.len() >= MAX_CACHED_EXCHANGES {
            self.publish.clear();
        }
        let decision = self
            .namespace
            .qualify(exchange)
            .map_err(RequestError::from)
            .and_then(|internal| {
                self.principal
                    .check(Permission::Write, ResourceKind::Exchange, exchange)
                    .map_err(RequestError::from)?;
                Ok(Box::from(internal.as_ref()))
            });
        self.publish.insert(Box::from(exchange), decision.clone());
        decision
    }

    /// An error as this vhost's client sees it: internal names become its own.
    pub(super) fn localize(&self, mut e: RequestError) -> RequestError {
        e.message = self.namespace.localize(e.message);
        e
    }

    fn refused(&mut self, refused: AccessRefused) -> RequestError {
        let e = RequestError::from(refused);
        self.log_refusal(&e.message);
        e
    }

    fn log_refusal(&mut self, message: &str) {
        if let Some(suppressed) = self.refusal_log.admit(Instant::now()) {
            tracing::warn!(
                conn = self.conn,
                user = self.principal.user,
                vhost = %self.principal.vhost,
                suppressed_before = suppressed,
                "access refused: {message}"
            );
        }
    }
}

impl ExchangeDoor for Access {
    /// On the publish path: one string comparison when the exchange is the previous
    /// message's (the common case), one hash lookup otherwise, a regex match only the first
    /// time a name is seen.
    fn open(&mut self, exchange: &str) -> Result<&str, RequestError> {
        let hit = self
            .last
            .as_ref()
            .is_some_and(|(name, _)| **name == *exchange);
        if !hit {
            let decision = self.decide(exchange);
            self.last = Some((Box::from(exchange), decision));
        }
        let (_, decision) = self.last.as_ref().expect("just set");
        if let Err(e) = decision {
            // Each message is refused, and logged (within the rate limit).
            let e = e.clone();
            if e.code == ErrorCode::AccessRefused {
                self.log_refusal(&e.message);
            }
            return Err(e);
        }
        let (_, decision) = self.last.as_ref().expect("just set");
        Ok(decision.as_deref().unwrap_or_default())
    }

    fn max_message_len(&self) -> Option<(u64, &str)> {
        self.limits
            .max_message_bytes
            .map(|max| (max, self.namespace.vhost()))
    }
}

/// At most [`REFUSAL_LOGS_PER_SECOND`] log lines per second; counts what it held back.
#[derive(Debug)]
struct RefusalLog {
    window_start: Instant,
    in_window: u32,
    suppressed: u64,
}

impl Default for RefusalLog {
    fn default() -> Self {
        Self {
            window_start: Instant::now(),
            in_window: 0,
            suppressed: 0,
        }
    }
}

impl RefusalLog {
    /// `Some(lines held back since the last one)` when a line may be written now.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.in_window = 0;
        }
        if self.in_window >= REFUSAL_LOGS_PER_SECOND {
            self.suppressed += 1;
            return None;
        }
        self.in_window += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{PermissionSet, PermissionSpec, VhostName};

    fn access(vhost: &str, write: &str) -> Access {
        let permissions = PermissionSet::compile(PermissionSpec {
            configure: String::new(),
            write: write.into(),
            read: String::new(),
        })
        .unwrap();
        let principal = Principal {
            user: "app".into(),
            tags: Default::default(),
            vhost: VhostName::new(vhost).unwrap(),
            permissions,
        };
        Access::new(1, principal, VhostLimits::default())
    }

    #[test]
    fn publishing_opens_the_vhost_s_exchange_or_refuses_it_every_time() {
        let mut a = access("v", "^orders$");
        assert_eq!(a.open("orders").unwrap(), "\0v\0orders");
        assert_eq!(a.open("orders").unwrap(), "\0v\0orders");
        for _ in 0..2 {
            let e = a.open("audit").unwrap_err();
            assert_eq!(e.code, ErrorCode::AccessRefused);
            assert!(
                e.message.contains("write permission on exchange 'audit'"),
                "{e}"
            );
        }
        // Back and forth between two names: each decision is remembered.
        assert_eq!(a.open("orders").unwrap(), "\0v\0orders");
        assert_eq!(a.publish.len(), 2);
        let e = a.open("\0w\0orders").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        let mut root = access("/", ".*");
        assert_eq!(root.open("").unwrap(), "");
    }

    #[test]
    fn the_refusal_log_admits_ten_a_second_and_counts_the_rest() {
        let mut log = RefusalLog::default();
        let t0 = log.window_start;
        for _ in 0..REFUSAL_LOGS_PER_SECOND {
            assert_eq!(log.admit(t0), Some(0));
        }
        assert_eq!(log.admit(t0), None);
        assert_eq!(log.admit(t0), None);
        assert_eq!(log.admit(t0 + Duration::from_secs(1)), Some(2));
    }
}

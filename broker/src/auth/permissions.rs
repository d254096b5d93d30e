//! Permissions: per user and vhost, a regular expression for each of `configure`, `write` and
//! `read`, matched against resource names as RabbitMQ does (unanchored: `^` and `$` are the
//! user's to write; an empty expression matches nothing; the default exchange is named
//! `amq.default`).
//!
//! Which request needs which permission is listed in protocol.md §5.8: declaring or deleting
//! a resource is `configure` on it; publishing is `write` on the exchange; binding is `write`
//! on the destination and `read` on the source exchange; consuming, getting, purging and
//! browsing are `read` on the queue.

use std::fmt;

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::VhostName;

/// One of the three permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Create and delete resources, change their settings.
    Configure,
    /// Publish to an exchange; bind to a queue or exchange as destination.
    Write,
    /// Consume, get, purge, browse a queue; bind from an exchange as source.
    Read,
}

impl Permission {
    /// `configure`, `write` or `read`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Permission::Configure => "configure",
            Permission::Write => "write",
            Permission::Read => "read",
        }
    }
}

/// What kind of resource a permission is checked on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// A queue.
    Queue,
    /// An exchange (the default exchange is `amq.default`).
    Exchange,
}

impl ResourceKind {
    /// `queue` or `exchange`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Queue => "queue",
            ResourceKind::Exchange => "exchange",
        }
    }
}

/// The three expressions as written in the users file and on the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionSpec {
    /// Names the user may declare, delete and change.
    pub configure: String,
    /// Names the user may publish and bind to.
    pub write: String,
    /// Names the user may consume from and bind from.
    pub read: String,
}

impl PermissionSpec {
    /// Everything: `.*` for all three.
    pub fn full() -> Self {
        Self {
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
        }
    }
}

/// A [`PermissionSpec`] with its expressions compiled, ready to check.
#[derive(Debug, Clone)]
pub struct PermissionSet {
    spec: PermissionSpec,
    configure: Option<Regex>,
    write: Option<Regex>,
    read: Option<Regex>,
}

/// A permission expression that does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {permission} expression '{expression}': {why}")]
pub struct InvalidPermission {
    /// `configure`, `write` or `read`.
    pub permission: &'static str,
    /// The expression.
    pub expression: String,
    /// The regex compiler's message.
    pub why: String,
}

impl PermissionSet {
    /// Compiles `spec`; an expression longer than 4 KiB or that does not compile is an error.
    pub fn compile(spec: PermissionSpec) -> Result<Self, InvalidPermission> {
        let configure = compile_one(Permission::Configure, &spec.configure)?;
        let write = compile_one(Permission::Write, &spec.write)?;
        let read = compile_one(Permission::Read, &spec.read)?;
        Ok(Self {
            spec,
            configure,
            write,
            read,
        })
    }

    /// Everything allowed.
    pub fn full() -> Self {
        Self::compile(PermissionSpec::full()).expect(".* compiles")
    }

    /// The expressions as given.
    pub fn spec(&self) -> &PermissionSpec {
        &self.spec
    }

    /// Whether `permission` covers the resource named `name`.
    pub fn allows(&self, permission: Permission, kind: ResourceKind, name: &str) -> bool {
        let name = match (kind, name) {
            (ResourceKind::Exchange, "") => "amq.default",
            _ => name,
        };
        let regex = match permission {
            Permission::Configure => &self.configure,
            Permission::Write => &self.write,
            Permission::Read => &self.read,
        };
        regex.as_ref().is_some_and(|r| r.is_match(name))
    }
}

/// The longest permission expression, in bytes: bounds the compile time of a hostile one.
const MAX_EXPRESSION_LEN: usize = 4096;

fn compile_one(permission: Permission, expr: &str) -> Result<Option<Regex>, InvalidPermission> {
    let invalid = |why: String| InvalidPermission {
        permission: permission.as_str(),
        expression: expr.to_owned(),
        why,
    };
    if expr.is_empty() {
        return Ok(None);
    }
    if expr.len() > MAX_EXPRESSION_LEN {
        return Err(invalid("longer than 4096 bytes".into()));
    }
    regex::RegexBuilder::new(expr)
        .size_limit(1 << 20)
        .build()
        .map(Some)
        .map_err(|e| invalid(e.to_string()))
}

/// A request refused for a missing permission: `ACCESS_REFUSED`, naming what is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRefused {
    /// The user.
    pub user: String,
    /// The vhost.
    pub vhost: VhostName,
    /// The permission missing.
    pub permission: Permission,
    /// The kind of resource.
    pub kind: ResourceKind,
    /// The resource's name.
    pub name: String,
}

impl fmt::Display for AccessRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match (self.kind, self.name.as_str()) {
            (ResourceKind::Exchange, "") => "amq.default",
            (_, n) => n,
        };
        write!(
            f,
            "user '{}' lacks {} permission on {} '{}' in vhost '{}'",
            self.user,
            self.permission.as_str(),
            self.kind.as_str(),
            name,
            self.vhost
        )
    }
}

impl std::error::Error for AccessRefused {}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(configure: &str, write: &str, read: &str) -> PermissionSet {
        PermissionSet::compile(PermissionSpec {
            configure: configure.into(),
            write: write.into(),
            read: read.into(),
        })
        .unwrap()
    }

    #[test]
    fn expressions_are_unanchored_and_empty_matches_nothing() {
        let p = set("^app\\.", "orders", "");
        assert!(p.allows(Permission::Configure, ResourceKind::Queue, "app.jobs"));
        assert!(!p.allows(Permission::Configure, ResourceKind::Queue, "x.app.jobs"));
        assert!(p.allows(Permission::Write, ResourceKind::Exchange, "new-orders-eu"));
        assert!(!p.allows(Permission::Read, ResourceKind::Queue, ""));
        assert!(!p.allows(Permission::Read, ResourceKind::Queue, "anything"));
    }

    #[test]
    fn the_default_exchange_is_checked_as_amq_default() {
        let p = set("", "^amq\\.default$", "");
        assert!(p.allows(Permission::Write, ResourceKind::Exchange, ""));
        assert!(!p.allows(Permission::Write, ResourceKind::Queue, ""));
    }

    #[test]
    fn a_bad_or_huge_expression_is_refused() {
        let bad = PermissionSet::compile(PermissionSpec {
            configure: "(".into(),
            ..PermissionSpec::full()
        });
        assert_eq!(bad.unwrap_err().permission, "configure");
        let huge = PermissionSet::compile(PermissionSpec {
            read: "a".repeat(5000),
            ..PermissionSpec::full()
        });
        assert!(huge.is_err());
    }

    #[test]
    fn a_refusal_names_user_permission_resource_and_vhost() {
        let refused = AccessRefused {
            user: "app".into(),
            vhost: VhostName::default_vhost(),
            permission: Permission::Write,
            kind: ResourceKind::Exchange,
            name: String::new(),
        };
        assert_eq!(
            refused.to_string(),
            "user 'app' lacks write permission on exchange 'amq.default' in vhost '/'"
        );
    }
}

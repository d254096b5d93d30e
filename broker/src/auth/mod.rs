//! Who may do what (RabbitMQ's model): vhosts as namespaces of queues and exchanges, users
//! with tags, and per user and vhost three regular expressions over resource names
//! (`configure`, `write`, `read`).
//!
//! This module knows nothing of networking: the connection handshake and the HTTP API ask it
//! for a [`Principal`] and call [`Principal::check`] before every request.
//!
//! # Layout
//! - `vhost.rs`, `permissions.rs`: the vocabulary (vhost names, permission expressions).
//! - `password.rs`: argon2id hashes, and the cache of recently verified passwords.
//! - `users_file.rs`: the users file (TOML): vhosts, users, tags, permissions; validated,
//!   written atomically.
//! - `throttle.rs`: failed logins slowed per source address.
//! - `store.rs`: the [`AccessStore`] a running broker logs users in with, and changes and
//!   reloads the users file through.

mod password;
mod permissions;
mod store;
mod throttle;
mod users_file;
mod vhost;

pub use password::{InvalidPasswordHash, PasswordHash};
pub use permissions::{
    AccessRefused, InvalidPermission, Permission, PermissionSet, PermissionSpec, ResourceKind,
};
pub use store::{is_loopback, AccessStore, AuthenticatedUser, ChangeError, LoginRefused, Reloaded};
pub use throttle::{LoginThrottle, ThrottleConfig};
pub use users_file::{
    check_user_name, parse_tags, Access, InvalidAccess, User, UsersFileError, VhostLimits,
    DEFAULT_FILE_NAME,
};
pub use vhost::{InvalidVhostName, VhostName};

use std::collections::BTreeSet;

/// What a user may do on the HTTP API, beyond its permissions (RabbitMQ's user tags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tag {
    /// Everything: users, vhosts, permissions, other users' connections.
    Administrator,
    /// Read every listing and metric, change nothing it has no permission for.
    Monitoring,
    /// The HTTP API and dashboard, limited to the vhosts it has permissions in.
    Management,
}

impl Tag {
    /// The tag as written in the users file and on the HTTP API.
    pub const fn as_str(self) -> &'static str {
        match self {
            Tag::Administrator => "administrator",
            Tag::Monitoring => "monitoring",
            Tag::Management => "management",
        }
    }

    /// Parses a tag name; `None` for one this broker does not know.
    pub fn parse(name: &str) -> Option<Self> {
        [Tag::Administrator, Tag::Monitoring, Tag::Management]
            .into_iter()
            .find(|t| t.as_str() == name)
    }
}

/// A logged-in user inside one vhost, as a session sees it: a snapshot taken at login, so a
/// check costs no lock. Permission changes apply to connections opened after them.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user name.
    pub user: String,
    /// The user's tags.
    pub tags: BTreeSet<Tag>,
    /// The vhost the connection works in.
    pub vhost: VhostName,
    /// The user's permissions in that vhost.
    pub permissions: PermissionSet,
}

impl Principal {
    /// `Ok` when the user holds `permission` on the resource `kind` named `name` in its
    /// vhost; otherwise the refusal, naming the permission missing.
    pub fn check(
        &self,
        permission: Permission,
        kind: ResourceKind,
        name: &str,
    ) -> Result<(), AccessRefused> {
        if self.permissions.allows(permission, kind, name) {
            return Ok(());
        }
        Err(AccessRefused {
            user: self.user.clone(),
            vhost: self.vhost.clone(),
            permission,
            kind,
            name: name.to_owned(),
        })
    }

    /// Whether the user carries `tag` (an administrator counts as every tag).
    pub fn has_tag(&self, tag: Tag) -> bool {
        self.tags.contains(&tag) || self.tags.contains(&Tag::Administrator)
    }
}

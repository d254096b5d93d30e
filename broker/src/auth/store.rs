//! The access store: the users file as the running broker holds it, logins checked against
//! it, and changes written through to it.
//!
//! Logins read an immutable snapshot ([`Access`] behind an `Arc`, replaced whole), so a
//! change never waits for a login and a login never sees half a change. Changes are
//! serialized by one writer lock and follow one order: apply to a copy, write the file
//! atomically, then publish the copy. A change refused or not written leaves nothing behind.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Semaphore;

use super::password::{PasswordHash, VerifiedCache};
use super::throttle::{LoginThrottle, ThrottleConfig};
use super::users_file::{Access, InvalidAccess, UsersFileError};
use super::{PermissionSet, Principal, Tag, VhostName};

/// Argon2 verifications running at once (each takes 19 MiB and a core for tens of ms); more
/// wait their turn instead of taking every blocking thread and a lot of memory.
const MAX_CONCURRENT_VERIFICATIONS: usize = 4;

/// A user who proved its password, with everything it may do: what the HTTP API puts in a
/// request's extensions, and what a connection's [`Principal`] is cut from.
#[derive(Debug, Clone)]
pub struct AuthenticatedUser {
    /// The user name.
    pub name: String,
    /// Its tags.
    pub tags: BTreeSet<Tag>,
    /// Its permissions per vhost; a vhost not listed is closed to it.
    pub permissions: BTreeMap<VhostName, PermissionSet>,
}

impl AuthenticatedUser {
    /// Whether the user carries `tag` (an administrator counts as every tag).
    pub fn has_tag(&self, tag: Tag) -> bool {
        self.tags.contains(&tag) || self.tags.contains(&Tag::Administrator)
    }

    /// The user's permissions in `vhost`, if it has any there.
    pub fn permissions_in(&self, vhost: &VhostName) -> Option<&PermissionSet> {
        self.permissions.get(vhost)
    }

    /// The user working in `vhost`, if it has permissions there.
    pub fn principal(&self, vhost: &VhostName) -> Option<Principal> {
        self.permissions.get(vhost).map(|p| Principal {
            user: self.name.clone(),
            tags: self.tags.clone(),
            vhost: vhost.clone(),
            permissions: p.clone(),
        })
    }
}

/// Why a login was refused: `ACCESS_REFUSED` on the wire, 401 on the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginRefused {
    /// No such user, or not its password (which of the two is not told).
    #[error("unknown user or wrong password")]
    BadCredentials,
    /// The source address failed too often lately; nothing was checked.
    #[error("too many failed logins from {address}; try again later")]
    Throttled {
        /// The address (or IPv6 /64) as throttled.
        address: String,
    },
    /// The user may log in from loopback addresses only (`loopback_users`).
    #[error("user '{user}' may only connect from a loopback address (loopback_users)")]
    LoopbackOnly {
        /// The user.
        user: String,
    },
    /// The vhost does not exist.
    #[error("access to vhost '{vhost}' refused for user '{user}': no such vhost")]
    NoVhost {
        /// The user.
        user: String,
        /// The vhost asked for.
        vhost: String,
    },
    /// The user has no permissions in the vhost.
    #[error("access to vhost '{vhost}' refused for user '{user}': no permissions there")]
    NoPermissions {
        /// The user.
        user: String,
        /// The vhost asked for.
        vhost: String,
    },
}

/// A change to the users file that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The change is not allowed (unknown user or vhost, bad name, bad expression...).
    #[error(transparent)]
    Invalid(#[from] InvalidAccess),
    /// The file was edited since the broker read it: writing now would lose that edit.
    #[error("the users file {0} was changed on disk since the broker read it; reload it first (kill -HUP the broker)")]
    ChangedOnDisk(PathBuf),
    /// The file could not be written; nothing changed.
    #[error(transparent)]
    File(#[from] UsersFileError),
}

/// What a reload found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Users now in the file.
    pub users: usize,
    /// Vhosts now in the file.
    pub vhosts: usize,
    /// Users that were there before and are gone now.
    pub removed_users: Vec<String>,
}

/// The users file of a running broker.
#[derive(Debug)]
pub struct AccessStore {
    path: PathBuf,
    current: RwLock<Arc<Access>>,
    /// Held for a whole change; holds the file's text as last read or written.
    writer: Mutex<String>,
    loopback_users: BTreeSet<String>,
    throttle: LoginThrottle,
    verifications: Semaphore,
    verified: VerifiedCache,
}

impl AccessStore {
    /// Opens the users file at `path`, creating the initial one (vhost `/`, user `guest`) if
    /// there is none. `loopback_users` may log in from loopback addresses only.
    pub fn open(path: &Path, loopback_users: BTreeSet<String>) -> Result<Self, UsersFileError> {
        let (access, created) = Access::load_or_create(path)?;
        if created {
            tracing::info!(path = %path.display(),
                "users file created: vhost '/', user 'guest' (administrator, loopback only unless loopback_users says otherwise)");
        }
        let text = read_text(path)?;
        Ok(Self {
            path: path.to_owned(),
            current: RwLock::new(Arc::new(access)),
            writer: Mutex::new(text),
            loopback_users,
            throttle: LoginThrottle::new(ThrottleConfig::default()),
            verifications: Semaphore::new(MAX_CONCURRENT_VERIFICATIONS),
            verified: VerifiedCache::default(),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current users, vhosts and permissions.
    pub fn snapshot(&self) -> Arc<Access> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether the vhost exists.
    pub fn has_vhost(&self, vhost: &VhostName) -> bool {
        self.snapshot().has_vhost(vhost)
    }

    /// The login throttle (shared by the wire protocol and HTTP basic auth).
    pub fn throttle(&self) -> &LoginThrottle {
        &self.throttle
    }

    /// Checks `user`'s password, from `peer`: throttled per source address, argon2 on a
    /// blocking thread, the same cost for an unknown user as for a wrong password.
    pub async fn authenticate(
        &self,
        user: &str,
        password: &str,
        peer: IpAddr,
    ) -> Result<AuthenticatedUser, LoginRefused> {
        // Before the password is looked at: answering this only for the right password would
        // tell a remote guesser when they found it.
        if self.loopback_users.contains(user) && !is_loopback(peer) {
            return Err(LoginRefused::LoopbackOnly {
                user: user.to_owned(),
            });
        }
        let attempt = self
            .throttle
            .admit(peer)
            .await
            .map_err(|t| LoginRefused::Throttled {
                address: t.source.to_string(),
            })?;
        let access = self.snapshot();
        let found = access.user(user);
        let hash = found.map_or_else(
            || PasswordHash::dummy().clone(),
            |u| u.password_hash.clone(),
        );
        let right = match found {
            Some(_) if self.verified.contains(user, &hash, password) => true,
            _ => self.verify(&hash, password).await && found.is_some(),
        };
        let Some(found) = found.filter(|_| right) else {
            if let Some(summary) = attempt.failed() {
                tracing::warn!(source = %summary.source, user, failures_since_last_line = summary.failures,
                    "login failed: unknown user or wrong password");
            }
            return Err(LoginRefused::BadCredentials);
        };
        attempt.succeeded();
        self.verified.insert(user, &hash, password);
        Ok(AuthenticatedUser {
            name: found.name.clone(),
            tags: found.tags.clone(),
            permissions: found.permissions.clone(),
        })
    }

    /// A login into `vhost`: [`authenticate`](Self::authenticate), then the vhost must exist
    /// and the user must have permissions there.
    pub async fn login(
        &self,
        user: &str,
        password: &str,
        vhost: &VhostName,
        peer: IpAddr,
    ) -> Result<Principal, LoginRefused> {
        let who = self.authenticate(user, password, peer).await?;
        if !self.has_vhost(vhost) {
            return Err(LoginRefused::NoVhost {
                user: user.to_owned(),
                vhost: vhost.to_string(),
            });
        }
        who.principal(vhost)
            .ok_or_else(|| LoginRefused::NoPermissions {
                user: user.to_owned(),
                vhost: vhost.to_string(),
            })
    }

    async fn verify(&self, hash: &PasswordHash, password: &str) -> bool {
        let Ok(_turn) = self.verifications.acquire().await else {
            return false;
        };
        let hash = hash.clone();
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || hash.verify(&password))
            .await
            .unwrap_or(false)
    }

    /// Applies `change` to a copy of the users, writes the file, then makes the copy current.
    /// Blocking (file writes, fsync): call it off the async threads.
    pub fn change<T>(
        &self,
        change: impl FnOnce(&mut Access) -> Result<T, InvalidAccess>,
    ) -> Result<T, ChangeError> {
        let mut known_text = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let on_disk = read_text(&self.path)?;
        if on_disk != *known_text {
            return Err(ChangeError::ChangedOnDisk(self.path.clone()));
        }
        let mut next = (*self.snapshot()).clone();
        let result = change(&mut next)?;
        next.save(&self.path)?;
        *known_text = next.to_toml();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        Ok(result)
    }

    /// Reads the file again (SIGHUP). A file that does not load leaves everything as it was.
    pub fn reload(&self) -> Result<Reloaded, UsersFileError> {
        let mut known_text = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let text = read_text(&self.path)?;
        let next = Access::parse(&self.path, &text)?;
        let before = self.snapshot();
        let removed_users = before
            .users()
            .keys()
            .filter(|name| next.user(name).is_none())
            .cloned()
            .collect();
        let reloaded = Reloaded {
            users: next.users().len(),
            vhosts: next.vhosts().len(),
            removed_users,
        };
        *known_text = text;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        Ok(reloaded)
    }
}

fn read_text(path: &Path) -> Result<String, UsersFileError> {
    std::fs::read_to_string(path).map_err(|source| UsersFileError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Whether `ip` is a loopback address: 127.0.0.0/8, `::1`, or IPv4-mapped loopback.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::auth::PermissionSpec;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn store(dir: &Path) -> AccessStore {
        AccessStore::open(
            &dir.join("users.toml"),
            BTreeSet::from(["guest".to_owned()]),
        )
        .unwrap()
    }

    #[test]
    fn loopback_is_127_slash_8_and_ipv6_loopback_in_both_forms() {
        for yes in ["127.0.0.1", "127.9.8.7", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(ip(yes)), "{yes}");
        }
        for no in [
            "10.0.0.1",
            "198.51.100.7",
            "::ffff:10.0.0.1",
            "2001:db8::1",
            "::",
        ] {
            assert!(!is_loopback(ip(no)), "{no}");
        }
    }

    #[tokio::test]
    async fn guest_logs_in_from_loopback_only_and_into_vhosts_it_may_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let root = VhostName::default_vhost();
        let p = store
            .login("guest", "guest", &root, ip("127.0.0.1"))
            .await
            .unwrap();
        assert_eq!((p.user.as_str(), p.vhost.as_str()), ("guest", "/"));
        assert!(p.has_tag(Tag::Administrator));
        assert_eq!(
            store
                .login("guest", "guest", &root, ip("198.51.100.7"))
                .await
                .unwrap_err(),
            LoginRefused::LoopbackOnly {
                user: "guest".into()
            }
        );
        assert_eq!(
            store
                .login("guest", "nope", &root, ip("127.0.0.1"))
                .await
                .unwrap_err(),
            LoginRefused::BadCredentials
        );
        assert_eq!(
            store
                .login("nobody", "guest", &root, ip("127.0.0.1"))
                .await
                .unwrap_err(),
            LoginRefused::BadCredentials
        );
        let staging = VhostName::new("staging").unwrap();
        let refused = store
            .login("guest", "guest", &staging, ip("127.0.0.1"))
            .await
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "access to vhost 'staging' refused for user 'guest': no such vhost"
        );
        store
            .change(|a| {
                a.put_vhost(&staging, Default::default());
                Ok(())
            })
            .unwrap();
        let refused = store
            .login("guest", "guest", &staging, ip("127.0.0.1"))
            .await
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "access to vhost 'staging' refused for user 'guest': no permissions there"
        );
    }

    #[tokio::test]
    async fn an_unknown_user_costs_what_a_wrong_password_costs() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        // Each try from its own address, so the throttle never adds to the time.
        let next_ip = std::sync::atomic::AtomicU8::new(1);
        let time = |user: &'static str| {
            let store = &store;
            // Loopback addresses: guest may log in from nowhere else.
            let ip = IpAddr::from([
                127,
                0,
                0,
                next_ip.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            ]);
            async move {
                let start = std::time::Instant::now();
                let refused = store.authenticate(user, "wrong", ip).await.unwrap_err();
                assert_eq!(refused, LoginRefused::BadCredentials);
                start.elapsed()
            }
        };
        // The dummy hash is made on first use.
        let _ = time("nobody").await;
        // The fastest of three, so that a busy machine's pauses do not count.
        let mut known = Duration::MAX;
        let mut unknown = Duration::MAX;
        for _ in 0..3 {
            known = known.min(time("guest").await);
            unknown = unknown.min(time("nobody").await);
        }
        let (lo, hi) = if known < unknown {
            (known, unknown)
        } else {
            (unknown, known)
        };
        // Both pay one argon2 verification; neither returns early.
        assert!(lo * 3 >= hi, "known {known:?}, unknown {unknown:?}");
        assert!(lo >= Duration::from_millis(1), "{lo:?}");
    }

    #[tokio::test]
    async fn changes_are_written_and_an_offline_edit_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        store
            .change(|a| a.put_user("app", Some(PasswordHash::new("pw")), None))
            .unwrap();
        store
            .change(|a| {
                a.set_permissions("app", &VhostName::default_vhost(), PermissionSpec::full())
            })
            .unwrap();
        let on_disk = Access::load(store.path()).unwrap();
        assert!(on_disk.user("app").unwrap().password_hash.verify("pw"));
        assert!(store
            .login("app", "pw", &VhostName::default_vhost(), ip("10.1.1.1"))
            .await
            .is_ok());

        // Someone edits the file offline: the broker refuses to write over it until reloaded.
        let mut offline = on_disk.clone();
        offline.delete_user("app").unwrap();
        offline.save(store.path()).unwrap();
        let refused = store.change(|a| a.put_user("x", Some(PasswordHash::new("x")), None));
        assert!(matches!(refused, Err(ChangeError::ChangedOnDisk(_))));
        let reloaded = store.reload().unwrap();
        assert_eq!(reloaded.removed_users, ["app"]);
        assert!(store.snapshot().user("app").is_none());
        assert!(store
            .change(|a| a.put_user("x", Some(PasswordHash::new("x")), None))
            .is_ok());

        // A broken file keeps the state as it was.
        std::fs::write(store.path(), "[[users]\n").unwrap();
        assert!(store.reload().is_err());
        assert!(store.snapshot().user("x").is_some());
    }
}

//! The users file (`<data_dir>/users.toml` unless `--users-file`): vhosts with their limits,
//! users with their argon2id password hashes, tags and per-vhost permissions.
//!
//! ```toml
//! [[vhosts]]
//! name = "/"
//!
//! [[vhosts]]
//! name = "staging"
//! limits = { max_queues = 100 }
//!
//! [[users]]
//! name = "guest"
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$..."
//! tags = ["administrator"]
//! permissions = { "/" = { configure = ".*", write = ".*", read = ".*" } }
//! ```
//!
//! [`Access`] is the file validated: every name, hash, tag and expression checked, every
//! permission naming a vhost that exists. Changes are made on a copy and written whole,
//! atomically (temporary file, fsync, rename, directory fsync), mode 0600. Plain passwords
//! never reach this module.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::password::{InvalidPasswordHash, PasswordHash};
use super::{InvalidVhostName, PermissionSet, PermissionSpec, Tag, VhostName};
use crate::auth::permissions::InvalidPermission;

/// The file's name in the data directory when `--users-file` is not given.
pub const DEFAULT_FILE_NAME: &str = "users.toml";
/// The longest user name, in bytes.
pub const MAX_USER_NAME_LEN: usize = 255;

/// Limits of one vhost, all optional (enforced by the broker, stored here).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VhostLimits {
    /// Most queues in the vhost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queues: Option<u64>,
    /// Most exchanges in the vhost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_exchanges: Option<u64>,
    /// Largest message published in the vhost (meta + body), in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_bytes: Option<u64>,
}

impl VhostLimits {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A vhost as written in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VhostEntry {
    name: String,
    #[serde(default, skip_serializing_if = "VhostLimits::is_empty")]
    limits: VhostLimits,
}

/// A user as written in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: String,
    password_hash: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    permissions: BTreeMap<String, PermissionSpec>,
}

/// The file as TOML.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileContents {
    #[serde(default)]
    vhosts: Vec<VhostEntry>,
    #[serde(default)]
    users: Vec<UserEntry>,
}

/// One user, validated.
#[derive(Debug, Clone)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Its password's hash.
    pub password_hash: PasswordHash,
    /// Its tags.
    pub tags: BTreeSet<Tag>,
    /// What it may do, per vhost; no entry means no access to that vhost.
    pub permissions: BTreeMap<VhostName, PermissionSet>,
}

/// The users file, validated: what the broker checks logins and permissions against.
#[derive(Debug, Clone, Default)]
pub struct Access {
    vhosts: BTreeMap<VhostName, VhostLimits>,
    users: BTreeMap<String, User>,
}

/// Why the users file cannot be used, or a change to it is refused.
#[derive(Debug, thiserror::Error)]
pub enum UsersFileError {
    /// It could not be read or written.
    #[error("users file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It is not TOML of the expected shape.
    #[error("users file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// Its contents do not fit together (or a change would make them not fit).
    #[error("{0}")]
    Invalid(#[from] InvalidAccess),
}

/// Something in the users file, or a change to it, that is not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidAccess {
    /// A vhost name is not valid.
    #[error(transparent)]
    VhostName(#[from] InvalidVhostName),
    /// A user name is empty, too long, holds a control character or a colon.
    #[error("invalid user name '{name}': {why}")]
    UserName {
        /// The name (escaped).
        name: String,
        /// Why.
        why: &'static str,
    },
    /// A password hash is not argon2id.
    #[error("user '{user}': {source}")]
    Hash {
        /// The user.
        user: String,
        /// Why.
        source: InvalidPasswordHash,
    },
    /// A tag this broker does not know.
    #[error("user '{user}': unknown tag '{tag}' (known: administrator, monitoring, management)")]
    Tag {
        /// The user.
        user: String,
        /// The tag.
        tag: String,
    },
    /// A permission expression does not compile.
    #[error("user '{user}', vhost '{vhost}': {source}")]
    Permission {
        /// The user.
        user: String,
        /// The vhost.
        vhost: String,
        /// Why.
        source: InvalidPermission,
    },
    /// A name appears twice.
    #[error("{kind} '{name}' is listed twice")]
    Duplicate {
        /// `vhost` or `user`.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// No such vhost.
    #[error("no vhost '{0}'")]
    NoVhost(String),
    /// No such user.
    #[error("no user '{0}'")]
    NoUser(String),
    /// The user has no permissions in the vhost.
    #[error("user '{user}' has no permissions in vhost '{vhost}'")]
    NoPermissions {
        /// The user.
        user: String,
        /// The vhost.
        vhost: String,
    },
    /// A user that does not exist cannot be made without a password.
    #[error("user '{0}' does not exist; creating it needs a password")]
    PasswordRequired(String),
    /// The vhost or user exists already (for commands that only create).
    #[error("{kind} '{name}' already exists")]
    Exists {
        /// `vhost` or `user`.
        kind: &'static str,
        /// The name.
        name: String,
    },
}

impl InvalidAccess {
    /// Whether the change names something that does not exist (404 on the HTTP API).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            InvalidAccess::NoVhost(_)
                | InvalidAccess::NoUser(_)
                | InvalidAccess::NoPermissions { .. }
        )
    }
}

/// Checks a user name: 1 to 255 bytes, no control characters, no `:` (HTTP basic auth ends
/// the name at the first colon).
pub fn check_user_name(name: &str) -> Result<(), InvalidAccess> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_USER_NAME_LEN {
        Some("it is longer than 255 bytes")
    } else if name.chars().any(char::is_control) {
        Some("it contains a control character")
    } else if name.contains(':') {
        Some("it contains ':'")
    } else {
        None
    };
    match why {
        Some(why) => Err(InvalidAccess::UserName {
            name: name.escape_default().to_string(),
            why,
        }),
        None => Ok(()),
    }
}

/// Parses tag names; an unknown one is an error naming it.
pub fn parse_tags(user: &str, names: &[String]) -> Result<BTreeSet<Tag>, InvalidAccess> {
    names
        .iter()
        .filter(|t| !t.is_empty())
        .map(|t| {
            Tag::parse(t).ok_or_else(|| InvalidAccess::Tag {
                user: user.to_owned(),
                tag: t.clone(),
            })
        })
        .collect()
}

impl Access {
    /// What a broker starts with when there is no users file (as RabbitMQ does): the vhost
    /// `/`, and the user `guest` with password `guest`, tag administrator and every
    /// permission on `/`. `guest` may log in from loopback addresses only, by default.
    pub fn initial() -> Self {
        let root = VhostName::default_vhost();
        let guest = User {
            name: "guest".into(),
            password_hash: PasswordHash::new("guest"),
            tags: BTreeSet::from([Tag::Administrator]),
            permissions: BTreeMap::from([(root.clone(), PermissionSet::full())]),
        };
        Self {
            vhosts: BTreeMap::from([(root, VhostLimits::default())]),
            users: BTreeMap::from([(guest.name.clone(), guest)]),
        }
    }

    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, UsersFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersFileError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Reads `path`, or, when it does not exist, writes [`Access::initial`] there first.
    /// Returns whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), UsersFileError> {
        match std::fs::metadata(path) {
            Ok(_) => Ok((Self::load(path)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let initial = Self::initial();
                initial.save(path)?;
                Ok((initial, true))
            }
            Err(source) => Err(UsersFileError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Validates the text of a users file (`path` names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Self, UsersFileError> {
        let contents: FileContents =
            toml::from_str(text).map_err(|source| UsersFileError::Parse {
                path: path.to_owned(),
                source: Box::new(source),
            })?;
        Ok(Self::from_contents(contents)?)
    }

    fn from_contents(contents: FileContents) -> Result<Self, InvalidAccess> {
        let mut access = Access::default();
        for v in contents.vhosts {
            let name = VhostName::new(&v.name)?;
            if access.vhosts.insert(name, v.limits).is_some() {
                return Err(InvalidAccess::Duplicate {
                    kind: "vhost",
                    name: v.name,
                });
            }
        }
        for u in contents.users {
            check_user_name(&u.name)?;
            let password_hash =
                PasswordHash::parse(&u.password_hash).map_err(|source| InvalidAccess::Hash {
                    user: u.name.clone(),
                    source,
                })?;
            let tags = parse_tags(&u.name, &u.tags)?;
            let mut permissions = BTreeMap::new();
            for (vhost, spec) in u.permissions {
                let name = access.existing_vhost(&vhost)?;
                permissions.insert(name, compile(&u.name, &vhost, spec)?);
            }
            let user = User {
                name: u.name.clone(),
                password_hash,
                tags,
                permissions,
            };
            if access.users.insert(u.name.clone(), user).is_some() {
                return Err(InvalidAccess::Duplicate {
                    kind: "user",
                    name: u.name,
                });
            }
        }
        Ok(access)
    }

    fn to_contents(&self) -> FileContents {
        FileContents {
            vhosts: self
                .vhosts
                .iter()
                .map(|(name, limits)| VhostEntry {
                    name: name.to_string(),
                    limits: limits.clone(),
                })
                .collect(),
            users: self
                .users
                .values()
                .map(|u| UserEntry {
                    name: u.name.clone(),
                    password_hash: u.password_hash.as_str().to_owned(),
                    tags: u.tags.iter().map(|t| t.as_str().to_owned()).collect(),
                    permissions: u
                        .permissions
                        .iter()
                        .map(|(v, p)| (v.to_string(), p.spec().clone()))
                        .collect(),
                })
                .collect(),
        }
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(&self.to_contents()).expect("the users file serializes");
        format!("# Sluice users file: edit with `sluice user|vhost|permissions`, then `kill -HUP` the broker.\n{body}")
    }

    /// Writes the file atomically: a temporary file (mode 0600) beside it, fsync, rename over
    /// it, fsync of the directory. On error the old file is intact.
    pub fn save(&self, path: &Path) -> Result<(), UsersFileError> {
        write_atomically(path, self.to_toml().as_bytes()).map_err(|source| UsersFileError::Io {
            path: path.to_owned(),
            source,
        })
    }

    /// The vhosts with their limits.
    pub fn vhosts(&self) -> &BTreeMap<VhostName, VhostLimits> {
        &self.vhosts
    }

    /// The users by name.
    pub fn users(&self) -> &BTreeMap<String, User> {
        &self.users
    }

    /// The user named `name`.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// Whether the vhost exists.
    pub fn has_vhost(&self, vhost: &VhostName) -> bool {
        self.vhosts.contains_key(vhost)
    }

    fn existing_vhost(&self, name: &str) -> Result<VhostName, InvalidAccess> {
        let name = VhostName::new(name)?;
        if self.vhosts.contains_key(&name) {
            Ok(name)
        } else {
            Err(InvalidAccess::NoVhost(name.to_string()))
        }
    }

    /// Creates or changes a user: its hash and tags (its permissions stay). Returns whether
    /// it was created.
    pub fn put_user(
        &mut self,
        name: &str,
        password_hash: Option<PasswordHash>,
        tags: Option<BTreeSet<Tag>>,
    ) -> Result<bool, InvalidAccess> {
        check_user_name(name)?;
        if let Some(user) = self.users.get_mut(name) {
            if let Some(hash) = password_hash {
                user.password_hash = hash;
            }
            if let Some(tags) = tags {
                user.tags = tags;
            }
            return Ok(false);
        }
        let Some(password_hash) = password_hash else {
            return Err(InvalidAccess::PasswordRequired(name.to_owned()));
        };
        self.users.insert(
            name.to_owned(),
            User {
                name: name.to_owned(),
                password_hash,
                tags: tags.unwrap_or_default(),
                permissions: BTreeMap::new(),
            },
        );
        Ok(true)
    }

    /// Deletes a user.
    pub fn delete_user(&mut self, name: &str) -> Result<User, InvalidAccess> {
        self.users
            .remove(name)
            .ok_or_else(|| InvalidAccess::NoUser(name.to_owned()))
    }

    /// Creates a vhost or changes its limits. Returns whether it was created.
    pub fn put_vhost(&mut self, name: &VhostName, limits: VhostLimits) -> bool {
        self.vhosts.insert(name.clone(), limits).is_none()
    }

    /// Deletes a vhost and every permission on it.
    pub fn delete_vhost(&mut self, name: &VhostName) -> Result<(), InvalidAccess> {
        if self.vhosts.remove(name).is_none() {
            return Err(InvalidAccess::NoVhost(name.to_string()));
        }
        for user in self.users.values_mut() {
            user.permissions.remove(name);
        }
        Ok(())
    }

    /// Sets a user's permissions in a vhost (both must exist).
    pub fn set_permissions(
        &mut self,
        user: &str,
        vhost: &VhostName,
        spec: PermissionSpec,
    ) -> Result<(), InvalidAccess> {
        if !self.vhosts.contains_key(vhost) {
            return Err(InvalidAccess::NoVhost(vhost.to_string()));
        }
        let set = compile(user, vhost.as_str(), spec)?;
        let entry = self
            .users
            .get_mut(user)
            .ok_or_else(|| InvalidAccess::NoUser(user.to_owned()))?;
        entry.permissions.insert(vhost.clone(), set);
        Ok(())
    }

    /// Removes a user's permissions in a vhost.
    pub fn clear_permissions(
        &mut self,
        user: &str,
        vhost: &VhostName,
    ) -> Result<(), InvalidAccess> {
        let entry = self
            .users
            .get_mut(user)
            .ok_or_else(|| InvalidAccess::NoUser(user.to_owned()))?;
        entry
            .permissions
            .remove(vhost)
            .map(|_| ())
            .ok_or_else(|| InvalidAccess::NoPermissions {
                user: user.to_owned(),
                vhost: vhost.to_string(),
            })
    }
}

fn compile(user: &str, vhost: &str, spec: PermissionSpec) -> Result<PermissionSet, InvalidAccess> {
    PermissionSet::compile(spec).map_err(|source| InvalidAccess::Permission {
        user: user.to_owned(),
        vhost: vhost.to_owned(),
        source,
    })
}

/// Temporary file, fsync, rename, directory fsync; the file is created with mode 0600 (it
/// holds password hashes).
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let written = (|| {
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(&dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_initial_file_has_guest_on_slash_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let (access, created) = Access::load_or_create(&path).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("$argon2id$"), "{text}");
        assert!(
            !text.contains("password ="),
            "no plain password field: {text}"
        );
        let guest = access.user("guest").unwrap();
        assert!(guest.password_hash.verify("guest"));
        assert!(guest.tags.contains(&Tag::Administrator));
        assert!(guest.permissions.contains_key(&VhostName::default_vhost()));
        let (again, created) = Access::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(again.to_toml(), access.to_toml());
    }

    #[test]
    fn changes_keep_the_file_consistent() {
        let mut access = Access::initial();
        let staging = VhostName::new("staging").unwrap();
        assert!(access.put_vhost(
            &staging,
            VhostLimits {
                max_queues: Some(10),
                ..VhostLimits::default()
            }
        ));
        assert!(access
            .put_user("app", Some(PasswordHash::new("pw")), None)
            .unwrap());
        access
            .set_permissions("app", &staging, PermissionSpec::full())
            .unwrap();
        assert_eq!(
            access.set_permissions("nobody", &staging, PermissionSpec::full()),
            Err(InvalidAccess::NoUser("nobody".into()))
        );
        let missing = VhostName::new("prod").unwrap();
        assert!(access
            .set_permissions("app", &missing, PermissionSpec::full())
            .unwrap_err()
            .is_not_found());
        let text = access.to_toml();
        let parsed = Access::parse(Path::new("users.toml"), &text).unwrap();
        assert_eq!(parsed.vhosts()[&staging].max_queues, Some(10));
        assert!(parsed
            .user("app")
            .unwrap()
            .permissions
            .contains_key(&staging));
        access.delete_vhost(&staging).unwrap();
        assert!(access.user("app").unwrap().permissions.is_empty());
        assert!(access.put_user("ghost", None, None).is_err());
        assert!(access
            .put_user("a:b", Some(PasswordHash::new("x")), None)
            .is_err());
    }

    #[test]
    fn a_bad_file_is_refused_naming_what_is_wrong() {
        let path = Path::new("users.toml");
        let hash = PasswordHash::new("x");
        let cases = [
            ("[[users]]\nname = \"a\"\npassword = \"plain\"\n", "unknown field"),
            (
                "[[users]]\nname = \"a\"\npassword_hash = \"plain\"\n",
                "invalid password hash",
            ),
            (
                &format!(
                    "[[users]]\nname = \"a\"\npassword_hash = \"{}\"\ntags = [\"root\"]\n",
                    hash.as_str()
                ),
                "unknown tag 'root'",
            ),
            (
                &format!(
                    "[[users]]\nname = \"a\"\npassword_hash = \"{}\"\npermissions = {{ \"/x\" = {{ configure = \"\", write = \"\", read = \"\" }} }}\n",
                    hash.as_str()
                ),
                "no vhost '/x'",
            ),
            ("[[vhosts]]\nname = \"v\"\n[[vhosts]]\nname = \"v\"\n", "listed twice"),
            ("[[vhosts]]\nname = \"v\"\nlimits = { max_queue = 1 }\n", "unknown field"),
        ];
        for (text, expected) in cases {
            let e = Access::parse(path, text).unwrap_err().to_string();
            assert!(e.contains(expected), "{text}: {e}");
        }
    }
}

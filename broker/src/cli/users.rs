//! `sluice user|vhost|permissions`: edit the users file offline (no broker needed), the way
//! `rabbitmqctl add_user` and friends do; the running broker picks the change up on SIGHUP.
//!
//! New passwords never come from the command line (every user of the machine can read it in
//! `ps`): they come from `SLUICE_NEW_PASSWORD`, or from standard input (one line; prompted
//! without echo on a terminal). Only their argon2id hash is written.

use std::collections::BTreeSet;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::CliError;
use crate::auth::{
    parse_tags, Access, InvalidAccess, PasswordHash, PermissionSpec, Tag, VhostLimits, VhostName,
};
use crate::config::DEFAULT_DATA_DIR;

/// The environment variable a new password is read from (instead of standard input).
pub const NEW_PASSWORD_VAR: &str = "SLUICE_NEW_PASSWORD";

/// Which users file to edit: `--users-file`, else `users.toml` in `--data-dir`.
#[derive(Debug, Clone, Args)]
pub struct UsersFileArgs {
    /// The users file [default: DATA_DIR/users.toml].
    #[arg(long, global = true, env = "SLUICE_USERS_FILE")]
    pub users_file: Option<PathBuf>,
    /// The broker's data directory, whose users.toml is edited [default: ./sluice-data].
    #[arg(long, global = true, env = "SLUICE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

impl UsersFileArgs {
    fn path(&self) -> PathBuf {
        self.users_file.clone().unwrap_or_else(|| {
            self.data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
                .join(crate::auth::DEFAULT_FILE_NAME)
        })
    }
}

/// Arguments of `sluice user`.
#[derive(Debug, Clone, Args)]
pub struct UserArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: UserAction,
    #[command(flatten)]
    file: UsersFileArgs,
}

/// `sluice user add|passwd|tags|delete|list`.
#[derive(Debug, Clone, Subcommand)]
pub enum UserAction {
    /// Add a user; its password is read from SLUICE_NEW_PASSWORD or standard input.
    Add {
        /// The user name.
        name: String,
        /// Its tags, comma-separated: administrator, monitoring, management.
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
    },
    /// Change a user's password (read from SLUICE_NEW_PASSWORD or standard input).
    Passwd {
        /// The user name.
        name: String,
    },
    /// Replace a user's tags (comma-separated; empty for none).
    Tags {
        /// The user name.
        name: String,
        /// The tags.
        #[arg(value_delimiter = ',')]
        tags: Vec<String>,
    },
    /// Delete a user (a running broker closes its connections when it reloads the file).
    Delete {
        /// The user name.
        name: String,
    },
    /// List users and their tags.
    List,
}

/// Arguments of `sluice vhost`.
#[derive(Debug, Clone, Args)]
pub struct VhostArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: VhostAction,
    #[command(flatten)]
    file: UsersFileArgs,
}

/// `sluice vhost add|delete|list`.
#[derive(Debug, Clone, Subcommand)]
pub enum VhostAction {
    /// Add a vhost, or change its limits.
    Add {
        /// The vhost's name.
        name: String,
        /// Most queues in the vhost.
        #[arg(long)]
        max_queues: Option<u64>,
        /// Most exchanges in the vhost.
        #[arg(long)]
        max_exchanges: Option<u64>,
        /// Largest message published in the vhost, in bytes.
        #[arg(long)]
        max_message_bytes: Option<u64>,
    },
    /// Delete a vhost and every permission on it from the users file. Its queues stay in
    /// the data directory, unreachable; `DELETE /api/vhosts/NAME` deletes them too.
    Delete {
        /// The vhost's name.
        name: String,
    },
    /// List vhosts and their limits.
    List,
}

/// Arguments of `sluice permissions`.
#[derive(Debug, Clone, Args)]
pub struct PermissionsArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: PermissionsAction,
    #[command(flatten)]
    file: UsersFileArgs,
}

/// `sluice permissions set|clear|list`.
#[derive(Debug, Clone, Subcommand)]
pub enum PermissionsAction {
    /// Set a user's permissions in a vhost: regular expressions over queue and exchange
    /// names ("" matches nothing, ".*" everything).
    Set {
        /// The user.
        user: String,
        /// The vhost.
        #[arg(long, default_value = "/")]
        vhost: String,
        /// Names the user may declare and delete.
        #[arg(long, value_name = "REGEX")]
        configure: String,
        /// Names the user may publish to and bind to.
        #[arg(long, value_name = "REGEX")]
        write: String,
        /// Names the user may consume from and bind from.
        #[arg(long, value_name = "REGEX")]
        read: String,
    },
    /// Remove a user's permissions in a vhost.
    Clear {
        /// The user.
        user: String,
        /// The vhost.
        #[arg(long, default_value = "/")]
        vhost: String,
    },
    /// List permissions, by user and vhost.
    List,
}

/// A user as listed (`sluice user list --json`, `GET /api/users`); never its hash.
#[derive(Debug, Serialize)]
pub(crate) struct UserJson {
    pub name: String,
    pub tags: Vec<&'static str>,
}

impl UserJson {
    pub(crate) fn new(user: &crate::auth::User) -> Self {
        Self {
            name: user.name.clone(),
            tags: user.tags.iter().map(|t| t.as_str()).collect(),
        }
    }
}

/// A vhost as listed (`sluice vhost list --json`, `GET /api/vhosts`).
#[derive(Debug, Serialize)]
pub(crate) struct VhostJson {
    pub name: String,
    pub limits: VhostLimits,
}

/// One user's permissions in one vhost, as listed.
#[derive(Debug, Serialize)]
pub(crate) struct PermissionJson {
    pub user: String,
    pub vhost: String,
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// Every permission in `access`, by user then vhost.
pub(crate) fn permissions_json(access: &Access) -> Vec<PermissionJson> {
    access
        .users()
        .values()
        .flat_map(|u| {
            u.permissions.iter().map(|(vhost, set)| PermissionJson {
                user: u.name.clone(),
                vhost: vhost.to_string(),
                configure: set.spec().configure.clone(),
                write: set.spec().write.clone(),
                read: set.spec().read.clone(),
            })
        })
        .collect()
}

/// Every vhost in `access`.
pub(crate) fn vhosts_json(access: &Access) -> Vec<VhostJson> {
    access
        .vhosts()
        .iter()
        .map(|(name, limits)| VhostJson {
            name: name.to_string(),
            limits: limits.clone(),
        })
        .collect()
}

/// Runs `sluice user ...`.
pub fn user(args: UserArgs, json: bool) -> Result<(), CliError> {
    let path = args.file.path();
    match args.action {
        UserAction::List => {
            let access = load(&path)?;
            let users: Vec<UserJson> = access.users().values().map(UserJson::new).collect();
            print_list(json, &users, &["NAME", "TAGS"], |u| {
                vec![u.name.clone(), u.tags.join(",")]
            })
        }
        UserAction::Add { name, tags } => {
            let tags = parse_tags(&name, &tags)?;
            crate::auth::check_user_name(&name)?;
            let mut access = load(&path)?;
            if access.user(&name).is_some() {
                return Err(CliError::new(format!(
                    "user '{name}' already exists; change its password with `sluice user passwd {name}`"
                )));
            }
            let hash = PasswordHash::new(&new_password(&name)?);
            access.put_user(&name, Some(hash), Some(tags))?;
            save(&access, &path, &format!("user '{name}' added"))
        }
        UserAction::Passwd { name } => {
            let mut access = load(&path)?;
            if access.user(&name).is_none() {
                return Err(InvalidAccess::NoUser(name).into());
            }
            let hash = PasswordHash::new(&new_password(&name)?);
            access.put_user(&name, Some(hash), None)?;
            save(
                &access,
                &path,
                &format!("password of user '{name}' changed"),
            )
        }
        UserAction::Tags { name, tags } => {
            let tags: BTreeSet<Tag> = parse_tags(&name, &tags)?;
            let mut access = load(&path)?;
            if access.user(&name).is_none() {
                return Err(InvalidAccess::NoUser(name).into());
            }
            access.put_user(&name, None, Some(tags))?;
            save(&access, &path, &format!("tags of user '{name}' set"))
        }
        UserAction::Delete { name } => {
            let mut access = load(&path)?;
            access.delete_user(&name)?;
            save(&access, &path, &format!("user '{name}' deleted"))
        }
    }
}

/// Runs `sluice vhost ...`.
pub fn vhost(args: VhostArgs, json: bool) -> Result<(), CliError> {
    let path = args.file.path();
    match args.action {
        VhostAction::List => {
            let access = load(&path)?;
            let vhosts = vhosts_json(&access);
            print_list(
                json,
                &vhosts,
                &["NAME", "MAX_QUEUES", "MAX_EXCHANGES", "MAX_MESSAGE_BYTES"],
                |v| {
                    let limit =
                        |l: Option<u64>| l.map_or_else(|| "-".to_owned(), |n| n.to_string());
                    vec![
                        v.name.clone(),
                        limit(v.limits.max_queues),
                        limit(v.limits.max_exchanges),
                        limit(v.limits.max_message_bytes),
                    ]
                },
            )
        }
        VhostAction::Add {
            name,
            max_queues,
            max_exchanges,
            max_message_bytes,
        } => {
            let vhost = VhostName::new(&name).map_err(InvalidAccess::from)?;
            let mut access = load(&path)?;
            let limits = VhostLimits {
                max_queues,
                max_exchanges,
                max_message_bytes,
            };
            let created = access.put_vhost(&vhost, limits);
            let what = if created { "added" } else { "changed" };
            save(&access, &path, &format!("vhost '{name}' {what}"))
        }
        VhostAction::Delete { name } => {
            let vhost = VhostName::new(&name).map_err(InvalidAccess::from)?;
            let mut access = load(&path)?;
            access.delete_vhost(&vhost)?;
            save(
                &access,
                &path,
                &format!(
                    "vhost '{name}' deleted from the users file; its queues and exchanges stay in \
                     the data directory (DELETE /api/vhosts/NAME on a running broker deletes them)"
                ),
            )
        }
    }
}

/// Runs `sluice permissions ...`.
pub fn permissions(args: PermissionsArgs, json: bool) -> Result<(), CliError> {
    let path = args.file.path();
    match args.action {
        PermissionsAction::List => {
            let access = load(&path)?;
            let all = permissions_json(&access);
            print_list(
                json,
                &all,
                &["USER", "VHOST", "CONFIGURE", "WRITE", "READ"],
                |p| {
                    vec![
                        p.user.clone(),
                        p.vhost.clone(),
                        p.configure.clone(),
                        p.write.clone(),
                        p.read.clone(),
                    ]
                },
            )
        }
        PermissionsAction::Set {
            user,
            vhost,
            configure,
            write,
            read,
        } => {
            let vhost = VhostName::new(&vhost).map_err(InvalidAccess::from)?;
            let mut access = load(&path)?;
            let spec = PermissionSpec {
                configure,
                write,
                read,
            };
            access.set_permissions(&user, &vhost, spec)?;
            save(
                &access,
                &path,
                &format!("permissions of user '{user}' in vhost '{vhost}' set"),
            )
        }
        PermissionsAction::Clear { user, vhost } => {
            let vhost = VhostName::new(&vhost).map_err(InvalidAccess::from)?;
            let mut access = load(&path)?;
            access.clear_permissions(&user, &vhost)?;
            save(
                &access,
                &path,
                &format!("permissions of user '{user}' in vhost '{vhost}' cleared"),
            )
        }
    }
}

/// The users file, or the one a broker would create when there is none yet.
fn load(path: &std::path::Path) -> Result<Access, CliError> {
    match Access::load(path) {
        Ok(access) => Ok(access),
        Err(crate::auth::UsersFileError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(Access::initial())
        }
        Err(e) => Err(CliError::new(e.to_string())),
    }
}

fn save(access: &Access, path: &std::path::Path, done: &str) -> Result<(), CliError> {
    access
        .save(path)
        .map_err(|e| CliError::new(e.to_string()))?;
    println!("{done} ({})", path.display());
    eprintln!(
        "sluice: a running broker reads the change when told to: kill -HUP <its pid> (or make changes through its HTTP API, /api/users)"
    );
    Ok(())
}

/// The new password of `user`: `SLUICE_NEW_PASSWORD`, else a line of standard input
/// (prompted twice without echo on a terminal). Never empty.
fn new_password(user: &str) -> Result<String, CliError> {
    let password = match std::env::var(NEW_PASSWORD_VAR) {
        Ok(p) => p,
        Err(_) if std::io::stdin().is_terminal() => {
            let first = rpassword::prompt_password(format!("New password for '{user}': "))?;
            let again = rpassword::prompt_password("Again: ")?;
            if first != again {
                return Err(CliError::new("the two passwords differ; nothing changed"));
            }
            first
        }
        Err(_) => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line.trim_end_matches(['\n', '\r']).to_owned()
        }
    };
    if password.is_empty() {
        return Err(CliError::new(format!(
            "no password given: set {NEW_PASSWORD_VAR} or write it on standard input"
        )));
    }
    Ok(password)
}

/// Prints `items` as JSON, or as a table with `header`.
fn print_list<T: Serialize>(
    json: bool,
    items: &[T],
    header: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    if json {
        let text = serde_json::to_string_pretty(items).map_err(|e| CliError::new(e.to_string()))?;
        writeln!(out, "{text}")?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = items.iter().map(row).collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    writeln!(
        out,
        "{}",
        line(header.iter().map(|h| h.to_string()).collect())
    )?;
    for r in rows {
        writeln!(out, "{}", line(r))?;
    }
    Ok(())
}

impl From<InvalidAccess> for CliError {
    fn from(e: InvalidAccess) -> Self {
        CliError::new(e.to_string())
    }
}

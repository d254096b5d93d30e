//! Vhosts as namespaces of queue and exchange names.
//!
//! The registry, the routing table and `definitions.bin` know one flat set of names. A vhost
//! is a share of that set: the default vhost `/` owns the bare names (so a data directory
//! written before vhosts existed is read unchanged), any other vhost `v` owns the names
//! `"\0v\0" + name`. Clients may not put `\0` in a name (protocol.md §2.2) and vhost names
//! hold no control character, so no client name of one vhost can spell a name of another.
//!
//! The doors (sessions, the HTTP API) turn a client's name into the internal one with
//! [`Namespace::qualify`] and back with [`Namespace::local`]; the routing table uses
//! [`split`] for what is per vhost: the default exchange, `amq.*`, alternate exchanges.

use std::borrow::Cow;
use std::fmt;

use super::RoutingError;

/// The character that starts and ends a non-default vhost's prefix; never in a client name.
pub const SEPARATOR: char = '\0';

/// The vhost whose names carry no prefix.
pub const DEFAULT_VHOST: &str = "/";

/// One vhost's share of the names: its prefix (empty for `/`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace {
    vhost: String,
    prefix: String,
}

/// A name split into its vhost and the name its clients use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceName<'a> {
    /// The vhost (`/` for a bare name).
    pub vhost: &'a str,
    /// The name as the vhost's clients see it.
    pub local: &'a str,
}

impl fmt::Display for ResourceName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.vhost == DEFAULT_VHOST {
            f.write_str(self.local)
        } else {
            write!(f, "{}/{}", self.vhost, self.local)
        }
    }
}

/// Splits an internal name into its vhost and local name. A malformed prefix (only a name
/// stored by hand could have one) counts as a bare name of `/`.
pub fn split(internal: &str) -> ResourceName<'_> {
    if let Some(rest) = internal.strip_prefix(SEPARATOR) {
        if let Some((vhost, local)) = rest.split_once(SEPARATOR) {
            return ResourceName { vhost, local };
        }
    }
    ResourceName {
        vhost: DEFAULT_VHOST,
        local: internal,
    }
}

/// The prefix of an internal name's vhost (empty for `/`).
pub fn prefix_of(internal: &str) -> &str {
    let local = split(internal).local;
    &internal[..internal.len() - local.len()]
}

impl Namespace {
    /// The namespace of the vhost named `vhost` (a valid vhost name: no control character).
    pub fn of_vhost(vhost: &str) -> Self {
        let prefix = if vhost == DEFAULT_VHOST {
            String::new()
        } else {
            format!("{SEPARATOR}{vhost}{SEPARATOR}")
        };
        Self {
            vhost: vhost.to_owned(),
            prefix,
        }
    }

    /// The namespace of `/`.
    pub fn default_vhost() -> Self {
        Self::of_vhost(DEFAULT_VHOST)
    }

    /// The vhost's name.
    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// Whether this is `/`.
    pub fn is_default(&self) -> bool {
        self.prefix.is_empty()
    }

    /// The prefix every internal name of this vhost starts with (empty for `/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The internal name of the client's `name`; refused if it holds `\0`.
    pub fn qualify<'a>(&self, name: &'a str) -> Result<Cow<'a, str>, RoutingError> {
        check_local(name)?;
        Ok(self.qualify_checked(name))
    }

    /// [`qualify`](Self::qualify) for a name known to hold no `\0` (one read back from
    /// the registry, or checked before).
    pub fn qualify_checked<'a>(&self, name: &'a str) -> Cow<'a, str> {
        if self.prefix.is_empty() {
            Cow::Borrowed(name)
        } else {
            Cow::Owned(format!("{}{name}", self.prefix))
        }
    }

    /// The client's name of `internal` if it belongs to this vhost.
    pub fn local<'a>(&self, internal: &'a str) -> Option<&'a str> {
        let name = split(internal);
        (name.vhost == self.vhost).then_some(name.local)
    }

    /// Whether `internal` belongs to this vhost.
    pub fn contains(&self, internal: &str) -> bool {
        self.local(internal).is_some()
    }

    /// A message for this vhost's clients: internal names in it become their local names.
    pub fn localize(&self, message: String) -> String {
        if self.prefix.is_empty() || !message.contains(SEPARATOR) {
            return message;
        }
        message.replace(&self.prefix, "")
    }
}

/// Refuses a client's name that holds the separator (`INVALID_ARGUMENT` on the wire).
pub fn check_local(name: &str) -> Result<(), RoutingError> {
    if name.contains(SEPARATOR) {
        return Err(RoutingError::InvalidName(name.escape_default().to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_vhost_owns_the_bare_names_and_others_a_prefix() {
        let root = Namespace::default_vhost();
        let staging = Namespace::of_vhost("staging");
        assert_eq!(root.qualify("jobs").unwrap(), "jobs");
        let q = staging.qualify("jobs").unwrap().into_owned();
        assert_eq!(q, "\0staging\0jobs");
        assert_eq!(
            split(&q),
            ResourceName {
                vhost: "staging",
                local: "jobs"
            }
        );
        assert_eq!(
            split("jobs"),
            ResourceName {
                vhost: "/",
                local: "jobs"
            }
        );
        assert_eq!(staging.local(&q), Some("jobs"));
        assert_eq!(root.local(&q), None);
        assert_eq!(staging.local("jobs"), None);
        assert_eq!(prefix_of(&q), "\0staging\0");
        assert_eq!(prefix_of("jobs"), "");
    }

    #[test]
    fn a_client_name_with_the_separator_is_refused_in_every_vhost() {
        for ns in [Namespace::default_vhost(), Namespace::of_vhost("v")] {
            let e = ns.qualify("\0v\0jobs").unwrap_err();
            assert!(matches!(e, RoutingError::InvalidName(_)));
        }
    }

    #[test]
    fn messages_show_local_names() {
        let v = Namespace::of_vhost("v");
        assert_eq!(
            v.localize("no queue '\0v\0jobs'".to_owned()),
            "no queue 'jobs'"
        );
        assert_eq!(split("\0v\0").local, "");
    }
}

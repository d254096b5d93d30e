//! Vhost names.

use std::fmt;

/// The name of a vhost: 1 to 255 bytes of UTF-8 without control characters. `/` is the
/// default vhost every broker has.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VhostName(String);

/// Why a string is not a vhost name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid vhost name '{name}': {why}")]
pub struct InvalidVhostName {
    /// The name as given (control characters escaped).
    pub name: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl VhostName {
    /// The longest vhost name, in bytes.
    pub const MAX_LEN: usize = 255;

    /// The default vhost, `/`.
    pub fn default_vhost() -> Self {
        Self("/".to_owned())
    }

    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, InvalidVhostName> {
        let why = if name.is_empty() {
            Some("it is empty")
        } else if name.len() > Self::MAX_LEN {
            Some("it is longer than 255 bytes")
        } else if name.chars().any(char::is_control) {
            Some("it contains a control character")
        } else {
            None
        };
        match why {
            Some(why) => Err(InvalidVhostName {
                name: name.escape_default().to_string(),
                why,
            }),
            None => Ok(Self(name.to_owned())),
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the default vhost `/`.
    pub fn is_default(&self) -> bool {
        self.0 == "/"
    }
}

impl Default for VhostName {
    fn default() -> Self {
        Self::default_vhost()
    }
}

impl fmt::Display for VhostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_slash_and_plain_names_and_refuses_empty_long_or_control() {
        assert!(VhostName::new("/").unwrap().is_default());
        assert_eq!(VhostName::new("staging").unwrap().as_str(), "staging");
        assert!(VhostName::new("").is_err());
        assert!(VhostName::new(&"v".repeat(256)).is_err());
        assert!(VhostName::new("a\u{1}b").is_err());
    }
}

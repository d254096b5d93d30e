//! Typed message header values, as carried in message properties and binding arguments.

use bytes::Bytes;

/// One header value. Headers exchanges compare values by type and content.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HeaderValue {
    /// UTF-8 text.
    Str(String),
    /// A signed 64-bit integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// Opaque bytes.
    Bytes(Bytes),
}

/// Message or binding headers, in the order they were given. Keys are unique.
pub type Headers = Vec<(String, HeaderValue)>;

//! Connection-level messages (protocol.md §5): the handshake (`Hello`, `Welcome`),
//! `Close`, the generic `Error` reply and the flow-control notices `Blocked`/`Unblocked`.
//! `Heartbeat`, `CloseOk` and `Unblocked` have empty payloads and no type here.

use bytes::BytesMut;

use super::error::{ErrorCode, WireError};
use super::frame::Payload;
use super::header::{put_headers, read_headers, Headers};
use super::primitives::{self as p, Reader};
use super::MAGIC;

/// Opens the handshake: the first frame a client sends.
///
/// ```text
/// magic "SLUICE" (6 bytes), min_version u16, max_version u16, username str, password str,
/// heartbeat_ms u32, max_frame_len u32, client_properties headers
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Hello {
    /// Oldest protocol version the client speaks.
    pub min_version: u16,
    /// Newest protocol version the client speaks.
    pub max_version: u16,
    /// User name.
    pub username: String,
    /// Password, in clear (use TLS on untrusted networks).
    pub password: String,
    /// Proposed heartbeat interval in milliseconds; 0 = no preference.
    pub heartbeat_ms: u32,
    /// Largest frame the client accepts (length prefix value); 0 = no preference.
    pub max_frame_len: u32,
    /// Free-form facts about the client (`product`, `version`, `platform`, `connection_name`).
    pub client_properties: Headers,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Frames get logged; the password must not be.
        f.debug_struct("Hello")
            .field("min_version", &self.min_version)
            .field("max_version", &self.max_version)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("heartbeat_ms", &self.heartbeat_ms)
            .field("max_frame_len", &self.max_frame_len)
            .field("client_properties", &self.client_properties)
            .finish()
    }
}

impl Payload for Hello {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        buf.extend_from_slice(MAGIC);
        p::put_u16(buf, self.min_version);
        p::put_u16(buf, self.max_version);
        p::put_str(buf, "username", &self.username)?;
        p::put_str(buf, "password", &self.password)?;
        p::put_u32(buf, self.heartbeat_ms);
        p::put_u32(buf, self.max_frame_len);
        put_headers(buf, &self.client_properties)
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        if r.raw(MAGIC.len())? != MAGIC {
            return Err(WireError::BadMagic);
        }
        Ok(Hello {
            min_version: r.u16()?,
            max_version: r.u16()?,
            username: r.string()?,
            password: r.string()?,
            heartbeat_ms: r.u32()?,
            max_frame_len: r.u32()?,
            client_properties: read_headers(r)?,
        })
    }
}

/// Accepts the handshake, fixing the version and the limits for the rest of the connection.
///
/// ```text
/// version u16, heartbeat_ms u32, max_frame_len u32, max_message_len u32, connection_id u64,
/// server_properties headers
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The protocol version both sides now speak.
    pub version: u16,
    /// Agreed heartbeat interval in milliseconds; 0 = heartbeats off.
    pub heartbeat_ms: u32,
    /// Largest length prefix either side may send.
    pub max_frame_len: u32,
    /// Largest message (meta plus body) the server accepts.
    pub max_message_len: u32,
    /// The server's number for this connection (for logs and the admin API).
    pub connection_id: u64,
    /// Free-form facts about the server (`product`, `version`).
    pub server_properties: Headers,
}

impl Payload for Welcome {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u16(buf, self.version);
        p::put_u32(buf, self.heartbeat_ms);
        p::put_u32(buf, self.max_frame_len);
        p::put_u32(buf, self.max_message_len);
        p::put_u64(buf, self.connection_id);
        put_headers(buf, &self.server_properties)
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Welcome {
            version: r.u16()?,
            heartbeat_ms: r.u32()?,
            max_frame_len: r.u32()?,
            max_message_len: r.u32()?,
            connection_id: r.u64()?,
            server_properties: read_headers(r)?,
        })
    }
}

/// Starts closing the connection.
///
/// ```text
/// code u16 (0 = normal close), reason str
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// Why, as an error code; `None` for a normal close (encoded as 0).
    pub code: Option<ErrorCode>,
    /// Human-readable detail.
    pub reason: String,
}

impl Payload for Close {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u16(buf, self.code.map_or(0, ErrorCode::as_u16));
        p::put_str(buf, "reason", &self.reason)
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let code = match r.u16()? {
            0 => None,
            n => Some(ErrorCode::from_u16(n)),
        };
        Ok(Close {
            code,
            reason: r.string()?,
        })
    }
}

/// A request failed; the frame's request id names it.
///
/// ```text
/// code u16, message str
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// What went wrong.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

impl Payload for ErrorReply {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u16(buf, self.code.as_u16());
        p::put_str(buf, "message", &self.message)
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(ErrorReply {
            code: ErrorCode::from_u16(r.u16()?),
            message: r.string()?,
        })
    }
}

/// The server refuses publishes until it sends `Unblocked`.
///
/// ```text
/// code u16, reason str
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// Why, e.g. [`ErrorCode::StorageFull`].
    pub code: ErrorCode,
    /// Human-readable detail.
    pub reason: String,
}

impl Payload for Blocked {
    fn encode(&self, buf: &mut BytesMut) -> Result<(), WireError> {
        p::put_u16(buf, self.code.as_u16());
        p::put_str(buf, "reason", &self.reason)
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        Ok(Blocked {
            code: ErrorCode::from_u16(r.u16()?),
            reason: r.string()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testing::{check_payload, hex};
    use crate::wire::HeaderValue;

    #[test]
    fn hello() {
        check_payload(
            &Hello {
                min_version: 1,
                max_version: 1,
                username: "guest".into(),
                password: "guest".into(),
                heartbeat_ms: 30_000,
                max_frame_len: 0,
                client_properties: vec![("product".into(), HeaderValue::from("sluice-rs"))],
            },
            &hex(
                "53 4c 55 49 43 45  01 00  01 00  05 00 67 75 65 73 74  05 00 67 75 65 73 74
                 30 75 00 00  00 00 00 00
                 01 00 07 00 70 72 6f 64 75 63 74 01 09 00 73 6c 75 69 63 65 2d 72 73",
            ),
        );
    }

    #[test]
    fn hello_debug_hides_the_password() {
        let hello = Hello {
            min_version: 1,
            max_version: 1,
            username: "guest".into(),
            password: "s3cret".into(),
            heartbeat_ms: 0,
            max_frame_len: 0,
            client_properties: vec![],
        };
        let shown = format!("{hello:?}");
        assert!(
            shown.contains("guest") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn hello_with_bad_magic_is_rejected() {
        let bytes = hex("48 54 54 50 2f 31 01 00 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00");
        assert_eq!(
            Hello::decode(&mut Reader::new(&bytes)),
            Err(WireError::BadMagic)
        );
    }

    #[test]
    fn welcome() {
        check_payload(
            &Welcome {
                version: 1,
                heartbeat_ms: 30_000,
                max_frame_len: 17 << 20,
                max_message_len: 16 << 20,
                connection_id: 1,
                server_properties: vec![],
            },
            &hex("01 00  30 75 00 00  00 00 10 01  00 00 00 01  01 00 00 00 00 00 00 00  00 00"),
        );
    }

    #[test]
    fn close() {
        check_payload(
            &Close {
                code: None,
                reason: "bye".into(),
            },
            &hex("00 00 03 00 62 79 65"),
        );
        check_payload(
            &Close {
                code: Some(ErrorCode::HeartbeatTimeout),
                reason: String::new(),
            },
            &hex("68 00 00 00"),
        );
    }

    #[test]
    fn error_reply_keeps_unknown_codes() {
        check_payload(
            &ErrorReply {
                code: ErrorCode::NotFound,
                message: "no queue 'x'".into(),
            },
            &hex("ca 00 0c 00 6e 6f 20 71 75 65 75 65 20 27 78 27"),
        );
        check_payload(
            &ErrorReply {
                code: ErrorCode::Unknown(9999),
                message: String::new(),
            },
            &hex("0f 27 00 00"),
        );
    }

    #[test]
    fn blocked() {
        check_payload(
            &Blocked {
                code: ErrorCode::StorageFull,
                reason: "disk".into(),
            },
            &hex("2d 01 04 00 64 69 73 6b"),
        );
    }
}

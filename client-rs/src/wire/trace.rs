//! W3C Trace Context on messages (protocol.md §8.1, meta properties 11 and 12).
//!
//! A message carries the `traceparent` of the span that published it, so the broker can hang
//! its own spans (publish, route, store, confirm, deliver, ack) under it and a consumer can
//! continue the trace. On the wire it is 25 fixed bytes rather than the 55-character header:
//! the broker reads it for every traced message without parsing text.

use std::fmt;

use bytes::BytesMut;

use super::error::WireError;
use super::primitives::{self as p, Reader};

/// Bytes of a [`TraceParent`] in a meta block: trace id, span id, flags.
pub const TRACE_PARENT_LEN: usize = 16 + 8 + 1;

/// The `sampled` bit of the trace flags.
const SAMPLED: u8 = 0x01;

/// A W3C `traceparent` (version 00): which trace a message belongs to and the span that
/// published it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// The trace's id; never all zeroes.
    pub trace_id: [u8; 16],
    /// The publishing span's id; never all zeroes.
    pub span_id: [u8; 8],
    /// Trace flags; bit 0 = sampled (the caller records this trace).
    pub flags: u8,
}

/// A `traceparent` header that is not a valid version-00 value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid traceparent {0:?}: expected 00-<32 hex>-<16 hex>-<2 hex>, ids not all zero")]
pub struct InvalidTraceParent(pub String);

impl TraceParent {
    /// A trace parent from its parts; `None` when an id is all zeroes (invalid in W3C).
    pub fn new(trace_id: [u8; 16], span_id: [u8; 8], flags: u8) -> Option<Self> {
        let valid = trace_id != [0; 16] && span_id != [0; 8];
        valid.then_some(TraceParent {
            trace_id,
            span_id,
            flags,
        })
    }

    /// Whether the publisher samples (records) this trace.
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// Parses the `traceparent` header form, `00-<trace id>-<span id>-<flags>` in lowercase
    /// hex. Later versions are read as version 00 when they have its layout, as W3C asks.
    pub fn parse(header: &str) -> Result<Self, InvalidTraceParent> {
        let bad = || InvalidTraceParent(header.to_owned());
        let mut parts = header.trim().split('-');
        let (Some(version), Some(trace), Some(span), Some(flags)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let version = hex_array::<1>(version).ok_or_else(bad)?[0];
        if version == 0xff || (version == 0 && parts.next().is_some()) {
            return Err(bad());
        }
        let trace_id = hex_array::<16>(trace).ok_or_else(bad)?;
        let span_id = hex_array::<8>(span).ok_or_else(bad)?;
        let flags = hex_array::<1>(flags).ok_or_else(bad)?[0];
        TraceParent::new(trace_id, span_id, flags).ok_or_else(bad)
    }

    /// The trace id in lowercase hex, as tracing back ends show it.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The span id in lowercase hex.
    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }

    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        buf.extend_from_slice(&self.trace_id);
        buf.extend_from_slice(&self.span_id);
        p::put_u8(buf, self.flags);
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let trace_id: [u8; 16] = r.raw(16)?.try_into().expect("16 bytes");
        let span_id: [u8; 8] = r.raw(8)?.try_into().expect("8 bytes");
        let flags = r.u8()?;
        TraceParent::new(trace_id, span_id, flags).ok_or(WireError::InvalidValue {
            what: "traceparent (an all-zero id)",
            value: 0,
        })
    }
}

/// The `traceparent` header form.
impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            self.flags
        )
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceParent({self})")
    }
}

impl std::str::FromStr for TraceParent {
    type Err = InvalidTraceParent;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TraceParent::parse(s)
    }
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// `N` bytes from exactly `2 × N` lowercase hex digits (W3C forbids uppercase).
fn hex_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    let digits = s.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0; N];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_w3c_example_round_trips_through_the_header_form() {
        let tp = TraceParent::parse(EXAMPLE).unwrap();
        assert!(tp.sampled());
        assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.span_id_hex(), "00f067aa0ba902b7");
        assert_eq!(tp.to_string(), EXAMPLE);
    }

    #[test]
    fn invalid_headers_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(TraceParent::parse(bad).is_err(), "{bad:?}");
        }
        // A later version with version 00's layout and more fields is read as 00.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what";
        assert!(!TraceParent::parse(later).unwrap().sampled());
    }

    #[test]
    fn the_wire_form_is_25_bytes_and_refuses_zero_ids() {
        let tp = TraceParent::parse(EXAMPLE).unwrap();
        let mut buf = BytesMut::new();
        tp.encode(&mut buf);
        assert_eq!(buf.len(), TRACE_PARENT_LEN);
        assert_eq!(TraceParent::decode(&mut Reader::new(&buf)).unwrap(), tp);
        let zero = [0u8; TRACE_PARENT_LEN];
        assert!(TraceParent::decode(&mut Reader::new(&zero)).is_err());
    }
}

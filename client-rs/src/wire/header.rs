//! Typed message header values, as carried in message properties and binding arguments,
//! and their encoding as a header table (protocol.md §2.3).
//!
//! ```text
//! count u16, then count × { key str, type u8, value }
//! type 1 = str (u16 length + UTF-8), 2 = int (i64), 3 = bool (u8 0/1), 4 = bytes (blob)
//! ```

use bytes::{Bytes, BytesMut};

use super::error::WireError;
use super::primitives::{self as p, Reader};

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

const TYPE_STR: u8 = 1;
const TYPE_INT: u8 = 2;
const TYPE_BOOL: u8 = 3;
const TYPE_BYTES: u8 = 4;

/// Smallest encoded header entry: empty key, type byte, bool value.
const MIN_ENTRY_LEN: usize = 2 + 1 + 1;

impl From<&str> for HeaderValue {
    fn from(v: &str) -> Self {
        HeaderValue::Str(v.to_owned())
    }
}

impl From<String> for HeaderValue {
    fn from(v: String) -> Self {
        HeaderValue::Str(v)
    }
}

impl From<i64> for HeaderValue {
    fn from(v: i64) -> Self {
        HeaderValue::Int(v)
    }
}

impl From<bool> for HeaderValue {
    fn from(v: bool) -> Self {
        HeaderValue::Bool(v)
    }
}

impl From<Bytes> for HeaderValue {
    fn from(v: Bytes) -> Self {
        HeaderValue::Bytes(v)
    }
}

/// Encoded size of a header table.
pub fn headers_len(headers: &[(String, HeaderValue)]) -> usize {
    2 + headers
        .iter()
        .map(|(key, value)| {
            p::str_len(key)
                + 1
                + match value {
                    HeaderValue::Str(s) => p::str_len(s),
                    HeaderValue::Int(_) => 8,
                    HeaderValue::Bool(_) => 1,
                    HeaderValue::Bytes(b) => p::blob_len(b),
                }
        })
        .sum::<usize>()
}

/// Appends a header table. Fails on more than 65 535 entries, over-long strings, or a
/// repeated key.
pub fn put_headers(buf: &mut BytesMut, headers: &[(String, HeaderValue)]) -> Result<(), WireError> {
    let count = p::checked_len("header count", headers.len(), usize::from(u16::MAX))?;
    check_unique(headers.iter().map(|(k, _)| k.as_str()))?;
    p::put_u16(buf, count as u16);
    for (key, value) in headers {
        p::put_str(buf, "header key", key)?;
        match value {
            HeaderValue::Str(s) => {
                p::put_u8(buf, TYPE_STR);
                p::put_str(buf, "header value", s)?;
            }
            HeaderValue::Int(i) => {
                p::put_u8(buf, TYPE_INT);
                p::put_i64(buf, *i);
            }
            HeaderValue::Bool(b) => {
                p::put_u8(buf, TYPE_BOOL);
                p::put_bool(buf, *b);
            }
            HeaderValue::Bytes(b) => {
                p::put_u8(buf, TYPE_BYTES);
                p::put_blob(buf, "header value", b)?;
            }
        }
    }
    Ok(())
}

/// Reads a header table.
pub fn read_headers(r: &mut Reader<'_>) -> Result<Headers, WireError> {
    let count = usize::from(r.u16()?);
    let count = r.count(count, MIN_ENTRY_LEN)?;
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let key = r.string()?;
        let value = match r.u8()? {
            TYPE_STR => HeaderValue::Str(r.string()?),
            TYPE_INT => HeaderValue::Int(r.i64()?),
            TYPE_BOOL => HeaderValue::Bool(r.bool()?),
            TYPE_BYTES => HeaderValue::Bytes(r.blob()?),
            other => {
                return Err(WireError::InvalidValue {
                    what: "header type",
                    value: u64::from(other),
                })
            }
        };
        headers.push((key, value));
    }
    check_unique(headers.iter().map(|(k, _)| k.as_str()))?;
    Ok(headers)
}

/// Checks a header table without building it, returning the bytes it spans.
pub fn skip_headers<'a>(r: &mut Reader<'a>) -> Result<&'a [u8], WireError> {
    let mut probe = r.clone();
    let start = probe.position();
    let count = usize::from(probe.u16()?);
    let count = probe.count(count, MIN_ENTRY_LEN)?;
    let mut keys = Vec::with_capacity(count);
    for _ in 0..count {
        keys.push(probe.str()?);
        match probe.u8()? {
            TYPE_STR => {
                probe.str()?;
            }
            TYPE_INT => {
                probe.i64()?;
            }
            TYPE_BOOL => {
                probe.bool()?;
            }
            TYPE_BYTES => {
                probe.blob_slice()?;
            }
            other => {
                return Err(WireError::InvalidValue {
                    what: "header type",
                    value: u64::from(other),
                })
            }
        }
    }
    check_unique(keys.into_iter())?;
    r.raw(probe.position() - start)
}

fn check_unique<'k>(keys: impl Iterator<Item = &'k str>) -> Result<(), WireError> {
    let mut keys: Vec<&str> = keys.collect();
    keys.sort_unstable();
    match keys.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(WireError::DuplicateHeader {
            key: w[0].to_owned(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Headers {
        vec![
            ("x-match".into(), "all".into()),
            ("n".into(), HeaderValue::Int(-1)),
            ("ok".into(), true.into()),
            (
                "raw".into(),
                HeaderValue::Bytes(Bytes::from_static(b"\x00\xff")),
            ),
        ]
    }

    #[test]
    fn round_trip() {
        let headers = sample();
        let mut buf = BytesMut::new();
        put_headers(&mut buf, &headers).unwrap();
        assert_eq!(buf.len(), headers_len(&headers));
        let bytes = buf.freeze();
        let mut r = Reader::from_bytes(&bytes);
        assert_eq!(read_headers(&mut r).unwrap(), headers);
        r.finish().unwrap();
        let mut r = Reader::new(&bytes);
        assert_eq!(skip_headers(&mut r).unwrap(), &bytes[..]);
        r.finish().unwrap();
    }

    #[test]
    fn exact_bytes() {
        let headers: Headers = vec![("x-match".into(), "any".into())];
        let mut buf = BytesMut::new();
        put_headers(&mut buf, &headers).unwrap();
        assert_eq!(
            &buf[..],
            b"\x01\x00\x07\x00x-match\x01\x03\x00any".as_slice()
        );
    }

    #[test]
    fn truncations_are_rejected() {
        let mut buf = BytesMut::new();
        put_headers(&mut buf, &sample()).unwrap();
        for i in 0..buf.len() {
            assert!(
                read_headers(&mut Reader::new(&buf[..i])).is_err(),
                "prefix {i}"
            );
            assert!(
                skip_headers(&mut Reader::new(&buf[..i])).is_err(),
                "prefix {i}"
            );
        }
    }

    #[test]
    fn duplicates_and_bad_types_are_rejected() {
        let dup = b"\x02\x00\x01\x00k\x03\x01\x01\x00k\x03\x00";
        assert!(matches!(
            read_headers(&mut Reader::new(dup)),
            Err(WireError::DuplicateHeader { .. })
        ));
        assert!(skip_headers(&mut Reader::new(dup)).is_err());
        let headers: Headers = vec![("k".into(), 1.into()), ("k".into(), 2.into())];
        assert!(put_headers(&mut BytesMut::new(), &headers).is_err());
        let bad_type = b"\x01\x00\x01\x00k\x09\x00";
        assert!(matches!(
            read_headers(&mut Reader::new(bad_type)),
            Err(WireError::InvalidValue { .. })
        ));
    }
}

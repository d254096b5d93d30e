//! Typed message header values, as carried in message properties and binding arguments,
//! and their encoding as a header table (protocol.md §2.3).
//!
//! ```text
//! table = count u16, then count × { key str, type u8, value }
//! type 1 = str (u16 length + UTF-8)   2 = int (i64)       3 = bool (u8 0/1)
//!      4 = bytes (blob)               5 = float (f64)     6 = void (nothing)
//!      7 = array (count u16, then count × { type u8, value })
//!      8 = table (a nested table)     9 = timestamp (u64) 10 = decimal (scale u8, value u32)
//! ```
//!
//! The value types are AMQP 0-9-1's field types, with one integer type and one float type.
//! Arrays and tables nest at most [`MAX_HEADER_DEPTH`] deep, so that decoding a hostile table
//! recurses a bounded number of times.

use std::hash::{Hash, Hasher};

use bytes::{Bytes, BytesMut};

use super::error::WireError;
use super::primitives::{self as p, Reader};

/// Most arrays and tables nested in one another inside a header table: a value of the
/// table itself is at depth 1, an element of an array value at depth 2, and so on. Deeper
/// is malformed (protocol.md §2.3, §14).
pub const MAX_HEADER_DEPTH: usize = 16;

/// One header value: the field types of AMQP 0-9-1.
///
/// `==` is structural (floats by their bits, so `0.0 != -0.0` and the relation is a true
/// equivalence); headers exchanges compare values as RabbitMQ does instead, see the broker's
/// `routing::headers`.
#[derive(Debug, Clone)]
pub enum HeaderValue {
    /// UTF-8 text.
    Str(String),
    /// A signed 64-bit integer (AMQP's integer types).
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// Opaque bytes.
    Bytes(Bytes),
    /// A finite 64-bit float (AMQP float and double). NaN and infinities cannot be encoded.
    Float(f64),
    /// No value (AMQP void). As a binding argument: "the header is present".
    Void,
    /// A list of values.
    Array(Vec<HeaderValue>),
    /// A nested table, with unique keys.
    Table(Headers),
    /// Seconds since the Unix epoch (AMQP timestamp).
    Timestamp(u64),
    /// A decimal number (AMQP decimal).
    Decimal(Decimal),
}

/// An AMQP decimal: `value × 10^-scale`. `1.0` (scale 1, value 10) and `1` (scale 0, value
/// 1) are different values, as in RabbitMQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decimal {
    /// Digits after the decimal point.
    pub scale: u8,
    /// The unscaled value (unsigned, as AMQP 0-9-1's grammar and RabbitMQ have it).
    pub value: u32,
}

/// Shows the digits with `scale` of them after the point: scale 2, value 1230 is `12.30`.
impl std::fmt::Display for Decimal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let digits = self.value.to_string();
        let scale = usize::from(self.scale);
        if scale == 0 {
            return f.write_str(&digits);
        }
        let padded = format!("{digits:0>width$}", width = scale + 1);
        let (int, frac) = padded.split_at(padded.len() - scale);
        write!(f, "{int}.{frac}")
    }
}

/// Why a text is not a [`Decimal`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a decimal of at most 255 digits after the point and a value below 2^32 (e.g. 12.30)")]
pub struct DecimalParseError(String);

/// Parses digits with an optional point: `12.30` is scale 2, value 1230 (trailing zeros
/// kept, as they are part of the value's identity).
impl std::str::FromStr for Decimal {
    type Err = DecimalParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DecimalParseError(s.to_owned());
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        let all_digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
        if int.is_empty() || !all_digits(int) || !all_digits(frac) || (s.ends_with('.')) {
            return Err(bad());
        }
        let scale = u8::try_from(frac.len()).map_err(|_| bad())?;
        let value = format!("{int}{frac}").parse::<u32>().map_err(|_| bad())?;
        Ok(Decimal { scale, value })
    }
}

/// Message or binding headers, in the order they were given. Keys are unique.
pub type Headers = Vec<(String, HeaderValue)>;

const TYPE_STR: u8 = 1;
const TYPE_INT: u8 = 2;
const TYPE_BOOL: u8 = 3;
const TYPE_BYTES: u8 = 4;
const TYPE_FLOAT: u8 = 5;
const TYPE_VOID: u8 = 6;
const TYPE_ARRAY: u8 = 7;
const TYPE_TABLE: u8 = 8;
const TYPE_TIMESTAMP: u8 = 9;
const TYPE_DECIMAL: u8 = 10;

/// Smallest encoded header entry: empty key, type byte, void value.
const MIN_ENTRY_LEN: usize = 2 + 1;
/// Smallest encoded array element: a void's type byte.
const MIN_ELEMENT_LEN: usize = 1;

impl HeaderValue {
    /// The type's name, as protocol.md §2.3 and error messages spell it.
    pub fn type_name(&self) -> &'static str {
        match self {
            HeaderValue::Str(_) => "string",
            HeaderValue::Int(_) => "integer",
            HeaderValue::Bool(_) => "boolean",
            HeaderValue::Bytes(_) => "bytes",
            HeaderValue::Float(_) => "float",
            HeaderValue::Void => "void",
            HeaderValue::Array(_) => "array",
            HeaderValue::Table(_) => "table",
            HeaderValue::Timestamp(_) => "timestamp",
            HeaderValue::Decimal(_) => "decimal",
        }
    }

    /// The type's code on the wire (protocol.md §2.3).
    pub fn type_code(&self) -> u8 {
        match self {
            HeaderValue::Str(_) => TYPE_STR,
            HeaderValue::Int(_) => TYPE_INT,
            HeaderValue::Bool(_) => TYPE_BOOL,
            HeaderValue::Bytes(_) => TYPE_BYTES,
            HeaderValue::Float(_) => TYPE_FLOAT,
            HeaderValue::Void => TYPE_VOID,
            HeaderValue::Array(_) => TYPE_ARRAY,
            HeaderValue::Table(_) => TYPE_TABLE,
            HeaderValue::Timestamp(_) => TYPE_TIMESTAMP,
            HeaderValue::Decimal(_) => TYPE_DECIMAL,
        }
    }
}

impl PartialEq for HeaderValue {
    fn eq(&self, other: &Self) -> bool {
        use HeaderValue as V;
        match (self, other) {
            (V::Str(a), V::Str(b)) => a == b,
            (V::Int(a), V::Int(b)) => a == b,
            (V::Bool(a), V::Bool(b)) => a == b,
            (V::Bytes(a), V::Bytes(b)) => a == b,
            (V::Float(a), V::Float(b)) => a.to_bits() == b.to_bits(),
            (V::Void, V::Void) => true,
            (V::Array(a), V::Array(b)) => a == b,
            (V::Table(a), V::Table(b)) => a == b,
            (V::Timestamp(a), V::Timestamp(b)) => a == b,
            (V::Decimal(a), V::Decimal(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for HeaderValue {}

impl Hash for HeaderValue {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.type_code().hash(state);
        match self {
            HeaderValue::Str(v) => v.hash(state),
            HeaderValue::Int(v) => v.hash(state),
            HeaderValue::Bool(v) => v.hash(state),
            HeaderValue::Bytes(v) => v.hash(state),
            HeaderValue::Float(v) => v.to_bits().hash(state),
            HeaderValue::Void => {}
            HeaderValue::Array(v) => v.hash(state),
            HeaderValue::Table(v) => v.hash(state),
            HeaderValue::Timestamp(v) => v.hash(state),
            HeaderValue::Decimal(v) => v.hash(state),
        }
    }
}

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

/// A float; NaN and infinities are refused when the table is encoded.
impl From<f64> for HeaderValue {
    fn from(v: f64) -> Self {
        HeaderValue::Float(v)
    }
}

impl From<Decimal> for HeaderValue {
    fn from(v: Decimal) -> Self {
        HeaderValue::Decimal(v)
    }
}

impl From<Vec<HeaderValue>> for HeaderValue {
    fn from(v: Vec<HeaderValue>) -> Self {
        HeaderValue::Array(v)
    }
}

impl From<Headers> for HeaderValue {
    fn from(v: Headers) -> Self {
        HeaderValue::Table(v)
    }
}

/// `None` is void.
impl<T: Into<HeaderValue>> From<Option<T>> for HeaderValue {
    fn from(v: Option<T>) -> Self {
        v.map_or(HeaderValue::Void, Into::into)
    }
}

/// Encoded size of a header table.
pub fn headers_len(headers: &[(String, HeaderValue)]) -> usize {
    2 + headers
        .iter()
        .map(|(key, value)| p::str_len(key) + 1 + value_len(value))
        .sum::<usize>()
}

/// Encoded size of a value, without its type byte.
fn value_len(value: &HeaderValue) -> usize {
    match value {
        HeaderValue::Str(s) => p::str_len(s),
        HeaderValue::Int(_) | HeaderValue::Float(_) | HeaderValue::Timestamp(_) => 8,
        HeaderValue::Bool(_) => 1,
        HeaderValue::Bytes(b) => p::blob_len(b),
        HeaderValue::Void => 0,
        HeaderValue::Array(items) => 2 + items.iter().map(|v| 1 + value_len(v)).sum::<usize>(),
        HeaderValue::Table(table) => headers_len(table),
        HeaderValue::Decimal(_) => 1 + 4,
    }
}

/// Appends a header table. Fails on more than 65 535 entries (or array elements), over-long
/// strings, a repeated key, a NaN or infinite float, or nesting deeper than
/// [`MAX_HEADER_DEPTH`].
pub fn put_headers(buf: &mut BytesMut, headers: &[(String, HeaderValue)]) -> Result<(), WireError> {
    put_table(buf, headers, 0)
}

/// `depth`: the arrays and tables this table is nested in (0 for a header table itself).
fn put_table(
    buf: &mut BytesMut,
    headers: &[(String, HeaderValue)],
    depth: usize,
) -> Result<(), WireError> {
    let count = p::checked_len("header count", headers.len(), usize::from(u16::MAX))?;
    check_unique(headers.iter().map(|(k, _)| k.as_str()))?;
    p::put_u16(buf, count as u16);
    for (key, value) in headers {
        p::put_str(buf, "header key", key)?;
        put_value(buf, value, depth + 1)?;
    }
    Ok(())
}

/// Appends a value's type byte and value; `depth` is the value's own depth (1 for a value of
/// a header table).
fn put_value(buf: &mut BytesMut, value: &HeaderValue, depth: usize) -> Result<(), WireError> {
    p::put_u8(buf, value.type_code());
    match value {
        HeaderValue::Str(s) => p::put_str(buf, "header value", s)?,
        HeaderValue::Int(i) => p::put_i64(buf, *i),
        HeaderValue::Bool(b) => p::put_bool(buf, *b),
        HeaderValue::Bytes(b) => p::put_blob(buf, "header value", b)?,
        HeaderValue::Float(f) => {
            check_finite(*f)?;
            p::put_u64(buf, f.to_bits());
        }
        HeaderValue::Void => {}
        HeaderValue::Array(items) => {
            check_depth(depth)?;
            let count = p::checked_len("header array length", items.len(), usize::from(u16::MAX))?;
            p::put_u16(buf, count as u16);
            for item in items {
                put_value(buf, item, depth + 1)?;
            }
        }
        HeaderValue::Table(table) => {
            check_depth(depth)?;
            put_table(buf, table, depth)?;
        }
        HeaderValue::Timestamp(t) => p::put_u64(buf, *t),
        HeaderValue::Decimal(d) => {
            p::put_u8(buf, d.scale);
            p::put_u32(buf, d.value);
        }
    }
    Ok(())
}

/// Reads a header table.
pub fn read_headers(r: &mut Reader<'_>) -> Result<Headers, WireError> {
    read_table(r, 0)
}

fn read_table(r: &mut Reader<'_>, depth: usize) -> Result<Headers, WireError> {
    let count = usize::from(r.u16()?);
    let count = r.count(count, MIN_ENTRY_LEN)?;
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let key = r.string()?;
        let value = read_value(r, depth + 1)?;
        headers.push((key, value));
    }
    check_unique(headers.iter().map(|(k, _)| k.as_str()))?;
    Ok(headers)
}

/// Reads a type byte and its value, at `depth` (1 for a value of a header table).
fn read_value(r: &mut Reader<'_>, depth: usize) -> Result<HeaderValue, WireError> {
    Ok(match r.u8()? {
        TYPE_STR => HeaderValue::Str(r.string()?),
        TYPE_INT => HeaderValue::Int(r.i64()?),
        TYPE_BOOL => HeaderValue::Bool(r.bool()?),
        TYPE_BYTES => HeaderValue::Bytes(r.blob()?),
        TYPE_FLOAT => HeaderValue::Float(read_float(r)?),
        TYPE_VOID => HeaderValue::Void,
        TYPE_ARRAY => {
            check_depth(depth)?;
            let count = usize::from(r.u16()?);
            let count = r.count(count, MIN_ELEMENT_LEN)?;
            let mut items = Vec::with_capacity(count);
            for _ in 0..count {
                items.push(read_value(r, depth + 1)?);
            }
            HeaderValue::Array(items)
        }
        TYPE_TABLE => {
            check_depth(depth)?;
            HeaderValue::Table(read_table(r, depth)?)
        }
        TYPE_TIMESTAMP => HeaderValue::Timestamp(r.u64()?),
        TYPE_DECIMAL => HeaderValue::Decimal(Decimal {
            scale: r.u8()?,
            value: r.u32()?,
        }),
        other => return Err(bad_type(other)),
    })
}

/// Checks a header table without building it, returning the bytes it spans.
pub fn skip_headers<'a>(r: &mut Reader<'a>) -> Result<&'a [u8], WireError> {
    let mut probe = r.clone();
    let start = probe.position();
    skip_table(&mut probe, 0)?;
    r.raw(probe.position() - start)
}

fn skip_table(r: &mut Reader<'_>, depth: usize) -> Result<(), WireError> {
    let count = usize::from(r.u16()?);
    let count = r.count(count, MIN_ENTRY_LEN)?;
    let mut keys = Vec::with_capacity(count);
    for _ in 0..count {
        keys.push(r.str()?);
        skip_value(r, depth + 1)?;
    }
    check_unique(keys.into_iter())
}

fn skip_value(r: &mut Reader<'_>, depth: usize) -> Result<(), WireError> {
    match r.u8()? {
        TYPE_STR => {
            r.str()?;
        }
        TYPE_INT | TYPE_TIMESTAMP => {
            r.u64()?;
        }
        TYPE_BOOL => {
            r.bool()?;
        }
        TYPE_BYTES => {
            r.blob_slice()?;
        }
        TYPE_FLOAT => {
            read_float(r)?;
        }
        TYPE_VOID => {}
        TYPE_ARRAY => {
            check_depth(depth)?;
            let count = usize::from(r.u16()?);
            for _ in 0..r.count(count, MIN_ELEMENT_LEN)? {
                skip_value(r, depth + 1)?;
            }
        }
        TYPE_TABLE => {
            check_depth(depth)?;
            skip_table(r, depth)?;
        }
        TYPE_DECIMAL => {
            r.raw(1 + 4)?;
        }
        other => return Err(bad_type(other)),
    }
    Ok(())
}

fn read_float(r: &mut Reader<'_>) -> Result<f64, WireError> {
    let f = f64::from_bits(r.u64()?);
    check_finite(f)?;
    Ok(f)
}

/// NaN has many encodings and no equality, and RabbitMQ (Erlang) has neither NaN nor
/// infinities: they are refused, so every float has one encoding and compares.
fn check_finite(f: f64) -> Result<(), WireError> {
    if f.is_finite() {
        Ok(())
    } else {
        Err(WireError::InvalidValue {
            what: "header float (NaN and infinities are not allowed)",
            value: f.to_bits(),
        })
    }
}

/// `depth`: the depth of an array or table value about to be read or written.
fn check_depth(depth: usize) -> Result<(), WireError> {
    if depth > MAX_HEADER_DEPTH {
        return Err(WireError::InvalidValue {
            what: "header nesting depth (at most 16)",
            value: depth as u64,
        });
    }
    Ok(())
}

fn bad_type(code: u8) -> WireError {
    WireError::InvalidValue {
        what: "header type",
        value: u64::from(code),
    }
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
            ("f".into(), HeaderValue::Float(-0.0)),
            ("v".into(), HeaderValue::Void),
            (
                "a".into(),
                HeaderValue::Array(vec![
                    HeaderValue::Int(1),
                    HeaderValue::Array(vec![]),
                    HeaderValue::Table(vec![("k".into(), HeaderValue::Void)]),
                ]),
            ),
            ("t".into(), HeaderValue::Table(vec![])),
            ("ts".into(), HeaderValue::Timestamp(u64::MAX)),
            (
                "d".into(),
                HeaderValue::Decimal(Decimal {
                    scale: 255,
                    value: u32::MAX,
                }),
            ),
        ]
    }

    /// A table holding `arrays` arrays nested in one another, the innermost empty.
    fn nested_arrays_bytes(arrays: usize) -> Vec<u8> {
        let mut bytes = b"\x01\x00\x01\x00k".to_vec();
        for _ in 1..arrays {
            bytes.extend_from_slice(b"\x07\x01\x00");
        }
        bytes.extend_from_slice(b"\x07\x00\x00");
        bytes
    }

    fn nested_arrays(arrays: usize) -> Headers {
        let mut value = HeaderValue::Array(vec![]);
        for _ in 1..arrays {
            value = HeaderValue::Array(vec![value]);
        }
        vec![("k".into(), value)]
    }

    #[test]
    fn exact_bytes_of_every_value_type() {
        let headers: Headers = vec![
            ("f".into(), HeaderValue::Float(1.5)),
            ("v".into(), HeaderValue::Void),
            (
                "a".into(),
                HeaderValue::Array(vec![HeaderValue::Int(1), HeaderValue::Void]),
            ),
            (
                "t".into(),
                HeaderValue::Table(vec![("k".into(), HeaderValue::Bool(true))]),
            ),
            ("ts".into(), HeaderValue::Timestamp(1_700_000_000)),
            (
                "d".into(),
                HeaderValue::Decimal(Decimal {
                    scale: 2,
                    value: 1234,
                }),
            ),
        ];
        let expected: &[u8] = &[
            0x06, 0x00, // six entries
            0x01, 0x00, b'f', 0x05, 0, 0, 0, 0, 0, 0, 0xf8, 0x3f, // float 1.5
            0x01, 0x00, b'v', 0x06, // void
            0x01, 0x00, b'a', 0x07, 0x02, 0x00, // array of 2:
            0x02, 1, 0, 0, 0, 0, 0, 0, 0,    // integer 1
            0x06, // void
            0x01, 0x00, b't', 0x08, 0x01, 0x00, // table of 1:
            0x01, 0x00, b'k', 0x03, 0x01, // k = true
            0x02, 0x00, b't', b's', 0x09, 0x00, 0xf1, 0x53, 0x65, 0, 0, 0, 0, // timestamp
            0x01, 0x00, b'd', 0x0a, 0x02, 0xd2, 0x04, 0x00, 0x00, // decimal 12.34
        ];
        let mut buf = BytesMut::new();
        put_headers(&mut buf, &headers).unwrap();
        assert_eq!(&buf[..], expected);
        assert_eq!(headers_len(&headers), expected.len());
        assert_eq!(read_headers(&mut Reader::new(expected)).unwrap(), headers);
    }

    #[test]
    fn negative_zero_keeps_its_encoding_and_nan_and_infinities_are_refused() {
        let zero = vec![("z".to_owned(), HeaderValue::Float(-0.0))];
        let mut buf = BytesMut::new();
        put_headers(&mut buf, &zero).unwrap();
        assert_eq!(&buf[6..], &[0, 0, 0, 0, 0, 0, 0, 0x80]);
        let back = read_headers(&mut Reader::new(&buf)).unwrap();
        assert_eq!(back, zero);
        assert_ne!(back[0].1, HeaderValue::Float(0.0), "structurally distinct");
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let table = vec![("z".to_owned(), HeaderValue::Float(bad))];
            assert!(put_headers(&mut BytesMut::new(), &table).is_err(), "{bad}");
            let mut bytes = b"\x01\x00\x01\x00z\x05".to_vec();
            bytes.extend_from_slice(&bad.to_bits().to_le_bytes());
            assert!(read_headers(&mut Reader::new(&bytes)).is_err(), "{bad}");
            assert!(skip_headers(&mut Reader::new(&bytes)).is_err(), "{bad}");
        }
        // A NaN with another payload is refused as well.
        let mut bytes = b"\x01\x00\x01\x00z\x05".to_vec();
        bytes.extend_from_slice(&0x7ff8_0000_0000_0001u64.to_le_bytes());
        assert!(read_headers(&mut Reader::new(&bytes)).is_err());
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_refused_both_ways() {
        let deepest = nested_arrays(MAX_HEADER_DEPTH);
        let mut buf = BytesMut::new();
        put_headers(&mut buf, &deepest).unwrap();
        assert_eq!(&buf[..], nested_arrays_bytes(MAX_HEADER_DEPTH));
        assert_eq!(read_headers(&mut Reader::new(&buf)).unwrap(), deepest);
        assert!(skip_headers(&mut Reader::new(&buf)).is_ok());

        let too_deep = nested_arrays(MAX_HEADER_DEPTH + 1);
        assert!(matches!(
            put_headers(&mut BytesMut::new(), &too_deep),
            Err(WireError::InvalidValue { value: 17, .. })
        ));
        let bytes = nested_arrays_bytes(MAX_HEADER_DEPTH + 1);
        assert!(matches!(
            read_headers(&mut Reader::new(&bytes)),
            Err(WireError::InvalidValue { value: 17, .. })
        ));
        assert!(skip_headers(&mut Reader::new(&bytes)).is_err());

        // Tables count as arrays do.
        let mut table = HeaderValue::Void;
        for _ in 0..=MAX_HEADER_DEPTH {
            table = HeaderValue::Table(vec![("t".into(), table)]);
        }
        assert!(put_headers(&mut BytesMut::new(), &[("k".into(), table)]).is_err());
        // A hostile table far deeper than the limit is refused without exhausting the stack.
        let bytes = nested_arrays_bytes(20_000);
        assert!(read_headers(&mut Reader::new(&bytes)).is_err());
        assert!(skip_headers(&mut Reader::new(&bytes)).is_err());
    }

    #[test]
    fn repeated_keys_in_nested_tables_are_refused() {
        let dup = b"\x01\x00\x01\x00t\x08\x02\x00\x01\x00k\x06\x01\x00k\x06";
        assert!(matches!(
            read_headers(&mut Reader::new(dup)),
            Err(WireError::DuplicateHeader { .. })
        ));
        assert!(skip_headers(&mut Reader::new(dup)).is_err());
        let table = HeaderValue::Table(vec![
            ("k".into(), HeaderValue::Void),
            ("k".into(), HeaderValue::Void),
        ]);
        assert!(put_headers(&mut BytesMut::new(), &[("t".into(), table)]).is_err());
    }

    #[test]
    fn decimals_print_and_parse_with_their_scale() {
        let d = |scale, value| Decimal { scale, value };
        assert_eq!(d(2, 1230).to_string(), "12.30");
        assert_eq!(d(3, 5).to_string(), "0.005");
        assert_eq!(d(0, 7).to_string(), "7");
        assert_eq!("12.30".parse(), Ok(d(2, 1230)));
        assert_eq!("0.005".parse(), Ok(d(3, 5)));
        assert_eq!("7".parse(), Ok(d(0, 7)));
        assert_eq!("4294967295".parse(), Ok(d(0, u32::MAX)));
        for bad in ["", ".5", "5.", "-1", "1e3", "4294967296", "1.2.3", " 1"] {
            assert!(bad.parse::<Decimal>().is_err(), "{bad:?}");
        }
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
        let bad_type = b"\x01\x00\x01\x00k\x0b\x00";
        assert!(matches!(
            read_headers(&mut Reader::new(bad_type)),
            Err(WireError::InvalidValue { .. })
        ));
    }
}

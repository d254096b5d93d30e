//! Field encodings shared by every message (protocol.md §2): little-endian integers,
//! booleans, `str` (u16 length + UTF-8) and `blob` (u32 length + bytes).
//!
//! Writers append to a [`BytesMut`]; the [`Reader`] checks every length before it slices, so
//! a hostile payload can make decoding fail but never panic or over-allocate.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::WireError;

/// Longest `str` field: its length prefix is a u16.
pub const MAX_STR_LEN: usize = u16::MAX as usize;
/// Longest `blob` field: its length prefix is a u32.
pub const MAX_BLOB_LEN: usize = u32::MAX as usize;

/// A bounds-checked cursor over a payload.
///
/// Built with [`Reader::from_bytes`], blobs are zero-copy slices of the source `Bytes`;
/// built with [`Reader::new`] over a plain slice, they are copied.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    owner: Option<&'a Bytes>,
}

impl<'a> Reader<'a> {
    /// A reader over a plain slice.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader {
            buf,
            pos: 0,
            owner: None,
        }
    }

    /// A reader whose blobs share `buf`'s storage instead of copying.
    pub fn from_bytes(buf: &'a Bytes) -> Self {
        Reader {
            buf,
            pos: 0,
            owner: Some(buf),
        }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Fails with [`WireError::TrailingBytes`] unless every byte was consumed.
    pub fn finish(&self) -> Result<(), WireError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(WireError::TrailingBytes { count }),
        }
    }

    /// The next `n` bytes, borrowed.
    pub fn raw(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let have = self.remaining();
        if n > have {
            return Err(WireError::UnexpectedEof {
                offset: self.pos,
                need: n,
                have,
            });
        }
        let start = self.pos;
        self.pos += n;
        Ok(&self.buf[start..self.pos])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.raw(N)?);
        Ok(out)
    }

    /// A `u8`.
    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, WireError> {
        self.array().map(u16::from_le_bytes)
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        self.array().map(u32::from_le_bytes)
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, WireError> {
        self.array().map(u64::from_le_bytes)
    }

    /// A little-endian two's-complement `i32`.
    pub fn i32(&mut self) -> Result<i32, WireError> {
        self.array().map(i32::from_le_bytes)
    }

    /// A little-endian two's-complement `i64`.
    pub fn i64(&mut self) -> Result<i64, WireError> {
        self.array().map(i64::from_le_bytes)
    }

    /// A `bool`: one byte, 0 or 1.
    pub fn bool(&mut self) -> Result<bool, WireError> {
        let offset = self.pos;
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(WireError::InvalidBool { offset, value }),
        }
    }

    /// A flags byte, failing if any bit outside `defined` is set.
    pub fn flags_u8(&mut self, what: &'static str, defined: u8) -> Result<u8, WireError> {
        let bits = self.u8()?;
        check_reserved(what, u64::from(bits), u64::from(defined))?;
        Ok(bits)
    }

    /// A little-endian u16 flags field, failing if any bit outside `defined` is set.
    pub fn flags_u16(&mut self, what: &'static str, defined: u16) -> Result<u16, WireError> {
        let bits = self.u16()?;
        check_reserved(what, u64::from(bits), u64::from(defined))?;
        Ok(bits)
    }

    /// A `str`, borrowed.
    pub fn str(&mut self) -> Result<&'a str, WireError> {
        let len = usize::from(self.u16()?);
        let offset = self.pos;
        let raw = self.raw(len)?;
        std::str::from_utf8(raw).map_err(|_| WireError::InvalidUtf8 { offset })
    }

    /// A `str`, owned.
    pub fn string(&mut self) -> Result<String, WireError> {
        self.str().map(str::to_owned)
    }

    /// A `blob`, borrowed.
    pub fn blob_slice(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.u32()? as usize;
        self.raw(len)
    }

    /// A `blob` as `Bytes`: a zero-copy slice when the reader was built with
    /// [`Reader::from_bytes`].
    pub fn blob(&mut self) -> Result<Bytes, WireError> {
        let slice = self.blob_slice()?;
        Ok(match self.owner {
            Some(owner) => owner.slice_ref(slice),
            None => Bytes::copy_from_slice(slice),
        })
    }

    /// An item count, checked against the bytes left: `count` items of at least
    /// `min_item_len` bytes each must fit, so a forged count cannot trigger a huge allocation.
    pub fn count(&mut self, count: usize, min_item_len: usize) -> Result<usize, WireError> {
        let need = count.saturating_mul(min_item_len);
        let have = self.remaining();
        if need > have {
            return Err(WireError::UnexpectedEof {
                offset: self.pos,
                need,
                have,
            });
        }
        Ok(count)
    }
}

fn check_reserved(what: &'static str, bits: u64, defined: u64) -> Result<(), WireError> {
    match bits & !defined {
        0 => Ok(()),
        bits => Err(WireError::ReservedBits { what, bits }),
    }
}

/// Appends a `u8`.
pub fn put_u8(buf: &mut BytesMut, v: u8) {
    buf.put_u8(v);
}

/// Appends a little-endian `u16`.
pub fn put_u16(buf: &mut BytesMut, v: u16) {
    buf.put_u16_le(v);
}

/// Appends a little-endian `u32`.
pub fn put_u32(buf: &mut BytesMut, v: u32) {
    buf.put_u32_le(v);
}

/// Appends a little-endian `u64`.
pub fn put_u64(buf: &mut BytesMut, v: u64) {
    buf.put_u64_le(v);
}

/// Appends a little-endian `i32`.
pub fn put_i32(buf: &mut BytesMut, v: i32) {
    buf.put_i32_le(v);
}

/// Appends a little-endian `i64`.
pub fn put_i64(buf: &mut BytesMut, v: i64) {
    buf.put_i64_le(v);
}

/// Appends a `bool` as 0 or 1.
pub fn put_bool(buf: &mut BytesMut, v: bool) {
    buf.put_u8(u8::from(v));
}

/// Appends a `str`; fails if it is longer than [`MAX_STR_LEN`] bytes.
pub fn put_str(buf: &mut BytesMut, what: &'static str, s: &str) -> Result<(), WireError> {
    let len = checked_len(what, s.len(), MAX_STR_LEN)?;
    buf.put_u16_le(len as u16);
    buf.put_slice(s.as_bytes());
    Ok(())
}

/// Appends a `blob`; fails if it is longer than [`MAX_BLOB_LEN`] bytes.
pub fn put_blob(buf: &mut BytesMut, what: &'static str, b: &[u8]) -> Result<(), WireError> {
    let len = checked_len(what, b.len(), MAX_BLOB_LEN)?;
    buf.put_u32_le(len as u32);
    buf.put_slice(b);
    Ok(())
}

/// `len` if it is at most `max`, else [`WireError::TooLong`].
pub fn checked_len(what: &'static str, len: usize, max: usize) -> Result<usize, WireError> {
    if len > max {
        Err(WireError::TooLong { what, len, max })
    } else {
        Ok(len)
    }
}

/// Encoded size of a `str` holding `s`.
pub const fn str_len(s: &str) -> usize {
    2 + s.len()
}

/// Encoded size of a `blob` holding `b`.
pub const fn blob_len(b: &[u8]) -> usize {
    4 + b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_little_endian() {
        let mut buf = BytesMut::new();
        put_u8(&mut buf, 0x01);
        put_u16(&mut buf, 0x0302);
        put_u32(&mut buf, 0x0706_0504);
        put_u64(&mut buf, 0x0f0e_0d0c_0b0a_0908);
        put_i64(&mut buf, -2);
        assert_eq!(
            &buf[..],
            &[
                1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0xfe, 0xff, 0xff, 0xff, 0xff,
                0xff, 0xff, 0xff
            ]
        );
        let mut r = Reader::new(&buf);
        assert_eq!(r.u8().unwrap(), 1);
        assert_eq!(r.u16().unwrap(), 0x0302);
        assert_eq!(r.u32().unwrap(), 0x0706_0504);
        assert_eq!(r.u64().unwrap(), 0x0f0e_0d0c_0b0a_0908);
        assert_eq!(r.i64().unwrap(), -2);
        r.finish().unwrap();
    }

    #[test]
    fn str_and_blob_round_trip() {
        let mut buf = BytesMut::new();
        put_str(&mut buf, "s", "héllo").unwrap();
        put_blob(&mut buf, "b", b"\x00\x01").unwrap();
        assert_eq!(
            &buf[..],
            b"\x06\x00h\xc3\xa9llo\x02\x00\x00\x00\x00\x01".as_slice()
        );
        let frozen = buf.freeze();
        let mut r = Reader::from_bytes(&frozen);
        assert_eq!(r.str().unwrap(), "héllo");
        let blob = r.blob().unwrap();
        assert_eq!(&blob[..], b"\x00\x01");
        // Zero-copy: the blob points into the frozen buffer.
        assert_eq!(blob.as_ptr(), frozen[frozen.len() - 2..].as_ptr());
        r.finish().unwrap();
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(matches!(
            Reader::new(&[2]).bool(),
            Err(WireError::InvalidBool { value: 2, .. })
        ));
        assert!(matches!(
            Reader::new(&[1, 0, 0xff]).str(),
            Err(WireError::InvalidUtf8 { offset: 2 })
        ));
        assert!(matches!(
            Reader::new(&[5, 0, b'a']).str(),
            Err(WireError::UnexpectedEof {
                offset: 2,
                need: 5,
                have: 1
            })
        ));
        assert!(matches!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff]).blob(),
            Err(WireError::UnexpectedEof { .. })
        ));
        assert!(matches!(
            Reader::new(&[0b100]).flags_u8("f", 0b11),
            Err(WireError::ReservedBits { bits: 0b100, .. })
        ));
        assert!(Reader::new(&[0; 10]).count(usize::MAX, 8).is_err());
        assert_eq!(
            Reader::new(&[1]).finish(),
            Err(WireError::TrailingBytes { count: 1 })
        );
    }

    #[test]
    fn oversized_strings_are_refused_when_encoding() {
        let long = "x".repeat(MAX_STR_LEN + 1);
        let mut buf = BytesMut::new();
        assert!(matches!(
            put_str(&mut buf, "name", &long),
            Err(WireError::TooLong { what: "name", .. })
        ));
        assert!(buf.is_empty());
    }
}

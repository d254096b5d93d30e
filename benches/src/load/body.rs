//! The generator's header at the start of every message body.
//!
//! | bytes  | field                                                      |
//! | ------ | ---------------------------------------------------------- |
//! | 0..8   | send time, nanoseconds since the run's shared `Instant`    |
//! | 8..12  | producer number                                            |
//! | 12..16 | magic `SLBN`, to tell our bodies from anything else        |
//! | 16..24 | the producer's sequence number of the message              |
//!
//! All little-endian; the rest of the body is zeros.

use bytes::{BufMut, Bytes, BytesMut};

/// Length of the header.
pub const HEADER_LEN: usize = 24;
const MAGIC: [u8; 4] = *b"SLBN";

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub sent_ns: u64,
    pub producer: u32,
    pub seq: u64,
}

impl Header {
    /// Reads the header of a body; `None` if it is not one of ours.
    pub fn read(body: &[u8]) -> Option<Header> {
        let header = body.get(..HEADER_LEN)?;
        if header[12..16] != MAGIC {
            return None;
        }
        let u64_at =
            |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
        Some(Header {
            sent_ns: u64_at(0),
            producer: u32::from_le_bytes(header[8..12].try_into().expect("4 bytes")),
            seq: u64_at(16),
        })
    }
}

/// A zeroed body of `size` bytes to stamp copies of.
pub fn template(size: usize) -> Vec<u8> {
    vec![0; size.max(HEADER_LEN)]
}

/// A copy of `template` with the header written.
pub fn stamp(template: &[u8], sent_ns: u64, producer: u32, seq: u64) -> Bytes {
    let mut body = BytesMut::with_capacity(template.len());
    body.put_u64_le(sent_ns);
    body.put_u32_le(producer);
    body.put_slice(&MAGIC);
    body.put_u64_le(seq);
    body.put_slice(&template[HEADER_LEN..]);
    body.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let t = template(128);
        let body = stamp(&t, 123_456_789, 7, 42);
        assert_eq!(body.len(), 128);
        assert_eq!(
            Header::read(&body),
            Some(Header {
                sent_ns: 123_456_789,
                producer: 7,
                seq: 42
            })
        );
        assert_eq!(Header::read(&body[..HEADER_LEN - 1]), None);
        assert_eq!(Header::read(&[0; 64]), None);
    }
}

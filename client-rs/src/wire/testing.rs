//! Test helpers shared by the message modules: hex parsing and the checks every message gets
//! (exact bytes, round trip, every truncated prefix rejected).

use std::fmt::Debug;

use bytes::{Bytes, BytesMut};

use super::frame::{Frame, FrameBody, FrameDecoder, Payload};
use super::primitives::Reader;

/// Parses whitespace-separated hex pairs; `#` starts a comment that runs to the end of the line.
pub(crate) fn hex(s: &str) -> Vec<u8> {
    s.lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(str::split_whitespace)
        .flat_map(|word| {
            assert!(word.len() % 2 == 0, "odd hex word {word:?}");
            (0..word.len())
                .step_by(2)
                .map(move |i| u8::from_str_radix(&word[i..i + 2], 16).expect("hex digit"))
        })
        .collect()
}

/// Checks that `value` encodes to exactly `expected`, decodes back from it (from `Bytes` and
/// from a plain slice), and that no strict prefix of it decodes.
pub(crate) fn check_payload<T: Payload + PartialEq + Debug>(value: &T, expected: &[u8]) {
    let mut buf = BytesMut::new();
    value.encode(&mut buf).expect("encode");
    assert_eq!(
        &buf[..],
        expected,
        "encoding of {value:?}\n got: {:02x?}",
        &buf[..]
    );
    let bytes = Bytes::copy_from_slice(expected);
    assert_eq!(&T::decode_exact(&bytes).expect("decode"), value);
    let mut r = Reader::new(expected);
    assert_eq!(&T::decode(&mut r).expect("decode slice"), value);
    r.finish().expect("whole payload consumed");
    for i in 0..expected.len() {
        let prefix = Bytes::copy_from_slice(&expected[..i]);
        assert!(
            T::decode_exact(&prefix).is_err(),
            "prefix of {i} bytes of {value:?} was accepted"
        );
    }
}

/// Checks that `frame` encodes to exactly `expected`, that a decoder returns it from exactly
/// those bytes, `None` for every prefix, and an error (never a frame) when the length prefix
/// is shortened to cut the payload.
pub(crate) fn check_frame<B: FrameBody + PartialEq + Debug>(frame: &Frame<B>, expected: &[u8]) {
    let max = u32::MAX;
    let mut buf = BytesMut::new();
    frame.encode(&mut buf, max).expect("encode");
    assert_eq!(&buf[..], expected, "got: {:02x?}", &buf[..]);
    let decoder = FrameDecoder::new(max);
    let mut input = BytesMut::from(expected);
    assert_eq!(
        decoder.decode::<B>(&mut input).expect("decode").as_ref(),
        Some(frame)
    );
    assert!(input.is_empty());
    for i in 0..expected.len() {
        let mut input = BytesMut::from(&expected[..i]);
        assert_eq!(decoder.decode::<B>(&mut input), Ok(None), "prefix {i}");
    }
    for payload_len in 0..expected.len() - 12 {
        let mut cut = BytesMut::from(&expected[..12 + payload_len]);
        cut[..4].copy_from_slice(&(8 + payload_len as u32).to_le_bytes());
        assert!(
            decoder.decode::<B>(&mut cut).is_err(),
            "payload cut to {payload_len} bytes was accepted"
        );
    }
}

/// [`check_payload`] for a listing request (protocol.md §15), whose empty payload is the
/// first page with the default limit: `expected` must be that value's encoding, every other
/// strict prefix is rejected, and the empty payload decodes to `T::default()`.
pub(crate) fn check_page_request<T: Payload + PartialEq + Debug + Default>(
    value: &T,
    expected: &[u8],
) {
    let mut buf = BytesMut::new();
    value.encode(&mut buf).expect("encode");
    assert_eq!(&buf[..], expected, "encoding of {value:?}");
    let bytes = Bytes::copy_from_slice(expected);
    assert_eq!(&T::decode_exact(&bytes).expect("decode"), value);
    assert_eq!(T::decode_exact(&Bytes::new()).expect("empty"), T::default());
    for i in 1..expected.len() {
        let prefix = Bytes::copy_from_slice(&expected[..i]);
        assert!(
            T::decode_exact(&prefix).is_err(),
            "prefix of {i} bytes of {value:?} was accepted"
        );
    }
}

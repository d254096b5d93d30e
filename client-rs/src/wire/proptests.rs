//! Short property runs of the entry points the fuzz targets drive (fuzz/, docs/fuzzing.md):
//! arbitrary bytes into the frame decoder, the header table and the meta block never panic,
//! the decoders agree with each other, and valid values round trip. Case counts are bounded so
//! the whole file takes well under a second in a debug build; `scripts/fuzz` runs the same
//! checks for minutes.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::header::skip_headers;
use super::*;

/// A meta block with no exchange, no routing key and only the headers property; the header
/// table follows.
const META_WITH_HEADERS: [u8; 7] = [0, 0, 0, 0, 0, 0x80, 0];

/// Every value type, arrays and tables nested a few levels.
fn header_value() -> impl Strategy<Value = HeaderValue> {
    let leaf = prop_oneof![
        "\\PC{0,8}".prop_map(HeaderValue::Str),
        any::<i64>().prop_map(HeaderValue::Int),
        any::<bool>().prop_map(HeaderValue::Bool),
        proptest::collection::vec(any::<u8>(), 0..8)
            .prop_map(|v| HeaderValue::Bytes(Bytes::from(v))),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(HeaderValue::Float),
        Just(HeaderValue::Void),
        any::<u64>().prop_map(HeaderValue::Timestamp),
        (any::<u8>(), any::<u32>()).prop_map(|(scale, value)| HeaderValue::Decimal(
            super::header::Decimal { scale, value }
        )),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(HeaderValue::Array),
            proptest::collection::hash_map("\\PC{0,4}", inner, 0..4)
                .prop_map(|m| HeaderValue::Table(m.into_iter().collect())),
        ]
    })
}

/// Tables with unique keys, in an arbitrary (not sorted) order.
fn headers() -> impl Strategy<Value = Headers> {
    proptest::collection::hash_map("\\PC{0,6}", header_value(), 0..5)
        .prop_map(|m| m.into_iter().collect())
}

/// A header table's bytes, sometimes valid, with a few bytes overwritten.
fn mutated_table() -> impl Strategy<Value = Vec<u8>> {
    (
        headers(),
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
    )
        .prop_map(|(table, edits)| {
            let mut buf = BytesMut::new();
            put_headers(&mut buf, &table).unwrap();
            let mut bytes = buf.to_vec();
            for (at, value) in edits {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            bytes
        })
}

/// Decodes `bytes` as a stream of frames the way a connection does, checking what each step
/// consumed; every decoded frame re-encodes to exactly its bytes.
fn decode_stream<B: FrameBody + PartialEq + std::fmt::Debug>(
    bytes: &[u8],
) -> Result<(), TestCaseError> {
    let decoder = FrameDecoder::new(1 << 16);
    let mut buf = BytesMut::from(bytes);
    loop {
        let start = bytes.len() - buf.len();
        match decoder.decode::<B>(&mut buf) {
            Ok(None) => {
                prop_assert_eq!(bytes.len() - buf.len(), start);
                return Ok(());
            }
            Ok(Some(frame)) => {
                let end = bytes.len() - buf.len();
                let mut again = BytesMut::new();
                frame.encode(&mut again, u32::MAX).unwrap();
                prop_assert_eq!(&again[..], &bytes[start..end]);
            }
            Err(e) => {
                let consumed = bytes.len() - buf.len() - start;
                if e.request_id().is_some() {
                    prop_assert!(consumed >= FRAME_HEADER_LEN, "{e} consumed {consumed}");
                } else {
                    prop_assert!(e.is_fatal());
                    prop_assert_eq!(consumed, 0);
                }
                if e.is_fatal() {
                    return Ok(());
                }
            }
        }
    }
}

/// Frames with a valid header around arbitrary payloads: most reach the payload decoders.
fn framed_payloads() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        (
            prop::sample::select(Opcode::ALL),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..48),
        ),
        1..4,
    )
    .prop_map(|frames| {
        let mut out = Vec::new();
        for (op, request_id, payload) in frames {
            out.extend_from_slice(&(8 + payload.len() as u32).to_le_bytes());
            out.extend_from_slice(&(op as u16).to_le_bytes());
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&request_id.to_le_bytes());
            out.extend_from_slice(&payload);
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn frame_streams_consume_exactly_what_each_step_says(bytes in framed_payloads()) {
        decode_stream::<Request>(&bytes)?;
        decode_stream::<Reply>(&bytes)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_header_table_and_its_two_readers_agree(
        bytes in prop_oneof![proptest::collection::vec(any::<u8>(), 0..64), mutated_table()],
    ) {
        let read = read_headers(&mut Reader::new(&bytes));
        let shared = Bytes::from(bytes.clone());
        let mut r = Reader::from_bytes(&shared);
        prop_assert_eq!(&read_headers(&mut r), &read);
        let mut skip = Reader::new(&bytes);
        let skipped = skip_headers(&mut skip);
        match read {
            Ok(table) => {
                let used = r.position();
                prop_assert_eq!(skipped.ok(), Some(&bytes[..used]));
                let mut again = BytesMut::new();
                put_headers(&mut again, &table).unwrap();
                prop_assert_eq!(&again[..], &bytes[..used]);
                prop_assert_eq!(headers_len(&table), used);
            }
            Err(_) => prop_assert!(skipped.is_err(), "skip_headers accepts what read_headers refuses"),
        }
    }

    #[test]
    fn header_tables_round_trip_in_their_order(table in headers()) {
        let mut buf = BytesMut::new();
        put_headers(&mut buf, &table).unwrap();
        prop_assert_eq!(buf.len(), headers_len(&table));
        let bytes = buf.freeze();
        let mut r = Reader::from_bytes(&bytes);
        prop_assert_eq!(read_headers(&mut r).unwrap(), table.clone());
        r.finish().unwrap();
        // In a meta block, a non-empty table is accepted as the headers property.
        let mut meta = META_WITH_HEADERS.to_vec();
        meta.extend_from_slice(&bytes);
        prop_assert_eq!(MetaView::parse(&meta).is_ok(), !table.is_empty());
    }

    #[test]
    fn meta_view_owned_meta_and_the_peeks_agree_on_any_block(
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let peeked_expiration = MetaView::peek_expiration_ms(&bytes);
        let peeked_persistent = MetaView::peek_persistent(&bytes);
        let owned = MessageMeta::from_slice(&bytes);
        match MetaView::parse(&bytes) {
            Ok(view) => {
                let meta = view.to_meta().unwrap();
                prop_assert_eq!(owned.as_ref(), Ok(&meta));
                prop_assert_eq!(peeked_expiration, view.expiration_ms);
                prop_assert_eq!(peeked_persistent, view.persistent);
                prop_assert_eq!(&meta.to_bytes().unwrap()[..], &bytes[..]);
            }
            Err(_) => prop_assert!(owned.is_err()),
        }
    }
}

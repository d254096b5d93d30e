//! Target `header`: the header table (protocol.md §2.3), read at the start of the input.
//!
//! Checks that a table read from a slice and from shared `Bytes` agree, that an accepted
//! table re-encodes to exactly the bytes it was read from, and that the validating skipper the
//! meta block uses (reached through [`MetaView::parse`]) accepts exactly what
//! [`read_headers`] accepts.

use bytes::{Bytes, BytesMut};
use sluice_client::wire::{headers_len, put_headers, read_headers, MetaView, Reader};

/// A meta block with no exchange, no routing key and only the headers property present; the
/// header table follows.
const META_WITH_HEADERS: [u8; 7] = [0, 0, 0, 0, 0, 0x80, 0];

/// Runs every check on `data`.
pub fn check(data: &[u8]) {
    let mut r = Reader::new(data);
    let read = read_headers(&mut r);
    let bytes = Bytes::copy_from_slice(data);
    let mut shared = Reader::from_bytes(&bytes);
    let read_shared = read_headers(&mut shared);
    assert_eq!(read, read_shared, "slice and Bytes readers disagree");

    let mut meta = META_WITH_HEADERS.to_vec();
    meta.extend_from_slice(data);
    let in_meta = MetaView::parse(&meta);

    let Ok(headers) = read else {
        assert!(
            in_meta.is_err(),
            "the meta block accepts a table read_headers refuses"
        );
        return;
    };
    let used = r.position();
    assert_eq!(shared.position(), used);
    let mut keys: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), headers.len(), "duplicate keys accepted");

    let mut again = BytesMut::new();
    put_headers(&mut again, &headers)
        .unwrap_or_else(|e| panic!("decoded table does not encode: {e}: {headers:?}"));
    assert_eq!(
        &again[..],
        &data[..used],
        "re-encoding differs: {headers:?}"
    );
    assert_eq!(headers_len(&headers), used);

    // In a meta block the table must be the last field and hold at least one entry.
    let whole_and_non_empty = used == data.len() && !headers.is_empty();
    assert_eq!(
        in_meta.is_ok(),
        whole_and_non_empty,
        "the meta block's header check disagrees with read_headers: {in_meta:?}"
    );
    if let Ok(view) = in_meta {
        assert_eq!(view.raw_headers, data);
        assert_eq!(view.headers().as_ref(), Ok(&headers));
    }
}

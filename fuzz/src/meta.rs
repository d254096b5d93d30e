//! Target `meta`: the meta block (protocol.md §8.1), which the broker validates once and then
//! routes, stores and delivers as raw bytes.
//!
//! The borrowing [`MetaView`], the owned [`MessageMeta`] and the cheap peeks the publish path
//! uses must agree on every input; an accepted block re-encodes to exactly its bytes.

use bytes::{Bytes, BytesMut};
use sluice_client::wire::{put_meta, MessageMeta, MetaView, Payload};

/// Runs every check on `data`.
pub fn check(data: &[u8]) {
    // The peeks run on blocks validated earlier, but must not panic on anything.
    let peeked_persistent = MetaView::peek_persistent(data);
    let peeked_expiration = MetaView::peek_expiration_ms(data);
    let owned = MessageMeta::from_slice(data);
    let bytes = Bytes::copy_from_slice(data);
    let zero_copy = MessageMeta::decode_exact(&bytes);
    let view = match MetaView::parse(data) {
        Ok(view) => view,
        Err(_) => {
            assert!(owned.is_err(), "MessageMeta accepts what MetaView refuses");
            assert!(
                zero_copy.is_err(),
                "decode_exact accepts what MetaView refuses"
            );
            return;
        }
    };
    let meta = view
        .to_meta()
        .unwrap_or_else(|e| panic!("validated block does not convert: {e}"));
    assert_eq!(owned.as_ref(), Ok(&meta));
    assert_eq!(zero_copy.as_ref(), Ok(&meta));
    assert_eq!(view.headers().as_ref(), Ok(&meta.properties.headers));
    assert_eq!(peeked_persistent, view.persistent);
    assert_eq!(peeked_expiration, view.expiration_ms);

    let encoded = meta
        .to_bytes()
        .unwrap_or_else(|e| panic!("decoded block does not encode: {e}: {meta:?}"));
    assert_eq!(&encoded[..], data, "re-encoding differs: {meta:?}");
    assert_eq!(meta.encoded_len(), data.len());
    let mut borrowed = BytesMut::new();
    put_meta(
        &mut borrowed,
        view.exchange,
        view.routing_key,
        view.mandatory,
        &meta.properties,
    )
    .expect("put_meta encodes what to_bytes encodes");
    assert_eq!(&borrowed[..], data);
}

//! Target `frame`: the frame decoder (protocol.md §3) and every Request/Reply payload decoder.
//!
//! The input is read three ways: as a stream of client-to-server frames, as a stream of
//! server-to-client frames, and (its first two bytes an opcode, the rest a payload) straight
//! into both payload decoders. Whatever decodes must re-encode to exactly the bytes it came
//! from (protocol.md §2.5: one encoding per value) and decode again to the same value.

use std::fmt::Debug;

use bytes::{Bytes, BytesMut};
use sluice_client::wire::{Frame, FrameBody, FrameDecoder, Reply, Request};

/// The largest length prefix accepted: enough for any test input, small enough that a forged
/// length reserves little.
const MAX_FRAME_LEN: u32 = 1 << 20;

/// Runs every check on `data`.
pub fn check(data: &[u8]) {
    frames::<Request>(data);
    frames::<Reply>(data);
    if let Some((opcode, payload)) = data.split_first_chunk::<2>() {
        let opcode = u16::from_le_bytes(*opcode);
        let payload = Bytes::copy_from_slice(payload);
        payload_round_trip::<Request>(opcode, &payload);
        payload_round_trip::<Reply>(opcode, &payload);
    }
}

/// Decodes every frame of `data` in one direction, as a connection would: until the buffer
/// holds no whole frame or a framing error ends the stream.
fn frames<B: FrameBody + PartialEq + Debug>(data: &[u8]) {
    let decoder = FrameDecoder::new(MAX_FRAME_LEN);
    let mut buf = BytesMut::from(data);
    loop {
        let start = data.len() - buf.len();
        match decoder.decode::<B>(&mut buf) {
            Ok(None) => {
                assert_eq!(
                    data.len() - buf.len(),
                    start,
                    "an incomplete frame was consumed"
                );
                break;
            }
            Ok(Some(frame)) => {
                let end = data.len() - buf.len();
                assert!(end > start, "a frame was decoded from no bytes");
                frame_round_trip(&frame, &data[start..end]);
            }
            Err(e) => {
                let consumed = data.len() - buf.len() - start;
                match e.request_id() {
                    // A bad frame (its length held): exactly that frame was cut out, so the
                    // error can name its request id.
                    Some(_) => assert!(consumed >= 12, "a rejected frame was not consumed"),
                    // A framing error: nothing is consumed, the stream is over.
                    None => {
                        assert!(e.is_fatal(), "{e} is neither fatal nor names a frame");
                        assert_eq!(consumed, 0, "a framing error consumed bytes");
                    }
                }
                if e.is_fatal() {
                    break;
                }
            }
        }
    }
}

fn frame_round_trip<B: FrameBody + PartialEq + Debug>(frame: &Frame<B>, original: &[u8]) {
    let mut again = BytesMut::new();
    frame
        .encode(&mut again, u32::MAX)
        .unwrap_or_else(|e| panic!("decoded frame does not encode: {e}: {frame:?}"));
    assert_eq!(&again[..], original, "re-encoding differs: {frame:?}");
    let decoded = FrameDecoder::new(u32::MAX)
        .decode::<B>(&mut again)
        .expect("re-encoded frame decodes")
        .expect("re-encoded frame is whole");
    assert_eq!(&decoded, frame);
}

fn payload_round_trip<B: FrameBody + PartialEq + Debug>(opcode: u16, payload: &Bytes) {
    let Ok(body) = B::decode_payload(opcode, payload) else {
        return;
    };
    assert_eq!(body.opcode() as u16, opcode, "decoded as another opcode");
    let mut again = BytesMut::new();
    body.encode_payload(&mut again)
        .unwrap_or_else(|e| panic!("decoded payload does not encode: {e}: {body:?}"));
    assert_eq!(&again[..], &payload[..], "re-encoding differs: {body:?}");
    let again = again.freeze();
    assert_eq!(B::decode_payload(opcode, &again).as_ref(), Ok(&body));
}

//! The connection's write buffer: frames are encoded back to back and written together.
//!
//! Consecutive published messages are packed into one `Publish` frame, whichever publish
//! calls they came from, up to the agreed maximum frame length (protocol.md §8.3). The open
//! frame's length and count are patched when it is closed, which happens before any other
//! frame is appended and before the buffer is written.

use bytes::BytesMut;

use crate::wire::{
    put_frame_header, FrameBody, Opcode, Payload, PublishMessage, Request, RequestId, WireError,
    FRAME_HEADER_LEN,
};

/// A `Publish` frame still being filled.
#[derive(Debug, Clone, Copy)]
struct OpenPublish {
    /// Offset of the frame's length prefix in the buffer.
    start: usize,
    /// Messages in the frame so far.
    count: u32,
}

/// Encoded frames waiting to be written.
#[derive(Debug)]
pub(crate) struct OutBuf {
    pub(crate) buf: BytesMut,
    max_frame_len: u32,
    open: Option<OpenPublish>,
}

/// Bytes of a `Publish` frame before its first message: header plus count.
const PUBLISH_OVERHEAD: usize = FRAME_HEADER_LEN + 4;

impl OutBuf {
    pub(crate) fn new(max_frame_len: u32) -> Self {
        OutBuf {
            buf: BytesMut::with_capacity(64 * 1024),
            max_frame_len,
            open: None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Appends one frame. On error (a field too long, a frame above the maximum) nothing is
    /// appended.
    pub(crate) fn frame(&mut self, id: RequestId, body: Request) -> Result<(), WireError> {
        self.close_publish();
        let start = self.buf.len();
        put_frame_header(&mut self.buf, body.opcode(), id, 0)?;
        if let Err(e) = body.encode_payload(&mut self.buf) {
            self.buf.truncate(start);
            return Err(e);
        }
        self.finish_frame(start)
            .inspect_err(|_| self.buf.truncate(start))
    }

    /// Appends a message to the open `Publish` frame, or to a new one (named by `new_id()`)
    /// when there is none or it is full. The caller has checked that the message fits an
    /// empty frame.
    pub(crate) fn publish(
        &mut self,
        message: &PublishMessage,
        new_id: impl FnOnce() -> RequestId,
    ) -> Result<(), WireError> {
        let need = message.encoded_len();
        if let Some(open) = self.open {
            let len = self.buf.len() - open.start - 4;
            if len + need > self.max_frame_len as usize || open.count == u32::MAX {
                self.close_publish();
            }
        }
        let open = match self.open {
            Some(open) => open,
            None => {
                if PUBLISH_OVERHEAD - 4 + need > self.max_frame_len as usize {
                    return Err(WireError::FrameTooLarge {
                        len: PUBLISH_OVERHEAD - 4 + need,
                        max: self.max_frame_len,
                    });
                }
                let start = self.buf.len();
                put_frame_header(&mut self.buf, Opcode::Publish, new_id(), 0)?;
                self.buf.extend_from_slice(&0u32.to_le_bytes());
                OpenPublish { start, count: 0 }
            }
        };
        let before = self.buf.len();
        if let Err(e) = message.encode(&mut self.buf) {
            self.buf.truncate(before);
            self.open = Some(open);
            return Err(e);
        }
        self.open = Some(OpenPublish {
            count: open.count + 1,
            ..open
        });
        Ok(())
    }

    /// Finishes the open `Publish` frame, if any.
    pub(crate) fn close_publish(&mut self) {
        let Some(open) = self.open.take() else {
            return;
        };
        if open.count == 0 {
            // Its only message failed to encode: drop the empty frame.
            self.buf.truncate(open.start);
            return;
        }
        let count_at = open.start + FRAME_HEADER_LEN;
        self.buf[count_at..count_at + 4].copy_from_slice(&open.count.to_le_bytes());
        // Cannot fail: `publish` kept the frame within the maximum.
        let _ = self.finish_frame(open.start);
    }

    /// Writes the length prefix of the frame starting at `start`.
    fn finish_frame(&mut self, start: usize) -> Result<(), WireError> {
        let len = self.buf.len() - start - 4;
        if len > self.max_frame_len as usize {
            return Err(WireError::FrameTooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        self.buf[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
        Ok(())
    }

    /// True when no `Publish` frame is open (the buffer may be written).
    pub(crate) fn is_sealed(&self) -> bool {
        self.open.is_none()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::wire::{Ack, DeliveryTag, FrameDecoder, MessageMeta, Publish};

    fn message(body_len: usize) -> PublishMessage {
        PublishMessage::new(&MessageMeta::new("", "q"), vec![7u8; body_len]).unwrap()
    }

    fn decode_all(buf: &mut BytesMut, max: u32) -> Vec<(RequestId, Request)> {
        let decoder = FrameDecoder::new(max);
        let mut frames = Vec::new();
        while let Some(frame) = decoder.decode::<Request>(buf).unwrap() {
            frames.push((frame.request_id, frame.body));
        }
        assert!(buf.is_empty());
        frames
    }

    #[test]
    fn consecutive_messages_share_a_frame_until_it_is_full() {
        let max = 64 * 1024;
        let mut out = OutBuf::new(max);
        let mut ids = 10..;
        let mut next = || RequestId(ids.next().unwrap());
        for _ in 0..3 {
            out.publish(&message(30_000), &mut next).unwrap();
        }
        out.frame(
            RequestId(99),
            Request::Ack(Ack {
                delivery_tag: DeliveryTag(1),
                multiple: false,
            }),
        )
        .unwrap();
        out.publish(&message(1), &mut next).unwrap();
        assert!(!out.is_sealed());
        out.close_publish();
        assert!(out.is_sealed());
        let frames = decode_all(&mut out.buf, max);
        let counts: Vec<(u32, usize)> = frames
            .iter()
            .map(|(id, body)| match body {
                Request::Publish(Publish { messages }) => (id.0, messages.len()),
                _ => (id.0, 0),
            })
            .collect();
        assert_eq!(counts, [(10, 2), (11, 1), (99, 0), (12, 1)]);
    }

    #[test]
    fn failed_encodings_leave_the_buffer_unchanged() {
        let mut out = OutBuf::new(64 * 1024);
        let too_big = message(64 * 1024);
        assert!(out.publish(&too_big, || RequestId(1)).is_err());
        out.close_publish();
        assert!(out.is_empty());
        let bad = Request::Get(crate::wire::Get {
            queue: "x".repeat(70_000),
        });
        assert!(out.frame(RequestId(2), bad).is_err());
        assert!(out.is_empty());
        let ok = PublishMessage {
            meta: Bytes::from_static(b"m"),
            body: Bytes::new(),
        };
        out.publish(&ok, || RequestId(3)).unwrap();
        out.close_publish();
        assert_eq!(decode_all(&mut out.buf, 64 * 1024).len(), 1);
    }
}

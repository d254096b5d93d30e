//! [`Output`]: what the session sends, on its way to the writer, counted against the
//! connection's [`Outbox`] so that a peer that stops reading holds a bounded amount of memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sluice_client::wire::{Frame, Reply, WireError};
use tokio::sync::mpsc;

use crate::queue::Outbox;

/// Encoded chunks the writer may have queued; each is one session round's output, and their
/// bytes are bounded by the outbox.
pub(super) const WRITER_CHUNKS: usize = 64;

/// The session's side of the socket: the encode buffer, the writer's channel, and the
/// watch for a peer whose socket stays full (NATS's slow-consumer rule).
pub(super) struct Output {
    buf: BytesMut,
    writer: mpsc::Sender<Bytes>,
    outbox: Arc<Outbox>,
    max_frame_len: u32,
    last_sent: Instant,
    stall: Stall,
}

/// Since when the outbox has been full without draining below its low watermark.
struct Stall {
    since: Option<Instant>,
    timeout: Duration,
}

impl Output {
    pub(super) fn new(
        writer: mpsc::Sender<Bytes>,
        outbox: Arc<Outbox>,
        max_frame_len: u32,
        slow_consumer_timeout: Duration,
    ) -> Self {
        Self {
            buf: BytesMut::with_capacity(64 * 1024),
            writer,
            outbox,
            max_frame_len,
            last_sent: Instant::now(),
            stall: Stall {
                since: None,
                timeout: slow_consumer_timeout,
            },
        }
    }

    /// The connection's outbox (shared with the queues and the writer).
    pub(super) fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Encodes a frame; its bytes count against the outbox from now on. A frame that cannot
    /// be encoded leaves nothing behind.
    pub(super) fn send(&mut self, frame: &Frame<Reply>) -> Result<(), WireError> {
        let before = self.buf.len();
        let result = frame.encode(&mut self.buf, self.max_frame_len);
        self.outbox.add(self.buf.len() - before);
        result
    }

    /// Takes over deliveries a queue counted when it handed them out: they are about to be
    /// encoded, and counted again as frame bytes.
    pub(super) fn take_over(&self, delivery_bytes: usize) {
        self.outbox.remove(delivery_bytes);
    }

    /// Whether encoded bytes wait for room in the writer's channel.
    pub(super) fn has_pending(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Resolves when the writer's channel has room (for a pending flush).
    pub(super) async fn writer_room(&self) {
        let _ = self.writer.reserve().await;
    }

    /// Resolves when the writer has stopped: the socket failed, so the session is over.
    pub(super) async fn writer_gone(&self) {
        self.writer.closed().await;
    }

    /// Hands what is encoded to the writer, if its channel has room; otherwise it stays here,
    /// still counted, until [`writer_room`](Self::writer_room) resolves.
    pub(super) fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if let Ok(permit) = self.writer.try_reserve() {
            permit.send(self.buf.split().freeze());
            self.last_sent = Instant::now();
        }
    }

    /// When the writer last got something to send.
    pub(super) fn last_sent(&self) -> Instant {
        self.last_sent
    }

    /// Whether the socket owes so much that the session must not take more on.
    pub(super) fn is_full(&self) -> bool {
        self.outbox.is_full()
    }

    /// Notes whether the outbox is full now, asking for a wake-up at its drain if so; a stall
    /// starts when it is first seen full.
    pub(super) fn observe(&mut self) {
        if self.outbox.accepts_more() {
            self.stall.since = None;
        } else if self.stall.since.is_none() {
            self.stall.since = Some(Instant::now());
        }
    }

    /// The outbox drained below its low watermark: any stall is over.
    pub(super) fn drained(&mut self) {
        self.stall.since = None;
    }

    /// When a stall that goes on makes this a slow consumer.
    pub(super) fn stall_deadline(&self) -> Option<Instant> {
        self.stall.since.map(|since| since + self.stall.timeout)
    }

    /// At the deadline: whether the peer is a slow consumer, its outbox still full. One that
    /// drained a little (without reaching the low watermark) starts a new stall when it is
    /// next seen full.
    pub(super) fn is_slow_consumer(&mut self) -> bool {
        if self.outbox.is_full() {
            return true;
        }
        self.stall.since = None;
        false
    }

    /// How long the peer has left its socket full, for the log.
    pub(super) fn stalled_for(&self) -> Duration {
        self.stall.since.map_or(Duration::ZERO, |s| s.elapsed())
    }
}

//! The queue's side of a move (crate::moves): messages taken for a move are held, neither
//! ready nor delivered, until the mover says they are stored durably in the destination
//! (then they are deleted here) or were not moved (then they are ready again, where they
//! were). Nothing about a hold is written to the log: after a crash a held message is simply
//! still here, so a move can duplicate a message but never lose it.

use std::collections::HashMap;

use sluice_client::wire::{ErrorCode, MetaView};

use super::{Actor, Deliverable};
use crate::error::RequestError;
use crate::queue::Incoming;

/// Messages held for moves, by seq.
#[derive(Debug, Default)]
pub(super) struct HeldForMoves {
    held: HashMap<u64, Hold>,
    bytes: u64,
}

/// One held message.
#[derive(Debug, Clone, Copy)]
struct Hold {
    /// Deliveries before it was taken (it keeps them if it returns).
    count: u32,
    /// Meta and body bytes.
    bytes: u64,
}

impl HeldForMoves {
    /// Messages held.
    pub(super) fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether `seq` is held.
    pub(super) fn contains(&self, seq: u64) -> bool {
        self.held.contains_key(&seq)
    }

    /// Bytes (meta + body) of the messages held.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    fn hold(&mut self, seq: u64, count: u32, bytes: u64) {
        self.held.insert(seq, Hold { count, bytes });
        self.bytes += bytes;
    }

    /// Ends the hold of `seq`; its delivery count, if it was held.
    fn release(&mut self, seq: u64) -> Option<u32> {
        let hold = self.held.remove(&seq)?;
        self.bytes -= hold.bytes;
        Some(hold.count)
    }
}

impl Actor {
    /// Takes up to `max_messages` ready messages (and `max_bytes`, but at least one) for a move.
    pub(super) fn take_for_move(
        &mut self,
        max_messages: usize,
        max_bytes: usize,
    ) -> Result<Vec<Incoming>, RequestError> {
        if self.exclusive_consumer {
            // As for `Get`: an exclusive consumer is promised every message.
            return Err(RequestError::new(
                ErrorCode::ResourceLocked,
                format!("queue '{}' has an exclusive consumer", self.meta.name),
            ));
        }
        let mut taken = Vec::new();
        let mut bytes = 0;
        while taken.len() < max_messages && (taken.is_empty() || bytes < max_bytes) {
            // Expired messages are dead-lettered on the way, as for a delivery.
            let Some(Deliverable {
                seq,
                count,
                delivery: d,
                ..
            }) = self.take_deliverable()
            else {
                break;
            };
            let size = (d.meta.len() + d.body.len()) as u64;
            bytes += size as usize;
            self.held.hold(seq, count - 1, size);
            // A copy may reach the destination and survive a crash that this queue's ack does
            // not: the original must then come back flagged `redelivered`.
            self.note_handed_out(seq);
            let persistent = MetaView::peek_persistent(&d.meta);
            taken.push(Incoming {
                // Its seq here names it in the destination's rejections.
                publish_seq: seq,
                meta: super::scheduled::without_delivery_delay(d.meta),
                body: d.body,
                persistent,
                trace: None,
            });
        }
        Ok(taken)
    }

    /// Deletes the messages a move stored elsewhere and makes the others ready again.
    pub(super) fn settle_move(&mut self, moved: &[u64], returned: &[u64]) {
        for &seq in moved {
            if self.held.release(seq).is_some() {
                self.ack_in_log(seq);
            }
        }
        for &seq in returned {
            if let Some(count) = self.held.release(seq) {
                // Ready again ahead of newer ones; a count of 0 still delivers it as a first
                // delivery.
                self.make_ready_again(seq, count);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::HeldForMoves;

    #[test]
    fn held_messages_count_their_bytes_until_released() {
        let mut held = HeldForMoves::default();
        held.hold(1, 0, 10);
        held.hold(2, 3, 5);
        assert_eq!((held.len(), held.bytes()), (2, 15));
        assert_eq!(held.release(2), Some(3));
        assert_eq!(held.release(2), None);
        assert_eq!((held.len(), held.bytes()), (1, 10));
    }
}

//! The bookkeeping of dead-lettering: copies on their way into the target queues, then the
//! originals waiting for the copies' sync before they are acked here (so a crash can
//! duplicate a dead-lettered message but never lose it). The actor's side, building and
//! routing the copies, is in `actor/dead_letter.rs`.

use std::collections::HashMap;

use super::DeathReason;
use crate::storage::Epoch;

/// Names the copies of one dead-lettered message (the `batch` of their publish).
pub(super) type CopyBatch = u64;

/// Dead-lettered messages whose copies are not durable yet.
#[derive(Debug, Default)]
pub(super) struct DeadLetters {
    last_batch: CopyBatch,
    /// Copies the target queues are storing, by batch.
    storing: HashMap<CopyBatch, StoringCopies>,
    /// Messages whose copies are stored, each waiting for its epoch to be synced.
    syncing: Vec<AwaitingSync>,
}

/// A dead-lettered message whose copies the target queues are storing.
#[derive(Debug)]
struct StoringCopies {
    /// Queues still to answer.
    waiting: usize,
    /// What every answer so far knows.
    stored: StoredCopies,
}

/// A dead-lettered message whose every target queue answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StoredCopies {
    /// The message here.
    pub(super) seq: u64,
    /// Why it left.
    pub(super) reason: DeathReason,
    /// The epoch that makes every stored copy durable (0: nothing to wait for).
    pub(super) epoch: Epoch,
    /// A target was out of disk: the message stays here and is tried again.
    pub(super) failed: bool,
}

/// A message acked here once `epoch` is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AwaitingSync {
    epoch: Epoch,
    seq: u64,
}

impl DeadLetters {
    /// The batch number for the copies of the next dead-lettered message.
    pub(super) fn next_batch(&mut self) -> CopyBatch {
        self.last_batch += 1;
        self.last_batch
    }

    /// Notes that `waiting` queues (at least one) are storing copies of message `seq`
    /// under `batch`.
    pub(super) fn storing(
        &mut self,
        batch: CopyBatch,
        seq: u64,
        reason: DeathReason,
        waiting: usize,
    ) {
        debug_assert!(waiting > 0);
        let stored = StoredCopies {
            seq,
            reason,
            epoch: 0,
            failed: false,
        };
        self.storing
            .insert(batch, StoringCopies { waiting, stored });
    }

    /// One target answered for `batch`: stored under `epoch`, or refused for lack of disk
    /// (`out_of_disk`). Once the last one answered, what they stored.
    pub(super) fn on_stored(
        &mut self,
        batch: CopyBatch,
        epoch: Epoch,
        out_of_disk: bool,
    ) -> Option<StoredCopies> {
        let entry = self.storing.get_mut(&batch)?;
        entry.waiting -= 1;
        entry.stored.epoch = entry.stored.epoch.max(epoch);
        entry.stored.failed |= out_of_disk;
        if entry.waiting > 0 {
            return None;
        }
        self.storing.remove(&batch).map(|e| e.stored)
    }

    /// Acks message `seq` once `epoch` is durable (see [`DeadLetters::take_durable`]).
    pub(super) fn await_sync(&mut self, seq: u64, epoch: Epoch) {
        self.syncing.push(AwaitingSync { epoch, seq });
    }

    /// Takes the messages whose copies are durable at `durable`.
    pub(super) fn take_durable(&mut self, durable: Epoch) -> Vec<u64> {
        if self.syncing.is_empty() {
            return Vec::new();
        }
        let done = self
            .syncing
            .iter()
            .filter(|a| a.epoch <= durable)
            .map(|a| a.seq)
            .collect();
        self.syncing.retain(|a| a.epoch > durable);
        done
    }

    /// Whether messages wait for their copies' sync.
    pub(super) fn any_syncing(&self) -> bool {
        !self.syncing.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_done_when_the_last_target_answers_with_the_highest_epoch() {
        let mut dead = DeadLetters::default();
        let batch = dead.next_batch();
        assert_ne!(dead.next_batch(), batch, "batches are not reused");
        dead.storing(batch, 7, DeathReason::Rejected, 2);
        assert_eq!(dead.on_stored(batch, 5, false), None);
        assert_eq!(
            dead.on_stored(batch, 3, false),
            Some(StoredCopies {
                seq: 7,
                reason: DeathReason::Rejected,
                epoch: 5,
                failed: false
            })
        );
        assert_eq!(dead.on_stored(batch, 3, false), None, "answered already");
    }

    #[test]
    fn one_target_out_of_disk_fails_the_whole_message() {
        let mut dead = DeadLetters::default();
        let batch = dead.next_batch();
        dead.storing(batch, 1, DeathReason::Expired, 2);
        dead.on_stored(batch, 0, true);
        assert!(dead.on_stored(batch, 4, false).unwrap().failed);
    }

    #[test]
    fn originals_are_released_once_their_epoch_is_durable() {
        let mut dead = DeadLetters::default();
        assert!(!dead.any_syncing());
        dead.await_sync(1, 3);
        dead.await_sync(2, 5);
        dead.await_sync(3, 0);
        assert!(dead.any_syncing());
        assert_eq!(dead.take_durable(3), [1, 3]);
        assert_eq!(dead.take_durable(4), Vec::<u64>::new());
        assert_eq!(dead.take_durable(5), [2]);
        assert!(!dead.any_syncing());
    }
}

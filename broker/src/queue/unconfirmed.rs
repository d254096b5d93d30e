//! Stored messages whose confirm waits for the sync of their epoch: the queue counts them as
//! confirmed then.

use std::collections::VecDeque;

use crate::storage::Epoch;

/// Messages stored under each epoch not yet durable, epochs ascending. Group commit keeps the
/// list short: one entry per epoch.
#[derive(Debug, Default)]
pub(super) struct Unconfirmed {
    pending: VecDeque<EpochMessages>,
}

/// How many messages an epoch makes durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EpochMessages {
    epoch: Epoch,
    messages: u64,
}

impl Unconfirmed {
    /// Notes `messages` stored under `epoch` (no older than any noted before).
    pub(super) fn add(&mut self, epoch: Epoch, messages: u64) {
        match self.pending.back_mut() {
            Some(last) if last.epoch == epoch => last.messages += messages,
            _ => self.pending.push_back(EpochMessages { epoch, messages }),
        }
    }

    /// Whether no message waits.
    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Takes the messages of the epochs durable at `durable`; how many.
    pub(super) fn take_durable(&mut self, durable: Epoch) -> u64 {
        let mut confirmed = 0;
        while let Some(first) = self.pending.front() {
            if first.epoch > durable {
                break;
            }
            confirmed += first.messages;
            self.pending.pop_front();
        }
        confirmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_confirmed_when_their_epoch_is_durable() {
        let mut u = Unconfirmed::default();
        assert!(u.is_empty());
        u.add(1, 3);
        u.add(1, 2);
        u.add(4, 10);
        assert_eq!(u.pending.len(), 2, "one entry per epoch");
        assert_eq!(u.take_durable(0), 0);
        assert_eq!(u.take_durable(3), 5);
        assert!(!u.is_empty());
        assert_eq!(u.take_durable(9), 10);
        assert!(u.is_empty());
    }
}

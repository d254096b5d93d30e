//! Publish dedup (queue arguments `dedup_window_ms` / `dedup_window_count`, protocol.md
//! §6.1, §8.4): a message whose `message_id` the queue accepted within its window is
//! confirmed but not stored again; a message without one is never a duplicate.
//!
//! # Surviving a restart
//! The window is rebuilt at start from two sources: the ids of the messages still in the
//! log (durable, or they would not be there), and the queue's [`journal`] of ids accepted
//! before, which covers messages since acked and deleted. An id is journaled only once its
//! message is durable (the group commit's epoch has passed), so the journal never remembers
//! a message a crash lost: a publisher retrying an unconfirmed message is never told
//! "duplicate" for a message that is not there. The journal's own appends are synced at
//! most once per maintenance round; an ack that became durable in that short gap can let
//! one retry through as a new message after a crash (stored twice, never lost).
//!
//! Memory is bounded by the window: `dedup_window_count` ids at most, and never more than
//! [`window::MAX_WINDOW_IDS`].

mod journal;
pub mod window;

use std::collections::VecDeque;
use std::path::Path;

use sluice_client::wire::{MetaView, QueueArguments};

use crate::error::RequestError;
use crate::storage::Epoch;
use journal::Journal;
use window::{Accepted, Window, WindowLimits};

/// A queue's dedup window and its journal.
#[derive(Debug)]
pub(super) struct Dedup {
    window: Window,
    /// `None` for a queue that does not survive a restart (or whose journal cannot be
    /// opened: reported, and the window then lives in memory only).
    journal: Option<Journal>,
    /// Accepted ids waiting for their message's epoch to be durable before they are
    /// journaled, oldest first.
    waiting: VecDeque<(Epoch, Accepted)>,
}

impl Dedup {
    /// The dedup state of a queue with these arguments, `None` when it has no window. A
    /// durable queue's journal in `dir` is read back.
    pub(super) fn open(
        queue: &str,
        arguments: &QueueArguments,
        durable: bool,
        dir: &Path,
    ) -> Option<Self> {
        let limits = WindowLimits::new(arguments.dedup_window_ms, arguments.dedup_window_count)?;
        let mut window = Window::new(limits);
        let journal = if durable {
            match Journal::open(dir) {
                Ok(opened) => {
                    for a in &opened.accepted {
                        window.insert(&a.id, a.at_ms);
                    }
                    Some(opened.journal)
                }
                Err(e) => {
                    tracing::error!(queue, error = %e,
                        "dedup journal cannot be opened: the window is kept in memory only");
                    None
                }
            }
        } else {
            None
        };
        Some(Dedup {
            window,
            journal,
            waiting: VecDeque::new(),
        })
    }

    /// The dedup state of a replicated queue with these arguments (`None` without a window):
    /// in memory only, with the `(id, accepted at)` entries of its group's snapshot.
    pub(super) fn in_memory(
        arguments: &QueueArguments,
        entries: Vec<(String, u64)>,
    ) -> Option<Self> {
        let limits = WindowLimits::new(arguments.dedup_window_ms, arguments.dedup_window_count)?;
        let mut window = Window::new(limits);
        for (id, at_ms) in entries {
            window.insert(&id, at_ms);
        }
        Some(Dedup {
            window,
            journal: None,
            waiting: VecDeque::new(),
        })
    }

    /// The window's `(id, accepted at)` entries, oldest first (a replicated queue's snapshot).
    pub(super) fn entries(&self) -> Vec<(String, u64)> {
        self.window
            .iter()
            .map(|a| (a.id.to_string(), a.at_ms))
            .collect()
    }

    /// A message found in the log at start, accepted at `at_ms`.
    pub(super) fn recovered(&mut self, meta: &[u8], at_ms: u64) {
        if let Some(id) = message_id(meta) {
            self.window.insert(id, at_ms);
        }
    }

    /// Whether a message with this meta block is a duplicate within the window at `now_ms`.
    pub(super) fn is_duplicate(&mut self, meta: &[u8], now_ms: u64) -> bool {
        message_id(meta).is_some_and(|id| self.window.contains(id, now_ms))
    }

    /// A message with this meta block was stored at `at_ms`, durable at `epoch`; `None` for
    /// a message that does not survive a restart (transient), whose id is remembered only
    /// while the broker runs, never journaled.
    pub(super) fn accepted(&mut self, meta: &[u8], at_ms: u64, epoch: Option<Epoch>) {
        let Some(id) = message_id(meta) else {
            return;
        };
        self.window.insert(id, at_ms);
        if let (Some(epoch), Some(_)) = (epoch, &self.journal) {
            let accepted = Accepted {
                id: id.into(),
                at_ms,
            };
            self.waiting.push_back((epoch, accepted));
        }
    }

    /// Journals the ids whose messages are durable at `durable`, syncs the journal, and
    /// rewrites it when it has grown well past the window.
    pub(super) fn maintain(&mut self, durable: Epoch, now_ms: u64) {
        self.window.forget_expired(now_ms);
        let Some(journal) = &mut self.journal else {
            return;
        };
        let ready = self
            .waiting
            .iter()
            .take_while(|(e, _)| *e <= durable)
            .count();
        let written = journal
            .append(self.waiting.iter().take(ready).map(|(_, a)| a))
            .and_then(|()| journal.sync());
        self.waiting.drain(..ready);
        // Only with nothing waiting: the window then holds no id whose message is not durable.
        let rewritten = if self.waiting.is_empty() && journal.wants_rewrite(&self.window) {
            journal.rewrite(&self.window)
        } else {
            Ok(())
        };
        if let Err(e) = written.and(rewritten) {
            // The window still holds the ids; only a restart before the next write loses them.
            tracing::warn!(error = %e, "could not write the dedup journal");
        }
    }
}

/// `INVALID_ARGUMENT` for a dedup window of 0, or of more ids than a window holds.
pub(crate) fn check_window(a: &QueueArguments) -> Result<(), RequestError> {
    if a.dedup_window_ms == Some(0) {
        return Err(RequestError::invalid("dedup_window_ms must be at least 1"));
    }
    match a.dedup_window_count {
        Some(0) => Err(RequestError::invalid(
            "dedup_window_count must be at least 1",
        )),
        Some(n) if n as usize > window::MAX_WINDOW_IDS => Err(RequestError::invalid(format!(
            "dedup_window_count must be at most {}",
            window::MAX_WINDOW_IDS
        ))),
        _ => Ok(()),
    }
}

/// A meta block's `message_id` (validated when published; `None` if it has none).
fn message_id(meta: &[u8]) -> Option<&str> {
    MetaView::peek_message_id(meta)
}

#[cfg(test)]
mod tests {
    use sluice_client::wire::{MessageMeta, Properties};

    use super::*;

    fn meta(id: Option<&str>) -> Vec<u8> {
        MessageMeta {
            properties: Properties {
                message_id: id.map(str::to_owned),
                persistent: true,
                ..Properties::default()
            },
            ..MessageMeta::new("", "q")
        }
        .to_bytes()
        .unwrap()
        .to_vec()
    }

    fn arguments(ms: Option<u64>, count: Option<u32>) -> QueueArguments {
        QueueArguments {
            dedup_window_ms: ms,
            dedup_window_count: count,
            ..QueueArguments::default()
        }
    }

    #[test]
    fn a_queue_without_a_window_has_no_dedup() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Dedup::open("q", &arguments(None, None), true, dir.path()).is_none());
        assert!(!dir.path().join(journal::FILE_NAME).exists());
    }

    #[test]
    fn a_message_without_an_id_is_never_a_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Dedup::open("q", &arguments(None, Some(10)), true, dir.path()).unwrap();
        d.accepted(&meta(None), 1, Some(1));
        assert!(!d.is_duplicate(&meta(None), 2));
        d.accepted(&meta(Some("a")), 1, Some(1));
        assert!(d.is_duplicate(&meta(Some("a")), 2));
        assert!(!d.is_duplicate(&meta(Some("b")), 2));
    }

    #[test]
    fn ids_are_journaled_once_their_epoch_is_durable_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let args = arguments(Some(60_000), None);
        let mut d = Dedup::open("q", &args, true, dir.path()).unwrap();
        d.accepted(&meta(Some("a")), 1_000, Some(1));
        d.accepted(&meta(Some("b")), 1_001, Some(2));
        d.maintain(1, 1_002);
        drop(d);
        let mut d = Dedup::open("q", &args, true, dir.path()).unwrap();
        assert!(d.is_duplicate(&meta(Some("a")), 1_003));
        assert!(
            !d.is_duplicate(&meta(Some("b")), 1_003),
            "b's epoch was not durable: a crash may have lost its message"
        );
        // A message still in the log counts too.
        d.recovered(&meta(Some("b")), 1_001);
        assert!(d.is_duplicate(&meta(Some("b")), 1_003));
        assert!(
            !d.is_duplicate(&meta(Some("a")), 61_000),
            "the window has passed"
        );
    }

    #[test]
    fn a_transient_queue_keeps_no_journal() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Dedup::open("q", &arguments(None, Some(1)), false, dir.path()).unwrap();
        d.accepted(&meta(Some("a")), 1, Some(1));
        d.maintain(1, 2);
        assert!(!dir.path().join(journal::FILE_NAME).exists());
    }
}

//! Tracking published messages until they are settled (protocol.md §8.2, §8.4).
//!
//! Messages are numbered implicitly: the connection's first published message is 1, then 2,
//! 3, ... in the order they are written. The tracker keeps the unsettled ones as runs of
//! consecutive numbers, one run per publish command, each with the sink that wants its
//! outcome. `PublishRejected` marks single messages as refused, `PublishDuplicates` as
//! confirmed without being stored again; a cumulative `Confirm(up_to)` settles every run that
//! ends at or below `up_to`.
//!
//! When the client reconnects (protocol.md §5.1), a run keeps its messages: the unsettled
//! ones are written again on the new connection, in order, and take new numbers there. A run
//! only partly confirmed before the loss remembers how many of its messages were settled
//! (`done`); the outcome of each message comes from whichever connection settled it.

use std::collections::VecDeque;

use tokio::sync::{oneshot, OwnedSemaphorePermit};

use super::Batch;
use crate::error::{Error, Result};
use crate::publish::Confirmed;
use crate::wire::{PublishMessage, PublishSeq, Rejection};

/// Who waits for the outcome of a run of messages.
#[derive(Debug)]
pub(crate) enum PublishSink {
    /// One message: `Client::publish`, `Publisher::publish`.
    One {
        reply: oneshot::Sender<Result<Confirmed>>,
        /// The message's place in a publisher's window, freed when it is settled.
        permit: Option<OwnedSemaphorePermit>,
    },
    /// Several messages with one outcome each: `Client::publish_batch`.
    Many {
        reply: oneshot::Sender<Vec<Result<Confirmed>>>,
    },
}

impl PublishSink {
    /// Fails a run that was never written (it consumed no sequence numbers).
    pub(crate) fn fail_unsent(self, count: usize, error: &Error) {
        match self {
            PublishSink::One { reply, .. } => {
                let _ = reply.send(Err(error.clone()));
            }
            PublishSink::Many { reply } => {
                let _ = reply.send(vec![Err(error.clone()); count]);
            }
        }
    }
}

/// Outcomes recorded so far for a run.
#[derive(Debug)]
enum Outcomes {
    One {
        reply: oneshot::Sender<Result<Confirmed>>,
        permit: Option<OwnedSemaphorePermit>,
        rejection: Option<Error>,
        duplicate: bool,
    },
    Many {
        reply: oneshot::Sender<Vec<Result<Confirmed>>>,
        /// Refused messages, by offset in the run, in sequence order.
        rejections: Vec<(usize, Error)>,
        /// Messages confirmed as duplicates, by offset in the run.
        duplicates: Vec<usize>,
    },
}

#[derive(Debug)]
struct Run {
    /// Number of `messages[done]` on the current connection.
    first: u64,
    /// Number of its last message written on the current connection.
    last: u64,
    /// Messages before this offset were settled on an earlier connection.
    done: usize,
    /// How many messages the run has.
    len: usize,
    /// The messages, kept while they may have to be written again (reconnection on).
    messages: Option<Batch>,
    outcomes: Outcomes,
}

impl Run {
    /// The offset in the run of message `seq` of the current connection.
    fn offset(&self, seq: u64) -> usize {
        self.done + (seq - self.first) as usize
    }

    /// Resolves the run: messages up to `settled_up_to` are accepted unless refused, the rest
    /// get `unsettled` (the connection died before their confirm).
    fn resolve(self, settled_up_to: u64, unsettled: Option<&Error>) {
        let (first, done) = (self.first, self.done);
        let outcome = |offset: usize| match unsettled {
            _ if offset < done => Ok(Confirmed::Stored),
            Some(error) if first + (offset - done) as u64 > settled_up_to => Err(error.clone()),
            _ => Ok(Confirmed::Stored),
        };
        match self.outcomes {
            Outcomes::One {
                reply,
                permit,
                rejection,
                duplicate,
            } => {
                let result = match (rejection, outcome(0)) {
                    (Some(error), _) => Err(error),
                    (None, Ok(_)) if duplicate => Ok(Confirmed::Duplicate),
                    (None, result) => result,
                };
                let _ = reply.send(result);
                drop(permit);
            }
            Outcomes::Many {
                reply,
                rejections,
                duplicates,
            } => {
                let mut results: Vec<Result<Confirmed>> = (0..self.len).map(outcome).collect();
                for offset in duplicates {
                    if results[offset].is_ok() {
                        results[offset] = Ok(Confirmed::Duplicate);
                    }
                }
                for (offset, error) in rejections {
                    results[offset] = Err(error);
                }
                let _ = reply.send(results);
            }
        }
    }
}

/// The unsettled publishes of one connection (and those carried over from lost ones).
#[derive(Debug)]
pub(crate) struct PublishTracker {
    /// The number the next written message takes.
    next_seq: u64,
    /// The highest `up_to` confirmed so far.
    confirmed: u64,
    /// Unsettled runs, in sequence order.
    runs: VecDeque<Run>,
}

impl Default for PublishTracker {
    fn default() -> Self {
        PublishTracker {
            next_seq: 1,
            confirmed: 0,
            runs: VecDeque::new(),
        }
    }
}

impl PublishTracker {
    /// Records that `count` (≥ 1) messages were just written, in order, and who waits for
    /// them; `messages` (the first `count`) are kept to be written again after a reconnection.
    /// Returns the first one's number.
    pub(crate) fn written(
        &mut self,
        count: usize,
        sink: PublishSink,
        messages: Option<Batch>,
    ) -> u64 {
        debug_assert!(count > 0);
        let first = self.next_seq;
        let last = first + count as u64 - 1;
        self.next_seq = last + 1;
        let outcomes = match sink {
            PublishSink::One { reply, permit } => {
                debug_assert_eq!(count, 1);
                Outcomes::One {
                    reply,
                    permit,
                    rejection: None,
                    duplicate: false,
                }
            }
            PublishSink::Many { reply } => Outcomes::Many {
                reply,
                rejections: Vec::new(),
                duplicates: Vec::new(),
            },
        };
        let messages = messages.map(|batch| match batch {
            Batch::Many(mut messages) => {
                messages.truncate(count);
                Batch::Many(messages)
            }
            one => one,
        });
        self.runs.push_back(Run {
            first,
            last,
            done: 0,
            len: count,
            messages,
            outcomes,
        });
        first
    }

    /// Number of written messages not yet settled.
    pub(crate) fn unsettled(&self) -> u64 {
        self.next_seq - 1 - self.confirmed
    }

    /// The unsettled run holding message `seq`, for a frame named `frame`. Fails if the
    /// server names a message that is not awaiting its outcome (never written, or already
    /// confirmed).
    fn run_of(&mut self, seq: u64, frame: &str) -> Result<&mut Run, String> {
        if seq <= self.confirmed || seq >= self.next_seq {
            return Err(format!(
                "{frame} names message {seq}, but only {}..{} are unsettled",
                self.confirmed + 1,
                self.next_seq
            ));
        }
        let index = self.runs.partition_point(|run| run.last < seq);
        match self.runs.get_mut(index) {
            Some(run) if run.first <= seq => Ok(run),
            // Unreachable while every written message belongs to a run.
            _ => Err(format!("{frame} names unknown message {seq}")),
        }
    }

    /// Records a message confirmed as a duplicate (not stored again in some queue).
    pub(crate) fn duplicate(&mut self, seq: PublishSeq) -> Result<(), String> {
        let run = self.run_of(seq.0, "PublishDuplicates")?;
        let offset = run.offset(seq.0);
        match &mut run.outcomes {
            Outcomes::One { duplicate, .. } => *duplicate = true,
            Outcomes::Many { duplicates, .. } => duplicates.push(offset),
        }
        Ok(())
    }

    /// Records a refused message. Fails if the server names a message that is not awaiting
    /// its outcome (never written, or already confirmed).
    pub(crate) fn rejected(&mut self, rejection: Rejection) -> Result<(), String> {
        let seq = rejection.seq.0;
        let run = self.run_of(seq, "PublishRejected")?;
        let error = Error::from(rejection);
        let offset = run.offset(seq);
        match &mut run.outcomes {
            Outcomes::One { rejection, .. } => *rejection = Some(error),
            Outcomes::Many { rejections, .. } => {
                rejections.push((offset, error));
            }
        }
        Ok(())
    }

    /// Settles every message up to `up_to`. Fails if `up_to` covers unwritten messages.
    pub(crate) fn confirmed(&mut self, up_to: PublishSeq) -> Result<(), String> {
        let up_to = up_to.0;
        if up_to >= self.next_seq {
            return Err(format!(
                "Confirm up to {up_to}, but only {} messages were published",
                self.next_seq - 1
            ));
        }
        if up_to <= self.confirmed {
            // Not strictly increasing: harmless, nothing new is settled.
            tracing::debug!(up_to, confirmed = self.confirmed, "stale Confirm ignored");
            return Ok(());
        }
        self.confirmed = up_to;
        while self.runs.front().is_some_and(|run| run.last <= up_to) {
            if let Some(run) = self.runs.pop_front() {
                run.resolve(up_to, None);
            }
        }
        Ok(())
    }

    /// The connection is gone: settles what was confirmed and fails the rest with `error`.
    pub(crate) fn fail_all(&mut self, error: &Error) {
        for run in self.runs.drain(..) {
            run.resolve(self.confirmed, Some(error));
        }
    }

    /// Writes every unsettled message again, in order, on a new connection (numbers start
    /// at 1 there), through `write`; a message `write` refuses fails with its error. What
    /// the lost connection said about unconfirmed messages (refused, duplicate) is forgotten:
    /// the new connection's answer is their outcome. Runs without kept messages fail.
    pub(crate) fn resend<E>(&mut self, mut write: impl FnMut(&PublishMessage) -> Result<(), E>)
    where
        Error: From<E>,
    {
        let confirmed = self.confirmed;
        self.next_seq = 1;
        self.confirmed = 0;
        let mut kept = VecDeque::with_capacity(self.runs.len());
        for mut run in self.runs.drain(..) {
            // Only the first run can be partly confirmed: the others start above `confirmed`.
            if confirmed >= run.first {
                run.done += (confirmed - run.first + 1) as usize;
            }
            run.forget_unsettled_outcomes();
            let Some(messages) = run.messages.take() else {
                run.resolve(
                    0,
                    Some(&Error::ConnectionClosed(crate::CloseReason::Aborted)),
                );
                continue;
            };
            let first = self.next_seq;
            let mut written = 0;
            for (offset, message) in messages.as_slice().iter().enumerate().skip(run.done) {
                match write(message) {
                    Ok(()) => written += 1,
                    Err(e) => {
                        run.refuse_from(offset, &Error::from(e));
                        break;
                    }
                }
            }
            run.messages = Some(messages);
            if written == 0 {
                // Nothing of it is on the new connection: its outcome is known now.
                run.first = first;
                run.resolve(0, None);
                continue;
            }
            run.first = first;
            run.last = first + written - 1;
            self.next_seq = run.last + 1;
            kept.push_back(run);
        }
        self.runs = kept;
    }
}

impl Run {
    /// Drops rejections and duplicates recorded for messages not settled yet.
    fn forget_unsettled_outcomes(&mut self) {
        let done = self.done;
        match &mut self.outcomes {
            Outcomes::One {
                rejection,
                duplicate,
                ..
            } => {
                if done == 0 {
                    *rejection = None;
                    *duplicate = false;
                }
            }
            Outcomes::Many {
                rejections,
                duplicates,
                ..
            } => {
                rejections.retain(|(offset, _)| *offset < done);
                duplicates.retain(|offset| *offset < done);
            }
        }
    }

    /// Fails the messages from `offset` on with `error` (they could not be written).
    fn refuse_from(&mut self, offset: usize, error: &Error) {
        match &mut self.outcomes {
            Outcomes::One { rejection, .. } => *rejection = Some(error.clone()),
            Outcomes::Many { rejections, .. } => {
                rejections.extend((offset..self.len).map(|o| (o, error.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::CloseReason;
    use crate::wire::ErrorCode;

    fn one(tracker: &mut PublishTracker) -> (u64, oneshot::Receiver<Result<Confirmed>>) {
        let (reply, rx) = oneshot::channel();
        let seq = tracker.written(
            1,
            PublishSink::One {
                reply,
                permit: None,
            },
            Some(Batch::One(message(0))),
        );
        (seq, rx)
    }

    fn many(
        tracker: &mut PublishTracker,
        n: usize,
    ) -> (u64, oneshot::Receiver<Vec<Result<Confirmed>>>) {
        let (reply, rx) = oneshot::channel();
        let messages = (0..n).map(message).collect();
        (
            tracker.written(n, PublishSink::Many { reply }, Some(Batch::Many(messages))),
            rx,
        )
    }

    fn message(i: usize) -> PublishMessage {
        PublishMessage {
            meta: bytes::Bytes::new(),
            body: bytes::Bytes::from(i.to_string()),
        }
    }

    /// Resends everything, returning the bodies written.
    fn resend(t: &mut PublishTracker) -> Vec<String> {
        let mut bodies = Vec::new();
        t.resend(|m: &PublishMessage| {
            bodies.push(String::from_utf8(m.body.to_vec()).unwrap());
            Ok::<(), Error>(())
        });
        bodies
    }

    #[test]
    fn unconfirmed_messages_are_resent_in_order_and_settled_by_the_new_connection() {
        let mut t = PublishTracker::default();
        let (_, mut a) = one(&mut t); // 1, body "0"
        let (_, mut b) = many(&mut t, 3); // 2..=4, bodies "0" "1" "2"
        let (_, mut c) = one(&mut t); // 5
        t.rejected(rejection(2, ErrorCode::QueueFull)).unwrap();
        t.duplicate(PublishSeq(4)).unwrap();
        t.confirmed(PublishSeq(2)).unwrap(); // a and the first of b
        assert!(a.try_recv().unwrap().is_ok());
        // The connection is lost: b's last two and c go again, numbered from 1.
        assert_eq!(resend(&mut t), ["1", "2", "0"]);
        assert_eq!(t.unsettled(), 3);
        assert!(b.try_recv().is_err() && c.try_recv().is_err());
        t.rejected(rejection(2, ErrorCode::Unroutable)).unwrap(); // b's third
        t.confirmed(PublishSeq(3)).unwrap();
        assert_eq!(
            summary(b.try_recv().unwrap()),
            [
                Some(ErrorCode::QueueFull),
                None,
                Some(ErrorCode::Unroutable)
            ],
            "the old connection's rejection of a settled message stays; its duplicate flag \
             for an unconfirmed one is forgotten"
        );
        assert_eq!(c.try_recv().unwrap().unwrap(), Confirmed::Stored);
    }

    #[test]
    fn a_message_the_new_connection_cannot_take_fails_alone() {
        let mut t = PublishTracker::default();
        let (_, mut a) = many(&mut t, 2);
        let (_, mut b) = one(&mut t);
        let mut calls = 0;
        t.resend(|_: &PublishMessage| {
            calls += 1;
            if calls == 2 {
                Err(Error::MessageTooLarge { size: 2, max: 1 })
            } else {
                Ok(())
            }
        });
        // a's first went out as 1, a's second failed, b went out as 2.
        t.confirmed(PublishSeq(2)).unwrap();
        let results = a.try_recv().unwrap();
        assert!(results[0].is_ok());
        assert!(results[1].as_ref().unwrap_err().is_message_too_large());
        assert!(b.try_recv().unwrap().is_ok());
    }

    fn rejection(seq: u64, code: ErrorCode) -> Rejection {
        Rejection {
            seq: PublishSeq(seq),
            code,
            message: String::new(),
        }
    }

    fn summary(results: Vec<Result<Confirmed>>) -> Vec<Option<ErrorCode>> {
        results
            .into_iter()
            .map(|r| r.err().map(|e| e.code().unwrap_or(ErrorCode::Unknown(0))))
            .collect()
    }

    #[test]
    fn numbers_runs_consecutively_from_one() {
        let mut t = PublishTracker::default();
        assert_eq!(one(&mut t).0, 1);
        assert_eq!(many(&mut t, 3).0, 2);
        assert_eq!(one(&mut t).0, 5);
        assert_eq!(t.unsettled(), 5);
    }

    #[test]
    fn cumulative_confirms_settle_whole_runs_only() {
        let mut t = PublishTracker::default();
        let (_, mut a) = one(&mut t);
        let (_, mut b) = many(&mut t, 3); // 2..=4
        let (_, mut c) = one(&mut t); // 5
        t.confirmed(PublishSeq(3)).unwrap();
        assert!(a.try_recv().unwrap().is_ok());
        assert!(b.try_recv().is_err(), "run 2..=4 is only partly confirmed");
        t.rejected(rejection(4, ErrorCode::QueueFull)).unwrap();
        t.confirmed(PublishSeq(5)).unwrap();
        assert_eq!(
            summary(b.try_recv().unwrap()),
            [None, None, Some(ErrorCode::QueueFull)]
        );
        assert!(c.try_recv().unwrap().is_ok());
        assert_eq!(t.unsettled(), 0);
    }

    #[test]
    fn rejections_resolve_single_messages_with_their_code() {
        let mut t = PublishTracker::default();
        let (_, mut a) = one(&mut t);
        let (_, mut b) = one(&mut t);
        t.rejected(Rejection {
            seq: PublishSeq(2),
            code: ErrorCode::Unroutable,
            message: "no route".into(),
        })
        .unwrap();
        t.confirmed(PublishSeq(2)).unwrap();
        assert!(a.try_recv().unwrap().is_ok());
        let err = b.try_recv().unwrap().unwrap_err();
        assert!(err.is_unroutable());
        assert!(matches!(
            err,
            Error::PublishRejected { seq: PublishSeq(2), ref message, .. } if message == "no route"
        ));
    }

    #[test]
    fn protocol_violations_are_reported() {
        let mut t = PublishTracker::default();
        let _ = many(&mut t, 2);
        assert!(t.confirmed(PublishSeq(3)).is_err(), "beyond what was sent");
        assert!(t.rejected(rejection(3, ErrorCode::Unroutable)).is_err());
        assert!(t.rejected(rejection(0, ErrorCode::Unroutable)).is_err());
        t.confirmed(PublishSeq(2)).unwrap();
        assert!(
            t.confirmed(PublishSeq(1)).is_ok(),
            "stale confirms are ignored"
        );
        assert!(
            t.rejected(rejection(2, ErrorCode::Unroutable)).is_err(),
            "already confirmed"
        );
    }

    #[test]
    fn failing_keeps_what_was_confirmed() {
        let mut t = PublishTracker::default();
        let (_, mut a) = many(&mut t, 4); // 1..=4
        let (_, mut b) = one(&mut t); // 5
        t.rejected(rejection(1, ErrorCode::StorageFull)).unwrap();
        t.confirmed(PublishSeq(2)).unwrap();
        t.fail_all(&Error::ConnectionClosed(CloseReason::HeartbeatTimeout));
        let results = a.try_recv().unwrap();
        assert!(results[0].as_ref().unwrap_err().is_publish_rejected());
        assert!(
            results[1].is_ok(),
            "message 2 was confirmed before the failure"
        );
        assert!(results[2].as_ref().unwrap_err().is_connection_closed());
        assert!(results[3].as_ref().unwrap_err().is_connection_closed());
        assert!(b.try_recv().unwrap().unwrap_err().is_connection_closed());
    }

    #[test]
    fn duplicates_are_confirmed_with_their_flag_and_a_rejection_wins() {
        let mut t = PublishTracker::default();
        let (_, mut a) = one(&mut t); // 1
        let (_, mut b) = many(&mut t, 3); // 2..=4
        t.duplicate(PublishSeq(1)).unwrap();
        t.duplicate(PublishSeq(3)).unwrap();
        t.duplicate(PublishSeq(4)).unwrap();
        t.rejected(rejection(4, ErrorCode::QueueFull)).unwrap();
        assert!(t.duplicate(PublishSeq(5)).is_err(), "never written");
        t.confirmed(PublishSeq(4)).unwrap();
        assert_eq!(a.try_recv().unwrap().unwrap(), Confirmed::Duplicate);
        let results = b.try_recv().unwrap();
        assert_eq!(results[0].as_ref().unwrap(), &Confirmed::Stored);
        assert_eq!(results[1].as_ref().unwrap(), &Confirmed::Duplicate);
        assert!(results[2].as_ref().unwrap_err().is_publish_rejected());
        assert!(t.duplicate(PublishSeq(1)).is_err(), "already confirmed");
    }

    #[test]
    fn permits_are_released_on_settlement() {
        let window = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
        let permit = window.clone().try_acquire_owned().unwrap();
        let mut t = PublishTracker::default();
        let (reply, _rx) = oneshot::channel();
        t.written(
            1,
            PublishSink::One {
                reply,
                permit: Some(permit),
            },
            None,
        );
        assert_eq!(window.available_permits(), 0);
        t.confirmed(PublishSeq(1)).unwrap();
        assert_eq!(window.available_permits(), 1);
    }
}

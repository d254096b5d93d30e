//! What the writer has confirmed across all its runs on one directory, and the check of a
//! reopened queue log against it.

use anyhow::{bail, ensure, Context, Result};
use sluice_broker::storage::QueueLog;

use crate::protocol::Event;
use crate::workload::{acked_by_policy, check_message};

/// One run of the writer: it starts at `first` and appends densely from there.
#[derive(Debug, Clone)]
struct Run {
    first: u64,
    /// Highest seq of this run reported durable.
    durable: Option<u64>,
    /// Highest seq of this run reported appended (durable or not).
    appended: Option<u64>,
}

/// The confirmed state of one queue, built from the writer's events.
#[derive(Debug, Default)]
pub struct Ledger {
    acks: bool,
    uid: Option<u64>,
    runs: Vec<Run>,
    /// Highest seq any run reported (appended or durable).
    max_seq_seen: u64,
    /// Every seq up to this that the ack policy acknowledges is durably acknowledged.
    acked_through: u64,
    /// Opens that cut a torn tail.
    torn_tails: usize,
}

/// What a verification looked at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Verified {
    /// Live messages in the log, each read back and compared byte for byte.
    pub live: u64,
    /// Confirmed messages that had to be present, and were.
    pub required_present: u64,
    /// Durably acknowledged messages that had to be gone, and were.
    pub required_absent: u64,
}

impl Ledger {
    /// A ledger for a writer that acknowledges messages (`acks`) or only appends.
    pub fn new(acks: bool) -> Self {
        Self {
            acks,
            ..Self::default()
        }
    }

    /// Number of runs seen (writer starts that got as far as opening the queue).
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// Number of messages confirmed durable over all runs.
    pub fn confirmed(&self) -> u64 {
        self.runs
            .iter()
            .filter_map(|r| r.durable.map(|d| d + 1 - r.first))
            .sum()
    }

    /// Number of writer starts whose recovery cut a torn tail.
    pub fn torn_tails(&self) -> usize {
        self.torn_tails
    }

    /// Highest seq the writer ever reported.
    pub fn max_seq_seen(&self) -> u64 {
        self.max_seq_seen
    }

    /// Takes in one event, checking what can be checked at once: the queue keeps its
    /// identity, a restart never hands out a seq seen before, opening finds no damage, and
    /// seqs of a run only grow.
    pub fn observe(&mut self, ev: &Event) -> Result<()> {
        match *ev {
            Event::Ready { uid, next_seq } => {
                if let Some(old) = self.uid {
                    ensure!(
                        old == uid,
                        "the queue changed identity from {old:x} to {uid:x}"
                    );
                }
                self.uid = Some(uid);
                ensure!(
                    next_seq > self.max_seq_seen,
                    "seq reuse: a restart starts at {next_seq}, but {} was handed out before",
                    self.max_seq_seen
                );
                self.runs.push(Run {
                    first: next_seq,
                    durable: None,
                    appended: None,
                });
            }
            Event::Recovered { damage, torn } => {
                self.torn_tails += usize::from(torn);
                ensure!(
                    damage == 0,
                    "opening after a process kill reported {damage} damage entries"
                );
            }
            Event::Appended(s) | Event::Durable(s) => {
                let Some(run) = self.runs.last_mut() else {
                    bail!("{ev} before ready")
                };
                ensure!(
                    s >= run.first,
                    "{ev} is below the run's first seq {}",
                    run.first
                );
                let slot = if matches!(ev, Event::Durable(_)) {
                    &mut run.durable
                } else {
                    &mut run.appended
                };
                ensure!(slot.is_none_or(|old| old < s), "{ev} does not advance");
                *slot = Some(s);
                self.max_seq_seen = self.max_seq_seen.max(s);
            }
            Event::Acked(s) => {
                ensure!(self.acks, "acks from a writer that should not ack");
                self.acked_through = self.acked_through.max(s);
            }
            Event::Error(_) | Event::Retry(_) | Event::Verified(_) => {}
        }
        Ok(())
    }

    /// Parses and observes every line.
    pub fn observe_lines<'a>(
        &mut self,
        lines: impl IntoIterator<Item = &'a String>,
    ) -> Result<Vec<Event>> {
        let mut out = Vec::new();
        for line in lines {
            let ev: Event = line.parse()?;
            self.observe(&ev)?;
            out.push(ev);
        }
        Ok(out)
    }

    /// Checks a freshly reopened log against everything confirmed:
    /// - every live message reads back (CRC checked) with exactly the bytes it was written with;
    /// - every confirmed message is live, unless the ack policy acknowledged it (then it may be
    ///   gone; if its ack was durable it must be gone);
    /// - the next seq is above every seq ever reported, so none is reused;
    /// - opening found no damage, and the counts agree.
    pub fn verify(&self, log: &QueueLog) -> Result<Verified> {
        if let Some(uid) = self.uid {
            ensure!(
                log.uid() == uid,
                "opened queue {:x}, expected {uid:x}",
                log.uid()
            );
        }
        let report = log.recovery_report();
        ensure!(
            report.damage.is_empty(),
            "damage after a process kill: {:?}",
            report.damage
        );
        ensure!(
            log.next_seq() > self.max_seq_seen,
            "next seq {} would reuse seq {} reported before",
            log.next_seq(),
            self.max_seq_seen
        );
        let live = log.live_seqs();
        ensure!(
            live.len() as u64 == log.message_count(),
            "live_seqs and message_count disagree"
        );
        for &s in &live {
            ensure!(
                s < log.next_seq(),
                "live seq {s} is not below next seq {}",
                log.next_seq()
            );
            check_message(log, s)?;
        }
        let mut v = Verified {
            live: live.len() as u64,
            ..Verified::default()
        };
        for run in &self.runs {
            let Some(durable) = run.durable else { continue };
            for s in run.first..=durable {
                let acked = self.acks && acked_by_policy(s);
                if !acked {
                    ensure!(
                        log.contains(s),
                        "confirmed message {s} is missing after restart"
                    );
                    v.required_present += 1;
                } else if s <= self.acked_through {
                    ensure!(
                        !log.contains(s),
                        "message {s} came back although its ack was durable"
                    );
                    v.required_absent += 1;
                }
            }
        }
        Ok(v)
    }

    /// Like [`verify`](Self::verify), with the ledger in the error message.
    pub fn verify_context(&self, log: &QueueLog) -> Result<Verified> {
        self.verify(log)
            .with_context(|| format!("verifying against {self:?}"))
    }
}

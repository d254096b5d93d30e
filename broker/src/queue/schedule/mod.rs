//! The timer index of a queue: which stored messages wait for a time, soonest first, at a
//! memory cost that does not grow with their number.
//!
//! # Layout
//! The newest entries sit in memory (`staging`, at most [`STAGING_MAX`]); when it fills it is
//! written out as a *run*, a file of entries sorted by due time (`run.rs`), into
//! `<queue dir>/timers/`. Only the block at the front of each run is in memory (at most
//! [`run::BLOCK_ENTRIES`] entries). Runs are merged size-tiered (a run is merged into the one
//! before it while that one is at most twice its size), so there are O(log n) of them and
//! each entry is rewritten O(log n) times. The soonest entry is the least of the staging's
//! first and the runs' fronts, so a burst of millions due at the same millisecond streams
//! through block by block.
//!
//! # Durability
//! The index is derived, not a source of truth: the queue's log holds each message's due time
//! (its meta block, or for a requeue with a delay the due entry in the ack log), and the index
//! is rebuilt from the log at every start ([`Schedule::open`] discards any old files). Its
//! files are therefore never synced. A damaged block found while running (a disk error) is
//! reported and counted; the entries it held come back when the next start rebuilds the index.
//!
//! Entries are never removed from a run in place: a cancelled message is remembered in
//! `cancelled` until its entry comes out, and the queue drops any entry whose message is no
//! longer stored.

mod run;

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use run::{Run, RunError, RunWriter};
use sluice_client::wire::{ListScheduled, MAX_SCHEDULED_LIMIT, MIN_FRAME_LEN, SCHEDULED_FIXED_LEN};

/// Most entries kept in memory before they are written out as a run (16 bytes each, about
/// 1.5 MiB with the tree's overhead).
pub(crate) const STAGING_MAX: usize = 64 * 1024;
/// Directory of the run files inside a queue's directory.
pub(crate) const TIMERS_DIR: &str = "timers";

/// A page of a `ListScheduled` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledPage {
    /// Most messages.
    pub limit: usize,
    /// Only messages due after this `(due_ms, seq)`; `None` = from the soonest.
    pub after: Option<(u64, u64)>,
    /// Bytes the answer's messages may take (their encoded size, bodies counted up to
    /// `body_budget`); at least one message is answered.
    pub max_bytes: usize,
    /// Bytes of each body counted against `max_bytes` (the HTTP API shows only their start).
    pub body_budget: usize,
}

impl ScheduledPage {
    /// A page for a `ListScheduled` request answered in a frame of at most `max_frame_len`.
    pub fn for_frame(request: &ListScheduled, max_frame_len: u32) -> Self {
        let limit = match request.limit {
            0 => MAX_SCHEDULED_LIMIT,
            n => n.min(MAX_SCHEDULED_LIMIT),
        };
        let fixed = MIN_FRAME_LEN as usize + SCHEDULED_FIXED_LEN;
        let after = (request.after_due_ms, request.after_seq);
        ScheduledPage {
            limit: limit as usize,
            after: (after != (0, 0)).then_some(after),
            max_bytes: (max_frame_len as usize).saturating_sub(fixed),
            body_budget: usize::MAX,
        }
    }
}

/// A message waiting for its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Entry {
    /// When it becomes ready, Unix milliseconds.
    pub(crate) due_ms: u64,
    /// Its sequence number in the queue's log.
    pub(crate) seq: u64,
    /// Deliveries so far (0 for a message delayed at publish; kept here so a requeue with a
    /// delay costs no memory while it waits).
    pub(crate) delivery_count: u32,
}

/// The timer index of one queue.
#[derive(Debug)]
pub(crate) struct Schedule {
    dir: PathBuf,
    staging: BTreeSet<Entry>,
    /// Oldest first; each older run holds more than twice the entries of the next.
    runs: Vec<Run>,
    next_run_no: u64,
    /// Entries held (staging and runs), cancelled ones included.
    entries: u64,
    /// Messages cancelled whose entries have not come out yet.
    cancelled: HashSet<u64>,
    /// Run blocks found damaged since the start.
    damaged_blocks: u64,
    /// The last write of a run failed (a full disk): entries stay in memory until it works.
    spill_failing: bool,
    /// Entries kept in memory before a run is written ([`STAGING_MAX`]; smaller in tests).
    staging_max: usize,
}

impl Schedule {
    /// An empty index for the queue in `queue_dir`: files left by an earlier run of the
    /// process are removed, since the index is rebuilt from the log at every start. (One
    /// that cannot be removed is overwritten: run files are numbered from 1 again and
    /// created truncated, and none is read before it is written.)
    pub(crate) fn open(queue_dir: &Path) -> Self {
        Self::open_with(queue_dir, STAGING_MAX)
    }

    fn open_with(queue_dir: &Path, staging_max: usize) -> Self {
        let dir = queue_dir.join(TIMERS_DIR);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e, "could not remove an old timer index")
            }
        }
        Schedule {
            dir,
            staging: BTreeSet::new(),
            runs: Vec::new(),
            next_run_no: 1,
            entries: 0,
            cancelled: HashSet::new(),
            damaged_blocks: 0,
            spill_failing: false,
            staging_max,
        }
    }

    /// Messages waiting (cancelled ones excluded).
    pub(crate) fn len(&self) -> u64 {
        self.entries - self.cancelled.len() as u64
    }

    /// Run blocks found damaged since the start (their messages wait for the next start).
    #[cfg(test)]
    pub(crate) fn damaged_blocks(&self) -> u64 {
        self.damaged_blocks
    }

    /// Adds a message.
    pub(crate) fn insert(&mut self, entry: Entry) {
        if self.staging.insert(entry) {
            self.entries += 1;
        }
        // After a failed write, try again each time another staging's worth has come.
        if self.staging.len() >= self.staging_max
            && (!self.spill_failing || self.staging.len() % self.staging_max == 0)
        {
            self.spill();
        }
    }

    /// Forgets message `seq` (cancelled or deleted while waiting). The caller knows it waits
    /// here; its entry is dropped when it comes out.
    pub(crate) fn cancel(&mut self, seq: u64) {
        self.cancelled.insert(seq);
    }

    /// Whether `seq` was cancelled and its entry has not come out yet.
    pub(crate) fn is_cancelled(&self, seq: u64) -> bool {
        self.cancelled.contains(&seq)
    }

    /// The soonest due time.
    pub(crate) fn next_due(&mut self) -> Option<u64> {
        self.soonest().map(|(e, _)| e.due_ms)
    }

    /// Takes the soonest message if it is due at `now_ms`.
    pub(crate) fn pop_due(&mut self, now_ms: u64) -> Option<Entry> {
        loop {
            let (e, from) = self.soonest()?;
            if e.due_ms > now_ms {
                return None;
            }
            match from {
                None => {
                    self.staging.pop_first();
                }
                Some(i) => {
                    self.runs[i].pop();
                    if self.runs[i].remaining() == 0 {
                        self.remove_run(i);
                    }
                }
            }
            self.entries -= 1;
            if !self.cancelled.remove(&e.seq) {
                return Some(e);
            }
        }
    }

    /// Up to `limit` waiting messages after `after` in due order (for browsing), read without
    /// taking them.
    pub(crate) fn page(&self, after: Option<Entry>, limit: usize) -> Vec<Entry> {
        let keep = |e: &Entry| after.is_none_or(|a| *e > a);
        // Cancelled entries are skipped, so read enough to fill the page without them.
        let want = limit + self.cancelled.len();
        let mut all: Vec<Entry> = self
            .staging
            .iter()
            .copied()
            .filter(keep)
            .take(want)
            .collect();
        for run in &self.runs {
            match run.peek_after(after, want) {
                Ok(entries) => all.extend(entries),
                Err(e) => tracing::error!(error = %e, "timer index unreadable while browsing"),
            }
        }
        all.sort_unstable();
        all.retain(|e| !self.cancelled.contains(&e.seq));
        all.truncate(limit);
        all
    }

    /// Forgets every message and removes the files.
    pub(crate) fn clear(&mut self) {
        self.staging.clear();
        for run in self.runs.drain(..) {
            remove_file(&run.path);
        }
        self.entries = 0;
        self.cancelled.clear();
    }

    /// The soonest entry and where it is (`None` = staging, `Some(i)` = run `i`).
    fn soonest(&mut self) -> Option<(Entry, Option<usize>)> {
        let mut best = self.staging.first().map(|&e| (e, None));
        let mut i = 0;
        while i < self.runs.len() {
            match self.runs[i].front() {
                Ok(Some(e)) => {
                    if best.is_none_or(|(b, _)| e < b) {
                        best = Some((e, Some(i)));
                    }
                    i += 1;
                }
                // Only a run read to its end is empty, and those are removed as they end.
                Ok(None) => self.remove_run(i),
                Err(e) => self.on_damage(i, &e),
            }
        }
        best
    }

    /// Drops run `i`, whose block could not be read: the entries it still held are lost
    /// until the next start rebuilds the index.
    fn on_damage(&mut self, i: usize, e: &RunError) {
        tracing::error!(error = %e,
            "timer index damaged: its messages wait for the next start, which rebuilds the index from the log");
        self.damaged_blocks += 1;
        self.entries -= self.runs[i].remaining();
        self.remove_run(i);
    }

    fn remove_run(&mut self, i: usize) {
        let run = self.runs.remove(i);
        remove_file(&run.path);
    }

    /// Writes the staging out as a run, then merges runs size-tiered.
    fn spill(&mut self) {
        let staging = std::mem::take(&mut self.staging);
        match self.write_run(staging.into_iter()) {
            Ok(run) => {
                self.runs.push(run);
                self.spill_failing = false;
            }
            Err((e, kept)) => {
                if !self.spill_failing {
                    tracing::warn!(error = %e, "could not write the timer index; keeping it in memory");
                }
                self.staging = kept;
                self.spill_failing = true;
                return;
            }
        }
        while self.runs.len() >= 2 {
            let n = self.runs.len();
            if self.runs[n - 2].remaining() > 2 * self.runs[n - 1].remaining() {
                break;
            }
            if let Err(e) = self.merge_last_two() {
                tracing::warn!(error = %e, "could not merge timer index runs");
                break;
            }
        }
    }

    /// Writes sorted entries as a new run; on failure gives the entries back.
    fn write_run(
        &mut self,
        entries: std::collections::btree_set::IntoIter<Entry>,
    ) -> Result<Run, (RunError, BTreeSet<Entry>)> {
        let entries: Vec<Entry> = entries.collect();
        let give_back = |e, v: Vec<Entry>| (e, v.into_iter().collect());
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            return Err(give_back(RunError::io(&self.dir, e), entries));
        }
        let path = self.run_path();
        let result = (|| {
            let mut w = RunWriter::create(path.clone())?;
            for &e in &entries {
                w.push(e)?;
            }
            w.finish()
        })();
        result.map_err(|e| {
            remove_file(&path);
            give_back(e, entries)
        })
    }

    /// Merges the two newest runs into one. It reads copies of their cursors, so a failure
    /// (a full disk, a damaged block) leaves both as they were.
    fn merge_last_two(&mut self) -> Result<(), RunError> {
        let n = self.runs.len();
        let path = self.run_path();
        let merged = (|| {
            let (mut a, mut b) = (self.runs[n - 2].clone(), self.runs[n - 1].clone());
            let mut w = RunWriter::create(path.clone())?;
            loop {
                let next = match (a.front()?, b.front()?) {
                    (Some(x), Some(y)) if y < x => b.pop(),
                    (Some(_), _) => a.pop(),
                    (None, Some(_)) => b.pop(),
                    (None, None) => break,
                };
                w.push(next.expect("a front was there"))?;
            }
            w.finish()
        })();
        let merged = merged.inspect_err(|_| remove_file(&path))?;
        for run in self.runs.drain(n - 2..) {
            remove_file(&run.path);
        }
        self.runs.push(merged);
        Ok(())
    }

    fn run_path(&mut self) -> PathBuf {
        let no = self.next_run_no;
        self.next_run_no += 1;
        self.dir.join(format!("{no:010}.run"))
    }
}

fn remove_file(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a timer index file");
        }
    }
}

#[cfg(test)]
mod tests;

//! Opening a Raft log after a clean or unclean stop, in named steps: prepare the directory,
//! load the state, read the durable watermark, scan the segments in order (each header
//! applying the supersede / fresh / continuity rules, each record checked), check that the
//! watermark's segment survived, then make what was kept durable.
//!
//! What is past the durable watermark was never confirmed (no completed sync covered it): an
//! invalid record, a torn segment header or a gap in the indexes there is a torn tail, cut
//! (zeroed) together with every later segment. The same below the watermark is damage to
//! acknowledged entries, and the log is refused with [`StorageError::CorruptLog`]: a Raft
//! voter that silently forgot entries could let a committed entry be lost.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{blob, RaftLog, RaftLogConfig, Segment, STATE_FILE};
use crate::storage::durability::{load_watermark, new_file_id, CheckpointTarget, Durability};
use crate::storage::error::{Result, StorageError};
use crate::storage::files;
use crate::storage::format::{
    align_up, RaftEntryHeader, RaftLogState, RaftSegmentHeader, Watermark, RAFT_SEGMENT_HEADER_LEN,
    RAFT_STATE_LEN,
};
use crate::storage::mmap::SegmentMap;
use crate::storage::queue_log::segment_path;
use crate::storage::recovery::zero_tail;

/// A segment kept by the scan.
struct Scanned {
    no: u64,
    path: PathBuf,
    header: RaftSegmentHeader,
    file_len: usize,
    /// End of the last valid record.
    end: usize,
    /// Offsets of the entries `first_index + i` that are not superseded.
    offsets: Vec<u32>,
}

impl Scanned {
    /// The last entry kept here.
    fn last(&self) -> Option<u64> {
        (!self.offsets.is_empty()).then(|| self.header.first_index + self.offsets.len() as u64 - 1)
    }
}

/// Why a segment header does not fit the segments before it.
enum HeaderMismatch {
    /// Entries are missing between the last kept entry (or the purge point) and it.
    Gap,
    /// It restarts the log, but live entries precede it.
    FreshAfterLiveEntries,
}

/// What a scan finds at a position of a segment.
enum Found {
    /// The end of the segment's data.
    End,
    /// The next entry, in order.
    Entry(RaftEntryHeader),
    /// Not a valid record, and why.
    Bad(&'static str),
}

/// Opens the log in `dir`: see the module documentation.
pub(super) fn open(dir: &Path, durability: Durability, config: RaftLogConfig) -> Result<RaftLog> {
    prepare_dir(dir)?;
    let state = load_state(dir)?;
    // No watermark file: no sync ever completed, so nothing is below it.
    let wm = load_watermark(dir, state.log_id)?.unwrap_or(Watermark {
        segment_no: 0,
        offset: 0,
    });
    let mut scan = Scan {
        dir,
        config: &config,
        purged: state.purged,
        log_id: state.log_id,
        wm,
        kept: Vec::new(),
        torn: false,
        max_no: wm.segment_no,
        removed: false,
    };
    for no in segment_numbers(dir)? {
        scan.segment(no)?;
    }
    scan.check_watermark_segment()?;
    if scan.removed {
        files::sync_dir(dir)?;
    }
    let max_no = scan.max_no;
    let kept = scan.kept;
    assemble(dir, durability, config, state, wm, kept, max_no)
}

/// Creates the directory if needed, durably (a log whose directory entry a crash could take
/// would come back empty, its vote forgotten), and removes temporary files a crash left.
fn prepare_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        let mut missing = Vec::new();
        let mut d = dir;
        while !d.exists() {
            missing.push(d);
            match d.parent() {
                Some(p) => d = p,
                None => break,
            }
        }
        std::fs::create_dir_all(dir).map_err(|e| StorageError::io(dir, e))?;
        // Each new directory's entry lives in its parent: sync those, outermost first.
        for created in missing.iter().rev() {
            if let Some(parent) = created.parent() {
                files::sync_dir(parent)?;
            }
        }
    }
    if blob::remove_temps(dir)? {
        files::sync_dir(dir)?;
    }
    Ok(())
}

/// The log's identity and purge point; a new log gets a fresh identity.
fn load_state(dir: &Path) -> Result<RaftLogState> {
    let path = dir.join(STATE_FILE);
    match blob::read(dir, STATE_FILE)? {
        Some(payload) => RaftLogState::decode(&payload)
            .map_err(|reason| StorageError::CorruptFile { path, reason }),
        None if !segment_numbers(dir)?.is_empty() => Err(StorageError::CorruptLog {
            path,
            offset: 0,
            reason: "segments exist but the state file is missing",
        }),
        None => {
            let state = RaftLogState {
                log_id: fastrand::u64(1..),
                purged: None,
            };
            let bytes: [u8; RAFT_STATE_LEN] = state.encode();
            blob::write_atomic(dir, STATE_FILE, &bytes)?;
            Ok(state)
        }
    }
}

/// Numbers of the segment files in `dir`, ascending.
fn segment_numbers(dir: &Path) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| StorageError::io(dir, e))? {
        let entry = entry.map_err(|e| StorageError::io(dir, e))?;
        let name = entry.file_name();
        let no = name
            .to_str()
            .and_then(|n| n.strip_suffix(".seg"))
            .filter(|n| n.len() == 20)
            .and_then(|n| n.parse::<u64>().ok());
        out.extend(no);
    }
    out.sort_unstable();
    Ok(out)
}

/// The scan of a log's segments, in number order.
struct Scan<'a> {
    dir: &'a Path,
    config: &'a RaftLogConfig,
    purged: Option<u64>,
    log_id: u64,
    wm: Watermark,
    kept: Vec<Scanned>,
    /// A torn tail was cut: every later segment was never durable and is removed.
    torn: bool,
    /// The highest segment number seen anywhere (never used again).
    max_no: u64,
    /// Segment files were removed: their removal must be durable before anything new is
    /// written, or a later crash could bring one back below a newer watermark.
    removed: bool,
}

impl Scan<'_> {
    /// Removes a segment file that was never durable.
    fn remove(&mut self, path: &Path) -> Result<()> {
        self.removed = true;
        files::remove_if_exists(path)
    }

    fn below_wm(&self, no: u64, pos: usize) -> bool {
        (no, pos as u64) < (self.wm.segment_no, self.wm.offset)
    }

    fn damage(&self, path: &Path, offset: usize, reason: &'static str) -> StorageError {
        tracing::error!(path = %path.display(), offset, reason, "Raft log damaged below its durable watermark");
        StorageError::CorruptLog {
            path: path.to_owned(),
            offset: offset as u64,
            reason,
        }
    }

    /// Scans segment `no`: kept, removed as part of a torn tail, or an error for damage.
    fn segment(&mut self, no: u64) -> Result<()> {
        self.max_no = self.max_no.max(no);
        let path = segment_path(self.dir, no);
        if self.torn {
            tracing::warn!(path = %path.display(), "removed a Raft log segment written after a torn tail");
            return self.remove(&path);
        }
        let data = files::read_all(&path)?;
        let header = match RaftSegmentHeader::decode(&data) {
            Ok(h) if h.log_id == self.log_id && h.segment_no == no => h,
            bad if no <= self.wm.segment_no => {
                return Err(StorageError::CorruptSegmentHeader {
                    path,
                    reason: bad.err().unwrap_or("segment of another log or file name"),
                });
            }
            _ => {
                // Its header never became durable: a torn creation.
                tracing::warn!(path = %path.display(), "removed a Raft log segment with a torn header");
                self.torn = true;
                return self.remove(&path);
            }
        };
        match self.apply_header(&header) {
            Ok(()) => {}
            Err(HeaderMismatch::Gap) => return self.gap(no, path),
            Err(HeaderMismatch::FreshAfterLiveEntries) => {
                // A fresh segment is only started once every entry before it is purged or
                // voided, durably: never the trace of a torn write.
                let reason = "a fresh segment follows entries that were never purged";
                return Err(self.damage(&path, 0, reason));
            }
        }
        let mut s = Scanned {
            no,
            path,
            header,
            file_len: data.len(),
            end: RAFT_SEGMENT_HEADER_LEN,
            offsets: Vec::new(),
        };
        self.records(&mut s, &data)?;
        self.kept.push(s);
        Ok(())
    }

    /// Applies what a segment header says about the entries before it: entries at or above
    /// its first index are void; a fresh segment follows only purged entries; any other
    /// segment continues the last kept entry (or the purge point) without a gap.
    fn apply_header(&mut self, h: &RaftSegmentHeader) -> Result<(), HeaderMismatch> {
        let first = h.first_index;
        // The last entry kept once this header's supersession applies (checked before
        // anything changes: a segment found torn must not void anything).
        let hi = self.kept.iter().rev().find_map(|s| {
            let last = s.last().filter(|_| s.header.first_index < first)?;
            Some(last.min(first - 1))
        });
        if h.is_fresh() {
            if hi.is_some_and(|hi| self.purged.is_none_or(|p| hi > p)) {
                return Err(HeaderMismatch::FreshAfterLiveEntries);
            }
            self.kept.iter_mut().for_each(|s| s.offsets.clear());
            return Ok(());
        }
        match hi {
            Some(hi) if first == hi + 1 => {}
            None if self.purged.is_some_and(|p| first <= p + 1) => {}
            _ => return Err(HeaderMismatch::Gap),
        }
        for s in &mut self.kept {
            let keep = first.saturating_sub(s.header.first_index);
            s.offsets
                .truncate(usize::try_from(keep).unwrap_or(usize::MAX));
        }
        Ok(())
    }

    /// A segment whose first index does not continue what was kept. The missing entries were
    /// at the end of the last kept segment: if that lies past the watermark, it lost its
    /// unsynced tail (pages are written back in any order) and this later segment was never
    /// durable either: a torn tail, this segment and every later one go. Otherwise acknowledged
    /// entries are missing.
    fn gap(&mut self, no: u64, path: PathBuf) -> Result<()> {
        let torn = no > self.wm.segment_no
            && match self.kept.last() {
                Some(prev) => !self.below_wm(prev.no, prev.end),
                // Nothing kept before: only a log that was never synced can have lost it all.
                None => self.wm.segment_no == 0,
            };
        if !torn {
            return Err(self.damage(&path, 0, "entries are missing before this segment"));
        }
        tracing::warn!(path = %path.display(), "removed a Raft log segment after a torn tail");
        self.torn = true;
        self.remove(&path)
    }

    /// Reads the records of segment `s` until its data ends; a bad record is a torn tail (cut)
    /// or damage (an error).
    fn records(&mut self, s: &mut Scanned, data: &[u8]) -> Result<()> {
        let mut pos = RAFT_SEGMENT_HEADER_LEN;
        let mut expected = s.header.first_index;
        loop {
            match self.find(s, data, pos, expected) {
                Found::End => return Ok(()),
                Found::Entry(h) => {
                    s.offsets.push(pos as u32);
                    expected += 1;
                    pos = (pos + align_up(h.rec_len as usize)).min(data.len());
                    s.end = pos;
                }
                Found::Bad(reason) if self.below_wm(s.no, pos) => {
                    return Err(self.damage(&s.path, pos, reason));
                }
                Found::Bad(_) => return self.cut_torn_tail(s, data, pos),
            }
        }
    }

    /// What is at `pos` of segment `s`, where entry `expected` would come next.
    fn find(&self, s: &Scanned, data: &[u8], pos: usize, expected: u64) -> Found {
        let rest = &data[pos.min(data.len())..];
        // Inside the watermark's segment, below the watermark, entries must be there; in
        // earlier segments the data may end anywhere (the next header's continuity check
        // catches a segment that lost its tail).
        let must_have_data = s.no == self.wm.segment_no && (pos as u64) < self.wm.offset;
        match RaftEntryHeader::peek_len(rest) {
            None | Some(0) if rest.iter().all(|&b| b == 0) => {
                if must_have_data {
                    Found::Bad("durable data reads as zeros")
                } else {
                    Found::End
                }
            }
            Some(0) => Found::Bad("data after a zeroed gap"),
            _ => match RaftEntryHeader::decode(rest, s.header.salt, self.config.max_entry_bytes) {
                Ok(h) if h.index == expected => Found::Entry(h),
                Ok(_) => Found::Bad("entry index out of order"),
                Err(_) => Found::Bad("checksum or header mismatch"),
            },
        }
    }

    /// An invalid record past the watermark: nothing from `pos` on was ever confirmed. Zeroes
    /// it (synced), so a later recovery never reads it, and removes every later segment.
    fn cut_torn_tail(&mut self, s: &Scanned, data: &[u8], pos: usize) -> Result<()> {
        if data[pos..].iter().any(|&b| b != 0) {
            zero_tail(&s.path, pos as u64, data.len() as u64)?;
        }
        tracing::warn!(
            path = %s.path.display(),
            offset = pos,
            bytes = data.len() - pos,
            "cut a torn tail of a Raft log after an unclean stop"
        );
        self.torn = true;
        Ok(())
    }

    /// The watermark's segment (or a later one) must have survived: the newest durable
    /// segment is never deleted.
    fn check_watermark_segment(&self) -> Result<()> {
        let newest = self.kept.last().map_or(0, |s| s.no);
        if self.wm.segment_no > newest {
            let path = segment_path(self.dir, self.wm.segment_no);
            return Err(self.damage(&path, 0, "a segment below the durable watermark is missing"));
        }
        Ok(())
    }
}

/// Builds the log from the kept segments, after making them durable: entries kept past the
/// watermark are reported to Raft as stored, so they must be on disk before anyone reads them.
fn assemble(
    dir: &Path,
    durability: Durability,
    config: RaftLogConfig,
    state: RaftLogState,
    wm: Watermark,
    kept: Vec<Scanned>,
    max_no: u64,
) -> Result<RaftLog> {
    let checkpoint = Arc::new(CheckpointTarget {
        queue_uid: state.log_id,
        dir: dir.to_path_buf(),
    });
    let mut segments = BTreeMap::new();
    let mut by_index = BTreeMap::new();
    let mut epoch = 0;
    for s in kept {
        let seg = map_segment(s)?;
        let end = seg.map.committed() as u64;
        let w = Watermark {
            segment_no: seg.no,
            offset: end,
        };
        if w > wm {
            epoch = durability.mark_file(seg.id, &seg.file, &seg.path, Some((&checkpoint, w)));
        }
        if !seg.offsets.is_empty() {
            by_index.insert(seg.first_index, seg.no);
        }
        segments.insert(seg.no, seg);
    }
    if epoch > 0 {
        durability.wait_blocking(epoch);
    }
    let mut log = RaftLog {
        dir: dir.to_path_buf(),
        config,
        durability,
        checkpoint,
        state,
        segments,
        by_index,
        active: None,
        last_no: max_no,
        dead_pending: true,
    };
    log.forget_purged();
    Ok(log)
}

/// Maps a kept segment read-only (writing resumes in a new segment).
fn map_segment(s: Scanned) -> Result<Segment> {
    let file = files::open_rw(&s.path)?;
    let map = SegmentMap::map(&file, s.file_len, s.end, s.file_len)
        .map_err(|e| StorageError::io(&s.path, e))?;
    Ok(Segment {
        no: s.no,
        path: s.path.into(),
        file: Arc::new(file),
        id: new_file_id(),
        salt: s.header.salt,
        first_index: s.header.first_index,
        offsets: s.offsets,
        map: Arc::new(map),
        writer: None,
        created: 0,
    })
}

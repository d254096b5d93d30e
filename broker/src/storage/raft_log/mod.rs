//! A Raft log in Sluice's own storage engine: index-numbered entries of opaque bytes in CRC'd,
//! memory-mapped segments, group-committed by the shared [`Durability`] sync thread.
//!
//! Storage knows nothing of Raft itself: an entry is a `u64` index and bytes (the cluster
//! adapter puts its serialised entry there, log id included).
//!
//! # Layout
//! ```text
//! <log dir>/raft.state                 identity and purge point (blob file, replaced atomically)
//! <log dir>/durable.ckpt               durable watermark, rewritten by the sync thread
//! <log dir>/00000000000000000001.seg   segment: 64-byte header, then 8-byte aligned entries
//! <log dir>/<name>.blob                named blobs (vote, committed id, ...), replaced atomically
//! ```
//!
//! # Rules
//! - Entries are written forward only, never in place and never cut off a file: readers hold
//!   `Bytes` that share a segment's mapping, and shrinking a mapped file would make them fault
//!   (SIGBUS); it would also move the durable watermark backwards.
//! - Every segment header names the index of its first entry, and that index *supersedes*:
//!   every entry at or above it in an earlier segment is void. A truncation is therefore one
//!   new segment whose header is made durable before `truncate_from` returns; the segments it
//!   voids entirely are then deleted.
//! - A segment flagged *fresh* restarts an empty log (after a purge or truncation of every
//!   entry): its first index may jump.
//! - The purge point lives in `raft.state`, written durably before any purged segment is
//!   deleted; recovery ignores entries at or below it.
//! - A segment is deleted only once it holds no live entry, is not the newest segment, and a
//!   newer segment's header is durable: so the newest durable segment always exists, and
//!   recovery can tell a deleted segment from a lost one.
//! - Recovery (see `recovery`) cuts a torn tail past the durable watermark and refuses
//!   ([`StorageError::CorruptLog`]) damage below it, missing segments and index gaps.

mod blob;
mod recovery;

#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs::File;
use std::future::Future;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::durability::{new_file_id, CheckpointTarget, DirHandle, Durability, Epoch, FileId};
use super::error::{Result, StorageError};
use super::fault::{self, Point};
use super::files;
use super::format::{
    align_up, RaftEntryHeader, RaftLogState, RaftSegmentHeader, Watermark, MAX_RAFT_INDEX,
    RAFT_ENTRY_HEADER_LEN, RAFT_SEGMENT_FLAG_FRESH, RAFT_SEGMENT_HEADER_LEN,
};
use super::mmap::{MapWriter, SegmentMap};
use super::queue_log::{reserve_or_just_enough, segment_path, MAX_CHUNK, MIN_CHUNK};

/// Settings of a Raft log.
#[derive(Debug, Clone)]
pub struct RaftLogConfig {
    /// Size a segment is mapped at; an entry that does not fit starts a new segment.
    pub segment_bytes: usize,
    /// Largest entry (header + payload) accepted.
    pub max_entry_bytes: usize,
}

impl Default for RaftLogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 8 << 20,
            max_entry_bytes: (64 << 20) + (64 << 10),
        }
    }
}

/// File name of the identity and purge point.
const STATE_FILE: &str = "raft.state";

/// One segment file, its mapping and the offsets of its live entries.
#[derive(Debug)]
struct Segment {
    no: u64,
    path: Arc<Path>,
    file: Arc<File>,
    id: FileId,
    salt: u32,
    /// Index of the first entry written here.
    first_index: u64,
    /// Offset of entry `first_index + i`; cut at a truncation, so every offset is of an entry
    /// that is not superseded (it may be purged).
    offsets: Vec<u32>,
    map: Arc<SegmentMap>,
    /// Present while this is the segment being appended to.
    writer: Option<MapWriter>,
    /// The epoch after which the header and the directory entry are durable (0: recovered).
    created: Epoch,
}

impl Segment {
    /// The index the next entry appended here gets.
    fn next_index(&self) -> u64 {
        self.first_index + self.offsets.len() as u64
    }

    /// Offset of entry `index`, if this segment holds it.
    fn offset_of(&self, index: u64) -> Option<usize> {
        let i = usize::try_from(index.checked_sub(self.first_index)?).ok()?;
        self.offsets.get(i).map(|&o| o as usize)
    }
}

/// A Raft log: see the [module documentation](self).
///
/// Owned by one task (or behind one lock): writes take `&mut self`. Reads hand out `Bytes`
/// that share the segment mapping, valid after the entry is truncated, purged or its segment
/// deleted.
#[derive(Debug)]
pub struct RaftLog {
    dir: PathBuf,
    config: RaftLogConfig,
    durability: Durability,
    checkpoint: Arc<CheckpointTarget>,
    state: RaftLogState,
    /// Every segment file, by number.
    segments: BTreeMap<u64, Segment>,
    /// First index → number of the segments that may hold live entries. Their ranges are
    /// disjoint, ascending and contiguous from the first live entry to the last.
    by_index: BTreeMap<u64, u64>,
    /// The segment being appended to (none right after open: writing resumes in a new one).
    active: Option<u64>,
    /// The highest segment number used so far.
    last_no: u64,
    /// Some segment may be dead (no live entry) and waiting to be deleted.
    dead_pending: bool,
}

impl RaftLog {
    /// Opens or creates the log in `dir` (created if missing) with the default settings;
    /// recovery drops a torn tail, never a durable entry.
    pub fn open(dir: &Path, durability: &Durability) -> Result<RaftLog> {
        Self::open_with(dir, durability, RaftLogConfig::default())
    }

    /// [`open`](Self::open) with explicit settings.
    pub fn open_with(
        dir: &Path,
        durability: &Durability,
        config: RaftLogConfig,
    ) -> Result<RaftLog> {
        recovery::open(dir, durability.clone(), config)
    }

    /// Appends entries with consecutive indexes: the first is `last_index() + 1`, or, when
    /// the log holds no entry, any index above the purge point. Durable once
    /// `durability.durable_epoch() >=` the epoch returned (see [`wait_durable`](Self::wait_durable)).
    ///
    /// Each payload is copied once, into the segment mapping. On an error (a full disk:
    /// [`StorageError::StorageFull`]; out of descriptors for a new segment:
    /// [`StorageError::ResourceExhausted`]) the entries before the failing one are appended
    /// ([`last_index`](Self::last_index) says how far) and will be durable with the next
    /// group commit; nothing else changed.
    pub fn append<'a>(
        &mut self,
        entries: impl IntoIterator<Item = (u64, &'a [u8])>,
    ) -> Result<Epoch> {
        self.delete_dead_segments();
        // One tag per segment written (not per entry): the sync thread's lock is taken once
        // per batch, and the last tag's epoch covers the earlier ones.
        let mut written: Option<u64> = None;
        let mut result = Ok(());
        for (index, payload) in entries {
            match self.append_one(index, payload) {
                Ok(no) => {
                    if let Some(prev) = written.filter(|&p| p != no) {
                        self.tag(prev);
                    }
                    written = Some(no);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let epoch = match written {
            Some(no) => self.tag(no),
            None => self.durability.current_epoch(),
        };
        result.map(|()| epoch)
    }

    /// Removes every entry from `index` on (Raft's truncation after a conflict). Durable before
    /// it returns: a crash afterwards never revives a removed entry. Blocks until the sync
    /// thread has synced (call it where blocking is fine, e.g. `spawn_blocking`).
    pub fn truncate_from(&mut self, index: u64) -> Result<()> {
        let Some(last) = self.last_index() else {
            return Ok(());
        };
        if index > last {
            return Ok(());
        }
        if let Some(p) = self.state.purged.filter(|&p| index <= p) {
            tracing::debug!(index, purged = p, "truncation at or below the purge point");
            return Err(StorageError::IndexOutOfRange {
                index,
                reason: "at or below the purge point",
            });
        }
        // Why a new segment rather than `ftruncate`: readers may hold `Bytes` of the entries
        // being removed, and a mapped file that shrinks under them faults (SIGBUS); the durable
        // watermark may also lie past the cut, and it only ever moves forward. The new
        // segment's header names `index` as its first entry, which voids every entry at or
        // above it in the older segments (recovery applies the same rule).
        let empties = self.first_index().is_none_or(|first| index <= first);
        self.start_segment(index, empties, 0)?;
        let new = self.last_no;
        self.void_from(index, new);
        self.forget_purged();
        let created = self.segments[&new].created;
        self.durability.wait_blocking(created);
        // The new header is durable: the voided segments can go, and their removal is made
        // durable too. Not needed for safety (a revived segment stays void), so a failure
        // here is said, not returned: the truncation itself is done.
        if self.delete_dead_segments() {
            if let Err(e) = files::sync_dir(&self.dir) {
                tracing::warn!(dir = %self.dir.display(), error = %e,
                    "could not sync the Raft log directory after deleting truncated segments");
            }
        }
        Ok(())
    }

    /// Forgets every entry up to and including `index` (Raft's purge after a snapshot), which
    /// may lie beyond the last entry. The purge point is written durably first; whole segments
    /// at or below it are then deleted. After a purge of everything the next append may start
    /// at any index above `index`.
    pub fn purge_through(&mut self, index: u64) -> Result<()> {
        if self.state.purged.is_some_and(|p| index <= p) {
            return Ok(());
        }
        if index > MAX_RAFT_INDEX {
            return Err(StorageError::IndexOutOfRange {
                index,
                reason: "beyond the largest index a Raft log holds",
            });
        }
        let state = RaftLogState {
            purged: Some(index),
            ..self.state
        };
        blob::write_atomic(&self.dir, STATE_FILE, &state.encode())?;
        self.state = state;
        self.forget_purged();
        self.delete_dead_segments();
        Ok(())
    }

    /// Index of the first live entry, `None` when the log holds none.
    pub fn first_index(&self) -> Option<u64> {
        self.last_index()?;
        let (&first, _) = self.by_index.first_key_value()?;
        Some(match self.state.purged {
            Some(p) => first.max(p + 1),
            None => first,
        })
    }

    /// Index of the last live entry, `None` when the log holds none.
    pub fn last_index(&self) -> Option<u64> {
        let (_, no) = self.by_index.last_key_value()?;
        let seg = &self.segments[no];
        let last = seg.next_index().checked_sub(1)?;
        let live = seg.offsets.last().is_some() && self.state.purged.is_none_or(|p| last > p);
        live.then_some(last)
    }

    /// The purge point: every entry at or below it is forgotten.
    pub fn last_purged(&self) -> Option<u64> {
        self.state.purged
    }

    /// The live entries in `range` (indexes outside `first_index()..=last_index()` are
    /// skipped), in order. The bytes share the segment mapping (no copy); every entry's
    /// checksum is verified, and a damaged one is an error, never returned.
    pub fn read(&self, range: Range<u64>) -> Result<Vec<(u64, Bytes)>> {
        let (Some(first), Some(last)) = (self.first_index(), self.last_index()) else {
            return Ok(Vec::new());
        };
        let (lo, hi) = (range.start.max(first), range.end.min(last + 1));
        if lo >= hi {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity((hi - lo).min(1 << 16) as usize);
        let mut seg = self.segment_holding(lo);
        for index in lo..hi {
            if seg.is_none_or(|s| s.offset_of(index).is_none()) {
                seg = self.segment_holding(index);
            }
            let s = seg.ok_or(StorageError::CorruptEntry {
                index,
                reason: "no segment holds it",
            })?;
            out.push((index, self.read_entry(s, index)?));
        }
        Ok(out)
    }

    /// Saves a small named blob (vote, committed log id, purged log id, snapshot meta): the
    /// old contents are replaced atomically (temporary file, fsync, rename, fsync of the
    /// directory), so a crash leaves either the old or the new bytes. Blobs are read whole.
    pub fn save_blob(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        blob::write_atomic(&self.dir, &blob::file_name(name)?, bytes)
    }

    /// The blob saved last under `name`, `None` if there is none. A damaged blob is an error
    /// ([`StorageError::CorruptFile`]).
    pub fn load_blob(&self, name: &str) -> Result<Option<Vec<u8>>> {
        blob::read(&self.dir, &blob::file_name(name)?)
    }

    /// The sync thread this log's writes wait on.
    pub fn durability(&self) -> &Durability {
        &self.durability
    }

    /// Resolves once `epoch` (as returned by [`append`](Self::append)) is durable. The future
    /// owns what it needs (`'static`), so it can be spawned to fire a callback.
    pub fn wait_durable(&self, epoch: Epoch) -> impl Future<Output = ()> + Send + 'static {
        let durability = self.durability.clone();
        async move { durability.wait(epoch).await }
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Segment files on disk.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    // ------------------------------------------------------------------------------------
    // Appending
    // ------------------------------------------------------------------------------------

    /// Checks that `index` may come next, writes it, and returns the segment written to.
    fn append_one(&mut self, index: u64, payload: &[u8]) -> Result<u64> {
        let empty = self.last_index().is_none();
        if let Some(last) = self.last_index().filter(|&l| index != l + 1) {
            return Err(StorageError::IndexOutOfOrder {
                expected: last + 1,
                got: index,
            });
        }
        if let Some(p) = self.state.purged.filter(|&p| index <= p) {
            return Err(StorageError::IndexOutOfOrder {
                expected: p + 1,
                got: index,
            });
        }
        if index > MAX_RAFT_INDEX {
            return Err(StorageError::IndexOutOfRange {
                index,
                reason: "beyond the largest index a Raft log holds",
            });
        }
        let rec_len = RAFT_ENTRY_HEADER_LEN + payload.len();
        if rec_len > self.config.max_entry_bytes {
            return Err(StorageError::RecordTooLarge {
                size: rec_len,
                max: self.config.max_entry_bytes,
            });
        }
        let padded = align_up(rec_len);
        let active = self.active.and_then(|no| self.segments.get(&no));
        let fits = active.is_some_and(|s| {
            s.next_index() == index
                && s.writer
                    .as_ref()
                    .is_some_and(|w| w.map().committed() + padded <= w.capacity())
        });
        if !fits {
            self.start_segment(index, empty, padded)?;
            if empty {
                // Whatever came before is purged or truncated: none of it is live.
                self.by_index.clear();
                self.dead_pending = true;
            }
        }
        let no = self.active.expect("a segment was just started");
        self.write_entry(no, index, payload, padded)?;
        let seg = &self.segments[&no];
        if self.by_index.get(&seg.first_index) != Some(&no) {
            self.by_index.insert(seg.first_index, no);
        }
        Ok(no)
    }

    /// Writes one entry record into segment `no` (which has room in its mapping).
    fn write_entry(&mut self, no: u64, index: u64, payload: &[u8], padded: usize) -> Result<()> {
        let seg = self.segments.get_mut(&no).expect("active segment");
        let writer = seg.writer.as_mut().expect("active segment has a writer");
        let start = writer.map().committed();
        let end = start + padded;
        if end > writer.allocated() {
            let from = writer.allocated();
            let chunk = from.clamp(MIN_CHUNK, MAX_CHUNK);
            let target = end.max(from + chunk).min(writer.capacity());
            let target = reserve_or_just_enough(&seg.file, &seg.path, from, target, end)?;
            writer.set_allocated(target);
        }
        let header = RaftEntryHeader::new(index, payload.len()).encode(seg.salt, payload);
        fault::check(Point::Write, &seg.path)
            .map_err(|e| StorageError::io(seg.path.to_path_buf(), e))?;
        let at = writer
            .append(&[&header, payload], end)
            .map_err(|e| StorageError::io(seg.path.to_path_buf(), e))?;
        seg.offsets.push(at as u32);
        Ok(())
    }

    /// Tags segment `no` for the next group commit, with the watermark at its written end.
    fn tag(&self, no: u64) -> Epoch {
        let seg = &self.segments[&no];
        let w = Watermark {
            segment_no: no,
            offset: seg.map.committed() as u64,
        };
        self.durability
            .mark_file(seg.id, &seg.file, &seg.path, Some((&self.checkpoint, w)))
    }

    /// Creates the next segment, whose first entry is `first_index`, as the active one (sized
    /// for at least `needed` bytes of entries). `fresh`: the log holds no live entry. If
    /// creation fails nothing is left behind and the old active segment stays active.
    fn start_segment(&mut self, first_index: u64, fresh: bool, needed: usize) -> Result<()> {
        let no = self.last_no + 1;
        let path: Arc<Path> = segment_path(&self.dir, no).into();
        let cap = self
            .config
            .segment_bytes
            .max(align_up(RAFT_SEGMENT_HEADER_LEN + needed).next_multiple_of(4096));
        let want = (RAFT_SEGMENT_HEADER_LEN + needed).max(MIN_CHUNK).min(cap);
        let salt = fastrand::u32(..);
        // Opened first: out of descriptors, nothing has been created yet.
        let dir = DirHandle::open(&self.dir)?;
        let created = (|| -> Result<(File, SegmentMap)> {
            let file = files::create_new(&path)?;
            let reserved =
                reserve_or_just_enough(&file, &path, 0, want, RAFT_SEGMENT_HEADER_LEN + needed)?;
            let header = RaftSegmentHeader {
                log_id: self.state.log_id,
                segment_no: no,
                first_index,
                salt,
                created_unix_ms: files::now_unix_ms(),
                flags: if fresh { RAFT_SEGMENT_FLAG_FRESH } else { 0 },
            };
            files::write_at(&file, &path, &header.encode(), 0)?;
            let map = SegmentMap::map(&file, cap, RAFT_SEGMENT_HEADER_LEN, reserved)
                .map_err(|e| StorageError::io(&*path, e))?;
            Ok((file, map))
        })();
        let (file, map) = match created {
            Ok(c) => c,
            Err(e) => {
                let _ = files::remove_if_exists(&path);
                return Err(e);
            }
        };
        let file = Arc::new(file);
        let map = Arc::new(map);
        let writer = map
            .writer(Arc::clone(&file))
            .expect("a new map has no writer");
        self.durability.mark_dir(dir);
        let id = new_file_id();
        // The header and the directory entry are durable with this epoch; the watermark
        // moves onto the new segment with it, so recovery knows it must exist.
        let w = Watermark {
            segment_no: no,
            offset: RAFT_SEGMENT_HEADER_LEN as u64,
        };
        let created = self
            .durability
            .mark_file(id, &file, &path, Some((&self.checkpoint, w)));
        if let Some(old) = self.active.and_then(|n| self.segments.get_mut(&n)) {
            old.writer = None;
            old.map.release_resident();
        }
        self.segments.insert(
            no,
            Segment {
                no,
                path,
                file,
                id,
                salt,
                first_index,
                offsets: Vec::new(),
                map,
                writer: Some(writer),
                created,
            },
        );
        self.active = Some(no);
        self.last_no = no;
        // The previous newest segment may hold no live entry: it can go once this header is
        // durable.
        self.dead_pending = true;
        Ok(())
    }

    /// Voids every entry at or above `index` in the segments before `new` (in memory: the
    /// header of segment `new` says the same on disk).
    fn void_from(&mut self, index: u64, new: u64) {
        let voided: Vec<u64> = self.by_index.range(index..).map(|(&f, _)| f).collect();
        for first in voided {
            let no = self.by_index.remove(&first).expect("listed");
            self.segments.get_mut(&no).expect("indexed").offsets.clear();
            self.dead_pending = true;
        }
        if let Some((_, &no)) = self.by_index.range(..index).next_back() {
            let seg = self.segments.get_mut(&no).expect("indexed");
            let keep = (index - seg.first_index) as usize;
            seg.offsets.truncate(keep);
        }
        debug_assert!(self
            .segments
            .range(..new)
            .all(|(_, s)| s.next_index() <= index || s.offsets.is_empty()));
    }

    /// Drops the segments holding only purged entries from the index (they become dead).
    fn forget_purged(&mut self) {
        let Some(p) = self.state.purged else {
            return;
        };
        let gone: Vec<u64> = self
            .by_index
            .iter()
            .filter(|(_, no)| self.segments[no].next_index() <= p + 1)
            .map(|(&first, _)| first)
            .collect();
        for first in gone {
            self.by_index.remove(&first);
            self.dead_pending = true;
        }
    }

    /// Deletes every segment that holds no live entry, is not the newest, and has a newer
    /// segment whose header is durable. Returns whether any was deleted. A file that cannot be
    /// removed stays, to be tried again.
    fn delete_dead_segments(&mut self) -> bool {
        if !self.dead_pending {
            return false;
        }
        let durable = self.durability.durable_epoch();
        let Some(newest_durable) = self
            .segments
            .values()
            .rev()
            .find(|s| s.created <= durable)
            .map(|s| s.no)
        else {
            return false;
        };
        let dead: Vec<u64> = self
            .segments
            .range(..newest_durable)
            .filter(|(no, s)| self.by_index.get(&s.first_index) != Some(no))
            .map(|(&no, _)| no)
            .collect();
        let mut deleted = false;
        for no in dead {
            let seg = &self.segments[&no];
            if let Err(e) = files::remove_if_exists(&seg.path) {
                tracing::warn!(path = %seg.path.display(), error = %e,
                    "could not delete a Raft log segment; trying again later");
                break;
            }
            self.segments.remove(&no);
            deleted = true;
        }
        let newest = self.segments.keys().next_back().copied();
        self.dead_pending = self
            .segments
            .iter()
            .any(|(&no, s)| Some(no) != newest && self.by_index.get(&s.first_index) != Some(&no));
        deleted
    }

    // ------------------------------------------------------------------------------------
    // Reading
    // ------------------------------------------------------------------------------------

    fn segment_holding(&self, index: u64) -> Option<&Segment> {
        let (_, no) = self.by_index.range(..=index).next_back()?;
        let seg = &self.segments[no];
        seg.offset_of(index).is_some().then_some(seg)
    }

    fn read_entry(&self, seg: &Segment, index: u64) -> Result<Bytes> {
        let corrupt = |reason| StorageError::CorruptEntry { index, reason };
        let off = seg.offset_of(index).ok_or(corrupt("not in its segment"))?;
        let len = seg
            .map
            .read(off, 8)
            .and_then(RaftEntryHeader::peek_len)
            .ok_or(corrupt("record beyond the written data"))? as usize;
        let rec = seg
            .map
            .read(off, len)
            .ok_or(corrupt("record length beyond the written data"))?;
        let h = RaftEntryHeader::decode(rec, seg.salt, self.config.max_entry_bytes)
            .map_err(|_| corrupt("checksum or header mismatch"))?;
        if h.index != index {
            return Err(corrupt("record names another index"));
        }
        let payload = h.payload_range();
        Ok(seg
            .map
            .bytes(off + payload.start, payload.len())
            .expect("validated"))
    }
}

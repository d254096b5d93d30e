//! One queue's log: a directory of segments, their ack logs and a manifest.
//!
//! A `QueueLog` is owned by one task (the queue's actor), so every method takes `&mut self` or
//! `&self` without locks. Reads hand out `Bytes` that share the segment mapping, so a delivery
//! can outlive the call (and even the segment's deletion) without a copy.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::durability::{new_file_id, CheckpointTarget, DirHandle, Durability, Epoch, FileId};
use super::error::{Damage, Result, StorageError};
use super::fault::{self, Point};
use super::files;
use super::format::{
    align_up, AckBatch, LogHeader, ManifestRecord, RecordHeader, RecordKind, SegmentHeader,
    Watermark, ACK_MAGIC, LOG_HEADER_LEN, MANIFEST_MAGIC, MAX_SEQ, RECORD_HEADER_LEN,
    SEGMENT_FLAG_AFTER_RESTART, SEGMENT_HEADER_LEN,
};
use super::mmap::{MapWriter, SegmentMap};

/// Settings of a queue log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Size a segment is mapped at; a record that does not fit starts a new segment.
    pub segment_bytes: usize,
    /// Largest record (header + metadata + body) accepted.
    pub max_record_bytes: usize,
    /// A sealed segment whose live share falls to this fraction or below has its survivors
    /// copied forward, so a few slow messages never pin whole segments.
    pub relocate_live_fraction: f64,
    /// How long a segment stays sealed before its survivors may be relocated.
    pub relocate_after: Duration,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 8 << 20,
            max_record_bytes: (16 << 20) + (64 << 10),
            relocate_live_fraction: 0.10,
            relocate_after: Duration::from_secs(30),
        }
    }
}

/// The first space reserved for a segment, and the largest single extension.
pub(crate) const MIN_CHUNK: usize = 64 << 10;
pub(crate) const MAX_CHUNK: usize = 1 << 20;
/// Space reserved by the smallest extension: a record's needs are rounded up to this.
const PAGE: usize = 4096;
/// Blocks kept reserved past the end of a manifest, so the `Deleted` records that free space
/// can still be written when the disk is full.
const MANIFEST_HEADROOM: u64 = 8 << 10;
/// An `offsets` slot whose record was lost to corruption.
const NO_RECORD: u32 = u32::MAX;
/// Longest run of unused seqs [`QueueLog::skip_to`] leaves as empty slots (4 bytes each)
/// rather than start a new segment.
const MAX_SLOT_GAP: u64 = 4096;
/// Prefix of a queue directory being created: renamed into place once complete, removed at
/// open if a stop interrupted the creation.
pub(crate) const CREATING_PREFIX: &str = ".creating-";

pub(crate) fn segment_path(dir: &Path, no: u64) -> PathBuf {
    dir.join(format!("{no:020}.seg"))
}
pub(crate) fn ack_path(dir: &Path, no: u64) -> PathBuf {
    dir.join(format!("{no:020}.ack"))
}
pub(crate) const MANIFEST_FILE: &str = "manifest.log";

/// A message read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Per-queue sequence number.
    pub seq: u64,
    /// Publish time, Unix milliseconds.
    pub timestamp_ms: u64,
    /// The opaque metadata block stored with the message.
    pub meta: Bytes,
    /// The body.
    pub body: Bytes,
}

/// What [`QueueLog::peek`] reads of a live message: everything but the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageHead<'a> {
    /// Publish time (when the queue stored it), Unix milliseconds.
    pub timestamp_ms: u64,
    /// The opaque metadata block stored with the message.
    pub meta: &'a [u8],
}

/// Where an appended message went and when it will be durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The message's sequence number.
    pub seq: u64,
    /// The group-commit epoch that makes it durable.
    pub epoch: Epoch,
}

/// A growable bit set over a segment's message slots.
#[derive(Debug, Default)]
pub(crate) struct Bits(Vec<u64>);

impl Bits {
    pub(crate) fn set(&mut self, i: usize, v: bool) {
        let w = i / 64;
        if w >= self.0.len() {
            self.0.resize(w + 1, 0);
        }
        if v {
            self.0[w] |= 1 << (i % 64);
        } else {
            self.0[w] &= !(1 << (i % 64));
        }
    }
    pub(crate) fn get(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    /// The first set bit at or after `i`.
    pub(crate) fn next_set(&self, i: usize) -> Option<usize> {
        let mut w = i / 64;
        let mut word = *self.0.get(w)? & (!0u64 << (i % 64));
        loop {
            if word != 0 {
                return Some(w * 64 + word.trailing_zeros() as usize);
            }
            w += 1;
            word = *self.0.get(w)?;
        }
    }
}

/// A segment file with its mapping; shared with readers through `Bytes`.
#[derive(Debug)]
pub(crate) struct SegmentFile {
    pub(crate) no: u64,
    pub(crate) path: Arc<Path>,
    pub(crate) file: Arc<File>,
    pub(crate) id: FileId,
    pub(crate) salt: u32,
    pub(crate) base_seq: u64,
    pub(crate) map: Arc<SegmentMap>,
}

/// The ack log of one segment, created on its first flush.
#[derive(Debug)]
pub(crate) struct AckLog {
    pub(crate) path: Arc<Path>,
    pub(crate) file: Option<(Arc<File>, FileId)>,
    pub(crate) salt: u32,
    pub(crate) write_pos: u64,
    pub(crate) pending: AckBatch,
}

/// In-memory state of one segment.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) file: SegmentFile,
    /// Present while this is the segment being appended to.
    pub(crate) writer: Option<MapWriter>,
    /// Offset of the message record for `base_seq + i`.
    pub(crate) offsets: Vec<u32>,
    /// Which message slots are still live here.
    pub(crate) live: Bits,
    /// Valid records in the file (messages and relocated copies).
    pub(crate) records: u32,
    /// Records no longer live here: acknowledged, or moved to a newer segment.
    pub(crate) dead: u32,
    pub(crate) sealed_at: Option<Instant>,
    /// Epoch after which the relocation of this segment's survivors is durable.
    pub(crate) relocated_at: Option<Epoch>,
    /// Epoch after which the manifest's `Deleted` record for this segment is durable.
    pub(crate) deleting: Option<Epoch>,
    pub(crate) ack_log: AckLog,
    pub(crate) acks_dirty: bool,
}

impl Segment {
    fn slot(&self, seq: u64) -> Option<usize> {
        let i = seq.checked_sub(self.file.base_seq)? as usize;
        (i < self.offsets.len()).then_some(i)
    }
    fn is_empty_of_live(&self) -> bool {
        self.dead == self.records
    }
}

/// The append-only manifest: `Created` and `Deleted` records for every segment.
#[derive(Debug)]
pub(crate) struct Manifest {
    pub(crate) path: Arc<Path>,
    pub(crate) file: Arc<File>,
    pub(crate) id: FileId,
    pub(crate) salt: u32,
    pub(crate) write_pos: u64,
    /// Bytes with disk blocks reserved (beyond the file size: `FALLOC_FL_KEEP_SIZE`).
    pub(crate) reserved: u64,
}

impl Manifest {
    pub(crate) fn create(dir: &Path, queue_uid: u64) -> Result<Self> {
        let path: Arc<Path> = dir.join(MANIFEST_FILE).into();
        let file = files::create_new(&path)?;
        let salt = fastrand::u32(..);
        let header = LogHeader {
            magic: MANIFEST_MAGIC,
            salt,
            queue_uid,
            segment_no: 0,
        };
        files::write_at(&file, &path, &header.encode(), 0)?;
        let mut m = Self {
            path,
            file: Arc::new(file),
            id: new_file_id(),
            salt,
            write_pos: LOG_HEADER_LEN as u64,
            reserved: 0,
        };
        m.keep_headroom();
        Ok(m)
    }

    pub(crate) fn append(&mut self, rec: ManifestRecord, durability: &Durability) -> Result<Epoch> {
        let bytes = rec.encode(self.salt);
        files::write_at(&self.file, &self.path, &bytes, self.write_pos)?;
        self.write_pos += bytes.len() as u64;
        self.keep_headroom();
        Ok(durability.mark_file(self.id, &self.file, &self.path, None))
    }

    /// Keeps disk blocks reserved ahead of the manifest's end (best effort, without changing
    /// the file size), so deleting segments, the way space comes back, never needs new space.
    pub(crate) fn keep_headroom(&mut self) {
        if self.reserved >= self.write_pos + MANIFEST_HEADROOM / 2 {
            return;
        }
        let to = self.write_pos + MANIFEST_HEADROOM;
        if files::reserve_keep_size(&self.file, self.write_pos, to) {
            self.reserved = to;
        }
    }
}

/// What opening a queue found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments kept.
    pub segments: usize,
    /// Live (unacknowledged) messages.
    pub messages: u64,
    /// Sum of live metadata and body bytes.
    pub bytes: u64,
    /// The torn tail cut after an unclean stop, if any.
    pub torn_tail: Option<TornTail>,
    /// Damage to durable data: reported, never silently dropped.
    pub damage: Vec<Damage>,
}

/// A torn tail: bytes after the last valid record that no completed sync covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// Segment where the tail was cut.
    pub segment_no: u64,
    /// Offset of the first invalid byte.
    pub offset: u64,
    /// Later, never-durable segments removed.
    pub segments_discarded: usize,
}

/// Delivery state persisted lazily, as recovered at open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveredDeliveries {
    /// Highest seq handed to a consumer before the stop: live messages at or below it may have
    /// been delivered and must be flagged redelivered.
    pub delivered_hwm: u64,
    /// Delivery counts of messages delivered more than once.
    pub counts: BTreeMap<u64, u32>,
    /// Due times (Unix ms) recorded by [`QueueLog::record_due`], the last one per seq. A due
    /// time recorded this way replaces the one in the message's meta block.
    pub dues: BTreeMap<u64, u64>,
    /// After an unclean stop, every live message below this seq may have been delivered,
    /// above `delivered_hwm` too (the watermark rides the lazy ack writes, so a crash can
    /// lose its last steps): flag them redelivered, without counting a delivery. After a clean
    /// stop the watermark is exact and this is 0.
    pub maybe_delivered_below: u64,
}

/// The log of one queue.
#[derive(Debug)]
pub struct QueueLog {
    pub(crate) uid: u64,
    pub(crate) dir: PathBuf,
    pub(crate) config: LogConfig,
    pub(crate) durability: Durability,
    pub(crate) checkpoint: Arc<CheckpointTarget>,
    pub(crate) segments: BTreeMap<u64, Segment>,
    /// `base_seq` → segment number, for segments holding at least one message slot.
    pub(crate) seq_index: BTreeMap<u64, u64>,
    /// Live relocated copies: seq → (segment number, offset).
    pub(crate) moved: BTreeMap<u64, (u64, u32)>,
    /// The active segment, or (with no writer) the highest segment number used so far.
    pub(crate) active: u64,
    /// Set at open: the next segment started (at the first append) is flagged as started
    /// after a restart, so the seqs before it may jump.
    pub(crate) resume_after_restart: bool,
    pub(crate) next_seq: u64,
    pub(crate) manifest: Manifest,
    pub(crate) live_messages: u64,
    pub(crate) live_bytes: u64,
    pub(crate) delivered_hwm: u64,
    pub(crate) recovered: RecoveredDeliveries,
    pub(crate) report: RecoveryReport,
    /// The last flush could not write some acks (and said so): out of descriptors, every
    /// flush would fail the same way, and one warning per run of failures is enough.
    pub(crate) acks_failing: bool,
    /// A view rebuilt at every start (a replicated queue's): its messages are not synced by
    /// the group commit, since something else (the raft log) makes them durable.
    pub(crate) volatile: bool,
}

/// A clean close writes the pending acks, so a drained queue stays drained after a restart;
/// the store's sync thread makes them durable when it stops.
impl Drop for QueueLog {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!(queue = self.uid, error = %e, "could not write acks at close");
        }
    }
}

impl QueueLog {
    /// Creates an empty log in the new directory `dir`, atomically: the directory is built
    /// under a temporary name next to it (manifest written and synced) and renamed into place,
    /// so a stop half-way never leaves something that looks like a queue. The first segment is
    /// started by the first append.
    pub(crate) fn create(
        uid: u64,
        dir: PathBuf,
        config: LogConfig,
        durability: Durability,
    ) -> Result<Self> {
        let parent = dir
            .parent()
            .expect("a queue directory has a parent")
            .to_path_buf();
        let tmp = parent.join(format!("{CREATING_PREFIX}{uid:016x}"));
        // Opened before anything is created: out of descriptors, nothing is left behind (a
        // failure to open it after the rename would leave a queue directory nobody knows).
        let parent_dir = files::open_dir(&parent)?;
        let build = || -> Result<Manifest> {
            fault::check(Point::CreateDir, &tmp)
                .and_then(|()| std::fs::create_dir(&tmp))
                .map_err(|e| StorageError::io(&tmp, e))?;
            let mut manifest = Manifest::create(&tmp, uid)?;
            manifest
                .file
                .sync_data()
                .map_err(|e| StorageError::io(&*manifest.path, e))?;
            files::sync_dir(&tmp)?;
            fault::check(Point::Rename, &dir)
                .and_then(|()| std::fs::rename(&tmp, &dir))
                .map_err(|e| StorageError::io(&dir, e))?;
            manifest.path = dir.join(MANIFEST_FILE).into();
            Ok(manifest)
        };
        let manifest = match build() {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        files::sync_open_dir(&parent_dir, &parent)?;
        drop(parent_dir);
        Ok(Self::assemble(
            uid,
            dir,
            config,
            durability,
            manifest,
            BTreeMap::new(),
            1,
        ))
    }

    pub(crate) fn assemble(
        uid: u64,
        dir: PathBuf,
        config: LogConfig,
        durability: Durability,
        manifest: Manifest,
        segments: BTreeMap<u64, Segment>,
        next_seq: u64,
    ) -> Self {
        let checkpoint = Arc::new(CheckpointTarget {
            queue_uid: uid,
            dir: dir.clone(),
        });
        Self {
            uid,
            dir,
            config,
            durability,
            checkpoint,
            segments,
            seq_index: BTreeMap::new(),
            moved: BTreeMap::new(),
            active: 0,
            resume_after_restart: false,
            next_seq,
            manifest,
            live_messages: 0,
            live_bytes: 0,
            delivered_hwm: 0,
            recovered: RecoveredDeliveries::default(),
            report: RecoveryReport::default(),
            acks_failing: false,
            volatile: false,
        }
    }

    /// The queue's storage identity (its directory name).
    pub fn uid(&self) -> u64 {
        self.uid
    }

    /// The queue's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Live (unacknowledged) messages.
    pub fn message_count(&self) -> u64 {
        self.live_messages
    }

    /// Metadata and body bytes of live messages.
    pub fn message_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// Segments on disk (including the active one).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The sequence number the next append gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// What opening this log found (empty for a new log).
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// True if opening found lost messages (the queue serves what survived).
    pub fn is_degraded(&self) -> bool {
        self.report.damage.iter().any(Damage::loses_messages)
    }

    /// Delivery state found at open; the queue uses it to flag redeliveries.
    pub fn recovered_deliveries(&self) -> &RecoveredDeliveries {
        &self.recovered
    }

    /// The sync thread this log's writes wait on.
    pub fn durability(&self) -> &Durability {
        &self.durability
    }

    // ------------------------------------------------------------------------------------
    // Appending
    // ------------------------------------------------------------------------------------

    /// Appends a message and tags it for the next group commit. On `StorageFull` nothing was
    /// written and the seq was not consumed.
    pub fn append(&mut self, meta: &[u8], body: &[u8], timestamp_ms: u64) -> Result<Appended> {
        let seq = self.next_seq;
        if seq > MAX_SEQ {
            // A record with a larger seq would not be read back.
            return Err(StorageError::SeqsExhausted { max: MAX_SEQ });
        }
        let (no, offset, end) =
            self.append_record(RecordKind::Message, seq, timestamp_ms, meta, body)?;
        self.next_seq += 1;
        let seg = self.segments.get_mut(&no).expect("active segment");
        if seg.offsets.is_empty() {
            self.seq_index.insert(seg.file.base_seq, no);
        }
        debug_assert_eq!(seg.file.base_seq + seg.offsets.len() as u64, seq);
        let i = seg.offsets.len();
        seg.offsets.push(offset as u32);
        seg.live.set(i, true);
        seg.records += 1;
        self.live_messages += 1;
        self.live_bytes += (meta.len() + body.len()) as u64;
        let epoch = self.tag(no, end);
        Ok(Appended { seq, epoch })
    }

    /// Makes `seq` the next append's sequence number, leaving the seqs before it unused: a
    /// replicated queue's log is a view of its raft group's state, whose seqs it must keep
    /// (a snapshot's live messages have gaps where acked ones were). A short gap is left as
    /// empty slots in the active segment; a long one starts a new segment at `seq`. A `seq`
    /// not above the next one is an error (seqs only grow).
    pub fn skip_to(&mut self, seq: u64) -> Result<()> {
        if seq > MAX_SEQ {
            return Err(StorageError::SeqsExhausted { max: MAX_SEQ });
        }
        if seq < self.next_seq {
            return Err(StorageError::SeqBehind {
                seq,
                next: self.next_seq,
            });
        }
        let gap = seq - self.next_seq;
        if gap == 0 {
            return Ok(());
        }
        let active = self
            .segments
            .get_mut(&self.active)
            .filter(|s| s.writer.is_some());
        match active {
            Some(seg) if !seg.offsets.is_empty() && gap <= MAX_SLOT_GAP => {
                seg.offsets
                    .extend(std::iter::repeat_n(NO_RECORD, gap as usize));
                self.next_seq = seq;
            }
            Some(_) => {
                self.next_seq = seq;
                self.rotate(0)?;
            }
            // No segment to append to: the next append starts one at `seq`.
            None => self.next_seq = seq,
        }
        Ok(())
    }

    fn tag(&self, no: u64, end: usize) -> Epoch {
        if self.volatile {
            return 0;
        }
        let seg = &self.segments[&no].file;
        let w = Watermark {
            segment_no: no,
            offset: end as u64,
        };
        self.durability
            .mark_file(seg.id, &seg.file, &seg.path, Some((&self.checkpoint, w)))
    }

    /// Writes one record into the active segment (rotating first if it does not fit) and
    /// returns (segment, offset, end).
    fn append_record(
        &mut self,
        kind: RecordKind,
        seq: u64,
        timestamp_ms: u64,
        meta: &[u8],
        body: &[u8],
    ) -> Result<(u64, usize, usize)> {
        let rec_len = RecordHeader::record_len(meta.len(), body.len());
        if rec_len > self.config.max_record_bytes {
            return Err(StorageError::RecordTooLarge {
                size: rec_len,
                max: self.config.max_record_bytes,
            });
        }
        let padded = align_up(rec_len);
        let fits = |w: &MapWriter| w.map().committed() + padded <= w.capacity();
        let active = self
            .segments
            .get(&self.active)
            .and_then(|s| s.writer.as_ref());
        if !active.is_some_and(fits) {
            self.rotate(padded)?;
        }
        let seg = self.segments.get_mut(&self.active).expect("active segment");
        let writer = seg.writer.as_mut().expect("active segment has a writer");
        let start = writer.map().committed();
        let end = start + padded;
        if end > writer.allocated() {
            let cap = writer.capacity();
            let from = writer.allocated();
            let chunk = from.clamp(MIN_CHUNK, MAX_CHUNK);
            let target = end.max(from + chunk).min(cap);
            let target = reserve_or_just_enough(&seg.file.file, &seg.file.path, from, target, end)?;
            writer.set_allocated(target);
        }
        let header = RecordHeader {
            rec_len: rec_len as u32,
            kind,
            flags: 1,
            meta_len: meta.len() as u32,
            seq,
            timestamp_ms,
        }
        .encode(seg.file.salt, meta, body);
        fault::check(Point::Write, &seg.file.path)
            .map_err(|e| StorageError::io(seg.file.path.to_path_buf(), e))?;
        let at = writer
            .append(&[&header, meta, body], end)
            .map_err(|e| StorageError::io(seg.file.path.to_path_buf(), e))?;
        seg.records += u32::from(kind == RecordKind::Relocated);
        Ok((self.active, at, end))
    }

    /// Seals the active segment and starts the next one, sized for at least `needed` bytes.
    /// The first segment after an open is flagged as started after a restart: writing always
    /// resumes in a fresh segment, so a recovered tail is never written twice.
    fn rotate(&mut self, needed: usize) -> Result<()> {
        let no = self.active + 1;
        self.start_segment(no, needed, self.resume_after_restart)?;
        self.resume_after_restart = false;
        Ok(())
    }

    /// Creates segment `no` as the new active segment. If creation fails, the old active
    /// segment stays active and nothing is left behind.
    pub(crate) fn start_segment(
        &mut self,
        no: u64,
        needed: usize,
        after_restart: bool,
    ) -> Result<()> {
        let path: Arc<Path> = segment_path(&self.dir, no).into();
        let cap = self
            .config
            .segment_bytes
            .max(align_up(SEGMENT_HEADER_LEN + needed).next_multiple_of(4096));
        let first = (SEGMENT_HEADER_LEN + needed).max(MIN_CHUNK).min(cap);
        let salt = fastrand::u32(..);
        let base_seq = self.next_seq;
        // Opened first: out of descriptors, nothing has been created yet.
        let dir = DirHandle::open(&self.dir)?;
        let created = (|| -> Result<SegmentFile> {
            let file = files::create_new(&path)?;
            let first =
                reserve_or_just_enough(&file, &path, 0, first, SEGMENT_HEADER_LEN + needed)?;
            let header = SegmentHeader {
                queue_uid: self.uid,
                segment_no: no,
                base_seq,
                salt,
                created_unix_ms: files::now_unix_ms(),
                flags: if after_restart {
                    SEGMENT_FLAG_AFTER_RESTART
                } else {
                    0
                },
            };
            files::write_at(&file, &path, &header.encode(), 0)?;
            let map = SegmentMap::map(&file, cap, SEGMENT_HEADER_LEN, first)
                .map_err(|e| StorageError::io(&*path, e))?;
            let created = ManifestRecord::Created {
                segment_no: no,
                base_seq,
                after_restart,
            };
            self.manifest.append(created, &self.durability)?;
            Ok(SegmentFile {
                no,
                path: Arc::clone(&path),
                file: Arc::new(file),
                id: new_file_id(),
                salt,
                base_seq,
                map: Arc::new(map),
            })
        })();
        let file = match created {
            Ok(f) => f,
            Err(e) => {
                let _ = files::remove_if_exists(&path);
                return Err(e);
            }
        };
        self.durability.mark_dir(dir);
        let writer = file
            .map
            .writer(Arc::clone(&file.file))
            .expect("new map has no writer yet");
        let ack_log = AckLog {
            path: ack_path(&self.dir, no).into(),
            file: None,
            salt: fastrand::u32(..),
            write_pos: LOG_HEADER_LEN as u64,
            pending: AckBatch::default(),
        };
        let old = self.active;
        self.segments.insert(
            no,
            Segment {
                file,
                writer: Some(writer),
                offsets: Vec::new(),
                live: Bits::default(),
                records: 0,
                dead: 0,
                sealed_at: None,
                relocated_at: None,
                deleting: None,
                ack_log,
                acks_dirty: false,
            },
        );
        self.active = no;
        // The header and the directory entry must be durable before any record in the new
        // segment is: tag the file now so the next group commit covers it.
        let seg = &self.segments[&no].file;
        self.durability
            .mark_file(seg.id, &seg.file, &seg.path, None);
        // (After an open, `old` names a recovered segment, sealed already.)
        if let Some(prev) = self.segments.get_mut(&old).filter(|s| s.writer.is_some()) {
            prev.writer = None;
            prev.sealed_at = Some(Instant::now());
            prev.file.map.release_resident();
            self.maybe_delete(old);
        }
        Ok(())
    }

    // ------------------------------------------------------------------------------------
    // Reading
    // ------------------------------------------------------------------------------------

    fn locate(&self, seq: u64) -> Option<(u64, u32)> {
        if let Some(&loc) = self.moved.get(&seq) {
            return Some(loc);
        }
        let (_, &no) = self.seq_index.range(..=seq).next_back()?;
        let seg = &self.segments[&no];
        let i = seg.slot(seq)?;
        (seg.live.get(i) && seg.offsets[i] != NO_RECORD).then(|| (no, seg.offsets[i]))
    }

    /// True if `seq` is live (written and not acknowledged).
    pub fn contains(&self, seq: u64) -> bool {
        self.locate(seq).is_some()
    }

    /// Reads a live message. The returned `Bytes` share the segment mapping (no copy) and stay
    /// valid after the message is acknowledged or its segment deleted. The record's checksum is
    /// verified on every read: a damaged record is never returned.
    pub fn read(&self, seq: u64) -> Result<StoredMessage> {
        let (no, offset) = self.locate(seq).ok_or(StorageError::NotLive(seq))?;
        let seg = &self.segments[&no].file;
        let corrupt = |reason| StorageError::CorruptRecord { seq, reason };
        let off = offset as usize;
        let len = seg
            .map
            .read(off, 8)
            .and_then(RecordHeader::peek_len)
            .ok_or(corrupt("record beyond the written data"))? as usize;
        let rec = seg
            .map
            .read(off, len)
            .ok_or(corrupt("record length beyond the written data"))?;
        let h = RecordHeader::decode(rec, seg.salt, self.config.max_record_bytes)
            .map_err(|_| corrupt("checksum or header mismatch"))?;
        if h.seq != seq {
            return Err(corrupt("record names another sequence number"));
        }
        let meta = h.meta_range();
        let body = h.body_range();
        Ok(StoredMessage {
            seq,
            timestamp_ms: h.timestamp_ms,
            meta: seg
                .map
                .bytes(off + meta.start, meta.len())
                .expect("validated"),
            body: seg
                .map
                .bytes(off + body.start, body.len())
                .expect("validated"),
        })
    }

    /// The publish time and metadata of a live message, without the body's checksum: cheap
    /// enough to call for every message at start (recovery verified each record) or for the
    /// oldest ready message after each round. A full [`read`](Self::read) still verifies the
    /// record before it is delivered.
    pub fn peek(&self, seq: u64) -> Result<MessageHead<'_>> {
        let (no, offset) = self.locate(seq).ok_or(StorageError::NotLive(seq))?;
        let map = &self.segments[&no].file.map;
        let corrupt = |reason| StorageError::CorruptRecord { seq, reason };
        let off = offset as usize;
        let header = map
            .read(off, RECORD_HEADER_LEN)
            .ok_or(corrupt("record beyond the written data"))?;
        let meta_len = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes")) as usize;
        let timestamp_ms = u64::from_le_bytes(header[24..32].try_into().expect("8 bytes"));
        let meta = map
            .read(off + RECORD_HEADER_LEN, meta_len)
            .ok_or(corrupt("metadata beyond the written data"))?;
        Ok(MessageHead { timestamp_ms, meta })
    }

    /// The first live seq greater than `after` (messages come out in seq order).
    pub fn next_live_after(&self, after: u64) -> Option<u64> {
        let from = after.checked_add(1)?;
        let moved = self.moved.range(from..).next().map(|(&s, _)| s);
        let start = self
            .seq_index
            .range(..=from)
            .next_back()
            .map(|(&b, _)| b)
            .unwrap_or(0);
        let mut in_segments = None;
        for (&base, &no) in self.seq_index.range(start..) {
            if moved.is_some_and(|m| m < base) {
                break;
            }
            let seg = &self.segments[&no];
            let i = from.saturating_sub(base) as usize;
            if let Some(j) = seg.live.next_set(i).filter(|&j| j < seg.offsets.len()) {
                in_segments = Some(base + j as u64);
                break;
            }
        }
        match (moved, in_segments) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Every live seq in order (for inspection and tests; allocates).
    pub fn live_seqs(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.live_messages as usize);
        let mut at = 0;
        while let Some(s) = self.next_live_after(at) {
            out.push(s);
            at = s;
        }
        out
    }

    // ------------------------------------------------------------------------------------
    // Acknowledging
    // ------------------------------------------------------------------------------------

    /// Acknowledges (deletes) a live message. The ack is recorded lazily: it is written at the
    /// next [`flush`](Self::flush) and becomes durable with the group commit after that; a
    /// crash before then redelivers the message (flagged), never loses one.
    pub fn ack(&mut self, seq: u64) -> Result<()> {
        let (no, offset) = self.locate(seq).ok_or(StorageError::NotLive(seq))?;
        let size = self.payload_len(no, offset);
        if self.moved.remove(&seq).is_none() {
            let seg = self.segments.get_mut(&no).expect("located");
            let i = seg.slot(seq).expect("located");
            seg.live.set(i, false);
        }
        let seg = self.segments.get_mut(&no).expect("located");
        seg.dead += 1;
        seg.ack_log.pending.acks.push(seq);
        seg.acks_dirty = true;
        self.live_messages -= 1;
        self.live_bytes -= size;
        self.maybe_delete(no);
        Ok(())
    }

    /// Records that `seq` has been delivered `count` times (persisted lazily, like acks).
    pub fn record_delivery_count(&mut self, seq: u64, count: u32) -> Result<()> {
        let (no, _) = self.locate(seq).ok_or(StorageError::NotLive(seq))?;
        let seg = self.segments.get_mut(&no).expect("located");
        seg.ack_log.pending.delivery_counts.push((seq, count));
        seg.acks_dirty = true;
        Ok(())
    }

    /// Meta plus body bytes of live message `seq` (what [`message_bytes`](Self::message_bytes)
    /// counts for it); `None` if it is not live.
    pub fn payload_bytes(&self, seq: u64) -> Option<u64> {
        let (no, offset) = self.locate(seq)?;
        Some(self.payload_len(no, offset))
    }

    /// Records that live message `seq` waits until `due_ms` (Unix ms) before it is ready
    /// again (a requeue with a delay). Written with the acks at the next
    /// [`flush`](Self::flush) and durable with the group commit after that; recovery reports
    /// the last due time recorded per seq in [`RecoveredDeliveries::dues`]. Relocation
    /// carries it to the message's new segment.
    pub fn record_due(&mut self, seq: u64, due_ms: u64) -> Result<()> {
        let (no, _) = self.locate(seq).ok_or(StorageError::NotLive(seq))?;
        let seg = self.segments.get_mut(&no).expect("located");
        seg.ack_log.pending.dues.push((seq, due_ms));
        seg.acks_dirty = true;
        Ok(())
    }

    /// Records that every seq up to `seq` may have been handed to a consumer.
    pub fn set_delivered_hwm(&mut self, seq: u64) {
        if seq > self.delivered_hwm {
            self.delivered_hwm = seq;
            // The watermark is written with an ack batch: make sure one is written even when
            // nothing is acked (a consumer that holds its messages), or a clean stop would
            // forget what was delivered.
            // Any segment not being deleted will do: recovery takes the highest watermark of
            // all batches. (Right after a restart the active segment may be a drained one.)
            if let Some(seg) = self
                .segments
                .values_mut()
                .rev()
                .find(|s| s.deleting.is_none())
            {
                seg.acks_dirty = true;
            }
        }
    }

    fn payload_len(&self, no: u64, offset: u32) -> u64 {
        let map = &self.segments[&no].file.map;
        map.read(offset as usize, RECORD_HEADER_LEN)
            .and_then(RecordHeader::peek_len)
            .map_or(0, |l| l as u64 - RECORD_HEADER_LEN as u64)
    }

    // ------------------------------------------------------------------------------------
    // Flushing, deleting, relocating
    // ------------------------------------------------------------------------------------

    /// Writes pending acks and delivery counts to the ack logs, finishes segment deletions whose
    /// manifest record is durable and relocates the survivors of nearly empty old segments.
    /// Returns the epoch that makes the written acks durable. Ack-log write errors (a full
    /// disk) keep the acks in memory for the next flush: acks never fail a client.
    pub fn flush(&mut self) -> Result<Epoch> {
        let mut epoch = 0;
        let hwm = self.delivered_hwm;
        let mut buf = Vec::new();
        let mut failed = false;
        for seg in self.segments.values_mut().filter(|s| s.acks_dirty) {
            if seg.deleting.is_some() {
                seg.ack_log.pending = AckBatch::default();
                seg.acks_dirty = false;
                continue;
            }
            buf.clear();
            seg.ack_log.pending.delivered_hwm = hwm;
            seg.ack_log.pending.encode(seg.ack_log.salt, &mut buf);
            match write_acks(
                &mut seg.ack_log,
                &buf,
                self.uid,
                seg.file.no,
                &self.durability,
                &self.dir,
            ) {
                Ok(e) => {
                    epoch = epoch.max(e);
                    seg.ack_log.pending = AckBatch::default();
                    seg.acks_dirty = false;
                }
                Err(e) => {
                    if !failed && !self.acks_failing {
                        tracing::warn!(queue = self.uid, error = %e,
                            "could not write acks; keeping them for the next flushes");
                    }
                    failed = true;
                }
            }
        }
        if self.acks_failing && !failed {
            tracing::info!(queue = self.uid, "acks are written again");
        }
        self.acks_failing = failed;
        self.maintain()?;
        Ok(epoch)
    }

    /// Schedules deletion of sealed segment `no` if nothing in it is live any more.
    fn maybe_delete(&mut self, no: u64) {
        let durable = self.durability.durable_epoch();
        let Some(seg) = self.segments.get(&no) else {
            return;
        };
        if seg.writer.is_some()
            || seg.deleting.is_some()
            || !seg.is_empty_of_live()
            || seg.relocated_at.is_some_and(|e| e > durable)
        {
            return;
        }
        match self
            .manifest
            .append(ManifestRecord::Deleted { segment_no: no }, &self.durability)
        {
            Ok(e) => self.segments.get_mut(&no).expect("present").deleting = Some(e),
            // Without a durable Deleted record the file must stay; retried at the next flush.
            Err(e) => {
                tracing::warn!(segment = no, error = %e, "could not record a segment deletion")
            }
        }
    }

    fn maintain(&mut self) -> Result<()> {
        let durable = self.durability.durable_epoch();
        let ready: Vec<u64> = self
            .segments
            .iter()
            .filter(|(_, s)| s.deleting.is_some_and(|e| e <= durable))
            .map(|(&n, _)| n)
            .collect();
        for no in ready {
            let seg = self.segments.remove(&no).expect("present");
            if self.seq_index.get(&seg.file.base_seq) == Some(&no) {
                self.seq_index.remove(&seg.file.base_seq);
            }
            files::remove_if_exists(&seg.file.path)?;
            files::remove_if_exists(&seg.ack_log.path)?;
        }
        let retry: Vec<u64> = self
            .segments
            .iter()
            .filter(|(_, s)| s.writer.is_none() && s.deleting.is_none() && s.is_empty_of_live())
            .map(|(&n, _)| n)
            .collect();
        for no in retry {
            self.maybe_delete(no);
        }
        self.relocate_sparse_segments()
    }

    fn relocate_sparse_segments(&mut self) -> Result<()> {
        let durable = self.durability.durable_epoch();
        let candidates: Vec<u64> = self
            .segments
            .iter()
            .filter(|(_, s)| {
                s.writer.is_none()
                    && s.deleting.is_none()
                    && s.relocated_at.is_none_or(|e| e <= durable)
                    && !s.is_empty_of_live()
                    && s.sealed_at
                        .is_some_and(|t| t.elapsed() >= self.config.relocate_after)
                    && f64::from(s.records - s.dead)
                        <= f64::from(s.records) * self.config.relocate_live_fraction
            })
            .map(|(&n, _)| n)
            .collect();
        for no in candidates {
            self.relocate(no)?;
        }
        Ok(())
    }

    /// Copies every live record of sealed segment `no` to the active segment as `Relocated`.
    /// Once those copies are durable the old segment holds nothing live and is deleted. If a
    /// crash leaves both copies, recovery keeps the one in the newer segment.
    pub(crate) fn relocate(&mut self, no: u64) -> Result<()> {
        let seg = &self.segments[&no];
        let base = seg.file.base_seq;
        let mut survivors: Vec<(u64, u32)> = Vec::new();
        let mut i = 0;
        while let Some(j) = seg.live.next_set(i).filter(|&j| j < seg.offsets.len()) {
            survivors.push((base + j as u64, seg.offsets[j]));
            i = j + 1;
        }
        survivors.extend(
            self.moved
                .iter()
                .filter(|(_, l)| l.0 == no)
                .map(|(&s, l)| (s, l.1)),
        );
        let map = Arc::clone(&seg.file.map);
        let salt = seg.file.salt;
        let dues = recorded_dues(&seg.ack_log, self.uid, no);
        let mut last = None;
        for (seq, offset) in survivors {
            let off = offset as usize;
            let Some(len) = map.read(off, 8).and_then(RecordHeader::peek_len) else {
                continue;
            };
            let Some(rec) = map.read(off, len as usize) else {
                continue;
            };
            let Ok(h) = RecordHeader::decode(rec, salt, self.config.max_record_bytes) else {
                continue;
            };
            let (to, at, end) = self.append_record(
                RecordKind::Relocated,
                seq,
                h.timestamp_ms,
                &rec[h.meta_range()],
                &rec[h.body_range()],
            )?;
            if let Some(&due) = dues.get(&seq) {
                // The copy must keep waiting: its segment's ack log takes the due time over
                // (written at the next flush, before this segment's deletion is recorded).
                let target = self.segments.get_mut(&to).expect("appended");
                target.ack_log.pending.dues.push((seq, due));
                target.acks_dirty = true;
            }
            if self.moved.insert(seq, (to, at as u32)).is_none() {
                let old = self.segments.get_mut(&no).expect("present");
                let i = old.slot(seq).expect("live slot");
                old.live.set(i, false);
            }
            self.segments.get_mut(&no).expect("present").dead += 1;
            last = Some(self.tag(to, end));
        }
        if let Some(e) = last {
            self.segments.get_mut(&no).expect("present").relocated_at = Some(e);
            tracing::debug!(
                queue = self.uid,
                segment = no,
                "relocated survivors of a sparse segment"
            );
        }
        Ok(())
    }

    /// Relocates every sealed segment at or below the live fraction now, ignoring its age.
    pub fn compact_now(&mut self) -> Result<()> {
        let saved = self.config.relocate_after;
        self.config.relocate_after = Duration::ZERO;
        let r = self.relocate_sparse_segments();
        self.config.relocate_after = saved;
        r
    }

    /// Disk space reserved by this queue's segments (allocated, not just written).
    pub fn disk_bytes(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| {
                        use std::os::unix::fs::MetadataExt;
                        m.blocks() * 512
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
}

fn write_acks(
    log: &mut AckLog,
    buf: &[u8],
    uid: u64,
    no: u64,
    durability: &Durability,
    dir: &Path,
) -> Result<Epoch> {
    if log.file.is_none() {
        // Opened first: out of descriptors, no ack log has been created yet.
        let dir = DirHandle::open(dir)?;
        let file = files::create_new(&log.path)?;
        let header = LogHeader {
            magic: ACK_MAGIC,
            salt: log.salt,
            queue_uid: uid,
            segment_no: no,
        };
        if let Err(e) = files::write_at(&file, &log.path, &header.encode(), 0) {
            // A full disk: leave no headerless file behind, so the next flush can start over.
            let _ = files::remove_if_exists(&log.path);
            return Err(e);
        }
        durability.mark_dir(dir);
        log.file = Some((Arc::new(file), new_file_id()));
    }
    let (file, id) = log.file.as_ref().expect("just created");
    files::write_at(file, &log.path, buf, log.write_pos)?;
    log.write_pos += buf.len() as u64;
    Ok(durability.mark_file(*id, file, &log.path, None))
}

/// Reserves `[from, target)`; if the disk cannot give that much, retries with just what is
/// needed up to `needed` (rounded up to a page, never past `target`) before giving up, so a
/// record that fits in the space left is not refused for want of a whole chunk. Returns the
/// new reserved end.
pub(crate) fn reserve_or_just_enough(
    file: &File,
    path: &Path,
    from: usize,
    target: usize,
    needed: usize,
) -> Result<usize> {
    match files::reserve(file, path, from as u64, target as u64) {
        Ok(()) => Ok(target),
        Err(e) if e.is_storage_full() => {
            let just = needed.next_multiple_of(PAGE).min(target);
            if just >= target {
                return Err(e);
            }
            files::reserve(file, path, from as u64, just as u64)?;
            Ok(just)
        }
        Err(e) => Err(e),
    }
}

/// The due times recorded in a segment's ack log (on disk and pending), the last per seq.
/// A damaged or unreadable log gives what could be read: recovery reports such damage.
fn recorded_dues(ack_log: &AckLog, uid: u64, no: u64) -> BTreeMap<u64, u64> {
    let mut batch = AckBatch::default();
    if let Ok(data) = std::fs::read(&*ack_log.path) {
        let header = LogHeader::decode(&data, ACK_MAGIC)
            .ok()
            .filter(|h| h.queue_uid == uid && h.segment_no == no);
        if let Some(header) = header {
            let mut pos = LOG_HEADER_LEN;
            while let Some(n) = batch.decode_one(&data[pos..], header.salt) {
                pos += n;
            }
        }
    }
    batch
        .dues
        .into_iter()
        .chain(ack_log.pending.dues.iter().copied())
        .collect()
}

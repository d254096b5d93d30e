//! Opening a queue log after a clean or unclean stop.
//!
//! Everything is read with `pread` (an I/O error is a value, never a SIGBUS) and every record's
//! checksum is checked. An invalid record at or past the durable watermark is a torn tail: no
//! completed sync covered it, so nothing from there on was ever confirmed, and it is cut. So is
//! a segment past the watermark whose data ends (in zeros) before the seqs its successor starts
//! after: its last pages were lost. An invalid record below the watermark is corruption of
//! durable data: it is reported, copied to `quarantine/`, and every other record is kept.
//! Every step only deletes or zeroes what a repeated recovery would delete or zero too, so
//! recovery is idempotent. What recovery keeps is synced by the next group commit, and the
//! watermark moves over it once it is.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::durability::{load_watermark, new_file_id, DirHandle, Durability};
use super::error::{Damage, Result, StorageError};
use super::files;
use super::format::{
    align_up, AckBatch, LogHeader, ManifestRecord, RecordHeader, RecordKind, SegmentHeader,
    Watermark, ACK_MAGIC, LOG_HEADER_LEN, MANIFEST_MAGIC, MANIFEST_RECORD_LEN, MAX_SEGMENT_NO,
    RECORD_HEADER_LEN, SEGMENT_FLAG_AFTER_RESTART, SEGMENT_HEADER_LEN,
};
use super::mmap::SegmentMap;
use super::queue_log::{
    ack_path, segment_path, AckLog, Bits, LogConfig, Manifest, QueueLog, RecoveredDeliveries,
    Segment, SegmentFile, TornTail, MANIFEST_FILE,
};

/// A manifest larger than this is rewritten at open with only the live segments.
const MANIFEST_REWRITE_BYTES: u64 = 1 << 20;
const NO_RECORD: u32 = u32::MAX;

struct Scanned {
    no: u64,
    path: PathBuf,
    header: SegmentHeader,
    file_len: usize,
    /// End of the last valid record: the committed length of the mapping.
    end: usize,
    /// Offsets of message slots `base_seq + i` (`NO_RECORD` where lost).
    offsets: Vec<u32>,
    /// Payload length per message slot.
    sizes: Vec<u32>,
    /// Relocated copies held here: (seq, offset, payload length).
    relocated: Vec<(u64, u32, u32)>,
    /// First seq lost to damage that skipped the rest of the segment.
    lost_from: Option<(u64, usize)>,
}

impl Scanned {
    fn records(&self) -> u32 {
        (self.offsets.iter().filter(|&&o| o != NO_RECORD).count() + self.relocated.len()) as u32
    }
}

/// Opens the log in `dir`, recovering from whatever stop came before. Recovery runs in
/// phases, each a method of [`Recovery`]: read the watermark, the manifest and the directory;
/// scan every segment (cutting a torn tail, quarantining damaged records); settle what a torn
/// tail and a skipped segment rest imply; read the ack logs; rebuild each segment's live
/// messages; assemble the log.
pub(crate) fn open(
    uid: u64,
    dir: PathBuf,
    config: LogConfig,
    durability: Durability,
) -> Result<QueueLog> {
    let mut r = Recovery::start(uid, dir, config)?;
    r.scan_segments()?;
    r.redeclare_after_torn_cut()?;
    r.bound_skipped_rests();
    let acks = r.read_ack_logs()?;
    let rebuilt = r.rebuild_segments(acks.acked, acks.logs)?;
    r.assemble(durability, acks.recovered, rebuilt)
}

/// What recovery of one queue log has learnt so far, shared by its phases.
struct Recovery {
    uid: u64,
    dir: PathBuf,
    config: LogConfig,
    /// Records below it were covered by a completed sync.
    wm: Watermark,
    manifest: Manifest,
    /// Segments the manifest says were created: number → (base seq, started after a restart).
    created: BTreeMap<u64, (u64, bool)>,
    /// Segments the manifest says were deleted.
    deleted: BTreeSet<u64>,
    seg_files: BTreeSet<u64>,
    ack_files: BTreeSet<u64>,
    /// The highest segment number any source names.
    max_no: u64,
    /// The highest seq seen anywhere, discarded tails included: never used again.
    max_seq_seen: u64,
    damage: Vec<Damage>,
    /// The segments kept, in order.
    scanned: Vec<Scanned>,
    torn: Option<TornTail>,
    /// The segment cut by a torn tail and the first seq it lost.
    torn_end_seq: Option<(u64, u64)>,
}

/// What a scan finds at a position of a segment.
enum Found {
    /// The end of the segment's data.
    End,
    /// The next message, in order.
    Message(RecordHeader),
    /// A relocated copy of an older message.
    Relocated(RecordHeader),
    /// Not a valid record, and why.
    Bad(&'static str),
}

/// The ack logs of the kept segments, in the same order.
struct AckLogs {
    recovered: RecoveredDeliveries,
    acked: Vec<HashSet<u64>>,
    logs: Vec<AckLog>,
}

/// The kept segments with their live messages.
#[derive(Default)]
struct Rebuilt {
    segments: BTreeMap<u64, Segment>,
    seq_index: BTreeMap<u64, u64>,
    moved: BTreeMap<u64, (u64, u32)>,
    live_messages: u64,
    live_bytes: u64,
}

impl Recovery {
    /// Phase 1: the watermark, the manifest and the files of the directory.
    fn start(uid: u64, dir: PathBuf, config: LogConfig) -> Result<Self> {
        // No watermark file: no sync ever completed, so nothing is below it.
        let wm = load_watermark(&dir, uid)?.unwrap_or(Watermark {
            segment_no: 0,
            offset: 0,
        });
        let (manifest, created, deleted) = open_manifest(&dir, uid)?;
        let (seg_files, ack_files) = list_files(&dir)?;
        let max_no = created
            .keys()
            .chain(&deleted)
            .chain(&seg_files)
            .chain(&ack_files)
            .chain([&wm.segment_no])
            .copied()
            .max()
            .unwrap_or(0);
        Ok(Self {
            uid,
            dir,
            config,
            wm,
            manifest,
            created,
            deleted,
            seg_files,
            ack_files,
            max_no,
            max_seq_seen: 0,
            damage: Vec::new(),
            scanned: Vec::new(),
            torn: None,
            torn_end_seq: None,
        })
    }

    fn below_wm(&self, no: u64, pos: usize) -> bool {
        (no, pos as u64) < (self.wm.segment_no, self.wm.offset)
    }

    /// The base seq of the segment created after `no` (it may since have been deleted).
    fn next_base(&self, no: u64) -> Option<u64> {
        self.created.range(no + 1..).next().map(|(_, &(b, _))| b)
    }

    /// Phase 2: every segment the directory or the manifest names, in order.
    fn scan_segments(&mut self) -> Result<()> {
        let nos: BTreeSet<u64> = self
            .seg_files
            .iter()
            .chain(self.created.keys())
            .copied()
            .collect();
        for no in nos {
            if let Some(s) = self.scan_segment(no)? {
                self.scanned.push(s);
            }
        }
        Ok(())
    }

    /// Scans segment `no`; `None` when it is not kept (deleted, discarded or lost whole).
    fn scan_segment(&mut self, no: u64) -> Result<Option<Scanned>> {
        let path = segment_path(&self.dir, no);
        if self.deleted.contains(&no) {
            // An interrupted deletion: the Deleted record is durable, finish the unlinks.
            self.remove_segment_files(no)?;
            return Ok(None);
        }
        if self.torn.is_some() {
            self.discard_after_torn_tail(no)?;
            return Ok(None);
        }
        if !self.seg_files.contains(&no) {
            self.missing_segment(no)?;
            return Ok(None);
        }
        let data = files::read_all(&path)?;
        if data.len() < SEGMENT_HEADER_LEN && no <= self.wm.segment_no {
            self.truncated_segment(no);
            return Ok(None);
        }
        let Some(header) = self.check_header(no, &path, &data)? else {
            return Ok(None);
        };
        self.adopt_if_unrecorded(no, &header)?;
        let mut s = Scanned {
            no,
            path,
            header,
            file_len: data.len(),
            end: SEGMENT_HEADER_LEN,
            offsets: Vec::new(),
            sizes: Vec::new(),
            relocated: Vec::new(),
            lost_from: None,
        };
        self.scan_records(&mut s, &data)?;
        Ok(Some(s))
    }

    fn remove_segment_files(&self, no: u64) -> Result<()> {
        files::remove_if_exists(&segment_path(&self.dir, no))?;
        files::remove_if_exists(&ack_path(&self.dir, no))
    }

    /// Segment `no` was written after a torn tail, so never covered by a completed sync:
    /// discarded, but its seqs are remembered so they are never reused.
    fn discard_after_torn_tail(&mut self, no: u64) -> Result<()> {
        if let Ok(data) = files::read_all(&segment_path(&self.dir, no)) {
            if let Ok(h) = SegmentHeader::decode(&data) {
                let max = probe_max_seq(&data, SEGMENT_HEADER_LEN, h.salt, &self.config);
                self.max_seq_seen = self.max_seq_seen.max(max);
            }
        }
        if self.created.contains_key(&no) {
            // Say so durably first, or a later start would report it missing.
            self.manifest
                .append_sync(&[ManifestRecord::Deleted { segment_no: no }])?;
        }
        self.remove_segment_files(no)?;
        if let Some(t) = self.torn.as_mut() {
            t.segments_discarded += 1;
        }
        Ok(())
    }

    /// The manifest names segment `no` but its file is gone.
    fn missing_segment(&mut self, no: u64) -> Result<()> {
        if no > self.wm.segment_no {
            // Created, but its directory entry never became durable: nothing was confirmed
            // in it. Record that it is gone so later starts do not look for it.
            return self
                .manifest
                .append_sync(&[ManifestRecord::Deleted { segment_no: no }]);
        }
        let base = self.created[&no].0;
        let lost = self
            .next_base(no)
            .filter(|&n| n > base)
            .map(|n| base..=n - 1);
        tracing::error!(
            queue = self.uid,
            segment = no,
            ?lost,
            "segment file missing: messages lost"
        );
        self.damage.push(Damage::MissingSegment {
            segment_no: no,
            lost,
        });
        Ok(())
    }

    /// A durable segment cut to (almost) nothing: everything it held is lost.
    fn truncated_segment(&mut self, no: u64) {
        let base = self.created.get(&no).map(|c| c.0);
        let lost = base
            .zip(self.next_base(no))
            .filter(|(b, n)| n > b)
            .map(|(b, n)| b..=n - 1);
        tracing::error!(
            queue = self.uid,
            segment = no,
            ?lost,
            "segment file truncated: messages lost"
        );
        self.damage.push(Damage::MissingSegment {
            segment_no: no,
            lost,
        });
    }

    /// The header of segment `no`; `None` for a torn creation past the watermark (then
    /// removed, and the start of the torn tail), an error for a damaged durable one.
    fn check_header(&mut self, no: u64, path: &Path, data: &[u8]) -> Result<Option<SegmentHeader>> {
        let bad = match SegmentHeader::decode(data) {
            Ok(h) if h.queue_uid == self.uid && h.segment_no == no => return Ok(Some(h)),
            bad => bad,
        };
        if no <= self.wm.segment_no {
            let reason = bad
                .err()
                .unwrap_or("segment belongs to another queue or file name");
            return Err(StorageError::CorruptSegmentHeader {
                path: path.to_owned(),
                reason,
            });
        }
        // The header write itself was never synced: a torn creation.
        if self.created.contains_key(&no) {
            self.manifest
                .append_sync(&[ManifestRecord::Deleted { segment_no: no }])?;
        }
        self.remove_segment_files(no)?;
        self.torn = Some(TornTail {
            segment_no: no,
            offset: 0,
            segments_discarded: 0,
        });
        Ok(None)
    }

    /// A segment the manifest does not name: the process crashed right after creating its
    /// file. It is adopted.
    fn adopt_if_unrecorded(&mut self, no: u64, header: &SegmentHeader) -> Result<()> {
        if let Entry::Vacant(e) = self.created.entry(no) {
            let after_restart = header.flags & SEGMENT_FLAG_AFTER_RESTART != 0;
            self.manifest.append_sync(&[ManifestRecord::Created {
                segment_no: no,
                base_seq: header.base_seq,
                after_restart,
            }])?;
            e.insert((header.base_seq, after_restart));
        }
        Ok(())
    }

    /// Reads the records of a segment in order until its data ends, a torn tail is cut, or
    /// damage makes the rest unreadable.
    fn scan_records(&mut self, s: &mut Scanned, data: &[u8]) -> Result<()> {
        let mut pos = SEGMENT_HEADER_LEN;
        let mut expected = s.header.base_seq;
        loop {
            pos = match self.find(s, data, pos, expected)? {
                Found::End => return Ok(()),
                Found::Message(h) => {
                    s.offsets.push(pos as u32);
                    s.sizes.push(h.rec_len - RECORD_HEADER_LEN as u32);
                    self.max_seq_seen = self.max_seq_seen.max(h.seq);
                    expected += 1;
                    after_record(pos, h.rec_len, data.len())
                }
                Found::Relocated(h) => {
                    s.relocated
                        .push((h.seq, pos as u32, h.rec_len - RECORD_HEADER_LEN as u32));
                    after_record(pos, h.rec_len, data.len())
                }
                Found::Bad(_) if !self.below_wm(s.no, pos) => {
                    return self.cut_torn_tail(s, data, pos, expected);
                }
                Found::Bad(reason) => {
                    match self.skip_damaged(s, data, pos, &mut expected, reason) {
                        Some(next) => next,
                        None => return Ok(()),
                    }
                }
            };
            s.end = pos;
        }
    }

    /// What is at `pos` of segment `s`, where message `expected` would come next.
    fn find(&self, s: &Scanned, data: &[u8], pos: usize, expected: u64) -> Result<Found> {
        let no = s.no;
        let rest = &data[pos.min(data.len())..];
        let zeros = rest.iter().all(|&b| b == 0);
        let in_durable_part = no == self.wm.segment_no && (pos as u64) < self.wm.offset;
        let reason = match RecordHeader::peek_len(rest) {
            // Zeros to the end of the file end the data, except inside the watermark
            // segment below the watermark, where durable records must be. (Earlier segments
            // that end too early are caught by the seq continuity check of
            // `bound_skipped_rests`.)
            None | Some(0) if zeros && !in_durable_part => {
                if self.below_wm(no, pos) || !ends_short(&self.dir, no, expected, &self.created)? {
                    return Ok(Found::End);
                }
                // Past the watermark, a segment that stops short of the seqs its successor
                // starts after lost its last pages: a torn tail (the successor was written
                // later, so nothing in it was confirmed either).
                "segment ends before the seqs its successor starts after"
            }
            Some(0) if !in_durable_part => {
                if self.below_wm(no, pos) {
                    return Ok(Found::End);
                }
                // Records after a gap of zeros: pages written back out of order before a
                // crash. Nothing there was confirmed; it is a torn tail.
                "data after a zeroed gap"
            }
            Some(0) => "durable data reads as zeros",
            _ => match RecordHeader::decode(rest, s.header.salt, self.config.max_record_bytes) {
                Ok(h) if h.kind == RecordKind::Message && h.seq == expected => {
                    return Ok(Found::Message(h));
                }
                Ok(h) if h.kind == RecordKind::Relocated && h.seq < s.header.base_seq => {
                    return Ok(Found::Relocated(h));
                }
                Ok(_) => "sequence number out of order",
                Err(_) => "checksum or header mismatch",
            },
        };
        Ok(Found::Bad(reason))
    }

    /// An invalid record at or past the watermark: nothing from `pos` on was ever confirmed.
    /// Cuts it (zeroes the rest of the file) and remembers the seqs it held.
    fn cut_torn_tail(&mut self, s: &Scanned, data: &[u8], pos: usize, expected: u64) -> Result<()> {
        let max = probe_max_seq(data, pos, s.header.salt, &self.config);
        self.max_seq_seen = self.max_seq_seen.max(max);
        if data[pos..].iter().any(|&b| b != 0) {
            zero_tail(&s.path, pos as u64, data.len() as u64)?;
        }
        tracing::warn!(
            queue = self.uid,
            segment = s.no,
            offset = pos,
            bytes = data.len() - pos,
            "cut a torn tail after an unclean stop"
        );
        self.torn = Some(TornTail {
            segment_no: s.no,
            offset: pos as u64,
            segments_discarded: 0,
        });
        self.torn_end_seq = Some((s.no, expected));
        Ok(())
    }

    /// An invalid record below the watermark: corruption of durable data. Quarantines it and
    /// returns where the next record starts, or `None` when its length cannot be trusted
    /// (then the rest of the segment is lost).
    fn skip_damaged(
        &mut self,
        s: &mut Scanned,
        data: &[u8],
        pos: usize,
        expected: &mut u64,
        reason: &'static str,
    ) -> Option<usize> {
        let no = s.no;
        quarantine(&self.dir, no, pos, data, &self.config);
        let rest = &data[pos.min(data.len())..];
        // Resynchronise: trust the length only if the record after it validates.
        let next = RecordHeader::peek_len(rest)
            .map(|l| l as usize)
            .filter(|&l| l >= RECORD_HEADER_LEN && l <= self.config.max_record_bytes)
            .map(|l| pos + align_up(l))
            .filter(|&n| n <= data.len());
        let next_ok = next.and_then(|n| {
            let r = &data[n..];
            match RecordHeader::peek_len(r) {
                None | Some(0) => Some(None),
                _ => RecordHeader::decode(r, s.header.salt, self.config.max_record_bytes)
                    .ok()
                    .map(Some),
            }
        });
        let (Some(n), Some(following)) = (next, next_ok) else {
            tracing::error!(
                queue = self.uid,
                segment = no,
                offset = pos,
                "corrupt record with an unusable length: the rest of the segment is lost"
            );
            s.lost_from = Some((*expected, pos));
            return None;
        };
        // Exactly one record is bad. If the one after it is the next message, the bad one
        // was message `expected`; otherwise it was a relocated copy.
        let was_message = match following {
            Some(f) if f.kind == RecordKind::Message => f.seq == *expected + 1,
            _ => rest.get(8) == Some(&(RecordKind::Message as u8)),
        };
        let lost = was_message.then_some(*expected..=*expected);
        if was_message {
            s.offsets.push(NO_RECORD);
            s.sizes.push(0);
            self.max_seq_seen = self.max_seq_seen.max(*expected);
            *expected += 1;
        }
        tracing::error!(
            queue = self.uid,
            segment = no,
            offset = pos,
            ?lost,
            "corrupt record quarantined"
        );
        self.damage.push(Damage::CorruptRecords {
            segment_no: no,
            offset: pos as u64,
            lost,
            reason,
        });
        Some(n)
    }

    /// Phase 3: the segment cut by the torn tail no longer reaches the seqs its successor
    /// (since discarded, or deleted earlier when fully acked) starts after. The successor is
    /// declared again as started after a restart, so seqs may jump before it: otherwise this
    /// start and every later one would take the shorter segment for lost durable data. Done
    /// after the discards of the scan, so a crash before it leaves the cut to be found again.
    fn redeclare_after_torn_cut(&mut self) -> Result<()> {
        let Some((no, end_seq)) = self.torn_end_seq else {
            return Ok(());
        };
        let next = self.created.range(no + 1..).next().map(|(&n, &c)| (n, c));
        if let Some((next_no, (base, false))) = next.filter(|&(_, (base, _))| base > end_seq) {
            self.manifest.append_sync(&[ManifestRecord::Created {
                segment_no: next_no,
                base_seq: base,
                after_restart: true,
            }])?;
            self.created.insert(next_no, (base, true));
        }
        Ok(())
    }

    /// Phase 4: damage that skipped the rest of a segment, or a segment that ends before
    /// the seqs its successor starts after: the next segment's base bounds what was lost.
    fn bound_skipped_rests(&mut self) {
        for s in &mut self.scanned {
            // The next segment ever created (it may since have been deleted, fully acked).
            let next = self.created.range(s.no + 1..).next().map(|(_, &c)| c);
            let next_base = next.map(|n| n.0);
            let jump_expected = next.is_some_and(|n| n.1);
            let end_seq = s.header.base_seq + s.offsets.len() as u64;
            if s.lost_from.is_none() && !jump_expected && next_base.is_some_and(|n| n > end_seq) {
                // The segment ends cleanly, but before the seqs the next segment starts
                // after: durable data was cut off (a sealed segment always holds every seq
                // up to the next segment's base).
                s.lost_from = Some((end_seq, s.end));
            }
            if let Some((from, pos)) = s.lost_from {
                let lost = next_base.filter(|&n| n > from).map(|n| from..=n - 1);
                if let Some(r) = &lost {
                    self.max_seq_seen = self.max_seq_seen.max(*r.end());
                }
                self.damage.push(Damage::CorruptRecords {
                    segment_no: s.no,
                    offset: pos as u64,
                    lost,
                    reason: "record length unusable; rest of segment skipped",
                });
            }
        }
    }

    /// Phase 5: the ack logs of the kept segments (those of the others are removed).
    fn read_ack_logs(&mut self) -> Result<AckLogs> {
        let mut acks = AckLogs {
            recovered: RecoveredDeliveries::default(),
            acked: Vec::with_capacity(self.scanned.len()),
            logs: Vec::with_capacity(self.scanned.len()),
        };
        let kept: BTreeSet<u64> = self.scanned.iter().map(|s| s.no).collect();
        for &no in &self.ack_files {
            if !kept.contains(&no) {
                files::remove_if_exists(&ack_path(&self.dir, no))?;
            }
        }
        for s in &self.scanned {
            let before = self.damage.len();
            let (log, batch) = open_ack_log(&self.dir, self.uid, s.no, &mut self.damage)?;
            let recovered = &mut acks.recovered;
            if self.damage.len() > before {
                // Acks were lost, so any message of this segment may have been delivered
                // already: make sure it comes back flagged as a redelivery.
                let end = s.header.base_seq + s.offsets.len() as u64;
                let end_relocated = s.relocated.iter().map(|r| r.0 + 1).max().unwrap_or(0);
                // (An empty segment whose header says base seq 0 ends at 0: nothing to flag.)
                let last = end.max(end_relocated).saturating_sub(1);
                recovered.delivered_hwm = recovered.delivered_hwm.max(last);
            }
            let max_acked = batch.acks.iter().copied().max().unwrap_or(0);
            self.max_seq_seen = self.max_seq_seen.max(max_acked);
            recovered.delivered_hwm = recovered.delivered_hwm.max(batch.delivered_hwm);
            for (seq, c) in batch.delivery_counts {
                let e = recovered.counts.entry(seq).or_insert(0);
                *e = (*e).max(c);
            }
            // Segments in order, then file order: the last due time recorded wins.
            recovered.dues.extend(batch.dues);
            acks.acked.push(batch.acks.into_iter().collect());
            acks.logs.push(log);
        }
        Ok(acks)
    }

    /// Phase 6: each kept segment mapped, with its live messages (not acked, not superseded
    /// by a newer relocated copy) and the live relocated copies it holds.
    fn rebuild_segments(
        &mut self,
        acked: Vec<HashSet<u64>>,
        ack_logs: Vec<AckLog>,
    ) -> Result<Rebuilt> {
        // The newest copy of a relocated message is the one that counts.
        let mut newest_copy: BTreeMap<u64, u64> = BTreeMap::new();
        for s in &self.scanned {
            for &(seq, _, _) in &s.relocated {
                newest_copy.insert(seq, s.no);
            }
        }
        let mut out = Rebuilt::default();
        let scanned = std::mem::take(&mut self.scanned);
        for ((s, acks), ack_log) in scanned.into_iter().zip(acked).zip(ack_logs) {
            let (live, live_here) = out.count_live(&s, &acks, &newest_copy);
            if !s.offsets.is_empty() {
                out.seq_index.insert(s.header.base_seq, s.no);
            }
            let no = s.no;
            out.segments
                .insert(no, map_segment(s, live, live_here, ack_log)?);
        }
        Ok(out)
    }

    /// Phase 7: the log, from the rebuilt segments; its manifest compacted when long, its
    /// recovered writes synced, the next segment declared, fully acked segments deleted.
    fn assemble(
        mut self,
        durability: Durability,
        recovered: RecoveredDeliveries,
        rebuilt: Rebuilt,
    ) -> Result<QueueLog> {
        let next_seq = (self.max_seq_seen + 1)
            .max(self.created.values().map(|c| c.0).max().unwrap_or(1))
            .max(1);
        self.compact_manifest(&rebuilt.segments)?;
        self.manifest.keep_headroom();
        let Rebuilt {
            segments,
            seq_index,
            moved,
            live_messages,
            live_bytes,
        } = rebuilt;
        let report_segments = segments.len();
        let (uid, max_no) = (self.uid, self.max_no);
        let mut log = QueueLog::assemble(
            uid,
            self.dir,
            self.config,
            durability,
            self.manifest,
            segments,
            next_seq,
        );
        log.seq_index = seq_index;
        log.moved = moved;
        log.live_messages = live_messages;
        log.live_bytes = live_bytes;
        log.delivered_hwm = recovered.delivered_hwm;
        log.recovered = recovered;
        log.report.segments = report_segments;
        log.report.messages = live_messages;
        log.report.bytes = live_bytes;
        log.report.torn_tail = self.torn;
        log.report.damage = self.damage;
        log.sync_recovered(self.wm)?;
        declare_next_segment(&mut log, uid, max_no);
        let sealed: Vec<u64> = log.segments.keys().copied().collect();
        for no in sealed {
            log.maybe_delete_recovered(no);
        }
        Ok(log)
    }

    /// Rewrites a manifest longer than [`MANIFEST_REWRITE_BYTES`] with the live segments only.
    fn compact_manifest(&mut self, segments: &BTreeMap<u64, Segment>) -> Result<()> {
        if self.manifest.write_pos <= MANIFEST_REWRITE_BYTES {
            return Ok(());
        }
        match rewrite_manifest(&self.dir, self.uid, segments, self.max_no) {
            Ok(m) => self.manifest = m,
            // A full disk must not keep a queue from opening (draining it frees space): the
            // long manifest serves as well, and the rewrite is tried again at the next open.
            Err(e) if e.is_storage_full() => {
                tracing::warn!(queue = self.uid, error = %e, "could not rewrite the manifest");
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

impl Rebuilt {
    /// The live messages of `s` and how many records of it are live (relocated copies
    /// included); counts them, and notes its live relocated copies.
    fn count_live(
        &mut self,
        s: &Scanned,
        acks: &HashSet<u64>,
        newest_copy: &BTreeMap<u64, u64>,
    ) -> (Bits, u32) {
        let mut live = Bits::default();
        let mut live_here = 0u32;
        for (i, (&off, &size)) in s.offsets.iter().zip(&s.sizes).enumerate() {
            let seq = s.header.base_seq + i as u64;
            if off != NO_RECORD && !acks.contains(&seq) && !newest_copy.contains_key(&seq) {
                live.set(i, true);
                live_here += 1;
                self.live_messages += 1;
                self.live_bytes += u64::from(size);
            }
        }
        for &(seq, off, size) in &s.relocated {
            if newest_copy.get(&seq) == Some(&s.no) && !acks.contains(&seq) {
                self.moved.insert(seq, (s.no, off));
                live_here += 1;
                self.live_messages += 1;
                self.live_bytes += u64::from(size);
            }
        }
        (live, live_here)
    }
}

/// A kept segment, mapped and sealed, with `live_here` of its records live.
fn map_segment(s: Scanned, live: Bits, live_here: u32, ack_log: AckLog) -> Result<Segment> {
    let records = s.records();
    let file = files::open_rw(&s.path)?;
    let map = SegmentMap::map(&file, s.file_len, s.end, s.file_len)
        .map_err(|e| StorageError::io(&s.path, e))?;
    Ok(Segment {
        file: SegmentFile {
            no: s.no,
            path: s.path.into(),
            file: Arc::new(file),
            id: new_file_id(),
            salt: s.header.salt,
            base_seq: s.header.base_seq,
            map: Arc::new(map),
        },
        writer: None,
        offsets: s.offsets,
        live,
        records,
        dead: records - live_here,
        sealed_at: Some(Instant::now()),
        relocated_at: None,
        deleting: None,
        ack_log,
        acks_dirty: false,
    })
}

/// Writing always resumes in a fresh segment, so a recovered tail is never written twice.
/// It is started by the first append, not here: opening needs no new space, so a queue on a
/// full disk can still be opened and drained (which is how space comes back). Its number and
/// base seq are declared in the manifest now (as a `Created` record whose file does not exist
/// yet, which a later recovery handles like a creation that never reached the disk): the
/// record keeps seqs seen in a discarded tail from being reused, and says that seqs may jump
/// before it. It fits in the manifest's reserved headroom.
fn declare_next_segment(log: &mut QueueLog, uid: u64, max_no: u64) {
    log.active = max_no;
    log.resume_after_restart = true;
    let declared = ManifestRecord::Created {
        segment_no: max_no + 1,
        base_seq: log.next_seq,
        after_restart: true,
    };
    if let Err(e) = log.manifest.append(declared, &log.durability) {
        // The first append writes the same record (or fails the same way) before any seq is
        // used.
        tracing::warn!(queue = uid, error = %e, "could not declare the next segment");
    }
}

/// Where the record at `pos` of `rec_len` bytes (validated, so inside the file) ends with its
/// padding. A file cut at a length that is not a multiple of 8 can end inside the padding of
/// a whole record: then the data ends at the file's end, and nothing follows.
fn after_record(pos: usize, rec_len: u32, file_len: usize) -> usize {
    (pos + align_up(rec_len as usize)).min(file_len)
}

/// True if segment `no`, whose records end before seq `expected`, stops short of its
/// successor: the next segment was started by a rotation (not after a restart, where seqs may
/// jump) at a later base seq, so seqs in between were written here and lost.
fn ends_short(
    dir: &Path,
    no: u64,
    expected: u64,
    created: &BTreeMap<u64, (u64, bool)>,
) -> Result<bool> {
    let next = match created.range(no + 1..).next() {
        Some((_, &c)) => Some(c),
        None => successor_by_header(dir, no)?,
    };
    Ok(next.is_some_and(|(base, after_restart)| !after_restart && base > expected))
}

/// The base seq and restart flag of the segment after `no` according to its own header, for a
/// successor without a manifest record (a crash right after its creation). `None` when there
/// is none or its header is cut short or damaged; an error when it cannot be read at all (out
/// of descriptors), so that a guess never decides what is a torn tail.
fn successor_by_header(dir: &Path, no: u64) -> Result<Option<(u64, bool)>> {
    let (segs, _) = list_files(dir)?;
    let Some(&next) = segs.range(no + 1..).next() else {
        return Ok(None);
    };
    let path = segment_path(dir, next);
    let f = File::open(&path).map_err(|e| StorageError::io(&path, e))?;
    let mut b = [0u8; SEGMENT_HEADER_LEN];
    match std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(StorageError::io(&path, e)),
    }
    Ok(SegmentHeader::decode(&b)
        .ok()
        .map(|h| (h.base_seq, h.flags & SEGMENT_FLAG_AFTER_RESTART != 0)))
}

impl QueueLog {
    /// Has the next group commit sync everything recovery kept that no completed sync may have
    /// covered, and moves the durable watermark over it once synced.
    ///
    /// After a process crash, writes that were never synced are still in the page cache, and
    /// recovery reads them from there: the segments past the watermark, the ack logs. Unless
    /// they are synced, a clean stop does not make them durable, and the watermark of the
    /// next append (in a newer segment, so vouching for every earlier one) would cover pages
    /// that a power loss can still take, turning a lost unsynced page into reported
    /// corruption. The deletions recovery decides next (fully acked segments, originals of
    /// relocated copies) ride a later epoch, so they happen only once this is durable.
    fn sync_recovered(&self, wm: Watermark) -> Result<()> {
        let dir = DirHandle::open(&self.dir)?;
        let mut last = None;
        for seg in self.segments.values() {
            if seg.file.no >= wm.segment_no {
                self.durability
                    .mark_file(seg.file.id, &seg.file.file, &seg.file.path, None);
                last = Some(&seg.file);
            }
            if let Some((file, id)) = &seg.ack_log.file {
                self.durability
                    .mark_file(*id, file, &seg.ack_log.path, None);
            }
        }
        if let Some(f) = last {
            // Never lower it: damage below the old watermark must stay classified as such.
            let w = wm.max(Watermark {
                segment_no: f.no,
                offset: f.map.committed() as u64,
            });
            self.durability
                .mark_file(f.id, &f.file, &f.path, Some((&self.checkpoint, w)));
        }
        self.durability.mark_dir(dir);
        Ok(())
    }

    fn maybe_delete_recovered(&mut self, no: u64) {
        let seg = &self.segments[&no];
        if seg.dead == seg.records {
            if let Ok(e) = self
                .manifest
                .append(ManifestRecord::Deleted { segment_no: no }, &self.durability)
            {
                self.segments.get_mut(&no).expect("present").deleting = Some(e);
            }
        }
    }
}

impl Manifest {
    /// Appends records and syncs them before returning (used during recovery only).
    fn append_sync(&mut self, recs: &[ManifestRecord]) -> Result<()> {
        let bytes: Vec<u8> = recs.iter().flat_map(|r| r.encode(self.salt)).collect();
        files::write_at(&self.file, &self.path, &bytes, self.write_pos)?;
        self.write_pos += bytes.len() as u64;
        self.file
            .sync_data()
            .map_err(|e| StorageError::io(&*self.path, e))
    }
}

/// The manifest, segments created (number → base seq, started after a restart), deleted.
type ManifestState = (Manifest, BTreeMap<u64, (u64, bool)>, BTreeSet<u64>);

fn open_manifest(dir: &Path, uid: u64) -> Result<ManifestState> {
    let path = dir.join(MANIFEST_FILE);
    if !path.exists() {
        let m = Manifest::create(dir, uid)?;
        files::sync_dir(dir)?;
        return Ok((m, BTreeMap::new(), BTreeSet::new()));
    }
    let data = files::read_all(&path)?;
    let header = match LogHeader::decode(&data, MANIFEST_MAGIC) {
        Ok(h) if h.queue_uid == uid => h,
        _ => {
            // A torn or damaged manifest header: keep the old file for inspection and rebuild
            // from the segment files, whose own headers say what they are.
            tracing::error!(path = %path.display(), "manifest header damaged; rebuilding from segments");
            let aside = dir.join("manifest.log.damaged");
            std::fs::rename(&path, &aside).map_err(|e| StorageError::io(&path, e))?;
            let m = Manifest::create(dir, uid)?;
            files::sync_dir(dir)?;
            return Ok((m, BTreeMap::new(), BTreeSet::new()));
        }
    };
    let mut created = BTreeMap::new();
    let mut deleted = BTreeSet::new();
    let mut pos = LOG_HEADER_LEN;
    while let Some(rec) = data
        .get(pos..)
        .and_then(|r| ManifestRecord::decode(r, header.salt))
    {
        match rec {
            ManifestRecord::Created {
                segment_no,
                base_seq,
                after_restart,
            } => {
                created.insert(segment_no, (base_seq, after_restart));
            }
            ManifestRecord::Deleted { segment_no } => {
                deleted.insert(segment_no);
            }
        }
        pos += MANIFEST_RECORD_LEN;
    }
    let file = files::open_rw(&path)?;
    if data[pos.min(data.len())..].iter().any(|&b| b != 0) {
        // A torn manifest append: nothing after it was confirmed to anyone.
        file.set_len(pos as u64)
            .map_err(|e| StorageError::io(&path, e))?;
    }
    // Recovery acts on these records (unlinks what they say is deleted); after a process crash
    // the last of them may be in the page cache only, so make them durable first, or a power
    // loss could keep the unlinks and lose the records that justified them.
    file.sync_data().map_err(|e| StorageError::io(&path, e))?;
    let manifest = Manifest {
        path: path.into(),
        file: Arc::new(file),
        id: new_file_id(),
        salt: header.salt,
        write_pos: pos as u64,
        reserved: 0,
    };
    Ok((manifest, created, deleted))
}

/// Rewrites the manifest with only the live segments. `max_no`, the highest segment number
/// ever used, is kept (as a `Deleted` record if no live segment has it), so segment numbers
/// are never reused. On an error before the new manifest is in place, the old one stays.
fn rewrite_manifest(
    dir: &Path,
    uid: u64,
    segments: &BTreeMap<u64, Segment>,
    max_no: u64,
) -> Result<Manifest> {
    let tmp = dir.join("manifest.log.tmp");
    files::remove_if_exists(&tmp)?;
    let tmp_dir = dir.join(".manifest-rewrite");
    let _ = std::fs::remove_dir_all(&tmp_dir);
    // (A segment file left on disk, damaged, keeps its number by itself.)
    let keep_no =
        (max_no > 0 && !segments.contains_key(&max_no) && !segment_path(dir, max_no).exists())
            .then_some(max_no);
    let built = build_manifest(&tmp_dir, uid, segments, keep_no);
    let mut m = match built {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp_dir);
            return Err(e);
        }
    };
    let final_path = dir.join(MANIFEST_FILE);
    std::fs::rename(&m.path, &final_path).map_err(|e| StorageError::io(&final_path, e))?;
    files::sync_dir(dir)?;
    let _ = std::fs::remove_dir_all(&tmp_dir);
    m.path = final_path.into();
    Ok(m)
}

fn build_manifest(
    tmp_dir: &Path,
    uid: u64,
    segments: &BTreeMap<u64, Segment>,
    keep_no: Option<u64>,
) -> Result<Manifest> {
    std::fs::create_dir(tmp_dir).map_err(|e| StorageError::io(tmp_dir, e))?;
    let mut m = Manifest::create(tmp_dir, uid)?;
    if let Some(no) = keep_no {
        let rec = ManifestRecord::Deleted { segment_no: no };
        files::write_at(&m.file, &m.path, &rec.encode(m.salt), m.write_pos)?;
        m.write_pos += MANIFEST_RECORD_LEN as u64;
    }
    for (&no, s) in segments {
        // Whether a seq jump preceded each segment is not kept in memory; claiming one
        // only switches off the continuity check for that segment's predecessor.
        let rec = ManifestRecord::Created {
            segment_no: no,
            base_seq: s.file.base_seq,
            after_restart: true,
        };
        files::write_at(&m.file, &m.path, &rec.encode(m.salt), m.write_pos)?;
        m.write_pos += MANIFEST_RECORD_LEN as u64;
    }
    m.file
        .sync_data()
        .map_err(|e| StorageError::io(&*m.path, e))?;
    Ok(m)
}

fn list_files(dir: &Path) -> Result<(BTreeSet<u64>, BTreeSet<u64>)> {
    let mut segs = BTreeSet::new();
    let mut acks = BTreeSet::new();
    for entry in std::fs::read_dir(dir).map_err(|e| StorageError::io(dir, e))? {
        let entry = entry.map_err(|e| StorageError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let parse = |stem: &str| {
            (stem.len() == 20)
                .then(|| stem.parse::<u64>().ok())
                .flatten()
                .filter(|&no| no <= MAX_SEGMENT_NO)
        };
        if let Some(no) = name.strip_suffix(".seg").and_then(parse) {
            segs.insert(no);
        } else if let Some(no) = name.strip_suffix(".ack").and_then(parse) {
            acks.insert(no);
        }
    }
    Ok((segs, acks))
}

fn open_ack_log(
    dir: &Path,
    uid: u64,
    no: u64,
    damage: &mut Vec<Damage>,
) -> Result<(AckLog, AckBatch)> {
    let path = ack_path(dir, no);
    let fresh = || AckLog {
        path: path.clone().into(),
        file: None,
        salt: fastrand::u32(..),
        write_pos: LOG_HEADER_LEN as u64,
        pending: AckBatch::default(),
    };
    if !path.exists() {
        return Ok((fresh(), AckBatch::default()));
    }
    let data = files::read_all(&path)?;
    let header = match LogHeader::decode(&data, ACK_MAGIC) {
        Ok(h) if h.queue_uid == uid && h.segment_no == no => h,
        _ => {
            // Losing acks only causes redeliveries; say so and start the log again.
            if data.iter().any(|&b| b != 0) {
                damage.push(Damage::AckLogTruncated {
                    segment_no: no,
                    bytes: data.len() as u64,
                });
            }
            files::remove_if_exists(&path)?;
            return Ok((fresh(), AckBatch::default()));
        }
    };
    let mut batch = AckBatch::default();
    let mut pos = LOG_HEADER_LEN;
    while let Some(n) = batch.decode_one(&data[pos..], header.salt) {
        pos += n;
    }
    let file = files::open_rw(&path)?;
    if data[pos..].iter().any(|&b| b != 0) {
        tracing::warn!(
            segment = no,
            bytes = data.len() - pos,
            "ack log cut at a damaged batch"
        );
        damage.push(Damage::AckLogTruncated {
            segment_no: no,
            bytes: (data.len() - pos) as u64,
        });
        file.set_len(pos as u64)
            .map_err(|e| StorageError::io(&path, e))?;
        file.sync_data().map_err(|e| StorageError::io(&path, e))?;
    }
    let log = AckLog {
        path: path.into(),
        file: Some((Arc::new(file), new_file_id())),
        salt: header.salt,
        write_pos: pos as u64,
        pending: AckBatch::default(),
    };
    Ok((log, batch))
}

/// The highest seq of any valid-looking record at or after `from` (8-byte aligned positions),
/// so seqs that appeared in a discarded tail are never reused.
fn probe_max_seq(data: &[u8], from: usize, salt: u32, config: &LogConfig) -> u64 {
    let mut max = 0;
    let mut p = align_up(from);
    while p + RECORD_HEADER_LEN <= data.len() {
        if let Ok(h) = RecordHeader::decode(&data[p..], salt, config.max_record_bytes) {
            max = max.max(h.seq);
        }
        p += 8;
    }
    max
}

/// Zeroes `[from, to)` and syncs it, so a later crash cannot bring the torn bytes back.
pub(crate) fn zero_tail(path: &Path, from: u64, to: u64) -> Result<()> {
    let f = files::open_rw(path)?;
    let zeros = vec![0u8; 1 << 16];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(zeros.len());
        files::write_at(&f, path, &zeros[..n], at)?;
        at += n as u64;
    }
    f.sync_data().map_err(|e| StorageError::io(path, e))
}

/// Copies a damaged record's bytes to `quarantine/` for inspection (best effort).
fn quarantine(dir: &Path, no: u64, pos: usize, data: &[u8], config: &LogConfig) {
    let len = RecordHeader::peek_len(&data[pos..])
        .map(|l| l as usize)
        .filter(|&l| l >= RECORD_HEADER_LEN && l <= config.max_record_bytes)
        .unwrap_or(4096);
    let bytes = &data[pos..(pos + len).min(data.len())];
    let qdir = dir.join("quarantine");
    let target = qdir.join(format!("{no:020}-{pos:010}.rec"));
    let written = std::fs::create_dir_all(&qdir).and_then(|()| {
        if target.exists() {
            return Ok(());
        }
        let mut f = File::create(&target)?;
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        tracing::warn!(path = %target.display(), error = %e, "could not quarantine a damaged record");
    }
}

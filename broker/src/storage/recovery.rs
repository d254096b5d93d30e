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

/// Opens the log in `dir`, recovering from whatever stop came before.
pub(crate) fn open(
    uid: u64,
    dir: PathBuf,
    config: LogConfig,
    durability: Durability,
) -> Result<QueueLog> {
    let wm = load_watermark(&dir, uid)?.unwrap_or(Watermark {
        segment_no: 0,
        offset: 0,
    });
    let below_wm = |no: u64, pos: usize| (no, pos as u64) < (wm.segment_no, wm.offset);
    let (mut manifest, mut created, deleted) = open_manifest(&dir, uid)?;

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
    let mut max_seq_seen = 0u64;
    let mut damage = Vec::new();
    let mut scanned: Vec<Scanned> = Vec::new();
    let mut torn: Option<TornTail> = None;
    // The segment cut by a torn tail and the first seq it lost.
    let mut torn_end_seq: Option<(u64, u64)> = None;

    let nos: BTreeSet<u64> = seg_files.iter().chain(created.keys()).copied().collect();
    for no in nos {
        let path = segment_path(&dir, no);
        if deleted.contains(&no) {
            // An interrupted deletion: the Deleted record is durable, finish the unlinks.
            files::remove_if_exists(&path)?;
            files::remove_if_exists(&ack_path(&dir, no))?;
            continue;
        }
        if let Some(t) = torn.as_mut() {
            // Written after a torn tail, so never covered by a completed sync: discard, but
            // remember its seqs so they are never reused.
            if let Ok(data) = files::read_all(&path) {
                if let Ok(h) = SegmentHeader::decode(&data) {
                    max_seq_seen =
                        max_seq_seen.max(probe_max_seq(&data, SEGMENT_HEADER_LEN, h.salt, &config));
                }
            }
            if created.contains_key(&no) {
                // Say so durably first, or a later start would report it missing.
                manifest.append_sync(&[ManifestRecord::Deleted { segment_no: no }])?;
            }
            files::remove_if_exists(&path)?;
            files::remove_if_exists(&ack_path(&dir, no))?;
            t.segments_discarded += 1;
            continue;
        }
        if !seg_files.contains(&no) {
            if no > wm.segment_no {
                // Created, but its directory entry never became durable: nothing was confirmed
                // in it. Record that it is gone so later starts do not look for it.
                manifest.append_sync(&[ManifestRecord::Deleted { segment_no: no }])?;
            } else {
                let base = created[&no].0;
                let next_base = created.range(no + 1..).next().map(|(_, &(b, _))| b);
                let lost = next_base.filter(|&n| n > base).map(|n| base..=n - 1);
                tracing::error!(
                    queue = uid,
                    segment = no,
                    ?lost,
                    "segment file missing: messages lost"
                );
                damage.push(Damage::MissingSegment {
                    segment_no: no,
                    lost,
                });
            }
            continue;
        }
        let data = files::read_all(&path)?;
        if data.len() < SEGMENT_HEADER_LEN && no <= wm.segment_no {
            // A durable segment cut to (almost) nothing: everything it held is lost.
            let base = created.get(&no).map(|c| c.0);
            let next_base = created.range(no + 1..).next().map(|(_, &(b, _))| b);
            let lost = base
                .zip(next_base)
                .filter(|(b, n)| n > b)
                .map(|(b, n)| b..=n - 1);
            tracing::error!(
                queue = uid,
                segment = no,
                ?lost,
                "segment file truncated: messages lost"
            );
            damage.push(Damage::MissingSegment {
                segment_no: no,
                lost,
            });
            continue;
        }
        let header = match SegmentHeader::decode(&data) {
            Ok(h) if h.queue_uid == uid && h.segment_no == no => h,
            bad => {
                if no > wm.segment_no {
                    // The header write itself was never synced: a torn creation.
                    if created.contains_key(&no) {
                        manifest.append_sync(&[ManifestRecord::Deleted { segment_no: no }])?;
                    }
                    files::remove_if_exists(&path)?;
                    files::remove_if_exists(&ack_path(&dir, no))?;
                    torn = Some(TornTail {
                        segment_no: no,
                        offset: 0,
                        segments_discarded: 0,
                    });
                    continue;
                }
                let reason = bad
                    .err()
                    .unwrap_or("segment belongs to another queue or file name");
                return Err(StorageError::CorruptSegmentHeader { path, reason });
            }
        };
        if let Entry::Vacant(e) = created.entry(no) {
            // Crashed right after creating the file: adopt it.
            let after_restart = header.flags & SEGMENT_FLAG_AFTER_RESTART != 0;
            manifest.append_sync(&[ManifestRecord::Created {
                segment_no: no,
                base_seq: header.base_seq,
                after_restart,
            }])?;
            e.insert((header.base_seq, after_restart));
        }
        let mut s = Scanned {
            no,
            path: path.clone(),
            header,
            file_len: data.len(),
            end: SEGMENT_HEADER_LEN,
            offsets: Vec::new(),
            sizes: Vec::new(),
            relocated: Vec::new(),
            lost_from: None,
        };
        let mut pos = SEGMENT_HEADER_LEN;
        let mut expected = header.base_seq;
        loop {
            let rest = &data[pos.min(data.len())..];
            let zeros = rest.iter().all(|&b| b == 0);
            let in_durable_part = no == wm.segment_no && (pos as u64) < wm.offset;
            let bad_reason = match RecordHeader::peek_len(rest) {
                // Zeros to the end of the file end the data, except inside the watermark
                // segment below the watermark, where durable records must be. (Earlier segments
                // that end too early are caught by the seq continuity check below.)
                None | Some(0) if zeros && !in_durable_part => {
                    if below_wm(no, pos) || !ends_short(&dir, no, expected, &created)? {
                        break;
                    }
                    // Past the watermark, a segment that stops short of the seqs its successor
                    // starts after lost its last pages: a torn tail (the successor was written
                    // later, so nothing in it was confirmed either).
                    "segment ends before the seqs its successor starts after"
                }
                Some(0) if !in_durable_part => {
                    if below_wm(no, pos) {
                        break;
                    }
                    // Records after a gap of zeros: pages written back out of order before a
                    // crash. Nothing there was confirmed; it is a torn tail.
                    "data after a zeroed gap"
                }
                Some(0) => "durable data reads as zeros",
                _ => match RecordHeader::decode(rest, header.salt, config.max_record_bytes) {
                    Ok(h) if h.kind == RecordKind::Message && h.seq == expected => {
                        s.offsets.push(pos as u32);
                        s.sizes.push(h.rec_len - RECORD_HEADER_LEN as u32);
                        max_seq_seen = max_seq_seen.max(h.seq);
                        expected += 1;
                        pos = after_record(pos, h.rec_len, data.len());
                        s.end = pos;
                        continue;
                    }
                    Ok(h) if h.kind == RecordKind::Relocated && h.seq < header.base_seq => {
                        s.relocated
                            .push((h.seq, pos as u32, h.rec_len - RECORD_HEADER_LEN as u32));
                        pos = after_record(pos, h.rec_len, data.len());
                        s.end = pos;
                        continue;
                    }
                    Ok(_) => "sequence number out of order",
                    Err(_) => "checksum or header mismatch",
                },
            };
            if !below_wm(no, pos) {
                max_seq_seen = max_seq_seen.max(probe_max_seq(&data, pos, header.salt, &config));
                if data[pos..].iter().any(|&b| b != 0) {
                    zero_tail(&path, pos as u64, data.len() as u64)?;
                }
                tracing::warn!(
                    queue = uid,
                    segment = no,
                    offset = pos,
                    bytes = data.len() - pos,
                    "cut a torn tail after an unclean stop"
                );
                torn = Some(TornTail {
                    segment_no: no,
                    offset: pos as u64,
                    segments_discarded: 0,
                });
                torn_end_seq = Some((no, expected));
                break;
            }
            quarantine(&dir, no, pos, &data, &config);
            // Resynchronise: trust the length only if the record after it validates.
            let next = RecordHeader::peek_len(rest)
                .map(|l| l as usize)
                .filter(|&l| l >= RECORD_HEADER_LEN && l <= config.max_record_bytes)
                .map(|l| pos + align_up(l))
                .filter(|&n| n <= data.len());
            let next_ok = next.and_then(|n| {
                let r = &data[n..];
                match RecordHeader::peek_len(r) {
                    None | Some(0) => Some(None),
                    _ => RecordHeader::decode(r, header.salt, config.max_record_bytes)
                        .ok()
                        .map(Some),
                }
            });
            match (next, next_ok) {
                (Some(n), Some(following)) => {
                    // Exactly one record is bad. If the one after it is the next message, the
                    // bad one was message `expected`; otherwise it was a relocated copy.
                    let was_message = match following {
                        Some(f) if f.kind == RecordKind::Message => f.seq == expected + 1,
                        _ => rest.get(8) == Some(&(RecordKind::Message as u8)),
                    };
                    let lost = was_message.then_some(expected..=expected);
                    if was_message {
                        s.offsets.push(NO_RECORD);
                        s.sizes.push(0);
                        max_seq_seen = max_seq_seen.max(expected);
                        expected += 1;
                    }
                    tracing::error!(
                        queue = uid,
                        segment = no,
                        offset = pos,
                        ?lost,
                        "corrupt record quarantined"
                    );
                    damage.push(Damage::CorruptRecords {
                        segment_no: no,
                        offset: pos as u64,
                        lost,
                        reason: bad_reason,
                    });
                    pos = n;
                    s.end = pos;
                }
                _ => {
                    tracing::error!(
                        queue = uid,
                        segment = no,
                        offset = pos,
                        "corrupt record with an unusable length: the rest of the segment is lost"
                    );
                    s.lost_from = Some((expected, pos));
                    break;
                }
            }
        }
        scanned.push(s);
    }

    if let Some((no, end_seq)) = torn_end_seq {
        // The segment cut by the torn tail no longer reaches the seqs its successor (since
        // discarded, or deleted earlier when fully acked) starts after. Declare the successor
        // again as started after a restart, so seqs may jump before it: otherwise this start and
        // every later one would take the shorter segment for lost durable data. Done after the
        // discards above, so a crash before it leaves the cut to be found again.
        let next = created.range(no + 1..).next().map(|(&n, &c)| (n, c));
        if let Some((next_no, (base, false))) = next.filter(|&(_, (base, _))| base > end_seq) {
            manifest.append_sync(&[ManifestRecord::Created {
                segment_no: next_no,
                base_seq: base,
                after_restart: true,
            }])?;
            created.insert(next_no, (base, true));
        }
    }

    // Damage that skipped the rest of a segment: the next segment's base bounds what was lost.
    for s in &mut scanned {
        // The next segment ever created (it may since have been deleted, fully acked).
        let next = created.range(s.no + 1..).next().map(|(_, &c)| c);
        let next_base = next.map(|n| n.0);
        let jump_expected = next.is_some_and(|n| n.1);
        let end_seq = s.header.base_seq + s.offsets.len() as u64;
        if s.lost_from.is_none() && !jump_expected && next_base.is_some_and(|n| n > end_seq) {
            // The segment ends cleanly, but before the seqs the next segment starts after:
            // durable data was cut off (a sealed segment always holds every seq up to the next
            // segment's base).
            s.lost_from = Some((end_seq, s.end));
        }
        if let Some((from, pos)) = s.lost_from {
            let lost = next_base.filter(|&n| n > from).map(|n| from..=n - 1);
            if let Some(r) = &lost {
                max_seq_seen = max_seq_seen.max(*r.end());
            }
            damage.push(Damage::CorruptRecords {
                segment_no: s.no,
                offset: pos as u64,
                lost,
                reason: "record length unusable; rest of segment skipped",
            });
        }
    }

    // Ack logs.
    let mut recovered = RecoveredDeliveries::default();
    let mut acked: Vec<HashSet<u64>> = Vec::with_capacity(scanned.len());
    let mut ack_logs: Vec<AckLog> = Vec::with_capacity(scanned.len());
    let kept: BTreeSet<u64> = scanned.iter().map(|s| s.no).collect();
    for &no in &ack_files {
        if !kept.contains(&no) {
            files::remove_if_exists(&ack_path(&dir, no))?;
        }
    }
    for s in &scanned {
        let before = damage.len();
        let (log, batch) = open_ack_log(&dir, uid, s.no, &mut damage)?;
        if damage.len() > before {
            // Acks were lost, so any message of this segment may have been delivered already:
            // make sure it comes back flagged as a redelivery.
            let end = s.header.base_seq + s.offsets.len() as u64;
            let end_relocated = s.relocated.iter().map(|r| r.0 + 1).max().unwrap_or(0);
            // (An empty segment whose header says base seq 0 ends at 0: nothing to flag.)
            let last = end.max(end_relocated).saturating_sub(1);
            recovered.delivered_hwm = recovered.delivered_hwm.max(last);
        }
        max_seq_seen = max_seq_seen.max(batch.acks.iter().copied().max().unwrap_or(0));
        recovered.delivered_hwm = recovered.delivered_hwm.max(batch.delivered_hwm);
        for (seq, c) in batch.delivery_counts {
            let e = recovered.counts.entry(seq).or_insert(0);
            *e = (*e).max(c);
        }
        // Segments in order, then file order: the last due time recorded wins.
        recovered.dues.extend(batch.dues);
        acked.push(batch.acks.into_iter().collect());
        ack_logs.push(log);
    }

    // The newest copy of a relocated message is the one that counts.
    let mut newest_copy: BTreeMap<u64, u64> = BTreeMap::new();
    for s in &scanned {
        for &(seq, _, _) in &s.relocated {
            newest_copy.insert(seq, s.no);
        }
    }

    let next_seq = (max_seq_seen + 1)
        .max(created.values().map(|c| c.0).max().unwrap_or(1))
        .max(1);
    let mut segments = BTreeMap::new();
    let mut seq_index = BTreeMap::new();
    let mut moved = BTreeMap::new();
    let (mut live_messages, mut live_bytes) = (0u64, 0u64);
    for ((s, acks), ack_log) in scanned.into_iter().zip(acked).zip(ack_logs) {
        let mut live = Bits::default();
        let mut live_here = 0u32;
        for (i, (&off, &size)) in s.offsets.iter().zip(&s.sizes).enumerate() {
            let seq = s.header.base_seq + i as u64;
            if off != NO_RECORD && !acks.contains(&seq) && !newest_copy.contains_key(&seq) {
                live.set(i, true);
                live_here += 1;
                live_messages += 1;
                live_bytes += u64::from(size);
            }
        }
        for &(seq, off, size) in &s.relocated {
            if newest_copy.get(&seq) == Some(&s.no) && !acks.contains(&seq) {
                moved.insert(seq, (s.no, off));
                live_here += 1;
                live_messages += 1;
                live_bytes += u64::from(size);
            }
        }
        let records = s.records();
        let file = files::open_rw(&s.path)?;
        let map = SegmentMap::map(&file, s.file_len, s.end, s.file_len)
            .map_err(|e| StorageError::io(&s.path, e))?;
        if !s.offsets.is_empty() {
            seq_index.insert(s.header.base_seq, s.no);
        }
        segments.insert(
            s.no,
            Segment {
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
            },
        );
    }

    if manifest.write_pos > MANIFEST_REWRITE_BYTES {
        match rewrite_manifest(&dir, uid, &segments, max_no) {
            Ok(m) => manifest = m,
            // A full disk must not keep a queue from opening (draining it frees space): the
            // long manifest serves as well, and the rewrite is tried again at the next open.
            Err(e) if e.is_storage_full() => {
                tracing::warn!(queue = uid, error = %e, "could not rewrite the manifest");
            }
            Err(e) => return Err(e),
        }
    }
    manifest.keep_headroom();
    let report_segments = segments.len();
    let mut log = QueueLog::assemble(uid, dir, config, durability, manifest, segments, next_seq);
    log.seq_index = seq_index;
    log.moved = moved;
    log.live_messages = live_messages;
    log.live_bytes = live_bytes;
    log.delivered_hwm = recovered.delivered_hwm;
    log.recovered = recovered;
    log.report.segments = report_segments;
    log.report.messages = live_messages;
    log.report.bytes = live_bytes;
    log.report.torn_tail = torn;
    log.report.damage = damage;
    log.sync_recovered(wm)?;
    // Writing always resumes in a fresh segment, so a recovered tail is never written twice.
    // It is started by the first append, not here: opening needs no new space, so a queue
    // on a full disk can still be opened and drained (which is how space comes back).
    // Its number and base seq are declared in the manifest now (as a `Created` record whose
    // file does not exist yet, which a later recovery handles like a creation that never
    // reached the disk): the record keeps seqs seen in a discarded tail from being reused, and
    // says that seqs may jump before it. It fits in the manifest's reserved headroom.
    log.active = max_no;
    log.resume_after_restart = true;
    let declared = ManifestRecord::Created {
        segment_no: max_no + 1,
        base_seq: log.next_seq,
        after_restart: true,
    };
    if let Err(e) = log.manifest.append(declared, &log.durability) {
        // The first append writes the same record (or fails the same way) before any seq is used.
        tracing::warn!(queue = uid, error = %e, "could not declare the next segment");
    }
    let sealed: Vec<u64> = log.segments.keys().copied().collect();
    for no in sealed {
        log.maybe_delete_recovered(no);
    }
    Ok(log)
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
fn zero_tail(path: &Path, from: u64, to: u64) -> Result<()> {
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

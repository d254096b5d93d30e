//! On-disk formats: every byte layout the storage engine writes, as named constants and pure
//! encode/decode functions (no I/O here, so each layout is unit-tested in isolation).
//!
//! All integers are little-endian. Every file starts with a magic number and a format version;
//! every record carries a CRC32 (IEEE, crc32fast) seeded with the file's random salt, so bytes
//! left over from another file can never validate.

use std::ops::Range;

/// Version of every file format in this module. A file with another version is refused.
pub const FORMAT_VERSION: u16 = 1;
/// Contents of the `FORMAT` file at the top of a data directory.
pub const DATA_DIR_FORMAT: &str = "sluice-storage 1\n";

/// The largest sequence number, and the largest segment number, any file may carry. Both
/// count up from 1 and are never reused, so a real log never comes near (2^62); a larger one
/// (or a record with seq 0) in a file whose CRC holds was written by something else, and is
/// refused like any other damage: accepted, it would overflow the counters recovery derives
/// from it.
pub const MAX_SEQ: u64 = 1 << 62;
/// See [`MAX_SEQ`].
pub const MAX_SEGMENT_NO: u64 = 1 << 62;

/// Records start on 8-byte boundaries.
pub const RECORD_ALIGN: usize = 8;

/// Rounds `n` up to the record alignment.
pub const fn align_up(n: usize) -> usize {
    (n + RECORD_ALIGN - 1) & !(RECORD_ALIGN - 1)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn crc(salt: u32, parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(salt);
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

// ---------------------------------------------------------------------------------------------
// Segment header (64 bytes at offset 0 of every `.seg` file)
// ---------------------------------------------------------------------------------------------

/// Magic number at the top of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"SLUICESG";
/// Length of the segment header; records start right after it.
pub const SEGMENT_HEADER_LEN: usize = 64;

/// The fixed header of a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The queue this segment belongs to (catches a file in the wrong directory).
    pub queue_uid: u64,
    /// Segment number; must match the file name.
    pub segment_no: u64,
    /// Sequence number of the first message record written to this segment.
    pub base_seq: u64,
    /// Random seed of every record CRC in this segment.
    pub salt: u32,
    /// Creation time, Unix milliseconds.
    pub created_unix_ms: u64,
    /// [`SEGMENT_FLAG_AFTER_RESTART`] or 0.
    pub flags: u32,
}

/// Segment flag: started when a log was opened, so seqs may jump before `base_seq` (those
/// seen in a discarded torn tail are never reused); the previous segment may end earlier.
pub const SEGMENT_FLAG_AFTER_RESTART: u32 = 1;

impl SegmentHeader {
    /// Encodes the header, CRC included.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&(SEGMENT_HEADER_LEN as u16).to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.queue_uid.to_le_bytes());
        b[24..32].copy_from_slice(&self.segment_no.to_le_bytes());
        b[32..40].copy_from_slice(&self.base_seq.to_le_bytes());
        b[40..44].copy_from_slice(&self.salt.to_le_bytes());
        b[44..52].copy_from_slice(&self.created_unix_ms.to_le_bytes());
        // 52..60 reserved, zero
        let c = crc(0, &[&b[0..60]]);
        b[60..64].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// Decodes and validates a header; the error says what is wrong.
    pub fn decode(b: &[u8]) -> Result<Self, &'static str> {
        if b.len() < SEGMENT_HEADER_LEN {
            return Err("shorter than a segment header");
        }
        if b[0..8] != SEGMENT_MAGIC {
            return Err("bad magic number");
        }
        if crc(0, &[&b[0..60]]) != u32_at(b, 60) {
            return Err("header checksum mismatch");
        }
        if u16_at(b, 8) != FORMAT_VERSION {
            return Err("unsupported segment format version");
        }
        if u16_at(b, 10) as usize != SEGMENT_HEADER_LEN {
            return Err("unexpected segment header length");
        }
        if u64_at(b, 24) > MAX_SEGMENT_NO || u64_at(b, 32) > MAX_SEQ {
            return Err("segment or sequence number out of range");
        }
        Ok(Self {
            queue_uid: u64_at(b, 16),
            segment_no: u64_at(b, 24),
            base_seq: u64_at(b, 32),
            salt: u32_at(b, 40),
            created_unix_ms: u64_at(b, 44),
            flags: u32_at(b, 12),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Records (8-byte aligned, after the segment header)
// ---------------------------------------------------------------------------------------------

/// Length of the fixed record header.
pub const RECORD_HEADER_LEN: usize = 32;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A message appended by a publisher; its seq is the next of its segment.
    Message = 1,
    /// A live message copied forward from an older segment; it keeps its original seq.
    Relocated = 2,
}

impl RecordKind {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Message),
            2 => Some(Self::Relocated),
            _ => None,
        }
    }
}

/// The fixed header of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Header + metadata + body, padding excluded. Zero marks the end of data.
    pub rec_len: u32,
    /// What the record holds.
    pub kind: RecordKind,
    /// Reserved flag bits (bit 0: persistent); other bits must be zero.
    pub flags: u8,
    /// Length of the metadata block that follows the header.
    pub meta_len: u32,
    /// The message's per-queue sequence number.
    pub seq: u64,
    /// Publish time, Unix milliseconds.
    pub timestamp_ms: u64,
}

/// Why bytes at a position are not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// Fewer bytes remain than the record claims (or than a header).
    Truncated,
    /// `rec_len`, `meta_len`, kind or flags are out of bounds.
    BadHeader,
    /// The checksum does not match.
    BadChecksum,
}

impl RecordHeader {
    /// Total length of a record with these contents, padding excluded.
    pub fn record_len(meta_len: usize, body_len: usize) -> usize {
        RECORD_HEADER_LEN + meta_len + body_len
    }

    /// Encodes the header with the CRC over header, `meta` and `body`.
    pub fn encode(&self, salt: u32, meta: &[u8], body: &[u8]) -> [u8; RECORD_HEADER_LEN] {
        let mut b = [0u8; RECORD_HEADER_LEN];
        b[4..8].copy_from_slice(&self.rec_len.to_le_bytes());
        b[8] = self.kind as u8;
        b[9] = self.flags;
        b[12..16].copy_from_slice(&self.meta_len.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.timestamp_ms.to_le_bytes());
        let c = crc(salt, &[&b[4..], meta, body]);
        b[0..4].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// Reads the record length at the start of `b`; `None` if fewer than 8 bytes remain.
    pub fn peek_len(b: &[u8]) -> Option<u32> {
        (b.len() >= 8).then(|| u32_at(b, 4))
    }

    /// Validates the record at the start of `b` (bounds, kind, checksum). `max_len` bounds
    /// `rec_len`, so a corrupted length can never send a reader off into garbage.
    pub fn decode(b: &[u8], salt: u32, max_len: usize) -> Result<Self, RecordError> {
        if b.len() < RECORD_HEADER_LEN {
            return Err(RecordError::Truncated);
        }
        let rec_len = u32_at(b, 4);
        let meta_len = u32_at(b, 12);
        let kind = RecordKind::from_u8(b[8]);
        if (rec_len as usize) < RECORD_HEADER_LEN
            || rec_len as usize > max_len
            || kind.is_none()
            || b[9] & !1 != 0
            || meta_len as usize > rec_len as usize - RECORD_HEADER_LEN
            || !(1..=MAX_SEQ).contains(&u64_at(b, 16))
        {
            return Err(RecordError::BadHeader);
        }
        if (rec_len as usize) > b.len() {
            return Err(RecordError::Truncated);
        }
        if crc(salt, &[&b[4..rec_len as usize]]) != u32_at(b, 0) {
            return Err(RecordError::BadChecksum);
        }
        Ok(Self {
            rec_len,
            kind: kind.expect("checked"),
            flags: b[9],
            meta_len,
            seq: u64_at(b, 16),
            timestamp_ms: u64_at(b, 24),
        })
    }

    /// Where the metadata sits, relative to the record start.
    pub fn meta_range(&self) -> Range<usize> {
        RECORD_HEADER_LEN..RECORD_HEADER_LEN + self.meta_len as usize
    }

    /// Where the body sits, relative to the record start.
    pub fn body_range(&self) -> Range<usize> {
        RECORD_HEADER_LEN + self.meta_len as usize..self.rec_len as usize
    }
}

// ---------------------------------------------------------------------------------------------
// Small files with a header: ack logs and the manifest
// ---------------------------------------------------------------------------------------------

/// Magic number of a segment's ack log (`N.ack`).
pub const ACK_MAGIC: [u8; 8] = *b"SLUICEAK";
/// Magic number of a queue's `manifest.log`.
pub const MANIFEST_MAGIC: [u8; 8] = *b"SLUICEMF";
/// Length of the header of an ack log or manifest.
pub const LOG_HEADER_LEN: usize = 40;

/// The header of an ack log or manifest: which file it is and its salt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogHeader {
    /// [`ACK_MAGIC`] or [`MANIFEST_MAGIC`].
    pub magic: [u8; 8],
    /// Random seed of every record CRC in the file.
    pub salt: u32,
    /// The queue the file belongs to.
    pub queue_uid: u64,
    /// The segment an ack log belongs to; 0 for the manifest.
    pub segment_no: u64,
}

impl LogHeader {
    /// Encodes the header, CRC included.
    pub fn encode(&self) -> [u8; LOG_HEADER_LEN] {
        let mut b = [0u8; LOG_HEADER_LEN];
        b[0..8].copy_from_slice(&self.magic);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&(LOG_HEADER_LEN as u16).to_le_bytes());
        b[12..16].copy_from_slice(&self.salt.to_le_bytes());
        b[16..24].copy_from_slice(&self.queue_uid.to_le_bytes());
        b[24..32].copy_from_slice(&self.segment_no.to_le_bytes());
        let c = crc(0, &[&b[0..36]]);
        b[36..40].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// Decodes and validates a header with the expected magic number.
    pub fn decode(b: &[u8], magic: [u8; 8]) -> Result<Self, &'static str> {
        if b.len() < LOG_HEADER_LEN {
            return Err("shorter than a header");
        }
        if b[0..8] != magic {
            return Err("bad magic number");
        }
        if crc(0, &[&b[0..36]]) != u32_at(b, 36) {
            return Err("header checksum mismatch");
        }
        if u16_at(b, 8) != FORMAT_VERSION || u16_at(b, 10) as usize != LOG_HEADER_LEN {
            return Err("unsupported format version");
        }
        Ok(Self {
            magic,
            salt: u32_at(b, 12),
            queue_uid: u64_at(b, 16),
            segment_no: u64_at(b, 24),
        })
    }
}

/// Length of the fixed part of an ack batch.
pub const ACK_BATCH_HEADER_LEN: usize = 24;

/// One batch in an ack log: the acks and delivery counts gathered since the last flush.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckBatch {
    /// Highest seq ever handed to a consumer when the batch was written.
    pub delivered_hwm: u64,
    /// Acknowledged (deleted) sequence numbers.
    pub acks: Vec<u64>,
    /// `(seq, delivery count)` of messages delivered more than once.
    pub delivery_counts: Vec<(u64, u32)>,
    /// `(seq, due Unix ms)` of messages requeued to wait for a time: the last entry for a seq
    /// (in segment order, then file order) is its due time.
    pub dues: Vec<(u64, u64)>,
}

const ACK_ENTRY_ACK: u8 = 1;
const ACK_ENTRY_COUNT: u8 = 2;
const ACK_ENTRY_DUE: u8 = 3;

impl AckBatch {
    /// Encodes the batch: `crc | len | kind | pad×3 | count | delivered_hwm | entries`, with
    /// acks, counts and due times as consecutive sub-batches of kinds 1, 2 and 3 (a due entry
    /// is `seq u64, due_ms u64`).
    pub fn encode(&self, salt: u32, out: &mut Vec<u8>) {
        if !self.acks.is_empty() || self.delivery_counts.is_empty() {
            let mut entries = Vec::with_capacity(self.acks.len() * 8);
            for s in &self.acks {
                entries.extend_from_slice(&s.to_le_bytes());
            }
            encode_sub(
                out,
                salt,
                ACK_ENTRY_ACK,
                self.acks.len(),
                self.delivered_hwm,
                &entries,
            );
        }
        if !self.delivery_counts.is_empty() {
            let mut entries = Vec::with_capacity(self.delivery_counts.len() * 12);
            for (s, c) in &self.delivery_counts {
                entries.extend_from_slice(&s.to_le_bytes());
                entries.extend_from_slice(&c.to_le_bytes());
            }
            let n = self.delivery_counts.len();
            encode_sub(out, salt, ACK_ENTRY_COUNT, n, self.delivered_hwm, &entries);
        }
        if !self.dues.is_empty() {
            let mut entries = Vec::with_capacity(self.dues.len() * 16);
            for (s, due) in &self.dues {
                entries.extend_from_slice(&s.to_le_bytes());
                entries.extend_from_slice(&due.to_le_bytes());
            }
            let n = self.dues.len();
            encode_sub(out, salt, ACK_ENTRY_DUE, n, self.delivered_hwm, &entries);
        }
    }

    /// Decodes the sub-batch at the start of `b` into `self`; returns its length, or `None`
    /// at the end of data or on any damage (the caller treats both as the end of the log).
    pub fn decode_one(&mut self, b: &[u8], salt: u32) -> Option<usize> {
        if b.len() < ACK_BATCH_HEADER_LEN {
            return None;
        }
        let len = u32_at(b, 4) as usize;
        if len < ACK_BATCH_HEADER_LEN || len > b.len() || crc(salt, &[&b[4..len]]) != u32_at(b, 0) {
            return None;
        }
        let kind = b[8];
        let count = u32_at(b, 12) as usize;
        let hwm = u64_at(b, 16);
        let entries = &b[ACK_BATCH_HEADER_LEN..len];
        let stride = match kind {
            ACK_ENTRY_ACK => 8,
            ACK_ENTRY_COUNT => 12,
            _ => 16,
        };
        if hwm > MAX_SEQ
            || entries
                .chunks(stride)
                .any(|c| c.len() >= 8 && u64_at(c, 0) > MAX_SEQ)
        {
            return None;
        }
        match kind {
            ACK_ENTRY_ACK if entries.len() == count * 8 => {
                self.acks
                    .extend(entries.chunks_exact(8).map(|c| u64_at(c, 0)));
            }
            ACK_ENTRY_COUNT if entries.len() == count * 12 => {
                let counts = entries
                    .chunks_exact(12)
                    .map(|c| (u64_at(c, 0), u32_at(c, 8)));
                self.delivery_counts.extend(counts);
            }
            ACK_ENTRY_DUE if entries.len() == count * 16 => {
                let dues = entries
                    .chunks_exact(16)
                    .map(|c| (u64_at(c, 0), u64_at(c, 8)));
                self.dues.extend(dues);
            }
            _ => return None,
        }
        self.delivered_hwm = self.delivered_hwm.max(hwm);
        Some(len)
    }
}

fn encode_sub(out: &mut Vec<u8>, salt: u32, kind: u8, count: usize, hwm: u64, entries: &[u8]) {
    let start = out.len();
    let len = ACK_BATCH_HEADER_LEN + entries.len();
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&[kind, 0, 0, 0]);
    out.extend_from_slice(&(count as u32).to_le_bytes());
    out.extend_from_slice(&hwm.to_le_bytes());
    out.extend_from_slice(entries);
    let c = crc(salt, &[&out[start + 4..]]);
    out[start..start + 4].copy_from_slice(&c.to_le_bytes());
}

/// Length of one manifest record.
pub const MANIFEST_RECORD_LEN: usize = 32;

/// A manifest record: the life of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestRecord {
    /// Segment `segment_no` was created; its first message seq is `base_seq`.
    Created {
        /// Segment number.
        segment_no: u64,
        /// First seq the segment was created for.
        base_seq: u64,
        /// Started when the log was opened: seqs may jump before `base_seq`.
        after_restart: bool,
    },
    /// Segment `segment_no` is fully acknowledged and may be (or was) unlinked.
    Deleted {
        /// Segment number.
        segment_no: u64,
    },
}

impl ManifestRecord {
    /// Encodes the record.
    pub fn encode(&self, salt: u32) -> [u8; MANIFEST_RECORD_LEN] {
        let (kind, no, base, flags) = match *self {
            Self::Created {
                segment_no,
                base_seq,
                after_restart,
            } => (1u8, segment_no, base_seq, u8::from(after_restart)),
            Self::Deleted { segment_no } => (2u8, segment_no, 0, 0),
        };
        let mut b = [0u8; MANIFEST_RECORD_LEN];
        b[4..8].copy_from_slice(&(MANIFEST_RECORD_LEN as u32).to_le_bytes());
        b[8] = kind;
        b[9] = flags;
        b[16..24].copy_from_slice(&no.to_le_bytes());
        b[24..32].copy_from_slice(&base.to_le_bytes());
        let c = crc(salt, &[&b[4..]]);
        b[0..4].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// Decodes the record at the start of `b`; `None` at the end of data or on damage.
    pub fn decode(b: &[u8], salt: u32) -> Option<Self> {
        if b.len() < MANIFEST_RECORD_LEN
            || u32_at(b, 4) as usize != MANIFEST_RECORD_LEN
            || crc(salt, &[&b[4..MANIFEST_RECORD_LEN]]) != u32_at(b, 0)
        {
            return None;
        }
        let segment_no = u64_at(b, 16);
        if segment_no > MAX_SEGMENT_NO || u64_at(b, 24) > MAX_SEQ {
            return None;
        }
        match b[8] {
            1 if b[9] <= 1 => Some(Self::Created {
                segment_no,
                base_seq: u64_at(b, 24),
                after_restart: b[9] == 1,
            }),
            2 => Some(Self::Deleted { segment_no }),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The durable watermark (`durable.ckpt`)
// ---------------------------------------------------------------------------------------------

/// Magic number of a queue's `durable.ckpt`.
pub const CKPT_MAGIC: [u8; 8] = *b"SLUICECK";
/// Length of `durable.ckpt`.
pub const CKPT_LEN: usize = 40;

/// A lower bound on what of a queue's log is known to be durable: every byte of segments
/// before `segment_no`, and of `segment_no` below `offset`, was covered by a completed sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Watermark {
    /// Segment number.
    pub segment_no: u64,
    /// Byte offset inside that segment.
    pub offset: u64,
}

impl Watermark {
    /// Encodes `durable.ckpt` for queue `queue_uid`.
    pub fn encode(&self, queue_uid: u64) -> [u8; CKPT_LEN] {
        let mut b = [0u8; CKPT_LEN];
        b[0..8].copy_from_slice(&CKPT_MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..20].copy_from_slice(&queue_uid.to_le_bytes());
        b[20..28].copy_from_slice(&self.segment_no.to_le_bytes());
        b[28..36].copy_from_slice(&self.offset.to_le_bytes());
        let c = crc(0, &[&b[0..36]]);
        b[36..40].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// Decodes `durable.ckpt`, checking that it belongs to `queue_uid`.
    pub fn decode(b: &[u8], queue_uid: u64) -> Option<Self> {
        if b.len() != CKPT_LEN
            || b[0..8] != CKPT_MAGIC
            || crc(0, &[&b[0..36]]) != u32_at(b, 36)
            || u16_at(b, 8) != FORMAT_VERSION
            || u64_at(b, 12) != queue_uid
            || u64_at(b, 20) > MAX_SEGMENT_NO
        {
            return None;
        }
        Some(Self {
            segment_no: u64_at(b, 20),
            offset: u64_at(b, 28),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The Raft log (`storage::raft_log`): segments of index-numbered entries, blobs, state
// ---------------------------------------------------------------------------------------------

/// Magic number at the top of every Raft log segment file.
pub const RAFT_SEGMENT_MAGIC: [u8; 8] = *b"SLUICERL";
/// Length of a Raft log segment header; entry records start right after it.
pub const RAFT_SEGMENT_HEADER_LEN: usize = 64;
/// The largest entry index a Raft log accepts (as [`MAX_SEQ`], far beyond any real log, and
/// leaves room for `index + 1` everywhere).
pub const MAX_RAFT_INDEX: u64 = 1 << 62;
/// Raft segment flag: the log held no live entry when this segment started, so no entry before
/// `first_index` is live (all were purged or truncated) and `first_index` may jump.
pub const RAFT_SEGMENT_FLAG_FRESH: u32 = 1;

/// The fixed header of a Raft log segment file: `magic | version u16 | header len u16 |
/// flags u32 | log_id u64 | segment_no u64 | first_index u64 | salt u32 | created_unix_ms u64 |
/// reserved ×8 | crc u32` (CRC seeded with 0, over bytes 0..60).
///
/// `first_index` is the index of the first entry written to this segment, and it supersedes:
/// every entry at or above it in an earlier segment is void. That is how a truncation is made
/// durable without rewriting (or shrinking) a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftSegmentHeader {
    /// The log this segment belongs to (catches a file in the wrong directory).
    pub log_id: u64,
    /// Segment number; must match the file name.
    pub segment_no: u64,
    /// Index of the first entry of this segment; voids entries `>= first_index` before it.
    pub first_index: u64,
    /// Random seed of every record CRC in this segment.
    pub salt: u32,
    /// Creation time, Unix milliseconds.
    pub created_unix_ms: u64,
    /// [`RAFT_SEGMENT_FLAG_FRESH`] or 0.
    pub flags: u32,
}

impl RaftSegmentHeader {
    /// Encodes the header, CRC included.
    pub fn encode(&self) -> [u8; RAFT_SEGMENT_HEADER_LEN] {
        let mut b = [0u8; RAFT_SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(&RAFT_SEGMENT_MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&(RAFT_SEGMENT_HEADER_LEN as u16).to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.log_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.segment_no.to_le_bytes());
        b[32..40].copy_from_slice(&self.first_index.to_le_bytes());
        b[40..44].copy_from_slice(&self.salt.to_le_bytes());
        b[44..52].copy_from_slice(&self.created_unix_ms.to_le_bytes());
        let c = crc(0, &[&b[0..60]]);
        b[60..64].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// Decodes and validates a header; the error says what is wrong.
    pub fn decode(b: &[u8]) -> Result<Self, &'static str> {
        if b.len() < RAFT_SEGMENT_HEADER_LEN {
            return Err("shorter than a segment header");
        }
        if b[0..8] != RAFT_SEGMENT_MAGIC {
            return Err("bad magic number");
        }
        if crc(0, &[&b[0..60]]) != u32_at(b, 60) {
            return Err("header checksum mismatch");
        }
        if u16_at(b, 8) != FORMAT_VERSION {
            return Err("unsupported segment format version");
        }
        if u16_at(b, 10) as usize != RAFT_SEGMENT_HEADER_LEN {
            return Err("unexpected segment header length");
        }
        let flags = u32_at(b, 12);
        if flags & !RAFT_SEGMENT_FLAG_FRESH != 0 || b[52..60].iter().any(|&x| x != 0) {
            return Err("unknown flags or reserved bytes set");
        }
        if u64_at(b, 24) > MAX_SEGMENT_NO || u64_at(b, 32) > MAX_RAFT_INDEX {
            return Err("segment number or index out of range");
        }
        Ok(Self {
            log_id: u64_at(b, 16),
            segment_no: u64_at(b, 24),
            first_index: u64_at(b, 32),
            salt: u32_at(b, 40),
            created_unix_ms: u64_at(b, 44),
            flags,
        })
    }

    /// True when the segment restarted an empty log (see [`RAFT_SEGMENT_FLAG_FRESH`]).
    pub fn is_fresh(&self) -> bool {
        self.flags & RAFT_SEGMENT_FLAG_FRESH != 0
    }
}

/// Length of a Raft entry record's header.
pub const RAFT_ENTRY_HEADER_LEN: usize = 24;
/// The kind byte of a Raft entry record: at the same place as [`RecordKind`] and unlike any of
/// its values, so neither layout ever validates as the other.
pub const RAFT_ENTRY_KIND: u8 = 3;

/// The header of one Raft entry record (8-byte aligned, after the segment header):
/// `crc u32 | rec_len u32 | kind u8 = 3 | zero ×7 | index u64`, then the entry's opaque bytes.
/// The CRC (seeded with the segment's salt) covers bytes 4..rec_len: header and payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftEntryHeader {
    /// Header + payload, padding excluded. Zero marks the end of data.
    pub rec_len: u32,
    /// The entry's index in the Raft log.
    pub index: u64,
}

impl RaftEntryHeader {
    /// The header of an entry with `payload_len` bytes at `index`.
    pub fn new(index: u64, payload_len: usize) -> Self {
        Self {
            rec_len: (RAFT_ENTRY_HEADER_LEN + payload_len) as u32,
            index,
        }
    }

    /// Encodes the header with the CRC over it and `payload`.
    pub fn encode(&self, salt: u32, payload: &[u8]) -> [u8; RAFT_ENTRY_HEADER_LEN] {
        let mut b = [0u8; RAFT_ENTRY_HEADER_LEN];
        b[4..8].copy_from_slice(&self.rec_len.to_le_bytes());
        b[8] = RAFT_ENTRY_KIND;
        b[16..24].copy_from_slice(&self.index.to_le_bytes());
        let c = crc(salt, &[&b[4..], payload]);
        b[0..4].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// Reads the record length at the start of `b`; `None` if fewer than 8 bytes remain.
    pub fn peek_len(b: &[u8]) -> Option<u32> {
        (b.len() >= 8).then(|| u32_at(b, 4))
    }

    /// Validates the record at the start of `b` (bounds, kind, checksum); `max_len` bounds
    /// `rec_len`, so a corrupted length never sends a reader off into garbage.
    pub fn decode(b: &[u8], salt: u32, max_len: usize) -> Result<Self, RecordError> {
        if b.len() < RAFT_ENTRY_HEADER_LEN {
            return Err(RecordError::Truncated);
        }
        let rec_len = u32_at(b, 4) as usize;
        if rec_len < RAFT_ENTRY_HEADER_LEN
            || rec_len > max_len
            || b[8] != RAFT_ENTRY_KIND
            || b[9..16].iter().any(|&x| x != 0)
            || u64_at(b, 16) > MAX_RAFT_INDEX
        {
            return Err(RecordError::BadHeader);
        }
        if rec_len > b.len() {
            return Err(RecordError::Truncated);
        }
        if crc(salt, &[&b[4..rec_len]]) != u32_at(b, 0) {
            return Err(RecordError::BadChecksum);
        }
        Ok(Self {
            rec_len: rec_len as u32,
            index: u64_at(b, 16),
        })
    }

    /// Where the payload sits, relative to the record start.
    pub fn payload_range(&self) -> Range<usize> {
        RAFT_ENTRY_HEADER_LEN..self.rec_len as usize
    }
}

/// Magic number of a blob file (a Raft log's named blobs and its state file).
pub const BLOB_MAGIC: [u8; 8] = *b"SLUICEBL";
/// Length of a blob file's header.
pub const BLOB_HEADER_LEN: usize = 24;

/// Encodes a blob file: `magic | version u16 | zero u16 | len u32 | zero u32 | crc u32`, then
/// `len` payload bytes; the CRC (seeded with 0) covers bytes 0..20 and the payload.
pub fn encode_blob(payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(BLOB_HEADER_LEN + payload.len());
    b.extend_from_slice(&BLOB_MAGIC);
    b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    let c = crc(0, &[&b[0..20], payload]);
    b.extend_from_slice(&c.to_le_bytes());
    b.extend_from_slice(payload);
    b
}

/// Decodes a whole blob file and returns its payload; the error says what is wrong.
pub fn decode_blob(b: &[u8]) -> Result<&[u8], &'static str> {
    if b.len() < BLOB_HEADER_LEN {
        return Err("shorter than a blob header");
    }
    if b[0..8] != BLOB_MAGIC {
        return Err("bad magic number");
    }
    if u16_at(b, 8) != FORMAT_VERSION {
        return Err("unsupported blob format version");
    }
    let len = u32_at(b, 12) as usize;
    if b.len() != BLOB_HEADER_LEN + len {
        return Err("blob length does not match the file");
    }
    let payload = &b[BLOB_HEADER_LEN..];
    if crc(0, &[&b[0..20], payload]) != u32_at(b, 20) {
        return Err("blob checksum mismatch");
    }
    Ok(payload)
}

/// Length of the payload of a Raft log's state file.
pub const RAFT_STATE_LEN: usize = 24;

/// What a Raft log keeps outside its segments (in a blob file): its identity and how far it
/// is purged. Payload: `log_id u64 | flags u64 (bit 0: purged is set) | purged u64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftLogState {
    /// Random identity, written into every segment header and the durable watermark.
    pub log_id: u64,
    /// Every entry at or below this index is forgotten.
    pub purged: Option<u64>,
}

impl RaftLogState {
    /// Encodes the payload (wrap it with [`encode_blob`]).
    pub fn encode(&self) -> [u8; RAFT_STATE_LEN] {
        let mut b = [0u8; RAFT_STATE_LEN];
        b[0..8].copy_from_slice(&self.log_id.to_le_bytes());
        b[8..16].copy_from_slice(&u64::from(self.purged.is_some()).to_le_bytes());
        b[16..24].copy_from_slice(&self.purged.unwrap_or(0).to_le_bytes());
        b
    }

    /// Decodes the payload.
    pub fn decode(b: &[u8]) -> Result<Self, &'static str> {
        if b.len() != RAFT_STATE_LEN {
            return Err("state of the wrong length");
        }
        let purged = match u64_at(b, 8) {
            0 if u64_at(b, 16) == 0 => None,
            1 if u64_at(b, 16) <= MAX_RAFT_INDEX => Some(u64_at(b, 16)),
            _ => return Err("bad purge point"),
        };
        Ok(Self {
            log_id: u64_at(b, 0),
            purged,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_header_round_trip_and_every_bit_flip_is_caught() {
        let h = SegmentHeader {
            queue_uid: 0xfeed,
            segment_no: 7,
            base_seq: 1000,
            salt: 0xdead_beef,
            created_unix_ms: 1_700_000_000_000,
            flags: SEGMENT_FLAG_AFTER_RESTART,
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        for bit in 0..60 * 8 {
            let mut c = b;
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(
                SegmentHeader::decode(&c).is_err(),
                "flip of bit {bit} undetected"
            );
        }
    }

    #[test]
    fn record_round_trip_and_damage() {
        let (meta, body) = (b"rk".as_slice(), b"hello world".as_slice());
        let h = RecordHeader {
            rec_len: RecordHeader::record_len(meta.len(), body.len()) as u32,
            kind: RecordKind::Message,
            flags: 1,
            meta_len: meta.len() as u32,
            seq: 42,
            timestamp_ms: 5,
        };
        let mut rec = h.encode(9, meta, body).to_vec();
        rec.extend_from_slice(meta);
        rec.extend_from_slice(body);
        assert_eq!(RecordHeader::decode(&rec, 9, 1 << 20), Ok(h));
        assert_eq!(&rec[h.meta_range()], meta);
        assert_eq!(&rec[h.body_range()], body);
        // Another salt (a stale record from another file) never validates.
        assert_eq!(
            RecordHeader::decode(&rec, 10, 1 << 20),
            Err(RecordError::BadChecksum)
        );
        for cut in 0..rec.len() {
            assert!(
                RecordHeader::decode(&rec[..cut], 9, 1 << 20).is_err(),
                "cut {cut}"
            );
        }
        for bit in 0..rec.len() * 8 {
            let mut c = rec.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(
                RecordHeader::decode(&c, 9, 1 << 20).is_err(),
                "flip {bit} undetected"
            );
        }
        assert_eq!(
            RecordHeader::decode(&rec, 9, 16),
            Err(RecordError::BadHeader)
        );
    }

    #[test]
    fn ack_batches_round_trip_and_stop_at_damage() {
        let batch = AckBatch {
            delivered_hwm: 77,
            acks: vec![1, 5, 9],
            delivery_counts: vec![(3, 2), (4, 7)],
            dues: vec![(4, 1_700_000_000_000), (5, 9)],
        };
        let mut out = Vec::new();
        batch.encode(3, &mut out);
        let mut got = AckBatch::default();
        let mut at = 0;
        while let Some(n) = got.decode_one(&out[at..], 3) {
            at += n;
        }
        assert_eq!(at, out.len());
        assert_eq!(got, batch);
        let mut bad = out.clone();
        bad[30] ^= 4;
        assert_eq!(AckBatch::default().decode_one(&bad, 3), None);
    }

    #[test]
    fn manifest_and_watermark_round_trip() {
        for r in [
            ManifestRecord::Created {
                segment_no: 3,
                base_seq: 99,
                after_restart: true,
            },
            ManifestRecord::Deleted { segment_no: 4 },
        ] {
            let b = r.encode(11);
            assert_eq!(ManifestRecord::decode(&b, 11), Some(r));
            assert_eq!(ManifestRecord::decode(&b, 12), None);
        }
        let w = Watermark {
            segment_no: 2,
            offset: 4096,
        };
        assert_eq!(Watermark::decode(&w.encode(5), 5), Some(w));
        assert_eq!(Watermark::decode(&w.encode(5), 6), None);
        let hdr = LogHeader {
            magic: ACK_MAGIC,
            salt: 1,
            queue_uid: 2,
            segment_no: 3,
        };
        assert_eq!(LogHeader::decode(&hdr.encode(), ACK_MAGIC), Ok(hdr));
        assert!(LogHeader::decode(&hdr.encode(), MANIFEST_MAGIC).is_err());
    }

    #[test]
    fn raft_segment_header_has_its_exact_bytes_and_every_bit_flip_is_caught() {
        let h = RaftSegmentHeader {
            log_id: 0x0102_0304_0506_0708,
            segment_no: 3,
            first_index: 0,
            salt: 0xdead_beef,
            created_unix_ms: 0x10,
            flags: RAFT_SEGMENT_FLAG_FRESH,
        };
        let b = h.encode();
        assert_eq!(&b[0..8], b"SLUICERL");
        assert_eq!(&b[8..16], &[1, 0, 64, 0, 1, 0, 0, 0]);
        assert_eq!(&b[16..24], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[24..32], &3u64.to_le_bytes());
        assert_eq!(&b[32..40], &0u64.to_le_bytes());
        assert_eq!(&b[40..44], &[0xef, 0xbe, 0xad, 0xde]);
        assert_eq!(&b[44..52], &0x10u64.to_le_bytes());
        assert_eq!(&b[52..60], &[0; 8]);
        assert_eq!(RaftSegmentHeader::decode(&b), Ok(h));
        assert!(h.is_fresh());
        for bit in 0..60 * 8 {
            let mut c = b;
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(
                RaftSegmentHeader::decode(&c).is_err(),
                "flip {bit} undetected"
            );
        }
        // A queue segment header is never taken for a Raft one.
        let queue = SegmentHeader {
            queue_uid: 1,
            segment_no: 1,
            base_seq: 1,
            salt: 1,
            created_unix_ms: 1,
            flags: 0,
        };
        assert!(RaftSegmentHeader::decode(&queue.encode()).is_err());
    }

    #[test]
    fn raft_entry_record_has_its_exact_bytes_and_damage_is_caught() {
        let payload = b"entry".as_slice();
        let h = RaftEntryHeader::new(0x0a0b, payload.len());
        assert_eq!(h.rec_len, 29);
        let head = h.encode(7, payload);
        let c = crc(7, &[&head[4..], payload]);
        let mut expect = Vec::new();
        expect.extend_from_slice(&c.to_le_bytes());
        expect.extend_from_slice(&[29, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]);
        expect.extend_from_slice(&[0x0b, 0x0a, 0, 0, 0, 0, 0, 0]);
        assert_eq!(head.as_slice(), expect.as_slice());
        let mut rec = head.to_vec();
        rec.extend_from_slice(payload);
        assert_eq!(RaftEntryHeader::decode(&rec, 7, 1 << 20), Ok(h));
        assert_eq!(&rec[h.payload_range()], payload);
        assert_eq!(
            RaftEntryHeader::decode(&rec, 8, 1 << 20),
            Err(RecordError::BadChecksum)
        );
        for cut in 0..rec.len() {
            assert!(
                RaftEntryHeader::decode(&rec[..cut], 7, 1 << 20).is_err(),
                "cut {cut}"
            );
        }
        for bit in 0..rec.len() * 8 {
            let mut c = rec.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(
                RaftEntryHeader::decode(&c, 7, 1 << 20).is_err(),
                "flip {bit} undetected"
            );
        }
        assert_eq!(
            RaftEntryHeader::decode(&rec, 7, 28),
            Err(RecordError::BadHeader)
        );
        // Index 0 is a valid Raft index (openraft starts there).
        let zero = RaftEntryHeader::new(0, 0);
        assert_eq!(
            RaftEntryHeader::decode(&zero.encode(1, &[]), 1, 64),
            Ok(zero)
        );
    }

    #[test]
    fn blobs_and_raft_state_have_their_exact_bytes_and_damage_is_caught() {
        let b = encode_blob(b"vote");
        let c = crc(0, &[&b[0..20], b"vote"]);
        let mut expect = b"SLUICEBL".to_vec();
        expect.extend_from_slice(&[1, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0]);
        expect.extend_from_slice(&c.to_le_bytes());
        expect.extend_from_slice(b"vote");
        assert_eq!(b, expect);
        assert_eq!(decode_blob(&b), Ok(b"vote".as_slice()));
        assert_eq!(decode_blob(&encode_blob(&[])), Ok([].as_slice()));
        for cut in 0..b.len() {
            assert!(decode_blob(&b[..cut]).is_err(), "cut {cut}");
        }
        for bit in 0..b.len() * 8 {
            let mut d = b.clone();
            d[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_blob(&d).is_err(), "flip {bit} undetected");
        }
        let state = RaftLogState {
            log_id: 9,
            purged: Some(0),
        };
        let bytes = state.encode();
        assert_eq!(
            &bytes[..],
            &[9, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(RaftLogState::decode(&bytes), Ok(state));
        let none = RaftLogState {
            log_id: 9,
            purged: None,
        };
        assert_eq!(RaftLogState::decode(&none.encode()), Ok(none));
        let mut bad = none.encode();
        bad[16] = 1;
        assert!(RaftLogState::decode(&bad).is_err());
    }
}

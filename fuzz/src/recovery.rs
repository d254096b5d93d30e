//! Target `recovery`: opening a queue log (broker/src/storage/recovery.rs) from arbitrary files
//! in its directory, through the storage engine's public entry point, [`Store::open_queue`].
//!
//! # Input
//! A [`Case`]: a queue id and the files of that queue's directory.
//! ```text
//! uid      u64   the queue's id (its directory is queues/<uid:016x>/)
//! options  u8    bit 0: the previous run stopped cleanly (a CLEAN marker is present)
//! then, until the input ends, files (a later file with the same name replaces an earlier one):
//!   kind   u8    low 2 bits: 0 segment, 1 ack log, 2 manifest, 3 durable.ckpt
//!   no     u8    segment number (segments and ack logs)
//!   fix    u8    bit 0: write a valid header CRC, bit 1: write a valid CRC into every
//!                record whose length fits, so mutated lengths, seqs and kinds reach the logic
//!                behind the checksums instead of stopping at them
//!   len    u16   then len bytes (fewer if the input ends first)
//! ```
//!
//! # Invariants
//! - Opening never panics: damage is a typed error or a [`Damage`] report.
//! - Every message recovery keeps reads back: `QueueLog::read` verifies its CRC, so a kept
//!   record whose checksum fails is a crash here. Counts and byte totals match the messages.
//! - Recovery is idempotent: opening again yields the same messages.
//! - The recovered log accepts an append, with a seq above every recovered one (seqs are
//!   never reused), unless the files claimed the last seq a record can carry.
//!
//! [`Damage`]: sluice_broker::storage::Damage

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use sluice_broker::storage::format::MAX_SEQ;
use sluice_broker::storage::{
    DurabilityConfig, LogConfig, QueueLog, StorageError, Store, StoreConfig,
};

/// Files in one case, at most (more are ignored).
const MAX_FILES: usize = 16;

/// What a file in a queue directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `<no:020>.seg`.
    Segment(u8),
    /// `<no:020>.ack`.
    AckLog(u8),
    /// `manifest.log`.
    Manifest,
    /// `durable.ckpt`.
    Checkpoint,
}

impl FileKind {
    fn file_name(self) -> String {
        match self {
            FileKind::Segment(no) => format!("{no:020}.seg"),
            FileKind::AckLog(no) => format!("{no:020}.ack"),
            FileKind::Manifest => "manifest.log".to_owned(),
            FileKind::Checkpoint => "durable.ckpt".to_owned(),
        }
    }

    /// The kind of a file named `name` in a queue directory, if the case format can hold it.
    pub fn from_file_name(name: &str) -> Option<Self> {
        let no = |stem: &str| stem.parse::<u8>().ok();
        if let Some(stem) = name.strip_suffix(".seg") {
            return no(stem).map(FileKind::Segment);
        }
        if let Some(stem) = name.strip_suffix(".ack") {
            return no(stem).map(FileKind::AckLog);
        }
        match name {
            "manifest.log" => Some(FileKind::Manifest),
            "durable.ckpt" => Some(FileKind::Checkpoint),
            _ => None,
        }
    }

    fn code_and_no(self) -> (u8, u8) {
        match self {
            FileKind::Segment(no) => (0, no),
            FileKind::AckLog(no) => (1, no),
            FileKind::Manifest => (2, 0),
            FileKind::Checkpoint => (3, 0),
        }
    }
}

/// One file of a case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseFile {
    /// Which file.
    pub kind: FileKind,
    /// Write a valid header CRC over whatever the header holds.
    pub fix_header_crc: bool,
    /// Write a valid CRC into every record whose length fits the file.
    pub fix_record_crcs: bool,
    /// The file's bytes, before the fixes.
    pub bytes: Vec<u8>,
}

/// A queue directory to recover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// The queue's id.
    pub uid: u64,
    /// Whether the previous run stopped cleanly.
    pub clean_stop: bool,
    /// The directory's files.
    pub files: Vec<CaseFile>,
}

impl Case {
    /// Reads a case; `None` if the input is too short to name a queue.
    pub fn parse(data: &[u8]) -> Option<Case> {
        let (uid, rest) = data.split_first_chunk::<8>()?;
        let (&options, mut rest) = rest.split_first()?;
        let mut files = Vec::new();
        while let Some((&[kind, no, fix, l0, l1], tail)) = rest.split_first_chunk::<5>() {
            let len = usize::from(u16::from_le_bytes([l0, l1])).min(tail.len());
            let kind = match kind & 3 {
                0 => FileKind::Segment(no),
                1 => FileKind::AckLog(no),
                2 => FileKind::Manifest,
                _ => FileKind::Checkpoint,
            };
            files.push(CaseFile {
                kind,
                fix_header_crc: fix & 1 != 0,
                fix_record_crcs: fix & 2 != 0,
                bytes: tail[..len].to_vec(),
            });
            rest = &tail[len..];
            if files.len() == MAX_FILES {
                break;
            }
        }
        Some(Case {
            // Queue ids start at 1; 0 names no directory the store would list.
            uid: u64::from_le_bytes(*uid).max(1),
            clean_stop: options & 1 != 0,
            files,
        })
    }

    /// The input [`Case::parse`] reads back as this case (files cut to 65 535 bytes).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.uid.to_le_bytes().to_vec();
        out.push(u8::from(self.clean_stop));
        for f in &self.files {
            let (code, no) = f.kind.code_and_no();
            let fix = u8::from(f.fix_header_crc) | u8::from(f.fix_record_crcs) << 1;
            let len = f.bytes.len().min(usize::from(u16::MAX));
            out.extend_from_slice(&[code, no, fix]);
            out.extend_from_slice(&(len as u16).to_le_bytes());
            out.extend_from_slice(&f.bytes[..len]);
        }
        out
    }

    /// Writes the queue directory (and the clean-stop marker) into the data directory `data`.
    pub fn write(&self, data: &Path) -> std::io::Result<()> {
        let dir = data.join("queues").join(format!("{:016x}", self.uid));
        std::fs::create_dir_all(&dir)?;
        for f in &self.files {
            std::fs::write(dir.join(f.kind.file_name()), f.fixed_bytes())?;
        }
        if self.clean_stop {
            std::fs::write(data.join("CLEAN"), b"")?;
        }
        Ok(())
    }
}

impl CaseFile {
    /// The bytes written to disk: [`CaseFile::bytes`] with the requested CRCs made valid.
    pub fn fixed_bytes(&self) -> Vec<u8> {
        let mut b = self.bytes.clone();
        // (header length, where its CRC sits, where the record salt sits, record alignment)
        let (header_len, crc_at, salt_at, align) = match self.kind {
            FileKind::Segment(_) => (64, 60, 40, 8),
            FileKind::AckLog(_) | FileKind::Manifest => (40, 36, 12, 1),
            FileKind::Checkpoint => (40, 36, 12, 0),
        };
        if self.fix_header_crc && b.len() >= header_len {
            let c = crc32fast::hash(&b[..crc_at]);
            b[crc_at..crc_at + 4].copy_from_slice(&c.to_le_bytes());
        }
        if self.fix_record_crcs && align > 0 && b.len() >= header_len {
            let salt = u32::from_le_bytes(b[salt_at..salt_at + 4].try_into().expect("4 bytes"));
            fix_record_crcs(&mut b, header_len, salt, align);
        }
        b
    }
}

/// Every record in these files starts `crc u32 | len u32`, the CRC (seeded with the file's
/// salt) covering `[4, len)`. Walks the records from `from` and makes each CRC valid.
fn fix_record_crcs(b: &mut [u8], from: usize, salt: u32, align: usize) {
    let mut pos = from;
    while pos + 8 <= b.len() {
        let len = u32::from_le_bytes(b[pos + 4..pos + 8].try_into().expect("4 bytes")) as usize;
        if len < 8 || len > b.len() - pos {
            break;
        }
        let mut h = crc32fast::Hasher::new_with_initial(salt);
        h.update(&b[pos + 4..pos + len]);
        b[pos..pos + 4].copy_from_slice(&h.finalize().to_le_bytes());
        pos += len.next_multiple_of(align);
    }
}

/// Runs the case `data` describes, if any.
pub fn check(data: &[u8]) {
    if let Some(case) = Case::parse(data) {
        run(&case);
    }
}

/// A store configuration like the broker's, without timers that would write on their own.
pub fn config() -> StoreConfig {
    StoreConfig {
        log: LogConfig {
            segment_bytes: 64 << 10,
            relocate_after: Duration::from_secs(3600),
            ..LogConfig::default()
        },
        durability: DurabilityConfig {
            checkpoint_interval: Duration::from_secs(3600),
            ..DurabilityConfig::default()
        },
    }
}

/// A scratch data directory, in memory where the machine has a tmpfs (recovery syncs a lot).
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let builder = tempfile::Builder::new()
        .prefix("sluice-fuzz-")
        .tempdir_in(shm);
    match builder {
        Ok(dir) => dir,
        Err(_) => tempfile::tempdir().expect("a temporary directory"),
    }
}

/// A recovered message as read back.
#[derive(Debug, PartialEq, Eq)]
struct Recovered {
    seq: u64,
    timestamp_ms: u64,
    meta: Bytes,
    body: Bytes,
}

/// Recovers the case's queue and checks the invariants in the module docs.
pub fn run(case: &Case) {
    let data = scratch_dir();
    case.write(data.path())
        .expect("the case's files are written");
    let first = {
        let store = Store::open(data.path(), config()).expect("the data directory opens");
        match store.open_queue(case.uid) {
            Ok(log) => read_back(&log),
            // Damage that refuses the queue (a durable segment's header, say) is a typed
            // error, which is all that is asked of it.
            Err(_) => return,
        }
    };
    let store = Store::open(data.path(), config()).expect("the data directory opens again");
    let mut log = store
        .open_queue(case.uid)
        .unwrap_or_else(|e| panic!("a queue recovered once does not open again: {e}"));
    let again = read_back(&log);
    assert_eq!(first, again, "a second recovery changed the messages");

    let highest = again.last().map_or(0, |m| m.seq);
    let appended = match log.append(b"meta", b"body", 7) {
        Ok(appended) => appended,
        // Only after files claiming the very last seqs a record can carry.
        Err(StorageError::SeqsExhausted { .. }) if log.next_seq() > MAX_SEQ => return,
        Err(e) => panic!("a recovered queue refuses an append: {e}"),
    };
    assert!(
        appended.seq > highest,
        "seq {} reused: {highest} was recovered",
        appended.seq
    );
    let read = log
        .read(appended.seq)
        .expect("the appended message reads back");
    assert_eq!(
        (&read.meta[..], &read.body[..]),
        (&b"meta"[..], &b"body"[..])
    );
}

/// Reads every live message, checking it against the log's counters.
fn read_back(log: &QueueLog) -> Vec<Recovered> {
    let seqs = log.live_seqs();
    assert_eq!(seqs.len() as u64, log.message_count(), "live count");
    assert_eq!(log.recovery_report().messages, log.message_count());
    let mut bytes = 0u64;
    let mut out = Vec::with_capacity(seqs.len());
    for seq in seqs {
        assert!(seq < log.next_seq(), "live seq {seq} at or past next_seq");
        assert!(log.contains(seq));
        // `read` verifies the record's CRC: recovery must keep only records that pass.
        let m = log
            .read(seq)
            .unwrap_or_else(|e| panic!("recovered message {seq} does not read back: {e}"));
        assert_eq!(m.seq, seq);
        let head = log.peek(seq).expect("a recovered message peeks");
        assert_eq!(
            (head.timestamp_ms, head.meta),
            (m.timestamp_ms, &m.meta[..])
        );
        bytes += (m.meta.len() + m.body.len()) as u64;
        out.push(Recovered {
            seq,
            timestamp_ms: m.timestamp_ms,
            meta: m.meta,
            body: m.body,
        });
    }
    assert_eq!(bytes, log.message_bytes(), "live bytes");
    out
}

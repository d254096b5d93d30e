//! Recovery on arbitrary segment bytes, as short property runs: the fuzz target `recovery` in
//! fuzz/ (docs/fuzzing.md) drives the same entry point for minutes. Whatever a segment holds,
//! opening its queue never panics; when it opens, every message it kept reads back (the read
//! verifies the record's CRC), a second recovery keeps the same messages, and the next append
//! gets a seq above all of them.

use std::path::Path;

use proptest::prelude::*;

use super::support::*;
use crate::storage::format::{
    align_up, RecordHeader, RecordKind, SegmentHeader, Watermark, MAX_SEQ,
};
use crate::storage::{Damage as Reported, QueueLog, StorageError, Store};

const SEG: usize = 64 << 10;
const UID: u64 = 0x5eed;
const SALT: u32 = 0x1234_5678;

/// The live messages as (seq, meta, body), after checking them against the log's counters.
fn read_back(log: &QueueLog) -> Vec<(u64, Vec<u8>, Vec<u8>)> {
    let seqs = log.live_seqs();
    assert_eq!(seqs.len() as u64, log.message_count());
    let mut bytes = 0;
    let out: Vec<_> = seqs
        .into_iter()
        .map(|seq| {
            assert!(seq < log.next_seq());
            let m = log
                .read(seq)
                .unwrap_or_else(|e| panic!("kept message {seq} does not read back: {e}"));
            bytes += (m.meta.len() + m.body.len()) as u64;
            (seq, m.meta.to_vec(), m.body.to_vec())
        })
        .collect();
    assert_eq!(bytes, log.message_bytes());
    out
}

/// Opens queue `uid` of `data` twice and appends once, checking the invariants above.
fn recover_and_check(data: &Path, uid: u64) {
    let first = {
        let store = Store::open(data, config(SEG)).unwrap();
        match store.open_queue(uid) {
            Ok(log) => read_back(&log),
            Err(_) => return, // refused with a typed error: allowed
        }
    };
    let store = Store::open(data, config(SEG)).unwrap();
    let mut log = store.open_queue(uid).expect("recovered once, opens again");
    assert_eq!(
        read_back(&log),
        first,
        "a second recovery changed the messages"
    );
    let highest = first.last().map_or(0, |m| m.0);
    match log.append(b"m", b"b", 1) {
        Ok(appended) => {
            assert!(appended.seq > highest, "seq {} reused", appended.seq);
            assert_eq!(&log.read(appended.seq).unwrap().body[..], b"b");
        }
        // Only after a segment claiming the very last seqs.
        Err(StorageError::SeqsExhausted { .. }) => assert!(log.next_seq() > MAX_SEQ),
        Err(e) => panic!("a recovered queue refuses an append: {e}"),
    }
}

/// What a generated record is.
#[derive(Debug, Clone)]
struct GenRecord {
    relocated: bool,
    /// Added to the seq the record would have in order (0 = in order).
    seq_skew: u8,
    meta: Vec<u8>,
    body: Vec<u8>,
}

fn gen_record() -> impl Strategy<Value = GenRecord> {
    (
        proptest::bool::weighted(0.1),
        prop_oneof![4 => Just(0u8), 1 => any::<u8>()],
        proptest::collection::vec(any::<u8>(), 0..12),
        proptest::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(|(relocated, seq_skew, meta, body)| GenRecord {
            relocated,
            seq_skew,
            meta,
            body,
        })
}

/// A segment file with a valid header and valid records, as written by the storage engine.
fn segment_bytes(base_seq: u64, records: &[GenRecord]) -> Vec<u8> {
    let header = SegmentHeader {
        queue_uid: UID,
        segment_no: 1,
        base_seq,
        salt: SALT,
        created_unix_ms: 1,
        flags: 0,
    };
    let mut out = header.encode().to_vec();
    for (i, r) in records.iter().enumerate() {
        let rec_len = RecordHeader::record_len(r.meta.len(), r.body.len());
        let in_order = base_seq.wrapping_add(i as u64);
        let h = RecordHeader {
            rec_len: rec_len as u32,
            kind: if r.relocated {
                RecordKind::Relocated
            } else {
                RecordKind::Message
            },
            flags: 0,
            meta_len: r.meta.len() as u32,
            seq: in_order.wrapping_add(u64::from(r.seq_skew)),
            timestamp_ms: 1,
        };
        out.extend_from_slice(&h.encode(SALT, &r.meta, &r.body));
        out.extend_from_slice(&r.meta);
        out.extend_from_slice(&r.body);
        out.resize(align_up(out.len()), 0);
    }
    out
}

/// How the generated file is damaged before recovery.
#[derive(Debug, Clone)]
enum Damage {
    /// Cut the file to this length (modulo its length + 1): unaligned ends included.
    Truncate(usize),
    /// Overwrite bytes at these positions (modulo the length).
    Overwrite(Vec<(usize, u8)>),
    /// Append arbitrary bytes.
    Append(Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<usize>().prop_map(Damage::Truncate),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4).prop_map(Damage::Overwrite),
        proptest::collection::vec(any::<u8>(), 1..48).prop_map(Damage::Append),
    ]
}

fn apply(mut bytes: Vec<u8>, damage: &Damage) -> Vec<u8> {
    match damage {
        Damage::Truncate(at) => bytes.truncate(at % (bytes.len() + 1)),
        Damage::Overwrite(edits) => {
            for &(at, value) in edits {
                let at = at % bytes.len();
                bytes[at] = value;
            }
        }
        Damage::Append(tail) => bytes.extend_from_slice(tail),
    }
    bytes
}

/// Writes one queue directory holding `segment` (and a watermark, if given) into a fresh
/// data directory.
fn data_dir_with(segment: &[u8], watermark: Option<Watermark>) -> tempfile::TempDir {
    let data = tempfile::tempdir().unwrap();
    let qdir = queue_dir(data.path(), UID);
    std::fs::create_dir_all(&qdir).unwrap();
    std::fs::write(qdir.join(format!("{:020}.seg", 1)), segment).unwrap();
    if let Some(wm) = watermark {
        std::fs::write(qdir.join("durable.ckpt"), wm.encode(UID)).unwrap();
    }
    data
}

proptest! {
    // Each case opens a store twice and syncs: keep the count small for a debug build.
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn damaged_segments_never_panic_recovery_and_what_is_kept_reads_back(
        base_seq in prop_oneof![Just(1u64), 1u64..1000, Just(MAX_SEQ - 4), Just(u64::MAX - 4)],
        records in proptest::collection::vec(gen_record(), 0..8),
        damage in damage(),
        watermark in proptest::option::of(0u64..600),
    ) {
        let segment = apply(segment_bytes(base_seq, &records), &damage);
        let wm = watermark.map(|offset| Watermark { segment_no: 1, offset });
        let data = data_dir_with(&segment, wm);
        recover_and_check(data.path(), UID);
    }

    #[test]
    fn arbitrary_bytes_after_a_segment_header_never_panic_recovery(
        tail in proptest::collection::vec(any::<u8>(), 0..256),
        watermark in proptest::option::of(0u64..320),
    ) {
        let mut segment = segment_bytes(1, &[]);
        segment.extend_from_slice(&tail);
        let wm = watermark.map(|offset| Watermark { segment_no: 1, offset });
        let data = data_dir_with(&segment, wm);
        recover_and_check(data.path(), UID);
    }

    #[test]
    fn an_arbitrary_segment_file_never_panics_recovery(
        segment in proptest::collection::vec(any::<u8>(), 0..160),
    ) {
        let data = data_dir_with(&segment, None);
        recover_and_check(data.path(), UID);
    }
}

#[test]
fn a_real_segment_damaged_anywhere_never_panics_recovery() {
    // The real engine's bytes: two segments' worth of messages, then each byte of the first
    // record region changed in turn (a sample of offsets keeps this quick).
    let src = tempfile::tempdir().unwrap();
    let uid = {
        let store = Store::open(src.path(), config(512)).unwrap();
        let mut log = store.create_queue().unwrap();
        append_durable(&mut log, 0, 8, 40);
        store.checkpoint();
        log.uid()
    };
    let first = segments(&queue_dir(src.path(), uid))[0].clone();
    let len = std::fs::metadata(&first).unwrap().len() as usize;
    for at in (0..len.min(600)).step_by(37) {
        let copy = crash_copy(src.path());
        let seg = segments(&queue_dir(copy.path(), uid))[0].clone();
        flip_bit(&seg, at, (at % 8) as u8);
        recover_and_check(copy.path(), uid);
    }
}

/// Found by the `recovery` fuzz target: a segment file cut inside the padding of its last
/// record (at a length that is not a multiple of 8) made recovery map the segment with its
/// data ending past the file's end, and panic.
#[test]
fn a_segment_cut_inside_the_padding_of_its_last_record_keeps_that_record() {
    let src = tempfile::tempdir().unwrap();
    let uid = {
        let store = Store::open(src.path(), config(SEG)).unwrap();
        let mut log = store.create_queue().unwrap();
        // 32-byte header + 8-byte meta + 100-byte body: 140 bytes, padded to 144.
        append_durable(&mut log, 0, 3, 100);
        store.checkpoint();
        log.uid()
    };
    let seg = segments(&queue_dir(src.path(), uid)).pop().unwrap();
    let (start, end) = record_span(&seg, 3).unwrap();
    assert_eq!(end - start, 144);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len((start + 140) as u64)
        .unwrap();
    {
        let store = Store::open(src.path(), config(SEG)).unwrap();
        let log = store.open_queue(uid).expect("the queue opens");
        let ids: Vec<u64> = contents(&log).iter().map(|m| m.1).collect();
        assert_eq!(ids, [0, 1, 2], "every whole record is kept");
        // The watermark vouches for the 4 padding bytes that are gone: reported, nothing lost.
        for d in &log.recovery_report().damage {
            assert!(
                matches!(d, Reported::CorruptRecords { lost: None, .. }),
                "{d:?}"
            );
        }
    }
    recover_and_check(src.path(), uid);
}

/// Found by the property runs above: a segment header (CRC valid) whose base seq is near
/// `u64::MAX` overflowed recovery's seq counters. Seqs and segment numbers above 2^62 are
/// refused as damage wherever a file carries them.
#[test]
fn a_segment_claiming_seqs_near_the_end_of_u64_is_refused_not_a_panic() {
    for base_seq in [u64::MAX, u64::MAX - 1, MAX_SEQ + 1] {
        let records = vec![
            GenRecord {
                relocated: false,
                seq_skew: 0,
                meta: vec![1],
                body: vec![2],
            };
            2
        ];
        let segment = segment_bytes(base_seq, &records);
        // Inside the watermark the header is durable data: the queue is refused.
        let wm = Watermark {
            segment_no: 1,
            offset: segment.len() as u64,
        };
        let data = data_dir_with(&segment, Some(wm));
        let store = Store::open(data.path(), config(SEG)).unwrap();
        assert!(matches!(
            store.open_queue(UID),
            Err(StorageError::CorruptSegmentHeader { .. })
        ));
        drop(store);
        // Past it, the segment is a torn creation: dropped, and the queue starts empty.
        let data = data_dir_with(&segment, None);
        recover_and_check(data.path(), UID);
    }
    // The last seq allowed is still read as a message.
    let data = data_dir_with(
        &segment_bytes(
            MAX_SEQ,
            &[GenRecord {
                relocated: false,
                seq_skew: 0,
                meta: vec![],
                body: vec![7],
            }],
        ),
        None,
    );
    let store = Store::open(data.path(), config(SEG)).unwrap();
    let mut log = store.open_queue(UID).unwrap();
    assert_eq!(log.live_seqs(), [MAX_SEQ]);
    // And no seq beyond it is handed out: a record carrying one would not read back.
    assert!(matches!(
        log.append(b"", b"x", 1),
        Err(StorageError::SeqsExhausted { max: MAX_SEQ })
    ));
}

/// Found by the `recovery` fuzz target: an empty segment whose header says base seq 0, with a
/// damaged ack log, made recovery compute the segment's last seq as 0 - 1.
#[test]
fn an_empty_segment_at_seq_0_with_a_damaged_ack_log_opens() {
    let data = data_dir_with(&segment_bytes(0, &[]), None);
    let ack_log = queue_dir(data.path(), UID).join(format!("{:020}.ack", 1));
    std::fs::write(ack_log, [0xa5; 64]).unwrap();
    {
        let store = Store::open(data.path(), config(SEG)).unwrap();
        let log = store.open_queue(UID).expect("the queue opens");
        assert!(log.live_seqs().is_empty());
        assert!(log
            .recovery_report()
            .damage
            .iter()
            .any(|d| matches!(d, Reported::AckLogTruncated { .. })));
    }
    recover_and_check(data.path(), UID);
}

/// Seqs start at 1: a record claiming seq 0 (CRC valid) is damage, not a message that
/// `live_seqs` could never list while the counts included it.
#[test]
fn a_record_with_seq_0_is_not_kept() {
    let record = GenRecord {
        relocated: false,
        seq_skew: 0,
        meta: vec![],
        body: vec![1],
    };
    let data = data_dir_with(&segment_bytes(0, &[record]), None);
    {
        let store = Store::open(data.path(), config(SEG)).unwrap();
        let log = store.open_queue(UID).unwrap();
        assert_eq!(log.message_count(), 0);
        assert!(log.live_seqs().is_empty());
    }
    recover_and_check(data.path(), UID);
}

//! Torn tails, flipped bits, truncated and missing files: each is classified against the
//! durable watermark, reported, and never costs a confirmed message that was not damaged.

use super::support::*;
use crate::storage::{Damage, QueueLog, StorageError, Store};
use std::path::Path;

const SEG: usize = 64 << 10;

/// A store with `n` durable, checkpointed messages of 100 bytes (ids 0..n, seq = id + 1).
fn durable_store(n: u64) -> (tempfile::TempDir, Store, QueueLog) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(SEG)).unwrap();
    let mut log = store.create_queue().unwrap();
    append_durable(&mut log, 0, n, 100);
    store.checkpoint();
    (dir, store, log)
}

fn reopen(data: &Path) -> (Store, QueueLog) {
    let store = Store::open(data, config(SEG)).unwrap();
    let log = open_only(&store);
    (store, log)
}

fn assert_intact(log: &QueueLog, ids: impl IntoIterator<Item = u64>) {
    let ids: Vec<u64> = ids.into_iter().collect();
    let got = contents(log);
    let got_ids: Vec<u64> = got.iter().map(|g| g.1).collect();
    assert_eq!(got_ids, ids);
    for (seq, id, b) in got {
        assert_eq!(seq, id + 1);
        assert_eq!(b, body(id, 100), "message {id} has other bytes");
    }
}

#[test]
fn a_torn_last_record_is_cut_at_every_offset_and_nothing_confirmed_is_lost() {
    let (dir, store, mut log) = durable_store(20);
    // Record 21 is written and synced, but the watermark still says 20: as after a crash
    // between the write and the sync.
    append_durable(&mut log, 20, 1, 100);
    let base = crash_copy(dir.path());
    drop((log, store));
    let seg = segments(&queue_dir(base.path(), open_only_uid(base.path())))
        .pop()
        .unwrap();
    let (start, end) = record_span(&seg, 21).unwrap();
    let rec_end = start + 32 + 8 + 100; // padding after the record is not part of it
    for cut in start..rec_end {
        for truncate in [false, true] {
            let copy = crash_copy(base.path());
            let qdir = queue_dir(copy.path(), open_only_uid(copy.path()));
            let s = segments(&qdir).pop().unwrap();
            if truncate {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&s)
                    .unwrap()
                    .set_len(cut as u64)
                    .unwrap();
            } else {
                zero_range(&s, cut, end);
            }
            let (_store, log) = reopen(copy.path());
            assert_intact(&log, 0..20);
            assert!(
                log.recovery_report().damage.is_empty(),
                "cut {cut}: {:?}",
                log.recovery_report()
            );
            assert!(log.next_seq() >= 21);
        }
    }
}

fn open_only_uid(data: &Path) -> u64 {
    let q = data.join("queues");
    let name = std::fs::read_dir(q)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    u64::from_str_radix(name.to_str().unwrap(), 16).unwrap()
}

#[test]
fn garbage_after_a_zeroed_page_is_cut_and_its_seqs_are_never_reused() {
    let (dir, _store, mut log) = durable_store(10);
    // Unconfirmed-by-watermark records 11..=40, then the page holding some of them is lost.
    append_durable(&mut log, 10, 30, 100);
    let copy = crash_copy(dir.path());
    let qdir = queue_dir(copy.path(), log.uid());
    let seg = segments(&qdir).pop().unwrap();
    let (s15, _) = record_span(&seg, 15).unwrap();
    let (_, e20) = record_span(&seg, 20).unwrap();
    zero_range(&seg, s15, e20);
    let (_s, log2) = reopen(copy.path());
    assert_intact(&log2, 0..14);
    assert!(log2.recovery_report().torn_tail.is_some());
    assert!(
        log2.next_seq() > 40,
        "seqs seen after the hole must not be reused: {}",
        log2.next_seq()
    );
    // The cut is durable: recovering again finds the same state.
    drop((log2, _s));
    let (_s, log3) = reopen(copy.path());
    assert_intact(&log3, 0..14);
}

#[test]
fn a_torn_tail_in_an_older_segment_drops_the_later_unsynced_segments() {
    let (dir, _store, mut log) = durable_store(10);
    let first_new = log.next_seq();
    append_durable(&mut log, 10, 1500, 100);
    let copy = crash_copy(dir.path());
    let qdir = queue_dir(copy.path(), log.uid());
    let segs = segments(&qdir);
    assert!(segs.len() >= 3);
    // Tear the first record written after the watermark.
    let (start, end) = segs.iter().find_map(|s| record_span(s, first_new)).unwrap();
    let seg = segs
        .iter()
        .find(|s| record_span(s, first_new).is_some())
        .unwrap();
    zero_range(seg, start + 12, end);
    let (_s, log2) = reopen(copy.path());
    assert_intact(&log2, 0..10);
    let torn = log2.recovery_report().torn_tail.clone().unwrap();
    assert!(torn.segments_discarded >= 1, "{torn:?}");
    assert!(log2.next_seq() > 1510);
}

#[test]
fn a_sealed_segment_cut_short_past_the_watermark_is_a_torn_tail_and_stays_one() {
    // Segments of three pages; the watermark is on the first page of segment 1 and the crash
    // finds its second page lost while segment 2 (written later) survived: with nothing after
    // the lost page (its end reads as zeros), or with its third page still there.
    for keep_third_page in [false, true] {
        let seg_bytes = 12288;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), config(seg_bytes)).unwrap();
        let mut log = store.create_queue().unwrap();
        append_durable(&mut log, 0, 5, 100);
        store.checkpoint();
        append_durable(&mut log, 5, 100, 100);
        let copy = crash_copy(dir.path());
        let qdir = queue_dir(copy.path(), log.uid());
        let segs = segments(&qdir);
        assert!(segs.len() >= 2);
        let end = if keep_third_page { 8192 } else { seg_bytes };
        zero_range(&segs[0], 4096, end);
        for round in 0..3 {
            let (_s, log2) = reopen(copy.path());
            let r = log2.recovery_report();
            assert!(r.damage.is_empty(), "round {round}: {r:?}");
            assert_eq!(r.torn_tail.is_some(), round == 0, "round {round}: {r:?}");
            // Everything up to the lost page survives; nothing from the later segment does.
            let survivors: Vec<u64> = log2.live_seqs();
            assert!(
                survivors.len() >= 5 && survivors.len() < 40,
                "{survivors:?}"
            );
            assert_intact(&log2, 0..survivors.len() as u64);
            assert!(
                log2.next_seq() > 105,
                "seqs seen in the discarded segment are not reused"
            );
        }
    }
}

#[test]
fn recovery_syncs_what_it_kept_and_the_next_checkpoint_covers_it() {
    use crate::storage::durability::read_watermark;
    let (dir, store, mut log) = durable_store(10);
    // Written and synced, but no checkpoint recorded it.
    append_durable(&mut log, 10, 10, 100);
    let copy = crash_copy(dir.path());
    let uid = log.uid();
    drop((log, store));
    let qdir = queue_dir(copy.path(), uid);
    let seg = segments(&qdir).pop().unwrap();
    let (_, end) = record_span(&seg, 20).unwrap();
    let before = read_watermark(&qdir, uid).unwrap();
    assert!(before.offset < end as u64);
    let (store, log) = reopen(copy.path());
    assert_intact(&log, 0..20);
    // Recovery kept seqs 11..=20 past the watermark: they may sit in the page cache only. They
    // are synced with the next group commit, and from then on the watermark vouches for them
    // (so later damage there is reported, not cut as a torn tail).
    store.checkpoint();
    let after = read_watermark(&qdir, uid).unwrap();
    assert_eq!(
        (after.segment_no, after.offset),
        (before.segment_no, end as u64)
    );
}

#[test]
fn damage_below_the_watermark_is_corruption_not_a_torn_tail() {
    let (dir, store, log) = durable_store(20);
    store.checkpoint();
    let copy = crash_copy(dir.path());
    let qdir = queue_dir(copy.path(), log.uid());
    let seg = segments(&qdir).pop().unwrap();
    let (start, end) = record_span(&seg, 20).unwrap();
    zero_range(&seg, start + 40, end);
    let (_s, log2) = reopen(copy.path());
    assert_intact(&log2, (0..20).filter(|&i| i != 19));
    let r = log2.recovery_report();
    assert!(r.torn_tail.is_none());
    assert!(
        matches!(&r.damage[..], [Damage::CorruptRecords { lost: Some(l), .. }] if *l == (20..=20)),
        "{r:?}"
    );
    assert!(log2.is_degraded());
    assert!(
        qdir.join("quarantine").read_dir().unwrap().next().is_some(),
        "bad bytes are kept"
    );
}

#[test]
fn a_flipped_bit_in_a_body_quarantines_that_message_only() {
    let (dir, _store, log) = durable_store(2000);
    let copy = crash_copy(dir.path());
    let qdir = queue_dir(copy.path(), log.uid());
    let segs = segments(&qdir);
    let (start, _) = record_span(&segs[1], 700).unwrap();
    flip_bit(&segs[1], start + 32 + 8 + 50, 3);
    let (_s, log2) = reopen(copy.path());
    assert_intact(&log2, (0..2000).filter(|&i| i != 699));
    assert!(matches!(log2.read(700), Err(StorageError::NotLive(700))));
    let r = log2.recovery_report();
    assert!(
        matches!(&r.damage[..], [Damage::CorruptRecords { lost: Some(l), .. }] if *l == (700..=700)),
        "{r:?}"
    );
}

#[test]
fn a_flipped_bit_in_a_length_loses_at_most_the_rest_of_that_segment_and_says_which() {
    let (dir, _store, log) = durable_store(2000);
    let copy = crash_copy(dir.path());
    let qdir = queue_dir(copy.path(), log.uid());
    let segs = segments(&qdir);
    let (start, _) = record_span(&segs[1], 700).unwrap();
    flip_bit(&segs[1], start + 6, 1);
    let (_s, log2) = reopen(copy.path());
    let r = log2.recovery_report().clone();
    let [Damage::CorruptRecords {
        lost: Some(lost), ..
    }] = &r.damage[..]
    else {
        panic!("{r:?}")
    };
    assert_eq!(*lost.start(), 700);
    let ids: Vec<u64> = (0..2000).filter(|i| !lost.contains(&(i + 1))).collect();
    assert_intact(&log2, ids);
}

#[test]
fn a_damaged_segment_header_refuses_that_queue_and_the_others_serve() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(SEG)).unwrap();
    let mut a = store.create_queue().unwrap();
    let mut b = store.create_queue().unwrap();
    append_durable(&mut a, 0, 1000, 100);
    append_durable(&mut b, 0, 10, 100);
    store.checkpoint();
    let copy = crash_copy(dir.path());
    let seg = segments(&queue_dir(copy.path(), a.uid()))[0].clone();
    flip_bit(&seg, 33, 0);
    let store2 = Store::open(copy.path(), config(SEG)).unwrap();
    assert!(matches!(
        store2.open_queue(a.uid()),
        Err(StorageError::CorruptSegmentHeader { .. })
    ));
    let b2 = store2.open_queue(b.uid()).unwrap();
    assert_intact(&b2, 0..10);
}

#[test]
fn a_damaged_ack_batch_brings_messages_back_flagged_never_loses_any() {
    let (dir, store, mut log) = durable_store(10);
    for s in 1..=5 {
        log.ack(s).unwrap();
    }
    log.set_delivered_hwm(5);
    let e = log.flush().unwrap();
    store.durability().wait_blocking(e);
    let copy = crash_copy(dir.path());
    let qdir = queue_dir(copy.path(), log.uid());
    let ack = std::fs::read_dir(&qdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "ack"))
        .unwrap();
    flip_bit(&ack, 40 + 30, 2);
    let (_s, log2) = reopen(copy.path());
    assert_intact(&log2, 0..10);
    assert!(matches!(
        &log2.recovery_report().damage[..],
        [Damage::AckLogTruncated { .. }]
    ));
    assert!(!log2.is_degraded(), "lost acks lose no message");
    assert!(
        log2.recovered_deliveries().delivered_hwm >= 5,
        "the survivors come back flagged"
    );
}

#[test]
fn a_deleted_ack_log_redelivers_and_loses_nothing() {
    let (dir, store, mut log) = durable_store(10);
    for s in 1..=5 {
        log.ack(s).unwrap();
    }
    let e = log.flush().unwrap();
    store.durability().wait_blocking(e);
    let copy = crash_copy(dir.path());
    let qdir = queue_dir(copy.path(), log.uid());
    for e in std::fs::read_dir(&qdir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "ack") {
            std::fs::remove_file(p).unwrap();
        }
    }
    let (_s, log2) = reopen(copy.path());
    assert_intact(&log2, 0..10);
}

#[test]
fn truncated_and_missing_sealed_segments_are_reported_with_their_seqs() {
    let (dir, _store, log) = durable_store(2000);
    for mode in ["half", "zero", "missing"] {
        let copy = crash_copy(dir.path());
        let qdir = queue_dir(copy.path(), log.uid());
        let segs = segments(&qdir);
        let victim = &segs[1];
        let first = {
            let d = std::fs::read(victim).unwrap();
            crate::storage::format::SegmentHeader::decode(&d)
                .unwrap()
                .base_seq
        };
        let next = {
            let d = std::fs::read(&segs[2]).unwrap();
            crate::storage::format::SegmentHeader::decode(&d)
                .unwrap()
                .base_seq
        };
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(victim)
            .unwrap();
        match mode {
            "half" => f
                .set_len(std::fs::metadata(victim).unwrap().len() / 2)
                .unwrap(),
            "zero" => f.set_len(0).unwrap(),
            _ => std::fs::remove_file(victim).unwrap(),
        }
        let (_s, log2) = reopen(copy.path());
        let r = log2.recovery_report();
        let lost: Vec<_> = r
            .damage
            .iter()
            .filter_map(|d| match d {
                Damage::CorruptRecords { lost, .. } | Damage::MissingSegment { lost, .. } => {
                    lost.clone()
                }
                Damage::AckLogTruncated { .. } => None,
            })
            .collect();
        assert_eq!(lost.len(), 1, "{mode}: {r:?}");
        assert_eq!(*lost[0].end(), next - 1, "{mode}");
        if mode != "half" {
            assert_eq!(*lost[0].start(), first, "{mode}");
        }
        let ids: Vec<u64> = (0..2000).filter(|i| !lost[0].contains(&(i + 1))).collect();
        assert_intact(&log2, ids);
        assert!(log2.is_degraded());
    }
}

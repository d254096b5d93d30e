//! Append, read, ack, rotate, delete, relocate and restart.

use super::support::*;
use crate::storage::{StorageError, Store};

#[test]
fn append_read_and_ack_round_trip_without_copies() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(64 << 10)).unwrap();
    let mut log = store.create_queue().unwrap();
    let seqs = append_durable(&mut log, 0, 500, 300);
    assert_eq!(
        seqs,
        (1..=500).collect::<Vec<_>>(),
        "seqs start at 1 and are dense"
    );
    assert!(log.segment_count() > 1, "small segments rotate");
    let first = log.read(1).unwrap();
    for (i, &s) in seqs.iter().enumerate() {
        let m = log.read(s).unwrap();
        assert_eq!(&m.body[..], &body(i as u64, 300)[..]);
        assert_eq!(m.timestamp_ms, i as u64);
    }
    for &s in &seqs {
        log.ack(s).unwrap();
    }
    assert!(
        matches!(log.ack(1), Err(StorageError::NotLive(1))),
        "double ack is refused"
    );
    assert!(matches!(log.read(1), Err(StorageError::NotLive(1))));
    let e = log.flush().unwrap();
    store
        .durability()
        .wait_blocking(e.max(store.durability().current_epoch()));
    log.flush().unwrap();
    assert_eq!(
        log.segment_count(),
        1,
        "fully acked sealed segments are deleted"
    );
    assert_eq!(segments(log.dir()).len(), 1);
    // A delivered body stays valid after its ack and its segment's deletion.
    assert_eq!(&first.body[..], &body(0, 300)[..]);
    assert_eq!(log.message_count(), 0);
    assert_eq!(log.message_bytes(), 0);
}

#[test]
fn disk_use_returns_to_one_segment_after_a_backlog_drains() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(256 << 10)).unwrap();
    let mut log = store.create_queue().unwrap();
    let seqs = append_durable(&mut log, 0, 20_000, 128);
    let full = log.disk_bytes();
    assert!(full > 3 << 20, "backlog uses {full} bytes");
    for s in seqs {
        log.ack(s).unwrap();
    }
    let e = log.flush().unwrap();
    store
        .durability()
        .wait_blocking(e.max(store.durability().current_epoch()));
    log.flush().unwrap();
    let drained = log.disk_bytes();
    assert!(
        drained < 300 << 10,
        "after the drain {drained} bytes remain"
    );
}

#[test]
fn acks_and_delivery_counts_survive_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let uid;
    {
        let store = Store::open(dir.path(), config(64 << 10)).unwrap();
        let mut log = store.create_queue().unwrap();
        uid = log.uid();
        append_durable(&mut log, 0, 10, 50);
        for s in [2, 4, 6] {
            log.ack(s).unwrap();
        }
        log.record_delivery_count(7, 3).unwrap();
        log.set_delivered_hwm(8);
        log.flush().unwrap();
    }
    let store = Store::open(dir.path(), config(64 << 10)).unwrap();
    let log = store.open_queue(uid).unwrap();
    assert_eq!(log.live_seqs(), vec![1, 3, 5, 7, 8, 9, 10]);
    assert_eq!(log.recovered_deliveries().delivered_hwm, 8);
    assert_eq!(log.recovered_deliveries().counts.get(&7), Some(&3));
    assert!(log.recovery_report().torn_tail.is_none());
    assert!(log.recovery_report().damage.is_empty());
    assert_eq!(log.next_seq(), 11);
}

#[test]
fn a_second_process_cannot_open_the_same_directory() {
    let dir = tempfile::tempdir().unwrap();
    let _store = Store::open(dir.path(), config(64 << 10)).unwrap();
    assert!(matches!(
        Store::open(dir.path(), config(64 << 10)),
        Err(StorageError::Locked(_))
    ));
}

#[test]
fn oversized_records_are_refused_and_large_ones_get_their_own_segment() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(64 << 10)).unwrap();
    let mut log = store.create_queue().unwrap();
    let big = vec![7u8; 200 << 10];
    let a = log.append(b"m", &big, 1).unwrap();
    assert_eq!(&log.read(a.seq).unwrap().body[..], &big[..]);
    let huge = vec![0u8; 17 << 20];
    assert!(matches!(
        log.append(b"", &huge, 1),
        Err(StorageError::RecordTooLarge { .. })
    ));
    assert_eq!(log.next_seq(), 2, "a refused append consumes no seq");
}

#[test]
fn survivors_of_sparse_segments_are_relocated_and_old_segments_freed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(64 << 10)).unwrap();
    let mut log = store.create_queue().unwrap();
    let seqs = append_durable(&mut log, 0, 2000, 200);
    let before = log.segment_count();
    assert!(before >= 6);
    // Keep one slow message in each of the first segments; ack everything else.
    let keep: Vec<u64> = seqs.iter().copied().filter(|s| s % 250 == 7).collect();
    for &s in &seqs {
        if !keep.contains(&s) {
            log.ack(s).unwrap();
        }
    }
    log.flush().unwrap();
    assert!(
        log.segment_count() >= before - 1,
        "slow messages pin their segments"
    );
    log.compact_now().unwrap();
    let e = log.flush().unwrap().max(store.durability().current_epoch());
    store.durability().wait_blocking(e);
    log.flush().unwrap();
    let e = store.durability().current_epoch();
    store.durability().wait_blocking(e);
    log.flush().unwrap();
    assert!(
        log.segment_count() <= 2,
        "{} segments remain",
        log.segment_count()
    );
    assert_eq!(log.live_seqs(), keep, "relocation keeps seqs and order");
    for &s in &keep {
        assert_eq!(&log.read(s).unwrap().body[..], &body(s - 1, 200)[..]);
    }
    // The relocated copies survive a restart, each exactly once.
    let uid = log.uid();
    drop(log);
    drop(store);
    let store = Store::open(dir.path(), config(64 << 10)).unwrap();
    let mut log = store.open_queue(uid).unwrap();
    assert_eq!(log.live_seqs(), keep);
    for &s in &keep {
        log.ack(s).unwrap();
    }
    assert_eq!(log.message_count(), 0);
}

#[test]
fn due_times_survive_a_restart_and_a_relocation_and_the_last_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(64 << 10)).unwrap();
    let mut log = store.create_queue().unwrap();
    let seqs = append_durable(&mut log, 0, 2000, 200);
    let keep: Vec<u64> = seqs.iter().copied().filter(|s| s % 250 == 7).collect();
    log.record_due(keep[0], 5_000).unwrap();
    log.flush().unwrap();
    log.record_due(keep[0], 3_000).unwrap();
    log.record_due(keep[1], 9_000).unwrap();
    assert!(
        log.record_due(1_000_000, 1).is_err(),
        "only live messages wait"
    );
    for &s in &seqs {
        if !keep.contains(&s) {
            log.ack(s).unwrap();
        }
    }
    log.flush().unwrap();
    log.compact_now().unwrap();
    for _ in 0..3 {
        let e = log.flush().unwrap().max(store.durability().current_epoch());
        store.durability().wait_blocking(e);
    }
    log.flush().unwrap();
    assert!(log.segment_count() <= 2, "the old segments are gone");
    let uid = log.uid();
    drop(log);
    drop(store);
    let store = Store::open(dir.path(), config(64 << 10)).unwrap();
    let log = store.open_queue(uid).unwrap();
    assert_eq!(log.live_seqs(), keep);
    let dues = &log.recovered_deliveries().dues;
    assert_eq!(dues.get(&keep[0]), Some(&3_000), "the last due time wins");
    assert_eq!(dues.get(&keep[1]), Some(&9_000));
    assert_eq!(dues.get(&keep[2]), None);
}

#[test]
fn a_crash_between_relocation_and_deletion_keeps_exactly_one_copy() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(64 << 10)).unwrap();
    let mut log = store.create_queue().unwrap();
    let seqs = append_durable(&mut log, 0, 600, 200);
    for &s in &seqs[..590] {
        if s != 3 {
            log.ack(s).unwrap();
        }
    }
    log.flush().unwrap();
    log.compact_now().unwrap();
    let e = store.durability().current_epoch();
    store.durability().wait_blocking(e);
    store.checkpoint();
    // Both copies of seq 3 are on disk now: the old segment is not deleted yet.
    let copy = crash_copy(dir.path());
    let store2 = Store::open(copy.path(), config(64 << 10)).unwrap();
    let log2 = open_only(&store2);
    let mut expect = vec![3];
    expect.extend(591..=600);
    assert_eq!(log2.live_seqs(), expect);
    assert_eq!(log2.message_count(), 11);
    assert_eq!(&log2.read(3).unwrap().body[..], &body(2, 200)[..]);
}

#[test]
fn recovery_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(64 << 10)).unwrap();
    let mut log = store.create_queue().unwrap();
    append_durable(&mut log, 0, 300, 100);
    store.checkpoint();
    for i in 300..320u64 {
        log.append(&i.to_le_bytes(), &body(i, 100), i).unwrap();
    }
    let copy = crash_copy(dir.path());
    let first = {
        let s = Store::open(copy.path(), config(64 << 10)).unwrap();
        contents(&open_only(&s))
    };
    let second = {
        let s = Store::open(copy.path(), config(64 << 10)).unwrap();
        contents(&open_only(&s))
    };
    assert_eq!(first, second);
    assert!(first.len() >= 300);
}

#[test]
fn concurrent_checkpoints_each_cover_their_callers_writes() {
    use crate::storage::durability::read_watermark;
    use crate::storage::format::Watermark;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(64 << 10)).unwrap();
    let logs: Vec<_> = (0..2).map(|_| store.create_queue().unwrap()).collect();
    std::thread::scope(|sc| {
        for mut log in logs {
            let store = &store;
            sc.spawn(move || {
                for i in 0..100u64 {
                    log.append(b"m", &body(i, 10), i).unwrap();
                    let written = Watermark {
                        segment_no: log.active,
                        offset: log.segments[&log.active].file.map.committed() as u64,
                    };
                    // While the other thread's checkpoint is under way, this one must wait for
                    // the next, not return when that one completes.
                    store.checkpoint();
                    let got = read_watermark(log.dir(), log.uid());
                    assert!(
                        got >= Some(written),
                        "checkpoint {i} returned before covering {written:?}: {got:?}"
                    );
                }
            });
        }
    });
}

#[test]
fn an_interrupted_queue_creation_leaves_no_queue_behind() {
    let dir = tempfile::tempdir().unwrap();
    let uid = {
        let store = Store::open(dir.path(), config(64 << 10)).unwrap();
        let log = store.create_queue().unwrap();
        // Created complete, under its final name, with nothing left aside.
        let names: Vec<String> = std::fs::read_dir(dir.path().join("queues"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![format!("{:016x}", log.uid())]);
        assert!(log.dir().join("manifest.log").exists());
        log.uid()
    };
    // What a stop in the middle of a creation leaves: a directory under its temporary name,
    // with a manifest cut short (or nothing at all) in it.
    let queues = dir.path().join("queues");
    let torn = queues.join(".creating-00000000000000ab");
    std::fs::create_dir(&torn).unwrap();
    std::fs::write(torn.join("manifest.log"), [0u8; 10]).unwrap();
    std::fs::create_dir(queues.join(".creating-00000000000000cd")).unwrap();
    let store = Store::open(dir.path(), config(64 << 10)).unwrap();
    assert!(!torn.exists(), "a leftover creation is removed at open");
    assert!(!queues.join(".creating-00000000000000cd").exists());
    assert_eq!(store.queue_uids().unwrap(), vec![uid]);
    // The queue created before, never appended to, opens empty and clean and takes appends.
    let mut log = store.open_queue(uid).unwrap();
    assert_eq!(log.message_count(), 0);
    assert!(log.recovery_report().damage.is_empty());
    let seqs = append_durable(&mut log, 0, 3, 100);
    assert_eq!(seqs, vec![1, 2, 3]);
}

#[test]
fn peeking_reads_the_publish_time_and_meta_of_live_messages_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(64 << 10)).unwrap();
    let mut log = store.create_queue().unwrap();
    let first = log.append(b"meta-1", b"body-1", 1_000).unwrap().seq;
    let second = log.append(b"", b"body-2", 2_000).unwrap().seq;
    let head = log.peek(first).unwrap();
    assert_eq!((head.timestamp_ms, head.meta), (1_000, &b"meta-1"[..]));
    let head = log.peek(second).unwrap();
    assert_eq!((head.timestamp_ms, head.meta), (2_000, &b""[..]));
    log.ack(first).unwrap();
    assert!(matches!(log.peek(first), Err(StorageError::NotLive(_))));
    // Relocated survivors keep their publish time.
    let seqs = append_durable(&mut log, 10, 400, 300);
    for &s in &seqs[..399] {
        log.ack(s).unwrap();
    }
    log.compact_now().unwrap();
    assert_eq!(log.peek(second).unwrap().timestamp_ms, 2_000);
    assert_eq!(log.peek(seqs[399]).unwrap().timestamp_ms, 10 + 399);
}

#[test]
fn a_log_skipped_forward_keeps_the_given_seqs_across_short_and_long_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(64 << 10)).unwrap();
    let mut log = store.recreate_queue(42).unwrap();
    assert_eq!(log.uid(), 42);
    log.skip_to(10).unwrap();
    assert_eq!(
        log.append(b"m", b"a", 1).unwrap().seq,
        10,
        "an empty log starts there"
    );
    log.skip_to(13).unwrap();
    assert_eq!(
        log.append(b"m", b"b", 2).unwrap().seq,
        13,
        "a short gap is left empty"
    );
    log.skip_to(100_000).unwrap();
    assert_eq!(
        log.append(b"m", b"c", 3).unwrap().seq,
        100_000,
        "a long gap starts a segment"
    );
    assert_eq!(log.append(b"m", b"d", 4).unwrap().seq, 100_001);
    assert_eq!(log.live_seqs(), vec![10, 13, 100_000, 100_001]);
    assert!(!log.contains(11) && !log.contains(12) && !log.contains(99_999));
    assert_eq!(&log.read(13).unwrap().body[..], b"b");
    log.ack(13).unwrap();
    assert_eq!(log.live_seqs(), vec![10, 100_000, 100_001]);
    assert!(matches!(
        log.skip_to(5),
        Err(StorageError::SeqBehind {
            seq: 5,
            next: 100_002
        })
    ));
}

#[test]
fn recreating_a_queue_log_starts_it_empty_and_unsynced() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(64 << 10)).unwrap();
    let mut log = store.recreate_queue(7).unwrap();
    let appended = log.append(b"m", b"old", 1).unwrap();
    assert_eq!(
        appended.epoch, 0,
        "nothing to wait for: the raft log is what is durable"
    );
    drop(log);
    let log = store.recreate_queue(7).unwrap();
    assert_eq!(log.message_count(), 0);
    assert_eq!(log.next_seq(), 1);
    assert_eq!(store.queue_uids().unwrap(), vec![7]);
}

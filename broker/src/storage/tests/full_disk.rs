//! A full disk, for real: the data directory on a small tmpfs mounted for the test
//! (`storage::tmpfs`).

use super::support::*;
use std::path::PathBuf;

use crate::storage::tmpfs::{fill_to, free_bytes, Mount};
use crate::storage::{StorageError, Store};

#[test]
fn a_full_disk_is_storage_full_keeps_confirmed_data_and_recovers_when_space_returns() {
    let mnt = Mount::tmpfs("4m");
    let data = mnt.path().join("data");
    let store = Store::open(&data, config(256 << 10)).unwrap();
    let mut log = store.create_queue().unwrap();
    // Ballast leaves ~1 MiB free.
    let ballast = mnt.path().join("ballast");
    std::fs::write(&ballast, vec![1u8; 3 << 20]).unwrap();
    let mut confirmed = Vec::new();
    let mut full = None;
    for id in 0..10_000u64 {
        match log.append(&id.to_le_bytes(), &body(id, 2000), id) {
            Ok(a) => {
                store.durability().wait_blocking(a.epoch);
                confirmed.push(id);
            }
            Err(e) => {
                full = Some(e);
                break;
            }
        }
    }
    let err = full.expect("the disk never filled up");
    assert!(err.is_storage_full(), "expected StorageFull, got {err}");
    assert!(matches!(err, StorageError::StorageFull { .. }));
    let next = log.next_seq();
    assert!(log
        .append(b"x", &[0u8; 2000], 0)
        .unwrap_err()
        .is_storage_full());
    assert_eq!(log.next_seq(), next, "a refused append consumes no seq");
    // Everything confirmed before is intact.
    let got = contents(&log);
    assert_eq!(got.iter().map(|g| g.1).collect::<Vec<_>>(), confirmed);
    for (_, id, b) in &got {
        assert_eq!(b, &body(*id, 2000));
    }
    // Space comes back: publishing resumes without a restart.
    std::fs::remove_file(&ballast).unwrap();
    let a = log.append(b"again", b"resumed", 1).unwrap();
    store.durability().wait_blocking(a.epoch);
    assert_eq!(&log.read(a.seq).unwrap().body[..], b"resumed");
    // And a restart recovers all of it.
    let uid = log.uid();
    drop(log);
    drop(store);
    let store = Store::open(&data, config(256 << 10)).unwrap();
    let log = store.open_queue(uid).unwrap();
    assert_eq!(log.message_count(), confirmed.len() as u64 + 1);
    assert!(log.recovery_report().damage.is_empty());
}

#[test]
fn a_queue_on_a_full_disk_opens_drains_frees_space_and_takes_appends_again() {
    let mnt = Mount::tmpfs("4m");
    let data = mnt.path().join("data");
    let uid;
    let mut appended = 0u64;
    {
        let store = Store::open(&data, config(256 << 10)).unwrap();
        let mut log = store.create_queue().unwrap();
        uid = log.uid();
        fill_to(mnt.path(), 1 << 20);
        let err = loop {
            match log.append(&appended.to_le_bytes(), &body(appended, 2000), appended) {
                Ok(a) => {
                    store.durability().wait_blocking(a.epoch);
                    appended += 1;
                }
                Err(e) => break e,
            }
        };
        assert!(err.is_storage_full(), "expected StorageFull, got {err}");
        assert!(
            appended > 100,
            "only {appended} appends before the disk filled"
        );
    }
    // Restarted on the full disk (less than a segment's first chunk is free): the queue opens.
    let free_before = free_bytes(mnt.path());
    assert!(free_before < 64 << 10, "{free_before} bytes still free");
    let store = Store::open(&data, config(256 << 10)).unwrap();
    let mut log = store
        .open_queue(uid)
        .expect("a queue on a full disk must open");
    let segs_before = segments(&queue_dir(&data, uid)).len();
    assert!(segs_before > 3);
    // Every message reads back; a few acks whose ack log cannot be written stay in memory.
    let got = contents(&log);
    assert_eq!(got.len() as u64, appended);
    for (i, (seq, id, b)) in got.iter().enumerate() {
        assert_eq!(*id, i as u64);
        assert_eq!(b, &body(*id, 2000), "seq {seq}");
    }
    let seqs: Vec<u64> = got.iter().map(|g| g.0).collect();
    for &s in &seqs[..seqs.len() / 2] {
        log.ack(s).unwrap();
    }
    let _ = log.flush();
    for &s in &seqs[seqs.len() / 2..] {
        log.ack(s).unwrap();
    }
    assert_eq!(log.message_count(), 0);
    let _ = log.flush();
    let d = log.durability().clone();
    d.wait_blocking(d.current_epoch());
    log.flush().unwrap();
    // The drained segments are gone and their space is back.
    assert_eq!(segments(&queue_dir(&data, uid)), Vec::<PathBuf>::new());
    assert_eq!(log.segment_count(), 0);
    let free_after = free_bytes(mnt.path());
    assert!(
        free_after > free_before + (512 << 10),
        "{free_before} -> {free_after} bytes free"
    );
    // Appends resume, after every seq used before.
    let a = log.append(b"again", b"after the drain", 1).unwrap();
    assert!(a.seq > *seqs.last().unwrap());
    d.wait_blocking(a.epoch);
    assert_eq!(&log.read(a.seq).unwrap().body[..], b"after the drain");
    drop(log);
    drop(store);
    let store = Store::open(&data, config(256 << 10)).unwrap();
    let log = store.open_queue(uid).unwrap();
    assert_eq!(log.live_seqs(), vec![a.seq]);
    assert!(log.recovery_report().damage.is_empty());
}

#[test]
fn a_record_that_fits_in_the_space_left_is_not_refused_for_want_of_a_whole_chunk() {
    use crate::storage::format::{align_up, RecordHeader};
    let mnt = Mount::tmpfs("4m");
    let data = mnt.path().join("data");
    let store = Store::open(&data, config(1 << 20)).unwrap();
    let mut log = store.create_queue().unwrap();
    let a = log.append(&0u64.to_le_bytes(), &body(0, 1000), 0).unwrap();
    store.durability().wait_blocking(a.epoch);
    // The segment has its first 64 KiB chunk; 16 KiB more are free, not a whole next chunk.
    fill_to(mnt.path(), 16 << 10);
    let mut n = 1u64;
    let err = loop {
        match log.append(&n.to_le_bytes(), &body(n, 1000), n) {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
    };
    assert!(err.is_storage_full(), "expected StorageFull, got {err}");
    let written = 64 + n as usize * align_up(RecordHeader::record_len(8, 1000));
    assert!(
        written > (64 << 10) + (8 << 10),
        "{n} records ({written} bytes): the space left past the first chunk went unused"
    );
    for s in log.live_seqs() {
        log.read(s).unwrap();
    }
}

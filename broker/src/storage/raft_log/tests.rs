//! Raft log tests on real files in temp dirs. A "crash" is a copy of the data directory taken
//! while the store runs: exactly what the disk holds if the process dies then.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::storage::format::{RAFT_ENTRY_HEADER_LEN, RAFT_SEGMENT_HEADER_LEN};
use crate::storage::{DurabilityConfig, RaftLog, RaftLogConfig, StorageError, Store, StoreConfig};

/// Watermarks are written only when a test asks (`Store::checkpoint`) or at a clean stop, so a
/// test controls exactly what counts as durable.
pub(super) fn store(data: &Path) -> Store {
    let config = StoreConfig {
        durability: DurabilityConfig {
            checkpoint_interval: Duration::from_secs(3600),
            ..DurabilityConfig::default()
        },
        ..StoreConfig::default()
    };
    Store::open(data, config).unwrap()
}

/// Small segments: about 30 entries of 100 bytes each.
fn small() -> RaftLogConfig {
    RaftLogConfig {
        segment_bytes: 4096,
        ..RaftLogConfig::default()
    }
}

pub(super) fn log_dir(data: &Path) -> PathBuf {
    data.join("cluster")
        .join("groups")
        .join(format!("{:016x}", 7))
}

fn open(store: &Store) -> RaftLog {
    RaftLog::open_with(&log_dir(store.dir()), store.durability(), small()).unwrap()
}

fn try_open(store: &Store) -> Result<RaftLog, StorageError> {
    RaftLog::open_with(&log_dir(store.dir()), store.durability(), small())
}

/// A deterministic payload for entry `index`, its length varying with the index.
fn payload(index: u64) -> Vec<u8> {
    let len = 60 + (index % 7) as usize * 13;
    let mut x = index.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Appends `indexes` in batches of `batch` and returns the last epoch.
fn append(log: &mut RaftLog, indexes: std::ops::RangeInclusive<u64>, batch: usize) -> u64 {
    let all: Vec<(u64, Vec<u8>)> = indexes.map(|i| (i, payload(i))).collect();
    let mut epoch = 0;
    for chunk in all.chunks(batch) {
        epoch = log
            .append(chunk.iter().map(|(i, p)| (*i, p.as_slice())))
            .unwrap();
    }
    epoch
}

fn append_durable(log: &mut RaftLog, indexes: std::ops::RangeInclusive<u64>) {
    let epoch = append(log, indexes, 5);
    log.durability().wait_blocking(epoch);
}

/// Reads every live entry and checks it is the expected payload; returns the indexes.
fn check_contents(log: &RaftLog) -> Vec<u64> {
    let got = log.read(0..u64::MAX).unwrap();
    for (i, bytes) in &got {
        assert_eq!(&bytes[..], payload(*i).as_slice(), "payload of entry {i}");
    }
    got.into_iter().map(|(i, _)| i).collect()
}

pub(super) use crate::storage::tests::support::crash_copy;

pub(super) fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

pub(super) fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

/// End of the last entry record of a segment file (where a torn write would start).
fn data_end(seg: &Path) -> usize {
    use crate::storage::format::{align_up, RaftEntryHeader, RaftSegmentHeader};
    let data = std::fs::read(seg).unwrap();
    let h = RaftSegmentHeader::decode(&data).unwrap();
    let mut pos = RAFT_SEGMENT_HEADER_LEN;
    while let Ok(r) = RaftEntryHeader::decode(&data[pos..], h.salt, usize::MAX) {
        pos += align_up(r.rec_len as usize);
    }
    pos
}

#[test]
fn entries_read_back_across_segment_rotation_and_after_a_clean_reopen() {
    let data = tempfile::tempdir().unwrap();
    {
        let store = store(data.path());
        let mut log = open(&store);
        assert_eq!((log.first_index(), log.last_index()), (None, None));
        // Index 0 is where openraft starts.
        append_durable(&mut log, 0..=199);
        assert!(log.segment_count() > 3, "small segments rotate");
        assert_eq!((log.first_index(), log.last_index()), (Some(0), Some(199)));
        assert_eq!(check_contents(&log), (0..=199).collect::<Vec<_>>());
        let some = log.read(50..53).unwrap();
        assert_eq!(
            some.iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![50, 51, 52]
        );
        assert!(log.read(200..300).unwrap().is_empty());
    }
    let store = store(data.path());
    let mut log = open(&store);
    assert_eq!((log.first_index(), log.last_index()), (Some(0), Some(199)));
    assert_eq!(check_contents(&log), (0..=199).collect::<Vec<_>>());
    append_durable(&mut log, 200..=210);
    assert_eq!(check_contents(&log), (0..=210).collect::<Vec<_>>());
}

#[test]
fn appends_out_of_order_are_refused_and_change_nothing() {
    let data = tempfile::tempdir().unwrap();
    let store = store(data.path());
    let mut log = open(&store);
    append_durable(&mut log, 5..=9);
    for bad in [9, 11, 4] {
        let err = log.append([(bad, b"x".as_slice())]).unwrap_err();
        assert!(
            matches!(err, StorageError::IndexOutOfOrder { expected: 10, got } if got == bad),
            "{err}"
        );
    }
    assert_eq!(log.last_index(), Some(9));
    let too_big = vec![0u8; small().max_entry_bytes];
    let err = log.append([(10, too_big.as_slice())]).unwrap_err();
    assert!(matches!(err, StorageError::RecordTooLarge { .. }), "{err}");
    assert_eq!(check_contents(&log), (5..=9).collect::<Vec<_>>());
}

#[test]
fn an_entry_larger_than_a_segment_gets_a_segment_of_its_own() {
    let data = tempfile::tempdir().unwrap();
    let store = store(data.path());
    let mut log = open(&store);
    let big = vec![7u8; 100_000];
    let e = log
        .append([
            (1, b"a".as_slice()),
            (2, big.as_slice()),
            (3, b"c".as_slice()),
        ])
        .unwrap();
    log.durability().wait_blocking(e);
    let got = log.read(1..4).unwrap();
    assert_eq!(&got[1].1[..], big.as_slice());
    drop(log);
    let log = open(&store);
    assert_eq!(&log.read(2..3).unwrap()[0].1[..], big.as_slice());
}

#[tokio::test]
async fn wait_durable_resolves_once_the_append_is_synced() {
    let data = tempfile::tempdir().unwrap();
    let store = store(data.path());
    let mut log = open(&store);
    let epoch = log.append([(1, b"one".as_slice())]).unwrap();
    let wait = log.wait_durable(epoch);
    let waited = tokio::spawn(wait);
    tokio::time::timeout(Duration::from_secs(10), waited)
        .await
        .expect("the append became durable")
        .unwrap();
    assert!(store.durability().durable_epoch() >= epoch);
}

#[test]
fn a_crash_keeps_every_entry_written_and_appends_continue_after_them() {
    let data = tempfile::tempdir().unwrap();
    let store = store(data.path());
    let mut log = open(&store);
    append_durable(&mut log, 1..=40);
    store.checkpoint();
    // Written but not waited for: a process crash leaves them in the page cache.
    append(&mut log, 41..=75, 3);
    let copy = crash_copy(data.path());
    let store2 = self::store(copy.path());
    let mut log2 = open(&store2);
    assert_eq!(check_contents(&log2), (1..=75).collect::<Vec<_>>());
    append_durable(&mut log2, 76..=80);
    drop(log2);
    let log2 = open(&store2);
    assert_eq!(check_contents(&log2), (1..=80).collect::<Vec<_>>());
}

#[test]
fn garbage_after_the_last_entry_is_cut_as_a_torn_tail() {
    let data = tempfile::tempdir().unwrap();
    let store = store(data.path());
    let mut log = open(&store);
    append_durable(&mut log, 1..=20);
    store.checkpoint();
    let copy = crash_copy(data.path());
    let dir = log_dir(copy.path());
    let last = segments(&dir).pop().unwrap();
    let end = data_end(&last);
    // A torn write: a record header claiming more bytes than made it, then garbage.
    let mut torn = vec![0xabu8; 40];
    torn[4..8].copy_from_slice(&200u32.to_le_bytes());
    write_at(&last, end as u64, &torn);
    let store2 = self::store(copy.path());
    let mut log2 = open(&store2);
    assert_eq!(check_contents(&log2), (1..=20).collect::<Vec<_>>());
    append_durable(&mut log2, 21..=25);
    drop(log2);
    // The cut is durable and idempotent: the next open finds the same.
    let log2 = open(&store2);
    assert_eq!(check_contents(&log2), (1..=25).collect::<Vec<_>>());
}

#[test]
fn a_torn_entry_header_at_the_end_is_dropped_never_an_earlier_entry() {
    let data = tempfile::tempdir().unwrap();
    let store = store(data.path());
    let mut log = open(&store);
    append_durable(&mut log, 1..=10);
    store.checkpoint();
    append(&mut log, 11..=12, 1);
    let copy = crash_copy(data.path());
    // The last record's payload never reached the disk: its bytes read as zeros.
    let dir = log_dir(copy.path());
    let last = segments(&dir).pop().unwrap();
    let end = data_end(&last);
    let len = RAFT_ENTRY_HEADER_LEN + payload(12).len();
    let start = end - crate::storage::format::align_up(len);
    write_at(
        &last,
        (start + RAFT_ENTRY_HEADER_LEN) as u64,
        &vec![0u8; len - RAFT_ENTRY_HEADER_LEN],
    );
    let store2 = self::store(copy.path());
    let log2 = open(&store2);
    assert_eq!(check_contents(&log2), (1..=11).collect::<Vec<_>>());
}

#[test]
fn damage_below_the_durable_watermark_refuses_to_open() {
    let data = tempfile::tempdir().unwrap();
    let store = store(data.path());
    let mut log = open(&store);
    append_durable(&mut log, 1..=20);
    store.checkpoint();
    let copy = crash_copy(data.path());
    let last = segments(&log_dir(copy.path())).pop().unwrap();
    // One flipped bit in the first entry of the last segment, which the watermark covers.
    let mut bytes = std::fs::read(&last).unwrap();
    bytes[RAFT_SEGMENT_HEADER_LEN + RAFT_ENTRY_HEADER_LEN + 3] ^= 0x10;
    std::fs::write(&last, bytes).unwrap();
    let store2 = self::store(copy.path());
    let err = try_open(&store2).unwrap_err();
    assert!(matches!(err, StorageError::CorruptLog { .. }), "{err}");
}

#[test]
fn a_missing_segment_in_the_middle_refuses_to_open() {
    let data = tempfile::tempdir().unwrap();
    let store = store(data.path());
    let mut log = open(&store);
    append_durable(&mut log, 1..=150);
    store.checkpoint();
    let copy = crash_copy(data.path());
    let segs = segments(&log_dir(copy.path()));
    assert!(segs.len() >= 4);
    std::fs::remove_file(&segs[1]).unwrap();
    let store2 = self::store(copy.path());
    let err = try_open(&store2).unwrap_err();
    assert!(matches!(err, StorageError::CorruptLog { .. }), "{err}");
}

#[test]
fn a_lost_newest_segment_below_the_watermark_refuses_to_open() {
    let data = tempfile::tempdir().unwrap();
    let store = store(data.path());
    let mut log = open(&store);
    append_durable(&mut log, 1..=150);
    store.checkpoint();
    let copy = crash_copy(data.path());
    let last = segments(&log_dir(copy.path())).pop().unwrap();
    std::fs::remove_file(&last).unwrap();
    let store2 = self::store(copy.path());
    let err = try_open(&store2).unwrap_err();
    assert!(matches!(err, StorageError::CorruptLog { .. }), "{err}");
}

#[test]
fn a_truncation_survives_reopen_and_appends_continue_from_the_cut() {
    let data = tempfile::tempdir().unwrap();
    let store = store(data.path());
    let mut log = open(&store);
    append_durable(&mut log, 1..=120);
    let segments_before = log.segment_count();
    // A reader still holds entries that are about to be removed.
    let held = log.read(100..102).unwrap();
    log.truncate_from(50).unwrap();
    assert_eq!(log.last_index(), Some(49));
    assert!(log.read(50..60).unwrap().is_empty());
    assert!(
        log.segment_count() < segments_before,
        "segments wholly after the cut are deleted"
    );
    // The bytes handed out earlier are still readable (nothing was cut under the mapping).
    assert_eq!(&held[0].1[..], payload(100).as_slice());
    assert_eq!(&held[1].1[..], payload(101).as_slice());
    // Appends continue from the cut (with other payloads than before: the entries differ).
    let e = log
        .append([(50, b"new fifty".as_slice()), (51, b"new 51".as_slice())])
        .unwrap();
    log.durability().wait_blocking(e);
    drop(log);
    let log = open(&store);
    assert_eq!((log.first_index(), log.last_index()), (Some(1), Some(51)));
    let got = log.read(48..200).unwrap();
    let indexes: Vec<u64> = got.iter().map(|e| e.0).collect();
    assert_eq!(indexes, vec![48, 49, 50, 51]);
    assert_eq!(&got[1].1[..], payload(49).as_slice());
    assert_eq!(&got[2].1[..], b"new fifty");
    assert_eq!(&got[3].1[..], b"new 51");
}

#[test]
fn a_crash_right_after_a_truncation_never_revives_the_removed_entries() {
    let data = tempfile::tempdir().unwrap();
    let store = store(data.path());
    let mut log = open(&store);
    append_durable(&mut log, 1..=60);
    store.checkpoint();
    log.truncate_from(30).unwrap();
    // No checkpoint, no clean stop: the disk as the truncation left it.
    let copy = crash_copy(data.path());
    let store2 = self::store(copy.path());
    let mut log2 = open(&store2);
    assert_eq!(check_contents(&log2), (1..=29).collect::<Vec<_>>());
    append_durable(&mut log2, 30..=35);
    assert_eq!(check_contents(&log2), (1..=35).collect::<Vec<_>>());
}

#[test]
fn truncating_twice_and_truncating_everything_are_remembered() {
    let data = tempfile::tempdir().unwrap();
    let store = store(data.path());
    let mut log = open(&store);
    append_durable(&mut log, 1..=40);
    log.truncate_from(30).unwrap();
    append_durable(&mut log, 30..=45);
    log.truncate_from(20).unwrap();
    // Past the end, or on what is gone already: nothing to do.
    log.truncate_from(100).unwrap();
    assert_eq!(check_contents(&log), (1..=19).collect::<Vec<_>>());
    drop(log);
    let mut log = open(&store);
    assert_eq!(check_contents(&log), (1..=19).collect::<Vec<_>>());
    log.truncate_from(1).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (None, None));
    drop(log);
    let mut log = open(&store);
    assert_eq!((log.first_index(), log.last_index()), (None, None));
    // An empty log, never purged: the next append may start anywhere.
    append_durable(&mut log, 7..=9);
    drop(log);
    let log = open(&store);
    assert_eq!(check_contents(&log), vec![7, 8, 9]);
}

#[test]
fn a_purge_forgets_entries_deletes_whole_segments_and_survives_reopen() {
    let data = tempfile::tempdir().unwrap();
    let store = store(data.path());
    let mut log = open(&store);
    append_durable(&mut log, 1..=150);
    let before = log.segment_count();
    log.purge_through(100).unwrap();
    assert_eq!(log.last_purged(), Some(100));
    assert_eq!(
        (log.first_index(), log.last_index()),
        (Some(101), Some(150))
    );
    assert!(
        log.segment_count() < before,
        "segments wholly purged are deleted"
    );
    assert_eq!(check_contents(&log), (101..=150).collect::<Vec<_>>());
    // Purging less than before changes nothing; truncating purged entries is refused.
    log.purge_through(50).unwrap();
    assert_eq!(log.last_purged(), Some(100));
    let err = log.truncate_from(100).unwrap_err();
    assert!(matches!(err, StorageError::IndexOutOfRange { .. }), "{err}");
    drop(log);
    let mut log = open(&store);
    assert_eq!(log.last_purged(), Some(100));
    assert_eq!(check_contents(&log), (101..=150).collect::<Vec<_>>());
    append_durable(&mut log, 151..=160);
    assert_eq!(check_contents(&log), (101..=160).collect::<Vec<_>>());
}

#[test]
fn after_purging_everything_the_next_append_may_start_at_a_higher_index() {
    let data = tempfile::tempdir().unwrap();
    let store = store(data.path());
    let mut log = open(&store);
    append_durable(&mut log, 1..=80);
    // Beyond the last entry, as after installing a snapshot.
    log.purge_through(500).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (None, None));
    assert_eq!(log.last_purged(), Some(500));
    let err = log.append([(500, b"x".as_slice())]).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::IndexOutOfOrder {
                expected: 501,
                got: 500
            }
        ),
        "{err}"
    );
    drop(log);
    let mut log = open(&store);
    assert_eq!((log.first_index(), log.last_index()), (None, None));
    append_durable(&mut log, 700..=760);
    assert_eq!(log.first_index(), Some(700));
    drop(log);
    let mut log = open(&store);
    assert_eq!(check_contents(&log), (700..=760).collect::<Vec<_>>());
    assert_eq!(log.last_purged(), Some(500));
    // The old segments went once the new ones were durable.
    append_durable(&mut log, 761..=761);
    let firsts: Vec<u64> = log.segments.values().map(|s| s.first_index).collect();
    assert!(firsts.iter().all(|&f| f >= 700), "{firsts:?}");
}

#[test]
fn purging_exactly_the_last_entry_lets_appends_continue_in_place() {
    let data = tempfile::tempdir().unwrap();
    let store = store(data.path());
    let mut log = open(&store);
    append_durable(&mut log, 1..=10);
    log.purge_through(10).unwrap();
    assert_eq!(log.last_index(), None);
    append_durable(&mut log, 11..=12);
    assert_eq!((log.first_index(), log.last_index()), (Some(11), Some(12)));
    let copy = crash_copy(data.path());
    let store2 = self::store(copy.path());
    let log2 = open(&store2);
    assert_eq!(check_contents(&log2), vec![11, 12]);
}

#[test]
fn blobs_are_replaced_whole_and_survive_reopen_and_a_torn_temp_file() {
    let data = tempfile::tempdir().unwrap();
    let store = store(data.path());
    let mut log = open(&store);
    assert_eq!(log.load_blob("vote").unwrap(), None);
    log.save_blob("vote", b"term 1").unwrap();
    log.save_blob("vote", b"term 2, voted for 3").unwrap();
    log.save_blob("committed", b"").unwrap();
    let dir = log_dir(data.path());
    drop(log);
    // A crash while the next save wrote its temporary file.
    std::fs::write(dir.join("vote.blob.tmp"), b"half of a new v").unwrap();
    let log = open(&store);
    assert_eq!(
        log.load_blob("vote").unwrap().as_deref(),
        Some(b"term 2, voted for 3".as_slice())
    );
    assert_eq!(
        log.load_blob("committed").unwrap().as_deref(),
        Some(b"".as_slice())
    );
    assert!(
        !dir.join("vote.blob.tmp").exists(),
        "the torn temp file is removed"
    );
    for bad in ["", "a/b", "..", "x.blob", &"n".repeat(65)] {
        let err = log.load_blob(bad).unwrap_err();
        assert!(
            matches!(err, StorageError::InvalidBlobName(_)),
            "{bad}: {err}"
        );
    }
}

#[test]
fn a_damaged_blob_is_an_error_never_a_missing_one() {
    let data = tempfile::tempdir().unwrap();
    let store = store(data.path());
    let mut log = open(&store);
    log.save_blob("vote", b"term 9").unwrap();
    let path = log_dir(data.path()).join("vote.blob");
    let mut bytes = std::fs::read(&path).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let err = log.load_blob("vote").unwrap_err();
    assert!(matches!(err, StorageError::CorruptFile { .. }), "{err}");
}

#[test]
fn a_full_disk_is_storage_full_and_harms_nothing_written() {
    use crate::storage::fault::{self, Point};
    let data = tempfile::tempdir().unwrap();
    let store = store(data.path());
    let mut log = open(&store);
    append_durable(&mut log, 1..=10);
    let dir = log_dir(data.path());
    let full = fault::arm(
        Point::Reserve,
        &dir,
        rustix::io::Errno::NOSPC.raw_os_error(),
    );
    // Appends go on until a segment needs space (a new one, here: the segments are small).
    let mut next = 11;
    let err = loop {
        match log.append([(next, payload(next).as_slice())]) {
            Ok(_) => next += 1,
            Err(e) => break e,
        }
        assert!(next < 1000, "the disk never filled up");
    };
    assert!(err.is_storage_full(), "{err}");
    assert!(full.hits() > 0);
    assert_eq!(
        log.last_index(),
        Some(next - 1),
        "a refused entry is not appended"
    );
    let err = log.save_blob("vote", b"v").unwrap_err();
    assert!(err.is_storage_full(), "{err}");
    assert_eq!(log.load_blob("vote").unwrap(), None);
    drop(full);
    // Space is back: appends resume without a reopen, and everything reads back.
    let e = log.append([(next, payload(next).as_slice())]).unwrap();
    log.durability().wait_blocking(e);
    assert_eq!(check_contents(&log), (1..=next).collect::<Vec<_>>());
    drop(log);
    let log = open(&store);
    assert_eq!(check_contents(&log), (1..=next).collect::<Vec<_>>());
}

#[test]
fn running_out_of_descriptors_is_a_typed_error_that_changes_nothing() {
    use crate::storage::fault::{self, Point};
    let data = tempfile::tempdir().unwrap();
    let store = store(data.path());
    let mut log = open(&store);
    append_durable(&mut log, 1..=3);
    let dir = log_dir(data.path());
    let segments_before = segments(&dir);
    let exhausted = fault::arm(
        Point::OpenDir,
        &dir,
        rustix::io::Errno::MFILE.raw_os_error(),
    );
    // The first append after an open starts a segment, which needs a directory descriptor.
    drop(log);
    let mut log = open(&store);
    let err = log.append([(4, b"four".as_slice())]).unwrap_err();
    assert!(err.is_resource_exhausted(), "{err}");
    let err = log.save_blob("vote", b"v").unwrap_err();
    assert!(err.is_resource_exhausted(), "{err}");
    assert_eq!(segments(&dir), segments_before, "nothing was created");
    drop(exhausted);
    append_durable(&mut log, 4..=4);
    assert_eq!(check_contents(&log), vec![1, 2, 3, 4]);
}

#[test]
fn pages_lost_out_of_order_past_the_watermark_are_a_torn_tail_not_damage() {
    let data = tempfile::tempdir().unwrap();
    let store = store(data.path());
    let mut log = open(&store);
    append_durable(&mut log, 1..=10);
    store.checkpoint();
    // Never waited for: spread over several segments.
    append(&mut log, 11..=120, 4);
    let copy = crash_copy(data.path());
    let dir = log_dir(copy.path());
    let segs = segments(&dir);
    assert!(segs.len() >= 3, "{segs:?}");
    // A power loss wrote back a later segment but not the tail of the one before it.
    let victim = &segs[segs.len() - 2];
    let end = data_end(victim);
    let cut = RAFT_SEGMENT_HEADER_LEN + (end - RAFT_SEGMENT_HEADER_LEN) / 2;
    let cut = crate::storage::format::align_up(cut);
    write_at(victim, cut as u64, &vec![0u8; end - cut]);
    let store2 = self::store(copy.path());
    let mut log2 = open(&store2);
    let kept = check_contents(&log2);
    let last = *kept.last().unwrap();
    assert_eq!(
        kept,
        (1..=last).collect::<Vec<_>>(),
        "a prefix, without gaps"
    );
    assert!((10..120).contains(&last), "kept up to {last}");
    assert!(
        !segs.last().unwrap().exists(),
        "the later segment went with the torn tail"
    );
    append_durable(&mut log2, last + 1..=last + 3);
    drop(log2);
    let log2 = open(&store2);
    assert_eq!(check_contents(&log2), (1..=last + 3).collect::<Vec<_>>());
}

#[test]
fn the_same_loss_below_the_watermark_refuses_to_open() {
    let data = tempfile::tempdir().unwrap();
    let store = store(data.path());
    let mut log = open(&store);
    append_durable(&mut log, 1..=120);
    store.checkpoint();
    let copy = crash_copy(data.path());
    let segs = segments(&log_dir(copy.path()));
    let victim = &segs[segs.len() - 2];
    let end = data_end(victim);
    let cut = crate::storage::format::align_up(RAFT_SEGMENT_HEADER_LEN + (end - 64) / 2);
    write_at(victim, cut as u64, &vec![0u8; end - cut]);
    let store2 = self::store(copy.path());
    let err = try_open(&store2).unwrap_err();
    assert!(matches!(err, StorageError::CorruptLog { .. }), "{err}");
}

#[test]
fn a_log_emptied_by_truncation_restarts_anywhere_and_a_crash_keeps_it_so() {
    let data = tempfile::tempdir().unwrap();
    let store = store(data.path());
    let mut log = open(&store);
    append_durable(&mut log, 1..=50);
    log.purge_through(20).unwrap();
    log.truncate_from(21).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (None, None));
    append_durable(&mut log, 90..=95);
    let copy = crash_copy(data.path());
    let store2 = self::store(copy.path());
    let log2 = open(&store2);
    assert_eq!(check_contents(&log2), (90..=95).collect::<Vec<_>>());
    assert_eq!(log2.last_purged(), Some(20));
}

#[test]
fn a_log_can_move_between_threads_and_sit_behind_a_lock() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<RaftLog>();
}

#[test]
fn a_damaged_entry_is_never_returned_by_read() {
    let data = tempfile::tempdir().unwrap();
    let store = store(data.path());
    let mut log = open(&store);
    append_durable(&mut log, 1..=5);
    // The disk changes a byte under the running log (the mapping shows the file's pages).
    let seg = segments(&log_dir(data.path())).pop().unwrap();
    let at = RAFT_SEGMENT_HEADER_LEN + RAFT_ENTRY_HEADER_LEN + 1;
    let byte = std::fs::read(&seg).unwrap()[at];
    write_at(&seg, at as u64, &[byte ^ 0x40]);
    let err = log.read(1..2).unwrap_err();
    assert!(
        matches!(err, StorageError::CorruptEntry { index: 1, .. }),
        "{err}"
    );
    assert!(log.read(0..100).is_err(), "a range holding it fails too");
    assert_eq!(&log.read(2..3).unwrap()[0].1[..], payload(2).as_slice());
}

#[test]
fn a_torn_segment_creation_past_the_watermark_is_removed() {
    let data = tempfile::tempdir().unwrap();
    let store = store(data.path());
    let mut log = open(&store);
    append_durable(&mut log, 1..=5);
    store.checkpoint();
    let copy = crash_copy(data.path());
    let dir = log_dir(copy.path());
    // The next segment's file was created, its header never written.
    let last = segments(&dir).pop().unwrap();
    let no: u64 = last.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let torn = dir.join(format!("{:020}.seg", no + 1));
    std::fs::write(&torn, vec![0u8; 4096]).unwrap();
    let store2 = self::store(copy.path());
    let mut log2 = open(&store2);
    assert!(!torn.exists());
    assert_eq!(check_contents(&log2), (1..=5).collect::<Vec<_>>());
    append_durable(&mut log2, 6..=6);
    assert_eq!(check_contents(&log2), (1..=6).collect::<Vec<_>>());
}

#[test]
fn a_missing_or_damaged_state_file_refuses_to_open() {
    let data = tempfile::tempdir().unwrap();
    let store = store(data.path());
    let mut log = open(&store);
    append_durable(&mut log, 1..=5);
    drop(log);
    let dir = log_dir(data.path());
    let state = std::fs::read(dir.join("raft.state")).unwrap();
    let mut damaged = state.clone();
    *damaged.last_mut().unwrap() ^= 1;
    std::fs::write(dir.join("raft.state"), &damaged).unwrap();
    let err = try_open(&store).unwrap_err();
    assert!(matches!(err, StorageError::CorruptFile { .. }), "{err}");
    std::fs::remove_file(dir.join("raft.state")).unwrap();
    let err = try_open(&store).unwrap_err();
    assert!(matches!(err, StorageError::CorruptLog { .. }), "{err}");
    // Put back, the log is whole again: refusing changed nothing.
    std::fs::write(dir.join("raft.state"), &state).unwrap();
    let log = open(&store);
    assert_eq!(check_contents(&log), (1..=5).collect::<Vec<_>>());
}

#[test]
fn a_truncation_or_purge_refused_by_a_full_disk_changes_nothing() {
    use crate::storage::fault::{self, Point};
    let data = tempfile::tempdir().unwrap();
    let store = store(data.path());
    let mut log = open(&store);
    append_durable(&mut log, 1..=40);
    let dir = log_dir(data.path());
    let full = fault::arm(
        Point::Reserve,
        &dir,
        rustix::io::Errno::NOSPC.raw_os_error(),
    );
    let err = log.truncate_from(20).unwrap_err();
    assert!(err.is_storage_full(), "{err}");
    let err = log.purge_through(10).unwrap_err();
    assert!(err.is_storage_full(), "{err}");
    assert_eq!(log.last_purged(), None);
    assert_eq!(check_contents(&log), (1..=40).collect::<Vec<_>>());
    drop(full);
    log.truncate_from(20).unwrap();
    log.purge_through(10).unwrap();
    assert_eq!(check_contents(&log), (11..=19).collect::<Vec<_>>());
    drop(log);
    let log = open(&store);
    assert_eq!(check_contents(&log), (11..=19).collect::<Vec<_>>());
    assert_eq!(log.last_purged(), Some(10));
}

//! Helpers shared by the storage tests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::storage::{DurabilityConfig, LogConfig, QueueLog, Store, StoreConfig};

/// A store configuration for tests: small segments, and watermarks written only when a test
/// asks (`Store::checkpoint`) or at a clean stop, so a test controls exactly what is durable.
pub(super) fn config(segment_bytes: usize) -> StoreConfig {
    StoreConfig {
        log: LogConfig {
            segment_bytes,
            relocate_after: Duration::from_secs(3600),
            ..LogConfig::default()
        },
        durability: DurabilityConfig {
            checkpoint_interval: Duration::from_secs(3600),
            ..DurabilityConfig::default()
        },
    }
}

/// A deterministic body for message `n` of length `len`.
pub(super) fn body(n: u64, len: usize) -> Vec<u8> {
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Copies a data directory as it is on disk right now: what a crash at this moment leaves.
pub(crate) fn crash_copy(src: &Path) -> tempfile::TempDir {
    let dst = tempfile::tempdir().unwrap();
    copy_dir(src, dst.path());
    dst
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// The one queue directory in a data directory.
pub(super) fn queue_dir(data: &Path, uid: u64) -> PathBuf {
    data.join("queues").join(format!("{uid:016x}"))
}

/// Segment files of a queue, in order.
pub(super) fn segments(qdir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(qdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

/// Appends `n` messages with ids `first..first+n` and waits until they are durable.
pub(super) fn append_durable(log: &mut QueueLog, first: u64, n: u64, len: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    let mut epoch = 0;
    for i in first..first + n {
        let a = log.append(&i.to_le_bytes(), &body(i, len), i).unwrap();
        seqs.push(a.seq);
        epoch = a.epoch;
    }
    log.durability().wait_blocking(epoch);
    seqs
}

/// Reads every live message as (seq, id from meta, body).
pub(super) fn contents(log: &QueueLog) -> Vec<(u64, u64, Vec<u8>)> {
    log.live_seqs()
        .into_iter()
        .map(|s| {
            let m = log.read(s).unwrap();
            let id = u64::from_le_bytes(m.meta[..8].try_into().unwrap());
            (s, id, m.body.to_vec())
        })
        .collect()
}

/// Opens the single queue of a store (copied data directories hold exactly one).
pub(super) fn open_only(store: &Store) -> QueueLog {
    let uids = store.queue_uids().unwrap();
    assert_eq!(uids.len(), 1, "expected one queue, found {uids:?}");
    store.open_queue(uids[0]).unwrap()
}

/// Start and end offsets of the record holding `seq` in a segment file (`None` if absent).
pub(super) fn record_span(seg: &Path, seq: u64) -> Option<(usize, usize)> {
    use crate::storage::format::{align_up, RecordHeader, SegmentHeader, SEGMENT_HEADER_LEN};
    let data = std::fs::read(seg).unwrap();
    let h = SegmentHeader::decode(&data).ok()?;
    let mut pos = SEGMENT_HEADER_LEN;
    while let Ok(r) = RecordHeader::decode(&data[pos..], h.salt, usize::MAX) {
        let end = pos + align_up(r.rec_len as usize);
        if r.seq == seq {
            return Some((pos, end));
        }
        pos = end;
    }
    None
}

/// Overwrites `[from, to)` of a file with zeros (what a preallocated file holds where a write
/// never reached the disk).
pub(super) fn zero_range(path: &Path, from: usize, to: usize) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&vec![0u8; to - from], from as u64).unwrap();
}

/// Flips one bit of a file.
pub(super) fn flip_bit(path: &Path, byte: usize, bit: u8) {
    let mut data = std::fs::read(path).unwrap();
    data[byte] ^= 1 << bit;
    std::fs::write(path, data).unwrap();
}

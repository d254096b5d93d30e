//! A model-based property test of the Raft log: random appends, truncations, purges, syncs,
//! clean restarts and crashes (with the pages a power loss may lose zeroed) against a
//! `BTreeMap` model. After every crash the log must open without damage and hold a prefix of
//! the model's entries, with every entry known durable, none truncated or purged durably, and
//! exactly the bytes appended; recovering twice finds the same.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;

use super::tests::{crash_copy, log_dir, segments, store};
use crate::storage::format::{
    align_up, RaftEntryHeader, RaftSegmentHeader, RAFT_SEGMENT_HEADER_LEN,
};
use crate::storage::{RaftLog, RaftLogConfig, Store};

#[derive(Debug, Clone)]
enum Op {
    Append {
        n: usize,
        len: usize,
    },
    /// With an empty log: start this far above the purge point.
    AppendAfterGap {
        jump: u64,
    },
    Truncate {
        pick: usize,
    },
    Purge {
        pick: usize,
    },
    /// Wait until everything is durable and write the watermark: a confirm point.
    Sync,
    Restart,
    Crash {
        zero_pages: Vec<bool>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (1usize..6, 0usize..400).prop_map(|(n, len)| Op::Append { n, len }),
        1 => (1u64..5).prop_map(|jump| Op::AppendAfterGap { jump }),
        2 => any::<usize>().prop_map(|pick| Op::Truncate { pick }),
        2 => any::<usize>().prop_map(|pick| Op::Purge { pick }),
        2 => Just(Op::Sync),
        1 => Just(Op::Restart),
        3 => proptest::collection::vec(any::<bool>(), 0..10)
            .prop_map(|zero_pages| Op::Crash { zero_pages }),
    ]
}

#[derive(Debug, Default)]
struct Model {
    /// Live entries: index → payload.
    entries: BTreeMap<u64, Vec<u8>>,
    purged: Option<u64>,
    /// Every live entry at or below this index is durable.
    confirmed: Option<u64>,
    next_payload: u64,
}

impl Model {
    fn next_index(&self) -> u64 {
        match (self.entries.last_key_value(), self.purged) {
            (Some((&last, _)), _) => last + 1,
            (None, Some(p)) => p + 1,
            (None, None) => 1,
        }
    }

    fn payload(&mut self, len: usize) -> Vec<u8> {
        self.next_payload += 1;
        let mut x = self.next_payload.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Everything written so far is durable (the last live entry, if any, and all before it).
    fn confirm_all(&mut self) {
        self.confirmed = self.entries.keys().next_back().copied();
    }
}

/// How far the log is known to be on disk: a segment and the end of the valid records in it,
/// taken right after everything written was synced. Every earlier segment was synced in full.
type SyncedTo = Option<(u64, usize)>;

fn segment_no(path: &Path) -> u64 {
    path.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

fn log_end(data: &Path) -> SyncedTo {
    let last = segments(&log_dir(data)).pop()?;
    let bytes = std::fs::read(&last).unwrap();
    let h = RaftSegmentHeader::decode(&bytes).unwrap();
    let mut pos = RAFT_SEGMENT_HEADER_LEN;
    while let Ok(r) = RaftEntryHeader::decode(&bytes[pos..], h.salt, usize::MAX) {
        pos += align_up(r.rec_len as usize);
    }
    Some((segment_no(&last), pos))
}

/// Zeroes a random subset of the pages no completed sync covered: after `synced_to` in its
/// segment, and every page of later segments. If the `synced_to` segment was deleted since, a
/// later segment's header was durable first (the log deletes a segment only then), so the
/// first existing later segment keeps its header.
fn lose_unsynced_pages(data: &Path, synced_to: SyncedTo, pick: &[bool]) {
    let dir = log_dir(data);
    let segs = segments(&dir);
    let deleted = synced_to.is_some_and(|(n, _)| !segs.iter().any(|s| segment_no(s) == n));
    let mut keep_header = deleted;
    let mut k = 0;
    for s in segs {
        let no = segment_no(&s);
        let start = match synced_to {
            Some((n, _)) if no < n => continue,
            Some((n, end)) if no == n => end,
            _ if keep_header => RAFT_SEGMENT_HEADER_LEN,
            _ => 0,
        };
        keep_header = false;
        let len = std::fs::metadata(&s).unwrap().len() as usize;
        let mut p = start;
        while p < len {
            let page_end = (p + 1).next_multiple_of(4096).min(len);
            if pick.get(k).copied().unwrap_or(false) {
                super::tests::write_at(&s, p as u64, &vec![0u8; page_end - p]);
            }
            k += 1;
            p = page_end;
        }
    }
}

fn config(seg: usize) -> RaftLogConfig {
    RaftLogConfig {
        segment_bytes: seg,
        ..RaftLogConfig::default()
    }
}

fn open(store: &Store, seg: usize) -> RaftLog {
    RaftLog::open_with(&log_dir(store.dir()), store.durability(), config(seg)).unwrap()
}

fn contents(log: &RaftLog) -> BTreeMap<u64, Vec<u8>> {
    log.read(0..u64::MAX)
        .unwrap()
        .into_iter()
        .map(|(i, b)| (i, b.to_vec()))
        .collect()
}

fn check_exact(log: &RaftLog, m: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(&contents(log), &m.entries);
    prop_assert_eq!(log.last_purged(), m.purged);
    prop_assert_eq!(log.first_index(), m.entries.keys().next().copied());
    prop_assert_eq!(log.last_index(), m.entries.keys().next_back().copied());
    Ok(())
}

fn run(seg: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut dir = tempfile::tempdir().unwrap();
    let mut store = store(dir.path());
    let mut log = open(&store, seg);
    let mut m = Model::default();
    let mut synced_to: SyncedTo = None;
    for op in ops {
        match op {
            Op::Append { n, len } => {
                let first = m.next_index();
                let batch: Vec<(u64, Vec<u8>)> = (first..first + n as u64)
                    .map(|i| (i, m.payload(len)))
                    .collect();
                log.append(batch.iter().map(|(i, p)| (*i, p.as_slice())))
                    .unwrap();
                m.entries.extend(batch);
            }
            Op::AppendAfterGap { jump } => {
                if m.entries.is_empty() {
                    let index = m.next_index() + jump;
                    let payload = m.payload(50);
                    log.append([(index, payload.as_slice())]).unwrap();
                    m.entries.insert(index, payload);
                }
            }
            Op::Truncate { pick } => {
                if let Some((&first, _)) = m.entries.first_key_value() {
                    let index = first + (pick % (m.entries.len() + 1)) as u64;
                    log.truncate_from(index).unwrap();
                    m.entries.split_off(&index);
                    // A truncation waits for everything written before it.
                    m.confirm_all();
                    synced_to = log_end(dir.path());
                }
            }
            Op::Purge { pick } => {
                let last = m.next_index();
                let index = last.saturating_sub(3) + (pick % 6) as u64;
                log.purge_through(index).unwrap();
                if m.purged.is_none_or(|p| index > p) {
                    m.purged = Some(index);
                    m.entries = m.entries.split_off(&(index + 1));
                }
            }
            Op::Sync => {
                let e = store.durability().current_epoch();
                store.durability().wait_blocking(e);
                store.checkpoint();
                m.confirm_all();
                synced_to = log_end(dir.path());
            }
            Op::Restart => {
                drop(log);
                drop(store);
                synced_to = log_end(dir.path());
                store = super::tests::store(dir.path());
                log = open(&store, seg);
                m.confirm_all();
                check_exact(&log, &m)?;
            }
            Op::Crash { zero_pages } => {
                let copy = crash_copy(dir.path());
                drop(log);
                drop(store);
                lose_unsynced_pages(copy.path(), synced_to, &zero_pages);
                dir = copy;
                store = super::tests::store(dir.path());
                log =
                    match RaftLog::open_with(&log_dir(dir.path()), store.durability(), config(seg))
                    {
                        Ok(log) => log,
                        Err(e) => {
                            return Err(TestCaseError::fail(format!("open after a crash: {e}")))
                        }
                    };
                let got = contents(&log);
                // A prefix of the model, with exactly the bytes appended.
                let prefix: BTreeMap<u64, Vec<u8>> = m
                    .entries
                    .iter()
                    .take(got.len())
                    .map(|(i, p)| (*i, p.clone()))
                    .collect();
                prop_assert_eq!(&got, &prefix, "not a prefix of the model");
                if let Some(c) = m.confirmed {
                    let durable = m.entries.range(..=c).count();
                    prop_assert!(got.len() >= durable, "durable entries lost");
                }
                prop_assert_eq!(log.last_purged(), m.purged);
                {
                    let again = crash_copy(dir.path());
                    let store2 = super::tests::store(again.path());
                    let log2 = open(&store2, seg);
                    prop_assert_eq!(contents(&log2), got.clone(), "recovering twice differs");
                }
                m.entries = got;
                // Recovery made what it kept durable.
                m.confirm_all();
                synced_to = log_end(dir.path());
                check_exact(&log, &m)?;
            }
        }
    }
    drop(log);
    drop(store);
    let store = super::tests::store(dir.path());
    let log = open(&store, seg);
    check_exact(&log, &m)
}

/// Shrunk failures found before, replayed exactly.
#[test]
fn past_failures_stay_fixed() {
    use Op::*;
    let crash = |z: &[u8]| Crash {
        zero_pages: z.iter().map(|&b| b == 1).collect(),
    };
    // The segment the last sync reached was purged and deleted, and a power loss took every
    // entry of the next one (whose header was durable): recovery took the gap before the
    // segment after it for damage instead of a torn tail.
    run(
        4096,
        vec![
            Append { n: 4, len: 49 },
            Restart,
            Append { n: 5, len: 390 },
            Purge { pick: 0 },
            Append { n: 3, len: 396 },
            Append { n: 4, len: 389 },
            Append { n: 3, len: 24 },
            crash(&[1, 0, 0]),
            Sync,
            Append { n: 3, len: 40 },
            crash(&[0, 1]),
        ],
    )
    .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn the_raft_log_matches_the_model_through_crashes(
        seg in proptest::sample::select(&[4096usize, 8192][..]),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        run(seg, ops)?;
    }
}

use super::*;

const SMALL: usize = 1000;

fn entry(seq: u64, due_ms: u64) -> Entry {
    Entry {
        due_ms,
        seq,
        delivery_count: (seq % 5) as u32,
    }
}

fn schedule(dir: &Path) -> Schedule {
    Schedule::open_with(dir, SMALL)
}

/// Due times in a scrambled order (a fixed permutation, so runs overlap in time).
fn scrambled(n: u64) -> impl Iterator<Item = (u64, u64)> {
    (0..n).map(move |i| (i + 1, (i * 7919) % n * 10))
}

fn drain(s: &mut Schedule) -> Vec<Entry> {
    std::iter::from_fn(|| s.pop_due(u64::MAX)).collect()
}

fn run_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join(TIMERS_DIR)).map_or(0, |d| d.count())
}

#[test]
fn messages_come_out_in_due_order_across_memory_and_run_files() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = schedule(tmp.path());
    let n = 20 * SMALL as u64 + 17;
    for (seq, due) in scrambled(n) {
        s.insert(entry(seq, due));
    }
    assert_eq!(s.len(), n);
    assert!(run_files(tmp.path()) > 0, "entries were written out");
    let out = drain(&mut s);
    assert_eq!(out.len() as u64, n);
    assert!(out.windows(2).all(|w| w[0] < w[1]), "due order, then seq");
    assert_eq!(s.len(), 0);
    assert_eq!(run_files(tmp.path()), 0, "finished runs are removed");
}

#[test]
fn memory_holds_one_staging_and_one_block_per_run_however_many_wait() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = schedule(tmp.path());
    let n = 200 * SMALL as u64;
    for (seq, due) in scrambled(n) {
        s.insert(entry(seq, due));
        assert!(s.staging.len() < SMALL);
    }
    // Size-tiered merging: each run is more than twice the next, so about log2(n/SMALL).
    assert!(s.runs.len() <= 9, "{} runs for {n} entries", s.runs.len());
    assert_eq!(s.next_due(), Some(0));
    let loaded: usize = s.runs.iter().map(Run::loaded).sum();
    assert!(loaded <= s.runs.len() * run::BLOCK_ENTRIES);
    assert_eq!(s.len(), n);
}

#[test]
fn a_burst_due_at_one_millisecond_streams_out_block_by_block() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = schedule(tmp.path());
    let n = 30 * SMALL as u64;
    for seq in 1..=n {
        s.insert(entry(seq, 5_000));
    }
    assert_eq!(s.pop_due(4_999), None, "nothing before its time");
    let mut last = 0;
    for _ in 0..n {
        let e = s.pop_due(5_000).expect("due");
        assert!(e.seq > last, "one due time: seq order");
        last = e.seq;
        let loaded: usize = s.runs.iter().map(Run::loaded).sum();
        assert!(loaded + s.staging.len() <= SMALL + s.runs.len() * run::BLOCK_ENTRIES);
    }
    assert_eq!(s.pop_due(u64::MAX), None);
}

#[test]
fn a_cancelled_message_is_not_counted_browsed_or_popped() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = schedule(tmp.path());
    for (seq, due) in scrambled(3 * SMALL as u64) {
        s.insert(entry(seq, due));
    }
    let first = s.page(None, 2);
    s.cancel(first[0].seq);
    assert!(s.is_cancelled(first[0].seq));
    assert_eq!(s.len(), 3 * SMALL as u64 - 1);
    assert_eq!(s.page(None, 1), [first[1]]);
    assert_eq!(s.pop_due(u64::MAX), Some(first[1]));
    assert!(
        !s.is_cancelled(first[0].seq),
        "forgotten once its entry came out"
    );
    assert_eq!(drain(&mut s).len(), 3 * SMALL - 2);
}

#[test]
fn browsing_pages_through_every_waiting_message_in_due_order_without_taking_any() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = schedule(tmp.path());
    let n = 5 * SMALL as u64 + 3;
    for (seq, due) in scrambled(n) {
        s.insert(entry(seq, due));
    }
    s.pop_due(0);
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s.page(after, 333);
        if page.is_empty() {
            break;
        }
        after = page.last().copied();
        seen.extend(page);
    }
    assert_eq!(seen.len() as u64, n - 1);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(seen, drain(&mut s), "browsing took nothing");
}

#[test]
fn a_damaged_run_block_is_reported_and_the_rest_still_comes_out() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = schedule(tmp.path());
    for seq in 1..=SMALL as u64 {
        s.insert(entry(seq, seq));
    }
    assert_eq!(s.runs.len(), 1);
    for seq in 2001..=2010 {
        s.insert(entry(seq, seq));
    }
    // Flip a byte in the second block of the run (entries 256..510).
    let path = s.runs[0].path.clone();
    let mut bytes = std::fs::read(&path).unwrap();
    let at = run::HEADER_LEN as usize + run::BLOCK_LEN + 100;
    bytes[at] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let out = drain(&mut s);
    assert_eq!(s.damaged_blocks(), 1);
    let seqs: Vec<u64> = out.iter().map(|e| e.seq).collect();
    let first_block: Vec<u64> = (1..=run::BLOCK_ENTRIES as u64).collect();
    assert_eq!(&seqs[..first_block.len()], first_block, "before the damage");
    assert_eq!(
        &seqs[first_block.len()..],
        (2001..=2010).collect::<Vec<_>>()
    );
    assert_eq!(s.len(), 0, "the lost entries are no longer counted");
}

#[test]
fn opening_discards_the_files_of_an_earlier_start() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = schedule(tmp.path());
    for seq in 1..=3 * SMALL as u64 {
        s.insert(entry(seq, seq));
    }
    assert!(run_files(tmp.path()) > 0);
    drop(s);
    let mut s = schedule(tmp.path());
    assert_eq!(run_files(tmp.path()), 0);
    assert_eq!((s.len(), s.next_due()), (0, None));
}

#[test]
fn a_failed_write_keeps_entries_in_memory_and_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = schedule(tmp.path());
    // A file where the directory should go: every write of a run fails.
    std::fs::write(tmp.path().join(TIMERS_DIR), b"x").unwrap();
    let n = 3 * SMALL as u64;
    for (seq, due) in scrambled(n) {
        s.insert(entry(seq, due));
    }
    assert!(s.spill_failing);
    assert_eq!(s.len(), n);
    std::fs::remove_file(tmp.path().join(TIMERS_DIR)).unwrap();
    for seq in n + 1..=n + SMALL as u64 {
        s.insert(entry(seq, u64::MAX - 1));
    }
    assert!(!s.spill_failing, "written once the disk takes it");
    let out = drain(&mut s);
    assert_eq!(out.len() as u64, n + SMALL as u64);
    assert!(out.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn clearing_forgets_everything_and_removes_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = schedule(tmp.path());
    for seq in 1..=3 * SMALL as u64 {
        s.insert(entry(seq, seq));
    }
    s.cancel(5);
    s.clear();
    assert_eq!((s.len(), s.next_due()), (0, None));
    assert_eq!(run_files(tmp.path()), 0);
}

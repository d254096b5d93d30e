//! Running out of file descriptors, for real: the test runs itself again as a child process
//! with a lowered `RLIMIT_NOFILE` (a limit applies to the whole process, so the other tests of
//! this binary must not share it). An abort in the child (the old fail-stop on a directory
//! that could not be opened for syncing) fails the parent.

use std::process::Command;

use rustix::io::Errno;
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

use super::support::*;
use crate::storage::{QueueLog, StorageError, Store};

/// Set in the child's environment: it then runs the scenario instead of spawning.
const CHILD_VAR: &str = "SLUICE_STORAGE_DESCRIPTORS_CHILD";

/// Descriptors left free when the limit is lowered: fewer than a new queue or a new segment
/// needs, more than appending into an existing segment does (none).
const HEADROOM: u64 = 2;

#[test]
fn out_of_descriptors_is_a_typed_error_that_never_stops_the_sync_thread() {
    if std::env::var_os(CHILD_VAR).is_some() {
        return exhaust_descriptors();
    }
    let name = concat!(
        module_path!(),
        "::out_of_descriptors_is_a_typed_error_that_never_stops_the_sync_thread"
    );
    // The test filter names the test without the crate.
    let filter = name.split_once("::").expect("a module path").1;
    let out = Command::new(std::env::current_exe().unwrap())
        .args([filter, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, "1")
        .output()
        .expect("run the test binary again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the child failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

/// Open descriptors of this process now.
fn open_descriptors() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

/// Lowers the soft limit so that `headroom` descriptors are left; returns the old limit.
fn leave_only(headroom: u64) -> Rlimit {
    let old = getrlimit(Resource::Nofile);
    // `read_dir` itself held one descriptor while counting.
    let soft = open_descriptors() - 1 + headroom;
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(soft),
            maximum: old.maximum,
        },
    )
    .unwrap();
    old
}

fn append_one(log: &mut QueueLog, id: u64, len: usize) -> Result<u64, StorageError> {
    log.append(&id.to_le_bytes(), &body(id, len), id)
        .map(|a| a.epoch)
}

fn exhaust_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(64 << 10)).unwrap();
    let mut log = store.create_queue().unwrap();
    append_durable(&mut log, 0, 4, 100);
    let mut confirmed: Vec<u64> = (0..4).collect();
    let mut next = 4;

    let old = leave_only(HEADROOM);
    // Creating queues fails, typed, before anything is left behind.
    let mut created = Vec::new();
    let refusal = loop {
        match store.create_queue() {
            Ok(q) => created.push(q),
            Err(e) => break e,
        }
        assert!(created.len() < 16, "the lowered limit was never reached");
    };
    assert!(refusal.is_resource_exhausted(), "{refusal:?}");

    // Appending into the open segment needs no descriptor and becomes durable: the sync
    // thread opens nothing. Rotating into a new segment fails, typed, and loses nothing.
    let rotation = loop {
        match append_one(&mut log, next, 4000) {
            Ok(epoch) => {
                store.durability().wait_blocking(epoch);
                confirmed.push(next);
                next += 1;
            }
            Err(e) => break e,
        }
        assert!(next < 1000, "no rotation was needed");
    };
    assert!(rotation.is_resource_exhausted(), "{rotation:?}");

    // Descriptors come back: the same append succeeds, everything is durable and readable.
    setrlimit(Resource::Nofile, old).unwrap();
    let epoch = append_one(&mut log, next, 4000).unwrap();
    store.durability().wait_blocking(epoch);
    confirmed.push(next);
    let ids: Vec<u64> = contents(&log).into_iter().map(|(_, id, _)| id).collect();
    assert_eq!(ids, confirmed);
    drop(created);
    drop(log);
    drop(store);

    let store = Store::open(dir.path(), config(64 << 10)).unwrap();
    let reopened = store
        .queue_uids()
        .unwrap()
        .into_iter()
        .map(|uid| store.open_queue(uid).unwrap())
        .find(|q| q.message_count() > 0)
        .expect("the queue with messages is still there");
    let ids: Vec<u64> = contents(&reopened)
        .into_iter()
        .map(|(_, id, _)| id)
        .collect();
    assert_eq!(ids, confirmed, "every durable message survives a restart");
}

/// The same, in process, with the fault injected where a directory is opened: a rotation that
/// cannot open its directory changes nothing, and succeeds once descriptors are back.
#[test]
fn a_rotation_that_cannot_open_its_directory_changes_nothing() {
    use crate::storage::fault::{self, Point};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), config(64 << 10)).unwrap();
    let mut log = store.create_queue().unwrap();
    append_durable(&mut log, 0, 4, 100);
    let mut confirmed: Vec<u64> = (0..4).collect();
    let qdir = log.dir().to_path_buf();
    let before = segments(&qdir);

    let armed = fault::arm(Point::OpenDir, dir.path(), Errno::MFILE.raw_os_error());
    let mut next = 4;
    let refusal = loop {
        match append_one(&mut log, next, 4000) {
            Ok(epoch) => {
                store.durability().wait_blocking(epoch);
                confirmed.push(next);
                next += 1;
            }
            Err(e) => break e,
        }
        assert!(next < 1000, "no rotation was needed");
    };
    assert!(refusal.is_resource_exhausted(), "{refusal:?}");
    assert!(armed.hits() > 0);
    assert_eq!(segments(&qdir), before, "no segment file was left behind");
    drop(armed);

    let epoch = append_one(&mut log, next, 4000).unwrap();
    store.durability().wait_blocking(epoch);
    confirmed.push(next);
    assert_eq!(segments(&qdir).len(), before.len() + 1);
    let ids: Vec<u64> = contents(&log).into_iter().map(|(_, id, _)| id).collect();
    assert_eq!(ids, confirmed);
}

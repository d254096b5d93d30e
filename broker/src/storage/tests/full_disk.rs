//! A full disk, for real: the data directory on a small tmpfs mounted for the test. Needs
//! root (true on the development machines and in CI); without it the test fails and says so.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::support::*;
use crate::storage::{StorageError, Store};

/// A mount point; the temp dir is removed after the unmount (fields drop after `drop`).
struct Mount(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl Mount {
    fn tmpfs(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "this test needs to mount a small tmpfs (run as root, as CI does): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir.path().to_path_buf(), dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

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

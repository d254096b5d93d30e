//! A small tmpfs mounted for a test: a disk that really fills up. Needs root (true on the
//! development machines and in CI); without it the test fails and says so.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A mount point; the temp dir is removed after the unmount (fields drop after `drop`).
pub(crate) struct Mount(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl Mount {
    /// Mounts a tmpfs of `size` (`mount -o size=`, e.g. "4m").
    pub(crate) fn tmpfs(size: &str) -> Self {
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

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

/// Bytes free on the filesystem holding `path`.
pub(crate) fn free_bytes(path: &Path) -> u64 {
    let s = rustix::fs::statvfs(path).unwrap();
    s.f_bavail * s.f_frsize
}

/// Leaves about `leave` bytes free on the filesystem of `dir` with a ballast file in it.
pub(crate) fn fill_to(dir: &Path, leave: u64) -> PathBuf {
    let ballast = dir.join("ballast");
    let free = free_bytes(dir);
    assert!(free > leave, "only {free} bytes free");
    std::fs::write(&ballast, vec![1u8; (free - leave) as usize]).unwrap();
    ballast
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

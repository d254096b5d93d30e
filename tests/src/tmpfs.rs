//! A small tmpfs mounted for one test, so a full disk is a real `ENOSPC` from the kernel.
//! Needs root (true on the development machines and in CI); without it the test fails and
//! says so.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs; unmounted (lazily) and its mount point removed when dropped.
#[derive(Debug)]
pub struct Tmpfs {
    path: PathBuf,
    // Removed after the unmount: fields drop after `drop`.
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it, e.g. `"32m"`).
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("a temporary mount point");
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
        Tmpfs {
            path: dir.path().to_path_buf(),
            _dir: dir,
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fills the file system with the file `filler` until the kernel says `ENOSPC`; returns
    /// how many bytes it took. Remove the file to give the space back.
    pub fn fill(&self, filler: &Path) -> u64 {
        let mut f = std::fs::File::create(filler).expect("create the filler file");
        let mut written = 0u64;
        for chunk in [1 << 20, 4096, 1] {
            let buf = vec![0u8; chunk];
            loop {
                match f.write(&buf) {
                    Ok(0) => break,
                    Ok(n) => written += n as u64,
                    Err(e) if e.raw_os_error() == Some(libc_enospc()) => break,
                    Err(e) => panic!("filling {}: {e}", filler.display()),
                }
            }
        }
        written
    }
}

fn libc_enospc() -> i32 {
    rustix::io::Errno::NOSPC.raw_os_error()
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

//! Fault injection for tests (raft-engine's failpoints, in miniature): every storage and
//! topology write path asks [`check`] before it touches the disk. A test arms a fault — one
//! [`Point`], one errno, for paths under one directory, so tests running side by side in one
//! process never see each other's faults — and disarms it by dropping the [`Armed`] guard.
//! Outside `cfg(test)` [`check`] is an inlined `Ok(())`: the release binary carries nothing.

#[cfg(not(test))]
use std::{io, path::Path};

/// A place where the disk is touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Creating a file (a segment, an ack log, a manifest).
    CreateFile,
    /// Opening an existing file for writing.
    OpenFile,
    /// Creating a directory (a new queue).
    CreateDir,
    /// Reserving disk blocks (`fallocate`).
    Reserve,
    /// Writing bytes into a file (records, acks, headers, manifests).
    Write,
    /// Removing a file (a drained segment).
    Remove,
    /// Renaming a file or directory into place (or aside, for a deletion).
    Rename,
    /// Opening a directory to make its entries durable.
    OpenDir,
    /// Writing the topology file.
    TopologyWrite,
}

/// Every point, for tests that walk them all.
pub const ALL_POINTS: [Point; 9] = [
    Point::CreateFile,
    Point::OpenFile,
    Point::CreateDir,
    Point::Reserve,
    Point::Write,
    Point::Remove,
    Point::Rename,
    Point::OpenDir,
    Point::TopologyWrite,
];

/// Fails with the armed errno when a fault is armed for `point` under a prefix of `path`.
#[cfg(not(test))]
#[inline(always)]
pub(crate) fn check(_point: Point, _path: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
pub(crate) use armed::{arm, check};

#[cfg(test)]
mod armed {
    use std::io;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use super::Point;

    #[derive(Debug)]
    struct Fault {
        point: Point,
        under: PathBuf,
        errno: i32,
        hits: Arc<AtomicU64>,
    }

    static FAULTS: Mutex<Vec<Fault>> = Mutex::new(Vec::new());

    /// An armed fault; dropping it disarms it.
    #[derive(Debug)]
    pub(crate) struct Armed {
        under: PathBuf,
        point: Point,
        hits: Arc<AtomicU64>,
    }

    impl Armed {
        /// How many times the fault fired.
        pub(crate) fn hits(&self) -> u64 {
            self.hits.load(Ordering::Relaxed)
        }
    }

    impl Drop for Armed {
        fn drop(&mut self) {
            let mut faults = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
            faults.retain(|f| !(f.point == self.point && f.under == self.under));
        }
    }

    /// Makes `point` fail with `errno` for every path under `under` until the guard drops.
    pub(crate) fn arm(point: Point, under: &Path, errno: i32) -> Armed {
        let hits = Arc::new(AtomicU64::new(0));
        let fault = Fault {
            point,
            under: under.to_path_buf(),
            errno,
            hits: Arc::clone(&hits),
        };
        FAULTS.lock().unwrap_or_else(|e| e.into_inner()).push(fault);
        Armed {
            under: under.to_path_buf(),
            point,
            hits,
        }
    }

    pub(crate) fn check(point: Point, path: &Path) -> io::Result<()> {
        let faults = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
        match faults
            .iter()
            .find(|f| f.point == point && path.starts_with(&f.under))
        {
            Some(f) => {
                f.hits.fetch_add(1, Ordering::Relaxed);
                Err(io::Error::from_raw_os_error(f.errno))
            }
            None => Ok(()),
        }
    }
}

//! Small file helpers shared by the log, its manifest and its ack logs.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs::FallocateFlags;
use rustix::io::Errno;

use super::error::{Result, StorageError};
use super::fault::{self, Point};

/// Creates a new file; fails if it exists (so a name is never silently reused).
pub(crate) fn create_new(path: &Path) -> Result<File> {
    fault::check(Point::CreateFile, path).map_err(|e| StorageError::io(path, e))?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| StorageError::io(path, e))
}

/// Opens an existing file for reading and writing.
pub(crate) fn open_rw(path: &Path) -> Result<File> {
    fault::check(Point::OpenFile, path).map_err(|e| StorageError::io(path, e))?;
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| StorageError::io(path, e))
}

/// Reserves disk blocks for `[from, to)`, extending the file. A full disk is `StorageFull`.
/// Where the filesystem cannot `fallocate`, zeros are written instead (as `posix_fallocate`
/// does), which reserves the blocks just the same.
pub(crate) fn reserve(file: &File, path: &Path, from: u64, to: u64) -> Result<()> {
    if to <= from {
        return Ok(());
    }
    fault::check(Point::Reserve, path).map_err(|e| StorageError::io(path, e))?;
    match rustix::fs::fallocate(file, FallocateFlags::empty(), from, to - from) {
        Ok(()) => Ok(()),
        Err(Errno::OPNOTSUPP) => {
            let zeros = vec![0u8; 64 * 1024];
            let mut at = from;
            while at < to {
                let n = ((to - at) as usize).min(zeros.len());
                file.write_all_at(&zeros[..n], at)
                    .map_err(|e| StorageError::io(path, e))?;
                at += n as u64;
            }
            Ok(())
        }
        Err(e) => Err(StorageError::io(path, e.into())),
    }
}

/// Reserves disk blocks for `[from, to)` without changing the file size (best effort: false
/// if the disk is full or the filesystem cannot do it).
pub(crate) fn reserve_keep_size(file: &File, from: u64, to: u64) -> bool {
    to <= from || rustix::fs::fallocate(file, FallocateFlags::KEEP_SIZE, from, to - from).is_ok()
}

/// Writes all of `buf` at `offset`.
pub(crate) fn write_at(file: &File, path: &Path, buf: &[u8], offset: u64) -> Result<()> {
    fault::check(Point::Write, path).map_err(|e| StorageError::io(path, e))?;
    file.write_all_at(buf, offset)
        .map_err(|e| StorageError::io(path, e))
}

/// Reads a whole file with `pread`, so an I/O error is an error value, never a SIGBUS.
pub(crate) fn read_all(path: &Path) -> Result<Vec<u8>> {
    let file = File::open(path).map_err(|e| StorageError::io(path, e))?;
    let len = file
        .metadata()
        .map_err(|e| StorageError::io(path, e))?
        .len() as usize;
    let mut buf = vec![0u8; len];
    let mut at = 0;
    while at < len {
        let chunk = (len - at).min(1 << 20);
        let n = file
            .read_at(&mut buf[at..at + chunk], at as u64)
            .map_err(|e| StorageError::io(path, e))?;
        if n == 0 {
            buf.truncate(at);
            break;
        }
        at += n;
    }
    Ok(buf)
}

/// Removes a file if it exists.
pub(crate) fn remove_if_exists(path: &Path) -> Result<()> {
    fault::check(Point::Remove, path).map_err(|e| StorageError::io(path, e))?;
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io(path, e)),
    }
}

/// Makes a directory's entries durable.
pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    sync_open_dir(&open_dir(path)?, path)
}

/// Opens a directory to sync it later: opened before its entries change, running out of
/// descriptors (`ResourceExhausted`) leaves nothing half done.
pub(crate) fn open_dir(path: &Path) -> Result<File> {
    fault::check(Point::OpenDir, path)
        .and_then(|()| File::open(path))
        .map_err(|e| StorageError::io(path, e))
}

/// Makes the entries of a directory opened with [`open_dir`] durable.
pub(crate) fn sync_open_dir(dir: &File, path: &Path) -> Result<()> {
    dir.sync_all().map_err(|e| StorageError::io(path, e))
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

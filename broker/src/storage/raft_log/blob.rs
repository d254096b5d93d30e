//! Small files replaced atomically: a Raft log's named blobs and its state file.
//!
//! A write goes to `<file>.tmp`, is synced, renamed over `<file>`, and the directory is
//! synced: a crash leaves the old or the new contents, never a mix. A `.tmp` left by a crash
//! is removed at open. Contents are wrapped in [`format::encode_blob`], so damage is detected.

use std::io::ErrorKind;
use std::path::Path;

use crate::storage::error::{Result, StorageError};
use crate::storage::fault::{self, Point};
use crate::storage::files;
use crate::storage::format;

/// Suffix of a named blob's file.
const BLOB_SUFFIX: &str = ".blob";
/// Suffix of a file being written.
const TMP_SUFFIX: &str = ".tmp";
/// Longest blob name.
const MAX_NAME_LEN: usize = 64;

/// The file name of blob `name`, if the name is allowed.
pub(super) fn file_name(name: &str) -> Result<String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(StorageError::InvalidBlobName(name.to_owned()));
    }
    Ok(format!("{name}{BLOB_SUFFIX}"))
}

/// Replaces `dir/file` with `payload` atomically and durably.
pub(super) fn write_atomic(dir: &Path, file: &str, payload: &[u8]) -> Result<()> {
    let path = dir.join(file);
    let tmp = dir.join(format!("{file}{TMP_SUFFIX}"));
    // Opened first: out of descriptors, nothing has been written yet.
    let dir_fd = files::open_dir(dir)?;
    files::remove_if_exists(&tmp)?;
    let bytes = format::encode_blob(payload);
    let written = (|| -> Result<()> {
        let f = files::create_new(&tmp)?;
        // Blocks reserved first, so a full disk is `StorageFull` here and never a short file.
        files::reserve(&f, &tmp, 0, bytes.len() as u64)?;
        files::write_at(&f, &tmp, &bytes, 0)?;
        f.sync_data().map_err(|e| StorageError::io(&tmp, e))?;
        fault::check(Point::Rename, &path)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| StorageError::io(&path, e))
    })();
    if let Err(e) = written {
        let _ = files::remove_if_exists(&tmp);
        return Err(e);
    }
    files::sync_open_dir(&dir_fd, dir)
}

/// The payload of `dir/file`; `None` if the file does not exist, an error if it is damaged.
pub(super) fn read(dir: &Path, file: &str) -> Result<Option<Vec<u8>>> {
    let path = dir.join(file);
    let data = match files::read_all(&path) {
        Ok(data) => data,
        Err(StorageError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    match format::decode_blob(&data) {
        Ok(payload) => Ok(Some(payload.to_vec())),
        Err(reason) => Err(StorageError::CorruptFile { path, reason }),
    }
}

/// Removes temporary files a crash left behind (their rename never happened, so the old
/// contents are the current ones).
pub(super) fn remove_temps(dir: &Path) -> Result<bool> {
    let mut removed = false;
    for entry in std::fs::read_dir(dir).map_err(|e| StorageError::io(dir, e))? {
        let entry = entry.map_err(|e| StorageError::io(dir, e))?;
        if entry.file_name().to_string_lossy().ends_with(TMP_SUFFIX) {
            files::remove_if_exists(&entry.path())?;
            removed = true;
        }
    }
    Ok(removed)
}

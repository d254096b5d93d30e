//! The dedup journal of a queue, `dedup.journal` in its log's directory: the ids it accepted
//! (once their messages are durable), so the window survives a restart after their messages
//! were acked and deleted.
//!
//! Layout: magic `SLUICEDD`, version `u32`, then records `id_len u16, id, at_ms u64, crc32
//! u32` (the CRC over the three fields before it). Appends are synced a little later (at
//! most one `fdatasync` per maintenance round); a record cut by a crash ends the journal at
//! open, which then continues from the last whole record. When it holds many more records
//! than the window, it is rewritten with the window alone (temporary file, sync, rename,
//! directory sync).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::window::{Accepted, Window};

const MAGIC: &[u8; 8] = b"SLUICEDD";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 12;
/// Name of the journal in the queue's directory.
pub const FILE_NAME: &str = "dedup.journal";
/// The journal is rewritten once it holds this many records more than twice the window.
const REWRITE_SLACK: u64 = 4096;

/// An open journal, appended to at its end.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    /// Records in the file.
    records: u64,
    /// Written since the last sync.
    dirty: bool,
    buf: Vec<u8>,
}

/// What [`Journal::open`] read.
#[derive(Debug)]
pub struct Opened {
    /// The journal, ready for appends.
    pub journal: Journal,
    /// Its records, oldest first.
    pub accepted: Vec<Accepted>,
}

impl Journal {
    /// Opens (or creates) the journal in `dir`. A damaged header or record ends what is read
    /// there: it is reported, and the file is cut to what was read, so appends continue
    /// after whole records.
    pub fn open(dir: &Path) -> io::Result<Opened> {
        let path = dir.join(FILE_NAME);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let (accepted, valid_len) = decode(&bytes);
        if valid_len < bytes.len() && !bytes.is_empty() {
            tracing::warn!(path = %path.display(), kept = accepted.len(),
                cut_bytes = bytes.len() - valid_len,
                "dedup journal: cut after its last whole record");
        }
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)?;
        if valid_len < HEADER_LEN {
            file.set_len(0)?;
            file.write_all(&header())?;
        } else {
            file.set_len(valid_len as u64)?;
        }
        use std::io::Seek;
        file.seek(io::SeekFrom::End(0))?;
        let journal = Journal {
            path,
            file,
            records: accepted.len() as u64,
            dirty: true,
            buf: Vec::new(),
        };
        Ok(Opened { journal, accepted })
    }

    /// Appends records (written now, synced by [`sync`](Self::sync)).
    pub fn append<'a>(
        &mut self,
        accepted: impl IntoIterator<Item = &'a Accepted>,
    ) -> io::Result<()> {
        self.buf.clear();
        let mut n = 0;
        for a in accepted {
            encode_record(&mut self.buf, a);
            n += 1;
        }
        if n == 0 {
            return Ok(());
        }
        self.file.write_all(&self.buf)?;
        self.records += n;
        self.dirty = true;
        Ok(())
    }

    /// Makes what was appended durable.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.dirty {
            self.file.sync_data()?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Whether the journal holds so many more records than `window` that it is worth
    /// rewriting.
    pub fn wants_rewrite(&self, window: &Window) -> bool {
        self.records > 2 * window.len() as u64 + REWRITE_SLACK
    }

    /// Replaces the journal with the ids of `window`, atomically and durably.
    pub fn rewrite(&mut self, window: &Window) -> io::Result<()> {
        let tmp = self.path.with_extension("journal.tmp");
        let mut bytes = header().to_vec();
        for a in window.iter() {
            encode_record(&mut bytes, a);
        }
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_data()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        // The renamed file is the journal now; `f` still points at it.
        self.file = f;
        self.records = window.len() as u64;
        self.dirty = false;
        Ok(())
    }
}

fn header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..].copy_from_slice(&VERSION.to_le_bytes());
    h
}

fn encode_record(buf: &mut Vec<u8>, a: &Accepted) {
    let start = buf.len();
    // Message ids are wire strings: at most u16::MAX bytes.
    let id = &a.id.as_bytes()[..a.id.len().min(usize::from(u16::MAX))];
    buf.extend_from_slice(&(id.len() as u16).to_le_bytes());
    buf.extend_from_slice(id);
    buf.extend_from_slice(&a.at_ms.to_le_bytes());
    let crc = crc32fast::hash(&buf[start..]);
    buf.extend_from_slice(&crc.to_le_bytes());
}

/// The whole records of a journal file, and the length they span (0 for a bad header).
fn decode(bytes: &[u8]) -> (Vec<Accepted>, usize) {
    if bytes.len() < HEADER_LEN || bytes[..HEADER_LEN] != header() {
        return (Vec::new(), 0);
    }
    let mut out = Vec::new();
    let mut pos = HEADER_LEN;
    while let Some((a, len)) = decode_record(&bytes[pos..]) {
        out.push(a);
        pos += len;
    }
    (out, pos)
}

fn decode_record(b: &[u8]) -> Option<(Accepted, usize)> {
    let id_len = usize::from(u16::from_le_bytes(b.get(..2)?.try_into().ok()?));
    let end = 2 + id_len + 8;
    let crc = u32::from_le_bytes(b.get(end..end + 4)?.try_into().ok()?);
    if crc32fast::hash(&b[..end]) != crc {
        return None;
    }
    let id = std::str::from_utf8(&b[2..2 + id_len]).ok()?;
    let at_ms = u64::from_le_bytes(b[2 + id_len..end].try_into().ok()?);
    Some((
        Accepted {
            id: id.into(),
            at_ms,
        },
        end + 4,
    ))
}

#[cfg(test)]
mod tests {
    use super::super::window::WindowLimits;
    use super::*;

    fn accepted(id: &str, at_ms: u64) -> Accepted {
        Accepted {
            id: id.into(),
            at_ms,
        }
    }

    #[test]
    fn appended_records_are_read_back_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap().journal;
        j.append(&[accepted("a", 1), accepted("é", 2)]).unwrap();
        j.sync().unwrap();
        drop(j);
        let opened = Journal::open(dir.path()).unwrap();
        assert_eq!(opened.accepted, [accepted("a", 1), accepted("é", 2)]);
        let mut j = opened.journal;
        j.append(&[accepted("c", 3)]).unwrap();
        drop(j);
        assert_eq!(Journal::open(dir.path()).unwrap().accepted.len(), 3);
    }

    #[test]
    fn a_torn_last_record_is_cut_and_appends_continue_after_the_whole_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap().journal;
        j.append(&[accepted("a", 1), accepted("b", 2)]).unwrap();
        drop(j);
        let path = dir.path().join(FILE_NAME);
        let len = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 3).unwrap();
        let opened = Journal::open(dir.path()).unwrap();
        assert_eq!(opened.accepted, [accepted("a", 1)]);
        let mut j = opened.journal;
        j.append(&[accepted("c", 3)]).unwrap();
        drop(j);
        assert_eq!(
            Journal::open(dir.path()).unwrap().accepted,
            [accepted("a", 1), accepted("c", 3)]
        );
    }

    #[test]
    fn a_flipped_byte_ends_the_records_read_there() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap().journal;
        j.append(&[accepted("a", 1), accepted("b", 2)]).unwrap();
        drop(j);
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 6;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(
            Journal::open(dir.path()).unwrap().accepted,
            [accepted("a", 1)]
        );
    }

    #[test]
    fn a_rewrite_keeps_only_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap().journal;
        let limits = WindowLimits::new(None, Some(2)).unwrap();
        let mut w = Window::new(limits);
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            w.insert(id, i as u64);
            j.append(&[accepted(id, i as u64)]).unwrap();
        }
        j.rewrite(&w).unwrap();
        j.append(&[accepted("d", 9)]).unwrap();
        drop(j);
        assert_eq!(
            Journal::open(dir.path()).unwrap().accepted,
            [accepted("b", 1), accepted("c", 2), accepted("d", 9)]
        );
        assert!(!dir.path().join("dedup.journal.tmp").exists());
    }
}

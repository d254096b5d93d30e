//! A run: a file of timer entries sorted by due time, written once, read front to back.
//!
//! ```text
//! header (32 bytes): magic "SLCTIMER" | version u16 | pad u16 | crc u32 of bytes 0..12 |
//!                    entries u64 | pad u64
//! blocks (4,096 bytes each): crc u32 | count u32 |
//!                            count × (due_ms u64, seq u64, delivery_count u32) | zeros
//! ```
//! All little endian. A block's CRC covers its count and entries, so a damaged block is found
//! when it is read; nothing after it in that run is trusted.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::Entry;

const MAGIC: &[u8; 8] = b"SLCTIMER";
const VERSION: u16 = 1;
pub(super) const HEADER_LEN: u64 = 32;
pub(super) const BLOCK_LEN: usize = 4096;
const BLOCK_HEADER_LEN: usize = 8;
const ENTRY_LEN: usize = 20;
/// Entries in a full block.
pub(super) const BLOCK_ENTRIES: usize = (BLOCK_LEN - BLOCK_HEADER_LEN) / ENTRY_LEN;

/// A block whose CRC or count does not check out.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: block {block} is damaged ({reason})")]
    Damaged {
        path: PathBuf,
        block: u64,
        reason: &'static str,
    },
}

impl RunError {
    pub(super) fn io(path: &Path, source: io::Error) -> Self {
        RunError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Writes a run from entries given in ascending order, one block buffered.
pub(super) struct RunWriter {
    path: PathBuf,
    file: io::BufWriter<File>,
    block: Vec<Entry>,
    entries: u64,
}

impl RunWriter {
    pub(super) fn create(path: PathBuf) -> Result<Self, RunError> {
        let file = File::create(&path).map_err(|e| RunError::io(&path, e))?;
        let mut w = RunWriter {
            file: io::BufWriter::with_capacity(BLOCK_LEN * 4, file),
            path,
            block: Vec::with_capacity(BLOCK_ENTRIES),
            entries: 0,
        };
        // The header is rewritten with the entry count at the end.
        w.write(&[0; HEADER_LEN as usize])?;
        Ok(w)
    }

    pub(super) fn push(&mut self, e: Entry) -> Result<(), RunError> {
        debug_assert!(self.block.last().is_none_or(|l| *l <= e));
        self.block.push(e);
        self.entries += 1;
        if self.block.len() == BLOCK_ENTRIES {
            self.write_block()?;
        }
        Ok(())
    }

    /// Writes the rest and the header; returns the finished run, ready to read.
    pub(super) fn finish(mut self) -> Result<Run, RunError> {
        if !self.block.is_empty() {
            self.write_block()?;
        }
        let file = self
            .file
            .into_inner()
            .map_err(|e| RunError::io(&self.path, e.into_error()))?;
        let mut header = [0u8; HEADER_LEN as usize];
        header[0..8].copy_from_slice(MAGIC);
        header[8..10].copy_from_slice(&VERSION.to_le_bytes());
        let crc = crc32fast::hash(&header[0..12]);
        header[12..16].copy_from_slice(&crc.to_le_bytes());
        header[16..24].copy_from_slice(&self.entries.to_le_bytes());
        file.write_all_at(&header, 0)
            .map_err(|e| RunError::io(&self.path, e))?;
        Ok(Run {
            path: self.path,
            blocks: self.entries.div_ceil(BLOCK_ENTRIES as u64),
            next_block: 0,
            remaining: self.entries,
            head: VecDeque::new(),
        })
    }

    fn write_block(&mut self) -> Result<(), RunError> {
        let mut buf = [0u8; BLOCK_LEN];
        encode_block(&self.block, &mut buf);
        self.block.clear();
        self.write(&buf)
    }

    fn write(&mut self, b: &[u8]) -> Result<(), RunError> {
        self.file
            .write_all(b)
            .map_err(|e| RunError::io(&self.path, e))
    }
}

fn encode_block(entries: &[Entry], buf: &mut [u8; BLOCK_LEN]) {
    buf[4..8].copy_from_slice(&(entries.len() as u32).to_le_bytes());
    for (i, e) in entries.iter().enumerate() {
        let at = BLOCK_HEADER_LEN + i * ENTRY_LEN;
        buf[at..at + 8].copy_from_slice(&e.due_ms.to_le_bytes());
        buf[at + 8..at + 16].copy_from_slice(&e.seq.to_le_bytes());
        buf[at + 16..at + 20].copy_from_slice(&e.delivery_count.to_le_bytes());
    }
    let end = BLOCK_HEADER_LEN + entries.len() * ENTRY_LEN;
    let crc = crc32fast::hash(&buf[4..end]);
    buf[0..4].copy_from_slice(&crc.to_le_bytes());
}

fn decode_block(buf: &[u8]) -> Result<Vec<Entry>, &'static str> {
    if buf.len() < BLOCK_HEADER_LEN {
        return Err("short block");
    }
    let count = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes")) as usize;
    let end = BLOCK_HEADER_LEN + count * ENTRY_LEN;
    if count == 0 || count > BLOCK_ENTRIES || end > buf.len() {
        return Err("bad entry count");
    }
    let crc = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
    if crc32fast::hash(&buf[4..end]) != crc {
        return Err("checksum mismatch");
    }
    let entries: Vec<Entry> = buf[BLOCK_HEADER_LEN..end]
        .chunks_exact(ENTRY_LEN)
        .map(|c| Entry {
            due_ms: u64::from_le_bytes(c[0..8].try_into().expect("8 bytes")),
            seq: u64::from_le_bytes(c[8..16].try_into().expect("8 bytes")),
            delivery_count: u32::from_le_bytes(c[16..20].try_into().expect("4 bytes")),
        })
        .collect();
    if entries.windows(2).any(|w| w[0] > w[1]) {
        return Err("entries out of order");
    }
    Ok(entries)
}

/// A run being consumed: the entries of the block at its front in memory, the rest on disk.
#[derive(Debug, Clone)]
pub(super) struct Run {
    pub(super) path: PathBuf,
    blocks: u64,
    next_block: u64,
    /// Entries not taken yet, the loaded head included.
    remaining: u64,
    /// The loaded part of the current block.
    head: VecDeque<Entry>,
}

impl Run {
    /// Entries in memory.
    #[cfg(test)]
    pub(super) fn loaded(&self) -> usize {
        self.head.len()
    }

    /// Entries not taken yet.
    pub(super) fn remaining(&self) -> u64 {
        self.remaining
    }

    /// The soonest entry not taken yet, loading its block if needed.
    pub(super) fn front(&mut self) -> Result<Option<Entry>, RunError> {
        if self.head.is_empty() && self.next_block < self.blocks {
            let block = self.next_block;
            self.next_block += 1;
            match self.read_block(block) {
                Ok(entries) => self.head = entries.into(),
                // Nothing after a damaged block is trusted: the caller drops the run.
                Err(e) => return Err(e),
            }
        }
        Ok(self.head.front().copied())
    }

    /// Takes the entry `front` returned.
    pub(super) fn pop(&mut self) -> Option<Entry> {
        let e = self.head.pop_front()?;
        self.remaining -= 1;
        Some(e)
    }

    /// Entries not taken yet that come after `after`, in order, at most `limit`, read
    /// without consuming them (for browsing).
    pub(super) fn peek_after(
        &self,
        after: Option<Entry>,
        limit: usize,
    ) -> Result<Vec<Entry>, RunError> {
        let keep = |e: &Entry| after.is_none_or(|a| *e > a);
        let mut out: Vec<Entry> = self.head.iter().copied().filter(keep).take(limit).collect();
        if out.len() == limit {
            return Ok(out);
        }
        // The first block that may hold an entry after `after`: the last block whose first
        // entry is at or before it (blocks are in order), found by bisection.
        let mut block = self.next_block;
        if let Some(a) = after {
            let (mut lo, mut hi) = (self.next_block, self.blocks);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                let first = self.read_block(mid)?.first().copied();
                if first.is_some_and(|f| f <= a) {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            block = lo.saturating_sub(1).max(self.next_block);
        }
        while block < self.blocks && out.len() < limit {
            let entries = self.read_block(block)?;
            out.extend(entries.into_iter().filter(keep).take(limit - out.len()));
            block += 1;
        }
        Ok(out)
    }

    fn read_block(&self, block: u64) -> Result<Vec<Entry>, RunError> {
        let file = File::open(&self.path).map_err(|e| RunError::io(&self.path, e))?;
        let mut buf = vec![0u8; BLOCK_LEN];
        let at = HEADER_LEN + block * BLOCK_LEN as u64;
        file.read_exact_at(&mut buf, at)
            .map_err(|e| RunError::io(&self.path, e))?;
        decode_block(&buf).map_err(|reason| RunError::Damaged {
            path: self.path.clone(),
            block,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(due_ms: u64, seq: u64) -> Entry {
        Entry {
            due_ms,
            seq,
            delivery_count: seq as u32 % 3,
        }
    }

    #[test]
    fn a_block_round_trips_and_any_flipped_bit_is_found() {
        let entries: Vec<Entry> = (0..10).map(|i| e(100 + i, i)).collect();
        let mut buf = [0u8; BLOCK_LEN];
        encode_block(&entries, &mut buf);
        assert_eq!(decode_block(&buf).unwrap(), entries);
        for byte in 0..BLOCK_HEADER_LEN + 10 * ENTRY_LEN {
            let mut bad = buf;
            bad[byte] ^= 0x10;
            assert!(decode_block(&bad).is_err(), "flip in byte {byte} not found");
        }
        assert!(
            decode_block(&[0u8; BLOCK_LEN]).is_err(),
            "a zeroed block is no block"
        );
    }
}

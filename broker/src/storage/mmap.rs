//! The memory map of one segment file: the only module with `unsafe`.
//!
//! A segment is mapped once at its full size. Three rules make that sound:
//! - bytes below `committed` are immutable: nothing writes them again, and readers may only
//!   look at bytes below `committed` (loaded with `Acquire`);
//! - there is at most one [`MapWriter`] per map, and it writes only at or beyond `committed`,
//!   then publishes the new end with `Release`;
//! - the writer only touches bytes below `allocated`, the length that `fallocate` reserved on
//!   disk, so a full disk is an `ENOSPC` from `fallocate` and never a SIGBUS from a page fault.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use memmap2::{MmapOptions, MmapRaw};

/// A shared, read-mostly mapping of a segment file.
#[derive(Debug)]
pub(crate) struct SegmentMap {
    raw: MmapRaw,
    len: usize,
    committed: AtomicUsize,
    allocated: AtomicUsize,
    writer_taken: AtomicBool,
}

impl SegmentMap {
    /// Maps `len` bytes of `file`. `committed` bytes are already valid and `allocated` bytes
    /// have disk blocks behind them.
    pub(crate) fn map(
        file: &File,
        len: usize,
        committed: usize,
        allocated: usize,
    ) -> io::Result<Self> {
        assert!(
            committed <= allocated && allocated <= len,
            "inconsistent segment map bounds"
        );
        let raw = MmapOptions::new().len(len).map_raw(file)?;
        Ok(Self {
            raw,
            len,
            committed: AtomicUsize::new(committed),
            allocated: AtomicUsize::new(allocated),
            writer_taken: AtomicBool::new(false),
        })
    }

    /// Length of the valid, immutable prefix.
    pub(crate) fn committed(&self) -> usize {
        self.committed.load(Ordering::Acquire)
    }

    /// The committed bytes `[offset, offset + len)`, or `None` if any of them is not committed.
    pub(crate) fn read(&self, offset: usize, len: usize) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        if end > self.committed() {
            return None;
        }
        // SAFETY: `[offset, end)` lies below `committed` (Acquire), so the writer finished
        // these bytes before publishing them and never writes them again; they lie inside the
        // mapping (committed <= allocated <= len) and inside the file (allocated was
        // fallocated), so reading cannot fault. The slice borrows `self`, which keeps the
        // mapping alive.
        Some(unsafe { std::slice::from_raw_parts(self.raw.as_ptr().add(offset), len) })
    }

    /// The committed bytes `[offset, offset + len)` as `Bytes` that share the mapping: no copy.
    pub(crate) fn bytes(self: &Arc<Self>, offset: usize, len: usize) -> Option<Bytes> {
        self.read(offset, len)?;
        Some(Bytes::from_owner(MappedSlice {
            map: Arc::clone(self),
            offset,
            len,
        }))
    }

    /// Drops this process's resident pages of the mapping, so a backlog of sealed segments
    /// does not count against the broker's memory; the bytes stay in the page cache and on
    /// disk and fault back in when read.
    pub(crate) fn release_resident(&self) {
        // SAFETY: the mapping is shared (`map_raw`) over a regular file, so MADV_DONTNEED only
        // unmaps pages from this process: dirty pages stay in the page cache (and are still
        // written by the next sync), and a later access reads the same bytes back from the
        // page cache or the file. Virtual addresses do not change, so slices and `Bytes`
        // handed out earlier stay valid. Nothing here is a private (copy-on-write) mapping,
        // which is the case that makes this advice unsafe.
        let result = unsafe {
            self.raw
                .unchecked_advise(memmap2::UncheckedAdvice::DontNeed)
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "madvise(DONTNEED) on a sealed segment failed");
        }
    }

    /// Takes the one writer of this map (`file` is the mapped file); `None` if it was taken
    /// already.
    pub(crate) fn writer(self: &Arc<Self>, file: Arc<File>) -> Option<MapWriter> {
        if self.writer_taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(MapWriter {
            map: Arc::clone(self),
            file,
        })
    }
}

/// Writes `parts` back to back at `at`, with one `pwritev` unless the kernel writes less.
fn pwrite_all(file: &File, parts: &[&[u8]], at: u64) -> io::Result<()> {
    let slices: Vec<io::IoSlice<'_>> = parts.iter().map(|p| io::IoSlice::new(p)).collect();
    let mut done = rustix::io::pwritev(file, &slices, at)?;
    // Short writes are rare on regular files; finish part by part.
    let mut offset = at;
    for p in parts {
        let len = p.len();
        if done >= len {
            done -= len;
            offset += len as u64;
            continue;
        }
        std::os::unix::fs::FileExt::write_all_at(file, &p[done..], offset + done as u64)?;
        offset += len as u64;
        done = 0;
    }
    Ok(())
}

/// A range of a mapping, owned; backs zero-copy `Bytes`.
struct MappedSlice {
    map: Arc<SegmentMap>,
    offset: usize,
    len: usize,
}

impl AsRef<[u8]> for MappedSlice {
    fn as_ref(&self) -> &[u8] {
        self.map
            .read(self.offset, self.len)
            .expect("a committed range stays committed")
    }
}

/// Records at least this long are written with `pwritev` rather than copied into the mapping.
///
/// Writing through a shared mapping makes every written page writable-mapped: the first touch
/// faults, and writeback must write-protect each page again and shoot down TLBs on every CPU,
/// which dominates the cost of large records. Small records share pages, so for them one copy
/// beats one system call each.
const PWRITE_MIN: usize = 2048;

/// The unique right to append to a [`SegmentMap`].
#[derive(Debug)]
pub(crate) struct MapWriter {
    map: Arc<SegmentMap>,
    file: Arc<File>,
}

impl MapWriter {
    /// The mapping's full length.
    pub(crate) fn capacity(&self) -> usize {
        self.map.len
    }

    /// Bytes reserved on disk.
    pub(crate) fn allocated(&self) -> usize {
        self.map.allocated.load(Ordering::Relaxed)
    }

    /// Records that the file now has disk blocks up to `allocated` (after `fallocate` succeeded).
    pub(crate) fn set_allocated(&self, allocated: usize) {
        assert!(allocated <= self.map.len && allocated >= self.allocated());
        self.map.allocated.store(allocated, Ordering::Relaxed);
    }

    /// Copies `parts` back to back at the committed end, then publishes `new_end` (which may
    /// exceed the bytes copied, to cover zero padding). Returns the offset written at.
    ///
    /// Panics if `new_end` is beyond the allocated space: that would risk a SIGBUS.
    pub(crate) fn append(&mut self, parts: &[&[u8]], new_end: usize) -> io::Result<usize> {
        let start = self.map.committed.load(Ordering::Relaxed);
        let total: usize = parts.iter().map(|p| p.len()).sum();
        assert!(start + total <= new_end, "record longer than its slot");
        assert!(
            new_end <= self.allocated(),
            "write beyond the space fallocate reserved"
        );
        if total >= PWRITE_MIN {
            // The file's page cache is what the mapping shows, so readers see these bytes once
            // `committed` covers them, as with a copy. The range is inside the file (allocated
            // by fallocate), so this neither extends the file nor needs new blocks.
            pwrite_all(&self.file, parts, start as u64)?;
            self.map.committed.store(new_end, Ordering::Release);
            return Ok(start);
        }
        let mut at = start;
        for p in parts {
            // SAFETY: `[at, at + p.len())` lies inside `[start, new_end)`, which is at or above
            // `committed` (no reader looks there, and `self` is the only writer: `writer()`
            // hands out one `MapWriter` per map) and below `allocated <= len` (inside the
            // mapping and backed by reserved disk blocks). `p` is a separate allocation.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    p.as_ptr(),
                    self.map.raw.as_mut_ptr().add(at),
                    p.len(),
                )
            };
            at += p.len();
        }
        // Padding bytes between `at` and `new_end` are already zero: appends only go to fresh,
        // fallocated space of a segment created by this process.
        self.map.committed.store(new_end, Ordering::Release);
        Ok(start)
    }

    /// The map this writer appends to.
    pub(crate) fn map(&self) -> &Arc<SegmentMap> {
        &self.map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_become_visible_only_when_committed_and_bytes_share_the_map() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("m"))
            .unwrap();
        rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, 4096).unwrap();
        let map = Arc::new(SegmentMap::map(&f, 8192, 0, 4096).unwrap());
        let f = Arc::new(f);
        let mut w = map.writer(Arc::clone(&f)).unwrap();
        assert!(
            map.writer(Arc::clone(&f)).is_none(),
            "a second writer must be refused"
        );
        assert!(map.read(0, 1).is_none());
        let at = w.append(&[b"abc", b"de"], 8).unwrap();
        assert_eq!(at, 0);
        assert_eq!(map.read(0, 5).unwrap(), b"abcde");
        // A large record goes through pwritev and shows through the mapping all the same.
        let big = vec![7u8; PWRITE_MIN + 100];
        let at = w
            .append(&[b"hdr", &big, b"tail"], 8 + 3 + big.len() + 4)
            .unwrap();
        assert_eq!(at, 8);
        assert_eq!(map.read(8, 3).unwrap(), b"hdr");
        assert_eq!(map.read(11, big.len()).unwrap(), &big[..]);
        assert_eq!(map.read(11 + big.len(), 4).unwrap(), b"tail");
        let b = map.bytes(1, 3).unwrap();
        drop(w);
        assert_eq!(&b[..], b"bcd");
        assert!(map.read(4, 8 + 3 + big.len() + 4 + 1).is_none());
    }
}

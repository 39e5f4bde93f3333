//! Segment files: names, preparation (pre-written, so appends never allocate blocks), mapping,
//! and removal.
//!
//! A segment's life:
//! 1. *Prepared*: `prepared-N.tmp`, exactly `segment_size_bytes` long with every block written
//!    (zeros for a new file, old records for a recycled one) and fdatasynced. Written as
//!    `prepared-N.partial` and renamed only once complete, so a crash leaves no half file with
//!    a usable name.
//! 2. *Active*: renamed to `<seq>.wal`, header written, mapped; records are appended with
//!    positional writes (or, with `AppendVia::Mmap`, through the mapping) and read through the
//!    mapping. The rename is made durable by the next sync's directory fsync.
//! 3. *Sealed*: a SEAL record closes it; it stays mapped for reads.
//! 4. *Retired*: when no group needs its entries, it is deleted (or renamed back to a prepared
//!    file to be recycled) and the directory fsynced.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{Mmap, MmapMut, MmapOptions};

use crate::config::AppendVia;
use crate::error::WalError;

/// The file name of segment `seq`.
pub(crate) fn segment_name(seq: u64) -> String {
    format!("{seq:020}.wal")
}

/// The sequence number in a segment file name.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())?
}

/// Whether `name` is a complete prepared segment file.
pub(crate) fn is_prepared_name(name: &str) -> bool {
    name.starts_with("prepared-") && name.ends_with(".tmp")
}

/// Whether `name` is a leftover from a preparation a crash interrupted.
pub(crate) fn is_partial_name(name: &str) -> bool {
    name.starts_with("prepared-") && name.ends_with(".partial")
}

/// Fsyncs a directory, making renames, creations and deletions in it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), WalError> {
    let d = File::open(dir).map_err(|e| WalError::io(dir, e))?;
    d.sync_all().map_err(|e| WalError::io(dir, e))
}

/// How a new segment file gets its blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fill {
    /// Zeros written to every block: appends into it sync as cheaply as into any written file.
    /// Takes as long as writing the file; for the preparer thread, off the writer's path.
    Zeros,
    /// Blocks allocated (`fallocate`) but not written: takes milliseconds, and a full disk still
    /// fails here rather than later, but each sync that first writes into an unwritten extent
    /// also updates the file's extent tree. For a writer that found no prepared file ready.
    /// Falls back to zeros where the filesystem cannot allocate.
    Allocate,
}

/// Creates a new prepared segment file of `size` bytes at `dir/prepared-<n>.tmp`, its blocks
/// filled as `fill` says.
pub(crate) fn prepare_new(dir: &Path, n: u64, size: u64, fill: Fill) -> Result<PathBuf, WalError> {
    let partial = dir.join(format!("prepared-{n:06}.partial"));
    let done = dir.join(format!("prepared-{n:06}.tmp"));
    let result = (|| {
        fail::fail_point!("wal::prepare", |_| Err(WalError::DiskFull {
            action: "preparing a segment (injected)",
            path: partial.clone(),
        }));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&partial)
            .map_err(|e| WalError::io(&partial, e))?;
        // Never sparse: a sparse file could fault with SIGBUS on a full disk when written
        // through a mapping. Zeros by default: a write into an unwritten (merely allocated)
        // extent is a metadata change that costs each fdatasync.
        if fill == Fill::Zeros || !allocate(&f, size).map_err(|e| WalError::io(&partial, e))? {
            let zeros = vec![0u8; 1 << 20];
            let mut left = size;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                f.write_all(&zeros[..n]).map_err(|e| WalError::io(&partial, e))?;
                left -= n as u64;
            }
        }
        f.sync_data().map_err(|e| WalError::io(&partial, e))?;
        std::fs::rename(&partial, &done).map_err(|e| WalError::io(&done, e))?;
        Ok(done.clone())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result.map_err(|e| match e {
        WalError::DiskFull { path, .. } => {
            WalError::DiskFull { action: "preparing a segment", path }
        }
        other => other,
    })
}

/// Allocates `size` bytes of blocks for `file` without writing them; false if the filesystem
/// (or the OS) cannot.
fn allocate(file: &File, size: u64) -> std::io::Result<bool> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let len = libc::off_t::try_from(size).map_err(std::io::Error::other)?;
        // SAFETY: fallocate only reads its integer arguments; the descriptor is open for
        // writing and owned by `file`, which outlives the call.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
        if rc == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(false),
            _ => Err(e),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, size);
        Ok(false)
    }
}

/// Turns a retired segment file into a prepared one (its blocks are written already).
pub(crate) fn recycle(dir: &Path, old: &Path, n: u64) -> Result<PathBuf, WalError> {
    let done = dir.join(format!("prepared-{n:06}.tmp"));
    std::fs::rename(old, &done).map_err(|e| WalError::io(&done, e))?;
    Ok(done)
}

/// How a segment file is mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mapping {
    /// Read-only, through a read-only descriptor, for a WAL that appends with write calls.
    /// Writeback of a dirty page looks for it in every shared writable mapping of the file
    /// (to write-protect it), at each fdatasync; a mapping made from a read-only descriptor is
    /// not one of them.
    ReadOnly,
    /// Writable, for appends through the mapping; `populate` faults every page in at once.
    Writable {
        /// Map every page now rather than at first touch.
        populate: bool,
    },
}

impl Mapping {
    /// The mapping a WAL appending `via` needs.
    pub(crate) fn for_appends(via: AppendVia, populate: bool) -> Mapping {
        match via {
            AppendVia::Write => Mapping::ReadOnly,
            AppendVia::Mmap => Mapping::Writable { populate },
        }
    }
}

enum Map {
    ReadOnly(Mmap),
    Writable(MmapMut),
}

/// An open segment file and its mapping.
pub(crate) struct SegmentFile {
    pub(crate) seq: u64,
    pub(crate) path: PathBuf,
    /// A read-write handle for positional writes and fdatasync, independent of the mapping.
    pub(crate) file: Arc<File>,
    map: Map,
}

impl std::fmt::Debug for SegmentFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentFile").field("seq", &self.seq).field("path", &self.path).finish()
    }
}

impl SegmentFile {
    /// Opens an existing segment file for writing and maps it as `mapping` says.
    pub(crate) fn open(path: &Path, seq: u64, mapping: Mapping) -> Result<SegmentFile, WalError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| WalError::io(path, e))?;
        let len = file.metadata().map_err(|e| WalError::io(path, e))?.len();
        if len == 0 || len >= u32::MAX as u64 {
            return Err(WalError::Corrupt {
                path: path.to_path_buf(),
                offset: 0,
                detail: format!("segment file is {len} bytes long"),
            });
        }
        let mut opts = MmapOptions::new();
        // SAFETY (both mappings): the mapping is of a regular file in a directory this process
        // holds the WAL lock on; the WAL never truncates or resizes a mapped segment, and other
        // processes are excluded by the lock, so the mapped bytes stay backed for the mapping's
        // life. Bytes may still change underneath (another program ignoring the lock); the
        // decoders treat every byte as untrusted input and never rely on it for memory safety.
        let map = match mapping {
            Mapping::ReadOnly => {
                let reader = File::open(path).map_err(|e| WalError::io(path, e))?;
                Map::ReadOnly(unsafe { opts.map(&reader) }.map_err(|e| WalError::io(path, e))?)
            }
            Mapping::Writable { populate } => {
                if populate {
                    opts.populate();
                }
                Map::Writable(unsafe { opts.map_mut(&file) }.map_err(|e| WalError::io(path, e))?)
            }
        };
        Ok(SegmentFile { seq, path: path.to_path_buf(), file: Arc::new(file), map })
    }

    pub(crate) fn len(&self) -> usize {
        self.bytes().len()
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        match &self.map {
            Map::ReadOnly(m) => m,
            Map::Writable(m) => m,
        }
    }

    /// The mapping, if it is writable.
    pub(crate) fn bytes_mut(&mut self) -> Option<&mut [u8]> {
        match &mut self.map {
            Map::ReadOnly(_) => None,
            Map::Writable(m) => Some(m),
        }
    }

    /// Writes `bytes` at `offset` with positional writes (seen through either mapping: the
    /// page cache is shared).
    pub(crate) fn write_at(&self, offset: usize, bytes: &[u8]) -> Result<(), WalError> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(bytes, offset as u64).map_err(|e| WalError::io(&self.path, e))
    }

    /// Overwrites `range` with zeros.
    pub(crate) fn zero(&self, range: std::ops::Range<usize>) -> Result<(), WalError> {
        let zeros = vec![0u8; range.len().min(1 << 20)];
        let mut at = range.start;
        while at < range.end {
            let n = (range.end - at).min(zeros.len());
            self.write_at(at, &zeros[..n])?;
            at += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("00000000000000000042.wal"), Some(42));
        assert_eq!(parse_segment_name("42.wal"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.wal"), None);
        assert!(is_prepared_name("prepared-000001.tmp"));
        assert!(is_partial_name("prepared-000001.partial"));
    }

    /// A read-only mapping cannot be written through, and sees what positional writes put in
    /// the file (the WAL reads records back through it).
    #[test]
    fn a_read_only_mapping_sees_positional_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = prepare_new(dir.path(), 1, 64 << 10, Fill::Zeros).unwrap();
        let mut ro = SegmentFile::open(&path, 1, Mapping::ReadOnly).unwrap();
        assert!(ro.bytes_mut().is_none());
        ro.write_at(4090, b"across a page").unwrap();
        assert_eq!(&ro.bytes()[4090..4103], b"across a page");
        ro.zero(4095..4100).unwrap();
        assert_eq!(&ro.bytes()[4090..4103], b"acros\0\0\0\0\0age");
        let mut rw = SegmentFile::open(&path, 1, Mapping::Writable { populate: true }).unwrap();
        rw.bytes_mut().unwrap()[0..5].copy_from_slice(b"hello");
        assert_eq!(&ro.bytes()[0..5], b"hello", "one page cache behind both mappings");
    }
}

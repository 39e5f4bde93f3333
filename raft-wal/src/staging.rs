//! Records encoded but not yet written to the active segment (`AppendVia::Write`).
//!
//! Headers, entry tables and small payloads are encoded into one buffer; large payloads stay in
//! the caller's buffers and are written from there by one vectored write, so a big batch is
//! copied once (into the page cache) instead of three times (zero-filled staging space, the
//! copy into it, the write). A flush of several MiB starts the disk writing each MiB as soon as
//! it is in the page cache, so the fdatasync that follows waits for the last MiB rather than
//! for all of them.

use std::fs::File;
use std::os::fd::AsRawFd;

use bytes::Bytes;

/// Payloads at least this long are written from the caller's buffer instead of being copied.
pub(crate) const EXTERNAL_MIN: usize = 1024;

/// Flushes at least this long start writeback as they go (see [`Staging::write_to`]).
const WRITEBACK_FLUSH_MIN: usize = 2 << 20;

/// How much is written before writeback of it is started, in a long flush.
const WRITEBACK_SLICE: usize = 1 << 20;

/// At most this many buffers go into one `pwritev` (Linux's `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// A run of staged bytes, in file order.
#[derive(Debug)]
enum Piece {
    /// The next `n` bytes of [`Staging::inline`].
    Inline(usize),
    /// A payload written straight from the caller's buffer.
    External(Bytes),
}

impl Piece {
    fn len(&self) -> usize {
        match self {
            Piece::Inline(n) => *n,
            Piece::External(b) => b.len(),
        }
    }
}

/// Staged bytes that start at a segment offset and are contiguous in the file.
#[derive(Debug)]
pub(crate) struct Staging {
    /// Segment offset of the first staged byte.
    at: usize,
    /// Bytes staged, inline and external.
    len: usize,
    inline: Vec<u8>,
    pieces: Vec<Piece>,
}

impl Staging {
    /// Empty staging whose first byte will go to segment offset `at`.
    pub(crate) fn new(at: usize) -> Staging {
        Staging { at, len: 0, inline: Vec::new(), pieces: Vec::new() }
    }

    /// Nothing is staged.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Segment offset of the first staged byte.
    pub(crate) fn at(&self) -> usize {
        self.at
    }

    /// Segment offset just past the staged bytes.
    pub(crate) fn end(&self) -> usize {
        self.at + self.len
    }

    /// Starts over (nothing staged) at segment offset `at`.
    pub(crate) fn reset(&mut self, at: usize) {
        self.at = at;
        self.len = 0;
        self.inline.clear();
        self.pieces.clear();
    }

    /// Appends `n` zeroed bytes to encode into.
    pub(crate) fn inline_mut(&mut self, n: usize) -> &mut [u8] {
        let start = self.inline.len();
        self.inline.resize(start + n, 0);
        match self.pieces.last_mut() {
            Some(Piece::Inline(len)) => *len += n,
            _ => self.pieces.push(Piece::Inline(n)),
        }
        self.len += n;
        &mut self.inline[start..]
    }

    /// Appends a copy of `bytes`.
    pub(crate) fn push_copy(&mut self, bytes: &[u8]) {
        self.inline.extend_from_slice(bytes);
        match self.pieces.last_mut() {
            Some(Piece::Inline(len)) => *len += bytes.len(),
            _ => self.pieces.push(Piece::Inline(bytes.len())),
        }
        self.len += bytes.len();
    }

    /// Appends a payload to be written from its own buffer.
    pub(crate) fn push_external(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        self.len += bytes.len();
        self.pieces.push(Piece::External(bytes));
    }

    /// The run holding segment offset `at`: its index, where it starts in the file, and where
    /// it starts in the inline buffer (meaningful for inline runs).
    fn locate(&self, at: usize) -> Option<(usize, usize, usize)> {
        if at < self.at || at >= self.end() {
            return None;
        }
        let mut file_pos = self.at;
        let mut inline_pos = 0;
        for (i, p) in self.pieces.iter().enumerate() {
            if at < file_pos + p.len() {
                return Some((i, file_pos, inline_pos));
            }
            file_pos += p.len();
            if let Piece::Inline(n) = p {
                inline_pos += n;
            }
        }
        None
    }

    /// The staged bytes from segment offset `at` to the end of the inline run holding it, if
    /// `at` lies in an inline run. Every record header is encoded inline.
    pub(crate) fn inline_at(&mut self, at: usize) -> Option<&mut [u8]> {
        let (i, file_pos, inline_pos) = self.locate(at)?;
        match self.pieces[i] {
            Piece::Inline(n) => {
                Some(&mut self.inline[inline_pos + (at - file_pos)..inline_pos + n])
            }
            Piece::External(_) => None,
        }
    }

    /// The staged bytes at segment offsets `at..at + len`, if they lie in one run (every
    /// payload does: it is copied into one inline run or kept whole as an external one).
    pub(crate) fn get(&self, at: usize, len: usize) -> Option<&[u8]> {
        let (i, file_pos, inline_pos) = self.locate(at)?;
        let piece = &self.pieces[i];
        let from = at - file_pos;
        if from + len > piece.len() {
            return None; // Spans two runs, or runs past the end: not a payload.
        }
        match piece {
            Piece::Inline(_) => Some(&self.inline[inline_pos + from..inline_pos + from + len]),
            Piece::External(b) => Some(&b[from..from + len]),
        }
    }

    /// Bytes staged.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Writes everything staged to `file` at its segment offset, with as few `pwritev` calls as
    /// the buffers allow. With `start_writeback`, a flush of several MiB asks the kernel to start
    /// writing each MiB to disk once it is in the page cache (`sync_file_range` with
    /// `SYNC_FILE_RANGE_WRITE`, which makes nothing durable and waits for nothing), so the disk
    /// works while the rest is still being copied.
    pub(crate) fn write_to(&self, file: &File, start_writeback: bool) -> std::io::Result<()> {
        let slice = if start_writeback && self.len >= WRITEBACK_FLUSH_MIN {
            WRITEBACK_SLICE
        } else {
            usize::MAX
        };
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(self.pieces.len().min(IOV_MAX));
        let mut inline_pos = 0;
        let mut offset = self.at;
        let mut gathered = 0;
        let mut slice_start = self.at;
        for p in &self.pieces {
            let bytes: &[u8] = match p {
                Piece::Inline(n) => {
                    let b = &self.inline[inline_pos..inline_pos + n];
                    inline_pos += n;
                    b
                }
                Piece::External(b) => b,
            };
            let mut rest = bytes;
            while !rest.is_empty() {
                // Cut the buffer where the current writeback slice ends.
                let room = slice.saturating_sub(gathered).max(1);
                let (now, later) = rest.split_at(rest.len().min(room));
                iov.push(libc::iovec {
                    iov_base: now.as_ptr() as *mut libc::c_void,
                    iov_len: now.len(),
                });
                gathered += now.len();
                rest = later;
                if iov.len() == IOV_MAX || gathered >= slice {
                    offset = pwritev_all(file, &mut iov, offset)?;
                    if gathered >= slice {
                        start_writeback_of(file, slice_start, offset - slice_start);
                        slice_start = offset;
                        gathered = 0;
                    }
                }
            }
        }
        if !iov.is_empty() {
            offset = pwritev_all(file, &mut iov, offset)?;
        }
        debug_assert_eq!(offset, self.end(), "every staged byte written");
        Ok(())
    }
}

/// Writes every buffer of `iov` at `offset`, retrying after short writes and interruptions;
/// returns the offset after them and leaves `iov` empty.
fn pwritev_all(
    file: &File,
    iov: &mut Vec<libc::iovec>,
    mut offset: usize,
) -> std::io::Result<usize> {
    let mut first = 0;
    while first < iov.len() {
        let count = (iov.len() - first) as libc::c_int;
        // SAFETY: every iovec in `iov[first..]` points into a buffer that outlives this call
        // (the staging buffer or a `Bytes` held by the staging, both borrowed by the caller for
        // its whole duration) and its length stays within that buffer: they were built from
        // slices, and the partial-write adjustment below only shrinks one from the front. The
        // pointer and count describe `iov[first..]`, which is initialised. The file descriptor
        // is open for as long as `file` is borrowed.
        let n = unsafe {
            libc::pwritev(file.as_raw_fd(), iov[first..].as_ptr(), count, offset as libc::off_t)
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "pwritev wrote nothing",
            ));
        }
        let mut n = n as usize;
        offset += n;
        while n > 0 {
            let v = &mut iov[first];
            if n >= v.iov_len {
                n -= v.iov_len;
                first += 1;
            } else {
                // SAFETY: `n < iov_len`, so the advanced pointer stays inside the same buffer.
                v.iov_base = unsafe { (v.iov_base as *mut u8).add(n) } as *mut libc::c_void;
                v.iov_len -= n;
                n = 0;
            }
        }
        // Skip buffers that are now empty so `first` points at the next byte to write.
        while first < iov.len() && iov[first].iov_len == 0 {
            first += 1;
        }
    }
    iov.clear();
    Ok(offset)
}

/// Asks the kernel to start writing `[offset, offset + len)` of `file` to disk. Only a hint:
/// durability still comes from fdatasync, so a failure here is ignored (fdatasync reports it).
fn start_writeback_of(file: &File, offset: usize, len: usize) {
    #[cfg(target_os = "linux")]
    // SAFETY: sync_file_range reads no memory of ours; it takes a descriptor that `file` keeps
    // open and a byte range, and at worst returns an error.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// Writes `s` to a new file; returns the file's bytes from `from` on.
    fn written(s: &Staging, writeback: bool, from: usize) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        s.write_to(&f, writeback).unwrap();
        let mut got = vec![0u8; f.metadata().unwrap().len() as usize - from];
        f.read_exact_at(&mut got, from as u64).unwrap();
        got
    }

    fn staged_bytes(pieces: &[(&[u8], bool)]) -> (Staging, Vec<u8>) {
        let mut s = Staging::new(100);
        let mut want = Vec::new();
        for (b, external) in pieces {
            if *external {
                s.push_external(Bytes::copy_from_slice(b));
            } else {
                s.push_copy(b);
            }
            want.extend_from_slice(b);
        }
        (s, want)
    }

    #[test]
    fn writes_inline_and_external_pieces_in_file_order() {
        let big: Vec<u8> = (0..(5 << 20)).map(|i| (i % 251) as u8).collect();
        let mut pieces: Vec<(&[u8], bool)> = vec![(b"head", false), (&big[..3 << 20], true)];
        pieces.push((b"mid", false));
        pieces.push((b"", true));
        pieces.push((&big[3 << 20..], true));
        pieces.push((b"tail", false));
        for writeback in [false, true] {
            let (s, want) = staged_bytes(&pieces);
            let got = written(&s, writeback, 100);
            assert_eq!(got.len(), want.len(), "the file ends where the staged bytes end");
            assert!(got == want, "file holds the staged bytes in order (writeback {writeback})");
        }
    }

    #[test]
    fn staged_payloads_are_read_from_their_run() {
        let ext: Vec<u8> = (0..9000u32).map(|i| (i % 253) as u8).collect();
        let (s, want) = staged_bytes(&[(b"header+small", false), (&ext, true), (b"tail", false)]);
        // Inside the first inline run, the external run, and the last inline run.
        assert_eq!(s.get(100, 6), Some(&want[..6]));
        assert_eq!(s.get(100 + 12, 9000), Some(&ext[..]));
        assert_eq!(s.get(100 + 12 + 100, 50), Some(&ext[100..150]));
        assert_eq!(s.get(100 + 12 + 9000, 4), Some(&b"tail"[..]));
        // Across two runs, before the staging, past its end: not a payload here.
        assert_eq!(s.get(100 + 10, 4), None);
        assert_eq!(s.get(99, 2), None);
        assert_eq!(s.get(100 + want.len() - 2, 3), None);
    }

    #[test]
    fn more_buffers_than_one_pwritev_takes() {
        let chunks: Vec<Vec<u8>> = (0..3000u32).map(|i| i.to_le_bytes().to_vec()).collect();
        let mut s = Staging::new(0);
        let mut want = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            if i % 2 == 0 {
                s.push_external(Bytes::copy_from_slice(c));
            } else {
                s.push_copy(c);
            }
            want.extend_from_slice(c);
        }
        assert_eq!(written(&s, true, 0), want);
    }

    #[test]
    fn finds_inline_bytes_by_segment_offset() {
        let mut s = Staging::new(64);
        s.push_copy(b"abcd");
        s.push_external(Bytes::from_static(b"XXXXXXXX"));
        s.inline_mut(3).copy_from_slice(b"efg");
        assert_eq!(s.inline_at(64).unwrap(), b"abcd");
        assert_eq!(s.inline_at(66).unwrap(), b"cd");
        assert!(s.inline_at(68).is_none(), "an external payload is not inline");
        assert_eq!(s.inline_at(76).unwrap(), b"efg");
        assert!(s.inline_at(79).is_none(), "past the end");
        assert!(s.inline_at(63).is_none(), "before the start");
        assert_eq!(s.end(), 79);
        s.reset(200);
        assert!(s.is_empty());
        assert_eq!(s.at(), 200);
    }
}

//! The snapshot file format, version 1. All integers are little endian.
//!
//! ```text
//! +--------------------------------------------------+
//! | header, 16 bytes                                 |
//! |   magic "RAFTSNAP" (8) | version u32 | chunk u32 |
//! +--------------------------------------------------+
//! | frame 0: len u32 | crc32c(data) u32 | data       |  every frame holds `chunk` bytes of
//! | frame 1: ...                                     |  data, except the last, which may hold
//! | ...                                              |  fewer (no frame at all when empty)
//! +--------------------------------------------------+
//! | trailer                                          |
//! |   meta: group u64 | index u64 | term u64 |       |
//! |         size u64 | checksum u32 |                |
//! |         voter count u32 | voters u64...          |
//! |   meta_len u32 | crc32c(meta) u32 | "SNAPDONE"   |
//! +--------------------------------------------------+
//! ```
//!
//! The trailer comes last because a snapshot's size and checksum are known only once the state
//! machine has streamed all of it; the file is complete exactly when the trailer is there and
//! checks out, and it only gets its final name after it was fsynced whole. Frames have a fixed
//! data size, so the frame holding any offset is found by arithmetic, and every read verifies
//! the CRC of the frames it touches.

use raft_core::{SnapshotError, SnapshotMeta};

/// Magic at the start of every snapshot file.
pub const MAGIC: [u8; 8] = *b"RAFTSNAP";
/// Magic at the very end of a complete snapshot file.
pub const END_MAGIC: [u8; 8] = *b"SNAPDONE";
/// The format version this build writes and the newest it reads.
pub const VERSION: u32 = 1;
/// Bytes of the file header.
pub const HEADER_LEN: u64 = 16;
/// Bytes of a frame's header.
pub const FRAME_HEADER_LEN: u64 = 8;
/// Bytes after the encoded metadata: its length, its CRC and the end magic.
pub const TRAILER_TAIL_LEN: u64 = 16;
/// Largest frame data size accepted when reading (a bound for a corrupt header).
pub const MAX_CHUNK: u32 = 64 << 20;
/// Most voters a snapshot's metadata may list (a bound for a corrupt trailer).
pub const MAX_VOTERS: u32 = 1 << 16;

/// The 16-byte file header.
pub fn encode_header(chunk: u32) -> [u8; HEADER_LEN as usize] {
    let mut out = [0u8; HEADER_LEN as usize];
    out[..8].copy_from_slice(&MAGIC);
    out[8..12].copy_from_slice(&VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&chunk.to_le_bytes());
    out
}

/// Parses the header; returns the frame data size.
pub fn decode_header(bytes: &[u8]) -> Result<u32, SnapshotError> {
    if bytes.len() < HEADER_LEN as usize || bytes[..8] != MAGIC {
        return Err(SnapshotError::Corrupt("not a snapshot file (bad magic)".into()));
    }
    let version = u32_at(bytes, 8);
    if version > VERSION {
        return Err(SnapshotError::UnsupportedVersion { found: version, supported: VERSION });
    }
    if version == 0 {
        return Err(SnapshotError::Corrupt("format version 0".into()));
    }
    let chunk = u32_at(bytes, 12);
    if chunk == 0 || chunk > MAX_CHUNK {
        return Err(SnapshotError::Corrupt(format!("frame size {chunk} out of range")));
    }
    Ok(chunk)
}

/// The trailer for `meta`: encoded metadata, its length, CRC and the end magic.
pub fn encode_trailer(meta: &SnapshotMeta) -> Vec<u8> {
    let mut m = Vec::with_capacity(40 + 8 * meta.voters.len() + TRAILER_TAIL_LEN as usize);
    m.extend_from_slice(&meta.group.to_le_bytes());
    m.extend_from_slice(&meta.index.to_le_bytes());
    m.extend_from_slice(&meta.term.to_le_bytes());
    m.extend_from_slice(&meta.size.to_le_bytes());
    m.extend_from_slice(&meta.checksum.to_le_bytes());
    m.extend_from_slice(&(meta.voters.len() as u32).to_le_bytes());
    for v in &meta.voters {
        m.extend_from_slice(&v.to_le_bytes());
    }
    let len = m.len() as u32;
    let crc = crc32c::crc32c(&m);
    m.extend_from_slice(&len.to_le_bytes());
    m.extend_from_slice(&crc.to_le_bytes());
    m.extend_from_slice(&END_MAGIC);
    m
}

/// Parses the last [`TRAILER_TAIL_LEN`] bytes of a file: the metadata's length and CRC.
pub fn decode_trailer_tail(tail: &[u8]) -> Result<(u32, u32), SnapshotError> {
    if tail.len() != TRAILER_TAIL_LEN as usize || tail[8..16] != END_MAGIC {
        return Err(SnapshotError::Corrupt(
            "no trailer: the file is incomplete or truncated".into(),
        ));
    }
    Ok((u32_at(tail, 0), u32_at(tail, 4)))
}

/// Decodes the metadata bytes of a trailer, checking them against their CRC.
pub fn decode_meta(bytes: &[u8], crc: u32) -> Result<SnapshotMeta, SnapshotError> {
    let actual = crc32c::crc32c(bytes);
    if actual != crc {
        return Err(SnapshotError::Corrupt(format!(
            "metadata checksum mismatch: expected {crc:#010x}, computed {actual:#010x}"
        )));
    }
    if bytes.len() < 40 {
        return Err(SnapshotError::Corrupt(format!("metadata of {} bytes", bytes.len())));
    }
    let voters_len = u32_at(bytes, 36);
    if voters_len > MAX_VOTERS || bytes.len() != 40 + 8 * voters_len as usize {
        return Err(SnapshotError::Corrupt(format!(
            "metadata of {} bytes lists {voters_len} voters",
            bytes.len()
        )));
    }
    let voters = (0..voters_len as usize).map(|i| u64_at(bytes, 40 + 8 * i)).collect();
    Ok(SnapshotMeta {
        group: u64_at(bytes, 0),
        index: u64_at(bytes, 8),
        term: u64_at(bytes, 16),
        size: u64_at(bytes, 24),
        checksum: u32_at(bytes, 32),
        voters,
    })
}

/// Number of frames holding `size` bytes of data.
pub fn frame_count(size: u64, chunk: u32) -> u64 {
    size.div_ceil(u64::from(chunk))
}

/// Where frame `k` starts in the file.
pub fn frame_offset(k: u64, chunk: u32) -> u64 {
    HEADER_LEN + k * (FRAME_HEADER_LEN + u64::from(chunk))
}

/// The length a complete file for `meta` with frames of `chunk` bytes must have.
pub fn file_len(meta_len: u64, size: u64, chunk: u32) -> u64 {
    HEADER_LEN + frame_count(size, chunk) * FRAME_HEADER_LEN + size + meta_len + TRAILER_TAIL_LEN
}

/// The final file name of a snapshot.
pub fn file_name(meta: &SnapshotMeta) -> String {
    format!(
        "snap-{:016x}-{:016x}-{:016x}-{:08x}.snap",
        meta.group, meta.index, meta.term, meta.checksum
    )
}

/// Whether `name` is a snapshot's final name.
pub fn is_snapshot_name(name: &str) -> bool {
    name.starts_with("snap-") && name.ends_with(".snap")
}

/// Whether `name` is a temporary file (a snapshot being written or received).
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with("tmp-") && name.ends_with(".part")
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> SnapshotMeta {
        SnapshotMeta {
            group: 7,
            index: 100,
            term: 3,
            voters: vec![1, 2, 3],
            size: 12345,
            checksum: 9,
        }
    }

    #[test]
    fn trailer_round_trips() {
        let m = meta();
        let t = encode_trailer(&m);
        let tail = &t[t.len() - 16..];
        let (len, crc) = decode_trailer_tail(tail).unwrap();
        assert_eq!(decode_meta(&t[..len as usize], crc).unwrap(), m);
    }

    #[test]
    fn every_bit_flip_of_the_metadata_is_caught() {
        let t = encode_trailer(&meta());
        let len = t.len() - 16;
        let (_, crc) = decode_trailer_tail(&t[len..]).unwrap();
        for bit in 0..len * 8 {
            let mut bad = t[..len].to_vec();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_meta(&bad, crc).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn header_rejects_garbage_and_newer_versions() {
        assert_eq!(decode_header(&encode_header(4096)).unwrap(), 4096);
        assert!(matches!(decode_header(b"short"), Err(SnapshotError::Corrupt(_))));
        let mut newer = encode_header(4096);
        newer[8] = 2;
        assert!(matches!(
            decode_header(&newer),
            Err(SnapshotError::UnsupportedVersion { found: 2, supported: 1 })
        ));
        let zero_chunk = encode_header(0);
        assert!(decode_header(&zero_chunk).is_err());
    }

    #[test]
    fn lengths_add_up() {
        assert_eq!(frame_count(0, 10), 0);
        assert_eq!(frame_count(10, 10), 1);
        assert_eq!(frame_count(11, 10), 2);
        assert_eq!(file_len(50, 11, 10), 16 + 2 * 8 + 11 + 50 + 16);
    }
}

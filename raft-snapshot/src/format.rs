//! The snapshot file format, version 2. All integers are little endian.
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
//! |         membership (below)                       |
//! |   meta_len u32 | crc32c(meta) u32 | "SNAPDONE"   |
//! +--------------------------------------------------+
//! ```
//!
//! The membership is three id lists, each a count u32 then ids u64 (voters, outgoing voters,
//! learners), then an address count u32 and per address: id u64 | len u32 | UTF-8 bytes.
//! Version 1 (still read) had the voters list only.
//!
//! The trailer comes last because a snapshot's size and checksum are known only once the state
//! machine has streamed all of it; the file is complete exactly when the trailer is there and
//! checks out, and it only gets its final name after it was fsynced whole. Frames have a fixed
//! data size, so the frame holding any offset is found by arithmetic, and every read verifies
//! the CRC of the frames it touches.

use raft_core::{Membership, SnapshotError, SnapshotMeta};

/// Magic at the start of every snapshot file.
pub const MAGIC: [u8; 8] = *b"RAFTSNAP";
/// Magic at the very end of a complete snapshot file.
pub const END_MAGIC: [u8; 8] = *b"SNAPDONE";
/// The format version this build writes and the newest it reads (2: the whole membership; 1:
/// voters only, still read).
pub const VERSION: u32 = 2;
/// Bytes of the file header.
pub const HEADER_LEN: u64 = 16;
/// Bytes of a frame's header.
pub const FRAME_HEADER_LEN: u64 = 8;
/// Bytes after the encoded metadata: its length, its CRC and the end magic.
pub const TRAILER_TAIL_LEN: u64 = 16;
/// Largest frame data size accepted when reading (a bound for a corrupt header).
pub const MAX_CHUNK: u32 = 64 << 20;
/// Most ids in one of a snapshot's membership lists (a bound for a corrupt trailer).
pub const MAX_VOTERS: u32 = 1 << 16;
/// Longest member address a snapshot's metadata may hold.
pub const MAX_ADDRESS: u32 = 4096;

/// The 16-byte file header.
pub fn encode_header(chunk: u32) -> [u8; HEADER_LEN as usize] {
    let mut out = [0u8; HEADER_LEN as usize];
    out[..8].copy_from_slice(&MAGIC);
    out[8..12].copy_from_slice(&VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&chunk.to_le_bytes());
    out
}

/// Parses the header; returns the format version and the frame data size.
pub fn decode_header(bytes: &[u8]) -> Result<(u32, u32), SnapshotError> {
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
    Ok((version, chunk))
}

/// The trailer for `meta`: encoded metadata, its length, CRC and the end magic.
pub fn encode_trailer(meta: &SnapshotMeta) -> Vec<u8> {
    let ms = &meta.membership;
    let mut m = Vec::with_capacity(64 + 8 * ms.members().len() + TRAILER_TAIL_LEN as usize);
    m.extend_from_slice(&meta.group.to_le_bytes());
    m.extend_from_slice(&meta.index.to_le_bytes());
    m.extend_from_slice(&meta.term.to_le_bytes());
    m.extend_from_slice(&meta.size.to_le_bytes());
    m.extend_from_slice(&meta.checksum.to_le_bytes());
    for list in [&ms.voters, &ms.outgoing, &ms.learners] {
        m.extend_from_slice(&(list.len() as u32).to_le_bytes());
        for v in list {
            m.extend_from_slice(&v.to_le_bytes());
        }
    }
    m.extend_from_slice(&(ms.addresses.len() as u32).to_le_bytes());
    for (id, address) in &ms.addresses {
        m.extend_from_slice(&id.to_le_bytes());
        m.extend_from_slice(&(address.len() as u32).to_le_bytes());
        m.extend_from_slice(address.as_bytes());
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

/// Decodes the metadata bytes of a trailer of a file of format `version`, checking them against
/// their CRC.
pub fn decode_meta(bytes: &[u8], crc: u32, version: u32) -> Result<SnapshotMeta, SnapshotError> {
    let actual = crc32c::crc32c(bytes);
    if actual != crc {
        return Err(SnapshotError::Corrupt(format!(
            "metadata checksum mismatch: expected {crc:#010x}, computed {actual:#010x}"
        )));
    }
    let corrupt = |why: String| SnapshotError::Corrupt(format!("metadata: {why}"));
    let mut r = Reader { bytes, at: 0 };
    let short = || corrupt(format!("{} bytes is too short", bytes.len()));
    let (group, index, term) =
        (r.u64().ok_or_else(short)?, r.u64().ok_or_else(short)?, r.u64().ok_or_else(short)?);
    let (size, checksum) = (r.u64().ok_or_else(short)?, r.u32().ok_or_else(short)?);
    let mut membership = Membership::default();
    let lists = if version == 1 { 1 } else { 3 };
    for n in 0..lists {
        let count = r.u32().ok_or_else(short)?;
        if count > MAX_VOTERS {
            return Err(corrupt(format!("a list of {count} members")));
        }
        let mut ids = Vec::with_capacity(count as usize);
        for _ in 0..count {
            ids.push(r.u64().ok_or_else(short)?);
        }
        match n {
            0 => membership.voters = ids,
            1 => membership.outgoing = ids,
            _ => membership.learners = ids,
        }
    }
    if version >= 2 {
        let count = r.u32().ok_or_else(short)?;
        if count > MAX_VOTERS {
            return Err(corrupt(format!("{count} addresses")));
        }
        for _ in 0..count {
            let id = r.u64().ok_or_else(short)?;
            let len = r.u32().ok_or_else(short)?;
            if len > MAX_ADDRESS {
                return Err(corrupt(format!("an address of {len} bytes")));
            }
            let raw = r.take(len as usize).ok_or_else(short)?;
            let address = String::from_utf8(raw.to_vec())
                .map_err(|_| corrupt(format!("the address of node {id} is not UTF-8")))?;
            membership.addresses.insert(id, address);
        }
    }
    if r.at != bytes.len() {
        return Err(corrupt(format!("{} bytes after the membership", bytes.len() - r.at)));
    }
    if version == 1 {
        membership.voters.sort_unstable();
    }
    membership.validate().map_err(|e| corrupt(e.to_string()))?;
    Ok(SnapshotMeta { group, index, term, membership, size, checksum })
}

/// Reads little-endian integers from a byte slice, `None` past its end.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(out)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32_at(b, 0))
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64_at(b, 0))
    }
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
            membership: Membership {
                voters: vec![1, 2, 4],
                outgoing: vec![1, 2, 3],
                learners: vec![5],
                addresses: [(4, "h4:7000".to_owned()), (5, "h5:7000".to_owned())]
                    .into_iter()
                    .collect(),
            },
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
        assert_eq!(decode_meta(&t[..len as usize], crc, VERSION).unwrap(), m);
    }

    #[test]
    fn version_1_metadata_is_still_read() {
        // group 7, index 100, term 3, size 12345, checksum 9, voters [3, 1].
        let mut v1 = Vec::new();
        for x in [7u64, 100, 3, 12345] {
            v1.extend_from_slice(&x.to_le_bytes());
        }
        v1.extend_from_slice(&9u32.to_le_bytes());
        v1.extend_from_slice(&2u32.to_le_bytes());
        v1.extend_from_slice(&3u64.to_le_bytes());
        v1.extend_from_slice(&1u64.to_le_bytes());
        let crc = crc32c::crc32c(&v1);
        let meta = decode_meta(&v1, crc, 1).unwrap();
        assert_eq!(meta.membership, Membership::new([1, 3]));
        assert_eq!((meta.group, meta.index, meta.term, meta.size), (7, 100, 3, 12345));
        assert!(decode_meta(&v1, crc, 2).is_err(), "read as version 2 it is short");
    }

    #[test]
    fn every_bit_flip_of_the_metadata_is_caught() {
        let t = encode_trailer(&meta());
        let len = t.len() - 16;
        let (_, crc) = decode_trailer_tail(&t[len..]).unwrap();
        for bit in 0..len * 8 {
            let mut bad = t[..len].to_vec();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_meta(&bad, crc, VERSION).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn header_rejects_garbage_and_newer_versions() {
        assert_eq!(decode_header(&encode_header(4096)).unwrap(), (VERSION, 4096));
        assert!(matches!(decode_header(b"short"), Err(SnapshotError::Corrupt(_))));
        let mut newer = encode_header(4096);
        newer[8] = 3;
        assert!(matches!(
            decode_header(&newer),
            Err(SnapshotError::UnsupportedVersion { found: 3, supported: 2 })
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

//! Helpers for tests of systems built on the WAL (feature `testkit`).

use std::path::Path;

use crate::format::SEGMENT_HEADER_LEN;
use crate::segment::parse_segment_name;
use crate::DurablePosition;

/// What a power loss leaves past the durable position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leftover {
    /// Zeros (the written pages never reached the disk).
    Zeros,
    /// Random bytes from `seed` (garbage).
    Garbage(u64),
    /// The first `n` bytes that were written survive, the rest is zeros (a partial write).
    Partial(usize),
}

/// Emulates a power loss on a closed WAL directory: every byte past `durable` (in its segment
/// and in every later segment file) is replaced as `leftover` says. Segment files created
/// after the durable position keep existing (their creation may have been durable).
///
/// Only sound if nothing past `durable` had been synced: a power loss never takes back what an
/// fsync made durable. A WAL syncs everything it has written before it retires (deletes) a
/// segment, so if a segment was retired after `durable` was read, the sync went further and
/// the emulation would destroy durable records the retirement relied on. Read
/// [`oldest_segment`] before reading the durable position, and emulate only if the oldest
/// segment is still the same afterwards.
pub fn power_loss(dir: &Path, durable: DurablePosition, leftover: Leftover) -> std::io::Result<()> {
    let mut rng = raft_core::rng::Rng::new(match leftover {
        Leftover::Garbage(seed) => seed,
        _ => 0,
    });
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(seq) = name.to_str().and_then(parse_segment_name) else { continue };
        if seq < durable.segment {
            continue;
        }
        let mut bytes = std::fs::read(entry.path())?;
        let from = if seq == durable.segment {
            durable.offset as usize
        } else {
            SEGMENT_HEADER_LEN.min(bytes.len())
        };
        let from = from.min(bytes.len());
        let keep = match leftover {
            Leftover::Partial(n) => n.min(bytes.len() - from),
            _ => 0,
        };
        for b in &mut bytes[from + keep..] {
            *b = match leftover {
                Leftover::Garbage(_) => rng.next_u64() as u8,
                _ => 0,
            };
        }
        std::fs::write(entry.path(), &bytes)?;
    }
    Ok(())
}

/// The bytes of segment file `seq` of `size` bytes: a valid header (records expected from
/// `first_seq`) followed by `body` where the records go. For feeding recovery arbitrary record
/// bytes behind a header that passes its checksum.
pub fn segment_with_body(seq: u64, first_seq: u64, size: usize, body: &[u8]) -> Vec<u8> {
    let mut file = vec![0u8; size.max(SEGMENT_HEADER_LEN)];
    let header = crate::format::SegmentHeader { seq, first_seq, size: file.len() as u64 };
    header.encode(&mut file[..SEGMENT_HEADER_LEN]);
    let room = file.len() - SEGMENT_HEADER_LEN;
    let n = body.len().min(room);
    file[SEGMENT_HEADER_LEN..SEGMENT_HEADER_LEN + n].copy_from_slice(&body[..n]);
    file
}

/// The name of segment file `seq` in a WAL directory.
pub fn segment_file_name(seq: u64) -> String {
    crate::segment::segment_name(seq)
}

/// The lowest sequence number of the segment files in a WAL directory (`None` if there are
/// none). A WAL retires its oldest segments, so this grows when one is retired.
pub fn oldest_segment(dir: &Path) -> std::io::Result<Option<u64>> {
    let mut oldest = None;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(seq) = entry.file_name().to_str().and_then(parse_segment_name) {
            oldest = Some(oldest.map_or(seq, |o: u64| o.min(seq)));
        }
    }
    Ok(oldest)
}

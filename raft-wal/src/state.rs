//! What the write lock protects, and the record-level helpers both the write path and recovery
//! use. Recovery builds a [`State`] from the files; the WAL is built from what recovery returns.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use raft_core::{Entry, GroupId};

use crate::config::AppendVia;
use crate::error::WalError;
use crate::format::{
    self, CheckpointRow, Kind, SegmentHeader, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use crate::index::{GroupIndex, Loc};
use crate::segment::SegmentFile;
use crate::staging::{self, Staging};

/// A segment in use.
pub(crate) struct Segment {
    pub(crate) file: SegmentFile,
    /// Entries of any group whose payload is in this segment.
    pub(crate) live: u64,
    /// Every payload checksum in it was verified, or it was written by this process: reads
    /// skip the check.
    pub(crate) verified: bool,
}

/// Everything the write lock protects.
pub(crate) struct State {
    pub(crate) segments: BTreeMap<u64, Segment>,
    /// The segment appended to.
    pub(crate) active: u64,
    /// Where the next record goes in the active segment.
    pub(crate) offset: usize,
    /// The active segment is sealed (found so at open): roll before the next record.
    pub(crate) active_sealed: bool,
    /// The `seq` the next record gets.
    pub(crate) next_seq: u64,
    pub(crate) groups: HashMap<GroupId, GroupIndex>,
    /// Prepared segment files, ready to become segments.
    pub(crate) prepared: VecDeque<PathBuf>,
    pub(crate) next_prepared_id: u64,
    /// Sealed segments written since the last sync started.
    pub(crate) unsynced_sealed: Vec<Arc<File>>,
    /// Where the last record written starts: `(segment, offset)`.
    pub(crate) last_record: (u64, usize),
    /// How records reach the active segment.
    pub(crate) append_via: AppendVia,
    /// With `AppendVia::Write`: records encoded but not yet written to the active segment.
    /// Flushed before the write lock is released, so readers never see an index entry whose
    /// bytes are not in the file.
    pub(crate) staging: Staging,
    /// Long flushes start writeback as they go (every mode but `Never`, which leaves writing
    /// to the OS).
    pub(crate) start_writeback: bool,
    /// A group's term or vote changed since the last sync: that sync writes the second copy
    /// (`crate::votes`).
    pub(crate) votes_dirty: bool,
}

/// Where the durable part of the log ends, for tests that emulate a power loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurablePosition {
    /// The `seq` of the last durable record.
    pub seq: u64,
    /// The segment holding it.
    pub segment: u64,
    /// The byte offset just past it in that segment.
    pub offset: u64,
}

/// Encodes a record at the write position of the active segment (the caller made sure it
/// fits) and returns its length.
pub(crate) fn put_record(
    st: &mut State,
    kind: Kind,
    payload_len: usize,
    meta_len: usize,
    durable: u64,
    fill: impl FnOnce(&mut [u8], u32),
) -> usize {
    let total = format::align(RECORD_HEADER_LEN + payload_len);
    let seq = st.next_seq;
    let at = st.offset;
    let Some(seg) = st.segments.get_mut(&st.active) else {
        unreachable!("the active segment {} is always mapped", st.active)
    };
    let segment_seq = seg.file.seq;
    let buf = match st.append_via {
        AppendVia::Mmap => match seg.file.bytes_mut() {
            Some(map) => &mut map[at..at + total],
            None => unreachable!("segments of a WAL appending through the mapping map writable"),
        },
        AppendVia::Write => {
            if st.staging.is_empty() {
                st.staging.reset(at);
            }
            debug_assert_eq!(st.staging.end(), at, "staged records are contiguous");
            st.staging.inline_mut(total)
        }
    };
    fill(
        &mut buf[RECORD_HEADER_LEN..RECORD_HEADER_LEN + payload_len],
        (at + RECORD_HEADER_LEN) as u32,
    );
    format::finish_record(buf, segment_seq, kind, seq, durable, payload_len, meta_len);
    st.last_record = (st.active, at);
    st.offset += total;
    st.next_seq += 1;
    total
}

/// Encodes one ENTRIES record of `chunk` (which fits at the write position) and returns its
/// length and where each payload went. Through `AppendVia::Write`, payloads of at least
/// [`staging::EXTERNAL_MIN`] bytes are not copied: the flush writes them from the entries'
/// own buffers.
pub(crate) fn put_entries(
    st: &mut State,
    group: GroupId,
    chunk: &[Entry],
    durable: u64,
) -> (usize, Vec<Loc>) {
    let count = chunk.len();
    let meta_len = format::ENTRIES_META_FIXED + count * format::ENTRY_ROW_LEN;
    let data: usize = chunk.iter().map(|e| e.data.len()).sum();
    let segment = st.active as u32;
    let mut locs = Vec::with_capacity(count);
    let first_index = chunk.first().map_or(0, |e| e.index);
    let encode_row = |p: &mut [u8], i: usize, e: &Entry, crc: u32| {
        format::encode_row(
            p,
            i,
            format::EntryRow { term: e.term, len: e.data.len() as u32, kind: e.kind, crc },
        );
    };
    if st.append_via == AppendVia::Mmap {
        let total =
            put_record(st, Kind::Entries, meta_len + data, meta_len, durable, |p, payload_at| {
                format::encode_entries_meta(p, group, first_index, count as u32);
                let mut at = meta_len;
                for (i, e) in chunk.iter().enumerate() {
                    let len = e.data.len();
                    p[at..at + len].copy_from_slice(&e.data);
                    let crc = crc32c::crc32c(&e.data);
                    encode_row(p, i, e, crc);
                    locs.push(Loc::new(segment, payload_at + at as u32, len as u32, e.kind, crc));
                    at += len;
                }
            });
        return (total, locs);
    }
    let payload_len = meta_len + data;
    let total = format::align(RECORD_HEADER_LEN + payload_len);
    let seq = st.next_seq;
    let at = st.offset;
    let Some(seg) = st.segments.get(&st.active) else {
        unreachable!("the active segment {} is always mapped", st.active)
    };
    let segment_seq = seg.file.seq;
    if st.staging.is_empty() {
        st.staging.reset(at);
    }
    debug_assert_eq!(st.staging.end(), at, "staged records are contiguous");
    // Header and entry table first (each row needs its payload's checksum), then the payloads.
    let head = st.staging.inline_mut(RECORD_HEADER_LEN + meta_len);
    format::encode_entries_meta(&mut head[RECORD_HEADER_LEN..], group, first_index, count as u32);
    let mut payload_at = at + RECORD_HEADER_LEN + meta_len;
    for (i, e) in chunk.iter().enumerate() {
        let len = e.data.len();
        let crc = crc32c::crc32c(&e.data);
        encode_row(&mut head[RECORD_HEADER_LEN..], i, e, crc);
        locs.push(Loc::new(segment, payload_at as u32, len as u32, e.kind, crc));
        payload_at += len;
    }
    format::finish_header(head, segment_seq, Kind::Entries, seq, durable, payload_len, meta_len);
    for e in chunk {
        if e.data.len() >= staging::EXTERNAL_MIN {
            st.staging.push_external(e.data.clone());
        } else {
            st.staging.push_copy(&e.data);
        }
    }
    st.staging.inline_mut(total - RECORD_HEADER_LEN - payload_len);
    st.last_record = (st.active, at);
    st.offset += total;
    st.next_seq += 1;
    (total, locs)
}

/// The bytes of the record starting at `at` in `segment`, wherever they are now (staged, or in
/// the segment's mapping): at least its header and metadata.
pub(crate) fn record_mut(st: &mut State, segment: u64, at: usize) -> Option<(u64, &mut [u8])> {
    let staged_here = segment == st.active && !st.staging.is_empty() && at >= st.staging.at();
    let seg = st.segments.get_mut(&segment)?;
    let seq = seg.file.seq;
    if staged_here {
        Some((seq, st.staging.inline_at(at)?))
    } else {
        // Only appends through the mapping leave a batch's last record unstaged (writes through
        // write calls stay staged until the batch is complete), and their mapping is writable.
        Some((seq, seg.file.bytes_mut()?.get_mut(at..)?))
    }
}

/// Writes the staged records to the active segment file.
pub(crate) fn flush_staged(st: &mut State) -> Result<(), WalError> {
    if st.staging.is_empty() {
        return Ok(());
    }
    let Some(seg) = st.segments.get(&st.active) else {
        unreachable!("the active segment {} is always mapped", st.active)
    };
    st.staging
        .write_to(&seg.file.file, st.start_writeback)
        .map_err(|e| WalError::io(&seg.file.path, e))?;
    st.staging.reset(st.offset);
    Ok(())
}

/// Writes a segment header the way records are appended (a write call, or the mapping).
pub(crate) fn write_header(file: &mut SegmentFile, header: &SegmentHeader) -> Result<(), WalError> {
    let mut bytes = [0u8; SEGMENT_HEADER_LEN];
    header.encode(&mut bytes);
    match file.bytes_mut() {
        Some(map) => {
            map[..SEGMENT_HEADER_LEN].copy_from_slice(&bytes);
            Ok(())
        }
        None => file.write_at(0, &bytes),
    }
}

/// Marks the last record written as the end of its batch: recovery replays a batch only if its
/// end is on disk.
pub(crate) fn end_batch(st: &mut State) {
    let (segment, at) = st.last_record;
    let marked =
        record_mut(st, segment, at).map(|(seq, record)| format::mark_batch_end(record, seq));
    debug_assert!(marked.is_some(), "a batch's last record is staged or in a writable mapping");
}

/// Writes a CHECKPOINT of every group's metadata at the write position; returns its length.
pub(crate) fn put_checkpoint(st: &mut State, durable: u64) -> usize {
    let mut rows: Vec<CheckpointRow> = st
        .groups
        .iter()
        .map(|(&group, g)| CheckpointRow {
            group,
            base_index: g.base_index,
            base_term: g.base_term,
            hard_state: g.hard_state,
        })
        .collect();
    rows.sort_unstable_by_key(|r| r.group);
    let len = format::checkpoint_len(rows.len());
    put_record(st, Kind::Checkpoint, len, len, durable, |p, _| format::encode_checkpoint(p, &rows))
}

/// Counts an entry's payload as gone from its segment.
pub(crate) fn drop_live(segments: &mut BTreeMap<u64, Segment>, loc: Loc) {
    if let Some(seg) = segments.get_mut(&(loc.segment as u64)) {
        seg.live = seg.live.saturating_sub(1);
    }
}

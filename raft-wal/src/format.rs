//! The on-disk format: segment headers and records, their encoders and decoders.
//!
//! Every integer is little endian. Every length is bounded before anything is allocated or
//! sliced, and every decoder returns an error instead of panicking on arbitrary bytes.
//!
//! # Segment file
//!
//! ```text
//! offset 0                                                             64
//!        +----------+---------+------------+---------+-----------+-----+-------+
//!        | magic    | version | header_len | seq     | first_seq | size | crc  |
//!        | 8 B      | u32     | u32 (=64)  | u64     | u64       | u64  | u32  |
//!        +----------+---------+------------+---------+-----------+------+------+
//!          "RKWALSEG"                                       (20 B reserved before crc)
//! offset 64: records, each starting at a multiple of 8, until a SEAL record or the
//!            first position that does not hold a valid record.
//! ```
//!
//! # Record
//!
//! ```text
//! +-------------+-------+------+-------+----------+----------+---------+------------+
//! | payload_len | crc   | kind | flags | reserved | meta_len | seq     | durable    |
//! | u32         | u32   | u8   | u8    | u16      | u32      | u64     | u64        |
//! +-------------+-------+------+-------+----------+----------+---------+------------+
//! 0             4       8      9       10         12         16        24        32
//! followed by payload_len bytes of payload, then zero padding to a multiple of 8.
//! ```
//!
//! - `crc` is CRC32C over bytes 8..32 of the header and the first `meta_len` bytes of the
//!   payload, seeded with the segment's sequence number: a record left in a recycled segment
//!   file never validates in the segment's new life.
//! - `seq` numbers records consecutively across the whole log.
//! - `flags` bit 0 (`BATCH_END`) marks the last record of a write batch. Recovery keeps records
//!   only up to the last `BATCH_END`: a batch is all or nothing after a crash, so a torn batch
//!   can never apply its truncation without the entries that replace what it removed.
//! - `durable` is the highest record `seq` the writer knew to be durable when it wrote this
//!   record. Recovery uses it to tell a torn tail (nothing after it claims it durable) from
//!   corruption of data that was acknowledged (a later record says it was durable).
//! - For ENTRIES records the payload's data part (after `meta_len`) is covered by one CRC32C
//!   per entry, kept in the entry table; for every other kind `meta_len == payload_len`.
//!
//! # Payloads
//!
//! ```text
//! ENTRIES     group u64 | first_index u64 | count u32 | reserved u32
//!             count x [ term u64 | len u32 (top 2 bits: kind) | data_crc u32 ] <- meta
//!             data of every entry, back to back                               <- data
//! HARD_STATE  group u64 | term u64 | vote u64 | has_vote u8 | 7 B reserved | commit u64
//! TRUNCATE    group u64 | last_kept u64             (entries after last_kept are removed)
//! COMPACT     group u64 | through u64 | term u64    (raft-core's LogStore::compact)
//! CHECKPOINT  count u32 | reserved u32
//!             count x [ group | base_index | base_term | term | vote | has_vote+pad | commit ]
//! SEAL        next_seq u64                          (the segment ends here)
//! ```

use raft_core::{EntryKind, GroupId, HardState, Index, Term};

/// The segment file magic.
pub(crate) const MAGIC: [u8; 8] = *b"RKWALSEG";
/// The format version this build writes and reads (2: entry kinds take the top two bits of an
/// entry row's length, for membership entries; 1: one no-op bit). Segments of another version
/// are refused with a typed error naming both.
pub(crate) const VERSION: u32 = 2;
/// Bytes of the segment header; records start here.
pub(crate) const SEGMENT_HEADER_LEN: usize = 64;
/// Bytes of a record header.
pub(crate) const RECORD_HEADER_LEN: usize = 32;
/// Records start at multiples of this.
pub(crate) const ALIGN: usize = 8;
/// Bytes of the ENTRIES payload before the entry table.
pub(crate) const ENTRIES_META_FIXED: usize = 24;
/// Bytes of one row of the entry table.
pub(crate) const ENTRY_ROW_LEN: usize = 16;
/// Bytes of one CHECKPOINT row.
pub(crate) const CHECKPOINT_ROW_LEN: usize = 56;
/// The top two bits of an entry row's length give the entry's kind (see [`kind_bits`]).
pub(crate) const KIND_MASK: u32 = 0b11 << 30;
/// The longest entry payload the format can describe.
pub(crate) const ENTRY_DATA_MAX: u64 = (!KIND_MASK) as u64;

/// The kind of an entry as the two top bits of a length: 00 normal, 01 no-op, 10 membership.
pub(crate) fn kind_bits(kind: EntryKind) -> u32 {
    match kind {
        EntryKind::Noop => 0b01 << 30,
        EntryKind::Config => 0b10 << 30,
        _ => 0,
    }
}

/// The kind the top two bits of `raw_len` give; `None` for the unused pattern 11.
pub(crate) fn kind_of(raw_len: u32) -> Option<EntryKind> {
    match raw_len >> 30 {
        0b00 => Some(EntryKind::Normal),
        0b01 => Some(EntryKind::Noop),
        0b10 => Some(EntryKind::Config),
        _ => None,
    }
}
/// Bytes a SEAL record takes, header included; every segment keeps this much free for it.
pub(crate) const SEAL_RECORD_LEN: usize = RECORD_HEADER_LEN + 8;

/// Flag: the last record of a write batch.
pub(crate) const FLAG_BATCH_END: u8 = 1;

/// Record kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Entries = 1,
    HardState = 2,
    Truncate = 3,
    Compact = 4,
    Checkpoint = 5,
    Seal = 6,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Entries,
            2 => Kind::HardState,
            3 => Kind::Truncate,
            4 => Kind::Compact,
            5 => Kind::Checkpoint,
            6 => Kind::Seal,
            _ => return None,
        })
    }
}

/// Rounds `n` up to the record alignment.
pub(crate) fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

// ----- segment header -----

/// A decoded segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub(crate) seq: u64,
    pub(crate) first_seq: u64,
    pub(crate) size: u64,
}

/// Why a segment header could not be read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// Not a segment (wrong magic, bad checksum, or too short).
    Invalid(&'static str),
    /// Written by a newer format version.
    NewerVersion(u32),
    /// Written by an older format version this build no longer reads.
    OlderVersion(u32),
}

impl SegmentHeader {
    pub(crate) fn encode(&self, out: &mut [u8]) {
        out[..SEGMENT_HEADER_LEN].fill(0);
        out[0..8].copy_from_slice(&MAGIC);
        put_u32(out, 8, VERSION);
        put_u32(out, 12, SEGMENT_HEADER_LEN as u32);
        put_u64(out, 16, self.seq);
        put_u64(out, 24, self.first_seq);
        put_u64(out, 32, self.size);
        let crc = crc32c::crc32c(&out[0..60]);
        put_u32(out, 60, crc);
    }

    pub(crate) fn decode(b: &[u8]) -> Result<SegmentHeader, HeaderError> {
        if b.len() < SEGMENT_HEADER_LEN {
            return Err(HeaderError::Invalid("shorter than a segment header"));
        }
        if b[0..8] != MAGIC {
            return Err(HeaderError::Invalid("bad magic"));
        }
        if crc32c::crc32c(&b[0..60]) != u32_at(b, 60) {
            return Err(HeaderError::Invalid("header checksum mismatch"));
        }
        let version = u32_at(b, 8);
        if version > VERSION {
            return Err(HeaderError::NewerVersion(version));
        }
        if version != 0 && version < VERSION {
            return Err(HeaderError::OlderVersion(version));
        }
        if version == 0 || u32_at(b, 12) as usize != SEGMENT_HEADER_LEN {
            return Err(HeaderError::Invalid("unknown header layout"));
        }
        Ok(SegmentHeader { seq: u64_at(b, 16), first_seq: u64_at(b, 24), size: u64_at(b, 32) })
    }
}

// ----- records -----

/// The fields of a record header, as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub(crate) payload_len: u32,
    pub(crate) kind: Kind,
    pub(crate) flags: u8,
    pub(crate) meta_len: u32,
    pub(crate) seq: u64,
    pub(crate) durable: u64,
}

impl RecordHeader {
    /// Bytes the whole record takes, padding included.
    pub(crate) fn total_len(&self) -> usize {
        align(RECORD_HEADER_LEN + self.payload_len as usize)
    }
}

fn seed(segment_seq: u64) -> u32 {
    crc32c::crc32c(&segment_seq.to_le_bytes())
}

/// Writes the header of a record whose payload (`payload_len` bytes, of which the first
/// `meta_len` are checksummed here) is already in place after it, and zeroes the padding.
/// `out` starts at the record and spans at least its aligned length.
#[allow(clippy::too_many_arguments)]
pub(crate) fn finish_record(
    out: &mut [u8],
    segment_seq: u64,
    kind: Kind,
    seq: u64,
    durable: u64,
    payload_len: usize,
    meta_len: usize,
) -> usize {
    debug_assert!(meta_len <= payload_len);
    let total = align(RECORD_HEADER_LEN + payload_len);
    out[RECORD_HEADER_LEN + payload_len..total].fill(0);
    finish_header(out, segment_seq, kind, seq, durable, payload_len, meta_len);
    total
}

/// Fills in the header of a record whose metadata follows it in `out` (the payload after the
/// metadata is not read: its checksums are in the metadata).
pub(crate) fn finish_header(
    out: &mut [u8],
    segment_seq: u64,
    kind: Kind,
    seq: u64,
    durable: u64,
    payload_len: usize,
    meta_len: usize,
) {
    put_u32(out, 0, payload_len as u32);
    out[8] = kind as u8;
    out[9..12].fill(0);
    put_u32(out, 12, meta_len as u32);
    put_u64(out, 16, seq);
    put_u64(out, 24, durable);
    put_u32(out, 4, record_crc(out, segment_seq, meta_len));
}

fn record_crc(record: &[u8], segment_seq: u64, meta_len: usize) -> u32 {
    let crc = crc32c::crc32c_append(seed(segment_seq), &record[8..RECORD_HEADER_LEN]);
    crc32c::crc32c_append(crc, &record[RECORD_HEADER_LEN..RECORD_HEADER_LEN + meta_len])
}

/// Marks a finished record as the end of its write batch (and updates its checksum).
pub(crate) fn mark_batch_end(record: &mut [u8], segment_seq: u64) {
    record[9] |= FLAG_BATCH_END;
    let meta_len = u32_at(record, 12) as usize;
    put_u32(record, 4, record_crc(record, segment_seq, meta_len));
}

/// Why bytes at a position are not a valid record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecordError {
    /// Fewer bytes left than a header.
    Truncated,
    /// All zeros where a header should be: the clean end of a pre-written segment.
    Zeroed,
    /// The header's length runs past the segment, the kind is unknown or the metadata length
    /// is inconsistent.
    BadHeader,
    /// The checksum does not match.
    BadChecksum,
}

/// Decodes the record at the start of `b` (a slice to the end of the segment), checking the
/// header and metadata checksum. Data checksums of ENTRIES records are checked separately.
pub(crate) fn decode_record(b: &[u8], segment_seq: u64) -> Result<RecordHeader, RecordError> {
    if b.len() < RECORD_HEADER_LEN {
        return Err(RecordError::Truncated);
    }
    let head = &b[..RECORD_HEADER_LEN];
    if head.iter().all(|&x| x == 0) {
        return Err(RecordError::Zeroed);
    }
    let payload_len = u32_at(b, 0);
    let meta_len = u32_at(b, 12);
    let Some(kind) = Kind::from_u8(b[8]) else { return Err(RecordError::BadHeader) };
    let total = align(RECORD_HEADER_LEN + payload_len as usize);
    if total > b.len() || meta_len > payload_len {
        return Err(RecordError::BadHeader);
    }
    if record_crc(b, segment_seq, meta_len as usize) != u32_at(b, 4) {
        return Err(RecordError::BadChecksum);
    }
    if b[9] & !FLAG_BATCH_END != 0 {
        return Err(RecordError::BadHeader);
    }
    Ok(RecordHeader {
        payload_len,
        kind,
        flags: b[9],
        meta_len,
        seq: u64_at(b, 16),
        durable: u64_at(b, 24),
    })
}

// ----- payloads -----

/// One row of an ENTRIES record's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EntryRow {
    pub(crate) term: Term,
    pub(crate) len: u32,
    pub(crate) kind: EntryKind,
    pub(crate) crc: u32,
}

/// The decoded metadata of an ENTRIES record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct EntriesMeta {
    pub(crate) group: GroupId,
    pub(crate) first_index: Index,
    pub(crate) count: u32,
}

/// Decodes the fixed part of an ENTRIES payload; `meta` is the checked metadata.
pub(crate) fn decode_entries_meta(meta: &[u8], payload_len: usize) -> Option<EntriesMeta> {
    if meta.len() < ENTRIES_META_FIXED {
        return None;
    }
    let count = u32_at(meta, 16);
    let table_end = ENTRIES_META_FIXED.checked_add((count as usize).checked_mul(ENTRY_ROW_LEN)?)?;
    if table_end != meta.len() {
        return None;
    }
    let first_index = u64_at(meta, 8);
    if first_index == 0 || first_index.checked_add(count as u64).is_none() {
        return None;
    }
    // The data lengths must add up to the payload.
    let mut data = 0usize;
    for i in 0..count as usize {
        kind_of(u32_at(meta, ENTRIES_META_FIXED + i * ENTRY_ROW_LEN + 8))?;
        data = data.checked_add(row(meta, i).len as usize)?;
    }
    (table_end.checked_add(data)? == payload_len).then_some(EntriesMeta {
        group: u64_at(meta, 0),
        first_index,
        count,
    })
}

/// Row `i` of an ENTRIES table (the caller has validated the table with
/// [`decode_entries_meta`]).
pub(crate) fn row(meta: &[u8], i: usize) -> EntryRow {
    let at = ENTRIES_META_FIXED + i * ENTRY_ROW_LEN;
    let raw_len = u32_at(meta, at + 8);
    EntryRow {
        term: u64_at(meta, at),
        len: raw_len & !KIND_MASK,
        kind: kind_of(raw_len).unwrap_or(EntryKind::Normal),
        crc: u32_at(meta, at + 12),
    }
}

/// Writes the metadata of an ENTRIES record.
pub(crate) fn encode_entries_meta(out: &mut [u8], group: GroupId, first_index: Index, count: u32) {
    put_u64(out, 0, group);
    put_u64(out, 8, first_index);
    put_u32(out, 16, count);
    put_u32(out, 20, 0);
}

/// Writes row `i` of an ENTRIES table.
pub(crate) fn encode_row(out: &mut [u8], i: usize, r: EntryRow) {
    let at = ENTRIES_META_FIXED + i * ENTRY_ROW_LEN;
    put_u64(out, at, r.term);
    put_u32(out, at + 8, r.len | kind_bits(r.kind));
    put_u32(out, at + 12, r.crc);
}

/// HARD_STATE payload length.
pub(crate) const HARD_STATE_LEN: usize = 40;

pub(crate) fn encode_hard_state(out: &mut [u8], group: GroupId, hs: &HardState) {
    put_u64(out, 0, group);
    put_u64(out, 8, hs.term);
    put_u64(out, 16, hs.vote.unwrap_or(0));
    out[24..32].fill(0);
    out[24] = u8::from(hs.vote.is_some());
    put_u64(out, 32, hs.commit);
}

pub(crate) fn decode_hard_state(p: &[u8]) -> Option<(GroupId, HardState)> {
    if p.len() != HARD_STATE_LEN || p[24] > 1 {
        return None;
    }
    let vote = (p[24] == 1).then(|| u64_at(p, 16));
    Some((u64_at(p, 0), HardState { term: u64_at(p, 8), vote, commit: u64_at(p, 32) }))
}

/// TRUNCATE payload length.
pub(crate) const TRUNCATE_LEN: usize = 16;

pub(crate) fn encode_truncate(out: &mut [u8], group: GroupId, last_kept: Index) {
    put_u64(out, 0, group);
    put_u64(out, 8, last_kept);
}

pub(crate) fn decode_truncate(p: &[u8]) -> Option<(GroupId, Index)> {
    (p.len() == TRUNCATE_LEN).then(|| (u64_at(p, 0), u64_at(p, 8)))
}

/// COMPACT payload length.
pub(crate) const COMPACT_LEN: usize = 24;

pub(crate) fn encode_compact(out: &mut [u8], group: GroupId, through: Index, term: Term) {
    put_u64(out, 0, group);
    put_u64(out, 8, through);
    put_u64(out, 16, term);
}

pub(crate) fn decode_compact(p: &[u8]) -> Option<(GroupId, Index, Term)> {
    (p.len() == COMPACT_LEN).then(|| (u64_at(p, 0), u64_at(p, 8), u64_at(p, 16)))
}

/// What a checkpoint records for one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CheckpointRow {
    pub(crate) group: GroupId,
    pub(crate) base_index: Index,
    pub(crate) base_term: Term,
    pub(crate) hard_state: HardState,
}

pub(crate) fn checkpoint_len(groups: usize) -> usize {
    8 + groups * CHECKPOINT_ROW_LEN
}

pub(crate) fn encode_checkpoint(out: &mut [u8], rows: &[CheckpointRow]) {
    put_u32(out, 0, rows.len() as u32);
    put_u32(out, 4, 0);
    for (i, r) in rows.iter().enumerate() {
        let at = 8 + i * CHECKPOINT_ROW_LEN;
        put_u64(out, at, r.group);
        put_u64(out, at + 8, r.base_index);
        put_u64(out, at + 16, r.base_term);
        put_u64(out, at + 24, r.hard_state.term);
        put_u64(out, at + 32, r.hard_state.vote.unwrap_or(0));
        out[at + 40..at + 48].fill(0);
        out[at + 40] = u8::from(r.hard_state.vote.is_some());
        put_u64(out, at + 48, r.hard_state.commit);
    }
}

pub(crate) fn decode_checkpoint(p: &[u8]) -> Option<Vec<CheckpointRow>> {
    if p.len() < 8 {
        return None;
    }
    let count = u32_at(p, 0) as usize;
    if p.len() != checkpoint_len(count) {
        return None;
    }
    let mut rows = Vec::with_capacity(count);
    for i in 0..count {
        let at = 8 + i * CHECKPOINT_ROW_LEN;
        if p[at + 40] > 1 {
            return None;
        }
        let vote = (p[at + 40] == 1).then(|| u64_at(p, at + 32));
        rows.push(CheckpointRow {
            group: u64_at(p, at),
            base_index: u64_at(p, at + 8),
            base_term: u64_at(p, at + 16),
            hard_state: HardState { term: u64_at(p, at + 24), vote, commit: u64_at(p, at + 48) },
        });
    }
    Some(rows)
}

/// SEAL payload length.
pub(crate) const SEAL_LEN: usize = 8;

pub(crate) fn encode_seal(out: &mut [u8], next_seq: u64) {
    put_u64(out, 0, next_seq);
}

/// A record's payload, decoded by kind (for the readers that replay records without the
/// index: inspection and salvage).
pub(crate) enum Payload<'a> {
    /// An ENTRIES record: its fixed part and its table of rows (`row(table, i)`).
    Entries {
        meta: EntriesMeta,
        table: &'a [u8],
    },
    HardState(GroupId, HardState),
    Truncate {
        group: GroupId,
        last_kept: Index,
    },
    Compact {
        group: GroupId,
        through: Index,
        term: Term,
    },
    Checkpoint(Vec<CheckpointRow>),
    Seal,
}

/// Decodes the payload of a record whose header is `h`; `None` if it does not parse.
pub(crate) fn decode_payload<'a>(h: &RecordHeader, payload: &'a [u8]) -> Option<Payload<'a>> {
    Some(match h.kind {
        Kind::Entries => {
            let table = payload.get(..h.meta_len as usize)?;
            Payload::Entries { meta: decode_entries_meta(table, payload.len())?, table }
        }
        Kind::HardState => {
            let (group, hs) = decode_hard_state(payload)?;
            Payload::HardState(group, hs)
        }
        Kind::Truncate => {
            let (group, last_kept) = decode_truncate(payload)?;
            Payload::Truncate { group, last_kept }
        }
        Kind::Compact => {
            let (group, through, term) = decode_compact(payload)?;
            Payload::Compact { group, through, term }
        }
        Kind::Checkpoint => Payload::Checkpoint(decode_checkpoint(payload)?),
        Kind::Seal => Payload::Seal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: Kind, payload: &[u8], meta_len: usize, segment: u64) -> Vec<u8> {
        let mut buf = vec![0u8; align(RECORD_HEADER_LEN + payload.len())];
        buf[RECORD_HEADER_LEN..RECORD_HEADER_LEN + payload.len()].copy_from_slice(payload);
        finish_record(&mut buf, segment, kind, 7, 3, payload.len(), meta_len);
        buf
    }

    #[test]
    fn segment_header_round_trips_and_rejects_damage() {
        let h = SegmentHeader { seq: 5, first_seq: 99, size: 1 << 20 };
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        h.encode(&mut b);
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        let mut bad = b;
        bad[20] ^= 1;
        assert_eq!(
            SegmentHeader::decode(&bad),
            Err(HeaderError::Invalid("header checksum mismatch"))
        );
        let mut newer = b;
        put_u32(&mut newer, 8, VERSION + 1);
        let crc = crc32c::crc32c(&newer[0..60]);
        put_u32(&mut newer, 60, crc);
        assert_eq!(SegmentHeader::decode(&newer), Err(HeaderError::NewerVersion(VERSION + 1)));
        assert!(SegmentHeader::decode(&b[..10]).is_err());
    }

    #[test]
    fn records_round_trip_and_detect_every_flipped_bit() {
        let mut p = [0u8; TRUNCATE_LEN];
        encode_truncate(&mut p, 3, 41);
        let r = record(Kind::Truncate, &p, p.len(), 11);
        let h = decode_record(&r, 11).expect("valid");
        assert_eq!(
            (h.kind, h.seq, h.durable, h.payload_len),
            (Kind::Truncate, 7, 3, TRUNCATE_LEN as u32)
        );
        assert_eq!(
            decode_truncate(&r[RECORD_HEADER_LEN..RECORD_HEADER_LEN + TRUNCATE_LEN]),
            Some((3, 41))
        );
        // The same bytes in another segment's life do not validate.
        assert_eq!(decode_record(&r, 12), Err(RecordError::BadChecksum));
        for bit in 0..(RECORD_HEADER_LEN + TRUNCATE_LEN) * 8 {
            let mut bad = r.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_record(&bad, 11).is_err(), "flipped bit {bit} went unnoticed");
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics() {
        let mut rng = raft_core::rng::Rng::new(1);
        for _ in 0..20_000 {
            let len = rng.below(200) as usize;
            let b: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            let _ = decode_record(&b, 1);
            let _ = SegmentHeader::decode(&b);
            let _ = decode_entries_meta(&b, b.len());
            let _ = decode_checkpoint(&b);
            let _ = decode_hard_state(&b);
        }
    }

    #[test]
    fn entries_meta_must_add_up() {
        let mut meta = vec![0u8; ENTRIES_META_FIXED + 2 * ENTRY_ROW_LEN];
        encode_entries_meta(&mut meta, 4, 10, 2);
        encode_row(&mut meta, 0, EntryRow { term: 2, len: 5, kind: EntryKind::Normal, crc: 1 });
        encode_row(&mut meta, 1, EntryRow { term: 2, len: 0, kind: EntryKind::Noop, crc: 0 });
        let m = decode_entries_meta(&meta, meta.len() + 5).expect("valid");
        assert_eq!(m, EntriesMeta { group: 4, first_index: 10, count: 2 });
        assert_eq!(row(&meta, 1), EntryRow { term: 2, len: 0, kind: EntryKind::Noop, crc: 0 });
        assert!(decode_entries_meta(&meta, meta.len() + 4).is_none(), "lengths must add up");
        assert!(decode_entries_meta(&meta[..30], 30).is_none());
    }

    #[test]
    fn checkpoints_round_trip() {
        let rows = vec![
            CheckpointRow {
                group: 1,
                base_index: 10,
                base_term: 2,
                hard_state: HardState { term: 3, vote: Some(2), commit: 9 },
            },
            CheckpointRow {
                group: 9,
                base_index: 0,
                base_term: 0,
                hard_state: HardState::default(),
            },
        ];
        let mut p = vec![0u8; checkpoint_len(rows.len())];
        encode_checkpoint(&mut p, &rows);
        assert_eq!(decode_checkpoint(&p), Some(rows));
    }
}

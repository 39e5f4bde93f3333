//! Opening a WAL: locking the directory, scanning the segments, deciding where the log ends,
//! and rebuilding the index.
//!
//! # Where the log ends
//!
//! Records are read in order until the first position that does not hold the next valid
//! record. What follows decides what that position means:
//! - If any later valid record (in this segment or a later one) says, in its `durable` field,
//!   that the missing record had been made durable, the log was damaged after it was
//!   acknowledged: that is **corruption**, a [`WalError::Corrupt`] by default, or (with
//!   [`RecoveryMode::TruncateAtCorruption`]) a cut reported in [`RecoveryReport`].
//! - Otherwise nothing there was ever acknowledged: a **torn tail** from a crash. The log is cut
//!   there, the rest of that segment zeroed (so stale bytes can never be read as records later)
//!   and any later segment retired.
//!
//! # What is verified at open
//!
//! Record headers and metadata (including each ENTRIES record's table of terms, lengths and
//! payload checksums) are verified for every record. Payload checksums are verified at open only
//! for records no later record proves durable (the tail written since the last sync); every
//! other payload is verified lazily, when it is read. So reopening a large WAL reads headers and
//! tables, not payloads.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use raft_core::{GroupId, Index};

use crate::config::{Durability, RecoveryMode, WalConfig};
use crate::error::WalError;
use crate::format::{
    self, HeaderError, Kind, RecordHeader, SegmentHeader, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use crate::index::{GroupIndex, Loc};
use crate::segment::{self, Mapping, SegmentFile};
use crate::staging::Staging;
use crate::state::{drop_live, DurablePosition, Segment, State};

/// What opening the WAL found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files in use after recovery.
    pub segments: usize,
    /// Records replayed.
    pub records: u64,
    /// Entries held across groups.
    pub entries: u64,
    /// Groups held.
    pub groups: usize,
    /// Records whose payload checksums were verified at open (the rest are checked on read).
    pub payloads_verified: u64,
    /// A torn tail that was cut off: data that was never acknowledged durable.
    pub torn_tail: Option<TailCut>,
    /// Corruption that was cut off (only with `RecoveryMode::TruncateAtCorruption`): data that
    /// had been acknowledged and is now lost.
    pub corruption_cut: Option<TailCut>,
    /// Old segment files found before a hole in the sequence (left by an interrupted
    /// retirement) and removed.
    pub leftover_segments: usize,
    /// How long recovery took.
    pub elapsed: Duration,
    /// Groups whose log lost entries to damage and are not repaired yet: found by a salvage at
    /// this open or an earlier one ([`LogStore::damage`](raft_core::LogStore::damage)).
    pub damage: BTreeMap<GroupId, raft_core::LogDamage>,
    /// What a salvage did, if this open had to salvage a damaged log.
    pub salvage: Option<crate::salvage::SalvageReport>,
}

/// Where the log was cut and what was dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TailCut {
    /// The segment file holding the cut.
    pub segment: PathBuf,
    /// The byte offset of the cut.
    pub offset: u64,
    /// Valid records found after the cut and dropped with it.
    pub records_dropped: u64,
    /// Later segment files retired.
    pub segments_dropped: usize,
    /// Why the position did not hold a valid record.
    pub reason: String,
}

/// A valid record found by the scan.
#[derive(Clone, Copy, Debug)]
struct Found {
    segment: u64,
    offset: usize,
    header: RecordHeader,
}

/// The first position that did not hold the next record.
#[derive(Clone, Debug)]
struct Stop {
    segment: u64,
    offset: usize,
    /// The `seq` the record there should have had.
    expected_seq: u64,
    reason: String,
    /// Something was being written there (its header names the expected seq).
    torn: bool,
    /// Bytes from `offset` on that may hold records of this segment's current life and must be
    /// zeroed when the log is cut here: new records reuse the same sequence numbers, so a
    /// stale valid record left ahead of the writer could otherwise be read back as new.
    zero_until: usize,
}

fn corrupt(path: &Path, offset: u64, detail: impl Into<String>) -> WalError {
    WalError::Corrupt { path: path.to_path_buf(), offset, detail: detail.into() }
}

/// What recovery found, and what the WAL is built from: the write state (segments, index,
/// where the next record goes), the directory lock, the report, and where the durable log ends.
pub(crate) struct Recovered {
    pub(crate) state: State,
    pub(crate) lock: File,
    pub(crate) report: RecoveryReport,
    pub(crate) durable: DurablePosition,
}

/// Checks the directory, takes its lock, and recovers what it holds.
pub(crate) fn recover(dir: &Path, config: &WalConfig) -> Result<Recovered, WalError> {
    let started = Instant::now();
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(WalError::MissingDirectory { path: dir.to_path_buf() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(WalError::MissingDirectory { path: dir.to_path_buf() })
        }
        Err(e) => return Err(WalError::io(dir, e)),
    }
    let lock_path = dir.join("LOCK");
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                WalError::NotWritable { path: dir.to_path_buf(), source }
            }
            _ => WalError::io(&lock_path, source),
        })?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(WalError::Locked { path: dir.to_path_buf(), lock: lock_path })
        }
        Err(TryLockError::Error(e)) => return Err(WalError::io(&lock_path, e)),
    }

    // Inventory.
    let mut segments: BTreeMap<u64, PathBuf> = BTreeMap::new();
    let mut prepared: Vec<(u64, PathBuf)> = Vec::new();
    let mut next_prepared_id = 0u64;
    for entry in std::fs::read_dir(dir).map_err(|e| WalError::io(dir, e))? {
        let entry = entry.map_err(|e| WalError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        if let Some(seq) = segment::parse_segment_name(name) {
            segments.insert(seq, path);
        } else if segment::is_partial_name(name) {
            // A preparation a crash interrupted.
            std::fs::remove_file(&path).map_err(|e| WalError::io(&path, e))?;
        } else if segment::is_prepared_name(name) {
            let id = name
                .trim_start_matches("prepared-")
                .trim_end_matches(".tmp")
                .parse::<u64>()
                .unwrap_or(0);
            next_prepared_id = next_prepared_id.max(id + 1);
            let len = entry.metadata().map_err(|e| WalError::io(&path, e))?.len();
            if len == config.segment_size_bytes {
                prepared.push((id, path));
            } else {
                std::fs::remove_file(&path).map_err(|e| WalError::io(&path, e))?;
            }
        }
    }
    prepared.sort_unstable();
    let mut state = State {
        segments: BTreeMap::new(),
        active: 0,
        offset: SEGMENT_HEADER_LEN,
        active_sealed: false,
        next_seq: 1,
        groups: HashMap::new(),
        prepared: prepared.into_iter().map(|(_, p)| p).collect::<VecDeque<_>>(),
        next_prepared_id,
        unsynced_sealed: Vec::new(),
        last_record: (0, SEGMENT_HEADER_LEN),
        append_via: config.append_via,
        staging: Staging::new(SEGMENT_HEADER_LEN),
        start_writeback: config.durability != Durability::Never,
        votes_dirty: false,
    };
    let mut report = RecoveryReport::default();

    if segments.is_empty() {
        create_first_segment(dir, config, &mut state)?;
        report.segments = 1;
        report.elapsed = started.elapsed();
        let end = DurablePosition { seq: 0, segment: state.active, offset: state.offset as u64 };
        return Ok(Recovered { state, lock, report, durable: end });
    }

    // The log is the contiguous run of segments ending at the newest; anything before a hole
    // is a leftover of an interrupted retirement (checked below: if it held live entries, the
    // index will show the gap).
    let newest = *segments.keys().next_back().unwrap_or(&0);
    let mut first = newest;
    while first > 0 && segments.contains_key(&(first - 1)) {
        first -= 1;
    }
    let leftovers: Vec<PathBuf> = segments.range(..first).map(|(_, p)| p.clone()).collect();
    let run: Vec<(u64, PathBuf)> = segments.range(first..).map(|(&s, p)| (s, p.clone())).collect();

    // Pass 1: headers, metadata, durability claims.
    let mut files: BTreeMap<u64, SegmentFile> = BTreeMap::new();
    let mut found: Vec<Found> = Vec::new();
    let mut stop: Option<Stop> = None;
    let mut expected_seq: Option<u64> = None;
    let mut sealed_last = false;
    let mut empty_last: Option<u64> = None;
    for (i, (seq, path)) in run.iter().enumerate() {
        let is_last = i + 1 == run.len();
        let file = SegmentFile::open(path, *seq, Mapping::for_appends(config.append_via, false))?;
        match SegmentHeader::decode(file.bytes()) {
            Ok(h) if h.seq != *seq && is_last && stop.is_none() => {
                // A recycled file renamed into place whose header was not rewritten yet: its old
                // header is still valid, but names the file's previous life. Nothing of the new
                // segment was written, as with an unreadable header.
                tracing::info!(path = %path.display(), old_seq = h.seq, "segment roll was interrupted");
                empty_last = Some(*seq);
            }
            // After reading stopped, later segments only serve as evidence for the claims check.
            Ok(_) if stop.is_some() => {}
            Ok(h) => {
                if h.seq != *seq || h.size != file.len() as u64 {
                    return Err(corrupt(
                        path,
                        0,
                        format!(
                            "header says segment {} of {} bytes, file is segment {seq} of {} bytes",
                            h.seq,
                            h.size,
                            file.len()
                        ),
                    ));
                }
                if let Some(e) = expected_seq {
                    if h.first_seq != e && stop.is_none() {
                        return Err(corrupt(
                            path,
                            0,
                            format!(
                                "segment starts at record {} but the previous one ended before {e}",
                                h.first_seq
                            ),
                        ));
                    }
                }
                let start = expected_seq.unwrap_or(h.first_seq);
                if stop.is_none() {
                    let (records, sealed, end) = scan_segment(&file, start, &mut found);
                    sealed_last = sealed;
                    expected_seq = Some(start + records);
                    if !sealed {
                        if let Some(s) = end {
                            stop = Some(s);
                        }
                    }
                }
            }
            Err(HeaderError::NewerVersion(version)) => {
                return Err(WalError::NewerVersion {
                    path: path.clone(),
                    version,
                    supported: format::VERSION,
                })
            }
            Err(HeaderError::OlderVersion(version)) => {
                return Err(WalError::OlderVersion {
                    path: path.clone(),
                    version,
                    supported: format::VERSION,
                })
            }
            Err(HeaderError::Invalid(why)) => {
                if is_last && stop.is_none() {
                    // A roll interrupted after the rename, before the header: nothing was ever
                    // written to this segment.
                    empty_last = Some(*seq);
                } else if stop.is_none() {
                    return Err(corrupt(path, 0, format!("invalid segment header: {why}")));
                }
            }
        }
        files.insert(*seq, file);
    }

    // Decide what the first unreadable position means.
    let mut cut_records_dropped = 0u64;
    if let Some(s) = stop.as_mut() {
        let claims = later_claims(&files, s);
        s.zero_until = s.zero_until.max(claims.end_in_segment);
        let path = files.get(&s.segment).map(|f| f.path.clone()).unwrap_or_default();
        if claims.max_durable >= s.expected_seq {
            let detail = format!(
                "record {} is unreadable ({}) but a later record says records up to {} were durable",
                s.expected_seq, s.reason, claims.max_durable
            );
            match config.recovery {
                // Salvage reads the log again from scratch (crate::salvage).
                RecoveryMode::Strict | RecoveryMode::Salvage => {
                    return Err(corrupt(&path, s.offset as u64, detail))
                }
                RecoveryMode::TruncateAtCorruption => {
                    tracing::error!(path = %path.display(), offset = s.offset, %detail, "cutting the log at corruption");
                    report.corruption_cut = Some(TailCut {
                        segment: path,
                        offset: s.offset as u64,
                        records_dropped: claims.valid_records,
                        segments_dropped: 0,
                        reason: detail,
                    });
                }
            }
        } else if s.torn || claims.valid_records > 0 {
            report.torn_tail = Some(TailCut {
                segment: path,
                offset: s.offset as u64,
                records_dropped: claims.valid_records,
                segments_dropped: 0,
                reason: s.reason.clone(),
            });
        }
        cut_records_dropped = claims.valid_records;
    }

    // Pass 2: payload checksums of the records no later record proves durable.
    let proven = found.iter().map(|f| f.header.durable).max().unwrap_or(0);
    let mut keep = found.len();
    let mut unverified: BTreeMap<u64, bool> = BTreeMap::new();
    for (i, f) in found.iter().enumerate() {
        if f.header.kind != Kind::Entries {
            continue;
        }
        if f.header.seq <= proven {
            unverified.insert(f.segment, true);
            continue;
        }
        report.payloads_verified += 1;
        let Some(file) = files.get(&f.segment) else { continue };
        if !payloads_ok(file.bytes(), f) {
            // Nothing claims this record durable (its seq is past every claim): a torn write.
            keep = i;
            report.torn_tail = Some(TailCut {
                segment: file.path.clone(),
                offset: f.offset as u64,
                records_dropped: (found.len() - i - 1) as u64 + cut_records_dropped,
                segments_dropped: 0,
                reason: "entry payload checksum mismatch".into(),
            });
            // Everything from this record to where reading stopped (and past it, whatever the
            // earlier stop had to clear) goes.
            let previous_end = match &stop {
                Some(s) if s.segment == f.segment => s.zero_until,
                _ => file.len(),
            };
            stop = Some(Stop {
                segment: f.segment,
                offset: f.offset,
                expected_seq: f.header.seq,
                reason: "entry payload checksum mismatch".into(),
                torn: true,
                zero_until: previous_end.max(f.offset + f.header.total_len()),
            });
            break;
        }
    }
    found.truncate(keep);

    // Keep whole batches only: drop the records after the last batch end.
    let complete = found
        .iter()
        .rposition(|f| f.header.flags & format::FLAG_BATCH_END != 0)
        .map_or(0, |i| i + 1);
    if complete < found.len() {
        let first = found[complete];
        let zero_until = found[complete..]
            .iter()
            .filter(|f| f.segment == first.segment)
            .map(|f| f.offset + f.header.total_len())
            .chain(stop.as_ref().filter(|s| s.segment == first.segment).map(|s| s.zero_until))
            .max()
            .unwrap_or(first.offset);
        let dropped = (found.len() - complete) as u64;
        let reason = "the last write batch did not reach the disk whole".to_string();
        match report.torn_tail.as_mut() {
            Some(cut) => {
                cut.segment = files.get(&first.segment).map(|f| f.path.clone()).unwrap_or_default();
                cut.offset = first.offset as u64;
                cut.records_dropped += dropped;
            }
            None => {
                report.torn_tail = Some(TailCut {
                    segment: files.get(&first.segment).map(|f| f.path.clone()).unwrap_or_default(),
                    offset: first.offset as u64,
                    records_dropped: dropped,
                    segments_dropped: 0,
                    reason: reason.clone(),
                });
            }
        }
        stop = Some(Stop {
            segment: first.segment,
            offset: first.offset,
            expected_seq: first.header.seq,
            reason,
            torn: true,
            zero_until,
        });
        found.truncate(complete);
    }

    // Cut the tail: zero the rest of the segment holding the cut, retire later segments.
    let mut retire: Vec<u64> = Vec::new();
    if let Some(s) = &stop {
        if let Some(file) = files.get_mut(&s.segment) {
            let until = s.zero_until.min(file.len());
            if until > s.offset {
                file.zero(s.offset..until)?;
                file.file.sync_data().map_err(|e| WalError::io(&file.path, e))?;
            }
        }
        retire.extend(files.range(s.segment + 1..).map(|(&seq, _)| seq));
        sealed_last = false;
        empty_last = None;
    }
    let dropped_segments = retire.len();
    if let Some(cut) = report.torn_tail.as_mut().or(report.corruption_cut.as_mut()) {
        cut.segments_dropped = dropped_segments;
    }
    for seq in &retire {
        if let Some(f) = files.remove(seq) {
            let path = f.path.clone();
            drop(f);
            std::fs::remove_file(&path).map_err(|e| WalError::io(&path, e))?;
        }
    }

    // Pass 3: rebuild the index.
    let mut segs: BTreeMap<u64, Segment> = BTreeMap::new();
    for (seq, file) in files {
        let verified = !unverified.contains_key(&seq);
        segs.insert(seq, Segment { file, live: 0, verified });
    }
    let mut groups: HashMap<GroupId, GroupIndex> = HashMap::new();
    let mut gaps: HashMap<GroupId, Gap> = HashMap::new();
    for f in &found {
        replay(&mut segs, &mut groups, &mut gaps, f)?;
    }
    if let Some((&group, gap)) = gaps.iter().next() {
        let first = segs.values().next().map(|s| s.file.path.clone()).unwrap_or_default();
        let until = groups.get(&group).map_or(0, |g| g.base_index);
        return Err(corrupt(
            &first,
            0,
            format!(
            "group {group} lacks entries {}..={until}: a segment holding live entries is missing",
            gap.base + 1
        ),
        ));
    }
    report.records = found.len() as u64;

    // The active segment and the write position.
    let last_seq = found.last().map(|f| f.header.seq);
    state.next_seq = last_seq.map_or_else(|| expected_seq.unwrap_or(1).max(1), |s| s + 1);
    state.active = *segs.keys().next_back().unwrap_or(&first);
    state.offset = found
        .iter()
        .rev()
        .find(|f| f.segment == state.active)
        .map_or(SEGMENT_HEADER_LEN, |f| f.offset + f.header.total_len());
    state.active_sealed = sealed_last;
    state.segments = segs;
    state.groups = groups;
    if let Some(seq) = empty_last.filter(|&s| s == state.active) {
        // Finish the interrupted roll: header and checkpoint.
        let next_seq = state.next_seq;
        if let Some(seg) = state.segments.get_mut(&seq) {
            let header = SegmentHeader { seq, first_seq: next_seq, size: seg.file.len() as u64 };
            crate::state::write_header(&mut seg.file, &header)?;
            seg.verified = true;
        }
        state.offset = SEGMENT_HEADER_LEN;
        write_checkpoint_at_open(&mut state)?;
    } else if state.segments.get(&state.active).is_some_and(|s| {
        SegmentHeader::decode(s.file.bytes()).is_ok() && state.offset == SEGMENT_HEADER_LEN
    }) {
        // A segment whose checkpoint was lost with the torn tail: it starts again.
        write_checkpoint_at_open(&mut state)?;
    }

    // Everything kept is made durable now, so the durable position is the end of the log.
    for seg in state.segments.values() {
        seg.file.file.sync_data().map_err(|e| WalError::io(&seg.file.path, e))?;
    }
    for path in &leftovers {
        std::fs::remove_file(path).map_err(|e| WalError::io(path, e))?;
    }
    report.leftover_segments = leftovers.len();
    segment::sync_dir(dir)?;

    report.segments = state.segments.len();
    report.groups = state.groups.len();
    report.entries = state.groups.values().map(|g| g.locs.len() as u64).sum();
    report.elapsed = started.elapsed();
    let end = DurablePosition {
        seq: state.next_seq - 1,
        segment: state.active,
        offset: state.offset as u64,
    };
    tracing::info!(
        dir = %dir.display(),
        segments = report.segments,
        records = report.records,
        entries = report.entries,
        torn_tail = report.torn_tail.is_some(),
        elapsed_ms = report.elapsed.as_millis() as u64,
        "WAL recovered"
    );
    Ok(Recovered { state, lock, report, durable: end })
}

/// Reads a segment's records from offset 64, expecting `seq` first. Returns how many valid
/// records it found, whether it ended with a SEAL, and where reading stopped otherwise.
fn scan_segment(
    file: &SegmentFile,
    mut seq: u64,
    found: &mut Vec<Found>,
) -> (u64, bool, Option<Stop>) {
    let bytes = file.bytes();
    let mut offset = SEGMENT_HEADER_LEN;
    let mut records = 0;
    loop {
        let reason = match format::decode_record(&bytes[offset..], file.seq) {
            Ok(h) if h.seq == seq && record_payload_ok(bytes, offset, &h) => {
                found.push(Found { segment: file.seq, offset, header: h });
                records += 1;
                seq += 1;
                offset += h.total_len();
                if h.kind == Kind::Seal {
                    return (records, true, None);
                }
                continue;
            }
            Ok(h) if h.seq != seq => format!("record {} where {seq} was expected", h.seq),
            Ok(_) => "record metadata is malformed".to_string(),
            Err(e) => format!("{e:?}"),
        };
        let (torn, extent) = if bytes.len() >= offset + RECORD_HEADER_LEN {
            let field = |at: usize| {
                let mut raw = [0u8; 8];
                raw.copy_from_slice(&bytes[offset + at..offset + at + 8]);
                u64::from_le_bytes(raw)
            };
            let len = field(0) as u32 as usize;
            let extent = format::align(RECORD_HEADER_LEN + len).min(bytes.len() - offset);
            (field(16) == seq, extent)
        } else {
            (false, 0)
        };
        let zero_until = if torn { offset + extent } else { offset };
        let stop = Stop { segment: file.seq, offset, expected_seq: seq, reason, torn, zero_until };
        return (records, false, Some(stop));
    }
}

/// Checks a record's payload structure (the parts the header checksum covers).
pub(crate) fn record_payload_ok(bytes: &[u8], offset: usize, h: &RecordHeader) -> bool {
    let start = offset + RECORD_HEADER_LEN;
    let payload = &bytes[start..start + h.payload_len as usize];
    let meta = &payload[..h.meta_len as usize];
    match h.kind {
        Kind::Entries => format::decode_entries_meta(meta, payload.len()).is_some(),
        Kind::HardState => format::decode_hard_state(payload).is_some(),
        Kind::Truncate => format::decode_truncate(payload).is_some(),
        Kind::Compact => format::decode_compact(payload).is_some(),
        Kind::Checkpoint => format::decode_checkpoint(payload).is_some(),
        Kind::Seal => payload.len() == format::SEAL_LEN,
    }
}

/// Verifies every entry payload checksum of an ENTRIES record.
fn payloads_ok(bytes: &[u8], f: &Found) -> bool {
    let start = f.offset + RECORD_HEADER_LEN;
    let payload = &bytes[start..start + f.header.payload_len as usize];
    let meta = &payload[..f.header.meta_len as usize];
    let Some(m) = format::decode_entries_meta(meta, payload.len()) else { return false };
    let mut at = f.header.meta_len as usize;
    for i in 0..m.count as usize {
        let row = format::row(meta, i);
        let data = &payload[at..at + row.len as usize];
        if crc32c::crc32c(data) != row.crc {
            return false;
        }
        at += row.len as usize;
    }
    true
}

/// What valid records after a stop say.
struct Claims {
    max_durable: u64,
    valid_records: u64,
    /// The end of the furthest valid record in the stop's own segment.
    end_in_segment: usize,
}

/// Looks for valid records after `stop`: in the rest of its segment (at every aligned offset)
/// and in every later segment.
fn later_claims(files: &BTreeMap<u64, SegmentFile>, stop: &Stop) -> Claims {
    let mut claims = Claims { max_durable: 0, valid_records: 0, end_in_segment: stop.offset };
    for (&seq, file) in files.range(stop.segment..) {
        let bytes = file.bytes();
        let mut offset =
            if seq == stop.segment { stop.offset + format::ALIGN } else { SEGMENT_HEADER_LEN };
        while offset + RECORD_HEADER_LEN <= bytes.len() {
            match format::decode_record(&bytes[offset..], seq) {
                Ok(h) if h.seq > stop.expected_seq.saturating_sub(1) => {
                    claims.max_durable = claims.max_durable.max(h.durable);
                    claims.valid_records += 1;
                    offset += h.total_len();
                    if seq == stop.segment {
                        claims.end_in_segment = claims.end_in_segment.max(offset);
                    }
                }
                _ => offset += format::ALIGN,
            }
        }
    }
    claims
}

/// Entries of a group that lived in retired segments and are not accounted for yet: the log
/// provably holds nothing live in `(base, group.base_index]`, pending a compaction (or a
/// truncation) that shows those entries dead.
#[derive(Clone, Copy, Debug)]
struct Gap {
    /// The group's base before the gap, as the replay knows it.
    base: Index,
    base_term: raft_core::Term,
}

/// Applies one record to the index.
///
/// Entries whose segments were retired (all dead when retired) can leave a group's first
/// replayed entry past `base + 1`. The replay accepts that tentatively, as a [`Gap`], and
/// closes it when a later compaction, checkpoint or truncation shows the missing entries dead;
/// a gap still open at the end means a segment with live entries is missing.
fn replay(
    segs: &mut BTreeMap<u64, Segment>,
    groups: &mut HashMap<GroupId, GroupIndex>,
    gaps: &mut HashMap<GroupId, Gap>,
    f: &Found,
) -> Result<(), WalError> {
    let Some(seg) = segs.get(&f.segment) else { return Ok(()) };
    let path = seg.file.path.clone();
    let start = f.offset + RECORD_HEADER_LEN;
    // Only the checked metadata is read (for ENTRIES, the table, not the payloads).
    let payload_len = f.header.payload_len as usize;
    let payload = seg.file.bytes()[start..start + f.header.meta_len as usize].to_vec();
    let bad =
        |what: &str| corrupt(&path, f.offset as u64, format!("record {}: {what}", f.header.seq));
    match f.header.kind {
        Kind::Checkpoint => {
            let rows = format::decode_checkpoint(&payload).ok_or_else(|| bad("bad checkpoint"))?;
            for row in rows {
                let g = groups
                    .entry(row.group)
                    .or_insert_with(|| GroupIndex::with_base(row.base_index, row.base_term));
                g.hard_state = row.hard_state;
                close_gap(gaps, g, row.group, row.base_index, row.base_term);
                if row.base_index > g.base_index {
                    g.compact(row.base_index, row.base_term, |loc| drop_live(segs, loc));
                }
            }
        }
        Kind::HardState => {
            let (group, hs) =
                format::decode_hard_state(&payload).ok_or_else(|| bad("bad hard state"))?;
            groups.entry(group).or_default().hard_state = hs;
        }
        Kind::Truncate => {
            let (group, last_kept) =
                format::decode_truncate(&payload).ok_or_else(|| bad("bad truncation"))?;
            let g = groups.entry(group).or_default();
            if let Some(gap) = gaps.get(&group).copied() {
                if last_kept < g.base_index {
                    // The truncation reaches into the gap: the missing entries after
                    // `last_kept` are gone, so the gap shrinks (or closes).
                    g.truncate_after(g.base_index, |loc| drop_live(segs, loc));
                    let hs = g.hard_state;
                    if last_kept <= gap.base {
                        gaps.remove(&group);
                        *g = GroupIndex::with_base(gap.base, gap.base_term);
                    } else {
                        *g = GroupIndex::with_base(last_kept, 0);
                    }
                    g.hard_state = hs;
                    return Ok(());
                }
            }
            g.truncate_after(last_kept, |loc| drop_live(segs, loc));
        }
        Kind::Compact => {
            let (group, through, term) =
                format::decode_compact(&payload).ok_or_else(|| bad("bad compaction"))?;
            let g = groups.entry(group).or_default();
            close_gap(gaps, g, group, through, term);
            g.compact(through, term, |loc| drop_live(segs, loc));
        }
        Kind::Entries => {
            let meta = &payload[..];
            let m =
                format::decode_entries_meta(meta, payload_len).ok_or_else(|| bad("bad entries"))?;
            let g = groups.entry(m.group).or_default();
            let mut at = f.header.meta_len as usize;
            let mut added = 0u64;
            for i in 0..m.count as usize {
                let row = format::row(meta, i);
                let index = m.first_index + i as Index;
                let offset = (start + at) as u32;
                at += row.len as usize;
                if index <= g.base_index {
                    continue; // compacted since
                }
                if index > g.last_index() + 1 {
                    if g.locs.len() > 0 {
                        return Err(bad(&format!(
                            "group {} entry {index} follows entry {}",
                            m.group,
                            g.last_index()
                        )));
                    }
                    let gap = gaps
                        .entry(m.group)
                        .or_insert(Gap { base: g.base_index, base_term: g.base_term });
                    gap.base = gap.base.min(g.base_index);
                    g.base_index = index - 1;
                    g.base_term = 0;
                } else if index <= g.last_index() {
                    return Err(bad(&format!(
                        "group {} entry {index} overlaps without a truncation",
                        m.group
                    )));
                }
                let loc = Loc::new(f.segment as u32, offset, row.len, row.kind, row.crc);
                g.push(row.term, loc);
                added += 1;
            }
            if let Some(seg) = segs.get_mut(&f.segment) {
                seg.live += added;
            }
        }
        Kind::Seal => {}
    }
    Ok(())
}

/// A compaction (or checkpoint) through `through` shows the entries up to it dead: a gap that
/// ends at or before it closes; one that ends after it now starts there.
fn close_gap(
    gaps: &mut HashMap<GroupId, Gap>,
    g: &mut GroupIndex,
    group: GroupId,
    through: Index,
    term: raft_core::Term,
) {
    let Some(gap) = gaps.get_mut(&group) else { return };
    if through >= g.base_index {
        if through == g.base_index {
            g.base_term = term;
        }
        gaps.remove(&group);
    } else if through > gap.base {
        gap.base = through;
        gap.base_term = term;
    }
}

/// Creates segment 1 of a new WAL.
fn create_first_segment(dir: &Path, config: &WalConfig, state: &mut State) -> Result<(), WalError> {
    let path = match state.prepared.pop_front() {
        Some(p) => p,
        None => {
            let id = state.next_prepared_id;
            state.next_prepared_id += 1;
            segment::prepare_new(dir, id, config.segment_size_bytes, segment::Fill::Zeros)?
        }
    };
    let dest = dir.join(segment::segment_name(1));
    std::fs::rename(&path, &dest).map_err(|e| WalError::io(&dest, e))?;
    let mut file = SegmentFile::open(&dest, 1, Mapping::for_appends(config.append_via, true))?;
    let header = SegmentHeader { seq: 1, first_seq: 1, size: file.len() as u64 };
    crate::state::write_header(&mut file, &header)?;
    state.segments.insert(1, Segment { file, live: 0, verified: true });
    state.active = 1;
    state.offset = SEGMENT_HEADER_LEN;
    state.next_seq = 1;
    write_checkpoint_at_open(state)?;
    if let Some(seg) = state.segments.get(&1) {
        seg.file.file.sync_data().map_err(|e| WalError::io(&seg.file.path, e))?;
    }
    segment::sync_dir(dir)
}

/// Writes a checkpoint at the write position (the start of the active segment).
fn write_checkpoint_at_open(state: &mut State) -> Result<(), WalError> {
    let durable = state.next_seq.saturating_sub(1);
    state.staging.reset(state.offset);
    crate::state::put_checkpoint(state, durable);
    crate::state::end_batch(state);
    crate::state::flush_staged(state)
}

//! Offline inspection of a WAL directory: every segment read and checked without changing a
//! byte (no lock taken, nothing cut or zeroed), reporting what is damaged instead of refusing.
//!
//! Records are read in order. A record that does not check out is reported with its segment and
//! offset, and the scan resynchronises at the next position (8-byte aligned) that holds a valid
//! record, so records after damage are still read. Within ENTRIES records each entry's payload
//! checksum is checked, so a flipped byte in one entry is reported as that entry's index. The
//! records are replayed as recovery would (appends, truncations, compactions, checkpoints) to
//! give each group's log range, its hard state, and which of its live entries are damaged.
//!
//! A damaged region whose records cannot be read at all is reported as such: what groups it
//! held is unknown, which is what [`Inspection::unreadable`] says.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use raft_core::{EntryKind, GroupId, HardState, Index, Term};

use crate::error::WalError;
use crate::format::{self, Kind, Payload, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use crate::recovery::record_payload_ok;
use crate::segment::parse_segment_name;

/// A stretch of a segment that holds no readable record although valid records follow it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreadable {
    /// The segment file.
    pub path: PathBuf,
    /// Where the damage starts.
    pub offset: u64,
    /// Where the next valid record starts.
    pub resumes_at: u64,
    /// What was wrong with the first record there.
    pub reason: String,
}

/// What the scan found of one group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupInspection {
    /// The index before the first entry held (the compaction boundary) and its term.
    pub base: (Index, Term),
    /// The last index held.
    pub last_index: Index,
    /// The latest hard state found (from a HARD_STATE record or a checkpoint).
    pub hard_state: Option<HardState>,
    /// Live entries whose payload does not match its checksum, as inclusive index ranges.
    pub damaged: Vec<(Index, Index)>,
    /// Indexes between the base and the last index that no readable record holds (they were in
    /// an unreadable stretch), as inclusive ranges.
    pub missing: Vec<(Index, Index)>,
    /// ENTRIES records of the group read.
    pub records: u64,
    /// Term and vote in their second copy (the `VOTES` files), if it holds the group.
    pub votes_copy: Option<(Term, Option<raft_core::NodeId>)>,
}

/// One entry of a dumped group ([`inspect_with`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryInfo {
    /// Its index.
    pub index: Index,
    /// Its term.
    pub term: Term,
    /// Command, no-op or membership change.
    pub kind: EntryKind,
    /// Payload bytes.
    pub len: u32,
    /// Whether the payload matches its checksum.
    pub intact: bool,
}

/// What [`inspect`] found in a directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inspection {
    /// Segment files read, in sequence order.
    pub segments: Vec<PathBuf>,
    /// Records that checked out.
    pub records: u64,
    /// Stretches that could not be read although valid records follow them.
    pub unreadable: Vec<Unreadable>,
    /// Segment files whose header is not valid (all their records are lost).
    pub bad_segments: Vec<(PathBuf, String)>,
    /// Each group seen, by id.
    pub groups: BTreeMap<GroupId, GroupInspection>,
    /// The live entries of the group asked for with [`inspect_with`], in index order.
    pub dump: Vec<EntryInfo>,
    /// Why a copy of the votes could not be read. One file of the two may be torn by a crash
    /// while it was written (the other then holds the previous image), so this alone is not
    /// counted as damage.
    pub votes_unreadable: Vec<String>,
}

impl Inspection {
    /// Whether nothing is damaged.
    pub fn is_healthy(&self) -> bool {
        self.unreadable.is_empty()
            && self.bad_segments.is_empty()
            && self.groups.values().all(|g| g.damaged.is_empty() && g.missing.is_empty())
    }
}

/// One group's entries as replayed: index -> (term, payload intact, kind, length).
#[derive(Default)]
struct Replay {
    base: (Index, Term),
    entries: BTreeMap<Index, (Term, bool, EntryKind, u32)>,
    hard_state: Option<HardState>,
    records: u64,
}

impl Replay {
    fn truncate_after(&mut self, last_kept: Index) {
        self.entries.split_off(&(last_kept + 1));
    }

    fn compact(&mut self, through: Index, term: Term) {
        if through <= self.base.0 {
            return;
        }
        let holds = self.entries.get(&through).is_some_and(|e| e.0 == term);
        if holds {
            self.entries = self.entries.split_off(&(through + 1));
        } else {
            self.entries.clear();
        }
        self.base = (through, term);
    }
}

/// Reads every segment of the WAL in `dir` and reports what is damaged, without changing
/// anything (the WAL may even be open in another process: what it has not written yet is then
/// simply not seen).
pub fn inspect(dir: &Path) -> Result<Inspection, WalError> {
    inspect_with(dir, None)
}

/// [`inspect`], also listing every live entry of group `dump` ([`Inspection::dump`]).
pub fn inspect_with(dir: &Path, dump: Option<GroupId>) -> Result<Inspection, WalError> {
    let io =
        |path: &Path, source: std::io::Error| WalError::Io { path: path.to_path_buf(), source };
    let mut seqs: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let entry = entry.map_err(|e| io(dir, e))?;
        if let Some(seq) = entry.file_name().to_str().and_then(parse_segment_name) {
            seqs.push((seq, entry.path()));
        }
    }
    seqs.sort_unstable();
    let mut out = Inspection::default();
    let mut groups: BTreeMap<GroupId, Replay> = BTreeMap::new();
    for (_, path) in seqs {
        let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
        out.segments.push(path.clone());
        let header = match format::SegmentHeader::decode(&bytes) {
            Ok(h) => h,
            Err(e) => {
                out.bad_segments.push((path, format!("{e:?}")));
                continue;
            }
        };
        scan(&bytes, header.seq, &path, &mut out, &mut groups);
    }
    if let Some(g) = dump.and_then(|g| groups.get(&g)) {
        out.dump = g
            .entries
            .iter()
            .map(|(&index, &(term, intact, kind, len))| EntryInfo {
                index,
                term,
                kind,
                len,
                intact,
            })
            .collect();
    }
    out.groups = groups
        .into_iter()
        .map(|(id, r)| {
            let last_index = r.entries.keys().next_back().copied().unwrap_or(r.base.0);
            let mut damaged: Vec<(Index, Index)> = Vec::new();
            for (&i, &(_, intact, _, _)) in &r.entries {
                if intact {
                    continue;
                }
                match damaged.last_mut() {
                    Some(range) if range.1 + 1 == i => range.1 = i,
                    _ => damaged.push((i, i)),
                }
            }
            let mut missing: Vec<(Index, Index)> = Vec::new();
            let mut expected = r.base.0 + 1;
            for &i in r.entries.keys() {
                if i > expected {
                    missing.push((expected, i - 1));
                }
                expected = i + 1;
            }
            let g = GroupInspection {
                base: r.base,
                last_index,
                hard_state: r.hard_state,
                damaged,
                missing,
                records: r.records,
                votes_copy: None,
            };
            (id, g)
        })
        .collect();
    let votes = crate::votes::load(dir)?;
    out.votes_unreadable = votes.unreadable;
    for (&id, &copy) in &votes.votes {
        out.groups.entry(id).or_default().votes_copy = Some(copy);
    }
    Ok(out)
}

/// Scans one segment's records into `groups`, resynchronising after damage.
fn scan(
    bytes: &[u8],
    segment_seq: u64,
    path: &Path,
    out: &mut Inspection,
    groups: &mut BTreeMap<GroupId, Replay>,
) {
    let mut offset = SEGMENT_HEADER_LEN;
    while offset + RECORD_HEADER_LEN <= bytes.len() {
        match read_record(bytes, offset, segment_seq) {
            Some(h) => {
                out.records += 1;
                apply(bytes, offset, &h, groups);
                offset += h.total_len();
                if h.kind == Kind::Seal {
                    return;
                }
            }
            None => {
                let reason = match format::decode_record(&bytes[offset..], segment_seq) {
                    Ok(_) => "record metadata is malformed".to_owned(),
                    Err(e) => format!("{e:?}"),
                };
                // The next valid record, if any: damage in the middle, else the end.
                let mut next = offset + format::ALIGN;
                while next + RECORD_HEADER_LEN <= bytes.len() {
                    if read_record(bytes, next, segment_seq).is_some() {
                        out.unreadable.push(Unreadable {
                            path: path.to_path_buf(),
                            offset: offset as u64,
                            resumes_at: next as u64,
                            reason,
                        });
                        break;
                    }
                    next += format::ALIGN;
                }
                if next + RECORD_HEADER_LEN > bytes.len() {
                    return; // Nothing valid after it: the end of what was written.
                }
                offset = next;
            }
        }
    }
}

/// The record at `offset`, if its header, checksum and metadata check out.
fn read_record(bytes: &[u8], offset: usize, segment_seq: u64) -> Option<format::RecordHeader> {
    let h = format::decode_record(&bytes[offset..], segment_seq).ok()?;
    record_payload_ok(bytes, offset, &h).then_some(h)
}

/// Replays one valid record.
fn apply(
    bytes: &[u8],
    offset: usize,
    h: &format::RecordHeader,
    groups: &mut BTreeMap<GroupId, Replay>,
) {
    let start = offset + RECORD_HEADER_LEN;
    let payload = &bytes[start..start + h.payload_len as usize];
    match format::decode_payload(h, payload) {
        Some(Payload::Entries { meta: m, table }) => {
            let g = groups.entry(m.group).or_default();
            g.records += 1;
            g.truncate_after(m.first_index - 1);
            let mut at = h.meta_len as usize;
            for i in 0..m.count as usize {
                let row = format::row(table, i);
                let data = &payload[at..at + row.len as usize];
                at += row.len as usize;
                let intact = crc32c::crc32c(data) == row.crc;
                g.entries.insert(m.first_index + i as u64, (row.term, intact, row.kind, row.len));
            }
        }
        Some(Payload::HardState(group, hs)) => {
            groups.entry(group).or_default().hard_state = Some(hs)
        }
        Some(Payload::Truncate { group, last_kept }) => {
            groups.entry(group).or_default().truncate_after(last_kept)
        }
        Some(Payload::Compact { group, through, term }) => {
            groups.entry(group).or_default().compact(through, term)
        }
        Some(Payload::Checkpoint(rows)) => {
            for row in rows {
                let g = groups.entry(row.group).or_default();
                g.compact(row.base_index, row.base_term);
                g.hard_state = Some(row.hard_state);
            }
        }
        Some(Payload::Seal) | None => {}
    }
}

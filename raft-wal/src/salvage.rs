//! Opening a damaged WAL ([`RecoveryMode::Salvage`]): keep every
//! record that can be trusted, say exactly what each group lost, and start a clean log from it.
//!
//! Recovery refuses a log whose damage reaches records a later record proves durable. Salvage
//! then reads every segment again, resynchronising after each stretch it cannot read, and
//! rebuilds each group from the records before the first hole in the record sequence:
//!
//! - What the hole held is unknown: entries of any group, a truncation, a hard state. So every
//!   group's log is cut where it stood before the hole, and every group is reported damaged
//!   from there on ([`LogDamage`]). Entries after the hole are not kept (a truncation lost in
//!   the hole could make them a mix of two logs), but the last of them tells where the group's
//!   log ended ([`LogDamage::last`]): the node votes only for candidates at least that up to
//!   date until it has its entries back.
//! - Hard state (term and vote) is taken from the newest record that holds it, before or after
//!   the hole: a record after the hole is newer than anything the hole held. A group with no
//!   such record after the hole may have had its vote in the hole: its term and vote then come
//!   from their second copy (`VOTES-A`/`VOTES-B`, written by every sync that made a change
//!   durable, before it returned, so before any vote it covers was sent). Only when that copy
//!   is unreadable too (two faults) does salvage refuse, with [`WalError::HardStateLost`]:
//!   voting twice in a term is the one thing a node must never do. The commit index is taken
//!   from before the hole, where it cannot cover entries a lost truncation replaced.
//! - Entries whose payload fails its checksum cut their group's log there too.
//!
//! The result is written as a new log (through an ordinary [`Wal`](crate::Wal) in a temporary
//! directory), then swapped in: the old segments move to a `damaged-N` directory, kept for the
//! operator and for `raftkit-inspect`, and the groups that lost entries are listed in the
//! `DAMAGE` file (see the crate README) until their nodes repair them. Each step is
//! crash-safe: an interrupted build is thrown away, an interrupted swap is finished at the next
//! open.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use raft_core::{Entry, EntryKind, GroupId, HardState, Index, LogDamage, LogStore, LogWrite, Term};

use crate::config::{RecoveryMode, WalConfig};
use crate::damage;
use crate::error::WalError;
use crate::format::{self, Kind, Payload, RecordHeader, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use crate::recovery::record_payload_ok;
use crate::segment::{parse_segment_name, sync_dir};

/// The directory a salvage builds the new log in.
const BUILDING: &str = "salvage.tmp";
/// The directory of a built log waiting to be swapped in.
const READY: &str = "salvage.ready";
/// Inside [`READY`]: the old segments are out of the way, the new ones may move in.
const OLD_MOVED: &str = "OLD-MOVED";
/// Bytes of entries per write of the new log.
const WRITE_BYTES: u64 = 4 << 20;

/// What a salvage did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SalvageReport {
    /// Where the damaged segments were moved.
    pub quarantine: PathBuf,
    /// Why the log could not be opened as it was.
    pub reason: String,
    /// Records read and kept as evidence (before and after holes).
    pub records_read: u64,
    /// Missing runs of the record sequence: `(first missing, first after)` record numbers.
    pub holes: Vec<(u64, u64)>,
    /// Entries whose payload failed its checksum.
    pub damaged_entries: u64,
    /// The groups that lost entries, and what each lost.
    pub damage: BTreeMap<GroupId, LogDamage>,
    /// Groups whose term and vote were lost in a hole and taken from their second copy.
    pub votes_from_copy: Vec<GroupId>,
}

/// Finishes a salvage a crash interrupted: throws away a half-built log, completes a swap.
pub(crate) fn finish_interrupted(dir: &Path) -> Result<(), WalError> {
    let building = dir.join(BUILDING);
    if building.exists() {
        std::fs::remove_dir_all(&building).map_err(|e| WalError::io(&building, e))?;
    }
    if dir.join(READY).exists() {
        swap_in(dir)?;
    }
    Ok(())
}

/// One valid record found by the scan.
#[derive(Clone, Copy, Debug)]
struct Rec {
    /// Position in [`Segments::maps`].
    file: usize,
    offset: usize,
    header: RecordHeader,
}

/// An entry's place in the old segments.
#[derive(Clone, Copy, Debug)]
struct At {
    term: Term,
    kind: EntryKind,
    file: usize,
    start: usize,
    len: usize,
    crc: u32,
}

/// One group, as the records before the first hole leave it, plus what later records say.
#[derive(Default)]
struct Group {
    base: (Index, Term),
    entries: BTreeMap<Index, At>,
    hard_state: Option<HardState>,
    /// A hard state (or checkpoint row) after the hole.
    hard_state_after: Option<HardState>,
    /// The log's end as the last records after the hole leave it, when they tell.
    end_after: Option<(Index, Term)>,
}

impl Group {
    fn truncate_after(&mut self, last_kept: Index) {
        self.entries.split_off(&(last_kept + 1));
    }

    fn compact(&mut self, through: Index, term: Term) {
        if through <= self.base.0 {
            return;
        }
        if self.entries.get(&through).is_some_and(|e| e.term == term) {
            self.entries = self.entries.split_off(&(through + 1));
        } else {
            self.entries.clear();
        }
        self.base = (through, term);
    }
}

/// The segment files, mapped read-only.
struct Segments {
    paths: Vec<PathBuf>,
    maps: Vec<Mmap>,
}

/// Rebuilds the WAL in `dir` from what can be trusted; see the module docs. `reason` says why
/// a plain open refused.
pub(crate) fn salvage(
    dir: &Path,
    config: &WalConfig,
    reason: String,
) -> Result<SalvageReport, WalError> {
    tracing::warn!(dir = %dir.display(), %reason, "WAL is damaged: salvaging what can be trusted");
    let _lock = lock(dir)?;
    let segments = map_segments(dir)?;
    let records = scan(&segments);
    let mut report = SalvageReport { reason, ..SalvageReport::default() };
    report.records_read = records.len() as u64;
    // The first hole in the record sequence splits trusted records from evidence.
    let hole = records.windows(2).position(|w| w[1].header.seq != w[0].header.seq + 1);
    for w in records.windows(2) {
        if w[1].header.seq != w[0].header.seq + 1 {
            report.holes.push((w[0].header.seq + 1, w[1].header.seq));
        }
    }
    let (before, after) = match hole {
        Some(i) => records.split_at(i + 1),
        None => {
            // No hole: only whole batches were ever acknowledged.
            let complete = records
                .iter()
                .rposition(|r| r.header.flags & format::FLAG_BATCH_END != 0)
                .map_or(0, |i| i + 1);
            (&records[..complete], &records[..0])
        }
    };
    let mut groups: BTreeMap<GroupId, Group> = BTreeMap::new();
    for r in before {
        replay_before(&segments, r, &mut groups);
    }
    for r in after {
        replay_after(&segments, r, &mut groups);
    }
    if hole.is_some() {
        // Term and vote of a group with no record of them after the hole come from their
        // second copy, which every sync that made a change durable wrote before returning.
        let votes = crate::votes::load(dir)?.votes;
        for (&group, g) in groups.iter_mut().filter(|(_, g)| g.hard_state_after.is_none()) {
            let before = g.hard_state.unwrap_or_default();
            match votes.get(&group) {
                Some(&(term, vote))
                    if !crate::votes::newer((before.term, before.vote), (term, vote)) =>
                {
                    g.hard_state_after = Some(HardState { term, vote, commit: before.commit });
                    report.votes_from_copy.push(group);
                }
                _ => return Err(WalError::HardStateLost { path: dir.to_path_buf(), group }),
            }
        }
    }

    let kept = trusted_ends(&segments, &groups);
    let mut damage_found: BTreeMap<GroupId, LogDamage> = BTreeMap::new();
    for (&id, g) in &groups {
        let kept = kept[&id];
        report.damaged_entries += g
            .entries
            .values()
            .filter(|at| {
                crc32c::crc32c(&segments.maps[at.file][at.start..at.start + at.len]) != at.crc
            })
            .count() as u64;
        let last_held = g.entries.iter().next_back().map(|(&i, a)| (i, a.term));
        let lost = if hole.is_some() {
            Some(LogDamage::new(kept + 1, g.end_after))
        } else if kept < last_held.map_or(g.base.0, |l| l.0) {
            Some(LogDamage::new(kept + 1, last_held))
        } else {
            None
        };
        if let Some(d) = lost {
            damage_found.insert(id, d);
        }
    }
    let (quarantine, damage) = rebuild(dir, config, &segments, &groups, &kept, &damage_found)?;
    report.quarantine = quarantine;
    report.damage = damage;
    tracing::warn!(
        dir = %dir.display(),
        quarantine = %report.quarantine.display(),
        holes = report.holes.len(),
        damaged_entries = report.damaged_entries,
        groups_damaged = report.damage.len(),
        "WAL salvaged; the damaged segments were kept aside"
    );
    Ok(report)
}

/// Forgets `group`'s log in the WAL in `dir` (keeping its hard state, with the commit index
/// reset) and records it as damaged from its first entry, ending where it ended: for a node
/// whose state machine cannot be rebuilt from its own storage (its snapshots are damaged and
/// its log does not reach back far enough), which must then get everything from its leader.
/// The WAL must not be open. Returns where the old segments were set aside.
pub fn reset_group(dir: &Path, config: &WalConfig, group: GroupId) -> Result<PathBuf, WalError> {
    let _lock = lock(dir)?;
    finish_interrupted(dir)?;
    let segments = map_segments(dir)?;
    let records = scan(&segments);
    let end = records.windows(2).position(|w| w[1].header.seq != w[0].header.seq + 1);
    let trusted = end.map_or(&records[..], |i| &records[..=i]);
    let mut groups: BTreeMap<GroupId, Group> = BTreeMap::new();
    for r in trusted {
        replay_before(&segments, r, &mut groups);
    }
    let g = groups.entry(group).or_default();
    let last = g.entries.iter().next_back().map_or(g.base, |(&i, a)| (i, a.term));
    tracing::warn!(dir = %dir.display(), group, ?last, "forgetting the group's log: it is repaired from the leader");
    g.entries.clear();
    g.base = (0, 0);
    g.hard_state = g.hard_state.map(|hs| HardState { commit: 0, ..hs });
    let lost: BTreeMap<GroupId, LogDamage> =
        [(group, LogDamage::new(1, Some(last)))].into_iter().collect();
    let kept = trusted_ends(&segments, &groups);
    let (quarantine, _) = rebuild(dir, config, &segments, &groups, &kept, &lost)?;
    Ok(quarantine)
}

/// Each group's last index that can be kept.
fn trusted_ends(
    segments: &Segments,
    groups: &BTreeMap<GroupId, Group>,
) -> BTreeMap<GroupId, Index> {
    groups.iter().map(|(&id, g)| (id, trusted_end(segments, g))).collect()
}

/// The last index of `g` that can be kept: consecutive from its base, payloads intact.
fn trusted_end(segments: &Segments, g: &Group) -> Index {
    let mut kept = g.base.0;
    for (&index, at) in g.entries.range(g.base.0 + 1..) {
        let data = &segments.maps[at.file][at.start..at.start + at.len];
        if index != kept + 1 || crc32c::crc32c(data) != at.crc {
            break;
        }
        kept = index;
    }
    kept
}

/// Writes `groups` (each up to its end in `kept`) as a new log, records `lost` (merged with
/// damage already recorded) in its `DAMAGE` file, and swaps it in for the segments of `dir`.
/// Returns where the old segments went and the damage now recorded.
fn rebuild(
    dir: &Path,
    config: &WalConfig,
    segments: &Segments,
    groups: &BTreeMap<GroupId, Group>,
    kept: &BTreeMap<GroupId, Index>,
    lost: &BTreeMap<GroupId, LogDamage>,
) -> Result<(PathBuf, BTreeMap<GroupId, LogDamage>), WalError> {
    let building = dir.join(BUILDING);
    if building.exists() {
        std::fs::remove_dir_all(&building).map_err(|e| WalError::io(&building, e))?;
    }
    std::fs::create_dir(&building).map_err(|e| WalError::io(&building, e))?;
    let new_config = WalConfig { recovery: RecoveryMode::Strict, ..config.clone() };
    let (wal, _) = crate::Wal::open(&building, new_config)?;
    for (&id, g) in groups {
        copy_group(&wal, segments, id, g, kept.get(&id).copied().unwrap_or(g.base.0))?;
    }
    let lsn = wal.durable_lsn().max(raft_core::Lsn(wal.stats().last_seq));
    wal.sync(lsn)?;
    wal.close()?;
    // Damage still being repaired from before is not forgotten.
    let mut all = match damage::load(dir)? {
        damage::Loaded::Groups(g) => g,
        damage::Loaded::None => BTreeMap::new(),
        damage::Loaded::Unreadable(_) => {
            groups.keys().map(|&id| (id, LogDamage::new(1, None))).collect()
        }
    };
    for (id, d) in lost {
        let merged = all.get(id).map_or(*d, |old| old.merged(*d));
        all.insert(*id, merged);
    }
    damage::store(&building, &all)?;
    std::fs::remove_file(building.join("LOCK")).ok();
    sync_dir(&building)?;
    let ready = dir.join(READY);
    std::fs::rename(&building, &ready).map_err(|e| WalError::io(&ready, e))?;
    sync_dir(dir)?;
    Ok((swap_in(dir)?, all))
}

/// Copies group `id`'s entries through `kept` (checked by [`trusted_end`]) and its hard state
/// into `wal`.
fn copy_group(
    wal: &crate::Wal,
    segments: &Segments,
    id: GroupId,
    g: &Group,
    kept: Index,
) -> Result<(), WalError> {
    if g.base.0 > 0 {
        wal.compact(id, g.base.0, g.base.1)?;
    }
    let mut chunk: Vec<Entry> = Vec::new();
    let mut chunk_bytes = 0;
    // (`range` refuses a start past its end: an empty log keeps nothing.)
    for (&index, at) in g.entries.range(g.base.0 + 1..kept.max(g.base.0) + 1) {
        let data = &segments.maps[at.file][at.start..at.start + at.len];
        chunk.push(Entry { term: at.term, index, kind: at.kind, data: data.to_vec().into() });
        chunk_bytes += at.len as u64;
        if chunk_bytes >= WRITE_BYTES {
            wal.write(&[LogWrite { group: id, hard_state: None, entries: &chunk }])?;
            chunk.clear();
            chunk_bytes = 0;
        }
    }
    let hs = g.hard_state_after.or(g.hard_state).map(|after| {
        let commit = g.hard_state.map_or(0, |before| before.commit).min(kept);
        HardState { commit: commit.max(g.base.0), ..after }
    });
    if hs.is_some() || !chunk.is_empty() {
        wal.write(&[LogWrite { group: id, hard_state: hs, entries: &chunk }])?;
    }
    Ok(())
}

/// Takes the directory's lock for the salvage (a plain open that failed released it).
fn lock(dir: &Path) -> Result<File, WalError> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| WalError::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(WalError::Locked { path: dir.to_path_buf(), lock: path })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(WalError::io(&path, e)),
    }
}

/// Maps every segment file of `dir`, in sequence order.
fn map_segments(dir: &Path) -> Result<Segments, WalError> {
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| WalError::io(dir, e))? {
        let entry = entry.map_err(|e| WalError::io(dir, e))?;
        if let Some(seq) = entry.file_name().to_str().and_then(parse_segment_name) {
            found.push((seq, entry.path()));
        }
    }
    found.sort_unstable();
    let mut out = Segments { paths: Vec::new(), maps: Vec::new() };
    for (_, path) in found {
        let file = File::open(&path).map_err(|e| WalError::io(&path, e))?;
        // SAFETY: the caller holds the directory's lock, so no other `Wal` writes these files,
        // and salvage only reads them; a file changed behind the lock by something else could
        // only make records fail their checksums, which the scan treats as damage.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| WalError::io(&path, e))?;
        out.paths.push(path);
        out.maps.push(map);
    }
    Ok(out)
}

/// Every valid record, in segment order, each numbered after the one before it (a stale record
/// from a file's earlier life has a smaller number, or fails its checksum, and is skipped).
fn scan(segments: &Segments) -> Vec<Rec> {
    let mut out: Vec<Rec> = Vec::new();
    let mut last_seq = 0u64;
    for (file, (path, bytes)) in segments.paths.iter().zip(&segments.maps).enumerate() {
        let Some(segment_seq) =
            path.file_name().and_then(|n| n.to_str()).and_then(parse_segment_name)
        else {
            continue;
        };
        let mut offset = SEGMENT_HEADER_LEN;
        while offset + RECORD_HEADER_LEN <= bytes.len() {
            let valid = format::decode_record(&bytes[offset..], segment_seq)
                .ok()
                .filter(|h| h.seq > last_seq && record_payload_ok(bytes, offset, h));
            match valid {
                Some(header) => {
                    out.push(Rec { file, offset, header });
                    last_seq = header.seq;
                    offset += header.total_len();
                    if header.kind == Kind::Seal {
                        break;
                    }
                }
                None => offset += format::ALIGN,
            }
        }
    }
    out
}

/// The payload of a record.
fn payload<'a>(segments: &'a Segments, r: &Rec) -> &'a [u8] {
    let start = r.offset + RECORD_HEADER_LEN;
    &segments.maps[r.file][start..start + r.header.payload_len as usize]
}

/// Replays a record from before the first hole: it shapes the group's log.
fn replay_before(segments: &Segments, r: &Rec, groups: &mut BTreeMap<GroupId, Group>) {
    let Some(payload) = format::decode_payload(&r.header, payload(segments, r)) else { return };
    match payload {
        Payload::Entries { meta: m, table } => {
            let g = groups.entry(m.group).or_default();
            g.truncate_after(m.first_index.saturating_sub(1));
            let mut at = r.offset + RECORD_HEADER_LEN + r.header.meta_len as usize;
            for i in 0..m.count as usize {
                let row = format::row(table, i);
                let index = m.first_index + i as Index;
                if index > g.base.0 {
                    let (term, kind, len, crc) = (row.term, row.kind, row.len as usize, row.crc);
                    g.entries.insert(index, At { term, kind, file: r.file, start: at, len, crc });
                }
                at += row.len as usize;
            }
        }
        Payload::HardState(group, hs) => groups.entry(group).or_default().hard_state = Some(hs),
        other => replay_common(other, groups, |g, hs| g.hard_state = Some(hs)),
    }
}

/// Replays a record from after the first hole: it may only take entries away (a truncation,
/// a compaction), give a newer hard state, or say where the log ended.
fn replay_after(segments: &Segments, r: &Rec, groups: &mut BTreeMap<GroupId, Group>) {
    let Some(payload) = format::decode_payload(&r.header, payload(segments, r)) else { return };
    match payload {
        Payload::Entries { meta: m, table } => {
            if m.count > 0 {
                let last = format::row(table, m.count as usize - 1);
                groups.entry(m.group).or_default().end_after =
                    Some((m.first_index + m.count as Index - 1, last.term));
            }
        }
        Payload::HardState(group, hs) => {
            groups.entry(group).or_default().hard_state_after = Some(hs)
        }
        Payload::Truncate { group, last_kept } => {
            let g = groups.entry(group).or_default();
            g.truncate_after(last_kept);
            if g.end_after.is_some_and(|(i, _)| i > last_kept) {
                g.end_after = None; // The end's term is not known.
            }
        }
        other => replay_common(other, groups, |g, hs| g.hard_state_after = Some(hs)),
    }
}

/// Truncations, compactions and checkpoints, replayed alike on both sides of a hole (a
/// checkpoint's hard state goes where `keep_hard_state` puts it).
fn replay_common(
    payload: Payload<'_>,
    groups: &mut BTreeMap<GroupId, Group>,
    keep_hard_state: impl Fn(&mut Group, HardState),
) {
    match payload {
        Payload::Truncate { group, last_kept } => {
            groups.entry(group).or_default().truncate_after(last_kept)
        }
        Payload::Compact { group, through, term } => {
            groups.entry(group).or_default().compact(through, term)
        }
        Payload::Checkpoint(rows) => {
            for row in rows {
                let g = groups.entry(row.group).or_default();
                g.compact(row.base_index, row.base_term);
                keep_hard_state(g, row.hard_state);
            }
        }
        Payload::Entries { .. } | Payload::HardState(..) | Payload::Seal => {}
    }
}

/// Moves the old segments aside and the built log in. Returns where the old ones went.
fn swap_in(dir: &Path) -> Result<PathBuf, WalError> {
    let ready = dir.join(READY);
    let marker = ready.join(OLD_MOVED);
    let quarantine = quarantine_dir(dir)?;
    if !marker.exists() {
        std::fs::create_dir_all(&quarantine).map_err(|e| WalError::io(&quarantine, e))?;
        for entry in std::fs::read_dir(dir).map_err(|e| WalError::io(dir, e))? {
            let entry = entry.map_err(|e| WalError::io(dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if parse_segment_name(name).is_some() || name == damage::FILE {
                let to = quarantine.join(name);
                std::fs::rename(entry.path(), &to).map_err(|e| WalError::io(&to, e))?;
            }
        }
        sync_dir(&quarantine)?;
        sync_dir(dir)?;
        File::create(&marker).map_err(|e| WalError::io(&marker, e))?;
        sync_dir(&ready)?;
    }
    for entry in std::fs::read_dir(&ready).map_err(|e| WalError::io(&ready, e))? {
        let entry = entry.map_err(|e| WalError::io(&ready, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if parse_segment_name(name).is_some() || name == damage::FILE {
            let to = dir.join(name);
            std::fs::rename(entry.path(), &to).map_err(|e| WalError::io(&to, e))?;
        }
    }
    sync_dir(dir)?;
    std::fs::remove_dir_all(&ready).map_err(|e| WalError::io(&ready, e))?;
    sync_dir(dir)?;
    Ok(quarantine)
}

/// The quarantine directory for this swap: the newest `damaged-N` while a swap is under way
/// (its old segments are already there), else a new one.
fn quarantine_dir(dir: &Path) -> Result<PathBuf, WalError> {
    let mut newest = 0u64;
    for entry in std::fs::read_dir(dir).map_err(|e| WalError::io(dir, e))? {
        let entry = entry.map_err(|e| WalError::io(dir, e))?;
        if let Some(n) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix("damaged-"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            newest = newest.max(n);
        }
    }
    let under_way = dir.join(READY).join(OLD_MOVED).exists();
    let n = if under_way { newest.max(1) } else { newest + 1 };
    Ok(dir.join(format!("damaged-{n}")))
}

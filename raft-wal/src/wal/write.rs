//! The write path: validate a batch against the index, reserve room (the only step that can
//! fail on I/O, before any byte is written), encode records into the active segment (rolling to
//! a new segment when it fills), and update the index; plus compaction markers.

use super::*;
#[cfg(feature = "failpoints")]
use crate::state::record_mut;

/// An upper bound of the bytes the records of `batch` take (each may need splitting).
pub(super) fn batch_bytes_bound(batch: &[LogWrite<'_>]) -> usize {
    let mut total = 0usize;
    for w in batch {
        if w.hard_state.is_some() {
            total += format::align(RECORD_HEADER_LEN + format::HARD_STATE_LEN);
        }
        if !w.entries.is_empty() {
            total += format::align(RECORD_HEADER_LEN + format::TRUNCATE_LEN);
            for e in w.entries {
                total += format::ENTRY_ROW_LEN + e.data.len();
            }
            total += format::align(RECORD_HEADER_LEN + format::ENTRIES_META_FIXED);
        }
    }
    total
}

/// A group's log as an earlier part of the batch being validated left it.
pub(super) struct Staged {
    base: Index,
    last: Index,
    /// `(index, term)` of the entries the batch wrote so far.
    written: Vec<(Index, Term)>,
}

/// Batches up to this long are checked for a group written twice by comparing every pair.
const DISTINCT_CHECK_MAX: usize = 8;

/// Checks a batch against the index before anything is written (a group written twice in one
/// batch is checked against its state after the earlier part).
pub(super) fn validate_batch(st: &State, batch: &[LogWrite<'_>]) -> Result<(), WalError> {
    let distinct = |(i, w): (usize, &LogWrite<'_>)| batch[..i].iter().all(|o| o.group != w.group);
    if batch.len() <= DISTINCT_CHECK_MAX && batch.iter().enumerate().all(distinct) {
        // Each group once (a runtime's round, one group's Readies gathered into one write):
        // every write is checked against the index alone, with nothing to allocate.
        for w in batch.iter().filter(|w| !w.entries.is_empty()) {
            let g = st.groups.get(&w.group);
            let term = |i: Index| g.and_then(|g| g.term(i)).or_else(|| (i == 0).then_some(0));
            let (base, last) = g.map_or((0, 0), |g| (g.base_index, g.last_index()));
            validate_append(w.group, w.entries, base, last, term)?;
        }
        return Ok(());
    }
    let mut staged: HashMap<GroupId, Staged> = HashMap::new();
    for w in batch {
        let Some(first) = w.entries.first() else { continue };
        let g = st.groups.get(&w.group);
        let before = staged.remove(&w.group).unwrap_or_else(|| Staged {
            base: g.map_or(0, |g| g.base_index),
            last: g.map_or(0, GroupIndex::last_index),
            written: Vec::new(),
        });
        let term_before = |i: Index| {
            before
                .written
                .iter()
                .rev()
                .find(|&&(idx, _)| idx == i)
                .map(|&(_, t)| t)
                .or_else(|| g.and_then(|g| g.term(i)).or_else(|| (i == 0).then_some(0)))
        };
        validate_append(w.group, w.entries, before.base, before.last, term_before)?;
        let mut written: Vec<(Index, Term)> =
            before.written.into_iter().filter(|&(i, _)| i < first.index).collect();
        written.extend(w.entries.iter().map(|e| (e.index, e.term)));
        let last = w.entries.last().map_or(before.last, |e| e.index);
        staged.insert(w.group, Staged { base: before.base, last, written });
    }
    Ok(())
}

impl Shared {
    pub(super) fn check_poison(&self) -> Result<(), WalError> {
        if self.poisoned.load(Ordering::Acquire) {
            let msg = self.durable.lock().poison.clone().unwrap_or_default();
            return Err(WalError::Poisoned(msg));
        }
        Ok(())
    }

    /// Poisons the WAL for good and wakes everyone waiting on a sync to see it.
    pub(super) fn poison(&self, why: String) {
        tracing::error!(dir = %self.dir.display(), %why, "WAL poisoned");
        self.durable.lock().poison.get_or_insert(why);
        self.poisoned.store(true, Ordering::Release);
        self.bell.ring();
        self.gather_bell.ring();
    }

    pub(crate) fn write(&self, batch: &[LogWrite<'_>]) -> Result<u64, WalError> {
        self.check_poison()?;
        let mut st = self.state.write();
        validate_batch(&st, batch)?;
        self.check_entry_sizes(&st, batch)?;
        // Reserve every segment the batch may need before writing a byte: a full disk must
        // fail the write cleanly, not half-way through it.
        let need = batch_bytes_bound(batch);
        let room = self.room(&st);
        if need > room || st.active_sealed {
            let groups = st.groups.len() + batch.len();
            let per_segment = self.config.usable_bytes(groups).max(1);
            let segments = 1 + need.saturating_sub(room) / per_segment + 1;
            self.reserve_prepared(&mut st, segments)?;
        }
        let before = st.next_seq;
        let written = self.write_records(&mut st, batch);
        if written.is_ok() && st.next_seq > before {
            end_batch(&mut st);
        }
        fail::fail_point!("wal::write::short", |_| {
            // The last record's second half never reached the file.
            let (segment, at) = st.last_record;
            if let Some((_, bytes)) = record_mut(&mut st, segment, at) {
                let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                // A staged record with payloads written from the caller's buffers is only its
                // header and table here: damage what there is.
                let total = format::align(RECORD_HEADER_LEN + len as usize).min(bytes.len());
                bytes[total / 2..total].fill(0);
            }
            let _ = flush_staged(&mut st);
            self.poison("short write (injected)".into());
            Err(WalError::Io {
                path: self.dir.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    "short write (injected)",
                ),
            })
        });
        let written = written.and_then(|()| self.maybe_flush_staged(&mut st));
        let lsn = st.next_seq - 1;
        drop(st);
        if let Err(e) = written {
            // Past the reservation only renames and mappings can fail; the log's tail can no
            // longer be trusted to match the index.
            self.poison(format!("segment roll failed mid-write: {e}"));
            return Err(e);
        }
        if self.config.durability == Durability::Always {
            self.sync_to(lsn)?;
        }
        Ok(lsn)
    }

    /// Writes the staged records to the file now, or leaves them for the next sync to write in
    /// the same call as everyone else's: in the syncing modes a write is only acknowledged by a
    /// sync, which writes what is staged first, so concurrent appenders make one `pwritev`
    /// instead of one each (and hold the state lock for an encode, not a system call). Records
    /// left staged are read from memory until then. `Never` and `Interval` write at once, so
    /// that a crash of the process alone loses nothing the OS had been given; so does any
    /// write that leaves [`STAGED_MAX`] or more staged.
    pub(super) fn maybe_flush_staged(&self, st: &mut State) -> Result<(), WalError> {
        let syncing =
            matches!(self.config.durability, Durability::Always | Durability::GroupCommit { .. });
        if syncing && st.staging.len() < STAGED_MAX {
            return Ok(());
        }
        flush_staged(st)
    }

    pub(super) fn check_entry_sizes(
        &self,
        st: &State,
        batch: &[LogWrite<'_>],
    ) -> Result<(), WalError> {
        let max =
            self.config.usable_bytes(st.groups.len() + batch.len()).saturating_sub(
                RECORD_HEADER_LEN + format::ENTRIES_META_FIXED + format::ENTRY_ROW_LEN,
            ) as u64;
        let max = max.min(format::ENTRY_DATA_MAX);
        for w in batch {
            for e in w.entries {
                if e.data.len() as u64 > max {
                    return Err(WalError::EntryTooLarge { len: e.data.len() as u64, max });
                }
            }
        }
        Ok(())
    }

    /// Bytes free for records in the active segment (its seal's room excluded).
    pub(super) fn room(&self, st: &State) -> usize {
        let len = st.segments.get(&st.active).map_or(0, |s| s.file.len());
        len.saturating_sub(st.offset + format::SEAL_RECORD_LEN)
    }

    /// Makes sure `n` prepared segments are ready, creating any missing ones now. The writer
    /// holds the state lock here, so it allocates rather than zero-fills them (milliseconds
    /// rather than the time to write a whole segment, during which no one could append or read):
    /// syncs into those segments cost more until they are recycled.
    pub(super) fn reserve_prepared(&self, st: &mut State, n: usize) -> Result<(), WalError> {
        if st.prepared.len() < n {
            tracing::debug!(
                ready = st.prepared.len(),
                needed = n,
                "no prepared segment ready: allocating"
            );
        }
        while st.prepared.len() < n {
            let id = st.next_prepared_id;
            st.next_prepared_id += 1;
            let size = self.config.segment_size_bytes;
            let path = segment::prepare_new(&self.dir, id, size, segment::Fill::Allocate)?;
            st.prepared.push_back(path);
        }
        Ok(())
    }

    pub(super) fn write_records(
        &self,
        st: &mut State,
        batch: &[LogWrite<'_>],
    ) -> Result<(), WalError> {
        for w in batch {
            if let Some(hs) = w.hard_state {
                self.append(
                    st,
                    Kind::HardState,
                    format::HARD_STATE_LEN,
                    format::HARD_STATE_LEN,
                    |p, _| format::encode_hard_state(p, w.group, &hs),
                )?;
                let g = st.groups.entry(w.group).or_default();
                if (g.hard_state.term, g.hard_state.vote) != (hs.term, hs.vote) {
                    st.votes_dirty = true;
                }
                st.groups.entry(w.group).or_default().hard_state = hs;
            }
            let Some(first) = w.entries.first() else { continue };
            let last = st.groups.get(&w.group).map_or(0, GroupIndex::last_index);
            if first.index <= last {
                let kept = first.index - 1;
                self.append(
                    st,
                    Kind::Truncate,
                    format::TRUNCATE_LEN,
                    format::TRUNCATE_LEN,
                    |p, _| format::encode_truncate(p, w.group, kept),
                )?;
                let State { groups, segments, .. } = st;
                if let Some(g) = groups.get_mut(&w.group) {
                    g.truncate_after(kept, |loc| drop_live(segments, loc));
                }
                fail::fail_point!("wal::truncate::between", |_| Err(WalError::Io {
                    path: self.dir.clone(),
                    source: std::io::Error::other("injected failure between truncation and append"),
                }));
            }
            self.append_entries(st, w.group, w.entries)?;
        }
        Ok(())
    }

    /// Writes `entries` as one or more ENTRIES records, splitting at segment boundaries.
    pub(super) fn append_entries(
        &self,
        st: &mut State,
        group: GroupId,
        entries: &[Entry],
    ) -> Result<(), WalError> {
        let mut rest = entries;
        while !rest.is_empty() {
            if st.active_sealed {
                self.roll(st)?;
            }
            let overhead = RECORD_HEADER_LEN + format::ENTRIES_META_FIXED;
            let mut room = self.room(st).saturating_sub(overhead);
            let mut count = 0;
            let mut data = 0usize;
            for e in rest {
                let need = format::ENTRY_ROW_LEN + e.data.len();
                if need > room {
                    break;
                }
                room -= need;
                data += e.data.len();
                count += 1;
            }
            if count == 0 {
                self.roll(st)?;
                continue;
            }
            let (chunk, tail) = rest.split_at(count);
            rest = tail;
            // The count above ignored the record's alignment padding.
            let meta_len = format::ENTRIES_META_FIXED + count * format::ENTRY_ROW_LEN;
            if format::align(RECORD_HEADER_LEN + meta_len + data) > self.room(st) {
                self.roll(st)?;
            }
            let durable = self.durable_seq.load(Ordering::Acquire);
            let (total, locs) = put_entries(st, group, chunk, durable);
            self.account(total);
            let g = st.groups.entry(group).or_default();
            for (e, loc) in chunk.iter().zip(locs) {
                debug_assert_eq!(e.index, g.last_index() + 1, "validated entries are consecutive");
                g.push(e.term, loc);
            }
            if let Some(seg) = st.segments.get_mut(&st.active) {
                seg.live += count as u64;
            }
        }
        Ok(())
    }

    /// Appends one record to the active segment, rolling first if it does not fit. `fill`
    /// writes the payload, given its offset in the segment.
    pub(super) fn append(
        &self,
        st: &mut State,
        kind: Kind,
        payload_len: usize,
        meta_len: usize,
        fill: impl FnOnce(&mut [u8], u32),
    ) -> Result<(), WalError> {
        let total = format::align(RECORD_HEADER_LEN + payload_len);
        if st.active_sealed || total > self.room(st) {
            self.roll(st)?;
        }
        self.put_record(st, kind, payload_len, meta_len, fill);
        Ok(())
    }

    /// Encodes a record at the write position; the caller made sure it fits.
    pub(super) fn put_record(
        &self,
        st: &mut State,
        kind: Kind,
        payload_len: usize,
        meta_len: usize,
        fill: impl FnOnce(&mut [u8], u32),
    ) {
        let durable = self.durable_seq.load(Ordering::Acquire);
        let total = put_record(st, kind, payload_len, meta_len, durable, fill);
        self.account(total);
    }

    /// Counts `total` bytes written towards the group commit byte limit.
    pub(super) fn account(&self, total: usize) {
        let pending = self.pending_bytes.fetch_add(total as u64, Ordering::AcqRel) + total as u64;
        if let Durability::GroupCommit { max_bytes, .. } = self.config.durability {
            if pending >= max_bytes && self.gathering.load(Ordering::Acquire) {
                self.gather_bell.ring();
            }
        }
    }

    /// Seals the active segment and continues in a new one.
    pub(super) fn roll(&self, st: &mut State) -> Result<(), WalError> {
        let path = match st.prepared.pop_front() {
            Some(p) => p,
            None => {
                self.reserve_prepared(st, 1)?;
                st.prepared
                    .pop_front()
                    .ok_or_else(|| WalError::InvalidConfig("no prepared segment".into()))?
            }
        };
        let old = st.active;
        let new = old + 1;
        if !st.active_sealed {
            self.put_record(st, Kind::Seal, format::SEAL_LEN, format::SEAL_LEN, |p, _| {
                format::encode_seal(p, new)
            });
            if let Some(seg) = st.segments.get(&old) {
                st.unsynced_sealed.push(Arc::clone(&seg.file.file));
            }
        }
        flush_staged(st)?;
        fail::fail_point!("wal::roll::after-seal", |_| Err(WalError::Io {
            path: path.clone(),
            source: std::io::Error::other("injected failure after sealing"),
        }));
        let dest = self.dir.join(segment::segment_name(new));
        std::fs::rename(&path, &dest).map_err(|e| WalError::io(&dest, e))?;
        self.dir_dirty.store(true, Ordering::Release);
        fail::fail_point!("wal::roll::after-rename", |_| Err(WalError::Io {
            path: dest.clone(),
            source: std::io::Error::other("injected failure after renaming"),
        }));
        // Appends through the mapping want its pages present; appends by write calls only read
        // through it, and populating a recycled (cold) file would read it all from disk.
        let mut file = SegmentFile::open(&dest, new, Mapping::for_appends(st.append_via, true))?;
        if file.len() as u64 != self.config.segment_size_bytes {
            return Err(WalError::Corrupt {
                path: dest,
                offset: 0,
                detail: format!(
                    "prepared segment is {} bytes, expected {}",
                    file.len(),
                    self.config.segment_size_bytes
                ),
            });
        }
        let header = SegmentHeader { seq: new, first_seq: st.next_seq, size: file.len() as u64 };
        write_header(&mut file, &header)?;
        st.segments.insert(new, Segment { file, live: 0, verified: true });
        st.active = new;
        st.offset = SEGMENT_HEADER_LEN;
        st.staging.reset(SEGMENT_HEADER_LEN);
        st.active_sealed = false;
        self.write_checkpoint(st);
        // Ask for the next prepared file.
        let _g = self.bg.lock();
        self.bg_cv.notify_all();
        Ok(())
    }

    /// Writes every group's metadata at the start of a new segment, so older segments can be
    /// deleted once no group needs their entries.
    pub(super) fn write_checkpoint(&self, st: &mut State) {
        let durable = self.durable_seq.load(Ordering::Acquire);
        let total = put_checkpoint(st, durable);
        self.pending_bytes.fetch_add(total as u64, Ordering::AcqRel);
    }

    pub(crate) fn compact(
        &self,
        group: GroupId,
        through: Index,
        term: Term,
    ) -> Result<u64, WalError> {
        self.check_poison()?;
        let lsn;
        {
            let mut st = self.state.write();
            if through == 0 || st.groups.get(&group).is_some_and(|g| through <= g.base_index) {
                return Ok(st.next_seq - 1);
            }
            self.reserve_room(&mut st, format::COMPACT_LEN)?;
            self.append(
                &mut st,
                Kind::Compact,
                format::COMPACT_LEN,
                format::COMPACT_LEN,
                |p, _| format::encode_compact(p, group, through, term),
            )?;
            end_batch(&mut st);
            if let Err(e) = self.maybe_flush_staged(&mut st) {
                drop(st);
                self.poison(format!("writing a compaction record failed: {e}"));
                return Err(e);
            }
            let State { groups, segments, .. } = &mut *st;
            // A group may start with a compaction: a snapshot installed on a fresh node.
            groups.entry(group).or_default().compact(through, term, |loc| drop_live(segments, loc));
            lsn = st.next_seq - 1;
        }
        if self.config.durability == Durability::Always {
            self.sync_to(lsn)?;
        }
        self.retire_dead_segments()?;
        Ok(lsn)
    }

    /// Makes sure a small record fits, rolling (which may need a prepared file) first.
    pub(super) fn reserve_room(&self, st: &mut State, payload_len: usize) -> Result<(), WalError> {
        if st.active_sealed || format::align(RECORD_HEADER_LEN + payload_len) > self.room(st) {
            self.reserve_prepared(st, 1)?;
        }
        Ok(())
    }
}

//! An in-memory [`LogStore`] for tests, benchmarks and the simulator. It can also model a
//! disk that loses unsynced writes on power loss.

use std::collections::{BTreeMap, VecDeque};

use parking_lot::Mutex;

use crate::error::StorageError;
use crate::storage::{validate_append, LogState, LogStore, LogWrite, Lsn};
use crate::types::{Entry, GroupId, HardState, Index, LogDamage, Term};

/// Entries per chunk of [`Chunks`].
const CHUNK_ENTRIES: usize = 4096;

/// A sequence of entries in fixed-size chunks: growing never copies what is already stored,
/// and dropping a prefix frees whole chunks.
#[derive(Clone, Debug, Default)]
struct Chunks {
    chunks: VecDeque<Vec<Entry>>,
    /// Entries at the front of the first chunk that were dropped logically.
    skipped: usize,
    len: usize,
}

impl Chunks {
    const EMPTY: Chunks = Chunks { chunks: VecDeque::new(), skipped: 0, len: 0 };

    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, i: usize) -> &Entry {
        let at = self.skipped + i;
        &self.chunks[at / CHUNK_ENTRIES][at % CHUNK_ENTRIES]
    }

    fn push(&mut self, entry: Entry) {
        match self.chunks.back_mut() {
            Some(last) if last.len() < CHUNK_ENTRIES => last.push(entry),
            _ => {
                // Grown as entries come (an idle group of thousands holds a handful).
                self.chunks.push_back(vec![entry]);
            }
        }
        self.len += 1;
    }

    fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        let keep = self.skipped + len;
        let chunks = keep.div_ceil(CHUNK_ENTRIES);
        self.chunks.truncate(chunks);
        if let Some(last) = self.chunks.back_mut() {
            last.truncate(keep - (chunks - 1) * CHUNK_ENTRIES);
        }
        self.len = len;
        if len == 0 {
            self.clear();
        }
    }

    fn drop_front(&mut self, n: usize) {
        let n = n.min(self.len);
        self.skipped += n;
        self.len -= n;
        while self.skipped >= CHUNK_ENTRIES {
            self.chunks.pop_front();
            self.skipped -= CHUNK_ENTRIES;
        }
        if self.len == 0 {
            self.clear();
        }
    }

    fn clear(&mut self) {
        *self = Chunks::default();
    }
}

/// One group's log and hard state.
#[derive(Clone, Debug, Default)]
struct MemGroup {
    hard_state: HardState,
    /// The index before the first entry held.
    base_index: Index,
    base_term: Term,
    /// Entries `base_index + 1 ..`.
    entries: Chunks,
    /// Damage found at the last "open" that the node has not repaired yet.
    damage: Option<LogDamage>,
    /// An entry that fails its checksum when read (injected by a test).
    unreadable: Option<Index>,
}

impl MemGroup {
    fn last_index(&self) -> Index {
        self.base_index + self.entries.len() as Index
    }

    fn term(&self, index: Index) -> Option<Term> {
        if index == self.base_index {
            Some(self.base_term)
        } else if index < self.base_index || index > self.last_index() {
            None
        } else {
            Some(self.entries.get((index - self.base_index - 1) as usize).term)
        }
    }

    fn append(&mut self, group: GroupId, entries: &[Entry]) -> Result<(), StorageError> {
        validate_append(group, entries, self.base_index, self.last_index(), |i| self.term(i))?;
        if let Some(first) = entries.first() {
            if self.unreadable.is_some_and(|u| u >= first.index) {
                self.unreadable = None; // Rewritten.
            }
            self.entries.truncate((first.index - self.base_index - 1) as usize);
            for entry in entries {
                self.entries.push(entry.clone());
            }
        }
        Ok(())
    }

    /// Cuts the log so that it ends before `from`, recording the damage.
    fn damage(&mut self, from: Index) {
        if from <= self.base_index || from > self.last_index() {
            return;
        }
        let last = (self.last_index(), self.term(self.last_index()).unwrap_or_default());
        self.entries.truncate((from - self.base_index - 1) as usize);
        // Damaged again before it was repaired: what it held before the first damage is still
        // the bound its votes must respect.
        let new = LogDamage::new(from, Some(last));
        self.damage = Some(self.damage.map_or(new, |d| d.merged(new)));
        if self.unreadable.is_some_and(|u| u >= from) {
            self.unreadable = None;
        }
    }

    fn compact(&mut self, through: Index, term: Term) {
        if through <= self.base_index {
            return;
        }
        if self.unreadable.is_some_and(|u| u <= through) || self.term(through) != Some(term) {
            self.unreadable = None;
        }
        if self.term(through) == Some(term) {
            self.entries.drop_front((through - self.base_index) as usize);
        } else {
            self.entries.clear();
        }
        self.base_index = through;
        self.base_term = term;
    }
}

#[derive(Clone, Debug)]
enum Op {
    Write { group: GroupId, hard_state: Option<HardState>, entries: Vec<Entry> },
    Compact { group: GroupId, through: Index, term: Term },
    Repaired { group: GroupId },
    Remove { group: GroupId },
}

#[derive(Debug, Default)]
struct Inner {
    /// What readers see: every accepted write.
    groups: BTreeMap<GroupId, MemGroup>,
    last_lsn: u64,
    /// Explicit durability only: the state a power loss returns to, and the writes since.
    durable: BTreeMap<GroupId, MemGroup>,
    unsynced: VecDeque<(u64, Op)>,
    durable_lsn: u64,
    /// Damage "found by scrubbing" (a test's report), not yet taken.
    found: BTreeMap<GroupId, Index>,
}

impl Inner {
    fn apply(groups: &mut BTreeMap<GroupId, MemGroup>, op: &Op) -> Result<(), StorageError> {
        match op {
            Op::Write { group, hard_state, entries } => {
                let g = groups.entry(*group).or_default();
                g.append(*group, entries)?;
                if let Some(hs) = hard_state {
                    g.hard_state = *hs;
                }
            }
            Op::Compact { group, through, term } => {
                groups.entry(*group).or_default().compact(*through, *term);
            }
            Op::Repaired { group } => {
                groups.entry(*group).or_default().damage = None;
            }
            Op::Remove { group } => {
                groups.remove(group);
            }
        }
        Ok(())
    }

    fn group(&self, group: GroupId) -> &MemGroup {
        static EMPTY: MemGroup = MemGroup {
            hard_state: HardState { term: 0, vote: None, commit: 0 },
            base_index: 0,
            base_term: 0,
            entries: Chunks::EMPTY,
            damage: None,
            unreadable: None,
        };
        self.groups.get(&group).unwrap_or(&EMPTY)
    }
}

/// A log store in memory.
///
/// By default every write is durable as soon as it is accepted. Built with
/// [`MemLogStore::with_explicit_sync`], writes become durable only through
/// [`sync`](LogStore::sync), and [`crash`](MemLogStore::crash) drops whatever was not synced,
/// as a power loss would: the simulator uses this to check that nothing acknowledged is lost.
#[derive(Debug, Default)]
pub struct MemLogStore {
    inner: Mutex<Inner>,
    explicit_sync: bool,
    /// Writes are refused for lack of space ([`MemLogStore::set_full`]).
    full: std::sync::atomic::AtomicBool,
}

impl MemLogStore {
    /// A store whose writes are durable when accepted.
    pub fn new() -> MemLogStore {
        MemLogStore::default()
    }

    /// A store whose writes are durable only once synced.
    pub fn with_explicit_sync() -> MemLogStore {
        MemLogStore { explicit_sync: true, ..MemLogStore::default() }
    }

    /// Drops every write not yet synced, as a power loss would. Positions keep growing. The
    /// store then "reopens": an entry made unreadable with
    /// [`corrupt_entry`](MemLogStore::corrupt_entry) is found and the log cut before it, as
    /// [`damage`](MemLogStore::damage) does.
    pub fn crash(&self) {
        let mut inner = self.inner.lock();
        let corrupt: Vec<(GroupId, Index)> =
            inner.groups.iter().filter_map(|(id, g)| g.unreadable.map(|at| (*id, at))).collect();
        if self.explicit_sync {
            inner.groups = inner.durable.clone();
            inner.unsynced.clear();
        }
        let Inner { groups, durable, .. } = &mut *inner;
        for (id, at) in corrupt {
            for g in [groups.get_mut(&id), durable.get_mut(&id)].into_iter().flatten() {
                g.unreadable = None;
                g.damage(at);
            }
        }
    }

    /// Simulates damage that an open of a real store would find: `group`'s log loses every
    /// entry from `from` on (durable or not) and [`damage`](LogStore::damage)
    /// reports it until [`mark_repaired`](LogStore::mark_repaired) is durable. For tests and
    /// the simulator, on a store whose node is down.
    pub fn damage_log(&self, group: GroupId, from: Index) {
        let mut inner = self.inner.lock();
        let Inner { groups, durable, .. } = &mut *inner;
        if let Some(g) = groups.get_mut(&group) {
            g.damage(from);
        }
        if let Some(g) = durable.get_mut(&group) {
            g.damage(from);
        }
    }

    /// Records that `group`'s whole log was lost (its disk was replaced) and where it ended is
    /// unknown, until [`mark_repaired`](LogStore::mark_repaired).
    pub fn mark_all_lost(&self, group: GroupId) {
        let mut inner = self.inner.lock();
        let Inner { groups, durable, .. } = &mut *inner;
        let g = groups.entry(group).or_default();
        g.damage = Some(LogDamage::new(g.base_index + 1, None));
        let d = durable.entry(group).or_default();
        d.damage = Some(LogDamage::new(d.base_index + 1, None));
    }

    /// Reports `index` of `group` as found damaged by the store's own checks: the next
    /// [`take_damage_found`](LogStore::take_damage_found) returns it (as a scrubber would). For
    /// tests, with [`corrupt_entry`](MemLogStore::corrupt_entry).
    pub fn report_found(&self, group: GroupId, index: Index) {
        let mut inner = self.inner.lock();
        let first = inner.found.entry(group).or_insert(index);
        *first = (*first).min(index);
    }

    /// The entry [`corrupt_entry`](MemLogStore::corrupt_entry) damaged, while it is still held.
    pub fn corrupt_entry_at(&self, group: GroupId) -> Option<Index> {
        self.inner.lock().group(group).unreadable
    }

    /// Simulates a flipped bit in entry `index` of `group`: reading it fails with
    /// [`StorageError::Damaged`] until it is rewritten or compacted, and a
    /// [`crash`](MemLogStore::crash) finds it and cuts the log before it.
    pub fn corrupt_entry(&self, group: GroupId, index: Index) {
        let mut inner = self.inner.lock();
        if let Some(g) = inner.groups.get_mut(&group) {
            if index > g.base_index && index <= g.last_index() {
                g.unreadable = Some(g.unreadable.map_or(index, |u| u.min(index)));
            }
        }
    }

    /// Simulates a full disk: while `full`, every write, compaction and repair mark fails with
    /// [`StorageError::Full`] and changes nothing (reads go on). For tests and the simulator.
    pub fn set_full(&self, full: bool) {
        self.full.store(full, std::sync::atomic::Ordering::Relaxed);
    }

    fn check_space(&self) -> Result<(), StorageError> {
        if self.full.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StorageError::Full("no space left on the (simulated) device".into()));
        }
        Ok(())
    }

    fn accept(&self, op: Op) -> Result<Lsn, StorageError> {
        self.check_space()?;
        let mut inner = self.inner.lock();
        Inner::apply(&mut inner.groups, &op)?;
        inner.last_lsn += 1;
        let lsn = inner.last_lsn;
        if self.explicit_sync {
            inner.unsynced.push_back((lsn, op));
        } else {
            inner.durable_lsn = lsn;
        }
        Ok(Lsn(lsn))
    }
}

impl LogStore for MemLogStore {
    fn write(&self, batch: &[LogWrite<'_>]) -> Result<Lsn, StorageError> {
        self.check_space()?;
        let mut inner = self.inner.lock();
        // Validate every part first so a failed batch changes nothing. A group written twice in
        // one batch is validated against a scratch copy that has its earlier part applied.
        let mut staged: BTreeMap<GroupId, MemGroup> = BTreeMap::new();
        for (i, w) in batch.iter().enumerate() {
            let repeated = staged.contains_key(&w.group)
                || batch[i + 1..].iter().any(|later| later.group == w.group);
            if repeated {
                let g = staged.entry(w.group).or_insert_with(|| inner.group(w.group).clone());
                g.append(w.group, w.entries)?;
            } else {
                let g = inner.group(w.group);
                validate_append(w.group, w.entries, g.base_index, g.last_index(), |i| g.term(i))?;
            }
        }
        inner.last_lsn += 1;
        let lsn = inner.last_lsn;
        for w in batch {
            if self.explicit_sync {
                let op = Op::Write {
                    group: w.group,
                    hard_state: w.hard_state,
                    entries: w.entries.to_vec(),
                };
                Inner::apply(&mut inner.groups, &op)?;
                inner.unsynced.push_back((lsn, op));
            } else {
                // Durable on acceptance: no journal, and one copy of each entry handle.
                let g = inner.groups.entry(w.group).or_default();
                g.append(w.group, w.entries)?;
                if let Some(hs) = w.hard_state {
                    g.hard_state = hs;
                }
            }
        }
        if !self.explicit_sync {
            inner.durable_lsn = lsn;
        }
        Ok(Lsn(lsn))
    }

    fn sync(&self, lsn: Lsn) -> Result<(), StorageError> {
        let mut inner = self.inner.lock();
        let upto = lsn.0.min(inner.last_lsn);
        let Inner { durable, unsynced, .. } = &mut *inner;
        while let Some((op_lsn, _)) = unsynced.front() {
            if *op_lsn > upto {
                break;
            }
            if let Some((_, op)) = unsynced.pop_front() {
                // These ops were validated when accepted against the same prefix.
                Inner::apply(durable, &op)?;
            }
        }
        inner.durable_lsn = inner.durable_lsn.max(upto);
        Ok(())
    }

    fn durable_lsn(&self) -> Lsn {
        Lsn(self.inner.lock().durable_lsn)
    }

    fn compact(&self, group: GroupId, through: Index, term: Term) -> Result<Lsn, StorageError> {
        self.accept(Op::Compact { group, through, term })
    }

    fn remove_group(&self, group: GroupId) -> Result<Lsn, StorageError> {
        self.accept(Op::Remove { group })
    }

    fn entries(
        &self,
        group: GroupId,
        lo: Index,
        hi: Index,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let inner = self.inner.lock();
        let g = inner.group(group);
        if lo <= g.base_index {
            return Err(StorageError::Compacted { group, index: lo, first: g.base_index + 1 });
        }
        if hi > g.last_index() || lo > hi {
            return Err(StorageError::Unavailable {
                group,
                index: hi.max(lo),
                last: g.last_index(),
            });
        }
        if let Some(at) = g.unreadable.filter(|&u| u >= lo && u <= hi) {
            return Err(StorageError::Damaged {
                group,
                index: at,
                detail: "checksum mismatch (injected)".into(),
            });
        }
        let start = (lo - g.base_index - 1) as usize;
        let end = (hi - g.base_index) as usize;
        let mut bytes = 0;
        let mut out = Vec::with_capacity(end - start);
        for entry in (start..end).map(|i| g.entries.get(i)) {
            bytes += entry.size_bytes();
            if bytes > max_bytes && !out.is_empty() {
                break;
            }
            out.push(entry.clone());
        }
        Ok(out)
    }

    fn term(&self, group: GroupId, index: Index) -> Result<Term, StorageError> {
        let inner = self.inner.lock();
        let g = inner.group(group);
        if index < g.base_index {
            return Err(StorageError::Compacted { group, index, first: g.base_index + 1 });
        }
        g.term(index).ok_or(StorageError::Unavailable { group, index, last: g.last_index() })
    }

    fn log_state(&self, group: GroupId) -> Result<LogState, StorageError> {
        let inner = self.inner.lock();
        let g = inner.group(group);
        Ok(LogState {
            hard_state: g.hard_state,
            first_index: g.base_index + 1,
            last_index: g.last_index(),
            base_term: g.base_term,
        })
    }

    fn groups(&self) -> Result<Vec<GroupId>, StorageError> {
        Ok(self.inner.lock().groups.keys().copied().collect())
    }

    fn damage(&self, group: GroupId) -> Option<LogDamage> {
        self.inner.lock().group(group).damage
    }

    fn take_damage_found(&self, group: GroupId) -> Option<Index> {
        self.inner.lock().found.remove(&group)
    }

    fn mark_repaired(&self, group: GroupId) -> Result<Lsn, StorageError> {
        self.accept(Op::Repaired { group })
    }
}

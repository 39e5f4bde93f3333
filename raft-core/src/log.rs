//! The core's in-memory view of its log: the term of every index, recent entries, and the
//! cursors that say how far the log is handed out, durable, committed and handed to apply.
//!
//! The core never reads the log store on its hot path (the lesson of tikv#11320). It knows the
//! term of every index it holds through [`TermRuns`], a run-length encoding whose size grows with
//! the number of leader changes, not with the log; recent entries live in a bounded cache; and
//! anything older is read by the caller on request (a [`FetchRequest`](crate::ready::FetchRequest)).
//!
//! ```text
//!   base_index      cache_first                               last_index
//!       |               |                                         |
//!   ----+---------------+-----------------------------------------+
//!       | only in store |  cached in memory (and in store unless  |
//!       | (terms known) |  past `handed_index`)                   |
//! ```
//! **Invariant:** `base_index <= persisted <= handed_index <= last_index`, every entry past
//! `persisted` is cached, and `applying <= committed <= last_index`.

use std::collections::VecDeque;

use crate::error::StepError;
use crate::types::{Entry, EntryKind, Index, NodeId, Term};
use bytes::Bytes;

/// The term of every index in `(base_index, last_index]`, as runs of equal terms.
///
/// **Invariant:** run starts strictly increase and terms strictly increase from run to run
/// (terms in a log never decrease).
#[derive(Clone, Debug, Default)]
pub(crate) struct TermRuns {
    /// `(first index of the run, term)`.
    runs: Vec<(Index, Term)>,
}

impl TermRuns {
    /// Records that `index` (the new last index) has `term`.
    fn push(&mut self, index: Index, term: Term) {
        match self.runs.last() {
            Some(&(_, last_term)) if last_term == term => {}
            Some(&(start, last_term)) => {
                assert!(
                    term > last_term && index > start,
                    "term runs must grow: appending ({index}, {term}) after run ({start}, {last_term})"
                );
                self.runs.push((index, term));
            }
            None => self.runs.push((index, term)),
        }
    }

    /// Forgets every index after `index`.
    fn truncate_after(&mut self, index: Index) {
        while let Some(&(start, _)) = self.runs.last() {
            if start > index {
                self.runs.pop();
            } else {
                break;
            }
        }
    }

    /// Forgets every index before `first`, where `first` is within the log or just past it.
    fn trim_before(&mut self, first: Index, last_index: Index) {
        if first > last_index {
            self.runs.clear();
            return;
        }
        let run = self.run_of(first);
        self.runs.drain(..run);
        self.runs[0].0 = first;
    }

    /// The position of the run holding `index`, given that `index` is within the log.
    fn run_of(&self, index: Index) -> usize {
        self.runs.partition_point(|&(start, _)| start <= index) - 1
    }

    fn term_of(&self, index: Index) -> Term {
        // The common case, the last run, without a search.
        match self.runs.last() {
            Some(&(start, term)) if start <= index => term,
            _ => self.runs[self.run_of(index)].1,
        }
    }
}

/// Where the entries for a range can be found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Slice {
    /// The entries, from the cache, and their size in bytes.
    Cached(Vec<Entry>, u64),
    /// Nothing in the range.
    Empty,
    /// Not cached: the caller must fetch `[lo, hi]` from the store.
    Fetch { lo: Index, hi: Index },
}

/// A batch of entries handed out in one `Ready`, waiting for its durability acknowledgement.
#[derive(Clone, Copy, Debug)]
struct PersistBatch {
    number: u64,
    last_index: Index,
    /// The batch replaces the log from this index on.
    truncated_from: Option<Index>,
}

/// Why a follower could not append what a leader sent.
#[derive(Debug)]
pub(crate) enum AppendRejection {
    /// `(prev_index, prev_term)` is not in this log; the hint for the leader.
    Mismatch { hint_index: Index, hint_term: Term },
    /// The entries would replace a committed entry.
    Committed(StepError),
}

/// The core's log. See the module docs for the picture and the invariants.
#[derive(Debug)]
pub(crate) struct RaftLog {
    /// The index before the first entry held (0, or the last index compacted away).
    base_index: Index,
    /// The term at `base_index`.
    base_term: Term,
    /// The last index held.
    last_index: Index,
    terms: TermRuns,
    /// A suffix of the log ending at `last_index`.
    cache: VecDeque<Entry>,
    cache_bytes: u64,
    /// Entries up to here were handed to the caller to persist.
    handed_index: Index,
    /// The log was cut back to this index since the last hand-out; the next hand-out must say so.
    truncated_from: Option<Index>,
    /// Entries up to here are durable. **Invariant:** `persisted <= handed_index`.
    persisted: Index,
    /// Hand-outs not yet acknowledged durable, oldest first.
    persisting: VecDeque<PersistBatch>,
    /// Highest index known committed. **Invariant:** `committed <= last_index`.
    committed: Index,
    /// Entries up to here were handed to the state machine. **Invariant:** `applying <= committed`.
    applying: Index,
}

impl RaftLog {
    /// A log restored from storage: it holds `(base_index, last_index]` with the given term runs,
    /// all of it durable.
    pub(crate) fn restore(
        base_index: Index,
        base_term: Term,
        last_index: Index,
        runs: Vec<(Index, Term)>,
        committed: Index,
        applied: Index,
    ) -> Result<RaftLog, String> {
        if last_index < base_index {
            return Err(format!("last index {last_index} is before base index {base_index}"));
        }
        let terms = TermRuns { runs };
        let mut previous: Option<(Index, Term)> = None;
        for &(start, term) in &terms.runs {
            if start <= base_index || start > last_index {
                return Err(format!(
                    "term run ({start}, {term}) is outside the log ({base_index}, {last_index}]"
                ));
            }
            if let Some((p_start, p_term)) = previous {
                if start <= p_start || term <= p_term {
                    return Err(format!(
                        "term runs do not grow: ({p_start}, {p_term}) then ({start}, {term})"
                    ));
                }
            } else if start != base_index + 1 {
                return Err(format!("first term run starts at {start}, not at {}", base_index + 1));
            } else if term < base_term {
                return Err(format!("first term {term} is below the base term {base_term}"));
            }
            previous = Some((start, term));
        }
        if terms.runs.is_empty() && last_index != base_index {
            return Err(format!("no term runs for the entries ({base_index}, {last_index}]"));
        }
        let committed = committed.max(base_index);
        if committed > last_index {
            return Err(format!("commit index {committed} is past the last index {last_index}"));
        }
        let applying = applied.max(base_index);
        if applying > committed {
            return Err(format!("applied index {applying} is past the commit index {committed}"));
        }
        Ok(RaftLog {
            base_index,
            base_term,
            last_index,
            terms,
            cache: VecDeque::new(),
            cache_bytes: 0,
            handed_index: last_index,
            truncated_from: None,
            persisted: last_index,
            persisting: VecDeque::new(),
            committed,
            applying,
        })
    }

    pub(crate) fn last_index(&self) -> Index {
        self.last_index
    }

    pub(crate) fn last_term(&self) -> Term {
        self.term(self.last_index).unwrap_or(self.base_term)
    }

    pub(crate) fn first_index(&self) -> Index {
        self.base_index + 1
    }

    pub(crate) fn base_index(&self) -> Index {
        self.base_index
    }

    pub(crate) fn committed(&self) -> Index {
        self.committed
    }

    pub(crate) fn persisted(&self) -> Index {
        self.persisted
    }

    pub(crate) fn applying(&self) -> Index {
        self.applying
    }

    /// The term at `index`, if the log knows it (`base_index ..= last_index`).
    pub(crate) fn term(&self, index: Index) -> Option<Term> {
        if index == self.base_index {
            Some(self.base_term)
        } else if index < self.base_index || index > self.last_index {
            None
        } else {
            Some(self.terms.term_of(index))
        }
    }

    /// Raft §5.4.1: a candidate's log is at least as up to date as ours.
    pub(crate) fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        let my_term = self.last_term();
        last_term > my_term || (last_term == my_term && last_index >= self.last_index)
    }

    /// The largest index at or below `index` whose term is at most `term` (the base index if
    /// there is none). Both sides of fast backtracking use it: a follower to build its hint, the
    /// leader to turn the hint into the next index to probe.
    pub(crate) fn find_conflict_by_term(&self, index: Index, term: Term) -> Index {
        let index = index.min(self.last_index);
        if index <= self.base_index {
            return index;
        }
        let mut run = self.terms.run_of(index);
        loop {
            let (start, run_term) = self.terms.runs[run];
            if run_term <= term {
                // Every index of this run up to `index` has a small enough term; the largest is
                // the run's end (or `index` itself in the run holding it).
                let run_end = self.terms.runs.get(run + 1).map_or(self.last_index, |r| r.0 - 1);
                return run_end.min(index);
            }
            if run == 0 {
                return start - 1;
            }
            run -= 1;
        }
    }

    /// Appends a new entry as leader and returns its index.
    pub(crate) fn append_new(&mut self, term: Term, kind: EntryKind, data: Bytes) -> Index {
        let index = self.last_index + 1;
        self.push_entry(Entry { term, index, kind, data });
        index
    }

    fn push_entry(&mut self, entry: Entry) {
        debug_assert_eq!(entry.index, self.last_index + 1, "log entries must be consecutive");
        self.terms.push(entry.index, entry.term);
        self.last_index = entry.index;
        self.cache_bytes += entry.size_bytes();
        self.cache.push_back(entry);
    }

    /// The first cached index (`last_index + 1` when nothing is cached).
    fn cache_first(&self) -> Index {
        self.last_index + 1 - self.cache.len() as Index
    }

    /// Follower side of AppendEntries: appends `entries`, which follow `(prev_index, prev_term)`,
    /// replacing a conflicting uncommitted suffix. Returns the last index now known to match the
    /// leader. The caller has validated that `entries` are consecutive from `prev_index + 1` and
    /// that `prev_index >= committed`.
    pub(crate) fn maybe_append(
        &mut self,
        prev_index: Index,
        prev_term: Term,
        entries: Vec<Entry>,
        from: NodeId,
        msg_term: Term,
    ) -> Result<Index, AppendRejection> {
        debug_assert!(prev_index >= self.committed);
        match self.term(prev_index) {
            Some(term) if term == prev_term => {}
            _ => {
                let hint_index = self.find_conflict_by_term(prev_index, prev_term);
                let hint_term = self.term(hint_index).unwrap_or(self.base_term);
                return Err(AppendRejection::Mismatch { hint_index, hint_term });
            }
        }
        let last_new = prev_index + entries.len() as Index;
        // Find the first entry that is new or conflicts. Entries we already hold with the same
        // term are the same entries (Log Matching) and are skipped, which makes a duplicated or
        // reordered old message harmless.
        let mut skip = 0;
        if prev_index < self.last_index {
            for entry in &entries {
                match self.term(entry.index) {
                    Some(term) if term == entry.term => skip += 1,
                    Some(_) => {
                        if entry.index <= self.committed {
                            return Err(AppendRejection::Committed(StepError::CommittedConflict {
                                from,
                                term: msg_term,
                                index: entry.index,
                                commit: self.committed,
                            }));
                        }
                        self.truncate_after(entry.index - 1);
                        break;
                    }
                    None => break,
                }
            }
        }
        for entry in entries.into_iter().skip(skip) {
            self.push_entry(entry);
        }
        Ok(last_new)
    }

    /// Forgets the entries up to `index` (which must be durable and applied): a snapshot covers
    /// them. Returns the term at `index`, or `None` (and changes nothing) if `index` is not past
    /// the base or not held.
    pub(crate) fn compact_prefix(&mut self, index: Index) -> Option<Term> {
        if index <= self.base_index || index > self.persisted.min(self.applying) {
            return None;
        }
        let term = self.term(index)?;
        self.drop_cached_through(index);
        self.terms.trim_before(index + 1, self.last_index);
        self.base_index = index;
        self.base_term = term;
        Some(term)
    }

    /// Moves the log onto a snapshot at `(index, term)` installed from a leader (which must be
    /// past the commit index). Entries after it are kept if the log holds `(index, term)` (Log
    /// Matching: they extend the same prefix); otherwise the log is discarded and continues at
    /// `index + 1`. Everything up to `index` counts as durable, committed and applied: the
    /// installed snapshot holds it.
    pub(crate) fn install_snapshot(&mut self, index: Index, term: Term) {
        assert!(
            index > self.committed,
            "snapshot at {index} does not pass the commit index {}",
            self.committed
        );
        if self.term(index) == Some(term) {
            self.drop_cached_through(index);
            self.terms.trim_before(index + 1, self.last_index);
            self.handed_index = self.handed_index.max(index);
        } else {
            self.cache.clear();
            self.cache_bytes = 0;
            self.terms.runs.clear();
            self.last_index = index;
            self.handed_index = index;
            // Writes handed out before may still be acknowledged; none of their entries past
            // the snapshot belongs to this log any more.
            let cut = index + 1;
            self.truncated_from = Some(self.truncated_from.map_or(cut, |t| t.min(cut)));
            self.persisted = index;
        }
        self.base_index = index;
        self.base_term = term;
        self.persisted = self.persisted.max(index);
        self.committed = index;
        self.applying = index;
    }

    fn drop_cached_through(&mut self, index: Index) {
        while let Some(front) = self.cache.front() {
            if front.index > index {
                break;
            }
            self.cache_bytes -= front.size_bytes();
            self.cache.pop_front();
        }
    }

    /// The store lost entries from `from` on (which must be past `applying`): the log ends
    /// before `from`, and the commit index falls back with it (it is knowledge this node can no
    /// longer act on; the leader tells it again). The store still holds the damaged entries
    /// until the next hand-out replaces them.
    pub(crate) fn cut_damaged(&mut self, from: Index) {
        assert!(
            from > self.applying && from > self.base_index,
            "damage at {from} reaches applied or compacted entries (applying {}, base {})",
            self.applying,
            self.base_index
        );
        self.committed = self.committed.min(from - 1);
        self.truncate_after(from - 1);
        // Whatever was handed out, the store's entries from `from` on must be replaced.
        self.truncated_from = Some(self.truncated_from.map_or(from, |t| t.min(from)));
        self.handed_index = self.handed_index.min(from - 1);
    }

    /// Cuts the log back so that `index` is the last entry.
    fn truncate_after(&mut self, index: Index) {
        assert!(
            index >= self.committed,
            "truncation to {index} would remove committed entries (commit index {})",
            self.committed
        );
        let first_cut = index + 1;
        while let Some(entry) = self.cache.back() {
            if entry.index > index {
                self.cache_bytes -= entry.size_bytes();
                self.cache.pop_back();
            } else {
                break;
            }
        }
        self.terms.truncate_after(index);
        self.last_index = index;
        if first_cut <= self.handed_index {
            self.handed_index = index;
            self.truncated_from = Some(self.truncated_from.map_or(first_cut, |t| t.min(first_cut)));
        }
        self.persisted = self.persisted.min(index);
    }

    /// Entries not yet handed out for persisting, and the number of the hand-out. Returns
    /// nothing when there is nothing new.
    /// Gives back memory a burst grew (a sleeping group keeps none).
    pub(crate) fn shrink(&mut self) {
        self.cache.shrink_to_fit();
        self.persisting.shrink_to_fit();
        self.terms.runs.shrink_to_fit();
    }

    pub(crate) fn take_unpersisted(&mut self, number: u64) -> Vec<Entry> {
        if self.handed_index == self.last_index && self.truncated_from.is_none() {
            return Vec::new();
        }
        let from = self.handed_index + 1;
        let skip = (from - self.cache_first()) as usize;
        let entries: Vec<Entry> = self.cache.range(skip..).cloned().collect();
        debug_assert!(entries.first().is_none_or(|e| e.index == from));
        self.persisting.push_back(PersistBatch {
            number,
            last_index: self.last_index,
            truncated_from: self.truncated_from.take(),
        });
        self.handed_index = self.last_index;
        entries
    }

    /// The caller made every hand-out up to `number` durable. Returns whether `persisted` moved.
    pub(crate) fn on_persisted(&mut self, number: u64) -> bool {
        let mut acked = None;
        while let Some(batch) = self.persisting.front() {
            if batch.number > number {
                break;
            }
            acked = self.persisting.pop_front();
        }
        let Some(batch) = acked else { return false };
        // A later hand-out (or a truncation not yet handed out) that cut the log back makes the
        // acknowledged entries past the cut stale: they are no longer this log's entries.
        let mut cap = batch.last_index.min(self.last_index);
        for later in &self.persisting {
            if let Some(from) = later.truncated_from {
                cap = cap.min(from - 1);
            }
        }
        if let Some(from) = self.truncated_from {
            cap = cap.min(from - 1);
        }
        if cap > self.persisted {
            self.persisted = cap;
            true
        } else {
            false
        }
    }

    pub(crate) fn commit_to(&mut self, index: Index) -> bool {
        if index > self.committed {
            assert!(
                index <= self.last_index,
                "commit index {index} past the last index {}",
                self.last_index
            );
            self.committed = index;
            true
        } else {
            false
        }
    }

    /// Whether committed, durable entries wait to be handed to the state machine.
    pub(crate) fn has_applicable(&self) -> bool {
        self.applying < self.committed.min(self.persisted)
    }

    /// Takes the next committed entries to apply, at most `max_bytes` (at least one entry), and
    /// advances the applying index past them. Only locally durable entries are applied, so
    /// `applied <= persisted` always holds. Entries below `keep_from` that start the cache are
    /// moved out rather than copied: nobody needs them in memory after this.
    pub(crate) fn take_applicable(&mut self, max_bytes: u64, keep_from: Index) -> Slice {
        let hi = self.committed.min(self.persisted);
        let lo = self.applying + 1;
        if lo > hi {
            return Slice::Empty;
        }
        let mut out = Vec::new();
        let mut bytes = 0u64;
        let mut next = lo;
        // Move out what leaves the cache anyway.
        while next <= hi && next < keep_from && self.cache_first() == next {
            let Some(front) = self.cache.front() else { break };
            let size = front.size_bytes();
            if bytes + size > max_bytes && !out.is_empty() {
                break;
            }
            bytes += size;
            self.cache_bytes -= size;
            if let Some(entry) = self.cache.pop_front() {
                out.push(entry);
            }
            next += 1;
        }
        if out.is_empty() {
            match self.slice(next, hi, usize::MAX, max_bytes) {
                Slice::Cached(entries, _) => out = entries,
                other => return other,
            }
        } else if next <= hi && bytes < max_bytes {
            if let Slice::Cached(more, _) = self.slice(next, hi, usize::MAX, max_bytes - bytes) {
                out.extend(more);
            }
        }
        if let Some(last) = out.last() {
            self.applying = last.index;
        }
        Slice::Cached(out, bytes)
    }

    pub(crate) fn advance_applying(&mut self, index: Index) {
        debug_assert!(index <= self.committed);
        self.applying = self.applying.max(index);
    }

    /// Entries `[lo, hi]` from the cache, at most `max_count` and `max_bytes` (at least one),
    /// with their size in bytes.
    pub(crate) fn slice(&self, lo: Index, hi: Index, max_count: usize, max_bytes: u64) -> Slice {
        let hi = hi.min(self.last_index);
        if lo > hi {
            return Slice::Empty;
        }
        let cache_first = self.cache_first();
        if lo < cache_first {
            return Slice::Fetch { lo, hi: hi.min(cache_first - 1) };
        }
        let start = (lo - cache_first) as usize;
        let wanted = ((hi - lo + 1) as usize).min(max_count);
        let mut bytes = 0u64;
        let mut out = Vec::with_capacity(wanted);
        for entry in self.cache.range(start..start + wanted) {
            let size = entry.size_bytes();
            if bytes + size > max_bytes && !out.is_empty() {
                break;
            }
            bytes += size;
            out.push(entry.clone());
        }
        Slice::Cached(out, bytes)
    }

    /// Drops cached entries from the front that nobody needs from memory any more: never an
    /// entry that is not yet durable or not yet handed to the state machine; below `keep_from`
    /// (what lagging followers may still need) freely; from `keep_from` on only while the cache
    /// is over `max_bytes`, after which those followers are served from the store.
    pub(crate) fn evict(&mut self, keep_from: Index, max_bytes: u64) {
        let floor = self.persisted.min(self.applying);
        while let Some(front) = self.cache.front() {
            let evictable =
                front.index <= floor && (front.index < keep_from || self.cache_bytes > max_bytes);
            if !evictable {
                break;
            }
            self.cache_bytes -= front.size_bytes();
            self.cache.pop_front();
        }
    }

    /// Bytes of the cached entries of `term` in `[lo, hi]`, without copying them.
    pub(crate) fn cached_bytes_of_term(&self, lo: Index, hi: Index, term: Term) -> u64 {
        let cache_first = self.cache_first();
        let lo = lo.max(cache_first);
        if lo > hi.min(self.last_index) {
            return 0;
        }
        let start = (lo - cache_first) as usize;
        let end = (hi.min(self.last_index) - cache_first) as usize;
        self.cache.range(start..=end).filter(|e| e.term == term).map(Entry::size_bytes).sum()
    }

    /// Whether entries (or a truncation) wait to be handed out for persisting.
    pub(crate) fn has_unhanded(&self) -> bool {
        self.handed_index < self.last_index || self.truncated_from.is_some()
    }

    /// Checks fetched entries against the terms this log knows, so a read that raced a
    /// truncation is not used.
    pub(crate) fn matches(&self, entries: &[Entry]) -> bool {
        entries.iter().all(|e| self.term(e.index) == Some(e.term))
    }

    pub(crate) fn cached_entries(&self) -> usize {
        self.cache.len()
    }

    pub(crate) fn cache_bytes(&self) -> u64 {
        self.cache_bytes
    }

    /// The term runs, for status and the simulator's checks.
    pub(crate) fn term_runs(&self) -> &[(Index, Term)] {
        &self.terms.runs
    }

    /// Checks the log's invariants; panics naming the one that broke.
    pub(crate) fn check_invariants(&self) {
        assert!(
            self.base_index <= self.persisted,
            "base {} > persisted {}",
            self.base_index,
            self.persisted
        );
        assert!(
            self.persisted <= self.handed_index,
            "persisted {} > handed {}",
            self.persisted,
            self.handed_index
        );
        assert!(
            self.handed_index <= self.last_index,
            "handed {} > last {}",
            self.handed_index,
            self.last_index
        );
        assert!(
            self.applying <= self.committed,
            "applying {} > committed {}",
            self.applying,
            self.committed
        );
        assert!(
            self.committed <= self.last_index,
            "committed {} > last {}",
            self.committed,
            self.last_index
        );
        assert!(
            self.cache_first() <= self.persisted + 1,
            "entry {} is not durable but not cached (cache starts at {})",
            self.persisted + 1,
            self.cache_first()
        );
        if let Some(last) = self.cache.back() {
            assert_eq!(last.index, self.last_index, "cache does not end at the last index");
        }
        for (i, entry) in self.cache.iter().enumerate() {
            assert_eq!(entry.index, self.cache_first() + i as Index, "cache is not consecutive");
            assert_eq!(
                Some(entry.term),
                self.term(entry.index),
                "cache term disagrees with term runs"
            );
        }
        let bytes: u64 = self.cache.iter().map(Entry::size_bytes).sum();
        assert_eq!(bytes, self.cache_bytes, "cache byte count drifted");
        for pair in self.terms.runs.windows(2) {
            assert!(
                pair[0].0 < pair[1].0 && pair[0].1 < pair[1].1,
                "term runs do not grow: {pair:?}"
            );
        }
        if let Some(&(start, term)) = self.terms.runs.first() {
            assert_eq!(start, self.base_index + 1, "first term run does not start after the base");
            assert!(term >= self.base_term, "first term {term} below base term {}", self.base_term);
        }
    }
}

/// Builds the term runs of a stored log with few lookups: terms never decrease along the log,
/// so the start of each run is found by binary search. Costs `O(runs * log(entries))` calls of
/// `term_at`, which is how a restarted node learns its log's terms without reading every entry.
pub(crate) fn discover_term_runs<E>(
    base_index: Index,
    last_index: Index,
    mut term_at: impl FnMut(Index) -> Result<Term, E>,
) -> Result<Vec<(Index, Term)>, E> {
    let mut runs = Vec::new();
    let mut start = base_index + 1;
    while start <= last_index {
        let term = term_at(start)?;
        runs.push((start, term));
        // Find the last index with this term: the largest i in [start, last] with term_at(i) == term.
        let (mut lo, mut hi) = (start, last_index);
        if term_at(hi)? == term {
            break;
        }
        // Invariant: term_at(lo) == term, term_at(hi) > term.
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if term_at(mid)? == term {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        start = hi;
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with_terms(terms: &[Term]) -> RaftLog {
        let mut log = RaftLog::restore(0, 0, 0, Vec::new(), 0, 0).unwrap();
        for &t in terms {
            log.append_new(t, EntryKind::Normal, Bytes::new());
        }
        log
    }

    #[test]
    fn term_lookup_across_runs() {
        let log = log_with_terms(&[1, 1, 2, 2, 2, 5]);
        assert_eq!(log.term(0), Some(0));
        assert_eq!(log.term(1), Some(1));
        assert_eq!(log.term(2), Some(1));
        assert_eq!(log.term(3), Some(2));
        assert_eq!(log.term(5), Some(2));
        assert_eq!(log.term(6), Some(5));
        assert_eq!(log.term(7), None);
        assert_eq!(log.term_runs(), &[(1, 1), (3, 2), (6, 5)]);
    }

    #[test]
    fn conflict_by_term_skips_whole_terms() {
        let log = log_with_terms(&[1, 1, 2, 2, 2, 5, 5]);
        // Nothing at or below 7 with term <= 4 beyond index 5.
        assert_eq!(log.find_conflict_by_term(7, 4), 5);
        assert_eq!(log.find_conflict_by_term(7, 5), 7);
        assert_eq!(log.find_conflict_by_term(4, 1), 2);
        assert_eq!(log.find_conflict_by_term(100, 9), 7);
        assert_eq!(log.find_conflict_by_term(7, 0), 0);
    }

    #[test]
    fn truncation_and_reappend_track_persistence() {
        let mut log = log_with_terms(&[1, 1, 1]);
        let handed = log.take_unpersisted(1);
        assert_eq!(handed.len(), 3);
        assert!(log.on_persisted(1));
        assert_eq!(log.persisted(), 3);
        // A leader of term 2 replaces entry 3.
        let last = log
            .maybe_append(
                2,
                1,
                vec![Entry::normal(2, 3, Bytes::new()), Entry::normal(2, 4, Bytes::new())],
                9,
                2,
            )
            .unwrap();
        assert_eq!(last, 4);
        assert_eq!(log.persisted(), 2);
        let handed = log.take_unpersisted(2);
        assert_eq!(handed.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(), [(3, 2), (4, 2)]);
        assert!(log.on_persisted(2));
        assert_eq!(log.persisted(), 4);
        log.check_invariants();
    }

    #[test]
    fn late_ack_of_truncated_batch_is_capped() {
        let mut log = log_with_terms(&[1, 1, 1]);
        log.take_unpersisted(1);
        // Entry 2 onwards is replaced before batch 1 is acknowledged.
        log.maybe_append(1, 1, vec![Entry::normal(2, 2, Bytes::new())], 9, 2).unwrap();
        log.take_unpersisted(2);
        // The ack of batch 1 may only cover entry 1: entries 2 and 3 of batch 1 are gone.
        log.on_persisted(1);
        assert_eq!(log.persisted(), 1);
        log.on_persisted(2);
        assert_eq!(log.persisted(), 2);
        log.check_invariants();
    }

    #[test]
    fn discover_runs_matches_terms() {
        let terms = [1, 1, 1, 3, 3, 4, 7, 7, 7, 7];
        let runs = discover_term_runs::<()>(0, terms.len() as Index, |i| Ok(terms[i as usize - 1]))
            .unwrap();
        assert_eq!(runs, vec![(1, 1), (4, 3), (6, 4), (7, 7)]);
        let one = discover_term_runs::<()>(5, 6, |_| Ok(2)).unwrap();
        assert_eq!(one, vec![(6, 2)]);
        assert!(discover_term_runs::<()>(5, 5, |_| Ok(2)).unwrap().is_empty());
    }

    #[test]
    fn eviction_keeps_undurable_and_unapplied_entries() {
        let mut log = log_with_terms(&[1; 10]);
        log.evict(Index::MAX, 0);
        assert_eq!(log.cached_entries(), 10, "nothing is durable yet");
        log.take_unpersisted(1);
        log.on_persisted(1);
        log.commit_to(6);
        log.advance_applying(4);
        log.evict(3, 1 << 20);
        assert_eq!(log.cached_entries(), 8, "a lagging follower keeps entries 3 and up");
        log.evict(3, 0);
        assert_eq!(log.cached_entries(), 6, "over budget: entries past the applying index stay");
        assert_eq!(log.slice(1, 3, 10, 1000), Slice::Fetch { lo: 1, hi: 3 });
        log.commit_to(8);
        // Applying moves entries that nobody keeps out of the cache instead of copying them.
        let Slice::Cached(applied, _) = log.take_applicable(1 << 20, Index::MAX) else { panic!() };
        assert_eq!(applied.iter().map(|e| e.index).collect::<Vec<_>>(), [5, 6, 7, 8]);
        assert_eq!(log.cached_entries(), 2);
        assert_eq!(log.applying(), 8);
        log.check_invariants();
    }
}

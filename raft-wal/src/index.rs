//! The in-memory index: per group, where each entry's bytes are, its term, and the group's
//! hard state and compaction point. Reading an entry is a lookup here and a copy from a
//! segment's mapping.
//!
//! **Invariant:** a group's entries are `base_index + 1 ..= base_index + locs.len()`, with no
//! holes, and `terms` covers exactly that range.
//!
//! Memory: 16 bytes per entry ([`Loc`]) in fixed-size chunks, so the slack is at most one chunk
//! per group, plus one `(index, term)` pair per term change.

use std::collections::VecDeque;

use raft_core::{EntryKind, HardState, Index, Term};

use crate::format;

/// Where one entry's payload is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Loc {
    /// The segment's sequence number.
    pub(crate) segment: u32,
    /// Byte offset of the payload in the segment.
    pub(crate) offset: u32,
    /// Payload length; the top two bits give the entry's kind (as in the segment's table).
    pub(crate) len: u32,
    /// CRC32C of the payload.
    pub(crate) crc: u32,
}

impl Loc {
    pub(crate) fn new(segment: u32, offset: u32, len: u32, kind: EntryKind, crc: u32) -> Loc {
        Loc { segment, offset, len: len | format::kind_bits(kind), crc }
    }

    pub(crate) fn data_len(&self) -> usize {
        (self.len & !format::KIND_MASK) as usize
    }

    pub(crate) fn kind(&self) -> EntryKind {
        format::kind_of(self.len).unwrap_or(EntryKind::Normal)
    }
}

const CHUNK: usize = 4096;

/// A deque of [`Loc`]s in fixed-size chunks: growing never copies, dropping a prefix frees
/// whole chunks.
#[derive(Debug, Default)]
pub(crate) struct Locs {
    chunks: VecDeque<Vec<Loc>>,
    skipped: usize,
    len: usize,
}

impl Locs {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn get(&self, i: usize) -> Loc {
        let at = self.skipped + i;
        self.chunks[at / CHUNK][at % CHUNK]
    }

    pub(crate) fn push(&mut self, loc: Loc) {
        match self.chunks.back_mut() {
            Some(last) if last.len() < CHUNK => last.push(loc),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(loc);
                self.chunks.push_back(chunk);
            }
        }
        self.len += 1;
    }

    /// Keeps the first `len` locations, calling `removed` for each dropped one.
    pub(crate) fn truncate(&mut self, len: usize, mut removed: impl FnMut(Loc)) {
        while self.len > len {
            let last = self.chunks.back_mut().and_then(Vec::pop);
            if let Some(loc) = last {
                removed(loc);
                self.len -= 1;
            }
            if self.chunks.back().is_some_and(Vec::is_empty) {
                self.chunks.pop_back();
            }
        }
        if self.len == 0 {
            *self = Locs::default();
        }
    }

    /// Drops the first `n` locations, calling `removed` for each.
    pub(crate) fn drop_front(&mut self, n: usize, mut removed: impl FnMut(Loc)) {
        let n = n.min(self.len);
        for i in 0..n {
            removed(self.get(i));
        }
        self.skipped += n;
        self.len -= n;
        while self.skipped >= CHUNK {
            self.chunks.pop_front();
            self.skipped -= CHUNK;
        }
        if self.len == 0 {
            *self = Locs::default();
        }
    }

    /// Bytes of memory held.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.chunks.iter().map(|c| c.capacity() * std::mem::size_of::<Loc>()).sum::<usize>()
            + self.chunks.capacity() * std::mem::size_of::<Vec<Loc>>()
    }
}

/// One group's state.
#[derive(Debug, Default)]
pub(crate) struct GroupIndex {
    pub(crate) hard_state: HardState,
    /// The index before the first entry held.
    pub(crate) base_index: Index,
    pub(crate) base_term: Term,
    pub(crate) locs: Locs,
    /// `(first index, term)` runs over the entries held.
    terms: Vec<(Index, Term)>,
}

impl GroupIndex {
    /// An empty log continuing after `(base_index, base_term)`.
    pub(crate) fn with_base(base_index: Index, base_term: Term) -> GroupIndex {
        GroupIndex { base_index, base_term, ..GroupIndex::default() }
    }

    pub(crate) fn last_index(&self) -> Index {
        self.base_index + self.locs.len() as Index
    }

    pub(crate) fn first_index(&self) -> Index {
        self.base_index + 1
    }

    /// The term of `index`, if held (the base's term at `base_index`).
    pub(crate) fn term(&self, index: Index) -> Option<Term> {
        if index == self.base_index {
            return Some(self.base_term);
        }
        if index < self.base_index || index > self.last_index() {
            return None;
        }
        match self.terms.last() {
            Some(&(start, term)) if start <= index => Some(term),
            _ => {
                let i = self.terms.partition_point(|&(start, _)| start <= index);
                Some(self.terms[i - 1].1)
            }
        }
    }

    pub(crate) fn loc(&self, index: Index) -> Option<Loc> {
        (index > self.base_index && index <= self.last_index())
            .then(|| self.locs.get((index - self.base_index - 1) as usize))
    }

    /// Appends the entry `last_index() + 1`.
    pub(crate) fn push(&mut self, term: Term, loc: Loc) {
        let index = self.last_index() + 1;
        if self.terms.last().is_none_or(|&(_, t)| t != term) {
            self.terms.push((index, term));
        }
        self.locs.push(loc);
    }

    /// Removes every entry after `last_kept`.
    pub(crate) fn truncate_after(&mut self, last_kept: Index, removed: impl FnMut(Loc)) {
        let keep = last_kept.saturating_sub(self.base_index).min(self.locs.len() as Index);
        self.locs.truncate(keep as usize, removed);
        let last = self.last_index();
        while self.terms.last().is_some_and(|&(start, _)| start > last) {
            self.terms.pop();
        }
    }

    /// Raft §7 compaction: drops entries through `through` if the log holds `(through, term)`,
    /// else the whole log; the log continues at `through + 1`. Returns false if `through` is at
    /// or below the base (nothing to do).
    pub(crate) fn compact(
        &mut self,
        through: Index,
        term: Term,
        mut removed: impl FnMut(Loc),
    ) -> bool {
        if through <= self.base_index {
            return false;
        }
        if self.term(through) == Some(term) {
            let n = (through - self.base_index) as usize;
            self.locs.drop_front(n, &mut removed);
            let first = through + 1;
            // Keep the run holding `first`, starting it there.
            let keep_from =
                self.terms.partition_point(|&(start, _)| start <= first).saturating_sub(1);
            self.terms.drain(..keep_from);
            if let Some(run) = self.terms.first_mut() {
                if run.0 < first {
                    run.0 = first;
                }
            }
            if self.locs.len() == 0 {
                self.terms.clear();
            }
        } else {
            self.locs.truncate(0, &mut removed);
            self.terms.clear();
        }
        self.base_index = through;
        self.base_term = term;
        true
    }

    /// Bytes of memory the index of this group holds.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.locs.heap_bytes() + self.terms.capacity() * std::mem::size_of::<(Index, Term)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(i: u32) -> Loc {
        Loc::new(1, i * 10, i, EntryKind::Normal, i)
    }

    #[test]
    fn push_truncate_compact_keep_terms_right() {
        let mut g = GroupIndex::default();
        for i in 1..=10u32 {
            g.push(if i <= 4 { 1 } else { 3 }, loc(i));
        }
        assert_eq!(
            (g.term(4), g.term(5), g.term(10), g.term(11)),
            (Some(1), Some(3), Some(3), None)
        );
        let mut removed = Vec::new();
        g.truncate_after(6, |l| removed.push(l.offset / 10));
        assert_eq!(removed, vec![10, 9, 8, 7]);
        assert_eq!(g.last_index(), 6);
        g.push(4, loc(7));
        assert_eq!(g.term(7), Some(4));
        let mut removed = 0;
        assert!(g.compact(5, 3, |_| removed += 1));
        assert_eq!(
            (removed, g.first_index(), g.term(5), g.term(6), g.term(7)),
            (5, 6, Some(3), Some(3), Some(4))
        );
        assert_eq!(g.loc(6), Some(loc(6)));
        assert!(!g.compact(3, 1, |_| {}), "at or below the base: nothing to do");
        // Compacting at a term the log does not hold discards it.
        assert!(g.compact(9, 9, |_| removed += 1));
        assert_eq!((g.base_index, g.last_index(), g.term(9)), (9, 9, Some(9)));
    }

    #[test]
    fn locs_span_chunks() {
        let mut l = Locs::default();
        for i in 0..(3 * CHUNK as u32 + 5) {
            l.push(loc(i));
        }
        l.drop_front(CHUNK + 1, |_| {});
        assert_eq!(l.get(0), loc(CHUNK as u32 + 1));
        l.truncate(10, |_| {});
        assert_eq!((l.len(), l.get(9)), (10, loc(CHUNK as u32 + 10)));
        assert!(l.heap_bytes() <= 2 * CHUNK * std::mem::size_of::<Loc>() + 256);
    }
}

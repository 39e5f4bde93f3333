//! The [`LogStore`] conformance suite: [`StoreHarness`] and
//! [`log_store_conformance!`](crate::log_store_conformance).

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::error::StorageError;
use crate::membership::Membership;
use crate::rng::Rng;
use crate::storage::{LogState, LogStore, LogWrite, Lsn};
use crate::types::{Entry, GroupId, HardState, Index, Term};

/// Opens a store under test. Opening again after the previous store was dropped must find
/// everything that was synced.
pub trait StoreHarness {
    /// The store type.
    type Store: LogStore;
    /// Opens the store, creating it on first use.
    fn open(&mut self) -> Self::Store;

    /// Whether `sync` makes writes durable in this configuration. A store configured never to
    /// sync (for benchmarks) returns false; the suite then skips the checks of `durable_lsn`.
    fn syncs(&self) -> bool {
        true
    }
}

/// Drops `store` and opens it again.
fn reopen<H: StoreHarness>(h: &mut H, store: H::Store) -> H::Store {
    drop(store);
    h.open()
}

/// An entry whose payload encodes its identity, with a size that varies with its index.
pub fn entry(index: Index, term: Term) -> Entry {
    let len = (index % 7) as usize * 13;
    let mut data = format!("g?i{index}t{term}:").into_bytes();
    data.resize(data.len() + len, b'x');
    Entry::normal(term, index, Bytes::from(data))
}

/// Entries `lo..=hi`, all of `term`.
pub fn entries(lo: Index, hi: Index, term: Term) -> Vec<Entry> {
    (lo..=hi).map(|i| entry(i, term)).collect()
}

fn write(store: &impl LogStore, group: GroupId, entries: &[Entry]) {
    let lsn = store
        .write(&[LogWrite { group, hard_state: None, entries }])
        .unwrap_or_else(|e| panic!("write to group {group} failed: {e}"));
    store.sync(lsn).unwrap_or_else(|e| panic!("sync failed: {e}"));
}

fn state(store: &impl LogStore, group: GroupId) -> LogState {
    store.log_state(group).unwrap_or_else(|e| panic!("log_state({group}) failed: {e}"))
}

fn read_all(store: &impl LogStore, group: GroupId) -> Vec<Entry> {
    let s = state(store, group);
    if s.last_index < s.first_index {
        return Vec::new();
    }
    store
        .entries(group, s.first_index, s.last_index, u64::MAX)
        .unwrap_or_else(|e| panic!("reading group {group} failed: {e}"))
}

/// A group never written to is empty, with a zero hard state.
pub fn empty_store<H: StoreHarness>(h: &mut H) {
    let store = h.open();
    let s = state(&store, 7);
    assert_eq!(
        s,
        LogState { hard_state: HardState::default(), first_index: 1, last_index: 0, base_term: 0 }
    );
    assert_eq!(store.term(7, 0).expect("term of index 0"), 0);
    assert!(matches!(store.term(7, 1), Err(StorageError::Unavailable { .. })));
    assert!(matches!(store.entries(7, 1, 1, u64::MAX), Err(StorageError::Unavailable { .. })));
}

/// Appended entries read back identically, by range and by term.
pub fn append_and_read<H: StoreHarness>(h: &mut H) {
    let store = h.open();
    let mut all = entries(1, 40, 1);
    all.extend(entries(41, 100, 3));
    for chunk in all.chunks(9) {
        write(&store, 1, chunk);
    }
    assert_eq!(read_all(&store, 1), all);
    let s = state(&store, 1);
    assert_eq!((s.first_index, s.last_index), (1, 100));
    assert_eq!(store.entries(1, 37, 44, u64::MAX).expect("range"), all[36..44].to_vec());
    assert_eq!(store.entries(1, 100, 100, u64::MAX).expect("last"), all[99..].to_vec());
    assert_eq!(store.term(1, 40).expect("term"), 1);
    assert_eq!(store.term(1, 41).expect("term"), 3);
    assert!(matches!(store.entries(1, 90, 101, u64::MAX), Err(StorageError::Unavailable { .. })));
    assert!(matches!(store.term(1, 101), Err(StorageError::Unavailable { .. })));
}

/// Every entry kind reads back as written, before and after reopening, and
/// [`LogStore::config_entries`] finds exactly the membership entries of a range (after a
/// truncation and a compaction too).
pub fn entry_kinds_survive_reopen<H: StoreHarness>(h: &mut H) {
    let store = h.open();
    let config = |index, voters: &[u64]| Entry::config(2, index, &Membership::new(voters.to_vec()));
    let mut all = entries(1, 3, 1);
    all.push(Entry::noop(2, 4));
    all.push(config(5, &[1, 2, 3]));
    all.extend(entries(6, 8, 2).into_iter().map(|e| Entry { term: 2, ..e }));
    all.push(config(9, &[1, 2, 3, 4]));
    all.push(Entry::noop(2, 10));
    write(&store, 3, &all);
    let configs = |store: &H::Store, lo, hi| {
        store.config_entries(3, lo, hi).unwrap_or_else(|e| panic!("config_entries: {e}"))
    };
    assert_eq!(read_all(&store, 3), all);
    assert_eq!(configs(&store, 1, 10), vec![all[4].clone(), all[8].clone()]);
    assert_eq!(configs(&store, 6, 10), vec![all[8].clone()]);
    assert_eq!(configs(&store, 6, 8), Vec::new());
    let store = reopen(h, store);
    assert_eq!(read_all(&store, 3), all, "after reopening");
    assert_eq!(configs(&store, 1, 10), vec![all[4].clone(), all[8].clone()]);
    // A truncation that replaces the second configuration, and a compaction past the first.
    write(&store, 3, &[Entry::noop(3, 9)]);
    assert_eq!(configs(&store, 1, 9), vec![all[4].clone()]);
    let lsn = store.compact(3, 5, 2).unwrap_or_else(|e| panic!("compact: {e}"));
    store.sync(lsn).unwrap_or_else(|e| panic!("sync: {e}"));
    assert_eq!(configs(&store, 6, 9), Vec::new());
}

/// A removed group ([`LogStore::remove_group`]) holds no entry, before and after reopening;
/// other groups keep theirs.
pub fn a_removed_group_stays_empty<H: StoreHarness>(h: &mut H) {
    let store = h.open();
    write(&store, 5, &entries(1, 20, 1));
    write(&store, 6, &entries(1, 5, 1));
    let lsn = store.remove_group(5).unwrap_or_else(|e| panic!("remove_group: {e}"));
    store.sync(lsn).unwrap_or_else(|e| panic!("sync: {e}"));
    let empty = |store: &H::Store| {
        let s = state(store, 5);
        assert!(s.last_index < s.first_index, "group 5 holds entries: {s:?}");
        assert!(store.entries(5, 1, 1, u64::MAX).is_err());
    };
    empty(&store);
    let lsn = store.remove_group(5).unwrap_or_else(|e| panic!("remove_group again: {e}"));
    store.sync(lsn).unwrap_or_else(|e| panic!("sync: {e}"));
    let store = reopen(h, store);
    empty(&store);
    assert_eq!(read_all(&store, 6), entries(1, 5, 1));
}

/// One `write` call with several writes of one group (a node writes several Readies at once)
/// applies them in order: each continues or replaces what the ones before it wrote, and the
/// last hard state wins.
pub fn a_batch_applies_in_order<H: StoreHarness>(h: &mut H) {
    let store = h.open();
    write(&store, 4, &entries(1, 3, 1));
    let (a, b, c) = (entries(4, 8, 1), entries(9, 12, 1), entries(11, 13, 2));
    let hs = |term| HardState { term, vote: Some(1), commit: 3 };
    let (hs1, hs2) = (hs(1), hs(2));
    let batch = [
        LogWrite { group: 4, hard_state: Some(hs1), entries: &a },
        LogWrite { group: 5, hard_state: None, entries: &entries(1, 2, 1) },
        LogWrite { group: 4, hard_state: None, entries: &b },
        LogWrite { group: 4, hard_state: Some(hs2), entries: &c },
    ];
    let lsn = store.write(&batch).unwrap_or_else(|e| panic!("a batch of one group's writes: {e}"));
    store.sync(lsn).unwrap_or_else(|e| panic!("sync failed: {e}"));
    let mut want = entries(1, 10, 1);
    want.extend(entries(11, 13, 2));
    assert_eq!(read_all(&store, 4), want);
    assert_eq!(state(&store, 4).hard_state, hs2);
    assert_eq!(read_all(&store, 5), entries(1, 2, 1));
    let store = reopen(h, store);
    assert_eq!(read_all(&store, 4), want, "after reopening");
}

/// A read stops at the byte limit, but always returns at least one entry.
pub fn reads_are_bounded_by_bytes<H: StoreHarness>(h: &mut H) {
    let store = h.open();
    let all = entries(1, 50, 1);
    write(&store, 1, &all);
    let size = |es: &[Entry]| es.iter().map(Entry::size_bytes).sum::<u64>();
    let limit = size(&all[..10]);
    let got = store.entries(1, 1, 50, limit).expect("bounded read");
    assert_eq!(got, all[..10].to_vec(), "exactly the entries that fit");
    let got = store.entries(1, 1, 50, limit - 1).expect("bounded read");
    assert_eq!(got, all[..9].to_vec());
    let got = store.entries(1, 5, 50, 0).expect("tiny limit");
    assert_eq!(got, all[4..5].to_vec(), "at least one entry");
}

/// An append at or below the last index replaces the log from there on.
pub fn append_replaces_suffix<H: StoreHarness>(h: &mut H) {
    let store = h.open();
    write(&store, 1, &entries(1, 10, 1));
    write(&store, 1, &entries(6, 8, 2));
    let mut expected = entries(1, 5, 1);
    expected.extend(entries(6, 8, 2));
    assert_eq!(read_all(&store, 1), expected);
    assert_eq!(state(&store, 1).last_index, 8);
    assert!(matches!(store.term(1, 9), Err(StorageError::Unavailable { .. })));
    // The log grows again from the new end.
    write(&store, 1, &entries(9, 12, 2));
    assert_eq!(state(&store, 1).last_index, 12);
    // Replacing the first entry of the log.
    write(&store, 1, &entries(1, 3, 4));
    assert_eq!(read_all(&store, 1), entries(1, 3, 4));
}

/// Holes, non-consecutive batches and decreasing terms are refused, and a refused write
/// changes nothing.
pub fn invalid_appends_are_refused<H: StoreHarness>(h: &mut H) {
    let store = h.open();
    write(&store, 1, &entries(1, 5, 2));
    let before = read_all(&store, 1);
    let gap = store.write(&[LogWrite { group: 1, hard_state: None, entries: &entries(7, 8, 2) }]);
    assert!(matches!(gap, Err(StorageError::Gap { .. })), "gap: {gap:?}");
    let mut skipping = entries(6, 6, 2);
    skipping.push(entry(8, 2));
    let r = store.write(&[LogWrite { group: 1, hard_state: None, entries: &skipping }]);
    assert!(matches!(r, Err(StorageError::InvalidEntries { .. })), "skip: {r:?}");
    let decreasing = vec![entry(6, 3), entry(7, 2)];
    let r = store.write(&[LogWrite { group: 1, hard_state: None, entries: &decreasing }]);
    assert!(matches!(r, Err(StorageError::InvalidEntries { .. })), "decreasing: {r:?}");
    let below_previous = vec![entry(6, 1)];
    let r = store.write(&[LogWrite { group: 1, hard_state: None, entries: &below_previous }]);
    assert!(matches!(r, Err(StorageError::InvalidEntries { .. })), "term below previous: {r:?}");
    // A batch whose second part is bad changes nothing, not even its first part.
    let good = entries(6, 6, 2);
    let bad = entries(9, 9, 2);
    let r = store.write(&[
        LogWrite {
            group: 1,
            hard_state: Some(HardState { term: 9, vote: None, commit: 0 }),
            entries: &good,
        },
        LogWrite { group: 2, hard_state: None, entries: &bad },
    ]);
    assert!(r.is_err(), "a batch with a bad part must fail");
    assert_eq!(read_all(&store, 1), before);
    assert_eq!(state(&store, 1).hard_state, HardState::default());
    assert_eq!(state(&store, 2).last_index, 0);
}

/// Hard state is saved, overwritten, and travels in the same batch as entries.
pub fn hard_state_round_trips<H: StoreHarness>(h: &mut H) {
    let store = h.open();
    let hs1 = HardState { term: 3, vote: Some(2), commit: 0 };
    let lsn =
        store.write(&[LogWrite { group: 4, hard_state: Some(hs1), entries: &[] }]).expect("hs");
    store.sync(lsn).expect("sync");
    assert_eq!(state(&store, 4).hard_state, hs1);
    let hs2 = HardState { term: 4, vote: None, commit: 2 };
    let es = entries(1, 3, 4);
    let lsn =
        store.write(&[LogWrite { group: 4, hard_state: Some(hs2), entries: &es }]).expect("both");
    store.sync(lsn).expect("sync");
    let s = state(&store, 4);
    assert_eq!(s.hard_state, hs2);
    assert_eq!(s.last_index, 3);
    let store = reopen(h, store);
    assert_eq!(state(&store, 4).hard_state, hs2);
}

/// Groups do not see each other's entries, truncations or compactions.
pub fn groups_are_isolated<H: StoreHarness>(h: &mut H) {
    let store = h.open();
    for round in 0..5u64 {
        for group in [1u64, 2, 3] {
            let lo = round * 4 + 1;
            write(&store, group, &entries(lo, lo + 3, group));
        }
    }
    write(&store, 2, &entries(5, 6, 9));
    let term = store.term(3, 10).expect("term");
    store.compact(3, 10, term).expect("compact");
    assert_eq!(read_all(&store, 1), entries(1, 20, 1));
    let mut two = entries(1, 4, 2);
    two.extend(entries(5, 6, 9));
    assert_eq!(read_all(&store, 2), two);
    assert_eq!(read_all(&store, 3), entries(11, 20, 3));
    let mut groups = store.groups().expect("groups");
    groups.sort_unstable();
    assert_eq!(groups, vec![1, 2, 3]);
}

/// Compaction keeps the entries after the compaction point.
pub fn compaction_keeps_the_suffix<H: StoreHarness>(h: &mut H) {
    let store = h.open();
    write(&store, 1, &entries(1, 10, 2));
    store.compact(1, 4, 2).expect("compact");
    let s = state(&store, 1);
    assert_eq!((s.first_index, s.last_index, s.base_term), (5, 10, 2));
    assert_eq!(store.term(1, 4).expect("boundary term"), 2);
    assert!(matches!(store.term(1, 3), Err(StorageError::Compacted { .. })));
    assert!(matches!(store.entries(1, 4, 6, u64::MAX), Err(StorageError::Compacted { .. })));
    assert_eq!(store.entries(1, 5, 10, u64::MAX).expect("suffix"), entries(5, 10, 2));
    write(&store, 1, &entries(11, 12, 3));
    assert_eq!(state(&store, 1).last_index, 12);
    // Compacting at or below the base does nothing.
    store.compact(1, 3, 2).expect("no-op compact");
    assert_eq!(state(&store, 1).first_index, 5);
    // Appending into the compacted prefix is refused.
    let r = store.write(&[LogWrite { group: 1, hard_state: None, entries: &entries(4, 5, 2) }]);
    assert!(matches!(r, Err(StorageError::BelowFirst { .. })), "{r:?}");
    let store = reopen(h, store);
    let s = state(&store, 1);
    assert_eq!((s.first_index, s.last_index, s.base_term), (5, 12, 2));
}

/// Compacting past the end, or at an entry of another term, discards the whole log (a
/// snapshot superseded it) and the log continues after the compaction point.
pub fn compaction_past_the_log_discards_it<H: StoreHarness>(h: &mut H) {
    let store = h.open();
    write(&store, 1, &entries(1, 10, 1));
    store.compact(1, 20, 7).expect("compact past end");
    let s = state(&store, 1);
    assert_eq!((s.first_index, s.last_index, s.base_term), (21, 20, 7));
    assert_eq!(store.term(1, 20).expect("boundary"), 7);
    write(&store, 1, &entries(21, 22, 7));
    assert_eq!(read_all(&store, 1), entries(21, 22, 7));

    write(&store, 2, &entries(1, 10, 1));
    let lsn = store.compact(2, 5, 3).expect("compact at a mismatched term");
    store.sync(lsn).expect("sync");
    let s = state(&store, 2);
    assert_eq!((s.first_index, s.last_index, s.base_term), (6, 5, 3));
    let store = reopen(h, store);
    let s = state(&store, 2);
    assert_eq!((s.first_index, s.last_index, s.base_term), (6, 5, 3));
    assert_eq!(read_all(&store, 1), entries(21, 22, 7));
}

/// Positions grow, and `sync` makes `durable_lsn` reach them.
pub fn durability_positions_grow<H: StoreHarness>(h: &mut H) {
    let store = h.open();
    let mut last = store.durable_lsn();
    for i in 1..=20 {
        let lsn = store
            .write(&[LogWrite { group: 1, hard_state: None, entries: &entries(i, i, 1) }])
            .expect("write");
        assert!(lsn > last, "positions grow: {last:?} then {lsn:?}");
        if i % 5 == 0 {
            store.sync(lsn).expect("sync");
            if h.syncs() {
                assert!(store.durable_lsn() >= lsn, "durable after sync");
            }
        }
        last = lsn;
    }
}

/// Everything synced survives a reopen.
pub fn synced_writes_survive_reopen<H: StoreHarness>(h: &mut H) {
    let store = h.open();
    for group in 1..=3u64 {
        write(&store, group, &entries(1, 30, group));
    }
    write(&store, 2, &entries(20, 25, 5));
    store.compact(3, 10, 3).expect("compact");
    let hs = HardState { term: 5, vote: Some(1), commit: 12 };
    let lsn =
        store.write(&[LogWrite { group: 2, hard_state: Some(hs), entries: &[] }]).expect("hs");
    store.sync(lsn).expect("sync");
    let store = reopen(h, store);
    assert_eq!(read_all(&store, 1), entries(1, 30, 1));
    let mut two = entries(1, 19, 2);
    two.extend(entries(20, 25, 5));
    assert_eq!(read_all(&store, 2), two);
    assert_eq!(state(&store, 2).hard_state, hs);
    assert_eq!(read_all(&store, 3), entries(11, 30, 3));
    // And the store keeps working after a reopen.
    write(&store, 1, &entries(31, 31, 1));
    assert_eq!(state(&store, 1).last_index, 31);
}

/// Several threads writing to their own groups at once.
pub fn concurrent_writers<H: StoreHarness>(h: &mut H)
where
    H::Store: Sync,
{
    let store = h.open();
    std::thread::scope(|s| {
        for group in 1..=4u64 {
            let store = &store;
            s.spawn(move || {
                for lo in (1..=200).step_by(10) {
                    write(store, group, &entries(lo, lo + 9, group));
                }
            });
        }
    });
    for group in 1..=4u64 {
        assert_eq!(read_all(&store, group), entries(1, 200, group));
    }
}

/// A reference log: what a correct store holds after a sequence of operations.
#[derive(Clone, Debug, Default)]
struct ModelGroup {
    base_index: Index,
    base_term: Term,
    entries: Vec<Entry>,
    hard_state: HardState,
}

impl ModelGroup {
    fn last_index(&self) -> Index {
        self.base_index + self.entries.len() as Index
    }

    fn term(&self, index: Index) -> Option<Term> {
        if index == self.base_index {
            Some(self.base_term)
        } else if index > self.base_index && index <= self.last_index() {
            Some(self.entries[(index - self.base_index - 1) as usize].term)
        } else {
            None
        }
    }
}

/// Random appends (with suffix replacement), compactions, hard states and reopens over several
/// groups, checked against a reference model after every step.
pub fn random_operations_match_a_model<H: StoreHarness>(h: &mut H, seed: u64, steps: usize) {
    let mut rng = Rng::new(seed);
    let mut model: BTreeMap<GroupId, ModelGroup> = BTreeMap::new();
    let mut store = h.open();
    let mut last_lsn = Lsn::default();
    for step in 0..steps {
        let group = rng.range(1, 4);
        let m = model.entry(group).or_default();
        match rng.below(10) {
            0..=5 => {
                // Append, sometimes replacing a suffix (with a higher term, as Raft would).
                let last = m.last_index();
                let from = if last > m.base_index && rng.chance(0.3) {
                    rng.range(m.base_index + 1, last)
                } else {
                    last + 1
                };
                let prev_term = m.term(from - 1).unwrap_or(0);
                let top_term = m.entries.last().map_or(m.base_term, |e| e.term);
                let term = if from <= last {
                    top_term + 1
                } else {
                    prev_term.max(top_term) + rng.below(2)
                };
                let n = rng.range(1, 20);
                let es = entries(from, from + n - 1, term.max(prev_term));
                let hs = rng.chance(0.3).then(|| HardState {
                    term: term + rng.below(3),
                    vote: Some(rng.range(1, 5)),
                    commit: m.base_index,
                });
                let lsn = store
                    .write(&[LogWrite { group, hard_state: hs, entries: &es }])
                    .unwrap_or_else(|e| panic!("step {step}: write failed: {e}"));
                last_lsn = lsn;
                if rng.chance(0.5) {
                    store.sync(lsn).unwrap_or_else(|e| panic!("step {step}: sync failed: {e}"));
                }
                m.entries.truncate((from - m.base_index - 1) as usize);
                m.entries.extend(es);
                if let Some(hs) = hs {
                    m.hard_state = hs;
                }
            }
            6 => {
                // Compact somewhere inside the log, or past its end with a new term.
                let last = m.last_index();
                let (through, term) = if last > m.base_index && rng.chance(0.8) {
                    let through = rng.range(m.base_index + 1, last);
                    (through, m.term(through).unwrap_or(0))
                } else {
                    (last + rng.range(1, 5), m.entries.last().map_or(m.base_term, |e| e.term) + 1)
                };
                last_lsn = store
                    .compact(group, through, term)
                    .unwrap_or_else(|e| panic!("step {step}: compact failed: {e}"));
                if m.term(through) == Some(term) {
                    m.entries.drain(..(through - m.base_index) as usize);
                } else {
                    m.entries.clear();
                }
                m.base_index = through;
                m.base_term = term;
            }
            7 => {
                store.sync(last_lsn).unwrap_or_else(|e| panic!("step {step}: sync failed: {e}"));
                store = reopen(h, store);
            }
            _ => {
                // Read a random range.
                if m.last_index() > m.base_index {
                    let lo = rng.range(m.base_index + 1, m.last_index());
                    let hi = rng.range(lo, m.last_index());
                    let got = store
                        .entries(group, lo, hi, u64::MAX)
                        .unwrap_or_else(|e| panic!("step {step}: read failed: {e}"));
                    let want =
                        &m.entries[(lo - m.base_index - 1) as usize..(hi - m.base_index) as usize];
                    assert_eq!(got, want, "step {step}: group {group} [{lo}, {hi}]");
                }
            }
        }
        for (&group, m) in &model {
            let s = state(&store, group);
            assert_eq!(
                (s.first_index, s.last_index, s.base_term, s.hard_state),
                (m.base_index + 1, m.last_index(), m.base_term, m.hard_state),
                "step {step}: group {group} state"
            );
        }
    }
    for (&group, m) in &model {
        assert_eq!(read_all(&store, group), m.entries, "group {group} at the end");
    }
}

/// Expands to one `#[test]` per conformance case, in a module named `$name`, opening stores
/// with the harness `$harness` builds (a fresh harness per test).
#[macro_export]
macro_rules! log_store_conformance {
    ($name:ident, $harness:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use $crate::testkit as kit;

            #[test]
            fn empty_store() {
                kit::empty_store(&mut $harness);
            }
            #[test]
            fn append_and_read() {
                kit::append_and_read(&mut $harness);
            }
            #[test]
            fn entry_kinds_survive_reopen() {
                kit::entry_kinds_survive_reopen(&mut $harness);
            }
            #[test]
            fn a_batch_applies_in_order() {
                kit::a_batch_applies_in_order(&mut $harness);
            }
            #[test]
            fn reads_are_bounded_by_bytes() {
                kit::reads_are_bounded_by_bytes(&mut $harness);
            }
            #[test]
            fn append_replaces_suffix() {
                kit::append_replaces_suffix(&mut $harness);
            }
            #[test]
            fn invalid_appends_are_refused() {
                kit::invalid_appends_are_refused(&mut $harness);
            }
            #[test]
            fn hard_state_round_trips() {
                kit::hard_state_round_trips(&mut $harness);
            }
            #[test]
            fn groups_are_isolated() {
                kit::groups_are_isolated(&mut $harness);
            }
            #[test]
            fn compaction_keeps_the_suffix() {
                kit::compaction_keeps_the_suffix(&mut $harness);
            }
            #[test]
            fn compaction_past_the_log_discards_it() {
                kit::compaction_past_the_log_discards_it(&mut $harness);
            }
            #[test]
            fn a_removed_group_stays_empty() {
                kit::a_removed_group_stays_empty(&mut $harness);
            }
            #[test]
            fn durability_positions_grow() {
                kit::durability_positions_grow(&mut $harness);
            }
            #[test]
            fn synced_writes_survive_reopen() {
                kit::synced_writes_survive_reopen(&mut $harness);
            }
            #[test]
            fn concurrent_writers() {
                kit::concurrent_writers(&mut $harness);
            }
            #[test]
            fn random_operations_match_a_model() {
                for seed in 0..8 {
                    kit::random_operations_match_a_model(&mut $harness, seed, 400);
                }
            }
        }
    };
}

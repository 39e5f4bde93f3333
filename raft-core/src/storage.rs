//! The seams users plug into: log storage and the state machine, plus the helpers that connect
//! a store to the core (restoring a node, serving its reads).
//!
//! # Log storage
//!
//! A [`LogStore`] holds the log and hard state of any number of groups. Writes are ordered and
//! split in two events, because "accepted" and "durable" are different things (DESIGN):
//!
//! 1. [`write`](LogStore::write) accepts a batch: once it returns, the batch is readable and
//!    has a position ([`Lsn`]) in the store's single write order. Hard state and entries of
//!    all groups travel down this one path, so a vote can never be reordered after a later
//!    append.
//! 2. [`sync`](LogStore::sync) returns once everything up to a position is durable. Concurrent
//!    callers may share one flush: that is where group commit lives.
//!    [`durable_lsn`](LogStore::durable_lsn) tells, without blocking, how far durability got.
//!
//! The log has no holes: an append may replace a suffix, and [`compact`](LogStore::compact)
//! removes a prefix; nothing else removes entries.

use crate::error::StorageError;
use crate::log::discover_term_runs;
use crate::membership::Membership;
use crate::raft::InitialState;
use crate::ready::FetchRequest;
use crate::types::{Entry, EntryKind, GroupId, HardState, Index, LogDamage, SnapshotMeta, Term};

/// A position in a store's write order. Every accepted write gets a larger one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

/// One group's part of a write: its hard state (if changed), then its entries.
#[derive(Clone, Copy, Debug)]
pub struct LogWrite<'a> {
    /// The group written to.
    pub group: GroupId,
    /// New term, vote and commit index, if they changed.
    pub hard_state: Option<HardState>,
    /// Consecutive entries to append. If the first index is at or below the group's last index,
    /// the log from that index on is replaced.
    pub entries: &'a [Entry],
}

/// What a store holds for one group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogState {
    /// The persisted hard state (all zero for a group never written).
    pub hard_state: HardState,
    /// The first index held; `last_index + 1` when the log is empty.
    pub first_index: Index,
    /// The last index held; `first_index - 1` when the log is empty.
    pub last_index: Index,
    /// The term of the entry at `first_index - 1` (the compaction boundary; 0 for index 0).
    pub base_term: Term,
}

/// Durable storage for the logs and hard states of many groups.
///
/// Every method is keyed by group. Implementations must be safe to call from several threads;
/// [`testkit::log_store`](crate::testkit) (feature `testkit`) is the conformance suite every
/// implementation should pass.
pub trait LogStore: Send + Sync {
    /// Accepts an ordered batch of writes and returns its position. On return the writes are
    /// readable; they are durable once [`durable_lsn`](LogStore::durable_lsn) reaches the
    /// returned position. The writes apply in order, as if written one by one: a batch may hold
    /// several writes of one group (a node hands over several Readies at once), each continuing
    /// or replacing what the ones before it wrote.
    ///
    /// # Errors
    /// [`StorageError::Gap`] if entries would leave a hole, [`StorageError::BelowFirst`] if they
    /// reach into the compacted prefix, [`StorageError::InvalidEntries`] if they are not
    /// consecutive or their terms decrease; I/O errors. A failed write changes nothing readable.
    fn write(&self, batch: &[LogWrite<'_>]) -> Result<Lsn, StorageError>;

    /// Blocks until every write up to and including `lsn` is durable.
    ///
    /// # Errors
    /// A failed flush poisons the store ([`StorageError::Poisoned`] from then on): it never
    /// reports durable what it could not make durable.
    fn sync(&self, lsn: Lsn) -> Result<(), StorageError>;

    /// The highest position known to be durable.
    fn durable_lsn(&self) -> Lsn;

    /// Removes every entry up to and including `through`, whose term is `term` (Raft §7).
    ///
    /// If the log holds `(through, term)`, the entries after it are kept. Otherwise (the index is
    /// past the log's end, or holds another term) the whole log is discarded, as a snapshot
    /// that supersedes it was installed; the log then continues at `through + 1`. Compacting
    /// at or below the current base does nothing.
    fn compact(&self, group: GroupId, through: Index, term: Term) -> Result<Lsn, StorageError>;

    /// Entries `lo..=hi`, stopping before the entry that would take the total past `max_bytes`
    /// (but returning at least one entry), each entry counted as [`Entry::size_bytes`] (payload
    /// plus [`Entry::OVERHEAD_BYTES`]), not by a backend's own encoding.
    ///
    /// # Errors
    /// [`StorageError::Compacted`] if `lo` was compacted, [`StorageError::Unavailable`] if `hi`
    /// is past the last index.
    fn entries(
        &self,
        group: GroupId,
        lo: Index,
        hi: Index,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError>;

    /// The term of the entry at `index`; at `first_index - 1` the compaction boundary's term.
    ///
    /// # Errors
    /// [`StorageError::Compacted`] below that, [`StorageError::Unavailable`] past the end.
    fn term(&self, group: GroupId, index: Index) -> Result<Term, StorageError>;

    /// What the store holds for `group` (an empty log and zero hard state if never written).
    fn log_state(&self, group: GroupId) -> Result<LogState, StorageError>;

    /// Every group the store holds anything for.
    fn groups(&self) -> Result<Vec<GroupId>, StorageError>;

    /// Damage the store found in `group`'s log when it opened (entries that failed their
    /// checksums, or records it could not read): the log it serves ends before
    /// [`from`](LogDamage::from). A node started from such a log repairs it from the leader
    /// ([`Health::Repairing`](crate::Health::Repairing)). The store keeps reporting it, across
    /// restarts, until [`mark_repaired`](LogStore::mark_repaired). The default, for stores that
    /// detect no damage, is `None`.
    fn damage(&self, group: GroupId) -> Option<LogDamage> {
        let _ = group;
        None
    }

    /// Damage found in `group`'s log since the last call, by a check the store runs on its own
    /// (scrubbing): the first damaged index. The runtime hands it to
    /// [`Raft::report_damage`](crate::Raft::report_damage). The default finds nothing.
    fn take_damage_found(&self, group: GroupId) -> Option<Index> {
        let _ = group;
        None
    }

    /// The node repaired `group`'s damaged log from its leader: forget the damage, so that
    /// [`damage`](LogStore::damage) answers `None` after a restart, once the returned position
    /// is [synced](LogStore::sync). The mark is ordered after every write accepted before it: a
    /// crash that loses any of them must find the damage still recorded. The default, for
    /// stores that record no damage, does nothing.
    fn mark_repaired(&self, group: GroupId) -> Result<Lsn, StorageError> {
        let _ = group;
        Ok(self.durable_lsn())
    }

    /// Removes a destroyed group's log: once the returned position is durable, its entries are
    /// gone and nothing of it comes back at a restart. The node driver calls it from
    /// [`Node::destroy`](crate::node::Node::destroy), after the group's node has stopped.
    ///
    /// The default, for stores that cannot drop a group, compacts its log through its last entry
    /// (freeing the entries; the hard state stays, and [`groups`](LogStore::groups) may still
    /// list the group: the application's catalogue of groups says it is gone).
    fn remove_group(&self, group: GroupId) -> Result<Lsn, StorageError> {
        let state = self.log_state(group)?;
        if state.last_index < state.first_index {
            return Ok(self.durable_lsn());
        }
        let term = self.term(group, state.last_index)?;
        self.compact(group, state.last_index, term)
    }

    /// The membership-change entries ([`EntryKind::Config`]) among `lo..=hi`, in index order.
    /// A node reads them once when it starts, to learn its configuration from its log.
    ///
    /// The default reads every entry of the range, a few MiB at a time; a store that knows
    /// each entry's kind without reading its payload should override it.
    fn config_entries(
        &self,
        group: GroupId,
        lo: Index,
        hi: Index,
    ) -> Result<Vec<Entry>, StorageError> {
        const CHUNK_BYTES: u64 = 4 << 20;
        let mut found = Vec::new();
        let mut next = lo;
        while next <= hi {
            let chunk = self.entries(group, next, hi, CHUNK_BYTES)?;
            let Some(last) = chunk.last().map(|e| e.index) else { break };
            found.extend(chunk.into_iter().filter(|e| e.kind == EntryKind::Config));
            next = last + 1;
        }
        Ok(found)
    }
}

/// A shared store is a store: many groups' drivers can hold one `Arc` to the same backend.
impl<T: LogStore + ?Sized> LogStore for std::sync::Arc<T> {
    fn write(&self, batch: &[LogWrite<'_>]) -> Result<Lsn, StorageError> {
        (**self).write(batch)
    }
    fn sync(&self, lsn: Lsn) -> Result<(), StorageError> {
        (**self).sync(lsn)
    }
    fn durable_lsn(&self) -> Lsn {
        (**self).durable_lsn()
    }
    fn compact(&self, group: GroupId, through: Index, term: Term) -> Result<Lsn, StorageError> {
        (**self).compact(group, through, term)
    }
    fn entries(
        &self,
        group: GroupId,
        lo: Index,
        hi: Index,
        max_bytes: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        (**self).entries(group, lo, hi, max_bytes)
    }
    fn term(&self, group: GroupId, index: Index) -> Result<Term, StorageError> {
        (**self).term(group, index)
    }
    fn log_state(&self, group: GroupId) -> Result<LogState, StorageError> {
        (**self).log_state(group)
    }
    fn groups(&self) -> Result<Vec<GroupId>, StorageError> {
        (**self).groups()
    }
    fn config_entries(
        &self,
        group: GroupId,
        lo: Index,
        hi: Index,
    ) -> Result<Vec<Entry>, StorageError> {
        (**self).config_entries(group, lo, hi)
    }
    fn damage(&self, group: GroupId) -> Option<LogDamage> {
        (**self).damage(group)
    }
    fn take_damage_found(&self, group: GroupId) -> Option<Index> {
        (**self).take_damage_found(group)
    }
    fn mark_repaired(&self, group: GroupId) -> Result<Lsn, StorageError> {
        (**self).mark_repaired(group)
    }
    fn remove_group(&self, group: GroupId) -> Result<Lsn, StorageError> {
        (**self).remove_group(group)
    }
}

/// The application's replicated state machine.
pub trait StateMachine {
    /// What applying a command produces (handed back to the client that proposed it).
    type Output;

    /// Applies one committed entry. Called for every committed entry in index order, exactly
    /// once per entry for the life of the state machine, no-ops included (for which the output
    /// is ignored, and the machine may do nothing but note the index).
    fn apply(&mut self, entry: &Entry) -> Self::Output;

    /// Writes the state reached by the entries applied so far, as a byte stream that
    /// [`restore`](StateMachine::restore) turns back into the same state. Called between two
    /// applies, when the core asks for a snapshot. The bytes should be deterministic for a given
    /// state: replicas that snapshot the same index may then resume each other's transfers.
    fn snapshot(&mut self, out: &mut dyn std::io::Write) -> std::io::Result<()>;

    /// Replaces the whole state with the one in `input` (written by
    /// [`snapshot`](StateMachine::snapshot), possibly on another node). The next entry applied
    /// follows the snapshot's index.
    fn restore(&mut self, input: &mut dyn std::io::Read) -> std::io::Result<()>;

    /// A frozen view of the state reached so far, which writes the same bytes as
    /// [`snapshot`](StateMachine::snapshot) would now, on another thread, while this machine
    /// goes on applying entries. A machine whose state can be copied cheaply (shared,
    /// reference-counted or copy-on-write data) offers one, so that writing a large snapshot
    /// does not hold up every client for as long as the write takes.
    ///
    /// `None`, the default, means the node driver calls `snapshot` instead, between two
    /// applies.
    fn snapshot_view(&mut self) -> Option<Box<dyn SnapshotView>> {
        None
    }
}

/// A frozen copy of a state machine's state, written as a snapshot away from the thread that
/// applies entries (see [`StateMachine::snapshot_view`]).
pub trait SnapshotView: Send {
    /// Writes the snapshot: the bytes [`StateMachine::snapshot`] would have written when the
    /// view was taken.
    fn write_to(self: Box<Self>, out: &mut dyn std::io::Write) -> std::io::Result<()>;
}

/// Builds a node's [`InitialState`] from what `store` holds for `group` and its newest complete
/// snapshot, if any (the caller restores its state machine from that snapshot).
///
/// If the snapshot is past the store's compaction point and the log does not hold its last
/// entry (a crash came between installing a snapshot from a leader and compacting the log),
/// the store is compacted through it now and synced, so the log continues right after the
/// snapshot. `applied` is the index a persistent state machine
/// has already applied (0 for one rebuilt from the snapshot and the log).
///
/// The membership comes from the snapshot and the log's configuration entries; `bootstrap`
/// (the first configuration, from the command line say) counts only while neither holds one,
/// and is empty for a node that waits to be added to an existing group.
///
/// The core learns the term of every stored index without reading every entry: terms never
/// decrease along a log, so each change of term is found by binary search.
pub fn load_initial_state(
    store: &dyn LogStore,
    group: GroupId,
    bootstrap: impl Into<Membership>,
    snapshot: Option<SnapshotMeta>,
    applied: Index,
) -> Result<InitialState, StorageError> {
    let mut state = store.log_state(group)?;
    let mut applied = applied;
    if let Some(snap) = &snapshot {
        // A log that holds the snapshot's last entry is kept whole (the entries before it are
        // what a restart falls back on if this snapshot is found damaged later); one that does
        // not (a snapshot installed from a leader replaced it) continues after the snapshot.
        let holds = store.term(group, snap.index).ok() == Some(snap.term);
        if snap.index > state.first_index.saturating_sub(1) && !holds {
            let lsn = store.compact(group, snap.index, snap.term)?;
            store.sync(lsn)?;
            state = store.log_state(group)?;
        }
        applied = applied.max(snap.index);
    }
    let base_index = state.first_index.saturating_sub(1);
    let term_runs =
        discover_term_runs(base_index, state.last_index, |index| store.term(group, index))?;
    let membership = snapshot.as_ref().map_or_else(|| bootstrap.into(), |s| s.membership.clone());
    // Configuration entries the snapshot covers are superseded by its membership.
    let after = base_index.max(snapshot.as_ref().map_or(0, |s| s.index));
    let mut config_entries = Vec::new();
    if after < state.last_index {
        for entry in store.config_entries(group, after + 1, state.last_index)? {
            let m = Membership::from_entry_data(&entry.data).map_err(|e| {
                StorageError::Corrupt(format!(
                    "group {group}: configuration entry {} is unreadable: {e}",
                    entry.index
                ))
            })?;
            config_entries.push((entry.index, m));
        }
    }
    Ok(InitialState {
        hard_state: state.hard_state,
        membership,
        config_entries,
        base_index,
        base_term: state.base_term,
        last_index: state.last_index,
        term_runs,
        applied,
        // Damage before a snapshot installed since still cost the node entries it may have
        // acknowledged after it: the node repairs all the same.
        damage: store.damage(group).map(|d| LogDamage { from: d.from.max(base_index + 1), ..d }),
        snapshot,
    })
}

/// Reads what a [`FetchRequest`] asks for; pass the result to
/// [`Raft::on_fetched`](crate::Raft::on_fetched).
pub fn serve_fetch(
    store: &dyn LogStore,
    request: &FetchRequest,
) -> Result<Vec<Entry>, StorageError> {
    store.entries(request.group, request.lo, request.hi, request.max_bytes)
}

/// Checks a batch of entries for a group whose log ends at `last_index` with `last_term` and
/// starts after `base_index`: consecutive, terms not decreasing, no gap, nothing below the base.
/// Stores share it so they reject the same inputs with the same errors.
pub fn validate_append(
    group: GroupId,
    entries: &[Entry],
    base_index: Index,
    last_index: Index,
    term_before: impl Fn(Index) -> Option<Term>,
) -> Result<(), StorageError> {
    let Some(first) = entries.first() else { return Ok(()) };
    if first.index <= base_index {
        return Err(StorageError::BelowFirst { group, index: first.index, first: base_index + 1 });
    }
    if first.index > last_index + 1 {
        return Err(StorageError::Gap { group, first: first.index, last: last_index });
    }
    if let Some(prev_term) = term_before(first.index - 1) {
        if first.term < prev_term {
            return Err(StorageError::InvalidEntries {
                group,
                reason: format!(
                    "entry {} has term {} below the preceding entry's term {}",
                    first.index, first.term, prev_term
                ),
            });
        }
    }
    for pair in entries.windows(2) {
        if pair[1].index != pair[0].index + 1 {
            return Err(StorageError::InvalidEntries {
                group,
                reason: format!("index {} follows index {}", pair[1].index, pair[0].index),
            });
        }
        if pair[1].term < pair[0].term {
            return Err(StorageError::InvalidEntries {
                group,
                reason: format!(
                    "term {} at index {} follows term {}",
                    pair[1].term, pair[1].index, pair[0].term
                ),
            });
        }
    }
    Ok(())
}

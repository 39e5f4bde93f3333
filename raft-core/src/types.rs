//! The vocabulary every crate shares: ids, terms, indexes, log entries and hard state.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::membership::Membership;

/// Identifies a node (a process taking part in one or more Raft groups).
pub type NodeId = u64;

/// Identifies one Raft group among the many a process may host (Multi-Raft).
pub type GroupId = u64;

/// A Raft term: a logical clock that only grows.
pub type Term = u64;

/// A position in the replicated log. The first entry ever appended has index 1; index 0 is the
/// empty log's sentinel, whose term is 0.
pub type Index = u64;

/// What a log entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum EntryKind {
    /// A command proposed by a client, handed to the state machine when committed.
    Normal,
    /// The empty entry a new leader appends in its term (Raft §5.4.2, §8): committing it
    /// commits every earlier entry. State machines skip it.
    Noop,
    /// A change of membership: the payload is the complete [`Membership`] that follows
    /// ([`Membership::to_entry_data`]). It takes effect on a node as soon as it is in the
    /// node's log. State machines skip it.
    Config,
}

/// One entry of the replicated log.
///
/// Entries are cheap to clone: the payload is reference counted, so handing the same entry to
/// the log store, two followers and the state machine copies no payload bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    /// The term of the leader that created the entry.
    pub term: Term,
    /// The entry's position in the log.
    pub index: Index,
    /// Whether the entry is a client command, a leader's no-op or a membership change.
    pub kind: EntryKind,
    /// The command bytes; empty for [`EntryKind::Noop`], the encoded [`Membership`] for
    /// [`EntryKind::Config`].
    pub data: Bytes,
}

impl Entry {
    /// Bytes an entry costs beyond its payload in memory and on the wire, used by every byte
    /// limit (message batching, in-flight window, log cache, apply batches) so that a stream of
    /// empty entries is still bounded.
    pub const OVERHEAD_BYTES: u64 = 24;

    /// A client command entry.
    pub fn normal(term: Term, index: Index, data: Bytes) -> Entry {
        Entry { term, index, kind: EntryKind::Normal, data }
    }

    /// A leader's no-op entry.
    pub fn noop(term: Term, index: Index) -> Entry {
        Entry { term, index, kind: EntryKind::Noop, data: Bytes::new() }
    }

    /// A membership change entry.
    pub fn config(term: Term, index: Index, membership: &Membership) -> Entry {
        Entry { term, index, kind: EntryKind::Config, data: membership.to_entry_data() }
    }

    /// The size this entry counts for against byte limits.
    pub fn size_bytes(&self) -> u64 {
        self.data.len() as u64 + Self::OVERHEAD_BYTES
    }
}

/// The state a node must persist before it acts on it: its term, its vote in that term, and
/// the highest index it knows to be committed.
///
/// Term and vote are what election safety rests on (one vote per term, persisted before the
/// vote is sent). The commit index is persisted only so a restarted node knows how far it may
/// apply without waiting for a leader; losing it is safe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: Term,
    /// The candidate this node voted for in `term`, if any.
    pub vote: Option<NodeId>,
    /// The highest log index known to be committed.
    pub commit: Index,
}

/// The state of a node's log for one group, as far as damage to its storage goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Health {
    /// No damage is known.
    #[default]
    Healthy,
    /// Entries from `from` on were lost to damage (found when the store opened, or when an
    /// entry failed its checksum on a read): the log now ends before `from`, and the node gets
    /// the rest from the leader again. Until it holds the leader's log up to a commit index of
    /// the leader's term, it acknowledges only what it holds, does not vote and does not
    /// campaign (DESIGN: storage faults).
    Repairing {
        /// The first index lost.
        from: Index,
    },
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Health::Healthy => f.write_str("healthy"),
            Health::Repairing { from } => write!(f, "repairing from index {from}"),
        }
    }
}

/// Damage a log store found in one group's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LogDamage {
    /// The first index lost: the log the store serves ends before it.
    pub from: Index,
    /// The last entry, `(index, term)`, the log held before the damage, when the store can tell
    /// (intact records after the damaged ones say so). A repairing node votes only for
    /// candidates at least as up to date as this; without it, it does not vote at all.
    pub last: Option<(Index, Term)>,
}

impl LogDamage {
    /// Damage from `from` on, where the log used to end at `last` if known.
    pub fn new(from: Index, last: Option<(Index, Term)>) -> LogDamage {
        LogDamage { from, last }
    }

    /// This damage and `other` together: lost from the earlier index on, and the log ended at
    /// the more up to date of the two ends (Raft §5.4.1), unknown if either is.
    pub fn merged(self, other: LogDamage) -> LogDamage {
        let last = match (self.last, other.last) {
            (Some(a), Some(b)) => Some(if (a.1, a.0) >= (b.1, b.0) { a } else { b }),
            _ => None,
        };
        LogDamage { from: self.from.min(other.from), last }
    }
}

/// The role a node plays in its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RoleKind {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asks for pre-votes before starting a real election (Raft thesis §9.6); its term has not
    /// been incremented yet.
    PreCandidate,
    /// Asks for votes in a new term.
    Candidate,
    /// Leads the group in its term.
    Leader,
}

impl std::fmt::Display for RoleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            RoleKind::Follower => "follower",
            RoleKind::PreCandidate => "pre-candidate",
            RoleKind::Candidate => "candidate",
            RoleKind::Leader => "leader",
        };
        f.write_str(name)
    }
}

/// What identifies a snapshot and what it replaces: the log prefix up to `index` (whose entry
/// had `term`), with the group's membership at that point.
///
/// `size` and `checksum` are known once the snapshot is complete (a snapshot is written to its
/// store before it is sent), so a receiver can tell two snapshots of the same index apart,
/// resume a transfer only when it is the same snapshot, and verify what it received.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The group the snapshot belongs to.
    pub group: GroupId,
    /// The last log index the snapshot includes.
    pub index: Index,
    /// The term of the entry at `index`.
    pub term: Term,
    /// The group's membership as of `index`.
    pub membership: Membership,
    /// Length of the snapshot data in bytes.
    pub size: u64,
    /// CRC32C of the snapshot data.
    pub checksum: u32,
}

impl SnapshotMeta {
    /// Whether `other` names the same snapshot data (so a transfer of one may resume with the
    /// other).
    pub fn same_data(&self, other: &SnapshotMeta) -> bool {
        self.group == other.group
            && self.index == other.index
            && self.term == other.term
            && self.size == other.size
            && self.checksum == other.checksum
    }
}

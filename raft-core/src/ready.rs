//! What the core asks its caller to do: the [`Ready`] batch, and the reads it may request.
//!
//! # The contract
//!
//! A caller takes a `Ready` with [`Raft::ready`](crate::Raft::ready) whenever
//! [`Raft::has_ready`](crate::Raft::has_ready) says so, and carries it out in this order:
//!
//! 1. Send [`Ready::messages`] now. They do not depend on this Ready's writes (the leader's
//!    appends may go out while the leader writes the same entries to its own disk).
//! 2. Write [`Ready::hard_state`] and [`Ready::entries`] to the log store, after every write of
//!    earlier Readies, as one ordered write. An entry whose index is at or below the store's last
//!    index replaces the store's log from that index on.
//! 3. Once that write, and every write before it, is durable: send
//!    [`Ready::persisted_messages`] (votes and append acknowledgements, which promise
//!    durability) and call [`Raft::on_persisted`](crate::Raft::on_persisted) with
//!    [`Ready::number`]. A Ready with nothing to write still queues its persisted messages
//!    behind earlier writes that are not durable yet: an acknowledgement of a duplicated append
//!    promises the durability of entries an earlier Ready wrote.
//! 4. Apply [`Ready::committed_entries`] in order. They are already durable locally, so this may
//!    run in parallel with step 2.
//! 5. Serve [`Ready::fetches`] by reading the log store and passing the result to
//!    [`Raft::on_fetched`](crate::Raft::on_fetched).
//!
//! Snapshots add four duties, each optional in a given Ready:
//!
//! - Before step 2, compact the log store through [`Ready::compact`].
//! - In step 4, restore the state machine from [`Ready::restore_snapshot`] *before* applying
//!   this Ready's committed entries, and take the snapshot [`Ready::snapshot_request`] asks for
//!   *after* applying them; report it with
//!   [`Raft::on_snapshot_taken`](crate::Raft::on_snapshot_taken).
//! - Serve [`Ready::snapshot_reads`] from the snapshot store and pass the chunk to
//!   [`Raft::on_snapshot_read`](crate::Raft::on_snapshot_read) (the leader sends it on).
//! - Write [`Ready::snapshot_chunks`] to the snapshot store, in order (a
//!   [`SnapshotReceiver`](crate::snapshot::SnapshotReceiver) does it), and report each with
//!   [`Raft::on_snapshot_chunk`](crate::Raft::on_snapshot_chunk). These writes are independent
//!   of the log store's.
//!
//! Readies may be pipelined: the caller may take the next Ready before the previous one is
//! durable (this is how group commit batches many Readies into one sync), as long as writes
//! reach the store in Ready order and `on_persisted` numbers never go backwards.

use crate::error::ReadError;
use crate::message::Message;
use bytes::Bytes;

use crate::membership::Membership;
use crate::types::{Entry, GroupId, HardState, Index, NodeId, SnapshotMeta, Term};

/// One batch of work for the caller. See the [module docs](self) for the order to do it in.
#[derive(Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ready {
    /// Identifies this Ready; pass it to [`Raft::on_persisted`](crate::Raft::on_persisted)
    /// once its writes are durable. Numbers grow by one per Ready.
    pub number: u64,
    /// The group this Ready belongs to.
    pub group: GroupId,
    /// Term, vote and commit index to persist, if they changed.
    pub hard_state: Option<HardState>,
    /// Entries to append to the log store; the first may replace a suffix.
    pub entries: Vec<Entry>,
    /// Messages to send now.
    pub messages: Vec<Message>,
    /// Messages to send only after this Ready's writes, and all earlier ones, are durable.
    pub persisted_messages: Vec<Message>,
    /// Committed entries to apply, in order.
    pub committed_entries: Vec<Entry>,
    /// Log reads the core needs (entries it no longer caches).
    pub fetches: Vec<FetchRequest>,
    /// Compact the log store through `(index, term)` before this Ready's write (see
    /// [`LogStore::compact`](crate::LogStore::compact)).
    pub compact: Option<(Index, Term)>,
    /// Restore the state machine from this installed snapshot before applying
    /// `committed_entries`.
    pub restore_snapshot: Option<SnapshotMeta>,
    /// Take a snapshot of the state machine once it has applied `committed_entries`.
    pub snapshot_request: Option<SnapshotRequest>,
    /// Snapshot chunks to read for followers (leader).
    pub snapshot_reads: Vec<SnapshotRead>,
    /// Received snapshot chunks to write (follower).
    pub snapshot_chunks: Vec<SnapshotChunk>,
    /// Reads asked for with [`Raft::read_index`](crate::Raft::read_index) that may now be
    /// served (once the state machine has applied their index) or cannot be. They depend on
    /// no write of this Ready.
    pub reads: Vec<ReadState>,
    /// The configuration in effect, if it changed since the last Ready (an entry appended or
    /// cut off, a snapshot installed; committed or not). A transport adds the new members'
    /// [`addresses`](Membership::addresses) and may drop those of nodes that left. Needs no
    /// ordering against the other fields.
    pub membership: Option<Membership>,
    /// The node's damaged log is whole again ([`Health`](crate::Health)): once this Ready's
    /// entries are written, tell the store with
    /// [`LogStore::mark_repaired`](crate::LogStore::mark_repaired) (which makes them durable
    /// first), so a restart does not start repairing again.
    pub repaired: bool,
}

impl Ready {
    /// Whether this Ready has anything to write to the log store.
    pub fn must_persist(&self) -> bool {
        self.hard_state.is_some() || !self.entries.is_empty() || self.compact.is_some()
    }

    /// Whether this Ready asks for nothing at all.
    pub fn is_empty(&self) -> bool {
        !self.must_persist()
            && self.messages.is_empty()
            && self.persisted_messages.is_empty()
            && self.committed_entries.is_empty()
            && self.fetches.is_empty()
            && self.restore_snapshot.is_none()
            && self.snapshot_request.is_none()
            && self.snapshot_reads.is_empty()
            && self.snapshot_chunks.is_empty()
            && self.reads.is_empty()
    }
}

/// Names a read asked for with [`Raft::read_index`](crate::Raft::read_index): the caller
/// picks it, unique among its reads in flight.
pub type ReadId = u64;

/// The outcome of a read asked for with [`Raft::read_index`](crate::Raft::read_index).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The read.
    pub id: ReadId,
    /// The index to serve the read at: run the query once the state machine has applied every
    /// entry up to it (it sees every write that completed before the read was asked for). Or
    /// why the read cannot be served (nothing was read; retrying is safe).
    pub result: Result<Index, ReadError>,
}

/// Why the core needs entries read from the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FetchPurpose {
    /// Committed entries to apply (after a restart, or when apply fell behind the cache).
    Apply,
    /// Entries for a follower that lags behind the cache, on behalf of the leader of `term`.
    Replicate {
        /// The follower.
        to: NodeId,
        /// The leader's term when it asked; the answer is ignored in any other term.
        term: Term,
    },
    /// Entries a node whose log was damaged asked for ([`RepairRequest`](crate::message::RepairRequest)).
    Repair {
        /// The damaged node.
        to: NodeId,
    },
}

/// A request to read entries `[lo, hi]` of the log from the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FetchRequest {
    /// The group whose log to read.
    pub group: GroupId,
    /// What the entries are for.
    pub purpose: FetchPurpose,
    /// The first index wanted.
    pub lo: Index,
    /// The last index wanted (inclusive).
    pub hi: Index,
    /// Read at most this many bytes of entries (but always at least one entry).
    pub max_bytes: u64,
}

/// The core asks for a snapshot of the state machine at `(index, term)`: the state after
/// applying every entry up to `index`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SnapshotRequest {
    /// The group.
    pub group: GroupId,
    /// The last index the snapshot must include (the last index applied with this Ready).
    pub index: Index,
    /// The term of the entry at `index`.
    pub term: Term,
    /// The group's membership as of `index`.
    pub membership: Membership,
}

impl SnapshotRequest {
    /// The request that would produce `meta`.
    pub fn of(meta: &SnapshotMeta) -> SnapshotRequest {
        SnapshotRequest {
            group: meta.group,
            index: meta.index,
            term: meta.term,
            membership: meta.membership.clone(),
        }
    }

    /// The metadata of a snapshot taken for this request with the given size and checksum.
    pub fn meta_with(&self, size: u64, checksum: u32) -> SnapshotMeta {
        SnapshotMeta {
            group: self.group,
            index: self.index,
            term: self.term,
            membership: self.membership.clone(),
            size,
            checksum,
        }
    }
}

/// A leader needs a chunk of its snapshot to send to a follower.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SnapshotRead {
    /// The follower.
    pub to: NodeId,
    /// The leader's term when it asked; the answer is ignored in any other term.
    pub term: Term,
    /// The snapshot to read.
    pub meta: SnapshotMeta,
    /// Where to start.
    pub offset: u64,
    /// Most bytes to read.
    pub max_bytes: usize,
}

/// A chunk of a snapshot received from a leader, to write to the snapshot store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SnapshotChunk {
    /// The leader that sent it.
    pub from: NodeId,
    /// The snapshot it belongs to.
    pub meta: SnapshotMeta,
    /// Where the chunk starts.
    pub offset: u64,
    /// The bytes.
    pub data: Bytes,
    /// Whether it is the last chunk: writing it finishes (verifies and installs) the snapshot.
    pub done: bool,
}

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
//! Readies may be pipelined: the caller may take the next Ready before the previous one is
//! durable (this is how group commit batches many Readies into one sync), as long as writes
//! reach the store in Ready order and `on_persisted` numbers never go backwards.

use crate::message::Message;
use crate::types::{Entry, GroupId, HardState, Index, NodeId, Term};

/// One batch of work for the caller. See the [module docs](self) for the order to do it in.
#[derive(Debug, Default, PartialEq, Eq)]
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
}

impl Ready {
    /// Whether this Ready has anything to write to the log store.
    pub fn must_persist(&self) -> bool {
        self.hard_state.is_some() || !self.entries.is_empty()
    }

    /// Whether this Ready asks for nothing at all.
    pub fn is_empty(&self) -> bool {
        !self.must_persist()
            && self.messages.is_empty()
            && self.persisted_messages.is_empty()
            && self.committed_entries.is_empty()
            && self.fetches.is_empty()
    }
}

/// Why the core needs entries read from the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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

//! Typed errors of the core: bad configuration, refused proposals, rejected messages, storage.

use crate::types::{GroupId, Index, NodeId, Term};

/// A configuration or initial state that a node cannot start with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `heartbeat_ticks` is zero.
    #[error("heartbeat_ticks must be at least 1")]
    ZeroHeartbeat,
    /// The election timeout must be longer than the heartbeat interval, or followers would
    /// campaign between two heartbeats of a healthy leader.
    #[error(
        "election_ticks ({election_ticks}) must be greater than heartbeat_ticks ({heartbeat_ticks})"
    )]
    ElectionNotAboveHeartbeat {
        /// The configured election timeout.
        election_ticks: u32,
        /// The configured heartbeat interval.
        heartbeat_ticks: u32,
    },
    /// Lease reads were asked for without check-quorum, which is what keeps the lease's
    /// promise (voters ignore candidates while they hear from a leader).
    #[error("lease_reads needs check_quorum")]
    LeaseWithoutCheckQuorum,
    /// The election timeout less one tick and the clock drift allowance leaves no lease.
    #[error(
        "election_ticks ({election_ticks}) leaves no lease after one tick and \
         max_clock_drift_ticks ({max_clock_drift_ticks})"
    )]
    LeaseTooShort {
        /// The configured election timeout.
        election_ticks: u32,
        /// The configured drift allowance.
        max_clock_drift_ticks: u32,
    },
    /// A limit that must be positive is zero.
    #[error("{name} must be greater than zero")]
    ZeroLimit {
        /// The setting's name.
        name: &'static str,
    },
    /// Node id 0 is reserved: it stands for "no node" (no leader known, no vote) in the
    /// driver's status and in metrics, so no node may have it.
    #[error("node id 0 is reserved for \"no node\"; ids start at 1")]
    ZeroNodeId,
    /// The voter set is empty.
    #[error("the group has no voters")]
    NoVoters,
    /// A voter appears twice.
    #[error("node {0} is listed twice among the voters")]
    DuplicateVoter(NodeId),
    /// A node is listed twice among the members (a learner that is also a voter, or a
    /// learner listed twice).
    #[error("node {0} is listed twice among the members")]
    DuplicateMember(NodeId),
    /// This node is neither a voter nor a learner.
    #[error("node {id} is neither among the voters {voters:?} nor a learner")]
    NotAVoter {
        /// This node's id.
        id: NodeId,
        /// The configured voters.
        voters: Vec<NodeId>,
    },
    /// Something a node needs was not given (to [`NodeBuilder`](crate::node::NodeBuilder)).
    #[error("missing {0}")]
    Missing(&'static str),
    /// The restored state contradicts itself (for example a commit index beyond the log).
    #[error("inconsistent restored state: {0}")]
    InconsistentState(String),
}

/// Why a proposal was refused. Nothing was appended when this is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// This node is not the leader. `leader` is the node it believes leads, if any; retrying
    /// there is safe because nothing was done here.
    #[error("not the leader (leader hint: {leader:?})")]
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<NodeId>,
    },
    /// Too many proposed bytes are waiting to commit; retry after some commit.
    #[error("{uncommitted_bytes} bytes are uncommitted, limit {limit_bytes}")]
    Backpressure {
        /// Bytes proposed but not committed.
        uncommitted_bytes: u64,
        /// The configured limit.
        limit_bytes: u64,
    },
    /// The leader is handing leadership to `to` and takes no proposals meanwhile (for at most
    /// an election timeout). Retry at the new leader, or here if the transfer is abandoned.
    #[error("leadership is being transferred to node {to}")]
    Transferring {
        /// The node leadership is being handed to.
        to: NodeId,
    },
    /// This leader is no voter of the configuration it is moving the group to: it finishes the
    /// change and then hands over, and takes no proposals meanwhile (an entry after the change
    /// would commit where this node no longer hears of it). Retry at the next leader.
    #[error("this leader is leaving the group")]
    Leaving,
}

/// Why a read asked for with [`Raft::read_index`](crate::Raft::read_index) cannot be served.
/// Nothing was read: retrying is always safe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// This node neither leads nor knows a leader to ask; `leader` is a hint if it has one.
    #[error("no leader to confirm the read (leader hint: {leader:?})")]
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<NodeId>,
    },
    /// Leadership changed while the read waited, or the leader did not answer within an
    /// election timeout.
    #[error("the read was abandoned: leadership changed or the leader did not answer")]
    Abandoned,
}

/// Why [`Raft::transfer_leader`](crate::Raft::transfer_leader) refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// Only the leader can hand leadership on.
    #[error("not the leader (leader hint: {leader:?})")]
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<NodeId>,
    },
    /// The target is not a voter of the group.
    #[error("node {0} is not a voter of the group")]
    NotAVoter(NodeId),
}

/// Why a message handed to [`Raft::step`](crate::Raft::step) was dropped. The node's state is
/// unchanged; a transport should count these and may log them, but the node carries on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StepError {
    /// The message belongs to another group.
    #[error("message for group {got} delivered to group {expected}")]
    WrongGroup {
        /// This node's group.
        expected: GroupId,
        /// The message's group.
        got: GroupId,
    },
    /// The message is addressed to another node.
    #[error("message for node {got} delivered to node {expected}")]
    WrongNode {
        /// This node's id.
        expected: NodeId,
        /// The message's receiver.
        got: NodeId,
    },
    /// The sender is not a member of the group.
    #[error("message from node {0}, which is not a member of the group")]
    UnknownPeer(NodeId),
    /// The message breaks the protocol's rules (for example entries that are not consecutive).
    #[error("malformed {kind} message from node {from}: {reason}")]
    Malformed {
        /// The message kind.
        kind: &'static str,
        /// The sender.
        from: NodeId,
        /// What is wrong with it.
        reason: String,
    },
    /// The message would overwrite an entry this node knows is committed. A correct leader
    /// never sends this; the message is dropped and the node keeps its log.
    #[error(
        "leader {from} (term {term}) tried to replace committed entry {index} (commit index {commit})"
    )]
    CommittedConflict {
        /// The sender.
        from: NodeId,
        /// The sender's term.
        term: Term,
        /// The first conflicting index.
        index: Index,
        /// This node's commit index.
        commit: Index,
    },
}

/// An error from a log store. Storage errors are never retried into a pretend success: a
/// store that failed to make data durable stays failed (see [`StorageError::Poisoned`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The requested entries were compacted away; the first index still held is `first`.
    #[error("group {group}: index {index} is compacted (first index is {first})")]
    Compacted {
        /// The group.
        group: GroupId,
        /// The requested index.
        index: Index,
        /// The first index the store still holds.
        first: Index,
    },
    /// The requested entries are past the end of the log.
    #[error("group {group}: index {index} is past the last index {last}")]
    Unavailable {
        /// The group.
        group: GroupId,
        /// The requested index.
        index: Index,
        /// The last index the store holds.
        last: Index,
    },
    /// An append would leave a hole in the log: the log has no holes, only suffix truncation
    /// and prefix compaction.
    #[error(
        "group {group}: append at index {first} would leave a gap after the last index {last}"
    )]
    Gap {
        /// The group.
        group: GroupId,
        /// The first index of the rejected append.
        first: Index,
        /// The store's last index.
        last: Index,
    },
    /// An append or truncation reaches into the compacted prefix.
    #[error("group {group}: write at index {index} reaches into the compacted prefix (first index {first})")]
    BelowFirst {
        /// The group.
        group: GroupId,
        /// The offending index.
        index: Index,
        /// The first index the store holds.
        first: Index,
    },
    /// Entries handed to the store are not consecutive, or their terms decrease.
    #[error("group {group}: invalid entries: {reason}")]
    InvalidEntries {
        /// The group.
        group: GroupId,
        /// What is wrong.
        reason: String,
    },
    /// The store found data it cannot trust.
    #[error("corrupt log store: {0}")]
    Corrupt(String),
    /// An entry the store holds is damaged (its checksum does not match): the store cannot
    /// return it. The core treats the group's log as ending before `index` and fetches the rest
    /// from the leader ([`Health::Repairing`](crate::Health::Repairing)).
    #[error("group {group}: entry {index} is damaged: {detail}")]
    Damaged {
        /// The group.
        group: GroupId,
        /// The first damaged index found.
        index: Index,
        /// What was wrong with it.
        detail: String,
    },
    /// The store has no space for a write (a full disk). Nothing of the write was done and the
    /// store stays usable: the same write succeeds once space is freed. The node driver keeps
    /// such writes and retries them (see [`Raft::set_storage_stalled`](crate::Raft::set_storage_stalled)).
    #[error("log store is out of space; nothing of the write was done: {0}")]
    Full(String),
    /// An earlier failure (a failed sync, say) left the store unable to promise durability;
    /// it refuses all further work until reopened.
    #[error("log store is poisoned by an earlier failure: {0}")]
    Poisoned(String),
    /// An I/O error from the operating system.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Any other backend-specific error.
    #[error("{0}")]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

/// An error from a snapshot store, or from a state machine writing or restoring a snapshot.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// No complete snapshot with this identity exists (it was never finished, or retention
    /// removed it).
    #[error("group {group}: no snapshot at index {index} term {term}")]
    NotFound {
        /// The group.
        group: GroupId,
        /// The snapshot's last included index.
        index: Index,
        /// Its term.
        term: Term,
    },
    /// A chunk does not continue the data received so far.
    #[error("snapshot chunk at offset {got}, but {expected} bytes were received so far")]
    OutOfOrder {
        /// The offset the receiver expected.
        expected: u64,
        /// The offset of the chunk.
        got: u64,
    },
    /// The data does not have the size its metadata promises.
    #[error("snapshot holds {actual} bytes, its metadata says {expected}")]
    SizeMismatch {
        /// The size in the metadata.
        expected: u64,
        /// The size found.
        actual: u64,
    },
    /// The data does not match its checksum.
    #[error("snapshot checksum mismatch: expected {expected:#010x}, computed {actual:#010x}")]
    ChecksumMismatch {
        /// The checksum in the metadata (or in a chunk's frame).
        expected: u32,
        /// The checksum of the data found.
        actual: u32,
    },
    /// A snapshot file written by a newer format version.
    #[error(
        "snapshot format version {found} is not supported (this build reads up to {supported})"
    )]
    UnsupportedVersion {
        /// The version found.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// The store found data it cannot trust (a bad header, a truncated file, a torn chunk).
    #[error("corrupt snapshot: {0}")]
    Corrupt(String),
    /// A read past the end of the snapshot.
    #[error("read at offset {offset} is past the snapshot's end ({size} bytes)")]
    OutOfRange {
        /// The requested offset.
        offset: u64,
        /// The snapshot's size.
        size: u64,
    },
    /// The metadata handed in is unusable (empty membership, wrong group, zero index).
    #[error("invalid snapshot metadata: {0}")]
    InvalidMeta(String),
    /// An I/O error on a named file or directory.
    #[error("snapshot I/O error on {path}: {source}")]
    File {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The snapshot directory is in use by another process (its lock file is held).
    #[error("snapshot directory {path} is in use by another process")]
    Locked {
        /// The directory.
        path: std::path::PathBuf,
    },
    /// An I/O error from the operating system (or from a state machine's stream).
    #[error("snapshot I/O error: {0}")]
    Io(#[from] std::io::Error),
}

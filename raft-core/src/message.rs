//! The messages Raft nodes exchange. Every message names its group, sender, receiver and the
//! sender's term; the body says what it is.
//!
//! Messages are plain data (serde), so any transport can carry them. They may be lost,
//! duplicated, delayed and reordered: the core treats every message as idempotent.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::types::{Entry, GroupId, Index, NodeId, SnapshotMeta, Term};

/// A message between two nodes of one group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The group the message belongs to.
    pub group: GroupId,
    /// The sending node.
    pub from: NodeId,
    /// The receiving node.
    pub to: NodeId,
    /// The sender's term (for a pre-vote request, the term the sender would campaign in).
    pub term: Term,
    /// What the message says.
    pub body: MessageBody,
}

/// The kinds of message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MessageBody {
    /// Leader to follower: entries to append after `(prev_index, prev_term)`.
    Append(AppendRequest),
    /// Follower to leader: the outcome of an [`AppendRequest`].
    AppendResponse(AppendResponse),
    /// Candidate to voter: a request for a vote (or a pre-vote).
    Vote(VoteRequest),
    /// Voter to candidate: the answer to a [`VoteRequest`].
    VoteResponse(VoteResponse),
    /// Leader to follower: "I am still leader", with a commit index the follower can use and
    /// the number of the leader's round of heartbeats (which confirms reads and the lease).
    Heartbeat(Heartbeat),
    /// Follower to leader: the answer to a [`Heartbeat`], naming its round.
    HeartbeatResponse(HeartbeatResponse),
    /// Leader to follower: one chunk of a snapshot, for a follower that needs entries the
    /// leader has compacted away.
    InstallSnapshot(InstallSnapshot),
    /// Follower to leader: how far the follower got with a snapshot.
    InstallSnapshotResponse(InstallSnapshotResponse),
    /// Follower to leader: "tell me an index at which a linearizable read may be served" (a
    /// follower read, ReadIndex in the Raft thesis §6.4).
    ReadIndex(ReadIndexRequest),
    /// Leader to follower: the answer to a [`ReadIndexRequest`].
    ReadIndexResponse(ReadIndexResponse),
    /// Leader to the target of a leadership transfer, whose log is up to date: "campaign now"
    /// (Raft thesis §3.10).
    TimeoutNow,
    /// A member to a node that asked for its vote: "a committed configuration of mine leaves
    /// you out". The node stops campaigning (it was removed while it could not hear the group).
    NotAMember(NotAMember),
    /// A node whose log was damaged to every other member: "my log ends before `from`; send me
    /// my lost entries if you hold the entry my log ended with". A leader also learns from it
    /// that the node holds less than it acknowledged.
    Repair(RepairRequest),
    /// The answer to a [`RepairRequest`] from a member that holds the entry it names.
    RepairResponse(RepairResponse),
    /// Leader to follower: "the group is idle and you hold everything: stop counting down to
    /// an election until you hear from me again (or learn that I am down)". The leader stops
    /// its heartbeats (hibernation, [`Config::hibernate_ticks`](crate::Config::hibernate_ticks)).
    Hibernate(Hibernate),
}

impl MessageBody {
    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            MessageBody::Append(_) => "append",
            MessageBody::AppendResponse(_) => "append-response",
            MessageBody::Vote(v) if v.pre_vote => "pre-vote",
            MessageBody::Vote(_) => "vote",
            MessageBody::VoteResponse(v) if v.pre_vote => "pre-vote-response",
            MessageBody::VoteResponse(_) => "vote-response",
            MessageBody::Heartbeat(_) => "heartbeat",
            MessageBody::HeartbeatResponse(_) => "heartbeat-response",
            MessageBody::InstallSnapshot(_) => "install-snapshot",
            MessageBody::InstallSnapshotResponse(_) => "install-snapshot-response",
            MessageBody::ReadIndex(_) => "read-index",
            MessageBody::ReadIndexResponse(_) => "read-index-response",
            MessageBody::TimeoutNow => "timeout-now",
            MessageBody::NotAMember(_) => "not-a-member",
            MessageBody::Repair(_) => "repair",
            MessageBody::RepairResponse(_) => "repair-response",
            MessageBody::Hibernate(_) => "hibernate",
        }
    }
}

/// AppendEntries (Raft §5.3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendRequest {
    /// The index just before the first entry carried.
    pub prev_index: Index,
    /// The term of the entry at `prev_index`.
    pub prev_term: Term,
    /// Consecutive entries starting at `prev_index + 1`; empty for a probe.
    pub entries: Vec<Entry>,
    /// The leader's commit index.
    pub commit: Index,
}

/// The answer to an [`AppendRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AppendResponse {
    /// The follower's log now matches the leader's up to and including `match_index`, and
    /// those entries are durable on the follower.
    Success {
        /// The last index known to match the leader's log.
        match_index: Index,
    },
    /// The follower's log does not contain `(prev_index, prev_term)`.
    ///
    /// The hint lets the leader skip a whole term of divergent entries per round trip instead
    /// of one entry (Raft §5.3, the "fast backup" optimisation): `hint_index` is the largest
    /// index at or below `rejected` whose term on the follower is at most the leader's
    /// `prev_term`, and `hint_term` is that term.
    Conflict {
        /// The `prev_index` of the rejected request.
        rejected: Index,
        /// The follower's suggestion for the next `prev_index` to try.
        hint_index: Index,
        /// The follower's term at `hint_index`.
        hint_term: Term,
    },
}

/// RequestVote (Raft §5.2), also used for pre-vote (Raft thesis §9.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteRequest {
    /// A pre-vote asks "would you vote for me?" without anybody changing term.
    pub pre_vote: bool,
    /// The index of the candidate's last log entry.
    pub last_index: Index,
    /// The term of the candidate's last log entry.
    pub last_term: Term,
    /// The candidate campaigns because the leader transferred leadership to it
    /// ([`MessageBody::TimeoutNow`]): voters grant it even while they hear from that leader,
    /// which gave up its lease before sending `TimeoutNow`.
    pub transfer: bool,
}

/// The answer to a [`VoteRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteResponse {
    /// Whether this answers a pre-vote.
    pub pre_vote: bool,
    /// Whether the vote was granted.
    pub granted: bool,
}

/// A leader's heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The leader's commit index, capped at what the follower is known to hold, so the
    /// follower never commits an entry it has not matched.
    pub commit: Index,
    /// The leader's round of heartbeats (numbered from 1 in each term). A quorum answering
    /// round `r` proves that the leader still led when it sent `r`: reads that arrived before
    /// `r` was sent may be served, and the lease runs from then.
    pub round: u64,
}

/// A leader's word that its group is idle (see [`MessageBody::Hibernate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hibernate {
    /// The leader's commit index, which is also its last index: a follower whose log ends
    /// there sleeps.
    pub commit: Index,
    /// The leader's last round of heartbeats: a heartbeat of that round or before, arriving
    /// late, does not wake the follower.
    pub round: u64,
}

/// A follower's answer to a [`Heartbeat`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// The round of the heartbeat answered.
    pub round: u64,
}

/// A follower asks its leader for a read index on behalf of the reads it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadIndexRequest {
    /// The follower's request number (grows by one per request); the answer names it.
    pub seq: u64,
}

/// The leader's answer to a [`ReadIndexRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadIndexResponse {
    /// The request answered.
    pub seq: u64,
    /// The index a read that arrived before the request was sent may be served at, once
    /// the follower has applied it; `None` if the node asked cannot give one (it does not
    /// lead).
    pub index: Option<Index>,
}

/// One chunk of a snapshot (Raft §7, chunked as in the Raft thesis §5.1).
///
/// Chunks are sent one at a time; the follower writes each to its snapshot store as it arrives
/// and answers with the offset it holds, so a transfer resumes where it stopped after a lost
/// message, a reconnect or a change of leader, as long as the snapshot is the same
/// ([`SnapshotMeta::same_data`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallSnapshot {
    /// The snapshot: last included index and term, membership, size and checksum.
    pub meta: SnapshotMeta,
    /// Where `data` starts in the snapshot.
    pub offset: u64,
    /// The chunk.
    pub data: Bytes,
    /// Whether this is the last chunk (`offset + data.len() == meta.size`).
    pub done: bool,
}

/// The answer to an [`InstallSnapshot`] chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallSnapshotResponse {
    /// The snapshot the answer is about.
    pub meta: SnapshotMeta,
    /// What the follower did with it.
    pub status: SnapshotStatus,
}

/// Where a follower stands with a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SnapshotStatus {
    /// The follower holds the snapshot's bytes up to `offset` and wants the chunk that starts
    /// there.
    Receiving {
        /// The next byte the follower expects.
        offset: u64,
    },
    /// The snapshot is verified, durably installed, and the follower's log now starts after it.
    Installed,
    /// The follower's commit index already covers the snapshot: it is stale, and the follower's
    /// log matches the leader's up to `commit`.
    Stale {
        /// The follower's commit index.
        commit: Index,
    },
    /// Writing or verifying the snapshot failed; the transfer starts over.
    Failed,
}

/// The answer to a vote request from a node that a committed configuration left out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotAMember {
    /// The index of the committed configuration entry that does not hold the node.
    pub config_index: Index,
}

/// A damaged node asks for the entries it lost (see [`Health`](crate::Health)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairRequest {
    /// The first index the node lacks (its log's last index plus one).
    pub from: Index,
    /// The last entry `(index, term)` its log held before the damage, if known. A member whose
    /// log holds that entry holds the node's whole lost log before it (Log Matching).
    pub last: Option<(Index, Term)>,
}

/// Entries a member sends a damaged node: its log's entries from `prev_index + 1`, which follow
/// `(prev_index, prev_term)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairResponse {
    /// The index just before the first entry carried.
    pub prev_index: Index,
    /// The term of the entry at `prev_index`.
    pub prev_term: Term,
    /// Consecutive entries from `prev_index + 1`, ending at or before the entry the request
    /// named.
    pub entries: Vec<Entry>,
}

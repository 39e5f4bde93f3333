//! The messages Raft nodes exchange. Every message names its group, sender, receiver and the
//! sender's term; the body says what it is.
//!
//! Messages are plain data (serde), so any transport can carry them. They may be lost,
//! duplicated, delayed and reordered: the core treats every message as idempotent.

use serde::{Deserialize, Serialize};

use crate::types::{Entry, GroupId, Index, NodeId, Term};

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
pub enum MessageBody {
    /// Leader to follower: entries to append after `(prev_index, prev_term)`.
    Append(AppendRequest),
    /// Follower to leader: the outcome of an [`AppendRequest`].
    AppendResponse(AppendResponse),
    /// Candidate to voter: a request for a vote (or a pre-vote).
    Vote(VoteRequest),
    /// Voter to candidate: the answer to a [`VoteRequest`].
    VoteResponse(VoteResponse),
    /// Leader to follower: "I am still leader", with a commit index the follower can use.
    Heartbeat(Heartbeat),
    /// Follower to leader: the answer to a [`Heartbeat`].
    HeartbeatResponse,
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
            MessageBody::HeartbeatResponse => "heartbeat-response",
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
}

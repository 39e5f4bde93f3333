//! [`NodeError`]: why a request to a node did not succeed, and whether anything was done.

use std::time::Duration;

use crate::error::{ConfigError, SnapshotError, StorageError};
use crate::membership::MembershipError;
use crate::transport::RouteError;
use crate::types::NodeId;

/// Why a request to a [`Node`](super::Node) did not succeed. Each variant says whether the request may have
/// taken effect.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// This node is not the leader; `leader` is the one it knows of. Nothing was done: retrying
    /// (there) is safe.
    #[error("not the leader (leader hint: {leader:?}); nothing was done")]
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<NodeId>,
    },
    /// Too many proposed bytes wait to commit. Nothing was done; retry after a while.
    #[error("{uncommitted_bytes} bytes are uncommitted (limit {limit_bytes}); nothing was done")]
    Busy {
        /// Bytes proposed and not yet committed.
        uncommitted_bytes: u64,
        /// The configured limit.
        limit_bytes: u64,
    },
    /// Another leader's entry committed where this request's entry was: the request will never
    /// take effect. Retrying is safe.
    #[error("leadership changed and the request's entry was replaced; nothing was done")]
    Dropped,
    /// The leader is handing leadership to `to` and takes no proposals meanwhile (at most an
    /// election timeout). Nothing was done: retry at `to`, or here a little later.
    #[error("leadership is being transferred to node {to}; nothing was done")]
    Transferring {
        /// The node leadership is being handed to.
        to: NodeId,
    },
    /// A read's leader changed while it waited, or did not answer in time. Nothing was read:
    /// retrying is safe.
    #[error("the read was abandoned (leadership changed); nothing was read")]
    ReadAbandoned,
    /// A leadership transfer did not finish within an election timeout (the target did not win),
    /// and the leader took proposals again.
    #[error("the leadership transfer to node {to} was abandoned")]
    TransferAbandoned {
        /// The intended new leader.
        to: NodeId,
    },
    /// The node named is not a voter of the group.
    #[error("node {0} is not a voter of the group")]
    NotAVoter(NodeId),
    /// A membership change was refused (another is in flight, a learner lags, an id is
    /// unknown...). Nothing was done.
    #[error("membership change refused: {0}; nothing was done")]
    Membership(MembershipError),
    /// This node leads but its log store is out of space (a full disk), so it takes no
    /// proposals: nothing was done. It hands leadership to a follower meanwhile; retry at the
    /// new leader, or here once space is freed (the node recovers by itself).
    #[error("the leader's log store is out of space ({detail}); nothing was done")]
    StorageFull {
        /// What the store said.
        detail: String,
    },
    /// The request names a group this node cannot take it for: not on this node, or destroyed
    /// here. Nothing was done.
    #[error("{0}; nothing was done")]
    Group(RouteError),
    /// Empty commands are reserved for the driver's read barriers. Nothing was done.
    #[error("empty commands are reserved for read barriers; nothing was done")]
    EmptyCommand,
    /// No answer within the timeout. The outcome is unknown: the request may still take effect.
    #[error("no answer within {0:?}; the outcome is unknown")]
    Timeout(Duration),
    /// The request's entry may or may not have been applied, and the driver can no longer tell
    /// (a snapshot from the leader replaced the state it would have been applied to).
    #[error("the outcome is unknown: {0}")]
    Unknown(&'static str),
    /// The node stopped (shut down, or failed: see [`NodeStatus::failure`](super::NodeStatus::failure)) before answering.
    /// The outcome is unknown.
    #[error("the node stopped before answering; the outcome is unknown")]
    Stopped,
    /// The configuration or the stored state cannot start a node.
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// The log store failed while starting the node (or removing a destroyed group's log).
    #[error("log store: {0}")]
    Storage(#[from] StorageError),
    /// The snapshot store failed while starting the node (or removing a destroyed group's
    /// snapshots).
    #[error("snapshot store: {0}")]
    Snapshot(#[from] SnapshotError),
    /// A thread could not be started.
    #[error("could not start a thread: {0}")]
    Spawn(std::io::Error),
}

impl NodeError {
    /// Whether the request certainly did not take effect (so a retry cannot apply it twice).
    pub fn nothing_done(&self) -> bool {
        matches!(
            self,
            NodeError::NotLeader { .. }
                | NodeError::Busy { .. }
                | NodeError::Dropped
                | NodeError::EmptyCommand
                | NodeError::Transferring { .. }
                | NodeError::ReadAbandoned
                | NodeError::NotAVoter(_)
                | NodeError::Membership(_)
                | NodeError::StorageFull { .. }
                | NodeError::Group(_)
        )
    }
}

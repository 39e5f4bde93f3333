//! Who belongs to a group: voters, learners, and (during a change) the voters being left.
//!
//! A [`Membership`] is the whole configuration at one point of the log. Changes are log
//! entries of kind [`EntryKind::Config`](crate::EntryKind::Config) whose payload is the
//! complete membership that follows them (not a diff), so a node finds its configuration by
//! reading the latest such entry, or the membership in its newest snapshot
//! ([`SnapshotMeta::membership`](crate::SnapshotMeta::membership)) when the log holds none.
//!
//! # Joint consensus (Raft thesis §4.3)
//!
//! A change that alters the set of voters goes through two entries. The first holds the *joint*
//! configuration: `voters` is the new set, `outgoing` the old one, and every decision (electing
//! a leader, committing an entry) needs a majority of each. Once that entry commits, the leader
//! appends the second, which drops `outgoing`. A change that only adds or removes learners takes
//! one entry. Any set of additions, promotions and removals fits in one change
//! ([`Membership::apply`]).
//!
//! A configuration takes effect on a node as soon as its entry is in the node's log, committed
//! or not (the thesis's rule); a log truncation that removes the entry brings the previous one
//! back. A leader proposes no change while its log holds a configuration entry that has not
//! committed, so at most one change is ever in flight and any two configurations in effect at
//! once share a majority.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::quorum::JointConfig;
use crate::types::{Index, NodeId};

/// The members of a group at one point of its log.
///
/// Every list is sorted and holds each id once; a node is in at most one of `voters` and
/// `learners`, and in `outgoing` only while a change is in progress (a voter being removed is in
/// `outgoing` only; one staying is in both `voters` and `outgoing`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Membership {
    /// The voters (during a change, the configuration being entered).
    pub voters: Vec<NodeId>,
    /// The voters of the configuration being left; empty unless a change is in progress.
    pub outgoing: Vec<NodeId>,
    /// Members that receive the log and snapshots but neither vote nor count towards any
    /// majority.
    pub learners: Vec<NodeId>,
    /// The address each member was added with (opaque to the core: a transport's business, for
    /// example `host:port`), so that every node learns how to reach a new member. Members of
    /// the first configuration may have none.
    pub addresses: BTreeMap<NodeId, String>,
}

/// One change to a group's membership. A batch of them is proposed at once with
/// [`Raft::propose_membership`](crate::Raft::propose_membership).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Adds a learner: a new member that receives the log but does not vote until promoted.
    AddLearner {
        /// The new member.
        id: NodeId,
        /// How to reach it (see [`Membership::addresses`]); may be empty.
        address: String,
    },
    /// Makes a learner a voter. Refused while the learner lags more than
    /// [`Config::promote_max_lag`](crate::Config::promote_max_lag) entries behind the leader, or
    /// does not hold the configuration that made it a learner yet.
    Promote {
        /// The learner.
        id: NodeId,
    },
    /// Removes a voter or a learner.
    Remove {
        /// The member.
        id: NodeId,
    },
}

impl MembershipChange {
    /// The member the change is about.
    pub fn id(&self) -> NodeId {
        match self {
            MembershipChange::AddLearner { id, .. }
            | MembershipChange::Promote { id }
            | MembershipChange::Remove { id } => *id,
        }
    }
}

/// Why a membership change was refused. Nothing was proposed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// Only the leader proposes changes.
    #[error("not the leader (leader hint: {leader:?})")]
    NotLeader {
        /// The leader this node knows of, if any.
        leader: Option<NodeId>,
    },
    /// Leadership is being handed to another node.
    #[error("leadership is being transferred to node {to}")]
    Transferring {
        /// The transfer's target.
        to: NodeId,
    },
    /// Another change is in flight: its entry at `index` has not committed yet, or the
    /// configuration is still joint. Retry once it has finished.
    #[error("a membership change (entry {index}) is still in progress")]
    InProgress {
        /// The entry of the change in flight.
        index: Index,
    },
    /// The leader has not committed an entry of its own term yet, so it does not know whether
    /// an earlier leader's change is in flight. Retry shortly.
    #[error("the leader has not committed an entry in its term yet")]
    LeaderNotReady,
    /// The batch holds no change.
    #[error("no change given")]
    Empty,
    /// Node id 0 is reserved.
    #[error("node id 0 is reserved")]
    ZeroNodeId,
    /// The batch names a node twice.
    #[error("node {0} appears twice in one change")]
    Duplicate(NodeId),
    /// The node to add is already a member.
    #[error("node {0} is already a member")]
    AlreadyMember(NodeId),
    /// The node to promote or remove is not a member.
    #[error("node {0} is not a member")]
    NotAMember(NodeId),
    /// The node to promote is not a learner.
    #[error("node {0} is not a learner")]
    NotALearner(NodeId),
    /// The change would leave the group without voters.
    #[error("the change leaves the group without voters")]
    NoVoters,
    /// The learner to promote lags too far behind the leader.
    #[error(
        "learner {id} has {matched} of {last_index} entries, more than {max_lag} behind: \
         promote it once it has caught up"
    )]
    LearnerBehind {
        /// The learner.
        id: NodeId,
        /// The last index it is known to hold.
        matched: Index,
        /// The leader's last index.
        last_index: Index,
        /// The lag allowed.
        max_lag: u64,
    },
    /// The node was a member earlier in this leader's term. Messages its earlier incarnation
    /// sent in this term may still be in flight and would be taken for the new one's, so it
    /// can be added back only in a later term (transfer leadership, or wait for an election).
    #[error(
        "node {id} left the group in term {term}; it can be added back in a later term \
         (transfer leadership first)"
    )]
    RemovedInThisTerm {
        /// The node.
        id: NodeId,
        /// The current term.
        term: u64,
    },
}

/// Why bytes from a log entry or a snapshot are not a valid membership.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid membership: {0}")]
pub struct InvalidMembership(pub String);

/// The first byte of a configuration entry's payload: the encoding's version.
const ENTRY_FORMAT: u8 = 1;

impl Membership {
    /// A simple configuration of `voters` and no learners.
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Membership {
        let mut voters: Vec<NodeId> = voters.into_iter().collect();
        voters.sort_unstable();
        Membership { voters, ..Membership::default() }
    }

    /// This membership with `learners` as its learners.
    pub fn with_learners(mut self, learners: impl IntoIterator<Item = NodeId>) -> Membership {
        self.learners = learners.into_iter().collect();
        self.learners.sort_unstable();
        self
    }

    /// Whether a change is in progress (a joint configuration).
    pub fn is_joint(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Whether nobody is a member (a node waiting to be added to a group).
    pub fn is_empty(&self) -> bool {
        self.voters.is_empty() && self.outgoing.is_empty() && self.learners.is_empty()
    }

    /// Whether `id` votes (in either half of a joint configuration).
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.outgoing.contains(&id)
    }

    /// Whether `id` is a learner.
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.contains(&id)
    }

    /// Whether `id` is a member in any role.
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.is_learner(id)
    }

    /// Every member, sorted, once.
    pub fn members(&self) -> Vec<NodeId> {
        let mut all: Vec<NodeId> =
            self.voters.iter().chain(&self.outgoing).chain(&self.learners).copied().collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// The majorities this membership decides with.
    pub fn quorum(&self) -> JointConfig {
        JointConfig {
            incoming: crate::quorum::MajorityConfig::new(self.voters.iter().copied()),
            outgoing: crate::quorum::MajorityConfig::new(self.outgoing.iter().copied()),
        }
    }

    /// Checks the shape: sorted lists without repeats, no id 0, voters and learners disjoint,
    /// and voters present unless the membership is empty.
    pub fn validate(&self) -> Result<(), InvalidMembership> {
        let bad = |why: String| Err(InvalidMembership(why));
        for (name, list) in
            [("voters", &self.voters), ("outgoing", &self.outgoing), ("learners", &self.learners)]
        {
            if list.contains(&0) {
                return bad(format!("node id 0 among the {name}"));
            }
            if list.windows(2).any(|w| w[0] >= w[1]) {
                return bad(format!("{name} {list:?} are not sorted without repeats"));
            }
        }
        if let Some(l) = self.learners.iter().find(|&&l| self.is_voter(l)) {
            return bad(format!("node {l} is both a voter and a learner"));
        }
        if self.voters.is_empty() && !self.is_empty() {
            return bad("no voters".into());
        }
        if let Some(id) = self.addresses.keys().find(|&&id| !self.contains(id)) {
            return bad(format!("an address for node {id}, which is not a member"));
        }
        Ok(())
    }

    /// The membership after `changes`: joint (old voters outgoing) if the set of voters
    /// changes, simple otherwise. Checks the changes against this membership, which must not be
    /// joint; the leader's own checks (lag, change in flight) are the core's.
    pub fn apply(&self, changes: &[MembershipChange]) -> Result<Membership, MembershipError> {
        if self.is_joint() {
            return Err(MembershipError::InProgress { index: 0 });
        }
        if changes.is_empty() {
            return Err(MembershipError::Empty);
        }
        let mut next = self.clone();
        let mut seen = Vec::with_capacity(changes.len());
        for change in changes {
            let id = change.id();
            if id == 0 {
                return Err(MembershipError::ZeroNodeId);
            }
            if seen.contains(&id) {
                return Err(MembershipError::Duplicate(id));
            }
            seen.push(id);
            match change {
                MembershipChange::AddLearner { address, .. } => {
                    if self.contains(id) {
                        return Err(MembershipError::AlreadyMember(id));
                    }
                    next.learners.push(id);
                    if !address.is_empty() {
                        next.addresses.insert(id, address.clone());
                    }
                }
                MembershipChange::Promote { .. } => {
                    if !self.contains(id) {
                        return Err(MembershipError::NotAMember(id));
                    }
                    if !self.is_learner(id) {
                        return Err(MembershipError::NotALearner(id));
                    }
                    next.learners.retain(|&l| l != id);
                    next.voters.push(id);
                }
                MembershipChange::Remove { .. } => {
                    if !self.contains(id) {
                        return Err(MembershipError::NotAMember(id));
                    }
                    next.learners.retain(|&l| l != id);
                    next.voters.retain(|&v| v != id);
                    next.addresses.remove(&id);
                }
            }
        }
        next.voters.sort_unstable();
        next.learners.sort_unstable();
        if next.voters.is_empty() {
            return Err(MembershipError::NoVoters);
        }
        if next.voters != self.voters {
            next.outgoing = self.voters.clone();
        }
        Ok(next)
    }

    /// The simple configuration that ends a joint one: the incoming voters alone. Addresses of
    /// nodes that are no longer members are dropped.
    pub fn leave_joint(&self) -> Membership {
        let mut next = self.clone();
        next.outgoing.clear();
        let members = next.members();
        next.addresses.retain(|id, _| members.contains(id));
        next
    }

    /// The payload of a configuration entry holding this membership.
    pub fn to_entry_data(&self) -> Bytes {
        let mut out = vec![ENTRY_FORMAT];
        // Encoding plain vectors, integers and strings into memory cannot fail.
        bincode::serialize_into(&mut out, self).unwrap_or_default();
        Bytes::from(out)
    }

    /// Decodes and validates a configuration entry's payload.
    pub fn from_entry_data(data: &[u8]) -> Result<Membership, InvalidMembership> {
        let Some((&version, rest)) = data.split_first() else {
            return Err(InvalidMembership("empty configuration entry".into()));
        };
        if version != ENTRY_FORMAT {
            return Err(InvalidMembership(format!(
                "configuration entry of format {version}; this build reads format {ENTRY_FORMAT}"
            )));
        }
        use bincode::Options;
        let membership: Membership = bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .with_limit(rest.len() as u64)
            .reject_trailing_bytes()
            .deserialize(rest)
            .map_err(|e| InvalidMembership(format!("undecodable configuration entry: {e}")))?;
        membership.validate()?;
        if membership.is_empty() {
            return Err(InvalidMembership("a configuration entry with no members".into()));
        }
        Ok(membership)
    }
}

impl From<Vec<NodeId>> for Membership {
    fn from(voters: Vec<NodeId>) -> Membership {
        Membership::new(voters)
    }
}

impl std::fmt::Display for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "voters {:?}", self.voters)?;
        if self.is_joint() {
            write!(f, " (joint with {:?})", self.outgoing)?;
        }
        if !self.learners.is_empty() {
            write!(f, ", learners {:?}", self.learners)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use MembershipChange::*;

    fn add(id: NodeId) -> MembershipChange {
        AddLearner { id, address: format!("10.0.0.{id}:7000") }
    }

    #[test]
    fn changes_to_voters_go_through_a_joint_configuration() {
        let m = Membership::new([1, 2, 3]);
        let with_learner = m.apply(&[add(4)]).unwrap();
        assert!(!with_learner.is_joint(), "adding a learner leaves the voters alone");
        assert_eq!(with_learner.learners, vec![4]);
        assert_eq!(with_learner.addresses.get(&4).map(String::as_str), Some("10.0.0.4:7000"));

        let replaced = with_learner.apply(&[Promote { id: 4 }, Remove { id: 1 }]).unwrap();
        assert_eq!(replaced.voters, vec![2, 3, 4]);
        assert_eq!(replaced.outgoing, vec![1, 2, 3]);
        assert!(replaced.learners.is_empty());
        assert!(replaced.is_voter(1) && replaced.is_voter(4));
        assert_eq!(replaced.apply(&[add(5)]), Err(MembershipError::InProgress { index: 0 }));

        let left = replaced.leave_joint();
        assert_eq!(left.voters, vec![2, 3, 4]);
        assert!(!left.is_joint() && !left.contains(1));
        left.validate().unwrap();
    }

    #[test]
    fn bad_changes_are_refused() {
        let m = Membership::new([1, 2, 3]).with_learners([4]);
        assert_eq!(m.apply(&[]), Err(MembershipError::Empty));
        assert_eq!(m.apply(&[add(0)]), Err(MembershipError::ZeroNodeId));
        assert_eq!(m.apply(&[add(2)]), Err(MembershipError::AlreadyMember(2)));
        assert_eq!(m.apply(&[Promote { id: 2 }]), Err(MembershipError::NotALearner(2)));
        assert_eq!(m.apply(&[Promote { id: 9 }]), Err(MembershipError::NotAMember(9)));
        assert_eq!(m.apply(&[Remove { id: 9 }]), Err(MembershipError::NotAMember(9)));
        assert_eq!(m.apply(&[add(5), Remove { id: 5 }]), Err(MembershipError::Duplicate(5)));
        let all = [Remove { id: 1 }, Remove { id: 2 }, Remove { id: 3 }];
        assert_eq!(m.apply(&all), Err(MembershipError::NoVoters));
        // Removing only a learner needs no joint phase.
        assert!(!m.apply(&[Remove { id: 4 }]).unwrap().is_joint());
    }

    #[test]
    fn entry_payloads_round_trip_and_garbage_is_refused() {
        let m = Membership::new([1, 2, 3]).apply(&[add(4)]).unwrap();
        let data = m.to_entry_data();
        assert_eq!(Membership::from_entry_data(&data).unwrap(), m);
        for cut in 0..data.len() {
            assert!(Membership::from_entry_data(&data[..cut]).is_err(), "cut at {cut}");
        }
        let mut newer = data.to_vec();
        newer[0] = 2;
        assert!(Membership::from_entry_data(&newer).unwrap_err().0.contains("format 2"));
        let unsorted = Membership { voters: vec![3, 1], ..Membership::default() };
        assert!(Membership::from_entry_data(&unsorted.to_entry_data()).is_err());
        let both = Membership { learners: vec![1], ..Membership::new([1, 2]) };
        assert!(Membership::from_entry_data(&both.to_entry_data()).is_err());
        assert!(Membership::from_entry_data(&Membership::default().to_entry_data()).is_err());
    }
}

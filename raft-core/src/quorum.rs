//! Majorities, as pure functions: which index a configuration has committed, and how an
//! election stands, for a simple configuration (one set of voters) and a joint one (two sets,
//! both of which must agree: Raft thesis §4.3).
//!
//! Nothing here knows about terms, roles or messages; the core asks these functions and acts on
//! the answer, so the rule every decision rests on is written once and tested exhaustively
//! (`tests` below compares each function with a brute-force count over every assignment).

use crate::types::{Index, NodeId};

/// How an election (or any yes/no count) stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// A majority said yes.
    Won,
    /// Enough said no that a majority can no longer say yes.
    Lost,
    /// Neither yet.
    Pending,
}

/// One set of voters, decided by majority. An empty set decides nothing against anyone: it
/// counts as having committed every index and as having won every vote, so that a joint
/// configuration whose outgoing half is empty behaves as its incoming half alone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MajorityConfig {
    /// Sorted, without duplicates.
    voters: Vec<NodeId>,
}

impl MajorityConfig {
    /// The majority configuration of `voters` (sorted and deduplicated here).
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> MajorityConfig {
        let mut voters: Vec<NodeId> = voters.into_iter().collect();
        voters.sort_unstable();
        voters.dedup();
        MajorityConfig { voters }
    }

    /// The voters, sorted.
    pub fn voters(&self) -> &[NodeId] {
        &self.voters
    }

    /// Whether `id` votes in this configuration.
    #[inline]
    pub fn contains(&self, id: NodeId) -> bool {
        // Groups are small: a scan beats a binary search.
        self.voters.contains(&id)
    }

    /// How many voters there are.
    pub fn len(&self) -> usize {
        self.voters.len()
    }

    /// Whether there are no voters.
    pub fn is_empty(&self) -> bool {
        self.voters.is_empty()
    }

    /// How many voters make a majority.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// The highest index a majority of the voters has acknowledged, given `(node, index)`
    /// acknowledgements (nodes outside the configuration are ignored; a voter not listed counts
    /// as 0; each node is listed at most once). `Index::MAX` for an empty configuration.
    /// `scratch` is reused so the leader's commit counting does not allocate.
    #[inline]
    pub fn committed_index(
        &self,
        acked: impl IntoIterator<Item = (NodeId, Index)>,
        scratch: &mut Vec<Index>,
    ) -> Index {
        if self.voters.is_empty() {
            return Index::MAX;
        }
        scratch.clear();
        scratch.extend(acked.into_iter().filter(|&(id, _)| self.contains(id)).map(|(_, i)| i));
        if scratch.len() < self.voters.len() {
            scratch.resize(self.voters.len(), 0);
        }
        // The quorum-th largest: sorted descending, the entry at quorum - 1.
        let k = self.quorum() - 1;
        let (_, nth, _) = scratch.select_nth_unstable_by(k, |a, b| b.cmp(a));
        *nth
    }

    /// How a count stands, given each voter's answer (`None`: not answered yet). Answers of
    /// nodes outside the configuration are never asked for. `Won` for an empty configuration.
    pub fn vote_result(&self, votes: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
        if self.voters.is_empty() {
            return VoteResult::Won;
        }
        let (mut yes, mut missing) = (0, 0);
        for &id in &self.voters {
            match votes(id) {
                Some(true) => yes += 1,
                Some(false) => {}
                None => missing += 1,
            }
        }
        let quorum = self.quorum();
        if yes >= quorum {
            VoteResult::Won
        } else if yes + missing >= quorum {
            VoteResult::Pending
        } else {
            VoteResult::Lost
        }
    }
}

/// A configuration that is either simple (`outgoing` empty) or joint (a change in progress:
/// every decision needs a majority of `incoming` *and* of `outgoing`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct JointConfig {
    /// The configuration being entered (the only one when not joint).
    pub incoming: MajorityConfig,
    /// The configuration being left; empty when not joint.
    pub outgoing: MajorityConfig,
}

impl JointConfig {
    /// A simple configuration of `voters`.
    pub fn simple(voters: impl IntoIterator<Item = NodeId>) -> JointConfig {
        JointConfig { incoming: MajorityConfig::new(voters), outgoing: MajorityConfig::default() }
    }

    /// Whether a change is in progress.
    pub fn is_joint(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Whether `id` votes in either half.
    pub fn contains(&self, id: NodeId) -> bool {
        self.incoming.contains(id) || self.outgoing.contains(id)
    }

    /// Every voter of either half, sorted, once.
    pub fn voters(&self) -> Vec<NodeId> {
        let mut all: Vec<NodeId> =
            self.incoming.voters().iter().chain(self.outgoing.voters()).copied().collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// The highest index both halves have committed (the lower of the two).
    #[inline]
    pub fn committed_index<I>(&self, acked: I, scratch: &mut Vec<Index>) -> Index
    where
        I: IntoIterator<Item = (NodeId, Index)>,
        I::IntoIter: Clone,
    {
        let acked = acked.into_iter();
        let incoming = self.incoming.committed_index(acked.clone(), scratch);
        let outgoing = self.outgoing.committed_index(acked, scratch);
        incoming.min(outgoing)
    }

    /// Won only if both halves won; lost if either lost.
    pub fn vote_result(&self, votes: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
        match (self.incoming.vote_result(&votes), self.outgoing.vote_result(&votes)) {
            (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
            (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
            _ => VoteResult::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every assignment of values from `domain` to `ids`, as lookup tables.
    fn assignments<T: Copy>(ids: &[NodeId], domain: &[T]) -> Vec<Vec<(NodeId, T)>> {
        let mut all = vec![Vec::new()];
        for &id in ids {
            let mut next = Vec::new();
            for partial in &all {
                for &value in domain {
                    let mut a: Vec<(NodeId, T)> = partial.clone();
                    a.push((id, value));
                    next.push(a);
                }
            }
            all = next;
        }
        all
    }

    /// The acknowledgements given (`None`: not heard from, so not listed).
    fn present(acked: &[(NodeId, Option<Index>)]) -> Vec<(NodeId, Index)> {
        acked.iter().filter_map(|&(id, i)| i.map(|i| (id, i))).collect()
    }

    fn lookup<T: Copy>(table: &[(NodeId, T)], id: NodeId) -> T {
        table.iter().find(|(i, _)| *i == id).map(|(_, v)| *v).expect("assigned")
    }

    /// By definition: the highest index `i` such that more than half of the voters acked at
    /// least `i`.
    fn brute_committed(voters: &[NodeId], acked: &[(NodeId, Option<Index>)]) -> Index {
        if voters.is_empty() {
            return Index::MAX;
        }
        (0..=10)
            .rev()
            .find(|&i| {
                let n = voters.iter().filter(|&&v| lookup(acked, v).unwrap_or(0) >= i).count();
                2 * n > voters.len()
            })
            .unwrap_or(0)
    }

    /// By definition: won if a majority said yes, lost if a majority can no longer say yes.
    fn brute_vote(voters: &[NodeId], votes: &[(NodeId, Option<bool>)]) -> VoteResult {
        if voters.is_empty() {
            return VoteResult::Won;
        }
        let yes = voters.iter().filter(|&&v| lookup(votes, v) == Some(true)).count();
        let possible = voters.iter().filter(|&&v| lookup(votes, v) != Some(false)).count();
        if 2 * yes > voters.len() {
            VoteResult::Won
        } else if 2 * possible > voters.len() {
            VoteResult::Pending
        } else {
            VoteResult::Lost
        }
    }

    /// Every subset of `1..=n` (as voter sets).
    fn subsets(n: u64) -> Vec<Vec<NodeId>> {
        (0..1u32 << n)
            .map(|mask| (1..=n).filter(|&id| mask & (1 << (id - 1)) != 0).collect())
            .collect()
    }

    #[test]
    fn majority_commit_matches_the_definition_for_every_assignment() {
        let mut scratch = Vec::new();
        for voters in subsets(5) {
            let config = MajorityConfig::new(voters.clone());
            for acked in assignments(&[1, 2, 3, 4, 5], &[None, Some(0), Some(3), Some(7)]) {
                let got = config.committed_index(present(&acked), &mut scratch);
                assert_eq!(got, brute_committed(&voters, &acked), "{voters:?} {acked:?}");
            }
        }
    }

    #[test]
    fn majority_votes_match_the_definition_for_every_assignment() {
        for voters in subsets(5) {
            let config = MajorityConfig::new(voters.clone());
            for votes in assignments(&[1, 2, 3, 4, 5], &[None, Some(true), Some(false)]) {
                let got = config.vote_result(|id| lookup(&votes, id));
                assert_eq!(got, brute_vote(&voters, &votes), "{voters:?} {votes:?}");
            }
        }
    }

    #[test]
    fn joint_decisions_need_both_halves() {
        let mut scratch = Vec::new();
        // Every pair of subsets of four nodes, every acknowledgement and every vote.
        for incoming in subsets(4) {
            for outgoing in subsets(4) {
                let joint = JointConfig {
                    incoming: MajorityConfig::new(incoming.clone()),
                    outgoing: MajorityConfig::new(outgoing.clone()),
                };
                for acked in assignments(&[1, 2, 3, 4], &[None, Some(2), Some(5)]) {
                    let got = joint.committed_index(present(&acked), &mut scratch);
                    let want =
                        brute_committed(&incoming, &acked).min(brute_committed(&outgoing, &acked));
                    assert_eq!(got, want, "{incoming:?} {outgoing:?} {acked:?}");
                }
                for votes in assignments(&[1, 2, 3, 4], &[None, Some(true), Some(false)]) {
                    let (a, b) = (brute_vote(&incoming, &votes), brute_vote(&outgoing, &votes));
                    let want = if a == VoteResult::Won && b == VoteResult::Won {
                        VoteResult::Won
                    } else if a == VoteResult::Lost || b == VoteResult::Lost {
                        VoteResult::Lost
                    } else {
                        VoteResult::Pending
                    };
                    assert_eq!(joint.vote_result(|id| lookup(&votes, id)), want);
                }
            }
        }
    }

    #[test]
    fn a_simple_configuration_is_its_incoming_half() {
        let simple = JointConfig::simple([3, 1, 2, 2]);
        assert!(!simple.is_joint());
        assert_eq!(simple.voters(), vec![1, 2, 3]);
        assert_eq!(simple.incoming.quorum(), 2);
        let joint = JointConfig {
            incoming: MajorityConfig::new([1, 2, 4]),
            outgoing: MajorityConfig::new([1, 2, 3]),
        };
        assert!(joint.is_joint() && joint.contains(3) && joint.contains(4));
        assert_eq!(joint.voters(), vec![1, 2, 3, 4]);
    }
}

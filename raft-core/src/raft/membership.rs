//! Membership changes in the protocol: the configurations a node's log holds, proposing a
//! change, entering and leaving the joint configuration, a leader that removed itself handing
//! over, and what removed and new members may do.
//!
//! Rules (see [`crate::membership`] for the algorithm):
//! - the configuration in effect is the latest in the log, committed or not ([`Configs`]); a
//!   truncation or an installed snapshot that removes its entry brings the previous one back;
//! - a leader proposes a change only once it has committed an entry of its term and no
//!   configuration entry of its log is uncommitted or joint ([`Raft::propose_membership`]);
//! - a committed joint configuration is left by the leader at once (`after_commit`), and a
//!   leader outside the committed final configuration hands over and steps down;
//! - only members of a node's configuration vote, a vote request from a node that is not a
//!   voter there is ignored (a removed node cannot raise anybody's term), and a node removed by
//!   a committed configuration is told so when it asks ([`MessageBody::NotAMember`]).

use super::{Raft, Role};
use crate::error::ConfigError;
use crate::membership::{Membership, MembershipChange, MembershipError};
use crate::message::{MessageBody, NotAMember};
use crate::tracker::Progress;
use crate::types::{Entry, EntryKind, Index, NodeId};
use crate::EntryId;

/// The configurations a node knows: the one in effect at `base_index` (from a snapshot, the
/// bootstrap, or a configuration entry already applied) and every configuration entry of the
/// log after it.
#[derive(Clone, Debug)]
pub(super) struct Configs {
    base_index: Index,
    base: Membership,
    /// Configuration entries after `base_index`, in index order.
    entries: Vec<(Index, Membership)>,
}

impl Configs {
    pub(super) fn new(
        base_index: Index,
        base: Membership,
        entries: Vec<(Index, Membership)>,
    ) -> Configs {
        Configs { base_index, base, entries }
    }

    /// The configuration in effect: the latest one in the log.
    pub(super) fn current(&self) -> &Membership {
        self.entries.last().map_or(&self.base, |(_, m)| m)
    }

    /// The index of the entry that holds the configuration in effect (the base's index when
    /// the log after it holds none).
    pub(super) fn current_index(&self) -> Index {
        self.entries.last().map_or(self.base_index, |&(i, _)| i)
    }

    /// The configuration in effect at `index` (which must not be below the base).
    pub(super) fn at(&self, index: Index) -> &Membership {
        self.entries.iter().rev().find(|(i, _)| *i <= index).map_or(&self.base, |(_, m)| m)
    }

    /// Whether `id` is a member of any configuration known here (one the node may return to
    /// after a truncation, or the base).
    pub(super) fn knows(&self, id: NodeId) -> bool {
        self.base.contains(id) || self.entries.iter().any(|(_, m)| m.contains(id))
    }

    pub(super) fn push(&mut self, index: Index, membership: Membership) {
        debug_assert!(index > self.current_index());
        self.entries.push((index, membership));
    }

    /// Forgets configuration entries after `index` (the log was cut back there).
    pub(super) fn truncate_after(&mut self, index: Index) {
        self.entries.retain(|(i, _)| *i <= index);
    }

    /// Folds the entries up to `index` into the base: nothing before `index` is needed again
    /// (the node will never snapshot or truncate below it).
    pub(super) fn fold_through(&mut self, index: Index) {
        let n = self.entries.iter().take_while(|(i, _)| *i <= index).count();
        if n > 0 {
            let (i, m) = self.entries.drain(..n).next_back().unwrap_or_default();
            self.base_index = i;
            self.base = m;
        }
    }

    /// Everyone a leader replicates to when `commit` is its commit index: the members of the
    /// configuration in effect at `commit` and of every later one. A node being removed keeps
    /// receiving entries until the configuration without it commits, so it learns from its own
    /// log that it was removed.
    pub(super) fn members_since(&self, commit: Index) -> Vec<NodeId> {
        let mut all = self.at(commit).members();
        for (_, m) in self.entries.iter().filter(|(i, _)| *i > commit) {
            all.extend(m.members());
        }
        all.sort_unstable();
        all.dedup();
        all
    }

    /// The log moved onto a snapshot at `index` whose membership is `membership`; entries the
    /// log still holds after it keep their configurations.
    pub(super) fn install_snapshot(&mut self, index: Index, membership: Membership) {
        self.entries.retain(|(i, _)| *i > index);
        self.base_index = index;
        self.base = membership;
    }
}

/// `m` with its lists sorted, after checking that no id is 0 or listed twice and that there are
/// voters unless nobody is a member.
pub(super) fn normalized(mut m: Membership) -> Result<Membership, ConfigError> {
    for list in [&mut m.voters, &mut m.outgoing, &mut m.learners] {
        list.sort_unstable();
        if list.first() == Some(&0) {
            return Err(ConfigError::ZeroNodeId);
        }
    }
    if let Some(pair) = m.voters.windows(2).find(|w| w[0] == w[1]) {
        return Err(ConfigError::DuplicateVoter(pair[0]));
    }
    if let Some(&both) = m
        .learners
        .windows(2)
        .find(|w| w[0] == w[1])
        .map(|w| &w[0])
        .or_else(|| m.learners.iter().find(|&&l| m.is_voter(l)))
    {
        return Err(ConfigError::DuplicateMember(both));
    }
    if m.voters.is_empty() && !m.is_empty() {
        return Err(ConfigError::NoVoters);
    }
    m.validate().map_err(|e| ConfigError::InconsistentState(e.to_string()))?;
    Ok(m)
}

/// The configurations among `entries` (which were validated: their payloads decode).
fn config_entries(entries: &[Entry]) -> Vec<(Index, Membership)> {
    entries
        .iter()
        .filter(|e| e.kind == EntryKind::Config)
        .filter_map(|e| Membership::from_entry_data(&e.data).ok().map(|m| (e.index, m)))
        .collect()
}

impl Raft {
    /// The configuration in effect on this node (the latest in its log).
    pub fn membership(&self) -> &Membership {
        self.configs.current()
    }

    /// The index of the log entry that holds the configuration in effect (the snapshot's index,
    /// or 0 for the bootstrap configuration, if the log holds none).
    pub fn membership_index(&self) -> Index {
        self.configs.current_index()
    }

    /// Whether this node votes in its configuration (either half, when joint).
    pub fn is_voter(&self) -> bool {
        self.config.contains(self.id)
    }

    /// Whether a node that committed a configuration without this node told it so (it was
    /// removed while it could not hear the group). It does not campaign until its own log
    /// shows it as a voter again.
    pub fn is_removed(&self) -> bool {
        self.removed
    }

    /// Proposes a batch of membership changes as leader and returns the entry that holds them.
    ///
    /// A batch that changes the voters enters a joint configuration, which the leader leaves
    /// on its own once that entry commits; the change is complete when the configuration is
    /// simple again and committed ([`membership_index`](Raft::membership_index) at most the
    /// commit index, and not joint). One change at a time: another is refused with
    /// [`MembershipError::InProgress`] until then.
    pub fn propose_membership(
        &mut self,
        changes: &[MembershipChange],
    ) -> Result<EntryId, MembershipError> {
        if self.is_leader() {
            self.wake_for("membership change");
        }
        let term = self.term;
        let last_index = self.log.last_index();
        let commit = self.log.committed();
        let max_lag = self.cfg.promote_max_lag;
        let leader_hint = self.leader();
        let current_index = self.configs.current_index();
        let Role::Leader(l) = &self.role else {
            return Err(MembershipError::NotLeader { leader: leader_hint });
        };
        if let Some(t) = l.transfer {
            return Err(MembershipError::Transferring { to: t.to });
        }
        if !l.reads.committed_in_term {
            return Err(MembershipError::LeaderNotReady);
        }
        let current = self.configs.current();
        if current_index > commit || current.is_joint() {
            return Err(MembershipError::InProgress { index: current_index });
        }
        let next = current.apply(changes)?;
        for change in changes {
            match *change {
                MembershipChange::Promote { id } => {
                    let matched =
                        l.progress.iter().find(|p| p.id == id).map_or(0, |p| p.match_index);
                    // It must hold the entry that made it a learner (so it knows it is a
                    // member and votes), and lag no more than allowed.
                    if matched < current_index || matched + max_lag < last_index {
                        return Err(MembershipError::LearnerBehind {
                            id,
                            matched,
                            last_index,
                            max_lag,
                        });
                    }
                }
                MembershipChange::AddLearner { id, .. } if l.members_in_term.contains(&id) => {
                    return Err(MembershipError::RemovedInThisTerm { id, term });
                }
                _ => {}
            }
        }
        let index = self.append_config(next);
        Ok(EntryId { index, term })
    }

    /// Appends a configuration entry as leader; it takes effect at once.
    fn append_config(&mut self, next: Membership) -> Index {
        tracing::info!(
            group = self.group,
            id = self.id,
            term = self.term,
            from = %self.configs.current(),
            to = %next,
            "proposing membership change"
        );
        let index = self.log.append_new(self.term, EntryKind::Config, next.to_entry_data());
        self.configs.push(index, next);
        self.on_membership_changed();
        if let Role::Leader(l) = &mut self.role {
            l.replicate_pending = true;
        }
        if self.alone_is_quorum() {
            self.maybe_commit();
        }
        index
    }

    /// The leader's commit index moved: a committed joint configuration is left, and a leader
    /// that is no voter of the committed configuration hands over and steps down.
    pub(super) fn membership_after_commit(&mut self) {
        if matches!(&self.role, Role::Leader(l) if l.lingering) {
            // Nodes a committed configuration left out need no more entries.
            self.sync_progress();
        }
        if !self.is_leader() || self.configs.current_index() > self.log.committed() {
            return;
        }
        let current = self.configs.current();
        if current.is_joint() {
            let next = current.leave_joint();
            self.append_config(next);
        } else if !current.is_voter(self.id) {
            self.hand_over_and_step_down();
        }
    }

    /// This leader is not a voter of the committed configuration: it tells the voter with the
    /// most of its log to campaign at once (so the group does not wait an election timeout), and
    /// becomes a follower that never campaigns.
    fn hand_over_and_step_down(&mut self) {
        let Role::Leader(l) = &self.role else { return };
        let best = l
            .progress
            .iter()
            .filter(|p| self.config.incoming.contains(p.id))
            .max_by_key(|p| (p.match_index, std::cmp::Reverse(p.id)))
            .map(|p| p.id);
        tracing::info!(
            group = self.group,
            id = self.id,
            term = self.term,
            successor = ?best,
            "removed from the group: handing over and stepping down"
        );
        if let Some(to) = best {
            self.send(to, MessageBody::TimeoutNow);
        }
        self.become_follower(self.term, None);
    }

    /// The configuration in effect changed (an entry was appended or cut off, or a snapshot
    /// installed): majorities, the leader's followers and the roles follow it.
    pub(super) fn on_membership_changed(&mut self) {
        self.config = self.configs.current().quorum();
        self.out.membership_changed = true;
        self.removed = false;
        let is_voter = self.is_voter();
        match &mut self.role {
            Role::Leader(l) => {
                // Leases and rounds were counted in the old configuration.
                l.reads.lease_until = 0;
                if l.transfer.is_some_and(|t| !self.config.incoming.contains(t.to)) {
                    l.transfer = None;
                }
                l.replicate_pending = true;
                self.sync_progress();
            }
            Role::Candidate(_) | Role::PreCandidate(_) if !is_voter => {
                self.become_follower(self.term, None);
            }
            _ => {}
        }
    }

    /// Leader: one progress per node it replicates to ([`Configs::members_since`] its commit
    /// index), new ones probing from the end of the log.
    pub(super) fn sync_progress(&mut self) {
        let id = self.id;
        let mut targets = self.configs.members_since(self.log.committed());
        targets.retain(|&m| m != id);
        let next = self.log.last_index() + 1;
        let Role::Leader(l) = &mut self.role else { return };
        l.progress.retain(|p| targets.contains(&p.id));
        for &m in &targets {
            if !l.progress.iter().any(|p| p.id == m) {
                l.progress.push(Progress::new(m, next));
            }
            if !l.members_in_term.contains(&m) {
                l.members_in_term.push(m);
            }
        }
        l.lingering = l.progress.len() + 1 > self.configs.current().members().len()
            || l.progress.iter().any(|p| !self.configs.current().contains(p.id));
    }

    /// Follower: entries `(prev_index, last_new]` of the leader's log were appended (and the
    /// log may have been cut back before that); the configurations follow.
    pub(super) fn membership_after_append(
        &mut self,
        prev_index: Index,
        last_new: Index,
        appended: &[(Index, Membership)],
    ) {
        // The common case: no configuration appended and none after `prev_index` to truncate
        // (an append of commands), so nothing below can change.
        if appended.is_empty() && self.configs.entries.last().is_none_or(|(i, _)| *i <= prev_index)
        {
            return;
        }
        let before = (self.configs.current_index(), self.configs.current().clone());
        let tail: Vec<(Index, Membership)> = self
            .configs
            .entries
            .iter()
            .filter(|(i, _)| *i > last_new && *i <= self.log.last_index())
            .cloned()
            .collect();
        self.configs.truncate_after(prev_index);
        for (i, m) in appended {
            self.configs.push(*i, m.clone());
        }
        for (i, m) in tail {
            self.configs.push(i, m);
        }
        if (self.configs.current_index(), self.configs.current()) != (before.0, &before.1) {
            self.on_membership_changed();
        }
    }

    /// The configurations carried by a validated append's entries.
    pub(super) fn configs_in(entries: &[Entry]) -> Vec<(Index, Membership)> {
        config_entries(entries)
    }

    /// A vote request from `from`, which is not a voter in this node's configuration: ignored,
    /// so a removed node cannot disrupt the group. If this node's configuration is committed and
    /// does not hold `from` at all, `from` is told it was removed.
    pub(super) fn refuse_non_voter(&mut self, from: NodeId) {
        let index = self.configs.current_index();
        tracing::debug!(
            group = self.group,
            id = self.id,
            from,
            "ignoring vote request from a node that is not a voter here"
        );
        if index <= self.log.committed() && !self.configs.current().contains(from) && index > 0 {
            self.send(from, MessageBody::NotAMember(NotAMember { config_index: index }));
        }
    }

    /// Another member says a committed configuration at `config_index` leaves this node out.
    pub(super) fn handle_not_a_member(&mut self, from: NodeId, msg: NotAMember) {
        if msg.config_index <= self.configs.current_index() || self.removed {
            return; // This node's own log is at least as recent; it decides from that.
        }
        tracing::warn!(
            group = self.group,
            id = self.id,
            from,
            config_index = msg.config_index,
            "removed from the group by a configuration this node has not received; no longer \
             campaigning"
        );
        self.removed = true;
        if !self.is_leader() {
            self.become_follower(self.term, None);
        }
    }

    /// The membership in effect at `index`, for a snapshot taken there.
    pub(super) fn membership_at(&self, index: Index) -> Membership {
        self.configs.at(index).clone()
    }

    /// Forgets configurations no snapshot or truncation can return to (those before the
    /// applied index).
    pub(super) fn fold_configs(&mut self) {
        self.configs.fold_through(self.log.applying().min(self.log.committed()));
    }

    /// The node installed a snapshot at `index` from its leader.
    pub(super) fn membership_after_snapshot(&mut self, index: Index, membership: Membership) {
        let before = (self.configs.current_index(), self.configs.current().clone());
        self.configs.truncate_after(self.log.last_index());
        self.configs.install_snapshot(index, membership);
        if (self.configs.current_index(), self.configs.current()) != (before.0, &before.1) {
            self.on_membership_changed();
        }
    }
}

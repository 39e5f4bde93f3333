//! Hibernation ([`Config::hibernate_ticks`](crate::Config::hibernate_ticks)): an idle group
//! stops its heartbeats and its election countdowns, so a process can host thousands of groups
//! that cost nothing while idle.
//!
//! A leader whose group has been idle for `hibernate_ticks` ticks (every member's log matches
//! its own, all of it committed, durable here and applied, no read, transfer, membership change
//! or snapshot under way) sends [`Hibernate`](crate::message::Hibernate) to every member, drops
//! its lease and falls asleep: ticks do nothing. A follower that hears it from its leader while
//! its own log ends at the leader's commit index falls asleep too: it stops counting down to an
//! election, and keeps honouring the leader (it still refuses pre-votes and votes as if it had
//! just heard from it).
//!
//! Anything that needs the group wakes it: on the leader a proposal, a read, a transfer, a
//! membership change or any message but a heartbeat's answer (a follower's campaign reaches the
//! leader too, which then heartbeats at once); on a follower any message from the leader but
//! `Hibernate`, a read, or [`Raft::wake`], which a runtime calls when it finds the leader's node
//! down (a coalesced liveness check per pair of nodes, outside the core).
//!
//! **Safety is unchanged:** sleeping only stops timers, and Raft's safety never depends on a
//! timer firing. What it changes is availability: a sleeping follower of a dead leader waits for
//! [`Raft::wake`] (or for a campaign of another member) before it counts down.

use super::{Raft, Role};
use crate::message::{Hibernate, MessageBody};
use crate::types::NodeId;

/// Where hibernation stands on this node.
#[derive(Debug, Default)]
pub(super) struct Sleep {
    /// Asleep: ticks do nothing (a leader sends no heartbeats, a follower does not count down).
    pub(super) asleep: bool,
    /// Leader: ticks the group has been idle in a row.
    idle_ticks: u32,
    /// Follower: the leader's last round of heartbeats when it said the group was idle.
    round: u64,
}

impl Raft {
    /// Whether this node sleeps (see [`Config::hibernate_ticks`](crate::Config::hibernate_ticks)):
    /// its ticks do nothing until something wakes it, so a runtime need not tick it at all.
    pub fn is_asleep(&self) -> bool {
        self.sleep.asleep
    }

    /// Wakes this node: a follower counts down to an election again, a leader heartbeats again
    /// at once. A runtime calls it when it finds the leader's node down; anything else that
    /// needs the group wakes it by itself.
    ///
    /// A follower woken so campaigns within one election timeout rather than two: it honours
    /// no lease (its leader dropped its lease when the group fell asleep, and a leader that
    /// woke since and counted on this follower would have woken it with a message first), and
    /// the runtime took a while to find the leader down already.
    ///
    /// The followers woken so take turns instead of drawing their timeouts at random: every
    /// node of a group that slept under a dead leader is woken at about the same moment, and two
    /// that campaigned in the same tick split the vote and waited a whole timeout again (with
    /// thousands of sleeping groups, a few such rounds in a row kept the last of them leaderless
    /// for seconds). The voters other than the leader, sorted and rotated by the group's id,
    /// campaign in that order: the first a quarter of an election timeout after its wake-up,
    /// each other one an election timeout later than the one before, so the second campaigns
    /// only if the first could not win. Timers only: safety does not depend on them.
    pub fn wake(&mut self) {
        let was_asleep = self.sleep.asleep;
        let slept_under = self.leader();
        self.wake_for("woken");
        if was_asleep && !matches!(self.role, Role::Leader(_)) {
            self.election_elapsed = self.cfg.election_ticks;
            // The first waits a quarter of a timeout, for the others to be woken too (each
            // node's liveness check finds the leader down on its own, a ping apart): a node
            // still asleep refuses a campaign as if it had just heard from its leader.
            let first = (self.cfg.election_ticks / 4).max(1);
            let turn = self.wake_turn(slept_under);
            self.randomized_election_ticks =
                self.cfg.election_ticks + first + turn * self.cfg.election_ticks;
        }
    }

    /// This node's turn to campaign among the voters other than `leader`, sorted and rotated by
    /// the group's id (so the groups of a dead leader go to its peers in turn); past the last
    /// turn if it is not a voter.
    fn wake_turn(&self, leader: Option<NodeId>) -> u32 {
        let mut voters: Vec<NodeId> =
            self.voters().iter().copied().filter(|&v| Some(v) != leader).collect();
        voters.sort_unstable();
        if voters.is_empty() {
            return 0;
        }
        let start = (self.group % voters.len() as u64) as usize;
        voters.rotate_left(start);
        let turn = voters.iter().position(|&v| v == self.id).unwrap_or(voters.len());
        u32::try_from(turn).unwrap_or(u32::MAX / 4).min(8)
    }

    pub(super) fn wake_for(&mut self, why: &'static str) {
        self.sleep.idle_ticks = 0;
        if !std::mem::take(&mut self.sleep.asleep) {
            return;
        }
        tracing::debug!(group = self.group, id = self.id, why, "waking");
        self.election_elapsed = 0;
        if let Role::Leader(l) = &mut self.role {
            // Nobody was heard from while asleep: start the check-quorum round afresh, and
            // heartbeat now, which wakes the followers.
            for p in &mut l.progress {
                p.recent_active = true;
            }
            l.heartbeat_elapsed = 0;
            self.broadcast_round(true);
        }
    }

    /// Whether a message wakes this node: on a leader anything but a heartbeat's answer; on a
    /// follower anything from its leader but `Hibernate`, its vote requests included (it no
    /// longer leads: it stepped down, or restarted, while the group slept; the follower's
    /// timer then runs, and it grants at once: no lease relies on it any more). Another node's
    /// campaign does not wake a follower: it reaches the leader too, which wakes everyone if it
    /// is alive.
    pub(super) fn wakes(&self, from: NodeId, body: &MessageBody) -> bool {
        match &self.role {
            Role::Leader(_) => !matches!(body, MessageBody::HeartbeatResponse(_)),
            _ if self.leader() != Some(from) => false,
            // Late messages from before the leader fell asleep (a network may reorder) are no
            // news: a heartbeat of an earlier round, an append of nothing this node lacks.
            _ => match body {
                MessageBody::Hibernate(_) => false,
                MessageBody::Heartbeat(hb) => hb.round > self.sleep.round,
                MessageBody::Append(req) => {
                    req.entries.last().is_some_and(|e| e.index > self.log.last_index())
                        || req.commit > self.log.committed()
                }
                _ => true,
            },
        }
    }

    /// A leader's tick while hibernation is on: counts idle ticks and falls asleep after
    /// `hibernate_ticks` of them.
    pub(super) fn tick_hibernate(&mut self) {
        if self.cfg.hibernate_ticks == 0 || self.sleep.asleep {
            return;
        }
        if !self.group_idle() {
            self.sleep.idle_ticks = 0;
            return;
        }
        self.sleep.idle_ticks += 1;
        if self.sleep.idle_ticks < self.cfg.hibernate_ticks {
            return;
        }
        let commit = self.log.committed();
        let Role::Leader(l) = &mut self.role else { return };
        l.reads.lease_until = 0;
        let round = l.reads.sent;
        let members: Vec<NodeId> = l.progress.iter().map(|p| p.id).collect();
        tracing::debug!(group = self.group, id = self.id, commit, "group idle: hibernating");
        l.reads.shrink();
        for p in &mut l.progress {
            p.inflights.shrink();
        }
        self.shrink_idle();
        self.sleep.asleep = true;
        for to in members {
            self.send(to, MessageBody::Hibernate(Hibernate { commit, round }));
        }
    }

    /// A leader whose group is idle: the ticks before the one that puts it to sleep (`None`
    /// while the group is busy or never sleeps: no tick puts it to sleep).
    pub(super) fn ticks_before_hibernating(&self) -> Option<u32> {
        if self.cfg.hibernate_ticks == 0 || self.sleep.asleep || !self.group_idle() {
            return None;
        }
        Some(self.cfg.hibernate_ticks.saturating_sub(self.sleep.idle_ticks + 1))
    }

    /// Whether the whole group is idle, as its leader sees it.
    fn group_idle(&self) -> bool {
        let Role::Leader(l) = &self.role else { return false };
        let last = self.log.last_index();
        self.log.committed() == last
            && self.log.persisted() == last
            && self.log.applying() == last
            && l.transfer.is_none()
            && !self.config.is_joint()
            && l.reads.idle()
            && l.progress.iter().all(|p| p.match_index == last && p.snapshot.is_none())
    }

    /// A follower hears that its leader's group is idle: it sleeps if its log ends at the
    /// leader's commit index (else its election timer runs on, and a campaign of its would
    /// wake the leader).
    pub(super) fn handle_hibernate(&mut self, from: NodeId, h: Hibernate) {
        if !self.follow(from, "hibernate") {
            return;
        }
        let last = self.log.last_index();
        self.log.commit_to(h.commit.min(last));
        if self.cfg.hibernate_ticks > 0
            && last == h.commit
            && self.log.committed() == last
            && self.log_trusted()
            && self.forwarded.idle()
        {
            self.sleep.asleep = true;
            self.sleep.round = h.round;
            self.election_elapsed = 0;
            self.shrink_idle();
        }
    }

    /// What any sleeping node gives back: memory bursts grew in its log and queues.
    fn shrink_idle(&mut self) {
        self.log.shrink();
        self.forwarded.shrink();
    }
}

//! What a runtime may hold back from the core without changing what it does: ticks that would
//! only count ([`Raft::quiet_ticks`]) and acknowledgements of writes that would only be
//! recorded ([`Raft::persist_acks_matter`]). A runtime hosting many groups hands them over
//! before the node's next input, so a busy group is not run once per tick, nor once more per
//! write only to learn that its disk did its job.

use super::{ApplyFetch, LeaderState, Raft, Role, SnapshotTaking};
#[cfg(any(debug_assertions, feature = "sim"))]
use crate::types::{Index, NodeId, RoleKind, Term};

/// What a quiet tick must leave as it was: role, leader, term, vote, commit; what waits for the
/// next Ready; the election timer's target and sleep.
#[cfg(any(debug_assertions, feature = "sim"))]
#[derive(Debug, PartialEq)]
pub(super) struct QuietView {
    node: (RoleKind, Option<NodeId>, Term, Option<NodeId>, Index),
    out: [usize; 6],
    compact: Option<(Index, Term)>,
    membership_changed: bool,
    timer: (u32, bool),
    has_ready: bool,
}

impl Raft {
    /// How many of the next ticks would only count (no message, no change of role or term,
    /// nothing new for a Ready): a runtime hosting many groups may hold that many back and hand
    /// them over in a burst before the group's next input, or with the first tick that is not
    /// quiet; the node then does exactly what it would have done with each on time. So a busy
    /// group is not run once per tick only to count: its followers' election timers are
    /// restarted by every append, and its leader heartbeats no follower it sent something to
    /// within a heartbeat interval.
    ///
    /// Counted for a follower whose only clock is its election timer (no forwarded read, apply
    /// read or repair in flight, no snapshot retry pending), and for a leader whose only clocks
    /// are check-quorum, the heartbeats it owes quiet followers and the countdown to
    /// hibernation (no lease, no read waiting, no transfer or snapshot send in progress, a
    /// store that takes writes); 0 in every other case.
    pub fn quiet_ticks(&self) -> u32 {
        if self.sleep.asleep
            || !matches!(self.apply_fetch, ApplyFetch::Idle)
            || matches!(self.snapshot_taking, SnapshotTaking::Failed { .. })
            || self.repair.damage.is_some()
        {
            return 0;
        }
        match &self.role {
            Role::Follower { .. } if self.forwarded.no_requests_out() => {
                // Ticks before the election timer fires.
                self.randomized_election_ticks.saturating_sub(self.election_elapsed + 1)
            }
            Role::Leader(l) => self.leader_quiet_ticks(l),
            _ => 0,
        }
    }

    /// Whether acknowledging writes ([`Raft::on_persisted`]) would do more now than record them:
    /// entries this node knows committed wait for its own log to be durable to be applied, or
    /// (on a leader) with its own log durable to its end a majority of the voters would hold an
    /// entry past the commit index (a group of one always; in a group of three, once a follower
    /// has acknowledged what the leader has not made durable yet). When false, a runtime may hold the acknowledgements
    /// back and hand them over before the core's next input (after the ticks it owes, like
    /// them): nothing waits on them, since the messages that promise durability are released
    /// by whoever made the write durable, not by the core. A held-back acknowledgement is a
    /// disk that answered later, which the core must already take in its stride.
    pub fn persist_acks_matter(&self) -> bool {
        let (committed, persisted) = (self.log.committed(), self.log.persisted());
        if committed > persisted {
            return true; // Applying waits for this node's log.
        }
        let Role::Leader(l) = &self.role else { return false };
        if persisted >= self.log.last_index() {
            return false; // Nothing of its own log waits to be acknowledged.
        }
        if self.config.is_joint() {
            return true; // Two majorities to count: do not try to be clever.
        }
        // Would the commit index move with this node's log durable to its end? Only if, with
        // it, a majority of the voters holds an entry past the commit index.
        let voters = &self.config.incoming;
        if !voters.contains(self.id) {
            return false; // Its own log does not count (it is leaving the group).
        }
        let past = l
            .progress
            .iter()
            .filter(|p| voters.contains(p.id) && p.match_index > committed)
            .count();
        past + 1 >= voters.quorum()
    }

    /// A leader's quiet ticks (see [`Raft::quiet_ticks`]): the fewest left before check-quorum
    /// runs, before a follower is owed a heartbeat, or before the group falls asleep.
    fn leader_quiet_ticks(&self, l: &LeaderState) -> u32 {
        if self.cfg.lease_reads
            || self.storage_stalled()
            || l.transfer.is_some()
            || !l.reads.idle()
            || l.progress.iter().any(|p| p.snapshot.is_some())
        {
            return 0;
        }
        // `tick_leader` checks the quorum when the count reaches `election_ticks`.
        let mut quiet = self.cfg.election_ticks.saturating_sub(self.election_elapsed + 1);
        // `heartbeat` sends to a follower once `ticks - contact_tick` reaches the interval.
        let interval = u64::from(self.cfg.heartbeat_ticks);
        for p in &l.progress {
            let left = (p.contact_tick + interval).saturating_sub(self.ticks + 1);
            quiet = quiet.min(u32::try_from(left).unwrap_or(u32::MAX));
        }
        if let Some(left) = self.ticks_before_hibernating() {
            quiet = quiet.min(left);
        }
        quiet
    }

    /// What a quiet tick must leave as it was.
    #[cfg(any(debug_assertions, feature = "sim"))]
    fn quiet_view(&self) -> QuietView {
        let o = &self.out;
        QuietView {
            node: (self.role(), self.leader(), self.term, self.vote, self.log.committed()),
            out: [
                o.messages.len(),
                o.persisted_messages.len(),
                o.fetches.len(),
                o.reads.len(),
                o.snapshot_reads.len(),
                o.snapshot_chunks.len(),
            ],
            compact: o.compact,
            membership_changed: o.membership_changed,
            timer: (self.randomized_election_ticks, self.sleep.asleep),
            has_ready: self.has_ready(),
        }
    }

    /// Before a tick: if it is quiet, what it must leave as it was, and the count.
    #[cfg(any(debug_assertions, feature = "sim"))]
    pub(super) fn quiet_probe(&self) -> Option<(QuietView, u32)> {
        let quiet = self.quiet_ticks();
        (quiet > 0).then(|| (self.quiet_view(), quiet))
    }

    /// After a tick: one called quiet changed nothing but counters, and the count dropped by one
    /// (checked in debug builds and under the simulator, which ticks every node thousands of
    /// times per seed).
    #[cfg(any(debug_assertions, feature = "sim"))]
    pub(super) fn check_quiet_tick(&self, before: Option<(QuietView, u32)>) {
        if let Some((view, quiet)) = before {
            assert_eq!(self.quiet_view(), view, "a tick called quiet changed the node");
            assert_eq!(self.quiet_ticks(), quiet - 1, "quiet ticks count down one per tick");
        }
    }
}

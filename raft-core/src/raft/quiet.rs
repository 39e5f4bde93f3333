//! Quiet ticks: ticks that would only count. A runtime hosting many groups holds them back and
//! hands them over before the node's next input, so a busy group's followers are not run once
//! per tick (see [`Raft::quiet_ticks`]).

use super::{ApplyFetch, Raft, Role, SnapshotTaking};
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
    /// group's followers, whose election timers every append restarts, are not run once per
    /// tick only to count. Counted for a follower whose only clock is its election timer (no
    /// forwarded read, apply read or repair in flight, no snapshot retry pending); 0 in every
    /// other case.
    pub fn quiet_ticks(&self) -> u32 {
        let follower = matches!(self.role, Role::Follower { .. });
        if !follower
            || self.sleep.asleep
            || !matches!(self.apply_fetch, ApplyFetch::Idle)
            || matches!(self.snapshot_taking, SnapshotTaking::Failed { .. })
            || self.repair.damage.is_some()
            || !self.forwarded.no_requests_out()
        {
            return 0;
        }
        // Ticks before the election timer fires.
        self.randomized_election_ticks.saturating_sub(self.election_elapsed + 1)
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

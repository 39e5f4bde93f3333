//! A node whose log store refuses writes for now, for lack of space (a full disk): the runtime
//! keeps the writes and retries them, and tells the core with [`Raft::set_storage_stalled`].
//!
//! Nothing the node promised depends on those writes (their messages are held until they are
//! durable), so safety needs nothing here. What follows is about availability:
//! - the node does not campaign, and ignores `TimeoutNow`: it could not write its new term or
//!   its vote, so it could not win, and the term it would announce in its other messages would
//!   unsettle a healthy leader;
//! - a leader hands leadership to its most up-to-date follower (a full disk on one node must
//!   not stop the group's writes), trying again every few election timeouts while the stall
//!   lasts, and another follower each time (that one's disk may be full too: it then ignores
//!   the `TimeoutNow`, the transfer is abandoned and nothing changed).
//!
//! Reads go on: heartbeats, read confirmations and their answers need no write.

use super::{Raft, Role};
use crate::types::NodeId;

/// Election timeouts between a stalled leader's attempts to hand leadership away.
const TRANSFER_EVERY_ELECTION_TIMEOUTS: u32 = 3;

/// Where a storage stall stands.
#[derive(Debug, Default)]
pub(super) struct Stall {
    /// The store refuses writes for lack of space.
    on: bool,
    /// Ticks until a stalled leader next tries a transfer (0: at the next tick).
    transfer_in: u32,
    /// The follower the last attempt went to.
    last_target: Option<NodeId>,
}

impl Raft {
    /// Tells the core whether its log store refuses writes for lack of space (the runtime keeps
    /// the writes and retries them). While it does, this node does not campaign or take a
    /// leadership handed to it, and as leader it hands leadership to an up-to-date follower.
    pub fn set_storage_stalled(&mut self, stalled: bool) {
        if self.stall.on == stalled {
            return;
        }
        tracing::info!(group = self.group, id = self.id, stalled, "log store stall changed");
        self.stall = Stall { on: stalled, ..Stall::default() };
    }

    /// Whether the log store refuses writes for lack of space (see
    /// [`set_storage_stalled`](Raft::set_storage_stalled)).
    pub fn storage_stalled(&self) -> bool {
        self.stall.on
    }

    /// A stalled leader's attempt, now and then, to hand leadership to a follower.
    pub(super) fn tick_stall(&mut self) {
        if !self.stall.on {
            return;
        }
        let Role::Leader(l) = &self.role else { return };
        if l.transfer.is_some() {
            return;
        }
        if self.stall.transfer_in > 0 {
            self.stall.transfer_in -= 1;
            return;
        }
        self.stall.transfer_in = self.cfg.election_ticks * TRANSFER_EVERY_ELECTION_TIMEOUTS;
        // The most up-to-date active voter, not the one tried last unless it is the only one.
        let last = self.stall.last_target;
        let target = l
            .progress
            .iter()
            .filter(|p| self.config.incoming.contains(p.id))
            .max_by_key(|p| {
                (Some(p.id) != last, p.recent_active, p.match_index, std::cmp::Reverse(p.id))
            })
            .map(|p| p.id);
        let Some(to) = target else { return };
        tracing::warn!(
            group = self.group,
            id = self.id,
            to,
            "log store is out of space: handing leadership to a follower"
        );
        self.stall.last_target = Some(to);
        // Only a voter of the incoming configuration was chosen, and this node leads.
        let _ = self.transfer_leader(to);
    }
}

//! Leadership transfer (Raft thesis §3.10): the leader stops taking proposals, brings the
//! target's log up to date, and sends it `TimeoutNow`; the target campaigns at once, without a
//! pre-vote, and its vote requests ask voters to set aside the leader's lease. A transfer that
//! has not finished within an election timeout is abandoned and proposals resume.

use super::{Raft, Role};
use crate::error::TransferError;
use crate::message::MessageBody;
use crate::types::NodeId;

/// A transfer in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Transfer {
    /// The node leadership goes to.
    pub(super) to: NodeId,
    /// Ticks since the transfer started.
    pub(super) elapsed: u32,
}

impl Raft {
    /// Hands leadership to voter `to`. The leader gives up its lease, refuses proposals with
    /// [`ProposeError::Transferring`](crate::ProposeError::Transferring), catches `to` up and
    /// tells it to campaign. The transfer ends when `to` wins (this node then hears of a later
    /// term and follows), or after an election timeout, when proposals resume here.
    ///
    /// Asking again replaces a transfer in progress; asking for this node itself cancels it.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), TransferError> {
        if !self.is_leader() {
            return Err(TransferError::NotLeader { leader: self.leader() });
        }
        if !self.config.incoming.contains(to) {
            return Err(TransferError::NotAVoter(to));
        }
        self.wake_for("transfer");
        let id = self.id;
        let Role::Leader(l) = &mut self.role else { return Ok(()) };
        if to == id {
            if let Some(t) = l.transfer.take() {
                tracing::info!(group = self.group, id, to = t.to, "leadership transfer cancelled");
            }
            return Ok(());
        }
        tracing::info!(group = self.group, id, to, term = self.term, "transferring leadership");
        l.transfer = Some(Transfer { to, elapsed: 0 });
        l.reads.lease_until = 0;
        if !self.maybe_send_timeout_now() {
            // Catch the target up; TimeoutNow follows the append that does.
            let Role::Leader(l) = &mut self.role else { return Ok(()) };
            l.replicate_pending = true;
            if let Some(i) = l.progress.iter().position(|p| p.id == to) {
                self.maybe_send_append(i, true);
            }
        }
        self.debug_check();
        Ok(())
    }

    /// The node leadership is being transferred to, if a transfer is in progress.
    pub fn transfer_target(&self) -> Option<NodeId> {
        match &self.role {
            Role::Leader(l) => l.transfer.map(|t| t.to),
            _ => None,
        }
    }

    /// Sends `TimeoutNow` to the transfer's target if its log matches this leader's to the
    /// end. Returns whether it was sent.
    pub(super) fn maybe_send_timeout_now(&mut self) -> bool {
        let last = self.log.last_index();
        let Role::Leader(l) = &mut self.role else { return false };
        let Some(t) = l.transfer else { return false };
        if !l.progress.iter().any(|p| p.id == t.to && p.match_index == last) {
            return false;
        }
        // The target's campaign makes voters ignore their promise to this leader: no lease in
        // this term any more.
        l.timeout_now_sent = true;
        l.reads.lease_until = 0;
        self.send(t.to, MessageBody::TimeoutNow);
        true
    }

    /// Counts a tick of a transfer in progress; abandons it after an election timeout.
    pub(super) fn tick_transfer(&mut self) {
        let election_ticks = self.cfg.election_ticks;
        let Role::Leader(l) = &mut self.role else { return };
        let Some(t) = &mut l.transfer else { return };
        t.elapsed += 1;
        if t.elapsed >= election_ticks {
            tracing::info!(
                group = self.group,
                id = self.id,
                to = t.to,
                "leadership transfer abandoned after an election timeout; taking proposals again"
            );
            l.transfer = None;
        }
    }

    /// The leader tells this node to campaign now (its log is up to date).
    pub(super) fn handle_timeout_now(&mut self, from: NodeId) {
        if self.is_leader() || !self.is_voter() || !self.log_trusted() || self.storage_stalled() {
            return;
        }
        tracing::info!(
            group = self.group,
            id = self.id,
            from,
            "campaigning at the leader's request"
        );
        self.become_candidate(true);
    }
}

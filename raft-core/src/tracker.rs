//! What a leader knows about each follower's log: how far it matches, what to send next, and
//! how much is in flight. Majorities are counted in [`crate::quorum`].
//!
//! A follower is in one of two replication states:
//! - **Probe**: the leader does not know where the follower's log diverges. It sends one append
//!   at a time and waits for the answer (or for a heartbeat response, in case it was lost).
//! - **Replicate**: the follower's log matched at `match_index`. The leader streams appends
//!   optimistically, advancing `next_index` as it sends, limited by an in-flight window of
//!   messages and bytes (DESIGN: deep pipelines are not free, so both bounds are settings).

use std::collections::VecDeque;

use crate::types::{Index, NodeId};

/// The replication state of one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// One append at a time until the logs are known to match.
    Probe,
    /// Pipelined appends within the in-flight window.
    Replicate,
    /// The follower needs entries this leader compacted away: it is sent a snapshot, one
    /// chunk at a time, and gets appends again once the snapshot is installed.
    Snapshot,
}

/// A snapshot transfer to one follower.
#[derive(Clone, Debug)]
pub(crate) struct SnapshotSend {
    pub(crate) meta: crate::types::SnapshotMeta,
    /// The offset the follower has acknowledged: the next chunk starts here.
    pub(crate) offset: u64,
    /// A chunk read or a chunk's answer is outstanding.
    pub(crate) waiting: bool,
    /// Ticks since the last progress; a transfer that waits too long resends.
    pub(crate) idle_ticks: u32,
}

/// Appends sent to a follower and not yet acknowledged, oldest first.
#[derive(Clone, Debug, Default)]
pub(crate) struct Inflights {
    /// `(last index carried, bytes carried)` per message.
    msgs: VecDeque<(Index, u64)>,
    bytes: u64,
}

impl Inflights {
    /// Gives back memory a burst grew (a sleeping group keeps none).
    pub(crate) fn shrink(&mut self) {
        self.msgs.shrink_to_fit();
    }

    fn add(&mut self, last_index: Index, bytes: u64) {
        self.bytes += bytes;
        self.msgs.push_back((last_index, bytes));
    }

    /// Frees every message whose entries are all acknowledged.
    fn free_through(&mut self, index: Index) {
        while let Some(&(last, bytes)) = self.msgs.front() {
            if last > index {
                break;
            }
            self.bytes -= bytes;
            self.msgs.pop_front();
        }
    }

    fn free_first(&mut self) {
        if let Some((_, bytes)) = self.msgs.pop_front() {
            self.bytes -= bytes;
        }
    }

    fn clear(&mut self) {
        self.msgs.clear();
        self.bytes = 0;
    }

    pub(crate) fn count(&self) -> usize {
        self.msgs.len()
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// The leader's view of one follower.
///
/// **Invariant:** `match_index < next_index`.
#[derive(Clone, Debug)]
pub(crate) struct Progress {
    pub(crate) id: NodeId,
    /// The highest index known to be durable on the follower and to match the leader's log.
    pub(crate) match_index: Index,
    /// The next index to send.
    pub(crate) next_index: Index,
    pub(crate) state: ProgressState,
    /// In probe state: an append is outstanding; wait for its answer before sending another.
    pub(crate) probe_sent: bool,
    pub(crate) inflights: Inflights,
    /// The follower answered since the last check-quorum round.
    pub(crate) recent_active: bool,
    /// A fetch of entries for this follower is outstanding.
    pub(crate) fetching: bool,
    /// The snapshot transfer, in snapshot state.
    pub(crate) snapshot: Option<SnapshotSend>,
    /// The leader's tick when an append or a heartbeat last went to the follower.
    pub(crate) contact_tick: u64,
    /// The round of the last periodic heartbeat sent to the follower (answers to it also drive
    /// replication).
    pub(crate) beat_round: u64,
    /// The highest round of heartbeats the follower answered in this term.
    pub(crate) round_ack: u64,
}

impl Progress {
    pub(crate) fn new(id: NodeId, next_index: Index) -> Progress {
        Progress {
            id,
            match_index: 0,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            inflights: Inflights::default(),
            recent_active: false,
            fetching: false,
            snapshot: None,
            contact_tick: 0,
            beat_round: 0,
            round_ack: 0,
        }
    }

    /// Whether the leader must wait before sending more.
    pub(crate) fn is_paused(&self, msgs_max: usize, bytes_max: u64) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => {
                self.inflights.count() >= msgs_max || self.inflights.bytes() >= bytes_max
            }
            ProgressState::Snapshot => true,
        }
    }

    /// Records that an append carrying entries up to `last_index` (and `bytes` of them) was sent.
    pub(crate) fn sent(&mut self, last_index: Index, bytes: u64, carried: bool) {
        match self.state {
            ProgressState::Probe | ProgressState::Snapshot => self.probe_sent = true,
            ProgressState::Replicate => {
                if carried {
                    self.next_index = last_index + 1;
                    self.inflights.add(last_index, bytes);
                }
            }
        }
    }

    /// The follower acknowledged `index`. Returns whether `match_index` moved.
    pub(crate) fn maybe_update(&mut self, index: Index) -> bool {
        let moved = index > self.match_index;
        if moved {
            self.match_index = index;
            self.probe_sent = false;
        }
        self.next_index = self.next_index.max(index + 1);
        self.inflights.free_through(index);
        moved
    }

    /// A rejection of the append that followed `rejected`, with the leader's next guess
    /// `probe_from` (an index whose term is known to be at most the follower's). Returns false
    /// when the rejection is stale (it answers an append sent before the current one).
    pub(crate) fn maybe_decrease(&mut self, rejected: Index, probe_from: Index) -> bool {
        match self.state {
            // An answer to an append sent before the snapshot started.
            ProgressState::Snapshot => false,
            ProgressState::Replicate => {
                if rejected <= self.match_index {
                    return false;
                }
                // Something in the pipeline was lost or rejected: restart from what is known.
                self.become_probe();
                true
            }
            ProgressState::Probe => {
                if rejected != self.next_index - 1 {
                    return false;
                }
                if probe_from < self.match_index {
                    // The follower no longer holds entries it acknowledged as durable: its disk
                    // lost them (or was replaced). Raft cannot promise safety across that, but
                    // repairing the follower beats probing the same index forever.
                    tracing::error!(
                        follower = self.id,
                        match_index = self.match_index,
                        follower_hint = probe_from,
                        "follower lost entries it acknowledged; re-replicating from its log's end"
                    );
                    self.match_index = probe_from;
                }
                self.next_index = rejected.min(probe_from + 1).max(self.match_index + 1);
                self.probe_sent = false;
                true
            }
        }
    }

    /// The follower says its log ends at `last`, below what it acknowledged: its storage lost
    /// entries. Replication restarts from its log's end.
    pub(crate) fn regressed(&mut self, last: Index) {
        if last < self.match_index {
            tracing::warn!(
                follower = self.id,
                match_index = self.match_index,
                last,
                "follower lost entries it acknowledged; re-replicating from its log's end"
            );
            self.match_index = last;
        }
        self.become_probe();
    }

    pub(crate) fn become_probe(&mut self) {
        self.snapshot = None;
        self.state = ProgressState::Probe;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.inflights.clear();
    }

    pub(crate) fn become_replicate(&mut self) {
        self.snapshot = None;
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.inflights.clear();
    }

    /// Starts sending the snapshot `meta`.
    pub(crate) fn become_snapshot(&mut self, meta: crate::types::SnapshotMeta) {
        self.state = ProgressState::Snapshot;
        self.probe_sent = false;
        self.inflights.clear();
        self.snapshot = Some(SnapshotSend { meta, offset: 0, waiting: false, idle_ticks: 0 });
    }

    /// A heartbeat answer shows the follower is alive: unblock a probe whose append may have
    /// been lost, and in a full pipeline free one slot so a lost message cannot stall it.
    pub(crate) fn on_heartbeat_response(&mut self, msgs_max: usize, bytes_max: u64) {
        match self.state {
            ProgressState::Probe => self.probe_sent = false,
            ProgressState::Snapshot => {}
            ProgressState::Replicate => {
                if self.is_paused(msgs_max, bytes_max) {
                    self.inflights.free_first();
                }
            }
        }
    }
}

/// The follower progress a leader exposes in [`Status`](crate::Status).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerProgress {
    /// The follower.
    pub id: NodeId,
    /// The highest index known durable on the follower and matching the leader.
    pub match_index: Index,
    /// The next index the leader will send.
    pub next_index: Index,
    /// Probe, replicate or snapshot.
    pub state: ProgressState,
    /// In snapshot state: the snapshot's index and the bytes the follower acknowledged.
    pub snapshot: Option<(Index, u64)>,
    /// Append messages in flight.
    pub inflight_msgs: usize,
    /// Whether the follower answered within the current check-quorum round.
    pub recent_active: bool,
}

impl From<&Progress> for PeerProgress {
    fn from(p: &Progress) -> PeerProgress {
        PeerProgress {
            id: p.id,
            match_index: p.match_index,
            next_index: p.next_index,
            state: p.state,
            snapshot: p.snapshot.as_ref().map(|s| (s.meta.index, s.offset)),
            inflight_msgs: p.inflights.count(),
            recent_active: p.recent_active,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_rejection_moves_back_and_ignores_stale() {
        let mut p = Progress::new(2, 11);
        p.sent(10, 0, false);
        assert!(p.is_paused(4, 100));
        // A rejection of something else is stale.
        assert!(!p.maybe_decrease(7, 3));
        assert!(p.maybe_decrease(10, 3));
        assert_eq!(p.next_index, 4);
        assert!(!p.is_paused(4, 100));
    }

    #[test]
    fn replicate_window_bounds_messages_and_bytes() {
        let mut p = Progress::new(2, 1);
        p.become_replicate();
        for i in 1..=3 {
            p.sent(i * 10, 100, true);
        }
        assert!(p.is_paused(3, 10_000));
        assert!(!p.is_paused(4, 10_000));
        assert!(p.is_paused(4, 300));
        p.maybe_update(20);
        assert_eq!(p.inflights.count(), 1);
        assert_eq!(p.next_index, 31);
        // Rejection at or below match is stale in replicate state.
        assert!(!p.maybe_decrease(20, 0));
        assert!(p.maybe_decrease(30, 0));
        assert_eq!(p.state, ProgressState::Probe);
        assert_eq!(p.next_index, 21);
    }
}

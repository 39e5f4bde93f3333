//! Reads without the log (Raft thesis §6.4): ReadIndex on the leader, follower reads, and the
//! leader's lease.
//!
//! A read asked for with [`Raft::read_index`] comes back in [`Ready::reads`](crate::Ready) as a
//! [`ReadState`]: an index at which the caller may serve it, once its state machine has
//! applied that far, or why it cannot be served. Three invariants make that linearizable, each
//! enforced here:
//!
//! 1. **The index covers every write acknowledged before the read arrived.** A leader hands out
//!    its commit index as it was when the read arrived, and only once an entry of its own term
//!    has committed: a new leader's commit index may lag entries an earlier leader committed
//!    (Raft §8), so reads that arrive before wait in `before_commit`.
//! 2. **The leader still led after the read arrived.** Every heartbeat the leader sends belongs
//!    to a numbered *round*; a read waits for the first round sent after it arrived
//!    (`WaitingRead::round`), and is released once a quorum has answered that round or a later
//!    one in the same term (`LeaderReads::confirmed`). A leader cut off in a minority never
//!    gets there, however long it believes it leads. Reads that arrive while a round is out
//!    share the next round, sent when that one is confirmed (or with the next periodic
//!    heartbeat, if it was lost): one round serves many reads, and under load the rounds grow
//!    rather than multiply.
//! 3. **The lease is shorter than any follower's promise.** With
//!    [`Config::lease_reads`](crate::Config::lease_reads), a round that a quorum answered
//!    also renews a lease from the tick it was *sent*, for
//!    [`Config::lease_ticks`](crate::Config::lease_ticks): each follower that answered had
//!    just heard from this leader, so (with check-quorum) it votes for nobody else for an
//!    election timeout of its own clock. While the lease holds, a read is answered at once. A
//!    leader that starts a transfer gives the lease up, and one that has sent `TimeoutNow` in
//!    a term never holds a lease in it again (the target's campaign asks voters to ignore their
//!    promise).
//!
//! A follower forwards its reads to the leader in numbered requests (one per Ready, for every
//! read that arrived since the last), and releases them at the index the leader answers with.

use std::collections::VecDeque;

use super::{Raft, Role};
use crate::error::ReadError;
use crate::message::{HeartbeatResponse, MessageBody, ReadIndexRequest, ReadIndexResponse};
use crate::ready::{ReadId, ReadState};
use crate::types::{Index, NodeId};

/// Who asked for a read the leader holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ReadSource {
    /// A read asked for on this node.
    Local(ReadId),
    /// A follower's request.
    Peer { from: NodeId, seq: u64 },
}

/// A read waiting for a quorum to answer a round.
#[derive(Clone, Copy, Debug)]
pub(super) struct WaitingRead {
    source: ReadSource,
    /// The commit index when the read arrived.
    index: Index,
    /// The first round sent after the read arrived.
    round: u64,
    /// The tick it arrived at.
    arrived: u64,
}

/// The leader's side of reads: its rounds of heartbeats, the reads waiting for them, and the
/// lease.
#[derive(Debug, Default)]
pub(super) struct LeaderReads {
    /// The last round sent in this term (rounds are numbered from 1).
    pub(super) sent: u64,
    /// The highest round a quorum has answered. **Invariant:** `confirmed <= sent`.
    pub(super) confirmed: u64,
    /// `(last round sent at that tick, tick)` for rounds not confirmed yet, oldest first.
    sent_at: VecDeque<(u64, u64)>,
    /// Reads waiting for their round, in round order.
    waiting: VecDeque<WaitingRead>,
    /// Reads that arrived before an entry of this term committed, with the tick they arrived.
    before_commit: Vec<(ReadSource, u64)>,
    /// Reads wait for a round not sent yet: send one with the next Ready.
    pub(super) round_wanted: bool,
    /// The lease holds while the node's tick count is below this.
    pub(super) lease_until: u64,
    /// Only rounds from this one on may renew the lease (rounds sent before the clock last
    /// stalled started it at a tick count that lags real time).
    pub(super) lease_from_round: u64,
    /// An entry of this term has committed (reads may be served).
    pub(super) committed_in_term: bool,
}

impl LeaderReads {
    /// Gives back memory a burst grew (a sleeping group keeps none).
    pub(super) fn shrink(&mut self) {
        self.sent_at.shrink_to_fit();
        self.waiting.shrink_to_fit();
        self.before_commit.shrink_to_fit();
    }

    /// Whether no read waits for anything.
    pub(super) fn idle(&self) -> bool {
        self.waiting.is_empty() && self.before_commit.is_empty() && !self.round_wanted
    }

    /// Whether a round for reads should go out now: reads wait for one, and none is out.
    fn round_due(&self) -> bool {
        self.round_wanted && self.confirmed == self.sent
    }
}

/// Most ticks' worth of unconfirmed rounds remembered for the lease; older ones are forgotten,
/// which only shortens a lease.
const SENT_AT_MAX: usize = 1024;

/// A follower's reads, forwarded to its leader.
#[derive(Debug, Default)]
pub(super) struct ForwardedReads {
    /// The last request number sent.
    seq: u64,
    /// Reads and the request that carries them (`seq + 1` until it is sent), in order.
    waiting: VecDeque<(ReadId, u64)>,
    /// `(request, tick sent)` of requests not answered yet, oldest first.
    sent_at: VecDeque<(u64, u64)>,
    /// Reads wait for a request not sent yet.
    pub(super) wanted: bool,
}

impl ForwardedReads {
    /// Gives back memory a burst grew (a sleeping group keeps none).
    pub(super) fn shrink(&mut self) {
        self.waiting.shrink_to_fit();
        self.sent_at.shrink_to_fit();
    }

    /// Whether every request sent was answered (no timeout to count down).
    pub(super) fn no_requests_out(&self) -> bool {
        self.sent_at.is_empty()
    }

    /// Whether no forwarded read waits.
    pub(super) fn idle(&self) -> bool {
        self.waiting.is_empty() && !self.wanted
    }

    /// Requests numbered from `start` on. Each start of a node picks a random one, so that a
    /// late answer to a request of an earlier incarnation (whose numbers began elsewhere) names
    /// no request of this one.
    pub(super) fn starting_at(start: u64) -> ForwardedReads {
        ForwardedReads { seq: start, ..ForwardedReads::default() }
    }
}

impl Raft {
    /// Asks for a linearizable read, named `id` (the caller's choice; unique among its reads in
    /// flight). The answer comes in a later [`Ready::reads`](crate::Ready): an index at which
    /// to serve the read once the state machine has applied it, or why it cannot be served.
    ///
    /// On the leader the read waits for the next round of heartbeats a quorum answers (or is
    /// answered at once while a lease holds); on a follower it is forwarded to the leader. Errors
    /// at once (nothing held) when this node knows no leader.
    pub fn read_index(&mut self, id: ReadId) -> Result<(), ReadError> {
        self.wake_for("read");
        match self.role {
            Role::Leader(_) => self.leader_read(ReadSource::Local(id)),
            Role::Follower { leader: Some(_) } => {
                let f = &mut self.forwarded;
                f.waiting.push_back((id, f.seq + 1));
                f.wanted = true;
            }
            _ => return Err(ReadError::NotLeader { leader: self.leader() }),
        }
        self.debug_check();
        Ok(())
    }

    /// Whether this leader's lease holds now (always false unless
    /// [`Config::lease_reads`](crate::Config::lease_reads)).
    pub fn lease_holds(&self) -> bool {
        self.lease_remaining_ticks() > 0
    }

    /// How many more ticks this leader's lease holds (0: none).
    pub fn lease_remaining_ticks(&self) -> u64 {
        let Role::Leader(l) = &self.role else { return 0 };
        if !self.cfg.lease_reads
            || l.transfer.is_some()
            || l.timeout_now_sent
            || !l.reads.committed_in_term
        {
            return 0;
        }
        l.reads.lease_until.saturating_sub(self.ticks)
    }

    /// A read reaches the leader: answered from the lease, or held for a round (or for the
    /// term's first commit).
    fn leader_read(&mut self, source: ReadSource) {
        #[cfg(feature = "sim")]
        if self.faults.reads_without_quorum {
            let index = self.log.committed();
            self.release_read(source, index);
            return;
        }
        let lease = self.lease_holds();
        let commit = self.log.committed();
        let arrived = self.ticks;
        let Role::Leader(l) = &mut self.role else { return };
        if !l.reads.committed_in_term {
            l.reads.before_commit.push((source, arrived));
            return;
        }
        if lease {
            self.release_read(source, commit);
            return;
        }
        let round = l.reads.sent + 1;
        l.reads.waiting.push_back(WaitingRead { source, index: commit, round, arrived });
        l.reads.round_wanted = true;
    }

    /// Hands a read its index: into the next Ready, or back to the follower that asked.
    fn release_read(&mut self, source: ReadSource, index: Index) {
        self.answer_read(source, Ok(index));
    }

    /// Answers a read the leader held: its index or why not, into the next Ready for a read
    /// asked here; for a follower's request, the index or `None` (the follower fails its reads).
    fn answer_read(&mut self, source: ReadSource, result: Result<Index, ReadError>) {
        match source {
            ReadSource::Local(id) => self.out.reads.push(ReadState { id, result }),
            ReadSource::Peer { from, seq } => {
                let body = ReadIndexResponse { seq, index: result.ok() };
                self.send(from, MessageBody::ReadIndexResponse(body));
            }
        }
    }

    /// The caller's clock skipped ticks (the process stalled, or its tick timer fell behind):
    /// the tick count lags real time, so the lease, which counts ticks, is given up, and only
    /// rounds sent from now on renew it. A runtime that cannot tick on time must call this.
    pub fn clock_stalled(&mut self) {
        if let Role::Leader(l) = &mut self.role {
            l.reads.lease_until = 0;
            l.reads.lease_from_round = l.reads.sent + 1;
        }
    }

    /// The leader's first entry of its term committed: reads held for it join the next round.
    pub(super) fn on_commit_in_term(&mut self) {
        let Role::Leader(l) = &mut self.role else { return };
        if l.reads.committed_in_term {
            return;
        }
        l.reads.committed_in_term = true;
        for (source, _) in std::mem::take(&mut l.reads.before_commit) {
            self.leader_read(source);
        }
    }

    /// The leader's regular heartbeat, called every tick. While a lease needs renewing or a
    /// read waits, a periodic round goes to every follower each `heartbeat_ticks`. Otherwise
    /// only to the followers nothing was sent to for that long: an append does a heartbeat's
    /// work (it restarts the follower's election timer and carries the commit index), so a busy
    /// group sends no heartbeats at all. With many groups on a node they would be as many
    /// messages as the appends. Returns whether a heartbeat interval ended at this tick.
    pub(super) fn heartbeat(&mut self) -> bool {
        let interval = u64::from(self.cfg.heartbeat_ticks);
        let ticks = self.ticks;
        let Role::Leader(l) = &mut self.role else { return false };
        l.heartbeat_elapsed += 1;
        let due = l.heartbeat_elapsed >= self.cfg.heartbeat_ticks;
        if due {
            l.heartbeat_elapsed = 0;
        }
        if self.cfg.lease_reads || !l.reads.idle() {
            if due {
                self.broadcast_round(true);
            }
        } else if l.progress.iter().any(|p| ticks.saturating_sub(p.contact_tick) >= interval) {
            self.send_round(true, Some(interval));
        }
        due
    }

    /// Sends a round of heartbeats to every follower. A `periodic` round is the leader's
    /// regular heartbeat; others are sent for reads waiting for a round.
    pub(super) fn broadcast_round(&mut self, periodic: bool) {
        self.send_round(periodic, None);
    }

    /// Sends a round of heartbeats: to every follower, or (`quiet`) only to those nothing was
    /// sent to for that many ticks.
    fn send_round(&mut self, periodic: bool, quiet: Option<u64>) {
        let committed = self.log.committed();
        let ticks = self.ticks;
        // A simple configuration needs answers from a quorum less this node; a joint one asks
        // everyone.
        let needed =
            if self.config.is_joint() { usize::MAX } else { self.config.incoming.quorum() - 1 };
        let Role::Leader(l) = &mut self.role else { return };
        let reads = &mut l.reads;
        reads.sent += 1;
        reads.round_wanted = false;
        let round = reads.sent;
        match reads.sent_at.back_mut() {
            Some((last, tick)) if *tick == ticks => *last = round,
            _ => {
                if reads.sent_at.len() >= SENT_AT_MAX {
                    reads.sent_at.pop_front();
                }
                reads.sent_at.push_back((round, ticks));
            }
        }
        // Cap the commit index at what each follower is known to hold, so a follower never
        // commits an entry it has not matched with this leader.
        let mut beats: Vec<(NodeId, Index, u64)> = l
            .progress
            .iter()
            .filter(|p| quiet.is_none_or(|q| ticks.saturating_sub(p.contact_tick) >= q))
            .map(|p| (p.id, p.match_index.min(committed), p.round_ack))
            .collect();
        if !periodic && needed != usize::MAX {
            // A round for reads needs a quorum only: it goes to the voters that answered the
            // latest rounds (half the messages in a group of three; learners do not count). If
            // one of them does not answer, the next periodic round, which goes to everyone,
            // confirms the reads.
            beats.retain(|&(id, _, _)| self.config.contains(id));
            beats.sort_unstable_by_key(|&(id, _, ack)| (std::cmp::Reverse(ack), id));
            beats.truncate(needed);
        }
        for p in &mut l.progress {
            if beats.iter().any(|b| b.0 == p.id) {
                p.contact_tick = ticks;
                if periodic {
                    p.beat_round = round;
                }
            }
        }
        for (to, commit, _) in beats {
            self.send(to, MessageBody::Heartbeat(crate::message::Heartbeat { commit, round }));
        }
        // A group of one confirms its own rounds.
        self.advance_reads();
    }

    /// A follower answered round `round`.
    pub(super) fn on_round_answered(&mut self, from: NodeId, round: u64) {
        let Role::Leader(l) = &mut self.role else { return };
        if round > l.reads.sent {
            return; // Not a round of this leader's: ignore it.
        }
        if let Some(p) = l.progress.iter_mut().find(|p| p.id == from) {
            p.round_ack = p.round_ack.max(round);
        }
        self.advance_reads();
    }

    /// Confirms the rounds a quorum has answered: releases the reads waiting for them and
    /// renews the lease from the tick the newest of them was sent.
    fn advance_reads(&mut self) {
        let lease_ticks = u64::from(self.cfg.lease_ticks());
        let id = self.id;
        let Role::Leader(l) = &mut self.role else { return };
        let answered = std::iter::once((id, l.reads.sent))
            .chain(l.progress.iter().map(|p| (p.id, p.round_ack)));
        let confirmed = self.config.committed_index(answered, &mut l.scratch);
        let reads = &mut l.reads;
        if confirmed <= reads.confirmed {
            return;
        }
        reads.confirmed = confirmed;
        // The round was sent at the tick of the first record that reaches it (a forgotten
        // record only makes this later: a shorter lease).
        let sent_tick = reads.sent_at.iter().find(|&&(last, _)| last >= confirmed).map(|r| r.1);
        while reads.sent_at.front().is_some_and(|&(last, _)| last <= confirmed) {
            reads.sent_at.pop_front();
        }
        if let Some(tick) = sent_tick {
            if l.transfer.is_none() && !l.timeout_now_sent && confirmed >= reads.lease_from_round {
                reads.lease_until = reads.lease_until.max(tick + lease_ticks);
            }
        }
        let mut released = Vec::new();
        while reads.waiting.front().is_some_and(|r| r.round <= confirmed) {
            released.extend(reads.waiting.pop_front());
        }
        for read in released {
            self.release_read(read.source, read.index);
        }
    }

    /// Sends what reads wait for (called when a Ready is built, so reads that arrived since the
    /// last Ready share one round or one request).
    pub(super) fn flush_reads(&mut self) {
        match &mut self.role {
            Role::Leader(l) if l.reads.round_due() => self.broadcast_round(false),
            Role::Follower { leader: Some(leader) } if self.forwarded.wanted => {
                let leader = *leader;
                let f = &mut self.forwarded;
                f.wanted = false;
                f.seq += 1;
                let seq = f.seq;
                f.sent_at.push_back((seq, self.ticks));
                self.send(leader, MessageBody::ReadIndex(ReadIndexRequest { seq }));
            }
            _ => {}
        }
    }

    /// Whether reads wait for something to be sent.
    pub(super) fn reads_to_flush(&self) -> bool {
        match &self.role {
            Role::Leader(l) => l.reads.round_due(),
            Role::Follower { leader: Some(_) } => self.forwarded.wanted,
            _ => false,
        }
    }

    /// A follower's request for a read index.
    pub(super) fn handle_read_index(&mut self, from: NodeId, req: ReadIndexRequest) {
        if self.is_leader() {
            self.leader_read(ReadSource::Peer { from, seq: req.seq });
        } else {
            let body = ReadIndexResponse { seq: req.seq, index: None };
            self.send(from, MessageBody::ReadIndexResponse(body));
        }
    }

    /// The leader's answer to a forwarded request: releases the reads it carried and every
    /// earlier one (a later request was also sent after they arrived).
    pub(super) fn handle_read_index_response(&mut self, from: NodeId, resp: ReadIndexResponse) {
        if !matches!(self.role, Role::Follower { leader: Some(l) } if l == from) {
            return; // From a node this follower no longer follows: its reads were abandoned.
        }
        let f = &mut self.forwarded;
        if !f.sent_at.iter().any(|&(seq, _)| seq == resp.seq) {
            // Not a request of this incarnation waiting for its answer: one that timed out, or
            // one a previous incarnation of this node sent (its index may be older than what
            // this node served before it restarted).
            return;
        }
        while f.sent_at.front().is_some_and(|&(seq, _)| seq <= resp.seq) {
            f.sent_at.pop_front();
        }
        while let Some(&(id, seq)) = f.waiting.front() {
            if seq > resp.seq {
                break;
            }
            f.waiting.pop_front();
            let result = resp.index.ok_or(ReadError::Abandoned);
            self.out.reads.push(ReadState { id, result });
        }
    }

    /// Reads the leader has held for an election timeout fail: no quorum answered a round since
    /// (a leader cut off without check-quorum would otherwise hold them, and their memory,
    /// for as long as it believes it leads), or the term's first entry has not committed.
    pub(super) fn tick_leader_reads(&mut self) {
        let timeout = u64::from(self.cfg.election_ticks);
        let now = self.ticks;
        let Role::Leader(l) = &mut self.role else { return };
        let expired = |arrived: u64| arrived + timeout <= now;
        let mut failed: Vec<ReadSource> = Vec::new();
        while l.reads.waiting.front().is_some_and(|r| expired(r.arrived)) {
            failed.extend(l.reads.waiting.pop_front().map(|r| r.source));
        }
        l.reads.before_commit.retain(|&(source, arrived)| {
            if expired(arrived) {
                failed.push(source);
            }
            !expired(arrived)
        });
        for source in failed {
            self.answer_read(source, Err(ReadError::Abandoned));
        }
    }

    /// A follower's forwarded requests that got no answer within an election timeout fail.
    pub(super) fn tick_reads(&mut self) {
        let timeout = u64::from(self.cfg.election_ticks);
        let f = &mut self.forwarded;
        let mut expired = None;
        while f.sent_at.front().is_some_and(|&(_, tick)| tick + timeout <= self.ticks) {
            expired = f.sent_at.pop_front().map(|(seq, _)| seq);
        }
        let Some(expired) = expired else { return };
        while let Some(&(id, seq)) = f.waiting.front() {
            if seq > expired {
                break;
            }
            f.waiting.pop_front();
            self.out.reads.push(ReadState { id, result: Err(ReadError::Abandoned) });
        }
    }

    /// Fails every read this node holds, because its role or its leader changes: reads it led
    /// (answering followers' requests with no index) and reads it forwarded.
    pub(super) fn abandon_reads(&mut self, leader_hint: Option<NodeId>) {
        if let Role::Leader(l) = &mut self.role {
            let waiting = std::mem::take(&mut l.reads.waiting).into_iter().map(|r| r.source);
            let held: Vec<ReadSource> = waiting
                .chain(std::mem::take(&mut l.reads.before_commit).into_iter().map(|r| r.0))
                .collect();
            for source in held {
                self.answer_read(source, Err(ReadError::NotLeader { leader: leader_hint }));
            }
        }
        let f = &mut self.forwarded;
        f.sent_at.clear();
        f.wanted = false;
        for (id, _) in std::mem::take(&mut f.waiting) {
            self.out.reads.push(ReadState { id, result: Err(ReadError::Abandoned) });
        }
    }

    /// The answer to a heartbeat of round `round`.
    pub(super) fn heartbeat_response(&mut self, to: NodeId, round: u64) {
        self.send(to, MessageBody::HeartbeatResponse(HeartbeatResponse { round }));
    }

    /// Checks the read state's invariants.
    pub(super) fn check_read_invariants(&self) {
        if let Role::Leader(l) = &self.role {
            let r = &l.reads;
            assert!(r.confirmed <= r.sent, "round {} confirmed, {} sent", r.confirmed, r.sent);
            if let Some(w) = r.waiting.back() {
                assert!(w.round <= r.sent + 1, "a read waits for round {} of {}", w.round, r.sent);
            }
            assert!(
                r.committed_in_term || r.waiting.is_empty(),
                "reads wait for a round before the term's first commit"
            );
        }
    }
}

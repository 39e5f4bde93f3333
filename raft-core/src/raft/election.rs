//! Terms, roles and elections: the term rules every message passes through, pre-vote,
//! voting, and the role transitions (`become_*`).

use super::{LeaderState, Raft, Role, Votes};
use crate::error::StepError;
use crate::message::{Message, MessageBody, VoteRequest, VoteResponse};
use crate::quorum::VoteResult;
use crate::tracker::Progress;
use crate::types::{EntryKind, NodeId, Term};

impl Raft {
    /// Applies the term rules (Raft §5.1: a higher term wins; a lower term is stale), then hands
    /// the message to its handler.
    pub(super) fn step_validated(&mut self, msg: Message) -> Result<(), StepError> {
        // Repair is about log contents, which Log Matching ties to entries, not terms: it is
        // handled in any term, and raises nobody's.
        let msg = match msg.body {
            MessageBody::Repair(req) => {
                self.handle_repair_request(msg.from, req);
                return Ok(());
            }
            MessageBody::RepairResponse(resp) => {
                self.handle_repair_response(msg.from, resp);
                return Ok(());
            }
            _ => msg,
        };
        match &msg.body {
            // Before the term rules: a node that is no voter here must not raise our term,
            // unless its log is ahead of ours (then our configuration may be the stale one: we
            // lag, or lost entries to damage, and the candidate holds a newer one).
            MessageBody::Vote(req)
                if !self.config.contains(msg.from)
                    && !self.candidate_ahead(req.last_index, req.last_term) =>
            {
                self.refuse_non_voter(msg.from);
                return Ok(());
            }
            // Whatever its term: the removed node may have campaigned far ahead of the group.
            MessageBody::NotAMember(m) => {
                self.handle_not_a_member(msg.from, *m);
                return Ok(());
            }
            _ => {}
        }
        if msg.term > self.term {
            match &msg.body {
                MessageBody::Vote(req) => {
                    // Raft thesis §4.2.3 and §9.6: a node that hears from a live leader ignores
                    // requests to replace it, so a node returning from a partition (or a removed
                    // one) cannot disrupt the group.
                    // A candidate the leader handed leadership to (TimeoutNow) is heard at once:
                    // that leader gave up its lease first. So is the leader itself: a node
                    // campaigns in a later term only once it no longer leads ours (it stepped
                    // down, or restarted), so no lease relies on us any more. A restarted leader
                    // then wins its groups back at once instead of waiting for every follower's
                    // timeout.
                    let lease_applies =
                        if req.pre_vote { true } else { self.cfg.check_quorum && !req.transfer };
                    if lease_applies && self.in_lease() && self.leader() != Some(msg.from) {
                        tracing::debug!(
                            group = self.group,
                            id = self.id,
                            from = msg.from,
                            term = msg.term,
                            kind = msg.body.name(),
                            "ignoring vote request while a leader is active"
                        );
                        return Ok(());
                    }
                    if !req.pre_vote {
                        // Raft §5.2: only granting a vote (or hearing the leader) restarts the
                        // election timer. A candidate whose request is refused must not hold
                        // everyone else's timers back: one with a stale log and a fast clock
                        // would otherwise stall the group forever, campaigning alone.
                        let timer = (self.election_elapsed, self.randomized_election_ticks);
                        self.become_follower(msg.term, None);
                        (self.election_elapsed, self.randomized_election_ticks) = timer;
                    }
                }
                // A granted pre-vote carries the term the candidate would campaign in; it does
                // not mean anybody has moved to that term.
                MessageBody::VoteResponse(resp) if resp.pre_vote && resp.granted => {}
                MessageBody::Append(_)
                | MessageBody::Heartbeat(_)
                | MessageBody::Hibernate(_)
                | MessageBody::InstallSnapshot(_) => {
                    self.become_follower(msg.term, Some(msg.from));
                }
                _ => self.become_follower(msg.term, None),
            }
        } else if msg.term < self.term {
            match &msg.body {
                MessageBody::Append(_)
                | MessageBody::Heartbeat(_)
                | MessageBody::Hibernate(_)
                | MessageBody::InstallSnapshot(_) => {
                    // A leader of an older term is talking to us. A node that raised its term
                    // while partitioned would otherwise never be heard again: its vote requests
                    // are ignored while others hear the leader (check-quorum, pre-vote), or
                    // because it is no voter in their configuration (a learner that still holds
                    // the configuration that made it a voter, say). Answering with our term
                    // makes the stale leader step down and a fresh election include us.
                    self.heartbeat_response(msg.from, 0);
                }
                MessageBody::Vote(req) => {
                    // Tell a (pre-)candidate of an older term that it is behind (Raft §5.1), so
                    // it catches up instead of campaigning forever: nobody else may be sending
                    // it anything (its configuration and ours may name different voters).
                    self.send(
                        msg.from,
                        MessageBody::VoteResponse(VoteResponse {
                            pre_vote: req.pre_vote,
                            granted: false,
                        }),
                    );
                }
                _ => {}
            }
            return Ok(());
        }

        let from = msg.from;
        let term = msg.term;
        match msg.body {
            MessageBody::Vote(req) => self.handle_vote_request(from, term, req),
            MessageBody::VoteResponse(resp) => self.handle_vote_response(from, term, resp),
            MessageBody::Append(req) => return self.handle_append(from, term, req),
            MessageBody::AppendResponse(resp) => self.handle_append_response(from, resp),
            MessageBody::Heartbeat(hb) => self.handle_heartbeat(from, hb),
            MessageBody::HeartbeatResponse(resp) => self.handle_heartbeat_response(from, resp),
            MessageBody::InstallSnapshot(req) => return self.handle_install_snapshot(from, req),
            MessageBody::InstallSnapshotResponse(resp) => self.handle_snapshot_response(from, resp),
            MessageBody::ReadIndex(req) => self.handle_read_index(from, req),
            MessageBody::ReadIndexResponse(resp) => self.handle_read_index_response(from, resp),
            MessageBody::TimeoutNow => self.handle_timeout_now(from),
            MessageBody::Hibernate(h) => self.handle_hibernate(from, h),
            // Handled above.
            MessageBody::NotAMember(_)
            | MessageBody::Repair(_)
            | MessageBody::RepairResponse(_) => {}
        }
        Ok(())
    }

    /// Whether this node heard from a live leader within the minimum election timeout.
    ///
    /// With lease reads, a node that started less than an election timeout ago counts as having
    /// heard from one: before it crashed it may have answered a leader's heartbeat, and that
    /// leader's lease relies on it not voting for anybody else for an election timeout.
    pub(super) fn in_lease(&self) -> bool {
        if self.cfg.lease_reads && self.ticks < u64::from(self.cfg.election_ticks) {
            return true;
        }
        match self.role {
            Role::Leader(_) => true,
            Role::Follower { leader: Some(_) } => self.election_elapsed < self.cfg.election_ticks,
            _ => false,
        }
    }

    fn handle_vote_request(&mut self, from: NodeId, msg_term: Term, req: VoteRequest) {
        // One vote per term: a repeated request from the candidate we voted for is granted
        // again (the first answer may have been lost); nobody else gets it. A node that knows
        // the term's leader does not vote. A pre-vote for a future term promises nothing.
        // Only a member votes: a node waiting to join, or one removed, may have lost the state
        // an earlier incarnation voted with.
        let can_vote = self.configs.current().contains(self.id)
            && self.damage_allows_vote(req.last_index, req.last_term)
            && (self.vote == Some(from)
                || (self.vote.is_none() && self.leader().is_none())
                || (req.pre_vote && msg_term > self.term));
        let granted = can_vote && self.log.is_up_to_date(req.last_index, req.last_term);
        tracing::debug!(
            group = self.group,
            id = self.id,
            candidate = from,
            term = msg_term,
            pre_vote = req.pre_vote,
            granted,
            "vote request"
        );
        let body = MessageBody::VoteResponse(VoteResponse { pre_vote: req.pre_vote, granted });
        if req.pre_vote {
            // A granted pre-vote answers in the candidate's future term so it can tell a grant
            // from a stale answer; nothing is persisted for a pre-vote.
            let term = if granted { msg_term } else { self.term };
            let msg = Message { group: self.group, from: self.id, to: from, term, body };
            self.out.messages.push(msg);
        } else {
            if granted {
                self.vote = Some(from);
                self.reset_election_timer();
            } else if self.log.is_up_to_date(req.last_index, req.last_term)
                && self.damage_allows_vote(req.last_index, req.last_term)
            {
                // Refused only because this term's vote is gone (to ourselves, say): the
                // candidate could win with it, so it should have the next try. Without this,
                // a node whose clock runs fast and whose log nobody accepts can keep starting
                // elections just before it, for ever (no pre-vote to stop it).
                self.reset_election_timer();
            }
            // The vote is persisted before the answer leaves (DESIGN: persist before acknowledge).
            self.send_after_persist(from, body);
        }
    }

    fn handle_vote_response(&mut self, from: NodeId, msg_term: Term, resp: VoteResponse) {
        let term = self.term;
        let config = &self.config;
        let tally = match &mut self.role {
            Role::PreCandidate(votes) if resp.pre_vote => {
                // Grants come in our future term, rejections in the voter's (not higher) term.
                if resp.granted && msg_term != term + 1 {
                    return;
                }
                votes.record(from, resp.granted);
                config.vote_result(|id| votes.answer(id))
            }
            Role::Candidate(votes) if !resp.pre_vote && msg_term == term => {
                votes.record(from, resp.granted);
                config.vote_result(|id| votes.answer(id))
            }
            _ => return, // A late answer to an election that is over.
        };
        match (tally, &self.role) {
            (VoteResult::Won, Role::PreCandidate(_)) => self.become_candidate(false),
            (VoteResult::Won, Role::Candidate(_)) => self.become_leader(),
            (VoteResult::Lost, _) => self.become_follower(self.term, None),
            _ => {}
        }
    }

    pub(super) fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.election_elapsed >= self.randomized_election_ticks {
            if self.is_voter() && !self.removed && self.log_trusted() && !self.storage_stalled() {
                self.campaign();
            } else {
                // Learners, nodes waiting to join, removed nodes, nodes whose log is being
                // repaired and nodes that cannot write their vote never campaign.
                self.reset_election_timer();
            }
        }
    }

    /// Starts an election: a pre-vote round first when enabled.
    pub(super) fn campaign(&mut self) {
        if self.cfg.pre_vote {
            self.become_pre_candidate();
        } else {
            self.become_candidate(false);
        }
    }

    /// Becomes a follower in `term` (which must not be lower than the current term), of
    /// `leader` if known.
    pub(super) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        assert!(term >= self.term, "terms only grow: {} -> {}", self.term, term);
        let same_leader =
            term == self.term && matches!(self.role, Role::Follower { leader: l } if l == leader);
        if !same_leader {
            self.abandon_reads(leader);
        }
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        let was = self.role();
        self.role = Role::Follower { leader };
        self.reset_election_timer();
        tracing::debug!(group = self.group, id = self.id, term, ?leader, %was, "became follower");
    }

    fn become_pre_candidate(&mut self) {
        assert!(!self.is_leader(), "a leader does not campaign");
        self.abandon_reads(None);
        let mut votes = Votes::default();
        votes.record(self.id, true);
        self.role = Role::PreCandidate(votes);
        self.reset_election_timer();
        tracing::debug!(group = self.group, id = self.id, term = self.term, "became pre-candidate");
        if self.alone_is_quorum() {
            self.become_candidate(false);
            return;
        }
        self.request_votes(true, false);
    }

    /// Campaigns in the next term; `transfer` when the leader handed leadership to this node.
    pub(super) fn become_candidate(&mut self, transfer: bool) {
        assert!(!self.is_leader(), "a leader does not campaign");
        self.abandon_reads(None);
        self.term += 1;
        self.vote = Some(self.id);
        let mut votes = Votes::default();
        votes.record(self.id, true);
        self.role = Role::Candidate(votes);
        self.reset_election_timer();
        tracing::debug!(group = self.group, id = self.id, term = self.term, "became candidate");
        if self.alone_is_quorum() {
            self.become_leader();
            return;
        }
        self.request_votes(false, transfer);
    }

    /// Asks every peer for its vote. A pre-vote names the term this node would campaign in and
    /// leaves at once (it promises nothing). A real request leaves only once the new term and
    /// self-vote are durable: a candidate that crashed before that and restarted in the old
    /// term could otherwise vote for another candidate in the term it campaigns in, and help
    /// elect two leaders.
    fn request_votes(&mut self, pre_vote: bool, transfer: bool) {
        let req = VoteRequest {
            pre_vote,
            last_index: self.log.last_index(),
            last_term: self.log.last_term(),
            transfer,
        };
        let term = if pre_vote { self.term + 1 } else { self.term };
        for to in self.peers() {
            let msg = Message {
                group: self.group,
                from: self.id,
                to,
                term,
                body: MessageBody::Vote(req),
            };
            if pre_vote {
                self.out.messages.push(msg);
            } else {
                self.out.persisted_messages.push(msg);
            }
        }
    }

    fn become_leader(&mut self) {
        assert!(
            matches!(self.role, Role::Candidate(_)),
            "only a candidate becomes leader (was {})",
            self.role()
        );
        // A transfer received from the previous leader is abandoned.
        self.receiving = None;
        let next = self.log.last_index() + 1;
        let progress: Vec<Progress> =
            self.members_but_me().into_iter().map(|id| Progress::new(id, next)).collect();
        self.role = Role::Leader(LeaderState {
            progress,
            heartbeat_elapsed: 0,
            replicate_pending: true,
            uncommitted_bytes: 0,
            scratch: Vec::with_capacity(self.config.voters().len()),
            reads: Default::default(),
            transfer: None,
            timeout_now_sent: false,
            members_in_term: self.configs.current().members(),
            lingering: false,
        });
        self.election_elapsed = 0;
        // Nodes a configuration after the commit index leaves out still get entries.
        self.sync_progress();
        // Raft §8: commit an entry of our own term at once, which commits everything before it
        // and lets the leader learn the commit index.
        self.log.append_new(self.term, EntryKind::Noop, bytes::Bytes::new());
        tracing::info!(
            group = self.group,
            id = self.id,
            term = self.term,
            last_index = self.log.last_index(),
            "became leader"
        );
        if self.alone_is_quorum() {
            self.maybe_commit();
        }
    }

    /// Check-quorum (Raft thesis §6.2): whether a quorum, this node included, was heard from
    /// during the round that just ended. Resets the round.
    pub(super) fn quorum_active(&mut self) -> bool {
        let id = self.id;
        let Role::Leader(leader) = &mut self.role else { return false };
        let progress = &leader.progress;
        let active = self.config.vote_result(|v| {
            Some(v == id || progress.iter().any(|p| p.id == v && p.recent_active))
        }) == VoteResult::Won;
        for p in &mut leader.progress {
            p.recent_active = false;
        }
        active
    }
}

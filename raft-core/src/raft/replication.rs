//! Log replication: the leader's appends and heartbeats, the follower's handling of them, and
//! the commit rule.

use super::{Raft, Role};
use crate::error::StepError;
use crate::log::{AppendRejection, Slice};
use crate::message::{AppendRequest, AppendResponse, Heartbeat, HeartbeatResponse, MessageBody};
use crate::ready::{FetchPurpose, FetchRequest};
use crate::tracker::ProgressState;
use crate::types::{Entry, Index, NodeId, Term};

impl Raft {
    pub(super) fn tick_leader(&mut self) {
        self.election_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_ticks {
            self.election_elapsed = 0;
            // A read for a lagging follower whose answer never came is asked again (a late
            // answer is recognised as stale).
            if let Role::Leader(leader) = &mut self.role {
                for p in &mut leader.progress {
                    p.fetching = false;
                }
                leader.replicate_pending = true;
            }
            if self.cfg.check_quorum && !self.quorum_active() {
                tracing::info!(
                    group = self.group,
                    id = self.id,
                    term = self.term,
                    "stepping down: no quorum heard within an election timeout"
                );
                self.become_follower(self.term, None);
                return;
            }
        }
        self.tick_snapshot_sends();
        self.tick_transfer();
        self.tick_leader_reads();
        let due = self.heartbeat();
        // A TimeoutNow that was lost is sent again while the target is caught up.
        if due && matches!(&self.role, Role::Leader(l) if l.transfer.is_some()) {
            self.maybe_send_timeout_now();
        }
    }

    /// Sends what each follower can take now (called when a Ready is built, so proposals that
    /// arrived since the last Ready share messages).
    pub(super) fn flush_appends(&mut self) {
        let Role::Leader(leader) = &mut self.role else { return };
        leader.replicate_pending = false;
        for i in 0..leader.progress.len() {
            self.maybe_send_append(i, false);
        }
    }

    /// Sends appends to the follower at position `i` while its window allows and there is
    /// something to send (or one empty append, as a probe, when `allow_empty`). Returns whether
    /// anything was sent.
    pub(super) fn maybe_send_append(&mut self, i: usize, allow_empty: bool) -> bool {
        let mut sent_any = false;
        let mut allow_empty = allow_empty;
        loop {
            let Role::Leader(leader) = &mut self.role else { return sent_any };
            let p = &mut leader.progress[i];
            if p.state == ProgressState::Snapshot {
                return self.send_snapshot(i) || sent_any;
            }
            if p.fetching || p.is_paused(self.cfg.inflight_msgs_max, self.cfg.inflight_bytes_max) {
                return sent_any;
            }
            let (to, next) = (p.id, p.next_index);
            if self.needs_damaged_entry(next) {
                // Only a snapshot past the damaged entry can catch this follower up.
                if self.applied_damage_pending() {
                    return sent_any;
                }
                return self.send_snapshot(i) || sent_any;
            }
            let prev_index = next - 1;
            let Some(prev_term) = self.log.term(prev_index) else {
                // The entry before `next` was compacted away; only a snapshot can catch this
                // follower up.
                tracing::debug!(
                    group = self.group,
                    id = self.id,
                    to,
                    prev_index,
                    first_index = self.log.first_index(),
                    "follower needs compacted entries"
                );
                return self.send_snapshot(i) || sent_any;
            };
            let (entries, bytes) = match self.log.slice(
                next,
                self.log.last_index(),
                self.cfg.append_entries_max,
                self.cfg.append_bytes_max,
            ) {
                Slice::Cached(entries, bytes) => (entries, bytes),
                Slice::Empty => (Vec::new(), 0),
                Slice::Fetch { lo, hi } => {
                    let hi = hi.min(lo + self.cfg.append_entries_max as Index - 1);
                    let term = self.term;
                    let Role::Leader(leader) = &mut self.role else { return sent_any };
                    leader.progress[i].fetching = true;
                    self.out.fetches.push(FetchRequest {
                        group: self.group,
                        purpose: FetchPurpose::Replicate { to, term },
                        lo,
                        hi,
                        max_bytes: self.cfg.append_bytes_max,
                    });
                    return sent_any;
                }
            };
            if entries.is_empty() && !allow_empty {
                return sent_any;
            }
            allow_empty = false;
            let carried = !entries.is_empty();
            self.send_append(i, prev_index, prev_term, entries, bytes);
            sent_any = true;
            if !carried {
                return sent_any;
            }
        }
    }

    /// Sends one append to the follower at position `i` and records it in its progress.
    fn send_append(
        &mut self,
        i: usize,
        prev_index: Index,
        prev_term: Term,
        entries: Vec<Entry>,
        bytes: u64,
    ) {
        let commit = self.log.committed();
        let ticks = self.ticks;
        let Role::Leader(leader) = &mut self.role else { return };
        let p = &mut leader.progress[i];
        let last = prev_index + entries.len() as Index;
        p.sent(last, bytes, !entries.is_empty());
        p.contact_tick = ticks;
        let to = p.id;
        let req = AppendRequest { prev_index, prev_term, entries, commit };
        self.send(to, MessageBody::Append(req));
    }

    /// Entries read from the store for a follower that lags behind the cache.
    pub(super) fn send_fetched(&mut self, to: NodeId, term: Term, entries: Vec<Entry>) {
        let matches = self.log.matches(&entries);
        let Some(p) = self.progress_mut_in_term(to, term) else { return };
        p.fetching = false;
        let usable = matches
            && entries.first().is_some_and(|e| e.index == p.next_index)
            && entries.windows(2).all(|w| w[1].index == w[0].index + 1);
        let Role::Leader(leader) = &mut self.role else { return };
        leader.replicate_pending = true;
        if !usable {
            return; // The follower's needs changed while reading; the next Ready asks again.
        }
        let Some(i) = leader.progress.iter().position(|p| p.id == to) else { return };
        let p = &leader.progress[i];
        if p.is_paused(self.cfg.inflight_msgs_max, self.cfg.inflight_bytes_max) {
            return;
        }
        let prev_index = p.next_index - 1;
        let Some(prev_term) = self.log.term(prev_index) else { return };
        let bytes = entries.iter().map(Entry::size_bytes).sum();
        self.send_append(i, prev_index, prev_term, entries, bytes);
    }

    /// Follower side of AppendEntries (Raft §5.3).
    pub(super) fn handle_append(
        &mut self,
        from: NodeId,
        term: Term,
        req: AppendRequest,
    ) -> Result<(), StepError> {
        if !self.follow(from, "append") {
            return Ok(());
        }
        let AppendRequest { mut prev_index, mut prev_term, mut entries, commit } = req;
        let committed = self.log.committed();
        if prev_index < committed {
            // Entries up to our commit index are committed, so every leader holds them
            // (Leader Completeness) and they match; skip to the first one that may not.
            let skip = ((committed - prev_index) as usize).min(entries.len());
            entries.drain(..skip);
            prev_index = committed;
            prev_term = self.log.term(committed).unwrap_or_default();
        }
        let configs = Self::configs_in(&entries);
        match self.log.maybe_append(prev_index, prev_term, entries, from, term) {
            Ok(last_new) => {
                self.membership_after_append(prev_index, last_new, &configs);
                // Raft §5.3: commit up to the leader's commit index, but not past what this
                // message showed to match (older entries past it may still be replaced).
                self.log.commit_to(commit.min(last_new));
                self.repair_after_match(last_new, Some(commit));
                self.send_after_persist(
                    from,
                    MessageBody::AppendResponse(AppendResponse::Success { match_index: last_new }),
                );
                Ok(())
            }
            Err(AppendRejection::Mismatch { hint_index, hint_term }) => {
                self.send_after_persist(
                    from,
                    MessageBody::AppendResponse(AppendResponse::Conflict {
                        rejected: prev_index,
                        hint_index,
                        hint_term,
                    }),
                );
                Ok(())
            }
            Err(AppendRejection::Committed(err)) => {
                tracing::error!(group = self.group, id = self.id, %err, "append dropped");
                Err(err)
            }
        }
    }

    pub(super) fn handle_append_response(&mut self, from: NodeId, resp: AppendResponse) {
        let last_index = self.log.last_index();
        let probe_from = match resp {
            AppendResponse::Conflict { hint_index, hint_term, .. } => {
                // Turn the follower's hint into the largest index where our term is at most
                // the follower's: a whole divergent term is skipped per round trip.
                self.log.find_conflict_by_term(hint_index, hint_term)
            }
            AppendResponse::Success { .. } => 0,
        };
        let Role::Leader(leader) = &mut self.role else { return };
        let Some(i) = leader.progress.iter().position(|p| p.id == from) else { return };
        let p = &mut leader.progress[i];
        p.recent_active = true;
        match resp {
            AppendResponse::Success { match_index } => {
                if match_index > last_index {
                    tracing::warn!(
                        group = self.group,
                        id = self.id,
                        from,
                        match_index,
                        last_index,
                        "append response acknowledges entries this leader never sent; dropped"
                    );
                    return;
                }
                let was_paused =
                    p.is_paused(self.cfg.inflight_msgs_max, self.cfg.inflight_bytes_max);
                let moved = p.maybe_update(match_index);
                if p.state == ProgressState::Probe && (moved || match_index == p.match_index) {
                    p.become_replicate();
                }
                if p.state == ProgressState::Snapshot && p.match_index >= self.log.base_index() {
                    // An earlier append caught the follower up: it needs no snapshot.
                    p.become_replicate();
                }
                let now_paused =
                    p.is_paused(self.cfg.inflight_msgs_max, self.cfg.inflight_bytes_max);
                if moved {
                    // Followers learn a new commit index with the next append or heartbeat.
                    self.maybe_commit();
                }
                if was_paused && !now_paused || moved {
                    // A commit may have changed the configuration, and the followers with it.
                    if let Some(i) = self.progress_position(from) {
                        self.maybe_send_append(i, false);
                    }
                }
                if moved
                    && matches!(&self.role, Role::Leader(l) if l.transfer.is_some_and(|t| t.to == from))
                {
                    self.maybe_send_timeout_now();
                }
            }
            AppendResponse::Conflict { rejected, .. } => {
                if p.maybe_decrease(rejected, probe_from) {
                    tracing::debug!(
                        group = self.group,
                        id = self.id,
                        from,
                        rejected,
                        next = p.next_index,
                        "follower rejected append; probing"
                    );
                    self.maybe_send_append(i, true);
                }
            }
        }
    }

    /// A message from the leader of our term arrived: follow it (a candidate of the same term
    /// concedes) and restart the election timer. Returns false if this node itself leads the
    /// term, which a correct group never allows (Election Safety): the message is dropped.
    pub(super) fn follow(&mut self, from: NodeId, kind: &'static str) -> bool {
        match &self.role {
            Role::Leader(_) => {
                tracing::error!(
                    group = self.group,
                    id = self.id,
                    from,
                    term = self.term,
                    kind,
                    "message from another leader of my own term; dropped"
                );
                return false;
            }
            Role::Follower { leader: Some(l) } if *l == from => {}
            _ => self.become_follower(self.term, Some(from)),
        }
        self.election_elapsed = 0;
        self.removed = false;
        true
    }

    pub(super) fn handle_heartbeat(&mut self, from: NodeId, hb: Heartbeat) {
        if !self.follow(from, "heartbeat") {
            return;
        }
        // The leader caps `commit` at our match index, which we hold durably.
        let matched = hb.commit.min(self.log.last_index());
        self.log.commit_to(matched);
        self.repair_after_match(matched, None);
        self.heartbeat_response(from, hb.round);
    }

    pub(super) fn handle_heartbeat_response(&mut self, from: NodeId, resp: HeartbeatResponse) {
        let last_index = self.log.last_index();
        let Role::Leader(leader) = &mut self.role else { return };
        let Some(i) = leader.progress.iter().position(|p| p.id == from) else { return };
        let p = &mut leader.progress[i];
        let periodic = resp.round == p.beat_round;
        p.recent_active = true;
        if periodic {
            // Answers to rounds sent for reads do not drive replication: under many reads they
            // would send an empty append per round.
            p.on_heartbeat_response(self.cfg.inflight_msgs_max, self.cfg.inflight_bytes_max);
            if p.match_index < last_index {
                // The follower is behind: resend (an empty append at `next - 1` finds out
                // whether earlier appends were lost).
                self.maybe_send_append(i, true);
            }
        }
        self.on_round_answered(from, resp.round);
    }

    /// Where follower `from` is in the leader's progress list (which a configuration change
    /// reorders).
    pub(super) fn progress_position(&self, from: NodeId) -> Option<usize> {
        match &self.role {
            Role::Leader(l) => l.progress.iter().position(|p| p.id == from),
            _ => None,
        }
    }

    /// Advances the commit index to the highest index a quorum holds durably, if that entry is
    /// of the current term (Raft §5.4.2, Figure 8). Returns whether it moved.
    pub(super) fn maybe_commit(&mut self) -> bool {
        let own = self.log.persisted();
        let term = self.term;
        let id = self.id;
        let Role::Leader(leader) = &mut self.role else { return false };
        let matched =
            std::iter::once((id, own)).chain(leader.progress.iter().map(|p| (p.id, p.match_index)));
        let quorum_index = self.config.committed_index(matched, &mut leader.scratch);
        let old = self.log.committed();
        if quorum_index <= old {
            return false;
        }
        let of_this_term = self.log.term(quorum_index) == Some(term);
        #[cfg(feature = "sim")]
        let of_this_term = of_this_term || self.faults.commit_any_term;
        if !of_this_term {
            // Counting replicas of an older term's entry is not enough: a later leader may
            // still overwrite it (Figure 8). It commits with the first entry of this term.
            return false;
        }
        self.log.commit_to(quorum_index);
        let released = self.log.cached_bytes_of_term(old + 1, quorum_index, term);
        if let Role::Leader(leader) = &mut self.role {
            leader.uncommitted_bytes = leader.uncommitted_bytes.saturating_sub(released);
        }
        self.on_commit_in_term();
        self.membership_after_commit();
        true
    }
}

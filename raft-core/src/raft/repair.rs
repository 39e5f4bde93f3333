//! Storage damage: a node whose store lost entries it may have acknowledged.
//!
//! Raft assumes a node's disk returns what was written. When it does not (a flipped bit, a lost
//! block), the store finds out through checksums, either when it opens or when a read fails, and
//! tells the core where the damage starts. The core then treats its log as ending before that
//! index and gets the rest from the leader again, the way a lagging follower would.
//!
//! # How a damaged node votes
//!
//! The node may have acknowledged the lost entries, and a leader may have counted that
//! acknowledgement to commit them. Raft's voting rule keeps committed entries because every
//! majority holds a node that has them and refuses candidates lacking them; a node that lost
//! them and voted by its shortened log could elect such a candidate. So while
//! [`Health::Repairing`] the node votes as its log stood before the damage: only for candidates
//! at least as up to date as the entry its log ended with ([`LogDamage::last`], which the store
//! reads from the records after the damaged ones), and not at all when that is unknown. It does
//! not campaign and ignores `TimeoutNow`. It still follows a leader and acknowledges what it
//! actually holds, which is safe: an acknowledgement is of entries the node has.
//!
//! # Getting the entries back
//!
//! Every election timeout (and at once after each answer) the node asks every member for the
//! entries after its log's end ([`RepairRequest`]). A member whose log holds the entry the
//! damaged log ended with holds, by Log Matching, that whole log, and sends its entries
//! ([`RepairResponse`]); the leader also learns from the request that the node holds less than
//! it acknowledged and replicates to it from its log's end. Peers matter when the leader cannot
//! help: a new leader may need this node's vote, which the node gives only once whole.
//!
//! # When repair ends
//!
//! The node is whole again when its log holds the entry it ended with before the damage (then
//! it is that log, by Log Matching), or holds the leader's log through that index (a leader
//! that truncated the old suffix has every committed entry: Leader Completeness, which holds
//! because the leader was elected under the voting rule above). When the old end is unknown,
//! the node waits until it holds the leader's log through a commit index of the leader's term:
//! the leader has every entry committed before its term, its first entry of its term follows
//! them all, and what it committed itself sits at or below its commit index, which only grows.
//! The store is then told ([`LogStore::mark_repaired`](crate::LogStore::mark_repaired), after
//! the entries are durable), so a restart mid-repair repairs again rather than forgetting.
//!
//! # Damage to applied entries
//!
//! An entry the state machine already applied is needed again only to send to a lagging
//! follower. A node that cannot read one takes a snapshot past it (compaction then removes it)
//! and sends followers that need it that snapshot; its log's end is intact, so it keeps voting.

use super::{ApplyFetch, Raft, Role};
use crate::log::Slice;
use crate::message::{MessageBody, RepairRequest, RepairResponse};
use crate::ready::{FetchPurpose, FetchRequest};
use crate::types::{Entry, Health, Index, LogDamage, NodeId, Term};

/// What the node knows of damage to its log.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Repair {
    /// Ticks since the last round of repair requests.
    ticks_since_request: u32,
    /// Entries from `from` on were lost: the log ends before it; the node does not campaign,
    /// and votes only for candidates at least as up to date as the log it held before.
    pub(super) damage: Option<LogDamage>,
    /// An applied entry that cannot be read: a snapshot past it is wanted, and followers that
    /// need it get a snapshot instead.
    pub(super) applied_damage: Option<Index>,
}

impl Repair {
    /// The repair state of a node starting with `damage`: its first requests go out at its
    /// first tick.
    pub(super) fn new(damage: Option<LogDamage>, election_ticks: u32) -> Repair {
        Repair { ticks_since_request: election_ticks, damage, applied_damage: None }
    }
}

impl Raft {
    /// The store could not read entry `index` of this group (it failed its checksum), or a
    /// scrubber found it damaged. The node drops it and every later entry from its log and gets
    /// them from the leader again (a leader steps down first); until it is whole it neither votes
    /// nor campaigns. Damage to an entry already applied is repaired with a snapshot instead.
    /// Reports about compacted or unknown indexes are ignored.
    pub fn report_damage(&mut self, index: Index) {
        if index <= self.log.base_index() || index > self.log.last_index() {
            return;
        }
        if index <= self.log.applying() {
            if self.repair.applied_damage.is_none_or(|d| index < d) {
                tracing::warn!(
                    group = self.group,
                    id = self.id,
                    index,
                    "an applied entry is damaged: taking a snapshot past it"
                );
                self.repair.applied_damage = Some(index);
            }
            return;
        }
        if !matches!(self.role, Role::Follower { .. }) {
            tracing::warn!(
                group = self.group,
                id = self.id,
                term = self.term,
                index,
                "stepping down: my log is damaged"
            );
            self.become_follower(self.term, None);
        }
        let last = (self.log.last_index(), self.log.last_term());
        tracing::warn!(
            group = self.group,
            id = self.id,
            index,
            last_index = self.log.last_index(),
            "log damaged: dropping it from here and fetching it from the leader; not voting until repaired"
        );
        self.log.cut_damaged(index);
        let before = (self.configs.current_index(), self.configs.current().clone());
        self.configs.truncate_after(index - 1);
        if (self.configs.current_index(), self.configs.current()) != (before.0, &before.1) {
            self.on_membership_changed();
        }
        self.out.fetched_apply.retain(|e| e.index < index);
        self.apply_fetch = ApplyFetch::Idle;
        let new = LogDamage::new(index, Some(last));
        self.repair.damage = Some(self.repair.damage.map_or(new, |d| d.merged(new)));
        self.repair.ticks_since_request = self.cfg.election_ticks;
    }

    /// Damage to this node's log, and its repair.
    pub fn health(&self) -> Health {
        match self.repair.damage {
            Some(d) => Health::Repairing { from: d.from },
            None => Health::Healthy,
        }
    }

    /// Whether this node's log is whole, so it may campaign.
    pub(super) fn log_trusted(&self) -> bool {
        self.repair.damage.is_none()
    }

    /// Whether a candidate whose log ends at `(last_index, last_term)` is at least as up to date
    /// as this node's log was before any damage (always, for an undamaged node; never, when the
    /// damage hid where the log ended).
    pub(super) fn damage_allows_vote(&self, last_index: Index, last_term: Term) -> bool {
        match self.repair.damage {
            None => true,
            Some(LogDamage { last: Some((i, t)), .. }) => (last_term, last_index) >= (t, i),
            Some(_) => false,
        }
    }

    /// Whether a candidate whose log ends at `(last_index, last_term)` is strictly ahead of
    /// everything this node holds, and held before any damage.
    pub(super) fn candidate_ahead(&self, last_index: Index, last_term: Term) -> bool {
        let mine = (self.log.last_term(), self.log.last_index());
        let ahead_of_damage = match self.repair.damage {
            None => true,
            Some(LogDamage { last: Some((i, t)), .. }) => (last_term, last_index) > (t, i),
            Some(_) => false,
        };
        (last_term, last_index) > mine && ahead_of_damage
    }

    /// After a message from the leader showed this node's log to match the leader's through
    /// `matched`, with the leader's commit index `commit` if the message carried it whole (an
    /// append does; a heartbeat caps it). A repairing node is whole again once it holds the
    /// leader's log through where its own log ended before the damage, or, when that is
    /// unknown, through a commit index of the leader's term (see the module docs).
    pub(super) fn repair_after_match(&mut self, matched: Index, commit: Option<Index>) {
        let Some(LogDamage { last, .. }) = self.repair.damage else { return };
        let whole = match last {
            Some((last_index, _)) => matched >= last_index,
            None => commit.is_some_and(|c| matched >= c && self.log.term(c) == Some(self.term)),
        };
        if whole {
            self.repaired("the leader's log");
        } else {
            self.maybe_whole_again();
        }
    }

    /// The log holds the entry it ended with before the damage: by Log Matching it holds the
    /// whole log it had (entries restored by peers, or sent again by the leader).
    fn maybe_whole_again(&mut self) {
        if let Some(LogDamage { last: Some((index, term)), .. }) = self.repair.damage {
            if self.log.term(index) == Some(term) {
                self.repaired("the entry the log ended with");
            }
        }
    }

    fn repaired(&mut self, how: &'static str) {
        let Some(damage) = self.repair.damage.take() else { return };
        tracing::info!(
            group = self.group,
            id = self.id,
            from = damage.from,
            last_index = self.log.last_index(),
            how,
            "log repaired"
        );
        self.out.repaired = true;
    }

    /// Every election timeout while repairing, asks every other member for the lost entries
    /// (the leader also learns from it that this node holds less than it acknowledged).
    pub(super) fn tick_repair(&mut self) {
        let Some(damage) = self.repair.damage else { return };
        self.repair.ticks_since_request += 1;
        if self.repair.ticks_since_request < self.cfg.election_ticks {
            return;
        }
        self.repair.ticks_since_request = 0;
        let req = RepairRequest { from: self.log.last_index() + 1, last: damage.last };
        for to in self.members_but_me() {
            self.send(to, MessageBody::Repair(req));
        }
    }

    /// A damaged member asks for its lost entries.
    pub(super) fn handle_repair_request(&mut self, from: NodeId, req: RepairRequest) {
        if req.from == 0 {
            return;
        }
        if let Some(i) = self.progress_position(from) {
            if let Role::Leader(leader) = &mut self.role {
                let p = &mut leader.progress[i];
                if req.from <= p.match_index {
                    p.regressed(req.from - 1);
                    self.maybe_send_append(i, true);
                }
            }
        }
        // Any member that holds the entry the damaged log ended with holds that log (Log
        // Matching), and sends what it can.
        let Some((last_index, last_term)) = req.last else { return };
        if req.from > last_index || self.log.term(last_index) != Some(last_term) {
            return;
        }
        let max = self.cfg.append_entries_max;
        match self.log.slice(req.from, last_index, max, self.cfg.append_bytes_max) {
            Slice::Cached(entries, _) => self.send_repair(from, entries),
            Slice::Empty => {}
            Slice::Fetch { lo, hi } => self.out.fetches.push(FetchRequest {
                group: self.group,
                purpose: FetchPurpose::Repair { to: from },
                lo,
                hi: hi.min(lo + max as Index - 1),
                max_bytes: self.cfg.append_bytes_max,
            }),
        }
    }

    /// Sends a damaged member entries of this log (if they still are this log's).
    pub(super) fn send_repair(&mut self, to: NodeId, entries: Vec<Entry>) {
        let Some(first) = entries.first().map(|e| e.index) else { return };
        if !self.log.matches(&entries) {
            return;
        }
        let prev_index = first - 1;
        let Some(prev_term) = self.log.term(prev_index) else { return };
        self.send(
            to,
            MessageBody::RepairResponse(RepairResponse { prev_index, prev_term, entries }),
        );
    }

    /// Entries a member sent for this damaged log: taken if they continue it where it ends.
    pub(super) fn handle_repair_response(&mut self, from: NodeId, resp: RepairResponse) {
        let Some(LogDamage { last: Some((last_index, _)), .. }) = self.repair.damage else {
            return;
        };
        let RepairResponse { prev_index, prev_term, entries } = resp;
        let continues = prev_index == self.log.last_index()
            && prev_index >= self.log.committed()
            && self.log.term(prev_index) == Some(prev_term)
            && entries.last().is_some_and(|e| e.index <= last_index && e.term <= self.term);
        if !continues {
            return;
        }
        let configs = Self::configs_in(&entries);
        let term = self.term;
        match self.log.maybe_append(prev_index, prev_term, entries, from, term) {
            Ok(last_new) => self.membership_after_append(prev_index, last_new, &configs),
            Err(_) => return,
        }
        self.maybe_whole_again();
        if self.repair.damage.is_some() {
            // More to come: ask the same member at once rather than after a timeout.
            let req = RepairRequest {
                from: self.log.last_index() + 1,
                last: self.repair.damage.and_then(|d| d.last),
            };
            self.send(from, MessageBody::Repair(req));
        }
    }

    /// Whether an applied entry is damaged and no snapshot covers it yet.
    pub(super) fn applied_damage_pending(&self) -> bool {
        self.repair
            .applied_damage
            .is_some_and(|d| self.snapshot.as_ref().is_none_or(|s| s.index < d))
    }

    /// A compaction through `through` removed damaged applied entries it covers.
    pub(super) fn repair_after_compaction(&mut self, through: Index) {
        if self.repair.applied_damage.is_some_and(|d| d <= through) {
            tracing::info!(
                group = self.group,
                id = self.id,
                through,
                "damaged applied entries compacted away"
            );
            self.repair.applied_damage = None;
        }
    }

    /// Whether a follower whose next index is `next` needs a damaged applied entry, which only
    /// a snapshot can replace.
    pub(super) fn needs_damaged_entry(&self, next: Index) -> bool {
        self.repair.applied_damage.is_some_and(|d| next <= d)
    }
}

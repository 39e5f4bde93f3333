//! The consensus state machine of one node in one group.
//!
//! [`Raft`] takes inputs ([`tick`](Raft::tick), [`step`](Raft::step),
//! [`propose`](Raft::propose), [`on_persisted`](Raft::on_persisted),
//! [`on_fetched`](Raft::on_fetched)) and gathers what they require into a [`Ready`]. It does no
//! I/O, reads no clock and starts no thread: the same inputs always give the same outputs.

mod election;
mod hibernate;
mod membership;
mod quiet;
mod read;
mod repair;
mod replication;
mod snapshot;
mod stall;
mod transfer;
mod validate;

use std::collections::VecDeque;

use bytes::Bytes;

use crate::config::Config;
use crate::error::{ConfigError, ProposeError, StepError};
use crate::log::{RaftLog, Slice};
use crate::membership::Membership;
use crate::message::{Message, MessageBody};
use crate::quorum::{JointConfig, VoteResult};
use crate::ready::{FetchPurpose, FetchRequest, ReadState, Ready};
use crate::rng::Rng;
use crate::tracker::{PeerProgress, Progress};
use crate::types::{
    Entry, EntryKind, GroupId, HardState, Health, Index, LogDamage, NodeId, RoleKind, SnapshotMeta,
    Term,
};
use crate::StorageError;

/// Where a node starts from: what its log store holds, or an empty log for a new group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialState {
    /// The persisted term, vote and commit index.
    pub hard_state: HardState,
    /// The membership before the log's configuration entries: the newest snapshot's, or the
    /// group's first configuration when there is no snapshot (empty for a node waiting to be
    /// added to a group).
    pub membership: Membership,
    /// The configuration entries the log holds after the snapshot, in index order.
    /// [`load_initial_state`](crate::storage::load_initial_state) finds them.
    pub config_entries: Vec<(Index, Membership)>,
    /// The index before the first entry the store holds (0 unless compacted).
    pub base_index: Index,
    /// The term at `base_index` (0 for index 0).
    pub base_term: Term,
    /// The last index the store holds.
    pub last_index: Index,
    /// The term of every index in `(base_index, last_index]`, as `(first index, term)` runs with
    /// growing terms. [`load_initial_state`](crate::storage::load_initial_state) builds them from a store.
    pub term_runs: Vec<(Index, Term)>,
    /// The index the state machine has already applied (0 for an in-memory state machine that
    /// starts empty).
    pub applied: Index,
    /// The newest complete snapshot, from which the caller restored the state machine (so
    /// `applied` is at least its index).
    pub snapshot: Option<SnapshotMeta>,
    /// Damage the store found when it opened (its log now ends before `from`;
    /// [`LogStore::damage`](crate::LogStore::damage)): the node starts [`Health::Repairing`].
    pub damage: Option<LogDamage>,
}

impl InitialState {
    /// The state of a node of a brand-new group with an empty log: `membership` is the group's
    /// first configuration (a `Vec` of voters converts), or empty for a node that waits to be
    /// added to an existing group.
    pub fn new_group(membership: impl Into<Membership>) -> InitialState {
        InitialState {
            hard_state: HardState::default(),
            membership: membership.into(),
            config_entries: Vec::new(),
            base_index: 0,
            base_term: 0,
            last_index: 0,
            term_runs: Vec::new(),
            applied: 0,
            snapshot: None,
            damage: None,
        }
    }
}

/// The identity of a log entry: Log Matching makes `(index, term)` name one entry cluster-wide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId {
    /// The entry's index.
    pub index: Index,
    /// The entry's term.
    pub term: Term,
}

/// A snapshot of a node's state, for metrics, tests and operators.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Its group.
    pub group: GroupId,
    /// Its role.
    pub role: RoleKind,
    /// Its term.
    pub term: Term,
    /// Its vote in `term`.
    pub vote: Option<NodeId>,
    /// The leader it knows of (itself when leader).
    pub leader: Option<NodeId>,
    /// The first index its log holds.
    pub first_index: Index,
    /// The last index its log holds.
    pub last_index: Index,
    /// The term of the last entry.
    pub last_term: Term,
    /// Entries up to here are durable locally.
    pub persisted_index: Index,
    /// Entries up to here are committed.
    pub commit_index: Index,
    /// Entries up to here were handed to the state machine.
    pub applied_index: Index,
    /// Entries and bytes held in the in-memory log cache.
    pub cached_entries: usize,
    /// Bytes held in the in-memory log cache.
    pub cached_bytes: u64,
    /// The last index of the newest snapshot this node holds (0 if none).
    pub snapshot_index: Index,
    /// Per-follower replication progress (leader only).
    pub progress: Vec<PeerProgress>,
    /// How many more ticks the leader's read lease holds (0: no lease; always 0 unless
    /// [`Config::lease_reads`]).
    pub lease_remaining_ticks: u64,
    /// The node leadership is being transferred to (leader only).
    pub transfer_target: Option<NodeId>,
    /// The voters (during a change, of the configuration being entered).
    pub voters: Vec<NodeId>,
    /// The learners.
    pub learners: Vec<NodeId>,
    /// The whole configuration in effect (joint or not, learners, addresses).
    pub membership: Membership,
    /// The log index of the configuration in effect (0: the bootstrap configuration).
    pub membership_index: Index,
    /// Whether this node was told it was removed from the group (see [`Raft::is_removed`]).
    pub removed: bool,
    /// Damage to this node's log and its repair.
    pub health: Health,
    /// The log store refuses writes for lack of space (see [`Raft::set_storage_stalled`]).
    pub storage_stalled: bool,
    /// The node sleeps: its group is idle and hibernating (see [`Raft::is_asleep`]).
    pub asleep: bool,
}

/// Votes gathered by a (pre-)candidate.
#[derive(Debug, Default)]
struct Votes {
    granted: Vec<NodeId>,
    rejected: Vec<NodeId>,
}

impl Votes {
    fn record(&mut self, from: NodeId, granted: bool) {
        if self.granted.contains(&from) || self.rejected.contains(&from) {
            return; // A duplicated response counts once.
        }
        if granted {
            self.granted.push(from);
        } else {
            self.rejected.push(from);
        }
    }

    /// `from`'s answer, if it gave one.
    fn answer(&self, from: NodeId) -> Option<bool> {
        if self.granted.contains(&from) {
            Some(true)
        } else if self.rejected.contains(&from) {
            Some(false)
        } else {
            None
        }
    }
}

/// State only a leader has: the followers' progress.
#[derive(Debug)]
struct LeaderState {
    /// One entry per follower (every voter but this node).
    progress: Vec<Progress>,
    heartbeat_elapsed: u32,
    /// New entries or freed windows: try to send appends when the next Ready is built.
    replicate_pending: bool,
    /// Bytes of entries proposed in this term and not yet committed.
    uncommitted_bytes: u64,
    /// Reused by commit counting so it does not allocate.
    scratch: Vec<Index>,
    /// Rounds of heartbeats, the reads waiting for them, and the lease.
    reads: read::LeaderReads,
    /// A leadership transfer in progress.
    transfer: Option<transfer::Transfer>,
    /// Every node that was a member at some point of this term: one that left cannot be added
    /// back before the next term (its old incarnation's messages of this term may be in
    /// flight).
    members_in_term: Vec<NodeId>,
    /// The leader replicates to nodes that the configuration in effect no longer holds (until
    /// the configuration that left them out commits).
    lingering: bool,
    /// `TimeoutNow` went out in this term: the lease is given up for good.
    timeout_now_sent: bool,
}

/// A node's role, each owning the data only it has (STYLE: roles own their data).
#[derive(Debug)]
enum Role {
    Follower { leader: Option<NodeId> },
    PreCandidate(Votes),
    Candidate(Votes),
    Leader(LeaderState),
}

/// Reads of committed entries to apply ask for at least this many bytes.
const APPLY_FETCH_BYTES_MIN: u64 = 1 << 20;

/// The state of the read of committed entries to apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ApplyFetch {
    Idle,
    /// Asked for, `ticks` ago.
    InFlight {
        ticks: u32,
    },
    /// The read failed; retry at the next tick.
    Failed,
}

/// Where taking a snapshot stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SnapshotTaking {
    Idle,
    /// Asked for in a Ready; waiting for `on_snapshot_taken`.
    Requested,
    /// The last attempt failed (a full disk, say); ask again after `wait` more ticks.
    Failed {
        wait: u32,
    },
}

/// Messages and reads gathered for the next [`Ready`].
#[derive(Debug, Default)]
struct Outbox {
    messages: Vec<Message>,
    persisted_messages: Vec<Message>,
    fetches: Vec<FetchRequest>,
    compact: Option<(Index, Term)>,
    restore_snapshot: Option<SnapshotMeta>,
    snapshot_reads: Vec<crate::ready::SnapshotRead>,
    snapshot_chunks: Vec<crate::ready::SnapshotChunk>,
    /// Committed entries read from the store, handed to the state machine `apply_bytes_max`
    /// at a time.
    fetched_apply: VecDeque<Entry>,
    /// Reads released or failed.
    reads: Vec<ReadState>,
    /// The configuration in effect changed since the last Ready.
    membership_changed: bool,
    /// A damaged log was repaired since the last Ready.
    repaired: bool,
}

/// One node of one Raft group, as a deterministic state machine.
///
/// ```
/// use raft_core::{Config, InitialState, Raft};
/// let config = Config::new(1);
/// let mut node = Raft::new(config, InitialState::new_group(vec![1])).unwrap();
/// // A single-node group elects itself after an election timeout.
/// while !node.is_leader() {
///     node.tick();
///     let ready = node.ready();
///     node.on_persisted(ready.number);
/// }
/// let id = node.propose("hello".into()).unwrap();
/// let ready = node.ready();
/// assert_eq!(ready.entries.last().map(|e| e.index), Some(id.index));
/// node.on_persisted(ready.number);
/// assert_eq!(node.ready().committed_entries.last().map(|e| e.index), Some(id.index));
/// ```
#[derive(Debug)]
pub struct Raft {
    id: NodeId,
    group: GroupId,
    cfg: Config,
    /// Faults the simulator injects into this node's algorithm (never set outside it).
    #[cfg(feature = "sim")]
    faults: crate::sim::Faults,
    /// The configurations the log holds; the latest is in effect.
    configs: membership::Configs,
    /// The majorities of the configuration in effect (kept beside it for the hot paths).
    config: JointConfig,
    /// A member whose committed configuration leaves this node out told it so: it does not
    /// campaign (until its own log shows it a voter again).
    removed: bool,
    /// **Invariant:** never decreases.
    term: Term,
    /// **Invariant:** at most one vote per term; reset only when the term grows.
    vote: Option<NodeId>,
    log: RaftLog,
    role: Role,
    /// Ticks since the last reset of the election timer (or, on a leader, of the check-quorum
    /// round).
    election_elapsed: u32,
    /// The current randomized election timeout, in `[election_ticks, 2 * election_ticks)`; after
    /// [`Raft::wake`], the woken follower's turn (see there).
    randomized_election_ticks: u32,
    rng: Rng,
    out: Outbox,
    /// The hard state last handed out in a Ready.
    emitted_hard_state: HardState,
    next_ready_number: u64,
    /// Where the fetch of entries to apply stands.
    apply_fetch: ApplyFetch,
    /// The newest complete snapshot this node holds.
    snapshot: Option<SnapshotMeta>,
    snapshot_taking: SnapshotTaking,
    /// Attempts to take a snapshot that failed in a row (they back off).
    snapshot_failures: u32,
    /// The store found the newest snapshot damaged: a fresh one is taken at once.
    snapshot_damaged: bool,
    /// Bytes of entries handed to the state machine since the last snapshot.
    applied_bytes_since_snapshot: u64,
    /// A snapshot being received from the leader.
    receiving: Option<snapshot::Receiving>,
    /// Ticks since this node started (the lease's clock).
    ticks: u64,
    /// Reads forwarded to the leader (follower).
    forwarded: read::ForwardedReads,
    /// Damage to this node's log and its repair.
    repair: repair::Repair,
    /// The log store refusing writes for lack of space.
    stall: stall::Stall,
    /// Hibernation of an idle group.
    sleep: hibernate::Sleep,
}

impl Raft {
    /// A node starting from `state`, after validating `config` against it.
    pub fn new(config: Config, state: InitialState) -> Result<Raft, ConfigError> {
        config.validate()?;
        let snapshot_index = state.snapshot.as_ref().map_or(0, |s| s.index);
        let mut state = state;
        state.membership = membership::normalized(state.membership)?;
        let membership = state.membership.clone();
        let mut previous = snapshot_index.max(state.base_index);
        for (index, m) in &state.config_entries {
            if *index <= previous || *index > state.last_index {
                return Err(ConfigError::InconsistentState(format!(
                    "configuration entry {index} is not after {previous} within the log's end {}",
                    state.last_index
                )));
            }
            m.validate().map_err(|e| ConfigError::InconsistentState(e.to_string()))?;
            previous = *index;
        }
        let bootstrap = state.snapshot.is_none() && state.config_entries.is_empty();
        if bootstrap && !membership.is_empty() && !membership.contains(config.id) {
            return Err(ConfigError::NotAVoter { id: config.id, voters: membership.voters });
        }
        let configs = membership::Configs::new(
            snapshot_index.max(state.base_index),
            state.membership,
            state.config_entries,
        );
        // A node waiting to be added may already hold a log (the entries before the one that
        // adds it): it stays without membership until that entry arrives.
        let quorum = configs.current().quorum();
        let hs = state.hard_state;
        if let Some(snap) = &state.snapshot {
            if snap.group != config.group {
                return Err(ConfigError::InconsistentState(format!(
                    "snapshot of group {} for a node of group {}",
                    snap.group, config.group
                )));
            }
            if snap.index > state.last_index || snap.index < state.base_index {
                return Err(ConfigError::InconsistentState(format!(
                    "snapshot at {} is outside the log ({}, {}]: compact the store through it first \
                     (load_initial_state does)",
                    snap.index, state.base_index, state.last_index
                )));
            }
        }
        let mut commit = hs.commit.max(snapshot_index);
        if commit > state.last_index {
            // The hard state may be written before the entries it covers; a crash between the
            // two loses the entries' tail. A smaller commit index is always safe.
            tracing::warn!(
                group = config.group,
                id = config.id,
                commit,
                last_index = state.last_index,
                "persisted commit index is past the log's end; using the last index"
            );
            commit = state.last_index;
        }
        let log = RaftLog::restore(
            state.base_index,
            state.base_term,
            state.last_index,
            state.term_runs,
            commit,
            state.applied.max(snapshot_index),
        )
        .map_err(ConfigError::InconsistentState)?;
        // A snapshot installed from a leader is durable as soon as it is installed, while the
        // hard state that recorded the leader's term may not have been synced before a crash.
        // The node saw that term: adopt it (with no vote), and persist it with the first Ready.
        let (term, vote) = match &state.snapshot {
            Some(snap) if snap.term > hs.term => {
                tracing::info!(
                    group = config.group,
                    id = config.id,
                    hard_state_term = hs.term,
                    snapshot_term = snap.term,
                    "snapshot is of a later term than the hard state; adopting it"
                );
                (snap.term, None)
            }
            _ => (hs.term, hs.vote),
        };
        if log.last_term() > term {
            return Err(ConfigError::InconsistentState(format!(
                "the log holds term {} but the hard state's term is {}",
                log.last_term(),
                hs.term
            )));
        }
        if let Some(damage) = state.damage {
            tracing::warn!(
                group = config.group,
                id = config.id,
                from = damage.from,
                last_before = ?damage.last,
                last_index = state.last_index,
                "starting with a damaged log: repairing it from the leader, not voting until then"
            );
        }
        let mut rng = Rng::new(config.seed ^ config.id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let randomized_election_ticks =
            config.election_ticks + rng.below(config.election_ticks as u64) as u32;
        // Its own generator, so the election timeouts a seed picks stay what they were.
        let read_start = Rng::new(config.seed ^ 0x5EAD_F0A2_u64.wrapping_mul(config.id)).next_u64();
        let forwarded = read::ForwardedReads::starting_at(read_start >> 2);
        let repair = repair::Repair::new(state.damage, config.election_ticks);
        // A node that voted for itself in its term and holds entries of that term most likely
        // led it before it restarted. Its followers still take it for their leader (they grant
        // it at once, see `step`), and while its group sleeps nobody else counts down: it
        // campaigns at its first tick instead of waiting out a whole election timeout.
        let led_before = term > 0 && vote == Some(config.id) && log.last_term() == term;
        let election_elapsed = if led_before { randomized_election_ticks - 1 } else { 0 };
        let emitted_hard_state =
            HardState { term: hs.term, vote: hs.vote, commit: log.committed() };
        let raft = Raft {
            id: config.id,
            group: config.group,
            cfg: config,
            #[cfg(feature = "sim")]
            faults: crate::sim::Faults::default(),
            configs,
            config: quorum,
            removed: false,
            term,
            vote,
            log,
            role: Role::Follower { leader: None },
            election_elapsed,
            randomized_election_ticks,
            rng,
            // The first Ready carries the configuration, so a transport learns the members'
            // addresses after a restart too.
            out: Outbox { membership_changed: true, ..Outbox::default() },
            emitted_hard_state,
            next_ready_number: 1,
            apply_fetch: ApplyFetch::Idle,
            snapshot: state.snapshot,
            snapshot_taking: SnapshotTaking::Idle,
            snapshot_failures: 0,
            snapshot_damaged: false,
            applied_bytes_since_snapshot: 0,
            receiving: None,
            ticks: 0,
            forwarded,
            repair,
            stall: stall::Stall::default(),
            sleep: hibernate::Sleep::default(),
        };
        raft.debug_check();
        Ok(raft)
    }

    // ----- inputs -----

    /// Advances logical time by one tick: drives election timeouts, heartbeats and check-quorum.
    pub fn tick(&mut self) {
        #[cfg(any(debug_assertions, feature = "sim"))]
        let before = self.quiet_probe();
        self.tick_once();
        #[cfg(any(debug_assertions, feature = "sim"))]
        self.check_quiet_tick(before);
    }

    /// One tick (see [`Raft::tick`]).
    fn tick_once(&mut self) {
        self.apply_fetch = match self.apply_fetch {
            // A failed read is retried at the next tick rather than in a tight loop; one whose
            // answer never came is asked again after an election timeout (a late answer to the
            // first is recognised as stale).
            ApplyFetch::Failed => ApplyFetch::Idle,
            ApplyFetch::InFlight { ticks } if ticks + 1 >= self.cfg.election_ticks => {
                ApplyFetch::Idle
            }
            ApplyFetch::InFlight { ticks } => ApplyFetch::InFlight { ticks: ticks + 1 },
            ApplyFetch::Idle => ApplyFetch::Idle,
        };
        if let SnapshotTaking::Failed { wait } = self.snapshot_taking {
            self.snapshot_taking = match wait {
                0 => SnapshotTaking::Idle,
                _ => SnapshotTaking::Failed { wait: wait - 1 },
            };
        }
        self.ticks += 1;
        if self.sleep.asleep {
            return; // Hibernating: nothing is due until something wakes the group.
        }
        if matches!(self.role, Role::Leader(_)) {
            self.tick_leader();
            self.tick_hibernate();
        } else {
            self.tick_reads();
            self.tick_election();
        }
        self.tick_repair();
        self.tick_stall();
        self.debug_check();
    }

    /// Handles a message from a peer. Errors mean the message was dropped and changed nothing;
    /// they come from bad input, never from this node's state.
    pub fn step(&mut self, msg: Message) -> Result<(), StepError> {
        self.validate(&msg)?;
        if self.sleep.asleep && self.wakes(msg.from, &msg.body) {
            self.wake_for("message");
        }
        let result = self.step_validated(msg);
        self.debug_check();
        result
    }

    /// Proposes a command. On the leader, appends it and returns its position: the command is
    /// applied at that index if an entry with this term commits there; any other entry at that
    /// index means it was lost (a new leader overwrote it) and may be retried.
    pub fn propose(&mut self, data: Bytes) -> Result<EntryId, ProposeError> {
        if self.is_leader() {
            self.wake_for("proposal");
        }
        let term = self.term;
        let leader_hint = self.leader();
        let Role::Leader(leader) = &mut self.role else {
            return Err(ProposeError::NotLeader { leader: leader_hint });
        };
        if let Some(t) = leader.transfer {
            return Err(ProposeError::Transferring { to: t.to });
        }
        if !self.config.incoming.contains(self.id) {
            return Err(ProposeError::Leaving);
        }
        let size = data.len() as u64 + Entry::OVERHEAD_BYTES;
        if leader.uncommitted_bytes > 0
            && leader.uncommitted_bytes + size > self.cfg.uncommitted_bytes_max
        {
            return Err(ProposeError::Backpressure {
                uncommitted_bytes: leader.uncommitted_bytes,
                limit_bytes: self.cfg.uncommitted_bytes_max,
            });
        }
        leader.uncommitted_bytes += size;
        leader.replicate_pending = true;
        let index = self.log.append_new(term, EntryKind::Normal, data);
        Ok(EntryId { index, term })
    }

    /// The caller made the writes of every Ready up to `ready_number` durable. Stale or repeated
    /// acknowledgements are harmless.
    pub fn on_persisted(&mut self, ready_number: u64) {
        if self.log.on_persisted(ready_number) && matches!(self.role, Role::Leader(_)) {
            self.maybe_commit();
        }
        self.debug_check();
    }

    /// The answer to a [`FetchRequest`] from an earlier Ready. Entries that no longer match the
    /// log (it was truncated meanwhile) or arrive after the purpose lapsed are ignored; the core
    /// asks again when it still needs them.
    pub fn on_fetched(&mut self, request: FetchRequest, result: Result<Vec<Entry>, StorageError>) {
        let entries = match result {
            Ok(entries) => entries,
            Err(err) => {
                tracing::warn!(group = self.group, id = self.id, ?request, %err, "log fetch failed");
                if let FetchPurpose::Replicate { to, term } = request.purpose {
                    if let Some(p) = self.progress_mut_in_term(to, term) {
                        p.fetching = false;
                    }
                }
                if request.purpose == FetchPurpose::Apply {
                    self.apply_fetch = ApplyFetch::Failed;
                }
                if let StorageError::Damaged { index, .. } = err {
                    self.report_damage(index);
                }
                self.debug_check();
                return;
            }
        };
        match request.purpose {
            FetchPurpose::Apply => {
                self.apply_fetch = ApplyFetch::Idle;
                let expected = self.log.applying() + 1;
                let fits = entries.first().is_some_and(|e| e.index == expected)
                    && entries.windows(2).all(|w| w[1].index == w[0].index + 1)
                    && entries.last().is_some_and(|e| e.index <= self.log.committed())
                    && self.log.matches(&entries)
                    && self.out.fetched_apply.is_empty();
                if fits {
                    self.out.fetched_apply = entries.into();
                }
            }
            FetchPurpose::Replicate { to, term } => self.send_fetched(to, term, entries),
            FetchPurpose::Repair { to } => self.send_repair(to, entries),
        }
        self.debug_check();
    }

    // ----- output -----

    /// Whether [`ready`](Raft::ready) has anything for the caller.
    pub fn has_ready(&self) -> bool {
        let out = &self.out;
        !out.messages.is_empty()
            || !out.persisted_messages.is_empty()
            || !out.fetches.is_empty()
            || !out.fetched_apply.is_empty()
            || out.compact.is_some()
            || out.restore_snapshot.is_some()
            || !out.snapshot_reads.is_empty()
            || !out.snapshot_chunks.is_empty()
            || !out.reads.is_empty()
            || out.membership_changed
            || out.repaired
            || self.reads_to_flush()
            || self.snapshot_due()
            || self.hard_state() != self.emitted_hard_state
            || self.log.has_unhanded()
            || (self.log.has_applicable() && self.apply_fetch == ApplyFetch::Idle)
            || matches!(&self.role, Role::Leader(l) if l.replicate_pending)
    }

    /// Gathers everything the caller must do now. See [`ready`](crate::ready) for the contract.
    pub fn ready(&mut self) -> Ready {
        if matches!(&self.role, Role::Leader(l) if l.replicate_pending) {
            self.flush_appends();
        }
        self.flush_reads();
        let number = self.next_ready_number;
        self.next_ready_number += 1;
        let hard_state = self.hard_state();
        let hard_state = (hard_state != self.emitted_hard_state).then(|| {
            self.emitted_hard_state = hard_state;
            hard_state
        });
        let entries = self.log.take_unpersisted(number);
        // A leader keeps what its followers have not acknowledged yet (within the budget);
        // other roles keep nothing they no longer need.
        let keep_from = match &self.role {
            Role::Leader(l) => {
                l.progress.iter().map(|p| p.match_index + 1).min().unwrap_or(Index::MAX)
            }
            _ => Index::MAX,
        };
        let committed_entries = self.take_committed(keep_from);
        let applied_bytes = committed_entries.iter().map(Entry::size_bytes).sum();
        let snapshot_request = self.maybe_request_snapshot(applied_bytes);
        self.fold_configs();
        let membership =
            std::mem::take(&mut self.out.membership_changed).then(|| self.membership().clone());
        self.log.evict(keep_from, self.cfg.log_cache_bytes_max);
        let out = &mut self.out;
        let ready = Ready {
            number,
            group: self.group,
            hard_state,
            entries,
            messages: std::mem::take(&mut out.messages),
            persisted_messages: std::mem::take(&mut out.persisted_messages),
            committed_entries,
            fetches: std::mem::take(&mut out.fetches),
            compact: out.compact.take(),
            restore_snapshot: out.restore_snapshot.take(),
            snapshot_request,
            snapshot_reads: std::mem::take(&mut out.snapshot_reads),
            snapshot_chunks: std::mem::take(&mut out.snapshot_chunks),
            reads: std::mem::take(&mut out.reads),
            membership,
            repaired: std::mem::take(&mut out.repaired),
        };
        self.debug_check();
        ready
    }

    /// Whether a snapshot should be asked for now: none is being taken, the entries or bytes
    /// applied since the last one passed a threshold, and the log since the last one is large
    /// enough next to it (`snapshot_log_ratio_pct`).
    fn snapshot_due(&self) -> bool {
        if self.snapshot_taking != SnapshotTaking::Idle {
            return false;
        }
        let applied = self.log.applying();
        let since = self.snapshot.as_ref().map_or(0, |s| s.index);
        if (self.applied_damage_pending() && applied > since) || self.snapshot_damaged {
            return true;
        }
        let log_large_enough = self.snapshot.as_ref().is_none_or(|s| {
            self.applied_bytes_since_snapshot.saturating_mul(100)
                >= s.size.saturating_mul(self.cfg.snapshot_log_ratio_pct)
        });
        applied > since.max(self.log.base_index())
            && log_large_enough
            && ((self.cfg.snapshot_entries > 0 && applied - since >= self.cfg.snapshot_entries)
                || (self.cfg.snapshot_bytes > 0
                    && self.applied_bytes_since_snapshot >= self.cfg.snapshot_bytes))
    }

    fn take_committed(&mut self, keep_from: Index) -> Vec<Entry> {
        if !self.out.fetched_apply.is_empty() {
            let mut entries = Vec::new();
            let mut bytes = 0;
            while let Some(entry) = self.out.fetched_apply.front() {
                bytes += entry.size_bytes();
                if bytes > self.cfg.apply_bytes_max && !entries.is_empty() {
                    break;
                }
                entries.extend(self.out.fetched_apply.pop_front());
            }
            if let Some(last) = entries.last() {
                self.log.advance_applying(last.index);
            }
            return entries;
        }
        if self.apply_fetch != ApplyFetch::Idle {
            return Vec::new();
        }
        match self.log.take_applicable(self.cfg.apply_bytes_max, keep_from) {
            Slice::Cached(entries, _) => entries,
            Slice::Empty => Vec::new(),
            Slice::Fetch { lo, hi } => {
                self.apply_fetch = ApplyFetch::InFlight { ticks: 0 };
                // Read in large chunks even when apply batches are small: replaying a log after
                // a restart should not pay a store round trip per entry.
                self.out.fetches.push(FetchRequest {
                    group: self.group,
                    purpose: FetchPurpose::Apply,
                    lo,
                    hi,
                    max_bytes: self.cfg.apply_bytes_max.max(APPLY_FETCH_BYTES_MIN),
                });
                Vec::new()
            }
        }
    }

    // ----- queries -----

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// This node's group.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// The current role.
    pub fn role(&self) -> RoleKind {
        match self.role {
            Role::Follower { .. } => RoleKind::Follower,
            Role::PreCandidate(_) => RoleKind::PreCandidate,
            Role::Candidate(_) => RoleKind::Candidate,
            Role::Leader(_) => RoleKind::Leader,
        }
    }

    /// Whether this node leads its group.
    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader(_))
    }

    /// The leader this node knows of in its term (itself when leader).
    pub fn leader(&self) -> Option<NodeId> {
        match self.role {
            Role::Follower { leader } => leader,
            Role::Leader(_) => Some(self.id),
            Role::PreCandidate(_) | Role::Candidate(_) => None,
        }
    }

    /// The highest committed index this node knows.
    pub fn commit_index(&self) -> Index {
        self.log.committed()
    }

    /// The first index of this node's log (entries before it are compacted into a snapshot).
    pub fn first_index(&self) -> Index {
        self.log.first_index()
    }

    /// The last index of this node's log.
    pub fn last_index(&self) -> Index {
        self.log.last_index()
    }

    /// The highest index handed to the state machine.
    pub fn applied_index(&self) -> Index {
        self.log.applying()
    }

    /// The term of the entry at `index`, if this node's log holds it.
    pub fn term_at(&self, index: Index) -> Option<Term> {
        self.log.term(index)
    }

    /// The voting members (during a change, of the configuration being entered), sorted.
    pub fn voters(&self) -> &[NodeId] {
        self.config.incoming.voters()
    }

    /// The learners (members that receive the log but do not vote), sorted.
    pub fn learners(&self) -> &[NodeId] {
        &self.configs.current().learners
    }

    /// Whether this node is a learner: it never campaigns.
    pub fn is_learner(&self) -> bool {
        self.configs.current().is_learner(self.id)
    }

    /// The term runs of this node's log: `(first index, term)` pairs covering every entry.
    pub fn term_runs(&self) -> &[(Index, Term)] {
        self.log.term_runs()
    }

    /// Term, vote and commit index as they would be persisted now.
    pub fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote, commit: self.log.committed() }
    }

    /// A full status report.
    pub fn status(&self) -> Status {
        let progress = match &self.role {
            Role::Leader(l) => l.progress.iter().map(PeerProgress::from).collect(),
            _ => Vec::new(),
        };
        Status {
            id: self.id,
            group: self.group,
            role: self.role(),
            term: self.term,
            vote: self.vote,
            leader: self.leader(),
            first_index: self.log.first_index(),
            last_index: self.log.last_index(),
            last_term: self.log.last_term(),
            persisted_index: self.log.persisted(),
            commit_index: self.log.committed(),
            applied_index: self.log.applying(),
            cached_entries: self.log.cached_entries(),
            cached_bytes: self.log.cache_bytes(),
            snapshot_index: self.snapshot.as_ref().map_or(0, |s| s.index),
            progress,
            lease_remaining_ticks: self.lease_remaining_ticks(),
            transfer_target: self.transfer_target(),
            voters: self.voters().to_vec(),
            learners: self.learners().to_vec(),
            membership: self.configs.current().clone(),
            membership_index: self.configs.current_index(),
            removed: self.removed,
            health: self.health(),
            storage_stalled: self.storage_stalled(),
            asleep: self.is_asleep(),
        }
    }

    // ----- internals shared by the role modules -----

    /// Every other voter (whom elections ask).
    fn peers(&self) -> Vec<NodeId> {
        let id = self.id;
        self.config.voters().into_iter().filter(|&v| v != id).collect()
    }

    /// Every other member, voter or learner (whom the leader replicates to).
    fn members_but_me(&self) -> Vec<NodeId> {
        let id = self.id;
        self.configs.current().members().into_iter().filter(|&m| m != id).collect()
    }

    /// Whether this node alone makes a quorum (a group of one): its own vote wins an election
    /// and its own durable write commits.
    fn alone_is_quorum(&self) -> bool {
        let id = self.id;
        self.config.vote_result(|v| Some(v == id)) == VoteResult::Won
    }

    fn send(&mut self, to: NodeId, body: MessageBody) {
        let msg = Message { group: self.group, from: self.id, to, term: self.term, body };
        self.out.messages.push(msg);
    }

    /// Sends `body` once this node's pending writes are durable (votes, acknowledgements).
    fn send_after_persist(&mut self, to: NodeId, body: MessageBody) {
        let msg = Message { group: self.group, from: self.id, to, term: self.term, body };
        self.out.persisted_messages.push(msg);
    }

    fn progress_mut_in_term(&mut self, to: NodeId, term: Term) -> Option<&mut Progress> {
        if term != self.term {
            return None;
        }
        match &mut self.role {
            Role::Leader(l) => l.progress.iter_mut().find(|p| p.id == to),
            _ => None,
        }
    }

    fn reset_election_timer(&mut self) {
        // A new role or a new timer ends any sleep.
        self.sleep = hibernate::Sleep::default();
        self.election_elapsed = 0;
        self.randomized_election_ticks =
            self.cfg.election_ticks + self.rng.below(self.cfg.election_ticks as u64) as u32;
    }

    /// Checks the node's invariants in debug builds; panics naming the one that broke.
    fn debug_check(&self) {
        if cfg!(debug_assertions) {
            self.check_invariants();
        }
    }

    /// Injects simulator faults into this node's algorithm.
    #[cfg(feature = "sim")]
    pub(crate) fn set_faults(&mut self, faults: crate::sim::Faults) {
        self.faults = faults;
    }

    /// Checks every invariant of this node's state; panics naming the one that broke. Runs
    /// after every input in debug builds; the simulator also calls it.
    pub fn check_invariants(&self) {
        self.log.check_invariants();
        self.check_read_invariants();
        assert!(
            self.log.last_term() <= self.term,
            "log term {} is above the node's term {}",
            self.log.last_term(),
            self.term
        );
        match &self.role {
            Role::Leader(l) => {
                assert_eq!(self.vote, Some(self.id), "a leader must have voted for itself");
                for p in &l.progress {
                    assert!(
                        p.match_index < p.next_index,
                        "peer {}: match {} >= next {}",
                        p.id,
                        p.match_index,
                        p.next_index
                    );
                    assert!(
                        p.match_index <= self.log.last_index(),
                        "peer {}: match {} is past the leader's last index {}",
                        p.id,
                        p.match_index,
                        self.log.last_index()
                    );
                }
            }
            Role::Candidate(v) => {
                assert_eq!(self.vote, Some(self.id), "a candidate must have voted for itself");
                assert!(v.granted.contains(&self.id), "a candidate counts its own vote");
            }
            Role::PreCandidate(_) | Role::Follower { .. } => {}
        }
    }
}

//! Per-node settings of one Raft group, validated before a node starts.

use crate::error::ConfigError;
use crate::types::{GroupId, NodeId};

/// Settings of one node in one group. Every limit is named with its unit last.
///
/// New settings come with new releases, so a `Config` is made with [`Config::new`] (or
/// `default`) and then adjusted field by field:
///
/// ```
/// use raft_core::Config;
/// let mut config = Config::new(1);
/// config.pre_vote = false;
/// config.validate().expect("valid");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// This node's id.
    pub id: NodeId,
    /// The group this node instance belongs to.
    pub group: GroupId,
    /// Ticks a follower waits without hearing from a leader before it campaigns. The actual
    /// timeout is drawn uniformly from `[election_ticks, 2 * election_ticks)` after every
    /// reset, so that nodes rarely time out together (Raft §5.2).
    pub election_ticks: u32,
    /// Ticks between a leader's heartbeats. Must be smaller than `election_ticks`.
    pub heartbeat_ticks: u32,
    /// Run a pre-vote round before incrementing the term (Raft thesis §9.6), so a node that
    /// was partitioned away cannot disrupt a healthy leader when it returns.
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum within an election timeout steps down
    /// (Raft thesis §6.2), and voters ignore vote requests while they hear from a leader.
    pub check_quorum: bool,
    /// Let the leader serve reads from its lease, without a round of heartbeats per read (Raft
    /// thesis §6.4.1). Off by default. Needs `check_quorum`, and must be set on every node of
    /// the group: the followers keep the lease's promise (they refuse to vote for another
    /// candidate while they hear from the leader, and for an election timeout after they
    /// restart).
    ///
    /// The lease starts when a heartbeat round that a quorum answered was *sent* and lasts
    /// `election_ticks - 1 - max_clock_drift_ticks` of the leader's ticks. It is safe as long
    /// as, over any stretch of one election timeout, no node's ticks run more than
    /// `max_clock_drift_ticks` ahead of the leader's (a follower whose clock runs fast would
    /// stop honouring the lease early), and no node stalls between checking the lease and
    /// serving the read for longer than the slack left. Real clocks drift by parts per million;
    /// what breaks a lease in practice is a paused process or a virtual machine's stolen time,
    /// which is what the drift allowance must cover.
    pub lease_reads: bool,
    /// How many ticks, over one election timeout, another node's clock may run ahead of this
    /// one's (see `lease_reads`). Only used for lease reads.
    pub max_clock_drift_ticks: u32,
    /// Most entries in one append message.
    pub append_entries_max: usize,
    /// Most entry bytes in one append message (at least one entry is always sent).
    pub append_bytes_max: u64,
    /// Most append messages in flight to one follower while replicating optimistically.
    pub inflight_msgs_max: usize,
    /// Most entry bytes in flight to one follower.
    pub inflight_bytes_max: u64,
    /// Most entry bytes handed to the state machine in one [`Ready`](crate::Ready).
    pub apply_bytes_max: u64,
    /// Most bytes of proposed entries not yet committed; proposals beyond it are refused with
    /// [`ProposeError::Backpressure`](crate::ProposeError::Backpressure).
    pub uncommitted_bytes_max: u64,
    /// Most bytes of entries a leader keeps in memory for followers that lag, so catching them
    /// up does not read the log store. Entries every follower holds are dropped at once, and
    /// entries not yet durable or not yet applied are kept whatever this says; zero serves every
    /// lagging follower from the store.
    pub log_cache_bytes_max: u64,
    /// Ask for a snapshot once this many entries were applied since the last one (0: never by
    /// count).
    pub snapshot_entries: u64,
    /// Ask for a snapshot once this many bytes of entries were applied since the last one (0:
    /// never by size).
    pub snapshot_bytes: u64,
    /// Ask for a snapshot (by count or by size) only once the bytes of entries applied since the
    /// last snapshot reach this percentage of that snapshot's size (0: no such floor). A large
    /// state is then snapshotted less often than a small one, so that writing snapshots costs
    /// the disk at most `100 / snapshot_log_ratio_pct` times what writing the log does: with
    /// 100, a snapshot is taken once the log since the last one is as large as it.
    pub snapshot_log_ratio_pct: u64,
    /// After a snapshot at index `i`, compact the log through `i - log_keep_entries` only, so
    /// followers that lag by fewer entries catch up from the log rather than by a snapshot.
    pub log_keep_entries: u64,
    /// Most bytes of snapshot data in one InstallSnapshot message.
    pub snapshot_chunk_bytes: u64,
    /// A learner is promoted to voter only while it holds all but at most this many of the
    /// leader's entries ([`MembershipError::LearnerBehind`](crate::MembershipError::LearnerBehind)
    /// otherwise): a voter that must first catch up would leave the group one vote short.
    pub promote_max_lag: u64,
    /// Hibernation: a leader whose group has been idle this many ticks (every member holds
    /// every entry, all committed and applied, nothing in flight) tells its followers to sleep
    /// and stops its heartbeats; sleeping followers stop counting down to an election. Any
    /// proposal, read or message wakes the group; a runtime wakes the followers of a leader it
    /// finds down ([`Raft::wake`](crate::Raft::wake)). 0 (the default) never hibernates.
    pub hibernate_ticks: u32,
    /// Seed of the node's private random generator (election timeouts, and the numbering of
    /// reads forwarded to the leader). Deterministic simulation depends on it; a real
    /// deployment should draw a new one from the OS for every start of a node (the node driver
    /// does, when it is 0): a late answer to a read forwarded before a restart is told apart
    /// from the new incarnation's by it.
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            id: 1,
            group: 0,
            election_ticks: 10,
            heartbeat_ticks: 2,
            pre_vote: true,
            check_quorum: true,
            lease_reads: false,
            max_clock_drift_ticks: 2,
            append_entries_max: 1024,
            append_bytes_max: 1 << 20,
            inflight_msgs_max: 64,
            inflight_bytes_max: 32 << 20,
            apply_bytes_max: 16 << 20,
            uncommitted_bytes_max: 256 << 20,
            log_cache_bytes_max: 64 << 20,
            snapshot_entries: 0,
            snapshot_bytes: 64 << 20,
            snapshot_log_ratio_pct: 0,
            log_keep_entries: 1024,
            snapshot_chunk_bytes: 1 << 20,
            promote_max_lag: 1000,
            hibernate_ticks: 0,
            seed: 0,
        }
    }
}

impl Config {
    /// The default settings for node `id`.
    pub fn new(id: NodeId) -> Config {
        Config { id, ..Config::default() }
    }

    /// How many of its own ticks a leader's lease lasts after the heartbeat round that renewed
    /// it was sent: an election timeout, less one tick (a follower's first tick after hearing
    /// the leader may come at once), less the allowed clock drift. Zero when that leaves
    /// nothing.
    pub fn lease_ticks(&self) -> u32 {
        self.election_ticks.saturating_sub(1).saturating_sub(self.max_clock_drift_ticks)
    }

    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError::ZeroNodeId);
        }
        if self.heartbeat_ticks == 0 {
            return Err(ConfigError::ZeroHeartbeat);
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return Err(ConfigError::ElectionNotAboveHeartbeat {
                election_ticks: self.election_ticks,
                heartbeat_ticks: self.heartbeat_ticks,
            });
        }
        if self.lease_reads {
            if !self.check_quorum {
                return Err(ConfigError::LeaseWithoutCheckQuorum);
            }
            if self.lease_ticks() == 0 {
                return Err(ConfigError::LeaseTooShort {
                    election_ticks: self.election_ticks,
                    max_clock_drift_ticks: self.max_clock_drift_ticks,
                });
            }
        }
        let limits: [(&'static str, u64); 7] = [
            ("append_entries_max", self.append_entries_max as u64),
            ("append_bytes_max", self.append_bytes_max),
            ("inflight_msgs_max", self.inflight_msgs_max as u64),
            ("inflight_bytes_max", self.inflight_bytes_max),
            ("apply_bytes_max", self.apply_bytes_max),
            ("uncommitted_bytes_max", self.uncommitted_bytes_max),
            ("snapshot_chunk_bytes", self.snapshot_chunk_bytes),
        ];
        for (name, value) in limits {
            if value == 0 {
                return Err(ConfigError::ZeroLimit { name });
            }
        }
        Ok(())
    }
}

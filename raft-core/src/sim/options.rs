//! The simulator's settings and what it reports: network faults, disk latencies, cluster
//! options, errors and counters.

use std::collections::BTreeMap;

use super::checks::Violation;
use crate::node::ReadMode;
use crate::types::NodeId;
use crate::Config;

/// How the network misbehaves.
#[derive(Clone, Debug, PartialEq)]
pub struct NetFaults {
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Shortest one-way delay.
    pub delay_min_us: u64,
    /// Longest usual one-way delay; random delays reorder messages.
    pub delay_max_us: u64,
    /// Probability that a message is held back much longer.
    pub long_delay: f64,
    /// Longest such delay.
    pub long_delay_max_us: u64,
}

impl NetFaults {
    /// A network that delivers everything once, quickly and in order per link.
    pub fn reliable() -> NetFaults {
        NetFaults {
            loss: 0.0,
            duplicate: 0.0,
            delay_min_us: 100,
            delay_max_us: 100,
            long_delay: 0.0,
            long_delay_max_us: 0,
        }
    }

    /// A network that loses, duplicates and reorders (the 6.824 "unreliable" network).
    pub fn unreliable() -> NetFaults {
        NetFaults {
            loss: 0.1,
            duplicate: 0.05,
            delay_min_us: 100,
            delay_max_us: 5_000,
            long_delay: 0.02,
            long_delay_max_us: 300_000,
        }
    }
}

impl Default for NetFaults {
    fn default() -> NetFaults {
        NetFaults {
            loss: 0.0,
            duplicate: 0.0,
            delay_min_us: 100,
            delay_max_us: 2_000,
            long_delay: 0.0,
            long_delay_max_us: 0,
        }
    }
}

/// How long each node's disk takes to make a write durable.
#[derive(Clone, Debug, PartialEq)]
pub struct DiskModel {
    /// Shortest write-to-durable latency.
    pub latency_min_us: u64,
    /// Longest usual latency.
    pub latency_max_us: u64,
    /// Probability that a write is slow (a stalled disk).
    pub slow: f64,
    /// Longest slow latency.
    pub slow_max_us: u64,
}

impl Default for DiskModel {
    fn default() -> DiskModel {
        DiskModel { latency_min_us: 50, latency_max_us: 1_000, slow: 0.0, slow_max_us: 0 }
    }
}

/// Settings of a simulated cluster.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Number of nodes (ids `1..=nodes`).
    pub nodes: usize,
    /// The seed every random choice comes from.
    pub seed: u64,
    /// The Raft settings of every node (`id` and `seed` are set per node).
    pub raft: Config,
    /// Virtual microseconds per tick.
    pub tick_us: u64,
    /// Each node's clock runs up to this many percent fast or slow.
    pub clock_drift_pct: u64,
    /// Network faults.
    pub net: NetFaults,
    /// Disk latencies.
    pub disk: DiskModel,
    /// Longest time a log fetch takes.
    pub fetch_delay_max_us: u64,
    /// Run every node's own invariant check after each event it handles.
    pub check_node_invariants: bool,
    /// Nodes (of `1..=nodes`) that are learners: they receive the log and serve reads but
    /// neither vote nor count; the others are the voters.
    pub learners: Vec<NodeId>,
    /// How many nodes (`1..=initial_members`) form the group's first configuration; the others
    /// start empty, waiting to be added ([`Cluster::propose_membership`](super::Cluster::propose_membership)). 0: all of them.
    pub initial_members: usize,
    /// How clients' read-only operations are served: confirmed by the core
    /// ([`ReadMode::Index`], on leaders and followers), from the leader's lease
    /// ([`ReadMode::Lease`], which turns on `lease_reads` on every node), or through the log.
    pub read_mode: ReadMode,
    /// Chance per tick that the modelled liveness check wakes a sleeping follower whose leader
    /// is fine (a false suspicion; see [`Config::hibernate_ticks`](crate::Config::hibernate_ticks)).
    pub false_wake: f64,
    /// Nodes hold back the ticks their core calls quiet ([`Raft::quiet_ticks`](crate::Raft::quiet_ticks))
    /// and take them before their next input, as a node on a
    /// [`Runtime`](crate::node::Runtime) does.
    pub defer_quiet_ticks: bool,
    /// Nodes hold back the acknowledgement of a write made durable while their core says
    /// nothing waits for it ([`Raft::persist_acks_matter`](crate::Raft::persist_acks_matter))
    /// and take it after their owed ticks, before their next input or Ready, as the node
    /// driver does. Taking one must not move the commit index (checked).
    pub defer_persist_acks: bool,
}

impl Default for SimOptions {
    fn default() -> SimOptions {
        SimOptions {
            nodes: 3,
            seed: 0,
            raft: Config { election_ticks: 10, heartbeat_ticks: 2, ..Config::default() },
            tick_us: 10_000,
            clock_drift_pct: 0,
            net: NetFaults::default(),
            disk: DiskModel::default(),
            fetch_delay_max_us: 500,
            check_node_invariants: true,
            learners: Vec::new(),
            initial_members: 0,
            read_mode: ReadMode::Index,
            false_wake: 0.0,
            defer_quiet_ticks: false,
            defer_persist_acks: false,
        }
    }
}

/// A safety violation (or a protocol error) found during a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimError {
    /// Virtual time of the failing event.
    pub time_us: u64,
    /// What broke.
    pub violation: Violation,
}

impl std::fmt::Display for SimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at {} us: {}", self.time_us, self.violation)
    }
}

impl std::error::Error for SimError {}

/// Counters of what happened during a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Messages the nodes sent, by kind.
    pub sent: BTreeMap<&'static str, u64>,
    /// Messages delivered to a live node.
    pub delivered: u64,
    /// Messages lost (fault, partition, or a down receiver).
    pub dropped: u64,
    /// Node crashes.
    pub crashes: u64,
    /// Storage faults injected (logs damaged at a restart, entries corrupted while running).
    pub storage_faults: u64,
    /// Times a node's disk was filled (its writes held until it had room again).
    pub disk_full: u64,
    /// Ticks a node slept through (hibernation).
    pub asleep_ticks: u64,
    /// Ticks held back because the core called them quiet
    /// ([`SimOptions::defer_quiet_ticks`]).
    pub deferred_ticks: u64,
    /// Acknowledgements of durable writes held back because nothing waited for them
    /// ([`SimOptions::defer_persist_acks`]).
    pub deferred_acks: u64,
    /// Sleeping followers woken by the modelled liveness check.
    pub liveness_wakes: u64,
    /// Disk writes.
    pub disk_writes: u64,
    /// Log fetches served.
    pub fetches: u64,
    /// Snapshots taken by nodes of their own state machines.
    pub snapshots_taken: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Snapshot chunks written by receivers.
    pub snapshot_chunks: u64,
    /// The longest log (entries held by a store) seen on any node.
    pub max_log_len: u64,
    /// Client operations that completed with an answer.
    pub ops_completed: u64,
    /// Client operations abandoned after a timeout (outcome unknown).
    pub ops_timed_out: u64,
    /// Client operations sent again after a timeout (workloads that deduplicate).
    pub ops_retried: u64,
    /// Reads served without the log (ReadIndex, lease or follower reads).
    pub reads_served: u64,
    /// Of those, reads served by a follower.
    pub follower_reads: u64,
    /// Leadership transfers asked for.
    pub transfers: u64,
    /// Membership changes proposed (and accepted by a leader).
    pub membership_changes: u64,
    /// Messages dropped because their sender is not a member of the receiver's group (late
    /// messages from removed nodes).
    pub from_non_members: u64,
}

impl SimStats {
    /// All messages sent.
    pub fn messages_sent(&self) -> u64 {
        self.sent.values().sum()
    }
}

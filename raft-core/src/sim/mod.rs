//! A deterministic simulator of whole Raft clusters (feature `sim`), for raft-core's own tests
//! and for users' state machines and log stores.
//!
//! [`Cluster`] runs N nodes over a simulated network and simulated disks in virtual time, with
//! every random choice drawn from one seed: message loss, duplication, delay and reordering,
//! symmetric and asymmetric partitions, crashes that lose every write not yet durable, slow
//! disks and clock drift. Each node carries out its Readies with the same
//! [`Executor`](crate::execute::Executor) and [`LogWriter`](crate::execute::LogWriter) the node
//! driver uses, so what the simulator checks is the path users run. After every event it checks
//! the Raft safety properties ([`checks`]) and the durability of every acknowledgement against
//! its own model of each disk; clients run a [`Workload`] whose history
//! [`linearizability::check_history`] verifies against the workload's sequential model at the
//! end. [`chaos::run_seed_with`] puts it all together as one randomized scenario per seed.
//!
//! The state machine is the user's: [`workload`] says how to run your own (a [`Workload`]: the
//! machine, its operations, its model, and an invariant checked after every applied entry).
//! Two come with the simulator: a key-value map ([`kv`], the default) and a bank whose
//! transfers must conserve its total ([`bank`]). Users can also plug their own log store in
//! ([`Cluster::with_workload`] with a [`CrashableStore`]) to check that it keeps exactly what
//! it promised across crashes. Faults in the algorithm itself, which prove the checks work,
//! are injected with [`Cluster::set_faults`].
//!
//! | module | what it holds |
//! |---|---|
//! | `cluster` | [`Cluster`]: the event queue, nodes, network delivery, observation |
//! | `faults` | link cuts, partitions, crashes, wiped disks, restarts |
//! | `node_io` | how a simulated node carries out a Ready (the simulator's `ReadyHandler`) |
//! | `clients` | the clients: requests, retries, timeouts, the recorded history |
//! | `durable` | the model of each node's durable log that acknowledgements and recoveries are checked against |
//! | `options` | [`SimOptions`], [`NetFaults`], [`DiskModel`], [`SimError`], [`SimStats`] |
//! | [`workload`], [`kv`], [`bank`] | the workload trait and the two example machines |
//! | [`checks`], [`linearizability`], [`chaos`] | safety checks, the history checker, the scenario |

pub mod bank;
pub mod chaos;
pub mod checks;
mod clients;
mod cluster;
mod durable;
mod faults;
pub mod groups;
pub mod kv;
pub mod linearizability;
mod node_io;
mod options;
mod views;
pub mod workload;

pub use clients::WorkloadOptions;
pub use cluster::Cluster;
pub use options::{DiskModel, NetFaults, SimError, SimOptions, SimStats};
pub use workload::Workload;

use crate::error::StorageError;
use crate::storage::LogStore;
use crate::MemLogStore;

/// A log store the simulator can crash: a power loss drops every write not yet made durable
/// by [`LogStore::sync`], and the store then looks as it would after a reopen.
pub trait CrashableStore: LogStore {
    /// Loses everything not yet durable, then recovers as a restart would.
    fn power_loss(&mut self) -> Result<(), StorageError>;

    /// Loses everything: the node comes back on a new, empty disk.
    fn wipe(&mut self) -> Result<(), StorageError>;

    /// Damages the stopped node's log of `group` from entry `from` on, as a reopen that found
    /// the entry failing its checksum would leave it: the log ends before `from` and
    /// [`LogStore::damage`] says so. Returns false if the store cannot simulate that (the
    /// default).
    fn damage_log(&mut self, group: crate::GroupId, from: crate::Index) -> bool {
        let _ = (group, from);
        false
    }

    /// Flips bits in entry `index` of `group` on a running node: reads of it fail with
    /// [`StorageError::Damaged`], and a crash then finds it as [`damage_log`](Self::damage_log) would.
    /// Returns false if the store cannot simulate that (the default).
    fn corrupt_entry(&mut self, group: crate::GroupId, index: crate::Index) -> bool {
        let _ = (group, index);
        false
    }

    /// Records that the node lost all of `group`'s log (its disk was replaced): a node started
    /// from it does not vote until it has caught up with a leader. Returns false if the store
    /// cannot (the default).
    fn mark_all_lost(&mut self, group: crate::GroupId) -> bool {
        let _ = group;
        false
    }

    /// The entry [`corrupt_entry`](Self::corrupt_entry) damaged, while it is still in the log
    /// (found or not).
    fn corrupt_entry_at(&self, group: crate::GroupId) -> Option<crate::Index> {
        let _ = group;
        None
    }
}

impl CrashableStore for MemLogStore {
    fn power_loss(&mut self) -> Result<(), StorageError> {
        self.crash();
        Ok(())
    }

    fn wipe(&mut self) -> Result<(), StorageError> {
        *self = MemLogStore::with_explicit_sync();
        Ok(())
    }

    fn damage_log(&mut self, group: crate::GroupId, from: crate::Index) -> bool {
        MemLogStore::damage_log(self, group, from);
        true
    }

    fn corrupt_entry(&mut self, group: crate::GroupId, index: crate::Index) -> bool {
        MemLogStore::corrupt_entry(self, group, index);
        true
    }

    fn corrupt_entry_at(&self, group: crate::GroupId) -> Option<crate::Index> {
        MemLogStore::corrupt_entry_at(self, group)
    }

    fn mark_all_lost(&mut self, group: crate::GroupId) -> bool {
        MemLogStore::mark_all_lost(self, group);
        true
    }
}

/// Faults the simulator injects into the algorithm itself, to prove its checks catch them.
/// They exist only under the `sim` feature and are set through [`Cluster::set_faults`], never
/// through [`Config`](crate::Config).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Faults {
    /// Count replicas for entries of any term when committing, which Raft §5.4.2 (Figure 8)
    /// forbids.
    pub commit_any_term: bool,
    /// Serve every read at the leader's commit index at once, without confirming leadership
    /// with a round of heartbeats or waiting for the term's first commit (the naive ReadIndex
    /// the seed articles warn about).
    pub reads_without_quorum: bool,
}

impl Faults {
    /// No fault: the algorithm as written.
    pub fn none() -> Faults {
        Faults::default()
    }

    /// The broken commit rule: replicas of entries of any term are counted.
    pub fn commit_any_term() -> Faults {
        Faults { commit_any_term: true, ..Faults::default() }
    }

    /// The naive read: the leader answers from its commit index without checking it leads.
    pub fn reads_without_quorum() -> Faults {
        Faults { reads_without_quorum: true, ..Faults::default() }
    }
}

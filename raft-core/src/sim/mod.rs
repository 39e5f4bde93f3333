//! A deterministic simulator of whole Raft clusters (feature `sim`).
//!
//! [`Cluster`] runs N nodes over a simulated network and simulated disks in virtual time, with
//! every random choice drawn from one seed: message loss, duplication, delay and reordering,
//! symmetric and asymmetric partitions, crashes that lose every write not yet durable, slow
//! disks and clock drift. After every event it checks the Raft safety properties
//! ([`checks`]); clients run a key-value workload whose history
//! [`linearizability::check_history`] verifies at the end. [`chaos::run_seed`] puts it all
//! together as one randomized scenario per seed.
//!
//! Users can plug their own log store into the simulator ([`Cluster::with_stores`] with a
//! [`CrashableStore`]) to check that it keeps exactly what it promised across crashes.

pub mod chaos;
pub mod checks;
mod cluster;
pub mod kv;
pub mod linearizability;

pub use cluster::{Cluster, DiskModel, NetFaults, SimError, SimOptions, SimStats, WorkloadOptions};

use crate::error::StorageError;
use crate::storage::LogStore;
use crate::MemLogStore;

/// A log store the simulator can crash: a power loss drops every write not yet made durable
/// by [`LogStore::sync`], and the store then looks as it would after a reopen.
pub trait CrashableStore: LogStore {
    /// Loses everything not yet durable, then recovers as a restart would.
    fn power_loss(&mut self) -> Result<(), StorageError>;
}

impl CrashableStore for MemLogStore {
    fn power_loss(&mut self) -> Result<(), StorageError> {
        self.crash();
        Ok(())
    }
}

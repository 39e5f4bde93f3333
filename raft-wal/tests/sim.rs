//! raft-core's deterministic simulator with WAL-backed nodes: every crash is a power loss
//! that drops everything past the WAL's durable position, and the simulator checks the reopened
//! WAL holds exactly what it reported durable (no more, no less), on top of its Raft safety
//! and linearizability checks. `RAFT_WAL_SIM_SEEDS` sets the number of seeds (default 12).

#![allow(clippy::unwrap_used)] // Test code.

use raft_core::sim::chaos::{run_seed_with_stores, ChaosOptions};
use raft_core::sim::CrashableStore;
use raft_core::{Entry, GroupId, Index, LogState, LogStore, LogWrite, Lsn, StorageError, Term};
use raft_wal::testkit::{power_loss, Leftover};
use raft_wal::{Durability, Wal, WalConfig};

/// A node's WAL, which the simulator can crash.
struct WalNode {
    dir: tempfile::TempDir,
    wal: Option<Wal>,
    crashes: u64,
}

fn config() -> WalConfig {
    WalConfig {
        segment_size_bytes: 64 << 10,
        durability: Durability::group_commit(),
        prepared_segments: 1,
        ..WalConfig::default()
    }
}

impl WalNode {
    fn new() -> WalNode {
        // tmpfs where there is one: the simulator syncs after every simulated disk write.
        let dir = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
        let wal = Wal::open(dir.path(), config()).unwrap().0;
        WalNode { dir, wal: Some(wal), crashes: 0 }
    }

    fn wal(&self) -> &Wal {
        self.wal.as_ref().expect("the WAL is open between crashes")
    }
}

impl LogStore for WalNode {
    fn write(&self, batch: &[LogWrite<'_>]) -> Result<Lsn, StorageError> {
        self.wal().write(batch)
    }
    fn sync(&self, lsn: Lsn) -> Result<(), StorageError> {
        self.wal().sync(lsn)
    }
    fn durable_lsn(&self) -> Lsn {
        self.wal().durable_lsn()
    }
    fn compact(&self, group: GroupId, through: Index, term: Term) -> Result<Lsn, StorageError> {
        self.wal().compact(group, through, term)
    }
    fn entries(
        &self,
        group: GroupId,
        lo: Index,
        hi: Index,
        max: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        self.wal().entries(group, lo, hi, max)
    }
    fn term(&self, group: GroupId, index: Index) -> Result<Term, StorageError> {
        self.wal().term(group, index)
    }
    fn log_state(&self, group: GroupId) -> Result<LogState, StorageError> {
        self.wal().log_state(group)
    }
    fn groups(&self) -> Result<Vec<GroupId>, StorageError> {
        self.wal().groups()
    }
    fn config_entries(
        &self,
        group: GroupId,
        lo: Index,
        hi: Index,
    ) -> Result<Vec<Entry>, StorageError> {
        self.wal().config_entries(group, lo, hi)
    }
    fn damage(&self, group: GroupId) -> Option<raft_core::LogDamage> {
        self.wal().damage(group)
    }
    fn take_damage_found(&self, group: GroupId) -> Option<Index> {
        self.wal().take_damage_found(group)
    }
    fn mark_repaired(&self, group: GroupId) -> Result<Lsn, StorageError> {
        self.wal().mark_repaired(group)
    }
}

impl CrashableStore for WalNode {
    fn power_loss(&mut self) -> Result<(), StorageError> {
        let wal = self.wal.take().expect("open");
        let durable = wal.durable_position();
        drop(wal); // no sync: whatever was not durable is about to be lost
        self.crashes += 1;
        let leftover = match self.crashes % 3 {
            0 => Leftover::Zeros,
            1 => Leftover::Garbage(self.crashes),
            _ => Leftover::Partial(20),
        };
        power_loss(self.dir.path(), durable, leftover).map_err(StorageError::Io)?;
        let (wal, _) = Wal::open(self.dir.path(), config()).map_err(StorageError::from)?;
        self.wal = Some(wal);
        Ok(())
    }

    fn wipe(&mut self) -> Result<(), StorageError> {
        self.wal = None;
        *self = WalNode::new();
        Ok(())
    }
}

#[test]
fn chaos_with_wal_backed_nodes() {
    let opts = ChaosOptions { fault_us: 8_000_000, ..ChaosOptions::default() };
    let mut failures = Vec::new();
    let mut ops = 0;
    let mut crashes = 0;
    let seeds: u64 =
        std::env::var("RAFT_WAL_SIM_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(12);
    for seed in 0..seeds {
        match run_seed_with_stores(seed, &opts, |_| Box::new(WalNode::new())) {
            Ok(report) => {
                ops += report.history_ops;
                crashes += report.crashes;
            }
            Err(failure) => failures.push(failure.to_string()),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(crashes > 50, "the scenario crashed WAL-backed nodes ({crashes} times)");
    assert!(ops > 1_000, "clients ran ({ops} operations checked)");
}

//! Many groups on the same nodes: the chaos run of [`chaos`](super::chaos) with `groups`
//! groups hosted by every node, as a process of a Multi-Raft system hosts them.
//!
//! Each group is its own simulated cluster (its own clients, checks and linearizability check,
//! and its own timing, so elections and commits interleave differently), but what a node is
//! shared by its groups is shared here too:
//! - **one log store per node**: every group's log and hard state in one store; a sync of any
//!   group makes everything written before it durable, for every group;
//! - **a crash hits every group of the node at once**: the store loses what no group synced,
//!   and every group's node restarts from what is durable;
//! - **the network**: a partition or a cut link cuts every group's messages alike;
//! - **a full disk** stalls every group of the node;
//! - **quiet spells**: every group's clients pause together, so idle groups fall asleep
//!   together (hibernation, on the seeds that use it) and the faults hit them asleep.
//!
//! Faults come between slices of simulated time that every group runs through in turn. Storage
//! damage, membership changes and crashes at a commit are the single-group sweep's business
//! (they act on one group's node, where here a node is all of its groups).

use std::sync::Arc;

use super::chaos::{
    fills_disks, kv_workload, options_for_seed, settle_and_check, ChaosFailure, ChaosOptions,
    ChaosReport,
};
use super::cluster::Cluster;
use super::kv::KvWorkload;
use super::CrashableStore;
use super::WorkloadOptions;
use crate::error::StorageError;
use crate::mem::MemLogStore;
use crate::rng::Rng;
use crate::types::{GroupId, NodeId};

/// A node's store, shared by the node's groups (each group's cluster holds a handle).
impl CrashableStore for Arc<MemLogStore> {
    /// Every group's cluster calls this when the node crashes (all at the same moment): the
    /// first loses what is not durable, the others find nothing more to lose.
    fn power_loss(&mut self) -> Result<(), StorageError> {
        self.crash();
        Ok(())
    }

    fn wipe(&mut self) -> Result<(), StorageError> {
        Err(StorageError::Corrupt("a shared store is not wiped per group".into()))
    }
}

/// What a many-group run did, over all its groups.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupsReport {
    /// The seed.
    pub seed: u64,
    /// Groups per node.
    pub groups: usize,
    /// Nodes.
    pub nodes: usize,
    /// Faults injected (each on every group at once).
    pub faults: u64,
    /// Client operations completed, over all groups.
    pub ops_completed: u64,
    /// Crashes, counted per group.
    pub crashes: u64,
    /// Ticks the groups' nodes slept through (hibernation).
    pub asleep_ticks: u64,
    /// Sleeping followers woken by the liveness check.
    pub liveness_wakes: u64,
    /// Ticks nodes held back because their core called them quiet.
    pub deferred_ticks: u64,
    /// Snapshots installed from a leader, over all groups.
    pub snapshots_installed: u64,
}

/// Runs seed `seed` with `groups` groups on every node (the key-value workload in each) and
/// checks every group as the single-group chaos run does.
///
/// # Errors
/// The first group that failed a check, with the seed.
pub fn run_groups_seed(
    seed: u64,
    groups: usize,
    opts: &ChaosOptions,
) -> Result<GroupsReport, ChaosFailure> {
    let base = options_for_seed(seed);
    let n = base.nodes as NodeId;
    let stores: Vec<Arc<MemLogStore>> =
        (0..n).map(|_| Arc::new(MemLogStore::with_explicit_sync())).collect();
    let mut rng = Rng::new(seed ^ 0x6120_0F5E);
    let fail = |reason: String| ChaosFailure { seed, machine: "kv", reason };
    let mut clusters: Vec<Cluster<KvWorkload>> = (0..groups)
        .map(|g| {
            let mut o = base.clone();
            o.raft.group = g as GroupId + 1;
            // Each group its own timing: its own elections, its own interleavings.
            o.seed = base.seed ^ (g as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let workload = kv_workload(&mut rng);
            let mut cluster = Cluster::with_workload(o, workload, |id| {
                Box::new(stores[(id - 1) as usize].clone()) as Box<dyn CrashableStore>
            });
            cluster.start_workload(WorkloadOptions {
                clients: rng.range(2, 4) as usize,
                timeout_us: rng.range(500_000, 1_500_000),
                think_max_us: rng.range(1_000, 50_000),
            });
            cluster
        })
        .collect();
    let in_group = |g: usize, e: String| fail(format!("group {}: {e}", g + 1));
    let run_all = |clusters: &mut Vec<Cluster<KvWorkload>>, us: u64| {
        for (g, c) in clusters.iter_mut().enumerate() {
            c.run_for(us).map_err(|e| in_group(g, e.to_string()))?;
        }
        Ok::<(), ChaosFailure>(())
    };
    let mut faults = 0u64;
    let hibernates = base.raft.hibernate_ticks > 0;
    while clusters[0].now_us() < opts.fault_us {
        run_all(&mut clusters, rng.range(20_000, 400_000))?;
        if hibernates && rng.chance(0.2) {
            clusters.iter_mut().for_each(Cluster::stop_workload);
            run_all(&mut clusters, rng.range(200_000, 1_500_000))?;
            clusters.iter_mut().for_each(Cluster::resume_workload);
        }
        if fills_disks(seed) && rng.chance(0.15) {
            let (id, for_us) = (rng.range(1, n), rng.range(10_000, 2_000_000));
            clusters.iter_mut().for_each(|c| c.fill_disk(id, for_us));
        }
        faults += 1;
        match rng.below(100) {
            0..=24 => {
                let (ids, cut) = super::chaos::random_split(&mut rng, n);
                let (a, b) = ids.split_at(cut);
                clusters.iter_mut().for_each(|c| c.partition(&[a, b]));
            }
            25..=34 => {
                let (from, to) = (rng.range(1, n), rng.range(1, n));
                if from != to {
                    clusters.iter_mut().for_each(|c| c.block_link(from, to));
                }
            }
            35..=49 => clusters.iter_mut().for_each(Cluster::heal),
            50..=69 => {
                let id = rng.range(1, n);
                clusters.iter_mut().for_each(|c| c.crash(id));
            }
            70..=89 => {
                let down: Vec<NodeId> = (1..=n).filter(|&id| !clusters[0].is_up(id)).collect();
                if let Some(&id) = down.get(rng.below(down.len().max(1) as u64) as usize) {
                    clusters.iter_mut().for_each(|c| c.restart(id));
                }
            }
            _ => {
                let id = rng.range(1, n);
                for c in clusters.iter_mut() {
                    c.crash(id);
                }
                for c in clusters.iter_mut() {
                    c.restart(id);
                }
            }
        }
    }
    // Healed together (no fault comes after this, so each group may finish on its own).
    clusters.iter_mut().for_each(Cluster::heal);
    for id in 1..=n {
        clusters.iter_mut().for_each(|c| c.restart(id));
    }
    let mut report =
        GroupsReport { seed, groups, nodes: n as usize, faults, ..GroupsReport::default() };
    for (g, cluster) in clusters.iter_mut().enumerate() {
        let fail_g = |reason: String| in_group(g, reason);
        let r: ChaosReport = settle_and_check(cluster, seed, opts, faults, &fail_g)?;
        report.ops_completed += r.ops_completed;
        report.crashes += r.crashes;
        report.asleep_ticks += r.asleep_ticks;
        report.liveness_wakes += r.liveness_wakes;
        report.deferred_ticks += r.deferred_ticks;
        report.snapshots_installed += r.snapshots_installed;
    }
    Ok(report)
}

//! Faults the simulator injects from outside the nodes: links cut (one way or both), partitions,
//! network and disk settings changed mid-run, crashes that lose what a disk had not synced, a new
//! empty disk, restarts.

use super::checks::Violation;
use super::cluster::Cluster;
use super::durable::recovered_model;
use super::options::{DiskModel, NetFaults, SimError};
use super::workload::Workload;
use crate::snapshot::MemSnapshotStore;
use crate::types::{Index, NodeId};

impl<W: Workload> Cluster<W> {
    /// Cuts every link to and from `id`.
    pub fn disconnect(&mut self, id: NodeId) {
        self.isolated.insert(id);
    }

    /// Undoes [`disconnect`](Cluster::disconnect) (partitions set up by other calls stay).
    pub fn connect(&mut self, id: NodeId) {
        self.isolated.remove(&id);
    }

    /// Whether `id` is not disconnected (it may still be on one side of a partition).
    pub fn is_connected(&self, id: NodeId) -> bool {
        !self.isolated.contains(&id)
    }

    /// Splits the nodes into groups that cannot reach each other (nodes listed nowhere keep
    /// their links).
    pub fn partition(&mut self, groups: &[&[NodeId]]) {
        self.blocked.clear();
        for (i, a) in groups.iter().enumerate() {
            for b in groups.iter().skip(i + 1) {
                for &x in a.iter() {
                    for &y in b.iter() {
                        self.blocked.insert((x, y));
                        self.blocked.insert((y, x));
                    }
                }
            }
        }
    }

    /// Drops messages from `from` to `to` only (an asymmetric partition).
    pub fn block_link(&mut self, from: NodeId, to: NodeId) {
        self.blocked.insert((from, to));
    }

    /// Restores every link and reconnects every node.
    pub fn heal(&mut self) {
        self.blocked.clear();
        self.isolated.clear();
    }

    /// Sets the length of node `id`'s tick in virtual microseconds from its next tick on (a
    /// clock that runs fast or slow).
    pub fn set_tick_us(&mut self, id: NodeId, tick_us: u64) {
        self.nodes[(id - 1) as usize].tick_us = tick_us.max(1);
    }

    /// Replaces the network's fault settings.
    pub fn set_net_faults(&mut self, net: NetFaults) {
        self.opts.net = net;
    }

    /// Replaces the disk model.
    pub fn set_disk_model(&mut self, disk: DiskModel) {
        self.opts.disk = disk;
    }

    /// Crashes `id`: its process state is gone, its disk loses every write not yet durable, and
    /// each message it sent that has not arrived yet is lost with probability 1/2 (a machine
    /// that loses power loses what sat in its buffers).
    pub fn crash(&mut self, id: NodeId) {
        let node = &mut self.nodes[(id - 1) as usize];
        if node.raft.is_none() {
            return;
        }
        node.raft = None;
        node.epoch += 1;
        node.disk_free_at = self.now;
        node.writes_in_flight = 0;
        node.held.clear(); // Never written, never acknowledged.
                           // Writes this node had not synced yet that the store made durable anyway (a store shared
                           // with other groups, whose syncs cover everything written before them): they survive.
        let durable_lsn = node.store.durable_lsn();
        while let Some(w) = node.unsynced.pop_front() {
            if w.lsn <= durable_lsn {
                node.durable.apply(&w);
            }
        }
        node.pending.clear();
        node.reads.clear();
        node.read_waiting.clear();
        node.receiver.clear();
        node.snapshots.crash();
        node.snapshot_disk_free_at = self.now;
        let corrupt = node.store.corrupt_entry_at(self.opts.raft.group);
        if let Err(err) = node.store.power_loss() {
            panic!("node {id}: store failed to recover from power loss: {err}");
        }
        self.stats.crashes += 1;
        // Damage the store found when it "reopened" (an entry corrupted while the node ran)
        // cut its log: the model loses the same entries.
        if let Some(from) = corrupt {
            node.durable.cut_from(from);
        }
        // The store must hold exactly what was durable: nothing acknowledged lost, and nothing
        // reported as not durable resurrected.
        let recovered = recovered_model(&*node.store, self.opts.raft.group);
        if recovered.as_ref() != Ok(&node.durable) {
            let violation = Violation {
                property: "durability",
                detail: format!(
                    "node {id} recovered {recovered:?} from its store after a crash, but had synced {:?}",
                    node.durable
                ),
            };
            self.deferred.get_or_insert(SimError { time_us: self.now, violation });
        }
    }

    /// Arms (or disarms) a crash of the next new leader whose commit index advances for the
    /// first time in its term, at that very moment: after it counted a quorum, before its
    /// followers learn of the commit (the worst time for a new leader to die).
    pub fn set_crash_on_commit(&mut self, armed: bool) {
        self.crash_on_commit = armed;
    }

    /// Crashes `id` and gives it a new, empty disk (log, snapshots and state machine gone). It
    /// stays down; [`restart`](Cluster::restart) brings it back as a node waiting to be added.
    pub fn wipe(&mut self, id: NodeId) {
        self.crash(id);
        let group = self.opts.raft.group;
        let fresh = self.workload.machine();
        let node = &mut self.nodes[(id - 1) as usize];
        if let Err(err) = node.store.wipe() {
            panic!("node {id}: store failed to wipe: {err}");
        }
        // The old incarnation's configurations, which the new one replays as it catches up,
        // may make it a voter of a group long gone: it must not vote by them.
        node.store.mark_all_lost(group);
        node.durable = recovered_model(&*node.store, group)
            .unwrap_or_else(|e| panic!("node {id}: cannot read its wiped store: {e}"));
        node.unsynced.clear();
        node.snapshots = MemSnapshotStore::new(2);
        node.machine = fresh;
        node.applied_index = 0;
        node.applied.clear();
        node.applied_base = 0;
        node.wiped = true;
        self.checker.forget_node(id);
    }

    /// Crashes `id` and damages its log from entry `from` on (the entry and all after it are
    /// lost, as a store that found `from` failing its checksum at open leaves it); the node
    /// stays down. Returns false if its store cannot simulate damage or holds no such entry.
    pub fn damage_log(&mut self, id: NodeId, from: Index) -> bool {
        self.crash(id);
        let group = self.opts.raft.group;
        let node = &mut self.nodes[(id - 1) as usize];
        let Ok(state) = node.store.log_state(group) else { return false };
        if from < state.first_index
            || from > state.last_index
            || !node.store.damage_log(group, from)
        {
            return false;
        }
        node.durable.cut_from(from);
        self.stats.storage_faults += 1;
        tracing::info!(node = id, from, "sim: log damaged at a restart");
        true
    }

    /// Corrupts entry `index` in running node `id`'s store: its reads fail until the node
    /// repairs it. Returns false if the node is down, its store cannot simulate damage or holds
    /// no such entry.
    pub fn corrupt_entry(&mut self, id: NodeId, index: Index) -> bool {
        let group = self.opts.raft.group;
        let node = &mut self.nodes[(id - 1) as usize];
        if node.raft.is_none() {
            return false;
        }
        let Ok(state) = node.store.log_state(group) else { return false };
        if index < state.first_index || index > state.last_index {
            return false;
        }
        if !node.store.corrupt_entry(group, index) {
            return false;
        }
        tracing::info!(node = id, index, "sim: entry corrupted");
        self.stats.storage_faults += 1;
        true
    }

    /// Fills `id`'s disk for `for_us` (simulated time): its writes are held, in order, and go to
    /// the disk once it has room again (as the node driver retries a store out of space); the
    /// core is told meanwhile ([`Raft::set_storage_stalled`](crate::Raft::set_storage_stalled)).
    /// A crash loses what was held; the disk stays full across it.
    pub fn fill_disk(&mut self, id: NodeId, for_us: u64) {
        let node = &mut self.nodes[(id - 1) as usize];
        node.full_until = node.full_until.max(self.now + for_us);
        self.stats.disk_full += 1;
        tracing::info!(node = id, for_us, "sim: disk full");
    }

    /// Restarts a crashed node from what its disk holds.
    pub fn restart(&mut self, id: NodeId) {
        if self.nodes[(id - 1) as usize].raft.is_none() {
            self.start_node(id);
        }
    }

    /// Whether `id` is running.
    pub fn is_up(&self, id: NodeId) -> bool {
        self.nodes[(id - 1) as usize].raft.is_some()
    }
}

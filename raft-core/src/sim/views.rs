//! What tests, checks and reports read of a running [`Cluster`]: nodes' cores, leaders, terms,
//! applied entries, logs and the run's statistics. Nothing here changes the cluster.

use bytes::Bytes;

use super::cluster::Cluster;
use super::options::{SimOptions, SimStats};
use super::workload::Workload;
use crate::error::ReadError;
use crate::types::{Entry, Index, NodeId, RoleKind, Term};
use crate::Raft;

impl<W: Workload> Cluster<W> {
    /// The current virtual time.
    pub fn now_us(&self) -> u64 {
        self.now
    }

    /// The node `id`, if it is running.
    pub fn raft(&self, id: NodeId) -> Option<&Raft> {
        self.nodes.get((id - 1) as usize).and_then(|n| n.raft.as_ref())
    }

    /// Node ids.
    pub fn ids(&self) -> impl Iterator<Item = NodeId> {
        1..=self.opts.nodes as NodeId
    }

    /// Running nodes that believe they lead, with their terms.
    pub fn leaders(&self) -> Vec<(NodeId, Term)> {
        self.nodes
            .iter()
            .filter_map(|n| n.raft.as_ref())
            .filter(|r| r.role() == RoleKind::Leader)
            .map(|r| (r.id(), r.term()))
            .collect()
    }

    /// The highest term any node holds, running or down (from its store's hard state).
    pub fn max_term(&self) -> Term {
        let group = self.opts.raft.group;
        self.nodes
            .iter()
            .map(|n| match &n.raft {
                Some(r) => r.term(),
                None => n.store.log_state(group).map_or(0, |s| s.hard_state.term),
            })
            .max()
            .unwrap_or(0)
    }

    /// The leader of the highest term among running nodes, if any. A deposed leader that has
    /// not noticed yet always has a lower term than its successor.
    pub fn leader(&self) -> Option<NodeId> {
        self.leaders().into_iter().max_by_key(|&(_, term)| term).map(|(id, _)| id)
    }

    /// What each running node applied at `index` (entries in order of node id).
    pub fn applied_at(&self, index: Index) -> Vec<(NodeId, Entry)> {
        self.nodes
            .iter()
            .filter(|n| n.raft.is_some())
            .filter_map(|n| {
                let slot = index.checked_sub(n.applied_base + 1)?;
                n.applied.get(slot as usize).map(|e| (n.id, e.clone()))
            })
            .collect()
    }

    /// How many running nodes applied `index`, and the command there.
    pub fn n_applied(&self, index: Index) -> (usize, Option<Bytes>) {
        let applied = self.applied_at(index);
        (applied.len(), applied.first().map(|(_, e)| e.data.clone()))
    }

    /// The first and last index node `id`'s store holds, if it can tell.
    pub fn log_range(&self, id: NodeId) -> Option<(Index, Index)> {
        let node = &self.nodes[(id - 1) as usize];
        let state = node.store.log_state(self.opts.raft.group).ok()?;
        Some((state.first_index, state.last_index))
    }

    /// Nodes whose log is damaged and not yet repaired: running ones not
    /// [`Healthy`](crate::Health::Healthy), and any whose store still records damage.
    pub fn damaged_nodes(&self) -> Vec<NodeId> {
        let group = self.opts.raft.group;
        (1..=self.nodes.len() as NodeId)
            .filter(|&id| {
                let node = &self.nodes[(id - 1) as usize];
                // A node whose repair is done but not yet durable (its disk full) still
                // counts: a crash would bring the damage back.
                node.store.corrupt_entry_at(group).is_some()
                    || node.store.damage(group).is_some()
                    || node.raft.as_ref().is_some_and(|r| r.health() != crate::Health::Healthy)
            })
            .collect()
    }

    /// The index node `id`'s state machine has applied (entries, or a snapshot covering them).
    pub fn applied_len(&self, id: NodeId) -> usize {
        self.nodes[(id - 1) as usize].applied_index as usize
    }

    /// The answer to a read asked for with [`read`](Cluster::read), once it came.
    pub fn read_result(&self, ticket: u64) -> Option<&Result<W::Output, ReadError>> {
        self.direct_reads.get(&ticket)
    }

    /// One line per node: role, term, log, commit and configuration (for failure reports).
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for id in self.ids() {
            match self.raft(id) {
                None => out.push_str(&format!("\n  node {id}: down")),
                Some(r) => out.push_str(&format!(
                    "\n  node {id}: {} term {} vote {:?} leader {:?}, log {}..={} (last term {:?}), \
                     commit {}, config {} at {}{}, {}",
                    r.role(),
                    r.term(),
                    r.hard_state().vote,
                    r.leader(),
                    r.first_index(),
                    r.last_index(),
                    r.term_at(r.last_index()),
                    r.commit_index(),
                    r.membership(),
                    r.membership_index(),
                    if r.is_removed() { ", told it was removed" } else { "" },
                    r.health(),
                )),
            }
        }
        out
    }

    /// Entries node `id`'s log store holds now.
    pub fn log_len(&self, id: NodeId) -> u64 {
        let node = &self.nodes[(id - 1) as usize];
        node.store
            .log_state(self.opts.raft.group)
            .map_or(0, |s| (s.last_index + 1).saturating_sub(s.first_index))
    }

    /// The state machine of node `id` (as it was when the node went down, while it is down).
    pub fn machine(&self, id: NodeId) -> &W::Machine {
        &self.nodes[(id - 1) as usize].machine
    }

    /// The workload the cluster runs.
    pub fn workload(&self) -> &W {
        &self.workload
    }

    /// Counters so far.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// The options the cluster runs with.
    pub fn options(&self) -> &SimOptions {
        &self.opts
    }

    /// The highest index any node reported committed.
    pub fn max_committed(&self) -> Index {
        self.checker.committed_index()
    }
}

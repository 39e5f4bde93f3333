//! How a simulated node carries out its Readies: the simulator's [`ReadyHandler`] for the one
//! [`Executor`](crate::execute::Executor) every runtime uses.

use bytes::Bytes;

use super::checks::{Decided, Violation};
use super::clients::untag;
use super::cluster::{storage_violation, Cluster, Event, Held, Reply, SimNode};
use super::durable::{Ack, ModelWrite};
use super::workload::Workload;
use crate::error::{SnapshotError, StorageError};
use crate::execute::{ApplyWork, PersistWrite, ReadyHandler};
use crate::message::{AppendResponse, Message, MessageBody};
use crate::raft::Raft;
use crate::ready::{FetchRequest, ReadState, SnapshotChunk, SnapshotRead};
use crate::snapshot::{restore_snapshot, take_snapshot};
use crate::storage::{Lsn, StateMachine};
use crate::types::{Entry, NodeId, SnapshotMeta};

/// How a simulated node carries out its Readies: messages onto the faulty network, writes to its
/// store and then its simulated disk, state machine work at once (with the safety checks), log
/// and snapshot reads and snapshot chunk writes after a simulated delay.
pub(super) struct NodeIo<'a, W: Workload> {
    pub(super) cluster: &'a mut Cluster<W>,
    pub(super) id: NodeId,
    pub(super) idx: usize,
}

impl<W: Workload> NodeIo<'_, W> {
    fn node(&mut self) -> &mut SimNode<W> {
        &mut self.cluster.nodes[self.idx]
    }

    /// Writes to the store what `write` asks, checks it first, and records what it changes in
    /// the durable model once the store reports it durable. Returns the position to sync.
    ///
    /// A compaction goes to the store on its own first, so the check of the entries that follow
    /// sees the store they are written to.
    fn write(
        &mut self,
        raft: &Raft,
        write: &mut PersistWrite,
        decided: Option<Decided>,
    ) -> Result<Option<Lsn>, Violation> {
        let mut last = None;
        if write.compact.is_some() && !write.entries.is_empty() {
            let mut compaction = PersistWrite {
                number: write.number,
                group: write.group,
                ..PersistWrite::default()
            };
            compaction.compact = write.compact.take();
            last = self.write_checked(raft, &mut compaction, decided)?;
        }
        Ok(self.write_checked(raft, write, decided)?.or(last))
    }

    fn write_checked(
        &mut self,
        raft: &Raft,
        write: &mut PersistWrite,
        decided: Option<Decided>,
    ) -> Result<Option<Lsn>, Violation> {
        let (id, group) = (self.id, write.group);
        let cluster = &mut *self.cluster;
        let node = &mut cluster.nodes[self.idx];
        if !write.entries.is_empty() {
            let last =
                node.store.log_state(group).map_err(|e| storage_violation(id, e))?.last_index;
            let store = &node.store;
            cluster.checker.check_write(
                raft,
                &write.entries,
                last,
                |i| store.term(group, i).ok(),
                decided,
            )?;
        }
        let lsn = node
            .writer
            .write(&*node.store, std::slice::from_mut(write))
            .map_err(|e| storage_violation(id, e))?;
        let Some(lsn) = lsn else { return Ok(None) };
        cluster.stats.disk_writes += 1;
        node.unsynced.push_back(ModelWrite {
            lsn,
            compact: write.compact,
            hard_state: write.hard_state,
            entries: write
                .entries
                .first()
                .map(|e| (e.index, write.entries.iter().map(|e| e.term).collect())),
        });
        if let Ok(state) = node.store.log_state(group) {
            let len = (state.last_index + 1).saturating_sub(state.first_index);
            cluster.stats.max_log_len = cluster.stats.max_log_len.max(len);
        }
        Ok(Some(lsn))
    }

    fn apply_entry(&mut self, entry: Entry) -> Result<(), Violation> {
        let cluster = &mut *self.cluster;
        let node = &mut cluster.nodes[self.idx];
        cluster.checker.check_apply(self.id, &entry, node.applied_index + 1)?;
        let (tag, inner) = untag(&entry);
        let output = node.machine.apply(&inner);
        let (index, term) = (entry.index, entry.term);
        node.applied_index = index;
        node.applied.push(inner);
        self.check_machine()?;
        let cluster = &mut *self.cluster;
        let node = &mut cluster.nodes[self.idx];
        if let Some(p) = node.pending.remove(&index) {
            let reply = if p.term == term && tag == Some((p.client, p.op_id)) {
                Reply::Done(cluster.workload.output(output))
            } else {
                // Another entry took the index: this proposal was overwritten and will never
                // apply, so the client may safely resend it.
                Reply::Failed
            };
            cluster.reply(p.client, p.op_id, reply);
        }
        Ok(())
    }

    /// The workload's invariant of the machine.
    fn check_machine(&mut self) -> Result<(), Violation> {
        let cluster = &*self.cluster;
        let node = &cluster.nodes[self.idx];
        cluster.workload.check(&node.machine).map_err(|detail| Violation {
            property: "state machine invariant",
            detail: format!("node {} at index {}: {detail}", self.id, node.applied_index),
        })
    }

    /// Writes `write` to the store and schedules its completion on the simulated disk (in
    /// order behind every write before it), or acknowledges at once what needs no write.
    /// A write that was held (`decided` then) always completes through the disk event (which
    /// tells the executor), never at once.
    fn persist_now(
        &mut self,
        raft: &Raft,
        mut write: PersistWrite,
        acks: Vec<Ack>,
        decided: Option<Decided>,
    ) -> Result<Option<Vec<Message>>, Violation> {
        let lsn = self.write(raft, &mut write, decided)?;
        if lsn.is_none() && self.node().writes_in_flight == 0 && decided.is_none() {
            // Nothing written (or only a commit index held back) and nothing in flight: durable.
            for ack in &acks {
                self.cluster.check_acknowledgement(ack)?;
            }
            return Ok(Some(acks.into_iter().map(|ack| ack.msg).collect()));
        }
        // The disk completes writes in order; messages wait behind every write before them.
        let d = &self.cluster.opts.disk;
        let (min, max, slow, slow_max) =
            (d.latency_min_us, d.latency_max_us, d.slow, d.slow_max_us);
        let mut latency = 0;
        if lsn.is_some() {
            latency = self.cluster.rng.range(min, max.max(min));
            if self.cluster.rng.chance(slow) {
                latency += self.cluster.rng.range(0, slow_max);
            }
        }
        let now = self.cluster.now;
        let (id, number) = (self.id, write.number);
        let node = self.node();
        node.writes_in_flight += 1;
        let done_at = (now + latency).max(node.disk_free_at);
        node.disk_free_at = done_at;
        let event = Event::DiskDone { node: id, epoch: node.epoch, lsn, number, messages: acks };
        self.cluster.schedule(done_at - now, event);
        Ok(None)
    }

    /// The disk has room again: the writes held while it was full go to it, in order.
    pub(super) fn release_held(&mut self, raft: &Raft) -> Result<(), Violation> {
        let now = self.cluster.now;
        while self.node().full_until <= now {
            let Some(held) = self.node().held.pop_front() else { break };
            self.node().writes_in_flight -= 1;
            self.persist_now(raft, held.write, held.acks, Some(held.decided))?;
        }
        Ok(())
    }

    /// Schedules `event` after a random delay of at most the fetch delay.
    fn after_fetch_delay(&mut self, event: Event<W>) {
        let delay = self.cluster.rng.range(0, self.cluster.opts.fetch_delay_max_us);
        self.cluster.schedule(delay, event);
    }
}

impl<W: Workload> ReadyHandler for NodeIo<'_, W> {
    type Error = Violation;

    fn before_ready(&mut self, raft: &Raft) -> Result<(), Violation> {
        // Record what this node committed before it applies and compacts it away.
        self.cluster.checker.observe_commit(raft)
    }

    fn send(&mut self, messages: Vec<Message>) -> Result<(), Violation> {
        for msg in messages {
            self.cluster.send(msg);
        }
        Ok(())
    }

    fn release_reads(&mut self, reads: Vec<ReadState>) -> Result<(), Violation> {
        for ReadState { id, result } in reads {
            self.cluster.read_released(self.idx, id, result);
        }
        Ok(())
    }

    fn persist(
        &mut self,
        raft: &Raft,
        mut write: PersistWrite,
    ) -> Result<Option<Vec<Message>>, Violation> {
        let acks: Vec<Ack> = std::mem::take(&mut write.messages)
            .into_iter()
            .map(|msg| {
                let claims = match msg.body {
                    MessageBody::AppendResponse(AppendResponse::Success { match_index }) => {
                        // Below the log's start the snapshot holds the entry, durably.
                        raft.term_at(match_index).map(|term| (match_index, term))
                    }
                    _ => None,
                };
                Ack { msg, claims }
            })
            .collect();
        let now = self.cluster.now;
        let decided = self.cluster.checker.decided_now(raft);
        let node = self.node();
        if node.full_until > now || !node.held.is_empty() {
            // No room on the disk: held (in order behind any held before), never written or
            // acknowledged until there is; the store is not even asked.
            node.held.push_back(Held { write, acks, decided });
            node.writes_in_flight += 1;
            return Ok(None);
        }
        self.persist_now(raft, write, acks, None)
    }

    fn apply(
        &mut self,
        work: ApplyWork,
    ) -> Result<Option<Result<SnapshotMeta, SnapshotError>>, Violation> {
        let id = self.id;
        if let Some(meta) = &work.restore {
            self.cluster.checker.check_snapshot(id, meta.index, meta.term)?;
            let node = self.node();
            restore_snapshot(&mut node.machine, &node.snapshots, meta, 4096).map_err(|e| {
                Violation { property: "snapshot", detail: format!("node {id}: restore: {e}") }
            })?;
            node.applied_index = meta.index;
            node.applied.clear();
            node.applied_base = meta.index;
            // Proposals covered by the snapshot cannot be told apart any more: their clients
            // time out (outcome unknown), which is always a correct answer.
            node.pending.retain(|&index, _| index > meta.index);
            self.cluster.stats.snapshots_installed += 1;
            self.check_machine()?;
        }
        for entry in work.entries {
            self.apply_entry(entry)?;
        }
        self.cluster.serve_reads(self.idx);
        let Some(request) = &work.snapshot else { return Ok(None) };
        let node = self.node();
        if node.applied_index != request.index {
            return Err(Violation {
                property: "snapshot",
                detail: format!(
                    "node {id}: asked for a snapshot at {} with {} applied",
                    request.index, node.applied_index
                ),
            });
        }
        let result = take_snapshot(&mut node.machine, &node.snapshots, request);
        self.cluster.stats.snapshots_taken += 1;
        if let Ok(meta) = &result {
            self.cluster.checker.check_snapshot_taken(id, meta.index, meta.term, meta.checksum)?;
        }
        Ok(Some(result))
    }

    fn fetch(
        &mut self,
        request: &FetchRequest,
    ) -> Result<Option<Result<Vec<Entry>, StorageError>>, Violation> {
        let (node, epoch, request) = (self.id, self.node().epoch, *request);
        self.after_fetch_delay(Event::FetchDone { node, epoch, request });
        Ok(None)
    }

    fn read_snapshot(
        &mut self,
        read: &SnapshotRead,
    ) -> Result<Option<Result<Bytes, SnapshotError>>, Violation> {
        let (node, epoch, read) = (self.id, self.node().epoch, read.clone());
        self.after_fetch_delay(Event::SnapshotReadDone { node, epoch, read });
        Ok(None)
    }

    fn write_snapshot_chunk(
        &mut self,
        chunk: &SnapshotChunk,
    ) -> Result<Option<Result<(), SnapshotError>>, Violation> {
        // The snapshot disk writes chunks in order.
        let d = &self.cluster.opts.disk;
        let (min, max) = (d.latency_min_us, d.latency_max_us);
        let latency = self.cluster.rng.range(min, max.max(min));
        let now = self.cluster.now;
        let id = self.id;
        let node = self.node();
        let done_at = (now + latency).max(node.snapshot_disk_free_at);
        node.snapshot_disk_free_at = done_at;
        let event = Event::SnapshotChunkDone { node: id, epoch: node.epoch, chunk: chunk.clone() };
        self.cluster.schedule(done_at - now, event);
        Ok(None)
    }
}

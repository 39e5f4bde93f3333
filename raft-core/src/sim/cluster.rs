//! A simulated cluster: N nodes, a network and disks under fault injection, virtual time, and
//! clients, all driven by one seed.
//!
//! Everything happens as events on one queue ordered by virtual time (microseconds). Each node
//! ticks on its own clock (which may drift), messages cross a network that can lose, duplicate,
//! delay, reorder and partition them, and each node's writes become durable only when its
//! simulated disk finishes them; a crash loses whatever was not durable yet. The safety checker
//! runs after every event.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};

use bytes::Bytes;

use super::checks::{SafetyChecker, Violation};
use super::clients::Clients;
use super::durable::{recovered_model, Ack, DurableModel, ModelWrite};
use super::kv::KvWorkload;
use super::node_io::NodeIo;
use super::options::{SimError, SimOptions, SimStats};
use super::workload::Workload;
use super::CrashableStore;
use crate::error::{ProposeError, ReadError, StorageError, TransferError};
use crate::execute::{Executor, LogWriter, PersistWrite};
use crate::message::Message;
use crate::node::ReadMode;
use crate::ready::ReadId;
use crate::ready::{FetchRequest, SnapshotChunk, SnapshotRead};
use crate::rng::Rng;
use crate::snapshot::{
    restore_snapshot, serve_snapshot_read, MemSnapshotStore, SnapshotReceiver, SnapshotStore,
};
use crate::storage::{load_initial_state, serve_fetch, Lsn};
use crate::types::{Entry, Index, NodeId, Term};
use crate::{Config, MemLogStore, Raft};

/// What a client's request got back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Reply<O> {
    /// Applied; the result.
    Done(O),
    /// Not the leader; nothing was done.
    NotLeader(Option<NodeId>),
    /// Definitely not applied (refused, or overwritten by another leader's entry).
    Failed,
}

pub(super) enum Event<W: Workload> {
    Tick(NodeId),
    /// A message arrives; `sender_epoch` is the sender's epoch when it was sent.
    Deliver {
        msg: Message,
        sender_epoch: u64,
    },
    /// The node's disk finished everything queued before this event: sync up to `lsn` (if the
    /// Ready wrote anything), acknowledge Ready `number`, and send the messages that waited for
    /// durability.
    DiskDone {
        node: NodeId,
        epoch: u64,
        lsn: Option<Lsn>,
        number: u64,
        messages: Vec<Ack>,
    },
    FetchDone {
        node: NodeId,
        epoch: u64,
        request: FetchRequest,
    },
    SnapshotReadDone {
        node: NodeId,
        epoch: u64,
        read: SnapshotRead,
    },
    SnapshotChunkDone {
        node: NodeId,
        epoch: u64,
        chunk: SnapshotChunk,
    },
    Request {
        node: NodeId,
        client: u64,
        op_id: u64,
        data: Bytes,
        /// A read-only operation to serve without the log.
        read: Option<W::Op>,
    },
    Reply {
        client: u64,
        op_id: u64,
        reply: Reply<W::Output>,
    },
    ClientTimeout {
        client: u64,
        op_id: u64,
    },
    ClientNext {
        client: u64,
    },
}

struct Scheduled<W: Workload> {
    at: u64,
    seq: u64,
    event: Event<W>,
}

impl<W: Workload> PartialEq for Scheduled<W> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<W: Workload> Eq for Scheduled<W> {}
impl<W: Workload> PartialOrd for Scheduled<W> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<W: Workload> Ord for Scheduled<W> {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap is a max-heap: the earliest event must compare greatest.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Who a read served without the log answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ReadFor {
    /// A client's operation.
    Client { client: u64, op_id: u64 },
    /// A test's read ([`Cluster::read`]).
    Direct(u64),
}

/// A read a node holds: waiting for the core to confirm it, or for its index to be applied.
pub(super) struct SimRead<W: Workload> {
    pub(super) to: ReadFor,
    pub(super) op: W::Op,
    /// Asked for on a node that did not lead.
    pub(super) on_follower: bool,
}

/// A proposal a node made for a client, answered when its index is applied.
pub(super) struct Pending {
    pub(super) term: Term,
    pub(super) client: u64,
    pub(super) op_id: u64,
}

/// A write held while its node's disk is full.
pub(super) struct Held {
    pub(super) write: PersistWrite,
    /// The acknowledgements that wait for it.
    pub(super) acks: Vec<Ack>,
    /// When the node decided it (for the checks made when it reaches the store).
    pub(super) decided: super::checks::Decided,
}

pub(super) struct SimNode<W: Workload> {
    pub(super) id: NodeId,
    pub(super) raft: Option<Raft>,
    /// Carries out the node's Readies (process state: reset at every start).
    pub(super) executor: Executor,
    /// Writes the node's Readies to its store (process state: reset at every start).
    pub(super) writer: LogWriter,
    pub(super) store: Box<dyn CrashableStore>,
    /// Grows at every crash, so completions from before it are ignored.
    pub(super) epoch: u64,
    pub(super) machine: W::Machine,
    /// Complete snapshots survive crashes; transfers in progress live in `receiver`.
    pub(super) snapshots: MemSnapshotStore,
    pub(super) receiver: SnapshotReceiver,
    /// The state machine's applied index.
    pub(super) applied_index: Index,
    /// Entries applied since the last start or snapshot restore: `applied[i]` is entry
    /// `applied_base + 1 + i`.
    pub(super) applied: Vec<Entry>,
    pub(super) applied_base: Index,
    /// When the node's snapshot disk finishes the chunk writes queued so far.
    pub(super) snapshot_disk_free_at: u64,
    pub(super) pending: HashMap<Index, Pending>,
    /// Reads handed to the core, by id (process state).
    pub(super) reads: HashMap<ReadId, SimRead<W>>,
    /// Confirmed reads waiting for the machine to apply their index (process state).
    pub(super) read_waiting: Vec<(Index, SimRead<W>)>,
    pub(super) next_read: ReadId,
    pub(super) disk_free_at: u64,
    /// Writes handed to the disk whose durability event has not happened yet (held ones too).
    pub(super) writes_in_flight: u64,
    /// The node's disk is full until then (simulated time): writes are held, not written.
    pub(super) full_until: u64,
    /// Writes held while the disk is full, with the acknowledgements that wait for them, in
    /// order (process state: a crash loses them, never written and never acknowledged).
    pub(super) held: VecDeque<Held>,
    /// Ticks this sleeping follower's leader has been unreachable (the runtime's liveness
    /// check, modelled: it wakes the node after an election timeout of them).
    pub(super) leader_unreachable_ticks: u32,
    pub(super) durable: DurableModel,
    /// Writes accepted by the store and not yet reported durable by it, oldest first. A store
    /// may make more durable than a sync asked for (one fdatasync covers every write so far):
    /// the model follows what the store reports.
    pub(super) unsynced: VecDeque<ModelWrite>,
    pub(super) tick_us: u64,
    /// Ticks held back because the core called them quiet (process state; see
    /// [`SimOptions::defer_quiet_ticks`]): taken before the core's next input.
    pub(super) owed_ticks: u32,
    /// The last Ready whose write was durable while the core said nothing waited for it
    /// ([`SimOptions::defer_persist_acks`]); 0: none held back.
    pub(super) owed_ack: u64,
    pub(super) starts: u64,
    /// The node's disk was wiped: it starts as a node waiting to be added, whatever the
    /// group's first configuration said.
    pub(super) wiped: bool,
}

/// A simulated cluster. See the [`sim`](crate::sim) module docs.
pub struct Cluster<W: Workload = KvWorkload> {
    pub(super) opts: SimOptions,
    pub(super) rng: Rng,
    pub(super) now: u64,
    pub(super) seq: u64,
    queue: BinaryHeap<Scheduled<W>>,
    pub(super) nodes: Vec<SimNode<W>>,
    /// Directed links that drop everything (partitions and one-way failures).
    pub(super) blocked: HashSet<(NodeId, NodeId)>,
    /// Nodes cut off from everyone.
    pub(super) isolated: HashSet<NodeId>,
    pub(super) checker: SafetyChecker,
    /// The state machine, its operations and its model.
    pub(super) workload: W,
    /// The clients, once started.
    pub(super) clients: Option<Clients<W>>,
    pub(super) stats: SimStats,
    /// A violation found outside `run_for` (during a direct proposal), reported by the next run.
    pub(super) deferred: Option<SimError>,
    /// Crash the next leader whose commit index advances, the moment it does.
    pub(super) crash_on_commit: bool,
    /// Faults injected into every node's algorithm.
    pub(super) faults: super::Faults,
    /// Answers to reads asked for with [`Cluster::read`].
    pub(super) direct_reads: HashMap<u64, Result<W::Output, ReadError>>,
    next_direct_read: u64,
}

impl Cluster<KvWorkload> {
    /// A cluster of in-memory nodes running the key-value machine, whose stores lose unsynced
    /// writes on a crash.
    pub fn new(opts: SimOptions) -> Cluster<KvWorkload> {
        Cluster::with_stores(opts, |_| Box::new(MemLogStore::with_explicit_sync()))
    }

    /// A cluster running the key-value machine whose nodes use the stores `make_store` builds
    /// (one per node id).
    pub fn with_stores(
        opts: SimOptions,
        make_store: impl FnMut(NodeId) -> Box<dyn CrashableStore>,
    ) -> Cluster<KvWorkload> {
        Cluster::with_workload(opts, KvWorkload::default(), make_store)
    }
}

impl<W: Workload> SimNode<W> {
    /// The node's core, ready for an input: the ticks it held back are taken first, so it sees
    /// time exactly as if each had come on its own.
    pub(super) fn core(&mut self) -> Option<&mut Raft> {
        self.take_owed_ticks();
        if let Some(raft) = self.raft.as_mut() {
            take_owed_ack(raft, &mut self.executor, &mut self.owed_ack);
        }
        self.raft.as_mut()
    }

    /// Takes the ticks the node held back (see [`SimNode::core`]).
    pub(super) fn take_owed_ticks(&mut self) {
        if let Some(raft) = self.raft.as_mut() {
            tick_owed(raft, &mut self.owed_ticks);
        }
    }
}

/// Hands `raft` the ticks owed to it.
fn tick_owed(raft: &mut Raft, owed: &mut u32) {
    for _ in 0..std::mem::take(owed) {
        raft.tick();
    }
}

/// Hands `raft` the acknowledgement it held back, if any (after its owed ticks). Nothing
/// waited for it when it was held back, and since then only ticks reached the core: taking it
/// must not move the commit index.
fn take_owed_ack(raft: &mut Raft, executor: &mut Executor, owed: &mut u64) {
    let number = std::mem::take(owed);
    if number > 0 {
        let commit = raft.commit_index();
        executor.on_persisted(raft, number);
        assert_eq!(
            raft.commit_index(),
            commit,
            "node {}: an acknowledgement held back moved the commit index",
            raft.id()
        );
    }
}

impl<W: Workload> Cluster<W> {
    /// A cluster whose nodes run `workload`'s state machine over the stores `make_store` builds
    /// (one per node id); [`Cluster::start_workload`] starts its clients.
    pub fn with_workload(
        opts: SimOptions,
        workload: W,
        mut make_store: impl FnMut(NodeId) -> Box<dyn CrashableStore>,
    ) -> Cluster<W> {
        assert!(opts.nodes > 0, "a cluster needs nodes");
        let mut rng = Rng::new(opts.seed);
        let mut nodes = Vec::with_capacity(opts.nodes);
        for id in 1..=opts.nodes as NodeId {
            let drift = opts.clock_drift_pct.min(50);
            let tick_us = if drift == 0 {
                opts.tick_us
            } else {
                let pct = rng.range(100 - drift, 100 + drift);
                (opts.tick_us * pct / 100).max(1)
            };
            let store = make_store(id);
            // A store may start with a log (a test staging a history): that is its durable state.
            let durable = recovered_model(&*store, opts.raft.group)
                .unwrap_or_else(|e| panic!("node {id}: cannot read its store: {e}"));
            nodes.push(SimNode {
                id,
                raft: None,
                executor: Executor::new(),
                writer: LogWriter::new(),
                store,
                epoch: 0,
                machine: workload.machine(),
                snapshots: MemSnapshotStore::new(2),
                receiver: SnapshotReceiver::new(),
                applied_index: 0,
                applied: Vec::new(),
                applied_base: 0,
                snapshot_disk_free_at: 0,
                pending: HashMap::new(),
                reads: HashMap::new(),
                read_waiting: Vec::new(),
                next_read: 1,
                disk_free_at: 0,
                writes_in_flight: 0,
                full_until: 0,
                held: VecDeque::new(),
                leader_unreachable_ticks: 0,
                durable,
                unsynced: VecDeque::new(),
                tick_us,
                owed_ticks: 0,
                owed_ack: 0,
                starts: 0,
                wiped: false,
            });
        }
        let mut cluster = Cluster {
            opts,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            blocked: HashSet::new(),
            isolated: HashSet::new(),
            checker: SafetyChecker::new(),
            workload,
            clients: None,
            stats: SimStats::default(),
            deferred: None,
            crash_on_commit: false,
            faults: super::Faults::none(),
            direct_reads: HashMap::new(),
            next_direct_read: 1,
        };
        for id in 1..=cluster.opts.nodes as NodeId {
            cluster.start_node(id);
            let first_tick = cluster.rng.range(1, cluster.opts.tick_us);
            cluster.schedule(first_tick, Event::Tick(id));
        }
        cluster
    }

    pub(super) fn start_node(&mut self, id: NodeId) {
        let learners = self.opts.learners.clone();
        let initial = match self.opts.initial_members {
            0 => self.opts.nodes,
            n => n.min(self.opts.nodes),
        } as NodeId;
        let voters: Vec<NodeId> = (1..=initial).filter(|v| !learners.contains(v)).collect();
        // A node outside the first configuration, or back on an empty disk, waits to be added.
        let (voters, learners) = if id > initial || self.nodes[(id - 1) as usize].wiped {
            (Vec::new(), Vec::new())
        } else {
            (voters, learners)
        };
        let seed = self.rng.next_u64();
        let idx = (id - 1) as usize;
        let node = &mut self.nodes[idx];
        let lease_reads = self.opts.read_mode == ReadMode::Lease;
        let config = Config { id, seed, lease_reads, ..self.opts.raft.clone() };
        let snapshot = node
            .snapshots
            .latest(config.group)
            .unwrap_or_else(|e| panic!("node {id}: cannot read its snapshots: {e}"));
        let mut machine = self.workload.machine();
        if let Some(meta) = &snapshot {
            restore_snapshot(&mut machine, &node.snapshots, meta, 4096)
                .unwrap_or_else(|e| panic!("node {id}: cannot restore its snapshot: {e}"));
        }
        let bootstrap = crate::Membership::new(voters).with_learners(learners);
        let state = load_initial_state(&*node.store, config.group, bootstrap, snapshot.clone(), 0)
            .unwrap_or_else(|e| panic!("node {id}: cannot load its store: {e}"));
        if let Some(meta) = &snapshot {
            // load_initial_state finishes a compaction the crash interrupted (when the log does
            // not hold the snapshot's last entry), and syncs it.
            if node.durable.term(meta.index) != Some(meta.term) {
                node.durable.compact(meta.index, meta.term);
            }
        }
        let mut raft = Raft::new(config, state).unwrap_or_else(|e| panic!("node {id}: {e}"));
        raft.set_faults(self.faults);
        node.applied_index = raft.applied_index();
        node.raft = Some(raft);
        node.owed_ticks = 0;
        node.owed_ack = 0;
        node.executor = Executor::new();
        node.writer = LogWriter::new();
        node.machine = machine;
        node.applied.clear();
        node.applied_base = node.applied_index;
        node.pending.clear();
        node.reads.clear();
        node.read_waiting.clear();
        node.starts += 1;
    }

    /// Injects `faults` into every node's algorithm, now and after every restart.
    pub fn set_faults(&mut self, faults: super::Faults) {
        self.faults = faults;
        for node in &mut self.nodes {
            if let Some(raft) = node.raft.as_mut() {
                raft.set_faults(faults);
            }
        }
    }

    // ----- driving time -----

    /// Runs every event due in the next `us` microseconds.
    pub fn run_for(&mut self, us: u64) -> Result<(), SimError> {
        if let Some(err) = self.deferred.take() {
            return Err(err);
        }
        let end = self.now + us;
        while self.queue.peek().is_some_and(|e| e.at <= end) {
            let Some(next) = self.queue.pop() else { break };
            self.now = next.at;
            self.handle(next.event)
                .map_err(|violation| SimError { time_us: self.now, violation })?;
        }
        self.now = end;
        Ok(())
    }

    /// Runs until `done` holds (checked every `step_us`) or `max_us` pass. Returns whether it held.
    pub fn run_until(
        &mut self,
        max_us: u64,
        step_us: u64,
        mut done: impl FnMut(&Cluster<W>) -> bool,
    ) -> Result<bool, SimError> {
        let end = self.now + max_us;
        while self.now < end {
            if done(self) {
                return Ok(true);
            }
            self.run_for(step_us.min(end - self.now))?;
        }
        Ok(done(self))
    }

    pub(super) fn schedule(&mut self, after_us: u64, event: Event<W>) {
        self.seq += 1;
        self.queue.push(Scheduled { at: self.now + after_us, seq: self.seq, event });
    }

    fn handle(&mut self, event: Event<W>) -> Result<(), Violation> {
        let commits_before: Vec<Index> =
            if self.crash_on_commit { self.leader_commits() } else { Vec::new() };
        let touched = match event {
            Event::Tick(id) => {
                let tick_us = self.nodes[(id - 1) as usize].tick_us;
                self.schedule(tick_us, Event::Tick(id));
                self.detect_dead_leader(id);
                let defer = self.opts.defer_quiet_ticks;
                let n = &mut self.nodes[(id - 1) as usize];
                match n.raft.as_ref() {
                    // Held back, as on a runtime: no round for a tick that only counts.
                    Some(raft) if defer && n.owed_ticks < raft.quiet_ticks() => {
                        n.owed_ticks += 1;
                        self.stats.deferred_ticks += 1;
                        Some(id) // Drained as after any tick: it finds no Ready.
                    }
                    Some(_) => {
                        // A tick goes in before an acknowledgement held back (a runtime's
                        // round takes its owed ticks first), so not `core`.
                        n.take_owed_ticks();
                        if let Some(raft) = n.raft.as_mut() {
                            raft.tick();
                        }
                        Some(id)
                    }
                    None => None,
                }
            }
            Event::Deliver { msg, sender_epoch } => {
                let to = msg.to;
                tracing::trace!(now = self.now, ?msg, "deliver");
                // A sender that crashed since sending lost part of what sat in its buffers.
                let sender_crashed = self.nodes[(msg.from - 1) as usize].epoch != sender_epoch;
                if sender_crashed && self.rng.chance(0.5) {
                    self.stats.dropped += 1;
                    return self
                        .checker
                        .check_nodes(self.nodes.iter().filter_map(|n| n.raft.as_ref()));
                }
                match self.raft_mut(to) {
                    Some(raft) => {
                        let kind = msg.body.name();
                        let from = msg.from;
                        match raft.step(msg) {
                            // A late message from a node that has left the group since it
                            // was sent: dropped, as it should be.
                            Err(crate::StepError::UnknownPeer(_)) => {
                                self.stats.from_non_members += 1;
                            }
                            Err(err) => {
                                return Err(Violation {
                                    property: "protocol",
                                    detail: format!(
                                        "node {to} rejected a {kind} from {from}: {err}"
                                    ),
                                })
                            }
                            Ok(()) => {}
                        }
                        self.stats.delivered += 1;
                        Some(to)
                    }
                    None => {
                        self.stats.dropped += 1;
                        None
                    }
                }
            }
            Event::DiskDone { node, epoch, lsn, number, messages } => {
                let defer = self.opts.defer_persist_acks;
                let n = &mut self.nodes[(node - 1) as usize];
                n.take_owed_ticks();
                match n.raft.as_mut() {
                    Some(raft) if n.epoch == epoch => {
                        tracing::trace!(now = self.now, node, ?lsn, number, "disk done");
                        n.writes_in_flight -= 1;
                        if let Some(lsn) = lsn {
                            if let Err(err) = n.store.sync(lsn) {
                                return Err(storage_violation(node, err));
                            }
                            let durable = n.store.durable_lsn();
                            if durable < lsn {
                                return Err(Violation {
                                    property: "storage",
                                    detail: format!(
                                        "node {node}: sync({lsn:?}) returned but the store reports {durable:?} durable"
                                    ),
                                });
                            }
                            while n.unsynced.front().is_some_and(|w| w.lsn <= durable) {
                                if let Some(w) = n.unsynced.pop_front() {
                                    n.durable.apply(&w);
                                }
                            }
                        }
                        if defer && !raft.persist_acks_matter() {
                            // Held back, as the node driver does: taken after the node's owed
                            // ticks, before its next input or Ready.
                            n.owed_ack = n.owed_ack.max(number);
                            self.stats.deferred_acks += 1;
                        } else {
                            n.owed_ack = 0; // This one covers it.
                            n.executor.on_persisted(raft, number);
                        }
                        for ack in messages {
                            self.check_acknowledgement(&ack)?;
                            self.send(ack.msg);
                        }
                        Some(node)
                    }
                    _ => None,
                }
            }
            Event::FetchDone { node, epoch, request } => {
                let n = &mut self.nodes[(node - 1) as usize];
                n.take_owed_ticks();
                if n.epoch != epoch {
                    None
                } else if let Some(raft) = n.raft.as_mut() {
                    let result = serve_fetch(&*n.store, &request);
                    raft.on_fetched(request, result);
                    self.stats.fetches += 1;
                    Some(node)
                } else {
                    None
                }
            }
            Event::SnapshotReadDone { node, epoch, read } => {
                let n = &mut self.nodes[(node - 1) as usize];
                n.take_owed_ticks();
                if n.epoch != epoch {
                    None
                } else if let Some(raft) = n.raft.as_mut() {
                    let result = serve_snapshot_read(&n.snapshots, &read);
                    raft.on_snapshot_read(read, result);
                    Some(node)
                } else {
                    None
                }
            }
            Event::SnapshotChunkDone { node, epoch, chunk } => {
                let n = &mut self.nodes[(node - 1) as usize];
                n.take_owed_ticks();
                if n.epoch != epoch {
                    None
                } else if let Some(raft) = n.raft.as_mut() {
                    let result = n.receiver.write(&n.snapshots, &chunk);
                    self.stats.snapshot_chunks += 1;
                    if let Err(err) = &result {
                        tracing::debug!(node, %err, "snapshot chunk write failed");
                    }
                    raft.on_snapshot_chunk(chunk, result);
                    Some(node)
                } else {
                    None
                }
            }
            Event::Request { node, client, op_id, data, read: None } => {
                self.handle_request(node, client, op_id, data)
            }
            Event::Request { node, client, op_id, read: Some(op), .. } => {
                let to = ReadFor::Client { client, op_id };
                self.start_read(node, SimRead { to, op, on_follower: false })
            }
            Event::Reply { client, op_id, reply } => {
                self.client_reply(client, op_id, reply);
                None
            }
            Event::ClientTimeout { client, op_id } => {
                self.client_timeout(client, op_id);
                None
            }
            Event::ClientNext { client } => {
                self.client_next(client);
                None
            }
        };
        if let Some(id) = touched {
            self.drain(id)?;
            if self.opts.check_node_invariants {
                if let Some(raft) = self.raft(id) {
                    raft.check_invariants();
                }
            }
        }
        self.checker.check_nodes(self.nodes.iter().filter_map(|n| n.raft.as_ref()))?;
        if self.crash_on_commit {
            let after = self.leader_commits();
            if let Some(i) = (0..after.len()).find(|&i| after[i] > commits_before[i]) {
                self.crash_on_commit = false;
                self.crash(i as NodeId + 1);
            }
        }
        Ok(())
    }

    /// Each node's commit index if it leads and has not yet committed anything in its term
    /// (a leader still catching its followers up), else zero.
    fn leader_commits(&self) -> Vec<Index> {
        let fresh_leader =
            |r: &&Raft| r.is_leader() && r.term_at(r.commit_index()).is_some_and(|t| t < r.term());
        let leading = |n: &SimNode<W>| n.raft.as_ref().filter(fresh_leader).map(Raft::commit_index);
        self.nodes.iter().map(|n| leading(n).unwrap_or(0)).collect()
    }

    /// Carries out every Ready the node has, with the executor every runtime uses.
    fn drain(&mut self, id: NodeId) -> Result<(), Violation> {
        let idx = (id - 1) as usize;
        let Some(mut raft) = self.nodes[idx].raft.take() else { return Ok(()) };
        let mut executor = self.nodes[idx].executor;
        // A full disk: the writes held since it filled go to the disk once it has room again,
        // in order; meanwhile the core knows (as the node driver tells it).
        let mut io = NodeIo { cluster: self, id, idx };
        let released = io.release_held(&raft);
        let stalled = !self.nodes[idx].held.is_empty();
        // As in a runtime's round: the ticks held back go in before any input or Ready.
        if raft.storage_stalled() != stalled || raft.has_ready() {
            tick_owed(&mut raft, &mut self.nodes[idx].owed_ticks);
            take_owed_ack(&mut raft, &mut executor, &mut self.nodes[idx].owed_ack);
        }
        raft.set_storage_stalled(stalled);
        let result = released.and_then(|()| {
            executor.run(&mut raft, &mut NodeIo { cluster: self, id, idx }).map(|_| ())
        });
        let node = &mut self.nodes[idx];
        node.raft = Some(raft);
        node.executor = executor;
        result
    }

    /// Persist before acknowledge: when a node tells a leader that its log matches up to an
    /// index, the entry it held there must be durable at that moment.
    pub(super) fn check_acknowledgement(&self, ack: &Ack) -> Result<(), Violation> {
        let Some((index, term)) = ack.claims else { return Ok(()) };
        let node = &self.nodes[(ack.msg.from - 1) as usize];
        if index < node.durable.base_index {
            return Ok(()); // Compacted: a durable snapshot covers it.
        }
        let durable = node.durable.term(index);
        if durable != Some(term) {
            return Err(Violation {
                property: "persist before acknowledge",
                detail: format!(
                    "node {} acknowledges ({index}, term {term}) but its disk durably holds {:?} there",
                    ack.msg.from, durable
                ),
            });
        }
        Ok(())
    }

    /// The liveness check a runtime runs beside its sleeping groups, modelled: a sleeping
    /// follower whose leader has been down or cut off for an election timeout is woken, and
    /// now and then one is woken for nothing (a false suspicion).
    fn detect_dead_leader(&mut self, id: NodeId) {
        let idx = (id - 1) as usize;
        let Some(raft) = self.nodes[idx].raft.as_ref() else { return };
        if raft.is_asleep() {
            self.stats.asleep_ticks += 1;
        }
        if !raft.is_asleep() || raft.is_leader() {
            self.nodes[idx].leader_unreachable_ticks = 0;
            return;
        }
        let election_ticks = self.opts.raft.election_ticks;
        let reachable = raft.leader().is_some_and(|l| {
            self.nodes[(l - 1) as usize].raft.is_some()
                && !self.blocked.contains(&(l, id))
                && !self.blocked.contains(&(id, l))
                && !self.isolated.contains(&l)
                && !self.isolated.contains(&id)
        });
        let node = &mut self.nodes[idx];
        node.leader_unreachable_ticks =
            if reachable { 0 } else { node.leader_unreachable_ticks + 1 };
        let suspect = node.leader_unreachable_ticks >= election_ticks
            || (self.opts.false_wake > 0.0 && self.rng.chance(self.opts.false_wake));
        if suspect {
            self.stats.liveness_wakes += 1;
            node.leader_unreachable_ticks = 0;
            if let Some(raft) = node.core() {
                raft.wake();
            }
        }
    }

    /// Sends a message across the faulty network.
    pub(super) fn send(&mut self, msg: Message) {
        *self.stats.sent.entry(msg.body.name()).or_insert(0) += 1;
        let cut = self.blocked.contains(&(msg.from, msg.to))
            || self.isolated.contains(&msg.from)
            || self.isolated.contains(&msg.to);
        if cut || self.rng.chance(self.opts.net.loss) {
            self.stats.dropped += 1;
            return;
        }
        let sender_epoch = self.nodes[(msg.from - 1) as usize].epoch;
        if self.rng.chance(self.opts.net.duplicate) {
            let delay = self.net_delay();
            self.schedule(delay, Event::Deliver { msg: msg.clone(), sender_epoch });
        }
        let delay = self.net_delay();
        self.schedule(delay, Event::Deliver { msg, sender_epoch });
    }

    pub(super) fn net_delay(&mut self) -> u64 {
        let n = &self.opts.net;
        let mut delay = self.rng.range(n.delay_min_us, n.delay_max_us.max(n.delay_min_us));
        if self.rng.chance(n.long_delay) {
            delay += self.rng.range(0, n.long_delay_max_us);
        }
        delay
    }

    // ----- observing -----

    /// Node `id`'s core, ready for an input (the ticks it holds back taken first).
    pub(super) fn raft_mut(&mut self, id: NodeId) -> Option<&mut Raft> {
        self.nodes.get_mut((id - 1) as usize).and_then(SimNode::core)
    }

    /// Proposes `data` directly on node `id` (like a client co-located with the node).
    pub fn propose(&mut self, id: NodeId, data: Bytes) -> Result<crate::EntryId, ProposeError> {
        let Some(raft) = self.raft_mut(id) else {
            return Err(ProposeError::NotLeader { leader: None });
        };
        let result = raft.propose(data);
        if result.is_ok() {
            if let Err(violation) = self.drain(id) {
                self.deferred.get_or_insert(SimError { time_us: self.now, violation });
            }
        }
        result
    }

    /// Proposes several commands on node `id` at once, so they share one Ready (and the same
    /// append messages). Returns the last one's position.
    pub fn propose_batch(
        &mut self,
        id: NodeId,
        commands: Vec<Bytes>,
    ) -> Result<crate::EntryId, ProposeError> {
        let Some(raft) = self.raft_mut(id) else {
            return Err(ProposeError::NotLeader { leader: None });
        };
        let mut last = Err(ProposeError::NotLeader { leader: raft.leader() });
        for command in commands {
            last = raft.propose(command);
            if last.is_err() {
                break;
            }
        }
        if let Err(violation) = self.drain(id) {
            self.deferred.get_or_insert(SimError { time_us: self.now, violation });
        }
        last
    }

    /// Asks node `id` for a linearizable read of `op` (by the cluster's read mode, as a client
    /// co-located with the node would). The answer, once there, is in
    /// [`read_result`](Cluster::read_result).
    pub fn read(&mut self, id: NodeId, op: W::Op) -> u64 {
        let ticket = self.next_direct_read;
        self.next_direct_read += 1;
        let read = SimRead { to: ReadFor::Direct(ticket), op, on_follower: false };
        if self.start_read(id, read).is_some() {
            if let Err(violation) = self.drain(id) {
                self.deferred.get_or_insert(SimError { time_us: self.now, violation });
            }
        }
        ticket
    }

    /// Proposes a batch of membership changes on node `id` (which must lead).
    pub fn propose_membership(
        &mut self,
        id: NodeId,
        changes: &[crate::MembershipChange],
    ) -> Result<crate::EntryId, crate::MembershipError> {
        let Some(raft) = self.raft_mut(id) else {
            return Err(crate::MembershipError::NotLeader { leader: None });
        };
        let entry = raft.propose_membership(changes)?;
        self.stats.membership_changes += 1;
        if let Err(violation) = self.drain(id) {
            self.deferred.get_or_insert(SimError { time_us: self.now, violation });
        }
        Ok(entry)
    }

    /// Asks leader `id` to hand leadership to `to`.
    pub fn transfer_leader(&mut self, id: NodeId, to: NodeId) -> Result<(), TransferError> {
        let Some(raft) = self.raft_mut(id) else {
            return Err(TransferError::NotLeader { leader: None });
        };
        raft.transfer_leader(to)?;
        self.stats.transfers += 1;
        if let Err(violation) = self.drain(id) {
            self.deferred.get_or_insert(SimError { time_us: self.now, violation });
        }
        Ok(())
    }
}

pub(super) fn storage_violation(id: NodeId, err: StorageError) -> Violation {
    Violation { property: "storage", detail: format!("node {id}: {err}") }
}
